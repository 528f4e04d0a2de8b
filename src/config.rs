//! Daemon configuration: command-line flags with environment overrides, and the defaults
//! derived from the machine (state directory, worker slots). Owns no behaviour.

use std::net::SocketAddr;
use std::path::PathBuf;

/// The libtorch version this binary was built against (read from the torch package).
/// The CUDA version libtorch was built with (from torch/version.py at build time).
pub const TORCH_CUDA_VERSION: &str = match option_env!("CNND_TORCH_CUDA_VERSION") {
    Some(v) => v,
    None => "none",
};

pub const LIBTORCH_VERSION: &str = match option_env!("CNND_LIBTORCH_VERSION") {
    Some(v) => v,
    None => "unknown",
};

#[derive(Debug, Clone, clap::Args)]
pub struct DaemonConfig {
    /// Address to serve gRPC on.
    #[arg(long, env = "CNND_LISTEN", default_value = "127.0.0.1:50051")]
    pub listen: SocketAddr,
    /// SQLite database file [default: STATE_DIR/cnnd.sqlite].
    #[arg(long, env = "CNND_DB")]
    pub db: Option<PathBuf>,
    /// Folder holding the data sets (e.g. DIR/mnist/train-images-idx3-ubyte.gz).
    #[arg(long, env = "CNND_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Folder for the database, trial weights and charts [default: $XDG_STATE_HOME/cnnd or ~/.local/state/cnnd].
    #[arg(long, env = "CNND_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
    /// CPU worker processes [default: one per core, or 0 when a CUDA device is present].
    #[arg(long, env = "CNND_CPU_WORKERS")]
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
    /// Attempts a trial gets when its worker dies before it is failed.
    #[arg(long, env = "CNND_MAX_ATTEMPTS", default_value_t = 3)]
    pub max_attempts: u32,
    /// Seconds a busy worker may stay silent (no heartbeat) before its lease expires.
    #[arg(long, env = "CNND_LEASE_TIMEOUT_SECS", default_value_t = 30)]
    pub lease_timeout_secs: u64,
    /// On SIGTERM/SIGINT, seconds running trials get to reach an epoch boundary.
    #[arg(long, env = "CNND_SHUTDOWN_GRACE_SECS", default_value_t = 30)]
    pub shutdown_grace_secs: u64,
    /// Folder of dashboard files (NAME.toml) [default: ./dashboards when present, else the built-in default].
    #[arg(long, env = "CNND_DASHBOARDS")]
    pub dashboards: Option<PathBuf>,
}

impl DaemonConfig {
    pub fn state_dir(&self) -> PathBuf {
        if let Some(d) = &self.state_dir {
            return d.clone();
        }
        let base = std::env::var_os("XDG_STATE_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/state")))
            .unwrap_or_else(|| PathBuf::from("."));
        base.join("cnnd")
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

/// Number of CPU cores this process may use.
pub fn cpu_cores() -> u32 {
    std::thread::available_parallelism()
        .map(|n| n.get() as u32)
        .unwrap_or(1)
}
