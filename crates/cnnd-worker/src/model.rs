//! The CNN family of DESIGN.md section 2, built with `tch::nn` from a trial's hyperparameters:
//! `blocks` x [conv(k x k, same or valid padding, stride) -> batch norm -> activation ->
//! max- or average-pool], then a `dense` head (flatten, hidden layers each with activation
//! and dropout, output) or a `gap` head (global average pooling, dropout, output).
//!
//! Owns: layer construction, initialisation, the forward pass, parameter counting and the
//! memory format of the weights ([`use_channels_last`]). The family's arithmetic (filters
//! and kernel per block, feature-map sides, parameter counts) is `cnnd_core::model_size`'s;
//! the tests check it against the built models.
//! Must not touch: data loading, the training loop, and anything of the control plane (store,
//! scheduler, api, charts); it only consumes [`TrialParams`] from `sweep`.
//!
//! Initialisation (`weightInit`): `torch` follows PyTorch's defaults (so that
//! `bench/torch_reference.py` builds the same model): conv and linear weights
//! Kaiming-uniform with a = sqrt(5), i.e. uniform in +-1/sqrt(fan_in), biases uniform in
//! +-1/sqrt(fan_in); `glorot_uniform` follows Keras's: weights uniform in
//! +-sqrt(6 / (fan_in + fan_out)), biases zero. Batch norm starts at scale 1 and shift 0
//! either way.

use tch::nn::{self, ModuleT};
use tch::{Kind, TchError, Tensor};

use cnnd_core::model_size::{
    block_filters, block_kernel, conv_has_bias, conv_padding, final_side, hidden_name,
    hidden_units, output_units, Hw,
};
use cnnd_core::sweep::{Activation, Freeze, Head, Pooling, Precision, TrialParams, WeightInit};

use crate::backbone::Backbone;

pub(crate) const BN_EPS: f64 = 1e-5;
pub(crate) const BN_MOMENTUM: f64 = 0.1;

/// PyTorch's default weight initialisation: Kaiming uniform with a = sqrt(5).
const TORCH_DEFAULT_INIT: nn::Init = nn::Init::Kaiming {
    dist: nn::init::NormalOrUniform::Uniform,
    fan: nn::init::FanInOut::FanIn,
    non_linearity: nn::init::NonLinearity::ExplicitGain(0.577_350_269_189_625_8), // sqrt(1/3)
};

/// The initialisers of a weight with `fan_in` inputs and `fan_out` outputs per position and
/// of its bias, by the trial's [`WeightInit`].
fn initialisers(init: WeightInit, fan_in: i64, fan_out: i64) -> (nn::Init, nn::Init) {
    match init {
        WeightInit::Torch => {
            let bound = 1.0 / (fan_in as f64).sqrt();
            (
                TORCH_DEFAULT_INIT,
                nn::Init::Uniform {
                    lo: -bound,
                    up: bound,
                },
            )
        }
        WeightInit::GlorotUniform => {
            let limit = (6.0 / (fan_in + fan_out) as f64).sqrt();
            (
                nn::Init::Uniform {
                    lo: -limit,
                    up: limit,
                },
                nn::Init::Const(0.0),
            )
        }
    }
}

#[derive(Debug)]
struct Block {
    conv: nn::Conv2D,
    bn: Option<nn::BatchNorm>,
    padding: i64,
}

#[derive(Debug)]
enum HeadLayers {
    /// Flatten, then each hidden layer (linear -> activation -> dropout), then the output.
    Dense {
        hidden: Vec<nn::Linear>,
        out: nn::Linear,
    },
    Gap {
        out: nn::Linear,
    },
}

/// The family's convolution blocks.
#[derive(Debug)]
struct FamilyBody {
    blocks: Vec<Block>,
    stride: i64,
    pooling: Pooling,
    pool: i64,
}

/// What comes before the head.
#[derive(Debug)]
enum Body {
    Family(FamilyBody),
    /// A pretrained backbone; it ends with global average pooling, so the head reads
    /// `[N, features]`.
    Backbone(Backbone),
}

/// The kind a forward pass computes in ([`Net::compute_in`]); the variables stay fp32.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Compute(pub(crate) Kind);

impl Compute {
    /// `t` in the compute kind (itself when it already is).
    pub(crate) fn cast(self, t: &Tensor) -> Result<Tensor, TchError> {
        if t.kind() == self.0 {
            Ok(t.shallow_clone())
        } else {
            t.f_to_kind(self.0)
        }
    }

