//! Data sets for the training side: reads the published files (MNIST and Fashion-MNIST in
//! IDX format, gzip or not; CIFAR-10 batches in [`cifar`]; image folders in
//! [`image_folder`]) into tensors, caches them per process, and prepares the splits of one
//! trial (training limit, seeded validation split, test split carved when the data set has
//! none, resizing and channel conversion to the model input, normalisation).
//!
//! Owns: file lookup under the data directory, IDX parsing, [`DataCache`], [`prepare`].
//! Must not touch: the store, scheduler, api or charts (control plane), nor model or training
//! code; it only consumes [`TrialParams`] and [`DatasetInfo`] from `sweep`.

use std::collections::HashMap;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::{anyhow, bail, Context};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use tch::{Kind, Tensor};

use crate::imaging;
use cnnd_core::datasets::{DatasetInfo, FolderLayout, Source};
use cnnd_core::idx::parse_idx;
use cnnd_core::model_size::Hw;
use cnnd_core::sweep::{Normalize, Resample, TrialParams};

pub mod cifar;
pub mod image_folder;

/// Examples of one split: `images` is `[N, C, H, W]` f32 scaled to 0..1, `labels` is `[N]` i64.
#[derive(Debug)]
pub struct Split {
    pub images: Tensor,
    pub labels: Tensor,
}

impl Split {
    /// Number of examples.
    pub fn len(&self) -> usize {
        self.labels.size().first().copied().unwrap_or(0) as usize
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Height and width of the images.
    pub fn input_size(&self) -> (i64, i64) {
        let size = self.images.size();
        (
            size.get(2).copied().unwrap_or(0),
            size.get(3).copied().unwrap_or(0),
        )
    }

    /// A split sharing storage with this one (no copy).
    pub fn shallow_clone(&self) -> Split {
        Split {
            images: self.images.shallow_clone(),
            labels: self.labels.shallow_clone(),
        }
    }

    /// The examples at `index` (an i64 tensor of positions), copied.
    fn select(&self, index: &Tensor) -> Split {
        Split {
            images: self.images.index_select(0, index),
            labels: self.labels.index_select(0, index),
        }
    }

    /// The first `n` examples (all when `n` is 0 or larger than the split), sharing storage.
    fn first(&self, n: u32) -> Split {
        let len = self.len() as i64;
        if n == 0 || n as i64 >= len {
            return self.shallow_clone();
        }
        Split {
            images: self.images.narrow(0, 0, n as i64),
            labels: self.labels.narrow(0, 0, n as i64),
        }
    }
}

/// A whole data set as published: its splits, on the CPU. Built-in data sets have a test
/// split and no validation split; an image folder has whichever folders it holds.
#[derive(Debug)]
pub struct Dataset {
    pub info: DatasetInfo,
    pub train: Split,
    pub validation: Option<Split>,
    pub test: Option<Split>,
    /// Image files that could not be decoded: (path, reason). They are left out.
    pub skipped: Vec<(PathBuf, String)>,
    /// [`Dataset::content_hash`], computed on first use.
    pub hash: std::sync::OnceLock<String>,
}

impl Dataset {
    /// SHA-256 (hex) of the whole data set as decoded: every example of every split as
    /// loaded (pixels rounded to bytes, then labels; train, validation, test), not the
    /// subset a trial trains on (`trainLimit`, carved splits). The same files decoded the
    /// same way give the same hash. Fails rather than hash a split it cannot read.
    pub fn content_hash(&self) -> anyhow::Result<&str> {
        if let Some(hash) = self.hash.get() {
            return Ok(hash);
        }
        let hash = self.compute_hash()?;
        Ok(self.hash.get_or_init(|| hash))
    }

