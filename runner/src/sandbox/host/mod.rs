//! What a guest can reach: one module per capability it may import, each of the same shape
//! ([`Capability`]): what it adds to the linker, the state it keeps in the store for one
//! attempt, which settings grant and limit it, and what it logs when the attempt ends.
//!
//! - [`wasi`]: WASI preview 2 with nothing behind it: no files, environment, arguments or
//!   network; stdout and stderr captured with a cap.
//! - [`log`]: the world's `host.log`, attributed to the job and rate-limited.
//! - [`http`]: outgoing HTTP (`wasi:http/outgoing-handler`) to the hosts the plugin's
//!   manifest grants, through an SSRF guard, within limits, one log line per request.
//!
//! Adding a capability (config, follow-up jobs): add its import to the world in
//! `wit/`, add a sibling module with a [`Capability`] implementation and its per-attempt state
//! as a field of [`GuestState`], and resolve its grant with the other per-attempt settings in
//! [`Limits`] (the runner's defaults, narrowed by the plugin's manifest and the tenant's
//! policy). Deny by default: without a grant, the import is linked but refuses.

pub(crate) mod http;
pub(crate) mod log;
pub(crate) mod output;
pub(crate) mod wasi;

use std::sync::Arc;

use wasmtime::component::{HasSelf, Linker, ResourceTable};

use super::bindings::jobrunner::plugin::types;
use super::limits::{Limits, MemoryLimiter};
use super::meter::Meter;

/// The job an attempt runs, as the host attributes what the guest does.
#[derive(Debug, Clone)]
pub(crate) struct JobLabel {
    pub id: i64,
    pub job_type: String,
    pub tenant: String,
    pub attempt: u32,
}

impl From<&crate::job::Job> for JobLabel {
    fn from(job: &crate::job::Job) -> Self {
        Self {
            id: job.id,
            job_type: job.job_type.clone(),
            tenant: job.tenant.clone(),
            attempt: job.attempt,
        }
    }
}

/// A host capability a guest can import.
pub(crate) trait Capability {
    /// What the capability keeps for one attempt, in the store.
    type State: Send;

    /// Adds the capability's imports to the runner's linker, once.
    fn add_to_linker(linker: &mut Linker<GuestState>) -> wasmtime::Result<()>;

    /// The state for one attempt of `job`, as `limits` grant it.
    fn start(job: &Arc<JobLabel>, limits: &Limits, services: &Services) -> Self::State;

    /// The attempt is over: say what was held back or captured.
    fn finish(state: &mut Self::State);
}

/// What the runner's capabilities share across attempts.
#[derive(Debug, Clone)]
pub(crate) struct Services {
    /// Outgoing HTTP's guard, TLS setup and slots.
    pub network: Arc<http::Network>,
}

/// Everything a store holds for one attempt: each capability's state, the resource table
/// they share, and the limiter and meter the engine consults.
pub(crate) struct GuestState {
    pub wasi: <wasi::Wasi as Capability>::State,
    pub log: <log::Log as Capability>::State,
    pub http: <http::Http as Capability>::State,
    pub table: ResourceTable,
    pub limiter: MemoryLimiter,
    pub meter: Meter,
}

impl GuestState {
    /// A fresh state for one attempt of `job`.
    pub fn new(job: &Arc<JobLabel>, limits: &Limits, services: &Services, meter: Meter) -> Self {
        Self {
            wasi: wasi::Wasi::start(job, limits, services),
            log: log::Log::start(job, limits, services),
            http: http::Http::start(job, limits, services),
            table: ResourceTable::default(),
            limiter: MemoryLimiter::new(limits.memory),
            meter,
        }
    }

    /// The attempt is over: every capability reports.
    pub fn finish(&mut self) {
        http::Http::finish(&mut self.http);
        log::Log::finish(&mut self.log);
        wasi::Wasi::finish(&mut self.wasi);
    }
}

/// Links every capability, and the world's shared types.
pub(crate) fn add_to_linker(linker: &mut Linker<GuestState>) -> wasmtime::Result<()> {
    types::add_to_linker::<_, HasSelf<GuestState>>(linker, |state| state)?;
    wasi::Wasi::add_to_linker(linker)?;
    http::Http::add_to_linker(linker)?;
    log::Log::add_to_linker(linker)
}

impl types::Host for GuestState {}
