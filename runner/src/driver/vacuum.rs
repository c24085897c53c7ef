//! Vacuuming the jobs table when it is full of dead row versions.
//!
//! Every job leaves dead row versions behind (its claim, its deletion), and dead index entries
//! at the front of the claim index that every claim must step over. Autovacuum's defaults
//! (20% of the table, a look every minute) come far too late for a queue, and some servers run
//! without it: a million-job drain here slowed from 52,000 to 34,000 jobs/s before the runner
//! vacuumed as it went.
//!
//! Claim floors have since made claims start past most dead entries, while each vacuum costs
//! the table's whole size: in a million-job drain the runner vacuumed at almost every check
//! (12 times in 30 s). Like autovacuum, it now also waits for dead row versions to make up a
//! fifth of the table: a large backlog is vacuumed less often (8 times in the same drain), a
//! small table as before.

use jobrunner_client::Result;

use super::Driver;

/// What [`Queue::vacuum_if_needed`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Vacuum {
    /// Vacuumed the table: the dead row versions before, and those left that vacuum could
    /// not remove yet (an old snapshot still sees them).
    Done {
        /// Before.
        dead: i64,
        /// After.
        left: i64,
    },
    /// Too few dead row versions, or another runner or autovacuum is at it.
    NotNeeded,
    /// This role neither owns the table nor is a superuser: only autovacuum can do it.
    NotOwner,
}

impl Driver {
    /// Vacuums `jobrunner.jobs` if it holds at least `dead_rows` dead row versions, and at
    /// least a fifth of its row versions are dead (by the server's statistics), and no other
    /// runner, nor autovacuum, is vacuuming it.
    pub async fn vacuum_if_needed(&self, dead_rows: u64) -> Result<Vacuum> {
        let Rows {
            dead,
            live,
            owner,
            vacuuming,
        } = self.rows().await?;
        if !owner {
            return Ok(Vacuum::NotOwner);
        }
        if vacuuming || dead < i64::try_from(dead_rows).unwrap_or(i64::MAX) || dead < live / 4 {
            return Ok(Vacuum::NotNeeded);
        }
        // Two runners may both get here: the second's SKIP_LOCKED steps around the first's
        // lock (a session lock to keep it out would not survive a pooler). The simple
        // protocol (no arguments) keeps VACUUM out of a transaction through a pooler.
        sqlx::raw_sql("VACUUM (SKIP_LOCKED) jobrunner.jobs")
            .execute(self.queue.db())
            .await?;
        let left = self.rows().await?.dead;
        Ok(Vacuum::Done { dead, left })
    }

    async fn rows(&self) -> Result<Rows> {
        Ok(sqlx::query_as(
            "SELECT coalesce(s.n_dead_tup, 0) AS dead, coalesce(s.n_live_tup, 0) AS live,
                    pg_has_role(c.relowner, 'USAGE')
                    OR (SELECT r.rolsuper FROM pg_roles AS r WHERE r.rolname = current_user)
                    AS owner,
                    EXISTS (SELECT FROM pg_stat_progress_vacuum AS v WHERE v.relid = c.oid)
                    AS vacuuming
               FROM pg_class AS c
               LEFT JOIN pg_stat_user_tables AS s ON s.relid = c.oid
              WHERE c.oid = 'jobrunner.jobs'::regclass",
        )
        .fetch_one(self.queue.db())
        .await?)
    }
}

/// The jobs table's row versions by the server's statistics, whether this role may vacuum
/// it, and whether a vacuum of it is under way.
#[derive(sqlx::FromRow)]
struct Rows {
    dead: i64,
    live: i64,
    owner: bool,
    vacuuming: bool,
}
