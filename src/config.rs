//! Daemon configuration: every setting as a flag, an environment variable and a config-file
//! key (flag > environment > file > default), the defaults derived from the machine (state
//! directory, worker slots), the transport rules (no plaintext or unauthenticated serving
//! off loopback), and the annotated dump `cnnd config` prints. Owns no behaviour.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// How the daemon writes its log (to stderr).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One readable line per event.
    Human,
    /// One JSON object per line (for journald, Loki, Elasticsearch...).
    Json,
}

/// Every setting of the daemon. Each is a flag, an environment variable (`CNND_` + the
/// name in capitals) and a key of the config file (the name with `_`); a flag beats the
/// environment, which beats the file, which beats the default. `cnnd config` prints the
/// result.
#[derive(Debug, Clone, clap::Args, serde::Serialize)]
pub struct DaemonConfig {
    /// Config file (TOML, keys as printed by `cnnd config`) [default: STATE_DIR/cnnd.toml when it exists].
    #[arg(long, env = "CNND_CONFIG")]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// Address to serve gRPC on. Anything but loopback needs --tls-cert/--tls-key (or --allow-plaintext-remote).
    #[arg(long, env = "CNND_LISTEN", default_value = "127.0.0.1:50051")]
    pub listen: SocketAddr,
    /// The store: a SQLite file (or sqlite: URL), or a PostgreSQL URL (postgres://USER@HOST:PORT/DB; give the password through PGPASSWORD or ~/.pgpass, not here) [default: STATE_DIR/cnnd.sqlite].
    #[arg(long, env = "CNND_DB")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub db: Option<PathBuf>,
    /// Folder holding the data sets (e.g. DIR/mnist/train-images-idx3-ubyte.gz); image folders and initFrom files must lie inside it.
    #[arg(long, env = "CNND_DATA_DIR")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_dir: Option<PathBuf>,
    /// Folder for the database, the API token, trial weights and charts [default: $XDG_STATE_HOME/cnnd or ~/.local/state/cnnd].
    #[arg(long, env = "CNND_STATE_DIR")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state_dir: Option<PathBuf>,
    /// CPU worker processes [default: one per core, or 0 when a CUDA device is present].
    #[arg(long, env = "CNND_CPU_WORKERS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu_workers: Option<u32>,
    /// Intra-op threads of each CPU worker.
    #[arg(long, env = "CNND_THREADS_PER_WORKER", default_value_t = 1)]
    pub threads_per_worker: u32,
    /// Worker processes per CUDA device.
    #[arg(long, env = "CNND_GPU_WORKERS_PER_DEVICE", default_value_t = 1)]
    pub gpu_workers_per_device: u32,
    /// Largest number of trials one sweep may have.
    #[arg(long, env = "CNND_MAX_TRIALS_PER_SWEEP", default_value_t = 10_000)]
    pub max_trials_per_sweep: u32,
    /// Largest number of queued trials over all sweeps; a submit that would pass it is refused.
    #[arg(long, env = "CNND_MAX_QUEUED_TRIALS", default_value_t = 100_000)]
    pub max_queued_trials: u32,
    /// Attempts a trial gets when its worker dies before it is failed.
    #[arg(long, env = "CNND_MAX_ATTEMPTS", default_value_t = 3)]
    pub max_attempts: u32,
    /// Seconds a busy worker may stay silent (no heartbeat) before its lease expires.
    #[arg(long, env = "CNND_LEASE_TIMEOUT_SECS", default_value_t = 30)]
    pub lease_timeout_secs: u64,
    /// PostgreSQL with a standby: seconds the leader may go without renewing its heartbeat
    /// before a standby ends its session and takes over (the leader itself steps down after
    /// half of it).
    #[arg(long, env = "CNND_LEADER_LEASE_SECS", default_value_t = 10)]
    pub leader_lease_secs: u64,
    /// On SIGTERM/SIGINT, seconds running trials get to reach an epoch boundary.
    #[arg(long, env = "CNND_SHUTDOWN_GRACE_SECS", default_value_t = 30)]
    pub shutdown_grace_secs: u64,
    /// Folder of dashboard files (NAME.toml) [default: ./dashboards when present, else the built-in ones].
    #[arg(long, env = "CNND_DASHBOARDS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dashboards: Option<PathBuf>,
    /// Serve without the API token. Only allowed on a loopback address; every local user can then drive the daemon.
    #[arg(long, env = "CNND_INSECURE_NO_AUTH")]
    pub insecure_no_auth: bool,
    /// TLS certificate chain (PEM). With --tls-key, the API is served over TLS (rustls).
    #[arg(long, env = "CNND_TLS_CERT")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_cert: Option<PathBuf>,
    /// TLS private key (PEM) matching --tls-cert.
    #[arg(long, env = "CNND_TLS_KEY")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_key: Option<PathBuf>,
    /// Serve plaintext on a non-loopback address anyway (the token then crosses the network in clear).
    #[arg(long, env = "CNND_ALLOW_PLAINTEXT_REMOTE")]
    pub allow_plaintext_remote: bool,
    /// Serve Prometheus metrics on this address (plain HTTP, GET /metrics) [default: off].
    #[arg(long, env = "CNND_METRICS_LISTEN")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metrics_listen: Option<SocketAddr>,
    /// Serve the read-only browser dashboard on this address [default: off]. Same rules as
    /// --listen: loopback, or TLS (--tls-cert/--tls-key, the same certificate), or
    /// --allow-plaintext-remote; the API token (Bearer header, or the login page).
    #[arg(long, env = "CNND_HTTP_LISTEN")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http_listen: Option<SocketAddr>,
    /// Log format on stderr.
    #[arg(long, env = "CNND_LOG_FORMAT", value_enum, default_value_t = LogFormat::Human)]
    pub log_format: LogFormat,
    /// Largest request message, in bytes (Predict carries images).
    #[arg(long, env = "CNND_MAX_REQUEST_BYTES", default_value_t = 64 << 20)]
    pub max_request_bytes: usize,
    /// Largest image file Predict decodes, in bytes.
    #[arg(long, env = "CNND_MAX_IMAGE_BYTES", default_value_t = 32 << 20)]
    pub max_image_bytes: u64,
    /// Largest image Predict decodes, in pixels (width x height, read from the header).
    #[arg(long, env = "CNND_MAX_IMAGE_PIXELS", default_value_t = 40_000_000)]
    pub max_image_pixels: u64,
    /// WatchSweep streams one client address may hold open.
    #[arg(long, env = "CNND_MAX_STREAMS_PER_CLIENT", default_value_t = 16)]
    pub max_streams_per_client: u32,
    /// WatchSweep streams all clients together may hold open.
    #[arg(long, env = "CNND_MAX_STREAMS_TOTAL", default_value_t = 256)]
    pub max_streams_total: u32,
    /// Seconds a stream may wait for its client to read before the daemon closes it.
    #[arg(long, env = "CNND_STREAM_SEND_TIMEOUT_SECS", default_value_t = 30)]
    pub stream_send_timeout_secs: u64,
    /// Seconds a unary call may take, receiving its request included.
    #[arg(long, env = "CNND_REQUEST_TIMEOUT_SECS", default_value_t = 120)]
    pub request_timeout_secs: u64,
    /// Address of the worker protocol's listener (workers on other machines connect here). Anything but loopback needs --tls-cert/--tls-key (or --allow-plaintext-remote).
    #[arg(long, env = "CNND_WORKER_LISTEN", default_value = "127.0.0.1:0")]
    pub worker_listen: SocketAddr,
    /// CA certificate(s) (PEM) workers' TLS client certificates must chain to: mutual TLS on the worker protocol [default: no client certificates].
    #[arg(long, env = "CNND_WORKER_CLIENT_CA")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub worker_client_ca: Option<PathBuf>,
    /// Seconds Predict waits for a worker to answer (Predict runs on the workers).
    #[arg(long, env = "CNND_PREDICT_TIMEOUT_SECS", default_value_t = 60)]
    pub predict_timeout_secs: u64,
    /// The trainer binary the daemon starts its workers with [default: cnnd-worker beside the cnnd binary].
    #[arg(long, env = "CNND_WORKER_BIN")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub worker_bin: Option<PathBuf>,
    #[command(flatten)]
    #[serde(flatten)]
    pub launcher: LauncherArgs,
}

