//! Integration tests of the training side on real MNIST (CNND_DATA_DIR, default
//! /work/shared/data). Tiny trainings, one thread.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

use cnnd_core::data_preview::{AUGMENTED_DRAWS, SAMPLES_PER_CLASS};
use cnnd_core::datasets::builtin as dataset_info;
use cnnd_core::epoch::EpochRecord;
use cnnd_core::sweep::{
    Activation, ConvBias, DenseUnits, FillMode, Head, InputSize, LrSchedule, Optimizer, Padding,
    Pooling, Precision, TrialParams, WeightInit,
};
use cnnd_worker::data::{self, DataCache, Prepared};
use cnnd_worker::train::{
    batches_per_epoch, decode_progress, read_checkpoint_meta, run_trial, run_trial_with,
    TrainError, TrainOutcome, TrialControl, TrialInfo,
};
use tch::Device;

fn data_dir() -> PathBuf {
    PathBuf::from(
        std::env::var("CNND_DATA_DIR")
            .unwrap_or_else(|_| concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/data").into()),
    )
}

/// Serialises the tests that train: libtorch's random generator and thread pool are global
/// to the process, and the reproducibility tests compare numbers across runs.
fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

fn small(p: &TrialParams) -> Prepared {
    tch::set_num_threads(1);
    let info = &dataset_info("mnist").unwrap();
    let cache = DataCache::new();
    let ds = cache
        .get(info, None, &data_dir(), data::DecodeAs::of(p, info))
        .expect("MNIST (set CNND_DATA_DIR)");
    data::prepare(&ds, p)
}

#[test]
fn loads_full_mnist_once() {
    tch::set_num_threads(1);
    let info = &dataset_info("mnist").unwrap();
    let cache = DataCache::new();
    let t = std::time::Instant::now();
    let a = cache
        .get(
            info,
            None,
            &data_dir(),
            cnnd_worker::data::DecodeAs::of(&TrialParams::default(), info),
        )
        .unwrap();
    eprintln!("full MNIST loaded in {:.3} s", t.elapsed().as_secs_f64());
    assert_eq!(a.train.images.size(), [60_000, 1, 28, 28]);
    assert_eq!(a.train.labels.size(), [60_000]);
    assert_eq!(a.test.as_ref().unwrap().images.size(), [10_000, 1, 28, 28]);
    let max = a.train.images.max().double_value(&[]);
    let min = a.train.images.min().double_value(&[]);
    assert!(min == 0.0 && max == 1.0, "{min}..{max}");
    // The first training labels of MNIST are 5 0 4 1 9.
    let first: Vec<i64> = Vec::try_from(&a.train.labels.narrow(0, 0, 5)).unwrap();
    assert_eq!(first, [5, 0, 4, 1, 9]);
    let b = cache
        .get(
            info,
            None,
            &data_dir(),
            cnnd_worker::data::DecodeAs::of(&TrialParams::default(), info),
        )
        .unwrap();
    assert!(std::sync::Arc::ptr_eq(&a, &b), "cached");
}

#[test]
fn corrupt_and_truncated_files_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let info = &dataset_info("mnist").unwrap();
    let src = data_dir().join("mnist");
    let folder = dir.path().join("mnist");
    std::fs::create_dir(&folder).unwrap();
    for f in [
        "train-labels-idx1-ubyte.gz",
        "t10k-images-idx3-ubyte.gz",
        "t10k-labels-idx1-ubyte.gz",
    ] {
        std::fs::copy(src.join(f), folder.join(f)).unwrap();
    }
    // A truncated gzip stream.
    let gz = std::fs::read(src.join("train-images-idx3-ubyte.gz")).unwrap();
    let bad = folder.join("train-images-idx3-ubyte.gz");
    std::fs::write(&bad, &gz[..gz.len() / 2]).unwrap();
    let e = format!(
        "{:#}",
        data::load(
            info,
            None,
            dir.path(),
            data::DecodeAs::of(&TrialParams::default(), info)
        )
        .unwrap_err()
    );
    assert!(
        e.contains(&bad.display().to_string()) && e.contains("gzip"),
        "{e}"
    );
    // A valid gzip of a truncated IDX file (uncompressed name this time).
    std::fs::remove_file(&bad).unwrap();
    let raw = data::read_maybe_gz(&src.join("train-images-idx3-ubyte.gz")).unwrap();
    let bad = folder.join("train-images-idx3-ubyte");
    std::fs::write(&bad, &raw[..raw.len() - 100]).unwrap();
    let e = format!(
        "{:#}",
        data::load(
            info,
            None,
            dir.path(),
            data::DecodeAs::of(&TrialParams::default(), info)
        )
        .unwrap_err()
    );
    assert!(
        e.contains(&bad.display().to_string()) && e.contains("truncated"),
        "{e}"
    );
    // Missing: every path named.
    std::fs::remove_file(&bad).unwrap();
    let e = format!(
        "{:#}",
        data::load(
            info,
            None,
            dir.path(),
            data::DecodeAs::of(&TrialParams::default(), info)
        )
        .unwrap_err()
    );
    assert!(e.matches("train-images-idx3-ubyte").count() >= 5, "{e}");
    assert!(e.contains("CNND_DATA_DIR"), "{e}");
}

