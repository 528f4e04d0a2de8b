//! cnnd's model arithmetic against Keras. `tests/data/keras_models.json` holds what Keras's
//! `model.summary()` reported for models built layer by layer in Keras
//! (`bench/keras_models.py`, which says how to record them again), each with the cnnd
//! hyperparameters that stand for the same model. For every case the sweep is validated as
//! a user would submit it (`fixed` only), and its trial's summary must match Keras row by
//! row (layer kind, output shape, trainable plus non-trainable count) and in total.

use cnnd_core::datasets::{DatasetInfo, Source};
use cnnd_core::model_size::{model_size, summary};
use cnnd_core::sweep::{SweepLimits, SweepRequest, TrialParams};
use serde_json::Value;

struct Case {
    name: String,
    fixed: serde_json::Map<String, Value>,
    /// Height, width, channels (Keras's order).
    input: [i64; 3],
    classes: i64,
    total: u64,
    trainable: u64,
    non_trainable: u64,
    /// Layer class, output shape (channels last), parameter count.
    layers: Vec<(String, Vec<i64>, u64)>,
}

fn cases() -> Vec<Case> {
    let text = include_str!("data/keras_models.json");
    let recorded: Value = serde_json::from_str(text).expect("keras_models.json parses");
    let int = |v: &Value| v.as_i64().expect("an integer");
    recorded["cases"]
        .as_array()
        .expect("cases")
        .iter()
        .map(|c| Case {
            name: c["name"].as_str().unwrap().to_string(),
            fixed: c["fixed"].as_object().unwrap().clone(),
            input: [
                int(&c["input"][0]),
                int(&c["input"][1]),
                int(&c["input"][2]),
            ],
            classes: int(&c["classes"]),
            total: int(&c["total"]) as u64,
            trainable: int(&c["trainable"]) as u64,
            non_trainable: int(&c["nonTrainable"]) as u64,
            layers: c["layers"]
                .as_array()
                .unwrap()
                .iter()
                .map(|l| {
                    (
                        l["class"].as_str().unwrap().to_string(),
                        l["outputShape"]
                            .as_array()
                            .unwrap()
                            .iter()
                            .map(int)
                            .collect(),
                        int(&l["parameters"]) as u64,
                    )
                })
                .collect(),
        })
        .collect()
}

/// The trial a sweep with these fixed values runs on a `side x side` data set.
fn trial(case: &Case) -> TrialParams {
    let [side, width, channels] = case.input;
    assert_eq!(side, width, "{}: square inputs only", case.name);
    let info = DatasetInfo {
        name: "keras-case".into(),
        source: Source::Idx {
            folder: "none".into(),
        },
        input_size: side as u32,
        channels: channels as u32,
        classes: case.classes as u32,
        class_names: (0..case.classes).map(|c| c.to_string()).collect(),
        train_examples: 1000,
        test_examples: 100,
    };
    let request = SweepRequest {
        dataset: "keras-case".into(),
        fixed: case.fixed.clone(),
        ..SweepRequest::default()
    };
    let spec = request
        .validate(SweepLimits::default(), |_| Ok(info.clone()))
        .unwrap_or_else(|e| panic!("{}: refused: {e}", case.name));
    assert_eq!(spec.trials.len(), 1);
    spec.trials[0].clone()
}

/// Keras's layer class for a cnnd summary row's kind.
fn keras_class(kind: &str) -> &'static str {
    let first = kind.split([' ', '(']).next().unwrap_or(kind);
    match first {
        "Conv2d" => "Conv2D",
        "BatchNorm2d" => "BatchNormalization",
        "ReLU" | "ReLU6" => "ReLU",
        "LeakyReLU" => "LeakyReLU",
        "ELU" | "GELU" | "Tanh" => "Activation",
        "MaxPool2d" => "MaxPooling2D",
        "AvgPool2d" => "AveragePooling2D",
        "Flatten" => "Flatten",
        "GlobalAvgPool" => "GlobalAveragePooling2D",
        "Dropout" => "Dropout",
        "Linear" => "Dense",
        other => panic!("no Keras class for {other}"),
    }
}

#[test]
fn every_recorded_keras_model_has_cnnd_s_summary_and_counts() {
    let cases = cases();
    assert!(cases.len() >= 6, "the recording lost cases");
    for case in &cases {
        let p = trial(case);
        let [side, _, channels] = case.input;
        let rows = summary(&p, channels, side, case.classes);
        // Keras's Sequential lists no input layer.
        assert_eq!(rows[0].name, "input");
        let ours: Vec<(String, Vec<i64>, u64)> = rows[1..]
            .iter()
            .map(|r| {
                // [C, H, W] -> Keras's [H, W, C]; [features] stays.
                let shape = match r.output_shape[..] {
                    [c, h, w] => vec![h, w, c],
                    ref features => features.to_vec(),
                };
                (
                    keras_class(&r.kind).to_string(),
                    shape,
                    r.parameters + r.non_trainable,
                )
            })
            .collect();
        assert_eq!(ours, case.layers, "{}: layer by layer", case.name);
        let size = model_size(&p, channels, side, case.classes);
        assert_eq!(size.parameters, case.trainable, "{}: trainable", case.name);
        assert_eq!(
            size.non_trainable, case.non_trainable,
            "{}: non-trainable",
            case.name
        );
        assert_eq!(size.keras_total(), case.total, "{}: total", case.name);
    }
}

/// The seed notebook's digit model, as Keras builds it by default (valid padding, biased
/// convolutions, Glorot weights, Adam's epsilon 1e-7): the count Keras prints.
#[test]
fn the_notebook_mnist_model_counts_as_keras_does() {
    let case = cases()
        .into_iter()
        .find(|c| c.name == "notebook_mnist")
        .expect("the notebook's model is recorded");
    let p = trial(&case);
    assert_eq!(p.blocks, 2, "blocks follows the length of filters");
    assert_eq!(p.adam_epsilon, 1e-7);
    let size = model_size(&p, 1, 28, 10);
    assert_eq!(size.keras_total(), 225_418);
    assert_eq!((size.parameters, size.non_trainable), (225_226, 192));
}
