//! Sweep comparison charts rendered to PNG files.
//!
//! Ownership: charts are pure functions of sweep data → PNG files; this module
//! must not touch the store, scheduler or training code. Callers convert their
//! own records into a [`ChartSweep`] and pass it to [`render_dashboard`]
//! together with a [`Dashboard`], which is declared in a human-editable TOML
//! file (see `dashboards/default.toml`): adding a panel or a whole new
//! dashboard needs no Rust changes.
//!
//! Text is drawn with an embedded DejaVu Sans font (crate `dejavu`), so
//! rendering works on hosts without fontconfig or any system fonts.
//!
//! This file owns the public types and the entry points; the rest is split by
//! concern: `dashboard` (TOML declarations), `style` (fonts, colours, text),
//! `frame` (title, "no data", footnote), `legend`, `axes` (ticks, number
//! formats, chart frames), `labels` (trial and value labels), `stats`
//! (objective, grouping, importance, Pareto front) and one file per panel kind
//! under `panels`.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use cnnd_core::epoch::EpochRecord;
use image::ImageEncoder;
use plotters::prelude::*;

mod axes;
mod dashboard;
mod frame;
mod labels;
mod legend;
mod panels;
mod stats;
mod style;
#[cfg(test)]
mod tests;

// ---------------------------------------------------------------------------
// Input data
// ---------------------------------------------------------------------------

/// One trial of a sweep, as far as the charts are concerned.
#[derive(Debug, Clone, Default)]
pub struct ChartTrial {
    /// e.g. "t-3f2a9c01"
    pub trial_id: String,
    /// 0-based position in the sweep.
    pub index: u32,
    /// queued|running|succeeded|failed|cancelled|pruned
    pub status: String,
    /// All hyperparameters of the trial.
    pub params: serde_json::Map<String, serde_json::Value>,
    pub epochs: Vec<EpochRecord>,
    /// 0..1
    pub test_accuracy: Option<f64>,
    pub parameter_count: Option<u64>,
}

/// Everything the charts of one sweep need.
#[derive(Debug, Clone, Default)]
pub struct ChartSweep {
    pub sweep_id: String,
    pub name: String,
    pub dataset: String,
    /// Names of the hyperparameters the sweep varies, e.g. `["kernelSize","dropout","head"]`.
    pub varied: Vec<String>,
    pub trials: Vec<ChartTrial>,
    pub best_trial_id: Option<String>,
    /// The sweep's objective: "val_accuracy" (higher is better; also used when
    /// empty or unknown) or "val_loss" (lower is better). A trial's objective
    /// value is its best epoch's value (the trainer keeps the best epoch).
    pub objective: String,
}

// ---------------------------------------------------------------------------
// Dashboard declaration (TOML); loading and validation live in `dashboard`
// ---------------------------------------------------------------------------

/// A set of panels rendered together, declared in `<dir>/<name>.toml`.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Dashboard {
    pub title: Option<String>,
    #[serde(default)]
    pub panels: Vec<Panel>,
}

/// One chart of a dashboard, written to `<out_dir>/<file>`.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Panel {
    pub kind: PanelKind,
    /// Plain file name ending in `.png` (no directories).
    pub file: String,
    /// Replaces the default chart title; the sweep name is appended.
    pub title: Option<String>,
    /// Image width in px (default 1200).
    pub width: Option<u32>,
    /// Image height in px (default 700). `test_accuracy_bars` grows taller
    /// when needed so that every bar keeps a readable label.
    pub height: Option<u32>,
    /// `accuracy_vs_parameters` only: the varied hyperparameter that colours
    /// the points (default: the first varied one with 2..=10 distinct values).
    pub color_by: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PanelKind {
    LearningCurves,
    TestAccuracyBars,
    AccuracyVsParameters,
    LossCurves,
    AccuracyCurves,
    OptimizationHistory,
    ParallelCoordinates,
    ParamEffects,
    Pareto,
    ParamImportance,
}

