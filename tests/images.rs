//! Data and images end to end, through the real daemon, cnnctl and grpcurl: an image-folder
//! sweep with augmentation swept (a corrupt file skipped and counted, charts rendered),
//! carved splits, paths outside the data directory refused, CIFAR-10 and Fashion-MNIST read
//! from files in their published formats, `Predict` on photo-like digits with and without
//! MNIST-style preprocessing, transfer learning from an MNIST trial, and a faces sweep that
//! fine-tunes a frozen torchvision backbone (weights written by `bench/torchvision_export.py`
//! with `$CNND_TORCHVISION_PY`, see scripts/setup.sh).
//!
//! Data: a data directory built per test in a temp dir (generated files, see
//! `common::datagen`) with `mnist` linked to the real MNIST.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::datagen::{self, FolderSpec};
use common::{data_dir, serial, Daemon};
use serde_json::{json, Value};

/// A data directory: `mnist/` (the real one, linked), plus whatever a test generates.
fn lab() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let mnist = data_dir().join("mnist");
    let mnist = mnist.canonicalize().unwrap_or(mnist);
    std::os::unix::fs::symlink(mnist, dir.path().join("mnist")).unwrap();
    dir
}

fn shapes(train: usize, val: usize, test: usize) -> FolderSpec {
    FolderSpec {
        classes: vec!["circle", "square", "stripes"],
        train_per_class: train,
        val_per_class: val,
        test_per_class: test,
        seed: 5,
    }
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).to_string()
}

fn succeeded(s: &Value) -> Vec<&Value> {
    s["trials"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["status"] == "succeeded")
        .collect()
}

