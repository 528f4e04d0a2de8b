//! The epoch record: what one epoch of one trial measured. One type from the trainer's
//! report to the store's row, the watch events, the charts and the API (converted to the
//! wire's `EpochMetrics` only at the gRPC edge).
//!
//! Owns: the record. Pure.

use serde::{Deserialize, Serialize};

/// One epoch of one trial.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct EpochRecord {
    /// 1-based.
    pub epoch: u32,
    pub train_loss: f64,
    pub train_accuracy: f64,
    pub val_loss: f64,
    pub val_accuracy: f64,
    /// Wall time of the epoch (training and validation).
    pub seconds: f64,
    /// Training images per second.
    pub images_per_second: f64,
    /// The learning rate the epoch trained with (its schedule's); 0 in records made before
    /// it was kept.
    #[serde(default)]
    pub learning_rate: f64,
}

impl EpochRecord {
    /// (validation accuracy, validation loss): what objectives are computed from.
    pub fn validation(&self) -> (f64, f64) {
        (self.val_accuracy, self.val_loss)
    }
}
