//! Fault injection against the real daemon: processes killed with SIGKILL (workers and the
//! daemon itself), SIGSTOP (a silent worker), SIGTERM (graceful shutdown), trials that
//! diverge, run out of time or find no data, stale reports from an old lease, 50 clients at
//! once, pause/resume and priorities, and storage that fills up or turns read-only. Every
//! test checks the SQLite file afterwards (read-only): trials by state, epoch rows exactly
//! 1..=n per trial, one `epoch_finished` event per epoch, the sweep's outcome.
//!
//! Tests that train hold `common::serial()` (two shared cores); each uses a few thousand
//! MNIST images and small models. docs/RELIABILITY.md maps every fault to its test here.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use common::{
    db_counts, db_epochs, db_events, db_rows, pid_alive, serial, wait_for, Daemon, Mount,
};
use serde_json::{json, Map, Value};

// ---------------------------------------------------------------------------------------
// Helpers

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The fixed hyperparameters of a small, quick trial (~1 s per epoch on one thread):
/// 2,700 training + 300 validation images in batches of 8, 200 test images.
fn small(epochs: u32) -> Value {
    json!({"epochs": epochs, "batchSize": 8, "learningRate": 0.002, "baseFilters": 8, "units": 32,
           "trainLimit": 3000, "testLimit": 200})
}

/// `small(epochs)` with `extra` fields added (or replaced).
fn small_with(epochs: u32, extra: Value) -> Value {
    let mut f = small(epochs);
    for (k, v) in extra.as_object().unwrap() {
        f[k] = v.clone();
    }
    f
}

fn sweep_body(name: &str, fixed: Value, space: Value) -> Value {
    json!({"name": name, "dataset": "mnist", "space": space, "fixed": fixed, "seed": 11})
}

/// Trial rows of a sweep straight from the store, by index.
fn db_trials(db: &Path, sweep: &str) -> Vec<Map<String, Value>> {
    db_rows(
        db,
        &format!(
            "SELECT id, idx, status, attempts, generation, epochs_planned, error, started_at, finished_at,
                    test_accuracy, worker FROM trials WHERE sweep_id = '{sweep}' ORDER BY idx"
        ),
    )
}

fn db_sweep_status(db: &Path, sweep: &str) -> String {
    db_rows(
        db,
        &format!("SELECT status FROM sweeps WHERE id = '{sweep}'"),
    )[0]["status"]
        .as_str()
        .unwrap()
        .to_string()
}

fn count_by_status(trials: &[Map<String, Value>]) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for t in trials {
        *m.entry(t["status"].as_str().unwrap().to_string())
            .or_insert(0) += 1;
    }
    m
}

fn epochs_of(db: &Path, trial: &str) -> Vec<u32> {
    db_epochs(db).remove(trial).unwrap_or_default()
}

/// The attempts of a trial as the event log tells them: for each `trial_started` (in order),
/// its attempt number and the epochs reported until the next start.
fn attempts_from_db(db: &Path, sweep: &str, trial: &str) -> Vec<(u64, Vec<u32>)> {
    let mut out: Vec<(u64, Vec<u32>)> = Vec::new();
    for e in db_events(db, Some(sweep)) {
        if e["trial_id"] != trial {
            continue;
        }
        match e["kind"].as_str().unwrap() {
            "trial_started" => out.push((e["attempt"].as_u64().unwrap(), Vec::new())),
            "epoch_finished" => out
                .last_mut()
                .unwrap_or_else(|| panic!("epoch before any start: {e}"))
                .1
                .push(e["metrics"]["epoch"].as_u64().unwrap() as u32),
            _ => {}
        }
    }
    out
}

/// The same from `cnnctl --output json watch` (replay of a finished sweep).
fn attempts_from_watch(events: &[Value], trial: &str) -> Vec<(u64, Vec<u32>)> {
    let mut out: Vec<(u64, Vec<u32>)> = Vec::new();
    for e in events {
        if let Some(s) = e.get("trialStarted").filter(|s| s["trialId"] == trial) {
            out.push((s["attempt"].as_u64().unwrap_or(0), Vec::new()));
        }
        if let Some(f) = e.get("epochFinished").filter(|f| f["trialId"] == trial) {
            out.last_mut()
                .unwrap()
                .1
                .push(f["metrics"]["epoch"].as_u64().unwrap() as u32);
        }
    }
    out
}

/// Every trial of the sweep: epoch rows exactly 1..=k (k = epochs planned when it
/// succeeded), one `epoch_finished` event per recorded epoch, in ascending order (so no
/// attempt re-ran an epoch an earlier one had recorded, and none was skipped), and the API's
/// per-epoch history the same as the rows. Returns the rows per trial.
fn assert_exact_epochs(d: &Daemon, sweep: &str) -> BTreeMap<String, Vec<u32>> {
    let db = d.db_path();
    let rows = db_epochs(&db);
    let mut out = BTreeMap::new();
    for t in db_trials(&db, sweep) {
        let id = t["id"].as_str().unwrap().to_string();
        let got = rows.get(&id).cloned().unwrap_or_default();
        let contiguous: Vec<u32> = (1..=got.len() as u32).collect();
        assert_eq!(got, contiguous, "trial {id}: epoch rows are not 1..=n");
        if t["status"] == "succeeded" {
            assert_eq!(
                got.len() as i64,
                t["epochs_planned"].as_i64().unwrap(),
                "trial {id} succeeded with missing epochs"
            );
        }
        let reported: Vec<u32> = attempts_from_db(&db, sweep, &id)
            .into_iter()
            .flat_map(|(_, e)| e)
            .collect();
        assert_eq!(
            reported, got,
            "trial {id}: epoch_finished events (in order) differ from the epoch rows"
        );
        let api_epochs: Vec<u32> = d.get_trial(&id).epochs.iter().map(|e| e.epoch).collect();
        assert_eq!(
            api_epochs, got,
            "trial {id}: GetTrial epochs differ from the store"
        );
        out.insert(id, got);
    }
    out
}

/// Waits until `trial` has recorded at least `min_epochs` epochs and is about a third into
/// the next one (judged from the last epoch's duration). Returns the pid of the worker
/// running it and the epochs recorded.
fn wait_mid_epoch(d: &Daemon, trial: &str, min_epochs: usize) -> (u32, usize) {
    let db = d.db_path();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        assert!(
            Instant::now() < deadline,
            "trial {trial} never got past epoch {min_epochs}; log:\n{}",
            d.log()
        );
        let rows = db_rows(
            &db,
            &format!("SELECT epoch, seconds FROM epochs WHERE trial_id = '{trial}' ORDER BY epoch"),
        );
        if rows.len() < min_epochs {
            std::thread::sleep(Duration::from_millis(50));
            continue;
        }
        let seconds = rows.last().unwrap()["seconds"].as_f64().unwrap();
        std::thread::sleep(Duration::from_secs_f64((seconds * 0.35).clamp(0.1, 3.0)));
        let now = epochs_of(&db, trial).len();
        let pid = d
            .get_status()
            .workers
            .iter()
            .find(|w| w.trial_id == trial)
            .map(|w| w.pid)
            .unwrap_or(0);
        if now == rows.len() && pid > 0 {
            return (pid, now);
        }
    }
}

