//! The worker process: connects to a daemon, on this machine or any other
//! ([`crate::session`]), leases one trial at a time, fetches what it needs by content
//! ([`crate::files`]), trains it (data -> model -> train loop, libtorch), and for every epoch
//! uploads the checkpoint, then reports the epoch with its digest (the answer says whether to
//! go on); at the end it uploads the best weights and the input record, then reports the
//! outcome. Beside training, a second loop answers Predict jobs ([`crate::predict`]).
//!
//! A worker holds at most one lease. It renews it with heartbeats; cut off from the daemon
//! for longer than the lease timeout it stops the trial (the daemon will have re-queued it).
//! SIGTERM (Slurm preemption, Kubernetes eviction) gives the trial back at once, checkpoint
//! kept, and ends the process. A worker the daemon started (`--slot`) ends when it loses the
//! daemon; any other keeps trying to reach it. A lease answer that says `retire` (a cluster
//! launcher scaling down) ends it too, with status 0.
//!
//! Must not touch: the store, the scheduler or charts (it only speaks the protocol), and no
//! path of the daemon's (none crosses the protocol).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use cnnd_core::content::CHECKPOINT_FORMAT;
use cnnd_core::datasets::DatasetInfo;
use cnnd_core::epoch::EpochRecord;
use cnnd_core::status::{StopReason, TrialStatus};
use cnnd_core::sweep::{Output, TrialParams};
use cnnd_proto::lease_response::InitWeights;
use cnnd_proto::{
    FinishTrialRequest, HeartbeatRequest, LeaseRequest, LeaseResponse, RegisterRequest,
    ReleaseTrialRequest, ReportEpochRequest, Stop,
};

use crate::cache::{BlobCache, BlobHandle};
use crate::files::{after, DataView, Files, Unreachable};
use crate::session::{describe, is_transient, ConnectArgs, Session};
use crate::{data, train};

/// The best epoch's weights, as uploaded.
pub const WEIGHTS_NAME: &str = "weights.safetensors";
/// The checkpoint of the last epoch, as uploaded.
pub const CHECKPOINT_NAME: &str = "checkpoint.safetensors";
/// The input record, as uploaded.
pub const INPUT_RECORD_NAME: &str = "input.json";

#[derive(Debug, Clone, clap::Args)]
pub struct WorkerArgs {
    #[command(flatten)]
    pub connect: ConnectArgs,
    /// The device to train on: cpu, cuda:N, or auto (the first CUDA device when there is
    /// one, else the CPU).
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// Intra-op threads for libtorch (default: every core of this machine).
    #[arg(long)]
    pub threads: Option<u32>,
    /// Where fetched files are kept, by digest (several workers may share it).
    #[arg(long, value_name = "DIR", default_value_os_t = default_cache_dir())]
    pub cache_dir: PathBuf,
    /// The cache's size cap; least recently used files go first.
    #[arg(long, value_name = "BYTES", default_value_t = 20 << 30)]
    pub cache_max_bytes: u64,
    /// Local copies of data sets (the daemon's data-directory layout, e.g. DIR/mnist/...):
    /// a file here with the daemon's digest is not fetched.
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// The name this worker registers with (default: HOST-PID).
    #[arg(long)]
    pub name: Option<String>,
    /// Set by the daemon for the workers it starts: the slot this process fills. Such a
    /// worker ends when its daemon is gone.
    #[arg(long, hide = true)]
    pub slot: Option<String>,
    /// The cluster job that runs this worker (Slurm job id, Kubernetes pod), shown in
    /// `cnnctl status`; default: SLURM_JOB_ID or the pod name (HOSTNAME) under Kubernetes.
    #[arg(long)]
    pub launcher_job: Option<String>,
    /// How long to wait for the daemon to answer the first registration.
    #[arg(long, value_name = "SECONDS", default_value_t = 120)]
    pub connect_wait_secs: u64,
}

fn default_cache_dir() -> PathBuf {
    std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(std::env::temp_dir)
        .join("cnnd-worker")
}

