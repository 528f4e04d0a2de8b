//! The models libtorch builds against Keras's counts of the same models
//! (`crates/cnnd-core/tests/data/keras_models.json`, recorded by `bench/keras_models.py`):
//! trainable variables, batch norm's running statistics (Keras's non-trainable weights) and
//! the output of a forward pass. Also Keras's initialisation (`weightInit: glorot_uniform`):
//! weights within Glorot's limit with its variance, biases zero.

use cnnd_core::datasets::{DatasetInfo, Source};
use cnnd_core::sweep::{SweepLimits, SweepRequest, TrialParams, WeightInit};
use cnnd_worker::model::{build, parameter_count};
use serde_json::Value;
use tch::{nn, Device, Kind, Tensor};

/// Each recorded case: name, the trial its `fixed` values make, input (side, channels),
/// classes, and Keras's trainable and non-trainable counts.
fn cases() -> Vec<(String, TrialParams, i64, i64, i64, u64, u64)> {
    let recorded: Value =
        serde_json::from_str(include_str!("../../cnnd-core/tests/data/keras_models.json")).unwrap();
    let int = |v: &Value| v.as_i64().unwrap();
    recorded["cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            let (side, channels, classes) =
                (int(&c["input"][0]), int(&c["input"][2]), int(&c["classes"]));
            let info = DatasetInfo {
                name: "keras-case".into(),
                source: Source::Idx {
                    folder: "none".into(),
                },
                input_size: side as u32,
                channels: channels as u32,
                classes: classes as u32,
                class_names: (0..classes).map(|k| k.to_string()).collect(),
                train_examples: 1000,
                test_examples: 100,
            };
            let request = SweepRequest {
                dataset: "keras-case".into(),
                fixed: c["fixed"].as_object().unwrap().clone(),
                ..SweepRequest::default()
            };
            let spec = request
                .validate(SweepLimits::default(), |_| Ok(info))
                .unwrap();
            (
                c["name"].as_str().unwrap().to_string(),
                spec.trials[0].clone(),
                side,
                channels,
                classes,
                int(&c["trainable"]) as u64,
                int(&c["nonTrainable"]) as u64,
            )
        })
        .collect()
}

#[test]
fn libtorch_builds_what_keras_counts() {
    tch::set_num_threads(1);
    tch::manual_seed(0);
    for (name, p, side, channels, classes, trainable, non_trainable) in cases() {
        let vs = nn::VarStore::new(Device::Cpu);
        let net = build(&vs.root(), &p, channels, side, classes);
        assert_eq!(parameter_count(&vs), trainable, "{name}: trainable");
        let all: u64 = vs.variables().values().map(|t| t.numel() as u64).sum();
        assert_eq!(all - trainable, non_trainable, "{name}: non-trainable");
        let xs = Tensor::rand([2, channels, side, side], (Kind::Float, Device::Cpu));
        for train in [true, false] {
            let out = net.f_forward_t(&xs, train).unwrap();
            let outputs = if p.output == cnnd_core::sweep::Output::Sigmoid {
                1
            } else {
                classes
            };
            assert_eq!(out.size(), [2, outputs], "{name}");
            assert!(out.isfinite().all().int64_value(&[]) == 1, "{name}: finite");
        }
    }
}

#[test]
fn glorot_uniform_starts_as_keras_does() {
    tch::manual_seed(1);
    let (_, p, side, channels, classes, ..) = cases()
        .into_iter()
        .find(|c| c.0 == "notebook_mnist")
        .unwrap();
    assert_eq!(p.weight_init, WeightInit::GlorotUniform);
    let vs = nn::VarStore::new(Device::Cpu);
    let _net = build(&vs.root(), &p, channels, side, classes);
    let vars = vs.variables();
    // (name, fan in, fan out) of every weight: a k x k conv counts k*k per channel.
    for (name, fan_in, fan_out) in [
        ("block0.conv", 9, 9 * 32),
        ("block1.conv", 9 * 32, 9 * 64),
        ("hidden", 64 * 5 * 5, 128),
        ("out", 128, 10),
    ] {
        let w = &vars[&format!("{name}.weight")];
        let limit = (6.0 / (fan_in + fan_out) as f64).sqrt();
        let max = w.abs().max().double_value(&[]);
        assert!(
            max <= limit && max > 0.8 * limit,
            "{name}: max {max} limit {limit}"
        );
        // Uniform in +-limit: standard deviation limit / sqrt(3).
        let std = w.std(true).double_value(&[]);
        let want = limit / 3f64.sqrt();
        assert!(
            (std / want - 1.0).abs() < 0.15,
            "{name}: std {std}, want {want}"
        );
        let b = &vars[&format!("{name}.bias")];
        assert_eq!(b.abs().max().double_value(&[]), 0.0, "{name}: bias zero");
    }
    // PyTorch's default for the same model: biases are drawn, not zero.
    let torch_default = TrialParams {
        weight_init: WeightInit::Torch,
        ..p
    };
    let vs = nn::VarStore::new(Device::Cpu);
    let _net = build(&vs.root(), &torch_default, channels, side, classes);
    assert!(vs.variables()["out.bias"].abs().max().double_value(&[]) > 0.0);
}
