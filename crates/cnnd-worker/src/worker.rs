//! The worker process: connects to the daemon over the worker protocol, leases one trial at
//! a time, trains it (data -> model -> train loop, libtorch), reports every epoch (the answer
//! says whether to go on) and the outcome; beside training, a second loop answers Predict
//! jobs ([`crate::predict`]). One process per slot, with its own thread budget and CUDA
//! device, so a libtorch crash or an out-of-memory takes down one trial, not the daemon.
//! Data sets are decoded once per process and cached.
//!
//! Must not touch: the store, the scheduler or charts (it only speaks the protocol).

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use cnnd_client::auth::BearerToken;
use cnnd_core::datasets::{DatasetInfo, FolderLayout};
use cnnd_core::epoch::EpochRecord;
use cnnd_core::status::{StopReason, TrialStatus};
use cnnd_core::sweep::{Output, TrialParams};
use cnnd_proto::lease_response::InitWeights;
use cnnd_proto::worker_hub_client::WorkerHubClient;
use cnnd_proto::{
    FinishTrialRequest, HeartbeatRequest, LeaseRequest, LeaseResponse, RegisterRequest,
    ReleaseTrialRequest, ReportEpochRequest, Stop,
};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

use crate::{data, train};

#[derive(Debug, Clone, clap::Args)]
pub struct WorkerArgs {
    /// URL of the daemon's worker protocol (the daemon starts its workers with it).
    #[arg(long)]
    pub daemon: String,
    #[arg(long)]
    pub worker_id: String,
    /// Intra-op threads for libtorch.
    #[arg(long, default_value_t = 1)]
    pub threads: u32,
    /// "cpu" or "cuda:N" (the daemon sets CUDA_VISIBLE_DEVICES so N is seen as device 0).
    #[arg(long, default_value = "cpu")]
    pub device: String,
}

/// The environment variable the daemon hands its token to workers in.
pub const TOKEN_ENV: &str = "CNND_WORKER_TOKEN";

/// A worker's client of the daemon: the worker protocol with the daemon's token attached.
pub type HubClient = WorkerHubClient<InterceptedService<Channel, BearerToken>>;

