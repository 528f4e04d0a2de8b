//! The scheduler: turns queued trials into leases held by workers, and worker reports into
//! store transactions. It owns the registry of workers (the ones it starts, one per local
//! slot, and any that connect from other machines), the local worker pool (spawning and
//! supervising `cnnd-worker` processes, killing them only through their process handles),
//! lease expiry (a silent worker's trial is re-queued; leases outlive a daemon restart), and
//! the live event feed that watchers subscribe to.
//!
//! Must not touch: libtorch or the training code (workers are separate processes that speak
//! the gRPC worker protocol), gRPC transport details, or chart rendering.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Result;
use tokio::sync::{broadcast, Notify};

use crate::blobs::Blobs;
use crate::datasets::Resolved;
use crate::predict_jobs::PredictJobs;
use crate::store::{
    Lease, QueueFull, ReportError, Store, StoredEvent, SuggestionBasis, TrialFacts, TrialResult,
    TrialRow,
};
use cnnd_core::content::{FileRef, CHECKPOINT_FORMAT, PROTOCOL_VERSION, UNKNOWN_WORKER_HINT};
use cnnd_core::devices::Device;
use cnnd_core::epoch::EpochRecord;
use cnnd_core::pruning::{self, EarlyStopping, OtherTrial, RungState, RungTrial};
use cnnd_core::status::{StopReason, TrialStatus, WorkerState};
use cnnd_core::sweep::{Objective, SweepLimits, SweepSpec};

/// One worker slot: a process the daemon keeps running.
#[derive(Debug, Clone)]
pub struct SlotConfig {
    pub worker_id: String,
    /// "cpu" or "cuda:N".
    pub device: String,
    pub threads: u32,
}

#[derive(Debug, Clone)]
pub struct SchedulerConfig {
    pub state_dir: PathBuf,
    pub db_path: PathBuf,
    pub data_dir: Option<PathBuf>,
    pub slots: Vec<SlotConfig>,
    /// The devices of this machine, as `cnnd-worker probe` saw them at start-up (what the
    /// local slots were planned from); registered workers add theirs.
    pub devices: Vec<Device>,
    pub limits: SweepLimits,
    /// How many times a trial whose worker died is re-queued before it fails.
    pub max_attempts: u32,
    /// How long a Lease call waits for a trial before answering "none".
    pub lease_poll: Duration,
    /// A busy worker silent for this long loses its lease (its process is killed).
    pub lease_timeout: Duration,
    /// On shutdown, how long running trials get to reach an epoch boundary.
    pub shutdown_grace: Duration,
    /// The program and leading arguments that start a worker process (`cnnd-worker`); the
    /// scheduler adds `--connect URL --name ID --slot ID --threads N --device D
    /// --cache-dir STATE_DIR/worker-cache`.
    pub worker_command: Vec<String>,
    /// The worker token file (read again at every start of a worker process, so a rotation
    /// reaches them); None with `--insecure-no-auth`.
    pub worker_token_file: Option<PathBuf>,
    /// Live events kept for a subscriber that falls behind; one further behind gets
    /// `RecvError::Lagged` and must re-read what it needs from the store.
    pub event_buffer: usize,
    /// With a cluster launcher (Slurm, Kubernetes): which registered workers are its, and
    /// when an idle one is told to exit. None with the local launcher.
    pub cluster: Option<ClusterWorkers>,
}

/// The workers a cluster launcher started, as the scheduler sees them: those whose
/// registration names a job with this prefix. An idle one beyond `min_workers` is told to
/// exit after `idle` ([`Scheduler::retire_if_surplus`]).
#[derive(Debug, Clone)]
pub struct ClusterWorkers {
    /// "slurm:" or "k8s:", as workers report their job.
    pub job_prefix: String,
    pub min_workers: u32,
    pub idle: Duration,
}

/// What the launcher is doing, for `cnnctl status` and the metrics: a cluster launcher
/// publishes it after every look at the queue and the cluster ([`Scheduler::set_launcher_view`]).
#[derive(Debug, Clone, Default)]
pub struct LauncherView {
    pub kind: String,
    pub min_workers: u32,
    pub max_workers: u32,
    pub wanted: u32,
    pub starting: u32,
    pub running: u32,
    pub idle: u32,
    pub jobs: Vec<LauncherJobView>,
    /// The cluster's last refusal, and when.
    pub last_error: Option<(String, Instant)>,
}

/// One cluster job a launcher tracks.
#[derive(Debug, Clone)]
pub struct LauncherJobView {
    pub job: String,
    /// pending, starting, running, ended.
    pub state: String,
    pub reason: String,
    pub worker_id: Option<String>,
    /// "cpu" or "cuda".
    pub device: String,
    pub submitted: Instant,
}

impl Default for SchedulerConfig {
    /// The daemon's defaults, no worker slots, no devices but the CPU: what tests and
    /// benchmarks that drive the scheduler in-process start from.
    fn default() -> Self {
        SchedulerConfig {
            state_dir: PathBuf::from("."),
            db_path: PathBuf::from("cnnd.sqlite"),
            data_dir: None,
            slots: Vec::new(),
            devices: vec![Device {
                name: "cpu".into(),
                kind: "cpu".into(),
                cores: 1,
                memory_bytes: 0,
                description: "cpu".into(),
            }],
            limits: SweepLimits::default(),
            max_attempts: 3,
            lease_poll: Duration::from_secs(5),
            lease_timeout: Duration::from_secs(30),
            shutdown_grace: Duration::from_secs(30),
            worker_command: Vec::new(),
            worker_token_file: None,
            event_buffer: 4096,
            cluster: None,
        }
    }
}

/// What the daemon knows about one worker right now.
#[derive(Debug, Clone, Default)]
pub struct WorkerView {
    pub worker_id: String,
    /// The name it registered with, and its machine.
    pub name: String,
    pub host: String,
    /// A worker this daemon started: its slot. None for a worker that connected itself.
    pub slot: Option<String>,
    pub cnnd_version: String,
    pub checkpoint_format: u32,
    /// The cluster job that runs it (Slurm job id, Kubernetes pod), when any.
    pub launcher_job: String,
    /// When it last called the daemon (lease poll, report, heartbeat, Predict poll).
    pub last_seen: Option<Instant>,
    pub pid: u32,
    pub device: String,
    pub threads: u32,
    pub state: WorkerState,
    pub trial_id: Option<String>,
    pub sweep_id: Option<String>,
    pub generation: u64,
    pub epoch: u32,
    pub epochs_planned: u32,
    pub val_accuracy: f64,
    pub trials_done: u32,
    pub libtorch_version: String,
    /// The devices the worker's libtorch sees (from its registration).
    pub devices: Vec<Device>,
    pub batch: u32,
    pub batches: u32,
    /// Last sign of life while busy (lease, report or heartbeat).
    pub last_heartbeat: Option<Instant>,
    /// Since when it has waited for a trial (registered or last trial ended).
    pub idle_since: Option<Instant>,
}

/// What a worker should do with the trial it runs: go on (None), or stop for a reason.
pub type Verdict = Option<StopReason>;

pub struct Scheduler {
    pub store: Store,
    pub config: SchedulerConfig,
    pub started: Instant,
    events: broadcast::Sender<StoredEvent>,
    workers: Mutex<HashMap<String, WorkerView>>,
    queue_changed: Notify,
    shutting_down: std::sync::atomic::AtomicBool,
    /// Set when the shutdown grace period is over: running trials stop mid-epoch.
    hard_stop: std::sync::atomic::AtomicBool,
    /// Serialises tpe suggestions, so each sees the ones made before it as pending.
    suggesting: tokio::sync::Mutex<()>,
    /// Serialises ASHA's promotion decisions, so each sees the parks and promotions before it.
    promoting: tokio::sync::Mutex<()>,
    /// Trials told to park at an ASHA rung whose workers have not finished them yet (they
    /// are not promotable until then: their checkpoint may still be being written).
    parking: Mutex<std::collections::HashSet<String>>,
    /// Each sweep's early-stopping policy, read once ([`Self::stop_policy`]).
    stop_policies: Mutex<HashMap<String, Arc<StopPolicy>>>,
    /// Each sweep's data set as this daemon resolved it (an image folder with its files),
    /// once per sweep ([`Self::dataset_of`]): what leases carry and tpe suggestions check.
    datasets: Mutex<HashMap<String, Arc<LeasedDataset>>>,
    /// Predict calls waiting for a worker.
    pub predict_jobs: PredictJobs,
    /// The daemon's files by content: data served to workers, results they upload.
    pub blobs: Blobs,
    /// Trials a previous daemon process left running under leases that had not run out
    /// (remote workers keep training through a restart): trial -> (generation, deadline).
    /// A worker that reconnects holding one keeps it; at the deadline it is re-queued.
    unclaimed: Mutex<HashMap<String, (u64, Instant)>>,
    /// Each running trial's latest checkpoint in the blob store (the one before it is
    /// deleted when a newer one is recorded).
    checkpoints: Mutex<HashMap<String, FileRef>>,
    /// Per slot, the channel to its supervisor: a message asks it to kill the worker
    /// process it runs now, through the process handle it holds (never by a stored pid,
    /// which may belong to another process by then).
    kill_requests: HashMap<String, tokio::sync::mpsc::UnboundedSender<String>>,
    /// The receiving ends, taken by each slot's supervisor when it starts.
    kill_receivers: Mutex<HashMap<String, tokio::sync::mpsc::UnboundedReceiver<String>>>,
    /// The cluster launcher's latest view (None with the local launcher).
    launcher_view: Mutex<Option<LauncherView>>,
}

