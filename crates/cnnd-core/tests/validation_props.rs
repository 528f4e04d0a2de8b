//! Property tests of `SweepRequest::validate` (pure: no daemon, no I/O). Requests are built
//! from arbitrary JSON values under known and unknown hyperparameter names, with plausible
//! values mixed in so that a good share is accepted. Properties:
//!
//! - validation never panics;
//! - an accepted request's trials all pass `TrialParams::validate`, number the product of
//!   the list lengths (grid) or `numTrials` (random) times `repeats`, carry the fixed values
//!   and one of each axis's values, with the documented seeds, within the trial limit;
//! - a refused request names a non-empty field (a known top-level field or hyperparameter
//!   path) and a non-empty reason;
//! - the same request always validates the same way, whatever the order of `space`'s keys.

use cnnd_core::datasets::{builtin as dataset_info, resolve_builtin};
use cnnd_core::sweep::{
    hyperparameter_names, SpecError, SweepLimits, SweepRequest, SweepSpec, TrialParams,
};
use proptest::prelude::*;
use serde_json::{json, Map, Value};

/// Any JSON value (finite numbers only: JSON has no NaN), nested a little.
fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        (-5i64..64).prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        (-2.0f64..2.0).prop_map(|f| json!(f)),
        any::<f64>().prop_filter_map("finite", |f| serde_json::Number::from_f64(f)
            .map(Value::Number)),
        prop::sample::select(vec![
            "relu", "elu", "gap", "dense", "sgd", "adamw", "softmax", "sigmoid", "", "RELU", "x"
        ])
        .prop_map(Value::from),
        "\\PC{0,6}".prop_map(Value::from),
    ];
    leaf.prop_recursive(2, 12, 3, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..3).prop_map(Value::Array),
            prop::collection::btree_map("[a-zA-Z]{1,5}", inner, 0..3)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A value that the hyperparameter `name` may well accept.
fn plausible(name: &str) -> BoxedStrategy<Value> {
    let ints = |lo: u64, hi: u64| (lo..=hi).prop_map(Value::from).boxed();
    let floats = |lo: f64, hi: f64| (lo..hi).prop_map(|f| json!(f)).boxed();
    let pick = |v: Vec<Value>| prop::sample::select(v).boxed();
    match name {
        "kernelSize" => pick(vec![
            json!(1),
            json!(3),
            json!(5),
            json!(7),
            json!(4),
            json!(31),
        ]),
        "baseFilters" => ints(1, 16),
        "blocks" => ints(1, 4),
        "head" => pick(vec![json!("gap"), json!("dense")]),
        "units" => prop_oneof![ints(1, 64), Just(json!([32, 16])), Just(json!([]))].boxed(),
        "dropout" => floats(0.0, 1.05),
        "batchNorm" | "horizontalFlip" => any::<bool>().prop_map(Value::from).boxed(),
        "activation" => pick(vec![
            json!("relu"),
            json!("leaky_relu"),
            json!("elu"),
            json!("gelu"),
            json!("tanh"),
        ]),
        "optimizer" => pick(vec![json!("adam"), json!("adamw"), json!("sgd")]),
        "learningRate" => floats(-0.01, 1.0),
        "momentum" => floats(0.0, 1.0),
        "weightDecay" => floats(0.0, 0.1),
        "batchSize" => ints(0, 128),
        "epochs" => ints(0, 5),
        "inputSize" => pick(vec![
            json!(0),
            json!(3),
            json!(8),
            json!(16),
            json!(28),
            json!(32),
        ]),
        "output" => pick(vec![json!("softmax"), json!("sigmoid")]),
        "rotationRange" => floats(0.0, 200.0),
        "widthShift" | "heightShift" | "zoom" => floats(0.0, 1.0),
        "seed" => any::<u64>().prop_map(Value::from).boxed(),
        "trainLimit" | "testLimit" => {
            pick(vec![json!(0), json!(1), json!(5), json!(100), json!(1000)])
        }
        "valFraction" => floats(0.0, 0.6),
        // Keras-style layers: lists (one value each; in space, alternatives of lists).
        "filters" => pick(vec![
            json!([8, 16]),
            json!([4, 8, 16]),
            json!([]),
            json!([8, 0]),
        ]),
        "kernelSizes" => pick(vec![
            json!([3, 3]),
            json!([5, 3, 3]),
            json!([4, 2]),
            json!([]),
        ]),
        "padding" => pick(vec![json!("same"), json!("valid")]),
        "strides" => ints(0, 3),
        "pooling" => pick(vec![json!("max"), json!("avg")]),
        "poolSize" => ints(0, 4),
        "convBias" => pick(vec![json!("auto"), json!("always"), json!("never")]),
        "weightInit" => pick(vec![json!("torch"), json!("glorot_uniform")]),
        "lrSchedule" => pick(vec![
            json!("constant"),
            json!("step"),
            json!("exponential"),
            json!("cosine"),
            json!("plateau"),
        ]),
        "lrGamma" | "labelSmoothing" => floats(0.0, 1.1),
        "patience" | "lrPatience" | "lrStepSize" => ints(0, 5),
        "shearRange" => floats(0.0, 100.0),
        "channelShift" => floats(0.0, 1.1),
        "verticalFlip" => any::<bool>().prop_map(Value::from).boxed(),
        "fillMode" => pick(vec![
            json!("constant"),
            json!("nearest"),
            json!("reflect"),
            json!("wrap"),
        ]),
        "timeLimit" => floats(0.0, 100.0),
        _ => any_json().boxed(),
    }
}

