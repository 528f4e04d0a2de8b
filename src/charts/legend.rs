//! The legend column drawn to the right of a plot: its entries and swatches,
//! its width, and the cap on its rows ("+K more").

use anyhow::Result;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, VPos};
use plotters::style::RGBAColor;

use super::style::{
    anchored, bold, draw_text_at, fit_text, plot_err, text, text_width, Area, INK, LEGEND_PX, MUTED,
};

#[derive(Clone, Copy, PartialEq)]
pub(super) enum Swatch {
    Line {
        dashed: bool,
        width: u32,
    },
    Dot,
    /// An unfilled circle (pruned trials in scatter charts).
    Hollow,
    Ring,
    /// No symbol: a text-only row.
    Blank,
}

impl Swatch {
    /// A solid line of this width.
    pub(super) fn solid(width: u32) -> Swatch {
        Swatch::Line {
            dashed: false,
            width,
        }
    }

    /// A dashed line of this width.
    pub(super) fn dashed(width: u32) -> Swatch {
        Swatch::Line {
            dashed: true,
            width,
        }
    }
}

pub(super) struct LegendEntry {
    pub(super) label: String,
    pub(super) color: RGBAColor,
    pub(super) swatch: Swatch,
    pub(super) marker: bool,
    pub(super) emphasis: bool,
}

impl LegendEntry {
    /// A plain row: no dot on the swatch, regular text.
    pub(super) fn new(label: impl Into<String>, color: RGBAColor, swatch: Swatch) -> LegendEntry {
        LegendEntry {
            label: label.into(),
            color,
            swatch,
            marker: false,
            emphasis: false,
        }
    }

    /// A text-only row in ink.
    pub(super) fn note(label: impl Into<String>) -> LegendEntry {
        LegendEntry::new(label, INK.mix(1.0), Swatch::Blank)
    }

    /// With a dot in the middle of the swatch.
    pub(super) fn with_marker(self) -> LegendEntry {
        LegendEntry {
            marker: true,
            ..self
        }
    }

    /// With its text in bold.
    pub(super) fn emphasized(self) -> LegendEntry {
        LegendEntry {
            emphasis: true,
            ..self
        }
    }
}

const LEGEND_ROW: i32 = 24;
const LEGEND_SWATCH: i32 = 38;
/// At most this many legend rows, the last one then reading "+K more".
pub(super) const LEGEND_MAX_ROWS: usize = 16;

pub(super) fn legend_width(root: &Area, heading: &str, entries: &[LegendEntry]) -> u32 {
    let (w, _) = root.dim_in_pixel();
    let ts = bold(LEGEND_PX, &INK);
    let widest = entries
        .iter()
        .map(|e| text_width(root, &e.label, &ts))
        .max()
        .unwrap_or(0)
        + (LEGEND_SWATCH + 50) as u32;
    let head = text_width(root, heading, &ts) + 40;
    widest.max(head).clamp(200, (w as f64 * 0.36) as u32)
}

/// How many of `entries` legend rows to draw when `fit` rows fit, and how
/// many are left for a final "+K more" row: at most [`LEGEND_MAX_ROWS`] rows.
fn legend_rows(entries: usize, fit: usize) -> (usize, usize) {
    let rows = fit.min(LEGEND_MAX_ROWS);
    if entries <= rows {
        (entries, 0)
    } else {
        let shown = rows.saturating_sub(1);
        (shown, entries - shown)
    }
}

pub(super) fn draw_legend(area: &Area, heading: &str, entries: &[LegendEntry]) -> Result<()> {
    let (w, h) = area.dim_in_pixel();
    let x0 = 12;
    let mut y = 20;
    let hs = anchored(bold(LEGEND_PX, &INK), HPos::Left, VPos::Top);
    let heading = fit_text(area, heading, &hs, w.saturating_sub(24));
    draw_text_at(area, &heading, &hs, (x0, y))?;
    y += 30;
    let rows = ((h as i32 - y - 16) / LEGEND_ROW).max(0) as usize;
    let (shown, more) = legend_rows(entries.len(), rows);
    let max_text = w.saturating_sub((x0 + LEGEND_SWATCH + 16) as u32);
    for e in &entries[..shown] {
        let cy = y + LEGEND_ROW / 2;
        let (sx0, sx1) = (x0, x0 + LEGEND_SWATCH);
        match e.swatch {
            Swatch::Line { dashed, width } => {
                let style = ShapeStyle {
                    color: e.color,
                    filled: false,
                    stroke_width: width,
                };
                if dashed {
                    let mut x = sx0;
                    while x < sx1 {
                        let end = (x + 8).min(sx1);
                        area.draw(&PathElement::new(vec![(x, cy), (end, cy)], style))
                            .map_err(plot_err)?;
                        x += 13;
                    }
                } else {
                    area.draw(&PathElement::new(vec![(sx0, cy), (sx1, cy)], style))
                        .map_err(plot_err)?;
                }
            }
            Swatch::Dot | Swatch::Blank => {}
            Swatch::Hollow => {
                area.draw(&Circle::new(
                    ((sx0 + sx1) / 2, cy),
                    5,
                    ShapeStyle {
                        color: e.color,
                        filled: false,
                        stroke_width: 2,
                    },
                ))
                .map_err(plot_err)?;
            }
            Swatch::Ring => {
                area.draw(&Circle::new(
                    ((sx0 + sx1) / 2, cy),
                    10,
                    ShapeStyle::from(&INK).stroke_width(2),
                ))
                .map_err(plot_err)?;
            }
        }
        if e.marker || e.swatch == Swatch::Dot {
            let r = if e.swatch == Swatch::Dot { 6 } else { 4 };
            area.draw(&Circle::new(((sx0 + sx1) / 2, cy), r, e.color.filled()))
                .map_err(plot_err)?;
        }
        let ts = if e.emphasis {
            bold(LEGEND_PX, &INK)
        } else {
            text(LEGEND_PX, &INK)
        };
        let ts = anchored(ts, HPos::Left, VPos::Center);
        let (tx, max_text) = if e.swatch == Swatch::Blank {
            (x0, w.saturating_sub(x0 as u32 + 8))
        } else {
            (sx1 + 10, max_text)
        };
        let label = fit_text(area, &e.label, &ts, max_text);
        draw_text_at(area, &label, &ts, (tx, cy))?;
        y += LEGEND_ROW;
    }
    if more > 0 {
        let ts = anchored(text(LEGEND_PX, &MUTED), HPos::Left, VPos::Center);
        draw_text_at(
            area,
            &format!("+{more} more"),
            &ts,
            (x0, y + LEGEND_ROW / 2),
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn legend_of_many_trials_is_capped() {
        // 100 trials, room for 22 rows: the top 15, then "+85 more"
        assert_eq!(LEGEND_MAX_ROWS, 16);
        assert_eq!(legend_rows(100, 22), (15, 85));
        assert_eq!(legend_rows(16, 22), (16, 0));
        assert_eq!(legend_rows(17, 22), (15, 2));
        assert_eq!(legend_rows(12, 10), (9, 3));
        assert_eq!(legend_rows(3, 0), (0, 3));
    }
}
