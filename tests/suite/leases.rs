//! Leases: fencing, rescue of expired leases, heartbeats.

use std::time::Duration;

use runner::driver::{ClaimRequest, ClaimType, Outcome, Settlement};
use runner::retry::{Backoff, BackoffKind};
use runner::{Handlers, JobState, ManualClock, NewJob, Queue, RetryPolicy, Worker, WorkerConfig};
use serde_json::json;

use crate::support::{TestDb, driver, eventually};

const LEASE: Duration = Duration::from_secs(5);

fn policy() -> RetryPolicy {
    RetryPolicy {
        max_attempts: 25,
        backoff: Backoff {
            kind: BackoffKind::Exponential,
            base: Duration::from_secs(10),
            cap: Duration::from_secs(60),
        },
    }
}

async fn claim_one(queue: &Queue, owner: &str) -> runner::Job {
    let types = [ClaimType::from("t")];
    let request = ClaimRequest {
        owner,
        job_types: &types,
        limit: 1,
        lease: LEASE,
        default_max_attempts: 25,
        after_tenant: None,
        floors: None,
        batch: None,
    };
    let mut jobs = driver(queue).claim(&request).await.unwrap().jobs;
    assert_eq!(jobs.len(), 1, "{owner} claims the job");
    jobs.pop().unwrap()
}

/// Records `settlement` as runner `owner` and returns the ids the fence let through.
async fn record_as(queue: &Queue, owner: &str, settlement: &Settlement) -> Vec<i64> {
    driver(queue)
        .record_outcomes(owner, false, [settlement])
        .await
        .unwrap()
}

fn completed(job: &runner::Job) -> Settlement {
    Settlement {
        job_id: job.id,
        attempt: job.attempt,
        outcome: Outcome::Completed {
            result: None,
            follow_ups: Vec::new(),
        },
        plugin_sha256: None,
        journal: None,
    }
}

/// A queue on a clock of the test's own, holding one job of type `t` that sets no max attempts.
async fn one_job(db: &TestDb) -> (ManualClock, Queue, i64) {
    let clock = ManualClock::starting_now();
    let queue = db.queue_with(clock.clone());
    let job = NewJob::new("t", json!({}));
    let id = queue.enqueue(&db.pool, &job).await.unwrap().id;
    (clock, queue, id)
}

#[tokio::test]
async fn fencing_rejects_a_stale_runners_outcome() {
    let db = TestDb::new().await;
    let (clock, queue, id) = one_job(&db).await;

    let stale = claim_one(&queue, "runner-a").await;
    clock.advance(LEASE + Duration::from_secs(1));
    let rescued = driver(&queue)
        .rescue_expired(&policy(), &[], 100, |_| {})
        .await
        .unwrap();
    assert_eq!(rescued.len(), 1);
    clock.advance(Duration::from_secs(60));
    let fresh = claim_one(&queue, "runner-b").await;
    assert_eq!((fresh.id, fresh.attempt), (id, 2));

    let applied = record_as(&queue, "runner-a", &completed(&stale)).await;
    assert!(
        applied.is_empty(),
        "runner A lost its lease: its completion must not count"
    );
    let record = queue.job(id).await.unwrap();
    assert_eq!(
        (record.state, record.lease_owner.as_deref()),
        (JobState::Running, Some("runner-b"))
    );

    // Right attempt, wrong owner: refused.
    let impostor = record_as(&queue, "runner-c", &completed(&fresh)).await;
    assert!(
        impostor.is_empty(),
        "only the lease owner may record an outcome"
    );

    // Same owner, old attempt: still refused.
    let replay = Settlement {
        attempt: 1,
        ..completed(&fresh)
    };
    assert!(record_as(&queue, "runner-b", &replay).await.is_empty());

    assert_eq!(
        record_as(&queue, "runner-b", &completed(&fresh)).await,
        [id]
    );
    assert_eq!(
        db.scalar::<i64>("SELECT count(*) FROM jobrunner.jobs")
            .await,
        0
    );
}

