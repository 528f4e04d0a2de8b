//! The request/answer subcommands of cnnctl (`submit`, `status`, `sweeps`, `sweep`, `trial`,
//! `cancel`, `charts`): one RPC each, shown as text and tables or as JSON.

use std::path::Path;

use cnnd_proto as pb;
use comfy_table::Cell;

use crate::format::*;
use crate::{out, out_json, watch, CliError, Daemon, Output};

pub async fn submit(
    d: &mut Daemon,
    request: pb::SubmitSweepRequest,
    follow: bool,
    output: Output,
) -> Result<(), CliError> {
    let addr = d.addr.clone();
    let r = d
        .client
        .submit_sweep(request)
        .await
        .map_err(|s| CliError::rpc("submit sweep", &addr, s))?
        .into_inner();
    match output {
        Output::Json if follow => out(submit_json(&r).to_string()),
        Output::Json => out_json(&submit_json(&r)),
        Output::Table | Output::Csv => {
            out(format!(
                "sweep {}: {} trials queued",
                r.sweep_id, r.trials_queued
            ));
            r.notes.iter().for_each(|n| out(format!("  note: {n}")));
        }
    }
    if follow {
        watch::watch(d, &r.sweep_id, output == Output::Json).await?;
    }
    Ok(())
}

pub async fn status(d: &mut Daemon, output: Output) -> Result<(), CliError> {
    let addr = d.addr.clone();
    let s = d
        .client
        .get_status(pb::GetStatusRequest {})
        .await
        .map_err(|e| CliError::rpc("get status", &addr, e))?
        .into_inner();
    if output == Output::Json {
        out_json(&status_json(&s));
        return Ok(());
    }
    out(format!(
        "cnnd {} (libtorch {}) at {}, up {}",
        or_dash(&s.version),
        or_dash(&s.libtorch_version),
        d.addr,
        duration(s.uptime_seconds)
    ));
    if !s.db_path.is_empty() || !s.state_dir.is_empty() {
        out(format!(
            "database {}, state directory {}",
            or_dash(&s.db_path),
            or_dash(&s.state_dir)
        ));
    }

    out("");
    out(format!("devices: {}", s.devices.len()));
    if !s.devices.is_empty() {
        let mut t = table(["name", "kind", "cores", "memory"]);
        for dev in &s.devices {
            t.add_row(vec![
                dev.name.clone(),
                dev.kind.clone(),
                dev.cores.to_string(),
                if dev.memory_bytes > 0 {
                    bytes(dev.memory_bytes)
                } else {
                    "-".to_string()
                },
            ]);
        }
        align_right(&mut t, &[2, 3]);
        out(render(&t));
    }

    if let Some(l) = &s.launcher {
        out("");
        out(launcher_line(l));
        if !l.last_error.is_empty() {
            out(format!(
                "  cluster refused ({} ago): {}",
                duration(l.seconds_since_last_error),
                l.last_error
            ));
        }
        if !l.jobs.is_empty() {
            let mut t = table(["job", "device", "state", "reason", "worker", "submitted"]);
            for j in &l.jobs {
                t.add_row(vec![
                    j.job.clone(),
                    j.device.clone(),
                    j.state.clone(),
                    or_dash(&j.reason),
                    or_dash(&j.worker_id),
                    format!("{} ago", duration(j.seconds_since_submit)),
                ]);
            }
            out(render(&t));
        }
    }

    out("");
    out(format!(
        "workers: {} ({} busy, {} idle)",
        s.workers.len(),
        s.workers_busy,
        s.workers_idle
    ));
    if !s.workers.is_empty() {
        let mut t = table([
            "id", "name", "host", "device", "threads", "version", "state", "trial", "epoch",
            "seen", "done", "job",
        ]);
        for w in &s.workers {
            t.add_row(vec![
                w.worker_id.clone(),
                or_dash(if w.name.is_empty() { &w.slot } else { &w.name }),
                or_dash(&w.host),
                or_dash(&w.device),
                w.threads.to_string(),
                or_dash(&w.version),
                w.state.clone(),
                or_dash(&w.trial_id),
                if w.trial_id.is_empty() {
                    "-".into()
                } else {
                    w.epoch.to_string()
                },
                format!("{:.0}s ago", w.seconds_since_seen),
                w.trials_done.to_string(),
                or_dash(&w.launcher_job),
            ]);
        }
        align_right(&mut t, &[4, 8, 9, 10]);
        out(render(&t));
    }

    out("");
    out(format!("queue: {} trials waiting", s.queue_depth));
    out(format!("running: {} trials", s.running.len()));
    if !s.running.is_empty() {
        let mut t = table(["trial", "sweep", "worker", "epoch", "val acc"]);
        for r in &s.running {
            t.add_row(vec![
                r.trial_id.clone(),
                r.sweep_id.clone(),
                or_dash(&r.worker),
                format!("{}/{}", r.epoch, r.epochs_planned),
                if r.epoch > 0 {
                    pct(r.val_accuracy)
                } else {
                    "-".to_string()
                },
            ]);
        }
        align_right(&mut t, &[3, 4]);
        out(render(&t));
    }
    Ok(())
}

