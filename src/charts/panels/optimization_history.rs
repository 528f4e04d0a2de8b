//! `optimization_history`: the objective of every finished trial in sweep
//! order (pruned ones hollow and grey) and the best-so-far staircase.

use anyhow::Result;
use plotters::prelude::*;

use super::staircase;
use crate::charts::axes::{finite_range, xy_chart, AxisSpec, TickAxis};
use crate::charts::frame::{draw_header, draw_no_data};
use crate::charts::labels::unique_labels;
use crate::charts::legend::{draw_legend, legend_width, LegendEntry, Swatch};
use crate::charts::stats::{best_scored, objective_trials, Goal};
use crate::charts::style::{plot_err, Area, BAR_BEST, INK, MUTED, PALETTE, PRUNED};
use crate::charts::{ChartSweep, Drawn, Panel};

pub(super) fn draw(root: &Area, sweep: &ChartSweep, panel: &Panel) -> Result<Drawn> {
    let goal = Goal::of(sweep);
    let body = draw_header(root, sweep, panel)?;
    let scored = objective_trials(sweep, goal);
    let (Some((i_lo, i_hi)), Some((v_lo, v_hi))) = (
        finite_range(scored.iter().map(|s| s.trial.index as f64)),
        finite_range(scored.iter().map(|s| s.value)),
    ) else {
        return draw_no_data(
            &body,
            &format!("no trial has finished with a {} yet", goal.name()),
        );
    };
    let labels = unique_labels(sweep);

    // Best so far over succeeded trials, as a staircase.
    let mut best: Option<f64> = None;
    let mut stairs = staircase(scored.iter().filter(|s| !s.pruned).map(|s| {
        let b = match best {
            Some(b) if !goal.better(s.value, b) => b,
            _ => s.value,
        };
        best = Some(b);
        (s.trial.index as f64, b)
    }));
    if let Some(&(x, b)) = stairs.last() {
        if x < i_hi {
            stairs.push((i_hi, b));
        }
    }
    let top = best_scored(&scored, goal);

    let n_done = scored.iter().filter(|s| !s.pruned).count();
    let n_pruned = scored.len() - n_done;
    let mut entries = vec![
        LegendEntry::new(
            format!("succeeded ({n_done})"),
            PALETTE[0].mix(0.85),
            Swatch::Dot,
        ),
        LegendEntry::new(
            format!("pruned ({n_pruned}), value at stop"),
            PRUNED.mix(1.0),
            Swatch::Hollow,
        ),
        LegendEntry::new("best so far", BAR_BEST.mix(1.0), Swatch::solid(3)),
    ];
    if let Some(t) = top {
        entries.push(
            LegendEntry::new(
                format!("best: #{} {}", t.trial.index, goal.fmt(t.value)),
                INK.mix(1.0),
                Swatch::Ring,
            )
            .emphasized(),
        );
        entries.push(LegendEntry::note(labels[t.pos].clone()));
    }
    let others = sweep.trials.len() - scored.len();
    if others > 0 {
        entries.push(LegendEntry::new(
            format!("{others} other trial(s) not shown"),
            MUTED.mix(1.0),
            Swatch::Blank,
        ));
    }
    let heading = format!("objective: {}", goal.name());
    let legend_w = legend_width(root, &heading, &entries);
    let (bw, _) = body.dim_in_pixel();
    let (plot_area, legend_area) = body.split_horizontally(bw - legend_w);

    let x_pad = ((i_hi - i_lo) * 0.02).max(0.6);
    let x_axis = TickAxis::linear(i_lo - x_pad, i_hi + x_pad, 10, true);
    let y_axis = goal.axis(v_lo, v_hi);
    let y_fmt = goal.tick_fmt(&y_axis.ticks);
    let x_fmt = |v: &f64| format!("{v:.0}");
    let y_desc = format!("best-epoch {} ({})", goal.name(), goal.direction());
    let mut chart = xy_chart(
        &plot_area,
        AxisSpec {
            scale: x_axis,
            desc: "trial (sweep order)",
            fmt: &x_fmt,
        },
        AxisSpec {
            scale: y_axis,
            desc: &y_desc,
            fmt: &y_fmt,
        },
    )?;

    let r = if scored.len() > 60 { 4 } else { 6 };
    for s in scored.iter().filter(|s| s.pruned) {
        chart
            .draw_series(std::iter::once(Circle::new(
                (s.trial.index as f64, s.value),
                r,
                ShapeStyle::from(&PRUNED).stroke_width(2),
            )))
            .map_err(plot_err)?;
    }
    chart
        .draw_series(scored.iter().filter(|s| !s.pruned).map(|s| {
            Circle::new(
                (s.trial.index as f64, s.value),
                r,
                PALETTE[0].mix(0.85).filled(),
            )
        }))
        .map_err(plot_err)?;
    if stairs.len() > 1 {
        chart
            .draw_series(LineSeries::new(
                stairs.clone(),
                BAR_BEST.mix(0.95).stroke_width(3),
            ))
            .map_err(plot_err)?;
    }
    if let Some(t) = top {
        chart
            .draw_series(std::iter::once(Circle::new(
                (t.trial.index as f64, t.value),
                r + 6,
                ShapeStyle::from(&INK).stroke_width(2),
            )))
            .map_err(plot_err)?;
    }
    draw_legend(&legend_area, &heading, &entries)?;
    Ok(Drawn::Chart)
}
