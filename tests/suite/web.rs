//! The web listener: health checks, Prometheus metrics, the token, CSRF and read-only guards,
//! and the dashboard driven in a real headless Chromium against real runners.

use std::time::Duration;

use fantoccini::Locator;
use hyper::{Method, StatusCode};
use runner::client::schedules::NewSchedule;
use runner::client::{JobState, NewJob};
use serde_json::json;

use crate::support::live::Live;
use crate::support::plugins::linked;
use crate::support::process::run_cli;
use crate::support::web::{Browser, Dashboard, base_url, csrf_of, get, metric, request};
use crate::support::{TestDb, enqueue, eventually, settled, state_of};

const WAIT: Duration = Duration::from_secs(30);

/// A job that failed for good, of a type no runner here serves: retried, it stays available.
async fn failed_job(db: &TestDb) -> i64 {
    let id = enqueue(db, &NewJob::new("gone", json!({"n": 1})).max_attempts(1)).await;
    sqlx::query(
        "UPDATE jobrunner.jobs SET state = 'failed', attempt = 1,
                errors = jsonb_build_array(jsonb_build_object(
                    'attempt', 1, 'at', now(), 'error', 'trap (unreachable_code_reached): boom'))
          WHERE id = $1",
    )
    .bind(id)
    .execute(&db.queue().pool().clone())
    .await
    .unwrap();
    id
}

#[tokio::test]
async fn metrics_count_what_the_runner_did_and_health_checks_answer() {
    let db = TestDb::new().await;
    let dir = linked(&["echo", "poison"]);
    let args = ["--http", "127.0.0.1:0", "--cpu-budget", "200ms"];
    let live = Live::start(&db, dir.path(), &args).await;
    let base = base_url(&live).await;
    let mut ids = Vec::new();
    for n in 0..5 {
        ids.push(enqueue(&db, &NewJob::new("echo", json!({ "n": n }))).await);
    }
    let trap = NewJob::new("poison", json!({"do": "trap"}))
        .max_attempts(1)
        .tenant("acme");
    let trapped = enqueue(&db, &trap).await;
    let spin = NewJob::new("poison", json!({"do": "loop"}))
        .max_attempts(1)
        .tenant("acme");
    let spun = enqueue(&db, &spin).await;
    for id in &ids {
        settled(&db.queue(), *id, JobState::Completed).await;
    }
    settled(&db.queue(), trapped, JobState::Failed).await;
    settled(&db.queue(), spun, JobState::Failed).await;

    let healthz = get(&format!("{base}/healthz"), &[]).await;
    assert_eq!(
        (healthz.status, healthz.body.as_str()),
        (StatusCode::OK, "ok\n")
    );
    let readyz = get(&format!("{base}/readyz"), &[]).await;
    assert_eq!(
        (readyz.status, readyz.body.as_str()),
        (StatusCode::OK, "ready\n")
    );

    let echo = [("job_type", "echo"), ("tenant", "default")];
    let poison = [("job_type", "poison"), ("tenant", "acme")];
    // The queue's gauges come from a snapshot at most 5 s old: wait for one taken after.
    let text = eventually("the gauges to show the failed job", WAIT, || async {
        let text = get(&format!("{base}/metrics"), &[]).await.body;
        let failed = [("state", "failed"), ("job_type", "poison")];
        (metric(&text, "jobrunner_jobs", &failed) == Some(2.0)).then_some(text)
    })
    .await;
    assert_eq!(
        metric(&text, "jobrunner_jobs_completed_total", &echo),
        Some(5.0)
    );
    assert_eq!(
        metric(&text, "jobrunner_jobs_claimed_total", &echo),
        Some(5.0)
    );
    assert_eq!(
        metric(&text, "jobrunner_jobs_failed_total", &poison),
        Some(2.0)
    );
    let cpu = [("job_type", "poison"), ("tenant", "acme"), ("limit", "cpu")];
    assert_eq!(
        metric(&text, "jobrunner_limits_tripped_total", &cpu),
        Some(1.0)
    );
    assert_eq!(
        metric(&text, "jobrunner_attempt_duration_seconds_count", &echo),
        Some(5.0)
    );
    assert_eq!(
        metric(&text, "jobrunner_job_start_latency_seconds_count", &echo),
        Some(5.0)
    );
    let trap_kind = [("job_type", "poison"), ("kind", "unreachable_code_reached")];
    assert_eq!(
        metric(&text, "jobrunner_traps_total", &trap_kind),
        Some(1.0)
    );
    assert!(
        metric(
            &text,
            "jobrunner_sandbox_instantiate_seconds_count",
            &[("job_type", "echo")]
        ) >= Some(5.0)
    );
    let completed = [
        ("state", "completed"),
        ("job_type", "echo"),
        ("tenant", "default"),
    ];
    assert_eq!(metric(&text, "jobrunner_jobs", &completed), Some(5.0));
    assert_eq!(metric(&text, "jobrunner_runners_live", &[]), Some(1.0));
    assert_eq!(metric(&text, "jobrunner_attempts_running", &[]), Some(0.0));
    let loaded = [("job_type", "echo")];
    assert_eq!(metric(&text, "jobrunner_plugin_loaded", &loaded), Some(1.0));
    assert!(metric(&text, "jobrunner_db_pool_connections", &[("state", "idle")]).is_some());
    assert!(
        text.contains("# HELP jobrunner_jobs_completed_total"),
        "{text}"
    );
    live.stop().await;
}

