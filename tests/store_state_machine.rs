//! The store's state machine, tested directly on both backends: a real SQLite file (a
//! temporary one) and a real PostgreSQL server (a throw-away cluster, tests/common/
//! postgres.rs): no daemon, no worker, no libtorch, a few seconds in all. Every transition a trial goes
//! through (lease, report, finish, release, cancel, pause, promote, settle) and the races
//! between them: two workers asking for the same trial, a report from a stale generation,
//! a cancel while a finish lands, a promotion while the sweep is cancelled.
//!
//! The tests take their stores from [`stores`]: every test runs against every backend.

use std::collections::{BTreeMap, HashSet};

use cnnd::store::{Event, LeaseAsk, ReportError, Store, TrialFacts, TrialResult};
use cnnd_core::datasets::resolve_builtin;
use cnnd_core::epoch::EpochRecord;
use cnnd_core::status::{SweepStatus, TrialStatus};
use cnnd_core::sweep::{SweepLimits, SweepRequest, SweepSpec};
use serde_json::json;

#[path = "common/postgres.rs"]
#[allow(dead_code)]
mod postgres;

/// A store under test, with what keeps it alive.
struct Backend {
    name: &'static str,
    store: Store,
    _dir: tempfile::TempDir,
}

/// Every backend the tests run against: SQLite in a temporary folder, and a fresh database
/// on the test PostgreSQL server.
async fn stores() -> Vec<Backend> {
    let dir = tempfile::tempdir().unwrap();
    let sqlite = Store::open(&dir.path().join("cnnd.sqlite")).await.unwrap();
    let url = tokio::task::spawn_blocking(postgres::fresh_database)
        .await
        .unwrap();
    let postgres = Store::open(std::path::Path::new(&url)).await.unwrap();
    assert_eq!(postgres.backend(), cnnd::store::Backend::Postgres);
    vec![
        Backend {
            name: "sqlite",
            store: sqlite,
            _dir: dir,
        },
        Backend {
            name: "postgres",
            store: postgres,
            _dir: tempfile::tempdir().unwrap(),
        },
    ]
}

/// A validated sweep of `trials` configurations (dropout values) of `epochs` epochs.
fn spec(trials: usize, epochs: u32, extra: serde_json::Value) -> SweepSpec {
    let dropouts: Vec<f64> = (0..trials).map(|i| i as f64 * 0.01).collect();
    let mut request = json!({"dataset": "mnist", "space": {"dropout": dropouts},
                             "fixed": {"epochs": epochs}});
    if let (Some(r), Some(e)) = (request.as_object_mut(), extra.as_object()) {
        r.extend(e.clone());
    }
    let request: SweepRequest = serde_json::from_value(request).unwrap();
    request
        .validate(SweepLimits::default(), resolve_builtin)
        .unwrap()
}

fn epoch(n: u32) -> EpochRecord {
    EpochRecord {
        epoch: n,
        train_loss: 1.0 / n as f64,
        train_accuracy: 0.5,
        val_loss: 0.5,
        val_accuracy: 0.5 + n as f64 * 0.01,
        seconds: 1.0,
        images_per_second: 100.0,
        learning_rate: 1e-3 / n as f64,
    }
}

fn succeeded() -> TrialResult {
    TrialResult {
        test_accuracy: Some(0.9),
        test_loss: Some(0.3),
        best_epoch: Some(1),
        ..TrialResult::of(TrialStatus::Succeeded)
    }
}

async fn statuses(store: &Store, sweep: &str) -> BTreeMap<String, TrialStatus> {
    store
        .trials_of(sweep)
        .await
        .unwrap()
        .into_iter()
        .map(|t| (t.id, t.status))
        .collect()
}

async fn sweep_status(store: &Store, sweep: &str) -> SweepStatus {
    store.sweep(sweep).await.unwrap().unwrap().status
}

const CPU: &[&str] = &["auto", "cpu"];

