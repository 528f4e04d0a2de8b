//! The browser dashboard (`--http-listen ADDR`, off by default): read-only, server-rendered
//! pages of the sweeps, of one sweep (its trial table, which value of each parameter won,
//! every chart of a dashboard, live progress while it runs), of one trial (parameters,
//! accuracy and loss curves, epochs, provenance, notes) and of the workers and queue. No
//! JavaScript and nothing from elsewhere: pages that change reload themselves (a
//! `<meta http-equiv="refresh">`), and the stylesheet and charts come from the daemon.
//!
//! Owns: the HTTP server (plaintext, or TLS with the gRPC certificate), the routes and the
//! chart cache. Who may look is `access`, the markup `pages`. The data comes from the
//! Orchestrator API in-process (the answers gRPC clients get: same conversions, same
//! errors) and from `api::charts`; no SQL here.

mod access;
mod pages;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{middleware, Form, Router};
use cnnd_proto::orchestrator_server::Orchestrator;
use cnnd_proto::{self as pb};
use http::{header, HeaderMap, StatusCode};
use tonic::{Code, Request, Status};

use crate::api::Api;
use crate::auth::RequireBearer;
use access::Access;

/// How the dashboard is served.
pub struct WebOptions {
    pub listen: SocketAddr,
    /// PEM certificate chain and key (the gRPC ones): serve HTTPS.
    pub tls: Option<(Vec<u8>, Vec<u8>)>,
    /// The API token check; `RequireBearer::disabled()` under `--insecure-no-auth`.
    pub auth: RequireBearer,
    /// How long a login lasts.
    pub session_ttl: Duration,
}

#[derive(Clone)]
struct WebState {
    api: Arc<Api>,
    access: Arc<Access>,
    charts: Arc<ChartCache>,
}

/// Binds the dashboard and serves it in the background; returns the bound address.
pub async fn serve(options: WebOptions, api: Arc<Api>) -> anyhow::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(options.listen)
        .await
        .with_context(|| format!("dashboard: listening on {}", options.listen))?;
    let bound = listener.local_addr()?;
    let tls = match &options.tls {
        Some((cert, key)) => Some(tls_acceptor(cert, key)?),
        None => None,
    };
    let state = WebState {
        api,
        access: Arc::new(Access::new(
            options.auth,
            tls.is_some(),
            options.session_ttl,
        )),
        charts: Arc::new(ChartCache::default()),
    };
    let app = router(state);
    match tls {
        None => {
            tokio::spawn(async move {
                if let Err(e) = axum::serve(listener, app).await {
                    tracing::error!(error = %e, "dashboard stopped");
                }
            });
        }
        Some(acceptor) => {
            tokio::spawn(serve_tls(listener, acceptor, app));
        }
    }
    Ok(bound)
}

fn router(state: WebState) -> Router {
    Router::new()
        .route("/", get(sweeps_page))
        .route("/sweeps/{id}", get(sweep_page))
        .route("/sweeps/{id}/charts/{file}", get(sweep_chart))
        .route("/trials/{id}", get(trial_page))
        .route("/trials/{id}/charts/{file}", get(trial_chart))
        .route("/trials/{id}/{set}/{file}", get(trial_image))
        .route("/workers", get(workers_page))
        .route("/logout", post(logout))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            access::require_login,
        ))
        .route("/login", get(login_page).post(login))
        .route("/static/cnnd.css", get(stylesheet))
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(
            state.clone(),
            access::guard_and_headers,
        ))
        .with_state(state)
}

// ---------------------------------------------------------------------------------------
// Pages.

async fn sweeps_page(State(s): State<WebState>, headers: HeaderMap) -> Response {
    let sweeps = match s
        .api
        .list_sweeps(Request::new(pb::ListSweepsRequest {}))
        .await
    {
        Ok(r) => r.into_inner().sweeps,
        Err(e) => return status_page(&e),
    };
    pages::sweeps(&s.chrome(&headers), &sweeps).into_response()
}

async fn sweep_page(
    State(s): State<WebState>,
    Path(id): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    let sweep = match s
        .api
        .get_sweep(Request::new(pb::GetSweepRequest {
            sweep_id: id.clone(),
            all_params: false,
        }))
        .await
    {
        Ok(r) => r.into_inner(),
        Err(e) => return status_page(&e),
    };
    let dashboard = query.get("dashboard").cloned().unwrap_or_default();
    let panels = match crate::api::charts::dashboard_panels(&s.api.dashboards_dir, &dashboard) {
        Ok(p) => p,
        Err(e) => return status_page(&e),
    };
    let data = first_data_preview(&s, &sweep).await;
    pages::sweep(
        &s.chrome(&headers),
        &sweep,
        &dashboard,
        &panels,
        data.as_ref(),
    )
    .into_response()
}

