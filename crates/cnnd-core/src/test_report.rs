//! What a trial's test pass found, class by class: the confusion matrix (rows the true
//! class, columns the predicted one), precision and recall per class, and a few misclassified
//! test images as the model saw them. The worker computes it after the test pass and sends it
//! home with the trial's results; the store keeps it as JSON; GetTrial, `cnnctl trial` and
//! the dashboard show it.

use serde::{Deserialize, Serialize};

/// Most misclassified examples a report carries.
pub const MAX_MISCLASSIFIED: usize = 16;
/// Most classes a report carries a matrix for (a 1000-class matrix is a million cells).
pub const MAX_CLASSES: usize = 100;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TestReport {
    /// One name per class, in label order (digits "0".."9", folder names).
    pub class_names: Vec<String>,
    /// `confusion[truth][predicted]`: test examples of class `truth` predicted as `predicted`.
    pub confusion: Vec<Vec<u32>>,
    /// The first misclassified test examples, in test-set order.
    pub misclassified: Vec<Misclassified>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Misclassified {
    /// Position in the test split.
    pub index: u32,
    pub truth: u32,
    pub predicted: u32,
    /// The image as the model saw it (after resizing and channel conversion), rescaled to
    /// 0..255, as a PNG in base64.
    pub png_base64: String,
}

/// Precision, recall and support (true examples) of one class.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ClassScore {
    /// None when nothing was predicted as this class.
    pub precision: Option<f64>,
    /// None when the test set has no example of this class.
    pub recall: Option<f64>,
    pub support: u32,
}

impl TestReport {
    /// The matrix of `truth` and `predicted` labels (each below `classes`), and the first
    /// misclassified positions (at most [`MAX_MISCLASSIFIED`]) for the caller to attach
    /// images to.
    pub fn count(classes: usize, truth: &[i64], predicted: &[i64]) -> (Vec<Vec<u32>>, Vec<usize>) {
        let mut confusion = vec![vec![0u32; classes]; classes];
        let mut wrong = Vec::new();
        for (i, (&t, &p)) in truth.iter().zip(predicted).enumerate() {
            if let (Some(row), true) = (confusion.get_mut(t as usize), (p as usize) < classes) {
                row[p as usize] += 1;
            }
            if t != p && wrong.len() < MAX_MISCLASSIFIED {
                wrong.push(i);
            }
        }
        (confusion, wrong)
    }

    /// Test examples counted.
    pub fn total(&self) -> u64 {
        self.confusion.iter().flatten().map(|&c| c as u64).sum()
    }

    /// The share on the diagonal (the test accuracy).
    pub fn accuracy(&self) -> Option<f64> {
        let total = self.total();
        let right: u64 = (0..self.confusion.len())
            .map(|i| self.confusion[i].get(i).copied().unwrap_or(0) as u64)
            .sum();
        (total > 0).then(|| right as f64 / total as f64)
    }

    /// Precision, recall and support per class, in label order.
    pub fn class_scores(&self) -> Vec<ClassScore> {
        let k = self.confusion.len();
        (0..k)
            .map(|c| {
                let right = self.confusion[c].get(c).copied().unwrap_or(0);
                let support: u32 = self.confusion[c].iter().sum();
                let predicted: u32 = self.confusion.iter().filter_map(|r| r.get(c)).sum();
                ClassScore {
                    precision: (predicted > 0).then(|| right as f64 / predicted as f64),
                    recall: (support > 0).then(|| right as f64 / support as f64),
                    support,
                }
            })
            .collect()
    }

    /// The name of class `c` (its number when the report has no name for it).
    pub fn class_name(&self, c: u32) -> String {
        self.class_names
            .get(c as usize)
            .cloned()
            .unwrap_or_else(|| c.to_string())
    }

    /// Checks a report that came over the wire: a square matrix within size, names to
    /// match, misclassified examples that are wrong answers within the matrix.
    pub fn check(&self) -> Result<(), String> {
        let k = self.confusion.len();
        if k > MAX_CLASSES {
            return Err(format!("{k} classes; at most {MAX_CLASSES}"));
        }
        if let Some(row) = self.confusion.iter().find(|r| r.len() != k) {
            return Err(format!("a row of {} cells in a {k}x{k} matrix", row.len()));
        }
        if !self.class_names.is_empty() && self.class_names.len() != k {
            return Err(format!(
                "{} class names for {k} classes",
                self.class_names.len()
            ));
        }
        if self.misclassified.len() > MAX_MISCLASSIFIED {
            return Err(format!(
                "{} misclassified examples; at most {MAX_MISCLASSIFIED}",
                self.misclassified.len()
            ));
        }
        for m in &self.misclassified {
            if m.truth == m.predicted || m.truth as usize >= k || m.predicted as usize >= k {
                return Err(format!(
                    "misclassified example {} says truth {} and prediction {}",
                    m.index, m.truth, m.predicted
                ));
            }
            if m.png_base64.len() > 1 << 20 {
                return Err(format!(
                    "misclassified example {}: image over 1 MiB",
                    m.index
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_scores_and_checks() {
        let truth = [0, 0, 1, 1, 1, 2];
        let predicted = [0, 1, 1, 1, 2, 2];
        let (confusion, wrong) = TestReport::count(3, &truth, &predicted);
        assert_eq!(confusion, vec![vec![1, 1, 0], vec![0, 2, 1], vec![0, 0, 1]]);
        assert_eq!(wrong, vec![1, 4]);
        let mut report = TestReport {
            class_names: vec!["a".into(), "b".into(), "c".into()],
            confusion,
            misclassified: vec![Misclassified {
                index: 1,
                truth: 0,
                predicted: 1,
                png_base64: String::new(),
            }],
        };
        assert_eq!(report.total(), 6);
        assert_eq!(report.accuracy(), Some(4.0 / 6.0));
        let scores = report.class_scores();
        assert_eq!(scores[0].precision, Some(1.0));
        assert_eq!(scores[0].recall, Some(0.5));
        assert_eq!(scores[1].precision, Some(2.0 / 3.0));
        assert_eq!(scores[2].support, 1);
        assert_eq!(report.check(), Ok(()));
        report.misclassified[0].predicted = 0;
        assert!(report
            .check()
            .unwrap_err()
            .contains("truth 0 and prediction 0"));
        report.misclassified.clear();
        report.confusion[2].pop();
        assert!(report.check().unwrap_err().contains("a row of 2 cells"));
    }
}