/// A sweep's data set as leases carry it: what it is, and an image folder's files, as JSON.
#[derive(Debug)]
pub struct LeasedDataset {
    pub resolved: Resolved,
    pub info_json: String,
    pub layout_json: String,
}

/// What early stopping needs of a sweep; fixed when the sweep is submitted.
#[derive(Debug)]
struct StopPolicy {
    sweep_id: String,
    early_stopping: EarlyStopping,
    objective: Objective,
}

/// A report refused because the worker's lease is gone.
pub type Refusal = ReportError;

/// Why a worker's registration is refused.
#[derive(Debug, thiserror::Error)]
pub enum RegisterError {
    /// It speaks another major version of the worker protocol: what to upgrade.
    #[error("{0}")]
    Incompatible(String),
    /// It claims a slot this daemon does not have.
    #[error("{0}")]
    UnknownSlot(String),
}

/// What a worker says of itself when it registers.
#[derive(Debug, Clone, Default)]
pub struct Registration {
    pub name: String,
    pub host: String,
    pub pid: u32,
    pub device: String,
    pub threads: u32,
    pub cnnd_version: String,
    pub libtorch_version: String,
    /// "major.minor".
    pub protocol: String,
    pub checkpoint_format: u32,
    pub slot: Option<String>,
    /// Leases it still trains after a reconnect: (trial, generation).
    pub held: Vec<(String, u64)>,
    pub devices: Vec<Device>,
    pub launcher_job: String,
}

impl Registration {
    /// The registration of a worker this daemon started for `slot`, speaking this build's
    /// protocol (what in-process tests register as).
    pub fn local(slot: &str, pid: u32) -> Registration {
        Registration {
            name: slot.to_string(),
            host: "localhost".into(),
            pid,
            device: "cpu".into(),
            threads: 1,
            cnnd_version: env!("CARGO_PKG_VERSION").into(),
            libtorch_version: "test".into(),
            protocol: format!("{}.{}", PROTOCOL_VERSION.0, PROTOCOL_VERSION.1),
            checkpoint_format: CHECKPOINT_FORMAT,
            slot: Some(slot.to_string()),
            held: Vec::new(),
            devices: Vec::new(),
            launcher_job: String::new(),
        }
    }
}

/// The answer to a registration: the id the worker uses, and which of its held leases it
/// keeps.
#[derive(Debug, Clone)]
pub struct Registered {
    pub worker_id: String,
    pub kept: Vec<(String, u64)>,
}

/// The environment variable a worker this daemon starts finds the worker token in
/// (`cnnd-worker` reads it as `CNND_WORKER_TOKEN`).
pub const WORKER_TOKEN_ENV: &str = "CNND_WORKER_TOKEN";

/// Milliseconds since the Unix epoch (lease deadlines in the store).
fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

impl Scheduler {
    pub fn new(store: Store, config: SchedulerConfig) -> Result<Arc<Scheduler>> {
        let (events, _) = broadcast::channel(config.event_buffer.max(1));
        let workers = config
            .slots
            .iter()
            .map(|s| {
                (
                    s.worker_id.clone(),
                    WorkerView {
                        worker_id: s.worker_id.clone(),
                        name: s.worker_id.clone(),
                        slot: Some(s.worker_id.clone()),
                        device: s.device.clone(),
                        threads: s.threads,
                        state: WorkerState::Starting,
                        checkpoint_format: CHECKPOINT_FORMAT,
                        ..Default::default()
                    },
                )
            })
            .collect();
        let (kill_requests, kill_receivers) = config
            .slots
            .iter()
            .map(|s| {
                let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
                ((s.worker_id.clone(), tx), (s.worker_id.clone(), rx))
            })
            .unzip();
        let blobs = Blobs::open(&config.state_dir)?;
        Ok(Arc::new(Scheduler {
            blobs,
            unclaimed: Default::default(),
            checkpoints: Default::default(),
            kill_requests,
            kill_receivers: Mutex::new(kill_receivers),
            launcher_view: Default::default(),
            store,
            config,
            started: Instant::now(),
            events,
            workers: Mutex::new(workers),
            queue_changed: Notify::new(),
            shutting_down: Default::default(),
            hard_stop: Default::default(),
            suggesting: Default::default(),
            promoting: Default::default(),
            parking: Default::default(),
            stop_policies: Default::default(),
            datasets: Default::default(),
            predict_jobs: Default::default(),
        }))
    }

    /// Live events, for watchers. Subscribe before reading history so nothing falls between.
    pub fn subscribe(&self) -> broadcast::Receiver<StoredEvent> {
        self.events.subscribe()
    }

    pub(crate) fn publish(&self, events: impl IntoIterator<Item = StoredEvent>) {
        for e in events {
            // No subscriber is fine: the store has the event.
            let _ = self.events.send(e);
        }
    }

    pub fn workers(&self) -> Vec<WorkerView> {
        let mut v: Vec<_> = self.workers.lock().unwrap().values().cloned().collect();
        v.sort_by(|a, b| a.worker_id.cmp(&b.worker_id));
        v
    }

    /// Every device this daemon can train on: its own machine's (probed at start-up) and
    /// those of the registered workers, each name once.
    pub fn devices(&self) -> Vec<Device> {
        let mut out = self.config.devices.clone();
        for w in self.workers.lock().unwrap().values() {
            for d in &w.devices {
                if !out.iter().any(|o| o.name == d.name) {
                    out.push(d.clone());
                }
            }
        }
        out
    }

    pub fn has_cuda(&self) -> bool {
        self.devices().iter().any(Device::is_cuda)
    }

    /// Workers registered and not gone: they serve leases and Predict jobs.
    pub fn connected_workers(&self) -> usize {
        self.workers
            .lock()
            .unwrap()
            .values()
            .filter(|w| w.state != WorkerState::Starting)
            .count()
    }

    /// After a restart: re-queues the trials a previous daemon process left running whose
    /// leases ran out (its own workers died with it: their leases are not persisted), keeps
    /// the others for their workers to claim when they reconnect ([`Self::register`]), and
    /// serves the data of the sweeps still open again. Returns how many were re-queued.
    pub async fn recover(&self) -> Result<usize> {
        let now = now_ms();
        let mut requeued = 0;
        for (trial, generation, expires) in self.store.running_leases().await? {
            match expires.filter(|e| *e > now) {
                Some(e) => {
                    let deadline = Instant::now() + Duration::from_millis((e - now) as u64);
                    self.unclaimed
                        .lock()
                        .unwrap()
                        .insert(trial, (generation, deadline));
                }
                None => {
                    let events = self
                        .store
                        .release_trial(
                            &trial,
                            generation,
                            "the daemon restarted while it ran",
                            self.config.max_attempts,
                            false,
                        )
                        .await?;
                    self.publish(events);
                    requeued += 1;
                }
            }
        }
        for sweep_id in self.store.sweeps_with_parked_trials().await? {
            self.after_trial_ended(&sweep_id).await?;
        }
        if let Some(data_dir) = &self.config.data_dir {
            for manifest in self.store.open_manifests().await? {
                if let Err(e) = crate::datasets::serve_manifest(&manifest, data_dir, &self.blobs) {
                    tracing::warn!("data of an open sweep not served again: {e:#}");
                }
            }
        }
        Ok(requeued)
    }

