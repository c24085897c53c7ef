//! The plugin directory in process: the compiled-artifact cache across restarts, manifests
//! (their errors, and the limits, retries, tenants and concurrency they set per job type), and
//! the plugin version recorded with every failed attempt.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use runner::plugins::{ArtifactCache, Loader, PluginDir, Policy};
use runner::retry::Backoff;
use runner::{
    Executor, Job, JobState, Limits, NewJob, Queue, RetryPolicy, Sandbox, SandboxConfig, Unique,
    WasmExecutor, Worker, WorkerConfig, WorkerHandle,
};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::support::{TestDb, eventually, settled};

const WAIT: Duration = Duration::from_secs(20);

fn policy() -> Policy {
    Policy::new(
        Limits::default(),
        RetryPolicy {
            max_attempts: 5,
            backoff: Backoff {
                base: Duration::from_millis(10),
                cap: Duration::from_millis(20),
                ..Backoff::default()
            },
        },
    )
}

fn loader(cache: Option<&Path>) -> Arc<Loader> {
    let sandbox = Arc::new(Sandbox::new(SandboxConfig::default()).unwrap());
    let cache = cache.map(|dir| ArtifactCache::open(dir, sandbox.engine()).unwrap());
    Arc::new(Loader::new(sandbox, cache, policy()))
}

/// A plugin directory holding the example plugins `examples`, plus `files` (name, text).
fn plugin_dir(examples: &[&str], files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for example in examples {
        let to = dir.path().join(format!("{example}.wasm"));
        std::fs::copy(test_plugins::path(example), to).unwrap();
    }
    for (name, text) in files {
        std::fs::write(dir.path().join(name), text).unwrap();
    }
    dir
}

async fn open(dir: &Path, loader: Arc<Loader>) -> Arc<PluginDir> {
    let plugins = PluginDir::new(dir.to_owned(), loader);
    plugins.load_all().await.unwrap();
    plugins
}

fn executor(plugins: &PluginDir) -> WasmExecutor {
    WasmExecutor::new(
        Arc::clone(plugins.loader().sandbox()),
        Arc::clone(plugins.registry()),
    )
}

fn job(job_type: &str, payload: Value) -> Job {
    Job {
        max_attempts: 5,
        ..Job::standalone(job_type, payload.to_string())
    }
}

