//! Text that names trials and hyperparameter values: short trial labels
//! ("k=3 drop=0.5 head=gap"), parameter aliases and value formats, and the
//! status checks that decide how a trial is labelled and drawn.

use std::collections::HashMap;

use super::{ChartSweep, ChartTrial};

/// Short label of a trial built from its varied parameters only, e.g.
/// "k=3 drop=0.5 head=gap". Falls back to "#index" when nothing is varied.
pub(super) fn trial_label(trial: &ChartTrial, varied: &[String]) -> String {
    let parts: Vec<String> = varied
        .iter()
        .filter_map(|name| {
            trial
                .params
                .get(name)
                .map(|v| format!("{}={}", param_alias(name), format_param(v)))
        })
        .collect();
    if parts.is_empty() {
        format!("#{}", trial.index)
    } else {
        parts.join(" ")
    }
}

/// Short display name of a hyperparameter.
pub(super) fn param_alias(name: &str) -> &str {
    match name {
        "kernelSize" => "k",
        "dropout" => "drop",
        "baseFilters" => "filters",
        "learningRate" => "lr",
        "batchSize" => "bs",
        other => other,
    }
}

/// Compact text of a hyperparameter value ("gap", "0.5", "3", "[32,64]").
pub(super) fn format_param(v: &serde_json::Value) -> String {
    use serde_json::Value;
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "none".to_string(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => match (n.as_i64(), n.as_u64(), n.as_f64()) {
            (Some(i), _, _) => i.to_string(),
            (_, Some(u), _) => u.to_string(),
            (_, _, Some(f)) if f != 0.0 && f.abs() < 1e-3 => format!("{f:e}"),
            (_, _, Some(f)) => f.to_string(),
            _ => n.to_string(),
        },
        other => other.to_string(),
    }
}

pub(super) fn is_inactive(status: &str) -> bool {
    matches!(status, "pruned" | "parked" | "failed" | "cancelled")
}

pub(super) fn is_best(sweep: &ChartSweep, trial: &ChartTrial) -> bool {
    sweep.best_trial_id.as_deref() == Some(trial.trial_id.as_str())
}

/// `trial_label` for every trial, with " #index" appended where two trials
/// would otherwise share a label.
pub(super) fn unique_labels(sweep: &ChartSweep) -> Vec<String> {
    let labels: Vec<String> = sweep
        .trials
        .iter()
        .map(|t| trial_label(t, &sweep.varied))
        .collect();
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for l in &labels {
        *counts.entry(l.as_str()).or_default() += 1;
    }
    labels
        .iter()
        .zip(&sweep.trials)
        .map(|(l, t)| {
            if counts[l.as_str()] > 1 && !l.starts_with('#') {
                format!("{l} #{}", t.index)
            } else {
                l.clone()
            }
        })
        .collect()
}

/// The trial label without the `name=value` part of the colour parameter.
pub(super) fn label_without(label: &str, trial: &ChartTrial, param: Option<&str>) -> String {
    let Some(p) = param else {
        return label.to_string();
    };
    let Some(v) = trial.params.get(p) else {
        return label.to_string();
    };
    let part = format!("{}={}", param_alias(p), format_param(v));
    label
        .split(' ')
        .filter(|s| *s != part)
        .collect::<Vec<_>>()
        .join(" ")
}

/// The labels with a prefix they all share (at least 4 characters, ending in
/// a separator such as '-') replaced by "…"; unchanged when there is none.
pub(super) fn elide_common_prefix(labels: &[String]) -> Vec<String> {
    // numbers and ranges ("1000.5", "1e-5–3e-5") are never shortened
    let words = labels
        .iter()
        .all(|l| l.chars().next().is_some_and(char::is_alphabetic));
    if labels.len() < 2 || !words {
        return labels.to_vec();
    }
    let first: Vec<char> = labels[0].chars().collect();
    let mut n = first.len();
    for l in &labels[1..] {
        n = n.min(l.chars().zip(&first).take_while(|(a, b)| a == *b).count());
    }
    // keep at least one character of every label; cut only after a separator
    // so whole words stay ("resnet" / "resnet-wide" keep their names)
    let shortest = labels.iter().map(|l| l.chars().count()).min().unwrap_or(0);
    n = n.min(shortest.saturating_sub(1));
    let Some(sep) = first[..n]
        .iter()
        .rposition(|c| matches!(c, '-' | '_' | ' ' | '/' | ':'))
    else {
        return labels.to_vec();
    };
    let n = sep + 1;
    if n < 4 {
        return labels.to_vec();
    }
    labels
        .iter()
        .map(|l| format!("…{}", l.chars().skip(n).collect::<String>()))
        .collect()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::charts::tests::{trial, varied};

    #[test]
    fn label_uses_varied_params_in_order_with_aliases() {
        let t = trial(
            3,
            json!({"head": "gap", "kernelSize": 3, "dropout": 0.5, "epochs": 10}),
        );
        let l = trial_label(&t, &varied(&["kernelSize", "dropout", "head"]));
        assert_eq!(l, "k=3 drop=0.5 head=gap");
    }

    #[test]
    fn label_aliases_and_unknown_names() {
        let t = trial(
            0,
            json!({"baseFilters": 32, "learningRate": 0.001, "batchSize": 64, "optimizer": "adam"}),
        );
        let l = trial_label(
            &t,
            &varied(&["baseFilters", "learningRate", "batchSize", "optimizer"]),
        );
        assert_eq!(l, "filters=32 lr=0.001 bs=64 optimizer=adam");
        let t = trial(0, json!({"learningRate": 0.0003}));
        assert_eq!(trial_label(&t, &varied(&["learningRate"])), "lr=3e-4");
    }

    #[test]
    fn label_falls_back_to_index() {
        let t = trial(7, json!({"kernelSize": 5}));
        assert_eq!(trial_label(&t, &[]), "#7");
        // varied names the trial does not have
        assert_eq!(trial_label(&t, &varied(&["dropout"])), "#7");
    }

    #[test]
    fn duplicate_labels_are_disambiguated() {
        let sweep = ChartSweep {
            sweep_id: "s".into(),
            name: "n".into(),
            dataset: "d".into(),
            varied: varied(&["head"]),
            trials: vec![
                trial(0, json!({"head": "gap"})),
                trial(1, json!({"head": "gap"})),
                trial(2, json!({"head": "fc"})),
            ],
            best_trial_id: None,
            ..Default::default()
        };
        assert_eq!(
            unique_labels(&sweep),
            vec!["head=gap #0", "head=gap #1", "head=fc"]
        );
    }
}
