//! Test harness: starts the real `cnnd` binary on a free TCP port with a temporary state
//! directory, and runs the real clients (`cnnctl`, `grpcurl`) against it. Nothing is mocked.
#![allow(dead_code)]

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
    assert!(shared.join("mnist").exists(), "set CNND_DATA_DIR to a folder holding mnist/ (scripts/test.sh does)");
    shared
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

pub struct Daemon {
    pub child: Child,
    pub port: u16,
    pub state: tempfile::TempDir,
    pub addr: String,
}

impl Daemon {
    /// Starts cnnd with `workers` one-thread CPU workers and waits until it answers.
    pub fn start(workers: u32, extra: &[&str]) -> Daemon {
        let state = tempfile::tempdir().unwrap();
        Self::start_in(state, workers, extra)
    }

    pub fn start_in(state: tempfile::TempDir, workers: u32, extra: &[&str]) -> Daemon {
        let port = free_port();
        let log = std::fs::File::create(state.path().join("cnnd.log")).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_cnnd"))
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .arg("--state-dir")
            .arg(state.path())
            .arg("--data-dir")
            .arg(data_dir())
            .args(["--cpu-workers", &workers.to_string(), "--threads-per-worker", "1"])
            .args(extra)
            .env("CUDA_VISIBLE_DEVICES", "")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("starting cnnd");
        let d = Daemon {
            child,
            port,
            addr: format!("127.0.0.1:{port}"),
            state,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if d.cnnctl(&["status"]).status.success() {
                break;
            }
            assert!(Instant::now() < deadline, "cnnd did not come up; log:\n{}", d.log());
            std::thread::sleep(Duration::from_millis(200));
        }
        d
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.state.path().join("cnnd.log")).unwrap_or_default()
    }

    pub fn db_path(&self) -> PathBuf {
        self.state.path().join("cnnd.sqlite")
    }

    pub fn cnnctl(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_cnnctl"))
            .args(args)
            .env("CNND_ADDR", format!("http://{}", self.addr))
            .output()
            .expect("running cnnctl")
    }

    /// cnnctl with `--output json`, parsed; panics with stderr when it fails.
    pub fn cnnctl_json(&self, args: &[&str]) -> serde_json::Value {
        let mut all = vec!["--output", "json"];
        all.extend_from_slice(args);
        let out = self.cnnctl(&all);
        assert!(out.status.success(), "cnnctl {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("cnnctl {args:?} printed no JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)))
    }

    /// grpcurl through server reflection only (no proto files), body on stdin.
    pub fn grpcurl(&self, method: &str, body: &str) -> Output {
        use std::io::Write;
        let mut child = Command::new(grpcurl_bin())
            .args(["-plaintext", "-d", "@", &self.addr, method])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("running grpcurl (scripts/setup.sh installs it)");
        child.stdin.take().unwrap().write_all(body.as_bytes()).unwrap();
        child.wait_with_output().unwrap()
    }

    pub fn grpcurl_json(&self, method: &str, body: &str) -> serde_json::Value {
        let out = self.grpcurl(method, body);
        assert!(out.status.success(), "grpcurl {method} failed: {}", String::from_utf8_lossy(&out.stderr));
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
            assert!(Instant::now() < deadline, "sweep {sweep_id} still {status}; log:\n{}", self.log());
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

pub fn grpcurl_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("GRPCURL") {
        return PathBuf::from(p);
    }
    PathBuf::from("grpcurl")
}

/// Row counts (sweeps, trials, epochs, events) read straight from the SQLite file.
pub fn db_counts(db: &Path) -> (i64, i64, i64, i64) {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let store = cnnd::store::Store::open_read_only(db).await.unwrap();
        store.table_counts().await.unwrap()
    })
}
