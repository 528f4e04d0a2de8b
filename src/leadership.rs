//! Which daemon serves. On SQLite one daemon runs per state folder: [`StateDirLock`] (an
//! exclusive `flock` on `STATE_DIR/cnnd.lock`) refuses a second one with a clear message.
//! On PostgreSQL several daemons may run on one database (and one shared state folder): the
//! one that holds the advisory lock leads and serves, the others stand by ([`Campaign`]).
//!
//! A lock alone is not enough: the database notices a dead leader's host only when TCP gives
//! up, and a paused leader wakes up believing it still leads. So:
//! - the lock connection asks the server for short TCP keepalives and a user timeout, so the
//!   server drops a vanished leader's session (and its lock) within seconds;
//! - the leader renews a heartbeat row every [`HEARTBEAT`]; a standby that sees it silent for
//!   the lease (`--leader-lease-secs`) ends the silent leader's lock session itself
//!   (`pg_terminate_backend`), which covers a paused leader and a half-open connection;
//! - taking the lock bumps the leadership term, and every write transaction of the store
//!   checks the term it writes under (`Store::fence`): a deposed leader writes nothing more;
//! - a leader that cannot renew its heartbeat within half the lease, or finds its term
//!   gone, stops at once ([`Leader::lost`]; the daemon exits and its supervisor restarts it,
//!   as a standby).
//!
//! [`LeaderGate`] answers UNAVAILABLE (naming the leader) to every call but health and
//! reflection while this daemon does not lead; health itself says NOT_SERVING.
//!
//! Owns: the state-folder lock, the advisory-lock connection, the term and the heartbeat.
//! Must not touch: the store's queries (it only sets the store's fence), workers, launchers.

use std::fs::File;
use std::path::Path;
use std::str::FromStr;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use sqlx::postgres::{PgConnectOptions, PgConnection};
use sqlx::{ConnectOptions, Connection};
use tonic::Status;

use crate::auth::{CallCheck, Checked};

/// The advisory lock the leader holds (one per database: "cnndlead" in ASCII).
pub const ADVISORY_LOCK_KEY: i64 = 0x636e_6e64_6c65_6164;

/// How often the leader renews its heartbeat and a standby tries the lock.
pub const HEARTBEAT: Duration = Duration::from_millis(500);

/// The file a daemon locks in its state folder.
pub const LOCK_FILE: &str = "cnnd.lock";

// ---------------------------------------------------------------------------------------
// SQLite: one daemon per state folder.

/// An exclusive lock on the state folder, held while the daemon runs (released by the
/// kernel when the process ends, however it ends).
pub struct StateDirLock {
    _file: File,
}

impl StateDirLock {
    /// Locks `state_dir`, or explains which daemon holds it and what to do instead.
    pub fn acquire(state_dir: &Path) -> Result<StateDirLock> {
        use std::io::{Read, Seek, Write};
        use std::os::fd::AsRawFd;
        let path = state_dir.join(LOCK_FILE);
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        // SAFETY: flock on a descriptor this function owns.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            bail!(
                "another cnnd ({}) already serves from the state directory {}: with SQLite only one daemon may run on a state folder; stop it first, or run two daemons on PostgreSQL (--db postgres://...), where the second one stands by (docs/OPERATIONS.md, \"Running two daemons\")",
                holder.trim().trim_end_matches('.').replace('\n', " "),
                state_dir.display()
            );
        }
        file.set_len(0)?;
        file.rewind()?;
        writeln!(file, "pid {}", std::process::id())?;
        Ok(StateDirLock { _file: file })
    }
}

// ---------------------------------------------------------------------------------------
// PostgreSQL: one leader, any number of standbys.

/// Who leads now, as the database says.
#[derive(Debug, Clone, PartialEq)]
pub struct LeaderInfo {
    pub term: i64,
    pub holder: String,
    /// Seconds since the leader last renewed its heartbeat (database clock).
    pub silent_secs: f64,
}

/// A daemon's connection for leadership: it holds the advisory lock while this daemon
/// leads, and nothing else runs on it.
pub struct Campaign {
    conn: PgConnection,
    holder: String,
    lease: Duration,
}

