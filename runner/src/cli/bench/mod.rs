//! `runner bench`: what users compare job queues by, measured on their own database with the
//! production code paths. Four phases, each printed as it finishes:
//!
//! 1. bulk enqueue of N no-op jobs;
//! 2. drain of those jobs by the runner's worker, every job in a fresh sandbox instance;
//! 3. on the idle queue, sequential jobs timed from the committed enqueue to the sandbox call
//!    and to the committed outcome;
//! 4. the sandbox alone: instantiate + call of the plugin, no database;
//! 5. outgoing HTTP: jobs that each make one GET to a local server, against a native client
//!    making the same requests;
//! 6. a schedule firing every second: how late each tick's job is enqueued.
//!
//! The last line sums it up for machines. The benchmark works in a database of its own,
//! created afresh and dropped at the end.

mod cpu;
mod drain;
mod http;
mod latency;
mod schedules;
mod stats;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::json;

use super::database::Database;
use crate::Queue;
use crate::config::{FileConfig, SandboxSettings, WorkerSettings};
use crate::executor::WasmExecutor;
use crate::job::{Job, NewJob, Unique};
use crate::plugins::PluginDir;
use crate::runner::{RunConfig, load_plugins};
use crate::sandbox::wasm_job_type;
use crate::worker::OPEN_BATCHES;

use stats::Percentiles;

/// The database a run creates afresh and drops, named after the process.
fn bench_database() -> String {
    format!("jobrunner_bench_{}", std::process::id())
}

/// Jobs per enqueue statement.
const ENQUEUE_CHUNK: usize = 10_000;

/// Flags of `runner bench`.
#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// Jobs to enqueue, then drain.
    #[arg(long, default_value_t = 200_000)]
    jobs: usize,
    /// Sequential jobs timed on the idle queue.
    #[arg(long, default_value_t = 1000)]
    latency_samples: usize,
    /// Sandbox-only calls (instantiate + call, no database).
    #[arg(long, default_value_t = 20_000)]
    sandbox_calls: usize,
    /// Jobs that each make one GET to a local server (0: skip the phase).
    #[arg(long, default_value_t = 10_000)]
    http_jobs: usize,
    /// Seconds a schedule fires every second, timing each tick (0: skip the phase).
    #[arg(long, default_value_t = 20)]
    schedule_seconds: u64,
    /// The plugin those jobs run [default: fetch-rust.wasm beside --plugin]
    #[arg(long)]
    http_plugin: Option<PathBuf>,
    /// The plugin every job runs: a no-op component; its file name is the job type [default:
    /// target/plugins/echo.wasm, built by example-plugins/build]
    #[arg(long)]
    plugin: Option<PathBuf>,
    /// Workers draining at once, each with its own claim loop, completer and connections, as
    /// separate runners would have.
    #[arg(long, default_value_t = 1)]
    workers: usize,
    /// Hold a REPEATABLE READ transaction open during the drain, as a forgotten session would:
    /// vacuum can then remove nothing.
    #[arg(long)]
    hold_snapshot: bool,
    #[command(flatten)]
    worker: WorkerSettings,
    #[command(flatten)]
    sandbox: SandboxSettings,
}

/// A checked `runner bench`.
#[derive(Debug)]
pub struct Bench {
    jobs: usize,
    latency_samples: usize,
    sandbox_calls: usize,
    http_jobs: usize,
    http_plugin: PathBuf,
    schedule_seconds: u64,
    workers: usize,
    hold_snapshot: bool,
    job_type: String,
    plugin: PathBuf,
    run: RunConfig,
}

impl BenchArgs {
    /// Checks the flags (over the config file) before anything runs.
    pub fn resolve(self, file: &FileConfig) -> anyhow::Result<Bench> {
        let plugin = self
            .plugin
            .unwrap_or_else(|| Path::new("target/plugins/echo.wasm").to_owned());
        let job_type = wasm_job_type(&plugin)?;
        anyhow::ensure!(
            plugin.is_file(),
            "no plugin at {}: build the example plugins with `example-plugins/build`, or pass \
             --plugin FILE",
            plugin.display()
        );
        anyhow::ensure!(self.workers >= 1, "--workers must be at least 1");
        let http_plugin = self
            .http_plugin
            .unwrap_or_else(|| http::default_plugin(&plugin));
        anyhow::ensure!(
            self.http_jobs == 0 || http_plugin.is_file(),
            "no plugin at {} for the HTTP phase: build the example plugins, pass --http-plugin \
             FILE, or --http-jobs 0",
            http_plugin.display()
        );
        let cache = plugin
            .parent()
            .unwrap_or(Path::new("."))
            .join(".jobrunner-cache");
        let run = super::run::RunArgs {
            plugins: None,
            plugin_cache: Some(cache),
            worker: self.worker,
            sandbox: self.sandbox,
            web: crate::web::WebSettings::default(),
        }
        .resolve(file)?;
        Ok(Bench {
            jobs: self.jobs.max(1),
            latency_samples: self.latency_samples,
            sandbox_calls: self.sandbox_calls,
            http_jobs: self.http_jobs,
            http_plugin,
            schedule_seconds: self.schedule_seconds,
            workers: self.workers,
            hold_snapshot: self.hold_snapshot,
            job_type,
            plugin,
            run,
        })
    }
}

