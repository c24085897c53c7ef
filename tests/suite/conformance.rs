//! The conformance suite of the reference job, `review-reminder` (its contract:
//! `example-plugins/review-reminder.md`), run for the plugin written in each language: the
//! same jobs through PostgreSQL and a real runner process, held to the same expectations. A
//! plugin in a new language conforms when this suite passes for it.

use std::path::{Path, PathBuf};
use std::time::Duration;

use runner::client::JobRecord;
use runner::{JobState, NewJob, Queue, Unique};
use serde_json::{Value, json};

use crate::support::live::Live;
use crate::support::{TestDb, eventually};

#[tokio::test]
async fn rust() {
    conforms("rust").await;
}

#[tokio::test]
async fn python() {
    conforms("python").await;
}

#[tokio::test]
async fn javascript() {
    conforms("js").await;
}

#[tokio::test]
async fn c() {
    conforms("c").await;
}

const SETTLE: Duration = Duration::from_secs(60);

/// Pull requests that test the ordering (oldest first, ties in payload order) and that text
/// is copied exactly (Unicode, quotes, backslashes).
fn pull_requests() -> Value {
    json!([
        {"title": "Fix login redirect", "url": "https://git.example/pr/12", "age_days": 2},
        {"title": "Naïve “quotes” \"and\" a \\ — 🚀", "url": "https://git.example/pr/9", "age_days": 6},
        {"title": "Faster claims", "url": "https://git.example/pr/15", "age_days": 1},
        {"title": "Same age, later", "url": "https://git.example/pr/16", "age_days": 2},
    ])
}

/// The result every implementation must return for [`pull_requests`].
fn expected_reminder() -> Value {
    json!({
        "user": "ada",
        "count": 4,
        "message": "Hi ada, 4 pull requests are waiting for your review:\n\
                    - Naïve “quotes” \"and\" a \\ — 🚀 (6 days) https://git.example/pr/9\n\
                    - Fix login redirect (2 days) https://git.example/pr/12\n\
                    - Same age, later (2 days) https://git.example/pr/16\n\
                    - Faster claims (1 day) https://git.example/pr/15"
    })
}

/// Payloads the job must refuse at once, and a word its message must contain.
fn malformed_payloads() -> Vec<(Value, &'static str)> {
    let pr = |field: &str, value: Value| {
        let mut pr = json!({"title": "T", "url": "https://git.example/pr/1", "age_days": 1});
        match value {
            Value::Null => pr.as_object_mut().unwrap().remove(field),
            value => pr.as_object_mut().unwrap().insert(field.into(), value),
        };
        json!({"user": "ada", "pull_requests": [pr]})
    };
    vec![
        (json!({"pull_requests": []}), "user"),
        (json!({"user": 7, "pull_requests": []}), "user"),
        (
            json!({"user": "ada", "pull_requests": "none"}),
            "pull_requests",
        ),
        (pr("age_days", json!("old")), "age_days"),
        (pr("age_days", json!(-1)), "age_days"),
        (pr("title", Value::Null), "title"),
        (json!(["not", "an", "object"]), "invalid payload"),
        (json!({"user": "  ", "pull_requests": []}), "user is empty"),
    ]
}

/// The job type's jobs, enqueued before the runner starts, and what each must end as.
struct Cases {
    reminder: i64,
    one: i64,
    none: i64,
    malformed: Vec<(i64, &'static str)>,
    outage: i64,
    crash: i64,
}

impl Cases {
    async fn enqueue(queue: &Queue, job_type: &str) -> Cases {
        let job = |payload: Value| NewJob::new(job_type, payload).unique(Unique::Off);
        let add = |job: NewJob| async move { queue.enqueue(queue.pool(), &job).await.unwrap().id };
        let one = json!([{"title": "Only", "url": "https://git.example/pr/1", "age_days": 1}]);
        let mut malformed = Vec::new();
        for (payload, word) in malformed_payloads() {
            malformed.push((add(job(payload).max_attempts(5)).await, word));
        }
        Cases {
            reminder: add(job(json!({
                "user": "ada",
                "pull_requests": pull_requests(),
                "source": "ignored: unknown fields are",
            }))
            .tenant("acme"))
            .await,
            one: add(job(json!({"user": "bob", "pull_requests": one}))).await,
            none: add(job(json!({"user": "cy", "pull_requests": []}))).await,
            malformed,
            outage: add(job(simulate("outage")).max_attempts(3)).await,
            crash: add(job(simulate("crash")).max_attempts(2)).await,
        }
    }

