//! The pruner: deletes retained completed jobs once they age out.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::service::Service;
use super::sleep_or_stop;
use crate::Queue;

/// Most completed jobs deleted per statement.
const PRUNE_BATCH: u32 = 1000;

/// Deletes completed jobs older than `keep` until claiming stops.
pub(super) struct Pruner {
    pub queue: Queue,
    pub keep: Duration,
}

impl Service for Pruner {
    const NAME: &'static str = "pruner";

    async fn run(self, stop: CancellationToken) {
        let interval = (self.keep / 10).clamp(Duration::from_secs(1), Duration::from_secs(60));
        while !sleep_or_stop(&stop, interval).await {
            loop {
                match self.queue.prune_completed(self.keep, PRUNE_BATCH).await {
                    Ok(n) if n == u64::from(PRUNE_BATCH) && !stop.is_cancelled() => continue,
                    Ok(n) => {
                        if n > 0 {
                            tracing::debug!(deleted = n, "pruned completed jobs");
                        }
                        break;
                    }
                    Err(error) => {
                        tracing::warn!(%error, "pruning completed jobs failed");
                        break;
                    }
                }
            }
        }
    }
}
