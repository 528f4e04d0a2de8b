//! Shared test fixtures (trials, a synthetic sweep, the dashboards folder)
//! and the tests that render whole dashboards and check every PNG.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use serde_json::json;

use super::panels::test_accuracy_bars::{scored_trials, BAR_CHROME, BAR_ROW};
use super::{render_dashboard, render_panel, ChartSweep, ChartTrial, Dashboard, Drawn, PanelKind};
use cnnd_core::epoch::EpochRecord;

pub(super) fn trial(index: u32, params: serde_json::Value) -> ChartTrial {
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

pub(super) fn varied(names: &[&str]) -> Vec<String> {
    names.iter().map(|s| s.to_string()).collect()
}

#[test]
fn renders_small_and_empty_sweeps() {
    let mut t = trial(0, json!({"head": "gap"}));
    t.epochs = vec![EpochRecord {
        epoch: 1,
        train_loss: 0.3,
        train_accuracy: 0.9,
        val_loss: f64::NAN,
        val_accuracy: 0.95,
        ..Default::default()
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
    assert_eq!(paths.len(), 7);
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
            t.epochs.push(EpochRecord {
                epoch: e,
                train_loss: 0.4 * (1.0 - f) + 0.03,
                train_accuracy: acc + 0.005,
                val_loss: (1.0 - acc) * 2.0,
                val_accuracy: acc,
                ..Default::default()
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

pub(super) fn dashboards_dir() -> PathBuf {
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
        let img =
            image::load_from_memory(&bytes).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
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
        t.epochs = vec![EpochRecord {
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

/// Ink of `s` drawn in the charts' font at `px` on white, anchored at (10, 10): for each run of
/// inked columns (one glyph, for text without touching glyphs), its first column and its
/// lowest row holding at least half a pixel of ink (summed across the glyph's columns, so a
/// thin stem split between two columns counts whole).
fn glyph_ink(s: &str, px: u32) -> Vec<(u32, u32)> {
    use plotters::prelude::*;
    super::style::ensure_fonts().unwrap();
    let (w, h) = (240u32, 80u32);
    let mut buf = vec![255u8; (w * h * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut buf, (w, h)).into_drawing_area();
        root.draw_text(s, &super::style::text(px, &BLACK), (10, 10))
            .unwrap();
    }
    let ink = |x: u32, y: u32| f64::from(255 - buf[((y * w + x) * 3) as usize]) / 255.0;
    let column_inked = |x: u32| (0..h).any(|y| ink(x, y) > 0.1);
    let mut runs: Vec<(u32, u32)> = Vec::new();
    let mut x = 0;
    while x < w {
        if !column_inked(x) {
            x += 1;
            continue;
        }
        let start = x;
        while x < w && column_inked(x) {
            x += 1;
        }
        runs.push((start, x));
    }
    runs.into_iter()
        .map(|(from, to)| {
            let bottom = (0..h)
                .rev()
                .find(|&y| (from..to).map(|x| ink(x, y)).sum::<f64>() >= 0.5)
                .unwrap_or(0);
            (from, bottom)
        })
        .collect()
}

/// Issue 19: plotters' ab_glyph backend set each glyph off its baseline by a truncation
/// (periods read as middle dots: "0·5", "95·80%") and dropped side bearings ("n= 4"). The patched
/// plotters (vendor/plotters/CNND-PATCH.md) puts every glyph on one baseline at its side
/// bearing.
#[test]
fn text_sits_on_one_baseline() {
    for px in [10, 11, 12, 13, 14, 15, 16, 18, 20, 24] {
        // Each text holds a flat-bottomed digit (1, 4, 7), which marks the baseline row;
        // spaces keep the comma's ink apart from its neighbours' at small sizes.
        for text in ["10.5", "91.47%", "1 , 1"] {
            let ink = glyph_ink(text, px);
            let bottom_of = |wanted: fn(char) -> bool| -> Vec<u32> {
                ink.iter()
                    .zip(text.chars().filter(|c| *c != ' '))
                    .filter(|(_, c)| wanted(*c))
                    .map(|((_, bottom), _)| *bottom)
                    .collect()
            };
            let digits = bottom_of(|c| c.is_ascii_digit());
            let baseline = *digits.iter().min().unwrap();
            // Flat-bottomed digits end on the baseline row, round ones (0, 5, 8) may overshoot
            // it by one row; the period ends exactly on it.
            assert!(
                digits.iter().all(|b| *b <= baseline + 1),
                "{text:?} at {px} px: glyph bottoms {ink:?}"
            );
            for point in bottom_of(|c| c == '.') {
                assert_eq!(
                    point, baseline,
                    "{text:?} at {px} px: glyph bottoms {ink:?}"
                );
            }
            for comma in bottom_of(|c| c == ',') {
                // A comma hangs below the baseline.
                assert!(comma > baseline, "{text:?} at {px} px: {ink:?}");
            }
        }
        // The side bearing is kept: '=' starts its ink a little right of the anchor.
        let equals = glyph_ink("=", px);
        assert!(equals[0].0 > 10, "'=' at {px} px starts at {}", equals[0].0);
    }
}
