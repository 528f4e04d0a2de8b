//! Who may look at the dashboard, and the headers every answer carries.
//!
//! - With a token (the default): a request passes with `Authorization: Bearer TOKEN` (scripts)
//!   or with a session cookie from the login page. The cookie holds a random session id,
//!   never the token: HttpOnly, SameSite=Strict, Secure under TLS, expiring; sessions live in
//!   memory and end with the daemon. The login POST must come from the dashboard's own
//!   origin (its `Origin` header is checked).
//! - Without a token (`--insecure-no-auth`, loopback only): the `Host` header must name a
//!   loopback address, so that a web page on another name that resolves to 127.0.0.1
//!   (DNS rebinding) cannot read the dashboard.
//! - Every answer: a Content-Security-Policy that allows the daemon's own stylesheet and
//!   images and nothing else (no script at all), no framing, no sniffing, no referrer.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http::{header, HeaderMap, HeaderValue, StatusCode};
use rand::RngCore;

use super::{pages, WebState};
use crate::auth::RequireBearer;

/// The session cookie's name.
pub(super) const SESSION_COOKIE: &str = "cnnd_session";
/// Most live sessions kept; the oldest goes when a new login would exceed it.
const MAX_SESSIONS: usize = 10_000;

pub(super) const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; style-src 'self'; \
     img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// The checks of one dashboard server.
pub(super) struct Access {
    pub auth: RequireBearer,
    /// Served over TLS: cookies are `Secure` and the expected origin is `https://`.
    pub tls: bool,
    pub session_ttl: Duration,
    sessions: Mutex<HashMap<String, Instant>>,
}

impl Access {
    pub fn new(auth: RequireBearer, tls: bool, session_ttl: Duration) -> Access {
        Access {
            auth,
            tls,
            session_ttl,
            sessions: Mutex::new(HashMap::new()),
        }
    }

    /// Starts a session; returns its id (64 hex digits from the OS's random source).
    pub fn start_session(&self) -> String {
        let mut bytes = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut bytes);
        let id: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        let now = Instant::now();
        let mut live = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        live.retain(|_, expires| *expires > now);
        if live.len() >= MAX_SESSIONS {
            if let Some(oldest) = live.iter().min_by_key(|(_, e)| **e).map(|(k, _)| k.clone()) {
                live.remove(&oldest);
            }
        }
        live.insert(id.clone(), now + self.session_ttl);
        id
    }

    fn session_is_live(&self, id: &str) -> bool {
        let live = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        live.get(id)
            .is_some_and(|expires| *expires > Instant::now())
    }

    pub fn end_session(&self, id: &str) {
        self.sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id);
    }

    /// The `Set-Cookie` value for a new session.
    pub fn session_cookie(&self, id: &str) -> String {
        format!(
            "{SESSION_COOKIE}={id}; Path=/; Max-Age={}; HttpOnly; SameSite=Strict{}",
            self.session_ttl.as_secs().max(1),
            if self.tls { "; Secure" } else { "" }
        )
    }

    /// The `Set-Cookie` value that removes the session cookie.
    pub fn cleared_cookie(&self) -> String {
        format!(
            "{SESSION_COOKIE}=; Path=/; Max-Age=0; HttpOnly; SameSite=Strict{}",
            if self.tls { "; Secure" } else { "" }
        )
    }

    /// `https://host:port` or `http://host:port`: the origin a login form of this server
    /// posts from.
    fn own_origin(&self, host: &str) -> String {
        format!("{}://{host}", if self.tls { "https" } else { "http" })
    }
}

/// The session id of the request's cookie, if it sends one.
pub(super) fn session_id(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == SESSION_COOKIE)
        .map(|(_, value)| value.to_string())
}

/// The host the request was sent to (`Host`, or the URI's authority under HTTP/2).
fn request_host(request: &Request) -> Option<String> {
    request
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_string)
        .or_else(|| request.uri().authority().map(|a| a.to_string()))
}

/// True for `localhost`, `127.x.y.z` and `[::1]`, with or without a port.
fn is_loopback_host(host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or_default(),
        None => host.rsplit_once(':').map_or(host, |(name, _)| name),
    };
    name.eq_ignore_ascii_case("localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Checks the `Origin` of a form POST (login, logout) against the server's own origin
/// (`host`: the `Host` header, or the URI's authority under HTTP/2).
pub(super) fn check_origin(
    access: &Access,
    headers: &HeaderMap,
    uri: &http::Uri,
) -> Result<(), String> {
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_string)
        .or_else(|| uri.authority().map(|a| a.to_string()))
        .unwrap_or_default();
    let expected = access.own_origin(&host);
    match headers.get(header::ORIGIN).and_then(|o| o.to_str().ok()) {
        None => Err(format!(
            "refused: the form was posted without an Origin header (expected {expected}); \
             scripts send 'Authorization: Bearer TOKEN' instead of logging in"
        )),
        Some(origin) if origin.eq_ignore_ascii_case(&expected) => Ok(()),
        Some(origin) => Err(format!(
            "refused: the form was posted from {origin}, not from this dashboard ({expected})"
        )),
    }
}

