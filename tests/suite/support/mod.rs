//! Shared test fixtures: per-test databases, condition waits, runner processes.

pub mod cluster;
pub mod db;
pub mod fleet;
pub mod http_server;
pub mod live;
pub mod pgbouncer;
pub mod plugins;
pub mod process;
pub mod web;

use std::future::Future;
use std::time::Duration;

use runner::client::JobRecord;
use runner::config::FileConfig;
use runner::driver::Driver;
use runner::tenants::Tenants;
use runner::{JobState, Queue, SandboxConfig};

pub use db::TestDb;

/// The runner's side of `queue`, for tests of claims, outcomes and leases.
pub fn driver(queue: &Queue) -> Driver {
    Driver::new(queue.clone())
}

/// Polls `check` until it yields a value, failing the test with `what` after `deadline`.
/// Waits on a condition, never on a guess of how long something takes.
pub async fn eventually<T, F, Fut>(what: &str, deadline: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let give_up = tokio::time::Instant::now() + deadline;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < give_up,
            "timed out after {deadline:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A temporary directory for a private PostgreSQL cluster. As root the cluster runs as user
/// postgres, which must be able to enter it.
pub fn cluster_tempdir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let readable = std::os::unix::fs::PermissionsExt::from_mode(0o755);
    std::fs::set_permissions(dir.path(), readable).unwrap();
    dir
}

/// Publishes the tenant policy written as config-file TOML.
pub async fn publish(queue: &Queue, toml: &str) -> Tenants {
    let file: FileConfig = toml::from_str(toml).expect("tenant policy TOML");
    let tenants = file
        .tenants(&SandboxConfig::default())
        .expect("valid policy")
        .expect("a policy");
    driver(queue)
        .publish_tenants(&tenants, "test")
        .await
        .unwrap();
    tenants
}

/// A job's state, as text.
pub async fn state_of(db: &TestDb, id: i64) -> String {
    sqlx::query_scalar("SELECT state::text FROM jobrunner.jobs WHERE id = $1")
        .bind(id)
        .fetch_one(&db.pool)
        .await
        .expect("job exists")
}

/// Waits up to a minute for job `id` to be in `state`, and returns it.
pub async fn settled(queue: &Queue, id: i64, state: JobState) -> JobRecord {
    eventually(
        &format!("job {id} to be {state}"),
        Duration::from_secs(60),
        || async {
            let job = queue.job(id).await.unwrap();
            (job.state == state).then_some(job)
        },
    )
    .await
}

/// Enqueues `job` and returns its id (or its pending duplicate's).
pub async fn enqueue(db: &TestDb, job: &runner::NewJob) -> i64 {
    let queue = db.queue();
    queue.enqueue(queue.pool(), job).await.unwrap().id
}
