//! The worker loop: wake-ups, graceful shutdown, lost leases.

use std::sync::Arc;
use std::time::{Duration, Instant};

use runner::driver::{ClaimType, Vacuum};
use runner::executor::Execution;
use runner::sandbox::GuestRuntime;
use runner::{Executor, Handlers, Job, JobState, NewJob, Unique, Worker, WorkerConfig};
use serde_json::json;
use tokio::sync::{Semaphore, mpsc};

use crate::support::{TestDb, driver, eventually, state_of};

const WAIT: Duration = Duration::from_secs(10);

/// Polling so rare that only a notification can explain a prompt start.
fn notify_only() -> WorkerConfig {
    WorkerConfig {
        poll_interval: Duration::from_secs(3600),
        ..WorkerConfig::default()
    }
}

/// Handlers whose `started` job reports its id when it begins.
fn reporting(started: mpsc::UnboundedSender<(i64, Instant)>) -> Handlers {
    Handlers::new().on("started", move |job| {
        let started = started.clone();
        async move {
            let _ = started.send((job.id, Instant::now()));
            Ok(None)
        }
    })
}

#[tokio::test]
async fn notify_wakes_an_idle_runner() {
    let db = TestDb::new().await;
    let (tx, mut started) = mpsc::unbounded_channel();
    let worker = Worker::new(db.queue(), reporting(tx), notify_only()).start();
    worker.listening().await;

    let mut latencies = Vec::new();
    for i in 0..20 {
        let enqueued_at = Instant::now();
        let id = db
            .queue()
            .enqueue(&db.pool, &NewJob::new("started", json!(i)))
            .await
            .unwrap()
            .id;
        let (ran, at) = tokio::time::timeout(WAIT, started.recv())
            .await
            .expect("the idle runner must start the job long before its next poll (1 h)")
            .unwrap();
        assert_eq!(ran, id);
        latencies.push(at - enqueued_at);
    }
    worker.shutdown().await;
    latencies.sort();
    eprintln!(
        "enqueue -> start through NOTIFY: p50 {:?}, max {:?}",
        latencies[latencies.len() / 2],
        latencies.last().unwrap()
    );
}

#[tokio::test]
async fn the_listener_recovers_when_its_connection_is_killed() {
    let db = TestDb::new().await;
    let (tx, mut started) = mpsc::unbounded_channel();
    let worker = Worker::new(db.queue(), reporting(tx), notify_only()).start();
    worker.listening().await;
    let listener_pid = || async {
        sqlx::query_scalar::<_, i32>(
            "SELECT pid FROM pg_stat_activity
              WHERE datname = current_database() AND query LIKE 'LISTEN%'",
        )
        .fetch_optional(&db.pool)
        .await
        .unwrap()
    };
    let old = eventually("the LISTEN connection", WAIT, listener_pid).await;
    sqlx::query("SELECT pg_terminate_backend($1)")
        .bind(old)
        .execute(&db.pool)
        .await
        .unwrap();
    eventually("a new LISTEN connection", WAIT, || async {
        listener_pid().await.filter(|pid| *pid != old)
    })
    .await;

    let id = db
        .queue()
        .enqueue(&db.pool, &NewJob::new("started", json!({})))
        .await
        .unwrap()
        .id;
    let (ran, _) = tokio::time::timeout(WAIT, started.recv())
        .await
        .expect("woken")
        .unwrap();
    assert_eq!(ran, id);
    worker.shutdown().await;
}

/// Handlers whose `gated` jobs announce their start, then wait for a gate permit.
fn gated(started: mpsc::UnboundedSender<i64>, gate: Arc<Semaphore>) -> Handlers {
    Handlers::new()
        .on("gated", move |job| {
            let (started, gate) = (started.clone(), gate.clone());
            async move {
                let _ = started.send(job.id);
                let _permit = gate.acquire().await.unwrap();
                Ok(None)
            }
        })
        .on("quick", |_| async { Ok(None) })
}

