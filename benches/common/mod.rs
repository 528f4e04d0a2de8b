//! Helpers every benchmark shares (`mod common;` in each): where the repository is, the
//! machine's CPU model and load, CPU seconds used, a free port, the daemon binary and the
//! daemon process a benchmark runs.
#![allow(dead_code)] // each benchmark uses its own subset

use std::path::PathBuf;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use anyhow::{bail, Result};

/// The repository (the workspace root, which holds Cargo.lock, whichever crate's bench this
/// is), else (a bench binary copied to another machine, as `scripts/gpu-check.sh` does) the
/// current directory.
pub fn manifest_dir() -> PathBuf {
    let built = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    match built.ancestors().find(|d| d.join("Cargo.lock").exists()) {
        Some(root) => root.to_path_buf(),
        None => std::env::current_dir().unwrap_or(built),
    }
}

/// The folder holding mnist/: `$CNND_DATA_DIR`, else `../shared/data` beside the repository.
pub fn default_data_dir() -> PathBuf {
    match std::env::var_os("CNND_DATA_DIR") {
        Some(d) if !d.is_empty() => PathBuf::from(d),
        _ => manifest_dir().join("../shared/data"),
    }
}

/// The 1, 5 and 15-minute load averages, from /proc/loadavg (NaN when unreadable).
pub fn loadavg() -> [f64; 3] {
    let s = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let mut it = s
        .split_whitespace()
        .map(|v| v.parse::<f64>().unwrap_or(f64::NAN));
    [(); 3].map(|_| it.next().unwrap_or(f64::NAN))
}

/// The 1-minute load average.
pub fn load1() -> f64 {
    loadavg()[0]
}

pub fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into())
}

/// CPU seconds (user + system) of `who` (`libc::RUSAGE_SELF` or `RUSAGE_CHILDREN`).
pub fn rusage_seconds(who: libc::c_int) -> f64 {
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(who, &mut ru) } != 0 {
        return f64::NAN;
    }
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 * 1e-6;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// CPU seconds of the children waited for so far.
pub fn children_cpu_seconds() -> f64 {
    rusage_seconds(libc::RUSAGE_CHILDREN)
}

pub fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

/// The daemon binary: the one cargo built for this bench (same profile), else
/// target/release/cnnd, built with `cargo build --release --bins` (all three binaries: the
/// daemon starts the cnnd-worker beside it) when missing.
pub fn daemon_binary() -> Result<PathBuf> {
    if let Some(p) = option_env!("CARGO_BIN_EXE_cnnd")
        .map(PathBuf::from)
        .filter(|p| p.exists())
    {
        return Ok(p);
    }
    let p = manifest_dir().join("target/release/cnnd");
    if !p.exists() {
        eprintln!("{} missing: cargo build --release --bins", p.display());
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let st = Command::new(cargo)
            .args(["build", "--release", "--bins"])
            .current_dir(manifest_dir())
            .status()?;
        if !st.success() || !p.exists() {
            bail!("cargo build --release --bins failed ({st})");
        }
    }
    Ok(p)
}

/// A daemon a benchmark started; stopped when dropped (SIGTERM, then SIGKILL after
/// `stop_grace`). Its workers die with it (PR_SET_PDEATHSIG).
pub struct Daemon {
    pub child: Child,
    /// Where its stderr goes.
    pub log: PathBuf,
    /// How long a SIGTERM gets before SIGKILL.
    pub stop_grace: Duration,
}

impl Daemon {
    /// The last 40 lines of its log.
    pub fn log_tail(&self) -> String {
        let s = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = s.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    /// An error with the log's tail when the daemon has exited.
    pub fn check_alive(&mut self) -> Result<()> {
        if let Ok(Some(st)) = self.child.try_wait() {
            bail!("the daemon exited ({st}):\n{}", self.log_tail());
        }
        Ok(())
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // SAFETY: kill(2) on the child this benchmark spawned and has not reaped.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        let deadline = Instant::now() + self.stop_grace;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The median of `v` (the mean of the middle two for an even count); NaN when empty.
pub fn median(v: &[f64]) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    if s.len() % 2 == 1 {
        s[s.len() / 2]
    } else {
        (s[s.len() / 2 - 1] + s[s.len() / 2]) / 2.0
    }
}