    fn compute_hash(&self) -> anyhow::Result<String> {
        use anyhow::Context;
        use sha2::{Digest, Sha256};
        let mut h = Sha256::new();
        for (name, split) in [
            ("train", Some(&self.train)),
            ("validation", self.validation.as_ref()),
            ("test", self.test.as_ref()),
        ] {
            let Some(split) = split else {
                h.update(b"-");
                continue;
            };
            let pixels = (&split.images * 255.0)
                .round()
                .clamp(0.0, 255.0)
                .to_kind(Kind::Uint8);
            let pixels = Vec::<u8>::try_from(&pixels.flatten(0, -1))
                .with_context(|| format!("hashing the {name} images"))?;
            h.update(pixels);
            let labels = Vec::<i64>::try_from(&split.labels)
                .with_context(|| format!("hashing the {name} labels"))?;
            h.update(
                labels
                    .iter()
                    .flat_map(|l| l.to_le_bytes())
                    .collect::<Vec<u8>>(),
            );
        }
        Ok(format!("{:x}", h.finalize()))
    }
}

// SAFETY: a `Dataset` is immutable once loaded: its tensors are only read (narrow,
// index_select, copies to a device), never modified in place, and libtorch's reference
// counting and read-only kernels are thread-safe. This lets one cached data set be shared as
// `Arc<Dataset>` by the threads of a worker (tch marks `Tensor` Send but not Sync).
unsafe impl Sync for Dataset {}

/// The IDX file names of a data set in the MNIST layout: (train images, train labels, test
/// images, test labels), without the `.gz` suffix.
fn idx_file_names(info: &DatasetInfo) -> anyhow::Result<[&'static str; 4]> {
    match info.name.as_str() {
        "mnist" | "fashion_mnist" => Ok(cnnd_core::datasets::IDX_FILES),
        other => bail!("no reader for data set '{other}' (IDX readers: mnist, fashion_mnist)"),
    }
}

/// Where a file of a data set may lie, in the order they are tried: `<dir>/<folder>/` first,
/// then `<dir>/` itself, each with the `.gz` name first and then the uncompressed name.
pub fn candidate_paths(info: &DatasetInfo, data_dir: &Path, file: &str) -> Vec<PathBuf> {
    let mut out = Vec::with_capacity(4);
    let folder = match &info.source {
        Source::Idx { folder } | Source::Cifar10 { folder } => folder.as_str(),
        Source::Folder { .. } => "",
    };
    for dir in [data_dir.join(folder), data_dir.to_path_buf()] {
        out.push(dir.join(format!("{file}.gz")));
        out.push(dir.join(file));
    }
    out
}

/// Finds one file of a data set; the error names every path tried and how to get the data.
pub fn find_file(info: &DatasetInfo, data_dir: &Path, file: &str) -> anyhow::Result<PathBuf> {
    let tried = candidate_paths(info, data_dir, file);
    if let Some(found) = tried.iter().find(|p| p.is_file()) {
        return Ok(found.clone());
    }
    let list: Vec<String> = tried.iter().map(|p| p.display().to_string()).collect();
    Err(anyhow!(
        "{}: file {file} not found; tried {}. Set CNND_DATA_DIR (or --data-dir) to the folder \
         that holds the data sets, or download them with scripts/fetch-data.sh {}",
        info.name,
        list.join(", "),
        info.name
    ))
}

/// Reads a whole file, decompressing it when it is gzip (detected by its magic bytes, so a
/// `.gz` name holding raw data, or the reverse, still works).
pub fn read_maybe_gz(path: &Path) -> anyhow::Result<Vec<u8>> {
    let raw = fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    if raw.len() < 2 || raw[0] != 0x1f || raw[1] != 0x8b {
        return Ok(raw);
    }
    // The gzip trailer holds the uncompressed size modulo 2^32: a good capacity hint.
    let hint = if raw.len() >= 18 {
        let t = &raw[raw.len() - 4..];
        u32::from_le_bytes([t[0], t[1], t[2], t[3]]) as usize
    } else {
        0
    };
    let mut out = Vec::with_capacity(hint.min(1 << 30));
    flate2::read::GzDecoder::new(raw.as_slice())
        .read_to_end(&mut out)
        .with_context(|| format!("{}: corrupt or truncated gzip data", path.display()))?;
    Ok(out)
}

/// Reads an IDX image file into `[N, 1, H, W]` f32 in 0..1.
fn read_images(path: &Path, info: &DatasetInfo) -> anyhow::Result<Tensor> {
    let buf = read_maybe_gz(path)?;
    let what = path.display().to_string();
    let idx = parse_idx(&buf, 3, &what)?;
    let (n, h, w) = (idx.dims[0], idx.dims[1], idx.dims[2]);
    let side = info.input_size as usize;
    if h != side || w != side {
        bail!(
            "{what}: images are {h}x{w}, expected {side}x{side} for {}",
            info.name
        );
    }
    let c = info.channels as i64;
    if c != 1 {
        bail!(
            "{what}: IDX images have one channel but {} has {c}",
            info.name
        );
    }
    let bytes = Tensor::f_from_data_size(
        &buf[idx.offset..],
        &[n as i64, 1, h as i64, w as i64],
        Kind::Uint8,
    )
    .map_err(|e| anyhow!("{what}: {e}"))?;
    Ok(bytes.to_kind(Kind::Float) / 255.0)
}

/// Reads an IDX label file into `[N]` i64, checking every label against the class count.
fn read_labels(path: &Path, info: &DatasetInfo) -> anyhow::Result<Tensor> {
    let buf = read_maybe_gz(path)?;
    let what = path.display().to_string();
    let idx = parse_idx(&buf, 1, &what)?;
    let data = &buf[idx.offset..];
    if let Some(pos) = data.iter().position(|&l| l as u32 >= info.classes) {
        bail!(
            "{what}: label {} of example {pos} is outside 0..{} (corrupt file?)",
            data[pos],
            info.classes
        );
    }
    let t = Tensor::f_from_data_size(data, &[data.len() as i64], Kind::Uint8)
        .map_err(|e| anyhow!("{what}: {e}"))?;
    Ok(t.to_kind(Kind::Int64))
}

fn read_split(
    info: &DatasetInfo,
    data_dir: &Path,
    images: &str,
    labels: &str,
) -> anyhow::Result<Split> {
    let images_path = find_file(info, data_dir, images)?;
    let labels_path = find_file(info, data_dir, labels)?;
    let images = read_images(&images_path, info)?;
    let labels = read_labels(&labels_path, info)?;
    let (n, m) = (images.size()[0], labels.size()[0]);
    if n != m {
        bail!(
            "{} holds {n} images but {} holds {m} labels",
            images_path.display(),
            labels_path.display()
        );
    }
    Ok(Split { images, labels })
}

/// How an image folder is decoded: model input side, channels, enlarging filter. Built-in
/// data sets ignore it (their tensors are converted in [`prepare`], with the trial's
/// `resample` too).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DecodeAs {
    pub size: cnnd_core::sweep::InputSize,
    pub channels: u32,
    pub resample: cnnd_core::sweep::Resample,
}

