//! What operators see and do: list and show jobs, retry failed ones, cancel available ones,
//! and prune retained completed jobs. Jobs are read through `jobrunner.job_status`, where a
//! job inside a runner's batch transaction shows as running, held by that runner.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::types::Json;

use crate::job::JobState;
use crate::{Queue, QueueError, Result, count};

/// One failed attempt in a job's history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttemptError {
    /// The attempt's number.
    pub attempt: u32,
    /// When the failure was recorded.
    pub at: DateTime<Utc>,
    /// What went wrong.
    pub error: String,
    /// The sha256 of the plugin version that ran the attempt, when a plugin did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plugin_sha256: Option<String>,
}

/// Everything stored about a job.
#[derive(Debug, Clone, Serialize)]
pub struct JobRecord {
    /// The job's id.
    pub id: i64,
    /// Its type.
    pub job_type: String,
    /// Its tenant.
    pub tenant: String,
    /// Where it is in its life cycle.
    pub state: JobState,
    /// Its payload.
    pub payload: serde_json::Value,
    /// Lower runs first.
    pub priority: i32,
    /// When it is (or was) due.
    pub run_at: DateTime<Utc>,
    /// Attempts started so far.
    pub attempt: u32,
    /// Its own attempt limit; `None` means the runner's default.
    pub max_attempts: Option<u32>,
    /// The runner holding it, while running (under a lease, or in a batch transaction).
    pub lease_owner: Option<String>,
    /// When that lease runs out, while running under one.
    pub lease_expires_at: Option<DateTime<Utc>>,
    /// Its unique key, if deduplicated.
    pub unique_key: Option<String>,
    /// Every failed attempt, oldest first.
    pub errors: Vec<AttemptError>,
    /// The handler's result, for retained completed jobs.
    pub result: Option<serde_json::Value>,
    /// When it was enqueued.
    pub created_at: DateTime<Utc>,
    /// When it last changed.
    pub updated_at: DateTime<Utc>,
    /// The job whose attempt enqueued it (a follow-up), if any. That job may be gone:
    /// completed jobs are deleted unless retained.
    pub parent_id: Option<i64>,
    /// The schedule whose tick enqueued it (a name in its tenant), if any. The schedule may be
    /// gone.
    pub schedule: Option<String>,
}

impl JobRecord {
    /// The most recent failure, if any.
    pub fn last_error(&self) -> Option<&AttemptError> {
        self.errors.last()
    }
}

#[derive(sqlx::FromRow)]
struct JobRow {
    id: i64,
    job_type: String,
    tenant: String,
    state: String,
    payload: Json<serde_json::Value>,
    priority: i32,
    run_at: DateTime<Utc>,
    attempt: i32,
    max_attempts: Option<i32>,
    lease_owner: Option<String>,
    lease_expires_at: Option<DateTime<Utc>>,
    unique_key: Option<String>,
    errors: Json<Vec<AttemptError>>,
    result: Option<Json<serde_json::Value>>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    parent_id: Option<i64>,
    schedule: Option<String>,
}

impl From<JobRow> for JobRecord {
    fn from(row: JobRow) -> Self {
        JobRecord {
            id: row.id,
            job_type: row.job_type,
            tenant: row.tenant,
            state: row
                .state
                .parse()
                .expect("the database holds only known states"),
            payload: row.payload.0,
            priority: row.priority,
            run_at: row.run_at,
            attempt: count(row.attempt),
            max_attempts: row.max_attempts.map(count),
            lease_owner: row.lease_owner,
            lease_expires_at: row.lease_expires_at,
            unique_key: row.unique_key,
            errors: row.errors.0,
            result: row.result.map(|r| r.0),
            created_at: row.created_at,
            updated_at: row.updated_at,
            parent_id: row.parent_id,
            schedule: row.schedule,
        }
    }
}

/// The columns [`JobRow`] reads.
const JOB_COLUMNS: &str = "id, job_type, tenant, state::text AS state, payload, priority, run_at, \
     attempt, max_attempts, lease_owner, lease_expires_at, unique_key, errors, result, \
     created_at, updated_at, parent_id, schedule";

/// Which jobs to list. Empty filters match everything.
#[derive(Debug, Clone, Default)]
pub struct JobFilter {
    /// Only jobs in this state.
    pub state: Option<JobState>,
    /// Only jobs of this type.
    pub job_type: Option<String>,
    /// Only jobs of this tenant.
    pub tenant: Option<String>,
    /// Only the follow-ups of this job.
    pub parent: Option<i64>,
    /// Only the jobs this schedule enqueued (by name, in any tenant unless `tenant` is set).
    pub schedule: Option<String>,
    /// At most this many, newest first.
    pub limit: u32,
}