#[tokio::test]
async fn a_trial_goes_queued_running_succeeded_and_its_sweep_finishes() {
    for b in stores().await {
        let s = &b.store;
        s.insert_sweep("sw", &spec(1, 2, json!({})), None, u32::MAX)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            sweep_status(s, "sw").await,
            SweepStatus::Queued,
            "{}",
            b.name
        );
        let (lease, started) = s
            .lease_next(&LeaseAsk::new("w1", CPU, "cpu"))
            .await
            .unwrap()
            .unwrap();
        assert_eq!((lease.generation, lease.attempt), (1, 1));
        assert!(matches!(started.event, Event::TrialStarted { ref worker, .. } if worker == "w1"));
        assert_eq!(sweep_status(s, "sw").await, SweepStatus::Running);
        assert!(s
            .lease_next(&LeaseAsk::new("w2", CPU, "cpu"))
            .await
            .unwrap()
            .is_none());

        let facts = TrialFacts {
            parameter_count: 1234,
            notes: vec!["from the worker's first report".into()],
            ..Default::default()
        };
        for n in 1..=2 {
            s.record_epoch(
                &lease.trial_id,
                1,
                &epoch(n),
                (n == 1).then_some(&facts),
                None,
            )
            .await
            .unwrap()
            .unwrap();
        }
        let finish = TrialResult {
            note: Some("stopped after epoch 2 (patience)".into()),
            ..succeeded()
        };
        let events = s
            .finish_trial(&lease.trial_id, 1, &finish)
            .await
            .unwrap()
            .unwrap();
        // Every epoch's numbers come back as recorded, its learning rate included; the
        // finish's note follows the first report's.
        assert_eq!(
            s.epochs(&lease.trial_id).await.unwrap(),
            vec![epoch(1), epoch(2)]
        );
        assert_eq!(
            s.trial(&lease.trial_id).await.unwrap().unwrap().notes,
            [
                "from the worker's first report",
                "stopped after epoch 2 (patience)"
            ]
        );
        assert!(matches!(events.last().unwrap().event,
            Event::SweepFinished { status: SweepStatus::Finished, ref best_trial_id, .. }
            if best_trial_id.as_deref() == Some(lease.trial_id.as_str())));
        let t = s.trial(&lease.trial_id).await.unwrap().unwrap();
        assert_eq!(t.status, TrialStatus::Succeeded);
        assert_eq!((t.epochs_done, t.parameter_count), (2, Some(1234)));
        assert_eq!(sweep_status(s, "sw").await, SweepStatus::Finished);
        // A finished trial takes no more reports or finishes.
        assert!(matches!(
            s.record_epoch(&lease.trial_id, 1, &epoch(3), None, None)
                .await
                .unwrap(),
            Err(ReportError::StaleLease {
                status: TrialStatus::Succeeded,
                ..
            })
        ));
        assert!(s
            .finish_trial(&lease.trial_id, 1, &succeeded())
            .await
            .unwrap()
            .is_err());
    }
}

/// Four stores on one PostgreSQL database (as two daemons during a takeover, or a
/// misconfiguration) lease one sweep's 60 trials with four lease loops each, all at once:
/// every trial is leased exactly once at generation 1; released, every trial is leased
/// exactly once again at generation 2. Each store's writes are serialised, so only the
/// database keeps two stores apart (the lease is a compare-and-set on status and generation).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn many_stores_on_one_postgres_database_never_lease_a_trial_twice() {
    let url = tokio::task::spawn_blocking(postgres::fresh_database)
        .await
        .unwrap();
    let mut stores = Vec::new();
    for _ in 0..4 {
        stores.push(Store::open(std::path::Path::new(&url)).await.unwrap());
    }
    stores[0]
        .insert_sweep("sw", &spec(60, 1, json!({})), None, u32::MAX)
        .await
        .unwrap()
        .unwrap();
    let lease_all = |round: u32| {
        let loops = stores.iter().enumerate().flat_map(|(i, store)| {
            (0..4).map(move |j| async move {
                let worker = format!("s{i}-w{j}-r{round}");
                let mut got = Vec::new();
                while let Some((lease, _)) = store
                    .lease_next(&LeaseAsk::new(&worker, CPU, "cpu"))
                    .await
                    .unwrap()
                {
                    got.push((lease.trial_id, lease.generation));
                }
                got
            })
        });
        futures::future::join_all(loops)
    };
    for round in 1..=2u64 {
        let leases: Vec<(String, u64)> = lease_all(round as u32)
            .await
            .into_iter()
            .flatten()
            .collect();
        let trials: HashSet<&String> = leases.iter().map(|(t, _)| t).collect();
        assert_eq!(leases.len(), 60, "round {round}: {leases:?}");
        assert_eq!(trials.len(), 60, "round {round}: a trial leased twice");
        assert!(leases.iter().all(|(_, g)| *g == round), "{leases:?}");
        for (trial, generation) in &leases {
            stores[(generation % 4) as usize]
                .release_trial(trial, *generation, "test", 3, false)
                .await
                .unwrap();
        }
    }
}

