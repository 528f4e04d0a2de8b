//! The Slurm launcher against a real one-node Slurm cluster (munged, slurmctld and slurmd on
//! this machine, started by scripts/slurm-cluster.sh): workers are real `sbatch` jobs that
//! run `cnnd-worker`, followed with `squeue`, stopped with `scancel`.
//!
//! The cluster needs root to run, so these tests are `#[ignore]`d and named `slurm_*`;
//! scripts/test.sh starts the cluster and runs them as root (as CI does) with
//! `cargo test --test slurm_launcher -- --ignored slurm_`. Each daemon gets its own job
//! name, so no test sees (or adopts) another's jobs, and its jobs are cancelled at the end.

mod common;

use std::process::Command;
use std::time::Duration;

use common::{assert_resumed_exactly, attempts, epochs_of, serial, wait_for, Daemon};
use serde_json::{json, Value};

/// A daemon whose workers Slurm starts, and the job name that marks its jobs.
struct SlurmDaemon {
    /// None only while it restarts.
    daemon: Option<Daemon>,
    job_name: String,
    args: Vec<String>,
}

impl SlurmDaemon {
    fn start(extra: &[&str]) -> SlurmDaemon {
        assert_cluster_up();
        let job_name = format!("cnnd-test-{:08x}", rand_u32());
        let cache = std::env::temp_dir().join(format!("{job_name}-worker-cache"));
        let mut args: Vec<String> = [
            "--launcher",
            "slurm",
            "--launcher-poll-secs",
            "1",
            "--slurm-job-name",
            &job_name,
            "--launcher-worker-cache-dir",
            cache.to_str().unwrap(),
        ]
        .iter()
        .chain(extra)
        .map(|s| s.to_string())
        .collect();
        // A fixed worker-protocol port, so that workers find a restarted daemon.
        args.extend([
            "--worker-listen".into(),
            format!("127.0.0.1:{}", common::free_port()),
        ]);
        let daemon = Daemon::start(0, &Self::refs(&args));
        SlurmDaemon {
            daemon: Some(daemon),
            job_name,
            args,
        }
    }

    fn refs(args: &[String]) -> Vec<&str> {
        args.iter().map(String::as_str).collect()
    }

    fn daemon(&self) -> &Daemon {
        self.daemon.as_ref().unwrap()
    }

    /// Kills the daemon (SIGKILL) and starts it again with the same state and settings.
    fn restart(&mut self) {
        let daemon = self.daemon.take().unwrap();
        self.daemon = Some(daemon.restart_same(0, &Self::refs(&self.args)));
    }

    /// This daemon's jobs as squeue lists them: (id, state, reason).
    fn squeue(&self) -> Vec<(String, String, String)> {
        let out = Command::new("squeue")
            .args(["--noheader", "--states=all", "--format=%i|%T|%r"])
            .arg(format!("--name={}", self.job_name))
            .output()
            .expect("squeue");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| {
                let mut p = l.trim().split('|');
                Some((
                    p.next()?.to_string(),
                    p.next()?.to_string(),
                    p.next().unwrap_or("").to_string(),
                ))
            })
            .collect()
    }

    fn live_jobs(&self) -> usize {
        self.squeue()
            .iter()
            .filter(|(_, state, _)| matches!(state.as_str(), "PENDING" | "RUNNING" | "CONFIGURING"))
            .count()
    }

    fn launcher(&self) -> Value {
        self.daemon().cnnctl_json(&["status"])["launcher"].clone()
    }

    /// The daemon's log and the jobs' output, for a failed wait.
    fn log(&self) -> String {
        let mut s = self.daemon().log();
        if let Ok(dir) = std::fs::read_dir(self.daemon().state.path().join("slurm")) {
            for f in dir.flatten() {
                s.push_str(&format!(
                    "\n--- {}\n{}",
                    f.path().display(),
                    std::fs::read_to_string(f.path()).unwrap_or_default()
                ));
            }
        }
        s.push_str(&format!("\n--- squeue: {:?}", self.squeue()));
        s
    }
}