#[tokio::test]
async fn shutdown_requeues_unstarted_jobs_and_lets_running_ones_finish() {
    let db = TestDb::new().await;
    let (tx, mut started) = mpsc::unbounded_channel();
    let gate = Arc::new(Semaphore::new(0));
    let config = WorkerConfig {
        concurrency: 1,
        prefetch: 4,
        ..notify_only()
    };
    let worker = Worker::new(db.queue(), gated(tx, gate.clone()), config).start();
    // A runner prefetches only while jobs are short: show it short ones first.
    let quick: Vec<NewJob> = (0..200).map(|i| NewJob::new("quick", json!(i))).collect();
    db.queue().enqueue_many(&db.pool, &quick).await.unwrap();
    eventually("the quick jobs to finish", WAIT, || async {
        let left: i64 = db.scalar("SELECT count(*) FROM jobrunner.jobs").await;
        (left == 0).then_some(())
    })
    .await;
    let jobs: Vec<NewJob> = (0..5).map(|i| NewJob::new("gated", json!(i))).collect();
    db.queue().enqueue_many(&db.pool, &jobs).await.unwrap();

    let running = tokio::time::timeout(WAIT, started.recv())
        .await
        .unwrap()
        .unwrap();
    eventually("one running and four prefetched", WAIT, || async {
        let claimed: i64 = db
            .scalar("SELECT count(*) FROM jobrunner.job_status WHERE state = 'running'")
            .await;
        (claimed == 5).then_some(())
    })
    .await;

    let shutdown = tokio::spawn(worker.shutdown());
    // The four that never started go back at once, while the running one is still running.
    eventually("the unstarted jobs to be requeued", WAIT, || async {
        let requeued: i64 = db
            .scalar("SELECT count(*) FROM jobrunner.jobs WHERE state = 'available' AND attempt = 0")
            .await;
        (requeued == 4).then_some(())
    })
    .await;
    assert_eq!(state_of(&db, running).await, "running");
    assert!(
        !shutdown.is_finished(),
        "shutdown waits for the running job"
    );

    gate.add_permits(1);
    tokio::time::timeout(WAIT, shutdown)
        .await
        .expect("shutdown finishes")
        .unwrap();
    let (total, available, errors): (i64, i64, i64) = sqlx::query_as(
        "SELECT count(*), count(*) FILTER (WHERE state = 'available' AND attempt = 0),
                coalesce(sum(jsonb_array_length(errors)), 0)
           FROM jobrunner.jobs",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(
        (total, available, errors),
        (4, 4, 0),
        "the finished job is gone, none lost"
    );
    assert!(
        started.try_recv().is_err(),
        "no job started after shutdown began"
    );
}

#[tokio::test]
async fn shutdown_deadline_requeues_running_jobs_without_counting_them() {
    let db = TestDb::new().await;
    let (tx, mut started) = mpsc::unbounded_channel();
    let config = WorkerConfig {
        shutdown_timeout: Duration::from_millis(300),
        ..notify_only()
    };
    let worker = Worker::new(db.queue(), gated(tx, Arc::new(Semaphore::new(0))), config).start();
    let id = db
        .queue()
        .enqueue(&db.pool, &NewJob::new("gated", json!({})))
        .await
        .unwrap()
        .id;
    tokio::time::timeout(WAIT, started.recv())
        .await
        .unwrap()
        .unwrap();

    tokio::time::timeout(WAIT, worker.shutdown())
        .await
        .expect("shutdown respects its deadline");
    let record = db.queue().job(id).await.unwrap();
    assert_eq!((record.state, record.attempt), (JobState::Available, 0));
    assert!(record.errors.is_empty());
}

