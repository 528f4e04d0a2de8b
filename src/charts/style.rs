//! The look shared by every chart: the embedded DejaVu fonts, text sizes,
//! colours and the helpers that measure, shorten and place text.

use std::sync::OnceLock;

use anyhow::{anyhow, Result};
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use plotters::style::{register_font, FontStyle};

pub(super) const FAMILY: &str = "sans-serif";
pub(super) const TITLE_PX: u32 = 28;
pub(super) const SUBTITLE_PX: u32 = 16;
pub(super) const AXIS_DESC_PX: u32 = 18;
pub(super) const TICK_PX: u32 = 16;
pub(super) const LEGEND_PX: u32 = 15;
pub(super) const SMALL_PX: u32 = 13;

pub(super) const INK: RGBColor = RGBColor(33, 33, 33);
pub(super) const MUTED: RGBColor = RGBColor(110, 110, 110);
pub(super) const GRID: RGBColor = RGBColor(225, 225, 225);
pub(super) const GRID_LIGHT: RGBColor = RGBColor(243, 243, 243);
pub(super) const AXIS: RGBColor = RGBColor(90, 90, 90);
pub(super) const BAR: RGBColor = RGBColor(78, 121, 167);
pub(super) const BAR_BEST: RGBColor = RGBColor(242, 142, 43);
/// Pruned trials in the objective charts.
pub(super) const PRUNED: RGBColor = RGBColor(150, 150, 150);

/// matplotlib "tab10": distinct, print-friendly line colours.
pub(super) const PALETTE: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

pub(super) type Area<'a> = DrawingArea<BitMapBackend<'a>, Shift>;

pub(super) fn ensure_fonts() -> Result<()> {
    static FONTS: OnceLock<std::result::Result<(), String>> = OnceLock::new();
    FONTS
        .get_or_init(|| {
            // Every family name plotters may ask for maps to DejaVu Sans.
            for family in [FAMILY, "serif", "monospace"] {
                for (style, bytes) in [
                    (FontStyle::Normal, dejavu::sans::regular()),
                    (FontStyle::Bold, dejavu::sans::bold()),
                    (FontStyle::Italic, dejavu::sans::oblique()),
                    (FontStyle::Oblique, dejavu::sans::oblique()),
                ] {
                    register_font(family, style, bytes)
                        .map_err(|_| format!("embedded DejaVu font for {family:?} is invalid"))?;
                }
            }
            Ok(())
        })
        .clone()
        .map_err(|e| anyhow!(e))
}

pub(super) fn plot_err<E: std::fmt::Display>(e: E) -> anyhow::Error {
    anyhow!("drawing failed: {e}")
}

pub(super) fn text(px: u32, color: &RGBColor) -> TextStyle<'static> {
    (FAMILY, px as f64).into_font().color(color)
}

pub(super) fn bold(px: u32, color: &RGBColor) -> TextStyle<'static> {
    (FAMILY, px as f64, FontStyle::Bold)
        .into_font()
        .color(color)
}

pub(super) fn anchored(style: TextStyle<'static>, h: HPos, v: VPos) -> TextStyle<'static> {
    style.pos(Pos::new(h, v))
}

pub(super) fn text_width(area: &Area, s: &str, style: &TextStyle) -> u32 {
    area.estimate_text_size(s, style)
        .map(|(w, _)| w)
        .unwrap_or_else(|_| (s.chars().count() as f64 * style.font.get_size() * 0.6) as u32)
}

/// Shortens `s` with an ellipsis until it fits into `max_w` pixels.
pub(super) fn fit_text(area: &Area, s: &str, style: &TextStyle, max_w: u32) -> String {
    if text_width(area, s, style) <= max_w {
        return s.to_string();
    }
    let mut chars: Vec<char> = s.chars().collect();
    while !chars.is_empty() {
        chars.pop();
        let candidate: String = chars.iter().collect::<String>().trim_end().to_string() + "…";
        if text_width(area, &candidate, style) <= max_w {
            return candidate;
        }
    }
    String::new()
}

pub(super) fn draw_text_at(area: &Area, s: &str, style: &TextStyle, pos: (i32, i32)) -> Result<()> {
    // plotters + ab_glyph place vertically centred text a little high; nudge
    // it down so it lines up with markers and bars.
    let dy = if matches!(style.pos.v_pos, VPos::Center) {
        center_nudge(style.font.get_size())
    } else {
        0
    };
    area.draw_text(s, style, (pos.0, pos.1 + dy))
        .map_err(plot_err)
}

pub(super) fn center_nudge(px: f64) -> i32 {
    (px * 0.2).round() as i32
}

pub(super) fn color_of(pos: usize) -> RGBColor {
    PALETTE[pos % PALETTE.len()]
}