/// The figures of the summary line.
#[derive(Debug, Default)]
struct Summary {
    enqueue_per_s: f64,
    drain_per_s: f64,
    start: Percentiles,
    done: Percentiles,
    call: Percentiles,
    http: http::Rates,
    schedule: schedules::Lateness,
}

/// Runs every phase and prints the summary line.
pub async fn bench(db: &Database, bench: Bench) -> anyhow::Result<ExitCode> {
    // The plugin alone in a directory of its own: the runner's load path, cache included.
    let staged = tempfile::tempdir().context("cannot create a temporary plugin directory")?;
    let staged_plugin = staged.path().join(format!("{}.wasm", bench.job_type));
    std::fs::copy(&bench.plugin, &staged_plugin)
        .with_context(|| format!("cannot copy {}", bench.plugin.display()))?;
    let mut run = RunConfig {
        plugins: staged.path().to_owned(),
        ..bench.run.clone()
    };
    let server = if bench.http_jobs > 0 {
        let server = http::Server::start()?;
        server.stage(&bench.http_plugin, staged.path())?;
        run.sandbox
            .http
            .allow_networks
            .push("127.0.0.1/32".parse()?);
        Some(server)
    } else {
        None
    };
    let (dir, _) = load_plugins(&run).await?;
    anyhow::ensure!(
        dir.registry().get(&bench.job_type).is_some(),
        "{} did not load (see the log above)",
        bench.plugin.display()
    );
    // As many as separate runners would have: the claims' and the batch transactions' own.
    let connections = (bench.workers * (OPEN_BATCHES + 6)) as u32;
    let database = bench_database();
    let pool = db.fresh_database(&database, connections).await?;
    let queue = Queue::new(pool);
    let result = async {
        queue.migrate().await?;
        print_header(&bench, &queue, &database).await?;
        phases(&bench, &queue, &dir, &run, server.as_ref()).await
    }
    .await;
    queue.pool().close().await;
    db.drop_database(&database).await?;
    let summary = result?;
    println!(
        "bench enqueue_jobs_per_s={:.0} drain_jobs_per_s={:.0} latency_start_p50_ms={:.3} \
         latency_start_p99_ms={:.3} latency_done_p50_ms={:.3} latency_done_p99_ms={:.3} \
         instantiate_call_p50_us={:.1} http_jobs_per_s={:.0} http_native_per_s={:.0} \
         schedule_late_p50_ms={:.1} schedule_late_p99_ms={:.1}",
        summary.enqueue_per_s,
        summary.drain_per_s,
        summary.start.p50 * 1e3,
        summary.start.p99 * 1e3,
        summary.done.p50 * 1e3,
        summary.done.p99 * 1e3,
        summary.call.p50 * 1e6,
        summary.http.jobs_per_s,
        summary.http.native_per_s,
        summary.schedule.late.p50 * 1e3,
        summary.schedule.late.p99 * 1e3,
    );
    Ok(ExitCode::SUCCESS)
}

async fn phases(
    bench: &Bench,
    queue: &Queue,
    dir: &Arc<PluginDir>,
    run: &RunConfig,
    server: Option<&http::Server>,
) -> anyhow::Result<Summary> {
    let executor = || WasmExecutor::new(Arc::clone(dir.loader().sandbox()), dir.registry().clone());
    let mut summary = Summary {
        enqueue_per_s: enqueue(queue, &bench.job_type, bench.jobs).await?,
        ..Summary::default()
    };
    summary.drain_per_s = drain::run(bench, queue, executor, &run.worker).await?;
    (summary.start, summary.done) = latency::run(bench, queue, executor(), &run.worker).await?;
    summary.call = sandbox_calls(bench, dir, run).await?;
    if let Some(server) = server {
        summary.http = http::run(bench.http_jobs, queue, executor(), &run.worker, server).await?;
    }
    if bench.schedule_seconds > 0 {
        summary.schedule =
            schedules::run(bench.schedule_seconds, queue, executor(), &run.worker).await?;
    }
    Ok(summary)
}

