//! The loop that ties the queue to an executor.
//!
//! ```text
//!  LISTEN / poll ─wake─> fetcher ──claim N──> executors ──reports──> batch keeper ──commit──> Postgres
//!                          │  (slots:                 │ (`concurrency`   or completer ──batch──> Postgres
//!                          │   concurrency+prefetch)  │  long-lived tasks)      └─> outcome log line
//!              heartbeat ──┴── extends the leases of everything claimed under a lease
//!              rescuer   ───── returns other runners' expired leases and lost batches' jobs
//!              pruner    ───── deletes retained completed jobs when they age out
//!              vacuum    ───── vacuums the jobs table when dead row versions pile up
//!              scheduler ───── enqueues the jobs of the schedules' ticks, woken by LISTEN
//! ```
//!
//! Each box is a [service](service::Service), one module each, started and stopped in
//! [stages](service::Stage) by [`Worker::start`] and [`WorkerHandle::shutdown`]; services share
//! state through channels (claimed jobs, reports, committed batches, heartbeat stalls) and
//! owned handles (the slots, the in-flight table, the claim floors).
//!
//! Jobs are claimed in *batch transactions* ([`batch`]): locked by a transaction that stays
//! open while they run and writes their outcomes as it commits, within `batch_bound`; jobs
//! still running then go on under per-job leases, as do all jobs of claims that tenant or type
//! limits apply to. A job holds a *slot* from claim until its outcome is queued for writing;
//! slots beyond the executors are the prefetch buffer of claimed jobs waiting for one. Shutdown stops claiming
//! at once, requeues claimed jobs that never started, lets running ones finish until the
//! deadline, requeues the rest, and flushes every outcome before returning.

mod attempt;
mod batch;
mod completer;
mod fetcher;
mod heartbeat;
mod inflight;
mod outcome_log;
mod prefetch;
mod pruner;
mod rescuer;
mod scheduler;
mod service;
mod slots;
mod vacuum;
mod wakeup;

use std::sync::Arc;
use std::time::Duration;

use tokio::runtime::Handle;
use tokio::sync::{Notify, broadcast, mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::Queue;
use crate::driver::{Driver, Floors};
use crate::executor::Executor;
use crate::retry::RetryPolicy;

use attempt::{Attempts, Reporter};
pub use batch::{BatchStats, OPEN_BATCHES};
use batch::{Batches, Closing};
use completer::Completer;
use fetcher::Fetcher;
use heartbeat::Heartbeat;
use inflight::InFlight;
pub use outcome_log::TARGET as OUTCOME_TARGET;
pub use outcome_log::writer::{OutcomeWriter, Stream as LogStream};
use pruner::Pruner;
use rescuer::Rescuer;
use scheduler::Scheduler;
use service::Stage;
use slots::Slots;
use vacuum::Vacuumer;
use wakeup::Listener;

/// How a worker behaves. [`WorkerConfig::default`] gives the documented defaults.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// This runner's name in leases; unique per process.
    pub owner: String,
    /// Jobs running at once.
    pub concurrency: usize,
    /// Most jobs claimed beyond `concurrency`, waiting locally for a free executor. The worker
    /// uses as many as its executors are expected to start within a few milliseconds, judged
    /// from recent job times: all of them for microsecond jobs, none for long ones.
    pub prefetch: usize,
    /// Most jobs claimed in one statement.
    pub batch_size: usize,
    /// How often an idle runner looks for ripe jobs when no notification arrives.
    pub poll_interval: Duration,
    /// How long a claim is valid without a heartbeat. Heartbeats run every third of it.
    pub lease: Duration,
    /// The longest a batch transaction stays open: jobs still running then go on under
    /// per-job leases. `None`: no batch transactions, every job is leased when claimed.
    pub batch_bound: Option<Duration>,
    /// How often the rescuer looks for expired leases.
    pub rescue_interval: Duration,
    /// Keep completed jobs (with their result) this long instead of deleting them at once.
    pub keep_completed: Option<Duration>,
    /// How long shutdown waits for running jobs before interrupting and requeueing them.
    pub shutdown_timeout: Duration,
    /// Vacuum the jobs table once it holds this many dead row versions, and they make up a
    /// fifth of it (one runner at a time); `None`: leave it to autovacuum.
    pub vacuum_dead_rows: Option<u64>,
    /// Attempts and backoff.
    pub retry: RetryPolicy,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        Self {
            owner: default_owner(),
            concurrency: 100,
            prefetch: 2000,
            batch_size: 500,
            poll_interval: Duration::from_secs(1),
            // A killed runner's jobs are back within lease + rescue interval + backoff + poll:
            // 5 + 1 + 1 + 1 seconds, inside the 10 s the design promises.
            lease: Duration::from_secs(5),
            batch_bound: Some(Duration::from_secs(1)),
            rescue_interval: Duration::from_secs(1),
            keep_completed: None,
            shutdown_timeout: Duration::from_secs(30),
            vacuum_dead_rows: Some(50_000),
            retry: RetryPolicy::default(),
        }
    }
}