impl Drop for SlurmDaemon {
    fn drop(&mut self) {
        let _ = Command::new("scancel")
            .arg(format!("--name={}", self.job_name))
            .status();
    }
}

fn rand_u32() -> u32 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos(),
    );
    h.finish() as u32
}

fn assert_cluster_up() {
    let out = Command::new("sinfo").args(["-h", "-o", "%T"]).output();
    let ok = out.as_ref().is_ok_and(|o| {
        let states = String::from_utf8_lossy(&o.stdout);
        o.status.success()
            && ["idle", "mix", "alloc", "completing"]
                .iter()
                .any(|s| states.contains(s))
    });
    assert!(
        ok,
        "no one-node Slurm cluster answers here (sinfo: {out:?}): run `scripts/slurm-cluster.sh start` as root"
    );
}

/// A small MNIST trial: ~1 s per epoch on one thread.
fn small(epochs: u32) -> Value {
    json!({"epochs": epochs, "batchSize": 16, "learningRate": 0.002, "baseFilters": 8, "units": 32,
           "trainLimit": 2000, "testLimit": 200})
}

fn sweep(name: &str, fixed: Value, space: Value) -> Value {
    json!({"name": name, "dataset": "mnist", "fixed": fixed, "space": space,
           "strategy": "grid", "seed": 3})
}

#[test]
#[ignore = "needs root and the one-node Slurm cluster: scripts/test.sh runs it"]
fn slurm_workers_train_a_sweep_scale_up_to_max_and_exit_when_idle() {
    let _serial = serial();
    let d = SlurmDaemon::start(&["--max-workers", "2", "--worker-idle-secs", "4"]);
    assert_eq!(d.launcher()["kind"], "slurm");
    let id = d.daemon().submit(&sweep(
        "slurm-sweep",
        small(1),
        json!({"kernelSize": [3, 5], "head": ["gap", "dense"]}),
    ));

    // Scale-up: as many jobs as --max-workers, never more.
    let mut most = 0;
    wait_for(
        Duration::from_secs(240),
        "the sweep to finish on Slurm's workers",
        || d.log(),
        || {
            let live = d.live_jobs();
            most = most.max(live);
            assert!(
                live <= 2,
                "{live} jobs for --max-workers 2: {:?}",
                d.squeue()
            );
            let s = d.daemon().cnnctl_json(&["sweep", &id]);
            (s["status"] == "finished").then_some(())
        },
    );
    assert_eq!(
        most, 2,
        "four waiting trials should have started two workers"
    );
    let trials = d.daemon().cnnctl_json(&["sweep", &id])["trials"].clone();
    let trials = trials.as_array().unwrap();
    assert_eq!(trials.len(), 4);
    for t in trials {
        assert_eq!(t["status"], "succeeded", "{t}");
        let trial = d.daemon().get_trial(t["trialId"].as_str().unwrap());
        assert!(
            trial.worker.starts_with("slurm-"),
            "trained by {:?}",
            trial.worker
        );
    }
    // cnnctl status matches workers to jobs.
    let status = d.daemon().cnnctl_json(&["status"]);
    for w in status["workers"].as_array().unwrap() {
        let job = w["launcherJob"].as_str().unwrap();
        let name = w["name"].as_str().unwrap();
        assert_eq!(
            job.strip_prefix("slurm:"),
            name.strip_prefix("slurm-"),
            "{w}"
        );
    }

    // Scale-down: idle workers are told to exit, their jobs end, and the launcher says so.
    wait_for(
        Duration::from_secs(60),
        "idle workers to exit and their jobs to end",
        || d.log(),
        || {
            let l = d.launcher();
            (d.live_jobs() == 0 && l["jobs"].as_array().is_some_and(|j| j.is_empty())).then_some(l)
        },
    );
    // A few more looks at the cluster, which still lists the ended jobs: they stay ended.
    std::thread::sleep(Duration::from_secs(3));
    let l = d.launcher();
    assert_eq!(l["jobs"].as_array().map(Vec::len), Some(0), "{l}");
    assert_eq!(
        (l["wanted"].as_u64(), l["running"].as_u64()),
        (Some(0), Some(0)),
        "{l}"
    );
    assert_eq!(l["lastError"], "", "{l}");
    // Each job wrote its output under the state folder, and ended because it was told to.
    let outputs: Vec<String> = std::fs::read_dir(d.daemon().state.path().join("slurm"))
        .unwrap()
        .flatten()
        .filter(|f| f.file_name().to_string_lossy().ends_with(".out"))
        .map(|f| std::fs::read_to_string(f.path()).unwrap())
        .collect();
    assert_eq!(outputs.len(), 2, "{}", d.log());
    for out in &outputs {
        assert!(out.contains("workers to spare: exiting"), "{out}");
    }
}

