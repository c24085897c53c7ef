//! Writing what became of attempts, many per round trip, each guarded by its fencing token:
//! one statement for leased jobs and for the jobs of a batch transaction as it closes. The
//! follow-up jobs of the completions that applied are enqueued in the same transaction.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use jobrunner_client::{AttemptLog, MAX_ATTEMPT_LOGS, NewJob, Result};
use serde_json::value::RawValue;
use sqlx::PgConnection;

use super::batch::OpenBatch;
use super::floors::Key;
use super::{Driver, announce_jobs};
use crate::clock::later;
use crate::text::clip;

/// Longest error message kept per attempt; longer ones are cut, saying so.
pub const MAX_ERROR_LEN: usize = 8 * 1024;

/// What became of one attempt.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// Succeeded: deleted, or kept as `completed` with its result while completed jobs are
    /// retained.
    Completed {
        /// The handler's result, if any.
        result: Option<Box<RawValue>>,
        /// The jobs the attempt enqueued: written in the transaction that records this
        /// outcome, and only if it applies.
        follow_ups: Vec<NewJob>,
    },
    /// Failed with attempts left: available again at `run_at`.
    Retry {
        /// Why the attempt failed.
        error: String,
        /// When the next attempt becomes ripe.
        run_at: DateTime<Utc>,
    },
    /// Failed for good: kept as `failed`.
    Failed {
        /// Why.
        error: String,
    },
    /// Never ran (no free sandbox slot, shutting down), or was interrupted by a shutdown:
    /// available again, and the attempt does not count.
    Requeued {
        /// Why, for the log.
        reason: String,
        /// When it becomes ripe again; `None` keeps its run-at (ripe at once).
        run_at: Option<DateTime<Utc>>,
    },
    /// Stopped while running because an operator cancelled it: kept as `cancelled`, the
    /// attempt counted.
    Cancelled {
        /// Who cancelled it.
        by: String,
    },
}

impl Outcome {
    /// The outcome's name, as logged and stored.
    pub fn label(&self) -> &'static str {
        match self {
            Outcome::Completed { .. } => "completed",
            Outcome::Retry { .. } => "retry",
            Outcome::Failed { .. } => "failed",
            Outcome::Requeued { .. } => "requeued",
            Outcome::Cancelled { .. } => "cancelled",
        }
    }

    /// The error of a failed attempt.
    pub fn error(&self) -> Option<&str> {
        match self {
            Outcome::Retry { error, .. } | Outcome::Failed { error } => Some(error),
            Outcome::Completed { .. } | Outcome::Requeued { .. } | Outcome::Cancelled { .. } => {
                None
            }
        }
    }
}

/// An outcome for one claimed attempt. `(job_id, attempt)` plus the writer's owner name form
/// the fencing token: the write applies only if that runner still holds that attempt's lease.
#[derive(Debug, Clone)]
pub struct Settlement {
    /// The job.
    pub job_id: i64,
    /// The attempt the outcome belongs to.
    pub attempt: u32,
    /// What became of it.
    pub outcome: Outcome,
    /// The sha256 of the plugin version that ran it, kept with its error.
    pub plugin_sha256: Option<Arc<str>>,
    /// What the attempt logged and requested, kept with the job (not with a completed job
    /// that is deleted).
    pub journal: Option<AttemptLog>,
}

/// A row an outcome applied to; the job's key if it is available again.
#[derive(sqlx::FromRow)]
struct Applied {
    id: i64,
    available: bool,
    priority: i32,
    run_at: DateTime<Utc>,
}

impl Applied {
    fn available(&self) -> Option<Key> {
        self.available.then_some(Key {
            priority: self.priority,
            run_at: self.run_at,
            id: self.id,
        })
    }
}

/// The columns of a set of settlements, as the outcome statement takes them.
#[derive(Default)]
struct Columns<'a> {
    ids: Vec<i64>,
    attempts: Vec<i32>,
    labels: Vec<&'static str>,
    run_ats: Vec<Option<DateTime<Utc>>>,
    errors: Vec<Option<std::borrow::Cow<'a, str>>>,
    results: Vec<Option<&'a str>>,
    plugins: Vec<Option<&'a str>>,
    cancelled_by: Vec<Option<&'a str>>,
    journals: Vec<Option<sqlx::types::Json<&'a AttemptLog>>>,
}

impl<'a> Columns<'a> {
    fn of(settlements: impl IntoIterator<Item = &'a Settlement>, keep_completed: bool) -> Self {
        let mut c = Columns::default();
        for s in settlements {
            c.ids.push(s.job_id);
            c.attempts
                .push(i32::try_from(s.attempt).unwrap_or(i32::MAX));
            c.labels.push(s.outcome.label());
            c.run_ats.push(match &s.outcome {
                Outcome::Retry { run_at, .. } => Some(*run_at),
                Outcome::Requeued { run_at, .. } => *run_at,
                _ => None,
            });
            c.errors
                .push(s.outcome.error().map(|e| clip(e, MAX_ERROR_LEN)));
            c.plugins.push(s.plugin_sha256.as_deref());
            c.journals.push(s.journal.as_ref().map(sqlx::types::Json));
            c.cancelled_by.push(match &s.outcome {
                Outcome::Cancelled { by } => Some(by),
                _ => None,
            });
            c.results.push(match &s.outcome {
                Outcome::Completed {
                    result: Some(result),
                    ..
                } if keep_completed => Some(result.get()),
                _ => None,
            });
        }
        c
    }
}

