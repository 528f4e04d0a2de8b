//! The pretrained backbones (`arch: resnet18 | mobilenet_v2`) built with tch from their
//! description in `cnnd_core::backbones`, under torchvision's variable names, so that a
//! torchvision `state_dict` saved as safetensors loads name for name (`transfer`), and the
//! forward pass torchvision's: input normalised with ImageNet's mean and deviation (a
//! one-channel image repeated to three channels first), each convolution followed by batch
//! norm and its activation, residual additions, global average pooling. The head is
//! `model`'s.
//!
//! Owns: building the body's layers and its forward pass, and the batch-norm mode of a
//! frozen body (inference, as Keras's transfer-learning guide runs its base model). Must not
//! touch: the head, training, data.
//!
//! Verified against torchvision 0.26 on the same weights and input within 1e-4
//! (tests/backbones.rs, with `bench/torchvision_export.py`).

use tch::nn;
use tch::{Kind, TchError, Tensor};

use cnnd_core::backbones::{Act, ConvBn, IMAGENET_MEAN, IMAGENET_STD};

use crate::model::{batch_norm, Compute, BN_EPS, BN_MOMENTUM};

/// The path of a dotted variable prefix (`layer1.0.conv1`) under `root`.
pub fn path<'a>(root: &nn::Path<'a>, dotted: &str) -> nn::Path<'a> {
    let mut parts = dotted.split('.');
    let first = parts.next().unwrap_or_default();
    parts.fold(root / first, |p, part| &p / part)
}

#[derive(Debug)]
struct Layer {
    conv: nn::Conv2D,
    bn: nn::BatchNorm,
    spec: ConvBn,
}

#[derive(Debug)]
struct Block {
    convs: Vec<Layer>,
    shortcut: Option<Layer>,
    residual: bool,
    after_add: Act,
    max_pool: bool,
}

/// A backbone's body: its blocks, the ImageNet normalisation, the batch-norm mode.
#[derive(Debug)]
pub struct Backbone {
    blocks: Vec<Block>,
    /// `[1, 3, 1, 1]` mean and standard deviation.
    mean: Tensor,
    std: Tensor,
    /// Batch norms in inference mode whatever the pass (a frozen body).
    bn_inference: bool,
}

fn layer(root: &nn::Path, spec: &ConvBn) -> Layer {
    let conv_cfg = nn::ConvConfig {
        stride: spec.stride,
        padding: spec.padding,
        groups: spec.groups,
        bias: false,
        // torchvision's: Kaiming normal, fan out, for ReLU.
        ws_init: nn::Init::Kaiming {
            dist: nn::init::NormalOrUniform::Normal,
            fan: nn::init::FanInOut::FanOut,
            non_linearity: nn::init::NonLinearity::ReLU,
        },
        ..Default::default()
    };
    let conv = nn::conv2d(
        path(root, &spec.conv),
        spec.in_channels,
        spec.out_channels,
        spec.kernel,
        conv_cfg,
    );
    let bn_cfg = nn::BatchNormConfig {
        eps: BN_EPS,
        momentum: BN_MOMENTUM,
        ws_init: nn::Init::Const(1.0),
        bs_init: nn::Init::Const(0.0),
        ..Default::default()
    };
    let bn = nn::batch_norm2d(path(root, &spec.bn), spec.out_channels, bn_cfg);
    Layer {
        conv,
        bn,
        spec: spec.clone(),
    }
}

impl Backbone {
    /// Builds the body of `spec` under `root`; `bn_inference` keeps its batch norms in
    /// inference mode (a frozen, pretrained body).
    pub fn build(
        root: &nn::Path,
        spec: &cnnd_core::backbones::Backbone,
        bn_inference: bool,
    ) -> Backbone {
        let blocks = spec
            .blocks
            .iter()
            .map(|b| Block {
                convs: b.convs.iter().map(|c| layer(root, c)).collect(),
                shortcut: b.shortcut.as_ref().map(|c| layer(root, c)),
                residual: b.residual,
                after_add: b.after_add,
                max_pool: b.max_pool,
            })
            .collect();
        let device = root.device();
        let column = |v: [f64; 3]| {
            Tensor::from_slice(&v.map(|x| x as f32))
                .reshape([1, 3, 1, 1])
                .to_device(device)
        };
        Backbone {
            blocks,
            mean: column(IMAGENET_MEAN),
            std: column(IMAGENET_STD),
            bn_inference,
        }
    }

    /// `[N, 1 or 3, H, W]` pixels in 0..1 to `[N, features]` pooled features, in the
    /// compute kind.
    pub(crate) fn forward(
        &self,
        xs: &Tensor,
        train: bool,
        compute: Compute,
    ) -> Result<Tensor, TchError> {
        let xs = match xs.size()[..] {
            [n, 1, h, w] => xs.f_expand([n, 3, h, w], false)?,
            _ => xs.shallow_clone(),
        };
        let normalised = xs
            .f_to_kind(Kind::Float)?
            .f_sub(&self.mean)?
            .f_div(&self.std)?;
        let mut x = compute.cast(&normalised)?;
        let bn_train = train && !self.bn_inference;
        let run = |x: &Tensor, l: &Layer| -> Result<Tensor, TchError> {
            let s = &l.spec;
            let y = compute.conv(x, &l.conv, s.stride, s.padding, s.groups)?;
            let y = batch_norm(&y, &l.bn, bn_train)?;
            activate(&y, s.act)
        };
        for b in &self.blocks {
            let input = x.shallow_clone();
            for l in &b.convs {
                x = run(&x, l)?;
            }
            if b.residual {
                let shortcut = match &b.shortcut {
                    Some(l) => run(&input, l)?,
                    None => input,
                };
                x = activate(&x.f_add(&shortcut)?, b.after_add)?;
            }
            if b.max_pool {
                x = x.f_max_pool2d([3, 3], [2, 2], [1, 1], [1, 1], false)?;
            }
        }
        x.f_mean_dim([2i64, 3].as_slice(), false, None)
    }
}

fn activate(x: &Tensor, act: Act) -> Result<Tensor, TchError> {
    match act {
        Act::None => Ok(x.shallow_clone()),
        Act::Relu => x.f_relu(),
        Act::Relu6 => x.f_relu6(),
    }
}
