//! Authentication, the daemon's side: its two bearer tokens and the layer that checks them.
//! The API token (`STATE_DIR/token`) opens `cnn.v1.Orchestrator`; the worker token
//! (`STATE_DIR/worker-token`) opens the worker protocol, and neither opens the other's
//! service. Both are created on first start (32 random bytes as hex, mode 0600); the
//! worker token can be rotated while the daemon runs (`cnnd rotate-worker-token`).
//!
//! Owns: creating and rotating tokens, and the server layer that refuses every call but
//! health and reflection without `authorization: Bearer TOKEN` (UNAUTHENTICATED, compared in
//! constant time, nothing else revealed). Reading a token file and sending the token are
//! `cnnd_client::auth`'s.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::Arc;
use std::task::{Context, Poll};

use anyhow::{bail, Context as _, Result};
use cnnd_client::auth::{read_token_file, token_path};
use futures::future::{ready, Either, Ready};
use subtle::ConstantTimeEq;
use tonic::Status;

/// Paths served without a token: the gRPC health service (load balancers, systemd probes,
/// Kubernetes) and server reflection. Reflection answers the schema only (the same
/// descriptors as `proto/` in the source), never data; operators probe with grpcurl, which
/// needs reflection to find `grpc.health.v1.Health/Check` at all.
pub(crate) const OPEN_PATHS: &[&str] = &[
    "/grpc.health.v1.Health/",
    "/grpc.reflection.v1.ServerReflection/",
    "/grpc.reflection.v1alpha.ServerReflection/",
];

/// The worker token's file name inside the state directory.
pub const WORKER_TOKEN_FILE: &str = "worker-token";

/// The worker token file of a state directory.
pub fn worker_token_path(state_dir: &Path) -> std::path::PathBuf {
    state_dir.join(WORKER_TOKEN_FILE)
}

/// Reads the daemon's API token from `state_dir`, creating it (owner read/write only) when
/// it does not exist yet. Refuses a token file others can read.
pub fn load_or_create_token(state_dir: &Path) -> Result<String> {
    load_or_create(&token_path(state_dir), "the API token")
}

/// Reads the worker token from `state_dir`, creating it when it does not exist yet.
pub fn load_or_create_worker_token(state_dir: &Path) -> Result<String> {
    load_or_create(&worker_token_path(state_dir), "the worker token")
}

/// Replaces the worker token with a new one (written whole, mode 0600); a running daemon
/// takes it at the next call (see [`RequireBearer::from_file`]): workers with the old token
/// are refused from then on. Returns the new token.
pub fn rotate_worker_token(state_dir: &Path) -> Result<String> {
    let path = worker_token_path(state_dir);
    let tmp = path.with_extension(format!("new-{}", std::process::id()));
    let token = new_token();
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("creating {}", tmp.display()))?;
    file.write_all(token.as_bytes())
        .and_then(|_| file.sync_all())
        .and_then(|_| std::fs::rename(&tmp, &path))
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(token)
}

fn load_or_create(path: &Path, what: &str) -> Result<String> {
    let path = path.to_path_buf();
    if path.exists() {
        // Read first: a read-only state directory still serves with its existing token.
        check_private(&path)?;
        return read_token_file(&path);
    }
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
    {
        Ok(mut file) => {
            let token = new_token();
            file.write_all(token.as_bytes())
                .and_then(|_| file.sync_all())
                .with_context(|| format!("writing {}", path.display()))?;
            tracing::info!(path = %path.display(), "created {what} (mode 0600)");
            Ok(token)
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            check_private(&path)?;
            read_token_file(&path)
        }
        Err(e) => Err(e).with_context(|| format!("creating {}", path.display())),
    }
}

fn check_private(path: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path)
        .with_context(|| format!("reading {}", path.display()))?
        .permissions()
        .mode();
    if mode & 0o077 != 0 {
        bail!(
            "{}: the token file is readable by others (mode {:o}); run `chmod 600 {}`",
            path.display(),
            mode & 0o777,
            path.display()
        );
    }
    Ok(())
}

