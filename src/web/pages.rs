//! The dashboard's markup (maud: every string from the store is escaped by construction) and
//! its one stylesheet. The numbers and sentences come from `cnnd_client::sweep_view`, so the
//! pages say what `cnnctl sweep` and `cnnctl report` say.

use axum::response::{IntoResponse, Response};
use cnnd_client::sweep_view::{
    best_line, class_name, count, effect_line, effects_heading, learning_rate_text, loss,
    ordered_params, param_effects, param_value, params_map, pct, shape_text, summary_totals,
    sweep_rows,
};
use cnnd_proto as pb;
use http::StatusCode;
use maud::{html, Markup, DOCTYPE};

pub(super) const STYLESHEET: &str = "\
body{font:14px/1.45 system-ui,sans-serif;margin:0;color:#222}\
header{background:#1f2937;color:#fff;padding:.6em 1.5em;display:flex;gap:1.5em;align-items:center}\
header a{color:#fff;text-decoration:none;font-weight:600}header form{margin-left:auto}\
header button{background:none;border:1px solid #9ca3af;color:#fff;border-radius:3px;padding:.2em .8em;cursor:pointer}\
main{max-width:1280px;margin:1.5em auto;padding:0 1.5em}h1{font-size:1.5em;margin:.2em 0}\
.facts{color:#555}table{border-collapse:collapse;margin:1em 0}\
th,td{padding:.25em .7em;border-bottom:1px solid #ddd;text-align:left;vertical-align:top}\
td.n,th.n{text-align:right;font-variant-numeric:tabular-nums}tr.best{background:#fff4e0;font-weight:600}\
figure{margin:1.5em 0}img{max-width:100%;border:1px solid #eee}figcaption{color:#555}\
.charts{display:grid;grid-template-columns:repeat(auto-fill,minmax(560px,1fr));gap:1em}\
.error{color:#b91c1c}td.diagonal{background:#dcfce7;font-weight:600}td.off{background:#fee2e2}\
.images{display:flex;flex-wrap:wrap;gap:.8em}.images figure{margin:0;text-align:center}\
.images img{width:84px;height:84px;image-rendering:pixelated}table.samples img{width:56px;height:56px}\
progress{width:8em}.live{color:#047857}\
form.login{display:flex;flex-direction:column;gap:.6em;max-width:28em}\
form.login input{font:inherit;padding:.4em}form.login button{font:inherit;padding:.4em;width:8em}";

/// What every page's frame needs to know.
pub(super) struct Chrome {
    /// A session cookie came with the request: offer "log out".
    pub logged_in: bool,
}

/// Seconds between reloads of a page that shows something running.
const REFRESH_SECONDS: u32 = 5;

fn layout(title: &str, chrome: &Chrome, live: bool, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                @if live { meta http-equiv="refresh" content=(REFRESH_SECONDS); }
                title { (title) " · cnnd" }
                link rel="stylesheet" href="/static/cnnd.css";
            }
            body {
                header {
                    a href="/" { "cnnd" }
                    a href="/" { "Sweeps" }
                    a href="/workers" { "Workers and queue" }
                    @if chrome.logged_in {
                        form method="post" action="/logout" { button type="submit" { "Log out" } }
                    }
                }
                main {
                    (body)
                    @if live {
                        p.live { "Live: this page reloads every " (REFRESH_SECONDS) " s while something runs." }
                    }
                }
            }
        }
    }
}

fn is_active(status: &str) -> bool {
    matches!(status, "queued" | "running")
}

