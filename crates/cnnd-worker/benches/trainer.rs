//! Trainer benchmark: one training epoch of cnnd's trainer (`cnnd_worker::train::run_trial`,
//! in-process, tch / libtorch) against the PyTorch reference (`bench/torch_reference.py`, same
//! model, same loop, same libtorch) on MNIST, and optionally a Keras reference
//! (`bench/keras_reference.py`, `--keras`).
//!
//! Every measurement runs in a fresh process: ours re-invokes this binary with
//! `CNND_BENCH_TRAINER_CHILD` set (so `tch::set_num_threads` never leaks from one measurement
//! into the next), theirs runs the Python script. Measurements are interleaved (ours, theirs,
//! ours, theirs, ...; the order flips every other round) so drift of a shared machine hits
//! both sides. The figure compared is training images per second of the epoch's training
//! loop (validation excluded), as both sides report it.
//!
//! ```text
//! cargo bench --bench trainer -- [--threads 1,2] [--heads dense,gap] [--kernels 3,5]
//!     [--rounds N] [--train-limit N] [--batch-size 64] [--epochs 1] [--device cpu|cuda]
//!     [--precision fp32,bf16] [--torch-recipe default|best]
//!     [--data-dir DIR] [--keras] [--profile BATCHES]      (--help lists them)
//! ```
//!
//! `--precision` sets ours (`precision` of the trial); PyTorch runs the same arithmetic: a
//! bf16 cell is compared with PyTorch's best CPU recipe (channels-last + bf16 autocast), an
//! fp32 cell with PyTorch's default eager fp32, or with channels-last fp32 under
//! `--torch-recipe best`. Test accuracy of both sides is reported beside the speed.
//!
//! Results: a table on stdout and `target/bench/trainer.json`.
//!
//! `--profile BATCHES` instead times the phases of single training batches (batch selection,
//! forward, loss, backward, optimiser step, metrics) of ours (cnnd's model and optimiser, in a
//! child) and of PyTorch (`bench/profile_torch.py`), medians per batch, to see where a
//! difference comes from; results in `target/bench/trainer_profile.json`.

#[path = "../../../benches/common/mod.rs"]
mod common;

use common::{children_cpu_seconds, cpu_model, load1, manifest_dir, rusage_seconds};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{anyhow, bail, Context, Result};
use serde_json::{json, Value};

use cnnd_core::datasets::builtin as dataset_info;
use cnnd_core::epoch::EpochRecord;
use cnnd_core::sweep::{DenseUnits, Head, Precision, TrialParams};
use cnnd_worker::train::TrialInfo;

/// Set (to a JSON job) when this binary runs as the child that measures one epoch of ours.
const CHILD_ENV: &str = "CNND_BENCH_TRAINER_CHILD";
/// The child's result line on stdout starts with this.
const RESULT_MARK: &str = "CNND_BENCH_RESULT ";

/// `cargo bench --bench trainer -- [options]`.
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "trainer",
    about = "cnnd's trainer against the PyTorch reference, interleaved"
)]
struct Opts {
    /// Thread counts to measure.
    #[arg(long, value_delimiter = ',', default_value = "1,2", value_parser = clap::value_parser!(u32).range(1..))]
    threads: Vec<u32>,
    /// Heads to measure: dense (units 128, dropout 0.5) and/or gap (dropout 0.25).
    #[arg(long, value_delimiter = ',', default_value = "dense,gap", value_parser = parse_head)]
    heads: Vec<Head>,
    /// Kernel sizes to measure (odd).
    #[arg(long, value_delimiter = ',', default_value = "3,5", value_parser = parse_kernel)]
    kernels: Vec<u32>,
    /// Rounds; each round measures every configuration once per side.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    rounds: u32,
    /// Training examples (0: all 60,000 less the validation split).
    #[arg(long, default_value_t = 0)]
    train_limit: u32,
    /// Batch size of both sides.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..))]
    batch_size: u32,
    /// Epochs per run; the last one is compared (2 on a GPU: the first one warms up cuDNN).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    epochs: u32,
    /// `cpu` or `cuda` (data and model resident on the device on both sides).
    #[arg(long, default_value = "cpu", value_parser = ["cpu", "cuda"])]
    device: String,
    /// Folder holding mnist/ (default: $CNND_DATA_DIR, else ../shared/data).
    #[arg(long, default_value_os_t = common::default_data_dir())]
    data_dir: PathBuf,
    /// Precisions of ours to measure (fp32, bf16); bf16 cells run PyTorch with bf16 autocast.
    #[arg(long, value_delimiter = ',', default_value = "fp32", value_parser = parse_precision)]
    precision: Vec<Precision>,
    /// PyTorch's recipe for fp32 cells: `default` (eager, NCHW) or `best` (channels-last);
    /// bf16 cells always run channels-last + bf16 autocast.
    #[arg(long, default_value = "default", value_parser = ["default", "best"])]
    torch_recipe: String,
    /// Which sides run (`ours`, `pytorch`): one side alone, e.g. under
    /// `ONEDNN_VERBOSE=profile` piped into bench/onednn_breakdown.py.
    #[arg(long, value_delimiter = ',', default_value = "ours,pytorch", value_parser = ["ours", "pytorch"])]
    sides: Vec<String>,
    /// Also run the Keras reference (bench/keras_reference.py).
    #[arg(long)]
    keras: bool,
    /// Per-batch phase profile of this many batches instead of the epoch comparison.
    #[arg(long, default_value_t = 0)]
    profile: u32,
    /// Passed by `cargo bench` to `harness = false` targets.
    #[arg(long, hide = true)]
    bench: bool,
}

