//! `cnn.v1.Orchestrator`: the public API. Submitting (validation, the queue limit), reading
//! sweeps and trials, pausing and cancelling, the daemon's status, replays, Predict (as a
//! job for the workers) and charts. Watching a sweep is [`super::watch`]'s.
//!
//! Owns: the handlers. Must not touch: SQL, processes, libtorch.

use std::pin::Pin;
use std::sync::Arc;

use cnnd_core::status::WorkerState;
use cnnd_core::sweep::{DeviceRequest, Objective, SpecError, SweepRequest};
use cnnd_proto::{self as proto, struct_from_json, struct_to_json};
use futures::Stream;
use tonic::{Request, Response, Status};

use super::convert::{
    data_preview_message, dataset_notes, describe_difference, json_object, suggestion_note,
    test_report_message, trial_summary,
};
use super::{charts, internal, require_id, watch, Api, MAX_PREDICT_IMAGES};
use crate::datasets;

/// Why a submission is refused: the caller's request, or the daemon's disk.
enum Submit {
    Invalid(SpecError),
    Internal(anyhow::Error),
}
use crate::scheduler::suggestion_inputs;

pub(super) type EventStream = Pin<Box<dyn Stream<Item = Result<proto::SweepEvent, Status>> + Send>>;

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
        // Image folders are listed and data files hashed from disk: off the async threads.
        let limits = self.scheduler.config.limits;
        let data_dir = self.scheduler.config.data_dir.clone();
        let scheduler = self.scheduler.clone();
        let (spec, notes, manifest) = tokio::task::spawn_blocking(move || {
            let mut resolved = None;
            let spec = sweep_request.validate(limits, |name| {
                let r = datasets::resolve_with_layout(name, data_dir.as_deref())?;
                let info = r.info.clone();
                resolved = Some(r);
                Ok(info)
            })
            .map_err(Submit::Invalid)?;
            let notes = dataset_notes(&spec);
            // Workers read the data only through the manifest: every file, by digest.
            let (Some(resolved), Some(data_dir)) = (resolved, data_dir) else {
                return Err(Submit::Invalid(SpecError::new(
                    "dataset",
                    "this daemon has no data directory to serve the data set from; start cnnd with --data-dir (or CNND_DATA_DIR)",
                )));
            };
            datasets::files_of(&resolved, &data_dir)
                .map_err(|e| Submit::Invalid(SpecError::new("dataset", e.to_string())))?;
            let manifest =
                datasets::manifest(&resolved, &data_dir, &scheduler.blobs).map_err(Submit::Internal)?;
            Ok((spec, notes, manifest))
        })
        .await
        .map_err(|e| Status::internal(format!("validation task: {e}")))?
        .map_err(|e| match e {
            Submit::Invalid(e) if e.denied => Status::permission_denied(e.to_string()),
            Submit::Invalid(e) => Status::invalid_argument(e.to_string()),
            Submit::Internal(e) => Status::internal(format!("dataset: {e:#}")),
        })?;
        self.check_init_from(&spec).await?;
        if spec.device == DeviceRequest::Cuda && !self.scheduler.has_cuda() {
            return Err(Status::invalid_argument(
                "device: 'cuda' was requested but this daemon sees no CUDA device; use auto or cpu",
            ));
        }
        let (sweep_id, trials) = self
            .scheduler
            .submit(&spec, Some(&manifest), self.max_queued_trials)
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
        let objective = Objective::from_name(&sweep.objective);
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
        watch::watch_sweep(self, request).await
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
        let model_summary = self.model_summary(&t).await.map_err(internal)?;
        let pictures = store.trial_pictures(&id).await.map_err(internal)?;
        Ok(Response::new(proto::Trial {
            model_summary,
            trial_id: t.id.clone(),
            sweep_id: t.sweep_id.clone(),
            index: t.index,
            status: t.status.to_string(),
            params: Some(json_object(&t.params)),
            error: t.error.clone().unwrap_or_default(),
            epochs: epochs.iter().map(Into::into).collect(),
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
            test_report: pictures
                .test_report
                .and_then(|json| test_report_message(&json)),
            data_preview: pictures
                .data_preview
                .and_then(|json| data_preview_message(&json)),
        }))
    }

    async fn get_status(
        &self,
        _: Request<proto::GetStatusRequest>,
    ) -> Result<Response<proto::Status>, Status> {
        let s = &self.scheduler;
        let counts = s.store.queue_counts().await.map_err(internal)?;
        let workers = s.workers();
        let busy = workers
            .iter()
            .filter(|w| w.state == WorkerState::Busy)
            .count() as u32;
        let idle = workers
            .iter()
            .filter(|w| w.state == WorkerState::Idle)
            .count() as u32;
        // The daemon has no libtorch: the versions its workers registered with.
        let mut libtorch: Vec<&str> = workers
            .iter()
            .map(|w| w.libtorch_version.as_str())
            .filter(|v| !v.is_empty())
            .collect();
        libtorch.sort_unstable();
        libtorch.dedup();
        Ok(Response::new(proto::Status {
            version: env!("CARGO_PKG_VERSION").to_string(),
            uptime_seconds: s.started.elapsed().as_secs_f64(),
            devices: s.devices().iter().map(Into::into).collect(),
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
                    state: w.state.to_string(),
                    trial_id: w.trial_id.clone().unwrap_or_default(),
                    trials_done: w.trials_done,
                    host: w.host.clone(),
                    name: w.name.clone(),
                    version: w.cnnd_version.clone(),
                    libtorch_version: w.libtorch_version.clone(),
                    epoch: w.epoch,
                    seconds_since_seen: w
                        .last_seen
                        .map(|t| t.elapsed().as_secs_f64())
                        .unwrap_or_default(),
                    slot: w.slot.clone().unwrap_or_default(),
                    launcher_job: w.launcher_job.clone(),
                })
                .collect(),
            workers_busy: busy,
            workers_idle: idle,
            queue_depth: counts.queued,
            libtorch_version: libtorch.join(", "),
            db_path: crate::store::display_db(&s.config.db_path),
            state_dir: s.config.state_dir.display().to_string(),
            launcher: Some(launcher_to_wire(&s.launcher_view())),
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
        let spec = tokio::task::spawn_blocking(move || {
            request.validate(limits, |name| datasets::resolve(name, data_dir.as_deref()))
        })
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
        let derived_params: Vec<cnnd_core::sweep::TrialParams> = spec
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
                let (all_observed, _) =
                    suggestion_inputs(&recorded, &histories, &sweep.objective, "");
                let observed: Vec<(cnnd_core::sweep::TrialParams, f64)> = basis
                    .observed
                    .iter()
                    .filter_map(|id| all_observed.iter().find(|(t, _)| t.id == *id))
                    .map(|(t, s)| (t.params.clone(), *s))
                    .collect();
                let pending: Vec<cnnd_core::sweep::TrialParams> = basis
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
        let trial = self
            .scheduler
            .store
            .trial(&r.trial_id)
            .await
            .map_err(internal)?
            .ok_or_else(|| Status::not_found(format!("trialId: no trial '{}'", r.trial_id)))?;
        let (Some(weights), Some(input_record)) = (&trial.weights, &trial.input_record) else {
            return Err(Status::failed_precondition(format!(
                "trialId: trial '{}' has no saved weights yet (status {})",
                trial.id, trial.status
            )));
        };
        if self.scheduler.blobs.get(weights).is_none() {
            return Err(Status::failed_precondition(format!(
                "trialId: trial '{}' recorded weights {} that are no longer in this daemon's blob store",
                trial.id, weights.digest
            )));
        }
        // Predict runs on the workers (the daemon has no libtorch).
        if self.scheduler.connected_workers() == 0 {
            return Err(Status::unavailable(
                "Predict runs on the workers and none is connected; wait for this daemon's workers to start, or start one (cnnd-worker)",
            ));
        }
        let job = proto::PredictJob {
            job_id: String::new(),
            trial_id: trial.id.clone(),
            params_json: serde_json::to_string(&trial.params)
                .map_err(|e| Status::internal(e.to_string()))?,
            weights: Some(weights.into()),
            input_record_json: input_record.clone(),
            request: Some(r),
            max_image_bytes: self.max_image_bytes,
            max_image_pixels: self.max_image_pixels,
        };
        let response = self
            .scheduler
            .predict_jobs
            .run(job, self.predict_timeout)
            .await?;
        Ok(Response::new(response))
    }

    async fn render_charts(
        &self,
        request: Request<proto::RenderChartsRequest>,
    ) -> Result<Response<proto::RenderChartsResponse>, Status> {
        let r = request.into_inner();
        require_id("sweepId", &r.sweep_id)?;
        let paths = charts::render_sweep_charts(
            &self.scheduler,
            &self.dashboards_dir,
            &r.sweep_id,
            &r.dashboard,
        )
        .await?;
        let mut rendered = Vec::with_capacity(paths.len());
        for path in &paths {
            let data = if r.include_bytes {
                tokio::fs::read(path).await.map_err(|e| {
                    Status::internal(format!("reading the chart {}: {e}", path.display()))
                })?
            } else {
                Vec::new()
            };
            rendered.push(proto::Chart {
                name: path
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default(),
                media_type: "image/png".into(),
                data,
                path: path.display().to_string(),
            });
        }
        Ok(Response::new(proto::RenderChartsResponse {
            paths: paths.iter().map(|p| p.display().to_string()).collect(),
            charts: rendered,
        }))
    }
}

/// The launcher's view as `GetStatus` carries it.
fn launcher_to_wire(v: &crate::scheduler::LauncherView) -> proto::Launcher {
    proto::Launcher {
        kind: v.kind.clone(),
        min_workers: v.min_workers,
        max_workers: v.max_workers,
        wanted: v.wanted,
        starting: v.starting,
        running: v.running,
        idle: v.idle,
        jobs: v
            .jobs
            .iter()
            .map(|j| proto::LauncherJob {
                job: j.job.clone(),
                state: j.state.clone(),
                reason: j.reason.clone(),
                worker_id: j.worker_id.clone().unwrap_or_default(),
                device: j.device.clone(),
                seconds_since_submit: j.submitted.elapsed().as_secs_f64(),
            })
            .collect(),
        last_error: v
            .last_error
            .as_ref()
            .map(|(e, _)| e.clone())
            .unwrap_or_default(),
        seconds_since_last_error: v
            .last_error
            .as_ref()
            .map_or(0.0, |(_, t)| t.elapsed().as_secs_f64()),
    }
}