impl WorkerConfig {
    /// How often leases are extended.
    pub fn heartbeat_interval(&self) -> Duration {
        self.lease / 3
    }
}

/// `host:pid:random`, so that two runners never share a lease owner, even after a restart that
/// reuses the pid.
pub fn default_owner() -> String {
    let host = nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "localhost".to_owned());
    format!("{host}:{}:{:04x}", std::process::id(), fastrand::u16(..))
}

/// Committed outcome batches kept for a slow [`WorkerHandle::subscribe_recorded`] receiver.
pub const RECORDED_BACKLOG: usize = 1024;

/// A worker, ready to start.
pub struct Worker<E> {
    queue: Queue,
    executor: Arc<E>,
    config: WorkerConfig,
}

impl<E: Executor> Worker<E> {
    /// A worker that claims from `queue` and runs jobs on `executor`.
    pub fn new(queue: Queue, executor: E, config: WorkerConfig) -> Self {
        Self {
            queue,
            executor: Arc::new(executor),
            config,
        }
    }

    /// Starts the worker's services on the current tokio runtime, in stages that stop in
    /// order: claiming (the claim loops; maintaining, the listener, rescuer, pruner and vacuum
    /// chore, stops with it), running (the executors), recording (the completer), renewing
    /// (the heartbeat).
    pub fn start(self) -> WorkerHandle {
        let config = Arc::new(self.config);
        let driver = Driver::new(self.queue.clone());
        let executor = self.executor;
        let inflight = Arc::new(InFlight::default());
        let slots = Arc::new(Slots::new(&config));
        let floors = Arc::new(Floors::default());
        let wake = Arc::new(Notify::new());
        let (reports, reports_rx) =
            mpsc::channel(config.concurrency + config.prefetch + config.batch_size);
        let (completions, completions_rx) = watch::channel(0);
        let (stalls, stalls_rx) = watch::channel(());
        let (listening, listening_rx) = watch::channel(false);
        let recorded = broadcast::Sender::new(RECORDED_BACKLOG);
        let reporter = Reporter {
            reports,
            slots: Arc::clone(&slots),
        };
        let batches = config.batch_bound.map(|bound| {
            Arc::new(Batches::new(Closing {
                driver: driver.clone(),
                owner: config.owner.clone(),
                lease: config.lease,
                bound,
                keep_completed: config.keep_completed.is_some(),
                inflight: Arc::clone(&inflight),
                completions: completions.clone(),
                recorded: recorded.clone(),
                completer: reporter.reports.clone(),
            }))
        });
        let (to_executors, claimed) = flume::unbounded();

        let mut claiming = Stage::new("claiming");
        for _ in 0..fetcher::CLAIMERS {
            claiming.start(Fetcher {
                driver: driver.clone(),
                executor: Arc::clone(&executor),
                config: Arc::clone(&config),
                slots: Arc::clone(&slots),
                inflight: Arc::clone(&inflight),
                floors: Arc::clone(&floors),
                wake: Arc::clone(&wake),
                completions: completions_rx.clone(),
                batches: batches.clone(),
                to_executors: to_executors.clone(),
                waiting: claimed.clone(),
                reporter: reporter.clone(),
            });
        }
        drop(to_executors);
        let schedules_changed = Arc::new(Notify::new());
        let mut maintaining = Stage::new("maintaining");
        maintaining.start(Listener {
            queue: self.queue.clone(),
            floors,
            wake: Arc::clone(&wake),
            schedules: Arc::clone(&schedules_changed),
            inflight: Arc::clone(&inflight),
            listening,
        });
        maintaining.start(Scheduler {
            driver: driver.clone(),
            changed: schedules_changed,
        });
        maintaining.start(Rescuer {
            driver: driver.clone(),
            executor: Arc::clone(&executor),
            retry: config.retry,
            interval: config.rescue_interval,
            lease: config.lease,
            heartbeat_interval: config.heartbeat_interval(),
            stalls: stalls_rx,
        });
        if let Some(keep) = config.keep_completed {
            maintaining.start(Pruner {
                queue: self.queue.clone(),
                keep,
            });
        }
        if let Some(threshold) = config.vacuum_dead_rows {
            maintaining.start(Vacuumer {
                driver: driver.clone(),
                threshold,
            });
        }

        let mut running = Stage::new("running");
        let runtime = executor.runtime().unwrap_or_else(Handle::current);
        for _ in 0..config.concurrency.max(1) {
            running.start_on(
                &runtime,
                Attempts {
                    executor: Arc::clone(&executor),
                    queue: self.queue.clone(),
                    inflight: Arc::clone(&inflight),
                    default_backoff: config.retry.backoff,
                    claimed: claimed.clone(),
                    reporter: reporter.clone(),
                    claiming: claiming.token(),
                },
            );
        }
        drop((claimed, reporter));

        let mut recording = Stage::new("recording");
        recording.start(Completer {
            driver: driver.clone(),
            owner: config.owner.clone(),
            keep_completed: config.keep_completed.is_some(),
            inflight: Arc::clone(&inflight),
            reports: reports_rx,
            completions,
            recorded: recorded.clone(),
        });

        let mut renewing = Stage::new("renewing");
        renewing.start(Heartbeat {
            driver,
            owner: config.owner.clone(),
            lease: config.lease,
            interval: config.heartbeat_interval(),
            inflight: Arc::clone(&inflight),
            stalls,
        });

        WorkerHandle {
            claiming,
            maintaining,
            running,
            recording,
            renewing,
            shutdown_timeout: config.shutdown_timeout,
            wake: Waker(wake),
            recorded,
            inflight,
            batches,
            listening: listening_rx,
        }
    }
}

