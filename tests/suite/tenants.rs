//! Tenants: fair claiming among them, their limits held across runners, the job types each may
//! use, their sandbox overrides, and what `runner tenants` shows.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use runner::driver::{ClaimRequest, ClaimType, Claimed};
use runner::{
    Handlers, JobState, Limits, ManualClock, NewJob, Queue, QueueError, SandboxConfig, Unique,
    Worker, WorkerConfig, WorkerHandle,
};
use serde_json::{Value, json};

use crate::support::live::Live;
use crate::support::process::run_cli;
use crate::support::{TestDb, driver, eventually, plugins, publish, settled};

const WAIT: Duration = Duration::from_secs(60);

async fn enqueue(queue: &Queue, job_type: &str, tenant: &str, count: usize) -> Vec<i64> {
    let jobs: Vec<NewJob> = (0..count)
        .map(|i| {
            NewJob::new(job_type, json!({ "i": i }))
                .tenant(tenant)
                .unique(Unique::Off)
        })
        .collect();
    let mut ids = Vec::new();
    for chunk in jobs.chunks(5000) {
        let enqueued = queue.enqueue_many(queue.pool(), chunk).await.unwrap();
        ids.extend(enqueued.into_iter().map(|e| e.id));
    }
    ids
}

async fn left(queue: &Queue, tenant: &str) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM jobrunner.jobs WHERE tenant = $1")
        .bind(tenant)
        .fetch_one(queue.pool())
        .await
        .unwrap()
}

async fn running(queue: &Queue, tenant: &str) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM jobrunner.jobs WHERE tenant = $1 AND state = 'running'",
    )
    .bind(tenant)
    .fetch_one(queue.pool())
    .await
    .unwrap()
}

fn two_runners(
    queue: &Queue,
    handlers: &Handlers,
    concurrency: usize,
    poll_interval: Duration,
) -> Vec<WorkerHandle> {
    (0..2)
        .map(|_| {
            let config = WorkerConfig {
                concurrency,
                batch_size: concurrency,
                poll_interval,
                ..WorkerConfig::default()
            };
            Worker::new(queue.clone(), handlers.clone(), config).start()
        })
        .collect()
}

async fn shut_down(workers: Vec<WorkerHandle>) {
    for worker in workers {
        worker.shutdown().await;
    }
}

/// The issue's bound: b's last job completes before a is 10% done. Without fair claiming, b's
/// jobs wait behind all of a's, which were enqueued first.
#[tokio::test]
async fn a_small_tenant_finishes_long_before_a_big_backlog_drains() {
    let db = TestDb::new().await;
    let queue = db.queue();
    let backlog = 50_000;
    enqueue(&queue, "noop", "a", backlog).await;
    let noop = Handlers::new().on("noop", |_| async { Ok(None) });
    let workers = two_runners(&queue, &noop, 50, Duration::from_millis(50));
    eventually("a's backlog to be worked", WAIT, || async {
        (left(&queue, "a").await < backlog as i64).then_some(())
    })
    .await;

    enqueue(&queue, "noop", "b", 100).await;
    eventually("b's jobs to finish", WAIT, || async {
        (left(&queue, "b").await == 0).then_some(())
    })
    .await;
    let a_done = backlog as i64 - left(&queue, "a").await;
    shut_down(workers).await;
    assert!(
        a_done < backlog as i64 / 10,
        "b finished only after {a_done} of a's {backlog} jobs"
    );
}

#[tokio::test]
async fn max_running_holds_across_two_runners() {
    let db = TestDb::new().await;
    let queue = db.queue();
    publish(&queue, "[tenants.capped]\nmax_running = 3").await;
    enqueue(&queue, "slow", "capped", 30).await;
    enqueue(&queue, "slow", "free", 30).await;
    let slow = Handlers::new().on("slow", |_| async {
        tokio::time::sleep(Duration::from_millis(40)).await;
        Ok(None)
    });
    // No polling: a runner held back by max_running must claim again when a job completes.
    let workers = two_runners(&queue, &slow, 20, Duration::from_secs(3600));

    let (mut most_capped, mut most_free) = (0, 0);
    let deadline = Instant::now() + WAIT;
    while left(&queue, "capped").await + left(&queue, "free").await > 0 {
        assert!(Instant::now() < deadline, "the jobs did not finish");
        most_capped = most_capped.max(running(&queue, "capped").await);
        most_free = most_free.max(running(&queue, "free").await);
        assert!(
            most_capped <= 3,
            "{most_capped} of capped's jobs ran at once"
        );
    }
    shut_down(workers).await;
    assert_eq!(most_capped, 3, "the limit is reached, not just respected");
    assert!(
        most_free > 3,
        "another tenant is not held to it ({most_free})"
    );
}