/// "launcher: slurm, 2 wanted (min 0, max 4): 1 starting, 1 running (0 idle)".
fn launcher_line(l: &pb::Launcher) -> String {
    if l.kind == "local" {
        return format!(
            "launcher: local, {} worker slots on this machine",
            l.max_workers
        );
    }
    format!(
        "launcher: {}, {} wanted (min {}, max {}): {} starting, {} running ({} idle)",
        l.kind, l.wanted, l.min_workers, l.max_workers, l.starting, l.running, l.idle
    )
}

pub async fn sweeps(d: &mut Daemon, output: Output) -> Result<(), CliError> {
    let addr = d.addr.clone();
    let r = d
        .client
        .list_sweeps(pb::ListSweepsRequest {})
        .await
        .map_err(|e| CliError::rpc("list sweeps", &addr, e))?
        .into_inner();
    if output == Output::Json {
        out_json(&sweeps_json(&r));
        return Ok(());
    }
    if r.sweeps.is_empty() {
        out("no sweeps yet (submit one with: cnnctl submit FILE)");
        return Ok(());
    }
    let mut t = table([
        "id",
        "name",
        "dataset",
        "status",
        "done",
        "best test acc",
        "created",
    ]);
    for s in &r.sweeps {
        t.add_row(vec![
            s.sweep_id.clone(),
            or_dash(&s.name),
            s.dataset.clone(),
            s.status.clone(),
            format!("{}/{}", s.trials_done, s.trials_total),
            if s.best_test_accuracy > 0.0 {
                pct(s.best_test_accuracy)
            } else {
                "-".to_string()
            },
            or_dash(&s.created_at),
        ]);
    }
    align_right(&mut t, &[4, 5]);
    out(render(&t));
    Ok(())
}

/// Builds the trials table of `cnnctl sweep`: best trial marked, one column per varied
/// hyperparameter.
fn sweep_table(s: &pb::Sweep) -> comfy_table::Table {
    let (header, rows) = sweep_rows(s);
    let mut t = table(header.iter().map(Cell::new));
    for row in rows {
        t.add_row(row);
    }
    let n = header.len();
    align_right(&mut t, &[n - 4, n - 3, n - 2, n - 1]);
    t
}

pub async fn sweep(d: &mut Daemon, id: &str, output: Output) -> Result<(), CliError> {
    let addr = d.addr.clone();
    let s = d
        .client
        .get_sweep(pb::GetSweepRequest {
            sweep_id: id.to_string(),
            // The JSON lists every trial's complete configuration; tables and CSV show the
            // varied hyperparameters only.
            all_params: output == Output::Json,
        })
        .await
        .map_err(|e| CliError::rpc(format!("get sweep {id}"), &addr, e))?
        .into_inner();
    match output {
        Output::Json => {
            out_json(&sweep_json(&s));
            return Ok(());
        }
        Output::Csv => {
            let text = sweep_csv(&s).map_err(CliError::Other)?;
            print!("{text}");
            return Ok(());
        }
        Output::Table => {}
    }
    out(format!("sweep {}  {}", s.sweep_id, s.name));
    out(format!("dataset:  {}", s.dataset));
    out(format!("strategy: {}", or_dash(&s.strategy)));
    out(format!("status:   {}", s.status));
    out(format!(
        "varied:   {}",
        if s.varied.is_empty() {
            "-".to_string()
        } else {
            s.varied.join(", ")
        }
    ));
    let mut times = format!("created:  {}", or_dash(&s.created_at));
    if !s.finished_at.is_empty() {
        times.push_str(&format!(", finished {}", s.finished_at));
    }
    out(times);
    out("");
    if s.trials.is_empty() {
        out("no trials");
    } else {
        out(render(&sweep_table(&s)));
    }
    let groups = repeat_groups(&s);
    if !groups.is_empty() {
        out("");
        let ranking = Ranking::of(&s);
        let mean_heading = format!("mean {}", ranking.heading());
        let mut g = table([
            "configuration",
            "runs",
            &mean_heading,
            "std",
            "mean test acc",
        ]);
        for (key, mean, std, test, n) in &groups {
            g.add_row(vec![
                if key.is_empty() {
                    "-".to_string()
                } else {
                    key.clone()
                },
                n.to_string(),
                ranking.show(*mean),
                ranking.show_spread(*std, 0.0),
                pct(*test),
            ]);
        }
        align_right(&mut g, &[1, 2, 3, 4]);
        out(render(&g));
    }
    out("");
    out(best_line(&s));
    let effects = param_effects(&s);
    if !effects.is_empty() {
        out(format!("  {}", effects_heading(&s)));
    }
    for e in effects {
        out(format!("  {}", effect_line(&e)));
    }
    Ok(())
}

