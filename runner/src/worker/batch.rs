//! Batches: the jobs of one batch transaction, from their claim until it commits.
//!
//! A batch's reports stay here instead of going to the completer. Its keeper closes it when
//! every job has reported, when it has been open for the bound, or when a claim needs room for
//! another open batch; it then commits, in one statement, the outcomes gathered and per-job
//! leases for the jobs still running (which from then on report to the completer, as any
//! leased job). If the transaction is gone by then (a database restart, a killed connection,
//! or Postgres ending it after this runner froze), nothing of it is written: the jobs still
//! running here are abandoned, and the rescuers count every attempt of the batch.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, broadcast, mpsc, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::attempt::Report;
use super::inflight::{InFlight, Ticket};
use super::outcome_log::{NotApplied, log_intended, log_not_applied, log_recorded};
use crate::driver::{Driver, OpenBatch};

/// Batch transactions open at once per worker, each on a connection of its own.
pub const OPEN_BATCHES: usize = 4;

/// How long a claim waits for another open batch to close by itself before it closes the
/// oldest early: long enough for a batch of short jobs queued behind others to finish (a
/// batch closed early turns its unfinished jobs into leases, and pays for them).
const PATIENCE: Duration = Duration::from_millis(50);

/// One open batch: what its jobs reported, and which are still running.
pub(super) struct Batch {
    state: Mutex<State>,
    /// Every job has reported, or closing early was asked for.
    ready: Notify,
}

/// Where a batch is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Reports are kept, to be written as it commits.
    Open,
    /// Its closing statement is under way: a report now belongs to a job going on under a
    /// lease that is not yet committed, and waits for the commit (written before it, its
    /// lease fence would refuse it).
    Committing,
    /// Reports go to the completer.
    Closed,
}

struct State {
    phase: Phase,
    /// The jobs that have not reported, with the token that abandons each.
    running: HashMap<i64, (Ticket, CancellationToken)>,
    reports: Vec<Report>,
}

impl Batch {
    /// Keeps `report` unless the batch has closed; then hands it back, for the completer
    /// (its job went on under a lease).
    pub fn keep(&self, report: Report) -> Option<Report> {
        let mut state = self.state.lock().expect("batch lock poisoned");
        match state.phase {
            Phase::Closed => return Some(report),
            Phase::Committing => state.reports.push(report),
            Phase::Open => {
                state.running.remove(&report.ticket.job_id);
                state.reports.push(report);
                if state.running.is_empty() {
                    self.ready.notify_one();
                }
            }
        }
        None
    }

    /// Starts closing: returns the reports kept and the jobs still running.
    fn close(&self) -> (Vec<Report>, Vec<(Ticket, CancellationToken)>) {
        let mut state = self.state.lock().expect("batch lock poisoned");
        state.phase = Phase::Committing;
        let running = state.running.drain().map(|(_, job)| job).collect();
        (std::mem::take(&mut state.reports), running)
    }

    /// Closed: returns the reports that came while it committed.
    fn closed(&self) -> Vec<Report> {
        let mut state = self.state.lock().expect("batch lock poisoned");
        state.phase = Phase::Closed;
        std::mem::take(&mut state.reports)
    }
}

/// What a keeper needs to close a batch.
pub(super) struct Closing {
    pub driver: Driver,
    pub owner: String,
    pub lease: Duration,
    pub bound: Duration,
    pub keep_completed: bool,
    pub inflight: Arc<InFlight>,
    /// Counts committed outcome batches (the completer's count too).
    pub completions: watch::Sender<u64>,
    /// The ids of each batch of outcomes committed, for whoever subscribed.
    pub recorded: broadcast::Sender<Arc<[i64]>>,
    /// Reports of jobs that went on under leases, which came while their batch committed.
    pub completer: mpsc::Sender<Report>,
}

/// The worker's open batches and their keepers.
pub(super) struct Batches {
    room: Arc<Semaphore>,
    /// Oldest first; a claim short of room closes the first still open.
    open: Mutex<VecDeque<Weak<Batch>>>,
    keepers: TaskTracker,
    closing: Closing,
    /// What they did, for the benchmark.
    pub counts: BatchCounts,
}

/// What a worker's batch transactions did so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BatchStats {
    /// Batches committed.
    pub committed: u64,
    /// Of those, committed before the bound (all their jobs done, or closed for room).
    pub within_bound: u64,
    /// Jobs still running when their batch closed, which went on under per-job leases.
    pub leased: u64,
    /// Batches whose transaction was gone when they closed.
    pub lost: u64,
}

impl std::ops::AddAssign for BatchStats {
    fn add_assign(&mut self, other: BatchStats) {
        self.committed += other.committed;
        self.within_bound += other.within_bound;
        self.leased += other.leased;
        self.lost += other.lost;
    }
}

/// [`BatchStats`], counted as batches close.
#[derive(Debug, Default)]
pub(super) struct BatchCounts {
    committed: AtomicU64,
    within_bound: AtomicU64,
    leased: AtomicU64,
    lost: AtomicU64,
}

impl BatchCounts {
    fn committed(&self, within_bound: bool, leased: usize) {
        self.committed.fetch_add(1, Relaxed);
        self.within_bound
            .fetch_add(u64::from(within_bound), Relaxed);
        self.leased.fetch_add(leased as u64, Relaxed);
    }

    pub fn stats(&self) -> BatchStats {
        BatchStats {
            committed: self.committed.load(Relaxed),
            within_bound: self.within_bound.load(Relaxed),
            leased: self.leased.load(Relaxed),
            lost: self.lost.load(Relaxed),
        }
    }
}