#[tokio::test]
async fn a_rate_limit_holds_over_ten_seconds() {
    let db = TestDb::new().await;
    let queue = db.queue();
    // A bucket of two: a claim that comes a few milliseconds late (the suite shares two cores)
    // still finds the token that fell due, so the test measures the limit, not the machine.
    publish(&queue, "[tenants.metered]\nrate = 5.0\nburst = 2.0").await;
    enqueue(&queue, "stamp", "metered", 200).await;
    let starts = Arc::new(Mutex::new(Vec::new()));
    let stamp = Handlers::new().on("stamp", {
        let starts = Arc::clone(&starts);
        move |_| {
            starts.lock().unwrap().push(Instant::now());
            async { Ok(None) }
        }
    });
    let workers = two_runners(&queue, &stamp, 10, Duration::from_millis(50));
    let window = Duration::from_secs(10);
    let first = eventually("the first start", WAIT, || async {
        starts.lock().unwrap().first().copied()
    })
    .await;
    tokio::time::sleep_until((first + window + Duration::from_millis(500)).into()).await;
    shut_down(workers).await;

    let started = starts.lock().unwrap();
    let in_window = started.iter().filter(|&&t| t < first + window).count();
    // 5/s for 10 s, plus the two starts the full bucket holds at first: at most 52.
    assert!(
        (45..=52).contains(&in_window),
        "{in_window} starts in 10 s at 5/s"
    );
}

fn request<'a>(types: &'a [ClaimType], limit: usize, after: Option<&'a str>) -> ClaimRequest<'a> {
    ClaimRequest {
        owner: "r",
        job_types: types,
        limit,
        lease: Duration::from_secs(30),
        default_max_attempts: 25,
        after_tenant: after,
        floors: None,
        batch: None,
    }
}

fn per_tenant(claimed: &Claimed) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for job in &claimed.jobs {
        *counts.entry(job.tenant.clone()).or_default() += 1;
    }
    counts
}

#[tokio::test]
async fn weights_share_a_claim_and_priority_orders_each_tenant() {
    let db = TestDb::new().await;
    let queue = db.queue();
    publish(&queue, "[tenants.heavy]\nweight = 3").await;
    enqueue(&queue, "t", "heavy", 200).await;
    enqueue(&queue, "t", "light", 200).await;
    let urgent = NewJob::new("t", json!({"urgent": true}))
        .tenant("light")
        .priority(-5);
    let urgent = queue.enqueue(queue.pool(), &urgent).await.unwrap().id;
    let types = [ClaimType::from("t")];

    let claimed = driver(&queue)
        .claim(&request(&types, 100, None))
        .await
        .unwrap();
    assert_eq!(
        per_tenant(&claimed),
        BTreeMap::from([("heavy".into(), 75), ("light".into(), 25)])
    );
    assert!(claimed.more, "both tenants have more ripe jobs");
    assert!(claimed.jobs.iter().any(|job| job.id == urgent));
}

#[tokio::test]
async fn with_more_tenants_than_a_batch_claims_take_turns() {
    let db = TestDb::new().await;
    let queue = db.queue();
    let tenants = ["t1", "t2", "t3", "t4", "t5"];
    for tenant in tenants {
        enqueue(&queue, "t", tenant, 2).await;
    }
    let types = [ClaimType::from("t")];
    let mut served = Vec::new();
    let mut after: Option<String> = None;
    for _ in 0..10 {
        let claimed = driver(&queue)
            .claim(&request(&types, 2, after.as_deref()))
            .await
            .unwrap();
        for (tenant, n) in per_tenant(&claimed) {
            assert_eq!(n, 1, "one job each while tenants outnumber the batch");
            served.push(tenant);
        }
        after = claimed.next_tenant;
    }
    assert_eq!(served.len(), 10, "every job was claimed");
    // Every tenant's first job goes before any tenant's second.
    let mut first_round = served[..5].to_vec();
    first_round.sort();
    assert_eq!(first_round, tenants);
}

