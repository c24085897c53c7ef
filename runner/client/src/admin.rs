//! What operators see and do: list and show jobs, retry failed ones, cancel available ones,
//! and prune retained completed jobs. Jobs are read through `jobrunner.job_status`, where a
//! job inside a runner's batch transaction shows as running, held by that runner.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::types::Json;
use sqlx::{Postgres, QueryBuilder};

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

/// What one attempt did, as its runner kept it with the job: the tail of the guest's log (its
/// log lines, stdout and stderr) and the outgoing HTTP requests it made. Kept for the last
/// [`MAX_ATTEMPT_LOGS`] attempts that logged or requested anything.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttemptLog {
    /// The attempt's number.
    pub attempt: u32,
    /// The last lines the guest wrote, one per line, each starting with its level or stream;
    /// at most the runner's `keep_guest_log` bytes, older lines cut.
    pub log: String,
    /// Whether older lines were cut.
    #[serde(default)]
    pub log_cut: bool,
    /// Its outgoing HTTP requests, in order (the first [`MAX_HTTP_CALLS`]).
    #[serde(default)]
    pub http: Vec<HttpCall>,
}

/// Attempts whose logs a job keeps.
pub const MAX_ATTEMPT_LOGS: usize = 10;

/// Requests one attempt's log keeps.
pub const MAX_HTTP_CALLS: usize = 100;

/// One outgoing HTTP request of an attempt, as the host's log line tells it (never the query
/// string, user info or headers).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HttpCall {
    /// The method.
    pub method: String,
    /// `scheme://host:port/path`, secrets redacted.
    pub url: String,
    /// The response's status, if one came.
    pub status: Option<u16>,
    /// How long it took, in milliseconds.
    pub duration_ms: u64,
    /// Why it failed or was refused, if it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
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
    /// Who cancelled it, or asked the runner running it to stop it.
    pub cancelled_by: Option<String>,
    /// What its last attempts logged and requested, oldest first.
    pub attempt_logs: Vec<AttemptLog>,
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
    cancelled_by: Option<String>,
    attempt_logs: Json<Vec<AttemptLog>>,
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
            cancelled_by: row.cancelled_by,
            attempt_logs: row.attempt_logs.0,
        }
    }
}

/// The columns [`JobRow`] reads.
const JOB_COLUMNS: &str = "id, job_type, tenant, state::text AS state, payload, priority, run_at, \
     attempt, max_attempts, lease_owner, lease_expires_at, unique_key, errors, result, \
     created_at, updated_at, parent_id, schedule, cancelled_by, attempt_logs";

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
    /// Only jobs enqueued at or after this time.
    pub created_from: Option<DateTime<Utc>>,
    /// Only jobs enqueued before this time.
    pub created_until: Option<DateTime<Utc>>,
    /// Only jobs with a smaller id: the cursor of the next page, newest first.
    pub before_id: Option<i64>,
    /// At most this many, newest first.
    pub limit: u32,
}

impl JobFilter {
    /// Appends ` WHERE ...` with this filter's conditions (not its cursor or limit) to
    /// `query`, over `jobrunner.job_status` or `jobrunner.jobs`. Only the filters given become
    /// conditions, so every query gets a plan for the indexes it can use.
    fn push_conditions(&self, query: &mut QueryBuilder<Postgres>) {
        query.push(" WHERE true");
        if let Some(state) = self.state {
            query.push(" AND state = ").push_bind(state.as_str());
            query.push("::jobrunner.job_state");
        }
        if let Some(job_type) = &self.job_type {
            query.push(" AND job_type = ").push_bind(job_type.clone());
        }
        if let Some(tenant) = &self.tenant {
            query.push(" AND tenant = ").push_bind(tenant.clone());
        }
        if let Some(parent) = self.parent {
            query.push(" AND parent_id = ").push_bind(parent);
        }
        if let Some(schedule) = &self.schedule {
            query.push(" AND schedule = ").push_bind(schedule.clone());
        }
        if let Some(from) = self.created_from {
            query.push(" AND created_at >= ").push_bind(from);
        }
        if let Some(until) = self.created_until {
            query.push(" AND created_at < ").push_bind(until);
        }
    }