    /// A bias-free or biased convolution with the weights cast.
    pub(crate) fn conv(
        self,
        x: &Tensor,
        conv: &nn::Conv2D,
        stride: i64,
        padding: i64,
        groups: i64,
    ) -> Result<Tensor, TchError> {
        let bias = conv.bs.as_ref().map(|t| self.cast(t)).transpose()?;
        x.f_conv2d(
            &self.cast(&conv.ws)?,
            bias.as_ref(),
            [stride, stride],
            [padding, padding],
            [1, 1],
            groups,
        )
    }
}

/// Batch norm over `x` with fp32 scale, shift and running statistics (also for a bf16 `x`).
pub(crate) fn batch_norm(x: &Tensor, bn: &nn::BatchNorm, train: bool) -> Result<Tensor, TchError> {
    x.f_batch_norm(
        bn.ws.as_ref(),
        bn.bs.as_ref(),
        Some(&bn.running_mean),
        Some(&bn.running_var),
        train,
        BN_MOMENTUM,
        BN_EPS,
        true,
    )
}

/// One model: the family's blocks or a backbone, then the head. Implements
/// [`nn::ModuleT`]; [`Net::f_forward_t`] is the fallible forward pass the training loop uses.
#[derive(Debug)]
pub struct Net {
    body: Body,
    head: HeadLayers,
    activation: Activation,
    leaky_slope: f64,
    dropout: f64,
    compute: Compute,
}

/// Builds the model of `p` for `channels`-channel `height x width` inputs (one side for a
/// square) and `classes` classes, with its variables under `vs`: the family's blocks, or the
/// backbone of `arch` (built for three channels; a one-channel input is repeated).
pub fn build(
    vs: &nn::Path,
    p: &TrialParams,
    channels: i64,
    input: impl Into<Hw>,
    classes: i64,
) -> Net {
    let input: Hw = input.into();
    let linear = |name: &str, inputs: i64, outputs: i64| {
        let (ws_init, bs_init) = initialisers(p.weight_init, inputs, outputs);
        let cfg = nn::LinearConfig {
            ws_init,
            bs_init: Some(bs_init),
            bias: true,
        };
        nn::linear(crate::backbone::path(vs, name), inputs, outputs, cfg)
    };
    let outputs = output_units(p, classes);
    let dense = |features: i64, out_name: &str| {
        let mut features = features;
        let mut hidden = Vec::new();
        for (i, &units) in hidden_units(p).iter().enumerate() {
            hidden.push(linear(&hidden_name(i), features, units as i64));
            features = units as i64;
        }
        HeadLayers::Dense {
            hidden,
            out: linear(out_name, features, outputs),
        }
    };
    let (body, head) = match cnnd_core::backbones::backbone(p.arch) {
        Some(spec) => {
            let head = dense(spec.features, spec.classifier);
            let body_inference = p.freeze != Freeze::None;
            (
                Body::Backbone(Backbone::build(vs, &spec, body_inference)),
                head,
            )
        }
        None => {
            let (body, out_ch) = build_family_body(vs, p, channels);
            let head = match p.head {
                Head::Dense => {
                    let (h, w) = (final_side(p, input.height), final_side(p, input.width));
                    dense(out_ch * h * w, "out")
                }
                Head::Gap => HeadLayers::Gap {
                    out: linear("out", out_ch, outputs),
                },
            };
            (Body::Family(body), head)
        }
    };
    Net {
        body,
        head,
        activation: p.activation,
        leaky_slope: p.leaky_slope,
        dropout: p.dropout,
        compute: Compute(Kind::Float),
    }
}