fn launcher_job(args: &WorkerArgs) -> String {
    if let Some(job) = &args.launcher_job {
        return job.clone();
    }
    if let Ok(job) = std::env::var("SLURM_JOB_ID") {
        return format!("slurm:{job}");
    }
    if std::env::var_os("KUBERNETES_SERVICE_HOST").is_some() {
        if let Ok(pod) = std::env::var("HOSTNAME") {
            return format!("k8s:{pod}");
        }
    }
    String::new()
}

/// The libtorch device for `--device`, and the name it registers with. `cuda:N` is device N,
/// or device 0 when CUDA_VISIBLE_DEVICES shows this process that one device only (as the
/// daemon starts its CUDA workers).
pub fn training_device(requested: &str) -> Result<(tch::Device, String)> {
    let cuda_count = tch::Cuda::device_count().max(0) as usize;
    match requested {
        "cpu" => Ok((tch::Device::Cpu, "cpu".into())),
        "auto" if cuda_count > 0 => Ok((tch::Device::Cuda(0), "cuda:0".into())),
        "auto" => Ok((tch::Device::Cpu, "cpu".into())),
        other => {
            let Some(n) = other
                .strip_prefix("cuda:")
                .and_then(|n| n.parse::<usize>().ok())
            else {
                bail!("--device: '{other}' is not cpu, cuda:N or auto");
            };
            let visible = std::env::var("CUDA_VISIBLE_DEVICES").unwrap_or_default();
            let index = if visible.trim() == n.to_string() {
                0
            } else {
                n
            };
            if index >= cuda_count {
                bail!(
                    "--device: {other} requested, but libtorch sees {cuda_count} CUDA device(s) here"
                );
            }
            Ok((tch::Device::Cuda(index), other.to_string()))
        }
    }
}

/// What every trial of this process shares.
struct Worker {
    session: Session,
    cache: BlobCache,
    data_dir: Option<PathBuf>,
    work_root: PathBuf,
    device: tch::Device,
    decoded: data::DataCache,
    /// Set by SIGTERM / SIGINT: give the trial back and end.
    terminating: AtomicBool,
    /// The stop flag and halt slot of the trial training now, for SIGTERM to raise.
    running: Mutex<Option<RunningTrial>>,
    /// A worker the daemon started: it ends when it loses its daemon.
    local: bool,
}

/// The stop flag of the trial training now, and the slot its halt reason goes in.
type RunningTrial = (Arc<AtomicBool>, Arc<Mutex<Option<Halt>>>);

impl Worker {
    fn files(&self) -> Files<'_> {
        Files {
            session: &self.session,
            cache: &self.cache,
            data_dir: self.data_dir.as_deref(),
        }
    }

    fn terminate(&self) {
        self.terminating.store(true, Ordering::SeqCst);
        if let Some((stop, halted)) = &*self.running.lock().unwrap() {
            halt(halted, Halt::Terminated);
            stop.store(true, Ordering::SeqCst);
        }
    }
}

/// The worker's main loop. Returns when stopped (SIGTERM, SIGINT), or when a worker the
/// daemon started loses its daemon.
pub async fn run(args: WorkerArgs) -> Result<()> {
    let (device, device_name) = training_device(&args.device)?;
    let threads = args
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get() as u32));
    tch::set_num_threads(threads as i32);
    tch::set_num_interop_threads(1);
    let cache = BlobCache::open(&args.cache_dir, args.cache_max_bytes)
        .with_context(|| format!("--cache-dir {}", args.cache_dir.display()))?;
    let work_root = args
        .cache_dir
        .join("work")
        .join(format!("{}", std::process::id()));
    let host = cnnd_client::host_name();
    let probe = crate::probe::probe();
    let request = RegisterRequest {
        name: args
            .name
            .clone()
            .unwrap_or_else(|| format!("{host}-{}", std::process::id())),
        pid: std::process::id(),
        device: device_name.clone(),
        threads,
        libtorch_version: crate::LIBTORCH_VERSION.to_string(),
        devices: probe.devices.iter().map(cnnd_proto::Device::from).collect(),
        cudnn: probe.cudnn,
        host,
        slot: args.slot.clone().unwrap_or_default(),
        launcher_job: launcher_job(&args),
        checkpoint_format: CHECKPOINT_FORMAT,
        ..Default::default()
    };
    let session = Session::open(
        &args.connect,
        request,
        Duration::from_secs(args.connect_wait_secs),
    )
    .await?;
    tracing::info!(
        worker = session.worker_id(),
        daemon = session.url,
        device = device_name,
        threads,
        cache = %args.cache_dir.display(),
        "registered"
    );
    let worker = Arc::new(Worker {
        session,
        cache,
        data_dir: args.data_dir.clone(),
        work_root,
        device,
        decoded: data::DataCache::default(),
        terminating: AtomicBool::new(false),
        running: Mutex::new(None),
        local: args.slot.is_some(),
    });
    {
        let worker = worker.clone();
        tokio::spawn(async move {
            wait_for_termination().await;
            tracing::info!("stopping: the trial in hand (if any) is given back");
            worker.terminate();
        });
    }
    tokio::spawn(crate::predict::serve_jobs(worker.clone_for_predict()));
    let result = lease_loop(&worker).await;
    let _ = std::fs::remove_dir_all(&worker.work_root);
    result
}

