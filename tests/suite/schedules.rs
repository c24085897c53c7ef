//! Schedules end to end: ticks become jobs due at the tick, in the schedule's tenant, exactly
//! once across runners; missed ticks follow the catch-up policy, overlapping ones the overlap
//! policy; daylight-saving days in two zones; every door refuses what is invalid; manifests
//! sync their schedules without touching the others. Time moves on the queue's clock: the
//! scheduler wakes on the schedule channel, as it does when a schedule changes.

use std::time::Duration;

use chrono::{DateTime, Utc};
use runner::client::JobFilter;
use runner::client::schedules::{CatchUp, NewSchedule, Overlap};
use runner::{Limits, ManualClock, NewJob, Queue, QueueError, SandboxConfig, WorkerHandle};
use serde_json::json;

use crate::support::live::Live;
use crate::support::process::run_cli;
use crate::support::{TestDb, eventually, plugins, publish};

fn utc(text: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(text)
        .unwrap()
        .with_timezone(&Utc)
}

/// A worker that runs no job type: it only fires schedules, and their jobs stay available.
async fn scheduler(queue: &Queue) -> WorkerHandle {
    let worker =
        plugins::tenant_worker(queue, &[], SandboxConfig::default(), Limits::default()).await;
    worker.listening().await;
    worker
}

/// Moves the clock to `to` and wakes the schedulers, as reaching that time would.
async fn move_to(queue: &Queue, clock: &ManualClock, to: &str) {
    clock.set(utc(to));
    sqlx::query("SELECT pg_notify('jobrunner_schedules', '')")
        .execute(queue.pool())
        .await
        .unwrap();
}

/// Waits until schedule `name` of `tenant` has handled the tick at `tick`.
async fn handled(queue: &Queue, name: &str, tenant: &str, tick: &str) {
    let tick = utc(tick);
    eventually(
        &format!("schedule {name} to handle its tick at {tick}"),
        Duration::from_secs(30),
        || async {
            let schedule = queue.schedule(name, tenant).await.unwrap();
            (schedule.last_tick == Some(tick)).then_some(())
        },
    )
    .await;
}

/// The run-at of every job schedule `name` enqueued, in order.
async fn ticks_of(queue: &Queue, name: &str) -> Vec<DateTime<Utc>> {
    sqlx::query_scalar("SELECT run_at FROM jobrunner.jobs WHERE schedule = $1 ORDER BY run_at, id")
        .bind(name)
        .fetch_all(queue.pool())
        .await
        .unwrap()
}

fn times(texts: &[&str]) -> Vec<DateTime<Utc>> {
    texts.iter().map(|t| utc(t)).collect()
}

