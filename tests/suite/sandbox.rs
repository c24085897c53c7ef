//! Jobs run as WebAssembly components, end to end through PostgreSQL: every row of the
//! failure model, with the state, attempt and error text the database ends up holding.

use std::sync::Arc;
use std::time::{Duration, Instant};

use runner::client::JobRecord;
use runner::plugins::Policy;
use runner::retry::Backoff;
use runner::sandbox::Disposition;
use runner::{
    Clock, Job, JobState, Limits, ManualClock, NewJob, Queue, RetryPolicy, Sandbox, SandboxConfig,
    Worker, WorkerConfig, WorkerHandle,
};
use serde_json::{Value, json};

use crate::support::plugins::executor;
use crate::support::{TestDb, eventually};

const WAIT: Duration = Duration::from_secs(20);

/// Retries within milliseconds, completed jobs kept so their results can be read.
fn config() -> WorkerConfig {
    WorkerConfig {
        poll_interval: Duration::from_millis(20),
        keep_completed: Some(Duration::from_secs(3600)),
        retry: RetryPolicy {
            max_attempts: 5,
            backoff: Backoff {
                base: Duration::from_millis(10),
                cap: Duration::from_millis(20),
                ..Backoff::default()
            },
        },
        ..WorkerConfig::default()
    }
}

fn start(queue: &Queue, job_types: &[&str], limits: Limits) -> WorkerHandle {
    let policy = Policy::new(limits, config().retry);
    let executor = executor(job_types, SandboxConfig::default(), policy);
    Worker::new(queue.clone(), executor, config()).start()
}

async fn enqueue(queue: &Queue, job_type: &str, payload: Value) -> i64 {
    let job = NewJob::new(job_type, payload);
    queue.enqueue(queue.pool(), &job).await.unwrap().id
}

/// Waits until job `id` satisfies `done`, and returns it.
async fn wait_for(
    queue: &Queue,
    id: i64,
    what: &str,
    done: impl Fn(&JobRecord) -> bool,
) -> JobRecord {
    eventually(what, WAIT, || async {
        let job = queue.job(id).await.unwrap();
        done(&job).then_some(job)
    })
    .await
}

async fn settled(queue: &Queue, id: i64, state: JobState) -> JobRecord {
    wait_for(queue, id, &format!("job {id} to be {state:?}"), |j| {
        j.state == state
    })
    .await
}

fn last_error(job: &JobRecord) -> &str {
    &job.last_error().expect("an error is recorded").error
}

fn assert_error_starts_with(job: &JobRecord, prefix: &str) {
    let error = last_error(job);
    assert!(
        error.starts_with(prefix),
        "expected {prefix:?}, got:\n{error}"
    );
}

/// A queue whose clock stands still: a retried job stays visible with its backoff.
fn frozen(db: &TestDb) -> (ManualClock, Queue) {
    let clock = ManualClock::starting_now();
    (clock.clone(), db.queue_with(clock))
}

#[tokio::test]
async fn plugins_complete_jobs_with_their_results() {
    let db = TestDb::new().await;
    let queue = db.queue();
    let worker = start(&queue, &["echo", "review-reminder-rust"], Limits::default());
    let echo = enqueue(
        &queue,
        "echo",
        json!({"nested": {"list": [1, 2.5, "three"]}}),
    )
    .await;
    let reminder = enqueue(
        &queue,
        "review-reminder-rust",
        json!({"user": "ada", "pull_requests": [
            {"title": "Newer", "url": "https://x/2", "age_days": 1},
            {"title": "Oldest", "url": "https://x/1", "age_days": 9},
            {"title": "Middle", "url": "https://x/3", "age_days": 4},
        ]}),
    )
    .await;

    let echo = settled(&queue, echo, JobState::Completed).await;
    assert_eq!(echo.result, Some(echo.payload.clone()));
    assert_eq!(echo.attempt, 1);
    let reminder = settled(&queue, reminder, JobState::Completed).await;
    let result = reminder.result.unwrap();
    assert_eq!(result["user"], "ada");
    assert_eq!(result["count"], 3);
    assert_eq!(
        result["message"],
        "Hi ada, 3 pull requests are waiting for your review:\n\
         - Oldest (9 days) https://x/1\n\
         - Middle (4 days) https://x/3\n\
         - Newer (1 day) https://x/2"
    );
    worker.shutdown().await;
}

