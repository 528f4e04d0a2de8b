//! The validated sweep: one request type converted from JSON once, checked, and expanded into
//! the concrete hyperparameters of every trial. This is where the control plane (api,
//! scheduler, store) and the training side (worker, train, model) meet: both speak
//! [`TrialParams`]. Pure logic: no I/O, no libtorch, no database (the caller resolves the
//! data set name, see [`SweepRequest::validate`]).

use rand::seq::SliceRandom;
use rand::Rng;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// A refused request: which field, and why. The api turns it into `INVALID_ARGUMENT`, or
/// `PERMISSION_DENIED` when `denied` (a path outside the data directory).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct SpecError {
    pub field: String,
    pub reason: String,
    pub denied: bool,
}

impl SpecError {
    /// A field refused for a reason (not a permission matter).
    pub fn new(field: impl Into<String>, reason: impl Into<String>) -> SpecError {
        err(field, reason)
    }
}

fn err(field: impl Into<String>, reason: impl Into<String>) -> SpecError {
    SpecError {
        field: field.into(),
        reason: reason.into(),
        denied: false,
    }
}

use crate::datasets::{DatasetError, DatasetInfo};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Head {
    /// flatten -> linear(units) -> activation -> dropout -> linear(classes)
    Dense,
    /// global average pooling -> dropout -> linear(classes)
    Gap,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Activation {
    Relu,
    LeakyRelu,
    Elu,
    Gelu,
    Tanh,
    /// min(max(x, 0), 6), as Keras's `ReLU(max_value=6)` and `torch.nn.ReLU6`.
    Relu6,
}

/// How a convolution treats the border.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Padding {
    /// Zero padding of k/2 on every side: the output keeps the input's side (divided by the
    /// stride, rounded up). Needs an odd kernel.
    Same,
    /// No padding (Keras's default): the output loses k - 1 pixels per side pair.
    Valid,
}

/// The pooling at the end of each block.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Pooling {
    Max,
    Avg,
}

/// Whether the convolutions have biases.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConvBias {
    /// No bias under batch norm (which subtracts it again), a bias without: PyTorch practice.
    Auto,
    /// Always a bias, as Keras's `Conv2D(use_bias=True)` default.
    Always,
    Never,
}

/// How convolution and dense weights start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WeightInit {
    /// PyTorch's defaults: weights and biases uniform in +-1/sqrt(fan_in).
    Torch,
    /// Keras's defaults: weights uniform in +-sqrt(6 / (fan_in + fan_out)), biases zero.
    GlorotUniform,
}

/// How the learning rate changes from epoch to epoch (`learningRate` is the first epoch's).
/// Epoch e (1-based) trains with:
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LrSchedule {
    /// `learningRate` throughout.
    Constant,
    /// `learningRate * lrGamma^floor((e - 1) / lrStepSize)` (PyTorch's `StepLR`).
    Step,
    /// `learningRate * lrGamma^(e - 1)` (PyTorch's `ExponentialLR`).
    Exponential,
    /// `lrMin + (learningRate - lrMin) * (1 + cos(pi * (e - 1) / epochs)) / 2` (PyTorch's
    /// `CosineAnnealingLR` over the trial's epochs).
    Cosine,
    /// Keras's `ReduceLROnPlateau` on the validation loss: after `lrPatience` epochs without
    /// a new best (by more than 1e-4), the rate is multiplied by `lrGamma`, not below
    /// `lrMin`.
    Plateau,
}

/// The hidden dense layers of the `dense` head: one width, or a list of widths from the
/// first layer to the last (`[256, 128]`; `[]` is flatten straight to the output). A single
/// width reads and writes as a plain number, so `units: 128` and `units: [128]` are the same
/// model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DenseUnits(pub Vec<u32>);

impl Serialize for DenseUnits {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.0.as_slice() {
            [one] => s.serialize_u32(*one),
            many => many.serialize(s),
        }
    }
}

/// `128` for one layer, `[256, 128]` for several, as a sweep writes them.
impl std::fmt::Display for DenseUnits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0.as_slice() {
            [one] => write!(f, "{one}"),
            many => write!(
                f,
                "[{}]",
                many.iter()
                    .map(u32::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }
    }
}

impl<'de> Deserialize<'de> for DenseUnits {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = DenseUnits;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a number of units or a list of them, e.g. 128 or [256, 128]")
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<DenseUnits, E> {
                u32::try_from(v)
                    .map(|v| DenseUnits(vec![v]))
                    .map_err(|_| E::custom(format!("{v} units is too many")))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<DenseUnits, A::Error> {
                let mut units = Vec::new();
                while let Some(u) = seq.next_element::<u32>()? {
                    units.push(u);
                }
                Ok(DenseUnits(units))
            }
        }
        d.deserialize_any(Visitor)
    }
}

/// The model input's height and width: `inputSize` is one side for a square input, or
/// `[height, width]` (Keras's `target_size`); 0 keeps the data set's own size. A square
/// size reads and writes as a plain number, so `28` and `[28, 28]` are the same trial.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct InputSize {
    pub height: u32,
    pub width: u32,
}

impl InputSize {
    pub const fn square(side: u32) -> InputSize {
        InputSize {
            height: side,
            width: side,
        }
    }

    /// 0: the data set's own size.
    pub fn is_dataset_size(&self) -> bool {
        self.height == 0 && self.width == 0
    }
}

impl From<u32> for InputSize {
    fn from(side: u32) -> InputSize {
        InputSize::square(side)
    }
}

impl Serialize for InputSize {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if self.height == self.width {
            s.serialize_u32(self.height)
        } else {
            [self.height, self.width].serialize(s)
        }
    }
}

/// `28`, or `64x96` (height x width).
impl std::fmt::Display for InputSize {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.height == self.width {
            write!(f, "{}", self.height)
        } else {
            write!(f, "{}x{}", self.height, self.width)
        }
    }
}

impl<'de> Deserialize<'de> for InputSize {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = InputSize;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("one side or [height, width], e.g. 64 or [64, 96]")
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<InputSize, E> {
                u32::try_from(v)
                    .map(InputSize::square)
                    .map_err(|_| E::custom(format!("{v} pixels is too large")))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<InputSize, A::Error> {
                let mut sides = Vec::new();
                while let Some(v) = seq.next_element::<u32>()? {
                    sides.push(v);
                }
                match sides[..] {
                    [height, width] => Ok(InputSize { height, width }),
                    _ => Err(serde::de::Error::custom(format!(
                        "{} numbers; give one side or [height, width]",
                        sides.len()
                    ))),
                }
            }
        }
        d.deserialize_any(Visitor)
    }
}

/// Hyperparameters whose one value is a list: in `fixed` a list is the value, in `space` the
/// alternatives are a list of lists (`units` also takes a plain number, so in `space` a list
/// of numbers is alternatives of one layer each).
pub const LIST_VALUED: [&str; 4] = ["filters", "kernelSizes", "units", "inputSize"];

/// The list-valued hyperparameters that also take a plain number (one hidden layer, a
/// square input): in `space` a list of numbers is alternatives of that form, and a tpe range
/// of them is allowed.
pub const NUMBER_OR_LIST: [&str; 2] = ["units", "inputSize"];

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Optimizer {
    Adam,
    Adamw,
    Sgd,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Output {
    /// One logit per class, cross-entropy.
    Softmax,
    /// Two classes only: one logit, binary cross-entropy, threshold 0.5.
    Sigmoid,
}

/// Scaling of input pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Normalize {
    /// Pixels scaled to 0..1.
    Unit,
    /// 0..1, then per channel minus the mean and divided by the standard deviation of the
    /// training split.
    Standardize,
}

/// What an augmentation's affine transform shows where it samples outside the image
/// (Keras's `fill_mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FillMode {
    /// Zeros (cnnd's default).
    Constant,
    /// The nearest edge pixel (Keras's default).
    Nearest,
    /// The image mirrored at its edges (d c b a | a b c d | d c b a).
    Reflect,
    /// The image repeated (a b c d | a b c d | a b c d).
    Wrap,
}

/// Interpolation when an image is enlarged to the model input (shrinking always averages
/// areas).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Resample {
    #[default]
    Bilinear,
    Bicubic,
    /// Nearest neighbour (Keras's `load_img` and `flow_from_directory` default).
    Nearest,
}

/// What a trial started from other weights keeps fixed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Freeze {
    /// Every layer trains.
    None,
    /// The convolution blocks (convolutions and their batch norms) keep the loaded weights;
    /// only the head trains.
    Conv,
    /// Everything before the head keeps the loaded weights (for `arch: cnn` the same as
    /// `conv`); a pretrained backbone also runs its batch norms in inference mode, as Keras's
    /// transfer-learning guide does, until and after `fineTuneAfter` unfreezes its top stages.
    Backbone,
}

/// The network a trial trains.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Arch {
    /// cnnd's CNN family (`blocks`, `filters`, `kernelSize`, `head`...).
    #[default]
    Cnn,
    /// torchvision's ResNet-18, with a new head (`backbones`); torchvision-format weights
    /// load through `initFrom: file:...`.
    Resnet18,
    /// torchvision's MobileNetV2 (width 1.0), with a new head.
    MobilenetV2,
}

impl std::fmt::Display for Arch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Arch::Cnn => "cnn",
            Arch::Resnet18 => "resnet18",
            Arch::MobilenetV2 => "mobilenet_v2",
        })
    }
}

/// The arithmetic of a trial's forward and backward passes. Master weights and optimiser
/// state stay fp32 in every case.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Precision {
    Fp32,
    /// Convolutions, linear layers, batch norm, activations and pooling in bfloat16; the loss
    /// and the logits it reads in fp32.
    Bf16,
    /// bf16 on CPUs with AMX or AVX512-BF16, fp32 elsewhere (CUDA included, until measured).
    Auto,
}

impl std::fmt::Display for Precision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Precision::Fp32 => "fp32",
            Precision::Bf16 => "bf16",
            Precision::Auto => "auto",
        })
    }
}

