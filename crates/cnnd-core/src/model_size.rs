//! The model family's arithmetic, without building a model: output units, feature-map
//! sides, filters per block, the size of a configuration (multiply-accumulates of a
//! forward pass, trainable parameters) and its layer-by-layer summary (Keras's
//! `model.summary()`). The trainer builds its models by the same rules and its tests check
//! these counts and shapes against libtorch's; the scheduler orders trials by them, GetTrial
//! shows the summary.
//!
//! Owns: the numbers. Must not touch: libtorch (the trainer builds models).

use crate::sweep::{Activation, ConvBias, Head, InputSize, Output, Padding, Pooling, TrialParams};

/// Height and width of a model input: one side for a square (`28`), `(height, width)`, or
/// a trial's [`InputSize`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hw {
    pub height: i64,
    pub width: i64,
}

impl From<i64> for Hw {
    fn from(side: i64) -> Hw {
        Hw {
            height: side,
            width: side,
        }
    }
}

impl From<(i64, i64)> for Hw {
    fn from((height, width): (i64, i64)) -> Hw {
        Hw { height, width }
    }
}

impl From<InputSize> for Hw {
    fn from(s: InputSize) -> Hw {
        Hw {
            height: s.height as i64,
            width: s.width as i64,
        }
    }
}

/// Number of output logits: 1 for a sigmoid output, else one per class.
pub fn output_units(p: &TrialParams, classes: i64) -> i64 {
    match p.output {
        Output::Sigmoid => 1,
        Output::Softmax => classes,
    }
}

/// Filters of block `i` (0-based): `filters[i]` when the list is given, else `baseFilters`
/// doubled with every block.
pub fn block_filters(p: &TrialParams, i: u32) -> i64 {
    match p.filters.get(i as usize) {
        Some(&f) => f as i64,
        None => (p.base_filters as i64) << i,
    }
}

/// Kernel side of block `i`: `kernelSizes[i]` when the list is given, else `kernelSize`.
pub fn block_kernel(p: &TrialParams, i: u32) -> i64 {
    p.kernel_sizes
        .get(i as usize)
        .copied()
        .unwrap_or(p.kernel_size) as i64
}

/// Zero padding on each side of a `k x k` convolution: k/2 for `same` (odd kernels), 0 for
/// `valid`.
pub fn conv_padding(p: &TrialParams, k: i64) -> i64 {
    match p.padding {
        Padding::Same => k / 2,
        Padding::Valid => 0,
    }
}

/// Whether the convolutions carry biases ([`ConvBias`]).
pub fn conv_has_bias(p: &TrialParams) -> bool {
    match p.conv_bias {
        ConvBias::Auto => !p.batch_norm,
        ConvBias::Always => true,
        ConvBias::Never => false,
    }
}

/// Output side of a `k x k` convolution on a `side x side` map (PyTorch's and Keras's
/// arithmetic; below 1 when the kernel does not fit).
pub fn conv_output_side(p: &TrialParams, side: i64, k: i64) -> i64 {
    (side + 2 * conv_padding(p, k) - k).div_euclid(p.strides.max(1) as i64) + 1
}

/// Output side of a block's pooling (window and stride `poolSize`, no padding, rounding
/// down as both frameworks do).
pub fn pooled_side(p: &TrialParams, side: i64) -> i64 {
    side / p.pool_size.max(1) as i64
}

/// The side of every block's feature map for an `input x input` image: (after the
/// convolution, after the pooling).
pub fn block_sides(p: &TrialParams, input: i64) -> Vec<(i64, i64)> {
    let mut side = input;
    (0..p.blocks)
        .map(|i| {
            let conv = conv_output_side(p, side, block_kernel(p, i));
            side = pooled_side(p, conv);
            (conv, side)
        })
        .collect()
}

/// Side of the last block's pooled feature map.
pub fn final_side(p: &TrialParams, input: i64) -> i64 {
    block_sides(p, input).last().map_or(input, |s| s.1)
}

/// The widths of the dense head's hidden layers (none for the `gap` head).
pub fn hidden_units(p: &TrialParams) -> &[u32] {
    match p.head {
        Head::Dense => &p.units.0,
        Head::Gap => &[],
    }
}

/// Variable prefix of hidden layer `i`: `hidden`, then `hidden1`, `hidden2`... (the first
/// keeps the name of the one-layer head, so older weights still load).
pub fn hidden_name(i: usize) -> String {
    if i == 0 {
        "hidden".into()
    } else {
        format!("hidden{i}")
    }
}

