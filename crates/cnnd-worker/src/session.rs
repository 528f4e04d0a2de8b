//! The worker's connection to its daemon: the channel (TLS for `https://`, a client
//! certificate for mutual TLS, the worker token on every call), registration, and
//! registering again when the daemon no longer knows the worker (it restarted, or forgot a
//! worker it had not heard from), saying which lease the worker still trains so the daemon
//! can let it keep it. Calls that fail because the daemon cannot be reached are retried
//! until a deadline ([`Session::call`]); the caller decides what the deadline is (the lease
//! timeout, for a trial's reports). `--connect` may list several daemons (a leader and its
//! standbys): a call the current one cannot answer (unreachable, or a standby's
//! UNAVAILABLE) is retried at the next one, which the worker then keeps.
//!
//! Owns: the worker id, the chunk size and lease timeout the daemon announced, and the lease
//! the worker holds as far as re-registration is concerned.
//! Must not touch: training, files (see `files`).

use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use cnnd_client::auth::{read_token_file, BearerToken};
use cnnd_client::ClientIdentity;
use cnnd_core::content::{CHECKPOINT_FORMAT, PROTOCOL_VERSION, UNKNOWN_WORKER_HINT};
use cnnd_proto::worker_hub_client::WorkerHubClient;
use cnnd_proto::{HeldLease, RegisterRequest};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tonic::{Code, Status};

/// A worker's client of the daemon: the worker protocol with the worker token attached.
pub type HubClient = WorkerHubClient<InterceptedService<Channel, BearerToken>>;

/// The environment variable a worker token may be given in (the daemon hands it to the
/// workers it starts this way).
pub const TOKEN_ENV: &str = "CNND_WORKER_TOKEN";

/// Largest message a worker accepts: a Predict job carries its images.
const MAX_MESSAGE_BYTES: usize = 80 << 20;

/// How to reach the daemon.
#[derive(Debug, Clone, clap::Args)]
pub struct ConnectArgs {
    /// The daemon's worker protocol: `http://HOST:PORT` (plaintext, loopback or a daemon
    /// started with --allow-plaintext-remote) or `https://HOST:PORT`. Several, separated by
    /// commas (a leader and its standbys on PostgreSQL): the worker uses the one that leads.
    #[arg(long, value_name = "URL[,URL...]")]
    pub connect: String,
    /// The worker token (a copy of the daemon's STATE_DIR/worker-token); default: the
    /// CNND_WORKER_TOKEN environment variable.
    #[arg(long, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// PEM CA certificate(s) the daemon's certificate must chain to (https://); default:
    /// the system roots.
    #[arg(long, value_name = "FILE")]
    pub ca_file: Option<PathBuf>,
    /// This worker's certificate, for a daemon that asks for one (mutual TLS).
    #[arg(long, value_name = "FILE", requires = "key")]
    pub cert: Option<PathBuf>,
    /// The key of --cert.
    #[arg(long, value_name = "FILE", requires = "cert")]
    pub key: Option<PathBuf>,
}

impl ConnectArgs {
    /// The token to send: --token-file, else CNND_WORKER_TOKEN, else none (a daemon started
    /// with --insecure-no-auth).
    fn token(&self) -> Result<Option<String>> {
        if let Some(file) = &self.token_file {
            return read_token_file(file).map(Some);
        }
        Ok(std::env::var(TOKEN_ENV)
            .ok()
            .map(|t| t.trim().to_string())
            .filter(|t| !t.is_empty()))
    }

    /// The daemons `--connect` lists, in order.
    pub fn urls(&self) -> Vec<&str> {
        self.connect
            .split(',')
            .map(str::trim)
            .filter(|u| !u.is_empty())
            .collect()
    }

    /// One channel per daemon of `--connect` (each connects on first use and reconnects
    /// after a failure).
    pub fn clients(&self) -> Result<Vec<HubClient>> {
        let urls = self.urls();
        if urls.is_empty() {
            bail!("--connect: no daemon address given");
        }
        urls.into_iter().map(|url| self.client(url)).collect()
    }

    fn client(&self, url: &str) -> Result<HubClient> {
        let identity = match (&self.cert, &self.key) {
            (Some(cert), Some(key)) => Some(ClientIdentity {
                cert: cert.clone(),
                key: key.clone(),
            }),
            _ => None,
        };
        let endpoint = cnnd_client::endpoint(
            url,
            self.ca_file.as_deref(),
            identity.as_ref(),
            Duration::from_secs(5),
        )
        .map_err(|e| anyhow::anyhow!("{e}"))?
        .tcp_keepalive(Some(Duration::from_secs(10)))
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(10));
        let token = BearerToken::new(self.token()?.as_deref())?;
        Ok(
            WorkerHubClient::with_interceptor(endpoint.connect_lazy(), token)
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES),
        )
    }
}

