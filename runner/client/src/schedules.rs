//! Schedules: a job enqueued at every tick of a cron expression in a time zone
//! ([`NewSchedule`]), kept in `jobrunner.schedules` and managed here, through the same SQL
//! functions the SQL door offers (`runner/sql/schedules.sql`). Runners fire the ticks.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::types::Json;

use crate::cron::{InvalidRecurrence, Recurrence};
use crate::job::{InvalidJob, JobState, MAX_NAME_LEN, NewJob};
use crate::{Queue, QueueError, Result, count};

/// The channel on which every change to a schedule is announced.
pub const SCHEDULES_CHANNEL: &str = "jobrunner_schedules";

/// What a tick does while the previous tick's job is still pending or running.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Overlap {
    /// Enqueue anyway.
    #[default]
    Allow,
    /// Enqueue nothing for that tick.
    Skip,
}

/// What happens to ticks missed while no runner was up (ticks more than
/// [`MISFIRE_GRACE`] late when a runner first sees them).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CatchUp {
    /// Skip them.
    #[default]
    None,
    /// One job, for the most recent.
    Latest,
    /// One job each, for those within the catch-up window.
    All,
}

/// How late a tick may be enqueued and still count as on time, whatever the catch-up policy:
/// a restarting runner or a slow database loses no tick.
pub const MISFIRE_GRACE: Duration = Duration::from_secs(30);

/// Most ticks one runner fires for one schedule in one statement; a longer catch-up goes on
/// in the next.
pub const MAX_TICKS_PER_FIRE: usize = 1000;

