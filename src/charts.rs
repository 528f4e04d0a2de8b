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
#[derive(Debug, Clone)]
pub struct ChartEpoch {
    pub epoch: u32,
    pub train_loss: f64,
    pub train_accuracy: f64,
    pub val_loss: f64,
    pub val_accuracy: f64,
}

/// One trial of a sweep, as far as the charts are concerned.
#[derive(Debug, Clone)]
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
#[derive(Debug, Clone)]
pub struct ChartSweep {
    pub sweep_id: String,
    pub name: String,
    pub dataset: String,
    /// Names of the hyperparameters the sweep varies, e.g. `["kernelSize","dropout","head"]`.
    pub varied: Vec<String>,
    pub trials: Vec<ChartTrial>,
    pub best_trial_id: Option<String>,
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

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PanelKind {
    LearningCurves,
    TestAccuracyBars,
    AccuracyVsParameters,
    LossCurves,
}

impl PanelKind {
    /// The name used in dashboard files.
    pub fn as_str(self) -> &'static str {
        match self {
            PanelKind::LearningCurves => "learning_curves",
            PanelKind::TestAccuracyBars => "test_accuracy_bars",
            PanelKind::AccuracyVsParameters => "accuracy_vs_parameters",
            PanelKind::LossCurves => "loss_curves",
        }
    }

    fn default_title(self) -> &'static str {
        match self {
            PanelKind::LearningCurves => "Validation accuracy per epoch",
            PanelKind::TestAccuracyBars => "Test accuracy by trial",
            PanelKind::AccuracyVsParameters => "Test accuracy vs parameter count",
            PanelKind::LossCurves => "Train and validation loss per epoch",
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
    panel.validate()?;
    ensure_fonts()?;
    let (w, h) = panel_pixels(sweep, panel);
    let mut rgb = vec![255u8; w as usize * h as usize * 3];
    {
        let root = BitMapBackend::with_buffer(&mut rgb, (w, h)).into_drawing_area();
        root.fill(&WHITE).map_err(plot_err)?;
        match panel.kind {
            PanelKind::LearningCurves => draw_learning_curves(&root, sweep, panel),
            PanelKind::LossCurves => draw_loss_curves(&root, sweep, panel),
            PanelKind::TestAccuracyBars => draw_accuracy_bars(&root, sweep, panel),
            PanelKind::AccuracyVsParameters => draw_accuracy_vs_parameters(&root, sweep, panel),
        }
        .with_context(|| format!("rendering panel {} ({})", panel.kind, panel.file))?;
        root.present().map_err(plot_err)?;
    }
    let mut png = Vec::new();
    image::codecs::png::PngEncoder::new(&mut png)
        .write_image(&rgb, w, h, image::ExtendedColorType::Rgb8)
        .with_context(|| format!("encoding {}", panel.file))?;
    Ok(png)
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
    matches!(status, "pruned" | "failed" | "cancelled")
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
fn draw_no_data(body: &Area, reason: &str) -> Result<()> {
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
    draw_text_at(body, &reason, &small, (cx, cy + 24))
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
    Line { dashed: bool, width: u32 },
    Dot,
    Ring,
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

fn draw_legend(area: &Area, heading: &str, entries: &[LegendEntry]) -> Result<()> {
    let (w, h) = area.dim_in_pixel();
    let x0 = 12;
    let mut y = 20;
    let hs = anchored(bold(LEGEND_PX, &INK), HPos::Left, VPos::Top);
    let heading = fit_text(area, heading, &hs, w.saturating_sub(24));
    draw_text_at(area, &heading, &hs, (x0, y))?;
    y += 30;
    let rows = ((h as i32 - y - 16) / LEGEND_ROW).max(0) as usize;
    let overflow = entries.len() > rows;
    let shown = if overflow {
        rows.saturating_sub(1)
    } else {
        entries.len()
    };
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
            Swatch::Dot => {}
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
        let label = fit_text(area, &e.label, &ts, max_text);
        draw_text_at(area, &label, &ts, (sx1 + 10, cy))?;
        y += LEGEND_ROW;
    }
    if overflow {
        let ts = anchored(text(LEGEND_PX, &MUTED), HPos::Left, VPos::Center);
        let more = format!("… and {} more", entries.len() - shown);
        draw_text_at(area, &more, &ts, (x0, y + LEGEND_ROW / 2))?;
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
            format!("{} [{}]", self.label, self.trial.status)
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

struct LineChartSpec<'a> {
    y_desc: &'a str,
    percent: bool,
    empty_reason: &'a str,
    legend_heading: &'a str,
    key: Vec<LegendEntry>,
}

fn draw_learning_curves(root: &Area, sweep: &ChartSweep, panel: &Panel) -> Result<()> {
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
    let spec = LineChartSpec {
        y_desc: "validation accuracy",
        percent: true,
        empty_reason: "no trial has reported a validation accuracy",
        legend_heading: "trials, by best val. accuracy",
        key: Vec::new(),
    };
    draw_line_chart(root, sweep, panel, curves, spec)
}

fn draw_loss_curves(root: &Area, sweep: &ChartSweep, panel: &Panel) -> Result<()> {
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
    };
    draw_line_chart(root, sweep, panel, curves, spec)
}

fn draw_line_chart(
    root: &Area,
    sweep: &ChartSweep,
    panel: &Panel,
    mut curves: Vec<Curve>,
    spec: LineChartSpec,
) -> Result<()> {
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
    let dense = curves.len() > PALETTE.len();
    let mut entries = spec.key;
    let has_key = !entries.is_empty();
    for c in &curves {
        let (color, width) = c.style(false);
        entries.push(LegendEntry {
            label: c.legend_label(),
            color,
            swatch: Swatch::Line {
                dashed: c.inactive && !has_key,
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
    draw_legend(&legend_area, spec.legend_heading, &entries)
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

fn draw_accuracy_bars(root: &Area, sweep: &ChartSweep, panel: &Panel) -> Result<()> {
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
    Ok(())
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

fn draw_accuracy_vs_parameters(root: &Area, sweep: &ChartSweep, panel: &Panel) -> Result<()> {
    let body = draw_header(root, &chart_title(sweep, panel), &subtitle(sweep))?;
    let labels = unique_labels(sweep);
    let points: Vec<(usize, &ChartTrial, f64, f64)> = sweep
        .trials
        .iter()
        .enumerate()
        .filter_map(|(i, t)| {
            let acc = t.test_accuracy.filter(|a| a.is_finite())?;
            let params = t.parameter_count.filter(|p| *p > 0)? as f64;
            Some((i, t, params, acc))
        })
        .collect();
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
    draw_legend(&legend_area, &heading, &entries)
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
    fn builtin_default_has_the_four_panels() {
        let d = Dashboard::builtin_default();
        let files: Vec<&str> = d.panels.iter().map(|p| p.file.as_str()).collect();
        assert_eq!(
            files,
            [
                "learning_curves.png",
                "loss_curves.png",
                "test_accuracy.png",
                "accuracy_vs_parameters.png"
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
        };
        let dir = tempfile::tempdir().unwrap();
        let d = Dashboard::builtin_default();
        let paths = render_dashboard(&sweep, &d, &dir.path().join("one")).unwrap();
        assert_eq!(paths.len(), 4);
        for p in &paths {
            let bytes = std::fs::read(p).unwrap();
            assert!(bytes.starts_with(b"\x89PNG"), "{}", p.display());
        }
        sweep.trials.clear();
        let paths = render_dashboard(&sweep, &d, &dir.path().join("empty")).unwrap();
        assert!(paths.iter().all(|p| p.exists()));
    }
}
