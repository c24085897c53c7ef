//! The plugin author's and operator's view: `runner call`, and `runner run --plugins` with a
//! directory that holds good and bad files.

use std::time::Duration;

use nix::sys::resource::{UsageWho, getrusage};
use nix::sys::signal::Signal;
use serde_json::{Value, json};

use crate::support::process::{Process, run_cli, runner};
use crate::support::{TestDb, eventually};

const WAIT: Duration = Duration::from_secs(20);

fn plugin(job_type: &str) -> String {
    test_plugins::path(job_type).display().to_string()
}

/// `runner call` needs no database: the URL points nowhere that answers.
async fn call(args: &[&str]) -> (Option<i32>, String, String) {
    let (status, stdout, stderr) = run_cli("postgres://nobody@127.0.0.1:1/none", args).await;
    (status.code(), stdout, stderr)
}

/// Runs `runner call args`, expecting it to fail with `expected` on stderr and nothing on
/// stdout; returns the exit code.
async fn call_fails(args: &[&str], expected: &str) -> Option<i32> {
    let (code, stdout, stderr) = call(args).await;
    assert_ne!(code, Some(0), "{args:?} must fail");
    assert!(stdout.is_empty(), "{args:?}: {stdout}");
    assert!(
        stderr.contains(expected),
        "{args:?}: expected {expected:?} in:\n{stderr}"
    );
    code
}

/// The largest resident size, in bytes, of the processes this test has waited for (each test
/// runs in a process of its own).
fn children_peak_rss() -> u64 {
    let usage = getrusage(UsageWho::RUSAGE_CHILDREN).expect("getrusage");
    u64::try_from(usage.max_rss()).unwrap_or_default() * 1024
}

#[tokio::test]
async fn a_long_log_line_is_cut_and_a_huge_one_refused_without_a_copy() {
    let poison = plugin("poison");
    let huge_log = |bytes: u64| json!({ "do": "huge-log", "bytes": bytes }).to_string();

    // Within what one call may carry: cut to 4 KiB where it lies.
    let payload = huge_log(512 << 10);
    let (code, _, stderr) = call(&["call", &poison, "--payload", &payload]).await;
    assert_eq!(code, Some(0), "{}", &stderr[..stderr.len().min(2000)]);
    assert!(stderr.contains("[cut: 524288 bytes in all]"), "{stderr}");
    assert!(stderr.len() < 64 << 10, "{} bytes on stderr", stderr.len());

    // Far beyond it: refused before any of it is copied, naming the limit.
    const BYTES: u64 = 96 << 20;
    let (code, ..) = call(&["call", &plugin("echo"), "--payload", "{}"]).await;
    assert_eq!(code, Some(0));
    let idle = children_peak_rss();
    let payload = huge_log(BYTES);
    let args = ["call", &poison, "--payload", &payload, "--memory", "512MiB"];
    let (code, _, stderr) = call(&args).await;
    assert_ne!(code, Some(0));
    assert!(
        stderr.contains("the guest handed the host more than 1114112 bytes in one call"),
        "{}",
        &stderr[..stderr.len().min(2000)]
    );
    // The guest's memory holds the line once; a copy in the host would add as much again.
    let peak = children_peak_rss();
    assert!(
        peak < idle + BYTES + (32 << 20),
        "peak RSS {peak} bytes for a line of {BYTES}, {idle} for an echo"
    );
}

