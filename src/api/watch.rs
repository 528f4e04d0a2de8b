//! `WatchSweep`: a sweep's events as a server stream, from the store's history and the
//! live feed, within the per-client stream quota.
//!
//! Owns: the stream. Must not touch: SQL (the store's `events_after`).

use cnnd_proto as proto;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::convert::{event_to_proto, is_final};
use super::orchestrator::EventStream;
use super::{internal, require_id, Api};

/// Streams a sweep's events: subscribes to the live feed first, then replays the stored
/// events, then forwards live events newer than the last replayed one, so nothing is lost
/// or doubled; catches up from the store after falling behind the feed; ends after
/// `sweep_finished`, or when the client stops reading for the send timeout.
pub(super) async fn watch_sweep(
    api: &Api,
    request: Request<proto::WatchSweepRequest>,
) -> Result<Response<EventStream>, Status> {
    let client = request.remote_addr().map(|a| a.ip());
    let id = request.into_inner().sweep_id;
    require_id("sweepId", &id)?;
    let permit = api.streams.acquire(client)?;
    // Subscribe first, then replay history: an event lands in one or both, never neither.
    let mut live = api.scheduler.subscribe();
    let store = api.scheduler.store.clone();
    if store.sweep(&id).await.map_err(internal)?.is_none() {
        return Err(Status::not_found(format!("sweepId: no sweep '{id}'")));
    }
    let (tx, rx) = tokio::sync::mpsc::channel(256);
    let timeout = api.stream_send_timeout;
    tokio::spawn(async move {
        let _permit = permit;
        // False when the client is gone or has not read for `timeout`: end the stream.
        let send = |item: Result<proto::SweepEvent, Status>| {
            let tx = tx.clone();
            async move {
                match tx.send_timeout(item, timeout).await {
                    Ok(()) => true,
                    Err(tokio::sync::mpsc::error::SendTimeoutError::Timeout(_)) => {
                        tracing::info!(
                            ?client,
                            "closing a WatchSweep stream whose client stopped reading"
                        );
                        false
                    }
                    Err(_) => false,
                }
            }
        };
        let mut last = 0i64;
        let history = match store.events_after(&id, 0).await {
            Ok(h) => h,
            Err(e) => {
                send(Err(internal(e))).await;
                return;
            }
        };
        for e in &history {
            last = e.id;
            if !send(Ok(event_to_proto(e))).await || is_final(e) {
                return;
            }
        }
        loop {
            let received = tokio::select! {
                r = live.recv() => r,
                _ = tx.closed() => return,
            };
            match received {
                Ok(e) if e.sweep_id == id && e.id > last => {
                    last = e.id;
                    if !send(Ok(event_to_proto(&e))).await || is_final(&e) {
                        return;
                    }
                }
                Ok(_) => {}
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                    // Fell behind the live feed: catch up from the store.
                    match store.events_after(&id, last).await {
                        Ok(missed) => {
                            for e in missed {
                                last = e.id;
                                if !send(Ok(event_to_proto(&e))).await || is_final(&e) {
                                    return;
                                }
                            }
                        }
                        Err(e) => {
                            send(Err(internal(e))).await;
                            return;
                        }
                    }
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
            }
        }
    });
    Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
}
