//! `runner run`: load the plugin directory and work the queue until a signal.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use tokio::signal::unix::{Signal, SignalKind, signal};

use super::database::Database;
use crate::config::{ConfigError, FileConfig, SandboxSettings, WorkerSettings};
use crate::executor::{Executor, WasmExecutor};
use crate::plugins;
use crate::sandbox::{Limits, Sandbox, SandboxConfig};
use crate::worker::{Worker, WorkerConfig};

/// Flags of `runner run` (and `runner demo`).
#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// The plugin directory: one `<job-type>.wasm` component per job type [default: plugins]
    #[arg(long, env = "JOBRUNNER_PLUGINS")]
    pub plugins: Option<PathBuf>,
    #[command(flatten)]
    pub worker: WorkerSettings,
    #[command(flatten)]
    pub sandbox: SandboxSettings,
}

impl RunArgs {
    /// These flags over the config file over the defaults, checked.
    pub fn resolve(self, file: &FileConfig) -> Result<RunConfig, ConfigError> {
        let (sandbox, limits) = self.sandbox.or(file.sandbox.clone()).resolve()?;
        Ok(RunConfig {
            plugins: self
                .plugins
                .or(file.plugins.clone())
                .unwrap_or_else(|| "plugins".into()),
            worker: self.worker.or(file.worker.clone()).resolve()?,
            sandbox,
            limits,
        })
    }
}

/// Everything `runner run` needs, checked.
#[derive(Debug)]
pub struct RunConfig {
    /// The plugin directory.
    pub plugins: PathBuf,
    /// The worker loop.
    pub worker: WorkerConfig,
    /// The engine.
    pub sandbox: SandboxConfig,
    /// Every attempt's limits.
    pub limits: Limits,
}

/// Migrates, loads the plugins, then runs a worker until SIGINT/SIGTERM and shuts it down
/// gracefully. A second signal exits at once; unfinished jobs then come back when their leases
/// expire.
pub async fn run(db: &Database, config: RunConfig) -> anyhow::Result<ExitCode> {
    let mut signals = Signals::new()?;
    let executor = load_executor(&config).await?;
    let queue = db.queue();
    queue.migrate().await?;
    let worker = config.worker;
    tracing::info!(
        owner = %worker.owner, concurrency = worker.concurrency,
        job_types = ?executor.job_types(), "runner started"
    );
    let timeout = worker.shutdown_timeout;
    let worker = Worker::new(queue, executor, worker).start();

    let signal = signals.next().await;
    tracing::info!(
        signal, timeout = ?timeout,
        "shutting down: claiming nothing more and waiting for running jobs (signal again to exit \
         at once)"
    );
    tokio::select! {
        () = worker.shutdown() => Ok(ExitCode::SUCCESS),
        signal = signals.next() => {
            tracing::warn!(signal, "exiting at once; unfinished jobs run again when their \
                                    leases expire");
            db.stop_private_now();
            std::process::exit(130)
        }
    }
}

/// Builds the sandbox and loads every plugin in the configured directory.
pub(super) async fn load_executor(config: &RunConfig) -> anyhow::Result<WasmExecutor> {
    if config.sandbox.instances < config.worker.concurrency as u32 {
        tracing::warn!(
            instances = config.sandbox.instances,
            concurrency = config.worker.concurrency,
            "fewer sandbox instances than concurrency: jobs beyond the pool go back to the queue"
        );
    }
    let sandbox = Arc::new(Sandbox::new(config.sandbox.clone())?);
    let registry = plugins::load_dir(&sandbox, &config.plugins)
        .await
        .context("build the example plugins with `example-plugins/build`, or pass --plugins DIR")?;
    if registry.job_types().is_empty() {
        tracing::warn!(dir = %config.plugins.display(), "no plugin loaded: this runner claims no jobs");
    }
    Ok(WasmExecutor::new(
        sandbox,
        Arc::new(registry),
        config.limits.clone(),
    ))
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
