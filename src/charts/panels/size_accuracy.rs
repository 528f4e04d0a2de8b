//! The chart `accuracy_vs_parameters` and `pareto` share: test accuracy
//! against parameter count, with a legend column, a ring round the best trial
//! and point labels placed where they hit no marker and no other label.

use anyhow::Result;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, VPos};

use crate::charts::axes::{
    finite_range, format_count, plot_area_pixels, value_axis, xy_chart, AxisSpec, TickAxis, XyChart,
};
use crate::charts::frame::{draw_header, draw_no_data};
use crate::charts::labels::{is_best, unique_labels};
use crate::charts::legend::{draw_legend, legend_width, LegendEntry};
use crate::charts::stats::Goal;
use crate::charts::style::{anchored, draw_text_at, plot_err, text_width, Area, INK};
use crate::charts::{ChartSweep, ChartTrial, Drawn, Panel};

/// A trial that has both a test accuracy and a parameter count.
pub(super) struct SizePoint<'s> {
    /// Position in `sweep.trials` (labels are indexed by it).
    pub(super) pos: usize,
    pub(super) trial: &'s ChartTrial,
    pub(super) params: f64,
    pub(super) acc: f64,
}

/// Every trial that has both a test accuracy and a parameter count.
fn size_accuracy_points(sweep: &ChartSweep) -> Vec<SizePoint<'_>> {
    sweep
        .trials
        .iter()
        .enumerate()
        .filter_map(|(pos, t)| {
            let acc = t.test_accuracy.filter(|a| a.is_finite())?;
            let params = t.parameter_count.filter(|p| *p > 0)? as f64;
            Some(SizePoint {
                pos,
                trial: t,
                params,
                acc,
            })
        })
        .collect()
}

/// What the chart is drawn from: the points (never empty), every trial's
/// label and the range of the parameter counts.
pub(super) struct SizeData<'s> {
    pub(super) points: Vec<SizePoint<'s>>,
    pub(super) labels: Vec<String>,
    pub(super) params: (f64, f64),
}

/// Draws the markers under the best-trial ring; gets the points and the
/// upper end of the parameter axis.
pub(super) type DrawMarks = Box<dyn FnOnce(&mut XyChart, &[SizePoint], f64) -> Result<()>>;

/// Candidate top-left corners of a label `size` px large, best first, for a
/// marker at `at` that the label keeps `gap` px away from.
pub(super) type LabelSpots = fn(at: (i32, i32), gap: i32, size: (i32, i32)) -> [(i32, i32); 8];

/// A text to put next to one point.
pub(super) struct PointLabel {
    /// Index into [`SizeData::points`].
    pub(super) point: usize,
    pub(super) text: String,
    /// Distance to keep from the marker, in px.
    pub(super) gap: i32,
}

/// The texts put next to points, and where they may go.
pub(super) struct PointLabels {
    /// In the order they claim their spots.
    pub(super) texts: Vec<PointLabel>,
    pub(super) style: TextStyle<'static>,
    /// Labels keep out of a square this many px either side of every point.
    pub(super) marker_clearance: i32,
    pub(super) spots: LabelSpots,
}

/// What one panel draws into the shared chart.
pub(super) struct SizeChart {
    /// Parameter counts on a log axis (else linear).
    pub(super) log_x: bool,
    pub(super) heading: String,
    pub(super) entries: Vec<LegendEntry>,
    /// The legend column is at least this wide, in px.
    pub(super) min_legend_w: u32,
    pub(super) marks: DrawMarks,
    pub(super) labels: PointLabels,
}

