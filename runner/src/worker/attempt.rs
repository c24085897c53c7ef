//! The executors: `concurrency` long-lived tasks, each running one claimed job at a time and
//! reporting what became of it to the completer. Long-lived, because a task spawned per job cost more than the
//! bookkeeping around a microsecond job: allocating, moving and tearing down its future.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use tokio::sync::{OwnedSemaphorePermit, mpsc};
use tokio_util::sync::CancellationToken;

use super::batch::Batch;
use super::inflight::{Cancel, InFlight, Ticket};
use super::service::Service;
use super::slots::Slots;
use crate::Queue;
use crate::clock::later;
use crate::driver::{Outcome, Settlement};
use crate::executor::{Execution, Executor, JobError};
use crate::job::Job;
use crate::retry::Backoff;
use jobrunner_client::AttemptLog;

/// A claimed job waiting for an executor. `slot` is held until its report is queued, so a
/// slow database pushes back on claiming.
pub(super) struct ClaimedJob {
    pub job: Job,
    pub ticket: Ticket,
    /// Fires when the heartbeat finds the claim's lease gone, or its batch transaction is.
    pub lease_lost: CancellationToken,
    /// Fires when an operator cancels the job.
    pub cancel: Cancel,
    pub slot: OwnedSemaphorePermit,
    /// The batch transaction it was claimed in, if any: its outcome goes there while the
    /// batch is open.
    pub batch: Option<Arc<Batch>>,
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

/// How an attempt ended: its outcome, the plugin version that ran it, and what it logged.
struct Ended {
    outcome: Outcome,
    plugin_sha256: Option<Arc<str>>,
    journal: Option<AttemptLog>,
}

impl From<Outcome> for Ended {
    /// An end without a plugin: the job did not run, or its attempt was stopped.
    fn from(outcome: Outcome) -> Self {
        Ended {
            outcome,
            plugin_sha256: None,
            journal: None,
        }
    }
}

/// Queues outcomes for their batch or the completer, and frees their jobs' slots.
#[derive(Clone)]
pub(super) struct Reporter {
    pub reports: mpsc::Sender<Report>,
    pub slots: Arc<Slots>,
}

impl Reporter {
    /// Reports a claimed job that will not run in this worker: it goes back to the queue
    /// without counting the attempt.
    pub async fn not_started(&self, claim: ClaimedJob) {
        let outcome = requeued("the runner is shutting down; the job had not started");
        self.report(claim, Ended::from(outcome), Duration::ZERO)
            .await;
    }

    /// Queues the outcome of `claim` for its batch or the completer, then frees its slot.
    async fn report(&self, claim: ClaimedJob, ended: Ended, duration: Duration) {
        let ClaimedJob {
            job,
            ticket,
            slot,
            batch,
            ..
        } = claim;
        let report = Report {
            ticket,
            settlement: Settlement {
                job_id: job.id,
                attempt: job.attempt,
                outcome: ended.outcome,
                plugin_sha256: ended.plugin_sha256,
                journal: ended.journal,
            },
            job_type: job.job_type,
            tenant: job.tenant,
            duration,
        };
        let for_completer = match batch {
            Some(batch) => batch.keep(report),
            None => Some(report),
        };
        if let Some(report) = for_completer
            && self.reports.send(report).await.is_err()
        {
            // Only if the completer died; the lease will expire and the rescuer takes the job.
            tracing::error!(job_id = job.id, "outcome lost: the completer is gone");
        }
        drop(slot);
        self.slots.freed();
    }
}

/// One of the worker's `concurrency` executors: runs claimed jobs one at a time until every
/// claim loop is gone and nothing claimed is left. Once claiming stops, jobs still waiting go
/// back to the queue unstarted; its own shutdown (the deadline) interrupts the running job,
/// which is requeued.
pub(super) struct Attempts<E> {
    pub executor: Arc<E>,
    pub queue: Queue,
    pub inflight: Arc<InFlight>,
    pub default_backoff: Backoff,
    pub claimed: flume::Receiver<ClaimedJob>,
    pub reporter: Reporter,
    /// Claiming stopped: what has not started goes back.
    pub claiming: CancellationToken,
}

impl<E: Executor> Service for Attempts<E> {
    const NAME: &'static str = "executor";

