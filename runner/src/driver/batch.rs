//! Batch transactions: short jobs claimed by locking their rows in a transaction that stays
//! open while they run and writes their outcomes as it commits. `runner/sql/batches.sql` has the
//! protocol and what happens when a runner dies, freezes or loses its connection mid-batch.

use std::time::Duration;

use chrono::{DateTime, Utc};
use jobrunner_client::{Db, Result};
use sqlx::{PgConnection, Postgres, Transaction};

use super::Driver;
use crate::job::Job;

/// How long Postgres lets a batch transaction sit idle, or run one statement, before it ends
/// it: twice the runner's bound plus a second, so that a live runner on a busy machine
/// commits well before, and a frozen one loses its jobs within seconds.
fn cutoff(bound: Duration) -> Duration {
    bound * 2 + Duration::from_secs(1)
}

/// An open batch transaction: the jobs it claimed stay locked by it until
/// [`Driver::finish_batch`] commits it. Dropped unfinished, it rolls back (or its connection
/// is gone): the jobs become claimable again, and if its row was written their attempts are
/// counted by the next rescue.
#[derive(Debug)]
pub struct OpenBatch {
    id: i64,
    tx: Transaction<'static, Postgres>,
}

impl OpenBatch {
    /// Opens a batch transaction with a random id, holding the id's advisory lock and bounded
    /// by [`cutoff`].
    pub(super) async fn begin(db: &Db, bound: Duration) -> Result<Self> {
        let id = fastrand::i64(..);
        let ms = cutoff(bound).as_millis();
        // One round trip; every value is a number formatted here.
        let tx = db
            .begin_with(format!(
                "BEGIN;
                 SET LOCAL idle_in_transaction_session_timeout = {ms};
                 SET LOCAL statement_timeout = {ms};
                 SELECT pg_advisory_xact_lock({id})"
            ))
            .await?;
        Ok(Self { id, tx })
    }

    /// The batch's id: its row in `jobrunner.batches` and its advisory lock key.
    pub fn id(&self) -> i64 {
        self.id
    }

    /// The transaction's connection.
    pub(super) fn conn(&mut self) -> &mut PgConnection {
        &mut self.tx
    }

    /// Commits.
    pub(super) async fn commit(self) -> Result<()> {
        Ok(self.tx.commit().await?)
    }
}

impl Driver {
    /// Writes `batch`'s row, naming `jobs`, on a connection of the pool: from now on, if the
    /// batch transaction ends without committing, the next rescue counts their attempts.
    pub(super) async fn register_batch(
        &self,
        batch: &OpenBatch,
        owner: &str,
        jobs: &[Job],
        now: DateTime<Utc>,
    ) -> Result<()> {
        let ids: Vec<i64> = jobs.iter().map(|job| job.id).collect();
        sqlx::query("SELECT jobrunner.open_batch($1, $2, $3, $4)")
            .bind(batch.id)
            .bind(owner)
            .bind(ids)
            .bind(now)
            .execute(self.queue.db())
            .await?;
        Ok(())
    }
}