/// Fencing (issue 18): a leader whose lock session is cut off keeps writing until its
/// successor takes the next term, and not one write after: every write it made either landed
/// before the successor's first write (queue order proves it) and was acknowledged, or was
/// refused as [`Deposed`]. Its heartbeat notices the loss on its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_deposed_leaders_writes_stop_before_its_successors_first_write() {
    use cnnd::leadership::Campaign;
    use cnnd::store::Deposed;
    let url = tokio::task::spawn_blocking(postgres::fresh_database)
        .await
        .unwrap();
    let db = std::path::Path::new(&url);
    let lease = std::time::Duration::from_secs(4);
    let (old, new) = (
        Store::open(db).await.unwrap(),
        Store::open(db).await.unwrap(),
    );
    let first = Campaign::connect(&url, "old leader".into(), lease)
        .await
        .unwrap()
        .lead(|_| {})
        .await
        .unwrap();
    assert_eq!(first.term, 1);
    old.fence(first.term);
    let heartbeat = tokio::spawn(first.lost());

    // The old leader writes as fast as it can until it is refused.
    let writer = {
        let old = old.clone();
        tokio::spawn(async move {
            let mut acknowledged = 0u32;
            loop {
                let id = format!("old-{acknowledged}");
                match old
                    .insert_sweep(&id, &spec(1, 1, json!({})), None, u32::MAX)
                    .await
                {
                    Ok(Ok(_)) => acknowledged += 1,
                    Ok(Err(full)) => panic!("{full:?}"),
                    Err(e) => return (acknowledged, e),
                }
            }
        })
    };
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    // Its lock session is cut off; a standby takes over and writes at once.
    let successor = Campaign::connect(&url, "new leader".into(), lease)
        .await
        .unwrap();
    let url2 = url.clone();
    tokio::task::spawn_blocking(move || {
        postgres::psql(
            &url2,
            "SELECT pg_terminate_backend(lock_pid) FROM leader_heartbeat",
        )
    })
    .await
    .unwrap();
    let second = successor.lead(|_| {}).await.unwrap();
    assert_eq!(second.term, 2);
    new.fence(second.term);
    new.insert_sweep("new-first", &spec(1, 1, json!({})), None, u32::MAX)
        .await
        .unwrap()
        .unwrap();

    let (acknowledged, refusal) = writer.await.unwrap();
    assert_eq!(
        refusal.downcast_ref::<Deposed>(),
        Some(&Deposed {
            term: 1,
            now: Some(2)
        }),
        "{refusal:#}"
    );
    assert!(acknowledged > 0, "the old leader never wrote");
    let why = tokio::time::timeout(std::time::Duration::from_secs(10), heartbeat)
        .await
        .expect("the old leader's heartbeat did not notice")
        .unwrap();
    assert!(why.contains("connection"), "{why}");

    let rows = postgres::psql(
        &url,
        "SELECT s.id, t.queue_seq FROM sweeps s JOIN trials t ON t.sweep_id = s.id ORDER BY t.queue_seq",
    );
    let seqs: Vec<(String, i64)> = rows
        .iter()
        .map(|r| {
            let (id, seq) = r.split_once('\t').unwrap();
            (id.to_string(), seq.parse().unwrap())
        })
        .collect();
    let old_rows = seqs.iter().filter(|(id, _)| id.starts_with("old-")).count();
    assert_eq!(
        old_rows as u32, acknowledged,
        "a write landed unacknowledged, or was lost"
    );
    assert_eq!(
        seqs.last().map(|(id, _)| id.as_str()),
        Some("new-first"),
        "a deposed leader's write landed after its successor's first: {seqs:?}"
    );
    // The successor writes on; the old store stays refused.
    assert!(old.set_paused("new-first", true).await.is_err());
    new.set_paused("new-first", true).await.unwrap();
}

