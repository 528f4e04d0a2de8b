//! Checks the test-data generators (`common::datagen`) against the crate's own readers, so that
//! both sides are real: IDX files read back through `cnnd_worker::data`, CIFAR-10 batches through
//! `cnnd_worker::data::cifar::read`, image folders and photo-like digits through `image::open`.

mod common;

use std::path::Path;

use common::datagen::*;
use image::RgbImage;
use rand::{Rng, RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn decode_as(side: u32, channels: u32) -> cnnd_worker::data::DecodeAs {
    cnnd_worker::data::DecodeAs {
        size: cnnd_core::sweep::InputSize::square(side),
        channels,
        resample: Default::default(),
    }
}

fn bytes(n: usize, seed: u64) -> Vec<u8> {
    let mut v = vec![0u8; n];
    ChaCha8Rng::seed_from_u64(seed).fill_bytes(&mut v);
    v
}

fn labels(n: usize, seed: u64) -> Vec<u8> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..n).map(|_| rng.gen_range(0..10u8)).collect()
}

#[test]
fn mnist_like_files_read_back_exactly() {
    for gzip in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let mnist = dir.path().join("mnist");
        let (tri, trl) = (bytes(7 * 784, 1), labels(7, 2));
        let (tei, tel) = (bytes(3 * 784, 3), labels(3, 4));
        write_mnist_like(&mnist, (&tri, &trl), (&tei, &tel), 7, 3, gzip);
        let sfx = if gzip { ".gz" } else { "" };

        // The IDX reader sees the exact header and payload.
        let path = mnist.join(format!("train-images-idx3-ubyte{sfx}"));
        let raw = std::fs::read(&path).unwrap();
        assert_eq!(raw.starts_with(&[0x1f, 0x8b]), gzip);
        let buf = cnnd_worker::data::read_maybe_gz(&path).unwrap();
        let idx = cnnd_core::idx::parse_idx(&buf, 3, "train images").unwrap();
        assert_eq!(idx.dims, [7, 28, 28]);
        assert_eq!(&buf[idx.offset..], &tri[..]);
        let buf =
            cnnd_worker::data::read_maybe_gz(&mnist.join(format!("t10k-labels-idx1-ubyte{sfx}")))
                .unwrap();
        let idx = cnnd_core::idx::parse_idx(&buf, 1, "test labels").unwrap();
        assert_eq!(idx.dims, [3]);
        assert_eq!(&buf[idx.offset..], &tel[..]);

        // And the whole data set loads through the daemon's loader.
        let info = cnnd_core::datasets::builtin("mnist").unwrap();
        let ds = cnnd_worker::data::load(&info, None, dir.path(), decode_as(28, 1)).unwrap();
        let test = ds.test.expect("MNIST has a test split");
        assert_eq!(ds.train.images.size(), [7, 1, 28, 28]);
        assert_eq!(test.images.size(), [3, 1, 28, 28]);
        let got: Vec<u8> = Vec::<f32>::try_from(ds.train.images.flatten(0, -1) * 255.0)
            .unwrap()
            .iter()
            .map(|v| v.round() as u8)
            .collect();
        assert_eq!(got, tri);
        let got = Vec::<i64>::try_from(&test.labels).unwrap();
        assert_eq!(got, tel.iter().map(|&l| l as i64).collect::<Vec<_>>());
    }
}

#[test]
fn write_idx_writes_the_header_as_specified() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("x.idx");
    write_idx(&p, &[2, 3], &[1, 2, 3, 4, 5, 6], false);
    assert_eq!(
        std::fs::read(&p).unwrap(),
        [0, 0, 8, 2, 0, 0, 0, 2, 0, 0, 0, 3, 1, 2, 3, 4, 5, 6]
    );
    // A deliberately short payload is written as given, and the reader rejects it.
    write_idx(&p, &[2, 3], &[1, 2], true);
    let buf = cnnd_worker::data::read_maybe_gz(&p).unwrap();
    let e = cnnd_core::idx::parse_idx(&buf, 2, "short").unwrap_err();
    assert!(e.to_string().contains("truncated"), "{e}");
}

