//! The seam between the queue and whatever runs a job.
//!
//! The worker hands each claimed [`Job`] to an [`Executor`] and turns the [`JobResult`] into an
//! outcome. [`WasmExecutor`] runs every job in the sandbox, as production does; [`Handlers`]
//! runs plain async Rust functions, for tests of the queue on its own.

mod handlers;
mod wasm;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use jobrunner_client::{AttemptLog, NewJob};
use serde_json::value::RawValue;

use crate::driver::ClaimType;
use crate::job::Job;
use crate::retry::Backoff;

pub use handlers::{Handlers, json_result};

pub use wasm::WasmExecutor;

/// Why an attempt did not succeed: the WIT `job-error` variant, plus "did not run".
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JobError {
    /// Transient: retry with backoff while attempts remain.
    #[error("{0}")]
    Retry(String),
    /// Permanent: fail the job now.
    #[error("{0}")]
    Fail(String),
    /// The job did not run (no free sandbox slot, no plugin for its type): back to the queue
    /// shortly, without counting the attempt.
    #[error("{0}")]
    Requeue(String),
}

impl JobError {
    /// A job of a type the executor does not serve (any more: a plugin deleted after the
    /// claim). It did not run, so it goes back to the queue without counting the attempt, for
    /// a runner that serves the type, or this one once the type is back. Every executor says
    /// so the same way.
    pub fn no_handler(job_type: &str) -> Self {
        JobError::Requeue(format!("no handler for job type {job_type:?}"))
    }
}

/// What an attempt produced: an optional JSON result, or an error.
pub type JobResult = Result<Option<Box<RawValue>>, JobError>;

/// One attempt as the executor saw it: the result, and what decides its retry and its record.
#[derive(Debug)]
pub struct Execution {
    /// The result or error.
    pub result: JobResult,
    /// The backoff of the job's type, if it has its own (a plugin manifest); else the
    /// runner's.
    pub backoff: Option<Backoff>,
    /// The sha256 of the plugin version that ran the attempt.
    pub plugin_sha256: Option<Arc<str>>,
    /// The jobs a successful attempt enqueued: written with its completion.
    pub follow_ups: Vec<NewJob>,
    /// How long to wait before the next attempt, if the handler said (instead of the
    /// backoff, up to its cap).
    pub retry_delay: Option<Duration>,
    /// What the attempt logged and requested, kept with the job.
    pub journal: Option<AttemptLog>,
}

impl From<JobResult> for Execution {
    fn from(result: JobResult) -> Self {
        Self {
            result,
            backoff: None,
            plugin_sha256: None,
            follow_ups: Vec::new(),
            retry_delay: None,
            journal: None,
        }
    }
}

/// Runs jobs.
pub trait Executor: Send + Sync + 'static {
    /// The job types this executor can run now, with their claim rules. The runner claims
    /// only these, so runners with different executors can share one database. Called before
    /// every claim: the set may change while the runner runs.
    fn job_types(&self) -> Arc<[ClaimType]>;

    /// The runtime the worker's executors (which await [`Executor::execute`]) should run on;
    /// `None`, the default: the worker's own. An executor running untrusted or CPU-heavy code
    /// gives threads of its own, so that the worker's duties keep theirs.
    fn runtime(&self) -> Option<tokio::runtime::Handle> {
        None
    }

    /// Runs one attempt of `job`. The future may be dropped (shutdown deadline, lost lease):
    /// the attempt is then abandoned and the worker records what happened.
    fn execute(&self, job: &Job) -> impl Future<Output = Execution> + Send;
}
