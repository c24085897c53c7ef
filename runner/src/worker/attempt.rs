//! The executors: `concurrency` long-lived tasks, each running one claimed job at a time and
//! reporting what became of it. Long-lived, because a task spawned per job cost more than the
//! bookkeeping around a microsecond job: allocating, moving and tearing down its future.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use tokio::sync::{OwnedSemaphorePermit, mpsc};
use tokio_util::sync::CancellationToken;

use super::Shared;
use super::inflight::Ticket;
use crate::clock::later;
use crate::executor::{Execution, Executor, JobError};
use crate::job::Job;
use crate::queue::{Outcome, Settlement};
use crate::retry::Backoff;

/// A claimed job waiting for an executor. `slot` is held until its report is queued, so a
/// slow database pushes back on claiming.
pub(super) struct Claimed {
    pub job: Job,
    pub ticket: Ticket,
    /// Fires when the heartbeat finds the claim's lease gone.
    pub lease_lost: CancellationToken,
    pub slot: OwnedSemaphorePermit,
}

/// An attempt's outcome on its way to the completer, with what the outcome log line needs.
#[derive(Debug)]
pub(super) struct Report {
    pub ticket: Ticket,
    pub settlement: Settlement,
    pub job_type: String,
    pub tenant: String,
    /// How long the executor ran; zero if it never started.
    pub duration: Duration,
}

/// Runs claimed jobs until every claim loop is gone and nothing claimed is left. Once the
/// worker stops, jobs still waiting go back to the queue unstarted.
pub(super) async fn executor<E: Executor>(
    shared: Arc<Shared<E>>,
    claimed: flume::Receiver<Claimed>,
    reports: mpsc::Sender<Report>,
) {
    while let Ok(claim) = claimed.recv_async().await {
        if shared.stop.is_cancelled() {
            not_started(&shared, claim, &reports).await;
        } else {
            run(&shared, claim, &reports).await;
        }
    }
}

/// Reports a claimed job that will not run in this worker: it goes back to the queue without
/// counting the attempt.
pub(super) async fn not_started<E>(
    shared: &Shared<E>,
    claim: Claimed,
    reports: &mpsc::Sender<Report>,
) {
    let outcome = requeued("the runner is shutting down; the job had not started");
    report(shared, claim, outcome, None, Duration::ZERO, reports).await;
}

async fn run<E: Executor>(shared: &Shared<E>, claim: Claimed, reports: &mpsc::Sender<Report>) {
    let job = &claim.job;
    tracing::debug!(
        target: "jobrunner::attempt", job_id = job.id, job_type = %job.job_type,
        tenant = %job.tenant, attempt = job.attempt, "job started"
    );
    let started = Instant::now();
    let Some((outcome, plugin_sha256)) =
        execute(shared, job, claim.ticket, &claim.lease_lost).await
    else {
        // Another runner owns the job now: nothing to record, but the slot is free.
        drop(claim);
        shared.slot_freed.notify_one();
        return;
    };
    let took = started.elapsed();
    shared.prefetch.record(took);
    // The outcome line comes only once the outcome is committed, which may be much later
    // (a database outage): this one says when the guest was done.
    tracing::debug!(
        target: "jobrunner::attempt", job_id = job.id, job_type = %job.job_type,
        tenant = %job.tenant, attempt = job.attempt, duration_ms = took.as_secs_f64() * 1e3,
        "job ran; recording its outcome"
    );
    report(shared, claim, outcome, plugin_sha256, took, reports).await;
}

/// Queues the outcome of `claim` for the completer, then frees its slot.
async fn report<E>(
    shared: &Shared<E>,
    claim: Claimed,
    outcome: Outcome,
    plugin_sha256: Option<Arc<str>>,
    duration: Duration,
    reports: &mpsc::Sender<Report>,
) {
    let Claimed {
        job, ticket, slot, ..
    } = claim;
    let report = Report {
        ticket,
        settlement: Settlement {
            job_id: job.id,
            attempt: job.attempt,
            outcome,
            plugin_sha256,
        },
        job_type: job.job_type,
        tenant: job.tenant,
        duration,
    };
    if reports.send(report).await.is_err() {
        // Only if the completer died; the lease will expire and the rescuer takes the job.
        tracing::error!(job_id = job.id, "outcome lost: the completer is gone");
    }
    drop(slot);
    shared.slot_freed.notify_one();
}

