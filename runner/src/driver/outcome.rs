//! Writing what became of attempts, many per round trip, each guarded by its fencing token.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use jobrunner_client::Result;
use serde_json::value::RawValue;

use super::floors::Key;
use super::{Driver, announce_jobs};
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
}

impl Outcome {
    /// The outcome's name, as logged and stored.
    pub fn label(&self) -> &'static str {
        match self {
            Outcome::Completed { .. } => "completed",
            Outcome::Retry { .. } => "retry",
            Outcome::Failed { .. } => "failed",
            Outcome::Requeued { .. } => "requeued",
        }
    }

    /// The error of a failed attempt.
    pub fn error(&self) -> Option<&str> {
        match self {
            Outcome::Retry { error, .. } | Outcome::Failed { error } => Some(error),
            Outcome::Completed { .. } | Outcome::Requeued { .. } => None,
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

impl Driver {
    /// Records `settlements` made by runner `owner` in one statement and returns the ids whose
    /// outcome was applied. A missing id means the fence held: the lease expired and the job
    /// was rescued or claimed by someone else, so this runner's outcome no longer counts.
    pub async fn record_outcomes<'a>(
        &self,
        owner: &str,
        keep_completed: bool,
        settlements: impl IntoIterator<Item = &'a Settlement>,
    ) -> Result<Vec<i64>> {
        let (mut ids, mut attempts, mut labels) = (Vec::new(), Vec::new(), Vec::new());
        let (mut run_ats, mut errors, mut results) = (Vec::new(), Vec::new(), Vec::new());
        let mut plugins = Vec::new();
        for s in settlements {
            ids.push(s.job_id);
            attempts.push(i32::try_from(s.attempt).unwrap_or(i32::MAX));
            labels.push(s.outcome.label());
            run_ats.push(match &s.outcome {
                Outcome::Retry { run_at, .. } => Some(*run_at),
                Outcome::Requeued { run_at, .. } => *run_at,
                _ => None,
            });
            errors.push(s.outcome.error().map(|e| clip(e, MAX_ERROR_LEN)));
            plugins.push(s.plugin_sha256.as_deref());
            results.push(match &s.outcome {
                Outcome::Completed {
                    result: Some(result),
                } if keep_completed => Some(result.get()),
                _ => None,
            });
        }
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let now = self.queue.now();
        let applied: Vec<Applied> = sqlx::query_as(
            "WITH input AS (
                 SELECT * FROM unnest($1::bigint[], $2::int[], $3::text[], $4::timestamptz[],
                                      $5::text[], $6::text[], $10::text[])
                          AS t(id, attempt, outcome, run_at, error, result, plugin)
             ),
             deleted AS (
                 DELETE FROM jobrunner.jobs AS j
                  USING input AS i
                  WHERE i.outcome = 'completed' AND NOT $9
                    AND j.id = i.id AND j.attempt = i.attempt
                    AND j.state = 'running' AND j.lease_owner = $7
              RETURNING j.id, false AS available, j.priority, j.run_at
             ),
             updated AS (
                 UPDATE jobrunner.jobs AS j
                    SET state = (CASE i.outcome
                                     WHEN 'completed' THEN 'completed'
                                     WHEN 'failed' THEN 'failed'
                                     ELSE 'available'
                                 END)::jobrunner.job_state,
                        attempt = CASE WHEN i.outcome = 'requeued' THEN j.attempt - 1
                                       ELSE j.attempt END,
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
                    AND j.id = i.id AND j.attempt = i.attempt
                    AND j.state = 'running' AND j.lease_owner = $7
              RETURNING j.id, j.state = 'available' AS available, j.priority, j.run_at
             )
             SELECT * FROM deleted UNION ALL SELECT * FROM updated",
        )
        .bind(ids)
        .bind(attempts)
        .bind(labels)
        .bind(run_ats)
        .bind(errors)
        .bind(results)
        .bind(owner)
        .bind(now)
        .bind(keep_completed)
        .bind(plugins)
        .fetch_all(self.queue.pool())
        .await?;

        // Retried and requeued jobs: idle runners start them when due, and claim floors above
        // them come down.
        announce_jobs(
            self.queue.pool(),
            applied.iter().filter_map(Applied::available),
        )
        .await;
        Ok(applied.into_iter().map(|row| row.id).collect())
    }
}
