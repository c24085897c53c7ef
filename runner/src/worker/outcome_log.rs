//! The outcome log line: one per attempt, target `jobrunner::outcome`, written once the outcome
//! is committed. The completer and the batch keepers write it for the attempts this runner
//! ran, the rescuer for the attempts it took back from runners whose leases expired or whose
//! batch transactions were lost; operators and tests count them.

use std::collections::HashSet;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tracing::Level;

use super::attempt::Report;
use crate::driver::Outcome;

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

/// What became of an attempt's outcome write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Recorded {
    /// Committed.
    Applied,
    /// Refused by the fence; `after_retry`: an earlier try's reply was lost, so that try may
    /// have committed it.
    Fenced { after_retry: bool },
    /// Its batch transaction was gone: nothing of it was written.
    BatchLost,
}

/// The outcome line of one attempt, once its outcome is committed (or refused, or lost).
pub(super) fn log_outcome(report: &Report, recorded: Recorded) {
    let settlement = &report.settlement;
    let mut line = OutcomeLine {
        job_id: settlement.job_id,
        job_type: &report.job_type,
        tenant: &report.tenant,
        attempt: settlement.attempt,
        error: settlement.outcome.error(),
        duration: Some(report.duration),
        plugin_sha256: settlement.plugin_sha256.as_deref(),
        ..OutcomeLine::default()
    };
    let why_not = match recorded {
        Recorded::Applied => None,
        Recorded::Fenced { after_retry: true } => Some(
            "outcome not applied: recorded by an earlier try whose reply was lost, or the lease \
             was lost",
        ),
        Recorded::Fenced { after_retry: false } => {
            Some("outcome not applied: the lease was lost and another runner owns the job")
        }
        Recorded::BatchLost => Some(
            "outcome not applied: the batch transaction was lost; the job runs again, this \
             attempt counted",
        ),
    };
    if let Some(why_not) = why_not {
        line.outcome = "lease_lost";
        return line.log(Level::WARN, why_not);
    }
    line.outcome = settlement.outcome.label();
    match &settlement.outcome {
        Outcome::Completed { .. } => line.log(Level::INFO, "job completed"),
        Outcome::Retry { run_at, .. } => {
            line.retry_at = Some(*run_at);
            line.log(Level::WARN, "job failed; will retry")
        }
        Outcome::Failed { .. } => line.log(Level::ERROR, "job failed"),
        Outcome::Requeued { reason, .. } => {
            line.reason = Some(reason);
            line.log(Level::INFO, "job requeued")
        }
    }
}

/// The outcome lines of `reports` written in one statement that applied `applied`.
pub(super) fn log_outcomes<'a>(
    reports: impl IntoIterator<Item = &'a Report>,
    applied: &[i64],
    after_retry: bool,
) {
    let applied: HashSet<i64> = applied.iter().copied().collect();
    for report in reports {
        let recorded = if applied.contains(&report.settlement.job_id) {
            Recorded::Applied
        } else {
            Recorded::Fenced { after_retry }
        };
        log_outcome(report, recorded);
    }
}
