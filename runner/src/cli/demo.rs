//! `runner demo`: starts from nothing and shows jobs running.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use serde_json::json;
use sqlx::PgPool;
use sqlx::postgres::PgConnectOptions;
use sqlx::postgres::PgPoolOptions;

use super::database::Database;
use super::jobs::print_list;
use super::run::Signals;
use crate::config::WorkerSettings;
use crate::demo::handlers;
use crate::job::NewJob;
use crate::queue::Queue;
use crate::queue::admin::JobFilter;
use crate::worker::{Worker, WorkerConfig};

/// The database the demo creates afresh on every run.
const DEMO_DATABASE: &str = "jobrunner_demo";

/// Demo defaults that make retries show up within a second, and keep completed jobs so their
/// results can be shown. Flags and the config file still win.
pub fn settings(flags: WorkerSettings) -> WorkerSettings {
    flags.or(WorkerSettings {
        backoff_base: Some(Duration::from_millis(250)),
        backoff_cap: Some(Duration::from_secs(2)),
        keep_completed: Some(Duration::from_secs(3600)),
        ..WorkerSettings::default()
    })
}

/// Runs the demo.
pub async fn demo(db: &Database, config: WorkerConfig) -> anyhow::Result<ExitCode> {
    let mut signals = Signals::new()?;
    let pool = fresh_database(db).await?;
    let queue = Queue::new(pool.clone());
    queue.migrate().await?;
    let url = demo_url(db.options());
    println!("== 1. Fresh database {DEMO_DATABASE}, schema `jobrunner` migrated");

    println!("\n== 2. Enqueue jobs through every door");
    enqueue_jobs(&queue).await?;

    println!("\n== 3. A runner works the queue (one log line per attempt, on stderr)");
    let worker = Worker::new(queue.clone(), handlers(), config).start();
    let finished = tokio::select! {
        result = wait_until_settled(&pool) => { result?; true }
        signal = signals.next() => { println!("{signal}: stopping early"); false }
    };
    worker.shutdown().await;

    println!("\n== 4. Where every job ended up");
    let jobs = queue
        .list_jobs(&JobFilter {
            limit: 100,
            ..JobFilter::default()
        })
        .await?;
    print_list(&jobs, &crate::retry::RetryPolicy::default());
    if db.is_private() {
        println!("\nThe private cluster stops now; its data stays for the next command.");
    } else {
        println!("\nLook closer:  runner --database-url '{url}' jobs show <ID>");
    }
    pool.close().await;
    Ok(if finished {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// A URL for the demo database, to paste into other commands (password left out).
fn demo_url(options: &PgConnectOptions) -> String {
    // A socket directory goes in the host part, percent-encoded.
    let host = options.get_host().replace('/', "%2F");
    format!(
        "postgres://{}@{host}:{}/{DEMO_DATABASE}",
        options.get_username(),
        options.get_port()
    )
}

/// Drops and recreates the demo database on the same server, and connects to it.
async fn fresh_database(db: &Database) -> anyhow::Result<PgPool> {
    let admin = PgPoolOptions::new()
        .max_connections(1)
        .connect_with(db.options().clone())
        .await?;
    for statement in [
        format!("DROP DATABASE IF EXISTS {DEMO_DATABASE} WITH (FORCE)"),
        format!("CREATE DATABASE {DEMO_DATABASE}"),
    ] {
        sqlx::query(sqlx::AssertSqlSafe(statement))
            .execute(&admin)
            .await
            .with_context(|| format!("the demo needs to (re)create database {DEMO_DATABASE}"))?;
    }
    admin.close().await;
    Ok(PgPoolOptions::new()
        .max_connections(10)
        .connect_with(db.options().clone().database(DEMO_DATABASE))
        .await?)
}

async fn enqueue_jobs(queue: &Queue) -> anyhow::Result<()> {
    let greetings: Vec<NewJob> = ["hello", "bonjour", "hola", "hallo", "ciao"]
        .iter()
        .map(|word| NewJob::new("demo.echo", json!({ "greeting": word })))
        .collect();
    let ids = queue.enqueue_many(queue.pool(), &greetings).await?;
    let ids: Vec<i64> = ids.iter().map(|e| e.id).collect();
    println!("Rust, bulk:        5 demo.echo jobs in one statement -> ids {ids:?}");

    let again = queue.enqueue(queue.pool(), &greetings[0]).await?;
    println!(
        "Rust, duplicate:   the first greeting again -> id {} (inserted: {}; same job pending)",
        again.id, again.inserted
    );

    let mut tx = queue.pool().begin().await?;
    let sleepy = queue
        .enqueue(&mut *tx, &NewJob::new("demo.sleep", json!({ "ms": 700 })))
        .await?;
    let urgent = NewJob::new("demo.echo", json!({ "urgent": true })).priority(-10);
    let urgent = queue.enqueue(&mut *tx, &urgent).await?;
    tx.commit().await?;
    println!(
        "Rust, transaction: demo.sleep -> id {}, urgent demo.echo (priority -10) -> id {}, \
         committed together",
        sleepy.id, urgent.id
    );

    let mut tx = queue.pool().begin().await?;
    queue
        .enqueue(
            &mut *tx,
            &NewJob::new("demo.echo", json!({ "never": "seen" })),
        )
        .await?;
    tx.rollback().await?;
    println!("Rust, rollback:    a job enqueued in a rolled-back transaction leaves nothing");

    let flaky: i64 = sqlx::query_scalar(
        "SELECT jobrunner.enqueue('demo.flaky', '{\"fail_times\": 2}', tenant => 'acme')",
    )
    .fetch_one(queue.pool())
    .await?;
    println!(
        "SQL:               demo.flaky for tenant acme, fails twice then succeeds -> id {flaky}"
    );
    let doomed: i64 = sqlx::query_scalar(
        "SELECT jobrunner.enqueue('demo.fail', '{\"reason\": \"card declined\"}', \
         max_attempts => 3)",
    )
    .fetch_one(queue.pool())
    .await?;
    println!("SQL:               demo.fail, a permanent error -> id {doomed}");

    let later =
        NewJob::new("demo.echo", json!({ "scheduled": "3s later" })).delay(Duration::from_secs(3));
    let later = queue.enqueue(queue.pool(), &later).await?;
    println!("Rust, scheduled:   demo.echo due in 3 s -> id {}", later.id);
    Ok(())
}

/// Waits until no job is available or running, for at most a minute.
async fn wait_until_settled(pool: &PgPool) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let pending: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM jobrunner.jobs WHERE state IN ('available', 'running')",
        )
        .fetch_one(pool)
        .await?;
        if pending == 0 {
            return Ok(());
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "{pending} jobs still pending after a minute"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
