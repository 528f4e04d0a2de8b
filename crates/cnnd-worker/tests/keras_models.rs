//! The models libtorch builds against Keras's counts of the same models
//! (`crates/cnnd-core/tests/data/keras_models.json`, recorded by `bench/keras_models.py`):
//! trainable variables, batch norm's running statistics (Keras's non-trainable weights) and
//! the output of a forward pass. Also Keras's initialisation (`weightInit: glorot_uniform`):
//! weights within Glorot's limit with its variance, biases zero.

#[path = "../../cnnd-core/tests/keras_cases/mod.rs"]
mod keras_cases;

use cnnd_core::sweep::{Output, TrialParams, WeightInit};
use cnnd_worker::model::{build, parameter_count};
use keras_cases::cases;
use tch::{nn, Device, Kind, Tensor};

#[test]
fn libtorch_builds_what_keras_counts() {
    tch::set_num_threads(1);
    tch::manual_seed(0);
    for c in cases() {
        let (name, p, side, channels, classes) = (c.name, c.trial, c.side, c.channels, c.classes);
        let (trainable, non_trainable) = (c.trainable, c.non_trainable);
        // One weight matrix or kernel per Keras Conv2D and Dense layer.
        let keras_weighted = c
            .layers
            .iter()
            .filter(|l| l.0 == "Conv2D" || l.0 == "Dense")
            .count();
        let vs = nn::VarStore::new(Device::Cpu);
        let net = build(&vs.root(), &p, channels, side, classes);
        assert_eq!(parameter_count(&vs), trainable, "{name}: trainable");
        let all: u64 = vs.variables().values().map(|t| t.numel() as u64).sum();
        assert_eq!(all - trainable, non_trainable, "{name}: non-trainable");
        assert_eq!(all, c.total, "{name}: Keras's total");
        let weights = vs
            .variables()
            .iter()
            .filter(|(n, t)| n.ends_with(".weight") && matches!(t.dim(), 2 | 4))
            .count();
        assert_eq!(weights, keras_weighted, "{name}: weighted layers");
        let xs = Tensor::rand([2, channels, side, side], (Kind::Float, Device::Cpu));
        for train in [true, false] {
            let out = net.f_forward_t(&xs, train).unwrap();
            let outputs = if p.output == Output::Sigmoid {
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
    let case = cases()
        .into_iter()
        .find(|c| c.name == "notebook_mnist")
        .unwrap();
    let (p, side, channels, classes) = (case.trial, case.side, case.channels, case.classes);
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
