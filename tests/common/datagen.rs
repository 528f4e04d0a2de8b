//! Test data the tests generate: real files in the real published formats (IDX as MNIST ships
//! it, CIFAR-10 binary batches, image folders of PNG/JPEG/BMP files, photo-like digit pictures),
//! deterministic for a seed, so the crate's readers are tested against bytes they will meet.
//!
//! Owns: the writers and generators below. Must not touch: the daemon harness (`common/mod.rs`)
//! or any reader (they live in the crate, `cnnd::data`); nothing here reads back what it wrote
//! except `photo_like_digits`, which reads MNIST through the crate's own IDX reader.
#![allow(dead_code)]

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use image::{DynamicImage, GrayImage, ImageBuffer, ImageFormat, Luma, Rgb, RgbImage, RgbaImage};
use rand::{Rng, RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Writes an IDX file of unsigned bytes: magic `0x00 0x00 0x08 ndims`, the big-endian u32
/// `dims`, then `data` as given (not checked against `dims`, so a test can write a corrupt
/// file on purpose). With `gzip` the whole file is gzip-compressed (the caller picks the name,
/// e.g. with a `.gz` suffix). Creates missing parent folders; panics on I/O errors.
pub fn write_idx(path: &Path, dims: &[u32], data: &[u8], gzip: bool) {
    let mut buf = Vec::with_capacity(4 + 4 * dims.len() + data.len());
    buf.extend_from_slice(&[0, 0, 0x08, dims.len() as u8]);
    for d in dims {
        buf.extend_from_slice(&d.to_be_bytes());
    }
    buf.extend_from_slice(data);
    if gzip {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        enc.write_all(&buf).unwrap();
        buf = enc.finish().unwrap();
    }
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).unwrap();
    }
    fs::write(path, buf).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
}

/// Writes the four standard MNIST files into `dir` (created if needed):
/// `train-images-idx3-ubyte`, `train-labels-idx1-ubyte`, `t10k-images-idx3-ubyte`,
/// `t10k-labels-idx1-ubyte`, each with a `.gz` suffix and gzip-compressed when `gzip`.
/// `train` and `test` are (images: `n * 28 * 28` bytes row-major, labels: `n` bytes); the
/// headers say `n_train` / `n_test` images of 28x28 (lengths are not checked, see [`write_idx`]).
pub fn write_mnist_like(
    dir: &Path,
    train: (&[u8], &[u8]),
    test: (&[u8], &[u8]),
    n_train: u32,
    n_test: u32,
    gzip: bool,
) {
    let sfx = if gzip { ".gz" } else { "" };
    let file = |name: &str| dir.join(format!("{name}{sfx}"));
    write_idx(
        &file("train-images-idx3-ubyte"),
        &[n_train, 28, 28],
        train.0,
        gzip,
    );
    write_idx(&file("train-labels-idx1-ubyte"), &[n_train], train.1, gzip);
    write_idx(
        &file("t10k-images-idx3-ubyte"),
        &[n_test, 28, 28],
        test.0,
        gzip,
    );
    write_idx(&file("t10k-labels-idx1-ubyte"), &[n_test], test.1, gzip);
}

/// Writes one CIFAR-10 binary batch: for each image, its label byte then its 3072 bytes
/// (`images` is `N * 3072` bytes, each image R, G, B planes of row-major 32x32). Panics when
/// `images` is not `labels.len() * 3072` bytes.
pub fn write_cifar_batch(path: &Path, images: &[u8], labels: &[u8]) {
    const IMAGE: usize = 3 * 32 * 32;
    assert_eq!(
        images.len(),
        labels.len() * IMAGE,
        "write_cifar_batch: {} labels need {} image bytes",
        labels.len(),
        labels.len() * IMAGE
    );
    let mut buf = Vec::with_capacity(labels.len() * (IMAGE + 1));
    for (label, image) in labels.iter().zip(images.chunks_exact(IMAGE)) {
        buf.push(*label);
        buf.extend_from_slice(image);
    }
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).unwrap();
    }
    fs::write(path, buf).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
}

