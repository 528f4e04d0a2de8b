//! The catalogue of data sets: what the control plane and the workers agree a data set name
//! means. Built-in names (`mnist`, `fashion_mnist`, `cifar10`) and image folders named
//! `folder:PATH` (PATH relative to the data directory, laid out
//! `PATH/{train,validation,test}/CLASS/*`).
//!
//! Owns: the [`DatasetInfo`] a name stands for, the built-in table, the layout types of an
//! image folder ([`FolderLayout`]) and the rules its files follow. Pure: the daemon lists
//! folders (its `datasets` module), the workers decode files.

use serde::{Deserialize, Serialize};

/// Where a data set's files come from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Source {
    /// MNIST-layout IDX files (`train-images-idx3-ubyte[.gz]`, ...) in `DATA/folder/`.
    Idx { folder: String },
    /// CIFAR-10's binary batches in `DATA/folder/`.
    Cifar10 { folder: String },
    /// An image folder `DATA/folder/`, whose files the daemon listed ([`FolderLayout`]).
    Folder {
        folder: String,
        has_validation: bool,
        has_test: bool,
    },
}

/// What every side needs to know about a data set without reading its pixels.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DatasetInfo {
    /// The name sweeps use (`mnist`, `folder:faces`).
    pub name: String,
    pub source: Source,
    /// Side of the model input when a trial does not set `inputSize`.
    pub input_size: u32,
    /// Channels of the model input when a trial does not set `channels`.
    pub channels: u32,
    pub classes: u32,
    pub class_names: Vec<String>,
    pub train_examples: u32,
    /// Examples of the published test split; 0 when it is carved from train.
    pub test_examples: u32,
}

impl DatasetInfo {
    /// True for data sets of 28x28 gray digits, which `Predict` preprocesses MNIST-style.
    pub fn is_digits(&self) -> bool {
        self.name == "mnist"
    }
}

/// Built-in data sets: (name, source, side, channels, class names, train, test).
pub fn builtin(name: &str) -> Option<DatasetInfo> {
    let digits = || (0..10).map(|d| d.to_string()).collect::<Vec<_>>();
    let names = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let (source, side, channels, class_names, train, test) = match name {
        "mnist" => (
            Source::Idx {
                folder: "mnist".into(),
            },
            28,
            1,
            digits(),
            60_000,
            10_000,
        ),
        "fashion_mnist" => (
            Source::Idx {
                folder: "fashion-mnist".into(),
            },
            28,
            1,
            names(&[
                "T-shirt/top",
                "Trouser",
                "Pullover",
                "Dress",
                "Coat",
                "Sandal",
                "Shirt",
                "Sneaker",
                "Bag",
                "Ankle boot",
            ]),
            60_000,
            10_000,
        ),
        "cifar10" => (
            Source::Cifar10 {
                folder: "cifar-10-batches-bin".into(),
            },
            32,
            3,
            names(&CIFAR10_CLASSES),
            50_000,
            10_000,
        ),
        _ => return None,
    };
    Some(DatasetInfo {
        name: name.to_string(),
        source,
        input_size: side,
        channels,
        classes: class_names.len() as u32,
        class_names,
        train_examples: train,
        test_examples: test,
    })
}

/// CIFAR-10's class names, in label order.
pub const CIFAR10_CLASSES: [&str; 10] = [
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
];

/// The IDX files of MNIST and Fashion-MNIST (train images, train labels, test images, test
/// labels), named without the `.gz` many copies have.
pub const IDX_FILES: [&str; 4] = [
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
];

/// CIFAR-10's training batch files, in order, and its test batch.
pub const CIFAR10_TRAIN_FILES: [&str; 5] = [
    "data_batch_1.bin",
    "data_batch_2.bin",
    "data_batch_3.bin",
    "data_batch_4.bin",
    "data_batch_5.bin",
];
pub const CIFAR10_TEST_FILE: &str = "test_batch.bin";
/// CIFAR-10's class-names file (one name a line); optional.
pub const CIFAR10_META_FILE: &str = "batches.meta.txt";

