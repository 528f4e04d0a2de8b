//! The pretrained backbones (`arch: resnet18 | mobilenet_v2`) as torchvision defines them:
//! every convolution with its batch norm, in forward order, under torchvision's variable
//! names, so that a torchvision `state_dict` saved as safetensors loads into the trainer's
//! model name for name (`initFrom: file:...`).
//!
//! Owns: the architectures as data (which convolution feeds which, residual connections,
//! the variable names, the blocks that fine-tuning unfreezes from the top). The trainer
//! builds and runs them (`cnnd_worker::backbone`); `model_size` counts them. Must not touch:
//! libtorch.
//!
//! A backbone's input is normalised inside the model with ImageNet's per-channel mean and
//! standard deviation ([`IMAGENET_MEAN`], [`IMAGENET_STD`], on 0..1 pixels), as its weights
//! expect; a one-channel image is repeated to three channels first. The head that replaces
//! torchvision's classifier is global average pooling, then `units` hidden layers when
//! `head: dense`, dropout, and a linear layer for the data set's classes, named as
//! torchvision names its classifier (`fc`, `classifier.1`) so a file whose classifier has the
//! same number of classes loads whole.

use crate::sweep::Arch;

/// ImageNet's per-channel mean of 0..1 pixels (torchvision's `Normalize` for its weights).
pub const IMAGENET_MEAN: [f64; 3] = [0.485, 0.456, 0.406];
/// ImageNet's per-channel standard deviation of 0..1 pixels.
pub const IMAGENET_STD: [f64; 3] = [0.229, 0.224, 0.225];
/// Batch norm's epsilon in both torchvision models.
pub const BN_EPS: f64 = 1e-5;

/// What follows a convolution's batch norm.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Act {
    None,
    Relu,
    Relu6,
}

/// A bias-free convolution followed by batch norm and an activation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConvBn {
    /// Prefix of the convolution's variable (`<conv>.weight`).
    pub conv: String,
    /// Prefix of the batch norm's variables (`<bn>.weight`, `.bias`, `.running_mean`,
    /// `.running_var`).
    pub bn: String,
    pub in_channels: i64,
    pub out_channels: i64,
    pub kernel: i64,
    pub stride: i64,
    pub padding: i64,
    /// Convolution groups (the input channels for a depthwise convolution).
    pub groups: i64,
    pub act: Act,
}

impl ConvBn {
    /// Trainable parameters: the kernel and batch norm's scale and shift.
    pub fn parameters(&self) -> i64 {
        self.out_channels * (self.in_channels / self.groups) * self.kernel * self.kernel
            + 2 * self.out_channels
    }

    /// Output side on a `side x side` input.
    pub fn output_side(&self, side: i64) -> i64 {
        (side + 2 * self.padding - self.kernel).div_euclid(self.stride) + 1
    }

    /// Multiply-accumulates on a `height x width` input.
    pub fn macs(&self, height: i64, width: i64) -> i64 {
        self.output_side(height)
            * self.output_side(width)
            * self.out_channels
            * (self.in_channels / self.groups)
            * self.kernel
            * self.kernel
    }
}

/// One block of the body: its convolutions in sequence; with `residual`, the block's input
/// (through `shortcut` when there is one) is added to the last convolution's output, then
/// `after_add` applies. `max_pool` is ResNet's 3x3 stride-2 max pooling after the stem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Block {
    /// The prefix shared by the block's variables (`layer1.0`, `features.3`, `stem`).
    pub name: String,
    pub convs: Vec<ConvBn>,
    pub residual: bool,
    pub shortcut: Option<ConvBn>,
    pub after_add: Act,
    pub max_pool: bool,
    /// The stage this block belongs to (0 the stem): `fineTuneBlocks: K` unfreezes the top K
    /// stages.
    pub stage: usize,
}

impl Block {
    /// Output side on a `side x side` input.
    pub fn output_side(&self, side: i64) -> i64 {
        let mut s = side;
        for c in &self.convs {
            s = c.output_side(s);
        }
        if self.max_pool {
            s = (s + 2 - 3).div_euclid(2) + 1;
        }
        s
    }

    pub fn out_channels(&self) -> i64 {
        self.convs.last().map_or(0, |c| c.out_channels)
    }

    /// Every convolution of the block, the shortcut last.
    pub fn all_convs(&self) -> impl Iterator<Item = &ConvBn> {
        self.convs.iter().chain(self.shortcut.iter())
    }
}

