//! The jobrunner client: what a Rust application needs to use the job queue in PostgreSQL
//! without running jobs, and without compiling a WebAssembly runtime.
//!
//! - [`Queue::enqueue`] and [`Queue::enqueue_many`] add jobs, on a pool or inside the caller's
//!   own transaction (the jobs then exist exactly when it commits), with unique keys
//!   ([`Unique`]), priorities, schedules ([`Schedule`]) and attempt limits.
//! - [`admin`]: list and show jobs, retry failed ones, cancel available ones, prune retained
//!   completed ones.
//! - [`schedules`]: jobs enqueued at every tick of a cron expression in a time zone
//!   ([`cron`]), added, listed, paused, resumed, removed and run now.
//! - [`Queue::migrate`] brings the `jobrunner` schema up to date (numbered migrations, then
//!   the SQL definitions), safely from many processes at once.
//!
//! Runners (the `runner` crate) claim and run the jobs. Time always comes from the queue's
//! [`Clock`] and is passed into statements, never read with `now()` inside them, so tests can
//! move it.
//!
//! ```no_run
//! # async fn example(pool: sqlx::PgPool) -> Result<(), jobrunner_client::QueueError> {
//! use jobrunner_client::{NewJob, Queue};
//! use serde_json::json;
//!
//! let queue = Queue::new(pool.clone());
//! let mut tx = pool.begin().await?;
//! // ... the application's own writes in `tx` ...
//! let job = NewJob::new("send-welcome", json!({"user": 42}));
//! let enqueued = queue.enqueue(&mut *tx, &job).await?;
//! tx.commit().await?;
//! println!("job {}", enqueued.id);
//! # Ok(())
//! # }
//! ```
//!
//! `runner/client/examples/signup.rs` is a whole program doing this; the test suite runs it.

pub mod admin;
pub mod clock;
pub mod cron;
pub mod db;
mod enqueue;
pub mod job;
pub mod job_types;
mod migrate;
pub mod schedules;

use std::sync::Arc;

use chrono::{DateTime, Utc};
use sqlx::PgPool;

pub use admin::{
    AttemptError, AttemptLog, BulkAction, CANCEL_CHANNEL, Cancellation, HttpCall, JobFilter,
    JobRecord, JobSummary, MAX_ATTEMPT_LOGS, MAX_HTTP_CALLS,
};
pub use clock::{Clock, ManualClock, SystemClock};
pub use db::{Db, Pooling, Statements, pooled_options};
pub use enqueue::Enqueued;
pub use job::{InvalidJob, JobState, NewJob, Schedule, Unique};
pub use job_types::PausedJobType;
pub use migrate::schema_fingerprint;

/// The LISTEN/NOTIFY channel on which the database announces new jobs.
pub const WAKE_CHANNEL: &str = "jobrunner_jobs";

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
    /// The schedule was refused before anything was sent.
    #[error(transparent)]
    InvalidSchedule(#[from] schedules::InvalidSchedule),
    /// The tenant has no schedule of this name.
    #[error("tenant {tenant:?} has no schedule named {name:?}")]
    ScheduleNotFound {
        /// The schedule's name.
        name: String,
        /// Its tenant.
        tenant: String,
    },
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
    /// A newer release migrated the database: this build does not know its schema.
    #[error(
        "the database's jobrunner schema is newer than this build: migration {version} was \
         applied by a newer release, and this build knows migrations up to {known}; run a \
         release at least as new as the one that migrated it"
    )]
    SchemaNewer {
        /// The newest migration applied that this build does not know.
        version: i64,
        /// The newest migration this build knows.
        known: i64,
    },
    /// The schema needs migrating, which needs a session of its own, which a pooler in
    /// transaction mode cannot give.
    #[error(
        "the jobrunner schema needs migrating, which takes a direct connection to PostgreSQL \
         (it holds a session lock), and the database URL goes through a pooler in transaction \
         mode: give a direct URL too (--listen-url or DATABASE_LISTEN_URL), or run `runner \
         migrate` with a direct DATABASE_URL"
    )]
    NoSession,
    /// A migration could not take its locks: long transactions kept them.
    #[error(
        "{} could not take {} locks within {}s: long transactions on the same tables kept \
         them (see pg_stat_activity); run it again when fewer jobs run, or pause them",
        .version.map_or("the SQL definitions".to_owned(), |v| format!("migration {v}")),
        if .version.is_some() { "its" } else { "their" },
        .waited.as_secs()
    )]
    MigrationBlocked {
        /// The migration; `None` for the definitions.
        version: Option<i64>,
        /// How long it kept trying.
        waited: std::time::Duration,
    },
    /// Applying migrations failed.
    #[error("migrating the jobrunner schema failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// No connection could be had in time.
    #[error(
        "no database connection within the pool's wait: all of its connections are in use, or \
         PostgreSQL refuses new ones (\"too many clients\": max_connections is reached; or it \
         is starting, stopping or away)"
    )]
    NoConnection,
    /// Anything else the database said.
    #[error("database error: {0}")]
    Database(sqlx::Error),
}

impl From<sqlx::Error> for QueueError {
    fn from(error: sqlx::Error) -> Self {
        if matches!(error, sqlx::Error::PoolTimedOut) {
            return QueueError::NoConnection;
        }
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
    db: Db,
    clock: Arc<dyn Clock>,
}

impl Queue {
    /// A queue on `pool` using the system clock.
    pub fn new(pool: PgPool) -> Self {
        Self::with_clock(pool, Arc::new(SystemClock))
    }

    /// A queue on `pool` using `clock` for every timestamp it reads or writes.
    pub fn with_clock(pool: PgPool, clock: Arc<dyn Clock>) -> Self {
        Self::on(Db::new(pool, Pooling::Direct), clock)
    }

    /// A queue on `db`, which may reach the server through a pooler, using `clock`.
    pub fn on(db: Db, clock: Arc<dyn Clock>) -> Self {
        Self { db, clock }
    }

    /// The connection pool, for its statistics and options. Statements go through
    /// [`Queue::db`], which knows how the pool reaches the server.
    pub fn pool(&self) -> &PgPool {
        self.db.pool()
    }

    /// The way to the server every statement of the queue takes.
    pub fn db(&self) -> &Db {
        &self.db
    }

    /// The queue's idea of now.
    pub fn now(&self) -> DateTime<Utc> {
        self.clock.now()
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

/// Database integers that the schema keeps non-negative, as Rust counts.
pub fn count(value: i32) -> u32 {
    u32::try_from(value).unwrap_or_default()
}
