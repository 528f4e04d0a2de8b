//! Files between a worker and its daemon, by content: fetching what a trial needs (the data
//! set's manifest and files, a checkpoint to resume from, initial weights, a trial's weights
//! for Predict) into the worker's cache ([`crate::cache`]), each verified against its digest
//! before anything reads it; adopting a copy the worker already has under `--data-dir`
//! instead of fetching it; laying a data set out under its files' names for the readers
//! ([`DataView`]); and uploading results (checkpoints, best weights, the input record),
//! resumed from what the daemon already holds.
//!
//! Owns: the transfer side of the worker protocol (FetchFile, UploadOffset, UploadFile).
//! Must not touch: training, the cache's locking (the cache does that).

use std::fs::{self, File};
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use cnnd_core::content::{Digest, FileRef, Hasher, Manifest};
use cnnd_proto as proto;

use crate::cache::{BlobCache, BlobHandle, CacheError};
use crate::session::Session;

/// How many times a transfer that arrives corrupt or truncated is fetched again before the
/// trial fails.
const FETCH_TRIES: u32 = 3;

/// The daemon stayed out of reach until the deadline (the other failures are refusals).
#[derive(Debug, thiserror::Error)]
#[error("{what}: the daemon is unreachable ({why})")]
pub struct Unreachable {
    pub what: String,
    pub why: String,
}

impl Unreachable {
    /// Whether `e` comes from the daemon being out of reach.
    pub fn caused(e: &anyhow::Error) -> bool {
        e.chain().any(|c| c.is::<Unreachable>())
    }
}

/// A failed call as an error: [`Unreachable`] when the daemon could not be reached.
fn call_failed(what: String, status: &tonic::Status) -> anyhow::Error {
    if crate::session::is_transient(status) {
        Unreachable {
            what,
            why: status.message().to_string(),
        }
        .into()
    } else {
        anyhow!("{what}: {}", status.message())
    }
}

/// A data set laid out for the readers: every file of its manifest under its name, in a
/// folder of this worker's cache (links to the verified blobs, which stay protected from
/// eviction while this value lives).
pub struct DataView {
    pub dir: PathBuf,
    pub manifest: Manifest,
    _blobs: Vec<BlobHandle>,
}

/// Where the worker finds and keeps files.
pub struct Files<'a> {
    pub session: &'a Session,
    pub cache: &'a BlobCache,
    /// Local copies of data sets (`--data-dir`), used when a file there has the digest.
    pub data_dir: Option<&'a Path>,
}