/// The data preview of the sweep's first started trial that has one (a few are tried): the
/// sweep's data set as its models see it.
async fn first_data_preview(s: &WebState, sweep: &pb::Sweep) -> Option<(String, pb::DataPreview)> {
    let started = sweep
        .trials
        .iter()
        .filter(|t| !matches!(t.status.as_str(), "queued" | "held"))
        .take(3);
    for t in started {
        let request = Request::new(pb::GetTrialRequest {
            trial_id: t.trial_id.clone(),
        });
        if let Ok(trial) = s.api.get_trial(request).await {
            if let Some(preview) = trial.into_inner().data_preview {
                return Some((t.trial_id.clone(), preview));
            }
        }
    }
    None
}

async fn trial_page(
    State(s): State<WebState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let trial = match s
        .api
        .get_trial(Request::new(pb::GetTrialRequest { trial_id: id }))
        .await
    {
        Ok(r) => r.into_inner(),
        Err(e) => return status_page(&e),
    };
    pages::trial(&s.chrome(&headers), &trial).into_response()
}

async fn workers_page(State(s): State<WebState>, headers: HeaderMap) -> Response {
    match s
        .api
        .get_status(Request::new(pb::GetStatusRequest {}))
        .await
    {
        Ok(r) => pages::workers(&s.chrome(&headers), &r.into_inner()).into_response(),
        Err(e) => status_page(&e),
    }
}

async fn sweep_chart(
    State(s): State<WebState>,
    Path((id, file)): Path<(String, String)>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let dashboard =
        match crate::api::charts::dashboard_name(query.get("dashboard").map_or("", String::as_str))
        {
            Ok(name) => name.to_string(),
            Err(e) => return status_page(&e),
        };
    // Read before rendering: a write during the rendering moves the generation on and the
    // next request renders again.
    let generation = s.api.scheduler.store.generation();
    let api = s.api.clone();
    let (sweep_id, board) = (id.clone(), dashboard.clone());
    let charts = s
        .charts
        .get(format!("sweep {id} {dashboard}"), generation, async move {
            let reply = api
                .render_charts(Request::new(pb::RenderChartsRequest {
                    sweep_id,
                    dashboard: board,
                    include_bytes: true,
                }))
                .await?
                .into_inner();
            Ok(reply.charts.into_iter().map(|c| (c.name, c.data)).collect())
        })
        .await;
    chart_response(charts, &file)
}

async fn trial_chart(
    State(s): State<WebState>,
    Path((id, file)): Path<(String, String)>,
) -> Response {
    let generation = s.api.scheduler.store.generation();
    let api = s.api.clone();
    let trial_id = id.clone();
    let charts = s
        .charts
        .get(format!("trial {id}"), generation, async move {
            crate::api::charts::render_trial_charts(&api.scheduler, &trial_id).await
        })
        .await;
    chart_response(charts, &file)
}

/// `/trials/ID/SET/N.png`: the Nth image of one of a trial's image sets, by position, never
/// by path: `misclassified` (its test report's wrong answers), `samples` (training images
/// as the model saw them) and `augmented` (the augmentation preview, unaugmented first).
async fn trial_image(
    State(s): State<WebState>,
    Path((id, set, file)): Path<(String, String, String)>,
) -> Response {
    let Some(n) = file
        .strip_suffix(".png")
        .and_then(|n| n.parse::<usize>().ok())
    else {
        return not_found().await;
    };
    if !["misclassified", "samples", "augmented"].contains(&set.as_str()) {
        return not_found().await;
    }
    let trial = match s
        .api
        .get_trial(Request::new(pb::GetTrialRequest { trial_id: id }))
        .await
    {
        Ok(r) => r.into_inner(),
        Err(e) => return status_page(&e),
    };
    let png = match set.as_str() {
        "misclassified" => trial
            .test_report
            .and_then(|r| r.misclassified.into_iter().nth(n))
            .map(|m| m.png),
        "samples" => trial
            .data_preview
            .and_then(|p| p.samples.into_iter().nth(n))
            .map(|s| s.png),
        _ => trial
            .data_preview
            .and_then(|p| p.augmented.into_iter().nth(n)),
    };
    match png {
        Some(png) => ([(header::CONTENT_TYPE, "image/png")], png).into_response(),
        None => not_found().await,
    }
}

/// A chart by name from a rendered set: never a path, so nothing outside it can be served.
fn chart_response(charts: Result<Charts, Status>, file: &str) -> Response {
    let charts = match charts {
        Ok(c) => c,
        Err(e) => return status_page(&e),
    };
    match charts.iter().find(|(name, _)| name == file) {
        Some((_, png)) => ([(header::CONTENT_TYPE, "image/png")], png.clone()).into_response(),
        None => pages::error_page(
            StatusCode::NOT_FOUND,
            &format!(
                "No chart named '{file}' here (the charts are: {}).",
                charts
                    .iter()
                    .map(|(n, _)| n.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ),
    }
}

async fn stylesheet() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "max-age=3600"),
        ],
        pages::STYLESHEET,
    )
        .into_response()
}

async fn not_found() -> Response {
    pages::error_page(StatusCode::NOT_FOUND, "No such page.")
}

// ---------------------------------------------------------------------------------------
// Logging in and out.

async fn login_page(State(s): State<WebState>) -> Response {
    if s.access.auth.is_disabled() {
        return Redirect::to("/").into_response();
    }
    pages::login(None).into_response()
}