/// The family's blocks and the channels of the last one.
fn build_family_body(vs: &nn::Path, p: &TrialParams, channels: i64) -> (FamilyBody, i64) {
    let mut blocks = Vec::with_capacity(p.blocks as usize);
    let mut in_ch = channels;
    let mut out_ch = channels;
    for i in 0..p.blocks {
        out_ch = block_filters(p, i);
        let k = block_kernel(p, i);
        let path = vs / format!("block{i}");
        let (ws_init, bs_init) = initialisers(p.weight_init, in_ch * k * k, out_ch * k * k);
        let padding = conv_padding(p, k);
        let cfg = nn::ConvConfig {
            padding,
            stride: p.strides as i64,
            bias: conv_has_bias(p),
            ws_init,
            bs_init,
            ..Default::default()
        };
        let conv = nn::conv2d(&path / "conv", in_ch, out_ch, k, cfg);
        let bn = p.batch_norm.then(|| {
            let cfg = nn::BatchNormConfig {
                eps: BN_EPS,
                momentum: BN_MOMENTUM,
                ws_init: nn::Init::Const(1.0),
                bs_init: nn::Init::Const(0.0),
                ..Default::default()
            };
            nn::batch_norm2d(&path / "bn", out_ch, cfg)
        });
        blocks.push(Block { conv, bn, padding });
        in_ch = out_ch;
    }
    let body = FamilyBody {
        blocks,
        stride: p.strides as i64,
        pooling: p.pooling,
        pool: p.pool_size as i64,
    };
    (body, out_ch)
}

pub(crate) fn activate(xs: &Tensor, a: Activation, leaky_slope: f64) -> Result<Tensor, TchError> {
    match a {
        Activation::Relu => xs.f_relu(),
        // libtorch's leaky_relu has the slope fixed at 0.01 in tch; for 0 <= slope < 1,
        // max(x, slope * x) is the same function.
        Activation::LeakyRelu if leaky_slope == 0.01 => xs.f_leaky_relu(),
        Activation::LeakyRelu => xs.f_maximum(&xs.f_mul_scalar(leaky_slope)?),
        Activation::Elu => xs.f_elu(),
        Activation::Gelu => xs.f_gelu("none"),
        Activation::Tanh => xs.f_tanh(),
        Activation::Relu6 => xs.f_relu6(),
    }
}

impl FamilyBody {
    fn forward(
        &self,
        xs: &Tensor,
        train: bool,
        compute: Compute,
        act: &dyn Fn(&Tensor) -> Result<Tensor, TchError>,
    ) -> Result<Tensor, TchError> {
        let mut x = compute.cast(xs)?;
        let pool = self.pool;
        for b in &self.blocks {
            x = compute.conv(&x, &b.conv, self.stride, b.padding, 1)?;
            if let Some(bn) = &b.bn {
                x = batch_norm(&x, bn, train)?;
            }
            x = act(&x)?;
            if pool > 1 {
                x = match self.pooling {
                    Pooling::Max => {
                        x.f_max_pool2d([pool, pool], [pool, pool], [0, 0], [1, 1], false)?
                    }
                    Pooling::Avg => {
                        x.f_avg_pool2d([pool, pool], [pool, pool], [0, 0], false, true, None)?
                    }
                };
            }
        }
        Ok(x)
    }
}

impl Net {
    /// Computes the forward pass in `kind` from now on: `Kind::BFloat16` for mixed precision
    /// (the input and each weight are cast once per pass, the casts are part of the graph so
    /// gradients reach the fp32 variables in fp32; batch norm reads its fp32 scale, shift and
    /// running statistics as they are; the logits come back fp32 for the loss), `Kind::Float`
    /// for plain fp32.
    pub fn compute_in(&mut self, kind: Kind) {
        self.compute = Compute(kind);
    }

    /// The forward pass, returning libtorch errors instead of panicking. `[N, C, H, W]` in,
    /// `[N, outputs]` fp32 logits out.
    pub fn f_forward_t(&self, xs: &Tensor, train: bool) -> Result<Tensor, TchError> {
        let compute = self.compute;
        let act = |x: &Tensor| activate(x, self.activation, self.leaky_slope);
        let x = match &self.body {
            Body::Family(body) => body.forward(xs, train, compute, &act)?,
            Body::Backbone(body) => body.forward(xs, train, compute)?,
        };
        let dropout = |x: Tensor| -> Result<Tensor, TchError> {
            if self.dropout > 0.0 && train {
                x.f_dropout(self.dropout, train)
            } else {
                Ok(x)
            }
        };
        let linear = |x: &Tensor, layer: &nn::Linear| -> Result<Tensor, TchError> {
            let bias = layer.bs.as_ref().map(|t| compute.cast(t)).transpose()?;
            x.f_linear(&compute.cast(&layer.ws)?, bias.as_ref())
        };
        let logits = match &self.head {
            HeadLayers::Dense { hidden, out } => {
                let mut x = x.f_flatten(1, -1)?;
                if hidden.is_empty() {
                    x = dropout(x)?;
                }
                for layer in hidden {
                    x = dropout(act(&linear(&x, layer)?)?)?;
                }
                linear(&x, out)?
            }
            HeadLayers::Gap { out } => {
                let x = dropout(x.f_mean_dim([2i64, 3].as_slice(), false, None)?)?;
                linear(&x, out)?
            }
        };
        if logits.kind() == Kind::Float {
            Ok(logits)
        } else {
            logits.f_to_kind(Kind::Float)
        }
    }
}