/// Runs the executor until it finishes, the shutdown deadline interrupts it, or the lease is
/// lost (`None`: nothing to record, another runner owns the job now). The outcome comes with
/// the plugin version that ran the attempt.
async fn execute<E: Executor>(
    shared: &Shared<E>,
    job: &Job,
    ticket: Ticket,
    lease_lost: &CancellationToken,
) -> Option<(Outcome, Option<Arc<str>>)> {
    // The job first: one that finishes in its first poll never registers with the tokens,
    // whose waiter lists every executor shares.
    tokio::select! {
        biased;
        execution = shared.executor.execute(job) => {
            let plugin_sha256 = execution.plugin_sha256.clone();
            let backoff = shared.config.retry.backoff;
            Some((settle(job, execution, &backoff, shared.queue.now()), plugin_sha256))
        }
        _ = shared.abort.cancelled() => {
            Some((requeued("interrupted: the runner's shutdown deadline passed"), None))
        }
        _ = lease_lost.cancelled() => {
            tracing::warn!(
                job_id = job.id, job_type = %job.job_type, tenant = %job.tenant,
                attempt = job.attempt,
                "lease lost while running (another runner may have taken the job); \
                 abandoning this attempt"
            );
            shared.inflight.remove(ticket);
            None
        }
    }
}

fn requeued(reason: &str) -> Outcome {
    Outcome::Requeued {
        reason: reason.to_owned(),
        run_at: None,
    }
}

/// How long a job that did not run waits before it is ripe again.
pub(crate) const REQUEUE_DELAY: Duration = Duration::from_secs(1);

/// Turns an executor's result into the outcome to record. A retry waits for the job type's
/// own backoff, else `default_backoff`.
pub(super) fn settle(
    job: &Job,
    execution: Execution,
    default_backoff: &Backoff,
    now: DateTime<Utc>,
) -> Outcome {
    let backoff = execution.backoff.as_ref().unwrap_or(default_backoff);
    match execution.result {
        Ok(result) => Outcome::Completed { result },
        Err(JobError::Fail(error)) => Outcome::Failed { error },
        // Not ripe at once: a runner out of sandbox slots would otherwise claim it right back.
        Err(JobError::Requeue(reason)) => Outcome::Requeued {
            reason,
            run_at: Some(later(now, REQUEUE_DELAY)),
        },
        Err(JobError::Retry(error)) => match backoff.next_run(job.attempt, job.max_attempts, now) {
            Some(run_at) => Outcome::Retry { error, run_at },
            None => Outcome::Failed { error },
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(attempt: u32, max_attempts: u32) -> Job {
        Job {
            id: 1,
            job_type: "t".into(),
            tenant: "default".into(),
            payload: "{}".into(),
            priority: 0,
            attempt,
            max_attempts,
            run_at: Utc::now(),
            created_at: Utc::now(),
        }
    }

    #[test]
    fn settle_maps_results_to_outcomes() {
        let policy = Backoff::default();
        let now = Utc::now();
        let retry = || Execution::from(Err(JobError::Retry("later".into())));
        assert!(matches!(
            settle(&job(1, 3), Execution::from(Ok(None)), &policy, now),
            Outcome::Completed { .. }
        ));
        assert!(matches!(
            settle(&job(1, 3), retry(), &policy, now),
            Outcome::Retry { run_at, .. } if run_at > now
        ));
        assert!(matches!(
            settle(&job(3, 3), retry(), &policy, now),
            Outcome::Failed { .. }
        ));
        assert!(matches!(
            settle(
                &job(1, 3),
                Execution::from(Err(JobError::Fail("no".into()))),
                &policy,
                now
            ),
            Outcome::Failed { error } if error == "no"
        ));
    }
}