impl DecodeAs {
    /// What trial `p` needs of data set `info`.
    pub fn of(p: &TrialParams, info: &DatasetInfo) -> DecodeAs {
        DecodeAs {
            size: p.effective_input_size(info),
            channels: p.effective_channels(info),
            resample: p.resample,
        }
    }
}

/// Loads a data set from `data_dir`: IDX or CIFAR files in `<data_dir>/<folder>/` or
/// `<data_dir>/`; an image folder from its root, decoded `as_`.
pub fn load(
    info: &DatasetInfo,
    layout: Option<&FolderLayout>,
    data_dir: &Path,
    as_: DecodeAs,
) -> anyhow::Result<Dataset> {
    match &info.source {
        Source::Idx { .. } => {
            let [train_images, train_labels, test_images, test_labels] = idx_file_names(info)?;
            Ok(Dataset {
                info: info.clone(),
                train: read_split(info, data_dir, train_images, train_labels)?,
                validation: None,
                test: Some(read_split(info, data_dir, test_images, test_labels)?),
                skipped: Vec::new(),
                hash: Default::default(),
            })
        }
        Source::Cifar10 { folder } => {
            let (train, test, _names) = cifar::read(&data_dir.join(folder))?;
            Ok(Dataset {
                info: info.clone(),
                train,
                validation: None,
                test: Some(test),
                skipped: Vec::new(),
                hash: Default::default(),
            })
        }
        Source::Folder { folder, .. } => {
            let layout = layout.with_context(|| {
                format!("image folder {}: the lease carried no file list", info.name)
            })?;
            let loaded = image_folder::load(
                &data_dir.join(folder),
                layout,
                as_.size,
                as_.channels,
                as_.resample,
                &imaging::DecodeLimits::default(),
            )?;
            Ok(Dataset {
                info: info.clone(),
                train: loaded.train,
                validation: loaded.validation,
                test: loaded.test,
                skipped: loaded
                    .skipped
                    .into_iter()
                    .map(|f| (f.path, f.reason))
                    .collect(),
                hash: Default::default(),
            })
        }
    }
}

