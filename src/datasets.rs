//! Data sets on the daemon's disk: resolving a name to what it means (the catalogue is
//! `cnnd_core::datasets`), confinement of `folder:PATH` to the data directory (`..`,
//! absolute paths and escaping symlinks refused), listing an image folder's classes and
//! files (directory listings only, no decoding: the workers decode), and the manifest of a
//! data set: every file it needs, by name and digest, which workers fetch what they lack of.
//!
//! Owns: every look at the data directory the daemon takes.
//! Must not touch: pixels, libtorch, the store.

use std::fs;
use std::io::ErrorKind;
use std::path::{Component, Path, PathBuf};

use anyhow::{bail, Context};
use cnnd_core::content::{FileRef, Manifest};
use cnnd_core::datasets::{
    builtin, builtin_files, unknown, DatasetError, DatasetInfo, FolderLayout, Source,
    FOLDER_DEFAULT_SIDE, FOLDER_PREFIX, IMAGE_EXTENSIONS, TEST, TRAIN, VALIDATION,
};

use crate::blobs::Blobs;

/// A data set name resolved on this daemon: what it is, and for an image folder, its files.
#[derive(Debug, Clone, PartialEq)]
pub struct Resolved {
    pub info: DatasetInfo,
    pub layout: Option<FolderLayout>,
}

/// Every file of a resolved data set under `data_dir`: (name relative to `data_dir`, path).
/// A built-in data set's files are looked up as `FOLDER/NAME[.gz]`, then `NAME[.gz]`; a
/// required one missing is an error naming every path tried.
pub fn files_of(
    resolved: &Resolved,
    data_dir: &Path,
) -> Result<Vec<(String, PathBuf)>, DatasetError> {
    let info = &resolved.info;
    let relative = |path: &Path| {
        path.strip_prefix(data_dir)
            .unwrap_or(path)
            .to_string_lossy()
            .replace('\\', "/")
    };
    if let Some((required, optional)) = builtin_files(&info.source) {
        let folder = match &info.source {
            Source::Idx { folder } | Source::Cifar10 { folder } => folder.as_str(),
            Source::Folder { .. } => "",
        };
        let mut out = Vec::new();
        for (name, needed) in required
            .iter()
            .map(|n| (n, true))
            .chain(optional.iter().map(|n| (n, false)))
        {
            let tried: Vec<PathBuf> = [data_dir.join(folder), data_dir.to_path_buf()]
                .iter()
                .flat_map(|dir| [dir.join(format!("{name}.gz")), dir.join(name)])
                .collect();
            match tried.iter().find(|p| p.is_file()) {
                Some(path) => out.push((relative(path), path.clone())),
                None if needed => {
                    let list: Vec<String> = tried.iter().map(|p| p.display().to_string()).collect();
                    return Err(DatasetError::Invalid(format!(
                        "{}: file {name} not found; tried {}. Start cnnd with --data-dir (or CNND_DATA_DIR) pointing at the folder that holds the data sets, or download them with scripts/fetch-data.sh {}",
                        info.name,
                        list.join(", "),
                        info.name
                    )));
                }
                None => {}
            }
        }
        return Ok(out);
    }
    let (Source::Folder { folder, .. }, Some(layout)) = (&info.source, &resolved.layout) else {
        return Err(DatasetError::Invalid(format!(
            "{}: an image folder without its file list",
            info.name
        )));
    };
    let files = layout
        .train
        .iter()
        .chain(layout.validation.iter().flatten())
        .chain(layout.test.iter().flatten());
    Ok(files
        .map(|(rel, _)| {
            let name = format!("{folder}/{rel}");
            let path = data_dir.join(&name);
            (name, path)
        })
        .collect())
}