#[tokio::test]
async fn each_tick_is_a_job_due_at_the_tick_in_the_schedules_tenant_and_named_by_it() {
    let db = TestDb::new().await;
    let clock = ManualClock::new(utc("2026-12-07T08:30:00Z"));
    let queue = db.queue_with(clock.clone());
    let worker = scheduler(&queue).await;
    let job = NewJob::new("report", json!({"team": "web"}))
        .tenant("acme")
        .priority(3)
        .max_attempts(2);
    let schedule = NewSchedule::new("hourly-report", "0 * * * *", job).time_zone("Europe/Berlin");
    queue.add_schedule(queue.pool(), &schedule).await.unwrap();

    for tick in ["2026-12-07T09:00:00Z", "2026-12-07T10:00:00Z"] {
        move_to(&queue, &clock, tick).await;
        handled(&queue, "hourly-report", "acme", tick).await;
    }
    // Paused over two ticks: resumed, they never fire; the next one does.
    queue.pause_schedule("hourly-report", "acme").await.unwrap();
    move_to(&queue, &clock, "2026-12-07T12:00:10Z").await;
    queue
        .resume_schedule("hourly-report", "acme")
        .await
        .unwrap();
    move_to(&queue, &clock, "2026-12-07T13:00:00.250Z").await;
    handled(&queue, "hourly-report", "acme", "2026-12-07T13:00:00Z").await;

    let filter = JobFilter {
        schedule: Some("hourly-report".into()),
        limit: 100,
        ..JobFilter::default()
    };
    let mut jobs = queue.list_jobs(&filter).await.unwrap();
    jobs.reverse();
    let run_ats: Vec<_> = jobs.iter().map(|j| j.run_at).collect();
    assert_eq!(
        run_ats,
        times(&[
            "2026-12-07T09:00:00Z",
            "2026-12-07T10:00:00Z",
            "2026-12-07T13:00:00Z"
        ])
    );
    for job in &jobs {
        assert_eq!(job.tenant, "acme");
        assert_eq!(job.job_type, "report");
        assert_eq!(job.payload, json!({"team": "web"}));
        assert_eq!((job.priority, job.max_attempts), (3, Some(2)));
        assert_eq!(job.schedule.as_deref(), Some("hourly-report"));
    }
    // Enqueued when the clock reached the tick: no earlier, and on time.
    assert_eq!(jobs[2].created_at, utc("2026-12-07T13:00:00.250Z"));
    let shown = queue.schedule("hourly-report", "acme").await.unwrap();
    assert_eq!(shown.last_job_id, Some(jobs[2].id));

    let (status, out, err) = run_cli(&db.url(), &["jobs", "show", &jobs[0].id.to_string()]).await;
    assert!(status.success(), "{err}");
    assert!(
        out.contains("schedule:    hourly-report (its tick at 2026-12-07T09:00:00+00:00"),
        "{out}"
    );
    let (_, out, _) = run_cli(&db.url(), &["jobs", "list", "--schedule", "hourly-report"]).await;
    assert_eq!(
        out.lines().filter(|l| l.contains("report")).count(),
        3,
        "{out}"
    );
    worker.shutdown().await;
}

#[tokio::test]
async fn missed_ticks_follow_the_catch_up_policy_after_an_outage() {
    let db = TestDb::new().await;
    let clock = ManualClock::new(utc("2026-12-07T08:00:10Z"));
    let queue = db.queue_with(clock.clone());
    for (name, catch_up) in [
        ("none", CatchUp::None),
        ("latest", CatchUp::Latest),
        ("all", CatchUp::All),
    ] {
        let schedule = NewSchedule::new(name, "0 * * * *", NewJob::new("report", json!({})))
            .catch_up(catch_up, Duration::from_secs(6 * 3600));
        queue.add_schedule(queue.pool(), &schedule).await.unwrap();
    }
    let first = scheduler(&queue).await;
    move_to(&queue, &clock, "2026-12-07T09:00:05Z").await;
    for name in ["none", "latest", "all"] {
        handled(&queue, name, "default", "2026-12-07T09:00:00Z").await;
    }
    // Every runner down from 09:00 to 19:10: ten ticks missed.
    first.shutdown().await;
    clock.set(utc("2026-12-07T19:10:00Z"));
    let second = scheduler(&queue).await;
    for name in ["none", "latest", "all"] {
        handled(&queue, name, "default", "2026-12-07T19:00:00Z").await;
    }
    assert_eq!(
        ticks_of(&queue, "none").await,
        times(&["2026-12-07T09:00:00Z"])
    );
    assert_eq!(
        ticks_of(&queue, "latest").await,
        times(&["2026-12-07T09:00:00Z", "2026-12-07T19:00:00Z"])
    );
    // Within 6 hours of 19:10: 14:00 to 19:00.
    assert_eq!(
        ticks_of(&queue, "all").await,
        times(&[
            "2026-12-07T09:00:00Z",
            "2026-12-07T14:00:00Z",
            "2026-12-07T15:00:00Z",
            "2026-12-07T16:00:00Z",
            "2026-12-07T17:00:00Z",
            "2026-12-07T18:00:00Z",
            "2026-12-07T19:00:00Z",
        ])
    );
    // Back on time: every policy fires the next tick.
    move_to(&queue, &clock, "2026-12-07T20:00:01Z").await;
    for name in ["none", "latest", "all"] {
        handled(&queue, name, "default", "2026-12-07T20:00:00Z").await;
        let ticks = ticks_of(&queue, name).await;
        assert_eq!(ticks.last(), Some(&utc("2026-12-07T20:00:00Z")), "{name}");
    }
    second.shutdown().await;
}