/// Eight workers ask for leases at once on a sweep of five trials: every trial goes to
/// exactly one worker, at generation 1, and three workers get nothing.
#[tokio::test]
async fn concurrent_leases_never_hand_one_trial_to_two_workers() {
    for b in stores().await {
        let s = &b.store;
        s.insert_sweep("sw", &spec(5, 1, json!({})), None, u32::MAX)
            .await
            .unwrap()
            .unwrap();
        let workers: Vec<String> = (0..8).map(|i| format!("w{i}")).collect();
        let leases = futures::future::join_all(
            workers
                .iter()
                .map(|w| async move { s.lease_next(&LeaseAsk::new(w, CPU, "cpu")).await }),
        )
        .await;
        let got: Vec<_> = leases
            .into_iter()
            .filter_map(|l| l.unwrap())
            .map(|(lease, _)| lease)
            .collect();
        assert_eq!(got.len(), 5, "{}", b.name);
        let ids: HashSet<_> = got.iter().map(|l| l.trial_id.clone()).collect();
        assert_eq!(ids.len(), 5, "a trial was leased twice: {got:?}");
        assert!(got.iter().all(|l| l.generation == 1));
        let running = statuses(s, "sw").await;
        assert!(running.values().all(|st| *st == TrialStatus::Running));
    }
}

/// After a release the trial is leased again at the next generation: reports and finishes
/// carrying the old generation are refused and change nothing.
#[tokio::test]
async fn reports_from_a_stale_generation_are_refused_and_change_nothing() {
    for b in stores().await {
        let s = &b.store;
        s.insert_sweep("sw", &spec(1, 3, json!({})), None, u32::MAX)
            .await
            .unwrap()
            .unwrap();
        let (old, _) = s
            .lease_next(&LeaseAsk::new("w1", CPU, "cpu"))
            .await
            .unwrap()
            .unwrap();
        s.record_epoch(&old.trial_id, 1, &epoch(1), None, None)
            .await
            .unwrap()
            .unwrap();
        s.release_trial(&old.trial_id, 1, "worker died", 3, true)
            .await
            .unwrap();
        let (new, _) = s
            .lease_next(&LeaseAsk::new("w2", CPU, "cpu"))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            (new.generation, new.attempt, new.epochs_recorded),
            (2, 2, 1)
        );
        let refused = s
            .record_epoch(&old.trial_id, 1, &epoch(2), None, None)
            .await
            .unwrap();
        assert!(
            matches!(
                refused,
                Err(ReportError::StaleLease {
                    current: 2,
                    given: 1,
                    ..
                })
            ),
            "{}: {refused:?}",
            b.name
        );
        assert!(s
            .finish_trial(&old.trial_id, 1, &succeeded())
            .await
            .unwrap()
            .is_err());
        // A stale release changes nothing either.
        assert!(s
            .release_trial(&old.trial_id, 1, "late", 3, true)
            .await
            .unwrap()
            .is_empty());
        let t = s.trial(&new.trial_id).await.unwrap().unwrap();
        assert_eq!(
            (t.status, t.generation, t.epochs_done),
            (TrialStatus::Running, 2, 1)
        );
        // The live lease goes on.
        s.record_epoch(&new.trial_id, 2, &epoch(2), None, None)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(s.epochs(&new.trial_id).await.unwrap().len(), 2);
    }
}