impl ModuleT for Net {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        match self.f_forward_t(xs, train) {
            Ok(t) => t,
            Err(e) => panic!("forward pass failed: {e}"),
        }
    }
}

/// The precision a trial computes in on `device`: `auto` is bf16 on CPUs with AMX-BF16 or
/// AVX512-BF16 (where it is measured faster at fp32's accuracy, docs/BENCHMARKS.md section
/// 1), fp32 elsewhere, CUDA included (not measured there yet).
pub fn resolve_precision(asked: Precision, device: tch::Device) -> Precision {
    match asked {
        Precision::Auto if device == tch::Device::Cpu && cpu_has_fast_bf16() => Precision::Bf16,
        Precision::Auto => Precision::Fp32,
        other => other,
    }
}

/// True when `/proc/cpuinfo` lists AMX-BF16 or AVX512-BF16.
pub fn cpu_has_fast_bf16() -> bool {
    static FAST: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *FAST.get_or_init(|| {
        std::fs::read_to_string("/proc/cpuinfo").is_ok_and(|info| {
            info.lines().filter(|l| l.starts_with("flags")).any(|l| {
                l.split_whitespace()
                    .any(|f| f == "amx_bf16" || f == "avx512_bf16")
            })
        })
    })
}

/// Gives every 4-D variable (the convolution kernels) channels-last strides, in place: same
/// shape and values, `[N, C, H, W]` stored as `N, H, W, C`. libtorch then runs every
/// convolution of the model in channels-last (oneDNN without reordering to and from its
/// blocked layout on every call), and gradients and optimiser state (`zeros_like`) follow
/// the parameters' layout. On this project's CPUs this trains 1.4x faster at one thread
/// (docs/BENCHMARKS.md section 1); call it before the optimiser is built.
pub fn use_channels_last(vs: &nn::VarStore) -> Result<(), TchError> {
    let _no_grad = tch::no_grad_guard();
    for (_, mut var) in vs.variables() {
        if let [n, c, h, w] = var.size()[..] {
            // Strides set explicitly, also for size-1 dimensions (a 1-channel first layer),
            // where permute + contiguous would leave them ambiguous and libtorch would pick
            // the default layout for that convolution.
            let nhwc = var.f_permute([0, 2, 3, 1])?.f_contiguous()?.f_as_strided(
                [n, c, h, w],
                [h * w * c, 1, w * c, c],
                0,
            )?;
            var.f_set_data(&nhwc)?;
        }
    }
    Ok(())
}

