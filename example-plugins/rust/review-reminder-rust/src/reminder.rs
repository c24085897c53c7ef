//! The reminder itself, as `review-reminder.md` specifies it: the payload and the message.
//! Shared by `review-reminder-rust` and `slack-notify` (which includes this file), so that a
//! Slack reminder reads exactly as the reference job's.

use std::cmp::Reverse;

use jobrunner_plugin_sdk::JobError;
use serde::{Deserialize, Serialize};

/// The `review-reminder` payload.
#[derive(Debug, Deserialize, Serialize)]
pub struct Request {
    /// Who is reminded.
    pub user: String,
    /// The pull requests waiting for `user`'s review.
    pub pull_requests: Vec<PullRequest>,
    /// Makes the job misbehave the way the contract describes, for conformance tests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub simulate: Option<String>,
}

/// A pull request waiting for a review.
#[derive(Debug, Deserialize, Serialize)]
pub struct PullRequest {
    /// Its title.
    pub title: String,
    /// Where to review it.
    pub url: String,
    /// Days it has waited.
    pub age_days: u32,
}

/// The reminder for a request: whom it is for, how many pull requests it lists, and its text.
pub struct Reminder {
    pub user: String,
    pub count: usize,
    pub message: String,
}

/// The reminder `request` asks for, or the error the contract gives.
pub fn remind(request: Request) -> Result<Reminder, JobError> {
    let Request {
        user,
        mut pull_requests,
        simulate,
    } = request;
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
    Ok(Reminder {
        count: pull_requests.len(),
        user,
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