/// A release that counts as an attempt re-queues until `max_attempts`, then fails the
/// trial; a graceful release (shutdown) gives the attempt back.
#[tokio::test]
async fn releases_requeue_until_the_attempts_run_out() {
    for b in stores().await {
        let s = &b.store;
        s.insert_sweep("sw", &spec(1, 1, json!({})), None, u32::MAX)
            .await
            .unwrap()
            .unwrap();
        let (l, _) = s
            .lease_next(&LeaseAsk::new("w", CPU, "cpu"))
            .await
            .unwrap()
            .unwrap();
        s.release_trial(&l.trial_id, l.generation, "shutdown", 2, false)
            .await
            .unwrap();
        let (l, _) = s
            .lease_next(&LeaseAsk::new("w", CPU, "cpu"))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            l.attempt, 1,
            "{}: a graceful release took an attempt",
            b.name
        );
        s.release_trial(&l.trial_id, l.generation, "crashed", 2, true)
            .await
            .unwrap();
        let (l, _) = s
            .lease_next(&LeaseAsk::new("w", CPU, "cpu"))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(l.attempt, 2);
        let events = s
            .release_trial(&l.trial_id, l.generation, "crashed again", 2, true)
            .await
            .unwrap();
        let t = s.trial(&l.trial_id).await.unwrap().unwrap();
        assert_eq!(t.status, TrialStatus::Failed);
        assert!(t.error.unwrap().contains("crashed again (attempt 2 of 2)"));
        assert!(events
            .iter()
            .any(|e| matches!(e.event, Event::SweepFinished { .. })));
        assert!(s
            .lease_next(&LeaseAsk::new("w", CPU, "cpu"))
            .await
            .unwrap()
            .is_none());
    }
}

/// Cancel and finish of the running trial land together, in either order: the trial ends
/// once, with one `trial_finished` event, and the sweep ends once.
#[tokio::test]
async fn cancel_during_finish_ends_the_trial_once() {
    for b in stores().await {
        let s = &b.store;
        s.insert_sweep("sw", &spec(2, 1, json!({})), None, u32::MAX)
            .await
            .unwrap()
            .unwrap();
        let (l, _) = s
            .lease_next(&LeaseAsk::new("w", CPU, "cpu"))
            .await
            .unwrap()
            .unwrap();
        s.record_epoch(&l.trial_id, l.generation, &epoch(1), None, None)
            .await
            .unwrap()
            .unwrap();
        let result = succeeded();
        let (finished, cancelled) = tokio::join!(
            s.finish_trial(&l.trial_id, l.generation, &result),
            s.cancel_sweep("sw"),
        );
        let finished = finished.unwrap();
        let (_, n, _) = cancelled.unwrap();
        let status = s.trial(&l.trial_id).await.unwrap().unwrap().status;
        match finished {
            // The finish came first: the cancel found one open trial (the queued one).
            Ok(_) => assert_eq!((status, n), (TrialStatus::Succeeded, 1), "{}", b.name),
            // The cancel came first: the finish was refused as stale.
            Err(ReportError::StaleLease { .. }) => {
                assert_eq!((status, n), (TrialStatus::Cancelled, 2), "{}", b.name)
            }
            Err(e) => panic!("{e}"),
        }
        let events = s.events_after("sw", 0).await.unwrap();
        let ended = |id: &str| {
            events
                .iter()
                .filter(
                    |e| matches!(&e.event, Event::TrialFinished { trial_id, .. } if trial_id == id),
                )
                .count()
        };
        assert_eq!(ended(&l.trial_id), 1, "{events:#?}");
        let sweep_ends = events
            .iter()
            .filter(|e| matches!(e.event, Event::SweepFinished { .. }))
            .count();
        assert_eq!(sweep_ends, 1);
        assert_eq!(sweep_status(s, "sw").await, SweepStatus::Cancelled);
        assert!(s
            .lease_next(&LeaseAsk::new("w", CPU, "cpu"))
            .await
            .unwrap()
            .is_none());
    }
}

