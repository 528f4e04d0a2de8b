//! `accuracy_curves`: train (dashed) and validation (solid) accuracy per epoch, one colour
//! per trial, ranked by best validation accuracy. The gap between a trial's two lines is
//! the overfitting the notebook's dropout lesson is about.

use anyhow::Result;
use plotters::prelude::*;

use super::line_chart::{draw_line_chart, epoch_segments, trial_curves, LineChartSpec};
use crate::charts::legend::{LegendEntry, Swatch};
use crate::charts::style::{Area, MUTED};
use crate::charts::{ChartSweep, Drawn, Panel};

pub(super) fn draw(root: &Area, sweep: &ChartSweep, panel: &Panel) -> Result<Drawn> {
    let curves = trial_curves(sweep, |t| {
        let val = epoch_segments(t, |e| e.val_accuracy);
        let train = epoch_segments(t, |e| e.train_accuracy);
        if val.is_empty() && train.is_empty() {
            return None;
        }
        // higher validation accuracy ranks first
        let score = val.iter().flatten().map(|p| p.1).fold(f64::MIN, f64::max);
        let lines = train
            .into_iter()
            .map(|s| (s, true))
            .chain(val.into_iter().map(|s| (s, false)))
            .collect();
        Some((lines, score))
    });
    let key_color = MUTED.mix(1.0);
    let spec = LineChartSpec {
        y_desc: "accuracy",
        percent: true,
        empty_reason: "no trial has reported an epoch",
        legend_heading: "trials, by best val. accuracy",
        key: vec![
            LegendEntry::new("validation accuracy", key_color, Swatch::solid(2)).with_marker(),
            LegendEntry::new("train accuracy", key_color, Swatch::dashed(2)).with_marker(),
        ],
        inactive_dashed: false,
    };
    draw_line_chart(root, sweep, panel, curves, spec)
}
