//! `runner jobs`: the operator's view of the queue.

use std::process::ExitCode;

use clap::Subcommand;

use super::database::Database;
use crate::client::admin::{Cancellation, JobFilter, JobRecord};
use crate::job::JobState;
use crate::retry::RetryPolicy;

/// Subcommands of `runner jobs`.
#[derive(Debug, Subcommand)]
pub enum JobsCommand {
    /// List jobs, newest first.
    List {
        /// Only jobs in this state (available, running, completed, failed, cancelled).
        #[arg(long)]
        state: Option<JobState>,
        /// Only jobs of this type.
        #[arg(long = "type")]
        job_type: Option<String>,
        /// Only jobs of this tenant.
        #[arg(long)]
        tenant: Option<String>,
        /// Only the follow-ups this job enqueued.
        #[arg(long)]
        parent: Option<i64>,
        /// Only the jobs this schedule enqueued.
        #[arg(long)]
        schedule: Option<String>,
        /// At most this many.
        #[arg(long, default_value_t = 50)]
        limit: u32,
        /// Print JSON, one object per job.
        #[arg(long)]
        json: bool,
    },
    /// Show every field of a job and its error history.
    Show {
        /// The job's id.
        id: i64,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Make a failed job available again (it gets one more attempt if it had used them all).
    Retry {
        /// The job's id.
        id: i64,
    },
    /// Cancel a job: an available one at once; a running one is stopped by the runner
    /// holding it, which records it cancelled (this waits for that, up to 10 s).
    Cancel {
        /// The job's id.
        id: i64,
        /// Who cancels it, as recorded [default: cli (USER)]
        #[arg(long)]
        by: Option<String>,
    },
    /// Stop every runner from claiming jobs of a type until it is resumed (running jobs
    /// finish; new jobs are still enqueued, and wait).
    PauseType {
        /// The job type.
        job_type: String,
        /// Who pauses it, as recorded [default: cli (USER)]
        #[arg(long)]
        by: Option<String>,
    },
    /// Let runners claim jobs of a paused type again.
    ResumeType {
        /// The job type.
        job_type: String,
    },
    /// List the paused job types.
    Paused,
}

/// Runs a `runner jobs` subcommand.
pub async fn jobs(
    db: &Database,
    command: JobsCommand,
    policy: &RetryPolicy,
) -> anyhow::Result<ExitCode> {
    let queue = db.queue();
    match command {
        JobsCommand::List {
            state,
            job_type,
            tenant,
            parent,
            schedule,
            limit,
            json,
        } => {
            let filter = JobFilter {
                state,
                job_type,
                tenant,
                parent,
                schedule,
                limit,
                ..JobFilter::default()
            };
            let jobs = queue.list_jobs(&filter).await?;
            if json {
                for job in &jobs {
                    println!("{}", serde_json::to_string(job)?);
                }
            } else {
                print_list(&jobs, policy);
            }
        }
        JobsCommand::Show { id, json } => {
            let job = queue.job(id).await?;
            let follow_ups = queue
                .list_jobs(&JobFilter {
                    parent: Some(id),
                    limit: MAX_FOLLOW_UPS_SHOWN,
                    ..JobFilter::default()
                })
                .await?;
            if json {
                let mut shown = serde_json::to_value(&job)?;
                let ids: Vec<i64> = follow_ups.iter().map(|f| f.id).collect();
                shown["follow_up_ids"] = ids.into();
                println!("{}", serde_json::to_string_pretty(&shown)?);
            } else {
                print_job(&job, policy);
                print_follow_ups(&follow_ups);
            }
        }
        JobsCommand::Retry { id } => {
            let job = queue.retry_job(id, policy.max_attempts).await?;
            println!(
                "job {} is available again (attempt {} of {})",
                job.id,
                job.attempt + 1,
                max_attempts(&job, policy)
            );
        }
        JobsCommand::Cancel { id, by } => cancel(&queue, id, &by.unwrap_or_else(cli_user)).await?,
        JobsCommand::PauseType { job_type, by } => {
            let paused = queue
                .pause_job_type(&job_type, &by.unwrap_or_else(cli_user))
                .await?;
            println!(
                "job type {} paused (since {} by {}): no runner claims its jobs until \
                 `runner jobs resume-type {}`",
                paused.job_type,
                paused.paused_at.format("%Y-%m-%d %H:%M:%S UTC"),
                paused.paused_by,
                paused.job_type
            );
        }
        JobsCommand::ResumeType { job_type } => {
            if queue.resume_job_type(&job_type).await? {
                println!("job type {job_type} resumed");
            } else {
                println!("job type {job_type} was not paused");
            }
        }
        JobsCommand::Paused => {
            let paused = queue.paused_job_types().await?;
            if paused.is_empty() {
                println!("no job type is paused");
            }
            let rows: Vec<[String; 3]> = paused
                .iter()
                .map(|p| {
                    let at = p.paused_at.format("%Y-%m-%d %H:%M:%S").to_string();
                    [p.job_type.clone(), at, p.paused_by.clone()]
                })
                .collect();
            if !rows.is_empty() {
                super::print_table(["JOB TYPE", "PAUSED AT (UTC)", "BY"], &rows);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Who the CLI says cancels or pauses, unless `--by` says.
fn cli_user() -> String {
    format!(
        "cli ({})",
        whoami::username().unwrap_or_else(|_| "unknown".into())
    )
}

/// How long `jobs cancel` waits for a running job's runner to record it cancelled.
const CANCEL_PATIENCE: std::time::Duration = std::time::Duration::from_secs(10);

/// Cancels job `id` as `by`; for a running job, waits until its runner recorded the end.
async fn cancel(queue: &crate::Queue, id: i64, by: &str) -> anyhow::Result<()> {
    let (owner, attempt) = match queue.cancel(id, by).await? {
        Cancellation::Cancelled(job) => {
            println!("job {} cancelled", job.id);
            return Ok(());
        }
        Cancellation::Stopping { owner, attempt } => (owner, attempt),
    };
    println!("job {id} is running (attempt {attempt}) on runner {owner}: asked it to stop");
    let deadline = tokio::time::Instant::now() + CANCEL_PATIENCE;
    loop {
        let job = queue.job(id).await;
        match job {
            Ok(job) if job.state == JobState::Running && job.attempt == attempt => {}
            Ok(job) => {
                println!("job {id} is {} now", job.state.as_str());
                return Ok(());
            }
            // A completion deletes the job unless completed jobs are retained.
            Err(crate::client::QueueError::NotFound(_)) => {
                println!("job {id} completed before it could be stopped");
                return Ok(());
            }
            Err(error) => return Err(error.into()),
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "job {id} is still running after {CANCEL_PATIENCE:?}: its runner may be gone (the \
             job runs again elsewhere once its lease expires)"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// Follow-ups listed by `jobs show` at most (newest first); `jobs list --parent` lists all.
const MAX_FOLLOW_UPS_SHOWN: u32 = 20;

fn print_follow_ups(follow_ups: &[JobRecord]) {
    if follow_ups.is_empty() {
        return;
    }
    let more = if follow_ups.len() as u32 == MAX_FOLLOW_UPS_SHOWN {
        " (the newest; `jobs list --parent` lists all)"
    } else {
        ""
    };
    println!("follow-ups{more}:");
    for f in follow_ups {
        println!("  {} {} {}", f.id, f.job_type, f.state);
    }
}

fn max_attempts(job: &JobRecord, policy: &RetryPolicy) -> u32 {
    job.max_attempts.unwrap_or(policy.max_attempts)
}

pub(super) fn print_list(jobs: &[JobRecord], policy: &RetryPolicy) {
    let header = [
        "ID",
        "STATE",
        "TYPE",
        "TENANT",
        "ATTEMPT",
        "PRIORITY",
        "RUN AT",
        "LAST ERROR",
    ];
    let rows: Vec<[String; 8]> = jobs
        .iter()
        .map(|job| {
            [
                job.id.to_string(),
                job.state.to_string(),
                job.job_type.clone(),
                job.tenant.clone(),
                format!("{}/{}", job.attempt, max_attempts(job, policy)),
                job.priority.to_string(),
                job.run_at.format("%Y-%m-%d %H:%M:%S%.3f").to_string(),
                job.last_error()
                    .map(|e| one_line(&e.error, 60))
                    .unwrap_or_default(),
            ]
        })
        .collect();
    super::print_table(header, &rows);
}

fn print_job(job: &JobRecord, policy: &RetryPolicy) {
    let max = match job.max_attempts {
        Some(max) => max.to_string(),
        None => format!("{} (runner default)", policy.max_attempts),
    };
    println!("id:          {}", job.id);
    println!("type:        {}", job.job_type);
    println!("tenant:      {}", job.tenant);
    println!("state:       {}", job.state);
    println!("attempt:     {} of {max}", job.attempt);
    println!("priority:    {}", job.priority);
    println!("run at:      {}", job.run_at.to_rfc3339());
    println!("created at:  {}", job.created_at.to_rfc3339());
    println!("updated at:  {}", job.updated_at.to_rfc3339());
    if let (Some(owner), Some(until)) = (&job.lease_owner, job.lease_expires_at) {
        println!("lease:       {owner} until {}", until.to_rfc3339());
    }
    if let Some(key) = &job.unique_key {
        println!("unique key:  {key}");
    }
    if let Some(parent) = job.parent_id {
        println!("parent:      {parent} (the job whose attempt enqueued this one)");
    }
    if let Some(schedule) = &job.schedule {
        println!(
            "schedule:    {schedule} (its tick at {} enqueued this job)",
            job.run_at.to_rfc3339()
        );
    }
    if let Some(by) = &job.cancelled_by {
        println!("cancelled by: {by}");
    }
    println!("payload:     {}", job.payload);
    if let Some(result) = &job.result {
        println!("result:      {result}");
    }
    if job.errors.is_empty() {
        println!("errors:      none");
    } else {
        println!("errors:");
        for e in &job.errors {
            let plugin = e
                .plugin_sha256
                .as_deref()
                .map(|sha| format!(" (plugin {})", &sha[..sha.len().min(12)]))
                .unwrap_or_default();
            println!(
                "  attempt {} at {}{plugin}: {}",
                e.attempt,
                e.at.to_rfc3339(),
                e.error
            );
        }
    }
    for log in &job.attempt_logs {
        let cut = if log.log_cut { ", older lines cut" } else { "" };
        println!("attempt {} logged{cut}:", log.attempt);
        for line in log.log.lines() {
            println!("  | {line}");
        }
        for call in &log.http {
            let status = call.status.map_or("-".to_owned(), |s| s.to_string());
            let error = call
                .error
                .as_deref()
                .map(|e| format!(" ({e})"))
                .unwrap_or_default();
            println!(
                "  http {} {} -> {status} in {} ms{error}",
                call.method, call.url, call.duration_ms
            );
        }
    }
}

/// `text` on one line, cut to `max` characters.
pub(super) fn one_line(text: &str, max: usize) -> String {
    let flat: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if flat.chars().count() <= max {
        return flat;
    }
    let cut: String = flat.chars().take(max.saturating_sub(1)).collect();
    format!("{cut}…")
}
