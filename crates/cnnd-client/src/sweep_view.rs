//! How a sweep reads, for people: percentages, counts, the trial table, the best trial's
//! line and which value of each varied hyperparameter won. Shared by `cnnctl` (its tables
//! and `cnnctl report`) and the daemon's browser dashboard, so that both say the same thing.

use cnnd_core::sweep::Objective;
use cnnd_proto::{self as pb, struct_to_json};
use serde_json::{Map, Value};

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

/// An epoch's learning rate: "1.00e-3"; "-" for epochs recorded before rates were kept.
pub fn learning_rate_text(rate: f64) -> String {
    if rate > 0.0 {
        format!("{rate:.2e}")
    } else {
        "-".into()
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

/// A class's name in a test report (its number when the report has none).
pub fn class_name(r: &pb::TestReport, c: u32) -> String {
    r.class_names
        .get(c as usize)
        .cloned()
        .unwrap_or_else(|| c.to_string())
}

/// A layer's output shape for one image: "32 x 28 x 28", "128".
pub fn shape_text(shape: &[i64]) -> String {
    shape
        .iter()
        .map(|d| d.to_string())
        .collect::<Vec<_>>()
        .join(" x ")
}

/// What a model summary's parameters add up to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParameterTotals {
    pub trainable: u64,
    /// Batch norm's moving statistics.
    pub non_trainable: u64,
}

impl ParameterTotals {
    /// The total Keras's `model.summary()` prints: trainable and non-trainable.
    pub fn keras_total(&self) -> u64 {
        self.trainable + self.non_trainable
    }
}

/// The totals of a model summary.
pub fn summary_totals(layers: &[pb::ModelLayer]) -> ParameterTotals {
    ParameterTotals {
        trainable: layers.iter().map(|l| l.parameters).sum(),
        non_trainable: layers.iter().map(|l| l.non_trainable_parameters).sum(),
    }
}

pub fn params_map(s: &Option<prost_types::Struct>) -> Map<String, Value> {
    s.as_ref().map(struct_to_json).unwrap_or_default()
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

    pub fn spread_value(&self) -> f64 {
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

/// The trial table as text: its header and one row per trial (a `*` first marks the best;
/// the last four columns are numbers).
pub fn sweep_rows(s: &pb::Sweep) -> (Vec<String>, Vec<Vec<String>>) {
    let ranking = Ranking::of(s);
    let mut header: Vec<String> = vec!["".into(), "trial".into(), "status".into()];
    header.extend(s.varied.iter().cloned());
    header.extend(
        ["epochs", ranking.heading(), "test acc", "params"]
            .iter()
            .map(|h| h.to_string()),
    );
    let mut rows = Vec::with_capacity(s.trials.len());
    for tr in &s.trials {
        let params = params_map(&tr.params);
        let best = !s.best_trial_id.is_empty() && tr.trial_id == s.best_trial_id;
        let mut row: Vec<String> = vec![
            if best { "*".into() } else { "".into() },
            tr.trial_id.clone(),
            tr.status.clone(),
        ];
        row.extend(
            s.varied
                .iter()
                .map(|n| params.get(n).map(param_value).unwrap_or_else(|| "-".into())),
        );
        row.push(format!("{}/{}", tr.epochs_done, tr.epochs_planned));
        row.push(if tr.epochs_done > 0 {
            ranking.show(ranking.value(tr))
        } else {
            "-".into()
        });
        row.push(if tr.status == "succeeded" || tr.test_accuracy > 0.0 {
            pct(tr.test_accuracy)
        } else {
            "-".into()
        });
        row.push(if tr.parameter_count > 0 {
            count(tr.parameter_count)
        } else {
            "-".into()
        });
        rows.push(row);
    }
    (header, rows)
}

/// "best by validation accuracy: t-3 (98.95%), test accuracy 98.91% (kernelSize=3 dropout=0.5 head=dense)".
pub fn best_line(s: &pb::Sweep) -> String {
    let Some(best) = s
        .trials
        .iter()
        .find(|t| !s.best_trial_id.is_empty() && t.trial_id == s.best_trial_id)
    else {
        return if s.best_trial_id.is_empty() {
            "best: none yet (no trial has succeeded)".to_string()
        } else {
            format!("best: {}", s.best_trial_id)
        };
    };
    let label = label(&params_map(&best.params), &s.varied);
    let ranking = Ranking::of(s);
    let mut line = format!(
        "best by {}: {} ({}), test accuracy {}",
        ranking.name(),
        best.trial_id,
        ranking.show(ranking.value(best)),
        pct(best.test_accuracy)
    );
    if !label.is_empty() {
        line.push_str(&format!(" ({label})"));
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn percentages_have_two_decimals() {
        assert_eq!(pct(0.98912), "98.91%");
        assert_eq!(pct(0.987), "98.70%");
        assert_eq!(pct(1.0), "100.00%");
        assert_eq!(pct(0.0), "0.00%");
        assert_eq!(pct(f64::NAN), "-");
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
}
