//! The worker process: connects to the daemon over the worker protocol, leases one trial at
//! a time, trains it (data -> model -> train loop, libtorch), reports every epoch (the answer
//! says whether to go on) and the outcome. One process per slot, with its own thread budget
//! and CUDA device, so a libtorch crash or an out-of-memory takes down one trial, not the
//! daemon. Data sets are decoded once per process and cached.
//!
//! Must not touch: the store, the scheduler or charts (it only speaks the protocol).

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

use crate::auth::BearerToken;

use crate::datasets;
use crate::proto::worker_hub_client::WorkerHubClient;
use crate::proto::{
    FinishTrialRequest, HeartbeatRequest, LeaseRequest, LeaseResponse, RegisterRequest,
    ReleaseTrialRequest, ReportEpochRequest,
};
use crate::sweep::{Output, TrialParams};
use crate::{data, train};

#[derive(Debug, Clone, clap::Args)]
pub struct WorkerArgs {
    /// URL of the daemon's gRPC endpoint.
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

/// What libtorch sees on this machine; printed as JSON by `cnnd worker --probe`.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Probe {
    pub libtorch_version: String,
    pub cuda_devices: Vec<ProbedGpu>,
    pub cudnn: bool,
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct ProbedGpu {
    pub index: u32,
    pub name: String,
    pub memory_bytes: u64,
}

/// Asks libtorch for its CUDA devices; names and memory come from nvidia-smi when present.
pub fn probe() -> Probe {
    let count = tch::Cuda::device_count().max(0) as u32;
    let mut gpus: Vec<ProbedGpu> = (0..count)
        .map(|index| ProbedGpu {
            index,
            name: format!("CUDA device {index}"),
            memory_bytes: 0,
        })
        .collect();
    if count > 0 {
        if let Ok(out) = std::process::Command::new("nvidia-smi")
            .args([
                "--query-gpu=index,name,memory.total",
                "--format=csv,noheader,nounits",
            ])
            .output()
        {
            for line in String::from_utf8_lossy(&out.stdout).lines() {
                let f: Vec<&str> = line.split(',').map(str::trim).collect();
                if let [i, name, mib] = f[..] {
                    if let (Ok(i), Ok(mib)) = (i.parse::<usize>(), mib.parse::<u64>()) {
                        if let Some(g) = gpus.get_mut(i) {
                            g.name = name.to_string();
                            g.memory_bytes = mib * 1024 * 1024;
                        }
                    }
                }
            }
        }
    }
    Probe {
        libtorch_version: crate::config::LIBTORCH_VERSION.to_string(),
        cuda_devices: gpus,
        cudnn: tch::Cuda::cudnn_is_available(),
    }
}

/// The environment variable the daemon hands its API token to workers in.
pub const TOKEN_ENV: &str = "CNND_WORKER_TOKEN";

/// A worker's client of the daemon: the worker protocol with the daemon's token attached.
type HubClient = WorkerHubClient<InterceptedService<Channel, BearerToken>>;

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
    client
        .register(RegisterRequest {
            worker_id: args.worker_id.clone(),
            pid: std::process::id(),
            device: args.device.clone(),
            threads: args.threads,
            libtorch_version: crate::config::LIBTORCH_VERSION.to_string(),
            cuda_devices: tch::Cuda::device_count().max(0) as u32,
            cudnn: tch::Cuda::cudnn_is_available(),
        })
        .await
        .context("registering with the daemon")?;
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
            LeaseEnd::Abandon(reason) if reason == DAEMON_LOST => {
                anyhow::bail!(
                    "lost the daemon at {} while training {trial_id}",
                    args.daemon
                );
            }
            LeaseEnd::Abandon(reason) => {
                tracing::info!(
                    worker = args.worker_id,
                    trial = trial_id,
                    "trial stopped: {reason}"
                );
            }
        }
    }
}

/// How a leased trial ends, from the worker's side.
enum LeaseEnd {
    /// Report the outcome (succeeded, failed, pruned).
    Finish(FinishTrialRequest),
    /// Give the trial back unfinished (daemon shutdown); it resumes from its checkpoint.
    GiveBack(String),
    /// The trial is no longer ours (cancelled, lease lost): report nothing.
    Abandon(String),
}

