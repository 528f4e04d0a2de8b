//! `parallel_coordinates`: one vertical axis per varied hyperparameter plus
//! the objective, one line per finished trial coloured from worst to best.

use anyhow::Result;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, VPos};

use super::jitter;
use crate::charts::axes::{finite_range, fmt_num, TickAxis};
use crate::charts::frame::{draw_footnote, draw_header, draw_no_data};
use crate::charts::labels::{format_param, unique_labels};
use crate::charts::legend::{draw_legend, LegendEntry, Swatch};
use crate::charts::stats::{best_scored, objective_trials, varied_present, Goal, Scored};
use crate::charts::style::{
    anchored, bold, draw_text_at, fit_text, plot_err, text, text_width, Area, AXIS, INK, LEGEND_PX,
    MUTED, PRUNED, SMALL_PX, TICK_PX,
};
use crate::charts::{ChartSweep, Drawn, Panel};

/// Objective colour ramp, worst (light amber) to best (deep indigo).
const RAMP: [(f64, RGBColor); 4] = [
    (0.0, RGBColor(250, 200, 80)),
    (0.35, RGBColor(240, 120, 60)),
    (0.65, RGBColor(190, 50, 110)),
    (1.0, RGBColor(40, 20, 130)),
];

/// Colour of `t` in 0..=1 (0 worst, 1 best) on [`RAMP`].
fn ramp(t: f64) -> RGBColor {
    let t = if t.is_finite() {
        t.clamp(0.0, 1.0)
    } else {
        0.0
    };
    for w in RAMP.windows(2) {
        let ((t0, c0), (t1, c1)) = (w[0], w[1]);
        if t <= t1 {
            let f = if t1 > t0 { (t - t0) / (t1 - t0) } else { 0.0 };
            let mix = |a: u8, b: u8| (a as f64 + (b as f64 - a as f64) * f).round() as u8;
            return RGBColor(mix(c0.0, c1.0), mix(c0.1, c1.1), mix(c0.2, c1.2));
        }
    }
    RAMP[RAMP.len() - 1].1
}

enum PcScale {
    /// Values in display order, spaced evenly.
    Categories(Vec<String>),
    Linear(f64, f64),
    Log(f64, f64),
}

struct PcAxis {
    title: String,
    scale: PcScale,
    /// Each trial's position on the axis, 0 (bottom) ..= 1 (top).
    pos: Vec<f64>,
    /// Tick positions (0..=1) and labels.
    ticks: Vec<(f64, String)>,
    /// Few distinct values: lines get a little vertical jitter.
    jitter: bool,
}

impl PcScale {
    fn frac(&self, v: f64) -> f64 {
        let (a, b, x) = match self {
            PcScale::Categories(_) => return 0.5,
            PcScale::Linear(a, b) => (*a, *b, v),
            PcScale::Log(a, b) => (a.log10(), b.log10(), v.max(f64::MIN_POSITIVE).log10()),
        };
        if b > a {
            ((x - a) / (b - a)).clamp(0.0, 1.0)
        } else {
            0.5
        }
    }
}

