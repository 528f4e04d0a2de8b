//! How cnnctl shows things: numbers, labels, tables, and the API messages as JSON.

use std::io::IsTerminal;

use cnnd_proto::{self as pb, sweep_event};
use comfy_table::{presets, Cell, CellAlignment, ContentArrangement, Table, TableComponent};
use serde_json::{json, Value};

pub use cnnd_client::sweep_view::{
    best_line, class_name, count, effect_line, effects_heading, learning_rate_text, loss,
    ordered_params, param_effects, param_value, params_map, pct, repeat_groups, shape_text,
    summary_totals, sweep_rows, Ranking,
};

/// Uptime: "45s", "2m 05s", "1h 02m 03s", "3d 04h 05m".
pub fn duration(seconds: f64) -> String {
    let s = if seconds.is_finite() && seconds > 0.0 {
        seconds as u64
    } else {
        0
    };
    let (d, h, m, s) = (s / 86_400, s / 3600 % 24, s / 60 % 60, s % 60);
    if d > 0 {
        format!("{d}d {h:02}h {m:02}m")
    } else if h > 0 {
        format!("{h}h {m:02}m {s:02}s")
    } else if m > 0 {
        format!("{m}m {s:02}s")
    } else {
        format!("{s}s")
    }
}

/// Bytes in binary units: "512 B", "1.5 KiB", "125.8 GiB".
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64 / 1024.0;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.1} {}", UNITS[unit])
}

/// Empty strings shown as "-".
pub fn or_dash(s: &str) -> String {
    if s.is_empty() {
        "-".to_string()
    } else {
        s.to_string()
    }
}

/// Collapses any whitespace (newlines included) into single spaces.
pub fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// A table without borders and with a rule under the header, like `docker ps`; box
/// drawing on a terminal, ASCII otherwise. comfy-table only emits styling on a terminal.
pub fn table<I, S>(header: I) -> Table
where
    I: IntoIterator<Item = S>,
    S: Into<Cell>,
{
    let tty = std::io::stdout().is_terminal();
    let mut t = Table::new();
    t.load_preset(presets::NOTHING);
    t.set_style(TableComponent::HeaderLines, if tty { '─' } else { '-' });
    t.set_style(TableComponent::MiddleHeaderIntersections, ' ');
    t.set_content_arrangement(if tty {
        ContentArrangement::Dynamic
    } else {
        ContentArrangement::Disabled
    });
    t.set_header(header);
    for column in t.column_iter_mut() {
        column.set_padding((0, 1));
    }
    t
}

/// Right-aligns the given columns (numbers).
pub fn align_right(t: &mut Table, columns: &[usize]) {
    for &i in columns {
        if let Some(c) = t.column_mut(i) {
            c.set_cell_alignment(CellAlignment::Right);
        }
    }
}

/// Table output without the trailing spaces the padding leaves at the end of a line.
pub fn render(t: &Table) -> String {
    t.lines()
        .map(|l| l.trim_end().to_string())
        .collect::<Vec<_>>()
        .join("\n")
}

// ---- the API messages as JSON (proto3 JSON names; every field present) ----

pub fn struct_json(s: &Option<prost_types::Struct>) -> Value {
    Value::Object(params_map(s))
}

pub fn submit_json(r: &pb::SubmitSweepResponse) -> Value {
    json!({"sweepId": r.sweep_id, "trialsQueued": r.trials_queued, "varied": r.varied, "notes": r.notes})
}

pub fn status_json(s: &pb::Status) -> Value {
    json!({
        "version": s.version,
        "libtorchVersion": s.libtorch_version,
        "uptimeSeconds": s.uptime_seconds,
        "dbPath": s.db_path,
        "stateDir": s.state_dir,
        "devices": s.devices.iter().map(|d| json!({
            "name": d.name, "kind": d.kind, "cores": d.cores, "memoryBytes": d.memory_bytes,
        })).collect::<Vec<_>>(),
        "workers": s.workers.iter().map(|w| json!({
            "workerId": w.worker_id, "pid": w.pid, "device": w.device, "threads": w.threads,
            "state": w.state, "trialId": w.trial_id, "trialsDone": w.trials_done,
            "host": w.host, "name": w.name, "version": w.version,
            "libtorchVersion": w.libtorch_version, "epoch": w.epoch,
            "secondsSinceSeen": w.seconds_since_seen, "slot": w.slot,
            "launcherJob": w.launcher_job,
        })).collect::<Vec<_>>(),
        "launcher": s.launcher.as_ref().map(|l| json!({
            "kind": l.kind, "minWorkers": l.min_workers, "maxWorkers": l.max_workers,
            "wanted": l.wanted, "starting": l.starting, "running": l.running, "idle": l.idle,
            "lastError": l.last_error, "secondsSinceLastError": l.seconds_since_last_error,
            "jobs": l.jobs.iter().map(|j| json!({
                "job": j.job, "state": j.state, "reason": j.reason, "workerId": j.worker_id,
                "device": j.device, "secondsSinceSubmit": j.seconds_since_submit,
            })).collect::<Vec<_>>(),
        })),
        "workersBusy": s.workers_busy,
        "workersIdle": s.workers_idle,
        "queueDepth": s.queue_depth,
        "running": s.running.iter().map(|r| json!({
            "trialId": r.trial_id, "sweepId": r.sweep_id, "worker": r.worker, "epoch": r.epoch,
            "epochsPlanned": r.epochs_planned, "valAccuracy": r.val_accuracy,
        })).collect::<Vec<_>>(),
    })
}

