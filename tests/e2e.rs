//! End-to-end: the real daemon over TCP, grpcurl (reflection only) and cnnctl as clients,
//! real libtorch training on a few thousand real MNIST images, the real SQLite file.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{db_counts, grpcurl_bin, serial, Daemon};
use serde_json::{json, Value};

fn stdout(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}
fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The DESIGN.md request, shrunk to a quick look: 4 trials, 1 epoch, 2,000 + 500 images.
fn small_sweep() -> Value {
    json!({"name": "e2e-small", "dataset": "mnist",
           "space": {"kernelSize": [3, 5], "head": ["gap", "dense"]},
           "fixed": {"epochs": 1, "batchSize": 64, "learningRate": 0.002, "baseFilters": 8, "units": 32,
                     "dropout": 0.25, "trainLimit": 2000, "testLimit": 500},
           "strategy": "grid", "maxParallel": 2, "seed": 7})
}

#[test]
fn grpcurl_sees_the_api_through_reflection_and_health() {
    let d = Daemon::start(1, &[]);
    let auth = format!("authorization: Bearer {}", d.token());
    let out = std::process::Command::new(common::grpcurl_bin())
        .args(["-plaintext", "-H", &auth, &d.addr, "list"])
        .output()
        .unwrap();
    let services = stdout(&out);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(services.contains("cnn.v1.Orchestrator"), "{services}");
    assert!(services.contains("grpc.health.v1.Health"), "{services}");
    let out = std::process::Command::new(common::grpcurl_bin())
        .args([
            "-plaintext",
            "-H",
            &auth,
            &d.addr,
            "describe",
            "cnn.v1.Orchestrator",
        ])
        .output()
        .unwrap();
    let described = stdout(&out);
    for rpc in [
        "SubmitSweep",
        "GetSweep",
        "ListSweeps",
        "WatchSweep",
        "CancelSweep",
        "GetTrial",
        "GetStatus",
        "RenderCharts",
    ] {
        assert!(
            described.contains(&format!("rpc {rpc}")),
            "{rpc} missing from {described}"
        );
    }
    let health = d.grpcurl_json("grpc.health.v1.Health/Check", "{}");
    assert_eq!(health["status"], "SERVING");
    let health = d.grpcurl_json(
        "grpc.health.v1.Health/Check",
        r#"{"service": "cnn.v1.Orchestrator"}"#,
    );
    assert_eq!(health["status"], "SERVING");
}