#[test]
fn an_image_folder_sweep_compares_augmentation_and_counts_the_corrupt_file() {
    let _one_at_a_time = serial();
    let data = lab();
    datagen::make_image_folder(&data.path().join("shapes"), &shapes(60, 0, 20));
    let d = Daemon::start_with_data_dir(data.path(), 1, &[]);

    // Through grpcurl, as DESIGN.md's examples do; augmentation on and off is the axis, on
    // a non-square input (Keras's target_size=(32, 40)).
    let body = json!({
        "name": "shapes-augmentation",
        "dataset": "folder:shapes",
        "space": {"rotationRange": [0, 15]},
        "fixed": {"epochs": 4, "inputSize": [32, 40], "baseFilters": 8, "units": 32, "batchSize": 16,
                  "learningRate": 0.003, "widthShift": 0.0},
        "seed": 3
    });
    let r = d.grpcurl_json("cnn.v1.Orchestrator/SubmitSweep", &body.to_string());
    let sweep = r["sweepId"].as_str().unwrap().to_string();
    let notes: Vec<String> = r["notes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n.as_str().unwrap().to_string())
        .collect();
    assert!(
        notes.iter().any(|n| n.contains("circle, square, stripes")),
        "{notes:?}"
    );
    assert!(
        notes
            .iter()
            .any(|n| n.starts_with("validation: no validation/ folder")),
        "the response must say validation is carved: {notes:?}"
    );
    assert!(!notes.iter().any(|n| n.starts_with("test:")), "{notes:?}");

    let s = d.wait_sweep_ended(&sweep, Duration::from_secs(300));
    let done = succeeded(&s);
    assert_eq!(done.len(), 2, "{s}");
    for t in &done {
        let acc = t["testAccuracy"].as_f64().unwrap();
        assert!(
            acc >= 0.7,
            "3 classes, chance 0.33: test accuracy {acc} ({t})"
        );
    }
    // The corrupt file: skipped, counted on the sweep, named in the trial's record.
    let sweep_pb = d.get_sweep(&sweep);
    assert_eq!(sweep_pb.skipped_files, 1);
    let trial = d.get_trial(done[0]["trialId"].as_str().unwrap());
    assert_eq!(trial.skipped_files, 1);
    assert!(
        trial.notes.iter().any(|n| n.contains("corrupt.png")),
        "{:?}",
        trial.notes
    );
    assert_eq!(trial.test_examples, 60);
    // The model saw 32x40 images: the first block's map is 32x40 (channels first).
    let first = &trial.model_summary[0];
    assert_eq!(first.output_shape[1..], [32, 40], "{first:?}");

    // The charts compare the two settings: one learning curve each, decodable PNGs.
    let out = d.cnnctl(&["charts", &sweep]);
    assert!(out.status.success(), "{}", stderr(&out));
    let paths: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(String::from)
        .collect();
    assert!(paths.len() >= 4, "{paths:?}");
    for p in &paths {
        let img = image::open(p).unwrap_or_else(|e| panic!("{p}: {e}"));
        assert!(img.width() >= 400, "{p}");
    }
}

#[test]
fn a_folder_without_test_or_validation_gets_both_carved_with_the_sweep_seed() {
    let _one_at_a_time = serial();
    let data = lab();
    datagen::make_image_folder(&data.path().join("only-train"), &shapes(20, 0, 0));
    let d = Daemon::start_with_data_dir(data.path(), 1, &[]);
    let file = tempfile::NamedTempFile::new().unwrap();
    let body = json!({
        "dataset": "folder:only-train",
        "fixed": {"epochs": 1, "inputSize": 16, "channels": 1, "baseFilters": 4, "units": 8,
                  "batchSize": 8, "normalize": "standardize", "testFraction": 0.25},
        "repeats": 2, "seed": 9
    });
    std::fs::write(file.path(), body.to_string()).unwrap();
    let out = d.cnnctl(&["submit", file.path().to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("note: test: no test/ folder; testFraction (0.25) of train/ is held out with splitSeed 9"),
        "{text}"
    );
    let sweep = text
        .split_whitespace()
        .nth(1)
        .unwrap()
        .trim_end_matches(':');
    let s = d.wait_sweep_ended(sweep, Duration::from_secs(120));
    let done = succeeded(&s);
    assert_eq!(done.len(), 2, "{s}");
    // Both repeats (seeds 9 and 10) are tested on the same carved quarter of the 60
    // readable images (the corrupt one is skipped).
    let a = d.get_trial(done[0]["trialId"].as_str().unwrap());
    let b = d.get_trial(done[1]["trialId"].as_str().unwrap());
    assert_eq!((a.test_examples, b.test_examples), (15, 15));
    assert!(
        a.notes.iter().any(|n| n.starts_with("test: 15 of 60")),
        "{:?}",
        a.notes
    );
    assert_eq!(a.train_examples + a.val_examples, 45);
}

#[test]
fn folder_paths_outside_the_data_directory_are_denied_and_bad_layouts_named() {
    let data = lab();
    let outside = tempfile::tempdir().unwrap();
    datagen::make_image_folder(&outside.path().join("faces"), &shapes(3, 0, 0));
    std::os::unix::fs::symlink(outside.path().join("faces"), data.path().join("escape")).unwrap();
    std::fs::create_dir_all(data.path().join("flat")).unwrap();
    let d = Daemon::start_with_data_dir(data.path(), 1, &[]);
    let root = data.path().canonicalize().unwrap().display().to_string();
    let submit = |dataset: &str| {
        d.grpcurl(
            "cnn.v1.Orchestrator/SubmitSweep",
            &json!({"dataset": dataset, "fixed": {"epochs": 1}}).to_string(),
        )
    };
    for dataset in [
        "folder:../x",
        &format!("folder:{}", outside.path().join("faces").display()),
        "folder:escape",
    ] {
        let out = submit(dataset);
        assert!(!out.status.success(), "{dataset} was accepted");
        let err = stderr(&out);
        assert!(err.contains("PermissionDenied"), "{dataset}: {err}");
        assert!(
            err.contains(&root),
            "{dataset}: the message must name the root: {err}"
        );
    }
    let out = submit("folder:flat");
    assert!(stderr(&out).contains("InvalidArgument") && stderr(&out).contains("no train/ folder"));
    let out = submit("folder:nowhere");
    assert!(stderr(&out).contains("does not exist"), "{}", stderr(&out));
    // cnnctl: the same in one line, non-zero exit; nothing was stored.
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), json!({"dataset": "folder:../x"}).to_string()).unwrap();
    let out = d.cnnctl(&["submit", file.path().to_str().unwrap()]);
    assert!(!out.status.success());
    assert_eq!(stderr(&out).trim().lines().count(), 1);
    assert!(
        stderr(&out).contains("PERMISSION_DENIED"),
        "{}",
        stderr(&out)
    );
    assert_eq!(
        d.cnnctl_json(&["sweeps"])["sweeps"]
            .as_array()
            .unwrap()
            .len(),
        0
    );
}