#[test]
fn cifar_dir_reads_back_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let bin = dir.path().join("cifar-10-batches-bin");
    let (images, labels) = write_cifar_dir(&bin, 6, 42);
    assert_eq!(images.len(), 30 * 3072);
    assert_eq!(labels.len(), 30);
    // Same seed, same files.
    let again = tempfile::tempdir().unwrap();
    assert_eq!(
        write_cifar_dir(again.path(), 6, 42),
        (images.clone(), labels.clone())
    );

    for d in [dir.path(), bin.as_path()] {
        let (train, test, classes) = cnnd_worker::data::cifar::read(d).unwrap();
        assert_eq!(train.images.size(), [30, 3, 32, 32]);
        assert_eq!(test.images.size(), [6, 3, 32, 32]);
        assert_eq!(classes.len(), 10);
        assert_eq!(classes[0], "airplane");
        assert_eq!(classes[9], "truck");
        let got: Vec<u8> = Vec::<f32>::try_from(train.images.flatten(0, -1) * 255.0)
            .unwrap()
            .iter()
            .map(|v| v.round() as u8)
            .collect();
        assert!(got == images, "training pixels differ");
        let got = Vec::<i64>::try_from(&train.labels).unwrap();
        assert_eq!(got, labels.iter().map(|&l| l as i64).collect::<Vec<_>>());
        // Spot check the layout: image 13, green plane, row 7, column 20.
        let v = train.images.double_value(&[13, 1, 7, 20]);
        assert!((v * 255.0 - images[13 * 3072 + 1024 + 7 * 32 + 20] as f64).abs() < 1e-3);
    }

    // And through the daemon's loader, by name.
    let info = cnnd_core::datasets::builtin("cifar10").unwrap();
    let ds = cnnd_worker::data::load(&info, None, dir.path(), decode_as(32, 3)).unwrap();
    assert_eq!(ds.train.images.size(), [30, 3, 32, 32]);
    assert_eq!(ds.test.expect("CIFAR-10 has a test split").len(), 6);
    let got = Vec::<i64>::try_from(&ds.train.labels).unwrap();
    assert_eq!(got, labels.iter().map(|&l| l as i64).collect::<Vec<_>>());

    // A missing batch is named, with the fetch hint.
    std::fs::remove_file(bin.join("data_batch_3.bin")).unwrap();
    let e = cnnd_worker::data::cifar::read(&bin)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("data_batch_3.bin") && e.contains("fetch-data.sh cifar10"),
        "{e}"
    );
}

fn files_in(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    v.sort();
    v
}

#[test]
fn image_folder_has_the_expected_files_and_they_decode() {
    let dir = tempfile::tempdir().unwrap();
    let spec = FolderSpec {
        classes: vec!["circle", "square", "stripes"],
        train_per_class: 9,
        val_per_class: 3,
        test_per_class: 4,
        seed: 7,
    };
    let n = make_image_folder(dir.path(), &spec);
    assert_eq!(n, 3 * (9 + 3 + 4) + 2);
    let root = dir.path();
    assert!(root.join("train/README.txt").is_file());
    let mut exts = std::collections::BTreeSet::new();
    let mut colors = std::collections::BTreeSet::new();
    let mut sizes = std::collections::BTreeSet::new();
    let mut decoded = 0;
    for (split, per) in [("train", 9), ("validation", 3), ("test", 4)] {
        for class in &spec.classes {
            let files = files_in(&root.join(split).join(class));
            let corrupt = (split == "train" && *class == "circle") as usize;
            assert_eq!(files.len(), per + corrupt, "{split}/{class}");
            for f in files {
                if f.file_name().unwrap() == "corrupt.png" {
                    assert!(image::open(&f).is_err(), "corrupt.png decoded");
                    continue;
                }
                let img = image::open(&f).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
                exts.insert(f.extension().unwrap().to_string_lossy().to_string());
                colors.insert(format!("{:?}", img.color()));
                sizes.insert((img.width(), img.height()));
                assert!((24..=96).contains(&img.width()) && (24..=96).contains(&img.height()));
                decoded += 1;
            }
        }
    }
    assert_eq!(decoded, n - 2);
    assert!(exts.contains("png") && exts.contains("jpg"), "{exts:?}");
    if image::ImageFormat::Bmp.writing_enabled() {
        assert!(exts.contains("bmp"), "{exts:?}");
    }
    for c in ["L8", "Rgb8", "Rgba8", "L16"] {
        assert!(colors.contains(c), "no {c} image: {colors:?}");
    }
    assert!(sizes.iter().any(|(w, h)| w != h), "all images square");
    assert!(sizes.len() > 10, "sizes barely vary: {sizes:?}");

    // Deterministic for a seed: a second folder is byte-identical.
    let again = tempfile::tempdir().unwrap();
    make_image_folder(again.path(), &spec);
    for f in files_in(&root.join("test/square")) {
        let g = again
            .path()
            .join("test/square")
            .join(f.file_name().unwrap());
        assert!(
            std::fs::read(&f).unwrap() == std::fs::read(&g).unwrap(),
            "{}",
            f.display()
        );
    }
    // No validation folder when asked for none.
    let none = tempfile::tempdir().unwrap();
    let spec = FolderSpec {
        val_per_class: 0,
        ..spec
    };
    assert_eq!(make_image_folder(none.path(), &spec), 3 * 13 + 2);
    assert!(!none.path().join("validation").exists());
}

