//! Early stopping ("pruning"): at every epoch boundary the daemon decides whether a trial
//! goes on, from the objective values every trial of its sweep has recorded so far.
//!
//! - `median` (Optuna's MedianPruner): after `warmupEpochs`, a trial whose best value so far
//!   is worse than the median of the completed trials' values at the same epoch stops,
//!   once at least `minTrials` trials have completed.
//! - `asha` (asynchronous successive halving, as Ray Tune's AsyncHyperBand): rungs at epochs
//!   `gracePeriod * reductionFactor^k` below the trials' epochs; a trial reaching a rung goes
//!   on only if its value is in the top `1/reductionFactor` of the values recorded at that
//!   rung by the trials that reached it before (the first to arrive always goes on).
//!
//! Owns: the policies and their decisions. Pure logic: no I/O, no clock.

use serde::{Deserialize, Serialize};

use crate::sweep::Objective;

/// How every stop reason of early stopping begins (workers finish such trials `pruned`).
pub const PRUNED: &str = "pruned: ";

/// A sweep's early-stopping policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum EarlyStopping {
    #[default]
    None,
    Median {
        /// Epochs during which no trial is stopped.
        warmup_epochs: u32,
        /// Completed trials needed before any trial is stopped.
        min_trials: u32,
    },
    Asha {
        /// Epoch of the first rung.
        grace_period: u32,
        /// Keep the top 1/`reduction_factor` at each rung; rungs are this factor apart.
        reduction_factor: u32,
        /// The sweep's longest trial: no rung at or past it.
        max_epochs: u32,
    },
}

/// One other trial of the sweep, as the decision sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct OtherTrial {
    /// True when it ended successfully (ran all its epochs).
    pub completed: bool,
    /// Objective values by epoch: `values[e - 1]` is epoch `e`'s.
    pub values: Vec<f64>,
}

/// Higher is better: accuracy as is, loss negated.
fn score(objective: Objective, value: f64) -> f64 {
    match objective {
        Objective::ValAccuracy => value,
        Objective::ValLoss => -value,
    }
}

fn name(objective: Objective) -> &'static str {
    match objective {
        Objective::ValAccuracy => "val_accuracy",
        Objective::ValLoss => "val_loss",
    }
}

/// The `p`-th percentile (0..=100) of `values` with linear interpolation between closest
/// ranks (numpy's default, which Ray Tune's ASHA uses). `values` must not be empty.
pub fn percentile(values: &[f64], p: f64) -> f64 {
    let mut v: Vec<f64> = values.to_vec();
    v.sort_by(f64::total_cmp);
    let rank = p / 100.0 * (v.len() - 1) as f64;
    let (lo, hi) = (rank.floor() as usize, rank.ceil() as usize);
    v[lo] + (v[hi] - v[lo]) * (rank - lo as f64)
}

/// The rung epochs of an ASHA policy, ascending.
pub fn rungs(grace_period: u32, reduction_factor: u32, max_epochs: u32) -> Vec<u32> {
    let mut out = Vec::new();
    let mut r = grace_period.max(1) as u64;
    while r < max_epochs as u64 {
        out.push(r as u32);
        r *= reduction_factor.max(2) as u64;
    }
    out
}

