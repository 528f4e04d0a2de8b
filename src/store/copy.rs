//! Moving a history between stores (`cnnd store copy --from --to`, `cnnd store checksum`):
//! every sweep, trial, epoch and event, from SQLite to PostgreSQL or back, verified by row
//! counts and a SHA-256 per table over a canonical form of the rows (ordered by primary
//! key; integers in decimal, reals as their shortest exact form, JSON with sorted keys), so
//! two stores that hold the same history give the same checksums whatever their backend.
//!
//! Owns: the table and column lists of a copy, the canonical form, the checksums.
//! Must not touch: the daemon (run it stopped: a copy reads a history that does not move).

use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};
use sqlx::any::AnyRow;
use sqlx::Row;

use super::{values_placeholders, Backend, Store};

/// How a column is read, written and put in canonical form.
#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Int,
    Real,
    Text,
    /// Text holding JSON: its keys are sorted in the canonical form.
    Json,
}

/// A table of the copy: its name, the columns copied (in order), and its primary key.
struct Table {
    name: &'static str,
    columns: &'static [(&'static str, Kind)],
    key: Key,
}

/// A primary key, which pages are read in the order of (keyset pagination: each page starts
/// after the last row of the one before, so reading a million rows costs no more per page
/// than reading the first). Text keys compare byte-wise on both backends (COLLATE "C" in
/// migrations/postgres), so both read rows in the same order.
#[derive(Clone, Copy)]
enum Key {
    /// One text column.
    Text(&'static str),
    /// One integer column.
    Int(&'static str),
    /// A text column, then an integer column.
    TextInt(&'static str, &'static str),
}

/// Where the last page ended.
enum After {
    Start,
    Text(String),
    Int(i64),
    TextInt(String, i64),
}

impl Table {
    /// The next `n` rows after `after`, in key order, with `list` as the columns.
    async fn page(
        &self,
        pool: &sqlx::AnyPool,
        list: &str,
        after: &After,
        n: usize,
    ) -> Result<Vec<AnyRow>> {
        let (order, condition) = match self.key {
            Key::Text(k) | Key::Int(k) => (k.to_string(), format!("{k} > $1")),
            Key::TextInt(a, b) => (
                format!("{a}, {b}"),
                format!("({a} > $1 OR ({a} = $1 AND {b} > $2))"),
            ),
        };
        let filter = match after {
            After::Start => String::new(),
            _ => format!("WHERE {condition}"),
        };
        let sql = format!(
            "SELECT {list} FROM {} {filter} ORDER BY {order} LIMIT {n}",
            self.name
        );
        let query = sqlx::query(&sql);
        let query = match after {
            After::Start => query,
            After::Text(t) => query.bind(t.clone()),
            After::Int(i) => query.bind(*i),
            After::TextInt(t, i) => query.bind(t.clone()).bind(*i),
        };
        query
            .fetch_all(pool)
            .await
            .with_context(|| format!("reading {}", self.name))
    }

    /// Where a page that ended with `row` ended.
    fn after(&self, row: &AnyRow) -> Result<After> {
        Ok(match self.key {
            Key::Text(k) => After::Text(row.try_get(k)?),
            Key::Int(k) => After::Int(row.try_get(k)?),
            Key::TextInt(a, b) => After::TextInt(row.try_get(a)?, row.try_get(b)?),
        })
    }
}

use Kind::{Int, Json, Real, Text};

/// The tables in the order they are written (foreign keys point backwards). The trial
/// columns kept by the epoch triggers (`epoch_count`, `last_epoch`, `best_val_accuracy`,
/// `best_val_loss`) are not copied: the destination computes them from the epochs it
/// received (its triggers on SQLite, one recount per trial on PostgreSQL), and the
/// checksum, which covers them, proves they came out the same.
const TABLES: &[Table] = &[
    Table {
        name: "sweeps",
        columns: &[
            ("id", Text),
            ("name", Text),
            ("dataset", Text),
            ("strategy", Text),
            ("varied", Json),
            ("spec", Json),
            ("objective", Text),
            ("priority", Int),
            ("max_parallel", Int),
            ("device", Text),
            ("status", Text),
            ("created_at", Text),
            ("finished_at", Text),
            ("paused", Int),
            ("early_stopping", Json),
            ("tpe", Json),
            ("manifest_digest", Text),
        ],
        key: Key::Text("id"),
    },
    Table {
        name: "trials",
        columns: &[
            ("id", Text),
            ("sweep_id", Text),
            ("idx", Int),
            ("params", Json),
            ("status", Text),
            ("priority", Int),
            ("queue_seq", Int),
            ("device", Text),
            ("epochs_planned", Int),
            ("worker", Text),
            ("generation", Int),
            ("attempts", Int),
            ("error", Text),
            ("parameter_count", Int),
            ("train_examples", Int),
            ("val_examples", Int),
            ("test_examples", Int),
            ("test_loss", Real),
            ("test_accuracy", Real),
            ("best_epoch", Int),
            ("weights_path", Text),
            ("ran_on", Text),
            ("started_at", Text),
            ("finished_at", Text),
            ("notes", Json),
            ("frozen", Json),
            ("reinitialised", Json),
            ("skipped_files", Int),
            ("provenance", Json),
            ("awaiting_suggestion", Int),
            ("suggestion_basis", Json),
            ("weights_digest", Text),
            ("weights_size", Int),
            ("input_record", Json),
            ("test_report", Json),
            ("data_preview", Json),
            ("checkpoint_format", Int),
            ("lease_expires_at", Int),
        ],
        key: Key::Text("id"),
    },
    Table {
        name: "epochs",
        columns: &[
            ("trial_id", Text),
            ("epoch", Int),
            ("train_loss", Real),
            ("train_accuracy", Real),
            ("val_loss", Real),
            ("val_accuracy", Real),
            ("seconds", Real),
            ("images_per_second", Real),
            ("recorded_at", Text),
            ("checkpoint_digest", Text),
            ("checkpoint_size", Int),
            ("learning_rate", Real),
        ],
        key: Key::TextInt("trial_id", "epoch"),
    },
    Table {
        name: "events",
        columns: &[
            ("id", Int),
            ("sweep_id", Text),
            ("at", Text),
            ("payload", Json),
        ],
        key: Key::Int("id"),
    },
];

/// Columns only the checksum reads: the trial columns the epoch triggers keep.
const TRIGGER_KEPT: &[(&str, Kind)] = &[
    ("epoch_count", Int),
    ("last_epoch", Int),
    ("best_val_accuracy", Real),
    ("best_val_loss", Real),
];

/// Rows read and written per statement (at most 36 columns: 7,200 parameters, below both
/// backends' limits).
const ROWS_PER_BATCH: usize = 200;

/// One table's row count and checksum.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableSum {
    pub table: &'static str,
    pub rows: u64,
    pub sha256: String,
}

/// A column value as read from either backend.
enum Value {
    Int(Option<i64>),
    Real(Option<f64>),
    Text(Option<String>),
}

fn read(row: &AnyRow, column: &str, kind: Kind) -> Result<Value> {
    Ok(match kind {
        Int => Value::Int(row.try_get(column)?),
        Real => Value::Real(row.try_get(column)?),
        Text | Json => Value::Text(row.try_get(column)?),
    })
}

/// JSON with every object's keys sorted, compact.
fn canonical_json(text: &str) -> String {
    fn sort(v: serde_json::Value) -> serde_json::Value {
        match v {
            serde_json::Value::Object(map) => {
                let sorted: std::collections::BTreeMap<String, serde_json::Value> =
                    map.into_iter().map(|(k, v)| (k, sort(v))).collect();
                serde_json::Value::Object(sorted.into_iter().collect())
            }
            serde_json::Value::Array(items) => {
                serde_json::Value::Array(items.into_iter().map(sort).collect())
            }
            other => other,
        }
    }
    match serde_json::from_str::<serde_json::Value>(text) {
        Ok(v) => sort(v).to_string(),
        // Not JSON after all: the text itself.
        Err(_) => text.to_string(),
    }
}

/// Adds one value's canonical form to a table's hash: a type tag, then the value, then a
/// separator no value contains unescaped.
fn hash_value(hash: &mut Sha256, value: &Value, kind: Kind) {
    let text = match value {
        Value::Int(None) | Value::Real(None) | Value::Text(None) => "\u{0}null".to_string(),
        Value::Int(Some(v)) => format!("i{v}"),
        Value::Real(Some(v)) => format!("r{v:?}"),
        Value::Text(Some(t)) if kind == Json => format!("j{}", canonical_json(t)),
        Value::Text(Some(t)) => format!("t{}", t.replace('\\', "\\\\").replace('\u{1f}', "\\x1f")),
    };
    hash.update(text.as_bytes());
    hash.update([0x1f]);
}

impl Store {
    /// Row counts and checksums of every table (see the module's comment).
    pub async fn checksums(&self) -> Result<Vec<TableSum>> {
        let mut sums = Vec::new();
        for table in TABLES {
            let mut columns: Vec<(&str, Kind)> = table.columns.to_vec();
            if table.name == "trials" {
                columns.extend_from_slice(TRIGGER_KEPT);
            }
            let list = columns
                .iter()
                .map(|(c, _)| *c)
                .collect::<Vec<_>>()
                .join(", ");
            let mut hash = Sha256::new();
            let mut rows = 0u64;
            let mut after = After::Start;
            loop {
                let batch = table
                    .page(&self.reader, &list, &after, CHECKSUM_PAGE)
                    .await?;
                for row in &batch {
                    for (column, kind) in &columns {
                        hash_value(&mut hash, &read(row, column, *kind)?, *kind);
                    }
                    hash.update([0x1e]);
                }
                rows += batch.len() as u64;
                match batch.last() {
                    Some(last) if batch.len() == CHECKSUM_PAGE => after = table.after(last)?,
                    _ => break,
                }
            }
            sums.push(TableSum {
                table: table.name,
                rows,
                sha256: format!("{:x}", hash.finalize()),
            });
        }
        Ok(sums)
    }

