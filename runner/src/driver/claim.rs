//! Claiming ripe jobs: one call of `jobrunner.claim` shares a batch among the tenants with
//! ripe jobs, locks their jobs with `FOR UPDATE SKIP LOCKED`, marks them running under a lease
//! and returns them, with what the claimer needs to know for its next claim.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use jobrunner_client::{Result, Statements, count};
use sqlx::PgConnection;

use super::Driver;
use super::batch::OpenBatch;
use super::floors::{Floors, Key};
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
    /// Where the scan for tenants with ripe jobs starts: the previous claim's
    /// [`Claimed::next_tenant`], so that with more ripe tenants than a batch holds, successive
    /// claims take turns among all of them.
    pub after_tenant: Option<&'a str>,
    /// Where each tenant's claimable jobs start, as far as this claimer knows, and where it
    /// records what the claim finds. Only for a claimer that hears the wake-up channel's
    /// announcements (see [`Floors`]); `None` starts every tenant from the beginning.
    pub floors: Option<&'a Floors>,
    /// Claim in a batch transaction that the caller commits within this bound (see
    /// [`OpenBatch`]), rather than under per-job leases. Claims that tenant or type limits
    /// apply to are leased whatever this says: those limits count running rows.
    pub batch: Option<Duration>,
}

/// What a claim returned, and what it says about the next one.
#[derive(Debug, Default)]
pub struct Claimed {
    /// The claimed jobs, most urgent first within each tenant.
    pub jobs: Vec<Job>,
    /// Ripe jobs may be left that this claim's fair shares did not reach: claim again now if
    /// slots are free.
    pub more: bool,
    /// A tenant with ripe jobs was held back by its rate: its next start is allowed this much
    /// later.
    pub rate_wait: Option<Duration>,
    /// A tenant with ripe jobs was held back by its max_running: a completion may let it go.
    pub held: bool,
    /// Pass as the next request's `after_tenant`.
    pub next_tenant: Option<String>,
    /// The batch transaction holding `jobs`, for a batch claim that claimed some; otherwise
    /// each job is leased.
    pub batch: Option<OpenBatch>,
}

/// The job columns of a claim's rows; all NULL in its closing status row.
#[derive(sqlx::FromRow)]
struct JobColumns {
    id: Option<i64>,
    job_type: Option<String>,
    tenant: Option<String>,
    payload: Option<String>,
    priority: Option<i32>,
    attempt: Option<i32>,
    max_attempts: Option<i32>,
    run_at: Option<DateTime<Utc>>,
    created_at: Option<DateTime<Utc>>,
}

impl JobColumns {
    fn into_job(self) -> Option<Job> {
        Some(Job {
            id: self.id?,
            job_type: self.job_type?,
            tenant: self.tenant?,
            payload: self.payload?,
            priority: self.priority?,
            attempt: count(self.attempt?),
            max_attempts: count(self.max_attempts?),
            run_at: self.run_at?,
            created_at: self.created_at?,
        })
    }
}

/// A row of `jobrunner.claim`: a job, or (id NULL) the closing status row.
#[derive(sqlx::FromRow)]
struct ClaimedRow {
    #[sqlx(flatten)]
    job: JobColumns,
    more: Option<bool>,
    wait_ms: Option<i64>,
    held: Option<bool>,
    next_tenant: Option<String>,
}

/// A row of `jobrunner.claim_unlimited`: a job, or (id NULL) the closing status row.
#[derive(sqlx::FromRow)]
struct FastRow {
    #[sqlx(flatten)]
    job: JobColumns,
    tenants: Option<i32>,
    last_tenant: Option<String>,
    limited: Option<bool>,
    /// Only the claim with floors returns this column.
    #[sqlx(default)]
    floor_id: Option<i64>,
}

impl FastRow {
    /// The floor a floor row carries.
    fn floor(&self) -> Option<(String, Key)> {
        let key = Key {
            priority: self.job.priority?,
            run_at: self.job.run_at?,
            id: self.floor_id?,
        };
        Some((self.job.tenant.clone()?, key))
    }
}

/// What `jobrunner.claim_unlimited` returned: the jobs, and what its walk saw.
#[derive(Debug, Default)]
struct FastClaim {
    jobs: Vec<Job>,
    /// Ripe tenants seen, at most the claim's limit.
    tenants: usize,
    /// The last of them.
    last_tenant: Option<String>,
}

