//! The heartbeat: extends the leases of everything this runner claimed and has not yet
//! recorded, every third of a lease.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::inflight::InFlight;
use super::service::Service;
use super::sleep_or_stop;
use crate::driver::Driver;

/// Extends leases until its shutdown token fires, which comes only after every outcome is
/// written, so no lease lapses during a shutdown.
pub(super) struct Heartbeat {
    pub driver: Driver,
    pub owner: String,
    pub lease: Duration,
    pub interval: Duration,
    pub inflight: Arc<InFlight>,
    /// Told when a renewal failed or waited on the database longer than an interval: the
    /// rescuer then pauses as for a stall of its own.
    pub stalls: watch::Sender<()>,
}

impl Service for Heartbeat {
    const NAME: &'static str = "heartbeat";

    async fn run(self, stop: CancellationToken) {
        while !sleep_or_stop(&stop, self.interval).await {
            self.renew().await;
        }
    }
}

impl Heartbeat {
    async fn renew(&self) {
        // Half an interval, not a whole one: a lease renewed just under an interval ago would
        // otherwise wait for the round after, and a slow round or a late timer would then cost
        // most of the lease's margin (a third of it) on a busy machine.
        let due = self.inflight.renewal_due(self.interval / 2);
        if due.is_empty() {
            return;
        }
        let jobs: Vec<(i64, u32)> = due.iter().map(|t| (t.job_id, t.attempt)).collect();
        let asked_at = Instant::now();
        match self
            .driver
            .extend_leases(&self.owner, &jobs, self.lease)
            .await
        {
            Ok(held) => {
                let lost = self.inflight.renewed(&due, &held, asked_at);
                if lost > 0 {
                    tracing::warn!(lost, "heartbeat found lost leases");
                }
                if asked_at.elapsed() > self.interval {
                    self.stalls.send_replace(());
                }
            }
            Err(error) => {
                self.stalls.send_replace(());
                tracing::warn!(%error, jobs = due.len(), "heartbeat failed");
            }
        }
    }
}
