//! The daemon's files by content. Workers share no folder with the daemon: they fetch what
//! they need (data-set files, initial weights, checkpoints, the data manifest) by SHA-256
//! digest and upload their results the same way. This module keeps the daemon's side:
//!
//! - the blob store `STATE_DIR/blobs/<2 hex>/<64 hex>`: uploads (checkpoints, best weights,
//!   input records) and the data manifests, each checked against its digest before it is
//!   kept; partial uploads under `blobs/partial/` resume by offset;
//! - the data files it serves from the data directory, by digest (registered from each
//!   sweep's manifest; never a path a worker names);
//! - hashing files once: digests are remembered by (path, size, modification time).
//!
//! Owns: these files and what may be served. Must not touch: the store (the database), the
//! network.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

use anyhow::{bail, Context, Result};
use cnnd_core::content::{Digest, FileRef, Hasher};

/// Why an upload chunk or a finished upload is refused.
#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    #[error("upload of {digest}: chunk at offset {given}, but {held} bytes are held; ask UploadOffset and go on from there")]
    WrongOffset {
        digest: String,
        given: u64,
        held: u64,
    },
    #[error("upload of {digest}: {got} bytes would pass its declared size of {size}")]
    TooLong { digest: String, got: u64, size: u64 },
    #[error("upload of {name}: corrupt transfer: its content hashes to {actual} ({actual_size} bytes), not to {expected} ({expected_size} bytes); send it again")]
    Corrupt {
        name: String,
        expected: String,
        actual: String,
        expected_size: u64,
        actual_size: u64,
    },
    #[error("{0}")]
    Io(#[from] anyhow::Error),
}

/// The daemon's blob store and the data files it serves.
pub struct Blobs {
    root: PathBuf,
    /// Data-directory files that may be served, by digest.
    served: Mutex<HashMap<Digest, PathBuf>>,
    /// Digests of files already hashed, by (path, size, modification time).
    hashed: Mutex<HashMap<(PathBuf, u64, SystemTime), Digest>>,
    /// One upload at a time per digest.
    uploading: Mutex<()>,
}

impl Blobs {
    /// The blob store of a state directory (`STATE_DIR/blobs`), created when missing.
    pub fn open(state_dir: &Path) -> Result<Blobs> {
        let root = state_dir.join("blobs");
        fs::create_dir_all(root.join("partial"))
            .with_context(|| format!("creating {}", root.display()))?;
        Ok(Blobs {
            root,
            served: Default::default(),
            hashed: Default::default(),
            uploading: Default::default(),
        })
    }

    /// Where the blob of `digest` lives (whether or not it is there).
    pub fn path(&self, digest: &Digest) -> PathBuf {
        let hex = digest.to_string();
        self.root.join(&hex[..2]).join(hex)
    }

    /// The blob `file` names, when it is in the store whole (its size matches).
    pub fn get(&self, file: &FileRef) -> Option<PathBuf> {
        let digest = file.parsed_digest().ok()?;
        let path = self.path(&digest);
        let size = fs::metadata(&path).ok()?.len();
        (size == file.size).then_some(path)
    }

    /// Keeps `bytes` as a blob (e.g. a data manifest) and names it `name`.
    pub fn put_bytes(&self, name: &str, bytes: &[u8]) -> Result<FileRef> {
        let digest = Digest::of(bytes);
        let path = self.path(&digest);
        if !path.exists() {
            let dir = path.parent().expect("blobs live in a folder");
            fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            crate::files::write_whole(&path, bytes)?;
        }
        Ok(FileRef {
            name: name.to_string(),
            digest: digest.to_string(),
            size: bytes.len() as u64,
        })
    }

    /// Hashes the file at `path` (once per path, size and modification time) and names the
    /// result `name`.
    pub fn hash_file(&self, path: &Path, name: &str) -> Result<FileRef> {
        let meta = fs::metadata(path).with_context(|| format!("reading {}", path.display()))?;
        let modified = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
        let key = (path.to_path_buf(), meta.len(), modified);
        let known = self.hashed.lock().unwrap().get(&key).copied();
        let digest = match known {
            Some(d) => d,
            None => {
                let d = hash_reader(
                    File::open(path).with_context(|| format!("reading {}", path.display()))?,
                )
                .with_context(|| format!("reading {}", path.display()))?;
                self.hashed.lock().unwrap().insert(key, d);
                d
            }
        };
        Ok(FileRef {
            name: name.to_string(),
            digest: digest.to_string(),
            size: meta.len(),
        })
    }

    /// Lets workers fetch the data-directory file at `path` by its digest.
    pub fn serve(&self, file: &FileRef, path: &Path) -> Result<()> {
        let digest = file.parsed_digest()?;
        self.served
            .lock()
            .unwrap()
            .insert(digest, path.to_path_buf());
        Ok(())
    }

    /// Hashes a data-directory file and serves it: [`Self::hash_file`] then [`Self::serve`].
    pub fn serve_file(&self, path: &Path, name: &str) -> Result<FileRef> {
        let file = self.hash_file(path, name)?;
        self.serve(&file, path)?;
        Ok(file)
    }