/// Writes a CIFAR-10 folder into `dir` (created if needed; pass `ROOT/cifar-10-batches-bin` for
/// the published layout): `data_batch_1.bin` .. `data_batch_5.bin` and `test_batch.bin` of
/// `per_batch` records each, with random pixels and labels 0..=9 drawn from a ChaCha8 stream
/// seeded by `seed`, and `batches.meta.txt` with the standard class names. Returns every
/// training image (`5 * per_batch * 3072` bytes, batch 1 first) and label, in file order.
pub fn write_cifar_dir(dir: &Path, per_batch: usize, seed: u64) -> (Vec<u8>, Vec<u8>) {
    const IMAGE: usize = 3 * 32 * 32;
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let batch = |rng: &mut ChaCha8Rng| {
        let mut images = vec![0u8; per_batch * IMAGE];
        rng.fill_bytes(&mut images);
        let labels: Vec<u8> = (0..per_batch).map(|_| rng.gen_range(0..10u8)).collect();
        (images, labels)
    };
    let (mut all_images, mut all_labels) = (Vec::new(), Vec::new());
    for b in 1..=5 {
        let (images, labels) = batch(&mut rng);
        write_cifar_batch(&dir.join(format!("data_batch_{b}.bin")), &images, &labels);
        all_images.extend_from_slice(&images);
        all_labels.extend_from_slice(&labels);
    }
    let (images, labels) = batch(&mut rng);
    write_cifar_batch(&dir.join("test_batch.bin"), &images, &labels);
    let names = [
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
    // The published file ends with blank lines too.
    fs::write(
        dir.join("batches.meta.txt"),
        format!("{}\n\n", names.join("\n")),
    )
    .unwrap();
    (all_images, all_labels)
}

/// An image folder of visually distinct classes: `ROOT/train/CLASS/*`, `ROOT/test/CLASS/*`,
/// optionally `ROOT/validation/...`.
#[derive(Debug, Clone)]
pub struct FolderSpec {
    /// Class folder names. Known names pick their pattern ("circle"/"disc", "square",
    /// "stripes" (horizontal), "vstripes", "cross", "ring", "checker", "triangle"); any
    /// other name gets the first pattern no other class uses.
    pub classes: Vec<&'static str>,
    pub train_per_class: usize,
    /// 0: no validation folder.
    pub val_per_class: usize,
    /// 0: no test folder.
    pub test_per_class: usize,
    pub seed: u64,
}

/// The drawable patterns, by index.
const PATTERNS: [&str; 8] = [
    "circle", "square", "stripes", "vstripes", "cross", "ring", "checker", "triangle",
];

fn pattern_of_name(name: &str) -> Option<usize> {
    let n = name.to_ascii_lowercase();
    let p = match n.as_str() {
        "circle" | "circles" | "disc" | "discs" | "dot" | "dots" => 0,
        "square" | "squares" | "box" | "boxes" => 1,
        "stripes" | "hstripes" | "horizontal" => 2,
        "vstripes" | "vertical" => 3,
        "cross" | "crosses" | "x" => 4,
        "ring" | "rings" => 5,
        "checker" | "checkers" | "checkerboard" => 6,
        "triangle" | "triangles" => 7,
        _ => return None,
    };
    Some(p)
}

/// Pattern index of each class: named ones first, the others the first unused patterns.
fn class_patterns(classes: &[&str]) -> Vec<usize> {
    assert!(
        classes.len() <= PATTERNS.len(),
        "at most {} classes",
        PATTERNS.len()
    );
    let mut out: Vec<Option<usize>> = classes.iter().map(|c| pattern_of_name(c)).collect();
    let mut used: Vec<usize> = out.iter().flatten().copied().collect();
    for slot in out.iter_mut().filter(|s| s.is_none()) {
        let free = (0..PATTERNS.len()).find(|p| !used.contains(p)).unwrap();
        used.push(free);
        *slot = Some(free);
    }
    out.into_iter().map(Option::unwrap).collect()
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Mode {
    L8,
    Rgb8,
    Rgba8,
    L16,
}

/// (mode, format) of successive files; BMP falls back to PNG when the image crate cannot write
/// it. JPEG holds no alpha nor 16 bits, BMP no 16 bits.
const COMBOS: [(Mode, ImageFormat); 9] = [
    (Mode::L8, ImageFormat::Png),
    (Mode::Rgb8, ImageFormat::Jpeg),
    (Mode::Rgba8, ImageFormat::Png),
    (Mode::L16, ImageFormat::Png),
    (Mode::Rgb8, ImageFormat::Bmp),
    (Mode::L8, ImageFormat::Jpeg),
    (Mode::Rgb8, ImageFormat::Png),
    (Mode::Rgba8, ImageFormat::Bmp),
    (Mode::L8, ImageFormat::Bmp),
];

/// Draws one `w x h` picture of `pattern` as RGB floats in 0..1: a bright, colour-jittered
/// shape on dark noise, its position and size jittered.
fn draw(pattern: usize, w: u32, h: u32, rng: &mut ChaCha8Rng) -> Vec<[f32; 3]> {
    let (wf, hf) = (w as f32, h as f32);
    let m = wf.min(hf);
    let level: f32 = rng.gen_range(0.0..0.15);
    let fg = [
        rng.gen_range(0.6..1.0f32),
        rng.gen_range(0.6..1.0f32),
        rng.gen_range(0.6..1.0f32),
    ];
    let cx = wf * rng.gen_range(0.4..0.6f32);
    let cy = hf * rng.gen_range(0.4..0.6f32);
    let phase: f32 = rng.gen_range(0.0..1.0);
    // Pattern parameters, drawn once per image.
    let r = m * rng.gen_range(0.22..0.36f32); // disc/ring radius, half side of square/cross/triangle
    let thick = (m * rng.gen_range(0.08..0.13f32)).max(2.0);
    let stripes: f32 = rng.gen_range(3.0..5.0); // stripe pairs across the image
    let cells: f32 = rng.gen_range(3.0..5.0);
    let mut out = Vec::with_capacity((w * h) as usize);
    for y in 0..h {
        for x in 0..w {
            let (px, py) = (x as f32 + 0.5, y as f32 + 0.5);
            let (dx, dy) = (px - cx, py - cy);
            let on = match pattern {
                0 => dx * dx + dy * dy <= r * r,
                1 => {
                    let (ax, ay) = (dx.abs(), dy.abs());
                    ax.max(ay) <= r && ax.max(ay) >= r - thick
                }
                2 => ((py / hf * stripes + phase) * 2.0).floor() as i64 % 2 == 0,
                3 => ((px / wf * stripes + phase) * 2.0).floor() as i64 % 2 == 0,
                4 => {
                    dx.abs().max(dy.abs()) <= r
                        && ((dx - dy).abs() <= thick * 0.8 || (dx + dy).abs() <= thick * 0.8)
                }
                5 => {
                    let d = (dx * dx + dy * dy).sqrt();
                    d <= r && d >= r - thick
                }
                6 => {
                    let a = (px / m * cells + phase).floor() as i64;
                    let b = (py / m * cells + phase).floor() as i64;
                    (a + b) % 2 == 0
                }
                _ => {
                    // Upward triangle: apex at (cx, cy - r), base at cy + r.
                    let t = (dy + r) / (2.0 * r);
                    (0.0..=1.0).contains(&t) && dx.abs() <= t * r
                }
            };
            let noise: f32 = rng.gen_range(-0.06..0.06);
            let px = if on {
                [fg[0] + noise, fg[1] + noise, fg[2] + noise]
            } else {
                let b = level + rng.gen_range(0.0..0.12f32);
                [b, b + noise * 0.5, b - noise * 0.5]
            };
            out.push(px.map(|v| v.clamp(0.0, 1.0)));
        }
    }
    out
}

/// Converts drawn pixels into an image of `mode`.
fn to_image(px: &[[f32; 3]], w: u32, h: u32, mode: Mode) -> DynamicImage {
    let lum = |p: &[f32; 3]| 0.299 * p[0] + 0.587 * p[1] + 0.114 * p[2];
    let b = |v: f32| (v * 255.0).round() as u8;
    match mode {
        Mode::L8 => DynamicImage::ImageLuma8(
            GrayImage::from_raw(w, h, px.iter().map(|p| b(lum(p))).collect()).unwrap(),
        ),
        Mode::L16 => DynamicImage::ImageLuma16(
            ImageBuffer::<Luma<u16>, Vec<u16>>::from_raw(
                w,
                h,
                px.iter()
                    .map(|p| (lum(p) * 65535.0).round() as u16)
                    .collect(),
            )
            .unwrap(),
        ),
        Mode::Rgb8 => DynamicImage::ImageRgb8(
            RgbImage::from_raw(w, h, px.iter().flat_map(|p| p.map(b)).collect()).unwrap(),
        ),
        Mode::Rgba8 => DynamicImage::ImageRgba8(
            RgbaImage::from_raw(
                w,
                h,
                px.iter()
                    .flat_map(|p| [b(p[0]), b(p[1]), b(p[2]), 255])
                    .collect(),
            )
            .unwrap(),
        ),
    }
}

/// Saves `img` as `format` at `path` (JPEG at quality `q`).
fn save(img: &DynamicImage, path: &Path, format: ImageFormat, q: u8) {
    if format == ImageFormat::Jpeg {
        let f = fs::File::create(path).unwrap();
        let mut enc =
            image::codecs::jpeg::JpegEncoder::new_with_quality(std::io::BufWriter::new(f), q);
        enc.encode_image(img)
            .unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
    } else {
        img.save_with_format(path, format)
            .unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
    }
}

fn extension(format: ImageFormat) -> &'static str {
    match format {
        ImageFormat::Jpeg => "jpg",
        ImageFormat::Bmp => "bmp",
        _ => "png",
    }
}

/// Writes an image folder under `root` as `spec` says: for each split with a non-zero count
/// (`train`, `validation`, `test`) and each class, that many pictures of the class's pattern
/// (see [`FolderSpec::classes`]): a bright shape or texture on dark noise, with random
/// position, size and colour, MIXED sizes (24..=96 px wide and high, independently), modes
/// (8-bit gray, RGB, RGBA (opaque), 16-bit gray) and formats (PNG, JPEG, and BMP when the image
/// crate can write it, else PNG in its place), cycling through all combinations, named
/// `CLASS_NNNN.{png,jpg,bmp}`. Also writes ONE corrupt file `root/train/<first class>/corrupt.png`
/// (random bytes) and a stray `root/train/README.txt`. Deterministic for `spec.seed`.
/// Returns the number of files written, the corrupt file and README included:
/// `classes * (train + val + test) + 2`.
pub fn make_image_folder(root: &Path, spec: &FolderSpec) -> usize {
    assert!(!spec.classes.is_empty(), "make_image_folder: no classes");
    let patterns = class_patterns(&spec.classes);
    let bmp = ImageFormat::Bmp.writing_enabled();
    let mut rng = ChaCha8Rng::seed_from_u64(spec.seed);
    let mut written = 0usize;
    let mut counter = 0usize;
    for (split, n) in [
        ("train", spec.train_per_class),
        ("validation", spec.val_per_class),
        ("test", spec.test_per_class),
    ] {
        if n == 0 {
            continue;
        }
        for (class, &pattern) in spec.classes.iter().zip(&patterns) {
            let dir = root.join(split).join(class);
            fs::create_dir_all(&dir).unwrap();
            for i in 0..n {
                let (mode, mut format) = COMBOS[counter % COMBOS.len()];
                counter += 1;
                if format == ImageFormat::Bmp && !bmp {
                    format = ImageFormat::Png;
                }
                let w = rng.gen_range(24..=96u32);
                let h = rng.gen_range(24..=96u32);
                let px = draw(pattern, w, h, &mut rng);
                let q = rng.gen_range(85..=95u8);
                let path = dir.join(format!("{class}_{i:04}.{}", extension(format)));
                save(&to_image(&px, w, h, mode), &path, format, q);
                written += 1;
            }
        }
    }
    let first = root.join("train").join(spec.classes[0]);
    fs::create_dir_all(&first).unwrap();
    let mut garbage = vec![0u8; 517];
    rng.fill_bytes(&mut garbage);
    garbage[0] = b'#'; // never a valid image signature
    fs::write(first.join("corrupt.png"), garbage).unwrap();
    fs::write(
        root.join("train/README.txt"),
        "Generated test images: one folder per class. Not an image.\n",
    )
    .unwrap();
    written + 2
}

/// The MNIST test images and labels under `mnist_dir` (or `mnist_dir/mnist`), raw or gzip,
/// read through the crate's own reader: (images `N * 28 * 28`, labels).
fn read_mnist_test(mnist_dir: &Path) -> (Vec<u8>, Vec<u8>) {
    let find = |name: &str| -> PathBuf {
        for dir in [mnist_dir.join("mnist"), mnist_dir.to_path_buf()] {
            for f in [format!("{name}.gz"), name.to_string()] {
                if dir.join(&f).is_file() {
                    return dir.join(f);
                }
            }
        }
        panic!("{name}(.gz) not found in {}", mnist_dir.display());
    };
    let read = |name: &str, ndims: usize| -> Vec<u8> {
        let path = find(name);
        let buf = cnnd::data::read_maybe_gz(&path).unwrap();
        let idx = cnnd::data::parse_idx(&buf, ndims, &path.display().to_string()).unwrap();
        assert!(ndims == 1 || idx.dims[1..] == [28, 28], "{idx:?}");
        buf[idx.offset..].to_vec()
    };
    (
        read("t10k-images-idx3-ubyte", 3),
        read("t10k-labels-idx1-ubyte", 1),
    )
}

/// Light paper tints (RGB).
const PAPER: [[f32; 3]; 5] = [
    [250.0, 244.0, 225.0], // cream
    [228.0, 237.0, 249.0], // light blue
    [234.0, 245.0, 231.0], // pale green
    [238.0, 238.0, 235.0], // light grey
    [249.0, 236.0, 238.0], // pale pink
];

/// Photo-like digits: real MNIST test digits turned into what a phone photo of handwriting
/// looks like.
///
/// Reads the MNIST test set from `mnist_dir` (`t10k-images-idx3-ubyte[.gz]`,
/// `t10k-labels-idx1-ubyte[.gz]`, in `mnist_dir/mnist/` or `mnist_dir/`) with
/// `cnnd::data::read_maybe_gz` and `cnnd::data::parse_idx`, takes the first `n` digits and for
/// each: scales it up 6-10x (bilinear), inverts it to dark ink on light paper, and pastes it off
/// centre (towards a random corner, at least 10 px from the edges) on a 320..=400 x 240..=300
/// canvas of a light paper tint with a slight brightness gradient and mild noise. Saves
/// `out_dir/photo_NNNN.jpg` (JPEG quality 90) for even NNNN and `.png` for odd. Deterministic
/// for `seed`. Returns (path, true label) in MNIST order.
pub fn photo_like_digits(
    mnist_dir: &Path,
    out_dir: &Path,
    n: usize,
    seed: u64,
) -> Vec<(PathBuf, u8)> {
    let (images, labels) = read_mnist_test(mnist_dir);
    assert!(
        n <= labels.len(),
        "asked for {n} digits, MNIST test has {}",
        labels.len()
    );
    fs::create_dir_all(out_dir).unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let digit = GrayImage::from_raw(28, 28, images[i * 784..(i + 1) * 784].to_vec()).unwrap();
        let w = rng.gen_range(320..=400u32);
        let h = rng.gen_range(240..=300u32);
        let margin = 10u32;
        let max_scale = ((h - 2 * margin) / 28).min(w * 3 / 4 / 28).min(10);
        let scale = rng.gen_range(6..=max_scale);
        let side = 28 * scale;
        let big =
            image::imageops::resize(&digit, side, side, image::imageops::FilterType::Triangle);
        // Off centre: towards a random corner, a little away from it.
        let (slack_x, slack_y) = (w - side - 2 * margin, h - side - 2 * margin);
        let off_x = rng.gen_range(0..=slack_x / 4);
        let off_y = rng.gen_range(0..=slack_y / 4);
        let x0 = if rng.gen_bool(0.5) {
            margin + off_x
        } else {
            w - margin - side - off_x
        };
        let y0 = if rng.gen_bool(0.5) {
            margin + off_y
        } else {
            h - margin - side - off_y
        };
        let paper = PAPER[rng.gen_range(0..PAPER.len())];
        let ink = [
            rng.gen_range(15.0..50.0f32),
            rng.gen_range(15.0..50.0f32),
            rng.gen_range(30.0..80.0f32),
        ];
        // Brightness falls off linearly by up to `amount` along a random direction.
        let angle: f32 = rng.gen_range(0.0..std::f32::consts::TAU);
        let (gx, gy) = (angle.cos(), angle.sin());
        let amount: f32 = rng.gen_range(0.03..0.10);
        let span = gx.abs() * w as f32 + gy.abs() * h as f32;
        let start = gx.min(0.0) * w as f32 + gy.min(0.0) * h as f32;
        let mut canvas = RgbImage::new(w, h);
        for (x, y, p) in canvas.enumerate_pixels_mut() {
            let t = ((x as f32 * gx + y as f32 * gy) - start) / span;
            let light = 1.0 - amount * t;
            let a = if x >= x0 && x < x0 + side && y >= y0 && y < y0 + side {
                big.get_pixel(x - x0, y - y0)[0] as f32 / 255.0
            } else {
                0.0
            };
            let noise: f32 = rng.gen_range(-5.0..5.0);
            *p = Rgb(std::array::from_fn(|c| {
                let bg = paper[c] * light;
                (bg * (1.0 - a) + ink[c] * a + noise)
                    .clamp(0.0, 255.0)
                    .round() as u8
            }));
        }
        let (format, ext) = if i % 2 == 0 {
            (ImageFormat::Jpeg, "jpg")
        } else {
            (ImageFormat::Png, "png")
        };
        let path = out_dir.join(format!("photo_{i:04}.{ext}"));
        save(&DynamicImage::ImageRgb8(canvas), &path, format, 90);
        out.push((path, labels[i]));
    }
    out
}
