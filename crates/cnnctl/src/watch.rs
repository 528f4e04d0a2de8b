//! `cnnctl watch`: follows a sweep's event stream. On a terminal a progress bar of epochs
//! done over epochs planned across the sweep, with a line per event above it; otherwise
//! (pipes, tests) one plain line per event, or one JSON object per event with `-o json`.
//! With several daemons in `--addr` (a leader and its standbys), a stream broken by the
//! leader's loss is opened again at the new leader, skipping the events already shown.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::time::Duration;

use cnnd_proto::{self as pb, sweep_event::Kind};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::format::{event_json, event_line};
use crate::{out, CliError, Daemon};

/// Epochs done and planned per trial, as the events tell them.
#[derive(Debug, Default)]
pub struct Tally {
    trials: BTreeMap<String, TrialTally>,
}

#[derive(Debug, Default, Clone, Copy)]
struct TrialTally {
    done: u32,
    planned: u32,
    finished: bool,
}

impl Tally {
    /// Starts from the sweep's plan; epochs done start at zero because the stream replays
    /// the recorded events first.
    pub fn from_sweep(s: &pb::Sweep) -> Tally {
        Tally {
            trials: s
                .trials
                .iter()
                .map(|t| {
                    (
                        t.trial_id.clone(),
                        TrialTally {
                            done: 0,
                            planned: t.epochs_planned,
                            finished: false,
                        },
                    )
                })
                .collect(),
        }
    }

    pub fn apply(&mut self, e: &pb::SweepEvent) {
        match &e.kind {
            Some(Kind::TrialStarted(k)) => {
                self.trials.entry(k.trial_id.clone()).or_default();
            }
            Some(Kind::EpochFinished(k)) => {
                let t = self.trials.entry(k.trial_id.clone()).or_default();
                if let Some(m) = &k.metrics {
                    t.done = t.done.max(m.epoch);
                }
                if k.epochs_planned > 0 {
                    t.planned = k.epochs_planned;
                }
                t.planned = t.planned.max(t.done);
            }
            Some(Kind::TrialFinished(k)) => {
                // A finished trial runs no more epochs (early stop, failure, cancel).
                let t = self.trials.entry(k.trial_id.clone()).or_default();
                t.finished = true;
                t.planned = t.done;
            }
            Some(Kind::SweepFinished(_)) | None => {}
        }
    }

    pub fn epochs_done(&self) -> u64 {
        self.trials.values().map(|t| u64::from(t.done)).sum()
    }

    pub fn epochs_planned(&self) -> u64 {
        self.trials.values().map(|t| u64::from(t.planned)).sum()
    }

    pub fn message(&self) -> String {
        let finished = self.trials.values().filter(|t| t.finished).count();
        format!("{finished}/{} trials done", self.trials.len())
    }
}

/// Follows the sweep until it finishes. Ok when the sweep finished (whatever its trials
/// did), an error when the stream broke first.
pub async fn watch(d: &mut Daemon, sweep_id: &str, json: bool) -> Result<(), CliError> {
    let addr = d.addr.clone();
    let live = !json && std::io::stdout().is_terminal();
    let mut bar = None;
    let mut tally = Tally::default();
    if live {
        let sweep = d
            .client
            .get_sweep(pb::GetSweepRequest {
                sweep_id: sweep_id.to_string(),
                all_params: false,
            })
            .await
            .map_err(|e| CliError::rpc(format!("get sweep {sweep_id}"), &addr, e))?
            .into_inner();
        tally = Tally::from_sweep(&sweep);
        out(format!(
            "watching sweep {} {}: {} trials, {} epochs planned",
            sweep.sweep_id,
            sweep.name,
            sweep.trials.len(),
            tally.epochs_planned()
        ));
        let progress = ProgressBar::with_draw_target(
            Some(tally.epochs_planned()),
            ProgressDrawTarget::stdout(),
        );
        if let Ok(style) = ProgressStyle::with_template(
            "{spinner:.green} [{elapsed_precise}] {wide_bar:.cyan/blue} {pos}/{len} epochs  {msg}",
        ) {
            progress.set_style(style.progress_chars("=> "));
        }
        progress.set_message(tally.message());
        progress.enable_steady_tick(Duration::from_millis(200));
        bar = Some(progress);
    }

    let what = format!("watch sweep {sweep_id}");
    let mut stream = d
        .client
        .watch_sweep(pb::WatchSweepRequest {
            sweep_id: sweep_id.to_string(),
        })
        .await
        .map_err(|e| CliError::rpc(what.clone(), &addr, e))?
        .into_inner();
    // The last event shown: a stream opened again replays the recorded events first.
    let mut last_shown = 0u64;

    let result = loop {
        match stream.message().await {
            Ok(Some(event)) if event.event_id != 0 && event.event_id <= last_shown => {}
            Ok(Some(event)) => {
                last_shown = last_shown.max(event.event_id);
                let finished = matches!(event.kind, Some(Kind::SweepFinished(_)));
                if json {
                    out(event_json(&event).to_string());
                } else if let Some(line) = event_line(&event) {
                    match &bar {
                        Some(progress) => progress.println(line),
                        None => out(line),
                    }
                }
                if let Some(progress) = &bar {
                    tally.apply(&event);
                    progress.set_length(tally.epochs_planned());
                    progress.set_position(tally.epochs_done());
                    progress.set_message(tally.message());
                }
                if finished {
                    break Ok(());
                }
            }
            Ok(None) => {
                break Err(CliError::Other(format!(
                    "{what}: the stream ended before the sweep finished"
                )))
            }
            Err(status)
                if d.has_standbys()
                    && matches!(
                        status.code(),
                        tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Cancelled
                    ) =>
            {
                eprintln!(
                    "cnnctl: {what}: the daemon went away ({}); waiting for the leader among {}",
                    one_line_status(&status),
                    d.options.addr
                );
                match reopen(d, sweep_id).await {
                    Ok(s) => stream = s,
                    Err(e) => break Err(e),
                }
            }
            // Whatever broke the stream (the daemon going away included), it is exit 1.
            Err(status) => {
                break Err(CliError::Rpc {
                    what: format!("{what}: stream broke"),
                    status,
                })
            }
        }
    };
    if let Some(progress) = bar {
        if result.is_ok() {
            progress.finish();
        } else {
            progress.abandon();
        }
    }
    result
}

