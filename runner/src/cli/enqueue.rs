//! `runner enqueue`: one job from the command line.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use chrono::{DateTime, Utc};
use clap::Args;

use super::database::Database;
use crate::Queue;
use crate::config::parse_duration;
use crate::job::{MAX_PAYLOAD_BYTES, NewJob, Schedule, Unique};

/// What a job is, as flags: `runner enqueue`'s, and the job each tick of
/// `runner schedules add` enqueues.
#[derive(Debug, Args)]
pub struct JobFields {
    /// The payload, JSON text.
    #[arg(long, default_value = "{}")]
    payload: String,
    /// Read the payload from this file instead (`-`: standard input), for payloads too large
    /// for a command line.
    #[arg(long, conflicts_with = "payload")]
    payload_file: Option<PathBuf>,
    /// The tenant the job belongs to.
    #[arg(long, default_value = "default")]
    tenant: String,
    /// Lower runs first.
    #[arg(long, default_value_t = 0, allow_negative_numbers = true)]
    priority: i32,
    /// Attempts before the job is kept as failed [default: the runner's]
    #[arg(long)]
    max_attempts: Option<u32>,
}

impl JobFields {
    /// A job of `job_type` with these fields, due now, unchecked.
    pub fn job(&self, job_type: &str) -> anyhow::Result<NewJob> {
        let payload = match &self.payload_file {
            Some(path) => read_payload(path)?,
            None => self.payload.clone(),
        };
        let mut job = NewJob::from_json_text(job_type, &payload)?
            .tenant(&self.tenant)
            .priority(self.priority);
        if let Some(max) = self.max_attempts {
            job = job.max_attempts(max);
        }
        Ok(job)
    }

    /// The tenant.
    pub fn tenant(&self) -> &str {
        &self.tenant
    }
}

/// Flags of `runner enqueue`.
#[derive(Debug, Args)]
pub struct EnqueueArgs {
    /// The job type (the plugin's name).
    job_type: String,
    #[command(flatten)]
    job: JobFields,
    /// Run at this time (RFC 3339, e.g. 2026-12-01T09:00:00Z) instead of now.
    #[arg(long, value_parser = parse_rfc3339, conflicts_with = "delay")]
    run_at: Option<DateTime<Utc>>,
    /// Run this long from now (e.g. 90s, 5m, 1h).
    #[arg(long, value_parser = parse_duration, allow_hyphen_values = true)]
    delay: Option<Duration>,
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
        let job = self
            .job
            .job(&self.job_type)?
            .schedule(schedule)
            .unique(unique);
        job.validate()?;
        Ok(job)
    }
}

/// Enqueues the job and prints its id (the pending duplicate's, if there is one).
pub async fn enqueue(db: &Database, job: NewJob) -> anyhow::Result<ExitCode> {
    let queue = db.queue();
    let enqueued = queue.enqueue(queue.db(), &job).await?;
    if !enqueued.inserted {
        eprintln!("a pending job with the same unique key exists; not enqueued again");
    }
    warn_if_unserved(&queue, job.job_type()).await;
    println!("{}", enqueued.id);
    Ok(ExitCode::SUCCESS)
}

/// A job of a type no runner serves waits, which is right for a runner yet to start or a
/// plugin yet to be dropped in, and wrong for a typo: say so, without refusing the job.
async fn warn_if_unserved(queue: &Queue, job_type: &str) {
    match super::plugins::served_job_types(queue).await {
        Ok(Some(served)) if !served.contains(job_type) => {
            let served: Vec<&str> = served.iter().map(String::as_str).collect();
            eprintln!(
                "warning: no live runner serves job type {job_type:?} (they serve {served:?}); \
                 the job waits until one does"
            );
        }
        Ok(None) => eprintln!(
            "note: no runner is live; the job waits until one serving {job_type:?} starts"
        ),
        Ok(Some(_)) | Err(_) => {}
    }
}

/// The payload file's text; more than any job may carry is refused before it is all read.
fn read_payload(path: &Path) -> anyhow::Result<String> {
    let source: Box<dyn Read> = if path == Path::new("-") {
        Box::new(std::io::stdin())
    } else {
        Box::new(
            File::open(path)
                .with_context(|| format!("cannot open payload file {}", path.display()))?,
        )
    };
    let mut text = String::new();
    source
        .take(MAX_PAYLOAD_BYTES as u64 + 1)
        .read_to_string(&mut text)
        .with_context(|| format!("cannot read payload file {} as UTF-8", path.display()))?;
    anyhow::ensure!(
        text.len() <= MAX_PAYLOAD_BYTES,
        "payload file {} is larger than the limit of {MAX_PAYLOAD_BYTES} bytes",
        path.display()
    );
    Ok(text)
}

fn parse_rfc3339(text: &str) -> Result<DateTime<Utc>, String> {
    DateTime::parse_from_rfc3339(text)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| {
            format!("{text:?} is not an RFC 3339 time ({e}); write e.g. 2026-12-01T09:00:00Z")
        })
}
