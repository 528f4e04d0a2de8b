//! Cluster launchers: start and stop `cnnd-worker` processes as cluster jobs, sized to the
//! queue. The `local` launcher (worker processes on this machine, one per slot) is the
//! scheduler's slot supervision ([`crate::scheduler::Scheduler::start_workers`]); this module
//! owns the other two, which share one sizing loop ([`Launcher::run`]) and differ only in
//! how a job is submitted, observed and cancelled ([`Backend`]: [`slurm`], [`kubernetes`]).
//!
//! Every `--launcher-poll-secs` the loop reads the cluster's jobs and the queue, forgets jobs
//! that ended (releasing a trial their worker still held, with the cluster's reason), and
//! submits jobs while trials wait that the running and starting workers cannot take, between
//! `--min-workers` and `--max-workers`. Scaling down is the workers' side: an idle worker
//! beyond the minimum is told to exit in its next lease answer
//! ([`crate::scheduler::Scheduler::retire_if_surplus`]), so no job is killed while it may
//! be taking a trial. Workers are long-lived: each leases many trials.
//!
//! Must not touch: the store's tables (it reads the demand through the store and releases
//! trials through the scheduler), or the worker protocol.

pub mod slurm;

#[cfg(feature = "kubernetes")]
pub mod kubernetes;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use cnnd_core::status::WorkerState;

use crate::config::{LauncherArgs, LauncherKind};
use crate::scheduler::{ClusterWorkers, LauncherJobView, LauncherView, Scheduler};

/// What kind of worker a job runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkerKind {
    Cpu,
    Gpu,
}

impl WorkerKind {
    pub fn as_str(self) -> &'static str {
        match self {
            WorkerKind::Cpu => "cpu",
            WorkerKind::Gpu => "cuda",
        }
    }
}

/// One worker job to submit: the worker's command line (without its name, which the
/// backend gives from the job's id, and without the token, which travels in the job's
/// environment or a Secret) and what it asks the cluster for.
#[derive(Debug, Clone)]
pub struct WorkerJob {
    pub kind: WorkerKind,
    /// `cnnd-worker --connect URL --device D --threads N [--cache-dir] [--data-dir]`.
    pub command: Vec<String>,
    pub cpus: u32,
    pub gpus: u32,
}

/// Where a job is, as the cluster says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobPhase {
    /// Queued, or its container not running yet; the reason says why it waits.
    Pending,
    Running,
    /// Over: finished, failed, cancelled, preempted, evicted.
    Ended,
}

/// A job of this daemon as the cluster reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobReport {
    /// "slurm:1234", "k8s:cnnd-worker-7f3a": what the worker registers as its launcher job.
    pub job: String,
    pub phase: JobPhase,
    /// The cluster's words: Slurm's pending reason or end state, a pod's waiting or
    /// termination reason; empty when there is nothing to say.
    pub reason: String,
    /// A job that cannot start as submitted (a partition that is down, an image that cannot
    /// be pulled, a pod that fits no node): counted as a refusal of the cluster.
    pub stuck: bool,
}

/// How jobs are submitted, observed and cancelled on one kind of cluster.
pub enum Backend {
    Slurm(slurm::Slurm),
    #[cfg(feature = "kubernetes")]
    Kubernetes(Box<kubernetes::Kubernetes>),
}

