//! Test harness: starts the real `cnnd` binary on a free TCP port with a temporary state
//! directory (it starts its real `cnnd-worker` processes), and runs the real clients
//! (`cnnctl`, `grpcurl`) against it. Nothing is mocked. No libtorch here: these tests
//! build without it, and find the other packages' binaries beside `cnnd` ([`sibling_bin`]).
#![allow(dead_code)]

pub mod datagen;
pub mod netns;
pub mod postgres;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Daemons that train share two cores: tests that start one hold this lock.
static TRAINING: Mutex<()> = Mutex::new(());

pub fn serial() -> MutexGuard<'static, ()> {
    TRAINING.lock().unwrap_or_else(|e| e.into_inner())
}

/// Where MNIST lives: `CNND_DATA_DIR` (scripts/test.sh sets it), else ../shared/data.
pub fn data_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("CNND_DATA_DIR") {
        return PathBuf::from(d);
    }
    let shared = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data");
    assert!(
        shared.join("mnist").exists(),
        "set CNND_DATA_DIR to a folder holding mnist/ (scripts/test.sh does)"
    );
    shared
}

/// The value of `--db` in a daemon's flags (`--db X` or `--db=X`).
fn db_flag(extra: &[&str]) -> Option<PathBuf> {
    extra.iter().enumerate().find_map(|(i, a)| {
        a.strip_prefix("--db=")
            .or_else(|| (*a == "--db").then(|| extra.get(i + 1).copied()).flatten())
            .map(PathBuf::from)
    })
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// What a test daemon is started with besides its flags.
#[derive(Default)]
struct LaunchOptions<'a> {
    /// RLIMIT_AS of the daemon and its workers.
    address_space: Option<u64>,
    /// The CA its TLS certificate chains to.
    ca_file: Option<&'a Path>,
    /// More environment variables.
    env: &'a [(&'a str, &'a std::ffi::OsStr)],
    /// The API's listen address (default 127.0.0.1); clients still dial 127.0.0.1.
    listen_ip: Option<&'a str>,
}

pub struct Daemon {
    pub child: Child,
    pub port: u16,
    pub state: tempfile::TempDir,
    pub addr: String,
    /// The data directory it was started with.
    pub data: PathBuf,
    /// The CA its certificate chains to when it serves TLS (`--tls-cert` in its flags):
    /// the clients of this harness then speak TLS to it, trusting only this CA.
    pub ca_file: Option<PathBuf>,
    /// Its `--db` when its flags give one (a PostgreSQL URL, say).
    pub db: Option<PathBuf>,
}

impl Daemon {
    /// Starts cnnd with `workers` one-thread CPU workers and waits until it answers.
    pub fn start(workers: u32, extra: &[&str]) -> Daemon {
        let state = tempfile::tempdir().unwrap();
        Self::start_in(state, workers, extra)
    }

    pub fn start_in(state: tempfile::TempDir, workers: u32, extra: &[&str]) -> Daemon {
        Self::launch(state, &data_dir(), false, workers, extra)
    }

    /// Like [`Daemon::start`], with `--data-dir` pointing at `data` instead of MNIST.
    pub fn start_with_data_dir(data: &Path, workers: u32, extra: &[&str]) -> Daemon {
        Self::launch(tempfile::tempdir().unwrap(), data, false, workers, extra)
    }

    /// Like [`Daemon::start`], with the daemon and its workers (which inherit the limit)
    /// held to `bytes` of address space (RLIMIT_AS): an allocation beyond it fails at once
    /// on any host, however much memory it has or however it overcommits.
    pub fn start_with_address_space_limit(workers: u32, extra: &[&str], bytes: u64) -> Daemon {
        Self::launch_with(
            tempfile::tempdir().unwrap(),
            &data_dir(),
            false,
            workers,
            extra,
            LaunchOptions {
                address_space: Some(bytes),
                ..Default::default()
            },
        )
    }

    /// Like [`Daemon::start_with_data_dir`] serving TLS: `extra` holds `--tls-cert` and
    /// `--tls-key` of a certificate for 127.0.0.1 that chains to `ca_file`.
    pub fn start_tls(data: &Path, workers: u32, extra: &[&str], ca_file: &Path) -> Daemon {
        Self::start_tls_listening("127.0.0.1", data, workers, extra, ca_file)
    }