fn has_follow_ups(settlement: &Settlement) -> bool {
    matches!(&settlement.outcome, Outcome::Completed { follow_ups, .. } if !follow_ups.is_empty())
}

/// How a batch transaction closes, besides its outcomes.
struct Closing<'a> {
    batch: i64,
    /// Its jobs still running: they go on under per-job leases until `lease_until`.
    running: &'a [i64],
    lease_until: DateTime<Utc>,
}

impl Driver {
    /// Records `settlements` of leased jobs made by runner `owner` in one statement and
    /// returns the ids whose outcome was applied. A missing id means the fence held: the lease
    /// expired and the job was rescued or claimed by someone else, so this runner's outcome no
    /// longer counts.
    pub async fn record_outcomes<'a>(
        &self,
        owner: &str,
        keep_completed: bool,
        settlements: impl IntoIterator<Item = &'a Settlement>,
    ) -> Result<Vec<i64>> {
        let settlements: Vec<&Settlement> = settlements.into_iter().collect();
        let columns = Columns::of(settlements.iter().copied(), keep_completed);
        if columns.ids.is_empty() {
            return Ok(Vec::new());
        }
        let applied = if settlements.iter().any(|s| has_follow_ups(s)) {
            let mut tx = self.queue.db().begin().await?;
            let applied = self
                .write_outcomes(&mut tx, owner, keep_completed, &columns, None)
                .await?;
            self.write_follow_ups(&mut tx, &applied, &settlements)
                .await?;
            tx.commit().await?;
            applied
        } else {
            let mut conn = self.queue.db().statements().await?;
            let applied = self
                .write_outcomes(&mut conn, owner, keep_completed, &columns, None)
                .await?;
            conn.finish().await?;
            applied
        };
        Ok(self.announced(applied).await)
    }

    /// Enqueues the follow-ups of the completions among `applied`, on the connection whose
    /// transaction records them: a completion that did not apply (its fence held) or did not
    /// happen writes none.
    async fn write_follow_ups(
        &self,
        conn: &mut PgConnection,
        applied: &[Applied],
        settlements: &[&Settlement],
    ) -> Result<()> {
        let applied: HashSet<i64> = applied.iter().map(|row| row.id).collect();
        let follow_ups: Vec<NewJob> = settlements
            .iter()
            .filter(|s| applied.contains(&s.job_id))
            .filter_map(|s| match &s.outcome {
                Outcome::Completed { follow_ups, .. } => Some(follow_ups.iter().cloned()),
                _ => None,
            })
            .flatten()
            .collect();
        self.queue.enqueue_follow_ups(conn, &follow_ups).await?;
        Ok(())
    }

    /// Closes `batch`, committing in one statement the `settlements` of its jobs that ended,
    /// per-job leases of `lease` for `owner` on those still `running`, and the removal of the
    /// batch's row. Returns the ids whose outcome was applied. An error means nothing was
    /// written: the jobs are claimable again, and the rescuer counts their attempts.
    pub async fn finish_batch<'a>(
        &self,
        mut batch: OpenBatch,
        owner: &str,
        keep_completed: bool,
        lease: Duration,
        running: &[i64],
        settlements: impl IntoIterator<Item = &'a Settlement>,
    ) -> Result<Vec<i64>> {
        let settlements: Vec<&Settlement> = settlements.into_iter().collect();
        let columns = Columns::of(settlements.iter().copied(), keep_completed);
        let closing = Closing {
            batch: batch.id(),
            running,
            lease_until: later(self.queue.now(), lease),
        };
        let applied = self
            .write_outcomes(
                batch.conn(),
                owner,
                keep_completed,
                &columns,
                Some(&closing),
            )
            .await?;
        if settlements.iter().any(|s| has_follow_ups(s)) {
            self.write_follow_ups(batch.conn(), &applied, &settlements)
                .await?;
        }
        batch.commit().await?;
        Ok(self.announced(applied).await)
    }

    /// The one statement that writes outcomes. Each is fenced: a leased job's by its lease
    /// (`owner` holds this attempt's), a batch's by the batch transaction's row lock (the row is
    /// as claimed). `closing` also turns a batch's running jobs into leases and deletes its row.
    async fn write_outcomes(
        &self,
        conn: &mut PgConnection,
        owner: &str,
        keep_completed: bool,
        c: &Columns<'_>,
        closing: Option<&Closing<'_>>,
    ) -> Result<Vec<Applied>> {
        let now = self.queue.now();
        Ok(sqlx::query_as(
            "WITH input AS (
                 SELECT * FROM unnest($1::bigint[], $2::int[], $3::text[], $4::timestamptz[],
                                      $5::text[], $6::text[], $10::text[], $14::text[],
                                      $15::jsonb[])
                          AS t(id, attempt, outcome, run_at, error, result, plugin, cancelled_by,
                               journal)
             ),
             -- The fence is in each statement's own WHERE, not in a shared CTE: only there
             -- is it checked again on the row version a concurrent rescue may have written.
             deleted AS (
                 DELETE FROM jobrunner.jobs AS j
                  USING input AS i
                  WHERE i.outcome = 'completed' AND NOT $9
                    AND j.id = i.id
                    AND CASE WHEN $13::bigint IS NULL
                             THEN j.state = 'running' AND j.lease_owner = $7
                                  AND j.attempt = i.attempt
                             ELSE j.state = 'available' AND j.attempt = i.attempt - 1
                        END
              RETURNING j.id, false AS available, j.priority, j.run_at
             ),
             updated AS (
                 UPDATE jobrunner.jobs AS j
                    SET state = (CASE i.outcome
                                     WHEN 'completed' THEN 'completed'
                                     WHEN 'failed' THEN 'failed'
                                     WHEN 'cancelled' THEN 'cancelled'
                                     ELSE 'available'
                                 END)::jobrunner.job_state,
                        cancelled_by = coalesce(i.cancelled_by, j.cancelled_by),
                        -- The last $16 attempts' logs.
                        attempt_logs = CASE WHEN i.journal IS NULL THEN j.attempt_logs ELSE
                            (SELECT jsonb_agg(x.e ORDER BY x.n)
                               FROM jsonb_array_elements(j.attempt_logs || jsonb_build_array(i.journal))
                                    WITH ORDINALITY AS x(e, n)
                              WHERE x.n > jsonb_array_length(j.attempt_logs) + 1 - $16)
                        END,
                        attempt = CASE WHEN i.outcome = 'requeued' THEN i.attempt - 1
                                       ELSE i.attempt END,
                        run_at = coalesce(i.run_at, j.run_at),
                        lease_owner = NULL,
                        lease_expires_at = NULL,
                        errors = CASE WHEN i.error IS NULL THEN j.errors
                                      ELSE j.errors || jsonb_build_array(jsonb_build_object(
                                          'attempt', i.attempt, 'at', $8::timestamptz,
                                          'error', i.error)
                                          || CASE WHEN i.plugin IS NULL THEN '{}'::jsonb
                                                  ELSE jsonb_build_object('plugin_sha256', i.plugin)
                                             END)
                                 END,
                        result = i.result::jsonb,
                        updated_at = $8
                   FROM input AS i
                  WHERE (i.outcome <> 'completed' OR $9)
                    AND j.id = i.id
                    AND CASE WHEN $13::bigint IS NULL
                             THEN j.state = 'running' AND j.lease_owner = $7
                                  AND j.attempt = i.attempt
                             ELSE j.state = 'available' AND j.attempt = i.attempt - 1
                        END
              RETURNING j.id, j.state = 'available' AS available, j.priority, j.run_at
             ),
             leased AS (
                 UPDATE jobrunner.jobs AS j
                    SET state = 'running', attempt = j.attempt + 1, lease_owner = $7,
                        lease_expires_at = $12, updated_at = $8
                  -- Not `state = 'available'`: the planner would read that partial index
                  -- whole for a bitmap. The batch holds these rows: nothing else changed them.
                  WHERE j.id = ANY($11::bigint[]) AND j.state <> 'running'
             ),
             closed AS (
                 DELETE FROM jobrunner.batches WHERE id = $13
             )
             SELECT * FROM deleted UNION ALL SELECT * FROM updated",
        )
        .bind(&c.ids)
        .bind(&c.attempts)
        .bind(&c.labels)
        .bind(&c.run_ats)
        .bind(&c.errors)
        .bind(&c.results)
        .bind(owner)
        .bind(now)
        .bind(keep_completed)
        .bind(&c.plugins)
        .bind(closing.map_or(&[][..], |c| c.running))
        .bind(closing.map(|c| c.lease_until))
        .bind(closing.map(|c| c.batch))
        .bind(&c.cancelled_by)
        .bind(&c.journals)
        .bind(MAX_ATTEMPT_LOGS as i32)
        .fetch_all(conn)
        .await?)
    }

    /// Announces the jobs available again among `applied` (retried and requeued: idle runners
    /// start them when due, and claim floors above them come down) and returns the ids.
    async fn announced(&self, applied: Vec<Applied>) -> Vec<i64> {
        announce_jobs(
            self.queue.db(),
            applied.iter().filter_map(Applied::available),
        )
        .await;
        applied.into_iter().map(|row| row.id).collect()
    }
}
