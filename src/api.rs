//! The gRPC surface: the public `cnn.v1.Orchestrator` service for clients and the
//! `cnn.v1.WorkerHub` service for worker processes. It converts between wire messages and
//! the scheduler/store types, maps errors to gRPC statuses (every refusal names the field
//! and the reason), and renders charts (from store data, through `charts`).
//!
//! Must not touch: SQL (the store owns it), worker processes (the scheduler owns them),
//! libtorch (the training side).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::charts;
use crate::datasets::{self, DatasetError, Source};
use crate::limits::StreamQuota;
use crate::metrics::Metrics;
use crate::proto::{self, struct_from_json, struct_to_json};
use crate::scheduler::{Scheduler, Verdict};
use crate::store::{EpochRow, Event, StoredEvent, TrialFacts, TrialResult, TrialRow};
use crate::sweep::{SpecError, SweepRequest, SweepSpec};

pub struct Api {
    pub scheduler: Arc<Scheduler>,
    /// Where dashboard files are looked up first (then the built-in default).
    pub dashboards_dir: PathBuf,
    /// Runs `Predict`; None answers UNIMPLEMENTED.
    pub predictor: Option<Arc<dyn Predictor>>,
    /// Open WatchSweep streams per client and in total.
    pub streams: StreamQuota,
    /// How long a stream waits for a client that does not read before closing.
    pub stream_send_timeout: Duration,
    /// Most queued trials over all sweeps.
    pub max_queued_trials: u32,
    /// GetSweep answers already built.
    pub sweep_replies: SweepReplyCache,
}

/// Built `GetSweep` answers by sweep, each tagged with the store's write generation
/// ([`crate::store::Store::generation`]) read before its reads: served again while the
/// generation is unchanged, i.e. while nothing was written since. Building one for a
/// 1,000-trial sweep (every trial's params as a `Struct`) costs far more than a clone.
#[derive(Default)]
pub struct SweepReplyCache(SweepReplies);

/// (sweep id, all_params) -> (store generation, answer).
type SweepReplies = std::sync::Mutex<HashMap<(String, bool), (u64, Arc<proto::Sweep>)>>;

/// Sweeps whose answers [`SweepReplyCache`] keeps (the most polled ones are the open ones).
const SWEEP_REPLIES_KEPT: usize = 16;

impl SweepReplyCache {
    fn get(&self, sweep_id: &str, all_params: bool, generation: u64) -> Option<Arc<proto::Sweep>> {
        let map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        map.get(&(sweep_id.to_string(), all_params))
            .filter(|(g, _)| *g == generation)
            .map(|(_, reply)| reply.clone())
    }

    fn put(&self, sweep_id: &str, all_params: bool, generation: u64, reply: Arc<proto::Sweep>) {
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        map.retain(|_, (g, _)| *g == generation);
        if map.len() >= SWEEP_REPLIES_KEPT {
            map.clear();
        }
        map.insert((sweep_id.to_string(), all_params), (generation, reply));
    }
}

/// Classifies images with a trial's weights (blocking; called on a blocking thread). The
/// training side implements it (`predict::LocalPredictor`), so this module stays free of
/// libtorch.
pub trait Predictor: Send + Sync {
    fn predict(
        &self,
        trial: &TrialRow,
        request: &proto::PredictRequest,
    ) -> Result<proto::PredictResponse, Status>;
}

/// Most images one `Predict` call may carry.
pub const MAX_PREDICT_IMAGES: usize = 256;

/// Maps a store or scheduler failure to a status. A full disk or a read-only state
/// directory refuses the request clearly; what is already recorded stays intact (SQLite
/// rolls the transaction back).
fn internal(e: anyhow::Error) -> Status {
    let text = format!("{e:#}");
    let lower = text.to_lowercase();
    if lower.contains("disk is full") || lower.contains("no space left") {
        tracing::error!("storage full: {text}");
        return Status::resource_exhausted(format!(
            "storage: the disk holding the state directory is full ({text}); new work is refused, recorded results are intact"
        ));
    }
    if lower.contains("readonly")
        || lower.contains("read-only")
        || lower.contains("permission denied")
        || lower.contains("disk i/o error")
    {
        tracing::error!("storage not writable: {text}");
        return Status::unavailable(format!(
            "storage: the state directory is not writable ({text}); new work is refused, recorded results are intact"
        ));
    }
    tracing::error!("internal error: {text}");
    Status::internal(text)
}

fn json_object<T: serde::Serialize>(v: &T) -> prost_types::Struct {
    match serde_json::to_value(v) {
        Ok(serde_json::Value::Object(m)) => struct_from_json(&m),
        _ => prost_types::Struct::default(),
    }
}

fn require_id(field: &str, value: &str) -> Result<(), Status> {
    if value.trim().is_empty() {
        return Err(Status::invalid_argument(format!("{field}: missing")));
    }
    if value.len() > 128 {
        return Err(Status::invalid_argument(format!(
            "{field}: longer than 128 characters"
        )));
    }
    Ok(())
}

fn epoch_to_proto(e: &EpochRow) -> proto::EpochMetrics {
    proto::EpochMetrics {
        epoch: e.epoch,
        train_loss: e.train_loss,
        train_accuracy: e.train_accuracy,
        val_loss: e.val_loss,
        val_accuracy: e.val_accuracy,
        seconds: e.seconds,
        images_per_second: e.images_per_second,
    }
}