#[tokio::test]
async fn a_token_guards_everything_but_the_health_checks() {
    let db = TestDb::new().await;
    let token = "correct-horse-battery-staple";
    let dashboard = Dashboard::start(&db, &["--web-token", token]).await;
    let base = &dashboard.base;

    assert_eq!(
        get(&format!("{base}/healthz"), &[]).await.status,
        StatusCode::OK
    );
    assert_eq!(
        get(&format!("{base}/readyz"), &[]).await.status,
        StatusCode::OK
    );
    let refused = get(&format!("{base}/metrics"), &[]).await;
    assert_eq!(refused.status, StatusCode::UNAUTHORIZED);
    let wrong = get(
        &format!("{base}/metrics"),
        &[("authorization", "Bearer nope")],
    )
    .await;
    assert_eq!(wrong.status, StatusCode::UNAUTHORIZED);
    let bearer = format!("Bearer {token}");
    let allowed = get(&format!("{base}/metrics"), &[("authorization", &bearer)]).await;
    assert_eq!(allowed.status, StatusCode::OK);

    // A browser goes to the login form, and comes back with a cookie that is not the token.
    let page = get(
        &format!("{base}/jobs?state=failed"),
        &[("accept", "text/html")],
    )
    .await;
    assert_eq!(page.status, StatusCode::SEE_OTHER);
    assert_eq!(
        page.headers["location"],
        "/login?next=/jobs%3Fstate%3Dfailed"
    );
    let login = |token: &str| format!("token={token}&next=%2Fjobs");
    let bad = request(
        Method::POST,
        &format!("{base}/login"),
        &[],
        Some(&login("nope")),
    )
    .await;
    assert_eq!(bad.status, StatusCode::UNAUTHORIZED);
    let good = request(
        Method::POST,
        &format!("{base}/login"),
        &[],
        Some(&login(token)),
    )
    .await;
    assert_eq!(good.status, StatusCode::SEE_OTHER);
    assert_eq!(good.headers["location"], "/jobs");
    let cookie = good.headers["set-cookie"].to_str().unwrap();
    assert!(
        !cookie.contains(token),
        "the cookie holds a hash, not the token"
    );
    assert!(cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"));
    let session = cookie.split(';').next().unwrap();
    let jobs = get(&format!("{base}/jobs"), &[("cookie", session)]).await;
    assert_eq!(jobs.status, StatusCode::OK);
}

#[tokio::test]
async fn a_dashboard_on_a_public_address_needs_a_token() {
    let db = TestDb::new().await;
    // Refused before anything binds: no traffic leaves loopback.
    let (status, _, stderr) = run_cli(&db.url(), &["dashboard", "--http", "0.0.0.0:0"]).await;
    assert!(!status.success());
    assert!(
        stderr.contains("refusing to serve the dashboard on 0.0.0.0:0 without a token"),
        "{stderr}"
    );
    let short = ["dashboard", "--http", "127.0.0.1:0", "--web-token", "short"];
    let (status, _, stderr) = run_cli(&db.url(), &short).await;
    assert!(!status.success());
    assert!(stderr.contains("at least 16 characters"), "{stderr}");
}

#[tokio::test]
async fn actions_need_the_csrf_token_and_a_read_only_dashboard_refuses_them() {
    let db = TestDb::new().await;
    let id = failed_job(&db).await;
    let dashboard = Dashboard::start(&db, &[]).await;
    let retry = format!("{}/jobs/{id}/retry", dashboard.base);

    let page = get(&format!("{}/jobs/{id}", dashboard.base), &[]).await;
    let csrf = csrf_of(&page.body);
    let forged = request(Method::POST, &retry, &[], Some("csrf=guess")).await;
    assert_eq!(forged.status, StatusCode::FORBIDDEN);
    let missing = request(Method::POST, &retry, &[], Some("")).await;
    assert_eq!(missing.status, StatusCode::FORBIDDEN);
    let form = format!("csrf={csrf}");
    let cross_site = [("sec-fetch-site", "cross-site")];
    let from_elsewhere = request(Method::POST, &retry, &cross_site, Some(&form)).await;
    assert_eq!(from_elsewhere.status, StatusCode::FORBIDDEN);
    assert_eq!(
        state_of(&db, id).await,
        "failed",
        "nothing refused changed the job"
    );

    let done = request(Method::POST, &retry, &[], Some(&form)).await;
    assert_eq!(done.status, StatusCode::SEE_OTHER);
    assert_eq!(state_of(&db, id).await, "available");

    let other = failed_job(&db).await;
    let read_only = Dashboard::start(&db, &["--read-only"]).await;
    let page = get(&format!("{}/jobs/{other}", read_only.base), &[]).await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(
        !page.body.contains("<form"),
        "a read-only page has no forms"
    );
    let retry = format!("{}/jobs/{other}/retry", read_only.base);
    let refused = request(Method::POST, &retry, &[], Some(&form)).await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN);
    assert!(refused.body.contains("read-only"));
    assert_eq!(state_of(&db, other).await, "failed");
}

