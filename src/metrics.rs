//! Prometheus metrics: what an operator graphs and alerts on.
//!
//! Owns: the metric registry, the tower layer that times every authenticated RPC by method,
//! the counters the API bumps (epochs recorded), the gauges read from the scheduler and the
//! store at scrape time (queue depth, workers busy, trials by state, open streams), and the
//! plain-HTTP `/metrics` endpoint (`--metrics-listen`, off by default).

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Instant;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::limits::StreamQuota;
use crate::scheduler::Scheduler;
use cnnd_core::status::{TrialStatus, WorkerState};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MethodLabel {
    method: String,
}

/// One worker: its id, the name it registered with, its machine and device.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WorkerLabel {
    worker: String,
    name: String,
    host: String,
    device: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabel {
    state: String,
}

/// The launcher's worker counts: which launcher, and which count (wanted, starting,
/// running, idle, min, max).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LauncherLabel {
    launcher: String,
    count: String,
}

/// Cluster jobs waiting to start, by the cluster's reason.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PendingLabel {
    launcher: String,
    reason: String,
}

pub struct Metrics {
    registry: Registry,
    rpc_seconds: Family<MethodLabel, Histogram>,
    epochs_recorded: Counter,
    epochs_per_second: Gauge<f64, std::sync::atomic::AtomicU64>,
    queue_depth: Gauge,
    workers_busy: Gauge,
    workers: Gauge,
    trials: Family<StateLabel, Gauge>,
    open_streams: Gauge,
    worker_busy: Family<WorkerLabel, Gauge>,
    worker_seconds_since_seen: Family<WorkerLabel, Gauge<f64, std::sync::atomic::AtomicU64>>,
    worker_trials_done: Family<WorkerLabel, Gauge>,
    launcher_workers: Family<LauncherLabel, Gauge>,
    launcher_pending_jobs: Family<PendingLabel, Gauge>,
    /// (when, epochs_recorded) at the previous scrape, for epochs_per_second.
    last_scrape: Mutex<Option<(Instant, u64)>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("cnnd");
        let rpc_seconds = Family::<MethodLabel, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.000_25, 2.0, 16))
        });
        registry.register(
            "rpc_duration_seconds",
            "Time from a call's arrival to its response headers, by gRPC method (authenticated calls only)",
            rpc_seconds.clone(),
        );
        let epochs_recorded = Counter::default();
        registry.register(
            "epochs_recorded",
            "Epoch results stored since the daemon started (rate() gives epochs per second)",
            epochs_recorded.clone(),
        );
        let epochs_per_second = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
        registry.register(
            "epochs_per_second",
            "Epochs recorded per second since the previous scrape",
            epochs_per_second.clone(),
        );
        let queue_depth = Gauge::default();
        registry.register(
            "queue_depth",
            "Trials waiting for a worker",
            queue_depth.clone(),
        );
        let workers_busy = Gauge::default();
        registry.register(
            "workers_busy",
            "Worker processes running a trial",
            workers_busy.clone(),
        );
        let workers = Gauge::default();
        registry.register("workers", "Worker slots", workers.clone());
        let trials = Family::<StateLabel, Gauge>::default();
        registry.register("trials", "Trials in the store by state", trials.clone());
        let open_streams = Gauge::default();
        registry.register(
            "open_streams",
            "WatchSweep streams open now",
            open_streams.clone(),
        );
        let worker_busy = Family::<WorkerLabel, Gauge>::default();
        registry.register(
            "worker_busy",
            "1 while this worker runs a trial, 0 while idle (one series per registered worker)",
            worker_busy.clone(),
        );
        let worker_seconds_since_seen =
            Family::<WorkerLabel, Gauge<f64, std::sync::atomic::AtomicU64>>::default();
        registry.register(
            "worker_seconds_since_seen",
            "Seconds since this worker last called the daemon (alert when it nears the lease timeout)",
            worker_seconds_since_seen.clone(),
        );
        let worker_trials_done = Family::<WorkerLabel, Gauge>::default();
        registry.register(
            "worker_trials_done",
            "Trials this worker finished since it registered",
            worker_trials_done.clone(),
        );
        let launcher_workers = Family::<LauncherLabel, Gauge>::default();
        registry.register(
            "launcher_workers",
            "The launcher's workers: wanted by the queue, starting (job submitted, not registered), running, idle, and its min and max",
            launcher_workers.clone(),
        );
        let launcher_pending_jobs = Family::<PendingLabel, Gauge>::default();
        registry.register(
            "launcher_pending_jobs",
            "Cluster jobs of worker launches not running yet, by the cluster's reason (Resources, PartitionDown, ImagePullBackOff...)",
            launcher_pending_jobs.clone(),
        );
        Metrics {
            launcher_workers,
            launcher_pending_jobs,
            registry,
            worker_busy,
            worker_seconds_since_seen,
            worker_trials_done,
            rpc_seconds,
            epochs_recorded,
            epochs_per_second,
            queue_depth,
            workers_busy,
            workers,
            trials,
            open_streams,
            last_scrape: Mutex::new(None),
        }
    }

    /// One more epoch result stored.
    pub fn epoch_recorded(&self) {
        self.epochs_recorded.inc();
    }

    fn observe_rpc(&self, path: &str, seconds: f64) {
        self.rpc_seconds
            .get_or_create(&MethodLabel {
                method: method_label(path),
            })
            .observe(seconds);
    }

    /// Reads the gauges from the scheduler and the store, then encodes everything in the
    /// Prometheus text format.
    pub async fn render(&self, scheduler: &Scheduler, streams: &StreamQuota) -> String {
        let workers = scheduler.workers();
        self.workers.set(workers.len() as i64);
        self.workers_busy.set(
            workers
                .iter()
                .filter(|w| w.state == WorkerState::Busy)
                .count() as i64,
        );
        // Per-worker series: rebuilt from scratch each scrape so departed workers vanish.
        self.worker_busy.clear();
        self.worker_seconds_since_seen.clear();
        self.worker_trials_done.clear();
        for w in &workers {
            let label = WorkerLabel {
                worker: w.worker_id.clone(),
                name: w.name.clone(),
                host: w.host.clone(),
                device: w.device.clone(),
            };
            self.worker_busy
                .get_or_create(&label)
                .set(i64::from(w.state == WorkerState::Busy));
            if let Some(seen) = w.last_seen {
                self.worker_seconds_since_seen
                    .get_or_create(&label)
                    .set(seen.elapsed().as_secs_f64());
            }
            self.worker_trials_done
                .get_or_create(&label)
                .set(i64::from(w.trials_done));
        }
        let launcher = scheduler.launcher_view();
        self.launcher_workers.clear();
        for (count, n) in [
            ("wanted", launcher.wanted),
            ("starting", launcher.starting),
            ("running", launcher.running),
            ("idle", launcher.idle),
            ("min", launcher.min_workers),
            ("max", launcher.max_workers),
        ] {
            self.launcher_workers
                .get_or_create(&LauncherLabel {
                    launcher: launcher.kind.clone(),
                    count: count.into(),
                })
                .set(i64::from(n));
        }
        self.launcher_pending_jobs.clear();
        for job in launcher.jobs.iter().filter(|j| j.state == "pending") {
            self.launcher_pending_jobs
                .get_or_create(&PendingLabel {
                    launcher: launcher.kind.clone(),
                    reason: if job.reason.is_empty() {
                        "none".into()
                    } else {
                        job.reason.clone()
                    },
                })
                .inc();
        }
        // One query gives both the queue depth and the trials by state (every state is
        // reported, zero included, so graphs start at zero).
        if let Ok(counts) = scheduler.store.trial_counts_by_status().await {
            let count = |state: &str| {
                counts
                    .iter()
                    .find(|(s, _)| s == state)
                    .map_or(0, |(_, n)| *n)
            };
            self.queue_depth.set(count(TrialStatus::Queued.as_str()));
            for state in TrialStatus::ALL.iter().map(|s| s.as_str()) {
                self.trials
                    .get_or_create(&StateLabel {
                        state: state.to_string(),
                    })
                    .set(count(state));
            }
        }
        self.open_streams.set(streams.open_streams() as i64);
        {
            let now = Instant::now();
            let total = self.epochs_recorded.get();
            let mut last = self.last_scrape.lock().unwrap();
            if let Some((then, before)) = *last {
                let secs = now.duration_since(then).as_secs_f64();
                if secs > 0.0 {
                    self.epochs_per_second
                        .set(total.saturating_sub(before) as f64 / secs);
                }
            }
            *last = Some((now, total));
        }
        let mut text = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }
}