#[tokio::test]
async fn the_rate_bucket_and_max_running_follow_the_clock() {
    let db = TestDb::new().await;
    let clock = ManualClock::starting_now();
    let queue = db.queue_with(clock.clone());
    publish(
        &queue,
        "[tenants.metered]\nrate = 2.0\n[tenants.capped]\nmax_running = 2",
    )
    .await;
    enqueue(&queue, "t", "metered", 20).await;
    enqueue(&queue, "t", "capped", 20).await;
    let types = [ClaimType::from("t")];
    let claim = || async {
        let claimed = driver(&queue)
            .claim(&request(&types, 10, None))
            .await
            .unwrap();
        let counts = per_tenant(&claimed);
        let n = |t: &str| counts.get(t).copied().unwrap_or(0);
        (n("metered"), n("capped"), claimed)
    };

    let (metered, capped, _) = claim().await;
    assert_eq!((metered, capped), (1, 2), "a full bucket of 1; room for 2");
    let (metered, capped, claimed) = claim().await;
    assert_eq!((metered, capped), (0, 0));
    assert!(claimed.held, "capped is held back by max_running");
    assert!(!claimed.more, "nothing to gain from claiming again at once");
    assert_eq!(claimed.rate_wait, Some(Duration::from_millis(500)));

    clock.advance(Duration::from_millis(499));
    assert_eq!(claim().await.0, 0, "no whole token yet");
    clock.advance(Duration::from_millis(1));
    assert_eq!(claim().await.0, 1);
    // An idle hour fills the bucket to its burst (1 start at 2/s), no more.
    clock.advance(Duration::from_secs(3600));
    assert_eq!(claim().await.0, 1);

    let running: Vec<i64> = sqlx::query_scalar(
        "SELECT id FROM jobrunner.jobs WHERE tenant = 'capped' AND state = 'running'",
    )
    .fetch_all(queue.pool())
    .await
    .unwrap();
    sqlx::query("DELETE FROM jobrunner.jobs WHERE id = $1")
        .bind(running[0])
        .execute(queue.pool())
        .await
        .unwrap();
    assert_eq!(claim().await.1, 1, "a finished job makes room for one");
}

