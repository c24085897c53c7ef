//! The live plugin directory, through a real runner process: versions swapped under load by
//! rename and by a plain (slow, non-atomic) copy, bad files that leave the last good version
//! serving, deletion, and new job types.

use std::collections::HashSet;
use std::io::Write;
use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::support::live::Live;
use crate::support::process::run_cli;
use crate::support::{TestDb, eventually};

const WAIT: Duration = Duration::from_secs(30);

/// A payload both `echo` (v1: returns it) and `review-reminder-rust` (v2: returns a count) accept.
fn payload(n: u64) -> Value {
    json!({"n": n, "user": "ada", "pull_requests": [{"title": "T", "url": "u", "age_days": 2}]})
}

fn bytes_of(example: &str) -> Vec<u8> {
    std::fs::read(test_plugins::path(example)).unwrap()
}

fn sha256(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// `wasm` with a custom section of `size` bytes appended: the same component, as large as
/// the Python and JavaScript ones.
fn padded(mut wasm: Vec<u8>, size: usize, fill: u8) -> Vec<u8> {
    fn leb(out: &mut Vec<u8>, mut n: usize) {
        loop {
            let byte = (n & 0x7f) as u8;
            n >>= 7;
            out.push(if n == 0 { byte } else { byte | 0x80 });
            if n == 0 {
                return;
            }
        }
    }
    let mut body = Vec::new();
    leb(&mut body, b"padding".len());
    body.extend_from_slice(b"padding");
    body.resize(body.len() + size, fill);
    wasm.push(0);
    leb(&mut wasm, body.len());
    wasm.extend(body);
    wasm
}

/// Writes `bytes` beside `name` in `dir` and renames it into place: the documented way.
fn rename_in(dir: &Path, name: &str, bytes: &[u8]) {
    let temp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&temp, bytes).unwrap();
    std::fs::rename(&temp, dir.join(name)).unwrap();
}

async fn enqueue(db: &TestDb, job_type: &str, payload: &Value) -> i64 {
    let job = runner::NewJob::new(job_type, payload.clone()).unique(runner::Unique::Off);
    db.queue().enqueue(&db.pool, &job).await.unwrap().id
}

/// Enqueues a steady stream of `t` jobs until dropped.
struct Stream(tokio::task::JoinHandle<()>);

