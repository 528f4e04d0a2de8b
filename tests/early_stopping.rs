//! Early stopping through the real daemon: a hopeless trial (a learning rate far too small)
//! is stopped at the first decision point by `asha` (both forms) and by `median`, ends
//! `pruned` with its recorded epochs, test metrics and the reason, while the good trial runs
//! all its epochs. In ASHA's promotion form the good trial is first parked (alone at its
//! rung), promoted when the hopeless one arrives, and resumes from its checkpoint. The
//! decision rules themselves are checked against hand-computed cases in `src/pruning.rs`.

mod common;

use std::time::Duration;

use common::{serial, Daemon};
use serde_json::{json, Value};

/// One good and one hopeless configuration, run one after the other (good first).
fn body(policy: Value) -> Value {
    let mut b = json!({
        "name": "prune",
        "dataset": "mnist",
        "space": {"learningRate": [0.002, 0.000001]},
        "fixed": {"epochs": 3, "trainLimit": 2000, "testLimit": 200, "baseFilters": 8,
                  "units": 32, "batchSize": 32},
        "maxParallel": 1,
        "seed": 2
    });
    for (k, v) in policy.as_object().unwrap() {
        b[k] = v.clone();
    }
    b
}

fn check_pruned(d: &Daemon, sweep: &str, rule: &str) {
    let s = d.wait_sweep_ended(sweep, Duration::from_secs(180));
    assert_eq!(s["status"], "finished", "{s}");
    let good = d.get_trial(&format!("{sweep}-t0"));
    let bad = d.get_trial(&format!("{sweep}-t1"));
    assert_eq!(good.status, "succeeded", "{}", good.error);
    assert_eq!(good.epochs.len(), 3);
    assert_eq!(bad.status, "pruned", "{bad:?}");
    assert_eq!(bad.epochs.len(), 1, "stopped at the first decision point");
    assert!(
        bad.error.starts_with(&format!("pruned: {rule}: ")),
        "{}",
        bad.error
    );
    assert!(bad.has_test, "a pruned trial keeps its test metrics");
    // cnnctl shows it.
    let out = d.cnnctl(&["sweep", sweep]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("pruned"));
}

#[test]
fn asha_promotion_parks_promotes_and_prunes_the_hopeless_trial() {
    let _one_at_a_time = serial();
    let d = Daemon::start(1, &[]);
    // Rungs at epochs 1 and 2 of 3.
    let sweep = d.submit(&body(
        json!({"earlyStopping": "asha", "gracePeriod": 1, "reductionFactor": 2}),
    ));
    check_pruned(&d, &sweep, "asha");
    let bad = d.get_trial(&format!("{sweep}-t1"));
    assert!(bad.error.contains("never promoted"), "{}", bad.error);
    // The good trial: parked at epoch 1 (alone at the rung: floor(1/2) = 0 promoted), promoted
    // when the hopeless one arrived (top 1 of 2), parked at epoch 2 (alone again), promoted
    // when nothing else was left, and trained each epoch once, resuming from its checkpoints.
    let good_id = format!("{sweep}-t0");
    let good = d.get_trial(&good_id);
    let epochs: Vec<u32> = good.epochs.iter().map(|e| e.epoch).collect();
    assert_eq!(epochs, vec![1, 2, 3]);
    let events = d.watch_events(&sweep);
    let of_good: Vec<String> = events
        .iter()
        .filter(|e| {
            ["trialStarted", "epochFinished", "trialFinished"]
                .iter()
                .any(|k| e[*k]["trialId"] == good_id.as_str())
        })
        .map(|e| {
            if e.get("trialStarted").is_some() {
                "started".to_string()
            } else if let Some(f) = e.get("trialFinished") {
                f["status"].as_str().unwrap_or("?").to_string()
            } else if let Some(f) = e.get("epochFinished") {
                format!("epoch {}", f["metrics"]["epoch"])
            } else {
                "other".to_string()
            }
        })
        .collect();
    assert_eq!(
        of_good,
        [
            "started",
            "epoch 1",
            "parked",
            "started",
            "epoch 2",
            "parked",
            "started",
            "epoch 3",
            "succeeded"
        ],
        "{events:?}"
    );
    // Parks are no failed attempts.
    assert_eq!(good.attempts, 1, "{good:?}");
}

#[test]
fn asha_stop_or_continue_prunes_the_hopeless_trial_for_good() {
    let _one_at_a_time = serial();
    let d = Daemon::start(1, &[]);
    let sweep = d.submit(&body(json!({"earlyStopping": "asha", "ashaMode": "stop",
        "gracePeriod": 1, "reductionFactor": 2})));
    check_pruned(&d, &sweep, "asha");
    // The first trial at each rung goes on: the good one never waits.
    let events = d.watch_events(&sweep);
    let parked = events
        .iter()
        .filter(|e| e["trialFinished"]["status"] == "parked")
        .count();
    assert_eq!(parked, 0, "{events:?}");
}

#[test]
fn median_stops_a_trial_below_the_completed_median() {
    let _one_at_a_time = serial();
    let d = Daemon::start(1, &[]);
    let sweep = d.submit(&body(
        json!({"earlyStopping": "median", "warmupEpochs": 0, "minTrials": 1}),
    ));
    check_pruned(&d, &sweep, "median");
}

#[test]
fn bad_early_stopping_options_are_refused() {
    let d = Daemon::start(1, &[]);
    for (policy, needle) in [
        (
            json!({"earlyStopping": "hyperband"}),
            "earlyStopping: 'hyperband' is not one of none, median, asha",
        ),
        (
            json!({"earlyStopping": "asha", "reductionFactor": 1}),
            "reductionFactor: 1 is outside 2..=100",
        ),
        (
            json!({"earlyStopping": "asha", "ashaMode": "sometimes"}),
            "ashaMode: 'sometimes' is not one of promote, stop",
        ),
    ] {
        let out = d.grpcurl("cnn.v1.Orchestrator/SubmitSweep", &body(policy).to_string());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success());
        assert!(
            err.contains("InvalidArgument") && err.contains(needle),
            "{err}"
        );
    }
}