#[derive(serde::Deserialize)]
struct LoginForm {
    token: String,
}

async fn login(
    State(s): State<WebState>,
    uri: http::Uri,
    headers: HeaderMap,
    Form(form): Form<LoginForm>,
) -> Response {
    if let Err(why) = access::check_origin(&s.access, &headers, &uri) {
        return pages::error_page(StatusCode::FORBIDDEN, &why);
    }
    if !s.access.auth.token_matches(&form.token) {
        let mut page = pages::login(Some("That is not this daemon's API token.")).into_response();
        *page.status_mut() = StatusCode::UNAUTHORIZED;
        return page;
    }
    let id = s.access.start_session();
    (
        [(header::SET_COOKIE, s.access.session_cookie(&id))],
        Redirect::to("/"),
    )
        .into_response()
}

async fn logout(State(s): State<WebState>, uri: http::Uri, headers: HeaderMap) -> Response {
    if let Err(why) = access::check_origin(&s.access, &headers, &uri) {
        return pages::error_page(StatusCode::FORBIDDEN, &why);
    }
    if let Some(id) = access::session_id(&headers) {
        s.access.end_session(&id);
    }
    (
        [(header::SET_COOKIE, s.access.cleared_cookie())],
        Redirect::to("/login"),
    )
        .into_response()
}

impl WebState {
    /// What the page frame needs: whether to offer "log out".
    fn chrome(&self, headers: &HeaderMap) -> pages::Chrome {
        pages::Chrome {
            logged_in: access::session_id(headers).is_some() && !self.access.auth.is_disabled(),
        }
    }
}

/// An API error as a page: NOT_FOUND 404, INVALID_ARGUMENT 400, UNAVAILABLE 503, else 500.
fn status_page(status: &Status) -> Response {
    let code = match status.code() {
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::InvalidArgument => StatusCode::BAD_REQUEST,
        Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    pages::error_page(code, status.message())
}

// ---------------------------------------------------------------------------------------
// The chart cache.

/// Rendered charts by key (a sweep and dashboard, or a trial), kept until the store
/// changes. While a sweep runs the store changes every epoch; a set rendered less than
/// `FRESH_FOR` ago is served anyway, so that the several images of one page (and
/// several viewers) share one rendering. One rendering per key at a time.
#[derive(Default)]
struct ChartCache {
    entries: std::sync::Mutex<HashMap<String, Arc<tokio::sync::Mutex<Option<Rendered>>>>>,
}

struct Rendered {
    generation: Option<u64>,
    at: Instant,
    charts: Charts,
}

/// A rendered set of charts: (file name, PNG bytes) in panel order.
type Charts = Arc<Vec<(String, Vec<u8>)>>;

const FRESH_FOR: Duration = Duration::from_secs(2);
/// Most keys kept; beyond it the cache starts again (a few MB per sweep).
const MAX_CACHED: usize = 64;

impl ChartCache {
    /// The charts of `key`, rendered by `render` unless a set rendered at the store's
    /// `generation` (read by the caller before rendering) or less than `FRESH_FOR` ago is
    /// kept.
    async fn get(
        &self,
        key: String,
        generation: Option<u64>,
        render: impl std::future::Future<Output = Result<Vec<(String, Vec<u8>)>, Status>>,
    ) -> Result<Charts, Status> {
        let slot = {
            let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
            if entries.len() >= MAX_CACHED && !entries.contains_key(&key) {
                entries.clear();
            }
            entries.entry(key).or_default().clone()
        };
        let mut slot = slot.lock().await;
        if let Some(r) = slot.as_ref() {
            let unchanged = r.generation.is_some() && r.generation == generation;
            if unchanged || r.at.elapsed() < FRESH_FOR {
                return Ok(r.charts.clone());
            }
        }
        let charts = Arc::new(render.await?);
        *slot = Some(Rendered {
            generation,
            at: Instant::now(),
            charts: charts.clone(),
        });
        Ok(charts)
    }
}

// ---------------------------------------------------------------------------------------
// TLS.

fn tls_acceptor(cert_pem: &[u8], key_pem: &[u8]) -> anyhow::Result<tokio_rustls::TlsAcceptor> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .context("dashboard TLS: reading the certificate chain")?;
    let key = PrivateKeyDer::from_pem_slice(key_pem).context("dashboard TLS: reading the key")?;
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .context("dashboard TLS: the certificate and key do not form a pair")?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

/// Accepts TCP connections, does the TLS handshake (10 s at most) off the accept loop, and
/// serves HTTP/1.1 or HTTP/2 on each.
async fn serve_tls(
    listener: tokio::net::TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    app: Router,
) {
    loop {
        let tcp = match listener.accept().await {
            Ok((tcp, _)) => tcp,
            Err(e) => {
                tracing::warn!(error = %e, "dashboard: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let (acceptor, app) = (acceptor.clone(), app.clone());
        tokio::spawn(async move {
            let stream =
                match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await {
                    Ok(Ok(stream)) => stream,
                    _ => return,
                };
            let service = hyper_util::service::TowerToHyperService::new(app);
            let _ =
                hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new())
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
        });
    }
}
