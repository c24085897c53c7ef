//! The Wasm sandbox: one wasmtime engine per runner, one `InstancePre` per plugin version, and a
//! fresh store and instance for every attempt, dropped when it ends.
//!
//! A guest gets what the capabilities in [`host`] grant it: WASI preview 2 with nothing
//! behind it (no preopened directories, environment, arguments or network; stdout and stderr
//! captured with a cap), the `host` interface of the `job-handler` world, outgoing HTTP to
//! the hosts its manifest grants, the config values and secrets its manifest grants, and
//! follow-up jobs of the types its manifest lists. Per attempt it is held to [`Limits`]:
//! wall-clock time, CPU time (its thread's CPU clock, read at every epoch tick while it
//! executes), memory (a limiter), Wasm stack, payload and result size. Everything that can go
//! wrong is classified into a [`RunError`]; every secret is redacted from what it returns.

mod bindings;
mod budget;
mod classify;
mod host;
mod limits;
mod meter;
mod plugin;
mod runtime;

use std::num::NonZeroUsize;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use wasmtime::component::{Component, Linker};
use wasmtime::{Enabled, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store};

pub use budget::{MemoryBudget, NoRoom, OverBudget, default_memory_budget};
pub use classify::{Disposition, RunError, classify_trap};
pub use host::config::ConfigGrant;
pub use host::http::grant::{BadHostPattern, Denied, Destination, HostGrant, HostPattern};
pub use host::http::guard::{AddressGuard, Blocked};
pub use host::http::settings::{
    HttpDoor, HttpLimits, HttpNetworkConfig, HttpSettings, InvalidHttpSetting,
};
pub use host::jobs::JobsGrant;
pub use limits::{Limits, MemoryLimitExceeded};
pub use meter::{CpuBudgetExceeded, TimedOut, thread_cpu_time};
pub use plugin::{Plugin, PluginError};
pub use runtime::GuestRuntime;

use bindings::{JobHandlerPre, WitJob, WitJobError};
use host::{GuestState, JobLabel, Services};
use meter::Meter;

use crate::job::{Job, NewJob};
use crate::secrets::{Redactor, Secrets};
use jobrunner_client::AttemptLog;

/// Pool slots per component instance, for the core instances, memories and tables a
/// component made by today's toolchains needs (a Rust component has about five core
/// instances; Python and JavaScript ones a few more).
const CORE_INSTANCES_PER_COMPONENT: u32 = 16;
const MEMORIES_PER_COMPONENT: u32 = 2;
const TABLES_PER_COMPONENT: u32 = 4;

/// Bytes of each slot's tables kept resident between instances (see
/// [`SandboxConfig::keep_resident`]): 32K function references, more than the interpreters
/// compiled to Wasm use.
const TABLE_KEEP_RESIDENT: usize = 256 << 10;

/// Room on a fiber's stack for host code called from the guest, above the Wasm stack.
const HOST_STACK: usize = 1 << 20;

/// How the engine is built: fixed for the runner's lifetime.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxConfig {
    /// Most instances alive at once (the pooling allocator's slots). An attempt that finds
    /// none free goes back to the queue without counting.
    pub instances: u32,
    /// The largest memory cap any job may be given, in bytes (the pool's slot size).
    pub max_memory: u64,
    /// The memory caps of all attempts together, in bytes: an attempt reserves its cap
    /// before it starts, and waits while the budget is spent.
    pub memory_budget: u64,
    /// The longest wall-clock time a tenant's override may give an attempt.
    pub max_timeout: Duration,
    /// The most Wasm execution time a tenant's override may give an attempt.
    pub max_cpu_budget: Duration,
    /// The Wasm stack per instance, in bytes; deeper recursion traps with `stack_overflow`.
    pub max_stack: usize,
    /// Bytes of each pool slot's linear memory kept resident between instances: the pages a
    /// job dirtied are reset in place instead of being unmapped and faulted in again by the
    /// next job. Costs up to this much resident memory per warm slot.
    pub keep_resident: usize,
    /// The epoch tick: the granularity of CPU accounting, timeouts and yielding.
    pub epoch_tick: Duration,
    /// Outgoing HTTP: the networks the SSRF guard lets through, extra trusted roots, and the
    /// requests in flight at once.
    pub http: HttpNetworkConfig,
}

