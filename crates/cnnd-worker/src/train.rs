//! The training loop of one trial: builds the model, trains it epoch by epoch on prepared
//! splits (with optional Keras-style augmentation), reports every epoch to the caller, keeps
//! the best epoch's weights on disk and tests them; checkpoints every epoch and resumes from
//! a checkpoint; can be stopped between batches and followed batch by batch.
//!
//! Owns: the optimiser ([`optim`]), the loss, augmentation, divergence detection, the
//! per-epoch checkpoint and resuming from it, saving the best weights, evaluation.
//! Must not touch: the control plane (store, scheduler, api, charts) nor the worker protocol;
//! progress leaves only through the `on_epoch` callback, the [`TrialControl`] atomics and the
//! returned outcome.
//!
//! Randomness: the model is initialised from `tch::manual_seed(seed)`; every epoch then
//! reseeds libtorch (shuffle, dropout) and the augmentation generator from
//! [`epoch_seed`]`(seed, epoch)`, so an epoch's numbers depend only on the state the previous
//! epoch left (weights, batch-norm statistics, optimiser state), which a checkpoint holds:
//! a resumed trial gives the same numbers as one that ran straight through.
//!
//! Checkpoint (safetensors, written to a temporary name in the same folder, fsynced and
//! renamed after every completed epoch): `model.<var>` (every variable of the var store,
//! batch-norm running statistics included), `best.<var>` (the best epoch's weights),
//! `optim.step` and `optim.m.<var>` / `optim.v.<var>` (Adam, AdamW) or
//! `optim.momentum.<var>` (SGD with momentum), and the 0-d scalars `meta.version`,
//! `meta.epoch`, `meta.best_epoch`, `meta.best_val_accuracy` (f64) and `meta.params_hash`
//! ([`params_hash`], stored as i64 bits), and the `plateau` schedule's state
//! ([`PlateauState`]: `meta.plateau_lr`, `meta.plateau_best`, `meta.plateau_wait`; absent in
//! older checkpoints, which then resume with a fresh plateau state).
//!
//! Learning-rate schedules (`lrSchedule`) set the rate at the start of every epoch;
//! per-trial `patience` ends the trial after that many epochs without a better validation
//! accuracy; `labelSmoothing` smooths the training loss only (validation and test losses
//! stay plain cross-entropy, so trials with different smoothing compare).

pub mod optim;

use std::collections::HashMap;
use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tch::nn;
use tch::{Device, Kind, Reduction, TchError, Tensor};

use crate::data::{Prepared, Split};
use crate::model::{self, Net};
use cnnd_core::data_preview::{augmentation_words, DataPreview, Sample, AUGMENTED_DRAWS};
use cnnd_core::epoch::EpochRecord;
use cnnd_core::sweep::{FillMode, LrSchedule, Output, Precision, TrialParams};
use cnnd_core::test_report::{Misclassified, TestReport, MAX_CLASSES};
use optim::{Optim, OptimConfig};

/// Facts about the trial, known before the first epoch.
#[derive(Debug, Clone, PartialEq)]
pub struct TrialInfo {
    pub parameter_count: u64,
    pub train_examples: u32,
    pub val_examples: u32,
    pub test_examples: u32,
    /// What starting from other weights did (`initFrom`), when it was asked.
    pub transfer: Option<crate::transfer::Transfer>,
    /// The precision the trial computes in (`auto` resolved for its device).
    pub precision: Precision,
    /// Training images as the model sees them, and the augmentation preview (class names
    /// left for the caller); None when it could not be made (never fatal).
    pub data_preview: Option<DataPreview>,
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
    /// The epoch after which `patience` ended the trial (no better validation accuracy for
    /// `patience` epochs); None when it ran its epochs or was stopped by the caller.
    pub patience_stopped_at: Option<u32>,
    /// The checkpoint's epoch this run continued from; 0 when it started fresh.
    pub resumed_from_epoch: u32,
    /// Fine-tuning (`fineTuneAfter`): the variables of the body's top stages that trained
    /// from epoch `fineTuneAfter + 1` (empty when the trial did not fine-tune).
    pub fine_tuned: Vec<String>,
    /// The test pass class by class (class names left for the caller, who knows the data
    /// set); None beyond `test_report::MAX_CLASSES` classes.
    pub test_report: Option<TestReport>,
}

/// What the caller controls of a running trial besides `on_epoch`. The default controls
/// nothing: no checkpoint, no stop, no progress.
#[derive(Debug, Clone, Copy, Default)]
pub struct TrialControl<'a> {
    /// The checkpoint file: written after every completed epoch, and resumed from when it
    /// exists, was written for the same parameters ([`params_hash`]) and its epoch is below
    /// `p.epochs`. A file that cannot be used is ignored with a warning (fresh start).
    pub checkpoint: Option<&'a Path>,
    /// Checked before every training batch: when set, [`run_trial_with`] returns
    /// [`TrainError::Interrupted`] without finishing the epoch (so without writing a
    /// checkpoint or weights for it; the previous epoch's checkpoint stays valid).
    pub stop: Option<&'a AtomicBool>,
    /// Set after every training batch to [`encode_progress`]`(epoch, batch)`: the epoch in
    /// progress and the number of its batches done (both 1-based; the epoch has
    /// [`batches_per_epoch`] batches). Relaxed stores; read it with
    /// [`decode_progress`].
    pub progress: Option<&'a AtomicU64>,
    /// Weights to start from (`p.init_from` resolved to a file); see [`crate::transfer`].
    /// Applied before a checkpoint is resumed from (which then overrides the weights).
    pub init_weights: Option<&'a Path>,
}

/// `(epoch << 32) | batch`, the value of [`TrialControl::progress`].
pub fn encode_progress(epoch: u32, batch: u32) -> u64 {
    (u64::from(epoch) << 32) | u64::from(batch)
}

/// `(epoch, batch)` of a [`TrialControl::progress`] value.
pub fn decode_progress(value: u64) -> (u32, u32) {
    ((value >> 32) as u32, value as u32)
}

/// Number of training batches in one epoch of `p` on `prepared` (the last one may be short).
pub fn batches_per_epoch(prepared: &Prepared, p: &TrialParams) -> u32 {
    let n = prepared.train.len() as u64;
    let batch = u64::from(p.batch_size.max(1));
    n.div_ceil(batch) as u32
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
    /// The prepared data cannot be trained on (empty split, wrong shape, I/O of weights or
    /// of the checkpoint).
    #[error("data: {0}")]
    Data(String),
    /// [`TrialControl::stop`] was set; `epoch` (1-based) is the epoch that was in progress and
    /// did not finish (the checkpoint, if any, holds epoch - 1).
    #[error("interrupted during epoch {epoch}")]
    Interrupted { epoch: u32 },
}

impl From<TchError> for TrainError {
    fn from(e: TchError) -> Self {
        TrainError::Torch(e.to_string())
    }
}

/// The training loss sum is checked for NaN/inf every this many batches (and at the end of
/// each epoch): one host synchronisation per check, not per batch.
pub const DIVERGENCE_CHECK_EVERY: usize = 50;

/// Batch size of evaluation passes (validation and test). Small enough for a batch's
/// activations to stay in cache: at 1 thread on the seed model, 128 evaluates ~1.7x faster
/// than 1000 (`epoch_speed layout`); the metrics are the same up to float summation order.
pub const EVAL_BATCH: i64 = 128;

/// True when any augmentation setting of `p` is on.
pub fn augmentation_enabled(p: &TrialParams) -> bool {
    geometric_augmentation(p) || p.brightness > 0.0 || p.channel_shift > 0.0
}

/// True when any affine augmentation (rotation, shifts, zoom, shear, flips) is on.
pub fn geometric_augmentation(p: &TrialParams) -> bool {
    p.rotation_range > 0.0
        || p.width_shift > 0.0
        || p.height_shift > 0.0
        || p.zoom > 0.0
        || p.shear_range > 0.0
        || p.horizontal_flip
        || p.vertical_flip
}

/// `n` channel-shift offsets uniform in +-`p.channel_shift`, as `[n, 1, 1, 1]` f32 (CPU),
/// drawn from `rng` after the brightness factors of the same images.
pub fn random_channel_shifts(p: &TrialParams, n: usize, rng: &mut ChaCha8Rng) -> Tensor {
    let r = p.channel_shift;
    let offsets: Vec<f32> = (0..n).map(|_| rng.gen_range(-r..=r) as f32).collect();
    Tensor::from_slice(&offsets).view([n as i64, 1, 1, 1])
}

/// Keras's `apply_channel_shift`: `offsets` (`[N, 1, 1, 1]`) added to every channel of each
/// image, each channel then clipped to the range it had.
pub fn apply_channel_shift(images: &Tensor, offsets: &Tensor) -> Result<Tensor, TchError> {
    let dims = [2i64, 3].as_slice();
    let low = images.f_amin(dims, true)?;
    let high = images.f_amax(dims, true)?;
    images
        .f_add(offsets)?
        .f_clamp_tensor(Some(&low), Some(&high))
}