/// Draws test accuracy against parameter count; `plan` decides what the
/// panel adds once the points are known. Without points the panel says
/// "no data yet".
pub(super) fn draw_size_accuracy<'s>(
    root: &Area,
    sweep: &'s ChartSweep,
    panel: &Panel,
    plan: impl FnOnce(&SizeData<'s>) -> SizeChart,
) -> Result<Drawn> {
    let body = draw_header(root, sweep, panel)?;
    let points = size_accuracy_points(sweep);
    let (Some((p_lo, p_hi)), Some((a_lo, a_hi))) = (
        finite_range(points.iter().map(|p| p.params)),
        finite_range(points.iter().map(|p| p.acc)),
    ) else {
        return draw_no_data(
            &body,
            "no trial has both a test accuracy and a parameter count yet",
        );
    };
    let data = SizeData {
        points,
        labels: unique_labels(sweep),
        params: (p_lo, p_hi),
    };
    let chart_spec = plan(&data);
    let points = data.points;

    let legend_w =
        legend_width(root, &chart_spec.heading, &chart_spec.entries).max(chart_spec.min_legend_w);
    let (bw, _) = body.dim_in_pixel();
    let (plot_area, legend_area) = body.split_horizontally(bw - legend_w);

    let (x_axis, x_hi) = if chart_spec.log_x {
        let (lo, hi) = (p_lo / 1.35, p_hi * 1.35);
        let mut axis = TickAxis::log(lo, hi);
        if axis.ticks.len() < 2 {
            axis.ticks = vec![p_lo, p_hi];
        }
        (axis, hi)
    } else {
        let pad = ((p_hi - p_lo) * 0.08).max(p_hi * 0.05);
        let hi = p_hi + pad;
        (TickAxis::linear((p_lo - pad).max(0.0), hi, 7, true), hi)
    };
    let y_axis = value_axis(a_lo, a_hi, true);
    let y_fmt = Goal::MaxAccuracy.tick_fmt(&y_axis.ticks);
    let x_fmt = |v: &f64| format_count(*v);
    let x_desc = if chart_spec.log_x {
        "parameter count (log scale)"
    } else {
        "parameter count"
    };
    let mut chart = xy_chart(
        &plot_area,
        AxisSpec {
            scale: x_axis,
            desc: x_desc,
            fmt: &x_fmt,
        },
        AxisSpec {
            scale: y_axis,
            desc: "test accuracy",
            fmt: &y_fmt,
        },
    )?;

    (chart_spec.marks)(&mut chart, &points, x_hi)?;
    if let Some(p) = points.iter().find(|p| is_best(sweep, p.trial)) {
        chart
            .draw_series(std::iter::once(Circle::new(
                (p.params, p.acc),
                12,
                ShapeStyle::from(&INK).stroke_width(2),
            )))
            .map_err(plot_err)?;
    }
    place_labels(root, &chart, &points, &chart_spec.labels)?;
    draw_legend(&legend_area, &chart_spec.heading, &chart_spec.entries)?;
    Ok(Drawn::Chart)
}

/// Draws each label at the first of its candidate spots that lies inside the
/// plot and overlaps no marker and no label placed before; a label without
/// such a spot is left out.
fn place_labels(
    root: &Area,
    chart: &XyChart,
    points: &[SizePoint],
    labels: &PointLabels,
) -> Result<()> {
    let (xr, yr) = plot_area_pixels(chart);
    let c = labels.marker_clearance;
    let mut taken: Vec<[i32; 4]> = points
        .iter()
        .map(|p| {
            let (x, y) = chart.backend_coord(&(p.params, p.acc));
            [x - c, y - c, x + c, y + c]
        })
        .collect();
    let ls = &labels.style;
    let lh = ls.font.get_size() as i32 + 2;
    for label in &labels.texts {
        let p = &points[label.point];
        let at = chart.backend_coord(&(p.params, p.acc));
        let lw = text_width(root, &label.text, ls) as i32;
        let candidates = (labels.spots)(at, label.gap, (lw, lh));
        let spot = candidates.iter().find(|(lx, ly)| {
            let r = [*lx, *ly, lx + lw, ly + lh];
            r[0] >= xr.start
                && r[2] <= xr.end
                && r[1] >= yr.start
                && r[3] <= yr.end
                && !taken.iter().any(|o| overlaps(o, &r))
        });
        if let Some((lx, ly)) = spot {
            taken.push([*lx, *ly, lx + lw, ly + lh]);
            let s = anchored(ls.clone(), HPos::Left, VPos::Center);
            draw_text_at(root, &label.text, &s, (*lx, ly + lh / 2))?;
        }
    }
    Ok(())
}

fn overlaps(a: &[i32; 4], b: &[i32; 4]) -> bool {
    a[0] < b[2] && b[0] < a[2] && a[1] < b[3] && b[1] < a[3]
}
