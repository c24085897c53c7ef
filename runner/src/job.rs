//! What a job is: on its way in ([`NewJob`], from the client) and on its way to an executor
//! ([`Job`]: one claimed attempt).

use chrono::{DateTime, Utc};

pub use jobrunner_client::job::*;

/// A claimed job: one attempt, handed to an [`Executor`](crate::Executor).
#[derive(Debug, Clone)]
pub struct Job {
    /// The job's id.
    pub id: i64,
    /// Its type, which selects the handler.
    pub job_type: String,
    /// The tenant it belongs to.
    pub tenant: String,
    /// The payload, JSON text.
    pub payload: String,
    /// Lower runs first.
    pub priority: i32,
    /// This attempt's number, starting at 1.
    pub attempt: u32,
    /// The attempt after which a failure is final.
    pub max_attempts: u32,
    /// When the job became due.
    pub run_at: DateTime<Utc>,
    /// When it was enqueued.
    pub created_at: DateTime<Utc>,
}

impl Job {
    /// A job outside any queue (id 0, tenant `default`, first attempt of the default
    /// maximum), for running a plugin by hand: `runner call`, benchmarks and tests.
    pub fn standalone(job_type: impl Into<String>, payload: impl Into<String>) -> Job {
        let now = Utc::now();
        Job {
            id: 0,
            job_type: job_type.into(),
            tenant: "default".into(),
            payload: payload.into(),
            priority: 0,
            attempt: 1,
            max_attempts: crate::retry::DEFAULT_MAX_ATTEMPTS,
            run_at: now,
            created_at: now,
        }
    }

    /// Whether a failure of this attempt is the last one allowed.
    pub fn is_last_attempt(&self) -> bool {
        self.attempt >= self.max_attempts
    }
}