/// `n` brightness factors uniform in 1 +- `p.brightness`, as `[n, 1, 1, 1]` f32 (CPU), drawn
/// from `rng` after the affine transforms of the same images. Keras's `brightness_range`
/// multiplies pixel values the same way; here it scales the model input (exactly Keras's
/// semantics with `normalize: unit`).
pub fn random_brightness(p: &TrialParams, n: usize, rng: &mut ChaCha8Rng) -> Tensor {
    let b = p.brightness;
    let factors: Vec<f32> = (0..n)
        .map(|_| (1.0 + rng.gen_range(-b..=b)) as f32)
        .collect();
    Tensor::from_slice(&factors).view([n as i64, 1, 1, 1])
}

/// `n` random affine transforms drawn from `rng` with Keras ImageDataGenerator semantics, as
/// an `[n, 2, 3]` f32 theta tensor (CPU) for `affine_grid_generator` (output -> input
/// coordinates, normalised to -1..1):
/// rotation uniform in +-`rotationRange` degrees; shifts uniform in +-`widthShift` /
/// `heightShift` of the image side; zoom factors for x and y drawn independently, uniform in
/// 1 +- `zoom` (above 1 shows more of the image, i.e. zooms out); shear uniform in
/// +-`shearRange` degrees (Keras's shear matrix [[1, -sin s], [0, cos s]]); horizontal and
/// vertical flips with probability 1/2 each. The matrices are in pixel proportions (a
/// rotation is a rotation); [`apply_affine`] fits them to a non-square image. A setting that
/// is off draws nothing, so adding one leaves the others' draws as they were.
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
        let shear = uniform(rng, p.shear_range).to_radians();
        let vflip = if p.vertical_flip && rng.gen_bool(0.5) {
            -1.0
        } else {
            1.0
        };
        let (s, c) = angle.sin_cos();
        // input = R(angle) * Shear * diag(zx * flip, zy * vflip) * output + t, with
        // R * Shear = [[c, -s], [s, c]] * [[1, -sin], [0, cos]].
        let (ss, sc) = shear.sin_cos();
        let (a, b) = (c, -c * ss - s * sc);
        let (d, e) = (s, -s * ss + c * sc);
        let (x, y) = (zx * flip, zy * vflip);
        theta.extend([a * x, b * y, tx, d * x, e * y, ty].map(|v| v as f32));
    }
    Tensor::from_slice(&theta).view([n as i64, 2, 3])
}

/// Warps `[N, C, H, W]` images by the `[N, 2, 3]` affine `theta` (same device): bilinear
/// sampling, and outside the image what `fill` says. `theta` maps output to input pixels
/// scaled to the image's half-width in x and half-height in y; on a non-square image its
/// cross terms are rescaled to normalised coordinates (x spans W/2 pixels per unit, y H/2),
/// so a rotation stays a rotation instead of shearing the image.
pub fn apply_affine(images: &Tensor, theta: &Tensor, fill: FillMode) -> Result<Tensor, TchError> {
    let size = images.size();
    let (h, w) = (size[2] as f32, size[3] as f32);
    let aspect;
    let theta = if h == w {
        theta
    } else {
        // x_in = a x_out + b y_out + t in pixels is, normalised, a x + b (H/W) y + t.
        let scale = Tensor::from_slice(&[1.0, h / w, 1.0, w / h, 1.0, 1.0])
            .view([1, 2, 3])
            .f_to_device(theta.device())?;
        aspect = theta.f_mul(&scale)?;
        &aspect
    };
    let mut grid = Tensor::f_affine_grid_generator(theta, images.size(), false)?;
    // grid_sampler's padding modes: 0 zeros, 1 border, 2 reflection (about the pixel edges
    // with align_corners false: d c b a | a b c d, as Keras's reflect).
    let padding = match fill {
        FillMode::Constant => 0,
        FillMode::Nearest => 1,
        FillMode::Reflect => 2,
        FillMode::Wrap => {
            // Normalised coordinates cover the image in [-1, 1): wrap them into it.
            grid = grid
                .f_add_scalar(1.0)?
                .f_remainder(2.0)?
                .f_sub_scalar(1.0)?;
            1
        }
    };
    // interpolation 0 = bilinear
    images.f_grid_sampler(&grid, 0, padding, false)
}

/// One random augmentation per image of a batch, drawn from `rng`; the images themselves when
/// no augmentation is set. Deterministic for a given `rng` state.
pub fn augment(images: &Tensor, p: &TrialParams, rng: &mut ChaCha8Rng) -> Result<Tensor, TchError> {
    if !augmentation_enabled(p) {
        return Ok(images.shallow_clone());
    }
    let n = images.size()[0] as usize;
    let mut out = images.shallow_clone();
    if geometric_augmentation(p) {
        let theta = random_thetas(p, n, rng).f_to_device(images.device())?;
        out = apply_affine(&out, &theta, p.fill_mode)?;
    }
    if p.brightness > 0.0 {
        out = out.f_mul(&random_brightness(p, n, rng).f_to_device(images.device())?)?;
    }
    if p.channel_shift > 0.0 {
        let offsets = random_channel_shifts(p, n, rng).f_to_device(images.device())?;
        out = apply_channel_shift(&out, &offsets)?;
    }
    Ok(out)
}

fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The seed of one epoch (1-based) of a trial: libtorch is reseeded with it (as i64 bits) at
/// the start of the epoch, and the augmentation generator is drawn from it.
pub fn epoch_seed(seed: u64, epoch: u32) -> u64 {
    splitmix64(seed ^ splitmix64(u64::from(epoch).wrapping_add(0x5851_f42d_4c95_7f2d)))
}

/// The generator stream of the augmentation preview ([`data_preview`]); training uses 1.
const PREVIEW_STREAM: u64 = 2;

/// The augmentation generator of one epoch of a trial: ChaCha8 seeded by
/// [`epoch_seed`]`(seed, epoch)`, on its own stream (so it is independent of the validation
/// split drawn from the trial seed).
pub fn augmentation_rng(seed: u64, epoch: u32) -> ChaCha8Rng {
    let mut rng = ChaCha8Rng::seed_from_u64(epoch_seed(seed, epoch));
    rng.set_stream(1);
    rng
}

/// FNV-1a (64 bits) of the serde_json text of `p`: what a checkpoint records of the trial's
/// hyperparameters; stable across builds and platforms.
pub fn params_hash(p: &TrialParams) -> u64 {
    let json = serde_json::to_vec(p).unwrap_or_default();
    json.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

fn loss_of(
    logits: &Tensor,
    labels: &Tensor,
    output: Output,
    reduction: Reduction,
) -> Result<Tensor, TchError> {
    smoothed_loss_of(logits, labels, output, reduction, 0.0)
}

/// Cross-entropy with label smoothing `smoothing` (0: none): softmax targets 1 - s + s/K
/// and s/K (PyTorch's `label_smoothing`, as Keras's), sigmoid targets 1 - s/2 and s/2
/// (Keras's `binary_crossentropy(label_smoothing=s)`).
fn smoothed_loss_of(
    logits: &Tensor,
    labels: &Tensor,
    output: Output,
    reduction: Reduction,
    smoothing: f64,
) -> Result<Tensor, TchError> {
    match output {
        Output::Softmax => {
            logits.f_cross_entropy_loss::<Tensor>(labels, None, reduction, -100, smoothing)
        }
        Output::Sigmoid => {
            let mut targets = labels.f_to_kind(Kind::Float)?;
            if smoothing > 0.0 {
                targets = targets
                    .f_mul_scalar(1.0 - smoothing)?
                    .f_add_scalar(0.5 * smoothing)?;
            }
            logits
                .f_view([-1])?
                .f_binary_cross_entropy_with_logits::<Tensor>(&targets, None, None, reduction)
        }
    }
}

/// The state of the `plateau` schedule (Keras's `ReduceLROnPlateau` on the validation
/// loss, `min_delta` 1e-4, no cooldown): the rate of the next epoch, the best validation
/// loss so far and the epochs since it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PlateauState {
    pub learning_rate: f64,
    pub best_val_loss: f64,
    pub wait: u32,
}

/// An improvement of the validation loss smaller than this does not count (Keras's
/// `min_delta`).
const PLATEAU_MIN_DELTA: f64 = 1e-4;

impl PlateauState {
    pub fn new(p: &TrialParams) -> Self {
        PlateauState {
            learning_rate: p.learning_rate,
            best_val_loss: f64::INFINITY,
            wait: 0,
        }
    }

    /// Takes an epoch's validation loss; lowers the rate when `lrPatience` epochs passed
    /// without a new best.
    pub fn observe(&mut self, p: &TrialParams, val_loss: f64) {
        if val_loss < self.best_val_loss - PLATEAU_MIN_DELTA {
            self.best_val_loss = val_loss;
            self.wait = 0;
            return;
        }
        self.wait += 1;
        if self.wait >= p.lr_patience.max(1) {
            self.learning_rate = (self.learning_rate * p.lr_gamma).max(p.lr_min);
            self.wait = 0;
        }
    }
}

