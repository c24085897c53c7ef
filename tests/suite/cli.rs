//! The `runner` binary: input checking, operator commands, logs, signals, crash recovery and
//! the zero-config private cluster.

use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use serde_json::Value;

use crate::support::process::{Process, run_cli, runner};
use crate::support::{TestDb, eventually};

const WAIT: Duration = Duration::from_secs(20);

#[tokio::test]
async fn bad_cli_input_is_refused_with_a_clear_error_and_inserts_nothing() {
    let db = TestDb::new().await;
    let url = db.url();
    let cases: [(&[&str], &str); 9] = [
        (
            &["enqueue", "t", "--payload", "{not json"],
            "payload is not valid JSON",
        ),
        (
            &["enqueue", "", "--payload", "{}"],
            "job type must not be empty",
        ),
        (&["enqueue", "t", "--delay", "-5s"], "negative"),
        (&["enqueue", "t", "--delay", "soon"], "is not a duration"),
        (
            &["enqueue", "t", "--run-at", "tomorrow"],
            "is not an RFC 3339 time",
        ),
        (
            &[
                "enqueue",
                "t",
                "--run-at",
                "2030-01-01T00:00:00Z",
                "--delay",
                "1s",
            ],
            "cannot be used with",
        ),
        (
            &["enqueue", "t", "--max-attempts", "0"],
            "max attempts must be between 1",
        ),
        (
            &["enqueue", "t", "--tenant", ""],
            "tenant must not be empty",
        ),
        (
            &["jobs", "list", "--state", "done"],
            "unknown job state \"done\"",
        ),
    ];
    for (args, expected) in cases {
        let (status, stdout, stderr) = run_cli(&url, args).await;
        assert!(!status.success(), "{args:?} must fail");
        assert!(
            stderr.contains(expected),
            "{args:?}: expected {expected:?} in stderr:\n{stderr}"
        );
        assert!(stdout.is_empty(), "{args:?} printed {stdout:?}");
    }
    let config = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        config.path(),
        "[worker]\nconcurrency = 4\nlease = \"forever\"\n",
    )
    .unwrap();
    let path = config.path().to_str().unwrap();
    let (status, _, stderr) = run_cli(&url, &["--config", path, "run"]).await;
    assert!(!status.success());
    assert!(
        stderr.contains("invalid config file") && stderr.contains("lease"),
        "{stderr}"
    );

    let (status, _, stderr) = run_cli(&url, &["jobs", "show", "424242"]).await;
    assert!(!status.success());
    assert!(stderr.contains("job 424242 not found"), "{stderr}");
    assert_eq!(
        db.scalar::<i64>("SELECT count(*) FROM jobrunner.jobs")
            .await,
        0
    );
}

#[tokio::test]
async fn enqueue_and_operator_commands_work_end_to_end() {
    let db = TestDb::new().await;
    let url = db.url();
    let args = [
        "enqueue",
        "email",
        "--payload",
        r#"{"to": "a@example.com"}"#,
        "--tenant",
        "acme",
        "--priority",
        "-3",
        "--max-attempts",
        "4",
        "--delay",
        "90s",
    ];
    let (status, stdout, stderr) = run_cli(&url, &args).await;
    assert!(status.success(), "{stderr}");
    let id: i64 = stdout.trim().parse().expect("enqueue prints the id");

    let (_, again, note) = run_cli(&url, &args).await;
    assert_eq!(
        again.trim(),
        id.to_string(),
        "a duplicate returns the pending job's id"
    );
    assert!(note.contains("same unique key"), "{note}");

    let (status, json, _) = run_cli(&url, &["jobs", "show", &id.to_string(), "--json"]).await;
    assert!(status.success());
    let job: Value = serde_json::from_str(&json).unwrap();
    assert_eq!(job["tenant"], "acme");
    assert_eq!(job["priority"], -3);
    assert_eq!(job["max_attempts"], 4);
    assert_eq!(job["state"], "available");
    assert_eq!(job["payload"]["to"], "a@example.com");

    let (_, listed, _) = run_cli(
        &url,
        &["jobs", "list", "--tenant", "acme", "--type", "email"],
    )
    .await;
    assert!(
        listed
            .lines()
            .nth(1)
            .is_some_and(|row| row.starts_with(&id.to_string())),
        "{listed}"
    );
    let (_, none, _) = run_cli(&url, &["jobs", "list", "--tenant", "other"]).await;
    assert_eq!(none.lines().count(), 1, "only the header: {none}");

    let (status, out, _) = run_cli(&url, &["jobs", "cancel", &id.to_string()]).await;
    assert!(status.success() && out.contains("cancelled"), "{out}");
    let (status, _, err) = run_cli(&url, &["jobs", "retry", &id.to_string()]).await;
    assert!(!status.success());
    assert!(
        err.contains("is cancelled: only failed jobs can be retried"),
        "{err}"
    );
    let (_, shown, _) = run_cli(&url, &["jobs", "show", &id.to_string()]).await;
    assert!(shown.contains("state:       cancelled"), "{shown}");
}