fn parse_head(s: &str) -> Result<Head, String> {
    match s {
        "dense" => Ok(Head::Dense),
        "gap" => Ok(Head::Gap),
        _ => Err(format!("'{s}': dense or gap")),
    }
}

fn parse_precision(s: &str) -> Result<Precision, String> {
    match s {
        "fp32" => Ok(Precision::Fp32),
        "bf16" => Ok(Precision::Bf16),
        _ => Err(format!("'{s}': fp32 or bf16")),
    }
}

fn parse_kernel(s: &str) -> Result<u32, String> {
    match s.parse::<u32>() {
        Ok(k) if k % 2 == 1 => Ok(k),
        _ => Err(format!("'{s}': an odd kernel size")),
    }
}

fn home() -> PathBuf {
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/root"))
}

fn cache_dir() -> PathBuf {
    match std::env::var_os("CNND_CACHE") {
        Some(d) if !d.is_empty() => PathBuf::from(d),
        _ => home().join(".cache/cnnd"),
    }
}

/// `$CNND_PYTHON`, else `$CNND_VENV/bin/python`, else the cached torch 2.11 venv.
fn torch_python() -> PathBuf {
    if let Some(p) = std::env::var_os("CNND_PYTHON").filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    if let Some(v) = std::env::var_os("CNND_VENV").filter(|p| !p.is_empty()) {
        return PathBuf::from(v).join("bin/python");
    }
    cache_dir().join("venv-torch-2.11.0/bin/python")
}

/// `$CNND_KERAS_PYTHON`, else the cached Keras venv (see bench/README.md).
fn keras_python() -> PathBuf {
    if let Some(p) = std::env::var_os("CNND_KERAS_PYTHON").filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    cache_dir().join("venv-keras/bin/python")
}

/// CPU seconds (user + system) of this process so far.
fn self_cpu_seconds() -> f64 {
    rusage_seconds(libc::RUSAGE_SELF)
}

/// The seed model with the head of a configuration: dense (units 128, dropout 0.5) or GAP
/// (dropout 0.25); 2 blocks of 32 then 64 filters, batch norm, ReLU, Adam 1e-3, `--batch-size`.
fn params(head: Head, kernel: u32, precision: Precision, o: &Opts) -> TrialParams {
    TrialParams {
        precision,
        kernel_size: kernel,
        head,
        units: DenseUnits(vec![128]),
        dropout: match head {
            Head::Dense => 0.5,
            Head::Gap => 0.25,
        },
        epochs: o.epochs,
        batch_size: o.batch_size,
        train_limit: o.train_limit,
        seed: 0,
        ..TrialParams::default()
    }
}

fn head_name(h: Head) -> &'static str {
    match h {
        Head::Dense => "dense",
        Head::Gap => "gap",
    }
}

fn config_name(p: &TrialParams) -> String {
    let model = match p.head {
        Head::Dense => format!("dense{} k{} do{}", p.units, p.kernel_size, p.dropout),
        Head::Gap => format!("gap k{} do{}", p.kernel_size, p.dropout),
    };
    match p.precision {
        Precision::Fp32 => model,
        other => format!("{model} {other}"),
    }
}

// ---------------------------------------------------------------------------------------
// Child: one epoch of ours, in this process.

