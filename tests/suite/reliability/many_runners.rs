//! Many runners on one database: the connections they hold, how throughput goes as they are
//! added, how evenly they share the work, and what they do when the server refuses
//! connections. Each test has a server of its own, with its own `max_connections`.

use std::time::{Duration, Instant};

use serde_json::json;
use sqlx::{Connection, PgConnection, PgPool};

use crate::support::cluster::Cluster;
use crate::support::eventually;
use crate::support::fleet::{Endings, enqueue_n, install_audit};
use crate::support::live::Live;
use crate::support::plugins::linked;

const MINUTE: Duration = Duration::from_secs(60);

/// The pool size each runner is given.
const POOL: usize = 8;

/// Connections the runners hold now.
async fn runner_connections(pool: &PgPool) -> usize {
    let count: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'jobrunner'",
    )
    .fetch_one(pool)
    .await
    .unwrap();
    count as usize
}

/// Jobs not yet ended.
async fn unfinished(pool: &PgPool) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM jobrunner.jobs WHERE state IN ('available', 'running')",
    )
    .fetch_one(pool)
    .await
    .unwrap()
}

/// The completions `runner` has logged.
fn completions(runner: &Live) -> usize {
    runner.events("job completed").len()
}

async fn migrated(cluster: &Cluster) -> PgPool {
    let pool = PgPool::connect(&cluster.url("postgres")).await.unwrap();
    runner::Queue::new(pool.clone()).migrate().await.unwrap();
    pool
}

#[tokio::test]
async fn sixteen_runners_stay_within_their_pools_share_the_work_and_keep_their_pace() {
    const JOBS: usize = 4000;
    let cluster = Cluster::start("max_connections = 300\n");
    let pool = migrated(&cluster).await;
    // Jobs that wait, as jobs calling other services do: one runner's 16 executors bound
    // its throughput, and more runners add executors until the machine's cores bound it.
    let plugins = linked(&["sleep"]);
    let url = cluster.url("postgres");
    let pool_size = POOL.to_string();
    let args = ["--concurrency", "16", "--max-connections", &pool_size];
    let mut runners: Vec<Live> = Vec::new();
    let mut rates = Vec::new();
    let peak = std::cell::Cell::new(0);
    let mut shares = Vec::new();
    for size in [1, 2, 4, 8, 16] {
        while runners.len() < size {
            runners.push(Live::start_on(&url, plugins.path(), &args).await);
        }
        let before: Vec<usize> = runners.iter().map(completions).collect();
        let started = Instant::now();
        enqueue_n(&pool, "sleep", JOBS, |i| json!({ "ms": 50, "i": i })).await;
        eventually(&format!("{size} runners to drain"), 5 * MINUTE, || async {
            peak.set(peak.get().max(runner_connections(&pool).await));
            (unfinished(&pool).await == 0).then_some(())
        })
        .await;
        rates.push((size, JOBS as f64 / started.elapsed().as_secs_f64()));
        shares = runners
            .iter()
            .zip(before)
            .map(|(runner, before)| completions(runner) - before)
            .collect();
    }
    let report: Vec<String> = rates
        .iter()
        .map(|(size, rate)| format!("{size}: {rate:.0} jobs/s"))
        .collect();
    let (least, most) = (shares.iter().min().unwrap(), shares.iter().max().unwrap());
    let peak = peak.get();
    eprintln!(
        "runners (concurrency 16, pools of {POOL}), {JOBS} jobs of 50 ms each: {}; at most \
         {peak} connections held by 16 runners (pools: {}); with 16, each runner completed \
         between {least} and {most} jobs (even share {})",
        report.join(", "),
        16 * POOL,
        JOBS / 16
    );
    assert!(peak <= 16 * POOL, "the runners held {peak} connections");
    assert_eq!(
        shares.iter().sum::<usize>(),
        JOBS,
        "every completion was logged once"
    );
    assert!(
        *least >= JOBS / 16 / 4,
        "every runner got a fair part of the work: {shares:?}"
    );
    let best = rates.iter().map(|(_, rate)| *rate).fold(0.0, f64::max);
    let (alone, with_sixteen) = (rates[0].1, rates.last().unwrap().1);
    assert!(
        with_sixteen > alone && with_sixteen >= best / 2.0,
        "throughput grows, then holds, up to 16 runners: {report:?}"
    );
    for runner in runners {
        runner.stop().await;
    }
}

#[tokio::test]
async fn a_runner_backs_off_while_the_server_refuses_connections_and_recovers() {
    const JOBS: usize = 300;
    let cluster = Cluster::start("max_connections = 20\n");
    let pool = migrated(&cluster).await;
    install_audit(&pool).await;
    pool.close().await;
    let runner = Live::start_on(&cluster.url("postgres"), linked(&["sleep"]).path(), &[]).await;

    // The test takes every connection the server has, the runner's too: it ends their
    // sessions and takes their places, until the runner holds none.
    let mut held: Vec<PgConnection> = Vec::new();
    let give_up = Instant::now() + MINUTE;
    loop {
        let refused = loop {
            match PgConnection::connect(&cluster.url("postgres")).await {
                Ok(conn) => held.push(conn),
                Err(error) => break error,
            }
        };
        assert!(
            refused.to_string().contains("too many clients"),
            "the server refuses more: {refused}"
        );
        let runners: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'jobrunner'",
        )
        .fetch_one(&mut held[0])
        .await
        .unwrap();
        if runners == 0 {
            break;
        }
        sqlx::query(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
              WHERE application_name = 'jobrunner'",
        )
        .execute(&mut held[0])
        .await
        .unwrap();
        assert!(Instant::now() < give_up, "the runner kept its connections");
    }
    let queue = runner::Queue::new(PgPool::connect_lazy(&cluster.url("postgres")).unwrap());
    let jobs: Vec<runner::NewJob> = (0..JOBS)
        .map(|i| runner::NewJob::new("sleep", json!({ "ms": 100, "i": i })))
        .collect();
    queue.enqueue_many(&mut held[0], &jobs).await.unwrap();

    let said = eventually("the runner to say why it waits", MINUTE, || async {
        let log = runner.log().into_iter();
        log.filter(|event| event["level"] == "WARN").find(|event| {
            event["error"]
                .as_str()
                .is_some_and(|error| error.contains("max_connections"))
        })
    })
    .await;
    eprintln!("while the server refused connections, the runner said: {said}");
    drop(held);
    let pool = PgPool::connect(&cluster.url("postgres")).await.unwrap();
    Endings::all_completed_once(&pool, JOBS as i64, 2 * MINUTE).await;
    runner.stop().await;
}
