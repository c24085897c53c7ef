//! The fault-injection suite: real runner processes on a real database, broken on purpose.
//! Each test checks the queue's promises through the database's own audit of job endings
//! (`support::fleet`): every job ends exactly once, nothing is lost, and every runner that was
//! not killed survives.
//!
//! Each test forces the fault it checks rather than leaving it to timing: it waits for the
//! condition that makes the fault real (a runner holding jobs, a lease lapsed by the clock, an
//! outcome that failed to be written), freezes runners (SIGSTOP) where what they hold must not
//! change meanwhile, and asserts on what was committed. A machine busy with other work slows
//! such a test down; it does not change what it checks.
//!
//! Each test prints what it measured (recovery times, throughput) on stderr; `cargo nextest
//! run -E 'test(reliability::)' --no-capture` shows them.

mod bad_input;
mod batches;
mod crashes;
mod database;
mod failover;
mod hostile;
mod many_runners;
mod memory;
mod pgbouncer;
mod upgrades;

use std::time::{Duration, Instant};

use runner::{NewJob, Unique};
use serde_json::json;

use crate::support::{TestDb, eventually};

/// Enqueues `n` healthy jobs (50 ms sleeps, tenant `good`) and times them until every one has
/// completed: the pace the hostile tests compare.
async fn healthy_run(db: &TestDb, n: usize) -> Duration {
    let jobs: Vec<NewJob> = (0..n)
        .map(|i| {
            NewJob::new("sleep", json!({ "ms": 50, "i": i }))
                .tenant("good")
                .unique(Unique::Off)
        })
        .collect();
    let started = Instant::now();
    db.queue().enqueue_many(&db.pool, &jobs).await.unwrap();
    eventually(
        "the healthy jobs to complete",
        Duration::from_secs(180),
        || async {
            let pending: i64 = db
                .scalar(
                    "SELECT count(*) FROM jobrunner.jobs
                  WHERE state IN ('available', 'running') AND tenant = 'good'",
                )
                .await;
            (pending == 0).then_some(())
        },
    )
    .await;
    started.elapsed()
}
