//! Epoch ingestion: group commit of epoch reports. Every report still waits for the
//! transaction that stores it, but reports that arrive while a transaction is being written
//! go into the next one together, and each table gets one multi-row statement per
//! transaction. The fixed cost of a report (BEGIN, a round trip to SQLite's thread or to
//! the PostgreSQL server per statement, the commit) is then shared by everyone waiting; one
//! reporter alone sees one transaction per report, as before.
//!
//! Owns: the batching task behind [`Store::record_epoch`] and its statements.
//! Must not touch: any other write of the store (they keep one transaction per change).

use std::collections::HashMap;

use anyhow::{anyhow, Result};
use sqlx::{AnyConnection, Row};
use tokio::sync::{mpsc, oneshot};

use cnnd_core::content::FileRef;
use cnnd_core::epoch::EpochRecord;

use super::{
    append_events, lease_verdict, now, placeholder_list, store_facts, values_placeholders, Event,
    LeaseRow, ReportError, Store, StoredEvent, TrialFacts,
};

/// What a report is answered: the stored event, a refusal, or the store's error.
pub(super) type Outcome = Result<Result<StoredEvent, ReportError>>;

/// One epoch report waiting for its transaction.
pub(super) struct EpochReport {
    pub trial_id: String,
    pub generation: u64,
    pub epoch: EpochRecord,
    pub facts: Option<TrialFacts>,
    /// The checkpoint written after this epoch (uploaded before the report).
    pub checkpoint: Option<FileRef>,
    pub reply: oneshot::Sender<Outcome>,
}

/// Most reports in one transaction: 11 bound values per epoch row, far below SQLite's limit
/// of 32,766 and PostgreSQL's of 65,535, and a transaction short enough not to hold other writes back.
const MAX_BATCH: usize = 256;

/// Starts the task that writes the reports sent to the returned channel. The task holds a
/// clone of the store without a sender, so it ends when the last `Store` that can send drops.
pub(super) fn spawn(store: Store) -> mpsc::UnboundedSender<EpochReport> {
    let (sender, mut receiver) = mpsc::unbounded_channel::<EpochReport>();
    tokio::spawn(async move {
        let mut batch = Vec::with_capacity(MAX_BATCH);
        // Waits only while nothing is queued; takes everything queued, up to MAX_BATCH.
        while receiver.recv_many(&mut batch, MAX_BATCH).await > 0 {
            linger(&mut receiver, &mut batch).await;
            let reports = std::mem::take(&mut batch);
            let outcomes = match write_with_retries(&store, &reports).await {
                Ok(outcomes) => outcomes.into_iter().map(Ok).collect(),
                // One bad report must not fail the others: each alone, so only it fails.
                Err(_) if reports.len() > 1 => {
                    let mut outcomes = Vec::with_capacity(reports.len());
                    for report in reports.chunks(1) {
                        outcomes.push(match write_with_retries(&store, report).await {
                            Ok(mut one) => Ok(one.pop().expect("one answer per report")),
                            Err(e) => Err(e),
                        });
                    }
                    outcomes
                }
                Err(e) => vec![Err(e)],
            };
            for (report, outcome) in reports.into_iter().zip(outcomes) {
                // A reporter that gave up (its request was cancelled) is not an error.
                let _ = report.reply.send(outcome);
            }
        }
    });
    sender
}

/// Times a batch is tried when its transaction fails for a reason that may pass (the
/// database busy or locked past the busy timeout, an I/O error), with pauses of 20 ms,
/// 80 ms, 320 ms and 1.3 s between tries.
const WRITE_TRIES: u32 = 5;

/// Writes a batch in one transaction, trying again after errors that may pass. Every try
/// is a whole transaction: a failed one rolled back completely.
async fn write_with_retries(
    store: &Store,
    reports: &[EpochReport],
) -> Result<Vec<std::result::Result<StoredEvent, ReportError>>> {
    let mut pause = std::time::Duration::from_millis(20);
    let mut tries = 1;
    loop {
        match store.write(store_epochs(store, reports)).await {
            Ok(outcomes) => return Ok(outcomes),
            Err(e) if tries < WRITE_TRIES && may_pass(&e) => {
                tracing::warn!(
                    tries,
                    reports = reports.len(),
                    "epoch batch not written, trying again: {e:#}"
                );
                tokio::time::sleep(pause).await;
                pause *= 4;
                tries += 1;
            }
            Err(e) => return Err(anyhow!("{e:#}")),
        }
    }
}

