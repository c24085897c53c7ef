//! The reference use case end to end, through a `runner run` process: `pr-reminders` reads the
//! open pull requests of a fake GitHub API and enqueues one `slack-notify` per reviewer, which
//! posts the reminder to a fake Slack webhook. Both fakes listen on 127.0.0.1; the token and
//! the webhook URL are secrets read from files.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use chrono::{Duration, Utc};
use runner::cli::fake_apis::{FakeGitHub, FakePull, FakeSlack};
use runner::client::{JobFilter, JobRecord, JobState};
use runner::sandbox::HttpNetworkConfig;
use runner::{Limits, NewJob, Queue, SandboxConfig};
use serde_json::json;

use crate::support::live::Live;
use crate::support::{TestDb, eventually, plugins, settled};

const TOKEN: &str = "ghp_reminders_test_token_5f3a9c";

fn pull(title: &str, days: i64, reviewers: &[&str]) -> FakePull {
    FakePull {
        title: title.to_owned(),
        created_at: Utc::now() - Duration::days(days) - Duration::hours(1),
        reviewers: reviewers.iter().map(|r| (*r).to_owned()).collect(),
    }
}

/// Two repositories; `acme/web` holds more pull requests than one page of 100.
fn repos() -> BTreeMap<String, Vec<FakePull>> {
    let mut web: Vec<FakePull> = (0..104)
        .map(|i| pull(&format!("Chore {i}"), 0, &[]))
        .collect();
    web.push(pull("Fix login", 3, &["ada", "bob"]));
    BTreeMap::from([
        (
            "acme/app".to_owned(),
            vec![pull("Add search", 1, &["ada"]), pull("Typo", 10, &[])],
        ),
        ("acme/web".to_owned(), web),
    ])
}

/// The plugin directory (the two plugins, their manifests pointing at the fakes) and the
/// runner's config file (the fakes' network allowed, the secrets in files).
fn stage(dir: &Path, github: &FakeGitHub, slack: &FakeSlack) -> PathBuf {
    for plugin in ["pr-reminders", "slack-notify"] {
        std::os::unix::fs::symlink(
            test_plugins::path(plugin),
            dir.join(format!("{plugin}.wasm")),
        )
        .unwrap();
    }
    let github_api = github.origin();
    std::fs::write(
        dir.join("pr-reminders.toml"),
        format!(
            "enqueue = [\"slack-notify\"]\nsecrets = [\"github_token\"]\nmax_attempts = 3\n\
             [http]\nallowed_hosts = [{github_api:?}]\n\
             [config]\ngithub_api = {github_api:?}\nrepos = \"acme/app, acme/web\"\n"
        ),
    )
    .unwrap();
    std::fs::write(
        dir.join("slack-notify.toml"),
        format!(
            "secrets = [\"slack_webhook\"]\n[http]\nallowed_hosts = [{:?}]\n",
            slack.origin()
        ),
    )
    .unwrap();
    let secrets = dir.join("secrets");
    std::fs::create_dir(&secrets).unwrap();
    std::fs::write(secrets.join("github"), TOKEN).unwrap();
    std::fs::write(secrets.join("slack"), slack.webhook_url()).unwrap();
    let config = dir.join("runner.toml");
    std::fs::write(
        &config,
        format!(
            "[http]\nallow_networks = [\"127.0.0.1/32\"]\n[secrets]\n\
             github_token = {{ file = {:?} }}\nslack_webhook = {{ file = {:?} }}\n",
            secrets.join("github"),
            secrets.join("slack")
        ),
    )
    .unwrap();
    config
}

async fn notifications(queue: &Queue) -> Vec<JobRecord> {
    let filter = JobFilter {
        job_type: Some("slack-notify".into()),
        limit: 100,
        ..JobFilter::default()
    };
    queue.list_jobs(&filter).await.unwrap()
}

