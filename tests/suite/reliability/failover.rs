//! A failover: mid-drain, the primary crashes, or stops accepting writes while it stays up, and
//! its synchronous standby is promoted. Runners given a URL naming both hosts
//! (`target_session_attrs=read-write`) move to the new primary by themselves, and every job
//! completes once.

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use runner::Queue;
use serde_json::json;
use sqlx::PgPool;

use crate::support::cluster::Replicated;
use crate::support::eventually;
use crate::support::fleet::{Endings, Fleet, enqueue_n, install_audit};

const MINUTE: Duration = Duration::from_secs(60);

/// How the primary goes.
#[derive(Debug, Clone, Copy)]
enum Demotion {
    /// Stopped at once, connections cut.
    Crash,
    /// Up, refusing writes: the runners' connections to it stay open.
    ReadOnly,
}

#[tokio::test]
async fn runners_follow_a_failover_to_the_promoted_standby_and_every_job_completes_once() {
    fail_over(Demotion::Crash).await;
}

#[tokio::test]
async fn runners_leave_a_primary_that_stays_up_but_refuses_writes() {
    fail_over(Demotion::ReadOnly).await;
}

async fn fail_over(demotion: Demotion) {
    const JOBS: usize = 4000;
    let cluster = Replicated::start().await;
    cluster.create_database("jobs").await;
    let primary = PgPool::connect(&cluster.primary_url("jobs")).await.unwrap();
    Queue::new(primary.clone()).migrate().await.unwrap();
    install_audit(&primary).await;
    let args = ["--concurrency", "20"];
    let fleet = Fleet::start(
        &cluster.failover_url("jobs"),
        test_plugins::rust_dir(),
        2,
        &args,
    )
    .await;
    enqueue_n(&primary, "sleep", JOBS, |i| json!({ "ms": 20 + i % 10 })).await;
    eventually("a third of the jobs to end", 2 * MINUTE, || async {
        (Endings::read(&primary).await.jobs >= JOBS as i64 / 3).then_some(())
    })
    .await;
    primary.close().await;

    match demotion {
        Demotion::Crash => cluster.crash_primary().await,
        Demotion::ReadOnly => cluster.make_primary_read_only().await,
    }
    let crashed = Instant::now();
    cluster.promote_standby().await;
    let promoted = Utc::now();
    let promotion = crashed.elapsed();
    let new_primary = PgPool::connect(&cluster.standby_url("jobs")).await.unwrap();
    let first: DateTime<Utc> = eventually(
        "a job to complete on the new primary",
        2 * MINUTE,
        || async {
            sqlx::query_scalar("SELECT min(at) FROM public.endings WHERE at > $1")
                .bind(promoted)
                .fetch_one(&new_primary)
                .await
                .ok()
                .flatten()
        },
    )
    .await;
    Endings::all_completed_once(&new_primary, JOBS as i64, 5 * MINUTE).await;

    // A job whose outcome (or claim) was lost with the primary ran again, its attempt
    // counted: at least once.
    let again: i64 = sqlx::query_scalar("SELECT count(*) FROM jobrunner.jobs WHERE attempt > 1")
        .fetch_one(&new_primary)
        .await
        .unwrap();
    let moved = fleet.events(
        "the database host in use stopped qualifying; new connections go to the next host that \
         does",
    );
    assert_eq!(moved.len(), 2, "each runner moved to the new primary once");
    eprintln!(
        "failover of {JOBS} jobs with 2 runners ({demotion:?}): standby promoted {promotion:?} \
         after the primary went; first job completed on the new primary {:?} after the promotion; every job \
         completed once, {again} of them after running again",
        (first - promoted).to_std().unwrap_or_default(),
    );
    fleet.stop().await;
}
