//! When a failed attempt runs again: the retry policy and its backoff.
//!
//! The default is exponential backoff with jitter and a cap (`base * 2^(attempt-1)`, capped,
//! then spread uniformly over its upper half so that a thousand jobs failing together do not
//! come back together). The seed design's `base * attempt^2` is offered as
//! [`BackoffKind::Quadratic`]; it is deterministic, as it was there.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Deserialize;

use crate::clock::later;

/// Attempts a job gets when neither the job nor the configuration says otherwise.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 25;

/// The shape of the backoff curve.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum BackoffKind {
    /// `base * 2^(attempt-1)`, capped, jittered over the upper half.
    #[default]
    Exponential,
    /// `base * attempt^2`, capped, no jitter.
    Quadratic,
}

/// How long to wait before the next attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// The curve.
    pub kind: BackoffKind,
    /// Delay after the first failed attempt (before jitter).
    pub base: Duration,
    /// Largest delay.
    pub cap: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            kind: BackoffKind::Exponential,
            base: Duration::from_secs(1),
            cap: Duration::from_secs(3600),
        }
    }
}

impl Backoff {
    /// The largest delay after failed attempt `attempt` (1-based), before jitter.
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let attempt = attempt.max(1);
        let uncapped = match self.kind {
            BackoffKind::Exponential => {
                let factor = 1u32.checked_shl(attempt - 1).unwrap_or(u32::MAX);
                self.base.checked_mul(factor)
            }
            BackoffKind::Quadratic => self.base.checked_mul(attempt.saturating_mul(attempt)),
        };
        uncapped.map_or(self.cap, |d| d.min(self.cap))
    }

    /// After attempt `attempt` of `max_attempts` failed: when to run again, or `None` when no
    /// attempts are left.
    pub fn next_run(
        &self,
        attempt: u32,
        max_attempts: u32,
        now: DateTime<Utc>,
    ) -> Option<DateTime<Utc>> {
        (attempt < max_attempts).then(|| later(now, self.delay(attempt)))
    }

    /// The delay after failed attempt `attempt`, jitter included.
    pub fn delay(&self, attempt: u32) -> Duration {
        let ceiling = self.ceiling(attempt);
        match self.kind {
            BackoffKind::Exponential => ceiling.mul_f64(0.5 + fastrand::f64() / 2.0),
            BackoffKind::Quadratic => ceiling,
        }
    }
}

/// How many attempts a job gets and how far apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts for jobs that do not set their own.
    pub max_attempts: u32,
    /// Delay between attempts.
    pub backoff: Backoff,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: DEFAULT_MAX_ATTEMPTS,
            backoff: Backoff::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn exponential_doubles_up_to_the_cap() {
        let b = Backoff {
            kind: BackoffKind::Exponential,
            base: secs(2),
            cap: secs(60),
        };
        let ceilings: Vec<_> = (1..=7).map(|a| b.ceiling(a).as_secs()).collect();
        assert_eq!(ceilings, [2, 4, 8, 16, 32, 60, 60]);
        assert_eq!(b.ceiling(500), secs(60), "huge attempts must not overflow");
    }

    #[test]
    fn exponential_jitter_stays_in_the_upper_half() {
        let b = Backoff {
            kind: BackoffKind::Exponential,
            base: secs(10),
            cap: secs(3600),
        };
        let delays: Vec<_> = (0..200).map(|_| b.delay(3)).collect();
        assert!(
            delays.iter().all(|d| (secs(20)..=secs(40)).contains(d)),
            "{delays:?}"
        );
        let distinct: std::collections::HashSet<_> = delays.iter().collect();
        assert!(
            distinct.len() > 100,
            "jitter should spread retries: {}",
            distinct.len()
        );
    }

    #[test]
    fn quadratic_is_the_seed_formula() {
        let b = Backoff {
            kind: BackoffKind::Quadratic,
            base: secs(3),
            cap: secs(100),
        };
        let delays: Vec<_> = (1..=7).map(|a| b.delay(a).as_secs()).collect();
        assert_eq!(delays, [3, 12, 27, 48, 75, 100, 100]);
    }

    #[test]
    fn next_run_stops_at_max_attempts() {
        let backoff = Backoff::default();
        let now = Utc::now();
        let next = backoff.next_run(1, 3, now).expect("attempts left");
        assert!(next > now);
        assert!(backoff.next_run(3, 3, now).is_none());
        assert!(backoff.next_run(4, 3, now).is_none());
    }
}
