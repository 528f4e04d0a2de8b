//! Control-plane benchmark: how fast the real daemon (`cnnd` over TCP) answers when its store
//! is big, and how fast epoch metrics go into the store.
//!
//! 1. `SubmitSweep` of a 1,000-trial grid (median of several submits; target < 100 ms).
//! 2. `GetSweep` of a 1,000-trial sweep and `GetStatus`, p50/p99, while N clients (each on its
//!    own connection) poll both in a loop, with 10,000 trials and 1,000,000 epoch rows in the
//!    store (targets: GetSweep p99 < 20 ms, GetStatus p99 < 10 ms).
//! 3. Epoch ingestion: rows stored per second through the write path of the `ReportEpoch`
//!    handler (`Scheduler::report_epoch` -> `Store::record_epoch`, group commit), with one
//!    and with several reporting tasks, one per worker (target >= 20,000 rows/s).
//! 4. `RenderCharts` of a 100-trial sweep with 100 epochs per trial (target < 2 s).
//!
//! ```text
//! cargo bench --bench control_plane -- [--trials 10000] [--epochs-per-trial 100]
//!     [--pollers 50] [--duration-secs 10] [--poll-intervals-ms 0,1000] [--submits 5]
//!     [--ingest-epochs 20000] [--ingest-tasks 1,8,64] [--chart-rounds 3]
//!     [--store-cache FILE] [--data-dir DIR] [--daemon PATH] [--keep-state]
//!     [--postgres URL]
//! ```
//!
//! `--postgres URL` runs everything against that PostgreSQL database (empty): the filled
//! SQLite store is copied into it with `Store::copy_into` (what `cnnd store copy` does; the
//! copy's time is reported), the daemon runs with `--db URL`, and ingestion writes there.
//!
//! The store is filled before the daemon starts, through the library: `Store::open` (the real
//! migrations) and `Store::insert_sweep` (the real sweep and trial rows), then the trials are
//! finished with SQL in big transactions: status, test results, `epochs_per_trial` epoch rows
//! each and the events the daemon would have logged (trial_started, one epoch_finished per
//! epoch, trial_finished, sweep_finished). `--store-cache FILE` keeps a copy of that file and
//! reuses it on later runs (the daemon migrates it when the schema moved on).
//!
//! Results: a table on stdout and `target/bench/control_plane.json`. Every figure carries the
//! 1/5/15-minute load average read when it was taken: on a shared 2-core machine the load
//! says more about a latency than the code does.

mod common;

use common::{cpu_model, daemon_binary, free_port, loadavg, manifest_dir, median, Daemon};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{anyhow, bail, Context, Result};
use rand::{Rng, SeedableRng};
use serde_json::{json, Map, Value};
use sqlx::Connection;

use cnnd::scheduler::{Scheduler, SchedulerConfig};
use cnnd::store::{LeaseAsk, Store, TrialFacts};
use cnnd_core::datasets::resolve_builtin;
use cnnd_core::epoch::EpochRecord;
use cnnd_core::sweep::{SweepLimits, SweepRequest};
use cnnd_proto::{
    struct_from_json, GetStatusRequest, GetSweepRequest, PauseSweepRequest, RenderChartsRequest,
    SubmitSweepRequest,
};

/// Trials of the sweep `GetSweep` reads and of the one `SubmitSweep` sends.
const BIG_SWEEP: u32 = 1000;
/// Trials of the sweep whose charts are rendered.
const CHART_SWEEP: u32 = 100;
/// Trials of the other stored sweeps.
const OTHER_SWEEP: u32 = 500;

const TARGET_SUBMIT_MS: f64 = 100.0;
const TARGET_GET_SWEEP_P99_MS: f64 = 20.0;
const TARGET_GET_STATUS_P99_MS: f64 = 10.0;
const TARGET_INGEST_ROWS_PER_S: f64 = 20_000.0;
const TARGET_CHARTS_S: f64 = 2.0;

/// `cargo bench --bench control_plane -- [options]`.
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "control_plane",
    about = "The daemon's control plane with a big store: submit, poll, ingest, charts"
)]
struct Opts {
    /// Trials in the filled store (at least a 1,000-trial and a 100-trial sweep).
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(i64::from(BIG_SWEEP + CHART_SWEEP)..))]
    trials: u32,
    /// Epoch rows per stored trial.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..))]
    epochs_per_trial: u32,
    /// Clients polling GetSweep and GetStatus at once, each on its own connection.
    #[arg(long, default_value_t = 50)]
    pollers: u32,
    /// Seconds each polling phase lasts.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
    duration_secs: u64,
    /// Each poller's interval per phase (0: a tight loop).
    #[arg(long, value_delimiter = ',', default_value = "0,1000")]
    poll_intervals_ms: Vec<u64>,
    /// SubmitSweep calls of the 1,000-trial grid (the median is reported).
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..))]
    submits: u32,
    /// Epoch reports per ingestion run.
    #[arg(long, default_value_t = 20_000, value_parser = clap::value_parser!(u32).range(1..))]
    ingest_epochs: u32,
    /// Concurrent reporters per ingestion run (one per worker of a real daemon).
    #[arg(long, value_delimiter = ',', default_value = "1,8,64", value_parser = clap::value_parser!(u32).range(1..))]
    ingest_tasks: Vec<u32>,
    /// RenderCharts rounds per dashboard (the median is reported).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    chart_rounds: u32,
    /// Keep the filled store in FILE and reuse it on later runs.
    #[arg(long)]
    store_cache: Option<PathBuf>,
    /// Folder holding mnist/ (default: $CNND_DATA_DIR, else ../shared/data).
    #[arg(long, default_value_os_t = common::default_data_dir())]
    data_dir: PathBuf,
    /// Keep the daemon's state directory.
    #[arg(long)]
    keep_state: bool,
    /// Run against this PostgreSQL database (empty) instead of the SQLite file.
    #[arg(long)]
    postgres: Option<String>,
    /// Another cnnd binary (for before/after runs).
    #[arg(long)]
    daemon: Option<PathBuf>,
    /// Passed by `cargo bench` to `harness = false` targets.
    #[arg(long, hide = true)]
    bench: bool,
}

fn fmt_load(l: [f64; 3]) -> String {
    format!("{:.2} {:.2} {:.2}", l[0], l[1], l[2])
}

