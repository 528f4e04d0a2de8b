//! Early stopping ("pruning"): at every epoch boundary the daemon decides whether a trial
//! goes on, from the objective values every trial of its sweep has recorded so far.
//!
//! - `median` (Optuna's MedianPruner): after `warmupEpochs`, a trial whose best value so far
//!   is worse than the median of the completed trials' values at the same epoch stops,
//!   once at least `minTrials` trials have completed.
//! - `asha` (asynchronous successive halving, Li et al. 2020): rungs at epochs
//!   `gracePeriod * reductionFactor^k` below the trials' epochs. Two forms:
//!   - *promotion* (the paper's, the default): a trial reaching a rung is *parked* there
//!     (checkpoint kept, worker freed) unless it is among the top
//!     `floor(n / reductionFactor)` of the `n` trials that reached that rung; a parked trial
//!     is *promoted* (queued again, resuming from its checkpoint) as soon as later arrivals
//!     put it in that top set. When nothing else is left to run, no more arrivals can come:
//!     each rung then keeps at least one trial (synchronous successive halving's rule), so
//!     the best configuration always trains to the end; parked trials never promoted end
//!     `pruned` ([`asha_promotions`]);
//!   - *stop-or-continue* (Ray Tune's AsyncHyperBand, `ashaMode: stop`): a trial reaching a
//!     rung goes on only if its value is in the top `1/reductionFactor` of the values
//!     recorded at that rung by the trials that reached it before (the first to arrive
//!     always goes on), else it is pruned for good ([`decide`]).
//!
//! Owns: the policies and their decisions. Pure logic: no I/O, no clock.

use serde::{Deserialize, Serialize};

use crate::status::StopReason;
use crate::sweep::Objective;

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
        /// The promotion form (park and promote); false: stop-or-continue. Sweeps stored
        /// before the promotion form existed read as stop-or-continue.
        #[serde(default)]
        promote: bool,
    },
}

/// Where a trial stands, for ASHA's promotions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RungState {
    /// Queued or running, and not being parked: it has gone (or goes) past its last rung.
    Active,
    /// Told to park at its last rung; its worker has not finished it yet.
    Parking,
    /// Finished `parked` at its last rung: promotable.
    Parked,
    /// Succeeded, failed, pruned or cancelled.
    Closed,
}

/// One trial of the sweep, as ASHA's promotions see it.
#[derive(Debug, Clone, PartialEq)]
pub struct RungTrial {
    pub id: String,
    pub state: RungState,
    /// Objective values by epoch: `values[e - 1]` is epoch `e`'s.
    pub values: Vec<f64>,
}

/// What ASHA's promotion form decides after a trial reached a rung or finished.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Promotions {
    /// For the trial that just reached a rung: None to go on, else why it parks
    /// ([`StopReason::Parked`]).
    pub park: Option<StopReason>,
    /// Parked trials to queue again (they resume from their checkpoints).
    pub promote: Vec<String>,
}

