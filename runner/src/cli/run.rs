//! `runner run`: load the plugin directory and work the queue until a signal.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use arc_swap::ArcSwap;
use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio_util::task::AbortOnDropHandle;

use super::database::Database;
use crate::config::{ConfigError, FileConfig, SandboxSettings, WorkerSettings};
use crate::executor::WasmExecutor;
use crate::plugins::{self, ArtifactCache, Loader, PluginDir, PluginDirError, Policy, Presence};
use crate::queue::Queue;
use crate::sandbox::{Limits, Sandbox, SandboxConfig};
use crate::tenants::{self, SharedTenants, Tenants};
use crate::worker::{Worker, WorkerConfig};

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
}

impl RunArgs {
    /// These flags over the config file over the defaults, checked.
    pub fn resolve(self, file: &FileConfig) -> Result<RunConfig, ConfigError> {
        let (sandbox, limits) = self.sandbox.or(file.sandbox.clone()).resolve()?;
        let plugins = self
            .plugins
            .or(file.plugins.clone())
            .unwrap_or_else(|| "plugins".into());
        Ok(RunConfig {
            tenants: file.tenants(&sandbox)?,
            plugin_cache: self
                .plugin_cache
                .or(file.plugin_cache.clone())
                .unwrap_or_else(|| plugins.join(".jobrunner-cache")),
            plugins,
            worker: self.worker.or(file.worker.clone()).resolve()?,
            sandbox,
            limits,
        })
    }
}

/// Everything `runner run` needs, checked.
#[derive(Debug, Clone)]
pub struct RunConfig {
    /// The plugin directory.
    pub plugins: PathBuf,
    /// The compiled-plugin cache.
    pub plugin_cache: PathBuf,
    /// The worker loop.
    pub worker: WorkerConfig,
    /// The engine.
    pub sandbox: SandboxConfig,
    /// Every attempt's limits.
    pub limits: Limits,
    /// The tenant policy to publish at start, if the config file has one.
    pub tenants: Option<Tenants>,
}

/// Migrates, loads the plugins and watches their directory, then runs a worker until
/// SIGINT/SIGTERM and shuts it down gracefully. A second signal exits at once; unfinished jobs
/// then come back when their leases expire.
pub async fn run(db: &Database, config: RunConfig) -> anyhow::Result<ExitCode> {
    let mut signals = Signals::new()?;
    let started = Instant::now();
    let (dir, executor) = load_plugins(&config).await?;
    let _watching = plugins::watch(Arc::clone(&dir))?;
    let queue = db.queue();
    queue.migrate().await?;
    let tenants = apply_tenants(&queue, config.tenants.as_ref(), &config.worker.owner).await?;
    let _following = AbortOnDropHandle::new(tenants::follow(queue.clone(), Arc::clone(&tenants)));
    let executor = executor.with_tenants(tenants);
    let worker = config.worker;
    tracing::info!(
        owner = %worker.owner, concurrency = worker.concurrency,
        job_types = ?job_type_names(&dir), ready_ms = started.elapsed().as_secs_f64() * 1e3,
        "runner started"
    );
    let (owner, timeout) = (worker.owner.clone(), worker.shutdown_timeout);
    let worker = Worker::new(queue.clone(), executor, worker).start();
    let presence = Presence::start(
        queue,
        owner,
        dir.path().display().to_string(),
        Arc::clone(dir.registry()),
        worker.waker(),
    );

    let signal = signals.next().await;
    tracing::info!(
        signal, timeout = ?timeout,
        "shutting down: claiming nothing more and waiting for running jobs (signal again to exit \
         at once)"
    );
    tokio::select! {
        () = worker.shutdown() => {
            presence.withdraw().await;
            Ok(ExitCode::SUCCESS)
        }
        signal = signals.next() => {
            tracing::warn!(signal, "exiting at once; unfinished jobs run again when their \
                                    leases expire");
            db.stop_private_now();
            std::process::exit(130)
        }
    }
}

/// Publishes this runner's tenant policy, if it has one, and returns the policy in force.
pub(super) async fn apply_tenants(
    queue: &Queue,
    mine: Option<&Tenants>,
    owner: &str,
) -> anyhow::Result<SharedTenants> {
    if let Some(mine) = mine {
        let replaced = queue
            .publish_tenants(mine, owner)
            .await
            .context("cannot publish the tenant policy")?;
        if replaced != Tenants::default() && replaced != *mine {
            tracing::warn!("replaced a different tenant policy published by another runner");
        }
        tracing::info!(tenants = mine.rows().len() - 1, "tenant policy published");
    }
    let current = queue
        .tenants()
        .await
        .context("cannot read the tenant policy")?;
    Ok(Arc::new(ArcSwap::from_pointee(current)))
}

/// Builds the sandbox and loads every plugin in the configured directory (from the artifact
/// cache where it can).
pub(super) async fn load_plugins(
    config: &RunConfig,
) -> anyhow::Result<(Arc<PluginDir>, WasmExecutor)> {
    if config.sandbox.instances < config.worker.concurrency as u32 {
        tracing::warn!(
            instances = config.sandbox.instances,
            concurrency = config.worker.concurrency,
            "fewer sandbox instances than concurrency: jobs beyond the pool go back to the queue"
        );
    }
    let hint = "build the example plugins with `example-plugins/build`, or pass --plugins DIR";
    // Before the cache, which would otherwise create a mistyped plugin directory.
    std::fs::read_dir(&config.plugins)
        .map_err(|source| PluginDirError {
            path: config.plugins.clone(),
            source,
        })
        .context(hint)?;
    let sandbox = Arc::new(Sandbox::new(config.sandbox.clone())?);
    let cache = ArtifactCache::open(&config.plugin_cache, sandbox.engine())
        .inspect_err(|error| {
            tracing::warn!(dir = %config.plugin_cache.display(), %error,
                           "cannot use the compiled-plugin cache; compiling every plugin")
        })
        .ok();
    let defaults = Policy::new(config.limits.clone(), config.worker.retry);
    let loader = Arc::new(Loader::new(Arc::clone(&sandbox), cache, defaults));
    let dir = PluginDir::new(config.plugins.clone(), loader);
    dir.load_all().await.context(hint)?;
    if dir.registry().claim_types().is_empty() {
        tracing::warn!(dir = %config.plugins.display(),
                       "no plugin loaded: this runner claims no jobs until one is added");
    }
    let executor = WasmExecutor::new(sandbox, Arc::clone(dir.registry()));
    Ok((dir, executor))
}

fn job_type_names(dir: &PluginDir) -> Vec<String> {
    let types = dir.registry().claim_types();
    types.iter().map(|t| t.job_type.clone()).collect()
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