/// Every hyperparameter of one trial. Names in JSON are the public names of `space` and
/// `fixed` (DESIGN.md section 4). Defaults are the seed notebook's model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct TrialParams {
    /// The network: cnnd's CNN family, or a pretrained backbone ([`Arch`]). The family's
    /// settings (`blocks`, `filters`, kernels, padding, pooling, `batchNorm`, `weightInit`)
    /// do not apply to a backbone; its head reads `head`, `units`, `dropout`, `activation`.
    pub arch: Arch,
    /// Kernel side of every convolution, unless `kernelSizes` lists one per block.
    pub kernel_size: u32,
    /// Filters of the first block, doubled with every block, unless `filters` lists them.
    pub base_filters: u32,
    /// Number of conv blocks; when not given it follows the length of `filters` or
    /// `kernelSizes`.
    pub blocks: u32,
    /// Filters per block (`[32, 64, 128]`); empty: the doubling rule from `baseFilters`.
    pub filters: Vec<u32>,
    /// Kernel side per block (`[5, 3, 3]`); empty: `kernelSize` for every block.
    pub kernel_sizes: Vec<u32>,
    pub padding: Padding,
    /// Stride of every convolution.
    pub strides: u32,
    pub conv_bias: ConvBias,
    pub pooling: Pooling,
    /// Side and stride of each block's pooling window (1: no pooling).
    pub pool_size: u32,
    pub head: Head,
    /// Hidden dense layers of the `dense` head ([`DenseUnits`]).
    pub units: DenseUnits,
    pub dropout: f64,
    pub batch_norm: bool,
    pub activation: Activation,
    /// Negative slope of `leaky_relu` (PyTorch's default 0.01; Keras's `LeakyReLU` has 0.3).
    pub leaky_slope: f64,
    pub weight_init: WeightInit,
    pub optimizer: Optimizer,
    pub learning_rate: f64,
    /// Adam's and AdamW's epsilon (PyTorch 1e-8, Keras 1e-7).
    pub adam_epsilon: f64,
    pub lr_schedule: LrSchedule,
    /// `step`: epochs between decays.
    pub lr_step_size: u32,
    /// The factor of `step`, `exponential` (per epoch) and `plateau`.
    pub lr_gamma: f64,
    /// `plateau`: epochs without improvement before the rate drops.
    pub lr_patience: u32,
    /// The floor of `cosine` and `plateau`.
    pub lr_min: f64,
    /// Per-trial early stopping (Keras's `EarlyStopping(patience, restore_best_weights=True)`
    /// on validation accuracy): the trial ends after this many epochs without a better
    /// validation accuracy, and is tested with its best epoch's weights (as every trial is).
    /// 0: off.
    pub patience: u32,
    /// Label smoothing of the loss (Keras's and PyTorch's `label_smoothing`): softmax targets
    /// are 1 - s + s/classes and s/classes; a sigmoid's are 1 - s/2 and s/2.
    pub label_smoothing: f64,
    /// SGD momentum (ignored by Adam).
    pub momentum: f64,
    pub weight_decay: f64,
    pub batch_size: u32,
    pub epochs: u32,
    /// The model input: one side or `[height, width]` ([`InputSize`]); 0 means the data
    /// set's own size.
    pub input_size: InputSize,
    pub output: Output,
    /// Augmentation (Keras ImageDataGenerator semantics), applied to training batches only.
    pub rotation_range: f64,
    pub width_shift: f64,
    pub height_shift: f64,
    pub zoom: f64,
    pub horizontal_flip: bool,
    /// Flip upside down with probability 1/2.
    pub vertical_flip: bool,
    /// Shear angle uniform in +-`shearRange` degrees (Keras's `shear_range`).
    pub shear_range: f64,
    /// Brightness jitter: each training image is multiplied by a factor uniform in
    /// 1 +- `brightness`.
    pub brightness: f64,
    /// Keras's `channel_shift_range`, on the 0..1 pixel scale: one offset uniform in
    /// +-`channelShift` added to every channel of an image, each channel clipped to its own
    /// range.
    pub channel_shift: f64,
    /// Outside the image after an affine augmentation ([`FillMode`]).
    pub fill_mode: FillMode,
    /// Channels of the model input (1 or 3); 0 means the data set's own.
    pub channels: u32,
    pub normalize: Normalize,
    pub resample: Resample,
    /// Start from other weights: "" (fresh), "trial:ID" (that trial's best weights) or
    /// "file:PATH" (a safetensors file under the data directory).
    pub init_from: String,
    pub freeze: Freeze,
    /// Fine-tuning (Keras's transfer-learning guide, second stage): after this many epochs
    /// with the body frozen, the top `fineTuneBlocks` stages of the body train too, at
    /// `fineTuneLearningRate`, with a fresh optimiser (Keras recompiles). 0: off.
    pub fine_tune_after: u32,
    /// Stages unfrozen by fine-tuning, counted from the top (resnet18: `layer4`, `layer3`...
    /// of 5 with the stem; mobilenet_v2: `features.18`, `features.17`... of 19; cnn: the last
    /// conv blocks).
    pub fine_tune_blocks: u32,
    /// The learning rate of the fine-tuning epochs (scaled by `lrSchedule` as `learningRate`
    /// is); 0: `learningRate / 10`.
    pub fine_tune_learning_rate: f64,
    pub seed: u64,
    /// Seed of the test split carved from train when a data set has no test split (image
    /// folders without test/); defaults to the sweep seed, so every trial of a sweep (repeats
    /// included) is tested on the same examples.
    pub split_seed: u64,
    /// Cap on training examples (0: all); validation is carved from these.
    pub train_limit: u32,
    /// Cap on test examples (0: all).
    pub test_limit: u32,
    /// Share of the training examples held out for validation, drawn with the seed (unused
    /// when the data set has its own validation split).
    pub val_fraction: f64,
    /// Share of the training examples held out for testing when the data set has no test
    /// split, drawn with `splitSeed`.
    pub test_fraction: f64,
    /// Wall-clock limit of one attempt in seconds (0: none); past it the trial fails as
    /// `timed_out`.
    pub time_limit: f64,
    /// fp32, bf16 or auto ([`Precision`]).
    pub precision: Precision,
}

impl Default for TrialParams {
    fn default() -> Self {
        TrialParams {
            arch: Arch::Cnn,
            kernel_size: 3,
            base_filters: 32,
            blocks: 2,
            filters: Vec::new(),
            kernel_sizes: Vec::new(),
            padding: Padding::Same,
            strides: 1,
            conv_bias: ConvBias::Auto,
            pooling: Pooling::Max,
            pool_size: 2,
            head: Head::Dense,
            units: DenseUnits(vec![128]),
            dropout: 0.5,
            batch_norm: true,
            activation: Activation::Relu,
            leaky_slope: 0.01,
            weight_init: WeightInit::Torch,
            optimizer: Optimizer::Adam,
            learning_rate: 1e-3,
            adam_epsilon: 1e-8,
            lr_schedule: LrSchedule::Constant,
            lr_step_size: 10,
            lr_gamma: 0.1,
            lr_patience: 10,
            lr_min: 0.0,
            patience: 0,
            label_smoothing: 0.0,
            momentum: 0.9,
            weight_decay: 0.0,
            batch_size: 64,
            epochs: 3,
            input_size: InputSize::square(0),
            output: Output::Softmax,
            rotation_range: 0.0,
            width_shift: 0.0,
            height_shift: 0.0,
            zoom: 0.0,
            horizontal_flip: false,
            vertical_flip: false,
            shear_range: 0.0,
            brightness: 0.0,
            channel_shift: 0.0,
            fill_mode: FillMode::Constant,
            channels: 0,
            normalize: Normalize::Unit,
            resample: Resample::Bilinear,
            init_from: String::new(),
            freeze: Freeze::None,
            fine_tune_after: 0,
            fine_tune_blocks: 1,
            fine_tune_learning_rate: 0.0,
            seed: 0,
            split_seed: 0,
            train_limit: 0,
            test_limit: 0,
            val_fraction: 0.1,
            test_fraction: 0.2,
            time_limit: 0.0,
            precision: Precision::Fp32,
        }
    }
}

/// The public hyperparameter names, in the order tables show them.
pub fn hyperparameter_names() -> Vec<String> {
    match serde_json::to_value(TrialParams::default()) {
        Ok(Value::Object(map)) => map.keys().cloned().collect(),
        _ => Vec::new(),
    }
}

impl TrialParams {
    /// The learning rate of epoch `epoch` (1-based) for the schedules that depend on the
    /// epoch alone; `plateau` returns `learningRate` (its rate follows the validation loss,
    /// kept by the trainer).
    pub fn scheduled_learning_rate(&self, epoch: u32) -> f64 {
        let rate = self.unscaled_learning_rate(epoch);
        if self.fine_tuning_in(epoch) {
            rate * self.fine_tune_rate() / self.learning_rate
        } else {
            rate
        }
    }

    /// True when epoch `epoch` (1-based) is a fine-tuning epoch (`fineTuneAfter`).
    pub fn fine_tuning_in(&self, epoch: u32) -> bool {
        self.fine_tune_after > 0 && epoch > self.fine_tune_after
    }

    /// The learning rate fine-tuning starts from: `fineTuneLearningRate`, else a tenth of
    /// `learningRate`.
    pub fn fine_tune_rate(&self) -> f64 {
        if self.fine_tune_learning_rate > 0.0 {
            self.fine_tune_learning_rate
        } else {
            self.learning_rate / 10.0
        }
    }

    /// The body's stages fine-tuning can unfreeze: the backbone's, or the family's blocks.
    pub fn body_stages(&self) -> u32 {
        match crate::backbones::backbone(self.arch) {
            Some(b) => b.stages as u32,
            None => self.blocks,
        }
    }

    /// The schedule's rate before fine-tuning's scaling.
    fn unscaled_learning_rate(&self, epoch: u32) -> f64 {
        let done = epoch.saturating_sub(1);
        match self.lr_schedule {
            LrSchedule::Constant | LrSchedule::Plateau => self.learning_rate,
            LrSchedule::Step => {
                self.learning_rate * self.lr_gamma.powi((done / self.lr_step_size.max(1)) as i32)
            }
            LrSchedule::Exponential => self.learning_rate * self.lr_gamma.powi(done as i32),
            LrSchedule::Cosine => {
                let progress = done as f64 / self.epochs.max(1) as f64;
                self.lr_min
                    + (self.learning_rate - self.lr_min)
                        * (1.0 + (std::f64::consts::PI * progress).cos())
                        / 2.0
            }
        }
    }

    /// The input side the model sees for a data set.
    pub fn effective_input_size(&self, dataset: &DatasetInfo) -> InputSize {
        if self.input_size.is_dataset_size() {
            InputSize::square(dataset.input_size)
        } else {
            self.input_size
        }
    }

    /// The channels the model sees for a data set.
    pub fn effective_channels(&self, dataset: &DatasetInfo) -> u32 {
        if self.channels == 0 {
            dataset.channels
        } else {
            self.channels
        }
    }

