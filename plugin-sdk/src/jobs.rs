//! Follow-up jobs: a handler hands work on to other jobs, in its own tenant, of the types its
//! manifest lists (and its tenant's policy allows):
//!
//! ```toml
//! # <job-type>.toml
//! enqueue = ["slack-notify"]
//! ```
//!
//! A follow-up is kept with the attempt and enqueued in the transaction that records the
//! attempt's completion: if the attempt fails, is retried or panics, none of its follow-ups
//! exist, and a retry that completes enqueues only its own. Each follow-up records its parent
//! (`runner jobs show`, `runner jobs list --parent`).
//!
//! ```no_run
//! use jobrunner_plugin_sdk::{enqueue, handler, jobs::Options, Job, JobError, OrJobError};
//! use serde_json::json;
//!
//! handler!(fan_out);
//!
//! fn fan_out(job: Job<Vec<String>>) -> Result<(), JobError> {
//!     for user in &job.payload {
//!         let key = format!("remind:{user}");
//!         enqueue("slack-notify", &json!({ "user": user }), Options::new().unique_key(key))
//!             .or_fail()?;
//!     }
//!     Ok(())
//! }
//! ```

use std::fmt;
use std::time::{Duration, SystemTime};

use serde::Serialize;

use crate::bindings::jobrunner::plugin::jobs::{self, EnqueueError, EnqueueOptions};
use crate::bindings::wasi::clocks::wall_clock::Datetime;

/// How a follow-up runs: each unset option takes the queue's default.
#[derive(Debug, Clone, Default)]
pub struct Options {
    run_at: Option<SystemTime>,
    delay: Option<Duration>,
    priority: Option<i32>,
    unique_key: Option<String>,
    max_attempts: Option<u32>,
}

impl Options {
    /// Due when enqueued, priority 0, deduplicated by payload, its type's attempts.
    pub fn new() -> Self {
        Self::default()
    }

    /// Ripe at `at` (instead of when enqueued).
    pub fn run_at(mut self, at: SystemTime) -> Self {
        self.run_at = Some(at);
        self
    }

    /// Ripe `delay` after it is enqueued (when the attempt's completion is recorded).
    pub fn delay(mut self, delay: Duration) -> Self {
        self.delay = Some(delay);
        self
    }

    /// Lower runs first among ripe jobs.
    pub fn priority(mut self, priority: i32) -> Self {
        self.priority = Some(priority);
        self
    }

    /// At most one pending job of the tenant has this key: a follow-up whose key is pending
    /// already, whichever job enqueued it, is dropped.
    pub fn unique_key(mut self, key: impl Into<String>) -> Self {
        self.unique_key = Some(key.into());
        self
    }

    /// Attempts before the follow-up fails for good.
    pub fn max_attempts(mut self, max_attempts: u32) -> Self {
        self.max_attempts = Some(max_attempts);
        self
    }

    fn into_wit(self) -> EnqueueOptions {
        let run_at = self.run_at.map(|at| {
            let since = at
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap_or_default();
            Datetime {
                seconds: since.as_secs(),
                nanoseconds: since.subsec_nanos(),
            }
        });
        EnqueueOptions {
            run_at,
            delay_ms: self
                .delay
                .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
            priority: self.priority,
            unique_key: self.unique_key,
            max_attempts: self.max_attempts,
        }
    }
}

/// Why a follow-up was refused. The attempt goes on; nothing was kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refused {
    /// The manifest's `enqueue` list or the tenant's policy does not allow the job type.
    NotAllowed(String),
    /// The job type, payload or options are invalid.
    Invalid(String),
    /// The attempt keeps as many follow-ups (or payload bytes) as it may.
    LimitReached(String),
}

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refused::NotAllowed(m) => write!(f, "follow-up not allowed: {m}"),
            Refused::Invalid(m) => write!(f, "invalid follow-up: {m}"),
            Refused::LimitReached(m) => write!(f, "follow-up limit reached: {m}"),
        }
    }
}

impl std::error::Error for Refused {}

/// Keeps a follow-up job of `job_type` with `payload` (serialized to JSON), enqueued when this
/// attempt completes.
pub fn enqueue(job_type: &str, payload: &impl Serialize, options: Options) -> Result<(), Refused> {
    let payload =
        serde_json::to_string(payload).map_err(|e| Refused::Invalid(format!("payload: {e}")))?;
    enqueue_json(job_type, &payload, options)
}

/// Like [`enqueue`], with the payload as JSON text.
pub fn enqueue_json(job_type: &str, payload: &str, options: Options) -> Result<(), Refused> {
    jobs::enqueue(job_type, payload, &options.into_wit()).map_err(|e| match e {
        EnqueueError::NotAllowed(m) => Refused::NotAllowed(m),
        EnqueueError::Invalid(m) => Refused::Invalid(m),
        EnqueueError::LimitReached(m) => Refused::LimitReached(m),
    })
}

/// If this attempt returns [`JobError::Retry`](crate::JobError::Retry), the next attempt waits
/// `delay` instead of the backoff (up to the backoff's cap): an HTTP `Retry-After`, say.
pub fn retry_after(delay: Duration) {
    jobs::set_retry_delay(u64::try_from(delay.as_millis()).unwrap_or(u64::MAX));
}
