//! The store: every piece of sweep state, in one SQLite file (WAL) or one PostgreSQL
//! database ([`Backend`]; sqlx's Any driver, every query written once, embedded migrations
//! from `migrations/sqlite` and `migrations/postgres`). The daemon is its only writer:
//! writes go through a single-connection pool, so they never contend; reads use their own
//! pool and never block the writer. Every state change of a sweep or trial is one transaction, and every change a
//! watcher cares about appends an [`Event`] in that same transaction. Epoch reports are the
//! exception that proves it: [`ingest`] commits reports arriving together in one transaction.
//!
//! Owns: the schema, queries, and the state transitions of sweeps and trials.
//! Must not touch: processes, gRPC, libtorch, charts.

use std::future::Future;
use std::path::Path;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::{anyhow, Context, Result};
use serde::{Deserialize, Serialize};
use sqlx::any::AnyRow;
use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::sqlite::SqliteConnectOptions;
use sqlx::{AnyConnection, AnyPool, ConnectOptions, Row};

use cnnd_core::content::FileRef;
use cnnd_core::epoch::EpochRecord;
use cnnd_core::status::{SweepStatus, TrialStatus};
use cnnd_core::sweep::{SweepSpec, TrialParams};

mod copy;
mod ingest;

pub use copy::TableSum;

/// Trial statuses that keep a sweep open: waiting, training, or parked at an ASHA rung
/// (resumable; see [`crate::pruning`]).
const OPEN_STATUSES: &str = "('queued', 'running', 'parked')";

/// Current time as RFC 3339 UTC, to the millisecond.
pub fn now() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}

/// What a watcher sees. Stored as JSON in `events.payload`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Event {
    TrialStarted {
        trial_id: String,
        worker: String,
        attempt: u32,
    },
    EpochFinished {
        trial_id: String,
        epochs_planned: u32,
        metrics: EpochRecord,
    },
    TrialFinished {
        trial_id: String,
        status: TrialStatus,
        test_accuracy: Option<f64>,
        test_loss: Option<f64>,
        error: Option<String>,
    },
    SweepFinished {
        status: SweepStatus,
        best_trial_id: Option<String>,
        best_test_accuracy: Option<f64>,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub struct StoredEvent {
    pub id: i64,
    pub sweep_id: String,
    pub at: String,
    pub event: Event,
}

#[derive(Debug, Clone, PartialEq)]
pub struct SweepRow {
    pub id: String,
    pub name: String,
    pub dataset: String,
    pub strategy: String,
    pub varied: Vec<String>,
    pub spec: serde_json::Value,
    pub objective: String,
    pub priority: i32,
    pub max_parallel: u32,
    pub status: SweepStatus,
    pub paused: bool,
    pub created_at: String,
    pub finished_at: Option<String>,
    pub early_stopping: cnnd_core::pruning::EarlyStopping,
    pub tpe: Option<cnnd_core::sweep::TpeSearch>,
}

impl SweepRow {
    /// The status clients see: `paused` while paused and not ended.
    pub fn visible_status(&self) -> String {
        self.status.visible(self.paused).to_string()
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct TrialRow {
    pub id: String,
    pub sweep_id: String,
    pub index: u32,
    pub params: TrialParams,
    pub status: TrialStatus,
    pub device: String,
    pub epochs_planned: u32,
    pub worker: Option<String>,
    pub generation: u64,
    pub attempts: u32,
    pub error: Option<String>,
    pub parameter_count: Option<u64>,
    pub train_examples: Option<u32>,
    pub val_examples: Option<u32>,
    pub test_examples: Option<u32>,
    pub test_loss: Option<f64>,
    pub test_accuracy: Option<f64>,
    pub best_epoch: Option<u32>,
    pub weights_path: Option<String>,
    pub ran_on: Option<String>,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
    /// Latest recorded epoch, when any.
    pub last_epoch: Option<EpochRecord>,
    pub epochs_done: u32,
    /// Highest validation accuracy and lowest validation loss over the recorded epochs.
    pub best_val_accuracy: Option<f64>,
    pub best_val_loss: Option<f64>,
    /// The worker's notes, frozen and re-initialised variables (see [`TrialFacts`]).
    pub notes: Vec<String>,
    pub frozen: Vec<String>,
    pub reinitialised: Vec<String>,
    pub skipped_files: u32,
    pub provenance: std::collections::BTreeMap<String, String>,
    /// What a tpe suggestion was based on (None for grid and random trials, and for tpe
    /// trials not leased yet).
    pub suggestion: Option<SuggestionBasis>,
    /// The best epoch's weights in the daemon's blob store, by digest.
    pub weights: Option<FileRef>,
    /// How the trial saw its images (the worker's input record), as JSON.
    pub input_record: Option<String>,
}

/// A trial handed to a worker: the lease it now holds.
#[derive(Debug, Clone, PartialEq)]
pub struct Lease {
    pub trial_id: String,
    pub sweep_id: String,
    pub dataset: String,
    pub generation: u64,
    pub attempt: u32,
    pub params: TrialParams,
    /// Epochs of this trial already in the store (from earlier attempts).
    pub epochs_recorded: u32,
    /// The checkpoint of the last recorded epoch, which the trial resumes from.
    pub checkpoint: Option<FileRef>,
    /// A tpe trial whose values are still to be suggested (see `Store::set_suggestion`).
    pub awaiting_suggestion: bool,
    /// The sweep's data manifest (in the blob store), by digest.
    pub manifest_digest: Option<String>,
}

/// What a worker asking for a lease can take.
#[derive(Debug, Clone)]
pub struct LeaseAsk<'a> {
    pub worker: &'a str,
    /// The trial device requests it serves (e.g. auto and cpu).
    pub devices: &'a [&'a str],
    /// Where it trains ("cpu", "cuda:0"), recorded on the trial.
    pub ran_on: &'a str,
    /// The checkpoint format it reads: a checkpointed trial of another format is not its.
    pub checkpoint_format: u32,
    /// When the lease runs out without heartbeats (ms since the Unix epoch); none for a
    /// worker this daemon started, whose lease ends with the daemon.
    pub expires_at_ms: Option<i64>,
}

impl<'a> LeaseAsk<'a> {
    /// A worker of this build's checkpoint format whose lease ends with the daemon (no
    /// deadline): what in-process tests and benchmarks ask as.
    pub fn new(worker: &'a str, devices: &'a [&'a str], ran_on: &'a str) -> LeaseAsk<'a> {
        LeaseAsk {
            worker,
            devices,
            ran_on,
            checkpoint_format: cnnd_core::content::CHECKPOINT_FORMAT,
            expires_at_ms: None,
        }
    }
}

/// A trial's id, status, and (val_accuracy, val_loss) by epoch, epoch 1 first.
pub type ObjectiveHistory = (String, TrialStatus, Vec<(f64, f64)>);

/// What one tpe suggestion was made from: the finished trials (oldest first) observed and
/// the running ones taken as pending, by id.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SuggestionBasis {
    pub observed: Vec<String>,
    pub pending: Vec<String>,
    /// False for the random start-up suggestions.
    pub tpe: bool,
}

/// Sent with the first epoch of an attempt.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TrialFacts {
    pub parameter_count: u64,
    pub train_examples: u32,
    pub val_examples: u32,
    pub test_examples: u32,
    /// Skipped files (path and reason), carved splits, transfer learning, in words.
    pub notes: Vec<String>,
    /// Variables kept fixed (`freeze`), and variables initialised afresh because their shape
    /// differs from the source weights (`initFrom`).
    pub frozen: Vec<String>,
    pub reinitialised: Vec<String>,
    /// Image files the worker could not decode.
    pub skipped_files: u32,
    /// Versions, device, seed and data hash (see the `Trial.provenance` field).
    pub provenance: std::collections::BTreeMap<String, String>,
    /// Training images as the model saw them (`cnnd_core::data_preview::DataPreview`), as
    /// JSON, checked.
    pub data_preview: Option<String>,
}

/// What [`Store::trial_pictures`] reads.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TrialPictures {
    pub test_report: Option<String>,
    pub data_preview: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct TrialResult {
    /// succeeded, failed, pruned or parked.
    pub status: TrialStatus,
    pub error: Option<String>,
    pub test_loss: Option<f64>,
    pub test_accuracy: Option<f64>,
    pub best_epoch: Option<u32>,
    pub weights_path: Option<String>,
    pub parameter_count: Option<u64>,
    /// The best epoch's weights, uploaded into the blob store.
    pub weights: Option<FileRef>,
    /// The worker's input record, as JSON.
    pub input_record: Option<String>,
    /// The test pass class by class (`cnnd_core::test_report::TestReport`), as JSON.
    pub test_report: Option<String>,
    /// A note for the trial's notes (why a succeeded trial ran fewer epochs).
    pub note: Option<String>,
}

impl TrialResult {
    /// A result with this status and nothing else known.
    pub fn of(status: TrialStatus) -> TrialResult {
        TrialResult {
            status,
            error: None,
            test_loss: None,
            test_accuracy: None,
            best_epoch: None,
            weights_path: None,
            parameter_count: None,
            weights: None,
            input_record: None,
            test_report: None,
            note: None,
        }
    }
}

/// Why a worker's report was not taken.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ReportError {
    #[error("trial {0} does not exist")]
    UnknownTrial(String),
    #[error("stale lease: trial {trial} is at generation {current} ({status}), the report carries {given}")]
    StaleLease {
        trial: String,
        current: u64,
        given: u64,
        status: TrialStatus,
    },
}

/// A sweep refused because the queue is full (`max_queued_trials`).
#[derive(Debug, thiserror::Error, PartialEq)]
#[error("queue: {queued} trials are queued and this sweep adds {adding}; the daemon queues at most {limit} (max_queued_trials)")]
pub struct QueueFull {
    pub queued: u64,
    pub adding: u64,
    pub limit: u32,
}

/// A sweep's progress as ListSweeps shows it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SweepProgress {
    pub sweep_id: String,
    pub total: u32,
    /// Trials that ended (neither queued, running nor parked).
    pub done: u32,
    /// The best trial by the sweep's objective on validation data, and its test accuracy.
    pub best_trial_id: Option<String>,
    pub best_test_accuracy: Option<f64>,
}