/// ASHA's promotion form. `subject` is the trial that just recorded an epoch (None after a
/// trial finished). At every rung `r`, of the `n` trials whose values reach epoch `r`, the
/// top `floor(n / reductionFactor)` by their value at `r` (ties: earlier in `trials` first)
/// deserve promotion; of those, the ones sitting at `r` are promoted: the subject goes on,
/// parked trials are queued again. Trials already past `r`, or queued/running at `r`, are
/// promoted already; trials being parked wait until they are parked. A subject at a rung
/// outside the top set parks. `exhausted`: nothing of the sweep is queued or running, so
/// every rung keeps at least one (`max(1, floor(n / reductionFactor))`).
pub fn asha_promotions(
    policy: &EarlyStopping,
    objective: Objective,
    trials: &[RungTrial],
    subject: Option<&str>,
    exhausted: bool,
) -> Promotions {
    let EarlyStopping::Asha {
        grace_period,
        reduction_factor,
        max_epochs,
        promote: true,
    } = *policy
    else {
        return Promotions::default();
    };
    let rf = reduction_factor.max(2) as usize;
    let what = name(objective);
    let mut out = Promotions::default();
    for rung in rungs(grace_period, reduction_factor, max_epochs) {
        let r = rung as usize;
        let mut reached: Vec<(usize, f64)> = trials
            .iter()
            .enumerate()
            .filter(|(_, t)| t.values.len() >= r)
            .map(|(i, t)| (i, score(objective, t.values[r - 1])))
            .collect();
        // Stable: ties keep the earlier trial first.
        reached.sort_by(|a, b| b.1.total_cmp(&a.1));
        let keep = if exhausted {
            (reached.len() / rf).max(1).min(reached.len())
        } else {
            reached.len() / rf
        };
        for &(i, _) in &reached[..keep] {
            let t = &trials[i];
            if t.values.len() != r {
                continue;
            }
            if subject == Some(t.id.as_str()) {
                continue; // goes on: no park
            }
            if t.state == RungState::Parked {
                out.promote.push(t.id.clone());
            }
        }
        if let Some(t) = subject
            .and_then(|id| trials.iter().position(|t| t.id == id))
            .map(|i| (i, &trials[i]))
            .filter(|(_, t)| t.values.len() == r)
        {
            let (i, t) = t;
            if !reached[..keep].iter().any(|&(j, _)| j == i) {
                let current = t.values[r - 1];
                let cutoff = if keep == 0 {
                    "none promoted yet".to_string()
                } else {
                    format!("cutoff {:.4}", score(objective, reached[keep - 1].1))
                };
                out.park = Some(StopReason::Parked(format!(
                    "asha: {what} {current:.4} at epoch {r} is outside the top {keep} \
                     (1/{rf}, {cutoff}) of {} trials at that rung; resumes if later trials \
                     put it there",
                    reached.len()
                )));
            }
        }
    }
    out
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
/// just recorded) stops now. Returns the reason ([`StopReason::Pruned`]), or None to go on.
pub fn decide(
    policy: &EarlyStopping,
    objective: Objective,
    trial: &[f64],
    others: &[OtherTrial],
) -> Option<StopReason> {
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
                StopReason::Pruned(format!(
                    "median: best {what} {:.4} by epoch {epoch} is worse than the median {:.4} of {} completed trials at epoch {epoch}",
                    score(objective, best),
                    score(objective, median),
                    at_epoch.len()
                ))
            })
        }
        EarlyStopping::Asha { promote: true, .. } => None, // see asha_promotions
        EarlyStopping::Asha {
            grace_period,
            reduction_factor,
            max_epochs,
            promote: false,
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
                StopReason::Pruned(format!(
                    "asha: {what} {current:.4} at epoch {epoch} is outside the top 1/{} (cutoff {:.4}) of {} trials at that rung",
                    reduction_factor.max(2),
                    score(objective, cutoff),
                    recorded.len() + 1
                ))
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
        let r = decide(&policy, Objective::ValAccuracy, &[0.65, 0.6], &others)
            .unwrap()
            .to_string();
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
        let r = decide(&policy, Objective::ValLoss, &[0.9, 0.75], &others)
            .unwrap()
            .to_string();
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
            promote: false,
        };
        let others = [
            running(&[0.1, 0.2, 0.1]),
            done(&[0.2, 0.3, 0.2]),
            running(&[0.3]),
            running(&[0.4, 0.5, 0.6]),
        ];
        // Rung 1: recorded 0.1, 0.2, 0.3, 0.4; the 66.7th percentile is 0.3.
        let r = decide(&policy, Objective::ValAccuracy, &[0.25], &others)
            .unwrap()
            .to_string();
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

    fn at(id: &str, state: RungState, values: &[f64]) -> RungTrial {
        RungTrial {
            id: id.into(),
            state,
            values: values.to_vec(),
        }
    }

    #[test]
    fn asha_promotion_parks_below_the_top_fraction_and_promotes_later() {
        use RungState::*;
        let policy = EarlyStopping::Asha {
            grace_period: 1,
            reduction_factor: 3,
            max_epochs: 9,
            promote: true,
        };
        let acc = Objective::ValAccuracy;
        // 1. The first trial at rung 1: floor(1/3) = 0 promoted, so it parks.
        let p = asha_promotions(&policy, acc, &[at("a", Active, &[0.5])], Some("a"), false);
        assert!(p.park.as_ref().unwrap().to_string().starts_with(
            "parked: asha: val_accuracy 0.5000 at epoch 1 is outside the top 0 (1/3, none promoted yet) of 1 trials"
        ), "{p:?}");
        assert!(p.promote.is_empty());
        // 2. A second one parks too (floor(2/3) = 0).
        let trials = [at("a", Parked, &[0.5]), at("b", Active, &[0.6])];
        assert!(asha_promotions(&policy, acc, &trials, Some("b"), false)
            .park
            .is_some());
        // 3. The third arrival makes one promotion: b (0.6), parked, is queued again; c parks.
        let trials = [
            at("a", Parked, &[0.5]),
            at("b", Parked, &[0.6]),
            at("c", Active, &[0.4]),
        ];
        let p = asha_promotions(&policy, acc, &trials, Some("c"), false);
        assert_eq!(p.promote, vec!["b".to_string()]);
        assert!(p
            .park
            .unwrap()
            .to_string()
            .contains("top 1 (1/3, cutoff 0.6000) of 3 trials"));
        // 4. d (0.9) is now the top 1 of 4: it goes on; b, queued again, is not promoted twice.
        let mut trials = vec![
            at("a", Parked, &[0.5]),
            at("b", Active, &[0.6]),
            at("c", Parked, &[0.4]),
            at("d", Active, &[0.9]),
        ];
        assert_eq!(
            asha_promotions(&policy, acc, &trials, Some("d"), false),
            Promotions::default()
        );
        // 5. e (0.55): top 1 of 5 is d, running at rung 1 already: e parks, nothing promoted.
        trials.push(at("e", Active, &[0.55]));
        let p = asha_promotions(&policy, acc, &trials, Some("e"), false);
        assert!(p.park.is_some() && p.promote.is_empty(), "{p:?}");
        trials[4].state = Parked;
        // 6. f (0.3): top 2 of 6 are d and b, both promoted: f parks.
        trials.push(at("f", Active, &[0.3]));
        let p = asha_promotions(&policy, acc, &trials, Some("f"), false);
        assert!(p.park.is_some() && p.promote.is_empty(), "{p:?}");
        // A trial still being parked is not promoted yet, though in the top; once parked, it is.
        trials[5].state = Parked;
        trials.push(at("g", Parking, &[0.95]));
        trials.push(at("h", Closed, &[0.1])); // failed at rung 1: counts, never promoted
        trials.push(at("i", Parked, &[0.2]));
        // 9 at rung 1, top 3: g (parking), d, b.
        assert_eq!(
            asha_promotions(&policy, acc, &trials, None, false),
            Promotions::default()
        );
        trials[6].state = Parked;
        assert_eq!(
            asha_promotions(&policy, acc, &trials, None, false).promote,
            vec!["g".to_string()]
        );
        trials[6].state = Active; // queued again
                                  // Exhausted (nothing queued or running): every rung keeps at least one. At rung 1
                                  // the top 3 are promoted already; at rung 3 nobody is parked yet: nothing to do.
        assert_eq!(
            asha_promotions(&policy, acc, &trials, None, true),
            Promotions::default()
        );
        // Rung 3: d and b arrive; floor(2/3) = 0, so the first parks.
        trials[3].values = vec![0.9, 0.91, 0.92];
        let p = asha_promotions(&policy, acc, &trials, Some("d"), false);
        assert!(p.park.unwrap().to_string().contains("at epoch 3"));
        // d parked at rung 3, alone there: once the sweep is exhausted it is promoted, so
        // the best configuration trains to its last epoch.
        trials[3].state = Parked;
        for t in trials
            .iter_mut()
            .filter(|t| t.state == Parked && t.values.len() == 1)
        {
            t.state = Closed; // rung 1 settled, to look at rung 3 alone
        }
        assert_eq!(
            asha_promotions(&policy, acc, &trials, None, false),
            Promotions::default()
        );
        assert_eq!(
            asha_promotions(&policy, acc, &trials, None, true).promote,
            vec!["d".to_string()]
        );
        // Epoch 2 is no rung: no decision.
        trials[1].values = vec![0.6, 0.7];
        assert_eq!(
            asha_promotions(&policy, acc, &trials, Some("b"), false).park,
            None
        );
    }

    #[test]
    fn asha_promotion_ranks_losses_lowest_first() {
        use RungState::*;
        let policy = EarlyStopping::Asha {
            grace_period: 2,
            reduction_factor: 2,
            max_epochs: 8,
            promote: true,
        };
        // Rungs 2 and 4. Rung 2: losses 0.3, 0.2 (parked), 0.5 (subject), 0.1 (parked):
        // top 2 = 0.1 and 0.2, both parked: promoted; the subject parks.
        let trials = [
            at("a", Parked, &[0.9, 0.3]),
            at("b", Parked, &[0.8, 0.2]),
            at("c", Active, &[0.7, 0.5]),
            at("d", Parked, &[0.6, 0.1]),
        ];
        let p = asha_promotions(&policy, Objective::ValLoss, &trials, Some("c"), false);
        assert_eq!(p.promote, vec!["d".to_string(), "b".to_string()]);
        assert!(p
            .park
            .unwrap()
            .to_string()
            .contains("val_loss 0.5000 at epoch 2"));
        // The stop-or-continue decision leaves promotion sweeps alone, and vice versa.
        assert_eq!(decide(&policy, Objective::ValLoss, &[0.9, 0.5], &[]), None);
        let stop_form = EarlyStopping::Asha {
            grace_period: 2,
            reduction_factor: 2,
            max_epochs: 8,
            promote: false,
        };
        assert_eq!(
            asha_promotions(&stop_form, Objective::ValLoss, &trials, Some("c"), false),
            Promotions::default()
        );
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