#[tokio::test]
async fn an_expired_lease_is_rescued_as_a_counted_attempt() {
    let db = TestDb::new().await;
    let clock = ManualClock::starting_now();
    let queue = db.queue_with(clock.clone());
    let job = NewJob::new("t", json!({})).max_attempts(2);
    let id = queue.enqueue(&db.pool, &job).await.unwrap().id;
    let due = queue.job(id).await.unwrap().run_at;

    claim_one(&queue, "runner-a").await;
    clock.advance(LEASE - Duration::from_secs(1));
    assert!(
        driver(&queue)
            .rescue_expired(&policy(), &[], 100, |_| {})
            .await
            .unwrap()
            .is_empty(),
        "lease still valid"
    );
    clock.advance(Duration::from_secs(2));
    let rescued = driver(&queue)
        .rescue_expired(&policy(), &[], 100, |_| {})
        .await
        .unwrap();
    assert_eq!(rescued.len(), 1);
    assert_eq!(
        (rescued[0].owner.as_str(), rescued[0].state),
        ("runner-a", JobState::Available)
    );

    let record = queue.job(id).await.unwrap();
    assert_eq!((record.state, record.attempt), (JobState::Available, 1));
    assert!(record.lease_owner.is_none());
    assert_eq!(
        record.run_at, due,
        "rescued in its place in line: the expired lease was its backoff"
    );
    assert_eq!(record.errors.len(), 1);
    assert_eq!(record.errors[0].attempt, 1);
    assert!(
        record.errors[0]
            .error
            .contains("lease expired: runner runner-a"),
        "{:?}",
        record.errors
    );

    // The last attempt's lease expiring fails the job for good.
    clock.advance(Duration::from_secs(10));
    claim_one(&queue, "runner-b").await;
    clock.advance(LEASE * 2);
    let rescued = driver(&queue)
        .rescue_expired(&policy(), &[], 100, |_| {})
        .await
        .unwrap();
    assert_eq!(rescued[0].state, JobState::Failed);
    let record = queue.job(id).await.unwrap();
    assert_eq!(
        (record.state, record.attempt, record.errors.len()),
        (JobState::Failed, 2, 2)
    );
}

#[tokio::test]
async fn the_rescuer_counts_attempts_against_the_types_max_attempts() {
    let db = TestDb::new().await;
    // The job sets no max attempts; its type (a plugin manifest) allows one, the runner 25.
    let (clock, queue, id) = one_job(&db).await;
    let types = [ClaimType {
        max_attempts: Some(1),
        ..ClaimType::from("t")
    }];
    claim_one(&queue, "runner-a").await;
    clock.advance(LEASE * 2);

    let rescued = driver(&queue)
        .rescue_expired(&policy(), &types, 100, |_| {})
        .await
        .unwrap();
    assert_eq!(
        rescued
            .iter()
            .map(|r| (r.job_id, r.state))
            .collect::<Vec<_>>(),
        [(id, JobState::Failed)],
        "the type's one attempt is used up"
    );
    assert_eq!(queue.job(id).await.unwrap().state, JobState::Failed);
}

