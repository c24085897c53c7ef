//! Enqueue, one job or many, inside the caller's transaction or on its own.
//!
//! Both forms call `jobrunner.enqueue_many`, the SQL function behind `jobrunner.enqueue` too, so
//! validation and unique-key handling are the same whichever door a job comes through.

use serde::Serialize;

use crate::job::{NewJob, Unique};
use crate::{Queue, Result};

/// The result of enqueueing one job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Enqueued {
    /// The job's id, or the pending duplicate's id when `inserted` is false.
    pub id: i64,
    /// False when a pending job with the same unique key already existed.
    pub inserted: bool,
}

/// One column per field, as `jobrunner.enqueue_many` takes them.
#[derive(Default)]
struct Columns<'a> {
    job_types: Vec<&'a str>,
    payloads: Vec<&'a str>,
    run_ats: Vec<chrono::DateTime<chrono::Utc>>,
    tenants: Vec<&'a str>,
    priorities: Vec<i32>,
    max_attempts: Vec<Option<i32>>,
    unique_keys: Vec<Option<&'a str>>,
    deduplicate: Vec<bool>,
    parents: Vec<Option<i64>>,
}

impl<'a> Columns<'a> {
    fn push(&mut self, job: &'a NewJob, now: chrono::DateTime<chrono::Utc>) -> Result<()> {
        job.validate()?;
        self.run_ats.push(job.ripe_at(now)?);
        self.job_types.push(&job.job_type);
        self.payloads.push(job.payload());
        self.tenants.push(&job.tenant);
        self.priorities.push(job.priority);
        // validate() keeps max_attempts within i32.
        self.max_attempts.push(job.max_attempts.map(|n| n as i32));
        let (key, dedupe) = match &job.unique {
            Unique::ByPayload => (None, true),
            Unique::Key(key) => (Some(key.as_str()), true),
            Unique::Off => (None, false),
        };
        self.unique_keys.push(key);
        self.deduplicate.push(dedupe);
        self.parents.push(job.parent);
        Ok(())
    }
}

impl Queue {
    /// Enqueues `job`. `db` is the pool, a connection, or the caller's own transaction
    /// (`&mut *tx`): the job then exists exactly when that transaction commits.
    pub async fn enqueue<'e>(
        &self,
        db: impl sqlx::PgExecutor<'e>,
        job: &NewJob,
    ) -> Result<Enqueued> {
        let mut ids = self.enqueue_many(db, std::slice::from_ref(job)).await?;
        Ok(ids.pop().expect("one result per job"))
    }

    /// Enqueues `jobs` in one statement and returns one result per job, in order. Either all
    /// are enqueued or, on error, none.
    pub async fn enqueue_many<'e>(
        &self,
        db: impl sqlx::PgExecutor<'e>,
        jobs: &[NewJob],
    ) -> Result<Vec<Enqueued>> {
        self.insert(db, jobs, "enqueue_many").await
    }

    /// Enqueues `jobs` like [`Queue::enqueue_many`] but without checking the tenant policy's
    /// job types: for the runner, which checked each follow-up when its guest asked for it,
    /// and writes them in the transaction that records their parent's completion (where a
    /// refusal would lose that outcome). The insert trigger's notification wakes runners.
    #[doc(hidden)]
    pub async fn enqueue_follow_ups<'e>(
        &self,
        db: impl sqlx::PgExecutor<'e>,
        jobs: &[NewJob],
    ) -> Result<Vec<Enqueued>> {
        self.insert(db, jobs, "enqueue_many_unchecked").await
    }

    async fn insert<'e>(
        &self,
        db: impl sqlx::PgExecutor<'e>,
        jobs: &[NewJob],
        function: &'static str,
    ) -> Result<Vec<Enqueued>> {
        if jobs.is_empty() {
            return Ok(Vec::new());
        }
        let now = self.now();
        let mut columns = Columns::default();
        for job in jobs {
            columns.push(job, now)?;
        }
        let rows: Vec<(i64, bool)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT job_id, inserted
               FROM jobrunner.{function}($1, $2::text[]::jsonb[], $3, $4, $5, $6, $7, $8, $9,
                                         $10)"
        )))
        .bind(columns.job_types)
        .bind(columns.payloads)
        .bind(columns.run_ats)
        .bind(columns.tenants)
        .bind(columns.priorities)
        .bind(columns.max_attempts)
        .bind(columns.unique_keys)
        .bind(columns.deduplicate)
        .bind(now)
        .bind(columns.parents)
        .fetch_all(db)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(id, inserted)| Enqueued { id, inserted })
            .collect())
    }
}
