//! `cnnd`: the daemon. Serves the gRPC API (with reflection and health) behind the token,
//! size and timing layers, serves the worker protocol on a separate loopback listener,
//! keeps its worker processes (`cnnd-worker`, the trainer, beside this binary) running, and
//! owns the SQLite store. It never links libtorch: the device probe runs in a
//! `cnnd-worker probe` child. `cnnd config` prints the effective configuration.

use std::time::Duration;

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use cnnd::api::hub::Hub;
use cnnd::api::Api;
use cnnd::auth::RequireBearer;
use cnnd::config::{DaemonConfig, LogFormat};
use cnnd::leadership::{Campaign, LeaderGate, StateDirLock};
use cnnd::limits::{RequestSizeLimit, StreamQuota};
use cnnd::metrics::{Metrics, RpcTiming};
use cnnd::scheduler::{Scheduler, SchedulerConfig, SlotConfig};
use cnnd::store::Store;
use cnnd_core::devices::{Device, Probe};
use cnnd_core::sweep::SweepLimits;
use cnnd_proto::orchestrator_server::OrchestratorServer;
use cnnd_proto::worker_hub_server::WorkerHubServer;

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
    /// Prints the effective configuration as TOML (flags > environment > config file >
    /// defaults), each value with where it came from.
    Config(Box<DaemonConfig>),
    /// Replaces the worker token (STATE_DIR/worker-token) with a new one. A running daemon
    /// takes it at once: workers must be given the new one (the daemon's own workers are
    /// restarted with it when their old token is refused).
    RotateWorkerToken {
        /// The daemon's state directory [default: $XDG_STATE_HOME/cnnd or ~/.local/state/cnnd].
        #[arg(long, env = "CNND_STATE_DIR")]
        state_dir: Option<PathBuf>,
    },
    /// Moves or checks a history between stores (stop the daemon first).
    #[command(subcommand)]
    Store(StoreCommand),
}

#[derive(Subcommand)]
enum StoreCommand {
    /// Copies every sweep, trial, epoch and event from one store into another, empty one
    /// (SQLite to PostgreSQL or back), then proves the copy by row counts and checksums.
    Copy {
        /// The store to read: a SQLite file or URL, or a PostgreSQL URL (migrated first when older).
        #[arg(long)]
        from: PathBuf,
        /// The store to fill: created and migrated when missing; must hold no rows.
        #[arg(long)]
        to: PathBuf,
    },
    /// Prints each table's row count and checksum (the same history gives the same sums on
    /// either backend).
    Checksum {
        /// The store to read.
        #[arg(long)]
        db: PathBuf,
    },
}

fn long_version() -> &'static str {
    Box::leak(
        format!(
            "{} (no libtorch: workers run cnnd-worker)",
            env!("CARGO_PKG_VERSION")
        )
        .into_boxed_str(),
    )
}

/// The command line after applying the config file: the parsed settings, and which
/// settings the file gave (for `cnnd config`).
struct Invocation {
    cli: Cli,
    matches: clap::ArgMatches,
    file: Option<PathBuf>,
    from_file: BTreeSet<String>,
}

impl Invocation {
    fn without_file(cli: Cli, matches: clap::ArgMatches) -> Self {
        Invocation {
            cli,
            matches,
            file: None,
            from_file: BTreeSet::new(),
        }
    }
}

/// Parses flags and environment, then adds the config file's settings for whatever they
/// left at the default, and parses again.
fn parse_invocation() -> Result<Invocation, String> {
    let args: Vec<OsString> = std::env::args_os().collect();
    let command = Cli::command();
    let matches = command.clone().get_matches_from(&args);
    let cli = Cli::from_arg_matches(&matches).map_err(|e| e.to_string())?;
    let (config, sub) = match &cli.command {
        None => (&cli.config, None),
        Some(Command::Config(c)) => (c.as_ref(), Some("config")),
        Some(Command::RotateWorkerToken { .. } | Command::Store(_)) => {
            return Ok(Invocation::without_file(cli, matches))
        }
    };
    let Some(file) = config.config_file() else {
        return Ok(Invocation::without_file(cli, matches));
    };
    let (scope, scope_matches) = match sub {
        None => (command.clone(), &matches),
        Some(name) => (
            command.find_subcommand(name).cloned().unwrap_or_default(),
            matches.subcommand_matches(name).unwrap_or(&matches),
        ),
    };
    let (extra, names) = cnnd::config::file_arguments(&file, &scope, scope_matches)?;
    let matches = command.get_matches_from(
        args.into_iter()
            .chain(extra.into_iter().map(OsString::from)),
    );
    let cli = Cli::from_arg_matches(&matches).map_err(|e| e.to_string())?;
    Ok(Invocation {
        cli,
        matches,
        file: Some(file),
        from_file: names.into_iter().collect(),
    })
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| "info,sqlx=warn,h2=warn,tower=warn".into());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().flatten_event(true).init(),
        LogFormat::Human => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
    }
}

