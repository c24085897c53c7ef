//! Runners that die or freeze while they hold jobs in batch transactions.

use std::time::{Duration, Instant};

use serde_json::json;
use sqlx::PgPool;

use crate::support::fleet::{Endings, Fleet, enqueue_n, install_audit};
use crate::support::live::Live;
use crate::support::{TestDb, eventually};

const MINUTE: Duration = Duration::from_secs(60);

/// The jobs `owner` holds in batch transactions, with the attempt each runs as.
async fn in_batches_of(pool: &PgPool, owner: &str) -> Vec<(i64, i32)> {
    sqlx::query_as(
        "SELECT id, attempt FROM jobrunner.job_status
          WHERE state = 'running' AND lease_owner = $1 AND batch_id IS NOT NULL",
    )
    .bind(owner)
    .fetch_all(pool)
    .await
    .unwrap()
}

/// Who holds job `id` now (under a lease or in a batch), and its state.
async fn holder(pool: &PgPool, id: i64) -> (String, Option<String>) {
    sqlx::query_as("SELECT state::text, lease_owner FROM jobrunner.job_status WHERE id = $1")
        .bind(id)
        .fetch_one(pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn a_job_that_kills_every_runner_holding_it_fails_after_max_attempts_each_death_counted() {
    let db = TestDb::new().await;
    let mut fleet = Fleet::start(&db.url(), test_plugins::rust_dir(), 2, &[]).await;
    // Work that keeps the runners busy: a busy runner claims in batch transactions.
    let filler = |_| json!({"ms": 300});
    enqueue_n(&db.pool, "sleep", 200, filler).await;
    let busy: i64 = eventually("both runners to run jobs", MINUTE, || async {
        let busy: i64 = db
            .scalar("SELECT count(DISTINCT lease_owner) FROM jobrunner.job_status WHERE state = 'running'")
            .await;
        (busy == 2).then_some(busy)
    })
    .await;
    assert_eq!(busy, 2);
    // Long enough that whoever holds it is killed before it ends.
    let poison = runner::NewJob::new("sleep", json!({"ms": 5000}))
        .priority(-1)
        .max_attempts(3);
    let id = db.queue().enqueue(&db.pool, &poison).await.unwrap().id;

    // Kill whichever runner holds it, until it fails; each time, it must be running elsewhere
    // (or be failed, its attempts used up) within 10 s.
    let (mut kills, mut in_batch, mut slowest) = (0, 0, Duration::ZERO);
    let mut killed_at: Option<Instant> = None;
    let give_up = Instant::now() + 3 * MINUTE;
    loop {
        assert!(Instant::now() < give_up, "the job never failed");
        let job = db.queue().job(id).await.unwrap();
        let (state, owner) = holder(&db.pool, id).await;
        let failed = job.state == runner::JobState::Failed;
        let held = (state == "running").then_some(owner).flatten();
        if let Some(at) = killed_at.filter(|_| failed || held.is_some()) {
            slowest = slowest.max(at.elapsed());
            killed_at = None;
        }
        if failed {
            break;
        }
        let Some(owner) = held else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let Some(victim) = fleet.runners.iter().position(|r| r.owner() == owner) else {
            // Still shown as held by a runner killed before: its batch awaits the rescuer.
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        if in_batches_of(&db.pool, &owner)
            .await
            .iter()
            .any(|&(j, _)| j == id)
        {
            in_batch += 1;
        }
        killed_at = Some(Instant::now());
        fleet.kill_and_replace(victim).await;
        kills += 1;
        enqueue_n(&db.pool, "sleep", 100, filler).await;
    }
    assert!(
        slowest < Duration::from_secs(10),
        "after each kill, running elsewhere within 10 s: {slowest:?}"
    );
    let job = db.queue().job(id).await.unwrap();
    assert_eq!((job.state, job.attempt), (runner::JobState::Failed, 3));
    for error in &job.errors {
        assert!(
            error.error.contains("died") || error.error.contains("stopped heartbeating"),
            "each attempt is counted as its runner's death: {error:?}"
        );
    }
    assert_eq!(kills, 3, "it ran max_attempts times, no more");
    assert!(in_batch > 0, "the job was killed in a batch transaction");
    eprintln!(
        "{kills} kills, {in_batch} of them in a batch transaction; back within {slowest:?} at most"
    );
    fleet.stop().await;
}

#[tokio::test]
async fn a_runner_frozen_mid_batch_loses_its_jobs_to_another_and_none_of_its_outcomes_lands() {
    let db = TestDb::new().await;
    install_audit(&db.pool).await;
    let dir = test_plugins::rust_dir();
    let args = ["--concurrency", "10"];
    let frozen = Live::start(&db, dir, &args).await;
    let frozen_owner = frozen.owner();
    enqueue_n(&db.pool, "sleep", 300, |_| json!({"ms": 400})).await;
    let held = eventually("the runner to hold jobs in a batch", MINUTE, || async {
        Some(in_batches_of(&db.pool, &frozen_owner).await).filter(|held| !held.is_empty())
    })
    .await;
    frozen.freeze().await;
    // Whatever it held now: it may have committed the batch seen above just before.
    let held = match in_batches_of(&db.pool, &frozen_owner).await {
        now if !now.is_empty() => now,
        _ => held,
    };
    let ids: Vec<i64> = held.iter().map(|&(id, _)| id).collect();
    let frozen_at = Instant::now();
    let other = Live::start(&db, dir, &args).await;
    let other_owner = other.owner();
    // Postgres ends the frozen runner's batch transaction (idle in transaction); the rescuer
    // counts its attempts, and the other runner runs the jobs.
    let taken = eventually(
        "the other runner to run the frozen batch's jobs",
        MINUTE,
        || {
            let ids = ids.clone();
            let pool = db.pool.clone();
            let other_owner = other_owner.clone();
            async move {
                let mut all = true;
                for &id in &ids {
                    let (state, owner): (String, Option<String>) = sqlx::query_as(
                    "SELECT coalesce((SELECT state::text FROM jobrunner.job_status WHERE id = $1),
                                     'completed'),
                            (SELECT lease_owner FROM jobrunner.job_status WHERE id = $1)",
                )
                .bind(id)
                .fetch_one(&pool)
                .await
                .unwrap();
                    all &= state == "completed" || owner.as_deref() == Some(&other_owner);
                }
                all.then_some(frozen_at.elapsed())
            }
        },
    )
    .await;
    assert!(
        taken < Duration::from_secs(10),
        "run elsewhere within 10 s: {taken:?}"
    );

    frozen.thaw();
    frozen
        .event(
            "batch transaction lost: none of its outcomes was recorded; its jobs run again, \
             their attempts counted, and those still running here are abandoned",
            |_| true,
        )
        .await;
    Endings::all_completed_once(&db.pool, 300, MINUTE).await;
    let endings: Vec<(i64, Option<String>, i32)> =
        sqlx::query_as("SELECT job_id, owner, attempt FROM public.endings WHERE job_id = ANY($1)")
            .bind(&ids)
            .fetch_all(&db.pool)
            .await
            .unwrap();
    assert_eq!(endings.len(), ids.len(), "each ended once: {endings:?}");
    assert!(
        endings.iter().all(|(_, owner, attempt)| {
            owner.as_deref() != Some(&frozen_owner) && *attempt == 2
        }),
        "none by the frozen runner; each completed as its second attempt, the frozen one \
         counted: {endings:?}"
    );
    // Its lines, written before its commit was tried, are each corrected by a later one.
    let lines: Vec<_> = (frozen.log().into_iter())
        .filter(|e| e["target"] == "jobrunner::outcome")
        .filter(|e| ids.contains(&e["job_id"].as_i64().unwrap()))
        .collect();
    for (i, line) in lines.iter().enumerate() {
        if line["message"] == "job completed" {
            let corrected = lines[i + 1..].iter().any(|later| {
                later["job_id"] == line["job_id"]
                    && later["attempt"] == line["attempt"]
                    && later["outcome"] == "lease_lost"
            });
            assert!(corrected, "{line} is never corrected: {lines:#?}");
        }
    }
    frozen.stop().await;
    other.stop().await;
}
