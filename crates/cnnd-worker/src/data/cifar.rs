//! CIFAR-10 in its published binary batch format (`cifar-10-batches-bin/`: `data_batch_1.bin`
//! .. `data_batch_5.bin`, `test_batch.bin`, `batches.meta.txt`), each file raw or gzip.
//!
//! Owns: parsing one batch file ([`parse_batch`]) and reading the whole folder into training and
//! test [`Split`]s plus the class names ([`read`]). Must not touch: data set lookup by name,
//! caching or trial preparation (those live in `data`), nor anything outside the data side.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context};
use tch::{Kind, Tensor};

use super::{read_maybe_gz, Split};

/// Bytes of one record: 1 label byte, then 1024 red, 1024 green and 1024 blue bytes.
pub const RECORD_BYTES: usize = 3073;
/// Side of a CIFAR-10 image.
pub const SIDE: usize = 32;
/// Bytes of one image (3 channels of 32x32, channel-major).
pub const IMAGE_BYTES: usize = 3 * SIDE * SIDE;
/// Number of classes (labels are 0..=9).
pub const CLASSES: usize = 10;
/// The class names of the published data set, used when `batches.meta.txt` is absent.
pub const CLASS_NAMES: [&str; CLASSES] = cnnd_core::datasets::CIFAR10_CLASSES;
/// The training batch files, in order.
pub const TRAIN_FILES: [&str; 5] = cnnd_core::datasets::CIFAR10_TRAIN_FILES;
/// The test batch file.
pub const TEST_FILE: &str = cnnd_core::datasets::CIFAR10_TEST_FILE;
/// The class-names file (one name a line).
pub const META_FILE: &str = cnnd_core::datasets::CIFAR10_META_FILE;
/// The folder the published archive extracts to.
pub const FOLDER: &str = "cifar-10-batches-bin";

/// Parses one batch file: returns the images (`N * 3 * 32 * 32` bytes, each image channel-major
/// R, G, B planes of row-major 32x32, exactly as stored) and the labels. `what` names the file
/// in errors (empty buffer, length not a multiple of [`RECORD_BYTES`], a label above 9).
pub fn parse_batch(buf: &[u8], what: &str) -> anyhow::Result<(Vec<u8>, Vec<i64>)> {
    if buf.is_empty() {
        bail!("{what}: empty CIFAR-10 batch file (0 bytes)");
    }
    if !buf.len().is_multiple_of(RECORD_BYTES) {
        bail!(
            "{what}: {} bytes is not a whole number of CIFAR-10 records of {RECORD_BYTES} bytes \
             ({} records and {} bytes left over; truncated or not a CIFAR-10 binary batch?)",
            buf.len(),
            buf.len() / RECORD_BYTES,
            buf.len() % RECORD_BYTES
        );
    }
    let n = buf.len() / RECORD_BYTES;
    let mut images = Vec::with_capacity(n * IMAGE_BYTES);
    let mut labels = Vec::with_capacity(n);
    for (i, rec) in buf.chunks_exact(RECORD_BYTES).enumerate() {
        let label = rec[0];
        if label as usize >= CLASSES {
            bail!(
                "{what}: record {i} has label {label}, outside 0..{CLASSES} (corrupt file, or \
                 the CIFAR-100 format?)"
            );
        }
        labels.push(label as i64);
        images.extend_from_slice(&rec[1..]);
    }
    Ok((images, labels))
}

/// The path of `name` in `dir`: the raw file, else its `.gz`; None when neither is a file.
fn find(dir: &Path, name: &str) -> Option<PathBuf> {
    let raw = dir.join(name);
    if raw.is_file() {
        return Some(raw);
    }
    let gz = dir.join(format!("{name}.gz"));
    gz.is_file().then_some(gz)
}

/// The folder holding the batches: `dir` itself, or `dir/cifar-10-batches-bin` when only that
/// holds them.
fn batches_dir(dir: &Path) -> PathBuf {
    let nested = dir.join(FOLDER);
    if find(dir, TRAIN_FILES[0]).is_none() && find(&nested, TRAIN_FILES[0]).is_some() {
        nested
    } else {
        dir.to_path_buf()
    }
}

/// Reads and concatenates batch files into one split (`[N, 3, 32, 32]` f32 in 0..1).
fn read_split(paths: &[PathBuf]) -> anyhow::Result<Split> {
    let mut images = Vec::new();
    let mut labels = Vec::new();
    for path in paths {
        let buf = read_maybe_gz(path)?;
        let (im, lb) = parse_batch(&buf, &path.display().to_string())?;
        images.extend_from_slice(&im);
        labels.extend_from_slice(&lb);
    }
    let n = labels.len() as i64;
    let images = Tensor::f_from_data_size(&images, &[n, 3, SIDE as i64, SIDE as i64], Kind::Uint8)
        .map_err(|e| anyhow!("CIFAR-10 images: {e}"))?;
    Ok(Split {
        images: images.to_kind(Kind::Float) / 255.0,
        labels: Tensor::from_slice(&labels),
    })
}

