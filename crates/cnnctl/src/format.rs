//! How cnnctl shows things: numbers, labels, tables, and the API messages as JSON.

use std::io::IsTerminal;

use cnnd_core::sweep::Objective;
use cnnd_proto::{self as pb, struct_to_json, sweep_event};
use comfy_table::{presets, Cell, CellAlignment, ContentArrangement, Table, TableComponent};
use serde_json::{json, Map, Value};

/// A fraction (0.9891) as a percentage with two decimals ("98.91%").
pub fn pct(fraction: f64) -> String {
    if fraction.is_finite() {
        format!("{:.2}%", fraction * 100.0)
    } else {
        "-".to_string()
    }
}

/// A loss with four decimals; "nan"/"inf" shown as such (a diverging run).
pub fn loss(v: f64) -> String {
    if v.is_finite() {
        format!("{v:.4}")
    } else {
        v.to_string()
    }
}

/// A whole number with thousands separators: 1234567 -> "1,234,567".
pub fn count(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

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

/// A hyperparameter value as people write it: strings bare, numbers as JSON numbers.
pub fn param_value(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".to_string(),
        other => other.to_string(),
    }
}

/// "kernelSize=3 dropout=0.5 head=dense" for the given names, in their order; names the
/// params do not hold are left out.
pub fn label(params: &Map<String, Value>, names: &[String]) -> String {
    names
        .iter()
        .filter_map(|n| params.get(n).map(|v| format!("{n}={}", param_value(v))))
        .collect::<Vec<_>>()
        .join(" ")
}

/// The params of a trial in the order of `cnnd_core::sweep::hyperparameter_names()`, then any
/// other names alphabetically.
pub fn ordered_params(params: &Map<String, Value>) -> Vec<(String, Value)> {
    let order = cnnd_core::sweep::hyperparameter_names();
    let mut out: Vec<(String, Value)> = order
        .iter()
        .filter_map(|n| params.get(n).map(|v| (n.clone(), v.clone())))
        .collect();
    let mut rest: Vec<(String, Value)> = params
        .iter()
        .filter(|(k, _)| !order.contains(k))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    rest.sort_by(|a, b| a.0.cmp(&b.0));
    out.extend(rest);
    out
}

pub fn params_map(s: &Option<prost_types::Struct>) -> Map<String, Value> {
    s.as_ref().map(struct_to_json).unwrap_or_default()
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

/// What ranks a sweep's trials: its objective on validation data (never test accuracy,
/// which would leak the test set into the choice), with how cnnctl shows it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Ranking(pub Objective);

impl Ranking {
    pub fn of(s: &pb::Sweep) -> Ranking {
        Ranking(Objective::from_name(&s.objective))
    }

    /// A trial's value: its best validation accuracy, or its lowest validation loss.
    pub fn value(self, t: &pb::TrialSummary) -> f64 {
        self.0.of_epoch((t.best_val_accuracy, t.best_val_loss))
    }

    /// An ordering that sorts better values first.
    pub fn best_first(self, a: f64, b: f64) -> std::cmp::Ordering {
        if self.0.better(a, b) {
            std::cmp::Ordering::Less
        } else if self.0.better(b, a) {
            std::cmp::Ordering::Greater
        } else {
            std::cmp::Ordering::Equal
        }
    }

    /// "validation accuracy" or "validation loss".
    pub fn name(self) -> &'static str {
        self.0.describe()
    }

    /// The short column heading: "best val acc", "best val loss".
    pub fn heading(self) -> &'static str {
        match self.0 {
            Objective::ValAccuracy => "best val acc",
            Objective::ValLoss => "best val loss",
        }
    }

    /// A value as shown: "98.91%" or "0.0312".
    pub fn show(self, v: f64) -> String {
        match self.0 {
            Objective::ValAccuracy => pct(v),
            Objective::ValLoss => loss(v),
        }
    }

    /// How far apart two values are, as shown: "2.79 points" or "0.0312".
    pub fn show_spread(self, best: f64, worst: f64) -> String {
        match self.0 {
            Objective::ValAccuracy => format!("{:.2} points", (best - worst).abs() * 100.0),
            Objective::ValLoss => format!("{:.4}", (best - worst).abs()),
        }
    }
}

/// How one varied parameter did: the mean objective value (best validation accuracy or
/// loss) of the succeeded trials per value of the parameter.
#[derive(Debug, Clone, PartialEq)]
pub struct ParamEffect {
    pub name: String,
    pub ranking: Ranking,
    /// (value as shown, mean objective, mean test accuracy, trials), best first.
    pub values: Vec<(String, f64, f64, usize)>,
}

impl ParamEffect {
    /// How much the parameter mattered: best mean minus worst mean, as shown.
    pub fn spread(&self) -> String {
        let (best, worst) = (self.values[0].1, self.values[self.values.len() - 1].1);
        self.ranking.show_spread(best, worst)
    }

    fn spread_value(&self) -> f64 {
        (self.values[0].1 - self.values[self.values.len() - 1].1).abs()
    }
}