/// Paused sweeps lend nothing; resumed, they do. `maxParallel` caps running trials.
#[tokio::test]
async fn pause_holds_the_queue_and_max_parallel_caps_running_trials() {
    for b in stores().await {
        let s = &b.store;
        s.insert_sweep("sw", &spec(3, 1, json!({"maxParallel": 2})), None, u32::MAX)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(s.set_paused("sw", true).await.unwrap(), 3);
        assert!(
            s.lease_next(&LeaseAsk::new("w", CPU, "cpu"))
                .await
                .unwrap()
                .is_none(),
            "{}",
            b.name
        );
        assert_eq!(s.set_paused("sw", false).await.unwrap(), 3);
        let a = s
            .lease_next(&LeaseAsk::new("w1", CPU, "cpu"))
            .await
            .unwrap()
            .unwrap()
            .0;
        s.lease_next(&LeaseAsk::new("w2", CPU, "cpu"))
            .await
            .unwrap()
            .unwrap();
        assert!(
            s.lease_next(&LeaseAsk::new("w3", CPU, "cpu"))
                .await
                .unwrap()
                .is_none(),
            "maxParallel 2"
        );
        s.finish_trial(&a.trial_id, a.generation, &succeeded())
            .await
            .unwrap()
            .unwrap();
        assert!(s
            .lease_next(&LeaseAsk::new("w3", CPU, "cpu"))
            .await
            .unwrap()
            .is_some());
        // A CUDA-only worker gets nothing from a sweep that asked for the CPU.
        s.insert_sweep("sc", &spec(1, 1, json!({"device": "cpu"})), None, u32::MAX)
            .await
            .unwrap()
            .unwrap();
        assert!(s
            .lease_next(&LeaseAsk::new("g", &["cuda"], "cuda:0"))
            .await
            .unwrap()
            .is_none());
    }
}

/// What a launcher sizes its workers to: the queued trials that could start now, by device,
/// never more of a sweep than its maxParallel leaves room for, none of a paused sweep.
#[tokio::test]
async fn leasable_demand_counts_by_device_within_max_parallel_and_skips_paused_sweeps() {
    for b in stores().await {
        let s = &b.store;
        let none = s.leasable_demand().await.unwrap();
        assert_eq!((none.cpu, none.cuda, none.auto), (0, 0, 0), "{}", b.name);
        s.insert_sweep(
            "capped",
            &spec(5, 1, json!({"maxParallel": 2})),
            None,
            u32::MAX,
        )
        .await
        .unwrap()
        .unwrap();
        s.insert_sweep(
            "gpu",
            &spec(3, 1, json!({"device": "cuda"})),
            None,
            u32::MAX,
        )
        .await
        .unwrap()
        .unwrap();
        s.insert_sweep("cpu", &spec(2, 1, json!({"device": "cpu"})), None, u32::MAX)
            .await
            .unwrap()
            .unwrap();
        let d = s.leasable_demand().await.unwrap();
        assert_eq!((d.auto, d.cuda, d.cpu), (2, 3, 2), "{}", b.name);
        // One of the capped sweep's trials runs: room for one more.
        s.lease_next(&LeaseAsk::new("w1", &["auto"], "cpu"))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(s.leasable_demand().await.unwrap().auto, 1, "{}", b.name);
        s.set_paused("gpu", true).await.unwrap();
        assert_eq!(s.leasable_demand().await.unwrap().cuda, 0, "{}", b.name);
    }
}

/// A higher priority is leased first; within a priority, submission order.
#[tokio::test]
async fn priority_then_submission_order() {
    for b in stores().await {
        let s = &b.store;
        s.insert_sweep("low", &spec(1, 1, json!({})), None, u32::MAX)
            .await
            .unwrap()
            .unwrap();
        s.insert_sweep("high", &spec(1, 1, json!({"priority": 5})), None, u32::MAX)
            .await
            .unwrap()
            .unwrap();
        s.insert_sweep("low2", &spec(1, 1, json!({})), None, u32::MAX)
            .await
            .unwrap()
            .unwrap();
        let mut order = Vec::new();
        while let Some((l, _)) = s.lease_next(&LeaseAsk::new("w", CPU, "cpu")).await.unwrap() {
            order.push(l.sweep_id);
        }
        assert_eq!(order, ["high", "low", "low2"], "{}", b.name);
    }
}

