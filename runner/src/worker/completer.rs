//! Writes attempt outcomes in batches and logs each one once it is committed.
//!
//! Group commit: while one batch is being written, reports pile up in the channel, and the
//! next write takes all of them (up to [`MAX_BATCH`]). An idle runner writes each outcome at
//! once; a busy one writes hundreds per round trip.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::attempt::Report;
use super::{Shared, retry_delay, sleep_or_stop};
use crate::executor::Executor;
use crate::queue::Outcome;

/// Most outcomes written in one statement.
const MAX_BATCH: usize = 1000;

/// Writes every report until all senders are gone. If the database is unreachable the batch
/// is retried with backoff, holding its leases (the heartbeat keeps renewing them), until it
/// is written or `give_up` fires at the end of a shutdown.
pub(super) async fn run<E: Executor>(
    shared: Arc<Shared<E>>,
    mut reports: mpsc::Receiver<Report>,
    give_up: CancellationToken,
) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while reports.recv_many(&mut batch, MAX_BATCH).await > 0 {
        write(&shared, &batch, &give_up).await;
        for report in batch.drain(..) {
            shared.inflight.remove(report.ticket);
        }
        // Paired with the fetcher's store then load, so a claim held back by max_running
        // either sees this batch's count or is woken by it.
        shared.completions.fetch_add(1, Ordering::SeqCst);
        if shared.held_back.load(Ordering::SeqCst) {
            shared.wake.notify_one();
        }
    }
}

async fn write<E: Executor>(shared: &Shared<E>, batch: &[Report], give_up: &CancellationToken) {
    let keep = shared.config.keep_completed.is_some();
    let mut failures = 0;
    loop {
        let settlements = batch.iter().map(|r| &r.settlement);
        match shared
            .queue
            .record_outcomes(&shared.config.owner, keep, settlements)
            .await
        {
            Ok(applied) => {
                if shared.recorded.receiver_count() > 0 {
                    let _ = shared.recorded.send(applied.as_slice().into());
                }
                let applied: std::collections::HashSet<i64> = applied.into_iter().collect();
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

/// One line per attempt: the line operators and tests count.
macro_rules! outcome_line {
    ($level:expr, $report:expr, $outcome:expr, $($fields_then_message:tt)+) => {
        tracing::event!(
            target: "jobrunner::outcome",
            $level,
            job_id = $report.settlement.job_id,
            job_type = %$report.job_type,
            tenant = %$report.tenant,
            attempt = $report.settlement.attempt,
            outcome = $outcome,
            duration_ms = $report.duration.as_micros() as f64 / 1e3,
            error = $report.settlement.outcome.error(),
            plugin_sha256 = $report.settlement.plugin_sha256.as_deref(),
            $($fields_then_message)+
        )
    };
}

fn log_outcome(report: &Report, applied: bool, after_retry: bool) {
    use tracing::Level;
    if !applied {
        let why = if after_retry {
            "outcome not applied: recorded by an earlier try whose reply was lost, or the lease \
             was lost"
        } else {
            "outcome not applied: the lease was lost and another runner owns the job"
        };
        outcome_line!(Level::WARN, report, "lease_lost", "{}", why);
        return;
    }
    match &report.settlement.outcome {
        Outcome::Completed { .. } => {
            outcome_line!(Level::INFO, report, "completed", "job completed")
        }
        Outcome::Retry { run_at, .. } => {
            outcome_line!(Level::WARN, report, "retry", retry_at = %run_at, "job failed; will retry")
        }
        Outcome::Failed { .. } => outcome_line!(Level::ERROR, report, "failed", "job failed"),
        Outcome::Requeued { reason, .. } => {
            outcome_line!(Level::INFO, report, "requeued", reason = %reason, "job requeued")
        }
    }
}