impl Files<'_> {
    /// The file, from the cache, else adopted from `--data-dir` (data-set files, by their
    /// relative names), else fetched from the daemon (resuming a transfer an earlier attempt
    /// left). A transfer that does not match its digest is discarded and fetched again.
    pub async fn get(&self, file: &FileRef, deadline: Instant) -> Result<BlobHandle> {
        let digest = file.parsed_digest()?;
        if let Some(handle) = self.cache.get(digest) {
            return Ok(handle);
        }
        if let Some(handle) = self.adopt(file, digest)? {
            return Ok(handle);
        }
        let mut corrupt = 0;
        loop {
            let e = match self.fetch(file, digest, deadline).await {
                Ok(handle) => return Ok(handle),
                Err(e) => e,
            };
            match e.downcast_ref::<CacheError>() {
                Some(CacheError::Corrupt { .. } | CacheError::Truncated { .. }) => {
                    corrupt += 1;
                    if corrupt >= FETCH_TRIES {
                        return Err(e.context(format!(
                            "{} ({}): all {FETCH_TRIES} transfers were corrupt; nothing was trained on it",
                            file.name, file.digest
                        )));
                    }
                    tracing::warn!(
                        file = file.name,
                        attempt = corrupt,
                        "transfer refused, fetching again: {e:#}"
                    );
                }
                // A broken transfer resumes from the bytes it left, while time remains.
                _ if Unreachable::caused(&e) && Instant::now() < deadline => {
                    tracing::warn!(file = file.name, "transfer broke, resuming: {e:#}");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                _ => return Err(e),
            }
        }
    }

    /// A copy under `--data-dir` with the same size and digest, copied into the cache (the
    /// user's file stays theirs to change), its digest checked.
    fn adopt(&self, file: &FileRef, digest: Digest) -> Result<Option<BlobHandle>> {
        let Some(dir) = self.data_dir else {
            return Ok(None);
        };
        if file
            .name
            .split('/')
            .any(|part| part == ".." || part.is_empty())
        {
            return Ok(None);
        }
        let local = dir.join(&file.name);
        match fs::metadata(&local) {
            Ok(m) if m.is_file() && m.len() == file.size => {}
            _ => return Ok(None),
        }
        let adopted = self.cache.adopt_copy(&local, digest)?;
        if adopted.is_none() {
            tracing::info!(
                file = %local.display(),
                "a local copy differs from the daemon's; fetching the daemon's"
            );
        }
        Ok(adopted)
    }

    async fn fetch(&self, file: &FileRef, digest: Digest, deadline: Instant) -> Result<BlobHandle> {
        let mut partial = self.cache.resume(digest, file.size)?;
        if partial.offset() < file.size {
            let offset = partial.offset();
            let mut chunks = self
                .session
                .call(deadline, |mut client, worker_id| {
                    let digest = file.digest.clone();
                    async move {
                        client
                            .fetch_file(proto::FetchFileRequest {
                                worker_id,
                                digest,
                                offset,
                            })
                            .await
                    }
                })
                .await
                .map_err(|e| call_failed(format!("fetching {} ({})", file.name, file.digest), &e))?
                .into_inner();
            loop {
                match chunks.message().await {
                    Ok(Some(chunk)) => partial.write_at(chunk.offset, &chunk.data)?,
                    Ok(None) => break,
                    // The bytes so far stay in the partial; the next attempt resumes there.
                    Err(e) => {
                        return Err(call_failed(
                            format!(
                                "fetching {} ({}) broke at byte {}",
                                file.name,
                                file.digest,
                                partial.offset()
                            ),
                            &e,
                        ))
                    }
                }
            }
        }
        Ok(partial.finish()?)
    }

    /// The data set of a manifest, laid out under `cache/views/<manifest digest>/`.
    pub async fn data_view(&self, manifest: &FileRef, deadline: Instant) -> Result<DataView> {
        let handle = self.get(manifest, deadline).await?;
        let text = fs::read(handle.path())
            .with_context(|| format!("reading the manifest {}", manifest.digest))?;
        let parsed: Manifest = serde_json::from_slice(&text)
            .with_context(|| format!("the manifest {} is unreadable", manifest.digest))?;
        let started = Instant::now();
        let mut blobs = Vec::with_capacity(parsed.files.len() + 1);
        let mut fetched_bytes = 0;
        for file in &parsed.files {
            let had = self.cache.get(file.parsed_digest()?).is_some();
            blobs.push(self.get(file, deadline).await?);
            if !had {
                fetched_bytes += file.size;
            }
        }
        if fetched_bytes > 0 {
            tracing::info!(
                files = parsed.files.len(),
                bytes = fetched_bytes,
                seconds = started.elapsed().as_secs_f64(),
                "data set in the cache"
            );
        }
        let dir = self.lay_out(&manifest.digest, &parsed, &blobs)?;
        blobs.push(handle);
        Ok(DataView {
            dir,
            manifest: parsed,
            _blobs: blobs,
        })
    }

    /// Links every file of the manifest under its name, in a folder named by the manifest's
    /// digest, made under a temporary name and renamed into place (so several workers on one
    /// cache agree on it).
    fn lay_out(&self, digest: &str, manifest: &Manifest, blobs: &[BlobHandle]) -> Result<PathBuf> {
        let views = self.cache.root().join("views");
        let dir = views.join(digest);
        if dir.is_dir() {
            return Ok(dir);
        }
        let staging = views.join(format!(".{digest}.{}", std::process::id()));
        let _ = fs::remove_dir_all(&staging);
        for (file, blob) in manifest.files.iter().zip(blobs) {
            if file.name.split('/').any(|p| p == ".." || p.is_empty()) || file.name.starts_with('/')
            {
                bail!(
                    "the manifest names a file outside its folder: {}",
                    file.name
                );
            }
            let link = staging.join(&file.name);
            if let Some(parent) = link.parent() {
                fs::create_dir_all(parent)
                    .with_context(|| format!("creating {}", parent.display()))?;
            }
            std::os::unix::fs::symlink(blob.path(), &link)
                .with_context(|| format!("linking {}", link.display()))?;
        }
        fs::create_dir_all(&staging)?;
        match fs::rename(&staging, &dir) {
            Ok(()) => {}
            // Another worker laid it out first: the same links.
            Err(_) if dir.is_dir() => {
                let _ = fs::remove_dir_all(&staging);
            }
            Err(e) => return Err(e).with_context(|| format!("creating {}", dir.display())),
        }
        Ok(dir)
    }

    /// Uploads `path` as a result of the trial `(trial_id, generation)` this worker holds,
    /// named `name`: hashed, then sent in chunks from what the daemon already holds of it
    /// (nothing when it has it all). Returns its reference for the report that follows.
    pub async fn upload(
        &self,
        path: &Path,
        name: &str,
        lease: (&str, u64),
        deadline: Instant,
    ) -> Result<FileRef> {
        let file = hash_file(path, name)?;
        let (trial_id, generation) = lease;
        let wire = proto::FileRef::from(&file);
        for _ in 0..FETCH_TRIES {
            let offset = self
                .session
                .call(deadline, |mut client, worker_id| {
                    let request = proto::UploadOffsetRequest {
                        worker_id,
                        trial_id: trial_id.to_string(),
                        generation,
                        file: Some(wire.clone()),
                    };
                    async move { client.upload_offset(request).await }
                })
                .await
                .map_err(|e| call_failed(format!("uploading {name}"), &e))?
                .into_inner()
                .offset;
            if offset >= file.size && file.size > 0 {
                return Ok(file);
            }
            let chunks = read_chunks(path, offset, file.size, self.session.chunk_bytes())?;
            let sent = self
                .session
                .call(deadline, |mut client, worker_id| {
                    let messages: Vec<proto::UploadChunk> = chunks
                        .iter()
                        .map(|(at, data)| proto::UploadChunk {
                            worker_id: worker_id.clone(),
                            trial_id: trial_id.to_string(),
                            generation,
                            file: Some(wire.clone()),
                            offset: *at,
                            data: data.clone(),
                        })
                        .collect();
                    async move { client.upload_file(tokio_stream::iter(messages)).await }
                })
                .await;
            match sent {
                Ok(_) => return Ok(file),
                // The daemon refused the whole (it deleted it): send it again from 0.
                Err(e) if e.code() == tonic::Code::DataLoss => {
                    tracing::warn!(
                        file = name,
                        "upload refused, sending again: {}",
                        e.message()
                    );
                }
                // Another offset than the daemon holds (an earlier attempt got further):
                // ask again.
                Err(e) if e.code() == tonic::Code::OutOfRange => {}
                Err(e) => return Err(call_failed(format!("uploading {name}"), &e)),
            }
        }
        bail!("uploading {name}: refused {FETCH_TRIES} times")
    }
}

