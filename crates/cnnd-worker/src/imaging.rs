//! Image files to model input: decoding under limits (a decompression bomb is refused from its
//! header, before any pixel buffer is allocated), conversion of any colour mode to gray or RGB
//! with alpha composited over white, stretching to the model's square input with
//! `fast_image_resize`, and the MNIST-style preprocessing of photographed digits.
//!
//! Owns: [`DecodeLimits`], [`ImagingError`], [`decode`], [`decode_file`], [`Resample`],
//! [`to_model_input`], [`mnist_style`], [`gray_to_input`].
//! Must not touch: tensors, data sets, models or the control plane; it works on bytes, `image`
//! buffers and plain `Vec<f32>`.

use std::borrow::Cow;
use std::fs::File;
use std::io::{Cursor, Read};
use std::path::{Path, PathBuf};

use fast_image_resize as fr;
use image::{DynamicImage, GrayImage, ImageReader, RgbImage};

/// What [`decode`] accepts: the encoded size and the decoded pixel count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodeLimits {
    /// Largest encoded file, in bytes.
    pub max_bytes: u64,
    /// Largest `width * height`, read from the header before decoding.
    pub max_pixels: u64,
}

impl Default for DecodeLimits {
    /// 32 MiB and 40 megapixels.
    fn default() -> Self {
        DecodeLimits {
            max_bytes: 32 * 1024 * 1024,
            max_pixels: 40_000_000,
        }
    }
}

/// Why an image could not be decoded or preprocessed.
#[derive(Debug, thiserror::Error)]
pub enum ImagingError {
    /// The encoded bytes exceed [`DecodeLimits::max_bytes`].
    #[error(
        "image is {}, the limit is {}",
        fmt_pair(*.bytes, *.limit, fmt_bytes).0,
        fmt_pair(*.bytes, *.limit, fmt_bytes).1
    )]
    TooManyBytes { bytes: u64, limit: u64 },
    /// The header's dimensions exceed [`DecodeLimits::max_pixels`].
    #[error(
        "image is {width}x{height} ({}), the limit is {}",
        fmt_pair(u64::from(*.width) * u64::from(*.height), *.limit, fmt_pixels).0,
        fmt_pair(u64::from(*.width) * u64::from(*.height), *.limit, fmt_pixels).1
    )]
    TooManyPixels { width: u32, height: u32, limit: u64 },
    /// The header says the image is empty.
    #[error("image is {width}x{height}: it has no pixels")]
    NoPixels { width: u32, height: u32 },
    /// Unknown format, unsupported format, corrupt or truncated data.
    #[error("not a decodable image (PNG, JPEG, BMP, WebP): {0}")]
    NotAnImage(String),
    /// The decoder refused to allocate more than the memory limit derived from the limits.
    #[error("image is too large to decode within the memory limit: {0}")]
    DecoderLimit(String),
    /// The file could not be read.
    #[error("cannot read: {0}")]
    Io(std::io::Error),
    /// Any of the above for one file; the message names the path.
    #[error("image file {}: {error}", path.display())]
    File {
        path: PathBuf,
        error: Box<ImagingError>,
    },
    /// [`mnist_style`] found nothing that stands out from the background.
    #[error("no ink found: the image is blank after thresholding")]
    NoInk,
}

/// A value and its limit as text ("41.3 MiB", "32 MiB"); the value exact in the base unit
/// when one decimal would make it look equal to the limit.
fn fmt_pair(value: u64, limit: u64, fmt: fn(u64, bool) -> String) -> (String, String) {
    let limit = fmt(limit, true);
    let mut value_text = fmt(value, false);
    if value_text.replace(".0 ", " ") == limit {
        value_text = fmt(value, true);
    }
    (value_text, limit)
}

/// Bytes as "N bytes", "x.y KiB" or "x.y MiB" (see [`scaled`]).
fn fmt_bytes(n: u64, exact: bool) -> String {
    scaled(n, &[(1 << 20, "MiB"), (1 << 10, "KiB")], "bytes", exact)
}

/// Pixels as "N px" or "x.y Mpx" (see [`scaled`]).
fn fmt_pixels(n: u64, exact: bool) -> String {
    scaled(n, &[(1_000_000, "Mpx")], "px", exact)
}

/// `n` in the largest unit it reaches: whole when it is a whole number of the unit, else with
/// one decimal; with `exact`, in the base unit when one decimal would not be exact.
fn scaled(n: u64, units: &[(u64, &str)], base: &str, exact: bool) -> String {
    for &(size, name) in units {
        if n >= size {
            let rest = n % size;
            if rest == 0 {
                return format!("{} {name}", n / size);
            }
            if exact && !(rest * 10).is_multiple_of(size) {
                break;
            }
            return format!("{:.1} {name}", n as f64 / size as f64);
        }
    }
    format!("{n} {base}")
}