    /// The file a worker may fetch by `digest`: a blob, or a served data file (checked to
    /// be unchanged since it was hashed). None: the daemon has no such file.
    pub fn open_for_fetch(&self, digest: &Digest) -> Result<Option<(File, u64)>> {
        let blob = self.path(digest);
        if let Ok(f) = File::open(&blob) {
            let size = f.metadata()?.len();
            return Ok(Some((f, size)));
        }
        let Some(path) = self.served.lock().unwrap().get(digest).cloned() else {
            return Ok(None);
        };
        let name = path.display().to_string();
        let now = self.hash_file(&path, &name)?;
        if now.parsed_digest()? != *digest {
            bail!(
                "{} changed since it was recorded (now {}): resubmit the sweep",
                path.display(),
                now.digest
            );
        }
        let f = File::open(&path).with_context(|| format!("reading {}", path.display()))?;
        let size = f.metadata()?.len();
        Ok(Some((f, size)))
    }

    fn partial_path(&self, digest: &Digest) -> PathBuf {
        self.root.join("partial").join(digest.to_string())
    }

    /// Bytes already held of an upload of `file`: its size only when the blob is kept
    /// whole, what a partial upload left, else 0.
    ///
    /// Two workers may upload the same content at once (the input record of two trials of
    /// one sweep is the same file). A partial upload another worker has sent in full but not
    /// yet finished is checked and kept here, so that "all of it" always means the blob can
    /// be named in a report; a corrupt one is deleted and 0 returned.
    pub fn upload_offset(&self, file: &FileRef) -> Result<u64> {
        let _one_at_a_time = self.uploading.lock().unwrap();
        if self.get(file).is_some() {
            return Ok(file.size);
        }
        let digest = file.parsed_digest()?;
        let held = fs::metadata(self.partial_path(&digest)).map_or(0, |m| m.len());
        if held < file.size {
            return Ok(held);
        }
        match self.keep_upload(file) {
            Ok(_) => Ok(file.size),
            Err(UploadError::Corrupt { .. }) => Ok(0),
            Err(e) => Err(anyhow::Error::from(e)),
        }
    }

    /// Appends a chunk to the upload of `file`; `offset` must be where the held bytes end.
    pub fn append(&self, file: &FileRef, offset: u64, data: &[u8]) -> Result<(), UploadError> {
        let _one_at_a_time = self.uploading.lock().unwrap();
        let digest = file.parsed_digest().map_err(anyhow::Error::from)?;
        if self.get(file).is_some() {
            return Ok(());
        }
        let path = self.partial_path(&digest);
        let mut f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        let held = f.metadata().map_err(anyhow::Error::from)?.len();
        if offset != held {
            return Err(UploadError::WrongOffset {
                digest: file.digest.clone(),
                given: offset,
                held,
            });
        }
        let got = held + data.len() as u64;
        if got > file.size {
            return Err(UploadError::TooLong {
                digest: file.digest.clone(),
                got,
                size: file.size,
            });
        }
        f.write_all(data)
            .with_context(|| format!("writing {}", path.display()))?;
        Ok(())
    }

    /// Checks a complete upload against its digest and keeps it as a blob. A corrupt or
    /// short upload is deleted (the worker sends it again) and refused.
    pub fn finish_upload(&self, file: &FileRef) -> Result<PathBuf, UploadError> {
        let _one_at_a_time = self.uploading.lock().unwrap();
        self.keep_upload(file)
    }

    /// [`Blobs::finish_upload`] with the upload lock held.
    fn keep_upload(&self, file: &FileRef) -> Result<PathBuf, UploadError> {
        if let Some(path) = self.get(file) {
            return Ok(path);
        }
        let expected = file.parsed_digest().map_err(anyhow::Error::from)?;
        let partial = self.partial_path(&expected);
        let checked = File::open(&partial)
            .map_err(anyhow::Error::from)
            .and_then(|mut f| {
                f.seek(SeekFrom::Start(0))?;
                let size = f.metadata()?.len();
                Ok((hash_reader(f)?, size))
            })
            .with_context(|| format!("reading {}", partial.display()));
        let (actual, actual_size) = match checked {
            Ok(v) => v,
            Err(e) => return Err(UploadError::Io(e)),
        };
        if actual != expected || actual_size != file.size {
            let _ = fs::remove_file(&partial);
            return Err(UploadError::Corrupt {
                name: file.name.clone(),
                expected: file.digest.clone(),
                actual: actual.to_string(),
                expected_size: file.size,
                actual_size,
            });
        }
        let path = self.path(&expected);
        let dir = path.parent().expect("blobs live in a folder");
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        File::open(&partial)
            .and_then(|f| f.sync_all())
            .and_then(|()| fs::rename(&partial, &path))
            .with_context(|| format!("keeping {}", path.display()))?;
        Ok(path)
    }

    /// Deletes a blob nothing refers to any more (a superseded checkpoint).
    pub fn remove(&self, file: &FileRef) {
        if let Ok(digest) = file.parsed_digest() {
            let _ = fs::remove_file(self.path(&digest));
        }
    }
}