/// A backbone: its blocks, the width of its features and the name of its classifier.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backbone {
    pub blocks: Vec<Block>,
    /// Channels of the last block, the features the head reads.
    pub features: i64,
    /// Variable prefix of the output layer (torchvision's classifier).
    pub classifier: &'static str,
    /// Stages from the stem (0) to the last; `fineTuneBlocks` counts these.
    pub stages: usize,
}

#[allow(clippy::too_many_arguments)]
fn conv_bn(
    conv: String,
    bn: String,
    in_channels: i64,
    out_channels: i64,
    kernel: i64,
    stride: i64,
    groups: i64,
    act: Act,
) -> ConvBn {
    ConvBn {
        conv,
        bn,
        in_channels,
        out_channels,
        kernel,
        stride,
        padding: (kernel - 1) / 2,
        groups,
        act,
    }
}

/// torchvision's `resnet18`: stem (7x7/2 convolution, 3x3/2 max pooling), four stages of two
/// basic blocks (64, 128, 256, 512 channels; the first block of stages 2-4 halves the side
/// and projects its shortcut with a 1x1 convolution), classifier `fc`. Stages: the stem and
/// `layer1`..`layer4`.
pub fn resnet18() -> Backbone {
    let mut blocks = vec![Block {
        name: "stem".into(),
        convs: vec![conv_bn(
            "conv1".into(),
            "bn1".into(),
            3,
            64,
            7,
            2,
            1,
            Act::Relu,
        )],
        residual: false,
        shortcut: None,
        after_add: Act::None,
        max_pool: true,
        stage: 0,
    }];
    let mut in_ch = 64;
    for (layer, out_ch) in [(1usize, 64i64), (2, 128), (3, 256), (4, 512)] {
        for b in 0..2 {
            let name = format!("layer{layer}.{b}");
            let stride = if layer > 1 && b == 0 { 2 } else { 1 };
            let shortcut = (stride != 1 || in_ch != out_ch).then(|| {
                conv_bn(
                    format!("{name}.downsample.0"),
                    format!("{name}.downsample.1"),
                    in_ch,
                    out_ch,
                    1,
                    stride,
                    1,
                    Act::None,
                )
            });
            let convs = vec![
                conv_bn(
                    format!("{name}.conv1"),
                    format!("{name}.bn1"),
                    in_ch,
                    out_ch,
                    3,
                    stride,
                    1,
                    Act::Relu,
                ),
                conv_bn(
                    format!("{name}.conv2"),
                    format!("{name}.bn2"),
                    out_ch,
                    out_ch,
                    3,
                    1,
                    1,
                    Act::None,
                ),
            ];
            blocks.push(Block {
                name,
                convs,
                residual: true,
                shortcut,
                after_add: Act::Relu,
                max_pool: false,
                stage: layer,
            });
            in_ch = out_ch;
        }
    }
    Backbone {
        blocks,
        features: 512,
        classifier: "fc",
        stages: 5,
    }
}

