//! Writes attempt outcomes in batches and logs each one once it is committed.
//!
//! Group commit: while one batch is being written, reports pile up in the channel, and the
//! next write takes all of them (up to [`MAX_BATCH`]). An idle runner writes each outcome at
//! once; a busy one writes hundreds per round trip.

use std::collections::HashSet;
use std::sync::Arc;

use tokio::sync::{broadcast, mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::Level;

use super::attempt::Report;
use super::inflight::InFlight;
use super::outcome_log::OutcomeLine;
use super::service::Service;
use super::{retry_delay, sleep_or_stop};
use crate::driver::{Driver, Outcome};

/// Most outcomes written in one statement.
const MAX_BATCH: usize = 1000;

/// The completer: writes every report until all senders are gone. If the database is
/// unreachable a batch is retried with backoff, holding its leases (the heartbeat keeps
/// renewing them), until it is written or the shutdown token fires at the end of a shutdown.
pub(super) struct Completer {
    pub driver: Driver,
    pub owner: String,
    /// Completed jobs are kept (with their result) rather than deleted.
    pub keep_completed: bool,
    pub inflight: Arc<InFlight>,
    pub reports: mpsc::Receiver<Report>,
    /// Counts committed batches, for claim loops waiting on a completion.
    pub completions: watch::Sender<u64>,
    /// The ids of each batch of outcomes just committed, for whoever subscribed.
    pub recorded: broadcast::Sender<Arc<[i64]>>,
}

impl Service for Completer {
    const NAME: &'static str = "completer";

    async fn run(mut self, give_up: CancellationToken) {
        let mut batch = Vec::with_capacity(MAX_BATCH);
        while self.reports.recv_many(&mut batch, MAX_BATCH).await > 0 {
            self.inflight.recording(batch.iter().map(|r| r.ticket));
            self.write(&batch, &give_up).await;
            for report in batch.drain(..) {
                self.inflight.remove(report.ticket);
            }
            self.completions.send_modify(|n| *n += 1);
        }
    }
}

impl Completer {
    async fn write(&self, batch: &[Report], give_up: &CancellationToken) {
        let mut failures = 0;
        loop {
            let settlements = batch.iter().map(|r| &r.settlement);
            match self
                .driver
                .record_outcomes(&self.owner, self.keep_completed, settlements)
                .await
            {
                Ok(applied) => {
                    if self.recorded.receiver_count() > 0 {
                        let _ = self.recorded.send(applied.as_slice().into());
                    }
                    let applied: HashSet<i64> = applied.into_iter().collect();
                    for report in batch {
                        log_outcome(
                            report,
                            applied.contains(&report.settlement.job_id),
                            failures > 0,
                        );
                    }
                    return;
                }
                Err(error) => {
                    failures += 1;
                    let delay = retry_delay(failures);
                    tracing::warn!(%error, outcomes = batch.len(), retry_in = ?delay,
                                   "recording outcomes failed; retrying");
                    if sleep_or_stop(give_up, delay).await {
                        let ids: Vec<i64> = batch.iter().map(|r| r.settlement.job_id).collect();
                        tracing::error!(
                            ?ids,
                            "giving up on recording these outcomes at shutdown; \
                             the jobs run again once their leases expire"
                        );
                        return;
                    }
                }
            }
        }
    }
}

/// The outcome line of one attempt, once its outcome is committed (or refused by the fence).
fn log_outcome(report: &Report, applied: bool, after_retry: bool) {
    let settlement = &report.settlement;
    let mut line = OutcomeLine {
        job_id: settlement.job_id,
        job_type: &report.job_type,
        tenant: &report.tenant,
        attempt: settlement.attempt,
        error: settlement.outcome.error(),
        duration: Some(report.duration),
        plugin_sha256: settlement.plugin_sha256.as_deref(),
        ..OutcomeLine::default()
    };
    if !applied {
        line.outcome = "lease_lost";
        let why = if after_retry {
            "outcome not applied: recorded by an earlier try whose reply was lost, or the lease \
             was lost"
        } else {
            "outcome not applied: the lease was lost and another runner owns the job"
        };
        return line.log(Level::WARN, why);
    }
    line.outcome = settlement.outcome.label();
    match &settlement.outcome {
        Outcome::Completed { .. } => line.log(Level::INFO, "job completed"),
        Outcome::Retry { run_at, .. } => {
            line.retry_at = Some(*run_at);
            line.log(Level::WARN, "job failed; will retry")
        }
        Outcome::Failed { .. } => line.log(Level::ERROR, "job failed"),
        Outcome::Requeued { reason, .. } => {
            line.reason = Some(reason);
            line.log(Level::INFO, "job requeued")
        }
    }
}