fn main() {
    let invocation = match parse_invocation() {
        Ok(i) => i,
        Err(e) => {
            eprintln!("cnnd: {e}");
            std::process::exit(2);
        }
    };
    let format = match &invocation.cli.command {
        None => invocation.cli.config.log_format,
        _ => LogFormat::Human,
    };
    init_logging(format);
    let result = match invocation.cli.command {
        Some(Command::Config(ref config)) => {
            print_config(config, &invocation);
            Ok(())
        }
        Some(Command::RotateWorkerToken { ref state_dir }) => {
            let dir = state_dir
                .clone()
                .unwrap_or_else(cnnd_client::auth::default_state_dir);
            cnnd::auth::rotate_worker_token(&dir).map(|_| {
                println!(
                    "new worker token in {}",
                    cnnd::auth::worker_token_path(&dir).display()
                )
            })
        }
        Some(Command::Store(ref command)) => {
            runtime(2).and_then(|rt| rt.block_on(store_command(command)))
        }
        None => runtime(2).and_then(|rt| rt.block_on(serve(invocation.cli.config))),
    };
    if let Err(e) = result {
        eprintln!("cnnd: {e:#}");
        std::process::exit(1);
    }
}

/// `cnnd store copy` and `cnnd store checksum`.
async fn store_command(command: &StoreCommand) -> Result<()> {
    use cnnd::store::display_db;
    let print_sums = |sums: &[cnnd::store::TableSum]| {
        for s in sums {
            println!("  {:<7} {:>10} rows  sha256 {}", s.table, s.rows, s.sha256);
        }
    };
    match command {
        StoreCommand::Checksum { db } => {
            let store = Store::open_read_only(db).await?;
            println!("{}:", display_db(db));
            print_sums(&store.checksums().await?);
        }
        StoreCommand::Copy { from, to } => {
            let sqlite_file = cnnd::store::Backend::of(from) == cnnd::store::Backend::Sqlite
                && !from.to_string_lossy().starts_with("sqlite:");
            if sqlite_file && !from.exists() {
                anyhow::bail!("--from: no store at {} (no such file)", from.display());
            }
            let source = Store::open(from).await?;
            let destination = Store::open(to).await?;
            let (from_shown, to_shown) = (display_db(from), display_db(to));
            eprintln!("copying {from_shown} into {to_shown}");
            let mut last_shown = std::time::Instant::now();
            source
                .copy_into(&destination, |table, done, total| {
                    if done == total || last_shown.elapsed() >= Duration::from_secs(1) {
                        eprintln!("  {table}: {done} of {total} rows");
                        last_shown = std::time::Instant::now();
                    }
                })
                .await
                .with_context(|| format!("copying {from_shown} into {to_shown}"))?;
            let (before, after) = (source.checksums().await?, destination.checksums().await?);
            println!("{from_shown}:");
            print_sums(&before);
            println!("{to_shown}:");
            print_sums(&after);
            if before != after {
                anyhow::bail!(
                    "the copy differs from its source (see the checksums above): {to_shown} is not a faithful copy"
                );
            }
            println!("copy verified: every table has the same rows and checksum");
        }
    }
    Ok(())
}