impl PanelKind {
    /// The name used in dashboard files.
    pub fn as_str(self) -> &'static str {
        match self {
            PanelKind::LearningCurves => "learning_curves",
            PanelKind::TestAccuracyBars => "test_accuracy_bars",
            PanelKind::AccuracyVsParameters => "accuracy_vs_parameters",
            PanelKind::LossCurves => "loss_curves",
            PanelKind::AccuracyCurves => "accuracy_curves",
            PanelKind::OptimizationHistory => "optimization_history",
            PanelKind::ParallelCoordinates => "parallel_coordinates",
            PanelKind::ParamEffects => "param_effects",
            PanelKind::Pareto => "pareto",
            PanelKind::ParamImportance => "param_importance",
        }
    }

    fn default_title(self) -> &'static str {
        match self {
            PanelKind::LearningCurves => "Validation accuracy per epoch",
            PanelKind::TestAccuracyBars => "Test accuracy by trial",
            PanelKind::AccuracyVsParameters => "Test accuracy vs parameter count",
            PanelKind::LossCurves => "Train and validation loss per epoch",
            PanelKind::AccuracyCurves => "Train and validation accuracy per epoch",
            PanelKind::OptimizationHistory => "Optimization history",
            PanelKind::ParallelCoordinates => "Hyperparameters and objective, one line per trial",
            PanelKind::ParamEffects => "Effect of each hyperparameter on the objective",
            PanelKind::Pareto => "Accuracy vs size: the Pareto front",
            PanelKind::ParamImportance => "Hyperparameter importance",
        }
    }
}

impl std::fmt::Display for PanelKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

// ---------------------------------------------------------------------------
// Entry points
// ---------------------------------------------------------------------------

/// Renders every panel into `out_dir` (created if missing); returns the written PNG paths in panel order.
pub fn render_dashboard(
    sweep: &ChartSweep,
    dashboard: &Dashboard,
    out_dir: &Path,
) -> Result<Vec<PathBuf>> {
    dashboard.validate()?;
    std::fs::create_dir_all(out_dir)
        .with_context(|| format!("cannot create chart directory {}", out_dir.display()))?;
    let mut written = Vec::with_capacity(dashboard.panels.len());
    for panel in &dashboard.panels {
        let png = render_panel_png(sweep, panel)?;
        let path = out_dir.join(&panel.file);
        crate::files::write_whole(&path, &png)?;
        written.push(path);
    }
    Ok(written)
}

/// Renders one panel and returns the encoded PNG bytes.
pub(crate) fn render_panel_png(sweep: &ChartSweep, panel: &Panel) -> Result<Vec<u8>> {
    render_panel(sweep, panel).map(|(png, _)| png)
}

/// What a panel shows: a chart, or the "no data yet" frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Drawn {
    Chart,
    NoData,
}

fn render_panel(sweep: &ChartSweep, panel: &Panel) -> Result<(Vec<u8>, Drawn)> {
    panel.validate()?;
    style::ensure_fonts()?;
    let (w, h) = panels::pixels(sweep, panel);
    let mut rgb = vec![255u8; w as usize * h as usize * 3];
    let drawn;
    {
        let root = BitMapBackend::with_buffer(&mut rgb, (w, h)).into_drawing_area();
        root.fill(&WHITE).map_err(style::plot_err)?;
        drawn = panels::draw(&root, sweep, panel)
            .with_context(|| format!("rendering panel {} ({})", panel.kind, panel.file))?;
        root.present().map_err(style::plot_err)?;
    }
    let mut png = Vec::new();
    image::codecs::png::PngEncoder::new(&mut png)
        .write_image(&rgb, w, h, image::ExtendedColorType::Rgb8)
        .with_context(|| format!("encoding {}", panel.file))?;
    Ok((png, drawn))
}

// ---------------------------------------------------------------------------
// Output
// ---------------------------------------------------------------------------
