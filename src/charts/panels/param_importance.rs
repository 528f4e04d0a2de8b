//! `param_importance`: the share of the objective's variance each varied
//! hyperparameter explains on its own (one-way ANOVA eta squared), as bars
//! sorted from most to least important.

use anyhow::Result;

use super::hbars::{hbar_chart, row_px, Bar, BarLayout};
use crate::charts::axes::{AxisSpec, TickAxis};
use crate::charts::frame::{draw_footnote, draw_header, draw_no_data};
use crate::charts::stats::{objective_trials, param_groups, param_importance, Goal, Scored};
use crate::charts::style::{bold, text, text_width, Area, BAR, BAR_BEST, INK, TICK_PX};
use crate::charts::{ChartSweep, Drawn, Panel};

pub(super) fn draw(root: &Area, sweep: &ChartSweep, panel: &Panel) -> Result<Drawn> {
    let goal = Goal::of(sweep);
    let body = draw_header(root, sweep, panel)?;
    let scored = objective_trials(sweep, goal);
    let done: Vec<&Scored> = scored.iter().filter(|s| !s.pruned).collect();
    if sweep.varied.is_empty() {
        return draw_no_data(&body, "the sweep varies no hyperparameter");
    }
    let importance = param_importance(sweep);
    if importance.is_empty() {
        return draw_no_data(
            &body,
            &format!(
                "needs at least two succeeded trials whose {} differs",
                goal.name()
            ),
        );
    }
    let bar_labels: Vec<String> = importance
        .iter()
        .map(|(p, _)| {
            let k = param_groups(p, &done).len();
            format!("{p} ({k} value{})", if k == 1 { "" } else { "s" })
        })
        .collect();
    let (bw, _) = body.dim_in_pixel();
    let label_w = bar_labels
        .iter()
        .map(|l| text_width(root, l, &text(TICK_PX, &INK)))
        .max()
        .unwrap_or(0)
        .clamp(60, (bw as f64 * 0.4) as u32);
    let n = importance.len();
    let top = importance[0].1;
    let x_hi = ((top * 1.25).max(0.05) / 0.05).ceil() * 0.05;
    let x_axis = TickAxis::linear(0.0, x_hi.min(1.15), 8, false);
    let x_fmt = Goal::MaxAccuracy.tick_fmt(&x_axis.ticks);
    let x_desc = format!(
        "share of the {} variance explained (one-way ANOVA η²)",
        goal.name()
    );
    let foot_h = 30;
    let chart_area = body.margin(0, foot_h, 0, 0);
    let x = AxisSpec {
        scale: x_axis,
        desc: &x_desc,
        fmt: &x_fmt,
    };
    let mut chart = hbar_chart(&chart_area, x, n, label_w, 32)?;
    let layout = BarLayout {
        rows: n,
        x0: 0.0,
        thickness: 0.7f64.min(44.0 / row_px(&chart, 0.0).max(1) as f64),
        label_w,
    };
    for (rank, (_, eta)) in importance.iter().enumerate() {
        let bar = Bar {
            value: *eta,
            color: if rank == 0 { BAR_BEST } else { BAR },
            value_text: format!("{:.1}%", eta * 100.0),
            value_style: bold(15, &INK),
            label: &bar_labels[rank],
            label_style: text(TICK_PX, &INK),
        };
        layout.draw(root, &mut chart, rank, bar)?;
    }
    draw_footnote(
        &body,
        &format!(
            "method: one-way ANOVA η² = between-value-group / total variance of the {} over \
             {} succeeded trials; each parameter on its own, so shares need not sum to 100%",
            goal.name(),
            done.len()
        ),
    )?;
    Ok(Drawn::Chart)
}
