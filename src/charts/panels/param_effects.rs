//! `param_effects`: small multiples, one cell per varied hyperparameter:
//! mean objective per value with a ±1 std box, min–max whiskers, the single
//! trials and the number of trials per value.

use anyhow::Result;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, VPos};

use super::jitter;
use crate::charts::axes::{finite_range, mesh_look, plot_area_pixels, TickAxis};
use crate::charts::frame::{draw_footnote, draw_header, draw_no_data};
use crate::charts::labels::elide_common_prefix;
use crate::charts::stats::{
    objective_trials, param_groups, varied_present, Goal, Scored, ValueGroup,
};
use crate::charts::style::{
    anchored, bold, center_nudge, draw_text_at, fit_text, plot_err, text, text_width, Area, AXIS,
    BAR, BAR_BEST, GRID, INK, LEGEND_PX, MUTED, SMALL_PX,
};
use crate::charts::{ChartSweep, Drawn, Panel};

pub(super) fn draw(root: &Area, sweep: &ChartSweep, panel: &Panel) -> Result<Drawn> {
    let goal = Goal::of(sweep);
    let body = draw_header(root, sweep, panel)?;
    let scored = objective_trials(sweep, goal);
    let done: Vec<&Scored> = scored.iter().filter(|s| !s.pruned).collect();
    if done.is_empty() {
        return draw_no_data(
            &body,
            &format!("no trial has succeeded with a {} yet", goal.name()),
        );
    }
    let params = varied_present(sweep, &done);
    if params.is_empty() {
        return draw_no_data(&body, "the sweep varies no hyperparameter");
    }
    let (v_lo, v_hi) = finite_range(done.iter().map(|s| s.value)).expect("not empty");
    let n = params.len();
    let cols = match n {
        1..=3 => n,
        4 => 2,
        _ => 3,
    };
    let rows = n.div_ceil(cols);
    let foot_h = 26u32;
    let grid_area = body.margin(0, foot_h, 8, 8);
    let cells = grid_area.split_evenly((rows, cols));
    for (param, cell) in params.iter().zip(cells.iter()) {
        let groups = param_groups(param, &done);
        draw_effect_cell(root, cell, param, &groups, &done, goal, (v_lo, v_hi))?;
    }
    draw_footnote(
        &body,
        &format!(
            "y: best-epoch {} of {} succeeded trials (pruned left out) · dot: mean · box: ±1 \
             std · whisker: min–max · grey: single trials · n: trials per value · orange: best",
            goal.name(),
            done.len()
        ),
    )?;
    Ok(Drawn::Chart)
}