impl Backend {
    /// The prefix of this backend's job names ("slurm:", "k8s:").
    pub fn job_prefix(&self) -> &'static str {
        match self {
            Backend::Slurm(_) => slurm::JOB_PREFIX,
            #[cfg(feature = "kubernetes")]
            Backend::Kubernetes(_) => kubernetes::JOB_PREFIX,
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            Backend::Slurm(_) => "slurm",
            #[cfg(feature = "kubernetes")]
            Backend::Kubernetes(_) => "kubernetes",
        }
    }

    /// Submits one worker job; the error is the cluster's refusal, as it said it.
    pub async fn submit(&self, job: &WorkerJob) -> Result<String> {
        match self {
            Backend::Slurm(b) => b.submit(job).await,
            #[cfg(feature = "kubernetes")]
            Backend::Kubernetes(b) => b.submit(job).await,
        }
    }

    /// Every job of this daemon the cluster still knows.
    pub async fn jobs(&self) -> Result<Vec<JobReport>> {
        match self {
            Backend::Slurm(b) => b.jobs().await,
            #[cfg(feature = "kubernetes")]
            Backend::Kubernetes(b) => b.jobs().await,
        }
    }

    pub async fn cancel(&self, job: &str) -> Result<()> {
        match self {
            Backend::Slurm(b) => b.cancel(job).await,
            #[cfg(feature = "kubernetes")]
            Backend::Kubernetes(b) => b.cancel(job).await,
        }
    }
}

/// The sizing settings of a cluster launcher.
#[derive(Debug, Clone)]
pub struct Sizing {
    pub min_workers: u32,
    pub max_workers: u32,
    pub idle: Duration,
    pub poll: Duration,
    /// GPUs per CUDA worker; 0: CPU workers only.
    pub gpus_per_worker: u32,
    pub cpus_per_worker: u32,
    /// The worker command's start (`cnnd-worker --connect URL ...`), without --device and
    /// --threads.
    pub worker_command: Vec<String>,
}

impl Sizing {
    /// From the daemon's settings; `connect_url` is where the workers reach the worker hub.
    pub fn from_args(args: &LauncherArgs, worker_bin: String, connect_url: String) -> Sizing {
        let mut command = vec![worker_bin, "--connect".into(), connect_url];
        if let Some(dir) = &args.launcher_worker_cache_dir {
            command.extend(["--cache-dir".into(), dir.clone()]);
        }
        if let Some(dir) = &args.launcher_worker_data_dir {
            command.extend(["--data-dir".into(), dir.clone()]);
        }
        Sizing {
            min_workers: args.min_workers,
            max_workers: args.max_workers,
            idle: Duration::from_secs(args.worker_idle_secs.max(1)),
            poll: Duration::from_secs(args.launcher_poll_secs.max(1)),
            gpus_per_worker: args.launcher_gpus_per_worker,
            cpus_per_worker: args.launcher_cpus_per_worker.max(1),
            worker_command: command,
        }
    }

    /// What the scheduler needs to know of these workers.
    pub fn cluster_workers(&self, job_prefix: &str) -> ClusterWorkers {
        ClusterWorkers {
            job_prefix: job_prefix.to_string(),
            min_workers: self.min_workers,
            idle: self.idle,
        }
    }

    fn job(&self, kind: WorkerKind) -> WorkerJob {
        let mut command = self.worker_command.clone();
        let device = match kind {
            WorkerKind::Cpu => "cpu",
            // The cluster shows the job its GPUs only (CUDA_VISIBLE_DEVICES), from 0.
            WorkerKind::Gpu => "cuda:0",
        };
        command.extend([
            "--device".into(),
            device.into(),
            "--threads".into(),
            self.cpus_per_worker.to_string(),
        ]);
        WorkerJob {
            kind,
            command,
            cpus: self.cpus_per_worker,
            gpus: if kind == WorkerKind::Gpu {
                self.gpus_per_worker
            } else {
                0
            },
        }
    }
}

/// A job this launcher submitted (or adopted after a restart).
#[derive(Debug, Clone)]
struct TrackedJob {
    kind: WorkerKind,
    submitted: Instant,
    phase: JobPhase,
    reason: String,
    stuck: bool,
    /// The worker it runs, once it registered.
    worker: Option<String>,
}

/// How long a submitted job may be missing from the cluster's list before it counts as
/// gone (a job appears in squeue a moment after sbatch returns).
const LIST_GRACE: Duration = Duration::from_secs(15);

/// The sizing loop of a cluster launcher.
pub struct Launcher {
    pub backend: Backend,
    pub sizing: Sizing,
    scheduler: Arc<Scheduler>,
    jobs: BTreeMap<String, TrackedJob>,
    last_error: Option<(String, Instant)>,
    /// After a refused submission, none before this.
    retry_at: Option<Instant>,
    refusals_in_a_row: u32,
}

