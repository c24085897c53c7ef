//! A database that goes away, cuts connections, stalls, or is flooded with retries.

use std::time::{Duration, Instant};

use runner::private_pg::PrivatePostgres;
use runner::{NewJob, Schedule};
use serde_json::json;
use sqlx::postgres::PgPoolOptions;
use sqlx::{Connection, PgPool};

use crate::support::fleet::{Endings, Fleet, enqueue_n, install_audit};
use crate::support::{TestDb, eventually};

const MINUTE: Duration = Duration::from_secs(60);

/// Waits until at least `n` jobs have ended.
async fn ended(pool: &PgPool, n: i64) {
    eventually(&format!("{n} jobs to end"), MINUTE, || async {
        (Endings::read(pool).await.jobs >= n).then_some(())
    })
    .await;
}

/// Runs blocking cluster control off the runtime, which must keep reading the runners' output.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.unwrap()
}

#[tokio::test]
async fn a_database_restart_mid_drain_loses_no_job_and_no_outcome() {
    const JOBS: i64 = 3000;
    let dir = crate::support::cluster_tempdir();
    let data = dir.path().join("pg");
    let start = move || PrivatePostgres::start(&data).expect("a private cluster starts");
    let mut cluster = blocking(start.clone()).await;
    let url = cluster.url().to_owned();
    let pool = PgPoolOptions::new()
        .max_connections(2)
        .connect(&url)
        .await
        .unwrap();
    runner::Queue::new(pool.clone()).migrate().await.unwrap();
    install_audit(&pool).await;
    // One job in fifty runs for 8 s, so that some are still running when the database comes
    // back, their leases lapsed by the clock.
    let ms = |i: usize| {
        if i.is_multiple_of(50) {
            8000
        } else {
            20 + i % 20
        }
    };
    enqueue_n(&pool, "sleep", JOBS as usize, |i| json!({"ms": ms(i)})).await;
    // An hour between polls: after the drain only a notification can wake a runner.
    let args = ["--concurrency", "20", "--poll-interval", "1h"];
    let fleet = Fleet::start(&url, test_plugins::rust_dir(), 2, &args).await;
    ended(&pool, JOBS / 5).await;

    // Immediate: no clean shutdown, as in a crash; committed work survives in the WAL.
    let stopped = Instant::now();
    cluster = blocking(move || {
        cluster.stop(true).unwrap();
        cluster
    })
    .await;
    let noticed = |runner: &crate::support::live::Live| {
        runner.log().iter().any(|event| {
            let message = event["message"].as_str().unwrap_or_default();
            message.starts_with("claiming jobs failed")
                || message.starts_with("recording outcomes failed")
        })
    };
    eventually("every runner to notice the outage", MINUTE, || async {
        fleet.runners.iter().all(noticed).then_some(())
    })
    .await;
    // The fault itself: the database stays down longer than a lease (5 s).
    tokio::time::sleep(Duration::from_secs(6)).await;
    let restarted = blocking(start).await;
    assert_eq!(restarted.url(), url, "the cluster came back on its address");
    let outage = stopped.elapsed();
    drop(cluster);

    Endings::all_completed_once(&pool, JOBS, 3 * MINUTE).await;
    let retried = fleet.events("recording outcomes failed; retrying").len();
    eprintln!(
        "database down for {outage:?}: {JOBS} jobs completed once each; {retried} outcome \
         batches were retried across the outage"
    );
    assert!(
        retried > 0,
        "outcomes finished during the outage were kept and retried"
    );
    let twice: i64 = sqlx::query_scalar("SELECT count(*) FROM public.endings WHERE attempt <> 1")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(
        twice, 0,
        "no lease was taken from a runner that only lost the database"
    );
    woken_at_once(&pool, 2, JOBS).await;
    fleet.stop().await;
    pool.close().await;
    drop(restarted);
}