/// The SHA-256 of everything `reader` yields.
fn hash_reader(mut reader: impl Read) -> std::io::Result<Digest> {
    let mut hasher = Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = reader.read(&mut buf)?;
        if n == 0 {
            return Ok(hasher.finish());
        }
        hasher.update(&buf[..n]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file_ref(name: &str, bytes: &[u8]) -> FileRef {
        FileRef {
            name: name.into(),
            digest: Digest::of(bytes).to_string(),
            size: bytes.len() as u64,
        }
    }

    #[test]
    fn a_second_uploader_of_the_same_content_hears_all_of_it_only_once_it_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let blobs = Blobs::open(dir.path()).unwrap();
        let record = br#"{"dataset":"mnist","side":28}"#;
        let file = file_ref("input.json", record);
        // Worker A has sent every byte but not yet finished its upload when worker B asks.
        blobs.append(&file, 0, record).unwrap();
        assert!(blobs.get(&file).is_none());
        assert_eq!(blobs.upload_offset(&file).unwrap(), file.size);
        // B names it in its finish at once: the blob is there.
        let kept = blobs
            .get(&file)
            .expect("kept when its offset said all of it");
        assert_eq!(fs::read(&kept).unwrap(), record);
        // A's finish comes after and finds it kept.
        assert_eq!(blobs.finish_upload(&file).unwrap(), kept);

        // A full-length partial that does not match its digest is dropped, not announced.
        let other = b"another record";
        let file = file_ref("input.json", other);
        blobs.append(&file, 0, b"ANOTHER RECORD").unwrap();
        assert_eq!(blobs.upload_offset(&file).unwrap(), 0);
        assert!(blobs.get(&file).is_none());
        blobs.append(&file, 0, other).unwrap();
        blobs.finish_upload(&file).unwrap();
    }

    #[test]
    fn an_upload_resumes_by_offset_and_is_kept_only_when_its_digest_matches() {
        let dir = tempfile::tempdir().unwrap();
        let blobs = Blobs::open(dir.path()).unwrap();
        let data: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        let file = file_ref("checkpoint.safetensors", &data);
        assert_eq!(blobs.upload_offset(&file).unwrap(), 0);
        blobs.append(&file, 0, &data[..4000]).unwrap();
        // An interrupted upload resumes where it stopped; a chunk elsewhere is refused.
        assert_eq!(blobs.upload_offset(&file).unwrap(), 4000);
        let e = blobs.append(&file, 0, &data[..10]).unwrap_err();
        assert!(e.to_string().contains("4000 bytes are held"), "{e}");
        blobs.append(&file, 4000, &data[4000..]).unwrap();
        let path = blobs.finish_upload(&file).unwrap();
        assert_eq!(fs::read(&path).unwrap(), data);
        assert_eq!(blobs.upload_offset(&file).unwrap(), data.len() as u64);
        assert_eq!(blobs.get(&file), Some(path));
        // Uploading it again changes nothing.
        blobs.append(&file, 0, &data).unwrap();

        // A corrupted chunk: refused at the end, nothing kept, the next try works.
        let other: Vec<u8> = (0..3000u32).map(|i| (i * 7 % 256) as u8).collect();
        let file = file_ref("best.safetensors", &other);
        let mut bad = other.clone();
        bad[1234] ^= 0xff;
        blobs.append(&file, 0, &bad).unwrap();
        let e = blobs.finish_upload(&file).unwrap_err().to_string();
        assert!(
            e.contains("corrupt transfer") && e.contains(&file.digest),
            "{e}"
        );
        assert!(blobs.get(&file).is_none());
        assert_eq!(blobs.upload_offset(&file).unwrap(), 0);
        blobs.append(&file, 0, &other).unwrap();
        blobs.finish_upload(&file).unwrap();
        let (mut f, size) = blobs
            .open_for_fetch(&file.parsed_digest().unwrap())
            .unwrap()
            .unwrap();
        let mut back = Vec::new();
        f.read_to_end(&mut back).unwrap();
        assert_eq!((back, size), (other, 3000));
    }

    #[test]
    fn only_registered_data_files_are_served_and_a_changed_one_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let blobs = Blobs::open(&dir.path().join("state")).unwrap();
        let data = dir.path().join("mnist.gz");
        fs::write(&data, b"pixels").unwrap();
        let digest = Digest::of(b"pixels");
        assert!(blobs.open_for_fetch(&digest).unwrap().is_none());
        let file = blobs.serve_file(&data, "mnist/mnist.gz").unwrap();
        assert_eq!(file.digest, digest.to_string());
        assert!(blobs.open_for_fetch(&digest).unwrap().is_some());
        // Changed under the daemon: not served as if it were the recorded file.
        std::thread::sleep(std::time::Duration::from_millis(20));
        fs::write(&data, b"other!").unwrap();
        let e = blobs.open_for_fetch(&digest).unwrap_err().to_string();
        assert!(e.contains("changed since it was recorded"), "{e}");
    }
}