    /// Like [`Daemon::start_tls`] with the API listening on `listen_ip` (e.g. `0.0.0.0`, for
    /// clients in another network namespace).
    pub fn start_tls_listening(
        listen_ip: &str,
        data: &Path,
        workers: u32,
        extra: &[&str],
        ca_file: &Path,
    ) -> Daemon {
        Self::launch_with(
            tempfile::tempdir().unwrap(),
            data,
            false,
            workers,
            extra,
            LaunchOptions {
                ca_file: Some(ca_file),
                listen_ip: Some(listen_ip),
                ..Default::default()
            },
        )
    }

    /// Like [`Daemon::start`] with no local workers and more environment variables (e.g.
    /// KUBECONFIG for `--launcher kubernetes`).
    pub fn start_with_env(extra: &[&str], env: &[(&str, &std::ffi::OsStr)]) -> Daemon {
        Self::launch_with(
            tempfile::tempdir().unwrap(),
            &data_dir(),
            false,
            0,
            extra,
            LaunchOptions {
                env,
                ..Default::default()
            },
        )
    }

    /// Starts cnnd on `state`; `append_log` keeps what an earlier daemon wrote to cnnd.log.
    fn launch(
        state: tempfile::TempDir,
        data: &Path,
        append_log: bool,
        workers: u32,
        extra: &[&str],
    ) -> Daemon {
        Self::launch_with(
            state,
            data,
            append_log,
            workers,
            extra,
            LaunchOptions::default(),
        )
    }

