//! Credentials, the client's side: where a daemon keeps its token, reading a token file,
//! and the interceptor that sends `authorization: Bearer TOKEN` with every call. The daemon
//! creates and checks tokens (its `auth` module).
//!
//! Owns: token files as clients read them, and sending the token.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::{Request, Status};

/// The token file's name inside the state directory.
pub const TOKEN_FILE: &str = "token";

/// The token file of a state directory.
pub fn token_path(state_dir: &Path) -> PathBuf {
    state_dir.join(TOKEN_FILE)
}

/// Reads a token file (whitespace around the token is ignored).
pub fn read_token_file(path: &Path) -> Result<String> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let token = text.trim().to_string();
    if token.is_empty() || !token.bytes().all(|b| b.is_ascii_graphic()) {
        bail!(
            "{}: not a token (expected one line of text)",
            path.display()
        );
    }
    Ok(token)
}

/// Adds `authorization: Bearer TOKEN` to every call (nothing when there is no token).
#[derive(Clone, Default)]
pub struct BearerToken(Option<MetadataValue<Ascii>>);

impl BearerToken {
    pub fn new(token: Option<&str>) -> Result<Self> {
        match token {
            None => Ok(BearerToken(None)),
            Some(t) => {
                Ok(BearerToken(Some(format!("Bearer {t}").parse().context(
                    "the token has characters a header cannot carry",
                )?)))
            }
        }
    }

    /// The token of the daemon whose state directory is `state_dir`.
    pub fn from_state_dir(state_dir: &Path) -> Result<Self> {
        Self::new(Some(&read_token_file(&token_path(state_dir))?))
    }
}

impl Interceptor for BearerToken {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(v) = &self.0 {
            request.metadata_mut().insert("authorization", v.clone());
        }
        Ok(request)
    }
}

/// The default daemon's state directory: `CNND_STATE_DIR`, else
/// `$XDG_STATE_HOME/cnnd`, else `~/.local/state/cnnd`.
pub fn default_state_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("CNND_STATE_DIR") {
        return PathBuf::from(d);
    }
    let base = std::env::var_os("XDG_STATE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/state")))
        .unwrap_or_else(|| PathBuf::from("."));
    base.join("cnnd")
}