#[tokio::test]
async fn the_dashboard_works_in_a_real_browser() {
    let db = TestDb::new().await;
    let dir = linked(&["echo", "poison"]);
    let live = Live::start(&db, dir.path(), &["--http", "127.0.0.1:0"]).await;
    let base = base_url(&live).await;
    let xss = "<script>window.__xss = 1</script><img src=x onerror=\"window.__xss = 2\">";
    let hostile = enqueue(&db, &NewJob::new("echo", json!({ "note": xss }))).await;
    for n in 0..3 {
        let job = NewJob::new("echo", json!({ "n": n })).tenant("acme");
        settled(&db.queue(), enqueue(&db, &job).await, JobState::Completed).await;
    }
    settled(&db.queue(), hostile, JobState::Completed).await;
    let failed = failed_job(&db).await;
    let queue = db.queue();
    let job = NewJob::new("echo", json!({"report": "weekly"}));
    let schedule = NewSchedule::new("weekly-report", "0 9 * * 1", job).time_zone("Europe/Berlin");
    queue.add_schedule(queue.pool(), &schedule).await.unwrap();

    let b = Browser::start().await;
    // The overview counts what ran, by type and tenant.
    eventually("the overview to count the echo jobs", WAIT, || async {
        b.goto(&format!("{base}/")).await;
        b.try_text("#jobs-by-type")
            .await?
            .contains("echo")
            .then_some(())
    })
    .await;
    for (path, name, heading) in [
        ("/", "overview", "Overview"),
        ("/jobs", "jobs", "Jobs"),
        ("/types", "types", "Job types"),
        (&format!("/jobs/{failed}") as &str, "job", "Job"),
        ("/plugins", "plugins", "Plugins"),
        ("/tenants", "tenants", "Tenants"),
        ("/schedules", "schedules", "Schedules"),
    ] {
        b.goto(&format!("{base}{path}")).await;
        let h1 = b.text("h1").await;
        assert!(h1.starts_with(heading), "{path}: {h1}");
        b.screenshot(name).await;
    }

    // The plugins page gives each version's limits (no manifest here: the runner's).
    b.goto(&format!("{base}/plugins")).await;
    let grants = b.text("td.grants").await;
    assert!(
        grants.contains("timeout 60000 ms") && grants.contains("25 attempts"),
        "{grants}"
    );

    // Filter the list with its form: only failed jobs remain.
    b.goto(&format!("{base}/jobs")).await;
    b.select("select[name=state]", "failed").await;
    b.click("form.filters button").await;
    let url = b.client.current_url().await.unwrap();
    assert!(url.as_str().contains("state=failed"), "{url}");
    let states = b
        .client
        .find_all(Locator::Css("#jobs .state"))
        .await
        .unwrap();
    assert_eq!(states.len(), 1, "one failed job");
    assert_eq!(states[0].text().await.unwrap(), "failed");

    // Open it and retry it: its state changes.
    b.navigate_by(Locator::LinkText(&failed.to_string())).await;
    assert_eq!(b.text("h1 .state").await, "failed");
    b.click("form[action$='/retry'] button").await;
    assert_eq!(b.text("h1 .state").await, "available");
    assert_eq!(state_of(&db, failed).await, "available");

    // The hostile payload is text on the page, and none of it ran.
    b.goto(&format!("{base}/jobs/{hostile}")).await;
    let payload = b.text("#payload").await;
    assert!(
        payload.contains("<script>window.__xss = 1</script>"),
        "{payload}"
    );
    let ran = b
        .client
        .execute("return window.__xss === undefined", vec![]);
    assert_eq!(
        ran.await.unwrap(),
        json!(true),
        "the payload's script did not run"
    );
    b.screenshot("job-hostile-payload").await;

    // Pause the schedule from its page.
    b.goto(&format!("{base}/schedules")).await;
    b.click("tr[data-schedule='weekly-report'] button").await;
    assert_eq!(
        b.text("tr[data-schedule='weekly-report'] td.status").await,
        "paused"
    );
    let paused = queue.schedule("weekly-report", "default").await.unwrap();
    assert!(paused.paused);

    // Bulk: cancel every available job of type gone, after a confirmation with the count.
    b.goto(&format!("{base}/jobs?type=gone&state=available"))
        .await;
    b.select("select[name=action]", "cancel").await;
    b.click("form[action='/jobs/bulk'] button").await;
    assert_eq!(b.text("#count").await, "1");
    b.screenshot("bulk-confirm").await;
    b.click("#confirm").await;
    let done = b.text("#done").await;
    assert!(done.starts_with("cancel: 1 jobs changed"), "{done}");
    assert_eq!(state_of(&db, failed).await, "cancelled");

    // A read-only dashboard shows the same pages without a single action.
    let read_only = Dashboard::start(&db, &["--read-only"]).await;
    let other = failed_job(&db).await;
    for path in [
        format!("/jobs/{other}"),
        "/schedules".into(),
        "/types".into(),
    ] {
        b.goto(&format!("{}{path}", read_only.base)).await;
        let buttons = b.client.find_all(Locator::Css("button")).await.unwrap();
        assert!(buttons.is_empty(), "{path} has buttons");
    }
    b.screenshot("schedules-read-only").await;

    b.client.clone().close().await.unwrap();
    live.stop().await;
}

