//! Background chores every runner does: extend its own leases, rescue other runners' expired
//! leases, prune retained completed jobs, and vacuum the jobs table.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::{Shared, sleep_or_stop};
use crate::executor::Executor;
use crate::job::JobState;
use crate::queue::Vacuum;

/// Most expired leases taken back per rescue round.
const RESCUE_BATCH: usize = 1000;
/// Most completed jobs deleted per statement.
const PRUNE_BATCH: u32 = 1000;
/// How often the vacuum chore looks at the jobs table's dead row versions.
const VACUUM_CHECK: Duration = Duration::from_secs(2);

/// Extends the leases of claimed jobs every heartbeat interval, until `stop` (which fires only
/// after every outcome is written, so no lease lapses during a shutdown).
pub(super) async fn heartbeat<E: Executor>(shared: Arc<Shared<E>>, stop: CancellationToken) {
    let interval = shared.config.heartbeat_interval();
    while !sleep_or_stop(&stop, interval).await {
        let due = shared.inflight.renewal_due(interval);
        if due.is_empty() {
            continue;
        }
        let jobs: Vec<(i64, u32)> = due.iter().map(|t| (t.job_id, t.attempt)).collect();
        let asked_at = Instant::now();
        match shared
            .queue
            .extend_leases(&shared.config.owner, &jobs, shared.config.lease)
            .await
        {
            Ok(held) => {
                if held.len() < due.len() {
                    tracing::warn!(lost = due.len() - held.len(), "heartbeat found lost leases");
                }
                shared.inflight.renewed(&due, &held, asked_at);
            }
            Err(error) => tracing::warn!(%error, jobs = due.len(), "heartbeat failed"),
        }
    }
}

/// Returns expired leases (of any runner) to the queue, until the worker stops.
pub(super) async fn rescue<E: Executor>(shared: Arc<Shared<E>>) {
    while !sleep_or_stop(&shared.stop, shared.config.rescue_interval).await {
        match shared
            .queue
            .rescue_expired(&shared.config.retry, RESCUE_BATCH)
            .await
        {
            Ok(rescued) => {
                for job in rescued {
                    let (outcome, message) = match job.state {
                        JobState::Failed => ("failed", "lease expired; no attempts left"),
                        _ => ("retry", "lease expired; job rescued"),
                    };
                    tracing::warn!(
                        target: "jobrunner::outcome",
                        job_id = job.job_id, job_type = %job.job_type, tenant = %job.tenant,
                        attempt = job.attempt, outcome,
                        error = %format_args!("lease expired: runner {} stopped heartbeating",
                                              job.owner),
                        "{message}"
                    );
                }
            }
            Err(error) => tracing::warn!(%error, "rescuing expired leases failed"),
        }
    }
}

/// Deletes completed jobs older than the retention, until the worker stops. Does nothing when
/// completed jobs are not retained.
pub(super) async fn prune<E: Executor>(shared: Arc<Shared<E>>) {
    let Some(keep) = shared.config.keep_completed else {
        return;
    };
    let interval = (keep / 10).clamp(Duration::from_secs(1), Duration::from_secs(60));
    while !sleep_or_stop(&shared.stop, interval).await {
        loop {
            match shared.queue.prune_completed(keep, PRUNE_BATCH).await {
                Ok(n) if n == u64::from(PRUNE_BATCH) && !shared.stop.is_cancelled() => continue,
                Ok(n) => {
                    if n > 0 {
                        tracing::debug!(deleted = n, "pruned completed jobs");
                    }
                    break;
                }
                Err(error) => {
                    tracing::warn!(%error, "pruning completed jobs failed");
                    break;
                }
            }
        }
    }
}

/// Vacuums the jobs table whenever it holds `vacuum_dead_rows` dead row versions. While an
/// old snapshot keeps vacuum from removing them, it looks less and less often (up to once a
/// minute). Stops for good, saying why, if the runner's role may not vacuum the table.
pub(super) async fn vacuum<E: Executor>(shared: Arc<Shared<E>>) {
    let Some(threshold) = shared.config.vacuum_dead_rows else {
        return;
    };
    let mut wait = VACUUM_CHECK;
    while !sleep_or_stop(&shared.stop, wait).await {
        let started = Instant::now();
        match shared.queue.vacuum_if_needed(threshold).await {
            Ok(Vacuum::Done { dead, left }) => {
                let took_ms = started.elapsed().as_secs_f64() * 1e3;
                tracing::debug!(dead, left, took_ms, "vacuumed the jobs table");
                let stuck = u64::try_from(left).unwrap_or_default() >= threshold;
                wait = if stuck {
                    (wait * 2).min(Duration::from_secs(60))
                } else {
                    VACUUM_CHECK
                };
            }
            Ok(Vacuum::NotNeeded) => wait = VACUUM_CHECK,
            Ok(Vacuum::NotOwner) => {
                tracing::info!(
                    "this role does not own the jobs table: leaving vacuum to autovacuum"
                );
                return;
            }
            Err(error) => tracing::warn!(%error, "vacuuming the jobs table failed"),
        }
    }
}
