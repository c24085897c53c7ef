//! The live plugin directory, no database: how long a runner takes to be ready with every
//! example plugin, cold (empty artifact cache) and warm; and how long from the rename of a
//! new version into a watched directory to the first job completed on it.
//!
//! `cargo bench -p runner --bench plugins [-- ROUNDS]`

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use runner::plugins::{self, ArtifactCache, Loader, PluginDir, Policy};
use runner::{Executor, Job, Limits, RetryPolicy, Sandbox, SandboxConfig, WasmExecutor};

fn main() {
    let rounds: usize = std::env::args()
        .skip(1)
        .find_map(|arg| arg.parse().ok())
        .unwrap_or(10);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let examples = ["echo", "flaky", "poison", "review-reminder-rust", "sleep"];
        for example in examples {
            let to = dir.path().join(format!("{example}.wasm"));
            std::fs::copy(test_plugins::path(example), to).unwrap();
        }
        let (mut cold, mut warm) = (Vec::new(), Vec::new());
        for _ in 0..rounds {
            let cache = tempfile::tempdir().unwrap();
            cold.push(ready(dir.path(), cache.path()).await.0);
            warm.push(ready(dir.path(), cache.path()).await.0);
        }
        println!(
            "start-to-ready, {} plugins: cold p50 {:.1} ms, warm p50 {:.1} ms",
            examples.len(),
            p50(&mut cold),
            p50(&mut warm)
        );

        let cache = tempfile::tempdir().unwrap();
        let (_, plugins) = ready(dir.path(), cache.path()).await;
        let _watching = plugins::watch(Arc::clone(&plugins)).unwrap();
        let executor = WasmExecutor::new(
            Arc::clone(plugins.loader().sandbox()),
            Arc::clone(plugins.registry()),
        );
        let versions =
            ["echo", "review-reminder-rust"].map(|e| std::fs::read(test_plugins::path(e)).unwrap());
        let mut swaps = Vec::new();
        for round in 0..rounds {
            // A fresh version each round (a distinct custom section), so every swap compiles.
            let mut wasm = versions[round % 2].clone();
            wasm.extend_from_slice(&[0, 7, 5, b'r', b'o', b'u', b'n', b'd', round as u8]);
            swaps.push(swap(dir.path(), &executor, &wasm).await);
        }
        let median = p50(&mut swaps);
        println!(
            "rename to first job completed on the new version (compiled on the way): \
             p50 {median:.1} ms, max {:.1} ms",
            swaps[swaps.len() - 1]
        );
    });
}

/// Loads the directory with a fresh engine on `cache`: (milliseconds, the loaded directory).
async fn ready(dir: &Path, cache: &Path) -> (f64, Arc<PluginDir>) {
    let started = Instant::now();
    let sandbox = Arc::new(Sandbox::new(SandboxConfig::default()).unwrap());
    let cache = ArtifactCache::open(cache, sandbox.engine()).unwrap();
    let defaults = Policy::new(Limits::default(), RetryPolicy::default());
    let loader = Arc::new(Loader::new(sandbox, Some(cache), defaults));
    let plugins = PluginDir::new(dir.to_owned(), loader);
    plugins.load_all().await.unwrap();
    (ms(started.elapsed()), plugins)
}

/// Renames `wasm` in as `t.wasm` and runs `t` jobs until one runs on it: milliseconds.
async fn swap(dir: &Path, executor: &WasmExecutor, wasm: &[u8]) -> f64 {
    use sha2::Digest;
    let sha = hex::encode(sha2::Sha256::digest(wasm));
    let temp = dir.join(".t.wasm.tmp");
    std::fs::write(&temp, wasm).unwrap();
    let started = Instant::now();
    std::fs::rename(&temp, dir.join("t.wasm")).unwrap();
    loop {
        let run = executor.execute(&job()).await;
        if run.plugin_sha256.as_deref() == Some(sha.as_str()) {
            assert!(run.result.is_ok(), "{:?}", run.result);
            return ms(started.elapsed());
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the swap never happened"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

fn job() -> Job {
    Job::standalone("t", r#"{"user": "ada", "pull_requests": []}"#)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn p50(samples: &mut [f64]) -> f64 {
    samples.sort_by(f64::total_cmp);
    samples[samples.len() / 2]
}
