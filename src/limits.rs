//! Resource limits of the public API, enforced where the request enters the daemon.
//!
//! Owns: the request-size layer (reads the gRPC frame header of each message of a request,
//! streams included, and refuses a message over `max_request_bytes` with RESOURCE_EXHAUSTED
//! before buffering it) and the
//! stream quota (how many `WatchSweep` streams one client address, and all clients
//! together, may hold open). Limits on sweep sizes and queued trials live with the checks
//! that count them (`sweep`, `api`); image decode limits in `imaging`.

use std::collections::HashMap;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use http_body::{Frame, SizeHint};
use tonic::Status;

/// The gRPC frame header: one compression flag byte and a 4-byte big-endian length.
const FRAME_HEADER: usize = 5;

/// Tower layer refusing requests whose message is larger than `limit` bytes.
#[derive(Clone, Copy)]
pub struct RequestSizeLimit {
    pub limit: usize,
}

impl<S> tower::Layer<S> for RequestSizeLimit {
    type Service = RequestSizeLimitService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        RequestSizeLimitService {
            inner,
            limit: self.limit,
        }
    }
}

#[derive(Clone)]
pub struct RequestSizeLimitService<S> {
    inner: S,
    limit: usize,
}

impl<S> tower::Service<http::Request<tonic::body::Body>> for RequestSizeLimitService<S>
where
    S: tower::Service<http::Request<tonic::body::Body>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        let limit = self.limit;
        self.inner
            .call(request.map(|body| tonic::body::Body::new(LimitedGrpcBody::new(body, limit))))
    }
}

/// A request body that fails with RESOURCE_EXHAUSTED as soon as a message header announces
/// more than `limit` bytes. Every message of a client stream (a worker's `UploadFile`
/// chunks) is checked on its own: the limit is per message, as tonic's
/// `max_decoding_message_size`, not on the stream's total.
struct LimitedGrpcBody {
    inner: tonic::body::Body,
    limit: usize,
    /// Bytes of the current message header read so far (0..FRAME_HEADER).
    header_read: usize,
    header: [u8; FRAME_HEADER],
    /// Payload bytes of the current message still to come (the header is read when 0).
    payload_left: usize,
}

impl LimitedGrpcBody {
    fn new(inner: tonic::body::Body, limit: usize) -> Self {
        LimitedGrpcBody {
            inner,
            limit,
            header_read: 0,
            header: [0; FRAME_HEADER],
            payload_left: 0,
        }
    }

    /// Follows the frames through `data`: each message's 5-byte header (possibly split
    /// across chunks), then its payload.
    fn inspect(&mut self, mut data: &[u8]) -> Result<(), Status> {
        while !data.is_empty() {
            if self.payload_left > 0 {
                let n = self.payload_left.min(data.len());
                self.payload_left -= n;
                data = &data[n..];
                continue;
            }
            let n = (FRAME_HEADER - self.header_read).min(data.len());
            self.header[self.header_read..self.header_read + n].copy_from_slice(&data[..n]);
            self.header_read += n;
            data = &data[n..];
            if self.header_read == FRAME_HEADER {
                self.header_read = 0;
                let announced = u32::from_be_bytes([
                    self.header[1],
                    self.header[2],
                    self.header[3],
                    self.header[4],
                ]) as usize;
                if announced > self.limit {
                    return Err(too_large(announced, self.limit));
                }
                self.payload_left = announced;
            }
        }
        Ok(())
    }
}

/// The refusal of an oversized request.
pub fn too_large(size: usize, limit: usize) -> Status {
    Status::resource_exhausted(format!(
        "request: {size} bytes, this daemon accepts at most {limit} bytes per request (max_request_bytes)"
    ))
}

impl http_body::Body for LimitedGrpcBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let frame = ready!(Pin::new(&mut self.inner).poll_frame(cx));
        Poll::Ready(match frame {
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    if let Err(refused) = self.inspect(data) {
                        return Poll::Ready(Some(Err(refused)));
                    }
                }
                Some(Ok(frame))
            }
            other => other,
        })
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

// ---------------------------------------------------------------------------------------

/// Counts open server streams per client address and in total.
#[derive(Clone)]
pub struct StreamQuota {
    per_client: u32,
    total: u32,
    open: Arc<Mutex<HashMap<Option<IpAddr>, u32>>>,
}

