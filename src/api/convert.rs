//! Wire messages from the store's and scheduler's types: events, trial summaries, what a
//! replay found different, how a tpe trial's values were chosen, what a submit decided
//! about its data set. (Epoch records and stop reasons convert in `cnnd_proto::convert`.)
//!
//! Owns: these conversions. Pure.

use cnnd_core::datasets::Source;
use cnnd_core::sweep::SweepSpec;
use cnnd_proto::{self as proto, struct_from_json};

use crate::store::{Event, StoredEvent, TrialRow};

pub(super) fn json_object<T: serde::Serialize>(v: &T) -> prost_types::Struct {
    match serde_json::to_value(v) {
        Ok(serde_json::Value::Object(m)) => struct_from_json(&m),
        _ => prost_types::Struct::default(),
    }
}

/// A stored test report (JSON) as the wire message; None (logged) when it does not parse.
pub(super) fn test_report_message(json: &str) -> Option<proto::TestReport> {
    use base64::Engine;
    let report: cnnd_core::test_report::TestReport = match serde_json::from_str(json) {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(error = %e, "a stored test report does not parse; left out");
            return None;
        }
    };
    let scores = report.class_scores();
    Some(proto::TestReport {
        class_names: (0..report.confusion.len() as u32)
            .map(|c| report.class_name(c))
            .collect(),
        confusion: report
            .confusion
            .iter()
            .map(|row| proto::ConfusionRow {
                predicted: row.clone(),
            })
            .collect(),
        misclassified: report
            .misclassified
            .iter()
            .map(|m| proto::MisclassifiedExample {
                index: m.index,
                truth: m.truth,
                predicted: m.predicted,
                png: base64::engine::general_purpose::STANDARD
                    .decode(&m.png_base64)
                    .unwrap_or_default(),
            })
            .collect(),
        class_scores: scores
            .iter()
            .enumerate()
            .map(|(c, s)| proto::ClassPrecisionRecall {
                name: report.class_name(c as u32),
                precision: s.precision.unwrap_or(0.0),
                has_precision: s.precision.is_some(),
                recall: s.recall.unwrap_or(0.0),
                support: s.support,
            })
            .collect(),
    })
}

/// A stored data preview (JSON) as the wire message; None (logged) when it does not parse.
pub(super) fn data_preview_message(json: &str) -> Option<proto::DataPreview> {
    use base64::Engine;
    let png = |b64: &str| {
        base64::engine::general_purpose::STANDARD
            .decode(b64)
            .unwrap_or_default()
    };
    let preview: cnnd_core::data_preview::DataPreview = match serde_json::from_str(json) {
        Ok(p) => p,
        Err(e) => {
            tracing::warn!(error = %e, "a stored data preview does not parse; left out");
            return None;
        }
    };
    Some(proto::DataPreview {
        class_names: preview.class_names,
        samples: preview
            .samples
            .iter()
            .map(|s| proto::DataSample {
                class: s.class,
                index: s.index,
                png: png(&s.png_base64),
            })
            .collect(),
        augmentation: preview.augmentation,
        augmented: preview.augmented.iter().map(|b| png(b)).collect(),
    })
}

pub(super) fn event_to_proto(e: &StoredEvent) -> proto::SweepEvent {
    use proto::sweep_event::Kind;
    let kind = match &e.event {
        Event::TrialStarted {
            trial_id,
            worker,
            attempt,
        } => Kind::TrialStarted(proto::TrialStarted {
            trial_id: trial_id.clone(),
            worker: worker.clone(),
            attempt: *attempt,
        }),
        Event::EpochFinished {
            trial_id,
            epochs_planned,
            metrics,
        } => Kind::EpochFinished(proto::EpochFinished {
            trial_id: trial_id.clone(),
            epochs_planned: *epochs_planned,
            metrics: Some(metrics.into()),
        }),
        Event::TrialFinished {
            trial_id,
            status,
            test_accuracy,
            test_loss,
            error,
        } => Kind::TrialFinished(proto::TrialFinished {
            trial_id: trial_id.clone(),
            status: status.to_string(),
            test_accuracy: test_accuracy.unwrap_or_default(),
            test_loss: test_loss.unwrap_or_default(),
            error: error.clone().unwrap_or_default(),
        }),
        Event::SweepFinished {
            status,
            best_trial_id,
            best_test_accuracy,
        } => Kind::SweepFinished(proto::SweepFinished {
            status: status.to_string(),
            best_trial_id: best_trial_id.clone().unwrap_or_default(),
            best_test_accuracy: best_test_accuracy.unwrap_or_default(),
        }),
    };
    proto::SweepEvent {
        event_id: e.id as u64,
        sweep_id: e.sweep_id.clone(),
        at: e.at.clone(),
        kind: Some(kind),
    }
}

