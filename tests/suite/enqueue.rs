//! Enqueue from Rust, SQL and many at once: validation, transactions, unique keys, migrations.

use std::sync::Arc;

use runner::{JobState, NewJob, QueueError, Unique};
use serde_json::json;
use tokio::sync::Barrier;

use crate::support::TestDb;

#[tokio::test]
async fn rust_enqueue_joins_the_callers_transaction() {
    let db = TestDb::new().await;
    let queue = db.queue();

    let mut tx = db.pool.begin().await.unwrap();
    queue
        .enqueue(&mut *tx, &NewJob::new("email", json!({"to": "a"})))
        .await
        .unwrap();
    tx.rollback().await.unwrap();
    assert_eq!(
        db.scalar::<i64>("SELECT count(*) FROM jobrunner.jobs")
            .await,
        0
    );

    let mut tx = db.pool.begin().await.unwrap();
    let job = NewJob::new("email", json!({"to": "b"}))
        .tenant("acme")
        .priority(-2)
        .max_attempts(7);
    let enqueued = queue.enqueue(&mut *tx, &job).await.unwrap();
    let seen_outside: i64 = sqlx::query_scalar("SELECT count(*) FROM jobrunner.jobs")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(seen_outside, 0, "not visible before commit");
    tx.commit().await.unwrap();

    let record = queue.job(enqueued.id).await.unwrap();
    assert!(enqueued.inserted);
    assert_eq!(record.state, JobState::Available);
    assert_eq!(
        (record.job_type.as_str(), record.tenant.as_str()),
        ("email", "acme")
    );
    assert_eq!(
        (record.priority, record.max_attempts, record.attempt),
        (-2, Some(7), 0)
    );
    assert_eq!(record.payload, json!({"to": "b"}));
}

#[tokio::test]
async fn bulk_enqueue_returns_one_id_per_job_in_order() {
    let db = TestDb::new().await;
    let mut jobs: Vec<NewJob> = (0..1000)
        .map(|i| NewJob::new("bulk", json!({ "i": i })))
        .collect();
    // The same job twice in one call: the second reports the first's id.
    jobs.push(NewJob::new("bulk", json!({ "i": 7 })));

    let results = db.queue().enqueue_many(&db.pool, &jobs).await.unwrap();

    assert_eq!(results.len(), 1001);
    assert!(
        results[..1000].windows(2).all(|w| w[0].id < w[1].id),
        "ids follow input order"
    );
    assert!(results[..1000].iter().all(|r| r.inserted));
    assert_eq!(
        (results[1000].id, results[1000].inserted),
        (results[7].id, false)
    );
    assert_eq!(
        db.scalar::<i64>("SELECT count(*) FROM jobrunner.jobs")
            .await,
        1000
    );
    let payload_of_last: serde_json::Value =
        sqlx::query_scalar("SELECT payload FROM jobrunner.jobs WHERE id = $1")
            .bind(results[999].id)
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(payload_of_last, json!({ "i": 999 }));
}

#[tokio::test]
async fn sql_enqueue_takes_named_arguments_and_respects_rollback() {
    let db = TestDb::new().await;
    let mut tx = db.pool.begin().await.unwrap();
    let id: i64 = sqlx::query_scalar("SELECT jobrunner.enqueue('report', '{\"day\": 1}')")
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    assert!(id > 0);
    tx.rollback().await.unwrap();
    assert_eq!(
        db.scalar::<i64>("SELECT count(*) FROM jobrunner.jobs")
            .await,
        0
    );

    let id: i64 = sqlx::query_scalar(
        "SELECT jobrunner.enqueue('report', '{}', tenant => 'acme', priority => 5,
                                  max_attempts => 2, run_at => now() + interval '1 hour')",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    let record = db.queue().job(id).await.unwrap();
    assert_eq!((record.tenant.as_str(), record.priority), ("acme", 5));
    assert_eq!(record.max_attempts, Some(2));
    assert!(record.run_at > chrono::Utc::now() + chrono::Duration::minutes(59));
}