/// Whether a failed call may succeed if made again: the daemon could not be reached, or the
/// connection broke under the call.
pub fn is_transient(status: &Status) -> bool {
    matches!(
        status.code(),
        Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled | Code::Unknown
    )
}

/// Whether the daemon answered that it does not know this worker (register again).
pub fn is_unknown_worker(status: &Status) -> bool {
    status.code() == Code::NotFound && status.message().contains(UNKNOWN_WORKER_HINT)
}

/// What the daemon said at the last registration.
#[derive(Debug, Clone)]
struct Registered {
    worker_id: String,
    chunk_bytes: u32,
    lease_timeout: Duration,
    /// Bumped at every registration, so that callers who all saw the same "unknown worker"
    /// register once between them.
    count: u64,
}

/// The connection and the registration.
pub struct Session {
    /// One client per daemon of `--connect`; `current` is the one in use.
    clients: Vec<HubClient>,
    current_client: AtomicUsize,
    urls: Vec<String>,
    request: RegisterRequest,
    registered: tokio::sync::Mutex<Registered>,
    /// The copy the synchronous accessors read.
    current: Mutex<Registered>,
    /// The lease this worker trains now, declared at every registration.
    held: Mutex<Option<HeldLease>>,
    /// Where this worker connects (for messages): every address of `--connect`.
    pub url: String,
}

impl Session {
    /// Registers with the daemon, waiting up to `wait` for it to answer at all. An
    /// incompatible worker or a refused token is an error at once.
    pub async fn open(
        args: &ConnectArgs,
        request: RegisterRequest,
        wait: Duration,
    ) -> Result<Session> {
        let clients = args.clients()?;
        let urls: Vec<String> = args.urls().into_iter().map(String::from).collect();
        let request = RegisterRequest {
            protocol: format!("{}.{}", PROTOCOL_VERSION.0, PROTOCOL_VERSION.1),
            checkpoint_format: CHECKPOINT_FORMAT,
            cnnd_version: env!("CARGO_PKG_VERSION").to_string(),
            ..request
        };
        let deadline = Instant::now() + wait;
        let mut delay = Duration::from_millis(100);
        let mut at = 0;
        let first = loop {
            match clients[at].clone().register(request.clone()).await {
                Ok(r) => break r.into_inner(),
                Err(e) if is_transient(&e) && Instant::now() < deadline => {
                    tracing::debug!(
                        "daemon at {} not answering (or standing by): {}",
                        urls[at],
                        e.message()
                    );
                    at = (at + 1) % clients.len();
                    if at == 0 {
                        tokio::time::sleep(delay).await;
                        delay = (delay * 2).min(Duration::from_secs(5));
                    }
                }
                Err(e) => bail!(
                    "registering with the daemon at {}: {}",
                    args.connect,
                    describe(&e)
                ),
            }
        };
        let registered = Registered {
            worker_id: first.worker_id,
            chunk_bytes: first.chunk_bytes.max(4096),
            lease_timeout: Duration::from_secs(u64::from(first.lease_timeout_secs.max(1))),
            count: 1,
        };
        Ok(Session {
            clients,
            current_client: AtomicUsize::new(at),
            urls,
            request,
            current: Mutex::new(registered.clone()),
            registered: tokio::sync::Mutex::new(registered),
            held: Mutex::new(None),
            url: args.connect.clone(),
        })
    }

    pub fn client(&self) -> HubClient {
        self.clients[self.current_client.load(Ordering::SeqCst)].clone()
    }

    /// The daemon in use now.
    pub fn current_url(&self) -> &str {
        &self.urls[self.current_client.load(Ordering::SeqCst)]
    }

    /// After a call to daemon `from` failed as transient: move on to the next daemon of
    /// `--connect` (unless another caller already did). With one daemon, nothing changes.
    fn fail_over(&self, from: usize) {
        let next = (from + 1) % self.clients.len();
        if next != from
            && self
                .current_client
                .compare_exchange(from, next, Ordering::SeqCst, Ordering::SeqCst)
                .is_ok()
        {
            tracing::info!(
                from = self.urls[from],
                to = self.urls[next],
                "daemon unreachable or standing by: trying the next one"
            );
        }
    }

    pub fn worker_id(&self) -> String {
        self.current.lock().unwrap().worker_id.clone()
    }

