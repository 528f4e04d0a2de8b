//! The model family's arithmetic, without building a model: output units, feature-map
//! sides, filters per block, the size of a configuration (multiply-accumulates of a
//! forward pass, trainable parameters) and its layer-by-layer summary (Keras's
//! `model.summary()`). The trainer builds its models by the same rules and its tests check
//! these counts and shapes against libtorch's; the scheduler orders trials by them, GetTrial
//! shows the summary.
//!
//! Owns: the numbers. Must not touch: libtorch (the trainer builds models).

use crate::sweep::{Activation, Head, Output, TrialParams};

/// Number of output logits: 1 for a sigmoid output, else one per class.
pub fn output_units(p: &TrialParams, classes: i64) -> i64 {
    match p.output {
        Output::Sigmoid => 1,
        Output::Softmax => classes,
    }
}

/// Side of the feature map after `blocks` 2x2 poolings (floor, as max-pool does).
pub fn final_side(input_size: i64, blocks: u32) -> i64 {
    (0..blocks).fold(input_size, |side, _| side / 2)
}

/// Filters of block `i` (0-based): `baseFilters`, doubled with every block.
pub fn block_filters(p: &TrialParams, i: u32) -> i64 {
    (p.base_filters as i64) << i
}

/// How big a model is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModelSize {
    /// Multiply-accumulates of one forward pass of one image (convolutions and linear
    /// layers; batch norm, activations and pooling are a few percent and left out).
    pub forward_macs: u64,
    /// Trainable parameters, as the trainer counts them on the built model.
    pub parameters: u64,
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
}

/// The [`ModelSize`] of the model the trainer builds for these arguments.
pub fn model_size(p: &TrialParams, channels: i64, input_size: i64, classes: i64) -> ModelSize {
    let k = p.kernel_size as i64;
    let (mut macs, mut params) = (0i64, 0i64);
    let (mut side, mut in_ch, mut out_ch) = (input_size, channels, channels);
    for i in 0..p.blocks {
        out_ch = block_filters(p, i);
        // Same padding: the output keeps the input's side.
        macs += side * side * k * k * in_ch * out_ch;
        // Kernel, plus the bias or batch norm's scale and shift.
        params += k * k * in_ch * out_ch + if p.batch_norm { 2 * out_ch } else { out_ch };
        side /= 2;
        in_ch = out_ch;
    }
    let outputs = output_units(p, classes);
    let head_weights = match p.head {
        Head::Dense => {
            let units = p.units as i64;
            let flat = out_ch * side * side;
            params += units + outputs;
            flat * units + units * outputs
        }
        Head::Gap => {
            params += outputs;
            out_ch * outputs
        }
    };
    macs += head_weights;
    params += head_weights;
    ModelSize {
        forward_macs: macs as u64,
        parameters: params as u64,
    }
}

/// One row of a model summary: a layer, the shape of its output for one image
/// (`[channels, height, width]` or `[features]`, PyTorch's order) and its trainable
/// parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerSummary {
    /// The layer's name; for a layer with weights, the prefix of its variables in the
    /// trainer's model (`block0.conv`, `hidden`, `out`), so the summary can be checked
    /// against the built model and matched against transferred weights.
    pub name: String,
    /// What it computes, e.g. `Conv2d 3x3 same, 32 filters`, `MaxPool2d 2x2`.
    pub kind: String,
    pub output_shape: Vec<i64>,
    pub parameters: u64,
}

fn activation_name(a: Activation) -> &'static str {
    match a {
        Activation::Relu => "ReLU",
        Activation::LeakyRelu => "LeakyReLU(0.01)",
        Activation::Elu => "ELU",
        Activation::Gelu => "GELU",
        Activation::Tanh => "Tanh",
    }
}

/// The layers of the model the trainer builds for these arguments, input first, in the
/// order of the forward pass. Their parameters add up to [`model_size`]'s.
pub fn summary(p: &TrialParams, channels: i64, input_size: i64, classes: i64) -> Vec<LayerSummary> {
    let row = |name: String, kind: String, output_shape: Vec<i64>, parameters: i64| LayerSummary {
        name,
        kind,
        output_shape,
        parameters: parameters as u64,
    };
    let k = p.kernel_size as i64;
    let activation = activation_name(p.activation);
    let mut rows = vec![row(
        "input".into(),
        "Input".into(),
        vec![channels, input_size, input_size],
        0,
    )];
    let (mut side, mut in_ch, mut out_ch) = (input_size, channels, channels);
    for i in 0..p.blocks {
        out_ch = block_filters(p, i);
        let bias = if p.batch_norm { 0 } else { out_ch };
        rows.push(row(
            format!("block{i}.conv"),
            format!("Conv2d {k}x{k} same, {out_ch} filters"),
            vec![out_ch, side, side],
            k * k * in_ch * out_ch + bias,
        ));
        if p.batch_norm {
            rows.push(row(
                format!("block{i}.bn"),
                "BatchNorm2d".into(),
                vec![out_ch, side, side],
                2 * out_ch,
            ));
        }
        rows.push(row(
            format!("block{i}.act"),
            activation.into(),
            vec![out_ch, side, side],
            0,
        ));
        side /= 2;
        rows.push(row(
            format!("block{i}.pool"),
            "MaxPool2d 2x2".into(),
            vec![out_ch, side, side],
            0,
        ));
        in_ch = out_ch;
    }
    let outputs = output_units(p, classes);
    let dropout = |rows: &mut Vec<LayerSummary>, features: i64| {
        if p.dropout > 0.0 {
            rows.push(row(
                "dropout".into(),
                format!("Dropout({})", p.dropout),
                vec![features],
                0,
            ));
        }
    };
    let features = match p.head {
        Head::Dense => {
            let flat = out_ch * side * side;
            let units = p.units as i64;
            rows.push(row("flatten".into(), "Flatten".into(), vec![flat], 0));
            rows.push(row(
                "hidden".into(),
                format!("Linear {flat} -> {units}"),
                vec![units],
                flat * units + units,
            ));
            rows.push(row("hidden.act".into(), activation.into(), vec![units], 0));
            units
        }
        Head::Gap => {
            rows.push(row("gap".into(), "GlobalAvgPool".into(), vec![out_ch], 0));
            out_ch
        }
    };
    dropout(&mut rows, features);
    let output = match p.output {
        Output::Sigmoid => "logit (sigmoid)",
        Output::Softmax => "logits (softmax)",
    };
    rows.push(row(
        "out".into(),
        format!("Linear {features} -> {outputs}, {output}"),
        vec![outputs],
        features * outputs + outputs,
    ));
    rows
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