/// Loads each data set once per process (image folders once per way of decoding them) and
/// hands out shared copies.
#[derive(Debug, Default)]
pub struct DataCache {
    entries: Mutex<HashMap<CacheKey, Arc<Dataset>>>,
}

/// (data set name, data directory, how an image folder is decoded).
type CacheKey = (String, PathBuf, Option<DecodeAs>);

impl DataCache {
    pub fn new() -> DataCache {
        DataCache::default()
    }

    /// The data set, loaded on first use. A failed load is not cached (the next call retries,
    /// e.g. after the files were downloaded).
    pub fn get(
        &self,
        info: &DatasetInfo,
        layout: Option<&FolderLayout>,
        data_dir: &Path,
        as_: DecodeAs,
    ) -> anyhow::Result<Arc<Dataset>> {
        let decoded = matches!(info.source, Source::Folder { .. }).then_some(as_);
        let key = (info.name.to_string(), data_dir.to_path_buf(), decoded);
        // Held while loading, so that two threads asking at once load it once.
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(ds) = entries.get(&key) {
            return Ok(ds.clone());
        }
        let ds = Arc::new(load(info, layout, data_dir, as_)?);
        entries.insert(key, ds.clone());
        Ok(ds)
    }

    /// Drops every cached data set.
    pub fn clear(&self) {
        self.entries
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }
}

/// The splits one trial trains, validates and tests on, on the CPU.
#[derive(Debug)]
pub struct Prepared {
    pub train: Split,
    pub val: Split,
    pub test: Split,
    /// Per-channel (mean, standard deviation) of the training split when `normalize` is
    /// `standardize` (already applied to every split; prediction applies it again).
    pub standardization: Option<(Vec<f64>, Vec<f64>)>,
    /// What was decided about the data, in words (carved splits, skipped files).
    pub notes: Vec<String>,
}

/// How many of `n` training examples are held out for validation: `floor(n * val_fraction)`,
/// as `TrialParams::validate` computes it.
pub fn val_count(n: usize, val_fraction: f64) -> usize {
    ((n as f64 * val_fraction).floor() as usize).min(n)
}

/// Splits positions `0..n` into (train, validation) positions, each sorted: a ChaCha8
/// permutation seeded by `seed` picks the `val_count(n, val_fraction)` validation positions.
/// Deterministic and independent of libtorch.
pub fn split_indices(n: usize, val_fraction: f64, seed: u64) -> (Vec<i64>, Vec<i64>) {
    let mut perm: Vec<i64> = (0..n as i64).collect();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    perm.shuffle(&mut rng);
    let n_val = val_count(n, val_fraction);
    let mut val = perm[..n_val].to_vec();
    let mut train = perm[n_val..].to_vec();
    val.sort_unstable();
    train.sort_unstable();
    (train, val)
}

/// Resizes `[N, C, H, W]` images to `height x width` (one side for a square): area
/// averaging (adaptive average pooling) when both sides shrink, `resample` when either
/// grows (bicubic clipped to the images' range, as decoded files are), unchanged when equal.
pub fn resize(images: &Tensor, to: impl Into<Hw>, resample: Resample) -> Tensor {
    let Hw { height, width } = to.into();
    let size = images.size();
    let (h, w) = (size[2], size[3]);
    let out = [height, width];
    if h == height && w == width {
        images.shallow_clone()
    } else if height <= h && width <= w {
        images.adaptive_avg_pool2d(out)
    } else {
        match resample {
            Resample::Bilinear => images.upsample_bilinear2d(out, false, None, None),
            Resample::Bicubic => images
                .upsample_bicubic2d(out, false, None, None)
                .clamp_tensor(Some(&images.min()), Some(&images.max())),
            Resample::Nearest => images.upsample_nearest2d(out, None, None),
        }
    }
}

