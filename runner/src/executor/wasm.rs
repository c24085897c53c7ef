//! [`WasmExecutor`]: every attempt in a fresh sandbox instance of the plugin version serving
//! its job type, held to that version's limits with its tenant's overrides.

use std::sync::Arc;

use serde_json::value::RawValue;

use super::{Execution, Executor, JobError, JobResult};
use crate::driver::ClaimType;
use crate::job::Job;
use crate::plugins::{Policy, Registry};
use crate::sandbox::{Disposition, Limits, Run, Sandbox};
use crate::tenants::SharedTenants;

/// Runs jobs as WebAssembly components.
#[derive(Debug)]
pub struct WasmExecutor {
    sandbox: Arc<Sandbox>,
    plugins: Arc<Registry>,
    tenants: SharedTenants,
}

impl WasmExecutor {
    /// Runs the job types `plugins` serves, as they come and go, with no tenant policy.
    pub fn new(sandbox: Arc<Sandbox>, plugins: Arc<Registry>) -> Self {
        Self {
            sandbox,
            plugins,
            tenants: SharedTenants::default(),
        }
    }

    /// The sandbox the jobs run in.
    pub fn sandbox(&self) -> &Arc<Sandbox> {
        &self.sandbox
    }

    /// Applies `tenants` (as it changes) to every job: the types each tenant may run and its
    /// sandbox limit overrides.
    pub fn with_tenants(self, tenants: SharedTenants) -> Self {
        Self { tenants, ..self }
    }

    /// Why `job` may not run, if its tenant's policy or its type's manifest forbids it; else
    /// the limits it runs under.
    fn admit(&self, job: &Job, policy: &Policy) -> Result<Limits, JobError> {
        if !policy.allows(&job.tenant) {
            return Err(JobError::Fail(format!(
                "tenant {:?} may not run job type {:?} (its manifest allows {:?})",
                job.tenant,
                job.job_type,
                policy.tenants.as_deref().unwrap_or_default()
            )));
        }
        let tenants = self.tenants.load();
        let tenant = tenants.policy(&job.tenant);
        if !tenant.allows(&job.job_type) {
            return Err(JobError::Fail(format!(
                "tenant {:?} may not run job type {:?} (its tenant policy allows {:?})",
                job.tenant,
                job.job_type,
                tenant.job_types.as_deref().unwrap_or_default()
            )));
        }
        Ok(tenant.limits(&policy.limits, self.sandbox.config()))
    }
}

impl Executor for WasmExecutor {
    fn job_types(&self) -> Arc<[ClaimType]> {
        self.plugins.claim_types()
    }

    fn runtime(&self) -> Option<tokio::runtime::Handle> {
        Some(self.sandbox.guest_threads())
    }

    async fn execute(&self, job: &Job) -> Execution {
        // Pinned: a swap while the job runs does not change the code under it.
        let Some(version) = self.plugins.get(&job.job_type) else {
            return Execution::from(Err(JobError::no_handler(&job.job_type)));
        };
        let policy = &version.policy;
        let mut execution = match self.admit(job, policy) {
            Ok(limits) => execution(self.sandbox.run(&version.plugin, job, &limits).await),
            Err(refused) => Execution::from(Err(refused)),
        };
        execution.backoff = Some(policy.retry.backoff);
        execution.plugin_sha256 = Some(Arc::clone(&version.sha256));
        execution
    }
}

/// A sandbox run in the queue's terms.
fn execution(mut run: Run) -> Execution {
    let follow_ups = std::mem::take(&mut run.follow_ups);
    let retry_delay = run.retry_delay;
    let journal = run.journal.take();
    Execution {
        follow_ups,
        retry_delay,
        journal,
        ..Execution::from(job_result(run))
    }
}

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