/// How big a model is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModelSize {
    /// Multiply-accumulates of one forward pass of one image (convolutions and linear
    /// layers; batch norm, activations and pooling are a few percent and left out).
    pub forward_macs: u64,
    /// Trainable parameters, as the trainer counts them on the built model.
    pub parameters: u64,
    /// Batch norm's moving means and variances: not trained, but Keras's `model.summary()`
    /// counts them in its total ("Non-trainable params").
    pub non_trainable: u64,
}

impl ModelSize {
    /// Estimated work of training on one image, in multiply-accumulates: the forward pass,
    /// a backward pass of about twice its cost, and the optimiser step (a few memory-bound
    /// passes over every parameter) shared by the batch.
    pub fn training_macs_per_image(&self, batch_size: u32) -> f64 {
        const OPTIMIZER_MACS_PER_PARAMETER: f64 = 16.0;
        3.0 * self.forward_macs as f64
            + OPTIMIZER_MACS_PER_PARAMETER * self.parameters as f64 / batch_size.max(1) as f64
    }

    /// The total Keras's `model.summary()` reports: trainable and non-trainable.
    pub fn keras_total(&self) -> u64 {
        self.parameters + self.non_trainable
    }
}

/// The [`ModelSize`] of the model the trainer builds for these arguments.
pub fn model_size(p: &TrialParams, channels: i64, input: impl Into<Hw>, classes: i64) -> ModelSize {
    let mut macs = 0u64;
    let (mut parameters, mut non_trainable) = (0u64, 0u64);
    for l in layers(p, channels, input.into(), classes) {
        macs += l.macs;
        parameters += l.summary.parameters;
        non_trainable += l.summary.non_trainable;
    }
    ModelSize {
        forward_macs: macs,
        parameters,
        non_trainable,
    }
}

/// One row of a model summary: a layer, the shape of its output for one image
/// (`[channels, height, width]` or `[features]`, PyTorch's order) and its parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerSummary {
    /// The layer's name; for a layer with weights, the prefix of its variables in the
    /// trainer's model (`block0.conv`, `hidden`, `out`), so the summary can be checked
    /// against the built model and matched against transferred weights.
    pub name: String,
    /// What it computes, e.g. `Conv2d 3x3 same, 32 filters`, `MaxPool2d 2x2`.
    pub kind: String,
    pub output_shape: Vec<i64>,
    /// Trainable parameters.
    pub parameters: u64,
    /// Values kept but not trained (batch norm's moving mean and variance).
    pub non_trainable: u64,
}

fn activation_name(p: &TrialParams) -> String {
    match p.activation {
        Activation::Relu => "ReLU".into(),
        Activation::LeakyRelu => format!("LeakyReLU({})", p.leaky_slope),
        Activation::Elu => "ELU".into(),
        Activation::Gelu => "GELU".into(),
        Activation::Tanh => "Tanh".into(),
        Activation::Relu6 => "ReLU6".into(),
    }
}

/// A summary row with the forward multiply-accumulates of its layer.
struct Layer {
    summary: LayerSummary,
    macs: u64,
}

/// The rows [`layers`] collects.
struct Rows(Vec<Layer>);

impl Rows {
    /// Adds a layer with its trainable parameters and forward multiply-accumulates; returns
    /// its summary for the few fields that differ (batch norm's non-trainable values).
    fn push(
        &mut self,
        name: String,
        kind: String,
        output_shape: Vec<i64>,
        params: i64,
        macs: i64,
    ) -> &mut LayerSummary {
        self.0.push(Layer {
            summary: LayerSummary {
                name,
                kind,
                output_shape,
                parameters: params as u64,
                non_trainable: 0,
            },
            macs: macs.max(0) as u64,
        });
        &mut self.0.last_mut().expect("just pushed").summary
    }
}