#[tokio::test]
async fn retry_then_success_and_fail_at_once() {
    let db = TestDb::new().await;
    let queue = db.queue();
    let worker = start(
        &queue,
        &["flaky", "review-reminder-rust"],
        Limits::default(),
    );
    let flaky = enqueue(&queue, "flaky", json!({"succeed_on_attempt": 3})).await;
    let doomed = enqueue(&queue, "review-reminder-rust", json!({"pull_requests": []})).await;

    let flaky = settled(&queue, flaky, JobState::Completed).await;
    assert_eq!(flaky.attempt, 3);
    assert_eq!(flaky.result, Some(json!({"attempt": 3})));
    let errors: Vec<_> = flaky
        .errors
        .iter()
        .map(|e| (e.attempt, e.error.as_str()))
        .collect();
    assert_eq!(
        errors,
        [
            (1, "attempt 1 fails on purpose (succeeds on attempt 3)"),
            (2, "attempt 2 fails on purpose (succeeds on attempt 3)")
        ]
    );

    let doomed = settled(&queue, doomed, JobState::Failed).await;
    assert_eq!(doomed.attempt, 1, "a permanent error is not retried");
    assert_error_starts_with(&doomed, "invalid payload: missing field `user`");
    worker.shutdown().await;
}

#[tokio::test]
async fn a_trap_is_retried_with_backoff_and_keeps_its_kind_backtrace_and_panic_message() {
    let db = TestDb::new().await;
    let (clock, queue) = frozen(&db);
    let worker = start(&queue, &["poison"], Limits::default());
    let id = enqueue(&queue, "poison", json!({"do": "trap"})).await;

    let job = wait_for(&queue, id, "the trap to be recorded", |j| {
        !j.errors.is_empty()
    })
    .await;
    assert_eq!(job.state, JobState::Available, "a trap is retried");
    assert_eq!(job.attempt, 1);
    assert!(job.run_at > clock.now(), "after a backoff");
    let error = last_error(&job);
    for expected in [
        "trap (unreachable_code_reached): wasm trap: wasm `unreachable` instruction executed",
        "wasm backtrace:",
        "poison.wasm!poison::misbehave",
        &format!("poison: trap requested by job {id}"),
        "panicked at",
    ] {
        assert!(error.contains(expected), "{expected:?} not in:\n{error}");
    }
    worker.shutdown().await;
}

#[tokio::test]
async fn stack_overflow_and_memory_hog_are_classified() {
    let db = TestDb::new().await;
    let (clock, queue) = frozen(&db);
    let limits = Limits {
        memory: 32 << 20,
        ..Limits::default()
    };
    let worker = start(&queue, &["poison"], limits);
    let stack = enqueue(&queue, "poison", json!({"do": "stack"})).await;
    let memory = enqueue(&queue, "poison", json!({"do": "memory"})).await;

    for (id, expected) in [
        (
            stack,
            "trap (stack_overflow): wasm trap: call stack exhausted",
        ),
        (memory, "memory limit exceeded: the guest asked for "),
    ] {
        let job = wait_for(&queue, id, "the error", |j| !j.errors.is_empty()).await;
        assert_eq!((job.state, job.attempt), (JobState::Available, 1));
        assert!(job.run_at > clock.now(), "retried after a backoff");
        assert_error_starts_with(&job, expected);
        if id == memory {
            assert!(
                last_error(&job).contains("the cap is 33554432"),
                "{}",
                last_error(&job)
            );
        }
    }
    worker.shutdown().await;
}

/// The default `#[tokio::test]` runtime has one thread: if a spinning guest held it, no other
/// job could make progress until the guest was stopped.
#[tokio::test]
async fn a_spinning_guest_is_stopped_by_its_cpu_budget_while_other_jobs_run() {
    let db = TestDb::new().await;
    let (_clock, queue) = frozen(&db);
    let limits = Limits {
        cpu_budget: Duration::from_secs(2),
        ..Limits::default()
    };
    let worker = start(&queue, &["poison", "echo"], limits);
    let spinner = enqueue(&queue, "poison", json!({"do": "loop"})).await;
    settled(&queue, spinner, JobState::Running).await;

    let echoes = [
        enqueue(&queue, "echo", json!(1)).await,
        enqueue(&queue, "echo", json!(2)).await,
    ];
    for id in echoes {
        settled(&queue, id, JobState::Completed).await;
    }
    let spinner_now = queue.job(spinner).await.unwrap();
    assert_eq!(
        (spinner_now.state, spinner_now.attempt),
        (JobState::Running, 1),
        "other jobs completed while the guest was still spinning"
    );

    let job = wait_for(&queue, spinner, "the budget to stop the guest", |j| {
        !j.errors.is_empty()
    })
    .await;
    assert_eq!(job.state, JobState::Available, "retried");
    assert_error_starts_with(&job, "cpu budget of 2s exceeded: the guest was stopped");
    assert!(
        last_error(&job).contains("poison::misbehave"),
        "with where it was"
    );
    worker.shutdown().await;
}