/// `/`: every sweep with its status, progress and best trial.
pub(super) fn sweeps(chrome: &Chrome, sweeps: &[pb::SweepSummary]) -> Markup {
    let live = sweeps.iter().any(|s| is_active(&s.status));
    layout(
        "Sweeps",
        chrome,
        live,
        html! {
            h1 { "Sweeps" }
            @if sweeps.is_empty() {
                p { "No sweeps yet. Submit one with " code { "cnnctl submit SWEEP.json" } "." }
            } @else {
                table {
                    thead { tr {
                        th { "sweep" } th { "name" } th { "data set" } th { "status" }
                        th { "progress" } th { "best trial" } th { "best test acc" } th { "created" }
                    } }
                    tbody {
                        @for s in sweeps {
                            tr {
                                td { a href={ "/sweeps/" (s.sweep_id) } { (s.sweep_id) } }
                                td { (s.name) }
                                td { (s.dataset) }
                                td { (s.status) }
                                td {
                                    progress value=(s.trials_done) max=(s.trials_total.max(1)) {}
                                    " " (s.trials_done) "/" (s.trials_total)
                                }
                                td {
                                    @if s.best_trial_id.is_empty() { "-" } @else {
                                        a href={ "/trials/" (s.best_trial_id) } { (s.best_trial_id) }
                                    }
                                }
                                td.n { @if s.best_trial_id.is_empty() { "-" } @else { (pct(s.best_test_accuracy)) } }
                                td { (s.created_at) }
                            }
                        }
                    }
                }
            }
        },
    )
}

/// `/sweeps/ID`: facts, best trial, which value won, the trial table, the charts.
pub(super) fn sweep(
    chrome: &Chrome,
    s: &pb::Sweep,
    dashboard: &str,
    panels: &[(String, String)],
    data: Option<&(String, pb::DataPreview)>,
) -> Markup {
    let (header, rows) = sweep_rows(s);
    let numeric_from = header.len().saturating_sub(4);
    let effects = param_effects(s);
    let done = s
        .trials
        .iter()
        .filter(|t| !is_active(&t.status) && t.status != "paused")
        .count();
    let query = if dashboard.is_empty() {
        String::new()
    } else {
        format!("?dashboard={dashboard}")
    };
    layout(
        &format!("Sweep {}", s.name),
        chrome,
        is_active(&s.status),
        html! {
            h1 { "Sweep " (s.name) }
            p.facts {
                (s.sweep_id) " · data set " (s.dataset) " · " strong { (s.status) }
                " · " (s.strategy) " · objective " (s.objective)
                @if !s.varied.is_empty() { " · varied: " (s.varied.join(", ")) }
                " · created " (s.created_at)
                @if !s.finished_at.is_empty() { ", finished " (s.finished_at) }
            }
            p {
                progress value=(done) max=(s.trials.len().max(1)) {}
                " " (done) " of " (s.trials.len()) " trials ended"
            }
            p { strong { (best_line(s)) } }
            @if !effects.is_empty() {
                h2 { "Which value won" }
                p { (effects_heading(s)) }
                ul { @for e in &effects { li { (effect_line(e)) } } }
            }
            h2 { "Trials" }
            @if rows.is_empty() {
                p { "No trials." }
            } @else {
                table {
                    thead { tr {
                        @for (i, h) in header.iter().enumerate() {
                            @if i == 0 { th { "best" } } @else { th { (h) } }
                        }
                    } }
                    tbody {
                        @for row in &rows {
                            tr class=[(row[0] == "*").then_some("best")] {
                                @for (i, cell) in row.iter().enumerate() {
                                    @if i == 1 {
                                        td { a href={ "/trials/" (cell) } { (cell) } }
                                    } @else if i >= numeric_from {
                                        td.n { (cell) }
                                    } @else {
                                        td { (cell) }
                                    }
                                }
                            }
                        }
                    }
                }
            }
            @if let Some((trial_id, preview)) = data {
                (data_preview(trial_id, preview, true))
            }
            h2 { "Charts" }
            div.charts {
                @for (file, title) in panels {
                    figure {
                        a href={ "/sweeps/" (s.sweep_id) "/charts/" (file) (query) } {
                            img alt=(title) src={ "/sweeps/" (s.sweep_id) "/charts/" (file) (query) };
                        }
                        figcaption { (title) }
                    }
                }
            }
        },
    )
}

