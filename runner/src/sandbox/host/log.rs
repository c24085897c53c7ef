//! The `host.log` import: a guest's log lines, attributed to its job and capped.
//!
//! Granted to every guest, limited the same for all: each line goes to `tracing` (target
//! `jobrunner::guest`) with the job's id, type, tenant and attempt as fields, so the guest
//! cannot pass itself off as another job. A token bucket caps the rate and each line is cut at
//! [`MAX_LINE`] bytes; what was dropped is reported once, when the attempt ends.

use std::time::Instant;

use wasmtime::component::{HasSelf, Linker};

use super::{Capability, GuestState, JobLabel};
use crate::sandbox::Limits;
use crate::sandbox::bindings::Level;
use crate::sandbox::bindings::jobrunner::plugin::host;

/// Longest line kept, in bytes; the rest is cut off and marked.
pub const MAX_LINE: usize = 4096;
/// Lines a job may write at once before the rate cap applies.
pub const BURST: f64 = 100.0;
/// Lines per second a job may write after its burst.
pub const PER_SECOND: f64 = 20.0;

/// The `host.log` capability.
pub(crate) struct Log;

impl Capability for Log {
    type State = GuestLog;

    fn add_to_linker(linker: &mut Linker<GuestState>) -> wasmtime::Result<()> {
        host::add_to_linker::<_, HasSelf<GuestState>>(linker, |state| state)
    }

    fn start(job: &JobLabel, _limits: &Limits) -> GuestLog {
        GuestLog::new(job.clone())
    }

    fn finish(state: &mut GuestLog) {
        state.finish();
    }
}

impl host::Host for GuestState {
    async fn log(&mut self, level: Level, message: String) {
        self.log.write(level, &message);
    }
}

/// One attempt's log: its label and rate budget.
#[derive(Debug)]
pub(crate) struct GuestLog {
    job: JobLabel,
    tokens: f64,
    refilled: Instant,
    dropped: u64,
}

impl GuestLog {
    pub fn new(job: JobLabel) -> Self {
        Self {
            job,
            tokens: BURST,
            refilled: Instant::now(),
            dropped: 0,
        }
    }

    /// Writes one guest line, unless the job is over its rate.
    pub fn write(&mut self, level: Level, message: &str) {
        let now = Instant::now();
        let earned = now.duration_since(self.refilled).as_secs_f64() * PER_SECOND;
        self.tokens = (self.tokens + earned).min(BURST);
        self.refilled = now;
        if self.tokens < 1.0 {
            self.dropped += 1;
            return;
        }
        self.tokens -= 1.0;
        emit(&self.job, level, &clip(message));
    }

    /// Reports, once, how many lines the rate cap dropped.
    pub fn finish(&self) {
        if self.dropped > 0 {
            let message = format!(
                "{} log lines dropped: the guest wrote more than {BURST} lines at once or \
                 {PER_SECOND} per second",
                self.dropped
            );
            emit(&self.job, Level::Warn, &message);
        }
    }
}

fn clip(message: &str) -> std::borrow::Cow<'_, str> {
    if message.len() <= MAX_LINE {
        return message.into();
    }
    let end = message.floor_char_boundary(MAX_LINE);
    format!("{}… [{} bytes cut]", &message[..end], message.len() - end).into()
}

macro_rules! guest_event {
    ($level:expr, $job:expr, $($fields_then_message:tt)+) => {
        tracing::event!(
            target: "jobrunner::guest",
            $level,
            job_id = $job.id,
            job_type = %$job.job_type,
            tenant = %$job.tenant,
            attempt = $job.attempt,
            $($fields_then_message)+
        )
    };
}

/// Logs what the guest wrote to `stream` (stdout or stderr) during the attempt, as one event.
pub(crate) fn emit_output(job: &JobLabel, stream: &'static str, text: &str) {
    guest_event!(tracing::Level::INFO, job, stream, "{}", text.trim_end());
}

fn emit(job: &JobLabel, level: Level, message: &str) {
    use tracing::Level as L;
    match level {
        Level::Trace => guest_event!(L::TRACE, job, "{message}"),
        Level::Debug => guest_event!(L::DEBUG, job, "{message}"),
        Level::Info => guest_event!(L::INFO, job, "{message}"),
        Level::Warn => guest_event!(L::WARN, job, "{message}"),
        Level::Error => guest_event!(L::ERROR, job, "{message}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log() -> GuestLog {
        GuestLog::new(JobLabel {
            id: 1,
            job_type: "t".into(),
            tenant: "default".into(),
            attempt: 1,
        })
    }

    #[test]
    fn a_flood_is_cut_to_the_burst() {
        let mut log = log();
        for _ in 0..10_000 {
            log.write(Level::Info, "flood");
        }
        // The loop takes far less than a second: at most a few refilled tokens.
        assert!((10_000 - BURST as u64 - 20..=10_000 - BURST as u64).contains(&log.dropped));
    }

    #[test]
    fn long_lines_are_cut_on_a_char_boundary() {
        let line = "é".repeat(MAX_LINE);
        let clipped = clip(&line);
        assert!(clipped.len() < MAX_LINE + 40);
        assert!(clipped.ends_with(&format!("[{} bytes cut]", line.len() - MAX_LINE)));
        assert_eq!(clip("short"), "short");
    }
}