#[tokio::test]
async fn overlap_skip_enqueues_nothing_while_the_previous_tick_is_pending() {
    let db = TestDb::new().await;
    let clock = ManualClock::new(utc("2026-12-07T08:30:00Z"));
    let queue = db.queue_with(clock.clone());
    let worker = scheduler(&queue).await;
    for (name, overlap) in [("skip", Overlap::Skip), ("allow", Overlap::Allow)] {
        let schedule =
            NewSchedule::new(name, "@hourly", NewJob::new("report", json!({}))).overlap(overlap);
        queue.add_schedule(queue.pool(), &schedule).await.unwrap();
    }
    for tick in ["2026-12-07T09:00:00Z", "2026-12-07T10:00:00Z"] {
        move_to(&queue, &clock, tick).await;
        handled(&queue, "skip", "default", tick).await;
        handled(&queue, "allow", "default", tick).await;
    }
    assert_eq!(
        ticks_of(&queue, "skip").await,
        times(&["2026-12-07T09:00:00Z"])
    );
    assert_eq!(ticks_of(&queue, "allow").await.len(), 2);
    // Once the 09:00 job is done (cancelled here), the next tick enqueues again.
    let pending = queue.schedule("skip", "default").await.unwrap();
    queue
        .cancel_job(pending.last_job_id.unwrap())
        .await
        .unwrap();
    move_to(&queue, &clock, "2026-12-07T11:00:00Z").await;
    handled(&queue, "skip", "default", "2026-12-07T11:00:00Z").await;
    assert_eq!(
        ticks_of(&queue, "skip").await,
        times(&["2026-12-07T09:00:00Z", "2026-12-07T11:00:00Z"])
    );
    worker.shutdown().await;
}

/// The ticks of an hourly and a daily 02:30 schedule in `zone` over one local day, from
/// local midnight (`start`, UTC) to the next (`end`).
async fn one_day(
    queue: &Queue,
    clock: &ManualClock,
    zone: &str,
    start: &str,
    end: &str,
) -> (usize, Vec<DateTime<Utc>>) {
    clock.set(utc(start) - chrono::Duration::seconds(1));
    for (name, cron) in [("hourly", "0 * * * *"), ("daily", "30 2 * * *")] {
        let schedule = NewSchedule::new(name, cron, NewJob::new("report", json!({})))
            .time_zone(zone)
            .catch_up(CatchUp::All, Duration::from_secs(2 * 86_400));
        queue.add_schedule(queue.pool(), &schedule).await.unwrap();
    }
    let last = utc(end) - chrono::Duration::hours(1);
    move_to(
        queue,
        clock,
        &(utc(end) - chrono::Duration::seconds(1)).to_rfc3339(),
    )
    .await;
    handled(queue, "hourly", "default", &last.to_rfc3339()).await;
    let daily = eventually("the daily tick", Duration::from_secs(30), || async {
        let ticks = ticks_of(queue, "daily").await;
        (!ticks.is_empty()).then_some(ticks)
    })
    .await;
    let hourly = ticks_of(queue, "hourly").await.len();
    for name in ["hourly", "daily"] {
        queue.remove_schedule(name, "default").await.unwrap();
    }
    sqlx::query("DELETE FROM jobrunner.jobs")
        .execute(queue.pool())
        .await
        .unwrap();
    (hourly, daily)
}

#[tokio::test]
async fn daylight_saving_days_in_berlin_and_new_york() {
    let db = TestDb::new().await;
    let clock = ManualClock::new(utc("2026-01-01T00:00:00Z"));
    let queue = db.queue_with(clock.clone());
    let worker = scheduler(&queue).await;
    // (zone, local midnight and the next one in UTC, hourly ticks, the daily 02:30 tick)
    let days = [
        // Spring forward at 02:00 CET: 02:30 does not exist, it fires at 03:00 CEST.
        (
            "Europe/Berlin",
            "2026-03-28T23:00:00Z",
            "2026-03-29T22:00:00Z",
            23,
            "2026-03-29T01:00:00Z",
        ),
        // Fall back at 03:00 CEST: 02:30 happens twice, it fires at the first.
        (
            "Europe/Berlin",
            "2026-10-24T22:00:00Z",
            "2026-10-25T23:00:00Z",
            25,
            "2026-10-25T00:30:00Z",
        ),
        (
            "America/New_York",
            "2026-03-08T05:00:00Z",
            "2026-03-09T04:00:00Z",
            23,
            "2026-03-08T07:00:00Z",
        ),
        (
            "America/New_York",
            "2026-11-01T04:00:00Z",
            "2026-11-02T05:00:00Z",
            25,
            "2026-11-01T07:30:00Z",
        ),
    ];
    for (zone, start, end, hours, daily) in days {
        let (hourly, daily_ticks) = one_day(&queue, &clock, zone, start, end).await;
        assert_eq!(hourly, hours, "{zone} {start}");
        assert_eq!(daily_ticks, times(&[daily]), "{zone} {start}");
    }
    worker.shutdown().await;
}

