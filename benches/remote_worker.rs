//! Remote worker benchmark: the same sweep trained by a local worker (one the daemon starts
//! itself, reading the data directory) and by a remote one (`cnnd-worker --connect` in its
//! own network namespace, over TLS, with an empty cache and the daemon's folders hidden, so
//! every file comes over the worker protocol). Reports each side's median training
//! throughput (images per second over the trials' epochs, transfer excluded), their ratio
//! per configuration and its geometric mean (target: remote within 5% of local), each side's sweep wall time, and how long the remote
//! worker's first transfer of the data set took ("data set in the cache" in its log).
//!
//! ```text
//! cargo bench --bench remote_worker -- [--train-limit N] [--epochs N] [--threads N]
//!     [--rounds N] [--data-dir DIR]
//! ```
//!
//! Needs root (network and mount namespaces, as `tests/remote_workers.rs`). Results: a
//! summary on stdout and `target/bench/remote_worker.json`.

mod common;
#[allow(dead_code)]
#[path = "../tests/common/netns.rs"]
mod netns;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use serde_json::{json, Map, Value};

use cnnd_proto::{
    struct_from_json, GetStatusRequest, GetSweepRequest, GetTrialRequest, SubmitSweepRequest,
};
use common::{cpu_model, daemon_binary, free_port, load1, manifest_dir, median, Daemon};
use netns::{can_make_namespaces, RemoteHost};

/// The remote worker's throughput should be at least this fraction of the local one's.
const TARGET: f64 = 0.95;

#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "remote_worker",
    about = "One sweep trained by a local worker and by a remote worker in its own network namespace"
)]
struct Opts {
    /// Training examples per trial (0: all 60,000 less the validation split).
    #[arg(long, default_value_t = 0)]
    train_limit: u32,
    /// Epochs per trial.
    #[arg(long, default_value_t = 1)]
    epochs: u32,
    /// Intra-op threads of the worker (the same on both sides).
    #[arg(long, default_value_t = 2)]
    threads: u32,
    /// Local/remote rounds, alternating (medians over all of them).
    #[arg(long, default_value_t = 1)]
    rounds: u32,
    /// Folder holding mnist/ (default: $CNND_DATA_DIR, else ../shared/data).
    #[arg(long, default_value_os_t = common::default_data_dir())]
    data_dir: PathBuf,
    /// Passed by `cargo bench` to `harness = false` targets.
    #[arg(long, hide = true)]
    bench: bool,
}

/// What one side measured.
#[derive(Debug, Default)]
struct Side {
    /// Images per second of every epoch of every trial.
    images_per_second: Vec<f64>,
    /// The same, by the trial's position in the grid (the same configuration on both sides).
    by_trial: std::collections::BTreeMap<usize, Vec<f64>>,
    /// Seconds from submit to the sweep's end.
    wall_seconds: Vec<f64>,
    /// (bytes, seconds) of the first transfer of the data set (remote only).
    transfers: Vec<(u64, f64)>,
}

/// A CA and a server certificate for loopback and `names`, made with rcgen.
fn write_certs(dir: &Path, names: &[String]) -> Result<()> {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
    let ca_key = KeyPair::generate()?;
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "cnnd bench CA");
    let ca_cert = ca.self_signed(&ca_key)?;
    let mut all = vec!["127.0.0.1".to_string(), "localhost".to_string()];
    all.extend_from_slice(names);
    let key = KeyPair::generate()?;
    let server = CertificateParams::new(all)?.signed_by(&key, &ca_cert, &ca_key)?;
    std::fs::write(dir.join("ca.pem"), ca_cert.pem())?;
    std::fs::write(dir.join("server.pem"), server.pem())?;
    std::fs::write(dir.join("server.key"), key.serialize_pem())?;
    Ok(())
}

/// A `cnnd-worker` child killed when dropped.
struct Worker(Child);

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts a daemon on a fresh state folder; `remote` makes it serve workers on every
/// address over TLS and start none of its own.
fn start_daemon(
    o: &Opts,
    state: &Path,
    certs: &Path,
    remote: Option<u16>,
) -> Result<(Daemon, cnnd_client::ClientOptions)> {
    let exe = daemon_binary()?;
    let port = free_port()?;
    let log = state.join("daemon.log");
    let logf = std::fs::File::create(&log)?;
    let mut cmd = Command::new(&exe);
    cmd.args(["--state-dir", &state.display().to_string()])
        .args(["--data-dir", &o.data_dir.display().to_string()])
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(["--threads-per-worker", &o.threads.to_string()]);
    let options = match remote {
        None => {
            cmd.args(["--cpu-workers", "1"]);
            cnnd_client::ClientOptions {
                addr: format!("127.0.0.1:{port}"),
                token_file: Some(cnnd_client::auth::token_path(state)),
                ..Default::default()
            }
        }
        Some(hub_port) => {
            cmd.args(["--cpu-workers", "0"])
                .args(["--worker-listen", &format!("0.0.0.0:{hub_port}")])
                .arg("--tls-cert")
                .arg(certs.join("server.pem"))
                .arg("--tls-key")
                .arg(certs.join("server.key"));
            cnnd_client::ClientOptions {
                addr: format!("https://127.0.0.1:{port}"),
                token_file: Some(cnnd_client::auth::token_path(state)),
                ca_file: Some(certs.join("ca.pem")),
                ..Default::default()
            }
        }
    };
    let child = cmd
        .env_remove("CNND_DB")
        .env_remove("CNND_LISTEN")
        .env_remove("CNND_STATE_DIR")
        .stdin(Stdio::null())
        .stdout(logf.try_clone()?)
        .stderr(logf)
        .spawn()
        .with_context(|| format!("starting {}", exe.display()))?;
    Ok((
        Daemon {
            child,
            log,
            stop_grace: Duration::from_secs(10),
        },
        options,
    ))
}

