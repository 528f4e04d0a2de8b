//! `learning_curves`: validation accuracy per epoch, one line per trial;
//! pruned, failed and cancelled trials dashed and faded.

use std::collections::BTreeMap;

use anyhow::Result;
use plotters::prelude::*;

use super::line_chart::{draw_line_chart, epoch_segments, trial_curves, LineChartSpec};
use crate::charts::labels::is_inactive;
use crate::charts::legend::{LegendEntry, Swatch};
use crate::charts::style::{Area, MUTED};
use crate::charts::{ChartSweep, Drawn, Panel};

pub(super) fn draw(root: &Area, sweep: &ChartSweep, panel: &Panel) -> Result<Drawn> {
    let curves = trial_curves(sweep, |t| {
        let segments = epoch_segments(t, |e| e.val_accuracy);
        if segments.is_empty() {
            return None;
        }
        let inactive = is_inactive(&t.status);
        let score = segments
            .iter()
            .flatten()
            .map(|p| p.1)
            .fold(f64::MIN, f64::max);
        Some((segments.into_iter().map(|s| (s, inactive)).collect(), score))
    });
    // Pruned (and failed/cancelled) trials are dashed and faded; say so
    // even when none of them makes it into the capped legend.
    let mut stopped: BTreeMap<&str, usize> = BTreeMap::new();
    for c in curves.iter().filter(|c| c.inactive) {
        *stopped.entry(c.trial.status.as_str()).or_default() += 1;
    }
    let key = if !stopped.is_empty() {
        let counts: Vec<String> = stopped.iter().map(|(s, n)| format!("{n} {s}")).collect();
        vec![LegendEntry::new(
            format!("dashed, faded: {}", counts.join(", ")),
            MUTED.mix(0.6),
            Swatch::dashed(2),
        )]
    } else {
        Vec::new()
    };
    let spec = LineChartSpec {
        y_desc: "validation accuracy",
        percent: true,
        empty_reason: "no trial has reported a validation accuracy",
        legend_heading: "trials, by best val. accuracy",
        key,
        inactive_dashed: true,
    };
    draw_line_chart(root, sweep, panel, curves, spec)
}
