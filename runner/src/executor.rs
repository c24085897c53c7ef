//! The seam between the queue and whatever runs a job.
//!
//! The worker hands each claimed [`Job`] to an [`Executor`] and turns the [`JobResult`] into an
//! outcome. The Wasm sandbox is one executor; [`Handlers`] is another, made of plain async Rust
//! functions, used by the built-in demo job types and by tests.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use serde_json::value::RawValue;

use crate::job::Job;

/// Why an attempt did not succeed, mirroring the WIT `job-error` variant.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JobError {
    /// Transient: retry with backoff while attempts remain.
    #[error("{0}")]
    Retry(String),
    /// Permanent: fail the job now.
    #[error("{0}")]
    Fail(String),
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

type BoxedHandler =
    Arc<dyn Fn(Job) -> Pin<Box<dyn Future<Output = JobResult> + Send>> + Send + Sync>;

/// An executor made of async Rust functions, one per job type.
#[derive(Clone, Default)]
pub struct Handlers {
    handlers: HashMap<String, BoxedHandler>,
}

impl std::fmt::Debug for Handlers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set().entries(self.handlers.keys()).finish()
    }
}

impl Handlers {
    /// No handlers.
    pub fn new() -> Self {
        Self::default()
    }

    /// Runs jobs of `job_type` with `handler`.
    pub fn on<F, Fut>(mut self, job_type: impl Into<String>, handler: F) -> Self
    where
        F: Fn(Job) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = JobResult> + Send + 'static,
    {
        let handler: BoxedHandler = Arc::new(move |job| Box::pin(handler(job)));
        self.handlers.insert(job_type.into(), handler);
        self
    }
}

impl Executor for Handlers {
    fn job_types(&self) -> Vec<String> {
        self.handlers.keys().cloned().collect()
    }

    fn execute(&self, job: &Job) -> impl Future<Output = JobResult> + Send {
        let handler = self.handlers.get(&job.job_type).cloned();
        let job = job.clone();
        async move {
            match handler {
                Some(handler) => handler(job).await,
                // Only reachable if a caller bypasses the claim filter.
                None => Err(JobError::Retry(format!(
                    "no handler for job type {:?}",
                    job.job_type
                ))),
            }
        }
    }
}

/// Turns a serializable value into a job result.
pub fn json_result(value: &impl serde::Serialize) -> JobResult {
    serde_json::value::to_raw_value(value)
        .map(Some)
        .map_err(|e| JobError::Fail(format!("result is not serializable: {e}")))
}