impl FastClaim {
    /// The claim as `jobrunner.claim` would report it: claim again at once if ripe tenants
    /// may be left unseen (or were skipped by starting after `after_tenant`), or if a tenant
    /// used up its share and may have more.
    fn into_claimed(mut self, limit: usize, after_tenant: Option<&str>) -> Claimed {
        let share = if self.tenants >= limit || after_tenant.is_some() {
            1
        } else {
            limit / self.tenants.max(1)
        };
        let mut per_tenant: HashMap<&str, usize> = HashMap::new();
        for job in &self.jobs {
            *per_tenant.entry(job.tenant.as_str()).or_default() += 1;
        }
        let share_used = per_tenant.values().any(|&got| got == share && got < limit);
        let next_tenant = self.last_tenant.filter(|_| self.tenants >= limit);
        let unseen = next_tenant.is_some() || after_tenant.is_some();
        self.jobs
            .sort_by_key(|job| (job.priority, job.run_at, job.id));
        Claimed {
            more: (unseen && !self.jobs.is_empty()) || share_used,
            next_tenant,
            jobs: self.jobs,
            ..Claimed::default()
        }
    }
}

/// How long a runner that found tenant limits in the policy uses the full claim before it
/// looks again whether the fast one would do.
const LIMITS_RECHECK: Duration = Duration::from_secs(5);

/// Which claim the queue uses: the full one while the published policy has tenant limits.
#[derive(Debug, Default)]
pub(super) struct ClaimPath {
    full_until: Mutex<Option<Instant>>,
}

impl ClaimPath {
    fn fast_allowed(&self) -> bool {
        let full_until = self.full_until.lock().expect("claim path lock");
        full_until.is_none_or(|until| Instant::now() >= until)
    }

    fn found_limits(&self) {
        *self.full_until.lock().expect("claim path lock") = Some(Instant::now() + LIMITS_RECHECK);
    }
}

impl Driver {
    /// Claims up to `request.limit` ripe jobs, shared fairly among the tenants that have
    /// some (by their weights), most urgent first within each tenant (priority, run_at, id).
    /// Each claimed job is running, leased to `request.owner`, and its attempt is counted.
    /// Jobs locked by a concurrent claimer are skipped, never claimed twice. Tenants' policies
    /// (max_running, rate) and types' concurrency limits hold across every runner sharing
    /// the database. One round trip: see `jobrunner.claim` in `runner/sql/claim.sql`, and
    /// `jobrunner.claim_unlimited` for claims that no limit applies to.
    pub async fn claim(&self, request: &ClaimRequest<'_>) -> Result<Claimed> {
        if request.limit == 0 || request.job_types.is_empty() {
            return Ok(Claimed::default());
        }
        let capped = request.job_types.iter().any(|t| t.concurrency.is_some());
        if !capped && self.claim_path.fast_allowed() {
            if let Some(claimed) = self.claim_fast(request).await? {
                return Ok(claimed);
            }
            self.claim_path.found_limits();
        }
        self.claim_full(request).await
    }

    /// `jobrunner.claim_unlimited`; `None` if tenant limits apply (nothing was claimed).
    async fn claim_fast(&self, request: &ClaimRequest<'_>) -> Result<Option<Claimed>> {
        // A batch claims on its transaction's connection; a leasing claim on any.
        let (mut batch, mut leasing): (Option<OpenBatch>, Option<Statements>) = (None, None);
        let conn: &mut PgConnection = match request.batch {
            Some(bound) => batch
                .insert(OpenBatch::begin(self.queue.db(), bound).await?)
                .conn(),
            None => &mut *leasing.insert(self.queue.db().statements().await?),
        };
        // Read after the connection is had: see `Driver::connection_then_now`.
        let now = self.queue.now();
        let lease_until = request.batch.is_none().then(|| later(now, request.lease));
        let mut after_tenant = request.after_tenant;
        let mut walk = self
            .claim_unlimited(conn, now, lease_until, request, after_tenant)
            .await?;
        if walk.as_ref().is_some_and(|w| w.tenants == 0) && after_tenant.is_some() {
            // The turn through the tenants after `after_tenant` is over: the next starts from
            // the first tenant.
            after_tenant = None;
            walk = self
                .claim_unlimited(conn, now, lease_until, request, None)
                .await?;
        }
        let Some(walk) = walk else {
            return Ok(None);
        };
        if let Some(leasing) = leasing {
            leasing.finish().await?;
        }
        let mut claimed = walk.into_claimed(request.limit, after_tenant);
        if let Some(batch) = batch.filter(|_| !claimed.jobs.is_empty()) {
            self.register_batch(&batch, request.owner, &claimed.jobs, now)
                .await?;
            claimed.batch = Some(batch);
        }
        Ok(Some(claimed))
    }