/// Terminates every connection the runners hold on `db`, returning how many, and how many
/// of them were listening for wake-ups.
async fn terminate_runner_backends(db: &TestDb) -> (i64, i64) {
    sqlx::query_as(
        // Materialized, so that the filter runs before any backend is terminated.
        "WITH runners AS MATERIALIZED (
             SELECT pid, query ILIKE 'LISTEN%' AS listening FROM pg_stat_activity
              WHERE datname = current_database() AND application_name = 'jobrunner'
         )
         SELECT count(*), count(*) FILTER (WHERE listening)
           FROM runners WHERE pg_terminate_backend(pid)",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap()
}

async fn listening_runners(pool: &PgPool) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM pg_stat_activity
          WHERE datname = current_database() AND application_name = 'jobrunner'
            AND query ILIKE 'LISTEN%'",
    )
    .fetch_one(pool)
    .await
    .unwrap()
}

/// Checks that, once all `runners` LISTEN again, a new job runs at once: runners that poll
/// hourly can only have been woken by its notification. `ended` jobs had ended before.
async fn woken_at_once(pool: &PgPool, runners: i64, ended_before: i64) {
    eventually("every runner to LISTEN again", MINUTE, || async {
        (listening_runners(pool).await == runners).then_some(())
    })
    .await;
    let enqueued = Instant::now();
    enqueue_n(pool, "echo", 1, |_| json!({"wake": "up"})).await;
    ended(pool, ended_before + 1).await;
    let woke = enqueued.elapsed();
    eprintln!("a job enqueued after the faults ran {woke:?} later (polling is hourly)");
    assert!(woke < Duration::from_secs(10), "woken by NOTIFY: {woke:?}");
}

#[tokio::test]
async fn terminated_connections_including_listen_are_recovered_and_wake_ups_still_work() {
    const JOBS: i64 = 3000;
    let db = TestDb::new().await;
    install_audit(&db.pool).await;
    // An hour between polls: after the drain only a notification can wake a runner.
    let args = ["--concurrency", "20", "--poll-interval", "1h"];
    let fleet = Fleet::start(&db.url(), test_plugins::rust_dir(), 2, &args).await;
    eventually("both runners to LISTEN", MINUTE, || async {
        (listening_runners(&db.pool).await == 2).then_some(())
    })
    .await;
    enqueue_n(
        &db.pool,
        "sleep",
        JOBS as usize,
        |i| json!({"ms": 10 + i % 20}),
    )
    .await;

    for round in 1..=3 {
        ended(&db.pool, JOBS * round / 4).await;
        let (terminated, listeners) = terminate_runner_backends(&db).await;
        eprintln!(
            "round {round}: terminated {terminated} runner connections, {listeners} LISTENing"
        );
        assert!(listeners >= 1, "the LISTEN connections were cut too");
    }
    Endings::all_completed_once(&db.pool, JOBS, 3 * MINUTE).await;

    woken_at_once(&db.pool, 2, JOBS).await;
    fleet.stop().await;
}

