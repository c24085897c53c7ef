//! Pausing a job type: no runner claims its jobs until it is resumed (every claim function
//! leaves out the types in `jobrunner.paused_job_types`). Jobs already running finish; new
//! jobs of the type are still enqueued, and wait.

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::job::validate_job_type;
use crate::{Queue, Result};

/// A paused job type.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct PausedJobType {
    /// The job type.
    pub job_type: String,
    /// When it was paused.
    pub paused_at: DateTime<Utc>,
    /// Who paused it (the CLI's user, or the dashboard).
    pub paused_by: String,
}

impl Queue {
    /// Pauses `job_type`, as `by`. Pausing a paused type keeps its first pause.
    pub async fn pause_job_type(&self, job_type: &str, by: &str) -> Result<PausedJobType> {
        validate_job_type(job_type)?;
        let paused = sqlx::query_as(
            "WITH new AS (
                 INSERT INTO jobrunner.paused_job_types (job_type, paused_at, paused_by)
                 VALUES ($1, $2, $3)
                 ON CONFLICT (job_type) DO NOTHING
                 RETURNING job_type, paused_at, paused_by
             )
             SELECT * FROM new
             UNION ALL
             SELECT job_type, paused_at, paused_by FROM jobrunner.paused_job_types
              WHERE job_type = $1 AND NOT EXISTS (SELECT FROM new)",
        )
        .bind(job_type)
        .bind(self.now())
        .bind(by)
        .fetch_one(&self.db)
        .await?;
        Ok(paused)
    }

    /// Resumes `job_type` and wakes the runners; false if it was not paused.
    pub async fn resume_job_type(&self, job_type: &str) -> Result<bool> {
        validate_job_type(job_type)?;
        let mut tx = self.db.begin().await?;
        let resumed = sqlx::query("DELETE FROM jobrunner.paused_job_types WHERE job_type = $1")
            .bind(job_type)
            .execute(&mut *tx)
            .await?
            .rows_affected()
            > 0;
        crate::wake_runners(&mut *tx).await?;
        tx.commit().await?;
        Ok(resumed)
    }

    /// Every paused job type, by name.
    pub async fn paused_job_types(&self) -> Result<Vec<PausedJobType>> {
        Ok(sqlx::query_as(
            "SELECT job_type, paused_at, paused_by FROM jobrunner.paused_job_types
              ORDER BY job_type",
        )
        .fetch_all(&self.db)
        .await?)
    }
}
