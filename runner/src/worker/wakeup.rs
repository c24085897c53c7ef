//! LISTEN for new jobs so that an idle runner claims them at once instead of at its next poll,
//! and so that the claim floors hear of jobs that became available below them; for schedule
//! changes, so that the scheduler reads them at once; and for cancellations, so that a job
//! this runner runs stops at once.

use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::PgListener;
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

use super::inflight::InFlight;
use super::service::Service;
use super::{retry_delay, sleep_or_stop};
use crate::Queue;
use crate::client::schedules::SCHEDULES_CHANNEL;
use crate::client::{CANCEL_CHANNEL, WAKE_CHANNEL};
use crate::driver::Floors;

/// How often a runner that cannot LISTEN looks for cancellations of its running jobs.
const CANCELLATION_POLL: Duration = Duration::from_secs(1);

/// Wakes the claim loops on every new-job notification and the scheduler on every schedule
/// change, until claiming stops. Reconnects with backoff when the connection drops; after
/// every (re)connect it wakes both once, since notifications sent while disconnected are lost. `listening` reports whether it is subscribed; claim
/// floors are used only while it is.
pub(super) struct Listener {
    pub queue: Queue,
    pub floors: Arc<Floors>,
    pub wake: Arc<Notify>,
    /// Notified when a schedule changes (and after every reconnect).
    pub schedules: Arc<Notify>,
    /// The attempts running here, which a cancellation stops.
    pub inflight: Arc<InFlight>,
    pub listening: watch::Sender<bool>,
}

impl Service for Listener {
    const NAME: &'static str = "listener";

    async fn run(self, stop: CancellationToken) {
        let mut failures = 0;
        loop {
            match self.subscribe().await {
                Ok(None) => {
                    tracing::warn!(
                        why = "the database URL goes through a pooler in transaction mode, \
                               which cannot LISTEN, and no direct URL was given (--listen-url)",
                        "polling for new jobs, schedule changes and cancellations instead of \
                         LISTEN"
                    );
                    self.poll_cancellations(&stop).await;
                    return;
                }
                Ok(Some(listener)) => {
                    failures = 0;
                    if self.listen(listener, &stop).await {
                        return;
                    }
                }
                Err(error) => {
                    tracing::warn!(%error, "cannot LISTEN for new jobs; polling meanwhile")
                }
            }
            self.listening.send_replace(false);
            self.floors.listening(false);
            failures += 1;
            if sleep_or_stop(&stop, retry_delay(failures)).await {
                return;
            }
        }
    }
}

impl Listener {
    /// Stops the attempt a cancellation names, if it runs here.
    fn cancel(&self, request: &str) {
        #[derive(serde::Deserialize)]
        struct Request {
            id: i64,
            attempt: u32,
            by: String,
        }
        match serde_json::from_str::<Request>(request) {
            Ok(r) => {
                if self.inflight.cancel(r.id, r.attempt, &r.by) {
                    tracing::info!(
                        job_id = r.id,
                        attempt = r.attempt,
                        by = r.by,
                        "cancellation received; stopping the job"
                    );
                }
            }
            Err(error) => tracing::warn!(%error, request, "unreadable cancellation; ignored"),
        }
    }

    /// Cancellations notified while this runner was not listening are lost: after every
    /// (re)connect, the jobs it runs that an operator asked to stop (`cancelled_by` set on a
    /// leased job) are stopped.
    async fn missed_cancellations(&self) {
        let held = self.inflight.held();
        if held.is_empty() {
            return;
        }
        let ids: Vec<i64> = held.iter().map(|(id, _)| *id).collect();
        let asked: Result<Vec<(i64, i32, String)>, sqlx::Error> = sqlx::query_as(
            "SELECT id, attempt, cancelled_by FROM jobrunner.jobs
              WHERE id = ANY($1) AND state = 'running' AND cancelled_by IS NOT NULL",
        )
        .bind(&ids)
        .fetch_all(self.queue.db())
        .await;
        match asked {
            Ok(asked) => {
                for (id, attempt, by) in asked {
                    if self.inflight.cancel(id, crate::client::count(attempt), &by) {
                        tracing::info!(
                            job_id = id,
                            attempt,
                            by,
                            "cancellation found after reconnecting; stopping the job"
                        );
                    }
                }
            }
            Err(error) => tracing::warn!(%error, "cannot look for missed cancellations"),
        }
    }

    /// Without LISTEN, looks for cancellations of the jobs running here every second.
    async fn poll_cancellations(&self, stop: &CancellationToken) {
        while !sleep_or_stop(stop, CANCELLATION_POLL).await {
            self.missed_cancellations().await;
        }
    }

    async fn subscribe(&self) -> Result<Option<PgListener>, sqlx::Error> {
        let Some(mut listener) = self.queue.db().listener().await? else {
            return Ok(None);
        };
        listener
            .listen_all([WAKE_CHANNEL, SCHEDULES_CHANNEL, CANCEL_CHANNEL])
            .await?;
        Ok(Some(listener))
    }

    /// Passes notifications on until the connection fails (false) or `stop` fires (true).
    async fn listen(&self, mut listener: PgListener, stop: &CancellationToken) -> bool {
        self.floors.listening(true);
        self.listening.send_replace(true);
        self.wake.notify_one();
        self.schedules.notify_one();
        self.missed_cancellations().await;
        loop {
            let message = tokio::select! {
                _ = stop.cancelled() => return true,
                message = listener.try_recv() => message,
            };
            match message {
                Ok(Some(notification)) if notification.channel() == SCHEDULES_CHANNEL => {
                    self.schedules.notify_one();
                }
                Ok(Some(notification)) if notification.channel() == CANCEL_CHANNEL => {
                    self.cancel(notification.payload());
                }
                Ok(Some(notification)) => {
                    self.floors.hear(notification.payload());
                    self.wake.notify_one();
                }
                // The connection dropped and sqlx has already re-subscribed.
                Ok(None) => {
                    tracing::warn!("LISTEN connection was lost and re-established");
                    self.floors.listening(true);
                    self.wake.notify_one();
                    self.schedules.notify_one();
                    self.missed_cancellations().await;
                }
                Err(error) => {
                    tracing::warn!(%error, "LISTEN connection failed");
                    return false;
                }
            }
        }
    }
}