pub fn sweeps_json(r: &pb::ListSweepsResponse) -> Value {
    json!({"sweeps": r.sweeps.iter().map(|s| json!({
        "sweepId": s.sweep_id, "name": s.name, "dataset": s.dataset, "status": s.status,
        "trialsTotal": s.trials_total, "trialsDone": s.trials_done,
        "bestTestAccuracy": s.best_test_accuracy, "bestTrialId": s.best_trial_id,
        "objective": s.objective, "createdAt": s.created_at,
    })).collect::<Vec<_>>()})
}

fn effects_json(s: &pb::Sweep) -> Value {
    json!(param_effects(s)
        .iter()
        .map(|e| json!({
            "name": e.name,
            "bestValue": e.values[0].0,
            "spread": e.spread_value(),
            "values": e.values.iter().map(|(v, m, test, n)| json!({
                "value": v, "meanObjective": m, "meanTestAccuracy": test, "trials": n,
            })).collect::<Vec<_>>(),
        }))
        .collect::<Vec<_>>())
}

/// The sweep's trials as CSV: id, index, status, every varied parameter, epochs, metrics.
pub fn sweep_csv(s: &pb::Sweep) -> Result<String, String> {
    let mut w = csv::Writer::from_writer(Vec::new());
    let mut header: Vec<String> = ["trial_id", "index", "status"]
        .iter()
        .map(|h| h.to_string())
        .collect();
    header.extend(s.varied.iter().cloned());
    header.extend(
        [
            "epochs_done",
            "epochs_planned",
            "val_accuracy",
            "val_loss",
            "best_val_accuracy",
            "best_val_loss",
            "test_accuracy",
            "test_loss",
            "parameter_count",
            "error",
        ]
        .iter()
        .map(|h| h.to_string()),
    );
    w.write_record(&header).map_err(|e| e.to_string())?;
    for t in &s.trials {
        let params = params_map(&t.params);
        let mut row = vec![t.trial_id.clone(), t.index.to_string(), t.status.clone()];
        row.extend(
            s.varied
                .iter()
                .map(|n| params.get(n).map(param_value).unwrap_or_default()),
        );
        row.extend([
            t.epochs_done.to_string(),
            t.epochs_planned.to_string(),
            t.val_accuracy.to_string(),
            t.val_loss.to_string(),
            t.best_val_accuracy.to_string(),
            t.best_val_loss.to_string(),
            t.test_accuracy.to_string(),
            t.test_loss.to_string(),
            t.parameter_count.to_string(),
            t.error.clone(),
        ]);
        w.write_record(&row).map_err(|e| e.to_string())?;
    }
    let bytes = w.into_inner().map_err(|e| e.to_string())?;
    String::from_utf8(bytes).map_err(|e| e.to_string())
}

pub fn sweep_json(s: &pb::Sweep) -> Value {
    json!({
        "summary": {"bestTrialId": s.best_trial_id, "objective": s.objective,
                    "parameters": effects_json(s)},
        "sweepId": s.sweep_id, "name": s.name, "dataset": s.dataset, "status": s.status,
        "strategy": s.strategy, "varied": s.varied, "spec": struct_json(&s.spec),
        "createdAt": s.created_at, "finishedAt": s.finished_at, "bestTrialId": s.best_trial_id,
        "objective": s.objective,
        "trials": s.trials.iter().map(|t| json!({
            "trialId": t.trial_id, "index": t.index, "status": t.status,
            "params": struct_json(&t.params), "epochsDone": t.epochs_done,
            "epochsPlanned": t.epochs_planned, "valAccuracy": t.val_accuracy,
            "valLoss": t.val_loss, "testAccuracy": t.test_accuracy, "testLoss": t.test_loss,
            "bestValAccuracy": t.best_val_accuracy, "bestValLoss": t.best_val_loss,
            "parameterCount": t.parameter_count, "error": t.error, "worker": t.worker,
        })).collect::<Vec<_>>(),
    })
}

