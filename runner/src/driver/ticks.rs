//! Firing schedules: which ticks of a schedule are due ([`plan`]), and the one statement that
//! enqueues them ([`Driver::fire`]) exactly once however many runners try.
//!
//! A tick is due once the clock has passed it and it is later than the schedule's anchor (its
//! last tick handled, or the time it was created, resumed or re-timed). Due ticks up to
//! [`MISFIRE_GRACE`] late are on time and always enqueued; older ones were missed (no runner
//! was up) and the catch-up policy decides: `none` skips them, `latest` enqueues the most
//! recent when no tick is on time, `all` enqueues those within the window. A runner then
//! advances the schedule's `last_tick` past every due tick, in the statement that enqueues the
//! kept ones, and only if `last_tick` is still what it read: of runners racing for a tick, one
//! enqueues it and the others find it handled.

use chrono::{DateTime, Utc};
use jobrunner_client::Result;
use jobrunner_client::cron::Recurrence;
use jobrunner_client::schedules::{CatchUp, MAX_TICKS_PER_FIRE, MISFIRE_GRACE, ScheduleRecord};

use super::Driver;

/// What firing a schedule now does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// The ticks whose jobs to enqueue, in order.
    pub enqueue: Vec<DateTime<Utc>>,
    /// The newest tick this handles: the schedule's `last_tick` after firing.
    pub last_tick: DateTime<Utc>,
    /// Whether missed ticks are skipped.
    pub skips_missed: bool,
}

/// What to fire for `schedule` (read as `recurrence`) at `now`; `None` when no tick is due.
pub fn plan(
    schedule: &ScheduleRecord,
    recurrence: &Recurrence,
    now: DateTime<Utc>,
) -> Option<Plan> {
    let anchor = schedule.anchor();
    let due_after = |t: DateTime<Utc>| {
        recurrence
            .ticks_after(t)
            .take_while(move |tick| *tick <= now)
    };
    let first_due = due_after(anchor).next()?;
    let on_time_from = anchor.max(now - grace());
    let on_time: Vec<_> = due_after(on_time_from).take(MAX_TICKS_PER_FIRE).collect();
    let missed = first_due <= on_time_from;
    let newest_due = |enqueue: &[DateTime<Utc>]| {
        enqueue
            .last()
            .copied()
            .or_else(|| recurrence.latest_in(anchor, on_time_from))
            .unwrap_or(first_due)
    };
    let plan = match schedule.catch_up {
        _ if !missed => Plan {
            last_tick: newest_due(&on_time),
            enqueue: on_time,
            skips_missed: false,
        },
        CatchUp::None => Plan {
            last_tick: newest_due(&on_time),
            enqueue: on_time,
            skips_missed: true,
        },
        CatchUp::Latest if on_time.is_empty() => {
            let latest = newest_due(&[]);
            Plan {
                enqueue: vec![latest],
                last_tick: latest,
                skips_missed: first_due < latest,
            }
        }
        CatchUp::Latest => Plan {
            last_tick: newest_due(&on_time),
            enqueue: on_time,
            skips_missed: true,
        },
        CatchUp::All => {
            let window = chrono::Duration::from_std(schedule.catch_up_within)
                .unwrap_or(chrono::Duration::MAX);
            let from = anchor.max(now.checked_sub_signed(window).unwrap_or(anchor));
            let enqueue: Vec<_> = due_after(from).take(MAX_TICKS_PER_FIRE).collect();
            match enqueue.last() {
                // Everything missed is older than the window.
                None => Plan {
                    last_tick: newest_due(&[]),
                    enqueue,
                    skips_missed: true,
                },
                Some(last) => Plan {
                    last_tick: *last,
                    skips_missed: first_due < enqueue[0],
                    enqueue,
                },
            }
        }
    };
    Some(plan)
}

fn grace() -> chrono::Duration {
    chrono::Duration::from_std(MISFIRE_GRACE).expect("a small duration")
}

/// What a fire did.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct Fired {
    /// False when another runner had fired these ticks, or the schedule changed: read it
    /// again.
    pub fired: bool,
    /// The jobs enqueued, one per tick kept.
    pub job_ids: Vec<i64>,
    /// Ticks not enqueued because the previous job was still pending or running.
    pub skipped: i32,
    /// Why the ticks enqueued nothing (the tenant's policy, the payload limits), if so.
    pub error: Option<String>,
}