pub async fn trial(
    d: &mut Daemon,
    id: &str,
    images: Option<&Path>,
    output: Output,
) -> Result<(), CliError> {
    let addr = d.addr.clone();
    let t = d
        .client
        .get_trial(pb::GetTrialRequest {
            trial_id: id.to_string(),
        })
        .await
        .map_err(|e| CliError::rpc(format!("get trial {id}"), &addr, e))?
        .into_inner();
    let written = match images {
        Some(dir) => write_charts(dir, &trial_images(&t))?,
        None => Vec::new(),
    };
    if output == Output::Json {
        let mut json = trial_json(&t);
        if images.is_some() {
            json["imagesWritten"] = serde_json::json!(written);
        }
        out_json(&json);
        return Ok(());
    }
    if let Some(dir) = images {
        out(format!(
            "{} images written to {}",
            written.len(),
            dir.display()
        ));
    }
    out(format!(
        "trial {} (sweep {}, #{})",
        t.trial_id, t.sweep_id, t.index
    ));
    out(format!("status:     {}", t.status));
    if !t.error.is_empty() {
        out(format!("error:      {}", one_line(&t.error)));
    }
    out(format!(
        "worker:     {} on {} (attempts {})",
        or_dash(&t.worker),
        or_dash(&t.device),
        t.attempts
    ));
    out(format!(
        "examples:   train {}, validation {}, test {}",
        count(t.train_examples.into()),
        count(t.val_examples.into()),
        count(t.test_examples.into())
    ));
    out(format!(
        "parameters: {}",
        if t.parameter_count > 0 {
            count(t.parameter_count)
        } else {
            "-".into()
        }
    ));
    out(format!("weights:    {}", or_dash(&t.weights_path)));
    if !t.provenance.is_empty() {
        let mut keys: Vec<&String> = t.provenance.keys().collect();
        keys.sort();
        let parts: Vec<String> = keys
            .iter()
            .map(|k| format!("{k} {}", t.provenance[*k]))
            .collect();
        out(format!("provenance: {}", parts.join(", ")));
    }
    for note in &t.notes {
        out(format!("note:       {}", one_line(note)));
    }
    if !t.frozen.is_empty() {
        out(format!("frozen:     {}", t.frozen.join(", ")));
    }
    if !t.reinitialised.is_empty() {
        out(format!("re-initialised: {}", t.reinitialised.join(", ")));
    }
    if !t.started_at.is_empty() {
        let mut times = format!("started:    {}", t.started_at);
        if !t.finished_at.is_empty() {
            times.push_str(&format!(", finished {}", t.finished_at));
        }
        out(times);
    }

    out("");
    let mut p = table(["hyperparameter", "value"]);
    for (k, v) in ordered_params(&params_map(&t.params)) {
        p.add_row(vec![k, param_value(&v)]);
    }
    out(render(&p));
    if !t.model_summary.is_empty() {
        out("");
        out(render(&model_table(&t.model_summary)));
    }

    out("");
    if t.epochs.is_empty() {
        out("no epoch finished yet");
    } else {
        let mut e = table([
            "",
            "epoch",
            "train loss",
            "train acc",
            "val loss",
            "val acc",
            "seconds",
            "img/s",
            "lr",
        ]);
        for m in &t.epochs {
            e.add_row(vec![
                if t.best_epoch > 0 && m.epoch == t.best_epoch {
                    "*".into()
                } else {
                    String::new()
                },
                m.epoch.to_string(),
                loss(m.train_loss),
                pct(m.train_accuracy),
                loss(m.val_loss),
                pct(m.val_accuracy),
                format!("{:.1}", m.seconds),
                format!("{:.0}", m.images_per_second),
                learning_rate_text(m.learning_rate),
            ]);
        }
        align_right(&mut e, &[1, 2, 3, 4, 5, 6, 7, 8]);
        out(render(&e));
    }
    out("");
    if t.has_test {
        out(format!(
            "test: loss {} accuracy {}{}",
            loss(t.test_loss),
            pct(t.test_accuracy),
            if t.best_epoch > 0 {
                format!(" (weights of epoch {})", t.best_epoch)
            } else {
                String::new()
            }
        ));
    } else {
        out("test: not evaluated yet");
    }
    if let Some(p) = &t.data_preview {
        out(format!("data preview: {}", data_preview_line(p)));
    }
    if let Some(report) = &t.test_report {
        out("");
        out(render(&confusion_table(report)));
        out("");
        out(render(&class_scores_table(report)));
        if !report.misclassified.is_empty() {
            let shown: Vec<String> = report
                .misclassified
                .iter()
                .map(|m| {
                    format!(
                        "#{} {}->{}",
                        m.index,
                        class_name(report, m.truth),
                        class_name(report, m.predicted)
                    )
                })
                .collect();
            out(format!(
                "misclassified (first {}, true->predicted): {}",
                shown.len(),
                shown.join(", ")
            ));
        }
    }
    Ok(())
}

