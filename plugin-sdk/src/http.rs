//! Outgoing HTTP from a handler, through the runner's `wasi:http` (HTTP/1.1, TLS by the
//! host). The runner refuses every request unless the plugin's manifest grants its host:
//!
//! ```toml
//! # <job-type>.toml, beside <job-type>.wasm
//! [http]
//! allowed_hosts = ["https://api.example.com"]
//! ```
//!
//! The blocking helpers here ([`get`], [`post_json`], [`send`]) suit a handler, which is a
//! plain function; they read the whole response body (the runner caps it, 16 MiB by default)
//! and report a refusal with its `wasi:http` code ([`HttpError::is_refused`]). For streaming
//! or concurrent requests, use the async client of [`wstd`] (re-exported) with
//! [`wstd::runtime::block_on`]; it reports a refused request that has a body as a failed
//! write, without the code.
//!
//! ```no_run
//! use jobrunner_plugin_sdk::{handler, http, Job, JobError};
//!
//! handler!(ping);
//!
//! fn ping(job: Job<String>) -> Result<u16, JobError> {
//!     match http::get(&job.payload) {
//!         Ok(reply) if reply.status >= 500 => Err(JobError::retry(format!("server error {}", reply.status))),
//!         Ok(reply) => Ok(reply.status),
//!         Err(error) if error.is_refused() => Err(JobError::fail(error)),
//!         Err(error) => Err(JobError::retry(error)),
//!     }
//! }
//! ```
//!
//! The runner does not follow redirects: a 3xx reply comes back as it is.

use std::fmt;

use serde::Serialize;

use crate::JobError;
pub use wstd;
pub use wstd::http::{HeaderMap, Method, Request};

/// Why a request failed, as `wasi:http` says it.
pub use crate::bindings::wasi::http::types::ErrorCode;
use crate::bindings::wasi::http::{outgoing_handler, types};
use crate::bindings::wasi::io::streams;

/// A response, its body read whole.
#[derive(Debug, Clone)]
pub struct Reply {
    /// The status code.
    pub status: u16,
    /// The response headers.
    pub headers: HeaderMap,
    /// The body.
    pub body: Vec<u8>,
}

impl Reply {
    /// Whether the status is 2xx.
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// The body as text (invalid UTF-8 replaced).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body parsed as JSON.
    pub fn json<T: serde::de::DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        serde_json::from_slice(&self.body)
    }

    /// The reply if its status is 2xx; else what a job calling an API usually makes of it: a
    /// 429 or 5xx retries the job (after the reply's `Retry-After`, if it has one), any other
    /// status fails it, with the status and the start of the body. `api` names the service in
    /// the message (`"GitHub answered 404: {...}"`).
    pub fn or_job_error(self, api: &str) -> Result<Reply, JobError> {
        match self.status {
            200..=299 => Ok(self),
            429 | 500..=599 => {
                if let Some(delay) = self.retry_after() {
                    crate::jobs::retry_after(delay);
                }
                Err(JobError::retry(format!("{api} answered {}", self.status)))
            }
            status => {
                let text: String = self.text().chars().take(300).collect();
                Err(JobError::fail(format!("{api} answered {status}: {text}")))
            }
        }
    }

    /// The `Retry-After` header in its seconds form (what GitHub and Slack send with a 429 or
    /// 503), for [`jobs::retry_after`](crate::jobs::retry_after).
    pub fn retry_after(&self) -> Option<std::time::Duration> {
        let seconds = self.headers.get("retry-after")?.to_str().ok()?;
        seconds
            .trim()
            .parse()
            .ok()
            .map(std::time::Duration::from_secs)
    }
}

/// A request that got no response: refused by the runner, or failed on the way.
#[derive(Debug)]
pub struct HttpError {
    code: Option<ErrorCode>,
    message: String,
}

impl HttpError {
    /// The `wasi:http` error code, if the failure has one.
    pub fn code(&self) -> Option<&ErrorCode> {
        self.code.as_ref()
    }

    /// Whether the runner refused the request by policy (the host is not granted, or its
    /// address is in a blocked network): retrying cannot help.
    pub fn is_refused(&self) -> bool {
        matches!(
            self.code,
            Some(ErrorCode::HttpRequestDenied | ErrorCode::DestinationIpProhibited)
        )
    }

    /// What a job usually makes of a request without a response: a refusal fails it
    /// (retrying cannot help), any other failure retries it. `api` names the service.
    pub fn into_job_error(self, api: &str) -> JobError {
        if self.is_refused() {
            JobError::fail(self)
        } else {
            JobError::retry(format!("{api} did not answer: {self}"))
        }
    }
}

impl fmt::Display for HttpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for HttpError {}

impl From<ErrorCode> for HttpError {
    fn from(code: ErrorCode) -> Self {
        let message = match &code {
            ErrorCode::HttpRequestDenied => {
                "request denied: the host is not granted to this plugin".to_owned()
            }
            ErrorCode::DestinationIpProhibited => {
                "request denied: the host's address is in a network the runner blocks".to_owned()
            }
            ErrorCode::InternalError(Some(message)) => format!("http error: {message}"),
            code => format!("http error: {code:?}"),
        };
        Self {
            code: Some(code),
            message,
        }
    }
}