/// Number of trainable parameters (weights and biases; batch-norm running statistics are not
/// parameters), as PyTorch's `sum(p.numel() for p in model.parameters())`.
pub fn parameter_count(vs: &nn::VarStore) -> u64 {
    vs.trainable_variables()
        .iter()
        .map(|t| t.numel() as u64)
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use cnnd_core::model_size::model_size;
    use cnnd_core::sweep::{DenseUnits, Output};
    use tch::{Device, Kind};

    fn net(p: &TrialParams, classes: i64) -> (nn::VarStore, Net) {
        let vs = nn::VarStore::new(Device::Cpu);
        let net = build(&vs.root(), p, 1, 28, classes);
        (vs, net)
    }

    #[test]
    fn channels_last_keeps_shapes_and_outputs() {
        let (vs, net) = net(&TrialParams::default(), 10);
        let x = Tensor::rand([4, 1, 28, 28], (Kind::Float, Device::Cpu));
        let before = net.forward_t(&x, false);
        use_channels_last(&vs).unwrap();
        let conv = &vs.variables()["block0.conv.weight"];
        assert_eq!(conv.size(), [32, 1, 3, 3]);
        // [N, C, H, W] stored as N, H, W, C: the channel stride is 1.
        assert_eq!(conv.stride(), [9, 1, 3, 1]);
        let conv2 = &vs.variables()["block1.conv.weight"];
        assert_eq!(conv2.stride(), [288, 1, 96, 32]);
        let after = net.forward_t(&x, false);
        assert!(before.allclose(&after, 1e-5, 1e-6, false));
    }

    #[test]
    fn seed_model_parameter_counts() {
        // conv1 1*32*9 (no bias with BN) + bn1 2*32 + conv2 32*64*9 + bn2 2*64
        let convs = 288 + 64 + 18_432 + 128;
        // dense: 64*7*7 -> 128 -> 10
        let (vs, _) = net(&TrialParams::default(), 10);
        assert_eq!(
            parameter_count(&vs),
            convs + (3136 * 128 + 128) + (128 * 10 + 10)
        );
        assert_eq!(parameter_count(&vs), 421_738);
        // gap: 64 -> 10
        let gap = TrialParams {
            head: Head::Gap,
            ..TrialParams::default()
        };
        let (vs, _) = net(&gap, 10);
        assert_eq!(parameter_count(&vs), convs + 64 * 10 + 10);
        assert_eq!(parameter_count(&vs), 19_562);
        // Without batch norm the convolutions get biases and lose the BN scale/shift.
        let plain = TrialParams {
            head: Head::Gap,
            batch_norm: false,
            ..TrialParams::default()
        };
        let (vs, _) = net(&plain, 10);
        assert_eq!(parameter_count(&vs), (288 + 32) + (18_432 + 64) + 650);
    }

    #[test]
    fn model_size_matches_the_built_model_and_hand_counts() {
        // Parameters: the estimate agrees with libtorch's count on the built model.
        for head in [Head::Dense, Head::Gap] {
            for (k, blocks, batch_norm) in [(3, 2, true), (5, 2, false), (1, 3, true), (7, 1, true)]
            {
                let p = TrialParams {
                    head,
                    kernel_size: k,
                    blocks,
                    batch_norm,
                    base_filters: 8,
                    units: DenseUnits(vec![24]),
                    ..TrialParams::default()
                };
                let (vs, _) = net(&p, 10);
                assert_eq!(
                    model_size(&p, 1, 28, 10).parameters,
                    parameter_count(&vs),
                    "{head:?} k={k} blocks={blocks} bn={batch_norm}"
                );
            }
        }
        // Forward MACs of the seed model: conv1 28*28*9*1*32, conv2 14*14*9*32*64,
        // dense 3136*128 + 128*10.
        let seed = model_size(&TrialParams::default(), 1, 28, 10);
        assert_eq!(seed.forward_macs, 225_792 + 3_612_672 + 401_408 + 1_280);
        // Kernel 5 costs more than kernel 3; the dense head more than GAP.
        let k5 = TrialParams {
            kernel_size: 5,
            ..TrialParams::default()
        };
        let gap = TrialParams {
            head: Head::Gap,
            ..TrialParams::default()
        };
        let cost = |p: &TrialParams| model_size(p, 1, 28, 10).training_macs_per_image(64);
        assert!(cost(&k5) > cost(&TrialParams::default()));
        assert!(cost(&TrialParams::default()) > cost(&gap));
    }

    #[test]
    fn output_shapes_for_both_heads_and_many_shapes() {
        tch::set_num_threads(1);
        tch::manual_seed(0);
        let xs = Tensor::rand([3, 1, 28, 28], (Kind::Float, Device::Cpu));
        for head in [Head::Dense, Head::Gap] {
            for (k, blocks) in [(1, 1), (3, 2), (5, 2), (7, 1), (3, 3), (3, 4), (1, 4)] {
                let p = TrialParams {
                    head,
                    kernel_size: k,
                    blocks,
                    base_filters: 4,
                    units: DenseUnits(vec![16]),
                    ..TrialParams::default()
                };
                let (_vs, n) = net(&p, 10);
                for train in [true, false] {
                    let y = n.forward_t(&xs, train);
                    assert_eq!(y.size(), [3, 10], "{head:?} k={k} blocks={blocks}");
                }
            }
        }
        let p = TrialParams {
            output: Output::Sigmoid,
            ..TrialParams::default()
        };
        let (_vs, n) = net(&p, 2);
        assert_eq!(n.forward_t(&xs, false).size(), [3, 1]);
    }
}
