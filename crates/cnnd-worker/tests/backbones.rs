//! The pretrained backbones against torchvision itself: `bench/torchvision_export.py`
//! (torchvision 0.26 in its own environment, `$CNND_TORCHVISION_PY`, made by
//! scripts/setup.sh) writes a randomly initialised torchvision model's weights with
//! non-trivial batch-norm statistics, an input and torchvision's logits; cnnd's model of the
//! same arch loads the weights through `initFrom`'s loader and must give the same logits
//! within 1e-4. Then a frozen-backbone trial with a fine-tuning stage trains on MNIST, and is
//! checked variable by variable, and resumed from its checkpoint.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, MutexGuard};

use cnnd_core::datasets::builtin as dataset_info;
use cnnd_core::model_size::model_size;
use cnnd_core::sweep::{Arch, Freeze, Head, Precision, TrialParams};
use cnnd_worker::data::{self, DataCache, Prepared};
use cnnd_worker::model::{build, parameter_count};
use cnnd_worker::train::{run_trial_with, TrainOutcome, TrialControl};
use cnnd_worker::transfer;
use tch::{nn, Device, Kind, Tensor};

fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

fn data_dir() -> PathBuf {
    PathBuf::from(
        std::env::var("CNND_DATA_DIR")
            .unwrap_or_else(|_| concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/data").into()),
    )
}

/// What the export script printed.
struct Export {
    weights: PathBuf,
    io: HashMap<String, Tensor>,
    parameters: u64,
    buffers_float: u64,
}

/// Runs `bench/torchvision_export.py` for `arch` into `dir`.
fn export(arch: &str, dir: &Path, classes: i64, side: i64) -> Export {
    let python = std::env::var("CNND_TORCHVISION_PY").expect(
        "CNND_TORCHVISION_PY is not set: source scripts/env.sh (scripts/setup.sh installs torchvision)",
    );
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../bench/torchvision_export.py"
    );
    let out = Command::new(&python)
        .args([script, "--arch", arch, "--out"])
        .arg(dir)
        .args([
            "--classes",
            &classes.to_string(),
            "--side",
            &side.to_string(),
        ])
        .args(["--batch", "3"])
        .output()
        .unwrap_or_else(|e| panic!("{python}: {e} (run scripts/setup.sh)"));
    assert!(
        out.status.success(),
        "{script} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = String::from_utf8_lossy(&out.stdout);
    let json: serde_json::Value = serde_json::from_str(line.trim()).expect("one JSON line");
    Export {
        weights: dir.join("weights.safetensors"),
        io: Tensor::read_safetensors(dir.join("io.safetensors"))
            .unwrap()
            .into_iter()
            .collect(),
        parameters: json["parameters"].as_u64().unwrap(),
        buffers_float: json["buffers_float"].as_u64().unwrap(),
    }
}

fn params(arch: Arch) -> TrialParams {
    TrialParams {
        arch,
        head: Head::Gap,
        dropout: 0.2,
        precision: Precision::Fp32,
        ..TrialParams::default()
    }
}

#[test]
fn cnnds_forward_pass_equals_torchvisions_on_the_same_weights() {
    let _serial = serial();
    tch::set_num_threads(1);
    for (arch, name) in [
        (Arch::Resnet18, "resnet18"),
        (Arch::MobilenetV2, "mobilenet_v2"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let e = export(name, dir.path(), 1000, 64);
        let p = params(arch);
        let vs = nn::VarStore::new(Device::Cpu);
        let net = build(&vs.root(), &p, 3, 64, 1000);
        let t = transfer::apply(&vs, &e.weights, "file:weights", Freeze::None, arch).unwrap();
        assert!(
            t.reinitialised.is_empty(),
            "{name}: every variable is in torchvision's file: {:?}",
            t.reinitialised
        );
        // torchvision's parameter count, and the one model_size predicts (with Keras's
        // non-trainable running statistics).
        assert_eq!(parameter_count(&vs), e.parameters, "{name}");
        let size = model_size(&p, 3, 64, 1000);
        assert_eq!(size.parameters, e.parameters, "{name}");
        assert_eq!(size.non_trainable, e.buffers_float, "{name}");

        let input = &e.io["input"];
        let expected = &e.io["output"];
        let logits = tch::no_grad(|| net.f_forward_t(input, false)).unwrap();
        assert_eq!(logits.size(), expected.size());
        let diff = (&logits - expected).abs().max().double_value(&[]);
        let scale = expected.abs().max().double_value(&[]);
        eprintln!("{name}: max |cnnd - torchvision| = {diff:.3e} (logits up to {scale:.2})");
        assert!(diff < 1e-4, "{name}: differs from torchvision by {diff}");

        // A grey image is the same image repeated on three channels.
        let grey = input.narrow(1, 0, 1);
        let a = tch::no_grad(|| net.f_forward_t(&grey, false)).unwrap();
        let b = tch::no_grad(|| net.f_forward_t(&grey.repeat([1, 3, 1, 1]), false)).unwrap();
        assert!(a.allclose(&b, 1e-6, 1e-6, false), "{name}: grey input");
    }
}

fn mnist(p: &TrialParams) -> Prepared {
    let info = &dataset_info("mnist").unwrap();
    let ds = DataCache::new()
        .get(info, None, &data_dir(), data::DecodeAs::of(p, info))
        .expect("MNIST (set CNND_DATA_DIR)");
    data::prepare(&ds, p)
}

fn checkpoint_model(path: &Path) -> HashMap<String, Tensor> {
    Tensor::read_safetensors(path)
        .unwrap()
        .into_iter()
        .filter_map(|(k, v)| k.strip_prefix("model.").map(|k| (k.to_string(), v)))
        .collect()
}

fn train(
    prepared: &Prepared,
    p: &TrialParams,
    dir: &Path,
    init: &Path,
    checkpoint: &Path,
    mut keep_going: impl FnMut(u32) -> bool,
) -> (TrainOutcome, Vec<(u32, f64, f64)>) {
    let control = TrialControl {
        checkpoint: Some(checkpoint),
        init_weights: Some(init),
        ..TrialControl::default()
    };
    let mut seen = Vec::new();
    let out = run_trial_with(
        prepared,
        p,
        1,
        10,
        Device::Cpu,
        &dir.join("best.safetensors"),
        &control,
        &mut |r, _| {
            seen.push((r.epoch, r.train_loss, r.val_loss));
            keep_going(r.epoch)
        },
    )
    .unwrap();
    (out, seen)
}

#[test]
fn a_frozen_backbone_fine_tunes_its_top_stage_and_resumes_exactly() {
    let _serial = serial();
    tch::set_num_threads(1);
    let dir = tempfile::tempdir().unwrap();
    let e = export("resnet18", dir.path(), 1000, 32);
    let source: HashMap<String, Tensor> = Tensor::read_safetensors(&e.weights)
        .unwrap()
        .into_iter()
        .collect();
    let p = TrialParams {
        init_from: "file:weights.safetensors".into(),
        freeze: Freeze::Backbone,
        fine_tune_after: 1,
        fine_tune_blocks: 1,
        fine_tune_learning_rate: 1e-4,
        epochs: 3,
        train_limit: 320,
        test_limit: 64,
        batch_size: 32,
        ..params(Arch::Resnet18)
    };
    let prepared = mnist(&p);

    // Straight through: frozen for epoch 1, layer4 and the head from epoch 2.
    let straight_ckpt = dir.path().join("straight.ckpt.safetensors");
    let (straight, straight_seen) = train(
        &prepared,
        &p,
        dir.path(),
        &e.weights,
        &straight_ckpt,
        |_| true,
    );
    assert_eq!(straight_seen.len(), 3);
    assert!(!straight.fine_tuned.is_empty());
    assert!(
        straight.fine_tuned.iter().all(|n| n.starts_with("layer4.")),
        "only the top stage: {:?}",
        straight.fine_tuned
    );
    assert!(straight
        .fine_tuned
        .contains(&"layer4.1.bn2.weight".to_string()));
    let trained = checkpoint_model(&straight_ckpt);
    let same = |name: &str| trained[name].equal(&source[name]);
    // Below the top stage nothing moved, running statistics included (inference-mode batch
    // norm); the top stage's weights trained, its statistics did not; the new head trained.
    for name in ["conv1.weight", "layer1.0.conv1.weight", "layer3.1.bn2.bias"] {
        assert!(same(name), "{name} stayed frozen");
    }
    for name in ["layer4.0.conv1.weight", "layer4.1.bn2.weight"] {
        assert!(!same(name), "{name} was fine-tuned");
    }
    for name in ["layer4.0.bn1.running_mean", "layer2.0.bn1.running_var"] {
        assert!(same(name), "{name}: batch norm ran in inference mode");
    }
    assert_eq!(trained["fc.weight"].size(), [10, 512]);

    // Stopped after epoch 2 (a fine-tuning epoch), then resumed: epoch 3 as straight through.
    let ckpt = dir.path().join("resumed.ckpt.safetensors");
    let (first, _) = train(&prepared, &p, dir.path(), &e.weights, &ckpt, |epoch| {
        epoch < 2
    });
    assert!(first.stopped);
    let (resumed, seen) = train(&prepared, &p, dir.path(), &e.weights, &ckpt, |_| true);
    assert_eq!(resumed.resumed_from_epoch, 2);
    assert_eq!(seen.len(), 1);
    let (epoch, train_loss, val_loss) = seen[0];
    let (_, straight_train, straight_val) = straight_seen[2];
    assert_eq!(epoch, 3);
    assert!(
        (train_loss - straight_train).abs() < 1e-6 && (val_loss - straight_val).abs() < 1e-6,
        "resumed epoch 3 {train_loss} / {val_loss}, straight {straight_train} / {straight_val}"
    );
    assert_eq!(resumed.fine_tuned, straight.fine_tuned);
    let resumed_model = checkpoint_model(&ckpt);
    assert!(resumed_model["layer4.0.conv1.weight"]
        .to_kind(Kind::Double)
        .allclose(
            &trained["layer4.0.conv1.weight"].to_kind(Kind::Double),
            1e-6,
            1e-7,
            false
        ));
}
