//! The model family's arithmetic, without building a model: output units, feature-map
//! sides, filters per block, and the size of a configuration (multiply-accumulates of a
//! forward pass, trainable parameters). The trainer builds its models by the same rules and
//! its tests check these counts against libtorch's; the scheduler orders trials by them.
//!
//! Owns: the numbers. Must not touch: libtorch (the trainer builds models).

use crate::sweep::{Head, Output, TrialParams};

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
}
