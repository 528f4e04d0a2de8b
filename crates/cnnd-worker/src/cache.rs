//! The worker's content-addressed blob cache: files fetched from the daemon by SHA-256 digest
//! (data-set files, initial weights, checkpoints), kept in one folder under a size cap with
//! least-recently-used eviction. Several worker processes may share the folder, so every
//! step is safe across processes, not only threads.
//!
//! Owns: [`BlobCache`], [`Partial`] (a resumable transfer), [`BlobHandle`] (a blob in use),
//! [`EvictionReport`], [`CacheError`].
//! Must not touch: the network (callers feed the bytes in), digests' arithmetic (`digest`).
//!
//! Layout under the root:
//!
//! ```text
//! lock                                 cache-wide lock, see below
//! blobs/<first 2 hex>/<64 hex>         complete, verified blobs
//! partial/<64 hex>                     the resumable transfer of a digest
//! partial/<64 hex>.<pid>.<ns>.<n>      a one-off transfer, or a file being adopted
//! ```
//!
//! Locking (`flock`, each taken on a descriptor of its own, never shared between locks):
//! - A writer holds an exclusive lock on its partial for the whole transfer. [`BlobCache::resume`]
//!   claims `partial/<hex>` with a non-blocking exclusive lock; when another live writer holds
//!   it, the second writer downloads to a one-off name from offset 0 instead of waiting (so two
//!   transfers in one process cannot deadlock). A writer that dies releases its lock, and the
//!   next `resume` continues from the bytes it left. A one-off partial is deleted when its
//!   [`Partial`] is dropped unfinished, since nobody could resume it.
//! - A [`BlobHandle`] holds a shared lock on its blob; eviction takes a non-blocking exclusive
//!   lock and skips the blob when it cannot.
//! - A path is renamed or unlinked only by a process holding an exclusive lock on the file it
//!   names, checked after locking (device and inode of the descriptor against the path), so a
//!   file unlinked between open and lock is noticed and the step retried or skipped.
//! - `root/lock`: eviction holds it exclusively for its whole pass; publishing (linking a
//!   verified partial into `blobs/` and turning the writer's exclusive lock into the handle's
//!   shared one, which `flock` does not do atomically) holds it shared. So no eviction lands in
//!   that gap, and two evictions never race each other.
//!
//! LRU clock: a blob's mtime, set explicitly to the current time when it is published and on
//! every [`BlobCache::get`] (atime is unreliable under `relatime`/`noatime`). Setting it is best
//! effort: a failure only makes the blob look older. The cap counts complete blobs only;
//! partials are not counted, and those untouched for [`STALE_PARTIAL_AGE`] are swept.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use cnnd_core::content::{Digest, Hasher};

/// Partials not written for this long, and not locked by a writer, are deleted by eviction.
pub const STALE_PARTIAL_AGE: Duration = Duration::from_secs(24 * 60 * 60);

/// How many times a step that lost a race (a file unlinked between open and lock) is retried.
const RETRIES: usize = 8;
const READ_CHUNK: usize = 1 << 20;

pub type Result<T, E = CacheError> = std::result::Result<T, E>;

/// Everything that can go wrong in the cache; every variant names the file.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("{action} {}: {source}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "corrupt transfer of blob {expected} at {}: expected digest {expected} and {expected_size} \
         bytes, got digest {actual} and {actual_size} bytes; the partial was deleted",
        path.display()
    )]
    Corrupt {
        path: PathBuf,
        expected: Digest,
        actual: Digest,
        expected_size: u64,
        actual_size: u64,
    },
    #[error(
        "truncated transfer of blob {digest} at {}: expected {expected_size} bytes, have \
         {actual_size}; the partial was deleted",
        path.display()
    )]
    Truncated {
        path: PathBuf,
        digest: Digest,
        expected_size: u64,
        actual_size: u64,
    },
    #[error(
        "write at offset {requested} to the transfer of blob {digest} at {}, but the transfer \
         is at offset {current}",
        path.display()
    )]
    WrongOffset {
        path: PathBuf,
        digest: Digest,
        requested: u64,
        current: u64,
    },
    #[error(
        "write of {len} bytes at offset {offset} to the transfer of blob {digest} at {} would \
         pass its declared size of {size} bytes",
        path.display()
    )]
    PastDeclaredSize {
        path: PathBuf,
        digest: Digest,
        offset: u64,
        len: u64,
        size: u64,
    },
}

/// `None` for a file that is not there.
fn if_exists<T>(result: io::Result<T>) -> io::Result<Option<T>> {
    match result {
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(None),
        other => other.map(Some),
    }
}

/// Opens `path` for reading and writing, creating it (`create_new`: only creating it).
fn open_rw(path: &Path, create_new: bool) -> io::Result<File> {
    let mut options = OpenOptions::new();
    options.read(true).write(true);
    if create_new {
        options.create_new(true);
    } else {
        options.create(true).truncate(false);
    }
    options.open(path)
}

fn io_error<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> CacheError + 'a {
    move |source| CacheError::Io {
        action,
        path: path.to_path_buf(),
        source,
    }
}

