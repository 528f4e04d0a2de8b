//! Charts from what the store holds: rendering a dashboard of a sweep to PNG files
//! (`STATE_DIR/charts/SWEEP/DASHBOARD/`), finding dashboards (the dashboards folder, then the
//! built-in ones), and rendering the default dashboard of every sweep that ends.
//!
//! Owns: feeding `crate::charts` and where its files go. Must not touch: SQL.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use cnnd_core::sweep::Objective;
use tonic::Status;

use super::errors::internal;
use crate::charts;
use crate::scheduler::Scheduler;
use crate::store::{Event, StoredEvent, TrialRow};

/// Renders a dashboard of a sweep from what the store holds; returns the PNG paths.
pub(crate) async fn render_sweep_charts(
    scheduler: &Scheduler,
    dashboards_dir: &Path,
    sweep_id: &str,
    dashboard: &str,
) -> Result<Vec<PathBuf>, Status> {
    let store = &scheduler.store;
    let sweep = store
        .sweep(sweep_id)
        .await
        .map_err(internal)?
        .ok_or_else(|| Status::not_found(format!("sweepId: no sweep '{sweep_id}'")))?;
    let dashboard_name = dashboard_name(dashboard)?;
    let board = load_dashboard(dashboards_dir, dashboard_name)?;
    let trials = store.trials_of(sweep_id).await.map_err(internal)?;
    let mut epochs = store.epochs_of_sweep(sweep_id).await.map_err(internal)?;
    let objective = Objective::from_name(&sweep.objective);
    let best = crate::store::best_trial(&trials, objective).map(|t| t.id.clone());
    let chart_sweep = charts::ChartSweep {
        sweep_id: sweep.id.clone(),
        name: sweep.name.clone(),
        dataset: sweep.dataset.clone(),
        varied: sweep.varied.clone(),
        objective: sweep.objective.clone(),
        best_trial_id: best,
        trials: trials
            .iter()
            .map(|t| chart_trial(t, epochs.remove(&t.id).unwrap_or_default()))
            .collect(),
    };
    let out_dir = charts_dir(&scheduler.config.state_dir, sweep_id, dashboard_name);
    tokio::task::spawn_blocking(move || charts::render_dashboard(&chart_sweep, &board, &out_dir))
        .await
        .map_err(|e| Status::internal(format!("chart rendering panicked: {e}")))?
        .map_err(|e| Status::internal(format!("rendering charts: {e:#}")))
}

fn chart_trial(t: &TrialRow, epochs: Vec<cnnd_core::epoch::EpochRecord>) -> charts::ChartTrial {
    charts::ChartTrial {
        trial_id: t.id.clone(),
        index: t.index,
        status: t.status.to_string(),
        params: match serde_json::to_value(&t.params) {
            Ok(serde_json::Value::Object(m)) => m,
            _ => Default::default(),
        },
        epochs,
        test_accuracy: t.test_accuracy,
        parameter_count: t.parameter_count,
    }
}

/// The charts of one trial's page: train and validation accuracy, and loss, per epoch.
const TRIAL_DASHBOARD: &str = r#"
title = "Trial"
[[panels]]
kind = "accuracy_curves"
file = "accuracy_curves.png"
width = 900
height = 520
[[panels]]
kind = "loss_curves"
file = "loss_curves.png"
width = 900
height = 520
"#;

/// Renders one trial's curves in memory: (file name, PNG bytes) per panel.
pub(crate) async fn render_trial_charts(
    scheduler: &Scheduler,
    trial_id: &str,
) -> Result<Vec<(String, Vec<u8>)>, Status> {
    let store = &scheduler.store;
    let trial = store
        .trial(trial_id)
        .await
        .map_err(internal)?
        .ok_or_else(|| Status::not_found(format!("trialId: no trial '{trial_id}'")))?;
    let sweep = store
        .sweep(&trial.sweep_id)
        .await
        .map_err(internal)?
        .ok_or_else(|| Status::not_found(format!("sweepId: no sweep '{}'", trial.sweep_id)))?;
    let epochs = store.epochs(trial_id).await.map_err(internal)?;
    let chart_sweep = charts::ChartSweep {
        sweep_id: sweep.id.clone(),
        name: format!("{} trial {}", sweep.name, trial.index),
        dataset: sweep.dataset.clone(),
        varied: sweep.varied.clone(),
        objective: sweep.objective.clone(),
        best_trial_id: None,
        trials: vec![chart_trial(&trial, epochs)],
    };
    let board = charts::Dashboard::from_toml_str(TRIAL_DASHBOARD)
        .map_err(|e| Status::internal(format!("trial dashboard: {e:#}")))?;
    tokio::task::spawn_blocking(move || {
        board
            .panels
            .iter()
            .map(|panel| {
                charts::render_panel_png(&chart_sweep, panel).map(|png| (panel.file.clone(), png))
            })
            .collect::<anyhow::Result<Vec<_>>>()
    })
    .await
    .map_err(|e| Status::internal(format!("chart rendering panicked: {e}")))?
    .map_err(|e| Status::internal(format!("rendering charts: {e:#}")))
}

/// The panels of a dashboard (default when `name` is empty): (file name, title), in order.
pub(crate) fn dashboard_panels(dir: &Path, name: &str) -> Result<Vec<(String, String)>, Status> {
    Ok(load_dashboard(dir, dashboard_name(name)?)?
        .panels
        .iter()
        .map(|p| (p.file.clone(), p.title()))
        .collect())
}

