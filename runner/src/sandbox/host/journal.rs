//! One attempt's journal: the tail of what its guest logged (log lines, stdout, stderr) and
//! the outgoing HTTP requests it made, kept with the job when the outcome is written (see
//! [`AttemptLog`]), so that an operator reads them after the runner is gone. Secrets are
//! redacted before anything reaches it: it is fed from the same lines as the host's log.

use std::sync::Mutex;

use jobrunner_client::{AttemptLog, HttpCall, MAX_HTTP_CALLS};

/// The journal of one attempt, shared by the capabilities that write to it.
#[derive(Debug)]
pub(crate) struct Journal {
    /// Bytes of log kept: the last ones.
    keep: usize,
    entry: Mutex<AttemptLog>,
}

impl Journal {
    /// An empty journal of attempt `attempt`, keeping the last `keep` bytes of log.
    pub fn new(attempt: u32, keep: usize) -> Self {
        Self {
            keep,
            entry: Mutex::new(AttemptLog {
                attempt,
                ..AttemptLog::default()
            }),
        }
    }

    fn entry(&self) -> std::sync::MutexGuard<'_, AttemptLog> {
        self.entry
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Appends one line, `label` (a level or a stream) first, dropping the oldest lines
    /// beyond what it keeps.
    pub fn line(&self, label: &str, text: &str) {
        if self.keep == 0 {
            return;
        }
        let mut entry = self.entry();
        for line in text.lines().filter(|line| !line.trim().is_empty()) {
            entry.log.push_str(label);
            entry.log.push(' ');
            entry.log.push_str(line);
            entry.log.push('\n');
        }
        if entry.log.len() > self.keep {
            let excess = entry.log.len() - self.keep;
            // Cut at the end of a line where one ends soon after the excess, else mid-line.
            let cut = entry.log[excess..]
                .find('\n')
                .map_or(excess, |newline| excess + newline + 1);
            let cut = entry.log.ceil_char_boundary(cut.min(entry.log.len()));
            entry.log.drain(..cut);
            entry.log_cut = true;
        }
    }

    /// Records one request, up to [`MAX_HTTP_CALLS`].
    pub fn http(&self, call: HttpCall) {
        let mut entry = self.entry();
        if entry.http.len() < MAX_HTTP_CALLS {
            entry.http.push(call);
        }
    }

    /// What the attempt logged and requested, if anything.
    pub fn take(&self) -> Option<AttemptLog> {
        let entry = std::mem::take(&mut *self.entry());
        (!entry.log.is_empty() || !entry.http.is_empty()).then_some(entry)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn it_keeps_the_last_lines_that_fit() {
        let journal = Journal::new(3, 32);
        for n in 0..10 {
            journal.line("INFO", &format!("line {n}"));
        }
        let kept = journal.take().unwrap();
        assert_eq!((kept.attempt, kept.log_cut), (3, true));
        assert!(kept.log.len() <= 32, "{:?}", kept.log);
        assert!(kept.log.ends_with("INFO line 9\n"), "{:?}", kept.log);
        assert!(
            kept.log.starts_with("INFO line "),
            "whole lines: {:?}",
            kept.log
        );
        assert!(
            Journal::new(1, 32).take().is_none(),
            "nothing logged, nothing kept"
        );
        let off = Journal::new(1, 0);
        off.line("INFO", "x");
        assert!(off.take().is_none());
    }
}
