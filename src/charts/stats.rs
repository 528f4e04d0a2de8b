//! The numbers behind the objective charts: the sweep's objective ([`Goal`])
//! and each finished trial's value of it, trials grouped by a hyperparameter's
//! value, importance as eta squared, and the Pareto front.

use std::collections::BTreeMap;

use super::axes::{finite_range, fmt_num, fmt_sig, tick_fmt, value_axis, TickAxis};
use super::labels::format_param;
use super::{ChartSweep, ChartTrial};

// ---------------------------------------------------------------------------
// The sweep's objective, and the trials that have a value for it
// ---------------------------------------------------------------------------

/// Direction and display of the sweep's objective.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Goal {
    /// `val_accuracy`: higher is better.
    MaxAccuracy,
    /// `val_loss`: lower is better.
    MinLoss,
}

impl Goal {
    pub(super) fn of(sweep: &ChartSweep) -> Goal {
        match sweep.objective.trim() {
            "val_loss" => Goal::MinLoss,
            _ => Goal::MaxAccuracy,
        }
    }

    /// True when `a` is a better objective value than `b`.
    pub(super) fn better(self, a: f64, b: f64) -> bool {
        match self {
            Goal::MaxAccuracy => a > b,
            Goal::MinLoss => a < b,
        }
    }

    /// Axis and legend text, e.g. "best val. accuracy".
    pub(super) fn name(self) -> &'static str {
        match self {
            Goal::MaxAccuracy => "val. accuracy",
            Goal::MinLoss => "val. loss",
        }
    }

    pub(super) fn direction(self) -> &'static str {
        match self {
            Goal::MaxAccuracy => "higher is better",
            Goal::MinLoss => "lower is better",
        }
    }

    fn percent(self) -> bool {
        self == Goal::MaxAccuracy
    }

    pub(super) fn fmt(self, v: f64) -> String {
        match self {
            Goal::MaxAccuracy => format!("{:.2}%", v * 100.0),
            Goal::MinLoss => format!("{v:.4}"),
        }
    }

    /// A trial's objective value: that of its best epoch (the trainer keeps
    /// and tests the best epoch's weights).
    pub(super) fn trial_value(self, trial: &ChartTrial) -> Option<f64> {
        let values = trial
            .epochs
            .iter()
            .map(|e| match self {
                Goal::MaxAccuracy => e.val_accuracy,
                Goal::MinLoss => e.val_loss,
            })
            .filter(|v| v.is_finite());
        match self {
            Goal::MaxAccuracy => values.reduce(f64::max),
            Goal::MinLoss => values.reduce(f64::min),
        }
    }

    /// The objective axis: padded around the data, ticks in data units.
    pub(super) fn axis(self, lo: f64, hi: f64) -> TickAxis {
        value_axis(lo, hi, self.percent())
    }

    /// Tick label formatter for an objective axis with these ticks.
    pub(super) fn tick_fmt(self, ticks: &[f64]) -> impl Fn(&f64) -> String {
        let percent = self.percent();
        tick_fmt(ticks, percent, if percent { 4 } else { 6 })
    }
}

/// A finished trial (succeeded or pruned) with its objective value.
pub(super) struct Scored<'s> {
    /// Position in `sweep.trials` (labels and colours are indexed by it).
    pub(super) pos: usize,
    pub(super) trial: &'s ChartTrial,
    pub(super) value: f64,
    pub(super) pruned: bool,
}

/// Succeeded and pruned trials that have an objective value, in trial order.
pub(super) fn objective_trials(sweep: &ChartSweep, goal: Goal) -> Vec<Scored<'_>> {
    let mut v: Vec<Scored> = sweep
        .trials
        .iter()
        .enumerate()
        .filter(|(_, t)| matches!(t.status.as_str(), "succeeded" | "pruned"))
        .filter_map(|(pos, t)| {
            goal.trial_value(t).map(|value| Scored {
                pos,
                trial: t,
                value,
                pruned: t.status == "pruned",
            })
        })
        .collect();
    v.sort_by_key(|s| (s.trial.index, s.pos));
    v
}

