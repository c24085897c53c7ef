//! The outcome log line: one per attempt, target `jobrunner::outcome`, written before the
//! statement that records the outcome is sent (see [`log_intended`]), and corrected by a
//! later line if the outcome is not applied. The completer and the batch keepers write it for
//! the attempts this runner ran, the rescuer for the attempts it took back from runners whose
//! leases expired or whose batch transactions were lost; operators and tests count them.

use std::collections::HashSet;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tracing::Level;

use super::attempt::Report;
use crate::driver::Outcome;

/// The log target of outcome lines.
pub const TARGET: &str = "jobrunner::outcome";

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

impl<'a> OutcomeLine<'a> {
    /// The line of the attempt `report` tells of, as its outcome says.
    fn of(report: &'a Report) -> Self {
        let settlement = &report.settlement;
        OutcomeLine {
            job_id: settlement.job_id,
            job_type: &report.job_type,
            tenant: &report.tenant,
            attempt: settlement.attempt,
            outcome: settlement.outcome.label(),
            error: settlement.outcome.error(),
            duration: Some(report.duration),
            plugin_sha256: settlement.plugin_sha256.as_deref(),
            ..OutcomeLine::default()
        }
    }

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

/// Why an outcome line written before its statement did not come true.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum NotApplied {
    /// Refused by the fence; `after_retry`: an earlier try's reply was lost, so that try may
    /// have committed it.
    Fenced { after_retry: bool },
    /// Its batch transaction was gone: nothing of it was written.
    BatchLost,
}

/// Writes the outcome lines of `reports` — each as if its outcome will be applied — in one
/// write, straight to the log, before the statement that records them is sent: a line is
/// never lost to a crash that its outcome survives. What does not come true is corrected by
/// a later line for the same job and attempt: [`log_recorded`] here, or the rescuer's on
/// another runner if this one dies first. The last line of an attempt is its outcome.
pub(super) fn log_intended<'a>(reports: impl IntoIterator<Item = &'a Report>) {
    writer::at_once(|| reports.into_iter().for_each(log_outcome));
}

/// After the statement: counts each applied outcome, and corrects the line of each other.
pub(super) fn log_recorded<'a>(
    reports: impl IntoIterator<Item = &'a Report>,
    applied: &[i64],
    after_retry: bool,
) {
    let applied: HashSet<i64> = applied.iter().copied().collect();
    for report in reports {
        if applied.contains(&report.settlement.job_id) {
            count_applied(report);
        } else {
            log_not_applied(report, NotApplied::Fenced { after_retry });
        }
    }
}

/// Counts an applied outcome, and the follow-ups a completion enqueued.
fn count_applied(report: &Report) {
    let (job_type, tenant) = (&report.job_type, &report.tenant);
    let outcome = &report.settlement.outcome;
    crate::metrics::outcome(job_type, tenant, outcome.label(), Some(report.duration));
    if let Outcome::Completed { follow_ups, .. } = outcome {
        crate::metrics::follow_ups(job_type, tenant, follow_ups.len());
        for follow_up in follow_ups {
            crate::metrics::enqueued(follow_up.job_type(), tenant, "follow_up", 1);
        }
    }
}

/// The line of an attempt whose outcome was written as intended, then not applied.
pub(super) fn log_not_applied(report: &Report, why: NotApplied) {
    let line = OutcomeLine {
        outcome: "lease_lost",
        ..OutcomeLine::of(report)
    };
    let why = match why {
        NotApplied::Fenced { after_retry: true } => {
            "outcome not applied: recorded by an earlier try whose reply was lost, or the lease \
             was lost"
        }
        NotApplied::Fenced { after_retry: false } => {
            "outcome not applied: the lease was lost and another runner owns the job"
        }
        NotApplied::BatchLost => {
            "outcome not applied: the batch transaction was lost; the job runs again, this \
             attempt counted"
        }
    };
    line.log(Level::WARN, why);
}

/// The outcome line of one attempt.
fn log_outcome(report: &Report) {
    let settlement = &report.settlement;
    let mut line = OutcomeLine::of(report);
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
        Outcome::Cancelled { by } => {
            line.reason = Some(by);
            line.log(Level::INFO, "job cancelled")
        }
    }
}

pub mod writer {
    //! Where outcome lines go: straight to the log's file descriptor, never through the
    //! buffer the other lines share (which a killed process loses). The lines of one
    //! statement are gathered and written with one `write(2)`.

    use std::cell::RefCell;
    use std::io::Write;
    use std::sync::OnceLock;

    use tracing_subscriber::fmt::MakeWriter;

    /// The log's stream.
    #[derive(Debug, Clone, Copy)]
    pub enum Stream {
        /// Standard output (JSON logs).
        Stdout,
        /// Standard error (text logs).
        Stderr,
    }

    static STREAM: OnceLock<Stream> = OnceLock::new();

    thread_local! {
        /// The lines of the statement being logged on this thread, while [`at_once`] runs.
        static GATHERED: RefCell<Option<Vec<u8>>> = const { RefCell::new(None) };
    }

    /// The `MakeWriter` of outcome lines, writing to `stream`.
    #[derive(Debug, Clone, Copy)]
    pub struct OutcomeWriter;

    impl OutcomeWriter {
        /// Outcome lines go to `stream` from now on.
        pub fn to(stream: Stream) -> Self {
            let _ = STREAM.set(stream);
            OutcomeWriter
        }
    }

    impl<'a> MakeWriter<'a> for OutcomeWriter {
        type Writer = Line;

        fn make_writer(&'a self) -> Line {
            Line
        }
    }

    /// One formatted line on its way out.
    pub struct Line;

    impl Write for Line {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            let gathered = GATHERED.with_borrow_mut(|gathered| match gathered {
                Some(buffer) => {
                    buffer.extend_from_slice(bytes);
                    true
                }
                None => false,
            });
            if !gathered {
                write_out(bytes)?;
            }
            Ok(bytes.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn write_out(bytes: &[u8]) -> std::io::Result<()> {
        match STREAM.get().copied().unwrap_or(Stream::Stderr) {
            Stream::Stdout => std::io::stdout().lock().write_all(bytes),
            Stream::Stderr => std::io::stderr().lock().write_all(bytes),
        }
    }

    /// Runs `log`, then writes every outcome line it logged on this thread with one write.
    pub(in crate::worker) fn at_once(log: impl FnOnce()) {
        GATHERED.with_borrow_mut(|gathered| *gathered = Some(Vec::new()));
        log();
        let lines = GATHERED.with_borrow_mut(Option::take).unwrap_or_default();
        if !lines.is_empty()
            && let Err(error) = write_out(&lines)
        {
            tracing::error!(%error, "cannot write outcome lines to the log");
        }
    }
}
