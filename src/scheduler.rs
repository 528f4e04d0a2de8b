//! The scheduler: turns queued trials into leases held by worker processes, and worker
//! reports into store transactions. It owns the worker pool (spawning, supervising and
//! signalling the worker processes), the in-memory view of what each worker is doing, and
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

use crate::store::{EpochRow, Lease, ReportError, StoredEvent, Store, TrialFacts, TrialResult};
use crate::sweep::{SweepLimits, SweepSpec};

/// A compute device the workers can use, as probed at start-up.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct DeviceInfo {
    /// "cpu" or "cuda:N".
    pub name: String,
    pub kind: String,
    pub cores: u32,
    pub memory_bytes: u64,
    pub description: String,
}

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
    pub data_dir: Option<PathBuf>,
    pub slots: Vec<SlotConfig>,
    pub devices: Vec<DeviceInfo>,
    pub limits: SweepLimits,
    /// How many times a trial whose worker died is re-queued before it fails.
    pub max_attempts: u32,
    /// How long a Lease call waits for a trial before answering "none".
    pub lease_poll: Duration,
    /// The program and leading arguments that start a worker process; the scheduler adds
    /// `--daemon URL --worker-id ID --threads N --device D`.
    pub worker_command: Vec<String>,
}

/// What the daemon knows about one worker process right now.
#[derive(Debug, Clone, Default)]
pub struct WorkerView {
    pub worker_id: String,
    pub pid: u32,
    pub device: String,
    pub threads: u32,
    /// starting, idle or busy.
    pub state: String,
    pub trial_id: Option<String>,
    pub sweep_id: Option<String>,
    pub generation: u64,
    pub epoch: u32,
    pub epochs_planned: u32,
    pub val_accuracy: f64,
    pub trials_done: u32,
    pub libtorch_version: String,
}

pub struct Scheduler {
    pub store: Store,
    pub config: SchedulerConfig,
    pub started: Instant,
    events: broadcast::Sender<StoredEvent>,
    workers: Mutex<HashMap<String, WorkerView>>,
    queue_changed: Notify,
    shutting_down: std::sync::atomic::AtomicBool,
}

/// A report refused because the worker's lease is gone.
pub type Refusal = ReportError;

impl Scheduler {
    pub fn new(store: Store, config: SchedulerConfig) -> Arc<Scheduler> {
        let (events, _) = broadcast::channel(4096);
        let workers = config
            .slots
            .iter()
            .map(|s| {
                (
                    s.worker_id.clone(),
                    WorkerView {
                        worker_id: s.worker_id.clone(),
                        device: s.device.clone(),
                        threads: s.threads,
                        state: "starting".into(),
                        ..Default::default()
                    },
                )
            })
            .collect();
        Arc::new(Scheduler {
            store,
            config,
            started: Instant::now(),
            events,
            workers: Mutex::new(workers),
            queue_changed: Notify::new(),
            shutting_down: Default::default(),
        })
    }

    /// Live events, for watchers. Subscribe before reading history so nothing falls between.
    pub fn subscribe(&self) -> broadcast::Receiver<StoredEvent> {
        self.events.subscribe()
    }

    fn publish(&self, events: impl IntoIterator<Item = StoredEvent>) {
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

    pub fn has_cuda(&self) -> bool {
        self.config.devices.iter().any(|d| d.kind == "cuda")
    }

    /// Re-queues trials that a previous daemon process left running: their workers died
    /// with it.
    pub async fn recover(&self) -> Result<usize> {
        let orphans = self.store.orphaned_leases().await?;
        for (trial, generation) in &orphans {
            let events = self
                .store
                .release_trial(trial, *generation, "the daemon restarted while it ran", self.config.max_attempts)
                .await?;
            self.publish(events);
        }
        Ok(orphans.len())
    }

    /// Stores a validated sweep and wakes idle workers.
    pub async fn submit(&self, spec: &SweepSpec) -> Result<(String, Vec<String>)> {
        let id = format!("sw-{:08x}", rand::random::<u32>());
        let trials = self.store.insert_sweep(&id, spec).await?;
        self.queue_changed.notify_waiters();
        Ok((id, trials))
    }

    fn slot_devices(device: &str) -> (&'static [&'static str], &'static str) {
        if device.starts_with("cuda") {
            (&["auto", "cuda"], "cuda")
        } else {
            (&["auto", "cpu"], "cpu")
        }
    }

