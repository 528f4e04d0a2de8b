//! The chrome around every chart: the title and subtitle header, the
//! "no data yet" frame that stands in for a chart, and the footnote.

use anyhow::Result;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, VPos};

use super::style::{
    anchored, bold, draw_text_at, fit_text, plot_err, text, Area, AXIS_DESC_PX, GRID, INK, MUTED,
    SMALL_PX, SUBTITLE_PX, TITLE_PX,
};
use super::{ChartSweep, Drawn, Panel};

/// Height of the title and subtitle band on top of every chart.
pub(super) const HEADER_H: u32 = 88;

fn chart_title(sweep: &ChartSweep, panel: &Panel) -> String {
    let base = panel
        .title
        .clone()
        .unwrap_or_else(|| panel.kind.default_title().to_string());
    if sweep.name.is_empty() {
        base
    } else {
        format!("{base} — {}", sweep.name)
    }
}

fn subtitle(sweep: &ChartSweep) -> String {
    let finished = sweep
        .trials
        .iter()
        .filter(|t| t.status == "succeeded")
        .count();
    let mut parts = Vec::new();
    if !sweep.dataset.is_empty() {
        parts.push(format!("dataset {}", sweep.dataset));
    }
    if !sweep.sweep_id.is_empty() {
        parts.push(format!("sweep {}", sweep.sweep_id));
    }
    parts.push(format!(
        "{} trial{}, {finished} succeeded",
        sweep.trials.len(),
        if sweep.trials.len() == 1 { "" } else { "s" }
    ));
    if !sweep.varied.is_empty() {
        parts.push(format!("varied: {}", sweep.varied.join(", ")));
    }
    parts.join("  ·  ")
}

/// Draws the panel's title and the sweep's subtitle; returns the area below them.
pub(super) fn draw_header<'a>(
    root: &Area<'a>,
    sweep: &ChartSweep,
    panel: &Panel,
) -> Result<Area<'a>> {
    let (title, sub) = (chart_title(sweep, panel), subtitle(sweep));
    let (w, _) = root.dim_in_pixel();
    let max_w = w.saturating_sub(40);
    let ts = anchored(bold(TITLE_PX, &INK), HPos::Center, VPos::Top);
    let title = fit_text(root, &title, &ts, max_w);
    draw_text_at(root, &title, &ts, (w as i32 / 2, 18))?;
    let ss = anchored(text(SUBTITLE_PX, &MUTED), HPos::Center, VPos::Top);
    let sub = fit_text(root, &sub, &ss, max_w);
    draw_text_at(root, &sub, &ss, (w as i32 / 2, 58))?;
    let (_, body) = root.split_vertically(HEADER_H);
    Ok(body)
}

/// A chart frame that only says "no data yet".
pub(super) fn draw_no_data(body: &Area, reason: &str) -> Result<Drawn> {
    let (w, h) = body.dim_in_pixel();
    let frame = [(40, 10), (w as i32 - 40, h as i32 - 30)];
    body.draw(&Rectangle::new(
        frame,
        ShapeStyle::from(&GRID).stroke_width(2),
    ))
    .map_err(plot_err)?;
    let cx = w as i32 / 2;
    let cy = (h as i32 - 20) / 2;
    let big = anchored(bold(34, &MUTED), HPos::Center, VPos::Center);
    draw_text_at(body, "no data yet", &big, (cx, cy - 18))?;
    let small = anchored(text(AXIS_DESC_PX, &MUTED), HPos::Center, VPos::Center);
    let reason = fit_text(body, reason, &small, w.saturating_sub(120));
    draw_text_at(body, &reason, &small, (cx, cy + 24))?;
    Ok(Drawn::NoData)
}

/// Small muted text at the bottom left of an area.
pub(super) fn draw_footnote(area: &Area, note: &str) -> Result<()> {
    let (w, h) = area.dim_in_pixel();
    let s = anchored(text(SMALL_PX, &MUTED), HPos::Left, VPos::Bottom);
    let note = fit_text(area, note, &s, w.saturating_sub(32));
    draw_text_at(area, &note, &s, (16, h as i32 - 6))
}