#[test]
#[ignore = "needs root and the one-node Slurm cluster: scripts/test.sh runs it"]
fn slurm_scancel_mid_trial_gives_the_trial_back_and_another_job_resumes_it() {
    let _serial = serial();
    let d = SlurmDaemon::start(&["--max-workers", "1", "--worker-idle-secs", "30"]);
    let id = d
        .daemon()
        .submit(&sweep("slurm-scancel", small(4), json!({})));
    let trial = format!("{id}-t0");
    let db = d.daemon().db_path();
    let first_job = wait_for(
        Duration::from_secs(180),
        "the trial to record an epoch on a Slurm worker",
        || d.log(),
        || {
            if epochs_of(&db, &trial).is_empty() {
                return None;
            }
            let status = d.daemon().cnnctl_json(&["status"]);
            status["workers"]
                .as_array()?
                .iter()
                .find(|w| w["trialId"] == trial.as_str())
                .and_then(|w| w["launcherJob"].as_str().map(String::from))
        },
    );
    let id_number = first_job.strip_prefix("slurm:").unwrap();
    let out = Command::new("scancel").arg(id_number).output().unwrap();
    assert!(out.status.success(), "{out:?}");

    let s = d.daemon().wait_for_sweep(&id, Duration::from_secs(240));
    assert_eq!(s["trials"][0]["status"], "succeeded", "{s}\n{}", d.log());
    // Given back at SIGTERM (the attempt does not count), resumed from its checkpoint by
    // the worker of another job.
    assert_resumed_exactly(&db, &trial);
    let runs = attempts(&db, &trial);
    assert_eq!(
        runs[1].0, 1,
        "a give-back must not use up an attempt: {runs:?}"
    );
    let worker = d.daemon().get_trial(&trial).worker;
    assert!(
        worker.starts_with("slurm-") && worker != format!("slurm-{id_number}"),
        "{worker}"
    );
    assert!(
        d.squeue()
            .iter()
            .any(|(job, state, _)| job == id_number && state == "CANCELLED")
            || !d.squeue().iter().any(|(job, _, _)| job == id_number),
        "{:?}",
        d.squeue()
    );
}

