//! The sandbox, no database, through the runner's own load path (artifact cache included) and
//! production sandbox (pooling allocator, a fresh store and instance per call, limits, captured
//! output):
//! - instantiate + call of `echo`, the no-op job;
//! - the reference job in every language (`review-reminder-<language>`): the component's
//!   size, its compile time, its load time from the compiled-artifact cache (a warm restart),
//!   and a fresh instance + call per job.
//!
//! `cargo bench -p runner --bench sandbox [-- CALLS]` (default 50,000 calls of `echo`, and a
//! 25th of that per language)

use std::sync::Arc;
use std::time::{Duration, Instant};

use runner::plugins::{ArtifactCache, Files, Loader, Origin, Policy, Version};
use runner::{Job, Limits, RetryPolicy, Sandbox, SandboxConfig};

const LANGUAGES: [&str; 4] = ["rust", "c", "js", "python"];

/// Loads from the cache per language: the median is reported.
const CACHE_LOADS: usize = 5;

fn main() {
    let calls: usize = std::env::args()
        .skip(1)
        .find_map(|arg| arg.parse().ok())
        .unwrap_or(50_000);
    let bench = Bench::new();

    let echo = bench.load("echo");
    let job = Job::standalone("echo", r#"{"n": 1}"#);
    let stats = bench.calls(&echo, &job, calls);
    println!(
        "echo instantiate+call, {calls} calls on one thread: p50 {:.1} us, p90 {:.1} us, \
         p99 {:.1} us, max {:.1} us; {:.0} calls/s",
        stats.p50, stats.p90, stats.p99, stats.max, stats.per_second
    );

    let calls = (calls / 25).max(10);
    println!(
        "\n{:<8} {:>9} {:>10} {:>11} {:>13} {:>13} {:>9}",
        "language", "size", "compile", "from cache", "call p50", "call p99", "calls/s"
    );
    for language in LANGUAGES {
        let job_type = format!("review-reminder-{language}");
        let size = std::fs::metadata(test_plugins::path(&job_type))
            .unwrap()
            .len();
        let compiled = bench.load(&job_type);
        assert_eq!(compiled.origin, Origin::Compiled);
        let mut from_cache: Vec<Duration> = (0..CACHE_LOADS)
            .map(|_| {
                let version = bench.load(&job_type);
                assert_eq!(version.origin, Origin::Cache);
                version.load_time
            })
            .collect();
        from_cache.sort();
        let job = Job::standalone(&job_type, reminder());
        let stats = bench.calls(&compiled, &job, calls);
        println!(
            "{language:<8} {:>6.1} MB {:>7.0} ms {:>8.1} ms {:>10.1} us {:>10.1} us {:>9.0}",
            size as f64 / 1e6,
            compiled.load_time.as_secs_f64() * 1e3,
            from_cache[CACHE_LOADS / 2].as_secs_f64() * 1e3,
            stats.p50,
            stats.p99,
            stats.per_second,
        );
    }
    println!(
        "(compile: read, hash, compile, cache and check; from cache: the same with the \
         compiled artifact loaded instead, median of {CACHE_LOADS}; call: a fresh instance \
         + run of the reference payload, {calls} sequential calls on one thread)"
    );
}

/// The runner's sandbox and loader, with an artifact cache of its own.
struct Bench {
    runtime: tokio::runtime::Runtime,
    sandbox: Arc<Sandbox>,
    loader: Loader,
    limits: Limits,
    _cache: tempfile::TempDir,
}

/// Microseconds per call, and calls per second.
struct Stats {
    p50: f64,
    p90: f64,
    p99: f64,
    max: f64,
    per_second: f64,
}

impl Bench {
    fn new() -> Bench {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let sandbox = Arc::new(Sandbox::new(SandboxConfig::default()).unwrap());
        let limits = Limits::default();
        let cache_dir = tempfile::tempdir().unwrap();
        let cache = ArtifactCache::open(cache_dir.path(), sandbox.engine()).unwrap();
        let policy = Policy::new(limits.clone(), RetryPolicy::default());
        let loader = Loader::new(Arc::clone(&sandbox), Some(cache), policy);
        Bench {
            runtime,
            sandbox,
            loader,
            limits,
            _cache: cache_dir,
        }
    }

    /// Loads the example plugin `job_type` the way a runner does.
    fn load(&self, job_type: &str) -> Version {
        self.loader
            .load_blocking(job_type, Files::of(test_plugins::dir(), job_type))
            .unwrap_or_else(|e| panic!("{job_type}: {e}"))
    }

    /// `calls` sequential runs of `job` (after a tenth as many to warm up), each in a fresh
    /// instance.
    fn calls(&self, version: &Version, job: &Job, calls: usize) -> Stats {
        let run = || async {
            let run = self.sandbox.run(&version.plugin, job, &self.limits).await;
            assert!(run.result.is_ok(), "{:?}", run.result);
        };
        self.runtime.block_on(async {
            for _ in 0..calls / 10 {
                run().await;
            }
            let mut samples = Vec::with_capacity(calls);
            let started = Instant::now();
            for _ in 0..calls {
                let call = Instant::now();
                run().await;
                samples.push(call.elapsed());
            }
            let total = started.elapsed();
            samples.sort();
            let at = |p: f64| {
                let index = ((samples.len() as f64 * p) as usize).min(samples.len() - 1);
                samples[index].as_secs_f64() * 1e6
            };
            Stats {
                p50: at(0.50),
                p90: at(0.90),
                p99: at(0.99),
                max: at(1.0),
                per_second: calls as f64 / total.as_secs_f64(),
            }
        })
    }
}

/// The reference payload, as in the demo.
fn reminder() -> String {
    serde_json::json!({"user": "ada", "pull_requests": [
        {"title": "Fix login redirect", "url": "https://git.example/pr/12", "age_days": 2},
        {"title": "Bump sqlx", "url": "https://git.example/pr/9", "age_days": 6},
        {"title": "Faster claims", "url": "https://git.example/pr/15", "age_days": 1}]})
    .to_string()
}
