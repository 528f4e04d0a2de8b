//! Numeric axes: tick positions chosen here (integer epochs, 1-2-5 log
//! ticks, percentages), data ranges and padding, tick and number formats, and
//! the frame of the line and scatter charts (grid, axes, descriptions).

use std::ops::Range;

use anyhow::Result;
use plotters::chart::MeshStyle;
use plotters::coord::ranged1d::{DefaultFormatting, KeyPointHint, Ranged};
use plotters::prelude::*;

use super::labels::format_param;
use super::style::{
    center_nudge, plot_err, text, Area, AXIS, AXIS_DESC_PX, GRID, GRID_LIGHT, INK, TICK_PX,
};

pub(super) fn finite_range(values: impl IntoIterator<Item = f64>) -> Option<(f64, f64)> {
    values
        .into_iter()
        .filter(|v| v.is_finite())
        .fold(None, |acc, v| match acc {
            None => Some((v, v)),
            Some((lo, hi)) => Some((lo.min(v), hi.max(v))),
        })
}

/// A numeric axis whose tick positions are chosen here rather than by
/// plotters, optionally logarithmic. Values are always in data units.
#[derive(Clone)]
pub(super) struct TickAxis {
    lo: f64,
    hi: f64,
    log: bool,
    pub(super) ticks: Vec<f64>,
    light: Vec<f64>,
}

impl TickAxis {
    pub(super) fn linear(lo: f64, hi: f64, max_ticks: usize, integer: bool) -> TickAxis {
        let step = nice_step((hi - lo) / max_ticks.max(1) as f64, integer);
        let ticks = steps_within(lo, hi, step);
        let light = steps_within(lo, hi, step / 2.0)
            .into_iter()
            .filter(|v| !integer || v.fract() == 0.0)
            .collect();
        TickAxis {
            lo,
            hi,
            log: false,
            ticks,
            light,
        }
    }

    pub(super) fn log(lo: f64, hi: f64) -> TickAxis {
        let mut ticks = Vec::new();
        let mut light = Vec::new();
        let (e0, e1) = (lo.log10().floor() as i32, hi.log10().ceil() as i32);
        for e in e0..=e1 {
            for m in 1..10 {
                let v = m as f64 * 10f64.powi(e);
                if v < lo || v > hi {
                    continue;
                }
                if matches!(m, 1 | 2 | 5) {
                    ticks.push(v);
                } else {
                    light.push(v);
                }
            }
        }
        if ticks.len() > 12 {
            ticks.retain(|v| (v.log10().fract()).abs() < 1e-9);
        }
        TickAxis {
            lo,
            hi,
            log: true,
            ticks,
            light,
        }
    }

    /// A linear axis without ticks or grid lines (the caller labels it).
    pub(super) fn bare(lo: f64, hi: f64) -> TickAxis {
        TickAxis {
            lo,
            hi,
            log: false,
            ticks: Vec::new(),
            light: Vec::new(),
        }
    }

    fn t(&self, v: f64) -> f64 {
        if self.log {
            v.max(f64::MIN_POSITIVE).log10()
        } else {
            v
        }
    }
}

impl Ranged for TickAxis {
    type FormatOption = DefaultFormatting;
    type ValueType = f64;

    fn map(&self, value: &f64, limit: (i32, i32)) -> i32 {
        let (a, b) = (self.t(self.lo), self.t(self.hi));
        if b == a {
            return (limit.0 + limit.1) / 2;
        }
        let frac = (self.t(*value) - a) / (b - a);
        limit.0 + (frac * (limit.1 - limit.0) as f64).round() as i32
    }

    fn key_points<H: KeyPointHint>(&self, hint: H) -> Vec<f64> {
        if hint.weight().allow_light_points() {
            self.light.clone()
        } else {
            self.ticks.clone()
        }
    }

    fn range(&self) -> Range<f64> {
        self.lo..self.hi
    }
}