fn known() -> Vec<String> {
    hyperparameter_names()
}

/// A hyperparameter name: mostly known ones, sometimes a misspelling or junk.
fn name() -> impl Strategy<Value = String> {
    prop_oneof![
        30 => prop::sample::select(known()),
        1 => prop::sample::select(known()).prop_map(|n| format!("{n}s")),
        1 => "[a-zA-Z_]{0,10}",
    ]
}

/// A value for `name`: plausible most of the time, anything otherwise.
fn value_for(name: String) -> impl Strategy<Value = (String, Value)> {
    let v = prop_oneof![12 => plausible(&name), 1 => any_json()];
    (Just(name), v)
}

/// A `space` entry: usually a list of 1..=3 values, sometimes empty or not a list.
fn axis_for(name: String) -> impl Strategy<Value = (String, Value)> {
    let list = prop::collection::vec(prop_oneof![20 => plausible(&name), 1 => any_json()], 1..=3)
        .prop_map(Value::Array);
    let v = prop_oneof![20 => list, 1 => Just(json!([])), 1 => any_json()];
    (Just(name), v)
}

/// One of `choices`, each with its weight.
fn weighted(choices: &[(&'static str, u32)]) -> BoxedStrategy<String> {
    let expanded: Vec<String> = choices
        .iter()
        .flat_map(|(s, w)| std::iter::repeat_n(s.to_string(), *w as usize))
        .collect();
    prop::sample::select(expanded).boxed()
}

prop_compose! {
    fn request()(
        sweep_name in prop_oneof![20 => "[a-z -]{0,12}".boxed(), 2 => "\\PC{0,20}".boxed(), 1 => Just("x".repeat(201)).boxed()],
        dataset in weighted(&[("mnist", 12), ("fashion_mnist", 4), ("", 1), ("cifar10", 1)]),
        space in prop::collection::vec(name().prop_flat_map(axis_for), 0..=3),
        fixed in prop::collection::vec(name().prop_flat_map(value_for), 0..=4),
        strategy in weighted(&[("", 6), ("grid", 6), ("random", 8), ("tpe", 1), ("bayes", 1)]),
        num_trials in prop_oneof![6 => Just(0u32), 8 => 1u32..4, 1 => any::<u32>()],
        max_parallel in 0u32..4,
        seed in any::<u64>(),
        priority in any::<i32>(),
        early_stopping in weighted(&[("", 12), ("none", 6), ("median", 2), ("asha", 2), ("x", 1)]),
        reduction_factor in prop_oneof![16 => Just(0u32), 4 => 2u32..5, 1 => any::<u32>()],
        objective in weighted(&[("", 12), ("val_accuracy", 4), ("val_loss", 4), ("f1", 1)]),
        repeats in prop_oneof![16 => 0u32..4, 1 => any::<u32>()],
        device in weighted(&[("", 12), ("auto", 4), ("cpu", 4), ("cuda", 1), ("tpu", 1)]),
    ) -> SweepRequest {
        SweepRequest {
            name: sweep_name,
            dataset,
            space: space.into_iter().collect(),
            fixed: fixed.into_iter().collect(),
            strategy,
            num_trials,
            max_parallel,
            seed,
            priority,
            early_stopping,
            objective,
            repeats,
            device,
            reduction_factor,
            grace_period: 1,
            ..Default::default()
        }
    }
}

/// What `TrialParams` makes of `value` under `name` (e.g. 3 and 3.0 may differ), as JSON.
fn normalised(name: &str, value: &Value) -> Value {
    let mut obj = Map::new();
    obj.insert(name.to_string(), value.clone());
    let p: TrialParams =
        serde_json::from_value(Value::Object(obj)).expect("an accepted value decodes");
    serde_json::to_value(p).unwrap()[name].clone()
}

const TOP_LEVEL: &[&str] = &[
    "name",
    "dataset",
    "space",
    "fixed",
    "strategy",
    "numTrials",
    "maxParallel",
    "seed",
    "priority",
    "earlyStopping",
    "objective",
    "repeats",
    "device",
    "reductionFactor",
];

fn check_refusal(e: &SpecError) {
    assert!(!e.field.trim().is_empty(), "empty field in {e:?}");
    assert!(!e.reason.trim().is_empty(), "empty reason in {e:?}");
    let head = e.field.split(['.', '[']).next().unwrap();
    assert!(
        TOP_LEVEL.contains(&head) || known().iter().any(|k| k == head),
        "field '{}' names neither a request field nor a hyperparameter ({e})",
        e.field
    );
    assert_eq!(e.to_string(), format!("{}: {}", e.field, e.reason));
}

fn check_accepted(r: &SweepRequest, limits: SweepLimits, spec: &SweepSpec) {
    let info = &dataset_info(&spec.dataset).expect("accepted data set is known");
    for (i, t) in spec.trials.iter().enumerate() {
        t.validate(info)
            .unwrap_or_else(|e| panic!("trial {i} of an accepted request fails validation: {e}"));
    }
    let repeats = r.repeats.max(1) as usize;
    let lengths: Vec<usize> = r
        .space
        .values()
        .map(|v| v.as_array().expect("accepted axes are lists").len())
        .collect();
    let configs = match spec.strategy {
        cnnd_core::sweep::Strategy::Grid => lengths.iter().product::<usize>(),
        cnnd_core::sweep::Strategy::Random | cnnd_core::sweep::Strategy::Tpe => {
            r.num_trials as usize
        }
    };
    assert_eq!(
        spec.trials.len(),
        configs * repeats,
        "{lengths:?} x {repeats} repeats ({:?})",
        spec.strategy
    );
    assert!(spec.trials.len() <= limits.max_trials as usize);
    assert!(!spec.trials.is_empty());
    let mut varied: Vec<String> = r.space.keys().cloned().collect();
    varied.sort();
    assert_eq!(spec.varied, varied);
    assert_eq!(spec.repeats as usize, repeats);

    let seed_set = r.fixed.contains_key("seed") || r.space.contains_key("seed");
    let axes: Vec<(String, Vec<Value>)> = r
        .space
        .iter()
        .map(|(k, v)| {
            (
                k.clone(),
                v.as_array()
                    .unwrap()
                    .iter()
                    .map(|x| normalised(k, x))
                    .collect(),
            )
        })
        .collect();
    for (i, t) in spec.trials.iter().enumerate() {
        let tj = serde_json::to_value(t).unwrap();
        for (k, v) in &r.fixed {
            if k != "seed" {
                assert_eq!(tj[k.as_str()], normalised(k, v), "trial {i}: fixed {k}");
            }
        }
        for (k, values) in &axes {
            if k != "seed" {
                assert!(
                    values.contains(&tj[k.as_str()]),
                    "trial {i}: {k}={} is not one of {values:?}",
                    tj[k.as_str()]
                );
            }
        }
        if !seed_set {
            assert_eq!(
                t.seed,
                r.seed.wrapping_add((i % repeats) as u64),
                "trial {i}: seed"
            );
        }
        // Repeats of a configuration differ in their seed only.
        if i % repeats != 0 {
            let prev = &spec.trials[i - 1];
            assert_eq!(
                TrialParams {
                    seed: 0,
                    ..t.clone()
                },
                TrialParams {
                    seed: 0,
                    ..prev.clone()
                },
                "trial {i}"
            );
            assert_eq!(t.seed, prev.seed.wrapping_add(1));
        }
    }
    // Random draws distinct configurations (when the axes' values are distinct).
    let distinct_axes = axes.iter().all(|(_, v)| {
        let mut seen = Vec::new();
        v.iter().all(|x| {
            let new = !seen.contains(&x);
            seen.push(x);
            new
        })
    });
    if spec.strategy == cnnd_core::sweep::Strategy::Random
        && distinct_axes
        && !axes.iter().any(|(k, _)| k == "seed")
    {
        let configs: Vec<Value> = spec
            .trials
            .iter()
            .step_by(repeats)
            .map(|t| {
                let tj = serde_json::to_value(t).unwrap();
                Value::Array(axes.iter().map(|(k, _)| tj[k.as_str()].clone()).collect())
            })
            .collect();
        for (i, a) in configs.iter().enumerate() {
            assert!(
                !configs[..i].contains(a),
                "random drew configuration {a} twice"
            );
        }
    }
}

proptest! {
    // No regression files: this suite must not write into the source tree.
    #![proptest_config(ProptestConfig { cases: 1024, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn validate_never_panics_and_keeps_its_promises(r in request(), max_trials in 1u32..64) {
        let limits = SweepLimits { max_trials };
        let first = std::panic::catch_unwind(|| r.validate(limits, resolve_builtin));
        prop_assert!(first.is_ok(), "validate panicked on {}", serde_json::to_string(&r).unwrap());
        let first = first.unwrap();
        match &first {
            Ok(spec) => check_accepted(&r, limits, spec),
            Err(e) => check_refusal(e),
        }
        // Deterministic: the same request, and the same with space's keys in reverse order.
        let again = r.validate(limits, resolve_builtin);
        prop_assert_eq!(&again, &first);
        let mut reversed = r.clone();
        reversed.space = r.space.iter().rev().map(|(k, v)| (k.clone(), v.clone())).collect();
        match (&first, reversed.validate(limits, resolve_builtin)) {
            (Ok(a), Ok(b)) => {
                prop_assert_eq!(&a.trials, &b.trials);
                prop_assert_eq!(&a.varied, &b.varied);
            }
            (Err(_), Err(_)) => {}
            (a, b) => prop_assert!(false, "space order changed the outcome: {:?} vs {:?}", a.as_ref().map(|s| s.trials.len()), b.map(|s| s.trials.len())),
        }
    }

    /// Plausible requests only (known names, plausible values): a good share is accepted,
    /// so the accepted-side properties are exercised on many shapes.
    #[test]
    fn plausible_requests_expand_as_documented(
        axes in prop::collection::btree_map(prop::sample::select(known()), 1usize..=3, 0..=3)
            .prop_flat_map(|m| {
                let strategies: Vec<_> = m.into_iter()
                    .map(|(k, n)| (Just(k.clone()), prop::collection::vec(plausible(&k), n..=n)))
                    .collect();
                strategies
            }),
        fixed_names in prop::collection::btree_set(prop::sample::select(known()), 0..=3),
        random in any::<bool>(),
        num_trials in 1u32..4,
        repeats in 0u32..3,
        seed in any::<u64>(),
    ) {
        let space: Map<String, Value> = axes.into_iter().map(|(k, v)| (k, Value::Array(v))).collect();
        let fixed: Map<String, Value> = fixed_names
            .into_iter()
            .filter(|k| !space.contains_key(k))
            .map(|k| {
                let v = match k.as_str() { "epochs" => json!(1), "learningRate" => json!(0.01), _ => json!(null) };
                (k, v)
            })
            .filter(|(_, v)| !v.is_null())
            .collect();
        let r = SweepRequest {
            dataset: "mnist".into(),
            space,
            fixed,
            strategy: if random { "random".into() } else { "grid".into() },
            num_trials: if random { num_trials } else { 0 },
            repeats,
            seed,
            ..Default::default()
        };
        let limits = SweepLimits { max_trials: 100 };
        match r.validate(limits, resolve_builtin) {
            Ok(spec) => check_accepted(&r, limits, &spec),
            Err(e) => check_refusal(&e),
        }
    }
}

/// Known spellings in every section are accepted as such; the examples the README gives
/// are refused with the field it names.
#[test]
fn examples_from_the_readme() {
    let ok: SweepRequest =
        serde_json::from_value(json!({"name": "mnist-heads", "dataset": "mnist",
        "space": {"kernelSize": [3, 5], "dropout": [0, 0.25, 0.5], "head": ["gap", "dense"]},
        "fixed": {"epochs": 3, "batchSize": 64, "learningRate": 0.001},
        "strategy": "grid", "maxParallel": 2, "seed": 7}))
        .unwrap();
    let spec = ok
        .validate(SweepLimits::default(), resolve_builtin)
        .unwrap();
    assert_eq!(spec.trials.len(), 12);
    check_accepted(&ok, SweepLimits::default(), &spec);
    let bad: SweepRequest =
        serde_json::from_value(json!({"dataset": "mnist", "fixed": {"kernelSize": 29}})).unwrap();
    let e = bad
        .validate(SweepLimits::default(), resolve_builtin)
        .unwrap_err();
    assert_eq!(e.field, "fixed.kernelSize");
    check_refusal(&e);
}

/// A random sweep over a space whose grid is astronomically large (20 axes of 10 values:
/// 10^20 combinations) asks for 2 trials. It must be answered (accepted or refused), never
/// panic: the daemon would drop the request's connection, and a merely huge grid (say 10^10)
/// makes it allocate the whole grid before drawing 2 configurations from it.
#[test]
fn random_draw_from_a_huge_space_does_not_panic() {
    let mut space = Map::new();
    let numeric = [
        ("baseFilters", json!([1, 2, 3, 4, 5, 6, 7, 8, 9, 10])),
        ("units", json!([1, 2, 3, 4, 5, 6, 7, 8, 9, 10])),
        (
            "dropout",
            json!([0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]),
        ),
        (
            "learningRate",
            json!([0.001, 0.002, 0.003, 0.004, 0.005, 0.006, 0.007, 0.008, 0.009, 0.01]),
        ),
        (
            "momentum",
            json!([0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]),
        ),
        (
            "weightDecay",
            json!([0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]),
        ),
        ("batchSize", json!([1, 2, 3, 4, 5, 6, 7, 8, 9, 10])),
        ("epochs", json!([1, 2, 3, 4, 5, 6, 7, 8, 9, 10])),
        ("rotationRange", json!([0, 1, 2, 3, 4, 5, 6, 7, 8, 9])),
        (
            "widthShift",
            json!([0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]),
        ),
        (
            "heightShift",
            json!([0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]),
        ),
        (
            "zoom",
            json!([0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]),
        ),
        ("seed", json!([1, 2, 3, 4, 5, 6, 7, 8, 9, 10])),
        (
            "trainLimit",
            json!([0, 100, 200, 300, 400, 500, 600, 700, 800, 900]),
        ),
        (
            "testLimit",
            json!([0, 100, 200, 300, 400, 500, 600, 700, 800, 900]),
        ),
        (
            "valFraction",
            json!([0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5]),
        ),
        ("timeLimit", json!([0, 1, 2, 3, 4, 5, 6, 7, 8, 9])),
        (
            "activation",
            json!([
                "relu",
                "elu",
                "gelu",
                "tanh",
                "leaky_relu",
                "relu",
                "elu",
                "gelu",
                "tanh",
                "leaky_relu"
            ]),
        ),
        (
            "optimizer",
            json!(["adam", "adamw", "sgd", "adam", "adamw", "sgd", "adam", "adamw", "sgd", "adam"]),
        ),
        (
            "batchNorm",
            json!([true, false, true, false, true, false, true, false, true, false]),
        ),
    ];
    for (k, v) in numeric {
        space.insert(k.to_string(), v);
    }
    let r = SweepRequest {
        dataset: "mnist".into(),
        space,
        strategy: "random".into(),
        num_trials: 2,
        seed: 1,
        ..Default::default()
    };
    let outcome = std::panic::catch_unwind(|| r.validate(SweepLimits::default(), resolve_builtin));
    let outcome = outcome.unwrap_or_else(|p| {
        let msg = p
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default();
        panic!("validate panicked: {msg}")
    });
    match outcome {
        Ok(spec) => assert_eq!(spec.trials.len(), 2),
        Err(e) => check_refusal(&e),
    }
}

/// The generator is worth something only if it reaches both outcomes, and accepted requests
/// of several shapes (grid and random, with repeats).
#[test]
fn the_generated_requests_reach_acceptance_and_refusal() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    let mut runner = TestRunner::deterministic();
    let (mut accepted, mut refused, mut random, mut repeated) = (0, 0, 0, 0);
    for _ in 0..4000 {
        let r = request().new_tree(&mut runner).unwrap().current();
        match r.validate(SweepLimits { max_trials: 64 }, resolve_builtin) {
            Ok(spec) => {
                accepted += 1;
                random += (spec.strategy == cnnd_core::sweep::Strategy::Random) as u32;
                repeated += (spec.repeats > 1) as u32;
            }
            Err(_) => refused += 1,
        }
    }
    eprintln!("accepted {accepted} (random {random}, with repeats {repeated}), refused {refused}");
    assert!(
        accepted >= 100 && refused >= 100,
        "accepted {accepted}, refused {refused}"
    );
    assert!(
        random >= 10 && repeated >= 10,
        "random {random}, with repeats {repeated}"
    );
}