fn signal(pid: u32, sig: i32) {
    // SAFETY: kill(2) on a worker process of a daemon this test started.
    let rc = unsafe { libc::kill(pid as i32, sig) };
    assert_eq!(
        rc,
        0,
        "kill({pid}, {sig}): {}",
        std::io::Error::last_os_error()
    );
}

fn wait_gone(pids: &[u32], limit: Duration, log: impl Fn() -> String) {
    wait_for(limit, &format!("processes {pids:?} to exit"), log, || {
        pids.iter().all(|p| !pid_alive(*p)).then_some(())
    });
}

// ---------------------------------------------------------------------------------------
// 1. A worker killed with SIGKILL in the middle of an epoch.

#[test]
fn worker_killed_mid_epoch_is_requeued_and_resumes_from_its_checkpoint() {
    let _one_at_a_time = serial();
    let d = Daemon::start(1, &[]);
    let sweep = d.submit(&sweep_body("kill-worker", small(4), json!({})));
    let trial = format!("{sweep}-t0");

    let (pid, recorded) = wait_mid_epoch(&d, &trial, 1);
    signal(pid, libc::SIGKILL);

    let s = d.wait_sweep_ended(&sweep, Duration::from_secs(120));
    assert_eq!(s["status"], "finished", "{s}");
    let t = d.cnnctl_json(&["trial", &trial]);
    assert_eq!(t["status"], "succeeded", "{t}");
    assert_eq!(t["attempts"], 2, "the kill costs one attempt: {t}");
    assert!(
        t["hasTest"] == true && t["testAccuracy"].as_f64().unwrap() > 0.0,
        "{t}"
    );

    // Exactly 4 epoch rows, each reported once: the second attempt started after the epochs
    // the first one had recorded (its checkpoint), not from scratch.
    let rows = assert_exact_epochs(&d, &sweep);
    assert_eq!(rows[&trial], vec![1, 2, 3, 4]);
    let attempts = attempts_from_db(&d.db_path(), &sweep, &trial);
    assert_eq!(attempts.len(), 2, "{attempts:?}");
    assert_eq!((attempts[0].0, attempts[1].0), (1, 2), "{attempts:?}");
    let first = attempts[0].1.len();
    assert!(
        first >= recorded && first < 4,
        "first attempt recorded {first} epochs (>= {recorded} at the kill): {attempts:?}"
    );
    assert_eq!(
        attempts[1].1,
        ((first as u32 + 1)..=4).collect::<Vec<_>>(),
        "second attempt must resume at epoch {}",
        first + 1
    );
    // cnnctl watch replays the same story.
    let watched = attempts_from_watch(&d.watch_events(&sweep), &trial);
    assert_eq!(watched, attempts);
    assert!(
        d.log().contains("resuming the trial from its checkpoint"),
        "no resume in the log:\n{}",
        d.log()
    );

    // The killed worker is gone and a new one took its slot.
    assert!(!pid_alive(pid), "killed worker {pid} still alive");
    let st = d.wait_workers_idle(Duration::from_secs(30));
    assert_ne!(st.workers[0].pid, pid);
    let (sweeps, trials, epochs, _) = db_counts(&d.db_path());
    assert_eq!((sweeps, trials, epochs), (1, 1, 4));
    assert_eq!(db_sweep_status(&d.db_path(), &sweep), "finished");

    // Fencing: a report carrying the first lease's generation is refused and stores nothing.
    let stale = json!({"workerId": "cpu-0", "trialId": trial, "generation": 1,
                       "metrics": {"epoch": 42, "trainLoss": 1.0, "trainAccuracy": 0.5,
                                   "valLoss": 1.0, "valAccuracy": 0.5, "seconds": 1.0,
                                   "imagesPerSecond": 1.0}});
    let out = d.grpcurl_worker_hub("cnn.v1.WorkerHub/ReportEpoch", &stale.to_string(), &[]);
    assert!(
        !out.status.success() && stderr(&out).contains("FailedPrecondition"),
        "stale report: {}",
        stderr(&out)
    );
    assert!(stderr(&out).contains("stale lease"), "{}", stderr(&out));
    assert_eq!(epochs_of(&d.db_path(), &trial), vec![1, 2, 3, 4]);
}

// ---------------------------------------------------------------------------------------
// 2. The daemon killed with SIGKILL in the middle of a sweep, then restarted.

#[test]
fn daemon_killed_mid_sweep_recovers_queue_order_and_resumes_on_restart() {
    killed_mid_sweep(&[]);
}

/// The same crash and restart with the store on PostgreSQL (a throw-away server).
#[test]
fn daemon_killed_mid_sweep_on_postgres_recovers_queue_order_and_resumes_on_restart() {
    let url = common::postgres::fresh_database();
    killed_mid_sweep(&["--db", &url]);
}