impl Campaign {
    /// Opens the lock connection to `db_url`. `holder` names this daemon to the others (host,
    /// pid and API address); `lease` is how long a leader may stay silent before a standby
    /// ends its lock session.
    pub async fn connect(db_url: &str, holder: String, lease: Duration) -> Result<Campaign> {
        let lease_ms = lease.as_millis().max(2000);
        // The server's side of this connection: probe an idle client after 2 s, every
        // second, give up after 3 probes; and drop it when sent data stays unacknowledged for
        // the lease. A vanished leader's lock is then released within seconds.
        let options = PgConnectOptions::from_str(db_url)
            .context("the --db URL")?
            .application_name("cnnd-leadership")
            .options([
                ("tcp_keepalives_idle", "2".to_string()),
                ("tcp_keepalives_interval", "1".to_string()),
                ("tcp_keepalives_count", "3".to_string()),
                ("tcp_user_timeout", lease_ms.to_string()),
            ])
            .disable_statement_logging();
        let conn = tokio::time::timeout(Duration::from_secs(10), options.connect())
            .await
            .context("opening the leadership connection: timed out")?
            .context("opening the leadership connection")?;
        Ok(Campaign {
            conn,
            holder,
            lease,
        })
    }

    /// The current leader, as recorded in the database (term 0: none ever led).
    pub async fn leader(&mut self) -> Result<LeaderInfo> {
        let (term, holder, silent_secs): (i64, String, Option<f64>) = sqlx::query_as(
            "SELECT l.term, l.holder, EXTRACT(EPOCH FROM clock_timestamp() - h.renewed_at)::float8 \
             FROM leadership l LEFT JOIN leader_heartbeat h ON h.id = 1 WHERE l.id = 1",
        )
        .fetch_one(&mut self.conn)
        .await?;
        Ok(LeaderInfo {
            term,
            holder,
            silent_secs: silent_secs.unwrap_or(f64::INFINITY),
        })
    }

    /// Waits until this daemon holds the advisory lock, then takes a new term and returns
    /// the [`Leader`]. Meanwhile, every [`HEARTBEAT`], it tries the lock; when the leader has
    /// been silent for longer than the lease it ends the leader's lock session (a paused or
    /// cut-off leader, whose session the server has not dropped yet). `standing_by` is told
    /// the leader each time it changes (for health and logs).
    pub async fn lead(mut self, mut standing_by: impl FnMut(&LeaderInfo)) -> Result<Leader> {
        let mut last_shown: Option<(i64, String)> = None;
        loop {
            let got: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
                .bind(ADVISORY_LOCK_KEY)
                .fetch_one(&mut self.conn)
                .await
                .context("trying the leadership lock")?;
            if got {
                break;
            }
            let leader = self.leader().await?;
            if last_shown.as_ref() != Some(&(leader.term, leader.holder.clone())) {
                standing_by(&leader);
                last_shown = Some((leader.term, leader.holder.clone()));
            }
            if leader.silent_secs > self.lease.as_secs_f64() {
                let ended: Option<bool> = sqlx::query_scalar(
                    "SELECT pg_terminate_backend(h.lock_pid) FROM leader_heartbeat h \
                     JOIN pg_locks l ON l.pid = h.lock_pid AND l.locktype = 'advisory' AND l.granted \
                     WHERE h.id = 1",
                )
                .fetch_optional(&mut self.conn)
                .await
                .context("ending the silent leader's lock session")?;
                if ended == Some(true) {
                    tracing::warn!(
                        leader = leader.holder,
                        term = leader.term,
                        silent_secs = leader.silent_secs,
                        "the leader has been silent for longer than the lease: its lock session was ended"
                    );
                }
            }
            tokio::time::sleep(HEARTBEAT).await;
        }
        let mut tx = self.conn.begin().await?;
        let term: i64 = sqlx::query_scalar(
            "UPDATE leadership SET term = term + 1, holder = $1, since = $2 WHERE id = 1 RETURNING term",
        )
        .bind(&self.holder)
        .bind(crate::store::now())
        .fetch_one(&mut *tx)
        .await
        .context("taking a new leadership term")?;
        sqlx::query(
            "INSERT INTO leader_heartbeat (id, term, lock_pid, renewed_at) \
             VALUES (1, $1, pg_backend_pid(), clock_timestamp()) \
             ON CONFLICT (id) DO UPDATE SET term = EXCLUDED.term, lock_pid = EXCLUDED.lock_pid, renewed_at = EXCLUDED.renewed_at",
        )
        .bind(term)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Leader {
            conn: self.conn,
            term,
            lease: self.lease,
        })
    }
}