const DAEMON_LOST: &str = "daemon lost";

/// What the `data` provenance hash covers, recorded beside it.
const DATA_HASH_COVERS: &str =
    "every example of every split as decoded, before trainLimit, testLimit and carved splits";
const TIMED_OUT: &str = "timed_out";

fn failed(error: String) -> FinishTrialRequest {
    FinishTrialRequest {
        status: "failed".into(),
        error,
        ..Default::default()
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
    let params: TrialParams = match serde_json::from_str(&lease.params_json) {
        Ok(p) => p,
        Err(e) => return LeaseEnd::Finish(failed(format!("trial parameters unreadable: {e}"))),
    };
    let data_dir = if lease.data_dir.is_empty() {
        std::env::var_os("CNND_DATA_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("data"))
    } else {
        PathBuf::from(&lease.data_dir)
    };
    let info = match datasets::resolve(&lease.dataset, Some(&data_dir)) {
        Ok(info) => info,
        Err(e) => return LeaseEnd::Finish(failed(format!("data: {e}"))),
    };
    let dataset = match cache.get(&info, &data_dir, data::DecodeAs::of(&params, &info)) {
        Ok(d) => d,
        Err(e) => return LeaseEnd::Finish(failed(format!("data: {e:#}"))),
    };
    let prepared = data::prepare(&dataset, &params);
    for note in &prepared.notes {
        tracing::info!(trial = lease.trial_id, "{note}");
    }
    let init_weights = match lease.init_weights_path.as_str() {
        "" => None,
        unresolved if unresolved.starts_with("unresolved: ") => {
            return LeaseEnd::Finish(failed(format!(
                "initFrom: {}",
                &unresolved["unresolved: ".len()..]
            )))
        }
        path => Some(PathBuf::from(path)),
    };
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
        ("libtorch", crate::config::LIBTORCH_VERSION.to_string()),
        ("device", format!("{device:?}").to_lowercase()),
        ("seed", params.seed.to_string()),
        ("data", format!("{} sha256:{data_hash}", info.name)),
        ("data_hash_covers", DATA_HASH_COVERS.to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .chain(device.is_cuda().then(|| {
        (
            "cuda".to_string(),
            crate::config::TORCH_CUDA_VERSION.to_string(),
        )
    }))
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
    let stop_reason: Arc<Mutex<Option<String>>> = Default::default();
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
        stop_reason.clone(),
        (params.time_limit > 0.0).then(|| Duration::from_secs_f64(params.time_limit)),
    ));

    let mut first = true;
    let mut on_epoch = |r: &train::EpochReport, facts: &train::TrialInfo| -> bool {
        let mut req = ReportEpochRequest {
            worker_id: worker_id.to_string(),
            trial_id: lease.trial_id.clone(),
            generation: lease.generation,
            epoch: r.epoch,
            train_loss: r.train_loss,
            train_accuracy: r.train_accuracy,
            val_loss: r.val_loss,
            val_accuracy: r.val_accuracy,
            seconds: r.seconds,
            images_per_second: r.images_per_second,
            ..Default::default()
        };
        if first {
            req.parameter_count = facts.parameter_count;
            req.train_examples = facts.train_examples;
            req.val_examples = facts.val_examples;
            req.test_examples = facts.test_examples;
            req.notes = prepared.notes.clone();
            req.skipped_files = dataset.skipped.len() as u32;
            req.provenance = provenance.clone();
            if let Some(t) = &facts.transfer {
                req.notes.push(t.note.clone());
                req.frozen = t.frozen.clone();
                req.reinitialised = t.reinitialised.clone();
            }
            first = false;
        }
        match handle.block_on(client.report_epoch(req)) {
            Ok(r) => {
                let r = r.into_inner();
                if !r.proceed {
                    stop_reason.lock().unwrap().get_or_insert(r.stop_reason);
                }
                r.proceed
            }
            Err(e) => {
                tracing::warn!(
                    trial = lease.trial_id,
                    "epoch report refused, stopping: {}",
                    e.message()
                );
                stop_reason
                    .lock()
                    .unwrap()
                    .get_or_insert(format!("lease lost: {}", e.message()));
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
    let reason = stop_reason.lock().unwrap().clone();
    let stopped_because = |reason: Option<String>| match reason.as_deref() {
        Some("shutdown") => LeaseEnd::GiveBack("the daemon is shutting down".into()),
        Some(r) if r.starts_with(TIMED_OUT) => LeaseEnd::Finish(failed(r.to_string())),
        Some(r) => LeaseEnd::Abandon(r.to_string()),
        None => LeaseEnd::Abandon("stopped".into()),
    };
    let pruned = reason
        .as_deref()
        .is_some_and(|r| r.starts_with(crate::pruning::PRUNED));
    // Parked at an ASHA rung: finished like a pruned trial (test metrics of its best epoch
    // so far), but resumable from its checkpoint if promoted.
    let parked = reason
        .as_deref()
        .is_some_and(|r| r.starts_with(crate::pruning::PARKED));
    match result {
        Ok(outcome) if outcome.stopped && reason.is_some() && !pruned && !parked => {
            stopped_because(reason)
        }
        Ok(outcome) => {
            if outcome.resumed_from_epoch > 0 {
                tracing::info!(
                    trial = lease.trial_id,
                    epoch = outcome.resumed_from_epoch,
                    "resumed from checkpoint"
                );
            }
            LeaseEnd::Finish(FinishTrialRequest {
                status: if parked {
                    "parked".into()
                } else if outcome.stopped {
                    "pruned".into()
                } else {
                    "succeeded".into()
                },
                // Why it was pruned or parked, kept with its recorded epochs and test metrics.
                error: if pruned || parked {
                    reason.clone().unwrap_or_default()
                } else {
                    String::new()
                },
                test_loss: outcome.test_loss,
                test_accuracy: outcome.test_accuracy,
                has_test: true,
                best_epoch: outcome.best_epoch,
                weights_path: weights_path.display().to_string(),
                parameter_count: outcome.parameter_count,
                ..Default::default()
            })
        }
        Err(train::TrainError::Interrupted { .. }) => stopped_because(reason),
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
    stop_reason: Arc<Mutex<Option<String>>>,
    time_limit: Option<Duration>,
) {
    let started = std::time::Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    let mut last_beat: Option<std::time::Instant> = None;
    let mut unreachable_since: Option<std::time::Instant> = None;
    loop {
        tick.tick().await;
        let at = progress.load(Ordering::Relaxed);
        if let Some(limit) = time_limit {
            if started.elapsed() > limit {
                let (epoch, batch) = ((at >> 32) as u32, (at & 0xffff_ffff) as u32);
                stop_reason.lock().unwrap().get_or_insert(format!(
                    "{TIMED_OUT}: exceeded the time limit of {} s at epoch {epoch}, batch {batch}",
                    limit.as_secs_f64()
                ));
                stop.store(true, Ordering::SeqCst);
                return;
            }
        }
        if last_beat.is_some_and(|t| t.elapsed() < Duration::from_secs(1)) {
            continue;
        }
        last_beat = Some(std::time::Instant::now());
        let req = HeartbeatRequest {
            epoch: (at >> 32) as u32,
            batch: (at & 0xffff_ffff) as u32,
            ..template.clone()
        };
        match tokio::time::timeout(Duration::from_secs(5), client.heartbeat(req)).await {
            Ok(Ok(r)) => {
                unreachable_since = None;
                let r = r.into_inner();
                if !r.proceed {
                    stop_reason.lock().unwrap().get_or_insert(r.stop_reason);
                    stop.store(true, Ordering::SeqCst);
                    return;
                }
            }
            _ => {
                let since = *unreachable_since.get_or_insert_with(std::time::Instant::now);
                if since.elapsed() > Duration::from_secs(10) {
                    stop_reason
                        .lock()
                        .unwrap()
                        .get_or_insert(DAEMON_LOST.to_string());
                    stop.store(true, Ordering::SeqCst);
                    return;
                }
            }
        }
    }
}
