//! The outcome log line: one per attempt, target `jobrunner::outcome`, written once the outcome
//! is committed. The completer writes it for the attempts this runner ran, the rescuer for the
//! attempts it took back from runners whose leases expired; operators and tests count them.

use std::time::Duration;

use chrono::{DateTime, Utc};
use tracing::Level;

/// The fields of one outcome line.
#[derive(Debug, Default)]
pub(super) struct OutcomeLine<'a> {
    pub job_id: i64,
    pub job_type: &'a str,
    pub tenant: &'a str,
    pub attempt: u32,
    /// `completed`, `retry`, `failed`, `requeued` or `lease_lost`.
    pub outcome: &'static str,
    pub error: Option<&'a str>,
    /// How long the attempt ran; unknown for a rescued one.
    pub duration: Option<Duration>,
    pub plugin_sha256: Option<&'a str>,
    pub retry_at: Option<DateTime<Utc>>,
    /// Why a job that did not run was requeued.
    pub reason: Option<&'a str>,
}

macro_rules! outcome_event {
    ($level:expr, $line:expr, $message:expr) => {
        tracing::event!(
            target: "jobrunner::outcome",
            $level,
            job_id = $line.job_id,
            job_type = %$line.job_type,
            tenant = %$line.tenant,
            attempt = $line.attempt,
            outcome = $line.outcome,
            duration_ms = $line.duration.map(|d| d.as_micros() as f64 / 1e3),
            error = $line.error,
            plugin_sha256 = $line.plugin_sha256,
            retry_at = $line.retry_at.map(tracing::field::display),
            reason = $line.reason,
            "{}",
            $message
        )
    };
}

impl OutcomeLine<'_> {
    /// Writes the line at `level` (a callsite per level: tracing's levels are static).
    pub fn log(&self, level: Level, message: &str) {
        match level {
            Level::ERROR => outcome_event!(Level::ERROR, self, message),
            Level::WARN => outcome_event!(Level::WARN, self, message),
            Level::INFO => outcome_event!(Level::INFO, self, message),
            Level::DEBUG => outcome_event!(Level::DEBUG, self, message),
            Level::TRACE => outcome_event!(Level::TRACE, self, message),
        }
    }
}
