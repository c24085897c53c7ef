//! `echo`: the job's result is its payload, passed through unparsed. The no-op job that the
//! benchmarks run.

use jobrunner_plugin_sdk::{Job, JobError, handler};
use serde_json::value::RawValue;

handler!(echo);

fn echo(job: Job<Box<RawValue>>) -> Result<Box<RawValue>, JobError> {
    Ok(job.payload)
}
