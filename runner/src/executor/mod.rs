//! The seam between the queue and whatever runs a job.
//!
//! The worker hands each claimed [`Job`] to an [`Executor`] and turns the [`JobResult`] into an
//! outcome. [`WasmExecutor`] runs every job in the sandbox, as production does; [`Handlers`]
//! runs plain async Rust functions, for tests of the queue on its own.

mod handlers;
mod wasm;

use std::future::Future;

use serde_json::value::RawValue;

use crate::job::Job;

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

/// What an attempt produced: an optional JSON result, or an error.
pub type JobResult = Result<Option<Box<RawValue>>, JobError>;

/// Runs jobs.
pub trait Executor: Send + Sync + 'static {
    /// The job types this executor can run now. The runner claims only these, so runners with
    /// different executors can share one database.
    fn job_types(&self) -> Vec<String>;

    /// Runs one attempt of `job`. The future may be dropped (shutdown deadline, lost lease):
    /// the attempt is then abandoned and the worker records what happened.
    fn execute(&self, job: &Job) -> impl Future<Output = JobResult> + Send;
}