#[test]
fn cifar10_and_fashion_mnist_train_from_files_in_their_published_formats() {
    let _one_at_a_time = serial();
    let data = lab();
    datagen::write_cifar_dir(&data.path().join("cifar-10-batches-bin"), 40, 1);
    // Fashion-MNIST's layout and names, with generated contents (real files are 30 MB).
    let fashion = data.path().join("fashion-mnist");
    std::fs::create_dir_all(&fashion).unwrap();
    let images: Vec<u8> = (0..300 * 784).map(|i| (i * 7 % 251) as u8).collect();
    let labels: Vec<u8> = (0..300).map(|i| (i % 10) as u8).collect();
    datagen::write_mnist_like(
        &fashion,
        (&images, &labels),
        (&images[..100 * 784], &labels[..100]),
        300,
        100,
        true,
    );
    let d = Daemon::start_with_data_dir(data.path(), 1, &[]);
    let tiny = json!({"epochs": 1, "baseFilters": 4, "units": 8, "batchSize": 32});
    let cifar = d.submit(&json!({"dataset": "cifar10", "fixed": tiny}));
    let fashion = d.submit(&json!({"dataset": "fashion_mnist", "fixed": tiny}));
    for (sweep, train, test) in [(cifar, 200, 40), (fashion, 300, 100)] {
        let s = d.wait_sweep_ended(&sweep, Duration::from_secs(120));
        let t = d.get_trial(s["trials"][0]["trialId"].as_str().unwrap());
        assert_eq!(t.status, "succeeded", "{}: {}", sweep, t.error);
        assert_eq!(t.train_examples + t.val_examples, train);
        assert_eq!(t.test_examples, test);
    }
}

/// Trains a small MNIST model (a few thousand examples) and returns its trial id.
fn train_digits(d: &Daemon, epochs: u32, train_limit: u32) -> String {
    let sweep = d.submit(&json!({
        "dataset": "mnist",
        "fixed": {"epochs": epochs, "trainLimit": train_limit, "testLimit": 1000, "baseFilters": 16,
                  "units": 64, "batchSize": 32, "dropout": 0.25},
        "seed": 1
    }));
    let s = d.wait_sweep_ended(&sweep, Duration::from_secs(300));
    assert_eq!(s["trials"][0]["status"], "succeeded", "{s}");
    s["trials"][0]["trialId"].as_str().unwrap().to_string()
}

/// Share of `photos` whose top prediction is the true digit.
fn accuracy(predictions: &Value, photos: &[(PathBuf, u8)]) -> f64 {
    let preds = predictions["predictions"].as_array().unwrap();
    assert_eq!(preds.len(), photos.len());
    let right = preds
        .iter()
        .zip(photos)
        .filter(|(p, (_, label))| p["top"][0]["className"].as_str() == Some(&label.to_string()))
        .count();
    right as f64 / photos.len() as f64
}

#[test]
fn predict_reads_photographed_digits_only_with_mnist_style_preprocessing() {
    let _one_at_a_time = serial();
    let data = lab();
    let d = Daemon::start_with_data_dir(data.path(), 1, &[]);
    let trial = train_digits(&d, 2, 12_000);
    let photos_dir = tempfile::tempdir().unwrap();
    let photos = datagen::photo_like_digits(&data_dir(), photos_dir.path(), 40, 8);
    let files: Vec<&str> = photos.iter().map(|(p, _)| p.to_str().unwrap()).collect();
    let seen = tempfile::tempdir().unwrap();

    let mut args = vec!["predict", "--trial", &trial, "--save-preprocessed"];
    let seen_dir = seen.path().to_str().unwrap().to_string();
    args.push(&seen_dir);
    args.extend(files.iter().copied());
    let with = d.cnnctl_json(&args);
    let mnist_style = accuracy(&with, &photos);
    assert!(
        with["predictions"][0]["preprocessing"] == "mnist",
        "{}",
        with["predictions"][0]
    );
    let mut raw_args = vec!["predict", "--trial", &trial, "--preprocess", "resize"];
    raw_args.extend(files.iter().copied());
    let without = d.cnnctl_json(&raw_args);
    let plain_resize = accuracy(&without, &photos);
    eprintln!("photo-like digits: MNIST-style {mnist_style:.3}, plain resize {plain_resize:.3}");
    assert!(mnist_style >= 0.85, "MNIST-style accuracy {mnist_style}");
    assert!(
        plain_resize <= 0.5,
        "a plain resize should not read light-background photos: {plain_resize}"
    );
    // The preprocessed inputs: 28x28 gray, white ink on black, centred.
    let first = seen.path().join(format!(
        "{}.mnist.png",
        photos[0].0.file_stem().unwrap().to_string_lossy()
    ));
    let img = image::open(&first).unwrap().to_luma8();
    assert_eq!(img.dimensions(), (28, 28));
    assert_eq!(img.get_pixel(0, 0)[0], 0);
    assert!(img.pixels().any(|p| p[0] > 200));

    // The table form names each file and its prediction.
    let mut table_args = vec!["predict", "--trial", &trial, "--top", "2"];
    table_args.push(files[0]);
    let out = d.cnnctl(&table_args);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains(files[0]));

    // Bad input: each refused with its own code and message, through grpcurl.
    let call = |images: Value| {
        d.grpcurl(
            "cnn.v1.Orchestrator/Predict",
            &json!({"trialId": trial, "images": images}).to_string(),
        )
    };
    let out = call(json!([{"name": "junk.png", "data": encode(b"not an image at all")}]));
    assert!(stderr(&out).contains("InvalidArgument"), "{}", stderr(&out));
    assert!(stderr(&out).contains("junk.png") && stderr(&out).contains("not a decodable image"));
    let bomb = huge_png_header(100_000, 100_000);
    let out = call(json!([{"name": "bomb.png", "data": encode(&bomb)}]));
    assert!(
        stderr(&out).contains("ResourceExhausted"),
        "{}",
        stderr(&out)
    );
    assert!(stderr(&out).contains("bomb.png"), "{}", stderr(&out));
    let out = d.grpcurl(
        "cnn.v1.Orchestrator/Predict",
        &json!({"trialId": "nope", "images": [{"data": encode(b"x")}]}).to_string(),
    );
    assert!(stderr(&out).contains("NotFound"), "{}", stderr(&out));
    let out = d.cnnctl(&["predict", "--trial", &trial, "/no/such/photo.jpg"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("/no/such/photo.jpg"));
}