fn child(job: &str) -> Result<()> {
    let job: Value = serde_json::from_str(job).context("child job")?;
    // RUST_LOG=cnnd=debug shows run_trial's phase timings on stderr.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .try_init();
    if job["mode"] == "profile" {
        return profile_child(&job);
    }
    let threads = job["threads"].as_u64().context("threads")? as i32;
    let data_dir = PathBuf::from(job["data_dir"].as_str().context("data_dir")?);
    let p: TrialParams = serde_json::from_value(job["params"].clone()).context("params")?;
    let device = match job["device"].as_str() {
        Some("cuda") if tch::Cuda::is_available() => tch::Device::Cuda(0),
        Some("cuda") => bail!("--device cuda: libtorch sees no CUDA device"),
        _ => tch::Device::Cpu,
    };
    let process_start = Instant::now();
    // As the worker does (src/worker.rs).
    tch::set_num_threads(threads);
    tch::set_num_interop_threads(1);
    let info = &dataset_info("mnist").context("mnist")?;

    let t = Instant::now();
    let cache = cnnd_worker::data::DataCache::new();
    let ds = cache.get(
        info,
        None,
        &data_dir,
        cnnd_worker::data::DecodeAs::of(&Default::default(), info),
    )?;
    let load_seconds = t.elapsed().as_secs_f64();

    let t = Instant::now();
    let prepared = cnnd_worker::data::prepare(&ds, &p);
    let prepare_seconds = t.elapsed().as_secs_f64();

    let dir = tempfile::tempdir()?;
    let weights = dir.path().join("best.safetensors");
    let mut reports = Vec::new();
    let cpu_start = self_cpu_seconds();
    let t = Instant::now();
    let mut on_epoch = |r: &EpochRecord, i: &TrialInfo| {
        reports.push((
            r.clone(),
            i.clone(),
            t.elapsed().as_secs_f64(),
            self_cpu_seconds() - cpu_start,
        ));
        true
    };
    let outcome = cnnd_worker::train::run_trial(
        &prepared,
        &p,
        info.channels as i64,
        info.classes as i64,
        device,
        &weights,
        &mut on_epoch,
    )
    .map_err(|e| anyhow!("run_trial: {e}"))?;
    let trial_seconds = t.elapsed().as_secs_f64();
    let (r, i, at_report, cpu_at_report) = reports.last().cloned().context("no epoch reported")?;
    let out = json!({
        "threads": tch::get_num_threads(),
        "images_per_second": r.images_per_second,
        "train_seconds": i.train_examples as f64 / r.images_per_second,
        "epoch_seconds": r.seconds,
        "train_loss": r.train_loss,
        "train_accuracy": r.train_accuracy,
        "val_accuracy": r.val_accuracy,
        "test_accuracy": outcome.test_accuracy,
        "parameters": i.parameter_count,
        "train_examples": i.train_examples,
        "load_seconds": load_seconds,
        "prepare_seconds": prepare_seconds,
        // run_trial from its call to the epoch report: model build + epoch (+ weights save).
        "until_report_seconds": at_report,
        // CPU seconds of this process over the same span, and their share of the
        // threads x wall seconds it had (well below 1: the machine was busy).
        "until_report_cpu_seconds": cpu_at_report,
        "until_report_cpu_share": cpu_at_report / (at_report * threads as f64),
        // the whole run_trial: + best-weights reload and the test evaluation.
        "trial_seconds": trial_seconds,
        "process_seconds": process_start.elapsed().as_secs_f64(),
    });
    println!("{RESULT_MARK}{out}");
    Ok(())
}