/// The files a built-in data set is read from (required, optional), named without `.gz`:
/// each is looked up as `DATA/FOLDER/NAME[.gz]`, else `DATA/NAME[.gz]`. None for image
/// folders, whose files are listed.
pub fn builtin_files(source: &Source) -> Option<(Vec<&'static str>, Vec<&'static str>)> {
    match source {
        Source::Idx { .. } => Some((IDX_FILES.to_vec(), Vec::new())),
        Source::Cifar10 { .. } => {
            let mut required = CIFAR10_TRAIN_FILES.to_vec();
            required.push(CIFAR10_TEST_FILE);
            Some((required, vec![CIFAR10_META_FILE]))
        }
        Source::Folder { .. } => None,
    }
}

/// The built-in names, for messages.
pub const BUILTIN_NAMES: &[&str] = &["mnist", "fashion_mnist", "cifar10"];

/// Input side of image-folder data sets when a trial does not set `inputSize`.
pub const FOLDER_DEFAULT_SIDE: u32 = 64;

/// How an image-folder data set is named: `folder:PATH`.
pub const FOLDER_PREFIX: &str = "folder:";

/// Why a name does not resolve.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DatasetError {
    /// Not a known name, or a folder that is not a usable data set.
    #[error("{0}")]
    Invalid(String),
    /// A folder path that leaves the data directory.
    #[error("{0}")]
    Denied(String),
}

/// Resolves a built-in name without a data directory; image folders are refused (listing
/// one is the daemon's job, with its data directory).
pub fn resolve_builtin(name: &str) -> Result<DatasetInfo, DatasetError> {
    if let Some(info) = builtin(name) {
        return Ok(info);
    }
    if name.starts_with(FOLDER_PREFIX) {
        return Err(DatasetError::Invalid(
            "image folders need a data directory; start cnnd with --data-dir (or CNND_DATA_DIR)"
                .into(),
        ));
    }
    Err(unknown(name))
}

/// The error for a name that is neither built in nor `folder:PATH`.
pub fn unknown(name: &str) -> DatasetError {
    DatasetError::Invalid(format!(
        "unknown data set '{name}'; known: {}, or folder:PATH for an image folder under the data directory",
        BUILTIN_NAMES.join(", ")
    ))
}

/// The files of an image folder, with their class index; every list sorted by path. Paths
/// are relative to the folder's root, with `/` separators (`train/happy/a.png`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FolderLayout {
    /// Sub-folder names of `train/`, sorted; a file's label is its class's index here.
    pub classes: Vec<String>,
    pub train: Vec<(String, i64)>,
    pub validation: Option<Vec<(String, i64)>>,
    pub test: Option<Vec<(String, i64)>>,
}

/// Extensions (compared case-insensitively) of the files that are read as images.
pub const IMAGE_EXTENSIONS: &[&str] = &["png", "jpg", "jpeg", "bmp", "webp"];

/// The splits' sub-folders under the root.
pub const TRAIN: &str = "train";
pub const VALIDATION: &str = "validation";
pub const TEST: &str = "test";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtins_resolve_without_a_data_directory() {
        let m = resolve_builtin("mnist").unwrap();
        assert_eq!((m.input_size, m.channels, m.classes), (28, 1, 10));
        let c = resolve_builtin("cifar10").unwrap();
        assert_eq!((c.input_size, c.channels, c.classes), (32, 3, 10));
        assert!(
            matches!(resolve_builtin("imagenet"), Err(DatasetError::Invalid(m)) if m.contains("unknown data set 'imagenet'"))
        );
        assert!(
            matches!(resolve_builtin("folder:faces"), Err(DatasetError::Invalid(m)) if m.contains("data directory"))
        );
    }

    #[test]
    fn an_info_survives_json() {
        let m = builtin("fashion_mnist").unwrap();
        let back: DatasetInfo = serde_json::from_str(&serde_json::to_string(&m).unwrap()).unwrap();
        assert_eq!(back, m);
    }
}