/// How many workers of each kind the queue wants started now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Plan {
    pub cpu: u32,
    pub gpu: u32,
    /// Workers the queue needs, busy ones included, within min and max.
    pub wanted: u32,
    /// CUDA trials no worker of this launcher can take (it starts CPU workers only).
    pub unservable_cuda: u32,
}

/// The workers per kind, as the launcher counts them.
#[derive(Debug, Clone, Copy, Default)]
pub struct Supply {
    pub busy: u32,
    /// Idle or starting (submitted, not registered): they will take a trial.
    pub free_cpu: u32,
    pub free_gpu: u32,
    /// Jobs alive, of any state.
    pub jobs: u32,
}

/// Decides how many workers to start: enough to take every trial that waits (by kind),
/// at least `min_workers` and at most `max_workers` jobs in all.
pub fn plan(demand: crate::store::Demand, supply: Supply, sizing: &Sizing) -> Plan {
    let gpus = sizing.gpus_per_worker > 0;
    // "auto" trials go to GPU workers when this launcher starts them.
    let (want_gpu, want_cpu) = if gpus {
        (demand.cuda + demand.auto, demand.cpu)
    } else {
        (0, demand.cpu + demand.auto)
    };
    let mut gpu = want_gpu.saturating_sub(supply.free_gpu);
    let mut cpu = want_cpu.saturating_sub(supply.free_cpu);
    let room = sizing.max_workers.saturating_sub(supply.jobs);
    // Within the room, GPU workers first (they take "auto" trials too).
    gpu = gpu.min(room);
    cpu = cpu.min(room - gpu);
    let below_min = sizing.min_workers.saturating_sub(supply.jobs + gpu + cpu);
    if gpus {
        gpu += below_min;
    } else {
        cpu += below_min;
    }
    let wanted = (supply.busy + want_gpu + want_cpu).clamp(sizing.min_workers, sizing.max_workers);
    Plan {
        cpu,
        gpu,
        wanted,
        unservable_cuda: if gpus { 0 } else { demand.cuda },
    }
}

impl Launcher {
    /// The launcher the settings ask for, or None for `local`; `worker_bin` and
    /// `connect_url` are the defaults for the workers' program and the URL they dial.
    pub async fn from_args(
        args: &LauncherArgs,
        scheduler_state_dir: &std::path::Path,
        worker_bin: &std::path::Path,
        connect_url: String,
        worker_token_file: Option<PathBuf>,
    ) -> Result<Option<(Backend, Sizing)>> {
        if args.launcher == LauncherKind::Local {
            return Ok(None);
        }
        if args.max_workers == 0 || args.min_workers > args.max_workers {
            anyhow::bail!(
                "--min-workers {} / --max-workers {}: the maximum must be at least 1 and at least the minimum",
                args.min_workers,
                args.max_workers
            );
        }
        let backend = match args.launcher {
            LauncherKind::Local => return Ok(None),
            LauncherKind::Slurm => Backend::Slurm(slurm::Slurm::new(
                args,
                scheduler_state_dir,
                worker_token_file,
            )?),
            LauncherKind::Kubernetes => {
                #[cfg(feature = "kubernetes")]
                {
                    Backend::Kubernetes(Box::new(kubernetes::Kubernetes::new(args).await?))
                }
                #[cfg(not(feature = "kubernetes"))]
                {
                    anyhow::bail!(
                        "--launcher kubernetes: this cnnd was built without Kubernetes support; build it with `cargo build --release --features kubernetes`"
                    );
                }
            }
        };
        let default_bin = match args.launcher {
            LauncherKind::Kubernetes => "cnnd-worker".to_string(),
            _ => worker_bin.display().to_string(),
        };
        let bin = args.launcher_worker_bin.clone().unwrap_or(default_bin);
        let url = args.launcher_connect_url.clone().unwrap_or(connect_url);
        if url.contains("://127.") || url.contains("://localhost") || url.contains("://[::1]") {
            tracing::warn!(
                url,
                "cluster workers will dial a loopback address: only workers on this machine can reach it (set --worker-listen and --launcher-connect-url)"
            );
        }
        Ok(Some((backend, Sizing::from_args(args, bin, url))))
    }

