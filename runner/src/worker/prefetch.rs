//! How many claimed jobs may wait for an executor: enough to hide the claim's round trip when
//! jobs are short, next to none when they are long.
//!
//! A claimed job that waits is a job no other runner can take. So the prefetch allowance is
//! what this runner's executors are expected to start within [`HORIZON`]: `concurrency ×
//! HORIZON / job time`, from a moving average of recent job times, capped at the configured
//! `prefetch`. Microsecond jobs get the whole cap; one-second jobs get none.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// How far ahead claimed jobs may be started.
pub(super) const HORIZON: Duration = Duration::from_millis(5);

/// The moving average assumed before any job has run: long, so that a fresh runner does not
/// hoard a batch of jobs it cannot start soon.
const ASSUMED_JOB_TIME: Duration = Duration::from_secs(1);

/// A moving average of job times, and the prefetch allowance it gives.
#[derive(Debug)]
pub(super) struct Prefetch {
    concurrency: u64,
    cap: usize,
    /// Nanoseconds; updated by many tasks without a lock, so an update may be lost, which
    /// an average does not mind.
    average_ns: AtomicU64,
}

impl Prefetch {
    pub fn new(concurrency: usize, cap: usize) -> Self {
        Self {
            concurrency: concurrency as u64,
            cap,
            average_ns: AtomicU64::new(ASSUMED_JOB_TIME.as_nanos() as u64),
        }
    }

    /// Folds in one job's run time (weight 1/16).
    pub fn record(&self, took: Duration) {
        let took = took.as_nanos().min(u128::from(u64::MAX)) as u64;
        let average = self.average_ns.load(Ordering::Relaxed);
        let next = average - average / 16 + took / 16;
        self.average_ns.store(next.max(1), Ordering::Relaxed);
    }

    /// Jobs that may wait for an executor now.
    pub fn allowance(&self) -> usize {
        let average = self.average_ns.load(Ordering::Relaxed).max(1);
        let startable = self.concurrency * HORIZON.as_nanos() as u64 / average;
        usize::try_from(startable)
            .unwrap_or(usize::MAX)
            .min(self.cap)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_jobs_get_the_cap_and_long_ones_none() {
        let prefetch = Prefetch::new(100, 500);
        assert_eq!(prefetch.allowance(), 0, "nothing before the first jobs ran");
        for _ in 0..200 {
            prefetch.record(Duration::from_micros(20));
        }
        assert_eq!(prefetch.allowance(), 500);
        for _ in 0..200 {
            prefetch.record(Duration::from_millis(50));
        }
        assert_eq!(
            prefetch.allowance(),
            10,
            "100 executors start 10 such jobs in 5 ms"
        );
        for _ in 0..200 {
            prefetch.record(Duration::from_secs(2));
        }
        assert_eq!(prefetch.allowance(), 0);
    }
}