impl Default for SandboxConfig {
    fn default() -> Self {
        Self {
            instances: 1000,
            max_memory: 4 << 30,
            memory_budget: default_memory_budget(),
            max_timeout: Duration::from_secs(3600),
            max_cpu_budget: Duration::from_secs(3600),
            max_stack: 512 << 10,
            keep_resident: 2 << 20,
            epoch_tick: Duration::from_millis(10),
            http: HttpNetworkConfig::default(),
        }
    }
}

impl SandboxConfig {
    /// The largest memory cap an attempt may get: the pool's slot size, and no more than the
    /// whole budget. With the setting that bounds it, for messages.
    pub fn largest_memory(&self) -> (u64, &'static str) {
        if self.memory_budget < self.max_memory {
            (self.memory_budget, "memory_budget")
        } else {
            (self.max_memory, "max_memory")
        }
    }
}

/// The engine could not be set up.
#[derive(Debug, thiserror::Error)]
#[error("cannot set up the Wasm sandbox: {0}")]
pub struct SandboxError(String);

/// What one attempt produced: the result or the classified error, and what the guest left
/// behind for the log.
#[derive(Debug)]
pub struct Run {
    /// The guest's JSON result (`None`: it returned none), or why there is none.
    pub result: Result<Option<String>, RunError>,
    /// Where the guest was when it trapped or was stopped, innermost frame first.
    pub backtrace: Option<String>,
    /// The tail of the guest's stdout.
    pub stdout: Option<String>,
    /// The tail of the guest's stderr (a Rust panic message arrives here).
    pub stderr: Option<String>,
    /// The follow-up jobs a successful attempt enqueued (none if it did not succeed).
    pub follow_ups: Vec<NewJob>,
    /// The delay before the next attempt the guest asked for, if it returned `retry`.
    pub retry_delay: Option<Duration>,
    /// What the attempt logged and requested, to keep with the job; `None` if nothing.
    pub journal: Option<AttemptLog>,
}

/// How much of the guest's stderr goes into a stored error: the end, where a panic message is.
const STDERR_IN_ERROR: usize = 2048;

impl Run {
    /// An attempt refused before its guest ran.
    fn refused(error: RunError) -> Self {
        Run {
            result: Err(error),
            backtrace: None,
            stdout: None,
            stderr: None,
            follow_ups: Vec::new(),
            retry_delay: None,
            journal: None,
        }
    }

    /// The error as stored with the attempt: the classified error, then where the guest was
    /// (backtrace) and the end of its stderr. `None` if the run succeeded.
    pub fn error_report(&self) -> Option<String> {
        let error = self.result.as_ref().err()?;
        let mut report = error.to_string();
        if let Some(backtrace) = &self.backtrace {
            report.push_str("\nwasm backtrace:\n");
            report.push_str(backtrace);
        }
        if let Some(stderr) = &self.stderr {
            let start = stderr.ceil_char_boundary(stderr.len().saturating_sub(STDERR_IN_ERROR));
            report.push_str("\nstderr:\n");
            report.push_str(stderr[start..].trim());
        }
        Some(report)
    }
}

/// The runner's Wasm engine and linker, shared by every plugin and attempt.
pub struct Sandbox {
    engine: Engine,
    linker: Linker<GuestState>,
    config: SandboxConfig,
    budget: MemoryBudget,
    guests: GuestRuntime,
    services: Services,
}

