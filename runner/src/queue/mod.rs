//! The job queue in PostgreSQL. Every SQL statement the runner issues lives under this module,
//! one file per concern: [`migrate`](Queue::migrate), [`enqueue`](Queue::enqueue),
//! [`claim`](Queue::claim), [`outcomes`](Queue::record_outcomes), [`leases`](Queue::rescue_expired)
//! the runners' [announcements](Queue::announce_runner), the [tenant policy](Queue::publish_tenants),
//! [vacuuming](Queue::vacuum_if_needed) and the operator's [`admin`] views.
//!
//! Time always comes from the queue's [`Clock`] and is passed into the statements, never read
//! with `now()` inside them, so tests can move it.

pub mod admin;
mod claim;
mod enqueue;
mod floors;
mod lease;
mod migrate;
mod outcome;
mod runners;
mod tenants;
mod vacuum;

use std::sync::Arc;

use chrono::{DateTime, Utc};
use sqlx::PgPool;

use crate::clock::{Clock, SystemClock};
use crate::job::{InvalidJob, JobState};

pub use claim::{ClaimRequest, ClaimType, Claimed};
pub use enqueue::Enqueued;
pub use floors::Floors;
pub use lease::Rescued;
pub use outcome::{Outcome, Settlement};
pub use runners::RunnerInfo;
pub use tenants::TenantOverview;
pub use vacuum::Vacuum;

/// The LISTEN/NOTIFY channel on which the database announces new jobs.
pub const WAKE_CHANNEL: &str = "jobrunner_jobs";

/// Longest error message kept per attempt; longer ones are cut, saying so.
pub const MAX_ERROR_LEN: usize = 8 * 1024;

/// What can go wrong talking to the queue.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// The job was refused before anything was sent.
    #[error(transparent)]
    InvalidJob(#[from] InvalidJob),
    /// The database refused the input, saying why.
    #[error("{0}")]
    Rejected(String),
    /// No job has this id.
    #[error("job {0} not found")]
    NotFound(i64),
    /// The job is not in a state the operation applies to.
    #[error("job {id} is {state}: only {expected} jobs can be {action}")]
    WrongState {
        /// The job.
        id: i64,
        /// Its current state.
        state: JobState,
        /// The state the operation needs.
        expected: JobState,
        /// What was attempted, as a past participle ("cancelled").
        action: &'static str,
    },
    /// Retrying would queue a second pending job with the same unique key.
    #[error("job {id} cannot be retried while job {pending} with the same unique key is pending")]
    DuplicatePending {
        /// The job to retry.
        id: i64,
        /// The pending job holding its unique key.
        pending: i64,
    },
    /// The schema is missing or older than this runner.
    #[error("the jobrunner schema is missing or outdated: run `runner migrate` ({0})")]
    SchemaMissing(String),
    /// Applying migrations failed.
    #[error("migrating the jobrunner schema failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// Anything else the database said.
    #[error("database error: {0}")]
    Database(sqlx::Error),
}

impl From<sqlx::Error> for QueueError {
    fn from(error: sqlx::Error) -> Self {
        let Some(db) = error.as_database_error() else {
            return QueueError::Database(error);
        };
        match db.code().as_deref() {
            // The enqueue functions raise invalid_parameter_value with a message for users.
            Some("22023") => QueueError::Rejected(db.message().to_owned()),
            // check_violation: the payload limits (migration 0007), named in the message.
            Some("23514") => QueueError::Rejected(db.message().to_owned()),
            // invalid_schema_name, undefined_table, undefined_function, undefined_object
            Some("3F000" | "42P01" | "42883" | "42704") if db.message().contains("jobrunner") => {
                QueueError::SchemaMissing(db.message().to_owned())
            }
            _ => QueueError::Database(error),
        }
    }
}

/// Shorthand for queue results.
pub type Result<T, E = QueueError> = std::result::Result<T, E>;

/// A handle on the queue: a connection pool and a clock. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Queue {
    pool: PgPool,
    clock: Arc<dyn Clock>,
    claim_path: Arc<claim::ClaimPath>,
}

impl Queue {
    /// A queue on `pool` using the system clock.
    pub fn new(pool: PgPool) -> Self {
        Self::with_clock(pool, Arc::new(SystemClock))
    }

    /// A queue on `pool` using `clock` for every timestamp it reads or writes.
    pub fn with_clock(pool: PgPool, clock: Arc<dyn Clock>) -> Self {
        Self {
            pool,
            clock,
            claim_path: Arc::default(),
        }
    }

    /// The connection pool.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// The queue's idea of now.
    pub fn now(&self) -> DateTime<Utc> {
        self.clock.now()
    }

    /// A pooled connection, then the time: a statement that grants a lease from "now" must
    /// not take a time read before it waited for a connection (the pool exhausted, the
    /// database away), or the lease it grants may have lapsed before it is written.
    pub(crate) async fn connection_then_now(
        &self,
    ) -> Result<(sqlx::pool::PoolConnection<sqlx::Postgres>, DateTime<Utc>)> {
        let conn = self.pool.acquire().await?;
        Ok((conn, self.now()))
    }
}

/// Sends the wake-up that new jobs send, for jobs that became ripe another way (retried by an
/// operator). Inside a transaction it is delivered on commit. Its empty payload also tells
/// runners to forget their claim floors.
async fn wake_runners<'e>(db: impl sqlx::PgExecutor<'e>) -> Result<()> {
    sqlx::query("SELECT pg_notify($1, '')")
        .bind(WAKE_CHANNEL)
        .execute(db)
        .await?;
    Ok(())
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

/// Database integers that the schema keeps non-negative, as Rust counts.
fn count(value: i32) -> u32 {
    u32::try_from(value).unwrap_or_default()
}

/// Cuts `error` to [`MAX_ERROR_LEN`] bytes on a character boundary.
fn clip_error(error: &str) -> std::borrow::Cow<'_, str> {
    if error.len() <= MAX_ERROR_LEN {
        return error.into();
    }
    let mut end = MAX_ERROR_LEN;
    while !error.is_char_boundary(end) {
        end -= 1;
    }
    format!("{} [cut: {} bytes in all]", &error[..end], error.len()).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_errors_are_clipped_on_a_char_boundary() {
        assert_eq!(clip_error("short"), "short");
        let long = "é".repeat(MAX_ERROR_LEN);
        let clipped = clip_error(&long);
        assert!(clipped.len() < long.len());
        assert!(clipped.ends_with(&format!("[cut: {} bytes in all]", long.len())));
    }
}
