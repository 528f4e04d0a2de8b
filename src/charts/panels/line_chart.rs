//! The per-epoch line chart that `learning_curves` and `loss_curves` share:
//! one curve per trial, best first in the legend, pruned and stopped trials
//! faded, the best trial drawn last and thickest.

use anyhow::Result;
use plotters::prelude::*;
use plotters::style::RGBAColor;

use crate::charts::axes::{
    finite_range, tick_fmt, value_axis, xy_chart, AxisSpec, TickAxis, XyChart,
};
use crate::charts::frame::{draw_header, draw_no_data};
use crate::charts::labels::{is_best, is_inactive, unique_labels};
use crate::charts::legend::{draw_legend, legend_width, LegendEntry, Swatch, LEGEND_MAX_ROWS};
use crate::charts::style::{color_of, plot_err, Area, INK, PALETTE};
use crate::charts::{ChartSweep, ChartTrial, Drawn, Panel};
use cnnd_core::epoch::EpochRecord;

pub(super) struct Curve<'s> {
    pub(super) trial: &'s ChartTrial,
    label: String,
    color: RGBColor,
    best: bool,
    pub(super) inactive: bool,
    /// Lines to draw; each line is (points, dashed).
    lines: Vec<(Vec<(f64, f64)>, bool)>,
    /// Used to rank trials in the legend (higher first).
    score: f64,
}

impl Curve<'_> {
    /// Colour and stroke width; `dense` charts (more trials than palette
    /// colours) use thinner, lighter lines so the best trial stands out.
    fn style(&self, dense: bool) -> (RGBAColor, u32) {
        let alpha = match (self.best, self.inactive, dense) {
            (true, _, _) => 1.0,
            (false, true, false) => 0.5,
            (false, true, true) => 0.35,
            (false, false, true) => 0.75,
            (false, false, false) => 1.0,
        };
        let width = match (self.best, dense) {
            (true, _) => 4,
            (false, true) => 1,
            (false, false) => 2,
        };
        (self.color.mix(alpha), width)
    }

    fn legend_label(&self) -> String {
        if self.best {
            format!("{} (best)", self.label)
        } else if self.inactive {
            format!("{} ({})", self.label, self.trial.status)
        } else {
            self.label.clone()
        }
    }
}

/// One curve per trial for which `lines` returns something to draw: the
/// lines as (points, dashed) and the trial's legend score (higher first).
pub(super) fn trial_curves<'s>(
    sweep: &'s ChartSweep,
    lines: impl Fn(&ChartTrial) -> Option<(Vec<(Vec<(f64, f64)>, bool)>, f64)>,
) -> Vec<Curve<'s>> {
    let labels = unique_labels(sweep);
    sweep
        .trials
        .iter()
        .enumerate()
        .filter_map(|(pos, t)| {
            let (lines, score) = lines(t)?;
            Some(Curve {
                trial: t,
                label: labels[pos].clone(),
                color: color_of(pos),
                best: is_best(sweep, t),
                inactive: is_inactive(&t.status),
                lines,
                score,
            })
        })
        .collect()
}

/// Points of one metric in epoch order, split into segments wherever a value
/// is missing (NaN/inf), so gaps stay visible instead of being bridged.
pub(super) fn epoch_segments(
    trial: &ChartTrial,
    metric: impl Fn(&EpochRecord) -> f64,
) -> Vec<Vec<(f64, f64)>> {
    let mut epochs: Vec<&EpochRecord> = trial.epochs.iter().collect();
    epochs.sort_by_key(|e| e.epoch);
    let mut segments = vec![Vec::new()];
    for e in epochs {
        let v = metric(e);
        if v.is_finite() {
            segments
                .last_mut()
                .expect("never empty")
                .push((e.epoch as f64, v));
        } else if !segments.last().expect("never empty").is_empty() {
            segments.push(Vec::new());
        }
    }
    segments.retain(|s| !s.is_empty());
    segments
}

/// Moves up to `want` pruned curves into the first `room` places when none
/// is there and more curves than `room` exist; the order is otherwise kept.
fn promote_pruned(curves: &mut Vec<Curve>, room: usize, want: usize) {
    let pruned = |c: &Curve| matches!(c.trial.status.as_str(), "pruned" | "parked");
    if curves.len() <= room || room <= want || curves[..room].iter().any(pruned) {
        return;
    }
    let picked: Vec<usize> = (room..curves.len())
        .filter(|&i| pruned(&curves[i]))
        .take(want)
        .collect();
    for (slot, &i) in picked.iter().enumerate() {
        let c = curves.remove(i);
        curves.insert(room - picked.len() + slot, c);
    }
}