/// Decodes a PNG, JPEG, BMP or WebP image from memory, within `limits`.
///
/// The size is checked first; then the format is guessed from the content and only the header
/// is read to check the dimensions, so an image that claims huge dimensions is refused before
/// any pixel buffer exists. The decode itself runs under `image::Limits` (maximum width,
/// height and allocation) as a second guard.
pub fn decode(bytes: &[u8], limits: &DecodeLimits) -> Result<DynamicImage, ImagingError> {
    let len = bytes.len() as u64;
    if len > limits.max_bytes {
        return Err(ImagingError::TooManyBytes {
            bytes: len,
            limit: limits.max_bytes,
        });
    }
    let reader = || {
        let reader = ImageReader::new(Cursor::new(bytes))
            .with_guessed_format()
            .map_err(|e| ImagingError::NotAnImage(e.to_string()))?;
        if reader.format().is_none() {
            return Err(ImagingError::NotAnImage(
                "the content matches no known image format".to_string(),
            ));
        }
        Ok(reader)
    };

    // Header only: building the decoder parses the header, not the pixel data.
    let mut probe = reader()?;
    probe.no_limits();
    let (width, height) = probe.into_dimensions().map_err(from_image_error)?;
    if width == 0 || height == 0 {
        return Err(ImagingError::NoPixels { width, height });
    }
    if u64::from(width) * u64::from(height) > limits.max_pixels {
        return Err(ImagingError::TooManyPixels {
            width,
            height,
            limit: limits.max_pixels,
        });
    }

    let mut reader = reader()?;
    reader.limits(image_limits(limits));
    reader.decode().map_err(from_image_error)
}

/// `image::Limits` matching `limits`: no side longer than the pixel limit, and an allocation
/// cap of 8 bytes per allowed pixel (16-bit RGBA, the widest these formats decode to) plus
/// 64 MiB of decoder working memory.
fn image_limits(limits: &DecodeLimits) -> image::Limits {
    let side = u32::try_from(limits.max_pixels).unwrap_or(u32::MAX);
    let mut out = image::Limits::default();
    out.max_image_width = Some(side);
    out.max_image_height = Some(side);
    out.max_alloc = Some(limits.max_pixels.saturating_mul(8).saturating_add(64 << 20));
    out
}

fn from_image_error(error: image::ImageError) -> ImagingError {
    match error {
        image::ImageError::Limits(e) => ImagingError::DecoderLimit(e.to_string()),
        other => ImagingError::NotAnImage(other.to_string()),
    }
}

/// Reads and decodes one image file within `limits`; every error is an
/// [`ImagingError::File`] that names `path`. A file larger than `max_bytes` is refused from
/// its metadata, without reading it.
pub fn decode_file(path: &Path, limits: &DecodeLimits) -> Result<DynamicImage, ImagingError> {
    let in_file = |error| ImagingError::File {
        path: path.to_path_buf(),
        error: Box::new(error),
    };
    let bytes = read_limited(path, limits.max_bytes).map_err(in_file)?;
    decode(&bytes, limits).map_err(in_file)
}

/// The file's bytes, refusing (from the metadata) a file larger than `max_bytes`; reads at
/// most `max_bytes + 1` so that a file growing meanwhile is still caught by [`decode`].
fn read_limited(path: &Path, max_bytes: u64) -> Result<Vec<u8>, ImagingError> {
    let file = File::open(path).map_err(ImagingError::Io)?;
    let len = file.metadata().map_err(ImagingError::Io)?.len();
    if len > max_bytes {
        return Err(ImagingError::TooManyBytes {
            bytes: len,
            limit: max_bytes,
        });
    }
    let mut bytes = Vec::with_capacity(len as usize);
    file.take(max_bytes.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(ImagingError::Io)?;
    Ok(bytes)
}

/// Filter used when an image is enlarged (shrinking always averages areas): `Bilinear`
/// (default) or `Bicubic` (Catmull-Rom). Defined in `sweep`, where trials name it.
pub use cnnd_core::sweep::{InputSize, Resample};

/// The model input for `img`: `channels * height * width` floats in 0..1, channel-major (CHW);
/// `size` is one side for a square or an [`InputSize`].
///
/// Any colour mode is accepted: 16-bit and float images are scaled to 8 bits by `image`'s
/// conversions, alpha is composited over white, gray is repeated for 3 channels and colour
/// is reduced to gray with BT.601 luma (0.299 R + 0.587 G + 0.114 B, as PIL's `convert("L")`,
/// Keras and torchvision do). The image is stretched to `height x width` ignoring its aspect
/// ratio (as Keras' `target_size`): area averaging when both sides shrink, `resample` when
/// either side grows, no resampling when the size already matches. An image with no pixels
/// gives zeros.
///
/// # Panics
/// When `channels` is not 1 or 3, or a side is 0; callers validate these.
pub fn to_model_input(
    img: &DynamicImage,
    size: impl Into<InputSize>,
    channels: u32,
    resample: Resample,
) -> Vec<f32> {
    let InputSize {
        height: out_h,
        width: out_w,
    } = size.into();
    assert!(
        channels == 1 || channels == 3,
        "channels must be 1 or 3, got {channels}"
    );
    assert!(out_h > 0 && out_w > 0, "sides must be positive");
    let plane = out_h as usize * out_w as usize;
    let (width, height) = (img.width(), img.height());
    if width == 0 || height == 0 {
        return vec![0.0; channels as usize * plane];
    }
    if channels == 1 {
        let gray = flatten_gray(img);
        let pixels = resize(
            gray.as_raw(),
            (width, height),
            fr::PixelType::U8,
            (out_w, out_h),
            resample,
        );
        gray_bytes_to_input(&pixels)
    } else {
        let rgb = flatten_rgb(img);
        let pixels = resize(
            rgb.as_raw(),
            (width, height),
            fr::PixelType::U8x3,
            (out_w, out_h),
            resample,
        );
        let mut out = vec![0.0; 3 * plane];
        for (i, px) in pixels.chunks_exact(3).enumerate() {
            for (c, &v) in px.iter().enumerate() {
                out[c * plane + i] = f32::from(v) / 255.0;
            }
        }
        out
    }
}

/// A gray image as model input: `height * width` floats in 0..1, row-major.
pub fn gray_to_input(img: &GrayImage) -> Vec<f32> {
    gray_bytes_to_input(img.as_raw())
}

fn gray_bytes_to_input(pixels: &[u8]) -> Vec<f32> {
    pixels.iter().map(|&v| f32::from(v) / 255.0).collect()
}

/// `c` seen through alpha `a` over a white background, rounded.
fn over_white(c: u8, a: u8) -> u8 {
    let (c, a) = (u32::from(c), u32::from(a));
    ((c * a + 255 * (255 - a) + 127) / 255) as u8
}

/// BT.601 luma of an RGB pixel, rounded.
fn luma(r: u8, g: u8, b: u8) -> u8 {
    ((299 * u32::from(r) + 587 * u32::from(g) + 114 * u32::from(b) + 500) / 1000) as u8
}

/// 8-bit RGB version of `img`, alpha composited over white; borrowed when it already is one.
fn flatten_rgb(img: &DynamicImage) -> Cow<'_, RgbImage> {
    if img.color().has_alpha() {
        let rgba = img.to_rgba8();
        let raw = rgba
            .as_raw()
            .chunks_exact(4)
            .flat_map(|p| [0, 1, 2].map(|c| over_white(p[c], p[3])))
            .collect();
        Cow::Owned(RgbImage::from_raw(img.width(), img.height(), raw).expect("sizes match"))
    } else if let Some(rgb) = img.as_rgb8() {
        Cow::Borrowed(rgb)
    } else {
        Cow::Owned(img.to_rgb8())
    }
}

