//! cnnd-client: how a client reaches the daemon's public API: the address (`host:port` or a
//! URL; `https://` for TLS, checked against a CA file or the system roots), the token (the
//! `CNND_TOKEN` value, a token file, or the default daemon's `STATE_DIR/token`, see
//! [`auth`]), and the connect timeout. An address may list several daemons, separated by
//! commas (a leader and its standbys): [`connect`] picks the one that leads. cnnctl, the benchmarks and the tests connect
//! through here; no libtorch, no daemon code.

pub mod auth;
pub mod sweep_view;

use std::path::{Path, PathBuf};
use std::time::Duration;

use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use crate::auth::BearerToken;
use cnnd_proto::orchestrator_client::OrchestratorClient;

/// The Orchestrator client with the token attached to every call.
pub type Client = OrchestratorClient<InterceptedService<Channel, BearerToken>>;

/// Where and how to connect.
#[derive(Debug, Clone, Default)]
pub struct ClientOptions {
    /// `host:port`, `http://host:port` or `https://host:port`; several, separated by commas,
    /// for a leader and its standbys.
    pub addr: String,
    /// The token itself (from `CNND_TOKEN`); wins over `token_file`.
    pub token: Option<String>,
    /// A token file; default: the default state directory's `token`, when it exists.
    pub token_file: Option<PathBuf>,
    /// PEM CA certificate(s) a `https://` daemon's certificate must chain to; default: the
    /// system roots.
    pub ca_file: Option<PathBuf>,
    pub connect_timeout: Option<Duration>,
    /// The local address to connect from (default: chosen by the system).
    pub local_address: Option<std::net::IpAddr>,
}

impl ClientOptions {
    /// These options, connecting from `ip`.
    pub fn with_local_address(mut self, ip: std::net::IpAddr) -> Self {
        self.local_address = Some(ip);
        self
    }
}

/// Largest answer a client accepts: RenderCharts with the PNGs of a dashboard, Predict with
/// many images.
pub const MAX_MESSAGE_BYTES: usize = 64 << 20;

/// This machine's host name (the kernel's): how a worker registers and a leader names itself.
pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "localhost".into())
}

/// Why a connection could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// Bad options: an unreadable token or CA file, a malformed address.
    #[error("{0}")]
    Setup(String),
    /// Nothing answered at the address (the address, and the transport's reason).
    #[error("cannot reach cnnd at {0}{1}")]
    Unreachable(String, String),
}

/// `127.0.0.1:50051` -> `http://127.0.0.1:50051`; an address with a scheme is kept.
pub fn normalize_addr(addr: &str) -> String {
    let addr = addr.trim().trim_end_matches('/');
    if addr.contains("://") {
        addr.to_string()
    } else {
        format!("http://{addr}")
    }
}

/// The token to send: `token`, else the given token file, else the default daemon's token
/// file when it exists, else none (the daemon will answer UNAUTHENTICATED).
pub fn resolve_token(
    token: Option<&str>,
    token_file: Option<&Path>,
) -> Result<Option<String>, ConnectError> {
    if let Some(t) = token.map(str::trim).filter(|t| !t.is_empty()) {
        return Ok(Some(t.to_string()));
    }
    let setup = |e: anyhow::Error| ConnectError::Setup(format!("{e:#}"));
    if let Some(file) = token_file {
        return auth::read_token_file(file).map(Some).map_err(setup);
    }
    let default = auth::token_path(&auth::default_state_dir());
    if default.exists() {
        return auth::read_token_file(&default).map(Some).map_err(setup);
    }
    Ok(None)
}

