//! Claiming ripe jobs: one statement locks up to N of them with `FOR UPDATE SKIP LOCKED`,
//! marks them running under a lease and returns them.

use std::time::Duration;

use chrono::{DateTime, Utc};

use super::{Queue, Result, count};
use crate::clock::later;
use crate::job::Job;

/// A job type a runner claims, with its per-type rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimType {
    /// The job type.
    pub job_type: String,
    /// Max attempts for its jobs that set none; `None`: the request's default.
    pub max_attempts: Option<u32>,
    /// Most jobs of the type running at once, across every runner sharing the database;
    /// `None`: no limit.
    pub concurrency: Option<u32>,
}

impl From<&str> for ClaimType {
    fn from(job_type: &str) -> Self {
        Self {
            job_type: job_type.to_owned(),
            max_attempts: None,
            concurrency: None,
        }
    }
}

/// What a runner asks for when it claims.
#[derive(Debug, Clone)]
pub struct ClaimRequest<'a> {
    /// The runner's identity, stored as the lease owner.
    pub owner: &'a str,
    /// Only jobs of these types are claimed.
    pub job_types: &'a [ClaimType],
    /// At most this many jobs.
    pub limit: usize,
    /// How long the lease lasts before a heartbeat must extend it.
    pub lease: Duration,
    /// Max attempts for jobs that set none and whose type sets none.
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

/// A claim statement: `$ripe` defines the CTEs `types(job_type, max_attempts, cap)` and
/// `ripe(id)`; the rest marks those jobs running. `$1` is now, `$2` the type names, `$3` the
/// limit, `$4`/`$5` the lease, `$6` the types' max attempts, `$7` the default, `$8` the caps.
macro_rules! claim_statement {
    ($ripe:literal) => {
        concat!(
            $ripe,
            "
    UPDATE jobrunner.jobs AS j
       SET state = 'running', attempt = j.attempt + 1, lease_owner = $4,
           lease_expires_at = $5, updated_at = $1
      FROM ripe, types AS t
     WHERE j.id = ripe.id AND t.job_type = j.job_type
 RETURNING j.id, j.job_type, j.tenant, j.payload::text AS payload, j.priority, j.attempt,
           coalesce(j.max_attempts, t.max_attempts, $7) AS max_attempts, j.run_at,
           j.created_at"
        )
    };
}

/// Claims from types without a concurrency limit: the hot path, one index scan in claim
/// order.
const CLAIM_FREE: &str = claim_statement!(
    "
    WITH types AS (
        SELECT * FROM unnest($2::text[], $6::int[], $8::int[]) AS t(job_type, max_attempts, cap)
    ),
    ripe AS (
        SELECT id
          FROM jobrunner.jobs
         WHERE state = 'available' AND run_at <= $1 AND job_type = ANY($2)
         ORDER BY priority, run_at, id
         LIMIT $3
           FOR UPDATE SKIP LOCKED
    )"
);

/// Claims from types with a concurrency limit, each up to its room: its cap minus its jobs
/// running on any runner. The caller holds the types' advisory locks, so two runners cannot
/// both see the same room.
const CLAIM_LIMITED: &str = claim_statement!(
    "
    WITH types AS (
        SELECT * FROM unnest($2::text[], $6::int[], $8::int[]) AS t(job_type, max_attempts, cap)
    ),
    room AS (
        SELECT t.job_type,
               greatest(t.cap - (SELECT count(*) FROM jobrunner.jobs AS r
                                  WHERE r.state = 'running' AND r.job_type = t.job_type), 0)
                   AS room
          FROM types AS t
    ),
    ripe AS (
        SELECT picked.id
          FROM room
         CROSS JOIN LATERAL (
               SELECT id
                 FROM jobrunner.jobs
                WHERE state = 'available' AND run_at <= $1 AND job_type = room.job_type
                ORDER BY priority, run_at, id
                LIMIT room.room
                  FOR UPDATE SKIP LOCKED
         ) AS picked
         LIMIT $3
    )"
);

impl Queue {
    /// Claims up to `request.limit` ripe jobs, most urgent first (priority, run_at, id). Each
    /// claimed job is running, leased to `request.owner`, and its attempt is counted. Jobs
    /// locked by a concurrent claimer are skipped, never claimed twice. Types with a
    /// concurrency limit are claimed first, each only up to its room.
    pub async fn claim(&self, request: &ClaimRequest<'_>) -> Result<Vec<Job>> {
        if request.limit == 0 || request.job_types.is_empty() {
            return Ok(Vec::new());
        }
        let (limited, free): (Vec<&ClaimType>, Vec<&ClaimType>) = request
            .job_types
            .iter()
            .partition(|t| t.concurrency.is_some());
        let mut jobs = Vec::new();
        if !limited.is_empty() {
            let mut tx = self.pool.begin().await?;
            // In name order on every runner, so two claimers never wait on each other in a
            // cycle.
            let mut names: Vec<&str> = limited.iter().map(|t| t.job_type.as_str()).collect();
            names.sort_unstable();
            sqlx::query(
                "SELECT pg_advisory_xact_lock(hashtextextended('jobrunner.concurrency:' || t, 0))
                   FROM (SELECT t FROM unnest($1::text[]) AS t ORDER BY t) AS sorted",
            )
            .bind(&names)
            .execute(&mut *tx)
            .await?;
            jobs = self
                .claim_from(&mut *tx, CLAIM_LIMITED, request, &limited, request.limit)
                .await?;
            tx.commit().await?;
        }
        let room = request.limit - jobs.len().min(request.limit);
        if room > 0 && !free.is_empty() {
            let claimed = self
                .claim_from(&self.pool, CLAIM_FREE, request, &free, room)
                .await?;
            jobs.extend(claimed);
        }
        // UPDATE ... RETURNING does not keep the CTE's order.
        jobs.sort_by_key(|job| (job.priority, job.run_at, job.id));
        Ok(jobs)
    }

    async fn claim_from<'e>(
        &self,
        db: impl sqlx::PgExecutor<'e>,
        statement: &'static str,
        request: &ClaimRequest<'_>,
        types: &[&ClaimType],
        limit: usize,
    ) -> Result<Vec<Job>> {
        let now = self.now();
        let int = |n: u32| i32::try_from(n).unwrap_or(i32::MAX);
        let names: Vec<&str> = types.iter().map(|t| t.job_type.as_str()).collect();
        let max_attempts: Vec<Option<i32>> =
            types.iter().map(|t| t.max_attempts.map(int)).collect();
        let caps: Vec<Option<i32>> = types.iter().map(|t| t.concurrency.map(int)).collect();
        let rows: Vec<ClaimedRow> = sqlx::query_as(statement)
            .bind(now)
            .bind(names)
            .bind(i64::try_from(limit).unwrap_or(i64::MAX))
            .bind(request.owner)
            .bind(later(now, request.lease))
            .bind(max_attempts)
            .bind(int(request.default_max_attempts))
            .bind(caps)
            .fetch_all(db)
            .await?;
        Ok(rows.into_iter().map(Job::from).collect())
    }
}
