//! Local stand-ins for the two APIs of the pull-request reminder, with the request and response
//! shapes of the real ones, for the demo and the tests (which never reach the real GitHub or
//! Slack): the GitHub REST API's open pull requests (`GET /repos/{owner}/{repo}/pulls`, bearer
//! token, `Link` pagination) and a Slack incoming webhook (`POST {"text": …}`, `ok`). Each
//! listens on a loopback address and records what it received.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use anyhow::Context;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, StatusCode};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use super::local_server::{Answer, serve};

/// One request as a fake API received it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    /// Method and path with query.
    pub request_line: String,
    /// The `Authorization` header, if any.
    pub authorization: Option<String>,
    /// The body, as text.
    pub body: String,
    /// The status it was answered with.
    pub status: u16,
}

/// A pull request the fake GitHub lists.
#[derive(Debug, Clone)]
pub struct FakePull {
    /// Its title.
    pub title: String,
    /// When it was opened.
    pub created_at: DateTime<Utc>,
    /// The logins asked to review it.
    pub reviewers: Vec<String>,
}

#[derive(Default)]
struct State {
    received: Vec<Received>,
    /// Responses still to fail, with this status and `Retry-After` seconds.
    failures: Vec<(u16, Option<u64>)>,
}

/// A loopback server answering with `answer`, recording every request.
struct FakeServer {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    task: JoinHandle<()>,
}

impl Drop for FakeServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

type Respond = Arc<dyn Fn(&Received, &str) -> Answer + Send + Sync>;

impl FakeServer {
    async fn start(ip: &str, respond: Respond) -> anyhow::Result<Self> {
        let listener = TcpListener::bind((ip, 0))
            .await
            .with_context(|| format!("a fake API binds {ip}"))?;
        let addr = listener.local_addr()?;
        let state = Arc::new(Mutex::new(State::default()));
        let shared = Arc::clone(&state);
        let origin = format!("http://{addr}");
        let task = tokio::spawn(serve(listener, move |request| {
            let (state, respond, origin) =
                (Arc::clone(&shared), Arc::clone(&respond), origin.clone());
            async move {
                let mut received = read(request).await;
                let failure = {
                    let mut state = lock(&state);
                    (!state.failures.is_empty()).then(|| state.failures.remove(0))
                };
                let answer = match failure {
                    Some((status, retry_after)) => failed(status, retry_after),
                    None => respond(&received, &origin),
                };
                received.status = answer.status().as_u16();
                lock(&state).received.push(received);
                answer
            }
        }));
        Ok(Self { addr, state, task })
    }

    fn received(&self) -> Vec<Received> {
        lock(&self.state).received.clone()
    }

    fn fail_next(&self, times: usize, status: u16, retry_after: Option<u64>) {
        lock(&self.state)
            .failures
            .extend(std::iter::repeat_n((status, retry_after), times));
    }
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

async fn read(request: Request<Incoming>) -> Received {
    let request_line = format!("{} {}", request.method(), request.uri());
    let authorization = request
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body = match request.into_body().collect().await {
        Ok(body) => String::from_utf8_lossy(&body.to_bytes()).into_owned(),
        Err(_) => String::new(),
    };
    Received {
        request_line,
        authorization,
        body,
        status: 0,
    }
}

fn reply(status: u16, content_type: &str, body: String) -> Answer {
    hyper::Response::builder()
        .status(status)
        .header("content-type", content_type)
        .body(Full::new(Bytes::from(body)))
        .expect("a valid response")
}

fn failed(status: u16, retry_after: Option<u64>) -> Answer {
    let mut answer = reply(status, "text/plain", "unavailable".into());
    if let Some(seconds) = retry_after {
        answer
            .headers_mut()
            .insert("retry-after", seconds.to_string().parse().expect("digits"));
    }
    answer
}

/// A fake GitHub REST API serving the open pull requests of some repositories to requests
/// that carry its token.
pub struct FakeGitHub {
    server: FakeServer,
}

/// Pull requests per page unless the request asks for another `per_page` (GitHub's default).
const PER_PAGE: usize = 30;

impl FakeGitHub {
    /// Serves `repos` (`owner/repo` → its open pull requests) on `ip` to bearer `token`.
    pub async fn start(
        ip: &str,
        token: &str,
        repos: BTreeMap<String, Vec<FakePull>>,
    ) -> anyhow::Result<Self> {
        let token = format!("Bearer {token}");
        let respond: Respond = Arc::new(move |received, origin| {
            if received.authorization.as_deref() != Some(token.as_str()) {
                let message = json!({"message": "Bad credentials", "status": "401"});
                return reply(401, "application/json", message.to_string());
            }
            pulls_page(&repos, received, origin)
        });
        Ok(Self {
            server: FakeServer::start(ip, respond).await?,
        })
    }

