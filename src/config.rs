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
    /// SQLite database file [default: STATE_DIR/cnnd.sqlite].
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