/// The succeeded trial with the best objective value (ties: lower index).
pub(super) fn best_scored<'a, 's>(scored: &'a [Scored<'s>], goal: Goal) -> Option<&'a Scored<'s>> {
    scored
        .iter()
        .filter(|s| !s.pruned)
        .fold(None, |best: Option<&Scored>, s| match best {
            Some(b) if !goal.better(s.value, b.value) => Some(b),
            _ => Some(s),
        })
}

/// Varied hyperparameters that at least one of the trials has.
pub(super) fn varied_present(sweep: &ChartSweep, scored: &[&Scored]) -> Vec<String> {
    sweep
        .varied
        .iter()
        .filter(|p| scored.iter().any(|s| s.trial.params.contains_key(*p)))
        .cloned()
        .collect()
}

// ---------------------------------------------------------------------------
// Trials grouped by the value of one hyperparameter
// ---------------------------------------------------------------------------

/// More distinct numeric values than this are binned into ranges.
const MAX_GROUPS: usize = 10;
const BINS: usize = 6;

/// Trials sharing one value (or one value range) of a hyperparameter.
pub(super) struct ValueGroup {
    pub(super) label: String,
    /// Indices into the slice of trials that was grouped.
    pub(super) members: Vec<usize>,
    /// Their objective values.
    pub(super) values: Vec<f64>,
}

impl ValueGroup {
    pub(super) fn mean(&self) -> f64 {
        self.values.iter().sum::<f64>() / self.values.len().max(1) as f64
    }

    /// Population standard deviation (0 for a single trial).
    pub(super) fn std(&self) -> f64 {
        let m = self.mean();
        (self.values.iter().map(|v| (v - m).powi(2)).sum::<f64>() / self.values.len().max(1) as f64)
            .sqrt()
    }

    pub(super) fn min_max(&self) -> (f64, f64) {
        finite_range(self.values.iter().copied()).unwrap_or((f64::NAN, f64::NAN))
    }
}

/// Groups `scored` by the value of `param`: one group per distinct value,
/// numbers in numeric order, missing values last as "n/a"; more than
/// [`MAX_GROUPS`] distinct numbers are binned into about [`BINS`] ranges.
pub(super) fn param_groups(param: &str, scored: &[&Scored]) -> Vec<ValueGroup> {
    let numeric: Vec<Option<f64>> = scored
        .iter()
        .map(|s| s.trial.params.get(param).and_then(|v| v.as_f64()))
        .collect();
    let all_numeric = numeric.iter().all(|v| v.is_some());
    let mut distinct: Vec<f64> = numeric.iter().flatten().copied().collect();
    distinct.sort_by(f64::total_cmp);
    distinct.dedup();
    if all_numeric && distinct.len() > MAX_GROUPS {
        return binned_groups(scored, &numeric);
    }
    let mut by_key: BTreeMap<String, ValueGroup> = BTreeMap::new();
    for (i, s) in scored.iter().enumerate() {
        let key = s
            .trial
            .params
            .get(param)
            .map(format_param)
            .unwrap_or_else(|| "n/a".to_string());
        let g = by_key.entry(key.clone()).or_insert_with(|| ValueGroup {
            label: key,
            members: Vec::new(),
            values: Vec::new(),
        });
        g.members.push(i);
        g.values.push(s.value);
    }
    let mut groups: Vec<ValueGroup> = by_key.into_values().collect();
    let sort_key = |g: &ValueGroup| -> (u8, f64) {
        let first = &scored[g.members[0]];
        match first.trial.params.get(param) {
            None => (2, 0.0),
            Some(v) => match v.as_f64() {
                Some(x) => (0, x),
                None => (1, 0.0),
            },
        }
    };
    groups.sort_by(|a, b| {
        let (ka, kb) = (sort_key(a), sort_key(b));
        ka.0.cmp(&kb.0)
            .then(ka.1.total_cmp(&kb.1))
            .then(a.label.cmp(&b.label))
    });
    groups
}

