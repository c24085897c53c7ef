//! [`WasmExecutor`]: every attempt in a fresh sandbox instance of the plugin version serving
//! its job type, held to that version's limits.

use std::sync::Arc;

use serde_json::value::RawValue;

use super::{Execution, Executor, JobError, JobResult};
use crate::job::Job;
use crate::plugins::Registry;
use crate::queue::ClaimType;
use crate::sandbox::{Disposition, Run, Sandbox};

/// Runs jobs as WebAssembly components.
#[derive(Debug)]
pub struct WasmExecutor {
    sandbox: Arc<Sandbox>,
    plugins: Arc<Registry>,
}

impl WasmExecutor {
    /// Runs the job types `plugins` serves, as they come and go.
    pub fn new(sandbox: Arc<Sandbox>, plugins: Arc<Registry>) -> Self {
        Self { sandbox, plugins }
    }
}

impl Executor for WasmExecutor {
    fn job_types(&self) -> Arc<[ClaimType]> {
        self.plugins.claim_types()
    }

    async fn execute(&self, job: &Job) -> Execution {
        // Pinned: a swap while the job runs does not change the code under it.
        let Some(version) = self.plugins.get(&job.job_type) else {
            return Execution::from(Err(JobError::Requeue(format!(
                "no plugin loaded for job type {:?}",
                job.job_type
            ))));
        };
        let policy = &version.policy;
        let result = if policy.allows(&job.tenant) {
            job_result(self.sandbox.run(&version.plugin, job, &policy.limits).await)
        } else {
            Err(JobError::Fail(format!(
                "tenant {:?} may not run job type {:?} (its manifest allows {:?})",
                job.tenant,
                job.job_type,
                policy.tenants.as_deref().unwrap_or_default()
            )))
        };
        Execution {
            result,
            backoff: Some(policy.retry.backoff),
            plugin_sha256: Some(Arc::clone(&version.sha256)),
        }
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