/// The cache folder. Cheap to clone; several values (in one or many processes) may share a
/// root, each with its own cap.
#[derive(Debug, Clone)]
pub struct BlobCache {
    root: PathBuf,
    cap_bytes: u64,
}

/// A complete blob, protected from eviction (by a shared lock) while this value lives.
#[derive(Debug)]
pub struct BlobHandle {
    /// Never read: it holds the shared lock until the handle is dropped.
    _locked: File,
    path: PathBuf,
    digest: Digest,
    size: u64,
}

impl BlobHandle {
    /// Where the blob lives; valid for reading while the handle lives. Never write to it.
    pub fn path(&self) -> &Path {
        &self.path
    }
    pub fn digest(&self) -> Digest {
        self.digest
    }
    pub fn size(&self) -> u64 {
        self.size
    }

    /// A handle over `file`, which holds (or is about to hold) the shared lock on `path`.
    fn new(file: File, path: PathBuf, digest: Digest) -> Result<BlobHandle> {
        let size = file.metadata().map_err(io_error("stat blob", &path))?.len();
        Ok(BlobHandle {
            _locked: file,
            path,
            digest,
            size,
        })
    }
}

/// A transfer in progress, holding an exclusive lock on its partial file. Dropping it
/// unfinished keeps the bytes for a later [`BlobCache::resume`] (one-off partials excepted).
#[derive(Debug)]
pub struct Partial {
    cache: BlobCache,
    digest: Digest,
    size: u64,
    offset: u64,
    path: PathBuf,
    // Declared before `file` so it is dropped (and deletes) while the lock is still held.
    remove_on_drop: RemoveOnDrop,
    file: File,
}

/// What [`BlobCache::evict_to_cap`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EvictionReport {
    /// Blobs deleted, least recently used first, with their sizes.
    pub evicted: Vec<(Digest, u64)>,
    /// Blobs that would have gone but were in use (held by a handle or being adopted).
    pub in_use: Vec<Digest>,
    /// Stale partials deleted.
    pub stale_partials: Vec<PathBuf>,
    /// Bytes of complete blobs after the pass, as this pass saw them.
    pub total_bytes: u64,
}

#[derive(Debug)]
struct RemoveOnDrop(Option<PathBuf>);

impl RemoveOnDrop {
    fn disarm(mut self) {
        self.0 = None;
    }
}

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        if let Some(path) = self.0.take() {
            let _ = fs::remove_file(path);
        }
    }
}

struct BlobEntry {
    digest: Digest,
    path: PathBuf,
    size: u64,
    last_used: SystemTime,
}

#[derive(PartialEq)]
enum Removal {
    Removed,
    Gone,
    InUse,
}

#[derive(Clone, Copy)]
enum Lock {
    Shared,
    Exclusive,
}

/// `flock`, retried on EINTR. With `wait` false, `Ok(false)` when a conflicting lock is held.
fn flock(file: &File, lock: Lock, wait: bool) -> io::Result<bool> {
    let mut operation = match lock {
        Lock::Shared => libc::LOCK_SH,
        Lock::Exclusive => libc::LOCK_EX,
    };
    if !wait {
        operation |= libc::LOCK_NB;
    }
    loop {
        // SAFETY: flock only reads the descriptor number, which `file` keeps open.
        if unsafe { libc::flock(file.as_raw_fd(), operation) } == 0 {
            return Ok(true);
        }
        let error = io::Error::last_os_error();
        match error.kind() {
            io::ErrorKind::Interrupted => continue,
            io::ErrorKind::WouldBlock if !wait => return Ok(false),
            _ => return Err(error),
        }
    }
}

/// Whether `path` still names the file open as `file` (false when it names nothing).
fn still_names(path: &Path, file: &File) -> io::Result<bool> {
    let open = file.metadata()?;
    let named = if_exists(fs::symlink_metadata(path))?;
    Ok(named.is_some_and(|named| named.dev() == open.dev() && named.ino() == open.ino()))
}

/// Reads `file` from its start to its end, handing each piece to `each`; returns the digest.
fn read_through(
    file: &File,
    path: &Path,
    mut each: impl FnMut(u64, &[u8]) -> Result<()>,
) -> Result<Digest> {
    let mut hasher = Hasher::new();
    let mut buffer = vec![0u8; READ_CHUNK];
    let mut offset = 0u64;
    loop {
        let read = match file.read_at(&mut buffer, offset) {
            Ok(0) => return Ok(hasher.finish()),
            Ok(read) => read,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
            Err(error) => return Err(io_error("read", path)(error)),
        };
        hasher.update(&buffer[..read]);
        each(offset, &buffer[..read])?;
        offset += read as u64;
    }
}

/// Opens `path`, takes an exclusive lock without waiting and unlinks it.
fn remove_if_unlocked(path: &Path) -> Result<Removal> {
    let Some(file) = if_exists(File::open(path)).map_err(io_error("open for eviction", path))?
    else {
        return Ok(Removal::Gone);
    };
    if !flock(&file, Lock::Exclusive, false).map_err(io_error("lock for eviction", path))? {
        return Ok(Removal::InUse);
    }
    if !still_names(path, &file).map_err(io_error("stat for eviction", path))? {
        return Ok(Removal::Gone);
    }
    match if_exists(fs::remove_file(path)).map_err(io_error("delete", path))? {
        Some(()) => Ok(Removal::Removed),
        None => Ok(Removal::Gone),
    }
}

fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|dir| dir.sync_all())
        .map_err(io_error("sync folder", dir))
}

impl BlobCache {
    /// Opens (creating `blobs/` and `partial/` when missing) the cache at `root`, which evicts
    /// down to `cap_bytes` of complete blobs after each new blob.
    pub fn open(root: &Path, cap_bytes: u64) -> Result<BlobCache> {
        for dir in [root.join("blobs"), root.join("partial")] {
            fs::create_dir_all(&dir).map_err(io_error("create cache folder", &dir))?;
        }
        Ok(BlobCache {
            root: root.to_path_buf(),
            cap_bytes,
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn cap_bytes(&self) -> u64 {
        self.cap_bytes
    }

    fn blob_path(&self, digest: &Digest) -> PathBuf {
        let hex = digest.to_string();
        self.root.join("blobs").join(&hex[..2]).join(hex)
    }

    fn partial_dir(&self) -> PathBuf {
        self.root.join("partial")
    }

    fn one_off_partial_path(&self, digest: &Digest) -> PathBuf {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        let (pid, n) = (std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed));
        self.partial_dir()
            .join(format!("{digest}.{pid}.{nanos}.{n}"))
    }

    /// A new one-off partial, exclusively locked. Nobody else knows the name, and it is too
    /// young for the stale sweep, so no check after locking is needed.
    fn create_one_off(&self, digest: &Digest) -> Result<(File, PathBuf)> {
        let path = self.one_off_partial_path(digest);
        let file = open_rw(&path, true).map_err(io_error("create partial", &path))?;
        flock(&file, Lock::Exclusive, true).map_err(io_error("lock partial", &path))?;
        Ok((file, path))
    }

    fn lock_root(&self, lock: Lock) -> Result<File> {
        let path = self.root.join("lock");
        let file = open_rw(&path, false).map_err(io_error("open cache lock", &path))?;
        flock(&file, lock, true).map_err(io_error("lock cache lock", &path))?;
        Ok(file)
    }

    /// The blob when it is complete, marked as used now. Any failure (other than absence) is
    /// also `None`: the caller fetches again; [`BlobCache::try_get`] tells the reason.
    /// The content is trusted, not re-hashed: it was verified when it entered the cache.
    pub fn get(&self, digest: Digest) -> Option<BlobHandle> {
        self.try_get(digest).ok().flatten()
    }

    /// [`BlobCache::get`] with its errors.
    pub fn try_get(&self, digest: Digest) -> Result<Option<BlobHandle>> {
        let path = self.blob_path(&digest);
        for _ in 0..RETRIES {
            let Some(file) = if_exists(File::open(&path)).map_err(io_error("open blob", &path))?
            else {
                return Ok(None);
            };
            // Waits out an eviction or a publication in progress (both brief).
            flock(&file, Lock::Shared, true).map_err(io_error("lock blob", &path))?;
            if !still_names(&path, &file).map_err(io_error("stat blob", &path))? {
                continue; // evicted or replaced while we waited
            }
            let _ = file.set_modified(SystemTime::now());
            return BlobHandle::new(file, path, digest).map(Some);
        }
        Ok(None)
    }

    /// Starts or resumes the transfer of `digest`, `size` bytes long. Call [`BlobCache::get`]
    /// first: this does not look for a complete blob. Bytes already in the resumable partial
    /// are kept (they are checked at [`Partial::finish`]); a partial longer than `size` is
    /// emptied.
    pub fn resume(&self, digest: Digest, size: u64) -> Result<Partial> {
        let path = self.partial_dir().join(digest.to_string());
        for _ in 0..RETRIES {
            let file = open_rw(&path, false).map_err(io_error("open partial", &path))?;
            if !flock(&file, Lock::Exclusive, false).map_err(io_error("lock partial", &path))? {
                break; // another live writer has it
            }
            if !still_names(&path, &file).map_err(io_error("stat partial", &path))? {
                continue; // finished or swept between our open and our lock
            }
            let metadata = file.metadata().map_err(io_error("stat partial", &path))?;
            if metadata.nlink() > 1 {
                // Left by a publisher that died between linking it into blobs/ and unlinking
                // this name: the file is a complete blob now, never to be written again.
                fs::remove_file(&path).map_err(io_error("delete leftover partial", &path))?;
                continue;
            }
            let mut offset = metadata.len();
            if offset > size {
                file.set_len(0)
                    .map_err(io_error("empty oversized partial", &path))?;
                offset = 0;
            }
            return Ok(self.partial(digest, size, offset, (file, path), false));
        }
        let one_off = self.create_one_off(&digest)?;
        Ok(self.partial(digest, size, 0, one_off, true))
    }

    fn partial(
        &self,
        digest: Digest,
        size: u64,
        offset: u64,
        file: (File, PathBuf),
        one_off: bool,
    ) -> Partial {
        let (file, path) = file;
        Partial {
            cache: self.clone(),
            digest,
            size,
            offset,
            remove_on_drop: RemoveOnDrop(one_off.then(|| path.clone())),
            path,
            file,
        }
    }

    /// Makes `source` (a file the worker already has) the blob `digest` when its content has
    /// that digest: by a hard link when `source` is on the cache's file system and nobody
    /// holds it, else by a copy. `None` (and `source` left alone) when the digest differs.
    /// A hard-linked blob shares its inode with `source`: its mtime moves with the LRU clock,
    /// and `source` must not be modified in place afterwards.
    pub fn adopt(&self, source: &Path, digest: Digest) -> Result<Option<BlobHandle>> {
        self.adopt_as(source, digest, true)
    }

    /// [`BlobCache::adopt`] by a copy always: `source` stays the user's own file (its mtime
    /// untouched, free to change later).
    pub fn adopt_copy(&self, source: &Path, digest: Digest) -> Result<Option<BlobHandle>> {
        self.adopt_as(source, digest, false)
    }

    fn adopt_as(&self, source: &Path, digest: Digest, link: bool) -> Result<Option<BlobHandle>> {
        let linked = if link {
            self.stage_by_link(source, &digest)
        } else {
            None
        };
        let (file, staged, actual) = match linked {
            Some((file, staged)) => {
                let cleanup = RemoveOnDrop(Some(staged.clone()));
                let actual = read_through(&file, &staged, |_, _| Ok(()))?;
                cleanup.disarm();
                (file, staged, actual)
            }
            None => self.stage_by_copy(source, &digest)?,
        };
        let cleanup = RemoveOnDrop(Some(staged.clone()));
        if actual != digest {
            return Ok(None);
        }
        let handle = self.publish(file, &staged, digest)?;
        drop(cleanup); // the staged name is gone by now
        self.evict_to_cap()?;
        Ok(Some(handle))
    }

    /// A hard link of `source` under a one-off partial name, exclusively locked; `None` when
    /// that cannot be had (another file system, no hard links, `source` in use).
    fn stage_by_link(&self, source: &Path, digest: &Digest) -> Option<(File, PathBuf)> {
        let staged = self.one_off_partial_path(digest);
        fs::hard_link(source, &staged).ok()?;
        let cleanup = RemoveOnDrop(Some(staged.clone()));
        let file = File::open(&staged).ok()?;
        if !flock(&file, Lock::Exclusive, false).ok()? || !still_names(&staged, &file).ok()? {
            return None;
        }
        cleanup.disarm();
        Some((file, staged))
    }

    /// A copy of `source` under a one-off partial name, exclusively locked, with its digest.
    fn stage_by_copy(&self, source: &Path, digest: &Digest) -> Result<(File, PathBuf, Digest)> {
        let input = File::open(source).map_err(io_error("open file to adopt", source))?;
        let (file, staged) = self.create_one_off(digest)?;
        let cleanup = RemoveOnDrop(Some(staged.clone()));
        let actual = read_through(&input, source, |offset, bytes| {
            file.write_all_at(bytes, offset)
                .map_err(io_error("write copy", &staged))
        })?;
        cleanup.disarm();
        Ok((file, staged, actual))
    }

    /// Makes the verified, exclusively locked `file`, named `staged` in `partial/`, the blob
    /// `digest`; when the blob is already there (another process finished first), keeps that
    /// one and drops ours. Either way the staged name is gone afterwards.
    fn publish(&self, file: File, staged: &Path, digest: Digest) -> Result<BlobHandle> {
        let blob = self.blob_path(&digest);
        let dir = blob.parent().expect("blob paths have a shard folder");
        fs::create_dir_all(dir).map_err(io_error("create blob folder", dir))?;
        file.sync_all().map_err(io_error("sync", staged))?;
        let _ = file.set_modified(SystemTime::now());
        let _publishing = self.lock_root(Lock::Shared)?;
        for _ in 0..RETRIES {
            match fs::hard_link(staged, &blob) {
                Ok(()) => {}
                Err(error) if error.kind() == io::ErrorKind::AlreadyExists => {
                    // Adopting a file that already is this blob: ours and theirs are one.
                    if !still_names(&blob, &file).map_err(io_error("stat blob", &blob))? {
                        // Eviction is held off by our root lock, so theirs stays put.
                        let Some(theirs) = self.try_get(digest)? else {
                            continue;
                        };
                        fs::remove_file(staged).map_err(io_error("delete partial", staged))?;
                        return Ok(theirs);
                    }
                }
                // No hard links here: rename, replacing at worst a blob with the same bytes.
                Err(_) => fs::rename(staged, &blob).map_err(io_error("rename into", &blob))?,
            }
            sync_dir(dir)?;
            if_exists(fs::remove_file(staged)).map_err(io_error("delete partial", staged))?;
            flock(&file, Lock::Shared, true).map_err(io_error("lock blob", &blob))?;
            return BlobHandle::new(file, blob, digest);
        }
        Err(io_error("publish", &blob)(io::Error::other(
            "the blob kept appearing and vanishing",
        )))
    }

    fn scan_blobs(&self) -> Result<Vec<BlobEntry>> {
        let blobs_dir = self.root.join("blobs");
        let mut found = Vec::new();
        let shards = fs::read_dir(&blobs_dir).map_err(io_error("list", &blobs_dir))?;
        for shard in shards {
            let shard = shard.map_err(io_error("list", &blobs_dir))?;
            if !shard.file_type().is_ok_and(|kind| kind.is_dir()) {
                continue;
            }
            let shard = shard.path();
            let Some(files) = if_exists(fs::read_dir(&shard)).map_err(io_error("list", &shard))?
            else {
                continue;
            };
            for entry in files {
                let path = entry.map_err(io_error("list", &shard))?.path();
                let name = path.file_name().and_then(|name| name.to_str());
                let Some(digest) = name.and_then(|name| name.parse::<Digest>().ok()) else {
                    continue; // not ours
                };
                let Some(metadata) =
                    if_exists(fs::metadata(&path)).map_err(io_error("stat", &path))?
                else {
                    continue;
                };
                let last_used = metadata.modified().map_err(io_error("read mtime", &path))?;
                found.push(BlobEntry {
                    digest,
                    path,
                    size: metadata.len(),
                    last_used,
                });
            }
        }
        Ok(found)
    }

    /// Bytes of complete blobs (partials are not counted).
    pub fn total_bytes(&self) -> Result<u64> {
        Ok(self.scan_blobs()?.iter().map(|blob| blob.size).sum())
    }

    /// Deletes least recently used blobs until the total is at or under the cap, skipping
    /// blobs in use, then deletes unlocked partials older than [`STALE_PARTIAL_AGE`].
    pub fn evict_to_cap(&self) -> Result<EvictionReport> {
        let _evicting = self.lock_root(Lock::Exclusive)?;
        let mut blobs = self.scan_blobs()?;
        blobs.sort_by_key(|blob| (blob.last_used, blob.digest));
        let mut report = EvictionReport::default();
        let mut total: u64 = blobs.iter().map(|blob| blob.size).sum();
        for blob in blobs {
            if total <= self.cap_bytes {
                break;
            }
            match remove_if_unlocked(&blob.path)? {
                Removal::Removed => {
                    total -= blob.size;
                    report.evicted.push((blob.digest, blob.size));
                }
                Removal::Gone => total -= blob.size,
                Removal::InUse => report.in_use.push(blob.digest),
            }
        }
        report.total_bytes = total;

        let partial_dir = self.partial_dir();
        let now = SystemTime::now();
        for entry in fs::read_dir(&partial_dir).map_err(io_error("list", &partial_dir))? {
            let path = entry.map_err(io_error("list", &partial_dir))?.path();
            let modified = if_exists(fs::metadata(&path).and_then(|metadata| metadata.modified()));
            let Some(modified) = modified.map_err(io_error("stat partial", &path))? else {
                continue;
            };
            let age = now.duration_since(modified).unwrap_or_default();
            if age >= STALE_PARTIAL_AGE && remove_if_unlocked(&path)? == Removal::Removed {
                report.stale_partials.push(path);
            }
        }
        Ok(report)
    }
}

impl Partial {
    pub fn digest(&self) -> Digest {
        self.digest
    }

    /// The declared size of the whole blob.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Bytes already written and kept: where the next [`Partial::write_at`] must start.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// The partial file (`partial/<hex>`, or a one-off name when another writer held that).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends `bytes`, which must start at the current offset and stay within the size.
    pub fn write_at(&mut self, offset: u64, bytes: &[u8]) -> Result<()> {
        if offset != self.offset {
            return Err(CacheError::WrongOffset {
                path: self.path.clone(),
                digest: self.digest,
                requested: offset,
                current: self.offset,
            });
        }
        let len = bytes.len() as u64;
        if offset.checked_add(len).is_none_or(|end| end > self.size) {
            return Err(CacheError::PastDeclaredSize {
                path: self.path.clone(),
                digest: self.digest,
                offset,
                len,
                size: self.size,
            });
        }
        self.file
            .write_all_at(bytes, offset)
            .map_err(io_error("write partial", &self.path))?;
        self.offset += len;
        Ok(())
    }

    /// Checks the size and digest of the whole file; on a mismatch deletes the partial and
    /// fails ("truncated" when short, else "corrupt"); on success fsyncs it, links it into
    /// `blobs/` (keeping the blob already there when another process finished first) and
    /// evicts down to the cap.
    pub fn finish(self) -> Result<BlobHandle> {
        let Partial {
            cache,
            digest,
            size,
            path,
            remove_on_drop,
            file,
            ..
        } = self;
        let refuse = |error: CacheError| match fs::remove_file(&path) {
            Ok(()) => Err(error),
            Err(remove) => Err(io_error("delete refused partial", &path)(remove)),
        };
        let actual_size = file
            .metadata()
            .map_err(io_error("stat partial", &path))?
            .len();
        if actual_size < size {
            return refuse(CacheError::Truncated {
                path: path.clone(),
                digest,
                expected_size: size,
                actual_size,
            });
        }
        let actual = read_through(&file, &path, |_, _| Ok(()))?;
        if actual != digest || actual_size != size {
            return refuse(CacheError::Corrupt {
                path: path.clone(),
                expected: digest,
                actual,
                expected_size: size,
                actual_size,
            });
        }
        let handle = cache.publish(file, &path, digest)?;
        drop(remove_on_drop);
        cache.evict_to_cap()?;
        Ok(handle)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::{Command, Stdio};
    use std::thread::sleep;
    use std::time::Instant;

    /// Set (to a cache root) only in the child process of `two_processes_download_one_digest`.
    const CHILD_ROOT_ENV: &str = "BLOB_CACHE_TEST_CHILD_ROOT";

    /// Deterministic pseudo-random bytes.
    fn content(len: usize, seed: u64) -> Vec<u8> {
        let mut state = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (0..len)
            .map(|_| {
                state = state
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                (state >> 33) as u8
            })
            .collect()
    }

    fn write_all(partial: &mut Partial, bytes: &[u8], chunk: usize, pause: Duration) {
        for piece in bytes.chunks(chunk) {
            partial.write_at(partial.offset(), piece).unwrap();
            sleep(pause);
        }
    }

    fn fetch(cache: &BlobCache, bytes: &[u8]) -> BlobHandle {
        let mut partial = cache.resume(Digest::of(bytes), bytes.len() as u64).unwrap();
        write_all(&mut partial, bytes, 1000, Duration::ZERO);
        partial.finish().unwrap()
    }

    fn files_under(dir: &Path) -> Vec<PathBuf> {
        let mut found = Vec::new();
        for entry in fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                found.extend(files_under(&path));
            } else {
                found.push(path);
            }
        }
        found
    }

    #[test]
    fn interrupted_transfer_resumes_from_its_offset() {
        let dir = tempfile::tempdir().unwrap();
        let cache = BlobCache::open(dir.path(), 1 << 20).unwrap();
        let data = content(10_000, 1);
        let digest = Digest::of(&data);
        assert!(cache.get(digest).is_none());

        let mut first = cache.resume(digest, data.len() as u64).unwrap();
        assert_eq!(first.offset(), 0);
        write_all(&mut first, &data[..4096], 1000, Duration::ZERO);
        drop(first); // interrupted

        let mut second = cache.resume(digest, data.len() as u64).unwrap();
        assert_eq!(second.offset(), 4096);
        assert_eq!(
            second.path(),
            dir.path().join("partial").join(digest.to_string())
        );
        write_all(&mut second, &data[4096..], 1000, Duration::ZERO);
        let handle = second.finish().unwrap();

        let hex = digest.to_string();
        let expected_path = dir.path().join("blobs").join(&hex[..2]).join(&hex);
        assert_eq!(handle.path(), expected_path);
        assert_eq!(handle.size(), data.len() as u64);
        assert_eq!(fs::read(handle.path()).unwrap(), data);
        drop(handle);
        let again = cache.get(digest).unwrap();
        assert_eq!(Digest::of(&fs::read(again.path()).unwrap()), digest);
        assert!(files_under(&dir.path().join("partial")).is_empty());
    }

    #[test]
    fn corrupt_transfer_is_refused_and_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let cache = BlobCache::open(dir.path(), 1 << 20).unwrap();
        let data = content(5_000, 2);
        let digest = Digest::of(&data);
        let mut bad = data.clone();
        bad[2_345] ^= 0x01;

        let mut partial = cache.resume(digest, data.len() as u64).unwrap();
        write_all(&mut partial, &bad, 1000, Duration::ZERO);
        let error = partial.finish().unwrap_err().to_string();
        assert!(error.contains("corrupt transfer"), "{error}");
        assert!(error.contains(&digest.to_string()), "{error}");
        assert!(error.contains(&Digest::of(&bad).to_string()), "{error}");
        assert!(files_under(&dir.path().join("partial")).is_empty());
        assert!(files_under(&dir.path().join("blobs")).is_empty());
        assert!(cache.get(digest).is_none());

        let mut retry = cache.resume(digest, data.len() as u64).unwrap();
        assert_eq!(retry.offset(), 0);
        write_all(&mut retry, &data, 1000, Duration::ZERO);
        let handle = retry.finish().unwrap();
        assert_eq!(fs::read(handle.path()).unwrap(), data);
    }