/// How long a watch waits for a new leader (a standby takes over within the leader's lease,
/// 10 s by default, plus its start).
const NEW_LEADER_WAIT: Duration = Duration::from_secs(60);

/// Opens the sweep's stream again at whichever daemon leads, retrying until
/// [`NEW_LEADER_WAIT`].
async fn reopen(
    d: &mut Daemon,
    sweep_id: &str,
) -> Result<tonic::Streaming<pb::SweepEvent>, CliError> {
    let deadline = std::time::Instant::now() + NEW_LEADER_WAIT;
    loop {
        let opened = match d.reconnect().await {
            Ok(()) => d
                .client
                .watch_sweep(pb::WatchSweepRequest {
                    sweep_id: sweep_id.to_string(),
                })
                .await
                .map(tonic::Response::into_inner)
                .map_err(|e| CliError::rpc(format!("watch sweep {sweep_id}"), &d.addr, e)),
            Err(e) => Err(e),
        };
        match opened {
            Ok(stream) => return Ok(stream),
            Err(e) if std::time::Instant::now() >= deadline => return Err(e),
            Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    }
}

fn one_line_status(status: &tonic::Status) -> String {
    status
        .message()
        .lines()
        .next()
        .unwrap_or_default()
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(kind: Kind) -> pb::SweepEvent {
        pb::SweepEvent {
            kind: Some(kind),
            ..Default::default()
        }
    }

    fn epoch(trial: &str, epoch: u32, planned: u32) -> pb::SweepEvent {
        event(Kind::EpochFinished(pb::EpochFinished {
            trial_id: trial.into(),
            epochs_planned: planned,
            metrics: Some(pb::EpochMetrics {
                epoch,
                ..Default::default()
            }),
        }))
    }

    #[test]
    fn tally_counts_epochs_across_trials() {
        let sweep = pb::Sweep {
            trials: ["t1", "t2"]
                .iter()
                .map(|id| pb::TrialSummary {
                    trial_id: id.to_string(),
                    epochs_planned: 3,
                    epochs_done: 3,
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        };
        let mut t = Tally::from_sweep(&sweep);
        assert_eq!((t.epochs_done(), t.epochs_planned()), (0, 6));
        t.apply(&epoch("t1", 1, 3));
        t.apply(&epoch("t1", 2, 3));
        // A resumed trial reports an epoch again: counted once.
        t.apply(&epoch("t1", 2, 3));
        assert_eq!((t.epochs_done(), t.epochs_planned()), (2, 6));
        // t2 fails after one epoch: its remaining epochs leave the plan.
        t.apply(&epoch("t2", 1, 3));
        t.apply(&event(Kind::TrialFinished(pb::TrialFinished {
            trial_id: "t2".into(),
            status: "failed".into(),
            ..Default::default()
        })));
        assert_eq!((t.epochs_done(), t.epochs_planned()), (3, 4));
        assert_eq!(t.message(), "1/2 trials done");
        t.apply(&epoch("t1", 3, 3));
        assert_eq!((t.epochs_done(), t.epochs_planned()), (4, 4));
    }
}
