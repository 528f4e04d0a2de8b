//! The training loop of one trial: builds the model, trains it epoch by epoch on prepared
//! splits (with optional Keras-style augmentation), reports every epoch to the caller, keeps
//! the best epoch's weights on disk and tests them.
//!
//! Owns: the optimiser, the loss, augmentation, divergence detection, checkpointing of the
//! best weights, evaluation.
//! Must not touch: the control plane (store, scheduler, api, charts) nor the worker protocol;
//! progress leaves only through the `on_epoch` callback and the returned outcome.

use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::time::Instant;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tch::nn::{self, OptimizerConfig};
use tch::{Device, Kind, Reduction, TchError, Tensor};

use crate::data::{Prepared, Split};
use crate::model::{self, Net};
use crate::sweep::{Optimizer, Output, TrialParams};

/// Metrics of one finished epoch.
#[derive(Debug, Clone, PartialEq)]
pub struct EpochReport {
    /// 1-based.
    pub epoch: u32,
    /// Mean loss and accuracy over the epoch's training batches, in training mode (dropout
    /// on, batch statistics), as Keras reports them.
    pub train_loss: f64,
    pub train_accuracy: f64,
    pub val_loss: f64,
    pub val_accuracy: f64,
    /// The whole epoch, validation included.
    pub seconds: f64,
    /// Training images / seconds of the training loop (validation excluded).
    pub images_per_second: f64,
}

/// Facts about the trial, known before the first epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TrialInfo {
    pub parameter_count: u64,
    pub train_examples: u32,
    pub val_examples: u32,
    pub test_examples: u32,
}

/// The result of a trial that ran to its end or was stopped by `on_epoch`.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainOutcome {
    /// Test metrics of the best epoch's weights.
    pub test_loss: f64,
    pub test_accuracy: f64,
    /// The epoch (1-based) with the highest validation accuracy (the first one on ties).
    pub best_epoch: u32,
    pub parameter_count: u64,
    /// True when `on_epoch` returned `false` (the trial ended at that epoch).
    pub stopped: bool,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum TrainError {
    /// The training loss became NaN or infinite; `batch` is the first bad batch (1-based)
    /// of `epoch` (1-based).
    #[error("diverged: loss became NaN/inf at epoch {epoch} batch {batch}")]
    Diverged { epoch: u32, batch: u32, loss: f64 },
    /// libtorch failed (out of memory, a shape error, a panic inside tch).
    #[error("libtorch: {0}")]
    Torch(String),
    /// The prepared data cannot be trained on (empty split, wrong shape, I/O of weights).
    #[error("data: {0}")]
    Data(String),
}

impl From<TchError> for TrainError {
    fn from(e: TchError) -> Self {
        TrainError::Torch(e.to_string())
    }
}

/// The training loss sum is checked for NaN/inf every this many batches (and at the end of
/// each epoch): one host synchronisation per check, not per batch.
pub const DIVERGENCE_CHECK_EVERY: usize = 50;

/// Batch size of evaluation passes (validation and test).
pub const EVAL_BATCH: i64 = 1000;

/// True when any augmentation setting of `p` is on.
pub fn augmentation_enabled(p: &TrialParams) -> bool {
    p.rotation_range > 0.0
        || p.width_shift > 0.0
        || p.height_shift > 0.0
        || p.zoom > 0.0
        || p.horizontal_flip
}

/// `n` random affine transforms drawn from `rng` with Keras ImageDataGenerator semantics, as
/// an `[n, 2, 3]` f32 theta tensor (CPU) for `affine_grid_generator` (output -> input
/// coordinates, normalised to -1..1):
/// rotation uniform in +-`rotationRange` degrees; shifts uniform in +-`widthShift` /
/// `heightShift` of the image side; zoom factors for x and y drawn independently, uniform in
/// 1 +- `zoom` (above 1 shows more of the image, i.e. zooms out); horizontal flip with
/// probability 1/2. Square images are assumed (rotation in normalised coordinates).
pub fn random_thetas(p: &TrialParams, n: usize, rng: &mut ChaCha8Rng) -> Tensor {
    let mut theta = Vec::with_capacity(n * 6);
    let uniform = |rng: &mut ChaCha8Rng, r: f64| if r > 0.0 { rng.gen_range(-r..=r) } else { 0.0 };
    for _ in 0..n {
        let angle = uniform(rng, p.rotation_range).to_radians();
        let tx = 2.0 * uniform(rng, p.width_shift);
        let ty = 2.0 * uniform(rng, p.height_shift);
        let zx = 1.0 + uniform(rng, p.zoom);
        let zy = 1.0 + uniform(rng, p.zoom);
        let flip = if p.horizontal_flip && rng.gen_bool(0.5) {
            -1.0
        } else {
            1.0
        };
        let (s, c) = angle.sin_cos();
        // input = R(angle) * diag(zx * flip, zy) * output + t
        theta.extend([c * zx * flip, -s * zy, tx, s * zx * flip, c * zy, ty].map(|v| v as f32));
    }
    Tensor::from_slice(&theta).view([n as i64, 2, 3])
}

