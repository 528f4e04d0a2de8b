//! `cnnctl report SWEEP -o report.html`: one self-contained HTML file to share a sweep: its
//! facts, the trial table, which value of each varied hyperparameter won and by how much, and
//! every chart of its dashboard embedded as a `data:` URI. Nothing beside the file, nothing
//! fetched when it is opened (its Content-Security-Policy allows inline styles and data
//! images only), and every string that came from the daemon escaped (maud).
//!
//! Owns: the report's layout. The numbers come from `commands` and `format`, shared with
//! `cnnctl sweep`.

use std::path::Path;

use base64::Engine;
use cnnd_proto as pb;
use maud::{html, Markup, PreEscaped, DOCTYPE};

use crate::commands::render_charts;
use crate::format::{best_line, sweep_rows};
use crate::format::{effect_line, effects_heading, param_effects};
use crate::{out, CliError, Daemon};

const STYLE: &str = "body{font:14px/1.45 system-ui,sans-serif;margin:2em auto;max-width:1240px;color:#222;padding:0 1em}\
h1{font-size:1.5em;margin-bottom:.2em}.facts{color:#555}table{border-collapse:collapse;margin:1em 0}\
th,td{padding:.25em .7em;border-bottom:1px solid #ddd;text-align:left}td.n{text-align:right;font-variant-numeric:tabular-nums}\
tr.best{background:#fff4e0;font-weight:600}figure{margin:1.5em 0}img{max-width:100%;border:1px solid #eee}\
figcaption{color:#555}ul.effects{padding-left:1.2em}";

/// Fetches the sweep and its charts (bytes over the connection) and writes the report.
pub async fn report(
    d: &mut Daemon,
    id: &str,
    dashboard: Option<String>,
    file: &Path,
) -> Result<(), CliError> {
    let addr = d.addr.clone();
    let sweep = d
        .client
        .get_sweep(pb::GetSweepRequest {
            sweep_id: id.to_string(),
            all_params: false,
        })
        .await
        .map_err(|e| CliError::rpc(format!("get sweep {id}"), &addr, e))?
        .into_inner();
    let charts = render_charts(d, id, dashboard, true).await?.charts;
    let html = render(&sweep, &charts).into_string();
    std::fs::write(file, html)
        .map_err(|e| CliError::Other(format!("writing {}: {e}", file.display())))?;
    out(file.display().to_string());
    Ok(())
}

/// The whole page.
pub fn render(s: &pb::Sweep, charts: &[pb::Chart]) -> Markup {
    let (header, rows) = sweep_rows(s);
    let numeric_from = header.len().saturating_sub(4);
    let effects = param_effects(s);
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta http-equiv="Content-Security-Policy"
                    content="default-src 'none'; img-src data:; style-src 'unsafe-inline'";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { "Sweep " (s.sweep_id) " " (s.name) }
                style { (PreEscaped(STYLE)) }
            }
            body {
                h1 { "Sweep " (s.name) }
                p.facts {
                    (s.sweep_id) " · data set " (s.dataset) " · " (s.status)
                    " · " (s.trials.len()) " trials"
                    @if !s.varied.is_empty() { " · varied: " (s.varied.join(", ")) }
                    " · created " (s.created_at)
                    @if !s.finished_at.is_empty() { ", finished " (s.finished_at) }
                }
                p { strong { (best_line(s)) } }
                @if !effects.is_empty() {
                    h2 { "Which value won" }
                    p { (effects_heading(s)) }
                    ul.effects {
                        @for e in &effects { li { (effect_line(e)) } }
                    }
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
                                        @if i >= numeric_from { td.n { (cell) } } @else { td { (cell) } }
                                    }
                                }
                            }
                        }
                    }
                }
                h2 { "Charts" }
                @if charts.is_empty() { p { "No charts." } }
                @for c in charts {
                    figure {
                        img alt=(c.name) src=(data_uri(c));
                        figcaption { (c.name) }
                    }
                }
            }
        }
    }
}

/// A chart as a `data:` URI (its media type as the daemon gave it, PNG otherwise).
fn data_uri(c: &pb::Chart) -> String {
    let media_type = if c.media_type.starts_with("image/") && !c.media_type.contains([';', ',']) {
        c.media_type.as_str()
    } else {
        "image/png"
    };
    format!(
        "data:{media_type};base64,{}",
        base64::engine::general_purpose::STANDARD.encode(&c.data)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_from_the_daemon_are_escaped_and_charts_embedded() {
        let sweep = pb::Sweep {
            sweep_id: "sw-1".into(),
            name: "<script>alert(1)</script>".into(),
            dataset: "mnist".into(),
            status: "finished".into(),
            ..Default::default()
        };
        let charts = [pb::Chart {
            name: "a\"b.png".into(),
            media_type: "image/png".into(),
            data: b"\x89PNG".to_vec(),
            path: String::new(),
        }];
        let page = render(&sweep, &charts).into_string();
        assert!(!page.contains("<script>"), "{page}");
        assert!(
            page.contains("&lt;script&gt;alert(1)&lt;/script&gt;"),
            "{page}"
        );
        assert!(page.contains("alt=\"a&quot;b.png\""), "{page}");
        assert!(
            page.contains("src=\"data:image/png;base64,iVBORw==\""),
            "{page}"
        );
        assert!(
            !page.contains("http://") && !page.contains("https://"),
            "{page}"
        );
    }
}