/// Every layer of the model, with its cost: the one walk [`model_size`] and [`summary`]
/// share.
fn layers(p: &TrialParams, channels: i64, input: Hw, classes: i64) -> Vec<Layer> {
    let mut rows = Rows(Vec::new());
    rows.push(
        "input".into(),
        "Input".into(),
        vec![channels, input.height, input.width],
        0,
        0,
    );
    if let Some(backbone) = crate::backbones::backbone(p.arch) {
        backbone_layers(&mut rows, p, &backbone, input, classes);
        return rows.0;
    }
    let activation = activation_name(p);
    let bias = conv_has_bias(p);
    let padding = match p.padding {
        Padding::Same => "same",
        Padding::Valid => "valid",
    };
    let stride = match p.strides {
        1 => String::new(),
        s => format!(" stride {s}"),
    };
    let pool = p.pool_size as i64;
    let pool_kind = match p.pooling {
        Pooling::Max => format!("MaxPool2d {pool}x{pool}"),
        Pooling::Avg => format!("AvgPool2d {pool}x{pool}"),
    };
    let mut in_ch = channels;
    let mut out_ch = channels;
    let mut side = (input.height, input.width);
    let heights = block_sides(p, input.height);
    let widths = block_sides(p, input.width);
    for (i, (&(conv_h, pooled_h), &(conv_w, pooled_w))) in heights.iter().zip(&widths).enumerate() {
        let b = i as u32;
        out_ch = block_filters(p, b);
        let k = block_kernel(p, b);
        let weights = k * k * in_ch * out_ch;
        rows.push(
            format!("block{i}.conv"),
            format!("Conv2d {k}x{k} {padding}{stride}, {out_ch} filters"),
            vec![out_ch, conv_h, conv_w],
            weights + if bias { out_ch } else { 0 },
            conv_h * conv_w * weights,
        );
        if p.batch_norm {
            // Scale and shift trained; a moving mean and variance per channel kept.
            rows.push(
                format!("block{i}.bn"),
                "BatchNorm2d".into(),
                vec![out_ch, conv_h, conv_w],
                2 * out_ch,
                0,
            )
            .non_trainable = 2 * out_ch as u64;
        }
        rows.push(
            format!("block{i}.act"),
            activation.clone(),
            vec![out_ch, conv_h, conv_w],
            0,
            0,
        );
        if pool > 1 {
            rows.push(
                format!("block{i}.pool"),
                pool_kind.clone(),
                vec![out_ch, pooled_h, pooled_w],
                0,
                0,
            );
        }
        side = (pooled_h, pooled_w);
        in_ch = out_ch;
    }
    head_layers(&mut rows, p, out_ch, side, classes, "out");
    rows.0
}

/// The head's rows on `channels x height x width` features: dense (flatten, hidden layers)
/// or gap, then the output layer `out_name`.
fn head_layers(
    rows: &mut Rows,
    p: &TrialParams,
    out_ch: i64,
    (height, width): (i64, i64),
    classes: i64,
    out_name: &str,
) {
    let activation = activation_name(p);
    let outputs = output_units(p, classes);
    let dropout = |rows: &mut Rows, name: String, features: i64| {
        if p.dropout > 0.0 {
            let kind = format!("Dropout({})", p.dropout);
            rows.push(name, kind, vec![features], 0, 0);
        }
    };
    let features = match p.head {
        Head::Dense => {
            let mut features = out_ch * height * width;
            rows.push("flatten".into(), "Flatten".into(), vec![features], 0, 0);
            let hidden = hidden_units(p);
            if hidden.is_empty() {
                dropout(rows, "dropout".into(), features);
            }
            for (i, &units) in hidden.iter().enumerate() {
                let units = units as i64;
                let name = hidden_name(i);
                rows.push(
                    name.clone(),
                    format!("Linear {features} -> {units}"),
                    vec![units],
                    features * units + units,
                    features * units,
                );
                rows.push(format!("{name}.act"), activation.clone(), vec![units], 0, 0);
                let dropout_name = if i == 0 {
                    "dropout".to_string()
                } else {
                    format!("{name}.dropout")
                };
                dropout(rows, dropout_name, units);
                features = units;
            }
            features
        }
        Head::Gap => {
            rows.push("gap".into(), "GlobalAvgPool".into(), vec![out_ch], 0, 0);
            dropout(rows, "dropout".into(), out_ch);
            out_ch
        }
    };
    let output = match p.output {
        Output::Sigmoid => "logit (sigmoid)",
        Output::Softmax => "logits (softmax)",
    };
    rows.push(
        out_name.into(),
        format!("Linear {features} -> {outputs}, {output}"),
        vec![outputs],
        features * outputs + outputs,
        features * outputs,
    );
}