/// Warps `[N, C, H, W]` images by the `[N, 2, 3]` affine `theta` (same device): bilinear
/// sampling, zeros outside the image.
pub fn apply_affine(images: &Tensor, theta: &Tensor) -> Result<Tensor, TchError> {
    let grid = Tensor::f_affine_grid_generator(theta, images.size(), false)?;
    // interpolation 0 = bilinear, padding 0 = zeros
    images.f_grid_sampler(&grid, 0, 0, false)
}

/// One random augmentation per image of a batch, drawn from `rng`; the images themselves when
/// no augmentation is set. Deterministic for a given `rng` state.
pub fn augment(images: &Tensor, p: &TrialParams, rng: &mut ChaCha8Rng) -> Result<Tensor, TchError> {
    if !augmentation_enabled(p) {
        return Ok(images.shallow_clone());
    }
    let n = images.size()[0] as usize;
    let theta = random_thetas(p, n, rng).f_to_device(images.device())?;
    apply_affine(images, &theta)
}

/// The augmentation generator of a trial: ChaCha8 seeded by the trial seed, on its own stream
/// (so it is independent of the validation split drawn from the same seed).
pub fn augmentation_rng(seed: u64) -> ChaCha8Rng {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(1);
    rng
}

fn loss_of(
    logits: &Tensor,
    labels: &Tensor,
    output: Output,
    reduction: Reduction,
) -> Result<Tensor, TchError> {
    match output {
        Output::Softmax => {
            logits.f_cross_entropy_loss::<Tensor>(labels, None, reduction, -100, 0.0)
        }
        Output::Sigmoid => logits
            .f_view([-1])?
            .f_binary_cross_entropy_with_logits::<Tensor>(
                &labels.f_to_kind(Kind::Float)?,
                None,
                None,
                reduction,
            ),
    }
}

/// Number of correct predictions, as an i64 scalar tensor on the logits' device.
fn correct_of(logits: &Tensor, labels: &Tensor, output: Output) -> Result<Tensor, TchError> {
    let predicted = match output {
        Output::Softmax => logits.f_argmax(-1, false)?,
        Output::Sigmoid => logits.f_view([-1])?.f_gt(0.0)?.f_to_kind(Kind::Int64)?,
    };
    predicted.f_eq_tensor(labels)?.f_sum(Kind::Int64)
}

/// Mean loss and accuracy of `net` (evaluation mode, no gradients) over a split already on
/// its device, in batches of [`EVAL_BATCH`]; one host read at the end.
pub fn evaluate(net: &Net, split: &Split, output: Output) -> Result<(f64, f64), TchError> {
    let n = split.len() as i64;
    if n == 0 {
        return Ok((0.0, 0.0));
    }
    let _guard = tch::no_grad_guard();
    let device = split.images.device();
    let mut loss = Tensor::f_zeros([], (Kind::Float, device))?;
    let mut correct = Tensor::f_zeros([], (Kind::Int64, device))?;
    let mut start = 0;
    while start < n {
        let len = EVAL_BATCH.min(n - start);
        let xs = split.images.f_narrow(0, start, len)?;
        let ys = split.labels.f_narrow(0, start, len)?;
        let logits = net.f_forward_t(&xs, false)?;
        loss = loss.f_add(&loss_of(&logits, &ys, output, Reduction::Sum)?)?;
        correct = correct.f_add(&correct_of(&logits, &ys, output)?)?;
        start += len;
    }
    let loss = loss.f_double_value(&[])? / n as f64;
    let correct = correct.f_int64_value(&[])? as f64 / n as f64;
    Ok((loss, correct))
}

fn panic_message(payload: Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        s.to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "panic with a non-text payload".to_string()
    }
}

/// Where the weights are written before the rename: the same folder and extension (the
/// extension picks the format), a hidden temporary stem.
fn temp_weights_path(path: &Path) -> PathBuf {
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let name = match path.extension() {
        Some(ext) => format!(
            ".{stem}.tmp-{}.{}",
            std::process::id(),
            ext.to_string_lossy()
        ),
        None => format!(".{stem}.tmp-{}", std::process::id()),
    };
    path.with_file_name(name)
}

