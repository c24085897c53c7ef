//! `review-reminder-rust`: the reference job in Rust (its contract, which every language's
//! version follows: [`../../review-reminder.md`](../../review-reminder.md)). From the pull
//! requests waiting for a user's review it builds a reminder listing them oldest first, logs
//! it and returns it.

use std::cmp::Reverse;

use jobrunner_plugin_sdk::{Job, JobError, handler, info};
use serde::{Deserialize, Serialize};

#[derive(Deserialize)]
struct Request {
    user: String,
    pull_requests: Vec<PullRequest>,
    /// Makes the job misbehave the way the contract describes, for conformance tests.
    simulate: Option<String>,
}

#[derive(Deserialize)]
struct PullRequest {
    title: String,
    url: String,
    age_days: u32,
}

#[derive(Serialize)]
struct Reminder {
    user: String,
    count: usize,
    message: String,
}

handler!(remind);

fn remind(job: Job<Request>) -> Result<Reminder, JobError> {
    let Request {
        user,
        mut pull_requests,
        simulate,
    } = job.payload;
    if user.trim().is_empty() {
        return Err(JobError::fail("user is empty"));
    }
    match simulate.as_deref() {
        None => {}
        Some("outage") => {
            return Err(JobError::retry(
                "reminder service unavailable (simulated outage)",
            ));
        }
        Some("crash") => panic!("simulated crash"),
        Some(other) => {
            return Err(JobError::fail(format!(
                "invalid payload: simulate: unknown value {other:?}"
            )));
        }
    }
    // Oldest first; equal ages keep the order they came in.
    pull_requests.sort_by_key(|pr| Reverse(pr.age_days));
    let message = message(&user, &pull_requests);
    info!("{message}");
    Ok(Reminder {
        user,
        count: pull_requests.len(),
        message,
    })
}

fn message(user: &str, pull_requests: &[PullRequest]) -> String {
    match pull_requests.len() {
        0 => format!("Hi {user}, no pull requests are waiting for your review."),
        n => {
            let noun = if n == 1 {
                "pull request is"
            } else {
                "pull requests are"
            };
            let mut message = format!("Hi {user}, {n} {noun} waiting for your review:");
            for pr in pull_requests {
                let days = if pr.age_days == 1 { "day" } else { "days" };
                message.push_str(&format!(
                    "\n- {} ({} {days}) {}",
                    pr.title, pr.age_days, pr.url
                ));
            }
            message
        }
    }
}