/// The axis of one hyperparameter over the trials in `scored`.
fn pc_param_axis(param: &str, scored: &[Scored]) -> PcAxis {
    let values: Vec<Option<&serde_json::Value>> =
        scored.iter().map(|s| s.trial.params.get(param)).collect();
    let nums: Option<Vec<f64>> = values.iter().map(|v| v.and_then(|v| v.as_f64())).collect();
    let title = param.to_string();
    if let Some(nums) = nums {
        let mut distinct = nums.clone();
        distinct.sort_by(f64::total_cmp);
        distinct.dedup();
        let (lo, hi) = (distinct[0], distinct[distinct.len() - 1]);
        let log = lo > 0.0 && hi / lo >= 100.0;
        let scale = if log {
            PcScale::Log(lo, hi)
        } else {
            PcScale::Linear(lo, hi)
        };
        let tick_values: Vec<f64> = if distinct.len() <= 8 {
            distinct.clone()
        } else if log {
            let mut t = TickAxis::log(lo, hi).ticks;
            if t.len() < 2 {
                t = vec![lo, hi];
            }
            t
        } else {
            TickAxis::linear(lo, hi, 6, false).ticks
        };
        let ticks = tick_values
            .iter()
            .map(|v| (scale.frac(*v), fmt_num(*v)))
            .collect();
        let pos = nums.iter().map(|v| scale.frac(*v)).collect();
        return PcAxis {
            title,
            scale,
            pos,
            ticks,
            jitter: distinct.len() <= 12,
        };
    }
    // categorical: numbers first in numeric order, then text, then missing
    let key = |v: Option<&serde_json::Value>| -> (u8, f64, String) {
        match v {
            None => (2, 0.0, "n/a".to_string()),
            Some(v) => match v.as_f64() {
                Some(x) => (0, x, format_param(v)),
                None => (1, 0.0, format_param(v)),
            },
        }
    };
    let mut keys: Vec<(u8, f64, String)> = values.iter().map(|v| key(*v)).collect();
    keys.sort_by(|a, b| a.0.cmp(&b.0).then(a.1.total_cmp(&b.1)).then(a.2.cmp(&b.2)));
    keys.dedup_by(|a, b| a.2 == b.2);
    let cats: Vec<String> = keys.into_iter().map(|k| k.2).collect();
    let k = cats.len();
    let frac_of = |i: usize| {
        if k <= 1 {
            0.5
        } else {
            i as f64 / (k - 1) as f64
        }
    };
    let pos = values
        .iter()
        .map(|v| {
            let label = key(*v).2;
            frac_of(cats.iter().position(|c| *c == label).unwrap_or(0))
        })
        .collect();
    let ticks = cats
        .iter()
        .enumerate()
        .map(|(i, c)| (frac_of(i), c.clone()))
        .collect();
    PcAxis {
        title,
        scale: PcScale::Categories(cats),
        pos,
        ticks,
        jitter: true,
    }
}

/// Keeps tick labels at least `min_gap` px apart (positions in px, any order).
fn thin_ticks(ticks: &[(i32, String)], min_gap: i32) -> Vec<(i32, String)> {
    let mut sorted: Vec<(i32, String)> = ticks.to_vec();
    sorted.sort_by_key(|t| t.0);
    let n = sorted.len();
    if n <= 2 {
        return sorted;
    }
    // the smallest stride that spaces every shown label far enough apart
    let stride = (1..=n)
        .find(|s| {
            let shown: Vec<i32> = sorted.iter().step_by(*s).map(|t| t.0).collect();
            shown.windows(2).all(|w| w[1] - w[0] >= min_gap)
        })
        .unwrap_or(n);
    sorted.into_iter().step_by(stride).collect()
}