impl Driver {
    /// Fires `plan` for `schedule`, as read: see the module's documentation.
    pub async fn fire(&self, schedule: &ScheduleRecord, plan: &Plan) -> Result<Fired> {
        Ok(sqlx::query_as(
            "SELECT fired, job_ids, skipped, error
               FROM jobrunner.fire_schedule($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(&schedule.tenant)
        .bind(&schedule.name)
        .bind(schedule.version)
        .bind(schedule.last_tick)
        .bind(plan.last_tick)
        .bind(&plan.enqueue)
        .bind(self.queue.now())
        .fetch_one(self.queue.db())
        .await?)
    }
}

/// When the schedule's next tick is due, once the ticks due at `now` are fired.
pub fn next_tick(
    schedule: &ScheduleRecord,
    recurrence: &Recurrence,
    now: DateTime<Utc>,
) -> Option<DateTime<Utc>> {
    recurrence.next_after(schedule.anchor().max(now))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use jobrunner_client::schedules::Overlap;

    use super::*;

    fn utc(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text)
            .unwrap()
            .with_timezone(&Utc)
    }

    fn schedule(
        cron: &str,
        catch_up: CatchUp,
        last_tick: Option<&str>,
    ) -> (ScheduleRecord, Recurrence) {
        let record = ScheduleRecord {
            tenant: "default".into(),
            name: "s".into(),
            cron: cron.into(),
            time_zone: "UTC".into(),
            job_type: "echo".into(),
            payload: serde_json::json!({}),
            priority: 0,
            max_attempts: None,
            unique_key: None,
            overlap: Overlap::Allow,
            catch_up,
            catch_up_within: Duration::from_secs(6 * 3600),
            paused: false,
            origin: "api".into(),
            version: 1,
            since: utc("2026-12-01T00:00:00Z"),
            last_tick: last_tick.map(utc),
            last_job_id: None,
            last_job_state: None,
            last_error: None,
            created_at: utc("2026-12-01T00:00:00Z"),
        };
        let recurrence = record.recurrence().unwrap();
        (record, recurrence)
    }

    #[test]
    fn nothing_is_due_before_the_next_tick() {
        let (s, r) = schedule("0 * * * *", CatchUp::None, Some("2026-12-07T09:00:00Z"));
        assert_eq!(plan(&s, &r, utc("2026-12-07T09:59:59Z")), None);
    }

    #[test]
    fn an_on_time_tick_is_enqueued_whatever_the_policy() {
        for catch_up in [CatchUp::None, CatchUp::Latest, CatchUp::All] {
            let (s, r) = schedule("0 * * * *", catch_up, Some("2026-12-07T09:00:00Z"));
            let plan = plan(&s, &r, utc("2026-12-07T10:00:20Z")).unwrap();
            assert_eq!(plan.enqueue, [utc("2026-12-07T10:00:00Z")], "{catch_up}");
            assert_eq!(plan.last_tick, utc("2026-12-07T10:00:00Z"));
            assert!(!plan.skips_missed);
        }
    }

    #[test]
    fn missed_ticks_follow_the_catch_up_policy() {
        // Down from 09:00 to 18:10: nine hourly ticks missed, none on time.
        let now = utc("2026-12-07T18:10:00Z");
        let last = Some("2026-12-07T09:00:00Z");
        let (s, r) = schedule("0 * * * *", CatchUp::None, last);
        let none = plan(&s, &r, now).unwrap();
        assert!(none.enqueue.is_empty());
        assert_eq!(none.last_tick, utc("2026-12-07T18:00:00Z"));
        assert!(none.skips_missed);

        let (s, r) = schedule("0 * * * *", CatchUp::Latest, last);
        let latest = plan(&s, &r, now).unwrap();
        assert_eq!(latest.enqueue, [utc("2026-12-07T18:00:00Z")]);
        assert_eq!(latest.last_tick, utc("2026-12-07T18:00:00Z"));

        // All, within 6 hours: 13:00 (exclusive: 12:10 + ...) to 18:00.
        let (s, r) = schedule("0 * * * *", CatchUp::All, last);
        let all = plan(&s, &r, now).unwrap();
        let hours: Vec<u32> = all.enqueue.iter().map(chrono::Timelike::hour).collect();
        assert_eq!(hours, [13, 14, 15, 16, 17, 18]);
        assert_eq!(all.last_tick, utc("2026-12-07T18:00:00Z"));
        assert!(all.skips_missed);
    }

    #[test]
    fn a_missed_tick_beside_an_on_time_one_is_caught_up_only_by_all() {
        let now = utc("2026-12-07T10:00:05Z");
        let last = Some("2026-12-07T08:00:00Z");
        for (catch_up, expected) in [
            (CatchUp::None, vec!["2026-12-07T10:00:00Z"]),
            (CatchUp::Latest, vec!["2026-12-07T10:00:00Z"]),
            (
                CatchUp::All,
                vec!["2026-12-07T09:00:00Z", "2026-12-07T10:00:00Z"],
            ),
        ] {
            let (s, r) = schedule("0 * * * *", catch_up, last);
            let plan = plan(&s, &r, now).unwrap();
            let expected: Vec<_> = expected.into_iter().map(utc).collect();
            assert_eq!(plan.enqueue, expected, "{catch_up}");
        }
    }

    #[test]
    fn a_long_catch_up_goes_on_in_bounded_steps() {
        let (mut s, r) = schedule("* * * * * *", CatchUp::All, Some("2026-12-07T09:00:00Z"));
        let now = utc("2026-12-07T10:00:00Z");
        let first = plan(&s, &r, now).unwrap();
        assert_eq!(first.enqueue.len(), MAX_TICKS_PER_FIRE);
        assert_eq!(first.enqueue[0], utc("2026-12-07T09:00:01Z"));
        s.last_tick = Some(first.last_tick);
        let second = plan(&s, &r, now).unwrap();
        assert_eq!(
            second.enqueue[0],
            first.last_tick + chrono::Duration::seconds(1)
        );
    }

    #[test]
    fn a_schedule_down_for_a_year_is_not_walked_tick_by_tick() {
        let (s, r) = schedule("* * * * * *", CatchUp::None, Some("2025-12-07T09:00:00Z"));
        let now = utc("2026-12-07T09:00:00Z");
        let plan = plan(&s, &r, now).unwrap();
        assert_eq!(plan.last_tick, now);
        assert_eq!(plan.enqueue.len(), 30);
    }
}