#[test]
fn a_small_sweep_trains_records_and_charts() {
    let _one_at_a_time = serial();
    let d = Daemon::start(2, &[]);
    let status = d.cnnctl_json(&["status"]);
    assert_eq!(status["workers"].as_array().unwrap().len(), 2, "{status}");
    assert!(status["devices"][0]["name"] == "cpu", "{status}");

    let submitted = d.grpcurl_json(
        "cnn.v1.Orchestrator/SubmitSweep",
        &small_sweep().to_string(),
    );
    let sweep_id = submitted["sweepId"].as_str().unwrap().to_string();
    assert_eq!(submitted["trialsQueued"], 4);

    // cnnctl watch follows the live stream until the sweep ends.
    let watch = d.cnnctl(&["watch", &sweep_id]);
    assert!(watch.status.success(), "watch failed: {}", stderr(&watch));
    let lines = stdout(&watch);
    assert_eq!(lines.matches("started").count(), 4, "{lines}");
    assert_eq!(lines.matches("epoch 1/1").count(), 4, "{lines}");
    assert!(lines.contains("finished"), "{lines}");

    let sweep = d.wait_for_sweep(&sweep_id, Duration::from_secs(60));
    assert_eq!(sweep["status"], "finished");
    let trials = sweep["trials"].as_array().unwrap();
    assert_eq!(trials.len(), 4);
    for t in trials {
        assert_eq!(t["status"], "succeeded", "{t}");
    }

    // Replay: the stored request and seed re-derive the same four configurations, in order.
    let replay = d.cnnctl_json(&["replay", &sweep_id]);
    assert_eq!(replay["identical"], true, "{replay}");
    let replayed: Vec<&str> = replay["trials"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["trialId"].as_str().unwrap())
        .collect();
    let recorded: Vec<&str> = trials
        .iter()
        .map(|t| t["trialId"].as_str().unwrap())
        .collect();
    assert_eq!(replayed, recorded);
    for (r, t) in replay["trials"].as_array().unwrap().iter().zip(trials) {
        assert_eq!(r["params"], t["params"], "re-derived params differ");
    }
    // Provenance: versions, device, seed and the data hash on every trial; one data set,
    // one hash.
    let hashes: std::collections::BTreeSet<String> = trials
        .iter()
        .map(|t| {
            let p = d.get_trial(t["trialId"].as_str().unwrap()).provenance;
            for key in ["cnnd", "libtorch", "device", "seed", "data"] {
                assert!(p.contains_key(key), "provenance without {key}: {p:?}");
            }
            assert_eq!(p["device"], "cpu");
            p["data"].clone()
        })
        .collect();
    assert_eq!(hashes.len(), 1, "{hashes:?}");
    assert!(hashes.iter().next().unwrap().starts_with("mnist sha256:"));
    let out = d.cnnctl(&["replay", &sweep_id]);
    assert!(String::from_utf8_lossy(&out.stdout)
        .contains("4 of 4 configurations re-derived identically"));

    // The costliest configurations started first: kernel 5 before kernel 3, and with equal
    // kernels the dense head before GAP (grid order is t0 gap/3, t1 gap/5, t2 dense/3,
    // t3 dense/5).
    let started: Vec<String> = common::db_events(&d.db_path(), Some(&sweep_id))
        .iter()
        .filter(|e| e["kind"] == "trial_started")
        .map(|e| e["trial_id"].as_str().unwrap().to_string())
        .collect();
    let expected: Vec<String> = [3, 1, 2, 0]
        .iter()
        .map(|i| format!("{sweep_id}-t{i}"))
        .collect();
    assert_eq!(started, expected);

    // GetSweep lists each trial's varied hyperparameters; with allParams, every one (what
    // cnnctl's JSON shows).
    let slim = d.grpcurl_json(
        "cnn.v1.Orchestrator/GetSweep",
        &json!({"sweepId": sweep_id}).to_string(),
    );
    let full = d.grpcurl_json(
        "cnn.v1.Orchestrator/GetSweep",
        &json!({"sweepId": sweep_id, "allParams": true}).to_string(),
    );
    for ((s, f), t) in slim["trials"]
        .as_array()
        .unwrap()
        .iter()
        .zip(full["trials"].as_array().unwrap())
        .zip(trials)
    {
        let keys: Vec<&String> = s["params"].as_object().unwrap().keys().collect();
        assert_eq!(keys, ["head", "kernelSize"], "{s}");
        assert_eq!(s["params"]["head"], f["params"]["head"]);
        assert_eq!(f["params"]["epochs"], 1, "{f}");
        assert_eq!(f["params"]["trainLimit"], 2000, "{f}");
        assert_eq!(f["params"], t["params"]);
    }

    // Every trial: one epoch with sane metrics, test metrics, weights on disk.
    let mut params_by_head = std::collections::HashMap::new();
    for t in trials {
        let id = t["trialId"].as_str().unwrap();
        let trial = d.grpcurl_json(
            "cnn.v1.Orchestrator/GetTrial",
            &json!({"trialId": id}).to_string(),
        );
        let epochs = trial["epochs"].as_array().unwrap();
        assert_eq!(epochs.len(), 1, "{trial}");
        let e = &epochs[0];
        for k in ["trainAccuracy", "valAccuracy"] {
            let v = e[k].as_f64().unwrap();
            assert!((0.0..=1.0).contains(&v), "{k}={v}");
        }
        assert!(e["trainLoss"].as_f64().unwrap() > 0.0);
        assert!(e["imagesPerSecond"].as_f64().unwrap() > 0.0);
        assert!(e["seconds"].as_f64().unwrap() > 0.0);
        let test_acc = trial["testAccuracy"].as_f64().unwrap();
        assert!(
            (0.0..=1.0).contains(&test_acc),
            "trial {id} test accuracy {test_acc}"
        );
        // 1,800 training images, one epoch: the dense head is already far above the 10% of
        // chance (the GAP head learns more slowly from so little).
        if trial["params"]["head"] == "dense" {
            assert!(test_acc > 0.6, "trial {id} test accuracy {test_acc}");
        }
        assert_eq!(trial["trainExamples"], 1800);
        assert_eq!(trial["valExamples"], 200);
        assert_eq!(trial["testExamples"], 500);
        let weights = trial["weightsPath"].as_str().unwrap();
        assert!(
            std::path::Path::new(weights).exists(),
            "weights {weights} missing"
        );
        let count: u64 = trial["parameterCount"]
            .as_str()
            .map(|s| s.parse().unwrap())
            .or(trial["parameterCount"].as_u64())
            .unwrap();
        params_by_head
            .entry(trial["params"]["head"].as_str().unwrap().to_string())
            .or_insert_with(Vec::new)
            .push(count);
    }
    // The GAP head has far fewer parameters than the dense head.
    let max_gap = params_by_head["gap"].iter().max().unwrap();
    let min_dense = params_by_head["dense"].iter().min().unwrap();
    assert!(max_gap < min_dense, "{params_by_head:?}");

    // The SQLite file holds exactly what the API says.
    let (sweeps, n_trials, epochs, events) = db_counts(&d.db_path());
    assert_eq!((sweeps, n_trials, epochs), (1, 4, 4));
    // 4 started + 4 epochs + 4 finished + 1 sweep finished.
    assert_eq!(events, 13);

    // Charts: rendered on request, real PNGs of the expected size.
    let charts = d.cnnctl_json(&["charts", &sweep_id]);
    let paths: Vec<String> = charts
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap().to_string())
        .collect();
    assert!(paths.len() >= 3, "{paths:?}");
    for p in &paths {
        let img = image::open(p).unwrap_or_else(|e| panic!("{p}: {e}"));
        // Bar charts size their height to the number of bars; every chart is at least 300 px.
        assert!(
            img.width() >= 800 && img.height() >= 300,
            "{p} is {}x{}",
            img.width(),
            img.height()
        );
        let rgb = img.to_rgb8();
        let first = rgb.get_pixel(0, 0);
        assert!(rgb.pixels().any(|px| px != first), "{p} is blank");
    }

    // The same charts over the connection (a daemon on another machine): byte for byte what
    // the daemon wrote, under their own names.
    let fetched_dir = tempfile::tempdir().unwrap();
    let fetched = d.cnnctl_json(&[
        "charts",
        &sweep_id,
        "--out",
        fetched_dir.path().to_str().unwrap(),
    ]);
    let fetched: Vec<&str> = fetched
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap())
        .collect();
    assert_eq!(fetched.len(), paths.len(), "{fetched:?}");
    for (local, remote) in fetched.iter().zip(&paths) {
        let (local, remote) = (Path::new(local), Path::new(remote));
        assert_eq!(local.parent(), Some(fetched_dir.path()));
        assert_eq!(local.file_name(), remote.file_name());
        assert_eq!(
            std::fs::read(local).unwrap(),
            std::fs::read(remote).unwrap()
        );
    }
    // grpcurl gets the bytes too (base64 in its JSON), with a larger message limit.
    let out = Command::new(grpcurl_bin())
        .args(["-plaintext", "-max-msg-sz", "67108864", "-H"])
        .arg(format!("authorization: Bearer {}", d.token()))
        .args([
            "-d",
            &format!(r#"{{"sweepId": "{sweep_id}", "includeBytes": true}}"#),
        ])
        .arg(&d.addr)
        .arg("cnn.v1.Orchestrator/RenderCharts")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let answer: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let first = &answer["charts"][0];
    assert_eq!(first["mediaType"], "image/png", "{first}");
    let png = {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD
            .decode(first["data"].as_str().unwrap())
            .unwrap()
    };
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");

    // A report to share: one HTML file holding the table, the summary and every chart.
    let report = fetched_dir.path().join("report.html");
    let out = d.cnnctl(&["report", &sweep_id, "-o", report.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let html = std::fs::read_to_string(&report).unwrap();
    assert!(
        html.contains(&sweep_id) && html.contains("Which value won"),
        "{html}"
    );
    for trial in sweep["trials"].as_array().unwrap() {
        assert!(html.contains(trial["trialId"].as_str().unwrap()), "{html}");
    }
    assert_eq!(
        html.matches("src=\"data:image/png;base64,").count(),
        paths.len(),
        "every chart embedded"
    );
    assert!(
        !html.contains("src=\"http") && !html.contains("src=\"/"),
        "{html}"
    );

    // The table names the best trial.
    let table = d.cnnctl(&["sweep", &sweep_id]);
    assert!(table.status.success());
    assert!(stdout(&table).contains("best"), "{}", stdout(&table));
    let listed = d.cnnctl_json(&["sweeps"]);
    assert_eq!(listed["sweeps"][0]["trialsDone"], 4, "{listed}");
}

/// Each refused request names the field, uses INVALID_ARGUMENT, and stores nothing.
#[test]
fn invalid_sweeps_are_refused_and_nothing_is_stored() {
    let d = Daemon::start(1, &["--max-trials-per-sweep", "100"]);
    let before = db_counts(&d.db_path());
    let cases: Vec<(Value, &str)> = vec![
        (json!({"dataset": "imagenet"}), "dataset"),
        (
            json!({"dataset": "mnist", "space": {"kernelSiz": [3]}}),
            "space.kernelSiz",
        ),
        (
            json!({"dataset": "mnist", "fixed": {"colour": 1}}),
            "fixed.colour",
        ),
        (
            json!({"dataset": "mnist", "space": {"kernelSize": []}}),
            "space.kernelSize",
        ),
        (
            json!({"dataset": "mnist", "space": {"dropout": [0.5, 1.0]}}),
            "dropout",
        ),
        (
            json!({"dataset": "mnist", "space": {"kernelSize": [3, 4]}}),
            "kernelSize",
        ),
        (
            json!({"dataset": "mnist", "fixed": {"kernelSize": 29}}),
            "kernelSize",
        ),
        (
            json!({"dataset": "mnist", "fixed": {"blocks": 5}}),
            "blocks",
        ),
        (
            json!({"dataset": "mnist", "fixed": {"batchSize": 0}}),
            "batchSize",
        ),
        (
            json!({"dataset": "mnist", "fixed": {"learningRate": -0.01}}),
            "learningRate",
        ),
        (
            json!({"dataset": "mnist", "space": {"units": [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11], "baseFilters": [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]}}),
            "limit of 100",
        ),
        (json!({"dataset": "mnist", "device": "cuda"}), "device"),
    ];
    for (body, field) in &cases {
        let out = d.grpcurl("cnn.v1.Orchestrator/SubmitSweep", &body.to_string());
        let err = stderr(&out);
        assert!(!out.status.success(), "{body} was accepted");
        assert!(err.contains("InvalidArgument"), "{body}: {err}");
        assert!(err.contains(field), "{body}: expected '{field}' in {err}");
    }
    // The same through cnnctl: one line, non-zero exit.
    let bad = d.state.path().join("bad.json");
    std::fs::write(
        &bad,
        json!({"dataset": "mnist", "fixed": {"dropout": 1.5}}).to_string(),
    )
    .unwrap();
    let out = d.cnnctl(&["submit", bad.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("fixed.dropout"), "{err}");

    assert_eq!(
        db_counts(&d.db_path()),
        before,
        "a refused request changed the store"
    );
    assert_eq!(
        d.cnnctl_json(&["sweeps"])["sweeps"]
            .as_array()
            .map(|a| a.len())
            .unwrap_or(0),
        0
    );
    // Unknown ids are NOT_FOUND, naming the field.
    let out = d.grpcurl("cnn.v1.Orchestrator/GetSweep", r#"{"sweepId": "sw-nope"}"#);
    assert!(
        stderr(&out).contains("NotFound") && stderr(&out).contains("sweepId"),
        "{}",
        stderr(&out)
    );
    let out = d.grpcurl("cnn.v1.Orchestrator/GetTrial", r#"{"trialId": ""}"#);
    assert!(
        stderr(&out).contains("InvalidArgument") && stderr(&out).contains("trialId"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn cnnctl_reports_an_unreachable_daemon_in_one_line() {
    let port = common::free_port();
    let out = std::process::Command::new(common::cnnctl_bin())
        .arg("status")
        .env("CNND_ADDR", format!("http://127.0.0.1:{port}"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = stderr(&out);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains(&port.to_string()), "{err}");
}

#[test]
fn cancel_stops_running_and_queued_trials() {
    let _one_at_a_time = serial();
    let d = Daemon::start(1, &[]);
    let body = json!({"name": "to-cancel", "dataset": "mnist", "space": {"dropout": [0.0, 0.25, 0.5]},
                      "fixed": {"epochs": 20, "trainLimit": 3000, "testLimit": 200, "baseFilters": 8}, "seed": 1});
    let submitted = d.grpcurl_json("cnn.v1.Orchestrator/SubmitSweep", &body.to_string());
    let sweep_id = submitted["sweepId"].as_str().unwrap().to_string();
    // Wait for the first trial to record an epoch.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let s = d.cnnctl_json(&["sweep", &sweep_id]);
        if s["trials"][0]["epochsDone"].as_u64().unwrap_or(0) >= 1 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no epoch recorded: {}",
            d.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let out = d.cnnctl(&["cancel", &sweep_id]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("3 trials cancelled"),
        "{}",
        stdout(&out)
    );
    let sweep = d.wait_for_sweep(&sweep_id, Duration::from_secs(10));
    assert_eq!(sweep["status"], "cancelled");
    for t in sweep["trials"].as_array().unwrap() {
        assert_eq!(t["status"], "cancelled", "{t}");
    }
    // What was recorded before the cancel is kept, and nothing more arrives.
    let (_, _, epochs_then, _) = db_counts(&d.db_path());
    assert!(epochs_then >= 1);
    std::thread::sleep(Duration::from_secs(2));
    let (_, _, epochs_later, _) = db_counts(&d.db_path());
    assert_eq!(epochs_then, epochs_later);
    // The worker was replaced and is idle again.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let st = d.cnnctl_json(&["status"]);
        if st["workersIdle"] == 1 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "worker not back: {st}"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// A 28x28 gray PNG of a bright square on black, as a Predict image (base64 for grpcurl).
fn digit_png_base64() -> String {
    common::bright_rectangle_png_base64(8..20, 6..22)
}

/// Predict runs on the workers (the daemon has no libtorch), beside training: with the only
/// worker busy on a long trial, a prediction from an earlier trial is answered while that
/// trial still runs. With no worker connected, Predict is UNAVAILABLE, saying why.
#[test]
fn predict_runs_on_the_workers_beside_training_and_is_unavailable_without_one() {
    let _one_at_a_time = serial();
    let d = Daemon::start(1, &[]);
    let tiny = d.submit(&json!({"name": "tiny", "dataset": "mnist",
        "fixed": {"epochs": 1, "trainLimit": 300, "testLimit": 100, "baseFilters": 4, "units": 8}}));
    let s = d.wait_sweep_ended(&tiny, Duration::from_secs(120));
    let trial = s["trials"][0]["trialId"].as_str().unwrap().to_string();
    let long = d.submit(&json!({"name": "long", "dataset": "mnist",
        "fixed": {"epochs": 40, "trainLimit": 3000, "testLimit": 100}}));
    common::wait_for(
        Duration::from_secs(60),
        "the long trial to train",
        || d.log(),
        || (d.get_sweep(&long).trials[0].epochs_done >= 1).then_some(()),
    );
    let request =
        json!({"trialId": trial, "images": [{"name": "square.png", "data": digit_png_base64()}]});
    let answer = d.grpcurl_json("cnn.v1.Orchestrator/Predict", &request.to_string());
    assert_eq!(
        answer["predictions"].as_array().unwrap().len(),
        1,
        "{answer}"
    );
    assert_eq!(answer["classNames"].as_array().unwrap().len(), 10);
    let running = d.get_sweep(&long);
    assert_eq!(
        running.trials[0].status, "running",
        "Predict waited for the long trial to end"
    );
    assert!(running.trials[0].epochs_done < 40);
    let out = d.cnnctl(&["cancel", &long]);
    assert!(out.status.success(), "{}", stderr(&out));

    // The same state without workers: the trial's weights are there, no one can run them.
    let d = d.restart(0, &[]);
    let out = d.grpcurl("cnn.v1.Orchestrator/Predict", &request.to_string());
    assert!(!out.status.success(), "{}", stdout(&out));
    assert!(stderr(&out).contains("Unavailable"), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("none is connected"),
        "{}",
        stderr(&out)
    );
}
