//! LISTEN for new jobs so that an idle runner claims them at once instead of at its next poll,
//! and so that the claim floors hear of jobs that became available below them.

use std::sync::Arc;

use sqlx::postgres::PgListener;
use tokio::sync::watch;

use super::{Shared, retry_delay, sleep_or_stop};
use crate::executor::Executor;
use crate::queue::WAKE_CHANNEL;

/// Wakes the fetcher on every notification, until the worker stops. Reconnects with backoff
/// when the connection drops; after every (re)connect it wakes the fetcher once, since
/// notifications sent while disconnected are lost. `listening` reports whether it is
/// subscribed; claim floors are used only while it is.
pub(super) async fn listen<E: Executor>(shared: Arc<Shared<E>>, listening: watch::Sender<bool>) {
    let mut failures = 0;
    loop {
        match subscribe(&shared).await {
            Ok(mut listener) => {
                failures = 0;
                shared.floors.listening(true);
                listening.send_replace(true);
                shared.wake.notify_one();
                loop {
                    let message = tokio::select! {
                        _ = shared.stop.cancelled() => return,
                        message = listener.try_recv() => message,
                    };
                    match message {
                        Ok(Some(notification)) => {
                            shared.floors.hear(notification.payload());
                            shared.wake.notify_one();
                        }
                        // The connection dropped and sqlx has already re-subscribed.
                        Ok(None) => {
                            tracing::warn!("LISTEN connection was lost and re-established");
                            shared.floors.listening(true);
                            shared.wake.notify_one();
                        }
                        Err(error) => {
                            tracing::warn!(%error, "LISTEN connection failed");
                            break;
                        }
                    }
                }
            }
            Err(error) => tracing::warn!(%error, "cannot LISTEN for new jobs; polling meanwhile"),
        }
        listening.send_replace(false);
        shared.floors.listening(false);
        failures += 1;
        if sleep_or_stop(&shared.stop, retry_delay(failures)).await {
            return;
        }
    }
}

async fn subscribe<E>(shared: &Shared<E>) -> Result<PgListener, sqlx::Error> {
    let mut listener = PgListener::connect_with(shared.queue.pool()).await?;
    listener.listen(WAKE_CHANNEL).await?;
    Ok(listener)
}