/// True for store errors that another try may not meet: SQLite busy or locked (any
/// extended code of SQLITE_BUSY = 5 or SQLITE_LOCKED = 6), I/O errors; PostgreSQL's
/// serialization failures and deadlocks (SQLSTATE class 40) and lost connections (class 08);
/// pool time-outs. Constraint violations and bad values fail the same way every time.
fn may_pass(e: &anyhow::Error) -> bool {
    e.chain()
        .any(|cause| match cause.downcast_ref::<sqlx::Error>() {
            Some(sqlx::Error::Database(db)) => match db.code() {
                // SQLSTATE: five characters (SQLite's codes have at most four digits).
                Some(code) if code.len() == 5 => code.starts_with("40") || code.starts_with("08"),
                Some(code) => code
                    .parse::<i64>()
                    .is_ok_and(|code| matches!(code & 0xff, 5 | 6 | 10)),
                None => false,
            },
            Some(sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::WorkerCrashed) => {
                true
            }
            _ => false,
        })
}

/// Most times the batching task yields to let reporters add to a batch before writing it.
const LINGER_YIELDS: usize = 4;

/// Lets the reporters the last commit answered (they are about to send again) add to the
/// batch before it is written: yields to the runtime and takes what arrived, while reports
/// keep arriving. Alone, a reporter waits one yield, a few microseconds.
async fn linger(receiver: &mut mpsc::UnboundedReceiver<EpochReport>, batch: &mut Vec<EpochReport>) {
    for _ in 0..LINGER_YIELDS {
        if batch.len() >= MAX_BATCH {
            return;
        }
        tokio::task::yield_now().await;
        let before = batch.len();
        while batch.len() < MAX_BATCH {
            match receiver.try_recv() {
                Ok(report) => batch.push(report),
                Err(_) => break,
            }
        }
        if batch.len() == before {
            return;
        }
    }
}

/// Stores a batch of reports in one transaction: one query for the leases, one multi-row
/// upsert of the epochs, the trial facts of first reports, and one multi-row insert of the
/// events. Answers in the order of `reports`.
async fn store_epochs(
    store: &Store,
    reports: &[EpochReport],
) -> Result<Vec<std::result::Result<StoredEvent, ReportError>>> {
    let mut tx = store.begin_write().await?;

    // Each distinct trial id once, the list padded (with its last id) to a power of two:
    // nine statement texts in all, each prepared once (sqlx's statement cache holds 100
    // per connection, and the batch's inserts take one per batch size already).
    let mut ids: Vec<&str> = reports.iter().map(|r| r.trial_id.as_str()).collect();
    ids.sort_unstable();
    ids.dedup();
    let padded = ids.len().next_power_of_two();
    let mut leases: HashMap<String, LeaseRow> = HashMap::new();
    let sql = format!(
        "SELECT id, sweep_id, status, generation, epochs_planned FROM trials WHERE id IN ({})",
        placeholder_list(1, padded)
    );
    let mut select = sqlx::query(&sql);
    for i in 0..padded {
        select = select.bind(ids[i.min(ids.len() - 1)]);
    }
    let rows = select.fetch_all(&mut *tx).await?;
    for row in rows {
        leases.insert(row.get("id"), LeaseRow::from_row(&row)?);
    }
    let verdicts: Vec<_> = reports
        .iter()
        .map(|r| lease_verdict(&r.trial_id, r.generation, leases.get(&r.trial_id)))
        .collect();
    let accepted: Vec<(&EpochReport, &(String, u32))> = reports
        .iter()
        .zip(&verdicts)
        .filter_map(|(r, v)| v.as_ref().ok().map(|lease| (r, lease)))
        .collect();

    let mut stored = Vec::new().into_iter();
    if !accepted.is_empty() {
        insert_epochs(&mut tx, &accepted).await?;
        for (r, _) in &accepted {
            if let Some(facts) = &r.facts {
                store_facts(&mut tx, &r.trial_id, facts).await?;
            }
        }
        let events = accepted
            .iter()
            .map(|(r, (sweep_id, epochs_planned))| {
                let event = Event::EpochFinished {
                    trial_id: r.trial_id.clone(),
                    epochs_planned: *epochs_planned,
                    metrics: r.epoch.clone(),
                };
                (sweep_id.clone(), event)
            })
            .collect();
        stored = append_events(&mut tx, events).await?.into_iter();
    }
    tx.commit().await?;
    Ok(verdicts
        .into_iter()
        .map(|v| v.map(|_| stored.next().expect("one event per accepted report")))
        .collect())
}

