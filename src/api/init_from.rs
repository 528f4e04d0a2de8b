//! `initFrom`: which weights a trial starts from, by content. `trial:ID` is that trial's
//! best weights (it must have succeeded), `file:PATH` a file inside the data directory
//! (confined like image folders), hashed and then served to workers by digest.
//!
//! Owns: resolving and checking `initFrom` sources.

use cnnd_core::content::FileRef;
use cnnd_core::datasets::DatasetError;
use cnnd_core::status::TrialStatus;
use tonic::Status;

use super::errors::internal;
use crate::datasets;
use crate::scheduler::Scheduler;

/// The weights a trial's `initFrom` names, as a file workers fetch by digest: `trial:ID` is
/// that trial's best weights (it must have succeeded), `file:PATH` a file inside the data
/// directory.
pub(super) async fn weights(scheduler: &Scheduler, init_from: &str) -> Result<FileRef, Status> {
    if let Some(id) = init_from.strip_prefix("trial:") {
        let source = scheduler
            .store
            .trial(id)
            .await
            .map_err(internal)?
            .ok_or_else(|| Status::not_found(format!("initFrom: no trial '{id}'")))?;
        return match (source.status, source.weights) {
            (TrialStatus::Succeeded, Some(weights)) => Ok(weights),
            (status, _) => Err(Status::failed_precondition(format!(
                "initFrom: trial '{id}' is {status}; only a succeeded trial has weights to start from"
            ))),
        };
    }
    if let Some(relative) = init_from.strip_prefix("file:") {
        let data_dir = scheduler.config.data_dir.as_deref().ok_or_else(|| {
            Status::invalid_argument(
                "initFrom: weights files need a data directory; start cnnd with --data-dir",
            )
        })?;
        let path = datasets::confine(relative, data_dir).map_err(|e| match e {
            DatasetError::Denied(m) => Status::permission_denied(format!(
                "initFrom: {}",
                m.replace("image folders", "weights files")
            )),
            DatasetError::Invalid(m) => Status::invalid_argument(format!("initFrom: {m}")),
        })?;
        if !path.is_file() {
            return Err(Status::invalid_argument(format!(
                "initFrom: {} is not a file",
                path.display()
            )));
        }
        return scheduler
            .blobs
            .serve_file(&path, "init.safetensors")
            .map_err(|e| Status::invalid_argument(format!("initFrom: {e:#}")));
    }
    Err(Status::invalid_argument(format!(
        "initFrom: '{init_from}' is neither trial:ID nor file:PATH"
    )))
}