/// Reads CIFAR-10 from `dir` (the `cifar-10-batches-bin` folder, or the folder above it):
/// (training split from `data_batch_1..5.bin`, test split from `test_batch.bin`, class names).
/// Each file may also be gzip (`NAME.gz`). Class names come from `batches.meta.txt` (non-empty
/// lines; it must name exactly 10), else [`CLASS_NAMES`]. When batch files are missing the
/// error names every missing path and how to download them.
pub fn read(dir: &Path) -> anyhow::Result<(Split, Split, Vec<String>)> {
    let dir = batches_dir(dir);
    let mut missing = Vec::new();
    let mut found = Vec::new();
    for name in TRAIN_FILES.iter().chain(std::iter::once(&TEST_FILE)) {
        match find(&dir, name) {
            Some(p) => found.push(p),
            None => missing.push(dir.join(name).display().to_string()),
        }
    }
    if !missing.is_empty() {
        bail!(
            "CIFAR-10 files missing (raw or .gz): {}. Run `scripts/fetch-data.sh cifar10` to \
             download them",
            missing.join(", ")
        );
    }
    let train = read_split(&found[..TRAIN_FILES.len()])?;
    let test = read_split(&found[TRAIN_FILES.len()..])?;
    let classes = match find(&dir, META_FILE) {
        Some(path) => {
            let text = read_maybe_gz(&path)?;
            let text = String::from_utf8(text)
                .with_context(|| format!("{}: not UTF-8 text", path.display()))?;
            let names: Vec<String> = text
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(String::from)
                .collect();
            if names.len() != CLASSES {
                bail!(
                    "{}: names {} classes, expected {CLASSES}",
                    path.display(),
                    names.len()
                );
            }
            names
        }
        None => CLASS_NAMES.iter().map(|s| s.to_string()).collect(),
    };
    Ok((train, test, classes))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A batch of `n` records: label `i % 10`, pixel `(c, y, x)` = `(i * 7 + c * 31 + y * 3 + x) % 256`.
    fn batch(n: usize) -> Vec<u8> {
        let mut buf = Vec::with_capacity(n * RECORD_BYTES);
        for i in 0..n {
            buf.push((i % 10) as u8);
            for c in 0..3 {
                for y in 0..SIDE {
                    for x in 0..SIDE {
                        buf.push(((i * 7 + c * 31 + y * 3 + x) % 256) as u8);
                    }
                }
            }
        }
        buf
    }

    fn px(i: usize, c: usize, y: usize, x: usize) -> u8 {
        ((i * 7 + c * 31 + y * 3 + x) % 256) as u8
    }

    #[test]
    fn parses_a_generated_batch_exactly() {
        let (images, labels) = parse_batch(&batch(12), "b.bin").unwrap();
        assert_eq!(labels, (0..12).map(|i| i % 10).collect::<Vec<i64>>());
        assert_eq!(images.len(), 12 * IMAGE_BYTES);
        for &(i, c, y, x) in &[(0, 0, 0, 0), (3, 1, 5, 17), (11, 2, 31, 31), (7, 2, 0, 9)] {
            assert_eq!(
                images[i * IMAGE_BYTES + c * SIDE * SIDE + y * SIDE + x],
                px(i, c, y, x),
                "pixel {i} {c} {y} {x}"
            );
        }
    }

    #[test]
    fn rejects_bad_length_empty_and_bad_label() {
        let mut b = batch(2);
        b.pop();
        let e = parse_batch(&b, "short.bin").unwrap_err().to_string();
        assert!(
            e.contains("short.bin") && e.contains("6145") && e.contains("3073"),
            "{e}"
        );
        let e = parse_batch(&[], "empty.bin").unwrap_err().to_string();
        assert!(e.contains("empty.bin") && e.contains("empty"), "{e}");
        let mut b = batch(3);
        b[2 * RECORD_BYTES] = 10;
        let e = parse_batch(&b, "label.bin").unwrap_err().to_string();
        assert!(
            e.contains("label.bin") && e.contains("record 2") && e.contains("10"),
            "{e}"
        );
    }

    #[test]
    fn reads_a_folder_and_names_missing_files() {
        let dir = tempfile::tempdir().unwrap();
        let nested = dir.path().join(FOLDER);
        std::fs::create_dir(&nested).unwrap();
        let e = read(dir.path()).unwrap_err().to_string();
        for f in TRAIN_FILES.iter().chain([&TEST_FILE]) {
            assert!(e.contains(f), "{e}");
        }
        assert!(e.contains("scripts/fetch-data.sh cifar10"), "{e}");
        for f in TRAIN_FILES {
            std::fs::write(nested.join(f), batch(3)).unwrap();
        }
        // The test batch gzip-compressed.
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut gz, &batch(4)).unwrap();
        std::fs::write(nested.join("test_batch.bin.gz"), gz.finish().unwrap()).unwrap();
        let (train, test, classes) = read(dir.path()).unwrap();
        assert_eq!(train.images.size(), [15, 3, 32, 32]);
        assert_eq!(test.images.size(), [4, 3, 32, 32]);
        assert_eq!(classes, CLASS_NAMES);
        let v = train.images.double_value(&[4, 1, 5, 17]);
        assert!((v - px(1, 1, 5, 17) as f64 / 255.0).abs() < 1e-6);
        assert_eq!(test.labels.int64_value(&[3]), 3);
        std::fs::write(nested.join(META_FILE), "a\nb\n").unwrap();
        let e = read(&nested).unwrap_err().to_string();
        assert!(e.contains("2 classes"), "{e}");
    }
}