    fn launch_with(
        state: tempfile::TempDir,
        data: &Path,
        append_log: bool,
        workers: u32,
        extra: &[&str],
        options: LaunchOptions,
    ) -> Daemon {
        let LaunchOptions {
            address_space,
            ca_file,
            env,
            listen_ip,
        } = options;
        let port = free_port();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .append(append_log)
            .truncate(!append_log)
            .open(state.path().join("cnnd.log"))
            .unwrap();
        let mut command = Command::new(env!("CARGO_BIN_EXE_cnnd"));
        if let Some(bytes) = address_space {
            use std::os::unix::process::CommandExt;
            // SAFETY: setrlimit is async-signal-safe and affects only the child.
            unsafe {
                command.pre_exec(move || {
                    let limit = libc::rlimit {
                        rlim_cur: bytes,
                        rlim_max: bytes,
                    };
                    if libc::setrlimit(libc::RLIMIT_AS, &limit) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let child = command
            .env_remove("CNND_CONFIG")
            .args([
                "--listen",
                &format!("{}:{port}", listen_ip.unwrap_or("127.0.0.1")),
            ])
            .arg("--state-dir")
            .arg(state.path())
            .arg("--data-dir")
            .arg(data)
            .args([
                "--cpu-workers",
                &workers.to_string(),
                "--threads-per-worker",
                "1",
            ])
            .args(extra)
            .env("CUDA_VISIBLE_DEVICES", "")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("starting cnnd");
        let mut d = Daemon {
            child,
            port,
            addr: format!("127.0.0.1:{port}"),
            state,
            data: data.to_path_buf(),
            ca_file: ca_file.map(Path::to_path_buf),
            db: db_flag(extra),
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if d.cnnctl(&["status"]).status.success() {
                break;
            }
            if let Ok(Some(exit)) = d.child.try_wait() {
                panic!("cnnd exited at start ({exit}); log:\n{}", d.log());
            }
            assert!(
                Instant::now() < deadline,
                "cnnd did not come up; log:\n{}",
                d.log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        d
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.state.path().join("cnnd.log")).unwrap_or_default()
    }

    /// Its store: the `--db` it was given, else the SQLite file in its state folder. The
    /// `db_*` helpers read either (a PostgreSQL URL as a path).
    pub fn db_path(&self) -> PathBuf {
        self.db
            .clone()
            .unwrap_or_else(|| self.state.path().join("cnnd.sqlite"))
    }

    /// The daemon's API token file (created by the daemon at its first start).
    pub fn token_file(&self) -> PathBuf {
        cnnd_client::auth::token_path(self.state.path())
    }

    /// The daemon's API token.
    pub fn token(&self) -> String {
        cnnd_client::auth::read_token_file(&self.token_file()).expect("reading the daemon's token")
    }

    /// cnnctl pointed at this daemon; it finds the token in the daemon's state directory
    /// as it would the default daemon's.
    pub fn cnnctl(&self, args: &[&str]) -> Output {
        let mut cmd = Command::new(cnnctl_bin());
        match &self.ca_file {
            Some(ca) => cmd
                .env("CNND_ADDR", format!("https://{}", self.addr))
                .env("CNND_CA_FILE", ca),
            None => cmd
                .env("CNND_ADDR", format!("http://{}", self.addr))
                .env_remove("CNND_CA_FILE"),
        };
        cmd.args(args)
            .env("CNND_STATE_DIR", self.state.path())
            .env_remove("CNND_TOKEN_FILE")
            .env_remove("CNND_TOKEN")
            .output()
            .expect("running cnnctl")
    }

    /// The worker token (`STATE_DIR/worker-token`): it opens the worker protocol only.
    pub fn worker_token(&self) -> String {
        std::fs::read_to_string(self.state.path().join("worker-token"))
            .unwrap()
            .trim()
            .to_string()
    }

    /// An in-process client of the public API with the token attached.
    pub async fn client(&self) -> cnnd_client::Client {
        let scheme = if self.ca_file.is_some() {
            "https"
        } else {
            "http"
        };
        cnnd_client::connect(&cnnd_client::ClientOptions {
            addr: format!("{scheme}://{}", self.addr),
            token_file: Some(self.token_file()),
            ca_file: self.ca_file.clone(),
            ..Default::default()
        })
        .await
        .expect("connecting to cnnd")
    }

    /// The loopback address the daemon serves the worker protocol on
    /// (`STATE_DIR/worker-hub.addr`).
    /// The worker protocol's address, to dial: a daemon listening on every address
    /// (0.0.0.0 or [::]) is dialled on loopback, which its test certificates name.
    pub fn worker_hub_addr(&self) -> String {
        let path = self.state.path().join("worker-hub.addr");
        let written = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("{}: {e}\n{}", path.display(), self.log()));
        let addr: std::net::SocketAddr = written
            .trim()
            .parse()
            .unwrap_or_else(|e| panic!("{}: {e}: {written}", path.display()));
        if addr.ip().is_unspecified() {
            format!("127.0.0.1:{}", addr.port())
        } else {
            addr.to_string()
        }
    }

    /// cnnctl with `--output json`, parsed; panics with stderr when it fails.
    pub fn cnnctl_json(&self, args: &[&str]) -> serde_json::Value {
        let mut all = vec!["--output", "json"];
        all.extend_from_slice(args);
        let out = self.cnnctl(&all);
        assert!(
            out.status.success(),
            "cnnctl {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "cnnctl {args:?} printed no JSON ({e}): {}",
                String::from_utf8_lossy(&out.stdout)
            )
        })
    }

    /// grpcurl through server reflection only (no proto files), body on stdin.
    pub fn grpcurl(&self, method: &str, body: &str) -> Output {
        use std::io::Write;
        let mut cmd = Command::new(grpcurl_bin());
        self.grpcurl_transport(&mut cmd);
        if self.token_file().exists() {
            cmd.args(["-H", &format!("authorization: Bearer {}", self.token())]);
        }
        let mut child = cmd
            .args(["-d", "@", &self.addr, method])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("running grpcurl (scripts/setup.sh installs it)");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(body.as_bytes())
            .unwrap();
        child.wait_with_output().unwrap()
    }

    /// grpcurl against the worker protocol's listener (no reflection there: the proto
    /// files), with the worker token; `extra` goes before the address (e.g. `-cert`/`-key`
    /// where the daemon wants client certificates).
    pub fn grpcurl_worker_hub(&self, method: &str, body: &str, extra: &[&str]) -> Output {
        let header = format!("authorization: Bearer {}", self.worker_token());
        let protos = concat!(env!("CARGO_MANIFEST_DIR"), "/proto");
        let mut cmd = Command::new(grpcurl_bin());
        self.grpcurl_transport(&mut cmd);
        cmd.args(["-H", &header, "-import-path", protos])
            .args(["-proto", "cnn/v1/worker.proto", "-d", body])
            .args(extra)
            .args([&self.worker_hub_addr(), method])
            .output()
            .expect("running grpcurl")
    }

    /// `-plaintext`, or `-cacert CA` when the daemon serves TLS.
    fn grpcurl_transport(&self, cmd: &mut Command) {
        match &self.ca_file {
            Some(ca) => cmd.arg("-cacert").arg(ca),
            None => cmd.arg("-plaintext"),
        };
    }

    pub fn grpcurl_json(&self, method: &str, body: &str) -> serde_json::Value {
        let out = self.grpcurl(method, body);
        assert!(
            out.status.success(),
            "grpcurl {method} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// Waits until the sweep has no queued or running trial.
    pub fn wait_for_sweep(&self, sweep_id: &str, limit: Duration) -> serde_json::Value {
        let deadline = Instant::now() + limit;
        loop {
            let s = self.cnnctl_json(&["sweep", sweep_id]);
            let status = s["status"].as_str().unwrap_or_default().to_string();
            if status == "finished" || status == "cancelled" {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "sweep {sweep_id} still {status}; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(300));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A binary of another package of the workspace, built beside the daemon
/// (`target/<profile>/NAME`): cargo gives a test only its own package's binaries, so this
/// finds `cnnctl` (and the daemon finds `cnnd-worker`) next to `cnnd`. scripts/test.sh builds
/// them all first (`cargo build --workspace`).
pub fn sibling_bin(name: &str) -> PathBuf {
    let daemon = PathBuf::from(env!("CARGO_BIN_EXE_cnnd"));
    let path = daemon.with_file_name(name);
    assert!(
        path.exists(),
        "{} is missing: build the workspace first (cargo build --release --workspace)",
        path.display()
    );
    path
}

/// The cnnctl binary.
pub fn cnnctl_bin() -> PathBuf {
    sibling_bin("cnnctl")
}

pub fn grpcurl_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("GRPCURL") {
        return PathBuf::from(p);
    }
    PathBuf::from("grpcurl")
}

/// Row counts (sweeps, trials, epochs, events) read straight from the SQLite file.
pub fn db_counts(db: &Path) -> (i64, i64, i64, i64) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let store = cnnd::store::Store::open_read_only(db).await.unwrap();
        store.table_counts().await.unwrap()
    })
}

// ---------------------------------------------------------------------------------------
// Fault injection (tests/faults.rs): killing and restarting daemons, reading the store.

impl Daemon {
    /// The daemon's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL to the daemon (no chance to clean up), and reaps it.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends `signal` to the daemon process.
    pub fn signal(&self, signal: i32) {
        // SAFETY: kill(2) on the child this harness spawned (not yet reaped).
        let rc = unsafe { libc::kill(self.child.id() as i32, signal) };
        assert_eq!(
            rc,
            0,
            "kill({}, {signal}) failed: {}",
            self.child.id(),
            std::io::Error::last_os_error()
        );
    }

    /// Waits until the daemon exits by itself; None when it still runs after `limit`.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        wait_child_exit(&mut self.child, limit)
    }

    /// Stops this daemon (SIGKILL unless it already exited) and starts a new one on the same
    /// state directory, on a new port, appending to the same cnnd.log.
    pub fn restart(mut self, workers: u32, extra: &[&str]) -> Daemon {
        self.kill9();
        let state = std::mem::replace(&mut self.state, tempfile::tempdir().unwrap());
        drop(self);
        Self::launch(state, &data_dir(), true, workers, extra)
    }

    /// Like [`Daemon::restart`], keeping the data directory and the TLS set-up.
    pub fn restart_same(mut self, workers: u32, extra: &[&str]) -> Daemon {
        self.kill9();
        let state = std::mem::replace(&mut self.state, tempfile::tempdir().unwrap());
        let (data, ca) = (self.data.clone(), self.ca_file.clone());
        drop(self);
        Self::launch_with(
            state,
            &data,
            true,
            workers,
            extra,
            LaunchOptions {
                ca_file: ca.as_deref(),
                ..Default::default()
            },
        )
    }

    /// Like [`Daemon::restart`] with `--data-dir` pointing at `data`.
    pub fn restart_with_data_dir(mut self, data: &Path, workers: u32, extra: &[&str]) -> Daemon {
        self.kill9();
        let state = std::mem::replace(&mut self.state, tempfile::tempdir().unwrap());
        drop(self);
        Self::launch(state, data, true, workers, extra)
    }

    /// Submits a sweep with grpcurl; returns its id. Panics when refused.
    pub fn submit(&self, body: &serde_json::Value) -> String {
        let r = self.grpcurl_json("cnn.v1.Orchestrator/SubmitSweep", &body.to_string());
        r["sweepId"]
            .as_str()
            .unwrap_or_else(|| panic!("no sweepId in {r}"))
            .to_string()
    }

    /// GetTrial through grpcurl.
    pub fn trial(&self, trial_id: &str) -> serde_json::Value {
        self.grpcurl_json(
            "cnn.v1.Orchestrator/GetTrial",
            &serde_json::json!({ "trialId": trial_id }).to_string(),
        )
    }

    /// GetStatus through grpcurl (has the heartbeat's batch progress that cnnctl leaves out).
    pub fn status(&self) -> serde_json::Value {
        self.grpcurl_json("cnn.v1.Orchestrator/GetStatus", "{}")
    }

    /// GetStatus through an in-process gRPC client: for polling (cnnctl takes ~0.7 s to
    /// start, as it loads libtorch).
    pub fn get_status(&self) -> cnnd_proto::Status {
        block_on(async move {
            let mut c = self.client().await;
            c.get_status(cnnd_proto::GetStatusRequest {})
                .await
                .expect("GetStatus")
                .into_inner()
        })
    }

    /// GetSweep through an in-process gRPC client.
    pub fn get_sweep(&self, sweep_id: &str) -> cnnd_proto::Sweep {
        let sweep_id = sweep_id.to_string();
        block_on(async move {
            let mut c = self.client().await;
            c.get_sweep(cnnd_proto::GetSweepRequest {
                sweep_id,
                all_params: false,
            })
            .await
            .expect("GetSweep")
            .into_inner()
        })
    }

    /// GetTrial through an in-process gRPC client.
    pub fn get_trial(&self, trial_id: &str) -> cnnd_proto::Trial {
        let trial_id = trial_id.to_string();
        block_on(async move {
            let mut c = self.client().await;
            c.get_trial(cnnd_proto::GetTrialRequest { trial_id })
                .await
                .expect("GetTrial")
                .into_inner()
        })
    }

    /// Waits (polling GetSweep in-process) until the sweep has ended; then returns
    /// `cnnctl --output json sweep ID`.
    pub fn wait_sweep_ended(&self, sweep_id: &str, limit: Duration) -> serde_json::Value {
        let deadline = Instant::now() + limit;
        loop {
            let s = self.get_sweep(sweep_id);
            if s.status == "finished" || s.status == "cancelled" {
                return self.cnnctl_json(&["sweep", sweep_id]);
            }
            assert!(
                Instant::now() < deadline,
                "sweep {sweep_id} still {} after {limit:?}; log:\n{}",
                s.status,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Worker pids (0 for a worker still starting).
    pub fn worker_pids(&self) -> Vec<u32> {
        self.get_status().workers.iter().map(|w| w.pid).collect()
    }

    /// Waits until every worker is registered and idle; returns the status.
    pub fn wait_workers_idle(&self, limit: Duration) -> cnnd_proto::Status {
        let deadline = Instant::now() + limit;
        loop {
            let st = self.get_status();
            if !st.workers.is_empty() && st.workers.iter().all(|w| w.state == "idle" && w.pid > 0) {
                return st;
            }
            assert!(
                Instant::now() < deadline,
                "workers not idle: {st:?}; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Every event of a sweep as `cnnctl --output json watch` prints it (replay, then live
    /// until the sweep ends): one JSON value per line.
    pub fn watch_events(&self, sweep_id: &str) -> Vec<serde_json::Value> {
        let out = self.cnnctl(&["--output", "json", "watch", sweep_id]);
        assert!(
            out.status.success(),
            "watch {sweep_id} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| l.trim_start().starts_with('{'))
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("watch printed {l}: {e}")))
            .collect()
    }
}

/// Runs a future on a fresh current-thread runtime.
pub fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

/// Polls `f` until it gives Some, at most `limit`; panics naming `what` (and `log`) otherwise.
pub fn wait_for<T>(
    limit: Duration,
    what: &str,
    log: impl Fn() -> String,
    mut f: impl FnMut() -> Option<T>,
) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}; log:\n{}",
            log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Runs a read query on the SQLite file through a read-only connection (never writes);
/// every row as a JSON object (INTEGER -> number, REAL -> number, TEXT -> string, NULL -> null).
pub fn db_rows(db: &Path, sql: &str) -> Vec<serde_json::Map<String, serde_json::Value>> {
    use sqlx::{Column, ConnectOptions, Row, ValueRef};
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        sqlx::any::install_default_drivers();
        let opts = match db.to_str() {
            Some(url) if url.starts_with("postgres") => url.parse().unwrap(),
            _ => sqlx::sqlite::SqliteConnectOptions::new()
                .filename(db)
                .read_only(true)
                .create_if_missing(false)
                .to_url_lossy()
                .as_str()
                .parse::<sqlx::any::AnyConnectOptions>()
                .unwrap(),
        };
        let pool = sqlx::any::AnyPoolOptions::new()
            .max_connections(1)
            .connect_with(opts)
            .await
            .unwrap_or_else(|e| panic!("opening {} read-only: {e}", db.display()));
        let rows = sqlx::query(sql)
            .fetch_all(&pool)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
        let out = rows
            .iter()
            .map(|r| {
                let mut m = serde_json::Map::new();
                for (i, c) in r.columns().iter().enumerate() {
                    let raw = r.try_get_raw(i).unwrap();
                    let v = if raw.is_null() {
                        serde_json::Value::Null
                    } else if let Ok(v) = r.try_get::<i64, _>(i) {
                        serde_json::json!(v)
                    } else if let Ok(v) = r.try_get::<f64, _>(i) {
                        serde_json::json!(v)
                    } else if let Ok(v) = r.try_get::<String, _>(i) {
                        serde_json::json!(v)
                    } else {
                        serde_json::Value::Null
                    };
                    m.insert(c.name().to_string(), v);
                }
                m
            })
            .collect();
        pool.close().await;
        out
    })
}

/// Recorded epoch numbers per trial, ascending, straight from the `epochs` table.
pub fn db_epochs(db: &Path) -> std::collections::BTreeMap<String, Vec<u32>> {
    let mut out: std::collections::BTreeMap<String, Vec<u32>> = Default::default();
    for r in db_rows(
        db,
        "SELECT trial_id, epoch FROM epochs ORDER BY trial_id, epoch",
    ) {
        out.entry(r["trial_id"].as_str().unwrap().to_string())
            .or_default()
            .push(r["epoch"].as_i64().unwrap() as u32);
    }
    out
}

/// A trial's recorded epochs, in order.
pub fn epochs_of(db: &Path, trial: &str) -> Vec<u32> {
    db_epochs(db).remove(trial).unwrap_or_default()
}

/// (attempt, epochs reported in it) for a trial, from the stored events.
pub fn attempts(db: &Path, trial: &str) -> Vec<(i64, Vec<u32>)> {
    let mut out: Vec<(i64, Vec<u32>)> = Vec::new();
    for r in db_rows(db, "SELECT payload FROM events ORDER BY id") {
        let e: serde_json::Value = serde_json::from_str(r["payload"].as_str().unwrap()).unwrap();
        if e["trial_id"] != trial {
            continue;
        }
        match e["kind"].as_str() {
            Some("trial_started") => out.push((e["attempt"].as_i64().unwrap_or(0), Vec::new())),
            Some("epoch_finished") => {
                if let Some(last) = out.last_mut() {
                    last.1.push(e["metrics"]["epoch"].as_u64().unwrap() as u32);
                }
            }
            _ => {}
        }
    }
    out
}

/// A 4-epoch trial ran in exactly two attempts that recorded epochs 1..=4 between them,
/// the second going on from where the first stopped: no epoch lost or doubled.
pub fn assert_resumed_exactly(db: &Path, trial: &str) {
    assert_eq!(
        epochs_of(db, trial),
        vec![1, 2, 3, 4],
        "an epoch lost or doubled"
    );
    let runs = attempts(db, trial);
    assert_eq!(runs.len(), 2, "{runs:?}");
    let first = runs[0].1.len() as u32;
    assert!(first >= 1, "{runs:?}");
    assert_eq!(runs[1].1, ((first + 1)..=4).collect::<Vec<_>>(), "{runs:?}");
}

/// The stored events (payload parsed, plus `id` and `sweep_id`), oldest first; all sweeps
/// when `sweep_id` is None.
pub fn db_events(db: &Path, sweep_id: Option<&str>) -> Vec<serde_json::Value> {
    db_rows(db, "SELECT id, sweep_id, payload FROM events ORDER BY id")
        .into_iter()
        .filter(|r| sweep_id.is_none_or(|s| r["sweep_id"] == s))
        .map(|r| {
            let mut v: serde_json::Value =
                serde_json::from_str(r["payload"].as_str().unwrap()).unwrap();
            v["id"] = r["id"].clone();
            v["sweep_id"] = r["sweep_id"].clone();
            v
        })
        .collect()
}

/// True while `pid` is a live process (a zombie, dead but not reaped, counts as gone).
pub fn pid_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // Field 3, after the parenthesised command name, is the state.
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|s| s != "Z" && s != "X"),
        Err(_) => false,
    }
}

/// A file system mounted for a test, unmounted (lazily) and removed when dropped.
pub struct Mount {
    pub dir: PathBuf,
    /// The block device (loop mounts), e.g. /dev/loop3.
    pub device: Option<String>,
    _image_dir: Option<tempfile::TempDir>,
}

fn run_quiet(program: &str, args: &[&str]) -> Result<(), String> {
    match Command::new(program).args(args).output() {
        Ok(o) if o.status.success() => Ok(()),
        Ok(o) => Err(format!(
            "{program} {}: {} {}",
            args.join(" "),
            o.status,
            String::from_utf8_lossy(&o.stderr).trim()
        )),
        Err(e) => Err(format!("{program}: {e}")),
    }
}

impl Mount {
    /// A tmpfs of `size` (e.g. "16m") on a fresh folder; Err says why it could not be mounted.
    pub fn tmpfs(size: &str) -> Result<Mount, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?.keep();
        let opts = format!("size={size}");
        if let Err(e) = run_quiet(
            "mount",
            &["-t", "tmpfs", "-o", &opts, "tmpfs", dir.to_str().unwrap()],
        ) {
            let _ = std::fs::remove_dir(&dir);
            return Err(e);
        }
        Ok(Mount {
            dir,
            device: None,
            _image_dir: None,
        })
    }

    /// A fresh ext4 file system of `mib` MiB in a loop-mounted image, mounted with
    /// `errors=remount-ro` (so an error turns it read-only under whoever has files open).
    pub fn ext4_loop(mib: u32) -> Result<Mount, String> {
        let image_dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let image = image_dir.path().join("fs.img");
        std::fs::File::create(&image)
            .and_then(|f| f.set_len(mib as u64 * 1024 * 1024))
            .map_err(|e| e.to_string())?;
        run_quiet("mkfs.ext4", &["-q", "-F", image.to_str().unwrap()])?;
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?.keep();
        if let Err(e) = run_quiet(
            "mount",
            &[
                "-o",
                "loop,errors=remount-ro",
                image.to_str().unwrap(),
                dir.to_str().unwrap(),
            ],
        ) {
            let _ = std::fs::remove_dir(&dir);
            return Err(e);
        }
        let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
        let device = mounts
            .lines()
            .map(|l| l.split_whitespace().collect::<Vec<_>>())
            .find(|f| f.len() > 1 && Path::new(f[1]) == dir)
            .map(|f| f[0].to_string());
        Ok(Mount {
            dir,
            device,
            _image_dir: Some(image_dir),
        })
    }

    /// `mount -o remount,ro` (refused with EBUSY while a process has a file open for writing).
    pub fn remount_ro(&self) -> Result<(), String> {
        run_quiet("mount", &["-o", "remount,ro", self.dir.to_str().unwrap()])
    }

    pub fn remount_rw(&self) -> Result<(), String> {
        run_quiet("mount", &["-o", "remount,rw", self.dir.to_str().unwrap()])
    }

    /// Makes an ext4 loop mount hit a file-system error: with `errors=remount-ro` the kernel
    /// turns it read-only at once, open files included (what a failing disk does).
    pub fn trigger_ext4_error(&self) -> Result<(), String> {
        let dev = self.device.as_deref().ok_or("not a loop mount")?;
        let name = Path::new(dev)
            .file_name()
            .unwrap()
            .to_string_lossy()
            .to_string();
        let knob = format!("/sys/fs/ext4/{name}/trigger_fs_error");
        std::fs::write(&knob, "cnnd fault-injection test\n").map_err(|e| format!("{knob}: {e}"))
    }

    /// Fills the file system with a file of zeros until it reports ENOSPC; returns its path.
    pub fn fill(&self) -> PathBuf {
        use std::io::Write;
        let path = self.dir.join("filler");
        let mut f = std::fs::File::create(&path).unwrap();
        for chunk in [1 << 20, 4096, 512, 1] {
            let buf = vec![0u8; chunk];
            while f.write_all(&buf).is_ok() {}
        }
        let _ = f.sync_all();
        path
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = run_quiet("umount", &["-l", self.dir.to_str().unwrap()]);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The epoch a trial's checkpoint holds (`meta.epoch`, an i64 scalar in the safetensors file
/// the trainer writes), read without libtorch.
pub fn checkpoint_epoch(path: &Path) -> u32 {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let tensors = safetensors::SafeTensors::deserialize(&bytes)
        .unwrap_or_else(|e| panic!("{}: not a safetensors file: {e}", path.display()));
    let meta = tensors
        .tensor("meta.epoch")
        .unwrap_or_else(|e| panic!("{}: no meta.epoch: {e}", path.display()));
    let raw: [u8; 8] = meta.data().try_into().expect("meta.epoch is one i64");
    i64::from_le_bytes(raw) as u32
}

/// The blob of a trial's latest checkpoint in the daemon's blob store
/// (`STATE/blobs/<2 hex>/<64 hex>`), found through the digest its last epoch row records;
/// None when no epoch with a checkpoint is recorded.
pub fn latest_checkpoint(state: &Path, db: &Path, trial_id: &str) -> Option<PathBuf> {
    let rows = db_rows(
        db,
        &format!(
            "SELECT checkpoint_digest FROM epochs WHERE trial_id = '{trial_id}' \
             AND checkpoint_digest IS NOT NULL ORDER BY epoch DESC LIMIT 1"
        ),
    );
    let hex = rows.first()?["checkpoint_digest"].as_str()?.to_string();
    Some(state.join("blobs").join(&hex[..2]).join(hex))
}

/// A 28x28 gray PNG, white where x is in `columns` and y in `rows`, black elsewhere, in
/// base64 (a Predict image for grpcurl).
pub fn bright_rectangle_png_base64(
    columns: std::ops::Range<u32>,
    rows: std::ops::Range<u32>,
) -> String {
    use base64::Engine;
    let img = image::GrayImage::from_fn(28, 28, |x, y| {
        image::Luma([if columns.contains(&x) && rows.contains(&y) {
            255
        } else {
            0
        }])
    });
    let mut png = Vec::new();
    img.write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
        .unwrap();
    base64::engine::general_purpose::STANDARD.encode(png)
}

/// Waits until `child` exits by itself; None when it still runs after `limit`.
pub fn wait_child_exit(
    child: &mut std::process::Child,
    limit: Duration,
) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return Some(s);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// GET /metrics over plain HTTP.
pub fn scrape_metrics(addr: &str) -> String {
    use std::io::{Read, Write};
    let mut conn = std::net::TcpStream::connect(addr).unwrap();
    write!(conn, "GET /metrics HTTP/1.0\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut response = String::new();
    conn.read_to_string(&mut response).unwrap();
    assert!(
        response.starts_with("HTTP/1.0 200") || response.starts_with("HTTP/1.1 200"),
        "{response}"
    );
    response
}

/// A CA and a server certificate for 127.0.0.1 and localhost signed by it, as PEM files.
pub fn make_certificates(dir: &Path) {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "cnnd test CA");
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
        .unwrap()
        .signed_by(&key, &ca_cert, &ca_key)
        .unwrap();
    std::fs::write(dir.join("ca.pem"), ca_cert.pem()).unwrap();
    std::fs::write(dir.join("server.pem"), leaf.pem()).unwrap();
    std::fs::write(dir.join("server.key"), key.serialize_pem()).unwrap();
    // A second, unrelated CA: a client trusting only it must refuse the server.
    let other_key = KeyPair::generate().unwrap();
    let mut other = CertificateParams::new(Vec::<String>::new()).unwrap();
    other.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    std::fs::write(
        dir.join("other-ca.pem"),
        other.self_signed(&other_key).unwrap().pem(),
    )
    .unwrap();
}
