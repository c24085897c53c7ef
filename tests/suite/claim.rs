//! Claiming: only ripe jobs, in order, each by exactly one claimer.

use std::collections::HashSet;
use std::time::Duration;

use runner::driver::{ClaimRequest, ClaimType};
use runner::{Clock, ManualClock, NewJob, Unique};
use serde_json::json;

use crate::support::{TestDb, driver};

fn request<'a>(owner: &'a str, types: &'a [ClaimType], limit: usize) -> ClaimRequest<'a> {
    ClaimRequest {
        owner,
        job_types: types,
        limit,
        lease: Duration::from_secs(30),
        default_max_attempts: 25,
        after_tenant: None,
        floors: None,
        batch: None,
    }
}

#[tokio::test]
async fn a_future_job_is_not_claimed_until_its_time() {
    let db = TestDb::new().await;
    let clock = ManualClock::starting_now();
    let queue = db.queue_with(clock.clone());
    let types = vec![ClaimType::from("later")];
    let job = NewJob::new("later", json!({})).delay(Duration::from_secs(3600));
    let id = queue.enqueue(&db.pool, &job).await.unwrap().id;

    assert!(
        driver(&queue)
            .claim(&request("r", &types, 10))
            .await
            .unwrap()
            .jobs
            .is_empty()
    );
    clock.advance(Duration::from_secs(3599));
    assert!(
        driver(&queue)
            .claim(&request("r", &types, 10))
            .await
            .unwrap()
            .jobs
            .is_empty()
    );
    clock.advance(Duration::from_secs(1));
    let claimed = driver(&queue)
        .claim(&request("r", &types, 10))
        .await
        .unwrap()
        .jobs;

    assert_eq!(claimed.len(), 1);
    assert_eq!(
        (claimed[0].id, claimed[0].attempt, claimed[0].max_attempts),
        (id, 1, 25)
    );
    let record = queue.job(id).await.unwrap();
    assert_eq!(record.lease_owner.as_deref(), Some("r"));
    assert_eq!(
        record.lease_expires_at,
        Some(clock.now() + chrono::Duration::seconds(30))
    );
}

#[tokio::test]
async fn eight_claimers_claim_twenty_thousand_jobs_exactly_once() {
    let db = TestDb::new().await;
    let jobs: Vec<NewJob> = (0..20_000)
        .map(|i| NewJob::new("work", json!({ "i": i })).unique(Unique::Off))
        .collect();
    db.queue().enqueue_many(&db.pool, &jobs).await.unwrap();

    let claimers: Vec<_> = (0..8)
        .map(|n| {
            let queue = db.queue();
            tokio::spawn(async move {
                let (owner, types) = (format!("claimer-{n}"), vec![ClaimType::from("work")]);
                let mut mine = Vec::new();
                loop {
                    let batch = driver(&queue)
                        .claim(&request(&owner, &types, 50))
                        .await
                        .unwrap()
                        .jobs;
                    if batch.is_empty() {
                        return mine;
                    }
                    mine.extend(batch.into_iter().map(|job| job.id));
                }
            })
        })
        .collect();
    let mut all = Vec::new();
    for claimer in claimers {
        all.extend(claimer.await.unwrap());
    }

    let distinct: HashSet<i64> = all.iter().copied().collect();
    assert_eq!(all.len(), 20_000, "every job claimed");
    assert_eq!(distinct.len(), 20_000, "no job claimed twice");
    let (running, max_attempt): (i64, i32) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE state = 'running'), max(attempt) FROM jobrunner.jobs",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!((running, max_attempt), (20_000, 1));
}

#[tokio::test]
async fn claims_follow_priority_then_run_at_and_only_known_types() {
    let db = TestDb::new().await;
    let clock = ManualClock::starting_now();
    let queue = db.queue_with(clock.clone());
    let at = |secs: i64| clock.now() - chrono::Duration::seconds(secs);
    let jobs = [
        NewJob::new("a", json!("old, priority 0")).run_at(at(30)),
        NewJob::new("a", json!("new, priority 0")).run_at(at(10)),
        NewJob::new("a", json!("urgent")).priority(-5).run_at(at(1)),
        NewJob::new("b", json!("other type, most urgent")).priority(-100),
        NewJob::new("a", json!("low priority"))
            .priority(10)
            .run_at(at(60)),
    ];
    queue.enqueue_many(&db.pool, &jobs).await.unwrap();

    let types = vec![ClaimType::from("a")];
    let claimed = driver(&queue)
        .claim(&request("r", &types, 3))
        .await
        .unwrap()
        .jobs;
    let payloads: Vec<&str> = claimed.iter().map(|j| j.payload.as_str()).collect();
    assert_eq!(
        payloads,
        [
            r#""urgent""#,
            r#""old, priority 0""#,
            r#""new, priority 0""#
        ]
    );
    let rest = driver(&queue)
        .claim(&request("r", &types, 10))
        .await
        .unwrap()
        .jobs;
    assert_eq!(
        rest.len(),
        1,
        "type b is never claimed by a runner that cannot run it"
    );
    assert_eq!(rest[0].payload, r#""low priority""#);
}
