//! `accuracy_vs_parameters`: test accuracy against parameter count, points
//! coloured by one varied hyperparameter and labelled with the others.

use std::collections::{BTreeMap, HashSet};

use anyhow::Result;
use plotters::prelude::*;

use super::size_accuracy::{
    draw_size_accuracy, DrawMarks, PointLabel, PointLabels, SizeChart, SizeData, SizePoint,
};
use crate::charts::axes::XyChart;
use crate::charts::labels::{format_param, is_best, is_inactive, label_without, param_alias};
use crate::charts::legend::{LegendEntry, Swatch};
use crate::charts::style::{color_of, plot_err, text, Area, INK, MUTED, SMALL_PX};
use crate::charts::{ChartSweep, ChartTrial, Drawn, Panel};

/// The varied hyperparameter that colours the points: the panel's
/// `color_by` when the trials have it, else the first varied one with
/// 2..=10 distinct values, else the first varied one.
fn pick_color_param(sweep: &ChartSweep, panel: &Panel, trials: &[&ChartTrial]) -> Option<String> {
    let distinct = |name: &str| {
        trials
            .iter()
            .filter_map(|t| t.params.get(name).map(format_param))
            .collect::<HashSet<_>>()
            .len()
    };
    if let Some(want) = &panel.color_by {
        if trials.iter().any(|t| t.params.contains_key(want)) {
            return Some(want.clone());
        }
    }
    sweep
        .varied
        .iter()
        .find(|v| (2..=10).contains(&distinct(v)))
        .or_else(|| sweep.varied.first())
        .cloned()
}

pub(super) fn draw(root: &Area, sweep: &ChartSweep, panel: &Panel) -> Result<Drawn> {
    draw_size_accuracy(root, sweep, panel, |data| plan(sweep, panel, data))
}

/// What this panel adds to the shared chart: colour groups and their
/// legend, one dot per trial and the trials' labels.
fn plan(sweep: &ChartSweep, panel: &Panel, data: &SizeData) -> SizeChart {
    let points = &data.points;
    // Colour groups by one varied parameter.
    let trials: Vec<&ChartTrial> = points.iter().map(|p| p.trial).collect();
    let color_param = pick_color_param(sweep, panel, &trials);
    let group_of = |t: &ChartTrial| -> String {
        color_param
            .as_ref()
            .and_then(|p| t.params.get(p))
            .map(format_param)
            .unwrap_or_else(|| "n/a".to_string())
    };
    // order groups numerically when possible
    let mut groups: Vec<String> = trials
        .iter()
        .map(|t| group_of(t))
        .collect::<HashSet<_>>()
        .into_iter()
        .collect();
    groups.sort_by(|a, b| match (a.parse::<f64>(), b.parse::<f64>()) {
        (Ok(x), Ok(y)) => x.total_cmp(&y),
        _ => a.cmp(b),
    });
    let group_color: BTreeMap<&str, RGBColor> = groups
        .iter()
        .enumerate()
        .map(|(i, g)| (g.as_str(), color_of(i)))
        .collect();

    let mut entries: Vec<LegendEntry> = groups
        .iter()
        .map(|g| {
            let label = match &color_param {
                Some(p) => format!("{} = {g}", param_alias(p)),
                None => "trial".to_string(),
            };
            LegendEntry::new(label, group_color[g.as_str()].mix(1.0), Swatch::Dot)
        })
        .collect();
    if points.iter().any(|p| is_best(sweep, p.trial)) {
        entries.push(LegendEntry::new("best trial", INK.mix(1.0), Swatch::Ring).emphasized());
    }
    let heading = match &color_param {
        Some(p) => format!("colour: {p}"),
        None => "trials".to_string(),
    };

    // One colour per point, drawn in trial order.
    let colors: Vec<RGBAColor> = points
        .iter()
        .map(|p| {
            let inactive = is_inactive(&p.trial.status);
            group_color[group_of(p.trial).as_str()].mix(if inactive { 0.45 } else { 0.9 })
        })
        .collect();
    let marks: DrawMarks = Box::new(move |chart: &mut XyChart, points: &[SizePoint], _| {
        for (p, c) in points.iter().zip(colors) {
            chart
                .draw_series(std::iter::once(Circle::new(
                    (p.params, p.acc),
                    7,
                    c.filled(),
                )))
                .map_err(plot_err)?;
        }
        Ok(())
    });

    // Small labels next to the points: the trial label without the colour
    // parameter, "(best)" added.
    let mut labels = Vec::new();
    if points.len() <= 40 {
        for (k, p) in points.iter().enumerate() {
            let best = is_best(sweep, p.trial);
            let mut text = label_without(&data.labels[p.pos], p.trial, color_param.as_deref());
            if best {
                text = if text.is_empty() {
                    "best".into()
                } else {
                    format!("{text} (best)")
                };
            }
            if text.is_empty() {
                continue;
            }
            // keep clear of the marker (and of the ring around the best one)
            let gap = if best { 17 } else { 11 };
            labels.push(PointLabel {
                point: k,
                text,
                gap,
            });
        }
    }
    let (p_lo, p_hi) = data.params;
    SizeChart {
        log_x: p_hi / p_lo > 10.0,
        heading,
        entries,
        min_legend_w: 0,
        marks,
        labels: PointLabels {
            texts: labels,
            style: text(SMALL_PX, &MUTED),
            marker_clearance: 8,
            spots: |(x, y), g, (lw, lh)| {
                let d = g * 3 / 4;
                [
                    (x + g, y - lh / 2),
                    (x - g - lw, y - lh / 2),
                    (x - lw / 2, y - g - lh),
                    (x - lw / 2, y + g),
                    (x + d, y - d - lh),
                    (x + d, y + d),
                    (x - d - lw, y - d - lh),
                    (x - d - lw, y + d),
                ]
            },
        },
    }
}