    /// Checks one complete configuration: ranges, and that the model can be built on the
    /// data set (every block has a feature map at least as large as the kernel and at least
    /// 2x2 to pool). Errors name the hyperparameter.
    pub fn validate(&self, dataset: &DatasetInfo) -> Result<(), SpecError> {
        let p = self;
        let kernel_rule = |k: u32| -> Option<&'static str> {
            match p.padding {
                _ if k == 0 => Some("is not a positive number"),
                Padding::Same if k.is_multiple_of(2) => Some(
                    "is not a positive odd number (same padding needs an odd kernel; valid padding takes even ones)",
                ),
                _ if k > 64 => Some("is larger than 64"),
                _ => None,
            }
        };
        if let Some(reason) = kernel_rule(p.kernel_size) {
            return Err(err("kernelSize", format!("{} {reason}", p.kernel_size)));
        }
        if let Some((i, k, reason)) = p
            .kernel_sizes
            .iter()
            .enumerate()
            .find_map(|(i, &k)| kernel_rule(k).map(|r| (i, k, r)))
        {
            return Err(err(format!("kernelSizes[{i}]"), format!("{k} {reason}")));
        }
        if !(1..=1024).contains(&p.base_filters) {
            return Err(err(
                "baseFilters",
                format!("{} is outside 1..=1024", p.base_filters),
            ));
        }
        if !(1..=10).contains(&p.blocks) {
            return Err(err("blocks", format!("{} is outside 1..=10", p.blocks)));
        }
        if let Some((i, f)) = p
            .filters
            .iter()
            .enumerate()
            .find(|(_, f)| !(1..=1024).contains(*f))
        {
            return Err(err(
                format!("filters[{i}]"),
                format!("{f} is outside 1..=1024"),
            ));
        }
        for (name, len) in [
            ("filters", p.filters.len()),
            ("kernelSizes", p.kernel_sizes.len()),
        ] {
            if len != 0 && len != p.blocks as usize {
                return Err(err(
                    name,
                    format!(
                        "{len} entries for {} blocks (one per block; blocks follows the list's length when not given)",
                        p.blocks
                    ),
                ));
            }
        }
        if !(1..=8).contains(&p.strides) {
            return Err(err("strides", format!("{} is outside 1..=8", p.strides)));
        }
        if !(1..=8).contains(&p.pool_size) {
            return Err(err(
                "poolSize",
                format!("{} is outside 1..=8 (1: no pooling)", p.pool_size),
            ));
        }
        if p.units.0.len() > 8 {
            return Err(err(
                "units",
                format!("{} hidden layers; at most 8", p.units.0.len()),
            ));
        }
        if let Some(u) = p.units.0.iter().find(|u| !(1..=65_536).contains(*u)) {
            return Err(err("units", format!("{u} is outside 1..=65536")));
        }
        if !(p.leaky_slope >= 0.0 && p.leaky_slope < 1.0) {
            return Err(err(
                "leakySlope",
                format!("{} is outside [0, 1)", p.leaky_slope),
            ));
        }
        if !(p.adam_epsilon > 0.0 && p.adam_epsilon <= 1.0) {
            return Err(err(
                "adamEpsilon",
                format!("{} is outside (0, 1]", p.adam_epsilon),
            ));
        }
        if !(p.dropout >= 0.0 && p.dropout < 1.0) {
            return Err(err("dropout", format!("{} is outside [0, 1)", p.dropout)));
        }
        if !(p.learning_rate.is_finite() && p.learning_rate > 0.0) {
            return Err(err(
                "learningRate",
                format!("{} is not a positive number", p.learning_rate),
            ));
        }
        if p.learning_rate > 100.0 {
            return Err(err(
                "learningRate",
                format!("{} is absurdly large (max 100)", p.learning_rate),
            ));
        }
        if !(1..=1000).contains(&p.lr_step_size) {
            return Err(err(
                "lrStepSize",
                format!("{} is outside 1..=1000 epochs", p.lr_step_size),
            ));
        }
        if !(p.lr_gamma > 0.0 && p.lr_gamma <= 1.0) {
            return Err(err(
                "lrGamma",
                format!(
                    "{} is outside (0, 1] (a factor that lowers the rate)",
                    p.lr_gamma
                ),
            ));
        }
        if p.lr_patience > 1000 {
            return Err(err(
                "lrPatience",
                format!("{} is more than 1000 epochs", p.lr_patience),
            ));
        }
        if !(p.lr_min >= 0.0 && p.lr_min < p.learning_rate) {
            return Err(err(
                "lrMin",
                format!(
                    "{} is outside [0, learningRate {}) (the floor of the schedule)",
                    p.lr_min, p.learning_rate
                ),
            ));
        }
        if p.patience > 1000 {
            return Err(err(
                "patience",
                format!("{} is more than 1000 epochs (0: off)", p.patience),
            ));
        }
        if !(p.label_smoothing >= 0.0 && p.label_smoothing < 1.0) {
            return Err(err(
                "labelSmoothing",
                format!("{} is outside [0, 1)", p.label_smoothing),
            ));
        }
        if !(p.momentum >= 0.0 && p.momentum < 1.0) {
            return Err(err("momentum", format!("{} is outside [0, 1)", p.momentum)));
        }
        if !(p.weight_decay.is_finite() && p.weight_decay >= 0.0) {
            return Err(err(
                "weightDecay",
                format!("{} is negative or not a number", p.weight_decay),
            ));
        }
        if p.batch_size == 0 || p.batch_size > 65_536 {
            return Err(err(
                "batchSize",
                format!("{} is outside 1..=65536", p.batch_size),
            ));
        }
        if p.epochs == 0 || p.epochs > 1000 {
            return Err(err("epochs", format!("{} is outside 1..=1000", p.epochs)));
        }
        let sides = [p.input_size.height, p.input_size.width];
        if !p.input_size.is_dataset_size() && sides.iter().any(|s| !(4..=1024).contains(s)) {
            return Err(err(
                "inputSize",
                format!(
                    "{} has a side outside 4..=1024 (0 keeps the data set's size)",
                    p.input_size
                ),
            ));
        }
        if !(p.val_fraction > 0.0 && p.val_fraction <= 0.5) {
            return Err(err(
                "valFraction",
                format!("{} is outside (0, 0.5]", p.val_fraction),
            ));
        }
        if !(p.time_limit.is_finite() && p.time_limit >= 0.0) {
            return Err(err(
                "timeLimit",
                format!("{} is not a number of seconds >= 0", p.time_limit),
            ));
        }
        if !(0.0..=180.0).contains(&p.rotation_range) {
            return Err(err(
                "rotationRange",
                format!("{} degrees is outside 0..=180", p.rotation_range),
            ));
        }
        for (name, v) in [
            ("widthShift", p.width_shift),
            ("heightShift", p.height_shift),
            ("zoom", p.zoom),
        ] {
            if !(0.0..1.0).contains(&v) {
                return Err(err(name, format!("{v} is outside [0, 1)")));
            }
        }
        if !(0.0..=89.0).contains(&p.shear_range) {
            return Err(err(
                "shearRange",
                format!("{} degrees is outside 0..=89", p.shear_range),
            ));
        }
        if !(0.0..1.0).contains(&p.channel_shift) {
            return Err(err(
                "channelShift",
                format!(
                    "{} is outside [0, 1) (a share of the pixel range)",
                    p.channel_shift
                ),
            ));
        }
        if !(0.0..1.0).contains(&p.brightness) {
            return Err(err(
                "brightness",
                format!("{} is outside [0, 1)", p.brightness),
            ));
        }
        if !matches!(p.channels, 0 | 1 | 3) {
            return Err(err(
                "channels",
                format!(
                    "{} is not 1 or 3 (0 keeps the data set's {})",
                    p.channels, dataset.channels
                ),
            ));
        }
        if !(p.test_fraction > 0.0 && p.test_fraction <= 0.5) {
            return Err(err(
                "testFraction",
                format!("{} is outside (0, 0.5]", p.test_fraction),
            ));
        }
        let init_from_known = p.init_from.is_empty()
            || p.init_from.starts_with("trial:")
            || p.init_from.starts_with("file:");
        if !init_from_known {
            return Err(err(
                "initFrom",
                format!(
                    "'{}' is neither trial:ID nor file:PATH (a safetensors file under the data directory)",
                    p.init_from
                ),
            ));
        }
        if p.freeze != Freeze::None && p.init_from.is_empty() {
            return Err(err(
                "freeze",
                format!(
                    "{} needs initFrom (frozen random layers learn nothing)",
                    serde_json::to_value(p.freeze)
                        .ok()
                        .and_then(|v| v.as_str().map(str::to_string))
                        .unwrap_or_default()
                ),
            ));
        }
        if p.fine_tune_after > 0 {
            if p.freeze == Freeze::None {
                return Err(err(
                    "fineTuneAfter",
                    "unfreezes a frozen body: set freeze (backbone) and initFrom",
                ));
            }
            if p.fine_tune_after >= p.epochs {
                return Err(err(
                    "fineTuneAfter",
                    format!(
                        "{} leaves no epoch to fine-tune (epochs {})",
                        p.fine_tune_after, p.epochs
                    ),
                ));
            }
        }
        if p.fine_tune_blocks == 0 || p.fine_tune_blocks > p.body_stages() {
            return Err(err(
                "fineTuneBlocks",
                format!(
                    "{} is outside 1..={} (the stages of arch {})",
                    p.fine_tune_blocks,
                    p.body_stages(),
                    p.arch
                ),
            ));
        }
        if !(p.fine_tune_learning_rate.is_finite()
            && p.fine_tune_learning_rate >= 0.0
            && p.fine_tune_learning_rate <= 10.0)
        {
            return Err(err(
                "fineTuneLearningRate",
                format!(
                    "{} is outside 0..=10 (0: learningRate / 10)",
                    p.fine_tune_learning_rate
                ),
            ));
        }
        if p.arch != Arch::Cnn && p.normalize != Normalize::Unit {
            return Err(err(
                "normalize",
                format!(
                    "arch {} normalises its input with ImageNet's mean and deviation itself; keep normalize unit",
                    p.arch
                ),
            ));
        }
        if p.output == Output::Sigmoid && dataset.classes != 2 {
            return Err(err(
                "output",
                format!(
                    "sigmoid needs a two-class data set; {} has {} classes",
                    dataset.name, dataset.classes
                ),
            ));
        }
        if p.train_limit != 0 {
            let val = (p.train_limit as f64 * p.val_fraction).floor() as u32;
            if val == 0 || p.train_limit - val == 0 {
                return Err(err(
                    "trainLimit",
                    format!(
                        "{} leaves no validation or no training example with valFraction {}",
                        p.train_limit, p.val_fraction
                    ),
                ));
            }
        }
        if p.arch != Arch::Cnn {
            // Every backbone convolution is padded to keep at least a 1x1 map.
            return Ok(());
        }
        self.check_feature_maps(self.effective_input_size(dataset))
    }

    /// Every block's convolution must fit its input (the kernel no larger than the feature
    /// map) and leave at least one pooling window. Errors name the hyperparameter to change.
    fn check_feature_maps(&self, input: InputSize) -> Result<(), SpecError> {
        use crate::model_size::{block_kernel, conv_output_side, pooled_side};
        let p = self;
        let kernel_field = |i: u32| {
            if p.kernel_sizes.is_empty() {
                "kernelSize".to_string()
            } else {
                format!("kernelSizes[{i}]")
            }
        };
        let shown = format!("{}x{}", input.height, input.width);
        let too_many = |block: u32, (h, w): (i64, i64), stage: &str| {
            err(
                "blocks",
                format!(
                    "{} blocks do not fit an input of {shown}: block {block} {stage} {h}x{w}, less than its {pool}x{pool} pooling (fewer blocks, a larger inputSize, same padding or smaller kernels)",
                    p.blocks,
                    pool = p.pool_size
                ),
            )
        };
        // Every operation is monotone in the side, so the smaller side is the one that can
        // fail; both are tracked for the message.
        let pool = p.pool_size as i64;
        let (mut h, mut w) = (input.height as i64, input.width as i64);
        for i in 0..p.blocks {
            let block = i + 1;
            if h.min(w) < pool {
                return Err(too_many(block, (h, w), "gets"));
            }
            let k = block_kernel(p, i);
            if k > h.min(w) {
                return Err(err(
                    kernel_field(i),
                    format!("{k} is larger than the {h}x{w} feature map of block {block} (input {shown})"),
                ));
            }
            let conv = (conv_output_side(p, h, k), conv_output_side(p, w, k));
            if conv.0.min(conv.1) < pool {
                return Err(too_many(block, conv, "convolves it to"));
            }
            (h, w) = (pooled_side(p, conv.0), pooled_side(p, conv.1));
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    Grid,
    Random,
    /// Tree-structured Parzen Estimator: configurations suggested one at a time when a
    /// trial is leased, from the results of the finished trials (see `tpe`).
    Tpe,
}

/// The search space of a `tpe` sweep, kept with the sweep: what the scheduler suggests
/// from when it leases one of its trials.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TpeSearch {
    pub space: Vec<crate::tpe::Dimension>,
    pub startup_trials: usize,
    pub seed: u64,
}

