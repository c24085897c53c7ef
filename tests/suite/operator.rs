//! What operators do to a running queue from the CLI: pause and resume a job type, and cancel
//! a running job, whose runner stops the guest and records who cancelled it.

use std::time::{Duration, Instant};

use runner::client::{JobState, NewJob};
use serde_json::json;

use crate::support::live::Live;
use crate::support::plugins::linked;
use crate::support::process::run_cli;
use crate::support::{TestDb, enqueue, eventually, settled, state_of};

const WAIT: Duration = Duration::from_secs(30);

async fn cli(db: &TestDb, args: &[&str]) -> String {
    let (status, stdout, stderr) = run_cli(&db.url(), args).await;
    assert!(status.success(), "{args:?}: {stdout}{stderr}");
    stdout
}

#[tokio::test]
async fn a_paused_job_type_is_claimed_by_no_runner_until_resumed() {
    let db = TestDb::new().await;
    let dir = linked(&["echo", "sleep"]);
    let live = Live::start(&db, dir.path(), &[]).await;
    let paused = cli(&db, &["jobs", "pause-type", "echo", "--by", "ops-alice"]).await;
    assert!(paused.contains("job type echo paused"), "{paused}");
    assert!(cli(&db, &["jobs", "paused"]).await.contains("ops-alice"));

    let echo = enqueue(&db, &NewJob::new("echo", json!({"n": 1}))).await;
    // The runner is claiming: the other type's jobs run, after the echo job was enqueued.
    for n in 0..3 {
        let other = enqueue(&db, &NewJob::new("sleep", json!({"ms": n}))).await;
        settled(&db.queue(), other, JobState::Completed).await;
    }
    assert_eq!(
        state_of(&db, echo).await,
        "available",
        "a paused type is not claimed"
    );

    let resumed = cli(&db, &["jobs", "resume-type", "echo"]).await;
    assert!(resumed.contains("job type echo resumed"), "{resumed}");
    settled(&db.queue(), echo, JobState::Completed).await;
    assert!(
        cli(&db, &["jobs", "paused"])
            .await
            .contains("no job type is paused")
    );
    let (status, _, stderr) = run_cli(&db.url(), &["jobs", "pause-type", ""]).await;
    assert!(!status.success() && stderr.contains("job type"), "{stderr}");
    live.stop().await;
}

/// Waits until job `id` is running (leased, or held by a batch).
async fn running(db: &TestDb, id: i64) {
    eventually(&format!("job {id} to run"), WAIT, || async {
        (db.queue().job(id).await.unwrap().state == JobState::Running).then_some(())
    })
    .await;
}

#[tokio::test]
async fn cancelling_a_running_job_stops_its_guest_and_records_who_cancelled_it() {
    let db = TestDb::new().await;
    let dir = linked(&["echo", "sleep"]);
    let live = Live::start(&db, dir.path(), &[]).await;
    // The first runs under a lease (the runner was idle); the second, claimed while the first
    // runs, in a batch transaction that holds it for up to a second.
    let leased = enqueue(&db, &NewJob::new("sleep", json!({"ms": 600_000}))).await;
    running(&db, leased).await;
    let batched = enqueue(&db, &NewJob::new("sleep", json!({"ms": 600_001}))).await;
    running(&db, batched).await;
    let held_by: Vec<Option<i64>> = sqlx::query_scalar(
        "SELECT batch_id FROM jobrunner.job_status WHERE id = ANY($1) ORDER BY id",
    )
    .bind([leased, batched])
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert!(
        held_by[0].is_none() && held_by[1].is_some(),
        "one leased, one in a batch: {held_by:?}"
    );

    for (id, by) in [(batched, "ops-bob"), (leased, "ops-alice")] {
        let asked = Instant::now();
        let out = cli(&db, &["jobs", "cancel", &id.to_string(), "--by", by]).await;
        let took = asked.elapsed();
        assert!(out.contains(&format!("job {id} is cancelled now")), "{out}");
        let job = db.queue().job(id).await.unwrap();
        assert_eq!(
            (job.state, job.cancelled_by.as_deref()),
            (JobState::Cancelled, Some(by))
        );
        eprintln!("job {id}: cancelled {took:?} after the request, CLI included");
        live.event("job cancelled while running; its guest stopped", |e| {
            e["job_id"] == id
        })
        .await;
        assert_eq!(job.attempt, 1, "the stopped attempt counts");
    }
    // A job that is not running or available cannot be cancelled.
    let (status, _, stderr) = run_cli(&db.url(), &["jobs", "cancel", &leased.to_string()]).await;
    assert!(
        !status.success() && stderr.contains("cancelled"),
        "{stderr}"
    );
    // The runner is free again: its executors were not held by the stopped guests.
    let next = enqueue(&db, &NewJob::new("echo", json!({}))).await;
    settled(&db.queue(), next, JobState::Completed).await;
    live.stop().await;
}

#[tokio::test]
async fn a_cancellation_missed_while_the_runner_was_not_listening_is_found_when_it_listens_again() {
    let db = TestDb::new().await;
    let dir = linked(&["echo", "sleep"]);
    let live = Live::start(&db, dir.path(), &[]).await;
    let id = enqueue(&db, &NewJob::new("sleep", json!({"ms": 600_000}))).await;
    running(&db, id).await;
    // Asked without the notification, as if it was sent while the runner was reconnecting.
    sqlx::query("UPDATE jobrunner.jobs SET cancelled_by = 'ops-carol' WHERE id = $1")
        .bind(id)
        .execute(&db.pool)
        .await
        .unwrap();
    let listener: i32 = sqlx::query_scalar(
        "SELECT pid FROM pg_stat_activity
          WHERE datname = current_database() AND query LIKE 'LISTEN%'",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    sqlx::query("SELECT pg_terminate_backend($1)")
        .bind(listener)
        .execute(&db.pool)
        .await
        .unwrap();
    let job = settled(&db.queue(), id, JobState::Cancelled).await;
    assert_eq!(job.cancelled_by.as_deref(), Some("ops-carol"));
    live.event(
        "cancellation found after reconnecting; stopping the job",
        |e| e["job_id"] == id,
    )
    .await;
    live.stop().await;
}