/// 8-bit gray version of `img` (see [`to_model_input`] for the conversion); borrowed when it
/// already is one.
fn flatten_gray(img: &DynamicImage) -> Cow<'_, GrayImage> {
    let color = img.color();
    let (width, height) = (img.width(), img.height());
    let raw: Vec<u8> = if color.has_color() {
        let rgb = flatten_rgb(img);
        rgb.as_raw()
            .chunks_exact(3)
            .map(|p| luma(p[0], p[1], p[2]))
            .collect()
    } else if color.has_alpha() {
        let la = img.to_luma_alpha8();
        la.as_raw()
            .chunks_exact(2)
            .map(|p| over_white(p[0], p[1]))
            .collect()
    } else if let Some(gray) = img.as_luma8() {
        return Cow::Borrowed(gray);
    } else {
        return Cow::Owned(img.to_luma8());
    };
    Cow::Owned(GrayImage::from_raw(width, height, raw).expect("sizes match"))
}

/// Resizes 8-bit pixels (`pixel` is `U8` or `U8x3`) from `from` to `to` (width, height).
///
/// Shrinking (both sides at most the source's) uses `Convolution(FilterType::Box)`, which is
/// area averaging: each output pixel is the mean of the source pixels whose centres fall in
/// its footprint — exactly the covered area's mean when the ratio is an integer; for fractional
/// ratios a border pixel counts wholly or not at all instead of by its covered fraction, as
/// PIL's `BOX` filter. `SuperSampling` is no better: it first drops pixels by nearest-neighbour
/// sampling. When either side grows, `resample` is used: `Convolution(Bilinear)`,
/// `Convolution(CatmullRom)` or `Nearest`. Same size: copied unchanged.
fn resize(
    src: &[u8],
    from: (u32, u32),
    pixel: fr::PixelType,
    to: (u32, u32),
    resample: Resample,
) -> Vec<u8> {
    if from == to {
        return src.to_vec();
    }
    let algorithm = if from.0 >= to.0 && from.1 >= to.1 {
        fr::ResizeAlg::Convolution(fr::FilterType::Box)
    } else {
        match resample {
            Resample::Bilinear => fr::ResizeAlg::Convolution(fr::FilterType::Bilinear),
            Resample::Bicubic => fr::ResizeAlg::Convolution(fr::FilterType::CatmullRom),
            Resample::Nearest => fr::ResizeAlg::Nearest,
        }
    };
    let src = fr::images::ImageRef::new(from.0, from.1, src, pixel)
        .expect("the buffer holds width * height pixels");
    let mut dst = fr::images::Image::new(to.0, to.1, pixel);
    let options = fr::ResizeOptions::new().resize_alg(algorithm);
    fr::Resizer::new()
        .resize(&src, &mut dst, &options)
        .expect("source and destination have the same pixel type");
    dst.into_vec()
}

