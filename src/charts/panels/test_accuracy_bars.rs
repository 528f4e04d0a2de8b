//! `test_accuracy_bars`: test accuracy per trial as sorted horizontal bars,
//! the best highlighted; the image grows taller to fit every bar.

use anyhow::Result;

use super::hbars::{hbar_chart, row_px, Bar, BarLayout};
use crate::charts::axes::{finite_range, nice_step, tick_fmt, AxisSpec, TickAxis};
use crate::charts::dashboard::{MAX_SIDE, MIN_SIDE};
use crate::charts::frame::{draw_header, draw_no_data, HEADER_H};
use crate::charts::labels::{is_best, unique_labels};
use crate::charts::style::{bold, text, text_width, Area, BAR, BAR_BEST, INK, SMALL_PX, TICK_PX};
use crate::charts::{ChartSweep, ChartTrial, Drawn, Panel};

pub(crate) const BAR_ROW: u32 = 30;
pub(crate) const BAR_CHROME: u32 = HEADER_H + 20 + 70;

/// (trial position, trial, test accuracy) of the trials that have one, best first.
pub(crate) fn scored_trials(sweep: &ChartSweep) -> Vec<(usize, &ChartTrial, f64)> {
    let mut v: Vec<(usize, &ChartTrial, f64)> = sweep
        .trials
        .iter()
        .enumerate()
        .filter_map(|(i, t)| t.test_accuracy.filter(|a| a.is_finite()).map(|a| (i, t, a)))
        .collect();
    v.sort_by(|a, b| b.2.total_cmp(&a.2).then(a.1.index.cmp(&b.1.index)));
    v
}

/// The panel's image size: tall enough for a readable row per bar.
pub(super) fn pixels(sweep: &ChartSweep, panel: &Panel) -> (u32, u32) {
    let (w, h) = panel.size();
    let n = scored_trials(sweep).len() as u32;
    if n == 0 {
        return (w, h);
    }
    let needed = (BAR_CHROME + n * BAR_ROW).clamp(MIN_SIDE, MAX_SIDE);
    match panel.height {
        // an explicit height is honoured unless the bars would not fit
        Some(explicit) => (w, explicit.max(needed)),
        // otherwise size from the bar count (roomier rows for few bars)
        None => (w, needed.max(BAR_CHROME + n * 48).min(h.max(needed))),
    }
}

pub(super) fn draw(root: &Area, sweep: &ChartSweep, panel: &Panel) -> Result<Drawn> {
    let body = draw_header(root, sweep, panel)?;
    let bars = scored_trials(sweep);
    let Some((a_lo, a_hi)) = finite_range(bars.iter().map(|b| b.2)) else {
        return draw_no_data(&body, "no trial has a test accuracy yet");
    };
    let labels = unique_labels(sweep);
    let best_pos = bars.iter().position(|b| is_best(sweep, b.1));
    let bar_labels: Vec<String> = bars
        .iter()
        .enumerate()
        .map(|(rank, (i, t, _))| {
            let mut l = format!("{}. {}", rank + 1, labels[*i]);
            if Some(rank) == best_pos {
                l.push_str(" (best)");
            } else if t.status != "succeeded" {
                l.push_str(&format!(" [{}]", t.status));
            }
            l
        })
        .collect();

    let (bw, _) = body.dim_in_pixel();
    let label_w = bar_labels
        .iter()
        .enumerate()
        .map(|(rank, l)| {
            let style = if Some(rank) == best_pos {
                bold(TICK_PX, &INK)
            } else {
                text(TICK_PX, &INK)
            };
            text_width(root, l, &style)
        })
        .max()
        .unwrap_or(0)
        .clamp(60, (bw as f64 * 0.42) as u32);
    let value_room = 90u32;
    let (x_margin_l, x_margin_r) = (16u32, 24u32);
    let plot_w = bw
        .saturating_sub(label_w + 20 + x_margin_l + x_margin_r)
        .max(100);

    // x axis: start at 0 unless that would flatten the differences.
    let span = a_hi - a_lo;
    let x_lo = if bars.len() > 1 && a_lo > 0.3 && span < 0.5 * a_hi {
        let raw = (a_lo - (span * 0.6).max(0.01)).max(0.0);
        let step = nice_step(span.max(0.01) / 4.0, false);
        (raw / step).floor() * step
    } else {
        0.0
    };
    // leave room right of the longest bar for its value text
    let frac = value_room as f64 / plot_w as f64;
    let x_hi = a_hi + (a_hi - x_lo).max(1e-3) * frac / (1.0 - frac);
    let x_axis = TickAxis::linear(x_lo, x_hi, 8, false);
    let x_fmt = tick_fmt(&x_axis.ticks, true, 3);
    let n = bars.len();
    let x_desc = if x_lo > 0.0 {
        format!("test accuracy (axis starts at {})", x_fmt(&x_lo))
    } else {
        "test accuracy".to_string()
    };
    let x = AxisSpec {
        scale: x_axis,
        desc: &x_desc,
        fmt: &x_fmt,
    };
    let mut chart = hbar_chart(&body, x, n, label_w, x_margin_r)?;

    let row_px = row_px(&chart, x_lo);
    // bars fill ~70% of their row, but never get thicker than 34 px
    let layout = BarLayout {
        rows: n,
        x0: x_lo,
        thickness: 0.72f64.min(34.0 / row_px.max(1) as f64),
        label_w,
    };
    let value_px = if row_px < 22 { SMALL_PX } else { 15 };
    let lab_px = if row_px < 22 { SMALL_PX } else { TICK_PX };
    let style = |best: bool, px: u32| if best { bold(px, &INK) } else { text(px, &INK) };
    for (rank, (_, _, acc)) in bars.iter().enumerate() {
        let best = Some(rank) == best_pos;
        let bar = Bar {
            value: *acc,
            color: if best { BAR_BEST } else { BAR },
            value_text: format!("{:.2}%", acc * 100.0),
            value_style: style(best, value_px),
            label: &bar_labels[rank],
            label_style: style(best, lab_px),
        };
        layout.draw(root, &mut chart, rank, bar)?;
    }
    Ok(Drawn::Chart)
}
