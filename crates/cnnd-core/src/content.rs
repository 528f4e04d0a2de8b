//! Content by digest: how the daemon and its workers, which share no folder, refer to
//! files (data-set files, initial weights, checkpoints, results). [`Digest`] (SHA-256, 32
//! bytes, written as 64 lowercase hex), [`Hasher`] (incremental hashing), [`FileRef`] (a
//! file by name, digest and size) and [`Manifest`] (every file a sweep's data set needs).
//!
//! Owns: these types. Must not touch: files, sockets or any other I/O: callers feed the
//! bytes in.

use std::fmt;
use std::str::FromStr;

use sha2::Digest as _;

/// The SHA-256 digest of a blob's content. `Display` writes 64 lowercase hex characters;
/// `FromStr` reads them back (either case is accepted).
#[derive(Copy, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest([u8; 32]);

impl Digest {
    /// The digest of `bytes`.
    pub fn of(bytes: &[u8]) -> Digest {
        let mut hasher = Hasher::new();
        hasher.update(bytes);
        hasher.finish()
    }

    /// A digest from its 32 raw bytes (e.g. from a protobuf `bytes` field).
    pub fn from_bytes(bytes: [u8; 32]) -> Digest {
        Digest(bytes)
    }

    /// The 32 raw bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for byte in self.0 {
            write!(f, "{byte:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Digest({self})")
    }
}

/// Why a string is not a digest. The offending text is quoted (cut to 80 characters).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DigestParseError {
    #[error("a SHA-256 digest is 64 hex characters, but {shown:?} has {length}")]
    Length { shown: String, length: usize },
    #[error(
        "a SHA-256 digest is 64 hex characters, but {shown:?} has {character:?} \
         (not hex) at position {position}"
    )]
    NotHex {
        shown: String,
        character: char,
        position: usize,
    },
}

fn shown(input: &str) -> String {
    const LIMIT: usize = 80;
    match input.char_indices().nth(LIMIT) {
        Some((cut, _)) => format!("{}…", &input[..cut]),
        None => input.to_string(),
    }
}

impl FromStr for Digest {
    type Err = DigestParseError;

    fn from_str(input: &str) -> Result<Digest, DigestParseError> {
        if let Some((position, character)) = input
            .chars()
            .enumerate()
            .find(|(_, c)| !c.is_ascii_hexdigit())
        {
            return Err(DigestParseError::NotHex {
                shown: shown(input),
                character,
                position,
            });
        }
        // All characters are ASCII hex from here on, so bytes and characters coincide.
        if input.len() != 64 {
            return Err(DigestParseError::Length {
                shown: shown(input),
                length: input.len(),
            });
        }
        let mut bytes = [0u8; 32];
        for (byte, pair) in bytes.iter_mut().zip(input.as_bytes().chunks_exact(2)) {
            let pair = std::str::from_utf8(pair).expect("ASCII hex checked above");
            *byte = u8::from_str_radix(pair, 16).expect("hex digits checked above");
        }
        Ok(Digest(bytes))
    }
}

/// Incremental SHA-256: feed the content with [`Hasher::update`] in any number of pieces,
/// then take the [`Digest`] with [`Hasher::finish`].
#[derive(Clone, Default)]
pub struct Hasher(sha2::Sha256);

impl Hasher {
    pub fn new() -> Hasher {
        Hasher(sha2::Sha256::new())
    }

    pub fn update(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }

    pub fn finish(self) -> Digest {
        Digest(self.0.finalize().into())
    }
}

impl fmt::Debug for Hasher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Hasher(SHA-256)")
    }
}

/// A file by content: its name where it belongs (a path relative to the data folder for
/// data-set files, e.g. `mnist/train-images-idx3-ubyte.gz`; a plain name otherwise), its
/// digest and its size.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FileRef {
    pub name: String,
    /// 64 lowercase hex.
    pub digest: String,
    pub size: u64,
}

impl FileRef {
    /// The digest, parsed.
    pub fn parsed_digest(&self) -> Result<Digest, DigestParseError> {
        self.digest.parse()
    }
}

/// Every file a sweep's data set needs, recorded at submit: the workers fetch what they
/// lack by digest and lay the files out under their names. For an image folder, its
/// layout (classes and labelled files, paths relative to the folder) comes with it.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Manifest {
    pub files: Vec<FileRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layout: Option<crate::datasets::FolderLayout>,
}

/// The version of the worker protocol this build speaks: a worker and a daemon work
/// together when the major versions are equal.
pub const PROTOCOL_VERSION: (u32, u32) = (2, 0);

/// The checkpoint format this build writes and reads (the trainer's safetensors layout:
/// `model.*`, `best.*`, `optim.*`, `meta.*`). A checkpointed trial is leased only to
/// workers that read its format.
pub const CHECKPOINT_FORMAT: u32 = 1;

/// In the NOT_FOUND answer to a worker the daemon does not know (it restarted, or forgot a
/// silent worker): the worker registers again, declaring the lease it still trains.
pub const UNKNOWN_WORKER_HINT: &str = "register again";

#[cfg(test)]
mod tests {
    use super::*;

    const EMPTY: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
    const ABC: &str = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";

    #[test]
    fn known_digests_display_as_lowercase_hex() {
        assert_eq!(Digest::of(b"").to_string(), EMPTY);
        assert_eq!(Digest::of(b"abc").to_string(), ABC);
        assert_eq!(
            format!("{:?}", Digest::of(b"abc")),
            format!("Digest({ABC})")
        );
    }

    #[test]
    fn hashing_in_pieces_equals_hashing_at_once() {
        let mut hasher = Hasher::new();
        hasher.update(b"a");
        hasher.update(b"");
        hasher.update(b"bc");
        assert_eq!(hasher.finish(), Digest::of(b"abc"));
    }

    #[test]
    fn parse_round_trips_and_accepts_upper_case() {
        let digest: Digest = ABC.parse().unwrap();
        assert_eq!(digest, Digest::of(b"abc"));
        assert_eq!(ABC.to_uppercase().parse::<Digest>().unwrap(), digest);
        assert_eq!(Digest::from_bytes(*digest.as_bytes()), digest);
    }

    #[test]
    fn parse_refuses_wrong_length_and_non_hex() {
        let short = ABC[..63].parse::<Digest>().unwrap_err();
        assert!(short.to_string().contains("64 hex characters"), "{short}");
        assert!(short.to_string().contains("has 63"), "{short}");
        let long = format!("{ABC}0").parse::<Digest>().unwrap_err();
        assert!(long.to_string().contains("has 65"), "{long}");
        let bad = format!("{}g", &ABC[..63]).parse::<Digest>().unwrap_err();
        assert!(bad.to_string().contains("'g'"), "{bad}");
        assert!(bad.to_string().contains("position 63"), "{bad}");
        let unicode = "é".repeat(32).parse::<Digest>().unwrap_err();
        assert!(unicode.to_string().contains("not hex"), "{unicode}");
        assert!("".parse::<Digest>().is_err());
        let huge = "x".repeat(10_000).parse::<Digest>().unwrap_err();
        assert!(huge.to_string().len() < 200, "{huge}");
    }
}
