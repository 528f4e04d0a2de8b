//! Sweep throughput benchmark: the real daemon (`cnnd`, 2 CPU workers x 1 thread) runs an
//! 8-trial sweep submitted over gRPC; then the same 8 trainings run one after another with
//! `bench/torch_reference.py` at 2 threads. Reports both wall times and their ratio (target:
//! daemon <= 0.62 x PyTorch), the idle time of a worker slot between two trials, and the
//! per-trial overhead around the epochs (data preparation, model build, test evaluation,
//! weights).
//!
//! ```text
//! cargo bench --bench sweep_throughput -- [--train-limit N] [--data-dir DIR]
//!     [--workers 2] [--threads-per-worker 1] [--pytorch-threads 2] [--skip-pytorch]
//! ```
//!
//! Results: a summary on stdout and `target/bench/sweep_throughput.json`.

mod common;

use common::{
    children_cpu_seconds, cpu_model, daemon_binary, free_port, load1, manifest_dir, Daemon,
};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{anyhow, bail, Context, Result};
use serde_json::{json, Map, Value};

use cnnd_proto::{
    struct_from_json, struct_to_json, GetStatusRequest, GetSweepRequest, GetTrialRequest,
    SubmitSweepRequest,
};

/// The ratio the daemon should reach: its wall time <= TARGET x sequential PyTorch.
const TARGET: f64 = 0.62;

/// `cargo bench --bench sweep_throughput -- [options]`.
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "sweep_throughput",
    about = "An 8-trial sweep through the daemon against the same trainings run one after another by PyTorch"
)]
struct Opts {
    /// Training examples per trial (0: all 60,000 less the validation split).
    #[arg(long, default_value_t = 0)]
    train_limit: u32,
    /// Folder holding mnist/ (default: $CNND_DATA_DIR, else ../shared/data).
    #[arg(long, default_value_os_t = common::default_data_dir())]
    data_dir: PathBuf,
    /// The daemon's CPU workers.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..))]
    workers: u32,
    /// Threads of each worker.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    threads_per_worker: u32,
    /// Threads of each PyTorch run.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..))]
    pytorch_threads: u32,
    /// Measure the daemon only.
    #[arg(long)]
    skip_pytorch: bool,
    /// Passed by `cargo bench` to `harness = false` targets.
    #[arg(long, hide = true)]
    bench: bool,
}

fn torch_python() -> PathBuf {
    if let Some(p) = std::env::var_os("CNND_PYTHON").filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    if let Some(v) = std::env::var_os("CNND_VENV").filter(|p| !p.is_empty()) {
        return PathBuf::from(v).join("bin/python");
    }
    let cache = match std::env::var_os("CNND_CACHE") {
        Some(d) if !d.is_empty() => PathBuf::from(d),
        _ => std::env::var_os("HOME")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/root"))
            .join(".cache/cnnd"),
    };
    cache.join("venv-torch-2.11.0/bin/python")
}

fn parse_time(s: &str) -> Option<SystemTime> {
    if s.is_empty() {
        None
    } else {
        humantime::parse_rfc3339_weak(s).ok()
    }
}

fn secs_between(a: SystemTime, b: SystemTime) -> f64 {
    match b.duration_since(a) {
        Ok(d) => d.as_secs_f64(),
        Err(e) => -e.duration().as_secs_f64(),
    }
}

fn stats(v: &[f64]) -> Value {
    if v.is_empty() {
        return json!(null);
    }
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let mean = s.iter().sum::<f64>() / s.len() as f64;
    json!({"n": s.len(), "min": s[0], "median": s[s.len() / 2], "mean": mean, "max": s[s.len() - 1], "values": v})
}

fn fmt_stats(v: &Value) -> String {
    if v.is_null() {
        return "n/a".into();
    }
    format!(
        "min {:.2} s, median {:.2} s, mean {:.2} s, max {:.2} s (n={})",
        v["min"].as_f64().unwrap_or(f64::NAN),
        v["median"].as_f64().unwrap_or(f64::NAN),
        v["mean"].as_f64().unwrap_or(f64::NAN),
        v["max"].as_f64().unwrap_or(f64::NAN),
        v["n"]
    )
}

struct TrialRow {
    index: u32,
    params: Map<String, Value>,
    worker: String,
    status: String,
    started: Option<SystemTime>,
    finished: Option<SystemTime>,
    epoch_seconds: f64,
    images_per_second: f64,
}