#[test]
fn one_epoch_of_the_seed_model_learns_mnist() {
    let _serial = serial();
    // Batch 32: with the default 64 one epoch is only 29 steps, and the PyTorch reference of
    // the same model reaches 79-84% there (seeds 0-2); 57 steps give 88-90%.
    let p = TrialParams {
        epochs: 1,
        batch_size: 32,
        train_limit: 2000,
        test_limit: 500,
        ..TrialParams::default()
    };
    let prepared = small(&p);
    assert_eq!(
        (
            prepared.train.len(),
            prepared.val.len(),
            prepared.test.len()
        ),
        (1800, 200, 500)
    );
    let dir = tempfile::tempdir().unwrap();
    let weights = dir.path().join("w.safetensors");
    let mut reports: Vec<(EpochRecord, TrialInfo)> = Vec::new();
    let out = run_trial_with(
        &prepared,
        &p,
        1,
        10,
        Device::Cpu,
        &weights,
        &TrialControl::default(),
        &mut |r, i| {
            reports.push((r.clone(), i.clone()));
            true
        },
    )
    .unwrap();
    eprintln!("{reports:?}\n{out:?}");
    assert!(
        out.test_accuracy > 0.85,
        "test accuracy {}",
        out.test_accuracy
    );
    assert_eq!(out.best_epoch, 1);
    assert!(!out.stopped);
    assert_eq!(out.parameter_count, 421_738);
    assert_eq!(reports.len(), 1);
    let (r, i) = &reports[0];
    assert_eq!(r.epoch, 1);
    assert_eq!(
        (i.train_examples, i.val_examples, i.test_examples),
        (1800, 200, 500)
    );
    assert!(r.images_per_second > 0.0 && r.seconds > 0.0);
    assert!(r.train_loss.is_finite() && r.val_accuracy > 0.5);
    assert!(weights.is_file());
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names.len(), 1, "no temporary file left: {names:?}");
}

/// The seed notebook's digit model as Keras builds it (valid padding, biased convolutions,
/// Glorot weights, Adam's epsilon 1e-7; Keras counts 225,418 parameters, 192 of them batch
/// norm's moving statistics) learns as the seed model does; and the other layer options
/// (a kernel and filters per block, strides, average pooling, two hidden layers, leaky
/// ReLU, ReLU6) train in fp32 and bf16 without a hitch.
#[test]
fn the_notebook_s_keras_model_learns_mnist() {
    let _serial = serial();
    let notebook = TrialParams {
        filters: vec![32, 64],
        padding: Padding::Valid,
        conv_bias: ConvBias::Always,
        weight_init: WeightInit::GlorotUniform,
        adam_epsilon: 1e-7,
        epochs: 1,
        batch_size: 32,
        train_limit: 2000,
        test_limit: 500,
        ..TrialParams::default()
    };
    let prepared = small(&notebook);
    let dir = tempfile::tempdir().unwrap();
    let train = |p: &TrialParams, file: &str| {
        let (out, epochs) = run_with(
            &prepared,
            p,
            &dir.path().join(file),
            &TrialControl::default(),
            |_| true,
        );
        (out.unwrap(), epochs)
    };
    let (out, _) = train(&notebook, "n.safetensors");
    assert!(
        out.test_accuracy > 0.85,
        "test accuracy {}",
        out.test_accuracy
    );
    assert_eq!(out.parameter_count, 225_226);

    for (activation, precision) in [
        (Activation::LeakyRelu, Precision::Fp32),
        (Activation::Relu6, Precision::Bf16),
    ] {
        let p = TrialParams {
            kernel_sizes: vec![5, 3],
            filters: vec![16, 24],
            strides: 2,
            pooling: Pooling::Avg,
            pool_size: 1,
            units: DenseUnits(vec![64, 32]),
            activation,
            leaky_slope: 0.2,
            precision,
            ..notebook.clone()
        };
        let (out, epochs) = train(&p, "v.safetensors");
        assert!(
            epochs[0].train_loss.is_finite(),
            "{activation:?}: {epochs:?}"
        );
        // One epoch of 57 steps: well above the 10% of chance is what is asked here.
        assert!(
            out.test_accuracy > 0.3,
            "{activation:?}: test accuracy {}",
            out.test_accuracy
        );
    }
}