/// A backbone's rows ([`crate::backbones`]): one per block (its convolutions and batch
/// norms together), then global average pooling and the head.
fn backbone_layers(
    rows: &mut Rows,
    p: &TrialParams,
    backbone: &crate::backbones::Backbone,
    input: Hw,
    classes: i64,
) {
    let (mut h, mut w) = (input.height, input.width);
    for block in &backbone.blocks {
        let (mut params, mut non_trainable, mut macs) = (0i64, 0i64, 0i64);
        let (mut bh, mut bw) = (h, w);
        for c in &block.convs {
            params += c.parameters();
            non_trainable += 2 * c.out_channels;
            macs += c.macs(bh, bw);
            (bh, bw) = (c.output_side(bh), c.output_side(bw));
        }
        if let Some(c) = &block.shortcut {
            params += c.parameters();
            non_trainable += 2 * c.out_channels;
            macs += c.macs(h, w);
        }
        let kind = match (block.residual, block.max_pool) {
            (true, _) => format!("Residual block, {} convolutions", block.all_convs().count()),
            (false, true) => "Conv2d + BatchNorm2d + ReLU + MaxPool2d 3x3/2".to_string(),
            (false, false) => format!("Block, {} convolutions", block.convs.len()),
        };
        (h, w) = (block.output_side(h), block.output_side(w));
        rows.push(
            block.name.clone(),
            kind,
            vec![block.out_channels(), h, w],
            params,
            macs,
        )
        .non_trainable = non_trainable as u64;
    }
    rows.push(
        "gap".into(),
        "GlobalAvgPool".into(),
        vec![backbone.features],
        0,
        0,
    );
    // The head on the pooled 1x1 features: as `dense`, flattening changes nothing.
    let mut head = Rows(Vec::new());
    head_layers(
        &mut head,
        p,
        backbone.features,
        (1, 1),
        classes,
        backbone.classifier,
    );
    rows.0.extend(
        head.0
            .into_iter()
            .filter(|l| l.summary.name != "flatten" && l.summary.name != "gap"),
    );
}

/// The layers of the model the trainer builds for these arguments, input first, in the
/// order of the forward pass. Their parameters add up to [`model_size`]'s.
pub fn summary(
    p: &TrialParams,
    channels: i64,
    input: impl Into<Hw>,
    classes: i64,
) -> Vec<LayerSummary> {
    layers(p, channels, input.into(), classes)
        .into_iter()
        .map(|l| l.summary)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The default model (kernel 3, 32 base filters, 2 blocks with batch norm, dense 128),
    /// on MNIST, counted by hand.
    #[test]
    fn the_default_model_counted_by_hand() {
        let p = TrialParams::default();
        let size = model_size(&p, 1, 28, 10);
        // conv1 3x3x1x32 on 28x28, conv2 3x3x32x64 on 14x14, dense 64*7*7 -> 128 -> 10.
        let macs = 28 * 28 * 9 * 32 + 14 * 14 * 9 * 32 * 64 + 64 * 7 * 7 * 128 + 128 * 10;
        assert_eq!(size.forward_macs, macs);
        let params =
            (9 * 32 + 2 * 32) + (9 * 32 * 64 + 2 * 64) + (3136 * 128 + 128) + (128 * 10 + 10);
        assert_eq!(size.parameters, params);
    }

    /// Keras's summary of the notebook's digit model, row by row: every shape and count.
    #[test]
    fn the_default_model_summarised_layer_by_layer() {
        let p = TrialParams {
            dropout: 0.25,
            ..TrialParams::default()
        };
        let rows: Vec<(String, Vec<i64>, u64)> = summary(&p, 1, 28, 10)
            .into_iter()
            .map(|r| (r.name, r.output_shape, r.parameters))
            .collect();
        let expected: Vec<(&str, Vec<i64>, u64)> = vec![
            ("input", vec![1, 28, 28], 0),
            ("block0.conv", vec![32, 28, 28], 9 * 32),
            ("block0.bn", vec![32, 28, 28], 64),
            ("block0.act", vec![32, 28, 28], 0),
            ("block0.pool", vec![32, 14, 14], 0),
            ("block1.conv", vec![64, 14, 14], 9 * 32 * 64),
            ("block1.bn", vec![64, 14, 14], 128),
            ("block1.act", vec![64, 14, 14], 0),
            ("block1.pool", vec![64, 7, 7], 0),
            ("flatten", vec![3136], 0),
            ("hidden", vec![128], 3136 * 128 + 128),
            ("hidden.act", vec![128], 0),
            ("dropout", vec![128], 0),
            ("out", vec![10], 1290),
        ];
        let expected: Vec<(String, Vec<i64>, u64)> = expected
            .into_iter()
            .map(|(n, s, c)| (n.to_string(), s, c))
            .collect();
        assert_eq!(rows, expected);
        let total: u64 = rows.iter().map(|r| r.2).sum();
        assert_eq!(total, model_size(&p, 1, 28, 10).parameters);
    }
}
