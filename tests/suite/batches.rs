//! Batch transactions: jobs claimed by locking their rows, recorded as the batch commits,
//! counted when the batch is lost, and shown as running meanwhile.

use std::sync::Arc;
use std::time::Duration;

use runner::client::JobFilter;
use runner::driver::{ClaimRequest, ClaimType, Claimed, Outcome, Rescued, Settlement};
use runner::{Handlers, JobState, NewJob, Queue, RetryPolicy, Worker, WorkerConfig};
use serde_json::json;
use tokio::sync::{Semaphore, mpsc};

use crate::support::{TestDb, driver, eventually};

const LEASE: Duration = Duration::from_secs(5);
const BOUND: Duration = Duration::from_secs(1);
const WAIT: Duration = Duration::from_secs(30);

/// Claims up to `limit` jobs of type `t` as `owner`, in a batch transaction if `batch`.
async fn claim(queue: &Queue, owner: &str, limit: usize, batch: bool) -> Claimed {
    let types = [ClaimType::from("t")];
    let request = ClaimRequest {
        owner,
        job_types: &types,
        limit,
        lease: LEASE,
        default_max_attempts: 25,
        after_tenant: None,
        floors: None,
        batch: batch.then_some(BOUND),
    };
    driver(queue).claim(&request).await.unwrap()
}

fn settle(job: &runner::Job, outcome: Outcome) -> Settlement {
    Settlement {
        job_id: job.id,
        attempt: job.attempt,
        outcome,
        plugin_sha256: None,
        journal: None,
    }
}

async fn enqueue(db: &TestDb, n: usize, max_attempts: Option<u32>) -> Vec<i64> {
    let mut ids = Vec::new();
    for i in 0..n {
        let mut job = NewJob::new("t", json!({ "i": i })).unique(runner::Unique::Off);
        if let Some(max) = max_attempts {
            job = job.max_attempts(max);
        }
        ids.push(db.queue().enqueue(&db.pool, &job).await.unwrap().id);
    }
    ids
}

/// (state, attempt, lease_owner) of job `id` in the jobs table itself.
async fn row(db: &TestDb, id: i64) -> Option<(String, i32, Option<String>)> {
    sqlx::query_as("SELECT state::text, attempt, lease_owner FROM jobrunner.jobs WHERE id = $1")
        .bind(id)
        .fetch_optional(&db.pool)
        .await
        .unwrap()
}

async fn batch_rows(db: &TestDb) -> i64 {
    db.scalar("SELECT count(*) FROM jobrunner.batches").await
}

/// One rescue round of lost batches, by a runner serving type `t`.
async fn rescue(queue: &Queue) -> Vec<Rescued> {
    let types = [ClaimType::from("t")];
    driver(queue)
        .rescue_batches(&RetryPolicy::default(), &types, 100, |_| {})
        .await
        .unwrap()
}

#[tokio::test]
async fn a_batch_locks_its_jobs_and_commits_outcomes_and_leases_in_one_go() {
    let db = TestDb::new().await;
    let ids = enqueue(&db, 3, None).await;
    let queue = db.queue();
    let mut claimed = claim(&queue, "a", 3, true).await;
    let open = claimed
        .batch
        .take()
        .expect("a batch transaction holds the jobs");
    assert_eq!(claimed.jobs.len(), 3);
    assert!(claimed.jobs.iter().all(|job| job.attempt == 1));

    // Nothing written to the jobs yet; the batch's row names them; no one else can claim them.
    for &id in &ids {
        assert_eq!(row(&db, id).await, Some(("available".into(), 0, None)));
        let seen = queue.job(id).await.unwrap();
        assert_eq!(
            (seen.state, seen.attempt, seen.lease_owner.as_deref()),
            (JobState::Running, 1, Some("a")),
            "shown running, held by its runner"
        );
    }
    assert_eq!(batch_rows(&db).await, 1);
    assert!(claim(&queue, "b", 3, false).await.jobs.is_empty());
    assert!(claim(&queue, "b", 3, true).await.jobs.is_empty());

    let [done, failed, long] = [&claimed.jobs[0], &claimed.jobs[1], &claimed.jobs[2]];
    let settlements = [
        settle(
            done,
            Outcome::Completed {
                result: None,
                follow_ups: Vec::new(),
            },
        ),
        settle(
            failed,
            Outcome::Retry {
                error: "boom".into(),
                run_at: queue.now(),
            },
        ),
    ];
    let applied = driver(&queue)
        .finish_batch(open, "a", false, LEASE, &[long.id], &settlements)
        .await
        .unwrap();
    assert_eq!(applied.len(), 2);
    assert_eq!(row(&db, done.id).await, None, "completed: deleted");
    assert_eq!(
        row(&db, failed.id).await,
        Some(("available".into(), 1, None)),
        "failed: its attempt counted, available again"
    );
    assert_eq!(
        row(&db, long.id).await,
        Some(("running".into(), 1, Some("a".into()))),
        "still running: leased to its runner, as attempt 1"
    );
    assert_eq!(
        batch_rows(&db).await,
        0,
        "the batch's row goes as it commits"
    );
    let record = queue.job(failed.id).await.unwrap();
    assert_eq!(record.last_error().unwrap().error, "boom");
}