#[tokio::test]
async fn runner_call_prints_the_result_or_the_classified_error() {
    let echo = plugin("echo");
    let (code, stdout, stderr) = call(&["call", &echo, "--payload", r#"{"a": [1, 2]}"#]).await;
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(stdout.trim(), r#"{"a": [1, 2]}"#);

    let reminder = plugin("review-reminder-rust");
    let payload =
        r#"{"user": "ada", "pull_requests": [{"title": "T", "url": "u", "age_days": 2}]}"#;
    let (code, stdout, stderr) = call(&["call", &reminder, "--payload", payload]).await;
    assert_eq!(code, Some(0), "{stderr}");
    let result: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(result["count"], 1);
    assert!(
        stderr.contains("Hi ada, 1 pull request is waiting"),
        "guest log: {stderr}"
    );

    let poison = plugin("poison");
    let cases: [(&[&str], &str); 4] = [
        (
            &["call", &reminder, "--payload", r#"{"user": "ada"}"#],
            "error (the runner would fail the job): invalid payload: missing field `pull_requests`",
        ),
        (
            &[
                "call",
                &poison,
                "--payload",
                r#"{"do": "memory"}"#,
                "--memory",
                "16MiB",
            ],
            "error (the runner would retry the job): memory limit exceeded",
        ),
        (
            &[
                "call",
                &poison,
                "--payload",
                r#"{"do": "loop"}"#,
                "--cpu-budget",
                "100ms",
            ],
            "error (the runner would retry the job): cpu budget of 100ms exceeded",
        ),
        (
            &["call", &poison, "--payload", r#"{"do": "trap"}"#],
            "error (the runner would retry the job): trap (unreachable_code_reached)",
        ),
    ];
    for (args, expected) in cases {
        assert_eq!(
            call_fails(args, expected).await,
            Some(1),
            "a job error exits 1"
        );
    }
}

#[tokio::test]
async fn runner_call_refuses_bad_input_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let corrupt = dir.path().join("corrupt.wasm");
    std::fs::write(&corrupt, b"\0asm\x0d\0\x01\0 certainly not a component").unwrap();
    let corrupt = corrupt.display().to_string();
    let echo = plugin("echo");
    let cases: [(&[&str], &str); 4] = [
        (
            &["call", &echo, "--payload", "{nope"],
            "payload is not valid JSON",
        ),
        (&["call", "/nowhere/x.wasm"], "cannot read /nowhere/x.wasm"),
        (&["call", &corrupt], "not a valid WebAssembly component"),
        (
            &["call", &echo, "--memory", "lots"],
            "\"lots\" is not a size",
        ),
    ];
    for (args, expected) in cases {
        call_fails(args, expected).await;
    }
}

#[tokio::test]
async fn a_bad_plugin_file_is_reported_and_the_good_ones_serve() {
    let db = TestDb::new().await;
    let url = db.url();
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(test_plugins::path("echo"), dir.path().join("echo.wasm")).unwrap();
    std::fs::write(dir.path().join("broken.wasm"), b"not wasm at all").unwrap();
    std::fs::write(dir.path().join("README.txt"), b"ignored").unwrap();
    std::fs::write(dir.path().join(".hidden.wasm"), b"ignored").unwrap();

    let (_, id, _) = run_cli(&url, &["enqueue", "echo", "--payload", r#"{"ok": true}"#]).await;
    let mut command = runner(&["run", "--plugins", dir.path().to_str().unwrap()]);
    command.env("DATABASE_URL", &url);
    let mut process = Process::spawn(command);

    let failure = process.wait_for_output("plugin not loaded", WAIT).await;
    assert!(failure.contains("broken.wasm"), "{failure}");
    assert!(
        failure.contains("not a valid WebAssembly component"),
        "{failure}"
    );
    let started = process.wait_for_output("runner started", WAIT).await;
    assert!(started.contains(r#"job_types=["echo"]"#), "{started}");
    eventually("the echo job to complete", WAIT, || async {
        let left: i64 = db.scalar("SELECT count(*) FROM jobrunner.jobs").await;
        (left == 0).then_some(())
    })
    .await;
    process.signal(Signal::SIGTERM);
    assert!(process.exit(WAIT).await.success());
    assert!(!id.trim().is_empty());
}

#[tokio::test]
async fn a_missing_plugin_directory_is_a_clear_error() {
    let db = TestDb::new().await;
    let (status, _, stderr) = run_cli(&db.url(), &["run", "--plugins", "/no/such/plugins"]).await;
    assert!(!status.success());
    assert!(
        stderr.contains("cannot read the plugin directory /no/such/plugins"),
        "{stderr}"
    );
}