#[test]
#[ignore = "needs root and the one-node Slurm cluster: scripts/test.sh runs it"]
fn slurm_a_bad_partition_and_a_down_one_are_reported_with_slurms_reason() {
    let _serial = serial();
    // A partition Slurm does not have: sbatch refuses at once.
    let d = SlurmDaemon::start(&["--slurm-partition", "nosuchpartition"]);
    let id = d
        .daemon()
        .submit(&sweep("slurm-bad-partition", small(1), json!({})));
    let l = wait_for(
        Duration::from_secs(30),
        "the refusal in cnnctl status",
        || d.log(),
        || {
            let l = d.launcher();
            (!l["lastError"].as_str().unwrap_or("").is_empty()).then_some(l)
        },
    );
    let error = l["lastError"].as_str().unwrap();
    assert!(error.contains("Invalid partition name"), "{l}");
    let text = d.daemon().cnnctl(&["status"]);
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.contains("cluster refused") && text.contains("Invalid partition name"),
        "{text}"
    );
    assert_eq!(d.live_jobs(), 0);
    // Nothing lost: the trial waits.
    let s = d.daemon().cnnctl_json(&["sweep", &id]);
    assert_eq!(s["trials"][0]["status"], "queued", "{s}");
    drop(d);

    // A partition that is down: the job pends forever, with Slurm's reason, and no second
    // job joins it when another trial comes to wait.
    let metrics = format!("127.0.0.1:{}", common::free_port());
    let d = SlurmDaemon::start(&[
        "--slurm-partition",
        "down",
        "--max-workers",
        "3",
        "--metrics-listen",
        &metrics,
    ]);
    d.daemon()
        .submit(&sweep("slurm-down-partition", small(1), json!({})));
    let l = wait_for(
        Duration::from_secs(30),
        "the pending job's reason in cnnctl status",
        || d.log(),
        || {
            let l = d.launcher();
            let jobs = l["jobs"].as_array()?;
            (jobs.len() == 1 && jobs[0]["reason"] == "PartitionDown").then_some(l)
        },
    );
    assert_eq!(l["jobs"][0]["state"], "pending", "{l}");
    assert!(
        l["lastError"]
            .as_str()
            .unwrap()
            .contains("cannot start: PartitionDown"),
        "{l}"
    );
    d.daemon()
        .submit(&sweep("slurm-down-partition-2", small(1), json!({})));
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(d.live_jobs(), 1, "{:?}", d.squeue());
    let text = d.daemon().cnnctl(&["status"]);
    assert!(String::from_utf8_lossy(&text.stdout).contains("PartitionDown"));
    // Prometheus sees the same.
    let scraped = common::scrape_metrics(&metrics);
    assert!(
        scraped
            .contains(r#"cnnd_launcher_pending_jobs{launcher="slurm",reason="PartitionDown"} 1"#),
        "{scraped}"
    );
    assert!(
        scraped.contains(r#"cnnd_launcher_workers{launcher="slurm",count="starting"} 1"#),
        "{scraped}"
    );
}

#[test]
#[ignore = "needs root and the one-node Slurm cluster: scripts/test.sh runs it"]
fn slurm_a_restarted_daemon_adopts_its_running_jobs_and_their_workers_keep_their_trials() {
    let _serial = serial();
    let mut d = SlurmDaemon::start(&["--max-workers", "1", "--worker-idle-secs", "30"]);
    let id = d
        .daemon()
        .submit(&sweep("slurm-restart", small(4), json!({})));
    let trial = format!("{id}-t0");
    let db = d.daemon().db_path();
    wait_for(
        Duration::from_secs(180),
        "the trial to record an epoch on a Slurm worker",
        || d.log(),
        || (!epochs_of(&db, &trial).is_empty()).then_some(()),
    );
    let jobs_before: Vec<String> = d.squeue().into_iter().map(|(id, _, _)| id).collect();
    assert_eq!(jobs_before.len(), 1, "{jobs_before:?}");

    d.restart();
    let s = d.daemon().wait_for_sweep(&id, Duration::from_secs(240));
    assert_eq!(s["trials"][0]["status"], "succeeded", "{s}\n{}", d.log());
    // The worker kept its trial through the restart (one attempt, every epoch once), and
    // the new daemon took the job over instead of submitting another.
    assert_eq!(epochs_of(&db, &trial), vec![1, 2, 3, 4]);
    assert_eq!(
        attempts(&db, &trial).len(),
        1,
        "{:?}",
        attempts(&db, &trial)
    );
    let jobs_after: Vec<String> = d.squeue().into_iter().map(|(id, _, _)| id).collect();
    assert_eq!(jobs_after, jobs_before, "a second job was submitted");
    // The launcher's view catches up at its next look at the cluster (--launcher-poll-secs
    // 1): the adopted job, matched to its reconnected worker.
    let l = wait_for(
        Duration::from_secs(20),
        "the adopted job to be matched to its worker",
        || {
            format!(
                "{}
{}",
                d.launcher(),
                d.log()
            )
        },
        || {
            let l = d.launcher();
            (!l["jobs"][0]["workerId"].as_str().unwrap_or("").is_empty()).then_some(l)
        },
    );
    assert_eq!(
        l["jobs"][0]["job"],
        format!("slurm:{}", jobs_before[0]),
        "{l}"
    );
}