#[test]
fn stopping_keeps_the_best_epoch_and_is_reproducible() {
    let _serial = serial();
    let p = TrialParams {
        epochs: 5,
        train_limit: 600,
        test_limit: 200,
        head: Head::Gap,
        base_filters: 8,
        seed: 11,
        ..TrialParams::default()
    };
    let prepared = small(&p);
    let dir = tempfile::tempdir().unwrap();
    let run = |name: &str| {
        let mut seen = Vec::new();
        let out = run_trial_with(
            &prepared,
            &p,
            1,
            10,
            Device::Cpu,
            &dir.path().join(name),
            &TrialControl::default(),
            &mut |r, _| {
                seen.push(r.clone());
                r.epoch < 2
            },
        )
        .unwrap();
        (out, seen)
    };
    let (a, seen_a) = run("a.ot");
    let (b, seen_b) = run("b.ot");
    assert!(a.stopped);
    assert_eq!(seen_a.len(), 2);
    assert!(a.best_epoch <= 2);
    let best = seen_a
        .iter()
        .map(|r| r.val_accuracy)
        .fold(f64::MIN, f64::max);
    assert_eq!(seen_a[a.best_epoch as usize - 1].val_accuracy, best);
    // Same seed, same numbers.
    let strip = |v: &[EpochRecord]| {
        v.iter()
            .map(|r| (r.train_loss, r.val_loss, r.val_accuracy))
            .collect::<Vec<_>>()
    };
    assert_eq!(strip(&seen_a), strip(&seen_b));
    assert_eq!(a.test_loss, b.test_loss);
}

#[test]
fn augmented_training_runs_deterministically() {
    let _serial = serial();
    let p = TrialParams {
        epochs: 1,
        train_limit: 400,
        test_limit: 100,
        base_filters: 8,
        units: DenseUnits(vec![32]),
        rotation_range: 10.0,
        width_shift: 0.1,
        height_shift: 0.1,
        zoom: 0.1,
        seed: 4,
        ..TrialParams::default()
    };
    let prepared = small(&p);
    let dir = tempfile::tempdir().unwrap();
    let mut losses = Vec::new();
    let mut previews = Vec::new();
    for name in ["a.safetensors", "b.safetensors"] {
        run_trial_with(
            &prepared,
            &p,
            1,
            10,
            Device::Cpu,
            &dir.path().join(name),
            &TrialControl::default(),
            &mut |r, info| {
                losses.push(r.train_loss);
                previews.push(info.data_preview.clone().expect("a data preview"));
                true
            },
        )
        .unwrap();
    }
    assert_eq!(losses[0], losses[1]);

    // The preview: the first training images of each class, of that class, as the model
    // sees them; the augmentation preview is the first image as is, then draws that differ
    // from it and from each other, the same in both runs (their own generator).
    let preview = &previews[0];
    assert_eq!(preview, &previews[1]);
    let labels = Vec::<i64>::try_from(&prepared.train.labels.to_kind(tch::Kind::Int64)).unwrap();
    assert_eq!(preview.samples.len(), 10 * SAMPLES_PER_CLASS);
    for s in &preview.samples {
        assert_eq!(labels[s.index as usize], s.class as i64, "{}", s.index);
        let img = image::load_from_memory(&base64(&s.png_base64)).unwrap();
        assert_eq!((img.width(), img.height()), (28, 28));
    }
    assert!(preview
        .augmentation
        .starts_with("rotation ±10°, width shift 0.1"));
    assert_eq!(preview.augmented.len(), AUGMENTED_DRAWS + 1);
    let distinct: std::collections::HashSet<&String> = preview.augmented.iter().collect();
    assert_eq!(distinct.len(), AUGMENTED_DRAWS + 1, "draws repeat");
}

