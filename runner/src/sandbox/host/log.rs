//! The `host.log` import: a guest's log lines, attributed to its job and capped.
//!
//! Granted to every guest, limited the same for all: each line goes to `tracing` (target
//! `jobrunner::guest`) with the job's id, type, tenant and attempt as fields, so the guest
//! cannot pass itself off as another job. A token bucket caps the rate and each line is cut at
//! [`MAX_LINE`] bytes; what was dropped is reported once, when the attempt ends.
//!
//! The line is read where it lies in the guest's memory: one over the rate is dropped unread,
//! and of a UTF-8 line only the part that is kept is copied, however long the guest made it (a
//! UTF-16 one is decoded whole first). Secrets in it are redacted before it is written.

use std::sync::Arc;
use std::time::Instant;

use wasmtime::StoreContextMut;
use wasmtime::component::{Linker, WasmStr};

use super::{Capability, GuestState, JobLabel, Services};
use crate::sandbox::Limits;
use crate::sandbox::bindings::Level;
use crate::text::{clip, clip_part};

/// The interface `log` belongs to, as the world names it.
const INTERFACE: &str = "jobrunner:plugin/host@0.1.0";

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

    /// By hand rather than through the generated bindings, which would copy the whole
    /// message into the host before it could be looked at.
    fn add_to_linker(linker: &mut Linker<GuestState>) -> wasmtime::Result<()> {
        linker.instance(INTERFACE)?.func_wrap(
            "log",
            |mut store: StoreContextMut<'_, GuestState>, (level, message): (Level, WasmStr)| {
                if store.data_mut().log.admit() {
                    // Read past the cut by the longest secret's length, so that a secret the
                    // cut would split is redacted whole before the line is cut.
                    let job = Arc::clone(&store.data().log.job);
                    let redactor = job.redactor();
                    let text = message.to_str(&store)?;
                    let head = &text[..text.floor_char_boundary(MAX_LINE + redactor.longest())];
                    let redacted = redactor.redact(head);
                    let line = if head.len() < text.len() {
                        clip_part(&redacted, MAX_LINE, text.len())
                    } else {
                        clip(&redacted, MAX_LINE).into_owned()
                    };
                    store.data().log.write(level, &line);
                }
                Ok(())
            },
        )
    }

    fn start(job: &Arc<JobLabel>, _limits: &Limits, _services: &Services) -> GuestLog {
        GuestLog::new(Arc::clone(job))
    }

    fn finish(state: &mut GuestLog) {
        state.finish();
    }
}

/// One attempt's log: its label and rate budget.
#[derive(Debug)]
pub(crate) struct GuestLog {
    job: Arc<JobLabel>,
    tokens: f64,
    refilled: Instant,
    dropped: u64,
}

impl GuestLog {
    pub fn new(job: Arc<JobLabel>) -> Self {
        Self {
            job,
            tokens: BURST,
            refilled: Instant::now(),
            dropped: 0,
        }
    }

    /// Takes a token for one line: false (and the line is counted as dropped) if the job is
    /// over its rate.
    pub fn admit(&mut self) -> bool {
        let now = Instant::now();
        let earned = now.duration_since(self.refilled).as_secs_f64() * PER_SECOND;
        self.tokens = (self.tokens + earned).min(BURST);
        self.refilled = now;
        if self.tokens < 1.0 {
            self.dropped += 1;
            return false;
        }
        self.tokens -= 1.0;
        true
    }

    /// Writes one admitted line.
    pub fn write(&self, level: Level, line: &str) {
        emit(&self.job, level, line);
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
    job.journal.line(stream, text.trim_end());
    guest_event!(tracing::Level::INFO, job, stream, "{}", text.trim_end());
}

fn emit(job: &JobLabel, level: Level, message: &str) {
    use tracing::Level as L;
    let label = match level {
        Level::Trace => "TRACE",
        Level::Debug => "DEBUG",
        Level::Info => "INFO",
        Level::Warn => "WARN",
        Level::Error => "ERROR",
    };
    job.journal.line(label, message);
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
        GuestLog::new(Arc::new(JobLabel {
            id: 1,
            job_type: "t".into(),
            tenant: "default".into(),
            attempt: 1,
            secrets: Arc::default(),
            journal: Arc::new(super::super::journal::Journal::new(1, 0)),
        }))
    }

    #[test]
    fn a_flood_is_cut_to_the_burst() {
        let mut log = log();
        for _ in 0..10_000 {
            log.admit();
        }
        // The loop takes far less than a second: at most a few refilled tokens.
        assert!((10_000 - BURST as u64 - 20..=10_000 - BURST as u64).contains(&log.dropped));
    }
}
