//! The reference job in every language (`review-reminder-<language>`), through the runner's
//! own load path and sandbox, no database: the component's size, its compile time, its load
//! time from the compiled-artifact cache (a warm restart), and a fresh instance + call per job.
//!
//! `cargo bench -p runner --bench languages [-- CALLS]` (default 2000 calls per language)

use std::path::Path;
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
        .unwrap_or(2000);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let sandbox = Arc::new(Sandbox::new(SandboxConfig::default()).unwrap());
    let limits = Limits::default();
    let cache_dir = tempfile::tempdir().unwrap();
    let cache = ArtifactCache::open(cache_dir.path(), sandbox.engine()).unwrap();
    let loader = Loader::new(
        Arc::clone(&sandbox),
        Some(cache),
        Policy::new(limits.clone(), RetryPolicy::default()),
    );

    println!(
        "{:<8} {:>9} {:>10} {:>11} {:>13} {:>13} {:>9}",
        "language", "size", "compile", "from cache", "call p50", "call p99", "calls/s"
    );
    for language in LANGUAGES {
        let job_type = format!("review-reminder-{language}");
        let files = Files::of(test_plugins::dir(), &job_type);
        let size = std::fs::metadata(&files.wasm).unwrap().len();

        let compiled = load(&loader, &job_type, test_plugins::dir());
        assert_eq!(compiled.origin, Origin::Compiled);
        let mut from_cache: Vec<Duration> = (0..CACHE_LOADS)
            .map(|_| {
                let version = load(&loader, &job_type, test_plugins::dir());
                assert_eq!(version.origin, Origin::Cache);
                version.load_time
            })
            .collect();
        from_cache.sort();

        let version = load(&loader, &job_type, test_plugins::dir());
        let job = job(&job_type);
        let (mut samples, total) = runtime.block_on(async {
            for _ in 0..calls / 10 {
                let run = sandbox.run(&version.plugin, &job, &limits).await;
                assert!(run.result.is_ok(), "{:?}", run.result);
            }
            let mut samples = Vec::with_capacity(calls);
            let started = Instant::now();
            for _ in 0..calls {
                let call = Instant::now();
                let run = sandbox.run(&version.plugin, &job, &limits).await;
                samples.push(call.elapsed());
                assert!(run.result.is_ok(), "{:?}", run.result);
            }
            (samples, started.elapsed())
        });
        samples.sort();
        println!(
            "{language:<8} {:>6.1} MB {:>7.0} ms {:>8.1} ms {:>10.1} us {:>10.1} us {:>9.0}",
            size as f64 / 1e6,
            ms(compiled.load_time),
            ms(from_cache[CACHE_LOADS / 2]),
            percentile(&samples, 0.50),
            percentile(&samples, 0.99),
            calls as f64 / total.as_secs_f64(),
        );
    }
    println!(
        "(compile: read, hash, compile, cache and check; from cache: the same with the \
         compiled artifact loaded instead, median of {CACHE_LOADS}; call: a fresh instance \
         + run of the reference payload, {calls} sequential calls on one thread)"
    );
}

fn load(loader: &Loader, job_type: &str, dir: &Path) -> Version {
    loader
        .load_blocking(job_type, Files::of(dir, job_type))
        .unwrap_or_else(|e| panic!("{job_type}: {e}"))
}

/// The reference payload, as in the conformance suite.
fn job(job_type: &str) -> Job {
    let payload = serde_json::json!({"user": "ada", "pull_requests": [
        {"title": "Fix login redirect", "url": "https://git.example/pr/12", "age_days": 2},
        {"title": "Bump sqlx", "url": "https://git.example/pr/9", "age_days": 6},
        {"title": "Faster claims", "url": "https://git.example/pr/15", "age_days": 1}]});
    let now = chrono::Utc::now();
    Job {
        id: 1,
        job_type: job_type.into(),
        tenant: "default".into(),
        payload: payload.to_string(),
        priority: 0,
        attempt: 1,
        max_attempts: 25,
        run_at: now,
        created_at: now,
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    let index = ((sorted.len() as f64 * p) as usize).min(sorted.len() - 1);
    sorted[index].as_secs_f64() * 1e6
}