/// A daemon killed with a trial mid-way, restarted with the same flags (`flags` chooses the
/// store): the finished and cancelled sweeps untouched, the queue order kept, the trial
/// resumed from its checkpoint without an epoch lost or doubled.
fn killed_mid_sweep(flags: &[&str]) {
    let _one_at_a_time = serial();
    let d = Daemon::start(1, flags);
    let db = d.db_path();

    // A sweep that finishes before the crash: it must come back exactly as it was.
    let done = d.submit(&sweep_body(
        "done-before",
        small_with(1, json!({"batchSize": 32})),
        json!({}),
    ));
    d.wait_sweep_ended(&done, Duration::from_secs(60));
    let done_trials = db_trials(&db, &done);
    let done_epochs = db_epochs(&db).get(&format!("{done}-t0")).cloned();
    let done_events = db_events(&db, Some(&done));
    assert_eq!(done_trials[0]["status"], "succeeded");

    // Three trials on one worker: one runs, two wait. A fourth sweep is cancelled while queued.
    let sweep = d.submit(&sweep_body(
        "crash",
        small(2),
        json!({"dropout": [0.0, 0.1, 0.2]}),
    ));
    let cancelled = d.submit(&sweep_body("cancelled-before", small(1), json!({})));
    let out = d.cnnctl(&["cancel", &cancelled]);
    assert!(out.status.success(), "{}", stderr(&out));
    let cancelled_events = db_events(&db, Some(&cancelled));

    let t1 = format!("{sweep}-t1");
    let (_, recorded) = wait_mid_epoch(&d, &t1, 1);
    let workers = d.worker_pids();
    assert!(workers.iter().all(|p| *p > 0), "{workers:?}");
    let mut d = d;
    d.kill9();

    // What the dead daemon left: t0 done, t1 running with its epochs, t2 queued.
    let left = db_trials(&db, &sweep);
    assert_eq!(
        left.iter()
            .map(|t| t["status"].as_str().unwrap())
            .collect::<Vec<_>>(),
        ["succeeded", "running", "queued"],
        "{left:?}"
    );
    let at_crash = epochs_of(&db, &t1).len();
    assert!(at_crash >= recorded);
    // Its workers die with it (PR_SET_PDEATHSIG).
    wait_gone(&workers, Duration::from_secs(10), || d.log());

    let d = d.restart(1, flags);
    let s = d.wait_sweep_ended(&sweep, Duration::from_secs(180));
    assert_eq!(s["status"], "finished", "{s}");
    let trials = db_trials(&db, &sweep);
    assert_eq!(
        count_by_status(&trials),
        BTreeMap::from([("succeeded".to_string(), 3)]),
        "{trials:?}"
    );
    let rows = assert_exact_epochs(&d, &sweep);
    assert!(rows.values().all(|e| *e == vec![1, 2]), "{rows:?}");

    // The interrupted trial resumed after its last recorded epoch; the restart did not use
    // up an attempt.
    let attempts = attempts_from_db(&db, &sweep, &t1);
    assert_eq!(attempts.len(), 2, "{attempts:?}");
    assert_eq!(attempts[0].1.len(), at_crash, "{attempts:?}");
    assert_eq!(
        attempts[1].1,
        ((at_crash as u32 + 1)..=2).collect::<Vec<_>>(),
        "{attempts:?}"
    );
    assert_eq!(d.cnnctl_json(&["trial", &t1])["attempts"], 1);
    assert!(d.log().contains("re-queued"), "{}", d.log());
    assert!(
        d.log().contains("resuming the trial from its checkpoint"),
        "{}",
        d.log()
    );

    // Queue order kept: leases went t0, t1, then (after the restart) t1 again, then t2.
    let started: Vec<String> = db_events(&db, Some(&sweep))
        .iter()
        .filter(|e| e["kind"] == "trial_started")
        .map(|e| e["trial_id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        started,
        [
            format!("{sweep}-t0"),
            t1.clone(),
            t1.clone(),
            format!("{sweep}-t2")
        ]
    );
    let starts: Vec<&str> = trials
        .iter()
        .map(|t| t["started_at"].as_str().unwrap())
        .collect();
    assert!(
        starts.windows(2).all(|w| w[0] <= w[1]),
        "started_at out of order: {starts:?}"
    );

    // The sweep that had finished, and the one that was cancelled, are untouched.
    assert_eq!(db_sweep_status(&db, &done), "finished");
    assert_eq!(db_trials(&db, &done), done_trials);
    assert_eq!(
        db_epochs(&db).get(&format!("{done}-t0")).cloned(),
        done_epochs
    );
    assert_eq!(db_events(&db, Some(&done)), done_events);
    assert_eq!(d.cnnctl_json(&["sweep", &done])["status"], "finished");
    assert_eq!(db_sweep_status(&db, &cancelled), "cancelled");
    assert_eq!(db_events(&db, Some(&cancelled)), cancelled_events);
    let (sweeps, n_trials, epochs, _) = db_counts(&db);
    assert_eq!((sweeps, n_trials, epochs), (3, 5, 1 + 6));
}

/// The narrowest crash window, made wide on purpose: the daemon is frozen and killed as soon
/// as it has stored epoch 2. A worker uploads each epoch's checkpoint before it reports the
/// epoch, and the store records the epoch row with its checkpoint's digest in one statement,
/// so there is no state where the store holds an epoch whose checkpoint it lacks. The
/// restarted daemon resumes from epoch 2's checkpoint (the blob of the last epoch row holds
/// epoch 2), the worker never trains epoch 2 again, and the store holds each epoch once.
#[test]
fn daemon_killed_right_after_an_epoch_report_resumes_from_that_epochs_checkpoint() {
    killed_right_after_a_report(&[]);
}

/// The same narrow window with the store on PostgreSQL.
#[test]
fn daemon_killed_right_after_an_epoch_report_on_postgres_resumes_from_that_epochs_checkpoint() {
    let url = common::postgres::fresh_database();
    killed_right_after_a_report(&["--db", &url]);
}

/// The daemon frozen and killed right after epoch 2 is stored, restarted with `flags`.
fn killed_right_after_a_report(flags: &[&str]) {
    let _one_at_a_time = serial();
    let mut d = Daemon::start(1, flags);
    let sweep = d.submit(&sweep_body("report-then-crash", small(3), json!({})));
    let trial = format!("{sweep}-t0");
    let workers = d.worker_pids();
    let db = d.db_path();
    wait_for(
        Duration::from_secs(120),
        "epoch 2 in the store",
        || d.log(),
        || (epochs_of(&db, &trial).len() >= 2).then_some(()),
    );
    d.signal(libc::SIGSTOP);
    d.kill9();
    for pid in workers {
        wait_for(
            Duration::from_secs(30),
            "the worker to exit with its daemon",
            || d.log(),
            || (!pid_alive(pid)).then_some(()),
        );
    }
    assert_eq!(epochs_of(&db, &trial), vec![1, 2]);
    let checkpoint = common::latest_checkpoint(d.state.path(), &db, &trial)
        .expect("epoch 2's row names its checkpoint");
    assert_eq!(
        common::checkpoint_epoch(&checkpoint),
        2,
        "the checkpoint the store names for epoch 2 holds epoch 2"
    );

    let d = d.restart(1, flags);
    let s = d.wait_sweep_ended(&sweep, Duration::from_secs(120));
    assert_eq!(s["trials"][0]["status"], "succeeded", "{s}");
    assert_eq!(
        epochs_of(&d.db_path(), &trial),
        vec![1, 2, 3],
        "an epoch row was lost or doubled"
    );
    // The second attempt resumed after epoch 2: it trained epoch 3 only.
    let attempts: Vec<Vec<u32>> = attempts_from_db(&d.db_path(), &sweep, &trial)
        .into_iter()
        .map(|(_, epochs)| epochs)
        .collect();
    assert_eq!(attempts, vec![vec![1, 2], vec![3]]);
    let api_epochs: Vec<u32> = d.get_trial(&trial).epochs.iter().map(|e| e.epoch).collect();
    assert_eq!(api_epochs, vec![1, 2, 3]);
}

// ---------------------------------------------------------------------------------------
// 3. A trial whose loss becomes NaN.

#[test]
fn nan_loss_fails_the_trial_as_diverged_naming_epoch_and_batch() {
    let _one_at_a_time = serial();
    let d = Daemon::start(2, &[]);
    let workers = d.wait_workers_idle(Duration::from_secs(30));
    // With this seed the lr=100 trial's loss turns inf within the first batches (others may
    // merely explode to ~1e20 and stay finite: that is not NaN and is not caught).
    let fixed = json!({"epochs": 2, "optimizer": "sgd", "batchNorm": false, "activation": "elu", "batchSize": 64,
                       "baseFilters": 8, "units": 32, "trainLimit": 2000, "testLimit": 200});
    let mut body = sweep_body("nan", fixed, json!({"learningRate": [0.001, 100]}));
    body["seed"] = json!(1);
    let sweep = d.submit(&body);
    let s = d.wait_sweep_ended(&sweep, Duration::from_secs(120));
    assert_eq!(s["status"], "finished", "{s}");

    let db = d.db_path();
    let trials = db_trials(&db, &sweep);
    let by_lr = |lr: f64| {
        s["trials"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["params"]["learningRate"].as_f64() == Some(lr))
            .unwrap_or_else(|| panic!("no trial with learningRate {lr}: {s}"))
            .clone()
    };
    let good = by_lr(0.001);
    let bad = by_lr(100.0);
    assert_eq!(good["status"], "succeeded", "{good}");
    assert_eq!(bad["status"], "failed", "{bad}");
    let error = bad["error"].as_str().unwrap();
    assert!(error.starts_with("diverged"), "{error}");
    let number_after = |word: &str| -> u32 {
        let rest = error
            .split(word)
            .nth(1)
            .unwrap_or_else(|| panic!("'{word}' missing from '{error}'"));
        rest.trim_start()
            .split(|c: char| !c.is_ascii_digit())
            .next()
            .unwrap()
            .parse()
            .unwrap_or_else(|_| panic!("no number after '{word}' in '{error}'"))
    };
    let (epoch, batch) = (number_after("epoch "), number_after("batch "));
    assert!((1..=2).contains(&epoch) && batch >= 1, "{error}");

    // The epochs before the divergence are kept; the failure is not retried.
    let bad_id = bad["trialId"].as_str().unwrap();
    assert_eq!(epochs_of(&db, bad_id), (1..epoch).collect::<Vec<_>>());
    assert_eq!(d.cnnctl_json(&["trial", bad_id])["attempts"], 1);
    assert_eq!(
        count_by_status(&trials),
        BTreeMap::from([("failed".into(), 1), ("succeeded".into(), 1)])
    );
    assert_exact_epochs(&d, &sweep);
    assert_eq!(s["bestTrialId"], good["trialId"]);
    let finished = db_events(&db, Some(&sweep));
    assert_eq!(
        finished.last().unwrap()["kind"],
        "sweep_finished",
        "{finished:?}"
    );
    // Divergence is a result, not a crash: both workers are the same processes, idle.
    let after = d.wait_workers_idle(Duration::from_secs(30));
    let pids = |st: &cnnd_proto::Status| st.workers.iter().map(|w| w.pid).collect::<Vec<_>>();
    assert_eq!(pids(&after), pids(&workers), "a worker was replaced");
}

// ---------------------------------------------------------------------------------------
// 4. A trial past its timeLimit.

#[test]
fn time_limit_fails_the_trial_as_timed_out_and_the_worker_carries_on() {
    let _one_at_a_time = serial();
    let d = Daemon::start(1, &[]);
    let pid_before = d.wait_workers_idle(Duration::from_secs(30)).workers[0].pid;
    let sweep = d.submit(&sweep_body(
        "time-limit",
        small_with(50, json!({"timeLimit": 2})),
        json!({}),
    ));
    let s = d.wait_sweep_ended(&sweep, Duration::from_secs(60));
    assert_eq!(s["status"], "finished", "{s}");
    let t = &s["trials"][0];
    assert_eq!(t["status"], "failed", "{t}");
    let error = t["error"].as_str().unwrap();
    assert!(error.starts_with("timed_out"), "{error}");
    assert!(error.contains("time limit of 2 s"), "{error}");

    let trial = t["trialId"].as_str().unwrap();
    let rows = assert_exact_epochs(&d, &sweep);
    assert!(rows[trial].len() < 50, "{rows:?}");
    assert_eq!(d.cnnctl_json(&["trial", trial])["attempts"], 1);

    // The same worker process is idle again and runs the next sweep.
    let st = d.wait_workers_idle(Duration::from_secs(30));
    assert_eq!(
        st.workers[0].pid, pid_before,
        "the worker was replaced: {st:?}"
    );
    let next = d.submit(&sweep_body(
        "after-time-limit",
        small_with(1, json!({"batchSize": 32})),
        json!({}),
    ));
    let s = d.wait_sweep_ended(&next, Duration::from_secs(60));
    assert_eq!(s["trials"][0]["status"], "succeeded", "{s}");
    assert_exact_epochs(&d, &next);
}

// ---------------------------------------------------------------------------------------
// 4b. libtorch itself fails inside a trial.

#[test]
fn libtorch_error_fails_the_trial_with_its_message_and_the_worker_carries_on() {
    let _one_at_a_time = serial();
    let d = Daemon::start_with_address_space_limit(1, &[], 32 << 30);
    let pid_before = d.wait_workers_idle(Duration::from_secs(30)).workers[0].pid;
    // Valid per the validator, but the first convolution's output (16 x 1024 x 1024 x 1024
    // floats, 64 GiB) is more than the worker's 32 GiB of address space (the daemon's limit,
    // which its workers inherit): libtorch's allocator is refused at once on any host, and
    // the error surfaces from the forward pass.
    let fixed = json!({"epochs": 1, "inputSize": 1024, "blocks": 1, "baseFilters": 1024, "head": "gap",
                       "batchSize": 16, "trainLimit": 20, "testLimit": 10});
    let sweep = d.submit(&sweep_body("libtorch-error", fixed, json!({})));
    let s = d.wait_sweep_ended(&sweep, Duration::from_secs(60));
    assert_eq!(s["status"], "finished", "{s}");
    let t = &s["trials"][0];
    assert_eq!(t["status"], "failed", "{t}");
    let error = t["error"].as_str().unwrap();
    eprintln!("libtorch error: {error}");
    assert!(error.starts_with("libtorch"), "{error}");
    assert!(
        error.contains("allocate"),
        "the message should be libtorch's: {error}"
    );
    let trial = t["trialId"].as_str().unwrap();
    assert_eq!(
        d.cnnctl_json(&["trial", trial])["attempts"],
        1,
        "not retried"
    );
    let db = d.db_path();
    assert_eq!(
        count_by_status(&db_trials(&db, &sweep)),
        BTreeMap::from([("failed".into(), 1)])
    );
    assert!(epochs_of(&db, trial).is_empty());
    assert_eq!(db_sweep_status(&db, &sweep), "finished");
    // An error inside libtorch is a result, not a crash: the same worker is idle again.
    let st = d.wait_workers_idle(Duration::from_secs(30));
    assert_eq!(
        st.workers[0].pid, pid_before,
        "the worker was replaced: {st:?}"
    );
}

// ---------------------------------------------------------------------------------------
// 5. No data set where the daemon was told to look.

#[test]
fn missing_data_is_refused_at_submit_naming_the_path_and_the_worker_survives() {
    let _one_at_a_time = serial();
    let empty = tempfile::tempdir().unwrap();
    let d = Daemon::start_with_data_dir(empty.path(), 1, &[]);
    let pid_before = d.wait_workers_idle(Duration::from_secs(30)).workers[0].pid;
    // The daemon hashes every file of the data set into the sweep's manifest at submit
    // (workers fetch the files by digest), so a missing file is known before any trial.
    let out = d.grpcurl(
        "cnn.v1.Orchestrator/SubmitSweep",
        &sweep_body("no-data", small(1), json!({"dropout": [0.0, 0.5]})).to_string(),
    );
    let err = stderr(&out);
    assert!(!out.status.success(), "accepted a sweep without data");
    assert!(err.contains("InvalidArgument"), "{err}");
    let path = empty.path().display().to_string();
    assert!(err.contains("dataset"), "does not name the field: {err}");
    assert!(err.contains(&path), "does not name {path}: {err}");
    assert!(err.contains("CNND_DATA_DIR"), "{err}");
    assert!(err.contains("train-images-idx3-ubyte"), "{err}");
    let (sweeps, trials, epochs, _) = db_counts(&d.db_path());
    assert_eq!(
        (sweeps, trials, epochs),
        (0, 0, 0),
        "a refused sweep left rows"
    );
    let st = d.wait_workers_idle(Duration::from_secs(30));
    assert_eq!(
        st.workers[0].pid, pid_before,
        "the worker was replaced: {st:?}"
    );
    assert_eq!(st.workers_idle, 1);
}

// ---------------------------------------------------------------------------------------
// 6. SIGTERM: graceful shutdown.

#[test]
fn sigterm_gives_the_running_trial_back_at_the_epoch_boundary_and_restart_resumes_it() {
    let _one_at_a_time = serial();
    let flags = ["--shutdown-grace-secs", "30"];
    let mut d = Daemon::start(1, &flags);
    let db = d.db_path();
    let sweep = d.submit(&sweep_body("sigterm", small(5), json!({})));
    let trial = format!("{sweep}-t0");
    let (worker, recorded) = wait_mid_epoch(&d, &trial, 1);
    assert!(
        recorded <= 2,
        "too late to leave several epochs: {recorded}"
    );

    d.signal(libc::SIGTERM);
    let exit = d
        .wait_exit(Duration::from_secs(30))
        .unwrap_or_else(|| panic!("cnnd still running 30 s after SIGTERM; log:\n{}", d.log()));
    assert!(exit.success(), "cnnd exited with {exit}; log:\n{}", d.log());
    assert!(d.log().contains("shutting down"), "{}", d.log());
    wait_gone(&[worker], Duration::from_secs(10), || d.log());

    // Given back: queued again, the interrupted attempt not counted, its epochs kept (the
    // epoch in progress at the signal was finished and recorded), the checkpoint on disk.
    let t = &db_trials(&db, &sweep)[0];
    assert_eq!(t["status"], "queued", "{t:?}");
    assert_eq!(
        t["attempts"], 0,
        "a shutdown must not use up an attempt: {t:?}"
    );
    let kept = epochs_of(&db, &trial);
    assert!(
        kept.len() > recorded && kept.len() < 5,
        "kept {kept:?}, {recorded} recorded at the signal"
    );
    assert_eq!(kept, (1..=kept.len() as u32).collect::<Vec<_>>());
    let checkpoint = common::latest_checkpoint(d.state.path(), &db, &trial)
        .expect("the last kept epoch names its checkpoint");
    assert_eq!(common::checkpoint_epoch(&checkpoint), kept.len() as u32);
    assert_ne!(db_sweep_status(&db, &sweep), "finished");

    let d = d.restart(1, &flags);
    let s = d.wait_sweep_ended(&sweep, Duration::from_secs(120));
    assert_eq!(s["trials"][0]["status"], "succeeded", "{s}");
    assert_eq!(d.cnnctl_json(&["trial", &trial])["attempts"], 1);
    let rows = assert_exact_epochs(&d, &sweep);
    assert_eq!(rows[&trial], vec![1, 2, 3, 4, 5]);
    let attempts = attempts_from_db(&db, &sweep, &trial);
    assert_eq!(attempts.len(), 2, "{attempts:?}");
    assert_eq!(attempts[0].1.len(), kept.len());
    assert_eq!(
        attempts[1].1,
        ((kept.len() as u32 + 1)..=5).collect::<Vec<_>>(),
        "{attempts:?}"
    );
}

// ---------------------------------------------------------------------------------------
// 7. Fifty clients polling while a sweep trains.

#[test]
fn fifty_concurrent_clients_see_no_errors_while_a_sweep_trains() {
    use cnnd_proto::{GetStatusRequest, GetSweepRequest, GetTrialRequest, ListSweepsRequest};

    let _one_at_a_time = serial();
    let d = Daemon::start(2, &[]);
    let sweep = d.submit(&sweep_body(
        "busy",
        small_with(2, json!({"batchSize": 32})),
        json!({"kernelSize": [3, 5], "head": ["gap", "dense"]}),
    ));
    let options = cnnd_client::ClientOptions {
        addr: d.addr.clone(),
        token_file: Some(d.token_file()),
        ..Default::default()
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (ok, errors) = rt.block_on(async {
        let until = tokio::time::Instant::now() + Duration::from_secs(10);
        let mut tasks = Vec::new();
        for i in 0..50 {
            let options = options.clone();
            let sweep = sweep.clone();
            tasks.push(tokio::spawn(async move {
                let mut ok = 0u32;
                let mut errors: Vec<String> = Vec::new();
                let mut client = match cnnd_client::connect(&options).await {
                    Ok(c) => c,
                    Err(e) => return (0, vec![format!("client {i}: connect: {e}")]),
                };
                while tokio::time::Instant::now() < until {
                    let results = [
                        client.get_status(GetStatusRequest {}).await.map(|_| ()),
                        client
                            .get_sweep(GetSweepRequest {
                                sweep_id: sweep.clone(),
                                all_params: false,
                            })
                            .await
                            .map(|_| ()),
                        client.list_sweeps(ListSweepsRequest {}).await.map(|_| ()),
                        client
                            .get_trial(GetTrialRequest {
                                trial_id: format!("{sweep}-t{}", i % 4),
                            })
                            .await
                            .map(|_| ()),
                    ];
                    for r in results {
                        match r {
                            Ok(()) => ok += 1,
                            Err(s) => {
                                errors.push(format!("client {i}: {:?} {}", s.code(), s.message()))
                            }
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(25)).await;
                }
                (ok, errors)
            }));
        }
        let mut ok = 0;
        let mut errors = Vec::new();
        for t in tasks {
            let (o, e) = t.await.unwrap();
            ok += o;
            errors.extend(e);
        }
        (ok, errors)
    });
    assert!(
        errors.is_empty(),
        "{} errors ({ok} answers), e.g. {:?}",
        errors.len(),
        &errors[..errors.len().min(5)]
    );
    assert!(ok >= 50 * 4, "only {ok} answers in 10 s");
    eprintln!("50 clients: {ok} answers, no error");

    let s = d.wait_sweep_ended(&sweep, Duration::from_secs(120));
    assert_eq!(s["status"], "finished");
    let trials = db_trials(&d.db_path(), &sweep);
    assert_eq!(
        count_by_status(&trials),
        BTreeMap::from([("succeeded".into(), 4)]),
        "{trials:?}"
    );
    let rows = assert_exact_epochs(&d, &sweep);
    assert!(rows.values().all(|e| *e == vec![1, 2]));
}

// ---------------------------------------------------------------------------------------
// 8. Pause/resume and priorities.

#[test]
fn pause_holds_queued_trials_and_resume_releases_them() {
    let _one_at_a_time = serial();
    let d = Daemon::start(1, &[]);
    let db = d.db_path();
    let sweep = d.submit(&sweep_body(
        "paused",
        small_with(1, json!({"batchSize": 32})),
        json!({"dropout": [0.0, 0.1]}),
    ));
    let paused = d.cnnctl_json(&["pause", &sweep]);
    let held: Vec<String> = db_trials(&db, &sweep)
        .iter()
        .filter(|t| t["status"] == "queued")
        .map(|t| t["id"].as_str().unwrap().to_string())
        .collect();
    assert!(!held.is_empty(), "both trials started before the pause");
    assert_eq!(paused["queuedTrials"], held.len(), "{paused}");
    assert_eq!(d.cnnctl_json(&["sweep", &sweep])["status"], "paused");

    // A trial that was already running may finish; nothing else starts.
    wait_for(
        Duration::from_secs(60),
        "the running trial to end",
        || d.log(),
        || {
            db_trials(&db, &sweep)
                .iter()
                .all(|t| t["status"] != "running")
                .then_some(())
        },
    );
    std::thread::sleep(Duration::from_secs(2));
    let trials = db_trials(&db, &sweep);
    let epochs = db_epochs(&db);
    let events = db_events(&db, Some(&sweep));
    for id in &held {
        let t = trials.iter().find(|t| t["id"] == id.as_str()).unwrap();
        assert_eq!(t["status"], "queued", "{t:?}");
        assert!(
            !epochs.contains_key(id),
            "held trial {id} trained: {epochs:?}"
        );
        assert!(
            !events
                .iter()
                .any(|e| e["kind"] == "trial_started" && e["trial_id"] == id.as_str()),
            "{events:?}"
        );
    }
    let st = d.cnnctl_json(&["status"]);
    assert_eq!(st["workersIdle"], 1, "{st}");
    assert_eq!(st["queueDepth"], held.len(), "{st}");
    // Asked twice: the second answer comes from the daemon's GetSweep cache, which the
    // resume below must invalidate at once.
    for _ in 0..2 {
        assert_eq!(d.cnnctl_json(&["sweep", &sweep])["status"], "paused");
    }

    let resumed = d.cnnctl_json(&["resume", &sweep]);
    assert_eq!(resumed["queuedTrials"], held.len(), "{resumed}");
    assert_ne!(d.cnnctl_json(&["sweep", &sweep])["status"], "paused");
    let s = d.wait_sweep_ended(&sweep, Duration::from_secs(60));
    assert_eq!(s["status"], "finished");
    assert_eq!(
        count_by_status(&db_trials(&db, &sweep)),
        BTreeMap::from([("succeeded".into(), 2)])
    );
    let rows = assert_exact_epochs(&d, &sweep);
    assert!(rows.values().all(|e| *e == vec![1]));
    // Pausing an ended sweep is refused.
    let out = d.cnnctl(&["pause", &sweep]);
    assert!(
        !out.status.success() && stderr(&out).contains("finished"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn a_higher_priority_sweep_is_leased_before_an_earlier_one() {
    let _one_at_a_time = serial();
    let d = Daemon::start(1, &[]);
    let db = d.db_path();
    let fixed = small_with(1, json!({"batchSize": 32}));
    let mut low = sweep_body("low", fixed.clone(), json!({"dropout": [0.0, 0.1]}));
    low["priority"] = json!(0);
    let mut high = sweep_body("high", fixed, json!({"dropout": [0.2, 0.3]}));
    high["priority"] = json!(5);

    let low = d.submit(&low);
    d.cnnctl_json(&["pause", &low]);
    let high = d.submit(&high);
    // Nothing of the paused sweep can start from here on: these wait behind `high`.
    let waiting: Vec<String> = db_trials(&db, &low)
        .iter()
        .filter(|t| t["status"] == "queued")
        .map(|t| t["id"].as_str().unwrap().to_string())
        .collect();
    assert!(!waiting.is_empty());
    d.cnnctl_json(&["resume", &low]);
    d.wait_sweep_ended(&low, Duration::from_secs(90));
    d.wait_sweep_ended(&high, Duration::from_secs(90));

    let order: Vec<String> = db_events(&db, None)
        .iter()
        .filter(|e| e["kind"] == "trial_started")
        .map(|e| e["trial_id"].as_str().unwrap().to_string())
        .collect();
    let pos = |id: &str| {
        order
            .iter()
            .position(|t| t == id)
            .unwrap_or_else(|| panic!("{id} never started: {order:?}"))
    };
    for h in [format!("{high}-t0"), format!("{high}-t1")] {
        for w in &waiting {
            assert!(
                pos(&h) < pos(w),
                "high-priority {h} started after {w}: {order:?}"
            );
        }
    }
    // FIFO within a priority.
    assert!(
        pos(&format!("{high}-t0")) < pos(&format!("{high}-t1")),
        "{order:?}"
    );
    assert!(
        pos(&format!("{low}-t0")) < pos(&format!("{low}-t1")),
        "{order:?}"
    );
    for s in [&low, &high] {
        assert_eq!(
            count_by_status(&db_trials(&db, s)),
            BTreeMap::from([("succeeded".into(), 2)])
        );
        assert_exact_epochs(&d, s);
    }
}

// ---------------------------------------------------------------------------------------
// 9. Storage: full, turning read-only under the daemon, read-only at start.

/// The mount tests below need root (they mount a tmpfs or a loop device), so they are
/// `#[ignore]`d with that reason: a plain `cargo test` lists them as ignored, never as
/// passed. scripts/test.sh runs them (`-- --ignored mount_`) when it runs as root, as CI
/// does; there a file system that cannot be set up fails the test.
fn cannot_set_up(why: &str) -> ! {
    panic!("cannot set up the file system this test needs: {why}")
}

/// What a reader sees of a finished sweep (through cnnctl): status, and per trial its status,
/// epochs, test accuracy.
fn sweep_view(d: &Daemon, sweep: &str) -> Value {
    let s = d.cnnctl_json(&["sweep", sweep]);
    let trials: Vec<Value> = s["trials"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            let full = d.cnnctl_json(&["trial", t["trialId"].as_str().unwrap()]);
            json!({"id": t["trialId"], "status": t["status"], "testAccuracy": t["testAccuracy"],
                   "epochs": full["epochs"], "attempts": full["attempts"]})
        })
        .collect();
    json!({"status": s["status"], "trials": trials})
}

/// A daemon on a fresh tmpfs that has run one small sweep (charts included), then the
/// disk filled up to the last byte. Returns the daemon, the finished sweep, its request and
/// the filler file (delete it to free the space).
fn daemon_with_a_full_disk(mount: &Mount) -> (Daemon, String, Value, std::path::PathBuf) {
    let d = Daemon::start_in(tempfile::TempDir::new_in(&mount.dir).unwrap(), 1, &[]);
    let body = sweep_body(
        "before-full",
        small_with(2, json!({"batchSize": 32})),
        json!({}),
    );
    let before = d.submit(&body);
    d.wait_sweep_ended(&before, Duration::from_secs(60));
    // Let the charts of the finished sweep land before the disk fills.
    let charts = d.state.path().join("charts").join(&before).join("default");
    wait_for(
        Duration::from_secs(30),
        "charts",
        || d.log(),
        || (std::fs::read_dir(&charts).map(|r| r.count()).unwrap_or(0) >= 4).then_some(()),
    );
    let filler = mount.fill();
    (d, before, body, filler)
}

/// Submits on the full disk twice (grpcurl, then cnnctl, as a user retrying would): both
/// refused with RESOURCE_EXHAUSTED naming storage.
fn submit_on_full_disk_is_refused(d: &Daemon) {
    let body = sweep_body("on-full-disk", small(1), json!({}));
    let out = d.grpcurl("cnn.v1.Orchestrator/SubmitSweep", &body.to_string());
    let err = stderr(&out);
    assert!(!out.status.success(), "a sweep was accepted on a full disk");
    assert!(
        err.contains("ResourceExhausted"),
        "expected RESOURCE_EXHAUSTED: {err}"
    );
    assert!(err.contains("storage") && err.contains("full"), "{err}");
    // cnnctl says the same in one line.
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), body.to_string()).unwrap();
    let out = d.cnnctl(&["submit", file.path().to_str().unwrap()]);
    assert!(!out.status.success(), "a sweep was accepted on a full disk");
    assert_eq!(stderr(&out).trim().lines().count(), 1, "{}", stderr(&out));
    assert!(
        stderr(&out).contains("RESOURCE_EXHAUSTED") && stderr(&out).contains("storage"),
        "{}",
        stderr(&out)
    );
}

#[test]
#[ignore = "mounts file systems: needs root (scripts/test.sh runs the mount_ tests as root)"]
fn mount_full_disk_refuses_new_sweeps_with_resource_exhausted_and_keeps_recorded_data() {
    let _one_at_a_time = serial();
    let mount = match Mount::tmpfs("24m") {
        Ok(m) => m,
        Err(why) => cannot_set_up(&why),
    };
    let (d, before, _, _filler) = daemon_with_a_full_disk(&mount);
    let db = d.db_path();
    let view = sweep_view(&d, &before);
    let counts = db_counts(&db);
    let rows = db_epochs(&db);

    submit_on_full_disk_is_refused(&d);

    // Nothing half-written; what was recorded reads back the same, through the API and the file.
    assert_eq!(db_counts(&db), counts);
    assert_eq!(db_epochs(&db), rows);
    assert_eq!(sweep_view(&d, &before), view);
    assert_eq!(
        d.cnnctl_json(&["sweeps"])["sweeps"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    assert!(d.cnnctl(&["status"]).status.success());
    assert_exact_epochs(&d, &before);
    drop(d);
}

#[test]
#[ignore = "mounts file systems: needs root (scripts/test.sh runs the mount_ tests as root)"]
fn mount_after_a_full_disk_is_freed_new_work_is_stored_durably() {
    let _one_at_a_time = serial();
    let mount = match Mount::tmpfs("24m") {
        Ok(m) => m,
        Err(why) => cannot_set_up(&why),
    };
    let (d, before, body, filler) = daemon_with_a_full_disk(&mount);
    let db = d.db_path();
    submit_on_full_disk_is_refused(&d);

    // Space again: the same daemon takes work again, and stores it where readers (and the
    // next daemon) see it.
    std::fs::remove_file(filler).unwrap();
    let after = d.submit(&body);
    let visible = d.cnnctl(&["sweep", &after]);
    assert!(
        visible.status.success(),
        "accepted sweep {after} is not readable: {}",
        stderr(&visible)
    );
    let s = d.wait_sweep_ended(&after, Duration::from_secs(60));
    assert_eq!(s["trials"][0]["status"], "succeeded", "{s}");
    assert_eq!(db_sweep_status(&db, &after), "finished");
    assert_exact_epochs(&d, &after);
    let d = d.restart(1, &[]);
    assert_eq!(d.cnnctl_json(&["sweep", &after])["status"], "finished");
    assert_eq!(d.cnnctl_json(&["sweep", &before])["status"], "finished");
    drop(d);
}

#[test]
#[ignore = "mounts file systems: needs root (scripts/test.sh runs the mount_ tests as root)"]
fn mount_store_turning_read_only_under_the_daemon_refuses_writes_with_unavailable() {
    let _one_at_a_time = serial();
    let mount = match Mount::ext4_loop(32) {
        Ok(m) => m,
        Err(why) => cannot_set_up(&why),
    };
    let db = mount.dir.join("cnnd.sqlite");
    let flags = ["--db", db.to_str().unwrap()];
    let d = Daemon::start(1, &flags);
    let before = d.submit(&sweep_body(
        "before-ro",
        small_with(1, json!({"batchSize": 32})),
        json!({}),
    ));
    d.wait_sweep_ended(&before, Duration::from_secs(60));
    let view = sweep_view(&d, &before);

    // What a failing disk does: ext4 hits an error and (errors=remount-ro) turns read-only
    // under the open database. A plain `mount -o remount,ro` is refused while it is open.
    if let Err(why) = mount.trigger_ext4_error() {
        cannot_set_up(&why);
    }
    let out = d.grpcurl(
        "cnn.v1.Orchestrator/SubmitSweep",
        &sweep_body("on-ro", small(1), json!({})).to_string(),
    );
    let err = stderr(&out);
    assert!(
        !out.status.success(),
        "a sweep was accepted on a read-only store"
    );
    assert!(err.contains("Unavailable"), "expected UNAVAILABLE: {err}");
    assert!(err.contains("storage"), "{err}");
    assert_eq!(sweep_view(&d, &before), view);
    drop(d);
}

/// A store whose file system is read-only when the daemon starts (here: a tmpfs remounted
/// read-only while the daemon was stopped). SQLite can open a WAL database on a read-only
/// file system only while its -wal/-shm files exist; whether they survive a graceful stop
/// depends on whether the daemon's connections were closed before it exited. Either way the
/// recorded data must stay intact and no write may be accepted: with the files, the daemon
/// serves reads and refuses writes with UNAVAILABLE; without them it must refuse to start
/// with a message naming the database.
#[test]
#[ignore = "mounts file systems: needs root (scripts/test.sh runs the mount_ tests as root)"]
fn mount_restart_on_a_read_only_store_serves_reads_or_refuses_to_start_and_never_writes() {
    let _one_at_a_time = serial();
    let mount = match Mount::tmpfs("16m") {
        Ok(m) => m,
        Err(why) => cannot_set_up(&why),
    };
    let db = mount.dir.join("cnnd.sqlite");
    let flags = ["--db", db.to_str().unwrap()];
    let mut d = Daemon::start(1, &flags);
    let before = d.submit(&sweep_body(
        "before-ro",
        small_with(1, json!({"batchSize": 32})),
        json!({}),
    ));
    d.wait_sweep_ended(&before, Duration::from_secs(60));
    let view = sweep_view(&d, &before);
    let rows = db_epochs(&db);
    let counts = db_counts(&db);

    d.signal(libc::SIGTERM);
    assert!(
        d.wait_exit(Duration::from_secs(30))
            .is_some_and(|s| s.success()),
        "{}",
        d.log()
    );
    if let Err(why) = mount.remount_ro() {
        cannot_set_up(&why);
    }
    let wal_left = mount.dir.join("cnnd.sqlite-shm").exists();
    let state = std::mem::replace(&mut d.state, tempfile::tempdir().unwrap());
    drop(d);
    let log = state.path().join("cnnd.log");
    let port = common::free_port();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_cnnd"))
        .args([
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--cpu-workers",
            "1",
        ])
        .arg("--state-dir")
        .arg(state.path())
        .arg("--data-dir")
        .arg(common::data_dir())
        .args(flags)
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let token_file = cnnd_client::auth::token_path(state.path());
    let cnnctl = |args: &[&str]| {
        std::process::Command::new(common::cnnctl_bin())
            .args(args)
            .env("CNND_ADDR", format!("http://127.0.0.1:{port}"))
            .env("CNND_TOKEN_FILE", &token_file)
            .output()
            .unwrap()
    };
    let up = wait_for(
        Duration::from_secs(60),
        "cnnd to come up or exit",
        || std::fs::read_to_string(&log).unwrap_or_default(),
        || {
            if cnnctl(&["status"]).status.success() {
                return Some(true);
            }
            child.try_wait().unwrap().map(|_| false)
        },
    );
    if up {
        eprintln!("read-only store with its WAL files ({wal_left}): the daemon serves reads");
        let header = format!(
            "authorization: Bearer {}",
            cnnd_client::auth::read_token_file(&token_file).unwrap()
        );
        let out = std::process::Command::new(common::grpcurl_bin())
            .args([
                "-plaintext",
                "-H",
                &header,
                "-d",
                "@",
                &format!("127.0.0.1:{port}"),
                "cnn.v1.Orchestrator/SubmitSweep",
            ])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .and_then(|mut c| {
                use std::io::Write;
                c.stdin.take().unwrap().write_all(
                    sweep_body("on-ro", small(1), json!({}))
                        .to_string()
                        .as_bytes(),
                )?;
                c.wait_with_output()
            })
            .unwrap();
        let err = stderr(&out);
        assert!(
            !out.status.success(),
            "a sweep was accepted on a read-only store"
        );
        assert!(err.contains("Unavailable"), "expected UNAVAILABLE: {err}");
        assert!(
            err.contains("storage") && err.contains("not writable"),
            "{err}"
        );
        let s: Value =
            serde_json::from_slice(&cnnctl(&["--output", "json", "sweep", &before]).stdout)
                .unwrap();
        assert_eq!(s["status"], "finished");
        assert_eq!(s["trials"][0]["status"], view["trials"][0]["status"]);
        let listed: Value =
            serde_json::from_slice(&cnnctl(&["--output", "json", "sweeps"]).stdout).unwrap();
        assert_eq!(listed["sweeps"].as_array().unwrap().len(), 1);
        let _ = child.kill();
        let _ = child.wait();
    } else {
        let status = child.wait().unwrap();
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        eprintln!(
            "read-only store without its WAL files ({wal_left}): the daemon refused to start: {}",
            text.trim()
        );
        assert!(!status.success(), "{text}");
        assert!(
            text.contains(db.to_str().unwrap()),
            "the refusal does not name the database: {text}"
        );
    }
    // Either way nothing changed on disk.
    mount.remount_rw().unwrap();
    assert_eq!(db_counts(&db), counts);
    assert_eq!(db_epochs(&db), rows);
}

// ---------------------------------------------------------------------------------------
// 9b. A request that makes validation itself blow up.

/// A random sweep drawing 1 configuration from a space of 10^10 combinations (10 axes of 10
/// values). Validation must answer it (accept or refuse) without materialising the grid
/// (240 GB). The daemon runs held to 32 GiB of address space, so a regression fails here at
/// once on any host instead of eating the memory of one that would grant it.
#[test]
fn a_random_sweep_over_a_huge_space_does_not_take_the_daemon_down() {
    let _one_at_a_time = serial();
    let mut d = Daemon::start_with_address_space_limit(1, &[], 32 << 30);
    let values = |k: &str| {
        Value::Array(
            (1..=10)
                .map(|i| json!(if k == "blocks" { 1 } else { i }))
                .collect(),
        )
    };
    let mut space = Map::new();
    for k in [
        "baseFilters",
        "units",
        "batchSize",
        "epochs",
        "seed",
        "rotationRange",
        "timeLimit",
        "trainLimit",
        "testLimit",
        "blocks",
    ] {
        space.insert(k.to_string(), values(k));
    }
    let body = json!({"name": "huge", "dataset": "mnist", "space": space, "strategy": "random", "numTrials": 1, "seed": 1});
    let out = d.grpcurl("cnn.v1.Orchestrator/SubmitSweep", &body.to_string());
    let alive = d.child.try_wait().unwrap().is_none() && d.cnnctl(&["status"]).status.success();
    assert!(
        alive,
        "the daemon died on one request ({}); log:\n{}",
        stderr(&out),
        d.log()
    );
}

// ---------------------------------------------------------------------------------------
// 10. A worker that stops answering (SIGSTOP): its lease expires.

#[test]
fn a_silent_worker_loses_its_lease_and_the_trial_resumes_on_a_new_worker() {
    let _one_at_a_time = serial();
    let d = Daemon::start(1, &["--lease-timeout-secs", "5"]);
    let sweep = d.submit(&sweep_body("silent", small(3), json!({})));
    let trial = format!("{sweep}-t0");
    let (pid, _) = wait_mid_epoch(&d, &trial, 1);
    signal(pid, libc::SIGSTOP);

    let s = d.wait_sweep_ended(&sweep, Duration::from_secs(120));
    assert_eq!(s["trials"][0]["status"], "succeeded", "{s}");
    assert!(d.log().contains("lease expired"), "{}", d.log());
    assert!(!pid_alive(pid), "the silent worker {pid} was not killed");
    let t = d.cnnctl_json(&["trial", &trial]);
    assert_eq!(t["attempts"], 2, "{t}");
    let rows = assert_exact_epochs(&d, &sweep);
    assert_eq!(rows[&trial], vec![1, 2, 3]);
    let attempts = attempts_from_db(&d.db_path(), &sweep, &trial);
    assert_eq!(attempts.len(), 2, "{attempts:?}");
    assert_eq!(
        attempts[1].1.first().copied(),
        Some(attempts[0].1.len() as u32 + 1),
        "{attempts:?}"
    );
}

// ---------------------------------------------------------------------------------------
// 11. Reports from an old lease while the current one runs.

#[test]
fn stale_reports_from_an_old_lease_are_refused_and_change_nothing() {
    let _one_at_a_time = serial();
    let d = Daemon::start(1, &[]);
    let db = d.db_path();
    let sweep = d.submit(&sweep_body("stale", small(4), json!({})));
    let trial = format!("{sweep}-t0");
    // Make generation 1 an old lease: kill its worker, wait for generation 2 to train.
    let (pid, _) = wait_mid_epoch(&d, &trial, 1);
    signal(pid, libc::SIGKILL);
    wait_for(
        Duration::from_secs(60),
        "the second attempt",
        || d.log(),
        || {
            let t = &db_trials(&db, &sweep)[0];
            (t["generation"] == 2 && t["status"] == "running").then_some(())
        },
    );

    let out = d.grpcurl_worker_hub(
        "cnn.v1.WorkerHub/FinishTrial",
        &json!({"workerId": "cpu-0", "trialId": trial, "generation": 1, "status": "failed", "error": "old lease"}).to_string(),
        &[],
    );
    assert!(
        !out.status.success() && stderr(&out).contains("FailedPrecondition"),
        "stale finish: {}",
        stderr(&out)
    );
    let out = d.grpcurl_worker_hub(
        "cnn.v1.WorkerHub/ReleaseTrial",
        &json!({"workerId": "cpu-0", "trialId": trial, "generation": 1, "reason": "old lease"})
            .to_string(),
        &[],
    );
    let _ = out; // refused or ignored: either way nothing may change

    let s = d.wait_sweep_ended(&sweep, Duration::from_secs(30));
    assert_eq!(s["trials"][0]["status"], "succeeded", "{s}");
    assert_eq!(d.cnnctl_json(&["trial", &trial])["attempts"], 2);
    let rows = assert_exact_epochs(&d, &sweep);
    assert_eq!(rows[&trial], vec![1, 2, 3, 4]);
}