/// Side of an MNIST image.
const MNIST_SIDE: u32 = 28;
/// Side of the box the digit is fitted into, inside the 28x28 image.
const MNIST_BOX: u32 = 20;
/// Least difference between the brightest ink and the background (after inversion) for
/// anything to count as ink; below it the image is blank (paper grain, sensor noise).
const MIN_INK_CONTRAST: u8 = 48;

/// MNIST-style preprocessing of a photographed (or scanned, or drawn) digit: a 28x28 8-bit
/// gray image, white ink on black, the digit fitted into 20x20 and centred by its centre of
/// mass, like the MNIST images.
///
/// 1. Gray, alpha composited over white (as [`to_model_input`]).
/// 2. Inverted when the background is light: the median of the border pixels is above 127.
/// 3. Noise removal: pixels at or below a threshold become 0. The threshold is Otsu's on the
///    inverted image, but at least a third of the way from the background level (border
///    median) to the brightest pixel, since Otsu splits the background's own noise when the
///    ink is a tiny part of the image. The remaining ink is stretched from the threshold (0)
///    to the median ink level (255, brighter ink saturates), so the stroke's core is white
///    and its edges stay soft. If the brightest pixel is less than 48 levels above the
///    background there is no ink.
/// 4. Cropped to the ink's bounding box.
/// 5. Fitted into 20x20 keeping the aspect ratio (the longest side becomes 20): area
///    averaging when the box shrinks, bilinear when it grows; then scaled so that the
///    brightest pixel is 255 again (averaging dims thin strokes).
/// 6. Pasted into a black 28x28 image so that the ink's centre of mass lands on (14, 14),
///    in pixel-centre coordinates (pixel `i` covers `i..i+1`, so 14 is the image centre),
///    shifted by the rounded difference and clamped so the fitted box stays inside.
///
/// Errors with [`ImagingError::NoInk`] when nothing stands out from the background.
pub fn mnist_style(img: &DynamicImage) -> Result<GrayImage, ImagingError> {
    let gray = flatten_gray(img);
    let (width, height) = gray.dimensions();
    if width == 0 || height == 0 {
        return Err(ImagingError::NoInk);
    }
    let mut pixels = gray.as_raw().clone();

    // 2. Background level from the border; make the ink the bright part.
    let mut border = border_pixels(&pixels, width, height);
    let mut background = median(&mut border);
    if background > 127 {
        pixels.iter_mut().for_each(|p| *p = 255 - *p);
        background = 255 - background;
    }

    // 3. Threshold and stretch.
    let peak = pixels.iter().copied().max().unwrap_or(0);
    if peak.saturating_sub(background) < MIN_INK_CONTRAST {
        return Err(ImagingError::NoInk);
    }
    let floor = background + (peak - background) / 3;
    let threshold = otsu_threshold(&pixels).max(floor);
    let mut ink: Vec<u8> = pixels.iter().copied().filter(|&p| p > threshold).collect();
    let full = median(&mut ink);
    let span = u32::from(full - threshold);
    for p in &mut pixels {
        *p = if *p > threshold {
            ((u32::from(*p - threshold) * 255 + span / 2) / span).min(255) as u8
        } else {
            0
        };
    }

    // 4. Crop to the ink.
    let (x0, y0, x1, y1) = ink_bounds(&pixels, width, height).ok_or(ImagingError::NoInk)?;
    let (box_w, box_h) = (x1 - x0 + 1, y1 - y0 + 1);
    let mut crop = Vec::with_capacity(box_w as usize * box_h as usize);
    for y in y0..=y1 {
        let row = (y * width) as usize;
        crop.extend_from_slice(&pixels[row + x0 as usize..=row + x1 as usize]);
    }

    // 5. Fit into 20x20, keeping the aspect ratio.
    let fit = |short: u32, long: u32| {
        ((f64::from(short) * f64::from(MNIST_BOX) / f64::from(long)).round() as u32).max(1)
    };
    let (fit_w, fit_h) = if box_w >= box_h {
        (MNIST_BOX, fit(box_h, box_w))
    } else {
        (fit(box_w, box_h), MNIST_BOX)
    };
    let mut fitted = resize(
        &crop,
        (box_w, box_h),
        fr::PixelType::U8,
        (fit_w, fit_h),
        Resample::Bilinear,
    );
    // Averaging dims strokes that are thin next to the box; the brightest becomes 255 again.
    let brightest = u32::from(fitted.iter().copied().max().unwrap_or(0));
    if brightest > 0 && brightest < 255 {
        for v in &mut fitted {
            *v = ((u32::from(*v) * 255 + brightest / 2) / brightest) as u8;
        }
    }

    // 6. Centre by the centre of mass.
    let (cx, cy) = centre_of_mass(&fitted, fit_w).ok_or(ImagingError::NoInk)?;
    let centre = f64::from(MNIST_SIDE) / 2.0;
    let place = |com: f64, size: u32| -> u32 {
        let offset = (centre - com).round();
        offset.clamp(0.0, f64::from(MNIST_SIDE - size)) as u32
    };
    let (left, top) = (place(cx, fit_w), place(cy, fit_h));
    let mut out = GrayImage::new(MNIST_SIDE, MNIST_SIDE);
    for (i, &v) in fitted.iter().enumerate() {
        let (x, y) = (i as u32 % fit_w, i as u32 / fit_w);
        out.put_pixel(left + x, top + y, image::Luma([v]));
    }
    Ok(out)
}