pub(super) fn nice_step(raw: f64, integer: bool) -> f64 {
    if !(raw.is_finite() && raw > 0.0) {
        return 1.0;
    }
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 2.5, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|s| *s >= raw * 0.999)
        .unwrap_or(10.0 * mag);
    if integer {
        step.max(1.0).round()
    } else {
        step
    }
}

fn steps_within(lo: f64, hi: f64, step: f64) -> Vec<f64> {
    if !(step.is_finite() && step > 0.0) || hi < lo {
        return Vec::new();
    }
    let first = (lo / step - 1e-9).ceil() as i64;
    let last = (hi / step + 1e-9).floor() as i64;
    (first..=last)
        .take(1000)
        .map(|i| {
            let v = i as f64 * step;
            // snap away float noise (0.30000000000000004 → 0.3)
            (v * 1e9).round() / 1e9
        })
        .collect()
}

/// Fewest decimals (0..=max) that print every value exactly.
fn exact_decimals(values: &[f64], max: usize) -> usize {
    (0..=max)
        .find(|d| {
            let scale = 10f64.powi(*d as i32);
            values
                .iter()
                .all(|v| ((v * scale).round() - v * scale).abs() < 1e-6)
        })
        .unwrap_or(max)
}

/// Tick label formatter for an axis with these ticks: fractions as
/// percentages (`percent`) or plain numbers, with the fewest decimals (at
/// most `max_decimals`) that print every tick exactly.
pub(super) fn tick_fmt(
    ticks: &[f64],
    percent: bool,
    max_decimals: usize,
) -> impl Fn(&f64) -> String {
    let dec = if percent {
        exact_decimals(
            &ticks.iter().map(|v| v * 100.0).collect::<Vec<_>>(),
            max_decimals,
        )
    } else {
        exact_decimals(ticks, max_decimals)
    };
    move |v: &f64| {
        if percent {
            format!("{:.*}%", dec, v * 100.0)
        } else {
            format!("{v:.dec$}")
        }
    }
}

/// Fits an accuracy-like range to the data: padded, not forced to 0..1.
fn fit_range(lo: f64, hi: f64, min_pad: f64, floor_zero: bool) -> (f64, f64) {
    let span = hi - lo;
    let pad = (span * 0.08).max(min_pad);
    let mut a = lo - pad;
    if floor_zero {
        a = a.max(0.0);
    }
    (a, hi + pad)
}

/// The axis of an accuracy (`percent`) or a loss: padded around the data
/// (accuracies by at least 0.4 points, losses by 5% of the top), never below
/// zero, about 8 ticks.
pub(super) fn value_axis(lo: f64, hi: f64, percent: bool) -> TickAxis {
    let (a, b) = if percent {
        fit_range(lo, hi, 0.004, true)
    } else {
        fit_range(lo, hi, (hi.abs() * 0.05).max(1e-3), true)
    };
    TickAxis::linear(a, b, 8, false)
}

pub(super) fn format_count(v: f64) -> String {
    let trim = |s: String| {
        if s.contains('.') {
            s.trim_end_matches('0').trim_end_matches('.').to_string()
        } else {
            s
        }
    };
    let a = v.abs();
    if a >= 1e9 {
        trim(format!("{:.2}", v / 1e9)) + "G"
    } else if a >= 1e6 {
        trim(format!("{:.2}", v / 1e6)) + "M"
    } else if a >= 1e3 {
        trim(format!("{:.1}", v / 1e3)) + "k"
    } else {
        trim(format!("{v:.0}"))
    }
}

/// Compact text of a number on a parameter axis ("0.25", "3", "1e-4", "12k").
pub(super) fn fmt_num(v: f64) -> String {
    fmt_sig(v, 6)
}

/// `v` rounded to `sig` significant digits, as compact text.
pub(super) fn fmt_sig(v: f64, sig: usize) -> String {
    if v.abs() >= 10_000.0 {
        return format_count(v);
    }
    // rounding through text also drops float noise (0.30000000000000004 → 0.3)
    let r: f64 = format!("{v:.*e}", sig.clamp(1, 17) - 1)
        .parse()
        .unwrap_or(v);
    if r.fract() == 0.0 && r.abs() < 1e15 {
        return format!("{}", r as i64);
    }
    format_param(&serde_json::json!(r))
}

