//! Test data the tests generate: real files in the real published formats (IDX as MNIST ships
//! it, CIFAR-10 binary batches, image folders of PNG/JPEG/BMP files (geometric patterns, or
//! smiling and frowning faces like the seed notebook's happy/unhappy set), photo-like digit
//! pictures),
//! deterministic for a seed, so the crate's readers are tested against bytes they will meet.
//!
//! Owns: the writers and generators below. Must not touch: the daemon harness (`common/mod.rs`)
//! or any reader (they live in the trainer, `cnnd_worker::data`, whose tests use these files
//! too); nothing here reads back what it wrote except `photo_like_digits`, which reads MNIST
//! through the IDX format of `cnnd_core::idx`. No libtorch here: the daemon's tests use it.
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
    let names = cnnd_core::datasets::CIFAR10_CLASSES;
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
    /// "stripes" (horizontal), "vstripes", "cross", "ring", "checker", "triangle", and the
    /// faces "happy" (smiling) and "unhappy" (frowning), see [`FaceParams`]); any other name
    /// gets the first pattern no other class uses.
    pub classes: Vec<&'static str>,
    pub train_per_class: usize,
    /// 0: no validation folder.
    pub val_per_class: usize,
    /// 0: no test folder.
    pub test_per_class: usize,
    pub seed: u64,
}

/// The drawable patterns, by index. The faces come last, so that classes of other names get a
/// geometric pattern first.
const PATTERNS: [&str; 10] = [
    "circle", "square", "stripes", "vstripes", "cross", "ring", "checker", "triangle", "happy",
    "unhappy",
];
/// Index of the smiling face in [`PATTERNS`]; the frowning one follows it.
const HAPPY: usize = 8;
const UNHAPPY: usize = 9;

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
        "happy" | "smile" | "smiling" => HAPPY,
        "unhappy" | "sad" | "frown" | "frowning" => UNHAPPY,
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

/// Realistic skin tones (RGB, 0..1), light to dark.
const SKIN: [[f32; 3]; 7] = [
    [0.96, 0.80, 0.69],
    [0.92, 0.72, 0.58],
    [0.84, 0.62, 0.47],
    [0.76, 0.57, 0.40],
    [0.65, 0.45, 0.31],
    [0.55, 0.36, 0.24],
    [0.40, 0.26, 0.18],
];

/// Hair colours (RGB, 0..1): black, dark brown, brown, blond, red, grey.
const HAIR: [[f32; 3]; 6] = [
    [0.06, 0.05, 0.05],
    [0.20, 0.12, 0.07],
    [0.38, 0.24, 0.13],
    [0.80, 0.66, 0.40],
    [0.62, 0.27, 0.12],
    [0.62, 0.62, 0.60],
];

fn luma(p: [f32; 3]) -> f32 {
    0.299 * p[0] + 0.587 * p[1] + 0.114 * p[2]
}

/// Coverage of a pixel by a shape whose signed distance (pixels, negative inside) from the
/// pixel centre to its edge is `d`: a one-pixel soft edge.
fn coverage(d: f32) -> f32 {
    (0.5 - d).clamp(0.0, 1.0)
}

fn blend(px: &mut [f32; 3], colour: [f32; 3], alpha: f32) {
    for c in 0..3 {
        px[c] += (colour[c] - px[c]) * alpha;
    }
}

/// Signed distance (approximate, pixels) from `(u, v)` to an axis-aligned ellipse.
fn ellipse_distance(u: f32, v: f32, cu: f32, cv: f32, ra: f32, rb: f32) -> f32 {
    let q = (((u - cu) / ra).powi(2) + ((v - cv) / rb).powi(2)).sqrt();
    (q - 1.0) * ra.min(rb)
}

/// Distance (pixels) from `(u, v)` to the segment `a`-`b`.
fn segment_distance(u: f32, v: f32, a: (f32, f32), b: (f32, f32)) -> f32 {
    let (du, dv) = (b.0 - a.0, b.1 - a.1);
    let len2 = (du * du + dv * dv).max(1e-6);
    let t = (((u - a.0) * du + (v - a.1) * dv) / len2).clamp(0.0, 1.0);
    ((u - a.0 - t * du).powi(2) + (v - a.1 - t * dv).powi(2)).sqrt()
}

/// A line segment between two points of a face's frame.
pub type Segment = ((f32, f32), (f32, f32));

