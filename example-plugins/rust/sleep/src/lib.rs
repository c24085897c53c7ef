//! `sleep`: sleeps `ms` milliseconds (default 100), then succeeds. The guest waits on the WASI
//! monotonic clock, so the runner's other jobs keep running meanwhile.
//!
//! Payload: `{"ms": 250}`. Result: `{"slept_ms": 250}`.

use std::time::Duration;

use jobrunner_plugin_sdk::{Job, JobError, handler};
use serde::{Deserialize, Serialize};

#[derive(Deserialize)]
struct Sleep {
    #[serde(default = "default_ms")]
    ms: u64,
}

fn default_ms() -> u64 {
    100
}

#[derive(Serialize)]
struct Slept {
    slept_ms: u64,
}

handler!(sleep);

fn sleep(job: Job<Sleep>) -> Result<Slept, JobError> {
    std::thread::sleep(Duration::from_millis(job.payload.ms));
    Ok(Slept {
        slept_ms: job.payload.ms,
    })
}
