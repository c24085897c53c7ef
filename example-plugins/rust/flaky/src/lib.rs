//! `flaky`: asks for a retry until attempt `succeed_on_attempt` (default 2), then succeeds.
//!
//! Payload: `{"succeed_on_attempt": 3}`. Result: `{"attempt": 3}`.

use jobrunner_plugin_sdk::{Job, JobError, handler, warn};
use serde::{Deserialize, Serialize};

#[derive(Deserialize)]
struct Flaky {
    #[serde(default = "second")]
    succeed_on_attempt: u32,
}

fn second() -> u32 {
    2
}

#[derive(Serialize)]
struct Succeeded {
    attempt: u32,
}

handler!(flaky);

fn flaky(job: Job<Flaky>) -> Result<Succeeded, JobError> {
    let wanted = job.payload.succeed_on_attempt;
    if job.attempt < wanted {
        warn!("attempt {} fails on purpose", job.attempt);
        return Err(JobError::retry(format!(
            "attempt {} fails on purpose (succeeds on attempt {wanted})",
            job.attempt
        )));
    }
    Ok(Succeeded {
        attempt: job.attempt,
    })
}