fn draw_effect_cell(
    root: &Area,
    cell: &Area,
    param: &str,
    groups: &[ValueGroup],
    done: &[&Scored],
    goal: Goal,
    (v_lo, v_hi): (f64, f64),
) -> Result<()> {
    let k = groups.len().max(1);
    let means: Vec<f64> = groups.iter().map(ValueGroup::mean).collect();
    // the group whose mean `beats` every other one (ties: the first)
    let first_unbeaten = |beats: &dyn Fn(f64, f64) -> bool| {
        (0..groups.len()).fold(None, |b: Option<usize>, i| match b {
            Some(j) if !beats(means[i], means[j]) => Some(j),
            _ => Some(i),
        })
    };
    let best_g = first_unbeaten(&|a, b| goal.better(a, b));
    let worst_g = first_unbeaten(&|a, b| goal.better(b, a));

    // Cell title: the parameter and the answer ("best: gap").
    let (cw, _) = cell.dim_in_pixel();
    let title = match (best_g, worst_g) {
        (Some(b), Some(w)) if groups.len() > 1 => format!(
            "{param}: best {} ({}), worst {} ({})",
            groups[b].label,
            goal.fmt(means[b]),
            groups[w].label,
            goal.fmt(means[w])
        ),
        _ => format!("{param}: one value only"),
    };
    let ts = anchored(bold(LEGEND_PX, &INK), HPos::Center, VPos::Top);
    let title = fit_text(cell, &title, &ts, cw.saturating_sub(16));
    draw_text_at(cell, &title, &ts, (cw as i32 / 2, 6))?;

    // Value labels: one row when they fit, else staggered over two rows.
    let label_area_h = 62u32;
    let y_axis = goal.axis(v_lo, v_hi);
    let y_fmt = goal.tick_fmt(&y_axis.ticks);
    let x_axis = TickAxis::bare(-0.6, k as f64 - 0.4);
    let mut chart = ChartBuilder::on(cell)
        .margin_top(30)
        .margin_left(6)
        .margin_right(14)
        .margin_bottom(4)
        .x_label_area_size(label_area_h)
        .y_label_area_size(72)
        .build_cartesian_2d(x_axis, y_axis)
        .map_err(plot_err)?;
    let mut mesh = chart.configure_mesh();
    mesh_look(&mut mesh, SMALL_PX, SMALL_PX)
        .disable_x_mesh()
        .x_labels(0)
        .y_labels(6)
        .y_label_offset(center_nudge(SMALL_PX as f64))
        .y_label_formatter(&y_fmt)
        .draw()
        .map_err(plot_err)?;

    let slot = {
        let a = chart.backend_coord(&(0.0, v_lo));
        let b = chart.backend_coord(&(1.0, v_lo));
        (b.0 - a.0).max(1)
    };
    let box_w = 0.18f64.min(26.0 / slot as f64);
    for (i, g) in groups.iter().enumerate() {
        let x = i as f64;
        let color = if Some(i) == best_g && groups.len() > 1 {
            BAR_BEST
        } else {
            BAR
        };
        // single trials, jittered sideways
        chart
            .draw_series(g.members.iter().zip(&g.values).map(|(&m, &v)| {
                let dx = 0.3 * jitter(done[m].trial.index as u64, 7) * (box_w / 0.18);
                Circle::new((x + dx, v), 2, MUTED.mix(0.4).filled())
            }))
            .map_err(plot_err)?;
        let (lo, hi) = g.min_max();
        let (mean, sd) = (g.mean(), g.std());
        // min-max whisker with caps
        let whisker = AXIS.stroke_width(1);
        chart
            .draw_series(std::iter::once(PathElement::new(
                vec![(x, lo), (x, hi)],
                whisker,
            )))
            .map_err(plot_err)?;
        for y in [lo, hi] {
            chart
                .draw_series(std::iter::once(PathElement::new(
                    vec![(x - box_w * 0.6, y), (x + box_w * 0.6, y)],
                    whisker,
                )))
                .map_err(plot_err)?;
        }
        // ±1 std box
        if sd > 0.0 {
            let (b0, b1) = ((mean - sd).max(lo), (mean + sd).min(hi));
            chart
                .draw_series(std::iter::once(Rectangle::new(
                    [(x - box_w, b0), (x + box_w, b1)],
                    color.mix(0.22).filled(),
                )))
                .map_err(plot_err)?;
            chart
                .draw_series(std::iter::once(Rectangle::new(
                    [(x - box_w, b0), (x + box_w, b1)],
                    color.mix(0.8).stroke_width(1),
                )))
                .map_err(plot_err)?;
        }
        chart
            .draw_series(std::iter::once(Circle::new((x, mean), 6, color.filled())))
            .map_err(plot_err)?;
        // mean value beside the dot when there is room
        let (px, py) = chart.backend_coord(&(x, mean));
        let ms = anchored(text(SMALL_PX, &INK), HPos::Left, VPos::Center);
        let mtext = goal.fmt(mean);
        let mw = text_width(root, &mtext, &ms) as i32;
        let off = (box_w * slot as f64) as i32 + 5;
        if off + mw + 4 < slot / 2 {
            root.draw(&Rectangle::new(
                [(px + off - 2, py - 8), (px + off + mw + 2, py + 9)],
                WHITE.mix(0.8).filled(),
            ))
            .map_err(plot_err)?;
            draw_text_at(root, &mtext, &ms, (px + off, py))?;
        }
    }

    // Value labels and n under the axis; a prefix every label shares
    // ("architecture-variant-01", "-02", …) is elided so the rest shows.
    let shown = elide_common_prefix(&groups.iter().map(|g| g.label.clone()).collect::<Vec<_>>());
    let ls = anchored(text(SMALL_PX, &INK), HPos::Center, VPos::Top);
    let ns = anchored(text(SMALL_PX - 1, &MUTED), HPos::Center, VPos::Top);
    let widest = shown
        .iter()
        .map(|l| text_width(root, l, &ls) as i32)
        .max()
        .unwrap_or(0);
    let stagger = widest + 6 > slot;
    let room = if stagger { 2 * slot - 8 } else { slot - 6 }.max(20) as u32;
    let y_axis_px = plot_area_pixels(&chart).1.end;
    for (i, g) in groups.iter().enumerate() {
        let (px, _) = chart.backend_coord(&(i as f64, v_lo));
        let row = if stagger { (i % 2) as i32 } else { 0 };
        let y = y_axis_px + 6 + row * 16;
        let label = fit_text(root, &shown[i], &ls, room);
        let s = if Some(i) == best_g && groups.len() > 1 {
            anchored(bold(SMALL_PX, &INK), HPos::Center, VPos::Top)
        } else {
            ls.clone()
        };
        if stagger && row == 1 {
            root.draw(&PathElement::new(
                vec![(px, y_axis_px + 1), (px, y - 2)],
                GRID.stroke_width(1),
            ))
            .map_err(plot_err)?;
        }
        draw_text_at(root, &label, &s, (px, y))?;
        let n_y = y_axis_px + 6 + if stagger { 34 } else { 18 };
        let nt = format!("n={}", g.values.len());
        if text_width(root, &nt, &ns) as i32 <= slot - 2 || !stagger {
            draw_text_at(root, &nt, &ns, (px, n_y))?;
        }
    }
    Ok(())
}