#[tokio::test]
async fn each_attempts_log_is_kept_with_its_job_and_shown_after_its_runner_is_gone() {
    let db = TestDb::new().await;
    let dir = linked(&["echo", "poison"]);
    let live = Live::start(&db, dir.path(), &["--keep-guest-log", "1KiB"]).await;
    let flood = NewJob::new("poison", json!({"do": "log-flood", "lines": 300}));
    let flood = enqueue(&db, &flood).await;
    let trap = NewJob::new("poison", json!({"do": "trap"})).max_attempts(2);
    let trap = enqueue(&db, &trap).await;
    settled(&db.queue(), flood, JobState::Completed).await;
    settled(&db.queue(), trap, JobState::Failed).await;
    live.stop().await;

    let kept = db.queue().job(flood).await.unwrap().attempt_logs;
    assert_eq!(kept.len(), 1);
    let log = &kept[0].log;
    assert!(kept[0].log_cut && log.len() <= 1024, "{log}");
    assert!(
        log.ends_with(
            "200 log lines dropped: the guest wrote more than 100 lines at once or 20 per second\n"
        ),
        "{log}"
    );
    assert!(
        log.contains("INFO flood line 99\n") && !log.contains("flood line 0\n"),
        "{log}"
    );
    let trapped = db.queue().job(trap).await.unwrap().attempt_logs;
    assert_eq!(
        trapped.iter().map(|l| l.attempt).collect::<Vec<_>>(),
        [1, 2]
    );
    for attempt in &trapped {
        let log = &attempt.log;
        assert!(
            log.contains("panicked at") && log.contains("stderr poison: trap requested"),
            "{log}"
        );
    }

    // The runner is gone; a dashboard shows them.
    let dashboard = Dashboard::start(&db, &[]).await;
    let page = get(&format!("{}/jobs/{trap}", dashboard.base), &[])
        .await
        .body;
    assert!(
        page.contains("id=\"attempt-1\"") && page.contains("id=\"attempt-2\""),
        "{page}"
    );
    assert!(page.contains("poison: trap requested by job"), "{page}");
    let (_, shown, _) = run_cli(&db.url(), &["jobs", "show", &flood.to_string()]).await;
    assert!(
        shown.contains("attempt 1 logged, older lines cut:")
            && shown.contains("  | INFO flood line 99"),
        "{shown}"
    );
}