/// Per-batch phase timings of ours: the same step as run_trial's loop (cnnd's model and
/// optimiser), each phase timed on its own (CPU kernels are synchronous).
fn profile_child(job: &Value) -> Result<()> {
    use tch::{Kind, Reduction, Tensor};
    let threads = job["threads"].as_u64().context("threads")? as i32;
    let batches = job["batches"].as_u64().context("batches")? as usize;
    let warmup = job["warmup"].as_u64().unwrap_or(20) as usize;
    let data_dir = PathBuf::from(job["data_dir"].as_str().context("data_dir")?);
    let p: TrialParams = serde_json::from_value(job["params"].clone()).context("params")?;
    tch::set_num_threads(threads);
    tch::set_num_interop_threads(1);
    let info = &dataset_info("mnist").context("mnist")?;
    let ds = cnnd_worker::data::DataCache::new().get(
        info,
        None,
        &data_dir,
        cnnd_worker::data::DecodeAs::of(&Default::default(), info),
    )?;
    let (x, y) = (&ds.train.images, &ds.train.labels);
    tch::manual_seed(p.seed as i64);
    let vs = tch::nn::VarStore::new(tch::Device::Cpu);
    let mut net = cnnd_worker::model::build(&vs.root(), &p, 1, x.size()[2], info.classes as i64);
    if p.precision == Precision::Bf16 {
        net.compute_in(Kind::BFloat16);
    }
    cnnd_worker::model::use_channels_last(&vs)?; // as run_trial does on the CPU
    let mut opt =
        cnnd_worker::train::optim::Optim::new(&vs, cnnd_worker::train::optim::OptimConfig::of(&p))?;
    let n = x.size()[0];
    let batch = p.batch_size as i64;
    let perm = Tensor::randperm(n, (Kind::Int64, tch::Device::Cpu));
    let mut loss_sum = Tensor::zeros([], (Kind::Float, tch::Device::Cpu));
    let mut correct = Tensor::zeros([], (Kind::Int64, tch::Device::Cpu));
    let names = [
        "batch", "forward", "loss", "backward", "step", "metrics", "total",
    ];
    let mut phases: Vec<Vec<f64>> = vec![Vec::new(); names.len()];
    let n_batches = n / batch;
    for b in 0..(warmup + batches) {
        let start = (b as i64 % n_batches) * batch;
        let t0 = Instant::now();
        let idx = perm.narrow(0, start, batch);
        let xs = x.index_select(0, &idx);
        let ys = y.index_select(0, &idx);
        let t1 = Instant::now();
        let logits = net.f_forward_t(&xs, true)?;
        let t2 = Instant::now();
        let loss = logits.f_cross_entropy_loss::<Tensor>(&ys, None, Reduction::Mean, -100, 0.0)?;
        let t3 = Instant::now();
        let grads = Tensor::f_run_backward(&[&loss], opt.variables(), false, false)?;
        let t4 = Instant::now();
        opt.step_with(&grads)?;
        drop(grads);
        let t5 = Instant::now();
        let loss = loss.detach();
        // As run_trial accumulates them (out of place).
        loss_sum = loss_sum.f_add(&loss.f_mul_scalar(batch)?)?;
        correct = correct.f_add(
            &logits
                .detach()
                .argmax(-1, false)
                .eq_tensor(&ys)
                .sum(Kind::Int64),
        )?;
        let t6 = Instant::now();
        if b >= warmup {
            for (i, (a, z)) in [
                (t0, t1),
                (t1, t2),
                (t2, t3),
                (t3, t4),
                (t4, t5),
                (t5, t6),
                (t0, t6),
            ]
            .into_iter()
            .enumerate()
            {
                phases[i].push((z - a).as_secs_f64());
            }
        }
    }
    let mut out = serde_json::Map::new();
    for (name, v) in names.iter().zip(&phases) {
        out.insert(name.to_string(), json!(median(v)));
    }
    out.insert(
        "images_per_second".into(),
        json!(batch as f64 / median(&phases[6])),
    );
    out.insert("threads".into(), json!(tch::get_num_threads()));
    println!("{RESULT_MARK}{}", Value::Object(out));
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Parent: runs the children and the references, interleaved.

#[derive(Debug, Clone)]
struct Run {
    images_per_second: f64,
    /// Test accuracy of the run's best epoch.
    test_accuracy: f64,
    load_before: f64,
    load_after: f64,
    wall_seconds: f64,
    /// CPU seconds of the whole process (user + system).
    cpu_seconds: f64,
    detail: Value,
}

impl Run {
    fn to_json(&self) -> Value {
        json!({
            "images_per_second": self.images_per_second,
            "test_accuracy": self.test_accuracy,
            "load1_before": self.load_before,
            "load1_after": self.load_after,
            "process_wall_seconds": self.wall_seconds,
            "process_cpu_seconds": self.cpu_seconds,
            "detail": self.detail,
        })
    }
}

fn run_ours(p: &TrialParams, threads: u32, data_dir: &Path, device: &str) -> Result<Run> {
    let job = json!({"threads": threads, "data_dir": data_dir, "params": p, "device": device});
    let exe = std::env::current_exe()?;
    let load_before = load1();
    let cpu_before = children_cpu_seconds();
    let t = Instant::now();
    let out = Command::new(exe)
        .env(CHILD_ENV, job.to_string())
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .context("starting the child")?;
    let wall_seconds = t.elapsed().as_secs_f64();
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "ours ({}, {threads} threads) failed: {}\n{stdout}",
            config_name(p),
            out.status
        );
    }
    // Under ONEDNN_VERBOSE the child's primitive timings pass through, for
    // bench/onednn_breakdown.py.
    for l in stdout.lines().filter(|l| l.starts_with("onednn_verbose,")) {
        println!("{l}");
    }
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix(RESULT_MARK))
        .ok_or_else(|| anyhow!("ours printed no result:\n{stdout}"))?;
    let detail: Value = serde_json::from_str(line)?;
    Ok(Run {
        test_accuracy: detail["test_accuracy"].as_f64().unwrap_or(f64::NAN),
        images_per_second: detail["images_per_second"]
            .as_f64()
            .context("images_per_second")?,
        load_before,
        load_after: load1(),
        wall_seconds,
        cpu_seconds: children_cpu_seconds() - cpu_before,
        detail,
    })
}