/// Everything random about one face picture except its expression: the same parameters drawn
/// happy and unhappy (with the same noise) differ only at the mouth, whose arc curves up
/// (corners higher than the middle: a smile) or down (a frown).
///
/// Lengths are in pixels. The face has its own frame: `u` along the face's width, `v` down
/// its height, origin at the face centre (`cx`, `cy` in the image), turned by `angle`; see
/// [`FaceParams::to_image`] and [`FaceParams::to_face`].
#[derive(Debug, Clone, PartialEq)]
pub struct FaceParams {
    /// Image size.
    pub w: u32,
    pub h: u32,
    /// Background: a linear gradient from `bg0` to `bg1` along the direction `bg_angle`.
    pub bg0: [f32; 3],
    pub bg1: [f32; 3],
    pub bg_angle: f32,
    /// Hair colour and how far down the sides it reaches (`v`, as a fraction of `b`); `None`:
    /// no hair.
    pub hair: Option<([f32; 3], f32)>,
    pub skin: [f32; 3],
    /// Face centre in image coordinates, half width `a` and half height `b` of the face
    /// ellipse, and its rotation (radians, clockwise in the image).
    pub cx: f32,
    pub cy: f32,
    pub a: f32,
    pub b: f32,
    pub angle: f32,
    /// Eye centres (left, right), their half width and half height, and colour.
    pub eyes: [(f32, f32); 2],
    pub eye_ra: f32,
    pub eye_rb: f32,
    pub eye_colour: [f32; 3],
    /// Eyebrows: two segments and their thickness; `None`: no eyebrows.
    pub brows: Option<([Segment; 2], f32)>,
    /// Mouth: the middle of its arc's band (`mouth_u`, `mouth_v`), half width, depth of the
    /// curve (the middle and the corners are `curve` apart in `v`), line thickness, colour.
    pub mouth_u: f32,
    pub mouth_v: f32,
    pub mouth_half_width: f32,
    pub curve: f32,
    pub thickness: f32,
    pub mouth_colour: [f32; 3],
    /// Overall brightness factor (lighting).
    pub light: f32,
}

impl FaceParams {
    /// Draws the parameters of a `w x h` face picture from `rng`: a skin-toned ellipse of
    /// 55-85% of the smaller side, off centre and slightly turned, on a random two-colour
    /// gradient that is kept apart from the skin's brightness; optional hair and eyebrows;
    /// jittered dark eyes; a mouth of random width, thickness, depth of curve and height.
    pub fn sample(w: u32, h: u32, rng: &mut ChaCha8Rng) -> FaceParams {
        let (wf, hf) = (w as f32, h as f32);
        let m = wf.min(hf);
        let tone = SKIN[rng.gen_range(0..SKIN.len())];
        let skin = tone.map(|c| (c + rng.gen_range(-0.04..0.04f32)).clamp(0.0, 1.0));
        let mut bg0: [f32; 3] = std::array::from_fn(|_| rng.gen_range(0.05..0.95f32));
        let mut bg1: [f32; 3] =
            std::array::from_fn(|c| (bg0[c] + rng.gen_range(-0.35..0.35f32)).clamp(0.0, 1.0));
        let bg_angle = rng.gen_range(0.0..std::f32::consts::TAU);
        // Keep the background's brightness away from the skin's, so the face stands out
        // (in gray images too).
        let mean = luma(std::array::from_fn(|c| (bg0[c] + bg1[c]) / 2.0));
        if (mean - luma(skin)).abs() < 0.15 {
            let darker = luma(skin) > 0.45;
            for bg in [&mut bg0, &mut bg1] {
                for v in bg.iter_mut() {
                    *v = if darker {
                        *v * 0.45
                    } else {
                        1.0 - (1.0 - *v) * 0.35
                    };
                }
            }
        }
        let b = m * rng.gen_range(0.55..0.85f32) / 2.0;
        let a = b * rng.gen_range(0.74..0.92f32);
        let angle = rng.gen_range(-0.22..0.22f32);
        let slack_x = (wf / 2.0 - a).max(0.0);
        let slack_y = (hf / 2.0 - b).max(0.0);
        let cx = wf / 2.0 + slack_x * rng.gen_range(-0.8..0.8f32);
        let cy = hf / 2.0 + slack_y * rng.gen_range(-0.8..0.8f32);
        let hair = if rng.gen_bool(0.6) {
            let colour = HAIR[rng.gen_range(0..HAIR.len())];
            Some((colour, rng.gen_range(-0.2..0.3f32)))
        } else {
            None
        };
        let eye_v = -b * rng.gen_range(0.12..0.30f32);
        let eye_u = a * rng.gen_range(0.30..0.44f32);
        let jitter = |rng: &mut ChaCha8Rng| a * rng.gen_range(-0.04..0.04f32);
        let eyes = [
            (-eye_u + jitter(rng), eye_v + jitter(rng)),
            (eye_u + jitter(rng), eye_v + jitter(rng)),
        ];
        let eye_ra = (a * rng.gen_range(0.08..0.13f32)).max(0.9);
        let eye_rb = eye_ra * rng.gen_range(1.0..1.5f32);
        let g = rng.gen_range(0.03..0.14f32);
        let eye_colour = [
            g,
            g * rng.gen_range(0.8..1.2f32),
            g * rng.gen_range(0.8..1.3f32),
        ];
        let brows = if rng.gen_bool(0.5) {
            let up = eye_rb + b * rng.gen_range(0.10..0.18f32);
            let half = a * rng.gen_range(0.12..0.19f32);
            // Inner ends up or down alike on both sides, whatever the expression.
            let tilt = rng.gen_range(-0.3..0.3f32);
            let (du, dv) = (half * tilt.cos(), half * tilt.sin());
            let seg = |(eu, ev): (f32, f32), side: f32| {
                let c = (eu, ev - up);
                ((c.0 - du, c.1 + side * dv), (c.0 + du, c.1 - side * dv))
            };
            let thick = (b * rng.gen_range(0.035..0.06f32)).max(0.8);
            Some(([seg(eyes[0], 1.0), seg(eyes[1], -1.0)], thick))
        } else {
            None
        };
        let mouth_u = a * rng.gen_range(-0.06..0.06f32);
        let mouth_v = b * rng.gen_range(0.36..0.54f32);
        let mouth_half_width = (a * rng.gen_range(0.32..0.55f32)).max(2.0);
        let curve = (b * rng.gen_range(0.14..0.24f32)).max(1.5);
        let thickness = (b * rng.gen_range(0.07..0.12f32)).max(1.4);
        let f = rng.gen_range(0.8..1.0f32);
        let mouth_colour = [skin[0] * 0.55 * f, skin[1] * 0.25 * f, skin[2] * 0.30 * f];
        let light = rng.gen_range(0.85..1.1f32);
        FaceParams {
            w,
            h,
            bg0,
            bg1,
            bg_angle,
            hair,
            skin,
            cx,
            cy,
            a,
            b,
            angle,
            eyes,
            eye_ra,
            eye_rb,
            eye_colour,
            brows,
            mouth_u,
            mouth_v,
            mouth_half_width,
            curve,
            thickness,
            mouth_colour,
            light,
        }
    }