pub async fn cancel(d: &mut Daemon, id: &str, output: Output) -> Result<(), CliError> {
    let addr = d.addr.clone();
    let r = d
        .client
        .cancel_sweep(pb::CancelSweepRequest {
            sweep_id: id.to_string(),
        })
        .await
        .map_err(|e| CliError::rpc(format!("cancel sweep {id}"), &addr, e))?
        .into_inner();
    match output {
        Output::Json => out_json(&serde_json::json!({
            "sweepId": id, "trialsCancelled": r.trials_cancelled,
        })),
        Output::Table | Output::Csv => out(format!(
            "sweep {id}: {} trials cancelled",
            r.trials_cancelled
        )),
    }
    Ok(())
}

/// Pauses (`hold` true) or resumes a sweep.
pub async fn pause(d: &mut Daemon, id: &str, hold: bool, output: Output) -> Result<(), CliError> {
    let addr = d.addr.clone();
    let sweep_id = id.to_string();
    let (what, n) = if hold {
        let r = d
            .client
            .pause_sweep(pb::PauseSweepRequest { sweep_id })
            .await
            .map_err(|e| CliError::rpc(format!("pause sweep {id}"), &addr, e))?;
        ("held", r.into_inner().trials_held)
    } else {
        let r = d
            .client
            .resume_sweep(pb::ResumeSweepRequest { sweep_id })
            .await
            .map_err(|e| CliError::rpc(format!("resume sweep {id}"), &addr, e))?;
        ("released", r.into_inner().trials_released)
    };
    match output {
        Output::Json => {
            out_json(&serde_json::json!({ "sweepId": id, "paused": hold, "queuedTrials": n }))
        }
        Output::Table | Output::Csv => out(format!("sweep {id}: {n} queued trials {what}")),
    }
    Ok(())
}

/// `cnnctl replay`: re-derives the sweep's configurations and compares them with the
/// recorded trials; a difference is an error (exit 1).
pub async fn replay(d: &mut Daemon, id: &str, output: Output) -> Result<(), CliError> {
    let addr = d.addr.clone();
    let r = d
        .client
        .replay_sweep(pb::ReplaySweepRequest {
            sweep_id: id.to_string(),
        })
        .await
        .map_err(|e| CliError::rpc(format!("replay sweep {id}"), &addr, e))?
        .into_inner();
    let differing: Vec<&pb::ReplayedTrial> = r.trials.iter().filter(|t| !t.matches).collect();
    if output == Output::Json {
        out_json(&serde_json::json!({
            "sweepId": r.sweep_id, "strategy": r.strategy, "seed": r.seed,
            "identical": r.identical,
            "trials": r.trials.iter().map(|t| serde_json::json!({
                "index": t.index, "trialId": t.trial_id, "matches": t.matches,
                "difference": t.difference, "params": crate::format::struct_json(&t.params),
            })).collect::<Vec<_>>(),
        }));
    } else {
        for t in &r.trials {
            out(format!(
                "{:>4}  {:<20} {}",
                t.index,
                or_dash(&t.trial_id),
                if t.matches {
                    "same".to_string()
                } else {
                    format!("DIFFERS: {}", t.difference)
                }
            ));
        }
        out(format!(
            "sweep {}: strategy {}, seed {}: {} of {} configurations re-derived identically, in the recorded order",
            r.sweep_id,
            r.strategy,
            r.seed,
            r.trials.len() - differing.len(),
            r.trials.len()
        ));
    }
    if r.identical {
        Ok(())
    } else {
        Err(CliError::Other(format!(
            "replay of sweep {id}: {} configuration(s) differ from the recorded trials",
            differing.len()
        )))
    }
}

