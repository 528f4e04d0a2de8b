//! `pareto`: test accuracy against parameter count (log), the
//! Pareto-optimal trials marked, joined as a staircase, numbered and listed.

use std::collections::HashSet;

use anyhow::Result;
use plotters::prelude::*;

use super::size_accuracy::{
    draw_size_accuracy, DrawMarks, PointLabel, PointLabels, SizeChart, SizeData, SizePoint,
};
use super::staircase;
use crate::charts::axes::{format_count, XyChart};
use crate::charts::labels::{is_best, is_inactive};
use crate::charts::legend::{LegendEntry, Swatch};
use crate::charts::stats::pareto_front;
use crate::charts::style::{bold, plot_err, Area, INK, LEGEND_PX};
use crate::charts::{ChartSweep, Drawn, Panel};

const FRONT: RGBColor = RGBColor(214, 96, 20);
const OTHER: RGBColor = RGBColor(120, 150, 185);

pub(super) fn draw(root: &Area, sweep: &ChartSweep, panel: &Panel) -> Result<Drawn> {
    draw_size_accuracy(root, sweep, panel, |data| plan(sweep, data))
}

/// What this panel adds to the shared chart: the front, its legend listing
/// and the numbers next to its points.
fn plan(sweep: &ChartSweep, data: &SizeData) -> SizeChart {
    let points = &data.points;
    let front = pareto_front(&points.iter().map(|p| (p.params, p.acc)).collect::<Vec<_>>());

    // Legend: the key, then the front trials numbered as in the plot.
    let mut entries = vec![
        LegendEntry::new(
            format!("Pareto-optimal ({})", front.len()),
            FRONT.mix(1.0),
            Swatch::solid(2),
        )
        .with_marker(),
        LegendEntry::new(
            format!("dominated ({})", points.len() - front.len()),
            OTHER.mix(0.8),
            Swatch::Dot,
        ),
    ];
    if points.iter().any(|p| is_inactive(&p.trial.status)) {
        entries.push(LegendEntry::new(
            "hollow: pruned / stopped",
            OTHER.mix(1.0),
            Swatch::Hollow,
        ));
    }
    if points.iter().any(|p| is_best(sweep, p.trial)) {
        entries
            .push(LegendEntry::new("best test accuracy", INK.mix(1.0), Swatch::Ring).emphasized());
    }
    entries.push(LegendEntry::note("front, fewest parameters first:").emphasized());
    for (rank, &k) in front.iter().enumerate() {
        let p = &points[k];
        entries.push(LegendEntry::note(format!(
            "{}. {:.2}% · {} · {}",
            rank + 1,
            p.acc * 100.0,
            format_count(p.params),
            data.labels[p.pos]
        )));
    }

    // Number the front points as listed in the legend.
    let labels = front
        .iter()
        .enumerate()
        .map(|(rank, &k)| PointLabel {
            point: k,
            text: (rank + 1).to_string(),
            gap: if is_best(sweep, points[k].trial) {
                15
            } else {
                10
            },
        })
        .collect();

    SizeChart {
        log_x: true,
        heading: "higher accuracy, fewer parameters".into(),
        entries,
        min_legend_w: 300,
        marks: draw_marks(front),
        labels: PointLabels {
            texts: labels,
            style: bold(LEGEND_PX, &FRONT),
            marker_clearance: 6,
            spots: |(x, y), g, (lw, lh)| {
                [
                    (x - lw / 2, y - g - lh),
                    (x - g - lw, y - lh / 2),
                    (x + g, y - lh / 2),
                    (x - lw / 2, y + g),
                    (x - g - lw, y - g - lh),
                    (x + g, y - g - lh),
                    (x - g - lw, y + g),
                    (x + g, y + g),
                ]
            },
        },
    }
}

/// Dominated trials faded, then the front as a staircase and its points.
fn draw_marks(front: Vec<usize>) -> DrawMarks {
    Box::new(move |chart: &mut XyChart, points: &[SizePoint], x_hi| {
        let on_front: HashSet<usize> = front.iter().copied().collect();
        for (k, p) in points.iter().enumerate() {
            if on_front.contains(&k) {
                continue;
            }
            let style = if is_inactive(&p.trial.status) {
                OTHER.mix(0.9).stroke_width(2)
            } else {
                OTHER.mix(0.6).filled()
            };
            chart
                .draw_series(std::iter::once(Circle::new((p.params, p.acc), 5, style)))
                .map_err(plot_err)?;
        }
        // For a budget between two front points the best reachable accuracy
        // is that of the cheaper one.
        let mut stairs = staircase(front.iter().map(|&k| (points[k].params, points[k].acc)));
        if let Some(&(p, a)) = stairs.last() {
            stairs.push((p.max(x_hi / 1.1), a));
        }
        chart
            .draw_series(LineSeries::new(stairs, FRONT.stroke_width(2)))
            .map_err(plot_err)?;
        for &k in &front {
            let p = &points[k];
            let style = if is_inactive(&p.trial.status) {
                FRONT.stroke_width(3)
            } else {
                FRONT.filled()
            };
            chart
                .draw_series(std::iter::once(Circle::new((p.params, p.acc), 7, style)))
                .map_err(plot_err)?;
        }
        Ok(())
    })
}