    /// The query of one page of `columns` of `jobrunner.job_status`: each part of it that
    /// the state filter leaves (finished, available and running jobs, and those batch
    /// transactions hold) read newest first from the cursor, with the limit, then merged.
    /// Each part has partial indexes of its own (the finished jobs' by type and by tenant,
    /// the backlog's, the leases'), which a scan of the whole table would not use.
    ///
    /// With `whole_range`, each part reads every job of its filter (through the enqueue-time
    /// index: the range is narrow) and sorts them, instead of walking newest first from the
    /// top of the table to a range that may lie deep in the past.
    fn page_query(&self, columns: &str, whole_range: bool) -> QueryBuilder<Postgres> {
        use JobState::{Available, Cancelled, Completed, Failed, Running};
        let finished = " AND state IN ('completed', 'failed', 'cancelled')";
        let parts: [(&str, &str, &[JobState]); 4] = [
            (
                "job_status_unbatched",
                finished,
                &[Completed, Failed, Cancelled],
            ),
            (
                "job_status_unbatched",
                " AND state = 'available'",
                &[Available],
            ),
            ("job_status_unbatched", " AND state = 'running'", &[Running]),
            ("job_status_batched", "", &[Running]),
        ];
        let parts = parts
            .iter()
            .filter(|(_, _, states)| self.state.is_none_or(|state| states.contains(&state)));
        let mut query = QueryBuilder::new("SELECT * FROM (");
        for (i, (view, states, _)) in parts.enumerate() {
            if i > 0 {
                query.push(" UNION ALL ");
            }
            let select = format!("SELECT {columns} FROM jobrunner.{view}");
            match whole_range {
                // OFFSET 0 keeps the planner from pushing the LIMIT into the scan.
                true => query.push(format!("(SELECT * FROM ({select}")),
                false => query.push(format!("({select}")),
            };
            self.push_conditions(&mut query);
            query.push(*states);
            if let Some(before) = self.before_id {
                query.push(" AND id < ").push_bind(before);
            }
            if whole_range {
                query.push(" OFFSET 0) AS part");
            }
            query
                .push(" ORDER BY id DESC LIMIT ")
                .push_bind(i64::from(self.limit))
                .push(")");
        }
        query
            .push(") AS page ORDER BY id DESC LIMIT ")
            .push_bind(i64::from(self.limit));
        query
    }
}

/// One line of a jobs list: what a list shows, without the payload and result.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct JobSummary {
    /// The job's id.
    pub id: i64,
    /// Its type.
    pub job_type: String,
    /// Its tenant.
    pub tenant: String,
    /// Its state, as `JobState::as_str` spells it.
    pub state: String,
    /// Attempts started so far.
    pub attempt: i32,
    /// Its own attempt limit, if it has one.
    pub max_attempts: Option<i32>,
    /// When it is (or was) due.
    pub run_at: DateTime<Utc>,
    /// When it was enqueued.
    pub created_at: DateTime<Utc>,
    /// When it last changed.
    pub updated_at: DateTime<Utc>,
    /// The most recent failure's message, cut to 200 characters.
    pub last_error: Option<String>,
    /// The job that enqueued it, if any.
    pub parent_id: Option<i64>,
    /// The schedule that enqueued it, if any.
    pub schedule: Option<String>,
}

/// What a bulk action does to the jobs a filter selects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BulkAction {
    /// Failed jobs become available again (as [`Queue::retry_job`]).
    Retry,
    /// Available jobs are cancelled.
    Cancel,
    /// Finished jobs (completed, failed, cancelled) are deleted.
    Delete,
}

impl BulkAction {
    /// The states the action applies to; other jobs the filter selects are left alone.
    pub fn states(self) -> &'static [JobState] {
        match self {
            BulkAction::Retry => &[JobState::Failed],
            BulkAction::Cancel => &[JobState::Available],
            BulkAction::Delete => &[JobState::Completed, JobState::Failed, JobState::Cancelled],
        }
    }
}

/// The LISTEN/NOTIFY channel on which runners hear that a job they run was cancelled: a JSON
/// object with the job's `id`, its `attempt` and who cancelled it (`by`).
pub const CANCEL_CHANNEL: &str = "jobrunner_cancel";

/// What [`Queue::cancel`] did.
#[derive(Debug, Clone)]
pub enum Cancellation {
    /// The job was available: it is cancelled.
    Cancelled(Box<JobRecord>),
    /// The job is running: the runner holding it was asked to stop it.
    Stopping {
        /// That runner.
        owner: String,
        /// The attempt it runs.
        attempt: u32,
    },
}

/// Jobs in an enqueue-time range that a page reads whole (see [`Queue::job_summaries`]).
const NARROW_RANGE: f64 = 100_000.0;

/// At most this many jobs change in one bulk statement, so that one never holds many locks.
pub const BULK_CHUNK: u32 = 5_000;

