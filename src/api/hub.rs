//! The worker protocol, the daemon's side (`cnn.v1.WorkerHub`): registration (with the
//! protocol check), leases (the trial's data set, its data manifest, checkpoint and initial
//! weights, all by digest), epoch reports and heartbeats (their answers say whether to go
//! on), releases and finishes (results uploaded first), Predict jobs, and files in both
//! directions by content (`FetchFile`, `UploadOffset`, `UploadFile`).
//!
//! Owns: converting the protocol's messages. Must not touch: SQL, processes.

use std::io::Read;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use cnnd_core::content::{Digest, FileRef, CHECKPOINT_FORMAT, UNKNOWN_WORKER_HINT};
use cnnd_core::epoch::EpochRecord;
use cnnd_core::status::TrialStatus;
use cnnd_proto as proto;
use cnnd_proto::lease_response::InitWeights;
use futures::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

use super::errors::{internal, refusal};
use super::init_from;
use crate::blobs::UploadError;
use crate::metrics::Metrics;
use crate::scheduler::{RegisterError, Registration, Scheduler, Verdict};
use crate::store::{TrialFacts, TrialResult};

/// How long a `NextPredict` call waits for a job before answering "none".
const PREDICT_POLL: Duration = Duration::from_secs(5);

/// Chunk size of file transfers, agreed at registration: well under tonic's 4 MiB default
/// message limit.
pub const CHUNK_BYTES: u32 = 1 << 20;

/// A file reference from the wire, checked (its digest is 64 hex characters).
fn file_ref(f: &proto::FileRef, field: &str) -> Result<FileRef, Status> {
    f.checked(field).map_err(Status::invalid_argument)
}

fn to_wire(f: &FileRef) -> proto::FileRef {
    f.into()
}