/// The PyTorch switches for a cell: channels-last + bf16 autocast for bf16, channels-last for
/// fp32 under `--torch-recipe best`, nothing (PyTorch's default) otherwise.
/// (`keras`: the Keras script, which takes none of them.)
fn torch_recipe_args(p: &TrialParams, torch_recipe: &str) -> Vec<String> {
    let bf16 = p.precision == Precision::Bf16;
    let mut args = Vec::new();
    if torch_recipe == "keras" {
        return args;
    }
    if bf16 || torch_recipe == "best" {
        args.extend(["--channels-last".to_string(), "1".to_string()]);
    }
    if bf16 {
        args.extend(["--bf16".to_string(), "1".to_string()]);
    }
    args
}

/// Runs a reference script (one JSON line per epoch with images_per_second).
fn run_reference(
    python: &Path,
    script: &Path,
    p: &TrialParams,
    threads: u32,
    data_dir: &Path,
    device: &str,
    torch_recipe: &str,
) -> Result<Run> {
    let mut args: Vec<String> = vec![
        script.display().to_string(),
        "--data-dir".into(),
        data_dir.display().to_string(),
        "--kernel-size".into(),
        p.kernel_size.to_string(),
        "--head".into(),
        head_name(p.head).into(),
        "--dropout".into(),
        p.dropout.to_string(),
        "--units".into(),
        p.units.to_string(),
        "--base-filters".into(),
        p.base_filters.to_string(),
        "--blocks".into(),
        p.blocks.to_string(),
        "--batch-size".into(),
        p.batch_size.to_string(),
        "--learning-rate".into(),
        p.learning_rate.to_string(),
        "--epochs".into(),
        p.epochs.to_string(),
        "--threads".into(),
        threads.to_string(),
        "--train-limit".into(),
        p.train_limit.to_string(),
        "--seed".into(),
        p.seed.to_string(),
    ];
    if device != "cpu" {
        // The Keras script is CPU-only; it is not run with --device cuda.
        args.extend(["--device".into(), device.into()]);
    }
    args.extend(torch_recipe_args(p, torch_recipe));
    let load_before = load1();
    let cpu_before = children_cpu_seconds();
    let t = Instant::now();
    let out = Command::new(python)
        .args(&args)
        .env("PYTHONUNBUFFERED", "1")
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("starting {}", python.display()))?;
    let wall_seconds = t.elapsed().as_secs_f64();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        bail!(
            "{} {} failed: {}\n{stdout}\n{stderr}",
            python.display(),
            args.join(" "),
            out.status
        );
    }
    // Pass warnings on, without TensorFlow's start-up banner.
    for line in stderr.lines().filter(|l| {
        !l.contains("oneDNN custom operations")
            && !l.contains("absl::InitializeLog")
            && !l.trim().is_empty()
    }) {
        eprintln!("    {line}");
    }
    let lines: Vec<Value> = stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l.trim()).ok())
        .collect();
    let epoch = lines
        .iter()
        .rev()
        .find(|v| v.get("images_per_second").is_some())
        .ok_or_else(|| anyhow!("{} printed no epoch:\n{stdout}", script.display()))?;
    let test_accuracy = lines
        .iter()
        .rev()
        .find_map(|v| v.get("test_accuracy").and_then(Value::as_f64))
        .unwrap_or(f64::NAN);
    Ok(Run {
        test_accuracy,
        images_per_second: epoch["images_per_second"]
            .as_f64()
            .context("images_per_second")?,
        load_before,
        load_after: load1(),
        wall_seconds,
        cpu_seconds: children_cpu_seconds() - cpu_before,
        detail: json!({"lines": lines}),
    })
}

const PHASES: [&str; 7] = [
    "batch", "forward", "loss", "backward", "step", "metrics", "total",
];

