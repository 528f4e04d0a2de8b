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

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

use anyhow::{anyhow, bail, Context, Result};
use image::ImageEncoder;
use plotters::coord::ranged1d::{DefaultFormatting, KeyPointHint, Ranged};
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use plotters::style::{register_font, FontStyle, RGBAColor};

// ---------------------------------------------------------------------------
// Input data
// ---------------------------------------------------------------------------

/// Metrics of one finished epoch of a trial.
#[derive(Debug, Clone, Default)]
pub struct ChartEpoch {
    pub epoch: u32,
    pub train_loss: f64,
    pub train_accuracy: f64,
    pub val_loss: f64,
    pub val_accuracy: f64,
}

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
    pub epochs: Vec<ChartEpoch>,
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
// Dashboard declaration (TOML)
// ---------------------------------------------------------------------------

/// Default panel size in pixels.
pub const DEFAULT_WIDTH: u32 = 1200;
/// Default panel height in pixels (bar charts grow with the number of bars).
pub const DEFAULT_HEIGHT: u32 = 700;
const MIN_SIDE: u32 = 300;
const MAX_SIDE: u32 = 8000;

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

impl Panel {
    /// Width and height requested by the panel, with defaults applied.
    pub fn size(&self) -> (u32, u32) {
        (
            self.width.unwrap_or(DEFAULT_WIDTH),
            self.height.unwrap_or(DEFAULT_HEIGHT),
        )
    }

    fn validate(&self) -> Result<()> {
        let f = &self.file;
        let plain = !f.is_empty()
            && !f.starts_with('.')
            && !f.contains(['/', '\\', '\0'])
            && f.to_ascii_lowercase().ends_with(".png")
            && f.len() > 4;
        if !plain {
            bail!(
                "panel {}: file {:?} must be a plain file name ending in .png (no directories)",
                self.kind,
                f
            );
        }
        for (what, v) in [("width", self.width), ("height", self.height)] {
            if let Some(v) = v {
                if !(MIN_SIDE..=MAX_SIDE).contains(&v) {
                    bail!(
                        "panel {} ({f}): {what} {v} is outside {MIN_SIDE}..={MAX_SIDE} px",
                        self.kind
                    );
                }
            }
        }
        Ok(())
    }
}

impl Dashboard {
    /// Reads `<dir>/<name>.toml`; clear error naming the file when missing or malformed.
    pub fn load(dir: &Path, name: &str) -> Result<Dashboard> {
        let valid_name = !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        if !valid_name {
            bail!(
                "invalid dashboard name {name:?}: use letters, digits, '-' and '_' only \
                 (the file is looked up as <name>.toml in {})",
                dir.display()
            );
        }
        let path = dir.join(format!("{name}.toml"));
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                bail!(
                    "dashboard file {} not found (dashboard {name:?})",
                    path.display()
                )
            }
            Err(e) => {
                return Err(e)
                    .with_context(|| format!("cannot read dashboard file {}", path.display()))
            }
        };
        Self::from_toml_str(&text)
            .with_context(|| format!("dashboard file {} is malformed", path.display()))
    }

    /// Parses and validates a dashboard declaration.
    pub fn from_toml_str(text: &str) -> Result<Dashboard> {
        let dashboard: Dashboard = toml::from_str(text).map_err(|e| anyhow!("{e}"))?;
        dashboard.validate()?;
        Ok(dashboard)
    }

    /// The dashboard shipped in `dashboards/default.toml`, embedded at compile
    /// time so the daemon has charts even when the directory is missing.
    pub fn builtin_default() -> Dashboard {
        Self::from_toml_str(include_str!("../dashboards/default.toml"))
            .expect("dashboards/default.toml is valid")
    }

    /// The dashboards shipped in `dashboards/`, compiled in: used when the daemon's
    /// dashboards folder has no file of that name.
    pub fn builtin(name: &str) -> Option<Dashboard> {
        let text = match name {
            "default" => include_str!("../dashboards/default.toml"),
            "compare" => include_str!("../dashboards/compare.toml"),
            _ => return None,
        };
        Some(Self::from_toml_str(text).expect("the shipped dashboards are valid"))
    }

    /// Checks file names (plain `.png` names, no duplicates) and sizes.
    pub fn validate(&self) -> Result<()> {
        if self.panels.is_empty() {
            bail!("the dashboard declares no panels (add [[panels]] tables)");
        }
        let mut seen = HashSet::new();
        for p in &self.panels {
            p.validate()?;
            if !seen.insert(p.file.to_ascii_lowercase()) {
                bail!("two panels write the same file {:?}", p.file);
            }
        }
        Ok(())
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
        write_atomically(&path, &png)?;
        written.push(path);
    }
    Ok(written)
}

/// Renders one panel and returns the encoded PNG bytes.
pub fn render_panel_png(sweep: &ChartSweep, panel: &Panel) -> Result<Vec<u8>> {
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
    ensure_fonts()?;
    let (w, h) = panel_pixels(sweep, panel);
    let mut rgb = vec![255u8; w as usize * h as usize * 3];
    let drawn;
    {
        let root = BitMapBackend::with_buffer(&mut rgb, (w, h)).into_drawing_area();
        root.fill(&WHITE).map_err(plot_err)?;
        drawn = match panel.kind {
            PanelKind::LearningCurves => draw_learning_curves(&root, sweep, panel),
            PanelKind::LossCurves => draw_loss_curves(&root, sweep, panel),
            PanelKind::TestAccuracyBars => draw_accuracy_bars(&root, sweep, panel),
            PanelKind::AccuracyVsParameters => draw_accuracy_vs_parameters(&root, sweep, panel),
            PanelKind::OptimizationHistory => draw_optimization_history(&root, sweep, panel),
            PanelKind::ParallelCoordinates => draw_parallel_coordinates(&root, sweep, panel),
            PanelKind::ParamEffects => draw_param_effects(&root, sweep, panel),
            PanelKind::Pareto => draw_pareto(&root, sweep, panel),
            PanelKind::ParamImportance => draw_param_importance(&root, sweep, panel),
        }
        .with_context(|| format!("rendering panel {} ({})", panel.kind, panel.file))?;
        root.present().map_err(plot_err)?;
    }
    let mut png = Vec::new();
    image::codecs::png::PngEncoder::new(&mut png)
        .write_image(&rgb, w, h, image::ExtendedColorType::Rgb8)
        .with_context(|| format!("encoding {}", panel.file))?;
    Ok((png, drawn))
}

/// Short label of a trial built from its varied parameters only, e.g.
/// "k=3 drop=0.5 head=gap". Falls back to "#index" when nothing is varied.
pub fn trial_label(trial: &ChartTrial, varied: &[String]) -> String {
    let parts: Vec<String> = varied
        .iter()
        .filter_map(|name| {
            trial
                .params
                .get(name)
                .map(|v| format!("{}={}", param_alias(name), format_param(v)))
        })
        .collect();
    if parts.is_empty() {
        format!("#{}", trial.index)
    } else {
        parts.join(" ")
    }
}

/// Short display name of a hyperparameter.
pub fn param_alias(name: &str) -> &str {
    match name {
        "kernelSize" => "k",
        "dropout" => "drop",
        "baseFilters" => "filters",
        "learningRate" => "lr",
        "batchSize" => "bs",
        other => other,
    }
}

/// Compact text of a hyperparameter value ("gap", "0.5", "3", "[32,64]").
pub fn format_param(v: &serde_json::Value) -> String {
    use serde_json::Value;
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "none".to_string(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => match (n.as_i64(), n.as_u64(), n.as_f64()) {
            (Some(i), _, _) => i.to_string(),
            (_, Some(u), _) => u.to_string(),
            (_, _, Some(f)) if f != 0.0 && f.abs() < 1e-3 => format!("{f:e}"),
            (_, _, Some(f)) => f.to_string(),
            _ => n.to_string(),
        },
        other => other.to_string(),
    }
}

// ---------------------------------------------------------------------------
// Fonts, colours, small helpers
// ---------------------------------------------------------------------------

const FAMILY: &str = "sans-serif";
const TITLE_PX: u32 = 28;
const SUBTITLE_PX: u32 = 16;
const AXIS_DESC_PX: u32 = 18;
const TICK_PX: u32 = 16;
const LEGEND_PX: u32 = 15;
const SMALL_PX: u32 = 13;
const HEADER_H: u32 = 88;

const INK: RGBColor = RGBColor(33, 33, 33);
const MUTED: RGBColor = RGBColor(110, 110, 110);
const GRID: RGBColor = RGBColor(225, 225, 225);
const GRID_LIGHT: RGBColor = RGBColor(243, 243, 243);
const AXIS: RGBColor = RGBColor(90, 90, 90);
const BAR: RGBColor = RGBColor(78, 121, 167);
const BAR_BEST: RGBColor = RGBColor(242, 142, 43);

/// matplotlib "tab10": distinct, print-friendly line colours.
const PALETTE: [RGBColor; 10] = [
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

type Area<'a> = DrawingArea<BitMapBackend<'a>, Shift>;

fn ensure_fonts() -> Result<()> {
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

fn plot_err<E: std::fmt::Display>(e: E) -> anyhow::Error {
    anyhow!("drawing failed: {e}")
}

fn text(px: u32, color: &RGBColor) -> TextStyle<'static> {
    (FAMILY, px as f64).into_font().color(color)
}

fn bold(px: u32, color: &RGBColor) -> TextStyle<'static> {
    (FAMILY, px as f64, FontStyle::Bold)
        .into_font()
        .color(color)
}