    pub fn new(backend: Backend, sizing: Sizing, scheduler: Arc<Scheduler>) -> Launcher {
        Launcher {
            backend,
            sizing,
            scheduler,
            jobs: BTreeMap::new(),
            last_error: None,
            retry_at: None,
            refusals_in_a_row: 0,
        }
    }

    /// Runs the sizing loop until the daemon shuts down; then cancels the jobs whose
    /// workers have not registered (pending ones would otherwise start for nothing).
    pub async fn run(mut self) {
        tracing::info!(
            launcher = self.backend.kind(),
            min = self.sizing.min_workers,
            max = self.sizing.max_workers,
            "cluster launcher started"
        );
        while !self.scheduler.is_shutting_down() {
            if let Err(e) = self.tick().await {
                tracing::warn!(launcher = self.backend.kind(), "{e:#}");
                self.refused(format!("{e:#}"));
            }
            tokio::time::sleep(self.sizing.poll).await;
        }
        for (job, tracked) in &self.jobs {
            if tracked.worker.is_none() {
                if let Err(e) = self.backend.cancel(job).await {
                    tracing::warn!(job, "cancelling a job that had not started: {e:#}");
                }
            }
        }
    }

    fn refused(&mut self, why: String) {
        self.last_error = Some((why, Instant::now()));
    }

    /// One look at the cluster and the queue.
    pub async fn tick(&mut self) -> Result<()> {
        let reports = self.backend.jobs().await?;
        self.follow_jobs(reports).await;
        self.match_workers();
        let demand = self.scheduler.store.leasable_demand().await?;
        let supply = self.supply();
        let plan = plan(demand, supply, &self.sizing);
        if plan.unservable_cuda > 0 {
            self.refused(format!(
                "{} CUDA trial(s) wait, but this launcher starts CPU workers only (--launcher-gpus-per-worker 0)",
                plan.unservable_cuda
            ));
        }
        // A job the cluster cannot start as submitted (its partition is down, its image
        // cannot be pulled) is not joined by more like it: the status says why it waits.
        let stuck = self.jobs.values().any(|j| j.stuck);
        let may_submit = !stuck && self.retry_at.is_none_or(|t| Instant::now() >= t);
        if may_submit {
            let kinds = std::iter::repeat_n(WorkerKind::Gpu, plan.gpu as usize)
                .chain(std::iter::repeat_n(WorkerKind::Cpu, plan.cpu as usize));
            for kind in kinds {
                if !self.submit(kind).await {
                    break;
                }
            }
        }
        self.publish(plan.wanted);
        Ok(())
    }

    /// Submits one job; false (and a back-off) when the cluster refuses it.
    async fn submit(&mut self, kind: WorkerKind) -> bool {
        let spec = self.sizing.job(kind);
        match self.backend.submit(&spec).await {
            Ok(job) => {
                tracing::info!(job, device = kind.as_str(), "worker job submitted");
                self.refusals_in_a_row = 0;
                self.jobs.insert(
                    job,
                    TrackedJob {
                        kind,
                        submitted: Instant::now(),
                        phase: JobPhase::Pending,
                        reason: "submitted".into(),
                        stuck: false,
                        worker: None,
                    },
                );
                true
            }
            Err(e) => {
                self.refusals_in_a_row += 1;
                let backoff = Duration::from_secs(5 * 2u64.pow(self.refusals_in_a_row.min(6)));
                tracing::warn!(
                    launcher = self.backend.kind(),
                    retry_secs = backoff.as_secs(),
                    "worker job refused: {e:#}"
                );
                self.refused(format!("submitting a worker job: {e:#}"));
                self.retry_at = Some(Instant::now() + backoff);
                false
            }
        }
    }