/// A data preview from a worker, checked. A bad one is left out with a warning: it is an
/// illustration, and the epoch it came with must still be recorded.
fn data_preview(trial_id: &str, json: &str) -> Option<String> {
    if json.is_empty() {
        return None;
    }
    let checked = serde_json::from_str::<cnnd_core::data_preview::DataPreview>(json)
        .map_err(|e| format!("not a data preview: {e}"))
        .and_then(|p| p.check());
    match checked {
        Ok(()) => Some(json.to_string()),
        Err(why) => {
            tracing::warn!(trial = trial_id, "data preview left out: {why}");
            None
        }
    }
}

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
        let peer = request.remote_addr();
        let r = request.into_inner();
        let registration = Registration {
            name: r.name.clone(),
            host: r.host.clone(),
            pid: r.pid,
            device: r.device.clone(),
            threads: r.threads,
            cnnd_version: r.cnnd_version.clone(),
            libtorch_version: r.libtorch_version.clone(),
            protocol: r.protocol.clone(),
            checkpoint_format: r.checkpoint_format,
            slot: (!r.slot.is_empty()).then(|| r.slot.clone()),
            held: r
                .held
                .iter()
                .map(|h| (h.trial_id.clone(), h.generation))
                .collect(),
            devices: r.devices.iter().map(Into::into).collect(),
            launcher_job: r.launcher_job.clone(),
        };
        let registered = self
            .scheduler
            .register(registration)
            .await
            .map_err(|e| match e {
                RegisterError::Incompatible(m) => Status::failed_precondition(m),
                RegisterError::UnknownSlot(m) => Status::not_found(m),
            })?;
        tracing::info!(
            worker = registered.worker_id,
            host = r.host,
            ?peer,
            pid = r.pid,
            device = r.device,
            threads = r.threads,
            libtorch = r.libtorch_version,
            kept = ?registered.kept,
            "worker ready"
        );
        if r.checkpoint_format != CHECKPOINT_FORMAT {
            tracing::warn!(
                worker = registered.worker_id,
                "it reads checkpoint format {}, this daemon's trials are checkpointed in {CHECKPOINT_FORMAT}: it gets only trials without a checkpoint",
                r.checkpoint_format
            );
        }
        Ok(Response::new(proto::RegisterResponse {
            worker_id: registered.worker_id,
            chunk_bytes: CHUNK_BYTES,
            lease_timeout_secs: self.scheduler.config.lease_timeout.as_secs().max(1) as u32,
            kept: registered
                .kept
                .into_iter()
                .map(|(trial_id, generation)| proto::HeldLease {
                    trial_id,
                    generation,
                })
                .collect(),
        }))
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
            // Nothing to train: a cluster worker idle long enough, beyond the launcher's
            // minimum, is told to exit (its job ends and frees the node).
            let retire = self.scheduler.retire_if_surplus(&r.worker_id);
            return Ok(Response::new(proto::LeaseResponse {
                retire,
                ..Default::default()
            }));
        };
        // Checked at submit; a source gone since then fails the trial in the worker, which
        // reports why.
        let init_weights = if lease.params.init_from.is_empty() {
            None
        } else {
            Some(
                match init_from::weights(&self.scheduler, &lease.params.init_from).await {
                    Ok(file) => InitWeights::InitWeightsFile(to_wire(&file)),
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
        let manifest = lease.manifest_digest.as_ref().map(|digest| proto::FileRef {
            name: "manifest.json".into(),
            size: digest
                .parse::<Digest>()
                .ok()
                .and_then(|d| std::fs::metadata(self.scheduler.blobs.path(&d)).ok())
                .map_or(0, |m| m.len()),
            digest: digest.clone(),
        });
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
            manifest,
            params_json: serde_json::to_string(&lease.params)
                .map_err(|e| Status::internal(e.to_string()))?,
            epochs_recorded: lease.epochs_recorded,
            checkpoint: lease.checkpoint.as_ref().map(to_wire),
            attempt: lease.attempt,
            init_weights,
            retire: false,
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
            data_preview: data_preview(&r.trial_id, &f.data_preview_json),
        });
        let checkpoint = match &r.checkpoint {
            Some(c) => {
                let c = file_ref(c, "checkpoint")?;
                if self.scheduler.blobs.get(&c).is_none() {
                    return Err(Status::failed_precondition(format!(
                        "checkpoint: {} ({} bytes) is not uploaded; upload it before the report",
                        c.digest, c.size
                    )));
                }
                Some(c)
            }
            None => None,
        };
        let verdict = self
            .scheduler
            .report_epoch(
                &r.trial_id,
                r.generation,
                &epoch,
                facts.as_ref(),
                checkpoint.as_ref(),
            )
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
        self.known(&r.worker_id)?;
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
        // Results come home before the finish is taken: the weights and the input record
        // must be in the blob store.
        let blobs = &self.scheduler.blobs;
        let uploaded = |f: &Option<proto::FileRef>,
                        field: &str|
         -> Result<Option<(FileRef, std::path::PathBuf)>, Status> {
            let Some(f) = f else { return Ok(None) };
            let f = file_ref(f, field)?;
            match blobs.get(&f) {
                Some(path) => Ok(Some((f, path))),
                None => Err(Status::failed_precondition(format!(
                    "{field}: {} ({} bytes) is not uploaded; upload it before FinishTrial",
                    f.digest, f.size
                ))),
            }
        };
        let weights = uploaded(&r.weights, "weights")?;
        let input_record = match uploaded(&r.input_record, "inputRecord")? {
            Some((_, path)) => Some(
                std::fs::read_to_string(&path)
                    .map_err(|e| Status::internal(format!("reading {}: {e}", path.display())))?,
            ),
            None => None,
        };
        let test_report = if r.test_report_json.is_empty() {
            None
        } else {
            let report: cnnd_core::test_report::TestReport =
                serde_json::from_str(&r.test_report_json).map_err(|e| {
                    Status::invalid_argument(format!("testReportJson: not a test report: {e}"))
                })?;
            report
                .check()
                .map_err(|why| Status::invalid_argument(format!("testReportJson: {why}")))?;
            Some(r.test_report_json.clone())
        };
        let result = TrialResult {
            test_report,
            status,
            error: (!r.error.is_empty()).then(|| r.error.clone()),
            test_loss: r.has_test.then_some(r.test_loss),
            test_accuracy: r.has_test.then_some(r.test_accuracy),
            best_epoch: (r.best_epoch > 0).then_some(r.best_epoch),
            weights_path: weights.as_ref().map(|(_, p)| p.display().to_string()),
            parameter_count: (r.parameter_count > 0).then_some(r.parameter_count),
            weights: weights.map(|(f, _)| f),
            input_record,
            note: (!r.note.is_empty()).then(|| r.note.clone()),
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
        self.known(&worker_id)?;
        self.scheduler.seen(&worker_id);
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

    type FetchFileStream = Pin<Box<dyn Stream<Item = Result<proto::FileChunk, Status>> + Send>>;

    async fn fetch_file(
        &self,
        request: Request<proto::FetchFileRequest>,
    ) -> Result<Response<Self::FetchFileStream>, Status> {
        let r = request.into_inner();
        self.scheduler.seen(&r.worker_id);
        let digest = r
            .digest
            .parse::<Digest>()
            .map_err(|e| Status::invalid_argument(format!("digest: {e}")))?;
        // A served data file is checked against its digest, which may mean hashing it
        // again (it changed on disk): file I/O, off the async threads.
        let scheduler = self.scheduler.clone();
        let (mut file, size) =
            tokio::task::spawn_blocking(move || scheduler.blobs.open_for_fetch(&digest))
                .await
                .map_err(|e| Status::internal(format!("fetching a file: {e}")))?
                .map_err(internal)?
                .ok_or_else(|| {
                    Status::not_found(format!("digest: this daemon has no file {}", r.digest))
                })?;
        if r.offset > size {
            return Err(Status::out_of_range(format!(
                "offset: {} is past the end of {} ({size} bytes)",
                r.offset, r.digest
            )));
        }
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let offset = r.offset;
        tokio::task::spawn_blocking(move || {
            use std::io::{Seek, SeekFrom};
            let mut at = offset;
            if let Err(e) = file.seek(SeekFrom::Start(at)) {
                let _ = tx.blocking_send(Err(Status::internal(e.to_string())));
                return;
            }
            let mut buf = vec![0u8; CHUNK_BYTES as usize];
            loop {
                let n = match file.read(&mut buf) {
                    Ok(0) => return,
                    Ok(n) => n,
                    Err(e) => {
                        let _ = tx.blocking_send(Err(Status::internal(e.to_string())));
                        return;
                    }
                };
                let chunk = proto::FileChunk {
                    offset: at,
                    data: buf[..n].to_vec(),
                    size,
                };
                at += n as u64;
                if tx.blocking_send(Ok(chunk)).is_err() {
                    return; // the worker hung up
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn upload_offset(
        &self,
        request: Request<proto::UploadOffsetRequest>,
    ) -> Result<Response<proto::UploadOffsetResponse>, Status> {
        let r = request.into_inner();
        self.check_holder(&r.worker_id, &r.trial_id, r.generation)?;
        let file = file_ref(
            r.file
                .as_ref()
                .ok_or_else(|| Status::invalid_argument("file: missing"))?,
            "file",
        )?;
        let offset = self
            .scheduler
            .blobs
            .upload_offset(&file)
            .map_err(internal)?;
        Ok(Response::new(proto::UploadOffsetResponse { offset }))
    }

    async fn upload_file(
        &self,
        request: Request<Streaming<proto::UploadChunk>>,
    ) -> Result<Response<proto::UploadFileResponse>, Status> {
        let mut chunks = request.into_inner();
        let mut file: Option<FileRef> = None;
        while let Some(chunk) = chunks.next().await {
            let chunk = chunk?;
            let current = match &file {
                Some(f) => f.clone(),
                None => {
                    self.check_holder(&chunk.worker_id, &chunk.trial_id, chunk.generation)?;
                    let f = file_ref(
                        chunk.file.as_ref().ok_or_else(|| {
                            Status::invalid_argument("file: missing in the first chunk")
                        })?,
                        "file",
                    )?;
                    file = Some(f.clone());
                    f
                }
            };
            let blobs = &self.scheduler.blobs;
            blobs
                .append(&current, chunk.offset, &chunk.data)
                .map_err(upload_status)?;
        }
        let file = file.ok_or_else(|| Status::invalid_argument("an upload without chunks"))?;
        // Finishing hashes the whole file: off the async threads.
        let scheduler = self.scheduler.clone();
        tokio::task::spawn_blocking(move || scheduler.blobs.finish_upload(&file))
            .await
            .map_err(|e| Status::internal(format!("finishing an upload: {e}")))?
            .map_err(upload_status)?;
        Ok(Response::new(proto::UploadFileResponse {}))
    }
}

impl Hub {
    /// A worker this daemon does not know is told to register again (after a restart, it
    /// declares the lease it still trains).
    fn known(&self, worker_id: &str) -> Result<(), Status> {
        if self.scheduler.knows(worker_id) {
            Ok(())
        } else {
            Err(Status::not_found(format!(
                "unknown worker '{worker_id}': {UNKNOWN_WORKER_HINT} (the daemon may have restarted)"
            )))
        }
    }

    /// Uploads come only from the worker holding the trial's live lease.
    fn check_holder(&self, worker_id: &str, trial_id: &str, generation: u64) -> Result<(), Status> {
        self.known(worker_id)?;
        self.scheduler.seen(worker_id);
        if self.scheduler.holds(worker_id, trial_id, generation) {
            Ok(())
        } else {
            Err(Status::failed_precondition(format!(
                "stale lease: worker {worker_id} does not hold trial {trial_id} at generation {generation}"
            )))
        }
    }
}

fn upload_status(e: UploadError) -> Status {
    match e {
        UploadError::WrongOffset { .. } => Status::out_of_range(e.to_string()),
        UploadError::TooLong { .. } | UploadError::Corrupt { .. } => {
            Status::data_loss(e.to_string())
        }
        UploadError::Io(e) => internal(e),
    }
}
