//! Outcomes through a real worker: retries with backoff, max attempts, permanent failures,
//! completed jobs deleted or retained and pruned, operator retry and cancel.

use std::time::Duration;

use runner::executor::json_result;
use runner::retry::{Backoff, BackoffKind};
use runner::{
    Clock, Handlers, JobError, JobState, ManualClock, NewJob, QueueError, RetryPolicy, Worker,
    WorkerConfig,
};
use serde_json::json;

use crate::support::{TestDb, eventually, state_of};

const WAIT: Duration = Duration::from_secs(10);

fn fast_polling(retry: RetryPolicy) -> WorkerConfig {
    WorkerConfig {
        poll_interval: Duration::from_millis(20),
        retry,
        ..WorkerConfig::default()
    }
}

fn handlers() -> Handlers {
    Handlers::new()
        .on("always-retry", |job| async move {
            Err(JobError::Retry(format!("boom {}", job.attempt)))
        })
        .on("always-fail", |_| async {
            Err(JobError::Fail("card declined".into()))
        })
        .on("echo", |job| async move {
            json_result(&json!({ "got": job.payload }))
        })
}

#[tokio::test]
async fn retries_back_off_until_max_attempts_then_fail_with_history() {
    let db = TestDb::new().await;
    let clock = ManualClock::starting_now();
    let queue = db.queue_with(clock.clone());
    let policy = RetryPolicy {
        max_attempts: 25,
        backoff: Backoff {
            kind: BackoffKind::Exponential,
            base: Duration::from_secs(10),
            cap: Duration::from_secs(15),
        },
    };
    let worker = Worker::new(queue.clone(), handlers(), fast_polling(policy)).start();
    let job = NewJob::new("always-retry", json!({})).max_attempts(3);
    let id = queue.enqueue(&db.pool, &job).await.unwrap().id;

    // Attempt n fails; the next is due after base * 2^(n-1), capped at 15 s, jittered over
    // the upper half.
    for (attempt, ceiling) in [(1, 10), (2, 15)] {
        let record = eventually(&format!("attempt {attempt} to fail"), WAIT, || async {
            let record = queue.job(id).await.unwrap();
            (record.attempt == attempt && record.state == JobState::Available).then_some(record)
        })
        .await;
        let delay = (record.run_at - clock.now()).to_std().unwrap();
        let ceiling = Duration::from_secs(ceiling);
        assert!(
            delay >= ceiling / 2 && delay <= ceiling,
            "attempt {attempt}: backoff {delay:?}"
        );
        clock.advance(delay);
    }

    let record = eventually("the job to fail for good", WAIT, || async {
        let record = queue.job(id).await.unwrap();
        (record.state == JobState::Failed).then_some(record)
    })
    .await;
    worker.shutdown().await;
    assert_eq!(record.attempt, 3);
    let history: Vec<(u32, &str)> = record
        .errors
        .iter()
        .map(|e| (e.attempt, e.error.as_str()))
        .collect();
    assert_eq!(history, [(1, "boom 1"), (2, "boom 2"), (3, "boom 3")]);
}

#[tokio::test]
async fn a_permanent_error_fails_at_once_and_an_operator_can_retry_it() {
    let db = TestDb::new().await;
    let queue = db.queue();
    let worker = Worker::new(
        queue.clone(),
        handlers(),
        fast_polling(RetryPolicy::default()),
    )
    .start();
    let id = queue
        .enqueue(&db.pool, &NewJob::new("always-fail", json!({})))
        .await
        .unwrap()
        .id;
    eventually("the job to fail", WAIT, || async {
        (state_of(&db, id).await == "failed").then_some(())
    })
    .await;
    worker.shutdown().await;
    let record = queue.job(id).await.unwrap();
    assert_eq!((record.attempt, record.errors.len()), (1, 1));
    assert_eq!(record.errors[0].error, "card declined");

    let retried = queue.retry_job(id, 25).await.unwrap();
    assert_eq!((retried.state, retried.attempt), (JobState::Available, 1));
    assert_eq!(retried.errors.len(), 1, "history is kept");
    let err = queue.retry_job(id, 25).await.unwrap_err();
    assert!(
        matches!(
            err,
            QueueError::WrongState {
                state: JobState::Available,
                ..
            }
        ),
        "{err}"
    );
    assert!(matches!(
        queue.retry_job(9999, 25).await,
        Err(QueueError::NotFound(9999))
    ));
}

