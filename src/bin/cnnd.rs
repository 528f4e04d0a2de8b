//! `cnnd`: the daemon. Serves the gRPC API (with reflection and health), keeps the worker
//! processes running, and owns the SQLite store. `cnnd worker` is the worker process the
//! daemon starts for each slot; `cnnd probe` prints the devices libtorch sees.

use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use cnnd::api::{Api, Hub};
use cnnd::config::{cpu_cores, DaemonConfig};
use cnnd::proto::orchestrator_server::OrchestratorServer;
use cnnd::proto::worker_hub_server::WorkerHubServer;
use cnnd::scheduler::{DeviceInfo, Scheduler, SchedulerConfig, SlotConfig};
use cnnd::store::Store;
use cnnd::sweep::SweepLimits;
use cnnd::worker;

#[derive(Parser)]
#[command(name = "cnnd", version = long_version(), about = "Runs CNN hyperparameter sweeps: gRPC API, libtorch worker processes, SQLite history, PNG charts")]
#[command(args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(flatten)]
    config: DaemonConfig,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// A worker process (started by the daemon, one per slot).
    #[command(hide = true)]
    Worker(worker::WorkerArgs),
    /// Prints the devices libtorch sees, as JSON.
    Probe,
}

fn long_version() -> &'static str {
    Box::leak(
        format!(
            "{} (libtorch {})",
            env!("CARGO_PKG_VERSION"),
            cnnd::config::LIBTORCH_VERSION
        )
        .into_boxed_str(),
    )
}

/// Largest request the Orchestrator service decodes (Predict uploads images).
const PREDICT_REQUEST_LIMIT: usize = 64 << 20;

fn main() {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,sqlx=warn,h2=warn,tower=warn".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let result = match cli.command {
        Some(Command::Probe) => {
            println!(
                "{}",
                serde_json::to_string(&worker::probe()).unwrap_or_default()
            );
            Ok(())
        }
        Some(Command::Worker(args)) => runtime(1).and_then(|rt| rt.block_on(worker::run(args))),
        None => runtime(2).and_then(|rt| rt.block_on(serve(cli.config))),
    };
    if let Err(e) = result {
        eprintln!("cnnd: {e:#}");
        std::process::exit(1);
    }
}

fn runtime(threads: usize) -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()?)
}