fn epoch_json(e: &pb::EpochMetrics) -> Value {
    json!({
        "epoch": e.epoch, "trainLoss": e.train_loss, "trainAccuracy": e.train_accuracy,
        "valLoss": e.val_loss, "valAccuracy": e.val_accuracy, "seconds": e.seconds,
        "imagesPerSecond": e.images_per_second, "learningRate": e.learning_rate,
    })
}

/// The confusion matrix: one row per true class, one column per predicted class.
pub fn confusion_table(r: &pb::TestReport) -> Table {
    let k = r.confusion.len();
    let mut header = vec!["true \\ predicted".to_string()];
    header.extend((0..k as u32).map(|c| class_name(r, c)));
    let mut t = table(header);
    for (i, row) in r.confusion.iter().enumerate() {
        let mut cells = vec![class_name(r, i as u32)];
        cells.extend(row.predicted.iter().map(|n| n.to_string()));
        t.add_row(cells);
    }
    align_right(&mut t, &(1..=k).collect::<Vec<_>>());
    t
}

/// The model layer by layer (Keras's `model.summary()`), with the totals: trainable,
/// non-trainable (batch norm's moving statistics) and Keras's total of both.
pub fn model_table(layers: &[pb::ModelLayer]) -> Table {
    let mut t = table([
        "layer",
        "kind",
        "output shape",
        "parameters",
        "non-trainable",
    ]);
    let nonzero = |n: u64| if n == 0 { String::new() } else { count(n) };
    for l in layers {
        t.add_row(vec![
            l.name.clone(),
            l.kind.clone(),
            shape_text(&l.output_shape),
            count(l.parameters),
            nonzero(l.non_trainable_parameters),
        ]);
    }
    let totals = summary_totals(layers);
    t.add_row(vec![
        "total".into(),
        String::new(),
        String::new(),
        count(totals.trainable),
        count(totals.non_trainable),
    ]);
    t.add_row(vec![
        "Keras total".into(),
        "model.summary()'s count".into(),
        String::new(),
        count(totals.keras_total()),
        String::new(),
    ]);
    align_right(&mut t, &[3, 4]);
    t
}

/// Precision, recall and support per class.
pub fn class_scores_table(r: &pb::TestReport) -> Table {
    let mut t = table(["class", "precision", "recall", "support"]);
    for s in &r.class_scores {
        t.add_row(vec![
            s.name.clone(),
            if s.has_precision {
                pct(s.precision)
            } else {
                "-".into()
            },
            if s.support > 0 {
                pct(s.recall)
            } else {
                "-".into()
            },
            s.support.to_string(),
        ]);
    }
    align_right(&mut t, &[1, 2, 3]);
    t
}

fn test_report_json(r: &pb::TestReport) -> Value {
    json!({
        "classNames": r.class_names,
        "confusion": r.confusion.iter().map(|row| row.predicted.clone()).collect::<Vec<_>>(),
        "classScores": r.class_scores.iter().map(|s| json!({
            "name": s.name,
            "precision": if s.has_precision { json!(s.precision) } else { Value::Null },
            "recall": if s.support > 0 { json!(s.recall) } else { Value::Null },
            "support": s.support,
        })).collect::<Vec<_>>(),
        "misclassified": r.misclassified.iter().map(|m| json!({
            "index": m.index, "truth": m.truth, "predicted": m.predicted, "pngBytes": m.png.len(),
        })).collect::<Vec<_>>(),
    })
}

/// What a data preview holds, in one line: "60 training images of 10 classes; 8 draws
/// under rotation ±10°".
pub fn data_preview_line(p: &pb::DataPreview) -> String {
    let mut classes: Vec<u32> = p.samples.iter().map(|s| s.class).collect();
    classes.dedup();
    let mut line = format!(
        "{} training images of {} classes as the model saw them",
        p.samples.len(),
        classes.len()
    );
    if p.augmented.len() > 1 {
        line.push_str(&format!(
            "; {} augmentation draws under {}",
            p.augmented.len() - 1,
            p.augmentation
        ));
    }
    line
}