    fn ids(&self) -> Vec<i64> {
        let mut ids = vec![self.reminder, self.one, self.none, self.outage, self.crash];
        ids.extend(self.malformed.iter().map(|(id, _)| id));
        ids
    }
}

fn simulate(what: &str) -> Value {
    json!({"user": "ada", "pull_requests": pull_requests(), "simulate": what})
}

/// Runs the whole suite against `review-reminder-<language>`.
async fn conforms(language: &str) {
    let job_type = format!("review-reminder-{language}");
    let db = TestDb::new().await;
    let queue = db.queue();
    let cases = Cases::enqueue(&queue, &job_type).await;
    let dir = plugin_dir(&job_type);
    let cache = cache_dir(&job_type);
    let args = [
        "--plugin-cache",
        cache.to_str().unwrap(),
        "--backoff-base",
        "10ms",
        "--backoff-cap",
        "20ms",
    ];
    let live = Live::start(&db, dir.path(), &args).await;
    let jobs = settled(&queue, &cases.ids()).await;
    let job = |id: i64| jobs.iter().find(|j| j.id == id).unwrap();

    same_payload_same_result(job(cases.reminder), job(cases.one), job(cases.none));
    for (id, word) in &cases.malformed {
        malformed_payload_fails_at_once(job(*id), word);
    }
    retry_runs_out_of_attempts(&live, job(cases.outage)).await;
    crash_is_retried_with_its_reason(&live, job(cases.crash)).await;
    guest_log_is_attributed_to_its_job(&live, job(cases.reminder)).await;
    live.stop().await;

    // A restart takes the compiled plugin from the cache, and the cached code runs.
    let again = Live::start(&db, dir.path(), &args).await;
    let loaded = again.event("plugin loaded", |_| true).await;
    assert_eq!(loaded["from"], "cache", "{loaded}");
    let payload = json!({"user": "ada", "pull_requests": pull_requests()});
    let id = queue
        .enqueue(queue.pool(), &NewJob::new(&job_type, payload))
        .await
        .unwrap()
        .id;
    let [job] = &settled(&queue, &[id]).await[..] else {
        unreachable!()
    };
    assert_completed(job, &expected_reminder());
    again.stop().await;
}

fn same_payload_same_result(reminder: &JobRecord, one: &JobRecord, none: &JobRecord) {
    assert_completed(reminder, &expected_reminder());
    let message = "Hi bob, 1 pull request is waiting for your review:\n\
                   - Only (1 day) https://git.example/pr/1";
    assert_completed(one, &json!({"user": "bob", "count": 1, "message": message}));
    let message = "Hi cy, no pull requests are waiting for your review.";
    assert_completed(none, &json!({"user": "cy", "count": 0, "message": message}));
}

/// Failed on the first attempt, with one error that contains `word`.
fn malformed_payload_fails_at_once(job: &JobRecord, word: &str) {
    let payload = &job.payload;
    assert_eq!((job.state, job.attempt), (JobState::Failed, 1), "{payload}");
    let [error] = &job.errors[..] else {
        panic!("one error expected for {payload}: {:?}", job.errors)
    };
    assert!(error.error.contains(word), "{payload}: {}", error.error);
    if word != "user is empty" {
        let error = &error.error;
        assert!(error.starts_with("invalid payload"), "{payload}: {error}");
    }
}

/// `retry` is retried with backoff until the attempts (3) run out.
async fn retry_runs_out_of_attempts(live: &Live, job: &JobRecord) {
    assert_eq!((job.state, job.attempt), (JobState::Failed, 3));
    let errors: Vec<&str> = job.errors.iter().map(|e| e.error.as_str()).collect();
    assert_eq!(
        errors,
        ["reminder service unavailable (simulated outage)"; 3]
    );
    let outcomes = outcome_lines(live, job.id).await;
    assert_eq!(outcomes, [(1, "retry"), (2, "retry"), (3, "failed")]);
}

/// A crash (panic, uncaught exception, abort) traps: retried (2 attempts), the reason kept.
async fn crash_is_retried_with_its_reason(live: &Live, job: &JobRecord) {
    assert_eq!((job.state, job.attempt), (JobState::Failed, 2));
    for error in &job.errors {
        assert!(error.error.starts_with("trap ("), "{}", error.error);
        assert!(error.error.contains("simulated crash"), "{}", error.error);
    }
    let outcomes = outcome_lines(live, job.id).await;
    assert_eq!(outcomes, [(1, "retry"), (2, "failed")]);
}

/// The guest's log line arrives with its job's id, type, tenant and attempt, set by the host.
async fn guest_log_is_attributed_to_its_job(live: &Live, job: &JobRecord) {
    let message = expected_reminder()["message"].as_str().unwrap().to_owned();
    let line = live
        .event(&message, |e| e["target"] == "jobrunner::guest")
        .await;
    assert_eq!(line["job_id"], job.id);
    assert_eq!(line["job_type"], job.job_type);
    assert_eq!(line["tenant"], job.tenant);
    assert_eq!(line["attempt"], 1);
    assert_eq!(line["level"], "INFO");
}

/// A plugin directory holding only `job_type`'s plugin.
fn plugin_dir(job_type: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let file = format!("{job_type}.wasm");
    std::fs::copy(test_plugins::dir().join(&file), dir.path().join(&file)).unwrap();
    dir
}

/// A compiled-plugin cache per job type that outlives the test, so that only the first run
/// after a change compiles the large Python and JavaScript components.
fn cache_dir(job_type: &str) -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("plugin-cache-{job_type}"))
}

/// Waits until every job in `ids` is completed or failed, and returns them.
async fn settled(queue: &Queue, ids: &[i64]) -> Vec<JobRecord> {
    eventually("every job to complete or fail", SETTLE, || async {
        let mut jobs = Vec::new();
        for id in ids {
            let job = queue.job(*id).await.unwrap();
            if !matches!(job.state, JobState::Completed | JobState::Failed) {
                return None;
            }
            jobs.push(job);
        }
        Some(jobs)
    })
    .await
}

fn assert_completed(job: &JobRecord, result: &Value) {
    assert_eq!(job.state, JobState::Completed, "{:?}", job.errors);
    assert_eq!(job.attempt, 1);
    assert_eq!(job.result.as_ref(), Some(result));
}

/// (attempt, outcome) of every outcome log line of the failed job `id`, in order, once the
/// last one is logged.
async fn outcome_lines(live: &Live, id: i64) -> Vec<(i64, &'static str)> {
    live.event("job failed", |e| e["job_id"] == id).await;
    let outcome = |e: &Value| match e["outcome"].as_str().unwrap() {
        "retry" => "retry",
        "failed" => "failed",
        other => panic!("unexpected outcome {other} for job {id}"),
    };
    live.log()
        .iter()
        .filter(|e| e["target"] == "jobrunner::outcome" && e["job_id"] == id)
        .map(|e| (e["attempt"].as_i64().unwrap(), outcome(e)))
        .collect()
}