#[test]
fn transfer_learning_from_an_mnist_trial_records_what_was_frozen_and_reinitialised() {
    let _one_at_a_time = serial();
    let data = lab();
    datagen::make_image_folder(&data.path().join("shapes"), &shapes(30, 0, 10));
    let d = Daemon::start_with_data_dir(data.path(), 1, &[]);
    let source = train_digits(&d, 1, 2000);
    // MNIST convolutions (1 channel) into an RGB 28x28 three-class model with a new head.
    let sweep = d.submit(&json!({
        "dataset": "folder:shapes",
        "fixed": {"epochs": 2, "inputSize": 28, "baseFilters": 16, "units": 64, "batchSize": 16,
                  "initFrom": format!("trial:{source}"), "freeze": "conv"}
    }));
    let s = d.wait_sweep_ended(&sweep, Duration::from_secs(120));
    let t = d.get_trial(s["trials"][0]["trialId"].as_str().unwrap());
    assert_eq!(t.status, "succeeded", "{}", t.error);
    // The first convolution sees 3 channels instead of 1, the output 3 classes instead of
    // 10: both start afresh; the second block and the dense layer are MNIST's.
    for name in ["block0.conv.weight", "out.weight", "out.bias"] {
        assert!(
            t.reinitialised.contains(&name.to_string()),
            "{:?}",
            t.reinitialised
        );
    }
    for name in ["block1.conv.weight", "hidden.weight"] {
        assert!(
            !t.reinitialised.contains(&name.to_string()),
            "{:?}",
            t.reinitialised
        );
    }
    assert!(
        t.frozen.contains(&"block1.conv.weight".to_string()),
        "{:?}",
        t.frozen
    );
    assert!(
        t.frozen.iter().all(|n| n.starts_with("block")),
        "{:?}",
        t.frozen
    );
    assert!(
        t.notes
            .iter()
            .any(|n| n.contains(&format!("initFrom trial:{source}"))),
        "{:?}",
        t.notes
    );
    // cnnctl trial shows it.
    let out = d.cnnctl(&["trial", &t.trial_id]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("frozen:") && text.contains("re-initialised:"),
        "{text}"
    );

    // The same from a safetensors file under the data directory (here: the MNIST trial's
    // weights copied there).
    let weights = d.get_trial(&source).weights_path;
    std::fs::create_dir_all(data.path().join("weights")).unwrap();
    std::fs::copy(&weights, data.path().join("weights/mnist.safetensors")).unwrap();
    let from_file = d.submit(&json!({
        "dataset": "folder:shapes",
        "fixed": {"epochs": 1, "inputSize": 28, "baseFilters": 16, "units": 64, "batchSize": 16,
                  "initFrom": "file:weights/mnist.safetensors"}
    }));
    let s = d.wait_sweep_ended(&from_file, Duration::from_secs(120));
    let f = d.get_trial(s["trials"][0]["trialId"].as_str().unwrap());
    assert_eq!(f.status, "succeeded", "{}", f.error);
    assert_eq!(f.reinitialised, t.reinitialised);
    assert!(
        f.frozen.is_empty(),
        "freeze defaults to none: {:?}",
        f.frozen
    );

    // A source that does not exist, or is not finished, is refused at submit.
    for (init, code) in [
        ("trial:nope", "NotFound"),
        ("file:../w.safetensors", "PermissionDenied"),
    ] {
        let out = d.grpcurl(
            "cnn.v1.Orchestrator/SubmitSweep",
            &json!({"dataset": "mnist", "fixed": {"initFrom": init}}).to_string(),
        );
        assert!(stderr(&out).contains(code), "{init}: {}", stderr(&out));
        assert!(
            stderr(&out).contains("initFrom"),
            "{init}: {}",
            stderr(&out)
        );
    }
}