fn data_preview_json(p: &pb::DataPreview) -> Value {
    json!({
        "classNames": p.class_names,
        "samples": p.samples.iter().map(|s| json!({
            "class": s.class, "index": s.index, "pngBytes": s.png.len(),
        })).collect::<Vec<_>>(),
        "augmentation": p.augmentation,
        "augmented": p.augmented.iter().map(|a| json!({"pngBytes": a.len()})).collect::<Vec<_>>(),
    })
}

pub fn trial_json(t: &pb::Trial) -> Value {
    json!({
        "trialId": t.trial_id, "sweepId": t.sweep_id, "index": t.index, "status": t.status,
        "params": struct_json(&t.params), "error": t.error,
        "epochs": t.epochs.iter().map(epoch_json).collect::<Vec<_>>(),
        "hasTest": t.has_test, "testLoss": t.test_loss, "testAccuracy": t.test_accuracy,
        "parameterCount": t.parameter_count, "weightsPath": t.weights_path,
        "bestEpoch": t.best_epoch, "worker": t.worker, "attempts": t.attempts,
        "startedAt": t.started_at, "finishedAt": t.finished_at,
        "trainExamples": t.train_examples, "valExamples": t.val_examples,
        "testExamples": t.test_examples, "device": t.device,
        "notes": t.notes, "frozen": t.frozen, "reinitialised": t.reinitialised,
        "skippedFiles": t.skipped_files,
        "provenance": t.provenance,
        "testReport": t.test_report.as_ref().map(test_report_json),
        "dataPreview": t.data_preview.as_ref().map(data_preview_json),
        "modelSummary": t.model_summary.iter().map(|l| json!({
            "name": l.name, "kind": l.kind, "outputShape": l.output_shape,
            "parameters": l.parameters,
            "nonTrainableParameters": l.non_trainable_parameters,
        })).collect::<Vec<_>>(),
    })
}

pub fn prediction_json(r: &pb::PredictResponse, saved: &[Option<String>]) -> Value {
    json!({
        "classNames": r.class_names,
        "predictions": r.predictions.iter().zip(saved).map(|(p, path)| json!({
            "name": p.name,
            "preprocessing": p.preprocessing,
            "top": p.top.iter().map(|c| json!({
                "index": c.index, "className": c.class_name, "probability": c.probability,
            })).collect::<Vec<_>>(),
            "preprocessedPath": path,
        })).collect::<Vec<_>>(),
    })
}

pub fn event_json(e: &pb::SweepEvent) -> Value {
    let mut v = json!({"eventId": e.event_id, "sweepId": e.sweep_id, "at": e.at});
    let (key, body) = match &e.kind {
        Some(sweep_event::Kind::TrialStarted(k)) => (
            "trialStarted",
            json!({"trialId": k.trial_id, "worker": k.worker, "attempt": k.attempt}),
        ),
        Some(sweep_event::Kind::EpochFinished(k)) => (
            "epochFinished",
            json!({
                "trialId": k.trial_id, "epochsPlanned": k.epochs_planned,
                "metrics": k.metrics.as_ref().map(epoch_json),
            }),
        ),
        Some(sweep_event::Kind::TrialFinished(k)) => (
            "trialFinished",
            json!({
                "trialId": k.trial_id, "status": k.status, "testAccuracy": k.test_accuracy,
                "testLoss": k.test_loss, "error": k.error,
            }),
        ),
        Some(sweep_event::Kind::SweepFinished(k)) => (
            "sweepFinished",
            json!({
                "status": k.status, "bestTrialId": k.best_trial_id,
                "bestTestAccuracy": k.best_test_accuracy,
            }),
        ),
        None => return v,
    };
    v[key] = body;
    v
}