    /// The chunk size of file transfers the daemon asked for.
    pub fn chunk_bytes(&self) -> usize {
        self.current.lock().unwrap().chunk_bytes as usize
    }

    /// How long the daemon keeps a silent worker's lease: a worker cut off for longer stops
    /// the trial.
    pub fn lease_timeout(&self) -> Duration {
        self.current.lock().unwrap().lease_timeout
    }

    fn count(&self) -> u64 {
        self.current.lock().unwrap().count
    }

    /// Declares the lease this worker trains now (None: none), for registrations to come.
    pub fn hold(&self, lease: Option<(&str, u64)>) {
        *self.held.lock().unwrap() = lease.map(|(trial_id, generation)| HeldLease {
            trial_id: trial_id.to_string(),
            generation,
        });
    }

    /// Whether the held lease is still this worker's after a registration.
    pub fn holds(&self, trial_id: &str, generation: u64) -> bool {
        self.held
            .lock()
            .unwrap()
            .as_ref()
            .is_some_and(|h| h.trial_id == trial_id && h.generation == generation)
    }

    /// Registers again (unless another caller did since `seen`), declaring the held lease;
    /// a held lease the daemon does not keep is dropped (see [`Session::holds`]).
    async fn register_again(&self, seen: u64) -> Result<(), Status> {
        let mut registered = self.registered.lock().await;
        if registered.count != seen {
            return Ok(());
        }
        let held: Vec<HeldLease> = self.held.lock().unwrap().iter().cloned().collect();
        let answer = self
            .client()
            .register(RegisterRequest {
                held: held.clone(),
                ..self.request.clone()
            })
            .await?
            .into_inner();
        {
            let mut mine = self.held.lock().unwrap();
            if mine.as_ref().is_some_and(|h| !answer.kept.contains(h)) {
                tracing::warn!(
                    lease = ?mine,
                    "the daemon did not keep this worker's lease: the trial stops"
                );
                *mine = None;
            }
        }
        *registered = Registered {
            worker_id: answer.worker_id,
            chunk_bytes: answer.chunk_bytes.max(4096),
            lease_timeout: Duration::from_secs(u64::from(answer.lease_timeout_secs.max(1))),
            count: registered.count + 1,
        };
        *self.current.lock().unwrap() = registered.clone();
        tracing::info!(worker = registered.worker_id, kept = ?answer.kept, "registered again");
        Ok(())
    }

    /// Makes a call (`op` is given this worker's id), retrying while the daemon cannot be
    /// reached, until `deadline`, and registering again when the daemon does not know this
    /// worker. Other answers (success or a refusal) are returned as they are.
    pub async fn call<T, F, Fut>(&self, deadline: Instant, mut op: F) -> Result<T, Status>
    where
        F: FnMut(HubClient, String) -> Fut,
        Fut: Future<Output = Result<T, Status>>,
    {
        let mut delay = Duration::from_millis(200);
        loop {
            let seen = self.count();
            let at = self.current_client.load(Ordering::SeqCst);
            let error = match op(self.client(), self.worker_id()).await {
                Ok(v) => return Ok(v),
                Err(e) => e,
            };
            if Instant::now() >= deadline {
                return Err(error);
            }
            if is_unknown_worker(&error) {
                let at = self.current_client.load(Ordering::SeqCst);
                match self.register_again(seen).await {
                    Ok(()) => continue,
                    Err(e) if is_transient(&e) => self.fail_over(at),
                    Err(e) => return Err(e),
                }
            } else if !is_transient(&error) {
                return Err(error);
            } else {
                self.fail_over(at);
            }
            tracing::debug!("daemon unreachable, retrying: {}", error.message());
            tokio::time::sleep(delay.min(deadline.saturating_duration_since(Instant::now()))).await;
            delay = (delay * 2).min(Duration::from_secs(2));
        }
    }
}

/// A refused call as one line: the status code and the daemon's message (which says what
/// to do, e.g. which cnnd-worker to install).
pub fn describe(status: &Status) -> String {
    let code = match status.code() {
        Code::Unauthenticated => "unauthenticated (check --token-file / CNND_WORKER_TOKEN)",
        Code::PermissionDenied => "permission denied",
        Code::FailedPrecondition => "refused",
        Code::Unavailable => "unreachable",
        _ => "error",
    };
    format!("{code}: {}", status.message())
}

/// Reads the worker token file when one is given (for a clear error at start-up).
pub fn check_token_file(args: &ConnectArgs) -> Result<()> {
    if let Some(file) = &args.token_file {
        read_token_file(file).with_context(|| "--token-file")?;
    }
    Ok(())
}
