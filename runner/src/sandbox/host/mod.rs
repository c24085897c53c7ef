//! What a guest can reach: one module per capability it may import, each of the same shape
//! ([`Capability`]): what it adds to the linker, the state it keeps in the store for one
//! attempt, which settings grant and limit it, and what it logs when the attempt ends.
//!
//! - [`wasi`]: WASI preview 2 with nothing behind it: no files, environment, arguments or
//!   network; stdout and stderr captured with a cap.
//! - [`log`]: the world's `host.log`, attributed to the job and rate-limited.
//! - [`http`]: outgoing HTTP (`wasi:http/outgoing-handler`) to the hosts the plugin's
//!   manifest grants, through an SSRF guard, within limits, one log line per request.
//! - [`config`]: config values and secrets (`wasi:config/store`), as the manifest grants them
//!   and with the job's tenant's values.
//! - [`jobs`]: follow-up jobs, kept with the attempt until its completion is recorded, and the
//!   delay before a retry.
//!
//! What a guest hands the host (log lines, output, errors, results, follow-up payloads, the
//! URLs it requests) has every secret the runner holds replaced by `[redacted:<name>]`, with
//! the [`JobLabel`]'s redactor, before it is written anywhere.
//!
//! Adding a capability: add its import to the world in
//! `wit/`, add a sibling module with a [`Capability`] implementation and its per-attempt state
//! as a field of [`GuestState`], and resolve its grant with the other per-attempt settings in
//! [`Limits`] (the runner's defaults, narrowed by the plugin's manifest and the tenant's
//! policy). Deny by default: without a grant, the import is linked but refuses.

pub(crate) mod config;
pub(crate) mod http;
pub(crate) mod jobs;
pub(crate) mod journal;
pub(crate) mod log;
pub(crate) mod output;
pub(crate) mod wasi;

use std::sync::Arc;

use arc_swap::ArcSwap;
use wasmtime::component::{HasSelf, Linker, ResourceTable};

use super::bindings::jobrunner::plugin::types;
use super::limits::{Limits, MemoryLimiter};
use super::meter::Meter;
use crate::secrets::{Redactor, Secrets};

/// The job an attempt runs, as the host attributes what the guest does.
#[derive(Debug, Clone)]
pub(crate) struct JobLabel {
    pub id: i64,
    pub job_type: String,
    pub tenant: String,
    pub attempt: u32,
    /// The runner's secrets as the attempt started: the values it may be granted, and what
    /// is redacted from everything it hands the host (one snapshot for both, so a reload
    /// mid-attempt cannot give it a value its redactor does not know).
    pub secrets: Arc<Secrets>,
    /// What the attempt logged and requested, kept with the job.
    pub journal: Arc<journal::Journal>,
}

impl JobLabel {
    /// The label of `job`, with the runner's current `secrets`, keeping the last `keep_log`
    /// bytes of its log in its journal.
    pub fn new(job: &crate::job::Job, secrets: Arc<Secrets>, keep_log: usize) -> Self {
        Self {
            id: job.id,
            job_type: job.job_type.clone(),
            tenant: job.tenant.clone(),
            attempt: job.attempt,
            secrets,
            journal: Arc::new(journal::Journal::new(job.attempt, keep_log)),
        }
    }

    /// Replaces every secret in what the guest hands the host.
    pub fn redactor(&self) -> &Redactor {
        self.secrets.redactor()
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
    /// The secrets' values, swapped whole when they are read again.
    pub secrets: Arc<ArcSwap<Secrets>>,
}

/// Everything a store holds for one attempt: each capability's state, the resource table
/// they share, and the limiter and meter the engine consults.
pub(crate) struct GuestState {
    pub wasi: <wasi::Wasi as Capability>::State,
    pub log: <log::Log as Capability>::State,
    pub http: <http::Http as Capability>::State,
    pub config: <config::Config as Capability>::State,
    pub jobs: <jobs::Jobs as Capability>::State,
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
            config: config::Config::start(job, limits, services),
            jobs: jobs::Jobs::start(job, limits, services),
            table: ResourceTable::default(),
            limiter: MemoryLimiter::new(limits.memory),
            meter,
        }
    }

    /// The attempt is over: every capability reports.
    pub fn finish(&mut self) {
        jobs::Jobs::finish(&mut self.jobs);
        config::Config::finish(&mut self.config);
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
    config::Config::add_to_linker(linker)?;
    jobs::Jobs::add_to_linker(linker)?;
    log::Log::add_to_linker(linker)
}

impl types::Host for GuestState {}
