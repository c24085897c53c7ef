//! A database that goes away, cuts connections, stalls, or is flooded with retries.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use runner::private_pg::PrivatePostgres;
use runner::{NewJob, Schedule};
use serde_json::{Value, json};
use sqlx::postgres::PgPoolOptions;
use sqlx::{Connection, PgPool};

use crate::support::fleet::{Endings, Fleet, enqueue_n, install_audit};
use crate::support::live::Live;
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

/// Waits until `leases`, the last of which expires at `expiry`, have lapsed by the clock.
async fn lapsed(leases: &str, expiry: DateTime<Utc>) {
    eventually(&format!("{leases} to lapse"), MINUTE, || async {
        (Utc::now() > expiry).then_some(())
    })
    .await;
}

/// Jobs this long are still running when the database comes back: the outage lasts about
/// 11 s, most of it the runners' pools giving up on a connection (10 s).
const OUTLASTS_THE_OUTAGE_MS: u64 = 30_000;

/// The attempt log line a runner writes when a guest is done, before its outcome is recorded.
const RAN: &str = "job ran; recording its outcome";

/// When a log event was written.
fn logged_at(event: &Value) -> DateTime<Utc> {
    let at = event["timestamp"].as_str().expect("events are timestamped");
    at.parse().expect("an RFC 3339 timestamp")
}

/// The jobs whose guests `runner` saw finish, each with when.
fn ran(runner: &Live) -> Vec<(i64, DateTime<Utc>)> {
    let events = runner.events(RAN).into_iter();
    events
        .map(|e| (e["job_id"].as_i64().unwrap(), logged_at(&e)))
        .collect()
}

/// What the runners held when they were frozen: each leased job's holder, when the last of
/// those leases expires (frozen, they renew none of them), and the jobs they held in batch
/// transactions.
struct Held {
    holders: HashMap<i64, String>,
    expiry: DateTime<Utc>,
    in_batches: Vec<i64>,
}

impl Held {
    /// The jobs `runner` held whose guests it saw finish, each with when.
    fn finished_by(&self, runner: &Live) -> Vec<(i64, DateTime<Utc>)> {
        let owner = runner.owner();
        let mut finished = ran(runner);
        finished.retain(|(id, _)| self.holders.get(id) == Some(&owner));
        finished
    }
}