#[tokio::test]
async fn a_runner_that_loses_its_lease_abandons_the_attempt() {
    let db = TestDb::new().await;
    let (tx, mut started) = mpsc::unbounded_channel();
    let (dropped_tx, mut dropped) = mpsc::unbounded_channel::<()>();
    struct OnDrop(mpsc::UnboundedSender<()>);
    impl Drop for OnDrop {
        fn drop(&mut self) {
            let _ = self.0.send(());
        }
    }
    let handlers = Handlers::new().on("endless", move |job| {
        let (started, dropped) = (tx.clone(), dropped_tx.clone());
        async move {
            let _guard = OnDrop(dropped);
            let _ = started.send(job.id);
            std::future::pending::<()>().await;
            Ok(None)
        }
    });
    let config = WorkerConfig {
        lease: Duration::from_millis(600),
        ..notify_only()
    };
    let worker = Worker::new(db.queue(), handlers, config).start();
    let job = NewJob::new("endless", json!({})).unique(Unique::Off);
    let id = db.queue().enqueue(&db.pool, &job).await.unwrap().id;
    tokio::time::timeout(WAIT, started.recv())
        .await
        .unwrap()
        .unwrap();

    // Another runner takes the job over (as after a rescue and a new claim).
    sqlx::query("UPDATE jobrunner.jobs SET lease_owner = 'other', attempt = 2 WHERE id = $1")
        .bind(id)
        .execute(&db.pool)
        .await
        .unwrap();
    tokio::time::timeout(WAIT, dropped.recv())
        .await
        .expect("the attempt is abandoned")
        .unwrap();
    eventually("the worker to forget the job", WAIT, || async {
        (worker.in_flight() == 0).then_some(())
    })
    .await;
    worker.shutdown().await;
    let record = db.queue().job(id).await.unwrap();
    assert_eq!(
        (record.state, record.lease_owner.as_deref()),
        (JobState::Running, Some("other"))
    );
}

#[tokio::test]
async fn a_runner_does_not_hoard_long_jobs_it_cannot_start() {
    let db = TestDb::new().await;
    let jobs: Vec<NewJob> = (0..10).map(|i| NewJob::new("gated", json!(i))).collect();
    db.queue().enqueue_many(&db.pool, &jobs).await.unwrap();
    let gate = Arc::new(Semaphore::new(0));
    let config = WorkerConfig {
        concurrency: 2,
        prefetch: 100,
        batch_size: 50,
        ..WorkerConfig::default()
    };
    let (a_tx, mut a_started) = mpsc::unbounded_channel();
    let a = Worker::new(db.queue(), gated(a_tx, gate.clone()), config.clone()).start();
    for _ in 0..2 {
        tokio::time::timeout(WAIT, a_started.recv()).await.unwrap();
    }
    // A runs two jobs that do not finish. Had it claimed the eight others to wait for its
    // executors, B would find nothing to run.
    let (b_tx, mut b_started) = mpsc::unbounded_channel();
    let b = Worker::new(db.queue(), gated(b_tx, gate.clone()), config).start();
    for _ in 0..2 {
        tokio::time::timeout(WAIT, b_started.recv())
            .await
            .expect("the second runner finds jobs the first one cannot start yet");
    }
    assert_eq!(a.in_flight(), 2);
    gate.add_permits(10);
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test]
async fn a_runner_vacuums_the_jobs_table_once_dead_rows_pile_up() {
    let db = TestDb::new().await;
    let jobs: Vec<NewJob> = (0..2000)
        .map(|i| NewJob::new("quick", json!(i)).unique(Unique::Off))
        .collect();
    db.queue().enqueue_many(&db.pool, &jobs).await.unwrap();
    let quick = Handlers::new().on("quick", |_| async { Ok(None) });
    let config = WorkerConfig {
        vacuum_dead_rows: Some(500),
        ..WorkerConfig::default()
    };
    let worker = Worker::new(db.queue(), quick, config).start();
    // Autovacuum is off on the test server, and would not look this soon anyway.
    eventually(
        "the runner to vacuum the jobs table",
        Duration::from_secs(30),
        || async {
            let vacuums = jobs_table_stats(&db).await.vacuums;
            (vacuums > 0).then_some(())
        },
    )
    .await;
    worker.shutdown().await;
}