/// Saves the variables atomically: to a temporary name in the same folder, then renamed.
/// Safetensors when the path ends in `.safetensors`, libtorch's format otherwise.
pub fn save_weights(vs: &nn::VarStore, path: &Path) -> Result<(), TrainError> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .map_err(|e| TrainError::Data(format!("cannot create {}: {e}", dir.display())))?;
    }
    let tmp = temp_weights_path(path);
    vs.save(&tmp)
        .map_err(|e| TrainError::Data(format!("cannot write weights to {}: {e}", tmp.display())))?;
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        TrainError::Data(format!(
            "cannot rename {} to {}: {e}",
            tmp.display(),
            path.display()
        ))
    })
}

fn check_split(name: &str, s: &Split, channels: i64) -> Result<(), TrainError> {
    let size = s.images.size();
    if size.len() != 4 || size[1] != channels || size[2] != size[3] {
        return Err(TrainError::Data(format!(
            "{name} images have shape {size:?}, expected [N, {channels}, S, S]"
        )));
    }
    if s.labels.size() != [size[0]] {
        return Err(TrainError::Data(format!(
            "{name} labels have shape {:?} for {} images",
            s.labels.size(),
            size[0]
        )));
    }
    Ok(())
}

fn to_device(s: &Split, device: Device) -> Result<Split, TchError> {
    Ok(Split {
        images: s.images.f_to_device(device)?.f_to_kind(Kind::Float)?,
        labels: s.labels.f_to_device(device)?.f_to_kind(Kind::Int64)?,
    })
}

/// Runs one trial: `p.epochs` epochs on `prepared` (CPU tensors; copied to `device` once),
/// calling `on_epoch` after each (return `false` to stop). The best epoch by validation
/// accuracy is saved to `weights_path` and its weights give the test metrics. libtorch
/// errors and panics become [`TrainError::Torch`]; a NaN/inf training loss
/// [`TrainError::Diverged`]. The caller sets the thread count (`tch::set_num_threads`).
pub fn run_trial(
    prepared: &Prepared,
    p: &TrialParams,
    channels: i64,
    classes: i64,
    device: Device,
    weights_path: &Path,
    on_epoch: &mut dyn FnMut(&EpochReport, &TrialInfo) -> bool,
) -> Result<TrainOutcome, TrainError> {
    match panic::catch_unwind(AssertUnwindSafe(|| {
        trial(
            prepared,
            p,
            channels,
            classes,
            device,
            weights_path,
            on_epoch,
            DIVERGENCE_CHECK_EVERY,
        )
    })) {
        Ok(result) => result,
        Err(payload) => Err(TrainError::Torch(panic_message(payload))),
    }
}

