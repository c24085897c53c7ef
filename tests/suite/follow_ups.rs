//! Follow-up jobs through a real runner and real components (`probe` enqueues what its payload
//! says): atomic with the parent's completion, in the parent's tenant, within the manifest's
//! and the tenant's grants, idempotent by unique key, and recorded with their parent.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use runner::client::{JobFilter, JobRecord, JobState};
use runner::{Limits, ManualClock, NewJob, Queue, SandboxConfig, WorkerHandle};
use serde_json::{Value, json};

use crate::support::process::run_cli;
use crate::support::{TestDb, eventually, plugins, publish, settled};

/// `probe` may enqueue `echo` (and `flaky`), at most `max` per attempt.
fn granting_echo(max: u32) -> Limits {
    let mut limits = Limits::default();
    limits.jobs.enqueue = Arc::from(["echo".to_owned(), "flaky".to_owned()]);
    limits.jobs.max_follow_ups = max;
    limits
}

async fn worker(queue: &Queue, limits: Limits) -> WorkerHandle {
    plugins::tenant_worker(queue, &["probe"], SandboxConfig::default(), limits).await
}

async fn follow_ups(queue: &Queue, parent: i64) -> Vec<JobRecord> {
    let filter = JobFilter {
        parent: Some(parent),
        limit: 1000,
        ..JobFilter::default()
    };
    let mut children = queue.list_jobs(&filter).await.unwrap();
    children.reverse();
    children
}

fn echo(n: u32) -> Value {
    json!({"job_type": "echo", "payload": {"n": n}})
}

#[tokio::test]
async fn follow_ups_exist_only_once_their_attempt_completes() {
    let db = TestDb::new().await;
    let clock = ManualClock::starting_now();
    let queue = db.queue_with(clock.clone());
    let worker = worker(&queue, granting_echo(100)).await;
    let enqueue = |then: &'static str| {
        let queue = queue.clone();
        async move {
            let payload = json!({"enqueue": [echo(1), echo(2)], "then": then});
            let job = NewJob::new("probe", payload).max_attempts(2);
            queue.enqueue(queue.pool(), &job).await.unwrap().id
        }
    };
    let retried = enqueue("retry_first").await;
    let failed = enqueue("fail").await;
    let trapped = enqueue("panic").await;
    settled(&queue, failed, JobState::Failed).await;
    // Attempt 1 of the others asked for two follow-ups, then asked to be retried or trapped.
    for id in [retried, trapped] {
        eventually(
            "the first attempt's retry",
            Duration::from_secs(60),
            || async {
                let job = queue.job(id).await.unwrap();
                (job.state == JobState::Available && job.attempt == 1).then_some(())
            },
        )
        .await;
    }
    for id in [failed, retried, trapped] {
        assert!(follow_ups(&queue, id).await.is_empty(), "job {id}");
    }
    // Attempt 2 completes (its own two follow-ups, and no more), or traps again (none).
    clock.advance(Duration::from_secs(3600));
    settled(&queue, trapped, JobState::Failed).await;
    assert!(follow_ups(&queue, trapped).await.is_empty());
    settled(&queue, retried, JobState::Completed).await;
    let children = follow_ups(&queue, retried).await;
    let payloads: Vec<&Value> = children.iter().map(|c| &c.payload).collect();
    assert_eq!(payloads, [&json!({"n": 1}), &json!({"n": 2})]);
    assert!(
        children
            .iter()
            .all(|c| c.tenant == "default" && c.job_type == "echo")
    );
    worker.shutdown().await;
}

#[tokio::test]
async fn many_parents_completing_together_each_write_their_own_follow_ups() {
    let db = TestDb::new().await;
    let queue = db.queue();
    let parents: Vec<NewJob> = (0..300)
        .map(|i| {
            NewJob::new(
                "probe",
                json!({"i": i, "enqueue": [echo(i), echo(i + 1000)]}),
            )
        })
        .collect();
    let ids: Vec<i64> = queue
        .enqueue_many(&db.pool, &parents)
        .await
        .unwrap()
        .iter()
        .map(|e| e.id)
        .collect();
    // Started after the enqueue: a busy runner claims them in batch transactions.
    let worker = worker(&queue, granting_echo(100)).await;
    for id in &ids {
        settled(&queue, *id, JobState::Completed).await;
    }
    for (i, id) in ids.iter().enumerate() {
        let children = follow_ups(&queue, *id).await;
        let payloads: Vec<&Value> = children.iter().map(|c| &c.payload).collect();
        let i = i as u32;
        assert_eq!(
            payloads,
            [&json!({"n": i}), &json!({"n": i + 1000})],
            "parent {id}"
        );
    }
    worker.shutdown().await;
}

#[tokio::test]
async fn a_unique_key_makes_a_follow_up_idempotent_across_parents() {
    let db = TestDb::new().await;
    let queue = db.queue();
    let worker = worker(&queue, granting_echo(100)).await;
    // The follow-up waits an hour: it is still pending when the second parent completes.
    let keyed = json!({"job_type": "echo", "payload": {}, "unique_key": "reminder:ada:2026-12-07",
                       "delay_ms": 3_600_000});
    let mut parents = Vec::new();
    for i in 0..2 {
        let job = NewJob::new("probe", json!({"i": i, "enqueue": [keyed]}));
        let id = queue.enqueue(&db.pool, &job).await.unwrap().id;
        settled(&queue, id, JobState::Completed).await;
        parents.push(id);
    }
    let first = follow_ups(&queue, parents[0]).await;
    assert_eq!(first.len(), 1);
    assert_eq!(
        first[0].unique_key.as_deref(),
        Some("reminder:ada:2026-12-07")
    );
    assert!(first[0].run_at > first[0].created_at + chrono::Duration::minutes(59));
    assert!(
        follow_ups(&queue, parents[1]).await.is_empty(),
        "deduplicated"
    );
    worker.shutdown().await;
}

