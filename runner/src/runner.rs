//! A whole runner as a library: what `runner run` does, for tests and for applications that
//! embed one.
//!
//! ```no_run
//! # async fn example(config: runner::RunConfig, pool: sqlx::PgPool) -> anyhow::Result<()> {
//! use runner::{Queue, Runner};
//! use tokio_util::sync::CancellationToken;
//!
//! let runner = Runner::builder(config).queue(Queue::new(pool)).build().await?;
//! let shutdown = CancellationToken::new();
//! // ... cancel `shutdown` to stop gracefully ...
//! runner.run(shutdown).await?;
//! # Ok(())
//! # }
//! ```
//!
//! [`RunnerBuilder::build`] migrates the schema, loads every plugin of the directory (watching
//! it from then on) and publishes the configured tenant policy; [`Runner::run`] starts the
//! worker and the runner's announcements, and on shutdown stops them gracefully (see
//! [`WorkerHandle::shutdown`](crate::WorkerHandle::shutdown)).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use arc_swap::ArcSwap;
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;

use crate::Queue;
use crate::driver::Driver;
use crate::executor::WasmExecutor;
use crate::plugins::{self, ArtifactCache, Loader, PluginDir, PluginDirError, Policy, Presence};
use crate::sandbox::{Limits, Sandbox, SandboxConfig};
use crate::secrets::Secrets;
use crate::tenants::{self, SharedTenants, Tenants};
use crate::worker::{Worker, WorkerConfig, WorkerHandle};

/// Everything a runner needs, checked (`runner run` builds it from flags and the config file).
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
    /// The secrets guests may be granted, read from the environment and files already.
    pub secrets: Secrets,
    /// The tenant policy to publish at start, if the config file has one.
    pub tenants: Option<Tenants>,
    /// The HTTP listener (health checks, metrics, dashboard) `runner run` starts beside the
    /// runner, if one is asked for.
    pub web: Option<crate::web::WebConfig>,
}

/// Sets a runner up: [`Runner::builder`].
#[derive(Debug)]
pub struct RunnerBuilder {
    config: RunConfig,
    queue: Option<Queue>,
}

impl RunnerBuilder {
    /// The queue (database) the runner works. Required.
    pub fn queue(mut self, queue: Queue) -> Self {
        self.queue = Some(queue);
        self
    }

    /// Migrates the schema, loads the plugins and starts watching their directory, and
    /// publishes the tenant policy, if the config has one.
    pub async fn build(self) -> anyhow::Result<Runner> {
        let started = Instant::now();
        let queue = self
            .queue
            .context("a runner needs a queue: RunnerBuilder::queue")?;
        let config = self.config;
        let (dir, executor) = load_plugins(&config).await?;
        let watching = plugins::watch(Arc::clone(&dir))?;
        queue.migrate().await?;
        let driver = Driver::new(queue.clone());
        let tenants = apply_tenants(&driver, config.tenants.as_ref(), &config.worker.owner).await?;
        Ok(Runner {
            executor: executor.with_tenants(Arc::clone(&tenants)),
            tenants,
            driver,
            dir,
            watching,
            config,
            started,
        })
    }
}

/// A runner, ready to run: plugins loaded and watched, schema migrated, policy published.
pub struct Runner {
    config: RunConfig,
    driver: Driver,
    dir: Arc<PluginDir>,
    /// Keeps the directory watched while it lives.
    watching: plugins::Watching,
    executor: WasmExecutor,
    tenants: SharedTenants,
    started: Instant,
}

impl Runner {
    /// The sandbox its jobs run in: [`Sandbox::set_secrets`] gives them secrets read again.
    pub fn sandbox(&self) -> Arc<Sandbox> {
        Arc::clone(self.executor.sandbox())
    }

    /// Starts setting up a runner with `config`.
    pub fn builder(config: RunConfig) -> RunnerBuilder {
        RunnerBuilder {
            config,
            queue: None,
        }
    }

    /// Runs jobs until `shutdown` fires, then stops gracefully: claims nothing more, lets
    /// running jobs finish until the shutdown timeout, records every outcome and withdraws
    /// the runner's announcement.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let timeout = self.config.worker.shutdown_timeout;
        let running = self.start();
        shutdown.cancelled().await;
        tracing::info!(
            timeout = ?timeout,
            "shutting down: claiming nothing more and waiting for running jobs"
        );
        running.stop().await;
        Ok(())
    }

    fn start(self) -> Running {
        let worker = self.config.worker;
        tracing::info!(
            owner = %worker.owner, concurrency = worker.concurrency,
            memory_budget = %bytesize::ByteSize(self.config.sandbox.memory_budget),
            job_types = ?job_type_names(&self.dir),
            ready_ms = self.started.elapsed().as_secs_f64() * 1e3,
            "runner started"
        );
        let _following = AbortOnDropHandle::new(tenants::follow(self.driver.clone(), self.tenants));
        let _syncing = AbortOnDropHandle::new(plugins::schedules::follow(
            self.driver.queue().clone(),
            Arc::clone(self.dir.registry()),
        ));
        let owner = worker.owner.clone();
        let worker = Worker::new(self.driver.queue().clone(), self.executor, worker).start();
        let presence = Presence::start(
            self.driver,
            owner,
            self.dir.path().display().to_string(),
            Arc::clone(self.dir.registry()),
            worker.waker(),
        );
        Running {
            worker,
            presence,
            _following,
            _syncing,
            _watching: self.watching,
        }
    }
}

/// A started runner's parts, stopped in order.
struct Running {
    worker: WorkerHandle,
    presence: Presence,
    _following: AbortOnDropHandle<()>,
    _syncing: AbortOnDropHandle<()>,
    _watching: plugins::Watching,
}

impl Running {
    async fn stop(self) {
        self.worker.shutdown().await;
        self.presence.withdraw().await;
    }
}

/// Publishes this runner's tenant policy, if it has one, and returns the policy in force.
pub(crate) async fn apply_tenants(
    driver: &Driver,
    mine: Option<&Tenants>,
    owner: &str,
) -> anyhow::Result<SharedTenants> {
    if let Some(mine) = mine {
        let replaced = driver
            .publish_tenants(mine, owner)
            .await
            .context("cannot publish the tenant policy")?;
        if replaced != Tenants::default() && replaced != *mine {
            tracing::warn!("replaced a different tenant policy published by another runner");
        }
        tracing::info!(tenants = mine.rows().len() - 1, "tenant policy published");
    }
    let current = driver
        .tenants()
        .await
        .context("cannot read the tenant policy")?;
    Ok(Arc::new(ArcSwap::from_pointee(current)))
}

/// Builds the sandbox and loads every plugin in the configured directory (from the artifact
/// cache where it can).
pub(crate) async fn load_plugins(
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
    sandbox.set_secrets(config.secrets.clone());
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
