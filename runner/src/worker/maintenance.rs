//! Background chores every runner does: extend its own leases, rescue other runners' expired
//! leases, prune retained completed jobs, and vacuum the jobs table.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::{Shared, sleep_or_stop};
use crate::executor::Executor;
use crate::job::JobState;
use crate::queue::{Rescued, Vacuum};

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
        // Half an interval, not a whole one: a lease renewed just under an interval ago would
        // otherwise wait for the round after, and a slow round or a late timer would then cost
        // most of the lease's margin (a third of it) on a busy machine.
        let due = shared.inflight.renewal_due(interval / 2);
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
                if asked_at.elapsed() > interval {
                    shared.heartbeat_stalled.store(true, Ordering::SeqCst);
                }
            }
            Err(error) => {
                shared.heartbeat_stalled.store(true, Ordering::SeqCst);
                tracing::warn!(%error, jobs = due.len(), "heartbeat failed");
            }
        }
    }
}

/// Returns expired leases (of any runner) to the queue, until the worker stops.
///
/// When this runner cannot reach the database, or waits on it longer than a heartbeat
/// interval (here or in its heartbeat), every runner's heartbeats are most likely held up too:
/// leases that lapse then belong to runners that are alive. So rescues pause until the
/// database has answered promptly for a lease and a heartbeat interval, long enough for those
/// runners' heartbeats to land, instead of taking their jobs and running them twice. A runner
/// that alone lost the database is rescued from as usual, by runners that did not.
pub(super) async fn rescue<E: Executor>(shared: Arc<Shared<E>>) {
    let stall = shared.config.heartbeat_interval();
    let pause = shared.config.lease + stall;
    let mut paused_until: Option<Instant> = None;
    while !sleep_or_stop(&shared.stop, shared.config.rescue_interval).await {
        // Every round looks at the database, paused or not, so a pause lasts until it has
        // answered promptly for the whole of it.
        let asked = Instant::now();
        let probe = shared.queue.pool().acquire().await.map(drop);
        let stalled =
            shared.heartbeat_stalled.swap(false, Ordering::SeqCst) || asked.elapsed() > stall;
        let result = match probe {
            Ok(()) if !stalled && paused_until.is_none() => {
                let queue = &shared.queue;
                queue
                    .rescue_expired(&shared.config.retry, RESCUE_BATCH)
                    .await
            }
            Ok(()) => Ok(Vec::new()),
            Err(error) => Err(error.into()),
        };
        if result.is_err() || stalled || asked.elapsed() > stall {
            // Said once per stall; a long outage keeps the pause going without repeating it.
            if paused_until.is_none() {
                tracing::warn!(
                    ?pause,
                    "the database was unreachable or stalled; pausing \
                     rescues so that live runners can renew their leases"
                );
            }
            paused_until = Some(Instant::now() + pause);
        } else if paused_until.is_some_and(|until| until <= Instant::now()) {
            paused_until = None;
        }
        match result {
            Ok(rescued) => rescued.iter().for_each(log_rescued),
            Err(error) => tracing::warn!(%error, "rescuing expired leases failed"),
        }
    }
}

/// One outcome line per rescued job, as for the attempts a runner records itself.
fn log_rescued(job: &Rescued) {
    let (outcome, message) = match job.state {
        JobState::Failed => ("failed", "lease expired; no attempts left"),
        _ => ("retry", "lease expired; job rescued"),
    };
    tracing::warn!(
        target: "jobrunner::outcome",
        job_id = job.job_id, job_type = %job.job_type, tenant = %job.tenant,
        attempt = job.attempt, outcome,
        error = %format_args!("lease expired: runner {} stopped heartbeating", job.owner),
        "{message}"
    );
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