#[test]
fn image_folder_classes_differ_visually() {
    // Mean brightness of the centre vs the whole image separates discs from stripes etc.; here
    // only a coarse check that class means differ (the training tests check learnability).
    let dir = tempfile::tempdir().unwrap();
    let spec = FolderSpec {
        classes: vec!["circle", "square", "stripes"],
        train_per_class: 12,
        val_per_class: 0,
        test_per_class: 0,
        seed: 3,
    };
    make_image_folder(dir.path(), &spec);
    // Fraction of bright pixels on the centre row vs the centre column: stripes alternate along
    // the column but not along the row.
    let stripe_score = |class: &str| -> f64 {
        let mut total = 0.0;
        let files: Vec<_> = files_in(&dir.path().join("train").join(class))
            .into_iter()
            .filter(|f| f.file_name().unwrap() != "corrupt.png")
            .collect();
        for f in &files {
            let img = image::open(f).unwrap().to_luma8();
            let (w, h) = img.dimensions();
            let col: Vec<bool> = (0..h).map(|y| img.get_pixel(w / 2, y)[0] > 128).collect();
            let changes = col.windows(2).filter(|p| p[0] != p[1]).count();
            total += changes as f64;
        }
        total / files.len() as f64
    };
    let (c, s, st) = (
        stripe_score("circle"),
        stripe_score("square"),
        stripe_score("stripes"),
    );
    assert!(
        st > 5.0 && st > 1.5 * c.max(s),
        "circle {c} square {s} stripes {st}"
    );
    assert!(
        c <= 2.5,
        "a disc crosses the centre column at most twice: {c}"
    );
}

#[test]
fn photo_like_digits_look_like_photos_of_ink_on_paper() {
    let mnist = common::data_dir();
    let out = tempfile::tempdir().unwrap();
    let photos = photo_like_digits(&mnist, out.path(), 6, 11);
    assert_eq!(photos.len(), 6);
    // The first MNIST test labels are 7 2 1 0 4 1.
    let labels: Vec<u8> = photos.iter().map(|p| p.1).collect();
    assert_eq!(labels, [7, 2, 1, 0, 4, 1]);
    let mut exts = std::collections::BTreeSet::new();
    for (path, _) in &photos {
        assert!(path.is_file(), "{}", path.display());
        exts.insert(path.extension().unwrap().to_string_lossy().to_string());
        let img = image::open(path).unwrap().to_luma8();
        let (w, h) = img.dimensions();
        assert!(w > 200 && h > 200, "{}: {w}x{h}", path.display());
        let border: Vec<u8> = (0..w)
            .flat_map(|x| [img.get_pixel(x, 0)[0], img.get_pixel(x, h - 1)[0]])
            .chain((0..h).flat_map(|y| [img.get_pixel(0, y)[0], img.get_pixel(w - 1, y)[0]]))
            .collect();
        let min = *border.iter().min().unwrap();
        assert!(min > 150, "{}: dark border pixel {min}", path.display());
        let darkest = img.pixels().map(|p| p[0]).min().unwrap();
        assert!(darkest < 90, "{}: no dark ink ({darkest})", path.display());
        // Off centre: the ink's centre of mass is away from the canvas centre.
        let (mut sx, mut sy, mut m) = (0.0, 0.0, 0.0);
        for (x, y, p) in img.enumerate_pixels() {
            if p[0] < 128 {
                sx += x as f64;
                sy += y as f64;
                m += 1.0;
            }
        }
        let (cx, cy) = (sx / m - w as f64 / 2.0, sy / m - h as f64 / 2.0);
        assert!(
            (cx * cx + cy * cy).sqrt() > 10.0,
            "{}: ink centred",
            path.display()
        );
    }
    assert!(exts.contains("jpg") && exts.contains("png"), "{exts:?}");
    // Deterministic for a seed.
    let again = tempfile::tempdir().unwrap();
    let p2 = photo_like_digits(&mnist, again.path(), 2, 11);
    assert!(std::fs::read(&photos[1].0).unwrap() == std::fs::read(&p2[1].0).unwrap());
}