impl std::fmt::Debug for Sandbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sandbox")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Sandbox {
    /// Builds the engine (Cranelift, pooling allocator, epoch interruption) and starts its
    /// epoch ticker, a thread that lives as long as the engine.
    pub fn new(config: SandboxConfig) -> Result<Self, SandboxError> {
        let engine =
            Engine::new(&engine_config(&config)).map_err(|e| SandboxError(format!("{e:#}")))?;
        let mut linker = Linker::new(&engine);
        host::add_to_linker(&mut linker).map_err(|e| SandboxError(format!("{e:#}")))?;
        start_epoch_ticker(&engine, config.epoch_tick)?;
        let guests = GuestRuntime::new()
            .map_err(|e| SandboxError(format!("cannot start the guest threads: {e}")))?;
        let services = Services {
            network: Arc::new(host::http::Network::new(&config.http).map_err(SandboxError)?),
            secrets: Arc::default(),
        };
        Ok(Self {
            services,
            engine,
            linker,
            budget: MemoryBudget::new(config.memory_budget),
            guests,
            config,
        })
    }

    /// Compiles `wasm` and checks it against the `job-handler` world. CPU-heavy: call it off
    /// the async runtime.
    pub fn compile(&self, job_type: &str, wasm: &[u8]) -> Result<Plugin, PluginError> {
        self.prepare(job_type, &self.compile_component(wasm)?)
    }

    /// Compiles `wasm` to native code without checking its world. CPU-heavy: call it off the
    /// async runtime.
    pub fn compile_component(&self, wasm: &[u8]) -> Result<Component, PluginError> {
        Component::new(&self.engine, wasm).map_err(|e| PluginError::Compile(format!("{e:#}")))
    }

    /// Checks a compiled `component` against the `job-handler` world (every import is one the
    /// sandbox provides; `run` is exported with the right type) and readies it for
    /// instantiation in microseconds.
    pub fn prepare(&self, job_type: &str, component: &Component) -> Result<Plugin, PluginError> {
        let wrong_world = |e: wasmtime::Error| PluginError::WrongWorld(format!("{e:#}"));
        let pre = self
            .linker
            .instantiate_pre(component)
            .map_err(wrong_world)?;
        let pre = JobHandlerPre::new(pre).map_err(wrong_world)?;
        Ok(Plugin {
            job_type: job_type.to_owned(),
            pre,
        })
    }

    /// Replaces the secrets guests are granted and redacted from what they write: attempts
    /// that start from now on see these.
    pub fn set_secrets(&self, secrets: Secrets) {
        self.services.secrets.store(Arc::new(secrets));
    }

    /// The engine, for loading compiled artifacts made by [`Component::serialize`].
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// The engine's settings.
    pub fn config(&self) -> &SandboxConfig {
        &self.config
    }

    /// The guest threads ([`GuestRuntime`]): where the attempts of a runner's worker run,
    /// apart from its own duties.
    pub fn guest_threads(&self) -> tokio::runtime::Handle {
        self.guests.handle()
    }

    /// Loads the plugin file `path`; its job type is the file name without `.wasm`.
    pub fn load(&self, path: &Path) -> Result<Plugin, PluginError> {
        self.load_as(path, &wasm_job_type(path)?)
    }

    /// Loads the plugin file `path` to run jobs of `job_type`.
    pub fn load_as(&self, path: &Path, job_type: &str) -> Result<Plugin, PluginError> {
        let wasm = std::fs::read(path).map_err(|source| PluginError::Read {
            path: path.to_owned(),
            source,
        })?;
        self.compile(job_type, &wasm)
    }

    /// Runs one attempt of `job` in a fresh instance of `plugin`, held to `limits`.
    pub async fn run(&self, plugin: &Plugin, job: &Job, limits: &Limits) -> Run {
        if job.payload.len() > limits.max_payload {
            let size = job.payload.len();
            let limit = limits.max_payload;
            return Run::refused(RunError::PayloadTooLarge { size, limit });
        }
        // Before the store, and dropped after it: the instance's memory is accounted for.
        let _reservation = match self.budget.reserve(limits.memory, budget::PATIENCE).await {
            Ok(reservation) => reservation,
            Err(no_room) => return Run::refused(no_room.into()),
        };
        let secrets = self.services.secrets.load_full();
        let label = Arc::new(JobLabel::new(job, Arc::clone(&secrets), limits.keep_log));
        let mut store = self.store(Arc::clone(&label), limits);
        let (result, backtrace) = execute(&mut store, plugin, job, limits).await;
        if let Err(error) = &result {
            count_stop(job, error);
        }
        let state = store.data_mut();
        state.finish();
        let (stdout, stderr) = state.wasi.output();
        let follow_ups = match &result {
            Ok(_) => state.jobs.take_follow_ups(),
            Err(_) => Vec::new(),
        };
        let retry_delay = state.jobs.retry_delay();
        // Its end writes the lines of the requests the guest left unfinished.
        drop(store);
        Run {
            result: redacted(result, secrets.redactor()),
            backtrace,
            stdout,
            stderr,
            follow_ups,
            retry_delay,
            journal: label.journal.take(),
        }
    }

    /// A fresh store for one attempt: every capability's state, the memory limiter, and the
    /// meter that the epoch callback consults.
    fn store(&self, job: Arc<JobLabel>, limits: &Limits) -> Store<GuestState> {
        let meter = Meter::new(limits.cpu_budget, self.config.epoch_tick, limits.timeout);
        let state = GuestState::new(&job, limits, &self.services, meter);
        let mut store = Store::new(&self.engine, state);
        store.set_hostcall_fuel(limits.max_transfer());
        store.limiter(|state| &mut state.limiter);
        store.set_epoch_deadline(1);
        store.epoch_deadline_callback(|mut store| store.data_mut().meter.tick());
        store
    }
}