impl Queue {
    /// Jobs matching `filter`, newest first.
    pub async fn list_jobs(&self, filter: &JobFilter) -> Result<Vec<JobRecord>> {
        let rows: Vec<JobRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {JOB_COLUMNS}
               FROM jobrunner.job_status
              WHERE ($1::text IS NULL OR state = $1::jobrunner.job_state)
                AND ($2::text IS NULL OR job_type = $2)
                AND ($3::text IS NULL OR tenant = $3)
                AND ($5::bigint IS NULL OR parent_id = $5)
                AND ($6::text IS NULL OR schedule = $6)
              ORDER BY id DESC
              LIMIT $4"
        )))
        .bind(filter.state.map(JobState::as_str))
        .bind(filter.job_type.as_deref())
        .bind(filter.tenant.as_deref())
        .bind(i64::from(filter.limit))
        .bind(filter.parent)
        .bind(filter.schedule.as_deref())
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(JobRecord::from).collect())
    }

    /// The job with this id.
    pub async fn job(&self, id: i64) -> Result<JobRecord> {
        self.find_job(id).await?.ok_or(QueueError::NotFound(id))
    }

    async fn find_job(&self, id: i64) -> Result<Option<JobRecord>> {
        let row: Option<JobRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {JOB_COLUMNS} FROM jobrunner.job_status WHERE id = $1"
        )))
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(JobRecord::from))
    }

    /// Makes a failed job available again, due now. Its history stays; if it had used up its
    /// attempts (with the limit `default_max_attempts` when it sets none), it gets one more.
    pub async fn retry_job(&self, id: i64, default_max_attempts: u32) -> Result<JobRecord> {
        let now = self.now();
        let mut tx = self.pool.begin().await?;
        let row: Result<Option<JobRow>, sqlx::Error> =
            sqlx::query_as(sqlx::AssertSqlSafe(format!(
                "UPDATE jobrunner.jobs
                SET state = 'available', run_at = $2, updated_at = $2,
                    max_attempts = CASE WHEN attempt >= coalesce(max_attempts, $3)
                                        THEN attempt + 1 ELSE max_attempts END
              WHERE id = $1 AND state = 'failed'
          RETURNING {JOB_COLUMNS}"
            )))
            .bind(id)
            .bind(now)
            .bind(i32::try_from(default_max_attempts).unwrap_or(i32::MAX))
            .fetch_optional(&mut *tx)
            .await;
        let row = match row {
            Err(e) if is_unique_violation(&e) => {
                drop(tx);
                return Err(self.duplicate_of(id).await);
            }
            other => other?,
        };
        let Some(row) = row else {
            return Err(self.wrong_state(id, JobState::Failed, "retried").await);
        };
        crate::wake_runners(&mut *tx).await?;
        tx.commit().await?;
        Ok(row.into())
    }

    /// Cancels an available job. Running jobs are left alone.
    pub async fn cancel_job(&self, id: i64) -> Result<JobRecord> {
        let row: Option<JobRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "UPDATE jobrunner.jobs SET state = 'cancelled', updated_at = $2
              WHERE id = $1 AND state = 'available'
          RETURNING {JOB_COLUMNS}"
        )))
        .bind(id)
        .bind(self.now())
        .fetch_optional(&self.pool)
        .await?;
        match row {
            Some(row) => Ok(row.into()),
            None => Err(self.wrong_state(id, JobState::Available, "cancelled").await),
        }
    }

    /// Deletes up to `limit` completed jobs that finished more than `older_than` ago and
    /// returns how many it deleted. Bounded so that pruning never holds many locks at once.
    pub async fn prune_completed(&self, older_than: Duration, limit: u32) -> Result<u64> {
        let cutoff =
            self.now() - chrono::Duration::from_std(older_than).unwrap_or(chrono::Duration::MAX);
        let deleted = sqlx::query(
            "DELETE FROM jobrunner.jobs
              WHERE id IN (SELECT id FROM jobrunner.jobs
                            WHERE state = 'completed' AND updated_at < $1
                            ORDER BY updated_at
                            LIMIT $2
                              FOR UPDATE SKIP LOCKED)",
        )
        .bind(cutoff)
        .bind(i64::from(limit))
        .execute(&self.pool)
        .await?;
        Ok(deleted.rows_affected())
    }

    /// The error for an operation that found job `id` in the wrong state (or not at all).
    async fn wrong_state(&self, id: i64, expected: JobState, action: &'static str) -> QueueError {
        match self.find_job(id).await {
            Ok(Some(job)) => QueueError::WrongState {
                id,
                state: job.state,
                expected,
                action,
            },
            Ok(None) => QueueError::NotFound(id),
            Err(e) => e,
        }
    }

    /// The error for retrying job `id` while another job holds its unique key.
    async fn duplicate_of(&self, id: i64) -> QueueError {
        let pending: Result<Option<i64>, sqlx::Error> = sqlx::query_scalar(
            "SELECT p.id FROM jobrunner.jobs AS j
               JOIN jobrunner.jobs AS p
                 ON p.tenant = j.tenant AND p.unique_key = j.unique_key
                AND p.state IN ('available', 'running')
              WHERE j.id = $1",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await;
        match pending {
            Ok(Some(pending)) => QueueError::DuplicatePending { id, pending },
            Ok(None) => QueueError::Rejected(format!(
                "job {id} cannot be retried: a job with the same unique key is pending"
            )),
            Err(e) => e.into(),
        }
    }
}

fn is_unique_violation(error: &sqlx::Error) -> bool {
    error
        .as_database_error()
        .is_some_and(|db| db.code().as_deref() == Some("23505"))
}