/// Middleware on every route: the Host check when serving without a token, and the
/// security headers on whatever is answered.
pub(super) async fn guard_and_headers(
    State(state): State<WebState>,
    request: Request,
    next: Next,
) -> Response {
    let static_file = request.uri().path().starts_with("/static/");
    let mut response = if state.access.auth.is_disabled()
        && !request_host(&request).is_some_and(|h| is_loopback_host(&h))
    {
        pages::error_page(
            StatusCode::MISDIRECTED_REQUEST,
            "This dashboard runs without a token and answers only requests addressed to a \
             loopback name (localhost, 127.0.0.1, [::1]).",
        )
    } else {
        next.run(request).await
    };
    let headers = response.headers_mut();
    let set = |headers: &mut HeaderMap, name: header::HeaderName, value: &'static str| {
        headers.insert(name, HeaderValue::from_static(value));
    };
    set(
        headers,
        header::CONTENT_SECURITY_POLICY,
        CONTENT_SECURITY_POLICY,
    );
    set(headers, header::X_CONTENT_TYPE_OPTIONS, "nosniff");
    set(headers, header::X_FRAME_OPTIONS, "DENY");
    // `same-origin`, not `no-referrer`: under `no-referrer` browsers send `Origin: null`
    // with the login form, which the Origin check must refuse.
    set(headers, header::REFERRER_POLICY, "same-origin");
    if !static_file {
        set(headers, header::CACHE_CONTROL, "no-store");
    }
    response
}

/// Middleware on the pages: a valid Bearer header or a live session, else 401 with a link
/// to the login page.
pub(super) async fn require_login(
    State(state): State<WebState>,
    request: Request,
    next: Next,
) -> Response {
    let access = &state.access;
    if access.auth.is_disabled() {
        return next.run(request).await;
    }
    if let Some(given) = request.headers().get(header::AUTHORIZATION) {
        if access.auth.header_matches(given.as_bytes()) {
            return next.run(request).await;
        }
        return unauthorized("The bearer token is not valid for this daemon.");
    }
    match session_id(request.headers()) {
        Some(id) if access.session_is_live(&id) => next.run(request).await,
        Some(_) => unauthorized("Your session has expired or the daemon restarted."),
        None => unauthorized("Log in with the daemon's API token to see this page."),
    }
}

fn unauthorized(reason: &str) -> Response {
    let mut response = pages::login_required(reason).into_response();
    *response.status_mut() = StatusCode::UNAUTHORIZED;
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer realm=\"cnnd\""),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_hosts_are_recognised_and_others_are_not() {
        for host in [
            "localhost",
            "localhost:8080",
            "127.0.0.1:1",
            "127.3.2.1",
            "[::1]:80",
            "[::1]",
        ] {
            assert!(is_loopback_host(host), "{host}");
        }
        for host in [
            "evil.example:8080",
            "10.0.0.1:80",
            "localhost.evil.example",
            "[::2]:1",
            "",
        ] {
            assert!(!is_loopback_host(host), "{host}");
        }
    }

    #[test]
    fn sessions_are_random_expire_and_end() {
        let access = Access::new(
            RequireBearer::new("secret-token"),
            true,
            Duration::from_millis(200),
        );
        let (a, b) = (access.start_session(), access.start_session());
        assert_ne!(a, b);
        assert_eq!(a.len(), 64);
        assert!(access.session_is_live(&a) && access.session_is_live(&b));
        assert!(!access.session_is_live("0000"));
        access.end_session(&a);
        assert!(!access.session_is_live(&a));
        let cookie = access.session_cookie(&b);
        for part in ["HttpOnly", "SameSite=Strict", "Secure", "Max-Age=0"] {
            assert_eq!(cookie.contains(part), part != "Max-Age=0", "{cookie}");
        }
        assert!(
            cookie.contains(&b) && !cookie.contains("secret-token"),
            "{cookie}"
        );
        std::thread::sleep(Duration::from_millis(250));
        assert!(!access.session_is_live(&b));
    }

    #[test]
    fn the_session_cookie_is_found_among_others() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::COOKIE,
            HeaderValue::from_static("a=1; cnnd_session=abc; b=2"),
        );
        assert_eq!(session_id(&headers).as_deref(), Some("abc"));
        assert_eq!(session_id(&HeaderMap::new()), None);
    }

    #[test]
    fn a_login_post_from_another_origin_or_without_one_is_refused() {
        let access = Access::new(RequireBearer::new("t"), false, Duration::from_secs(60));
        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, HeaderValue::from_static("127.0.0.1:8080"));
        assert!(
            check_origin(&access, &headers, &http::Uri::from_static("/login"))
                .unwrap_err()
                .contains("without an Origin")
        );
        headers.insert(
            header::ORIGIN,
            HeaderValue::from_static("http://evil.example"),
        );
        assert!(
            check_origin(&access, &headers, &http::Uri::from_static("/login"))
                .unwrap_err()
                .contains("evil.example")
        );
        headers.insert(
            header::ORIGIN,
            HeaderValue::from_static("http://127.0.0.1:8080"),
        );
        assert!(check_origin(&access, &headers, &http::Uri::from_static("/login")).is_ok());
    }
}