impl TrialRow {
    /// What choosing the sweep's best trial needs of this trial.
    pub fn contender(&self) -> cnnd_core::sweep::Contender<'_> {
        cnnd_core::sweep::Contender {
            id: &self.id,
            index: self.index,
            succeeded: self.status == TrialStatus::Succeeded,
            best_val_accuracy: self.best_val_accuracy,
            best_val_loss: self.best_val_loss,
            parameter_count: self.parameter_count,
        }
    }
}

/// The sweep's best trial among `trials` (see [`cnnd_core::sweep::best_contender`]).
pub fn best_trial(
    trials: &[TrialRow],
    objective: cnnd_core::sweep::Objective,
) -> Option<&TrialRow> {
    let id = cnnd_core::sweep::best_contender(objective, trials.iter().map(TrialRow::contender))?;
    trials.iter().find(|t| t.id == id)
}

/// Queued trials workers could take now, by the device their sweep asks for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Demand {
    pub cpu: u32,
    pub cuda: u32,
    /// "auto": either kind of worker serves them.
    pub auto: u32,
}

/// A write refused because this daemon no longer leads: another daemon took a newer
/// leadership term (see [`Store::fence`]). Nothing of the transaction was written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("this daemon no longer leads: it wrote under leadership term {term}, the database is at term {}", now.map_or("(none)".to_string(), |t| t.to_string()))]
pub struct Deposed {
    pub term: i64,
    pub now: Option<i64>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct QueueCounts {
    pub queued: u32,
    pub running: u32,
}

#[derive(Clone)]
pub struct Store {
    backend: Backend,
    writer: AnyPool,
    reader: AnyPool,
    /// Set when a write transaction failed: the writer connection is then replaced before its
    /// next use. After SQLite rolls a transaction back on its own (a COMMIT refused for a full
    /// disk, an I/O error), sqlx-sqlite still counts it as open and would run every later write
    /// inside a savepoint of a transaction that is never committed (acknowledged, then lost).
    writer_suspect: Arc<AtomicBool>,
    /// The leadership term this store writes under (PostgreSQL with a standby, see
    /// [`Store::fence`]); 0: unfenced (SQLite, a single daemon, tools).
    fence: Arc<AtomicI64>,
    /// Trials of recently read sweeps (see [`TrialsCache`]); None for read-only stores, whose
    /// file another process writes.
    trials_cache: Option<Arc<std::sync::Mutex<TrialsCache>>>,
    /// Epoch reports go to the group-commit task ([`ingest`]); None for read-only stores and
    /// for the task's own clone.
    epoch_reports: Option<tokio::sync::mpsc::UnboundedSender<ingest::EpochReport>>,
}

/// What `trials_of` answered for the sweeps read most recently. Reading a 1,000-trial sweep
/// costs tens of milliseconds (every trial row, its epoch count and last epoch); clients poll
/// `GetSweep` far more often than trials change. Every write transaction (`Store::write`, the
/// only way this store writes) clears the cache and bumps `generation` once it has ended,
/// committed or not, so a cached answer is always what the database holds now: the daemon is
/// the only writer. A read stores its answer only when no write ended while it ran.
#[derive(Default)]
struct TrialsCache {
    generation: u64,
    sweeps: std::collections::HashMap<String, Arc<Vec<TrialRow>>>,
}

/// Sweeps kept in [`TrialsCache`] (about 2 MB per 1,000 trials).
const TRIALS_CACHE_SWEEPS: usize = 8;

/// Clears the trials cache when dropped: after a write transaction's body has ended, also when
/// its future is dropped half-way (a cancelled request), when a COMMIT may still have landed.
struct InvalidateOnDrop<'a>(Option<&'a std::sync::Mutex<TrialsCache>>);

impl Drop for InvalidateOnDrop<'_> {
    fn drop(&mut self) {
        if let Some(cache) = self.0 {
            let mut c = cache.lock().unwrap_or_else(|e| e.into_inner());
            c.generation += 1;
            c.sweeps.clear();
        }
    }
}

/// The database a store runs on. Every query is written once, in SQL both read (numbered
/// `$n` parameters, portable functions), and runs through sqlx's Any driver; the schema has
/// one migrations folder per backend (`migrations/sqlite`, `migrations/postgres`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// The embedded default: one file, nothing to install.
    Sqlite,
    /// A PostgreSQL server (`postgres://` or `postgresql://`), for a shared service.
    Postgres,
}

impl Backend {
    /// The backend `--db` names: a `postgres://` or `postgresql://` URL is PostgreSQL;
    /// anything else (a file path, a `sqlite:` URL) is SQLite.
    pub fn of(db: &Path) -> Backend {
        match db.to_str() {
            Some(url) if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
                Backend::Postgres
            }
            _ => Backend::Sqlite,
        }
    }
}

/// Candidates [`Store::lease_next`] reads before it gives up for this call when other stores
/// on the same database keep taking them first.
const LEASE_CLAIM_TRIES: usize = 8;

/// Trials per statement when a sweep is stored (10 values each).
const TRIALS_PER_INSERT: usize = 128;

/// Lease renewals per statement (two bound values each).
const RENEWALS_PER_STATEMENT: usize = 1000;

/// Connections a daemon holds on PostgreSQL: one writer (writes stay serialised, as on
/// SQLite) and up to this many readers. The server must allow this plus its operators'
/// sessions (`max_connections`, 100 by default).
pub const POSTGRES_READERS: u32 = 8;

/// The Any driver's options for the SQLite database at `path`: a file path, taken literally
/// (`?`, `#` and `%` are file name characters there), or a `sqlite:` URL, parsed with its
/// options. The pragmas are set on each connection ([`sqlite_pragmas`]).
fn sqlite_options(path: &Path, read_only: bool) -> Result<AnyConnectOptions> {
    let base = match path.to_str() {
        Some(url) if url.starts_with("sqlite:") => SqliteConnectOptions::from_str(url)?,
        // The URL the Any driver connects with decodes `%`: encode it first.
        _ => SqliteConnectOptions::new().filename(path.to_string_lossy().replace('%', "%25")),
    };
    let base = if read_only {
        base.create_if_missing(false).read_only(true)
    } else {
        base.create_if_missing(true)
    };
    Ok(AnyConnectOptions::from_url(&base.to_url_lossy())?)
}

/// What every SQLite connection of the store is set to: WAL, normal sync, foreign keys, and
/// recursive triggers (REPLACE's implicit deletes fire delete triggers, which keep
/// trials.epoch_count exact, migrations/sqlite/0008); the writer also sets WAL mode.
fn sqlite_pragmas(busy_timeout: Duration, writer: bool) -> String {
    let mut pragmas = format!(
        "PRAGMA busy_timeout = {}; PRAGMA foreign_keys = ON; PRAGMA recursive_triggers = ON;",
        busy_timeout.as_millis()
    );
    if writer {
        pragmas.push_str(" PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL;");
    }
    pragmas
}

/// Pool options that run `pragmas` (nothing on PostgreSQL) on every new connection.
fn pool_options(pragmas: Option<String>) -> AnyPoolOptions {
    let options = AnyPoolOptions::new();
    match pragmas {
        None => options,
        Some(pragmas) => options.after_connect(move |conn, _| {
            let pragmas = pragmas.clone();
            Box::pin(async move {
                for pragma in pragmas.split(';').map(str::trim).filter(|p| !p.is_empty()) {
                    sqlx::Executor::execute(&mut *conn, pragma).await?;
                }
                Ok(())
            })
        }),
    }
}

/// `db` as logs and errors show it: a URL's password replaced by `***`.
pub fn display_db(db: &Path) -> String {
    let text = db.to_string_lossy();
    match Backend::of(db) {
        Backend::Sqlite => text.into_owned(),
        Backend::Postgres => match url::Url::parse(&text) {
            Ok(mut url) if url.password().is_some() => {
                let _ = url.set_password(Some("***"));
                url.to_string()
            }
            _ => text.into_owned(),
        },
    }
}

/// How long a statement waits for a lock another connection (a backup, an operator's
/// `sqlite3` shell) holds before failing with SQLITE_BUSY.
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

const TRIAL_COLUMNS: &str = "t.id, t.sweep_id, t.idx, t.params, t.status, t.device, t.epochs_planned, t.worker,
    t.generation, t.attempts, t.error, t.parameter_count, t.train_examples, t.val_examples, t.test_examples,
    t.test_loss, t.test_accuracy, t.best_epoch, t.weights_path, t.ran_on, t.started_at, t.finished_at,
    t.notes, t.frozen, t.reinitialised, t.skipped_files, t.provenance, t.suggestion_basis,
    t.epoch_count AS epochs_done, t.best_val_accuracy, t.best_val_loss,
    t.weights_digest, t.weights_size, t.input_record,
    e.epoch AS l_epoch, e.train_loss AS l_train_loss, e.train_accuracy AS l_train_accuracy, e.val_loss AS l_val_loss,
    e.val_accuracy AS l_val_accuracy, e.seconds AS l_seconds, e.images_per_second AS l_ips,
    e.learning_rate AS l_learning_rate";

// `epoch_count` and `last_epoch` are COUNT(*) and MAX(epoch) of the trial's epochs, kept by
// triggers (migrations/0007_control_plane_indexes.sql).
const TRIAL_FROM: &str = "FROM trials t LEFT JOIN epochs e ON e.trial_id = t.id
    AND e.epoch = t.last_epoch";