/// SIGTERM or SIGINT.
async fn wait_for_termination() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

async fn lease_loop(worker: &Arc<Worker>) -> Result<()> {
    let mut unreachable_since: Option<Instant> = None;
    loop {
        if worker.terminating.load(Ordering::SeqCst) {
            return Ok(());
        }
        // The poll itself takes a few seconds; a failure is retried here, so that a worker
        // that is stopped while the daemon is away still stops.
        let answer =
            worker
                .session
                .call(
                    after(Duration::from_secs(1)),
                    |mut client, worker_id| async move {
                        client.lease(LeaseRequest { worker_id }).await
                    },
                )
                .await;
        let lease = match answer {
            Ok(r) => {
                unreachable_since = None;
                r.into_inner()
            }
            Err(e) if is_transient(&e) => {
                let since = *unreachable_since.get_or_insert_with(Instant::now);
                if worker.local && since.elapsed() > Duration::from_secs(10) {
                    bail!("lost the daemon at {}: {}", worker.session.url, e.message());
                }
                tracing::warn!(
                    daemon = worker.session.url,
                    seconds = since.elapsed().as_secs(),
                    "daemon unreachable: {}",
                    e.message()
                );
                tokio::time::sleep(Duration::from_secs(2)).await;
                continue;
            }
            Err(e) => bail!("leasing from {}: {}", worker.session.url, describe(&e)),
        };
        if lease.retire {
            // The launcher that started this worker scaled down: end, and the job with it.
            tracing::info!(
                daemon = worker.session.url,
                "no trial for a while and the launcher has workers to spare: exiting"
            );
            return Ok(());
        }
        if lease.trial_id.is_empty() {
            continue;
        }
        let trial_id = lease.trial_id.clone();
        let generation = lease.generation;
        worker.session.hold(Some((&trial_id, generation)));
        let end = run_lease(worker, lease).await;
        worker.session.hold(None);
        let deadline = after(worker.session.lease_timeout());
        match end {
            LeaseEnd::Finish(finish) => {
                let sent = worker
                    .session
                    .call(deadline, |mut client, worker_id| {
                        let finish = FinishTrialRequest {
                            worker_id,
                            trial_id: trial_id.clone(),
                            generation,
                            ..finish.clone()
                        };
                        async move { client.finish_trial(finish).await }
                    })
                    .await;
                if let Err(e) = sent {
                    // A refused finish means the lease moved on (cancelled, expired).
                    tracing::warn!(trial = trial_id, "finish not taken: {}", e.message());
                }
            }
            LeaseEnd::GiveBack(reason) => {
                let sent = worker
                    .session
                    .call(deadline, |mut client, worker_id| {
                        let req = ReleaseTrialRequest {
                            worker_id,
                            trial_id: trial_id.clone(),
                            generation,
                            reason: reason.clone(),
                        };
                        async move { client.release_trial(req).await }
                    })
                    .await;
                match sent {
                    Ok(_) => tracing::info!(trial = trial_id, "trial given back: {reason}"),
                    Err(e) => {
                        tracing::warn!(trial = trial_id, "release not taken: {}", e.message())
                    }
                }
            }
            LeaseEnd::Abandon(Halt::DaemonLost) if worker.local => {
                bail!(
                    "lost the daemon at {} while training {trial_id}",
                    worker.session.url
                );
            }
            LeaseEnd::Abandon(halt) => {
                tracing::info!(trial = trial_id, "trial stopped: {halt}");
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
    /// The daemon could not be reached for the lease timeout.
    DaemonLost,
    /// The worker is stopping (SIGTERM): the trial goes back to the queue.
    Terminated,
}

impl std::fmt::Display for Halt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Halt::Told(reason) => write!(f, "{reason}"),
            Halt::TimedOut(why) => write!(f, "timed_out: {why}"),
            Halt::DaemonLost => f.write_str("daemon lost for longer than the lease timeout"),
            Halt::Terminated => f.write_str("the worker was stopped (SIGTERM)"),
        }
    }
}