#[tokio::test]
async fn concurrent_rescuers_count_an_expired_lease_once() {
    let db = TestDb::new().await;
    let clock = ManualClock::starting_now();
    let queue = db.queue_with(clock.clone());
    let jobs: Vec<NewJob> = (0..200).map(|i| NewJob::new("t", json!(i))).collect();
    queue.enqueue_many(&db.pool, &jobs).await.unwrap();
    let types = [ClaimType::from("t")];
    let request = ClaimRequest {
        owner: "dead",
        job_types: &types,
        limit: 200,
        lease: LEASE,
        default_max_attempts: 25,
        after_tenant: None,
        floors: None,
        batch: None,
    };
    driver(&queue).claim(&request).await.unwrap();
    clock.advance(LEASE * 2);

    let rescuers: Vec<_> = (0..4)
        .map(|_| {
            let queue = queue.clone();
            tokio::spawn(async move {
                driver(&queue)
                    .rescue_expired(&policy(), &[], 1000, |_| {})
                    .await
                    .unwrap()
                    .len()
            })
        })
        .collect();
    let mut total = 0;
    for rescuer in rescuers {
        total += rescuer.await.unwrap();
    }
    assert_eq!(total, 200, "each expired lease rescued exactly once");
    let (attempts, errors): (i64, i64) = sqlx::query_as(
        "SELECT sum(attempt), sum(jsonb_array_length(errors)) FROM jobrunner.jobs
          WHERE state = 'available'",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!((attempts, errors), (200, 200));
}

#[tokio::test]
async fn heartbeats_keep_a_long_job_leased() {
    let db = TestDb::new().await;
    let id = db
        .queue()
        .enqueue(&db.pool, &NewJob::new("slow", json!({})))
        .await
        .unwrap()
        .id;
    let slow = Handlers::new().on("slow", |_| async {
        tokio::time::sleep(Duration::from_millis(2500)).await;
        Ok(None)
    });
    let short_lease = WorkerConfig {
        lease: Duration::from_millis(900),
        rescue_interval: Duration::from_millis(100),
        keep_completed: Some(Duration::from_secs(3600)),
        ..WorkerConfig::default()
    };
    let worker = Worker::new(db.queue(), slow, short_lease.clone()).start();
    // A second runner that cannot run the job but rescues any lease it sees expire.
    let watcher = Worker::new(db.queue(), Handlers::new(), short_lease).start();

    let state = eventually(
        "the slow job to finish",
        Duration::from_secs(15),
        || async {
            let record = db.queue().job(id).await.unwrap();
            (record.state != JobState::Running && record.state != JobState::Available)
                .then_some(record)
        },
    )
    .await;
    assert_eq!(state.state, JobState::Completed);
    assert_eq!(
        state.attempt, 1,
        "never rescued while heartbeating: {:?}",
        state.errors
    );
    assert!(state.errors.is_empty());
    worker.shutdown().await;
    watcher.shutdown().await;
}

/// A completion the fence refuses writes none of its follow-ups; the one it lets through
/// writes them in the same transaction.
#[tokio::test]
async fn a_completion_the_fence_refuses_writes_no_follow_ups() {
    let db = TestDb::new().await;
    let (clock, queue, id) = one_job(&db).await;
    let with_follow_up = |job: &runner::Job| {
        let child = NewJob::new("child", json!({"of": job.attempt})).parent(job.id);
        let mut settlement = completed(job);
        settlement.outcome = Outcome::Completed {
            result: None,
            follow_ups: vec![child],
        };
        settlement
    };
    let stale = claim_one(&queue, "runner-a").await;
    clock.advance(LEASE + Duration::from_secs(1));
    driver(&queue)
        .rescue_expired(&policy(), &[], 100, |_| {})
        .await
        .unwrap();
    clock.advance(Duration::from_secs(60));
    let fresh = claim_one(&queue, "runner-b").await;
    assert!(
        record_as(&queue, "runner-a", &with_follow_up(&stale))
            .await
            .is_empty()
    );
    let children =
        || db.scalar::<i64>("SELECT count(*) FROM jobrunner.jobs WHERE job_type = 'child'");
    assert_eq!(children().await, 0, "the refused completion's follow-up");
    assert_eq!(
        record_as(&queue, "runner-b", &with_follow_up(&fresh)).await,
        [id]
    );
    let (parent, payload): (Option<i64>, serde_json::Value) =
        sqlx::query_as("SELECT parent_id, payload FROM jobrunner.jobs WHERE job_type = 'child'")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!((parent, payload), (Some(id), json!({"of": 2})));
}