pub fn event_to_proto(e: &StoredEvent) -> proto::SweepEvent {
    use proto::sweep_event::Kind;
    let kind = match &e.event {
        Event::TrialStarted {
            trial_id,
            worker,
            attempt,
        } => Kind::TrialStarted(proto::TrialStarted {
            trial_id: trial_id.clone(),
            worker: worker.clone(),
            attempt: *attempt,
        }),
        Event::EpochFinished {
            trial_id,
            epochs_planned,
            metrics,
        } => Kind::EpochFinished(proto::EpochFinished {
            trial_id: trial_id.clone(),
            epochs_planned: *epochs_planned,
            metrics: Some(epoch_to_proto(metrics)),
        }),
        Event::TrialFinished {
            trial_id,
            status,
            test_accuracy,
            test_loss,
            error,
        } => Kind::TrialFinished(proto::TrialFinished {
            trial_id: trial_id.clone(),
            status: status.clone(),
            test_accuracy: test_accuracy.unwrap_or_default(),
            test_loss: test_loss.unwrap_or_default(),
            error: error.clone().unwrap_or_default(),
        }),
        Event::SweepFinished {
            status,
            best_trial_id,
            best_test_accuracy,
        } => Kind::SweepFinished(proto::SweepFinished {
            status: status.clone(),
            best_trial_id: best_trial_id.clone().unwrap_or_default(),
            best_test_accuracy: best_test_accuracy.unwrap_or_default(),
        }),
    };
    proto::SweepEvent {
        event_id: e.id as u64,
        sweep_id: e.sweep_id.clone(),
        at: e.at.clone(),
        kind: Some(kind),
    }
}

fn is_final(e: &StoredEvent) -> bool {
    matches!(e.event, Event::SweepFinished { .. })
}

/// Renders a dashboard of a sweep from what the store holds; returns the PNG paths.
pub async fn render_sweep_charts(
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
    let dashboard_name = if dashboard.is_empty() {
        "default"
    } else {
        dashboard
    };
    if !dashboard_name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return Err(Status::invalid_argument(format!(
            "dashboard: '{dashboard_name}' is not a dashboard name (letters, digits, - and _)"
        )));
    }
    let board = load_dashboard(dashboards_dir, dashboard_name)?;
    let trials = store.trials_of(sweep_id).await.map_err(internal)?;
    let mut epochs = store.epochs_of_sweep(sweep_id).await.map_err(internal)?;
    let objective = crate::sweep::Objective::from_name(&sweep.objective);
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
            .map(|t| charts::ChartTrial {
                trial_id: t.id.clone(),
                index: t.index,
                status: t.status.clone(),
                params: match serde_json::to_value(&t.params) {
                    Ok(serde_json::Value::Object(m)) => m,
                    _ => Default::default(),
                },
                epochs: epochs
                    .remove(&t.id)
                    .unwrap_or_default()
                    .iter()
                    .map(|e| charts::ChartEpoch {
                        epoch: e.epoch,
                        train_loss: e.train_loss,
                        train_accuracy: e.train_accuracy,
                        val_loss: e.val_loss,
                        val_accuracy: e.val_accuracy,
                    })
                    .collect(),
                test_accuracy: t.test_accuracy,
                parameter_count: t.parameter_count,
            })
            .collect(),
    };
    let out_dir = charts_dir(&scheduler.config.state_dir, sweep_id, dashboard_name);
    tokio::task::spawn_blocking(move || charts::render_dashboard(&chart_sweep, &board, &out_dir))
        .await
        .map_err(|e| Status::internal(format!("chart rendering panicked: {e}")))?
        .map_err(|e| Status::internal(format!("rendering charts: {e:#}")))
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

/// A trial as `GetSweep` lists it: with its `only` hyperparameters (the sweep's varied ones),
/// or with all of them when `only` is None.
fn trial_summary(t: &TrialRow, only: Option<&[String]>) -> proto::TrialSummary {
    let params = match (only, serde_json::to_value(&t.params)) {
        (Some(names), Ok(serde_json::Value::Object(mut all))) => {
            all.retain(|name, _| names.contains(name));
            struct_from_json(&all)
        }
        _ => json_object(&t.params),
    };
    proto::TrialSummary {
        trial_id: t.id.clone(),
        index: t.index,
        status: t.status.clone(),
        params: Some(params),
        epochs_done: t.epochs_done,
        epochs_planned: t.epochs_planned,
        val_accuracy: t
            .last_epoch
            .as_ref()
            .map(|e| e.val_accuracy)
            .unwrap_or_default(),
        val_loss: t
            .last_epoch
            .as_ref()
            .map(|e| e.val_loss)
            .unwrap_or_default(),
        test_accuracy: t.test_accuracy.unwrap_or_default(),
        test_loss: t.test_loss.unwrap_or_default(),
        parameter_count: t.parameter_count.unwrap_or_default(),
        error: t.error.clone().unwrap_or_default(),
        worker: t.worker.clone().unwrap_or_default(),
        best_val_accuracy: t.best_val_accuracy.unwrap_or_default(),
        best_val_loss: t.best_val_loss.unwrap_or_default(),
    }
}