/// `cnnd config`: the effective settings, each with its source.
fn print_config(config: &DaemonConfig, invocation: &Invocation) {
    use clap::parser::ValueSource;
    let matches = invocation
        .matches
        .subcommand_matches("config")
        .unwrap_or(&invocation.matches);
    let env_name = |name: &str| format!("CNND_{}", name.to_uppercase());
    let source = |name: &str| -> String {
        if invocation.from_file.contains(name) {
            return "config file".into();
        }
        match matches.value_source(name) {
            Some(ValueSource::CommandLine) => "flag".into(),
            Some(ValueSource::EnvVariable) => format!("environment {}", env_name(name)),
            _ => "default".into(),
        }
    };
    println!("# cnnd {}: effective configuration", long_version());
    match &invocation.file {
        Some(f) => println!("# config file: {}", f.display()),
        None => println!(
            "# config file: none ({} does not exist)",
            config.state_dir().join(cnnd::config::CONFIG_FILE).display()
        ),
    }
    print!("{}", cnnd::config::effective_toml(config, &source));
}

/// Largest message of the worker protocol: a Predict job carries the caller's images.
const HUB_MAX_MESSAGE_BYTES: usize = 80 << 20;

fn runtime(threads: usize) -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()?)
}

/// The trainer binary: `--worker-bin`, else `cnnd-worker` beside this binary.
fn worker_binary(config: &DaemonConfig) -> Result<PathBuf> {
    if let Some(bin) = &config.worker_bin {
        return Ok(bin.clone());
    }
    let exe = std::env::current_exe().context("locating the cnnd binary")?;
    Ok(exe.with_file_name("cnnd-worker"))
}

/// Runs `cnnd-worker probe` in a child process: the devices of this machine as libtorch
/// sees them (the daemon itself never loads libtorch or initialises CUDA).
fn probe_devices(worker_bin: &Path) -> Result<Vec<Device>> {
    let out = std::process::Command::new(worker_bin)
        .arg("probe")
        .output()
        .with_context(|| {
            format!(
                "running `{} probe` (the trainer: build it with `cargo build --release`, or give --worker-bin)",
                worker_bin.display()
            )
        })?;
    let probe: Probe = serde_json::from_slice(&out.stdout).with_context(|| {
        format!(
            "`{} probe` printed no device list: {}",
            worker_bin.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        )
    })?;
    Ok(probe.devices)
}