/// Runs `cnnd probe` in a child process, so the daemon itself never initialises CUDA.
fn probe_devices() -> Result<Vec<DeviceInfo>> {
    let exe = std::env::current_exe()?;
    let out = std::process::Command::new(exe)
        .arg("probe")
        .output()
        .context("running `cnnd probe`")?;
    let probe: worker::Probe = serde_json::from_slice(&out.stdout).with_context(|| {
        format!(
            "`cnnd probe` printed no device list: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    })?;
    let mut devices = vec![DeviceInfo {
        name: "cpu".into(),
        kind: "cpu".into(),
        cores: cpu_cores(),
        memory_bytes: 0,
        description: format!("{} cores", cpu_cores()),
    }];
    devices.extend(probe.cuda_devices.iter().map(|g| DeviceInfo {
        name: format!("cuda:{}", g.index),
        kind: "cuda".into(),
        cores: 0,
        memory_bytes: g.memory_bytes,
        description: g.name.clone(),
    }));
    Ok(devices)
}

async fn serve(config: DaemonConfig) -> Result<()> {
    let state_dir = config.state_dir();
    std::fs::create_dir_all(&state_dir)
        .with_context(|| format!("creating state directory {}", state_dir.display()))?;
    let devices = probe_devices()?;
    let gpus: Vec<&DeviceInfo> = devices.iter().filter(|d| d.kind == "cuda").collect();
    let cpu_workers = config
        .cpu_workers
        .unwrap_or(if gpus.is_empty() { cpu_cores() } else { 0 });
    let mut slots: Vec<SlotConfig> = (0..cpu_workers)
        .map(|i| SlotConfig {
            worker_id: format!("cpu-{i}"),
            device: "cpu".into(),
            threads: config.threads_per_worker.max(1),
        })
        .collect();
    for g in &gpus {
        for j in 0..config.gpu_workers_per_device {
            slots.push(SlotConfig {
                worker_id: format!("{}-{j}", g.name.replace(':', "")),
                device: g.name.clone(),
                threads: 1,
            });
        }
    }
    if slots.is_empty() {
        anyhow::bail!("no worker slots: give --cpu-workers N (N > 0) or a CUDA device");
    }

    let db_path = config.db_path();
    let store = Store::open(&db_path).await?;
    let exe = std::env::current_exe()?.display().to_string();
    let scheduler = Scheduler::new(
        store,
        SchedulerConfig {
            state_dir: state_dir.clone(),
            db_path: db_path.clone(),
            data_dir: config
                .data_dir
                .clone()
                .map(|d| std::path::absolute(&d).unwrap_or(d)),
            slots,
            devices,
            limits: SweepLimits {
                max_trials: config.max_trials_per_sweep,
            },
            max_attempts: config.max_attempts.max(1),
            lease_poll: Duration::from_secs(5),
            lease_timeout: Duration::from_secs(config.lease_timeout_secs.max(1)),
            shutdown_grace: Duration::from_secs(config.shutdown_grace_secs),
            worker_command: vec![exe, "worker".into()],
        },
    );
    let requeued = scheduler.recover().await?;
    if requeued > 0 {
        tracing::info!(
            requeued,
            "trials left running by the previous daemon were re-queued"
        );
    }

    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("listening on {}", config.listen))?;
    let addr = listener.local_addr()?;
    let worker_url = if addr.ip().is_unspecified() {
        format!("http://127.0.0.1:{}", addr.port())
    } else {
        format!("http://{addr}")
    };

    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(cnnd::proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(cnnd::proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET)
        .build_v1alpha()?;
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<OrchestratorServer<Api>>().await;

    let dashboards_dir = config.dashboards_dir();
    let api = Api {
        scheduler: scheduler.clone(),
        dashboards_dir: dashboards_dir.clone(),
        predictor: Some(std::sync::Arc::new(cnnd::predict::LocalPredictor::default())),
    };
    let hub = Hub {
        scheduler: scheduler.clone(),
    };
    cnnd::api::render_charts_when_sweeps_finish(scheduler.clone(), dashboards_dir);
    scheduler.start_workers(worker_url);
    scheduler.start_lease_reaper();
    tracing::info!(
        %addr,
        db = %db_path.display(),
        state_dir = %state_dir.display(),
        workers = scheduler.config.slots.len(),
        "cnnd {} listening",
        env!("CARGO_PKG_VERSION")
    );
    println!("cnnd listening on {addr}");

    // On SIGTERM/SIGINT: drain the workers while the server still answers them, then stop
    // serving (giving open streams a moment), then exit; workers die with the daemon.
    let (stop_serving, serving_stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(health_service)
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha)
            // Predict carries image files: up to 64 MiB per request (each image is then
            // held to imaging::DecodeLimits).
            .add_service(
                OrchestratorServer::new(api).max_decoding_message_size(PREDICT_REQUEST_LIMIT),
            )
            .add_service(WorkerHubServer::new(hub))
            .serve_with_incoming_shutdown(
                tokio_stream::wrappers::TcpListenerStream::new(listener),
                async {
                    let _ = serving_stopped.await;
                },
            ),
    );
    shutdown_signal().await;
    tracing::info!("shutting down: no new trials; running ones stop at their next epoch boundary");
    scheduler.shutdown().await;
    let _ = stop_serving.send(());
    let _ = tokio::time::timeout(Duration::from_secs(2), server).await;
    tracing::info!("stopped");
    Ok(())
}

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
    }
}
