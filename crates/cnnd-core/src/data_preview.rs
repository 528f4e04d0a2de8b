//! What a trial's training data looked like to its model: a few training images of each
//! class after resizing, channel conversion and standardisation (the notebook's "plot some
//! samples" cell), and one training image under the trial's augmentation settings, drawn
//! several times (Keras's `ImageDataGenerator` preview). The worker makes it while preparing
//! the trial and sends it with the first epoch's report; the store keeps it as JSON; GetTrial,
//! `cnnctl trial` and the dashboard show it.

use serde::{Deserialize, Serialize};

use crate::sweep::TrialParams;

/// Training images shown per class.
pub const SAMPLES_PER_CLASS: usize = 6;
/// Classes shown (the first ones, in label order): a preview, not a catalogue.
pub const MAX_PREVIEW_CLASSES: usize = 20;
/// Augmented draws of the preview image.
pub const AUGMENTED_DRAWS: usize = 8;
/// Largest PNG a preview image may be.
pub const MAX_PREVIEW_PNG_BYTES: usize = 1 << 20;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DataPreview {
    /// One name per class of the data set, in label order.
    pub class_names: Vec<String>,
    /// Up to [`SAMPLES_PER_CLASS`] training images per class, class by class.
    pub samples: Vec<Sample>,
    /// The augmentation settings in words ("rotation 10°, zoom 0.1"); empty when off.
    pub augmentation: String,
    /// When augmentation is on: the first training image as the model sees it without
    /// augmentation, then [`AUGMENTED_DRAWS`] draws of it, PNG in base64.
    pub augmented: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Sample {
    pub class: u32,
    /// Position in the training split.
    pub index: u32,
    /// The image as the model sees it, rescaled to 0..255, as a PNG in base64.
    pub png_base64: String,
}

impl DataPreview {
    /// The first [`SAMPLES_PER_CLASS`] positions of each of the first
    /// [`MAX_PREVIEW_CLASSES`] classes in `labels`, class by class.
    pub fn pick(labels: &[i64], classes: usize) -> Vec<(u32, usize)> {
        let shown = classes.min(MAX_PREVIEW_CLASSES);
        let mut per_class = vec![Vec::new(); shown];
        for (i, &label) in labels.iter().enumerate() {
            if let Some(found) = usize::try_from(label)
                .ok()
                .and_then(|c| per_class.get_mut(c))
            {
                if found.len() < SAMPLES_PER_CLASS {
                    found.push(i);
                }
            }
        }
        per_class
            .into_iter()
            .enumerate()
            .flat_map(|(c, positions)| positions.into_iter().map(move |i| (c as u32, i)))
            .collect()
    }

    /// Checks a preview that came over the wire: within size, samples of known classes.
    pub fn check(&self) -> Result<(), String> {
        let classes = self.class_names.len();
        if self.samples.len() > SAMPLES_PER_CLASS * MAX_PREVIEW_CLASSES {
            return Err(format!(
                "{} samples; at most {} per class for {MAX_PREVIEW_CLASSES} classes",
                self.samples.len(),
                SAMPLES_PER_CLASS
            ));
        }
        if self.augmented.len() > AUGMENTED_DRAWS + 1 {
            return Err(format!(
                "{} augmented images; at most {}",
                self.augmented.len(),
                AUGMENTED_DRAWS + 1
            ));
        }
        if let Some(s) = self.samples.iter().find(|s| s.class as usize >= classes) {
            return Err(format!(
                "sample {} of class {}, but {classes} class names",
                s.index, s.class
            ));
        }
        let images = self
            .samples
            .iter()
            .map(|s| &s.png_base64)
            .chain(&self.augmented);
        if images
            .into_iter()
            .any(|png| png.len() > MAX_PREVIEW_PNG_BYTES)
        {
            return Err("an image over 1 MiB".into());
        }
        Ok(())
    }
}

/// A trial's augmentation settings in words ("rotation ±10°, zoom 0.1, horizontal flip");
/// empty when augmentation is off.
pub fn augmentation_words(p: &TrialParams) -> String {
    let mut words = Vec::new();
    if p.rotation_range > 0.0 {
        words.push(format!("rotation ±{}°", p.rotation_range));
    }
    if p.width_shift > 0.0 {
        words.push(format!("width shift {}", p.width_shift));
    }
    if p.height_shift > 0.0 {
        words.push(format!("height shift {}", p.height_shift));
    }
    if p.zoom > 0.0 {
        words.push(format!("zoom {}", p.zoom));
    }
    if p.shear_range > 0.0 {
        words.push(format!("shear ±{}°", p.shear_range));
    }
    if p.horizontal_flip {
        words.push("horizontal flip".into());
    }
    if p.vertical_flip {
        words.push("vertical flip".into());
    }
    if p.brightness > 0.0 {
        words.push(format!("brightness ±{}", p.brightness));
    }
    if p.channel_shift > 0.0 {
        words.push(format!("channel shift ±{}", p.channel_shift));
    }
    if !words.is_empty() && p.fill_mode != crate::sweep::FillMode::Constant {
        let mode = serde_json::to_value(p.fill_mode).unwrap_or_default();
        words.push(format!("fill {}", mode.as_str().unwrap_or_default()));
    }
    words.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_the_first_images_of_each_class_and_checks_what_comes_over_the_wire() {
        let labels: Vec<i64> = (0..100).map(|i| i % 3).collect();
        let picked = DataPreview::pick(&labels, 3);
        assert_eq!(picked.len(), 3 * SAMPLES_PER_CLASS);
        assert_eq!(&picked[..2], &[(0, 0), (0, 3)]);
        assert!(picked.iter().all(|&(class, i)| labels[i] == class as i64));
        // Classes without examples are simply absent; more classes than shown are cut.
        assert_eq!(DataPreview::pick(&[1, 1], 3), vec![(1, 0), (1, 1)]);
        let many: Vec<i64> = (0..50).collect();
        assert_eq!(DataPreview::pick(&many, 50).len(), MAX_PREVIEW_CLASSES);

        let mut preview = DataPreview {
            class_names: vec!["happy".into(), "unhappy".into()],
            samples: vec![Sample {
                class: 1,
                index: 0,
                png_base64: String::new(),
            }],
            augmentation: String::new(),
            augmented: Vec::new(),
        };
        assert_eq!(preview.check(), Ok(()));
        preview.samples[0].class = 2;
        assert!(preview.check().unwrap_err().contains("class 2"));
        preview.samples.clear();
        preview.augmented = vec![String::new(); AUGMENTED_DRAWS + 2];
        assert!(preview.check().unwrap_err().contains("augmented"));

        let p = TrialParams {
            rotation_range: 10.0,
            horizontal_flip: true,
            ..TrialParams::default()
        };
        assert_eq!(augmentation_words(&p), "rotation ±10°, horizontal flip");
        assert_eq!(augmentation_words(&TrialParams::default()), "");
    }
}
