//! The rescuer: returns expired leases, of any runner, to the queue, and counts the attempts
//! of batch transactions that ended without committing.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::Level;

use super::outcome_log::OutcomeLine;
use super::outcome_log::writer::at_once;
use super::service::Service;
use super::sleep_or_stop;
use crate::driver::{Driver, Rescued};
use crate::executor::Executor;
use crate::job::JobState;
use crate::retry::RetryPolicy;

/// Most expired leases taken back per rescue round.
const RESCUE_BATCH: usize = 1000;

/// Looks for expired leases every `interval` until claiming stops.
///
/// When this runner cannot reach the database, or waits on it longer than a heartbeat
/// interval (here or in its heartbeat), every runner's heartbeats are most likely held up too:
/// leases that lapse then belong to runners that are alive. So rescues pause until the
/// database has answered promptly for a lease and a heartbeat interval, long enough for those
/// runners' heartbeats to land, instead of taking their jobs and running them twice. A runner
/// that alone lost the database is rescued from as usual, by runners that did not.
pub(super) struct Rescuer<E> {
    pub driver: Driver,
    /// Its job types' max attempts count for the jobs it rescues.
    pub executor: Arc<E>,
    pub retry: RetryPolicy,
    pub interval: Duration,
    pub lease: Duration,
    pub heartbeat_interval: Duration,
    /// The heartbeat stalled since the last round.
    pub stalls: watch::Receiver<()>,
}

impl<E: Executor> Service for Rescuer<E> {
    const NAME: &'static str = "rescuer";

    async fn run(mut self, stop: CancellationToken) {
        let stall = self.heartbeat_interval;
        let pause = self.lease + stall;
        let mut paused_until: Option<Instant> = None;
        while !sleep_or_stop(&stop, self.interval).await {
            // Every round looks at the database, paused or not, so a pause lasts until it has
            // answered promptly for the whole of it.
            let asked = Instant::now();
            let probe = self.driver.queue().pool().acquire().await.map(drop);
            let heartbeat_stalled = self.stalls.has_changed().unwrap_or(false);
            self.stalls.mark_unchanged();
            let stalled = heartbeat_stalled || asked.elapsed() > stall;
            let result = match probe {
                Ok(()) => self.rescue(!stalled && paused_until.is_none()).await,
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
            // The lines of what it rescued were written before each rescue committed.
            if let Err(error) = result {
                tracing::warn!(%error, "rescuing expired leases failed");
            }
        }
    }
}

impl<E: Executor> Rescuer<E> {
    /// Counts the attempts of lost batches, and if `leases`, rescues expired leases. A lost
    /// batch is known for certain (its transaction's lock is free), however slow the database
    /// was: no pause holds it back.
    async fn rescue(&self, leases: bool) -> jobrunner_client::Result<Vec<Rescued>> {
        let types = self.executor.job_types();
        let log = |rescued: &[Rescued]| at_once(|| rescued.iter().for_each(log_rescued));
        let mut rescued = self
            .driver
            .rescue_batches(&self.retry, &types, RESCUE_BATCH, log)
            .await?;
        if leases {
            rescued.extend(
                self.driver
                    .rescue_expired(&self.retry, &types, RESCUE_BATCH, log)
                    .await?,
            );
        }
        Ok(rescued)
    }
}

/// One outcome line per rescued job, as for the attempts a runner records itself; written
/// before the rescue commits, as they are.
fn log_rescued(job: &Rescued) {
    let error = if job.in_batch {
        format!(
            "runner {} died while running the job: its batch transaction ended without \
             committing",
            job.owner
        )
    } else {
        format!("lease expired: runner {} stopped heartbeating", job.owner)
    };
    let mut line = OutcomeLine {
        job_id: job.job_id,
        job_type: &job.job_type,
        tenant: &job.tenant,
        attempt: job.attempt,
        error: Some(&error),
        ..OutcomeLine::default()
    };
    let (outcome, message) = match (job.state == JobState::Failed, job.in_batch) {
        (true, false) => ("failed", "lease expired; no attempts left"),
        (false, false) => ("retry", "lease expired; job rescued"),
        (true, true) => ("failed", "batch transaction lost; no attempts left"),
        (false, true) => ("retry", "batch transaction lost; job rescued"),
    };
    line.outcome = outcome;
    crate::metrics::rescued(&job.job_type, &job.tenant);
    line.log(Level::WARN, message);
}