/// A parked trial promoted goes back to the queue ahead of fresh trials and resumes at the
/// next generation; the parked trials never promoted end `pruned` when nothing else is left.
#[tokio::test]
async fn parked_trials_are_promoted_or_settled() {
    for b in stores().await {
        let s = &b.store;
        s.insert_sweep("sw", &spec(3, 3, json!({})), None, u32::MAX)
            .await
            .unwrap()
            .unwrap();
        let mut parked = Vec::new();
        for _ in 0..2 {
            let (l, _) = s
                .lease_next(&LeaseAsk::new("w", CPU, "cpu"))
                .await
                .unwrap()
                .unwrap();
            s.record_epoch(&l.trial_id, l.generation, &epoch(1), None, None)
                .await
                .unwrap()
                .unwrap();
            let park = TrialResult {
                error: Some("parked: asha: rung 1".into()),
                test_accuracy: Some(0.8),
                ..TrialResult::of(TrialStatus::Parked)
            };
            s.finish_trial(&l.trial_id, l.generation, &park)
                .await
                .unwrap()
                .unwrap();
            parked.push(l);
        }
        assert_eq!(
            sweep_status(s, "sw").await,
            SweepStatus::Running,
            "{}",
            b.name
        );
        assert_eq!(
            s.promote_parked(&[parked[1].trial_id.clone()])
                .await
                .unwrap(),
            1
        );
        // Promoted ahead of the third, fresh trial; its attempt is given back.
        let (again, _) = s
            .lease_next(&LeaseAsk::new("w", CPU, "cpu"))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(again.trial_id, parked[1].trial_id);
        assert_eq!(
            (again.generation, again.attempt, again.epochs_recorded),
            (2, 1, 1)
        );
        s.finish_trial(&again.trial_id, again.generation, &succeeded())
            .await
            .unwrap()
            .unwrap();
        // While the third trial runs, nothing settles.
        let (third, _) = s
            .lease_next(&LeaseAsk::new("w", CPU, "cpu"))
            .await
            .unwrap()
            .unwrap();
        assert!(s.settle_parked("sw").await.unwrap().is_empty());
        s.finish_trial(&third.trial_id, third.generation, &succeeded())
            .await
            .unwrap()
            .unwrap();
        let events = s.settle_parked("sw").await.unwrap();
        assert!(events
            .iter()
            .any(|e| matches!(e.event, Event::SweepFinished { .. })));
        let t = s.trial(&parked[0].trial_id).await.unwrap().unwrap();
        assert_eq!(t.status, TrialStatus::Pruned);
        assert!(t.error.unwrap().starts_with("pruned: asha: never promoted"));
        assert_eq!(sweep_status(s, "sw").await, SweepStatus::Finished);
    }
}

/// A promotion and a cancel land together: whatever the order, the sweep ends cancelled
/// and no trial is left queued or running (a promoted trial is cancelled with the rest).
#[tokio::test]
async fn promote_during_cancel_leaves_nothing_open() {
    for b in stores().await {
        let s = &b.store;
        s.insert_sweep("sw", &spec(2, 3, json!({})), None, u32::MAX)
            .await
            .unwrap()
            .unwrap();
        let (l, _) = s
            .lease_next(&LeaseAsk::new("w", CPU, "cpu"))
            .await
            .unwrap()
            .unwrap();
        s.record_epoch(&l.trial_id, l.generation, &epoch(1), None, None)
            .await
            .unwrap()
            .unwrap();
        let park = TrialResult {
            error: Some("parked: asha: rung 1".into()),
            ..TrialResult::of(TrialStatus::Parked)
        };
        s.finish_trial(&l.trial_id, l.generation, &park)
            .await
            .unwrap()
            .unwrap();
        let ids = [l.trial_id.clone()];
        let (promoted, cancelled) = tokio::join!(s.promote_parked(&ids), s.cancel_sweep("sw"));
        promoted.unwrap();
        cancelled.unwrap();
        let all = statuses(s, "sw").await;
        assert!(
            all.values().all(|st| *st == TrialStatus::Cancelled),
            "{}: {all:?}",
            b.name
        );
        assert_eq!(sweep_status(s, "sw").await, SweepStatus::Cancelled);
        assert!(s
            .lease_next(&LeaseAsk::new("w", CPU, "cpu"))
            .await
            .unwrap()
            .is_none());
    }
}

/// Trials left running by a dead daemon are listed for recovery, with their generations.
#[tokio::test]
async fn running_trials_are_listed_as_orphans_for_recovery() {
    for b in stores().await {
        let s = &b.store;
        s.insert_sweep("sw", &spec(2, 1, json!({})), None, u32::MAX)
            .await
            .unwrap()
            .unwrap();
        let (l, _) = s
            .lease_next(&LeaseAsk::new("w", CPU, "cpu"))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            s.running_leases().await.unwrap(),
            vec![(l.trial_id.clone(), 1, None)],
            "{}",
            b.name
        );
    }
}
