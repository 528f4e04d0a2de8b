//! Typed states: of a trial, of a sweep, of a worker, and why a running trial must stop.
//! They become text only at the edges: in SQL (the store's columns hold the names
//! [`TrialStatus::as_str`] gives) and on the wire (proto strings and enums).
//!
//! Owns: the states and their names. Pure.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A name that is not one of a state's names (a damaged row, a newer peer).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("'{name}' is not a {what} (one of {known})")]
pub struct UnknownState {
    pub what: &'static str,
    pub name: String,
    pub known: String,
}

/// Declares a state enum with its names, `as_str`, `ALL`, `Display` and `FromStr`.
macro_rules! named_states {
    ($(#[$doc:meta])* $name:ident, $what:literal, { $($(#[$vdoc:meta])* $variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
        #[serde(rename_all = "snake_case")]
        pub enum $name {
            $($(#[$vdoc])* $variant),+
        }

        impl $name {
            /// Every state, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The state's name, as stored and sent.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text),+
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $name {
            type Err = UnknownState;
            fn from_str(s: &str) -> Result<Self, UnknownState> {
                match s {
                    $($text => Ok($name::$variant),)+
                    _ => Err(UnknownState {
                        what: $what,
                        name: s.to_string(),
                        known: [$($text),+].join(", "),
                    }),
                }
            }
        }
    };
}

named_states!(
    /// Where a trial is in its life.
    TrialStatus, "trial status", {
        /// Waiting for a worker.
        Queued => "queued",
        /// Leased to a worker, training.
        Running => "running",
        Succeeded => "succeeded",
        Failed => "failed",
        Cancelled => "cancelled",
        /// Stopped for good by early stopping.
        Pruned => "pruned",
        /// Stopped at an ASHA rung with its checkpoint; resumable if promoted.
        Parked => "parked",
    }
);

impl TrialStatus {
    /// Keeps its sweep open: queued, running, or parked (it may be promoted).
    pub fn is_open(self) -> bool {
        matches!(
            self,
            TrialStatus::Queued | TrialStatus::Running | TrialStatus::Parked
        )
    }

    /// Queued or running.
    pub fn is_active(self) -> bool {
        matches!(self, TrialStatus::Queued | TrialStatus::Running)
    }

    /// How a worker may end a trial it holds (`FinishTrial`).
    pub fn is_a_finish(self) -> bool {
        matches!(
            self,
            TrialStatus::Succeeded
                | TrialStatus::Failed
                | TrialStatus::Pruned
                | TrialStatus::Parked
        )
    }
}

named_states!(
    /// Where a sweep is. Clients also see `paused` ([`SweepStatus::visible`]).
    SweepStatus, "sweep status", {
        Queued => "queued",
        Running => "running",
        /// Every trial ended.
        Finished => "finished",
        Cancelled => "cancelled",
    }
);

impl SweepStatus {
    /// Finished or cancelled: nothing will change any more.
    pub fn has_ended(self) -> bool {
        matches!(self, SweepStatus::Finished | SweepStatus::Cancelled)
    }

    /// The status clients see: `paused` while paused and not ended.
    pub fn visible(self, paused: bool) -> &'static str {
        if paused && !self.has_ended() {
            "paused"
        } else {
            self.as_str()
        }
    }
}

impl Default for WorkerState {
    /// Not registered yet.
    fn default() -> Self {
        WorkerState::Starting
    }
}

named_states!(
    /// What a worker is doing, as the daemon sees it.
    WorkerState, "worker state", {
        /// Started (or restarting), not registered yet.
        Starting => "starting",
        /// Registered, waiting for a trial.
        Idle => "idle",
        /// Holding a lease.
        Busy => "busy",
        /// Told to exit (its cluster launcher has more workers than the queue needs); gone
        /// once its job ends.
        Leaving => "leaving",
    }
);

/// Why a running trial must stop, as the daemon tells the worker holding it (in the answer
/// to a report or a heartbeat).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StopReason {
    /// The trial was cancelled: it is over, report nothing more.
    Cancelled,
    /// Early stopping ended it: finish it `pruned`, with this explanation.
    Pruned(String),
    /// ASHA parked it at a rung: checkpoint, test, and finish it `parked` (resumable).
    Parked(String),
    /// The daemon is shutting down (or the worker must leave): give the trial back
    /// unfinished (`ReleaseTrial`), checkpoint kept.
    GiveBack,
    /// This worker no longer holds the lease (it expired, another attempt runs it).
    LeaseLost(String),
}

impl StopReason {
    /// The status a worker finishes the trial with, when it finishes it at all.
    pub fn finish_status(&self) -> Option<TrialStatus> {
        match self {
            StopReason::Pruned(_) => Some(TrialStatus::Pruned),
            StopReason::Parked(_) => Some(TrialStatus::Parked),
            _ => None,
        }
    }
}

impl fmt::Display for StopReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StopReason::Cancelled => f.write_str("cancelled"),
            StopReason::Pruned(why) => write!(f, "pruned: {why}"),
            StopReason::Parked(why) => write!(f, "parked: {why}"),
            StopReason::GiveBack => f.write_str("give the trial back"),
            StopReason::LeaseLost(why) => write!(f, "lease lost: {why}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_unknown_names_are_refused() {
        for s in TrialStatus::ALL {
            assert_eq!(s.as_str().parse::<TrialStatus>().unwrap(), *s);
            assert_eq!(serde_json::to_value(s).unwrap(), s.as_str());
        }
        for s in SweepStatus::ALL {
            assert_eq!(s.as_str().parse::<SweepStatus>().unwrap(), *s);
        }
        let e = "done".parse::<TrialStatus>().unwrap_err();
        assert_eq!(
            e.to_string(),
            "'done' is not a trial status (one of queued, running, succeeded, failed, cancelled, pruned, parked)"
        );
        assert_eq!(SweepStatus::Running.visible(true), "paused");
        assert_eq!(SweepStatus::Finished.visible(true), "finished");
        assert!(TrialStatus::Parked.is_open() && !TrialStatus::Parked.is_active());
    }
}