/// `/trials/ID`: everything about one trial.
pub(super) fn trial(chrome: &Chrome, t: &pb::Trial) -> Markup {
    let params = ordered_params(&params_map(&t.params));
    let mut provenance: Vec<(&String, &String)> = t.provenance.iter().collect();
    provenance.sort();
    layout(
        &format!("Trial {}", t.trial_id),
        chrome,
        is_active(&t.status),
        html! {
            h1 { "Trial " (t.trial_id) }
            p.facts {
                "trial " (t.index) " of sweep " a href={ "/sweeps/" (t.sweep_id) } { (t.sweep_id) }
                " · " strong { (t.status) }
                @if !t.device.is_empty() { " · " (t.device) }
                @if !t.worker.is_empty() { " · worker " (t.worker) }
                " · attempts " (t.attempts)
                @if !t.started_at.is_empty() { " · started " (t.started_at) }
                @if !t.finished_at.is_empty() { ", finished " (t.finished_at) }
            }
            @if !t.error.is_empty() { p.error { (t.error) } }
            table {
                tbody {
                    tr { th { "test accuracy" } td.n { @if t.has_test { (pct(t.test_accuracy)) } @else { "-" } } }
                    tr { th { "test loss" } td.n { @if t.has_test { (loss(t.test_loss)) } @else { "-" } } }
                    tr { th { "best epoch" } td.n { @if t.best_epoch > 0 { (t.best_epoch) } @else { "-" } } }
                    tr { th { "parameters" } td.n { @if t.parameter_count > 0 { (count(t.parameter_count)) } @else { "-" } } }
                    tr { th { "examples (train / val / test)" } td.n { (t.train_examples) " / " (t.val_examples) " / " (t.test_examples) } }
                }
            }
            h2 { "Curves" }
            div.charts {
                @for (file, title) in [("accuracy_curves.png", "Train and validation accuracy per epoch"), ("loss_curves.png", "Train and validation loss per epoch")] {
                    figure {
                        img alt=(title) src={ "/trials/" (t.trial_id) "/charts/" (file) };
                        figcaption { (title) }
                    }
                }
            }
            @if let Some(r) = &t.test_report { (test_report(&t.trial_id, r)) }
            @if let Some(p) = &t.data_preview { (data_preview(&t.trial_id, p, false)) }
            h2 { "Epochs" }
            @if t.epochs.is_empty() { p { "No epoch recorded yet." } } @else {
                table {
                    thead { tr {
                        th { "epoch" } th { "train loss" } th { "train acc" } th { "val loss" }
                        th { "val acc" } th { "seconds" } th { "img/s" } th { "lr" }
                    } }
                    tbody {
                        @for e in &t.epochs {
                            tr class=[(e.epoch == t.best_epoch).then_some("best")] {
                                td.n { (e.epoch) } td.n { (loss(e.train_loss)) } td.n { (pct(e.train_accuracy)) }
                                td.n { (loss(e.val_loss)) } td.n { (pct(e.val_accuracy)) }
                                td.n { (format!("{:.1}", e.seconds)) } td.n { (format!("{:.0}", e.images_per_second)) }
                                td.n { (learning_rate_text(e.learning_rate)) }
                            }
                        }
                    }
                }
            }
            h2 { "Hyperparameters" }
            table { tbody {
                @for (name, value) in &params { tr { th { (name) } td { (param_value(value)) } } }
            } }
            @if !t.model_summary.is_empty() {
                h2 { "Model" }
                table.model {
                    thead { tr { th { "layer" } th { "kind" } th { "output shape" } th { "parameters" } th { "non-trainable" } } }
                    tbody {
                        @for l in &t.model_summary {
                            tr {
                                td { (l.name) } td { (l.kind) } td { (shape_text(&l.output_shape)) } td.n { (count(l.parameters)) }
                                td.n { @if l.non_trainable_parameters > 0 { (count(l.non_trainable_parameters)) } }
                            }
                        }
                        @let totals = summary_totals(&t.model_summary);
                        tr { th { "total" } td {} td {} th.n { (count(totals.trainable)) } th.n { (count(totals.non_trainable)) } }
                        tr { th { "Keras total" } td { "model.summary()'s count" } td {} th.n { (count(totals.keras_total())) } td {} }
                    }
                }
            }
            @if !t.notes.is_empty() || !t.frozen.is_empty() || !t.reinitialised.is_empty() {
                h2 { "Notes" }
                ul {
                    @for n in &t.notes { li { (n) } }
                    @if !t.frozen.is_empty() { li { "frozen: " (t.frozen.join(", ")) } }
                    @if !t.reinitialised.is_empty() { li { "initialised afresh: " (t.reinitialised.join(", ")) } }
                }
            }
            @if !provenance.is_empty() {
                h2 { "Provenance" }
                table { tbody {
                    @for (k, v) in &provenance { tr { th { (k) } td { (v) } } }
                } }
            }
        },
    )
}