#[tokio::test]
async fn a_jobs_table_locked_past_the_lease_steals_no_lease_and_loses_no_outcome() {
    const JOBS: i64 = 400;
    let db = TestDb::new().await;
    install_audit(&db.pool).await;
    let fleet = Fleet::start(&db.url(), test_plugins::rust_dir(), 2, &[]).await;
    enqueue_n(
        &db.pool,
        "sleep",
        JOBS as usize,
        |i| json!({"ms": 1000 + i % 500}),
    )
    .await;
    eventually("jobs to be running on both runners", MINUTE, || async {
        let owners: i64 = db
            .scalar("SELECT count(DISTINCT lease_owner) FROM jobrunner.jobs")
            .await;
        (owners == 2).then_some(())
    })
    .await;

    // Everything the runners do touches the jobs table: claims, outcomes, heartbeats, rescues
    // all queue up behind the lock, each holding a pooled connection while it waits.
    let mut locker = db.connect().await;
    let mut lock = locker.begin().await.unwrap();
    sqlx::query("LOCK TABLE jobrunner.jobs IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *lock)
        .await
        .unwrap();
    let waiting = eventually("runners to queue up behind the lock", MINUTE, || async {
        let waiting: i64 = db
            .scalar(
                "SELECT count(*) FROM pg_stat_activity
                  WHERE datname = current_database() AND application_name = 'jobrunner'
                    AND wait_event_type = 'Lock'",
            )
            .await;
        (waiting >= 4).then_some(waiting)
    })
    .await;
    // The fault itself: the table stays locked for eight seconds, longer than a lease (5 s).
    // Every lease lapses by the clock, but no runner could have renewed one.
    tokio::time::sleep(Duration::from_secs(8)).await;
    lock.rollback().await.unwrap();
    eprintln!("jobs table locked for 8 s with {waiting}+ runner statements waiting");

    Endings::all_completed_once(&db.pool, JOBS, 3 * MINUTE).await;
    let rescued: i64 = db
        .scalar("SELECT count(*) FROM public.endings WHERE attempt <> 1")
        .await;
    assert_eq!(
        rescued, 0,
        "no lease was taken from a runner that was only waiting"
    );
    let lost = fleet.events(
        "lease lost while running (another runner may have taken the job); abandoning this attempt",
    );
    assert!(lost.is_empty(), "{lost:?}");
    fleet.stop().await;
}

#[tokio::test]
async fn ten_thousand_jobs_failing_at_once_come_back_spread_out_and_the_database_answers() {
    const JOBS: i64 = 10_000;
    const BASE: f64 = 4.0;
    let db = TestDb::new().await;
    install_audit(&db.pool).await;
    enqueue_n(&db.pool, "flaky", JOBS as usize, |i| json!({"n": i})).await;
    let args = ["--concurrency", "50", "--backoff-base", "4s"];
    let fleet = Fleet::start(&db.url(), test_plugins::rust_dir(), 2, &args).await;

    // While the storm lasts, another client keeps enqueueing and timing it.
    let probe = {
        let pool = db.pool.clone();
        tokio::spawn(async move {
            let mut worst = Duration::ZERO;
            let mut probes = 0;
            while Endings::read(&pool).await.jobs < JOBS {
                let asked = Instant::now();
                // Due in an hour, so it stays out of the audit.
                let later = NewJob::new("echo", json!({"probe": probes}))
                    .schedule(Schedule::After(Duration::from_secs(3600)));
                runner::Queue::new(pool.clone())
                    .enqueue(&pool, &later)
                    .await
                    .unwrap();
                worst = worst.max(asked.elapsed());
                probes += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            (probes, worst)
        })
    };
    Endings::all_completed_once(&db.pool, JOBS, 5 * MINUTE).await;
    let (probes, worst) = probe.await.unwrap();

    // Each job's wait before its second attempt, from when its failure was recorded (a little
    // after the attempt settled on its delay, so a wait can be shorter than the jitter band).
    let (p10, p90, longest, busiest_ms): (f64, f64, f64, i64) = sqlx::query_as(
        "WITH waits AS (
             SELECT extract(epoch FROM run_at - (errors->0->>'at')::timestamptz)::float8 AS wait
               FROM jobrunner.jobs WHERE job_type = 'flaky'
         )
         SELECT percentile_cont(0.1) WITHIN GROUP (ORDER BY wait),
                percentile_cont(0.9) WITHIN GROUP (ORDER BY wait), max(wait),
                (SELECT count(*) FROM waits GROUP BY round(wait * 1000) ORDER BY 1 DESC LIMIT 1)
           FROM waits",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    eprintln!(
        "retry storm of {JOBS}: waits p10 {p10:.3} s, p90 {p90:.3} s, max {longest:.3} s \
         (jitter band {}–{BASE} s); at most {busiest_ms} jobs in any one millisecond of wait; \
         {probes} enqueues meanwhile, slowest {worst:?}",
        BASE / 2.0
    );
    assert!(longest <= BASE + 0.1, "no wait beyond the band: {longest}");
    assert!(p90 - p10 > BASE / 4.0, "spread over the band: {p10}–{p90}");
    assert!(
        busiest_ms < JOBS / 100,
        "no instant shared by many: {busiest_ms}"
    );
    assert!(
        worst < Duration::from_secs(2),
        "the database kept answering: {worst:?}"
    );
    fleet.stop().await;
}