fn anchored(style: TextStyle<'static>, h: HPos, v: VPos) -> TextStyle<'static> {
    style.pos(Pos::new(h, v))
}

fn text_width(area: &Area, s: &str, style: &TextStyle) -> u32 {
    area.estimate_text_size(s, style)
        .map(|(w, _)| w)
        .unwrap_or_else(|_| (s.chars().count() as f64 * style.font.get_size() * 0.6) as u32)
}

/// Shortens `s` with an ellipsis until it fits into `max_w` pixels.
fn fit_text(area: &Area, s: &str, style: &TextStyle, max_w: u32) -> String {
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

fn draw_text_at(area: &Area, s: &str, style: &TextStyle, pos: (i32, i32)) -> Result<()> {
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

fn center_nudge(px: f64) -> i32 {
    (px * 0.2).round() as i32
}

fn color_of(pos: usize) -> RGBColor {
    PALETTE[pos % PALETTE.len()]
}

fn is_inactive(status: &str) -> bool {
    matches!(status, "pruned" | "parked" | "failed" | "cancelled")
}

fn is_best(sweep: &ChartSweep, trial: &ChartTrial) -> bool {
    sweep.best_trial_id.as_deref() == Some(trial.trial_id.as_str())
}

/// `trial_label` for every trial, with " #index" appended where two trials
/// would otherwise share a label.
fn unique_labels(sweep: &ChartSweep) -> Vec<String> {
    let labels: Vec<String> = sweep
        .trials
        .iter()
        .map(|t| trial_label(t, &sweep.varied))
        .collect();
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for l in &labels {
        *counts.entry(l.as_str()).or_default() += 1;
    }
    labels
        .iter()
        .zip(&sweep.trials)
        .map(|(l, t)| {
            if counts[l.as_str()] > 1 && !l.starts_with('#') {
                format!("{l} #{}", t.index)
            } else {
                l.clone()
            }
        })
        .collect()
}

fn chart_title(sweep: &ChartSweep, panel: &Panel) -> String {
    let base = panel
        .title
        .clone()
        .unwrap_or_else(|| panel.kind.default_title().to_string());
    if sweep.name.is_empty() {
        base
    } else {
        format!("{base} — {}", sweep.name)
    }
}

fn subtitle(sweep: &ChartSweep) -> String {
    let finished = sweep
        .trials
        .iter()
        .filter(|t| t.status == "succeeded")
        .count();
    let mut parts = Vec::new();
    if !sweep.dataset.is_empty() {
        parts.push(format!("dataset {}", sweep.dataset));
    }
    if !sweep.sweep_id.is_empty() {
        parts.push(format!("sweep {}", sweep.sweep_id));
    }
    parts.push(format!(
        "{} trial{}, {finished} succeeded",
        sweep.trials.len(),
        if sweep.trials.len() == 1 { "" } else { "s" }
    ));
    if !sweep.varied.is_empty() {
        parts.push(format!("varied: {}", sweep.varied.join(", ")));
    }
    parts.join("  ·  ")
}

/// Draws title and subtitle; returns the area below them.
fn draw_header<'a>(root: &Area<'a>, title: &str, sub: &str) -> Result<Area<'a>> {
    let (w, _) = root.dim_in_pixel();
    let max_w = w.saturating_sub(40);
    let ts = anchored(bold(TITLE_PX, &INK), HPos::Center, VPos::Top);
    let title = fit_text(root, title, &ts, max_w);
    draw_text_at(root, &title, &ts, (w as i32 / 2, 18))?;
    let ss = anchored(text(SUBTITLE_PX, &MUTED), HPos::Center, VPos::Top);
    let sub = fit_text(root, sub, &ss, max_w);
    draw_text_at(root, &sub, &ss, (w as i32 / 2, 58))?;
    let (_, body) = root.split_vertically(HEADER_H);
    Ok(body)
}

/// A chart frame that only says "no data yet".
fn draw_no_data(body: &Area, reason: &str) -> Result<Drawn> {
    let (w, h) = body.dim_in_pixel();
    let frame = [(40, 10), (w as i32 - 40, h as i32 - 30)];
    body.draw(&Rectangle::new(
        frame,
        ShapeStyle::from(&GRID).stroke_width(2),
    ))
    .map_err(plot_err)?;
    let cx = w as i32 / 2;
    let cy = (h as i32 - 20) / 2;
    let big = anchored(bold(34, &MUTED), HPos::Center, VPos::Center);
    draw_text_at(body, "no data yet", &big, (cx, cy - 18))?;
    let small = anchored(text(AXIS_DESC_PX, &MUTED), HPos::Center, VPos::Center);
    let reason = fit_text(body, reason, &small, w.saturating_sub(120));
    draw_text_at(body, &reason, &small, (cx, cy + 24))?;
    Ok(Drawn::NoData)
}

fn finite_range(values: impl IntoIterator<Item = f64>) -> Option<(f64, f64)> {
    values
        .into_iter()
        .filter(|v| v.is_finite())
        .fold(None, |acc, v| match acc {
            None => Some((v, v)),
            Some((lo, hi)) => Some((lo.min(v), hi.max(v))),
        })
}

// ---------------------------------------------------------------------------
// Axis with hand-picked ticks (integer epochs, 1-2-5 log ticks, percentages)
// ---------------------------------------------------------------------------

/// A numeric axis whose tick positions are chosen here rather than by
/// plotters, optionally logarithmic. Values are always in data units.
#[derive(Clone)]
struct TickAxis {
    lo: f64,
    hi: f64,
    log: bool,
    ticks: Vec<f64>,
    light: Vec<f64>,
}

impl TickAxis {
    fn linear(lo: f64, hi: f64, max_ticks: usize, integer: bool) -> TickAxis {
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

    fn log(lo: f64, hi: f64) -> TickAxis {
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

fn nice_step(raw: f64, integer: bool) -> f64 {
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

/// Fewest decimals (0..=3) that print every value in `values` exactly.
fn decimals_for(values: &[f64]) -> usize {
    (0..=3)
        .find(|d| {
            let scale = 10f64.powi(*d as i32);
            values
                .iter()
                .all(|v| ((v * scale).round() - v * scale).abs() < 1e-6)
        })
        .unwrap_or(3)
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

fn format_count(v: f64) -> String {
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

// ---------------------------------------------------------------------------
// Legend drawn in its own column to the right of the plot
// ---------------------------------------------------------------------------

#[derive(Clone, Copy, PartialEq)]
enum Swatch {
    Line {
        dashed: bool,
        width: u32,
    },
    Dot,
    /// An unfilled circle (pruned trials in scatter charts).
    Hollow,
    Ring,
    /// No symbol: a text-only row.
    Blank,
}

struct LegendEntry {
    label: String,
    color: RGBAColor,
    swatch: Swatch,
    marker: bool,
    emphasis: bool,
}

const LEGEND_ROW: i32 = 24;
const LEGEND_SWATCH: i32 = 38;
/// At most this many legend rows, the last one then reading "+K more".
const LEGEND_MAX_ROWS: usize = 16;

fn legend_width(root: &Area, heading: &str, entries: &[LegendEntry]) -> u32 {
    let (w, _) = root.dim_in_pixel();
    let ts = bold(LEGEND_PX, &INK);
    let widest = entries
        .iter()
        .map(|e| text_width(root, &e.label, &ts))
        .max()
        .unwrap_or(0)
        + (LEGEND_SWATCH + 50) as u32;
    let head = text_width(root, heading, &ts) + 40;
    widest.max(head).clamp(200, (w as f64 * 0.36) as u32)
}

/// How many of `entries` legend rows to draw when `fit` rows fit, and how
/// many are left for a final "+K more" row: at most [`LEGEND_MAX_ROWS`] rows.
fn legend_rows(entries: usize, fit: usize) -> (usize, usize) {
    let rows = fit.min(LEGEND_MAX_ROWS);
    if entries <= rows {
        (entries, 0)
    } else {
        let shown = rows.saturating_sub(1);
        (shown, entries - shown)
    }
}

fn draw_legend(area: &Area, heading: &str, entries: &[LegendEntry]) -> Result<()> {
    let (w, h) = area.dim_in_pixel();
    let x0 = 12;
    let mut y = 20;
    let hs = anchored(bold(LEGEND_PX, &INK), HPos::Left, VPos::Top);
    let heading = fit_text(area, heading, &hs, w.saturating_sub(24));
    draw_text_at(area, &heading, &hs, (x0, y))?;
    y += 30;
    let rows = ((h as i32 - y - 16) / LEGEND_ROW).max(0) as usize;
    let (shown, more) = legend_rows(entries.len(), rows);
    let max_text = w.saturating_sub((x0 + LEGEND_SWATCH + 16) as u32);
    for e in &entries[..shown] {
        let cy = y + LEGEND_ROW / 2;
        let (sx0, sx1) = (x0, x0 + LEGEND_SWATCH);
        match e.swatch {
            Swatch::Line { dashed, width } => {
                let style = ShapeStyle {
                    color: e.color,
                    filled: false,
                    stroke_width: width,
                };
                if dashed {
                    let mut x = sx0;
                    while x < sx1 {
                        let end = (x + 8).min(sx1);
                        area.draw(&PathElement::new(vec![(x, cy), (end, cy)], style))
                            .map_err(plot_err)?;
                        x += 13;
                    }
                } else {
                    area.draw(&PathElement::new(vec![(sx0, cy), (sx1, cy)], style))
                        .map_err(plot_err)?;
                }
            }
            Swatch::Dot | Swatch::Blank => {}
            Swatch::Hollow => {
                area.draw(&Circle::new(
                    ((sx0 + sx1) / 2, cy),
                    5,
                    ShapeStyle {
                        color: e.color,
                        filled: false,
                        stroke_width: 2,
                    },
                ))
                .map_err(plot_err)?;
            }
            Swatch::Ring => {
                area.draw(&Circle::new(
                    ((sx0 + sx1) / 2, cy),
                    10,
                    ShapeStyle::from(&INK).stroke_width(2),
                ))
                .map_err(plot_err)?;
            }
        }
        if e.marker || e.swatch == Swatch::Dot {
            let r = if e.swatch == Swatch::Dot { 6 } else { 4 };
            area.draw(&Circle::new(((sx0 + sx1) / 2, cy), r, e.color.filled()))
                .map_err(plot_err)?;
        }
        let ts = if e.emphasis {
            bold(LEGEND_PX, &INK)
        } else {
            text(LEGEND_PX, &INK)
        };
        let ts = anchored(ts, HPos::Left, VPos::Center);
        let (tx, max_text) = if e.swatch == Swatch::Blank {
            (x0, w.saturating_sub(x0 as u32 + 8))
        } else {
            (sx1 + 10, max_text)
        };
        let label = fit_text(area, &e.label, &ts, max_text);
        draw_text_at(area, &label, &ts, (tx, cy))?;
        y += LEGEND_ROW;
    }
    if more > 0 {
        let ts = anchored(text(LEGEND_PX, &MUTED), HPos::Left, VPos::Center);
        draw_text_at(
            area,
            &format!("+{more} more"),
            &ts,
            (x0, y + LEGEND_ROW / 2),
        )?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Per-epoch line charts (learning curves, loss curves)
// ---------------------------------------------------------------------------

struct Curve<'s> {
    trial: &'s ChartTrial,
    label: String,
    color: RGBColor,
    best: bool,
    inactive: bool,
    /// Lines to draw; each line is (points, dashed).
    lines: Vec<(Vec<(f64, f64)>, bool)>,
    /// Used to rank trials in the legend (higher first).
    score: f64,
}

impl Curve<'_> {
    /// Colour and stroke width; `dense` charts (more trials than palette
    /// colours) use thinner, lighter lines so the best trial stands out.
    fn style(&self, dense: bool) -> (RGBAColor, u32) {
        let alpha = match (self.best, self.inactive, dense) {
            (true, _, _) => 1.0,
            (false, true, false) => 0.5,
            (false, true, true) => 0.35,
            (false, false, true) => 0.75,
            (false, false, false) => 1.0,
        };
        let width = match (self.best, dense) {
            (true, _) => 4,
            (false, true) => 1,
            (false, false) => 2,
        };
        (self.color.mix(alpha), width)
    }

    fn legend_label(&self) -> String {
        if self.best {
            format!("{} (best)", self.label)
        } else if self.inactive {
            format!("{} ({})", self.label, self.trial.status)
        } else {
            self.label.clone()
        }
    }
}

/// Points of one metric in epoch order, split into segments wherever a value
/// is missing (NaN/inf), so gaps stay visible instead of being bridged.
fn epoch_segments(trial: &ChartTrial, metric: impl Fn(&ChartEpoch) -> f64) -> Vec<Vec<(f64, f64)>> {
    let mut epochs: Vec<&ChartEpoch> = trial.epochs.iter().collect();
    epochs.sort_by_key(|e| e.epoch);
    let mut segments = vec![Vec::new()];
    for e in epochs {
        let v = metric(e);
        if v.is_finite() {
            segments
                .last_mut()
                .expect("never empty")
                .push((e.epoch as f64, v));
        } else if !segments.last().expect("never empty").is_empty() {
            segments.push(Vec::new());
        }
    }
    segments.retain(|s| !s.is_empty());
    segments
}

/// Moves up to `want` pruned curves into the first `room` places when none
/// is there and more curves than `room` exist; the order is otherwise kept.
fn promote_pruned(curves: &mut Vec<Curve>, room: usize, want: usize) {
    let pruned = |c: &Curve| matches!(c.trial.status.as_str(), "pruned" | "parked");
    if curves.len() <= room || room <= want || curves[..room].iter().any(pruned) {
        return;
    }
    let picked: Vec<usize> = (room..curves.len())
        .filter(|&i| pruned(&curves[i]))
        .take(want)
        .collect();
    for (slot, &i) in picked.iter().enumerate() {
        let c = curves.remove(i);
        curves.insert(room - picked.len() + slot, c);
    }
}

struct LineChartSpec<'a> {
    y_desc: &'a str,
    percent: bool,
    empty_reason: &'a str,
    legend_heading: &'a str,
    key: Vec<LegendEntry>,
    /// Legend swatches of pruned/failed/cancelled trials are dashed like their lines.
    inactive_dashed: bool,
}

fn draw_learning_curves(root: &Area, sweep: &ChartSweep, panel: &Panel) -> Result<Drawn> {
    let labels = unique_labels(sweep);
    let curves: Vec<Curve> = sweep
        .trials
        .iter()
        .enumerate()
        .filter_map(|(pos, t)| {
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
            Some(Curve {
                trial: t,
                label: labels[pos].clone(),
                color: color_of(pos),
                best: is_best(sweep, t),
                inactive,
                lines: segments.into_iter().map(|s| (s, inactive)).collect(),
                score,
            })
        })
        .collect();
    // Pruned (and failed/cancelled) trials are dashed and faded; say so
    // even when none of them makes it into the capped legend.
    let mut stopped: BTreeMap<&str, usize> = BTreeMap::new();
    for c in curves.iter().filter(|c| c.inactive) {
        *stopped.entry(c.trial.status.as_str()).or_default() += 1;
    }
    let key = if !stopped.is_empty() {
        let counts: Vec<String> = stopped.iter().map(|(s, n)| format!("{n} {s}")).collect();
        vec![LegendEntry {
            label: format!("dashed, faded: {}", counts.join(", ")),
            color: MUTED.mix(0.6),
            swatch: Swatch::Line {
                dashed: true,
                width: 2,
            },
            marker: false,
            emphasis: false,
        }]
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

fn draw_loss_curves(root: &Area, sweep: &ChartSweep, panel: &Panel) -> Result<Drawn> {
    let labels = unique_labels(sweep);
    let curves: Vec<Curve> = sweep
        .trials
        .iter()
        .enumerate()
        .filter_map(|(pos, t)| {
            let val = epoch_segments(t, |e| e.val_loss);
            let train = epoch_segments(t, |e| e.train_loss);
            if val.is_empty() && train.is_empty() {
                return None;
            }
            // lower validation loss ranks first
            let score = -val.iter().flatten().map(|p| p.1).fold(f64::MAX, f64::min);
            Some(Curve {
                trial: t,
                label: labels[pos].clone(),
                color: color_of(pos),
                best: is_best(sweep, t),
                inactive: is_inactive(&t.status),
                lines: train
                    .into_iter()
                    .map(|s| (s, true))
                    .chain(val.into_iter().map(|s| (s, false)))
                    .collect(),
                score,
            })
        })
        .collect();
    let key_color = MUTED.mix(1.0);
    let spec = LineChartSpec {
        y_desc: "loss",
        percent: false,
        empty_reason: "no trial has reported a loss",
        legend_heading: "trials, by lowest val. loss",
        key: vec![
            LegendEntry {
                label: "validation loss".into(),
                color: key_color,
                swatch: Swatch::Line {
                    dashed: false,
                    width: 2,
                },
                marker: true,
                emphasis: false,
            },
            LegendEntry {
                label: "train loss".into(),
                color: key_color,
                swatch: Swatch::Line {
                    dashed: true,
                    width: 2,
                },
                marker: true,
                emphasis: false,
            },
        ],
        inactive_dashed: false,
    };
    draw_line_chart(root, sweep, panel, curves, spec)
}

fn draw_line_chart(
    root: &Area,
    sweep: &ChartSweep,
    panel: &Panel,
    mut curves: Vec<Curve>,
    spec: LineChartSpec,
) -> Result<Drawn> {
    let body = draw_header(root, &chart_title(sweep, panel), &subtitle(sweep))?;
    let all_points = || {
        curves
            .iter()
            .flat_map(|c| c.lines.iter().flat_map(|l| &l.0))
    };
    let (Some((e_lo, e_hi)), Some((v_lo, v_hi))) = (
        finite_range(all_points().map(|p| p.0)),
        finite_range(all_points().map(|p| p.1)),
    ) else {
        return draw_no_data(&body, spec.empty_reason);
    };

    // Legend: best first, then by score.
    curves.sort_by(|a, b| {
        b.best
            .cmp(&a.best)
            .then(b.score.total_cmp(&a.score))
            .then(a.trial.index.cmp(&b.trial.index))
    });
    if spec.inactive_dashed {
        // When the legend overflows, keep the two best pruned trials in it,
        // so their "(pruned)" style is seen next to the others.
        let room = LEGEND_MAX_ROWS.saturating_sub(spec.key.len() + 1);
        promote_pruned(&mut curves, room, 2);
    }
    let dense = curves.len() > PALETTE.len();
    let mut entries = spec.key;
    for c in &curves {
        let (color, width) = c.style(false);
        entries.push(LegendEntry {
            label: c.legend_label(),
            color,
            swatch: Swatch::Line {
                dashed: c.inactive && spec.inactive_dashed,
                width,
            },
            marker: true,
            emphasis: c.best,
        });
    }
    let legend_w = legend_width(root, spec.legend_heading, &entries);
    let (bw, _) = body.dim_in_pixel();
    let (plot_area, legend_area) = body.split_horizontally(bw - legend_w);

    // Axes: integer epochs, data-fitted y.
    let x_pad = ((e_hi - e_lo) * 0.03).max(0.3);
    let epochs = (e_hi - e_lo) as usize + 1;
    let x_axis = TickAxis::linear(e_lo - x_pad, e_hi + x_pad, epochs.min(12), true);
    let (y_lo, y_hi) = if spec.percent {
        fit_range(v_lo, v_hi, 0.004, true)
    } else {
        fit_range(v_lo, v_hi, (v_hi.abs() * 0.05).max(1e-3), true)
    };
    let y_axis = TickAxis::linear(y_lo, y_hi, 8, false);
    let y_dec = if spec.percent {
        decimals_for(&y_axis.ticks.iter().map(|v| v * 100.0).collect::<Vec<_>>())
    } else {
        decimals_for(&y_axis.ticks)
    };

    let mut chart = ChartBuilder::on(&plot_area)
        .margin_top(8)
        .margin_left(12)
        .margin_right(24)
        .margin_bottom(12)
        .x_label_area_size(54)
        .y_label_area_size(90)
        .build_cartesian_2d(x_axis, y_axis)
        .map_err(plot_err)?;
    let percent = spec.percent;
    let y_fmt = move |v: &f64| {
        if percent {
            format!("{:.*}%", y_dec, v * 100.0)
        } else {
            format!("{v:.y_dec$}")
        }
    };
    let x_fmt = |v: &f64| format!("{v:.0}");
    chart
        .configure_mesh()
        .x_desc("epoch")
        .y_desc(spec.y_desc)
        .axis_desc_style(text(AXIS_DESC_PX, &INK))
        .label_style(text(TICK_PX, &INK))
        .y_label_offset(center_nudge(TICK_PX as f64))
        .x_label_formatter(&x_fmt)
        .y_label_formatter(&y_fmt)
        .bold_line_style(GRID.stroke_width(1))
        .light_line_style(GRID_LIGHT.stroke_width(1))
        .axis_style(AXIS.stroke_width(1))
        .draw()
        .map_err(plot_err)?;

    // Inactive first, best last so it stays on top.
    let mut order: Vec<&Curve> = curves.iter().collect();
    order.sort_by_key(|c| (c.best, !c.inactive));
    for c in order {
        let (color, width) = c.style(dense);
        let style = ShapeStyle {
            color,
            filled: false,
            stroke_width: width,
        };
        for (pts, dashed) in &c.lines {
            if c.best && dense && pts.len() > 1 {
                // dark halo: palette colours repeat, the best line must not
                let halo = ShapeStyle::from(&INK).stroke_width(width + 3);
                if *dashed {
                    chart
                        .draw_series(DashedLineSeries::new(pts.clone(), 9, 6, halo))
                        .map_err(plot_err)?;
                } else {
                    chart
                        .draw_series(LineSeries::new(pts.clone(), halo))
                        .map_err(plot_err)?;
                }
            }
            if pts.len() > 1 {
                if *dashed {
                    chart
                        .draw_series(DashedLineSeries::new(pts.clone(), 9, 6, style))
                        .map_err(plot_err)?;
                } else {
                    chart
                        .draw_series(LineSeries::new(pts.clone(), style))
                        .map_err(plot_err)?;
                }
            }
            let r = match (c.best, dense) {
                (true, _) => 5,
                (false, true) => 2,
                (false, false) => 4,
            };
            chart
                .draw_series(pts.iter().map(|p| Circle::new(*p, r, color.filled())))
                .map_err(plot_err)?;
        }
    }
    draw_legend(&legend_area, spec.legend_heading, &entries)?;
    Ok(Drawn::Chart)
}

// ---------------------------------------------------------------------------
// Test accuracy bars (horizontal, labels on the left)
// ---------------------------------------------------------------------------

const BAR_ROW: u32 = 30;
const BAR_CHROME: u32 = HEADER_H + 20 + 70;

fn scored_trials(sweep: &ChartSweep) -> Vec<(usize, &ChartTrial, f64)> {
    let mut v: Vec<(usize, &ChartTrial, f64)> = sweep
        .trials
        .iter()
        .enumerate()
        .filter_map(|(i, t)| t.test_accuracy.filter(|a| a.is_finite()).map(|a| (i, t, a)))
        .collect();
    v.sort_by(|a, b| b.2.total_cmp(&a.2).then(a.1.index.cmp(&b.1.index)));
    v
}

fn panel_pixels(sweep: &ChartSweep, panel: &Panel) -> (u32, u32) {
    let (w, h) = panel.size();
    if panel.kind != PanelKind::TestAccuracyBars {
        return (w, h);
    }
    let n = scored_trials(sweep).len() as u32;
    if n == 0 {
        return (w, h);
    }
    let needed = (BAR_CHROME + n * BAR_ROW).clamp(MIN_SIDE, MAX_SIDE);
    match panel.height {
        // an explicit height is honoured unless the bars would not fit
        Some(explicit) => (w, explicit.max(needed)),
        // otherwise size from the bar count (roomier rows for few bars)
        None => (w, needed.max(BAR_CHROME + n * 48).min(h.max(needed))),
    }
}

fn draw_accuracy_bars(root: &Area, sweep: &ChartSweep, panel: &Panel) -> Result<Drawn> {
    let body = draw_header(root, &chart_title(sweep, panel), &subtitle(sweep))?;
    let bars = scored_trials(sweep);
    let Some((a_lo, a_hi)) = finite_range(bars.iter().map(|b| b.2)) else {
        return draw_no_data(&body, "no trial has a test accuracy yet");
    };
    let labels = unique_labels(sweep);
    let best_pos = bars.iter().position(|b| is_best(sweep, b.1));
    let bar_labels: Vec<String> = bars
        .iter()
        .enumerate()
        .map(|(rank, (i, t, _))| {
            let mut l = format!("{}. {}", rank + 1, labels[*i]);
            if Some(rank) == best_pos {
                l.push_str(" (best)");
            } else if t.status != "succeeded" {
                l.push_str(&format!(" [{}]", t.status));
            }
            l
        })
        .collect();

    let (bw, _) = body.dim_in_pixel();
    let label_w = bar_labels
        .iter()
        .enumerate()
        .map(|(rank, l)| {
            let style = if Some(rank) == best_pos {
                bold(TICK_PX, &INK)
            } else {
                text(TICK_PX, &INK)
            };
            text_width(root, l, &style)
        })
        .max()
        .unwrap_or(0)
        .clamp(60, (bw as f64 * 0.42) as u32);
    let value_room = 90u32;
    let (x_margin_l, x_margin_r) = (16u32, 24u32);
    let plot_w = bw
        .saturating_sub(label_w + 20 + x_margin_l + x_margin_r)
        .max(100);

    // x axis: start at 0 unless that would flatten the differences.
    let span = a_hi - a_lo;
    let x_lo = if bars.len() > 1 && a_lo > 0.3 && span < 0.5 * a_hi {
        let raw = (a_lo - (span * 0.6).max(0.01)).max(0.0);
        let step = nice_step(span.max(0.01) / 4.0, false);
        (raw / step).floor() * step
    } else {
        0.0
    };
    // leave room right of the longest bar for its value text
    let frac = value_room as f64 / plot_w as f64;
    let x_hi = a_hi + (a_hi - x_lo).max(1e-3) * frac / (1.0 - frac);
    let x_axis = TickAxis::linear(x_lo, x_hi, 8, false);
    let x_dec = decimals_for(&x_axis.ticks.iter().map(|v| v * 100.0).collect::<Vec<_>>());
    let n = bars.len();

    let mut chart = ChartBuilder::on(&body)
        .margin_top(10)
        .margin_left(x_margin_l)
        .margin_right(x_margin_r)
        .margin_bottom(10)
        .x_label_area_size(60)
        .y_label_area_size(label_w + 20)
        .build_cartesian_2d(x_axis, 0f64..n as f64)
        .map_err(plot_err)?;
    let x_fmt = move |v: &f64| format!("{:.*}%", x_dec, v * 100.0);
    let x_desc = if x_lo > 0.0 {
        format!("test accuracy (axis starts at {})", x_fmt(&x_lo))
    } else {
        "test accuracy".to_string()
    };
    chart
        .configure_mesh()
        .disable_y_mesh()
        .y_labels(0)
        .x_desc(x_desc)
        .axis_desc_style(text(AXIS_DESC_PX, &INK))
        .label_style(text(TICK_PX, &INK))
        .x_label_formatter(&x_fmt)
        .bold_line_style(GRID.stroke_width(1))
        .light_line_style(GRID_LIGHT.stroke_width(1))
        .axis_style(AXIS.stroke_width(1))
        .draw()
        .map_err(plot_err)?;

    let (_, row_px) = {
        let a = chart.backend_coord(&(x_lo, 0.0));
        let b = chart.backend_coord(&(x_lo, 1.0));
        (a, (a.1 - b.1).abs())
    };
    // bars fill ~70% of their row, but never get thicker than 34 px
    let thickness = 0.72f64.min(34.0 / row_px.max(1) as f64);
    let value_px = if row_px < 22 { SMALL_PX } else { 15 };
    let lab_px = if row_px < 22 { SMALL_PX } else { TICK_PX };
    for (rank, (_, _, acc)) in bars.iter().enumerate() {
        let yc = (n - 1 - rank) as f64 + 0.5;
        let best = Some(rank) == best_pos;
        let color = if best { BAR_BEST } else { BAR };
        chart
            .draw_series(std::iter::once(Rectangle::new(
                [(x_lo, yc - thickness / 2.0), (*acc, yc + thickness / 2.0)],
                color.filled(),
            )))
            .map_err(plot_err)?;
        let end = chart.backend_coord(&(*acc, yc));
        let vs = if best {
            bold(value_px, &INK)
        } else {
            text(value_px, &INK)
        };
        let vs = anchored(vs, HPos::Left, VPos::Center);
        draw_text_at(
            root,
            &format!("{:.2}%", acc * 100.0),
            &vs,
            (end.0 + 6, end.1),
        )?;
        let start = chart.backend_coord(&(x_lo, yc));
        let ls = if best {
            bold(lab_px, &INK)
        } else {
            text(lab_px, &INK)
        };
        let ls = anchored(ls, HPos::Right, VPos::Center);
        let label = fit_text(root, &bar_labels[rank], &ls, label_w);
        draw_text_at(root, &label, &ls, (start.0 - 10, start.1))?;
    }
    Ok(Drawn::Chart)
}

// ---------------------------------------------------------------------------
// Test accuracy vs parameter count (scatter)
// ---------------------------------------------------------------------------

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

/// (trial position, trial, parameter count, test accuracy) of every trial that has both.
fn size_accuracy_points(sweep: &ChartSweep) -> Vec<(usize, &ChartTrial, f64, f64)> {
    sweep
        .trials
        .iter()
        .enumerate()
        .filter_map(|(i, t)| {
            let acc = t.test_accuracy.filter(|a| a.is_finite())?;
            let params = t.parameter_count.filter(|p| *p > 0)? as f64;
            Some((i, t, params, acc))
        })
        .collect()
}

fn draw_accuracy_vs_parameters(root: &Area, sweep: &ChartSweep, panel: &Panel) -> Result<Drawn> {
    let body = draw_header(root, &chart_title(sweep, panel), &subtitle(sweep))?;
    let labels = unique_labels(sweep);
    let points = size_accuracy_points(sweep);
    let (Some((p_lo, p_hi)), Some((a_lo, a_hi))) = (
        finite_range(points.iter().map(|p| p.2)),
        finite_range(points.iter().map(|p| p.3)),
    ) else {
        return draw_no_data(
            &body,
            "no trial has both a test accuracy and a parameter count yet",
        );
    };

    // Colour groups by one varied parameter.
    let trials: Vec<&ChartTrial> = points.iter().map(|p| p.1).collect();
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
        .map(|g| LegendEntry {
            label: match &color_param {
                Some(p) => format!("{} = {g}", param_alias(p)),
                None => "trial".to_string(),
            },
            color: group_color[g.as_str()].mix(1.0),
            swatch: Swatch::Dot,
            marker: false,
            emphasis: false,
        })
        .collect();
    let best_point = points.iter().find(|p| is_best(sweep, p.1));
    if best_point.is_some() {
        entries.push(LegendEntry {
            label: "best trial".into(),
            color: INK.mix(1.0),
            swatch: Swatch::Ring,
            marker: false,
            emphasis: true,
        });
    }
    let heading = match &color_param {
        Some(p) => format!("colour: {p}"),
        None => "trials".to_string(),
    };
    let legend_w = legend_width(root, &heading, &entries);
    let (bw, _) = body.dim_in_pixel();
    let (plot_area, legend_area) = body.split_horizontally(bw - legend_w);

    let log = p_hi / p_lo > 10.0;
    let x_axis = if log {
        let (lo, hi) = (p_lo / 1.35, p_hi * 1.35);
        let mut axis = TickAxis::log(lo, hi);
        if axis.ticks.len() < 2 {
            axis.ticks = vec![p_lo, p_hi];
        }
        axis
    } else {
        let pad = ((p_hi - p_lo) * 0.08).max(p_hi * 0.05);
        TickAxis::linear((p_lo - pad).max(0.0), p_hi + pad, 7, true)
    };
    let (y_lo, y_hi) = fit_range(a_lo, a_hi, 0.004, true);
    let y_axis = TickAxis::linear(y_lo, y_hi, 8, false);
    let y_dec = decimals_for(&y_axis.ticks.iter().map(|v| v * 100.0).collect::<Vec<_>>());

    let mut chart = ChartBuilder::on(&plot_area)
        .margin_top(8)
        .margin_left(12)
        .margin_right(24)
        .margin_bottom(12)
        .x_label_area_size(54)
        .y_label_area_size(90)
        .build_cartesian_2d(x_axis, y_axis)
        .map_err(plot_err)?;
    let x_fmt = |v: &f64| format_count(*v);
    let y_fmt = move |v: &f64| format!("{:.*}%", y_dec, v * 100.0);
    chart
        .configure_mesh()
        .x_desc(if log {
            "parameter count (log scale)"
        } else {
            "parameter count"
        })
        .y_desc("test accuracy")
        .axis_desc_style(text(AXIS_DESC_PX, &INK))
        .label_style(text(TICK_PX, &INK))
        .y_label_offset(center_nudge(TICK_PX as f64))
        .x_label_formatter(&x_fmt)
        .y_label_formatter(&y_fmt)
        .bold_line_style(GRID.stroke_width(1))
        .light_line_style(GRID_LIGHT.stroke_width(1))
        .axis_style(AXIS.stroke_width(1))
        .draw()
        .map_err(plot_err)?;

    for (_, t, p, a) in &points {
        let inactive = is_inactive(&t.status);
        let c = group_color[group_of(t).as_str()].mix(if inactive { 0.45 } else { 0.9 });
        chart
            .draw_series(std::iter::once(Circle::new((*p, *a), 7, c.filled())))
            .map_err(plot_err)?;
    }
    if let Some((_, _, p, a)) = best_point {
        chart
            .draw_series(std::iter::once(Circle::new(
                (*p, *a),
                12,
                ShapeStyle::from(&INK).stroke_width(2),
            )))
            .map_err(plot_err)?;
    }

    // Small labels next to the points, skipping any that would collide.
    if points.len() <= 40 {
        let (xr, yr) = plot_area_pixels(&chart);
        let mut taken: Vec<[i32; 4]> = points
            .iter()
            .map(|(_, _, p, a)| {
                let (x, y) = chart.backend_coord(&(*p, *a));
                [x - 8, y - 8, x + 8, y + 8]
            })
            .collect();
        let ls = text(SMALL_PX, &MUTED);
        for (i, t, p, a) in &points {
            let mut label = label_without(&labels[*i], t, color_param.as_deref());
            if is_best(sweep, t) {
                label = if label.is_empty() {
                    "best".into()
                } else {
                    format!("{label} (best)")
                };
            }
            if label.is_empty() {
                continue;
            }
            let (x, y) = chart.backend_coord(&(*p, *a));
            let lw = text_width(root, &label, &ls) as i32;
            let lh = SMALL_PX as i32 + 2;
            // keep clear of the marker (and of the ring around the best one)
            let g = if is_best(sweep, t) { 17 } else { 11 };
            let d = g * 3 / 4;
            let candidates = [
                (x + g, y - lh / 2),
                (x - g - lw, y - lh / 2),
                (x - lw / 2, y - g - lh),
                (x - lw / 2, y + g),
                (x + d, y - d - lh),
                (x + d, y + d),
                (x - d - lw, y - d - lh),
                (x - d - lw, y + d),
            ];
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
                draw_text_at(root, &label, &s, (*lx, ly + lh / 2))?;
            }
        }
    }
    draw_legend(&legend_area, &heading, &entries)?;
    Ok(Drawn::Chart)
}

fn plot_area_pixels<X: Ranged, Y: Ranged>(
    chart: &ChartContext<BitMapBackend, Cartesian2d<X, Y>>,
) -> (Range<i32>, Range<i32>) {
    chart.plotting_area().get_pixel_range()
}

fn overlaps(a: &[i32; 4], b: &[i32; 4]) -> bool {
    a[0] < b[2] && b[0] < a[2] && a[1] < b[3] && b[1] < a[3]
}

/// The trial label without the `name=value` part of the colour parameter.
fn label_without(label: &str, trial: &ChartTrial, param: Option<&str>) -> String {
    let Some(p) = param else {
        return label.to_string();
    };
    let Some(v) = trial.params.get(p) else {
        return label.to_string();
    };
    let part = format!("{}={}", param_alias(p), format_param(v));
    label
        .split(' ')
        .filter(|s| *s != part)
        .collect::<Vec<_>>()
        .join(" ")
}

// ---------------------------------------------------------------------------
// The sweep's objective, and the trials that have a value for it
// ---------------------------------------------------------------------------

/// Direction and display of the sweep's objective.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Goal {
    /// `val_accuracy`: higher is better.
    MaxAccuracy,
    /// `val_loss`: lower is better.
    MinLoss,
}

impl Goal {
    fn of(sweep: &ChartSweep) -> Goal {
        match sweep.objective.trim() {
            "val_loss" => Goal::MinLoss,
            _ => Goal::MaxAccuracy,
        }
    }

    /// True when `a` is a better objective value than `b`.
    fn better(self, a: f64, b: f64) -> bool {
        match self {
            Goal::MaxAccuracy => a > b,
            Goal::MinLoss => a < b,
        }
    }

    /// Axis and legend text, e.g. "best val. accuracy".
    fn name(self) -> &'static str {
        match self {
            Goal::MaxAccuracy => "val. accuracy",
            Goal::MinLoss => "val. loss",
        }
    }

    fn direction(self) -> &'static str {
        match self {
            Goal::MaxAccuracy => "higher is better",
            Goal::MinLoss => "lower is better",
        }
    }

    fn percent(self) -> bool {
        self == Goal::MaxAccuracy
    }

    fn fmt(self, v: f64) -> String {
        match self {
            Goal::MaxAccuracy => format!("{:.2}%", v * 100.0),
            Goal::MinLoss => format!("{v:.4}"),
        }
    }

    /// A trial's objective value: that of its best epoch (the trainer keeps
    /// and tests the best epoch's weights).
    fn trial_value(self, trial: &ChartTrial) -> Option<f64> {
        let values = trial
            .epochs
            .iter()
            .map(|e| match self {
                Goal::MaxAccuracy => e.val_accuracy,
                Goal::MinLoss => e.val_loss,
            })
            .filter(|v| v.is_finite());
        match self {
            Goal::MaxAccuracy => values.reduce(f64::max),
            Goal::MinLoss => values.reduce(f64::min),
        }
    }

    /// The objective axis: padded around the data, ticks in data units.
    fn axis(self, lo: f64, hi: f64) -> TickAxis {
        let (a, b) = match self {
            Goal::MaxAccuracy => fit_range(lo, hi, 0.004, true),
            Goal::MinLoss => fit_range(lo, hi, (hi.abs() * 0.05).max(1e-3), true),
        };
        TickAxis::linear(a, b, 8, false)
    }

    /// Tick label formatter for an objective axis with these ticks.
    fn tick_fmt(self, ticks: &[f64]) -> impl Fn(&f64) -> String {
        let percent = self.percent();
        let dec = if percent {
            exact_decimals(&ticks.iter().map(|v| v * 100.0).collect::<Vec<_>>(), 4)
        } else {
            exact_decimals(ticks, 6)
        };
        move |v: &f64| {
            if percent {
                format!("{:.*}%", dec, v * 100.0)
            } else {
                format!("{v:.dec$}")
            }
        }
    }
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

/// A finished trial (succeeded or pruned) with its objective value.
struct Scored<'s> {
    /// Position in `sweep.trials` (labels and colours are indexed by it).
    pos: usize,
    trial: &'s ChartTrial,
    value: f64,
    pruned: bool,
}

/// Succeeded and pruned trials that have an objective value, in trial order.
fn objective_trials(sweep: &ChartSweep, goal: Goal) -> Vec<Scored<'_>> {
    let mut v: Vec<Scored> = sweep
        .trials
        .iter()
        .enumerate()
        .filter(|(_, t)| matches!(t.status.as_str(), "succeeded" | "pruned"))
        .filter_map(|(pos, t)| {
            goal.trial_value(t).map(|value| Scored {
                pos,
                trial: t,
                value,
                pruned: t.status == "pruned",
            })
        })
        .collect();
    v.sort_by_key(|s| (s.trial.index, s.pos));
    v
}

/// The succeeded trial with the best objective value (ties: lower index).
fn best_scored<'a, 's>(scored: &'a [Scored<'s>], goal: Goal) -> Option<&'a Scored<'s>> {
    scored
        .iter()
        .filter(|s| !s.pruned)
        .fold(None, |best: Option<&Scored>, s| match best {
            Some(b) if !goal.better(s.value, b.value) => Some(b),
            _ => Some(s),
        })
}

/// Compact text of a number on a parameter axis ("0.25", "3", "1e-4", "12k").
fn fmt_num(v: f64) -> String {
    fmt_sig(v, 6)
}

/// `v` rounded to `sig` significant digits, as compact text.
fn fmt_sig(v: f64, sig: usize) -> String {
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
// Trials grouped by the value of one hyperparameter
// ---------------------------------------------------------------------------

/// More distinct numeric values than this are binned into ranges.
const MAX_GROUPS: usize = 10;
const BINS: usize = 6;

/// Trials sharing one value (or one value range) of a hyperparameter.
struct ValueGroup {
    label: String,
    /// Indices into the slice of trials that was grouped.
    members: Vec<usize>,
    /// Their objective values.
    values: Vec<f64>,
}

impl ValueGroup {
    fn mean(&self) -> f64 {
        self.values.iter().sum::<f64>() / self.values.len().max(1) as f64
    }

    /// Population standard deviation (0 for a single trial).
    fn std(&self) -> f64 {
        let m = self.mean();
        (self.values.iter().map(|v| (v - m).powi(2)).sum::<f64>() / self.values.len().max(1) as f64)
            .sqrt()
    }

    fn min_max(&self) -> (f64, f64) {
        finite_range(self.values.iter().copied()).unwrap_or((f64::NAN, f64::NAN))
    }
}

/// Groups `scored` by the value of `param`: one group per distinct value,
/// numbers in numeric order, missing values last as "n/a"; more than
/// [`MAX_GROUPS`] distinct numbers are binned into about [`BINS`] ranges.
fn param_groups(param: &str, scored: &[&Scored]) -> Vec<ValueGroup> {
    let numeric: Vec<Option<f64>> = scored
        .iter()
        .map(|s| s.trial.params.get(param).and_then(|v| v.as_f64()))
        .collect();
    let all_numeric = numeric.iter().all(|v| v.is_some());
    let mut distinct: Vec<f64> = numeric.iter().flatten().copied().collect();
    distinct.sort_by(f64::total_cmp);
    distinct.dedup();
    if all_numeric && distinct.len() > MAX_GROUPS {
        return binned_groups(scored, &numeric);
    }
    let mut by_key: BTreeMap<String, ValueGroup> = BTreeMap::new();
    for (i, s) in scored.iter().enumerate() {
        let key = s
            .trial
            .params
            .get(param)
            .map(format_param)
            .unwrap_or_else(|| "n/a".to_string());
        let g = by_key.entry(key.clone()).or_insert_with(|| ValueGroup {
            label: key,
            members: Vec::new(),
            values: Vec::new(),
        });
        g.members.push(i);
        g.values.push(s.value);
    }
    let mut groups: Vec<ValueGroup> = by_key.into_values().collect();
    let sort_key = |g: &ValueGroup| -> (u8, f64) {
        let first = &scored[g.members[0]];
        match first.trial.params.get(param) {
            None => (2, 0.0),
            Some(v) => match v.as_f64() {
                Some(x) => (0, x),
                None => (1, 0.0),
            },
        }
    };
    groups.sort_by(|a, b| {
        let (ka, kb) = (sort_key(a), sort_key(b));
        ka.0.cmp(&kb.0)
            .then(ka.1.total_cmp(&kb.1))
            .then(a.label.cmp(&b.label))
    });
    groups
}

fn binned_groups(scored: &[&Scored], numeric: &[Option<f64>]) -> Vec<ValueGroup> {
    // cut the sorted distinct values into runs holding about n/BINS trials each
    let mut order: Vec<usize> = (0..scored.len()).collect();
    order.sort_by(|a, b| {
        numeric[*a]
            .unwrap_or(0.0)
            .total_cmp(&numeric[*b].unwrap_or(0.0))
    });
    let target = scored.len().div_ceil(BINS).max(1);
    let mut groups: Vec<ValueGroup> = Vec::new();
    let mut bounds: Vec<(f64, f64)> = Vec::new();
    let mut start_new = true;
    for (k, &i) in order.iter().enumerate() {
        let v = numeric[i].unwrap_or(0.0);
        if start_new {
            groups.push(ValueGroup {
                label: String::new(),
                members: Vec::new(),
                values: Vec::new(),
            });
            bounds.push((v, v));
            start_new = false;
        }
        let g = groups.last_mut().expect("pushed above");
        g.members.push(i);
        g.values.push(scored[i].value);
        bounds.last_mut().expect("pushed above").1 = v;
        let next = order.get(k + 1).map(|j| numeric[*j].unwrap_or(0.0));
        if g.members.len() >= target && next.is_some_and(|n| n != v) {
            start_new = true;
        }
    }
    for (g, (lo, hi)) in groups.iter_mut().zip(bounds) {
        g.label = if lo == hi {
            fmt_num(lo)
        } else {
            format!("{}–{}", fmt_sig(lo, 2), fmt_sig(hi, 2))
        };
    }
    groups
}

/// Share of the variance of the values explained by their grouping: the
/// between-group sum of squares over the total sum of squares (one-way ANOVA
/// eta squared, 0..=1). None when there are fewer than two values or they
/// do not vary. Non-finite values are ignored.
pub fn eta_squared(groups: &[Vec<f64>]) -> Option<f64> {
    let groups: Vec<Vec<f64>> = groups
        .iter()
        .map(|g| g.iter().copied().filter(|v| v.is_finite()).collect())
        .filter(|g: &Vec<f64>| !g.is_empty())
        .collect();
    let n: usize = groups.iter().map(Vec::len).sum();
    if n < 2 {
        return None;
    }
    let grand = groups.iter().flatten().sum::<f64>() / n as f64;
    let total: f64 = groups.iter().flatten().map(|v| (v - grand).powi(2)).sum();
    let scale = grand.abs().max(1.0);
    if total <= 1e-24 * scale * scale * n as f64 {
        return None;
    }
    let between: f64 = groups
        .iter()
        .map(|g| {
            let m = g.iter().sum::<f64>() / g.len() as f64;
            g.len() as f64 * (m - grand).powi(2)
        })
        .sum();
    Some((between / total).clamp(0.0, 1.0))
}

/// Importance of each varied hyperparameter for the objective: eta squared
/// ([`eta_squared`]) of the objective values of the succeeded trials grouped
/// by the parameter's value, sorted from most to least important (ties: the
/// sweep's order). Empty when fewer than two succeeded trials have an
/// objective value or the values do not vary.
pub fn param_importance(sweep: &ChartSweep) -> Vec<(String, f64)> {
    let goal = Goal::of(sweep);
    let scored = objective_trials(sweep, goal);
    let done: Vec<&Scored> = scored.iter().filter(|s| !s.pruned).collect();
    let mut out: Vec<(String, f64)> = varied_present(sweep, &done)
        .into_iter()
        .filter_map(|p| {
            let groups: Vec<Vec<f64>> = param_groups(&p, &done)
                .into_iter()
                .map(|g| g.values)
                .collect();
            eta_squared(&groups).map(|e| (p, e))
        })
        .collect();
    out.sort_by(|a, b| b.1.total_cmp(&a.1));
    out
}

/// Varied hyperparameters that at least one of the trials has.
fn varied_present(sweep: &ChartSweep, scored: &[&Scored]) -> Vec<String> {
    sweep
        .varied
        .iter()
        .filter(|p| scored.iter().any(|s| s.trial.params.contains_key(*p)))
        .cloned()
        .collect()
}

/// Indices of the Pareto-optimal points among `(cost, value)` pairs, where a
/// lower cost and a higher value are better: no other point has a cost that
/// is lower or equal and a value that is higher or equal, one of them
/// strictly (identical points are all kept). Points with a non-finite
/// coordinate are ignored. Sorted by cost, then value, then index.
pub fn pareto_front(points: &[(f64, f64)]) -> Vec<usize> {
    let ok = |p: &(f64, f64)| p.0.is_finite() && p.1.is_finite();
    let mut front: Vec<usize> = (0..points.len())
        .filter(|&i| {
            let p = points[i];
            ok(&p)
                && !points
                    .iter()
                    .any(|q| ok(q) && q.0 <= p.0 && q.1 >= p.1 && (q.0 < p.0 || q.1 > p.1))
        })
        .collect();
    front.sort_by(|&a, &b| {
        points[a]
            .0
            .total_cmp(&points[b].0)
            .then(points[a].1.total_cmp(&points[b].1))
            .then(a.cmp(&b))
    });
    front
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

/// Small muted text at the bottom left of an area.
fn draw_footnote(area: &Area, note: &str) -> Result<()> {
    let (w, h) = area.dim_in_pixel();
    let s = anchored(text(SMALL_PX, &MUTED), HPos::Left, VPos::Bottom);
    let note = fit_text(area, note, &s, w.saturating_sub(32));
    draw_text_at(area, &note, &s, (16, h as i32 - 6))
}

// ---------------------------------------------------------------------------
// Optimization history: objective per trial in sweep order, best so far
// ---------------------------------------------------------------------------

const PRUNED: RGBColor = RGBColor(150, 150, 150);

fn draw_optimization_history(root: &Area, sweep: &ChartSweep, panel: &Panel) -> Result<Drawn> {
    let goal = Goal::of(sweep);
    let body = draw_header(root, &chart_title(sweep, panel), &subtitle(sweep))?;
    let scored = objective_trials(sweep, goal);
    let (Some((i_lo, i_hi)), Some((v_lo, v_hi))) = (
        finite_range(scored.iter().map(|s| s.trial.index as f64)),
        finite_range(scored.iter().map(|s| s.value)),
    ) else {
        return draw_no_data(
            &body,
            &format!("no trial has finished with a {} yet", goal.name()),
        );
    };
    let labels = unique_labels(sweep);

    // Best so far over succeeded trials, as a staircase.
    let mut stairs: Vec<(f64, f64)> = Vec::new();
    let mut best: Option<f64> = None;
    for s in scored.iter().filter(|s| !s.pruned) {
        let x = s.trial.index as f64;
        let b = match best {
            Some(b) if !goal.better(s.value, b) => b,
            _ => s.value,
        };
        if let Some(&(_, prev)) = stairs.last() {
            stairs.push((x, prev));
        }
        stairs.push((x, b));
        best = Some(b);
    }
    if let Some(&(x, b)) = stairs.last() {
        if x < i_hi {
            stairs.push((i_hi, b));
        }
    }
    let top = best_scored(&scored, goal);

    let n_done = scored.iter().filter(|s| !s.pruned).count();
    let n_pruned = scored.len() - n_done;
    let mut entries = vec![
        LegendEntry {
            label: format!("succeeded ({n_done})"),
            color: PALETTE[0].mix(0.85),
            swatch: Swatch::Dot,
            marker: false,
            emphasis: false,
        },
        LegendEntry {
            label: format!("pruned ({n_pruned}), value at stop"),
            color: PRUNED.mix(1.0),
            swatch: Swatch::Hollow,
            marker: false,
            emphasis: false,
        },
        LegendEntry {
            label: "best so far".into(),
            color: BAR_BEST.mix(1.0),
            swatch: Swatch::Line {
                dashed: false,
                width: 3,
            },
            marker: false,
            emphasis: false,
        },
    ];
    if let Some(t) = top {
        entries.push(LegendEntry {
            label: format!("best: #{} {}", t.trial.index, goal.fmt(t.value)),
            color: INK.mix(1.0),
            swatch: Swatch::Ring,
            marker: false,
            emphasis: true,
        });
        entries.push(LegendEntry {
            label: labels[t.pos].clone(),
            color: INK.mix(1.0),
            swatch: Swatch::Blank,
            marker: false,
            emphasis: false,
        });
    }
    let others = sweep.trials.len() - scored.len();
    if others > 0 {
        entries.push(LegendEntry {
            label: format!("{others} other trial(s) not shown"),
            color: MUTED.mix(1.0),
            swatch: Swatch::Blank,
            marker: false,
            emphasis: false,
        });
    }
    let heading = format!("objective: {}", goal.name());
    let legend_w = legend_width(root, &heading, &entries);
    let (bw, _) = body.dim_in_pixel();
    let (plot_area, legend_area) = body.split_horizontally(bw - legend_w);

    let x_pad = ((i_hi - i_lo) * 0.02).max(0.6);
    let x_axis = TickAxis::linear(i_lo - x_pad, i_hi + x_pad, 10, true);
    let y_axis = goal.axis(v_lo, v_hi);
    let y_fmt = goal.tick_fmt(&y_axis.ticks);
    let mut chart = ChartBuilder::on(&plot_area)
        .margin_top(8)
        .margin_left(12)
        .margin_right(24)
        .margin_bottom(12)
        .x_label_area_size(54)
        .y_label_area_size(90)
        .build_cartesian_2d(x_axis, y_axis)
        .map_err(plot_err)?;
    let x_fmt = |v: &f64| format!("{v:.0}");
    chart
        .configure_mesh()
        .x_desc("trial (sweep order)")
        .y_desc(format!("best-epoch {} ({})", goal.name(), goal.direction()))
        .axis_desc_style(text(AXIS_DESC_PX, &INK))
        .label_style(text(TICK_PX, &INK))
        .y_label_offset(center_nudge(TICK_PX as f64))
        .x_label_formatter(&x_fmt)
        .y_label_formatter(&y_fmt)
        .bold_line_style(GRID.stroke_width(1))
        .light_line_style(GRID_LIGHT.stroke_width(1))
        .axis_style(AXIS.stroke_width(1))
        .draw()
        .map_err(plot_err)?;

    let r = if scored.len() > 60 { 4 } else { 6 };
    for s in scored.iter().filter(|s| s.pruned) {
        chart
            .draw_series(std::iter::once(Circle::new(
                (s.trial.index as f64, s.value),
                r,
                ShapeStyle::from(&PRUNED).stroke_width(2),
            )))
            .map_err(plot_err)?;
    }
    chart
        .draw_series(scored.iter().filter(|s| !s.pruned).map(|s| {
            Circle::new(
                (s.trial.index as f64, s.value),
                r,
                PALETTE[0].mix(0.85).filled(),
            )
        }))
        .map_err(plot_err)?;
    if stairs.len() > 1 {
        chart
            .draw_series(LineSeries::new(
                stairs.clone(),
                BAR_BEST.mix(0.95).stroke_width(3),
            ))
            .map_err(plot_err)?;
    }
    if let Some(t) = top {
        chart
            .draw_series(std::iter::once(Circle::new(
                (t.trial.index as f64, t.value),
                r + 6,
                ShapeStyle::from(&INK).stroke_width(2),
            )))
            .map_err(plot_err)?;
    }
    draw_legend(&legend_area, &heading, &entries)?;
    Ok(Drawn::Chart)
}

// ---------------------------------------------------------------------------
// Parallel coordinates: one axis per varied parameter plus the objective
// ---------------------------------------------------------------------------

/// Objective colour ramp, worst (light amber) to best (deep indigo).
const RAMP: [(f64, RGBColor); 4] = [
    (0.0, RGBColor(250, 200, 80)),
    (0.35, RGBColor(240, 120, 60)),
    (0.65, RGBColor(190, 50, 110)),
    (1.0, RGBColor(40, 20, 130)),
];

/// Colour of `t` in 0..=1 (0 worst, 1 best) on [`RAMP`].
fn ramp(t: f64) -> RGBColor {
    let t = if t.is_finite() {
        t.clamp(0.0, 1.0)
    } else {
        0.0
    };
    for w in RAMP.windows(2) {
        let ((t0, c0), (t1, c1)) = (w[0], w[1]);
        if t <= t1 {
            let f = if t1 > t0 { (t - t0) / (t1 - t0) } else { 0.0 };
            let mix = |a: u8, b: u8| (a as f64 + (b as f64 - a as f64) * f).round() as u8;
            return RGBColor(mix(c0.0, c1.0), mix(c0.1, c1.1), mix(c0.2, c1.2));
        }
    }
    RAMP[RAMP.len() - 1].1
}

enum PcScale {
    /// Values in display order, spaced evenly.
    Categories(Vec<String>),
    Linear(f64, f64),
    Log(f64, f64),
}

struct PcAxis {
    title: String,
    scale: PcScale,
    /// Each trial's position on the axis, 0 (bottom) ..= 1 (top).
    pos: Vec<f64>,
    /// Tick positions (0..=1) and labels.
    ticks: Vec<(f64, String)>,
    /// Few distinct values: lines get a little vertical jitter.
    jitter: bool,
}

impl PcScale {
    fn frac(&self, v: f64) -> f64 {
        let (a, b, x) = match self {
            PcScale::Categories(_) => return 0.5,
            PcScale::Linear(a, b) => (*a, *b, v),
            PcScale::Log(a, b) => (a.log10(), b.log10(), v.max(f64::MIN_POSITIVE).log10()),
        };
        if b > a {
            ((x - a) / (b - a)).clamp(0.0, 1.0)
        } else {
            0.5
        }
    }
}

/// The axis of one hyperparameter over the trials in `scored`.
fn pc_param_axis(param: &str, scored: &[Scored]) -> PcAxis {
    let values: Vec<Option<&serde_json::Value>> =
        scored.iter().map(|s| s.trial.params.get(param)).collect();
    let nums: Option<Vec<f64>> = values.iter().map(|v| v.and_then(|v| v.as_f64())).collect();
    let title = param.to_string();
    if let Some(nums) = nums {
        let mut distinct = nums.clone();
        distinct.sort_by(f64::total_cmp);
        distinct.dedup();
        let (lo, hi) = (distinct[0], distinct[distinct.len() - 1]);
        let log = lo > 0.0 && hi / lo >= 100.0;
        let scale = if log {
            PcScale::Log(lo, hi)
        } else {
            PcScale::Linear(lo, hi)
        };
        let tick_values: Vec<f64> = if distinct.len() <= 8 {
            distinct.clone()
        } else if log {
            let mut t = TickAxis::log(lo, hi).ticks;
            if t.len() < 2 {
                t = vec![lo, hi];
            }
            t
        } else {
            TickAxis::linear(lo, hi, 6, false).ticks
        };
        let ticks = tick_values
            .iter()
            .map(|v| (scale.frac(*v), fmt_num(*v)))
            .collect();
        let pos = nums.iter().map(|v| scale.frac(*v)).collect();
        return PcAxis {
            title,
            scale,
            pos,
            ticks,
            jitter: distinct.len() <= 12,
        };
    }
    // categorical: numbers first in numeric order, then text, then missing
    let key = |v: Option<&serde_json::Value>| -> (u8, f64, String) {
        match v {
            None => (2, 0.0, "n/a".to_string()),
            Some(v) => match v.as_f64() {
                Some(x) => (0, x, format_param(v)),
                None => (1, 0.0, format_param(v)),
            },
        }
    };
    let mut keys: Vec<(u8, f64, String)> = values.iter().map(|v| key(*v)).collect();
    keys.sort_by(|a, b| a.0.cmp(&b.0).then(a.1.total_cmp(&b.1)).then(a.2.cmp(&b.2)));
    keys.dedup_by(|a, b| a.2 == b.2);
    let cats: Vec<String> = keys.into_iter().map(|k| k.2).collect();
    let k = cats.len();
    let frac_of = |i: usize| {
        if k <= 1 {
            0.5
        } else {
            i as f64 / (k - 1) as f64
        }
    };
    let pos = values
        .iter()
        .map(|v| {
            let label = key(*v).2;
            frac_of(cats.iter().position(|c| *c == label).unwrap_or(0))
        })
        .collect();
    let ticks = cats
        .iter()
        .enumerate()
        .map(|(i, c)| (frac_of(i), c.clone()))
        .collect();
    PcAxis {
        title,
        scale: PcScale::Categories(cats),
        pos,
        ticks,
        jitter: true,
    }
}

/// The labels with a prefix they all share (at least 4 characters, ending in
/// a separator such as '-') replaced by "…"; unchanged when there is none.
fn elide_common_prefix(labels: &[String]) -> Vec<String> {
    // numbers and ranges ("1000.5", "1e-5–3e-5") are never shortened
    let words = labels
        .iter()
        .all(|l| l.chars().next().is_some_and(char::is_alphabetic));
    if labels.len() < 2 || !words {
        return labels.to_vec();
    }
    let first: Vec<char> = labels[0].chars().collect();
    let mut n = first.len();
    for l in &labels[1..] {
        n = n.min(l.chars().zip(&first).take_while(|(a, b)| a == *b).count());
    }
    // keep at least one character of every label; cut only after a separator
    // so whole words stay ("resnet" / "resnet-wide" keep their names)
    let shortest = labels.iter().map(|l| l.chars().count()).min().unwrap_or(0);
    n = n.min(shortest.saturating_sub(1));
    let Some(sep) = first[..n]
        .iter()
        .rposition(|c| matches!(c, '-' | '_' | ' ' | '/' | ':'))
    else {
        return labels.to_vec();
    };
    let n = sep + 1;
    if n < 4 {
        return labels.to_vec();
    }
    labels
        .iter()
        .map(|l| format!("…{}", l.chars().skip(n).collect::<String>()))
        .collect()
}

/// Keeps tick labels at least `min_gap` px apart (positions in px, any order).
fn thin_ticks(ticks: &[(i32, String)], min_gap: i32) -> Vec<(i32, String)> {
    let mut sorted: Vec<(i32, String)> = ticks.to_vec();
    sorted.sort_by_key(|t| t.0);
    let n = sorted.len();
    if n <= 2 {
        return sorted;
    }
    // the smallest stride that spaces every shown label far enough apart
    let stride = (1..=n)
        .find(|s| {
            let shown: Vec<i32> = sorted.iter().step_by(*s).map(|t| t.0).collect();
            shown.windows(2).all(|w| w[1] - w[0] >= min_gap)
        })
        .unwrap_or(n);
    sorted.into_iter().step_by(stride).collect()
}

fn draw_parallel_coordinates(root: &Area, sweep: &ChartSweep, panel: &Panel) -> Result<Drawn> {
    let goal = Goal::of(sweep);
    let body = draw_header(root, &chart_title(sweep, panel), &subtitle(sweep))?;
    let scored = objective_trials(sweep, goal);
    if scored.is_empty() {
        return draw_no_data(
            &body,
            &format!("no trial has finished with a {} yet", goal.name()),
        );
    }
    let refs: Vec<&Scored> = scored.iter().collect();
    let params = varied_present(sweep, &refs);
    if params.is_empty() {
        return draw_no_data(&body, "the sweep varies no hyperparameter");
    }
    let mut axes: Vec<PcAxis> = params.iter().map(|p| pc_param_axis(p, &scored)).collect();

    // Objective axis and colours (from the succeeded trials when there are any).
    let (v_lo, v_hi) = finite_range(scored.iter().map(|s| s.value)).expect("not empty");
    let obj_scale = PcScale::Linear(v_lo, v_hi);
    let obj_ticks: Vec<f64> = if v_hi > v_lo {
        let mut t = TickAxis::linear(v_lo, v_hi, 6, false).ticks;
        t.retain(|v| *v >= v_lo && *v <= v_hi);
        t
    } else {
        vec![v_lo]
    };
    let obj_fmt = goal.tick_fmt(&obj_ticks);
    axes.push(PcAxis {
        title: goal.name().to_string(),
        pos: scored.iter().map(|s| obj_scale.frac(s.value)).collect(),
        ticks: if v_hi > v_lo {
            obj_ticks
                .iter()
                .map(|v| (obj_scale.frac(*v), obj_fmt(v)))
                .collect()
        } else {
            vec![(0.5, goal.fmt(v_lo))]
        },
        scale: obj_scale,
        jitter: false,
    });
    let done: Vec<f64> = scored
        .iter()
        .filter(|s| !s.pruned)
        .map(|s| s.value)
        .collect();
    let (c_lo, c_hi) = finite_range(done.iter().copied()).unwrap_or((v_lo, v_hi));
    let goodness = |v: f64| {
        let f = if c_hi > c_lo {
            (v - c_lo) / (c_hi - c_lo)
        } else {
            1.0
        };
        match goal {
            Goal::MaxAccuracy => f,
            Goal::MinLoss => 1.0 - f,
        }
    };
    let top = best_scored(&scored, goal).map(|s| s.pos);

    // Layout: axes spread over the plot, a colour bar and key on the right.
    let (bw, bh) = body.dim_in_pixel();
    let legend_w = 240u32.min(bw / 3);
    let (plot, legend) = body.split_horizontally(bw - legend_w);
    let (pw, ph) = plot.dim_in_pixel();
    let left = 100i32;
    let right = pw as i32 - 70;
    let top_y = 64i32;
    let bottom_y = ph as i32 - 44;
    let m = axes.len();
    let axis_x = |i: usize| -> i32 {
        if m == 1 {
            (left + right) / 2
        } else {
            left + ((right - left) as f64 * i as f64 / (m - 1) as f64).round() as i32
        }
    };
    let y_of = |f: f64| -> i32 { bottom_y - ((bottom_y - top_y) as f64 * f).round() as i32 };
    let spacing = if m > 1 {
        (right - left) / (m as i32 - 1)
    } else {
        right - left
    };

    // Jitter amplitude per axis: a fraction of the gap between its values.
    let jit_px: Vec<f64> = axes
        .iter()
        .map(|a| {
            if !a.jitter {
                return 0.0;
            }
            let mut fr: Vec<f64> = a.pos.clone();
            fr.sort_by(f64::total_cmp);
            fr.dedup();
            let gap = fr.windows(2).map(|w| w[1] - w[0]).fold(1.0f64, f64::min)
                * (bottom_y - top_y) as f64;
            (gap * 0.12).clamp(0.0, 9.0)
        })
        .collect();
    let polyline = |k: usize| -> Vec<(i32, i32)> {
        axes.iter()
            .enumerate()
            .map(|(i, a)| {
                let j = jit_px[i] * jitter(scored[k].trial.index as u64, i as u64);
                (axis_x(i), y_of(a.pos[k]) + j.round() as i32)
            })
            .collect()
    };

    // Lines: pruned (grey) first, then succeeded from worst to best, best last.
    let dense = scored.len() > 30;
    let mut order: Vec<usize> = (0..scored.len()).collect();
    order.sort_by(|&a, &b| {
        let (sa, sb) = (&scored[a], &scored[b]);
        sb.pruned
            .cmp(&sa.pruned)
            .then((Some(sa.pos) == top).cmp(&(Some(sb.pos) == top)))
            .then(goodness(sa.value).total_cmp(&goodness(sb.value)))
    });
    for &k in &order {
        let s = &scored[k];
        let pts = polyline(k);
        if s.pruned {
            let style = ShapeStyle {
                color: PRUNED.mix(if dense { 0.35 } else { 0.55 }),
                filled: false,
                stroke_width: 1,
            };
            plot.draw(&PathElement::new(pts, style)).map_err(plot_err)?;
        } else if Some(s.pos) == top {
            plot.draw(&PathElement::new(pts.clone(), WHITE.stroke_width(8)))
                .map_err(plot_err)?;
            plot.draw(&PathElement::new(pts, ramp(1.0).stroke_width(4)))
                .map_err(plot_err)?;
        } else {
            let style = ShapeStyle {
                color: ramp(goodness(s.value)).mix(if dense { 0.7 } else { 0.9 }),
                filled: false,
                stroke_width: if dense { 1 } else { 2 },
            };
            plot.draw(&PathElement::new(pts, style)).map_err(plot_err)?;
        }
    }

    // Axes, titles and tick labels on a white backing so lines do not hide them.
    let ts = anchored(bold(TICK_PX, &INK), HPos::Center, VPos::Bottom);
    let ls = anchored(text(SMALL_PX, &INK), HPos::Right, VPos::Center);
    for (i, a) in axes.iter().enumerate() {
        let x = axis_x(i);
        plot.draw(&PathElement::new(
            vec![(x, top_y), (x, bottom_y)],
            AXIS.stroke_width(2),
        ))
        .map_err(plot_err)?;
        let last = i + 1 == m;
        // the objective axis (last) is labelled on its right, where no lines run
        let title_room = if last {
            (pw as i32 - x) * 2 - 8
        } else {
            spacing - 12
        }
        .max(60) as u32;
        let title = fit_text(&plot, &a.title, &ts, title_room);
        draw_text_at(&plot, &title, &ts, (x, top_y - 28))?;
        let note = match &a.scale {
            _ if last => Some(goal.direction().to_string()),
            PcScale::Categories(c) if c.len() == 1 => Some("1 value".to_string()),
            PcScale::Categories(c) => Some(format!("{} values", c.len())),
            PcScale::Log(..) => Some("log scale".to_string()),
            PcScale::Linear(..) => None,
        };
        if let Some(note) = note {
            let ns = anchored(text(SMALL_PX, &MUTED), HPos::Center, VPos::Bottom);
            let note = fit_text(&plot, &note, &ns, title_room);
            draw_text_at(&plot, &note, &ns, (x, top_y - 12))?;
        }
        let px: Vec<(i32, String)> = a.ticks.iter().map(|(f, l)| (y_of(*f), l.clone())).collect();
        let label_room = if last {
            (pw as i32 - x - 14).max(30) as u32
        } else {
            (spacing - 24).clamp(40, 160) as u32
        };
        let (ls, dir) = if last {
            (anchored(text(SMALL_PX, &INK), HPos::Left, VPos::Center), 1)
        } else {
            (ls.clone(), -1)
        };
        for (y, label) in thin_ticks(&px, SMALL_PX as i32 + 4) {
            let label = fit_text(&plot, &label, &ls, label_room);
            let lw = text_width(&plot, &label, &ls) as i32;
            let (x0, x1) = if last {
                (x + 6, x + 9 + lw + 3)
            } else {
                (x - 9 - lw - 3, x - 6)
            };
            plot.draw(&Rectangle::new(
                [(x0, y - 9), (x1, y + 9)],
                WHITE.mix(0.85).filled(),
            ))
            .map_err(plot_err)?;
            plot.draw(&PathElement::new(
                vec![(x + 5 * dir, y), (x, y)],
                AXIS.stroke_width(1),
            ))
            .map_err(plot_err)?;
            draw_text_at(&plot, &label, &ls, (x + 9 * dir, y))?;
        }
    }
    draw_footnote(
        &plot,
        "one line per finished trial · categorical values evenly spaced, lines jittered \
         slightly where values repeat · numeric axes linear, log where values span ≥ 2 decades",
    )?;

    // Colour bar with labelled ends, then the line key.
    let hs = anchored(bold(LEGEND_PX, &INK), HPos::Left, VPos::Top);
    let heading = fit_text(
        &legend,
        &format!("colour: {}", goal.name()),
        &hs,
        legend_w - 24,
    );
    draw_text_at(&legend, &heading, &hs, (12, 20))?;
    let (bar_x, bar_w) = (16i32, 22i32);
    let bar_top = 56i32;
    let bar_h = ((bh as i32 - bar_top) / 2).clamp(80, 260);
    for dy in 0..bar_h {
        let f = 1.0 - dy as f64 / (bar_h - 1).max(1) as f64;
        legend
            .draw(&Rectangle::new(
                [(bar_x, bar_top + dy), (bar_x + bar_w, bar_top + dy + 1)],
                ramp(f).filled(),
            ))
            .map_err(plot_err)?;
    }
    legend
        .draw(&Rectangle::new(
            [(bar_x, bar_top), (bar_x + bar_w, bar_top + bar_h)],
            AXIS.stroke_width(1),
        ))
        .map_err(plot_err)?;
    let (best_v, worst_v) = match goal {
        Goal::MaxAccuracy => (c_hi, c_lo),
        Goal::MinLoss => (c_lo, c_hi),
    };
    let es = anchored(text(LEGEND_PX, &INK), HPos::Left, VPos::Center);
    let room = legend_w.saturating_sub((bar_x + bar_w + 20) as u32);
    let bar_labels = if c_hi > c_lo {
        vec![
            (bar_top, format!("best {}", goal.fmt(best_v))),
            (bar_top + bar_h / 2, goal.fmt((best_v + worst_v) / 2.0)),
            (bar_top + bar_h, format!("worst {}", goal.fmt(worst_v))),
        ]
    } else {
        vec![(bar_top, format!("all {}", goal.fmt(best_v)))]
    };
    for (y, label) in bar_labels {
        let label = fit_text(&legend, &label, &es, room);
        draw_text_at(&legend, &label, &es, (bar_x + bar_w + 8, y))?;
    }
    let n_pruned = scored.iter().filter(|s| s.pruned).count();
    let mut entries = Vec::new();
    if let Some(pos) = top {
        entries.push(LegendEntry {
            label: format!("best trial #{}", sweep.trials[pos].index),
            color: ramp(1.0).mix(1.0),
            swatch: Swatch::Line {
                dashed: false,
                width: 4,
            },
            marker: false,
            emphasis: true,
        });
        entries.push(LegendEntry {
            label: unique_labels(sweep)[pos].clone(),
            color: INK.mix(1.0),
            swatch: Swatch::Blank,
            marker: false,
            emphasis: false,
        });
    }
    entries.extend([LegendEntry {
        label: format!("succeeded ({})", scored.len() - n_pruned),
        color: ramp(0.5).mix(1.0),
        swatch: Swatch::Line {
            dashed: false,
            width: 2,
        },
        marker: false,
        emphasis: false,
    }]);
    if n_pruned > 0 {
        entries.push(LegendEntry {
            label: format!("pruned ({n_pruned}), grey"),
            color: PRUNED.mix(1.0),
            swatch: Swatch::Line {
                dashed: false,
                width: 2,
            },
            marker: false,
            emphasis: false,
        });
    }
    let (_, key_area) = legend.split_vertically((bar_top + bar_h + 24) as u32);
    draw_legend(&key_area, "lines", &entries)?;
    Ok(Drawn::Chart)
}

// ---------------------------------------------------------------------------
// Parameter effects: small multiples, mean objective per value with spread
// ---------------------------------------------------------------------------

fn draw_param_effects(root: &Area, sweep: &ChartSweep, panel: &Panel) -> Result<Drawn> {
    let goal = Goal::of(sweep);
    let body = draw_header(root, &chart_title(sweep, panel), &subtitle(sweep))?;
    let scored = objective_trials(sweep, goal);
    let done: Vec<&Scored> = scored.iter().filter(|s| !s.pruned).collect();
    if done.is_empty() {
        return draw_no_data(
            &body,
            &format!("no trial has succeeded with a {} yet", goal.name()),
        );
    }
    let params = varied_present(sweep, &done);
    if params.is_empty() {
        return draw_no_data(&body, "the sweep varies no hyperparameter");
    }
    let (v_lo, v_hi) = finite_range(done.iter().map(|s| s.value)).expect("not empty");
    let n = params.len();
    let cols = match n {
        1..=3 => n,
        4 => 2,
        _ => 3,
    };
    let rows = n.div_ceil(cols);
    let foot_h = 26u32;
    let grid_area = body.margin(0, foot_h, 8, 8);
    let cells = grid_area.split_evenly((rows, cols));
    for (param, cell) in params.iter().zip(cells.iter()) {
        let groups = param_groups(param, &done);
        draw_effect_cell(root, cell, param, &groups, &done, goal, (v_lo, v_hi))?;
    }
    draw_footnote(
        &body,
        &format!(
            "y: best-epoch {} of {} succeeded trials (pruned left out) · dot: mean · box: ±1 \
             std · whisker: min–max · grey: single trials · n: trials per value · orange: best",
            goal.name(),
            done.len()
        ),
    )?;
    Ok(Drawn::Chart)
}

fn draw_effect_cell(
    root: &Area,
    cell: &Area,
    param: &str,
    groups: &[ValueGroup],
    done: &[&Scored],
    goal: Goal,
    (v_lo, v_hi): (f64, f64),
) -> Result<()> {
    let k = groups.len().max(1);
    let means: Vec<f64> = groups.iter().map(ValueGroup::mean).collect();
    let best_g = (0..groups.len()).fold(None, |b: Option<usize>, i| match b {
        Some(j) if !goal.better(means[i], means[j]) => Some(j),
        _ => Some(i),
    });
    let worst_g = (0..groups.len()).fold(None, |b: Option<usize>, i| match b {
        Some(j) if !goal.better(means[j], means[i]) => Some(j),
        _ => Some(i),
    });

    // Cell title: the parameter and the answer ("best: gap").
    let (cw, _) = cell.dim_in_pixel();
    let title = match (best_g, worst_g) {
        (Some(b), Some(w)) if groups.len() > 1 => format!(
            "{param}: best {} ({}), worst {} ({})",
            groups[b].label,
            goal.fmt(means[b]),
            groups[w].label,
            goal.fmt(means[w])
        ),
        _ => format!("{param}: one value only"),
    };
    let ts = anchored(bold(LEGEND_PX, &INK), HPos::Center, VPos::Top);
    let title = fit_text(cell, &title, &ts, cw.saturating_sub(16));
    draw_text_at(cell, &title, &ts, (cw as i32 / 2, 6))?;

    // Value labels: one row when they fit, else staggered over two rows.
    let label_area_h = 62u32;
    let y_axis = goal.axis(v_lo, v_hi);
    let y_fmt = goal.tick_fmt(&y_axis.ticks);
    let x_axis = TickAxis {
        lo: -0.6,
        hi: k as f64 - 0.4,
        log: false,
        ticks: Vec::new(),
        light: Vec::new(),
    };
    let mut chart = ChartBuilder::on(cell)
        .margin_top(30)
        .margin_left(6)
        .margin_right(14)
        .margin_bottom(4)
        .x_label_area_size(label_area_h)
        .y_label_area_size(72)
        .build_cartesian_2d(x_axis, y_axis)
        .map_err(plot_err)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(0)
        .y_labels(6)
        .axis_desc_style(text(SMALL_PX, &INK))
        .label_style(text(SMALL_PX, &INK))
        .y_label_offset(center_nudge(SMALL_PX as f64))
        .y_label_formatter(&y_fmt)
        .bold_line_style(GRID.stroke_width(1))
        .light_line_style(GRID_LIGHT.stroke_width(1))
        .axis_style(AXIS.stroke_width(1))
        .draw()
        .map_err(plot_err)?;

    let slot = {
        let a = chart.backend_coord(&(0.0, v_lo));
        let b = chart.backend_coord(&(1.0, v_lo));
        (b.0 - a.0).max(1)
    };
    let box_w = 0.18f64.min(26.0 / slot as f64);
    for (i, g) in groups.iter().enumerate() {
        let x = i as f64;
        let color = if Some(i) == best_g && groups.len() > 1 {
            BAR_BEST
        } else {
            BAR
        };
        // single trials, jittered sideways
        chart
            .draw_series(g.members.iter().zip(&g.values).map(|(&m, &v)| {
                let dx = 0.3 * jitter(done[m].trial.index as u64, 7) * (box_w / 0.18);
                Circle::new((x + dx, v), 2, MUTED.mix(0.4).filled())
            }))
            .map_err(plot_err)?;
        let (lo, hi) = g.min_max();
        let (mean, sd) = (g.mean(), g.std());
        // min-max whisker with caps
        let whisker = AXIS.stroke_width(1);
        chart
            .draw_series(std::iter::once(PathElement::new(
                vec![(x, lo), (x, hi)],
                whisker,
            )))
            .map_err(plot_err)?;
        for y in [lo, hi] {
            chart
                .draw_series(std::iter::once(PathElement::new(
                    vec![(x - box_w * 0.6, y), (x + box_w * 0.6, y)],
                    whisker,
                )))
                .map_err(plot_err)?;
        }
        // ±1 std box
        if sd > 0.0 {
            let (b0, b1) = ((mean - sd).max(lo), (mean + sd).min(hi));
            chart
                .draw_series(std::iter::once(Rectangle::new(
                    [(x - box_w, b0), (x + box_w, b1)],
                    color.mix(0.22).filled(),
                )))
                .map_err(plot_err)?;
            chart
                .draw_series(std::iter::once(Rectangle::new(
                    [(x - box_w, b0), (x + box_w, b1)],
                    color.mix(0.8).stroke_width(1),
                )))
                .map_err(plot_err)?;
        }
        chart
            .draw_series(std::iter::once(Circle::new((x, mean), 6, color.filled())))
            .map_err(plot_err)?;
        // mean value beside the dot when there is room
        let (px, py) = chart.backend_coord(&(x, mean));
        let ms = anchored(text(SMALL_PX, &INK), HPos::Left, VPos::Center);
        let mtext = goal.fmt(mean);
        let mw = text_width(root, &mtext, &ms) as i32;
        let off = (box_w * slot as f64) as i32 + 5;
        if off + mw + 4 < slot / 2 {
            root.draw(&Rectangle::new(
                [(px + off - 2, py - 8), (px + off + mw + 2, py + 9)],
                WHITE.mix(0.8).filled(),
            ))
            .map_err(plot_err)?;
            draw_text_at(root, &mtext, &ms, (px + off, py))?;
        }
    }

    // Value labels and n under the axis; a prefix every label shares
    // ("architecture-variant-01", "-02", …) is elided so the rest shows.
    let shown = elide_common_prefix(&groups.iter().map(|g| g.label.clone()).collect::<Vec<_>>());
    let ls = anchored(text(SMALL_PX, &INK), HPos::Center, VPos::Top);
    let ns = anchored(text(SMALL_PX - 1, &MUTED), HPos::Center, VPos::Top);
    let widest = shown
        .iter()
        .map(|l| text_width(root, l, &ls) as i32)
        .max()
        .unwrap_or(0);
    let stagger = widest + 6 > slot;
    let room = if stagger { 2 * slot - 8 } else { slot - 6 }.max(20) as u32;
    let y_axis_px = plot_area_pixels(&chart).1.end;
    for (i, g) in groups.iter().enumerate() {
        let (px, _) = chart.backend_coord(&(i as f64, v_lo));
        let row = if stagger { (i % 2) as i32 } else { 0 };
        let y = y_axis_px + 6 + row * 16;
        let label = fit_text(root, &shown[i], &ls, room);
        let s = if Some(i) == best_g && groups.len() > 1 {
            anchored(bold(SMALL_PX, &INK), HPos::Center, VPos::Top)
        } else {
            ls.clone()
        };
        if stagger && row == 1 {
            root.draw(&PathElement::new(
                vec![(px, y_axis_px + 1), (px, y - 2)],
                GRID.stroke_width(1),
            ))
            .map_err(plot_err)?;
        }
        draw_text_at(root, &label, &s, (px, y))?;
        let n_y = y_axis_px + 6 + if stagger { 34 } else { 18 };
        let nt = format!("n={}", g.values.len());
        if text_width(root, &nt, &ns) as i32 <= slot - 2 || !stagger {
            draw_text_at(root, &nt, &ns, (px, n_y))?;
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Pareto front: test accuracy against parameter count
// ---------------------------------------------------------------------------

const FRONT: RGBColor = RGBColor(214, 96, 20);
const OTHER: RGBColor = RGBColor(120, 150, 185);

fn draw_pareto(root: &Area, sweep: &ChartSweep, panel: &Panel) -> Result<Drawn> {
    let body = draw_header(root, &chart_title(sweep, panel), &subtitle(sweep))?;
    let labels = unique_labels(sweep);
    let points = size_accuracy_points(sweep);
    let (Some((p_lo, p_hi)), Some((a_lo, a_hi))) = (
        finite_range(points.iter().map(|p| p.2)),
        finite_range(points.iter().map(|p| p.3)),
    ) else {
        return draw_no_data(
            &body,
            "no trial has both a test accuracy and a parameter count yet",
        );
    };
    let front = pareto_front(&points.iter().map(|p| (p.2, p.3)).collect::<Vec<_>>());
    let on_front: HashSet<usize> = front.iter().copied().collect();

    // Legend: the key, then the front trials numbered as in the plot.
    let mut entries = vec![
        LegendEntry {
            label: format!("Pareto-optimal ({})", front.len()),
            color: FRONT.mix(1.0),
            swatch: Swatch::Line {
                dashed: false,
                width: 2,
            },
            marker: true,
            emphasis: false,
        },
        LegendEntry {
            label: format!("dominated ({})", points.len() - front.len()),
            color: OTHER.mix(0.8),
            swatch: Swatch::Dot,
            marker: false,
            emphasis: false,
        },
    ];
    if points.iter().any(|p| is_inactive(&p.1.status)) {
        entries.push(LegendEntry {
            label: "hollow: pruned / stopped".into(),
            color: OTHER.mix(1.0),
            swatch: Swatch::Hollow,
            marker: false,
            emphasis: false,
        });
    }
    if points.iter().any(|p| is_best(sweep, p.1)) {
        entries.push(LegendEntry {
            label: "best test accuracy".into(),
            color: INK.mix(1.0),
            swatch: Swatch::Ring,
            marker: false,
            emphasis: true,
        });
    }
    entries.push(LegendEntry {
        label: "front, fewest parameters first:".into(),
        color: INK.mix(1.0),
        swatch: Swatch::Blank,
        marker: false,
        emphasis: true,
    });
    for (rank, &k) in front.iter().enumerate() {
        let (i, _, p, a) = points[k];
        entries.push(LegendEntry {
            label: format!(
                "{}. {:.2}% · {} · {}",
                rank + 1,
                a * 100.0,
                format_count(p),
                labels[i]
            ),
            color: INK.mix(1.0),
            swatch: Swatch::Blank,
            marker: false,
            emphasis: false,
        });
    }
    let heading = "higher accuracy, fewer parameters";
    let legend_w = legend_width(root, heading, &entries).max(300);
    let (bw, _) = body.dim_in_pixel();
    let (plot_area, legend_area) = body.split_horizontally(bw - legend_w);

    let (x_lo, x_hi) = (p_lo / 1.35, p_hi * 1.35);
    let mut x_axis = TickAxis::log(x_lo, x_hi);
    if x_axis.ticks.len() < 2 {
        x_axis.ticks = vec![p_lo, p_hi];
    }
    let (y_lo, y_hi) = fit_range(a_lo, a_hi, 0.004, true);
    let y_axis = TickAxis::linear(y_lo, y_hi, 8, false);
    let y_fmt = Goal::MaxAccuracy.tick_fmt(&y_axis.ticks);
    let mut chart = ChartBuilder::on(&plot_area)
        .margin_top(8)
        .margin_left(12)
        .margin_right(24)
        .margin_bottom(12)
        .x_label_area_size(54)
        .y_label_area_size(90)
        .build_cartesian_2d(x_axis, y_axis)
        .map_err(plot_err)?;
    let x_fmt = |v: &f64| format_count(*v);
    chart
        .configure_mesh()
        .x_desc("parameter count (log scale)")
        .y_desc("test accuracy")
        .axis_desc_style(text(AXIS_DESC_PX, &INK))
        .label_style(text(TICK_PX, &INK))
        .y_label_offset(center_nudge(TICK_PX as f64))
        .x_label_formatter(&x_fmt)
        .y_label_formatter(&y_fmt)
        .bold_line_style(GRID.stroke_width(1))
        .light_line_style(GRID_LIGHT.stroke_width(1))
        .axis_style(AXIS.stroke_width(1))
        .draw()
        .map_err(plot_err)?;

    // Dominated trials first, faded.
    for (k, (_, t, p, a)) in points.iter().enumerate() {
        if on_front.contains(&k) {
            continue;
        }
        let style = if is_inactive(&t.status) {
            OTHER.mix(0.9).stroke_width(2)
        } else {
            OTHER.mix(0.6).filled()
        };
        chart
            .draw_series(std::iter::once(Circle::new((*p, *a), 5, style)))
            .map_err(plot_err)?;
    }
    // The front as a staircase: for a budget between two front points the
    // best reachable accuracy is that of the cheaper one.
    let mut stairs: Vec<(f64, f64)> = Vec::new();
    for &k in &front {
        let (_, _, p, a) = points[k];
        if let Some(&(_, prev)) = stairs.last() {
            stairs.push((p, prev));
        }
        stairs.push((p, a));
    }
    if let Some(&(p, a)) = stairs.last() {
        stairs.push((p.max(x_hi / 1.1), a));
    }
    chart
        .draw_series(LineSeries::new(stairs, FRONT.stroke_width(2)))
        .map_err(plot_err)?;
    for &k in &front {
        let (_, t, p, a) = points[k];
        let style = if is_inactive(&t.status) {
            FRONT.stroke_width(3)
        } else {
            FRONT.filled()
        };
        chart
            .draw_series(std::iter::once(Circle::new((p, a), 7, style)))
            .map_err(plot_err)?;
    }
    if let Some((_, _, p, a)) = points.iter().find(|p| is_best(sweep, p.1)) {
        chart
            .draw_series(std::iter::once(Circle::new(
                (*p, *a),
                12,
                ShapeStyle::from(&INK).stroke_width(2),
            )))
            .map_err(plot_err)?;
    }

    // Number the front points (as listed in the legend), avoiding collisions.
    let (xr, yr) = plot_area_pixels(&chart);
    let mut taken: Vec<[i32; 4]> = points
        .iter()
        .map(|(_, _, p, a)| {
            let (x, y) = chart.backend_coord(&(*p, *a));
            [x - 6, y - 6, x + 6, y + 6]
        })
        .collect();
    let ls = bold(LEGEND_PX, &FRONT);
    for (rank, &k) in front.iter().enumerate() {
        let (_, t, p, a) = points[k];
        let label = (rank + 1).to_string();
        let (x, y) = chart.backend_coord(&(p, a));
        let lw = text_width(root, &label, &ls) as i32;
        let lh = LEGEND_PX as i32 + 2;
        let g = if is_best(sweep, t) { 15 } else { 10 };
        let candidates = [
            (x - lw / 2, y - g - lh),
            (x - g - lw, y - lh / 2),
            (x + g, y - lh / 2),
            (x - lw / 2, y + g),
            (x - g - lw, y - g - lh),
            (x + g, y - g - lh),
            (x - g - lw, y + g),
            (x + g, y + g),
        ];
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
            draw_text_at(root, &label, &s, (*lx, ly + lh / 2))?;
        }
    }
    draw_legend(&legend_area, heading, &entries)?;
    Ok(Drawn::Chart)
}

// ---------------------------------------------------------------------------
// Hyperparameter importance (eta squared), as sorted bars
// ---------------------------------------------------------------------------

fn draw_param_importance(root: &Area, sweep: &ChartSweep, panel: &Panel) -> Result<Drawn> {
    let goal = Goal::of(sweep);
    let body = draw_header(root, &chart_title(sweep, panel), &subtitle(sweep))?;
    let scored = objective_trials(sweep, goal);
    let done: Vec<&Scored> = scored.iter().filter(|s| !s.pruned).collect();
    if sweep.varied.is_empty() {
        return draw_no_data(&body, "the sweep varies no hyperparameter");
    }
    let importance = param_importance(sweep);
    if importance.is_empty() {
        return draw_no_data(
            &body,
            &format!(
                "needs at least two succeeded trials whose {} differs",
                goal.name()
            ),
        );
    }
    let bar_labels: Vec<String> = importance
        .iter()
        .map(|(p, _)| {
            let k = param_groups(p, &done).len();
            format!("{p} ({k} value{})", if k == 1 { "" } else { "s" })
        })
        .collect();
    let (bw, _) = body.dim_in_pixel();
    let label_w = bar_labels
        .iter()
        .map(|l| text_width(root, l, &text(TICK_PX, &INK)))
        .max()
        .unwrap_or(0)
        .clamp(60, (bw as f64 * 0.4) as u32);
    let n = importance.len();
    let top = importance[0].1;
    let x_hi = ((top * 1.25).max(0.05) / 0.05).ceil() * 0.05;
    let x_axis = TickAxis::linear(0.0, x_hi.min(1.15), 8, false);
    let x_fmt = Goal::MaxAccuracy.tick_fmt(&x_axis.ticks);
    let foot_h = 30;
    let chart_area = body.margin(0, foot_h, 0, 0);
    let mut chart = ChartBuilder::on(&chart_area)
        .margin_top(10)
        .margin_left(16)
        .margin_right(32)
        .margin_bottom(10)
        .x_label_area_size(60)
        .y_label_area_size(label_w + 20)
        .build_cartesian_2d(x_axis, 0f64..n as f64)
        .map_err(plot_err)?;
    chart
        .configure_mesh()
        .disable_y_mesh()
        .y_labels(0)
        .x_desc(format!(
            "share of the {} variance explained (one-way ANOVA η²)",
            goal.name()
        ))
        .axis_desc_style(text(AXIS_DESC_PX, &INK))
        .label_style(text(TICK_PX, &INK))
        .x_label_formatter(&x_fmt)
        .bold_line_style(GRID.stroke_width(1))
        .light_line_style(GRID_LIGHT.stroke_width(1))
        .axis_style(AXIS.stroke_width(1))
        .draw()
        .map_err(plot_err)?;
    let row_px = {
        let a = chart.backend_coord(&(0.0, 0.0));
        let b = chart.backend_coord(&(0.0, 1.0));
        (a.1 - b.1).abs().max(1)
    };
    let thickness = 0.7f64.min(44.0 / row_px as f64);
    for (rank, (_, eta)) in importance.iter().enumerate() {
        let yc = (n - 1 - rank) as f64 + 0.5;
        let color = if rank == 0 { BAR_BEST } else { BAR };
        chart
            .draw_series(std::iter::once(Rectangle::new(
                [(0.0, yc - thickness / 2.0), (*eta, yc + thickness / 2.0)],
                color.filled(),
            )))
            .map_err(plot_err)?;
        let end = chart.backend_coord(&(*eta, yc));
        let vs = anchored(bold(15, &INK), HPos::Left, VPos::Center);
        draw_text_at(
            root,
            &format!("{:.1}%", eta * 100.0),
            &vs,
            (end.0 + 6, end.1),
        )?;
        let start = chart.backend_coord(&(0.0, yc));
        let ls = anchored(text(TICK_PX, &INK), HPos::Right, VPos::Center);
        let label = fit_text(root, &bar_labels[rank], &ls, label_w);
        draw_text_at(root, &label, &ls, (start.0 - 10, start.1))?;
    }
    draw_footnote(
        &body,
        &format!(
            "method: one-way ANOVA η² = between-value-group / total variance of the {} over \
             {} succeeded trials; each parameter on its own, so shares need not sum to 100%",
            goal.name(),
            done.len()
        ),
    )?;
    Ok(Drawn::Chart)
}

// ---------------------------------------------------------------------------
// Output
// ---------------------------------------------------------------------------

/// Writes through a temporary file and a rename, so a reader never sees a
/// half-written PNG.
fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let dir = path.parent().unwrap_or_else(|| Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(
        ".{name}.{}.{}.tmp",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::write(&tmp, bytes).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        anyhow!("cannot write {}: {e}", path.display())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn trial(index: u32, params: serde_json::Value) -> ChartTrial {
        ChartTrial {
            trial_id: format!("t-{index:08x}"),
            index,
            status: "succeeded".into(),
            params: params.as_object().cloned().unwrap_or_default(),
            epochs: vec![],
            test_accuracy: None,
            parameter_count: None,
        }
    }

    fn varied(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn label_uses_varied_params_in_order_with_aliases() {
        let t = trial(
            3,
            json!({"head": "gap", "kernelSize": 3, "dropout": 0.5, "epochs": 10}),
        );
        let l = trial_label(&t, &varied(&["kernelSize", "dropout", "head"]));
        assert_eq!(l, "k=3 drop=0.5 head=gap");
    }

    #[test]
    fn label_aliases_and_unknown_names() {
        let t = trial(
            0,
            json!({"baseFilters": 32, "learningRate": 0.001, "batchSize": 64, "optimizer": "adam"}),
        );
        let l = trial_label(
            &t,
            &varied(&["baseFilters", "learningRate", "batchSize", "optimizer"]),
        );
        assert_eq!(l, "filters=32 lr=0.001 bs=64 optimizer=adam");
        let t = trial(0, json!({"learningRate": 0.0003}));
        assert_eq!(trial_label(&t, &varied(&["learningRate"])), "lr=3e-4");
    }

    #[test]
    fn label_falls_back_to_index() {
        let t = trial(7, json!({"kernelSize": 5}));
        assert_eq!(trial_label(&t, &[]), "#7");
        // varied names the trial does not have
        assert_eq!(trial_label(&t, &varied(&["dropout"])), "#7");
    }

    #[test]
    fn duplicate_labels_are_disambiguated() {
        let sweep = ChartSweep {
            sweep_id: "s".into(),
            name: "n".into(),
            dataset: "d".into(),
            varied: varied(&["head"]),
            trials: vec![
                trial(0, json!({"head": "gap"})),
                trial(1, json!({"head": "gap"})),
                trial(2, json!({"head": "fc"})),
            ],
            best_trial_id: None,
            ..Default::default()
        };
        assert_eq!(
            unique_labels(&sweep),
            vec!["head=gap #0", "head=gap #1", "head=fc"]
        );
    }

    #[test]
    fn load_missing_file_names_it() {
        let dir = tempfile::tempdir().unwrap();
        let err = Dashboard::load(dir.path(), "nope").unwrap_err();
        let msg = format!("{err:#}");
        assert!(msg.contains("nope.toml"), "{msg}");
        assert!(msg.contains("not found"), "{msg}");
    }

    #[test]
    fn load_malformed_file_names_it() {
        let dir = tempfile::tempdir().unwrap();
        let cases = [
            ("syntax", "[[panels]\nkind = "),
            (
                "kind",
                "[[panels]]\nkind = \"pie_chart\"\nfile = \"x.png\"\n",
            ),
            ("missing", "[[panels]]\nkind = \"loss_curves\"\n"),
            (
                "typo",
                "[[panels]]\nkind = \"loss_curves\"\nfile = \"a.png\"\nwidht = 3\n",
            ),
            (
                "path",
                "[[panels]]\nkind = \"loss_curves\"\nfile = \"../a.png\"\n",
            ),
            (
                "ext",
                "[[panels]]\nkind = \"loss_curves\"\nfile = \"a.svg\"\n",
            ),
            (
                "size",
                "[[panels]]\nkind = \"loss_curves\"\nfile = \"a.png\"\nwidth = 5\n",
            ),
            ("empty", "title = \"nothing\"\n"),
            (
                "dup",
                "[[panels]]\nkind = \"loss_curves\"\nfile = \"a.png\"\n\
                 [[panels]]\nkind = \"learning_curves\"\nfile = \"a.png\"\n",
            ),
        ];
        for (name, body) in cases {
            std::fs::write(dir.path().join(format!("{name}.toml")), body).unwrap();
            let err = Dashboard::load(dir.path(), name).unwrap_err();
            let msg = format!("{err:#}");
            assert!(msg.contains(&format!("{name}.toml")), "{name}: {msg}");
            assert!(msg.contains("malformed"), "{name}: {msg}");
        }
    }

    #[test]
    fn load_rejects_path_like_names() {
        let dir = tempfile::tempdir().unwrap();
        for name in ["", "../etc/passwd", "a/b", "a.b"] {
            assert!(Dashboard::load(dir.path(), name).is_err(), "{name:?}");
        }
    }

    #[test]
    fn load_valid_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("mine.toml"),
            "title = \"Mine\"\n[[panels]]\nkind = \"test_accuracy_bars\"\nfile = \"bars.png\"\n\
             height = 900\n",
        )
        .unwrap();
        let d = Dashboard::load(dir.path(), "mine").unwrap();
        assert_eq!(d.title.as_deref(), Some("Mine"));
        assert_eq!(d.panels.len(), 1);
        assert_eq!(d.panels[0].kind, PanelKind::TestAccuracyBars);
        assert_eq!(d.panels[0].size(), (DEFAULT_WIDTH, 900));
    }

    #[test]
    fn builtin_default_has_its_panels() {
        let d = Dashboard::builtin_default();
        let files: Vec<&str> = d.panels.iter().map(|p| p.file.as_str()).collect();
        assert_eq!(
            files,
            [
                "learning_curves.png",
                "loss_curves.png",
                "test_accuracy.png",
                "accuracy_vs_parameters.png",
                "optimization_history.png",
                "param_effects.png",
            ]
        );
    }

    #[test]
    fn renders_small_and_empty_sweeps() {
        let mut t = trial(0, json!({"head": "gap"}));
        t.epochs = vec![ChartEpoch {
            epoch: 1,
            train_loss: 0.3,
            train_accuracy: 0.9,
            val_loss: f64::NAN,
            val_accuracy: 0.95,
        }];
        t.test_accuracy = Some(0.94);
        t.parameter_count = Some(12_345);
        let mut sweep = ChartSweep {
            sweep_id: "s-1".into(),
            name: "tiny".into(),
            dataset: "mnist".into(),
            varied: varied(&["head"]),
            trials: vec![t],
            best_trial_id: Some("t-00000000".into()),
            ..Default::default()
        };
        let dir = tempfile::tempdir().unwrap();
        let d = Dashboard::builtin_default();
        let paths = render_dashboard(&sweep, &d, &dir.path().join("one")).unwrap();
        assert_eq!(paths.len(), 6);
        for p in &paths {
            let bytes = std::fs::read(p).unwrap();
            assert!(bytes.starts_with(b"\x89PNG"), "{}", p.display());
        }
        sweep.trials.clear();
        let paths = render_dashboard(&sweep, &d, &dir.path().join("empty")).unwrap();
        assert!(paths.iter().all(|p| p.exists()));
    }

    // ---- dashboards of a realistic sweep -------------------------------

    /// Tiny deterministic generator for the synthetic sweep.
    struct Lcg(u64);

    impl Lcg {
        fn next(&mut self) -> f64 {
            self.0 = self
                .0
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (self.0 >> 11) as f64 / (1u64 << 53) as f64
        }
    }

    /// 100 trials over kernelSize × dropout × head × learningRate (numeric,
    /// numeric, categorical, numeric spanning two decades); some pruned,
    /// failed, cancelled, running and queued; 1..=5 epochs each.
    fn synthetic_sweep(n: u32) -> ChartSweep {
        let mut rng = Lcg(42);
        let kernels = [3, 5, 7];
        let dropouts = [0.0, 0.25, 0.5];
        let heads = ["gap", "dense"];
        let lrs = [1e-4f64, 3e-4, 1e-3, 3e-3, 1e-2];
        let mut trials = Vec::new();
        for i in 0..n {
            let k = kernels[(rng.next() * 3.0) as usize % 3];
            let d = dropouts[(rng.next() * 3.0) as usize % 3];
            let h = heads[(rng.next() * 2.0) as usize % 2];
            let lr = lrs[(rng.next() * 5.0) as usize % 5];
            let mut t = trial(
                i,
                json!({"kernelSize": k, "dropout": d, "head": h, "learningRate": lr,
                       "epochs": 5, "baseFilters": 32}),
            );
            let status = match i {
                _ if i + 1 == n => "queued",
                _ if i + 2 == n => "running",
                _ if i % 13 == 5 => "failed",
                _ if i % 29 == 11 => "cancelled",
                _ if i % 6 == 3 => "pruned",
                _ => "succeeded",
            };
            t.status = status.into();
            let target =
                0.975 + if h == "gap" { 0.006 } else { 0.0 } + if d == 0.25 { 0.004 } else { 0.0 }
                    - (lr.log10() + 3.0).abs() * 0.006
                    - if k == 7 { 0.002 } else { 0.0 }
                    + (rng.next() - 0.5) * 0.004;
            let epochs = match status {
                "queued" => 0,
                "pruned" | "failed" | "running" => 1 + (rng.next() * 2.0) as u32,
                _ => 3 + (rng.next() * 3.0) as u32,
            };
            for e in 1..=epochs {
                let f = 1.0 - 0.5f64.powi(e as i32);
                let acc = target * (0.9 + 0.1 * f) + (rng.next() - 0.5) * 0.002;
                t.epochs.push(ChartEpoch {
                    epoch: e,
                    train_loss: 0.4 * (1.0 - f) + 0.03,
                    train_accuracy: acc + 0.005,
                    val_loss: (1.0 - acc) * 2.0,
                    val_accuracy: acc,
                });
            }
            if status == "succeeded" {
                t.test_accuracy = Some(target + (rng.next() - 0.5) * 0.003);
            }
            if epochs > 0 {
                let head_params = if h == "dense" { 400_000 } else { 650 };
                t.parameter_count = Some(head_params + 9_000 * (k as u64 * k as u64) / 9);
            }
            trials.push(t);
        }
        let mut sweep = ChartSweep {
            sweep_id: "s-synthetic".into(),
            name: "synthetic".into(),
            dataset: "mnist".into(),
            varied: varied(&["kernelSize", "dropout", "head", "learningRate"]),
            trials,
            best_trial_id: None,
            objective: "val_accuracy".into(),
        };
        sweep.best_trial_id = scored_trials(&sweep).first().map(|b| b.1.trial_id.clone());
        sweep
    }

    fn dashboards_dir() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("dashboards")
    }

    /// Renders every panel of `board`; checks each PNG decodes at the size
    /// the panel asks for. Returns what each panel showed. With
    /// CNND_CHART_TEST_OUT set, the PNGs are also kept under that folder.
    fn render_and_check(sweep: &ChartSweep, board: &Dashboard, tag: &str) -> Vec<Drawn> {
        let dir = tempfile::tempdir().unwrap();
        let paths = render_dashboard(sweep, board, dir.path()).unwrap();
        assert_eq!(paths.len(), board.panels.len());
        let keep = std::env::var_os("CNND_CHART_TEST_OUT").map(|d| PathBuf::from(d).join(tag));
        let mut drawn = Vec::new();
        for (panel, path) in board.panels.iter().zip(&paths) {
            let bytes = std::fs::read(path).unwrap();
            let img = image::load_from_memory(&bytes)
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            let expected = if panel.kind == PanelKind::TestAccuracyBars {
                let n = scored_trials(sweep).len() as u32;
                if n == 0 {
                    panel.size()
                } else {
                    (
                        panel.size().0,
                        (BAR_CHROME + n * BAR_ROW).max(panel.size().1),
                    )
                }
            } else {
                panel.size()
            };
            assert_eq!((img.width(), img.height()), expected, "{}", path.display());
            let (again, what) = render_panel(sweep, panel).unwrap();
            assert_eq!(again, bytes, "{}: rendering is deterministic", panel.file);
            drawn.push(what);
            if let Some(k) = &keep {
                std::fs::create_dir_all(k).unwrap();
                std::fs::write(k.join(&panel.file), &bytes).unwrap();
            }
        }
        drawn
    }

    #[test]
    fn compare_dashboard_declares_every_new_panel() {
        let board = Dashboard::load(&dashboards_dir(), "compare").unwrap();
        let kinds: HashSet<PanelKind> = board.panels.iter().map(|p| p.kind).collect();
        for k in [
            PanelKind::OptimizationHistory,
            PanelKind::ParallelCoordinates,
            PanelKind::ParamEffects,
            PanelKind::Pareto,
            PanelKind::ParamImportance,
            PanelKind::LearningCurves,
        ] {
            assert!(kinds.contains(&k), "compare.toml lacks {k}");
        }
        // the shipped default file and the embedded copy agree
        let default = Dashboard::load(&dashboards_dir(), "default").unwrap();
        assert_eq!(
            default.panels.len(),
            Dashboard::builtin_default().panels.len()
        );
    }

    #[test]
    fn renders_every_panel_of_a_100_trial_sweep() {
        let sweep = synthetic_sweep(100);
        let statuses: HashSet<&str> = sweep.trials.iter().map(|t| t.status.as_str()).collect();
        for s in [
            "succeeded",
            "pruned",
            "failed",
            "cancelled",
            "running",
            "queued",
        ] {
            assert!(statuses.contains(s), "{s}");
        }
        for name in ["default", "compare"] {
            let board = Dashboard::load(&dashboards_dir(), name).unwrap();
            let drawn = render_and_check(&sweep, &board, name);
            for (panel, what) in board.panels.iter().zip(drawn) {
                assert_eq!(what, Drawn::Chart, "{name}: {}", panel.file);
            }
        }
        // the loss objective renders too (lower is better)
        let mut loss = sweep.clone();
        loss.objective = "val_loss".into();
        let board = Dashboard::load(&dashboards_dir(), "compare").unwrap();
        let drawn = render_and_check(&loss, &board, "compare-val-loss");
        assert!(drawn.iter().all(|d| *d == Drawn::Chart));
    }

    #[test]
    fn renders_small_sweeps_with_every_new_panel() {
        let board = Dashboard::load(&dashboards_dir(), "compare").unwrap();
        for n in [3, 8] {
            let sweep = synthetic_sweep(n);
            render_and_check(&sweep, &board, &format!("compare-{n}"));
        }
    }

    #[test]
    fn no_finished_trials_render_no_data_panels() {
        let mut sweep = synthetic_sweep(6);
        for t in &mut sweep.trials {
            t.status = "queued".into();
            t.epochs.clear();
            t.test_accuracy = None;
            t.parameter_count = None;
        }
        sweep.best_trial_id = None;
        for name in ["default", "compare"] {
            let board = Dashboard::load(&dashboards_dir(), name).unwrap();
            let drawn = render_and_check(&sweep, &board, &format!("{name}-empty"));
            for (panel, what) in board.panels.iter().zip(drawn) {
                assert_eq!(what, Drawn::NoData, "{name}: {}", panel.file);
            }
        }
        // running trials with epochs: curves show, objective panels wait
        for t in &mut sweep.trials {
            t.status = "running".into();
            t.epochs = vec![ChartEpoch {
                epoch: 1,
                val_accuracy: 0.9,
                val_loss: 0.3,
                ..Default::default()
            }];
        }
        let board = Dashboard::load(&dashboards_dir(), "compare").unwrap();
        let drawn = render_and_check(&sweep, &board, "compare-running");
        for (panel, what) in board.panels.iter().zip(drawn) {
            let want = if panel.kind == PanelKind::LearningCurves {
                Drawn::Chart
            } else {
                Drawn::NoData
            };
            assert_eq!(what, want, "{}", panel.file);
        }
        // no trials at all
        sweep.trials.clear();
        let drawn = render_and_check(&sweep, &board, "compare-none");
        assert!(drawn.iter().all(|d| *d == Drawn::NoData));
    }

    #[test]
    fn renders_continuous_and_many_valued_params() {
        // random search: a log-uniform learning rate (every value distinct) and a
        // categorical parameter with a dozen long values
        let mut sweep = synthetic_sweep(100);
        let mut rng = Lcg(7);
        for t in &mut sweep.trials {
            let lr = 10f64.powf(-5.0 + 3.0 * rng.next());
            let arch = format!("architecture-variant-{:02}", (rng.next() * 12.0) as u32);
            t.params.insert("learningRate".into(), json!(lr));
            t.params.insert("arch".into(), json!(arch));
        }
        sweep.varied.push("arch".into());
        let board = Dashboard::load(&dashboards_dir(), "compare").unwrap();
        let drawn = render_and_check(&sweep, &board, "compare-continuous");
        assert!(drawn.iter().all(|d| *d == Drawn::Chart));
    }

    // ---- computations checked by hand ------------------------------------

    #[test]
    fn pareto_front_by_hand() {
        // (parameters, accuracy)
        let pts = [
            (100.0, 0.90), // 0: front
            (200.0, 0.95), // 1: dominated by 5 (same size, more accurate)
            (150.0, 0.89), // 2: dominated by 0 (bigger, less accurate)
            (300.0, 0.95), // 3: dominated by 5
            (50.0, 0.80),  // 4: front (smallest)
            (200.0, 0.96), // 5: front (most accurate)
            (f64::NAN, 0.99),
        ];
        assert_eq!(pareto_front(&pts), vec![4, 0, 5]);
        // identical points are both optimal; one point is its own front
        assert_eq!(pareto_front(&[(10.0, 0.5), (10.0, 0.5)]), vec![0, 1]);
        assert_eq!(pareto_front(&[(10.0, 0.5)]), vec![0]);
        assert!(pareto_front(&[]).is_empty());
        // a strictly better point dominates everything
        assert_eq!(
            pareto_front(&[(20.0, 0.7), (5.0, 0.9), (30.0, 0.8)]),
            vec![1]
        );
    }

    #[test]
    fn eta_squared_by_hand() {
        // grand mean 2.75; SS_total = 3.0625 + 0.5625 + 0.0625 + 5.0625 = 8.75;
        // group means 1.5 and 4: SS_between = 2·1.5625 + 2·1.5625 = 6.25
        let e = eta_squared(&[vec![1.0, 2.0], vec![3.0, 5.0]]).unwrap();
        assert!((e - 6.25 / 8.75).abs() < 1e-12, "{e}");
        // equal group means explain nothing; separated constant groups everything
        let e = eta_squared(&[vec![1.0, 3.0], vec![2.0, 2.0]]).unwrap();
        assert!(e.abs() < 1e-12, "{e}");
        let e = eta_squared(&[vec![1.0, 1.0], vec![3.0, 3.0, 3.0]]).unwrap();
        assert!((e - 1.0).abs() < 1e-12, "{e}");
        // one group: 0; no variance or too few values: undefined
        assert_eq!(eta_squared(&[vec![1.0, 2.0, 4.0]]), Some(0.0));
        assert_eq!(eta_squared(&[vec![2.0], vec![2.0]]), None);
        assert_eq!(eta_squared(&[vec![2.0], vec![]]), None);
        // groups of three: means 2, 5, 8, grand 5; SS_between = 3·9 + 0 + 3·9 = 54;
        // SS_total = 54 + 3·(1+0+1) = 60
        let e = eta_squared(&[
            vec![1.0, 2.0, 3.0],
            vec![4.0, 5.0, 6.0],
            vec![7.0, 8.0, 9.0],
        ])
        .unwrap();
        assert!((e - 0.9).abs() < 1e-12, "{e}");
    }

    #[test]
    fn param_importance_ranks_by_eta_squared() {
        // objective: the best epoch's val accuracy; the pruned and the failed
        // trial are left out of the importance.
        let mk = |i: u32, head: &str, k: u32, acc: f64, status: &str| {
            let mut t = trial(i, json!({"head": head, "k": k}));
            t.status = status.into();
            t.epochs = vec![
                ChartEpoch {
                    epoch: 1,
                    val_accuracy: acc - 0.1,
                    ..Default::default()
                },
                ChartEpoch {
                    epoch: 2,
                    val_accuracy: acc,
                    ..Default::default()
                },
            ];
            t
        };
        let sweep = ChartSweep {
            varied: varied(&["head", "k"]),
            trials: vec![
                mk(0, "gap", 3, 0.9, "succeeded"),
                mk(1, "gap", 5, 0.8, "succeeded"),
                mk(2, "dense", 3, 0.6, "succeeded"),
                mk(3, "dense", 5, 0.5, "succeeded"),
                mk(4, "dense", 5, 0.1, "pruned"),
                mk(5, "dense", 5, 0.1, "failed"),
            ],
            ..Default::default()
        };
        // values 0.9 0.8 0.6 0.5, grand mean 0.7, SS_total = 0.04+0.01+0.01+0.04 = 0.10
        // head: means 0.85 / 0.55 → SS_between = 2·0.0225·2 = 0.09 → 0.9
        // k:    means 0.75 / 0.65 → SS_between = 2·0.0025·2 = 0.01 → 0.1
        let imp = param_importance(&sweep);
        assert_eq!(imp.len(), 2);
        assert_eq!(imp[0].0, "head");
        assert!((imp[0].1 - 0.9).abs() < 1e-9, "{imp:?}");
        assert_eq!(imp[1].0, "k");
        assert!((imp[1].1 - 0.1).abs() < 1e-9, "{imp:?}");
    }

    #[test]
    fn objective_direction_and_best_so_far_inputs() {
        let mut t = trial(0, json!({}));
        t.epochs = vec![
            ChartEpoch {
                epoch: 1,
                val_accuracy: 0.8,
                val_loss: 0.5,
                ..Default::default()
            },
            ChartEpoch {
                epoch: 2,
                val_accuracy: 0.85,
                val_loss: f64::NAN,
                ..Default::default()
            },
            ChartEpoch {
                epoch: 3,
                val_accuracy: 0.83,
                val_loss: 0.4,
                ..Default::default()
            },
        ];
        assert_eq!(Goal::MaxAccuracy.trial_value(&t), Some(0.85));
        assert_eq!(Goal::MinLoss.trial_value(&t), Some(0.4));
        let sweep = ChartSweep {
            objective: "val_loss".into(),
            ..Default::default()
        };
        assert_eq!(Goal::of(&sweep), Goal::MinLoss);
        assert_eq!(Goal::of(&ChartSweep::default()), Goal::MaxAccuracy);
        assert!(Goal::MinLoss.better(0.1, 0.2));
        assert!(Goal::MaxAccuracy.better(0.2, 0.1));
    }

    #[test]
    fn many_numeric_values_are_binned_and_ordered() {
        let trials: Vec<ChartTrial> = (0..30)
            .map(|i| {
                let mut t = trial(i, json!({"lr": 10f64.powf(-4.0 + i as f64 / 10.0)}));
                t.epochs = vec![ChartEpoch {
                    epoch: 1,
                    val_accuracy: 0.5 + i as f64 / 100.0,
                    ..Default::default()
                }];
                t
            })
            .collect();
        let sweep = ChartSweep {
            varied: varied(&["lr"]),
            trials,
            ..Default::default()
        };
        let scored = objective_trials(&sweep, Goal::MaxAccuracy);
        let refs: Vec<&Scored> = scored.iter().collect();
        let groups = param_groups("lr", &refs);
        assert!((2..=BINS).contains(&groups.len()), "{}", groups.len());
        assert_eq!(groups.iter().map(|g| g.values.len()).sum::<usize>(), 30);
        assert!(groups[0].label.contains('–'), "{}", groups[0].label);
        // ordered by value: the means rise with lr here
        let means: Vec<f64> = groups.iter().map(ValueGroup::mean).collect();
        assert!(means.windows(2).all(|w| w[0] < w[1]), "{means:?}");
        // few values: one group each, numbers in numeric order, missing last
        let mut few = sweep.clone();
        few.trials.truncate(3);
        few.trials[0].params = json!({"lr": 10}).as_object().cloned().unwrap();
        few.trials[1].params = json!({"lr": 9}).as_object().cloned().unwrap();
        few.trials[2].params = Default::default();
        let scored = objective_trials(&few, Goal::MaxAccuracy);
        let refs: Vec<&Scored> = scored.iter().collect();
        let labels: Vec<String> = param_groups("lr", &refs)
            .into_iter()
            .map(|g| g.label)
            .collect();
        assert_eq!(labels, ["9", "10", "n/a"]);
    }

    #[test]
    fn thinned_ticks_keep_their_distance() {
        let ticks: Vec<(i32, String)> = (0..40).map(|i| (i * 5, i.to_string())).collect();
        let kept = thin_ticks(&ticks, 17);
        assert!(kept.len() < 40 && kept.len() >= 10, "{}", kept.len());
        assert!(kept.windows(2).all(|w| w[1].0 - w[0].0 >= 17));
        assert_eq!(kept[0].1, "0");
        let wide: Vec<(i32, String)> = (0..5).map(|i| (i * 100, i.to_string())).collect();
        assert_eq!(thin_ticks(&wide, 17).len(), 5);
    }

    #[test]
    fn legend_of_many_trials_is_capped() {
        // 100 trials, room for 22 rows: the top 15, then "+85 more"
        assert_eq!(LEGEND_MAX_ROWS, 16);
        assert_eq!(legend_rows(100, 22), (15, 85));
        assert_eq!(legend_rows(16, 22), (16, 0));
        assert_eq!(legend_rows(17, 22), (15, 2));
        assert_eq!(legend_rows(12, 10), (9, 3));
        assert_eq!(legend_rows(3, 0), (0, 3));
    }

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