pub(super) fn draw(root: &Area, sweep: &ChartSweep, panel: &Panel) -> Result<Drawn> {
    let goal = Goal::of(sweep);
    let body = draw_header(root, sweep, panel)?;
    let scored = objective_trials(sweep, goal);
    if scored.is_empty() {
        return draw_no_data(
            &body,
            &format!("no trial has finished with a {} yet", goal.name()),
        );
    }
    let refs: Vec<&Scored> = scored.iter().collect();
    let params = varied_present(sweep, &refs);
    if params.is_empty() {
        return draw_no_data(&body, "the sweep varies no hyperparameter");
    }
    let mut axes: Vec<PcAxis> = params.iter().map(|p| pc_param_axis(p, &scored)).collect();

    // Objective axis and colours (from the succeeded trials when there are any).
    let (v_lo, v_hi) = finite_range(scored.iter().map(|s| s.value)).expect("not empty");
    let obj_scale = PcScale::Linear(v_lo, v_hi);
    let obj_ticks: Vec<f64> = if v_hi > v_lo {
        let mut t = TickAxis::linear(v_lo, v_hi, 6, false).ticks;
        t.retain(|v| *v >= v_lo && *v <= v_hi);
        t
    } else {
        vec![v_lo]
    };
    let obj_fmt = goal.tick_fmt(&obj_ticks);
    axes.push(PcAxis {
        title: goal.name().to_string(),
        pos: scored.iter().map(|s| obj_scale.frac(s.value)).collect(),
        ticks: if v_hi > v_lo {
            obj_ticks
                .iter()
                .map(|v| (obj_scale.frac(*v), obj_fmt(v)))
                .collect()
        } else {
            vec![(0.5, goal.fmt(v_lo))]
        },
        scale: obj_scale,
        jitter: false,
    });
    let done: Vec<f64> = scored
        .iter()
        .filter(|s| !s.pruned)
        .map(|s| s.value)
        .collect();
    let (c_lo, c_hi) = finite_range(done.iter().copied()).unwrap_or((v_lo, v_hi));
    let goodness = |v: f64| {
        let f = if c_hi > c_lo {
            (v - c_lo) / (c_hi - c_lo)
        } else {
            1.0
        };
        match goal {
            Goal::MaxAccuracy => f,
            Goal::MinLoss => 1.0 - f,
        }
    };
    let top = best_scored(&scored, goal).map(|s| s.pos);

    // Layout: axes spread over the plot, a colour bar and key on the right.
    let (bw, bh) = body.dim_in_pixel();
    let legend_w = 240u32.min(bw / 3);
    let (plot, legend) = body.split_horizontally(bw - legend_w);
    let (pw, ph) = plot.dim_in_pixel();
    let left = 100i32;
    let right = pw as i32 - 70;
    let top_y = 64i32;
    let bottom_y = ph as i32 - 44;
    let m = axes.len();
    let axis_x = |i: usize| -> i32 {
        if m == 1 {
            (left + right) / 2
        } else {
            left + ((right - left) as f64 * i as f64 / (m - 1) as f64).round() as i32
        }
    };
    let y_of = |f: f64| -> i32 { bottom_y - ((bottom_y - top_y) as f64 * f).round() as i32 };
    let spacing = if m > 1 {
        (right - left) / (m as i32 - 1)
    } else {
        right - left
    };

    // Jitter amplitude per axis: a fraction of the gap between its values.
    let jit_px: Vec<f64> = axes
        .iter()
        .map(|a| {
            if !a.jitter {
                return 0.0;
            }
            let mut fr: Vec<f64> = a.pos.clone();
            fr.sort_by(f64::total_cmp);
            fr.dedup();
            let gap = fr.windows(2).map(|w| w[1] - w[0]).fold(1.0f64, f64::min)
                * (bottom_y - top_y) as f64;
            (gap * 0.12).clamp(0.0, 9.0)
        })
        .collect();
    let polyline = |k: usize| -> Vec<(i32, i32)> {
        axes.iter()
            .enumerate()
            .map(|(i, a)| {
                let j = jit_px[i] * jitter(scored[k].trial.index as u64, i as u64);
                (axis_x(i), y_of(a.pos[k]) + j.round() as i32)
            })
            .collect()
    };

    // Lines: pruned (grey) first, then succeeded from worst to best, best last.
    let dense = scored.len() > 30;
    let mut order: Vec<usize> = (0..scored.len()).collect();
    order.sort_by(|&a, &b| {
        let (sa, sb) = (&scored[a], &scored[b]);
        sb.pruned
            .cmp(&sa.pruned)
            .then((Some(sa.pos) == top).cmp(&(Some(sb.pos) == top)))
            .then(goodness(sa.value).total_cmp(&goodness(sb.value)))
    });
    for &k in &order {
        let s = &scored[k];
        let pts = polyline(k);
        if s.pruned {
            let style = ShapeStyle {
                color: PRUNED.mix(if dense { 0.35 } else { 0.55 }),
                filled: false,
                stroke_width: 1,
            };
            plot.draw(&PathElement::new(pts, style)).map_err(plot_err)?;
        } else if Some(s.pos) == top {
            plot.draw(&PathElement::new(pts.clone(), WHITE.stroke_width(8)))
                .map_err(plot_err)?;
            plot.draw(&PathElement::new(pts, ramp(1.0).stroke_width(4)))
                .map_err(plot_err)?;
        } else {
            let style = ShapeStyle {
                color: ramp(goodness(s.value)).mix(if dense { 0.7 } else { 0.9 }),
                filled: false,
                stroke_width: if dense { 1 } else { 2 },
            };
            plot.draw(&PathElement::new(pts, style)).map_err(plot_err)?;
        }
    }

    // Axes, titles and tick labels on a white backing so lines do not hide them.
    let ts = anchored(bold(TICK_PX, &INK), HPos::Center, VPos::Bottom);
    let ls = anchored(text(SMALL_PX, &INK), HPos::Right, VPos::Center);
    for (i, a) in axes.iter().enumerate() {
        let x = axis_x(i);
        plot.draw(&PathElement::new(
            vec![(x, top_y), (x, bottom_y)],
            AXIS.stroke_width(2),
        ))
        .map_err(plot_err)?;
        let last = i + 1 == m;
        // the objective axis (last) is labelled on its right, where no lines run
        let title_room = if last {
            (pw as i32 - x) * 2 - 8
        } else {
            spacing - 12
        }
        .max(60) as u32;
        let title = fit_text(&plot, &a.title, &ts, title_room);
        draw_text_at(&plot, &title, &ts, (x, top_y - 28))?;
        let note = match &a.scale {
            _ if last => Some(goal.direction().to_string()),
            PcScale::Categories(c) if c.len() == 1 => Some("1 value".to_string()),
            PcScale::Categories(c) => Some(format!("{} values", c.len())),
            PcScale::Log(..) => Some("log scale".to_string()),
            PcScale::Linear(..) => None,
        };
        if let Some(note) = note {
            let ns = anchored(text(SMALL_PX, &MUTED), HPos::Center, VPos::Bottom);
            let note = fit_text(&plot, &note, &ns, title_room);
            draw_text_at(&plot, &note, &ns, (x, top_y - 12))?;
        }
        let px: Vec<(i32, String)> = a.ticks.iter().map(|(f, l)| (y_of(*f), l.clone())).collect();
        let label_room = if last {
            (pw as i32 - x - 14).max(30) as u32
        } else {
            (spacing - 24).clamp(40, 160) as u32
        };
        let (ls, dir) = if last {
            (anchored(text(SMALL_PX, &INK), HPos::Left, VPos::Center), 1)
        } else {
            (ls.clone(), -1)
        };
        for (y, label) in thin_ticks(&px, SMALL_PX as i32 + 4) {
            let label = fit_text(&plot, &label, &ls, label_room);
            let lw = text_width(&plot, &label, &ls) as i32;
            let (x0, x1) = if last {
                (x + 6, x + 9 + lw + 3)
            } else {
                (x - 9 - lw - 3, x - 6)
            };
            plot.draw(&Rectangle::new(
                [(x0, y - 9), (x1, y + 9)],
                WHITE.mix(0.85).filled(),
            ))
            .map_err(plot_err)?;
            plot.draw(&PathElement::new(
                vec![(x + 5 * dir, y), (x, y)],
                AXIS.stroke_width(1),
            ))
            .map_err(plot_err)?;
            draw_text_at(&plot, &label, &ls, (x + 9 * dir, y))?;
        }
    }
    draw_footnote(
        &plot,
        "one line per finished trial · categorical values evenly spaced, lines jittered \
         slightly where values repeat · numeric axes linear, log where values span ≥ 2 decades",
    )?;

    // Colour bar with labelled ends, then the line key.
    let hs = anchored(bold(LEGEND_PX, &INK), HPos::Left, VPos::Top);
    let heading = fit_text(
        &legend,
        &format!("colour: {}", goal.name()),
        &hs,
        legend_w - 24,
    );
    draw_text_at(&legend, &heading, &hs, (12, 20))?;
    let (bar_x, bar_w) = (16i32, 22i32);
    let bar_top = 56i32;
    let bar_h = ((bh as i32 - bar_top) / 2).clamp(80, 260);
    for dy in 0..bar_h {
        let f = 1.0 - dy as f64 / (bar_h - 1).max(1) as f64;
        legend
            .draw(&Rectangle::new(
                [(bar_x, bar_top + dy), (bar_x + bar_w, bar_top + dy + 1)],
                ramp(f).filled(),
            ))
            .map_err(plot_err)?;
    }
    legend
        .draw(&Rectangle::new(
            [(bar_x, bar_top), (bar_x + bar_w, bar_top + bar_h)],
            AXIS.stroke_width(1),
        ))
        .map_err(plot_err)?;
    let (best_v, worst_v) = match goal {
        Goal::MaxAccuracy => (c_hi, c_lo),
        Goal::MinLoss => (c_lo, c_hi),
    };
    let es = anchored(text(LEGEND_PX, &INK), HPos::Left, VPos::Center);
    let room = legend_w.saturating_sub((bar_x + bar_w + 20) as u32);
    let bar_labels = if c_hi > c_lo {
        vec![
            (bar_top, format!("best {}", goal.fmt(best_v))),
            (bar_top + bar_h / 2, goal.fmt((best_v + worst_v) / 2.0)),
            (bar_top + bar_h, format!("worst {}", goal.fmt(worst_v))),
        ]
    } else {
        vec![(bar_top, format!("all {}", goal.fmt(best_v)))]
    };
    for (y, label) in bar_labels {
        let label = fit_text(&legend, &label, &es, room);
        draw_text_at(&legend, &label, &es, (bar_x + bar_w + 8, y))?;
    }
    let n_pruned = scored.iter().filter(|s| s.pruned).count();
    let mut entries = Vec::new();
    if let Some(pos) = top {
        entries.push(
            LegendEntry::new(
                format!("best trial #{}", sweep.trials[pos].index),
                ramp(1.0).mix(1.0),
                Swatch::solid(4),
            )
            .emphasized(),
        );
        entries.push(LegendEntry::note(unique_labels(sweep)[pos].clone()));
    }
    entries.push(LegendEntry::new(
        format!("succeeded ({})", scored.len() - n_pruned),
        ramp(0.5).mix(1.0),
        Swatch::solid(2),
    ));
    if n_pruned > 0 {
        entries.push(LegendEntry::new(
            format!("pruned ({n_pruned}), grey"),
            PRUNED.mix(1.0),
            Swatch::solid(2),
        ));
    }
    let (_, key_area) = legend.split_vertically((bar_top + bar_h + 24) as u32);
    draw_legend(&key_area, "lines", &entries)?;
    Ok(Drawn::Chart)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thinned_ticks_keep_their_distance() {
        let ticks: Vec<(i32, String)> = (0..40).map(|i| (i * 5, i.to_string())).collect();
        let kept = thin_ticks(&ticks, 17);
        assert!(kept.len() < 40 && kept.len() >= 10, "{}", kept.len());
        assert!(kept.windows(2).all(|w| w[1].0 - w[0].0 >= 17));
        assert_eq!(kept[0].1, "0");
        let wide: Vec<(i32, String)> = (0..5).map(|i| (i * 100, i.to_string())).collect();
        assert_eq!(thin_ticks(&wide, 17).len(), 5);
    }
}