fn binned_groups(scored: &[&Scored], numeric: &[Option<f64>]) -> Vec<ValueGroup> {
    // cut the sorted distinct values into runs holding about n/BINS trials each
    let mut order: Vec<usize> = (0..scored.len()).collect();
    order.sort_by(|a, b| {
        numeric[*a]
            .unwrap_or(0.0)
            .total_cmp(&numeric[*b].unwrap_or(0.0))
    });
    let target = scored.len().div_ceil(BINS).max(1);
    let mut groups: Vec<ValueGroup> = Vec::new();
    let mut bounds: Vec<(f64, f64)> = Vec::new();
    let mut start_new = true;
    for (k, &i) in order.iter().enumerate() {
        let v = numeric[i].unwrap_or(0.0);
        if start_new {
            groups.push(ValueGroup {
                label: String::new(),
                members: Vec::new(),
                values: Vec::new(),
            });
            bounds.push((v, v));
            start_new = false;
        }
        let g = groups.last_mut().expect("pushed above");
        g.members.push(i);
        g.values.push(scored[i].value);
        bounds.last_mut().expect("pushed above").1 = v;
        let next = order.get(k + 1).map(|j| numeric[*j].unwrap_or(0.0));
        if g.members.len() >= target && next.is_some_and(|n| n != v) {
            start_new = true;
        }
    }
    for (g, (lo, hi)) in groups.iter_mut().zip(bounds) {
        g.label = if lo == hi {
            fmt_num(lo)
        } else {
            format!("{}–{}", fmt_sig(lo, 2), fmt_sig(hi, 2))
        };
    }
    groups
}

// ---------------------------------------------------------------------------
// Importance and the Pareto front
// ---------------------------------------------------------------------------

/// Share of the variance of the values explained by their grouping: the
/// between-group sum of squares over the total sum of squares (one-way ANOVA
/// eta squared, 0..=1). None when there are fewer than two values or they
/// do not vary. Non-finite values are ignored.
pub(super) fn eta_squared(groups: &[Vec<f64>]) -> Option<f64> {
    let groups: Vec<Vec<f64>> = groups
        .iter()
        .map(|g| g.iter().copied().filter(|v| v.is_finite()).collect())
        .filter(|g: &Vec<f64>| !g.is_empty())
        .collect();
    let n: usize = groups.iter().map(Vec::len).sum();
    if n < 2 {
        return None;
    }
    let grand = groups.iter().flatten().sum::<f64>() / n as f64;
    let total: f64 = groups.iter().flatten().map(|v| (v - grand).powi(2)).sum();
    let scale = grand.abs().max(1.0);
    if total <= 1e-24 * scale * scale * n as f64 {
        return None;
    }
    let between: f64 = groups
        .iter()
        .map(|g| {
            let m = g.iter().sum::<f64>() / g.len() as f64;
            g.len() as f64 * (m - grand).powi(2)
        })
        .sum();
    Some((between / total).clamp(0.0, 1.0))
}

/// Importance of each varied hyperparameter for the objective: eta squared
/// ([`eta_squared`]) of the objective values of the succeeded trials grouped
/// by the parameter's value, sorted from most to least important (ties: the
/// sweep's order). Empty when fewer than two succeeded trials have an
/// objective value or the values do not vary.
pub(super) fn param_importance(sweep: &ChartSweep) -> Vec<(String, f64)> {
    let goal = Goal::of(sweep);
    let scored = objective_trials(sweep, goal);
    let done: Vec<&Scored> = scored.iter().filter(|s| !s.pruned).collect();
    let mut out: Vec<(String, f64)> = varied_present(sweep, &done)
        .into_iter()
        .filter_map(|p| {
            let groups: Vec<Vec<f64>> = param_groups(&p, &done)
                .into_iter()
                .map(|g| g.values)
                .collect();
            eta_squared(&groups).map(|e| (p, e))
        })
        .collect();
    out.sort_by(|a, b| b.1.total_cmp(&a.1));
    out
}

