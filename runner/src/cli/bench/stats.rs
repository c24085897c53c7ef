//! Percentiles of timed samples.

use std::time::Duration;

/// Percentiles of a set of durations, in seconds.
#[derive(Debug, Default, Clone, Copy)]
pub struct Percentiles {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
}

impl Percentiles {
    /// The percentiles of `samples` (nearest rank); all zero if there are none.
    pub fn of(mut samples: Vec<Duration>) -> Self {
        if samples.is_empty() {
            return Self::default();
        }
        samples.sort_unstable();
        let at = |p: f64| {
            let rank = (samples.len() as f64 * p).ceil() as usize;
            samples[rank.clamp(1, samples.len()) - 1].as_secs_f64()
        };
        Self {
            p50: at(0.50),
            p90: at(0.90),
            p99: at(0.99),
            max: at(1.0),
        }
    }

    /// `p50 … ms, p90 … ms, p99 … ms, max … ms`.
    pub fn display_ms(&self) -> String {
        self.display(1e3, "ms", 3)
    }

    /// The same in microseconds.
    pub fn display_us(&self) -> String {
        self.display(1e6, "us", 1)
    }

    fn display(&self, scale: f64, unit: &str, decimals: usize) -> String {
        let f = |s: f64| format!("{:.decimals$} {unit}", s * scale);
        format!(
            "p50 {}, p90 {}, p99 {}, max {}",
            f(self.p50),
            f(self.p90),
            f(self.p99),
            f(self.max)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let samples = (1..=100).map(Duration::from_millis).collect();
        let p = Percentiles::of(samples);
        assert_eq!(p.p50, 0.050);
        assert_eq!(p.p90, 0.090);
        assert_eq!(p.p99, 0.099);
        assert_eq!(p.max, 0.100);
        assert_eq!(Percentiles::of(Vec::new()).max, 0.0);
    }
}