/// The pixels of the outermost rows and columns.
fn border_pixels(pixels: &[u8], width: u32, height: u32) -> Vec<u8> {
    let (w, h) = (width as usize, height as usize);
    let mut out = Vec::with_capacity(2 * (w + h));
    for y in 0..h {
        if y == 0 || y == h - 1 {
            out.extend_from_slice(&pixels[y * w..(y + 1) * w]);
        } else {
            out.push(pixels[y * w]);
            if w > 1 {
                out.push(pixels[y * w + w - 1]);
            }
        }
    }
    out
}

fn median(values: &mut [u8]) -> u8 {
    let mid = values.len() / 2;
    *values.select_nth_unstable(mid).1
}

/// Otsu's threshold: the level `t` that maximises the between-class variance of the classes
/// `<= t` and `> t`.
fn otsu_threshold(pixels: &[u8]) -> u8 {
    let mut histogram = [0u64; 256];
    for &p in pixels {
        histogram[p as usize] += 1;
    }
    let total = pixels.len() as f64;
    let sum: f64 = (0..256).map(|i| i as f64 * histogram[i] as f64).sum();
    let (mut weight_low, mut sum_low) = (0.0, 0.0);
    let (mut best, mut best_variance) = (0u8, -1.0);
    for (t, &count) in histogram.iter().enumerate() {
        weight_low += count as f64;
        sum_low += t as f64 * count as f64;
        let weight_high = total - weight_low;
        if weight_low == 0.0 {
            continue;
        }
        if weight_high == 0.0 {
            break;
        }
        let mean_low = sum_low / weight_low;
        let mean_high = (sum - sum_low) / weight_high;
        let variance = weight_low * weight_high * (mean_low - mean_high).powi(2);
        if variance > best_variance {
            best_variance = variance;
            best = t as u8;
        }
    }
    best
}

/// Inclusive bounding box `(x0, y0, x1, y1)` of the non-zero pixels.
fn ink_bounds(pixels: &[u8], width: u32, height: u32) -> Option<(u32, u32, u32, u32)> {
    let mut bounds: Option<(u32, u32, u32, u32)> = None;
    for y in 0..height {
        for x in 0..width {
            if pixels[(y * width + x) as usize] == 0 {
                continue;
            }
            bounds = Some(match bounds {
                None => (x, y, x, y),
                Some((x0, y0, x1, y1)) => (x0.min(x), y0.min(y), x1.max(x), y1.max(y)),
            });
        }
    }
    bounds
}

