//! Errors as gRPC statuses: a store or scheduler failure (a full disk and a read-only
//! state directory said plainly), a missing or oversized id, a stale lease.
//!
//! Owns: the mapping. Every message names the field or the storage problem.

use tonic::Status;

/// Maps a store or scheduler failure to a status. A full disk or a read-only state
/// directory refuses the request clearly; what is already recorded stays intact (SQLite
/// rolls the transaction back).
pub(crate) fn internal(e: anyhow::Error) -> Status {
    if let Some(deposed) = e
        .chain()
        .find_map(|c| c.downcast_ref::<crate::store::Deposed>())
    {
        tracing::error!("write refused: {deposed}");
        return Status::unavailable(format!(
            "{deposed}; nothing was written: ask the leader (cnnctl --addr takes several addresses)"
        ));
    }
    let text = format!("{e:#}");
    let lower = text.to_lowercase();
    if lower.contains("disk is full") || lower.contains("no space left") {
        tracing::error!("storage full: {text}");
        return Status::resource_exhausted(format!(
            "storage: the disk holding the state directory is full ({text}); new work is refused, recorded results are intact"
        ));
    }
    if lower.contains("readonly")
        || lower.contains("read-only")
        || lower.contains("permission denied")
        || lower.contains("disk i/o error")
    {
        tracing::error!("storage not writable: {text}");
        return Status::unavailable(format!(
            "storage: the state directory is not writable ({text}); new work is refused, recorded results are intact"
        ));
    }
    tracing::error!("internal error: {text}");
    Status::internal(text)
}

pub(crate) fn require_id(field: &str, value: &str) -> Result<(), Status> {
    if value.trim().is_empty() {
        return Err(Status::invalid_argument(format!("{field}: missing")));
    }
    if value.len() > 128 {
        return Err(Status::invalid_argument(format!(
            "{field}: longer than 128 characters"
        )));
    }
    Ok(())
}

/// A worker's report refused because its lease is gone.
pub(crate) fn refusal(e: crate::scheduler::Refusal) -> Status {
    Status::failed_precondition(e.to_string())
}