/// The bytes of `path` from `offset` to `size`, in chunks of `chunk` bytes.
fn read_chunks(path: &Path, offset: u64, size: u64, chunk: usize) -> Result<Vec<(u64, Vec<u8>)>> {
    let f = File::open(path).with_context(|| format!("reading {}", path.display()))?;
    let mut out = Vec::new();
    let mut at = offset;
    while at < size {
        let len = chunk.min((size - at) as usize);
        let mut buf = vec![0u8; len];
        f.read_exact_at(&mut buf, at)
            .with_context(|| format!("reading {}", path.display()))?;
        out.push((at, buf));
        at += len as u64;
    }
    if out.is_empty() {
        out.push((0, Vec::new()));
    }
    Ok(out)
}

/// The reference of a file on this machine.
pub fn hash_file(path: &Path, name: &str) -> Result<FileRef> {
    let mut f = File::open(path).with_context(|| format!("reading {}", path.display()))?;
    let mut hasher = Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = f
            .read(&mut buf)
            .with_context(|| format!("reading {}", path.display()))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        size += n as u64;
    }
    Ok(FileRef {
        name: name.to_string(),
        digest: hasher.finish().to_string(),
        size,
    })
}

/// A deadline `d` from now.
pub fn after(d: Duration) -> Instant {
    Instant::now() + d
}
