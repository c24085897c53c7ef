//! `runner dashboard`: the health checks, metrics and dashboard of `runner run --http`, served
//! alone, without running jobs (for a host that only watches).

use std::process::ExitCode;

use tokio_util::sync::CancellationToken;

use super::database::Database;
use super::run::Signals;
use crate::config::{ConfigError, FileConfig};
use crate::web::{EXAMPLE_ADDR, Readiness, WebConfig, WebServer, WebSettings};

/// Flags of `runner dashboard`.
#[derive(Debug, clap::Args)]
pub struct DashboardArgs {
    #[command(flatten)]
    web: WebSettings,
}

/// What `runner dashboard` serves, checked.
#[derive(Debug)]
pub struct Dashboard {
    web: WebConfig,
    default_max_attempts: u32,
}

impl DashboardArgs {
    /// These flags over the config file's `[web]` table; the address defaults to
    /// [`EXAMPLE_ADDR`].
    pub fn resolve(self, file: &FileConfig) -> Result<Dashboard, ConfigError> {
        let mut web = self.web.or(&file.web);
        web.http = web.http.or_else(|| EXAMPLE_ADDR.parse().ok());
        Ok(Dashboard {
            web: web.resolve()?.expect("an address is set"),
            default_max_attempts: file.worker.retry_policy()?.max_attempts,
        })
    }
}

/// Serves until SIGINT or SIGTERM.
pub async fn dashboard(db: &Database, dashboard: Dashboard) -> anyhow::Result<ExitCode> {
    let mut signals = Signals::new()?;
    db.queue().migrate().await?;
    let stop = CancellationToken::new();
    let server = WebServer::start(
        dashboard.web,
        db.queue(),
        Readiness::dashboard(),
        dashboard.default_max_attempts,
        stop.clone(),
    )
    .await?;
    println!("dashboard: http://{}/", server.addr);
    let signal = signals.next().await;
    tracing::info!(signal, "signal received; stopping the dashboard");
    stop.cancel();
    server.stopped().await;
    Ok(ExitCode::SUCCESS)
}