fn base64(text: &str) -> Vec<u8> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD
        .decode(text)
        .unwrap()
}

/// Mixed precision trains as well as fp32 on the same data and initialisation (both heads),
/// and says it ran in bf16; `auto` resolves by the CPU.
#[test]
fn bf16_trains_to_fp32_accuracy() {
    let _serial = serial();
    for head in [Head::Dense, Head::Gap] {
        let base = TrialParams {
            epochs: 2,
            train_limit: 6000,
            test_limit: 1000,
            base_filters: 8,
            units: DenseUnits(vec![32]),
            head,
            seed: 9,
            ..TrialParams::default()
        };
        let prepared = small(&base);
        let dir = tempfile::tempdir().unwrap();
        let mut accuracy = Vec::new();
        for precision in [Precision::Fp32, Precision::Bf16] {
            let p = TrialParams {
                precision,
                ..base.clone()
            };
            let mut seen = None;
            let outcome = run_trial(
                &prepared,
                &p,
                1,
                10,
                Device::Cpu,
                &dir.path().join(format!("{precision}.safetensors")),
                &mut |_, info| {
                    seen = Some(info.precision);
                    true
                },
            )
            .unwrap();
            assert_eq!(seen, Some(precision));
            accuracy.push(outcome.test_accuracy);
        }
        let (fp32, bf16) = (accuracy[0], accuracy[1]);
        eprintln!("{head:?}: test accuracy fp32 {fp32}, bf16 {bf16}");
        // Both learned (chance is 0.1; this tiny GAP model learns slowly), and alike.
        assert!(fp32 > 0.3, "{head:?}: fp32 reached only {fp32}");
        assert!(
            (fp32 - bf16).abs() < 0.03,
            "{head:?}: bf16 {bf16} against fp32 {fp32}"
        );
    }
    let auto = cnnd_worker::model::resolve_precision(Precision::Auto, Device::Cpu);
    let expected = if cnnd_worker::model::cpu_has_fast_bf16() {
        Precision::Bf16
    } else {
        Precision::Fp32
    };
    assert_eq!(auto, expected);
}

#[test]
fn a_huge_learning_rate_diverges_with_epoch_and_batch() {
    let _serial = serial();
    // A valid configuration (learningRate is capped at 100): plain SGD at 100 without batch
    // norm, ELU (ReLU tends to die with finite losses instead), NaN by batch 4 for seeds 0-2.
    let p = TrialParams {
        epochs: 2,
        train_limit: 2000,
        test_limit: 100,
        base_filters: 8,
        units: DenseUnits(vec![32]),
        optimizer: Optimizer::Sgd,
        learning_rate: 100.0,
        batch_norm: false,
        activation: Activation::Elu,
        ..TrialParams::default()
    };
    p.validate(&dataset_info("mnist").unwrap()).unwrap();
    let prepared = small(&p);
    let dir = tempfile::tempdir().unwrap();
    let err = run_trial_with(
        &prepared,
        &p,
        1,
        10,
        Device::Cpu,
        &dir.path().join("w.ot"),
        &TrialControl::default(),
        &mut |_, _| true,
    )
    .unwrap_err();
    eprintln!("{err}");
    match err {
        TrainError::Diverged { epoch, batch, loss } => {
            assert_eq!(epoch, 1);
            assert!((1..=29).contains(&batch), "batch {batch}");
            assert!(!loss.is_finite());
        }
        other => panic!("expected Diverged, got {other:?}"),
    }
}

#[test]
fn bad_input_is_a_data_error_not_a_crash() {
    let _serial = serial();
    let p = TrialParams {
        epochs: 1,
        train_limit: 100,
        test_limit: 10,
        ..TrialParams::default()
    };
    let prepared = small(&p);
    let dir = tempfile::tempdir().unwrap();
    // Three channels claimed for one-channel images (through the control-less entry).
    let err = run_trial(
        &prepared,
        &p,
        3,
        10,
        Device::Cpu,
        &dir.path().join("w.ot"),
        &mut |_, _| true,
    )
    .unwrap_err();
    assert!(matches!(err, TrainError::Data(_)), "{err:?}");
}

