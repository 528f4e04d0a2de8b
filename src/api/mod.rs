//! The gRPC surface: the public `cnn.v1.Orchestrator` service for clients
//! ([`orchestrator`], [`watch`]) and the `cnn.v1.WorkerHub` service for worker processes
//! ([`hub`]). It converts between wire messages and the scheduler/store types
//! ([`convert`]), maps errors to gRPC statuses ([`errors`]: every refusal names the field and
//! the reason), and renders charts from store data ([`charts`]).
//!
//! Must not touch: SQL (the store owns it), worker processes (the scheduler owns them),
//! libtorch (the trainer's).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use cnnd_core::status::SweepStatus;
use cnnd_core::sweep::SweepSpec;
use cnnd_proto as proto;
use tonic::Status;

use crate::limits::StreamQuota;
use crate::scheduler::Scheduler;
use crate::store::SweepRow;
use errors::{internal, require_id};

pub mod charts;
mod convert;
mod errors;
pub mod hub;
mod init_from;
mod orchestrator;
mod watch;

pub struct Api {
    pub scheduler: Arc<Scheduler>,
    /// Where dashboard files are looked up first (then the built-in default).
    pub dashboards_dir: PathBuf,
    /// How long `Predict` waits for a worker's answer.
    pub predict_timeout: Duration,
    /// Decoding limits a worker applies to each `Predict` image.
    pub max_image_bytes: u64,
    pub max_image_pixels: u64,
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

/// Most images one `Predict` call may carry.
pub const MAX_PREDICT_IMAGES: usize = 256;

impl Api {
    /// Checks every distinct `initFrom` of a sweep names weights that exist.
    async fn check_init_from(&self, spec: &SweepSpec) -> Result<(), Status> {
        let mut seen = std::collections::BTreeSet::new();
        for t in &spec.trials {
            if !t.init_from.is_empty() && seen.insert(t.init_from.clone()) {
                init_from::weights(&self.scheduler, &t.init_from).await?;
            }
        }
        Ok(())
    }

    /// The sweep `id`, which must exist.
    async fn find_sweep(&self, id: &str) -> Result<SweepRow, Status> {
        require_id("sweepId", id)?;
        self.scheduler
            .store
            .sweep(id)
            .await
            .map_err(internal)?
            .ok_or_else(|| Status::not_found(format!("sweepId: no sweep '{id}'")))
    }

    /// The layers of a trial's model, from its hyperparameters and its sweep's data set
    /// (empty when the data set no longer resolves: its channels and classes are unknown).
    async fn model_summary(
        &self,
        t: &crate::store::TrialRow,
    ) -> anyhow::Result<Vec<cnnd_proto::ModelLayer>> {
        let Some(sweep) = self.scheduler.store.sweep(&t.sweep_id).await? else {
            return Ok(Vec::new());
        };
        let Some(data) = self.scheduler.dataset_of(&t.sweep_id, &sweep.dataset).await else {
            return Ok(Vec::new());
        };
        let info = &data.resolved.info;
        let p = &t.params;
        Ok(cnnd_core::model_size::summary(
            p,
            p.effective_channels(info) as i64,
            p.effective_input_size(info),
            info.classes as i64,
        )
        .into_iter()
        .map(|l| cnnd_proto::ModelLayer {
            name: l.name,
            kind: l.kind,
            output_shape: l.output_shape,
            parameters: l.parameters,
            non_trainable_parameters: l.non_trainable,
        })
        .collect())
    }

    /// The sweep `id`, which must exist and not have ended.
    async fn open_sweep(&self, id: &str) -> Result<SweepRow, Status> {
        let sweep = self.find_sweep(id).await?;
        if sweep.status.has_ended() {
            let verb = if sweep.status == SweepStatus::Finished {
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
