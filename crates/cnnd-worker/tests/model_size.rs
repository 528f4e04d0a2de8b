//! The model-size arithmetic of `cnnd_core::model_size` (what the daemon orders trials by,
//! without libtorch) against the models the trainer really builds: for any valid
//! configuration of the family (kernels and filters per block, padding, strides, pooling,
//! biases, hidden layers, heads), the parameter count it computes equals libtorch's count of the built model's
//! trainable variables, and a forward pass gives one output per logit it predicts; its
//! layer-by-layer summary (what GetTrial shows) names every variable of the built model
//! with its parameter count and the shapes the weights imply.

use cnnd_core::datasets::builtin;
use cnnd_core::model_size::{model_size, output_units, summary};
use cnnd_core::sweep::{
    ConvBias, DenseUnits, Head, InputSize, Output, Padding, Pooling, TrialParams,
};
use cnnd_worker::model::{build, parameter_count};
use proptest::prelude::*;
use tch::{nn, Device, Kind, Tensor};

prop_compose! {
    /// A configuration of the family: kernels (one, or one per block), filters (doubling,
    /// or a list), padding, strides, pooling, biases, hidden layers, heads and outputs, on
    /// inputs of many sides. Those validation refuses are skipped (`prop_assume`).
    fn configuration()(
        blocks in 1u32..=3,
        kernel in 1u32..=7,
        per_block in prop::collection::vec((1u32..=7, 1u32..=12), 3),
        lists in any::<bool>(),
        base_filters in 1u32..=12,
        units in prop::collection::vec(1u32..=40, 0..=3),
        head in prop::sample::select(vec![Head::Dense, Head::Gap]),
        batch_norm in any::<bool>(),
        padding in prop::sample::select(vec![Padding::Same, Padding::Valid]),
        strides in 1u32..=2,
        pooling in prop::sample::select(vec![Pooling::Max, Pooling::Avg]),
        pool_size in 1u32..=3,
        conv_bias in prop::sample::select(vec![ConvBias::Auto, ConvBias::Always, ConvBias::Never]),
        sigmoid in any::<bool>(),
        channels in prop::sample::select(vec![1u32, 3]),
        height in 8u32..=40,
        width in 8u32..=40,
    ) -> (TrialParams, i64, (i64, i64), i64) {
        let classes = if sigmoid { 2 } else { 10 };
        let blocks_used = &per_block[..blocks as usize];
        let p = TrialParams {
            blocks,
            kernel_size: kernel,
            kernel_sizes: if lists { blocks_used.iter().map(|b| b.0).collect() } else { vec![] },
            filters: if lists { blocks_used.iter().map(|b| b.1).collect() } else { vec![] },
            base_filters,
            units: DenseUnits(units),
            head,
            batch_norm,
            padding,
            strides,
            pooling,
            pool_size,
            conv_bias,
            input_size: InputSize { height, width },
            channels,
            output: if sigmoid { Output::Sigmoid } else { Output::Softmax },
            ..TrialParams::default()
        };
        (p, channels as i64, (height as i64, width as i64), classes)
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn the_arithmetic_counts_what_libtorch_builds((p, channels, input, classes) in configuration()) {
        prop_assume!(p.validate(&builtin("mnist").unwrap()).is_ok());
        tch::set_num_threads(1);
        let vs = nn::VarStore::new(Device::Cpu);
        let net = build(&vs.root(), &p, channels, input, classes);
        let size = model_size(&p, channels, input, classes);
        prop_assert_eq!(
            size.parameters,
            parameter_count(&vs),
            "{:?} on {}x{}x{}",
            p, channels, input.0, input.1
        );
        let xs = Tensor::rand([2, channels, input.0, input.1], (Kind::Float, Device::Cpu));
        let out = net.f_forward_t(&xs, false).unwrap();
        prop_assert_eq!(out.size(), vec![2, output_units(&p, classes)]);

        // The summary: each layer's parameters are those of the variables under its name,
        // every trainable variable belongs to a layer, and each weight's input side is the
        // output shape of the layer before it.
        let layers = summary(&p, channels, input, classes);
        let variables = vs.variables();
        let mut claimed = 0;
        for (i, layer) in layers.iter().enumerate() {
            let mine: Vec<(&String, &Tensor)> = variables
                .iter()
                .filter(|(name, t)| name.starts_with(&format!("{}.", layer.name)) && t.requires_grad())
                .collect();
            claimed += mine.len();
            let count: i64 = mine.iter().map(|(_, t)| t.numel() as i64).sum();
            prop_assert_eq!(layer.parameters as i64, count, "{}", layer.name);
            if let Some(weight) = variables.get(&format!("{}.weight", layer.name)) {
                let before = &layers[i - 1].output_shape;
                let w = weight.size();
                match w.len() {
                    // Conv2d [out, in, k, k]: in is the channels before, out the channels after.
                    4 => {
                        prop_assert_eq!(w[1], before[0], "{}", layer.name);
                        prop_assert_eq!(w[0], layer.output_shape[0], "{}", layer.name);
                    }
                    // Linear [out, in]: in is the flattened features before.
                    2 => {
                        prop_assert_eq!(w[1], before.iter().product::<i64>(), "{}", layer.name);
                        prop_assert_eq!(&vec![w[0]], &layer.output_shape, "{}", layer.name);
                    }
                    _ => {}
                }
            }
        }
        let trainable = variables.values().filter(|t| t.requires_grad()).count();
        prop_assert_eq!(claimed, trainable, "variables no summary row names");
        // The rest are batch norm's running statistics (and its step counter, if any):
        // what the summary counts as non-trainable.
        let running: i64 = variables
            .iter()
            .filter(|(name, _)| name.ends_with(".running_mean") || name.ends_with(".running_var"))
            .map(|(_, t)| t.numel() as i64)
            .sum();
        prop_assert_eq!(size.non_trainable as i64, running);
        prop_assert_eq!(
            &layers.last().unwrap().output_shape,
            &vec![output_units(&p, classes)]
        );
    }
}
