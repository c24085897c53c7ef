//! `/healthz` (the process answers) and `/readyz` (it can do its work: the database answers,
//! the plugin directory is loaded, it is not shutting down), for systemd and Kubernetes probes.
//! Neither asks for the token: a probe has none.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;

use super::AppState;

/// How long `/readyz` waits for the database.
const DATABASE_PATIENCE: Duration = Duration::from_secs(2);

/// What `/readyz` reports besides the database, set by the process it serves.
#[derive(Debug)]
pub struct Readiness {
    /// Whether this process runs jobs, and so must have loaded its plugins to be ready.
    runs_jobs: bool,
    plugins_loaded: AtomicBool,
    shutting_down: AtomicBool,
}

impl Readiness {
    /// The readiness of a runner, not ready until [`Readiness::plugins_loaded`].
    pub fn runner() -> Arc<Self> {
        Arc::new(Self {
            runs_jobs: true,
            plugins_loaded: AtomicBool::new(false),
            shutting_down: AtomicBool::new(false),
        })
    }

    /// The readiness of `runner dashboard`, which loads no plugins.
    pub fn dashboard() -> Arc<Self> {
        Arc::new(Self {
            runs_jobs: false,
            plugins_loaded: AtomicBool::new(true),
            shutting_down: AtomicBool::new(false),
        })
    }

    /// The plugin directory is loaded.
    pub fn plugins_loaded(&self) {
        self.plugins_loaded.store(true, Ordering::Relaxed);
    }

    /// Shutdown began: not ready any more.
    pub fn shutting_down(&self) {
        self.shutting_down.store(true, Ordering::Relaxed);
    }

    /// Why the process is not ready, if it is not (the database aside).
    fn problem(&self) -> Option<&'static str> {
        if self.shutting_down.load(Ordering::Relaxed) {
            Some("shutting down")
        } else if self.runs_jobs && !self.plugins_loaded.load(Ordering::Relaxed) {
            Some("the plugin directory is not loaded yet")
        } else {
            None
        }
    }
}

/// 200 while the process answers.
pub async fn healthz() -> &'static str {
    "ok\n"
}

/// 200 when ready; 503 with the reason otherwise.
pub async fn readyz(State(state): State<AppState>) -> (StatusCode, String) {
    if let Some(problem) = state.readiness.problem() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {problem}\n"),
        );
    }
    let ping = sqlx::query("SELECT 1").execute(state.queue.db());
    match tokio::time::timeout(DATABASE_PATIENCE, ping).await {
        Ok(Ok(_)) => (StatusCode::OK, "ready\n".into()),
        Ok(Err(error)) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: the database does not answer: {error}\n"),
        ),
        Err(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: the database did not answer within {DATABASE_PATIENCE:?}\n"),
        ),
    }
}
