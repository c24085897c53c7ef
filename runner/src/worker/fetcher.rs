//! The claim loop: whenever slots are free and ripe jobs may exist, claim a batch and start an
//! attempt task for each job.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, mpsc};
use tokio_util::task::TaskTracker;

use super::attempt::{self, Report};
use super::{Shared, retry_delay, sleep_or_stop};
use crate::executor::Executor;
use crate::queue::ClaimRequest;

/// Claims until `shared.stop` fires. Claimed jobs run as tasks on `tracker`.
pub(super) async fn run<E: Executor>(
    shared: Arc<Shared<E>>,
    reports: mpsc::Sender<Report>,
    tracker: TaskTracker,
) {
    let mut failures = 0;
    while let Some(mut slots) = free_slots(&shared).await {
        let limit = slots.num_permits();
        let job_types = shared.executor.job_types();
        let request = ClaimRequest {
            owner: &shared.config.owner,
            job_types: &job_types,
            limit,
            lease: shared.config.lease,
            default_max_attempts: shared.config.retry.max_attempts,
        };
        let jobs = match shared.queue.claim(&request).await {
            Ok(jobs) => jobs,
            Err(error) => {
                drop(slots);
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
        let drained = jobs.len() < limit;
        for job in jobs {
            let slot = slots
                .split(1)
                .expect("one slot was reserved per claimed job");
            let ticket = shared.inflight.insert(&job);
            tracker.spawn(attempt::run(
                shared.clone(),
                job,
                ticket,
                slot,
                reports.clone(),
            ));
        }
        drop(slots);
        if drained && !wait_for_work(&shared).await {
            break;
        }
    }
    tracing::debug!("stopped claiming");
}

/// Waits for at least one free slot and takes up to a batch of them; `None` once stopping.
async fn free_slots<E>(shared: &Shared<E>) -> Option<OwnedSemaphorePermit> {
    let mut slots = tokio::select! {
        biased;
        _ = shared.stop.cancelled() => return None,
        permit = shared.slots.clone().acquire_owned() => permit.ok()?,
    };
    let more = shared
        .slots
        .available_permits()
        .min(shared.config.batch_size.saturating_sub(1));
    if more > 0
        && let Ok(extra) = shared.slots.clone().try_acquire_many_owned(more as u32)
    {
        slots.merge(extra);
    }
    Some(slots)
}

/// The queue looked empty: sleep until a notification, the poll interval, or stop. Returns
/// false on stop.
async fn wait_for_work<E>(shared: &Shared<E>) -> bool {
    tokio::select! {
        biased;
        _ = shared.stop.cancelled() => false,
        _ = shared.wake.notified() => true,
        _ = tokio::time::sleep(shared.config.poll_interval) => true,
    }
}
