//! Leases: heartbeats that extend them, and the rescuer that returns expired ones, and the
//! attempts of batch transactions that ended without committing.
//!
//! A runner that stops heartbeating (killed, paused, cut off) loses its jobs once their leases
//! expire. The rescuer, which every runner runs, counts the interrupted attempt and makes the
//! job available again with backoff, or failed when it has no attempts left. Two rescuers
//! racing on one job are harmless: the update is fenced on the expired lease it saw.

use std::time::Duration;

use chrono::{DateTime, Utc};
use jobrunner_client::{Result, count};

use super::claim::{ClaimType, type_columns};
use super::floors::Key;
use super::{Driver, announce_jobs};
use crate::clock::later;
use crate::job::JobState;
use crate::retry::RetryPolicy;

/// A job the rescuer took back from a runner that lost its lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rescued {
    /// The job.
    pub job_id: i64,
    /// Its type.
    pub job_type: String,
    /// Its tenant.
    pub tenant: String,
    /// The attempt that was interrupted.
    pub attempt: u32,
    /// The runner that held the lease.
    pub owner: String,
    /// `Available` (will run again) or `Failed` (no attempts left).
    pub state: JobState,
    /// The attempt ran in a batch transaction that ended without committing; otherwise its
    /// lease expired.
    pub in_batch: bool,
}

/// A row the rescuer updated.
#[derive(sqlx::FromRow)]
struct RescuedRow {
    id: i64,
    job_type: String,
    tenant: String,
    attempt: i32,
    owner: String,
    state: String,
    priority: i32,
    run_at: DateTime<Utc>,
}

impl RescuedRow {
    fn into_rescued(self, in_batch: bool) -> Rescued {
        Rescued {
            job_id: self.id,
            job_type: self.job_type,
            tenant: self.tenant,
            attempt: count(self.attempt),
            owner: self.owner,
            state: self.state.parse().unwrap_or(JobState::Available),
            in_batch,
        }
    }

    fn available(&self) -> Option<Key> {
        (self.state == "available").then_some(Key {
            priority: self.priority,
            run_at: self.run_at,
            id: self.id,
        })
    }
}

#[derive(sqlx::FromRow)]
struct ExpiredRow {
    id: i64,
    attempt: i32,
    max_attempts: i32,
    lease_owner: String,
}

impl Driver {
    /// Extends the leases `owner` holds on `jobs` (id, attempt) to now + `lease` and returns
    /// the ids still held. A missing id is a lost lease: its outcome will be refused.
    pub async fn extend_leases(
        &self,
        owner: &str,
        jobs: &[(i64, u32)],
        lease: Duration,
    ) -> Result<Vec<i64>> {
        if jobs.is_empty() {
            return Ok(Vec::new());
        }
        let (mut conn, now) = self.connection_then_now().await?;
        let ids: Vec<i64> = jobs.iter().map(|(id, _)| *id).collect();
        let attempts: Vec<i32> = jobs
            .iter()
            .map(|(_, a)| i32::try_from(*a).unwrap_or(i32::MAX))
            .collect();
        let held = sqlx::query_scalar(
            "UPDATE jobrunner.jobs AS j
                SET lease_expires_at = $4, updated_at = $5
               FROM unnest($1::bigint[], $2::int[]) AS t(id, attempt)
              WHERE j.id = t.id AND j.attempt = t.attempt
                AND j.state = 'running' AND j.lease_owner = $3
          RETURNING j.id",
        )
        .bind(ids)
        .bind(attempts)
        .bind(owner)
        .bind(later(now, lease))
        .bind(now)
        .fetch_all(&mut *conn)
        .await?;
        conn.finish().await?;
        Ok(held)
    }

