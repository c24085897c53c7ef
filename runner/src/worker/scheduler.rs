//! Fires the schedules' ticks. Every runner runs one scheduler and they need no leader: each
//! reads the schedules, fires whatever is due (the database lets one runner enqueue each
//! tick, see [`crate::driver::ticks`]), then sleeps until the next tick of any schedule, or
//! until a schedule changes (NOTIFY on `jobrunner_schedules`, passed on by the listener).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use jobrunner_client::cron::{InvalidRecurrence, Recurrence};
use jobrunner_client::schedules::ScheduleRecord;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::retry_delay;
use super::service::Service;
use crate::driver::Driver;
use crate::driver::ticks::{self, Plan};

/// The longest a scheduler sleeps without looking: a schedule change whose notification was
/// lost (the listener reconnecting) is seen within this, and so is a jump of the system clock.
const LOOK_AGAIN: Duration = Duration::from_secs(30);

/// The scheduler service.
pub(super) struct Scheduler {
    pub driver: Driver,
    /// Notified when a schedule changes.
    pub changed: Arc<Notify>,
}

impl Service for Scheduler {
    const NAME: &'static str = "scheduler";

    async fn run(self, stop: CancellationToken) {
        let mut parsed = Recurrences::default();
        let mut failures = 0;
        loop {
            let pause = match self.fire_due(&mut parsed).await {
                Ok(next) => {
                    failures = 0;
                    self.until(next)
                }
                Err(error) => {
                    failures += 1;
                    tracing::warn!(%error, "cannot fire schedules; retrying");
                    retry_delay(failures)
                }
            };
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = self.changed.notified() => {}
                _ = tokio::time::sleep(pause) => {}
            }
        }
    }
}

impl Scheduler {
    /// Fires every due tick; returns when the next one is due.
    async fn fire_due(
        &self,
        parsed: &mut Recurrences,
    ) -> jobrunner_client::Result<Option<DateTime<Utc>>> {
        loop {
            let schedules = self.driver.queue().active_schedules().await?;
            let now = self.driver.queue().now();
            let mut fired_any = false;
            let mut next: Option<DateTime<Utc>> = None;
            for schedule in &schedules {
                let Some(recurrence) = parsed.get(schedule) else {
                    continue;
                };
                if let Some(plan) = ticks::plan(schedule, recurrence, now) {
                    self.fire(schedule, &plan, now).await?;
                    fired_any = true;
                } else if let Some(tick) = ticks::next_tick(schedule, recurrence, now) {
                    next = Some(next.map_or(tick, |n| n.min(tick)));
                }
            }
            // Read the fired schedules again: their next ticks start from their new last tick.
            if !fired_any {
                return Ok(next);
            }
        }
    }

    async fn fire(
        &self,
        schedule: &ScheduleRecord,
        plan: &Plan,
        now: DateTime<Utc>,
    ) -> jobrunner_client::Result<()> {
        let fired = self.driver.fire(schedule, plan).await?;
        if !fired.fired {
            return Ok(());
        }
        let (tenant, name) = (&schedule.tenant, &schedule.name);
        if plan.skips_missed {
            tracing::info!(tenant, schedule = name, since = %schedule.anchor(),
                           catch_up = %schedule.catch_up,
                           "missed ticks skipped: no runner was up to fire them");
        }
        if let Some(error) = &fired.error {
            tracing::warn!(tenant, schedule = name, %error, "schedule tick enqueued nothing");
        }
        if fired.skipped > 0 {
            tracing::info!(
                tenant,
                schedule = name,
                skipped = fired.skipped,
                last_job = schedule.last_job_id,
                "tick skipped: the previous tick's job is still pending or running"
            );
        }
        if let (Some(first), Some(job)) = (plan.enqueue.first(), fired.job_ids.last()) {
            let late = (now - *first).num_microseconds().unwrap_or(i64::MAX) as f64 / 1e3;
            let jobs = fired.job_ids.len();
            let late_by = (now - *first).to_std().unwrap_or_default();
            crate::metrics::schedule_fired(tenant, name, late_by, jobs);
            crate::metrics::enqueued(&schedule.job_type, tenant, "schedule", jobs);
            tracing::info!(tenant, schedule = name, job_type = %schedule.job_type,
                           tick = %plan.last_tick, ticks = fired.job_ids.len(), job = job,
                           late_ms = late, "schedule fired");
        }
        Ok(())
    }

    /// How long to sleep until `next` (by the queue's clock), at most [`LOOK_AGAIN`].
    fn until(&self, next: Option<DateTime<Utc>>) -> Duration {
        let Some(next) = next else {
            return LOOK_AGAIN;
        };
        let wait = (next - self.driver.queue().now())
            .to_std()
            .unwrap_or_default();
        // A timer that fires a hair early finds nothing due and comes back at once.
        wait.clamp(Duration::from_millis(1), LOOK_AGAIN)
    }
}

/// Parsed cron expressions, by expression and zone; an invalid one is logged once.
#[derive(Default)]
struct Recurrences(HashMap<(String, String), Result<Recurrence, InvalidRecurrence>>);

impl Recurrences {
    fn get(&mut self, schedule: &ScheduleRecord) -> Option<&Recurrence> {
        let key = (schedule.cron.clone(), schedule.time_zone.clone());
        self.0
            .entry(key)
            .or_insert_with(|| {
                schedule.recurrence().inspect_err(|error| {
                    tracing::warn!(tenant = schedule.tenant, schedule = schedule.name, %error,
                                   "schedule cannot fire")
                })
            })
            .as_ref()
            .ok()
    }
}
