//! The worker protocol, the daemon's side (`cnn.v1.WorkerHub`): registration, leases (with
//! the trial's data set as this daemon resolved it), epoch reports and heartbeats (their
//! answers say whether to go on), releases and finishes, and Predict jobs.
//!
//! Owns: converting the protocol's messages. Must not touch: SQL, processes.

use std::sync::Arc;
use std::time::Duration;

use cnnd_core::epoch::EpochRecord;
use cnnd_core::status::TrialStatus;
use cnnd_proto as proto;
use cnnd_proto::lease_response::InitWeights;
use tonic::{Request, Response, Status};

use super::errors::{internal, refusal};
use super::init_from;
use crate::metrics::Metrics;
use crate::scheduler::{Scheduler, Verdict};
use crate::store::{TrialFacts, TrialResult};

/// How long a `NextPredict` call waits for a job before answering "none".
const PREDICT_POLL: Duration = Duration::from_secs(5);

/// The worker protocol: the daemon side of lease, report and finish.
pub struct Hub {
    pub scheduler: Arc<Scheduler>,
    pub metrics: Arc<Metrics>,
}

/// A verdict on the wire: unset to go on.
fn stop(verdict: &Verdict) -> Option<proto::Stop> {
    verdict.as_ref().map(proto::Stop::from)
}

#[tonic::async_trait]
impl proto::worker_hub_server::WorkerHub for Hub {
    async fn register(
        &self,
        request: Request<proto::RegisterRequest>,
    ) -> Result<Response<proto::RegisterResponse>, Status> {
        let r = request.into_inner();
        let devices = r.devices.iter().map(Into::into).collect();
        self.scheduler
            .register(&r.worker_id, r.pid, &r.libtorch_version, devices)
            .map_err(|e| Status::not_found(e.to_string()))?;
        tracing::info!(
            worker = r.worker_id,
            pid = r.pid,
            device = r.device,
            threads = r.threads,
            libtorch = r.libtorch_version,
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
        // Checked at submit; a source gone since then fails the trial in the worker, which
        // reports why.
        let init_weights = if lease.params.init_from.is_empty() {
            None
        } else {
            Some(
                match init_from::weights(&self.scheduler, &lease.params.init_from).await {
                    Ok(path) => InitWeights::InitWeightsPath(path.display().to_string()),
                    Err(status) => InitWeights::InitWeightsError(status.message().to_string()),
                },
            )
        };
        // Resolved at submit; a folder gone since then leaves the worker nothing to read,
        // and it fails the trial naming the data set.
        let dataset = self
            .scheduler
            .dataset_of(&lease.sweep_id, &lease.dataset)
            .await;
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
            dataset_json: dataset
                .as_ref()
                .map(|d| d.info_json.clone())
                .unwrap_or_default(),
            layout_json: dataset
                .as_ref()
                .map(|d| d.layout_json.clone())
                .unwrap_or_default(),
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
            init_weights,
        }))
    }

    async fn report_epoch(
        &self,
        request: Request<proto::ReportEpochRequest>,
    ) -> Result<Response<proto::ReportEpochResponse>, Status> {
        let r = request.into_inner();
        let epoch: EpochRecord = r
            .metrics
            .as_ref()
            .ok_or_else(|| Status::invalid_argument("metrics: missing"))?
            .into();
        let facts = r.facts.map(|f| TrialFacts {
            parameter_count: f.parameter_count,
            train_examples: f.train_examples,
            val_examples: f.val_examples,
            test_examples: f.test_examples,
            notes: f.notes,
            frozen: f.frozen,
            reinitialised: f.reinitialised,
            skipped_files: f.skipped_files,
            provenance: f.provenance.into_iter().collect(),
        });
        let verdict = self
            .scheduler
            .report_epoch(&r.trial_id, r.generation, &epoch, facts.as_ref())
            .await
            .map_err(internal)?
            .map_err(refusal)?;
        self.metrics.epoch_recorded();
        Ok(Response::new(proto::ReportEpochResponse {
            stop: stop(&verdict),
        }))
    }

    async fn heartbeat(
        &self,
        request: Request<proto::HeartbeatRequest>,
    ) -> Result<Response<proto::HeartbeatResponse>, Status> {
        let r = request.into_inner();
        let verdict =
            self.scheduler
                .heartbeat(&r.worker_id, &r.trial_id, r.generation, r.batch, r.batches);
        Ok(Response::new(proto::HeartbeatResponse {
            stop: stop(&verdict),
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
        let status = r
            .status
            .parse::<TrialStatus>()
            .ok()
            .filter(|s| s.is_a_finish())
            .ok_or_else(|| {
                Status::invalid_argument(format!(
                    "status: '{}' is not succeeded, failed, pruned or parked",
                    r.status
                ))
            })?;
        let result = TrialResult {
            status,
            error: (!r.error.is_empty()).then(|| r.error.clone()),
            test_loss: r.has_test.then_some(r.test_loss),
            test_accuracy: r.has_test.then_some(r.test_accuracy),
            best_epoch: (r.best_epoch > 0).then_some(r.best_epoch),
            weights_path: (!r.weights_path.is_empty()).then(|| r.weights_path.clone()),
            parameter_count: (r.parameter_count > 0).then_some(r.parameter_count),
        };
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

    async fn next_predict(
        &self,
        request: Request<proto::NextPredictRequest>,
    ) -> Result<Response<proto::PredictJob>, Status> {
        let worker_id = request.into_inner().worker_id;
        let job = self
            .scheduler
            .predict_jobs
            .next(&worker_id, PREDICT_POLL)
            .await
            .unwrap_or_default();
        Ok(Response::new(job))
    }

    async fn finish_predict(
        &self,
        request: Request<proto::FinishPredictRequest>,
    ) -> Result<Response<proto::FinishPredictResponse>, Status> {
        let r = request.into_inner();
        let answer = match r.outcome {
            Some(proto::finish_predict_request::Outcome::Response(response)) => Ok(response),
            Some(proto::finish_predict_request::Outcome::Failure(f)) => {
                Err(Status::new(tonic::Code::from(f.code), f.message))
            }
            None => Err(Status::internal(format!(
                "worker {} answered Predict job {} with nothing",
                r.worker_id, r.job_id
            ))),
        };
        if !self
            .scheduler
            .predict_jobs
            .finish(&r.worker_id, &r.job_id, answer)
        {
            return Err(Status::failed_precondition(format!(
                "job: nobody waits for Predict job {} from worker {} any more",
                r.job_id, r.worker_id
            )));
        }
        Ok(Response::new(proto::FinishPredictResponse {}))
    }
}