    /// Takes the cluster's list: phases and reasons of known jobs, adoption of this
    /// daemon's jobs from before a restart, and the end of jobs that left the list.
    async fn follow_jobs(&mut self, reports: Vec<JobReport>) {
        let listed: std::collections::HashSet<String> =
            reports.iter().map(|r| r.job.clone()).collect();
        for report in reports {
            // The cluster lists ended jobs for a while (Slurm: MinJobAge); one this launcher
            // does not track any more was dealt with when it ended.
            if report.phase == JobPhase::Ended && !self.jobs.contains_key(&report.job) {
                continue;
            }
            let tracked = self.jobs.entry(report.job.clone()).or_insert_with(|| {
                tracing::info!(
                    job = report.job,
                    "adopting a worker job of an earlier daemon"
                );
                TrackedJob {
                    kind: WorkerKind::Cpu,
                    submitted: Instant::now(),
                    phase: JobPhase::Pending,
                    reason: String::new(),
                    stuck: false,
                    worker: None,
                }
            });
            tracked.phase = report.phase;
            tracked.reason = report.reason;
            tracked.stuck = report.stuck;
        }
        let mut ended = Vec::new();
        for (job, tracked) in &self.jobs {
            let gone = !listed.contains(job) && tracked.submitted.elapsed() > LIST_GRACE;
            if gone || tracked.phase == JobPhase::Ended {
                ended.push((job.clone(), tracked.clone()));
            }
        }
        for (job, tracked) in ended {
            self.jobs.remove(&job);
            let reason = if tracked.reason.is_empty() {
                "left the queue".to_string()
            } else {
                tracked.reason.clone()
            };
            let worker = self.scheduler.cluster_job_ended(&job, &reason).await;
            if worker.is_none() && tracked.worker.is_none() {
                // It never ran a worker: the cluster refused it, or the worker could not
                // reach this daemon. The job's output says which.
                self.refused(format!(
                    "job {job} ended before its worker registered: {reason}{}",
                    self.output_hint(&job)
                ));
            } else {
                tracing::info!(job, reason, "worker job ended");
            }
        }
        for (job, tracked) in &self.jobs {
            if tracked.stuck {
                self.last_error = Some((
                    format!("job {job} cannot start: {}", tracked.reason),
                    Instant::now(),
                ));
            }
        }
    }

    fn output_hint(&self, job: &str) -> String {
        match &self.backend {
            Backend::Slurm(b) => format!(" (see {})", b.output_path(job).display()),
            #[cfg(feature = "kubernetes")]
            Backend::Kubernetes(_) => String::new(),
        }
    }

    /// Notes which registered worker runs which job.
    fn match_workers(&mut self) {
        for w in self.scheduler.workers() {
            if let Some(tracked) = self.jobs.get_mut(&w.launcher_job) {
                tracked.worker = Some(w.worker_id.clone());
                if tracked.phase == JobPhase::Pending {
                    tracked.phase = JobPhase::Running;
                }
            }
        }
    }

    fn supply(&self) -> Supply {
        let workers = self.scheduler.workers();
        let state_of = |job: &str| {
            workers
                .iter()
                .find(|w| w.launcher_job == job)
                .map(|w| w.state)
        };
        let mut supply = Supply {
            jobs: self.jobs.len() as u32,
            ..Default::default()
        };
        for (job, tracked) in &self.jobs {
            let free = match state_of(job) {
                Some(WorkerState::Busy) => {
                    supply.busy += 1;
                    false
                }
                Some(WorkerState::Idle) => true,
                // Told to exit: it takes nothing more.
                Some(WorkerState::Leaving) => false,
                // Submitted, not registered: counted as coming, unless it cannot start.
                Some(WorkerState::Starting) | None => !tracked.stuck,
            };
            if free {
                match tracked.kind {
                    WorkerKind::Cpu => supply.free_cpu += 1,
                    WorkerKind::Gpu => supply.free_gpu += 1,
                }
            }
        }
        supply
    }