impl Queue {
    /// Jobs matching `filter`, newest first.
    pub async fn list_jobs(&self, filter: &JobFilter) -> Result<Vec<JobRecord>> {
        let whole_range = self.narrow_range(filter).await?;
        let mut query = filter.page_query(JOB_COLUMNS, whole_range);
        let rows: Vec<JobRow> = query.build_query_as().fetch_all(&self.db).await?;
        Ok(rows.into_iter().map(JobRecord::from).collect())
    }

    /// One page of jobs matching `filter`, newest first, without payloads or results.
    pub async fn job_summaries(&self, filter: &JobFilter) -> Result<Vec<JobSummary>> {
        let whole_range = self.narrow_range(filter).await?;
        let mut query = filter.page_query(
            "id, job_type, tenant, state::text AS state, attempt, max_attempts, run_at, \
             created_at, updated_at, left(errors -> -1 ->> 'error', 200) AS last_error, \
             parent_id, schedule",
            whole_range,
        );
        Ok(query.build_query_as().fetch_all(&self.db).await?)
    }

    /// Whether `filter` has an enqueue-time range that the planner estimates at no more than
    /// [`NARROW_RANGE`] jobs: such a range is read whole. A wider one is walked newest first
    /// (it is dense: a page fills quickly).
    async fn narrow_range(&self, filter: &JobFilter) -> Result<bool> {
        if filter.created_from.is_none() && filter.created_until.is_none() {
            return Ok(false);
        }
        let plan: Json<serde_json::Value> = sqlx::query_scalar(
            "EXPLAIN (FORMAT JSON)
             SELECT FROM jobrunner.jobs
              WHERE ($1::timestamptz IS NULL OR created_at >= $1)
                AND ($2::timestamptz IS NULL OR created_at < $2)",
        )
        .bind(filter.created_from)
        .bind(filter.created_until)
        // Never a prepared statement's generic plan: the estimate must be for these times.
        .persistent(false)
        .fetch_one(&self.db)
        .await?;
        let rows = plan.0[0]["Plan"]["Plan Rows"].as_f64();
        Ok(rows.is_some_and(|rows| rows <= NARROW_RANGE))
    }

    /// How many jobs `filter` selects that `action` applies to (its cursor and limit aside).
    pub async fn count_for(&self, filter: &JobFilter, action: BulkAction) -> Result<i64> {
        let mut query = QueryBuilder::new("SELECT count(*) FROM jobrunner.jobs");
        filter.push_conditions(&mut query);
        push_states(&mut query, action);
        Ok(query.build_query_scalar().fetch_one(&self.db).await?)
    }

    /// Applies `action` to every job `filter` selects that it applies to, [`BULK_CHUNK`] jobs
    /// per statement, and returns the type and tenant of each job it changed. A failed job
    /// whose unique key another pending job holds is not retried, nor a second failed job
    /// with the same key.
    pub async fn bulk(
        &self,
        filter: &JobFilter,
        action: BulkAction,
        default_max_attempts: u32,
    ) -> Result<Vec<(String, String)>> {
        let mut changed = Vec::new();
        loop {
            let chunk = self
                .bulk_chunk(filter, action, default_max_attempts)
                .await?;
            let last = chunk.len() < BULK_CHUNK as usize;
            changed.extend(chunk);
            if last {
                return Ok(changed);
            }
        }
    }

    async fn bulk_chunk(
        &self,
        filter: &JobFilter,
        action: BulkAction,
        default_max_attempts: u32,
    ) -> Result<Vec<(String, String)>> {
        let mut query = QueryBuilder::new("");
        match action {
            BulkAction::Retry => query
                .push("UPDATE jobrunner.jobs SET state = 'available', run_at = ")
                .push_bind(self.now())
                .push(", updated_at = ")
                .push_bind(self.now())
                .push(", max_attempts = CASE WHEN attempt >= coalesce(max_attempts, ")
                .push_bind(i32::try_from(default_max_attempts).unwrap_or(i32::MAX))
                .push(
                    ") THEN attempt + 1 ELSE max_attempts END
                     WHERE id IN (SELECT DISTINCT ON (tenant, key) id
                                    FROM (SELECT id, tenant, coalesce(unique_key, id::text) AS key
                                            FROM jobrunner.jobs AS j",
                ),
            BulkAction::Cancel => query
                .push("UPDATE jobrunner.jobs SET state = 'cancelled', updated_at = ")
                .push_bind(self.now())
                .push(" WHERE id IN (SELECT id FROM (SELECT id FROM jobrunner.jobs AS j"),
            BulkAction::Delete => query
                .push("DELETE FROM jobrunner.jobs")
                .push(" WHERE id IN (SELECT id FROM (SELECT id FROM jobrunner.jobs AS j"),
        };
        filter.push_conditions(&mut query);
        push_states(&mut query, action);
        if action == BulkAction::Retry {
            query.push(
                " AND (unique_key IS NULL OR NOT EXISTS (
                     SELECT FROM jobrunner.jobs AS p
                      WHERE p.tenant = j.tenant AND p.unique_key = j.unique_key
                        AND p.state IN ('available', 'running')))",
            );
        }
        query
            .push(" LIMIT ")
            .push_bind(i64::from(BULK_CHUNK))
            .push(" FOR UPDATE SKIP LOCKED) AS chosen) RETURNING job_type, tenant");
        let rows = query.build_query_as().fetch_all(&self.db).await?;
        if action == BulkAction::Retry && !rows.is_empty() {
            crate::wake_runners(&self.db).await?;
        }
        Ok(rows)
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
        .fetch_optional(&self.db)
        .await?;
        Ok(row.map(JobRecord::from))
    }