/// How a leased trial ends, from the worker's side. One exists per trial, moved once: the
/// size difference between variants costs nothing worth a box.
#[allow(clippy::large_enum_variant)]
enum LeaseEnd {
    /// Report the outcome (succeeded, failed, pruned, parked).
    Finish(FinishTrialRequest),
    /// Give the trial back unfinished; it resumes from its last recorded checkpoint.
    GiveBack(String),
    /// The trial is no longer ours (cancelled, lease lost): report nothing.
    Abandon(Halt),
}

/// What the provenance's `data` hash covers, recorded beside it.
const DATA_HASH_COVERS: &str =
    "every example of every split as decoded, before trainLimit, testLimit and carved splits";

/// A data preview with the data set's class names (numbers where it has none), as JSON.
fn named_preview(preview: &cnnd_core::data_preview::DataPreview, names: &[String]) -> String {
    let classes = preview
        .samples
        .iter()
        .map(|s| s.class as usize + 1)
        .max()
        .unwrap_or(0)
        .max(names.len());
    let named = cnnd_core::data_preview::DataPreview {
        class_names: (0..classes)
            .map(|c| names.get(c).cloned().unwrap_or_else(|| c.to_string()))
            .collect(),
        ..preview.clone()
    };
    serde_json::to_string(&named).unwrap_or_default()
}

/// What the trial's record says of how it ended: patience's stop and fine-tuning, when
/// they happened ("" otherwise).
fn finish_note(params: &TrialParams, outcome: &train::TrainOutcome) -> String {
    let mut notes = Vec::new();
    if !outcome.fine_tuned.is_empty() {
        notes.push(format!(
            "fine-tuned from epoch {}: the top {} stage(s) of the body ({} variables) trained at learning rate {}",
            params.fine_tune_after + 1,
            params.fine_tune_blocks,
            outcome.fine_tuned.len(),
            params.fine_tune_rate()
        ));
    }
    if let Some(epoch) = outcome.patience_stopped_at {
        notes.push(format!(
            "stopped after epoch {epoch} of {}: no better validation accuracy for {} epochs (patience); tested with epoch {}'s weights",
            params.epochs, params.patience, outcome.best_epoch
        ));
    }
    notes.join("; ")
}

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

/// The trial's stop flag, progress and halt reason, shared by the training thread, the
/// heartbeats and SIGTERM.
#[derive(Clone, Default)]
struct TrialSignals {
    stop: Arc<AtomicBool>,
    progress: Arc<AtomicU64>,
    batches: Arc<AtomicU32>,
    halted: Arc<Mutex<Option<Halt>>>,
}

impl TrialSignals {
    fn halt(&self, why: Halt) {
        halt(&self.halted, why);
        self.stop.store(true, Ordering::SeqCst);
    }
    fn halted(&self) -> Option<Halt> {
        self.halted.lock().unwrap().clone()
    }
}

/// What a lease brings, on this machine: parsed parameters, the data set laid out, the
/// checkpoint to resume from and the initial weights in the trial's folder or the cache.
struct Inputs {
    params: TrialParams,
    info: DatasetInfo,
    view: DataView,
    checkpoint: PathBuf,
    init_weights: Option<BlobHandle>,
}

/// Why the inputs could not be had.
enum InputError {
    /// The trial cannot run (bad parameters, data that does not arrive whole).
    Fails(String),
    /// The daemon stayed out of reach.
    DaemonLost,
}

