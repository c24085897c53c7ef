//! What one job may use and reach, and the memory limiter that enforces the memory cap.

use std::time::Duration;

use wasmtime::ResourceLimiter;

use super::host::config::ConfigGrant;
use super::host::http::settings::HttpLimits;
use super::host::jobs::JobsGrant;

/// The resources one attempt may use. Runner-wide defaults; the plugin manifest and tenant
/// policy narrow them per job type and tenant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Wall-clock time for instantiation plus `run`, waiting included.
    pub timeout: Duration,
    /// CPU time the guest may spend executing Wasm, checked at every epoch tick.
    pub cpu_budget: Duration,
    /// Bytes of linear memory, all of the instance's memories together.
    pub memory: u64,
    /// Largest payload handed to a guest; larger jobs fail without running.
    pub max_payload: usize,
    /// Largest result a guest may return; a larger one fails the job.
    pub max_result: usize,
    /// Bytes of stdout, and of stderr, kept per attempt (the tail; the rest is counted).
    pub max_output: usize,
    /// Bytes of the guest's log (lines, stdout, stderr) kept with the job per attempt: the
    /// last ones. 0 keeps none.
    pub keep_log: usize,
    /// Outgoing HTTP: the hosts granted (none by default) and the request limits.
    pub http: HttpLimits,
    /// The config values and secret names granted (none by default).
    pub config: ConfigGrant,
    /// The follow-up job types granted (none by default) and their limit.
    pub jobs: JobsGrant,
}

/// What one guest-to-host call may carry at least, whatever `max_result`: room for a log line
/// or an error message to be cut rather than refused.
const MIN_TRANSFER: usize = 1 << 20;

/// Above `max_result`, so that a result a little too large is reported with its size.
const TRANSFER_SLACK: usize = 64 << 10;

impl Limits {
    /// The most bytes a guest may hand the host in one call (its result, an error message, a
    /// log line, any import's arguments): wasmtime refuses a larger transfer before copying
    /// any of it, trapping the guest. A result between `max_result` and this is refused with
    /// its size.
    pub fn max_transfer(&self) -> usize {
        self.max_result
            .max(MIN_TRANSFER)
            .saturating_add(TRANSFER_SLACK)
    }
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(60),
            cpu_budget: Duration::from_secs(30),
            memory: 128 << 20,
            max_payload: 1 << 20,
            max_result: 1 << 20,
            max_output: 16 << 10,
            keep_log: 16 << 10,
            http: HttpLimits::default(),
            config: ConfigGrant::default(),
            jobs: JobsGrant::default(),
        }
    }
}

/// A guest asked for more linear memory than its cap: the instance traps with this error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "memory limit exceeded: the guest asked for {requested} bytes of linear memory, the cap is {cap}"
)]
pub struct MemoryLimitExceeded {
    /// The total the guest would have had after the growth.
    pub requested: u64,
    /// The job's memory cap.
    pub cap: u64,
}

/// Caps the total linear memory of one store. Returning an error (rather than refusing the
/// growth) traps at once with a typed cause, instead of letting the guest misreport an
/// allocation failure as some other trap.
#[derive(Debug)]
pub(crate) struct MemoryLimiter {
    cap: u64,
    used: u64,
}

impl MemoryLimiter {
    pub fn new(cap: u64) -> Self {
        Self { cap, used: 0 }
    }
}

impl ResourceLimiter for MemoryLimiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let requested = self.used - current as u64 + desired as u64;
        if requested > self.cap {
            return Err(MemoryLimitExceeded {
                requested,
                cap: self.cap,
            }
            .into());
        }
        self.used = requested;
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        _desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        // Tables are bounded by the pooling allocator's slot size.
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_all_memories_together() {
        let mut limiter = MemoryLimiter::new(100);
        assert!(limiter.memory_growing(0, 60, None).unwrap());
        assert!(limiter.memory_growing(60, 80, None).unwrap());
        // A second memory shares the cap.
        let error = limiter.memory_growing(0, 30, None).unwrap_err();
        let error = error.downcast_ref::<MemoryLimitExceeded>().unwrap();
        assert_eq!((error.requested, error.cap), (110, 100));
        assert!(limiter.memory_growing(0, 20, None).unwrap());
    }
}
