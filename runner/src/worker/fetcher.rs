//! The claim loop: whenever slots are free and ripe jobs may exist, claim a batch and hand
//! each job to the executors: in a batch transaction (see [`super::batch`]) when the worker
//! batches and no tenant or type limit applies, else under per-job leases. A short batch means the queue looks drained, unless the claim
//! says more is ripe (another tenant's share is left) or a tenant was held back by its limits,
//! in which case the next look comes when its next token is due or a job completes.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

use super::attempt::{ClaimedJob, Reporter};
use super::batch::Batches;
use super::inflight::InFlight;
use super::service::Service;
use super::slots::Slots;
use super::{WorkerConfig, retry_delay, sleep_or_stop};
use crate::driver::{ClaimRequest, Driver, Floors};
use crate::executor::Executor;

/// Claim loops per worker. A claim of a full batch takes milliseconds; with two loops one
/// claims while the other's jobs start, and a busy runner drained a quarter faster.
pub(super) const CLAIMERS: usize = 2;

/// One claim loop.
pub(super) struct Fetcher<E> {
    pub driver: Driver,
    pub executor: Arc<E>,
    pub config: Arc<WorkerConfig>,
    pub slots: Arc<Slots>,
    pub inflight: Arc<InFlight>,
    /// Where the claims start in each tenant's jobs; the listener keeps them honest.
    pub floors: Arc<Floors>,
    /// A notification arrived (or the listener reconnected, or the executor's job types
    /// changed): look for ripe jobs now.
    pub wake: Arc<Notify>,
    /// Outcome batches committed so far: a claim held back by max_running waits for the next
    /// one, and claims again at once if one landed while it ran.
    pub completions: watch::Receiver<u64>,
    /// The open batch transactions; `None`: claims lease every job.
    pub batches: Option<Arc<Batches>>,
    pub to_executors: flume::Sender<ClaimedJob>,
    /// The executors' end of the channel: what no executor took goes back at shutdown.
    pub waiting: flume::Receiver<ClaimedJob>,
    pub reporter: Reporter,
}

impl<E: Executor> Service for Fetcher<E> {
    const NAME: &'static str = "fetcher";

    /// Claims until `stop` fires, then returns the claimed jobs no executor has taken to the
    /// queue at once (executors may be busy until the shutdown deadline).
    async fn run(mut self, stop: CancellationToken) {
        self.claim_until(&stop).await;
        let Self {
            to_executors,
            waiting,
            reporter,
            ..
        } = self;
        drop(to_executors);
        // What is still waiting goes back now; each loop drains after its own last hand-off.
        while let Ok(claim) = waiting.try_recv() {
            reporter.not_started(claim).await;
        }
    }
}

impl<E: Executor> Fetcher<E> {
    async fn claim_until(&mut self, stop: &CancellationToken) {
        let mut failures = 0;
        let mut next_tenant: Option<String> = None;
        while let Some(mut slots) = self.slots.take(stop).await {
            // An idle runner claims under leases: a job then starts one round trip after the
            // wake-up, where a batch takes three (begin, claim, its row). A busy one batches.
            let batches = self.batches.as_ref().filter(|_| self.inflight.len() > 0);
            let room = match batches {
                Some(batches) => match batches.room(stop).await {
                    Some(room) => Some(room),
                    None => {
                        self.slots.give_back(slots);
                        break;
                    }
                },
                None => None,
            };
            let limit = slots.num_permits();
            let job_types = self.executor.job_types();
            let request = ClaimRequest {
                owner: &self.config.owner,
                job_types: &job_types,
                limit,
                lease: self.config.lease,
                default_max_attempts: self.config.retry.max_attempts,
                after_tenant: next_tenant.as_deref(),
                floors: Some(&self.floors),
                batch: batches.map(|b| b.bound()),
            };
            self.completions.borrow_and_update();
            // The leases start when the claim reads the database's clock, so no later than
            // this: stamping them when the reply arrives would let a slow claim's leases lapse
            // unrenewed.
            let asked_at = Instant::now();
            let mut claimed = match self.driver.claim(&request).await {
                Ok(claimed) => claimed,
                Err(error) => {
                    self.slots.give_back(slots);
                    failures += 1;
                    let delay = retry_delay(failures);
                    tracing::warn!(%error, retry_in = ?delay, "claiming jobs failed");
                    if sleep_or_stop(stop, delay).await {
                        break;
                    }
                    continue;
                }
            };
            failures = 0;
            // Held back by max_running, the next completion may make room. One that completed
            // while this claim ran came too early to be waited for: look again now.
            let completed_meanwhile = self.completions.has_changed().unwrap_or(false);
            let drained = claimed.jobs.len() < limit
                && !claimed.more
                && !(claimed.held && completed_meanwhile);
            next_tenant = claimed.next_tenant.take();
            let leased = claimed.batch.is_none();
            let tickets: Vec<_> = claimed
                .jobs
                .iter()
                .map(|job| self.inflight.insert(job, asked_at, leased))
                .collect();
            let batch = match (claimed.batch.take(), batches, room) {
                (Some(open), Some(batches), Some(room)) => {
                    let held = tickets.iter().map(|(t, lost, _)| (*t, lost.clone()));
                    Some(batches.keep(open, held.collect(), room))
                }
                _ => None,
            };
            let now = self.driver.queue().now();
            for (job, (ticket, lease_lost, cancel)) in claimed.jobs.into_iter().zip(tickets) {
                crate::metrics::claimed(&job, now);
                let slot = slots
                    .split(1)
                    .expect("one slot was reserved per claimed job");
                let claim = ClaimedJob {
                    job,
                    ticket,
                    lease_lost,
                    cancel,
                    slot,
                    batch: batch.clone(),
                };
                // Unbounded, as the slots bound what is claimed and not yet run. Cannot fail:
                // `waiting` keeps the channel open.
                let _ = self.to_executors.send(claim);
            }
            self.slots.give_back(slots);
            if drained
                && !self
                    .wait_for_work(stop, claimed.rate_wait, claimed.held)
                    .await
            {
                break;
            }
        }
        tracing::debug!("stopped claiming");
    }

    /// The queue looked empty: sleep until a notification (or a completion, while a tenant is
    /// held back by its max_running), the poll interval or a rate-limited tenant's next token,
    /// or stop. Returns false on stop.
    async fn wait_for_work(
        &mut self,
        stop: &CancellationToken,
        rate_wait: Option<Duration>,
        held: bool,
    ) -> bool {
        let poll = self.config.poll_interval;
        let nap = rate_wait.map_or(poll, |wait| wait.min(poll));
        tokio::select! {
            biased;
            _ = stop.cancelled() => false,
            _ = self.wake.notified() => true,
            Ok(()) = self.completions.changed(), if held => true,
            _ = tokio::time::sleep(nap) => true,
        }
    }
}