#[tokio::test]
async fn a_tenants_schedule_enqueues_into_that_tenant_under_its_policy() {
    let db = TestDb::new().await;
    let clock = ManualClock::new(utc("2026-12-07T08:30:00Z"));
    let queue = db.queue_with(clock.clone());
    publish(&queue, "[tenants.acme]\njob_types = [\"report\"]\n").await;
    let refused = NewSchedule::new(
        "other",
        "@hourly",
        NewJob::new("echo", json!({})).tenant("acme"),
    );
    let error = queue
        .add_schedule(queue.pool(), &refused)
        .await
        .unwrap_err();
    assert!(
        error
            .to_string()
            .contains("tenant \"acme\" may not enqueue job type \"echo\""),
        "{error}"
    );
    let allowed = NewSchedule::new(
        "reports",
        "@hourly",
        NewJob::new("report", json!({})).tenant("acme"),
    );
    queue.add_schedule(queue.pool(), &allowed).await.unwrap();
    let worker = scheduler(&queue).await;
    move_to(&queue, &clock, "2026-12-07T09:00:00Z").await;
    handled(&queue, "reports", "acme", "2026-12-07T09:00:00Z").await;
    let tenants: Vec<String> = sqlx::query_scalar("SELECT tenant FROM jobrunner.jobs")
        .fetch_all(queue.pool())
        .await
        .unwrap();
    assert_eq!(tenants, ["acme"]);
    // The policy changes: the next tick enqueues nothing, says why, and still counts.
    publish(&queue, "[tenants.acme]\njob_types = [\"echo\"]\n").await;
    move_to(&queue, &clock, "2026-12-07T10:00:00Z").await;
    handled(&queue, "reports", "acme", "2026-12-07T10:00:00Z").await;
    let schedule = queue.schedule("reports", "acme").await.unwrap();
    let error = schedule.last_error.unwrap();
    assert!(
        error.contains("may not enqueue job type \"report\""),
        "{error}"
    );
    assert_eq!(ticks_of(&queue, "reports").await.len(), 1);
    worker.shutdown().await;
}