/// Who starts the workers. `local` (the default) keeps --cpu-workers and
/// --gpu-workers-per-device worker processes running on this machine; `slurm` and
/// `kubernetes` submit one cluster job per worker, between --min-workers and --max-workers
/// as the queue needs. The local settings apply to `local` only, the cluster settings to
/// the cluster launchers only.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LauncherKind {
    Local,
    Slurm,
    Kubernetes,
}

/// The launcher's settings (docs/OPERATIONS.md has a section per launcher).
#[derive(Debug, Clone, clap::Args, serde::Serialize)]
pub struct LauncherArgs {
    /// Who starts the workers: local (processes on this machine), slurm (sbatch) or kubernetes (a Job per worker).
    #[arg(long, env = "CNND_LAUNCHER", value_enum, default_value_t = LauncherKind::Local)]
    pub launcher: LauncherKind,
    /// Cluster launchers: workers kept alive even with an empty queue.
    #[arg(long, env = "CNND_MIN_WORKERS", default_value_t = 0)]
    pub min_workers: u32,
    /// Cluster launchers: most workers (cluster jobs) at once.
    #[arg(long, env = "CNND_MAX_WORKERS", default_value_t = 4)]
    pub max_workers: u32,
    /// Cluster launchers: seconds a worker may wait for a trial before it is told to exit (while more than --min-workers run).
    #[arg(long, env = "CNND_WORKER_IDLE_SECS", default_value_t = 300)]
    pub worker_idle_secs: u64,
    /// Cluster launchers: seconds between looks at the queue and the cluster's jobs.
    #[arg(long, env = "CNND_LAUNCHER_POLL_SECS", default_value_t = 5)]
    pub launcher_poll_secs: u64,
    /// Cluster launchers: the worker-protocol URL the workers connect to, as the compute nodes reach this daemon [default: http(s)://WORKER_LISTEN].
    #[arg(long, env = "CNND_LAUNCHER_CONNECT_URL")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub launcher_connect_url: Option<String>,
    /// Cluster launchers: the cnnd-worker program on the compute nodes (Slurm: a path on them; Kubernetes: the image's) [default: --worker-bin's path for slurm, cnnd-worker for kubernetes].
    #[arg(long, env = "CNND_LAUNCHER_WORKER_BIN")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub launcher_worker_bin: Option<String>,
    /// Cluster launchers: CPU cores per worker (Slurm --cpus-per-task, Kubernetes cpu request; the worker's --threads).
    #[arg(long, env = "CNND_LAUNCHER_CPUS_PER_WORKER", default_value_t = 1)]
    pub launcher_cpus_per_worker: u32,
    /// Cluster launchers: GPUs per worker for CUDA trials (Slurm --gres=gpu:N, Kubernetes nvidia.com/gpu); 0 starts CPU workers only.
    #[arg(long, env = "CNND_LAUNCHER_GPUS_PER_WORKER", default_value_t = 0)]
    pub launcher_gpus_per_worker: u32,
    /// Cluster launchers: the workers' file cache on the compute nodes (cnnd-worker --cache-dir) [default: the worker's own, ~/.cache/cnnd-worker].
    #[arg(long, env = "CNND_LAUNCHER_WORKER_CACHE_DIR")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub launcher_worker_cache_dir: Option<String>,
    /// Cluster launchers: a data directory on the compute nodes (cnnd-worker --data-dir): files there with the daemon's digests are not fetched.
    #[arg(long, env = "CNND_LAUNCHER_WORKER_DATA_DIR")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub launcher_worker_data_dir: Option<String>,
    /// Slurm: the partition (sbatch --partition) [default: the cluster's default].
    #[arg(long, env = "CNND_SLURM_PARTITION")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub slurm_partition: Option<String>,
    /// Slurm: the account charged (sbatch --account).
    #[arg(long, env = "CNND_SLURM_ACCOUNT")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub slurm_account: Option<String>,
    /// Slurm: each worker job's time limit (sbatch --time, e.g. 8:00:00); the worker gets SIGTERM 120 s before it and gives its trial back.
    #[arg(long, env = "CNND_SLURM_TIME")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub slurm_time: Option<String>,
    /// Slurm: extra #SBATCH options, separated by ';' (e.g. "--qos=long;--constraint=a100").
    #[arg(long, env = "CNND_SLURM_EXTRA")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub slurm_extra: Option<String>,
    /// Slurm: the job name of the workers (squeue --name finds them; a restarted daemon adopts those still queued).
    #[arg(long, env = "CNND_SLURM_JOB_NAME", default_value = "cnnd-worker")]
    pub slurm_job_name: String,
    /// Slurm: shell lines run before the worker in each job, separated by ';' (e.g. "module load cuda/12").
    #[arg(long, env = "CNND_SLURM_SETUP")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub slurm_setup: Option<String>,
    /// Kubernetes: the namespace of the worker Jobs [default: the kubeconfig's or the pod's namespace].
    #[arg(long, env = "CNND_K8S_NAMESPACE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub k8s_namespace: Option<String>,
    /// Kubernetes: the worker image (deploy/Dockerfile builds one).
    #[arg(long, env = "CNND_K8S_IMAGE", default_value = "cnnd-worker:latest")]
    pub k8s_image: String,
    /// Kubernetes: the Secret holding the worker token under the key `token`.
    #[arg(
        long,
        env = "CNND_K8S_TOKEN_SECRET",
        default_value = "cnnd-worker-token"
    )]
    pub k8s_token_secret: String,
    /// Kubernetes: memory request and limit of each worker (e.g. 4Gi).
    #[arg(long, env = "CNND_K8S_MEMORY", default_value = "4Gi")]
    pub k8s_memory: String,
    /// Kubernetes: the label value naming this daemon on its Jobs (app.kubernetes.io/instance).
    #[arg(long, env = "CNND_K8S_INSTANCE", default_value = "cnnd")]
    pub k8s_instance: String,
    /// Kubernetes: seconds a finished worker Job is kept (ttlSecondsAfterFinished).
    #[arg(long, env = "CNND_K8S_TTL_SECS", default_value_t = 600)]
    pub k8s_ttl_secs: u32,
}