/// Indices of the Pareto-optimal points among `(cost, value)` pairs, where a
/// lower cost and a higher value are better: no other point has a cost that
/// is lower or equal and a value that is higher or equal, one of them
/// strictly (identical points are all kept). Points with a non-finite
/// coordinate are ignored. Sorted by cost, then value, then index.
pub(super) fn pareto_front(points: &[(f64, f64)]) -> Vec<usize> {
    let ok = |p: &(f64, f64)| p.0.is_finite() && p.1.is_finite();
    let mut front: Vec<usize> = (0..points.len())
        .filter(|&i| {
            let p = points[i];
            ok(&p)
                && !points
                    .iter()
                    .any(|q| ok(q) && q.0 <= p.0 && q.1 >= p.1 && (q.0 < p.0 || q.1 > p.1))
        })
        .collect();
    front.sort_by(|&a, &b| {
        points[a]
            .0
            .total_cmp(&points[b].0)
            .then(points[a].1.total_cmp(&points[b].1))
            .then(a.cmp(&b))
    });
    front
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::charts::tests::{trial, varied};
    use cnnd_core::epoch::EpochRecord;

    #[test]
    fn pareto_front_by_hand() {
        // (parameters, accuracy)
        let pts = [
            (100.0, 0.90), // 0: front
            (200.0, 0.95), // 1: dominated by 5 (same size, more accurate)
            (150.0, 0.89), // 2: dominated by 0 (bigger, less accurate)
            (300.0, 0.95), // 3: dominated by 5
            (50.0, 0.80),  // 4: front (smallest)
            (200.0, 0.96), // 5: front (most accurate)
            (f64::NAN, 0.99),
        ];
        assert_eq!(pareto_front(&pts), vec![4, 0, 5]);
        // identical points are both optimal; one point is its own front
        assert_eq!(pareto_front(&[(10.0, 0.5), (10.0, 0.5)]), vec![0, 1]);
        assert_eq!(pareto_front(&[(10.0, 0.5)]), vec![0]);
        assert!(pareto_front(&[]).is_empty());
        // a strictly better point dominates everything
        assert_eq!(
            pareto_front(&[(20.0, 0.7), (5.0, 0.9), (30.0, 0.8)]),
            vec![1]
        );
    }

    #[test]
    fn eta_squared_by_hand() {
        // grand mean 2.75; SS_total = 3.0625 + 0.5625 + 0.0625 + 5.0625 = 8.75;
        // group means 1.5 and 4: SS_between = 2·1.5625 + 2·1.5625 = 6.25
        let e = eta_squared(&[vec![1.0, 2.0], vec![3.0, 5.0]]).unwrap();
        assert!((e - 6.25 / 8.75).abs() < 1e-12, "{e}");
        // equal group means explain nothing; separated constant groups everything
        let e = eta_squared(&[vec![1.0, 3.0], vec![2.0, 2.0]]).unwrap();
        assert!(e.abs() < 1e-12, "{e}");
        let e = eta_squared(&[vec![1.0, 1.0], vec![3.0, 3.0, 3.0]]).unwrap();
        assert!((e - 1.0).abs() < 1e-12, "{e}");
        // one group: 0; no variance or too few values: undefined
        assert_eq!(eta_squared(&[vec![1.0, 2.0, 4.0]]), Some(0.0));
        assert_eq!(eta_squared(&[vec![2.0], vec![2.0]]), None);
        assert_eq!(eta_squared(&[vec![2.0], vec![]]), None);
        // groups of three: means 2, 5, 8, grand 5; SS_between = 3·9 + 0 + 3·9 = 54;
        // SS_total = 54 + 3·(1+0+1) = 60
        let e = eta_squared(&[
            vec![1.0, 2.0, 3.0],
            vec![4.0, 5.0, 6.0],
            vec![7.0, 8.0, 9.0],
        ])
        .unwrap();
        assert!((e - 0.9).abs() < 1e-12, "{e}");
    }

    #[test]
    fn param_importance_ranks_by_eta_squared() {
        // objective: the best epoch's val accuracy; the pruned and the failed
        // trial are left out of the importance.
        let mk = |i: u32, head: &str, k: u32, acc: f64, status: &str| {
            let mut t = trial(i, json!({"head": head, "k": k}));
            t.status = status.into();
            t.epochs = vec![
                EpochRecord {
                    epoch: 1,
                    val_accuracy: acc - 0.1,
                    ..Default::default()
                },
                EpochRecord {
                    epoch: 2,
                    val_accuracy: acc,
                    ..Default::default()
                },
            ];
            t
        };
        let sweep = ChartSweep {
            varied: varied(&["head", "k"]),
            trials: vec![
                mk(0, "gap", 3, 0.9, "succeeded"),
                mk(1, "gap", 5, 0.8, "succeeded"),
                mk(2, "dense", 3, 0.6, "succeeded"),
                mk(3, "dense", 5, 0.5, "succeeded"),
                mk(4, "dense", 5, 0.1, "pruned"),
                mk(5, "dense", 5, 0.1, "failed"),
            ],
            ..Default::default()
        };
        // values 0.9 0.8 0.6 0.5, grand mean 0.7, SS_total = 0.04+0.01+0.01+0.04 = 0.10
        // head: means 0.85 / 0.55 → SS_between = 2·0.0225·2 = 0.09 → 0.9
        // k:    means 0.75 / 0.65 → SS_between = 2·0.0025·2 = 0.01 → 0.1
        let imp = param_importance(&sweep);
        assert_eq!(imp.len(), 2);
        assert_eq!(imp[0].0, "head");
        assert!((imp[0].1 - 0.9).abs() < 1e-9, "{imp:?}");
        assert_eq!(imp[1].0, "k");
        assert!((imp[1].1 - 0.1).abs() < 1e-9, "{imp:?}");
    }

    #[test]
    fn objective_direction_and_best_so_far_inputs() {
        let mut t = trial(0, json!({}));
        t.epochs = vec![
            EpochRecord {
                epoch: 1,
                val_accuracy: 0.8,
                val_loss: 0.5,
                ..Default::default()
            },
            EpochRecord {
                epoch: 2,
                val_accuracy: 0.85,
                val_loss: f64::NAN,
                ..Default::default()
            },
            EpochRecord {
                epoch: 3,
                val_accuracy: 0.83,
                val_loss: 0.4,
                ..Default::default()
            },
        ];
        assert_eq!(Goal::MaxAccuracy.trial_value(&t), Some(0.85));
        assert_eq!(Goal::MinLoss.trial_value(&t), Some(0.4));
        let sweep = ChartSweep {
            objective: "val_loss".into(),
            ..Default::default()
        };
        assert_eq!(Goal::of(&sweep), Goal::MinLoss);
        assert_eq!(Goal::of(&ChartSweep::default()), Goal::MaxAccuracy);
        assert!(Goal::MinLoss.better(0.1, 0.2));
        assert!(Goal::MaxAccuracy.better(0.2, 0.1));
    }

    #[test]
    fn many_numeric_values_are_binned_and_ordered() {
        let trials: Vec<ChartTrial> = (0..30)
            .map(|i| {
                let mut t = trial(i, json!({"lr": 10f64.powf(-4.0 + i as f64 / 10.0)}));
                t.epochs = vec![EpochRecord {
                    epoch: 1,
                    val_accuracy: 0.5 + i as f64 / 100.0,
                    ..Default::default()
                }];
                t
            })
            .collect();
        let sweep = ChartSweep {
            varied: varied(&["lr"]),
            trials,
            ..Default::default()
        };
        let scored = objective_trials(&sweep, Goal::MaxAccuracy);
        let refs: Vec<&Scored> = scored.iter().collect();
        let groups = param_groups("lr", &refs);
        assert!((2..=BINS).contains(&groups.len()), "{}", groups.len());
        assert_eq!(groups.iter().map(|g| g.values.len()).sum::<usize>(), 30);
        assert!(groups[0].label.contains('–'), "{}", groups[0].label);
        // ordered by value: the means rise with lr here
        let means: Vec<f64> = groups.iter().map(ValueGroup::mean).collect();
        assert!(means.windows(2).all(|w| w[0] < w[1]), "{means:?}");
        // few values: one group each, numbers in numeric order, missing last
        let mut few = sweep.clone();
        few.trials.truncate(3);
        few.trials[0].params = json!({"lr": 10}).as_object().cloned().unwrap();
        few.trials[1].params = json!({"lr": 9}).as_object().cloned().unwrap();
        few.trials[2].params = Default::default();
        let scored = objective_trials(&few, Goal::MaxAccuracy);
        let refs: Vec<&Scored> = scored.iter().collect();
        let labels: Vec<String> = param_groups("lr", &refs)
            .into_iter()
            .map(|g| g.label)
            .collect();
        assert_eq!(labels, ["9", "10", "n/a"]);
    }
}