/// Latency statistics in milliseconds.
fn latency_stats(ms: &[f64]) -> Value {
    if ms.is_empty() {
        return json!(null);
    }
    let mut s = ms.to_vec();
    s.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let q = |p: f64| s[((s.len() as f64 * p).ceil() as usize).clamp(1, s.len()) - 1];
    json!({
        "n": s.len(),
        "min": s[0],
        "p50": q(0.50),
        "p90": q(0.90),
        "p99": q(0.99),
        "max": s[s.len() - 1],
        "mean": s.iter().sum::<f64>() / s.len() as f64,
    })
}

// ---------------------------------------------------------------------------------------
// Clients

type Client = cnnd_client::Client;

/// One client on its own connection, with the daemon's token (`STATE_DIR/token`).
async fn connect(url: &str, state_dir: &Path) -> Result<Client> {
    let token_file = cnnd_client::auth::token_path(state_dir);
    let client = cnnd_client::connect(&cnnd_client::ClientOptions {
        addr: url.to_string(),
        token_file: token_file.exists().then_some(token_file),
        connect_timeout: Some(Duration::from_secs(5)),
        ..Default::default()
    })
    .await?;
    Ok(client.max_decoding_message_size(256 << 20))
}

// ---------------------------------------------------------------------------------------
// The daemon