#[tokio::test]
async fn fifty_concurrent_duplicate_enqueues_make_one_row() {
    let db = TestDb::new().await;
    for (unique, label) in [
        (Unique::ByPayload, "by payload"),
        (Unique::Key("k1".into()), "by key"),
    ] {
        let job = NewJob::new("dedupe", json!({"order": 42, "label": label})).unique(unique);
        // One connection each (not the pool), so that all 50 really race.
        let mut connections = Vec::new();
        for _ in 0..50 {
            connections.push(db.connect().await);
        }
        let barrier = Arc::new(Barrier::new(50));
        let tasks: Vec<_> = connections
            .into_iter()
            .map(|mut conn| {
                let (queue, job, barrier) = (db.queue(), job.clone(), barrier.clone());
                tokio::spawn(async move {
                    barrier.wait().await;
                    queue.enqueue(&mut conn, &job).await.unwrap()
                })
            })
            .collect();
        let mut results = Vec::new();
        for task in tasks {
            results.push(task.await.unwrap());
        }
        let first = results[0].id;
        assert!(
            results.iter().all(|r| r.id == first),
            "{label}: every caller gets the same id"
        );
        assert_eq!(results.iter().filter(|r| r.inserted).count(), 1, "{label}");
    }
    assert_eq!(
        db.scalar::<i64>("SELECT count(*) FROM jobrunner.jobs")
            .await,
        2
    );
}

#[tokio::test]
async fn unique_keys_are_per_tenant_pending_only_and_optional() {
    let db = TestDb::new().await;
    let queue = db.queue();
    let job = || NewJob::new("sync", json!({"account": 1}));

    let first = queue.enqueue(&db.pool, &job()).await.unwrap();
    let other_tenant = queue
        .enqueue(&db.pool, &job().tenant("acme"))
        .await
        .unwrap();
    assert!(
        other_tenant.inserted && other_tenant.id != first.id,
        "tenants never share keys"
    );
    let undeduped = queue
        .enqueue(&db.pool, &job().unique(Unique::Off))
        .await
        .unwrap();
    assert!(undeduped.inserted && undeduped.id != first.id);

    // Once the job is no longer pending, the same job can be queued again.
    queue.cancel_job(first.id).await.unwrap();
    let again = queue.enqueue(&db.pool, &job()).await.unwrap();
    assert!(again.inserted && again.id != first.id);
}

#[tokio::test]
async fn a_database_without_the_schema_gets_a_clear_error() {
    let db = TestDb::empty().await;
    let err = db
        .queue()
        .enqueue(&db.pool, &NewJob::new("t", json!({})))
        .await
        .unwrap_err();
    assert!(matches!(err, QueueError::SchemaMissing(_)), "{err}");
    assert!(err.to_string().contains("run `runner migrate`"), "{err}");
}

#[tokio::test]
async fn invalid_jobs_are_refused_and_nothing_is_inserted() {
    let db = TestDb::new().await;
    let queue = db.queue();

    let err = queue
        .enqueue(&db.pool, &NewJob::new("", json!({})))
        .await
        .unwrap_err();
    assert!(matches!(err, QueueError::InvalidJob(_)), "{err}");
    assert_eq!(err.to_string(), "job type must not be empty");

    let batch = [
        NewJob::new("ok", json!(1)),
        NewJob::new("ok", json!(2)).tenant(""),
    ];
    let err = queue.enqueue_many(&db.pool, &batch).await.unwrap_err();
    assert_eq!(err.to_string(), "tenant must not be empty");

    let sql_errors = [
        (
            "SELECT jobrunner.enqueue('', '{}')",
            "job_type must not be empty",
        ),
        (
            "SELECT jobrunner.enqueue('t', '{}', max_attempts => 0)",
            "max_attempts must be at least 1",
        ),
        (
            "SELECT jobrunner.enqueue('t', '{}', tenant => '')",
            "tenant must not be empty",
        ),
        (
            "SELECT jobrunner.enqueue('t', '{oops')",
            "invalid input syntax for type json",
        ),
        (
            "SELECT jobrunner.enqueue('t', '{}', unique_key => 'k', deduplicate => false)",
            "unique_key was given but deduplicate is false",
        ),
    ];
    for (sql, expected) in sql_errors {
        let err = sqlx::query(sql).execute(&db.pool).await.unwrap_err();
        assert!(err.to_string().contains(expected), "{sql}: {err}");
    }
    assert_eq!(
        db.scalar::<i64>("SELECT count(*) FROM jobrunner.jobs")
            .await,
        0
    );
}