impl TpeSearch {
    pub fn config(&self) -> crate::tpe::TpeConfig {
        crate::tpe::TpeConfig {
            startup_trials: self.startup_trials,
            ..Default::default()
        }
    }

    /// The values of the searched hyperparameters in `p`, in `space` order.
    pub fn values_of(&self, p: &TrialParams) -> Vec<Value> {
        let all = serde_json::to_value(p).unwrap_or_default();
        self.space
            .iter()
            .map(|d| all.get(&d.name).cloned().unwrap_or_default())
            .collect()
    }

    /// The parameters of trial `index`: `base` (its fixed values) with the searched ones
    /// suggested from `observed` (finished trials' parameters and scores, higher better,
    /// oldest first) and `pending` (running trials' parameters). Deterministic in its
    /// inputs (the generator is the sweep seed's stream `index`), so a replay with the
    /// recorded basis gives the same values. Returns whether TPE (not the random start-up)
    /// made them.
    pub fn suggest(
        &self,
        index: u32,
        base: &TrialParams,
        observed: &[(TrialParams, f64)],
        pending: &[TrialParams],
    ) -> (TrialParams, bool) {
        let mut rng = ChaCha8Rng::seed_from_u64(self.seed);
        rng.set_stream(u64::from(index));
        let observations: Vec<crate::tpe::Observation> = observed
            .iter()
            .map(|(p, score)| crate::tpe::Observation {
                values: self.values_of(p),
                score: *score,
            })
            .collect();
        let pending: Vec<Vec<Value>> = pending.iter().map(|p| self.values_of(p)).collect();
        let config = self.config();
        let values = crate::tpe::suggest(&self.space, &observations, &pending, &config, &mut rng);
        let mut all = serde_json::to_value(base).unwrap_or_default();
        for (d, v) in self.space.iter().zip(values) {
            all[&d.name] = v;
        }
        // A searched list of filters or kernels sets the block count, unless blocks is
        // searched too (a fixed blocks that disagreed was refused at submit).
        if let Value::Object(all) = &mut all {
            if !self.space.iter().any(|d| d.name == "blocks") {
                all.remove("blocks");
                settle_blocks(all);
                all.entry("blocks").or_insert(Value::from(base.blocks));
            }
        }
        let params = serde_json::from_value(all).unwrap_or_else(|_| base.clone());
        (params, observed.len() >= config.startup_trials)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Objective {
    ValAccuracy,
    ValLoss,
}

impl Objective {
    /// True when `a` is a better objective value than `b`.
    pub fn better(self, a: f64, b: f64) -> bool {
        match self {
            Objective::ValAccuracy => a > b,
            Objective::ValLoss => a < b,
        }
    }

    /// This objective's value of an epoch that recorded (validation accuracy, loss).
    pub fn of_epoch(self, (val_accuracy, val_loss): (f64, f64)) -> f64 {
        match self {
            Objective::ValAccuracy => val_accuracy,
            Objective::ValLoss => val_loss,
        }
    }

    /// The stored name ("val_accuracy", "val_loss"); unknown names read as val_accuracy.
    pub fn from_name(name: &str) -> Objective {
        match name {
            "val_loss" => Objective::ValLoss,
            _ => Objective::ValAccuracy,
        }
    }

    /// How the objective reads in sentences: "validation accuracy", "validation loss".
    pub fn describe(self) -> &'static str {
        match self {
            Objective::ValAccuracy => "validation accuracy",
            Objective::ValLoss => "validation loss",
        }
    }
}

/// What choosing a sweep's best trial needs to know of one trial.
#[derive(Debug, Clone, Copy)]
pub struct Contender<'a> {
    pub id: &'a str,
    pub index: u32,
    /// Only succeeded trials contend (pruned, failed and cancelled ones never ran to the end).
    pub succeeded: bool,
    /// Best validation accuracy and loss over its epochs.
    pub best_val_accuracy: Option<f64>,
    pub best_val_loss: Option<f64>,
    pub parameter_count: Option<u64>,
}

/// The sweep's best trial: among succeeded trials, the best value of the sweep's objective
/// on validation data (never test data, which would leak the test set into the choice);
/// ties go to the smaller model, then the lower index. The chosen trial's test accuracy is
/// what is reported for it.
pub fn best_contender<'a>(
    objective: Objective,
    trials: impl IntoIterator<Item = Contender<'a>>,
) -> Option<&'a str> {
    let score = |c: &Contender| -> Option<f64> {
        let v = match objective {
            Objective::ValAccuracy => c.best_val_accuracy?,
            Objective::ValLoss => c.best_val_loss?,
        };
        v.is_finite().then_some(v)
    };
    let mut best: Option<(Contender, f64)> = None;
    for c in trials {
        let Some(value) = score(&c).filter(|_| c.succeeded) else {
            continue;
        };
        let wins = match &best {
            None => true,
            Some((b, bv)) => {
                objective.better(value, *bv)
                    || (value == *bv
                        && (c.parameter_count.unwrap_or(u64::MAX), c.index)
                            < (b.parameter_count.unwrap_or(u64::MAX), b.index))
            }
        };
        if wins {
            best = Some((c, value));
        }
    }
    best.map(|(c, _)| c.id)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeviceRequest {
    Auto,
    Cpu,
    Cuda,
}

/// A sweep request as it arrives, before validation: top-level fields typed, `space` and
/// `fixed` as JSON objects (hyperparameter name -> list of values / value).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct SweepRequest {
    pub name: String,
    pub dataset: String,
    pub space: Map<String, Value>,
    pub fixed: Map<String, Value>,
    pub strategy: String,
    pub num_trials: u32,
    pub max_parallel: u32,
    pub seed: u64,
    pub priority: i32,
    pub early_stopping: String,
    pub objective: String,
    pub repeats: u32,
    pub device: String,
    /// Early stopping options (0: the default). `median`: epochs never stopped, and
    /// completed trials needed first. `asha`: first rung, and the keep-1-in-N factor.
    pub warmup_epochs: u32,
    pub min_trials: u32,
    pub grace_period: u32,
    pub reduction_factor: u32,
    /// tpe: random suggestions before the estimator takes over (0: 10).
    pub startup_trials: u32,
    /// asha: "promote" (default) or "stop" (see [`crate::pruning`]).
    pub asha_mode: String,
}

/// A validated sweep, ready to be stored: every trial's full hyperparameters, in order.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SweepSpec {
    pub name: String,
    pub dataset: String,
    /// What `dataset` resolved to when the request was validated (image folders: listed
    /// once, here).
    #[serde(skip)]
    pub dataset_info: DatasetInfo,
    pub strategy: Strategy,
    /// Names of the varied hyperparameters (the keys of `space`, sorted).
    pub varied: Vec<String>,
    pub trials: Vec<TrialParams>,
    pub max_parallel: u32,
    pub seed: u64,
    pub priority: i32,
    pub objective: Objective,
    pub early_stopping: crate::pruning::EarlyStopping,
    /// The search of a `tpe` sweep (None for grid and random).
    pub tpe: Option<TpeSearch>,
    pub repeats: u32,
    pub device: DeviceRequest,
    /// The request, normalised, as stored for the record.
    pub request: SweepRequest,
}

impl SweepSpec {
    /// The order the trials are queued in, as indices into `trials`.
    ///
    /// Trials whose results do not depend on each other (grid and random sweeps without
    /// early stopping) start costliest first: longest-processing-time-first keeps every
    /// worker busy to the end of the sweep instead of leaving the slowest configuration to
    /// run alone at the end while the other slots idle. The cost is the estimated training
    /// work ([`crate::model_size::model_size`] x training examples x epochs); equal costs keep
    /// index order. Sweeps with early stopping or tpe keep index order: there, which trials
    /// report first changes the decisions.
    pub fn start_order(&self) -> Vec<usize> {
        let mut order: Vec<usize> = (0..self.trials.len()).collect();
        let independent =
            self.tpe.is_none() && self.early_stopping == crate::pruning::EarlyStopping::None;
        if independent {
            let costs: Vec<f64> = self.trials.iter().map(|p| self.estimated_cost(p)).collect();
            // Stable: ties keep index order.
            order.sort_by(|&a, &b| costs[b].total_cmp(&costs[a]));
        }
        order
    }

    /// Estimated multiply-accumulates of training `p` on this sweep's data set.
    fn estimated_cost(&self, p: &TrialParams) -> f64 {
        let info = &self.dataset_info;
        let size = crate::model_size::model_size(
            p,
            p.effective_channels(info) as i64,
            p.effective_input_size(info),
            info.classes as i64,
        );
        let examples = match p.train_limit {
            0 => info.train_examples,
            limit => limit.min(info.train_examples),
        };
        size.training_macs_per_image(p.batch_size) * examples as f64 * p.epochs as f64
    }
}

/// Limits the daemon applies to every sweep.
#[derive(Debug, Clone, Copy)]
pub struct SweepLimits {
    pub max_trials: u32,
}

impl Default for SweepLimits {
    fn default() -> Self {
        SweepLimits { max_trials: 10_000 }
    }
}

fn parse_choice<T: for<'de> Deserialize<'de>>(
    field: &str,
    value: &str,
    default: &str,
    allowed: &str,
) -> Result<T, SpecError> {
    let v = if value.is_empty() { default } else { value };
    serde_json::from_value(Value::String(v.to_string()))
        .map_err(|_| err(field, format!("'{v}' is not one of {allowed}")))
}

