//! A runner started in process, the way `runner run` starts one: [`Runner::builder`].

use std::time::Duration;

use runner::{JobState, Limits, NewJob, RunConfig, Runner, SandboxConfig, WorkerConfig};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::support::{TestDb, eventually, settled};

const WAIT: Duration = Duration::from_secs(20);

fn config(plugins: &std::path::Path) -> RunConfig {
    RunConfig {
        plugins: plugins.to_owned(),
        plugin_cache: plugins.join(".jobrunner-cache"),
        worker: WorkerConfig {
            keep_completed: Some(Duration::from_secs(3600)),
            ..WorkerConfig::default()
        },
        sandbox: SandboxConfig::default(),
        limits: Limits::default(),
        secrets: Default::default(),
        tenants: None,
        web: None,
    }
}

async fn announced(db: &TestDb) -> i64 {
    db.scalar("SELECT count(*) FROM jobrunner.runners").await
}

#[tokio::test]
async fn a_runner_built_in_process_runs_its_plugins_jobs_and_stops_on_its_token() {
    let db = TestDb::empty().await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(test_plugins::path("echo"), dir.path().join("echo.wasm")).unwrap();
    let runner = Runner::builder(config(dir.path()))
        .queue(db.queue())
        .build()
        .await
        .expect("the runner is built: schema migrated, plugins loaded");

    let queue = db.queue();
    let job = NewJob::new("echo", json!({ "hello": "embedded" }));
    let id = queue.enqueue(&db.pool, &job).await.unwrap().id;
    let shutdown = CancellationToken::new();
    let running = tokio::spawn(runner.run(shutdown.clone()));
    let done = settled(&queue, id, JobState::Completed).await;
    assert_eq!(done.result, Some(json!({ "hello": "embedded" })));
    eventually("the runner to announce itself", WAIT, || async {
        (announced(&db).await == 1).then_some(())
    })
    .await;

    shutdown.cancel();
    tokio::time::timeout(WAIT, running)
        .await
        .expect("the runner stops once its token fires")
        .unwrap()
        .unwrap();
    assert_eq!(
        announced(&db).await,
        0,
        "a stopped runner withdraws its announcement"
    );
}

#[tokio::test]
async fn building_a_runner_without_a_queue_or_a_plugin_directory_says_why() {
    let db = TestDb::empty().await;
    let missing = tempfile::tempdir().unwrap().path().join("nowhere");
    let error = Runner::builder(config(&missing))
        .build()
        .await
        .err()
        .expect("no queue");
    assert!(error.to_string().contains("needs a queue"), "{error:#}");

    let error = Runner::builder(config(&missing))
        .queue(db.queue())
        .build()
        .await
        .err()
        .expect("no plugin directory");
    assert!(format!("{error:#}").contains("nowhere"), "{error:#}");
}