fn trial_from_row(r: &AnyRow) -> Result<TrialRow> {
    let params: String = r.get("params");
    let last_epoch = r.get::<Option<i64>, _>("l_epoch").map(|epoch| EpochRecord {
        epoch: epoch as u32,
        train_loss: r.get("l_train_loss"),
        train_accuracy: r.get("l_train_accuracy"),
        val_loss: r.get("l_val_loss"),
        val_accuracy: r.get("l_val_accuracy"),
        seconds: r.get("l_seconds"),
        images_per_second: r.get("l_ips"),
        learning_rate: r.get("l_learning_rate"),
    });
    Ok(TrialRow {
        id: r.get("id"),
        sweep_id: r.get("sweep_id"),
        index: r.get::<i64, _>("idx") as u32,
        params: serde_json::from_str(&params).context("trial params in the store")?,
        status: state_column(r, "status")?,
        device: r.get("device"),
        epochs_planned: r.get::<i64, _>("epochs_planned") as u32,
        worker: r.get("worker"),
        generation: r.get::<i64, _>("generation") as u64,
        attempts: r.get::<i64, _>("attempts") as u32,
        error: r.get("error"),
        parameter_count: r.get::<Option<i64>, _>("parameter_count").map(|v| v as u64),
        train_examples: r.get::<Option<i64>, _>("train_examples").map(|v| v as u32),
        val_examples: r.get::<Option<i64>, _>("val_examples").map(|v| v as u32),
        test_examples: r.get::<Option<i64>, _>("test_examples").map(|v| v as u32),
        test_loss: r.get("test_loss"),
        test_accuracy: r.get("test_accuracy"),
        best_epoch: r.get::<Option<i64>, _>("best_epoch").map(|v| v as u32),
        weights_path: r.get("weights_path"),
        ran_on: r.get("ran_on"),
        started_at: r.get("started_at"),
        finished_at: r.get("finished_at"),
        last_epoch,
        epochs_done: r.get::<i64, _>("epochs_done") as u32,
        best_val_accuracy: r.get("best_val_accuracy"),
        best_val_loss: r.get("best_val_loss"),
        notes: string_list(r, "notes")?,
        frozen: string_list(r, "frozen")?,
        reinitialised: string_list(r, "reinitialised")?,
        skipped_files: r.get::<i64, _>("skipped_files") as u32,
        provenance: serde_json::from_str(&r.get::<String, _>("provenance"))
            .context("trials.provenance in the store")?,
        suggestion: r
            .get::<Option<String>, _>("suggestion_basis")
            .map(|t| serde_json::from_str(&t))
            .transpose()
            .context("trials.suggestion_basis in the store")?,
        weights: r
            .get::<Option<String>, _>("weights_digest")
            .map(|digest| FileRef {
                name: WEIGHTS_NAME.into(),
                digest,
                size: r.get::<Option<i64>, _>("weights_size").unwrap_or(0) as u64,
            }),
        input_record: r.get("input_record"),
    })
}

/// The name a trial's best weights go by (in file references and on workers).
pub const WEIGHTS_NAME: &str = "best.safetensors";
/// The name a checkpoint goes by.
pub const CHECKPOINT_NAME: &str = "checkpoint.safetensors";

fn string_list(r: &AnyRow, column: &str) -> Result<Vec<String>> {
    let text: String = r.get(column);
    serde_json::from_str(&text).with_context(|| format!("trials.{column} in the store"))
}

/// A state column (`trials.status`, `sweeps.status`) read back as its type.
fn state_column<T>(r: &AnyRow, column: &str) -> Result<T>
where
    T: FromStr<Err = cnnd_core::status::UnknownState>,
{
    let text: &str = r.get(column);
    text.parse()
        .with_context(|| format!("the store's {column} column"))
}

fn epoch_from_row(r: &AnyRow) -> EpochRecord {
    EpochRecord {
        epoch: r.get::<i64, _>("epoch") as u32,
        train_loss: r.get("train_loss"),
        train_accuracy: r.get("train_accuracy"),
        val_loss: r.get("val_loss"),
        val_accuracy: r.get("val_accuracy"),
        seconds: r.get("seconds"),
        images_per_second: r.get("images_per_second"),
        learning_rate: r.get("learning_rate"),
    }
}

fn sweep_from_row(r: &AnyRow) -> Result<SweepRow> {
    let varied: String = r.get("varied");
    let spec: String = r.get("spec");
    Ok(SweepRow {
        id: r.get("id"),
        name: r.get("name"),
        dataset: r.get("dataset"),
        strategy: r.get("strategy"),
        varied: serde_json::from_str(&varied)?,
        spec: serde_json::from_str(&spec)?,
        objective: r.get("objective"),
        priority: r.get::<i64, _>("priority") as i32,
        max_parallel: r.get::<i64, _>("max_parallel") as u32,
        status: state_column(r, "status")?,
        paused: r.get::<i64, _>("paused") != 0,
        created_at: r.get("created_at"),
        finished_at: r.get("finished_at"),
        early_stopping: serde_json::from_str(&r.get::<String, _>("early_stopping"))
            .context("sweeps.early_stopping in the store")?,
        tpe: r
            .get::<Option<String>, _>("tpe")
            .map(|t| serde_json::from_str(&t))
            .transpose()
            .context("sweeps.tpe in the store")?,
    })
}

/// The columns of a trial that decide whether a report's lease is current.
struct LeaseRow {
    sweep_id: String,
    status: TrialStatus,
    generation: u64,
    epochs_planned: u32,
}

impl LeaseRow {
    fn from_row(row: &AnyRow) -> Result<LeaseRow> {
        Ok(LeaseRow {
            sweep_id: row.get("sweep_id"),
            status: state_column(row, "status")?,
            generation: row.get::<i64, _>("generation") as u64,
            epochs_planned: row.get::<i64, _>("epochs_planned") as u32,
        })
    }
}

/// A report's lease is current when its trial exists, is running, and is at the report's
/// generation (the fencing token). Answers the trial's sweep and planned epochs.
fn lease_verdict(
    trial_id: &str,
    generation: u64,
    lease: Option<&LeaseRow>,
) -> std::result::Result<(String, u32), ReportError> {
    let Some(lease) = lease else {
        return Err(ReportError::UnknownTrial(trial_id.to_string()));
    };
    if lease.generation != generation || lease.status != TrialStatus::Running {
        return Err(ReportError::StaleLease {
            trial: trial_id.to_string(),
            current: lease.generation,
            given: generation,
            status: lease.status,
        });
    }
    Ok((lease.sweep_id.clone(), lease.epochs_planned))
}