impl Batches {
    pub fn new(closing: Closing) -> Self {
        Self {
            room: Arc::new(Semaphore::new(OPEN_BATCHES)),
            open: Mutex::default(),
            keepers: TaskTracker::new(),
            closing,
            counts: BatchCounts::default(),
        }
    }

    /// The batch bound.
    pub fn bound(&self) -> Duration {
        self.closing.bound
    }

    /// Room for one more open batch: waits briefly for one to close, then closes the oldest
    /// early. `None` once `stop` fires.
    pub async fn room(&self, stop: &CancellationToken) -> Option<OwnedSemaphorePermit> {
        if let Ok(permit) = self.room.clone().try_acquire_owned() {
            return Some(permit);
        }
        let wait = self.room.clone().acquire_owned();
        tokio::pin!(wait);
        tokio::select! {
            biased;
            _ = stop.cancelled() => return None,
            permit = &mut wait => return permit.ok(),
            _ = tokio::time::sleep(PATIENCE) => self.hurry_oldest(),
        }
        tokio::select! {
            biased;
            _ = stop.cancelled() => None,
            permit = wait => permit.ok(),
        }
    }

    fn hurry_oldest(&self) {
        let mut open = self.open.lock().expect("batches lock poisoned");
        while let Some(oldest) = open.pop_front() {
            if let Some(batch) = oldest.upgrade() {
                batch.ready.notify_one();
                return;
            }
        }
    }

    /// Starts keeping `open`, which holds `jobs` (each with the token that abandons it), until
    /// it closes; `room` is given back then.
    pub fn keep(
        self: &Arc<Self>,
        open: OpenBatch,
        jobs: Vec<(Ticket, CancellationToken)>,
        room: OwnedSemaphorePermit,
    ) -> Arc<Batch> {
        let batch = Arc::new(Batch {
            state: Mutex::new(State {
                phase: Phase::Open,
                running: jobs.into_iter().map(|job| (job.0.job_id, job)).collect(),
                reports: Vec::new(),
            }),
            ready: Notify::new(),
        });
        {
            let mut queue = self.open.lock().expect("batches lock poisoned");
            queue.retain(|b| b.strong_count() > 0);
            queue.push_back(Arc::downgrade(&batch));
        }
        let (batches, kept) = (Arc::clone(self), Arc::clone(&batch));
        self.keepers.spawn(async move {
            batches.close_when_ready(kept, open).await;
            drop(room);
        });
        batch
    }

    /// Waits for every keeper to commit (they close once their jobs have reported).
    pub async fn closed(&self) {
        self.keepers.close();
        self.keepers.wait().await;
    }

    async fn close_when_ready(&self, batch: Arc<Batch>, open: OpenBatch) {
        let opened = Instant::now();
        let bound = self.closing.bound;
        let within_bound = tokio::select! {
            _ = batch.ready.notified() => true,
            _ = tokio::time::sleep(bound) => false,
        };
        let (reports, running) = batch.close();
        let committed = self
            .commit(open, reports, &running, within_bound, opened)
            .await;
        for report in batch.closed() {
            if committed {
                // Only if the completer is gone: the lease expires and the job is rescued.
                let _ = self.closing.completer.send(report).await;
            } else {
                log_not_applied(&report, NotApplied::BatchLost);
                self.closing.inflight.remove(report.ticket);
            }
        }
    }

    /// Commits the batch; returns whether it did.
    async fn commit(
        &self,
        open: OpenBatch,
        reports: Vec<Report>,
        running: &[(Ticket, CancellationToken)],
        within_bound: bool,
        opened: Instant,
    ) -> bool {
        let c = &self.closing;
        let batch_id = open.id();
        let running_ids: Vec<i64> = running.iter().map(|(t, _)| t.job_id).collect();
        // The leases start when the statement reads the database's clock: no later than this.
        let asked_at = Instant::now();
        let settlements = reports.iter().map(|r| &r.settlement);
        log_intended(&reports);
        let finished = c
            .driver
            .finish_batch(
                open,
                &c.owner,
                c.keep_completed,
                c.lease,
                &running_ids,
                settlements,
            )
            .await;
        let finished_ok = finished.is_ok();
        match finished {
            Ok(applied) => {
                self.counts.committed(within_bound, running.len());
                c.inflight
                    .leased(running.iter().map(|(ticket, _)| *ticket), asked_at);
                for report in &reports {
                    c.inflight.remove(report.ticket);
                }
                if c.recorded.receiver_count() > 0 {
                    let _ = c.recorded.send(applied.as_slice().into());
                }
                log_recorded(&reports, &applied, false);
            }
            Err(error) => {
                self.counts.lost.fetch_add(1, Relaxed);
                let ids: Vec<i64> = reports.iter().map(|r| r.settlement.job_id).collect();
                tracing::warn!(
                    %error, batch = batch_id, open_for = ?opened.elapsed(), outcomes = ?ids,
                    running = ?running_ids,
                    "batch transaction lost: none of its outcomes was recorded; its jobs run \
                     again, their attempts counted, and those still running here are abandoned"
                );
                for (ticket, abandon) in running {
                    abandon.cancel();
                    c.inflight.remove(*ticket);
                }
                for report in &reports {
                    log_not_applied(report, NotApplied::BatchLost);
                    c.inflight.remove(report.ticket);
                }
            }
        }
        c.completions.send_modify(|n| *n += 1);
        finished_ok
    }
}
