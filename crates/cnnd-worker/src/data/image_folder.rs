//! Image-folder data sets: `ROOT/{train,validation,test}/CLASS/*`, as Keras'
//! `flow_from_directory` reads them. Class names are the sub-folders of `train/`, sorted; the
//! label of a class is its position in that list. `validation/` and `test/` are optional and
//! may hold a subset of the classes.
//!
//! Owns: [`load`] (decoding every file once into one `[N, C, height, width]` tensor per split,
//! skipping and reporting files that do not decode). Listing the files is the daemon's job:
//! the lease carries them ([`FolderLayout`], paths relative to the folder).
//! Must not touch: the control plane, models or training; decoding and resizing belong to
//! [`crate::imaging`].

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

use anyhow::{bail, ensure};
use tch::Tensor;

use crate::data::Split;
use crate::imaging::{self, DecodeLimits, ImagingError, InputSize, Resample};

/// Extensions (compared case-insensitively) of the files that are read as images.
pub use cnnd_core::datasets::IMAGE_EXTENSIONS;
use cnnd_core::datasets::{TEST, TRAIN, VALIDATION};

use cnnd_core::datasets::FolderLayout;

/// A file left out of a loaded split, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SkippedFile {
    pub path: PathBuf,
    pub reason: String,
}

/// The decoded splits of an image folder.
#[derive(Debug)]
pub struct LoadedFolder {
    pub train: Split,
    pub validation: Option<Split>,
    pub test: Option<Split>,
    /// Files of any split that could not be decoded, in the splits' order.
    pub skipped: Vec<SkippedFile>,
}

/// Decodes every file of `layout` (paths relative to `root`) once into
/// `[N, channels, height, width]` f32 tensors in 0..1 (see [`imaging::to_model_input`]) with
/// `[N]` i64 labels, in the layout's order.
///
/// A file that cannot be read or decoded (or whose decoder panics) is logged with
/// `tracing::warn`, listed in `skipped` and left out. A split left with no images is an
/// error. Files are decoded on up to 8 threads, each taking a contiguous run of files, so
/// the order does not depend on the threads.
pub fn load(
    root: &Path,
    layout: &FolderLayout,
    size: impl Into<InputSize>,
    channels: u32,
    resample: Resample,
    limits: &DecodeLimits,
) -> anyhow::Result<LoadedFolder> {
    ensure!(
        channels == 1 || channels == 3,
        "channels must be 1 or 3, got {channels}"
    );
    let size: InputSize = size.into();
    ensure!(
        size.height > 0 && size.width > 0,
        "the image sides must be positive"
    );
    let mut skipped = Vec::new();
    let options = LoadOptions {
        root,
        size,
        channels,
        resample,
        limits,
    };
    let train = load_split(TRAIN, &layout.train, &options, &mut skipped)?;
    let validation = match &layout.validation {
        Some(files) => Some(load_split(VALIDATION, files, &options, &mut skipped)?),
        None => None,
    };
    let test = match &layout.test {
        Some(files) => Some(load_split(TEST, files, &options, &mut skipped)?),
        None => None,
    };
    Ok(LoadedFolder {
        train,
        validation,
        test,
        skipped,
    })
}

struct LoadOptions<'a> {
    root: &'a Path,
    size: InputSize,
    channels: u32,
    resample: Resample,
    limits: &'a DecodeLimits,
}

/// Decodes `path` into `out` (exactly one image's floats), or says why it cannot.
fn decode_into(path: &Path, out: &mut [f32], options: &LoadOptions) -> Result<(), String> {
    let decoded = catch_unwind(AssertUnwindSafe(|| {
        imaging::decode_file(path, options.limits).map(|img| {
            imaging::to_model_input(&img, options.size, options.channels, options.resample)
        })
    }));
    match decoded {
        Ok(Ok(input)) => {
            out.copy_from_slice(&input);
            Ok(())
        }
        // The path is reported beside the reason.
        Ok(Err(ImagingError::File { error, .. })) => Err(error.to_string()),
        Ok(Err(other)) => Err(other.to_string()),
        Err(_) => Err("the image decoder panicked".to_string()),
    }
}