/// Stores what a worker learned preparing a trial (sent with its first epoch report).
async fn store_facts(tx: &mut AnyConnection, trial_id: &str, f: &TrialFacts) -> Result<()> {
    sqlx::query(
        "UPDATE trials SET parameter_count = $1, train_examples = $2, val_examples = $3, test_examples = $4,
                notes = $5, frozen = $6, reinitialised = $7, skipped_files = $8, provenance = $9,
                data_preview = COALESCE($10, data_preview) WHERE id = $11",
    )
    .bind(f.parameter_count as i64)
    .bind(f.train_examples as i64)
    .bind(f.val_examples as i64)
    .bind(f.test_examples as i64)
    .bind(serde_json::to_string(&f.notes)?)
    .bind(serde_json::to_string(&f.frozen)?)
    .bind(serde_json::to_string(&f.reinitialised)?)
    .bind(f.skipped_files as i64)
    .bind(serde_json::to_string(&f.provenance)?)
    .bind(&f.data_preview)
    .bind(trial_id)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

async fn append_event(
    tx: &mut AnyConnection,
    sweep_id: &str,
    event: &Event,
) -> Result<StoredEvent> {
    let mut stored = append_events(tx, vec![(sweep_id.to_string(), event.clone())]).await?;
    stored.pop().context("an appended event without its id")
}

/// `($1, $2, $3), ($4, $5, $6), ...`: the VALUES of `rows` rows of `columns` values, numbered
/// from `$first` as both backends read them (sqlx's QueryBuilder writes `?` for the Any
/// driver, which PostgreSQL does not take).
pub(crate) fn values_placeholders(rows: usize, columns: usize, first: usize) -> String {
    let mut out = String::with_capacity(rows * columns * 5);
    for row in 0..rows {
        out.push_str(if row == 0 { "(" } else { ", (" });
        for column in 0..columns {
            if column > 0 {
                out.push_str(", ");
            }
            out.push_str(&format!("${}", first + row * columns + column));
        }
        out.push(')');
    }
    out
}

/// `$first, $first+1, ...`: `n` numbered placeholders, comma-separated (for `IN (...)`).
pub(crate) fn placeholder_list(first: usize, n: usize) -> String {
    (first..first + n)
        .map(|i| format!("${i}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Appends events with one multi-row insert, answered in the order given.
async fn append_events(
    tx: &mut AnyConnection,
    events: Vec<(String, Event)>,
) -> Result<Vec<StoredEvent>> {
    let at = now();
    let payloads = events
        .iter()
        .map(|(_, event)| serde_json::to_string(event))
        .collect::<serde_json::Result<Vec<_>>>()?;
    let sql = format!(
        "INSERT INTO events (sweep_id, at, payload) VALUES {} RETURNING id",
        values_placeholders(events.len(), 3, 1)
    );
    let mut insert = sqlx::query_scalar(&sql);
    for ((sweep_id, _), payload) in events.iter().zip(&payloads) {
        insert = insert.bind(sweep_id).bind(&at).bind(payload);
    }
    // Neither backend promises an order for RETURNING rows; the single writer gives the rows
    // of one statement ascending ids in VALUES order.
    let mut ids: Vec<i64> = insert.fetch_all(&mut *tx).await?;
    ids.sort_unstable();
    if ids.len() != events.len() {
        return Err(anyhow!(
            "{} events inserted, {} ids returned",
            events.len(),
            ids.len()
        ));
    }
    Ok(events
        .into_iter()
        .zip(ids)
        .map(|((sweep_id, event), id)| StoredEvent {
            id,
            sweep_id,
            at: at.clone(),
            event,
        })
        .collect())
}

impl Store {
    /// Opens (creating when missing) the database and applies pending migrations: `db` is
    /// a SQLite file path or URL, or a PostgreSQL URL ([`Backend::of`]).
    pub async fn open(db: &Path) -> Result<Store> {
        Self::open_with(db, BUSY_TIMEOUT).await
    }

    /// [`Store::open`] with another lock wait than [`BUSY_TIMEOUT`] (SQLite).
    pub async fn open_with(db: &Path, busy_timeout: Duration) -> Result<Store> {
        sqlx::any::install_default_drivers();
        let backend = Backend::of(db);
        let shown = display_db(db);
        let (writer_options, reader_options, readers) = match backend {
            Backend::Sqlite => {
                let url = db.to_str().is_some_and(|p| p.starts_with("sqlite:"));
                if let Some(dir) = db.parent().filter(|_| !url) {
                    std::fs::create_dir_all(dir)
                        .with_context(|| format!("creating {}", dir.display()))?;
                }
                let writer =
                    sqlite_options(db, false).with_context(|| format!("database path {shown}"))?;
                // The writer creates the file; the readers open it read-only afterwards.
                (writer, None, 8)
            }
            Backend::Postgres => {
                let url = db.to_str().context("a PostgreSQL URL must be UTF-8")?;
                let options = AnyConnectOptions::from_str(url)
                    .with_context(|| format!("database URL {shown}"))?;
                (options.clone(), Some(options), POSTGRES_READERS)
            }
        };
        let pragmas =
            |writer| (backend == Backend::Sqlite).then(|| sqlite_pragmas(busy_timeout, writer));
        let writer_suspect = Arc::new(AtomicBool::new(false));
        let suspect = writer_suspect.clone();
        let writer = pool_options(pragmas(true))
            .max_connections(1)
            // No ping before each write transaction (a round trip to SQLite's thread, ~15% of
            // a batched epoch write): a failed write marks the connection for replacement.
            .test_before_acquire(false)
            .before_acquire(move |_, _| {
                // false closes this connection; the pool opens a fresh one.
                let replace = suspect.swap(false, Ordering::SeqCst);
                Box::pin(async move { Ok(!replace) })
            })
            .connect_with(writer_options)
            .await
            .with_context(|| format!("opening database {shown}"))?;
        let migrator = match backend {
            Backend::Sqlite => sqlx::migrate!("./migrations/sqlite"),
            Backend::Postgres => sqlx::migrate!("./migrations/postgres"),
        };
        migrator
            .run(&writer)
            .await
            .with_context(|| format!("migrating database {shown}"))?;
        let reader_options = match reader_options {
            Some(options) => options,
            None => sqlite_options(db, true)?,
        };
        let reader = pool_options(pragmas(false))
            .max_connections(readers)
            .connect_with(reader_options)
            .await
            .with_context(|| format!("opening database {shown}"))?;
        let mut store = Store {
            backend,
            writer,
            reader,
            writer_suspect,
            fence: Arc::default(),
            trials_cache: Some(Arc::default()),
            epoch_reports: None,
        };
        store.epoch_reports = Some(ingest::spawn(store.clone()));
        Ok(store)
    }

    /// Opens an existing database for reading only (tests, diagnostics): never writes.
    pub async fn open_read_only(db: &Path) -> Result<Store> {
        sqlx::any::install_default_drivers();
        let backend = Backend::of(db);
        let options = match backend {
            Backend::Sqlite => sqlite_options(db, true)?,
            Backend::Postgres => {
                AnyConnectOptions::from_str(db.to_str().context("a PostgreSQL URL must be UTF-8")?)?
            }
        };
        let reader =
            pool_options((backend == Backend::Sqlite).then(|| sqlite_pragmas(BUSY_TIMEOUT, false)))
                .max_connections(2)
                .connect_with(options)
                .await
                .with_context(|| format!("opening database {}", display_db(db)))?;
        Ok(Store {
            backend,
            writer: reader.clone(),
            reader,
            writer_suspect: Arc::default(),
            fence: Arc::default(),
            trials_cache: None,
            epoch_reports: None,
        })
    }

    /// The database this store runs on.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// From now on, every write transaction of this store (and its clones) first checks, in
    /// the transaction, that the database's leadership term is still `term` (read FOR SHARE,
    /// so a successor's takeover waits for it), and fails with [`Deposed`] otherwise. Set by
    /// a daemon when it starts to lead on PostgreSQL (see `crate::leadership`).
    pub fn fence(&self, term: i64) {
        self.fence.store(term, Ordering::SeqCst);
    }

    /// Begins a write transaction on the writer connection, checking the leadership term
    /// when the store is fenced (see [`Store::fence`]).
    async fn begin_write(&self) -> Result<sqlx::Transaction<'static, sqlx::Any>> {
        let mut tx = self.writer.begin().await?;
        let term = self.fence.load(Ordering::SeqCst);
        if term != 0 {
            let now: Option<i64> =
                sqlx::query_scalar("SELECT term FROM leadership WHERE id = 1 FOR SHARE")
                    .fetch_optional(&mut *tx)
                    .await?;
            if now != Some(term) {
                return Err(Deposed { term, now }.into());
            }
        }
        Ok(tx)
    }

    /// Runs the body of one write transaction. Any error marks the writer connection for
    /// replacement (see `writer_suspect`): cheap, and the only safe answer when SQLite may
    /// already have rolled the transaction back behind sqlx's back.
    /// Every write goes through here: it also keeps the trials cache true (see [`TrialsCache`]).
    async fn write<T>(&self, body: impl Future<Output = Result<T>>) -> Result<T> {
        let _invalidate = InvalidateOnDrop(self.trials_cache.as_deref());
        let outcome = body.await;
        if outcome.is_err() {
            self.writer_suspect.store(true, Ordering::SeqCst);
        }
        outcome
    }

    /// Stores a validated sweep and queues its trials, in one transaction, unless that would
    /// put more than `max_queued` trials in the queue (counted inside the same transaction:
    /// writes are serialised, so concurrent submissions cannot both pass the limit).
    pub async fn insert_sweep(
        &self,
        id: &str,
        spec: &SweepSpec,
        manifest_digest: Option<&str>,
        max_queued: u32,
    ) -> Result<std::result::Result<Vec<String>, QueueFull>> {
        self.write(async {
        let mut tx = self.begin_write().await?;
        let queued: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM trials WHERE status = 'queued'")
            .fetch_one(&mut *tx)
            .await?;
        let adding = spec.trials.len() as u64;
        if queued as u64 + adding > max_queued as u64 {
            return Ok(Err(QueueFull {
                queued: queued as u64,
                adding,
                limit: max_queued,
            }));
        }
        let created = now();
        let device = serde_json::to_value(spec.device)?
            .as_str()
            .unwrap_or("auto")
            .to_string();
        sqlx::query(
            "INSERT INTO sweeps (id, name, dataset, strategy, varied, spec, objective, priority, max_parallel, device, status, created_at, early_stopping, tpe, manifest_digest)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, 'queued', $11, $12, $13, $14)",
        )
        .bind(id)
        .bind(&spec.name)
        .bind(&spec.dataset)
        .bind(&spec.request.strategy)
        .bind(serde_json::to_string(&spec.varied)?)
        .bind(serde_json::to_string(&spec.request)?)
        .bind(serde_json::to_value(spec.objective)?.as_str().unwrap_or_default())
        .bind(spec.priority)
        .bind(spec.max_parallel as i64)
        .bind(&device)
        .bind(&created)
        .bind(serde_json::to_string(&spec.early_stopping)?)
        .bind(spec.tpe.as_ref().map(serde_json::to_string).transpose()?)
        .bind(manifest_digest)
        .execute(&mut *tx)
        .await?;
        let seq0: i64 = sqlx::query_scalar("SELECT COALESCE(MAX(queue_seq), 0) FROM trials")
            .fetch_one(&mut *tx)
            .await?;
        let mut ids = Vec::with_capacity(spec.trials.len());
        let mut queue_position = vec![0i64; spec.trials.len()];
        for (position, &i) in spec.start_order().iter().enumerate() {
            queue_position[i] = position as i64;
        }
        // Multi-row inserts of TRIALS_PER_INSERT trials (10 values each): a 1,000-trial sweep
        // in 8 statements instead of 1,000 round trips.
        let rows = spec
            .trials
            .iter()
            .enumerate()
            .map(|(i, params)| Ok((i, format!("{id}-t{i}"), serde_json::to_string(params)?)))
            .collect::<Result<Vec<_>>>()?;
        for chunk in rows.chunks(TRIALS_PER_INSERT) {
            let sql = format!(
                "INSERT INTO trials (id, sweep_id, idx, params, status, priority, queue_seq, device, epochs_planned, awaiting_suggestion)
                 VALUES {}",
                values_placeholders(chunk.len(), 10, 1)
            );
            let mut insert = sqlx::query(&sql);
            for (i, trial_id, params) in chunk {
                insert = insert
                    .bind(trial_id)
                    .bind(id)
                    .bind(*i as i64)
                    .bind(params)
                    .bind(TrialStatus::Queued.as_str())
                    .bind(spec.priority as i64)
                    .bind(seq0 + 1 + queue_position[*i])
                    .bind(&device)
                    .bind(spec.trials[*i].epochs as i64)
                    .bind(spec.tpe.is_some() as i64);
            }
            insert.execute(&mut *tx).await?;
            ids.extend(chunk.iter().map(|(_, trial_id, _)| trial_id.clone()));
        }
        tx.commit().await?;
        Ok(Ok(ids))
        }).await
    }

    pub async fn sweep(&self, id: &str) -> Result<Option<SweepRow>> {
        let row = sqlx::query("SELECT * FROM sweeps WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.reader)
            .await?;
        row.as_ref().map(sweep_from_row).transpose()
    }

    pub async fn sweeps(&self) -> Result<Vec<SweepRow>> {
        let rows = sqlx::query("SELECT * FROM sweeps ORDER BY created_at DESC, id")
            .fetch_all(&self.reader)
            .await?;
        rows.iter().map(sweep_from_row).collect()
    }

    /// Per sweep: its trial counts and its best trial (chosen by the sweep's objective on
    /// validation data, [`cnnd_core::sweep::best_contender`]) with that trial's test accuracy.
    pub async fn sweep_progress(&self) -> Result<Vec<SweepProgress>> {
        let rows = sqlx::query(
            "SELECT t.sweep_id, s.objective, t.id, t.idx, t.status, t.best_val_accuracy,
                    t.best_val_loss, t.parameter_count, t.test_accuracy
             FROM trials t JOIN sweeps s ON s.id = t.sweep_id ORDER BY t.sweep_id, t.idx",
        )
        .fetch_all(&self.reader)
        .await?;
        let mut out: Vec<SweepProgress> = Vec::new();
        for group in
            rows.chunk_by(|a, b| a.get::<&str, _>("sweep_id") == b.get::<&str, _>("sweep_id"))
        {
            let objective = cnnd_core::sweep::Objective::from_name(group[0].get("objective"));
            let contenders = group.iter().map(|r| cnnd_core::sweep::Contender {
                id: r.get("id"),
                index: r.get::<i64, _>("idx") as u32,
                succeeded: r.get::<&str, _>("status") == TrialStatus::Succeeded.as_str(),
                best_val_accuracy: r.get("best_val_accuracy"),
                best_val_loss: r.get("best_val_loss"),
                parameter_count: r.get::<Option<i64>, _>("parameter_count").map(|v| v as u64),
            });
            let best = cnnd_core::sweep::best_contender(objective, contenders).map(str::to_string);
            let best_test_accuracy = best.as_ref().and_then(|id| {
                group
                    .iter()
                    .find(|r| r.get::<&str, _>("id") == id)
                    .and_then(|r| r.get::<Option<f64>, _>("test_accuracy"))
            });
            out.push(SweepProgress {
                sweep_id: group[0].get("sweep_id"),
                total: group.len() as u32,
                done: group
                    .iter()
                    .filter(|r| {
                        r.get::<&str, _>("status")
                            .parse::<TrialStatus>()
                            .is_ok_and(|s| !s.is_open())
                    })
                    .count() as u32,
                best_trial_id: best,
                best_test_accuracy,
            });
        }
        Ok(out)
    }

    /// Every trial of a sweep with its status and its (val_accuracy, val_loss) by epoch,
    /// epoch 1 first: what early stopping decides from.
    pub async fn objective_histories(&self, sweep_id: &str) -> Result<Vec<ObjectiveHistory>> {
        let rows = sqlx::query(
            "SELECT t.id, t.status, e.val_accuracy, e.val_loss FROM trials t
             LEFT JOIN epochs e ON e.trial_id = t.id WHERE t.sweep_id = $1 ORDER BY t.idx, e.epoch",
        )
        .bind(sweep_id)
        .fetch_all(&self.reader)
        .await?;
        let mut out: Vec<ObjectiveHistory> = Vec::new();
        for r in &rows {
            let id: String = r.get("id");
            if out.last().is_none_or(|(last, _, _)| *last != id) {
                out.push((id, state_column(r, "status")?, Vec::new()));
            }
            if let (Some(acc), Some(loss)) = (
                r.get::<Option<f64>, _>("val_accuracy"),
                r.get::<Option<f64>, _>("val_loss"),
            ) {
                out.last_mut().expect("pushed above").2.push((acc, loss));
            }
        }
        Ok(out)
    }

    /// The write generation: it changes when a write transaction ends (committed or not), so
    /// an answer derived from reads made at generation `g` is current while this is still
    /// `g`. None when the store runs without its cache (then derive nothing).
    pub fn generation(&self) -> Option<u64> {
        self.trials_cache
            .as_ref()
            .map(|c| c.lock().unwrap_or_else(|e| e.into_inner()).generation)
    }

    pub async fn trials_of(&self, sweep_id: &str) -> Result<Vec<TrialRow>> {
        let generation = match &self.trials_cache {
            Some(cache) => {
                let c = cache.lock().unwrap_or_else(|e| e.into_inner());
                if let Some(trials) = c.sweeps.get(sweep_id) {
                    return Ok(trials.as_ref().clone());
                }
                Some(c.generation)
            }
            None => None,
        };
        let sql =
            format!("SELECT {TRIAL_COLUMNS} {TRIAL_FROM} WHERE t.sweep_id = $1 ORDER BY t.idx");
        let rows = sqlx::query(&sql)
            .bind(sweep_id)
            .fetch_all(&self.reader)
            .await?;
        let trials = rows
            .iter()
            .map(trial_from_row)
            .collect::<Result<Vec<_>>>()?;
        if let (Some(cache), Some(generation)) = (&self.trials_cache, generation) {
            let mut c = cache.lock().unwrap_or_else(|e| e.into_inner());
            // A write that ended while this read ran may or may not be in `trials`.
            if c.generation == generation {
                if c.sweeps.len() >= TRIALS_CACHE_SWEEPS {
                    c.sweeps.clear();
                }
                c.sweeps
                    .insert(sweep_id.to_string(), Arc::new(trials.clone()));
            }
        }
        Ok(trials)
    }

    pub async fn trial(&self, id: &str) -> Result<Option<TrialRow>> {
        let sql = format!("SELECT {TRIAL_COLUMNS} {TRIAL_FROM} WHERE t.id = $1");
        let row = sqlx::query(&sql)
            .bind(id)
            .fetch_optional(&self.reader)
            .await?;
        row.as_ref().map(trial_from_row).transpose()
    }

    /// A trial's pictures as JSON, read on their own, not with every trial row, since they
    /// carry images: its test report (`cnnd_core::test_report::TestReport`) and its data
    /// preview (`cnnd_core::data_preview::DataPreview`), each None until the worker sent it.
    pub async fn trial_pictures(&self, trial_id: &str) -> Result<TrialPictures> {
        let row = sqlx::query("SELECT test_report, data_preview FROM trials WHERE id = $1")
            .bind(trial_id)
            .fetch_optional(&self.reader)
            .await?;
        Ok(match row {
            Some(r) => TrialPictures {
                test_report: r.try_get("test_report")?,
                data_preview: r.try_get("data_preview")?,
            },
            None => TrialPictures::default(),
        })
    }

    pub async fn epochs(&self, trial_id: &str) -> Result<Vec<EpochRecord>> {
        let rows = sqlx::query("SELECT * FROM epochs WHERE trial_id = $1 ORDER BY epoch")
            .bind(trial_id)
            .fetch_all(&self.reader)
            .await?;
        Ok(rows.iter().map(epoch_from_row).collect())
    }

    /// Epoch histories of every trial of a sweep, keyed by trial id.
    pub async fn epochs_of_sweep(
        &self,
        sweep_id: &str,
    ) -> Result<std::collections::HashMap<String, Vec<EpochRecord>>> {
        let rows = sqlx::query(
            "SELECT e.* FROM epochs e JOIN trials t ON t.id = e.trial_id WHERE t.sweep_id = $1 ORDER BY e.trial_id, e.epoch",
        )
        .bind(sweep_id)
        .fetch_all(&self.reader)
        .await?;
        let mut out: std::collections::HashMap<String, Vec<EpochRecord>> = Default::default();
        for r in &rows {
            out.entry(r.get("trial_id"))
                .or_default()
                .push(epoch_from_row(r));
        }
        Ok(out)
    }

    pub async fn events_after(&self, sweep_id: &str, after_id: i64) -> Result<Vec<StoredEvent>> {
        let rows = sqlx::query("SELECT * FROM events WHERE sweep_id = $1 AND id > $2 ORDER BY id")
            .bind(sweep_id)
            .bind(after_id)
            .fetch_all(&self.reader)
            .await?;
        rows.iter()
            .map(|r| {
                let payload: String = r.get("payload");
                Ok(StoredEvent {
                    id: r.get("id"),
                    sweep_id: r.get("sweep_id"),
                    at: r.get("at"),
                    event: serde_json::from_str(&payload)?,
                })
            })
            .collect()
    }

    /// Sweeps that ended (finished or cancelled) at or after `at` (RFC 3339, as [`now`]
    /// writes it), oldest first.
    pub async fn sweeps_ended_since(&self, at: &str) -> Result<Vec<String>> {
        Ok(sqlx::query_scalar(
            "SELECT id FROM sweeps WHERE finished_at >= $1 ORDER BY finished_at, id",
        )
        .bind(at)
        .fetch_all(&self.reader)
        .await?)
    }

    pub async fn queue_counts(&self) -> Result<QueueCounts> {
        let r = sqlx::query(
            "SELECT COUNT(CASE WHEN status = 'queued' THEN 1 END) AS q, COUNT(CASE WHEN status = 'running' THEN 1 END) AS r FROM trials
             WHERE status IN ('queued', 'running')",
        )
        .fetch_one(&self.reader)
        .await?;
        Ok(QueueCounts {
            queued: r.get::<i64, _>("q") as u32,
            running: r.get::<i64, _>("r") as u32,
        })
    }

    /// The queued trials workers could take now, by the device they ask for: those of
    /// sweeps that are not paused, at most each sweep's `maxParallel` less its running
    /// trials (what a launcher sizes its workers to).
    pub async fn leasable_demand(&self) -> Result<Demand> {
        let rows = sqlx::query(
            "SELECT t.sweep_id, t.device, COUNT(*) AS queued, s.max_parallel,
                    (SELECT COUNT(*) FROM trials r WHERE r.sweep_id = t.sweep_id AND r.status = 'running') AS running
             FROM trials t JOIN sweeps s ON s.id = t.sweep_id
             WHERE t.status = 'queued' AND s.paused = 0
             GROUP BY t.sweep_id, t.device, s.max_parallel ORDER BY t.sweep_id, t.device",
        )
        .fetch_all(&self.reader)
        .await?;
        let mut demand = Demand::default();
        let mut headroom: std::collections::HashMap<String, i64> = Default::default();
        for row in &rows {
            let sweep: String = row.get("sweep_id");
            let max_parallel: i64 = row.get("max_parallel");
            let room = headroom.entry(sweep).or_insert_with(|| {
                if max_parallel == 0 {
                    i64::MAX
                } else {
                    (max_parallel - row.get::<i64, _>("running")).max(0)
                }
            });
            let n = row.get::<i64, _>("queued").min(*room);
            *room -= n;
            let n = n as u32;
            match row.get::<String, _>("device").as_str() {
                "cuda" => demand.cuda += n,
                "cpu" => demand.cpu += n,
                _ => demand.auto += n,
            }
        }
        Ok(demand)
    }

    /// Trials per status over all sweeps (for the metrics endpoint).
    pub async fn trial_counts_by_status(&self) -> Result<Vec<(String, i64)>> {
        let rows = sqlx::query("SELECT status, COUNT(*) AS n FROM trials GROUP BY status")
            .fetch_all(&self.reader)
            .await?;
        Ok(rows
            .iter()
            .map(|r| (r.get::<String, _>("status"), r.get::<i64, _>("n")))
            .collect())
    }

    /// Hands the next queued trial a worker may run to that worker: highest priority first,
    /// FIFO within a priority, never more running trials of a sweep than its `maxParallel`,
    /// only device requests the worker serves, and a checkpointed trial only to a worker
    /// that reads its checkpoint format.
    pub async fn lease_next(&self, ask: &LeaseAsk<'_>) -> Result<Option<(Lease, StoredEvent)>> {
        let (worker, devices, ran_on) = (ask.worker, ask.devices, ask.ran_on);
        self.write(async {
        let mut tx = self.begin_write().await?;
        let placeholders = placeholder_list(1, devices.len());
        let format_param = devices.len() + 1;
        let sql = format!(
            "SELECT t.id, t.sweep_id, t.params, t.generation, t.attempts, s.dataset, t.awaiting_suggestion,
                    t.epoch_count AS epochs_recorded, s.manifest_digest,
                    c.checkpoint_digest, c.checkpoint_size
             FROM trials t JOIN sweeps s ON s.id = t.sweep_id
             LEFT JOIN epochs c ON c.trial_id = t.id AND c.epoch = t.last_epoch
             WHERE t.status = 'queued' AND s.paused = 0 AND t.device IN ({placeholders})
               AND (t.epoch_count = 0 OR t.checkpoint_format IS NULL OR t.checkpoint_format = ${format_param})
               AND (s.max_parallel = 0 OR
                    (SELECT COUNT(*) FROM trials r WHERE r.sweep_id = t.sweep_id AND r.status = 'running') < s.max_parallel)
             ORDER BY t.priority DESC, t.queue_seq LIMIT 1"
        );
        // The update takes the trial only while it is still queued at the generation read:
        // another store on the same database (a second daemon on PostgreSQL) that leased it
        // in between makes it change nothing, and the next candidate is read. On SQLite the
        // single writer never meets that.
        let mut claimed = None;
        for _ in 0..LEASE_CLAIM_TRIES {
            let mut q = sqlx::query(&sql);
            for d in devices {
                q = q.bind(*d);
            }
            q = q.bind(ask.checkpoint_format as i64);
            let Some(row) = q.fetch_optional(&mut *tx).await? else {
                return Ok(None);
            };
            let trial_id: String = row.get("id");
            let read_generation = row.get::<i64, _>("generation");
            let generation = read_generation as u64 + 1;
            let attempt = row.get::<i64, _>("attempts") as u32 + 1;
            let started = now();
            let taken = sqlx::query(
                "UPDATE trials SET status = 'running', worker = $1, generation = $2, attempts = $3, ran_on = $4,
                        started_at = COALESCE(started_at, $5), error = NULL, checkpoint_format = $6,
                        lease_expires_at = $7 WHERE id = $8 AND status = 'queued' AND generation = $9",
            )
            .bind(worker)
            .bind(generation as i64)
            .bind(attempt as i64)
            .bind(ran_on)
            .bind(&started)
            .bind(ask.checkpoint_format as i64)
            .bind(ask.expires_at_ms)
            .bind(&trial_id)
            .bind(read_generation)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if taken == 1 {
                claimed = Some((row, trial_id, generation, attempt));
                break;
            }
        }
        let Some((row, trial_id, generation, attempt)) = claimed else {
            // Every candidate went to another store meanwhile: the worker asks again.
            return Ok(None);
        };
        let sweep_id: String = row.get("sweep_id");
        let params: String = row.get("params");
        sqlx::query("UPDATE sweeps SET status = 'running' WHERE id = $1 AND status = 'queued'")
            .bind(&sweep_id)
            .execute(&mut *tx)
            .await?;
        let event = append_event(
            &mut tx,
            &sweep_id,
            &Event::TrialStarted {
                trial_id: trial_id.clone(),
                worker: worker.to_string(),
                attempt,
            },
        )
        .await?;
        tx.commit().await?;
        Ok(Some((
            Lease {
                trial_id,
                sweep_id,
                dataset: row.get("dataset"),
                generation,
                attempt,
                params: serde_json::from_str(&params)?,
                epochs_recorded: row.get::<i64, _>("epochs_recorded") as u32,
                checkpoint: row.get::<Option<String>, _>("checkpoint_digest").map(|digest| {
                    FileRef {
                        name: CHECKPOINT_NAME.into(),
                        digest,
                        size: row.get::<Option<i64>, _>("checkpoint_size").unwrap_or(0) as u64,
                    }
                }),
                awaiting_suggestion: row.get::<i64, _>("awaiting_suggestion") != 0,
                manifest_digest: row.get("manifest_digest"),
            },
            event,
        )))
        }).await
    }

    /// Stores the values suggested for a leased tpe trial and what they were based on.
    pub async fn set_suggestion(
        &self,
        trial_id: &str,
        params: &TrialParams,
        basis: &SuggestionBasis,
    ) -> Result<()> {
        self.write(async {
            let mut tx = self.begin_write().await?;
            sqlx::query(
                "UPDATE trials SET params = $1, awaiting_suggestion = 0, suggestion_basis = $2 WHERE id = $3",
            )
            .bind(serde_json::to_string(params)?)
            .bind(serde_json::to_string(basis)?)
            .bind(trial_id)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            Ok(())
        })
        .await
    }

    /// What each suggested trial of a sweep was based on, by trial id.
    pub async fn suggestion_bases(
        &self,
        sweep_id: &str,
    ) -> Result<std::collections::HashMap<String, SuggestionBasis>> {
        let rows = sqlx::query(
            "SELECT id, suggestion_basis FROM trials WHERE sweep_id = $1 AND suggestion_basis IS NOT NULL",
        )
        .bind(sweep_id)
        .fetch_all(&self.reader)
        .await?;
        rows.iter()
            .map(|r| {
                let text: String = r.get("suggestion_basis");
                Ok((r.get("id"), serde_json::from_str(&text)?))
            })
            .collect()
    }

    /// Checks that `generation` is the trial's live lease; returns (sweep id, status).
    async fn check_lease(
        tx: &mut AnyConnection,
        trial_id: &str,
        generation: u64,
    ) -> Result<Result<(String, u32), ReportError>> {
        let row = sqlx::query(
            "SELECT sweep_id, status, generation, epochs_planned FROM trials WHERE id = $1",
        )
        .bind(trial_id)
        .fetch_optional(&mut *tx)
        .await?;
        let lease = row.as_ref().map(LeaseRow::from_row).transpose()?;
        Ok(lease_verdict(trial_id, generation, lease.as_ref()))
    }

    /// Records one epoch of a leased trial. An epoch already recorded (re-run after a crash
    /// between its report and its checkpoint) is replaced, never doubled; its event is appended
    /// again, so watchers see the values that now stand.
    ///
    /// Written by the group-commit task ([`ingest`]): reports that arrive together share one
    /// transaction; this returns once the one holding this report has committed (or failed).
    pub async fn record_epoch(
        &self,
        trial_id: &str,
        generation: u64,
        epoch: &EpochRecord,
        facts: Option<&TrialFacts>,
        checkpoint: Option<&FileRef>,
    ) -> Result<Result<StoredEvent, ReportError>> {
        let Some(reports) = &self.epoch_reports else {
            anyhow::bail!("this store cannot record epochs (opened read-only)");
        };
        let writer_stopped = || anyhow::anyhow!("the epoch writer has stopped");
        let (reply, answer) = tokio::sync::oneshot::channel();
        reports
            .send(ingest::EpochReport {
                trial_id: trial_id.to_string(),
                generation,
                epoch: epoch.clone(),
                facts: facts.cloned(),
                checkpoint: checkpoint.cloned(),
                reply,
            })
            .map_err(|_| writer_stopped())?;
        answer.await.map_err(|_| writer_stopped())?
    }

    /// Ends a leased trial with its result, and the sweep when that was its last open trial.
    pub async fn finish_trial(
        &self,
        trial_id: &str,
        generation: u64,
        result: &TrialResult,
    ) -> Result<Result<Vec<StoredEvent>, ReportError>> {
        self.write(async {
        let mut tx = self.begin_write().await?;
        let (sweep_id, _) = match Self::check_lease(&mut tx, trial_id, generation).await? {
            Ok(v) => v,
            Err(e) => return Ok(Err(e)),
        };
        sqlx::query(
            "UPDATE trials SET status = $1, error = $2, test_loss = $3, test_accuracy = $4, best_epoch = $5, weights_path = $6,
                    parameter_count = COALESCE($7, parameter_count), finished_at = $8,
                    weights_digest = $9, weights_size = $10, input_record = $11, lease_expires_at = NULL,
                    test_report = $13
             WHERE id = $12",
        )
        // Not prepared once for all: sqlx 0.8.6's Any driver sends a NULL f64 to PostgreSQL as
        // a float4, and a statement first prepared with a NULL test loss would then refuse
        // every real one ("incorrect binary data format"). Once per trial, so no cost.
        .persistent(false)
        .bind(result.status.as_str())
        .bind(&result.error)
        .bind(result.test_loss)
        .bind(result.test_accuracy)
        .bind(result.best_epoch.map(|v| v as i64))
        .bind(&result.weights_path)
        .bind(result.parameter_count.map(|v| v as i64))
        .bind(now())
        .bind(result.weights.as_ref().map(|w| w.digest.as_str()))
        .bind(result.weights.as_ref().map(|w| w.size as i64))
        .bind(&result.input_record)
        .bind(trial_id)
        .bind(&result.test_report)
        .execute(&mut *tx)
        .await?;
        if let Some(note) = &result.note {
            let row = sqlx::query("SELECT notes FROM trials WHERE id = $1")
                .bind(trial_id)
                .fetch_one(&mut *tx)
                .await?;
            let mut notes = string_list(&row, "notes")?;
            notes.push(note.clone());
            sqlx::query("UPDATE trials SET notes = $1 WHERE id = $2")
                .bind(serde_json::to_string(&notes)?)
                .bind(trial_id)
                .execute(&mut *tx)
                .await?;
        }
        let mut events = vec![
            append_event(
                &mut tx,
                &sweep_id,
                &Event::TrialFinished {
                    trial_id: trial_id.to_string(),
                    status: result.status,
                    test_accuracy: result.test_accuracy,
                    test_loss: result.test_loss,
                    error: result.error.clone(),
                },
            )
            .await?,
        ];
        events.extend(Self::maybe_finish_sweep(&mut tx, &sweep_id).await?);
        tx.commit().await?;
        Ok(Ok(events))
        }).await
    }

    /// ASHA promotions: queues the parked trials `ids` again, ahead of everything else of
    /// their priority, so they resume from their checkpoints before fresh trials start.
    /// Their lease attempt is given back (a park is no failure). Returns how many moved.
    pub async fn promote_parked(&self, ids: &[String]) -> Result<u32> {
        if ids.is_empty() {
            return Ok(0);
        }
        self.write(async {
            let mut tx = self.begin_write().await?;
            let mut moved = 0;
            for id in ids {
                let r = sqlx::query(
                    "UPDATE trials SET status = 'queued', worker = NULL, finished_at = NULL,
                            attempts = CASE WHEN attempts > 0 THEN attempts - 1 ELSE 0 END, error = NULL,
                            queue_seq = (SELECT MIN(queue_seq) - 1 FROM trials)
                     WHERE id = $1 AND status = 'parked'",
                )
                .bind(id)
                .execute(&mut *tx)
                .await?;
                moved += r.rows_affected() as u32;
            }
            tx.commit().await?;
            Ok(moved)
        })
        .await
    }

    /// Ends ASHA's waiting: when nothing of the sweep is queued or running any more, its
    /// parked trials (never promoted) become `pruned`, keeping their epochs and test
    /// metrics, and the sweep finishes. Returns the events written.
    pub async fn settle_parked(&self, sweep_id: &str) -> Result<Vec<StoredEvent>> {
        self.write(async {
            let mut tx = self.begin_write().await?;
            if Self::count_active(&mut tx, sweep_id).await? > 0 {
                return Ok(Vec::new());
            }
            // (id, park reason, test accuracy, test loss)
            type Parked = (String, Option<String>, Option<f64>, Option<f64>);
            let parked: Vec<Parked> = sqlx::query_as(
                "SELECT id, error, test_accuracy, test_loss FROM trials
                 WHERE sweep_id = $1 AND status = 'parked' ORDER BY idx",
            )
            .bind(sweep_id)
            .fetch_all(&mut *tx)
            .await?;
            let mut events = Vec::new();
            for (id, error, test_accuracy, test_loss) in parked {
                let error = cnnd_core::status::StopReason::Pruned(format!(
                    "asha: never promoted ({})",
                    error.unwrap_or_default()
                ))
                .to_string();
                sqlx::query("UPDATE trials SET status = 'pruned', error = $1 WHERE id = $2")
                    .bind(&error)
                    .bind(&id)
                    .execute(&mut *tx)
                    .await?;
                events.push(
                    append_event(
                        &mut tx,
                        sweep_id,
                        &Event::TrialFinished {
                            trial_id: id,
                            status: TrialStatus::Pruned,
                            test_accuracy,
                            test_loss,
                            error: Some(error),
                        },
                    )
                    .await?,
                );
            }
            events.extend(Self::maybe_finish_sweep(&mut tx, sweep_id).await?);
            tx.commit().await?;
            Ok(events)
        })
        .await
    }

    /// How many trials of the sweep are queued or running.
    pub async fn active_trials(&self, sweep_id: &str) -> Result<i64> {
        let mut conn = self.reader.acquire().await?;
        Self::count_active(&mut conn, sweep_id).await
    }

    async fn count_active(conn: &mut AnyConnection, sweep_id: &str) -> Result<i64> {
        Ok(sqlx::query_scalar(
            "SELECT COUNT(*) FROM trials WHERE sweep_id = $1 AND status IN ('queued', 'running')",
        )
        .bind(sweep_id)
        .fetch_one(conn)
        .await?)
    }

    /// Sweeps not finished that have parked trials (to settle after a restart).
    pub async fn sweeps_with_parked_trials(&self) -> Result<Vec<String>> {
        Ok(sqlx::query_scalar(
            "SELECT DISTINCT sweep_id FROM trials WHERE status = 'parked' ORDER BY sweep_id",
        )
        .fetch_all(&self.reader)
        .await?)
    }

    /// A worker lost its trial (process died, lease expired): queue it again while attempts
    /// remain, else fail it with `reason`. Returns the events written.
    /// A graceful release (`counts_as_attempt` false: the daemon is shutting down) takes the
    /// attempt back, so shutdowns never use up a trial's attempts.
    pub async fn release_trial(
        &self,
        trial_id: &str,
        generation: u64,
        reason: &str,
        max_attempts: u32,
        counts_as_attempt: bool,
    ) -> Result<Vec<StoredEvent>> {
        self.write(async {
        let mut tx = self.begin_write().await?;
        let (sweep_id, _) = match Self::check_lease(&mut tx, trial_id, generation).await? {
            Ok(v) => v,
            Err(_) => return Ok(Vec::new()),
        };
        let attempts: i64 = sqlx::query_scalar("SELECT attempts FROM trials WHERE id = $1")
            .bind(trial_id)
            .fetch_one(&mut *tx)
            .await?;
        let mut events = Vec::new();
        if !counts_as_attempt || (attempts as u32) < max_attempts {
            let attempts_after = if counts_as_attempt {
                attempts
            } else {
                (attempts - 1).max(0)
            };
            sqlx::query("UPDATE trials SET status = 'queued', worker = NULL, attempts = $1, error = $2 WHERE id = $3")
                .bind(attempts_after)
                .bind(format!("attempt {attempts}: {reason}"))
                .bind(trial_id)
                .execute(&mut *tx)
                .await?;
        } else {
            let error = format!("{reason} (attempt {attempts} of {max_attempts})");
            sqlx::query(
                "UPDATE trials SET status = 'failed', error = $1, finished_at = $2 WHERE id = $3",
            )
            .bind(&error)
            .bind(now())
            .bind(trial_id)
            .execute(&mut *tx)
            .await?;
            events.push(
                append_event(
                    &mut tx,
                    &sweep_id,
                    &Event::TrialFinished {
                        trial_id: trial_id.to_string(),
                        status: TrialStatus::Failed,
                        test_accuracy: None,
                        test_loss: None,
                        error: Some(error),
                    },
                )
                .await?,
            );
            events.extend(Self::maybe_finish_sweep(&mut tx, &sweep_id).await?);
        }
        tx.commit().await?;
        Ok(events)
        }).await
    }

    /// Cancels every open trial of a sweep. Returns the ids of trials that were running (their
    /// workers must be stopped), the number cancelled, and the events written.
    pub async fn cancel_sweep(
        &self,
        sweep_id: &str,
    ) -> Result<(Vec<(String, Option<String>)>, u32, Vec<StoredEvent>)> {
        self.write(async {
        let mut tx = self.begin_write().await?;
        let running: Vec<(String, Option<String>)> = sqlx::query_as(
            "SELECT id, worker FROM trials WHERE sweep_id = $1 AND status = 'running'",
        )
        .bind(sweep_id)
        .fetch_all(&mut *tx)
        .await?;
        let ended = now();
        let open: Vec<(String,)> = sqlx::query_as(&format!("SELECT id FROM trials WHERE sweep_id = $1 AND status IN {OPEN_STATUSES} ORDER BY idx"))
            .bind(sweep_id)
            .fetch_all(&mut *tx)
            .await?;
        let n = sqlx::query(
            &format!("UPDATE trials SET status = 'cancelled', finished_at = $1, error = 'cancelled by request'
             WHERE sweep_id = $2 AND status IN {OPEN_STATUSES}"),
        )
        .bind(&ended)
        .bind(sweep_id)
        .execute(&mut *tx)
        .await?
        .rows_affected() as u32;
        let mut events = Vec::new();
        for (trial_id,) in open {
            let event = Event::TrialFinished {
                trial_id,
                status: TrialStatus::Cancelled,
                test_accuracy: None,
                test_loss: None,
                error: Some("cancelled by request".into()),
            };
            events.push(append_event(&mut tx, sweep_id, &event).await?);
        }
        if n > 0 {
            sqlx::query("UPDATE sweeps SET status = 'cancelled', finished_at = $1 WHERE id = $2")
                .bind(&ended)
                .bind(sweep_id)
                .execute(&mut *tx)
                .await?;
            events.push(
                append_event(
                    &mut tx,
                    sweep_id,
                    &Event::SweepFinished {
                        status: SweepStatus::Cancelled,
                        best_trial_id: None,
                        best_test_accuracy: None,
                    },
                )
                .await?,
            );
        }
        tx.commit().await?;
        Ok((running, n, events))
        }).await
    }

    /// Holds (`paused` true) or releases a sweep's queued trials. Returns how many queued
    /// trials that affects.
    pub async fn set_paused(&self, sweep_id: &str, paused: bool) -> Result<u32> {
        self.write(async {
            let mut tx = self.begin_write().await?;
            sqlx::query("UPDATE sweeps SET paused = $1 WHERE id = $2")
                .bind(paused as i64)
                .bind(sweep_id)
                .execute(&mut *tx)
                .await?;
            let queued: i64 = sqlx::query_scalar(
                "SELECT COUNT(*) FROM trials WHERE sweep_id = $1 AND status = 'queued'",
            )
            .bind(sweep_id)
            .fetch_one(&mut *tx)
            .await?;
            tx.commit().await?;
            Ok(queued as u32)
        })
        .await
    }

    /// Marks the sweep finished when none of its trials is queued or running.
    async fn maybe_finish_sweep(
        tx: &mut AnyConnection,
        sweep_id: &str,
    ) -> Result<Vec<StoredEvent>> {
        let open: i64 = sqlx::query_scalar(&format!(
            "SELECT COUNT(*) FROM trials WHERE sweep_id = $1 AND status IN {OPEN_STATUSES}"
        ))
        .bind(sweep_id)
        .fetch_one(&mut *tx)
        .await?;
        if open > 0 {
            return Ok(Vec::new());
        }
        let status: String = sqlx::query_scalar("SELECT status FROM sweeps WHERE id = $1")
            .bind(sweep_id)
            .fetch_one(&mut *tx)
            .await?;
        if status.parse::<SweepStatus>()?.has_ended() {
            return Ok(Vec::new());
        }
        sqlx::query("UPDATE sweeps SET status = 'finished', finished_at = $1 WHERE id = $2")
            .bind(now())
            .bind(sweep_id)
            .execute(&mut *tx)
            .await?;
        let objective: String = sqlx::query_scalar("SELECT objective FROM sweeps WHERE id = $1")
            .bind(sweep_id)
            .fetch_one(&mut *tx)
            .await?;
        let rows = sqlx::query(&format!(
            "SELECT {TRIAL_COLUMNS} {TRIAL_FROM} WHERE t.sweep_id = $1 ORDER BY t.idx"
        ))
        .bind(sweep_id)
        .fetch_all(&mut *tx)
        .await?;
        let trials = rows
            .iter()
            .map(trial_from_row)
            .collect::<Result<Vec<_>>>()?;
        let best = best_trial(&trials, cnnd_core::sweep::Objective::from_name(&objective));
        let event = append_event(
            tx,
            sweep_id,
            &Event::SweepFinished {
                status: SweepStatus::Finished,
                best_trial_id: best.map(|b| b.id.clone()),
                best_test_accuracy: best.and_then(|b| b.test_accuracy),
            },
        )
        .await?;
        Ok(vec![event])
    }

    /// Trials left `running` by a previous daemon process, with their generation and when
    /// their lease runs out (ms since the Unix epoch; None: leased before leases were
    /// persisted, so it has run out).
    pub async fn running_leases(&self) -> Result<Vec<(String, u64, Option<i64>)>> {
        let rows: Vec<(String, i64, Option<i64>)> = sqlx::query_as(
            "SELECT id, generation, lease_expires_at FROM trials WHERE status = 'running'",
        )
        .fetch_all(&self.writer)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(id, g, expires)| (id, g as u64, expires))
            .collect())
    }

    /// The data manifests of the sweeps not ended yet (a restarted daemon serves their data
    /// files again).
    pub async fn open_manifests(&self) -> Result<Vec<FileRef>> {
        let rows: Vec<(String,)> = sqlx::query_as(
            "SELECT DISTINCT manifest_digest FROM sweeps
             WHERE manifest_digest IS NOT NULL AND status NOT IN ('finished', 'cancelled')",
        )
        .fetch_all(&self.reader)
        .await?;
        // The size is not needed to read a manifest back; the blob store checks the digest.
        Ok(rows
            .into_iter()
            .map(|(digest,)| FileRef {
                name: "manifest.json".into(),
                digest,
                size: 0,
            })
            .collect())
    }

    /// Pushes the lease deadlines of running trials (heartbeats renew leases; the daemon
    /// writes the renewals in batches). Trials no longer running at that generation are
    /// left alone.
    pub async fn renew_leases(&self, leases: &[(String, u64)], expires_at_ms: i64) -> Result<()> {
        if leases.is_empty() {
            return Ok(());
        }
        self.write(async {
            let mut tx = self.begin_write().await?;
            for chunk in leases.chunks(RENEWALS_PER_STATEMENT) {
                let sql = format!(
                    "UPDATE trials SET lease_expires_at = $1
                     WHERE status = 'running' AND (id, generation) IN (VALUES {})",
                    values_placeholders(chunk.len(), 2, 2)
                );
                let mut update = sqlx::query(&sql).bind(expires_at_ms);
                for (id, generation) in chunk {
                    update = update.bind(id).bind(*generation as i64);
                }
                update.execute(&mut *tx).await?;
            }
            tx.commit().await?;
            Ok(())
        })
        .await
    }

    /// Counts of rows per table, for tests and diagnostics.
    pub async fn table_counts(&self) -> Result<(i64, i64, i64, i64)> {
        let r = sqlx::query(
            "SELECT (SELECT COUNT(*) FROM sweeps) AS s, (SELECT COUNT(*) FROM trials) AS t,
                    (SELECT COUNT(*) FROM epochs) AS e, (SELECT COUNT(*) FROM events) AS v",
        )
        .fetch_one(&self.reader)
        .await?;
        Ok((r.get("s"), r.get("t"), r.get("e"), r.get("v")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    /// A file name with URL syntax in it (`?mode=ro`) is a file name, not options: the
    /// store is created there, written and read back; a `sqlite:` URL keeps its options.
    #[tokio::test]
    async fn a_database_path_is_taken_literally_and_a_sqlite_url_as_a_url() {
        let dir = tempfile::tempdir().unwrap();
        let odd = dir.path().join("a?mode=ro.sqlite");
        let store = Store::open(&odd)
            .await
            .expect("opening a path with '?' in it");
        store
            .set_paused("no-such-sweep", true)
            .await
            .expect("a write on the odd path");
        assert_eq!(store.table_counts().await.unwrap(), (0, 0, 0, 0));
        drop(store);
        assert!(odd.exists(), "the database is not at {}", odd.display());

        let plain = dir.path().join("b.sqlite");
        let url = PathBuf::from(format!("sqlite://{}?mode=rwc", plain.display()));
        let store = Store::open(&url).await.expect("opening a sqlite: URL");
        assert_eq!(store.table_counts().await.unwrap(), (0, 0, 0, 0));
        drop(store);
        assert!(plain.exists());
        assert!(
            !Path::new("sqlite:").exists(),
            "a folder named after the URL"
        );
    }

    fn epoch(n: u32, val_accuracy: f64, val_loss: f64) -> EpochRecord {
        EpochRecord {
            epoch: n,
            train_loss: 0.5,
            train_accuracy: 0.5,
            val_loss,
            val_accuracy,
            seconds: 1.0,
            images_per_second: 100.0,
            learning_rate: 1e-3 / n as f64,
        }
    }

    /// A trial to run in [`finished_sweep`]: its epochs' (validation accuracy, loss), its
    /// test accuracy and its parameter count.
    type TrialPlan<'a> = (&'a [(f64, f64)], f64, u64);

    /// Runs a sweep of three trials to its end through the store: each trial's epochs
    /// (validation accuracy, loss), test accuracy and size as given. Returns the store, the
    /// sweep id and its `SweepFinished` event.
    async fn finished_sweep(
        objective: &str,
        trials: &[TrialPlan<'_>],
    ) -> (tempfile::TempDir, Store, String, Event) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("s.sqlite")).await.unwrap();
        let request: cnnd_core::sweep::SweepRequest = serde_json::from_value(serde_json::json!({
            "dataset": "mnist", "space": {"seed": (0..trials.len()).collect::<Vec<_>>()},
            "fixed": {"epochs": 3}, "objective": objective}))
        .unwrap();
        let spec = request
            .validate(
                cnnd_core::sweep::SweepLimits::default(),
                cnnd_core::datasets::resolve_builtin,
            )
            .unwrap();
        store
            .insert_sweep("sw", &spec, None, u32::MAX)
            .await
            .unwrap()
            .unwrap();
        let mut last = Vec::new();
        for _ in trials {
            let (lease, _) = store
                .lease_next(&LeaseAsk::new("w", &["auto", "cpu"], "cpu"))
                .await
                .unwrap()
                .unwrap();
            let i = lease.params.seed as usize;
            let (epochs, test_accuracy, size) = trials[i];
            for (n, (acc, loss)) in epochs.iter().enumerate() {
                store
                    .record_epoch(
                        &lease.trial_id,
                        lease.generation,
                        &epoch(n as u32 + 1, *acc, *loss),
                        None,
                        None,
                    )
                    .await
                    .unwrap()
                    .unwrap();
            }
            let result = TrialResult {
                test_accuracy: Some(test_accuracy),
                test_loss: Some(0.1),
                parameter_count: Some(size),
                ..TrialResult::of(TrialStatus::Succeeded)
            };
            last = store
                .finish_trial(&lease.trial_id, lease.generation, &result)
                .await
                .unwrap()
                .unwrap();
        }
        let finished = last.pop().unwrap().event;
        (dir, store, "sw".into(), finished)
    }

    fn best_of(event: &Event) -> (Option<String>, Option<f64>) {
        match event {
            Event::SweepFinished {
                best_trial_id,
                best_test_accuracy,
                ..
            } => (best_trial_id.clone(), *best_test_accuracy),
            other => panic!("not the end of the sweep: {other:?}"),
        }
    }

    /// The sweep's best trial is chosen by its objective on validation data, never by test
    /// accuracy: here t0 has the best validation accuracy (its best epoch, not its last)
    /// but the worst test accuracy, and it is the best everywhere the best is shown; its own
    /// test accuracy is what is reported.
    #[tokio::test]
    async fn the_best_trial_is_chosen_on_validation_data_by_the_objective() {
        let trials: [TrialPlan; 3] = [
            (&[(0.90, 0.40), (0.97, 0.20), (0.95, 0.25)], 0.91, 500),
            (&[(0.93, 0.30), (0.96, 0.10), (0.96, 0.12)], 0.99, 500),
            (&[(0.80, 0.60), (0.85, 0.50), (0.86, 0.45)], 0.98, 500),
        ];
        let (_dir, store, sweep, finished) = finished_sweep("val_accuracy", &trials).await;
        assert_eq!(best_of(&finished), (Some("sw-t0".into()), Some(0.91)));
        let rows = store.trials_of(&sweep).await.unwrap();
        assert_eq!(rows[0].best_val_accuracy, Some(0.97));
        assert_eq!(rows[1].best_val_loss, Some(0.10));
        let objective = cnnd_core::sweep::Objective::ValAccuracy;
        assert_eq!(best_trial(&rows, objective).unwrap().id, "sw-t0");
        let progress = store.sweep_progress().await.unwrap();
        assert_eq!(progress[0].best_trial_id.as_deref(), Some("sw-t0"));
        assert_eq!(progress[0].best_test_accuracy, Some(0.91));

        // By validation loss (lower is better) the same history picks t1.
        let (_dir, store, sweep, finished) = finished_sweep("val_loss", &trials).await;
        assert_eq!(best_of(&finished), (Some("sw-t1".into()), Some(0.99)));
        let rows = store.trials_of(&sweep).await.unwrap();
        assert_eq!(
            best_trial(&rows, cnnd_core::sweep::Objective::ValLoss)
                .unwrap()
                .id,
            "sw-t1"
        );
    }

    /// Equal validation values: the smaller model wins, then the lower index.
    #[tokio::test]
    async fn ties_on_the_objective_go_to_the_smaller_model() {
        let trials: [TrialPlan; 3] = [
            (&[(0.95, 0.2)], 0.90, 900),
            (&[(0.95, 0.2)], 0.91, 300),
            (&[(0.95, 0.2)], 0.92, 300),
        ];
        let (_dir, _store, _sweep, finished) = finished_sweep("val_accuracy", &trials).await;
        assert_eq!(best_of(&finished), (Some("sw-t1".into()), Some(0.91)));
    }
}
