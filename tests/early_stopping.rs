//! Early stopping through the real daemon: a hopeless trial (a learning rate far too small)
//! is stopped at the first decision point by `asha` and by `median`, ends `pruned` with
//! its recorded epochs, test metrics and the reason, while the good trial runs all its
//! epochs. The decision rules themselves are checked against hand-computed cases in
//! `src/pruning.rs`.

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
fn asha_stops_a_hopeless_trial_at_its_first_rung() {
    let _one_at_a_time = serial();
    let d = Daemon::start(1, &[]);
    let sweep = d.submit(&body(
        json!({"earlyStopping": "asha", "gracePeriod": 1, "reductionFactor": 2}),
    ));
    check_pruned(&d, &sweep, "asha");
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