impl Stream {
    fn start(db: &TestDb) -> Stream {
        let queue = db.queue();
        Stream(tokio::spawn(async move {
            for n in 0.. {
                let job = runner::NewJob::new("t", payload(n)).unique(runner::Unique::Off);
                queue.enqueue(queue.pool(), &job).await.unwrap();
                tokio::time::sleep(Duration::from_millis(3)).await;
            }
        }))
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Completed outcome lines run by the version `sha`.
fn completed_on(live: &Live, sha: &str) -> usize {
    live.events("job completed")
        .iter()
        .filter(|e| e["plugin_sha256"] == sha)
        .count()
}

/// Waits until no job is left to run, then checks that every job completed on the first
/// attempt (no swap failed or retried a job) with the result of the version its outcome line
/// names; returns the outcome lines.
async fn all_completed_as_their_version(db: &TestDb, live: &Live, versions: &[(&str, &str)]) {
    eventually("the queue to drain", WAIT, || async {
        let left: i64 = db
            .scalar("SELECT count(*) FROM jobrunner.jobs WHERE state IN ('available', 'running')")
            .await;
        (left == 0).then_some(())
    })
    .await;
    let not_completed: i64 = db
        .scalar("SELECT count(*) FROM jobrunner.jobs WHERE state <> 'completed' OR attempt <> 1")
        .await;
    assert_eq!(not_completed, 0, "a swap must not fail or retry any job");
    let rows: Vec<(i64, Value, Value)> =
        sqlx::query_as("SELECT id, payload, result FROM jobrunner.jobs")
            .fetch_all(&db.pool)
            .await
            .unwrap();
    // A job's outcome line is logged after its outcome commits, so it may trail the drain.
    let outcomes = eventually("an outcome line for every job", WAIT, || async {
        let outcomes = live.events("job completed");
        let logged = |id: &i64| outcomes.iter().any(|e| e["job_id"] == *id);
        rows.iter().all(|(id, ..)| logged(id)).then_some(outcomes)
    })
    .await;
    for (id, payload, result) in rows {
        let line = outcomes.iter().find(|e| e["job_id"] == id).unwrap();
        let sha = line["plugin_sha256"].as_str().unwrap();
        let (_, kind) = versions
            .iter()
            .find(|(v, _)| *v == sha)
            .unwrap_or_else(|| panic!("job {id} ran on unknown version {sha}"));
        match *kind {
            "echo" => assert_eq!(result, payload, "job {id} on {sha}"),
            _ => assert_eq!(result["count"], 1, "job {id} on {sha}: {result}"),
        }
    }
}

#[tokio::test]
async fn a_version_renamed_in_under_load_serves_every_job_claimed_after_the_swap() {
    let db = TestDb::new().await;
    let dir = tempfile::tempdir().unwrap();
    let (v1, v2) = (bytes_of("echo"), bytes_of("review-reminder-rust"));
    let (sha1, sha2) = (sha256(&v1), sha256(&v2));
    rename_in(dir.path(), "t.wasm", &v1);
    let live = Live::start(&db, dir.path(), &[]).await;
    let stream = Stream::start(&db);

    eventually("jobs completing on v1", WAIT, || async {
        (completed_on(&live, &sha1) >= 20).then_some(())
    })
    .await;
    rename_in(dir.path(), "t.wasm", &v2);
    let swapped = live.event("plugin loaded", |e| e["sha256"] == sha2).await;
    assert_eq!(swapped["replaced"], sha1);
    // Every job enqueued from here on is claimed after the swap.
    let last_before: i64 = db.scalar("SELECT max(id) FROM jobrunner.jobs").await;
    eventually("jobs completing on v2", WAIT, || async {
        (completed_on(&live, &sha2) >= 20).then_some(())
    })
    .await;
    drop(stream);

    all_completed_as_their_version(&db, &live, &[(&sha1, "echo"), (&sha2, "reminder")]).await;
    for event in live.events("job completed") {
        if event["job_id"].as_i64().unwrap() > last_before {
            assert_eq!(
                event["plugin_sha256"], sha2,
                "claimed after the swap: {event}"
            );
        }
    }
    live.stop().await;
}

#[tokio::test]
async fn a_plain_copy_over_a_large_plugin_never_loads_half_a_file() {
    let db = TestDb::new().await;
    let dir = tempfile::tempdir().unwrap();
    let v1 = bytes_of("echo");
    let v2 = padded(bytes_of("review-reminder-rust"), 24 << 20, 0xAB);
    let v3 = padded(bytes_of("echo"), 24 << 20, 0xCD);
    let shas = [sha256(&v1), sha256(&v2), sha256(&v3)];
    rename_in(dir.path(), "t.wasm", &v1);
    let live = Live::start(&db, dir.path(), &[]).await;
    let stream = Stream::start(&db);
    let target = dir.path().join("t.wasm");

    // A slow writer: truncate, then 1 MiB at a time, so the runner sees every partial state.
    {
        let mut file = std::fs::File::create(&target).unwrap();
        for chunk in v2.chunks(1 << 20) {
            file.write_all(chunk).unwrap();
            file.flush().unwrap();
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    live.event("plugin loaded", |e| e["sha256"] == shas[1])
        .await;
    eventually("jobs completing on v2", WAIT, || async {
        (completed_on(&live, &shas[1]) >= 10).then_some(())
    })
    .await;

    // And `cp` itself, over the file in place.
    let source = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(source.path(), &v3).unwrap();
    let cp = std::process::Command::new("cp")
        .arg(source.path())
        .arg(&target)
        .status()
        .unwrap();
    assert!(cp.success());
    live.event("plugin loaded", |e| e["sha256"] == shas[2])
        .await;
    eventually("jobs completing on v3", WAIT, || async {
        (completed_on(&live, &shas[2]) >= 10).then_some(())
    })
    .await;
    drop(stream);

    for sha in live.loaded() {
        assert!(shas.contains(&sha), "a version from a partial file: {sha}");
    }
    all_completed_as_their_version(
        &db,
        &live,
        &[
            (&shas[0], "echo"),
            (&shas[1], "reminder"),
            (&shas[2], "echo"),
        ],
    )
    .await;
    live.stop().await;
}

/// Components that are not `job-handler`s, and the reason each must be refused with.
pub(crate) fn bad_files() -> Vec<(&'static str, Vec<u8>, &'static str)> {
    let wat = |text: &str| wat::parse_str(text).unwrap();
    vec![
        (
            "corrupt bytes",
            b"\0asm\x0d\0\x01\0garbage".to_vec(),
            "not a valid WebAssembly component",
        ),
        (
            "a core module",
            wat("(module (func (export \"run\")))"),
            "not a valid WebAssembly component",
        ),
        (
            "a component importing what the sandbox lacks",
            wat(r#"(component
                     (import "acme:secrets/vault" (instance (export "get" (func (result string))))))"#),
            "acme:secrets/vault",
        ),
        (
            "a component without a run export",
            wat("(component)"),
            "no export `run` found",
        ),
        (
            "a component whose run has the wrong type",
            wat(r#"(component
                     (core module $m (func (export "run") (result i32) i32.const 0))
                     (core instance $i (instantiate $m))
                     (func $run (result u32) (canon lift (core func $i "run")))
                     (export "run" (func $run)))"#),
            "does not fit the job-handler world",
        ),
    ]
}

#[tokio::test]
async fn bad_files_leave_the_last_good_version_serving() {
    let db = TestDb::new().await;
    let dir = tempfile::tempdir().unwrap();
    let good = bytes_of("echo");
    let sha = sha256(&good);
    rename_in(dir.path(), "t.wasm", &good);
    let live = Live::start(&db, dir.path(), &[]).await;

    for (n, (what, bytes, reason)) in bad_files().into_iter().enumerate() {
        rename_in(dir.path(), "t.wasm", &bytes);
        let failure = eventually(&format!("{what} to be refused"), WAIT, || async {
            live.events("plugin not loaded; the previous version keeps serving")
                .get(n)
                .cloned()
        })
        .await;
        let error = failure["error"].as_str().unwrap();
        assert!(error.contains(reason), "{what}: {error}");
        assert_eq!(failure["serving"], sha, "{what}");
        assert!(
            failure["file"].as_str().unwrap().ends_with("t.wasm"),
            "{what}"
        );

        let listed = eventually("runner plugins to show the failure", WAIT, || async {
            let runners = live.plugins().await;
            // Until the runner has published its plugins, it is not listed.
            let plugin = runners[0]["plugins"]
                .as_array()?
                .iter()
                .find(|p| p["job_type"] == "t")
                .cloned()?;
            plugin["error"]
                .as_str()
                .is_some_and(|e| e.contains(reason))
                .then_some(plugin)
        })
        .await;
        assert_eq!(listed["status"], "failed", "{what}");
        assert_eq!(listed["serving"]["sha256"], sha, "{what}");

        let id = enqueue(&db, "t", &json!({"case": what})).await;
        let done = live.event("job completed", |e| e["job_id"] == id).await;
        assert_eq!(done["plugin_sha256"], sha, "{what}: the old version serves");
    }
    assert_eq!(
        live.loaded(),
        std::slice::from_ref(&sha),
        "no bad file was ever loaded"
    );

    // The text listing says the same.
    let (_, text, _) = run_cli(&live.url, &["plugins"]).await;
    assert!(
        text.contains(&sha[..12]) && text.contains("failed:"),
        "{text}"
    );
    live.stop().await;
}

/// Enqueues a job of `marker` behind the others and waits for it: once it has run, the runner
/// has claimed since the earlier jobs were enqueued.
async fn marker_runs(db: &TestDb, live: &Live) {
    let id = enqueue(db, "marker", &json!({"marker": true})).await;
    live.event("job completed", |e| e["job_id"] == id).await;
}

async fn states(db: &TestDb, ids: &[i64]) -> HashSet<String> {
    let states: Vec<String> =
        sqlx::query_scalar("SELECT state::text FROM jobrunner.jobs WHERE id = ANY($1)")
            .bind(ids)
            .fetch_all(&db.pool)
            .await
            .unwrap();
    states.into_iter().collect()
}

#[tokio::test]
async fn a_deleted_plugin_leaves_its_jobs_waiting_until_it_is_back() {
    let db = TestDb::new().await;
    let dir = tempfile::tempdir().unwrap();
    rename_in(dir.path(), "t.wasm", &bytes_of("echo"));
    rename_in(dir.path(), "marker.wasm", &bytes_of("echo"));
    let live = Live::start(&db, dir.path(), &[]).await;

    std::fs::remove_file(dir.path().join("t.wasm")).unwrap();
    live.event(
        "plugin removed; its jobs wait in the queue until it is back",
        |e| e["job_type"] == "t",
    )
    .await;
    let mut ids = Vec::new();
    for n in 0..3 {
        ids.push(enqueue(&db, "t", &payload(n)).await);
    }
    marker_runs(&db, &live).await;
    assert_eq!(states(&db, &ids).await, HashSet::from(["available".into()]));
    let listed = live.plugins().await;
    let types: Vec<&Value> = listed[0]["plugins"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| &p["job_type"])
        .collect();
    assert_eq!(types, [&json!("marker")]);

    rename_in(dir.path(), "t.wasm", &bytes_of("echo"));
    eventually("the waiting jobs to complete", WAIT, || async {
        let states = states(&db, &ids).await;
        (states == HashSet::from(["completed".into()])).then_some(())
    })
    .await;
    live.stop().await;
}

#[tokio::test]
async fn a_new_job_type_dropped_in_runs_its_queued_jobs() {
    let db = TestDb::new().await;
    let dir = tempfile::tempdir().unwrap();
    rename_in(dir.path(), "marker.wasm", &bytes_of("echo"));
    let mut ids = Vec::new();
    for n in 0..3 {
        ids.push(enqueue(&db, "brand-new", &payload(n)).await);
    }
    let live = Live::start(&db, dir.path(), &[]).await;
    marker_runs(&db, &live).await;
    assert_eq!(states(&db, &ids).await, HashSet::from(["available".into()]));

    // Copied in place (not renamed): created, written, closed.
    std::fs::copy(
        test_plugins::path("review-reminder-rust"),
        dir.path().join("brand-new.wasm"),
    )
    .unwrap();
    eventually("the new type's jobs to complete", WAIT, || async {
        let states = states(&db, &ids).await;
        (states == HashSet::from(["completed".into()])).then_some(())
    })
    .await;
    live.stop().await;
}

#[tokio::test]
async fn a_plugin_directory_deleted_and_recreated_is_watched_again() {
    let db = TestDb::new().await;
    let parent = tempfile::tempdir().unwrap();
    let dir = parent.path().join("plugins");
    std::fs::create_dir(&dir).unwrap();
    rename_in(&dir, "marker.wasm", &bytes_of("echo"));
    let live = Live::start(&db, &dir, &[]).await;

    std::fs::remove_dir_all(&dir).unwrap();
    live.event(
        "cannot read the plugin directory; the loaded plugins keep serving",
        |_| true,
    )
    .await;
    marker_runs(&db, &live).await;

    std::fs::create_dir(&dir).unwrap();
    live.event("the plugin directory is back; watching it again", |_| true)
        .await;
    // Well within the 30 s rescan: only a live watch sees this file so soon.
    rename_in(&dir, "later.wasm", &bytes_of("echo"));
    eventually(
        "the new plugin to load",
        Duration::from_secs(10),
        || async {
            let loaded = live.events("plugin loaded");
            loaded.into_iter().find(|e| e["job_type"] == "later")
        },
    )
    .await;
    live.stop().await;
}