/// The hyperparameters that differ between a recorded and a re-derived trial, as
/// "name: recorded -> re-derived, ...".
fn describe_difference(
    recorded: &crate::sweep::TrialParams,
    derived: &crate::sweep::TrialParams,
) -> String {
    let (Ok(serde_json::Value::Object(a)), Ok(serde_json::Value::Object(b))) = (
        serde_json::to_value(recorded),
        serde_json::to_value(derived),
    ) else {
        return "differs".into();
    };
    a.iter()
        .filter(|(k, v)| b.get(*k) != Some(*v))
        .map(|(k, v)| format!("{k}: {v} -> {}", b.get(k).cloned().unwrap_or_default()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// How a tpe trial's values were chosen, in words.
fn suggestion_note(t: &TrialRow) -> Option<String> {
    let basis = t.suggestion.as_ref()?;
    Some(if basis.tpe {
        format!(
            "suggested by tpe from {} finished trials{}{}",
            basis.observed.len(),
            if basis.pending.is_empty() {
                String::new()
            } else {
                format!(
                    ", {} running as pending ({})",
                    basis.pending.len(),
                    basis.pending.join(", ")
                )
            },
            if basis.observed.is_empty() {
                String::new()
            } else {
                format!(" ({})", basis.observed.join(", "))
            }
        )
    } else {
        format!(
            "suggested by random start-up ({} finished trials so far)",
            basis.observed.len()
        )
    })
}

/// What the response of `SubmitSweep` says about the data set: splits carved from train.
fn dataset_notes(spec: &SweepSpec) -> Vec<String> {
    let info = &spec.dataset_info;
    let Source::Folder {
        has_validation,
        has_test,
        ..
    } = info.source
    else {
        return Vec::new();
    };
    let first = spec.trials.first().cloned().unwrap_or_default();
    let mut notes = vec![format!(
        "{}: {} classes ({}), {} training images",
        info.name,
        info.classes,
        info.class_names.join(", "),
        info.train_examples
    )];
    if !has_validation {
        notes.push(format!(
            "validation: no validation/ folder; each trial holds out valFraction ({}) of train/, drawn with its seed",
            first.val_fraction
        ));
    }
    if !has_test {
        notes.push(format!(
            "test: no test/ folder; testFraction ({}) of train/ is held out with splitSeed {} (the same for every trial)",
            first.test_fraction, first.split_seed
        ));
    }
    notes
}

/// The weights file a trial's `initFrom` names: `trial:ID` is that trial's best weights
/// (it must have succeeded), `file:PATH` a file inside the data directory.
async fn init_weights(scheduler: &Scheduler, init_from: &str) -> Result<PathBuf, Status> {
    if let Some(id) = init_from.strip_prefix("trial:") {
        let source = scheduler
            .store
            .trial(id)
            .await
            .map_err(internal)?
            .ok_or_else(|| Status::not_found(format!("initFrom: no trial '{id}'")))?;
        return match (source.status.as_str(), source.weights_path) {
            ("succeeded", Some(path)) => Ok(PathBuf::from(path)),
            (status, _) => Err(Status::failed_precondition(format!(
                "initFrom: trial '{id}' is {status}; only a succeeded trial has weights to start from"
            ))),
        };
    }
    if let Some(relative) = init_from.strip_prefix("file:") {
        let data_dir = scheduler.config.data_dir.as_deref().ok_or_else(|| {
            Status::invalid_argument(
                "initFrom: weights files need a data directory; start cnnd with --data-dir",
            )
        })?;
        let path = datasets::confine(relative, data_dir).map_err(|e| match e {
            DatasetError::Denied(m) => Status::permission_denied(format!(
                "initFrom: {}",
                m.replace("image folders", "weights files")
            )),
            DatasetError::Invalid(m) => Status::invalid_argument(format!("initFrom: {m}")),
        })?;
        if !path.is_file() {
            return Err(Status::invalid_argument(format!(
                "initFrom: {} is not a file",
                path.display()
            )));
        }
        return Ok(path);
    }
    Err(Status::invalid_argument(format!(
        "initFrom: '{init_from}' is neither trial:ID nor file:PATH"
    )))
}

impl Api {
    /// Checks every distinct `initFrom` of a sweep names weights that exist.
    async fn check_init_from(&self, spec: &SweepSpec) -> Result<(), Status> {
        let mut seen = std::collections::BTreeSet::new();
        for t in &spec.trials {
            if !t.init_from.is_empty() && seen.insert(t.init_from.clone()) {
                init_weights(&self.scheduler, &t.init_from).await?;
            }
        }
        Ok(())
    }

    /// The sweep `id`, which must exist.
    async fn find_sweep(&self, id: &str) -> Result<crate::store::SweepRow, Status> {
        require_id("sweepId", id)?;
        self.scheduler
            .store
            .sweep(id)
            .await
            .map_err(internal)?
            .ok_or_else(|| Status::not_found(format!("sweepId: no sweep '{id}'")))
    }

    /// The sweep `id`, which must exist and not have ended.
    async fn open_sweep(&self, id: &str) -> Result<crate::store::SweepRow, Status> {
        let sweep = self.find_sweep(id).await?;
        if sweep.status == "finished" || sweep.status == "cancelled" {
            let verb = if sweep.status == "finished" {
                "finished"
            } else {
                "been cancelled"
            };
            return Err(Status::failed_precondition(format!(
                "sweepId: sweep '{id}' has already {verb}"
            )));
        }
        Ok(sweep)
    }
}

type EventStream = Pin<Box<dyn Stream<Item = Result<proto::SweepEvent, Status>> + Send>>;

#[tonic::async_trait]
impl proto::orchestrator_server::Orchestrator for Api {
    async fn submit_sweep(
        &self,
        request: Request<proto::SubmitSweepRequest>,
    ) -> Result<Response<proto::SubmitSweepResponse>, Status> {
        let r = request.into_inner();
        let sweep_request = SweepRequest {
            name: r.name,
            dataset: r.dataset,
            space: r.space.as_ref().map(struct_to_json).unwrap_or_default(),
            fixed: r.fixed.as_ref().map(struct_to_json).unwrap_or_default(),
            strategy: r.strategy,
            num_trials: r.num_trials,
            max_parallel: r.max_parallel,
            seed: r.seed,
            priority: r.priority,
            early_stopping: r.early_stopping,
            objective: r.objective,
            repeats: r.repeats,
            device: r.device,
            warmup_epochs: r.warmup_epochs,
            min_trials: r.min_trials,
            grace_period: r.grace_period,
            reduction_factor: r.reduction_factor,
            startup_trials: r.startup_trials,
            asha_mode: r.asha_mode,
        };
        // Image folders are listed from disk: off the async threads.
        let limits = self.scheduler.config.limits;
        let data_dir = self.scheduler.config.data_dir.clone();
        let (spec, notes) = tokio::task::spawn_blocking(move || {
            let spec = sweep_request.validate(limits, data_dir.as_deref())?;
            let notes = dataset_notes(&spec);
            Ok::<_, SpecError>((spec, notes))
        })
        .await
        .map_err(|e| Status::internal(format!("validation task: {e}")))?
        .map_err(|e| {
            if e.denied {
                Status::permission_denied(e.to_string())
            } else {
                Status::invalid_argument(e.to_string())
            }
        })?;
        self.check_init_from(&spec).await?;
        if spec.device == crate::sweep::DeviceRequest::Cuda && !self.scheduler.has_cuda() {
            return Err(Status::invalid_argument(
                "device: 'cuda' was requested but this daemon sees no CUDA device; use auto or cpu",
            ));
        }
        let (sweep_id, trials) = self
            .scheduler
            .submit(&spec, self.max_queued_trials)
            .await
            .map_err(internal)?
            .map_err(|full| Status::resource_exhausted(full.to_string()))?;
        tracing::info!(
            sweep_id,
            trials = trials.len(),
            name = spec.name,
            "sweep queued"
        );
        Ok(Response::new(proto::SubmitSweepResponse {
            sweep_id,
            trials_queued: trials.len() as u32,
            varied: spec.varied,
            notes,
        }))
    }

    async fn get_sweep(
        &self,
        request: Request<proto::GetSweepRequest>,
    ) -> Result<Response<proto::Sweep>, Status> {
        let proto::GetSweepRequest {
            sweep_id: id,
            all_params,
        } = request.into_inner();
        let store = &self.scheduler.store;
        let generation = store.generation();
        let cached = generation.and_then(|g| self.sweep_replies.get(&id, all_params, g));
        if let Some(reply) = cached {
            return Ok(Response::new(reply.as_ref().clone()));
        }
        let sweep = self.find_sweep(&id).await?;
        let trials = store.trials_of(&id).await.map_err(internal)?;
        let objective = crate::sweep::Objective::from_name(&sweep.objective);
        let best = crate::store::best_trial(&trials, objective)
            .map(|t| t.id.clone())
            .unwrap_or_default();
        let summaries = trials
            .iter()
            .map(|t| trial_summary(t, (!all_params).then_some(&sweep.varied[..])))
            .collect();
        let reply = Arc::new(proto::Sweep {
            status: sweep.visible_status(),
            sweep_id: sweep.id,
            name: sweep.name,
            dataset: sweep.dataset,
            strategy: sweep.strategy,
            varied: sweep.varied,
            spec: match &sweep.spec {
                serde_json::Value::Object(m) => Some(struct_from_json(m)),
                _ => None,
            },
            trials: summaries,
            created_at: sweep.created_at,
            finished_at: sweep.finished_at.unwrap_or_default(),
            best_trial_id: best,
            skipped_files: trials.iter().map(|t| t.skipped_files).max().unwrap_or(0),
            objective: sweep.objective,
        });
        if let Some(g) = generation {
            self.sweep_replies.put(&id, all_params, g, reply.clone());
        }
        Ok(Response::new(Arc::unwrap_or_clone(reply)))
    }

    async fn list_sweeps(
        &self,
        _: Request<proto::ListSweepsRequest>,
    ) -> Result<Response<proto::ListSweepsResponse>, Status> {
        let store = &self.scheduler.store;
        let sweeps = store.sweeps().await.map_err(internal)?;
        let mut progress: std::collections::HashMap<_, _> = store
            .sweep_progress()
            .await
            .map_err(internal)?
            .into_iter()
            .map(|p| (p.sweep_id.clone(), p))
            .collect();
        Ok(Response::new(proto::ListSweepsResponse {
            sweeps: sweeps
                .into_iter()
                .map(|s| {
                    let p = progress.remove(&s.id).unwrap_or_default();
                    proto::SweepSummary {
                        status: s.visible_status(),
                        sweep_id: s.id,
                        name: s.name,
                        dataset: s.dataset,
                        trials_total: p.total,
                        trials_done: p.done,
                        best_test_accuracy: p.best_test_accuracy.unwrap_or_default(),
                        created_at: s.created_at,
                        best_trial_id: p.best_trial_id.unwrap_or_default(),
                        objective: s.objective,
                    }
                })
                .collect(),
        }))
    }

    type WatchSweepStream = EventStream;

    async fn watch_sweep(
        &self,
        request: Request<proto::WatchSweepRequest>,
    ) -> Result<Response<Self::WatchSweepStream>, Status> {
        let client = request.remote_addr().map(|a| a.ip());
        let id = request.into_inner().sweep_id;
        require_id("sweepId", &id)?;
        let permit = self.streams.acquire(client)?;
        // Subscribe first, then replay history: an event lands in one or both, never neither.
        let mut live = self.scheduler.subscribe();
        let store = self.scheduler.store.clone();
        if store.sweep(&id).await.map_err(internal)?.is_none() {
            return Err(Status::not_found(format!("sweepId: no sweep '{id}'")));
        }
        let (tx, rx) = tokio::sync::mpsc::channel(256);
        let timeout = self.stream_send_timeout;
        tokio::spawn(async move {
            let _permit = permit;
            // False when the client is gone or has not read for `timeout`: end the stream.
            let send = |item: Result<proto::SweepEvent, Status>| {
                let tx = tx.clone();
                async move {
                    match tx.send_timeout(item, timeout).await {
                        Ok(()) => true,
                        Err(tokio::sync::mpsc::error::SendTimeoutError::Timeout(_)) => {
                            tracing::info!(
                                ?client,
                                "closing a WatchSweep stream whose client stopped reading"
                            );
                            false
                        }
                        Err(_) => false,
                    }
                }
            };
            let mut last = 0i64;
            let history = match store.events_after(&id, 0).await {
                Ok(h) => h,
                Err(e) => {
                    send(Err(internal(e))).await;
                    return;
                }
            };
            for e in &history {
                last = e.id;
                if !send(Ok(event_to_proto(e))).await || is_final(e) {
                    return;
                }
            }
            loop {
                let received = tokio::select! {
                    r = live.recv() => r,
                    _ = tx.closed() => return,
                };
                match received {
                    Ok(e) if e.sweep_id == id && e.id > last => {
                        last = e.id;
                        if !send(Ok(event_to_proto(&e))).await || is_final(&e) {
                            return;
                        }
                    }
                    Ok(_) => {}
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                        // Fell behind the live feed: catch up from the store.
                        match store.events_after(&id, last).await {
                            Ok(missed) => {
                                for e in missed {
                                    last = e.id;
                                    if !send(Ok(event_to_proto(&e))).await || is_final(&e) {
                                        return;
                                    }
                                }
                            }
                            Err(e) => {
                                send(Err(internal(e))).await;
                                return;
                            }
                        }
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn cancel_sweep(
        &self,
        request: Request<proto::CancelSweepRequest>,
    ) -> Result<Response<proto::CancelSweepResponse>, Status> {
        let id = request.into_inner().sweep_id;
        require_id("sweepId", &id)?;
        self.open_sweep(&id).await?;
        let n = self.scheduler.cancel_sweep(&id).await.map_err(internal)?;
        Ok(Response::new(proto::CancelSweepResponse {
            trials_cancelled: n,
        }))
    }

    async fn pause_sweep(
        &self,
        request: Request<proto::PauseSweepRequest>,
    ) -> Result<Response<proto::PauseSweepResponse>, Status> {
        let id = request.into_inner().sweep_id;
        self.open_sweep(&id).await?;
        let n = self
            .scheduler
            .set_paused(&id, true)
            .await
            .map_err(internal)?;
        Ok(Response::new(proto::PauseSweepResponse { trials_held: n }))
    }

    async fn resume_sweep(
        &self,
        request: Request<proto::ResumeSweepRequest>,
    ) -> Result<Response<proto::ResumeSweepResponse>, Status> {
        let id = request.into_inner().sweep_id;
        self.open_sweep(&id).await?;
        let n = self
            .scheduler
            .set_paused(&id, false)
            .await
            .map_err(internal)?;
        Ok(Response::new(proto::ResumeSweepResponse {
            trials_released: n,
        }))
    }

    async fn get_trial(
        &self,
        request: Request<proto::GetTrialRequest>,
    ) -> Result<Response<proto::Trial>, Status> {
        let id = request.into_inner().trial_id;
        require_id("trialId", &id)?;
        let store = &self.scheduler.store;
        let t = store
            .trial(&id)
            .await
            .map_err(internal)?
            .ok_or_else(|| Status::not_found(format!("trialId: no trial '{id}'")))?;
        let epochs = store.epochs(&id).await.map_err(internal)?;
        Ok(Response::new(proto::Trial {
            trial_id: t.id.clone(),
            sweep_id: t.sweep_id.clone(),
            index: t.index,
            status: t.status.clone(),
            params: Some(json_object(&t.params)),
            error: t.error.clone().unwrap_or_default(),
            epochs: epochs.iter().map(epoch_to_proto).collect(),
            has_test: t.test_accuracy.is_some(),
            test_loss: t.test_loss.unwrap_or_default(),
            test_accuracy: t.test_accuracy.unwrap_or_default(),
            parameter_count: t.parameter_count.unwrap_or_default(),
            weights_path: t.weights_path.clone().unwrap_or_default(),
            best_epoch: t.best_epoch.unwrap_or_default(),
            worker: t.worker.clone().unwrap_or_default(),
            attempts: t.attempts,
            started_at: t.started_at.clone().unwrap_or_default(),
            finished_at: t.finished_at.clone().unwrap_or_default(),
            train_examples: t.train_examples.unwrap_or_default(),
            val_examples: t.val_examples.unwrap_or_default(),
            test_examples: t.test_examples.unwrap_or_default(),
            device: t.ran_on.clone().unwrap_or_default(),
            notes: suggestion_note(&t)
                .into_iter()
                .chain(t.notes.clone())
                .collect(),
            frozen: t.frozen.clone(),
            reinitialised: t.reinitialised.clone(),
            skipped_files: t.skipped_files,
            provenance: t.provenance.clone().into_iter().collect(),
        }))
    }

    async fn get_status(
        &self,
        _: Request<proto::GetStatusRequest>,
    ) -> Result<Response<proto::Status>, Status> {
        let s = &self.scheduler;
        let counts = s.store.queue_counts().await.map_err(internal)?;
        let workers = s.workers();
        let busy = workers.iter().filter(|w| w.state == "busy").count() as u32;
        let idle = workers.iter().filter(|w| w.state == "idle").count() as u32;
        Ok(Response::new(proto::Status {
            version: env!("CARGO_PKG_VERSION").to_string(),
            uptime_seconds: s.started.elapsed().as_secs_f64(),
            devices: s
                .config
                .devices
                .iter()
                .map(|d| proto::Device {
                    name: d.name.clone(),
                    kind: d.kind.clone(),
                    cores: d.cores,
                    memory_bytes: d.memory_bytes,
                })
                .collect(),
            running: workers
                .iter()
                .filter_map(|w| {
                    w.trial_id.as_ref().map(|t| proto::RunningTrial {
                        trial_id: t.clone(),
                        sweep_id: w.sweep_id.clone().unwrap_or_default(),
                        worker: w.worker_id.clone(),
                        epoch: w.epoch,
                        epochs_planned: w.epochs_planned,
                        val_accuracy: w.val_accuracy,
                        batch: w.batch,
                        batches: w.batches,
                        seconds_since_heartbeat: w
                            .last_heartbeat
                            .map(|t| t.elapsed().as_secs_f64())
                            .unwrap_or_default(),
                    })
                })
                .collect(),
            workers: workers
                .iter()
                .map(|w| proto::Worker {
                    worker_id: w.worker_id.clone(),
                    pid: w.pid,
                    device: w.device.clone(),
                    threads: w.threads,
                    state: w.state.clone(),
                    trial_id: w.trial_id.clone().unwrap_or_default(),
                    trials_done: w.trials_done,
                })
                .collect(),
            workers_busy: busy,
            workers_idle: idle,
            queue_depth: counts.queued,
            libtorch_version: crate::config::LIBTORCH_VERSION.to_string(),
            db_path: s.config.db_path.display().to_string(),
            state_dir: s.config.state_dir.display().to_string(),
        }))
    }

    async fn replay_sweep(
        &self,
        request: Request<proto::ReplaySweepRequest>,
    ) -> Result<Response<proto::ReplaySweepResponse>, Status> {
        let id = request.into_inner().sweep_id;
        let sweep = self.find_sweep(&id).await?;
        let recorded = self
            .scheduler
            .store
            .trials_of(&id)
            .await
            .map_err(internal)?;
        let request: SweepRequest = serde_json::from_value(sweep.spec.clone()).map_err(|e| {
            Status::internal(format!("sweep '{id}': stored request unreadable: {e}"))
        })?;
        let limits = self.scheduler.config.limits;
        let data_dir = self.scheduler.config.data_dir.clone();
        let spec = tokio::task::spawn_blocking(move || request.validate(limits, data_dir.as_deref()))
            .await
            .map_err(|e| Status::internal(format!("replay task: {e}")))?
            .map_err(|e| {
                Status::failed_precondition(format!(
                    "sweep '{id}' no longer validates as stored ({e}); its data set or this daemon's limits changed"
                ))
            })?;
        // tpe: each suggestion again, from the basis recorded with it.
        let histories = match &sweep.tpe {
            Some(_) => self
                .scheduler
                .store
                .objective_histories(&sweep.id)
                .await
                .map_err(internal)?,
            None => Vec::new(),
        };
        let derived_params: Vec<crate::sweep::TrialParams> = spec
            .trials
            .iter()
            .enumerate()
            .map(|(i, base)| {
                let (Some(search), Some(basis)) = (
                    &sweep.tpe,
                    recorded.get(i).and_then(|t| t.suggestion.as_ref()),
                ) else {
                    return base.clone();
                };
                let (all_observed, _) = crate::scheduler::suggestion_inputs(
                    &recorded,
                    &histories,
                    &sweep.objective,
                    "",
                );
                let observed: Vec<(crate::sweep::TrialParams, f64)> = basis
                    .observed
                    .iter()
                    .filter_map(|id| all_observed.iter().find(|(t, _)| t.id == *id))
                    .map(|(t, s)| (t.params.clone(), *s))
                    .collect();
                let pending: Vec<crate::sweep::TrialParams> = basis
                    .pending
                    .iter()
                    .filter_map(|id| recorded.iter().find(|t| t.id == *id))
                    .map(|t| t.params.clone())
                    .collect();
                search.suggest(i as u32, base, &observed, &pending).0
            })
            .collect();
        let mut trials = Vec::with_capacity(spec.trials.len().max(recorded.len()));
        for (i, derived) in derived_params.iter().enumerate() {
            let stored = recorded.get(i);
            let difference = match stored {
                None => "not recorded (the sweep recorded fewer trials)".to_string(),
                Some(t) if t.params == *derived => String::new(),
                Some(t) => describe_difference(&t.params, derived),
            };
            trials.push(proto::ReplayedTrial {
                index: i as u32,
                trial_id: stored.map(|t| t.id.clone()).unwrap_or_default(),
                params: Some(json_object(derived)),
                matches: difference.is_empty(),
                difference,
            });
        }
        for t in recorded.iter().skip(spec.trials.len()) {
            trials.push(proto::ReplayedTrial {
                index: t.index,
                trial_id: t.id.clone(),
                params: None,
                matches: false,
                difference: "recorded but not re-derived".into(),
            });
        }
        Ok(Response::new(proto::ReplaySweepResponse {
            sweep_id: id,
            strategy: sweep.strategy,
            seed: spec.seed,
            identical: trials.iter().all(|t| t.matches),
            trials,
        }))
    }

    async fn predict(
        &self,
        request: Request<proto::PredictRequest>,
    ) -> Result<Response<proto::PredictResponse>, Status> {
        let r = request.into_inner();
        require_id("trialId", &r.trial_id)?;
        if r.images.is_empty() {
            return Err(Status::invalid_argument("images: none given"));
        }
        if r.images.len() > MAX_PREDICT_IMAGES {
            return Err(Status::invalid_argument(format!(
                "images: {} given, at most {MAX_PREDICT_IMAGES} per call",
                r.images.len()
            )));
        }
        let Some(predictor) = self.predictor.clone() else {
            return Err(Status::unimplemented(
                "Predict is not enabled in this daemon",
            ));
        };
        let trial = self
            .scheduler
            .store
            .trial(&r.trial_id)
            .await
            .map_err(internal)?
            .ok_or_else(|| Status::not_found(format!("trialId: no trial '{}'", r.trial_id)))?;
        let response = tokio::task::spawn_blocking(move || predictor.predict(&trial, &r))
            .await
            .map_err(|e| Status::internal(format!("predict task: {e}")))??;
        Ok(Response::new(response))
    }

    async fn render_charts(
        &self,
        request: Request<proto::RenderChartsRequest>,
    ) -> Result<Response<proto::RenderChartsResponse>, Status> {
        let r = request.into_inner();
        require_id("sweepId", &r.sweep_id)?;
        let paths = render_sweep_charts(
            &self.scheduler,
            &self.dashboards_dir,
            &r.sweep_id,
            &r.dashboard,
        )
        .await?;
        Ok(Response::new(proto::RenderChartsResponse {
            paths: paths.iter().map(|p| p.display().to_string()).collect(),
        }))
    }
}

/// The worker protocol: the daemon side of lease, report and finish.
pub struct Hub {
    pub scheduler: Arc<Scheduler>,
    pub metrics: Arc<Metrics>,
}

fn verdict_response(v: Verdict) -> proto::ReportEpochResponse {
    match v {
        Verdict::Proceed => proto::ReportEpochResponse {
            proceed: true,
            stop_reason: String::new(),
        },
        Verdict::Stop(reason) => proto::ReportEpochResponse {
            proceed: false,
            stop_reason: reason,
        },
        Verdict::GiveBack => proto::ReportEpochResponse {
            proceed: false,
            stop_reason: "shutdown".into(),
        },
    }
}

fn refusal(e: crate::scheduler::Refusal) -> Status {
    Status::failed_precondition(e.to_string())
}

#[tonic::async_trait]
impl proto::worker_hub_server::WorkerHub for Hub {
    async fn register(
        &self,
        request: Request<proto::RegisterRequest>,
    ) -> Result<Response<proto::RegisterResponse>, Status> {
        let r = request.into_inner();
        self.scheduler
            .register(&r.worker_id, r.pid, &r.libtorch_version)
            .map_err(|e| Status::not_found(e.to_string()))?;
        tracing::info!(
            worker = r.worker_id,
            pid = r.pid,
            device = r.device,
            threads = r.threads,
            "worker ready"
        );
        Ok(Response::new(proto::RegisterResponse {}))
    }

    async fn lease(
        &self,
        request: Request<proto::LeaseRequest>,
    ) -> Result<Response<proto::LeaseResponse>, Status> {
        let r = request.into_inner();
        let lease = self
            .scheduler
            .lease(&r.worker_id)
            .await
            .map_err(|e| Status::not_found(e.to_string()))?;
        let Some(lease) = lease else {
            return Ok(Response::new(proto::LeaseResponse::default()));
        };
        let config = &self.scheduler.config;
        // Checked at submit; a source deleted since then fails the trial in the worker,
        // which reports the path it could not read.
        let init_weights_path = if lease.params.init_from.is_empty() {
            String::new()
        } else {
            match init_weights(&self.scheduler, &lease.params.init_from).await {
                Ok(path) => path.display().to_string(),
                Err(status) => format!("unresolved: {}", status.message()),
            }
        };
        let trial_dir = config.state_dir.join("trials").join(&lease.trial_id);
        let weights = trial_dir.join("best.safetensors");
        let checkpoint = trial_dir.join("checkpoint.safetensors");
        tracing::info!(
            trial = lease.trial_id,
            worker = r.worker_id,
            attempt = lease.attempt,
            "trial leased"
        );
        Ok(Response::new(proto::LeaseResponse {
            trial_id: lease.trial_id,
            generation: lease.generation,
            dataset: lease.dataset,
            data_dir: config
                .data_dir
                .as_ref()
                .map(|d| d.display().to_string())
                .unwrap_or_default(),
            params_json: serde_json::to_string(&lease.params)
                .map_err(|e| Status::internal(e.to_string()))?,
            weights_path: weights.display().to_string(),
            checkpoint_path: checkpoint.display().to_string(),
            epochs_recorded: lease.epochs_recorded,
            attempt: lease.attempt,
            init_weights_path,
        }))
    }

    async fn report_epoch(
        &self,
        request: Request<proto::ReportEpochRequest>,
    ) -> Result<Response<proto::ReportEpochResponse>, Status> {
        let r = request.into_inner();
        let epoch = EpochRow {
            epoch: r.epoch,
            train_loss: r.train_loss,
            train_accuracy: r.train_accuracy,
            val_loss: r.val_loss,
            val_accuracy: r.val_accuracy,
            seconds: r.seconds,
            images_per_second: r.images_per_second,
        };
        let facts = (r.parameter_count > 0).then_some(TrialFacts {
            parameter_count: r.parameter_count,
            train_examples: r.train_examples,
            val_examples: r.val_examples,
            test_examples: r.test_examples,
            notes: r.notes,
            frozen: r.frozen,
            reinitialised: r.reinitialised,
            skipped_files: r.skipped_files,
            provenance: r.provenance.into_iter().collect(),
        });
        let verdict = self
            .scheduler
            .report_epoch(&r.trial_id, r.generation, &epoch, facts.as_ref())
            .await
            .map_err(internal)?
            .map_err(refusal)?;
        self.metrics.epoch_recorded();
        Ok(Response::new(verdict_response(verdict)))
    }

    async fn heartbeat(
        &self,
        request: Request<proto::HeartbeatRequest>,
    ) -> Result<Response<proto::HeartbeatResponse>, Status> {
        let r = request.into_inner();
        let v = verdict_response(self.scheduler.heartbeat(
            &r.worker_id,
            &r.trial_id,
            r.generation,
            r.batch,
            r.batches,
        ));
        Ok(Response::new(proto::HeartbeatResponse {
            proceed: v.proceed,
            stop_reason: v.stop_reason,
        }))
    }

    async fn release_trial(
        &self,
        request: Request<proto::ReleaseTrialRequest>,
    ) -> Result<Response<proto::ReleaseTrialResponse>, Status> {
        let r = request.into_inner();
        let taken = self
            .scheduler
            .give_back(&r.worker_id, &r.trial_id, r.generation, &r.reason)
            .await
            .map_err(internal)?;
        if !taken {
            return Err(Status::failed_precondition(format!(
                "stale lease: worker {} does not hold trial {} at generation {}",
                r.worker_id, r.trial_id, r.generation
            )));
        }
        tracing::info!(
            trial = r.trial_id,
            worker = r.worker_id,
            reason = r.reason,
            "trial given back; queued again"
        );
        Ok(Response::new(proto::ReleaseTrialResponse {}))
    }

    async fn finish_trial(
        &self,
        request: Request<proto::FinishTrialRequest>,
    ) -> Result<Response<proto::FinishTrialResponse>, Status> {
        let r = request.into_inner();
        let result = TrialResult {
            status: r.status.clone(),
            error: (!r.error.is_empty()).then(|| r.error.clone()),
            test_loss: r.has_test.then_some(r.test_loss),
            test_accuracy: r.has_test.then_some(r.test_accuracy),
            best_epoch: (r.best_epoch > 0).then_some(r.best_epoch),
            weights_path: (!r.weights_path.is_empty()).then(|| r.weights_path.clone()),
            parameter_count: (r.parameter_count > 0).then_some(r.parameter_count),
        };
        if !matches!(
            r.status.as_str(),
            "succeeded" | "failed" | "pruned" | "parked"
        ) {
            return Err(Status::invalid_argument(format!(
                "status: '{}' is not succeeded, failed, pruned or parked",
                r.status
            )));
        }
        tracing::info!(
            trial = r.trial_id,
            status = r.status,
            test_accuracy = r.test_accuracy,
            error = r.error,
            "trial finished"
        );
        self.scheduler
            .finish_trial(&r.worker_id, &r.trial_id, r.generation, &result)
            .await
            .map_err(internal)?
            .map_err(refusal)?;
        Ok(Response::new(proto::FinishTrialResponse {}))
    }
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
    use crate::sweep::{SweepLimits, SweepRequest};

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
        );
        let request: SweepRequest = serde_json::from_value(serde_json::json!({
            "name": "lagged", "dataset": "mnist", "space": {"kernelSize": [3, 5]},
            "fixed": {"epochs": 1}}))
        .unwrap();
        let spec = request.validate(SweepLimits::default(), None).unwrap();
        let (sweep_id, _) = scheduler.submit(&spec, u32::MAX).await.unwrap().unwrap();
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