/// The manifest of a resolved data set: every file it needs by name, digest and size (each
/// hashed once and then served to workers by digest), and an image folder's layout. It is
/// kept in the blob store; the returned reference names it.
pub fn manifest(resolved: &Resolved, data_dir: &Path, blobs: &Blobs) -> anyhow::Result<FileRef> {
    let mut files = Vec::new();
    for (name, path) in files_of(resolved, data_dir)? {
        files.push(blobs.serve_file(&path, &name)?);
    }
    let manifest = Manifest {
        files,
        layout: resolved.layout.clone(),
    };
    blobs.put_bytes(
        "manifest.json",
        serde_json::to_string(&manifest)?.as_bytes(),
    )
}

/// Serves the data files a stored manifest names again (a restarted daemon, for the sweeps
/// still open): each found under `data_dir` with the recorded digest.
pub fn serve_manifest(manifest: &FileRef, data_dir: &Path, blobs: &Blobs) -> anyhow::Result<()> {
    let path = blobs.path(&manifest.parsed_digest()?);
    let bytes = fs::read(&path)
        .with_context(|| format!("the manifest {} is not in the blob store", manifest.digest))?;
    let manifest: Manifest = serde_json::from_slice(&bytes)?;
    for file in manifest.files {
        blobs.serve(&file, &data_dir.join(&file.name))?;
    }
    Ok(())
}

/// Resolves a data set name ([`resolve_with_layout`] without the file list).
pub fn resolve(name: &str, data_dir: Option<&Path>) -> Result<DatasetInfo, DatasetError> {
    resolve_with_layout(name, data_dir).map(|r| r.info)
}

/// Resolves a data set name. Built-in names resolve without touching the disk; `folder:PATH`
/// needs the data directory (`None`: the daemon was started without one) and is listed.
pub fn resolve_with_layout(name: &str, data_dir: Option<&Path>) -> Result<Resolved, DatasetError> {
    if let Some(info) = builtin(name) {
        return Ok(Resolved { info, layout: None });
    }
    let Some(relative) = name.strip_prefix(FOLDER_PREFIX) else {
        return Err(unknown(name));
    };
    let Some(data_dir) = data_dir else {
        return Err(DatasetError::Invalid(
            "image folders need a data directory; start cnnd with --data-dir (or CNND_DATA_DIR)"
                .into(),
        ));
    };
    let root = confine(relative, data_dir)?;
    let layout = scan_folder(&root).map_err(|e| DatasetError::Invalid(format!("{e:#}")))?;
    let examples = |v: &Option<Vec<(String, i64)>>| v.as_ref().map_or(0, |v| v.len() as u32);
    let info = DatasetInfo {
        name: name.to_string(),
        source: Source::Folder {
            folder: relative.trim_end_matches('/').to_string(),
            has_validation: layout.validation.is_some(),
            has_test: layout.test.is_some(),
        },
        input_size: FOLDER_DEFAULT_SIDE,
        channels: 3,
        classes: layout.classes.len() as u32,
        train_examples: layout.train.len() as u32,
        test_examples: examples(&layout.test),
        class_names: layout.classes.clone(),
    };
    Ok(Resolved {
        info,
        layout: Some(layout),
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
    let optional = |name: &str| -> anyhow::Result<Option<Vec<(String, i64)>>> {
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

/// The image files of the class folders of one split's folder `dir`, labelled by `classes`,
/// as paths relative to the folder root (`SPLIT/CLASS/FILE`).
fn split_files(dir: &Path, classes: &[String]) -> anyhow::Result<Vec<(String, i64)>> {
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
        let split = dir.file_name().unwrap_or_default().to_string_lossy();
        for path in entries(&class_dir)? {
            if is_image_file(&path) {
                let file = path.file_name().unwrap_or_default().to_os_string();
                let Ok(file) = file.into_string() else {
                    bail!(
                        "image file name {:?} in {} is not valid UTF-8",
                        path,
                        class_dir.display()
                    );
                };
                out.push((format!("{split}/{name}/{file}"), label as i64));
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
        assert_eq!(layout.train[0], ("train/happy/b.JPG".to_string(), 0));
        assert_eq!(layout.train[2], ("train/unhappy/a.png".to_string(), 1));
        assert_eq!(layout.test, Some(vec![("test/happy/d.bmp".to_string(), 0)]));
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
