//! The vacuum chore: vacuums the jobs table when dead row versions pile up.

use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::service::Service;
use super::sleep_or_stop;
use crate::driver::{Driver, Vacuum};

/// How often the jobs table's dead row versions are looked at.
const VACUUM_CHECK: Duration = Duration::from_secs(2);

/// Vacuums the jobs table whenever it holds `threshold` dead row versions, until claiming
/// stops. While an old snapshot keeps vacuum from removing them, it looks less and less often
/// (up to once a minute). Stops for good, saying why, if the runner's role may not vacuum the
/// table.
pub(super) struct Vacuumer {
    pub driver: Driver,
    pub threshold: u64,
}

impl Service for Vacuumer {
    const NAME: &'static str = "vacuum";

    async fn run(self, stop: CancellationToken) {
        let mut wait = VACUUM_CHECK;
        while !sleep_or_stop(&stop, wait).await {
            let started = Instant::now();
            match self.driver.vacuum_if_needed(self.threshold).await {
                Ok(Vacuum::Done { dead, left }) => {
                    let took_ms = started.elapsed().as_secs_f64() * 1e3;
                    tracing::debug!(dead, left, took_ms, "vacuumed the jobs table");
                    let stuck = u64::try_from(left).unwrap_or_default() >= self.threshold;
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
}