/// A requested dashboard name, checked: `default` when empty; letters, digits, - and _.
pub(crate) fn dashboard_name(requested: &str) -> Result<&str, Status> {
    let name = if requested.is_empty() {
        "default"
    } else {
        requested
    };
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return Err(Status::invalid_argument(format!(
            "dashboard: '{name}' is not a dashboard name (letters, digits, - and _)"
        )));
    }
    Ok(name)
}

fn load_dashboard(dir: &Path, name: &str) -> Result<charts::Dashboard, Status> {
    if dir.join(format!("{name}.toml")).exists() {
        return charts::Dashboard::load(dir, name)
            .map_err(|e| Status::invalid_argument(format!("dashboard: {e:#}")));
    }
    if let Some(board) = charts::Dashboard::builtin(name) {
        return Ok(board);
    }
    Err(Status::not_found(format!(
        "dashboard: no dashboard '{name}' (looked for {})",
        dir.join(format!("{name}.toml")).display()
    )))
}

/// Where a dashboard of a sweep is rendered: `STATE_DIR/charts/SWEEP/DASHBOARD/`.
fn charts_dir(state_dir: &Path, sweep_id: &str, dashboard: &str) -> PathBuf {
    state_dir.join("charts").join(sweep_id).join(dashboard)
}

/// True when the dashboard folder holds at least one PNG.
fn has_charts(dir: &Path) -> bool {
    std::fs::read_dir(dir).is_ok_and(|entries| {
        entries
            .flatten()
            .any(|e| e.path().extension().is_some_and(|x| x == "png"))
    })
}

/// Renders the default dashboard of every sweep that finishes, in the background. The live
/// feed may drop events for a subscriber that falls behind (a burst of thousands of events,
/// e.g. a large sweep cancelled); after such a lag the renderer asks the store which sweeps
/// ended since it started and renders those that have no charts yet, so no sweep is missed.
pub fn render_charts_when_sweeps_finish(scheduler: Arc<Scheduler>, dashboards_dir: PathBuf) {
    let mut events = scheduler.subscribe();
    let started = crate::store::now();
    tokio::spawn(async move {
        let render = |sweep_id: String| {
            let scheduler = scheduler.clone();
            let dashboards_dir = dashboards_dir.clone();
            async move {
                match render_sweep_charts(&scheduler, &dashboards_dir, &sweep_id, "default").await {
                    Ok(paths) => tracing::info!(sweep_id, charts = ?paths, "charts rendered"),
                    Err(e) => tracing::warn!(sweep_id, "charts not rendered: {}", e.message()),
                }
            }
        };
        loop {
            match events.recv().await {
                Ok(StoredEvent {
                    sweep_id,
                    event: Event::SweepFinished { .. },
                    ..
                }) => render(sweep_id).await,
                Ok(_) => {}
                Err(tokio::sync::broadcast::error::RecvError::Lagged(missed)) => {
                    tracing::warn!(missed, "chart renderer fell behind the event feed; checking the store for ended sweeps");
                    let ended = match scheduler.store.sweeps_ended_since(&started).await {
                        Ok(ids) => ids,
                        Err(e) => {
                            tracing::error!("charts: cannot list ended sweeps: {e:#}");
                            continue;
                        }
                    };
                    let state_dir = &scheduler.config.state_dir;
                    for sweep_id in ended {
                        if !has_charts(&charts_dir(state_dir, &sweep_id, "default")) {
                            render(sweep_id).await;
                        }
                    }
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scheduler::SchedulerConfig;
    use crate::store::Store;
    use cnnd_core::sweep::{SweepLimits, SweepRequest};
    use std::time::Duration;

    /// A sweep whose `SweepFinished` event the renderer never sees (it fell behind the feed
    /// and the event was dropped) still gets its charts: the renderer re-reads the store.
    #[tokio::test]
    async fn a_sweep_that_ends_while_the_renderer_lags_still_gets_its_charts() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("cnnd.sqlite")).await.unwrap();
        let scheduler = Scheduler::new(
            store.clone(),
            SchedulerConfig {
                state_dir: dir.path().to_path_buf(),
                event_buffer: 8,
                ..Default::default()
            },
        )
        .unwrap();
        let request: SweepRequest = serde_json::from_value(serde_json::json!({
            "name": "lagged", "dataset": "mnist", "space": {"kernelSize": [3, 5]},
            "fixed": {"epochs": 1}}))
        .unwrap();
        let spec = request
            .validate(SweepLimits::default(), cnnd_core::datasets::resolve_builtin)
            .unwrap();
        let (sweep_id, _) = scheduler
            .submit(&spec, None, u32::MAX)
            .await
            .unwrap()
            .unwrap();
        render_charts_when_sweeps_finish(scheduler.clone(), dir.path().join("dashboards"));

        // The sweep ends (cancelled); its events reach the feed followed, before the
        // renderer runs again, by more events than the feed keeps: `SweepFinished` is lost.
        let (_, _, ended) = store.cancel_sweep(&sweep_id).await.unwrap();
        let noise = ended[0].clone();
        scheduler.publish(ended);
        scheduler.publish(std::iter::repeat_n(noise, 20));

        let charts = charts_dir(dir.path(), &sweep_id, "default");
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while !has_charts(&charts) {
            assert!(
                std::time::Instant::now() < deadline,
                "no charts in {} after the lag",
                charts.display()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}