/// Intensity-weighted centre in pixel-centre coordinates (pixel `i` at `i + 0.5`).
fn centre_of_mass(pixels: &[u8], width: u32) -> Option<(f64, f64)> {
    let (mut total, mut sx, mut sy) = (0.0, 0.0, 0.0);
    for (i, &v) in pixels.iter().enumerate() {
        let v = f64::from(v);
        let (x, y) = ((i as u32 % width) as f64, (i as u32 / width) as f64);
        total += v;
        sx += v * (x + 0.5);
        sy += v * (y + 0.5);
    }
    (total > 0.0).then(|| (sx / total, sy / total))
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::{ImageBuffer, ImageFormat, Luma, Rgb, Rgba, RgbaImage};

    fn encode(img: &DynamicImage, format: ImageFormat) -> Vec<u8> {
        let mut out = Cursor::new(Vec::new());
        img.write_to(&mut out, format).unwrap();
        out.into_inner()
    }

    fn assert_close(actual: &[f32], expected: f32, tolerance: f32) {
        for (i, &v) in actual.iter().enumerate() {
            assert!(
                (v - expected).abs() <= tolerance,
                "value {i} is {v}, expected {expected} ± {tolerance}"
            );
        }
    }

    /// CRC-32 (IEEE) as PNG chunks use it.
    fn crc32(data: &[u8]) -> u32 {
        let mut crc = 0xFFFF_FFFFu32;
        for &byte in data {
            crc ^= u32::from(byte);
            for _ in 0..8 {
                crc = if crc & 1 != 0 {
                    0xEDB8_8320 ^ (crc >> 1)
                } else {
                    crc >> 1
                };
            }
        }
        !crc
    }

    fn png_chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
        out.extend_from_slice(&(data.len() as u32).to_be_bytes());
        let start = out.len();
        out.extend_from_slice(kind);
        out.extend_from_slice(data);
        let crc = crc32(&out[start..]);
        out.extend_from_slice(&crc.to_be_bytes());
    }

    /// A well-formed PNG whose header claims `width x height` 8-bit gray pixels, with a small
    /// compressed IDAT: what a decompression bomb looks like up to its data.
    fn png_claiming(width: u32, height: u32) -> Vec<u8> {
        use std::io::Write;
        let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
        let mut ihdr = Vec::new();
        ihdr.extend_from_slice(&width.to_be_bytes());
        ihdr.extend_from_slice(&height.to_be_bytes());
        ihdr.extend_from_slice(&[8, 0, 0, 0, 0]);
        png_chunk(&mut out, b"IHDR", &ihdr);
        let mut zlib = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::best());
        zlib.write_all(&[0u8; 65536]).unwrap();
        png_chunk(&mut out, b"IDAT", &zlib.finish().unwrap());
        png_chunk(&mut out, b"IEND", &[]);
        out
    }

    #[test]
    fn crc32_matches_the_png_reference() {
        // The IEND chunk's CRC is fixed in every PNG file.
        assert_eq!(crc32(b"IEND"), 0xAE42_6082);
    }

    #[test]
    fn shrinking_a_checkerboard_averages_areas() {
        let board = GrayImage::from_fn(8, 8, |x, y| Luma([if (x + y) % 2 == 0 { 0 } else { 255 }]));
        let img = DynamicImage::ImageLuma8(board);
        let gray = to_model_input(&img, 4, 1, Resample::Bilinear);
        assert_eq!(gray.len(), 16);
        assert_close(&gray, 127.5 / 255.0, 0.51 / 255.0);
        let rgb = to_model_input(&img, 4, 3, Resample::Bicubic);
        assert_eq!(rgb.len(), 48);
        assert_close(&rgb, 127.5 / 255.0, 0.51 / 255.0);
    }

    /// Nearest neighbour enlarges a 2x2 checkerboard to 4x4 by repeating each pixel.
    #[test]
    fn nearest_repeats_pixels() {
        let img = DynamicImage::ImageLuma8(GrayImage::from_fn(2, 2, |x, y| {
            Luma([if (x + y) % 2 == 0 { 0 } else { 255 }])
        }));
        let input = to_model_input(&img, 4, 1, Resample::Nearest);
        let want: Vec<f32> = [
            0., 0., 1., 1., 0., 0., 1., 1., 1., 1., 0., 0., 1., 1., 0., 0.,
        ]
        .to_vec();
        assert_eq!(input, want);
    }

    #[test]
    fn enlarging_a_constant_image_keeps_it_constant() {
        let img = DynamicImage::ImageRgb8(RgbImage::from_pixel(5, 3, Rgb([77, 77, 77])));
        for resample in [Resample::Bilinear, Resample::Bicubic, Resample::Nearest] {
            for channels in [1, 3] {
                let input = to_model_input(&img, 16, channels, resample);
                assert_eq!(input.len(), (channels * 16 * 16) as usize);
                assert_close(&input, 77.0 / 255.0, 1e-6);
            }
        }
        // One side shrinking and the other growing uses the enlarging filter; still constant.
        let wide = DynamicImage::ImageLuma8(GrayImage::from_pixel(40, 2, Luma([200])));
        assert_close(
            &to_model_input(&wide, 8, 1, Resample::Bicubic),
            200.0 / 255.0,
            1e-6,
        );
    }

    #[test]
    fn unchanged_size_is_not_resampled() {
        let img = GrayImage::from_fn(3, 3, |x, y| Luma([(x * 3 + y * 50) as u8]));
        let input = to_model_input(
            &DynamicImage::ImageLuma8(img.clone()),
            3,
            1,
            Resample::Bicubic,
        );
        assert_eq!(input, gray_to_input(&img));
    }

    #[test]
    fn converts_between_one_and_three_channels() {
        let gray = DynamicImage::ImageLuma8(GrayImage::from_pixel(4, 4, Luma([100])));
        assert_close(
            &to_model_input(&gray, 4, 3, Resample::Bilinear),
            100.0 / 255.0,
            1e-6,
        );

        let rgb = DynamicImage::ImageRgb8(RgbImage::from_pixel(4, 4, Rgb([10, 20, 30])));
        let chw = to_model_input(&rgb, 2, 3, Resample::Bilinear);
        assert_close(&chw[0..4], 10.0 / 255.0, 1e-6);
        assert_close(&chw[4..8], 20.0 / 255.0, 1e-6);
        assert_close(&chw[8..12], 30.0 / 255.0, 1e-6);

        let red = DynamicImage::ImageRgb8(RgbImage::from_pixel(4, 4, Rgb([255, 0, 0])));
        // BT.601: 0.299 * 255 = 76.2.
        assert_close(
            &to_model_input(&red, 4, 1, Resample::Bilinear),
            76.0 / 255.0,
            1e-6,
        );
    }

    #[test]
    fn decodes_sixteen_bit_gray_png() {
        let img = ImageBuffer::from_fn(2, 2, |x, _| {
            Luma([if x == 0 { 65535u16 } else { 128 * 257 }])
        });
        let bytes = encode(&DynamicImage::ImageLuma16(img), ImageFormat::Png);
        let decoded = decode(&bytes, &DecodeLimits::default()).unwrap();
        assert_eq!(decoded.color(), image::ColorType::L16);
        let input = to_model_input(&decoded, 2, 1, Resample::Bilinear);
        assert_eq!(input.len(), 4);
        for row in input.chunks(2) {
            assert_close(&row[..1], 1.0, 1e-6);
            assert_close(&row[1..], 128.0 / 255.0, 1e-6);
        }
    }

    #[test]
    fn decodes_rgba_png_with_transparency_over_white() {
        let img = RgbaImage::from_fn(3, 3, |x, _| match x {
            0 => Rgba([0, 0, 0, 0]),     // transparent: white
            1 => Rgba([0, 0, 0, 255]),   // opaque black
            _ => Rgba([255, 0, 0, 128]), // half red over white
        });
        let bytes = encode(&DynamicImage::ImageRgba8(img), ImageFormat::Png);
        let decoded = decode(&bytes, &DecodeLimits::default()).unwrap();
        assert!(decoded.color().has_alpha());
        let rgb = to_model_input(&decoded, 3, 3, Resample::Bilinear);
        let expected = [
            [1.0, 0.0, 1.0],
            [1.0, 0.0, 127.0 / 255.0],
            [1.0, 0.0, 127.0 / 255.0],
        ];
        // Per channel and column; every row is the same.
        for (c, plane) in expected.iter().enumerate() {
            for (i, v) in rgb[c * 9..(c + 1) * 9].iter().enumerate() {
                let want = plane[i % 3];
                assert!((v - want).abs() < 1e-6, "channel {c} pixel {i}: {rgb:?}");
            }
        }
        let gray = to_model_input(&decoded, 3, 1, Resample::Bilinear);
        for row in gray.chunks(3) {
            assert_close(&row[..1], 1.0, 1e-6);
            assert_close(&row[1..2], 0.0, 1e-6);
            // 0.299 * 255 + 0.701 * 127 = 165.3
            assert_close(&row[2..], 165.0 / 255.0, 1e-6);
        }
    }

    #[test]
    fn decodes_every_supported_format() {
        let rgb = DynamicImage::ImageRgb8(RgbImage::from_fn(9, 7, |x, y| {
            Rgb([(x * 20) as u8, (y * 30) as u8, 90])
        }));
        for format in [
            ImageFormat::Png,
            ImageFormat::Jpeg,
            ImageFormat::Bmp,
            ImageFormat::WebP,
        ] {
            let decoded = decode(&encode(&rgb, format), &DecodeLimits::default())
                .unwrap_or_else(|e| panic!("{format:?}: {e}"));
            assert_eq!((decoded.width(), decoded.height()), (9, 7), "{format:?}");
        }
    }

    #[test]
    fn refuses_too_many_bytes() {
        let bytes = encode(
            &DynamicImage::ImageLuma8(GrayImage::from_fn(32, 32, |x, y| Luma([(x ^ y) as u8]))),
            ImageFormat::Png,
        );
        let limits = DecodeLimits {
            max_bytes: 100,
            ..DecodeLimits::default()
        };
        let error = decode(&bytes, &limits).unwrap_err();
        assert!(
            matches!(error, ImagingError::TooManyBytes { .. }),
            "{error:?}"
        );
        assert_eq!(
            error.to_string(),
            format!("image is {} bytes, the limit is 100 bytes", bytes.len())
        );
        let big = ImagingError::TooManyBytes {
            bytes: 41 * 1024 * 1024 + 300 * 1024,
            limit: 32 * 1024 * 1024,
        };
        assert_eq!(big.to_string(), "image is 41.3 MiB, the limit is 32 MiB");
        let close = ImagingError::TooManyBytes {
            bytes: 32 * 1024 * 1024 + 1,
            limit: 32 * 1024 * 1024,
        };
        assert_eq!(
            close.to_string(),
            "image is 33554433 bytes, the limit is 32 MiB"
        );
    }

    #[test]
    fn refuses_a_decompression_bomb_from_its_header() {
        let bomb = png_claiming(100_000, 100_000);
        assert!(bomb.len() < 1000);
        let error = decode(&bomb, &DecodeLimits::default()).unwrap_err();
        assert!(
            matches!(error, ImagingError::TooManyPixels { .. }),
            "{error:?}"
        );
        assert_eq!(
            error.to_string(),
            "image is 100000x100000 (10000 Mpx), the limit is 40 Mpx"
        );
        let small = DecodeLimits {
            max_pixels: 100,
            ..DecodeLimits::default()
        };
        let img = DynamicImage::ImageLuma8(GrayImage::new(20, 20));
        let error = decode(&encode(&img, ImageFormat::Png), &small).unwrap_err();
        assert_eq!(
            error.to_string(),
            "image is 20x20 (400 px), the limit is 100 px"
        );
    }

    #[test]
    fn refuses_garbage_and_truncated_data() {
        let error = decode(b"this is not an image at all", &DecodeLimits::default()).unwrap_err();
        assert!(matches!(error, ImagingError::NotAnImage(_)), "{error:?}");
        assert!(
            error
                .to_string()
                .starts_with("not a decodable image (PNG, JPEG, BMP, WebP): "),
            "{error}"
        );
        let img = DynamicImage::ImageRgb8(RgbImage::from_fn(64, 64, |x, y| {
            Rgb([(x * 4) as u8, (y * 4) as u8, (x ^ y) as u8])
        }));
        let png = encode(&img, ImageFormat::Png);
        let error = decode(&png[..png.len() / 2], &DecodeLimits::default()).unwrap_err();
        assert!(matches!(error, ImagingError::NotAnImage(_)), "{error:?}");
    }

    #[test]
    fn file_errors_name_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.png");
        let error = decode_file(&missing, &DecodeLimits::default()).unwrap_err();
        let text = error.to_string();
        assert!(
            text.starts_with(&format!("image file {}: cannot read: ", missing.display())),
            "{text}"
        );

        let garbage = dir.path().join("garbage.png");
        std::fs::write(&garbage, b"garbage").unwrap();
        let error = decode_file(&garbage, &DecodeLimits::default()).unwrap_err();
        assert!(error.to_string().contains(&garbage.display().to_string()));
        assert!(
            matches!(&error, ImagingError::File { error, .. } if matches!(**error, ImagingError::NotAnImage(_)))
        );

        let good = dir.path().join("good.bmp");
        DynamicImage::ImageLuma8(GrayImage::new(5, 5))
            .save(&good)
            .unwrap();
        assert_eq!(
            decode_file(&good, &DecodeLimits::default())
                .unwrap()
                .width(),
            5
        );
        let tiny = DecodeLimits {
            max_bytes: 10,
            ..DecodeLimits::default()
        };
        let error = decode_file(&good, &tiny).unwrap_err();
        assert!(
            error.to_string().ends_with("the limit is 10 bytes"),
            "{error}"
        );
    }

    /// Deterministic noise in `-amplitude..=amplitude`.
    fn noise(state: &mut u64, amplitude: i32) -> i32 {
        *state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((*state >> 33) % (2 * amplitude as u64 + 1)) as i32 - amplitude
    }

    fn photo(with_digit: bool) -> DynamicImage {
        let mut state = 7;
        let img = RgbImage::from_fn(300, 240, |x, y| {
            let bar = (40..130).contains(&x) && (30..48).contains(&y);
            let stem = (112..130).contains(&x) && (30..115).contains(&y);
            let base = if with_digit && (bar || stem) {
                [40, 40, 60]
            } else {
                [200, 220, 180]
            };
            Rgb(base.map(|c: i32| (c + noise(&mut state, 10)).clamp(0, 255) as u8))
        });
        DynamicImage::ImageRgb8(img)
    }

    #[test]
    fn mnist_style_centres_a_photographed_digit() {
        let out = mnist_style(&photo(true)).unwrap();
        assert_eq!(out.dimensions(), (28, 28));
        for i in 0..28 {
            for (x, y) in [(i, 0), (i, 27), (0, i), (27, i)] {
                assert_eq!(out.get_pixel(x, y)[0], 0, "border pixel ({x}, {y})");
            }
        }
        let pixels = out.as_raw();
        assert!(*pixels.iter().max().unwrap() >= 250, "ink is white");
        let (x0, y0, x1, y1) = ink_bounds(pixels, 28, 28).unwrap();
        let side = (x1 - x0 + 1).max(y1 - y0 + 1);
        assert!((19..=21).contains(&side), "ink box {x0},{y0}..{x1},{y1}");
        let (cx, cy) = centre_of_mass(pixels, 28).unwrap();
        assert!(
            (cx - 14.0).abs() <= 1.0 && (cy - 14.0).abs() <= 1.0,
            "centre of mass ({cx}, {cy})"
        );
        // Most of the image is background, exactly black.
        assert!(pixels.iter().filter(|&&v| v == 0).count() > 28 * 28 / 2);
    }

    #[test]
    fn mnist_style_keeps_white_ink_on_black() {
        // Already MNIST-like: dark background, light ink; no inversion.
        let img = GrayImage::from_fn(50, 40, |x, y| {
            Luma([if (20..30).contains(&x) && (5..35).contains(&y) {
                230
            } else {
                10
            }])
        });
        let out = mnist_style(&DynamicImage::ImageLuma8(img)).unwrap();
        let (x0, y0, x1, y1) = ink_bounds(out.as_raw(), 28, 28).unwrap();
        assert_eq!(y1 - y0 + 1, 20);
        assert!((6..=8).contains(&(x1 - x0 + 1)), "{x0}..{x1}");
        assert_eq!(out.get_pixel(14, 14)[0], 255);
    }

    #[test]
    fn mnist_style_refuses_a_blank_image() {
        let error = mnist_style(&photo(false)).unwrap_err();
        assert!(matches!(error, ImagingError::NoInk));
        assert_eq!(
            error.to_string(),
            "no ink found: the image is blank after thresholding"
        );
        let white = DynamicImage::ImageLuma8(GrayImage::from_pixel(10, 10, Luma([255])));
        assert!(matches!(mnist_style(&white), Err(ImagingError::NoInk)));
    }

    #[test]
    fn gray_to_input_scales_to_unit_range() {
        let img = GrayImage::from_fn(2, 1, |x, _| Luma([if x == 0 { 0 } else { 255 }]));
        assert_eq!(gray_to_input(&img), vec![0.0, 1.0]);
    }

    #[test]
    fn resample_serialises_in_snake_case() {
        assert_eq!(
            serde_json::to_string(&Resample::Bicubic).unwrap(),
            "\"bicubic\""
        );
        assert_eq!(Resample::default(), Resample::Bilinear);
    }
}