async fn serve(config: DaemonConfig) -> Result<()> {
    config.check_transport().map_err(anyhow::Error::msg)?;
    let state_dir = config.state_dir();
    std::fs::create_dir_all(&state_dir)
        .with_context(|| format!("creating state directory {}", state_dir.display()))?;
    // Who may serve: on SQLite, one daemon per state folder (a second one is refused here);
    // on PostgreSQL, the leader of the database (a second daemon stands by, see below).
    let db_path = config.db_path();
    let backend = cnnd::store::Backend::of(&db_path);
    let _state_dir_lock = match backend {
        cnnd::store::Backend::Sqlite => Some(StateDirLock::acquire(&state_dir)?),
        cnnd::store::Backend::Postgres => None,
    };
    let tls = match (&config.tls_cert, &config.tls_key) {
        (Some(cert), Some(key)) => {
            let read =
                |p: &PathBuf| std::fs::read(p).with_context(|| format!("reading {}", p.display()));
            let tls = tonic::transport::ServerTlsConfig::new().identity(
                tonic::transport::Identity::from_pem(read(cert)?, read(key)?),
            );
            // Check the pair now, before anything is started or announced.
            tonic::transport::Server::builder()
                .tls_config(tls.clone())
                .with_context(|| {
                    format!(
                        "--tls-cert {} / --tls-key {}",
                        cert.display(),
                        key.display()
                    )
                })?;
            Some(tls)
        }
        _ => None,
    };
    // Two tokens: the API token opens the public API, the worker token the worker
    // protocol; neither opens the other.
    let (auth, worker_auth, worker_token_file) = if config.insecure_no_auth {
        tracing::warn!(
            listen = %config.listen,
            "--insecure-no-auth: serving without tokens; every local user can drive this daemon"
        );
        (RequireBearer::disabled(), RequireBearer::disabled(), None)
    } else {
        let token = cnnd::auth::load_or_create_token(&state_dir)?;
        cnnd::auth::load_or_create_worker_token(&state_dir)?;
        let file = cnnd::auth::worker_token_path(&state_dir);
        (
            RequireBearer::new(&token),
            RequireBearer::from_file(&file)?,
            Some(file),
        )
    };
    let worker_bin = worker_binary(&config)?;
    let devices = probe_devices(&worker_bin)?;
    let gpus: Vec<&Device> = devices.iter().filter(|d| d.is_cuda()).collect();
    let cpu_cores = devices.first().map_or(1, |cpu| cpu.cores.max(1));
    // --cpu-workers and --gpu-workers-per-device size the local launcher only; a cluster
    // launcher starts none here (its workers are cluster jobs).
    let local = config.launcher.launcher == cnnd::config::LauncherKind::Local;
    let cpu_workers = match (local, config.cpu_workers) {
        (false, _) => 0,
        (true, Some(n)) => n,
        (true, None) if gpus.is_empty() => cpu_cores,
        (true, None) => 0,
    };
    let gpu_workers_per_device = if local {
        config.gpu_workers_per_device
    } else {
        0
    };
    let mut slots: Vec<SlotConfig> = (0..cpu_workers)
        .map(|i| SlotConfig {
            worker_id: format!("cpu-{i}"),
            device: "cpu".into(),
            threads: config.threads_per_worker.max(1),
        })
        .collect();
    for g in &gpus {
        for j in 0..gpu_workers_per_device {
            slots.push(SlotConfig {
                worker_id: format!("{}-{j}", g.name.replace(':', "")),
                device: g.name.clone(),
                threads: 1,
            });
        }
    }
    if slots.is_empty() && local {
        tracing::warn!(
            "no local worker slots (--cpu-workers 0 and no CUDA device): trials stay queued until workers connect"
        );
    }

    // The listener for the worker protocol is bound before the launcher is set up: cluster
    // workers dial its address.
    let hub_listener = tokio::net::TcpListener::bind(config.worker_listen)
        .await
        .with_context(|| format!("listening for workers on {}", config.worker_listen))?;
    let hub_addr = hub_listener.local_addr()?;
    let hub_scheme = if tls.is_some() { "https" } else { "http" };
    let cluster = cnnd::launcher::Launcher::from_args(
        &config.launcher,
        &state_dir,
        &worker_bin,
        format!("{hub_scheme}://{hub_addr}"),
        worker_token_file.clone(),
    )
    .await?;

    let store = Store::open(&db_path).await?;
    let scheduler = Scheduler::new(
        store.clone(),
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
            worker_command: vec![worker_bin.display().to_string()],
            worker_token_file,
            event_buffer: 4096,
            cluster: cluster
                .as_ref()
                .map(|(backend, sizing)| sizing.cluster_workers(backend.job_prefix())),
        },
    )?;

    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("listening on {}", config.listen))?;
    let addr = listener.local_addr()?;
    // The worker protocol has a listener of its own (--worker-listen, loopback by default,
    // bound above), never the public address; over TLS when it is not loopback.
    let hub_tls = match (&tls, &config.worker_client_ca) {
        (Some(tls), Some(ca)) => {
            let pem = std::fs::read(ca).with_context(|| format!("reading {}", ca.display()))?;
            Some(
                tls.clone()
                    .client_ca_root(tonic::transport::Certificate::from_pem(pem)),
            )
        }
        (tls, _) => tls.clone(),
    };
    // The daemon's own workers connect over loopback, in plaintext when the listener is
    // loopback; to a TLS listener they connect like any other worker.
    let worker_url = if hub_tls.is_some() || !hub_addr.ip().is_loopback() {
        None
    } else {
        Some(format!("http://{hub_addr}"))
    };
    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(cnnd_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(cnnd_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET)
        .build_v1alpha()?;
    let (health, health_service) = tonic_health::server::health_reporter();
    // On PostgreSQL every daemon starts as a standby: NOT_SERVING, and UNAVAILABLE to every
    // call but health and reflection, until it holds the leadership lock.
    let gate = match backend {
        cnnd::store::Backend::Sqlite => LeaderGate::default(),
        cnnd::store::Backend::Postgres => {
            LeaderGate::closed("standby: this daemon is waiting for leadership")
        }
    };
    set_health(&health, backend == cnnd::store::Backend::Sqlite).await;

    let dashboards_dir = config.dashboards_dir();
    let metrics = Arc::new(Metrics::new());
    let streams = StreamQuota::new(config.max_streams_per_client, config.max_streams_total);
    let api = Arc::new(Api {
        sweep_replies: Default::default(),
        scheduler: scheduler.clone(),
        dashboards_dir: dashboards_dir.clone(),
        predict_timeout: Duration::from_secs(config.predict_timeout_secs.max(1)),
        max_image_bytes: config.max_image_bytes,
        max_image_pixels: config.max_image_pixels,
        streams: streams.clone(),
        stream_send_timeout: Duration::from_secs(config.stream_send_timeout_secs.max(1)),
        max_queued_trials: config.max_queued_trials,
    });
    let hub = Hub {
        scheduler: scheduler.clone(),
        metrics: metrics.clone(),
    };
    let (stop_serving, serving_stopped) = tokio::sync::watch::channel(false);
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };
    let mut public = tonic::transport::Server::builder()
        .timeout(Duration::from_secs(config.request_timeout_secs.max(1)))
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(Duration::from_secs(20)))
        .max_concurrent_streams(Some(config.max_streams_per_client.max(1) * 4));
    if let Some(tls) = tls.clone() {
        public = public.tls_config(tls)?;
    }
    let public = public
        .layer(RequestSizeLimit {
            limit: config.max_request_bytes,
        })
        .layer(auth.clone())
        .layer(gate.clone())
        .layer(RpcTiming {
            metrics: metrics.clone(),
        })
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(
            OrchestratorServer::from_arc(api.clone())
                .max_decoding_message_size(config.max_request_bytes),
        )
        .serve_with_incoming_shutdown(
            tokio_stream::wrappers::TcpListenerStream::new(listener),
            stopped(serving_stopped.clone()),
        );
    let mut hub_builder = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(10)))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)));
    if let Some(tls) = hub_tls {
        hub_builder = hub_builder.tls_config(tls)?;
    }
    let hub_server = hub_builder
        .layer(RequestSizeLimit {
            limit: HUB_MAX_MESSAGE_BYTES,
        })
        .layer(worker_auth)
        .layer(gate.clone())
        .add_service(WorkerHubServer::new(hub).max_decoding_message_size(HUB_MAX_MESSAGE_BYTES))
        .serve_with_incoming_shutdown(
            tokio_stream::wrappers::TcpListenerStream::new(hub_listener),
            stopped(serving_stopped),
        );
    let server = tokio::spawn(async move {
        let (a, b) = tokio::join!(public, hub_server);
        a.and(b)
    });

    // Leadership (PostgreSQL): wait for the lock, then fence the store with the new term.
    let leader = match backend {
        cnnd::store::Backend::Sqlite => None,
        cnnd::store::Backend::Postgres => {
            let holder = format!(
                "{} pid {}, API {addr}",
                cnnd_client::host_name(),
                std::process::id()
            );
            let campaign = Campaign::connect(
                db_path.to_str().unwrap_or_default(),
                holder.clone(),
                Duration::from_secs(config.leader_lease_secs.max(2)),
            )
            .await?;
            let mut announced = false;
            let lead = campaign.lead(|leader| {
                // Printed only when another daemon leads (this one stands by).
                if !announced {
                    println!("cnnd standing by on {addr}");
                    announced = true;
                }
                let reason = format!(
                    "standby: this daemon does not lead; the leader is {} (term {})",
                    leader.holder, leader.term
                );
                tracing::info!(leader = leader.holder, term = leader.term, "standing by");
                gate.close(reason);
            });
            let leader = tokio::select! {
                leader = lead => leader?,
                () = shutdown_signal() => {
                    tracing::info!("stopped while standing by");
                    let _ = stop_serving.send(true);
                    let _ = tokio::time::timeout(Duration::from_secs(2), server).await;
                    return Ok(());
                }
            };
            store.fence(leader.term);
            tracing::info!(term = leader.term, holder, "leading");
            Some(leader)
        }
    };

    let requeued = scheduler.recover().await?;
    if requeued > 0 {
        tracing::info!(
            requeued,
            "trials left running by the previous daemon were re-queued"
        );
    }
    // Where the worker protocol listens, for operators and tests (it changes every start).
    cnnd::files::write_whole(
        &state_dir.join("worker-hub.addr"),
        format!("{hub_addr}\n").as_bytes(),
    )?;
    if let Some(metrics_addr) = config.metrics_listen {
        let bound = cnnd::metrics::serve(
            metrics_addr,
            metrics.clone(),
            scheduler.clone(),
            streams.clone(),
        )
        .await?;
        tracing::info!(%bound, "Prometheus metrics on http://{bound}/metrics");
    }
    if let Some(http_listen) = config.http_listen {
        let tls = match (&config.tls_cert, &config.tls_key) {
            (Some(cert), Some(key)) => Some((std::fs::read(cert)?, std::fs::read(key)?)),
            _ => None,
        };
        let scheme = if tls.is_some() { "https" } else { "http" };
        let options = cnnd::web::WebOptions {
            listen: http_listen,
            tls,
            auth: auth.clone(),
            session_ttl: Duration::from_secs(12 * 3600),
        };
        let bound = cnnd::web::serve(options, api.clone()).await?;
        // Where the dashboard listens, for operators and tests (port 0 picks one).
        cnnd::files::write_whole(
            &state_dir.join("http.addr"),
            format!("{scheme}://{bound}\n").as_bytes(),
        )?;
        tracing::info!("dashboard on {scheme}://{bound}/");
    }
    cnnd::api::charts::render_charts_when_sweeps_finish(scheduler.clone(), dashboards_dir);
    match worker_url {
        Some(url) => scheduler.start_workers(url),
        None if !scheduler.config.slots.is_empty() => tracing::warn!(
            worker_listen = %hub_addr,
            "local worker slots need a plaintext loopback --worker-listen; none started (run --cpu-workers 0 with remote workers, or start cnnd-worker --connect yourself)"
        ),
        None => {}
    }
    if let Some((backend, sizing)) = cluster {
        let launcher = cnnd::launcher::Launcher::new(backend, sizing, scheduler.clone());
        tokio::spawn(launcher.run());
    }
    scheduler.start_lease_reaper();
    gate.open();
    set_health(&health, true).await;
    tracing::info!(
        %addr,
        worker_hub = %hub_addr,
        tls = tls.is_some(),
        auth = !config.insecure_no_auth,
        db = %cnnd::store::display_db(&db_path),
        state_dir = %state_dir.display(),
        workers = scheduler.config.slots.len(),
        "cnnd {} listening",
        env!("CARGO_PKG_VERSION")
    );
    println!("cnnd listening on {addr}");

    // On SIGTERM/SIGINT: drain the workers while the server still answers them, then stop
    // serving (giving open streams a moment), then exit; workers die with the daemon.
    // A leader that loses leadership stops at once instead (see `cnnd::leadership`).
    let lost = async move {
        match leader {
            Some(leader) => leader.lost().await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        () = shutdown_signal() => {}
        why = lost => {
            gate.close(format!("this daemon stepped down: {why}"));
            set_health(&health, false).await;
            tracing::error!(
                "leadership lost: {why}; stepping down: exiting (status {EXIT_LEADERSHIP_LOST}) so that a supervisor restarts this daemon as a standby"
            );
            std::process::exit(EXIT_LEADERSHIP_LOST);
        }
    }
    tracing::info!("shutting down: no new trials; running ones stop at their next epoch boundary");
    scheduler.shutdown().await;
    let _ = stop_serving.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(2), server).await;
    tracing::info!("stopped");
    Ok(())
}

/// The exit status of a leader that lost leadership (a supervisor restarts it: as a standby).
const EXIT_LEADERSHIP_LOST: i32 = 3;

/// Health for the whole server ("") and the Orchestrator service: SERVING only while this
/// daemon leads (always, on SQLite).
async fn set_health(health: &tonic_health::server::HealthReporter, serving: bool) {
    use tonic_health::ServingStatus;
    let status = if serving {
        ServingStatus::Serving
    } else {
        ServingStatus::NotServing
    };
    health.set_service_status("", status).await;
    health
        .set_service_status(
            <OrchestratorServer<Api> as tonic::server::NamedService>::NAME,
            status,
        )
        .await;
}

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
    }
}