    /// Where it listens: `http://ip:port`, the value of `github_api`.
    pub fn origin(&self) -> String {
        format!("http://{}", self.server.addr)
    }

    /// Every request it received.
    pub fn received(&self) -> Vec<Received> {
        self.server.received()
    }

    /// Answers the next `times` requests with `status` (and `Retry-After`) instead.
    pub fn fail_next(&self, times: usize, status: u16, retry_after: Option<u64>) {
        self.server.fail_next(times, status, retry_after);
    }
}

/// One page of `GET /repos/{owner}/{repo}/pulls?state=open&per_page=N&page=P`, with a `Link`
/// to the next page as GitHub sends it.
fn pulls_page(
    repos: &BTreeMap<String, Vec<FakePull>>,
    received: &Received,
    origin: &str,
) -> Answer {
    let uri: hyper::Uri = received
        .request_line
        .split_once(' ')
        .and_then(|(_, uri)| uri.parse().ok())
        .unwrap_or_default();
    let query: BTreeMap<&str, &str> = uri
        .query()
        .unwrap_or_default()
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .collect();
    let repo = uri
        .path()
        .strip_prefix("/repos/")
        .and_then(|rest| rest.strip_suffix("/pulls"));
    let (Some(repo), Some(pulls)) = (repo, repo.and_then(|r| repos.get(r))) else {
        let message = json!({"message": "Not Found", "status": "404"});
        return reply(404, "application/json", message.to_string());
    };
    let per_page = query
        .get("per_page")
        .and_then(|n| n.parse().ok())
        .unwrap_or(PER_PAGE)
        .clamp(1, 100);
    let page: usize = query
        .get("page")
        .and_then(|n| n.parse().ok())
        .unwrap_or(1)
        .max(1);
    let numbered = pulls
        .iter()
        .enumerate()
        .skip((page - 1) * per_page)
        .take(per_page);
    let body: Vec<Value> = numbered
        .map(|(i, pull)| {
            let number = i + 1;
            json!({
                "number": number,
                "state": "open",
                "title": pull.title,
                "html_url": format!("https://github.com/{repo}/pull/{number}"),
                "created_at": pull.created_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                "user": {"login": "author"},
                "requested_reviewers": pull.reviewers.iter().map(|login| json!({"login": login})).collect::<Vec<_>>(),
                "requested_teams": [],
            })
        })
        .collect();
    let mut answer = reply(200, "application/json", Value::from(body).to_string());
    if page * per_page < pulls.len() {
        let next = format!(
            "<{origin}/repos/{repo}/pulls?state=open&per_page={per_page}&page={}>; rel=\"next\"",
            page + 1
        );
        answer
            .headers_mut()
            .insert("link", next.parse().expect("a valid header"));
    }
    answer
}

/// A fake Slack incoming webhook: `POST {"text": …}` to its secret path, answered `ok`.
pub struct FakeSlack {
    server: FakeServer,
}

/// The secret part of the fake webhook's URL, shaped like Slack's.
const WEBHOOK_PATH: &str = "/services/T0DEMO000/B0DEMO000/xoxdemowebhooksecret24ch";

impl FakeSlack {
    /// Listens on `ip`.
    pub async fn start(ip: &str) -> anyhow::Result<Self> {
        let respond: Respond = Arc::new(|received, _origin| {
            let is_message = received.request_line == format!("POST {WEBHOOK_PATH}")
                && serde_json::from_str::<Value>(&received.body)
                    .is_ok_and(|body| body["text"].is_string());
            match is_message {
                true => reply(200, "text/plain", "ok".into()),
                false if received.request_line.starts_with("POST /services/") => reply(
                    StatusCode::BAD_REQUEST.as_u16(),
                    "text/plain",
                    "invalid_payload".into(),
                ),
                false => reply(404, "text/plain", "no_service".into()),
            }
        });
        Ok(Self {
            server: FakeServer::start(ip, respond).await?,
        })
    }

    /// Where it listens: `http://ip:port`.
    pub fn origin(&self) -> String {
        format!("http://{}", self.server.addr)
    }

    /// The webhook's URL: the secret `slack_webhook`.
    pub fn webhook_url(&self) -> String {
        format!("{}{WEBHOOK_PATH}", self.origin())
    }

    /// The `text` of every message it accepted, in order.
    pub fn messages(&self) -> Vec<String> {
        self.received()
            .iter()
            .filter(|r| r.status == 200)
            .filter_map(|r| serde_json::from_str::<Value>(&r.body).ok())
            .filter_map(|body| body["text"].as_str().map(str::to_owned))
            .collect()
    }

    /// Every request it received (those it failed on purpose too).
    pub fn received(&self) -> Vec<Received> {
        self.server.received()
    }

    /// Answers the next `times` requests with `status` (and `Retry-After`) instead.
    pub fn fail_next(&self, times: usize, status: u16, retry_after: Option<u64>) {
        self.server.fail_next(times, status, retry_after);
    }
}