/// Instantiates and calls the guest; the result or the classified error, and a backtrace if
/// the guest was stopped.
async fn execute(
    store: &mut Store<GuestState>,
    plugin: &Plugin,
    job: &Job,
    limits: &Limits,
) -> (Result<Option<String>, RunError>, Option<String>) {
    let call = tokio::time::timeout(limits.timeout, call_run(store, &plugin.pre, job));
    match call.await {
        Ok(Ok(Ok(result))) => (check_result(result, limits), None),
        Ok(Ok(Err(WitJobError::Retry(message)))) => (Err(RunError::GuestRetry(message)), None),
        Ok(Ok(Err(WitJobError::Fail(message)))) => (Err(RunError::GuestFail(message)), None),
        Ok(Err(error)) => {
            let (error, backtrace) = classify_trap(&error, limits);
            (Err(error), backtrace)
        }
        // The guest was waiting on the host; a running guest is stopped by the meter.
        Err(_elapsed) => (Err(RunError::timeout(limits.timeout)), None),
    }
}

async fn call_run(
    store: &mut Store<GuestState>,
    pre: &JobHandlerPre<GuestState>,
    job: &Job,
) -> wasmtime::Result<Result<Option<String>, WitJobError>> {
    let started = std::time::Instant::now();
    let instance = pre.instantiate_async(&mut *store).await?;
    crate::metrics::instantiated(&job.job_type, started.elapsed());
    let job = WitJob {
        id: job.id,
        job_type: job.job_type.clone(),
        tenant: job.tenant.clone(),
        attempt: job.attempt,
        max_attempts: job.max_attempts,
        payload: job.payload.clone(),
    };
    instance.call_run(&mut *store, &job).await
}

/// Counts an attempt the sandbox stopped: a trap, or a limit it tripped.
fn count_stop(job: &Job, error: &RunError) {
    let limit = match error {
        RunError::Trap { kind, .. } => return crate::metrics::trapped(&job.job_type, kind),
        RunError::CpuBudget(_) => "cpu",
        RunError::Timeout(_) => "wall",
        RunError::MemoryLimit(_) => "memory",
        RunError::TransferTooLarge { .. } | RunError::ResultTooLarge { .. } => "output",
        _ => return,
    };
    crate::metrics::limit_tripped(&job.job_type, &job.tenant, limit);
}