    /// Stores a validated sweep and wakes idle workers; refused when the queue would hold
    /// more than `max_queued` trials.
    pub async fn submit(
        &self,
        spec: &SweepSpec,
        manifest: Option<&FileRef>,
        max_queued: u32,
    ) -> Result<std::result::Result<(String, Vec<String>), QueueFull>> {
        let id = format!("sw-{:08x}", rand::random::<u32>());
        let manifest = manifest.map(|m| m.digest.as_str());
        let trials = match self
            .store
            .insert_sweep(&id, spec, manifest, max_queued)
            .await?
        {
            Ok(trials) => trials,
            Err(full) => return Ok(Err(full)),
        };
        self.queue_changed.notify_waiters();
        Ok(Ok((id, trials)))
    }

    fn slot_devices(device: &str) -> (&'static [&'static str], &'static str) {
        if device.starts_with("cuda") {
            (&["auto", "cuda"], "cuda")
        } else {
            (&["auto", "cpu"], "cpu")
        }
    }

    /// Long poll: the next trial for this worker, or None after `lease_poll`.
    ///
    /// A worker trains one trial at a time, so one that asks while the daemon still counts a
    /// trial as its own has dropped that trial (its finish or release never got through): the
    /// trial goes back to the queue now rather than waiting on a lease that nobody renews.
    pub async fn lease(&self, worker_id: &str) -> Result<Option<Lease>> {
        let (device, checkpoint_format, local, dropped) = {
            let mut workers = self.workers.lock().unwrap();
            match workers.get_mut(worker_id) {
                Some(w) => {
                    w.last_seen = Some(Instant::now());
                    let dropped = if w.state == WorkerState::Busy {
                        w.state = WorkerState::Idle;
                        w.idle_since = Some(Instant::now());
                        w.sweep_id = None;
                        w.trial_id.take().map(|t| (t, w.generation))
                    } else {
                        None
                    };
                    (
                        w.device.clone(),
                        w.checkpoint_format,
                        w.slot.is_some(),
                        dropped,
                    )
                }
                None => anyhow::bail!(
                    "unknown worker '{worker_id}': {UNKNOWN_WORKER_HINT} (the daemon may have restarted)"
                ),
            }
        };
        if let Some((trial, generation)) = dropped {
            let why = format!(
                "worker {worker_id} asked for another trial while holding this one (its finish or release did not get through)"
            );
            tracing::warn!(worker = worker_id, trial, "{why}: queued again");
            self.requeue(&trial, generation, &why).await?;
        }
        let (serves, kind) = Self::slot_devices(&device);
        let deadline = tokio::time::Instant::now() + self.config.lease_poll;
        loop {
            if self.shutting_down.load(std::sync::atomic::Ordering::SeqCst) {
                return Ok(None);
            }
            // Register interest before looking, so a submit between the look and the wait
            // still wakes us.
            let changed = self.queue_changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            // A worker this daemon started dies with it: its lease is not kept through a
            // restart. Another worker's lease runs out after the lease timeout.
            let expires_at_ms =
                (!local).then(|| now_ms() + self.config.lease_timeout.as_millis() as i64);
            let ask = crate::store::LeaseAsk {
                worker: worker_id,
                devices: serves,
                ran_on: &device,
                checkpoint_format,
                expires_at_ms,
            };
            if let Some((mut lease, event)) = self.store.lease_next(&ask).await? {
                let _ = kind;
                if lease.awaiting_suggestion {
                    if let Err(invalid) = self.suggest(&mut lease).await? {
                        // Never handed to a worker: the trial fails here, and the next one
                        // is looked for.
                        self.publish([event]);
                        self.fail_unsuggestable(&lease, &invalid).await?;
                        continue;
                    }
                }
                {
                    let mut workers = self.workers.lock().unwrap();
                    if let Some(w) = workers.get_mut(worker_id) {
                        w.state = WorkerState::Busy;
                        w.trial_id = Some(lease.trial_id.clone());
                        w.sweep_id = Some(lease.sweep_id.clone());
                        w.generation = lease.generation;
                        w.epoch = 0;
                        w.epochs_planned = lease.params.epochs;
                        w.val_accuracy = 0.0;
                        w.batch = 0;
                        w.batches = 0;
                        w.last_heartbeat = Some(Instant::now());
                    }
                }
                self.publish([event]);
                return Ok(Some(lease));
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                return Ok(None);
            }
        }
    }

    /// A worker says who it is: one this daemon started takes its slot's id; any other gets
    /// its name (with a suffix when another machine already uses it). Refused when it speaks
    /// another major version of the protocol. The leases it says it still holds (after a
    /// reconnect) are kept when the daemon agrees: the trial is still running at that
    /// generation and no other worker holds it.
    pub async fn register(&self, r: Registration) -> Result<Registered, RegisterError> {
        let major = r
            .protocol
            .split('.')
            .next()
            .and_then(|m| m.parse::<u32>().ok());
        if major != Some(PROTOCOL_VERSION.0) {
            return Err(RegisterError::Incompatible(format!(
                "protocol: worker '{}' on {} (cnnd {}) speaks worker protocol {}, this daemon (cnnd {}) speaks {}.{}: install the cnnd-worker of cnnd {} on {}",
                r.name,
                r.host,
                r.cnnd_version,
                if r.protocol.is_empty() { "1.x" } else { &r.protocol },
                env!("CARGO_PKG_VERSION"),
                PROTOCOL_VERSION.0,
                PROTOCOL_VERSION.1,
                env!("CARGO_PKG_VERSION"),
                r.host
            )));
        }
        // What the held leases are (running, at that generation), read before locking.
        let mut holdable = Vec::new();
        for (trial, generation) in &r.held {
            if let Ok(Some(t)) = self.store.trial(trial).await {
                if t.status == TrialStatus::Running && t.generation == *generation {
                    holdable.push(t);
                }
            }
        }
        let mut workers = self.workers.lock().unwrap();
        let worker_id = match &r.slot {
            Some(slot) => {
                if workers.get(slot).is_none_or(|w| w.slot.is_none()) {
                    return Err(RegisterError::UnknownSlot(format!(
                        "slot: this daemon has no worker slot '{slot}'"
                    )));
                }
                slot.clone()
            }
            None => {
                let base = if r.name.is_empty() {
                    format!("{}-{}", r.host, r.pid)
                } else {
                    r.name.clone()
                };
                let mut id = base.clone();
                let mut n = 1;
                // The same name from the same machine is the same worker reconnecting.
                while workers
                    .get(&id)
                    .is_some_and(|w| w.slot.is_some() || w.host != r.host)
                {
                    n += 1;
                    id = format!("{base}-{n}");
                }
                id
            }
        };
        let held_elsewhere: std::collections::HashSet<String> = workers
            .values()
            .filter(|w| w.worker_id != worker_id)
            .filter_map(|w| w.trial_id.clone())
            .collect();
        let w = workers.entry(worker_id.clone()).or_default();
        let (trials_done, slot) = (w.trials_done, w.slot.clone());
        *w = WorkerView {
            worker_id: worker_id.clone(),
            name: r.name,
            host: r.host,
            slot,
            cnnd_version: r.cnnd_version,
            checkpoint_format: r.checkpoint_format,
            launcher_job: r.launcher_job,
            last_seen: Some(Instant::now()),
            pid: r.pid,
            device: r.device,
            threads: r.threads,
            state: WorkerState::Idle,
            trials_done,
            libtorch_version: r.libtorch_version,
            devices: r.devices,
            idle_since: Some(Instant::now()),
            ..Default::default()
        };
        let mut kept = Vec::new();
        if let Some(t) = holdable
            .into_iter()
            .find(|t| !held_elsewhere.contains(&t.id))
        {
            self.unclaimed.lock().unwrap().remove(&t.id);
            w.state = WorkerState::Busy;
            w.trial_id = Some(t.id.clone());
            w.sweep_id = Some(t.sweep_id.clone());
            w.generation = t.generation;
            w.epoch = t.epochs_done;
            w.epochs_planned = t.epochs_planned;
            w.last_heartbeat = Some(Instant::now());
            kept.push((t.id, t.generation));
        }
        Ok(Registered { worker_id, kept })
    }

    /// Whether this daemon knows the worker (it registered since the daemon started).
    pub fn knows(&self, worker_id: &str) -> bool {
        self.workers.lock().unwrap().contains_key(worker_id)
    }

    /// Notes that a worker called (any call keeps it listed as connected).
    pub fn seen(&self, worker_id: &str) {
        if let Some(w) = self.workers.lock().unwrap().get_mut(worker_id) {
            w.last_seen = Some(Instant::now());
        }
    }

    /// Records an epoch and says whether the worker goes on.
    pub async fn report_epoch(
        &self,
        trial_id: &str,
        generation: u64,
        epoch: &EpochRecord,
        facts: Option<&TrialFacts>,
        checkpoint: Option<&FileRef>,
    ) -> Result<Result<Verdict, Refusal>> {
        match self
            .store
            .record_epoch(trial_id, generation, epoch, facts, checkpoint)
            .await?
        {
            Ok(event) => {
                // The daemon keeps each trial's latest checkpoint only.
                if let Some(new) = checkpoint {
                    let old = self
                        .checkpoints
                        .lock()
                        .unwrap()
                        .insert(trial_id.to_string(), new.clone());
                    if let Some(old) = old.filter(|old| old.digest != new.digest) {
                        self.blobs.remove(&old);
                    }
                }
                {
                    let mut workers = self.workers.lock().unwrap();
                    if let Some(w) = workers
                        .values_mut()
                        .find(|w| w.trial_id.as_deref() == Some(trial_id))
                    {
                        w.last_seen = Some(Instant::now());
                        w.epoch = epoch.epoch;
                        w.val_accuracy = epoch.val_accuracy;
                        w.last_heartbeat = Some(Instant::now());
                    }
                }
                let sweep_id = event.sweep_id.clone();
                self.publish([event]);
                if self.is_shutting_down() {
                    return Ok(Ok(Some(StopReason::GiveBack)));
                }
                if let Some(reason) = self.early_stop(&sweep_id, trial_id).await? {
                    tracing::info!(trial = trial_id, "{reason}");
                    return Ok(Ok(Some(reason)));
                }
                Ok(Ok(None))
            }
            Err(ReportError::StaleLease {
                status: TrialStatus::Cancelled,
                ..
            }) => Ok(Ok(Some(StopReason::Cancelled))),
            Err(e) => Ok(Err(e)),
        }
    }

    /// Suggests the values of a leased tpe trial from its sweep's finished trials (and its
    /// running ones as pending), checks them like any configuration (`TrialParams::
    /// validate`), stores them with their basis, and puts them in the lease. Err: the
    /// suggestion does not validate (nothing stored); submit-time checks of the search space
    /// should make that impossible.
    async fn suggest(&self, lease: &mut Lease) -> Result<std::result::Result<(), String>> {
        let _one_at_a_time = self.suggesting.lock().await;
        let Some(sweep) = self.store.sweep(&lease.sweep_id).await? else {
            return Ok(Ok(()));
        };
        let Some(search) = &sweep.tpe else {
            return Ok(Ok(()));
        };
        let trials = self.store.trials_of(&lease.sweep_id).await?;
        let histories = self.store.objective_histories(&lease.sweep_id).await?;
        let (observed, pending) =
            suggestion_inputs(&trials, &histories, &sweep.objective, &lease.trial_id);
        let index = trials
            .iter()
            .find(|t| t.id == lease.trial_id)
            .map_or(0, |t| t.index);
        let (params, tpe) = search.suggest(
            index,
            &lease.params,
            &observed
                .iter()
                .map(|(t, s)| (t.params.clone(), *s))
                .collect::<Vec<_>>(),
            &pending.iter().map(|t| t.params.clone()).collect::<Vec<_>>(),
        );
        if let Some(dataset) = self.dataset_of(&sweep.id, &sweep.dataset).await {
            if let Err(e) = params.validate(&dataset.resolved.info) {
                return Ok(Err(format!("tpe suggested an invalid configuration: {e}")));
            }
        }
        let basis = SuggestionBasis {
            observed: observed.iter().map(|(t, _)| t.id.clone()).collect(),
            pending: pending.iter().map(|t| t.id.clone()).collect(),
            tpe,
        };
        self.store
            .set_suggestion(&lease.trial_id, &params, &basis)
            .await?;
        lease.params = params;
        lease.awaiting_suggestion = false;
        Ok(Ok(()))
    }

    /// The data set of sweep `sweep_id` named `dataset` as this daemon resolves it (an
    /// image folder is listed; once per sweep and daemon). None when it no longer resolves
    /// (a folder removed since the submit): the caller says so.
    pub async fn dataset_of(&self, sweep_id: &str, dataset: &str) -> Option<Arc<LeasedDataset>> {
        if let Some(d) = self.datasets.lock().unwrap().get(sweep_id) {
            return Some(d.clone());
        }
        let (name, data_dir) = (dataset.to_string(), self.config.data_dir.clone());
        let resolved = tokio::task::spawn_blocking(move || {
            crate::datasets::resolve_with_layout(&name, data_dir.as_deref())
        })
        .await;
        let resolved = match resolved {
            Ok(Ok(resolved)) => resolved,
            Ok(Err(e)) => {
                tracing::warn!(
                    sweep = sweep_id,
                    "data set {dataset} no longer resolves: {e}"
                );
                return None;
            }
            Err(e) => {
                tracing::error!(sweep = sweep_id, "resolving the data set: {e}");
                return None;
            }
        };
        let leased = Arc::new(LeasedDataset {
            info_json: serde_json::to_string(&resolved.info).unwrap_or_default(),
            layout_json: resolved
                .layout
                .as_ref()
                .map(|l| serde_json::to_string(l).unwrap_or_default())
                .unwrap_or_default(),
            resolved,
        });
        let mut cache = self.datasets.lock().unwrap();
        if cache.len() >= 64 {
            cache.clear();
        }
        cache.insert(sweep_id.to_string(), leased.clone());
        Some(leased)
    }

    /// Fails a leased tpe trial whose suggestion did not validate.
    async fn fail_unsuggestable(&self, lease: &Lease, why: &str) -> Result<()> {
        tracing::error!(trial = lease.trial_id, "{why}");
        let result = TrialResult {
            error: Some(why.to_string()),
            ..TrialResult::of(TrialStatus::Failed)
        };
        if let Ok(events) = self
            .store
            .finish_trial(&lease.trial_id, lease.generation, &result)
            .await?
        {
            self.publish(events);
            self.after_trial_ended(&lease.sweep_id).await?;
        }
        Ok(())
    }

    /// The sweep's early-stopping decision for `trial_id`, which just recorded an epoch:
    /// the reason to stop it (pruned, or parked at an ASHA rung), or None.
    async fn early_stop(&self, sweep_id: &str, trial_id: &str) -> Result<Option<StopReason>> {
        let Some(sweep) = self.stop_policy(sweep_id).await? else {
            return Ok(None);
        };
        if sweep.early_stopping == EarlyStopping::None {
            return Ok(None);
        }
        if is_promoting(&sweep.early_stopping) {
            return Ok(self.asha_decide(&sweep, Some(trial_id), false).await?.park);
        }
        let objective = sweep.objective;
        let pick = |epoch: &(f64, f64)| objective.of_epoch(*epoch);
        let mut trial = Vec::new();
        let mut others = Vec::new();
        for (id, status, history) in self.store.objective_histories(sweep_id).await? {
            let values: Vec<f64> = history.iter().map(pick).collect();
            if id == trial_id {
                trial = values;
            } else {
                others.push(OtherTrial {
                    completed: status == TrialStatus::Succeeded,
                    values,
                });
            }
        }
        Ok(pruning::decide(
            &sweep.early_stopping,
            objective,
            &trial,
            &others,
        ))
    }

    /// The early-stopping policy of a sweep, read once per sweep (it never changes).
    async fn stop_policy(&self, sweep_id: &str) -> Result<Option<Arc<StopPolicy>>> {
        if let Some(p) = self.stop_policies.lock().unwrap().get(sweep_id) {
            return Ok(Some(p.clone()));
        }
        let Some(sweep) = self.store.sweep(sweep_id).await? else {
            return Ok(None);
        };
        let policy = Arc::new(StopPolicy {
            sweep_id: sweep.id.clone(),
            early_stopping: sweep.early_stopping,
            objective: Objective::from_name(&sweep.objective),
        });
        let mut policies = self.stop_policies.lock().unwrap();
        if policies.len() >= 1024 {
            policies.clear();
        }
        policies.insert(sweep_id.to_string(), policy.clone());
        Ok(Some(policy))
    }

    /// ASHA's promotion form (see [`pruning::asha_promotions`]) after `subject` recorded an
    /// epoch, or after a trial ended (`subject` None): queues the parked trials that now
    /// deserve promotion; `park` of the answer says why `subject` parks (None: it goes on).
    /// With `exhausted` (nothing queued or running) every rung keeps at least one trial.
    async fn asha_decide(
        &self,
        sweep: &StopPolicy,
        subject: Option<&str>,
        exhausted: bool,
    ) -> Result<pruning::Promotions> {
        let _one_at_a_time = self.promoting.lock().await;
        let objective = sweep.objective;
        let trials: Vec<RungTrial> = {
            let histories = self.store.objective_histories(&sweep.sweep_id).await?;
            let parking = self.parking.lock().unwrap();
            histories
                .into_iter()
                .map(|(id, status, history)| RungTrial {
                    state: match status {
                        s if s.is_active() && parking.contains(&id) => RungState::Parking,
                        s if s.is_active() => RungState::Active,
                        TrialStatus::Parked => RungState::Parked,
                        _ => RungState::Closed,
                    },
                    values: history.iter().map(|e| objective.of_epoch(*e)).collect(),
                    id,
                })
                .collect()
        };
        let decision = pruning::asha_promotions(
            &sweep.early_stopping,
            objective,
            &trials,
            subject,
            exhausted,
        );
        if !decision.promote.is_empty() {
            let n = self.store.promote_parked(&decision.promote).await?;
            tracing::info!(sweep = sweep.sweep_id, trials = ?decision.promote, queued = n, "asha: promoted");
            self.queue_changed.notify_waiters();
        }
        if let (Some(id), Some(reason)) = (subject, &decision.park) {
            self.parking.lock().unwrap().insert(id.to_string());
            tracing::info!(trial = id, "{reason}");
        }
        Ok(decision)
    }

    /// After a trial of `sweep_id` ended (finished, parked, failed): ASHA promotions, and
    /// when nothing is left to run, the parked trials end pruned and the sweep finishes.
    async fn after_trial_ended(&self, sweep_id: &str) -> Result<()> {
        let Some(sweep) = self.stop_policy(sweep_id).await? else {
            return Ok(());
        };
        if !is_promoting(&sweep.early_stopping) {
            return Ok(());
        }
        self.asha_decide(&sweep, None, false).await?;
        if self.store.active_trials(sweep_id).await? > 0 {
            return Ok(());
        }
        // Nothing left to run: every rung keeps at least one (the best goes on to the end);
        // when no rung has anyone left to promote, the parked trials end pruned.
        if !self
            .asha_decide(&sweep, None, true)
            .await?
            .promote
            .is_empty()
        {
            return Ok(());
        }
        let events = self.store.settle_parked(sweep_id).await?;
        self.publish(events);
        Ok(())
    }

    /// Whether `worker_id` holds `trial_id`'s live lease at `generation` (what an upload
    /// for that trial must show); renews the lease as a sign of life.
    pub fn holds(&self, worker_id: &str, trial_id: &str, generation: u64) -> bool {
        let mut workers = self.workers.lock().unwrap();
        let Some(w) = workers.get_mut(worker_id) else {
            return false;
        };
        let holds = w.trial_id.as_deref() == Some(trial_id) && w.generation == generation;
        if holds {
            w.last_heartbeat = Some(Instant::now());
            w.last_seen = w.last_heartbeat;
        }
        holds
    }

    /// Renews a lease and records progress inside the epoch.
    pub fn heartbeat(
        &self,
        worker_id: &str,
        trial_id: &str,
        generation: u64,
        batch: u32,
        batches: u32,
    ) -> Verdict {
        let mut workers = self.workers.lock().unwrap();
        let Some(w) = workers.get_mut(worker_id) else {
            return Some(StopReason::LeaseLost(format!(
                "unknown worker '{worker_id}'"
            )));
        };
        if w.trial_id.as_deref() != Some(trial_id) || w.generation != generation {
            return Some(StopReason::LeaseLost(format!(
                "worker {worker_id} does not hold trial {trial_id} at generation {generation}"
            )));
        }
        w.last_heartbeat = Some(Instant::now());
        w.last_seen = w.last_heartbeat;
        w.batch = batch;
        w.batches = batches;
        if self.hard_stop.load(std::sync::atomic::Ordering::SeqCst) {
            return Some(StopReason::GiveBack);
        }
        None
    }

    /// A worker gives its trial back unfinished (daemon shutdown): queued again, attempt
    /// not counted, checkpoint kept.
    pub async fn give_back(
        &self,
        worker_id: &str,
        trial_id: &str,
        generation: u64,
        reason: &str,
    ) -> Result<bool> {
        let live = {
            let workers = self.workers.lock().unwrap();
            workers.get(worker_id).is_some_and(|w| {
                w.trial_id.as_deref() == Some(trial_id) && w.generation == generation
            })
        };
        if !live {
            // A stale release: the trial has moved on; change nothing.
            return Ok(false);
        }
        let events = self
            .store
            .release_trial(
                trial_id,
                generation,
                reason,
                self.config.max_attempts,
                false,
            )
            .await?;
        self.publish(events);
        self.worker_went_idle(worker_id, trial_id, false);
        Ok(true)
    }

    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Pauses or resumes a sweep; returns the number of queued trials held or released.
    pub async fn set_paused(&self, sweep_id: &str, paused: bool) -> Result<u32> {
        let n = self.store.set_paused(sweep_id, paused).await?;
        self.queue_changed.notify_waiters();
        Ok(n)
    }

    /// Expires leases whose worker fell silent, writes heartbeats' renewals of leases to
    /// the store (so they outlive a daemon restart), and forgets workers long gone. Runs
    /// until the daemon stops:
    /// - a busy worker without a heartbeat for the lease timeout loses its trial: a worker
    ///   this daemon started is killed (through its process handle; its supervisor re-queues
    ///   the trial), any other is only told so on its next call (the daemon signals no
    ///   process it did not start) and its trial is re-queued at once;
    /// - a lease a previous daemon process left that no worker claimed by its deadline is
    ///   re-queued;
    /// - a worker that connected itself and has not called for three lease timeouts, holding
    ///   nothing, is dropped from the registry.
    pub fn start_lease_reaper(self: &Arc<Self>) {
        let me = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(500));
            let renew_every = (me.config.lease_timeout / 3).max(Duration::from_millis(500));
            let mut last_renewal = Instant::now();
            loop {
                tick.tick().await;
                if let Err(e) = me.reap().await {
                    tracing::error!("lease expiry: {e:#}");
                }
                if last_renewal.elapsed() >= renew_every {
                    last_renewal = Instant::now();
                    if let Err(e) = me.renew_leases().await {
                        tracing::error!("renewing leases: {e:#}");
                    }
                }
            }
        });
    }

    async fn reap(&self) -> Result<()> {
        let timeout = self.config.lease_timeout;
        // (worker, trial, generation, started by this daemon)
        let silent: Vec<(String, String, u64, bool)> = {
            let mut workers = self.workers.lock().unwrap();
            let silent: Vec<_> = workers
                .values()
                .filter(|w| w.state == WorkerState::Busy)
                .filter(|w| w.last_heartbeat.is_some_and(|t| t.elapsed() > timeout))
                .map(|w| {
                    let trial = w.trial_id.clone().unwrap_or_default();
                    (w.worker_id.clone(), trial, w.generation, w.slot.is_some())
                })
                .collect();
            for (worker, _, _, local) in &silent {
                if let Some(w) = workers.get_mut(worker) {
                    // Only once.
                    w.last_heartbeat = None;
                    if !*local {
                        w.state = WorkerState::Idle;
                        w.idle_since = Some(Instant::now());
                        w.trial_id = None;
                        w.sweep_id = None;
                    }
                }
            }
            let gone: Vec<String> = workers
                .values()
                .filter(|w| w.slot.is_none() && w.state != WorkerState::Busy)
                .filter(|w| w.last_seen.is_some_and(|t| t.elapsed() > timeout * 3))
                .map(|w| w.worker_id.clone())
                .collect();
            for worker in gone {
                tracing::info!(worker, "forgetting a worker that stopped calling");
                workers.remove(&worker);
            }
            silent
        };
        for (worker, trial, generation, local) in silent {
            tracing::warn!(worker, trial, "lease expired: no heartbeat for {timeout:?}");
            if local {
                self.kill_worker_process(&worker, "its lease expired");
            } else {
                let why =
                    format!("lease expired: worker {worker} sent no heartbeat for {timeout:?}");
                self.requeue(&trial, generation, &why).await?;
            }
        }
        let due: Vec<(String, u64)> = {
            let mut unclaimed = self.unclaimed.lock().unwrap();
            let due: Vec<_> = unclaimed
                .iter()
                .filter(|(_, (_, deadline))| Instant::now() > *deadline)
                .map(|(t, (g, _))| (t.clone(), *g))
                .collect();
            for (t, _) in &due {
                unclaimed.remove(t);
            }
            due
        };
        for (trial, generation) in due {
            let why = "lease expired: no worker claimed it after the daemon restarted";
            self.requeue(&trial, generation, why).await?;
        }
        Ok(())
    }

    /// Re-queues a trial whose lease is gone (counts as an attempt).
    async fn requeue(&self, trial: &str, generation: u64, why: &str) -> Result<()> {
        let events = self
            .store
            .release_trial(trial, generation, why, self.config.max_attempts, true)
            .await?;
        let sweep_id = events.first().map(|e| e.sweep_id.clone());
        self.publish(events);
        self.parking.lock().unwrap().remove(trial);
        if let Some(sweep_id) = sweep_id {
            self.after_trial_ended(&sweep_id).await?;
        }
        self.queue_changed.notify_waiters();
        Ok(())
    }

    /// Writes the renewals of the leases whose workers heartbeated lately.
    async fn renew_leases(&self) -> Result<()> {
        let timeout = self.config.lease_timeout;
        let live: Vec<(String, u64)> = {
            let workers = self.workers.lock().unwrap();
            workers
                .values()
                .filter(|w| w.state == WorkerState::Busy && w.slot.is_none())
                .filter(|w| w.last_heartbeat.is_some_and(|t| t.elapsed() < timeout))
                .filter_map(|w| w.trial_id.clone().map(|t| (t, w.generation)))
                .collect()
        };
        self.store
            .renew_leases(&live, now_ms() + timeout.as_millis() as i64)
            .await
    }

    pub async fn finish_trial(
        &self,
        worker_id: &str,
        trial_id: &str,
        generation: u64,
        result: &TrialResult,
    ) -> Result<Result<(), Refusal>> {
        let outcome = self
            .store
            .finish_trial(trial_id, generation, result)
            .await?;
        match outcome {
            Ok(events) => {
                // Only the live lease frees its slot: a stale finish changes nothing.
                self.worker_went_idle(worker_id, trial_id, true);
                // A parked trial resumes from its checkpoint if promoted; any other ending
                // leaves nothing to resume.
                let checkpoint = self.checkpoints.lock().unwrap().remove(trial_id);
                if let Some(c) = checkpoint.filter(|_| result.status != TrialStatus::Parked) {
                    self.blobs.remove(&c);
                }
                self.parking.lock().unwrap().remove(trial_id);
                let sweep_id = events.first().map(|e| e.sweep_id.clone());
                self.publish(events);
                if let Some(sweep_id) = sweep_id {
                    self.after_trial_ended(&sweep_id).await?;
                }
                self.queue_changed.notify_waiters();
                Ok(Ok(()))
            }
            Err(e) => Ok(Err(e)),
        }
    }

    fn worker_went_idle(&self, worker_id: &str, trial_id: &str, done: bool) {
        let mut workers = self.workers.lock().unwrap();
        if let Some(w) = workers.get_mut(worker_id) {
            if w.trial_id.as_deref() == Some(trial_id) {
                w.state = WorkerState::Idle;
                w.idle_since = Some(Instant::now());
                w.trial_id = None;
                w.sweep_id = None;
                if done {
                    w.trials_done += 1;
                }
            }
        }
    }

    /// Cancels a sweep: open trials are marked cancelled at once and the workers running
    /// its trials are killed (their supervisors start fresh ones).
    pub async fn cancel_sweep(&self, sweep_id: &str) -> Result<u32> {
        let (running, n, events) = self.store.cancel_sweep(sweep_id).await?;
        self.publish(events);
        let holders: Vec<String> = {
            let workers = self.workers.lock().unwrap();
            running
                .iter()
                .filter_map(|(trial, _)| {
                    workers
                        .values()
                        .find(|w| w.trial_id.as_deref() == Some(trial.as_str()))
                        .map(|w| w.worker_id.clone())
                })
                .collect()
        };
        for worker in holders {
            tracing::info!(worker, sweep_id, "stopping the worker of a cancelled trial");
            self.kill_worker_process(&worker, "its trial was cancelled");
        }
        Ok(n)
    }

    /// Asks the supervisor of slot `worker_id` to kill the process it runs now (it holds the
    /// process handle). A worker this daemon did not start has no supervisor: nothing is
    /// signalled, and the protocol's answers stop it (its reports and heartbeats are refused).
    fn kill_worker_process(&self, worker_id: &str, why: &str) {
        if let Some(requests) = self.kill_requests.get(worker_id) {
            // A supervisor that has stopped (daemon shutting down) has no process to kill.
            let _ = requests.send(why.to_string());
        }
    }

    /// Starts one supervisor task per slot: each keeps a worker process running, and when
    /// one exits, releases the trial it held (re-queued or failed) and starts another.
    pub fn start_workers(self: &Arc<Self>, daemon_url: String) {
        for slot in self.config.slots.clone() {
            let me = self.clone();
            let url = daemon_url.clone();
            tokio::spawn(async move { me.supervise(slot, url).await });
        }
    }

    async fn supervise(self: Arc<Self>, slot: SlotConfig, url: String) {
        let Some(mut kill_requests) = self.kill_receivers.lock().unwrap().remove(&slot.worker_id)
        else {
            tracing::error!(worker = slot.worker_id, "slot supervised twice");
            return;
        };
        let mut failures_in_a_row = 0u32;
        while !self.shutting_down.load(std::sync::atomic::Ordering::SeqCst) {
            // Requests meant for an earlier process of this slot are void.
            while kill_requests.try_recv().is_ok() {}
            let mut cmd = tokio::process::Command::new(&self.config.worker_command[0]);
            let cache = self.config.state_dir.join("worker-cache");
            cmd.args(&self.config.worker_command[1..])
                .args(["--connect", &url, "--name", &slot.worker_id])
                .args(["--slot", &slot.worker_id])
                .args([
                    "--threads",
                    &slot.threads.to_string(),
                    "--device",
                    &slot.device,
                ])
                .arg("--cache-dir")
                .arg(&cache)
                .stdin(Stdio::null())
                .kill_on_drop(true);
            if let Some(file) = &self.config.worker_token_file {
                match cnnd_client::auth::read_token_file(file) {
                    Ok(token) => {
                        cmd.env(WORKER_TOKEN_ENV, token);
                    }
                    Err(e) => tracing::error!(worker = slot.worker_id, "no worker token: {e:#}"),
                }
            }
            if let Some(n) = slot.device.strip_prefix("cuda:") {
                cmd.env("CUDA_VISIBLE_DEVICES", n);
            } else {
                cmd.env("CUDA_VISIBLE_DEVICES", "");
            }
            // The worker dies with the daemon, whatever kills the daemon.
            // SAFETY: prctl is async-signal-safe and touches only the child.
            unsafe {
                cmd.pre_exec(|| {
                    libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                    Ok(())
                });
            }
            let started = Instant::now();
            let status = match cmd.spawn() {
                Ok(mut child) => {
                    if let Some(pid) = child.id() {
                        if let Some(w) = self.workers.lock().unwrap().get_mut(&slot.worker_id) {
                            w.pid = pid;
                            w.state = WorkerState::Starting;
                        }
                    }
                    let exit = tokio::select! {
                        exit = child.wait() => exit,
                        Some(why) = kill_requests.recv() => {
                            tracing::info!(worker = slot.worker_id, "killing the worker process: {why}");
                            // Through the handle: the process is ours and not yet reaped,
                            // so its pid cannot have been reused.
                            let _ = child.start_kill();
                            child.wait().await
                        }
                    };
                    exit.map(|s| s.to_string())
                        .unwrap_or_else(|e| e.to_string())
                }
                Err(e) => format!("could not start: {e}"),
            };
            // Its Predict jobs fail now, not at their time-out.
            self.predict_jobs.worker_gone(&slot.worker_id);
            let held = {
                let mut workers = self.workers.lock().unwrap();
                workers.get_mut(&slot.worker_id).and_then(|w| {
                    w.state = WorkerState::Starting;
                    w.pid = 0;
                    let held = w.trial_id.take().map(|t| (t, w.generation));
                    w.sweep_id = None;
                    held
                })
            };
            if let Some((trial, generation)) = held {
                let reason = format!("worker {} exited ({status})", slot.worker_id);
                self.release_dead_workers_trial(&trial, generation, &reason)
                    .await;
            }
            if self.shutting_down.load(std::sync::atomic::Ordering::SeqCst) {
                break;
            }
            if started.elapsed() < Duration::from_secs(5) {
                failures_in_a_row += 1;
            } else {
                failures_in_a_row = 0;
            }
            tracing::warn!(
                worker = slot.worker_id,
                "worker process exited ({status}); starting another"
            );
            let backoff = Duration::from_millis(200 * 2u64.pow(failures_in_a_row.min(6)));
            tokio::time::sleep(backoff).await;
        }
    }

    /// The trial of a worker that died holding it: re-queued (the attempt counts) or failed
    /// after `max_attempts`, and ASHA told.
    async fn release_dead_workers_trial(&self, trial: &str, generation: u64, reason: &str) {
        match self
            .store
            .release_trial(trial, generation, reason, self.config.max_attempts, true)
            .await
        {
            Ok(events) => {
                let sweep_id = events.first().map(|e| e.sweep_id.clone());
                self.publish(events);
                self.parking.lock().unwrap().remove(trial);
                // A trial that failed for good may leave only parked ones behind.
                if let Some(sweep_id) = sweep_id {
                    if let Err(e) = self.after_trial_ended(&sweep_id).await {
                        tracing::error!(sweep_id, "asha after a failed trial: {e:#}");
                    }
                }
            }
            Err(e) => tracing::error!(trial, "could not release trial: {e:#}"),
        }
        self.queue_changed.notify_waiters();
    }

    /// Whether the idle cluster worker `worker_id` should exit now: it runs in a job the
    /// launcher submitted (or adopted), it has waited for a trial for the launcher's idle
    /// time, and more than `min_workers` of the launcher's workers are registered. When it should, it is marked leaving (it is not
    /// told twice, and no longer counts).
    pub fn retire_if_surplus(&self, worker_id: &str) -> bool {
        let Some(cluster) = &self.config.cluster else {
            return false;
        };
        if self.is_shutting_down() {
            return false;
        }
        // The launcher's own jobs: a worker someone started in a job of their own is not
        // the launcher's to stop.
        let jobs: std::collections::HashSet<String> = self
            .launcher_view
            .lock()
            .unwrap()
            .iter()
            .flat_map(|v| v.jobs.iter().map(|j| j.job.clone()))
            .collect();
        let mut workers = self.workers.lock().unwrap();
        let ours = |w: &WorkerView| {
            w.slot.is_none()
                && w.launcher_job.starts_with(&cluster.job_prefix)
                && jobs.contains(&w.launcher_job)
        };
        let live = workers
            .values()
            .filter(|w| ours(w) && matches!(w.state, WorkerState::Idle | WorkerState::Busy))
            .count() as u32;
        let Some(w) = workers.get_mut(worker_id) else {
            return false;
        };
        let idle_long = w.state == WorkerState::Idle
            && w.idle_since.is_some_and(|t| t.elapsed() >= cluster.idle);
        if !ours(w) || !idle_long || live <= cluster.min_workers {
            return false;
        }
        tracing::info!(
            worker = worker_id,
            job = w.launcher_job,
            idle_secs = cluster.idle.as_secs(),
            "telling an idle cluster worker to exit"
        );
        w.state = WorkerState::Leaving;
        true
    }

    /// A cluster job ended (the launcher saw it leave the queue, or the pod end): its worker
    /// is forgotten, and a trial it still held is released as a dead worker's (the attempt
    /// counts), with the cluster's reason. Returns the worker, if one had registered.
    pub async fn cluster_job_ended(&self, job: &str, reason: &str) -> Option<String> {
        let (worker_id, held) = {
            let mut workers = self.workers.lock().unwrap();
            let id = workers
                .values()
                .find(|w| w.slot.is_none() && w.launcher_job == job)
                .map(|w| w.worker_id.clone())?;
            let w = workers.remove(&id)?;
            (id, w.trial_id.map(|t| (t, w.generation)))
        };
        self.predict_jobs.worker_gone(&worker_id);
        if let Some((trial, generation)) = held {
            let why = format!("worker {worker_id} ended with its cluster job {job} ({reason})");
            tracing::warn!(worker = worker_id, trial, "{why}");
            self.release_dead_workers_trial(&trial, generation, &why)
                .await;
        }
        Some(worker_id)
    }

    /// Publishes the cluster launcher's view (status, metrics).
    pub fn set_launcher_view(&self, view: LauncherView) {
        *self.launcher_view.lock().unwrap() = Some(view);
    }

    /// The launcher as `cnnctl status` shows it: the cluster launcher's latest view, or the
    /// local launcher's slots.
    pub fn launcher_view(&self) -> LauncherView {
        if let Some(view) = self.launcher_view.lock().unwrap().clone() {
            return view;
        }
        let slots = self.config.slots.len() as u32;
        let workers = self.workers.lock().unwrap();
        let local = || workers.values().filter(|w| w.slot.is_some());
        let count = |state: WorkerState| local().filter(|w| w.state == state).count() as u32;
        LauncherView {
            kind: "local".into(),
            min_workers: slots,
            max_workers: slots,
            wanted: slots,
            starting: count(WorkerState::Starting),
            running: count(WorkerState::Idle) + count(WorkerState::Busy),
            idle: count(WorkerState::Idle),
            jobs: Vec::new(),
            last_error: None,
        }
    }

    /// Graceful shutdown: no new leases; running trials stop at their next epoch boundary
    /// (after its checkpoint) and are given back; after `shutdown_grace` they stop at once
    /// (the last checkpoint stays). Returns when no worker holds a trial, or after a second
    /// grace period.
    pub async fn shutdown(&self) {
        self.shutting_down
            .store(true, std::sync::atomic::Ordering::SeqCst);
        self.queue_changed.notify_waiters();
        let busy = || {
            self.workers
                .lock()
                .unwrap()
                .values()
                .filter(|w| w.state == WorkerState::Busy)
                .count()
        };
        let deadline = Instant::now() + self.config.shutdown_grace;
        while busy() > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        if busy() > 0 {
            tracing::warn!("grace period over; stopping running trials at their last checkpoint");
            self.hard_stop
                .store(true, std::sync::atomic::Ordering::SeqCst);
            let deadline = Instant::now() + Duration::from_secs(5);
            while busy() > 0 && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

fn is_promoting(policy: &EarlyStopping) -> bool {
    matches!(policy, EarlyStopping::Asha { promote: true, .. })
}

/// The inputs of a tpe suggestion for trial `for_trial`: the finished trials (succeeded or
/// pruned, with at least one epoch) with their best objective as a score (higher better),
/// oldest finish first, and the running trials whose values are already suggested.
pub fn suggestion_inputs<'a>(
    trials: &'a [TrialRow],
    histories: &[crate::store::ObjectiveHistory],
    objective: &str,
    for_trial: &str,
) -> (Vec<(&'a TrialRow, f64)>, Vec<&'a TrialRow>) {
    let score = |id: &str| -> Option<f64> {
        let (_, _, h) = histories.iter().find(|(t, _, _)| t == id)?;
        h.iter()
            .map(|(acc, loss)| if objective == "val_loss" { -loss } else { *acc })
            .filter(|v| v.is_finite())
            .reduce(f64::max)
    };
    let mut observed: Vec<(&TrialRow, f64)> = trials
        .iter()
        .filter(|t| {
            t.id != for_trial
                && matches!(
                    t.status,
                    TrialStatus::Succeeded | TrialStatus::Pruned | TrialStatus::Parked
                )
        })
        .filter_map(|t| score(&t.id).map(|s| (t, s)))
        .collect();
    observed.sort_by(|a, b| {
        (a.0.finished_at.as_deref(), a.0.index).cmp(&(b.0.finished_at.as_deref(), b.0.index))
    });
    let pending = trials
        .iter()
        .filter(|t| t.id != for_trial && t.status == TrialStatus::Running && t.suggestion.is_some())
        .collect();
    (observed, pending)
}

#[cfg(test)]
mod tests {
    use super::*;
    use cnnd_core::sweep::SweepRequest;

    /// An idle cluster worker is told to exit only past the idle time and only while more
    /// than `min_workers` of the launcher's workers are registered; a worker of another
    /// launcher or of none, or a busy one, never is.
    #[tokio::test]
    async fn only_surplus_idle_cluster_workers_retire() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("cnnd.sqlite")).await.unwrap();
        let scheduler = Scheduler::new(
            store,
            SchedulerConfig {
                state_dir: dir.path().to_path_buf(),
                cluster: Some(ClusterWorkers {
                    job_prefix: "slurm:".into(),
                    min_workers: 1,
                    idle: Duration::from_millis(200),
                }),
                ..Default::default()
            },
        )
        .unwrap();
        let register = |name: &str, job: &str| {
            let mut r = Registration::local(name, 1);
            r.slot = None;
            r.launcher_job = job.into();
            r
        };
        for (name, job) in [
            ("a", "slurm:1"),
            ("b", "slurm:2"),
            ("mine", ""),
            ("k", "k8s:x"),
            ("own-job", "slurm:99"),
        ] {
            scheduler.register(register(name, job)).await.unwrap();
        }
        let job = |id: &str| LauncherJobView {
            job: id.into(),
            state: "running".into(),
            reason: String::new(),
            worker_id: None,
            device: "cpu".into(),
            submitted: Instant::now(),
        };
        scheduler.set_launcher_view(LauncherView {
            jobs: vec![job("slurm:1"), job("slurm:2")],
            ..Default::default()
        });
        assert!(
            !scheduler.retire_if_surplus("a"),
            "retired before the idle time"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
        assert!(
            !scheduler.retire_if_surplus("mine"),
            "not a launcher's worker"
        );
        assert!(
            !scheduler.retire_if_surplus("k"),
            "another launcher's worker"
        );
        assert!(
            !scheduler.retire_if_surplus("own-job"),
            "a job the launcher did not submit"
        );
        assert!(scheduler.retire_if_surplus("a"));
        assert!(!scheduler.retire_if_surplus("a"), "told twice");
        assert!(
            !scheduler.retire_if_surplus("b"),
            "would leave fewer than min_workers"
        );
        let states: Vec<_> = scheduler
            .workers()
            .iter()
            .map(|w| (w.worker_id.clone(), w.state))
            .collect();
        assert!(
            states.contains(&("a".to_string(), WorkerState::Leaving)),
            "{states:?}"
        );
        // Its job ends: the worker is forgotten.
        assert_eq!(
            scheduler
                .cluster_job_ended("slurm:1", "COMPLETED")
                .await
                .as_deref(),
            Some("a")
        );
        assert!(!scheduler.knows("a"));
        assert_eq!(
            scheduler.cluster_job_ended("slurm:1", "COMPLETED").await,
            None
        );
    }

    /// A scheduler over a fresh SQLite store in `dir` with one local CPU slot, `cpu-0`,
    /// whose worker has registered with `pid`; `tune` adjusts its timings.
    async fn one_slot_scheduler(
        dir: &std::path::Path,
        pid: u32,
        tune: impl FnOnce(&mut SchedulerConfig),
    ) -> (Arc<Scheduler>, Store) {
        let store = Store::open(&dir.join("cnnd.sqlite")).await.unwrap();
        let mut config = SchedulerConfig {
            state_dir: dir.to_path_buf(),
            slots: vec![SlotConfig {
                worker_id: "cpu-0".into(),
                device: "cpu".into(),
                threads: 1,
            }],
            ..Default::default()
        };
        tune(&mut config);
        let scheduler = Scheduler::new(store.clone(), config).unwrap();
        scheduler
            .register(Registration::local("cpu-0", pid))
            .await
            .unwrap();
        (scheduler, store)
    }

    /// A validated MNIST sweep from its request JSON.
    fn mnist_spec(request: serde_json::Value) -> cnnd_core::sweep::SweepSpec {
        serde_json::from_value::<SweepRequest>(request)
            .unwrap()
            .validate(
                cnnd_core::sweep::SweepLimits::default(),
                cnnd_core::datasets::resolve_builtin,
            )
            .unwrap()
    }

    /// A worker's registered pid is never signalled: cancelling its trial and expiring its
    /// lease go through the supervisor's process handle. Here the "worker" registered with
    /// the pid of an unrelated process (what a reused pid looks like) and has no supervisor:
    /// that process must survive both.
    #[tokio::test]
    async fn cancel_and_lease_expiry_never_signal_a_registered_pid() {
        let dir = tempfile::tempdir().unwrap();
        let mut bystander = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let (scheduler, _) = one_slot_scheduler(dir.path(), bystander.id(), |c| {
            c.lease_timeout = Duration::from_millis(100);
            c.lease_poll = Duration::from_millis(100);
        })
        .await;
        let spec = mnist_spec(serde_json::json!({
            "dataset": "mnist", "space": {"kernelSize": [3, 5]}, "fixed": {"epochs": 1}}));

        // Lease expiry: the worker holds a trial and goes silent.
        let (first, _) = scheduler
            .submit(&spec, None, u32::MAX)
            .await
            .unwrap()
            .unwrap();
        assert!(scheduler.lease("cpu-0").await.unwrap().is_some());
        scheduler.start_lease_reaper();
        tokio::time::sleep(Duration::from_millis(1200)).await;
        assert!(
            bystander.try_wait().unwrap().is_none(),
            "lease expiry signalled the registered pid"
        );

        // Cancel: the sweep's running trial is the worker's.
        scheduler.cancel_sweep(&first).await.unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(
            bystander.try_wait().unwrap().is_none(),
            "cancel signalled the registered pid"
        );
        bystander.kill().unwrap();
        bystander.wait().unwrap();
    }

    /// A worker that asks for a trial while the daemon still counts one as its own has
    /// dropped it (its finish never got through): that trial is queued again at once, so no
    /// trial stays "running" on a lease that nobody renews. (CI once waited 300 s on such a
    /// trial when two workers uploaded the same input record at the same moment.)
    #[tokio::test]
    async fn a_worker_asking_again_gives_back_the_trial_it_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let (scheduler, store) = one_slot_scheduler(dir.path(), 0, |c| {
            c.lease_poll = Duration::from_millis(100);
        })
        .await;
        let spec = mnist_spec(serde_json::json!({
            "dataset": "mnist", "space": {"kernelSize": [3, 5]}, "fixed": {"epochs": 1}}));
        let (sweep, _) = scheduler
            .submit(&spec, None, u32::MAX)
            .await
            .unwrap()
            .unwrap();
        let dropped = scheduler.lease("cpu-0").await.unwrap().unwrap();
        let next = scheduler.lease("cpu-0").await.unwrap().unwrap();

        let trials = store.trials_of(&sweep).await.unwrap();
        let running: Vec<_> = trials
            .iter()
            .filter(|t| t.status == TrialStatus::Running)
            .map(|t| (t.id.clone(), t.generation))
            .collect();
        assert_eq!(running, vec![(next.trial_id.clone(), next.generation)]);
        let first = store.trial(&dropped.trial_id).await.unwrap().unwrap();
        if first.id == next.trial_id {
            // Leased again at once (it is first in the queue): a new lease, a new attempt.
            assert!(next.generation > dropped.generation, "{next:?}");
            assert_eq!(next.attempt, dropped.attempt + 1);
        } else {
            assert_eq!(first.status, TrialStatus::Queued, "{first:?}");
            let error = first.error.unwrap_or_default();
            assert!(
                error.contains("worker cpu-0 asked for another trial while holding this one"),
                "{error}"
            );
        }
    }

    /// A tpe suggestion is checked like any configuration before it is stored or leased: one
    /// that does not validate fails its trial with the reason, and no worker ever gets it.
    /// (The search space here was widened after validation, as a space stored before the
    /// submit-time check of tpe ranges could be: 9 pooling blocks on 28x28 MNIST.)
    #[tokio::test]
    async fn an_invalid_tpe_suggestion_fails_its_trial_and_is_never_leased() {
        let dir = tempfile::tempdir().unwrap();
        let (scheduler, store) = one_slot_scheduler(dir.path(), 0, |c| {
            c.lease_poll = Duration::from_millis(200);
        })
        .await;
        let mut spec = mnist_spec(serde_json::json!({
            "dataset": "mnist", "strategy": "tpe", "numTrials": 2,
            "space": {"blocks": {"min": 1, "max": 2}}, "fixed": {"epochs": 1}}));
        spec.tpe.as_mut().unwrap().space[0].domain =
            cnnd_core::tpe::Domain::Categorical(vec![serde_json::json!(9)]);
        let (sweep, _) = scheduler
            .submit(&spec, None, u32::MAX)
            .await
            .unwrap()
            .unwrap();
        assert!(scheduler.lease("cpu-0").await.unwrap().is_none());
        let trials = store.trials_of(&sweep).await.unwrap();
        for t in trials.iter() {
            assert_eq!(t.status, TrialStatus::Failed, "{t:?}");
            let error = t.error.as_deref().unwrap_or_default();
            assert!(
                error.starts_with(
                    "tpe suggested an invalid configuration: blocks: 9 blocks do not fit"
                ),
                "{error}"
            );
            assert!(t.suggestion.is_none(), "an invalid suggestion was stored");
        }
        assert_eq!(
            store.sweep(&sweep).await.unwrap().unwrap().status,
            cnnd_core::status::SweepStatus::Finished
        );
    }
}