/// The learning rate epoch `epoch` trains with (fine-tuning epochs scaled to
/// `fineTuneLearningRate`, see [`TrialParams::scheduled_learning_rate`]).
fn epoch_learning_rate(p: &TrialParams, epoch: u32, plateau: &PlateauState) -> f64 {
    match p.lr_schedule {
        LrSchedule::Plateau if p.fine_tuning_in(epoch) => {
            plateau.learning_rate * p.fine_tune_rate() / p.learning_rate
        }
        LrSchedule::Plateau => plateau.learning_rate,
        _ => p.scheduled_learning_rate(epoch),
    }
}

/// True when `patience` is on and `patience` epochs passed since the best one.
fn patience_ran_out(p: &TrialParams, epoch: u32, best_epoch: u32) -> bool {
    p.patience > 0 && epoch.saturating_sub(best_epoch) >= p.patience
}

/// Number of correct predictions, as an i64 scalar tensor on the logits' device.
/// The predicted class of each row of `logits`.
fn predicted_of(logits: &Tensor, output: Output) -> Result<Tensor, TchError> {
    match output {
        Output::Softmax => logits.f_argmax(-1, false),
        Output::Sigmoid => logits.f_view([-1])?.f_gt(0.0)?.f_to_kind(Kind::Int64),
    }
}

fn correct_of(logits: &Tensor, labels: &Tensor, output: Output) -> Result<Tensor, TchError> {
    predicted_of(logits, output)?
        .f_eq_tensor(labels)?
        .f_sum(Kind::Int64)
}

/// Mean loss and accuracy of `net` (evaluation mode, no gradients) over a split already on
/// its device, in batches of [`EVAL_BATCH`]; one host read at the end.
pub fn evaluate(net: &Net, split: &Split, output: Output) -> Result<(f64, f64), TchError> {
    let (loss, accuracy, _) = evaluation_pass(net, split, output, false)?;
    Ok((loss, accuracy))
}

/// [`evaluate`], and with `predict` the true label and the prediction of every example, in
/// order (the test pass gives the test report its predictions without a second pass).
fn evaluation_pass(
    net: &Net,
    split: &Split,
    output: Output,
    predict: bool,
) -> Result<(f64, f64, Option<Predictions>), TchError> {
    let n = split.len() as i64;
    if n == 0 {
        return Ok((0.0, 0.0, predict.then(Predictions::default)));
    }
    let _guard = tch::no_grad_guard();
    let device = split.images.device();
    let mut loss = Tensor::f_zeros([], (Kind::Float, device))?;
    let mut correct = Tensor::f_zeros([], (Kind::Int64, device))?;
    let mut predicted = Vec::new();
    let mut start = 0;
    while start < n {
        let len = EVAL_BATCH.min(n - start);
        let xs = split.images.f_narrow(0, start, len)?;
        let ys = split.labels.f_narrow(0, start, len)?;
        let logits = net.f_forward_t(&xs, false)?;
        loss = loss.f_add(&loss_of(&logits, &ys, output, Reduction::Sum)?)?;
        let batch_predicted = predicted_of(&logits, output)?;
        correct = correct.f_add(&batch_predicted.f_eq_tensor(&ys)?.f_sum(Kind::Int64)?)?;
        if predict {
            predicted.push(batch_predicted);
        }
        start += len;
    }
    let loss = loss.f_double_value(&[])? / n as f64;
    let accuracy = correct.f_int64_value(&[])? as f64 / n as f64;
    let predictions = if predict {
        let to_vec = |t: Tensor| -> Result<Vec<i64>, TchError> {
            let t = t
                .f_to_kind(Kind::Int64)?
                .f_to_device(Device::Cpu)?
                .f_contiguous()?;
            Vec::<i64>::try_from(&t).map_err(|e| TchError::Convert(e.to_string()))
        };
        Some(Predictions {
            truth: to_vec(split.labels.shallow_clone())?,
            predicted: to_vec(Tensor::f_cat(&predicted, 0)?)?,
        })
    } else {
        None
    };
    Ok((loss, accuracy, predictions))
}

/// Every example's true label and predicted class, in split order.
#[derive(Debug, Default)]
struct Predictions {
    truth: Vec<i64>,
    predicted: Vec<i64>,
}

/// One image of a split (`[C, H, W]`, any scaling) as PNG bytes, rescaled to 0..255: what
/// the model saw, after resizing and channel conversion.
fn image_png(image: &Tensor) -> Result<Vec<u8>, TrainError> {
    let image = image
        .f_to_kind(Kind::Float)?
        .f_to_device(Device::Cpu)?
        .f_contiguous()?;
    let size = image.size();
    let (c, h, w) = match size[..] {
        [c, h, w] => (c as usize, h as u32, w as u32),
        _ => return Err(TrainError::Data(format!("an image of shape {size:?}"))),
    };
    let values = Vec::<f32>::try_from(&image.f_reshape([-1])?)
        .map_err(|e| TrainError::Torch(e.to_string()))?;
    let (lo, hi) = values
        .iter()
        .fold((f32::MAX, f32::MIN), |(lo, hi), &v| (lo.min(v), hi.max(v)));
    let scale = if hi > lo { 255.0 / (hi - lo) } else { 0.0 };
    let plane = (h * w) as usize;
    // Planar [C, H, W] to interleaved [H, W, C].
    let pixels: Vec<u8> = (0..plane)
        .flat_map(|i| (0..c).map(move |ch| (ch, i)))
        .map(|(ch, i)| ((values[ch * plane + i] - lo) * scale).round() as u8)
        .collect();
    let color = match c {
        1 => image::ExtendedColorType::L8,
        3 => image::ExtendedColorType::Rgb8,
        _ => return Err(TrainError::Data(format!("an image with {c} channels"))),
    };
    let mut png = Vec::new();
    image::ImageEncoder::write_image(
        image::codecs::png::PngEncoder::new(&mut png),
        &pixels,
        w,
        h,
        color,
    )
    .map_err(|e| TrainError::Data(format!("encoding an image as PNG: {e}")))?;
    Ok(png)
}

/// The confusion matrix of the test split and its first misclassified images.
fn test_report(
    test: &Split,
    predictions: &Predictions,
    output: Output,
    classes: i64,
) -> Result<Option<TestReport>, TrainError> {
    use base64::Engine;
    let k = match output {
        Output::Sigmoid => 2,
        Output::Softmax => classes.max(0) as usize,
    };
    if k > MAX_CLASSES || test.is_empty() {
        return Ok(None);
    }
    let Predictions { truth, predicted } = predictions;
    let (confusion, wrong) = TestReport::count(k, truth, predicted);
    let misclassified = wrong
        .into_iter()
        .map(|i| {
            let png = image_png(&test.images.f_get(i as i64)?)?;
            Ok(Misclassified {
                index: i as u32,
                truth: truth[i] as u32,
                predicted: predicted[i] as u32,
                png_base64: base64::engine::general_purpose::STANDARD.encode(png),
            })
        })
        .collect::<Result<Vec<_>, TrainError>>()?;
    Ok(Some(TestReport {
        class_names: Vec::new(),
        confusion,
        misclassified,
    }))
}