/// This daemon while it leads: the lock connection and the term it took.
pub struct Leader {
    conn: PgConnection,
    pub term: i64,
    lease: Duration,
}

impl Leader {
    /// Renews the heartbeat every [`HEARTBEAT`] and returns (why) as soon as this daemon
    /// must stop leading: its term was taken, the lock connection failed, or no renewal
    /// succeeded for half the lease (a standby may end the session after the whole lease).
    pub async fn lost(mut self) -> String {
        let give_up = self.lease / 2;
        let mut renewed = Instant::now();
        loop {
            tokio::time::sleep(HEARTBEAT).await;
            let left = give_up.saturating_sub(renewed.elapsed());
            let renewal = sqlx::query_scalar::<_, i64>(
                "UPDATE leader_heartbeat SET renewed_at = clock_timestamp() WHERE id = 1 AND term = $1 RETURNING term",
            )
            .bind(self.term)
            .fetch_optional(&mut self.conn);
            match tokio::time::timeout(left, renewal).await {
                Ok(Ok(Some(_))) => renewed = Instant::now(),
                Ok(Ok(None)) => {
                    return format!(
                        "another daemon took over (this daemon's term was {})",
                        self.term
                    )
                }
                Ok(Err(e)) => return format!("the leadership connection failed: {e}"),
                Err(_) => {
                    return format!(
                        "the heartbeat could not be renewed for {:.1} s (half the lease)",
                        give_up.as_secs_f64()
                    )
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// The gate in front of the API and the worker protocol.

#[derive(Clone, Default)]
pub struct LeaderGate {
    closed: Arc<RwLock<Option<String>>>,
}

impl LeaderGate {
    /// A gate that refuses every call with `reason` until [`LeaderGate::open`].
    pub fn closed(reason: impl Into<String>) -> Self {
        LeaderGate {
            closed: Arc::new(RwLock::new(Some(reason.into()))),
        }
    }

    pub fn open(&self) {
        *self.closed.write().unwrap_or_else(|e| e.into_inner()) = None;
    }

    pub fn close(&self, reason: impl Into<String>) {
        *self.closed.write().unwrap_or_else(|e| e.into_inner()) = Some(reason.into());
    }

    /// Why a call to `path` is refused now: health and reflection are always answered (a
    /// standby says NOT_SERVING there), the rest only while this daemon leads.
    fn refusal(&self, path: &str) -> Option<String> {
        if crate::auth::OPEN_PATHS.iter().any(|p| path.starts_with(p)) {
            return None;
        }
        self.closed
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

impl CallCheck for LeaderGate {
    fn refusal(&self, path: &str, _: &http::HeaderMap) -> Option<Status> {
        LeaderGate::refusal(self, path).map(Status::unavailable)
    }
}

impl<S> tower::Layer<S> for LeaderGate {
    type Service = Checked<S, LeaderGate>;
    fn layer(&self, inner: S) -> Self::Service {
        Checked::new(inner, self.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_on_a_state_folder_is_refused_naming_the_holder() {
        let dir = tempfile::tempdir().unwrap();
        let first = StateDirLock::acquire(dir.path()).unwrap();
        // flock locks belong to the open file description: a second open in the same
        // process conflicts just as another process would.
        let e = StateDirLock::acquire(dir.path()).err().unwrap().to_string();
        assert!(e.contains(&format!("pid {}", std::process::id())), "{e}");
        assert!(e.contains("PostgreSQL"), "{e}");
        drop(first);
        StateDirLock::acquire(dir.path()).unwrap();
    }

    #[test]
    fn the_gate_lets_health_and_reflection_through_and_refuses_the_rest_until_opened() {
        let gate = LeaderGate::closed("standby: the leader is a:1");
        assert_eq!(gate.refusal("/grpc.health.v1.Health/Check"), None);
        assert_eq!(
            gate.refusal("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"),
            None
        );
        assert_eq!(
            gate.refusal("/cnn.v1.Orchestrator/GetStatus").as_deref(),
            Some("standby: the leader is a:1")
        );
        gate.open();
        assert_eq!(gate.refusal("/cnn.v1.WorkerHub/Register"), None);
        gate.close("stepped down");
        assert_eq!(
            gate.refusal("/cnn.v1.WorkerHub/Register").as_deref(),
            Some("stepped down")
        );
    }
}
