//! `runner schedules`: add, list, show, pause, resume, remove and run schedules.

use std::process::ExitCode;
use std::time::Duration;

use chrono::{DateTime, Utc};
use clap::{Args, Subcommand};

use super::database::Database;
use super::enqueue::JobFields;
use crate::client::cron::Recurrence;
use crate::client::schedules::{CatchUp, NewSchedule, Overlap, ScheduleRecord};

/// Subcommands of `runner schedules`.
#[derive(Debug, Subcommand)]
pub enum SchedulesCommand {
    /// Add a schedule: a job enqueued at every tick of a cron expression.
    Add(AddArgs),
    /// List schedules with their next three ticks (in their zone and UTC) and last job.
    List {
        /// Only this tenant's.
        #[arg(long)]
        tenant: Option<String>,
        /// Print JSON, one object per schedule.
        #[arg(long)]
        json: bool,
    },
    /// Show every field of a schedule and its next ticks.
    Show(NameArgs),
    /// Pause a schedule: no tick fires until it is resumed.
    Pause(NameArgs),
    /// Resume a paused schedule (ticks that passed meanwhile do not fire).
    Resume(NameArgs),
    /// Remove a schedule (its jobs stay).
    Remove(NameArgs),
    /// Enqueue the schedule's job now, outside its cadence, and print its id.
    RunNow(NameArgs),
}

/// A schedule, by name.
#[derive(Debug, Args)]
pub struct NameArgs {
    /// The schedule's name.
    name: String,
    /// Its tenant.
    #[arg(long, default_value = "default")]
    tenant: String,
}

/// `runner schedules add`.
#[derive(Debug, Args)]
pub struct AddArgs {
    /// The schedule's name, unique per tenant.
    name: String,
    /// Cron expression: 5 fields (minute hour day-of-month month day-of-week), 6 with seconds
    /// first, or @hourly, @daily, @weekly, @monthly, @yearly. Names (MON, JAN), ranges, steps
    /// and lists.
    #[arg(long)]
    cron: String,
    /// The IANA time zone the expression is read in.
    #[arg(long, default_value = "UTC")]
    tz: String,
    /// The type of the job each tick enqueues.
    #[arg(long)]
    job_type: String,
    /// The job's payload, tenant (the schedule's too), priority and max attempts.
    #[command(flatten)]
    job: JobFields,
    /// A unique-key template for each tick's job: {tick} (RFC 3339, UTC) and {schedule}.
    #[arg(long)]
    unique_key: Option<String>,
    /// skip: a tick enqueues nothing while the previous tick's job is pending or running.
    #[arg(long, default_value = "allow")]
    overlap: Overlap,
    /// Ticks missed while no runner was up: none (skip them), latest (one job), all (one each,
    /// within --within).
    #[arg(long, default_value = "none")]
    catch_up: CatchUp,
    /// How far back --catch-up all goes.
    #[arg(long, default_value = "1d", value_parser = humantime::parse_duration)]
    within: Duration,
}

impl AddArgs {
    fn to_schedule(&self) -> anyhow::Result<NewSchedule> {
        let job = self.job.job(&self.job_type)?;
        let mut schedule = NewSchedule::new(&self.name, &self.cron, job)
            .time_zone(&self.tz)
            .overlap(self.overlap)
            .catch_up(self.catch_up, self.within);
        if let Some(key) = &self.unique_key {
            schedule = schedule.unique_key(key);
        }
        schedule.validate()?;
        Ok(schedule)
    }
}

impl SchedulesCommand {
    /// Checks what can be checked without the database.
    pub fn check(&self) -> anyhow::Result<()> {
        if let SchedulesCommand::Add(args) = self {
            args.to_schedule()?;
        }
        Ok(())
    }
}