/// The first training images of each class as the model sees them, and, when the trial
/// augments, the first training image followed by [`AUGMENTED_DRAWS`] draws of it under the
/// trial's settings. The draws come from their own generator: training's are untouched.
fn data_preview(train: &Split, p: &TrialParams, classes: i64) -> Result<DataPreview, TrainError> {
    use base64::Engine;
    let base64 = |png: Vec<u8>| base64::engine::general_purpose::STANDARD.encode(png);
    // A sigmoid output has one logit for two classes.
    let k = classes.max(2) as usize;
    let labels = Vec::<i64>::try_from(
        &train
            .labels
            .f_to_kind(Kind::Int64)?
            .f_to_device(Device::Cpu)?
            .f_contiguous()?,
    )
    .map_err(|e| TrainError::Torch(e.to_string()))?;
    let samples = DataPreview::pick(&labels, k)
        .into_iter()
        .map(|(class, i)| {
            Ok(Sample {
                class,
                index: i as u32,
                png_base64: base64(image_png(&train.images.f_get(i as i64)?)?),
            })
        })
        .collect::<Result<Vec<_>, TrainError>>()?;
    let mut augmented = Vec::new();
    if augmentation_enabled(p) && !train.is_empty() {
        let first = train.images.f_narrow(0, 0, 1)?;
        let mut rng = ChaCha8Rng::seed_from_u64(p.seed);
        rng.set_stream(PREVIEW_STREAM);
        let draws = augment(
            &first.f_repeat([AUGMENTED_DRAWS as i64, 1, 1, 1])?,
            p,
            &mut rng,
        )?;
        augmented.push(base64(image_png(&first.f_get(0)?)?));
        for d in 0..AUGMENTED_DRAWS as i64 {
            augmented.push(base64(image_png(&draws.f_get(d)?)?));
        }
    }
    Ok(DataPreview {
        class_names: Vec::new(),
        samples,
        augmentation: augmentation_words(p),
        augmented,
    })
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

/// Where a file is written before the rename: the same folder and extension (the extension
/// picks the format), a hidden temporary stem unique to this process and call.
fn temp_weights_path(path: &Path) -> PathBuf {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let name = match path.extension() {
        Some(ext) => format!(
            ".{stem}.tmp-{}-{n}.{}",
            std::process::id(),
            ext.to_string_lossy()
        ),
        None => format!(".{stem}.tmp-{}-{n}", std::process::id()),
    };
    path.with_file_name(name)
}

/// Writes `path` atomically: `write` fills a temporary file in the same folder, which is
/// fsynced and renamed over `path`; the folder is fsynced too (best effort).
fn write_atomically(
    path: &Path,
    what: &str,
    write: impl FnOnce(&Path) -> Result<(), TchError>,
) -> Result<(), TrainError> {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
    if let Some(dir) = dir {
        std::fs::create_dir_all(dir)
            .map_err(|e| TrainError::Data(format!("cannot create {}: {e}", dir.display())))?;
    }
    let tmp = temp_weights_path(path);
    let result = write(&tmp)
        .map_err(|e| format!("cannot write {what} to {}: {e}", tmp.display()))
        .and_then(|()| {
            std::fs::File::open(&tmp)
                .and_then(|f| f.sync_all())
                .map_err(|e| format!("cannot sync {}: {e}", tmp.display()))
        })
        .and_then(|()| {
            std::fs::rename(&tmp, path)
                .map_err(|e| format!("cannot rename {} to {}: {e}", tmp.display(), path.display()))
        });
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(TrainError::Data(e));
    }
    if let Ok(d) = std::fs::File::open(dir.unwrap_or(Path::new("."))) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// Saves named tensors atomically (see [`write_atomically`]): safetensors when the path ends
/// in `.safetensors`, libtorch's format otherwise (as `VarStore::save`).
fn save_named(named: &[(String, Tensor)], path: &Path) -> Result<(), TrainError> {
    let safetensors = path.extension().is_some_and(|e| e == "safetensors");
    write_atomically(path, "weights", |tmp| {
        if safetensors {
            Tensor::write_safetensors(named, tmp)
        } else {
            Tensor::save_multi(named, tmp)
        }
    })
}

/// Copies of all the variables of `vs` on the CPU, by name (sorted).
fn snapshot(vs: &nn::VarStore) -> Result<Vec<(String, Tensor)>, TchError> {
    let _guard = tch::no_grad_guard();
    let mut out = Vec::new();
    for (name, t) in vs.variables() {
        let mut copy = Tensor::f_empty(t.size(), (t.kind(), Device::Cpu))?;
        copy.f_copy_(&t)?;
        out.push((name, copy));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

/// Loads best weights (safetensors, whatever the file is called: the cache names files by
/// digest, so `VarStore::load`'s guess from the extension would pick the wrong format) into
/// every variable of `vs`; a variable the file lacks is an error.
pub fn load_weights(vs: &nn::VarStore, path: &Path) -> Result<(), TchError> {
    let named: HashMap<String, Tensor> = Tensor::read_safetensors(path)?.into_iter().collect();
    let _guard = tch::no_grad_guard();
    for (name, var) in vs.variables() {
        let source = named.get(&name).ok_or_else(|| {
            TchError::TensorNameNotFound(name.clone(), path.display().to_string())
        })?;
        var.shallow_clone().f_copy_(source)?;
    }
    Ok(())
}

/// Copies named tensors into the variables of `vs` of the same names.
fn restore(vs: &nn::VarStore, named: &[(String, Tensor)]) -> Result<(), TchError> {
    let _guard = tch::no_grad_guard();
    let vars = vs.variables();
    for (name, t) in named {
        match vars.get(name) {
            Some(var) => {
                var.shallow_clone().f_copy_(t)?;
            }
            None => {
                return Err(TchError::TensorNameNotFound(
                    name.clone(),
                    "var store".into(),
                ))
            }
        }
    }
    Ok(())
}

/// Saves the variables atomically: to a temporary name in the same folder, fsynced, then
/// renamed. Safetensors when the path ends in `.safetensors`, libtorch's format otherwise.
pub fn save_weights(vs: &nn::VarStore, path: &Path) -> Result<(), TrainError> {
    save_named(&snapshot(vs)?, path)
}

/// Version of the checkpoint layout (`meta.version`).
pub const CHECKPOINT_VERSION: i64 = 1;

/// The bookkeeping of a checkpoint (its tensors aside).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CheckpointMeta {
    /// The last completed epoch (1-based).
    pub epoch: u32,
    /// The best epoch so far by validation accuracy, and that accuracy.
    pub best_epoch: u32,
    pub best_val_accuracy: f64,
    /// [`params_hash`] of the trial's parameters.
    pub params_hash: u64,
    /// The `plateau` schedule's state after this epoch (None in checkpoints written before
    /// it was kept).
    pub plateau: Option<PlateauState>,
}

fn meta_value(map: &HashMap<String, Tensor>, name: &str, kind: Kind) -> Result<Tensor, String> {
    let t = map.get(name).ok_or_else(|| format!("no {name}"))?;
    if t.numel() != 1 || t.kind() != kind {
        return Err(format!(
            "{name} is {:?} {:?}, expected one {kind:?}",
            t.kind(),
            t.size()
        ));
    }
    t.f_reshape([-1]).map_err(|e| e.to_string())
}

fn meta_i64(map: &HashMap<String, Tensor>, name: &str) -> Result<i64, String> {
    meta_value(map, name, Kind::Int64)?
        .f_int64_value(&[0])
        .map_err(|e| e.to_string())
}

fn parse_meta(map: &HashMap<String, Tensor>) -> Result<CheckpointMeta, String> {
    let version = meta_i64(map, "meta.version")?;
    if version != CHECKPOINT_VERSION {
        return Err(format!(
            "checkpoint version {version}, this build reads {CHECKPOINT_VERSION}"
        ));
    }
    let epoch = |name| -> Result<u32, String> {
        let v = meta_i64(map, name)?;
        u32::try_from(v).map_err(|_| format!("{name} is {v}"))
    };
    let best_val_accuracy = meta_value(map, "meta.best_val_accuracy", Kind::Double)?
        .f_double_value(&[0])
        .map_err(|e| e.to_string())?;
    let double = |name| -> Result<f64, String> {
        meta_value(map, name, Kind::Double)?
            .f_double_value(&[0])
            .map_err(|e| e.to_string())
    };
    let plateau = if map.contains_key("meta.plateau_lr") {
        Some(PlateauState {
            learning_rate: double("meta.plateau_lr")?,
            best_val_loss: double("meta.plateau_best")?,
            wait: epoch("meta.plateau_wait")?,
        })
    } else {
        None
    };
    Ok(CheckpointMeta {
        epoch: epoch("meta.epoch")?,
        best_epoch: epoch("meta.best_epoch")?,
        best_val_accuracy,
        params_hash: meta_i64(map, "meta.params_hash")? as u64,
        plateau,
    })
}

fn read_tensors(path: &Path) -> Result<HashMap<String, Tensor>, String> {
    Ok(Tensor::read_safetensors(path)
        .map_err(|e| e.to_string())?
        .into_iter()
        .collect())
}

/// Reads the bookkeeping of a checkpoint file (for callers deciding whether to resume; the
/// trainer checks it again).
pub fn read_checkpoint_meta(path: &Path) -> Result<CheckpointMeta, TrainError> {
    read_tensors(path)
        .and_then(|map| parse_meta(&map))
        .map_err(|e| TrainError::Data(format!("checkpoint {}: {e}", path.display())))
}

/// Writes the checkpoint of a completed epoch (see the module documentation).
fn write_checkpoint(
    path: &Path,
    vs: &nn::VarStore,
    opt: &Optim,
    best_weights: &[(String, Tensor)],
    meta: &CheckpointMeta,
) -> Result<(), TrainError> {
    let mut named: Vec<(String, Tensor)> = Vec::new();
    for (name, t) in vs.variables() {
        named.push((
            format!("model.{name}"),
            t.f_detach()?.f_to_device(Device::Cpu)?.f_contiguous()?,
        ));
    }
    for (name, t) in best_weights {
        named.push((format!("best.{name}"), t.shallow_clone()));
    }
    named.extend(opt.state()?);
    named.extend([
        ("meta.version".to_string(), Tensor::from(CHECKPOINT_VERSION)),
        (
            "meta.epoch".to_string(),
            Tensor::from(i64::from(meta.epoch)),
        ),
        (
            "meta.best_epoch".to_string(),
            Tensor::from(i64::from(meta.best_epoch)),
        ),
        (
            "meta.best_val_accuracy".to_string(),
            Tensor::from(meta.best_val_accuracy),
        ),
        (
            "meta.params_hash".to_string(),
            Tensor::from(meta.params_hash as i64),
        ),
    ]);
    if let Some(plateau) = &meta.plateau {
        named.extend([
            (
                "meta.plateau_lr".to_string(),
                Tensor::from(plateau.learning_rate),
            ),
            (
                "meta.plateau_best".to_string(),
                Tensor::from(plateau.best_val_loss),
            ),
            (
                "meta.plateau_wait".to_string(),
                Tensor::from(i64::from(plateau.wait)),
            ),
        ]);
    }
    write_atomically(path, "the checkpoint", |tmp| {
        Tensor::write_safetensors(&named, tmp)
    })
}

/// A checkpoint that fits the trial, read and checked but not yet applied.
struct Resumable {
    meta: CheckpointMeta,
    tensors: HashMap<String, Tensor>,
}

/// Reads the checkpoint at `path` and checks it fits this trial (parameters, epochs left, every
/// variable and optimiser state present with its shape); the reason when it does not.
fn read_checkpoint(
    path: &Path,
    p: &TrialParams,
    vs: &nn::VarStore,
    opt: &Optim,
) -> Result<Resumable, String> {
    let tensors = read_tensors(path)?;
    let meta = parse_meta(&tensors)?;
    if meta.params_hash != params_hash(p) {
        return Err("it was written for other parameters".into());
    }
    if meta.epoch == 0 || meta.epoch >= p.epochs {
        return Err(format!(
            "its epoch {} is not one to continue from (the trial has {} epochs)",
            meta.epoch, p.epochs
        ));
    }
    if meta.best_epoch == 0 || meta.best_epoch > meta.epoch {
        return Err(format!(
            "best epoch {} for epoch {}",
            meta.best_epoch, meta.epoch
        ));
    }
    for (name, var) in vs.variables() {
        for prefix in ["model", "best"] {
            let key = format!("{prefix}.{name}");
            let t = tensors.get(&key).ok_or_else(|| format!("no {key}"))?;
            if t.size() != var.size() || t.kind() != var.kind() {
                return Err(format!(
                    "{key} is {:?} {:?}, expected {:?} {:?}",
                    t.kind(),
                    t.size(),
                    var.kind(),
                    var.size()
                ));
            }
        }
    }
    opt.check_state(&tensors)?;
    Ok(Resumable { meta, tensors })
}

/// Each split is `[N, channels, H, W]` with the training split's `H x W`.
fn check_split(
    name: &str,
    s: &Split,
    channels: i64,
    (height, width): (i64, i64),
) -> Result<(), TrainError> {
    let size = s.images.size();
    if size.len() != 4 || size[1] != channels || size[2] != height || size[3] != width {
        return Err(TrainError::Data(format!(
            "{name} images have shape {size:?}, expected [N, {channels}, {height}, {width}]"
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
/// accuracy is saved to `weights_path` and its weights give the test metrics.
///
/// With `control.checkpoint`, every completed epoch is checkpointed there, and a usable
/// checkpoint found at the start is resumed from: its epochs are not run again and
/// `on_epoch` is called for the new ones only (see [`TrialControl`]). `control.stop`
/// interrupts the trial between batches ([`TrainError::Interrupted`]); `control.progress`
/// follows it batch by batch.
///
/// libtorch errors and panics become [`TrainError::Torch`]; a NaN/inf training loss
/// [`TrainError::Diverged`]. The caller sets the thread count (`tch::set_num_threads`).
#[allow(clippy::too_many_arguments)]
pub fn run_trial_with(
    prepared: &Prepared,
    p: &TrialParams,
    channels: i64,
    classes: i64,
    device: Device,
    weights_path: &Path,
    control: &TrialControl,
    on_epoch: &mut dyn FnMut(&EpochRecord, &TrialInfo) -> bool,
) -> Result<TrainOutcome, TrainError> {
    match panic::catch_unwind(AssertUnwindSafe(|| {
        trial(
            prepared,
            p,
            channels,
            classes,
            device,
            weights_path,
            control,
            on_epoch,
            DIVERGENCE_CHECK_EVERY,
        )
    })) {
        Ok(result) => result,
        Err(payload) => Err(TrainError::Torch(panic_message(payload))),
    }
}

/// [`run_trial_with`] without control: no checkpoint, no stop flag, no progress.
pub fn run_trial(
    prepared: &Prepared,
    p: &TrialParams,
    channels: i64,
    classes: i64,
    device: Device,
    weights_path: &Path,
    on_epoch: &mut dyn FnMut(&EpochRecord, &TrialInfo) -> bool,
) -> Result<TrainOutcome, TrainError> {
    run_trial_with(
        prepared,
        p,
        channels,
        classes,
        device,
        weights_path,
        &TrialControl::default(),
        on_epoch,
    )
}

#[allow(clippy::too_many_arguments)]
fn trial(
    prepared: &Prepared,
    p: &TrialParams,
    channels: i64,
    classes: i64,
    device: Device,
    weights_path: &Path,
    control: &TrialControl,
    on_epoch: &mut dyn FnMut(&EpochRecord, &TrialInfo) -> bool,
    check_every: usize,
) -> Result<TrainOutcome, TrainError> {
    for (name, s) in [
        ("training", &prepared.train),
        ("validation", &prepared.val),
        ("test", &prepared.test),
    ] {
        check_split(name, s, channels, prepared.train.input_size())?;
    }
    let n_train = prepared.train.len() as i64;
    if n_train == 0 {
        return Err(TrainError::Data("no training examples".into()));
    }
    if prepared.val.is_empty() {
        return Err(TrainError::Data("no validation examples".into()));
    }
    let input_size = prepared.train.input_size();

    let phase = Instant::now();
    tch::manual_seed(p.seed as i64);
    let vs = nn::VarStore::new(device);
    let mut net = model::build(&vs.root(), p, channels, input_size, classes);
    let precision = model::resolve_precision(p.precision, device);
    if precision == Precision::Bf16 {
        net.compute_in(Kind::BFloat16);
    }
    let transfer = match control.init_weights {
        Some(path) => Some(
            crate::transfer::apply(&vs, path, &p.init_from, p.freeze, p.arch)
                .map_err(TrainError::Data)?,
        ),
        None => None,
    };
    let info = TrialInfo {
        parameter_count: model::parameter_count(&vs),
        train_examples: prepared.train.len() as u32,
        val_examples: prepared.val.len() as u32,
        test_examples: prepared.test.len() as u32,
        transfer,
        precision,
        data_preview: data_preview(&prepared.train, p, classes)
            .inspect_err(|e| tracing::warn!("no data preview for this trial: {e}"))
            .ok(),
    };
    // Channels-last convolutions on the CPU (oneDNN): measured 1.4x at one thread. On CUDA
    // the default layout is kept (not measured there).
    if device == Device::Cpu {
        model::use_channels_last(&vs)?;
    }
    // Fine-tuning (`fineTuneAfter`): the top stages of the frozen body train from the epoch
    // after it, with a fresh optimiser. A checkpoint written in a fine-tuning epoch holds the
    // optimiser of that stage, so they are unfrozen before the optimiser is built to read it.
    let resumes_fine_tuning = control
        .checkpoint
        .filter(|c| c.exists())
        .and_then(|c| read_checkpoint_meta(c).ok())
        .is_some_and(|m| {
            m.params_hash == params_hash(p) && m.epoch < p.epochs && p.fine_tuning_in(m.epoch)
        });
    let mut fine_tuned = if resumes_fine_tuning {
        crate::transfer::unfreeze_top(&vs, p)
    } else {
        Vec::new()
    };
    let mut opt = Optim::new(&vs, OptimConfig::of(p))?;
    tracing::debug!(
        seconds = phase.elapsed().as_secs_f64(),
        "phase: model build"
    );

    // The best epoch so far (epoch, validation accuracy) and its weights (CPU copies).
    let mut best: Option<(u32, f64)> = None;
    let mut best_weights: Vec<(String, Tensor)> = Vec::new();
    let mut resumed_from_epoch = 0;
    let mut plateau = PlateauState::new(p);
    if let Some(path) = control.checkpoint.filter(|c| c.exists()) {
        match read_checkpoint(path, p, &vs, &opt) {
            Ok(Resumable { meta, tensors }) => {
                let _guard = tch::no_grad_guard();
                for (name, var) in vs.variables() {
                    var.shallow_clone()
                        .f_copy_(&tensors[&format!("model.{name}")])?;
                }
                opt.load_state(&tensors)?;
                let mut names: Vec<String> = vs.variables().into_keys().collect();
                names.sort();
                best_weights = names
                    .into_iter()
                    .map(|name| {
                        let t = tensors[&format!("best.{name}")].shallow_clone();
                        (name, t)
                    })
                    .collect();
                // The weights file may be missing or ahead of the checkpoint (a crash between
                // the two writes): make it the checkpoint's best again.
                save_named(&best_weights, weights_path)?;
                best = Some((meta.best_epoch, meta.best_val_accuracy));
                resumed_from_epoch = meta.epoch;
                if let Some(state) = meta.plateau {
                    plateau = state;
                }
                tracing::info!(
                    checkpoint = %path.display(),
                    epoch = meta.epoch,
                    best_epoch = meta.best_epoch,
                    "resuming the trial from its checkpoint"
                );
            }
            Err(reason) => tracing::warn!(
                checkpoint = %path.display(),
                "checkpoint not used, starting the trial afresh: {reason}"
            ),
        }
    }
    if resumed_from_epoch == 0 && !fine_tuned.is_empty() {
        // The checkpoint was not used after all: start frozen, as a fresh trial does.
        for name in fine_tuned.drain(..) {
            let _ = vs.variables()[&name]
                .shallow_clone()
                .set_requires_grad(false);
        }
        opt = Optim::new(&vs, OptimConfig::of(p))?;
    }

    let phase = Instant::now();
    let train = to_device(&prepared.train, device)?;
    let val = to_device(&prepared.val, device)?;
    tracing::debug!(
        seconds = phase.elapsed().as_secs_f64(),
        "phase: splits to device"
    );
    let batch = (p.batch_size as i64).max(1);
    let n_batches = (n_train + batch - 1) / batch;
    let augmenting = augmentation_enabled(p);
    let hash = params_hash(p);

    let mut stopped = false;
    // A checkpoint written at the epoch patience ran out (the trial then ended before it
    // finished): nothing is left to train.
    let mut patience_stopped_at = best
        .filter(|&(best_epoch, _)| {
            resumed_from_epoch > 0 && patience_ran_out(p, resumed_from_epoch, best_epoch)
        })
        .map(|_| resumed_from_epoch);
    let first_epoch = if patience_stopped_at.is_some() {
        p.epochs + 1
    } else {
        resumed_from_epoch + 1
    };
    for epoch in first_epoch..=p.epochs {
        let started = Instant::now();
        if p.fine_tuning_in(epoch) && fine_tuned.is_empty() {
            fine_tuned = crate::transfer::unfreeze_top(&vs, p);
            // A fresh optimiser for the larger set of variables, as Keras recompiles.
            opt = Optim::new(&vs, OptimConfig::of(p))?;
            tracing::info!(
                epoch,
                variables = fine_tuned.len(),
                stages = p.fine_tune_blocks,
                "fine-tuning: the top stages of the body train from now on"
            );
        }
        let learning_rate = epoch_learning_rate(p, epoch, &plateau);
        opt.set_learning_rate(learning_rate)?;
        tch::manual_seed(epoch_seed(p.seed, epoch) as i64);
        let perm = Tensor::f_randperm(n_train, (Kind::Int64, device))?;
        // One augmentation per image of the epoch, drawn up front and copied to the device once.
        let (thetas, brightness, channel_shifts) = if augmenting {
            let mut rng = augmentation_rng(p.seed, epoch);
            let n = n_train as usize;
            let thetas = geometric_augmentation(p)
                .then(|| random_thetas(p, n, &mut rng).f_to_device(device))
                .transpose()?;
            let brightness = (p.brightness > 0.0)
                .then(|| random_brightness(p, n, &mut rng).f_to_device(device))
                .transpose()?;
            let channel_shifts = (p.channel_shift > 0.0)
                .then(|| random_channel_shifts(p, n, &mut rng).f_to_device(device))
                .transpose()?;
            (thetas, brightness, channel_shifts)
        } else {
            (None, None, None)
        };
        let mut loss_sum = Tensor::f_zeros([], (Kind::Float, device))?;
        let mut correct = Tensor::f_zeros([], (Kind::Int64, device))?;
        // Detached per-batch losses since the last check, to name the first bad batch.
        let mut pending: Vec<Tensor> = Vec::with_capacity(check_every);
        let mut pending_first = 0i64;
        for b in 0..n_batches {
            if control.stop.is_some_and(|s| s.load(Ordering::Relaxed)) {
                return Err(TrainError::Interrupted { epoch });
            }
            let start = b * batch;
            let len = batch.min(n_train - start);
            let idx = perm.f_narrow(0, start, len)?;
            let mut xs = train.images.f_index_select(0, &idx)?;
            let ys = train.labels.f_index_select(0, &idx)?;
            if let Some(thetas) = &thetas {
                xs = apply_affine(&xs, &thetas.f_narrow(0, start, len)?, p.fill_mode)?;
            }
            if let Some(factors) = &brightness {
                xs = xs.f_mul(&factors.f_narrow(0, start, len)?)?;
            }
            if let Some(offsets) = &channel_shifts {
                xs = apply_channel_shift(&xs, &offsets.f_narrow(0, start, len)?)?;
            }
            let logits = net.f_forward_t(&xs, true)?;
            let loss =
                smoothed_loss_of(&logits, &ys, p.output, Reduction::Mean, p.label_smoothing)?;
            opt.backward_step(&loss)?;
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
            if let Some(progress) = control.progress {
                progress.store(encode_progress(epoch, b as u32 + 1), Ordering::Relaxed);
            }
        }
        let train_seconds = started.elapsed().as_secs_f64();
        let train_loss = loss_sum.f_double_value(&[])? / n_train as f64;
        let train_accuracy = correct.f_int64_value(&[])? as f64 / n_train as f64;
        let phase = Instant::now();
        let (val_loss, val_accuracy) = evaluate(&net, &val, p.output)?;
        tracing::debug!(seconds = train_seconds, "phase: training loop");
        tracing::debug!(seconds = phase.elapsed().as_secs_f64(), "phase: validation");
        let report = EpochRecord {
            epoch,
            train_loss,
            train_accuracy,
            val_loss,
            val_accuracy,
            seconds: started.elapsed().as_secs_f64(),
            images_per_second: n_train as f64 / train_seconds.max(1e-9),
            learning_rate,
        };
        if p.lr_schedule == LrSchedule::Plateau {
            plateau.observe(p, val_loss);
        }
        let phase = Instant::now();
        if best.is_none_or(|(_, acc)| val_accuracy > acc) {
            best = Some((epoch, val_accuracy));
            best_weights = snapshot(&vs)?;
            save_named(&best_weights, weights_path)?;
        }
        tracing::debug!(
            seconds = phase.elapsed().as_secs_f64(),
            "phase: best weights"
        );
        // Checkpoint first, report second: the report carries the epoch's checkpoint (the
        // worker uploads it in `on_epoch`), so the daemon records an epoch only with the
        // checkpoint to resume after it. A crash between the two re-runs this epoch from the
        // previous recorded checkpoint (its row is upserted, never doubled).
        let phase = Instant::now();
        if let (Some(path), Some((best_epoch, best_val_accuracy))) = (control.checkpoint, best) {
            let meta = CheckpointMeta {
                epoch,
                best_epoch,
                best_val_accuracy,
                params_hash: hash,
                plateau: (p.lr_schedule == LrSchedule::Plateau).then_some(plateau),
            };
            write_checkpoint(path, &vs, &opt, &best_weights, &meta)?;
        }
        tracing::debug!(seconds = phase.elapsed().as_secs_f64(), "phase: checkpoint");
        let proceed = on_epoch(&report, &info);
        if !proceed {
            stopped = true;
            break;
        }
        // At the last epoch the trial ends anyway: patience stopped nothing.
        let more_to_run = epoch < p.epochs;
        if more_to_run && best.is_some_and(|(best_epoch, _)| patience_ran_out(p, epoch, best_epoch))
        {
            patience_stopped_at = Some(epoch);
            break;
        }
    }

    let best_epoch = match best {
        Some((epoch, _)) => epoch,
        None => return Err(TrainError::Data("no epoch ran (epochs is 0)".into())),
    };
    let phase = Instant::now();
    restore(&vs, &best_weights)?;
    drop(train);
    drop(val);
    let test = to_device(&prepared.test, device)?;
    let (test_loss, test_accuracy, predictions) = evaluation_pass(&net, &test, p.output, true)?;
    // The report is a view of the test pass: if it cannot be made, the trial still stands.
    let test_report = predictions
        .map(|predictions| test_report(&test, &predictions, p.output, classes))
        .transpose()
        .unwrap_or_else(|e| {
            tracing::warn!("no test report: {e}");
            None
        })
        .flatten();
    tracing::debug!(
        seconds = phase.elapsed().as_secs_f64(),
        "phase: restore + test"
    );
    Ok(TrainOutcome {
        test_loss,
        test_accuracy,
        best_epoch,
        parameter_count: info.parameter_count,
        stopped,
        patience_stopped_at,
        fine_tuned,
        resumed_from_epoch,
        test_report,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use cnnd_core::sweep::{DenseUnits, LrSchedule, Optimizer};

    fn images(n: i64) -> Tensor {
        tch::manual_seed(1);
        Tensor::rand([n, 1, 12, 12], (Kind::Float, Device::Cpu))
    }

    /// Cached weights are named by digest, with no extension: they must still load as the
    /// safetensors they are (Predict on a trial failed with a zip error when they did not).
    #[test]
    fn weights_load_from_a_file_named_by_digest() {
        let dir = tempfile::tempdir().unwrap();
        let source = nn::VarStore::new(Device::Cpu);
        let _ = (source.root() / "layer").randn("weight", &[3, 4], 0.0, 1.0);
        let file = dir.path().join("2d92707c87ac1b8b");
        Tensor::write_safetensors(&snapshot(&source).unwrap(), &file).unwrap();
        let target = nn::VarStore::new(Device::Cpu);
        let loaded = (target.root() / "layer").zeros("weight", &[3, 4]);
        load_weights(&target, &file).unwrap();
        let expected = &source.variables()["layer.weight"];
        assert!(loaded.allclose(expected, 0.0, 0.0, false));
        let missing = nn::VarStore::new(Device::Cpu);
        let _ = (missing.root() / "other").zeros("bias", &[2]);
        let err = load_weights(&missing, &file).unwrap_err().to_string();
        assert!(err.contains("other.bias"), "{err}");
    }

    #[test]
    fn augmentation_is_identity_when_off_and_deterministic_when_on() {
        tch::set_num_threads(1);
        let xs = images(8);
        let off = TrialParams::default();
        let same = augment(&xs, &off, &mut augmentation_rng(0, 1)).unwrap();
        assert!(same.equal(&xs));
        // The identity transform through the sampler is the identity too (up to rounding).
        let theta = random_thetas(&off, 8, &mut augmentation_rng(0, 1));
        assert!(apply_affine(&xs, &theta, FillMode::Constant)
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
        let a = augment(&xs, &on, &mut augmentation_rng(5, 1)).unwrap();
        let b = augment(&xs, &on, &mut augmentation_rng(5, 1)).unwrap();
        let c = augment(&xs, &on, &mut augmentation_rng(6, 1)).unwrap();
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
        let out = augment(&xs, &p, &mut augmentation_rng(1, 1)).unwrap();
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

    /// A 1x1x9x9 image, black but for one bright pixel at (row, col).
    fn dot(row: i64, col: i64) -> Tensor {
        let x = Tensor::zeros([1, 1, 9, 9], (Kind::Float, Device::Cpu));
        let _ = x.get(0).get(0).get(row).get(col).fill_(1.0);
        x
    }

    /// (row, col) of the brightest pixel of a 1x1xHxW image.
    fn brightest(x: &Tensor) -> (i64, i64) {
        let w = x.size()[3];
        let i = x.view([-1]).argmax(0, false).int64_value(&[]);
        (i / w, i % w)
    }

    fn theta(values: [f32; 6]) -> Tensor {
        Tensor::from_slice(&values).view([1, 2, 3])
    }

    #[test]
    fn each_affine_op_moves_pixels_where_keras_would() {
        // Normalised coordinates: one pixel of a 9-wide image is 2/9.
        let px = 2.0 / 9.0;
        let x = dot(4, 4);
        // A shift of +2 px in x samples the input 2 px to the right: the dot moves left.
        let shifted = apply_affine(
            &x,
            &theta([1.0, 0.0, 2.0 * px, 0.0, 1.0, 0.0]),
            FillMode::Constant,
        )
        .unwrap();
        assert_eq!(brightest(&shifted), (4, 2));
        let shifted = apply_affine(
            &x,
            &theta([1.0, 0.0, 0.0, 0.0, 1.0, -px]),
            FillMode::Constant,
        )
        .unwrap();
        assert_eq!(brightest(&shifted), (5, 4));
        // A horizontal flip mirrors columns.
        let flipped = apply_affine(
            &dot(1, 2),
            &theta([-1.0, 0.0, 0.0, 0.0, 1.0, 0.0]),
            FillMode::Constant,
        )
        .unwrap();
        assert_eq!(brightest(&flipped), (1, 6));
        // A 90 degree rotation turns a dot right of the centre to above or below it.
        let rotated = apply_affine(
            &dot(4, 7),
            &theta([0.0, -1.0, 0.0, 1.0, 0.0, 0.0]),
            FillMode::Constant,
        )
        .unwrap();
        let (r, c) = brightest(&rotated);
        assert_eq!(c, 4);
        assert!(r == 1 || r == 7, "({r}, {c})");
        // On a 9x15 image too: a dot 3 px right of the centre goes 3 px above or below it
        // (were the rotation done in normalised coordinates, 3/7.5 of the half-height: 1.8 px).
        let wide = Tensor::zeros([1, 1, 9, 15], (Kind::Float, Device::Cpu));
        let _ = wide.get(0).get(0).get(4).get(10).fill_(1.0);
        let rotated = apply_affine(
            &wide,
            &theta([0.0, -1.0, 0.0, 1.0, 0.0, 0.0]),
            FillMode::Constant,
        )
        .unwrap();
        let (r, c) = brightest(&rotated);
        assert_eq!(c, 7);
        assert!(r == 1 || r == 7, "({r}, {c})");
        // Zoom factor 0.5 (zoom in) moves a dot twice as far from the centre.
        let zoomed = apply_affine(
            &dot(4, 5),
            &theta([0.5, 0.0, 0.0, 0.0, 0.5, 0.0]),
            FillMode::Constant,
        )
        .unwrap();
        assert_eq!(brightest(&zoomed), (4, 6));
    }

    /// Keras's `fill_mode` on a shift of two pixels to the left (the output's last two
    /// columns sample input columns W and W + 1, outside the image).
    #[test]
    fn fill_modes_fill_what_keras_fills() {
        let w = 6i64;
        // Column j holds j + 1, every row alike.
        let x = Tensor::arange(w, (Kind::Float, Device::Cpu))
            .f_add_scalar(1.0)
            .unwrap()
            .view([1, 1, 1, w])
            .expand([1, 1, 3, w], false)
            .contiguous();
        let px = 2.0 / w as f32;
        let shift = theta([1.0, 0.0, 2.0 * px, 0.0, 1.0, 0.0]);
        let row = |fill| {
            let out = apply_affine(&x, &shift, fill).unwrap();
            Vec::<f32>::try_from(&out.get(0).get(0).get(1)).unwrap()
        };
        for (fill, want) in [
            (FillMode::Constant, [3.0, 4.0, 5.0, 6.0, 0.0, 0.0]),
            (FillMode::Nearest, [3.0, 4.0, 5.0, 6.0, 6.0, 6.0]),
            (FillMode::Reflect, [3.0, 4.0, 5.0, 6.0, 6.0, 5.0]),
            (FillMode::Wrap, [3.0, 4.0, 5.0, 6.0, 1.0, 2.0]),
        ] {
            let got = row(fill);
            assert!(
                got.iter().zip(want).all(|(g, w)| (g - w).abs() < 1e-4),
                "{fill:?}: {got:?}"
            );
        }
    }

    /// Vertical flips mirror rows; shear draws Keras's shear matrix within its range; the
    /// channel shift adds one offset per image and keeps each channel within its range.
    #[test]
    fn vertical_flip_shear_and_channel_shift() {
        let flipped = apply_affine(
            &dot(1, 2),
            &theta([1.0, 0.0, 0.0, 0.0, -1.0, 0.0]),
            FillMode::Constant,
        )
        .unwrap();
        assert_eq!(brightest(&flipped), (7, 2));
        let p = TrialParams {
            vertical_flip: true,
            ..TrialParams::default()
        };
        let t = random_thetas(&p, 200, &mut augmentation_rng(1, 1));
        let t = Vec::<f32>::try_from(&t.view([-1])).unwrap();
        let flips = t.chunks(6).filter(|m| m[4] == -1.0).count();
        assert!(t
            .chunks(6)
            .all(|m| m[0] == 1.0 && (m[4] == 1.0 || m[4] == -1.0)));
        assert!((60..=140).contains(&flips), "{flips} of 200 flipped");

        let p = TrialParams {
            shear_range: 20.0,
            ..TrialParams::default()
        };
        let t = random_thetas(&p, 300, &mut augmentation_rng(2, 1));
        let t = Vec::<f32>::try_from(&t.view([-1])).unwrap();
        let mut widest = 0f32;
        for m in t.chunks(6) {
            // [[1, -sin s], [0, cos s]]
            let shear = (-m[1]).asin();
            assert!(
                (m[4] - shear.cos()).abs() < 1e-6 && m[0] == 1.0 && m[3] == 0.0,
                "{m:?}"
            );
            assert!(shear.to_degrees().abs() <= 20.0 + 1e-3);
            widest = widest.max(shear.to_degrees().abs());
        }
        assert!(widest > 15.0, "the draws span the range: {widest}");
        // With shear off, a rotation stays a pure rotation.
        let rotate = TrialParams {
            rotation_range: 30.0,
            ..TrialParams::default()
        };
        let t = random_thetas(&rotate, 50, &mut augmentation_rng(4, 2));
        for m in Vec::<f32>::try_from(&t.view([-1])).unwrap().chunks(6) {
            assert!(
                (m[0] - m[4]).abs() < 1e-6 && (m[1] + m[3]).abs() < 1e-6,
                "{m:?}"
            );
        }

        // Channel shift: channel 0 spans 0.2..0.6, channel 1 is constant 0.5.
        let img =
            Tensor::from_slice(&[0.2f32, 0.4, 0.6, 0.6, 0.5, 0.5, 0.5, 0.5]).view([1, 2, 2, 2]);
        let up =
            apply_channel_shift(&img, &Tensor::from_slice(&[0.1f32]).view([1, 1, 1, 1])).unwrap();
        assert_eq!(
            Vec::<f32>::try_from(&up.view([-1])).unwrap(),
            [0.3, 0.5, 0.6, 0.6, 0.5, 0.5, 0.5, 0.5]
        );
        let p = TrialParams {
            channel_shift: 0.1,
            ..TrialParams::default()
        };
        let offsets = random_channel_shifts(&p, 100, &mut augmentation_rng(5, 1));
        let offsets = Vec::<f32>::try_from(&offsets.view([-1])).unwrap();
        assert!(offsets.iter().all(|o| o.abs() <= 0.1 + 1e-7));
        assert!(offsets.iter().any(|o| *o > 0.05) && offsets.iter().any(|o| *o < -0.05));
    }

    #[test]
    fn random_transforms_stay_within_their_ranges() {
        let p = TrialParams {
            rotation_range: 10.0,
            width_shift: 0.1,
            zoom: 0.2,
            ..TrialParams::default()
        };
        let t = random_thetas(&p, 500, &mut augmentation_rng(3, 1));
        let t = Vec::<f32>::try_from(&t.view([-1])).unwrap();
        for m in t.chunks(6) {
            let (a, b, tx, c, d, ty) = (m[0], m[1], m[2], m[3], m[4], m[5]);
            assert!(tx.abs() <= 0.2 + 1e-6, "shift {tx}");
            assert_eq!(ty, 0.0, "no height shift asked");
            // Columns are R * (zoom factor): their lengths are the zooms, the angle is the
            // rotation.
            let zx = (a * a + c * c).sqrt();
            let zy = (b * b + d * d).sqrt();
            assert!((0.8 - 1e-5..=1.2 + 1e-5).contains(&zx), "zoom {zx}");
            assert!((0.8 - 1e-5..=1.2 + 1e-5).contains(&zy), "zoom {zy}");
            let angle = c.atan2(a).to_degrees();
            assert!(angle.abs() <= 10.0 + 1e-3, "rotation {angle}");
        }
    }

    #[test]
    fn brightness_scales_each_image_by_one_factor_in_range() {
        let xs = images(64);
        let p = TrialParams {
            brightness: 0.3,
            ..TrialParams::default()
        };
        let out = augment(&xs, &p, &mut augmentation_rng(2, 1)).unwrap();
        let again = augment(&xs, &p, &mut augmentation_rng(2, 1)).unwrap();
        assert!(out.equal(&again));
        for i in 0..64 {
            let ratio =
                (out.get(i).sum(Kind::Float) / xs.get(i).sum(Kind::Float)).double_value(&[]);
            assert!((0.7 - 1e-4..=1.3 + 1e-4).contains(&ratio), "factor {ratio}");
            // One factor for the whole image: the ratio is the same pixel by pixel.
            let per_pixel = out.get(i) / (xs.get(i) + 1e-12);
            let spread = (per_pixel.max() - per_pixel.min()).double_value(&[]);
            assert!(spread < 1e-3, "image {i} scaled unevenly ({spread})");
        }
    }

    /// Label smoothing as Keras and PyTorch define it, against the formula written out:
    /// softmax, (1 - s) * CE(true class) + s * mean over classes of -log p; sigmoid, BCE
    /// against targets 1 - s/2 and s/2.
    #[test]
    fn label_smoothing_follows_the_formula() {
        let logits = Tensor::from_slice(&[2.0f32, -1.0, 0.5, 0.0, 1.5, -0.5]).view([2, 3]);
        let labels = Tensor::from_slice(&[0i64, 2]);
        let s = 0.2;
        let got = smoothed_loss_of(&logits, &labels, Output::Softmax, Reduction::Mean, s)
            .unwrap()
            .double_value(&[]);
        let log_p = logits.log_softmax(-1, Kind::Float);
        let want: f64 = [(0, 0), (1, 2)]
            .iter()
            .map(|&(row, class)| {
                let lp = log_p.get(row);
                -(1.0 - s) * lp.double_value(&[class]) - s * lp.mean(Kind::Float).double_value(&[])
            })
            .sum::<f64>()
            / 2.0;
        assert!((got - want).abs() < 1e-6, "{got} vs {want}");
        let plain = loss_of(&logits, &labels, Output::Softmax, Reduction::Mean)
            .unwrap()
            .double_value(&[]);
        assert!((plain - want).abs() > 1e-3, "smoothing changes the loss");

        let logit = Tensor::from_slice(&[1.2f32, -0.4]).view([2, 1]);
        let labels = Tensor::from_slice(&[1i64, 0]);
        let got = smoothed_loss_of(&logit, &labels, Output::Sigmoid, Reduction::Mean, s)
            .unwrap()
            .double_value(&[]);
        let bce = |z: f64, t: f64| {
            let p = 1.0 / (1.0 + (-z).exp());
            -(t * p.ln() + (1.0 - t) * (1.0 - p).ln())
        };
        let want = (bce(1.2, 1.0 - s / 2.0) + bce(-0.4, s / 2.0)) / 2.0;
        assert!((got - want).abs() < 1e-6, "{got} vs {want}");
    }

    /// ReduceLROnPlateau as Keras: `lrPatience` epochs without a new best (by more than
    /// 1e-4) multiply the rate by `lrGamma`, never below `lrMin`; a new best resets the wait.
    #[test]
    fn the_plateau_schedule_waits_then_lowers_the_rate() {
        let p = TrialParams {
            lr_schedule: LrSchedule::Plateau,
            learning_rate: 0.01,
            lr_patience: 2,
            lr_gamma: 0.5,
            lr_min: 0.002,
            ..TrialParams::default()
        };
        let mut plateau = PlateauState::new(&p);
        let mut rates = Vec::new();
        for loss in [
            1.0, 0.8, 0.79995, 0.81, 0.7, 0.75, 0.75, 0.75, 0.75, 0.75, 0.75,
        ] {
            rates.push(epoch_learning_rate(&p, 0, &plateau));
            plateau.observe(&p, loss);
        }
        rates.push(plateau.learning_rate);
        assert_eq!(
            rates,
            // Epoch 3 improves by less than 1e-4 and epoch 4 not at all: the rate halves
            // for epoch 5. After the best at epoch 5, epochs 6-7 wait, epoch 8 halves; 8-9
            // wait, the next halving stops at the floor.
            [0.01, 0.01, 0.01, 0.01, 0.005, 0.005, 0.005, 0.0025, 0.0025, 0.002, 0.002, 0.002]
        );
        // The epoch-only schedules.
        let at = |schedule, epoch| {
            TrialParams {
                lr_schedule: schedule,
                learning_rate: 0.1,
                lr_gamma: 0.5,
                lr_step_size: 2,
                lr_min: 0.01,
                epochs: 4,
                ..TrialParams::default()
            }
            .scheduled_learning_rate(epoch)
        };
        let close = |a: f64, b: f64| (a - b).abs() < 1e-12;
        assert!([1, 2, 3, 4, 5]
            .map(|e| at(LrSchedule::Step, e))
            .iter()
            .zip([0.1, 0.1, 0.05, 0.05, 0.025])
            .all(|(a, b)| close(*a, b)));
        assert!([1, 2, 3]
            .map(|e| at(LrSchedule::Exponential, e))
            .iter()
            .zip([0.1, 0.05, 0.025])
            .all(|(a, b)| close(*a, b)));
        // Cosine over 4 epochs: 0.1 at the start, the midpoint at epoch 3, near the floor
        // at the last.
        assert!(close(at(LrSchedule::Cosine, 1), 0.1));
        assert!(close(at(LrSchedule::Cosine, 3), 0.055));
        assert!(close(
            at(LrSchedule::Cosine, 4),
            0.01 + 0.09 * (1.0 + (0.75 * std::f64::consts::PI).cos()) / 2.0
        ));
        assert!(close(at(LrSchedule::Constant, 4), 0.1));
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
            standardization: None,
            notes: Vec::new(),
        };
        let p = TrialParams {
            epochs: 1,
            blocks: 2,
            base_filters: 4,
            units: DenseUnits(vec![8]),
            batch_size: 16,
            batch_norm: false,
            activation: cnnd_core::sweep::Activation::Elu,
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
                &TrialControl::default(),
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