#[tokio::test]
async fn invalid_expressions_zones_and_names_are_refused_at_every_door() {
    let db = TestDb::new().await;
    let queue = db.queue();
    let job = || NewJob::new("report", json!({}));
    // The Rust client.
    let bad_cron = NewSchedule::new("s", "61 * * * *", job());
    let error = queue
        .add_schedule(queue.pool(), &bad_cron)
        .await
        .unwrap_err();
    assert!(matches!(error, QueueError::InvalidSchedule(_)), "{error:?}");
    assert!(
        error
            .to_string()
            .contains("minute field \"61\": 61 is out of range 0-59"),
        "{error}"
    );
    let bad_zone = NewSchedule::new("s", "@daily", job()).time_zone("Europe/Atlantis");
    let error = queue
        .add_schedule(queue.pool(), &bad_zone)
        .await
        .unwrap_err();
    assert!(
        error
            .to_string()
            .contains("unknown time zone \"Europe/Atlantis\""),
        "{error}"
    );
    let never = NewSchedule::new("s", "0 0 30 2 *", job());
    let error = queue.add_schedule(queue.pool(), &never).await.unwrap_err();
    assert!(error.to_string().contains("never fires"), "{error}");
    // SQL, with the same words.
    for (args, expected) in [
        (
            "'s', '61 * * * *', 'report'",
            "minute field \"61\": 61 is out of range 0-59",
        ),
        (
            "'s', '@daily', 'report', time_zone => 'Europe/Atlantis'",
            "unknown time zone \"Europe/Atlantis\"",
        ),
        ("'s', '* * *', 'report'", "found 3"),
        ("'', '@daily', 'report'", "name must not be empty"),
        (
            "'s', '@daily', 'report', overlap => 'sometimes'",
            "overlap must be allow or skip",
        ),
    ] {
        let sql = format!("SELECT jobrunner.add_schedule({args})");
        let error = sqlx::query(sqlx::AssertSqlSafe(sql))
            .execute(queue.pool())
            .await
            .unwrap_err()
            .to_string();
        assert!(error.contains(expected), "{args}: {error}");
    }
    // The CLI, before it connects.
    for (args, expected) in [
        (vec!["--cron", "* * * * * * *"], "found 7"),
        (
            vec!["--cron", "@daily", "--tz", "Mars/Olympus"],
            "unknown time zone \"Mars/Olympus\"",
        ),
        (
            vec!["--cron", "@daily", "--catch-up", "some"],
            "catch-up must be one of none, latest, all",
        ),
    ] {
        let mut all = vec!["schedules", "add", "s", "--job-type", "report"];
        all.extend(args);
        let (status, _, err) = run_cli(&db.url(), &all).await;
        assert!(
            !status.success() && err.contains(expected),
            "{all:?}: {err}"
        );
    }
    // Nothing was added by any of them; a duplicate name is refused too.
    assert!(queue.schedules(None).await.unwrap().is_empty());
    let good = NewSchedule::new("s", "@daily", job());
    queue.add_schedule(queue.pool(), &good).await.unwrap();
    let error = queue.add_schedule(queue.pool(), &good).await.unwrap_err();
    assert!(
        error
            .to_string()
            .contains("has a schedule named \"s\" already"),
        "{error}"
    );
    let error = queue.pause_schedule("nope", "default").await.unwrap_err();
    assert!(
        matches!(error, QueueError::ScheduleNotFound { .. }),
        "{error:?}"
    );
}

#[tokio::test]
async fn sql_and_rust_accept_the_same_cron_language_with_the_same_reasons() {
    let db = TestDb::new().await;
    for expression in [
        "0 9 * * 1-5",
        "*/10 * * * * *",
        "0 0 9 * * MON-FRI",
        "0 9 1,15 JAN,jul *",
        "5-55/10 * * * SUN",
        "0 0 * * 7",
        "@hourly",
        "@Daily",
        "  0 9 * * *  ",
        "",
        "* * * *",
        "60 * * * *",
        "* 24 * * *",
        "* * 0 * *",
        "* * * 13 *",
        "* * * * 8",
        "* * * FOO *",
        "*/0 * * * *",
        "5/15 * * * *",
        "10-5 * * * *",
        "* * L * *",
        "0 0 ? * MON",
        "0 0 * * 5#2",
        "1,,2 * * * *",
        "1-2-3 * * * *",
        "*/x * * * *",
        "@every_minute",
    ] {
        let rust = runner::client::cron::Recurrence::parse(expression, "UTC")
            .err()
            .map(|e| e.to_string());
        let sql: Option<String> = sqlx::query_scalar("SELECT jobrunner.cron_problem($1)")
            .bind(expression)
            .fetch_one(&db.pool)
            .await
            .unwrap();
        let sql = sql.map(|problem| format!("invalid cron expression {expression:?}: {problem}"));
        assert_eq!(rust, sql, "{expression:?}");
    }
}

