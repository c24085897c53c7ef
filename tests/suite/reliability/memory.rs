//! A hundred guests that fill their memory and hand the host all they can, on two runners at
//! once: each runner stays within its memory budget plus a fixed overhead, no lease of a live
//! runner lapses, no job runs twice, every hostile job ends naming the limit it met, and the
//! healthy jobs beside them are slowed, not stopped.

use std::path::Path;

use runner::{JobState, NewJob, Unique};
use serde_json::json;

use super::healthy_run;
use crate::support::fleet::{Endings, Fleet, install_audit};
use crate::support::{TestDb, settled};

const BUDGET: u64 = 1 << 30;
/// Beyond the budget: the runner itself, and what each used pool slot keeps resident between
/// jobs (2 MiB of memory and 256 KiB of tables, for up to 100 slots).
const OVERHEAD: u64 = 512 << 20;
const HEALTHY: usize = 1000;

fn plugins(dir: &Path) {
    for job_type in ["sleep", "poison"] {
        let file = format!("{job_type}.wasm");
        std::fs::copy(test_plugins::rust_dir().join(&file), dir.join(&file)).unwrap();
    }
    // The healthy jobs need little memory, and say so.
    std::fs::write(dir.join("sleep.toml"), "memory = \"16MiB\"\n").unwrap();
}

/// The hostile payloads, with the start of the error each must end with.
fn hostile(n: usize) -> (serde_json::Value, &'static str) {
    match n % 3 {
        0 => (
            json!({ "do": "huge-log", "bytes": 96 << 20, "n": n }),
            "the guest handed the host more than",
        ),
        1 => (
            json!({ "do": "huge-output", "bytes": 24 << 20, "n": n }),
            "the guest handed the host more than",
        ),
        _ => (json!({ "do": "memory", "n": n }), "memory limit exceeded"),
    }
}

#[tokio::test]
async fn a_hundred_memory_hungry_guests_keep_two_runners_within_their_budget_and_leases() {
    let db = TestDb::new().await;
    install_audit(&db.pool).await;
    let dir = tempfile::tempdir().unwrap();
    plugins(dir.path());
    let args = [
        "--concurrency",
        "100",
        "--memory",
        "128MiB",
        "--memory-budget",
        "1GiB",
    ];
    let fleet = Fleet::start(&db.url(), dir.path(), 2, &args).await;
    let alone = healthy_run(&db, HEALTHY).await;

    let mut ids = Vec::new();
    for n in 0..100 {
        let (payload, expected) = hostile(n);
        let job = NewJob::new("poison", payload)
            .tenant("evil")
            .max_attempts(1)
            .unique(Unique::Off);
        ids.push((
            db.queue().enqueue(&db.pool, &job).await.unwrap().id,
            expected,
        ));
    }
    let beside = healthy_run(&db, HEALTHY).await;
    let queue = db.queue();
    for (id, expected) in &ids {
        let job = settled(&queue, *id, JobState::Failed).await;
        let error = &job.errors.last().expect("an error").error;
        assert!(error.starts_with(expected), "job {id}: {error}");
        assert_eq!(job.attempt, 1, "job {id}: {:?}", job.errors);
    }

    let peaks: Vec<u64> = fleet.runners.iter().map(|r| r.peak_rss()).collect();
    eprintln!(
        "{HEALTHY} healthy jobs: {alone:?} alone, {beside:?} beside 100 hostile ones ({:.2}x); \
         peak RSS of the runners: {} MiB, budget {} MiB",
        beside.as_secs_f64() / alone.as_secs_f64(),
        peaks
            .iter()
            .map(|p| (p >> 20).to_string())
            .collect::<Vec<_>>()
            .join(" and "),
        BUDGET >> 20,
    );
    for peak in &peaks {
        assert!(
            *peak <= BUDGET + OVERHEAD,
            "peak RSS {} MiB, over the budget plus {} MiB",
            peak >> 20,
            OVERHEAD >> 20
        );
    }
    let lost = fleet.events("heartbeat found lost leases");
    assert!(lost.is_empty(), "leases lost on live runners: {lost:?}");
    let endings = Endings::read(&db.pool).await;
    assert!(
        endings.twice.is_empty(),
        "jobs that ended twice: {:?}",
        endings.twice
    );
    assert_eq!(
        (endings.completed, endings.failed),
        (2 * HEALTHY as i64, 100)
    );
    fleet.stop().await;
}