    async fn claim_unlimited(
        &self,
        conn: &mut PgConnection,
        now: DateTime<Utc>,
        lease_until: Option<DateTime<Utc>>,
        request: &ClaimRequest<'_>,
        after_tenant: Option<&str>,
    ) -> Result<Option<FastClaim>> {
        let (names, max_attempts) = type_columns(request.job_types);
        let floors = request.floors.map(Floors::args).unwrap_or_default();
        let sql = if floors.used {
            "SELECT * FROM jobrunner.claim_unlimited($1, $2, $3, $4, $5, $6, $7, $8,
                                                     $9, $10, $11, $12)"
        } else {
            "SELECT * FROM jobrunner.claim_unlimited($1, $2, $3, $4, $5, $6, $7, $8)"
        };
        let mut query = sqlx::query_as::<_, FastRow>(sql)
            .bind(now)
            .bind(request.owner)
            .bind(lease_until)
            .bind(names)
            .bind(max_attempts)
            .bind(int(request.default_max_attempts))
            .bind(i32::try_from(request.limit).unwrap_or(i32::MAX))
            .bind(after_tenant.unwrap_or(""));
        if floors.used {
            query = query
                .bind(&floors.tenants)
                .bind(&floors.priorities)
                .bind(&floors.run_ats)
                .bind(&floors.ids);
        }
        let rows = query.fetch_all(conn).await?;
        let mut claim = FastClaim::default();
        let mut found = Vec::new();
        for row in rows {
            if row.job.id.is_some() {
                claim.jobs.extend(row.job.into_job());
            } else if let Some(floor) = row.floor() {
                found.push(floor);
            } else if row.limited == Some(true) {
                return Ok(None);
            } else {
                claim.tenants = count(row.tenants.unwrap_or_default()) as usize;
                claim.last_tenant = row.last_tenant;
            }
        }
        if let Some(known) = request.floors {
            known.found(&floors, found);
        }
        Ok(Some(claim))
    }

    /// The full claim, `jobrunner.claim`: tenant limits, weights and type caps.
    async fn claim_full(&self, request: &ClaimRequest<'_>) -> Result<Claimed> {
        let (mut conn, now) = self.connection_then_now().await?;
        let (names, max_attempts) = type_columns(request.job_types);
        let caps: Vec<Option<i32>> = request
            .job_types
            .iter()
            .map(|t| t.concurrency.map(int))
            .collect();
        let rows: Vec<ClaimedRow> =
            sqlx::query_as("SELECT * FROM jobrunner.claim($1, $2, $3, $4, $5, $6, $7, $8, $9)")
                .bind(now)
                .bind(request.owner)
                .bind(later(now, request.lease))
                .bind(names)
                .bind(max_attempts)
                .bind(caps)
                .bind(int(request.default_max_attempts))
                .bind(i32::try_from(request.limit).unwrap_or(i32::MAX))
                .bind(request.after_tenant)
                .fetch_all(&mut *conn)
                .await?;
        conn.finish().await?;
        let mut claimed = Claimed::default();
        for row in rows {
            if row.job.id.is_some() {
                claimed.jobs.extend(row.job.into_job());
            } else {
                claimed.more = row.more.unwrap_or_default();
                claimed.held = row.held.unwrap_or_default();
                claimed.rate_wait = row
                    .wait_ms
                    .map(|ms| Duration::from_millis(u64::try_from(ms).unwrap_or_default()));
                claimed.next_tenant = row.next_tenant;
            }
        }
        // UPDATE ... RETURNING keeps no order.
        claimed
            .jobs
            .sort_by_key(|job| (job.priority, job.run_at, job.id));
        Ok(claimed)
    }
}

/// The job types' names and max attempts, as the claim functions take them.
pub(super) fn type_columns(types: &[ClaimType]) -> (Vec<&str>, Vec<Option<i32>>) {
    let names = types.iter().map(|t| t.job_type.as_str()).collect();
    let max_attempts = types.iter().map(|t| t.max_attempts.map(int)).collect();
    (names, max_attempts)
}

fn int(n: u32) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}
