//! Built-in `demo.*` job types, run by plain Rust handlers.
//!
//! They let the queue be exercised end to end (by `runner demo`, `runner run` and the tests)
//! before any plugin exists:
//! - `demo.echo`: the result is the payload.
//! - `demo.sleep` `{"ms": N}`: sleeps N milliseconds (default 100).
//! - `demo.flaky` `{"fail_times": N}`: asks for a retry on its first N attempts, then succeeds.
//! - `demo.fail` `{"reason": "..."}`: fails permanently.

use std::time::Duration;

use serde::Deserialize;
use serde_json::json;
use serde_json::value::RawValue;

use crate::executor::{Handlers, JobError, JobResult, json_result};
use crate::job::Job;

/// The demo job types.
pub const JOB_TYPES: [&str; 4] = ["demo.echo", "demo.sleep", "demo.flaky", "demo.fail"];

/// Handlers for every demo job type.
pub fn handlers() -> Handlers {
    Handlers::new()
        .on("demo.echo", |job: Job| async move { echo(job) })
        .on("demo.sleep", |job: Job| async move {
            #[derive(Deserialize)]
            struct Sleep {
                #[serde(default = "default_ms")]
                ms: u64,
            }
            fn default_ms() -> u64 {
                100
            }
            let Sleep { ms } = parse(&job)?;
            tokio::time::sleep(Duration::from_millis(ms)).await;
            json_result(&json!({ "slept_ms": ms }))
        })
        .on("demo.flaky", |job: Job| async move {
            #[derive(Deserialize)]
            struct Flaky {
                #[serde(default)]
                fail_times: u32,
            }
            let Flaky { fail_times } = parse(&job)?;
            if job.attempt <= fail_times {
                return Err(JobError::Retry(format!(
                    "demo.flaky: attempt {} of the {fail_times} that fail on purpose",
                    job.attempt
                )));
            }
            json_result(&json!({ "succeeded_on_attempt": job.attempt }))
        })
        .on("demo.fail", |job: Job| async move {
            #[derive(Deserialize)]
            struct Fail {
                reason: Option<String>,
            }
            let Fail { reason } = parse(&job)?;
            Err(JobError::Fail(
                reason.unwrap_or_else(|| "demo.fail always fails".to_owned()),
            ))
        })
}

fn echo(job: Job) -> JobResult {
    let payload = RawValue::from_string(job.payload)
        .map_err(|e| JobError::Fail(format!("payload is not JSON: {e}")))?;
    Ok(Some(payload))
}

/// A malformed payload will not get better by retrying: fail at once.
fn parse<T: for<'de> Deserialize<'de>>(job: &Job) -> Result<T, JobError> {
    serde_json::from_str(&job.payload)
        .map_err(|e| JobError::Fail(format!("{}: malformed payload: {e}", job.job_type)))
}