/// One open stream; gives its place back when dropped.
pub struct StreamPermit {
    quota: StreamQuota,
    client: Option<IpAddr>,
}

impl StreamQuota {
    pub fn new(per_client: u32, total: u32) -> Self {
        StreamQuota {
            per_client,
            total,
            open: Default::default(),
        }
    }

    /// A place for one more stream of `client`, or RESOURCE_EXHAUSTED naming the limit.
    pub fn acquire(&self, client: Option<IpAddr>) -> Result<StreamPermit, Status> {
        let mut open = self.open.lock().unwrap();
        let all: u32 = open.values().sum();
        let mine = open.get(&client).copied().unwrap_or(0);
        if mine >= self.per_client {
            return Err(Status::resource_exhausted(format!(
                "streams: this client already has {mine} open, the limit is {} (max_streams_per_client); close one first",
                self.per_client
            )));
        }
        if all >= self.total {
            return Err(Status::resource_exhausted(format!(
                "streams: {all} are open, the daemon's limit is {} (max_streams_total); try again later",
                self.total
            )));
        }
        *open.entry(client).or_default() += 1;
        Ok(StreamPermit {
            quota: self.clone(),
            client,
        })
    }

    /// Streams open now.
    pub fn open_streams(&self) -> u32 {
        self.open.lock().unwrap().values().sum()
    }
}

impl Drop for StreamPermit {
    fn drop(&mut self) {
        let mut open = self.quota.open.lock().unwrap();
        if let Some(n) = open.get_mut(&self.client) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.client);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(limit: usize) -> LimitedGrpcBody {
        LimitedGrpcBody::new(tonic::body::Body::empty(), limit)
    }

    fn frame(len: u32) -> Vec<u8> {
        let mut f = vec![0u8];
        f.extend_from_slice(&len.to_be_bytes());
        f
    }

    #[test]
    fn an_announced_length_over_the_limit_is_refused_at_the_header() {
        let mut b = body(100);
        let e = b.inspect(&frame(101)).unwrap_err();
        assert_eq!(e.code(), tonic::Code::ResourceExhausted);
        assert!(e.message().contains("101 bytes"), "{}", e.message());
        assert!(body(100).inspect(&frame(100)).is_ok());
    }

    #[test]
    fn a_header_split_across_chunks_is_still_read() {
        let mut b = body(100);
        let f = frame(1000);
        assert!(b.inspect(&f[..2]).is_ok());
        assert!(b.inspect(&f[2..]).is_err());
    }

    #[test]
    fn each_message_of_a_stream_is_checked_on_its_own() {
        // Three 8-byte messages (24 in all) under a 10-byte limit: each fits.
        let mut b = body(10);
        let mut stream = Vec::new();
        for _ in 0..3 {
            stream.extend_from_slice(&frame(8));
            stream.extend_from_slice(&[7; 8]);
        }
        // Delivered in odd pieces, headers split across them.
        for piece in stream.chunks(3) {
            assert!(b.inspect(piece).is_ok());
        }
        // The payload's bytes are not read as headers: a payload of 0xff is no length.
        let mut c = body(10);
        let mut data = frame(8);
        data.extend_from_slice(&[0xff; 8]);
        assert!(c.inspect(&data).is_ok());
        // A later message that announces too much is refused.
        let mut next = frame(11);
        next.extend_from_slice(&[0; 11]);
        let e = c.inspect(&next).unwrap_err();
        assert!(e.message().contains("11 bytes"), "{}", e.message());
    }

    #[test]
    fn stream_quota_per_client_and_in_total() {
        let q = StreamQuota::new(2, 3);
        let a: Option<IpAddr> = Some("10.0.0.1".parse().unwrap());
        let b: Option<IpAddr> = Some("10.0.0.2".parse().unwrap());
        let a1 = q.acquire(a).unwrap();
        let _a2 = q.acquire(a).unwrap();
        let e = q.acquire(a).err().unwrap();
        assert!(e.message().contains("max_streams_per_client"));
        let _b1 = q.acquire(b).unwrap();
        let e = q.acquire(b).err().unwrap();
        assert!(e.message().contains("max_streams_total"));
        drop(a1);
        let _b2 = q.acquire(b).expect("a closed stream gives its place back");
        assert_eq!(q.open_streams(), 3);
    }
}