    /// Copies this store's whole history into `to`, which must be empty, in one transaction
    /// there (a failed copy leaves it empty), then sets its event id sequence after the
    /// copied ids. `progress` hears (table, rows copied so far, rows in all).
    pub async fn copy_into(
        &self,
        to: &Store,
        mut progress: impl FnMut(&str, u64, u64),
    ) -> Result<()> {
        let (sweeps, trials, epochs, events) = to.table_counts().await?;
        if sweeps + trials + epochs + events > 0 {
            bail!(
                "the destination is not empty ({sweeps} sweeps, {trials} trials, {epochs} epochs, {events} events): copy into a new database"
            );
        }
        let (s, t, e, v) = self.table_counts().await?;
        let totals = [s, t, e, v];
        let mut tx = to.writer.begin().await?;
        // On PostgreSQL every trigger update writes a new version of the (wide) trial row:
        // a million epochs through the insert trigger left the trials table at 1.1 GB for
        // 10,000 rows, and every later trial query 50-100x slower. The copy turns the
        // epoch triggers off (the tables' owner may; the lock is the transaction's) and sets
        // the columns they keep once per trial at the end. SQLite updates rows in place.
        let postgres = to.backend == Backend::Postgres;
        if postgres {
            sqlx::query("ALTER TABLE epochs DISABLE TRIGGER USER")
                .execute(&mut *tx)
                .await?;
        }
        for (table, total) in TABLES.iter().zip(totals) {
            let list = table
                .columns
                .iter()
                .map(|(c, _)| *c)
                .collect::<Vec<_>>()
                .join(", ");
            let mut copied = 0u64;
            progress(table.name, 0, total as u64);
            let mut after = After::Start;
            loop {
                let batch = table
                    .page(&self.reader, &list, &after, ROWS_PER_BATCH)
                    .await?;
                let Some(last) = batch.last() else {
                    break;
                };
                after = table.after(last)?;
                let sql = format!(
                    "INSERT INTO {} ({list}) VALUES {}",
                    table.name,
                    values_placeholders(batch.len(), table.columns.len(), 1)
                );
                // Not prepared: a statement per batch size, and NULL reals (see finish_trial).
                let mut insert = sqlx::query(&sql).persistent(false);
                for row in &batch {
                    for (column, kind) in table.columns {
                        insert = match read(row, column, *kind)? {
                            Value::Int(v) => insert.bind(v),
                            Value::Real(v) => insert.bind(v),
                            Value::Text(v) => insert.bind(v),
                        };
                    }
                }
                insert
                    .execute(&mut *tx)
                    .await
                    .with_context(|| format!("writing {}", table.name))?;
                copied += batch.len() as u64;
                progress(table.name, copied, total as u64);
            }
        }
        if postgres {
            sqlx::query(
                "UPDATE trials SET
                    epoch_count = (SELECT COUNT(*) FROM epochs WHERE epochs.trial_id = trials.id),
                    last_epoch = (SELECT MAX(epoch) FROM epochs WHERE epochs.trial_id = trials.id),
                    best_val_accuracy = (SELECT MAX(val_accuracy) FROM epochs WHERE epochs.trial_id = trials.id),
                    best_val_loss = (SELECT MIN(val_loss) FROM epochs WHERE epochs.trial_id = trials.id)",
            )
            .execute(&mut *tx)
            .await?;
            sqlx::query("ALTER TABLE epochs ENABLE TRIGGER USER")
                .execute(&mut *tx)
                .await?;
            sqlx::query(
                "SELECT setval(pg_get_serial_sequence('events', 'id'), COALESCE(MAX(id), 0) + 1, false) FROM events",
            )
            .execute(&mut *tx)
            .await?;
        }
        // SQLite's AUTOINCREMENT counter follows explicit ids by itself.
        tx.commit().await?;
        // Planner statistics for the filled tables: until autovacuum gets to them, PostgreSQL
        // plans for empty ones (a 1,000-trial submit took 190 ms instead of 25 without this).
        if to.backend == Backend::Postgres {
            sqlx::query("ANALYZE").execute(&to.writer).await?;
        }
        Ok(())
    }
}

/// Rows per page when checksumming.
const CHECKSUM_PAGE: usize = 5000;
