//! Runners that die, freeze or are told to stop while they hold jobs.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sqlx::PgPool;

use crate::support::fleet::{Endings, Fleet, enqueue_n, install_audit};
use crate::support::live::Live;
use crate::support::{TestDb, eventually};

const MINUTE: Duration = Duration::from_secs(60);

/// `(id, attempt)` of the jobs `owner` holds, under leases or in batch transactions.
async fn held_by(pool: &PgPool, owner: &str) -> Vec<(i64, i32)> {
    sqlx::query_as(
        "SELECT id, attempt FROM jobrunner.job_status WHERE state = 'running' AND lease_owner = $1",
    )
    .bind(owner)
    .fetch_all(pool)
    .await
    .unwrap()
}

/// Of `jobs` (id, attempt when `owner` held them): how many `owner` no longer holds, and how
/// many have been claimed again (a higher attempt, or held by another runner) or have ended
/// (failed, or completed: kept or deleted).
async fn released_and_resumed(pool: &PgPool, owner: &str, jobs: &[(i64, i32)]) -> (usize, usize) {
    let (ids, attempts): (Vec<i64>, Vec<i32>) = jobs.iter().copied().unzip();
    let (released, claimed_again): (i64, i64) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE j.id IS NULL OR j.state <> 'running'
                                        OR j.lease_owner <> $1),
                count(*) FILTER (WHERE j.id IS NULL OR j.attempt > t.attempt
                                        OR j.state IN ('completed', 'failed')
                                        OR (j.state = 'running' AND j.lease_owner <> $1))
           FROM unnest($2::bigint[], $3::int[]) AS t(id, attempt)
           LEFT JOIN jobrunner.job_status j USING (id)",
    )
    .bind(owner)
    .bind(&ids)
    .bind(&attempts)
    .fetch_one(pool)
    .await
    .unwrap();
    (released as usize, claimed_again as usize)
}

/// Times, from a kill, until every job the killed runner held is back in the queue
/// (`released`) and until each has been claimed again or has ended (`resumed`).
struct Recovery {
    released: Duration,
    resumed: Duration,
}