/// torchvision's `mobilenet_v2` (width 1.0): `features.0` (3x3/2 convolution to 32
/// channels), `features.1`..`features.17` inverted residual blocks (expand 1x1, depthwise
/// 3x3, project 1x1 without activation; a residual connection where the stride is 1 and the
/// width unchanged), `features.18` (1x1 to 1280), classifier `classifier.1`. Every feature
/// block is a stage of its own (19).
pub fn mobilenet_v2() -> Backbone {
    let single = |i: usize, inp: i64, out: i64, k: i64, s: i64| Block {
        name: format!("features.{i}"),
        convs: vec![conv_bn(
            format!("features.{i}.0"),
            format!("features.{i}.1"),
            inp,
            out,
            k,
            s,
            1,
            Act::Relu6,
        )],
        residual: false,
        shortcut: None,
        after_add: Act::None,
        max_pool: false,
        stage: i,
    };
    let mut blocks = vec![single(0, 3, 32, 3, 2)];
    let mut in_ch = 32;
    // (expansion t, output channels c, repeats n, first stride s), torchvision's table.
    let settings = [
        (1i64, 16i64, 1usize, 1i64),
        (6, 24, 2, 2),
        (6, 32, 3, 2),
        (6, 64, 4, 2),
        (6, 96, 3, 1),
        (6, 160, 3, 2),
        (6, 320, 1, 1),
    ];
    for (t, c, n, s) in settings {
        for r in 0..n {
            let i = blocks.len();
            let stride = if r == 0 { s } else { 1 };
            let hidden = in_ch * t;
            let p = |j: usize| format!("features.{i}.conv.{j}");
            let mut convs = Vec::new();
            let mut j = 0;
            if t != 1 {
                convs.push(conv_bn(
                    format!("{}.0", p(j)),
                    format!("{}.1", p(j)),
                    in_ch,
                    hidden,
                    1,
                    1,
                    1,
                    Act::Relu6,
                ));
                j += 1;
            }
            convs.push(conv_bn(
                format!("{}.0", p(j)),
                format!("{}.1", p(j)),
                hidden,
                hidden,
                3,
                stride,
                hidden,
                Act::Relu6,
            ));
            convs.push(conv_bn(p(j + 1), p(j + 2), hidden, c, 1, 1, 1, Act::None));
            blocks.push(Block {
                name: format!("features.{i}"),
                convs,
                residual: stride == 1 && in_ch == c,
                shortcut: None,
                after_add: Act::None,
                max_pool: false,
                stage: i,
            });
            in_ch = c;
        }
    }
    let last = blocks.len();
    blocks.push(single(last, in_ch, 1280, 1, 1));
    Backbone {
        blocks,
        features: 1280,
        classifier: "classifier.1",
        stages: last + 1,
    }
}

/// The backbone of `arch`; None for cnnd's own family.
pub fn backbone(arch: Arch) -> Option<Backbone> {
    match arch {
        Arch::Cnn => None,
        Arch::Resnet18 => Some(resnet18()),
        Arch::MobilenetV2 => Some(mobilenet_v2()),
    }
}

impl Backbone {
    /// The stage of a body variable (by its block's name prefix); None for the head's.
    pub fn stage_of(&self, variable: &str) -> Option<usize> {
        self.blocks.iter().find_map(|b| {
            b.all_convs()
                .any(|c| prefixed(variable, &c.conv) || prefixed(variable, &c.bn))
                .then_some(b.stage)
        })
    }
}

/// True when `variable` is `prefix.<something>`.
fn prefixed(variable: &str, prefix: &str) -> bool {
    variable
        .strip_prefix(prefix)
        .is_some_and(|rest| rest.starts_with('.'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body_parameters(b: &Backbone) -> i64 {
        b.blocks
            .iter()
            .flat_map(|b| b.all_convs())
            .map(ConvBn::parameters)
            .sum()
    }

    /// torchvision's own totals with a 1000-class classifier: resnet18 11,689,512 and
    /// mobilenet_v2 3,504,872 parameters (`sum(p.numel() for p in m.parameters())`).
    #[test]
    fn parameter_totals_match_torchvisions() {
        let r = resnet18();
        assert_eq!(body_parameters(&r) + 512 * 1000 + 1000, 11_689_512);
        let m = mobilenet_v2();
        assert_eq!(body_parameters(&m) + 1280 * 1000 + 1000, 3_504_872);
        assert_eq!(m.blocks.len(), 19);
        assert_eq!(m.stages, 19);
        assert_eq!(r.stages, 5);
    }

    #[test]
    fn sides_and_names_follow_torchvision() {
        let r = resnet18();
        let mut side = 224;
        for b in &r.blocks {
            side = b.output_side(side);
        }
        assert_eq!(side, 7);
        let m = mobilenet_v2();
        let mut side = 224;
        for b in &m.blocks {
            side = b.output_side(side);
        }
        assert_eq!(side, 7);
        assert_eq!(r.stage_of("layer2.0.downsample.1.running_mean"), Some(2));
        assert_eq!(r.stage_of("conv1.weight"), Some(0));
        assert_eq!(r.stage_of("fc.weight"), None);
        assert_eq!(m.stage_of("features.1.conv.0.0.weight"), Some(1));
        assert_eq!(m.stage_of("features.2.conv.3.bias"), Some(2));
        assert_eq!(m.stage_of("features.18.1.weight"), Some(18));
        assert_eq!(m.stage_of("classifier.1.weight"), None);
        // No prefix of another block's name matches (features.1 is not features.10).
        assert_eq!(m.stage_of("features.10.conv.0.0.weight"), Some(10));
    }
}