macro_rules! policy_names {
    ($type:ty, $what:literal, $($variant:ident = $name:literal),+) => {
        impl $type {
            /// Its name in the database and on the command line.
            pub fn as_str(self) -> &'static str {
                match self { $(Self::$variant => $name),+ }
            }
        }

        impl FromStr for $type {
            type Err = String;

            fn from_str(s: &str) -> Result<Self, String> {
                match s {
                    $($name => Ok(Self::$variant),)+
                    other => Err(format!(
                        concat!($what, " must be one of {}, not {:?}"),
                        [$($name),+].join(", "),
                        other
                    )),
                }
            }
        }

        impl fmt::Display for $type {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

policy_names!(Overlap, "overlap", Allow = "allow", Skip = "skip");
policy_names!(
    CatchUp,
    "catch-up",
    None = "none",
    Latest = "latest",
    All = "all"
);

/// Why a schedule is refused before anything is sent.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum InvalidSchedule {
    /// The name is empty or too long.
    #[error("schedule name must be 1 to {MAX_NAME_LEN} characters")]
    Name,
    /// The cron expression or the time zone.
    #[error(transparent)]
    Recurrence(#[from] InvalidRecurrence),
    /// The cron expression never fires (February 30th).
    #[error("cron expression {0:?} never fires")]
    NeverFires(String),
    /// The job each tick enqueues.
    #[error(transparent)]
    Job(#[from] InvalidJob),
    /// The catch-up window is zero or beyond what the database stores.
    #[error("the catch-up window must be between 1 second and 100 years")]
    Window,
}

/// A schedule on its way in: every tick of `cron` in `time_zone` enqueues a job of
/// `job_type` with `payload`, due at the tick.
#[derive(Debug, Clone)]
pub struct NewSchedule {
    name: String,
    cron: String,
    time_zone: String,
    job: NewJob,
    unique_key: Option<String>,
    overlap: Overlap,
    catch_up: CatchUp,
    catch_up_within: Duration,
}

impl NewSchedule {
    /// A schedule named `name` (unique per tenant) enqueueing `job` (its type, payload, tenant,
    /// priority and max attempts; its run-at and unique key are the schedule's) at every tick
    /// of `cron`, in UTC, overlapping, skipping missed ticks.
    pub fn new(name: impl Into<String>, cron: impl Into<String>, job: NewJob) -> Self {
        Self {
            name: name.into(),
            cron: cron.into(),
            time_zone: "UTC".to_owned(),
            job,
            unique_key: None,
            overlap: Overlap::default(),
            catch_up: CatchUp::default(),
            catch_up_within: Duration::from_secs(24 * 3600),
        }
    }

    /// Reads the cron expression in this IANA time zone.
    pub fn time_zone(mut self, zone: impl Into<String>) -> Self {
        self.time_zone = zone.into();
        self
    }

    /// Gives each tick's job a unique key from this template: `{tick}` becomes the tick as
    /// RFC 3339 UTC, `{schedule}` the schedule's name. Without one, ticks are never
    /// deduplicated.
    pub fn unique_key(mut self, template: impl Into<String>) -> Self {
        self.unique_key = Some(template.into());
        self
    }

    /// What a tick does while the previous tick's job is pending or running.
    pub fn overlap(mut self, overlap: Overlap) -> Self {
        self.overlap = overlap;
        self
    }

    /// What happens to missed ticks, and how far back `All` goes (default: a day).
    pub fn catch_up(mut self, catch_up: CatchUp, within: Duration) -> Self {
        self.catch_up = catch_up;
        self.catch_up_within = within;
        self
    }

    /// Checks everything the database would, and that the expression fires at all.
    pub fn validate(&self) -> Result<Recurrence, InvalidSchedule> {
        if self.name.is_empty() || self.name.chars().count() > MAX_NAME_LEN {
            return Err(InvalidSchedule::Name);
        }
        let recurrence = Recurrence::parse(&self.cron, &self.time_zone)?;
        if recurrence.next_after(Utc::now()).is_none() {
            return Err(InvalidSchedule::NeverFires(self.cron.clone()));
        }
        self.job.validate()?;
        if matches!(&self.unique_key, Some(key) if key.is_empty()) {
            return Err(InvalidJob::EmptyUniqueKey.into());
        }
        if self.catch_up_within.is_zero()
            || self.catch_up_within > Duration::from_secs(100 * 365 * 24 * 3600)
        {
            return Err(InvalidSchedule::Window);
        }
        Ok(recurrence)
    }

    /// The schedule's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The schedule as `jobrunner.sync_manifest_schedules` reads it: one object with the
    /// columns of `jobrunner.schedules`.
    #[doc(hidden)]
    pub fn to_row(&self) -> serde_json::Value {
        serde_json::json!({
            "tenant": self.job.tenant,
            "name": self.name,
            "cron": self.cron.trim(),
            "time_zone": self.time_zone,
            "payload": &*self.job.payload,
            "priority": self.job.priority,
            "max_attempts": self.job.max_attempts,
            "unique_key": self.unique_key,
            "overlap": self.overlap,
            "catch_up": self.catch_up,
            "catch_up_within": format!("{} seconds", self.catch_up_within.as_secs()),
        })
    }
}

/// A schedule as stored, with its last job's state.
#[derive(Debug, Clone, Serialize)]
pub struct ScheduleRecord {
    /// Its tenant: its jobs are that tenant's.
    pub tenant: String,
    /// Its name, unique per tenant.
    pub name: String,
    /// The cron expression.
    pub cron: String,
    /// The IANA time zone it is read in.
    pub time_zone: String,
    /// The type of the jobs it enqueues.
    pub job_type: String,
    /// Their payload.
    pub payload: serde_json::Value,
    /// Their priority.
    pub priority: i32,
    /// Their attempt limit; `None`: the runner's default.
    pub max_attempts: Option<u32>,
    /// The unique-key template, if any.
    pub unique_key: Option<String>,
    /// What a tick does while the previous one's job is pending or running.
    pub overlap: Overlap,
    /// What happens to missed ticks.
    pub catch_up: CatchUp,
    /// How far back catching up goes (in JSON: `catch_up_within_secs`).
    #[serde(rename = "catch_up_within_secs", serialize_with = "as_seconds")]
    pub catch_up_within: Duration,
    /// Whether it is paused.
    pub paused: bool,
    /// `manifest` (declared by its job type's manifest) or `api`.
    pub origin: String,
    /// Bumped by every change.
    pub version: i64,
    /// Ticks after this are due (created, resumed or re-timed then).
    pub since: DateTime<Utc>,
    /// The last tick handled.
    pub last_tick: Option<DateTime<Utc>>,
    /// The job its last tick (or run-now) enqueued.
    pub last_job_id: Option<i64>,
    /// That job's state; `None` once it is gone (completed jobs are deleted unless retained).
    pub last_job_state: Option<JobState>,
    /// Why its last tick enqueued nothing, if it did not.
    pub last_error: Option<String>,
    /// When it was created.
    pub created_at: DateTime<Utc>,
}

impl ScheduleRecord {
    /// Its cron expression in its time zone.
    pub fn recurrence(&self) -> Result<Recurrence, InvalidRecurrence> {
        Recurrence::parse(&self.cron, &self.time_zone)
    }

    /// The time after which its next ticks are due: the last tick handled, or since when the
    /// schedule runs as it is, whichever is later.
    pub fn anchor(&self) -> DateTime<Utc> {
        self.last_tick
            .map_or(self.since, |tick| tick.max(self.since))
    }
}

fn as_seconds<S: serde::Serializer>(duration: &Duration, to: S) -> Result<S::Ok, S::Error> {
    to.serialize_u64(duration.as_secs())
}

#[derive(sqlx::FromRow)]
struct ScheduleRow {
    tenant: String,
    name: String,
    cron: String,
    time_zone: String,
    job_type: String,
    payload: Json<serde_json::Value>,
    priority: i32,
    max_attempts: Option<i32>,
    unique_key: Option<String>,
    overlap: String,
    catch_up: String,
    catch_up_seconds: f64,
    paused: bool,
    origin: String,
    version: i64,
    since: DateTime<Utc>,
    last_tick: Option<DateTime<Utc>>,
    last_job_id: Option<i64>,
    last_job_state: Option<String>,
    last_error: Option<String>,
    created_at: DateTime<Utc>,
}

impl From<ScheduleRow> for ScheduleRecord {
    fn from(row: ScheduleRow) -> Self {
        let known = "the schema holds only known policies and states";
        ScheduleRecord {
            tenant: row.tenant,
            name: row.name,
            cron: row.cron,
            time_zone: row.time_zone,
            job_type: row.job_type,
            payload: row.payload.0,
            priority: row.priority,
            max_attempts: row.max_attempts.map(count),
            unique_key: row.unique_key,
            overlap: row.overlap.parse().expect(known),
            catch_up: row.catch_up.parse().expect(known),
            catch_up_within: Duration::from_secs_f64(row.catch_up_seconds.max(0.0)),
            paused: row.paused,
            origin: row.origin,
            version: row.version,
            since: row.since,
            last_tick: row.last_tick,
            last_job_id: row.last_job_id,
            last_job_state: row.last_job_state.map(|s| s.parse().expect(known)),
            last_error: row.last_error,
            created_at: row.created_at,
        }
    }
}

/// The columns [`ScheduleRecord`] reads, from `jobrunner.schedules AS s`, but the last job's
/// state.
const SCHEDULE_COLUMNS: &str = "s.tenant, s.name, s.cron, s.time_zone, s.job_type, s.payload, \
     s.priority, s.max_attempts, s.unique_key, s.overlap, s.catch_up, \
     extract(epoch FROM s.catch_up_within)::float8 AS catch_up_seconds, \
     s.paused, s.origin, s.version, s.since, s.last_tick, s.last_job_id, s.last_error, \
     s.created_at";

/// The last job's state, for operators (a runner firing ticks needs none).
const LAST_JOB_STATE: &str = "(SELECT j.state::text FROM jobrunner.job_status AS j \
     WHERE j.id = s.last_job_id) AS last_job_state";

impl Queue {
    /// Adds a schedule. Its ticks after now are due. Refused with the reason if a field is
    /// invalid, its tenant's policy forbids its job type, or the tenant already has a schedule
    /// of that name.
    pub async fn add_schedule<'e>(
        &self,
        db: impl sqlx::PgExecutor<'e>,
        schedule: &NewSchedule,
    ) -> Result<()> {
        schedule.validate()?;
        let job = &schedule.job;
        sqlx::query(
            "SELECT jobrunner.add_schedule($1, $2, $3, $4::text::jsonb, $5, $6, $7, $8, $9, $10,
                                           $11, make_interval(secs => $12), $13)",
        )
        .bind(&schedule.name)
        .bind(&schedule.cron)
        .bind(&job.job_type)
        .bind(job.payload())
        .bind(&schedule.time_zone)
        .bind(&job.tenant)
        .bind(job.priority)
        .bind(job.max_attempts.map(|n| n as i32))
        .bind(schedule.unique_key.as_deref())
        .bind(schedule.overlap.as_str())
        .bind(schedule.catch_up.as_str())
        .bind(schedule.catch_up_within.as_secs_f64())
        .bind(self.now())
        .execute(db)
        .await?;
        Ok(())
    }

    /// Every schedule (or `tenant`'s), by tenant and name.
    pub async fn schedules(&self, tenant: Option<&str>) -> Result<Vec<ScheduleRecord>> {
        let rows: Vec<ScheduleRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {SCHEDULE_COLUMNS}, {LAST_JOB_STATE} FROM jobrunner.schedules AS s
              WHERE $1::text IS NULL OR s.tenant = $1
              ORDER BY s.tenant, s.name"
        )))
        .bind(tenant)
        .fetch_all(&self.db)
        .await?;
        Ok(rows.into_iter().map(ScheduleRecord::from).collect())
    }

    /// The schedules that are not paused, as a runner fires them: without the last job's
    /// state.
    #[doc(hidden)]
    pub async fn active_schedules(&self) -> Result<Vec<ScheduleRecord>> {
        let rows: Vec<ScheduleRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {SCHEDULE_COLUMNS}, NULL::text AS last_job_state
               FROM jobrunner.schedules AS s
              WHERE NOT s.paused"
        )))
        .fetch_all(&self.db)
        .await?;
        Ok(rows.into_iter().map(ScheduleRecord::from).collect())
    }

    /// Tenant `tenant`'s schedule `name`.
    pub async fn schedule(&self, name: &str, tenant: &str) -> Result<ScheduleRecord> {
        let row: Option<ScheduleRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {SCHEDULE_COLUMNS}, {LAST_JOB_STATE} FROM jobrunner.schedules AS s
              WHERE s.tenant = $1 AND s.name = $2"
        )))
        .bind(tenant)
        .bind(name)
        .fetch_optional(&self.db)
        .await?;
        row.map(ScheduleRecord::from)
            .ok_or_else(|| not_found(name, tenant))
    }

    /// Pauses a schedule: no tick fires until it is resumed.
    pub async fn pause_schedule(&self, name: &str, tenant: &str) -> Result<()> {
        self.set_paused(name, tenant, true).await
    }

    /// Resumes a paused schedule. Ticks that passed while it was paused never fire.
    pub async fn resume_schedule(&self, name: &str, tenant: &str) -> Result<()> {
        self.set_paused(name, tenant, false).await
    }

    async fn set_paused(&self, name: &str, tenant: &str, paused: bool) -> Result<()> {
        sqlx::query("SELECT jobrunner.pause_schedule($1, $2, $3, $4)")
            .bind(name)
            .bind(tenant)
            .bind(paused)
            .bind(self.now())
            .execute(&self.db)
            .await
            .map_err(|e| named(e, name, tenant))?;
        Ok(())
    }

    /// Removes a schedule. Its jobs stay, and still name it.
    pub async fn remove_schedule(&self, name: &str, tenant: &str) -> Result<()> {
        sqlx::query("SELECT jobrunner.remove_schedule($1, $2)")
            .bind(name)
            .bind(tenant)
            .execute(&self.db)
            .await
            .map_err(|e| named(e, name, tenant))?;
        Ok(())
    }

    /// Enqueues the schedule's job now, outside its cadence; returns its id.
    pub async fn run_schedule_now(&self, name: &str, tenant: &str) -> Result<i64> {
        sqlx::query_scalar("SELECT jobrunner.run_schedule_now($1, $2, $3)")
            .bind(name)
            .bind(tenant)
            .bind(self.now())
            .fetch_one(&self.db)
            .await
            .map_err(|e| named(e, name, tenant))
    }

    /// Makes `job_type`'s manifest schedules exactly `declared`; returns what changed, as
    /// (tenant, name, `added`/`changed`/`removed`/`conflict`).
    #[doc(hidden)]
    pub async fn sync_manifest_schedules(
        &self,
        job_type: &str,
        declared: &[NewSchedule],
    ) -> Result<Vec<(String, String, String)>> {
        for schedule in declared {
            schedule.validate()?;
        }
        let rows: Vec<serde_json::Value> = declared.iter().map(NewSchedule::to_row).collect();
        Ok(sqlx::query_as(
            "SELECT tenant, name, action FROM jobrunner.sync_manifest_schedules($1, $2, $3)",
        )
        .bind(job_type)
        .bind(Json(rows))
        .bind(self.now())
        .fetch_all(&self.db)
        .await?)
    }
}

fn not_found(name: &str, tenant: &str) -> QueueError {
    QueueError::ScheduleNotFound {
        name: name.to_owned(),
        tenant: tenant.to_owned(),
    }
}

/// The schedule functions raise no_data_found for a schedule that does not exist.
fn named(error: sqlx::Error, name: &str, tenant: &str) -> QueueError {
    match error.as_database_error().and_then(|e| e.code()) {
        Some(code) if code == "P0002" => not_found(name, tenant),
        _ => error.into(),
    }
}