/// Sends `request` and reads the whole response.
pub fn send(request: Request<Vec<u8>>) -> Result<Reply, HttpError> {
    let (parts, body) = request.into_parts();
    let mut headers: Vec<(String, Vec<u8>)> = parts
        .headers
        .iter()
        .map(|(name, value)| (name.as_str().to_owned(), value.as_bytes().to_vec()))
        .collect();
    if !body.is_empty() && !parts.headers.contains_key("content-length") {
        // Without it the request goes out chunked, which some servers cannot read.
        headers.push((
            "content-length".to_owned(),
            body.len().to_string().into_bytes(),
        ));
    }
    let fields = types::Fields::from_list(&headers).map_err(|e| invalid(format!("{e:?}")))?;
    let outgoing = types::OutgoingRequest::new(fields);
    set_target(&outgoing, &parts.method, &parts.uri)?;
    // Without a body the request goes out as one write, with no body framing at all.
    let outgoing_body = (!body.is_empty()).then(|| outgoing.body().expect("a new request's body"));
    let pending = outgoing_handler::handle(outgoing, None)?;
    // A refused request fails its body's stream too: its response says why, so it is
    // awaited whatever the write did.
    let written = outgoing_body.map_or(Ok(()), |outgoing_body| write_body(outgoing_body, &body));
    let response = loop {
        match pending.get() {
            Some(response) => break response.expect("a response is taken once")?,
            None => pending.subscribe().block(),
        }
    };
    written?;
    read_reply(response)
}

fn set_target(
    request: &types::OutgoingRequest,
    method: &Method,
    uri: &wstd::http::Uri,
) -> Result<(), HttpError> {
    let method = match method.as_str() {
        "GET" => types::Method::Get,
        "HEAD" => types::Method::Head,
        "POST" => types::Method::Post,
        "PUT" => types::Method::Put,
        "DELETE" => types::Method::Delete,
        "OPTIONS" => types::Method::Options,
        "PATCH" => types::Method::Patch,
        other => types::Method::Other(other.to_owned()),
    };
    let scheme = match uri.scheme_str() {
        Some("http") => types::Scheme::Http,
        Some("https") => types::Scheme::Https,
        _ => return Err(invalid("the URL must start with http:// or https://")),
    };
    let authority = uri
        .authority()
        .ok_or_else(|| invalid("the URL has no host"))?;
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let refused = |what: &str| invalid(format!("the {what} cannot be sent"));
    request
        .set_method(&method)
        .map_err(|()| refused("method"))?;
    request
        .set_scheme(Some(&scheme))
        .map_err(|()| refused("scheme"))?;
    request
        .set_authority(Some(authority.as_str()))
        .map_err(|()| refused("host"))?;
    request
        .set_path_with_query(Some(path))
        .map_err(|()| refused("path"))
}

fn write_body(body: types::OutgoingBody, bytes: &[u8]) -> Result<(), HttpError> {
    let stream = body.write().expect("a new body's stream");
    for chunk in bytes.chunks(4096) {
        stream
            .blocking_write_and_flush(chunk)
            .map_err(stream_error)?;
    }
    drop(stream);
    types::OutgoingBody::finish(body, None)?;
    Ok(())
}

fn read_reply(response: types::IncomingResponse) -> Result<Reply, HttpError> {
    let mut headers = HeaderMap::new();
    for (name, value) in response.headers().entries() {
        if let (Ok(name), Ok(value)) = (
            wstd::http::HeaderName::from_bytes(name.as_bytes()),
            wstd::http::HeaderValue::from_bytes(&value),
        ) {
            headers.append(name, value);
        }
    }
    let status = response.status();
    let incoming = response.consume().expect("a response's body is taken once");
    let stream = incoming.stream().expect("a body's stream is taken once");
    let mut body = Vec::new();
    loop {
        match stream.blocking_read(64 << 10) {
            Ok(chunk) => body.extend_from_slice(&chunk),
            Err(streams::StreamError::Closed) => break,
            Err(error) => return Err(stream_error(error)),
        }
    }
    Ok(Reply {
        status,
        headers,
        body,
    })
}

/// A stream's failure, as the request's error code where the host gives one.
fn stream_error(error: streams::StreamError) -> HttpError {
    match error {
        streams::StreamError::LastOperationFailed(error) => match types::http_error_code(&error) {
            Some(code) => code.into(),
            // A failure while the body streams (its cap, the idle timeout) has no code in
            // wasi:http 0.2 as wasmtime serves it; its text says which.
            None => HttpError {
                code: None,
                message: format!(
                    "http error: {}",
                    error.to_debug_string().lines().next().unwrap_or("")
                ),
            },
        },
        streams::StreamError::Closed => HttpError {
            code: None,
            message: "http error: the connection closed".to_owned(),
        },
    }
}

/// `GET url`.
pub fn get(url: &str) -> Result<Reply, HttpError> {
    send(Request::get(url).body(Vec::new()).map_err(invalid)?)
}

/// `POST url` with `body` as JSON.
pub fn post_json<T: Serialize>(url: &str, body: &T) -> Result<Reply, HttpError> {
    let json = serde_json::to_vec(body).map_err(invalid)?;
    let request = Request::post(url)
        .header("content-type", "application/json")
        .body(json)
        .map_err(invalid)?;
    send(request)
}

fn invalid(error: impl fmt::Display) -> HttpError {
    HttpError {
        code: None,
        message: format!("invalid request: {error}"),
    }
}
