//! The catalogue of data sets: what the control plane and the workers agree a data set name
//! means. Built-in names (`mnist`, `fashion_mnist`, `cifar10`) and image folders named
//! `folder:PATH` (PATH relative to the data directory, laid out
//! `PATH/{train,validation,test}/CLASS/*`).
//!
//! Owns: resolving a name to a [`DatasetInfo`], confinement of folder paths to the data
//! directory, and scanning a folder's layout (directory listings only, no decoding).
//! Must not touch: libtorch, decoding pixels (that is `data` and `imaging`), the store.

use std::fs;
use std::io::ErrorKind;
use std::path::{Component, Path, PathBuf};

use anyhow::{bail, Context};

/// Where a data set's files come from.
#[derive(Debug, Clone, PartialEq)]
pub enum Source {
    /// MNIST-layout IDX files (`train-images-idx3-ubyte[.gz]`, ...) in `DATA/folder/`.
    Idx { folder: &'static str },
    /// CIFAR-10's binary batches in `DATA/folder/`.
    Cifar10 { folder: &'static str },
    /// An image folder; `root` is absolute (resolved inside the data directory).
    Folder {
        root: PathBuf,
        has_validation: bool,
        has_test: bool,
    },
}

/// What the control plane needs to know about a data set without reading its pixels.
#[derive(Debug, Clone, PartialEq)]
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
fn builtin(name: &str) -> Option<DatasetInfo> {
    let digits = || (0..10).map(|d| d.to_string()).collect::<Vec<_>>();
    let names = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let (source, side, channels, class_names, train, test) = match name {
        "mnist" => (
            Source::Idx { folder: "mnist" },
            28,
            1,
            digits(),
            60_000,
            10_000,
        ),
        "fashion_mnist" => (
            Source::Idx {
                folder: "fashion-mnist",
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
                folder: "cifar-10-batches-bin",
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

/// A built-in data set by name (no disk access); None for other names.
pub fn dataset_info(name: &str) -> Option<DatasetInfo> {
    builtin(name)
}

/// The built-in names, for messages.
pub const BUILTIN_NAMES: &[&str] = &["mnist", "fashion_mnist", "cifar10"];

/// Input side of image-folder data sets when a trial does not set `inputSize`.
pub const FOLDER_DEFAULT_SIDE: u32 = 64;

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

/// Resolves a data set name. Built-in names resolve without touching the disk; `folder:PATH`
/// needs the data directory (`None`: the daemon was started without one).
pub fn resolve(name: &str, data_dir: Option<&Path>) -> Result<DatasetInfo, DatasetError> {
    if let Some(info) = builtin(name) {
        return Ok(info);
    }
    let Some(relative) = name.strip_prefix("folder:") else {
        return Err(DatasetError::Invalid(format!(
            "unknown data set '{name}'; known: {}, or folder:PATH for an image folder under the data directory",
            BUILTIN_NAMES.join(", ")
        )));
    };
    let Some(data_dir) = data_dir else {
        return Err(DatasetError::Invalid(
            "image folders need a data directory; start cnnd with --data-dir (or CNND_DATA_DIR)"
                .into(),
        ));
    };
    let root = confine(relative, data_dir)?;
    let layout = scan_folder(&root).map_err(|e| DatasetError::Invalid(format!("{e:#}")))?;
    let examples = |v: &Option<Vec<(PathBuf, i64)>>| v.as_ref().map_or(0, |v| v.len() as u32);
    Ok(DatasetInfo {
        name: name.to_string(),
        source: Source::Folder {
            root,
            has_validation: layout.validation.is_some(),
            has_test: layout.test.is_some(),
        },
        input_size: FOLDER_DEFAULT_SIDE,
        channels: 3,
        classes: layout.classes.len() as u32,
        train_examples: layout.train.len() as u32,
        test_examples: examples(&layout.test),
        class_names: layout.classes,
    })
}

/// `relative` as a path inside `data_dir`: refuses absolute paths, `..`, and symbolic links
/// that lead outside (checked on the canonical paths), naming the data directory.
pub fn confine(relative: &str, data_dir: &Path) -> Result<PathBuf, DatasetError> {
    let denied = |why: &str| {
        DatasetError::Denied(format!(
            "'{relative}' {why}; image folders must lie inside the data directory {}",
            data_dir.display()
        ))
    };
    let rel = Path::new(relative);
    if relative.is_empty() {
        return Err(DatasetError::Invalid(
            "folder: needs a path, e.g. folder:faces".into(),
        ));
    }
    if rel.is_absolute() {
        return Err(denied("is an absolute path"));
    }
    if rel.components().any(|c| matches!(c, Component::ParentDir)) {
        return Err(denied("climbs out with '..'"));
    }
    let base = data_dir.canonicalize().map_err(|e| {
        DatasetError::Invalid(format!(
            "the data directory {} is not readable: {e}",
            data_dir.display()
        ))
    })?;
    let joined = base.join(rel);
    let real = joined.canonicalize().map_err(|_| {
        DatasetError::Invalid(format!("image folder {} does not exist", joined.display()))
    })?;
    if !real.starts_with(&base) {
        return Err(denied("leads outside through a symbolic link"));
    }
    Ok(real)
}

/// The files of an image folder, with their class index; every list sorted by path.
#[derive(Debug, Clone, PartialEq)]
pub struct FolderLayout {
    pub root: PathBuf,
    /// Sub-folder names of `train/`, sorted; a file's label is its class's index here.
    pub classes: Vec<String>,
    pub train: Vec<(PathBuf, i64)>,
    pub validation: Option<Vec<(PathBuf, i64)>>,
    pub test: Option<Vec<(PathBuf, i64)>>,
}

/// Extensions (compared case-insensitively) of the files that are read as images.
pub const IMAGE_EXTENSIONS: &[&str] = &["png", "jpg", "jpeg", "bmp", "webp"];

/// The splits' sub-folders under the root.
pub const TRAIN: &str = "train";
pub const VALIDATION: &str = "validation";
pub const TEST: &str = "test";

/// Finds the classes and the image files of the folder at `root`.
///
/// Files whose extension is one of [`IMAGE_EXTENSIONS`] are images; other files, hidden files
/// and folders (names starting with '.') and anything nested deeper than `CLASS/` are
/// ignored. Errors name what is wrong: a missing root or `train/`, fewer than 2 classes, a
/// class folder without images, a `validation/` or `test/` class that `train/` lacks, a
/// `validation/` or `test/` folder without class folders.
pub fn scan_folder(root: &Path) -> anyhow::Result<FolderLayout> {
    match fs::metadata(root) {
        Err(e) if e.kind() == ErrorKind::NotFound => {
            bail!("image folder {} does not exist", root.display())
        }
        Err(e) => {
            return Err(e).with_context(|| format!("cannot read image folder {}", root.display()))
        }
        Ok(meta) if !meta.is_dir() => bail!("image folder {} is not a folder", root.display()),
        Ok(_) => {}
    }
    let train_dir = root.join(TRAIN);
    if !train_dir.is_dir() {
        bail!(
            "{} has no train/ folder; expected ROOT/{{train,validation,test}}/CLASS/*",
            root.display()
        );
    }
    let classes = sub_folders(&train_dir)?;
    if classes.len() < 2 {
        bail!(
            "{} has {} class folder{}{}; at least 2 are needed (ROOT/train/CLASS/*)",
            train_dir.display(),
            classes.len(),
            if classes.len() == 1 { "" } else { "s" },
            match classes.first() {
                Some(name) => format!(" ({name})"),
                None => String::new(),
            }
        );
    }
    let train = split_files(&train_dir, &classes)?;
    let optional = |name: &str| -> anyhow::Result<Option<Vec<(PathBuf, i64)>>> {
        let dir = root.join(name);
        if !dir.is_dir() {
            return Ok(None);
        }
        let files = split_files(&dir, &classes)?;
        if files.is_empty() {
            bail!(
                "{} has no class folders; remove it or add {name}/CLASS/* folders",
                dir.display()
            );
        }
        Ok(Some(files))
    };
    let validation = optional(VALIDATION)?;
    let test = optional(TEST)?;
    Ok(FolderLayout {
        root: root.to_path_buf(),
        classes,
        train,
        validation,
        test,
    })
}

/// Whether a directory entry's name hides it.
fn is_hidden(path: &Path) -> bool {
    path.file_name()
        .is_some_and(|name| name.to_string_lossy().starts_with('.'))
}

/// The entries of `dir`, sorted by path.
fn entries(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))? {
        let entry = entry.with_context(|| format!("cannot list {}", dir.display()))?;
        out.push(entry.path());
    }
    out.sort();
    Ok(out)
}

/// Names of the visible sub-folders of `dir` (links followed), sorted.
fn sub_folders(dir: &Path) -> anyhow::Result<Vec<String>> {
    let mut names = Vec::new();
    for path in entries(dir)? {
        if is_hidden(&path) || !path.is_dir() {
            continue;
        }
        let name = path.file_name().unwrap_or_default().to_os_string();
        match name.into_string() {
            Ok(name) => names.push(name),
            Err(name) => bail!(
                "class folder name {:?} in {} is not valid UTF-8",
                name,
                dir.display()
            ),
        }
    }
    Ok(names)
}

/// Whether `path` names an image file by its extension.
fn is_image_file(path: &Path) -> bool {
    let by_extension = path
        .extension()
        .and_then(|ext| ext.to_str())
        .is_some_and(|ext| {
            IMAGE_EXTENSIONS
                .iter()
                .any(|known| ext.eq_ignore_ascii_case(known))
        });
    by_extension && !is_hidden(path) && path.is_file()
}

/// The image files of the class folders of one split's folder `dir`, labelled by `classes`.
fn split_files(dir: &Path, classes: &[String]) -> anyhow::Result<Vec<(PathBuf, i64)>> {
    let mut out = Vec::new();
    for name in sub_folders(dir)? {
        let Some(label) = classes.iter().position(|class| *class == name) else {
            bail!(
                "{} is not a class of train/ (its classes: {})",
                dir.join(&name).display(),
                classes.join(", ")
            );
        };
        let class_dir = dir.join(&name);
        let before = out.len();
        for path in entries(&class_dir)? {
            if is_image_file(&path) {
                out.push((path, label as i64));
            }
        }
        if out.len() == before {
            bail!(
                "class folder {} has no images ({})",
                class_dir.display(),
                IMAGE_EXTENSIONS.join(", ")
            );
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn touch(p: &Path) {
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, b"x").unwrap();
    }

    #[test]
    fn builtins_resolve_without_a_data_directory() {
        let m = resolve("mnist", None).unwrap();
        assert_eq!((m.input_size, m.channels, m.classes), (28, 1, 10));
        let c = resolve("cifar10", None).unwrap();
        assert_eq!((c.input_size, c.channels, c.classes), (32, 3, 10));
        assert!(
            matches!(resolve("imagenet", None), Err(DatasetError::Invalid(m)) if m.contains("unknown data set 'imagenet'"))
        );
    }

    #[test]
    fn a_folder_resolves_with_sorted_classes_and_counts() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("faces");
        touch(&root.join("train/unhappy/a.png"));
        touch(&root.join("train/happy/b.JPG"));
        touch(&root.join("train/happy/c.webp"));
        touch(&root.join("train/happy/notes.txt"));
        touch(&root.join("train/happy/.hidden.png"));
        touch(&root.join("test/happy/d.bmp"));
        let info = resolve("folder:faces", Some(dir.path())).unwrap();
        assert_eq!(info.class_names, vec!["happy", "unhappy"]);
        assert_eq!((info.train_examples, info.test_examples), (3, 1));
        assert!(matches!(
            info.source,
            Source::Folder {
                has_validation: false,
                has_test: true,
                ..
            }
        ));
        let layout = scan_folder(&root).unwrap();
        assert_eq!(layout.train[0].1, 0);
        assert_eq!(layout.train[2].1, 1);
    }

    #[test]
    fn paths_leaving_the_data_directory_are_denied() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        std::fs::create_dir_all(&data).unwrap();
        let outside = dir.path().join("outside");
        touch(&outside.join("train/a/x.png"));
        touch(&outside.join("train/b/y.png"));
        std::os::unix::fs::symlink(&outside, data.join("link")).unwrap();
        for name in ["folder:../outside", "folder:/etc", "folder:link"] {
            match resolve(name, Some(&data)) {
                Err(DatasetError::Denied(m)) => {
                    assert!(m.contains(&data.display().to_string()), "{m}")
                }
                other => panic!("{name}: {other:?}"),
            }
        }
    }

    fn scan_error(root: &Path) -> String {
        format!("{:#}", scan_folder(root).unwrap_err())
    }

    #[test]
    fn layout_errors_are_specific() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let missing = root.join("nowhere");
        assert_eq!(
            scan_error(&missing),
            format!("image folder {} does not exist", missing.display())
        );

        assert_eq!(
            scan_error(root),
            format!(
                "{} has no train/ folder; expected ROOT/{{train,validation,test}}/CLASS/*",
                root.display()
            )
        );

        touch(&root.join("train/only/a.png"));
        let error = scan_error(root);
        assert!(
            error.contains("has 1 class folder (only); at least 2 are needed"),
            "{error}"
        );

        fs::create_dir_all(root.join("train/empty")).unwrap();
        fs::write(root.join("train/empty/readme.txt"), b"x").unwrap();
        let error = scan_error(root);
        assert!(
            error.starts_with("class folder ") && error.contains("empty"),
            "{error}"
        );
        assert!(error.contains("has no images"), "{error}");

        touch(&root.join("train/empty/a.bmp"));
        touch(&root.join("test/zebra/z.png"));
        let error = scan_error(root);
        assert!(
            error.contains("zebra is not a class of train/ (its classes: empty, only)"),
            "{error}"
        );

        fs::remove_dir_all(root.join("test/zebra")).unwrap();
        let error = scan_error(root);
        assert!(error.contains("has no class folders"), "{error}");
        fs::remove_dir_all(root.join("test")).unwrap();
        assert_eq!(scan_folder(root).unwrap().classes, ["empty", "only"]);
    }
}
