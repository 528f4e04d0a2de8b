//! The model-size arithmetic of `cnnd_core::model_size` (what the daemon orders trials by,
//! without libtorch) against the models the trainer really builds: for any configuration of
//! the family, the parameter count it computes equals libtorch's count of the built model's
//! trainable variables, and a forward pass gives one output per logit it predicts; its
//! layer-by-layer summary (what GetTrial shows) names every variable of the built model
//! with its parameter count and the shapes the weights imply.

use cnnd_core::model_size::{model_size, output_units, summary};
use cnnd_core::sweep::{Head, Output, TrialParams};
use cnnd_worker::model::{build, parameter_count};
use proptest::prelude::*;
use tch::{nn, Device, Kind, Tensor};

prop_compose! {
    /// A configuration of the family on an input it fits: odd kernel no larger than the last
    /// block's feature map, at least 2x2 to pool at every block.
    fn configuration()(
        blocks in 1u32..=3,
        kernel in prop::sample::select(vec![1u32, 3, 5, 7]),
        base_filters in 1u32..=12,
        units in 1u32..=40,
        head in prop::sample::select(vec![Head::Dense, Head::Gap]),
        batch_norm in any::<bool>(),
        sigmoid in any::<bool>(),
        channels in prop::sample::select(vec![1i64, 3]),
        extra_side in 0i64..12,
    ) -> (TrialParams, i64, i64, i64) {
        // The input must hold `blocks` poolings and the kernel at the last block.
        let last_side_needed = (kernel as i64).max(2);
        let input = (last_side_needed << (blocks - 1)) + extra_side;
        let classes = if sigmoid { 2 } else { 10 };
        let p = TrialParams {
            blocks,
            kernel_size: kernel,
            base_filters,
            units,
            head,
            batch_norm,
            output: if sigmoid { Output::Sigmoid } else { Output::Softmax },
            ..TrialParams::default()
        };
        (p, channels, input, classes)
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn the_arithmetic_counts_what_libtorch_builds((p, channels, input, classes) in configuration()) {
        tch::set_num_threads(1);
        let vs = nn::VarStore::new(Device::Cpu);
        let net = build(&vs.root(), &p, channels, input, classes);
        let size = model_size(&p, channels, input, classes);
        prop_assert_eq!(
            size.parameters,
            parameter_count(&vs),
            "{:?} on {}x{}x{}",
            p, channels, input, input
        );
        let xs = Tensor::rand([2, channels, input, input], (Kind::Float, Device::Cpu));
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
        prop_assert_eq!(
            &layers.last().unwrap().output_shape,
            &vec![output_units(&p, classes)]
        );
    }
}