/// Runs `p` on `prepared` with `control`, returning the outcome and the epochs reported.
fn run_with(
    prepared: &Prepared,
    p: &TrialParams,
    weights: &Path,
    control: &TrialControl,
    mut keep_going: impl FnMut(&EpochRecord) -> bool,
) -> (Result<TrainOutcome, TrainError>, Vec<EpochRecord>) {
    let mut seen = Vec::new();
    let out = run_trial_with(
        prepared,
        p,
        1,
        10,
        Device::Cpu,
        weights,
        control,
        &mut |r, _| {
            seen.push(r.clone());
            keep_going(r)
        },
    );
    (out, seen)
}

fn assert_same_metrics(a: &EpochRecord, b: &EpochRecord) {
    assert_eq!(a.epoch, b.epoch);
    for (what, x, y) in [
        ("train loss", a.train_loss, b.train_loss),
        ("train accuracy", a.train_accuracy, b.train_accuracy),
        ("val loss", a.val_loss, b.val_loss),
        ("val accuracy", a.val_accuracy, b.val_accuracy),
        ("learning rate", a.learning_rate, b.learning_rate),
    ] {
        assert!(
            (x - y).abs() <= 1e-6,
            "epoch {}: {what} {x} vs {y}",
            a.epoch
        );
    }
}

/// A straight run of 3 epochs against the same trial stopped by `on_epoch` after epoch 1,
/// then interrupted in the middle of epoch 2 through the stop flag, then resumed: the
/// resumed run reports epochs 2 and 3 only, with the straight run's numbers.
fn check_resume_matches_straight_run(p: &TrialParams) {
    let _serial = serial();
    let prepared = small(p);
    let n_batches = batches_per_epoch(&prepared, p);
    assert_eq!(
        n_batches,
        (prepared.train.len() as u32).div_ceil(p.batch_size)
    );
    let dir = tempfile::tempdir().unwrap();

    // Straight through, checkpointing.
    let straight_ckpt = dir.path().join("straight.ckpt.safetensors");
    let progress = AtomicU64::new(0);
    let control = TrialControl {
        checkpoint: Some(&straight_ckpt),
        progress: Some(&progress),
        ..TrialControl::default()
    };
    let (straight, straight_seen) = run_with(
        &prepared,
        p,
        &dir.path().join("s.safetensors"),
        &control,
        |_| true,
    );
    let straight = straight.unwrap();
    assert_eq!(straight.resumed_from_epoch, 0);
    assert_eq!(straight_seen.len(), 3);
    assert_eq!(
        decode_progress(progress.load(Ordering::Relaxed)),
        (3, n_batches)
    );
    let meta = read_checkpoint_meta(&straight_ckpt).unwrap();
    assert_eq!(meta.epoch, 3);
    assert_eq!(meta.best_epoch, straight.best_epoch);

    // Stopped by on_epoch after epoch 1: the checkpoint holds epoch 1.
    let ckpt = dir.path().join("trial.ckpt.safetensors");
    let weights = dir.path().join("r.safetensors");
    let control = TrialControl {
        checkpoint: Some(&ckpt),
        ..TrialControl::default()
    };
    let (first, seen) = run_with(&prepared, p, &weights, &control, |_| false);
    let first = first.unwrap();
    assert!(first.stopped);
    assert_eq!(seen.len(), 1);
    assert_same_metrics(&seen[0], &straight_seen[0]);
    assert_eq!(read_checkpoint_meta(&ckpt).unwrap().epoch, 1);

    // Resumed, then interrupted in the middle of epoch 2 by another thread.
    let stop = AtomicBool::new(false);
    let progress = AtomicU64::new(0);
    let stop_at = 3.min(n_batches - 1);
    let done = AtomicBool::new(false);
    let (second, seen, observed) = std::thread::scope(|scope| {
        let watcher = scope.spawn(|| {
            while !done.load(Ordering::Relaxed) {
                let (epoch, batch) = decode_progress(progress.load(Ordering::Relaxed));
                if epoch >= 2 && batch >= stop_at {
                    stop.store(true, Ordering::Relaxed);
                    return (epoch, batch);
                }
                std::thread::sleep(std::time::Duration::from_micros(200));
            }
            (0, 0)
        });
        let control = TrialControl {
            checkpoint: Some(&ckpt),
            stop: Some(&stop),
            progress: Some(&progress),
            init_weights: None,
        };
        let (out, seen) = run_with(&prepared, p, &weights, &control, |_| true);
        done.store(true, Ordering::Relaxed);
        (out, seen, watcher.join().unwrap())
    });
    match second {
        Err(TrainError::Interrupted { epoch: 2 }) => {}
        other => panic!("expected an interruption in epoch 2, got {other:?}"),
    }
    assert!(seen.is_empty(), "no epoch finished: {seen:?}");
    let (epoch, batch) = decode_progress(progress.load(Ordering::Relaxed));
    eprintln!("stop set after batch {observed:?}, trainer stopped after batch {batch}");
    assert_eq!(epoch, 2);
    assert!(
        batch <= observed.1 + 1 && batch < n_batches,
        "stopped after batch {batch}, the flag was set after batch {}",
        observed.1
    );
    let meta = read_checkpoint_meta(&ckpt).unwrap();
    assert_eq!(meta.epoch, 1, "the partial epoch left the checkpoint alone");

    // Resumed again: epochs 2 and 3 only, the straight run's numbers.
    let (third, seen) = run_with(&prepared, p, &weights, &control, |_| true);
    let third = third.unwrap();
    assert_eq!(third.resumed_from_epoch, 1);
    assert!(!third.stopped);
    assert_eq!(
        seen.iter().map(|r| r.epoch).collect::<Vec<_>>(),
        [2, 3],
        "only the new epochs are reported"
    );
    for (r, s) in seen.iter().zip(&straight_seen[1..]) {
        assert_same_metrics(r, s);
    }
    eprintln!("straight {straight:?}\nresumed  {third:?}");
    assert_eq!(third.best_epoch, straight.best_epoch);
    assert!((third.test_loss - straight.test_loss).abs() <= 1e-6);
    assert!((third.test_accuracy - straight.test_accuracy).abs() <= 1e-6);
    assert_eq!(read_checkpoint_meta(&ckpt).unwrap().epoch, 3);
    // No temporary file left behind.
    let mut names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "r.safetensors",
            "s.safetensors",
            "straight.ckpt.safetensors",
            "trial.ckpt.safetensors"
        ]
    );
}