/// Parses the lease and fetches what the trial needs. The trial folder is `dir`.
async fn inputs(worker: &Worker, lease: &LeaseResponse, dir: &Path) -> Result<Inputs, InputError> {
    let fails = |e: String| InputError::Fails(e);
    let params: TrialParams = serde_json::from_str(&lease.params_json)
        .map_err(|e| fails(format!("trial parameters unreadable: {e}")))?;
    let info: DatasetInfo = serde_json::from_str(&lease.dataset_json)
        .map_err(|e| fails(format!("data: the lease's data set is unreadable: {e}")))?;
    let deadline = after(worker.session.lease_timeout());
    let lost = |e: anyhow::Error, what: &str| {
        if Unreachable::caused(&e) {
            InputError::DaemonLost
        } else {
            InputError::Fails(format!("{what}: {e:#}"))
        }
    };
    let Some(manifest) = &lease.manifest else {
        return Err(fails(format!(
            "data: the daemon sent no manifest for {} (a daemon without a data directory)",
            info.name
        )));
    };
    let manifest = manifest.checked("manifest").map_err(fails)?;
    let files = worker.files();
    let view = files
        .data_view(&manifest, deadline)
        .await
        .map_err(|e| lost(e, "data"))?;
    let checkpoint = dir.join(CHECKPOINT_NAME);
    if let (true, Some(recorded)) = (lease.epochs_recorded > 0, &lease.checkpoint) {
        let recorded = recorded.checked("checkpoint").map_err(fails)?;
        let blob = files
            .get(&recorded, deadline)
            .await
            .map_err(|e| lost(e, "checkpoint"))?;
        std::fs::copy(blob.path(), &checkpoint)
            .map_err(|e| fails(format!("checkpoint: copying into {}: {e}", dir.display())))?;
    }
    let init_weights = match &lease.init_weights {
        None => None,
        Some(InitWeights::InitWeightsError(why)) => return Err(fails(format!("initFrom: {why}"))),
        Some(InitWeights::InitWeightsFile(file)) => {
            let file = file.checked("initFrom").map_err(fails)?;
            Some(
                files
                    .get(&file, deadline)
                    .await
                    .map_err(|e| lost(e, "initFrom"))?,
            )
        }
    };
    Ok(Inputs {
        params,
        info,
        view,
        checkpoint,
        init_weights,
    })
}

/// Runs one lease to its end: inputs, training (on a blocking thread), results uploaded.
async fn run_lease(worker: &Arc<Worker>, lease: LeaseResponse) -> LeaseEnd {
    let dir = worker.work_root.join(&lease.trial_id);
    let _ = std::fs::remove_dir_all(&dir);
    if let Err(e) = std::fs::create_dir_all(&dir) {
        return LeaseEnd::Finish(failed(format!("cannot create {}: {e}", dir.display())));
    }
    let signals = TrialSignals::default();
    *worker.running.lock().unwrap() = Some((signals.stop.clone(), signals.halted.clone()));
    if worker.terminating.load(Ordering::SeqCst) {
        signals.halt(Halt::Terminated);
    }
    let time_limit = serde_json::from_str::<TrialParams>(&lease.params_json)
        .ok()
        .filter(|p| p.time_limit > 0.0)
        .map(|p| Duration::from_secs_f64(p.time_limit));
    let heartbeats = tokio::spawn(heartbeat_loop(
        worker.clone(),
        lease.trial_id.clone(),
        lease.generation,
        signals.clone(),
        time_limit,
    ));
    let end = async {
        let inputs = tokio::select! {
            inputs = inputs(worker, &lease, &dir) => inputs,
            _ = wait_for(&signals.stop) => {
                return stopped_because(signals.halted());
            }
        };
        let inputs = match inputs {
            Ok(inputs) => inputs,
            Err(InputError::Fails(why)) => return LeaseEnd::Finish(failed(why)),
            Err(InputError::DaemonLost) => return LeaseEnd::Abandon(Halt::DaemonLost),
        };
        let handle = tokio::runtime::Handle::current();
        let trained = {
            let worker = worker.clone();
            let lease = lease.clone();
            let dir = dir.clone();
            let signals = signals.clone();
            tokio::task::spawn_blocking(move || {
                train_lease(&worker, &lease, &inputs, &dir, &signals, handle)
            })
            .await
            .unwrap_or_else(|e| {
                Trained::Ended(LeaseEnd::Finish(failed(format!("the trial panicked: {e}"))))
            })
        };
        match trained {
            Trained::Ended(end) => end,
            Trained::Finished(finish) => upload_results(worker, &lease, &dir, finish).await,
        }
    }
    .await;
    heartbeats.abort();
    *worker.running.lock().unwrap() = None;
    let _ = std::fs::remove_dir_all(&dir);
    end
}