    /// Returns up to `limit` jobs whose lease has expired to `available` (keeping their
    /// `run_at`) or, with no attempts left, `failed`, counting the interrupted attempt.
    ///
    /// A job that sets no max attempts has those of its type in `job_types` (a plugin
    /// manifest's, as when it was claimed), else the `policy`'s.
    ///
    /// `before_commit` sees what it rescued before it commits: the rescuer writes its outcome
    /// lines there, so that no rescue commits without them.
    pub async fn rescue_expired(
        &self,
        policy: &RetryPolicy,
        job_types: &[ClaimType],
        limit: usize,
        before_commit: impl FnOnce(&[Rescued]),
    ) -> Result<Vec<Rescued>> {
        let now = self.queue.now();
        let (types, type_attempts) = type_columns(job_types);
        let expired: Vec<ExpiredRow> = sqlx::query_as(
            "SELECT j.id, j.attempt, coalesce(j.max_attempts, ty.max_attempts, $2) AS max_attempts,
                    j.lease_owner
               FROM jobrunner.jobs AS j
               LEFT JOIN unnest($4::text[], $5::int[]) AS ty(t, max_attempts) ON ty.t = j.job_type
              WHERE j.state = 'running' AND j.lease_expires_at < $1
              ORDER BY j.lease_expires_at
              LIMIT $3",
        )
        .bind(now)
        .bind(i32::try_from(policy.max_attempts).unwrap_or(i32::MAX))
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .bind(types)
        .bind(type_attempts)
        .fetch_all(self.queue.db())
        .await?;
        if expired.is_empty() {
            return Ok(Vec::new());
        }

        // A rescued job keeps its run_at, and so its place in line: the lease it had to
        // outlive is its backoff, and a job pushed behind a backlog would wait for all of it.
        let retry: Vec<bool> = expired
            .iter()
            .map(|row| count(row.attempt) < count(row.max_attempts))
            .collect();
        let mut tx = self.queue.db().begin().await?;
        let rows: Vec<RescuedRow> = sqlx::query_as(
            "UPDATE jobrunner.jobs AS j
                SET state = (CASE WHEN t.retry THEN 'available'
                                  ELSE 'failed' END)::jobrunner.job_state,
                    lease_owner = NULL,
                    lease_expires_at = NULL,
                    errors = j.errors || jsonb_build_array(jsonb_build_object(
                        'attempt', j.attempt, 'at', $5::timestamptz,
                        'error', format('lease expired: runner %s stopped heartbeating',
                                        j.lease_owner))),
                    updated_at = $5
               FROM unnest($1::bigint[], $2::int[], $3::text[], $4::bool[])
                    AS t(id, attempt, owner, retry)
              WHERE j.id = t.id AND j.attempt = t.attempt AND j.lease_owner = t.owner
                AND j.state = 'running' AND j.lease_expires_at < $5
          RETURNING j.id, j.job_type, j.tenant, j.attempt, t.owner, j.state::text AS state,
                    j.priority, j.run_at",
        )
        .bind(expired.iter().map(|r| r.id).collect::<Vec<_>>())
        .bind(expired.iter().map(|r| r.attempt).collect::<Vec<_>>())
        .bind(
            expired
                .iter()
                .map(|r| r.lease_owner.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(retry)
        .bind(now)
        .fetch_all(&mut *tx)
        .await?;
        self.commit_rescued(tx, rows, false, before_commit).await
    }

    /// Counts the attempts of up to about `limit` jobs of batch transactions that ended without
    /// committing (see `jobrunner.rescue_batches`): available again, or failed with no
    /// attempts left. Max attempts as for [`Driver::rescue_expired`].
    /// `before_commit` as for [`Driver::rescue_expired`].
    pub async fn rescue_batches(
        &self,
        policy: &RetryPolicy,
        job_types: &[ClaimType],
        limit: usize,
        before_commit: impl FnOnce(&[Rescued]),
    ) -> Result<Vec<Rescued>> {
        let (types, type_attempts) = type_columns(job_types);
        let mut tx = self.queue.db().begin().await?;
        let rows: Vec<RescuedRow> =
            sqlx::query_as("SELECT * FROM jobrunner.rescue_batches($1, $2, $3, $4, $5)")
                .bind(self.queue.now())
                .bind(types)
                .bind(type_attempts)
                .bind(i32::try_from(policy.max_attempts).unwrap_or(i32::MAX))
                .bind(i32::try_from(limit).unwrap_or(i32::MAX))
                .fetch_all(&mut *tx)
                .await?;
        self.commit_rescued(tx, rows, true, before_commit).await
    }

    /// Shows `before_commit` what a rescue did, commits it, and announces the jobs it made
    /// available: those due now start at once, not at the next poll, and floors come down.
    async fn commit_rescued(
        &self,
        tx: sqlx::Transaction<'static, sqlx::Postgres>,
        rows: Vec<RescuedRow>,
        in_batch: bool,
        before_commit: impl FnOnce(&[Rescued]),
    ) -> Result<Vec<Rescued>> {
        let available: Vec<Key> = rows.iter().filter_map(RescuedRow::available).collect();
        let rescued: Vec<Rescued> = rows
            .into_iter()
            .map(|row| row.into_rescued(in_batch))
            .collect();
        if !rescued.is_empty() {
            before_commit(&rescued);
        }
        tx.commit().await?;
        announce_jobs(self.queue.db(), available).await;
        Ok(rescued)
    }
}