    /// Face coordinates `(u, v)` of the image point `(x, y)` (pixel centres are at +0.5).
    pub fn to_face(&self, x: f32, y: f32) -> (f32, f32) {
        let (s, c) = self.angle.sin_cos();
        let (dx, dy) = (x - self.cx, y - self.cy);
        (dx * c + dy * s, -dx * s + dy * c)
    }

    /// Image coordinates `(x, y)` of the face point `(u, v)`.
    pub fn to_image(&self, u: f32, v: f32) -> (f32, f32) {
        let (s, c) = self.angle.sin_cos();
        (self.cx + u * c - v * s, self.cy + u * s + v * c)
    }

    /// `v` of the mouth's centre line at `u` (for `|u - mouth_u| <= mouth_half_width`): the
    /// middle is `curve / 2` below `mouth_v` for a smile (corners above it), above for a frown.
    pub fn mouth_line(&self, happy: bool, u: f32) -> f32 {
        let s = if happy { 1.0 } else { -1.0 };
        let t = (u - self.mouth_u) / self.mouth_half_width;
        self.mouth_v + s * self.curve * (0.5 - t * t)
    }

    /// Signed distance (pixels) from the face point `(u, v)` to the mouth's edge: a stroke of
    /// `thickness` with round ends along the centre line (as 24 segments).
    fn mouth_distance(&self, happy: bool, u: f32, v: f32) -> f32 {
        let hw = self.mouth_half_width;
        let r = self.thickness / 2.0;
        if (u - self.mouth_u).abs() > hw + r + 1.0
            || (v - self.mouth_v).abs() > self.curve / 2.0 + r + 1.0
        {
            return f32::INFINITY;
        }
        const SEGMENTS: usize = 24;
        let point = |i: usize| {
            let u = self.mouth_u + hw * (2.0 * i as f32 / SEGMENTS as f32 - 1.0);
            (u, self.mouth_line(happy, u))
        };
        (0..SEGMENTS)
            .map(|i| segment_distance(u, v, point(i), point(i + 1)))
            .fold(f32::INFINITY, f32::min)
            - r
    }
}

