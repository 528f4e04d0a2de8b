//! Wire messages <-> cnnd-core's domain types, in one place for the daemon and the worker:
//! the epoch record, devices, file references, and the stop reasons of the worker protocol.
//!
//! Owns: these conversions. Must not touch: anything but the two crates' types.

use cnnd_core::content;
use cnnd_core::devices;
use cnnd_core::epoch::EpochRecord;
use cnnd_core::status::StopReason;

use crate::{Device, EpochMetrics, FileRef, Stop, StopKind};

impl From<&content::FileRef> for FileRef {
    fn from(f: &content::FileRef) -> Self {
        FileRef {
            name: f.name.clone(),
            digest: f.digest.clone(),
            size: f.size,
        }
    }
}

impl FileRef {
    /// The reference as cnnd-core's type, its digest checked (64 hex characters); the error
    /// names `field`.
    pub fn checked(&self, field: &str) -> Result<content::FileRef, String> {
        let file = content::FileRef {
            name: self.name.clone(),
            digest: self.digest.clone(),
            size: self.size,
        };
        match file.parsed_digest() {
            Ok(_) => Ok(file),
            Err(e) => Err(format!("{field}: {e}")),
        }
    }
}

impl From<&devices::Device> for Device {
    fn from(d: &devices::Device) -> Self {
        Device {
            name: d.name.clone(),
            kind: d.kind.clone(),
            cores: d.cores,
            memory_bytes: d.memory_bytes,
            description: d.description.clone(),
        }
    }
}

impl From<&Device> for devices::Device {
    fn from(d: &Device) -> Self {
        devices::Device {
            name: d.name.clone(),
            kind: d.kind.clone(),
            cores: d.cores,
            memory_bytes: d.memory_bytes,
            description: d.description.clone(),
        }
    }
}

impl From<&EpochRecord> for EpochMetrics {
    fn from(e: &EpochRecord) -> Self {
        EpochMetrics {
            epoch: e.epoch,
            train_loss: e.train_loss,
            train_accuracy: e.train_accuracy,
            val_loss: e.val_loss,
            val_accuracy: e.val_accuracy,
            seconds: e.seconds,
            images_per_second: e.images_per_second,
            learning_rate: e.learning_rate,
        }
    }
}

impl From<&EpochMetrics> for EpochRecord {
    fn from(e: &EpochMetrics) -> Self {
        EpochRecord {
            epoch: e.epoch,
            train_loss: e.train_loss,
            train_accuracy: e.train_accuracy,
            val_loss: e.val_loss,
            val_accuracy: e.val_accuracy,
            seconds: e.seconds,
            images_per_second: e.images_per_second,
            learning_rate: e.learning_rate,
        }
    }
}

impl From<&StopReason> for Stop {
    fn from(reason: &StopReason) -> Self {
        let (kind, detail) = match reason {
            StopReason::Cancelled => (StopKind::Cancelled, String::new()),
            StopReason::Pruned(why) => (StopKind::Pruned, why.clone()),
            StopReason::Parked(why) => (StopKind::Parked, why.clone()),
            StopReason::GiveBack => (StopKind::GiveBack, String::new()),
            StopReason::LeaseLost(why) => (StopKind::LeaseLost, why.clone()),
        };
        Stop {
            kind: kind as i32,
            detail,
        }
    }
}

impl Stop {
    /// The reason to stop, or None for an unset or unknown kind (a newer daemon's: go on
    /// is not safe to assume, so an unknown kind reads as a lost lease).
    pub fn reason(&self) -> Option<StopReason> {
        match StopKind::try_from(self.kind) {
            Ok(StopKind::Unspecified) => None,
            Ok(StopKind::Cancelled) => Some(StopReason::Cancelled),
            Ok(StopKind::Pruned) => Some(StopReason::Pruned(self.detail.clone())),
            Ok(StopKind::Parked) => Some(StopReason::Parked(self.detail.clone())),
            Ok(StopKind::GiveBack) => Some(StopReason::GiveBack),
            Ok(StopKind::LeaseLost) => Some(StopReason::LeaseLost(self.detail.clone())),
            Err(_) => Some(StopReason::LeaseLost(format!(
                "unknown stop kind {} ({})",
                self.kind, self.detail
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stop_reasons_survive_the_wire() {
        for reason in [
            StopReason::Cancelled,
            StopReason::Pruned("median".into()),
            StopReason::Parked("rung 1".into()),
            StopReason::GiveBack,
            StopReason::LeaseLost("expired".into()),
        ] {
            assert_eq!(Stop::from(&reason).reason(), Some(reason));
        }
        assert_eq!(Stop::default().reason(), None);
    }

    #[test]
    fn an_epoch_survives_the_wire() {
        let e = EpochRecord {
            epoch: 3,
            train_loss: 0.1,
            train_accuracy: 0.9,
            val_loss: 0.2,
            val_accuracy: 0.8,
            seconds: 1.5,
            images_per_second: 1000.0,
            learning_rate: 2.5e-4,
        };
        assert_eq!(EpochRecord::from(&EpochMetrics::from(&e)), e);
    }
}