/// The ids a jobs page lists, in order.
fn listed(page: &str) -> Vec<i64> {
    let table = &page[page.find("id=\"jobs\"").expect("a jobs table")..];
    let table = &table[..table.find("</table>").unwrap()];
    table
        .split("<td class=\"num\"><a href=\"/jobs/")
        .skip(1)
        .map(|cell| cell[..cell.find('"').unwrap()].parse().unwrap())
        .collect()
}

#[tokio::test]
async fn the_jobs_list_pages_newest_first_and_filters_by_enqueue_time() {
    let db = TestDb::new().await;
    let queue = db.queue();
    let jobs: Vec<_> = (0..120)
        .map(|n| NewJob::new("echo", json!({ "n": n })))
        .collect();
    queue.enqueue_many(queue.pool(), &jobs).await.unwrap();
    // One job a minute, the newest enqueued a minute ago.
    sqlx::query("UPDATE jobrunner.jobs SET created_at = now() - (121 - id) * interval '1 minute'")
        .execute(&db.pool)
        .await
        .unwrap();
    let dashboard = Dashboard::start(&db, &[]).await;
    let page = |query: String| {
        let url = format!("{}/jobs?{query}", dashboard.base);
        async move { get(&url, &[]).await }
    };

    let first = listed(&page("limit=50".into()).await.body);
    assert_eq!(first, (71..=120).rev().collect::<Vec<i64>>());
    let second = listed(&page("limit=50&before=71".into()).await.body);
    assert_eq!(second, (21..=70).rev().collect::<Vec<i64>>());
    let last = page("limit=50&before=21".into()).await.body;
    assert_eq!(listed(&last), (1..=20).rev().collect::<Vec<i64>>());
    assert!(!last.contains("id=\"next\""), "no page after the last");

    // A range with both ends (read whole), then one open at its old end.
    // Half a minute between the bounds and the jobs either side of them.
    let at = |seconds_ago: i64| {
        let at = chrono::Utc::now() - chrono::Duration::seconds(seconds_ago);
        at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
    };
    let range = format!("from={}&until={}", at(30 * 60 + 30), at(9 * 60 + 30));
    let ranged = listed(&page(range).await.body);
    assert_eq!(ranged, (91..=111).rev().collect::<Vec<i64>>());
    let recent = listed(&page(format!("from={}", at(4 * 60 + 30))).await.body);
    assert_eq!(recent, [120, 119, 118, 117]);
    let refused = page("from=yesterday".into()).await;
    assert_eq!(refused.status, StatusCode::BAD_REQUEST);
    assert!(
        refused.body.contains("from must be a time like"),
        "{}",
        refused.body
    );
}
