//! Follow-up jobs (the world's `jobs` interface), deny by default: a guest may enqueue jobs
//! of the types its manifest lists (`enqueue = [...]`) that its tenant's policy allows, in its
//! own tenant, at most [`JobsGrant::max_follow_ups`] per attempt. They are kept with the
//! attempt and written by the worker in the transaction that records its completion: an
//! attempt that fails, is retried or traps leaves none.
//!
//! `set-retry-delay` lets a guest say how long to wait before its next attempt (an HTTP
//! `Retry-After`), used if the attempt returns `retry`.

use std::sync::Arc;
use std::time::Duration;

use chrono::DateTime;

use wasmtime::component::{HasSelf, Linker};

use super::{Capability, GuestState, JobLabel, Services};
use crate::job::{MAX_PAYLOAD_BYTES, NewJob};
use crate::sandbox::Limits;
use crate::sandbox::bindings::jobrunner::plugin::jobs::{self, EnqueueError, EnqueueOptions};

/// The log target of follow-ups refused and kept.
const TARGET: &str = "jobrunner::jobs";

/// Payload bytes of all of an attempt's follow-ups together.
pub const MAX_FOLLOW_UP_BYTES: usize = MAX_PAYLOAD_BYTES;

/// What one attempt may enqueue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobsGrant {
    /// The job types the plugin's manifest lists.
    pub enqueue: Arc<[String]>,
    /// The job types the tenant's policy allows; `None`: all.
    pub tenant_job_types: Option<Arc<[String]>>,
    /// Follow-ups per attempt.
    pub max_follow_ups: u32,
}

impl Default for JobsGrant {
    fn default() -> Self {
        Self {
            enqueue: Arc::from([]),
            tenant_job_types: None,
            max_follow_ups: 100,
        }
    }
}

impl JobsGrant {
    fn allows(&self, job_type: &str) -> Result<(), EnqueueError> {
        if !self.enqueue.iter().any(|t| t == job_type) {
            return Err(EnqueueError::NotAllowed(format!(
                "job type {job_type:?} is not in the plugin manifest's `enqueue` list {:?}",
                self.enqueue
            )));
        }
        if let Some(types) = &self.tenant_job_types
            && !types.iter().any(|t| t == job_type)
        {
            return Err(EnqueueError::NotAllowed(format!(
                "the tenant's policy does not allow job type {job_type:?} (it allows {types:?})"
            )));
        }
        Ok(())
    }
}

/// The follow-ups capability.
pub(crate) struct Jobs;

/// One attempt's follow-ups and retry delay.
pub(crate) struct JobsState {
    job: Arc<JobLabel>,
    grant: JobsGrant,
    kept: Vec<NewJob>,
    bytes: usize,
    retry_delay: Option<Duration>,
}

impl JobsState {
    /// The follow-ups the attempt kept, in the order it asked for them.
    pub fn take_follow_ups(&mut self) -> Vec<NewJob> {
        std::mem::take(&mut self.kept)
    }

    /// The delay the guest asked for before its next attempt.
    pub fn retry_delay(&self) -> Option<Duration> {
        self.retry_delay
    }

    fn enqueue(
        &mut self,
        job_type: &str,
        payload: &str,
        options: EnqueueOptions,
    ) -> Result<(), EnqueueError> {
        self.grant.allows(job_type)?;
        if self.kept.len() >= self.grant.max_follow_ups as usize {
            return Err(EnqueueError::LimitReached(format!(
                "an attempt may enqueue {} follow-ups",
                self.grant.max_follow_ups
            )));
        }
        let payload = self.job.redactor().redact(payload);
        if self.bytes + payload.len() > MAX_FOLLOW_UP_BYTES {
            return Err(EnqueueError::LimitReached(format!(
                "an attempt's follow-ups may carry {MAX_FOLLOW_UP_BYTES} bytes of payload"
            )));
        }
        let job = follow_up(&self.job, job_type, &payload, options)?;
        self.bytes += payload.len();
        self.kept.push(job);
        Ok(())
    }
}

/// The follow-up `job_type` with `payload` and `options`, in the parent's tenant, checked as
/// the queue would check it.
fn follow_up(
    parent: &JobLabel,
    job_type: &str,
    payload: &str,
    options: EnqueueOptions,
) -> Result<NewJob, EnqueueError> {
    let invalid = |e: &dyn std::fmt::Display| EnqueueError::Invalid(e.to_string());
    let mut job = NewJob::from_json_text(job_type, payload)
        .map_err(|e| invalid(&e))?
        .tenant(parent.tenant.clone())
        .parent(parent.id)
        .priority(options.priority.unwrap_or(0));
    job = match (options.run_at, options.delay_ms) {
        (Some(_), Some(_)) => return Err(invalid(&"give run-at or delay-ms, not both")),
        (Some(at), None) => {
            let at = i64::try_from(at.seconds)
                .ok()
                .and_then(|seconds| DateTime::from_timestamp(seconds, at.nanoseconds))
                .ok_or_else(|| invalid(&"run-at is out of range"))?;
            job.run_at(at)
        }
        (None, Some(ms)) => job.delay(Duration::from_millis(ms)),
        (None, None) => job,
    };
    if let Some(max) = options.max_attempts {
        job = job.max_attempts(max);
    }
    if let Some(key) = options.unique_key {
        job = job.unique_key(key);
    }
    job.validate().map_err(|e| invalid(&e))?;
    Ok(job)
}