/// Resolves once `flag` is set.
async fn wait_for(flag: &AtomicBool) {
    while !flag.load(Ordering::SeqCst) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The end of a trial stopped from outside the training loop.
fn stopped_because(halt: Option<Halt>) -> LeaseEnd {
    match halt {
        Some(Halt::Told(StopReason::GiveBack)) => {
            LeaseEnd::GiveBack("the daemon is shutting down".into())
        }
        Some(Halt::Terminated) => LeaseEnd::GiveBack(Halt::Terminated.to_string()),
        Some(timed_out @ Halt::TimedOut(_)) => LeaseEnd::Finish(failed(timed_out.to_string())),
        Some(other) => LeaseEnd::Abandon(other),
        None => LeaseEnd::Abandon(Halt::Told(StopReason::LeaseLost("stopped".into()))),
    }
}

/// The weights and the input record go up before the finish that names them.
async fn upload_results(
    worker: &Worker,
    lease: &LeaseResponse,
    dir: &Path,
    mut finish: FinishTrialRequest,
) -> LeaseEnd {
    let files = worker.files();
    let held = (lease.trial_id.as_str(), lease.generation);
    let deadline = after(worker.session.lease_timeout());
    for (name, field) in [(WEIGHTS_NAME, 0), (INPUT_RECORD_NAME, 1)] {
        let path = dir.join(name);
        if !path.is_file() {
            continue;
        }
        match files.upload(&path, name, held, deadline).await {
            Ok(file) => {
                let wire = Some(cnnd_proto::FileRef::from(&file));
                if field == 0 {
                    finish.weights = wire;
                } else {
                    finish.input_record = wire;
                }
            }
            Err(e) => {
                tracing::warn!(trial = lease.trial_id, "results not uploaded: {e:#}");
                return LeaseEnd::Abandon(Halt::Told(StopReason::LeaseLost(format!("{e:#}"))));
            }
        }
    }
    LeaseEnd::Finish(finish)
}

/// What the training thread hands back.
enum Trained {
    /// Trained to an outcome: upload the results, then finish.
    Finished(FinishTrialRequest),
    /// Anything else, as it is.
    Ended(LeaseEnd),
}

/// Trains one leased trial; blocking (runs on a blocking thread). Each epoch's checkpoint is
/// uploaded and the epoch reported with its digest before the next epoch starts.
fn train_lease(
    worker: &Worker,
    lease: &LeaseResponse,
    inputs: &Inputs,
    dir: &Path,
    signals: &TrialSignals,
    handle: tokio::runtime::Handle,
) -> Trained {
    let end = |e: LeaseEnd| Trained::Ended(e);
    let Inputs {
        params,
        info,
        view,
        checkpoint,
        init_weights,
    } = inputs;
    let dataset = match worker.decoded.get(
        info,
        view.manifest.layout.as_ref(),
        &view.dir,
        data::DecodeAs::of(params, info),
    ) {
        Ok(d) => d,
        Err(e) => return end(LeaseEnd::Finish(failed(format!("data: {e:#}")))),
    };
    let prepared = data::prepare(&dataset, params);
    for note in &prepared.notes {
        tracing::info!(trial = lease.trial_id, "{note}");
    }
    signals.batches.store(
        train::batches_per_epoch(&prepared, params),
        Ordering::Relaxed,
    );
    let weights_path = dir.join(WEIGHTS_NAME);
    // Where the numbers come from; the data hash once per worker and data set (the whole
    // data set as decoded, see `Dataset::content_hash`).
    let data_hash = match dataset.content_hash() {
        Ok(hash) => hash,
        Err(e) => return end(LeaseEnd::Finish(failed(format!("data: {e:#}")))),
    };
    let device = worker.device;
    let provenance: std::collections::HashMap<String, String> = [
        ("cnnd", env!("CARGO_PKG_VERSION").to_string()),
        ("libtorch", crate::LIBTORCH_VERSION.to_string()),
        ("device", format!("{device:?}").to_lowercase()),
        ("worker", worker.session.worker_id()),
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
    let input_record = crate::predict::InputRecord::of(params, info, &prepared);
    if let Err(e) = input_record.save(&dir.join(INPUT_RECORD_NAME)) {
        return end(LeaseEnd::Finish(failed(format!(
            "cannot write the input record: {e}"
        ))));
    }
    let classes = if params.output == Output::Sigmoid {
        1
    } else {
        info.classes as i64
    };
    let files = worker.files();
    let held = (lease.trial_id.as_str(), lease.generation);
    let mut first = true;
    let mut on_epoch = |r: &EpochRecord, facts: &train::TrialInfo| -> bool {
        let deadline = after(worker.session.lease_timeout());
        // The checkpoint of this epoch first: the report names it.
        let uploaded =
            match handle.block_on(files.upload(checkpoint, CHECKPOINT_NAME, held, deadline)) {
                Ok(file) => file,
                Err(e) => {
                    tracing::warn!(
                        trial = lease.trial_id,
                        "checkpoint not uploaded, stopping: {e:#}"
                    );
                    signals.halt(lost_or_refused(&e));
                    return false;
                }
            };
        let mut req = ReportEpochRequest {
            trial_id: lease.trial_id.clone(),
            generation: lease.generation,
            metrics: Some(r.into()),
            checkpoint: Some((&uploaded).into()),
            ..Default::default()
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
                provenance: provenance
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .chain([("precision".to_string(), facts.precision.to_string())])
                    .collect(),
                data_preview_json: facts
                    .data_preview
                    .as_ref()
                    .map(|preview| named_preview(preview, &info.class_names))
                    .unwrap_or_default(),
            });
            first = false;
        }
        let answer = handle.block_on(worker.session.call(deadline, |mut client, worker_id| {
            let req = ReportEpochRequest {
                worker_id,
                ..req.clone()
            };
            async move { client.report_epoch(req).await }
        }));
        match answer {
            Ok(r) => match r.into_inner().stop.as_ref().and_then(Stop::reason) {
                None => true,
                Some(reason) => {
                    halt(&signals.halted, Halt::Told(reason));
                    false
                }
            },
            Err(e) => {
                tracing::warn!(
                    trial = lease.trial_id,
                    "epoch report not taken, stopping: {}",
                    e.message()
                );
                signals.halt(if is_transient(&e) {
                    Halt::DaemonLost
                } else {
                    Halt::Told(StopReason::LeaseLost(e.message().to_string()))
                });
                false
            }
        }
    };
    let control = train::TrialControl {
        checkpoint: Some(checkpoint.as_path()),
        stop: Some(&signals.stop),
        progress: Some(&signals.progress),
        init_weights: init_weights.as_ref().map(|h| h.path()),
    };
    let result = train::run_trial_with(
        &prepared,
        params,
        params.effective_channels(info) as i64,
        classes,
        device,
        &weights_path,
        &control,
        &mut on_epoch,
    );
    let halt = signals.halted();
    // Pruned or parked at an ASHA rung: finished with the test metrics of its best epoch so
    // far (a parked trial stays resumable from its checkpoint if promoted).
    let early_stop = halt.as_ref().and_then(|h| match h {
        Halt::Told(reason) => reason.finish_status().map(|s| (s, reason.to_string())),
        _ => None,
    });
    match result {
        Ok(outcome) if outcome.stopped && halt.is_some() && early_stop.is_none() => {
            end(stopped_because(halt))
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
            let note = finish_note(params, &outcome);
            Trained::Finished(FinishTrialRequest {
                status: status.to_string(),
                // Why it was pruned or parked, kept with its recorded epochs and test metrics.
                error,
                test_loss: outcome.test_loss,
                test_accuracy: outcome.test_accuracy,
                has_test: true,
                best_epoch: outcome.best_epoch,
                parameter_count: outcome.parameter_count,
                test_report_json: outcome
                    .test_report
                    .map(|mut report| {
                        if report.confusion.len() == info.class_names.len() {
                            report.class_names = info.class_names.clone();
                        }
                        serde_json::to_string(&report).unwrap_or_default()
                    })
                    .unwrap_or_default(),
                note,
                ..Default::default()
            })
        }
        Err(train::TrainError::Interrupted { .. }) => end(stopped_because(halt)),
        Err(e) => end(LeaseEnd::Finish(failed(e.to_string()))),
    }
}