/// Writes a randomly initialised torchvision `arch` (torchvision's own code, in its own
/// environment) as `DATA/pretrained/ARCH.safetensors`, as a user's converted ImageNet
/// weights would be (scripts/convert-torchvision-weights.py).
fn torchvision_weights(data: &std::path::Path, arch: &str) -> PathBuf {
    let python = std::env::var("CNND_TORCHVISION_PY").expect(
        "CNND_TORCHVISION_PY is not set: source scripts/env.sh (scripts/setup.sh installs torchvision)",
    );
    let out_dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(&python)
        .args([
            concat!(env!("CARGO_MANIFEST_DIR"), "/bench/torchvision_export.py"),
            "--arch",
            arch,
            "--side",
            "32",
            "--out",
        ])
        .arg(out_dir.path())
        .output()
        .unwrap_or_else(|e| panic!("{python}: {e}"));
    assert!(out.status.success(), "{}", stderr(&out));
    let dest = data.join("pretrained").join(format!("{arch}.safetensors"));
    std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
    std::fs::copy(out_dir.path().join("weights.safetensors"), &dest).unwrap();
    dest
}

#[test]
fn a_faces_sweep_fine_tunes_a_frozen_pretrained_backbone() {
    let _one_at_a_time = serial();
    let data = lab();
    let faces = FolderSpec {
        classes: vec!["happy", "unhappy"],
        train_per_class: 40,
        val_per_class: 10,
        test_per_class: 10,
        seed: 3,
    };
    datagen::make_image_folder(&data.path().join("faces"), &faces);
    torchvision_weights(data.path(), "resnet18");
    let d = Daemon::start_with_data_dir(data.path(), 1, &[]);

    // The notebook's last experiment: a pretrained base, frozen, with a new head for the two
    // classes; then its top stages fine-tuned at a lower rate. Swept: how many stages.
    let sweep_file = data.path().join("faces-transfer.json");
    std::fs::write(
        &sweep_file,
        json!({
            "name": "faces-resnet18",
            "dataset": "folder:faces",
            "space": {"fineTuneBlocks": [1, 2]},
            "fixed": {"arch": "resnet18", "initFrom": "file:pretrained/resnet18.safetensors",
                      "freeze": "backbone", "fineTuneAfter": 1, "fineTuneLearningRate": 0.0001,
                      "epochs": 2, "inputSize": 32, "head": "gap", "dropout": 0.2,
                      "batchSize": 16, "learningRate": 0.001}
        })
        .to_string(),
    )
    .unwrap();
    let out = d.cnnctl(&["submit", sweep_file.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let sweep = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .nth(1)
        .unwrap()
        .trim_end_matches(':')
        .to_string();
    let s = d.wait_sweep_ended(&sweep, Duration::from_secs(300));
    let trials = succeeded(&s);
    assert_eq!(trials.len(), 2, "{s}");
    let mut frozen_counts = Vec::new();
    for t in trials {
        let t = d.get_trial(t["trialId"].as_str().unwrap());
        // torchvision's 1000-class classifier does not fit two classes: only it is new.
        assert_eq!(t.reinitialised, ["fc.bias", "fc.weight"], "{}", t.trial_id);
        assert!(t.frozen.contains(&"layer4.1.conv2.weight".to_string()));
        assert!(
            t.frozen.iter().all(|n| !n.starts_with("fc.")),
            "{:?}",
            t.frozen
        );
        frozen_counts.push(t.frozen.len());
        // Epoch 1 at learningRate, epoch 2 (fine-tuning) at fineTuneLearningRate.
        let rates: Vec<f64> = t.epochs.iter().map(|e| e.learning_rate).collect();
        assert_eq!(rates, [0.001, 0.0001], "{}", t.trial_id);
        let note = t
            .notes
            .iter()
            .find(|n| n.starts_with("fine-tuned from epoch 2"))
            .unwrap_or_else(|| panic!("{:?}", t.notes));
        assert!(note.contains("stage(s)"), "{note}");
        // The summary is the backbone's: torchvision's blocks, then the new head.
        let names: Vec<&str> = t.model_summary.iter().map(|l| l.name.as_str()).collect();
        assert!(
            names.contains(&"layer4.1") && names.ends_with(&["dropout", "fc"]),
            "{names:?}"
        );
        assert_eq!(
            t.parameter_count, 11_177_538,
            "resnet18's body and a 512 -> 2 head"
        );
    }
    assert_eq!(
        frozen_counts[0], frozen_counts[1],
        "the same body is frozen at first"
    );

    // Settings that cannot work are refused with the field and the reason.
    for (fixed, field) in [
        (
            json!({"arch": "resnet18", "normalize": "standardize"}),
            "normalize",
        ),
        (
            json!({"arch": "resnet18", "fineTuneAfter": 1}),
            "fineTuneAfter",
        ),
        (
            json!({"arch": "mobilenet_v2", "fineTuneBlocks": 20}),
            "fineTuneBlocks",
        ),
        (json!({"arch": "vgg16"}), "arch"),
    ] {
        let out = d.grpcurl(
            "cnn.v1.Orchestrator/SubmitSweep",
            &json!({"dataset": "folder:faces", "fixed": fixed}).to_string(),
        );
        assert!(
            stderr(&out).contains("InvalidArgument"),
            "{fixed}: {}",
            stderr(&out)
        );
        assert!(stderr(&out).contains(field), "{fixed}: {}", stderr(&out));
    }
}

/// A small PNG file whose header claims `width x height` (8-bit RGB): an IHDR chunk, one
/// IDAT chunk of a few compressed zero rows and IEND, all with valid CRCs. What a
/// decompression bomb looks like to a decoder until it allocates.
fn huge_png_header(width: u32, height: u32) -> Vec<u8> {
    use std::io::Write;
    fn chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
        out.extend((data.len() as u32).to_be_bytes());
        let mut body = kind.to_vec();
        body.extend(data);
        out.extend(&body);
        out.extend(crc32fast::hash(&body).to_be_bytes());
    }
    let mut ihdr = Vec::new();
    ihdr.extend(width.to_be_bytes());
    ihdr.extend(height.to_be_bytes());
    ihdr.extend([8, 2, 0, 0, 0]);
    let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::best());
    z.write_all(&vec![0u8; 64 * 1024]).unwrap();
    let idat = z.finish().unwrap();
    let mut out = vec![0x89, b'P', b'N', b'G', 0x0d, 0x0a, 0x1a, 0x0a];
    chunk(&mut out, b"IHDR", &ihdr);
    chunk(&mut out, b"IDAT", &idat);
    chunk(&mut out, b"IEND", &[]);
    out
}