async fn print_header(bench: &Bench, queue: &Queue, database: &str) -> anyhow::Result<()> {
    let server: String = sqlx::query_scalar("SHOW server_version")
        .fetch_one(queue.db())
        .await?;
    let config = &bench.run.worker;
    println!(
        "runner bench: {} jobs of {:?} ({}), {} worker(s) x concurrency {}, batch {}, \
         {} cores, PostgreSQL {server}, database {database}",
        bench.jobs,
        bench.job_type,
        bench.plugin.display(),
        bench.workers,
        config.concurrency,
        config.batch_size,
        std::thread::available_parallelism().map_or(0, usize::from),
    );
    Ok(())
}

/// The payload of job `n`: small, distinct, no-op.
fn payload(n: usize) -> serde_json::Value {
    json!({ "n": n })
}

/// Phase 1: enqueues `jobs` jobs in statements of [`ENQUEUE_CHUNK`], on one connection per
/// core at once, as concurrent producers would; returns jobs/s.
async fn enqueue(queue: &Queue, job_type: &str, jobs: usize) -> anyhow::Result<f64> {
    let producers = std::thread::available_parallelism().map_or(2, usize::from);
    let chunks: Vec<usize> = (0..jobs).step_by(ENQUEUE_CHUNK).collect();
    let started = Instant::now();
    let tasks: Vec<_> = (0..producers)
        .map(|producer| {
            let (queue, job_type) = (queue.clone(), job_type.to_owned());
            let mine: Vec<usize> = chunks
                .iter()
                .copied()
                .skip(producer)
                .step_by(producers)
                .collect();
            tokio::spawn(async move {
                for first in mine {
                    let chunk: Vec<NewJob> = (first..jobs.min(first + ENQUEUE_CHUNK))
                        .map(|n| NewJob::new(&job_type, payload(n)).unique(Unique::Off))
                        .collect();
                    queue.enqueue_many(queue.db(), &chunk).await?;
                }
                anyhow::Ok(())
            })
        })
        .collect();
    for task in tasks {
        task.await??;
    }
    let elapsed = started.elapsed();
    let rate = jobs as f64 / elapsed.as_secs_f64();
    println!(
        "1. enqueue  {jobs} jobs in {} statement(s) on {producers} connections: {:.2} s, \
         {rate:.0} jobs/s",
        chunks.len(),
        elapsed.as_secs_f64()
    );
    Ok(rate)
}

/// Phase 4: instantiate + call of the plugin, no database: on one task (the latency), then
/// on one task per core (the throughput a busy runner gets).
async fn sandbox_calls(
    bench: &Bench,
    dir: &Arc<PluginDir>,
    run: &RunConfig,
) -> anyhow::Result<Percentiles> {
    let version = dir
        .registry()
        .get(&bench.job_type)
        .context("the plugin was unloaded")?;
    let calls = bench.sandbox_calls.max(1);
    let caller = Caller {
        sandbox: Arc::clone(dir.loader().sandbox()),
        version,
        job: Job::standalone(&bench.job_type, payload(0).to_string()),
        limits: run.limits.clone(),
    };
    caller.calls(calls / 10).await?;
    let (one, elapsed) = caller.calls(calls).await?;
    let stats = Percentiles::of(one);
    println!(
        "4. sandbox  instantiate+call, {calls} calls on one task: {}; {:.0} calls/s",
        stats.display_us(),
        calls as f64 / elapsed.as_secs_f64()
    );
    let tasks = std::thread::available_parallelism().map_or(2, usize::from);
    let caller = Arc::new(caller);
    let started = Instant::now();
    let spread: Vec<_> = (0..tasks)
        .map(|_| {
            let caller = Arc::clone(&caller);
            tokio::spawn(async move { caller.calls(calls / tasks).await })
        })
        .collect();
    let mut all = Vec::with_capacity(calls);
    for task in spread {
        all.extend(task.await??.0);
    }
    let elapsed = started.elapsed();
    println!(
        "           the same on {tasks} tasks: {}; {:.0} calls/s",
        Percentiles::of(all).display_us(),
        (calls / tasks * tasks) as f64 / elapsed.as_secs_f64()
    );
    Ok(stats)
}

/// Calls a plugin in fresh instances, timing each call.
struct Caller {
    sandbox: Arc<crate::sandbox::Sandbox>,
    version: Arc<crate::plugins::Version>,
    job: Job,
    limits: crate::sandbox::Limits,
}

impl Caller {
    /// `calls` sequential calls: each one's time, and the time of all.
    async fn calls(&self, calls: usize) -> anyhow::Result<(Vec<Duration>, Duration)> {
        let mut samples = Vec::with_capacity(calls);
        let all = Instant::now();
        for _ in 0..calls {
            let started = Instant::now();
            let run = self
                .sandbox
                .run(&self.version.plugin, &self.job, &self.limits);
            let result = run.await.result;
            samples.push(started.elapsed());
            result.map_err(|e| anyhow::anyhow!("the plugin failed: {e}"))?;
        }
        Ok((samples, all.elapsed()))
    }
}