/// `cnnctl predict`: sends image files' bytes (never paths) and prints the top classes.
pub async fn predict(
    d: &mut Daemon,
    trial: &str,
    files: &[std::path::PathBuf],
    args: &crate::PredictArgs,
    output: Output,
) -> Result<(), CliError> {
    let mut images = Vec::with_capacity(files.len());
    for f in files {
        let data = std::fs::read(f)
            .map_err(|e| CliError::Other(format!("cannot read {}: {e}", f.display())))?;
        images.push(pb::PredictImage {
            name: f.display().to_string(),
            data,
        });
    }
    let addr = d.addr.clone();
    let r = d
        .client
        .predict(pb::PredictRequest {
            trial_id: trial.to_string(),
            images,
            top_k: args.top,
            preprocess: args.preprocess.clone(),
            return_preprocessed: args.save_preprocessed.is_some(),
        })
        .await
        .map_err(|e| CliError::rpc(format!("predict with trial {trial}"), &addr, e))?
        .into_inner();
    let mut saved = Vec::with_capacity(r.predictions.len());
    for (p, file) in r.predictions.iter().zip(files) {
        saved.push(match &args.save_preprocessed {
            Some(dir) if !p.preprocessed_png.is_empty() => {
                std::fs::create_dir_all(dir).map_err(|e| {
                    CliError::Other(format!("cannot create {}: {e}", dir.display()))
                })?;
                let stem = file
                    .file_stem()
                    .map(|s| s.to_string_lossy().to_string())
                    .unwrap_or_else(|| "image".into());
                let path = dir.join(format!("{stem}.{}.png", p.preprocessing));
                std::fs::write(&path, &p.preprocessed_png).map_err(|e| {
                    CliError::Other(format!("cannot write {}: {e}", path.display()))
                })?;
                Some(path.display().to_string())
            }
            _ => None,
        });
    }
    if output == Output::Json {
        out_json(&prediction_json(&r, &saved));
        return Ok(());
    }
    let mut t = table([
        "image",
        "prediction",
        "probability",
        "next",
        "preprocessing",
    ]);
    for p in &r.predictions {
        let best = p.top.first();
        let next: Vec<String> = p
            .top
            .iter()
            .skip(1)
            .map(|c| format!("{} {}", c.class_name, pct(c.probability)))
            .collect();
        t.add_row(vec![
            p.name.clone(),
            best.map(|c| c.class_name.clone()).unwrap_or_default(),
            best.map(|c| pct(c.probability)).unwrap_or_default(),
            next.join(", "),
            p.preprocessing.clone(),
        ]);
    }
    align_right(&mut t, &[2]);
    out(render(&t));
    for path in saved.iter().flatten() {
        out(format!("preprocessed input saved: {path}"));
    }
    Ok(())
}

pub async fn charts(
    d: &mut Daemon,
    id: &str,
    dashboard: Option<String>,
    out_dir: Option<&Path>,
    output: Output,
) -> Result<(), CliError> {
    let r = render_charts(d, id, dashboard, out_dir.is_some()).await?;
    let paths = match out_dir {
        None => r.paths,
        Some(dir) => write_charts(dir, &r.charts)?,
    };
    match output {
        Output::Json => out_json(&serde_json::json!(paths)),
        Output::Table | Output::Csv => paths.iter().for_each(out),
    }
    Ok(())
}

