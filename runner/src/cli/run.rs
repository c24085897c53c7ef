//! `runner run`: work the queue until a signal.

use std::process::ExitCode;

use anyhow::Context;
use tokio::signal::unix::{Signal, SignalKind, signal};

use super::database::Database;
use crate::demo;
use crate::executor::Executor;
use crate::worker::{Worker, WorkerConfig};

/// Migrates, then runs a worker until SIGINT/SIGTERM and shuts it down gracefully. A second
/// signal exits at once; unfinished jobs then come back when their leases expire.
pub async fn run(db: &Database, config: WorkerConfig) -> anyhow::Result<ExitCode> {
    let mut signals = Signals::new()?;
    let queue = db.queue();
    queue.migrate().await?;
    // Until the Wasm sandbox lands, the runner executes the built-in demo job types.
    let executor = demo::handlers();
    tracing::info!(
        owner = %config.owner, concurrency = config.concurrency,
        job_types = ?executor.job_types(), "runner started"
    );
    let timeout = config.shutdown_timeout;
    let worker = Worker::new(queue, executor, config).start();

    let signal = signals.next().await;
    tracing::info!(
        signal, timeout = ?timeout,
        "shutting down: claiming nothing more and waiting for running jobs (signal again to exit \
         at once)"
    );
    tokio::select! {
        () = worker.shutdown() => Ok(ExitCode::SUCCESS),
        signal = signals.next() => {
            tracing::warn!(signal, "exiting at once; unfinished jobs run again when their \
                                    leases expire");
            db.stop_private_now();
            std::process::exit(130)
        }
    }
}

/// SIGINT and SIGTERM, whichever comes first.
pub(super) struct Signals {
    interrupt: Signal,
    terminate: Signal,
}

impl Signals {
    /// Starts catching both signals (from now on they no longer kill the process).
    pub fn new() -> anyhow::Result<Self> {
        Ok(Self {
            interrupt: signal(SignalKind::interrupt()).context("cannot catch SIGINT")?,
            terminate: signal(SignalKind::terminate()).context("cannot catch SIGTERM")?,
        })
    }

    /// Waits for the next signal and names it.
    pub async fn next(&mut self) -> &'static str {
        tokio::select! {
            _ = self.interrupt.recv() => "SIGINT",
            _ = self.terminate.recv() => "SIGTERM",
        }
    }
}