/// Converts `[N, C, H, W]` images to `channels` channels: gray to RGB repeats the channel,
/// RGB to gray takes the luma (ITU-R 601: 0.299 R + 0.587 G + 0.114 B, as the image crate
/// does for decoded files).
pub fn convert_channels(images: &Tensor, channels: i64) -> Tensor {
    let have = images.size()[1];
    match (have, channels) {
        (a, b) if a == b => images.shallow_clone(),
        (1, 3) => images.repeat([1, 3, 1, 1]),
        (3, 1) => {
            let luma = Tensor::from_slice(&[0.299f32, 0.587, 0.114]).view([1, 3, 1, 1]);
            (images * luma).sum_dim_intlist(1, true, Kind::Float)
        }
        (a, b) => panic!("cannot convert {a} channels to {b}"),
    }
}

/// Per-channel mean and standard deviation of `[N, C, H, W]` images.
pub fn channel_stats(images: &Tensor) -> (Vec<f64>, Vec<f64>) {
    let dims: &[i64] = &[0, 2, 3];
    let mean = images.mean_dim(dims, false, Kind::Float);
    let std = images.std_dim(dims, false, false);
    let to_vec = |t: &Tensor| {
        Vec::<f32>::try_from(t)
            .unwrap_or_default()
            .into_iter()
            .map(f64::from)
            .collect::<Vec<f64>>()
    };
    (to_vec(&mean), to_vec(&std))
}

/// `(images - mean) / std` per channel (a std below 1e-6 counts as 1e-6).
pub fn standardize(images: &Tensor, mean: &[f64], std: &[f64]) -> Tensor {
    let c = mean.len() as i64;
    let m: Vec<f32> = mean.iter().map(|&v| v as f32).collect();
    let s: Vec<f32> = std.iter().map(|&v| v.max(1e-6) as f32).collect();
    (images - Tensor::from_slice(&m).view([1, c, 1, 1])) / Tensor::from_slice(&s).view([1, c, 1, 1])
}

