//! The claim loop: whenever slots are free and ripe jobs may exist, claim a batch and hand
//! each job to the executors. A short batch means the queue looks drained, unless the claim
//! says more is ripe (another tenant's share is left) or a tenant was held back by its limits,
//! in which case the next look comes when its next token is due or a job completes.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, mpsc};

use super::attempt::{self, Claimed, Report};
use super::{Shared, retry_delay, sleep_or_stop};
use crate::executor::Executor;
use crate::queue::ClaimRequest;

/// Claim loops per worker. A claim of a full batch takes milliseconds; with two loops one
/// claims while the other's jobs start, and a busy runner drained a quarter faster.
pub(super) const CLAIMERS: usize = 2;

/// Where claimed jobs go: to the executors, and back to the claim loops at shutdown.
pub(super) struct Handoff {
    pub to_executors: flume::Sender<Claimed>,
    pub waiting: flume::Receiver<Claimed>,
    pub reports: mpsc::Sender<Report>,
}

/// Claims until `shared.stop` fires, then returns the claimed jobs no executor has taken to
/// the queue at once (executors may be busy until the shutdown deadline).
pub(super) async fn run<E: Executor>(shared: Arc<Shared<E>>, handoff: Handoff) {
    claim_until_stopped(&shared, &handoff.to_executors).await;
    drop(handoff.to_executors);
    // What is still waiting goes back now; each loop drains after its own last hand-off.
    while let Ok(claim) = handoff.waiting.try_recv() {
        attempt::not_started(&shared, claim, &handoff.reports).await;
    }
}

async fn claim_until_stopped<E: Executor>(
    shared: &Shared<E>,
    to_executors: &flume::Sender<Claimed>,
) {
    let mut failures = 0;
    let mut next_tenant: Option<String> = None;
    while let Some(mut slots) = free_slots(shared).await {
        let limit = slots.num_permits();
        let job_types = shared.executor.job_types();
        let request = ClaimRequest {
            owner: &shared.config.owner,
            job_types: &job_types,
            limit,
            lease: shared.config.lease,
            default_max_attempts: shared.config.retry.max_attempts,
            after_tenant: next_tenant.as_deref(),
            floors: Some(&shared.floors),
        };
        let completions = shared.completions.load(Ordering::SeqCst);
        // The leases start when the claim reads the database's clock, so no later than this:
        // stamping them when the reply arrives would let a slow claim's leases lapse unrenewed.
        let asked_at = Instant::now();
        let claimed = match shared.queue.claim(&request).await {
            Ok(claimed) => claimed,
            Err(error) => {
                give_back(shared, slots);
                failures += 1;
                let delay = retry_delay(failures);
                tracing::warn!(%error, retry_in = ?delay, "claiming jobs failed");
                if sleep_or_stop(&shared.stop, delay).await {
                    break;
                }
                continue;
            }
        };
        failures = 0;
        // Held back by max_running, the completer wakes us once a job completes. One that
        // completed while this claim ran came too early to wake us: look again now.
        shared.held_back.store(claimed.held, Ordering::SeqCst);
        let completed_meanwhile = shared.completions.load(Ordering::SeqCst) != completions;
        let drained =
            claimed.jobs.len() < limit && !claimed.more && !(claimed.held && completed_meanwhile);
        next_tenant = claimed.next_tenant;
        for job in claimed.jobs {
            let slot = slots
                .split(1)
                .expect("one slot was reserved per claimed job");
            let (ticket, lease_lost) = shared.inflight.insert(&job, asked_at);
            let claim = Claimed {
                job,
                ticket,
                lease_lost,
                slot,
            };
            // Unbounded, as the slots bound what is claimed and not yet run. Cannot fail: the
            // loop's `waiting` receiver keeps the channel open.
            let _ = to_executors.send(claim);
        }
        give_back(shared, slots);
        if drained && !wait_for_work(shared, claimed.rate_wait).await {
            break;
        }
    }
    tracing::debug!("stopped claiming");
}

/// Returns the slots a claim reserved and did not fill. The other claim loop may be waiting
/// for them: while this claim ran, they counted against its prefetch allowance.
fn give_back<E>(shared: &Shared<E>, slots: OwnedSemaphorePermit) {
    let unused = slots.num_permits();
    drop(slots);
    if unused > 0 {
        shared.slot_freed.notify_one();
    }
}

/// How long a busy runner waits for more slots before claiming: claims then come in batches
/// instead of one job per freed slot, each paying a round trip and a scan per tenant. An idle
/// runner claims at once.
const GATHER: Duration = Duration::from_millis(1);

/// Waits for at least one free slot within the prefetch allowance and takes up to a batch of
/// them; `None` once stopping.
async fn free_slots<E>(shared: &Shared<E>) -> Option<OwnedSemaphorePermit> {
    let config = &shared.config;
    let capacity = config.concurrency.max(1) + config.prefetch;
    loop {
        let mut slots = tokio::select! {
            biased;
            _ = shared.stop.cancelled() => return None,
            permit = shared.slots.clone().acquire_owned() => permit.ok()?,
        };
        let allowed = config.concurrency.max(1) + shared.prefetch.allowance();
        let held = capacity - shared.slots.available_permits();
        if held > allowed {
            // Claimed jobs already wait for executors as long as they should.
            drop(slots);
            tokio::select! {
                biased;
                _ = shared.stop.cancelled() => return None,
                _ = shared.slot_freed.notified() => continue,
            }
        }
        let free = |shared: &Shared<E>| {
            let held = capacity - shared.slots.available_permits();
            allowed
                .saturating_sub(held)
                .min(config.batch_size.saturating_sub(1))
        };
        if free(shared) + 1 < config.batch_size.min(allowed) / 4
            && sleep_or_stop(&shared.stop, GATHER).await
        {
            return None;
        }
        let more = free(shared);
        if more > 0
            && let Ok(extra) = shared.slots.clone().try_acquire_many_owned(more as u32)
        {
            slots.merge(extra);
        }
        return Some(slots);
    }
}

/// The queue looked empty: sleep until a notification (or a completion, while a tenant is held
/// back by its max_running), the poll interval or a rate-limited tenant's next token, or stop.
/// Returns false on stop.
async fn wait_for_work<E>(shared: &Shared<E>, rate_wait: Option<Duration>) -> bool {
    let nap = rate_wait.map_or(shared.config.poll_interval, |wait| {
        wait.min(shared.config.poll_interval)
    });
    tokio::select! {
        biased;
        _ = shared.stop.cancelled() => false,
        _ = shared.wake.notified() => true,
        _ = tokio::time::sleep(nap) => true,
    }
}