/// One multi-row upsert of the accepted reports' epochs. An epoch already recorded (re-run
/// after a crash) is replaced; rows of one statement are applied in order, so a repeat
/// within the batch ends as its last report.
async fn insert_epochs(
    tx: &mut AnyConnection,
    accepted: &[(&EpochReport, &(String, u32))],
) -> Result<()> {
    let recorded_at = now();
    // PostgreSQL refuses an upsert that touches one row twice: an epoch reported twice in the
    // batch goes in once, as its last report (what SQLite makes of the repeat, in order).
    let mut last_of: HashMap<(&str, u32), usize> = HashMap::new();
    for (i, (r, _)) in accepted.iter().enumerate() {
        last_of.insert((r.trial_id.as_str(), r.epoch.epoch), i);
    }
    let accepted: Vec<_> = accepted
        .iter()
        .enumerate()
        .filter(|(i, (r, _))| last_of[&(r.trial_id.as_str(), r.epoch.epoch)] == *i)
        .map(|(_, a)| a)
        .collect();
    let sql = format!(
        "INSERT INTO epochs (trial_id, epoch, train_loss, train_accuracy, val_loss, val_accuracy, seconds, images_per_second, recorded_at, checkpoint_digest, checkpoint_size, learning_rate)
         VALUES {}
         ON CONFLICT (trial_id, epoch) DO UPDATE SET train_loss = excluded.train_loss, train_accuracy = excluded.train_accuracy,
           val_loss = excluded.val_loss, val_accuracy = excluded.val_accuracy, seconds = excluded.seconds,
           images_per_second = excluded.images_per_second, recorded_at = excluded.recorded_at,
           checkpoint_digest = excluded.checkpoint_digest, checkpoint_size = excluded.checkpoint_size,
           learning_rate = excluded.learning_rate",
        values_placeholders(accepted.len(), 12, 1)
    );
    let mut insert = sqlx::query(&sql);
    for (r, _) in &accepted {
        insert = insert
            .bind(&r.trial_id)
            .bind(r.epoch.epoch as i64)
            .bind(r.epoch.train_loss)
            .bind(r.epoch.train_accuracy)
            .bind(r.epoch.val_loss)
            .bind(r.epoch.val_accuracy)
            .bind(r.epoch.seconds)
            .bind(r.epoch.images_per_second)
            .bind(&recorded_at)
            .bind(r.checkpoint.as_ref().map(|c| c.digest.as_str()))
            .bind(r.checkpoint.as_ref().map(|c| c.size as i64))
            .bind(r.epoch.learning_rate);
    }
    insert.execute(&mut *tx).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use cnnd_core::sweep::{SweepLimits, SweepRequest};
    use sqlx::Connection;

    fn epoch(n: u32, val_accuracy: f64) -> EpochRecord {
        EpochRecord {
            epoch: n,
            train_loss: 1.0 / n as f64,
            train_accuracy: 0.5,
            val_loss: 0.7,
            val_accuracy,
            seconds: 1.0,
            images_per_second: 100.0,
            learning_rate: 1e-3 / n as f64,
        }
    }

    /// A fresh store with one sweep of three 40-epoch trials, two of them leased.
    async fn store_with_leases() -> (tempfile::TempDir, Store, Vec<crate::store::Lease>) {
        let dir = tempfile::tempdir().unwrap();
        let (store, leases) = store_with_leases_at(&dir.path().join("s.sqlite")).await;
        (dir, store, leases)
    }

    async fn store_with_leases_at(path: &std::path::Path) -> (Store, Vec<crate::store::Lease>) {
        let store = Store::open(path).await.unwrap();
        let request: SweepRequest = serde_json::from_value(serde_json::json!({
            "dataset": "mnist", "space": {"dropout": [0.0, 0.1, 0.2]}, "fixed": {"epochs": 40},
            "maxParallel": 3
        }))
        .unwrap();
        let spec = request
            .validate(SweepLimits::default(), cnnd_core::datasets::resolve_builtin)
            .unwrap();
        store
            .insert_sweep("sw-batch", &spec, None, u32::MAX)
            .await
            .unwrap()
            .unwrap();
        let mut leases = Vec::new();
        for _ in 0..2 {
            let (lease, _) = store
                .lease_next(&crate::store::LeaseAsk::new("w", &["auto", "cpu"], "cpu"))
                .await
                .unwrap()
                .unwrap();
            leases.push(lease);
        }
        (store, leases)
    }

    /// Reports sent together land in one batch: each is answered for itself (stale and
    /// unknown leases refused, the rest stored with their own event, in order), and the
    /// store holds exactly the accepted epochs.
    #[tokio::test]
    async fn a_batch_answers_each_report_and_stores_only_the_accepted_ones() {
        let (_dir, store, leases) = store_with_leases().await;
        let (a, b) = (&leases[0], &leases[1]);

        // 2 x 30 epochs, a stale lease, an unknown trial, and epoch 3 of `a` reported twice.
        let mut reports = Vec::new();
        for n in 1..=30 {
            for lease in [a, b] {
                reports.push((lease.trial_id.clone(), lease.generation, epoch(n, 0.5)));
            }
        }
        reports.push((a.trial_id.clone(), a.generation + 1, epoch(31, 0.5)));
        reports.push(("sw-batch-t99".to_string(), 1, epoch(1, 0.5)));
        reports.push((a.trial_id.clone(), a.generation, epoch(3, 0.9)));
        let answers = futures::future::join_all(
            reports
                .iter()
                .map(|(id, generation, e)| store.record_epoch(id, *generation, e, None, None)),
        )
        .await;

        let n = answers.len();
        let mut last_id = 0;
        for (i, answer) in answers.iter().enumerate() {
            let answer = answer.as_ref().unwrap();
            match i {
                i if i == n - 3 => assert!(
                    matches!(answer, Err(ReportError::StaleLease { .. })),
                    "{answer:?}"
                ),
                i if i == n - 2 => assert!(
                    matches!(answer, Err(ReportError::UnknownTrial(_))),
                    "{answer:?}"
                ),
                _ => {
                    let event = answer.as_ref().unwrap();
                    assert!(event.id > last_id, "event ids follow the reports");
                    last_id = event.id;
                    let Event::EpochFinished {
                        trial_id,
                        epochs_planned,
                        metrics,
                    } = &event.event
                    else {
                        panic!("{event:?}")
                    };
                    assert_eq!(trial_id, &reports[i].0);
                    assert_eq!(metrics, &reports[i].2);
                    assert_eq!(*epochs_planned, 40);
                    assert_eq!(event.sweep_id, "sw-batch");
                }
            }
        }
        for lease in [a, b] {
            let epochs = store.epochs(&lease.trial_id).await.unwrap();
            assert_eq!(
                epochs.iter().map(|e| e.epoch).collect::<Vec<_>>(),
                (1..=30).collect::<Vec<_>>()
            );
            let trial = store.trial(&lease.trial_id).await.unwrap().unwrap();
            assert_eq!(trial.epochs_done, 30);
        }
        // The repeat of epoch 3 was applied after the first: its values stand.
        assert_eq!(
            store.epochs(&a.trial_id).await.unwrap()[2].val_accuracy,
            0.9
        );
        let events = store.events_after("sw-batch", 0).await.unwrap();
        let epoch_events = events
            .iter()
            .filter(|e| matches!(e.event, Event::EpochFinished { .. }))
            .count();
        assert_eq!(epoch_events, 61);
    }

    /// A report the database refuses (a NaN metric breaks `val_loss REAL NOT NULL`) fails
    /// alone: the other reports of its batch are stored and answered as usual, not failed
    /// with it (their workers would take that as a lost lease and stop training).
    #[tokio::test]
    async fn one_bad_report_fails_alone_and_the_rest_of_its_batch_is_stored() {
        let (_dir, store, leases) = store_with_leases().await;
        let (a, b) = (&leases[0], &leases[1]);
        let mut bad = epoch(2, 0.5);
        bad.val_loss = f64::NAN;
        let reports = [
            (a, epoch(1, 0.5)),
            (b, epoch(1, 0.6)),
            (a, bad),
            (b, epoch(2, 0.7)),
        ];
        let answers = futures::future::join_all(reports.iter().map(|(lease, e)| {
            store.record_epoch(&lease.trial_id, lease.generation, e, None, None)
        }))
        .await;
        assert!(
            answers[2].is_err(),
            "the NaN report was stored: {:?}",
            answers[2]
        );
        for i in [0, 1, 3] {
            assert!(
                matches!(&answers[i], Ok(Ok(_))),
                "report {i} failed with the bad one: {:?}",
                answers[i]
            );
        }
        let epochs = |id: String| {
            let store = store.clone();
            async move {
                let rows = store.epochs(&id).await.unwrap();
                rows.iter().map(|e| e.epoch).collect::<Vec<_>>()
            }
        };
        assert_eq!(epochs(a.trial_id.clone()).await, vec![1]);
        assert_eq!(epochs(b.trial_id.clone()).await, vec![1, 2]);
        // The store goes on taking reports afterwards.
        store
            .record_epoch(&a.trial_id, a.generation, &epoch(2, 0.5), None, None)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(epochs(a.trial_id.clone()).await, vec![1, 2]);
    }

    /// A batch that meets a lock held elsewhere past the busy timeout (SQLITE_BUSY) is tried
    /// again, and lands once the lock is gone: nobody's report fails for it.
    #[tokio::test]
    async fn a_batch_refused_by_a_passing_lock_is_tried_again_and_stored() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sqlite");
        drop(store_with_leases_at(&path).await);
        let store = Store::open_with(&path, std::time::Duration::from_millis(100))
            .await
            .unwrap();
        let lease = store.trials_of("sw-batch").await.unwrap();
        let running: Vec<_> = lease
            .iter()
            .filter(|t| t.status == cnnd_core::status::TrialStatus::Running)
            .collect();
        // Another connection takes the write lock for 600 ms (six busy timeouts).
        let mut other = AnyConnection::connect(&format!("sqlite://{}", path.display()))
            .await
            .unwrap();
        sqlx::query("BEGIN IMMEDIATE")
            .execute(&mut other)
            .await
            .unwrap();
        let holder = tokio::spawn(async move {
            tokio::time::sleep(std::time::Duration::from_millis(600)).await;
            sqlx::query("COMMIT").execute(&mut other).await.unwrap();
        });
        let first = epoch(1, 0.5);
        let answers = futures::future::join_all(
            running
                .iter()
                .map(|t| store.record_epoch(&t.id, t.generation, &first, None, None)),
        )
        .await;
        holder.await.unwrap();
        for answer in &answers {
            assert!(matches!(answer, Ok(Ok(_))), "{answer:?}");
        }
        for t in running {
            assert_eq!(store.epochs(&t.id).await.unwrap().len(), 1);
        }
    }

    /// trials.epoch_count and last_epoch (kept by triggers, migrations 0007 and 0008) equal
    /// COUNT(*) and MAX(epoch) of the trial's rows after every kind of write.
    #[tokio::test]
    async fn epoch_counts_stay_exact_for_upserts_replaces_and_deletes() {
        let (_dir, store, leases) = store_with_leases().await;
        let a = &leases[0];
        let counts = || async {
            sqlx::query_as::<_, (i64, Option<i64>, i64, Option<i64>)>(
                "SELECT epoch_count, last_epoch,
                        (SELECT COUNT(*) FROM epochs WHERE trial_id = t.id),
                        (SELECT MAX(epoch) FROM epochs WHERE trial_id = t.id)
                 FROM trials t WHERE id = $1",
            )
            .bind(&a.trial_id)
            .fetch_one(&store.writer)
            .await
            .unwrap()
        };
        for n in [1, 2, 3, 2] {
            store
                .record_epoch(&a.trial_id, a.generation, &epoch(n, 0.5), None, None)
                .await
                .unwrap()
                .unwrap();
        }
        assert_eq!(counts().await, (3, Some(3), 3, Some(3)), "upserts");
        let replace = |n: i64| {
            sqlx::query(
                "INSERT OR REPLACE INTO epochs (trial_id, epoch, train_loss, train_accuracy, val_loss,
                     val_accuracy, seconds, images_per_second, recorded_at)
                 VALUES ($1, $2, 0.1, 0.9, 0.1, 0.9, 1.0, 10.0, 'now')",
            )
            .bind(&a.trial_id)
            .bind(n)
        };
        replace(3).execute(&store.writer).await.unwrap();
        assert_eq!(counts().await, (3, Some(3), 3, Some(3)), "replace of a row");
        replace(5).execute(&store.writer).await.unwrap();
        assert_eq!(
            counts().await,
            (4, Some(5), 4, Some(5)),
            "replace as insert"
        );
        sqlx::query("DELETE FROM epochs WHERE trial_id = $1 AND epoch = 5")
            .bind(&a.trial_id)
            .execute(&store.writer)
            .await
            .unwrap();
        assert_eq!(counts().await, (3, Some(3), 3, Some(3)), "delete");
    }
}