/// Draws the face `p` smiling (`happy`) or frowning as RGB floats in 0..1, with mild noise
/// drawn from `rng` (the same number of draws whatever the expression).
pub fn draw_face(p: &FaceParams, happy: bool, rng: &mut ChaCha8Rng) -> Vec<[f32; 3]> {
    let (wf, hf) = (p.w as f32, p.h as f32);
    let (gx, gy) = (p.bg_angle.cos(), p.bg_angle.sin());
    let span = (gx.abs() * wf + gy.abs() * hf).max(1.0);
    let start = gx.min(0.0) * wf + gy.min(0.0) * hf;
    let mut out = Vec::with_capacity((p.w * p.h) as usize);
    for y in 0..p.h {
        for x in 0..p.w {
            let (px, py) = (x as f32 + 0.5, y as f32 + 0.5);
            let t = ((px * gx + py * gy) - start) / span;
            let mut c: [f32; 3] = std::array::from_fn(|i| p.bg0[i] + (p.bg1[i] - p.bg0[i]) * t);
            let (u, v) = p.to_face(px, py);
            if let Some((hair, low)) = p.hair {
                let d = ellipse_distance(u, v, 0.0, -p.b * 0.1, p.a * 1.12, p.b * 1.04)
                    .max(v - p.b * low);
                blend(&mut c, hair, coverage(d));
            }
            let d = ellipse_distance(u, v, 0.0, 0.0, p.a, p.b);
            let on_face = coverage(d);
            if on_face > 0.0 {
                // Rounded shading: darker towards the edge.
                let q2 = (u / p.a).powi(2) + (v / p.b).powi(2);
                let shade = 1.0 - 0.16 * q2.min(1.0);
                blend(&mut c, p.skin.map(|s| s * shade), on_face);
                if let Some((brows, thick)) = p.brows {
                    for (s, e) in brows {
                        let d = segment_distance(u, v, s, e) - thick / 2.0;
                        blend(&mut c, p.eye_colour, coverage(d) * on_face);
                    }
                }
                for (eu, ev) in p.eyes {
                    let d = ellipse_distance(u, v, eu, ev, p.eye_ra, p.eye_rb);
                    blend(&mut c, p.eye_colour, coverage(d) * on_face);
                }
                let d = p.mouth_distance(happy, u, v);
                blend(&mut c, p.mouth_colour, coverage(d) * on_face);
            }
            let noise: f32 = rng.gen_range(-0.045..0.045);
            let tint: [f32; 3] = std::array::from_fn(|_| rng.gen_range(-0.015..0.015f32));
            out.push(std::array::from_fn(|i| {
                ((c[i] + noise + tint[i]) * p.light).clamp(0.0, 1.0)
            }));
        }
    }
    out
}

/// The face `p` smiling (`happy`) or frowning as an RGB image, its noise drawn from a ChaCha8
/// stream seeded by `noise_seed` (same seed: the two expressions differ only at the mouth).
pub fn face_picture(p: &FaceParams, happy: bool, noise_seed: u64) -> RgbImage {
    let px = draw_face(p, happy, &mut ChaCha8Rng::seed_from_u64(noise_seed));
    match to_image(&px, p.w, p.h, Mode::Rgb8) {
        DynamicImage::ImageRgb8(img) => img,
        _ => unreachable!(),
    }
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
/// position, size and colour (or, for "happy"/"unhappy", a face, see [`FaceParams`]), MIXED sizes (24..=96 px wide and high, independently), modes
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
                let px = if pattern == HAPPY || pattern == UNHAPPY {
                    let face = FaceParams::sample(w, h, &mut rng);
                    draw_face(&face, pattern == HAPPY, &mut rng)
                } else {
                    draw(pattern, w, h, &mut rng)
                };
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
        let buf = read_maybe_gz(&path);
        let idx = cnnd_core::idx::parse_idx(&buf, ndims, &path.display().to_string()).unwrap();
        assert!(ndims == 1 || idx.dims[1..] == [28, 28], "{idx:?}");
        buf[idx.offset..].to_vec()
    };
    (
        read("t10k-images-idx3-ubyte", 3),
        read("t10k-labels-idx1-ubyte", 1),
    )
}

/// A whole file, gunzipped when it starts with gzip's magic bytes.
fn read_maybe_gz(path: &Path) -> Vec<u8> {
    use std::io::Read;
    let raw = fs::read(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    if raw.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(raw.as_slice())
            .read_to_end(&mut out)
            .unwrap_or_else(|e| panic!("gunzipping {}: {e}", path.display()));
        out
    } else {
        raw
    }
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
/// `cnnd_core::idx::parse_idx`, takes the first `n` digits and for
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
