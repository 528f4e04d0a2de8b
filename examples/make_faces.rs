//! Writes a happy/unhappy faces image folder like the seed notebook's (which cannot be
//! downloaded here), for the README's image-folder demo:
//!
//! ```text
//! cargo run --release --example make_faces -- $CNND_DATA_DIR/faces
//! ```
//!
//! then a sweep on `"dataset": "folder:faces"`. Usage:
//! `make_faces DIR [--train N] [--validation N] [--test N] [--seed S] [--keep-extras]` writes
//! `DIR/{train,validation,test}/{happy,unhappy}/*` (N per class, default 300/60/60; 0 leaves a
//! split out) with the test generator `tests/common/datagen.rs`: drawn faces, smiling or
//! frowning, of mixed sizes (24..=96 px), modes and formats (PNG, JPEG, BMP), deterministic
//! for the seed. The generator also writes a corrupt `train/happy/corrupt.png` and a stray
//! `train/README.txt`; they are removed unless `--keep-extras` (which shows the daemon
//! skipping an undecodable file). DIR must not exist or be empty.

#[path = "../tests/common/datagen.rs"]
mod datagen;

use std::path::PathBuf;

use anyhow::{bail, ensure, Context};

const USAGE: &str = "usage: make_faces DIR [--train N] [--validation N] [--test N] [--seed S] \
                     [--keep-extras]";

fn main() -> anyhow::Result<()> {
    let mut dir: Option<PathBuf> = None;
    let (mut train, mut validation, mut test, mut seed) = (300usize, 60usize, 60usize, 1u64);
    let mut keep_extras = false;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = |name: &str| -> anyhow::Result<String> {
            args.next()
                .with_context(|| format!("{name} needs a value\n{USAGE}"))
        };
        match arg.as_str() {
            "--train" => train = value("--train")?.parse().context("--train")?,
            "--validation" => {
                validation = value("--validation")?.parse().context("--validation")?
            }
            "--test" => test = value("--test")?.parse().context("--test")?,
            "--seed" => seed = value("--seed")?.parse().context("--seed")?,
            "--keep-extras" => keep_extras = true,
            "-h" | "--help" => {
                println!("{USAGE}");
                return Ok(());
            }
            s if s.starts_with('-') => bail!("unknown option {s}\n{USAGE}"),
            s if dir.is_none() => dir = Some(PathBuf::from(s)),
            s => bail!("unexpected argument {s}\n{USAGE}"),
        }
    }
    let Some(dir) = dir else {
        bail!("{USAGE}");
    };
    ensure!(train > 0, "--train must be at least 1");
    if dir.exists() {
        let mut entries =
            std::fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))?;
        ensure!(
            entries.next().is_none(),
            "{} is not empty; remove it or pick another folder",
            dir.display()
        );
    }
    let spec = datagen::FolderSpec {
        classes: vec!["happy", "unhappy"],
        train_per_class: train,
        val_per_class: validation,
        test_per_class: test,
        seed,
    };
    let mut files = datagen::make_image_folder(&dir, &spec);
    if !keep_extras {
        std::fs::remove_file(dir.join("train/happy/corrupt.png"))?;
        std::fs::remove_file(dir.join("train/README.txt"))?;
        files -= 2;
    }
    println!(
        "wrote {files} files to {}: {{train {train}, validation {validation}, test {test}}} per \
         class x {{happy, unhappy}}, seed {seed}{}",
        dir.display(),
        if keep_extras {
            " (with train/happy/corrupt.png and train/README.txt)"
        } else {
            ""
        }
    );
    Ok(())
}