/// Checks one hyperparameter value on its own (type and enum spelling) by decoding it into
/// an otherwise default [`TrialParams`]. `field` is the path used in the error.
fn check_value(name: &str, value: &Value, field: &str) -> Result<(), SpecError> {
    let mut obj = Map::new();
    obj.insert(name.to_string(), value.clone());
    serde_json::from_value::<TrialParams>(Value::Object(obj))
        .map(|_| ())
        .map_err(|e| {
            let msg = e.to_string();
            // serde appends " at line 1 column N"; it means nothing to a caller.
            let msg = msg.split(" at line ").next().unwrap_or(&msg).to_string();
            err(field, msg)
        })
}

fn describe(params: &Map<String, Value>) -> String {
    params
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

impl SweepRequest {
    /// Validates the request and expands it into trials. `resolve` says what the data set
    /// name stands for (`crate::datasets::resolve_builtin` without a data directory; the
    /// daemon lists image folders). Nothing here touches storage, so a refused request
    /// leaves no trace.
    pub fn validate(
        &self,
        limits: SweepLimits,
        resolve: impl FnOnce(&str) -> Result<DatasetInfo, DatasetError>,
    ) -> Result<SweepSpec, SpecError> {
        let name = self.name.trim();
        if name.chars().count() > 200 {
            return Err(err("name", "longer than 200 characters"));
        }
        if name.chars().any(char::is_control) {
            return Err(err("name", "contains control characters"));
        }
        if self.dataset.is_empty() {
            return Err(err(
                "dataset",
                format!(
                    "missing; one of {}, or folder:PATH",
                    crate::datasets::BUILTIN_NAMES.join(", ")
                ),
            ));
        }
        let dataset = &resolve(&self.dataset).map_err(|e| match e {
            DatasetError::Invalid(reason) => err("dataset", reason),
            DatasetError::Denied(reason) => SpecError {
                field: "dataset".into(),
                reason,
                denied: true,
            },
        })?;
        let strategy: Strategy =
            parse_choice("strategy", &self.strategy, "grid", "grid, random, tpe")?;
        if strategy == Strategy::Tpe && self.repeats > 1 {
            return Err(err(
                "repeats",
                "tpe suggests one configuration per trial; use grid or random for repeats",
            ));
        }
        let objective: Objective = parse_choice(
            "objective",
            &self.objective,
            "val_accuracy",
            "val_accuracy, val_loss",
        )?;
        let device: DeviceRequest =
            parse_choice("device", &self.device, "auto", "auto, cpu, cuda")?;
        if !matches!(
            self.early_stopping.as_str(),
            "" | "none" | "median" | "asha"
        ) {
            return Err(err(
                "earlyStopping",
                format!("'{}' is not one of none, median, asha", self.early_stopping),
            ));
        }
        let asha_promote = match self.asha_mode.as_str() {
            "" | "promote" => true,
            "stop" => false,
            other => {
                return Err(err(
                    "ashaMode",
                    format!("'{other}' is not one of promote, stop"),
                ))
            }
        };
        if self.reduction_factor == 1 || self.reduction_factor > 100 {
            return Err(err(
                "reductionFactor",
                format!("{} is outside 2..=100 (0: 3)", self.reduction_factor),
            ));
        }
        let repeats = if self.repeats == 0 { 1 } else { self.repeats };
        if repeats > 100 {
            return Err(err("repeats", format!("{repeats} is more than 100")));
        }

        let known = hyperparameter_names();
        let unknown = |section: &str, k: &str| {
            err(
                format!("{section}.{k}"),
                format!("unknown hyperparameter; known: {}", known.join(", ")),
            )
        };
        for (k, v) in &self.fixed {
            if !known.contains(k) {
                return Err(unknown("fixed", k));
            }
            if self.space.contains_key(k) {
                return Err(err(
                    format!("fixed.{k}"),
                    "also varied in space; give it in one place only",
                ));
            }
            check_value(k, v, &format!("fixed.{k}"))?;
        }
        let mut axes: Vec<(String, Vec<Value>)> = Vec::new();
        let mut domains: Vec<crate::tpe::Dimension> = Vec::new();
        let mut grid_size: u64 = 1;
        for (k, v) in &self.space {
            if !known.contains(k) {
                return Err(unknown("space", k));
            }
            let values = match v {
                Value::Array(values) => values.clone(),
                Value::Object(range) => {
                    if strategy != Strategy::Tpe {
                        return Err(err(
                            format!("space.{k}"),
                            "a range ({min, max, ...}) needs strategy tpe; give a list of values for grid and random",
                        ));
                    }
                    let domain = parse_range(k, range)?;
                    let placeholder = match &domain {
                        crate::tpe::Domain::Int { min, .. } => Value::from(*min),
                        crate::tpe::Domain::Float { min, .. } => Value::from(*min),
                        crate::tpe::Domain::Categorical(c) => c[0].clone(),
                    };
                    domains.push(crate::tpe::Dimension {
                        name: k.clone(),
                        domain,
                    });
                    axes.push((k.clone(), vec![placeholder]));
                    continue;
                }
                _ => {
                    return Err(err(
                        format!("space.{k}"),
                        "must be a list of values, e.g. [3, 5] (or, with strategy tpe, a range {\"min\": 1e-4, \"max\": 1e-2, \"log\": true})",
                    ))
                }
            };
            if values.is_empty() {
                return Err(err(
                    format!("space.{k}"),
                    "empty list; give at least one value",
                ));
            }
            for (i, value) in values.iter().enumerate() {
                let field = format!("space.{k}[{i}]");
                let plain_number = NUMBER_OR_LIST.contains(&k.as_str()) && value.is_number();
                if LIST_VALUED.contains(&k.as_str()) && !value.is_array() && !plain_number {
                    return Err(err(
                        field,
                        format!("{k} takes a list as its one value, so space lists its alternatives as lists, e.g. {k}: [[32, 64], [64, 128]] (in fixed: {k}: [32, 64])"),
                    ));
                }
                check_value(k, value, &field)?;
            }
            grid_size = grid_size.saturating_mul(values.len() as u64);
            if strategy == Strategy::Tpe {
                domains.push(crate::tpe::Dimension {
                    name: k.clone(),
                    domain: crate::tpe::Domain::Categorical(values.clone()),
                });
                // One placeholder: the trials' values are suggested when leased.
                axes.push((k.clone(), vec![values[0].clone()]));
                continue;
            }
            axes.push((k.clone(), values));
        }
        domains.sort_by(|a, b| a.name.cmp(&b.name));
        // Axes in alphabetical order whatever order the request had (protobuf Structs are
        // sorted anyway), so the same sweep always expands the same way.
        axes.sort_by(|a, b| a.0.cmp(&b.0));
        let varied: Vec<String> = axes.iter().map(|(k, _)| k.clone()).collect();

        let configs_wanted: u64 = match strategy {
            Strategy::Grid => {
                if self.num_trials != 0 {
                    return Err(err(
                        "numTrials",
                        "only used by the random strategy; grid runs every combination",
                    ));
                }
                grid_size
            }
            Strategy::Random => {
                if self.num_trials == 0 {
                    return Err(err(
                        "numTrials",
                        "required by the random strategy (how many configurations to draw)",
                    ));
                }
                if self.num_trials as u64 > grid_size {
                    return Err(err(
                        "numTrials",
                        format!("{} is more than the {grid_size} distinct configurations of space; use repeats to run one more than once", self.num_trials),
                    ));
                }
                self.num_trials as u64
            }
            Strategy::Tpe => {
                if self.num_trials == 0 {
                    return Err(err(
                        "numTrials",
                        "required by the tpe strategy (how many trials to suggest)",
                    ));
                }
                if domains.is_empty() {
                    return Err(err("space", "tpe needs at least one axis to search"));
                }
                self.num_trials as u64
            }
        };
        let total = configs_wanted.saturating_mul(repeats as u64);
        if total > limits.max_trials as u64 {
            return Err(err(
                "space",
                format!("{total} trials ({configs_wanted} configurations x {repeats} repeats) exceed this daemon's limit of {}", limits.max_trials),
            ));
        }

        // Grid order: the first axis (alphabetical) varies slowest. Configuration k of the
        // grid is k written in the mixed radix of the axis lengths.
        let radix: Vec<usize> = axes.iter().map(|(_, v)| v.len()).collect();
        let decode = |mut k: u64| -> Vec<usize> {
            let mut idx = vec![0usize; radix.len()];
            for a in (0..radix.len()).rev() {
                idx[a] = (k % radix[a] as u64) as usize;
                k /= radix[a] as u64;
            }
            idx
        };
        let choices: Vec<Vec<usize>> = match strategy {
            // `total` was checked against the limit, so the grid is small.
            Strategy::Grid => (0..grid_size).map(decode).collect(),
            // Every trial starts from the placeholders; its values come when it is leased.
            Strategy::Tpe => vec![vec![0; axes.len()]; configs_wanted as usize],
            Strategy::Random if grid_size <= 1 << 20 => {
                let mut all: Vec<u64> = (0..grid_size).collect();
                let mut rng = ChaCha8Rng::seed_from_u64(self.seed);
                all.shuffle(&mut rng);
                all.truncate(configs_wanted as usize);
                all.into_iter().map(decode).collect()
            }
            Strategy::Random => {
                // A huge space: draw distinct configurations without listing the grid.
                let mut rng = ChaCha8Rng::seed_from_u64(self.seed);
                let mut seen = std::collections::HashSet::new();
                let mut out = Vec::with_capacity(configs_wanted as usize);
                while out.len() < configs_wanted as usize {
                    let pick: Vec<usize> = radix.iter().map(|&n| rng.gen_range(0..n)).collect();
                    if seen.insert(pick.clone()) {
                        out.push(pick);
                    }
                }
                out
            }
        };

        if strategy == Strategy::Tpe {
            check_tpe_space(&domains, &self.fixed, dataset)?;
        }

        let mut trials = Vec::with_capacity(total as usize);
        for (n, choice) in choices.iter().enumerate() {
            let mut obj = self.fixed.clone();
            for (a, &i) in choice.iter().enumerate() {
                obj.insert(axes[a].0.clone(), axes[a].1[i].clone());
            }
            settle_blocks(&mut obj);
            let seed_given = obj.contains_key("seed");
            let obj_has_split_seed = obj.contains_key("splitSeed");
            let chosen: Map<String, Value> = axes
                .iter()
                .zip(choice)
                .map(|((k, vals), &i)| (k.clone(), vals[i].clone()))
                .collect();
            let mut params: TrialParams = serde_json::from_value(Value::Object(obj))
                .map_err(|e| err("space", format!("configuration #{n}: {e}")))?;
            if !seed_given {
                params.seed = self.seed;
            }
            if !obj_has_split_seed {
                params.split_seed = params.seed;
            }
            params.validate(dataset).map_err(|e| {
                if varied.is_empty() {
                    err(format!("fixed.{}", e.field), e.reason)
                } else {
                    err(
                        e.field.clone(),
                        format!("{} (configuration {})", e.reason, describe(&chosen)),
                    )
                }
            })?;
            for r in 0..repeats {
                let mut p = params.clone();
                p.seed = params.seed.wrapping_add(r as u64);
                trials.push(p);
            }
        }

        let mut request = self.clone();
        request.name = if name.is_empty() {
            format!("{}-{}", dataset.name, strategy_name(strategy))
        } else {
            name.to_string()
        };
        request.strategy = strategy_name(strategy).to_string();
        request.repeats = repeats;
        let max_epochs = trials.iter().map(|t| t.epochs).max().unwrap_or(1);
        let early_stopping = match self.early_stopping.as_str() {
            "median" => crate::pruning::EarlyStopping::Median {
                warmup_epochs: self.warmup_epochs,
                min_trials: self.min_trials.max(1),
            },
            "asha" => crate::pruning::EarlyStopping::Asha {
                grace_period: self.grace_period.max(1),
                reduction_factor: if self.reduction_factor == 0 {
                    3
                } else {
                    self.reduction_factor
                },
                max_epochs,
                promote: asha_promote,
            },
            _ => crate::pruning::EarlyStopping::None,
        };
        Ok(SweepSpec {
            name: request.name.clone(),
            dataset: dataset.name.to_string(),
            dataset_info: dataset.clone(),
            strategy,
            varied,
            trials,
            max_parallel: self.max_parallel,
            seed: self.seed,
            priority: self.priority,
            objective,
            early_stopping,
            tpe: (strategy == Strategy::Tpe).then(|| TpeSearch {
                space: domains,
                startup_trials: if self.startup_trials == 0 {
                    10
                } else {
                    self.startup_trials as usize
                },
                seed: self.seed,
            }),
            repeats,
            device,
            request,
        })
    }
}

/// `blocks` follows the length of `filters` (or else `kernelSizes`) when `obj` does not give
/// it, so `filters: [32, 64, 128]` alone is a three-block model.
fn settle_blocks(obj: &mut Map<String, Value>) {
    if obj.contains_key("blocks") {
        return;
    }
    for key in ["filters", "kernelSizes"] {
        if let Some(Value::Array(list)) = obj.get(key) {
            if !list.is_empty() {
                let blocks = Value::from(list.len());
                obj.insert("blocks".into(), blocks);
                return;
            }
        }
    }
}

/// Most configurations [`check_tpe_space`] builds from a search space's candidate values
/// before it checks the dimensions one at a time (about a tenth of a second of validation).
const TPE_CHECK_MAX_CONFIGURATIONS: usize = 100_000;

/// Values that stand for a dimension when checking what tpe can suggest: every choice of a
/// list; both ends of a real range (each check on a real hyperparameter is an interval);
/// every point of an integer range of at most 64 points, else its two lowest and two highest
/// points (parity and the extremes are what the checks on integers look at).
fn tpe_candidates(domain: &crate::tpe::Domain) -> Vec<Value> {
    use crate::tpe::Domain;
    match domain {
        Domain::Categorical(choices) => choices.clone(),
        Domain::Float { min, max, .. } if min == max => vec![Value::from(*min)],
        Domain::Float { min, max, .. } => vec![Value::from(*min), Value::from(*max)],
        Domain::Int { min, max, step, .. } => {
            let points = (max - min) / step + 1;
            let last = min + (points - 1) * step;
            if points <= 64 {
                (0..points).map(|i| Value::from(min + i * step)).collect()
            } else {
                vec![
                    Value::from(*min),
                    Value::from(min + step),
                    Value::from(last - step),
                    Value::from(last),
                ]
            }
        }
    }
}

/// Refuses a tpe search space that can suggest a configuration `TrialParams::validate`
/// refuses (an even kernel from an integer range, more pooling blocks than the input
/// allows, ...): every combination of the dimensions' candidate values, with the fixed
/// values, must validate. A space too large to combine whole is checked one dimension at a
/// time with the others at their first candidate.
fn check_tpe_space(
    space: &[crate::tpe::Dimension],
    fixed: &Map<String, Value>,
    dataset: &DatasetInfo,
) -> Result<(), SpecError> {
    let candidates: Vec<Vec<Value>> = space.iter().map(|d| tpe_candidates(&d.domain)).collect();
    let check = |choice: &[usize]| -> Result<(), SpecError> {
        let mut obj = fixed.clone();
        let mut chosen = Map::new();
        for ((d, values), &i) in space.iter().zip(&candidates).zip(choice) {
            obj.insert(d.name.clone(), values[i].clone());
            chosen.insert(d.name.clone(), values[i].clone());
        }
        settle_blocks(&mut obj);
        let params: TrialParams = serde_json::from_value(Value::Object(obj))
            .map_err(|e| err("space", format!("{e} (with {})", describe(&chosen))))?;
        params.validate(dataset).map_err(|e| {
            let field = if space.iter().any(|d| d.name == e.field) {
                format!("space.{}", e.field)
            } else {
                "space".to_string()
            };
            err(
                field,
                format!(
                    "{}: {} (tpe can suggest {}; narrow the range, or list the values allowed)",
                    e.field,
                    e.reason,
                    describe(&chosen)
                ),
            )
        })
    };
    let combinations = candidates
        .iter()
        .try_fold(1usize, |n, c| n.checked_mul(c.len()))
        .filter(|&n| n <= TPE_CHECK_MAX_CONFIGURATIONS);
    let mut choice = vec![0usize; space.len()];
    match combinations {
        Some(n) => {
            for mut k in 0..n {
                for (slot, c) in choice.iter_mut().zip(&candidates).rev() {
                    *slot = k % c.len();
                    k /= c.len();
                }
                check(&choice)?;
            }
        }
        None => {
            for (d, c) in candidates.iter().enumerate() {
                for i in 0..c.len() {
                    choice.iter_mut().for_each(|x| *x = 0);
                    choice[d] = i;
                    check(&choice)?;
                }
            }
        }
    }
    Ok(())
}

/// A numeric range of `space` for tpe: `{"min", "max"}` with optional `"log": true` and,
/// for integer hyperparameters, `"step"` (default 1).
fn parse_range(k: &str, range: &Map<String, Value>) -> Result<crate::tpe::Domain, SpecError> {
    let field = format!("space.{k}");
    // units takes a number too: a range of it is one hidden layer of a searched width.
    if LIST_VALUED.contains(&k) && !NUMBER_OR_LIST.contains(&k) {
        return Err(err(
            &field,
            format!("{k} is list-valued and takes no range; list its alternatives as lists, e.g. [[32, 64], [64, 128]]"),
        ));
    }
    for key in range.keys() {
        if !["min", "max", "log", "step"].contains(&key.as_str()) {
            return Err(err(
                &field,
                format!("unknown range key '{key}'; a range has min, max, log, step"),
            ));
        }
    }
    let number = |key: &str| -> Result<f64, SpecError> {
        range
            .get(key)
            .and_then(Value::as_f64)
            .ok_or_else(|| err(&field, format!("a range needs a number '{key}'")))
    };
    let (min, max) = (number("min")?, number("max")?);
    let log = match range.get("log") {
        None => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(err(&field, "'log' must be true or false")),
    };
    if min > max {
        return Err(err(&field, format!("min {min} is above max {max}")));
    }
    if log && min <= 0.0 {
        return Err(err(&field, "a log range needs min > 0"));
    }
    // Both ends must be values the hyperparameter takes (type and range).
    check_value(k, &range["min"], &format!("{field}.min"))?;
    check_value(k, &range["max"], &format!("{field}.max"))?;
    let integer = check_value(k, &Value::from(0.5), &field).is_err();
    let domain = if integer {
        if min.fract() != 0.0 || max.fract() != 0.0 {
            return Err(err(
                &field,
                format!("{k} is an integer: min and max must be whole"),
            ));
        }
        let step = match range.get("step") {
            None => 1,
            Some(v) => v
                .as_i64()
                .filter(|s| *s > 0)
                .ok_or_else(|| err(&field, "'step' must be a positive integer"))?,
        };
        crate::tpe::Domain::Int {
            min: min as i64,
            max: max as i64,
            step,
            log,
        }
    } else {
        if range.contains_key("step") {
            return Err(err(&field, format!("{k} is not an integer: no step")));
        }
        crate::tpe::Domain::Float { min, max, log }
    };
    domain.check().map_err(|e| err(&field, e))?;
    Ok(domain)
}

fn strategy_name(s: Strategy) -> &'static str {
    match s {
        Strategy::Grid => "grid",
        Strategy::Random => "random",
        Strategy::Tpe => "tpe",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::datasets::resolve_builtin;
    use serde_json::json;

    fn mnist() -> DatasetInfo {
        crate::datasets::resolve_builtin("mnist").unwrap()
    }

    fn request(v: Value) -> SweepRequest {
        serde_json::from_value(v).unwrap()
    }

    fn design_example() -> SweepRequest {
        request(json!({"name": "mnist-heads", "dataset": "mnist",
            "space": {"kernelSize": [3, 5], "dropout": [0, 0.25, 0.5], "head": ["gap", "dense"]},
            "fixed": {"epochs": 3, "batchSize": 64, "learningRate": 0.001},
            "strategy": "grid", "maxParallel": 2, "seed": 7}))
    }

    /// A tpe search space that can suggest a configuration the model family refuses is
    /// refused at submit, naming the range and a configuration it can suggest.
    #[test]
    fn tpe_ranges_that_can_suggest_invalid_models_are_refused_at_submit() {
        let tpe = |space: Value| {
            request(
                json!({"dataset": "mnist", "strategy": "tpe", "numTrials": 4,
                "space": space, "fixed": {"epochs": 1}}),
            )
            .validate(SweepLimits::default(), resolve_builtin)
        };
        let e = tpe(json!({"blocks": {"min": 1, "max": 10}})).unwrap_err();
        assert_eq!(e.field, "space.blocks", "{e}");
        assert!(
            e.reason.contains("blocks do not fit") && e.reason.contains("tpe can suggest blocks="),
            "{e}"
        );
        let e = tpe(json!({"kernelSize": {"min": 3, "max": 7}})).unwrap_err();
        assert_eq!(e.field, "space.kernelSize", "{e}");
        assert!(e.reason.contains("kernelSize=4"), "{e}");
        // Odd kernels only: allowed.
        assert!(tpe(json!({"kernelSize": {"min": 3, "max": 7, "step": 2}})).is_ok());
        // Each range alone is fine, together they are not: 4 blocks leave a 3x3 map at
        // the last block, too small for a 5x5 kernel.
        assert!(tpe(json!({"blocks": {"min": 1, "max": 4}})).is_ok());
        let e = tpe(json!({"blocks": {"min": 1, "max": 4}, "kernelSize": [3, 5]})).unwrap_err();
        assert_eq!(e.field, "space.kernelSize", "{e}");
        assert!(
            e.reason.contains("blocks=4") && e.reason.contains("kernelSize=5"),
            "{e}"
        );
        // Real ranges are checked at both ends.
        let e = tpe(json!({"dropout": {"min": 0.1, "max": 1.0}})).unwrap_err();
        assert_eq!(e.field, "space.dropout", "{e}");
        assert!(tpe(json!({"dropout": {"min": 0.0, "max": 0.9}, "learningRate": {"min": 1e-4, "max": 1e-2, "log": true}})).is_ok());
        // A wide integer range is checked at its ends and their neighbours.
        let e = tpe(json!({"baseFilters": {"min": 1, "max": 2000}})).unwrap_err();
        assert_eq!(e.field, "space.baseFilters", "{e}");
        assert!(tpe(json!({"units": {"min": 1, "max": 4096}})).is_ok());
    }

    #[test]
    fn grid_expands_the_cartesian_product_in_a_stable_order() {
        let spec = design_example()
            .validate(SweepLimits::default(), resolve_builtin)
            .unwrap();
        assert_eq!(spec.trials.len(), 12);
        assert_eq!(spec.varied, vec!["dropout", "head", "kernelSize"]);
        // The last axis varies fastest.
        assert_eq!(spec.trials[0].dropout, 0.0);
        assert_eq!(spec.trials[0].head, Head::Gap);
        assert_eq!(spec.trials[0].kernel_size, 3);
        assert_eq!(spec.trials[1].kernel_size, 5);
        assert_eq!(spec.trials[2].head, Head::Dense);
        assert_eq!(spec.trials[11].dropout, 0.5);
        // Fixed values and the sweep seed reach every trial.
        assert!(spec
            .trials
            .iter()
            .all(|t| t.epochs == 3 && t.batch_size == 64 && t.seed == 7));
        let mut seen = std::collections::HashSet::new();
        for t in &spec.trials {
            assert!(
                seen.insert(serde_json::to_string(t).unwrap()),
                "duplicate configuration"
            );
        }
    }

    #[test]
    fn independent_trials_start_costliest_first_and_the_rest_in_index_order() {
        let spec = design_example()
            .validate(SweepLimits::default(), resolve_builtin)
            .unwrap();
        let order = spec.start_order();
        let mut sorted = order.clone();
        sorted.sort();
        assert_eq!(sorted, (0..12).collect::<Vec<_>>(), "a permutation");
        let first: Vec<(u32, Head)> = order[..6]
            .iter()
            .map(|&i| (spec.trials[i].kernel_size, spec.trials[i].head))
            .collect();
        // Kernel 5 before kernel 3; within kernel 5 the dense head before GAP; trials that
        // differ only in dropout (equal cost) keep index order.
        assert_eq!(first[..3], [(5, Head::Dense); 3]);
        assert_eq!(first[3..], [(5, Head::Gap); 3]);
        assert!(order[..3].windows(2).all(|w| w[0] < w[1]), "{order:?}");
        assert_eq!(spec.trials[order[11]].kernel_size, 3);
        assert_eq!(spec.trials[order[11]].head, Head::Gap);

        // A larger training set outweighs a smaller model.
        let mut limits = design_example();
        limits.space = serde_json::from_value(json!({"trainLimit": [1000, 0]})).unwrap();
        let spec = limits
            .validate(SweepLimits::default(), resolve_builtin)
            .unwrap();
        assert_eq!(spec.start_order(), [1, 0]);

        // With early stopping or tpe, arrival order matters: index order.
        for (key, value) in [("earlyStopping", "asha"), ("earlyStopping", "median")] {
            let mut v = serde_json::to_value(design_example()).unwrap();
            v[key] = json!(value);
            let spec = request(v)
                .validate(SweepLimits::default(), resolve_builtin)
                .unwrap();
            assert_eq!(spec.start_order(), (0..12).collect::<Vec<_>>(), "{value}");
        }
    }

    #[test]
    fn random_draws_distinct_configurations_reproducibly() {
        let mut r = design_example();
        r.strategy = "random".into();
        r.num_trials = 5;
        let a = r.validate(SweepLimits::default(), resolve_builtin).unwrap();
        let b = r.validate(SweepLimits::default(), resolve_builtin).unwrap();
        assert_eq!(a.trials, b.trials);
        assert_eq!(a.trials.len(), 5);
        r.seed = 8;
        let c = r.validate(SweepLimits::default(), resolve_builtin).unwrap();
        let kinds = |s: &SweepSpec| {
            s.trials
                .iter()
                .map(|t| (t.kernel_size, t.head, (t.dropout * 100.0) as i32))
                .collect::<Vec<_>>()
        };
        assert_ne!(kinds(&a), kinds(&c), "another seed draws another sequence");
    }

    #[test]
    fn repeats_give_each_configuration_consecutive_seeds() {
        let mut r = design_example();
        r.space = json!({"head": ["gap", "dense"]})
            .as_object()
            .unwrap()
            .clone();
        r.repeats = 3;
        let s = r.validate(SweepLimits::default(), resolve_builtin).unwrap();
        let seeds: Vec<_> = s.trials.iter().map(|t| t.seed).collect();
        assert_eq!(seeds, vec![7, 8, 9, 7, 8, 9]);
    }

    fn refused(v: Value) -> SpecError {
        request(v)
            .validate(SweepLimits { max_trials: 50 }, resolve_builtin)
            .unwrap_err()
    }

    #[test]
    fn invalid_requests_name_the_field() {
        let cases = [
            (json!({"dataset": "imagenet"}), "dataset"),
            (json!({}), "dataset"),
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
                json!({"dataset": "mnist", "space": {"kernelSize": 3}}),
                "space.kernelSize",
            ),
            (
                json!({"dataset": "mnist", "space": {"dropout": [0.1, 1.0]}}),
                "dropout",
            ),
            (
                json!({"dataset": "mnist", "fixed": {"dropout": -0.1}}),
                "fixed.dropout",
            ),
            (
                json!({"dataset": "mnist", "space": {"kernelSize": [3, 4]}}),
                "kernelSize",
            ),
            (
                json!({"dataset": "mnist", "fixed": {"kernelSize": 29}}),
                "fixed.kernelSize",
            ),
            (
                json!({"dataset": "mnist", "fixed": {"blocks": 5}}),
                "fixed.blocks",
            ),
            (
                json!({"dataset": "mnist", "fixed": {"blocks": 4, "kernelSize": 5}}),
                "fixed.kernelSize",
            ),
            (
                json!({"dataset": "mnist", "fixed": {"blocks": 6, "kernelSize": 1}}),
                "fixed.blocks",
            ),
            (
                json!({"dataset": "mnist", "fixed": {"batchSize": 0}}),
                "fixed.batchSize",
            ),
            (
                json!({"dataset": "mnist", "fixed": {"batchSize": -4}}),
                "fixed.batchSize",
            ),
            (
                json!({"dataset": "mnist", "fixed": {"learningRate": 0}}),
                "fixed.learningRate",
            ),
            (
                json!({"dataset": "mnist", "fixed": {"learningRate": -0.1}}),
                "fixed.learningRate",
            ),
            (
                json!({"dataset": "mnist", "fixed": {"head": "conv"}}),
                "fixed.head",
            ),
            (
                json!({"dataset": "mnist", "space": {"head": ["gap", 3]}}),
                "space.head[1]",
            ),
            (
                json!({"dataset": "mnist", "fixed": {"output": "sigmoid"}}),
                "fixed.output",
            ),
            (
                json!({"dataset": "mnist", "space": {"precision": ["bf16", "fp16"]}}),
                "space.precision[1]",
            ),
            (json!({"dataset": "mnist", "strategy": "bayes"}), "strategy"),
            (
                json!({"dataset": "mnist", "strategy": "random"}),
                "numTrials",
            ),
            (json!({"dataset": "mnist", "objective": "f1"}), "objective"),
            (json!({"dataset": "mnist", "device": "tpu"}), "device"),
            (
                json!({"dataset": "mnist", "space": {"epochs": [1]}, "fixed": {"epochs": 2}}),
                "fixed.epochs",
            ),
            (
                json!({"dataset": "mnist", "space": {"units": [1,2,3,4,5,6,7,8], "baseFilters": [1,2,3,4,5,6,7,8]}}),
                "space",
            ),
        ];
        for (body, field) in cases {
            let e = refused(body.clone());
            assert_eq!(e.field, field, "{body} gave {e}");
            assert!(!e.reason.is_empty());
        }
    }

    #[test]
    fn feature_map_limits_follow_the_input_size() {
        let p = TrialParams {
            blocks: 4,
            ..TrialParams::default()
        };
        // 28 -> 14 -> 7 -> 3 -> 1: four pools fit, the kernel 3 still fits the 3x3 map.
        assert!(p.validate(&mnist()).is_ok());
        let p = TrialParams { blocks: 5, ..p };
        assert_eq!(
            p.validate(&mnist()).unwrap_err().field,
            "blocks",
            "block 5 would see a 1x1 map"
        );
        let p = TrialParams {
            blocks: 6,
            kernel_size: 1,
            ..TrialParams::default()
        };
        assert_eq!(p.validate(&mnist()).unwrap_err().field, "blocks");
        let p = TrialParams {
            blocks: 6,
            kernel_size: 1,
            input_size: InputSize::square(64),
            ..TrialParams::default()
        };
        assert!(p.validate(&mnist()).is_ok());
    }

    /// Every sweep file in `examples/` is a valid request (image folders stood in for by a
    /// two-class RGB folder of 64x64 images, as `examples/make_faces.rs` writes).
    #[test]
    fn every_example_sweep_validates() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples");
        let mut checked = 0;
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_none_or(|e| e != "json") {
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap();
            let req: SweepRequest =
                serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            let resolve = |name: &str| match name.strip_prefix("folder:") {
                Some(folder) => Ok(DatasetInfo {
                    name: name.to_string(),
                    source: crate::datasets::Source::Folder {
                        folder: folder.to_string(),
                        has_validation: true,
                        has_test: true,
                    },
                    input_size: 64,
                    channels: 3,
                    classes: 2,
                    class_names: vec!["happy".into(), "unhappy".into()],
                    train_examples: 600,
                    test_examples: 120,
                }),
                None => resolve_builtin(name),
            };
            req.validate(SweepLimits::default(), resolve)
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            checked += 1;
        }
        assert!(checked >= 6, "{checked} example sweeps");
    }

    #[test]
    fn backbones_and_fine_tuning_validate_with_the_field_and_the_reason() {
        let ok = |v: Value| {
            request(v)
                .validate(SweepLimits::default(), resolve_builtin)
                .unwrap_or_else(|e| panic!("{e}"))
        };
        let spec = ok(
            json!({"dataset": "mnist", "space": {"arch": ["cnn", "resnet18", "mobilenet_v2"]},
                             "fixed": {"initFrom": "file:w.safetensors", "freeze": "backbone",
                                       "fineTuneAfter": 2, "fineTuneBlocks": 1, "epochs": 4}}),
        );
        let archs: Vec<Arch> = spec.trials.iter().map(|t| t.arch).collect();
        assert_eq!(archs, [Arch::Cnn, Arch::Resnet18, Arch::MobilenetV2]);
        // The learning rate: learningRate until fineTuneAfter, then a tenth of it (no
        // fineTuneLearningRate), scaled by the schedule.
        let t = &spec.trials[1];
        let rates: Vec<f64> = (1..=4).map(|e| t.scheduled_learning_rate(e)).collect();
        assert_eq!(rates, [1e-3, 1e-3, 1e-4, 1e-4]);
        for (fixed, field, reason) in [
            (json!({"arch": "vgg16"}), "fixed.arch", "vgg16"),
            (
                json!({"arch": "resnet18", "normalize": "standardize"}),
                "normalize",
                "ImageNet",
            ),
            (
                json!({"fineTuneAfter": 1, "epochs": 3}),
                "fineTuneAfter",
                "set freeze",
            ),
            (
                json!({"fineTuneAfter": 3, "epochs": 3, "freeze": "backbone", "initFrom": "file:w"}),
                "fineTuneAfter",
                "no epoch to fine-tune",
            ),
            (
                json!({"arch": "resnet18", "fineTuneBlocks": 6}),
                "fineTuneBlocks",
                "1..=5",
            ),
            (
                json!({"arch": "mobilenet_v2", "fineTuneBlocks": 0}),
                "fineTuneBlocks",
                "1..=19",
            ),
            (json!({"freeze": "backbone"}), "freeze", "needs initFrom"),
            (
                json!({"fineTuneLearningRate": -1}),
                "fineTuneLearningRate",
                "outside",
            ),
        ] {
            let e = refused(json!({"dataset": "mnist", "fixed": fixed}));
            assert!(e.field.ends_with(field), "{fixed}: {e}");
            assert!(e.reason.contains(reason), "{fixed}: {e}");
        }
        // A backbone takes any input its padded convolutions keep at 1x1 or more; the
        // family's feature-map checks do not apply to it.
        ok(json!({"dataset": "mnist", "fixed": {"arch": "resnet18", "inputSize": 8}}));
    }

    /// `inputSize` is one side or `[height, width]`: a square one reads and writes as a
    /// number, a pair keeps its order, anything else is refused naming the field; in space
    /// a number and a pair mix; the feature-map check follows the smaller side.
    #[test]
    fn input_size_is_one_side_or_height_and_width() {
        let ok = |v: Value| {
            request(v)
                .validate(SweepLimits::default(), resolve_builtin)
                .unwrap_or_else(|e| panic!("{e}"))
        };
        let spec = ok(json!({"dataset": "mnist", "fixed": {"inputSize": [32, 48]}}));
        let size = spec.trials[0].input_size;
        assert_eq!((size.height, size.width), (32, 48));
        assert_eq!(size.to_string(), "32x48");
        let saved = serde_json::to_value(&spec.trials[0]).unwrap();
        assert_eq!(saved["inputSize"], json!([32, 48]));
        let back: TrialParams = serde_json::from_value(saved).unwrap();
        assert_eq!(back.input_size, size);
        // [28, 28] is the square 28, written as a number as before.
        let spec = ok(json!({"dataset": "mnist", "fixed": {"inputSize": [28, 28]}}));
        assert_eq!(spec.trials[0].input_size, InputSize::square(28));
        assert_eq!(
            serde_json::to_value(&spec.trials[0]).unwrap()["inputSize"],
            json!(28)
        );
        // One number in a list, three numbers, a side out of range: refused with the field.
        for (size, reason) in [
            (json!([64]), "1 numbers; give one side or [height, width]"),
            (json!([64, 64, 3]), "3 numbers"),
            (json!([64, 2000]), "64x2000 has a side outside 4..=1024"),
            (json!([2, 64]), "2x64 has a side outside 4..=1024"),
        ] {
            let e = refused(json!({"dataset": "mnist", "fixed": {"inputSize": size}}));
            assert_eq!(e.field, "fixed.inputSize", "{e}");
            assert!(e.reason.contains(reason), "{size}: {e}");
        }
        // In space: a plain number is a square alternative, a pair a non-square one.
        let spec = ok(json!({"dataset": "mnist", "space": {"inputSize": [28, [32, 48]]}}));
        let sizes: Vec<String> = spec
            .trials
            .iter()
            .map(|t| t.input_size.to_string())
            .collect();
        assert_eq!(sizes, ["28", "32x48"]);
        // The narrow side runs out first: on 64x8, block 3's 3x3 kernel meets a 16x2 map,
        // and with 1x1 kernels block 4 gets 8x1, less than its pooling window.
        let e = refused(json!({"dataset": "mnist", "fixed": {"inputSize": [64, 8], "blocks": 3}}));
        assert_eq!(e.field, "fixed.kernelSize", "{e}");
        assert!(
            e.reason
                .contains("16x2 feature map of block 3 (input 64x8)"),
            "{e}"
        );
        let e = refused(
            json!({"dataset": "mnist", "fixed": {"inputSize": [64, 8], "blocks": 4, "kernelSize": 1}}),
        );
        assert_eq!(e.field, "fixed.blocks", "{e}");
        assert!(e.reason.contains("input of 64x8: block 4 gets 8x1"), "{e}");
        ok(json!({"dataset": "mnist", "fixed": {"inputSize": [64, 8], "blocks": 2}}));
    }

    /// Keras-style layers: valid padding takes even kernels, lists of filters and kernels
    /// set the block count, list-valued hyperparameters take lists of lists in space.
    #[test]
    fn keras_layers_validate_and_expand() {
        let ok = |v: Value| {
            request(v)
                .validate(SweepLimits::default(), resolve_builtin)
                .unwrap_or_else(|e| panic!("{e}"))
        };
        // Even kernels: refused with same padding, taken with valid padding.
        let e = refused(json!({"dataset": "mnist", "fixed": {"kernelSize": 4}}));
        assert_eq!(e.field, "fixed.kernelSize", "{e}");
        assert!(e.reason.contains("valid padding takes even ones"), "{e}");
        let spec = ok(json!({"dataset": "mnist", "fixed": {"kernelSize": 4, "padding": "valid"}}));
        assert_eq!(spec.trials[0].kernel_size, 4);
        // filters alone: blocks follows its length; a kernel per block too.
        let spec = ok(
            json!({"dataset": "mnist", "fixed": {"filters": [8, 16, 32], "kernelSizes": [5, 3, 3]}}),
        );
        assert_eq!(spec.trials[0].blocks, 3);
        assert_eq!(spec.trials[0].filters, vec![8, 16, 32]);
        // blocks given and different: refused, naming the list.
        let e = refused(json!({"dataset": "mnist", "fixed": {"filters": [8, 16], "blocks": 3}}));
        assert_eq!(e.field, "fixed.filters", "{e}");
        assert!(e.reason.contains("2 entries for 3 blocks"), "{e}");
        let e = refused(
            json!({"dataset": "mnist", "fixed": {"kernelSizes": [3, 4], "filters": [8, 16]}}),
        );
        assert_eq!(e.field, "fixed.kernelSizes[1]", "{e}");
        // In space, a list-valued hyperparameter's alternatives are lists.
        let spec = ok(
            json!({"dataset": "mnist", "space": {"filters": [[8, 16], [8, 16, 32]], "units": [[64, 32], 128, []]}}),
        );
        assert_eq!(spec.trials.len(), 6);
        let blocks: Vec<u32> = spec.trials.iter().map(|t| t.blocks).collect();
        assert_eq!(blocks, [2, 2, 2, 3, 3, 3]);
        let units: Vec<Vec<u32>> = spec.trials.iter().map(|t| t.units.0.clone()).collect();
        assert_eq!(units[..3], [vec![64, 32], vec![128], vec![]]);
        let e = refused(json!({"dataset": "mnist", "space": {"filters": [32, 64]}}));
        assert_eq!(e.field, "space.filters[0]", "{e}");
        assert!(e.reason.contains("lists its alternatives as lists"), "{e}");
        // tpe: lists of lists are categories; a range of a list-valued one is refused, a
        // list of filters that does not fit the input is refused at submit.
        let tpe = |space: Value| {
            request(json!({"dataset": "mnist", "strategy": "tpe", "numTrials": 3, "space": space}))
                .validate(SweepLimits::default(), resolve_builtin)
        };
        let spec = tpe(json!({"filters": [[8, 16], [8, 16, 32]]})).unwrap();
        let search = spec.tpe.unwrap();
        let (p, _) = search.suggest(0, &spec.trials[0], &[], &[]);
        assert_eq!(p.blocks as usize, p.filters.len(), "{p:?}");
        let e = tpe(json!({"filters": {"min": 8, "max": 64}})).unwrap_err();
        assert!(e.reason.contains("takes no range"), "{e}");
        let e = tpe(json!({"filters": [[8], [8, 16, 32, 64, 128]]})).unwrap_err();
        assert_eq!(e.field, "space", "{e}");
        assert!(e.reason.contains("blocks do not fit"), "{e}");
        // Valid padding shrinks the map: two 5x5 valid blocks on 28 leave 4x4 after the
        // second convolution, a third does not fit its 2x2 pooling.
        let p = TrialParams {
            padding: Padding::Valid,
            kernel_size: 5,
            blocks: 3,
            ..TrialParams::default()
        };
        let e = p.validate(&mnist()).unwrap_err();
        assert_eq!(e.field, "kernelSize", "{e}");
        assert!(e.reason.contains("4x4 feature map of block 3"), "{e}");
        let p = TrialParams { blocks: 2, ..p };
        assert!(p.validate(&mnist()).is_ok());
        // Ranges of the new numbers.
        for (field, value) in [
            ("strides", json!(0)),
            ("poolSize", json!(9)),
            ("leakySlope", json!(1.0)),
            ("adamEpsilon", json!(0)),
            ("units", json!([64, 0])),
        ] {
            let e = refused(json!({"dataset": "mnist", "fixed": {field: value}}));
            assert_eq!(e.field, format!("fixed.{field}"), "{e}");
        }
    }

    #[test]
    fn every_public_name_round_trips() {
        let names = hyperparameter_names();
        for n in [
            "kernelSize",
            "baseFilters",
            "blocks",
            "head",
            "units",
            "dropout",
            "batchNorm",
            "activation",
            "optimizer",
            "learningRate",
            "batchSize",
            "epochs",
            "trainLimit",
            "testLimit",
            "seed",
            "inputSize",
            "rotationRange",
        ] {
            assert!(names.contains(&n.to_string()), "{n} missing");
        }
    }
}