#[allow(clippy::too_many_arguments)]
fn trial(
    prepared: &Prepared,
    p: &TrialParams,
    channels: i64,
    classes: i64,
    device: Device,
    weights_path: &Path,
    on_epoch: &mut dyn FnMut(&EpochReport, &TrialInfo) -> bool,
    check_every: usize,
) -> Result<TrainOutcome, TrainError> {
    for (name, s) in [
        ("training", &prepared.train),
        ("validation", &prepared.val),
        ("test", &prepared.test),
    ] {
        check_split(name, s, channels)?;
    }
    let n_train = prepared.train.len() as i64;
    if n_train == 0 {
        return Err(TrainError::Data("no training examples".into()));
    }
    if prepared.val.is_empty() {
        return Err(TrainError::Data("no validation examples".into()));
    }
    let input_size = prepared.train.input_size();

    tch::manual_seed(p.seed as i64);
    let mut vs = nn::VarStore::new(device);
    let net = model::build(&vs.root(), p, channels, input_size, classes);
    let info = TrialInfo {
        parameter_count: model::parameter_count(&vs),
        train_examples: prepared.train.len() as u32,
        val_examples: prepared.val.len() as u32,
        test_examples: prepared.test.len() as u32,
    };
    let (lr, wd) = (p.learning_rate, p.weight_decay);
    let mut opt = match p.optimizer {
        Optimizer::Adam => nn::Adam {
            wd,
            ..Default::default()
        }
        .build(&vs, lr)?,
        Optimizer::Adamw => nn::AdamW {
            wd,
            ..Default::default()
        }
        .build(&vs, lr)?,
        Optimizer::Sgd => nn::Sgd {
            momentum: p.momentum,
            wd,
            ..Default::default()
        }
        .build(&vs, lr)?,
    };

    let train = to_device(&prepared.train, device)?;
    let val = to_device(&prepared.val, device)?;
    let batch = (p.batch_size as i64).max(1);
    let n_batches = (n_train + batch - 1) / batch;
    let augmenting = augmentation_enabled(p);
    let mut aug_rng = augmentation_rng(p.seed);

    let mut best: Option<(u32, f64)> = None;
    let mut stopped = false;
    for epoch in 1..=p.epochs {
        let started = Instant::now();
        let perm = Tensor::f_randperm(n_train, (Kind::Int64, device))?;
        // One augmentation per image of the epoch, drawn up front and copied to the device once.
        let thetas = if augmenting {
            Some(random_thetas(p, n_train as usize, &mut aug_rng).f_to_device(device)?)
        } else {
            None
        };
        let mut loss_sum = Tensor::f_zeros([], (Kind::Float, device))?;
        let mut correct = Tensor::f_zeros([], (Kind::Int64, device))?;
        // Detached per-batch losses since the last check, to name the first bad batch.
        let mut pending: Vec<Tensor> = Vec::with_capacity(check_every);
        let mut pending_first = 0i64;
        for b in 0..n_batches {
            let start = b * batch;
            let len = batch.min(n_train - start);
            let idx = perm.f_narrow(0, start, len)?;
            let mut xs = train.images.f_index_select(0, &idx)?;
            let ys = train.labels.f_index_select(0, &idx)?;
            if let Some(thetas) = &thetas {
                xs = apply_affine(&xs, &thetas.f_narrow(0, start, len)?)?;
            }
            let logits = net.f_forward_t(&xs, true)?;
            let loss = loss_of(&logits, &ys, p.output, Reduction::Mean)?;
            opt.zero_grad();
            loss.f_backward()?;
            opt.step();
            let loss = loss.f_detach()?;
            loss_sum = loss_sum.f_add(&loss.f_mul_scalar(len)?)?;
            correct = correct.f_add(&correct_of(&logits.f_detach()?, &ys, p.output)?)?;
            pending.push(loss);
            if pending.len() >= check_every || b + 1 == n_batches {
                if !loss_sum.f_double_value(&[])?.is_finite() {
                    let losses = Vec::<f32>::try_from(&Tensor::f_stack(&pending, 0)?)?;
                    let (i, bad) = losses
                        .iter()
                        .enumerate()
                        .find(|(_, l)| !l.is_finite())
                        .map(|(i, l)| (i as i64, *l as f64))
                        .unwrap_or((pending.len() as i64 - 1, f64::NAN));
                    return Err(TrainError::Diverged {
                        epoch,
                        batch: (pending_first + i + 1) as u32,
                        loss: bad,
                    });
                }
                pending.clear();
                pending_first = b + 1;
            }
        }
        let train_seconds = started.elapsed().as_secs_f64();
        let train_loss = loss_sum.f_double_value(&[])? / n_train as f64;
        let train_accuracy = correct.f_int64_value(&[])? as f64 / n_train as f64;
        let (val_loss, val_accuracy) = evaluate(&net, &val, p.output)?;
        let report = EpochReport {
            epoch,
            train_loss,
            train_accuracy,
            val_loss,
            val_accuracy,
            seconds: started.elapsed().as_secs_f64(),
            images_per_second: n_train as f64 / train_seconds.max(1e-9),
        };
        if best.is_none_or(|(_, acc)| val_accuracy > acc) {
            best = Some((epoch, val_accuracy));
            save_weights(&vs, weights_path)?;
        }
        if !on_epoch(&report, &info) {
            stopped = true;
            break;
        }
    }

    let best_epoch = match best {
        Some((epoch, _)) => epoch,
        None => return Err(TrainError::Data("no epoch ran (epochs is 0)".into())),
    };
    vs.load(weights_path).map_err(|e| {
        TrainError::Data(format!(
            "cannot reload the best weights from {}: {e}",
            weights_path.display()
        ))
    })?;
    drop(train);
    drop(val);
    let test = to_device(&prepared.test, device)?;
    let (test_loss, test_accuracy) = evaluate(&net, &test, p.output)?;
    Ok(TrainOutcome {
        test_loss,
        test_accuracy,
        best_epoch,
        parameter_count: info.parameter_count,
        stopped,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn images(n: i64) -> Tensor {
        tch::manual_seed(1);
        Tensor::rand([n, 1, 12, 12], (Kind::Float, Device::Cpu))
    }

    #[test]
    fn augmentation_is_identity_when_off_and_deterministic_when_on() {
        tch::set_num_threads(1);
        let xs = images(8);
        let off = TrialParams::default();
        let same = augment(&xs, &off, &mut augmentation_rng(0)).unwrap();
        assert!(same.equal(&xs));
        // The identity transform through the sampler is the identity too (up to rounding).
        let theta = random_thetas(&off, 8, &mut augmentation_rng(0));
        assert!(apply_affine(&xs, &theta)
            .unwrap()
            .allclose(&xs, 1e-5, 1e-5, false));

        let on = TrialParams {
            rotation_range: 20.0,
            width_shift: 0.1,
            height_shift: 0.1,
            zoom: 0.1,
            horizontal_flip: true,
            ..TrialParams::default()
        };
        let a = augment(&xs, &on, &mut augmentation_rng(5)).unwrap();
        let b = augment(&xs, &on, &mut augmentation_rng(5)).unwrap();
        let c = augment(&xs, &on, &mut augmentation_rng(6)).unwrap();
        assert!(a.equal(&b), "same seed, same augmentation");
        assert!(!a.equal(&c), "another seed, another augmentation");
        assert!(!a.allclose(&xs, 1e-3, 1e-3, false));
    }

    #[test]
    fn horizontal_flip_flips_about_half() {
        tch::set_num_threads(1);
        let xs = images(32);
        let p = TrialParams {
            horizontal_flip: true,
            ..TrialParams::default()
        };
        let out = augment(&xs, &p, &mut augmentation_rng(1)).unwrap();
        let flipped = xs.flip([3]);
        let (mut n_flipped, mut n_same) = (0, 0);
        for i in 0..32 {
            let o = out.get(i);
            if o.allclose(&flipped.get(i), 1e-5, 1e-5, false) {
                n_flipped += 1;
            } else if o.allclose(&xs.get(i), 1e-5, 1e-5, false) {
                n_same += 1;
            } else {
                panic!("image {i} is neither itself nor its mirror image");
            }
        }
        assert_eq!(n_flipped + n_same, 32);
        assert!(
            n_flipped >= 6 && n_same >= 6,
            "{n_flipped} flipped, {n_same} kept"
        );
    }

    #[test]
    fn temp_name_keeps_the_format_extension() {
        let t = temp_weights_path(Path::new("/w/trial-3.safetensors"));
        assert_eq!(t.extension().unwrap(), "safetensors");
        assert_eq!(t.parent().unwrap(), Path::new("/w"));
        assert_ne!(t, Path::new("/w/trial-3.safetensors"));
    }

    #[test]
    fn the_first_bad_batch_is_found_whatever_the_check_interval() {
        tch::set_num_threads(1);
        tch::manual_seed(2);
        let n = 640;
        let split = |n: i64| Split {
            images: Tensor::rand([n, 1, 8, 8], (Kind::Float, Device::Cpu)),
            labels: Tensor::randint(10, [n], (Kind::Int64, Device::Cpu)),
        };
        let prepared = Prepared {
            train: split(n),
            val: split(64),
            test: split(64),
        };
        let p = TrialParams {
            epochs: 1,
            blocks: 2,
            base_filters: 4,
            units: 8,
            batch_size: 16,
            batch_norm: false,
            activation: crate::sweep::Activation::Elu,
            optimizer: Optimizer::Sgd,
            learning_rate: 1e10,
            ..TrialParams::default()
        };
        let dir = std::env::temp_dir().join(format!("cnnd-train-test-{}", std::process::id()));
        let mut found = Vec::new();
        for every in [1, 2, 3, 50] {
            let e = trial(
                &prepared,
                &p,
                1,
                10,
                Device::Cpu,
                &dir.join("w.ot"),
                &mut |_, _| true,
                every,
            );
            match e {
                Err(TrainError::Diverged {
                    epoch: 1, batch, ..
                }) => found.push(batch),
                other => panic!("expected divergence in epoch 1, got {other:?}"),
            }
        }
        let _ = std::fs::remove_dir_all(&dir);
        eprintln!("first bad batch per check interval 1, 2, 3, 50: {found:?}");
        assert!(found.iter().all(|&b| b == found[0]), "{found:?}");
    }

    #[test]
    fn diverged_message() {
        let e = TrainError::Diverged {
            epoch: 2,
            batch: 17,
            loss: f64::NAN,
        };
        assert_eq!(
            e.to_string(),
            "diverged: loss became NaN/inf at epoch 2 batch 17"
        );
    }
}