#[tokio::test]
async fn the_cli_adds_lists_pauses_runs_and_removes_schedules() {
    let db = TestDb::new().await;
    let url = db.url();
    // `runner schedules VERB weekday-reminders --tenant acme`
    let acme_schedule = |verb: &'static str| {
        let url = url.clone();
        async move {
            run_cli(
                &url,
                &["schedules", verb, "weekday-reminders", "--tenant", "acme"],
            )
            .await
        }
    };
    let add = [
        "schedules",
        "add",
        "weekday-reminders",
        "--cron",
        "0 9 * * 1-5",
        "--tz",
        "Europe/Berlin",
        "--job-type",
        "pr-reminders",
        "--payload",
        r#"{"team": "web"}"#,
        "--tenant",
        "acme",
        "--overlap",
        "skip",
        "--catch-up",
        "all",
        "--within",
        "6h",
    ];
    let (status, out, err) = run_cli(&url, &add).await;
    assert!(status.success(), "{err}");
    assert!(
        out.contains("schedule weekday-reminders added for tenant acme"),
        "{out}"
    );
    let (_, out, _) = run_cli(&url, &["schedules", "list", "--json"]).await;
    let listed: serde_json::Value = serde_json::from_str(out.trim()).expect(&out);
    assert_eq!(
        (
            &listed["time_zone"],
            &listed["overlap"],
            &listed["catch_up"]
        ),
        (&json!("Europe/Berlin"), &json!("skip"), &json!("all"))
    );
    assert_eq!(listed["catch_up_within_secs"], 21_600);
    assert_eq!(listed["payload"], json!({"team": "web"}));
    let (_, out, _) = run_cli(&url, &["schedules", "list"]).await;
    let row = out
        .lines()
        .find(|l| l.contains("weekday-reminders"))
        .expect(&out);
    // Three next ticks, each in Berlin time and UTC (08:00 in winter, 07:00 in summer).
    assert_eq!(row.matches(" 09:00:00 CE").count(), 3, "{row}");
    assert_eq!(row.matches(":00:00 UTC").count(), 3, "{row}");
    assert!(
        row.contains("acme") && row.contains("pr-reminders") && row.ends_with('-'),
        "{row}"
    );

    let (_, out, _) = acme_schedule("run-now").await;
    let id: i64 = out.split_whitespace().nth(1).unwrap().parse().expect(&out);
    let (_, out, _) = acme_schedule("show").await;
    assert!(
        out.contains(&format!("last job:    {id} available")),
        "{out}"
    );
    assert!(
        out.contains("overlap:     skip") && out.contains("catch-up:    all (within 6h)"),
        "{out}"
    );
    assert!(out.contains("payload:     {\"team\":\"web\"}"), "{out}");

    acme_schedule("pause").await;
    let (_, out, _) = run_cli(&url, &["schedules", "list", "--tenant", "acme"]).await;
    assert!(out.contains("paused"), "{out}");
    acme_schedule("resume").await;
    let (status, _, _) = acme_schedule("remove").await;
    assert!(status.success());
    let (_, out, _) = run_cli(&url, &["schedules", "list"]).await;
    assert_eq!(out.trim(), "no schedules");
    let (status, _, err) = acme_schedule("remove").await;
    assert!(
        !status.success() && err.contains("has no schedule named \"weekday-reminders\""),
        "{err}"
    );
    // The job run-now enqueued stays, and names its schedule.
    let (_, out, _) = run_cli(&url, &["jobs", "show", &id.to_string()]).await;
    assert!(out.contains("schedule:    weekday-reminders"), "{out}");
}

/// `echo.wasm` in a directory of its own, with `manifest` beside it.
fn plugin_dir_with(manifest: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(test_plugins::path("echo"), dir.path().join("echo.wasm")).unwrap();
    std::fs::write(dir.path().join("echo.toml"), manifest).unwrap();
    dir
}

async fn cron_of(queue: &Queue, name: &str) -> Option<(String, String)> {
    sqlx::query_as("SELECT cron, origin FROM jobrunner.schedules WHERE name = $1")
        .bind(name)
        .fetch_optional(queue.pool())
        .await
        .unwrap()
}

async fn until_cron(queue: &Queue, name: &str, expected: Option<(&str, &str)>) {
    eventually(
        &format!("schedule {name} to be {expected:?}"),
        Duration::from_secs(60),
        || async {
            let found = cron_of(queue, name).await;
            let wanted = expected.map(|(c, o)| (c.to_owned(), o.to_owned()));
            (found == wanted).then_some(())
        },
    )
    .await;
}