/// The method label of a request path: the gRPC method, or "other" for paths no service
/// of ours has (keeps the label set bounded).
fn method_label(path: &str) -> String {
    let known = ["/cnn.v1.", "/grpc.health.v1.", "/grpc.reflection."];
    if known.iter().any(|p| path.starts_with(p)) && path.len() < 100 {
        path.trim_start_matches('/').to_string()
    } else {
        "other".into()
    }
}

/// Serves `GET /metrics` on `addr` until the process ends.
pub async fn serve(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    scheduler: Arc<Scheduler>,
    streams: StreamQuota,
) -> anyhow::Result<SocketAddr> {
    use anyhow::Context as _;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("metrics: listening on {addr}"))?;
    let bound = listener.local_addr()?;
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let (metrics, scheduler, streams) =
                (metrics.clone(), scheduler.clone(), streams.clone());
            async move {
                (
                    [(
                        http::header::CONTENT_TYPE,
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    )],
                    metrics.render(&scheduler, &streams).await,
                )
            }
        }),
    );
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "metrics endpoint stopped");
        }
    });
    Ok(bound)
}

// ---------------------------------------------------------------------------------------

/// Tower layer timing each call into `cnnd_rpc_duration_seconds`.
#[derive(Clone)]
pub struct RpcTiming {
    pub metrics: Arc<Metrics>,
}

impl<S> tower::Layer<S> for RpcTiming {
    type Service = RpcTimingService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        RpcTimingService {
            inner,
            metrics: self.metrics.clone(),
        }
    }
}

#[derive(Clone)]
pub struct RpcTimingService<S> {
    inner: S,
    metrics: Arc<Metrics>,
}

impl<S, B> tower::Service<http::Request<B>> for RpcTimingService<S>
where
    S: tower::Service<http::Request<B>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let path = request.uri().path().to_string();
        let metrics = self.metrics.clone();
        let started = Instant::now();
        let response = self.inner.call(request);
        Box::pin(async move {
            let r = response.await;
            metrics.observe_rpc(&path, started.elapsed().as_secs_f64());
            r
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn method_labels_are_bounded() {
        assert_eq!(
            method_label("/cnn.v1.Orchestrator/GetStatus"),
            "cnn.v1.Orchestrator/GetStatus"
        );
        assert_eq!(method_label("/evil/path"), "other");
        assert_eq!(
            method_label(&format!("/cnn.v1.{}", "x".repeat(200))),
            "other"
        );
    }
}