pub(super) struct LineChartSpec<'a> {
    pub(super) y_desc: &'a str,
    pub(super) percent: bool,
    pub(super) empty_reason: &'a str,
    pub(super) legend_heading: &'a str,
    pub(super) key: Vec<LegendEntry>,
    /// Legend swatches of pruned/failed/cancelled trials are dashed like their lines.
    pub(super) inactive_dashed: bool,
}

/// Draws `pts` as one line, dashed or solid.
fn draw_line(
    chart: &mut XyChart,
    pts: &[(f64, f64)],
    dashed: bool,
    style: ShapeStyle,
) -> Result<()> {
    if dashed {
        chart
            .draw_series(DashedLineSeries::new(pts.to_vec(), 9, 6, style))
            .map_err(plot_err)?;
    } else {
        chart
            .draw_series(LineSeries::new(pts.to_vec(), style))
            .map_err(plot_err)?;
    }
    Ok(())
}

pub(super) fn draw_line_chart(
    root: &Area,
    sweep: &ChartSweep,
    panel: &Panel,
    mut curves: Vec<Curve>,
    spec: LineChartSpec,
) -> Result<Drawn> {
    let body = draw_header(root, sweep, panel)?;
    let all_points = || {
        curves
            .iter()
            .flat_map(|c| c.lines.iter().flat_map(|l| &l.0))
    };
    let (Some((e_lo, e_hi)), Some((v_lo, v_hi))) = (
        finite_range(all_points().map(|p| p.0)),
        finite_range(all_points().map(|p| p.1)),
    ) else {
        return draw_no_data(&body, spec.empty_reason);
    };

    // Legend: best first, then by score.
    curves.sort_by(|a, b| {
        b.best
            .cmp(&a.best)
            .then(b.score.total_cmp(&a.score))
            .then(a.trial.index.cmp(&b.trial.index))
    });
    if spec.inactive_dashed {
        // When the legend overflows, keep the two best pruned trials in it,
        // so their "(pruned)" style is seen next to the others.
        let room = LEGEND_MAX_ROWS.saturating_sub(spec.key.len() + 1);
        promote_pruned(&mut curves, room, 2);
    }
    let dense = curves.len() > PALETTE.len();
    let mut entries = spec.key;
    for c in &curves {
        let (color, width) = c.style(false);
        let swatch = Swatch::Line {
            dashed: c.inactive && spec.inactive_dashed,
            width,
        };
        let entry = LegendEntry::new(c.legend_label(), color, swatch).with_marker();
        entries.push(if c.best { entry.emphasized() } else { entry });
    }
    let legend_w = legend_width(root, spec.legend_heading, &entries);
    let (bw, _) = body.dim_in_pixel();
    let (plot_area, legend_area) = body.split_horizontally(bw - legend_w);

    // Axes: integer epochs, data-fitted y.
    let x_pad = ((e_hi - e_lo) * 0.03).max(0.3);
    let epochs = (e_hi - e_lo) as usize + 1;
    let x_axis = TickAxis::linear(e_lo - x_pad, e_hi + x_pad, epochs.min(12), true);
    let y_axis = value_axis(v_lo, v_hi, spec.percent);
    let y_fmt = tick_fmt(&y_axis.ticks, spec.percent, 3);
    let x_fmt = |v: &f64| format!("{v:.0}");
    let mut chart = xy_chart(
        &plot_area,
        AxisSpec {
            scale: x_axis,
            desc: "epoch",
            fmt: &x_fmt,
        },
        AxisSpec {
            scale: y_axis,
            desc: spec.y_desc,
            fmt: &y_fmt,
        },
    )?;

    // Inactive first, best last so it stays on top.
    let mut order: Vec<&Curve> = curves.iter().collect();
    order.sort_by_key(|c| (c.best, !c.inactive));
    for c in order {
        let (color, width) = c.style(dense);
        let style = ShapeStyle {
            color,
            filled: false,
            stroke_width: width,
        };
        for (pts, dashed) in &c.lines {
            if c.best && dense && pts.len() > 1 {
                // dark halo: palette colours repeat, the best line must not
                let halo = ShapeStyle::from(&INK).stroke_width(width + 3);
                draw_line(&mut chart, pts, *dashed, halo)?;
            }
            if pts.len() > 1 {
                draw_line(&mut chart, pts, *dashed, style)?;
            }
            let r = match (c.best, dense) {
                (true, _) => 5,
                (false, true) => 2,
                (false, false) => 4,
            };
            chart
                .draw_series(pts.iter().map(|p| Circle::new(*p, r, color.filled())))
                .map_err(plot_err)?;
        }
    }
    draw_legend(&legend_area, spec.legend_heading, &entries)?;
    Ok(Drawn::Chart)
}