async fn connect(url: &str) -> Result<HubClient> {
    let token = BearerToken::new(std::env::var(TOKEN_ENV).ok().as_deref())?;
    let mut last = None;
    for _ in 0..50 {
        match tonic::transport::Endpoint::from_shared(url.to_string())?
            .connect()
            .await
        {
            Ok(channel) => return Ok(WorkerHubClient::with_interceptor(channel, token)),
            Err(e) => last = Some(e),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Err(anyhow::anyhow!(
        "cannot reach the daemon at {url}: {:?}",
        last
    ))
}

/// The worker's main loop. Returns when the daemon is gone.
pub async fn run(args: WorkerArgs) -> Result<()> {
    tch::set_num_threads(args.threads as i32);
    tch::set_num_interop_threads(1);
    let device = if args.device.starts_with("cuda") {
        tch::Device::Cuda(0)
    } else {
        tch::Device::Cpu
    };
    let mut client = connect(&args.daemon).await?;
    let probe = crate::probe::probe();
    client
        .register(RegisterRequest {
            worker_id: args.worker_id.clone(),
            pid: std::process::id(),
            device: args.device.clone(),
            threads: args.threads,
            libtorch_version: crate::LIBTORCH_VERSION.to_string(),
            devices: probe.devices.iter().map(cnnd_proto::Device::from).collect(),
            cudnn: probe.cudnn,
        })
        .await
        .context("registering with the daemon")?;
    tokio::spawn(crate::predict::serve_jobs(
        client.clone(),
        args.worker_id.clone(),
    ));
    let cache = Arc::new(data::DataCache::default());
    let mut failures = 0;
    loop {
        let lease = match client
            .lease(LeaseRequest {
                worker_id: args.worker_id.clone(),
            })
            .await
        {
            Ok(r) => {
                failures = 0;
                r.into_inner()
            }
            Err(e) => {
                failures += 1;
                if failures >= 5 {
                    anyhow::bail!("lost the daemon at {}: {}", args.daemon, e.message());
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
        };
        if lease.trial_id.is_empty() {
            continue;
        }
        let handle = tokio::runtime::Handle::current();
        let worker_id = args.worker_id.clone();
        let reporter = client.clone();
        let cache = cache.clone();
        let trial_id = lease.trial_id.clone();
        let generation = lease.generation;
        let end = tokio::task::spawn_blocking(move || {
            run_lease(&lease, &worker_id, reporter, handle, &cache, device)
        })
        .await
        .unwrap_or_else(|e| LeaseEnd::Finish(failed(format!("the trial panicked: {e}"))));
        match end {
            LeaseEnd::Finish(finish) => {
                let finish = FinishTrialRequest {
                    worker_id: args.worker_id.clone(),
                    trial_id,
                    generation,
                    ..finish
                };
                if let Err(e) = client.finish_trial(finish).await {
                    // A refused finish means the lease moved on (cancelled); nothing to keep.
                    tracing::warn!(worker = args.worker_id, "finish not taken: {}", e.message());
                }
            }
            LeaseEnd::GiveBack(reason) => {
                let req = ReleaseTrialRequest {
                    worker_id: args.worker_id.clone(),
                    trial_id,
                    generation,
                    reason,
                };
                if let Err(e) = client.release_trial(req).await {
                    tracing::warn!(
                        worker = args.worker_id,
                        "release not taken: {}",
                        e.message()
                    );
                }
            }
            LeaseEnd::Abandon(Halt::DaemonLost) => {
                anyhow::bail!(
                    "lost the daemon at {} while training {trial_id}",
                    args.daemon
                );
            }
            LeaseEnd::Abandon(halt) => {
                tracing::info!(
                    worker = args.worker_id,
                    trial = trial_id,
                    "trial stopped: {halt}"
                );
            }
        }
    }
}

/// Why a trial stops before its last epoch, from the worker's side: what the daemon said,
/// or what the worker found out itself.
#[derive(Debug, Clone, PartialEq)]
enum Halt {
    /// The daemon said stop.
    Told(StopReason),
    /// The trial ran past its `timeLimit`.
    TimedOut(String),
    /// The daemon could not be reached for ten seconds.
    DaemonLost,
}

impl std::fmt::Display for Halt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Halt::Told(reason) => write!(f, "{reason}"),
            Halt::TimedOut(why) => write!(f, "timed_out: {why}"),
            Halt::DaemonLost => f.write_str("daemon lost"),
        }
    }
}

/// How a leased trial ends, from the worker's side.
enum LeaseEnd {
    /// Report the outcome (succeeded, failed, pruned, parked).
    Finish(FinishTrialRequest),
    /// Give the trial back unfinished (daemon shutdown); it resumes from its checkpoint.
    GiveBack(String),
    /// The trial is no longer ours (cancelled, lease lost): report nothing.
    Abandon(Halt),
}

/// What the provenance's `data` hash covers, recorded beside it.
const DATA_HASH_COVERS: &str =
    "every example of every split as decoded, before trainLimit, testLimit and carved splits";

fn failed(error: String) -> FinishTrialRequest {
    FinishTrialRequest {
        status: TrialStatus::Failed.to_string(),
        error,
        ..Default::default()
    }
}

/// The first reason to halt wins; later ones (a heartbeat after a report said stop) are
/// the same trial ending.
fn halt(slot: &Mutex<Option<Halt>>, why: Halt) {
    slot.lock().unwrap().get_or_insert(why);
}

/// What the lease says about the trial's data and weights, read from the wire.
struct LeasedTrial {
    params: TrialParams,
    dataset: DatasetInfo,
    layout: Option<FolderLayout>,
    data_dir: PathBuf,
    init_weights: Option<PathBuf>,
}

impl LeasedTrial {
    fn of(lease: &LeaseResponse) -> Result<LeasedTrial, String> {
        let params: TrialParams = serde_json::from_str(&lease.params_json)
            .map_err(|e| format!("trial parameters unreadable: {e}"))?;
        let dataset: DatasetInfo = serde_json::from_str(&lease.dataset_json)
            .map_err(|e| format!("data: the lease's data set is unreadable: {e}"))?;
        let layout = match lease.layout_json.as_str() {
            "" => None,
            text => Some(
                serde_json::from_str(text)
                    .map_err(|e| format!("data: the lease's file list is unreadable: {e}"))?,
            ),
        };
        let data_dir = if lease.data_dir.is_empty() {
            std::env::var_os("CNND_DATA_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from("data"))
        } else {
            PathBuf::from(&lease.data_dir)
        };
        let init_weights = match &lease.init_weights {
            None => None,
            Some(InitWeights::InitWeightsPath(path)) => Some(PathBuf::from(path)),
            Some(InitWeights::InitWeightsError(why)) => return Err(format!("initFrom: {why}")),
        };
        Ok(LeasedTrial {
            params,
            dataset,
            layout,
            data_dir,
            init_weights,
        })
    }
}

/// Trains one leased trial; blocking (runs on a blocking thread). A heartbeat task renews
/// the lease every second with the batch progress and raises the stop flag when the daemon
/// says so (cancel, shutdown) or cannot be reached.
fn run_lease(
    lease: &LeaseResponse,
    worker_id: &str,
    mut client: HubClient,
    handle: tokio::runtime::Handle,
    cache: &data::DataCache,
    device: tch::Device,
) -> LeaseEnd {
    let LeasedTrial {
        params,
        dataset: info,
        layout,
        data_dir,
        init_weights,
    } = match LeasedTrial::of(lease) {
        Ok(t) => t,
        Err(e) => return LeaseEnd::Finish(failed(e)),
    };
    let dataset = match cache.get(
        &info,
        layout.as_ref(),
        &data_dir,
        data::DecodeAs::of(&params, &info),
    ) {
        Ok(d) => d,
        Err(e) => return LeaseEnd::Finish(failed(format!("data: {e:#}"))),
    };
    let prepared = data::prepare(&dataset, &params);
    for note in &prepared.notes {
        tracing::info!(trial = lease.trial_id, "{note}");
    }
    let weights_path = PathBuf::from(&lease.weights_path);
    if let Some(dir) = weights_path.parent() {
        if let Err(e) = std::fs::create_dir_all(dir) {
            return LeaseEnd::Finish(failed(format!("cannot create {}: {e}", dir.display())));
        }
    }
    // Where the numbers come from; the data hash once per worker and data set (the whole
    // data set as decoded, see `Dataset::content_hash`).
    let data_hash = match dataset.content_hash() {
        Ok(hash) => hash,
        Err(e) => return LeaseEnd::Finish(failed(format!("data: {e:#}"))),
    };
    let provenance: std::collections::HashMap<String, String> = [
        ("cnnd", env!("CARGO_PKG_VERSION").to_string()),
        ("libtorch", crate::LIBTORCH_VERSION.to_string()),
        ("device", format!("{device:?}").to_lowercase()),
        ("seed", params.seed.to_string()),
        ("data", format!("{} sha256:{data_hash}", info.name)),
        ("data_hash_covers", DATA_HASH_COVERS.to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .chain(
        device
            .is_cuda()
            .then(|| ("cuda".to_string(), crate::TORCH_CUDA_VERSION.to_string())),
    )
    .collect();
    // What prediction needs to see images as this trial saw them.
    let input_record = crate::predict::InputRecord::of(&params, &info, &prepared);
    if let Err(e) = input_record.save(&weights_path) {
        return LeaseEnd::Finish(failed(format!("cannot write the input record: {e}")));
    }
    let classes = if params.output == Output::Sigmoid {
        1
    } else {
        info.classes as i64
    };

    let stop = Arc::new(AtomicBool::new(false));
    let progress = Arc::new(AtomicU64::new(0));
    let halted: Arc<Mutex<Option<Halt>>> = Default::default();
    let heartbeats = handle.spawn(heartbeat_loop(
        client.clone(),
        HeartbeatRequest {
            worker_id: worker_id.to_string(),
            trial_id: lease.trial_id.clone(),
            generation: lease.generation,
            batches: train::batches_per_epoch(&prepared, &params),
            ..Default::default()
        },
        stop.clone(),
        progress.clone(),
        halted.clone(),
        (params.time_limit > 0.0).then(|| Duration::from_secs_f64(params.time_limit)),
    ));

    let mut first = true;
    let mut on_epoch = |r: &EpochRecord, facts: &train::TrialInfo| -> bool {
        let mut req = ReportEpochRequest {
            worker_id: worker_id.to_string(),
            trial_id: lease.trial_id.clone(),
            generation: lease.generation,
            metrics: Some(r.into()),
            facts: None,
        };
        if first {
            let mut notes = prepared.notes.clone();
            let (mut frozen, mut reinitialised) = (Vec::new(), Vec::new());
            if let Some(t) = &facts.transfer {
                notes.push(t.note.clone());
                frozen = t.frozen.clone();
                reinitialised = t.reinitialised.clone();
            }
            req.facts = Some(cnnd_proto::TrialFacts {
                parameter_count: facts.parameter_count,
                train_examples: facts.train_examples,
                val_examples: facts.val_examples,
                test_examples: facts.test_examples,
                notes,
                frozen,
                reinitialised,
                skipped_files: dataset.skipped.len() as u32,
                provenance: provenance.clone(),
            });
            first = false;
        }
        match handle.block_on(client.report_epoch(req)) {
            Ok(r) => match r.into_inner().stop.as_ref().and_then(Stop::reason) {
                None => true,
                Some(reason) => {
                    halt(&halted, Halt::Told(reason));
                    false
                }
            },
            Err(e) => {
                tracing::warn!(
                    trial = lease.trial_id,
                    "epoch report refused, stopping: {}",
                    e.message()
                );
                halt(
                    &halted,
                    Halt::Told(StopReason::LeaseLost(e.message().to_string())),
                );
                false
            }
        }
    };
    let checkpoint = PathBuf::from(&lease.checkpoint_path);
    let control = train::TrialControl {
        checkpoint: (!lease.checkpoint_path.is_empty()).then_some(checkpoint.as_path()),
        stop: Some(&stop),
        progress: Some(&progress),
        init_weights: init_weights.as_deref(),
    };
    let result = train::run_trial_with(
        &prepared,
        &params,
        params.effective_channels(&info) as i64,
        classes,
        device,
        &weights_path,
        &control,
        &mut on_epoch,
    );
    heartbeats.abort();
    let halt = halted.lock().unwrap().clone();
    // Pruned or parked at an ASHA rung: finished with the test metrics of its best epoch so
    // far (a parked trial stays resumable from its checkpoint if promoted).
    let early_stop = halt.as_ref().and_then(|h| match h {
        Halt::Told(reason) => reason.finish_status().map(|s| (s, reason.to_string())),
        _ => None,
    });
    let stopped_because = |halt: Option<Halt>| match halt {
        Some(Halt::Told(StopReason::GiveBack)) => {
            LeaseEnd::GiveBack("the daemon is shutting down".into())
        }
        Some(timed_out @ Halt::TimedOut(_)) => LeaseEnd::Finish(failed(timed_out.to_string())),
        Some(other) => LeaseEnd::Abandon(other),
        None => LeaseEnd::Abandon(Halt::Told(StopReason::LeaseLost("stopped".into()))),
    };
    match result {
        Ok(outcome) if outcome.stopped && halt.is_some() && early_stop.is_none() => {
            stopped_because(halt)
        }
        Ok(outcome) => {
            if outcome.resumed_from_epoch > 0 {
                tracing::info!(
                    trial = lease.trial_id,
                    epoch = outcome.resumed_from_epoch,
                    "resumed from checkpoint"
                );
            }
            let (status, error) = match early_stop {
                Some((status, why)) => (status, why),
                None if outcome.stopped => (TrialStatus::Pruned, String::new()),
                None => (TrialStatus::Succeeded, String::new()),
            };
            LeaseEnd::Finish(FinishTrialRequest {
                status: status.to_string(),
                // Why it was pruned or parked, kept with its recorded epochs and test metrics.
                error,
                test_loss: outcome.test_loss,
                test_accuracy: outcome.test_accuracy,
                has_test: true,
                best_epoch: outcome.best_epoch,
                weights_path: weights_path.display().to_string(),
                parameter_count: outcome.parameter_count,
                ..Default::default()
            })
        }
        Err(train::TrainError::Interrupted { .. }) => stopped_because(halt),
        Err(e) => LeaseEnd::Finish(failed(e.to_string())),
    }
}

/// Renews the lease every second with the current batch; raises `stop` when the daemon
/// says stop, has been unreachable for ten seconds, or the trial's time limit is over.
async fn heartbeat_loop(
    mut client: HubClient,
    template: HeartbeatRequest,
    stop: Arc<AtomicBool>,
    progress: Arc<AtomicU64>,
    halted: Arc<Mutex<Option<Halt>>>,
    time_limit: Option<Duration>,
) {
    let started = std::time::Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    let mut last_beat: Option<std::time::Instant> = None;
    let mut unreachable_since: Option<std::time::Instant> = None;
    loop {
        tick.tick().await;
        let (epoch, batch) = train::decode_progress(progress.load(Ordering::Relaxed));
        if let Some(limit) = time_limit {
            if started.elapsed() > limit {
                halt(
                    &halted,
                    Halt::TimedOut(format!(
                        "exceeded the time limit of {} s at epoch {epoch}, batch {batch}",
                        limit.as_secs_f64()
                    )),
                );
                stop.store(true, Ordering::SeqCst);
                return;
            }
        }
        if last_beat.is_some_and(|t| t.elapsed() < Duration::from_secs(1)) {
            continue;
        }
        last_beat = Some(std::time::Instant::now());
        let req = HeartbeatRequest {
            epoch,
            batch,
            ..template.clone()
        };
        match tokio::time::timeout(Duration::from_secs(5), client.heartbeat(req)).await {
            Ok(Ok(r)) => {
                unreachable_since = None;
                if let Some(reason) = r.into_inner().stop.as_ref().and_then(Stop::reason) {
                    halt(&halted, Halt::Told(reason));
                    stop.store(true, Ordering::SeqCst);
                    return;
                }
            }
            _ => {
                let since = *unreachable_since.get_or_insert_with(std::time::Instant::now);
                if since.elapsed() > Duration::from_secs(10) {
                    halt(&halted, Halt::DaemonLost);
                    stop.store(true, Ordering::SeqCst);
                    return;
                }
            }
        }
    }
}