#[tokio::test]
async fn reviewers_are_reminded_on_slack_of_the_pull_requests_waiting_for_them() {
    let db = TestDb::new().await;
    let queue = db.queue();
    let github = FakeGitHub::start("127.0.0.1", TOKEN, repos())
        .await
        .unwrap();
    let slack = FakeSlack::start("127.0.0.1").await.unwrap();
    // GitHub fails the scan's first request, and Slack the first reminder, each asking for a
    // second's patience.
    github.fail_next(1, 503, Some(1));
    slack.fail_next(1, 503, Some(1));
    let dir = tempfile::tempdir().unwrap();
    let config = stage(dir.path(), &github, &slack);
    // A backoff of an hour: a retry that runs within the test honoured its Retry-After.
    let args = [
        "--config",
        config.to_str().unwrap(),
        "--backoff-base",
        "1h",
        "--backoff-cap",
        "2h",
    ];
    let live = Live::start(&db, dir.path(), &args).await;

    let scan = queue
        .enqueue(&db.pool, &NewJob::new("pr-reminders", json!({})))
        .await
        .unwrap()
        .id;
    let scanned = settled(&queue, scan, JobState::Completed).await;
    assert_eq!(scanned.attempt, 2, "GitHub's 503 retried the scan");
    assert!(scanned.errors[0].error.contains("GitHub answered 503"));
    assert_eq!(
        scanned.result,
        Some(json!({"repos": 2, "pull_requests": 107, "reviewers": ["ada", "bob"]}))
    );
    let reminders = eventually(
        "both reminders",
        std::time::Duration::from_secs(60),
        || async {
            let jobs = notifications(&queue).await;
            let done = jobs
                .iter()
                .filter(|j| j.state == JobState::Completed)
                .count();
            (done == 2).then_some(jobs)
        },
    )
    .await;
    // One reminder per reviewer, each a follow-up of the scan's second attempt, keyed by day.
    let day = Utc::now().format("%Y-%m-%d");
    for job in &reminders {
        assert_eq!(job.parent_id, Some(scan));
        let user = job.payload["user"].as_str().unwrap();
        assert_eq!(
            job.unique_key,
            Some(format!("review-reminder:{user}:{day}"))
        );
    }
    // Slack's 503 retried that reminder alone, after its Retry-After, not the scan.
    let retried: Vec<&JobRecord> = reminders.iter().filter(|j| j.attempt == 2).collect();
    assert_eq!(retried.len(), 1);
    let failure = &retried[0].errors[0];
    assert!(
        failure.error.contains("Slack answered 503"),
        "{}",
        failure.error
    );
    let waited = retried[0].run_at - failure.at;
    assert!(
        waited <= Duration::seconds(1),
        "Retry-After: 1, not the backoff: {waited}"
    );
    assert_eq!(queue.job(scan).await.unwrap().attempt, 2);

    let mut messages = slack.messages();
    messages.sort();
    assert_eq!(
        messages,
        [
            "Hi ada, 2 pull requests are waiting for your review:\n\
             - Fix login (3 days) https://github.com/acme/web/pull/105\n\
             - Add search (1 day) https://github.com/acme/app/pull/1",
            "Hi bob, 1 pull request is waiting for your review:\n\
             - Fix login (3 days) https://github.com/acme/web/pull/105",
        ]
    );
    // GitHub: every request with the token, the second page followed through its Link.
    let seen = github.received();
    let lines: Vec<&str> = seen.iter().map(|r| r.request_line.as_str()).collect();
    assert_eq!(
        lines,
        [
            "GET /repos/acme/app/pulls?state=open&per_page=100",
            "GET /repos/acme/app/pulls?state=open&per_page=100",
            "GET /repos/acme/web/pulls?state=open&per_page=100",
            "GET /repos/acme/web/pulls?state=open&per_page=100&page=2",
        ]
    );
    let bearer = format!("Bearer {TOKEN}");
    assert!(
        seen.iter()
            .all(|r| r.authorization.as_deref() == Some(bearer.as_str()))
    );
    // The token went to GitHub alone, and no secret reached the log.
    assert!(
        slack
            .received()
            .iter()
            .all(|r| r.authorization.is_none() && !r.body.contains(TOKEN))
    );
    let log: String = live.log().iter().map(|e| e.to_string()).collect();
    assert!(!log.contains(TOKEN), "the token leaked into the log");
    let webhook_path = slack.webhook_url().replace(&slack.origin(), "");
    assert!(
        !log.contains(&webhook_path),
        "the webhook's secret path leaked into the log"
    );
    let posted = live
        .event("http request", |e| {
            e["job_type"] == "slack-notify" && e["status"] == 200
        })
        .await;
    let url = posted["url"].as_str().unwrap();
    assert!(
        url.contains("[redacted:slack_webhook]"),
        "the line names the secret: {url}"
    );
    // Any other 4xx from Slack fails the reminder at once: a retry cannot mend it.
    slack.fail_next(1, 404, None);
    let reminder = json!({"user": "carol", "pull_requests": []});
    let lost = queue
        .enqueue(&db.pool, &NewJob::new("slack-notify", reminder))
        .await
        .unwrap()
        .id;
    let lost = settled(&queue, lost, JobState::Failed).await;
    assert_eq!(lost.attempt, 1);
    assert!(
        lost.errors[0].error.contains("Slack answered 404"),
        "{:?}",
        lost.errors
    );
    live.stop().await;
}