/// RenderCharts of a sweep's dashboard (the daemon's default when None), with the PNGs'
/// bytes when `include_bytes`.
pub async fn render_charts(
    d: &mut Daemon,
    id: &str,
    dashboard: Option<String>,
    include_bytes: bool,
) -> Result<pb::RenderChartsResponse, CliError> {
    let addr = d.addr.clone();
    d.client
        .render_charts(pb::RenderChartsRequest {
            sweep_id: id.to_string(),
            dashboard: dashboard.unwrap_or_default(),
            include_bytes,
        })
        .await
        .map(tonic::Response::into_inner)
        .map_err(|e| CliError::rpc(format!("render charts of sweep {id}"), &addr, e))
}

/// A trial's images as files to write: `sample-C-I.png` (class C, training image I),
/// `augmented-0.png` (as is) and `augmented-N.png` (draws), `misclassified-I-T-as-P.png`
/// (test image I, true class T, predicted P). Classes by number: folder names may hold
/// anything.
fn trial_images(t: &pb::Trial) -> Vec<pb::Chart> {
    let png = |name: String, data: &[u8]| pb::Chart {
        name,
        media_type: "image/png".into(),
        data: data.to_vec(),
        path: String::new(),
    };
    let mut images = Vec::new();
    if let Some(p) = &t.data_preview {
        images.extend(
            p.samples
                .iter()
                .map(|s| png(format!("sample-{}-{}.png", s.class, s.index), &s.png)),
        );
        images.extend(
            p.augmented
                .iter()
                .enumerate()
                .map(|(n, data)| png(format!("augmented-{n}.png"), data)),
        );
    }
    if let Some(r) = &t.test_report {
        images.extend(r.misclassified.iter().map(|m| {
            png(
                format!(
                    "misclassified-{}-{}-as-{}.png",
                    m.index, m.truth, m.predicted
                ),
                &m.png,
            )
        }));
    }
    images
}