#[tokio::test]
async fn the_jobs_table_is_vacuumed_only_once_a_fifth_of_it_is_dead() {
    let db = TestDb::new().await;
    let jobs: Vec<NewJob> = (0..8000)
        .map(|i| NewJob::new("quick", json!(i)).unique(Unique::Off))
        .collect();
    db.queue().enqueue_many(&db.pool, &jobs).await.unwrap();
    // 1,000 dead of 8,000: over the threshold, but an eighth of the table.
    delete_oldest(&db, 1000, 1000).await;
    assert_eq!(
        driver(&db.queue()).vacuum_if_needed(500).await.unwrap(),
        Vacuum::NotNeeded
    );
    // 3,000 dead, 5,000 live.
    delete_oldest(&db, 2000, 3000).await;
    assert!(matches!(
        driver(&db.queue()).vacuum_if_needed(500).await.unwrap(),
        Vacuum::Done { dead: 3000.., .. }
    ));
}

/// The server's statistics of the jobs table: vacuums so far, dead rows now.
struct TableStats {
    vacuums: i64,
    dead: i64,
}

async fn jobs_table_stats(db: &TestDb) -> TableStats {
    let (vacuums, dead) = sqlx::query_as(
        "SELECT vacuum_count, n_dead_tup FROM pg_stat_user_tables
          WHERE relid = 'jobrunner.jobs'::regclass",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    TableStats { vacuums, dead }
}

/// Deletes the `n` oldest jobs, then waits until the server's statistics (a second or so
/// behind) count at least `dead` dead rows in the jobs table.
async fn delete_oldest(db: &TestDb, n: i64, dead: i64) {
    sqlx::query(
        "DELETE FROM jobrunner.jobs
          WHERE id IN (SELECT id FROM jobrunner.jobs ORDER BY id LIMIT $1)",
    )
    .bind(n)
    .execute(&db.pool)
    .await
    .unwrap();
    eventually(
        "the statistics to count the dead rows",
        Duration::from_secs(30),
        || async {
            let counted = jobs_table_stats(db).await.dead;
            (counted >= dead).then_some(())
        },
    )
    .await;
}

/// Waits for `n` jobs to start and returns their ids.
async fn starts(started: &mut mpsc::UnboundedReceiver<(i64, Instant)>, n: usize) -> Vec<i64> {
    let mut ids = Vec::new();
    for _ in 0..n {
        let (id, _) = tokio::time::timeout(WAIT, started.recv())
            .await
            .expect("a job to start")
            .unwrap();
        ids.push(id);
    }
    ids
}

// Claims start each tenant at its floor: below it the runner's last claim found nothing
// available (queue::Floors). The next two tests make jobs available below a floor; if the
// runner did not hear of them it would find them only when it next forgets its floors, a
// minute later.

#[tokio::test]
async fn a_job_committed_after_later_jobs_ran_still_runs_at_once() {
    let db = TestDb::new().await;
    let (tx, mut started) = mpsc::unbounded_channel();
    let worker = Worker::new(db.queue(), reporting(tx), WorkerConfig::default()).start();
    worker.listening().await;

    // A transaction that enqueues, then takes its time: its job's run_at (the transaction's
    // start) and id come before those of jobs enqueued meanwhile.
    let mut slow = db.pool.begin().await.unwrap();
    let late = db
        .queue()
        .enqueue(&mut *slow, &NewJob::new("started", json!("late")))
        .await
        .unwrap()
        .id;
    let jobs: Vec<NewJob> = (0..50)
        .map(|i| NewJob::new("started", json!(i)).unique(Unique::Off))
        .collect();
    db.queue().enqueue_many(&db.pool, &jobs).await.unwrap();
    let ran = starts(&mut started, 50).await;
    assert!(ran.iter().all(|&id| id > late));

    slow.commit().await.unwrap();
    let ran = starts(&mut started, 1).await;
    assert_eq!(ran, [late], "the late job runs once committed");
    worker.shutdown().await;
}

#[tokio::test]
async fn an_urgent_job_retried_behind_a_claimed_backlog_runs_again_at_once() {
    let db = TestDb::new().await;
    let (tx, mut started) = mpsc::unbounded_channel();
    let urgent = {
        let report = tx.clone();
        reporting(tx).on("fails-once", move |job| {
            let tx = report.clone();
            async move {
                if job.attempt == 1 {
                    return Err(runner::JobError::Retry("not yet".into()));
                }
                let _ = tx.send((job.id, Instant::now()));
                Ok(None)
            }
        })
    };
    let config = WorkerConfig {
        poll_interval: Duration::from_millis(20),
        retry: runner::retry::RetryPolicy {
            max_attempts: 3,
            backoff: runner::retry::Backoff {
                kind: runner::retry::BackoffKind::Exponential,
                base: Duration::from_millis(200),
                cap: Duration::from_millis(200),
            },
        },
        ..WorkerConfig::default()
    };
    let worker = Worker::new(db.queue(), urgent, config).start();
    worker.listening().await;

    // The urgent job fails at once; by the time its retry is due the backlog's claims have
    // set the floor at priority 0, above the retry's key (priority -1).
    let mut jobs: Vec<NewJob> = (0..50)
        .map(|i| NewJob::new("started", json!(i)).unique(Unique::Off))
        .collect();
    jobs.push(NewJob::new("fails-once", json!({})).priority(-1));
    let ids = db.queue().enqueue_many(&db.pool, &jobs).await.unwrap();
    let retried = ids.last().unwrap().id;
    let ran = starts(&mut started, 51).await;
    assert!(ran.contains(&retried), "the retry ran");
    worker.shutdown().await;
}

/// Jobs that hold their thread for a while without yielding, as a guest stuck in a long host
/// call would, run on threads of their own ([`Executor::runtime`]).
struct ThreadHogs {
    threads: GuestRuntime,
}

impl Executor for ThreadHogs {
    fn job_types(&self) -> Arc<[ClaimType]> {
        [ClaimType::from("hog")].into()
    }

    fn runtime(&self) -> Option<tokio::runtime::Handle> {
        Some(self.threads.handle())
    }

    async fn execute(&self, _job: &Job) -> Execution {
        std::thread::sleep(Duration::from_millis(1500));
        Execution::from(Ok(None))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_that_hold_their_threads_do_not_hold_up_the_heartbeats() {
    let db = TestDb::new().await;
    let queue = db.queue();
    let hogs = ThreadHogs {
        threads: GuestRuntime::new().unwrap(),
    };
    // Renewed every third of a second, a lease lapses unless heartbeats run while every job
    // thread is blocked for 1.5 s at a time.
    let config = WorkerConfig {
        concurrency: 4,
        lease: Duration::from_secs(1),
        keep_completed: Some(Duration::from_secs(3600)),
        ..WorkerConfig::default()
    };
    let worker = Worker::new(queue.clone(), hogs, config.clone()).start();
    // Another runner, on threads of its own, whose rescuer takes back every lease that lapses.
    let rescuer = WorkerConfig {
        rescue_interval: Duration::from_millis(100),
        ..config
    };
    let elsewhere = GuestRuntime::new().unwrap();
    let other = {
        let _on_its_threads = elsewhere.handle().enter();
        let nothing = Handlers::new().on("other", |_| async { Ok(None) });
        Worker::new(queue.clone(), nothing, rescuer).start()
    };
    let jobs: Vec<NewJob> = (0..8)
        .map(|n| NewJob::new("hog", json!(n)).unique(Unique::Off))
        .collect();
    let ids: Vec<i64> = queue
        .enqueue_many(&db.pool, &jobs)
        .await
        .unwrap()
        .iter()
        .map(|e| e.id)
        .collect();
    for id in ids {
        let job = crate::support::settled(&queue, id, JobState::Completed).await;
        assert_eq!(
            (job.attempt, job.errors.len()),
            (1, 0),
            "job {id} lost its lease: {:?}",
            job.errors
        );
    }
    worker.shutdown().await;
    other.shutdown().await;
}