    #[test]
    fn truncated_transfer_is_refused_and_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let cache = BlobCache::open(dir.path(), 1 << 20).unwrap();
        let data = content(10_000, 3);
        let mut partial = cache.resume(Digest::of(&data), 10_000).unwrap();
        write_all(&mut partial, &data[..5_000], 1000, Duration::ZERO);
        let error = partial.finish().unwrap_err().to_string();
        assert!(error.contains("truncated"), "{error}");
        assert!(error.contains("expected 10000 bytes, have 5000"), "{error}");
        assert!(files_under(&dir.path().join("blobs")).is_empty());
        assert!(files_under(&dir.path().join("partial")).is_empty());
    }

    #[test]
    fn writes_off_the_offset_or_past_the_size_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let cache = BlobCache::open(dir.path(), 1 << 20).unwrap();
        let data = content(300, 4);
        let mut partial = cache.resume(Digest::of(&data), 300).unwrap();
        partial.write_at(0, &data[..100]).unwrap();
        let error = partial
            .write_at(50, &data[50..150])
            .unwrap_err()
            .to_string();
        assert!(error.contains("offset 50"), "{error}");
        assert!(error.contains("at offset 100"), "{error}");
        let error = partial.write_at(100, &[0u8; 201]).unwrap_err().to_string();
        assert!(error.contains("declared size of 300"), "{error}");
        assert_eq!(partial.offset(), 100);
        write_all(&mut partial, &data[100..], 64, Duration::ZERO);
        assert_eq!(fs::read(partial.finish().unwrap().path()).unwrap(), data);
    }

    #[test]
    fn eviction_drops_the_least_recently_used_and_spares_held_blobs() {
        let dir = tempfile::tempdir().unwrap();
        let cache = BlobCache::open(dir.path(), 3_000).unwrap();
        let [a, b, c, d, e] = [10, 11, 12, 13, 14].map(|seed| content(1_000, seed));
        let [da, db, dc, dd, de] = [&a, &b, &c, &d, &e].map(|bytes| Digest::of(bytes));
        for bytes in [&a, &b, &c] {
            drop(fetch(&cache, bytes));
            sleep(Duration::from_millis(5));
        }
        drop(cache.get(da).unwrap()); // a is now more recent than b and c
        sleep(Duration::from_millis(5));
        drop(fetch(&cache, &d)); // over the cap by one: b goes
        assert!(cache.get(db).is_none(), "b was least recently used");
        let held: Vec<BlobHandle> = [da, dc, dd].map(|d| cache.get(d).unwrap()).into();
        assert_eq!(cache.total_bytes().unwrap(), 3_000);

        // A cap of one blob over the same folder: everything is held, so nothing goes.
        let tiny = BlobCache::open(dir.path(), 1_000).unwrap();
        let held_e = fetch(&tiny, &e);
        assert_eq!(tiny.total_bytes().unwrap(), 4_000);
        let report = tiny.evict_to_cap().unwrap();
        assert!(report.evicted.is_empty(), "{report:?}");
        assert_eq!(report.in_use.len(), 4, "{report:?}");
        assert_eq!(report.total_bytes, 4_000);
        for handle in held.iter().chain([&held_e]) {
            assert!(handle.path().exists());
        }

        drop(held); // a, c, d released; e still held
        let report = tiny.evict_to_cap().unwrap();
        let evicted: Vec<Digest> = report.evicted.iter().map(|(d, _)| *d).collect();
        assert_eq!(evicted, [da, dc, dd], "{report:?}");
        assert_eq!(report.total_bytes, 1_000);
        assert!(cache.get(de).is_some());
    }

    #[test]
    fn a_partial_left_linked_to_its_blob_is_never_written_again() {
        let dir = tempfile::tempdir().unwrap();
        let cache = BlobCache::open(dir.path(), 1 << 20).unwrap();
        let data = content(1_000, 7);
        let digest = Digest::of(&data);
        let blob = fetch(&cache, &data).path().to_path_buf();
        let leftover = dir.path().join("partial").join(digest.to_string());
        fs::hard_link(&blob, &leftover).unwrap(); // as if the publisher died before unlinking
        let partial = cache.resume(digest, 10).unwrap(); // a wrong size would empty it
        assert_eq!(partial.offset(), 0);
        assert_eq!(fs::read(&blob).unwrap(), data);
    }

    #[test]
    fn threads_fetching_getting_and_evicting_at_once_stay_consistent() {
        let dir = tempfile::tempdir().unwrap();
        let blobs: Vec<Vec<u8>> = (0..6).map(|seed| content(3_000, 100 + seed)).collect();
        let cache = BlobCache::open(dir.path(), 9_000).unwrap();
        std::thread::scope(|scope| {
            for worker in 0..6 {
                let (cache, blobs) = (&cache, &blobs);
                scope.spawn(move || {
                    for round in 0..30 {
                        let bytes = &blobs[(worker + round) % blobs.len()];
                        let handle = match cache.get(Digest::of(bytes)) {
                            Some(handle) => handle,
                            None => fetch(cache, bytes),
                        };
                        assert_eq!(fs::read(handle.path()).unwrap(), *bytes);
                        if round % 7 == 0 {
                            cache.evict_to_cap().unwrap();
                        }
                    }
                });
            }
        });
        assert!(cache.evict_to_cap().unwrap().total_bytes <= 9_000);
        assert!(files_under(&dir.path().join("partial")).is_empty());
    }

    #[test]
    fn stale_unlocked_partials_are_swept() {
        let dir = tempfile::tempdir().unwrap();
        let cache = BlobCache::open(dir.path(), 1 << 20).unwrap();
        let (stale, live) = (content(10, 20), content(10, 21));
        let mut abandoned = cache.resume(Digest::of(&stale), 10).unwrap();
        abandoned.write_at(0, &stale[..5]).unwrap();
        let old = SystemTime::now() - STALE_PARTIAL_AGE - Duration::from_secs(60);
        abandoned.file.set_modified(old).unwrap();
        let abandoned_path = abandoned.path().to_path_buf();
        drop(abandoned);
        let writing = cache.resume(Digest::of(&live), 10).unwrap();
        writing.file.set_modified(old).unwrap(); // old, but its writer is alive

        let report = cache.evict_to_cap().unwrap();
        assert_eq!(report.stale_partials, [abandoned_path], "{report:?}");
        assert!(writing.path().exists());
    }

    #[test]
    fn two_processes_download_one_digest() {
        let dir = tempfile::tempdir().unwrap();
        let data = content(100_000, 5);
        let digest = Digest::of(&data);
        let child = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "cache::tests::child_downloads_into_shared_cache"])
            .args(["--nocapture", "--test-threads=1"])
            .env(CHILD_ROOT_ENV, dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();

        // Start once the child holds the resumable partial, so the two transfers overlap.
        let started = dir.path().join("child-started");
        let deadline = Instant::now() + Duration::from_secs(60);
        while !started.exists() {
            assert!(
                Instant::now() < deadline,
                "the child never started its transfer"
            );
            sleep(Duration::from_millis(5));
        }
        let cache = BlobCache::open(dir.path(), 1 << 30).unwrap();
        let mut partial = cache.resume(digest, data.len() as u64).unwrap();
        let name = partial
            .path()
            .file_name()
            .unwrap()
            .to_str()
            .unwrap()
            .to_string();
        assert!(
            name.starts_with(&format!("{digest}.")),
            "one-off name, got {name}"
        );
        write_all(&mut partial, &data, 2_000, Duration::from_millis(1));
        let ours = partial.finish().unwrap();
        assert_eq!(fs::read(ours.path()).unwrap(), data);

        let output = child.wait_with_output().unwrap();
        let report = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(output.status.success(), "child failed:\n{report}");
        assert!(report.contains("1 passed"), "child ran no test:\n{report}");
        assert!(files_under(&dir.path().join("partial")).is_empty());
        assert_eq!(files_under(&dir.path().join("blobs")), [ours.path()]);
        assert_eq!(fs::read(cache.get(digest).unwrap().path()).unwrap(), data);
    }

    /// The second process of `two_processes_download_one_digest`; does nothing otherwise.
    #[test]
    fn child_downloads_into_shared_cache() {
        let Some(root) = std::env::var_os(CHILD_ROOT_ENV) else {
            return;
        };
        let root = PathBuf::from(root);
        let cache = BlobCache::open(&root, 1 << 30).unwrap();
        let data = content(100_000, 5);
        let mut partial = cache.resume(Digest::of(&data), data.len() as u64).unwrap();
        assert_eq!(
            partial.path(),
            root.join("partial").join(Digest::of(&data).to_string())
        );
        fs::write(root.join("child-started"), b"").unwrap();
        write_all(&mut partial, &data, 2_000, Duration::from_millis(1));
        let handle = partial.finish().unwrap();
        assert_eq!(fs::read(handle.path()).unwrap(), data);
    }

    #[test]
    fn adopt_links_a_matching_file_and_refuses_another() {
        let dir = tempfile::tempdir().unwrap();
        let cache = BlobCache::open(&dir.path().join("cache"), 1 << 20).unwrap();
        let data_dir = dir.path().join("data");
        fs::create_dir(&data_dir).unwrap();
        let mnist = data_dir.join("train-images-idx3-ubyte");
        let data = content(20_000, 6);
        fs::write(&mnist, &data).unwrap();
        let digest = Digest::of(&data);

        let handle = cache.adopt(&mnist, digest).unwrap().unwrap();
        assert_eq!(fs::read(handle.path()).unwrap(), data);
        let (blob, source) = (
            fs::metadata(handle.path()).unwrap(),
            fs::metadata(&mnist).unwrap(),
        );
        assert_eq!(
            (blob.dev(), blob.ino()),
            (source.dev(), source.ino()),
            "hard link"
        );

        // Again while the blob is held (it cannot be locked, so it is copied and dropped),
        // and again once it is not (it already is the blob).
        let held_again = cache.adopt(&mnist, digest).unwrap().unwrap();
        assert_eq!(held_again.path(), handle.path());
        drop((handle, held_again));
        let again = cache.adopt(&mnist, digest).unwrap().unwrap();
        assert_eq!(fs::metadata(again.path()).unwrap().ino(), source.ino());

        let other = data_dir.join("other");
        fs::write(&other, b"not the same bytes").unwrap();
        let wrong = Digest::of(b"something else");
        assert!(cache.adopt(&other, wrong).unwrap().is_none());
        assert_eq!(fs::read(&other).unwrap(), b"not the same bytes");
        assert!(cache.get(wrong).is_none());
        assert!(files_under(&dir.path().join("cache").join("partial")).is_empty());
        assert_eq!(
            files_under(&dir.path().join("cache").join("blobs")).len(),
            1
        );

        let missing = cache.adopt(&data_dir.join("absent"), digest).unwrap_err();
        assert!(missing.to_string().contains("absent"), "{missing}");
    }
}