/// Hyperparameters a tpe range can search in these tests.
const TPE_AXES: &[&str] = &[
    "kernelSize",
    "blocks",
    "baseFilters",
    "units",
    "inputSize",
    "batchSize",
    "dropout",
    "learningRate",
];

/// A tpe axis for `name`: usually a range (integer ranges sometimes with a step), sometimes a
/// list; bounds now and then beyond what the model family allows, so that both refusals
/// and acceptances happen.
fn tpe_axis(name: &'static str) -> BoxedStrategy<(String, Value)> {
    let int = |lo: std::ops::Range<i64>, span: std::ops::Range<i64>| {
        (lo, span, prop::option::of(1i64..3))
            .prop_map(|(lo, span, step)| {
                let mut range = json!({"min": lo, "max": lo + span});
                if let Some(step) = step {
                    range["step"] = json!(step);
                }
                range
            })
            .boxed()
    };
    let range = match name {
        "kernelSize" => int(1..8, 0..6),
        "blocks" => int(1..4, 0..8),
        "baseFilters" => int(1..32, 0..48),
        "units" => int(1..64, 0..128),
        "inputSize" => int(2..40, 0..40),
        "batchSize" => int(1..64, 0..128),
        "dropout" => (0.0f64..0.9, 0.0f64..0.3)
            .prop_map(|(lo, span)| json!({"min": lo, "max": lo + span}))
            .boxed(),
        _ => (1e-5f64..1e-2, 1.0f64..1000.0, any::<bool>())
            .prop_map(|(lo, factor, log)| json!({"min": lo, "max": lo * factor, "log": log}))
            .boxed(),
    };
    let axis = prop_oneof![4 => range, 1 => prop::collection::vec(plausible(name), 1..=3).prop_map(Value::Array)];
    (Just(name.to_string()), axis).boxed()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, failure_persistence: None, ..ProptestConfig::default() })]

    /// tpe: a space is accepted only when everything it can suggest is a valid model. Each
    /// trial of an accepted sweep is suggested in turn (random start-up, then TPE from the
    /// earlier trials' scores, as the scheduler does) and every suggestion passes
    /// `TrialParams::validate`; a refusal names `space.NAME` (or `space`) and a reason.
    #[test]
    fn every_suggestion_of_an_accepted_tpe_space_is_a_valid_configuration(
        axes in prop::collection::btree_set(prop::sample::select(TPE_AXES.to_vec()), 1..=3)
            .prop_flat_map(|names| names.into_iter().map(tpe_axis).collect::<Vec<_>>()),
        seed in any::<u64>(),
        scores in prop::collection::vec(0.0f64..1.0, 8),
    ) {
        let request = SweepRequest {
            dataset: "mnist".into(),
            strategy: "tpe".into(),
            num_trials: 8,
            startup_trials: 3,
            space: axes.into_iter().collect(),
            fixed: [("epochs".to_string(), json!(1))].into_iter().collect(),
            seed,
            ..Default::default()
        };
        match request.validate(SweepLimits::default(), resolve_builtin) {
            Err(e) => {
                check_refusal(&e);
                prop_assert!(e.field.starts_with("space") || e.field.starts_with("fixed"), "{e}");
            }
            Ok(spec) => {
                let search = spec.tpe.as_ref().expect("a tpe sweep keeps its search");
                let info = dataset_info("mnist").unwrap();
                let mut observed: Vec<(TrialParams, f64)> = Vec::new();
                for (i, base) in spec.trials.iter().enumerate() {
                    let (params, _) = search.suggest(i as u32, base, &observed, &[]);
                    if let Err(e) = params.validate(&info) {
                        prop_assert!(false, "suggestion {i} of an accepted space is invalid: {e} ({})",
                            serde_json::to_string(&request.space).unwrap());
                    }
                    observed.push((params, scores[i]));
                }
            }
        }
    }
}