/// Outcome lines from a JSON log: the objects whose target is the outcome log.
fn outcome_lines(process: &Process) -> Vec<Value> {
    process
        .stdout()
        .iter()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|v| v["target"] == "jobrunner::outcome")
        .collect()
}

#[tokio::test]
async fn json_logs_have_one_outcome_line_per_attempt() {
    let db = TestDb::new().await;
    let url = db.url();
    for (job_type, payload) in [
        ("echo", r#"{"hi": 1}"#),
        ("flaky", r#"{"succeed_on_attempt": 2}"#),
        ("review-reminder-rust", r#"{"user": "bob"}"#),
    ] {
        let (status, _, stderr) = run_cli(&url, &["enqueue", job_type, "--payload", payload]).await;
        assert!(status.success(), "{stderr}");
    }
    let mut command = runner(&[
        "run",
        "--log-format",
        "json",
        "--poll-interval",
        "50ms",
        "--backoff-base",
        "10ms",
    ]);
    command.env("DATABASE_URL", &url);
    let mut process = Process::spawn(command);
    let lines = eventually("four outcome lines", WAIT, || async {
        let lines = outcome_lines(&process);
        (lines.len() >= 4).then_some(lines)
    })
    .await;
    process.signal(Signal::SIGTERM);
    assert!(process.exit(WAIT).await.success());

    for line in &lines {
        for field in [
            "job_id",
            "job_type",
            "tenant",
            "attempt",
            "outcome",
            "duration_ms",
        ] {
            assert!(!line[field].is_null(), "{field} missing in {line}");
        }
    }
    let summary: Vec<(String, i64, String)> = lines
        .iter()
        .map(|l| {
            (
                l["job_type"].as_str().unwrap().to_owned(),
                l["attempt"].as_i64().unwrap(),
                l["outcome"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    for expected in [
        ("echo", 1, "completed"),
        ("flaky", 1, "retry"),
        ("flaky", 2, "completed"),
        ("review-reminder-rust", 1, "failed"),
    ] {
        let expected = (expected.0.to_owned(), expected.1, expected.2.to_owned());
        assert!(
            summary.contains(&expected),
            "{expected:?} not in {summary:?}"
        );
    }
    let failed = lines.iter().find(|l| l["outcome"] == "failed").unwrap();
    assert_eq!(
        failed["error"],
        "invalid payload: missing field `pull_requests` at line 1 column 15"
    );
    assert_eq!(failed["tenant"], "default");
}

#[tokio::test]
async fn sigterm_drains_and_a_second_signal_exits_at_once() {
    let db = TestDb::new().await;
    let url = db.url();
    let (_, id, _) = run_cli(&url, &["enqueue", "sleep", "--payload", r#"{"ms": 600}"#]).await;
    let mut command = runner(&["run"]);
    command
        .env("DATABASE_URL", &url)
        .env("RUST_LOG", "info,jobrunner::attempt=debug");
    let mut process = Process::spawn(command);
    // Started, not just claimed: a claimed job that has not started goes back at once.
    process.wait_for_output("job started", WAIT).await;
    process.signal(Signal::SIGTERM);
    let status = process.exit(WAIT).await;
    assert!(
        status.success(),
        "graceful shutdown exits 0: {status}\nstderr:\n{}",
        process.stderr().join("\n")
    );
    assert!(
        process.stderr().iter().any(|l| l.contains("job completed")),
        "the running job finished"
    );
    let left: i64 = db.scalar("SELECT count(*) FROM jobrunner.jobs").await;
    assert_eq!(left, 0, "job {} completed before exit", id.trim());

    run_cli(&url, &["enqueue", "sleep", "--payload", r#"{"ms": 60000}"#]).await;
    let mut command = runner(&["run"]);
    command
        .env("DATABASE_URL", &url)
        .env("RUST_LOG", "info,jobrunner::attempt=debug");
    let mut process = Process::spawn(command);
    process.wait_for_output("job started", WAIT).await;
    process.signal(Signal::SIGTERM);
    process.wait_for_output("shutting down", WAIT).await;
    let second = Instant::now();
    process.signal(Signal::SIGINT);
    let status = process.exit(WAIT).await;
    assert_eq!(status.code(), Some(130));
    assert!(
        second.elapsed() < Duration::from_secs(2),
        "exited at once: {:?}",
        second.elapsed()
    );
}

#[tokio::test]
async fn a_killed_runners_jobs_run_elsewhere_within_ten_seconds() {
    let db = TestDb::new().await;
    let url = db.url();
    let (_, id, _) = run_cli(
        &url,
        &["enqueue", "sleep", "--payload", r#"{"ms": 120000}"#],
    )
    .await;
    let id: i64 = id.trim().parse().unwrap();
    let spawn = || {
        let mut command = runner(&["run"]);
        command.env("DATABASE_URL", &url);
        Process::spawn(command)
    };
    let owner_and_attempt = || async {
        sqlx::query_as::<_, (Option<String>, i32)>(
            "SELECT lease_owner, attempt FROM jobrunner.jobs WHERE id = $1",
        )
        .bind(id)
        .fetch_one(&db.pool)
        .await
        .unwrap()
    };
    let mut first = spawn();
    let first_owner = eventually("the first runner to take the job", WAIT, || async {
        owner_and_attempt().await.0
    })
    .await;
    let _second = spawn();
    first.signal(Signal::SIGKILL);
    let killed = Instant::now();
    first.exit(WAIT).await;

    let (owner, attempt) = eventually("another runner to take the job over", WAIT, || async {
        let (owner, attempt) = owner_and_attempt().await;
        owner.filter(|o| *o != first_owner).map(|o| (o, attempt))
    })
    .await;
    let recovery = killed.elapsed();
    eprintln!("job {id} running again {recovery:?} after its runner was killed (owner {owner})");
    assert_eq!(attempt, 2, "the killed attempt counts");
    assert!(
        recovery < Duration::from_secs(10),
        "recovered in {recovery:?}"
    );
}

#[tokio::test]
async fn without_a_database_the_runner_starts_a_private_cluster() {
    let dir = crate::support::cluster_tempdir();
    let data_dir = dir.path().join("pg");
    let nothing_answers = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let private = |args: &[&str]| {
        let mut command = runner(args);
        command
            .env("PGHOST", "127.0.0.1")
            .env("PGPORT", nothing_answers.port().to_string())
            .env("JOBRUNNER_PG_DIR", &data_dir);
        command
    };

    let output = private(&["enqueue", "echo", "--payload", r#"{"a": 1}"#])
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(
        stderr.contains("started a private PostgreSQL cluster"),
        "{stderr}"
    );
    assert!(
        stderr.contains(&data_dir.display().to_string()),
        "says where: {stderr}"
    );
    assert!(!data_dir.join("postmaster.pid").exists(), "stopped on exit");
    let id = String::from_utf8_lossy(&output.stdout).trim().to_owned();

    let output = private(&["jobs", "show", &id, "--json"])
        .output()
        .await
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let job: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(
        job["payload"]["a"], 1,
        "the cluster keeps its data between runs"
    );

    let output = private(&["migrate"])
        .env("JOBRUNNER_PG_BIN", "/nonexistent")
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(stderr.contains("install PostgreSQL"), "{stderr}");
}