/// Freezes the runners at a moment when each holds jobs, and makes the claims of those jobs
/// durable: claims commit without waiting for the disk, so the last ones before a crash may
/// be lost (their jobs then run again, as if never claimed).
async fn freeze_holding_jobs(fleet: &Fleet, pool: &PgPool) -> Held {
    let owners: Vec<String> = fleet.runners.iter().map(Live::owner).collect();
    let give_up = Instant::now() + MINUTE;
    loop {
        fleet.freeze().await;
        let (held, in_batches): (Vec<_>, Vec<_>) = sqlx::query_as(
            "SELECT id, lease_owner, lease_expires_at FROM jobrunner.job_status
              WHERE state = 'running'",
        )
        .fetch_all(pool)
        .await
        .unwrap()
        .into_iter()
        .partition(|(_, _, expiry): &(i64, String, Option<DateTime<Utc>>)| expiry.is_some());
        let held: Vec<(i64, String, DateTime<Utc>)> = (held.into_iter())
            .map(|(id, holder, expiry)| (id, holder, expiry.unwrap()))
            .collect();
        let holding = |owner: &String| held.iter().any(|(_, holder, _)| holder == owner);
        if owners.iter().all(holding) {
            // A checkpoint writes the WAL to disk, and with it every claim committed before.
            // (A commit that wrote no data does not wait for the disk, even with an id.)
            sqlx::query("CHECKPOINT").execute(pool).await.unwrap();
            let expiry = held.iter().map(|&(_, _, expiry)| expiry).max().unwrap();
            let holders = held.into_iter().map(|(id, holder, _)| (id, holder));
            return Held {
                holders: holders.collect(),
                expiry,
                in_batches: in_batches.into_iter().map(|(id, _, _)| id).collect(),
            };
        }
        fleet.thaw();
        assert!(Instant::now() < give_up, "the runners never both held jobs");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Checks, by what was committed, that each outcome `runner` came to while the database was
/// down (between `down` and `back`), for a job it held at the freeze, was kept and written
/// once the database was back: by `runner`, as the job's first and only attempt. Returns how
/// many there were; there must be some.
async fn check_kept(
    pool: &PgPool,
    fleet: &Fleet,
    runner: &Live,
    held: &Held,
    (down, back): (DateTime<Utc>, DateTime<Utc>),
) -> usize {
    let owner = runner.owner();
    let during: Vec<i64> = (held.finished_by(runner).into_iter())
        .filter(|&(_, at)| down < at && at < back)
        .map(|(id, _)| id)
        .collect();
    assert!(!during.is_empty(), "{owner} finished jobs meanwhile");
    let endings: Vec<(i64, i32, Option<String>, DateTime<Utc>)> = sqlx::query_as(
        "SELECT job_id, attempt, owner, at FROM public.endings WHERE job_id = ANY($1)",
    )
    .bind(&during)
    .fetch_all(pool)
    .await
    .unwrap();
    assert_eq!(endings.len(), during.len(), "each ended once");
    for (id, attempt, recorded_by, at) in endings {
        assert_eq!(
            (attempt, recorded_by.as_ref()),
            (1, Some(&owner)),
            "job {id}: recorded by the runner that ran it; the runners logged {:#?}",
            fleet.job_events(id)
        );
        assert!(at > back, "job {id}: recorded after the restart, at {at}");
    }
    during.len()
}

#[tokio::test]
async fn a_database_restart_mid_drain_loses_no_job_and_no_outcome() {
    const JOBS: i64 = 3000;
    const LONG: usize = 4;
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
    // First in line, a few jobs that are still running when the database comes back, their
    // leases lapsed by the clock; then a drain of short ones.
    let long = json!({"ms": OUTLASTS_THE_OUTAGE_MS});
    enqueue_n(&pool, "sleep", LONG, |_| long.clone()).await;
    let long: Vec<i64> = sqlx::query_scalar("SELECT id FROM jobrunner.jobs")
        .fetch_all(&pool)
        .await
        .unwrap();
    // Every tenth runs past the batch bound, under a lease: the runners hold such jobs at the
    // freeze, and finish them during the outage.
    enqueue_n(
        &pool,
        "sleep",
        JOBS as usize - LONG,
        |i| json!({"ms": if i % 10 == 0 { 1500 + i % 1000 } else { 20 + i % 20 }}),
    )
    .await;
    // An hour between polls: after the drain only a notification can wake a runner.
    let args = ["--concurrency", "20", "--poll-interval", "1h"];
    let attempts = [("RUST_LOG", "info,jobrunner::attempt=debug")];
    let dir = test_plugins::rust_dir();
    let fleet = Fleet::start_with_env(&url, dir, 2, &args, &attempts).await;
    ended(&pool, JOBS / 5).await;

    // Frozen while the database stops (immediately, as in a crash; committed work survives in
    // the WAL), the runners hold jobs of which no outcome can be committed until it is back.
    let held = freeze_holding_jobs(&fleet, &pool).await;
    let stopped = Instant::now();
    cluster = blocking(move || {
        cluster.stop(true).unwrap();
        cluster
    })
    .await;
    let down = Utc::now();
    fleet.thaw();
    // The fault, made certain: the database stays down until each runner has finished jobs
    // it held and failed to record their outcomes (its pool gives up within 10 s), and every
    // lease held at the freeze has lapsed by the clock.
    for runner in &fleet.runners {
        let owner = runner.owner();
        let what = format!("{owner} to finish a job it held, with the database down");
        eventually(&what, MINUTE, || async {
            let finished = held.finished_by(runner);
            finished.iter().any(|&(_, at)| at > down).then_some(())
        })
        .await;
        runner
            .event("recording outcomes failed; retrying", |_| true)
            .await;
    }
    lapsed("the leases held at the freeze", held.expiry).await;
    let restarted = blocking(start).await;
    assert_eq!(restarted.url(), url, "the cluster came back on its address");
    let outage = stopped.elapsed();
    drop(cluster);
    let back: DateTime<Utc> = sqlx::query_scalar("SELECT pg_postmaster_start_time()")
        .fetch_one(&pool)
        .await
        .unwrap();

    Endings::all_completed_once(&pool, JOBS, 3 * MINUTE).await;
    let mut kept = 0;
    for runner in &fleet.runners {
        kept += check_kept(&pool, &fleet, runner, &held, (down, back)).await;
    }
    let long_ran: Vec<DateTime<Utc>> = (fleet.runners.iter().flat_map(ran))
        .filter(|(id, _)| long.contains(id))
        .map(|(_, at)| at)
        .collect();
    assert_eq!(long_ran.len(), LONG, "every long job ran once");
    assert!(
        held.expiry < back && long_ran.iter().all(|&at| at > back),
        "the long jobs were still running when the database came back (at {back}), their \
         leases lapsed (by {}): they finished at {long_ran:?}",
        held.expiry
    );
    eprintln!(
        "database down for {outage:?}: {JOBS} jobs completed once each; {kept} outcomes that \
         came about during the outage were kept and written after it"
    );
    // A batch transaction dies with the server: its jobs run again, their attempts counted.
    let again: Vec<i64> =
        sqlx::query_scalar("SELECT job_id FROM public.endings WHERE attempt <> 1 ORDER BY 1")
            .fetch_all(&pool)
            .await
            .unwrap();
    let not_in_batches: Vec<&i64> = (again.iter())
        .filter(|id| !held.in_batches.contains(id))
        .collect();
    assert!(
        not_in_batches.is_empty(),
        "no lease was taken from a runner that only lost the database: {not_in_batches:?}"
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
        // Each round cuts both LISTEN connections: the last round's are back first.
        eventually("both runners to LISTEN again", MINUTE, || async {
            (listening_runners(&db.pool).await == 2).then_some(())
        })
        .await;
        let (terminated, listeners) = terminate_runner_backends(&db).await;
        eprintln!(
            "round {round}: terminated {terminated} runner connections, {listeners} LISTENing"
        );
        assert_eq!(listeners, 2, "the LISTEN connections were cut too");
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

    // Everything the runners do touches the jobs table: claims, outcomes, heartbeats, rescues
    // all queue up behind the lock, each holding a pooled connection while it waits. Taken at
    // a moment when both runners hold jobs; read under the lock, what they hold cannot change.
    let mut locker = db.connect().await;
    let give_up = Instant::now() + MINUTE;
    let (lock, expiry) = loop {
        let mut lock = locker.begin().await.unwrap();
        sqlx::query("LOCK TABLE jobrunner.jobs IN ACCESS EXCLUSIVE MODE")
            .execute(&mut *lock)
            .await
            .unwrap();
        let (owners, expiry): (i64, Option<DateTime<Utc>>) = sqlx::query_as(
            "SELECT count(DISTINCT lease_owner), max(lease_expires_at)
               FROM jobrunner.jobs WHERE state = 'running'",
        )
        .fetch_one(&mut *lock)
        .await
        .unwrap();
        if owners == 2 {
            break (lock, expiry.unwrap());
        }
        lock.rollback().await.unwrap();
        assert!(
            Instant::now() < give_up,
            "both runners never held jobs at once"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let locked = Instant::now();
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
    // The fault itself: the table stays locked until every lease held under the lock has
    // lapsed by the clock, though no runner could have renewed one.
    lapsed("the leases held under the lock", expiry).await;
    let locked = locked.elapsed();
    lock.rollback().await.unwrap();
    eprintln!("jobs table locked for {locked:?} with {waiting}+ runner statements waiting");

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