/// A trial's training images as its model saw them, a row per class, and its augmentation
/// preview; `for_sweep` says whose they are (the sweep page shows one trial's).
fn data_preview(trial_id: &str, p: &pb::DataPreview, for_sweep: bool) -> Markup {
    let name = |c: u32| {
        p.class_names
            .get(c as usize)
            .cloned()
            .unwrap_or_else(|| c.to_string())
    };
    let mut classes: Vec<u32> = p.samples.iter().map(|s| s.class).collect();
    classes.dedup();
    html! {
        h2 { "Training data as the model sees it" }
        p.facts {
            "The first training images of each class after resizing, channel conversion and standardisation"
            @if for_sweep { ", as trial " a href={ "/trials/" (trial_id) } { (trial_id) } " saw them" }
            "."
        }
        table.samples { tbody {
            @for c in &classes {
                tr {
                    th { (name(*c)) }
                    td { div.images {
                        @for (n, s) in p.samples.iter().enumerate().filter(|(_, s)| s.class == *c) {
                            img alt={ (name(*c)) " #" (s.index) } title={ "training image #" (s.index) }
                                src={ "/trials/" (trial_id) "/samples/" (n) ".png" };
                        }
                    } }
                }
            }
        } }
        @if !p.augmented.is_empty() {
            h2 { "Augmentation preview" }
            p.facts { "One training image as is, then " (p.augmented.len() - 1) " draws under " (p.augmentation) "." }
            div.images {
                @for n in 0..p.augmented.len() {
                    figure {
                        img alt=(if n == 0 { "as is".to_string() } else { format!("draw {n}") })
                            src={ "/trials/" (trial_id) "/augmented/" (n) ".png" };
                        figcaption { @if n == 0 { "as is" } @else { "draw " (n) } }
                    }
                }
            }
        }
    }
}

/// The test pass class by class: the confusion matrix (the diagonal marked), precision and
/// recall per class, and the misclassified test images with their true and predicted class.
fn test_report(trial_id: &str, r: &pb::TestReport) -> Markup {
    let total: u64 = r
        .confusion
        .iter()
        .flat_map(|row| &row.predicted)
        .map(|&n| n as u64)
        .sum();
    html! {
        h2 { "Confusion matrix" }
        p.facts { (count(total)) " test examples; rows are the true class, columns the predicted one." }
        table.confusion {
            thead { tr {
                th { "true \\ predicted" }
                @for c in 0..r.confusion.len() as u32 { th { (class_name(r, c)) } }
            } }
            tbody {
                @for (i, row) in r.confusion.iter().enumerate() {
                    tr {
                        th { (class_name(r, i as u32)) }
                        @for (j, n) in row.predicted.iter().enumerate() {
                            @if i == j { td.n.diagonal { (n) } } @else if *n > 0 { td.n.off { (n) } } @else { td.n { (n) } }
                        }
                    }
                }
            }
        }
        h2 { "Precision and recall per class" }
        table {
            thead { tr { th { "class" } th { "precision" } th { "recall" } th { "support" } } }
            tbody {
                @for s in &r.class_scores {
                    tr {
                        td { (s.name) }
                        td.n { @if s.has_precision { (pct(s.precision)) } @else { "-" } }
                        td.n { @if s.support > 0 { (pct(s.recall)) } @else { "-" } }
                        td.n { (s.support) }
                    }
                }
            }
        }
        @if !r.misclassified.is_empty() {
            h2 { "Misclassified test images (the first " (r.misclassified.len()) ")" }
            div.images {
                @for (n, m) in r.misclassified.iter().enumerate() {
                    figure {
                        img alt={ "test image " (m.index) } src={ "/trials/" (trial_id) "/misclassified/" (n) ".png" };
                        figcaption { "#" (m.index) ": " (class_name(r, m.truth)) " → " strong { (class_name(r, m.predicted)) } }
                    }
                }
            }
        }
    }
}

