//! Predict calls waiting for a worker. The daemon does not link libtorch, so `Predict`
//! becomes a job: the api queues it here and waits; every connected worker long-polls for
//! jobs beside its training (`WorkerHub/NextPredict`) and answers with `FinishPredict`. A
//! job whose worker exits before answering fails at once; one nobody answers in time fails
//! with DEADLINE_EXCEEDED.
//!
//! Owns: the job queue, who holds which job, and the answers' way back.
//! Must not touch: the store, training, the transport.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use cnnd_proto as proto;
use tokio::sync::{oneshot, Notify};
use tonic::Status;

type Answer = Result<proto::PredictResponse, Status>;

/// A job's way back to its caller, and the worker that took it (None while it waits).
type Pending = (oneshot::Sender<Answer>, Option<String>);

#[derive(Default)]
pub struct PredictJobs {
    /// Jobs no worker has taken yet, oldest first.
    waiting: Mutex<VecDeque<proto::PredictJob>>,
    /// Where each job's answer goes, and the worker that took it (None while waiting).
    pending: Mutex<HashMap<String, Pending>>,
    arrived: Notify,
    next_id: AtomicU64,
}

impl PredictJobs {
    /// Queues `job` (its id is assigned here) and waits for a worker's answer, at most
    /// `timeout`.
    pub async fn run(&self, mut job: proto::PredictJob, timeout: Duration) -> Answer {
        let id = format!("p-{}", self.next_id.fetch_add(1, Ordering::Relaxed));
        job.job_id = id.clone();
        let (tx, rx) = oneshot::channel();
        self.pending.lock().unwrap().insert(id.clone(), (tx, None));
        self.waiting.lock().unwrap().push_back(job);
        self.arrived.notify_one();
        let answer = tokio::time::timeout(timeout, rx).await;
        // Whatever happened, the job is gone from the queue and the table.
        self.waiting.lock().unwrap().retain(|j| j.job_id != id);
        self.pending.lock().unwrap().remove(&id);
        match answer {
            Ok(Ok(answer)) => answer,
            Ok(Err(_)) => Err(Status::unavailable(
                "the worker answering this Predict went away; try again",
            )),
            Err(_) => Err(Status::deadline_exceeded(format!(
                "no worker answered this Predict within {} s",
                timeout.as_secs()
            ))),
        }
    }

    /// The next job for `worker_id`, waiting at most `poll` for one.
    pub async fn next(&self, worker_id: &str, poll: Duration) -> Option<proto::PredictJob> {
        let deadline = tokio::time::Instant::now() + poll;
        loop {
            // Register interest before looking, so a job queued in between still wakes us.
            let arrived = self.arrived.notified();
            tokio::pin!(arrived);
            arrived.as_mut().enable();
            if let Some(job) = self.take(worker_id) {
                // Another worker may be waiting for the next one.
                if !self.waiting.lock().unwrap().is_empty() {
                    self.arrived.notify_one();
                }
                return Some(job);
            }
            if tokio::time::timeout_at(deadline, arrived).await.is_err() {
                return None;
            }
        }
    }

    fn take(&self, worker_id: &str) -> Option<proto::PredictJob> {
        let mut waiting = self.waiting.lock().unwrap();
        let mut pending = self.pending.lock().unwrap();
        while let Some(job) = waiting.pop_front() {
            // A job whose caller gave up (timed out) is no longer pending: skip it.
            if let Some((_, holder)) = pending.get_mut(&job.job_id) {
                *holder = Some(worker_id.to_string());
                return Some(job);
            }
        }
        None
    }

    /// A worker's answer to the job it took; false when nobody waits for it any more.
    pub fn finish(&self, worker_id: &str, job_id: &str, answer: Answer) -> bool {
        let mut pending = self.pending.lock().unwrap();
        match pending.get(job_id) {
            Some((_, Some(holder))) if holder == worker_id => {
                let (tx, _) = pending.remove(job_id).expect("just looked up");
                tx.send(answer).is_ok()
            }
            _ => false,
        }
    }

    /// A worker exited: the jobs it held fail now rather than at their time-out.
    pub fn worker_gone(&self, worker_id: &str) {
        let mut pending = self.pending.lock().unwrap();
        let held: Vec<String> = pending
            .iter()
            .filter(|(_, (_, holder))| holder.as_deref() == Some(worker_id))
            .map(|(id, _)| id.clone())
            .collect();
        for id in held {
            if let Some((tx, _)) = pending.remove(&id) {
                let _ = tx.send(Err(Status::unavailable(format!(
                    "worker {worker_id}, which was answering this Predict, exited; try again"
                ))));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn job(trial: &str) -> proto::PredictJob {
        proto::PredictJob {
            trial_id: trial.into(),
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn a_job_reaches_a_polling_worker_and_its_answer_comes_back() {
        let jobs = Arc::new(PredictJobs::default());
        let worker = {
            let jobs = jobs.clone();
            tokio::spawn(async move {
                let job = jobs.next("w1", Duration::from_secs(5)).await.unwrap();
                assert_eq!(job.trial_id, "t1");
                let answer = proto::PredictResponse {
                    class_names: vec![job.job_id.clone()],
                    ..Default::default()
                };
                // Only the worker that took it may answer.
                assert!(!jobs.finish("w2", &job.job_id, Ok(answer.clone())));
                assert!(jobs.finish("w1", &job.job_id, Ok(answer)));
            })
        };
        let answer = jobs.run(job("t1"), Duration::from_secs(5)).await.unwrap();
        assert!(answer.class_names[0].starts_with("p-"));
        worker.await.unwrap();
        assert!(jobs.next("w1", Duration::from_millis(10)).await.is_none());
    }

    #[tokio::test]
    async fn nobody_answering_times_out_and_a_worker_that_exits_fails_its_job() {
        let jobs = Arc::new(PredictJobs::default());
        let e = jobs
            .run(job("t"), Duration::from_millis(50))
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::DeadlineExceeded);
        // The timed-out job is not handed out afterwards.
        assert!(jobs.next("w", Duration::from_millis(10)).await.is_none());

        let taker = {
            let jobs = jobs.clone();
            tokio::spawn(async move {
                let _job = jobs.next("w", Duration::from_secs(5)).await.unwrap();
                jobs.worker_gone("w");
            })
        };
        let e = jobs
            .run(job("t"), Duration::from_secs(5))
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::Unavailable);
        assert!(e.message().contains("exited"), "{e:?}");
        taker.await.unwrap();
    }
}