/// Runs one sweep on one side; for `remote`, a worker in a network namespace does the work.
async fn run_side(o: &Opts, remote: bool, side: &mut Side) -> Result<()> {
    let state = tempfile::Builder::new()
        .prefix("cnnd-bench-remote-")
        .tempdir()?;
    let certs = tempfile::tempdir()?;
    let host = if remote {
        Some(RemoteHost::new().map_err(|e| anyhow!("making a network namespace: {e}"))?)
    } else {
        None
    };
    let hub_port = free_port()?;
    if let Some(h) = &host {
        write_certs(certs.path(), &[h.host_addr().to_string()])?;
    }
    let (mut daemon, options) = start_daemon(
        o,
        state.path(),
        certs.path(),
        host.as_ref().map(|_| hub_port),
    )?;
    let spawned = Instant::now();
    let mut client = loop {
        daemon.check_alive()?;
        if spawned.elapsed() > Duration::from_secs(120) {
            bail!("the daemon did not answer in 120 s:\n{}", daemon.log_tail());
        }
        if cnnd_client::auth::token_path(state.path()).exists() {
            if let Ok(c) = cnnd_client::connect(&options).await {
                break c;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };

    // The remote worker: its own folder (token, CA, empty cache), the daemon's hidden.
    let home = tempfile::tempdir()?;
    let worker_log = home.path().join("worker.log");
    let _worker = match &host {
        None => None,
        Some(h) => {
            std::fs::copy(
                state.path().join("worker-token"),
                home.path().join("worker-token"),
            )?;
            std::fs::copy(certs.path().join("ca.pem"), home.path().join("ca.pem"))?;
            let bin = daemon_binary()?.with_file_name("cnnd-worker");
            let mut hidden = vec![state.path().to_path_buf(), o.data_dir.clone()];
            if let Ok(real) = std::fs::canonicalize(&o.data_dir) {
                hidden.push(real);
            }
            hidden.dedup();
            let hidden: Vec<&Path> = hidden.iter().map(PathBuf::as_path).collect();
            let child = h
                .command(&bin, &hidden)
                .arg("--connect")
                .arg(format!("https://{}:{hub_port}", h.host_addr()))
                .arg("--ca-file")
                .arg(home.path().join("ca.pem"))
                .arg("--token-file")
                .arg(home.path().join("worker-token"))
                .arg("--cache-dir")
                .arg(home.path().join("cache"))
                .args(["--name", "bench-remote", "--device", "cpu"])
                .args(["--threads", &o.threads.to_string()])
                .env("CUDA_VISIBLE_DEVICES", "")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(&worker_log)?)
                .spawn()
                .context("starting cnnd-worker in its namespace")?;
            Some(Worker(child))
        }
    };
    loop {
        daemon.check_alive()?;
        let st = client.get_status(GetStatusRequest {}).await?.into_inner();
        if st.workers_idle >= 1 {
            break;
        }
        if spawned.elapsed() > Duration::from_secs(180) {
            bail!(
                "no idle worker after 180 s:\n{}\n{}",
                daemon.log_tail(),
                std::fs::read_to_string(&worker_log).unwrap_or_default()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let space: Map<String, Value> = serde_json::from_value(json!({"head": ["gap", "dense"]}))?;
    let fixed: Map<String, Value> = serde_json::from_value(json!({
        "epochs": o.epochs, "batchSize": 64, "trainLimit": o.train_limit
    }))?;
    let started = Instant::now();
    let resp = client
        .submit_sweep(SubmitSweepRequest {
            name: format!("bench-remote-{}", if remote { "remote" } else { "local" }),
            dataset: "mnist".into(),
            space: Some(struct_from_json(&space)),
            fixed: Some(struct_from_json(&fixed)),
            strategy: "grid".into(),
            ..Default::default()
        })
        .await
        .map_err(|e| anyhow!("SubmitSweep: {}", e.message()))?
        .into_inner();
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
        daemon.check_alive()?;
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    side.wall_seconds.push(started.elapsed().as_secs_f64());
    for (position, t) in sweep.trials.iter().enumerate() {
        let tr = client
            .get_trial(GetTrialRequest {
                trial_id: t.trial_id.clone(),
            })
            .await
            .map_err(|e| anyhow!("GetTrial: {}", e.message()))?
            .into_inner();
        if tr.status != "succeeded" {
            bail!("trial {} {}: {}", tr.trial_id, tr.status, tr.error);
        }
        side.images_per_second
            .extend(tr.epochs.iter().map(|e| e.images_per_second));
        side.by_trial
            .entry(position)
            .or_default()
            .extend(tr.epochs.iter().map(|e| e.images_per_second));
    }
    if remote {
        let log = std::fs::read_to_string(&worker_log)?;
        let line = log
            .lines()
            .find(|l| l.contains("data set in the cache"))
            .ok_or_else(|| anyhow!("no transfer logged by the remote worker:\n{log}"))?;
        let field = |name: &str| -> Option<f64> {
            let at = line.find(&format!("{name}="))? + name.len() + 1;
            line[at..]
                .split(|c: char| c.is_whitespace())
                .next()?
                .parse()
                .ok()
        };
        side.transfers.push((
            field("bytes").unwrap_or(f64::NAN) as u64,
            field("seconds").unwrap_or(f64::NAN),
        ));
    }
    Ok(())
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    let o = <Opts as clap::Parser>::parse();
    can_make_namespaces().map_err(|e| anyhow!("this benchmark needs root: {e}"))?;
    eprintln!(
        "remote_worker: {} train examples, {} epochs, {} threads, {} rounds; {}; load {:.2}",
        o.train_limit,
        o.epochs,
        o.threads,
        o.rounds,
        cpu_model(),
        load1()
    );
    let mut local = Side::default();
    let mut remote = Side::default();
    for round in 0..o.rounds {
        // Alternate which side goes first, so drift in the machine's load hits both.
        let order = if round % 2 == 0 {
            [false, true]
        } else {
            [true, false]
        };
        for is_remote in order {
            let side = if is_remote { &mut remote } else { &mut local };
            run_side(&o, is_remote, side).await?;
            eprintln!(
                "round {round}: {} done (load {:.2})",
                if is_remote { "remote" } else { "local" },
                load1()
            );
        }
    }
    // The grid's configurations differ in cost (a dense head is not a GAP head), so each is
    // compared with itself: the ratio of its medians, then the geometric mean over them.
    let per_trial: Vec<f64> = local
        .by_trial
        .iter()
        .filter_map(|(position, l)| Some(median(remote.by_trial.get(position)?) / median(l)))
        .collect();
    let ratio = (per_trial.iter().map(|r| r.ln()).sum::<f64>() / per_trial.len() as f64).exp();
    let result = json!({
        "cpu": cpu_model(),
        "trainLimit": o.train_limit, "epochs": o.epochs, "threads": o.threads, "rounds": o.rounds,
        "local": {"imagesPerSecond": local.images_per_second, "wallSeconds": local.wall_seconds},
        "remote": {"imagesPerSecond": remote.images_per_second, "wallSeconds": remote.wall_seconds,
                   "firstTransfer": remote.transfers.iter().map(|(b, s)| json!({"bytes": b, "seconds": s})).collect::<Vec<_>>()},
        "ratioPerTrial": per_trial,
        "ratio": ratio,
    });
    for (label, side) in [("local worker: ", &local), ("remote worker:", &remote)] {
        let walls: Vec<f64> = side
            .wall_seconds
            .iter()
            .map(|s| (s * 10.0).round() / 10.0)
            .collect();
        println!(
            "{label} median {:.0} images/s over {} epochs; sweep wall {walls:?} s",
            median(&side.images_per_second),
            side.images_per_second.len(),
        );
    }
    for (bytes, secs) in &remote.transfers {
        println!(
            "first transfer of the data set to an empty cache: {:.1} MB in {secs:.2} s",
            *bytes as f64 / 1e6
        );
    }
    println!(
        "remote / local throughput per configuration: {:?}",
        per_trial
            .iter()
            .map(|r| (r * 1000.0).round() / 1000.0)
            .collect::<Vec<_>>()
    );
    println!(
        "remote / local throughput (geometric mean): {ratio:.3} (target >= {TARGET}: {})",
        if ratio >= TARGET { "met" } else { "NOT met" }
    );
    let out = manifest_dir().join("target/bench");
    std::fs::create_dir_all(&out)?;
    std::fs::write(
        out.join("remote_worker.json"),
        serde_json::to_string_pretty(&result)?,
    )?;
    Ok(())
}
