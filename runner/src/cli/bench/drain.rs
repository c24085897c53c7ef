//! Phase 2: the worker drains the enqueued jobs, each in a fresh sandbox instance, with a
//! progress line every second.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use sqlx::{Connection, PgConnection};
use tokio::sync::Notify;
use tokio::sync::broadcast::error::RecvError;

use super::Bench;
use super::cpu::CpuTimes;
use crate::Queue;
use crate::executor::WasmExecutor;
use crate::worker::{BatchStats, Worker, WorkerConfig, WorkerHandle};

/// Drains the queue with `bench.workers` workers; returns jobs/s.
pub(super) async fn run(
    bench: &Bench,
    queue: &Queue,
    executor: impl Fn() -> WasmExecutor,
    config: &WorkerConfig,
) -> anyhow::Result<f64> {
    let snapshot = if bench.hold_snapshot {
        Some(hold_snapshot(queue).await?)
    } else {
        None
    };
    let rss_before = rss_kib();
    let cpu_before = CpuTimes::now(queue).await;
    let started = Instant::now();
    let workers: Vec<WorkerHandle> = (0..bench.workers)
        .map(|i| {
            let config = WorkerConfig {
                owner: format!("{}:{i}", config.owner),
                ..config.clone()
            };
            Worker::new(queue.clone(), executor(), config).start()
        })
        .collect();
    let recorded = Arc::new(Recorded::default());
    let counters: Vec<_> = workers
        .iter()
        .map(|w| tokio::spawn(count(w.subscribe_recorded(), Arc::clone(&recorded))))
        .collect();
    let mut peak_rss = rss_before;
    let mut last_done = 0;
    while !recorded.reached(bench.jobs, Duration::from_secs(1)).await {
        let done = recorded.jobs.load(Ordering::Relaxed);
        let rss = rss_kib();
        peak_rss = peak_rss.max(rss);
        eprintln!(
            "   drained {done}/{} after {:.1} s ({:.0} jobs/s), runner RSS {} MiB",
            bench.jobs,
            started.elapsed().as_secs_f64(),
            done as f64 / started.elapsed().as_secs_f64(),
            rss / 1024
        );
        // Outcomes a counter missed (it fell behind), or that were never recorded as
        // completions (a lost lease, a retry): the database has the last word.
        if done == last_done && drained(queue).await? {
            break;
        }
        last_done = done;
    }
    let elapsed = started.elapsed();
    let cpu = CpuTimes::now(queue)
        .await
        .per_job_since(&cpu_before, bench.jobs);
    let mut batches = BatchStats::default();
    for worker in workers {
        batches += worker.batch_stats();
        worker.shutdown().await;
    }
    counters.into_iter().for_each(|c| c.abort());
    let bloat = match snapshot {
        Some(snapshot) => format!(", {}", release_snapshot(snapshot, queue).await?),
        None => String::new(),
    };
    anyhow::ensure!(drained(queue).await?, "jobs are left over after the drain");
    let rate = bench.jobs as f64 / elapsed.as_secs_f64();
    println!(
        "2. drain    {} jobs, each in a fresh sandbox: {:.2} s, {rate:.0} jobs/s (runner RSS \
         {} MiB before, peak {} MiB{bloat})\n           CPU per job: {cpu}\n           \
         batch transactions: {} committed, {} of them within the bound, {} jobs went on under \
         leases, {} lost",
        bench.jobs,
        elapsed.as_secs_f64(),
        rss_before / 1024,
        peak_rss.max(rss_kib()) / 1024,
        batches.committed,
        batches.within_bound,
        batches.leased,
        batches.lost,
    );
    Ok(rate)
}

/// Outcomes recorded so far, by all workers.
#[derive(Default)]
struct Recorded {
    jobs: AtomicUsize,
    changed: Notify,
}

impl Recorded {
    /// Whether `jobs` outcomes are recorded within `wait`.
    async fn reached(&self, jobs: usize, wait: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let changed = self.changed.notified();
            if self.jobs.load(Ordering::Relaxed) >= jobs {
                return true;
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                return false;
            }
        }
    }
}

async fn count(mut batches: tokio::sync::broadcast::Receiver<Arc<[i64]>>, recorded: Arc<Recorded>) {
    loop {
        match batches.recv().await {
            Ok(ids) => {
                recorded.jobs.fetch_add(ids.len(), Ordering::Relaxed);
            }
            Err(RecvError::Lagged(_)) => {}
            Err(RecvError::Closed) => return,
        }
        recorded.changed.notify_waiters();
    }
}

async fn drained(queue: &Queue) -> anyhow::Result<bool> {
    Ok(sqlx::query_scalar(
        "SELECT NOT EXISTS (SELECT FROM jobrunner.jobs WHERE state IN ('available', 'running'))",
    )
    .fetch_one(queue.db())
    .await?)
}

/// A transaction that keeps its snapshot, and so every row version it might see, alive.
async fn hold_snapshot(queue: &Queue) -> anyhow::Result<PgConnection> {
    let options = queue.pool().connect_options();
    let mut conn = PgConnection::connect_with(&options).await?;
    sqlx::raw_sql("BEGIN ISOLATION LEVEL REPEATABLE READ; SELECT count(*) FROM jobrunner.jobs")
        .execute(&mut conn)
        .await
        .context("cannot open the snapshot-holding transaction")?;
    Ok(conn)
}

/// Ends the held transaction; says how big the jobs table grew meanwhile.
async fn release_snapshot(mut conn: PgConnection, queue: &Queue) -> anyhow::Result<String> {
    let size: i64 = sqlx::query_scalar("SELECT pg_total_relation_size('jobrunner.jobs')")
        .fetch_one(queue.db())
        .await?;
    sqlx::raw_sql("ROLLBACK").execute(&mut conn).await?;
    conn.close().await?;
    Ok(format!(
        "a snapshot held throughout; jobs table and indexes {} MiB at the end",
        size >> 20
    ))
}

/// This process's resident memory, in KiB (0 where /proc is missing).
fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}
