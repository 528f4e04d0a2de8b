//! cnnd's model arithmetic against Keras. `tests/data/keras_models.json` holds what Keras's
//! `model.summary()` reported for models built layer by layer in Keras
//! (`bench/keras_models.py`, which says how to record them again), each with the cnnd
//! hyperparameters that stand for the same model. For every case the sweep is validated as
//! a user would submit it (`fixed` only), and its trial's summary must match Keras row by
//! row (layer kind, output shape, trainable plus non-trainable count) and in total.

mod keras_cases;

use cnnd_core::model_size::{model_size, summary};
use keras_cases::cases;

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
        let (p, side, channels) = (&case.trial, case.side, case.channels);
        let rows = summary(p, channels, side, case.classes);
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
        let size = model_size(p, channels, side, case.classes);
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
    let p = &case.trial;
    assert_eq!(p.blocks, 2, "blocks follows the length of filters");
    assert_eq!(p.adam_epsilon, 1e-7);
    let size = model_size(p, 1, 28, 10);
    assert_eq!(size.keras_total(), 225_418);
    assert_eq!((size.parameters, size.non_trainable), (225_226, 192));
}