/// Writes fetched charts into `dir` under their own file names (a name with a folder in it
/// is refused: the daemon names files, never places them); the paths written.
fn write_charts(dir: &Path, charts: &[pb::Chart]) -> Result<Vec<String>, CliError> {
    std::fs::create_dir_all(dir)
        .map_err(|e| CliError::Other(format!("--out {}: {e}", dir.display())))?;
    let mut written = Vec::with_capacity(charts.len());
    for chart in charts {
        let name = Path::new(&chart.name);
        if name.file_name() != Some(name.as_os_str()) || chart.name.starts_with('.') {
            return Err(CliError::Other(format!(
                "the daemon sent a chart named '{}', which is not a plain file name",
                chart.name
            )));
        }
        let path = dir.join(name);
        std::fs::write(&path, &chart.data)
            .map_err(|e| CliError::Other(format!("writing {}: {e}", path.display())))?;
        written.push(path.display().to_string());
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;
    use cnnd_proto::struct_from_json;
    use serde_json::json;

    fn sweep_fixture() -> pb::Sweep {
        let trial = |id: &str, status: &str, k: i64, head: &str, acc: f64| pb::TrialSummary {
            trial_id: id.into(),
            status: status.into(),
            params: Some(struct_from_json(
                json!({"kernelSize": k, "dropout": 0.5, "head": head, "epochs": 3})
                    .as_object()
                    .unwrap(),
            )),
            epochs_done: 3,
            epochs_planned: 3,
            val_accuracy: acc,
            best_val_accuracy: acc,
            test_accuracy: acc - 0.001,
            parameter_count: 225_034,
            ..Default::default()
        };
        pb::Sweep {
            sweep_id: "s1".into(),
            varied: vec!["kernelSize".into(), "dropout".into(), "head".into()],
            trials: vec![
                trial("t1", "succeeded", 5, "gap", 0.9712),
                trial("t2", "succeeded", 3, "dense", 0.98912),
            ],
            best_trial_id: "t2".into(),
            ..Default::default()
        }
    }

    #[test]
    fn sweep_best_line_names_the_varied_values() {
        let s = sweep_fixture();
        assert_eq!(
            best_line(&s),
            "best by validation accuracy: t2 (98.91%), test accuracy 98.81% (kernelSize=3 dropout=0.5 head=dense)"
        );
        let none = pb::Sweep::default();
        assert_eq!(best_line(&none), "best: none yet (no trial has succeeded)");
    }

    #[test]
    fn the_summary_says_which_value_of_each_parameter_won_and_by_how_much() {
        let mut s = sweep_fixture();
        let mut extra = s.trials[0].clone();
        extra.trial_id = "t3".into();
        extra.best_val_accuracy = 0.9512; // gap again, kernel 5: gap averages 96.12%
        extra.test_accuracy = 0.9990; // test accuracy plays no part in the ranking
        s.trials.push(extra);
        let mut failed = s.trials[1].clone();
        failed.status = "failed".into(); // not counted
        failed.best_val_accuracy = 0.0;
        s.trials.push(failed);
        let effects = param_effects(&s);
        // kernelSize and head split the trials the same way: 98.91% vs 96.12%.
        let head = effects.iter().find(|e| e.name == "head").unwrap();
        assert_eq!(head.values[0].0, "dense");
        assert_eq!(head.values[1].0, "gap");
        assert!((head.values[1].1 - (0.9712 + 0.9512) / 2.0).abs() < 1e-12);
        assert_eq!(head.values[1].3, 2);
        assert_eq!(head.spread(), "2.79 points");
        assert_eq!(
            effect_line(head),
            "head: best dense (98.91% over 1); gap 96.12% (2); mattered 2.79 points"
        );
        let dropout = effects.iter().find(|e| e.name == "dropout").unwrap();
        assert_eq!(
            effect_line(dropout),
            "dropout: only 0.5 finished (97.05% over 3)"
        );
        let json = sweep_json(&s);
        assert_eq!(json["summary"]["bestTrialId"], "t2");
        // By validation loss (lower is better), the ranking turns around.
        let mut by_loss = s.clone();
        by_loss.objective = "val_loss".into();
        for t in &mut by_loss.trials {
            t.best_val_loss = 1.0 - t.best_val_accuracy;
        }
        let head = param_effects(&by_loss)
            .into_iter()
            .find(|e| e.name == "head")
            .unwrap();
        assert_eq!(head.values[0].0, "dense");
        assert!(effect_line(&head).starts_with("head: best dense (0.0109 over 1); gap 0.0388 (2)"));
        assert!(json["summary"]["parameters"].as_array().unwrap().len() == 3);
    }

    #[test]
    fn repeated_configurations_show_mean_and_spread() {
        let mut s = sweep_fixture();
        assert!(repeat_groups(&s).is_empty(), "no configuration ran twice");
        let mut again = s.trials[1].clone();
        again.trial_id = "t2b".into();
        again.best_val_accuracy = 0.97912;
        s.trials.push(again);
        let groups = repeat_groups(&s);
        assert_eq!(groups[1].0, "kernelSize=5 dropout=0.5 head=gap");
        let (key, mean, std, _test, n) = &groups[0];
        assert_eq!(key, "kernelSize=3 dropout=0.5 head=dense");
        assert_eq!(*n, 2);
        assert!((mean - 0.98412).abs() < 1e-12);
        assert!((std - 0.01 / 2f64.sqrt()).abs() < 1e-12, "{std}");
    }

    #[test]
    fn the_trial_table_exports_as_csv() {
        let csv = sweep_csv(&sweep_fixture()).unwrap();
        let mut lines = csv.lines();
        assert_eq!(
            lines.next().unwrap(),
            "trial_id,index,status,kernelSize,dropout,head,epochs_done,epochs_planned,val_accuracy,val_loss,best_val_accuracy,best_val_loss,test_accuracy,test_loss,parameter_count,error"
        );
        assert_eq!(
            lines.next().unwrap(),
            "t1,0,succeeded,5,0.5,gap,3,3,0.9712,0,0.9712,0,0.9702,0,225034,"
        );
        assert_eq!(csv.lines().count(), 3);
    }

    #[test]
    fn sweep_table_marks_the_best_trial() {
        let out = render(&sweep_table(&sweep_fixture()));
        let lines: Vec<&str> = out.lines().collect();
        assert!(lines[0].contains("kernelSize"), "{out}");
        assert!(lines[0].contains("test acc"), "{out}");
        assert!(lines[0].contains("best val acc"), "{out}");
        let best = lines.iter().find(|l| l.contains("t2")).unwrap();
        assert!(best.trim_start().starts_with('*'), "{out}");
        assert!(best.contains("98.91%") && best.contains("98.81%"), "{out}");
        assert!(best.contains("225,034"), "{out}");
        let other = lines.iter().find(|l| l.contains("t1")).unwrap();
        assert!(!other.contains('*'), "{out}");
        assert!(other.contains("gap"), "{out}");
    }
}
