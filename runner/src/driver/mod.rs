//! The runner's side of the queue: every statement a runner issues beyond what the
//! [client](jobrunner_client) offers. One file per concern: [claims](Driver::claim) and the
//! [floors](Floors) they start from, [batch transactions](OpenBatch),
//! [outcomes](Driver::record_outcomes) in batches,
//! [leases](Driver::rescue_expired), the runners' [announcements](Driver::announce_runner),
//! the [tenant policy](Driver::publish_tenants), [vacuuming](Driver::vacuum_if_needed) and
//! firing schedules' [ticks](ticks).
//!
//! A [`Driver`] wraps a client [`Queue`] (its pool and clock) and keeps what only a runner
//! needs (which claim function suits the tenant policy). Time comes from the queue's clock.

mod batch;
mod claim;
mod floors;
mod lease;
mod outcome;
mod runners;
mod tenants;
pub mod ticks;
mod vacuum;

use std::sync::Arc;

use chrono::{DateTime, Utc};
use jobrunner_client::{Queue, Result, Statements};

pub use batch::OpenBatch;
pub use claim::{ClaimRequest, ClaimType, Claimed};
pub use floors::Floors;
pub use lease::Rescued;
pub use outcome::{MAX_ERROR_LEN, Outcome, Settlement};
pub use runners::{RunnerInfo, Totals};
pub use tenants::TenantOverview;
pub use vacuum::Vacuum;

/// A runner's handle on the queue. Cheap to clone; clones share the claim path's state.
#[derive(Debug, Clone)]
pub struct Driver {
    queue: Queue,
    claim_path: Arc<claim::ClaimPath>,
}

impl Driver {
    /// The runner's side of `queue`.
    pub fn new(queue: Queue) -> Self {
        Self {
            queue,
            claim_path: Arc::default(),
        }
    }

    /// The client queue this driver works on.
    pub fn queue(&self) -> &Queue {
        &self.queue
    }

    /// A pooled connection, then the time: a statement that grants a lease from "now" must
    /// not take a time read before it waited for a connection (the pool exhausted, the
    /// database away), or the lease it grants may have lapsed before it is written.
    /// Through a pooler the connection is a transaction: the caller finishes it.
    async fn connection_then_now(&self) -> Result<(Statements, DateTime<Utc>)> {
        let conn = self.queue.db().statements().await?;
        Ok((conn, self.queue.now()))
    }
}

/// Announces jobs that became available again (retried after a failure, requeued, rescued) by
/// the key of each, once committed, as new jobs announce themselves: idle runners wake, and
/// claim floors above them come down (see [`Floors`]). The jobs are safe either way, so a
/// failure is only logged: runners then find them at their next poll, or once they forget
/// their floors.
async fn announce_jobs<'e>(
    db: impl sqlx::PgExecutor<'e>,
    keys: impl IntoIterator<Item = floors::Key>,
) {
    let Some(low) = floors::Key::lower_bound(keys) else {
        return;
    };
    let sent = sqlx::query("SELECT jobrunner.announce_jobs($1, $2, $3)")
        .bind(low.priority)
        .bind(low.run_at)
        .bind(low.id)
        .execute(db)
        .await;
    if let Err(error) = sent {
        tracing::warn!(%error, "could not announce jobs made available again");
    }
}
