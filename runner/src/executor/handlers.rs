//! [`Handlers`]: an executor made of async Rust functions, one per job type.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use super::{Execution, Executor, JobError, JobResult};
use crate::driver::ClaimType;
use crate::job::Job;

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
    fn job_types(&self) -> Arc<[ClaimType]> {
        self.handlers
            .keys()
            .map(|t| ClaimType::from(t.as_str()))
            .collect()
    }

    fn execute(&self, job: &Job) -> impl Future<Output = Execution> + Send {
        let handler = self.handlers.get(&job.job_type).cloned();
        let job = job.clone();
        async move {
            let result = match handler {
                Some(handler) => handler(job).await,
                // Only reachable if a caller bypasses the claim filter.
                None => Err(JobError::no_handler(&job.job_type)),
            };
            Execution::from(result)
        }
    }
}

/// Turns a serializable value into a job result.
pub fn json_result(value: &impl serde::Serialize) -> JobResult {
    serde_json::value::to_raw_value(value)
        .map(Some)
        .map_err(|e| JobError::Fail(format!("result is not serializable: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_job_without_a_handler_goes_back_to_the_queue_uncounted() {
        let handlers = Handlers::new().on("known", |_| async { Ok(None) });
        let execution = handlers.execute(&Job::standalone("unknown", "{}")).await;
        assert_eq!(
            execution.result.unwrap_err(),
            JobError::no_handler("unknown")
        );
        assert!(matches!(JobError::no_handler("t"), JobError::Requeue(_)));
    }
}