fn load_split(
    name: &str,
    files: &[(String, i64)],
    options: &LoadOptions,
    skipped: &mut Vec<SkippedFile>,
) -> anyhow::Result<Split> {
    let per_image = (options.channels * options.size.height * options.size.width) as usize;
    let mut data = vec![0f32; files.len() * per_image];
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .clamp(1, 8);
    let chunk = files.len().div_ceil(threads).max(1);
    let outcomes: Vec<Result<(), String>> = std::thread::scope(|scope| {
        let handles: Vec<_> = files
            .chunks(chunk)
            .zip(data.chunks_mut(chunk * per_image))
            .map(|(files, out)| {
                scope.spawn(move || {
                    files
                        .iter()
                        .zip(out.chunks_mut(per_image))
                        .map(|((path, _), out)| decode_into(&options.root.join(path), out, options))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|handle| handle.join().expect("decoding is caught per file"))
            .collect()
    });

    // Move the decoded images down over the skipped ones, keeping the order.
    let mut labels = Vec::with_capacity(files.len());
    let mut first_skipped = None;
    for (i, ((path, label), outcome)) in files.iter().zip(outcomes).enumerate() {
        match outcome {
            Ok(()) => {
                let kept = labels.len();
                if kept != i {
                    data.copy_within(i * per_image..(i + 1) * per_image, kept * per_image);
                }
                labels.push(*label);
            }
            Err(reason) => {
                let path = options.root.join(path);
                tracing::warn!(
                    path = %path.display(),
                    %reason,
                    "skipping image file {}: {reason}",
                    path.display()
                );
                first_skipped.get_or_insert_with(|| format!("{}: {reason}", path.display()));
                skipped.push(SkippedFile { path, reason });
            }
        }
    }
    if labels.is_empty() {
        bail!(
            "the {name} split of image folder {} has no usable images: all {} files were \
             skipped (the first: {})",
            options.root.display(),
            files.len(),
            first_skipped.unwrap_or_default()
        );
    }
    data.truncate(labels.len() * per_image);
    let n = labels.len() as i64;
    let c = i64::from(options.channels);
    let (h, w) = (
        i64::from(options.size.height),
        i64::from(options.size.width),
    );
    Ok(Split {
        images: Tensor::from_slice(&data).view([n, c, h, w]),
        labels: Tensor::from_slice(&labels),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::{DynamicImage, GrayImage, ImageBuffer, Luma, LumaA, Rgb, RgbImage, Rgba};
    use std::fs;

    fn write(path: &Path, img: DynamicImage) {
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        img.save(path).unwrap();
    }

    fn rgb(width: u32, height: u32, shade: u8) -> DynamicImage {
        DynamicImage::ImageRgb8(RgbImage::from_fn(width, height, |x, y| {
            Rgb([shade, (x * 7) as u8, (y * 5) as u8])
        }))
    }

    /// 2 classes x 5 images of various formats, sizes and modes, a corrupt PNG, a text
    /// file, a hidden image and a validation split with both classes.
    fn sample_folder() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        for (class, shade) in [("cat", 30u8), ("dog", 220u8)] {
            let class_dir = root.join("train").join(class);
            write(&class_dir.join("a.png"), rgb(20, 12, shade));
            write(&class_dir.join("b.JPG"), rgb(33, 40, shade));
            write(
                &class_dir.join("c.bmp"),
                DynamicImage::ImageLuma8(GrayImage::from_pixel(8, 8, Luma([shade]))),
            );
            write(
                &class_dir.join("d.png"),
                DynamicImage::ImageLumaA8(ImageBuffer::from_pixel(16, 9, LumaA([shade, 200]))),
            );
            write(
                &class_dir.join("e.webp"),
                DynamicImage::ImageRgba8(ImageBuffer::from_pixel(
                    7,
                    30,
                    Rgba([shade, shade, shade, 255]),
                )),
            );
            write(
                &root.join("validation").join(class).join("v.png"),
                rgb(16, 16, shade),
            );
        }
        let dog = root.join("train/dog");
        write(
            &dog.join("f16.png"),
            DynamicImage::ImageLuma16(ImageBuffer::from_pixel(5, 5, Luma([50_000u16]))),
        );
        fs::write(dog.join("corrupt.png"), b"definitely not a png").unwrap();
        fs::write(dog.join("notes.txt"), b"not an image").unwrap();
        write(&dog.join(".hidden.png"), rgb(4, 4, 0));
        dir
    }

    /// The layout the daemon lists for [`sample_folder`] (its `datasets::scan_folder`):
    /// image files by extension, hidden files and text left out, sorted.
    fn sample_layout() -> FolderLayout {
        let files = |split: &str, class: &str, names: &[&str], label| {
            names
                .iter()
                .map(|n| (format!("{split}/{class}/{n}"), label))
                .collect::<Vec<_>>()
        };
        let common = ["a.png", "b.JPG", "c.bmp", "d.png", "e.webp"];
        let dog = [
            "a.png",
            "b.JPG",
            "c.bmp",
            "corrupt.png",
            "d.png",
            "e.webp",
            "f16.png",
        ];
        let mut train = files("train", "cat", &common, 0);
        train.extend(files("train", "dog", &dog, 1));
        let mut validation = files("validation", "cat", &["v.png"], 0);
        validation.extend(files("validation", "dog", &["v.png"], 1));
        FolderLayout {
            classes: vec!["cat".into(), "dog".into()],
            train,
            validation: Some(validation),
            test: None,
        }
    }

    #[test]
    fn loads_a_folder_and_reports_the_files_it_skips() {
        let dir = sample_folder();
        let layout = sample_layout();
        for channels in [1, 3] {
            let loaded = load(
                dir.path(),
                &layout,
                12,
                channels,
                Resample::Bilinear,
                &DecodeLimits::default(),
            )
            .unwrap();
            assert_eq!(
                loaded.train.images.size(),
                [11, i64::from(channels), 12, 12]
            );
            assert_eq!(loaded.train.images.kind(), tch::Kind::Float);
            assert_eq!(loaded.train.labels.kind(), tch::Kind::Int64);
            assert_eq!(
                Vec::<i64>::try_from(&loaded.train.labels).unwrap(),
                [0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1]
            );
            let min = loaded.train.images.min().double_value(&[]);
            let max = loaded.train.images.max().double_value(&[]);
            assert!((0.0..=1.0).contains(&min) && (0.0..=1.0).contains(&max) && max > min);
            // The 16-bit gray image, last: 50000 / 65535 of white.
            let last = loaded
                .train
                .images
                .get(10)
                .mean(tch::Kind::Float)
                .double_value(&[]);
            assert!((last - 50_000.0 / 65_535.0).abs() < 0.01, "{last}");
            let validation = loaded.validation.unwrap();
            assert_eq!(validation.len(), 2);
            assert_eq!(Vec::<i64>::try_from(&validation.labels).unwrap(), [0, 1]);
            assert!(loaded.test.is_none());
            assert_eq!(loaded.skipped.len(), 1);
            assert_eq!(
                loaded.skipped[0].path,
                dir.path().join("train/dog/corrupt.png")
            );
            assert!(
                loaded.skipped[0]
                    .reason
                    .starts_with("not a decodable image"),
                "{}",
                loaded.skipped[0].reason
            );
        }
    }

    #[test]
    fn a_split_with_only_corrupt_files_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        write(&root.join("train/a/1.png"), rgb(4, 4, 0));
        write(&root.join("train/b/1.png"), rgb(4, 4, 0));
        fs::create_dir_all(root.join("validation/a")).unwrap();
        fs::write(root.join("validation/a/bad.jpg"), b"garbage").unwrap();
        let layout = FolderLayout {
            classes: vec!["a".into(), "b".into()],
            train: vec![("train/a/1.png".into(), 0), ("train/b/1.png".into(), 1)],
            validation: Some(vec![("validation/a/bad.jpg".into(), 0)]),
            test: None,
        };
        let error = load(
            root,
            &layout,
            4,
            1,
            Resample::Bicubic,
            &DecodeLimits::default(),
        )
        .unwrap_err();
        let text = format!("{error:#}");
        assert!(
            text.starts_with("the validation split of image folder"),
            "{text}"
        );
        assert!(text.contains("bad.jpg"), "{text}");
    }
}