#[tokio::test]
async fn a_tenant_may_enqueue_only_its_job_types_and_a_stray_job_fails() {
    let db = TestDb::new().await;
    let queue = db.queue();
    publish(
        &queue,
        "[tenant_defaults]\njob_types = [\"echo\"]\n[tenants.wide]\njob_types = [\"echo\", \"poison\"]",
    )
    .await;

    let refused = queue
        .enqueue(
            queue.pool(),
            &NewJob::new("poison", json!({"do": "print", "bytes": 1})).tenant("narrow"),
        )
        .await
        .unwrap_err();
    let QueueError::Rejected(message) = refused else {
        panic!("not a refusal: {refused:?}");
    };
    assert!(
        message.contains(r#"tenant "narrow" may not enqueue job type "poison""#)
            && message.contains(r#"["echo"]"#),
        "{message}"
    );
    let sql_refused = sqlx::query("SELECT jobrunner.enqueue('poison', '{}', tenant => 'narrow')")
        .execute(queue.pool())
        .await
        .unwrap_err();
    assert!(sql_refused.to_string().contains("may not enqueue"));
    assert_eq!(left(&queue, "narrow").await, 0, "nothing was inserted");
    let allowed = NewJob::new("poison", json!({"do": "print", "bytes": 1})).tenant("wide");
    let allowed = queue.enqueue(queue.pool(), &allowed).await.unwrap().id;

    // A job that bypassed enqueue (or predates the policy) fails instead of running.
    let stray: i64 = sqlx::query_scalar(
        "INSERT INTO jobrunner.jobs (job_type, tenant, payload)
         VALUES ('poison', 'narrow', '{\"do\": \"print\", \"bytes\": 1}') RETURNING id",
    )
    .fetch_one(queue.pool())
    .await
    .unwrap();
    let worker = wasm_worker(&queue, &["poison"], Limits::default()).await;
    let stray = settled(&queue, stray, JobState::Failed).await;
    assert_eq!(stray.attempt, 1, "failed for good at once");
    assert!(
        stray.errors[0]
            .error
            .contains(r#"tenant "narrow" may not run job type "poison""#),
        "{}",
        stray.errors[0].error
    );
    settled(&queue, allowed, JobState::Completed).await;
    worker.shutdown().await;
}

#[tokio::test]
async fn a_tenants_memory_override_decides_whether_the_same_plugin_fits() {
    let db = TestDb::new().await;
    let queue = db.queue();
    publish(
        &queue,
        "[tenants.small]\nmemory = \"16MiB\"\n[tenants.big]\nmemory = \"64MiB\"",
    )
    .await;
    let limits = Limits {
        memory: 20 << 20,
        ..Limits::default()
    };
    let worker = wasm_worker(&queue, &["poison"], limits).await;
    let payload = json!({"do": "memory", "mib": 24});
    let mut ids = HashMap::new();
    for tenant in ["small", "default", "big"] {
        let job = NewJob::new("poison", payload.clone())
            .tenant(tenant)
            .max_attempts(1);
        ids.insert(tenant, queue.enqueue(queue.pool(), &job).await.unwrap().id);
    }

    let big = settled(&queue, ids["big"], JobState::Completed).await;
    assert_eq!(big.result, Some(json!({"allocated_mib": 24})));
    for (tenant, cap) in [("small", 16 << 20), ("default", 20 << 20)] {
        let job = settled(&queue, ids[tenant], JobState::Failed).await;
        let error = &job.errors[0].error;
        assert!(
            error.contains("memory limit exceeded") && error.contains(&format!("cap is {cap}")),
            "{tenant}: {error}"
        );
    }
    worker.shutdown().await;
}

/// A worker running `job_types` from the example plugins under `limits`, applying the
/// published tenant policy.
async fn wasm_worker(queue: &Queue, job_types: &[&str], limits: Limits) -> WorkerHandle {
    plugins::tenant_worker(queue, job_types, SandboxConfig::default(), limits).await
}

/// Through the binary: a runner publishes its config's policy, enqueue refuses what it
/// forbids, and `runner tenants` shows each tenant's jobs and limits.
#[tokio::test]
async fn runner_tenants_shows_counts_and_limits_from_the_published_policy() {
    let db = TestDb::new().await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("runner.toml");
    std::fs::write(
        &config,
        r#"
        [tenant_defaults]
        max_running = 10
        [tenants.acme]
        max_running = 3
        rate = 20.0
        weight = 2
        job_types = ["echo"]
        memory = "64MiB"
        "#,
    )
    .unwrap();
    let config = config.to_str().unwrap();
    let live = Live::start(&db, test_plugins::rust_dir(), &["--config", config]).await;
    let url = live.url.clone();

    let (status, _, stderr) = run_cli(
        &url,
        &[
            "enqueue",
            "poison",
            "--payload",
            r#"{"do":"trap"}"#,
            "--tenant",
            "acme",
        ],
    )
    .await;
    assert!(!status.success());
    assert!(
        stderr.contains(r#"tenant "acme" may not enqueue job type "poison""#),
        "{stderr}"
    );
    for (tenant, text) in [("acme", "hi"), ("acme", "there"), ("globex", "yo")] {
        let payload = json!({ "text": text }).to_string();
        let (status, _, stderr) = run_cli(
            &url,
            &["enqueue", "echo", "--payload", &payload, "--tenant", tenant],
        )
        .await;
        assert!(status.success(), "{stderr}");
    }
    let completed = |tenant: &'static str| {
        move |event: &Value| event["tenant"] == tenant && event["outcome"] == "completed"
    };
    live.event("job completed", completed("acme")).await;
    live.event("job completed", completed("globex")).await;
    eventually("both of acme's jobs to complete", WAIT, || async {
        (live.events("job completed").len() == 3).then_some(())
    })
    .await;

    let (status, stdout, stderr) = run_cli(&url, &["tenants", "--json"]).await;
    assert!(status.success(), "{stderr}");
    let tenants: Vec<Value> = serde_json::from_str(&stdout).unwrap();
    let acme = tenants.iter().find(|t| t["tenant"] == "acme").unwrap();
    assert_eq!(
        (&acme["completed"], &acme["available"]),
        (&json!(2), &json!(0))
    );
    assert_eq!(acme["policy"]["max_running"], 3);
    assert_eq!(acme["policy"]["rate"], 20.0);
    assert_eq!(acme["policy"]["weight"], 2);
    assert_eq!(acme["policy"]["memory"], 64 << 20);
    let globex = tenants.iter().find(|t| t["tenant"] == "globex").unwrap();
    assert_eq!(globex["completed"], 1);
    assert_eq!(globex["policy"]["max_running"], 10, "the defaults");

    let (status, table, _) = run_cli(&url, &["tenants"]).await;
    assert!(status.success());
    let acme_row = table.lines().find(|l| l.starts_with("acme")).unwrap();
    for cell in ["3", "20 (burst 2)", "echo", "memory=64.0 MiB"] {
        assert!(acme_row.contains(cell), "{cell:?} in {acme_row:?}");
    }
    let (_, listed, _) = run_cli(&url, &["jobs", "list", "--tenant", "globex"]).await;
    assert_eq!(listed.lines().filter(|l| l.contains("echo")).count(), 1);
    live.stop().await;
}

#[tokio::test]
async fn limits_published_after_a_fast_claim_hold_at_once() {
    let db = TestDb::new().await;
    let queue = db.queue();
    enqueue(&queue, "t", "capped", 10).await;
    let types = [ClaimType::from("t")];
    // No limits yet: the claim takes the fast path.
    assert_eq!(
        driver(&queue)
            .claim(&request(&types, 1, None))
            .await
            .unwrap()
            .jobs
            .len(),
        1
    );

    publish(&queue, "[tenants.capped]\nmax_running = 2").await;
    let claimed = driver(&queue)
        .claim(&request(&types, 10, None))
        .await
        .unwrap();
    assert_eq!(
        claimed.jobs.len(),
        1,
        "one running already: room for one more"
    );
    assert!(claimed.held);
    let again = driver(&db.queue())
        .claim(&request(&types, 10, None))
        .await
        .unwrap();
    assert!(
        again.jobs.is_empty(),
        "a new queue handle sees the limit too"
    );
}