/// The plain one-line form of a watch event; `None` for an event of an unknown kind.
pub fn event_line(e: &pb::SweepEvent) -> Option<String> {
    Some(match e.kind.as_ref()? {
        sweep_event::Kind::TrialStarted(k) => {
            let mut line = format!("trial {} started on {}", k.trial_id, or_dash(&k.worker));
            if k.attempt > 1 {
                line.push_str(&format!(" (attempt {})", k.attempt));
            }
            line
        }
        sweep_event::Kind::EpochFinished(k) => {
            let m = k.metrics.unwrap_or_default();
            format!(
                "trial {} epoch {}/{} train_loss={} val_acc={} {:.0} img/s",
                k.trial_id,
                m.epoch,
                k.epochs_planned,
                loss(m.train_loss),
                pct(m.val_accuracy),
                m.images_per_second
            )
        }
        sweep_event::Kind::TrialFinished(k) => match k.status.as_str() {
            "succeeded" => format!(
                "trial {} succeeded test_acc={}",
                k.trial_id,
                pct(k.test_accuracy)
            ),
            "failed" => format!("trial {} failed: {}", k.trial_id, one_line(&k.error)),
            other if k.error.is_empty() => format!("trial {} {other}", k.trial_id),
            // Early-stopping reasons start with the status ("pruned: asha: ..."): once is enough.
            other => {
                let why = k
                    .error
                    .strip_prefix(&format!("{other}: "))
                    .unwrap_or(&k.error);
                format!("trial {} {other}: {}", k.trial_id, one_line(why))
            }
        },
        sweep_event::Kind::SweepFinished(k) => {
            if k.best_trial_id.is_empty() {
                format!(
                    "sweep {} finished: {} (no trial succeeded)",
                    e.sweep_id, k.status
                )
            } else {
                format!(
                    "sweep {} finished: {} best {} {}",
                    e.sweep_id,
                    k.status,
                    k.best_trial_id,
                    pct(k.best_test_accuracy)
                )
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn losses_counts_durations_bytes() {
        assert_eq!(loss(0.123456), "0.1235");
        assert_eq!(loss(f64::NAN), "NaN");
        assert_eq!(count(0), "0");
        assert_eq!(count(999), "999");
        assert_eq!(count(1000), "1,000");
        assert_eq!(count(1234567), "1,234,567");
        assert_eq!(duration(45.9), "45s");
        assert_eq!(duration(125.0), "2m 05s");
        assert_eq!(duration(3723.0), "1h 02m 03s");
        assert_eq!(
            duration(3.0 * 86_400.0 + 4.0 * 3600.0 + 5.0 * 60.0),
            "3d 04h 05m"
        );
        assert_eq!(duration(-1.0), "0s");
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(135_085_772_800), "125.8 GiB");
    }

    #[test]
    fn watch_lines() {
        let ev = |kind| pb::SweepEvent {
            event_id: 1,
            sweep_id: "s1".into(),
            at: String::new(),
            kind: Some(kind),
        };
        let started = ev(sweep_event::Kind::TrialStarted(pb::TrialStarted {
            trial_id: "t1".into(),
            worker: "w0".into(),
            attempt: 1,
        }));
        assert_eq!(event_line(&started).unwrap(), "trial t1 started on w0");
        let epoch = ev(sweep_event::Kind::EpochFinished(pb::EpochFinished {
            trial_id: "t1".into(),
            epochs_planned: 3,
            metrics: Some(pb::EpochMetrics {
                epoch: 2,
                train_loss: 0.0812,
                val_accuracy: 0.9812,
                images_per_second: 1834.4,
                ..Default::default()
            }),
        }));
        assert_eq!(
            event_line(&epoch).unwrap(),
            "trial t1 epoch 2/3 train_loss=0.0812 val_acc=98.12% 1834 img/s"
        );
        let done = ev(sweep_event::Kind::TrialFinished(pb::TrialFinished {
            trial_id: "t1".into(),
            status: "succeeded".into(),
            test_accuracy: 0.987,
            ..Default::default()
        }));
        assert_eq!(
            event_line(&done).unwrap(),
            "trial t1 succeeded test_acc=98.70%"
        );
        let failed = ev(sweep_event::Kind::TrialFinished(pb::TrialFinished {
            trial_id: "t2".into(),
            status: "failed".into(),
            error: "loss diverged\n(nan)".into(),
            ..Default::default()
        }));
        assert_eq!(
            event_line(&failed).unwrap(),
            "trial t2 failed: loss diverged (nan)"
        );
        let finished = ev(sweep_event::Kind::SweepFinished(pb::SweepFinished {
            status: "succeeded".into(),
            best_trial_id: "t1".into(),
            best_test_accuracy: 0.98912,
        }));
        assert_eq!(
            event_line(&finished).unwrap(),
            "sweep s1 finished: succeeded best t1 98.91%"
        );
        let j = event_json(&finished);
        assert_eq!(j["sweepFinished"]["bestTrialId"], "t1");
        assert_eq!(j["sweepId"], "s1");
    }

    #[test]
    fn tables_have_no_trailing_spaces() {
        let mut t = table(["id", "acc"]);
        t.add_row(["t1", "98.91%"]);
        t.add_row(["t10", "9.00%"]);
        align_right(&mut t, &[1]);
        let out = render(&t);
        assert!(out.lines().all(|l| !l.ends_with(' ')), "{out:?}");
        assert!(out.contains("t10"), "{out}");
        assert_eq!(out.lines().count(), 4, "{out}");
    }
}