    /// Long poll: the next trial for this worker, or None after `lease_poll`.
    pub async fn lease(&self, worker_id: &str) -> Result<Option<Lease>> {
        let device = {
            let workers = self.workers.lock().unwrap();
            match workers.get(worker_id) {
                Some(w) => w.device.clone(),
                None => anyhow::bail!("unknown worker '{worker_id}'"),
            }
        };
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
            if let Some((lease, event)) = self.store.lease_next(worker_id, serves, &device).await? {
                let _ = kind;
                {
                    let mut workers = self.workers.lock().unwrap();
                    if let Some(w) = workers.get_mut(worker_id) {
                        w.state = "busy".into();
                        w.trial_id = Some(lease.trial_id.clone());
                        w.sweep_id = Some(lease.sweep_id.clone());
                        w.generation = lease.generation;
                        w.epoch = 0;
                        w.epochs_planned = lease.params.epochs;
                        w.val_accuracy = 0.0;
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

    pub fn register(&self, worker_id: &str, pid: u32, libtorch_version: &str) -> Result<()> {
        let mut workers = self.workers.lock().unwrap();
        let w = workers
            .get_mut(worker_id)
            .ok_or_else(|| anyhow::anyhow!("unknown worker '{worker_id}'"))?;
        w.pid = pid;
        w.state = "idle".into();
        w.libtorch_version = libtorch_version.to_string();
        Ok(())
    }

    /// Records an epoch; Ok(false) tells the worker to stop (the trial was cancelled).
    pub async fn report_epoch(&self, trial_id: &str, generation: u64, epoch: &EpochRow, facts: Option<&TrialFacts>) -> Result<Result<bool, Refusal>> {
        match self.store.record_epoch(trial_id, generation, epoch, facts).await? {
            Ok(event) => {
                {
                    let mut workers = self.workers.lock().unwrap();
                    if let Some(w) = workers.values_mut().find(|w| w.trial_id.as_deref() == Some(trial_id)) {
                        w.epoch = epoch.epoch;
                        w.val_accuracy = epoch.val_accuracy;
                    }
                }
                self.publish([event]);
                Ok(Ok(true))
            }
            Err(ReportError::StaleLease { status, .. }) if status == "cancelled" => Ok(Ok(false)),
            Err(e) => Ok(Err(e)),
        }
    }

    pub async fn finish_trial(&self, worker_id: &str, trial_id: &str, generation: u64, result: &TrialResult) -> Result<Result<(), Refusal>> {
        let outcome = self.store.finish_trial(trial_id, generation, result).await?;
        self.worker_went_idle(worker_id, trial_id, true);
        match outcome {
            Ok(events) => {
                self.publish(events);
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
                w.state = "idle".into();
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
        let pids: Vec<u32> = {
            let workers = self.workers.lock().unwrap();
            running
                .iter()
                .filter_map(|(trial, _)| workers.values().find(|w| w.trial_id.as_deref() == Some(trial.as_str())).map(|w| w.pid))
                .collect()
        };
        for pid in pids {
            if pid > 0 {
                tracing::info!(pid, sweep_id, "stopping worker of a cancelled trial");
                // SAFETY: kill(2) on a pid we spawned; the worst case is a stale pid.
                unsafe {
                    libc::kill(pid as i32, libc::SIGKILL);
                }
            }
        }
        Ok(n)
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
        let mut failures_in_a_row = 0u32;
        while !self.shutting_down.load(std::sync::atomic::Ordering::SeqCst) {
            let mut cmd = tokio::process::Command::new(&self.config.worker_command[0]);
            cmd.args(&self.config.worker_command[1..])
                .args(["--daemon", &url, "--worker-id", &slot.worker_id])
                .args(["--threads", &slot.threads.to_string(), "--device", &slot.device])
                .stdin(Stdio::null())
                .kill_on_drop(true);
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
                            w.state = "starting".into();
                        }
                    }
                    child.wait().await.map(|s| s.to_string()).unwrap_or_else(|e| e.to_string())
                }
                Err(e) => format!("could not start: {e}"),
            };
            let held = {
                let mut workers = self.workers.lock().unwrap();
                workers.get_mut(&slot.worker_id).and_then(|w| {
                    w.state = "starting".into();
                    w.pid = 0;
                    let held = w.trial_id.take().map(|t| (t, w.generation));
                    w.sweep_id = None;
                    held
                })
            };
            if let Some((trial, generation)) = held {
                let reason = format!("worker {} exited ({status})", slot.worker_id);
                match self.store.release_trial(&trial, generation, &reason, self.config.max_attempts).await {
                    Ok(events) => self.publish(events),
                    Err(e) => tracing::error!(trial, "could not release trial: {e:#}"),
                }
                self.queue_changed.notify_waiters();
            }
            if self.shutting_down.load(std::sync::atomic::Ordering::SeqCst) {
                break;
            }
            if started.elapsed() < Duration::from_secs(5) {
                failures_in_a_row += 1;
            } else {
                failures_in_a_row = 0;
            }
            tracing::warn!(worker = slot.worker_id, "worker process exited ({status}); starting another");
            let backoff = Duration::from_millis(200 * 2u64.pow(failures_in_a_row.min(6)));
            tokio::time::sleep(backoff).await;
        }
    }

    pub fn shutdown(&self) {
        self.shutting_down.store(true, std::sync::atomic::Ordering::SeqCst);
        self.queue_changed.notify_waiters();
    }
}
