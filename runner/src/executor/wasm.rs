//! [`WasmExecutor`]: every attempt in a fresh sandbox instance of its job type's plugin.

use std::sync::Arc;

use serde_json::value::RawValue;

use super::{Executor, JobError, JobResult};
use crate::job::Job;
use crate::plugins::Registry;
use crate::sandbox::{Disposition, Limits, Run, Sandbox};

/// Runs jobs as WebAssembly components.
#[derive(Debug)]
pub struct WasmExecutor {
    sandbox: Arc<Sandbox>,
    plugins: Arc<Registry>,
    limits: Limits,
}

impl WasmExecutor {
    /// Runs the job types in `plugins`, each attempt held to `limits`.
    pub fn new(sandbox: Arc<Sandbox>, plugins: Arc<Registry>, limits: Limits) -> Self {
        Self {
            sandbox,
            plugins,
            limits,
        }
    }
}

impl Executor for WasmExecutor {
    fn job_types(&self) -> Vec<String> {
        self.plugins.job_types()
    }

    async fn execute(&self, job: &Job) -> JobResult {
        let Some(plugin) = self.plugins.get(&job.job_type) else {
            return Err(JobError::Requeue(format!(
                "no plugin loaded for job type {:?}",
                job.job_type
            )));
        };
        job_result(self.sandbox.run(&plugin, job, &self.limits).await)
    }
}

/// A sandbox run in the queue's terms.
fn job_result(run: Run) -> JobResult {
    let report = run.error_report();
    match run.result {
        Ok(None) => Ok(None),
        Ok(Some(json)) => RawValue::from_string(json)
            .map(Some)
            .map_err(|e| JobError::Fail(format!("result is not valid JSON: {e}"))),
        Err(error) => {
            let report = report.unwrap_or_else(|| error.to_string());
            Err(match error.disposition() {
                Disposition::Retry => JobError::Retry(report),
                Disposition::Fail => JobError::Fail(report),
                Disposition::Requeue => JobError::Requeue(report),
            })
        }
    }
}