    async fn run(self, interrupt: CancellationToken) {
        while let Ok(claim) = self.claimed.recv_async().await {
            if self.claiming.is_cancelled() {
                self.reporter.not_started(claim).await;
            } else {
                self.attempt(claim, &interrupt).await;
            }
        }
    }
}

impl<E: Executor> Attempts<E> {
    async fn attempt(&self, claim: ClaimedJob, interrupt: &CancellationToken) {
        let job = &claim.job;
        tracing::debug!(
            target: "jobrunner::attempt", job_id = job.id, job_type = %job.job_type,
            tenant = %job.tenant, attempt = job.attempt, "job started"
        );
        let started = Instant::now();
        crate::metrics::running(1.0);
        let executed = self.execute(&claim, interrupt).await;
        crate::metrics::running(-1.0);
        let Some(ended) = executed else {
            // Another runner owns the job now: nothing to record, but the slot is free.
            drop(claim);
            self.reporter.slots.freed();
            return;
        };
        let took = started.elapsed();
        self.reporter.slots.record(took);
        // The outcome line comes only once the outcome is committed, which may be much later
        // (a database outage): this one says when the guest was done.
        tracing::debug!(
            target: "jobrunner::attempt", job_id = job.id, job_type = %job.job_type,
            tenant = %job.tenant, attempt = job.attempt, duration_ms = took.as_secs_f64() * 1e3,
            "job ran; recording its outcome"
        );
        self.reporter.report(claim, ended, took).await;
    }

    /// Runs the executor until it finishes, the shutdown deadline interrupts it, or the lease
    /// is lost (`None`: nothing to record, another runner owns the job now). The outcome
    /// comes with the plugin version that ran the attempt.
    async fn execute(&self, claim: &ClaimedJob, interrupt: &CancellationToken) -> Option<Ended> {
        let job = &claim.job;
        // The job first: one that finishes in its first poll never registers with the tokens,
        // whose waiter lists every executor shares.
        tokio::select! {
            biased;
            mut execution = self.executor.execute(job) => {
                let plugin_sha256 = execution.plugin_sha256.clone();
                let journal = execution.journal.take();
                let outcome = settle(job, execution, &self.default_backoff, self.queue.now());
                Some(Ended { outcome, plugin_sha256, journal })
            }
            _ = interrupt.cancelled() => {
                Some(requeued("interrupted: the runner's shutdown deadline passed").into())
            }
            by = claim.cancel.requested() => {
                // Dropping the executor's future stopped the guest where it was.
                tracing::info!(
                    job_id = job.id, job_type = %job.job_type, tenant = %job.tenant,
                    attempt = job.attempt, by, "job cancelled while running; its guest stopped"
                );
                Some(Outcome::Cancelled { by }.into())
            }
            _ = claim.lease_lost.cancelled() => {
                tracing::warn!(
                    job_id = job.id, job_type = %job.job_type, tenant = %job.tenant,
                    attempt = job.attempt,
                    "lease lost while running (another runner may have taken the job); \
                     abandoning this attempt"
                );
                self.inflight.remove(claim.ticket);
                None
            }
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
        Ok(result) => Outcome::Completed {
            result,
            follow_ups: execution.follow_ups,
        },
        Err(JobError::Fail(error)) => Outcome::Failed { error },
        // Not ripe at once: a runner out of sandbox slots would otherwise claim it right back.
        Err(JobError::Requeue(reason)) => Outcome::Requeued {
            reason,
            run_at: Some(later(now, REQUEUE_DELAY)),
        },
        Err(JobError::Retry(error)) => {
            match backoff.next_run(job.attempt, job.max_attempts, now) {
                // The handler's own delay (a Retry-After) replaces the backoff's, up to its cap.
                Some(run_at) => Outcome::Retry {
                    error,
                    run_at: execution
                        .retry_delay
                        .map_or(run_at, |delay| later(now, delay.min(backoff.cap))),
                },
                None => Outcome::Failed { error },
            }
        }
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
