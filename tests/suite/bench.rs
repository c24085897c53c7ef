//! `runner bench`: every phase runs against the real database and sandbox, the summary line
//! is machine-readable, and the benchmark's database is gone afterwards.

use crate::support::db::admin_url;
use crate::support::process::runner;

/// The summary line's keys, in order.
const KEYS: [&str; 11] = [
    "enqueue_jobs_per_s",
    "drain_jobs_per_s",
    "latency_start_p50_ms",
    "latency_start_p99_ms",
    "latency_done_p50_ms",
    "latency_done_p99_ms",
    "instantiate_call_p50_us",
    "http_jobs_per_s",
    "http_native_per_s",
    "schedule_late_p50_ms",
    "schedule_late_p99_ms",
];

#[tokio::test]
async fn runner_bench_runs_every_phase_and_ends_with_the_summary_line() {
    let echo = test_plugins::path("echo");
    let output = runner(&[
        "bench",
        "--jobs",
        "3000",
        "--latency-samples",
        "20",
        "--sandbox-calls",
        "200",
        "--http-jobs",
        "300",
        "--schedule-seconds",
        "3",
        "--hold-snapshot",
        "--plugin",
        echo.to_str().unwrap(),
    ])
    .env("DATABASE_URL", admin_url())
    .output()
    .await
    .expect("runner binary runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stdout}\n{stderr}");
    for phase in [
        "1. enqueue",
        "2. drain",
        "3. latency",
        "4. sandbox",
        "5. http",
        "6. schedule",
    ] {
        assert!(stdout.contains(phase), "no {phase:?} in:\n{stdout}");
    }
    assert!(stdout.contains("a snapshot held throughout"), "{stdout}");

    let summary = stdout.lines().last().expect("a summary line");
    let mut fields = summary.split(' ');
    assert_eq!(fields.next(), Some("bench"), "{summary}");
    let pairs: Vec<(&str, f64)> = fields
        .map(|field| {
            let (key, value) = field.split_once('=').expect("key=value");
            (key, value.parse().expect("a number"))
        })
        .collect();
    let keys: Vec<&str> = pairs.iter().map(|(key, _)| *key).collect();
    assert_eq!(keys, KEYS, "{summary}");
    for (key, value) in pairs {
        assert!(value > 0.0 && value.is_finite(), "{key}={value}");
    }

    let database = stdout
        .split("database ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .expect("the header names the database");
    let admin = sqlx::PgPool::connect(&admin_url()).await.unwrap();
    let left: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT FROM pg_database WHERE datname = $1)")
            .bind(database)
            .fetch_one(&admin)
            .await
            .unwrap();
    assert!(!left, "{database} was not dropped");
}
