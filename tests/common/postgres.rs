//! A real PostgreSQL server for the tests of the PostgreSQL store: one throw-away cluster
//! per test binary (scripts/postgres.sh: initdb in a temporary folder, a free port on
//! 127.0.0.1), started on first use and stopped when the binary exits; every test gets a
//! database of its own on it ([`fresh_database`]). Needs Debian's postgresql-15 (or
//! CNND_PG_BIN): scripts/setup.sh installs it where it can.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;

struct Server {
    dir: PathBuf,
    /// postgres://cnnd@127.0.0.1:PORT/ (no database)
    base: String,
}

static SERVER: OnceLock<Server> = OnceLock::new();
static DATABASES: AtomicU32 = AtomicU32::new(0);

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/postgres.sh")
}

extern "C" fn stop_server() {
    if let Some(server) = SERVER.get() {
        let _ = Command::new(script()).arg("stop").arg(&server.dir).status();
        let _ = std::fs::remove_dir_all(&server.dir);
    }
}

fn server() -> &'static Server {
    SERVER.get_or_init(|| {
        let dir = tempfile::Builder::new()
            .prefix("cnnd-pg-")
            .tempdir()
            .unwrap()
            .keep();
        let out = Command::new(script())
            .arg("start")
            .arg(&dir)
            .output()
            .expect("running scripts/postgres.sh");
        assert!(
            out.status.success(),
            "scripts/postgres.sh start failed (the PostgreSQL tests need Debian's postgresql-15 or CNND_PG_BIN):\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let url = String::from_utf8(out.stdout).unwrap().trim().to_string();
        let base = url.trim_end_matches("cnnd").to_string();
        // SAFETY: registering a plain extern "C" function with the C runtime.
        unsafe { libc::atexit(stop_server) };
        Server { dir, base }
    })
}

/// The URL of a new, empty database on the test server.
pub fn fresh_database() -> String {
    let server = server();
    let name = format!(
        "t{}_{}",
        std::process::id(),
        DATABASES.fetch_add(1, Ordering::SeqCst)
    );
    let out = Command::new("psql")
        .arg(format!("{}cnnd", server.base))
        .args(["-q", "-v", "ON_ERROR_STOP=1", "-c"])
        .arg(format!("CREATE DATABASE {name}"))
        .output()
        .expect("running psql");
    assert!(
        out.status.success(),
        "CREATE DATABASE {name}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    format!("{}{name}", server.base)
}

/// Runs `sql` on the database at `url` with psql and answers its rows, tab-separated.
pub fn psql(url: &str, sql: &str) -> Vec<String> {
    let out = Command::new("psql")
        .arg(url)
        .args([
            "-q",
            "-A",
            "-t",
            "-F",
            "\t",
            "-v",
            "ON_ERROR_STOP=1",
            "-c",
            sql,
        ])
        .output()
        .expect("running psql");
    assert!(
        out.status.success(),
        "psql {sql}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(String::from)
        .collect()
}
