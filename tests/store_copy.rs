//! Moving a real history between stores: a sweep trained by the real daemon on SQLite is
//! copied into PostgreSQL (`cnnd store copy`) and back into a new SQLite file; the three
//! stores give the same row counts and checksums (`cnnd store checksum`), a daemon started
//! on the PostgreSQL copy serves the same sweep and goes on with new sweeps (the event ids
//! continue after the copied ones), and a copy into a store that already holds rows is
//! refused without touching it.

mod common;

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use common::{db_counts, serial, Daemon};
use serde_json::{json, Value};

fn cnnd(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cnnd"))
        .args(args)
        .output()
        .expect("running cnnd")
}

/// `cnnd store checksum --db DB`'s table lines, without the heading naming the store.
fn checksums(db: &str) -> Vec<String> {
    let out = cnnd(&["store", "checksum", "--db", db]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<String> = text
        .lines()
        .filter(|l| l.starts_with("  "))
        .map(String::from)
        .collect();
    assert_eq!(lines.len(), 4, "{text}");
    lines
}

/// What a client sees of a sweep: its status, best trial, and each trial's status, epochs
/// and test accuracy.
fn sweep_view(d: &Daemon, sweep: &str) -> Value {
    let s = d.cnnctl_json(&["sweep", sweep]);
    let trials: Vec<Value> = s["trials"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            let id = t["trialId"].as_str().unwrap();
            let full = d.get_trial(id);
            json!({"id": id, "status": t["status"], "testAccuracy": full.test_accuracy,
                   "epochs": full.epochs.iter().map(|e| (e.epoch, e.val_accuracy)).collect::<Vec<_>>()})
        })
        .collect();
    json!({"status": s["status"], "best": s["bestTrialId"], "trials": trials})
}

#[test]
fn a_real_history_goes_to_postgres_and_back_with_the_same_checksums() {
    let _serial = serial();
    let d = Daemon::start(1, &[]);
    let sweep = d.submit(&json!({"name": "to-move", "dataset": "mnist", "seed": 5,
        "fixed": {"epochs": 2, "batchSize": 16, "learningRate": 0.002, "baseFilters": 8, "units": 32,
                  "trainLimit": 1500, "testLimit": 200},
        "space": {"dropout": [0.0, 0.3]}}));
    let ended = d.wait_sweep_ended(&sweep, Duration::from_secs(180));
    assert_eq!(ended["status"], "finished", "{ended}");
    let original_view = sweep_view(&d, &sweep);
    // A copy reads a stopped daemon's store: stop it, keeping its state folder.
    let mut d = d;
    d.signal(libc::SIGTERM);
    assert!(
        d.wait_exit(Duration::from_secs(30)).is_some(),
        "{}",
        d.log()
    );
    let state = std::mem::replace(&mut d.state, tempfile::tempdir().unwrap());
    drop(d);
    let sqlite = state.path().join("cnnd.sqlite");
    let sqlite = sqlite.to_str().unwrap().to_string();

    let postgres = common::postgres::fresh_database();
    let out = cnnd(&["store", "copy", "--from", &sqlite, "--to", &postgres]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("copy verified"), "{stdout}");
    let (sweeps, trials, epochs, events) = db_counts(Path::new(&postgres));
    assert_eq!((sweeps, trials, epochs), (1, 2, 4));
    // 2 trial_started, 4 epoch_finished, 2 trial_finished, 1 sweep_finished at least.
    assert!(events >= 9, "{events} events");

    let back = tempfile::tempdir().unwrap();
    let back = back.path().join("back.sqlite");
    let back = back.to_str().unwrap();
    let out = cnnd(&["store", "copy", "--from", &postgres, "--to", back]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let sums = checksums(&sqlite);
    assert_eq!(checksums(&postgres), sums, "SQLite and its PostgreSQL copy");
    assert_eq!(checksums(back), sums, "SQLite and the round trip");

    // A second copy into the filled database is refused, and changes nothing there.
    let out = cnnd(&["store", "copy", "--from", &sqlite, "--to", &postgres]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("the destination is not empty"), "{err}");
    assert_eq!(checksums(&postgres), sums);

    // The daemon on the copy: the same sweep, and a new one whose events follow the copied.
    let state_dir = tempfile::tempdir().unwrap();
    // The weights and checkpoints the history names live in the old state folder.
    copy_dir(state.path(), state_dir.path());
    let d = Daemon::start_in(state_dir, 1, &["--db", &postgres]);
    assert_eq!(sweep_view(&d, &sweep), original_view);
    let next = d.submit(&json!({"name": "after-the-move", "dataset": "mnist", "seed": 5,
        "fixed": {"epochs": 1, "batchSize": 16, "learningRate": 0.002, "baseFilters": 8, "units": 32,
                  "trainLimit": 1000, "testLimit": 200}, "space": {}}));
    let ended = d.wait_sweep_ended(&next, Duration::from_secs(120));
    assert_eq!(ended["status"], "finished", "{ended}");
    let (_, _, _, events_after) = db_counts(Path::new(&postgres));
    assert!(
        events_after > events,
        "{events_after} events after, {events} copied"
    );
}

fn copy_dir(from: &Path, to: &Path) {
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            std::fs::create_dir_all(&target).unwrap();
            copy_dir(&entry.path(), &target);
        } else if entry.file_type().unwrap().is_file() {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}