#[test]
fn a_resumed_trial_matches_a_straight_run() {
    // The seed model (batch norm, dropout 0.5, Adam) on ~2,000 examples.
    check_resume_matches_straight_run(&TrialParams {
        epochs: 3,
        train_limit: 2000,
        test_limit: 500,
        seed: 7,
        ..TrialParams::default()
    });
}

#[test]
fn a_resumed_trial_matches_a_straight_run_with_sgd_and_augmentation() {
    // SGD momentum buffers, weight decay and the augmentation generator.
    check_resume_matches_straight_run(&TrialParams {
        epochs: 3,
        train_limit: 1200,
        test_limit: 300,
        base_filters: 8,
        units: DenseUnits(vec![32]),
        optimizer: Optimizer::Sgd,
        learning_rate: 0.05,
        momentum: 0.9,
        weight_decay: 1e-4,
        rotation_range: 10.0,
        width_shift: 0.1,
        zoom: 0.1,
        shear_range: 8.0,
        vertical_flip: true,
        channel_shift: 0.05,
        fill_mode: FillMode::Reflect,
        seed: 3,
        ..TrialParams::default()
    });
}

#[test]
fn a_resumed_trial_matches_a_straight_run_with_a_plateau_schedule_and_label_smoothing() {
    // The plateau schedule's state (best validation loss, epochs waited, current rate) is
    // in the checkpoint: a resumed trial lowers its rate when the straight run does. A
    // large rate on few examples makes epoch 2 miss epoch 1's validation loss, so the
    // straight run's epoch 3 trains at the lowered rate; a resume that forgot the state
    // would not.
    let p = TrialParams {
        epochs: 3,
        train_limit: 600,
        test_limit: 200,
        base_filters: 8,
        units: DenseUnits(vec![32]),
        learning_rate: 0.03,
        lr_schedule: LrSchedule::Plateau,
        lr_patience: 1,
        lr_gamma: 0.2,
        label_smoothing: 0.1,
        seed: 5,
        ..TrialParams::default()
    };
    check_resume_matches_straight_run(&p);
    let _serial = serial();
    let (_, epochs) = run_with(
        &small(&p),
        &p,
        &tempfile::tempdir().unwrap().path().join("w.safetensors"),
        &TrialControl::default(),
        |_| true,
    );
    let rates: Vec<f64> = epochs.iter().map(|e| e.learning_rate).collect();
    eprintln!(
        "{:?}",
        epochs
            .iter()
            .map(|e| (e.val_loss, e.learning_rate))
            .collect::<Vec<_>>()
    );
    assert!((rates[2] - 0.03 * 0.2).abs() < 1e-12, "{rates:?}");
}

