//! Claiming ripe jobs: one statement locks up to N of them with `FOR UPDATE SKIP LOCKED`,
//! marks them running under a lease and returns them.

use std::time::Duration;

use chrono::{DateTime, Utc};

use super::{Queue, Result, count};
use crate::clock::later;
use crate::job::Job;

/// What a runner asks for when it claims.
#[derive(Debug, Clone)]
pub struct ClaimRequest<'a> {
    /// The runner's identity, stored as the lease owner.
    pub owner: &'a str,
    /// Only jobs of these types are claimed.
    pub job_types: &'a [String],
    /// At most this many jobs.
    pub limit: usize,
    /// How long the lease lasts before a heartbeat must extend it.
    pub lease: Duration,
    /// Max attempts for jobs that do not set their own.
    pub default_max_attempts: u32,
}

#[derive(sqlx::FromRow)]
struct ClaimedRow {
    id: i64,
    job_type: String,
    tenant: String,
    payload: String,
    priority: i32,
    attempt: i32,
    max_attempts: i32,
    run_at: DateTime<Utc>,
    created_at: DateTime<Utc>,
}

impl From<ClaimedRow> for Job {
    fn from(row: ClaimedRow) -> Self {
        Job {
            id: row.id,
            job_type: row.job_type,
            tenant: row.tenant,
            payload: row.payload,
            priority: row.priority,
            attempt: count(row.attempt),
            max_attempts: count(row.max_attempts),
            run_at: row.run_at,
            created_at: row.created_at,
        }
    }
}

impl Queue {
    /// Claims up to `request.limit` ripe jobs, most urgent first (priority, run_at, id). Each
    /// claimed job is running, leased to `request.owner`, and its attempt is counted. Jobs
    /// locked by a concurrent claimer are skipped, never claimed twice.
    pub async fn claim(&self, request: &ClaimRequest<'_>) -> Result<Vec<Job>> {
        if request.limit == 0 || request.job_types.is_empty() {
            return Ok(Vec::new());
        }
        let now = self.now();
        let rows: Vec<ClaimedRow> = sqlx::query_as(
            "WITH ripe AS (
                 SELECT id
                   FROM jobrunner.jobs
                  WHERE state = 'available' AND run_at <= $1 AND job_type = ANY($2)
                  ORDER BY priority, run_at, id
                  LIMIT $3
                    FOR UPDATE SKIP LOCKED
             )
             UPDATE jobrunner.jobs AS j
                SET state = 'running', attempt = j.attempt + 1, lease_owner = $4,
                    lease_expires_at = $5, updated_at = $1
               FROM ripe
              WHERE j.id = ripe.id
          RETURNING j.id, j.job_type, j.tenant, j.payload::text AS payload, j.priority,
                    j.attempt, coalesce(j.max_attempts, $6) AS max_attempts, j.run_at,
                    j.created_at",
        )
        .bind(now)
        .bind(request.job_types)
        .bind(i64::try_from(request.limit).unwrap_or(i64::MAX))
        .bind(request.owner)
        .bind(later(now, request.lease))
        .bind(i32::try_from(request.default_max_attempts).unwrap_or(i32::MAX))
        .fetch_all(&self.pool)
        .await?;
        let mut jobs: Vec<Job> = rows.into_iter().map(Job::from).collect();
        // UPDATE ... RETURNING does not keep the CTE's order.
        jobs.sort_by_key(|job| (job.priority, job.run_at, job.id));
        Ok(jobs)
    }
}