/// Runs a `runner schedules` subcommand.
pub async fn schedules(db: &Database, command: SchedulesCommand) -> anyhow::Result<ExitCode> {
    let queue = db.queue();
    match command {
        SchedulesCommand::Add(args) => {
            queue.add_schedule(queue.db(), &args.to_schedule()?).await?;
            let recurrence = Recurrence::parse(&args.cron, &args.tz)?;
            println!(
                "schedule {} added for tenant {}: {recurrence}, next at {}",
                args.name,
                args.job.tenant(),
                next_ticks(&recurrence, queue.now(), 1).join(", ")
            );
        }
        SchedulesCommand::List { tenant, json } => {
            let schedules = queue.schedules(tenant.as_deref()).await?;
            if json {
                for schedule in &schedules {
                    println!("{}", serde_json::to_string(schedule)?);
                }
            } else {
                print_list(&schedules, queue.now());
            }
        }
        SchedulesCommand::Show(NameArgs { name, tenant }) => {
            print_schedule(&queue.schedule(&name, &tenant).await?, queue.now());
        }
        SchedulesCommand::Pause(NameArgs { name, tenant }) => {
            queue.pause_schedule(&name, &tenant).await?;
            println!("schedule {name} of tenant {tenant} paused");
        }
        SchedulesCommand::Resume(NameArgs { name, tenant }) => {
            queue.resume_schedule(&name, &tenant).await?;
            println!("schedule {name} of tenant {tenant} resumed");
        }
        SchedulesCommand::Remove(NameArgs { name, tenant }) => {
            queue.remove_schedule(&name, &tenant).await?;
            println!("schedule {name} of tenant {tenant} removed");
        }
        SchedulesCommand::RunNow(NameArgs { name, tenant }) => {
            let id = queue.run_schedule_now(&name, &tenant).await?;
            println!("job {id} enqueued for schedule {name} of tenant {tenant}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The next `n` ticks after `after`, each in the schedule's zone and in UTC.
fn next_ticks(recurrence: &Recurrence, after: DateTime<Utc>, n: usize) -> Vec<String> {
    let zone = recurrence.zone();
    recurrence
        .ticks_after(after)
        .take(n)
        .map(|tick| {
            let local = tick.with_timezone(&zone).format("%a %Y-%m-%d %H:%M:%S %Z");
            if zone.name() == "UTC" {
                local.to_string()
            } else {
                format!("{local} ({})", tick.format("%H:%M:%S UTC"))
            }
        })
        .collect()
}

fn upcoming(schedule: &ScheduleRecord, now: DateTime<Utc>, n: usize) -> Vec<String> {
    if schedule.paused {
        return vec!["paused".to_owned()];
    }
    match schedule.recurrence() {
        Ok(recurrence) => next_ticks(&recurrence, schedule.anchor().max(now), n),
        Err(error) => vec![format!("cannot fire: {error}")],
    }
}

fn last_job(schedule: &ScheduleRecord) -> String {
    match (schedule.last_job_id, schedule.last_job_state) {
        (Some(id), Some(state)) => format!("{id} {state}"),
        (Some(id), None) => format!("{id} done"),
        (None, _) => "-".to_owned(),
    }
}

/// Prints `schedules` as `runner schedules list` does.
pub(super) fn print_list(schedules: &[ScheduleRecord], now: DateTime<Utc>) {
    if schedules.is_empty() {
        println!("no schedules");
        return;
    }
    let header = [
        "TENANT",
        "NAME",
        "CRON",
        "ZONE",
        "TYPE",
        "NEXT TICKS",
        "LAST JOB",
    ];
    let rows: Vec<[String; 7]> = schedules
        .iter()
        .map(|s| {
            [
                s.tenant.clone(),
                s.name.clone(),
                s.cron.clone(),
                s.time_zone.clone(),
                s.job_type.clone(),
                upcoming(s, now, 3).join(", "),
                last_job(s),
            ]
        })
        .collect();
    super::print_table(header, &rows);
}

fn print_schedule(s: &ScheduleRecord, now: DateTime<Utc>) {
    println!("name:        {}", s.name);
    println!("tenant:      {}", s.tenant);
    println!("cron:        {} ({})", s.cron, s.time_zone);
    println!("job type:    {}", s.job_type);
    println!("payload:     {}", s.payload);
    println!("priority:    {}", s.priority);
    if let Some(max) = s.max_attempts {
        println!("max attempts: {max}");
    }
    if let Some(key) = &s.unique_key {
        println!("unique key:  {key}");
    }
    println!("overlap:     {}", s.overlap);
    println!(
        "catch-up:    {} (within {})",
        s.catch_up,
        humantime::format_duration(s.catch_up_within)
    );
    println!(
        "state:       {}",
        if s.paused { "paused" } else { "active" }
    );
    println!("origin:      {}", s.origin);
    println!("since:       {}", s.since.to_rfc3339());
    if let Some(tick) = s.last_tick {
        println!("last tick:   {}", tick.to_rfc3339());
    }
    println!("last job:    {}", last_job(s));
    if let Some(error) = &s.last_error {
        println!("last error:  {error}");
    }
    println!("next ticks:");
    for tick in upcoming(s, now, 3) {
        println!("  {tick}");
    }
}
