//! The runners' announcements: which plugins each live runner serves, for `runner plugins`.

use std::time::Duration;

use chrono::{DateTime, Utc};
use jobrunner_client::Result;
use serde::Serialize;

use super::Driver;

/// Rows of runners not seen for this long are deleted: they died without a clean shutdown.
const FORGET_AFTER: Duration = Duration::from_secs(3600);

/// One runner's announcement.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct RunnerInfo {
    /// The runner's lease owner name.
    pub owner: String,
    /// The plugin directory it watches.
    pub plugin_dir: String,
    /// When it started.
    pub started_at: DateTime<Utc>,
    /// When it last refreshed its row.
    pub seen_at: DateTime<Utc>,
    /// Its plugins' statuses, as it published them.
    pub plugins: serde_json::Value,
    /// Attempts it completed since it started.
    pub completed: i64,
    /// Attempts that failed for good on it since it started.
    pub failed: i64,
}

/// A runner's outcome counts since it started, as it announces them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Totals {
    /// Attempts completed.
    pub completed: i64,
    /// Attempts that failed for good.
    pub failed: i64,
}

impl Driver {
    /// Creates or refreshes runner `owner`'s row, and forgets runners long gone.
    pub async fn announce_runner(
        &self,
        owner: &str,
        plugin_dir: &str,
        started_at: DateTime<Utc>,
        plugins: &serde_json::Value,
        totals: Totals,
    ) -> Result<()> {
        let now = self.queue.now();
        let forget_before = now - chrono::Duration::from_std(FORGET_AFTER).unwrap_or_default();
        sqlx::query(
            "WITH forgotten AS (
                 DELETE FROM jobrunner.runners WHERE seen_at < $6 AND owner <> $1
             )
             INSERT INTO jobrunner.runners
                    (owner, plugin_dir, started_at, seen_at, plugins, completed, failed)
             VALUES ($1, $2, $3, $4, $5, $7, $8)
             ON CONFLICT (owner) DO UPDATE
                SET plugin_dir = excluded.plugin_dir, seen_at = excluded.seen_at,
                    plugins = excluded.plugins, completed = excluded.completed,
                    failed = excluded.failed",
        )
        .bind(owner)
        .bind(plugin_dir)
        .bind(started_at)
        .bind(now)
        .bind(plugins)
        .bind(forget_before)
        .bind(totals.completed)
        .bind(totals.failed)
        .execute(self.queue.db())
        .await?;
        Ok(())
    }

    /// Deletes runner `owner`'s row (it is stopping).
    pub async fn withdraw_runner(&self, owner: &str) -> Result<()> {
        sqlx::query("DELETE FROM jobrunner.runners WHERE owner = $1")
            .bind(owner)
            .execute(self.queue.db())
            .await?;
        Ok(())
    }

    /// The runners seen within `within`, by owner.
    pub async fn runners(&self, within: Duration) -> Result<Vec<RunnerInfo>> {
        let since = self.queue.now() - chrono::Duration::from_std(within).unwrap_or_default();
        Ok(sqlx::query_as(
            "SELECT owner, plugin_dir, started_at, seen_at, plugins, completed, failed
               FROM jobrunner.runners WHERE seen_at >= $1 ORDER BY owner",
        )
        .bind(since)
        .fetch_all(self.queue.db())
        .await?)
    }
}