impl DaemonConfig {
    pub fn state_dir(&self) -> PathBuf {
        self.state_dir.clone().unwrap_or_else(default_state_dir)
    }

    /// The config file to read: --config, else STATE_DIR/cnnd.toml if it exists.
    pub fn config_file(&self) -> Option<PathBuf> {
        self.config.clone().or_else(|| {
            let p = self.state_dir().join(CONFIG_FILE);
            p.exists().then_some(p)
        })
    }

    /// Refuses combinations that would expose the daemon: plaintext or no token on a
    /// non-loopback address.
    pub fn check_transport(&self) -> Result<(), String> {
        let loopback = self.listen.ip().is_loopback();
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            return Err("--tls-cert and --tls-key go together: give both or neither".into());
        }
        if self.insecure_no_auth && !loopback {
            return Err(format!(
                "--insecure-no-auth is only allowed on a loopback address, not {}",
                self.listen
            ));
        }
        if !loopback && self.tls_cert.is_none() && !self.allow_plaintext_remote {
            return Err(format!(
                "--listen {} is not a loopback address: give --tls-cert and --tls-key to serve TLS, \
                 or --allow-plaintext-remote to serve plaintext on purpose",
                self.listen
            ));
        }
        if !self.worker_listen.ip().is_loopback()
            && self.tls_cert.is_none()
            && !self.allow_plaintext_remote
        {
            return Err(format!(
                "--worker-listen {} is not a loopback address: give --tls-cert and --tls-key to serve the worker protocol over TLS, \
                 or --allow-plaintext-remote to serve plaintext on purpose",
                self.worker_listen
            ));
        }
        if let Some(http) = self.http_listen {
            if self.insecure_no_auth && !http.ip().is_loopback() {
                return Err(format!(
                    "--insecure-no-auth is only allowed on loopback addresses, and --http-listen {http} is not one"
                ));
            }
            if !http.ip().is_loopback() && self.tls_cert.is_none() && !self.allow_plaintext_remote {
                return Err(format!(
                    "--http-listen {http} is not a loopback address: give --tls-cert and --tls-key to serve the dashboard over HTTPS, \
                     or --allow-plaintext-remote to serve plaintext on purpose"
                ));
            }
        }
        if self.worker_client_ca.is_some() && self.tls_cert.is_none() {
            return Err(
                "--worker-client-ca asks workers for TLS client certificates: give --tls-cert and --tls-key too"
                    .into(),
            );
        }
        Ok(())
    }

    pub fn db_path(&self) -> PathBuf {
        self.db
            .clone()
            .unwrap_or_else(|| self.state_dir().join("cnnd.sqlite"))
    }

    pub fn dashboards_dir(&self) -> PathBuf {
        self.dashboards
            .clone()
            .unwrap_or_else(|| PathBuf::from("dashboards"))
    }
}