/// Waits until no trial is running and the worker is idle (at most `limit`).
async fn wait_worker_idle(client: &mut Client, daemon: &mut Daemon, limit: Duration) -> Result<()> {
    let t = Instant::now();
    loop {
        daemon.check_alive()?;
        let st = client.get_status(GetStatusRequest {}).await?.into_inner();
        if st.workers_idle >= 1 && st.running.is_empty() {
            return Ok(());
        }
        if t.elapsed() > limit {
            bail!(
                "the worker is not idle after {} s:\n{}",
                limit.as_secs(),
                daemon.log_tail()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

// ---------------------------------------------------------------------------------------
// Filling the store

/// A sweep request like the ones users send: `n` trials of MNIST, `epochs` epochs each.
/// `n` = 1000 is a 10 x 10 x 10 grid; other sizes draw `n` of 2,000 configurations.
fn sweep_request(name: &str, n: u32, epochs: u32, fixed_extra: Value) -> SweepRequest {
    let lr: Vec<Value> = (0..10)
        .map(|i| json!(1e-4 * 10f64.powf(i as f64 / 4.5)))
        .collect();
    let dropout: Vec<Value> = (0..10).map(|i| json!(i as f64 * 0.05)).collect();
    let units: Vec<Value> = (1..=10).map(|i| json!(i * 32)).collect();
    let mut space = Map::new();
    space.insert("learningRate".into(), Value::Array(lr));
    space.insert("dropout".into(), Value::Array(dropout));
    let mut fixed: Map<String, Value> = serde_json::from_value(json!({
        "epochs": epochs, "batchSize": 64, "kernelSize": 3
    }))
    .unwrap();
    if let Value::Object(m) = fixed_extra {
        fixed.extend(m);
    }
    let strategy;
    let mut num_trials = 0;
    if n == 100 {
        strategy = "grid";
        fixed.insert("units".into(), json!(128));
    } else if n == 1000 {
        strategy = "grid";
        space.insert("units".into(), Value::Array(units));
    } else {
        strategy = "random";
        num_trials = n;
        space.insert("units".into(), Value::Array(units));
        space.insert("head".into(), json!(["dense", "gap"]));
    }
    SweepRequest {
        name: name.into(),
        dataset: "mnist".into(),
        space,
        fixed,
        strategy: strategy.into(),
        num_trials,
        seed: 42,
        ..Default::default()
    }
}

/// Multi-row INSERT of `rows` rows of `cols` columns.
fn insert_sql(table_and_columns: &str, cols: usize, rows: usize) -> String {
    let one = format!("({})", vec!["?"; cols].join(", "));
    format!(
        "INSERT INTO {table_and_columns} VALUES {}",
        vec![one.as_str(); rows].join(", ")
    )
}

fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

/// Builds the store: sweeps of [1000, 100, 500, 500, ...] trials (`total` in all), every trial
/// succeeded with `epochs` epochs and the events the daemon would have logged. Returns
/// (sweep id of the 1000-trial sweep, of the 100-trial sweep, facts).
async fn populate(path: &Path, total: u32, epochs: u32) -> Result<(String, String, Value)> {
    let t0 = Instant::now();
    let store = Store::open(path).await?;
    let mut sizes = vec![BIG_SWEEP, CHART_SWEEP];
    let mut left = total - BIG_SWEEP - CHART_SWEEP;
    while left > 0 {
        let n = left.min(OTHER_SWEEP);
        sizes.push(n);
        left -= n;
    }
    let limits = SweepLimits { max_trials: 10_000 };
    let mut sweeps = Vec::new();
    for (i, n) in sizes.iter().enumerate() {
        let spec = sweep_request(&format!("stored-{i}-{n}"), *n, epochs, json!({}))
            .validate(limits, resolve_builtin)
            .map_err(|e| anyhow!("sweep {i}: {e}"))?;
        let id = format!("sw-bench{i:04}");
        let trial_ids = store.insert_sweep(&id, &spec, None, u32::MAX).await??;
        sweeps.push((id, trial_ids));
    }
    drop(store);
    eprintln!(
        "  {} sweeps, {total} trials inserted with Store::insert_sweep in {:.1} s",
        sweeps.len(),
        t0.elapsed().as_secs_f64()
    );

    let opts = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(path)
        .journal_mode(sqlx::sqlite::SqliteJournalMode::Wal)
        .synchronous(sqlx::sqlite::SqliteSynchronous::Normal);
    let mut conn = sqlx::SqliteConnection::connect_with(&opts).await?;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
    let base = SystemTime::now() - Duration::from_secs(30 * 24 * 3600);
    let epoch_cols = "epochs (trial_id, epoch, train_loss, train_accuracy, val_loss, val_accuracy, seconds, images_per_second, recorded_at)";
    let event_cols = "events (sweep_id, at, payload)";
    const CHUNK: usize = 100;
    let mut clock = base;
    let mut rows_epochs = 0u64;
    let mut rows_events = 0u64;
    let t1 = Instant::now();
    for (si, (sweep_id, trial_ids)) in sweeps.iter().enumerate() {
        let mut tx = conn.begin().await?;
        let mut best: Option<(String, f64)> = None;
        for (ti, trial_id) in trial_ids.iter().enumerate() {
            let worker = format!("cpu-{}", ti % 2);
            let started = clock;
            // Curves: accuracy rising towards a per-trial ceiling, loss falling.
            let ceiling: f64 = rng.gen_range(0.95..0.995);
            let speed: f64 = rng.gen_range(3.0..15.0);
            let mut epoch_rows = Vec::with_capacity(epochs as usize);
            let mut events: Vec<(String, String)> = Vec::with_capacity(epochs as usize + 2);
            events.push((
                rfc3339(clock),
                json!({"kind": "trial_started", "trial_id": trial_id, "worker": worker, "attempt": 1})
                    .to_string(),
            ));
            let mut best_epoch = (0u32, 0f64);
            for e in 1..=epochs {
                let secs: f64 = rng.gen_range(20.0..40.0);
                clock += Duration::from_secs_f64(secs);
                let x = 1.0 - (-(e as f64) / speed).exp();
                let val_acc = (ceiling * x + rng.gen_range(-0.004..0.004)).clamp(0.0, 1.0);
                let row = EpochRecord {
                    epoch: e,
                    train_loss: 2.3 * (1.0 - x) + 0.02 + rng.gen_range(0.0..0.01),
                    train_accuracy: (ceiling * x + 0.005).min(1.0),
                    val_loss: 2.3 * (1.0 - x) + 0.04 + rng.gen_range(0.0..0.02),
                    val_accuracy: val_acc,
                    seconds: secs,
                    images_per_second: 54_000.0 / secs,
                    learning_rate: 1e-3,
                };
                if val_acc > best_epoch.1 {
                    best_epoch = (e, val_acc);
                }
                events.push((
                    rfc3339(clock),
                    json!({"kind": "epoch_finished", "trial_id": trial_id, "epochs_planned": epochs, "metrics": row})
                        .to_string(),
                ));
                epoch_rows.push((row, rfc3339(clock)));
            }
            let test_acc = best_epoch.1 - rng.gen_range(0.0..0.003);
            let test_loss = 0.05 + (1.0 - test_acc);
            events.push((
                rfc3339(clock),
                json!({"kind": "trial_finished", "trial_id": trial_id, "status": "succeeded",
                       "test_accuracy": test_acc, "test_loss": test_loss, "error": null})
                .to_string(),
            ));
            if best.as_ref().is_none_or(|b| test_acc > b.1) {
                best = Some((trial_id.clone(), test_acc));
            }
            for chunk in epoch_rows.chunks(CHUNK) {
                let sql = insert_sql(epoch_cols, 9, chunk.len());
                let mut q = sqlx::query(&sql);
                for (r, at) in chunk {
                    q = q
                        .bind(trial_id)
                        .bind(r.epoch as i64)
                        .bind(r.train_loss)
                        .bind(r.train_accuracy)
                        .bind(r.val_loss)
                        .bind(r.val_accuracy)
                        .bind(r.seconds)
                        .bind(r.images_per_second)
                        .bind(at);
                }
                q.execute(&mut *tx).await?;
            }
            for chunk in events.chunks(CHUNK) {
                let sql = insert_sql(event_cols, 3, chunk.len());
                let mut q = sqlx::query(&sql);
                for (at, payload) in chunk {
                    q = q.bind(sweep_id).bind(at).bind(payload);
                }
                q.execute(&mut *tx).await?;
            }
            rows_epochs += epoch_rows.len() as u64;
            rows_events += events.len() as u64;
            let provenance = json!({"cnnd": "0.1.0", "libtorch": "2.11.0", "device": "cpu",
                                    "seed": "42", "data_sha256": "ba891046e6505d7a"})
            .to_string();
            sqlx::query(
                "UPDATE trials SET status = 'succeeded', worker = ?, generation = 1, attempts = 1,
                        parameter_count = ?, train_examples = 54000, val_examples = 6000, test_examples = 10000,
                        test_loss = ?, test_accuracy = ?, best_epoch = ?, weights_path = ?, ran_on = 'cpu',
                        started_at = ?, finished_at = ?, provenance = ? WHERE id = ?",
            )
            .bind(&worker)
            .bind(rng.gen_range(50_000i64..1_700_000))
            .bind(test_loss)
            .bind(test_acc)
            .bind(best_epoch.0 as i64)
            .bind(format!("/var/lib/cnnd/trials/{trial_id}/best.safetensors"))
            .bind(rfc3339(started))
            .bind(rfc3339(clock))
            .bind(provenance)
            .bind(trial_id)
            .execute(&mut *tx)
            .await?;
        }
        let (best_id, best_acc) = best.unwrap_or_default();
        sqlx::query("INSERT INTO events (sweep_id, at, payload) VALUES (?, ?, ?)")
            .bind(sweep_id)
            .bind(rfc3339(clock))
            .bind(
                json!({"kind": "sweep_finished", "status": "finished",
                       "best_trial_id": best_id, "best_test_accuracy": best_acc})
                .to_string(),
            )
            .execute(&mut *tx)
            .await?;
        sqlx::query("UPDATE sweeps SET status = 'finished', finished_at = ? WHERE id = ?")
            .bind(rfc3339(clock))
            .bind(sweep_id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        rows_events += 1;
        eprintln!(
            "  sweep {}/{} ({} trials) filled: {rows_epochs} epoch rows, {rows_events} events, {:.1} s (load {})",
            si + 1,
            sweeps.len(),
            trial_ids.len(),
            t1.elapsed().as_secs_f64(),
            fmt_load(loadavg())
        );
    }
    sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
        .execute(&mut conn)
        .await?;
    conn.close().await?;
    let bytes = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    let facts = json!({
        "sweeps": sweeps.len(),
        "trials": total,
        "epoch_rows": rows_epochs,
        "event_rows": rows_events,
        "file_bytes": bytes,
        "seconds": t0.elapsed().as_secs_f64(),
    });
    Ok((sweeps[0].0.clone(), sweeps[1].0.clone(), facts))
}

// ---------------------------------------------------------------------------------------
// Measurements against the daemon

async fn measure_submits(
    o: &Opts,
    client: &mut Client,
    daemon: &mut Daemon,
) -> Result<(Value, f64)> {
    let mut ms = Vec::new();
    let mut per = Vec::new();
    for i in 0..o.submits {
        // The sweep's trials should not train: it is paused right after the submit. The one
        // worker may lease its first trial in between; that trial is tiny (1 epoch on 200
        // training images) and is waited out before the next submit, so no training runs
        // while a submit is timed.
        let r = sweep_request(
            &format!("bench-submit-{i}"),
            BIG_SWEEP,
            1,
            json!({"trainLimit": 200, "testLimit": 200}),
        );
        let req = SubmitSweepRequest {
            name: r.name.clone(),
            dataset: r.dataset.clone(),
            space: Some(struct_from_json(&r.space)),
            fixed: Some(struct_from_json(&r.fixed)),
            strategy: r.strategy.clone(),
            seed: r.seed,
            ..Default::default()
        };
        let load = loadavg();
        let t = Instant::now();
        let resp = client
            .submit_sweep(req)
            .await
            .map_err(|e| anyhow!("SubmitSweep: {}", e.message()))?
            .into_inner();
        let elapsed = t.elapsed().as_secs_f64() * 1e3;
        client
            .pause_sweep(PauseSweepRequest {
                sweep_id: resp.sweep_id.clone(),
            })
            .await
            .map_err(|e| anyhow!("PauseSweep: {}", e.message()))?;
        if resp.trials_queued != BIG_SWEEP {
            bail!(
                "SubmitSweep queued {} trials, not {BIG_SWEEP}",
                resp.trials_queued
            );
        }
        eprintln!(
            "  submit {}: {elapsed:.1} ms ({} trials, load {})",
            i + 1,
            resp.trials_queued,
            fmt_load(load)
        );
        ms.push(elapsed);
        per.push(json!({"ms": elapsed, "sweep_id": resp.sweep_id, "load": load}));
        wait_worker_idle(client, daemon, Duration::from_secs(180)).await?;
    }
    let m = median(&ms);
    Ok((
        json!({"median_ms": m, "latency_ms": latency_stats(&ms), "submits": per}),
        m,
    ))
}

/// Unloaded service times: one client, calls one after another.
async fn measure_single(client: &mut Client, sweep_id: &str, n: u32) -> Result<Value> {
    let mut sweep_ms = Vec::new();
    let mut status_ms = Vec::new();
    let mut encode_ms = Vec::new();
    let mut decode_ms = Vec::new();
    let mut bytes = 0usize;
    for _ in 0..n {
        let t = Instant::now();
        let s = client
            .get_sweep(GetSweepRequest {
                sweep_id: sweep_id.into(),
                all_params: false,
            })
            .await?
            .into_inner();
        sweep_ms.push(t.elapsed().as_secs_f64() * 1e3);
        bytes = prost::Message::encoded_len(&s);
        if s.trials.len() != BIG_SWEEP as usize {
            bail!("GetSweep returned {} trials", s.trials.len());
        }
        // What protobuf costs on each side: encoding (the daemon) and decoding (the client).
        let t = Instant::now();
        let buf = prost::Message::encode_to_vec(&s);
        encode_ms.push(t.elapsed().as_secs_f64() * 1e3);
        let t = Instant::now();
        let back: cnnd_proto::Sweep = prost::Message::decode(buf.as_slice())?;
        decode_ms.push(t.elapsed().as_secs_f64() * 1e3);
        drop(back);
        let t = Instant::now();
        client.get_status(GetStatusRequest {}).await?;
        status_ms.push(t.elapsed().as_secs_f64() * 1e3);
    }
    Ok(json!({
        "get_sweep_ms": latency_stats(&sweep_ms),
        "get_status_ms": latency_stats(&status_ms),
        "get_sweep_response_bytes": bytes,
        "get_sweep_encode_ms": latency_stats(&encode_ms),
        "get_sweep_decode_ms": latency_stats(&decode_ms),
    }))
}

/// `pollers` clients, each on its own connection, call GetSweep then GetStatus in a loop
/// for `duration`, waiting `interval` after each pair (0: a tight loop).
async fn measure_polling(
    url: &str,
    state_dir: &Path,
    sweep_id: &str,
    pollers: u32,
    duration: Duration,
    interval: Duration,
) -> Result<Value> {
    let mut clients = Vec::new();
    for _ in 0..pollers {
        clients.push(connect(url, state_dir).await?);
    }
    let load_before = loadavg();
    let start = Instant::now() + Duration::from_millis(200);
    let end = start + duration;
    let mut handles = Vec::new();
    for (i, mut c) in clients.into_iter().enumerate() {
        let sweep_id = sweep_id.to_string();
        handles.push(tokio::spawn(async move {
            let mut sweep_ms = Vec::new();
            let mut status_ms = Vec::new();
            let mut errors = 0u32;
            // Spread the clients over the interval, as independent clients would be.
            let offset = if interval.is_zero() {
                Duration::ZERO
            } else {
                interval.mul_f64(i as f64 / pollers.max(1) as f64)
            };
            tokio::time::sleep_until((start + offset).into()).await;
            while Instant::now() < end {
                let t = Instant::now();
                match c
                    .get_sweep(GetSweepRequest {
                        sweep_id: sweep_id.clone(),
                        all_params: false,
                    })
                    .await
                {
                    Ok(_) => sweep_ms.push(t.elapsed().as_secs_f64() * 1e3),
                    Err(_) => errors += 1,
                }
                let t = Instant::now();
                match c.get_status(GetStatusRequest {}).await {
                    Ok(_) => status_ms.push(t.elapsed().as_secs_f64() * 1e3),
                    Err(_) => errors += 1,
                }
                if !interval.is_zero() {
                    tokio::time::sleep(interval).await;
                }
            }
            (sweep_ms, status_ms, errors)
        }));
    }
    let mut sweep_ms = Vec::new();
    let mut status_ms = Vec::new();
    let mut errors = 0;
    for h in handles {
        let (a, b, e) = h.await?;
        sweep_ms.extend(a);
        status_ms.extend(b);
        errors += e;
    }
    let wall = start.elapsed().as_secs_f64();
    Ok(json!({
        "pollers": pollers,
        "interval_ms": interval.as_millis() as u64,
        "duration_secs": duration.as_secs_f64(),
        "get_sweep_ms": latency_stats(&sweep_ms),
        "get_status_ms": latency_stats(&status_ms),
        "get_sweep_per_second": sweep_ms.len() as f64 / wall,
        "get_status_per_second": status_ms.len() as f64 / wall,
        "errors": errors,
        "load_before": load_before,
        "load_after": loadavg(),
    }))
}

async fn measure_charts(
    client: &mut Client,
    sweep_id: &str,
    dashboard: &str,
    rounds: u32,
) -> Result<Value> {
    let mut secs = Vec::new();
    let mut files = 0;
    let load = loadavg();
    for _ in 0..rounds {
        let t = Instant::now();
        let r = client
            .render_charts(RenderChartsRequest {
                sweep_id: sweep_id.into(),
                dashboard: dashboard.into(),
                include_bytes: false,
            })
            .await
            .map_err(|e| anyhow!("RenderCharts {dashboard}: {}", e.message()))?
            .into_inner();
        secs.push(t.elapsed().as_secs_f64());
        files = r.paths.len();
    }
    eprintln!(
        "  RenderCharts {dashboard}: {files} charts, median {:.2} s of {secs:?} (load {})",
        median(&secs),
        fmt_load(load)
    );
    Ok(
        json!({"dashboard": dashboard, "charts": files, "median_seconds": median(&secs), "seconds": secs, "load": load}),
    )
}

/// The store the daemon and the ingestion use: `--postgres`, else the SQLite file.
fn store_location(o: &Opts, state: &Path) -> PathBuf {
    match &o.postgres {
        Some(url) => PathBuf::from(url),
        None => state.join("cnnd.sqlite"),
    }
}

async fn run_daemon_phase(
    o: &Opts,
    state: &Path,
    big_sweep: &str,
    chart_sweep: &str,
) -> Result<Value> {
    let exe = match &o.daemon {
        Some(p) => p.clone(),
        None => daemon_binary()?,
    };
    let port = free_port()?;
    let listen = format!("127.0.0.1:{port}");
    let log = state.join("daemon.log");
    let logf = std::fs::File::create(&log)?;
    let spawned = Instant::now();
    // One CPU worker: the daemon refuses to run without a slot. No trial trains while
    // anything is measured (see measure_submits).
    let child = Command::new(&exe)
        .args([
            "--cpu-workers",
            "1",
            "--threads-per-worker",
            "1",
            "--data-dir",
            &o.data_dir.display().to_string(),
            "--state-dir",
            &state.display().to_string(),
            "--dashboards",
            &manifest_dir().join("dashboards").display().to_string(),
            "--listen",
            &listen,
            "--db",
            &store_location(o, state).display().to_string(),
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
        stop_grace: Duration::from_secs(40),
    };
    let url = format!("http://{listen}");
    let mut client = loop {
        daemon.check_alive()?;
        if spawned.elapsed() > Duration::from_secs(300) {
            bail!("the daemon did not answer in 300 s:\n{}", daemon.log_tail());
        }
        if let Ok(mut c) = connect(&url, state).await {
            if c.get_status(GetStatusRequest {}).await.is_ok() {
                break c;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let serving = spawned.elapsed().as_secs_f64();
    wait_worker_idle(&mut client, &mut daemon, Duration::from_secs(180)).await?;
    eprintln!(
        "daemon {} on {listen}: serving after {serving:.1} s, worker idle after {:.1} s",
        exe.display(),
        spawned.elapsed().as_secs_f64()
    );

    eprintln!("SubmitSweep, {BIG_SWEEP} trials, {} times:", o.submits);
    let (submit, _) = measure_submits(o, &mut client, &mut daemon).await?;

    eprintln!("GetSweep ({BIG_SWEEP} trials) and GetStatus, one client:");
    measure_single(&mut client, big_sweep, 5).await?; // warm-up
    let load = loadavg();
    let mut single = measure_single(&mut client, big_sweep, 30).await?;
    single["load"] = json!(load);
    eprintln!(
        "  GetSweep p50 {:.1} ms (protobuf encode {:.1} ms, decode {:.1} ms), GetStatus p50 {:.2} ms ({} bytes; load {})",
        single["get_sweep_ms"]["p50"].as_f64().unwrap_or(f64::NAN),
        single["get_sweep_encode_ms"]["p50"].as_f64().unwrap_or(f64::NAN),
        single["get_sweep_decode_ms"]["p50"].as_f64().unwrap_or(f64::NAN),
        single["get_status_ms"]["p50"].as_f64().unwrap_or(f64::NAN),
        single["get_sweep_response_bytes"],
        fmt_load(load)
    );

    let mut polling = Vec::new();
    for interval in &o.poll_intervals_ms {
        daemon.check_alive()?;
        let p = measure_polling(
            &url,
            state,
            big_sweep,
            o.pollers,
            Duration::from_secs(o.duration_secs),
            Duration::from_millis(*interval),
        )
        .await?;
        eprintln!(
            "  {} pollers, interval {interval} ms: GetSweep p50 {:.1} p99 {:.1} ms ({:.0}/s), GetStatus p50 {:.2} p99 {:.2} ms ({:.0}/s), {} errors (load {} -> {})",
            o.pollers,
            p["get_sweep_ms"]["p50"].as_f64().unwrap_or(f64::NAN),
            p["get_sweep_ms"]["p99"].as_f64().unwrap_or(f64::NAN),
            p["get_sweep_per_second"].as_f64().unwrap_or(f64::NAN),
            p["get_status_ms"]["p50"].as_f64().unwrap_or(f64::NAN),
            p["get_status_ms"]["p99"].as_f64().unwrap_or(f64::NAN),
            p["get_status_per_second"].as_f64().unwrap_or(f64::NAN),
            p["errors"],
            p["load_before"],
            p["load_after"],
        );
        polling.push(p);
    }

    eprintln!("RenderCharts of the {CHART_SWEEP}-trial sweep:");
    let mut charts = Vec::new();
    for board in ["default", "compare"] {
        charts.push(measure_charts(&mut client, chart_sweep, board, o.chart_rounds).await?);
    }
    daemon.check_alive()?;
    drop(client);
    drop(daemon);
    Ok(json!({
        "daemon": exe,
        "serving_seconds": serving,
        "submit": submit,
        "single_client": single,
        "polling": polling,
        "charts": charts,
    }))
}

// ---------------------------------------------------------------------------------------
// Ingestion

/// Epoch rows per second through `Scheduler::report_epoch` (what the ReportEpoch handler
/// calls; it runs `Store::record_epoch`, then decides early stopping) or through
/// `Store::record_epoch` alone, with `tasks` reporting tasks (one per worker of a real
/// daemon), each for its own leased trials, one report at a time, 100 epochs per trial (the
/// first with the trial's facts). Reports that arrive together share a transaction (group
/// commit, `store::ingest`), so the rate grows with the number of reporters.
async fn measure_ingest(
    store: &Store,
    scheduler: &Arc<Scheduler>,
    via_scheduler: bool,
    rows: u32,
    tasks: u32,
    tag: &str,
) -> Result<Value> {
    let per_trial = 100u32;
    let trials = rows.div_ceil(per_trial).max(tasks);
    let spec = sweep_request(&format!("bench-ingest-{tag}"), trials, per_trial, json!({}));
    let spec = spec
        .validate(SweepLimits { max_trials: 10_000 }, resolve_builtin)
        .map_err(|e| anyhow!("ingest sweep: {e}"))?;
    let sweep_id = format!("sw-ingest-{tag}");
    store
        .insert_sweep(&sweep_id, &spec, None, u32::MAX)
        .await??;
    let mut leases = Vec::new();
    for i in 0..trials {
        let (lease, _) = store
            .lease_next(&LeaseAsk::new(
                &format!("bench-{i}"),
                &["auto", "cpu"],
                "cpu",
            ))
            .await?
            .ok_or_else(|| anyhow!("nothing to lease"))?;
        if lease.sweep_id != sweep_id {
            bail!("leased {} of another sweep", lease.trial_id);
        }
        leases.push((lease.trial_id, lease.generation));
    }
    let mut per_task: Vec<Vec<(String, u64)>> = vec![Vec::new(); tasks as usize];
    for (i, l) in leases.into_iter().enumerate() {
        per_task[i % tasks as usize].push(l);
    }
    let load = loadavg();
    let t = Instant::now();
    let mut handles = Vec::new();
    for mine in per_task {
        let store = store.clone();
        let scheduler = scheduler.clone();
        handles.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut n = 0u32;
            for (trial_id, generation) in mine {
                for e in 1..=per_trial {
                    let row = EpochRecord {
                        epoch: e,
                        train_loss: 0.1,
                        train_accuracy: 0.97,
                        val_loss: 0.12,
                        val_accuracy: 0.96 + e as f64 * 1e-4,
                        seconds: 25.0,
                        images_per_second: 2100.0,
                        learning_rate: 1e-3,
                    };
                    let facts = (e == 1).then(|| TrialFacts {
                        parameter_count: 421_642,
                        train_examples: 54_000,
                        val_examples: 6_000,
                        test_examples: 10_000,
                        provenance: [("cnnd".to_string(), "0.1.0".to_string())].into(),
                        ..Default::default()
                    });
                    let t = Instant::now();
                    if via_scheduler {
                        scheduler
                            .report_epoch(&trial_id, generation, &row, facts.as_ref(), None)
                            .await?
                            .map_err(|e| anyhow!("report refused: {e}"))?;
                    } else {
                        store
                            .record_epoch(&trial_id, generation, &row, facts.as_ref(), None)
                            .await?
                            .map_err(|e| anyhow!("report refused: {e}"))?;
                    }
                    lat.push(t.elapsed().as_secs_f64() * 1e3);
                    n += 1;
                }
            }
            Ok::<_, anyhow::Error>((n, lat))
        }));
    }
    let mut n = 0;
    let mut lat = Vec::new();
    for h in handles {
        let (k, l) = h.await??;
        n += k;
        lat.extend(l);
    }
    let secs = t.elapsed().as_secs_f64();
    let rate = n as f64 / secs;
    eprintln!(
        "  {} x {tasks} task(s): {n} epoch rows in {secs:.2} s = {rate:.0} rows/s, report p50 {:.2} ms p99 {:.2} ms (load {})",
        if via_scheduler {
            "Scheduler::report_epoch"
        } else {
            "Store::record_epoch"
        },
        latency_stats(&lat)["p50"].as_f64().unwrap_or(f64::NAN),
        latency_stats(&lat)["p99"].as_f64().unwrap_or(f64::NAN),
        fmt_load(load)
    );
    Ok(json!({
        "path": if via_scheduler { "Scheduler::report_epoch" } else { "Store::record_epoch" },
        "tasks": tasks,
        "rows": n,
        "seconds": secs,
        "rows_per_second": rate,
        "report_ms": latency_stats(&lat),
        "load": load,
    }))
}

async fn run_ingest_phase(o: &Opts, state: &Path, big_sweep: &str) -> Result<(Value, Vec<Value>)> {
    let db = store_location(o, state);
    let store = Store::open(&db).await?;
    // On PostgreSQL a daemon writes as the leader, every write transaction checking its term
    // (`Store::fence`): so do these.
    let _leader = match &o.postgres {
        Some(url) => {
            let leader = cnnd::leadership::Campaign::connect(
                url,
                "control_plane bench".into(),
                Duration::from_secs(10),
            )
            .await?
            .lead(|_| {})
            .await?;
            store.fence(leader.term);
            Some(leader)
        }
        None => None,
    };
    let scheduler = Scheduler::new(
        store.clone(),
        SchedulerConfig {
            state_dir: state.to_path_buf(),
            db_path: db.clone(),
            ..Default::default()
        },
    )?;
    let reads = measure_store_reads(&store, big_sweep).await?;
    let mut out = Vec::new();
    for tasks in &o.ingest_tasks {
        for via_scheduler in [true, false] {
            let tag = format!("{}-{tasks}", if via_scheduler { "sched" } else { "store" });
            out.push(
                measure_ingest(
                    &store,
                    &scheduler,
                    via_scheduler,
                    o.ingest_epochs,
                    *tasks,
                    &tag,
                )
                .await?,
            );
        }
    }
    Ok((reads, out))
}

/// The store's share of GetSweep and GetStatus, in process (no gRPC, no protobuf).
async fn measure_store_reads(store: &Store, sweep_id: &str) -> Result<Value> {
    let mut trials_ms = Vec::new();
    let mut fresh_ms = Vec::new();
    let mut sweep_ms = Vec::new();
    let mut counts_ms = Vec::new();
    let load = loadavg();
    for i in 0..25 {
        // A write (here one that changes nothing) ends any cached answer.
        store.set_paused("sw-no-such-sweep", false).await?;
        let t = Instant::now();
        store.trials_of(sweep_id).await?;
        let f = t.elapsed().as_secs_f64() * 1e3;
        let t = Instant::now();
        store.sweep(sweep_id).await?;
        let a = t.elapsed().as_secs_f64() * 1e3;
        let t = Instant::now();
        let trials = store.trials_of(sweep_id).await?;
        let b = t.elapsed().as_secs_f64() * 1e3;
        let t = Instant::now();
        store.queue_counts().await?;
        let c = t.elapsed().as_secs_f64() * 1e3;
        if trials.len() != BIG_SWEEP as usize {
            bail!("trials_of returned {} trials", trials.len());
        }
        if i >= 5 {
            fresh_ms.push(f);
            sweep_ms.push(a);
            trials_ms.push(b);
            counts_ms.push(c);
        }
    }
    let r = json!({
        "sweep_ms": latency_stats(&sweep_ms),
        "trials_of_ms": latency_stats(&trials_ms),
        "trials_of_after_write_ms": latency_stats(&fresh_ms),
        "queue_counts_ms": latency_stats(&counts_ms),
        "load": load,
    });
    eprintln!(
        "  in process: Store::sweep p50 {:.2} ms, Store::trials_of ({BIG_SWEEP} trials) p50 {:.1} ms (right after a write {:.1} ms), Store::queue_counts p50 {:.2} ms (load {})",
        r["sweep_ms"]["p50"].as_f64().unwrap_or(f64::NAN),
        r["trials_of_ms"]["p50"].as_f64().unwrap_or(f64::NAN),
        r["trials_of_after_write_ms"]["p50"].as_f64().unwrap_or(f64::NAN),
        r["queue_counts_ms"]["p50"].as_f64().unwrap_or(f64::NAN),
        fmt_load(load)
    );
    Ok(r)
}

// ---------------------------------------------------------------------------------------

struct Line {
    what: String,
    value: f64,
    unit: &'static str,
    target: String,
    /// None: for information, no target.
    pass: Option<bool>,
    load: [f64; 3],
}

fn load_of(v: &Value) -> [f64; 3] {
    let a = v.as_array().cloned().unwrap_or_default();
    let g = |i: usize| a.get(i).and_then(|x| x.as_f64()).unwrap_or(f64::NAN);
    [g(0), g(1), g(2)]
}

fn summary(daemon: &Value, store_reads: &Value, ingest: &[Value]) -> Vec<Line> {
    let mut lines = Vec::new();
    let submit = &daemon["submit"];
    let sub_load = submit["submits"]
        .as_array()
        .and_then(|a| a.first())
        .map(|s| load_of(&s["load"]))
        .unwrap_or([f64::NAN; 3]);
    let m = submit["median_ms"].as_f64().unwrap_or(f64::NAN);
    lines.push(Line {
        what: format!("SubmitSweep {BIG_SWEEP} trials, median"),
        value: m,
        unit: "ms",
        target: format!("< {TARGET_SUBMIT_MS} ms"),
        pass: Some(m < TARGET_SUBMIT_MS),
        load: sub_load,
    });
    let single = &daemon["single_client"];
    for (key, name) in [
        ("get_sweep_ms", "GetSweep p50, 1 client, unloaded"),
        ("get_status_ms", "GetStatus p50, 1 client, unloaded"),
    ] {
        let v = single[key]["p50"].as_f64().unwrap_or(f64::NAN);
        lines.push(Line {
            what: name.into(),
            value: v,
            unit: "ms",
            target: "-".into(),
            pass: None,
            load: load_of(&single["load"]),
        });
    }
    for (key, name) in [
        ("trials_of_ms", "Store::trials_of p50, in process"),
        (
            "trials_of_after_write_ms",
            "Store::trials_of p50, in process, after a write",
        ),
        ("queue_counts_ms", "Store::queue_counts p50, in process"),
    ] {
        lines.push(Line {
            what: name.into(),
            value: store_reads[key]["p50"].as_f64().unwrap_or(f64::NAN),
            unit: "ms",
            target: "-".into(),
            pass: None,
            load: load_of(&store_reads["load"]),
        });
    }
    for p in daemon["polling"].as_array().cloned().unwrap_or_default() {
        let how = match p["interval_ms"].as_u64().unwrap_or(0) {
            0 => format!("{} pollers, tight loop", p["pollers"]),
            ms => format!("{} pollers, every {ms} ms", p["pollers"]),
        };
        for (key, name, target) in [
            ("get_sweep_ms", "GetSweep", TARGET_GET_SWEEP_P99_MS),
            ("get_status_ms", "GetStatus", TARGET_GET_STATUS_P99_MS),
        ] {
            for q in ["p50", "p99"] {
                let v = p[key][q].as_f64().unwrap_or(f64::NAN);
                lines.push(Line {
                    what: format!("{name} {q}, {how}"),
                    value: v,
                    unit: "ms",
                    target: if q == "p99" {
                        format!("< {target} ms")
                    } else {
                        "-".into()
                    },
                    pass: (q == "p99").then_some(v < target),
                    load: load_of(&p["load_after"]),
                });
            }
        }
    }
    for i in ingest {
        let v = i["rows_per_second"].as_f64().unwrap_or(f64::NAN);
        lines.push(Line {
            what: format!(
                "epoch ingestion, {}, {} task(s)",
                i["path"].as_str().unwrap_or(""),
                i["tasks"]
            ),
            value: v,
            unit: "rows/s",
            target: format!(">= {TARGET_INGEST_ROWS_PER_S}"),
            pass: Some(v >= TARGET_INGEST_ROWS_PER_S),
            load: load_of(&i["load"]),
        });
    }
    for c in daemon["charts"].as_array().cloned().unwrap_or_default() {
        let v = c["median_seconds"].as_f64().unwrap_or(f64::NAN);
        lines.push(Line {
            what: format!(
                "RenderCharts {CHART_SWEEP} trials, '{}' ({} charts), median",
                c["dashboard"].as_str().unwrap_or(""),
                c["charts"]
            ),
            value: v,
            unit: "s",
            target: format!("< {TARGET_CHARTS_S} s"),
            pass: Some(v < TARGET_CHARTS_S),
            load: load_of(&c["load"]),
        });
    }
    lines
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let o = <Opts as clap::Parser>::parse();
    let started_at = humantime::format_rfc3339_seconds(SystemTime::now()).to_string();
    let data_dir = o
        .data_dir
        .canonicalize()
        .unwrap_or_else(|_| o.data_dir.clone());
    let o = Opts { data_dir, ..o };
    let state_tmp = tempfile::Builder::new()
        .prefix("cnnd-bench-control-")
        .tempdir()?;
    let state = state_tmp.path().to_path_buf();
    let db = state.join("cnnd.sqlite");
    eprintln!(
        "control plane: {} trials x {} epochs in the store, {} pollers for {} s, state {} (load {})",
        o.trials,
        o.epochs_per_trial,
        o.pollers,
        o.duration_secs,
        state.display(),
        fmt_load(loadavg())
    );

    // The store: built, or copied from the cache.
    let cached = o.store_cache.as_ref().filter(|p| p.exists());
    let ids_file = |p: &Path| p.with_extension("json");
    let (big_sweep, chart_sweep, store_facts) = if let Some(cache) = cached {
        let t = Instant::now();
        std::fs::copy(cache, &db)?;
        let facts: Value = serde_json::from_str(&std::fs::read_to_string(ids_file(cache))?)?;
        if facts["trials"] != json!(o.trials)
            || facts["epochs_per_trial"] != json!(o.epochs_per_trial)
        {
            bail!(
                "{} holds {} trials x {} epochs; remove it or give other sizes",
                cache.display(),
                facts["trials"],
                facts["epochs_per_trial"]
            );
        }
        eprintln!(
            "store copied from {} in {:.1} s",
            cache.display(),
            t.elapsed().as_secs_f64()
        );
        (
            facts["big_sweep"].as_str().unwrap_or_default().to_string(),
            facts["chart_sweep"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
            facts,
        )
    } else {
        eprintln!("filling the store:");
        let (big, chart, mut facts) = populate(&db, o.trials, o.epochs_per_trial).await?;
        facts["big_sweep"] = json!(big);
        facts["chart_sweep"] = json!(chart);
        facts["epochs_per_trial"] = json!(o.epochs_per_trial);
        if let Some(cache) = &o.store_cache {
            std::fs::copy(&db, cache)?;
            std::fs::write(ids_file(cache), serde_json::to_string_pretty(&facts)?)?;
        }
        (big, chart, facts)
    };
    let mut store_facts = store_facts;
    if let Some(url) = &o.postgres {
        let t = Instant::now();
        let from = Store::open(&db).await?;
        let to = Store::open(Path::new(url)).await?;
        from.copy_into(&to, |table, done, total| {
            if done == total {
                eprintln!(
                    "  copied {table}: {total} rows ({:.0} s)",
                    t.elapsed().as_secs_f64()
                );
            }
        })
        .await?;
        store_facts["backend"] = json!("postgres");
        store_facts["copy_seconds"] = json!(t.elapsed().as_secs_f64());
        eprintln!(
            "store copied into PostgreSQL in {:.1} s",
            t.elapsed().as_secs_f64()
        );
    }
    eprintln!("store: {store_facts}");

    let daemon = run_daemon_phase(&o, &state, &big_sweep, &chart_sweep).await?;
    eprintln!(
        "epoch ingestion, {} rows per run, on the same store (daemon stopped):",
        o.ingest_epochs
    );
    let (store_reads, ingest) = run_ingest_phase(&o, &state, &big_sweep).await?;

    let lines = summary(&daemon, &store_reads, &ingest);
    println!();
    println!(
        "{:<58} {:>12} {:<7} {:<12} {:<5} load 1/5/15 min",
        "measurement", "value", "", "target", "pass"
    );
    for l in &lines {
        println!(
            "{:<58} {:>12.2} {:<7} {:<12} {:<5} {}",
            l.what,
            l.value,
            l.unit,
            l.target,
            match l.pass {
                Some(true) => "pass",
                Some(false) => "FAIL",
                None => "-",
            },
            fmt_load(l.load)
        );
    }
    let report = json!({
        "bench": "control_plane",
        "started_at": started_at,
        "machine": {
            "cpu_model": cpu_model(),
            "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        },
        "options": {
            "trials": o.trials,
            "epochs_per_trial": o.epochs_per_trial,
            "pollers": o.pollers,
            "duration_secs": o.duration_secs,
            "poll_intervals_ms": o.poll_intervals_ms,
            "submits": o.submits,
            "ingest_epochs": o.ingest_epochs,
            "ingest_tasks": o.ingest_tasks,
            "chart_rounds": o.chart_rounds,
        },
        "store": store_facts,
        "daemon": daemon,
        "store_reads": store_reads,
        "ingest": ingest,
        "summary": lines.iter().map(|l| json!({
            "measurement": l.what, "value": l.value, "unit": l.unit, "target": l.target,
            "pass": l.pass, "load": l.load,
        })).collect::<Vec<_>>(),
        "targets": {
            "submit_ms": TARGET_SUBMIT_MS,
            "get_sweep_p99_ms": TARGET_GET_SWEEP_P99_MS,
            "get_status_p99_ms": TARGET_GET_STATUS_P99_MS,
            "ingest_rows_per_second": TARGET_INGEST_ROWS_PER_S,
            "charts_seconds": TARGET_CHARTS_S,
        },
    });
    let out_dir = manifest_dir().join("target/bench");
    std::fs::create_dir_all(&out_dir)?;
    let path = out_dir.join("control_plane.json");
    std::fs::write(&path, serde_json::to_string_pretty(&report)? + "\n")?;
    println!("wrote {}", path.display());
    if o.keep_state {
        let kept = state_tmp.keep();
        eprintln!("state kept in {}", kept.display());
    }
    Ok(())
}