// ---------------------------------------------------------------------------
// The frame of the line and scatter charts
// ---------------------------------------------------------------------------

/// A chart with a numeric x and y axis (line and scatter charts).
pub(super) type XyChart<'a, 'b> =
    ChartContext<'a, BitMapBackend<'b>, Cartesian2d<TickAxis, TickAxis>>;

/// One axis of an [`xy_chart`]: its ticks, description and tick labels.
pub(super) struct AxisSpec<'f> {
    pub(super) scale: TickAxis,
    pub(super) desc: &'f str,
    pub(super) fmt: &'f dyn Fn(&f64) -> String,
}

/// Builds a line or scatter chart on `area` and draws its grid, axes, tick
/// labels and axis descriptions.
pub(super) fn xy_chart<'a, 'b>(
    area: &'a Area<'b>,
    x: AxisSpec,
    y: AxisSpec,
) -> Result<XyChart<'a, 'b>> {
    let mut chart = ChartBuilder::on(area)
        .margin_top(8)
        .margin_left(12)
        .margin_right(24)
        .margin_bottom(12)
        .x_label_area_size(54)
        .y_label_area_size(90)
        .build_cartesian_2d(x.scale, y.scale)
        .map_err(plot_err)?;
    let mut mesh = chart.configure_mesh();
    mesh_look(&mut mesh, AXIS_DESC_PX, TICK_PX)
        .x_desc(x.desc)
        .y_desc(y.desc)
        .y_label_offset(center_nudge(TICK_PX as f64))
        .x_label_formatter(x.fmt)
        .y_label_formatter(y.fmt)
        .draw()
        .map_err(plot_err)?;
    Ok(chart)
}

/// Gives a mesh the look every chart shares: ink text (`desc_px` for the
/// axis descriptions, `label_px` for the tick labels), light grid lines and
/// grey axes.
pub(super) fn mesh_look<'m, 'a, 'b, 'c, X: Ranged, Y: Ranged>(
    mesh: &'m mut MeshStyle<'a, 'b, X, Y, BitMapBackend<'c>>,
    desc_px: u32,
    label_px: u32,
) -> &'m mut MeshStyle<'a, 'b, X, Y, BitMapBackend<'c>> {
    mesh.axis_desc_style(text(desc_px, &INK))
        .label_style(text(label_px, &INK))
        .bold_line_style(GRID.stroke_width(1))
        .light_line_style(GRID_LIGHT.stroke_width(1))
        .axis_style(AXIS.stroke_width(1))
}

/// The pixel ranges (x, y) of a chart's plotting area.
pub(super) fn plot_area_pixels<X: Ranged, Y: Ranged>(
    chart: &ChartContext<BitMapBackend, Cartesian2d<X, Y>>,
) -> (Range<i32>, Range<i32>) {
    chart.plotting_area().get_pixel_range()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::charts::labels::elide_common_prefix;

    #[test]
    fn numbers_and_shared_prefixes_are_compact() {
        assert_eq!(fmt_num(0.0001), "1e-4");
        assert_eq!(fmt_num(0.25), "0.25");
        assert_eq!(fmt_num(3.0), "3");
        assert_eq!(fmt_num(0.30000000000000004), "0.3");
        assert_eq!(fmt_num(250_000.0), "250k");
        assert_eq!(fmt_sig(1.05516e-5, 2), "1.1e-5");
        assert_eq!(fmt_sig(0.0052448, 2), "0.0052");
        let l = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            elide_common_prefix(&l(&["arch-variant-01", "arch-variant-10"])),
            l(&["…01", "…10"])
        );
        assert_eq!(
            elide_common_prefix(&l(&["gap", "dense"])),
            l(&["gap", "dense"])
        );
        assert_eq!(
            elide_common_prefix(&l(&["resnet", "resnet-wide"])),
            l(&["resnet", "resnet-wide"])
        );
    }
}
