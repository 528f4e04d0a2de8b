//! The models recorded from Keras (`../data/keras_models.json`, by `bench/keras_models.py`),
//! each with the trial cnnd makes of its hyperparameters. Shared by
//! `crates/cnnd-core/tests/keras_models.rs` (the summary arithmetic) and
//! `crates/cnnd-worker/tests/keras_models.rs` (the model libtorch builds).

use cnnd_core::datasets::{DatasetInfo, Source};
use cnnd_core::sweep::{SweepLimits, SweepRequest, TrialParams};
use serde_json::Value;

pub struct KerasCase {
    pub name: String,
    /// The trial a sweep with the case's `fixed` values runs, validated as a user's request.
    pub trial: TrialParams,
    /// Square input side, channels, classes.
    pub side: i64,
    pub channels: i64,
    pub classes: i64,
    pub total: u64,
    pub trainable: u64,
    pub non_trainable: u64,
    /// Layer class, output shape (channels last), parameter count.
    pub layers: Vec<(String, Vec<i64>, u64)>,
}

pub fn cases() -> Vec<KerasCase> {
    let recorded: Value = serde_json::from_str(include_str!("../data/keras_models.json"))
        .expect("keras_models.json parses");
    let int = |v: &Value| v.as_i64().expect("an integer");
    recorded["cases"]
        .as_array()
        .expect("cases")
        .iter()
        .map(|c| {
            let name = c["name"].as_str().unwrap().to_string();
            let (side, width, channels) = (
                int(&c["input"][0]),
                int(&c["input"][1]),
                int(&c["input"][2]),
            );
            assert_eq!(side, width, "{name}: square inputs only");
            let classes = int(&c["classes"]);
            KerasCase {
                trial: trial(
                    &name,
                    c["fixed"].as_object().unwrap(),
                    side,
                    channels,
                    classes,
                ),
                side,
                channels,
                classes,
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
                name,
            }
        })
        .collect()
}

/// The one trial of a sweep with these fixed values on a `side x side` data set.
fn trial(
    name: &str,
    fixed: &serde_json::Map<String, Value>,
    side: i64,
    channels: i64,
    classes: i64,
) -> TrialParams {
    let info = DatasetInfo {
        name: "keras-case".into(),
        source: Source::Idx {
            folder: "none".into(),
        },
        input_size: side as u32,
        channels: channels as u32,
        classes: classes as u32,
        class_names: (0..classes).map(|c| c.to_string()).collect(),
        train_examples: 1000,
        test_examples: 100,
    };
    let request = SweepRequest {
        dataset: "keras-case".into(),
        fixed: fixed.clone(),
        ..SweepRequest::default()
    };
    let spec = request
        .validate(SweepLimits::default(), |_| Ok(info))
        .unwrap_or_else(|e| panic!("{name}: refused: {e}"));
    assert_eq!(spec.trials.len(), 1);
    spec.trials[0].clone()
}