async fn watch_recovery(pool: PgPool, owner: String, killed: Instant) -> Recovery {
    let jobs = held_by(&pool, &owner).await;
    let mut released = None;
    loop {
        let (back, again) = released_and_resumed(&pool, &owner, &jobs).await;
        if back == jobs.len() && released.is_none() {
            released = Some(killed.elapsed());
        }
        if again == jobs.len() {
            let resumed = killed.elapsed();
            let released = released.unwrap_or(resumed);
            return Recovery { released, resumed };
        }
        assert!(
            killed.elapsed() < 5 * MINUTE,
            "{owner}'s jobs never resumed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// How many times longer the soak variants run: `JOBRUNNER_SOAK=10 tests/run --profile soak
/// reliability::` kills 200 times over 200,000 jobs.
fn soak() -> usize {
    std::env::var("JOBRUNNER_SOAK").map_or(1, |n| n.parse().expect("JOBRUNNER_SOAK is a number"))
}

#[tokio::test]
async fn twenty_kills_of_three_runners_draining_lose_and_repeat_no_completion() {
    let (kills, jobs) = (20 * soak(), 20_000 * soak());
    let db = TestDb::new().await;
    install_audit(&db.pool).await;
    let args = ["--concurrency", "20"];
    let mut fleet = Fleet::start(&db.url(), test_plugins::rust_dir(), 3, &args).await;

    let mut recoveries = Vec::new();
    for kill in 0..kills {
        // Each kill brings its own work (about 1.3 s of it for 60 executors), so the victim
        // has jobs to hold however long the runners take to restart.
        enqueue_n(
            &db.pool,
            "sleep",
            jobs / kills,
            |i| json!({"ms": 60 + i % 40}),
        )
        .await;
        let victim = kill % 3;
        let owner = fleet.runners[victim].owner();
        // Mid-batch: the victim holds claimed jobs, some running, some waiting for an executor.
        eventually(&format!("{owner} to hold jobs"), MINUTE, || async {
            (!held_by(&db.pool, &owner).await.is_empty()).then_some(())
        })
        .await;
        let killed = Instant::now();
        fleet.kill_and_replace(victim).await;
        recoveries.push(tokio::spawn(watch_recovery(db.pool.clone(), owner, killed)));
    }
    Endings::all_completed_once(&db.pool, jobs as i64, 5 * MINUTE * soak() as u32).await;
    every_completion_has_its_line_and_every_other_line_a_correction(&db, &fleet).await;
    let mut worst = Recovery {
        released: Duration::ZERO,
        resumed: Duration::ZERO,
    };
    for recovery in recoveries {
        let recovery = recovery.await.unwrap();
        worst.released = worst.released.max(recovery.released);
        worst.resumed = worst.resumed.max(recovery.resumed);
    }
    eprintln!(
        "{kills} kills, {jobs} jobs: each completed once; killed runners' jobs back in the \
         queue within {:?} at most, claimed again within {:?} at most",
        worst.released, worst.resumed
    );
    assert!(
        worst.resumed < Duration::from_secs(10),
        "a killed runner's jobs run again within 10 s: {:?}",
        worst.resumed
    );
    let rescued: i64 = db
        .scalar("SELECT count(*) FROM public.endings WHERE attempt > 1")
        .await;
    assert!(rescued > 0, "the killed attempts were counted");
    fleet.stop().await;
}

#[tokio::test]
async fn a_frozen_runners_late_outcomes_are_fenced_off_and_the_rescuers_results_stand() {
    const JOBS: usize = 10;
    let db = TestDb::new().await;
    install_audit(&db.pool).await;
    let args = [
        "--lease",
        "1s",
        "--rescue-interval",
        "100ms",
        "--backoff-base",
        "100ms",
    ];
    let dir = test_plugins::rust_dir();
    let stale = Live::start_on(&db.url(), dir, &args).await;
    let stale_owner = stale.owner();
    enqueue_n(&db.pool, "sleep", JOBS, |i| json!({"ms": 1500 + i})).await;
    eventually("the first runner to hold every job", MINUTE, || async {
        (held_by(&db.pool, &stale_owner).await.len() == JOBS).then_some(())
    })
    .await;
    stale.freeze().await;
    let healthy = Live::start_on(&db.url(), dir, &args).await;
    Endings::all_completed_once(&db.pool, JOBS as i64, MINUTE).await;

    stale.thaw();
    // Each late attempt either finishes and has its outcome refused by the fencing token, or
    // hears from its heartbeat first that the lease is gone and is abandoned.
    let (fenced, abandoned) =
        eventually("the stale runner to give up every job", MINUTE, || async {
            let log = stale.log();
            let fenced = log.iter().filter(|e| e["outcome"] == "lease_lost").count();
            let abandoned = log
                .iter()
                .filter(|e| {
                    let message = e["message"].as_str().unwrap_or_default();
                    message.starts_with("lease lost while running")
                })
                .count();
            (fenced + abandoned == JOBS).then_some((fenced, abandoned))
        })
        .await;
    eprintln!("stale runner: {fenced} outcomes refused by fencing, {abandoned} attempts abandoned");

    let endings = Endings::read(&db.pool).await;
    assert!(endings.twice.is_empty(), "no job ended twice: {endings:?}");
    let by: Vec<(Option<String>, i32)> =
        sqlx::query_as("SELECT DISTINCT owner, attempt FROM public.endings")
            .fetch_all(&db.pool)
            .await
            .unwrap();
    assert_eq!(
        by,
        vec![(Some(healthy.owner()), 2)],
        "the rescuing runner completed every job, as their second attempt"
    );
    stale.stop().await;
    healthy.stop().await;
}

#[tokio::test]
async fn sigterm_with_a_thousand_jobs_in_flight_loses_and_counts_none_of_them() {
    const JOBS: i64 = 3000;
    const LONG: usize = 10;
    let db = TestDb::new().await;
    install_audit(&db.pool).await;
    // First in line, jobs of 10 s, which cannot finish within the 2 s shutdown deadline once
    // started; then jobs of 0.2 to 4 s, of which some finish within it and some may not.
    enqueue_n(&db.pool, "sleep", LONG, |_| json!({"ms": 10_000})).await;
    let long: Vec<i64> = db.scalar("SELECT array_agg(id) FROM jobrunner.jobs").await;
    enqueue_n(
        &db.pool,
        "sleep",
        JOBS as usize - LONG,
        |i| json!({"ms": 200 + i * 37 % 3800}),
    )
    .await;
    let args = ["--concurrency", "1000", "--shutdown-timeout", "2s"];
    let dir = test_plugins::rust_dir();
    let starts = [("RUST_LOG", "info,jobrunner::attempt=debug")];
    let first = Live::start_with_env(&db.url(), dir, &args, &starts).await;
    // In flight: started in a sandbox, not only claimed.
    eventually(
        "1,000 jobs in flight, the long ones among them",
        MINUTE,
        || async {
            let started = first.events("job started");
            let has = |id: &i64| started.iter().any(|e| e["job_id"] == *id);
            (started.len() >= 1000 && long.iter().all(has)).then_some(())
        },
    )
    .await;
    let running = || async {
        db.scalar::<i64>("SELECT count(*) FROM jobrunner.job_status WHERE state = 'running'")
            .await
    };
    let signalled = Instant::now();
    first.stop().await;
    eprintln!(
        "SIGTERM with 1,000 jobs in flight: exited in {:?}",
        signalled.elapsed()
    );

    assert_eq!(
        running().await,
        0,
        "nothing is left leased by a runner that stopped"
    );
    let done = Endings::read(&db.pool).await;
    assert!(
        done.completed > 0,
        "jobs that finished in time completed: {done:?}"
    );
    let counted: i64 = db
        .scalar("SELECT count(*) FROM jobrunner.jobs WHERE state = 'available' AND attempt > 0")
        .await;
    assert_eq!(counted, 0, "an interrupted attempt does not count");
    let long_after: Vec<(String, i32)> =
        sqlx::query_as("SELECT state::text, attempt FROM jobrunner.jobs WHERE id = ANY($1)")
            .bind(&long)
            .fetch_all(&db.pool)
            .await
            .unwrap();
    assert_eq!(
        long_after,
        vec![("available".to_owned(), 0); LONG],
        "the jobs still running at the deadline were interrupted and requeued, uncounted"
    );

    let second = Live::start_on(&db.url(), dir, &args).await;
    Endings::all_completed_once(&db.pool, JOBS, 2 * MINUTE).await;
    let retried: i64 = db
        .scalar("SELECT count(*) FROM public.endings WHERE attempt <> 1")
        .await;
    let warnings: Vec<Value> = (second.log().into_iter())
        .filter(|line| line["level"] == "WARN")
        .take(10)
        .collect();
    assert_eq!(
        retried, 0,
        "every job completed on its first counted attempt; the runner warned: {warnings:#?}"
    );
    eprintln!(
        "{} jobs completed before the shutdown, {} after the restart",
        done.completed,
        JOBS - done.completed
    );
    second.stop().await;
}

/// The outcome log survives SIGKILL as the database does: every committed completion has its
/// "job completed" line (written before the statement that commits it), and each such line
/// whose outcome did not come true (its runner died first, or was fenced off) is followed by
/// a line for the same job and attempt that says what did.
async fn every_completion_has_its_line_and_every_other_line_a_correction(
    db: &TestDb,
    fleet: &Fleet,
) {
    let endings: Vec<(i64, i32)> = sqlx::query_as("SELECT job_id, attempt FROM public.endings")
        .fetch_all(&db.pool)
        .await
        .unwrap();
    let ended: HashMap<i64, i64> = endings.iter().map(|(id, a)| (*id, i64::from(*a))).collect();
    let lines = fleet.outcome_lines();
    let of = |line: &Value| {
        (
            line["job_id"].as_i64().unwrap(),
            line["attempt"].as_i64().unwrap(),
        )
    };
    let completed: HashSet<(i64, i64)> = lines
        .iter()
        .filter(|line| line["message"] == "job completed")
        .map(of)
        .collect();
    let missing: Vec<_> = ended
        .iter()
        .filter(|(id, attempt)| !completed.contains(&(**id, **attempt)))
        .collect();
    assert!(
        missing.is_empty(),
        "{} of {} completions have no \"job completed\" line, e.g. {:?}",
        missing.len(),
        ended.len(),
        &missing[..missing.len().min(10)]
    );
    let corrected: HashSet<(i64, i64)> = lines
        .iter()
        .filter(|line| line["outcome"] != "completed")
        .map(of)
        .collect();
    let uncorrected: Vec<_> = completed
        .iter()
        .filter(|(id, attempt)| ended.get(id) != Some(attempt))
        .filter(|key| !corrected.contains(key))
        .collect();
    let example: Vec<&Value> = uncorrected.first().map_or(Vec::new(), |(id, _)| {
        lines.iter().filter(|line| line["job_id"] == *id).collect()
    });
    assert!(
        uncorrected.is_empty(),
        "completion lines that did not come true, without a correcting line: {uncorrected:?}; \
         the lines of the first: {example:#?}; its ending: {:?}",
        uncorrected.first().map(|(id, _)| ended.get(id))
    );
}