/// The Python `pr-reminders` enqueues exactly the follow-ups the Rust one does, from the same
/// GitHub answers: same reviewers, payloads and unique keys, and the same result.
#[tokio::test]
async fn pr_reminders_in_python_enqueues_what_the_rust_one_does() {
    let db = TestDb::new().await;
    let queue = db.queue();
    let github = FakeGitHub::start("127.0.0.1", TOKEN, repos())
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let secrets = plugins::file_secrets(dir.path(), &[("github_token", TOKEN)]);
    let mut limits = Limits::default();
    limits.http.hosts.plugin = vec![github.origin().parse().unwrap()].into();
    limits.config.values = Arc::new(BTreeMap::from([
        ("github_api".to_owned(), github.origin()),
        ("repos".to_owned(), "acme/app,acme/web".to_owned()),
    ]));
    limits.config.secrets = Arc::from(["github_token".to_owned()]);
    limits.jobs.enqueue = Arc::from(["slack-notify".to_owned()]);
    let sandbox = SandboxConfig {
        http: HttpNetworkConfig {
            allow_networks: vec!["127.0.0.1/32".parse().unwrap()],
            ..HttpNetworkConfig::default()
        },
        ..SandboxConfig::default()
    };
    let job_types = ["pr-reminders", "pr-reminders-python"];
    let worker = plugins::secret_worker(&queue, &job_types, sandbox, limits, secrets).await;
    // Each in a tenant of its own: their follow-ups' unique keys are the same.
    let mut outcomes = Vec::new();
    for job_type in job_types {
        let job = NewJob::new(job_type, json!({})).tenant(job_type);
        let id = queue.enqueue(&db.pool, &job).await.unwrap().id;
        let done = settled(&queue, id, JobState::Completed).await;
        let mut follow_ups: Vec<_> = notifications(&queue)
            .await
            .into_iter()
            .filter(|j| j.parent_id == Some(id))
            .map(|j| (j.unique_key, j.payload, j.tenant == job_type))
            .collect();
        follow_ups.sort_by(|a, b| a.0.cmp(&b.0));
        outcomes.push((done.result, follow_ups));
    }
    assert_eq!(outcomes[0].1.len(), 2, "{:?}", outcomes[0]);
    assert_eq!(outcomes[0], outcomes[1]);
    worker.shutdown().await;
}