#[tokio::test]
async fn the_cpu_budget_stops_a_guest_within_one_tick() {
    let config = SandboxConfig::default();
    let budget = Duration::from_millis(300);
    let limits = Limits {
        cpu_budget: budget,
        ..Limits::default()
    };
    let sandbox = Sandbox::new(config.clone()).unwrap();
    let plugin = sandbox.load(&test_plugins::path("poison")).unwrap();
    let job = runner::Job {
        max_attempts: 1,
        ..runner::Job::standalone("poison", r#"{"do": "loop"}"#)
    };
    let cpu = || runner::sandbox::thread_cpu_time().expect("a thread CPU clock");
    let (started, cpu_before) = (Instant::now(), cpu());
    let run = sandbox.run(&plugin, &job, &limits).await;
    let (took, ran) = (started.elapsed(), cpu() - cpu_before);
    assert!(
        matches!(run.result, Err(runner::sandbox::RunError::CpuBudget(_))),
        "{:?}",
        run.result
    );
    // The guest ran on this test's one runtime thread, so the thread's CPU time is what it
    // ran (and a little instantiation). It is stopped at the first tick past its budget; its
    // first turn is charged the wall time, the rest the CPU time. Waiting for a core on a
    // loaded machine makes the wall time longer but charges nothing; the slack covers epoch
    // ticks that come late.
    assert!(took >= budget, "stopped early: {took:?} of wall time");
    assert!(
        ran + config.epoch_tick >= budget,
        "stopped early: ran {ran:?}"
    );
    assert!(
        ran <= budget + config.epoch_tick + Duration::from_millis(100),
        "stopped late: ran {ran:?} in {took:?}"
    );
}

#[tokio::test]
async fn a_guest_waiting_past_its_timeout_is_stopped() {
    let db = TestDb::new().await;
    let (_clock, queue) = frozen(&db);
    let limits = Limits {
        timeout: Duration::from_millis(300),
        ..Limits::default()
    };
    let worker = start(&queue, &["poison"], limits);
    let id = enqueue(&queue, "poison", json!({"do": "sleep", "ms": 60_000})).await;
    let job = wait_for(&queue, id, "the timeout", |j| !j.errors.is_empty()).await;
    assert_eq!((job.state, job.attempt), (JobState::Available, 1));
    assert_eq!(
        last_error(&job),
        "wall-clock timeout of 300ms exceeded: the guest was stopped"
    );
    worker.shutdown().await;
}

#[tokio::test]
async fn file_env_and_socket_probes_find_nothing() {
    // Everything the probes look for exists on the host.
    assert!(std::path::Path::new("/etc/passwd").exists());
    assert!(std::env::var_os("PATH").is_some());
    assert!(std::net::TcpStream::connect("127.0.0.1:5432").is_ok());

    let db = TestDb::new().await;
    let queue = db.queue();
    let worker = start(&queue, &["poison"], Limits::default());
    for probe in ["read-file", "read-env", "socket"] {
        let id = enqueue(&queue, "poison", json!({"do": probe})).await;
        let job = settled(&queue, id, JobState::Completed).await;
        let result = job.result.unwrap();
        assert_eq!(result["found"], false, "{probe}: {result}");
    }
    worker.shutdown().await;
}

#[tokio::test]
async fn oversized_results_and_payloads_fail_at_once() {
    let db = TestDb::new().await;
    let queue = db.queue();
    let limits = Limits {
        max_result: 1 << 20,
        max_payload: 1024,
        ..Limits::default()
    };
    let worker = start(&queue, &["poison", "echo"], limits);
    // Just over max_result: refused with its size. (Far over it, wasmtime refuses to copy it
    // at all: reliability::hostile.)
    let huge = enqueue(
        &queue,
        "poison",
        json!({"do": "huge-output", "bytes": (1 << 20) + 1000}),
    )
    .await;
    let big_payload = enqueue(&queue, "echo", json!({"text": "x".repeat(2000)})).await;

    let job = settled(&queue, huge, JobState::Failed).await;
    assert_eq!(job.attempt, 1);
    assert_eq!(
        last_error(&job),
        "result of 1049587 bytes exceeds the limit of 1048576 bytes"
    );
    let job = settled(&queue, big_payload, JobState::Failed).await;
    assert_eq!(
        last_error(&job),
        "payload of 2012 bytes exceeds the limit of 1024 bytes"
    );
    worker.shutdown().await;
}

#[tokio::test]
async fn without_a_free_sandbox_slot_a_job_is_requeued_without_counting_the_attempt() {
    let db = TestDb::new().await;
    let (clock, queue) = frozen(&db);
    let one_slot = SandboxConfig {
        instances: 1,
        ..SandboxConfig::default()
    };
    let executor = executor(
        &["sleep"],
        one_slot,
        Policy::new(Limits::default(), config().retry),
    );
    let worker = Worker::new(
        queue.clone(),
        executor,
        WorkerConfig {
            concurrency: 2,
            ..config()
        },
    )
    .start();
    let a = enqueue(&queue, "sleep", json!({"ms": 1000, "job": "a"})).await;
    let b = enqueue(&queue, "sleep", json!({"ms": 1000, "job": "b"})).await;

    // Both are claimed at once; one gets the only slot, the other goes back to the queue.
    let (requeued, first) = eventually("one job to be requeued", WAIT, || async {
        for (this, other) in [(a, b), (b, a)] {
            let job = queue.job(this).await.unwrap();
            if job.state == JobState::Available && job.run_at > clock.now() {
                return Some((job, other));
            }
        }
        None
    })
    .await;
    assert_eq!(
        requeued.attempt, 0,
        "the attempt that never ran does not count"
    );
    assert!(requeued.errors.is_empty(), "{:?}", requeued.errors);

    settled(&queue, first, JobState::Completed).await;
    clock.advance(Duration::from_secs(2));
    let job = settled(&queue, requeued.id, JobState::Completed).await;
    assert_eq!(job.attempt, 1);
    worker.shutdown().await;
}

#[tokio::test]
async fn every_job_gets_fresh_memory_even_in_a_reused_sandbox_slot() {
    let db = TestDb::new().await;
    let queue = db.queue();
    // One slot: every job runs in the same pool slot, reset in between (partly in place, as
    // the slot keeps pages resident).
    let one_slot = SandboxConfig {
        instances: 1,
        ..SandboxConfig::default()
    };
    let policy = Policy::new(Limits::default(), config().retry);
    let executor = executor(&["poison"], one_slot, policy);
    let worker = Worker::new(queue.clone(), executor, config()).start();
    for n in 0..3 {
        let id = enqueue(&queue, "poison", json!({"do": "remember", "n": n})).await;
        let job = settled(&queue, id, JobState::Completed).await;
        let result = job.result.unwrap();
        assert_eq!(result["left_by_earlier_jobs"], 0, "job {n}: {result}");
    }
    worker.shutdown().await;
}

#[tokio::test]
async fn attempts_wait_for_room_in_the_memory_budget_and_one_that_never_fits_fails() {
    let budget = SandboxConfig {
        memory_budget: 256 << 20,
        ..SandboxConfig::default()
    };
    let sandbox = Arc::new(Sandbox::new(budget).unwrap());
    let plugin = Arc::new(sandbox.load(&test_plugins::path("sleep")).unwrap());
    let limits = Limits {
        memory: 128 << 20,
        ..Limits::default()
    };
    let started = Instant::now();
    let runs: Vec<_> = (0..6)
        .map(|_| {
            let (sandbox, plugin, limits) = (sandbox.clone(), plugin.clone(), limits.clone());
            tokio::spawn(async move {
                let job = Job::standalone("sleep", r#"{"ms": 200}"#);
                sandbox.run(&plugin, &job, &limits).await.result
            })
        })
        .collect();
    for run in runs {
        run.await.unwrap().expect("every attempt runs, in its turn");
    }
    // Two caps of 128 MiB fit the budget: six attempts of 200 ms run in three waves.
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(600), "took {took:?}");

    let too_big = Limits {
        memory: 512 << 20,
        ..limits
    };
    let job = Job::standalone("sleep", r#"{"ms": 1}"#);
    let refused = sandbox
        .run(&plugin, &job, &too_big)
        .await
        .result
        .unwrap_err();
    assert_eq!(
        refused.to_string(),
        "a memory cap of 512.0 MiB is more than the runner's memory budget of 256.0 MiB"
    );
    assert_eq!(refused.disposition(), Disposition::Fail);
}

#[test]
fn guests_run_on_threads_of_their_own() {
    let policy = Policy::new(Limits::default(), config().retry);
    let executor = executor(&["echo"], SandboxConfig::default(), policy);
    // worker::jobs_that_hold_their_threads_do_not_hold_up_the_heartbeats shows what for.
    assert!(runner::Executor::runtime(&executor).is_some());
}