    fn publish(&self, wanted: u32) {
        let workers = self.scheduler.workers();
        let mut view = LauncherView {
            kind: self.backend.kind().into(),
            min_workers: self.sizing.min_workers,
            max_workers: self.sizing.max_workers,
            wanted,
            last_error: self.last_error.clone(),
            ..Default::default()
        };
        for (job, tracked) in &self.jobs {
            let worker = workers.iter().find(|w| &w.launcher_job == job);
            let state = match (worker.map(|w| w.state), &tracked.phase) {
                (Some(WorkerState::Idle), _) => {
                    view.running += 1;
                    view.idle += 1;
                    "running"
                }
                (Some(WorkerState::Busy | WorkerState::Leaving), _) => {
                    view.running += 1;
                    "running"
                }
                (_, JobPhase::Pending) => {
                    view.starting += 1;
                    "pending"
                }
                (_, JobPhase::Running) => {
                    view.starting += 1;
                    "starting"
                }
                (_, JobPhase::Ended) => "ended",
            };
            view.jobs.push(LauncherJobView {
                job: job.clone(),
                state: state.into(),
                reason: tracked.reason.clone(),
                worker_id: worker.map(|w| w.worker_id.clone()),
                device: tracked.kind.as_str().into(),
                submitted: tracked.submitted,
            });
        }
        self.scheduler.set_launcher_view(view);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Demand;

    fn sizing(min: u32, max: u32, gpus: u32) -> Sizing {
        Sizing {
            min_workers: min,
            max_workers: max,
            idle: Duration::from_secs(60),
            poll: Duration::from_secs(5),
            gpus_per_worker: gpus,
            cpus_per_worker: 1,
            worker_command: vec!["cnnd-worker".into()],
        }
    }

    fn demand(cpu: u32, cuda: u32, auto: u32) -> Demand {
        Demand { cpu, cuda, auto }
    }

    #[test]
    fn starts_one_worker_per_waiting_trial_up_to_max() {
        let p = plan(demand(0, 0, 10), Supply::default(), &sizing(0, 3, 0));
        assert_eq!((p.cpu, p.gpu, p.wanted), (3, 0, 3));
    }

    #[test]
    fn idle_and_starting_workers_count_as_supply() {
        let supply = Supply {
            busy: 1,
            free_cpu: 2,
            free_gpu: 0,
            jobs: 3,
        };
        let p = plan(demand(0, 0, 2), supply, &sizing(0, 8, 0));
        assert_eq!((p.cpu, p.gpu), (0, 0));
        assert_eq!(p.wanted, 3);
    }

    #[test]
    fn keeps_min_workers_with_an_empty_queue() {
        let p = plan(Demand::default(), Supply::default(), &sizing(2, 4, 0));
        assert_eq!((p.cpu, p.gpu, p.wanted), (2, 0, 2));
        let one = Supply {
            jobs: 1,
            free_cpu: 1,
            ..Default::default()
        };
        assert_eq!(plan(Demand::default(), one, &sizing(2, 4, 0)).cpu, 1);
    }

    #[test]
    fn cuda_trials_get_gpu_workers_and_cpu_trials_cpu_workers() {
        let p = plan(demand(1, 2, 1), Supply::default(), &sizing(0, 10, 1));
        assert_eq!((p.cpu, p.gpu), (1, 3));
        assert_eq!(p.unservable_cuda, 0);
    }

    #[test]
    fn cuda_trials_without_gpu_workers_are_reported_not_started() {
        let p = plan(demand(0, 2, 0), Supply::default(), &sizing(0, 10, 0));
        assert_eq!((p.cpu, p.gpu, p.unservable_cuda), (0, 0, 2));
    }

    #[test]
    fn never_more_jobs_than_max() {
        let supply = Supply {
            jobs: 4,
            ..Default::default()
        };
        let p = plan(demand(5, 5, 5), supply, &sizing(0, 4, 1));
        assert_eq!((p.cpu, p.gpu), (0, 0));
    }
}
