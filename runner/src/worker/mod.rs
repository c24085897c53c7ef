//! The loop that ties the queue to an executor.
//!
//! ```text
//!  LISTEN / poll ─wake─> fetcher ──claim N──> executors ──reports──> completer ──batch──> Postgres
//!                          │  (slot semaphore:        │ (`concurrency`          │
//!                          │   concurrency+prefetch)  │  long-lived tasks)      └─> outcome log line
//!              heartbeat ──┴── extends the leases of everything claimed and not yet recorded
//!              rescuer   ───── returns other runners' expired leases
//!              pruner    ───── deletes retained completed jobs when they age out
//!              vacuum    ───── vacuums the jobs table when dead row versions pile up
//! ```
//!
//! A job holds a *slot* from claim until its outcome is queued for writing; slots beyond the
//! executors are the prefetch buffer of claimed jobs waiting for one. Shutdown ([`WorkerHandle::shutdown`]) stops claiming at once,
//! requeues claimed jobs that never started, lets running ones finish until the deadline,
//! requeues the rest, and flushes every outcome before returning.

mod attempt;
mod completer;
mod fetcher;
mod inflight;
mod maintenance;
mod prefetch;
mod wakeup;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::time::Duration;

use tokio::sync::{Notify, Semaphore, broadcast, mpsc, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::executor::Executor;
use crate::queue::{Floors, Queue};
use crate::retry::RetryPolicy;

use attempt::Report;
use inflight::InFlight;

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

/// What the worker's tasks share.
struct Shared<E> {
    queue: Queue,
    executor: Arc<E>,
    config: WorkerConfig,
    inflight: Arc<InFlight>,
    /// Claimed-and-unrecorded jobs: concurrency + prefetch permits.
    slots: Arc<Semaphore>,
    /// How many of the prefetch slots may be used now.
    prefetch: prefetch::Prefetch,
    /// A job gave back its slot.
    slot_freed: Notify,
    /// A notification arrived (or the listener reconnected, or the executor's job types
    /// changed): look for ripe jobs now.
    wake: Arc<Notify>,
    /// Where the claims start in each tenant's jobs; the listener keeps them honest.
    floors: Floors,
    /// The last claim left a tenant's ripe jobs behind because of its max_running: every
    /// recorded outcome may make room, so the completer wakes the fetcher.
    held_back: AtomicBool,
    /// Outcome batches written so far: a claim that was held back checks whether one landed
    /// while it ran.
    completions: AtomicU64,
    /// A heartbeat failed or waited on the database longer than a heartbeat interval since the
    /// rescuer last looked: it pauses as for a stall of its own.
    heartbeat_stalled: AtomicBool,
    /// The ids of each batch of outcomes just committed, for whoever subscribed.
    recorded: broadcast::Sender<Arc<[i64]>>,
    /// Stop claiming; requeue what has not started.
    stop: CancellationToken,
    /// Interrupt running jobs and requeue them (the shutdown deadline passed).
    abort: CancellationToken,
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

    /// Starts the worker's tasks on the current tokio runtime.
    pub fn start(self) -> WorkerHandle {
        let config = self.config;
        let shared = Arc::new(Shared {
            queue: self.queue,
            executor: self.executor,
            slots: Arc::new(Semaphore::new(config.concurrency.max(1) + config.prefetch)),
            prefetch: prefetch::Prefetch::new(config.concurrency.max(1), config.prefetch),
            slot_freed: Notify::new(),
            inflight: Arc::default(),
            wake: Arc::default(),
            floors: Floors::default(),
            held_back: AtomicBool::new(false),
            completions: AtomicU64::new(0),
            heartbeat_stalled: AtomicBool::new(false),
            recorded: broadcast::Sender::new(RECORDED_BACKLOG),
            stop: CancellationToken::new(),
            abort: CancellationToken::new(),
            config,
        });
        let (report_tx, report_rx) = mpsc::channel::<Report>(
            shared.config.concurrency + shared.config.prefetch + shared.config.batch_size,
        );
        let (listening_tx, listening_rx) = watch::channel(false);
        let tracker = TaskTracker::new();
        let flush_deadline = CancellationToken::new();
        let heartbeat_stop = CancellationToken::new();

        let (claimed_tx, claimed_rx) = flume::unbounded();
        for _ in 0..shared.config.concurrency.max(1) {
            tracker.spawn(attempt::executor(
                shared.clone(),
                claimed_rx.clone(),
                report_tx.clone(),
            ));
        }
        let fetchers = (0..fetcher::CLAIMERS)
            .map(|_| {
                let handoff = fetcher::Handoff {
                    to_executors: claimed_tx.clone(),
                    waiting: claimed_rx.clone(),
                    reports: report_tx.clone(),
                };
                tokio::spawn(fetcher::run(shared.clone(), handoff))
            })
            .collect();
        drop((claimed_tx, claimed_rx, report_tx));
        let completer = tokio::spawn(completer::run(
            shared.clone(),
            report_rx,
            flush_deadline.clone(),
        ));
        let heartbeat = tokio::spawn(maintenance::heartbeat(
            shared.clone(),
            heartbeat_stop.clone(),
        ));
        let background = vec![
            tokio::spawn(maintenance::rescue(shared.clone())),
            tokio::spawn(maintenance::prune(shared.clone())),
            tokio::spawn(maintenance::vacuum(shared.clone())),
            tokio::spawn(wakeup::listen(shared.clone(), listening_tx)),
        ];
        WorkerHandle {
            control: Control {
                stop: shared.stop.clone(),
                abort: shared.abort.clone(),
                heartbeat_stop,
            },
            shutdown_timeout: shared.config.shutdown_timeout,
            wake: Waker(Arc::clone(&shared.wake)),
            recorded: shared.recorded.clone(),
            inflight: shared.inflight.clone(),
            tracker,
            fetchers,
            completer,
            flush_deadline,
            heartbeat,
            background,
            listening: listening_rx,
        }
    }
}

/// The worker's stop switches; all thrown when its handle is dropped without a shutdown.
struct Control {
    stop: CancellationToken,
    abort: CancellationToken,
    heartbeat_stop: CancellationToken,
}

impl Drop for Control {
    fn drop(&mut self) {
        self.stop.cancel();
        self.abort.cancel();
        self.heartbeat_stop.cancel();
    }
}

/// A running worker. Call [`WorkerHandle::shutdown`] to stop gracefully. Dropping the handle
/// instead stops claiming and interrupts running jobs at once; their requeues are still
/// written by the background tasks, and anything unwritten comes back when its lease expires.
pub struct WorkerHandle {
    control: Control,
    shutdown_timeout: Duration,
    wake: Waker,
    recorded: broadcast::Sender<Arc<[i64]>>,
    inflight: Arc<InFlight>,
    tracker: TaskTracker,
    fetchers: Vec<JoinHandle<()>>,
    completer: JoinHandle<()>,
    flush_deadline: CancellationToken,
    heartbeat: JoinHandle<()>,
    background: Vec<JoinHandle<()>>,
    listening: watch::Receiver<bool>,
}

impl WorkerHandle {
    /// Resolves once the worker is subscribed to new-job notifications.
    pub async fn listening(&self) {
        let mut listening = self.listening.clone();
        // The sender lives as long as the listener task, i.e. until shutdown.
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

    /// Stops gracefully: claims nothing more, requeues claimed jobs that have not started,
    /// waits up to the shutdown timeout for running jobs, interrupts and requeues those still
    /// running, and returns once every outcome is written (or, if the database stays
    /// unreachable for another shutdown timeout, logged as unwritten: those jobs come back when
    /// their leases expire).
    pub async fn shutdown(self) {
        let timeout = self.shutdown_timeout;
        self.control.stop.cancel();
        for fetcher in self.fetchers {
            let _ = fetcher.await;
        }
        self.tracker.close();
        if tokio::time::timeout(timeout, self.tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                running = self.tracker.len(),
                timeout = ?timeout,
                "jobs still running at the shutdown deadline; interrupting and requeueing them"
            );
            self.control.abort.cancel();
            self.tracker.wait().await;
        }
        // Every attempt has queued its report; the completer exits once they are written.
        let mut completer = self.completer;
        if tokio::time::timeout(timeout, &mut completer).await.is_err() {
            self.flush_deadline.cancel();
            let _ = completer.await;
        }
        self.control.heartbeat_stop.cancel();
        let _ = self.heartbeat.await;
        for task in self.background {
            let _ = task.await;
        }
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