/// A client certificate and key (PEM files), for a daemon that asks for mutual TLS.
#[derive(Debug, Clone)]
pub struct ClientIdentity {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// The endpoint for `addr` (TLS for `https://`, checked against `ca_file` or the system
/// roots, presenting `identity` when given), not yet connected.
pub fn endpoint(
    addr: &str,
    ca_file: Option<&Path>,
    identity: Option<&ClientIdentity>,
    timeout: Duration,
) -> Result<Endpoint, ConnectError> {
    let url = normalize_addr(addr);
    let endpoint = Endpoint::from_shared(url.clone())
        .map_err(|e| ConnectError::Setup(format!("invalid address '{addr}': {e}")))?
        .connect_timeout(timeout);
    if !url.starts_with("https://") {
        if ca_file.is_some() || identity.is_some() {
            return Err(ConnectError::Setup(format!(
                "a CA file or client certificate was given but {url} is not https://"
            )));
        }
        return Ok(endpoint);
    }
    let read = |path: &Path, what: &str| {
        std::fs::read(path).map_err(|e| {
            ConnectError::Setup(format!("cannot read the {what} {}: {e}", path.display()))
        })
    };
    let mut tls = match ca_file {
        Some(ca) => {
            ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read(ca, "CA file")?))
        }
        None => ClientTlsConfig::new().with_native_roots(),
    };
    if let Some(id) = identity {
        tls = tls.identity(Identity::from_pem(
            read(&id.cert, "client certificate")?,
            read(&id.key, "client key")?,
        ));
    }
    endpoint
        .tls_config(tls)
        .map_err(|e| ConnectError::Setup(format!("TLS setup for {url}: {e}")))
}

/// Connects to the daemon (TLS for `https://`) and attaches the token. When `addr` lists
/// several daemons, each is asked in turn (GetStatus) and the first that does not answer
/// UNAVAILABLE (a standby, or a leader that stepped down, does) is kept.
pub async fn connect(options: &ClientOptions) -> Result<Client, ConnectError> {
    let addrs: Vec<&str> = options
        .addr
        .split(',')
        .map(str::trim)
        .filter(|a| !a.is_empty())
        .collect();
    if addrs.len() <= 1 {
        return connect_one(options, &options.addr).await;
    }
    let mut why = Vec::new();
    for addr in &addrs {
        match connect_one(options, addr).await {
            Ok(mut client) => match client
                .get_status(cnnd_proto::GetStatusRequest::default())
                .await
            {
                Err(status) if status.code() == tonic::Code::Unavailable => {
                    why.push(format!("{addr}: {}", status.message()))
                }
                _ => return Ok(client),
            },
            Err(e) => why.push(e.to_string()),
        }
    }
    Err(ConnectError::Unreachable(
        addrs.join(","),
        format!(" (none of them leads: {})", why.join("; ")),
    ))
}

/// Connects to one daemon.
async fn connect_one(options: &ClientOptions, addr: &str) -> Result<Client, ConnectError> {
    let options = &ClientOptions {
        addr: addr.to_string(),
        ..options.clone()
    };
    let addr = normalize_addr(&options.addr);
    let timeout = options.connect_timeout.unwrap_or(Duration::from_secs(3));
    // HTTP/2 pings find a daemon that stopped answering (paused, or its host gone) while a
    // stream is open, within 20 s, instead of waiting on it for ever.
    let endpoint = endpoint(&options.addr, options.ca_file.as_deref(), None, timeout)?
        .local_address(options.local_address)
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(10));
    let token = resolve_token(options.token.as_deref(), options.token_file.as_deref())?;
    let token =
        BearerToken::new(token.as_deref()).map_err(|e| ConnectError::Setup(e.to_string()))?;
    match tokio::time::timeout(timeout + Duration::from_secs(1), endpoint.connect()).await {
        Ok(Ok(channel)) => Ok(OrchestratorClient::with_interceptor(channel, token)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)),
        Ok(Err(e)) => Err(ConnectError::Unreachable(addr, reason(&e))),
        Err(_) => Err(ConnectError::Unreachable(addr, " (timed out)".into())),
    }
}

/// The innermost cause of a transport error, e.g. " (connection refused)" or a TLS
/// certificate problem.
pub fn reason(e: &tonic::transport::Error) -> String {
    let mut cause: &dyn std::error::Error = e;
    while let Some(next) = cause.source() {
        cause = next;
    }
    format!(" ({cause})")
}