#[test]
fn face_folder_has_both_classes_and_every_file_decodes() {
    let dir = tempfile::tempdir().unwrap();
    let spec = FolderSpec {
        classes: vec!["happy", "unhappy"],
        train_per_class: 9,
        val_per_class: 2,
        test_per_class: 3,
        seed: 5,
    };
    let n = make_image_folder(dir.path(), &spec);
    assert_eq!(n, 2 * (9 + 2 + 3) + 2);
    let mut colors = std::collections::BTreeSet::new();
    let mut decoded = 0;
    for (split, per) in [("train", 9), ("validation", 2), ("test", 3)] {
        for class in ["happy", "unhappy"] {
            let files = files_in(&dir.path().join(split).join(class));
            let corrupt = (split == "train" && class == "happy") as usize;
            assert_eq!(files.len(), per + corrupt, "{split}/{class}");
            for f in files {
                if f.file_name().unwrap() == "corrupt.png" {
                    assert!(image::open(&f).is_err(), "corrupt.png decoded");
                    continue;
                }
                let name = f.file_name().unwrap().to_string_lossy().to_string();
                assert!(name.starts_with(&format!("{class}_")), "{}", f.display());
                let img = image::open(&f).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
                assert!((24..=96).contains(&img.width()) && (24..=96).contains(&img.height()));
                colors.insert(format!("{:?}", img.color()));
                // Not flat: the centre half holds face features (dark eyes or mouth on skin).
                let g = img.to_luma8();
                let (w, h) = g.dimensions();
                let centre: Vec<u8> = (h / 4..3 * h / 4)
                    .flat_map(|y| (w / 4..3 * w / 4).map(move |x| (x, y)))
                    .map(|(x, y)| g.get_pixel(x, y)[0])
                    .collect();
                let range = centre.iter().max().unwrap() - centre.iter().min().unwrap();
                assert!(range > 30, "{}: flat centre ({range})", f.display());
                decoded += 1;
            }
        }
    }
    assert_eq!(decoded, n - 2);
    for c in ["L8", "Rgb8", "Rgba8", "L16"] {
        assert!(colors.contains(c), "no {c} image: {colors:?}");
    }
    // Deterministic for a seed.
    let again = tempfile::tempdir().unwrap();
    make_image_folder(again.path(), &spec);
    for f in files_in(&dir.path().join("train/unhappy")) {
        let g = again
            .path()
            .join("train/unhappy")
            .join(f.file_name().unwrap());
        assert!(
            std::fs::read(&f).unwrap() == std::fs::read(&g).unwrap(),
            "{}",
            f.display()
        );
    }
}

/// Darkness-weighted mean `v` (face coordinates) of the luma along the face's vertical line
/// at `u`, over `v` in `lo..hi`: where the mouth's line crosses it.
fn dark_centre_v(img: &image::GrayImage, p: &FaceParams, u: f32, lo: f32, hi: f32) -> f32 {
    let steps = 64;
    let samples: Vec<(f32, f32)> = (0..=steps)
        .map(|i| {
            let v = lo + (hi - lo) * i as f32 / steps as f32;
            let (x, y) = p.to_image(u, v);
            let (x, y) = (
                (x.floor() as i64).clamp(0, p.w as i64 - 1) as u32,
                (y.floor() as i64).clamp(0, p.h as i64 - 1) as u32,
            );
            (v, img.get_pixel(x, y)[0] as f32)
        })
        .collect();
    let brightest = samples.iter().map(|s| s.1).fold(0.0, f32::max);
    let (mut sum, mut weight) = (0.0, 0.0);
    for (v, l) in samples {
        let d = (brightest - l).powi(2);
        sum += v * d;
        weight += d;
    }
    sum / weight.max(1e-6)
}