/// What the guest returned, with secrets redacted: its result, and the message of its
/// `retry` or `fail` (host-made errors hold none; stderr is redacted where it is captured).
fn redacted(
    result: Result<Option<String>, RunError>,
    redactor: &Redactor,
) -> Result<Option<String>, RunError> {
    let clean = |text| redactor.redact_owned(text);
    match result {
        Ok(json) => Ok(json.map(clean)),
        Err(RunError::GuestRetry(message)) => Err(RunError::GuestRetry(clean(message))),
        Err(RunError::GuestFail(message)) => Err(RunError::GuestFail(clean(message))),
        Err(other) => Err(other),
    }
}

/// A result must fit its cap and be JSON: it is stored in a `jsonb` column.
fn check_result(result: Option<String>, limits: &Limits) -> Result<Option<String>, RunError> {
    let Some(json) = result else { return Ok(None) };
    if json.len() > limits.max_result {
        return Err(RunError::ResultTooLarge {
            size: json.len(),
            limit: limits.max_result,
        });
    }
    serde_json::from_str::<serde::de::IgnoredAny>(&json)
        .map_err(|e| RunError::InvalidResult(e.to_string()))?;
    Ok(Some(json))
}

fn engine_config(sandbox: &SandboxConfig) -> wasmtime::Config {
    let n = sandbox.instances;
    let mut pool = PoolingAllocationConfig::default();
    pool.total_component_instances(n)
        .total_core_instances(n.saturating_mul(CORE_INSTANCES_PER_COMPONENT))
        .total_memories(n.saturating_mul(MEMORIES_PER_COMPONENT))
        .total_tables(n.saturating_mul(TABLES_PER_COMPONENT))
        .total_stacks(n)
        .max_memory_size(usize::try_from(sandbox.max_memory).unwrap_or(usize::MAX))
        // A fresh instance per job makes resetting a slot the cost that matters. With the
        // kernel's PAGEMAP_SCAN (Linux 6.7+) only the pages the last job touched are reset,
        // in place, instead of unmapped and faulted in again by the next job: in
        // benches/sandbox.rs instantiate+call became 2-3x faster for small components and
        // twice as fast for JavaScript.
        .linear_memory_keep_resident(sandbox.keep_resident)
        .table_keep_resident(TABLE_KEEP_RESIDENT)
        .pagemap_scan(Enabled::Auto);
    let mut config = wasmtime::Config::new();
    config
        .wasm_component_model(true)
        .epoch_interruption(true)
        .wasm_backtrace_max_frames(NonZeroUsize::new(classify::BACKTRACE_FRAMES))
        .max_wasm_stack(sandbox.max_stack)
        .async_stack_size(sandbox.max_stack + HOST_STACK)
        .allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    config
}

fn start_epoch_ticker(engine: &Engine, tick: Duration) -> Result<(), SandboxError> {
    let engine = engine.weak();
    std::thread::Builder::new()
        .name("jobrunner-epoch".into())
        .spawn(move || {
            while let Some(engine) = engine.upgrade() {
                engine.increment_epoch();
                drop(engine);
                std::thread::sleep(tick);
            }
        })
        .map(drop)
        .map_err(|e| SandboxError(format!("cannot start the epoch ticker thread: {e}")))
}

/// A plugin file's job type: its name without `.wasm`.
pub fn wasm_job_type(path: &Path) -> Result<String, PluginError> {
    let bad = |reason: &str| PluginError::BadName {
        path: path.to_owned(),
        reason: reason.to_owned(),
    };
    if path.extension().and_then(|e| e.to_str()) != Some("wasm") {
        return Err(bad("plugin files end in .wasm"));
    }
    let stem = path
        .file_stem()
        .and_then(|s| s.to_str())
        .ok_or_else(|| bad("not UTF-8"))?;
    crate::job::validate_job_type(stem).map_err(|e| bad(&e.to_string()))?;
    Ok(stem.to_owned())
}