/// For each varied parameter, the mean objective per value over the succeeded trials
/// (so repeats and the other parameters average out), best value first; the parameter
/// that mattered most first.
pub fn param_effects(s: &pb::Sweep) -> Vec<ParamEffect> {
    let ranking = Ranking::of(s);
    let done: Vec<&pb::TrialSummary> = s
        .trials
        .iter()
        .filter(|t| t.status == "succeeded")
        .collect();
    let mut out = Vec::new();
    for name in &s.varied {
        let mut groups: Vec<(String, f64, f64, usize)> = Vec::new();
        for t in &done {
            let Some(v) = params_map(&t.params).get(name).map(param_value) else {
                continue;
            };
            let value = ranking.value(t);
            match groups.iter_mut().find(|g| g.0 == v) {
                Some(g) => {
                    g.1 += value;
                    g.2 += t.test_accuracy;
                    g.3 += 1;
                }
                None => groups.push((v, value, t.test_accuracy, 1)),
            }
        }
        if groups.is_empty() {
            continue;
        }
        for g in &mut groups {
            g.1 /= g.3 as f64;
            g.2 /= g.3 as f64;
        }
        groups.sort_by(|a, b| ranking.best_first(a.1, b.1));
        out.push(ParamEffect {
            name: name.clone(),
            ranking,
            values: groups,
        });
    }
    out.sort_by(|a, b| b.spread_value().total_cmp(&a.spread_value()));
    out
}

/// The line above the per-parameter summary: what it ranks by.
pub fn effects_heading(s: &pb::Sweep) -> String {
    format!(
        "by {} (the sweep's objective; test accuracy is reported for the chosen trial, never used to choose):",
        Ranking::of(s).name()
    )
}

/// Configurations run with several seeds (`repeats`): (label of the varied values, mean
/// objective, its sample standard deviation, mean test accuracy, succeeded runs), best mean
/// first. Empty when no configuration has two succeeded runs.
pub fn repeat_groups(s: &pb::Sweep) -> Vec<(String, f64, f64, f64, usize)> {
    let ranking = Ranking::of(s);
    let mut groups: Vec<(String, Vec<f64>, f64)> = Vec::new();
    for t in s.trials.iter().filter(|t| t.status == "succeeded") {
        let key = label(&params_map(&t.params), &s.varied);
        match groups.iter_mut().find(|g| g.0 == key) {
            Some(g) => {
                g.1.push(ranking.value(t));
                g.2 += t.test_accuracy;
            }
            None => groups.push((key, vec![ranking.value(t)], t.test_accuracy)),
        }
    }
    if groups.iter().all(|g| g.1.len() < 2) {
        return Vec::new();
    }
    let mut out: Vec<(String, f64, f64, f64, usize)> = groups
        .into_iter()
        .map(|(key, v, test_sum)| {
            let n = v.len();
            let mean = v.iter().sum::<f64>() / n as f64;
            let var = if n > 1 {
                v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1) as f64
            } else {
                0.0
            };
            (key, mean, var.sqrt(), test_sum / n as f64, n)
        })
        .collect();
    out.sort_by(|a, b| ranking.best_first(a.1, b.1));
    out
}

/// One line per parameter: "kernelSize: best 5 (98.91% over 4); 3 97.80% (2); mattered 1.11 points".
pub fn effect_line(e: &ParamEffect) -> String {
    let (best, value, _, n) = &e.values[0];
    let others: Vec<String> = e.values[1..]
        .iter()
        .map(|(v, m, _, n)| format!("{v} {} ({n})", e.ranking.show(*m)))
        .collect();
    if others.is_empty() {
        return format!(
            "{}: only {best} finished ({} over {n})",
            e.name,
            e.ranking.show(*value)
        );
    }
    format!(
        "{}: best {best} ({} over {n}); {}; mattered {}",
        e.name,
        e.ranking.show(*value),
        others.join(", "),
        e.spread()
    )
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
        "imagesPerSecond": e.images_per_second,
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
    fn percentages_have_two_decimals() {
        assert_eq!(pct(0.98912), "98.91%");
        assert_eq!(pct(0.987), "98.70%");
        assert_eq!(pct(1.0), "100.00%");
        assert_eq!(pct(0.0), "0.00%");
        assert_eq!(pct(f64::NAN), "-");
    }

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
    fn labels_follow_the_given_order() {
        let params = json!({"head": "dense", "kernelSize": 3, "dropout": 0.5, "epochs": 2, "batchNorm": true});
        let names: Vec<String> = ["kernelSize", "dropout", "head", "missing"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(
            label(params.as_object().unwrap(), &names),
            "kernelSize=3 dropout=0.5 head=dense"
        );
        assert_eq!(label(params.as_object().unwrap(), &[]), "");
        assert_eq!(param_value(&json!(true)), "true");
        assert_eq!(param_value(&json!([3, 5])), "[3,5]");
    }

    #[test]
    fn params_are_ordered_like_the_sweep_module() {
        let params = json!({"zeta": 1, "head": "gap", "kernelSize": 5, "alpha": 2});
        let names: Vec<String> = ordered_params(params.as_object().unwrap())
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        let known: Vec<String> = cnnd_core::sweep::hyperparameter_names()
            .into_iter()
            .filter(|n| n == "head" || n == "kernelSize")
            .collect();
        assert_eq!(known.len(), 2);
        assert_eq!(names[..2], known[..]);
        assert_eq!(names[2..], ["alpha", "zeta"]);
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