/// Per-trial patience (Keras's `EarlyStopping(patience, restore_best_weights=True)`): the
/// trial ends once `patience` epochs pass without a better validation accuracy, and is
/// tested with its best epoch's weights. The schedule of every epoch is reported with it.
#[test]
fn patience_ends_a_trial_that_stopped_improving() {
    let _serial = serial();
    let p = TrialParams {
        epochs: 20,
        patience: 2,
        train_limit: 300,
        test_limit: 100,
        base_filters: 4,
        units: DenseUnits(vec![16]),
        lr_schedule: LrSchedule::Step,
        lr_step_size: 3,
        lr_gamma: 0.5,
        seed: 2,
        ..TrialParams::default()
    };
    let prepared = small(&p);
    let dir = tempfile::tempdir().unwrap();
    let checkpoint = dir.path().join("ckpt.safetensors");
    let control = TrialControl {
        checkpoint: Some(&checkpoint),
        ..TrialControl::default()
    };
    let weights = dir.path().join("w.safetensors");
    let (out, epochs) = run_with(&prepared, &p, &weights, &control, |_| true);
    let out = out.unwrap();
    let stopped_at = out
        .patience_stopped_at
        .unwrap_or_else(|| panic!("ran all {} epochs: {epochs:?}", epochs.len()));
    assert!(!out.stopped, "patience is not the caller's stop");
    assert_eq!(stopped_at as usize, epochs.len());
    assert!(stopped_at < p.epochs);
    assert_eq!(stopped_at - out.best_epoch, p.patience);
    // The best epoch is the first with the highest validation accuracy, and before the
    // stop no stretch of `patience` epochs went without a new best.
    let accuracies: Vec<f64> = epochs.iter().map(|e| e.val_accuracy).collect();
    let best = accuracies.iter().cloned().fold(f64::MIN, f64::max);
    assert_eq!(
        accuracies.iter().position(|&a| a == best).unwrap() + 1,
        out.best_epoch as usize
    );
    let mut best_so_far = (0, f64::MIN);
    for (i, &a) in accuracies.iter().enumerate() {
        let epoch = i as u32 + 1;
        if a > best_so_far.1 {
            best_so_far = (epoch, a);
        }
        if epoch < stopped_at {
            assert!(epoch - best_so_far.0 < p.patience, "{accuracies:?}");
        }
    }
    // A worker that died after the stop's checkpoint resumes to the same end: no more
    // epochs, the same best epoch and test.
    let (again, more) = run_with(&prepared, &p, &weights, &control, |_| true);
    let again = again.unwrap();
    assert!(more.is_empty(), "{more:?}");
    assert_eq!(
        (
            again.patience_stopped_at,
            again.resumed_from_epoch,
            again.best_epoch
        ),
        (Some(stopped_at), stopped_at, out.best_epoch)
    );
    assert_eq!(again.test_accuracy, out.test_accuracy);
    // Step schedule: halved every 3 epochs.
    for e in &epochs {
        let want = 1e-3 * 0.5f64.powi(((e.epoch - 1) / 3) as i32);
        assert!((e.learning_rate - want).abs() < 1e-15, "{e:?}");
    }
}