fn new_token() -> String {
    use rand::RngCore;
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

// ---------------------------------------------------------------------------------------
// Server side.

/// Tower layer refusing calls without the right token. `RequireBearer::disabled()` lets
/// everything through (`--insecure-no-auth`).
#[derive(Clone)]
pub struct RequireBearer {
    expected: Option<Arc<TokenSource>>,
}

/// A token file's (modification time, size) when read.
type FileStamp = (std::time::SystemTime, u64);

/// Where the expected token comes from: fixed, or a token file read again when it changes.
enum TokenSource {
    Fixed(Vec<u8>),
    File {
        path: std::path::PathBuf,
        /// (modification time, size) of the file when read, and `Bearer TOKEN` of it.
        cache: std::sync::Mutex<(Option<FileStamp>, Vec<u8>)>,
    },
}

impl TokenSource {
    /// `Bearer TOKEN` as it stands now.
    fn current(&self) -> Vec<u8> {
        match self {
            TokenSource::Fixed(expected) => expected.clone(),
            TokenSource::File { path, cache } => {
                let stamp = std::fs::metadata(path)
                    .ok()
                    .map(|m| (m.modified().unwrap_or(std::time::UNIX_EPOCH), m.len()));
                let mut cache = cache.lock().unwrap_or_else(|e| e.into_inner());
                if stamp.is_some() && cache.0 != stamp {
                    match read_token_file(path) {
                        Ok(token) => *cache = (stamp, format!("Bearer {token}").into_bytes()),
                        Err(e) => tracing::warn!("keeping the previous worker token: {e:#}"),
                    }
                }
                cache.1.clone()
            }
        }
    }
}

impl RequireBearer {
    pub fn new(token: &str) -> Self {
        RequireBearer {
            expected: Some(Arc::new(TokenSource::Fixed(
                format!("Bearer {token}").into_bytes(),
            ))),
        }
    }

    /// The token of the file at `path`, read again whenever the file changes (rotation).
    pub fn from_file(path: &Path) -> Result<Self> {
        let token = read_token_file(path)?;
        let meta = std::fs::metadata(path)?;
        let stamp = (meta.modified().unwrap_or(std::time::UNIX_EPOCH), meta.len());
        Ok(RequireBearer {
            expected: Some(Arc::new(TokenSource::File {
                path: path.to_path_buf(),
                cache: std::sync::Mutex::new((Some(stamp), format!("Bearer {token}").into_bytes())),
            })),
        })
    }

    pub fn disabled() -> Self {
        RequireBearer { expected: None }
    }

    /// True when every call is let through (`--insecure-no-auth`).
    pub fn is_disabled(&self) -> bool {
        self.expected.is_none()
    }

    /// Whether an `authorization` header value (`Bearer TOKEN`) is this daemon's token;
    /// compared in constant time. Always true when disabled.
    pub fn header_matches(&self, header: &[u8]) -> bool {
        match &self.expected {
            None => true,
            Some(expected) => bool::from(header.ct_eq(expected.current().as_slice())),
        }
    }

    /// Whether `token` (the token alone, as typed on the dashboard's login page) is this
    /// daemon's token.
    pub fn token_matches(&self, token: &str) -> bool {
        self.header_matches(format!("Bearer {}", token.trim()).as_bytes())
    }

    /// Why a request with this path and `authorization` header is refused, if it is.
    fn refusal(&self, path: &str, header: Option<&[u8]>) -> Option<&'static str> {
        let expected = self.expected.as_ref()?;
        if OPEN_PATHS.iter().any(|p| path.starts_with(p)) {
            return None;
        }
        match header {
            None => Some("authentication required: send metadata 'authorization: Bearer TOKEN'"),
            Some(given) if bool::from(given.ct_eq(expected.current().as_slice())) => None,
            Some(_) => Some("the bearer token is not valid for this daemon"),
        }
    }
}

impl CallCheck for RequireBearer {
    fn refusal(&self, path: &str, headers: &http::HeaderMap) -> Option<Status> {
        let header = headers
            .get(http::header::AUTHORIZATION)
            .map(|v| v.as_bytes());
        let reason = RequireBearer::refusal(self, path, header)?;
        tracing::debug!(path, reason, "refused a call");
        Some(Status::unauthenticated(reason))
    }
}

impl<S> tower::Layer<S> for RequireBearer {
    type Service = Checked<S, RequireBearer>;
    fn layer(&self, inner: S) -> Self::Service {
        Checked::new(inner, self.clone())
    }
}

/// A check a server makes on every call before its service sees it (the token here, the
/// leadership gate in `crate::leadership`): `Some(status)` answers the call with it.
pub trait CallCheck: Clone {
    fn refusal(&self, path: &str, headers: &http::HeaderMap) -> Option<Status>;
}

/// A service behind a [`CallCheck`].
#[derive(Clone)]
pub struct Checked<S, C> {
    inner: S,
    check: C,
}

impl<S, C: CallCheck> Checked<S, C> {
    pub fn new(inner: S, check: C) -> Self {
        Checked { inner, check }
    }
}

impl<S, C, B, ResBody> tower::Service<http::Request<B>> for Checked<S, C>
where
    S: tower::Service<http::Request<B>, Response = http::Response<ResBody>>,
    C: CallCheck,
    ResBody: Default,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Either<Ready<Result<S::Response, S::Error>>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        match self.check.refusal(request.uri().path(), request.headers()) {
            Some(status) => Either::Left(ready(Ok(status.into_http()))),
            None => Either::Right(self.inner.call(request)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_file_is_created_once_private_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let token = load_or_create_token(dir.path()).unwrap();
        assert_eq!(token.len(), 64);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(token_path(dir.path()))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(load_or_create_token(dir.path()).unwrap(), token);
        let other = tempfile::tempdir().unwrap();
        assert_ne!(load_or_create_token(other.path()).unwrap(), token);
    }

    #[test]
    fn a_token_file_others_can_read_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        load_or_create_token(dir.path()).unwrap();
        let path = token_path(dir.path());
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = load_or_create_token(dir.path()).unwrap_err().to_string();
        assert!(e.contains("readable by others"), "{e}");
    }

    #[test]
    fn only_health_and_reflection_are_open_and_the_token_must_match_exactly() {
        let auth = RequireBearer::new("abc");
        let svc = "/cnn.v1.Orchestrator/GetStatus";
        assert!(auth.refusal(svc, None).unwrap().contains("required"));
        assert!(auth.refusal(svc, Some(b"Bearer abd")).is_some());
        assert!(auth.refusal(svc, Some(b"Bearer ab")).is_some());
        assert!(auth.refusal(svc, Some(b"bearer abc")).is_some());
        assert!(auth.refusal(svc, Some(b"Bearer abc")).is_none());
        assert!(auth.refusal("/grpc.health.v1.Health/Check", None).is_none());
        for reflection in [
            "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
            "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
        ] {
            assert!(auth.refusal(reflection, None).is_none(), "{reflection}");
        }
        // A look-alike path is not open.
        assert!(auth
            .refusal("/grpc.health.v1.HealthX/Check", None)
            .is_some());
        assert!(RequireBearer::disabled().refusal(svc, None).is_none());
    }
}
