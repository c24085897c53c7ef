//! `pr-reminders`: finds the pull requests waiting for each reviewer on GitHub and enqueues one
//! `slack-notify` job per reviewer, with the `review-reminder` payload.
//!
//! Its payload is `{}`: what to scan comes from config. Its manifest (`pr-reminders.toml`):
//!
//! ```toml
//! enqueue = ["slack-notify"]
//! secrets = ["github_token"]
//! [http]
//! allowed_hosts = ["https://api.github.com"]
//! [config]
//! github_api = "https://api.github.com"
//! repos = "acme/app,acme/web"             # comma-separated owner/repo
//! ```
//!
//! For each repository it reads the open pull requests (`GET /repos/{owner}/{repo}/pulls`,
//! following the `Link: rel="next"` pages), groups them by requested reviewer (teams are left
//! out: a team has no Slack handle here) and keeps one follow-up per reviewer with the unique
//! key `review-reminder:{login}:{day}`, so a second scan the same day while a reminder is
//! still pending adds none. The follow-ups exist only if the whole scan completes: a GitHub
//! outage on the second repository retries the scan and reminds no one twice.
//!
//! A 5xx or 429 from GitHub (or no answer) retries, honouring `Retry-After`; any other error
//! status fails the job, with GitHub's message.

use std::collections::BTreeMap;
use std::time::SystemTime;

use chrono::{DateTime, Utc};
use jobrunner_plugin_sdk::jobs::Options;
use jobrunner_plugin_sdk::{Job, JobError, OrJobError, config, enqueue, handler, http, info};
use serde::{Deserialize, Serialize};

/// Pages read per repository at most (100 pull requests each).
const MAX_PAGES: usize = 10;

#[derive(Deserialize)]
struct Pull {
    title: String,
    html_url: String,
    created_at: String,
    #[serde(default)]
    requested_reviewers: Vec<User>,
}

#[derive(Deserialize)]
struct User {
    login: String,
}

#[derive(Serialize)]
struct PullRequest {
    title: String,
    url: String,
    age_days: u32,
}

#[derive(Serialize)]
struct ReviewReminder<'a> {
    user: &'a str,
    pull_requests: &'a [PullRequest],
}

#[derive(Serialize)]
struct Scanned {
    repos: usize,
    pull_requests: usize,
    reviewers: Vec<String>,
}

handler!(scan);

fn scan(_job: Job<serde_json::Value>) -> Result<Scanned, JobError> {
    let api = config::require("github_api")?;
    let token = config::require("github_token")?;
    let repos = repos(&config::require("repos")?)?;
    let now = now();
    let mut waiting: BTreeMap<String, Vec<PullRequest>> = BTreeMap::new();
    let mut count = 0;
    for repo in &repos {
        for pull in open_pulls(&api, repo, &token)? {
            count += 1;
            let age_days = age_days(&pull.created_at, now)?;
            for reviewer in &pull.requested_reviewers {
                waiting
                    .entry(reviewer.login.clone())
                    .or_default()
                    .push(PullRequest {
                        title: pull.title.clone(),
                        url: pull.html_url.clone(),
                        age_days,
                    });
            }
        }
    }
    let day = now.format("%Y-%m-%d");
    for (user, pull_requests) in &waiting {
        let reminder = ReviewReminder {
            user,
            pull_requests,
        };
        let key = format!("review-reminder:{user}:{day}");
        enqueue("slack-notify", &reminder, Options::new().unique_key(key)).or_fail()?;
    }
    info!(
        "{count} open pull requests in {} repositories; reminding {} reviewers",
        repos.len(),
        waiting.len()
    );
    Ok(Scanned {
        repos: repos.len(),
        pull_requests: count,
        reviewers: waiting.into_keys().collect(),
    })
}

/// `owner/repo` pairs from the comma-separated config value.
fn repos(value: &str) -> Result<Vec<String>, JobError> {
    let repos: Vec<String> = value
        .split(',')
        .map(str::trim)
        .filter(|r| !r.is_empty())
        .map(str::to_owned)
        .collect();
    match repos.iter().find(|r| r.split('/').count() != 2) {
        Some(bad) => Err(JobError::fail(format!(
            "config repos: {bad:?} is not owner/repo"
        ))),
        None if repos.is_empty() => Err(JobError::fail("config repos lists no repository")),
        None => Ok(repos),
    }
}

/// Every open pull request of `repo`, page after page.
fn open_pulls(api: &str, repo: &str, token: &str) -> Result<Vec<Pull>, JobError> {
    let mut url = format!(
        "{}/repos/{repo}/pulls?state=open&per_page=100",
        api.trim_end_matches('/')
    );
    let mut pulls = Vec::new();
    for _ in 0..MAX_PAGES {
        let reply = github_get(&url, token)?;
        let page: Vec<Pull> = reply
            .json()
            .map_err(|e| JobError::retry(format!("{repo}: unexpected answer from GitHub: {e}")))?;
        pulls.extend(page);
        match next_page(&reply.headers) {
            Some(next) => url = next,
            None => return Ok(pulls),
        }
    }
    Ok(pulls)
}

fn github_get(url: &str, token: &str) -> Result<http::Reply, JobError> {
    let request = http::Request::get(url)
        .header("Authorization", format!("Bearer {token}"))
        .header("Accept", "application/vnd.github+json")
        .header("X-GitHub-Api-Version", "2022-11-28")
        .header("User-Agent", "jobrunner-pr-reminders")
        .body(Vec::new())
        .or_fail()?;
    http::send(request)
        .map_err(|error| error.into_job_error("GitHub"))?
        .or_job_error("GitHub")
}

/// The `rel="next"` URL of a `Link` header.
fn next_page(headers: &http::HeaderMap) -> Option<String> {
    let link = headers.get("link")?.to_str().ok()?;
    link.split(',').find_map(|part| {
        let (url, params) = part.split_once(';')?;
        params.contains("rel=\"next\"").then(|| {
            url.trim()
                .trim_start_matches('<')
                .trim_end_matches('>')
                .to_owned()
        })
    })
}

fn now() -> DateTime<Utc> {
    let since = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    DateTime::from_timestamp(since.as_secs() as i64, 0).unwrap_or_default()
}

/// Whole days since `created_at` (RFC 3339, as GitHub writes it).
fn age_days(created_at: &str, now: DateTime<Utc>) -> Result<u32, JobError> {
    let created = DateTime::parse_from_rfc3339(created_at)
        .map_err(|e| JobError::retry(format!("created_at {created_at:?}: {e}")))?;
    let days = (now - created.with_timezone(&Utc)).num_days();
    Ok(u32::try_from(days.max(0)).unwrap_or(u32::MAX))
}