#[tokio::test]
async fn a_restart_with_a_warm_cache_compiles_nothing_and_stale_artifacts_go() {
    let dir = plugin_dir(&["echo", "review-reminder-rust", "flaky"], &[]);
    let cache = tempfile::tempdir().unwrap();

    let cold = open(dir.path(), loader(Some(cache.path()))).await;
    assert_eq!(cold.loader().compilations(), 3);
    let engine_dir = cold.loader().cache().unwrap().dir().to_owned();
    let stale = engine_dir.join(format!("{}.cwasm", "0".repeat(64)));
    std::fs::write(&stale, b"an artifact of a version long gone").unwrap();
    let day_ago = SystemTime::now() - Duration::from_secs(86_400);
    std::fs::File::options()
        .write(true)
        .open(&stale)
        .unwrap()
        .set_modified(day_ago)
        .unwrap();
    let other_engine = cache.path().join("engine-0123456789abcdef");
    std::fs::create_dir(&other_engine).unwrap();

    // A restart: a new engine, the same cache directory.
    let warm = open(dir.path(), loader(Some(cache.path()))).await;
    assert_eq!(
        warm.loader().compilations(),
        0,
        "everything came from the cache"
    );
    let (cold, warm) = (cold.registry().statuses(), warm.registry().statuses());
    assert_eq!(warm.len(), 3);
    for (before, after) in cold.iter().zip(&warm) {
        let (before, after) = (
            before.serving.as_ref().unwrap(),
            after.serving.as_ref().unwrap(),
        );
        assert_eq!(
            (before.from.as_str(), after.from.as_str()),
            ("compiled", "cache")
        );
        assert_eq!(before.sha256, after.sha256);
    }
    assert!(!stale.exists(), "an unused old artifact is cleaned up");
    assert!(
        !other_engine.exists(),
        "another engine's artifacts are cleaned up"
    );
    assert_eq!(std::fs::read_dir(&engine_dir).unwrap().count(), 3);

    // What came from the cache runs.
    let warm = open(dir.path(), loader(Some(cache.path()))).await;
    let run = executor(&warm)
        .execute(&job("echo", json!({"hi": 1})))
        .await;
    assert_eq!(run.result.unwrap().unwrap().get(), r#"{"hi":1}"#);
}

#[tokio::test]
async fn a_bad_manifest_names_its_key_and_keeps_the_plugin_out() {
    let dir = plugin_dir(
        &["echo", "flaky", "sleep", "review-reminder-rust"],
        &[
            ("echo.toml", "timeout = \"soon\""),
            ("flaky.toml", "memroy = \"1MiB\""),
            ("sleep.toml", "memory = \"8GiB\""),
            ("review-reminder-rust.toml", "max_attempts = 3"),
            ("orphan.toml", "timeout = \"1s\""),
        ],
    );
    let plugins = open(dir.path(), loader(None)).await;
    let types: Vec<String> = plugins
        .registry()
        .claim_types()
        .iter()
        .map(|t| t.job_type.clone())
        .collect();
    assert_eq!(types, ["review-reminder-rust"]);
    let statuses = plugins.registry().statuses();
    let error = |job_type: &str| {
        let status = statuses.iter().find(|s| s.job_type == job_type).unwrap();
        assert_eq!(status.status, "failed");
        assert!(status.serving.is_none());
        status.error.clone().unwrap()
    };
    for (job_type, key) in [
        ("echo", "timeout"),
        ("flaky", "memroy"),
        ("sleep", "max_memory"),
    ] {
        let error = error(job_type);
        assert!(
            error.contains(&format!("{job_type}.toml")) && error.contains(key),
            "{job_type}: {error}"
        );
    }
}

fn worker_config() -> WorkerConfig {
    WorkerConfig {
        poll_interval: Duration::from_millis(20),
        keep_completed: Some(Duration::from_secs(3600)),
        retry: policy().retry,
        ..WorkerConfig::default()
    }
}

fn start(queue: &Queue, plugins: &PluginDir, config: WorkerConfig) -> WorkerHandle {
    Worker::new(queue.clone(), executor(plugins), config).start()
}

async fn enqueue(queue: &Queue, job_type: &str, tenant: &str, payload: Value) -> i64 {
    let job = NewJob::new(job_type, payload)
        .tenant(tenant)
        .unique(Unique::Off);
    queue.enqueue(queue.pool(), &job).await.unwrap().id
}

#[tokio::test]
async fn manifests_set_memory_attempts_and_tenants_and_errors_name_the_version() {
    let db = TestDb::new().await;
    let queue = db.queue();
    let dir = plugin_dir(
        &["poison", "review-reminder-rust"],
        &[
            ("poison.toml", "memory = \"16MiB\"\nmax_attempts = 2"),
            ("review-reminder-rust.toml", "tenants = [\"acme\"]"),
        ],
    );
    let plugins = open(dir.path(), loader(None)).await;
    let worker = start(&queue, &plugins, worker_config());

    let bomb = enqueue(&queue, "poison", "default", json!({"do": "memory"})).await;
    let job = settled(&queue, bomb, JobState::Failed).await;
    assert_eq!(job.attempt, 2, "max_attempts from the manifest");
    let poison = std::fs::read(test_plugins::path("poison")).unwrap();
    let sha = hex::encode(Sha256::digest(&poison));
    for error in &job.errors {
        assert!(
            error.error.contains("memory limit exceeded") && error.error.contains("16777216"),
            "the manifest's cap: {}",
            error.error
        );
        assert_eq!(error.plugin_sha256.as_deref(), Some(sha.as_str()));
    }

    let payload = json!({"user": "ada", "pull_requests": []});
    let allowed = enqueue(&queue, "review-reminder-rust", "acme", payload.clone()).await;
    let refused = enqueue(&queue, "review-reminder-rust", "globex", payload).await;
    settled(&queue, allowed, JobState::Completed).await;
    let job = settled(&queue, refused, JobState::Failed).await;
    assert_eq!(job.attempt, 1, "refused at once");
    assert!(
        job.errors[0]
            .error
            .contains(r#"tenant "globex" may not run job type "review-reminder-rust""#),
        "{}",
        job.errors[0].error
    );
    worker.shutdown().await;
}

#[tokio::test]
async fn a_manifest_concurrency_limit_holds_across_runners() {
    let db = TestDb::new().await;
    let queue = db.queue();
    let dir = plugin_dir(&["sleep"], &[("sleep.toml", "concurrency = 2")]);
    let plugins = open(dir.path(), loader(None)).await;
    let config = || WorkerConfig {
        owner: runner::worker::default_owner(),
        concurrency: 10,
        ..worker_config()
    };
    let workers = [
        start(&queue, &plugins, config()),
        start(&queue, &plugins, config()),
    ];
    for _ in 0..10 {
        enqueue(&queue, "sleep", "default", json!({"ms": 100})).await;
    }
    let most = std::sync::atomic::AtomicI64::new(0);
    eventually("every sleep job to complete", WAIT, || async {
        let (running, left): (i64, i64) = sqlx::query_as(
            "SELECT count(*) FILTER (WHERE state = 'running'),
                    count(*) FILTER (WHERE state <> 'completed')
               FROM jobrunner.job_status",
        )
        .fetch_one(&db.pool)
        .await
        .unwrap();
        most.fetch_max(running, std::sync::atomic::Ordering::Relaxed);
        (left == 0).then_some(())
    })
    .await;
    let most = most.into_inner();
    assert!(
        most <= 2,
        "{most} sleep jobs ran at once; the manifest allows 2"
    );
    assert_eq!(most, 2, "the limit is reached, not undershot");
    for worker in workers {
        worker.shutdown().await;
    }
}
