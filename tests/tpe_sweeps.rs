//! `strategy: tpe` through the real daemon: numeric ranges (log and linear, integer with a
//! step) beside a value list, suggestions made when a trial is leased (random for the
//! first `startupTrials`, then TPE on the finished trials), every suggestion inside its
//! range, the basis of each suggestion recorded, and `cnnctl replay` re-deriving them all.
//! The sampler's math is tested against random search in `src/tpe.rs`.

mod common;

use std::time::Duration;

use common::{serial, Daemon};
use serde_json::{json, Value};

fn tpe_body() -> Value {
    json!({
        "name": "tpe",
        "dataset": "mnist",
        "strategy": "tpe",
        "numTrials": 5,
        "startupTrials": 2,
        "space": {
            "learningRate": {"min": 0.0001, "max": 0.01, "log": true},
            "dropout": {"min": 0.0, "max": 0.5},
            "units": {"min": 16, "max": 64, "step": 16},
            "head": ["gap", "dense"]
        },
        "fixed": {"epochs": 1, "trainLimit": 1000, "testLimit": 200, "baseFilters": 4,
                  "batchSize": 32},
        "maxParallel": 1,
        "seed": 5
    })
}

#[test]
fn a_tpe_sweep_suggests_inside_its_ranges_and_replays() {
    let _one_at_a_time = serial();
    let d = Daemon::start(1, &[]);
    let sweep = d.submit(&tpe_body());
    let s = d.wait_sweep_ended(&sweep, Duration::from_secs(240));
    assert_eq!(s["status"], "finished", "{s}");
    let trials = s["trials"].as_array().unwrap();
    assert_eq!(trials.len(), 5);
    let mut seen = std::collections::BTreeSet::new();
    for t in trials {
        assert_eq!(t["status"], "succeeded", "{t}");
        let p = &t["params"];
        let lr = p["learningRate"].as_f64().unwrap();
        assert!((0.0001..=0.01).contains(&lr), "{p}");
        let dropout = p["dropout"].as_f64().unwrap();
        assert!((0.0..=0.5).contains(&dropout), "{p}");
        let units = p["units"].as_u64().unwrap();
        assert!([16, 32, 48, 64].contains(&units), "{p}");
        assert!(p["head"] == "gap" || p["head"] == "dense", "{p}");
        seen.insert(format!("{lr}"));
    }
    assert_eq!(seen.len(), 5, "five distinct suggestions");

    // The record says what each suggestion was based on: nothing for the random start-up
    // trials, the earlier finished trials for the TPE ones (one worker: all of them).
    for (i, t) in trials.iter().enumerate() {
        let trial = d.get_trial(t["trialId"].as_str().unwrap());
        let basis = trial
            .notes
            .iter()
            .find(|n| n.starts_with("suggested by"))
            .unwrap_or_else(|| panic!("trial {i} has no suggestion note: {:?}", trial.notes));
        if i < 2 {
            assert!(basis.starts_with("suggested by random start-up"), "{basis}");
        } else {
            assert!(
                basis.starts_with(&format!("suggested by tpe from {i} finished trials")),
                "{basis}"
            );
        }
    }

    let replay = d.cnnctl_json(&["replay", &sweep]);
    assert_eq!(replay["identical"], true, "{replay}");
    assert_eq!(replay["trials"].as_array().unwrap().len(), 5);
}

#[test]
fn tpe_requests_are_checked_before_anything_is_stored() {
    let d = Daemon::start(1, &[]);
    let refuse = |change: Value, needle: &str| {
        let mut body = tpe_body();
        for (k, v) in change.as_object().unwrap() {
            body[k] = v.clone();
        }
        let out = d.grpcurl("cnn.v1.Orchestrator/SubmitSweep", &body.to_string());
        let err = String::from_utf8_lossy(&out.stderr).to_string();
        assert!(!out.status.success(), "accepted: {body}");
        assert!(
            err.contains("InvalidArgument") && err.contains(needle),
            "{needle}: {err}"
        );
    };
    refuse(
        json!({"numTrials": 0}),
        "numTrials: required by the tpe strategy",
    );
    refuse(
        json!({"strategy": "grid", "numTrials": 0}),
        "space.dropout: a range",
    );
    refuse(
        json!({"space": {"learningRate": {"min": 0.01, "max": 0.001}}}),
        "space.learningRate: min 0.01 is above max 0.001",
    );
    refuse(
        json!({"space": {"learningRate": {"min": 0.0, "max": 0.1, "log": true}}}),
        "space.learningRate: a log range needs min > 0",
    );
    refuse(
        json!({"space": {"head": {"min": 1, "max": 2}}}),
        "space.head.min: ",
    );
    refuse(
        json!({"repeats": 2}),
        "repeats: tpe suggests one configuration per trial",
    );
    assert_eq!(
        d.cnnctl_json(&["sweeps"])["sweeps"]
            .as_array()
            .unwrap()
            .len(),
        0
    );
}