impl Capability for Jobs {
    type State = JobsState;

    fn add_to_linker(linker: &mut Linker<GuestState>) -> wasmtime::Result<()> {
        jobs::add_to_linker::<_, HasSelf<GuestState>>(linker, |state| state)
    }

    fn start(job: &Arc<JobLabel>, limits: &Limits, _services: &Services) -> JobsState {
        JobsState {
            job: Arc::clone(job),
            grant: limits.jobs.clone(),
            kept: Vec::new(),
            bytes: 0,
            retry_delay: None,
        }
    }

    fn finish(_state: &mut JobsState) {}
}

impl jobs::Host for GuestState {
    async fn enqueue(
        &mut self,
        job_type: String,
        payload: String,
        options: EnqueueOptions,
    ) -> Result<(), EnqueueError> {
        let state = &mut self.jobs;
        let kept = state.enqueue(&job_type, &payload, options);
        let job = &state.job;
        match &kept {
            Ok(()) => tracing::debug!(
                target: TARGET,
                job_id = job.id, job_type = %job.job_type, tenant = %job.tenant, attempt = job.attempt,
                follow_up = %job_type, "follow-up kept until the attempt completes"
            ),
            Err(error) => tracing::warn!(
                target: TARGET,
                job_id = job.id, job_type = %job.job_type, tenant = %job.tenant, attempt = job.attempt,
                follow_up = %job_type, error = %describe(error), "follow-up refused"
            ),
        }
        kept
    }

    async fn set_retry_delay(&mut self, delay_ms: u64) {
        self.jobs.retry_delay = Some(Duration::from_millis(delay_ms));
    }
}

fn describe(error: &EnqueueError) -> &str {
    match error {
        EnqueueError::NotAllowed(m) | EnqueueError::Invalid(m) | EnqueueError::LimitReached(m) => m,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(grant: JobsGrant) -> JobsState {
        let job = Arc::new(JobLabel {
            id: 7,
            job_type: "parent".into(),
            tenant: "acme".into(),
            attempt: 1,
            secrets: Arc::new(crate::secrets::Secrets::of(&[("token", "s3cret-value")])),
            journal: Arc::new(crate::sandbox::host::journal::Journal::new(1, 0)),
        });
        JobsState {
            job,
            grant,
            kept: Vec::new(),
            bytes: 0,
            retry_delay: None,
        }
    }

    fn options() -> EnqueueOptions {
        EnqueueOptions {
            run_at: None,
            delay_ms: None,
            priority: None,
            unique_key: None,
            max_attempts: None,
        }
    }

    #[test]
    fn only_granted_types_within_the_limits_are_kept_redacted() {
        let mut s = state(JobsGrant {
            enqueue: Arc::from(["child".to_owned()]),
            tenant_job_types: Some(Arc::from(["other".to_owned()])),
            max_follow_ups: 1,
        });
        let refused = s.enqueue("child", "{}", options()).unwrap_err();
        assert!(
            describe(&refused).contains("tenant's policy"),
            "{refused:?}"
        );
        s.grant.tenant_job_types = None;
        let refused = s.enqueue("sneaky", "{}", options()).unwrap_err();
        assert!(matches!(refused, EnqueueError::NotAllowed(_)));
        let invalid = s.enqueue("child", "{not json", options()).unwrap_err();
        assert!(matches!(invalid, EnqueueError::Invalid(_)));
        // It would stop the completer: the database refuses it when the parent completes.
        let nul = s
            .enqueue("child", r#"{"x": "\u0000"}"#, options())
            .unwrap_err();
        assert!(describe(&nul).contains("jsonb"), "{nul:?}");
        let both = EnqueueOptions {
            delay_ms: Some(1),
            run_at: Some(jobs::Datetime {
                seconds: 1,
                nanoseconds: 0,
            }),
            ..options()
        };
        assert!(matches!(
            s.enqueue("child", "{}", both),
            Err(EnqueueError::Invalid(_))
        ));
        s.enqueue("child", r#"{"t":"s3cret-value"}"#, options())
            .unwrap();
        assert!(matches!(
            s.enqueue("child", "{}", options()),
            Err(EnqueueError::LimitReached(_))
        ));
        let kept = s.take_follow_ups();
        assert_eq!(kept[0].payload(), r#"{"t":"[redacted:token]"}"#);
    }
}