#[tokio::test]
async fn follow_ups_stay_in_the_parents_tenant_within_the_manifest_tenant_and_count_limits() {
    let db = TestDb::new().await;
    let queue = db.queue();
    publish(
        &queue,
        "[tenants.acme]\njob_types = [\"probe\", \"echo\"]\n",
    )
    .await;
    let worker = worker(&queue, granting_echo(2)).await;
    let asked = json!({"enqueue": [
        echo(1),
        {"job_type": "sleep", "payload": {}},          // not in the manifest's list
        {"job_type": "flaky", "payload": {}},          // in it, but not in acme's policy
        {"job_type": "echo", "payload": {}, "delay_ms": 5, "max_attempts": 0},  // invalid
        echo(2),
        echo(3),                                       // over the limit of 2
    ]});
    let job = NewJob::new("probe", asked).tenant("acme");
    let id = queue.enqueue(&db.pool, &job).await.unwrap().id;
    let parent = settled(&queue, id, JobState::Completed).await;
    let enqueued = &parent.result.unwrap()["enqueued"];
    let refusal = |i: usize| enqueued[i].as_str().unwrap_or_default().to_owned();
    assert_eq!(enqueued[0], Value::Null);
    assert!(refusal(1).starts_with("follow-up not allowed") && refusal(1).contains("enqueue"));
    assert!(refusal(2).contains("tenant's policy"), "{}", refusal(2));
    assert!(
        refusal(3).starts_with("invalid follow-up"),
        "{}",
        refusal(3)
    );
    assert_eq!(enqueued[4], Value::Null);
    let over = refusal(5);
    assert!(over.starts_with("follow-up limit reached"), "{over}");
    let children = follow_ups(&queue, id).await;
    assert_eq!(children.len(), 2);
    assert!(
        children
            .iter()
            .all(|c| c.tenant == "acme" && c.job_type == "echo")
    );

    // The CLI names the parent of a follow-up and the follow-ups of a parent.
    let (status, shown, err) = run_cli(&db.url(), &["jobs", "show", &id.to_string()]).await;
    assert!(status.success(), "{err}");
    assert!(shown.contains("follow-ups:"), "{shown}");
    for child in &children {
        assert!(shown.contains(&format!("  {} echo", child.id)), "{shown}");
    }
    let child = children[0].id.to_string();
    let (_, shown, _) = run_cli(&db.url(), &["jobs", "show", &child]).await;
    assert!(shown.contains(&format!("parent:      {id}")), "{shown}");
    let (_, listed, _) = run_cli(
        &db.url(),
        &["jobs", "list", "--parent", &id.to_string(), "--json"],
    )
    .await;
    let listed: Vec<Value> = listed
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(listed.len(), 2);
    assert!(listed.iter().all(|j| j["parent_id"] == id));
    worker.shutdown().await;
}

/// The JavaScript helpers: config values, a granted secret and follow-ups from a JS plugin.
#[tokio::test]
async fn a_javascript_plugin_reads_config_and_secrets_and_enqueues_follow_ups() {
    let db = TestDb::new().await;
    let queue = db.queue();
    let dir = tempfile::tempdir().unwrap();
    let secrets = plugins::file_secrets(dir.path(), &[("github_token", "js-secret-value-123")]);
    let mut limits = granting_echo(10);
    limits.config.values = Arc::new(BTreeMap::from([(
        "repos".to_owned(),
        "acme/app".to_owned(),
    )]));
    limits.config.secrets = Arc::from(["github_token".to_owned()]);
    let worker = plugins::secret_worker(
        &queue,
        &["probe-js"],
        SandboxConfig::default(),
        limits,
        secrets,
    )
    .await;
    let payload = json!({
        "read": ["repos", "github_token", "slack_webhook"],
        "enqueue": [
            {"job_type": "echo", "payload": {"from": "js"}, "unique_key": "js-1", "delay_ms": 60000},
            {"job_type": "sleep", "payload": {}},
        ],
    });
    let id = queue
        .enqueue(&db.pool, &NewJob::new("probe-js", payload))
        .await
        .unwrap()
        .id;
    let done = settled(&queue, id, JobState::Completed).await;
    let result = done.result.unwrap();
    assert_eq!(
        result["read"],
        json!({"repos": 8, "github_token": 19, "slack_webhook": null})
    );
    assert_eq!(result["enqueued"][0], Value::Null);
    assert!(
        result["enqueued"][1]
            .as_str()
            .unwrap()
            .starts_with("not-allowed: "),
        "{result}"
    );
    let children = follow_ups(&queue, id).await;
    assert_eq!(children.len(), 1);
    assert_eq!(children[0].payload, json!({"from": "js"}));
    assert_eq!(children[0].unique_key.as_deref(), Some("js-1"));
    assert!(children[0].run_at > children[0].created_at + chrono::Duration::seconds(59));
    worker.shutdown().await;
}