/// The splits of one trial:
/// - test: the data set's test split, its first `testLimit` examples (0: all); a data set
///   without one (an image folder without test/) has `testFraction` of its training
///   examples carved out by a permutation seeded by `splitSeed` (the same for every trial
///   of a sweep), before anything else;
/// - training: the first `trainLimit` remaining training examples in file order (0: all;
///   not a random subset, so every seed sees the same pool);
/// - validation: the data set's validation split when it has one, else `floor(n *
///   valFraction)` of the training pool chosen by a permutation seeded by `p.seed`
///   ([`split_indices`]); the splits are disjoint;
/// - every split resized to `p.effective_input_size` and converted to
///   `p.effective_channels` when they differ from the data set's; with `normalize:
///   standardize`, every split standardised by the training split's per-channel statistics.
///
/// Panics only if libtorch fails (out of memory).
pub fn prepare(ds: &Dataset, p: &TrialParams) -> Prepared {
    let mut notes = Vec::new();
    let mut pool = ds.train.shallow_clone();
    let test = match &ds.test {
        Some(test) => test.first(p.test_limit),
        None => {
            let (rest, carved) = split_indices(pool.len(), p.test_fraction, p.split_seed);
            notes.push(format!(
                "test: {} of {} training examples held out (testFraction {}, splitSeed {})",
                carved.len(),
                pool.len(),
                p.test_fraction,
                p.split_seed
            ));
            let test = pool
                .select(&Tensor::from_slice(&carved))
                .first(p.test_limit);
            pool = pool.select(&Tensor::from_slice(&rest));
            test
        }
    };
    let pool = pool.first(p.train_limit);
    let (train, val) = match &ds.validation {
        Some(val) => (pool, val.shallow_clone()),
        None => {
            let (train_idx, val_idx) = split_indices(pool.len(), p.val_fraction, p.seed);
            (
                pool.select(&Tensor::from_slice(&train_idx)),
                pool.select(&Tensor::from_slice(&val_idx)),
            )
        }
    };
    if !ds.skipped.is_empty() {
        let listed: Vec<String> = ds
            .skipped
            .iter()
            .take(20)
            .map(|(path, why)| format!("{} ({why})", path.display()))
            .collect();
        notes.push(format!(
            "skipped {} unreadable file(s): {}{}",
            ds.skipped.len(),
            listed.join("; "),
            if ds.skipped.len() > 20 { "; ..." } else { "" }
        ));
    }
    let size = Hw::from(p.effective_input_size(&ds.info));
    let channels = p.effective_channels(&ds.info) as i64;
    let fit = |s: Split| Split {
        images: convert_channels(&resize(&s.images, size, p.resample), channels),
        labels: s.labels,
    };
    let (train, val, test) = (fit(train), fit(val), fit(test));
    let standardization = (p.normalize == Normalize::Standardize && !train.is_empty())
        .then(|| channel_stats(&train.images));
    let (train, val, test) = match &standardization {
        Some((mean, std)) => {
            let norm = |s: Split| Split {
                images: standardize(&s.images, mean, std),
                labels: s.labels,
            };
            (norm(train), norm(val), norm(test))
        }
        None => (train, val, test),
    };
    Prepared {
        train,
        val,
        test,
        standardization,
        notes,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cnnd_core::datasets::builtin as dataset_info;
    use cnnd_core::sweep::InputSize;

    /// Enlarging follows the trial's `resample` (built-in data sets included): nearest
    /// repeats pixels, bilinear blends them, bicubic stays within the images' range;
    /// shrinking averages areas whatever `resample` says.
    #[test]
    fn resize_enlarges_with_the_trial_s_filter() {
        let x = Tensor::from_slice(&[0.0f32, 1.0, 1.0, 0.0]).view([1, 1, 2, 2]);
        let values = |t: &Tensor| Vec::<f32>::try_from(&t.view([-1])).unwrap();
        let nearest = values(&resize(&x, 4, Resample::Nearest));
        assert_eq!(
            nearest,
            [0., 0., 1., 1., 0., 0., 1., 1., 1., 1., 0., 0., 1., 1., 0., 0.]
        );
        let bilinear = values(&resize(&x, 4, Resample::Bilinear));
        assert!(
            bilinear.iter().any(|v| *v > 0.1 && *v < 0.9),
            "{bilinear:?}"
        );
        let bicubic = values(&resize(&x, 4, Resample::Bicubic));
        assert_ne!(bicubic, bilinear);
        assert!(
            bicubic.iter().all(|v| (0.0..=1.0).contains(v)),
            "{bicubic:?}"
        );
        let big = Tensor::from_slice(&[0.0f32, 1.0, 1.0, 0.0])
            .view([1, 1, 2, 2])
            .repeat([1, 1, 2, 2]);
        for resample in [Resample::Nearest, Resample::Bilinear, Resample::Bicubic] {
            let shrunk = values(&resize(&big, 2, resample));
            assert_eq!(shrunk, [0.5, 0.5, 0.5, 0.5], "{resample:?}");
        }
        // prepare() enlarges a built-in set's images to the trial's input size with it.
        let p = TrialParams {
            input_size: InputSize::square(56),
            resample: Resample::Nearest,
            ..TrialParams::default()
        };
        let prepared = prepare(&synthetic(20), &p);
        assert_eq!(prepared.train.images.size()[2..], [56, 56]);
    }

    fn synthetic(n: i64) -> Dataset {
        // Each image is filled with its own index, so it can be recognised after selection.
        let labels = Tensor::arange(n, (Kind::Int64, tch::Device::Cpu));
        let images = (labels.to_kind(Kind::Float) / n as f64)
            .view([n, 1, 1, 1])
            .expand([n, 1, 28, 28], false)
            .contiguous();
        Dataset {
            info: dataset_info("mnist").unwrap(),
            train: Split {
                images: images.shallow_clone(),
                labels: labels.shallow_clone(),
            },
            validation: None,
            test: Some(Split { images, labels }),
            skipped: Vec::new(),
            hash: Default::default(),
        }
    }

    fn ids(s: &Split) -> Vec<i64> {
        Vec::<i64>::try_from(&s.labels).unwrap()
    }

    /// The hash covers what is loaded and fails when a split cannot be read: it used to
    /// hash such a split as empty, so two different data sets could share a hash.
    #[test]
    fn the_data_hash_covers_every_split_and_fails_on_an_unreadable_one() {
        let whole = synthetic(8);
        let hash = whole.content_hash().unwrap().to_string();
        assert_eq!(hash.len(), 64);
        assert_eq!(synthetic(8).content_hash().unwrap(), hash, "deterministic");
        let mut fewer_test = synthetic(8);
        fewer_test.test = Some(Split {
            images: whole.train.images.narrow(0, 0, 7),
            labels: whole.train.labels.narrow(0, 0, 7),
        });
        assert_ne!(
            fewer_test.content_hash().unwrap(),
            hash,
            "the test split counts"
        );
        // Labels that cannot be read (here an undefined tensor): an error, not an empty hash.
        let mut unreadable = synthetic(8);
        unreadable.train.labels = Tensor::new();
        let e = unreadable.content_hash().unwrap_err().to_string();
        assert!(e.contains("train labels"), "{e}");
    }

    #[test]
    fn missing_files_name_every_path_tried() {
        let dir = std::env::temp_dir().join("cnnd-data-test-missing");
        let e = load(
            &dataset_info("mnist").unwrap(),
            None,
            &dir,
            DecodeAs::of(&TrialParams::default(), &dataset_info("mnist").unwrap()),
        )
        .unwrap_err()
        .to_string();
        for p in candidate_paths(
            &dataset_info("mnist").unwrap(),
            &dir,
            "train-images-idx3-ubyte",
        ) {
            assert!(e.contains(&p.display().to_string()), "{e}");
        }
        assert!(
            e.contains("CNND_DATA_DIR") && e.contains("scripts/fetch-data.sh mnist"),
            "{e}"
        );
    }

    #[test]
    fn prepare_is_deterministic_and_disjoint() {
        tch::set_num_threads(1);
        let ds = synthetic(200);
        let p = TrialParams {
            train_limit: 150,
            test_limit: 40,
            val_fraction: 0.2,
            seed: 3,
            ..TrialParams::default()
        };
        let a = prepare(&ds, &p);
        let b = prepare(&ds, &p);
        assert_eq!(ids(&a.train), ids(&b.train));
        assert_eq!(ids(&a.val), ids(&b.val));
        assert_eq!(a.val.len(), 30);
        assert_eq!(a.train.len(), 120);
        assert_eq!(a.test.len(), 40);
        let mut all: Vec<i64> = ids(&a.train).into_iter().chain(ids(&a.val)).collect();
        all.sort_unstable();
        assert_eq!(
            all,
            (0..150).collect::<Vec<_>>(),
            "disjoint and covering the first 150"
        );
        // Images travel with their labels.
        let first = a.val.images.get(0).mean(Kind::Float).double_value(&[]);
        assert!((first - ids(&a.val)[0] as f64 / 200.0).abs() < 1e-6);
        let c = prepare(&ds, &TrialParams { seed: 4, ..p });
        assert_ne!(
            ids(&a.val),
            ids(&c.val),
            "another seed holds out other examples"
        );
    }

    #[test]
    fn prepare_resizes_both_ways() {
        tch::set_num_threads(1);
        let ds = synthetic(20);
        let small = prepare(
            &ds,
            &TrialParams {
                input_size: InputSize::square(14),
                ..TrialParams::default()
            },
        );
        assert_eq!(small.train.images.size()[1..], [1, 14, 14]);
        let big = prepare(
            &ds,
            &TrialParams {
                input_size: InputSize::square(32),
                ..TrialParams::default()
            },
        );
        assert_eq!(big.test.images.size(), [20, 1, 32, 32]);
        // Constant images stay constant under both filters.
        let diff = (big.test.images.get(5) - 5.0 / 20.0)
            .abs()
            .max()
            .double_value(&[]);
        assert!(diff < 1e-6);
    }
}