/// `/workers`: devices, workers, running trials, the queue and the launcher.
pub(super) fn workers(chrome: &Chrome, s: &pb::Status) -> Markup {
    layout(
        "Workers and queue",
        chrome,
        true,
        html! {
            h1 { "Workers and queue" }
            p.facts {
                "cnnd " (s.version) " · " (s.workers_busy) " busy, " (s.workers_idle) " idle · "
                strong { (s.queue_depth) " trials queued" }
                @if !s.libtorch_version.is_empty() { " · libtorch " (s.libtorch_version) }
            }
            @if let Some(l) = &s.launcher {
                p.facts {
                    "launcher " (l.kind) " · wants " (l.wanted) " (" (l.min_workers) ".." (l.max_workers) ")"
                    " · starting " (l.starting) " · running " (l.running)
                    @if !l.last_error.is_empty() { " · " span.error { "last error: " (l.last_error) } }
                }
            }
            h2 { "Running trials" }
            @if s.running.is_empty() { p { "None." } } @else {
                table {
                    thead { tr { th { "trial" } th { "sweep" } th { "worker" } th { "epoch" } th { "batch" } th { "val acc" } } }
                    tbody {
                        @for r in &s.running {
                            tr {
                                td { a href={ "/trials/" (r.trial_id) } { (r.trial_id) } }
                                td { a href={ "/sweeps/" (r.sweep_id) } { (r.sweep_id) } }
                                td { (r.worker) }
                                td { progress value=(r.epoch) max=(r.epochs_planned.max(1)) {} " " (r.epoch) "/" (r.epochs_planned) }
                                td.n { @if r.batches > 0 { (r.batch) "/" (r.batches) } @else { "-" } }
                                td.n { @if r.val_accuracy > 0.0 { (pct(r.val_accuracy)) } @else { "-" } }
                            }
                        }
                    }
                }
            }
            h2 { "Workers" }
            @if s.workers.is_empty() { p { "No worker has registered." } } @else {
                table {
                    thead { tr { th { "worker" } th { "host" } th { "device" } th { "threads" } th { "state" } th { "trial" } th { "done" } th { "seen" } } }
                    tbody {
                        @for w in &s.workers {
                            tr {
                                td { (w.worker_id) } td { (w.host) } td { (w.device) } td.n { (w.threads) }
                                td { (w.state) }
                                td { @if w.trial_id.is_empty() { "-" } @else { a href={ "/trials/" (w.trial_id) } { (w.trial_id) } } }
                                td.n { (w.trials_done) }
                                td.n { (format!("{:.0} s ago", w.seconds_since_seen)) }
                            }
                        }
                    }
                }
            }
            h2 { "Devices" }
            ul { @for d in &s.devices { li { (d.name) " (" (d.kind) ") " (d.description) } } }
        },
    )
}

/// `/login`: one field for the API token.
pub(super) fn login(message: Option<&str>) -> Markup {
    let chrome = Chrome { logged_in: false };
    layout(
        "Log in",
        &chrome,
        false,
        html! {
            h1 { "Log in" }
            @if let Some(m) = message { p.error { (m) } }
            p { "Paste the daemon's API token (" code { "STATE_DIR/token" } ", or " code { "CNND_TOKEN" } "). "
                "The browser keeps a session cookie, never the token." }
            form.login method="post" action="/login" {
                label for="token" { "API token" }
                input #token type="password" name="token" autocomplete="off" required;
                button type="submit" { "Log in" }
            }
        },
    )
}

/// The 401 page: why, and where to log in.
pub(super) fn login_required(reason: &str) -> Markup {
    let chrome = Chrome { logged_in: false };
    layout(
        "Log in required",
        &chrome,
        false,
        html! {
            h1 { "Log in required" }
            p { (reason) }
            p { a href="/login" { "Log in" } }
        },
    )
}

/// An error as a page with its status code.
pub(super) fn error_page(code: StatusCode, message: &str) -> Response {
    let chrome = Chrome { logged_in: false };
    let page = layout(
        code.canonical_reason().unwrap_or("Error"),
        &chrome,
        false,
        html! {
            h1 { (code.as_u16()) " " (code.canonical_reason().unwrap_or("Error")) }
            p.error { (message) }
            p { a href="/" { "All sweeps" } }
        },
    );
    (code, page).into_response()
}
