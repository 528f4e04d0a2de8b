//! The panels, one file per kind, and what decides between them: which
//! function draws a panel kind and how large its image is. Also the small
//! drawing helpers several panels share (marker jitter, staircases).

use anyhow::Result;

use super::style::Area;
use super::{ChartSweep, Drawn, Panel, PanelKind};

mod accuracy_curves;
mod accuracy_vs_parameters;
mod hbars;
mod learning_curves;
mod line_chart;
mod loss_curves;
mod optimization_history;
mod parallel_coordinates;
mod param_effects;
mod param_importance;
mod pareto;
mod size_accuracy;
pub(super) mod test_accuracy_bars;

/// Draws `panel` on `root` (already white, of [`pixels`] size).
pub(super) fn draw(root: &Area, sweep: &ChartSweep, panel: &Panel) -> Result<Drawn> {
    match panel.kind {
        PanelKind::LearningCurves => learning_curves::draw(root, sweep, panel),
        PanelKind::LossCurves => loss_curves::draw(root, sweep, panel),
        PanelKind::AccuracyCurves => accuracy_curves::draw(root, sweep, panel),
        PanelKind::TestAccuracyBars => test_accuracy_bars::draw(root, sweep, panel),
        PanelKind::AccuracyVsParameters => accuracy_vs_parameters::draw(root, sweep, panel),
        PanelKind::OptimizationHistory => optimization_history::draw(root, sweep, panel),
        PanelKind::ParallelCoordinates => parallel_coordinates::draw(root, sweep, panel),
        PanelKind::ParamEffects => param_effects::draw(root, sweep, panel),
        PanelKind::Pareto => pareto::draw(root, sweep, panel),
        PanelKind::ParamImportance => param_importance::draw(root, sweep, panel),
    }
}

/// Image size of a panel: the declared one, except that test accuracy bars
/// grow to keep every bar readable.
pub(super) fn pixels(sweep: &ChartSweep, panel: &Panel) -> (u32, u32) {
    if panel.kind == PanelKind::TestAccuracyBars {
        test_accuracy_bars::pixels(sweep, panel)
    } else {
        panel.size()
    }
}

/// Deterministic pseudo-random number in -1..1 for jittering markers.
fn jitter(a: u64, b: u64) -> f64 {
    let mut x = a
        .wrapping_mul(0x9E37_79B9_7F4A_7C15)
        .wrapping_add(b.wrapping_mul(0xC2B2_AE3D_27D4_EB4F));
    x ^= x >> 31;
    x = x.wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x ^= x >> 29;
    (x % 2001) as f64 / 1000.0 - 1.0
}

/// The points joined as a staircase: each value holds until the next point's
/// x, where the line steps to that point's value.
fn staircase(points: impl IntoIterator<Item = (f64, f64)>) -> Vec<(f64, f64)> {
    let mut stairs: Vec<(f64, f64)> = Vec::new();
    for (x, y) in points {
        if let Some(&(_, prev)) = stairs.last() {
            stairs.push((x, prev));
        }
        stairs.push((x, y));
    }
    stairs
}
