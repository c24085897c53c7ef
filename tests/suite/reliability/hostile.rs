//! Every kind of hostile plugin and payload at once, beside healthy jobs that must not notice.

use std::path::Path;
use std::time::Duration;

use runner::client::JobRecord;
use runner::{JobState, NewJob};
use serde_json::{Value, json};

use super::healthy_run;
use crate::hot_reload::bad_files;
use crate::support::live::Live;
use crate::support::{TestDb, eventually, publish, settled};

const MINUTE: Duration = Duration::from_secs(60);
const HEALTHY: usize = 3000;

/// The hostile jobs, each with what must become of it: its final state and the start of its
/// last error, or (for those that complete) a check of its result.
fn hostile_jobs() -> Vec<(Value, JobState, &'static str)> {
    use JobState::{Completed, Failed};
    vec![
        (
            json!({"do": "loop"}),
            Failed,
            "cpu budget of 2s exceeded: the guest was stopped",
        ),
        (
            json!({"do": "memory"}),
            Failed,
            "memory limit exceeded: the guest asked for ",
        ),
        (
            json!({"do": "stack"}),
            Failed,
            "trap (stack_overflow): wasm trap: call stack exhausted",
        ),
        (
            json!({"do": "trap"}),
            Failed,
            "trap (unreachable_code_reached): ",
        ),
        (
            json!({"do": "sleep"}),
            Failed,
            "wall-clock timeout of 10s exceeded: the guest was stopped",
        ),
        (
            json!({"do": "huge-output", "bytes": 100 << 20}),
            Failed,
            "the guest handed the host more than 1114112 bytes in one call (a result, error \
             message or log line); results are limited to 1048576 bytes (max_result)",
        ),
        (json!({"do": "log-flood"}), Completed, "logged"),
        (json!({"do": "print"}), Completed, "printed"),
        (json!({"do": "read-file"}), Completed, "found"),
        (json!({"do": "read-env"}), Completed, "found"),
        (json!({"do": "socket"}), Completed, "found"),
    ]
}

/// Enqueues a payload nested `depth` arrays deep through the SQL door.
async fn enqueue_deep(db: &TestDb, depth: usize) -> Result<i64, sqlx::Error> {
    let payload = format!(
        r#"{{"do": "read-env", "deep": {}{}}}"#,
        "[".repeat(depth),
        "]".repeat(depth)
    );
    sqlx::query_scalar(
        "SELECT jobrunner.enqueue('poison', $1::jsonb, tenant => 'evil', max_attempts => 1)",
    )
    .bind(payload)
    .fetch_one(&db.pool)
    .await
}

fn copy_plugins(to: &Path, job_types: &[&str]) {
    for job_type in job_types {
        let file = format!("{job_type}.wasm");
        std::fs::copy(test_plugins::rust_dir().join(&file), to.join(&file)).unwrap();
    }
}

fn last_error(job: &JobRecord) -> &str {
    job.errors.last().map_or("", |e| e.error.as_str())
}

#[tokio::test]
async fn hostile_plugins_all_at_once_fail_alone_and_healthy_jobs_keep_their_pace() {
    let db = TestDb::new().await;
    let dir = tempfile::tempdir().unwrap();
    copy_plugins(dir.path(), &["sleep", "poison"]);
    // The pace to keep is a control's: a runner of its own, on a database of its own, with no
    // hostile jobs, timed at the same moments. Whatever else the machine does (other tests, the
    // hostile guests' own use of the cores) slows both alike.
    let control_db = TestDb::new().await;
    let control_dir = tempfile::tempdir().unwrap();
    copy_plugins(control_dir.path(), &["sleep"]);
    // Each hostile guest must meet its own limit first, on a busy machine too. The spinner gets
    // whatever share of the cores is left, so it has the default minute of wall-clock time to
    // spend its CPU budget in; only the sleeper's tenant is held to 10 s. The memory bomb's page
    // faults are execution time, so it fills 512 MiB, not gigabytes.
    let args = [
        "--concurrency",
        "64",
        "--cpu-budget",
        "2s",
        "--memory",
        "512MiB",
    ];
    publish(&db.queue(), "[tenants.sleeper]\ntimeout = \"10s\"").await;
    let live = Live::start(&db, dir.path(), &args).await;
    let control = Live::start(&control_db, control_dir.path(), &args).await;
    let (clean, clean_control) =
        tokio::join!(healthy_run(&db, HEALTHY), healthy_run(&control_db, HEALTHY));

    for (n, (_, bytes, _)) in bad_files().into_iter().enumerate() {
        std::fs::write(dir.path().join(format!("bad-{n}.wasm")), bytes).unwrap();
    }
    let mut hostile = Vec::new();
    for (payload, state, expected) in hostile_jobs() {
        let tenant = if payload["do"] == "sleep" {
            "sleeper"
        } else {
            "evil"
        };
        let job = NewJob::new("poison", payload.clone())
            .tenant(tenant)
            .max_attempts(1);
        let id = db.queue().enqueue(&db.pool, &job).await.unwrap().id;
        hostile.push((id, payload, state, expected));
    }
    // As deep as the schema lets in (127 levels, as serde_json reads), then deeper.
    let deep = enqueue_deep(&db, 125).await.unwrap();
    let error = enqueue_deep(&db, 10_000).await.unwrap_err().to_string();
    assert!(error.contains("payload_nested_at_most_127_deep"), "{error}");
    let (attacked, attacked_control) =
        tokio::join!(healthy_run(&db, HEALTHY), healthy_run(&control_db, HEALTHY));

    let ratio = attacked.as_secs_f64() / attacked_control.as_secs_f64();
    eprintln!(
        "{HEALTHY} healthy jobs: {clean:?} alone (the control {clean_control:?}), {attacked:?} \
         beside the hostile ones (the control meanwhile {attacked_control:?}): {ratio:.2}x"
    );
    assert!(
        ratio <= 2.0,
        "healthy throughput within 2x of the control's: {ratio:.2}x"
    );
    control.stop().await;

    let queue = db.queue();
    for (id, payload, state, expected) in hostile {
        let job = settled(&queue, id, state).await;
        match state {
            JobState::Failed => assert!(
                last_error(&job).starts_with(expected),
                "{payload}: {}",
                last_error(&job)
            ),
            _ => {
                let result = job.result.as_ref().unwrap();
                assert!(!result[expected].is_null(), "{payload}: {result}");
                if expected == "found" {
                    assert_eq!(result["found"], false, "{payload}: {result}");
                }
            }
        }
    }
    let job = settled(&queue, deep, JobState::Completed).await;
    assert_eq!(
        job.result.unwrap()["found"],
        false,
        "parsed, and found nothing"
    );

    let refused = eventually("every bad file to be refused", MINUTE, || async {
        let refused = live.events("plugin not loaded; its jobs wait in the queue");
        (refused.len() == bad_files().len()).then_some(refused)
    })
    .await;
    for event in refused {
        assert!(!event["error"].as_str().unwrap().is_empty(), "{event}");
    }
    let flood = live.log();
    let flood = flood.iter().filter(|e| {
        let message = e["message"].as_str().unwrap_or_default();
        message.starts_with("flood line")
    });
    assert!(flood.count() < 1000, "a flooding guest's log is capped");
    live.stop().await;
}
