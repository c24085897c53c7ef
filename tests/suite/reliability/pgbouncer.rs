//! Runners behind PgBouncer in transaction pooling mode: every statement in a transaction of
//! its own, no prepared statement or session state outliving it, LISTEN on a direct
//! connection beside it (or polling without one).

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::support::TestDb;
use crate::support::fleet::{Endings, Fleet, enqueue_n, install_audit};
use crate::support::live::Live;
use crate::support::pgbouncer::PgBouncer;
use crate::support::process::run_cli;

const MINUTE: Duration = Duration::from_secs(60);

/// The events at WARN or ERROR in `fleet`'s logs.
fn complaints(fleet: &Fleet) -> Vec<Value> {
    let all = fleet.runners.iter().flat_map(|runner| runner.log());
    all.filter(|event| event["level"] == "WARN" || event["level"] == "ERROR")
        .collect()
}

/// Drains `jobs` echo jobs with three runners on `url` (with `args`) and returns the time
/// from the first enqueue to the last completion, after checking that each ran and completed
/// once and that no runner complained.
async fn drain(db: &TestDb, url: &str, args: &[&str], jobs: usize) -> Duration {
    install_audit(&db.pool).await;
    let fleet = Fleet::start(url, test_plugins::rust_dir(), 3, args).await;
    let started = Instant::now();
    enqueue_n(&db.pool, "echo", jobs, |i| json!({ "i": i })).await;
    Endings::all_completed_once(&db.pool, jobs as i64, 5 * MINUTE).await;
    let took = started.elapsed();
    let ran_again: i64 = db
        .scalar("SELECT count(*) FROM jobrunner.jobs WHERE attempt <> 1")
        .await;
    assert_eq!(ran_again, 0, "every job ran once");
    let complaints = complaints(&fleet);
    assert!(
        complaints.is_empty(),
        "the runners complained: {complaints:#?}"
    );
    fleet.stop().await;
    took
}

#[tokio::test]
async fn three_runners_drain_fifty_thousand_jobs_through_pgbouncer_in_transaction_mode() {
    const JOBS: usize = 50_000;
    let bouncer = PgBouncer::start(20).await;
    let pooled_db = TestDb::new().await;
    let direct = pooled_db.url();
    let pooled_args = ["--pooled", "--listen-url", &direct, "--concurrency", "50"];
    let pooled = drain(
        &pooled_db,
        &bouncer.url(&pooled_db.name),
        &pooled_args,
        JOBS,
    )
    .await;
    let server_connections: i64 = pooled_db
        .scalar(
            "SELECT count(*) FROM pg_stat_activity
              WHERE datname = current_database() AND application_name = 'jobrunner'",
        )
        .await;

    let direct_db = TestDb::new().await;
    let direct_args = ["--concurrency", "50"];
    let direct = drain(&direct_db, &direct_db.url(), &direct_args, JOBS).await;
    let rate = |took: Duration| JOBS as f64 / took.as_secs_f64();
    eprintln!(
        "{JOBS} jobs, 3 runners: through PgBouncer (transaction mode, 20 server connections) \
         {:.0} jobs/s ({took:?}), direct {:.0} jobs/s ({direct:?}); {server_connections} \
         server connections left open by PgBouncer",
        rate(pooled),
        rate(direct),
        took = pooled,
    );
    assert!(
        !bouncer.log().contains("prepared statement"),
        "PgBouncer saw no prepared statement error:\n{}",
        bouncer.log()
    );
}

#[tokio::test]
async fn through_pgbouncer_without_a_direct_url_runners_poll_and_migrating_is_refused() {
    let bouncer = PgBouncer::start(5).await;
    let db = TestDb::empty().await;
    let url = bouncer.url(&db.name);

    let (status, _, stderr) = run_cli(&url, &["--pooled", "migrate"]).await;
    assert!(!status.success(), "migrating needs a session");
    assert!(
        stderr.contains("takes a direct connection") && stderr.contains("--listen-url"),
        "the error says why and what to do: {stderr}"
    );
    let (status, stdout, stderr) = run_cli(&db.url(), &["migrate"]).await;
    assert!(status.success(), "a direct migrate works: {stderr}");
    assert!(stdout.contains("up to date"));
    let (status, _, stderr) = run_cli(&url, &["--pooled", "migrate"]).await;
    assert!(
        status.success(),
        "with the schema current there is nothing to lock: {stderr}"
    );

    install_audit(&db.pool).await;
    let runner = Live::start_on(&url, test_plugins::rust_dir(), &["--pooled"]).await;
    let polling = "polling for new jobs, schedule changes and cancellations instead of LISTEN";
    runner
        .event(polling, |event| event["level"] == "WARN")
        .await;
    enqueue_n(&db.pool, "echo", 500, |i| json!({ "i": i })).await;
    Endings::all_completed_once(&db.pool, 500, MINUTE).await;
    runner.stop().await;
}