#[test]
fn happy_and_unhappy_faces_differ_only_in_the_mouth_curving_up_or_down() {
    let mut rng = ChaCha8Rng::seed_from_u64(99);
    let (mut happy_up, mut unhappy_down, pairs) = (0, 0, 60);
    for i in 0..pairs {
        let (w, h) = (rng.gen_range(24..=96u32), rng.gen_range(24..=96u32));
        let p = FaceParams::sample(w, h, &mut rng);
        let happy = face_picture(&p, true, i);
        let unhappy = face_picture(&p, false, i);
        assert_eq!(happy.dimensions(), (w, h));

        // Same parameters and noise: every differing pixel is in the mouth's band, and the
        // mouth is visible (many pixels differ).
        let reach = p.curve / 2.0 + p.thickness / 2.0 + 1.0;
        let mut differ = 0;
        for (x, y, a) in happy.enumerate_pixels() {
            if a != unhappy.get_pixel(x, y) {
                differ += 1;
                let (u, v) = p.to_face(x as f32 + 0.5, y as f32 + 0.5);
                assert!(
                    (u - p.mouth_u).abs() <= p.mouth_half_width + reach
                        && (v - p.mouth_v).abs() <= reach,
                    "pair {i}: pixel ({x}, {y}) = face ({u}, {v}) differs outside the mouth {p:?}"
                );
            }
        }
        assert!(
            differ as f32 >= p.mouth_half_width,
            "pair {i}: {differ} pixels differ"
        );

        // The mouth's middle is below its corners for a smile, above them for a frown.
        let (lo, hi) = (p.mouth_v - reach, p.mouth_v + reach);
        let bend = |img: &RgbImage| {
            let g = image::DynamicImage::ImageRgb8(img.clone()).to_luma8();
            let corner = 0.7 * p.mouth_half_width;
            let middle = dark_centre_v(&g, &p, p.mouth_u, lo, hi);
            let corners = (dark_centre_v(&g, &p, p.mouth_u - corner, lo, hi)
                + dark_centre_v(&g, &p, p.mouth_u + corner, lo, hi))
                / 2.0;
            middle - corners
        };
        let (bh, bu) = (bend(&happy), bend(&unhappy));
        assert!(
            bh > bu + 0.4 * p.curve,
            "pair {i}: smile bends {bh}, frown {bu}, curve {} ({w}x{h})",
            p.curve
        );
        happy_up += (bh > 0.0) as usize;
        unhappy_down += (bu < 0.0) as usize;
    }
    assert!(
        happy_up == pairs as usize && unhappy_down == pairs as usize,
        "smiles curving up {happy_up}/{pairs}, frowns curving down {unhappy_down}/{pairs}"
    );
}

/// Not a check: writes samples of every generator to `$CNND_DATAGEN_DUMP` (default
/// `target/datagen-samples`) to look at. `cargo test --release --test datagen_formats -- --ignored`.
#[test]
#[ignore = "not a check: writes samples of the generators to look at"]
fn dump_samples() {
    let out = std::env::var_os("CNND_DATAGEN_DUMP")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/datagen-samples")
        });
    let _ = std::fs::remove_dir_all(&out);
    let spec = FolderSpec {
        classes: vec!["circle", "square", "stripes", "other"],
        train_per_class: 9,
        val_per_class: 2,
        test_per_class: 2,
        seed: 1,
    };
    let n = make_image_folder(&out.join("folder"), &spec);
    let faces = FolderSpec {
        classes: vec!["happy", "unhappy"],
        train_per_class: 8,
        val_per_class: 2,
        test_per_class: 2,
        seed: 1,
    };
    let nf = make_image_folder(&out.join("faces"), &faces);
    // And a sheet of 8 faces, each smiling (top row) and frowning (bottom row) with the same
    // parameters, at 96 px and scaled up 2x.
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let (side, cols) = (96u32, 8u32);
    let mut sheet = RgbImage::new(side * cols * 2, side * 2 * 2);
    for col in 0..cols {
        let p = FaceParams::sample(side, side, &mut rng);
        for (row, happy) in [(0, true), (1, false)] {
            let img = image::imageops::resize(
                &face_picture(&p, happy, col as u64),
                side * 2,
                side * 2,
                image::imageops::FilterType::Nearest,
            );
            image::imageops::replace(
                &mut sheet,
                &img,
                (col * side * 2) as i64,
                (row * side * 2) as i64,
            );
        }
    }
    sheet.save(out.join("faces_sheet.png")).unwrap();
    let photos = photo_like_digits(&common::data_dir(), &out.join("photos"), 8, 1);
    eprintln!(
        "{n} folder files, {nf} face files, faces_sheet.png, {} photos in {}",
        photos.len(),
        out.display()
    );
}
