//! The runner's HTTP listener: health checks (`/healthz`, `/readyz`), Prometheus metrics
//! (`/metrics`) and the dashboard (`/`, `/jobs`, `/types`, `/plugins`, `/tenants`,
//! `/schedules`), one
//! axum router on one address. `runner run --http ADDR` serves it beside a worker; `runner
//! dashboard --http ADDR` serves it alone, for a host that only watches.
//!
//! Everything the pages show is read from the database, so every listener shows the whole
//! cluster. It binds to loopback unless a token is configured; see [`auth`].

mod auth;
mod exporter;
mod health;
mod pages;
mod sampler;

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use axum::Router;
use axum::routing::{get, post};
use serde::Deserialize;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::Queue;
use crate::config::ConfigError;
pub use health::Readiness;
use sampler::Sampler;

/// The address the docs and errors suggest.
pub const EXAMPLE_ADDR: &str = "127.0.0.1:9187";

/// The token of a listener: never shown, in errors or debug output.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Token(String);

impl Token {
    /// The token itself.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("[redacted]")
    }
}

impl std::str::FromStr for Token {
    type Err = std::convert::Infallible;

    fn from_str(token: &str) -> Result<Self, Self::Err> {
        Ok(Token(token.to_owned()))
    }
}

/// The `[web]` table of the config file, and the flags over it.
#[derive(Debug, Clone, Default, Deserialize, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct WebSettings {
    /// Serve health checks, metrics and the dashboard on this address (e.g. 127.0.0.1:9187);
    /// off unless given
    #[arg(long = "http", value_name = "ADDR")]
    #[serde(default)]
    pub http: Option<SocketAddr>,
    /// The token the dashboard and /metrics ask for (`Authorization: Bearer`, or the login
    /// form); required to bind to an address other than loopback
    #[arg(
        long = "web-token",
        env = "JOBRUNNER_WEB_TOKEN",
        hide_env_values = true
    )]
    #[serde(default)]
    pub token: Option<Token>,
    /// Show the dashboard without any action (retry, cancel, delete, pause): every
    /// state-changing request is refused
    #[arg(long = "read-only")]
    #[serde(default)]
    pub read_only: bool,
}

impl WebSettings {
    /// These flags over the config file's `[web]` table.
    pub fn or(self, file: &WebSettings) -> WebSettings {
        WebSettings {
            http: self.http.or(file.http),
            token: self.token.or_else(|| file.token.clone()),
            read_only: self.read_only || file.read_only,
        }
    }

    /// The listener to start, if one is asked for: checked.
    pub fn resolve(self) -> Result<Option<WebConfig>, ConfigError> {
        let Some(listen) = self.http else {
            return Ok(None);
        };
        let invalid = |reason: String| ConfigError::Invalid { key: "web", reason };
        let token = match self.token {
            Some(token) if token.expose().chars().count() < 16 => {
                return Err(invalid(
                    "the web token must be at least 16 characters long".into(),
                ));
            }
            token => token,
        };
        if !listen.ip().is_loopback() && token.is_none() {
            return Err(invalid(format!(
                "refusing to serve the dashboard on {listen} without a token: bind to a loopback \
                 address (e.g. {EXAMPLE_ADDR}), or set one with --web-token or \
                 JOBRUNNER_WEB_TOKEN"
            )));
        }
        Ok(Some(WebConfig {
            listen,
            token,
            read_only: self.read_only,
        }))
    }
}

/// A checked listener configuration.
#[derive(Debug, Clone)]
pub struct WebConfig {
    /// Where to listen.
    pub listen: SocketAddr,
    /// The token every request but the health checks must carry, if any.
    pub token: Option<Token>,
    /// Refuse and hide every action.
    pub read_only: bool,
}

/// What every handler reads.
#[derive(Clone)]
struct AppState {
    queue: Queue,
    auth: Arc<auth::Auth>,
    read_only: bool,
    readiness: Arc<Readiness>,
    sampler: Arc<Sampler>,
    /// The attempt limit of jobs that set none, for retries.
    default_max_attempts: u32,
}

/// A running listener.
pub struct WebServer {
    /// The address it listens on (the port the OS chose, if it was 0).
    pub addr: SocketAddr,
    task: JoinHandle<()>,
    _sampling: tokio_util::task::AbortOnDropHandle<()>,
}

impl WebServer {
    /// Binds `config.listen` and serves until `shutdown` fires.
    pub async fn start(
        config: WebConfig,
        queue: Queue,
        readiness: Arc<Readiness>,
        default_max_attempts: u32,
        shutdown: CancellationToken,
    ) -> anyhow::Result<WebServer> {
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("cannot listen on {}", config.listen))?;
        let addr = listener.local_addr()?;
        exporter::install();
        let sampler = Arc::new(Sampler::new(queue.clone()));
        let state = AppState {
            auth: Arc::new(auth::Auth::new(config.token)),
            read_only: config.read_only,
            readiness,
            sampler: Arc::clone(&sampler),
            queue,
            default_max_attempts,
        };
        let app = router(state);
        let task = tokio::spawn(async move {
            let served = axum::serve(listener, app)
                .with_graceful_shutdown(shutdown.cancelled_owned())
                .await;
            if let Err(error) = served {
                tracing::error!(%error, "the web listener failed");
            }
        });
        tracing::info!(url = %format!("http://{addr}/"), read_only = config.read_only,
                       "dashboard, /metrics and health checks listening");
        Ok(WebServer {
            addr,
            task,
            _sampling: sampler.start(),
        })
    }

    /// Waits until the listener has stopped (after its shutdown token fired).
    pub async fn stopped(self) {
        let _ = self.task.await;
    }
}

fn router(state: AppState) -> Router {
    let actions = Router::new()
        .route("/jobs/bulk", post(pages::jobs::bulk))
        .route("/jobs/{id}/{action}", post(pages::job::act))
        .route(
            "/schedules/{tenant}/{name}/{action}",
            post(pages::schedules::act),
        )
        .route("/types/{job_type}/{action}", post(pages::types::act))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::actions_allowed,
        ));
    let protected = Router::new()
        .route("/", get(pages::overview::page))
        .route("/jobs", get(pages::jobs::page))
        .route("/jobs/{id}", get(pages::job::page))
        .route("/types", get(pages::types::page))
        .route("/plugins", get(pages::plugins::page))
        .route("/tenants", get(pages::tenants::page))
        .route("/schedules", get(pages::schedules::page))
        .route("/metrics", get(exporter::metrics))
        .merge(actions)
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::require_token,
        ));
    Router::new()
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/login", get(auth::login_page).post(auth::login))
        .route("/assets/style.css", get(pages::style))
        .merge(protected)
        .fallback(pages::not_found)
        .with_state(state)
}