/// Whether the trial whose values so far are `trial` (epoch 1 first; the last one was
/// just recorded) stops now. Returns the reason, starting with "pruned: ", or None to go on.
pub fn decide(
    policy: &EarlyStopping,
    objective: Objective,
    trial: &[f64],
    others: &[OtherTrial],
) -> Option<String> {
    let epoch = trial.len();
    let current = *trial.last()?;
    let what = name(objective);
    match *policy {
        EarlyStopping::None => None,
        EarlyStopping::Median {
            warmup_epochs,
            min_trials,
        } => {
            if epoch <= warmup_epochs as usize {
                return None;
            }
            let at_epoch: Vec<f64> = others
                .iter()
                .filter(|o| o.completed && o.values.len() >= epoch)
                .map(|o| score(objective, o.values[epoch - 1]))
                .collect();
            if at_epoch.is_empty() || at_epoch.len() < min_trials.max(1) as usize {
                return None;
            }
            let median = percentile(&at_epoch, 50.0);
            let best = trial
                .iter()
                .map(|&v| score(objective, v))
                .fold(f64::NEG_INFINITY, f64::max);
            (best < median).then(|| {
                format!(
                    "pruned: median: best {what} {:.4} by epoch {epoch} is worse than the median {:.4} of {} completed trials at epoch {epoch}",
                    score(objective, best),
                    score(objective, median),
                    at_epoch.len()
                )
            })
        }
        EarlyStopping::Asha {
            grace_period,
            reduction_factor,
            max_epochs,
        } => {
            if !rungs(grace_period, reduction_factor, max_epochs).contains(&(epoch as u32)) {
                return None;
            }
            let recorded: Vec<f64> = others
                .iter()
                .filter(|o| o.values.len() >= epoch)
                .map(|o| score(objective, o.values[epoch - 1]))
                .collect();
            if recorded.is_empty() {
                return None;
            }
            let rf = reduction_factor.max(2) as f64;
            let cutoff = percentile(&recorded, (1.0 - 1.0 / rf) * 100.0);
            (score(objective, current) < cutoff).then(|| {
                format!(
                    "pruned: asha: {what} {current:.4} at epoch {epoch} is outside the top 1/{} (cutoff {:.4}) of {} trials at that rung",
                    reduction_factor.max(2),
                    score(objective, cutoff),
                    recorded.len() + 1
                )
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn done(values: &[f64]) -> OtherTrial {
        OtherTrial {
            completed: true,
            values: values.to_vec(),
        }
    }

    fn running(values: &[f64]) -> OtherTrial {
        OtherTrial {
            completed: false,
            values: values.to_vec(),
        }
    }

    #[test]
    fn percentiles_interpolate_like_numpy() {
        assert_eq!(percentile(&[3.0, 1.0, 2.0], 50.0), 2.0);
        assert_eq!(percentile(&[1.0, 2.0, 3.0, 4.0], 50.0), 2.5);
        // numpy.percentile([1, 2, 3, 4], 66.666...) = 3.0
        assert!((percentile(&[4.0, 1.0, 3.0, 2.0], 200.0 / 3.0) - 3.0).abs() < 1e-12);
        assert_eq!(percentile(&[7.0], 90.0), 7.0);
    }

    #[test]
    fn median_stops_a_trial_whose_best_is_below_the_median_of_completed_trials() {
        let policy = EarlyStopping::Median {
            warmup_epochs: 1,
            min_trials: 2,
        };
        let others = [
            done(&[0.5, 0.6, 0.7]),
            done(&[0.6, 0.7, 0.8]),
            done(&[0.7, 0.8, 0.9]),
            running(&[0.1, 0.1]), // not completed: not counted
        ];
        // Epoch 2: median of 0.6, 0.7, 0.8 is 0.7. Best so far 0.65 < 0.7: stop.
        let r = decide(&policy, Objective::ValAccuracy, &[0.65, 0.6], &others).unwrap();
        assert!(
            r.starts_with("pruned: median: best val_accuracy 0.6500 by epoch 2"),
            "{r}"
        );
        assert!(r.contains("median 0.7000 of 3 completed trials"), "{r}");
        // Best so far 0.75 >= 0.7: go on, though the last value is lower.
        assert_eq!(
            decide(&policy, Objective::ValAccuracy, &[0.75, 0.6], &others),
            None
        );
        // Warm-up: epoch 1 never stops.
        assert_eq!(
            decide(&policy, Objective::ValAccuracy, &[0.0], &others),
            None
        );
        // Too few completed trials.
        assert_eq!(
            decide(&policy, Objective::ValAccuracy, &[0.1, 0.1], &others[..1]),
            None
        );
        // Loss: lower is better. Median of 0.6, 0.7, 0.8 = 0.7; best (lowest) 0.75 is worse.
        let r = decide(&policy, Objective::ValLoss, &[0.9, 0.75], &others).unwrap();
        assert!(r.contains("best val_loss 0.7500"), "{r}");
        assert_eq!(
            decide(&policy, Objective::ValLoss, &[0.9, 0.65], &others),
            None
        );
    }

    #[test]
    fn asha_keeps_the_top_fraction_at_each_rung() {
        assert_eq!(rungs(1, 3, 9), vec![1, 3]);
        assert_eq!(rungs(1, 2, 8), vec![1, 2, 4]);
        assert_eq!(rungs(2, 2, 2), Vec::<u32>::new());
        let policy = EarlyStopping::Asha {
            grace_period: 1,
            reduction_factor: 3,
            max_epochs: 9,
        };
        let others = [
            running(&[0.1, 0.2, 0.1]),
            done(&[0.2, 0.3, 0.2]),
            running(&[0.3]),
            running(&[0.4, 0.5, 0.6]),
        ];
        // Rung 1: recorded 0.1, 0.2, 0.3, 0.4; the 66.7th percentile is 0.3.
        let r = decide(&policy, Objective::ValAccuracy, &[0.25], &others).unwrap();
        assert!(
            r.contains("outside the top 1/3 (cutoff 0.3000) of 5 trials"),
            "{r}"
        );
        assert_eq!(
            decide(&policy, Objective::ValAccuracy, &[0.35], &others),
            None
        );
        // Epoch 2 is no rung.
        assert_eq!(
            decide(&policy, Objective::ValAccuracy, &[0.9, 0.0], &others),
            None
        );
        // Rung 3: recorded 0.1, 0.2, 0.6 -> cutoff 0.2 + (0.6 - 0.2) * 1/3.
        let cut = 0.2 + 0.4 / 3.0;
        assert!(decide(
            &policy,
            Objective::ValAccuracy,
            &[0.9, 0.9, cut - 0.01],
            &others
        )
        .is_some());
        assert_eq!(
            decide(
                &policy,
                Objective::ValAccuracy,
                &[0.9, 0.9, cut + 0.01],
                &others
            ),
            None
        );
        // The first trial at a rung always goes on.
        assert_eq!(decide(&policy, Objective::ValAccuracy, &[0.0], &[]), None);
        // Loss: 0.35 is worse than the top third of losses 0.1..0.4 (cutoff 0.2).
        let losses = [
            running(&[0.1]),
            running(&[0.2]),
            running(&[0.3]),
            running(&[0.4]),
        ];
        assert!(decide(&policy, Objective::ValLoss, &[0.35], &losses).is_some());
        assert_eq!(decide(&policy, Objective::ValLoss, &[0.15], &losses), None);
    }

    #[test]
    fn no_policy_never_stops() {
        assert_eq!(
            decide(
                &EarlyStopping::None,
                Objective::ValAccuracy,
                &[0.0],
                &[done(&[1.0])]
            ),
            None
        );
    }
}
