//! `runner run`: load the plugin directory and work the queue until a signal.

use std::path::PathBuf;
use std::process::ExitCode;

use std::sync::Arc;

use anyhow::Context;
use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;

use super::database::Database;
use crate::config::{ConfigError, FileConfig, SandboxSettings, WorkerSettings};
use crate::runner::{RunConfig, Runner};
use crate::sandbox::Sandbox;
use crate::web::{Readiness, WebServer, WebSettings};

/// Flags of `runner run` (and `runner demo`).
#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// The plugin directory: one `<job-type>.wasm` component per job type [default: plugins]
    #[arg(long, env = "JOBRUNNER_PLUGINS")]
    pub plugins: Option<PathBuf>,
    /// Where compiled plugins are cached [default: .jobrunner-cache inside the plugin
    /// directory]
    #[arg(long, env = "JOBRUNNER_PLUGIN_CACHE")]
    pub plugin_cache: Option<PathBuf>,
    #[command(flatten)]
    pub worker: WorkerSettings,
    #[command(flatten)]
    pub sandbox: SandboxSettings,
    #[command(flatten)]
    pub web: WebSettings,
}

impl RunArgs {
    /// These flags over the config file over the defaults, checked.
    pub fn resolve(self, file: &FileConfig) -> Result<RunConfig, ConfigError> {
        let (sandbox, limits) = file.sandbox(self.sandbox)?;
        let plugins = self
            .plugins
            .or(file.plugins.clone())
            .unwrap_or_else(|| "plugins".into());
        Ok(RunConfig {
            tenants: file.tenants(&sandbox)?,
            secrets: file.secrets()?,
            plugin_cache: self
                .plugin_cache
                .or(file.plugin_cache.clone())
                .unwrap_or_else(|| plugins.join(".jobrunner-cache")),
            plugins,
            worker: self.worker.or(file.worker.clone()).resolve()?,
            web: self.web.or(&file.web).resolve()?,
            sandbox,
            limits,
        })
    }
}

/// Runs a runner until SIGINT/SIGTERM and shuts it down gracefully. A second signal exits at
/// once; unfinished jobs then come back when their leases expire. SIGHUP reads the secrets of
/// `config_file` again.
pub async fn run(
    db: &Database,
    config: RunConfig,
    config_file: Option<PathBuf>,
) -> anyhow::Result<ExitCode> {
    let mut signals = Signals::new()?;
    let readiness = Readiness::runner();
    // Before the plugins load, so that probes see "not ready" rather than nothing.
    let web = Listener::start(&config, db.queue(), &readiness).await?;
    let runner = Runner::builder(config).queue(db.queue()).build().await?;
    readiness.plugins_loaded();
    let _reloading = config_file
        .map(|file| reload_secrets_on_hangup(runner.sandbox(), file))
        .transpose()?;
    let shutdown = CancellationToken::new();
    let mut running = std::pin::pin!(runner.run(shutdown.clone()));
    tokio::select! {
        result = &mut running => return web.after(result).await,
        signal = signals.next() => {
            tracing::info!(signal, "signal received (signal again to exit at once)");
            readiness.shutting_down();
            shutdown.cancel();
        }
    }
    tokio::select! {
        result = running => web.after(result).await,
        signal = signals.next() => {
            tracing::warn!(signal, "exiting at once; unfinished jobs run again when their \
                                    leases expire");
            db.stop_private_now();
            std::process::exit(130)
        }
    }
}

/// The web listener of `runner run`, if it has one: it serves until the runner has stopped.
pub(super) struct Listener {
    server: Option<WebServer>,
    stop: CancellationToken,
}

impl Listener {
    /// Starts the listener `config` asks for, if any.
    pub async fn start(
        config: &RunConfig,
        queue: crate::Queue,
        readiness: &Arc<Readiness>,
    ) -> anyhow::Result<Self> {
        let stop = CancellationToken::new();
        let server = match &config.web {
            Some(web) => {
                // Migrated first, so that pages and samples have a schema to read while the
                // plugins load (the runner's build migrates again: a no-op by then).
                queue.migrate().await?;
                let retries = config.worker.retry.max_attempts;
                let readiness = Arc::clone(readiness);
                let server = WebServer::start(web.clone(), queue, readiness, retries, stop.clone());
                Some(server.await?)
            }
            None => None,
        };
        Ok(Self { server, stop })
    }

    /// The dashboard's URL, if there is a listener.
    pub fn url(&self) -> Option<String> {
        self.server.as_ref().map(|s| format!("http://{}/", s.addr))
    }

    /// Stops the listener once the runner ended with `result`.
    pub async fn after(self, result: anyhow::Result<()>) -> anyhow::Result<ExitCode> {
        self.stop().await;
        result.map(|()| ExitCode::SUCCESS)
    }

    /// Stops the listener and waits until it has.
    pub async fn stop(self) {
        self.stop.cancel();
        if let Some(server) = self.server {
            server.stopped().await;
        }
    }
}

/// Reads the secrets of `file` again at every SIGHUP: attempts that start afterwards get the
/// new values. A file or value that cannot be read keeps the old ones, and says why.
fn reload_secrets_on_hangup(
    sandbox: Arc<Sandbox>,
    file: PathBuf,
) -> anyhow::Result<AbortOnDropHandle<()>> {
    let mut hangups = signal(SignalKind::hangup()).context("cannot catch SIGHUP")?;
    Ok(AbortOnDropHandle::new(tokio::spawn(async move {
        while hangups.recv().await.is_some() {
            match FileConfig::load(&file).and_then(|config| config.secrets()) {
                Ok(secrets) => {
                    tracing::info!(values = secrets.len(), "SIGHUP: secrets read again");
                    sandbox.set_secrets(secrets);
                }
                Err(error) => tracing::error!(
                    %error,
                    "SIGHUP: cannot read the secrets again; keeping the ones read before"
                ),
            }
        }
    })))
}

/// SIGINT and SIGTERM, whichever comes first.
pub(super) struct Signals {
    interrupt: Signal,
    terminate: Signal,
}

impl Signals {
    /// Starts catching both signals (from now on they no longer kill the process).
    pub fn new() -> anyhow::Result<Self> {
        Ok(Self {
            interrupt: signal(SignalKind::interrupt()).context("cannot catch SIGINT")?,
            terminate: signal(SignalKind::terminate()).context("cannot catch SIGTERM")?,
        })
    }

    /// Waits for the next signal and names it.
    pub async fn next(&mut self) -> &'static str {
        tokio::select! {
            _ = self.interrupt.recv() => "SIGINT",
            _ = self.terminate.recv() => "SIGTERM",
        }
    }
}