#[tokio::test]
async fn retrying_an_exhausted_job_grants_one_more_attempt() {
    let db = TestDb::new().await;
    let queue = db.queue();
    let policy = RetryPolicy {
        max_attempts: 2,
        backoff: Backoff {
            kind: BackoffKind::Quadratic,
            base: Duration::from_millis(1),
            cap: Duration::from_millis(1),
        },
    };
    let worker = Worker::new(queue.clone(), handlers(), fast_polling(policy)).start();
    let id = queue
        .enqueue(&db.pool, &NewJob::new("always-retry", json!({})))
        .await
        .unwrap()
        .id;
    eventually("the job to exhaust its attempts", WAIT, || async {
        (state_of(&db, id).await == "failed").then_some(())
    })
    .await;
    assert_eq!(queue.job(id).await.unwrap().attempt, 2);

    let retried = queue.retry_job(id, policy.max_attempts).await.unwrap();
    assert_eq!(retried.max_attempts, Some(3));
    let record = eventually("the extra attempt to run", WAIT, || async {
        let record = queue.job(id).await.unwrap();
        (record.state == JobState::Failed && record.attempt == 3).then_some(record)
    })
    .await;
    worker.shutdown().await;
    assert_eq!(record.errors.len(), 3);
}

#[tokio::test]
async fn completed_jobs_are_deleted_unless_retained_then_pruned_in_batches() {
    let db = TestDb::new().await;
    let clock = ManualClock::starting_now();
    let queue = db.queue_with(clock.clone());

    let deleting = Worker::new(
        queue.clone(),
        handlers(),
        fast_polling(RetryPolicy::default()),
    )
    .start();
    let id = queue
        .enqueue(&db.pool, &NewJob::new("echo", json!(1)))
        .await
        .unwrap()
        .id;
    eventually("the completed job to be deleted", WAIT, || async {
        let count: i64 = sqlx::query_scalar("SELECT count(*) FROM jobrunner.jobs WHERE id = $1")
            .bind(id)
            .fetch_one(&db.pool)
            .await
            .unwrap();
        (count == 0).then_some(())
    })
    .await;
    deleting.shutdown().await;

    let keep = WorkerConfig {
        keep_completed: Some(Duration::from_secs(3600)),
        ..fast_polling(RetryPolicy::default())
    };
    let retaining = Worker::new(queue.clone(), handlers(), keep).start();
    let jobs: Vec<NewJob> = (0..5).map(|i| NewJob::new("echo", json!(i))).collect();
    let ids: Vec<i64> = queue
        .enqueue_many(&db.pool, &jobs)
        .await
        .unwrap()
        .iter()
        .map(|e| e.id)
        .collect();
    eventually("all five to complete", WAIT, || async {
        let done: i64 =
            sqlx::query_scalar("SELECT count(*) FROM jobrunner.jobs WHERE state = 'completed'")
                .fetch_one(&db.pool)
                .await
                .unwrap();
        (done == 5).then_some(())
    })
    .await;
    retaining.shutdown().await;
    let record = queue.job(ids[0]).await.unwrap();
    assert_eq!(record.result, Some(json!({ "got": "0" })));

    clock.advance(Duration::from_secs(1800));
    assert_eq!(
        queue
            .prune_completed(Duration::from_secs(3600), 2)
            .await
            .unwrap(),
        0
    );
    clock.advance(Duration::from_secs(3600));
    assert_eq!(
        queue
            .prune_completed(Duration::from_secs(3600), 2)
            .await
            .unwrap(),
        2,
        "bounded"
    );
    assert_eq!(
        queue
            .prune_completed(Duration::from_secs(3600), 10)
            .await
            .unwrap(),
        3
    );
    assert_eq!(
        db.scalar::<i64>("SELECT count(*) FROM jobrunner.jobs")
            .await,
        0
    );
}

#[tokio::test]
async fn cancel_touches_available_jobs_only() {
    let db = TestDb::new().await;
    let queue = db.queue();
    let jobs = [NewJob::new("t", json!(1)), NewJob::new("t", json!(2))];
    let ids: Vec<i64> = queue
        .enqueue_many(&db.pool, &jobs)
        .await
        .unwrap()
        .iter()
        .map(|e| e.id)
        .collect();
    sqlx::query(
        "UPDATE jobrunner.jobs SET state = 'running', lease_owner = 'x',
                lease_expires_at = now() + interval '1 minute', attempt = 1 WHERE id = $1",
    )
    .bind(ids[1])
    .execute(&db.pool)
    .await
    .unwrap();

    assert_eq!(
        queue.cancel_job(ids[0]).await.unwrap().state,
        JobState::Cancelled
    );
    let err = queue.cancel_job(ids[1]).await.unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "job {} is running: only available jobs can be cancelled",
            ids[1]
        )
    );
    assert_eq!(state_of(&db, ids[1]).await, "running");
}
