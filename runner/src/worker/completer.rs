//! Writes attempt outcomes in batches and logs each one once it is committed.
//!
//! Group commit: while one batch is being written, reports pile up in the channel, and the
//! next write takes all of them (up to [`MAX_BATCH`]). An idle runner writes each outcome at
//! once; a busy one writes hundreds per round trip.

use std::sync::Arc;

use tokio::sync::{broadcast, mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::attempt::Report;
use super::inflight::InFlight;
use super::outcome_log::{log_intended, log_recorded};
use super::service::Service;
use super::{retry_delay, sleep_or_stop};
use crate::driver::Driver;

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
            batch.clear();
            self.completions.send_modify(|n| *n += 1);
        }
    }
}

impl Completer {
    fn forget(&self, batch: &[Report]) {
        for report in batch {
            self.inflight.remove(report.ticket);
        }
    }

    async fn write(&self, batch: &[Report], give_up: &CancellationToken) {
        let mut failures = 0;
        log_intended(batch);
        loop {
            let settlements = batch.iter().map(|r| &r.settlement);
            match self
                .driver
                .record_outcomes(&self.owner, self.keep_completed, settlements)
                .await
            {
                Ok(applied) => {
                    // Forgotten before anyone hears of the commit: a runner with nothing in
                    // flight claims its next job the fast way (see the fetcher).
                    self.forget(batch);
                    if self.recorded.receiver_count() > 0 {
                        let _ = self.recorded.send(applied.as_slice().into());
                    }
                    log_recorded(batch, &applied, failures > 0);
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
                        self.forget(batch);
                        return;
                    }
                }
            }
        }
    }
}
