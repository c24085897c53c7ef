//! Phase 3: on an idle queue, one job at a time, from the enqueue call to the sandbox call
//! (start) and to the outcome's commit (done).

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::sync::mpsc;

use super::stats::Percentiles;
use super::{Bench, payload};
use crate::Queue;
use crate::driver::ClaimType;
use crate::executor::{Execution, Executor, WasmExecutor};
use crate::job::{Job, NewJob, Unique};
use crate::worker::{Worker, WorkerConfig};

/// Unmeasured jobs first: connections, caches and the instance pool warm up.
const WARM_UP: usize = 20;

/// How long one sample may take before the benchmark gives up.
const SAMPLE_DEADLINE: Duration = Duration::from_secs(10);

/// A [`WasmExecutor`] that says when each job reaches it.
struct Probe {
    inner: WasmExecutor,
    started: mpsc::UnboundedSender<(i64, Instant)>,
}

impl Executor for Probe {
    fn job_types(&self) -> Arc<[ClaimType]> {
        self.inner.job_types()
    }

    async fn execute(&self, job: &Job) -> Execution {
        let _ = self.started.send((job.id, Instant::now()));
        self.inner.execute(job).await
    }
}

/// Times `bench.latency_samples` jobs; returns the start and done percentiles.
pub(super) async fn run(
    bench: &Bench,
    queue: &Queue,
    executor: WasmExecutor,
    config: &WorkerConfig,
) -> anyhow::Result<(Percentiles, Percentiles)> {
    // What an idle queue looks like once (auto)vacuum has been by: the drain's dead rows and
    // index entries gone.
    sqlx::query("VACUUM jobrunner.jobs")
        .execute(queue.db())
        .await
        .context("cannot vacuum the jobs table")?;
    let (started_tx, mut started) = mpsc::unbounded_channel();
    let probe = Probe {
        inner: executor,
        started: started_tx,
    };
    let worker = Worker::new(queue.clone(), probe, config.clone()).start();
    let mut recorded = worker.subscribe_recorded();
    worker.listening().await;
    let (mut calls, mut starts, mut dones) = (Vec::new(), Vec::new(), Vec::new());
    for n in 0..WARM_UP + bench.latency_samples {
        let job = NewJob::new(&bench.job_type, payload(n)).unique(Unique::Off);
        // Timed from the call, not its reply: the commit wakes the worker, which can start the
        // job before the reply reaches us.
        let enqueued = Instant::now();
        let id = queue.enqueue(queue.db(), &job).await?.id;
        let replied = Instant::now();
        let sample = async {
            let start = loop {
                match started.recv().await {
                    Some((started_id, at)) if started_id == id => break at,
                    Some(_) => continue,
                    None => anyhow::bail!("the worker stopped"),
                }
            };
            loop {
                let ids = recorded.recv().await.context("the worker stopped")?;
                if ids.contains(&id) {
                    return Ok((start, Instant::now()));
                }
            }
        };
        let (start, done) = tokio::time::timeout(SAMPLE_DEADLINE, sample)
            .await
            .with_context(|| format!("job {id} did not finish within {SAMPLE_DEADLINE:?}"))??;
        if n >= WARM_UP {
            calls.push(replied - enqueued);
            starts.push(start - enqueued);
            dones.push(done - enqueued);
        }
    }
    worker.shutdown().await;
    let (start, done) = (Percentiles::of(starts), Percentiles::of(dones));
    println!(
        "3. latency  {} sequential jobs on the idle (vacuumed) queue, from the enqueue call\n   \
         to the sandbox call:     {}\n   to the outcome's commit: {}\n   \
         (the enqueue's own reply: {})",
        bench.latency_samples,
        start.display_ms(),
        done.display_ms(),
        Percentiles::of(calls).display_ms()
    );
    Ok((start, done))
}