    /// Makes a failed job available again, due now. Its history stays; if it had used up its
    /// attempts (with the limit `default_max_attempts` when it sets none), it gets one more.
    pub async fn retry_job(&self, id: i64, default_max_attempts: u32) -> Result<JobRecord> {
        let now = self.now();
        let mut tx = self.db.begin().await?;
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

    /// Cancels job `id` as `by`. An available job is cancelled at once; a running one's
    /// runner is asked to stop it (over [`CANCEL_CHANNEL`]): it stops the guest where it is
    /// and records the job `cancelled`, within milliseconds. Either way `cancelled_by` says
    /// who.
    pub async fn cancel(&self, id: i64, by: &str) -> Result<Cancellation> {
        if by.trim().is_empty() {
            return Err(QueueError::Rejected(
                "a cancellation names who cancels".into(),
            ));
        }
        if let Some(job) = self.cancel_available(id, Some(by)).await? {
            return Ok(Cancellation::Cancelled(Box::new(job)));
        }
        let job = self.job(id).await?;
        if job.state != JobState::Running {
            return Err(QueueError::WrongState {
                id,
                state: job.state,
                expected: JobState::Running,
                action: "cancelled",
            });
        }
        let mut tx = self.db.begin().await?;
        sqlx::query(
            "UPDATE jobrunner.jobs SET cancelled_by = $2 WHERE id = $1 AND state = 'running'",
        )
        .bind(id)
        .bind(by)
        .execute(&mut *tx)
        .await?;
        let request = serde_json::json!({ "id": id, "attempt": job.attempt, "by": by });
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(CANCEL_CHANNEL)
            .bind(request.to_string())
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(Cancellation::Stopping {
            owner: job.lease_owner.unwrap_or_default(),
            attempt: job.attempt,
        })
    }

    /// Cancels an available job. Running jobs are left alone ([`Queue::cancel`] stops them).
    pub async fn cancel_job(&self, id: i64) -> Result<JobRecord> {
        match self.cancel_available(id, None).await? {
            Some(job) => Ok(job),
            None => Err(self.wrong_state(id, JobState::Available, "cancelled").await),
        }
    }

    /// Cancels job `id` if it is available, as `by`; `None` if it is not. A job a batch
    /// transaction holds (locked, and available in the table) is running: it is skipped, not
    /// waited for.
    async fn cancel_available(&self, id: i64, by: Option<&str>) -> Result<Option<JobRecord>> {
        let row: Option<JobRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "UPDATE jobrunner.jobs SET state = 'cancelled', cancelled_by = $2, updated_at = $3
              WHERE id = (SELECT id FROM jobrunner.jobs WHERE id = $1 AND state = 'available'
                            FOR UPDATE SKIP LOCKED)
          RETURNING {JOB_COLUMNS}"
        )))
        .bind(id)
        .bind(by)
        .bind(self.now())
        .fetch_optional(&self.db)
        .await?;
        Ok(row.map(JobRecord::from))
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
        .execute(&self.db)
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
        .fetch_optional(&self.db)
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

/// Keeps the jobs `action` applies to.
fn push_states(query: &mut QueryBuilder<Postgres>, action: BulkAction) {
    let states: Vec<&str> = action.states().iter().map(|s| s.as_str()).collect();
    query
        .push(" AND state = ANY(")
        .push_bind(states)
        .push("::jobrunner.job_state[])");
}

fn is_unique_violation(error: &sqlx::Error) -> bool {
    error
        .as_database_error()
        .is_some_and(|db| db.code().as_deref() == Some("23505"))
}