#[tokio::test]
async fn migrations_are_idempotent_and_safe_to_run_concurrently() {
    let db = TestDb::empty().await;
    let runs: Vec<_> = (0..4)
        .map(|_| {
            let queue = db.queue();
            tokio::spawn(async move { queue.migrate().await })
        })
        .collect();
    for run in runs {
        run.await.unwrap().expect("concurrent migrate succeeds");
    }
    db.queue()
        .migrate()
        .await
        .expect("migrating again is a no-op");

    let outside: i64 = db
        .scalar(
            "SELECT count(*) FROM pg_tables
              WHERE schemaname NOT IN ('jobrunner', 'pg_catalog', 'information_schema')",
        )
        .await;
    assert_eq!(outside, 0, "everything lives in schema jobrunner");
    let applied: i64 = db
        .scalar("SELECT count(*) FROM jobrunner._sqlx_migrations")
        .await;
    assert!(applied >= 1);
}

#[tokio::test]
async fn a_bulk_enqueue_without_unique_keys_returns_each_jobs_id_in_order() {
    let db = TestDb::new().await;
    let queue = db.queue();
    let jobs: Vec<NewJob> = (0..2000)
        .map(|n| NewJob::new("bulk", json!({ "n": n })).unique(Unique::Off))
        .collect();
    let enqueued = queue.enqueue_many(&db.pool, &jobs).await.unwrap();
    assert_eq!(enqueued.len(), jobs.len());
    let stored: Vec<(i64, i64)> = sqlx::query_as(
        "SELECT id, (payload->>'n')::bigint FROM jobrunner.jobs WHERE job_type = 'bulk'",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    let n_of: std::collections::HashMap<i64, i64> = stored.into_iter().collect();
    for (n, job) in enqueued.iter().enumerate() {
        assert!(job.inserted);
        assert_eq!(n_of[&job.id], n as i64, "job {n} got the id of another job");
    }

    // Deduplicated by payload (the other path): a second enqueue finds every job pending.
    let keyed: Vec<NewJob> = (0..2000)
        .map(|n| NewJob::new("keyed", json!({ "n": n })))
        .collect();
    let first = queue.enqueue_many(&db.pool, &keyed).await.unwrap();
    let second = queue.enqueue_many(&db.pool, &keyed).await.unwrap();
    assert!(first.iter().all(|e| e.inserted));
    assert!(second.iter().all(|e| !e.inserted));
    let ids = |e: &[runner::client::Enqueued]| e.iter().map(|e| e.id).collect::<Vec<_>>();
    assert_eq!(ids(&first), ids(&second));
}

/// The client crate's example, compiled into the suite and run against a test database.
#[allow(dead_code)] // its `main` is for `cargo run --example`
#[path = "../../runner/client/examples/signup.rs"]
mod signup_example;

#[tokio::test]
async fn an_application_enqueues_inside_its_own_transaction_with_the_client_alone() {
    let db = TestDb::new().await;
    let queue = runner::client::Queue::new(db.pool.clone());
    signup_example::create_users_table(&db.pool).await.unwrap();

    let id = signup_example::sign_up(&queue, "ada@example.com")
        .await
        .expect("the sign-up commits with its job");
    let job = queue.job(id).await.unwrap();
    assert_eq!(
        (job.job_type.as_str(), job.payload.clone()),
        ("send-welcome", json!({ "email": "ada@example.com" }))
    );

    // The same address again: the INSERT fails, the transaction rolls back, no second job.
    signup_example::sign_up(&queue, "ada@example.com")
        .await
        .expect_err("the address is taken");
    let jobs: i64 = db.scalar("SELECT count(*) FROM jobrunner.jobs").await;
    assert_eq!(jobs, 1, "a failed sign-up leaves no job behind");
}
