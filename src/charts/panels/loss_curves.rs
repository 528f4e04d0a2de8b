//! `loss_curves`: train (dashed) and validation (solid) loss per epoch, one
//! colour per trial, ranked by lowest validation loss.

use anyhow::Result;
use plotters::prelude::*;

use super::line_chart::{draw_line_chart, epoch_segments, trial_curves, LineChartSpec};
use crate::charts::legend::{LegendEntry, Swatch};
use crate::charts::style::{Area, MUTED};
use crate::charts::{ChartSweep, Drawn, Panel};

pub(super) fn draw(root: &Area, sweep: &ChartSweep, panel: &Panel) -> Result<Drawn> {
    let curves = trial_curves(sweep, |t| {
        let val = epoch_segments(t, |e| e.val_loss);
        let train = epoch_segments(t, |e| e.train_loss);
        if val.is_empty() && train.is_empty() {
            return None;
        }
        // lower validation loss ranks first
        let score = -val.iter().flatten().map(|p| p.1).fold(f64::MAX, f64::min);
        let lines = train
            .into_iter()
            .map(|s| (s, true))
            .chain(val.into_iter().map(|s| (s, false)))
            .collect();
        Some((lines, score))
    });
    let key_color = MUTED.mix(1.0);
    let spec = LineChartSpec {
        y_desc: "loss",
        percent: false,
        empty_reason: "no trial has reported a loss",
        legend_heading: "trials, by lowest val. loss",
        key: vec![
            LegendEntry::new("validation loss", key_color, Swatch::solid(2)).with_marker(),
            LegendEntry::new("train loss", key_color, Swatch::dashed(2)).with_marker(),
        ],
        inactive_dashed: false,
    };
    draw_line_chart(root, sweep, panel, curves, spec)
}