#[test]
fn unusable_checkpoints_are_ignored() {
    let _serial = serial();
    let p = TrialParams {
        epochs: 2,
        train_limit: 600,
        test_limit: 100,
        head: Head::Gap,
        base_filters: 8,
        seed: 5,
        ..TrialParams::default()
    };
    let prepared = small(&p);
    let dir = tempfile::tempdir().unwrap();
    let ckpt = dir.path().join("c.safetensors");
    let weights = dir.path().join("w.safetensors");
    let control = TrialControl {
        checkpoint: Some(&ckpt),
        ..TrialControl::default()
    };
    let epochs_run = |p: &TrialParams| {
        let (out, seen) = run_with(&prepared, p, &weights, &control, |_| true);
        let out = out.unwrap();
        let epochs: Vec<u32> = seen.iter().map(|r| r.epoch).collect();
        (out.resumed_from_epoch, epochs)
    };

    // Garbage.
    std::fs::write(&ckpt, b"not a checkpoint at all").unwrap();
    assert!(read_checkpoint_meta(&ckpt).is_err());
    assert_eq!(epochs_run(&p), (0, vec![1, 2]));
    // A checkpoint of the last epoch: nothing to continue, a fresh start.
    assert_eq!(read_checkpoint_meta(&ckpt).unwrap().epoch, 2);
    assert_eq!(epochs_run(&p), (0, vec![1, 2]));

    // A truncated checkpoint (of epoch 1).
    let (out, _) = run_with(&prepared, &p, &weights, &control, |_| false);
    assert!(out.unwrap().stopped);
    let bytes = std::fs::read(&ckpt).unwrap();
    std::fs::write(&ckpt, &bytes[..bytes.len() / 2]).unwrap();
    assert_eq!(epochs_run(&p), (0, vec![1, 2]));

    // A checkpoint of other parameters (another seed).
    let (out, _) = run_with(&prepared, &p, &weights, &control, |_| false);
    assert!(out.unwrap().stopped);
    let other = TrialParams {
        seed: 6,
        ..p.clone()
    };
    assert_eq!(epochs_run(&other), (0, vec![1, 2]));

    // Sanity: a good one is used.
    let (out, _) = run_with(&prepared, &p, &weights, &control, |_| false);
    assert!(out.unwrap().stopped);
    assert_eq!(epochs_run(&p), (1, vec![2]));
}

#[test]
fn a_stop_flag_set_before_the_start_interrupts_epoch_one() {
    let _serial = serial();
    let p = TrialParams {
        epochs: 2,
        train_limit: 300,
        test_limit: 50,
        head: Head::Gap,
        base_filters: 4,
        ..TrialParams::default()
    };
    let prepared = small(&p);
    let dir = tempfile::tempdir().unwrap();
    let ckpt = dir.path().join("c.safetensors");
    let stop = AtomicBool::new(true);
    let progress = AtomicU64::new(0);
    let control = TrialControl {
        checkpoint: Some(&ckpt),
        stop: Some(&stop),
        progress: Some(&progress),
        init_weights: None,
    };
    let (out, seen) = run_with(&prepared, &p, &dir.path().join("w.ot"), &control, |_| true);
    assert!(
        matches!(out, Err(TrainError::Interrupted { epoch: 1 })),
        "{out:?}"
    );
    assert!(seen.is_empty());
    assert_eq!(progress.load(Ordering::Relaxed), 0, "no batch ran");
    assert!(!ckpt.exists(), "no checkpoint for an unfinished epoch");
    assert_eq!(
        TrainError::Interrupted { epoch: 1 }.to_string(),
        "interrupted during epoch 1"
    );
}

/// A non-square input (`inputSize: [28, 40]`, Keras's `target_size=(28, 40)`): the data
/// are resized to 28x40, the dense head's width follows both sides (the size estimate and
/// the built model agree), and the model learns.
#[test]
fn a_non_square_input_trains() {
    let _serial = serial();
    let p = TrialParams {
        epochs: 1,
        batch_size: 32,
        train_limit: 2000,
        test_limit: 500,
        input_size: InputSize {
            height: 28,
            width: 40,
        },
        ..TrialParams::default()
    };
    let prepared = small(&p);
    assert_eq!(prepared.train.images.size(), [1800, 1, 28, 40]);
    assert_eq!(prepared.test.input_size(), (28, 40));
    let dir = tempfile::tempdir().unwrap();
    let weights = dir.path().join("w.safetensors");
    let out = run_trial(&prepared, &p, 1, 10, Device::Cpu, &weights, &mut |_, _| {
        true
    })
    .unwrap();
    let expected = cnnd_core::model_size::model_size(&p, 1, (28, 40), 10).parameters;
    assert_eq!(out.parameter_count, expected);
    let square = TrialParams {
        input_size: InputSize::square(28),
        ..p.clone()
    };
    assert!(
        expected > cnnd_core::model_size::model_size(&square, 1, 28, 10).parameters,
        "the dense head sees a wider map"
    );
    assert!(
        out.test_accuracy > 0.8,
        "test accuracy {}",
        out.test_accuracy
    );
}
