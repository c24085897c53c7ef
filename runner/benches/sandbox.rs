//! Instantiate + call of the `echo` plugin with the production sandbox (pooling allocator, a
//! fresh store and instance per call, limits and captured output), no database.
//!
//! `cargo bench -p runner --bench sandbox [-- CALLS]`

use std::time::{Duration, Instant};

use runner::{Job, Limits, Sandbox, SandboxConfig};

fn main() {
    let calls: usize = std::env::args()
        .skip(1)
        .find_map(|arg| arg.parse().ok())
        .unwrap_or(50_000);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let sandbox = Sandbox::new(SandboxConfig::default()).unwrap();
    let plugin = sandbox.load(&test_plugins::path("echo")).unwrap();
    let limits = Limits::default();
    let now = chrono::Utc::now();
    let job = Job {
        id: 1,
        job_type: "echo".into(),
        tenant: "default".into(),
        payload: r#"{"n": 1}"#.into(),
        priority: 0,
        attempt: 1,
        max_attempts: 25,
        run_at: now,
        created_at: now,
    };

    let mut samples = Vec::with_capacity(calls);
    runtime.block_on(async {
        for _ in 0..calls / 10 {
            let run = sandbox.run(&plugin, &job, &limits).await;
            assert!(run.result.is_ok(), "{:?}", run.result);
        }
        let started = Instant::now();
        for _ in 0..calls {
            let call = Instant::now();
            let run = sandbox.run(&plugin, &job, &limits).await;
            samples.push(call.elapsed());
            assert!(run.result.is_ok(), "{:?}", run.result);
        }
        let total = started.elapsed();
        samples.sort();
        let pct =
            |p: f64| micros(samples[((samples.len() as f64 * p) as usize).min(samples.len() - 1)]);
        println!(
            "echo instantiate+call, {calls} calls on one thread: p50 {:.1} us, p90 {:.1} us, \
             p99 {:.1} us, max {:.1} us; {:.0} calls/s",
            pct(0.50),
            pct(0.90),
            pct(0.99),
            micros(*samples.last().unwrap()),
            calls as f64 / total.as_secs_f64()
        );
    });
}

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}