/// A failed upload: the daemon out of reach, or a refusal (the lease moved on).
fn lost_or_refused(e: &anyhow::Error) -> Halt {
    if Unreachable::caused(e) {
        Halt::DaemonLost
    } else {
        Halt::Told(StopReason::LeaseLost(format!("{e:#}")))
    }
}

/// Renews the lease every second with the current batch; raises the stop flag when the
/// daemon says stop, has been unreachable for the lease timeout, the lease was not kept
/// through a re-registration, or the trial's time limit is over.
async fn heartbeat_loop(
    worker: Arc<Worker>,
    trial_id: String,
    generation: u64,
    signals: TrialSignals,
    time_limit: Option<Duration>,
) {
    let started = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    let mut last_beat: Option<Instant> = None;
    let mut reached = Instant::now();
    loop {
        tick.tick().await;
        let (epoch, batch) = train::decode_progress(signals.progress.load(Ordering::Relaxed));
        if let Some(limit) = time_limit {
            if started.elapsed() > limit {
                signals.halt(Halt::TimedOut(format!(
                    "exceeded the time limit of {} s at epoch {epoch}, batch {batch}",
                    limit.as_secs_f64()
                )));
                return;
            }
        }
        if last_beat.is_some_and(|t| t.elapsed() < Duration::from_secs(1)) {
            continue;
        }
        last_beat = Some(Instant::now());
        let req = HeartbeatRequest {
            trial_id: trial_id.clone(),
            generation,
            epoch,
            batch,
            batches: signals.batches.load(Ordering::Relaxed),
            ..Default::default()
        };
        let answer = worker
            .session
            .call(after(Duration::from_secs(5)), |mut client, worker_id| {
                let req = HeartbeatRequest {
                    worker_id,
                    ..req.clone()
                };
                async move { client.heartbeat(req).await }
            })
            .await;
        if !worker.session.holds(&trial_id, generation) {
            signals.halt(Halt::Told(StopReason::LeaseLost(
                "the daemon did not keep this lease when the worker registered again".into(),
            )));
            return;
        }
        match answer {
            Ok(r) => {
                reached = Instant::now();
                if let Some(reason) = r.into_inner().stop.as_ref().and_then(Stop::reason) {
                    signals.halt(Halt::Told(reason));
                    return;
                }
            }
            Err(e) if is_transient(&e) => {
                if reached.elapsed() > worker.session.lease_timeout() {
                    tracing::warn!(
                        trial = trial_id,
                        "the daemon has been unreachable for the lease timeout: stopping the trial"
                    );
                    signals.halt(Halt::DaemonLost);
                    return;
                }
            }
            Err(e) => {
                signals.halt(Halt::Told(StopReason::LeaseLost(e.message().to_string())));
                return;
            }
        }
    }
}

/// Shared with the Predict loop: the session, the cache and the stop flag.
pub struct PredictContext {
    worker: Arc<Worker>,
}

impl PredictContext {
    pub fn session(&self) -> &Session {
        &self.worker.session
    }
    pub fn files(&self) -> Files<'_> {
        self.worker.files()
    }
    pub fn terminating(&self) -> bool {
        self.worker.terminating.load(Ordering::SeqCst)
    }
    pub fn local(&self) -> bool {
        self.worker.local
    }
}

impl Worker {
    fn clone_for_predict(self: &Arc<Self>) -> PredictContext {
        PredictContext {
            worker: self.clone(),
        }
    }
}