/// `--profile N`: per-batch phase medians of ours and PyTorch for every configuration.
fn run_profile(o: &Opts, python: &Path, data_dir: &Path) -> Result<()> {
    let script = manifest_dir().join("bench/profile_torch.py");
    let exe = std::env::current_exe()?;
    let mut rows = Vec::new();
    println!(
        "{:<22} {:>3} {:<8} {}  {:>9}  load1",
        "config",
        "thr",
        "side",
        PHASES
            .iter()
            .map(|p| format!("{p:>9}"))
            .collect::<Vec<_>>()
            .join(""),
        "img/s"
    );
    for &threads in &o.threads {
        for &head in &o.heads {
            for &kernel in &o.kernels {
                let p = params(head, kernel, o.precision[0], o);
                let mut pair = Vec::new();
                for side in ["ours", "PyTorch"] {
                    let load_before = load1();
                    let out = if side == "ours" {
                        let job = json!({"mode": "profile", "threads": threads, "batches": o.profile, "warmup": 20, "data_dir": data_dir, "params": p});
                        Command::new(&exe)
                            .env(CHILD_ENV, job.to_string())
                            .stdin(Stdio::null())
                            .stderr(Stdio::inherit())
                            .output()?
                    } else {
                        Command::new(python)
                            .arg(&script)
                            .args(["--data-dir", &data_dir.display().to_string()])
                            .args([
                                "--kernel-size",
                                &kernel.to_string(),
                                "--head",
                                head_name(head),
                            ])
                            .args([
                                "--dropout",
                                &p.dropout.to_string(),
                                "--units",
                                &p.units.to_string(),
                            ])
                            .args([
                                "--batch-size",
                                &p.batch_size.to_string(),
                                "--threads",
                                &threads.to_string(),
                            ])
                            .args(["--batches", &o.profile.to_string(), "--warmup", "20"])
                            .args(torch_recipe_args(&p, &o.torch_recipe))
                            .stdin(Stdio::null())
                            .stderr(Stdio::inherit())
                            .output()?
                    };
                    let stdout = String::from_utf8_lossy(&out.stdout);
                    if !out.status.success() {
                        bail!("profile {side} failed: {}\n{stdout}", out.status);
                    }
                    let line = stdout
                        .lines()
                        .filter_map(|l| l.strip_prefix(RESULT_MARK).or(Some(l)))
                        .filter_map(|l| serde_json::from_str::<Value>(l.trim()).ok())
                        .next_back()
                        .ok_or_else(|| anyhow!("profile {side} printed nothing:\n{stdout}"))?;
                    println!(
                        "{:<22} {:>3} {:<8} {}  {:>9.0}  {:.2}",
                        config_name(&p),
                        threads,
                        side,
                        PHASES
                            .iter()
                            .map(|k| format!(
                                "{:>8.2}m",
                                line[*k].as_f64().unwrap_or(f64::NAN) * 1e3
                            ))
                            .collect::<Vec<_>>()
                            .join(""),
                        line["images_per_second"].as_f64().unwrap_or(f64::NAN),
                        load_before
                    );
                    pair.push(json!({"side": side, "seconds_per_batch": line, "load1_before": load_before}));
                }
                rows.push(json!({"config": config_name(&p), "threads": threads, "runs": pair}));
            }
        }
    }
    println!(
        "(median milliseconds per batch of {} after 20 warm-up batches)",
        o.batch_size
    );
    let out_dir = manifest_dir().join("target/bench");
    std::fs::create_dir_all(&out_dir)?;
    let path = out_dir.join("trainer_profile.json");
    let report = json!({
        "bench": "trainer --profile",
        "batches": o.profile,
        "machine": {"cpu_model": cpu_model(), "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0)},
        "results": rows,
    });
    std::fs::write(&path, serde_json::to_string_pretty(&report)? + "\n")?;
    println!("wrote {}", path.display());
    Ok(())
}

fn median(v: &[f64]) -> f64 {
    let mut v: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

struct Cell {
    params: TrialParams,
    threads: u32,
    ours: Vec<Run>,
    torch: Vec<Run>,
    keras: Vec<Run>,
}

fn ips(runs: &[Run]) -> f64 {
    median(&runs.iter().map(|r| r.images_per_second).collect::<Vec<_>>())
}

/// The fastest run: on a shared machine the least disturbed one.
fn best(runs: &[Run]) -> f64 {
    runs.iter()
        .map(|r| r.images_per_second)
        .filter(|x| x.is_finite())
        .fold(f64::NAN, f64::max)
}

fn loads(runs: &[Run]) -> String {
    runs.iter()
        .map(|r| format!("{:.2}", r.load_before))
        .collect::<Vec<_>>()
        .join(",")
}

/// CPU seconds / (wall seconds x threads) of each run's whole process: well below 1 means
/// the run did not get the cores it asked for (busy machine), or its threads idled.
fn shares(runs: &[Run], threads: u32) -> String {
    runs.iter()
        .map(|r| format!("{:.2}", r.cpu_seconds / (r.wall_seconds * threads as f64)))
        .collect::<Vec<_>>()
        .join(",")
}

fn main() -> Result<()> {
    if let Ok(job) = std::env::var(CHILD_ENV) {
        return child(&job);
    }
    let o = <Opts as clap::Parser>::parse();
    if o.keras && o.device != "cpu" {
        bail!(
            "--keras runs on the CPU only; leave it out with --device {}",
            o.device
        );
    }
    let info = &dataset_info("mnist").context("mnist")?;
    if !o.data_dir.join("mnist").is_dir()
        && !o.data_dir.join("train-images-idx3-ubyte.gz").exists()
        && !o.data_dir.join("train-images-idx3-ubyte").exists()
    {
        bail!(
            "no MNIST under {} (set --data-dir or CNND_DATA_DIR)",
            o.data_dir.display()
        );
    }
    cnnd_worker::data::find_file(info, &o.data_dir, "train-images-idx3-ubyte")?;
    let data_dir = o
        .data_dir
        .canonicalize()
        .unwrap_or_else(|_| o.data_dir.clone());
    let python = torch_python();
    if !python.exists() {
        bail!(
            "{} not found: run scripts/setup.sh (or set CNND_PYTHON)",
            python.display()
        );
    }
    let script = manifest_dir().join("bench/torch_reference.py");
    let keras_py = keras_python();
    let keras_script = manifest_dir().join("bench/keras_reference.py");
    if o.keras && !keras_py.exists() {
        bail!(
            "--keras: {} not found: see bench/README.md (or set CNND_KERAS_PYTHON)",
            keras_py.display()
        );
    }

    if o.profile > 0 {
        if o.device != "cpu" {
            bail!("--profile times CPU phases only; leave out --device");
        }
        return run_profile(&o, &python, &data_dir);
    }

    let mut cells: Vec<Cell> = Vec::new();
    for &threads in &o.threads {
        for &head in &o.heads {
            for &kernel in &o.kernels {
                for &precision in &o.precision {
                    cells.push(Cell {
                        params: params(head, kernel, precision, &o),
                        threads,
                        ours: vec![],
                        torch: vec![],
                        keras: vec![],
                    });
                }
            }
        }
    }
    let started_at = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
    eprintln!(
        "trainer bench: {} configurations x {} rounds, train limit {} (0: all), data {}, load {:.2}",
        cells.len(),
        o.rounds,
        o.train_limit,
        data_dir.display(),
        load1()
    );
    let bench_start = Instant::now();
    for round in 0..o.rounds {
        for cell in cells.iter_mut() {
            let name = config_name(&cell.params);
            // Flip the order every other round so that neither side always goes first.
            let ours_first = round % 2 == 0;
            for side in 0..2 {
                let ours_turn = (side == 0) == ours_first;
                if !o
                    .sides
                    .iter()
                    .any(|s| s == if ours_turn { "ours" } else { "pytorch" })
                {
                    continue;
                }
                if ours_turn {
                    let r = run_ours(&cell.params, cell.threads, &data_dir, &o.device)?;
                    eprintln!(
                        "  round {} {name:<27} {}t ours    {:>7.0} img/s, test {:.4}  (load {:.2} -> {:.2}, process {:.1} s, {:.1} CPU s)",
                        round + 1,
                        cell.threads,
                        r.images_per_second,
                        r.test_accuracy,
                        r.load_before,
                        r.load_after,
                        r.wall_seconds,
                        r.cpu_seconds
                    );
                    cell.ours.push(r);
                } else {
                    let r = run_reference(
                        &python,
                        &script,
                        &cell.params,
                        cell.threads,
                        &data_dir,
                        &o.device,
                        &o.torch_recipe,
                    )?;
                    eprintln!(
                        "  round {} {name:<27} {}t PyTorch {:>7.0} img/s, test {:.4}  (load {:.2} -> {:.2}, process {:.1} s, {:.1} CPU s)",
                        round + 1,
                        cell.threads,
                        r.images_per_second,
                        r.test_accuracy,
                        r.load_before,
                        r.load_after,
                        r.wall_seconds,
                        r.cpu_seconds
                    );
                    cell.torch.push(r);
                }
            }
            if o.keras {
                let r = run_reference(
                    &keras_py,
                    &keras_script,
                    &cell.params,
                    cell.threads,
                    &data_dir,
                    "cpu",
                    "keras",
                )?;
                eprintln!(
                    "  round {} {name:<22} {}t Keras   {:>7.0} img/s  (load {:.2} -> {:.2}, process {:.1} s, {:.1} CPU s)",
                    round + 1,
                    cell.threads,
                    r.images_per_second,
                    r.load_before,
                    r.load_after,
                    r.wall_seconds,
                    r.cpu_seconds
                );
                cell.keras.push(r);
            }
        }
    }

    // The table.
    println!();
    let mut header = format!(
        "{:<27} {:>7} {:>11} {:>13} {:>14} {:>16}",
        "config", "threads", "ours img/s", "PyTorch img/s", "ours/PyTorch", "test acc o | P"
    );
    if o.keras {
        header.push_str(&format!(" {:>11} {:>12}", "Keras img/s", "ours/Keras"));
    }
    if o.rounds > 1 {
        header.push_str(&format!(
            " {:>10} {:>12} {:>10}",
            "ours best", "PyTorch best", "best ratio"
        ));
    }
    header.push_str("  load1 before (ours | PyTorch)  CPU share (ours | PyTorch)");
    println!("{header}");
    println!("{}", "-".repeat(header.len()));
    let mut results = Vec::new();
    for c in &cells {
        let (ours, torch, keras) = (ips(&c.ours), ips(&c.torch), ips(&c.keras));
        let accuracy =
            |runs: &[Run]| median(&runs.iter().map(|r| r.test_accuracy).collect::<Vec<_>>());
        let (ours_accuracy, torch_accuracy) = (accuracy(&c.ours), accuracy(&c.torch));
        let mut line = format!(
            "{:<27} {:>7} {:>11.0} {:>13.0} {:>14.3} {:>16}",
            config_name(&c.params),
            c.threads,
            ours,
            torch,
            ours / torch,
            format!("{ours_accuracy:.4} | {torch_accuracy:.4}")
        );
        if o.keras {
            line.push_str(&format!(" {:>11.0} {:>12.3}", keras, ours / keras));
        }
        let (ours_best, torch_best) = (best(&c.ours), best(&c.torch));
        if o.rounds > 1 {
            line.push_str(&format!(
                " {:>10.0} {:>12.0} {:>10.3}",
                ours_best,
                torch_best,
                ours_best / torch_best
            ));
        }
        let load_cell = format!("{} | {}", loads(&c.ours), loads(&c.torch));
        let share_cell = format!(
            "{} | {}",
            shares(&c.ours, c.threads),
            shares(&c.torch, c.threads)
        );
        line.push_str(&format!("  {load_cell:<29}  {share_cell}"));
        println!("{line}");
        let mut r = json!({
            "config": config_name(&c.params),
            "head": head_name(c.params.head),
            "kernel_size": c.params.kernel_size,
            "units": c.params.units,
            "dropout": c.params.dropout,
            "threads": c.threads,
            "precision": c.params.precision.to_string(),
            "pytorch_recipe": match (c.params.precision, o.torch_recipe.as_str()) {
                (Precision::Bf16, _) => "channels-last + bf16 autocast",
                (_, "best") => "channels-last fp32",
                _ => "eager fp32 (default)",
            },
            "ours_test_accuracy": ours_accuracy,
            "pytorch_test_accuracy": torch_accuracy,
            "ours_images_per_second": ours,
            "pytorch_images_per_second": torch,
            "ratio_ours_over_pytorch": ours / torch,
            "ours_best_images_per_second": ours_best,
            "pytorch_best_images_per_second": torch_best,
            "ratio_best_ours_over_pytorch": ours_best / torch_best,
            "ours": c.ours.iter().map(Run::to_json).collect::<Vec<_>>(),
            "pytorch": c.torch.iter().map(Run::to_json).collect::<Vec<_>>(),
        });
        if o.keras {
            r["keras_images_per_second"] = json!(keras);
            r["ratio_ours_over_keras"] = json!(ours / keras);
            r["keras"] = json!(c.keras.iter().map(Run::to_json).collect::<Vec<_>>());
        }
        results.push(r);
    }
    println!("(img/s: median over rounds of training images / seconds of the epoch's training loop, validation excluded;");
    if o.rounds > 1 {
        println!(" best: the fastest round, i.e. the least disturbed on a shared machine;");
    }
    println!(" CPU share: process CPU seconds / (wall seconds x threads); well below 1, the run was starved or idled)");

    let report = json!({
        "bench": "trainer",
        "started_at": started_at,
        "seconds": bench_start.elapsed().as_secs_f64(),
        "machine": {
            "cpu_model": cpu_model(),
            "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
            "load1_at_end": load1(),
        },
        "libtorch": cnnd_worker::LIBTORCH_VERSION,
        "python": python,
        "options": {
            "threads": o.threads,
            "heads": o.heads.iter().map(|h| head_name(*h)).collect::<Vec<_>>(),
            "kernels": o.kernels,
            "rounds": o.rounds,
            "train_limit": o.train_limit,
            "batch_size": o.batch_size,
            "epochs": o.epochs,
            "device": o.device,
            "precision": o.precision.iter().map(|p| p.to_string()).collect::<Vec<_>>(),
            "torch_recipe": o.torch_recipe,
            "data_dir": data_dir,
            "keras": o.keras,
        },
        "results": results,
    });
    let out_dir = manifest_dir().join("target/bench");
    std::fs::create_dir_all(&out_dir)?;
    let path = out_dir.join("trainer.json");
    std::fs::write(&path, serde_json::to_string_pretty(&report)? + "\n")?;
    println!("wrote {}", path.display());
    Ok(())
}
