//! Claiming across tenants, on the real database with a no-op executor (the queue's cost, not
//! the sandbox's): drain throughput with one tenant and with ten, one runner and two; and how
//! long a small tenant waits behind another tenant's backlog.
//!
//! `cargo bench -p runner --bench tenants [-- JOBS]` (default 50000). Uses `DATABASE_URL`, or
//! the local server; each run creates and drops a database of its own.

use std::time::{Duration, Instant};

use runner::{Handlers, NewJob, Queue, Unique, Worker, WorkerConfig};
use serde_json::json;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, PgPool};

fn main() {
    let jobs: usize = std::env::args()
        .skip(1)
        .find_map(|arg| arg.parse().ok())
        .unwrap_or(50_000);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        for (tenants, runners) in [(1, 1), (10, 1), (1, 2), (10, 2)] {
            let db = BenchDb::create().await;
            let rate = drain(&db.queue(), jobs, tenants, runners).await;
            println!(
                "drain {jobs} no-op jobs, {tenants:>2} tenant(s), {runners} runner(s): \
                 {rate:>7.0} jobs/s"
            );
            db.drop().await;
        }
        let db = BenchDb::create().await;
        let (waited, ahead) = small_behind_backlog(&db.queue(), jobs).await;
        println!(
            "tenant b's 100 jobs behind tenant a's {jobs}, 2 runners: all done in {:.1} ms, \
             while {ahead} of a's started",
            waited.as_secs_f64() * 1e3
        );
        db.drop().await;
    });
}

fn config() -> WorkerConfig {
    WorkerConfig {
        concurrency: 200,
        batch_size: 200,
        ..WorkerConfig::default()
    }
}

fn noop() -> Handlers {
    Handlers::new().on("noop", |_| async { Ok(None) })
}

/// Enqueues `jobs` no-op jobs spread over `tenants`, then times `runners` workers draining them.
async fn drain(queue: &Queue, jobs: usize, tenants: usize, runners: usize) -> f64 {
    enqueue(queue, jobs, |i| format!("t{}", i % tenants)).await;
    let started = Instant::now();
    let workers: Vec<_> = (0..runners)
        .map(|_| Worker::new(queue.clone(), noop(), config()).start())
        .collect();
    wait_for(queue, "SELECT NOT EXISTS (SELECT FROM jobrunner.jobs)").await;
    let rate = jobs as f64 / started.elapsed().as_secs_f64();
    for worker in workers {
        worker.shutdown().await;
    }
    rate
}

/// Tenant a's backlog is being worked when tenant b enqueues 100 jobs: how long from the
/// enqueue until b's are done, and how many of a's completed meanwhile.
async fn small_behind_backlog(queue: &Queue, jobs: usize) -> (Duration, i64) {
    enqueue(queue, jobs, |_| "a".into()).await;
    let workers: Vec<_> = (0..2)
        .map(|_| Worker::new(queue.clone(), noop(), config()).start())
        .collect();
    wait_for(
        queue,
        "SELECT EXISTS (SELECT FROM jobrunner.jobs WHERE state = 'running')",
    )
    .await;
    enqueue(queue, 100, |_| "b".into()).await;
    let left = remaining(queue.pool(), "a").await;
    let started = Instant::now();
    wait_for(
        queue,
        "SELECT NOT EXISTS (SELECT FROM jobrunner.jobs
                             WHERE tenant = 'b' AND state IN ('available', 'running'))",
    )
    .await;
    let waited = started.elapsed();
    let ahead = left - remaining(queue.pool(), "a").await;
    for worker in workers {
        worker.shutdown().await;
    }
    (waited, ahead)
}

async fn enqueue(queue: &Queue, jobs: usize, tenant: impl Fn(usize) -> String) {
    let all: Vec<NewJob> = (0..jobs)
        .map(|i| {
            NewJob::new("noop", json!({ "i": i }))
                .tenant(tenant(i))
                .unique(Unique::Off)
        })
        .collect();
    for chunk in all.chunks(5000) {
        queue.enqueue_many(queue.pool(), chunk).await.unwrap();
    }
}

async fn remaining(pool: &PgPool, tenant: &str) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM jobrunner.jobs WHERE tenant = $1")
        .bind(tenant)
        .fetch_one(pool)
        .await
        .unwrap()
}

async fn wait_for(queue: &Queue, condition: &'static str) {
    let give_up = Instant::now() + Duration::from_secs(600);
    while !sqlx::query_scalar::<_, bool>(condition)
        .fetch_one(queue.pool())
        .await
        .unwrap()
    {
        assert!(Instant::now() < give_up, "timed out: {condition}");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// A database of the benchmark's own.
struct BenchDb {
    admin: PgConnectOptions,
    name: String,
    pool: PgPool,
}

impl BenchDb {
    async fn create() -> BenchDb {
        let url = std::env::var("DATABASE_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
        let admin: PgConnectOptions = url.parse().expect("DATABASE_URL must be a URL");
        let name = format!("jobrunner_bench_{}", std::process::id());
        let mut conn = admin.connect().await.expect("cannot reach the database");
        for statement in [
            format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
            format!("CREATE DATABASE {name}"),
        ] {
            sqlx::query(sqlx::AssertSqlSafe(statement))
                .execute(&mut conn)
                .await
                .unwrap();
        }
        let pool = PgPoolOptions::new()
            .max_connections(20)
            .connect_with(admin.clone().database(&name))
            .await
            .unwrap();
        Queue::new(pool.clone()).migrate().await.unwrap();
        BenchDb { admin, name, pool }
    }

    fn queue(&self) -> Queue {
        Queue::new(self.pool.clone())
    }

    async fn drop(self) {
        self.pool.close().await;
        let mut conn = self.admin.connect().await.unwrap();
        let statement = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name);
        sqlx::query(sqlx::AssertSqlSafe(statement))
            .execute(&mut conn)
            .await
            .unwrap();
    }
}
