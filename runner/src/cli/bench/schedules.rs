//! Phase 6: a schedule firing every second while a runner's worker runs, timed from each tick
//! to the moment its job's enqueue is committed and announced (the notification a listening
//! runner would wake on), and checked for ticks lost or fired twice.

use std::time::Duration;

use anyhow::Context;
use chrono::{DateTime, Utc};
use sqlx::postgres::PgListener;

use super::stats::Percentiles;
use crate::Queue;
use crate::client::WAKE_CHANNEL;
use crate::client::schedules::NewSchedule;
use crate::executor::WasmExecutor;
use crate::job::NewJob;
use crate::worker::{Worker, WorkerConfig};

/// The schedule's name, and the type of its jobs: one no runner serves, so they stay.
const SCHEDULE: &str = "bench-every-second";

/// What the phase measured.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct Lateness {
    /// From each tick to its job's announcement.
    pub late: Percentiles,
}

/// Runs a worker for `seconds` with a schedule firing every second; returns the lateness.
pub(super) async fn run(
    seconds: u64,
    queue: &Queue,
    executor: WasmExecutor,
    config: &WorkerConfig,
) -> anyhow::Result<Lateness> {
    let mut listener = PgListener::connect_with(queue.pool()).await?;
    listener.listen(WAKE_CHANNEL).await?;
    let worker = Worker::new(queue.clone(), executor, config.clone()).start();
    worker.listening().await;
    let schedule = NewSchedule::new(
        SCHEDULE,
        "* * * * * *",
        NewJob::new(SCHEDULE, serde_json::json!({})),
    );
    queue.add_schedule(queue.db(), &schedule).await?;
    let mut late = Vec::new();
    let until = tokio::time::Instant::now() + Duration::from_secs(seconds);
    while let Ok(notification) = tokio::time::timeout_at(until, listener.recv()).await {
        let heard = Utc::now();
        if let Some(tick) = announced_run_at(notification?.payload()) {
            late.push((heard - tick).to_std().unwrap_or_default());
        }
    }
    queue.remove_schedule(SCHEDULE, "default").await?;
    worker.shutdown().await;
    let ticks: Vec<DateTime<Utc>> =
        sqlx::query_scalar("SELECT run_at FROM jobrunner.jobs WHERE schedule = $1 ORDER BY run_at")
            .bind(SCHEDULE)
            .fetch_all(queue.db())
            .await
            .context("cannot read the schedule's jobs")?;
    let span = match (ticks.first(), ticks.last()) {
        (Some(first), Some(last)) => (*last - *first).num_seconds() + 1,
        _ => 0,
    };
    let stats = Percentiles::of(late);
    println!(
        "6. schedule {SCHEDULE} (\"* * * * * *\") for {seconds} s: {} ticks enqueued over {span} \
         s ({} missing, {} twice); tick to committed enqueue: {}",
        ticks.len(),
        span - ticks.len() as i64,
        ticks.windows(2).filter(|w| w[0] == w[1]).count(),
        stats.display_ms()
    );
    Ok(Lateness { late: stats })
}

/// The run-at in a wake-up notification, `[priority, run_at, id]`.
fn announced_run_at(payload: &str) -> Option<DateTime<Utc>> {
    let (_, run_at, _): (i32, DateTime<Utc>, i64) = serde_json::from_str(payload).ok()?;
    Some(run_at)
}