/// Standard base64, as grpcurl's JSON wants `bytes` fields.
fn encode(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

#[test]
fn two_classes_train_with_a_sigmoid_or_a_softmax_head() {
    let _one_at_a_time = serial();
    let data = lab();
    let spec = FolderSpec {
        classes: vec!["circle", "stripes"],
        ..shapes(20, 0, 10)
    };
    datagen::make_image_folder(&data.path().join("two"), &spec);
    let d = Daemon::start_with_data_dir(data.path(), 1, &[]);
    let sweep = d.submit(&json!({
        "dataset": "folder:two",
        "space": {"output": ["sigmoid", "softmax"]},
        "fixed": {"epochs": 2, "inputSize": 24, "baseFilters": 4, "units": 32, "batchSize": 8}
    }));
    let s = d.wait_sweep_ended(&sweep, Duration::from_secs(120));
    let done = succeeded(&s);
    assert_eq!(done.len(), 2, "{s}");
    let count = |output: &str| {
        done.iter()
            .find(|t| t["params"]["output"] == output)
            .unwrap()["parameterCount"]
            .as_u64()
            .unwrap()
    };
    // One output unit instead of two: the last layer loses 32 weights and a bias.
    assert_eq!(count("softmax") - count("sigmoid"), 33);
    for t in &done {
        let acc = t["testAccuracy"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&acc), "{t}");
    }
}