/// The config file's name in the state directory.
pub const CONFIG_FILE: &str = "cnnd.toml";

use cnnd_client::auth::default_state_dir;

/// Arguments that apply a config file: `--name=value` for each of its settings that
/// neither a flag nor the environment already gave (`matches` is the parse without the
/// file, `command` the clap command that made it). Returns them with the setting names.
pub fn file_arguments(
    path: &Path,
    command: &clap::Command,
    matches: &clap::ArgMatches,
) -> Result<(Vec<String>, Vec<String>), String> {
    use clap::parser::ValueSource;
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("config file {}: {e}", path.display()))?;
    let table: toml::Table =
        toml::from_str(&text).map_err(|e| format!("config file {}: {e}", path.display()))?;
    let mut args = Vec::new();
    let mut names = Vec::new();
    for (key, value) in &table {
        let arg = command
            .get_arguments()
            .find(|a| a.get_id() == key.as_str() && a.get_long().is_some() && key != "config")
            .ok_or_else(|| {
                format!(
                    "config file {}: unknown setting '{key}' (`cnnd config` lists them)",
                    path.display()
                )
            })?;
        if matches!(
            matches.value_source(key),
            Some(ValueSource::CommandLine | ValueSource::EnvVariable)
        ) {
            continue;
        }
        let long = arg.get_long().unwrap_or(key);
        let text = match value {
            toml::Value::Boolean(true) => {
                args.push(format!("--{long}"));
                names.push(key.clone());
                continue;
            }
            toml::Value::Boolean(false) => continue,
            toml::Value::String(s) => s.clone(),
            toml::Value::Integer(i) => i.to_string(),
            toml::Value::Float(f) => f.to_string(),
            other => {
                return Err(format!(
                    "config file {}: '{key}' must be a string, number or boolean, not {}",
                    path.display(),
                    other.type_str()
                ))
            }
        };
        args.push(format!("--{long}={text}"));
        names.push(key.clone());
    }
    Ok((args, names))
}

/// The effective configuration as TOML, each line annotated with where its value came
/// from (`source(name)`: flag, environment, file or default). Settings without a value
/// (e.g. no metrics address) are listed commented out.
pub fn effective_toml(config: &DaemonConfig, source: &dyn Fn(&str) -> String) -> String {
    let mut resolved = config.clone();
    resolved.state_dir = Some(config.state_dir());
    resolved.db = Some(config.db_path());
    let value = serde_json::to_value(&resolved).unwrap_or_default();
    let mut out = String::new();
    for arg in
        <DaemonConfig as clap::Args>::augment_args(clap::Command::new("cnnd")).get_arguments()
    {
        let name = arg.get_id().as_str();
        if name == "config" || arg.get_long().is_none() {
            continue;
        }
        match value.get(name).and_then(|v| toml::Value::try_from(v).ok()) {
            Some(v) => out.push_str(&format!("{name} = {v}  # {}\n", source(name))),
            None => out.push_str(&format!("# {name} =  (not set)\n")),
        }
    }
    out
}

/// Number of CPU cores this process may use.
pub fn cpu_cores() -> u32 {
    std::thread::available_parallelism()
        .map(|n| n.get() as u32)
        .unwrap_or(1)
}
