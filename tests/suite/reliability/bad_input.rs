//! Bad input at every door (CLI, SQL function, Rust API, config file, plugin directory): a
//! clear error each time, and nothing half-written.

use runner::{NewJob, Unique};
use serde_json::json;

use crate::support::TestDb;
use crate::support::live::Live;
use crate::support::process::run_cli;

/// A payload of more than the 16 MiB any job may carry.
fn huge_payload() -> String {
    format!(r#"{{"blob": "{}"}}"#, "x".repeat(17 << 20))
}

/// A payload nested deeper than any JSON parser here will follow.
fn deep_payload() -> String {
    format!("{}{}", "[".repeat(10_000), "]".repeat(10_000))
}

async fn jobs(db: &TestDb) -> i64 {
    db.scalar("SELECT count(*) FROM jobrunner.jobs").await
}

#[tokio::test]
async fn the_cli_refuses_huge_deep_and_malformed_payloads() {
    let db = TestDb::new().await;
    let url = db.url();
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (huge_payload(), "is larger than the limit of 16777216 bytes"),
        (deep_payload(), "payload is nested deeper than 127 levels"),
        (
            r#"{"a": 1"#.to_owned(),
            "payload is not valid JSON: EOF while parsing",
        ),
        ("\u{feff}{}".to_owned(), "payload is not valid JSON"),
    ];
    for (n, (payload, expected)) in cases.iter().enumerate() {
        let file = dir.path().join(format!("payload-{n}.json"));
        std::fs::write(&file, payload).unwrap();
        let args = ["enqueue", "t", "--payload-file", file.to_str().unwrap()];
        let (status, stdout, stderr) = run_cli(&url, &args).await;
        assert!(!status.success(), "case {n} must fail");
        assert!(stderr.contains(expected), "case {n}: {stderr}");
        assert!(stdout.is_empty(), "case {n} printed an id: {stdout}");
    }
    let (status, _, stderr) = run_cli(
        &url,
        &["enqueue", "t", "--payload-file", "/nonexistent.json"],
    )
    .await;
    assert!(!status.success());
    assert!(
        stderr.contains("cannot open payload file /nonexistent.json"),
        "{stderr}"
    );
    assert_eq!(jobs(&db).await, 0, "nothing was enqueued");

    let file = dir.path().join("fine.json");
    std::fs::write(&file, r#"{"from": "a file"}"#).unwrap();
    let args = ["enqueue", "t", "--payload-file", file.to_str().unwrap()];
    let (status, stdout, stderr) = run_cli(&url, &args).await;
    assert!(status.success(), "{stderr}");
    let id: i64 = stdout.trim().parse().unwrap();
    let payload = db.queue().job(id).await.unwrap().payload;
    assert_eq!(payload, json!({"from": "a file"}));
}

#[tokio::test]
async fn the_sql_function_refuses_huge_and_malformed_payloads_and_writes_nothing() {
    let db = TestDb::new().await;
    let single = |payload: String| {
        let pool = db.pool.clone();
        async move {
            sqlx::query_scalar::<_, i64>("SELECT jobrunner.enqueue('t', $1::jsonb)")
                .bind(payload)
                .fetch_one(&pool)
                .await
                .unwrap_err()
                .to_string()
        }
    };
    let error = single(huge_payload()).await;
    assert!(error.contains("payload_at_most_16_mib"), "{error}");
    let error = single(r#"{"a": "#.to_owned()).await;
    assert!(
        error.contains("invalid input syntax for type json"),
        "{error}"
    );

    // One bad job in a batch refuses the whole batch.
    let error = sqlx::query(
        "SELECT * FROM jobrunner.enqueue_many(
             ARRAY['t', 't'], ARRAY['{}'::jsonb, $1::jsonb], ARRAY[now(), now()],
             ARRAY['default', 'default'], ARRAY[0, 0], ARRAY[NULL, NULL]::int[],
             ARRAY[NULL, NULL]::text[], ARRAY[false, false])",
    )
    .bind(huge_payload())
    .execute(&db.pool)
    .await
    .unwrap_err()
    .to_string();
    assert!(error.contains("payload_at_most_16_mib"), "{error}");
    assert_eq!(jobs(&db).await, 0, "nothing was enqueued");
}

#[tokio::test]
async fn the_rust_api_refuses_huge_and_malformed_payloads_before_sending() {
    let db = TestDb::new().await;
    let queue = db.queue();
    let deep = NewJob::from_json_text("t", &deep_payload()).unwrap();
    let error = queue.enqueue(&db.pool, &deep).await.unwrap_err();
    assert_eq!(
        error.to_string(),
        "payload is nested deeper than 127 levels of arrays and objects"
    );
    let huge = NewJob::from_json_text("t", &huge_payload()).unwrap();
    let error = queue.enqueue(&db.pool, &huge).await.unwrap_err();
    assert_eq!(
        error.to_string(),
        format!(
            "payload of {} bytes exceeds the limit of 16777216 bytes",
            huge.payload().len()
        )
    );
    let batch = [
        NewJob::new("t", json!({"fine": true})).unique(Unique::Off),
        huge,
    ];
    assert!(queue.enqueue_many(&db.pool, &batch).await.is_err());
    assert_eq!(jobs(&db).await, 0, "nothing was enqueued");
}

#[tokio::test]
async fn an_unknown_job_type_is_flagged_at_enqueue_and_waits_without_harm() {
    let db = TestDb::new().await;
    let live = Live::start(&db, test_plugins::rust_dir(), &[]).await;
    crate::support::eventually("the runner to announce its plugins", MINUTE, || async {
        let runners = live.plugins().await;
        (runners.as_array().is_some_and(|r| !r.is_empty())).then_some(())
    })
    .await;
    let (status, stdout, stderr) =
        run_cli(&live.url, &["enqueue", "sned-email", "--payload", "{}"]).await;
    assert!(status.success(), "{stderr}");
    assert!(
        stderr.contains(r#"no live runner serves job type "sned-email""#)
            && stderr.contains("echo"),
        "{stderr}"
    );
    let id: i64 = stdout.trim().parse().unwrap();
    let (status, stdout, _) = run_cli(&live.url, &["enqueue", "echo", "--payload", "{}"]).await;
    assert!(status.success());
    let echo: i64 = stdout.trim().parse().unwrap();
    crate::support::settled(&db.queue(), echo, runner::JobState::Completed).await;
    assert_eq!(
        crate::support::state_of(&db, id).await,
        "available",
        "it waits"
    );
    live.stop().await;
}

const MINUTE: std::time::Duration = std::time::Duration::from_secs(60);

#[tokio::test]
async fn bad_config_values_and_an_unreadable_plugin_directory_stop_the_runner_at_start() {
    let db = TestDb::new().await;
    let url = db.url();
    let config = tempfile::NamedTempFile::new().unwrap();
    let path = config.path().to_str().unwrap();
    let cases = [
        (
            "[worker]\nconcurrency = 0\n",
            "concurrency: must be at least 1",
        ),
        ("[worker]\nconcurency = 4\n", "unknown field `concurency`"),
        (
            "[worker]\nlease = \"100ms\"\n",
            "lease: must be at least 300ms",
        ),
        ("[sandbox]\nmemory = \"lots\"\n", "memory"),
        (
            "[sandbox]\nmax_payload = \"64MiB\"\n",
            "max_payload: must be at most 16MiB",
        ),
        ("[sandbox]\ntimeout = \"0s\"\n", "timeout: must be positive"),
        (
            "[sandbox]\nmemory_budget = \"64MiB\"\n",
            "memory_budget: 64.0 MiB cannot hold one attempt's memory (128.0 MiB)",
        ),
        ("[worker\n", "invalid config file"),
    ];
    for (text, expected) in cases {
        std::fs::write(config.path(), text).unwrap();
        let (status, _, stderr) = run_cli(&url, &["--config", path, "run"]).await;
        assert!(!status.success(), "{text:?} must be refused");
        assert!(stderr.contains(expected), "{text:?}: {stderr}");
    }
    let (status, _, stderr) = run_cli(&url, &["run", "--plugins", "/etc/passwd"]).await;
    assert!(!status.success());
    assert!(
        stderr.contains("/etc/passwd") && stderr.contains("Not a directory"),
        "{stderr}"
    );
}
