//! What a running runner tells the others about its plugins: whenever its registry changes it
//! wakes its worker (a new job type may have ripe jobs) and announces its plugin statuses in
//! `jobrunner.runners`, refreshed every few seconds, for `runner plugins`.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::Registry;
use crate::driver::Driver;
use crate::worker::Waker;

/// How often a runner refreshes its announcement.
pub const REFRESH: Duration = Duration::from_secs(5);

/// The announcing task; [`Presence::withdraw`] ends it and deletes the runner's row.
pub struct Presence {
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl Presence {
    /// Starts announcing `registry` as runner `owner`'s, watching `plugin_dir`, and waking
    /// `worker` on every change.
    pub fn start(
        driver: Driver,
        owner: String,
        plugin_dir: String,
        registry: Arc<Registry>,
        worker: Waker,
    ) -> Self {
        let stop = CancellationToken::new();
        let task = tokio::spawn(announce(
            driver,
            owner,
            plugin_dir,
            registry,
            worker,
            stop.clone(),
        ));
        Self { stop, task }
    }

    /// Stops announcing and deletes the runner's row.
    pub async fn withdraw(self) {
        self.stop.cancel();
        let _ = self.task.await;
    }
}

async fn announce(
    driver: Driver,
    owner: String,
    plugin_dir: String,
    registry: Arc<Registry>,
    worker: Waker,
    stop: CancellationToken,
) {
    let started_at = Utc::now();
    let mut changes = registry.subscribe();
    let mut refresh = tokio::time::interval(REFRESH);
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            changed = changes.changed() => {
                if changed.is_err() {
                    break;
                }
                worker.wake();
            }
            _ = refresh.tick() => {}
        }
        let statuses = serde_json::to_value(registry.statuses()).expect("statuses serialize");
        if let Err(error) = driver
            .announce_runner(
                &owner,
                &plugin_dir,
                started_at,
                &statuses,
                crate::metrics::totals(),
            )
            .await
        {
            tracing::warn!(%error, "cannot announce this runner's plugins; retrying");
        }
    }
    if let Err(error) = driver.withdraw_runner(&owner).await {
        tracing::warn!(%error, "cannot withdraw this runner's announcement; it expires");
    }
}