#[tokio::test]
async fn manifest_schedules_follow_the_manifest_and_leave_the_others_alone() {
    let db = TestDb::new().await;
    let queue = db.queue();
    queue.migrate().await.unwrap();
    let mine = NewSchedule::new(
        "nightly",
        "0 3 * * *",
        NewJob::new("echo", json!({"by": "cli"})),
    );
    queue.add_schedule(queue.pool(), &mine).await.unwrap();
    let dir = plugin_dir_with(
        r#"
        [[schedules]]
        name = "hourly"
        cron = "0 * * * *"
        payload = { from = "manifest" }
        [[schedules]]
        name = "nightly"
        cron = "0 1 * * *"
        "#,
    );
    let live = Live::start(&db, dir.path(), &[]).await;
    until_cron(&queue, "hourly", Some(("0 * * * *", "manifest"))).await;
    live.event("manifest schedule not applied: the tenant has a schedule of that name made by another door", |e| e["schedule"] == "nightly").await;
    let hourly = queue.schedule("hourly", "default").await.unwrap();
    assert_eq!(hourly.payload, json!({"from": "manifest"}));
    assert_eq!(hourly.job_type, "echo");

    // Changed: the manifest is reloaded with the plugin, and its schedules follow.
    std::fs::write(
        dir.path().join("echo.toml"),
        "[[schedules]]\nname = \"hourly\"\ncron = \"*/30 * * * *\"\n\
         [[schedules]]\nname = \"weekly\"\ncron = \"@weekly\"\ntz = \"Asia/Tokyo\"\n",
    )
    .unwrap();
    until_cron(&queue, "hourly", Some(("*/30 * * * *", "manifest"))).await;
    until_cron(&queue, "weekly", Some(("@weekly", "manifest"))).await;
    // Removed from the manifest: removed.
    std::fs::write(
        dir.path().join("echo.toml"),
        "[[schedules]]\nname = \"weekly\"\ncron = \"@weekly\"\ntz = \"Asia/Tokyo\"\n",
    )
    .unwrap();
    until_cron(&queue, "hourly", None).await;
    // The plugin removed: its schedules go with it.
    std::fs::remove_file(dir.path().join("echo.wasm")).unwrap();
    std::fs::remove_file(dir.path().join("echo.toml")).unwrap();
    until_cron(&queue, "weekly", None).await;
    // The CLI's schedule was never touched.
    let nightly = queue.schedule("nightly", "default").await.unwrap();
    assert_eq!(
        (nightly.cron.as_str(), nightly.origin.as_str()),
        ("0 3 * * *", "api")
    );
    assert_eq!(nightly.payload, json!({"by": "cli"}));
    assert_eq!(nightly.version, 1);
    live.stop().await;
}

#[tokio::test]
async fn three_runners_fire_every_tick_of_a_one_second_schedule_exactly_once() {
    let db = TestDb::new().await;
    let dir = test_plugins::rust_dir();
    let mut runners = Vec::new();
    for _ in 0..3 {
        runners.push(Live::start(&db, dir, &[]).await);
    }
    let add = [
        "schedules",
        "add",
        "every-second",
        "--cron",
        "* * * * * *",
        "--job-type",
        "tick",
    ];
    let (status, _, err) = run_cli(&db.url(), &add).await;
    assert!(status.success(), "{err}");
    let queue = db.queue();
    let span = eventually("a minute of ticks", Duration::from_secs(120), || async {
        let ticks = ticks_of(&queue, "every-second").await;
        let span = ticks.last()?.signed_duration_since(*ticks.first()?);
        (span >= chrono::Duration::seconds(60)).then_some(ticks)
    })
    .await;
    run_cli(&db.url(), &["schedules", "remove", "every-second"]).await;
    for live in runners {
        live.stop().await;
    }
    let ticks = ticks_of(&queue, "every-second").await;
    assert!(ticks.len() >= span.len());
    // One job per second from the first tick to the last: no duplicate, no gap.
    for pair in ticks.windows(2) {
        assert_eq!(pair[1] - pair[0], chrono::Duration::seconds(1), "{pair:?}");
    }
    let lateness: Vec<f64> = sqlx::query_scalar(
        "SELECT extract(epoch FROM created_at - run_at)::float8 FROM jobrunner.jobs ORDER BY 1",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    let at = |q: f64| lateness[((lateness.len() - 1) as f64 * q) as usize] * 1e3;
    eprintln!(
        "{} ticks, enqueued late by p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        ticks.len(),
        at(0.5),
        at(0.99),
        at(1.0)
    );
}