pub(super) fn is_final(e: &StoredEvent) -> bool {
    matches!(e.event, Event::SweepFinished { .. })
}

/// A trial as `GetSweep` lists it: with its `only` hyperparameters (the sweep's varied ones),
/// or with all of them when `only` is None.
pub(super) fn trial_summary(t: &TrialRow, only: Option<&[String]>) -> proto::TrialSummary {
    let params = match (only, serde_json::to_value(&t.params)) {
        (Some(names), Ok(serde_json::Value::Object(mut all))) => {
            all.retain(|name, _| names.contains(name));
            struct_from_json(&all)
        }
        _ => json_object(&t.params),
    };
    proto::TrialSummary {
        trial_id: t.id.clone(),
        index: t.index,
        status: t.status.to_string(),
        params: Some(params),
        epochs_done: t.epochs_done,
        epochs_planned: t.epochs_planned,
        val_accuracy: t
            .last_epoch
            .as_ref()
            .map(|e| e.val_accuracy)
            .unwrap_or_default(),
        val_loss: t
            .last_epoch
            .as_ref()
            .map(|e| e.val_loss)
            .unwrap_or_default(),
        test_accuracy: t.test_accuracy.unwrap_or_default(),
        test_loss: t.test_loss.unwrap_or_default(),
        parameter_count: t.parameter_count.unwrap_or_default(),
        error: t.error.clone().unwrap_or_default(),
        worker: t.worker.clone().unwrap_or_default(),
        best_val_accuracy: t.best_val_accuracy.unwrap_or_default(),
        best_val_loss: t.best_val_loss.unwrap_or_default(),
    }
}

/// The hyperparameters that differ between a recorded and a re-derived trial, as
/// "name: recorded -> re-derived, ...".
pub(super) fn describe_difference(
    recorded: &cnnd_core::sweep::TrialParams,
    derived: &cnnd_core::sweep::TrialParams,
) -> String {
    let (Ok(serde_json::Value::Object(a)), Ok(serde_json::Value::Object(b))) = (
        serde_json::to_value(recorded),
        serde_json::to_value(derived),
    ) else {
        return "differs".into();
    };
    a.iter()
        .filter(|(k, v)| b.get(*k) != Some(*v))
        .map(|(k, v)| format!("{k}: {v} -> {}", b.get(k).cloned().unwrap_or_default()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// How a tpe trial's values were chosen, in words.
pub(super) fn suggestion_note(t: &TrialRow) -> Option<String> {
    let basis = t.suggestion.as_ref()?;
    Some(if basis.tpe {
        format!(
            "suggested by tpe from {} finished trials{}{}",
            basis.observed.len(),
            if basis.pending.is_empty() {
                String::new()
            } else {
                format!(
                    ", {} running as pending ({})",
                    basis.pending.len(),
                    basis.pending.join(", ")
                )
            },
            if basis.observed.is_empty() {
                String::new()
            } else {
                format!(" ({})", basis.observed.join(", "))
            }
        )
    } else {
        format!(
            "suggested by random start-up ({} finished trials so far)",
            basis.observed.len()
        )
    })
}

/// What the response of `SubmitSweep` says about the data set: splits carved from train.
pub(super) fn dataset_notes(spec: &SweepSpec) -> Vec<String> {
    let info = &spec.dataset_info;
    let Source::Folder {
        has_validation,
        has_test,
        ..
    } = info.source
    else {
        return Vec::new();
    };
    let first = spec.trials.first().cloned().unwrap_or_default();
    let mut notes = vec![format!(
        "{}: {} classes ({}), {} training images",
        info.name,
        info.classes,
        info.class_names.join(", "),
        info.train_examples
    )];
    if !has_validation {
        notes.push(format!(
            "validation: no validation/ folder; each trial holds out valFraction ({}) of train/, drawn with its seed",
            first.val_fraction
        ));
    }
    if !has_test {
        notes.push(format!(
            "test: no test/ folder; testFraction ({}) of train/ is held out with splitSeed {} (the same for every trial)",
            first.test_fraction, first.split_seed
        ));
    }
    notes
}