async fn run_daemon(o: &Opts, data_dir: &Path) -> Result<Value> {
    let exe = daemon_binary()?;
    let state = tempfile::Builder::new()
        .prefix("cnnd-bench-sweep-")
        .tempdir()?;
    let port = free_port()?;
    let listen = format!("127.0.0.1:{port}");
    let log = state.path().join("daemon.log");
    let logf = std::fs::File::create(&log)?;
    let load_at_start = load1();
    let spawned = Instant::now();
    let child = Command::new(&exe)
        .args([
            "--cpu-workers",
            &o.workers.to_string(),
            "--threads-per-worker",
            &o.threads_per_worker.to_string(),
            "--data-dir",
            &data_dir.display().to_string(),
            "--state-dir",
            &state.path().display().to_string(),
            "--listen",
            &listen,
        ])
        .env_remove("CNND_DB")
        .env_remove("CNND_LISTEN")
        .env_remove("CNND_STATE_DIR")
        .stdin(Stdio::null())
        .stdout(logf.try_clone()?)
        .stderr(logf)
        .spawn()
        .with_context(|| format!("starting {}", exe.display()))?;
    let mut daemon = Daemon {
        child,
        log,
        stop_grace: Duration::from_secs(10),
    };
    eprintln!(
        "daemon {} on {listen}, state {}",
        exe.display(),
        state.path().display()
    );

    // Wait until every worker has registered and is idle.
    let options = cnnd_client::ClientOptions {
        addr: listen.clone(),
        token_file: Some(cnnd_client::auth::token_path(state.path())),
        ..Default::default()
    };
    let mut client = loop {
        if let Ok(Some(st)) = daemon.child.try_wait() {
            bail!("the daemon exited ({st}):\n{}", daemon.log_tail());
        }
        if spawned.elapsed() > Duration::from_secs(120) {
            bail!("the daemon did not answer in 120 s:\n{}", daemon.log_tail());
        }
        if !cnnd_client::auth::token_path(state.path()).exists() {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        }
        match cnnd_client::connect(&options).await {
            Ok(c) => break c,
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    };
    let serving_seconds = spawned.elapsed().as_secs_f64();
    loop {
        let st = client.get_status(GetStatusRequest {}).await?.into_inner();
        if st.workers_idle >= o.workers {
            break;
        }
        if spawned.elapsed() > Duration::from_secs(180) {
            bail!(
                "workers not idle after 180 s ({} idle):\n{}",
                st.workers_idle,
                daemon.log_tail()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let ready_seconds = spawned.elapsed().as_secs_f64();
    eprintln!(
        "daemon serving after {serving_seconds:.2} s, {} workers idle after {ready_seconds:.2} s",
        o.workers
    );

    let space: Map<String, Value> = serde_json::from_value(json!({
        "kernelSize": [3, 5], "dropout": [0, 0.5], "head": ["gap", "dense"]
    }))?;
    let fixed: Map<String, Value> = serde_json::from_value(json!({
        "epochs": 1, "batchSize": 64, "trainLimit": o.train_limit
    }))?;
    let load_before = load1();
    let submitted_at = SystemTime::now();
    let t = Instant::now();
    let resp = client
        .submit_sweep(SubmitSweepRequest {
            name: "bench-sweep-throughput".into(),
            dataset: "mnist".into(),
            space: Some(struct_from_json(&space)),
            fixed: Some(struct_from_json(&fixed)),
            strategy: "grid".into(),
            ..Default::default()
        })
        .await
        .map_err(|e| anyhow!("SubmitSweep: {}", e.message()))?
        .into_inner();
    eprintln!(
        "sweep {} submitted: {} trials",
        resp.sweep_id, resp.trials_queued
    );
    let mut last_done = usize::MAX;
    let sweep = loop {
        let s = client
            .get_sweep(GetSweepRequest {
                sweep_id: resp.sweep_id.clone(),
                all_params: false,
            })
            .await
            .map_err(|e| anyhow!("GetSweep: {}", e.message()))?
            .into_inner();
        if s.status == "finished" {
            break s;
        }
        let done = s
            .trials
            .iter()
            .filter(|t| !matches!(t.status.as_str(), "queued" | "running"))
            .count();
        if done != last_done {
            eprintln!(
                "  {:>6.1} s: {done}/{} trials done (load {:.2})",
                t.elapsed().as_secs_f64(),
                s.trials.len(),
                load1()
            );
            last_done = done;
        }
        if let Ok(Some(st)) = daemon.child.try_wait() {
            bail!("the daemon exited ({st}):\n{}", daemon.log_tail());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let wall = t.elapsed().as_secs_f64();
    let load_after = load1();

    let mut rows = Vec::new();
    for ts in &sweep.trials {
        let tr = client
            .get_trial(GetTrialRequest {
                trial_id: ts.trial_id.clone(),
            })
            .await
            .map_err(|e| anyhow!("GetTrial: {}", e.message()))?
            .into_inner();
        if tr.status != "succeeded" {
            eprintln!("  trial {} {}: {}", tr.index, tr.status, tr.error);
        }
        rows.push(TrialRow {
            index: tr.index,
            params: tr.params.as_ref().map(struct_to_json).unwrap_or_default(),
            worker: tr.worker.clone(),
            status: tr.status.clone(),
            started: parse_time(&tr.started_at),
            finished: parse_time(&tr.finished_at),
            epoch_seconds: tr.epochs.iter().map(|e| e.seconds).sum(),
            images_per_second: tr
                .epochs
                .first()
                .map(|e| e.images_per_second)
                .unwrap_or(f64::NAN),
        });
    }
    drop(daemon);

    // Per worker slot, in start order: idle gaps between consecutive trials.
    let mut by_worker: BTreeMap<String, Vec<&TrialRow>> = BTreeMap::new();
    for r in &rows {
        by_worker.entry(r.worker.clone()).or_default().push(r);
    }
    let mut gaps = Vec::new();
    let mut first_overheads = Vec::new();
    let mut later_overheads = Vec::new();
    for list in by_worker.values_mut() {
        list.sort_by_key(|r| r.started);
        for (i, r) in list.iter().enumerate() {
            if let (Some(s), Some(f)) = (r.started, r.finished) {
                let overhead = secs_between(s, f) - r.epoch_seconds;
                if i == 0 {
                    first_overheads.push(overhead);
                } else {
                    later_overheads.push(overhead);
                }
            }
            if i > 0 {
                if let (Some(prev_f), Some(s)) = (list[i - 1].finished, r.started) {
                    gaps.push(secs_between(prev_f, s));
                }
            }
        }
    }
    let first_start = rows.iter().filter_map(|r| r.started).min();
    let last_finish = rows.iter().filter_map(|r| r.finished).max();
    let trials: Vec<Value> = rows
        .iter()
        .map(|r| {
            json!({
                "index": r.index,
                "params": {"kernelSize": r.params.get("kernelSize"), "dropout": r.params.get("dropout"), "head": r.params.get("head"), "trainLimit": r.params.get("trainLimit")},
                "worker": r.worker,
                "status": r.status,
                "started_after_submit_seconds": r.started.map(|s| secs_between(submitted_at, s)),
                "finished_after_submit_seconds": r.finished.map(|f| secs_between(submitted_at, f)),
                "trial_seconds": r.started.zip(r.finished).map(|(s, f)| secs_between(s, f)),
                "epoch_seconds": r.epoch_seconds,
                "images_per_second": r.images_per_second,
            })
        })
        .collect();
    let ok = rows.iter().filter(|r| r.status == "succeeded").count();
    Ok(json!({
        "sweep_id": sweep.sweep_id,
        "trials_succeeded": ok,
        "trials_total": rows.len(),
        "daemon_serving_seconds": serving_seconds,
        "daemon_ready_seconds": ready_seconds,
        "wall_seconds": wall,
        "submit_to_first_start_seconds": first_start.map(|s| secs_between(submitted_at, s)),
        "last_finish_to_observed_seconds": last_finish.map(|f| wall - secs_between(submitted_at, f)),
        "slot_idle_between_trials": stats(&gaps),
        "overhead_first_trial_of_worker": stats(&first_overheads),
        "overhead_later_trials": stats(&later_overheads),
        "load1_at_daemon_start": load_at_start,
        "load1_before": load_before,
        "load1_after": load_after,
        "trials": trials,
        "params": rows.iter().map(|r| Value::Object(r.params.clone())).collect::<Vec<_>>(),
    }))
}

fn run_pytorch(o: &Opts, data_dir: &Path, params: &[Value]) -> Result<Value> {
    let python = torch_python();
    if !python.exists() {
        bail!(
            "{} not found: run scripts/setup.sh (or set CNND_PYTHON)",
            python.display()
        );
    }
    let script = manifest_dir().join("bench/torch_reference.py");
    let load_before = load1();
    let t = Instant::now();
    let mut runs = Vec::new();
    for (i, p) in params.iter().enumerate() {
        let get = |k: &str| -> String {
            match p.get(k) {
                Some(Value::String(s)) => s.clone(),
                Some(v) => v.to_string(),
                None => String::new(),
            }
        };
        let mut args = vec![
            script.display().to_string(),
            "--data-dir".into(),
            data_dir.display().to_string(),
        ];
        for (flag, key) in [
            ("--kernel-size", "kernelSize"),
            ("--head", "head"),
            ("--dropout", "dropout"),
            ("--units", "units"),
            ("--base-filters", "baseFilters"),
            ("--blocks", "blocks"),
            ("--batch-size", "batchSize"),
            ("--learning-rate", "learningRate"),
            ("--epochs", "epochs"),
            ("--train-limit", "trainLimit"),
            ("--seed", "seed"),
        ] {
            if p.get(key).is_some() {
                args.push(flag.into());
                args.push(get(key));
            }
        }
        args.push("--threads".into());
        args.push(o.pytorch_threads.to_string());
        let lb = load1();
        let cpu_before = children_cpu_seconds();
        let ts = Instant::now();
        let out = Command::new(&python)
            .args(&args)
            .stdin(Stdio::null())
            .stderr(Stdio::inherit())
            .output()?;
        let secs = ts.elapsed().as_secs_f64();
        let cpu = children_cpu_seconds() - cpu_before;
        let stdout = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() {
            bail!(
                "{} {} failed: {}\n{stdout}",
                python.display(),
                args.join(" "),
                out.status
            );
        }
        let lines: Vec<Value> = stdout
            .lines()
            .filter_map(|l| serde_json::from_str(l.trim()).ok())
            .collect();
        let epoch = lines
            .iter()
            .find(|v| v.get("images_per_second").is_some())
            .cloned()
            .unwrap_or(json!({}));
        let header = lines.first().cloned().unwrap_or(json!({}));
        eprintln!(
            "  PyTorch trial {i}: {:.1} s, {:.1} CPU s ({} k{} do{}; epoch {:.1} s, {:.0} img/s; load {:.2})",
            secs,
            cpu,
            get("head"),
            get("kernelSize"),
            get("dropout"),
            epoch["seconds"].as_f64().unwrap_or(f64::NAN),
            epoch["images_per_second"].as_f64().unwrap_or(f64::NAN),
            lb
        );
        runs.push(json!({
            "params": {"kernelSize": p.get("kernelSize"), "dropout": p.get("dropout"), "head": p.get("head")},
            "process_seconds": secs,
            "process_cpu_seconds": cpu,
            "epoch_seconds": epoch["seconds"],
            "images_per_second": epoch["images_per_second"],
            "load_seconds": header["load_seconds"],
            "load1_before": lb,
        }));
    }
    let wall = t.elapsed().as_secs_f64();
    let epoch_sum: f64 = runs
        .iter()
        .filter_map(|r| r["epoch_seconds"].as_f64())
        .sum();
    let process_sum: f64 = runs
        .iter()
        .filter_map(|r| r["process_seconds"].as_f64())
        .sum();
    Ok(json!({
        "python": python,
        "threads": o.pytorch_threads,
        "wall_seconds": wall,
        "epoch_seconds_sum": epoch_sum,
        "overhead_per_run_mean": (process_sum - epoch_sum) / runs.len().max(1) as f64,
        "load1_before": load_before,
        "load1_after": load1(),
        "runs": runs,
    }))
}

fn write_report(
    o: &Opts,
    data_dir: &Path,
    started_at: &str,
    daemon: &Value,
    torch: &Value,
) -> Result<PathBuf> {
    let dw = daemon["wall_seconds"].as_f64().unwrap_or(f64::NAN);
    let ratio = torch["wall_seconds"].as_f64().map(|tw| dw / tw);
    let report = json!({
        "bench": "sweep_throughput",
        "started_at": started_at,
        "machine": {
            "cpu_model": cpu_model(),
            "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        },
        "options": {
            "train_limit": o.train_limit,
            "data_dir": data_dir,
            "workers": o.workers,
            "threads_per_worker": o.threads_per_worker,
            "pytorch_threads": o.pytorch_threads,
        },
        "space": {"kernelSize": [3, 5], "dropout": [0, 0.5], "head": ["gap", "dense"]},
        "fixed": {"epochs": 1, "batchSize": 64, "trainLimit": o.train_limit},
        "daemon": daemon,
        "pytorch": torch,
        "ratio_daemon_over_pytorch": ratio,
        "target": TARGET,
    });
    let out_dir = manifest_dir().join("target/bench");
    std::fs::create_dir_all(&out_dir)?;
    let path = out_dir.join("sweep_throughput.json");
    std::fs::write(&path, serde_json::to_string_pretty(&report)? + "\n")?;
    Ok(path)
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    let o = <Opts as clap::Parser>::parse();
    let mnist = o.data_dir.join("mnist");
    anyhow::ensure!(
        ["train-images-idx3-ubyte.gz", "train-images-idx3-ubyte"]
            .iter()
            .any(|f| mnist.join(f).is_file()),
        "MNIST not found in {} (give --data-dir, or set CNND_DATA_DIR)",
        mnist.display()
    );
    let data_dir = o
        .data_dir
        .canonicalize()
        .unwrap_or_else(|_| o.data_dir.clone());
    let started_at = humantime::format_rfc3339_seconds(SystemTime::now()).to_string();
    eprintln!(
        "sweep throughput: 8 trials, 1 epoch each, batch 64, train limit {} (0: all); {} workers x {} thread; load {:.2}",
        o.train_limit,
        o.workers,
        o.threads_per_worker,
        load1()
    );

    let mut daemon = run_daemon(&o, &data_dir).await?;
    let params: Vec<Value> = daemon["params"].as_array().cloned().unwrap_or_default();
    if let Some(obj) = daemon.as_object_mut() {
        obj.remove("params");
    }
    println!();
    println!(
        "daemon ({} workers x {} thread): {:>7.1} s  (load {:.2} -> {:.2}; {}/{} trials succeeded)",
        o.workers,
        o.threads_per_worker,
        daemon["wall_seconds"].as_f64().unwrap_or(f64::NAN),
        daemon["load1_before"].as_f64().unwrap_or(f64::NAN),
        daemon["load1_after"].as_f64().unwrap_or(f64::NAN),
        daemon["trials_succeeded"],
        daemon["trials_total"]
    );
    println!(
        "daemon start-up: serving {:.2} s, workers idle {:.2} s",
        daemon["daemon_serving_seconds"]
            .as_f64()
            .unwrap_or(f64::NAN),
        daemon["daemon_ready_seconds"].as_f64().unwrap_or(f64::NAN)
    );
    println!(
        "submit -> first trial started: {:.3} s",
        daemon["submit_to_first_start_seconds"]
            .as_f64()
            .unwrap_or(f64::NAN)
    );
    println!(
        "slot idle between trials: {}",
        fmt_stats(&daemon["slot_idle_between_trials"])
    );
    println!(
        "per-trial overhead (trial wall - epoch seconds), first trial of a worker: {}",
        fmt_stats(&daemon["overhead_first_trial_of_worker"])
    );
    println!(
        "per-trial overhead, later trials: {}",
        fmt_stats(&daemon["overhead_later_trials"])
    );
    // Written now and again at the end, so an interrupted PyTorch phase keeps the daemon's.
    let path = write_report(&o, &data_dir, &started_at, &daemon, &json!(null))?;
    if o.skip_pytorch {
        println!("wrote {}", path.display());
        return Ok(());
    }

    eprintln!(
        "the same {} trainings, one after another, PyTorch at {} threads:",
        params.len(),
        o.pytorch_threads
    );
    let torch = run_pytorch(&o, &data_dir, &params)?;
    let dw = daemon["wall_seconds"].as_f64().unwrap_or(f64::NAN);
    let tw = torch["wall_seconds"].as_f64().unwrap_or(f64::NAN);
    let ratio = dw / tw;
    println!(
        "PyTorch sequential ({} threads): {:>7.1} s  (load {:.2} -> {:.2}; epochs {:.1} s of it; per-run overhead, process wall - epoch, mean {:.2} s)",
        o.pytorch_threads,
        tw,
        torch["load1_before"].as_f64().unwrap_or(f64::NAN),
        torch["load1_after"].as_f64().unwrap_or(f64::NAN),
        torch["epoch_seconds_sum"].as_f64().unwrap_or(f64::NAN),
        torch["overhead_per_run_mean"].as_f64().unwrap_or(f64::NAN)
    );
    println!(
        "ratio daemon/PyTorch: {ratio:.3} (target <= {TARGET}: {})",
        if ratio <= TARGET { "met" } else { "NOT met" }
    );
    let path = write_report(&o, &data_dir, &started_at, &daemon, &torch)?;
    println!("wrote {}", path.display());
    Ok(())
}