#[tokio::test]
async fn a_lost_batch_counts_its_attempts_and_a_job_that_kills_every_runner_fails() {
    let db = TestDb::new().await;
    let [id] = enqueue(&db, 1, Some(2)).await[..] else {
        unreachable!()
    };
    let queue = db.queue();
    for (runner, attempt, state) in [("a", 1, JobState::Available), ("b", 2, JobState::Failed)] {
        let claimed = claim(&queue, runner, 1, true).await;
        assert_eq!(claimed.jobs[0].attempt, attempt);
        // A live batch is left alone.
        assert!(rescue(&queue).await.is_empty());
        // The runner dies: its transaction ends without committing; its row stays.
        drop(claimed);
        let rescued = eventually("the lost batch to be counted", WAIT, || async {
            Some(rescue(&queue).await).filter(|r| !r.is_empty())
        })
        .await;
        assert_eq!(rescued.len(), 1);
        assert_eq!(
            (rescued[0].job_id, rescued[0].attempt, rescued[0].in_batch),
            (id, attempt, true)
        );
        assert_eq!(rescued[0].owner, runner);
        let record = queue.job(id).await.unwrap();
        assert_eq!((record.state, record.attempt), (state, attempt));
        let error = &record.last_error().unwrap().error;
        assert!(error.contains(&format!("runner {runner} died")), "{error}");
        assert_eq!(batch_rows(&db).await, 0);
    }
    assert!(
        claim(&queue, "c", 1, true).await.jobs.is_empty(),
        "no attempts left: failed, after max_attempts, as its own limit says"
    );
}

#[tokio::test]
async fn a_lost_batchs_jobs_wait_for_the_rescuer_before_anyone_claims_them_again() {
    let db = TestDb::new().await;
    let [id] = enqueue(&db, 1, None).await[..] else {
        unreachable!()
    };
    let queue = db.queue();
    drop(claim(&queue, "a", 1, true).await);
    assert!(
        claim(&queue, "b", 1, true).await.jobs.is_empty(),
        "not claimed again before its attempt is counted"
    );
    assert!(claim(&queue, "b", 1, false).await.jobs.is_empty());
    assert_eq!(rescue(&queue).await.len(), 1);
    let again = claim(&queue, "b", 1, true).await;
    assert_eq!((again.jobs[0].id, again.jobs[0].attempt), (id, 2));
}

#[tokio::test]
async fn a_job_claimed_again_before_its_lost_batchs_row_was_written_is_counted_after_that_claim() {
    let db = TestDb::new().await;
    let [id] = enqueue(&db, 1, None).await[..] else {
        unreachable!()
    };
    let queue = db.queue();
    // Runner a locked the job and died before writing its batch's row; b claimed the job;
    // then a's row landed.
    let mut again = claim(&queue, "b", 1, true).await;
    sqlx::query(
        "INSERT INTO jobrunner.batches (id, owner, job_ids, started_at) VALUES (1, 'a', $1, now())",
    )
    .bind(vec![id])
    .execute(&db.pool)
    .await
    .unwrap();
    assert!(rescue(&queue).await.is_empty(), "b holds the job");
    assert_eq!(
        batch_rows(&db).await,
        2,
        "a's row waits for b's claim to end"
    );

    let failed = settle(
        &again.jobs[0],
        Outcome::Retry {
            error: "b failed".into(),
            run_at: queue.now(),
        },
    );
    let open = again.batch.take().unwrap();
    driver(&queue)
        .finish_batch(open, "b", false, LEASE, &[], [&failed])
        .await
        .unwrap();
    assert_eq!(rescue(&queue).await.len(), 1);
    let record = queue.job(id).await.unwrap();
    assert_eq!(
        record.attempt, 2,
        "both attempts counted: b's failure and a's death"
    );
    assert_eq!(batch_rows(&db).await, 0);
}

#[tokio::test]
async fn jobs_inside_a_batch_transaction_are_listed_and_shown_as_running_with_their_runner() {
    let db = TestDb::new().await;
    let (tx, mut started) = mpsc::unbounded_channel();
    let gate = Arc::new(Semaphore::new(0));
    let opened = Arc::clone(&gate);
    let handlers = Handlers::new().on("t", move |job| {
        let (started, gate) = (tx.clone(), gate.clone());
        async move {
            let _ = started.send(job.id);
            let _permit = gate.acquire().await.unwrap();
            Ok(None)
        }
    });
    let config = WorkerConfig {
        owner: "visible".into(),
        concurrency: 2,
        prefetch: 0,
        poll_interval: Duration::from_millis(50),
        batch_bound: Some(Duration::from_secs(10)),
        lease: Duration::from_secs(10),
        ..WorkerConfig::default()
    };
    let worker = Worker::new(db.queue(), handlers, config).start();
    // An idle runner claims under a lease; one with a job running claims in a batch.
    let first = enqueue(&db, 1, None).await[0];
    assert_eq!(started.recv().await, Some(first));
    let second = enqueue(&db, 1, None).await[0];
    assert_eq!(started.recv().await, Some(second));
    assert_eq!(batch_rows(&db).await, 1, "the second job is in a batch");

    let queue = db.queue();
    let filter = JobFilter {
        state: Some(JobState::Running),
        limit: 10,
        ..JobFilter::default()
    };
    let mut running: Vec<(i64, Option<String>, u32)> = (queue.list_jobs(&filter).await.unwrap())
        .into_iter()
        .map(|job| (job.id, job.lease_owner, job.attempt))
        .collect();
    running.sort();
    let owner = Some("visible".to_owned());
    assert_eq!(running, vec![(first, owner.clone(), 1), (second, owner, 1)]);
    let available = JobFilter {
        state: Some(JobState::Available),
        ..filter
    };
    assert!(queue.list_jobs(&available).await.unwrap().is_empty());
    let shown = queue.job(second).await.unwrap();
    assert_eq!(shown.state, JobState::Running);

    opened.add_permits(2);
    worker.shutdown().await;
    let left: i64 = db.scalar("SELECT count(*) FROM jobrunner.jobs").await;
    assert_eq!(left, 0, "both completed");
}
