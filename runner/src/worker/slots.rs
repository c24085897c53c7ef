//! Slots: a job holds one from its claim until its outcome is queued for writing, so a slow
//! database pushes back on claiming. `concurrency` slots are for running jobs; the rest are
//! the prefetch buffer of claimed jobs waiting for an executor, used as far as the
//! [`Prefetch`] allowance says.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

use super::WorkerConfig;
use super::prefetch::Prefetch;

/// How long a busy runner waits for more slots before claiming: claims then come in batches
/// instead of one job per freed slot, each paying a round trip and a scan per tenant. An idle
/// runner claims at once.
const GATHER: Duration = Duration::from_millis(1);

/// The worker's slots, shared by its claim loops and executors.
pub(super) struct Slots {
    semaphore: Arc<Semaphore>,
    concurrency: usize,
    capacity: usize,
    batch_size: usize,
    prefetch: Prefetch,
    /// A job gave back its slot.
    freed: Notify,
}

impl Slots {
    pub fn new(config: &WorkerConfig) -> Self {
        let concurrency = config.concurrency.max(1);
        let capacity = concurrency + config.prefetch;
        Self {
            semaphore: Arc::new(Semaphore::new(capacity)),
            concurrency,
            capacity,
            batch_size: config.batch_size,
            prefetch: Prefetch::new(concurrency, config.prefetch),
            freed: Notify::new(),
        }
    }

    /// Folds one job's run time into the prefetch allowance.
    pub fn record(&self, took: Duration) {
        self.prefetch.record(took);
    }

    /// A slot was given back (its permit dropped): a claim loop may be waiting for it.
    pub fn freed(&self) {
        self.freed.notify_one();
    }

    /// Returns the slots a claim reserved and did not fill. The other claim loop may be
    /// waiting for them: while this claim ran, they counted against its prefetch allowance.
    pub fn give_back(&self, slots: OwnedSemaphorePermit) {
        let unused = slots.num_permits();
        drop(slots);
        if unused > 0 {
            self.freed();
        }
    }

    /// Waits for at least one free slot within the prefetch allowance and takes up to a batch
    /// of them; `None` once `stop` fires.
    pub async fn take(&self, stop: &CancellationToken) -> Option<OwnedSemaphorePermit> {
        loop {
            let mut slots = tokio::select! {
                biased;
                _ = stop.cancelled() => return None,
                permit = self.semaphore.clone().acquire_owned() => permit.ok()?,
            };
            let allowed = self.concurrency + self.prefetch.allowance();
            if self.held() > allowed {
                // Claimed jobs already wait for executors as long as they should.
                drop(slots);
                tokio::select! {
                    biased;
                    _ = stop.cancelled() => return None,
                    _ = self.freed.notified() => continue,
                }
            }
            let free = || {
                allowed
                    .saturating_sub(self.held())
                    .min(self.batch_size.saturating_sub(1))
            };
            if free() + 1 < self.batch_size.min(allowed) / 4 {
                tokio::select! {
                    biased;
                    _ = stop.cancelled() => return None,
                    _ = tokio::time::sleep(GATHER) => {}
                }
            }
            let more = free();
            if more > 0
                && let Ok(extra) = self.semaphore.clone().try_acquire_many_owned(more as u32)
            {
                slots.merge(extra);
            }
            return Some(slots);
        }
    }

    fn held(&self) -> usize {
        self.capacity - self.semaphore.available_permits()
    }
}