/// A running worker. Call [`WorkerHandle::shutdown`] to stop gracefully. Dropping the handle
/// instead stops claiming and interrupts running jobs at once; their requeues are still
/// written by the background tasks, and anything unwritten comes back when its lease expires.
pub struct WorkerHandle {
    claiming: Stage,
    maintaining: Stage,
    running: Stage,
    recording: Stage,
    renewing: Stage,
    shutdown_timeout: Duration,
    wake: Waker,
    recorded: broadcast::Sender<Arc<[i64]>>,
    inflight: Arc<InFlight>,
    batches: Option<Arc<Batches>>,
    listening: watch::Receiver<bool>,
}

impl WorkerHandle {
    /// Resolves once the worker is subscribed to new-job notifications.
    pub async fn listening(&self) {
        let mut listening = self.listening.clone();
        // The sender lives as long as the listener, i.e. until shutdown.
        let _ = listening.wait_for(|up| *up).await;
    }

    /// A handle that makes the worker look for ripe jobs now, e.g. when its executor gained a
    /// job type.
    pub fn waker(&self) -> Waker {
        self.wake.clone()
    }

    /// The ids of the jobs whose outcome this worker records from now on, one message per
    /// committed batch (fenced-off outcomes left out). A receiver that falls more than
    /// [`RECORDED_BACKLOG`] batches behind loses the oldest.
    pub fn subscribe_recorded(&self) -> broadcast::Receiver<Arc<[i64]>> {
        self.recorded.subscribe()
    }

    /// Jobs claimed by this worker whose outcome is not yet recorded.
    pub fn in_flight(&self) -> usize {
        self.inflight.len()
    }

    /// What this worker's batch transactions did so far (all zero without them).
    pub fn batch_stats(&self) -> BatchStats {
        self.batches
            .as_ref()
            .map(|b| b.counts.stats())
            .unwrap_or_default()
    }

    /// Stops gracefully: claims nothing more, requeues claimed jobs that have not started,
    /// waits up to the shutdown timeout for running jobs, interrupts and requeues those still
    /// running, and returns once every outcome is written (or, if the database stays
    /// unreachable for another shutdown timeout, logged as unwritten: those jobs come back when
    /// their leases expire).
    pub async fn shutdown(self) {
        let Self {
            claiming,
            maintaining,
            mut running,
            mut recording,
            renewing,
            shutdown_timeout: timeout,
            batches,
            ..
        } = self;
        maintaining.cancel();
        claiming.stop().await;
        if !running.finish_within(timeout).await {
            tracing::warn!(
                running = running.len(),
                timeout = ?timeout,
                "jobs still running at the shutdown deadline; interrupting and requeueing them"
            );
        }
        running.stop().await;
        // Every attempt has reported: batches close now, handing late reports to the completer.
        if let Some(batches) = batches {
            batches.closed().await;
        }
        // The completer ends once every report queued for it is written.
        if !recording.finish_within(timeout).await {
            tracing::warn!("outcomes still unwritten a shutdown timeout later; giving up on them");
        }
        recording.stop().await;
        renewing.stop().await;
        maintaining.stop().await;
        tracing::info!("worker stopped");
    }
}

/// Wakes an idle worker: it looks for ripe jobs at once instead of at its next poll.
#[derive(Debug, Clone)]
pub struct Waker(Arc<Notify>);

impl Waker {
    /// Wakes the worker (once, however often it is called before the worker looks).
    pub fn wake(&self) {
        self.0.notify_one();
    }
}

/// Sleeps for `duration` unless `stop` fires first; returns whether it fired.
async fn sleep_or_stop(stop: &CancellationToken, duration: Duration) -> bool {
    tokio::select! {
        _ = stop.cancelled() => true,
        _ = tokio::time::sleep(duration) => false,
    }
}

/// Delay before retrying the database after `failures` consecutive failures: 100 ms doubling
/// to 5 s.
fn retry_delay(failures: u32) -> Duration {
    let exp = failures.saturating_sub(1).min(6);
    Duration::from_millis(100 << exp).min(Duration::from_secs(5))
}
