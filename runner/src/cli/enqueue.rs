//! `runner enqueue`: one job from the command line.

use std::process::ExitCode;
use std::time::Duration;

use chrono::{DateTime, Utc};
use clap::Args;

use super::database::Database;
use crate::config::parse_duration;
use crate::job::{NewJob, Schedule, Unique};

/// Flags of `runner enqueue`.
#[derive(Debug, Args)]
pub struct EnqueueArgs {
    /// The job type (the plugin's name).
    job_type: String,
    /// The payload, JSON text.
    #[arg(long, default_value = "{}")]
    payload: String,
    /// Run at this time (RFC 3339, e.g. 2026-12-01T09:00:00Z) instead of now.
    #[arg(long, value_parser = parse_rfc3339, conflicts_with = "delay")]
    run_at: Option<DateTime<Utc>>,
    /// Run this long from now (e.g. 90s, 5m, 1h).
    #[arg(long, value_parser = parse_duration, allow_hyphen_values = true)]
    delay: Option<Duration>,
    /// The tenant the job belongs to.
    #[arg(long, default_value = "default")]
    tenant: String,
    /// Lower runs first.
    #[arg(long, default_value_t = 0, allow_negative_numbers = true)]
    priority: i32,
    /// Attempts before the job is kept as failed [default: the runner's]
    #[arg(long)]
    max_attempts: Option<u32>,
    /// Deduplicate by this key instead of by job type + payload.
    #[arg(long, conflicts_with = "no_unique")]
    unique_key: Option<String>,
    /// Enqueue even if an identical job is pending.
    #[arg(long)]
    no_unique: bool,
}

impl EnqueueArgs {
    /// The job these flags describe, checked.
    pub fn to_job(&self) -> anyhow::Result<NewJob> {
        let schedule = match (self.run_at, self.delay) {
            (Some(at), _) => Schedule::At(at),
            (None, Some(delay)) => Schedule::After(delay),
            (None, None) => Schedule::Now,
        };
        let unique = match (&self.unique_key, self.no_unique) {
            (Some(key), _) => Unique::Key(key.clone()),
            (None, true) => Unique::Off,
            (None, false) => Unique::ByPayload,
        };
        let mut job = NewJob::from_json_text(&self.job_type, &self.payload)?
            .tenant(&self.tenant)
            .priority(self.priority)
            .schedule(schedule)
            .unique(unique);
        if let Some(max) = self.max_attempts {
            job = job.max_attempts(max);
        }
        job.validate()?;
        Ok(job)
    }
}

/// Enqueues the job and prints its id (the pending duplicate's, if there is one).
pub async fn enqueue(db: &Database, job: NewJob) -> anyhow::Result<ExitCode> {
    let queue = db.queue();
    let enqueued = queue.enqueue(queue.pool(), &job).await?;
    if !enqueued.inserted {
        eprintln!("a pending job with the same unique key exists; not enqueued again");
    }
    println!("{}", enqueued.id);
    Ok(ExitCode::SUCCESS)
}

fn parse_rfc3339(text: &str) -> Result<DateTime<Utc>, String> {
    DateTime::parse_from_rfc3339(text)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| {
            format!("{text:?} is not an RFC 3339 time ({e}); write e.g. 2026-12-01T09:00:00Z")
        })
}
