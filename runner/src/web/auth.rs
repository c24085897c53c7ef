//! Who may use the listener, and how an action proves it came from the dashboard.
//!
//! - Without a token (loopback only, [`super::WebSettings::resolve`] makes sure), anyone who
//!   can reach the address may look and act.
//! - With a token, every request but the health checks carries it: `Authorization: Bearer
//!   TOKEN` (Prometheus, curl), or the session cookie the login form sets. The cookie holds a
//!   hash of the token, never the token.
//! - Actions are POSTs that carry the listener's CSRF token, a random value rendered into its
//!   forms: another site can make a browser send a POST, but cannot read the token. Cross-site
//!   requests (`Sec-Fetch-Site`) are refused outright, and `--read-only` refuses them all.

use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use axum::{Form, extract::Query};
use maud::html;
use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::AppState;
use super::pages::{PageError, layout_bare};

/// The session cookie's name.
const COOKIE: &str = "jobrunner_session";

/// The listener's secrets.
pub struct Auth {
    token: Option<String>,
    /// The cookie value that stands for the token.
    session: Option<String>,
    csrf: String,
}

impl Auth {
    /// The secrets of a listener that asks for `token`, if any, with a fresh CSRF token.
    pub fn new(token: Option<super::Token>) -> Self {
        let token = token.map(|token| token.expose().to_owned());
        let session = token.as_deref().map(session_for);
        Self {
            token,
            session,
            csrf: hex::encode(random_bytes()),
        }
    }

    /// The value forms carry in their `csrf` field.
    pub fn csrf(&self) -> &str {
        &self.csrf
    }

    /// Refuses a form that does not carry this listener's CSRF token.
    pub fn check_csrf(&self, given: &str) -> Result<(), PageError> {
        if same(given, &self.csrf) {
            Ok(())
        } else {
            Err(PageError::Forbidden(
                "the form's CSRF token is missing or stale: reload the page and try again".into(),
            ))
        }
    }

    fn admits(&self, headers: &HeaderMap) -> bool {
        let (Some(token), Some(session)) = (&self.token, &self.session) else {
            return true;
        };
        let bearer = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        if bearer.is_some_and(|given| same(given, token)) {
            return true;
        }
        cookie(headers, COOKIE).is_some_and(|given| same(given, session))
    }
}

/// Lets a request through if it carries the token (or none is configured); sends a browser
/// to the login form, anything else away with 401.
pub async fn require_token(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    if state.auth.admits(request.headers()) {
        return next.run(request).await;
    }
    let wants_html = request
        .headers()
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|accept| accept.contains("text/html"));
    if wants_html && request.method() == axum::http::Method::GET {
        let next = request.uri().path_and_query().map_or("/", |p| p.as_str());
        let target = format!("/login?next={}", urlencode(next));
        return Redirect::to(&target).into_response();
    }
    (
        StatusCode::UNAUTHORIZED,
        [(header::WWW_AUTHENTICATE, "Bearer")],
        "a token is required: Authorization: Bearer TOKEN\n",
    )
        .into_response()
}

/// Refuses every action of a read-only listener, and cross-site requests.
pub async fn actions_allowed(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    if state.read_only {
        return PageError::Forbidden("this dashboard is read-only".into()).into_response();
    }
    let site = request
        .headers()
        .get("sec-fetch-site")
        .and_then(|v| v.to_str().ok());
    if site.is_some_and(|site| site != "same-origin" && site != "none") {
        return PageError::Forbidden("cross-site requests may not change anything".into())
            .into_response();
    }
    next.run(request).await
}

/// Where the login form sends the browser afterwards.
#[derive(Deserialize)]
pub struct LoginQuery {
    next: Option<String>,
}

/// The login form.
pub async fn login_page(Query(query): Query<LoginQuery>) -> Response {
    login_form(query.next.as_deref(), None, StatusCode::OK)
}

/// The login form's fields.
#[derive(Deserialize)]
pub struct LoginForm {
    token: String,
    next: Option<String>,
}

/// Checks the token and sets the session cookie.
pub async fn login(State(state): State<AppState>, Form(form): Form<LoginForm>) -> Response {
    let (Some(token), Some(session)) = (&state.auth.token, &state.auth.session) else {
        return Redirect::to("/").into_response();
    };
    if !same(&form.token, token) {
        return login_form(
            form.next.as_deref(),
            Some("That is not the token."),
            StatusCode::UNAUTHORIZED,
        );
    }
    let cookie = format!("{COOKIE}={session}; Path=/; HttpOnly; SameSite=Strict");
    let next = local_path(form.next.as_deref());
    ([(header::SET_COOKIE, cookie)], Redirect::to(next)).into_response()
}

fn login_form(next: Option<&str>, error: Option<&str>, status: StatusCode) -> Response {
    let body = html! {
        h1 { "Sign in" }
        @if let Some(error) = error { p.error { (error) } }
        form method="post" action="/login" {
            input type="hidden" name="next" value=(local_path(next));
            label { "Token " input type="password" name="token" autofocus; }
            " " button type="submit" { "Sign in" }
        }
    };
    (status, layout_bare("Sign in", body)).into_response()
}

/// `next` if it is a path on this site, else `/`: the login form redirects nowhere else.
fn local_path(next: Option<&str>) -> &str {
    match next {
        Some(path) if path.starts_with('/') && !path.starts_with("//") && !path.contains('\\') => {
            path
        }
        _ => "/",
    }
}

fn session_for(token: &str) -> String {
    hex::encode(Sha256::digest(format!("jobrunner-session\0{token}")))
}

/// Compares secrets in time that does not depend on where they differ.
fn same(given: &str, expected: &str) -> bool {
    let (a, b) = (Sha256::digest(given), Sha256::digest(expected));
    a.iter()
        .zip(b.iter())
        .fold(0u8, |diff, (x, y)| diff | (x ^ y))
        == 0
}

fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value)
}

/// Random bytes from the TLS stack's secure source.
fn random_bytes() -> [u8; 32] {
    let mut bytes = [0u8; 32];
    // Deprecated only for lacking post-quantum key exchange (see sandbox::host::http::network).
    #[allow(deprecated)]
    let random = rustls::crypto::ring::default_provider().secure_random;
    random
        .fill(&mut bytes)
        .expect("the system's random source works");
    bytes
}

/// Percent-encodes everything but unreserved characters and `/`.
pub(super) fn urlencode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'/' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_login_form_redirects_only_to_local_paths() {
        assert_eq!(local_path(Some("/jobs?state=failed")), "/jobs?state=failed");
        for elsewhere in ["//evil.test/", "https://evil.test/", "/\\evil.test", "jobs"] {
            assert_eq!(local_path(Some(elsewhere)), "/", "{elsewhere}");
        }
    }

    #[test]
    fn a_token_or_its_session_cookie_admits_a_request() {
        let auth = Auth::new(Some("0123456789abcdef-token".parse().unwrap()));
        let mut headers = HeaderMap::new();
        assert!(!auth.admits(&headers));
        headers.insert(header::AUTHORIZATION, "Bearer wrong".parse().unwrap());
        assert!(!auth.admits(&headers));
        headers.insert(
            header::AUTHORIZATION,
            "Bearer 0123456789abcdef-token".parse().unwrap(),
        );
        assert!(auth.admits(&headers));
        let mut headers = HeaderMap::new();
        let cookie = format!("a=b; {COOKIE}={}", session_for("0123456789abcdef-token"));
        headers.insert(header::COOKIE, cookie.parse().unwrap());
        assert!(auth.admits(&headers));
        assert!(Auth::new(None).admits(&HeaderMap::new()));
    }
}
