//! `slack-notify`: posts a review reminder to Slack. Its payload is the `review-reminder`
//! payload (`{"user": …, "pull_requests": [...]}`, see `review-reminder.md`); it builds the
//! same message as `review-reminder` and POSTs `{"text": <message>}` to the Slack incoming
//! webhook whose URL is the secret `slack_webhook`. Its manifest (`slack-notify.toml`):
//!
//! ```toml
//! secrets = ["slack_webhook"]
//! [http]
//! allowed_hosts = ["https://hooks.slack.com"]
//! ```
//!
//! A 2xx completes the job with `{"user", "count", "status"}`; a 429 or 5xx (or no answer)
//! retries it, after Slack's `Retry-After` when it sends one; any other status fails it, as
//! does a request the runner refuses. The webhook URL is the secret: the runner redacts it
//! from the request's log line.

#[path = "../../review-reminder-rust/src/reminder.rs"]
mod reminder;

use jobrunner_plugin_sdk::{Job, JobError, config, handler, http, info};
use serde::Serialize;
use serde_json::json;

#[derive(Serialize)]
struct Notified {
    user: String,
    count: usize,
    status: u16,
}

handler!(notify);

fn notify(job: Job<reminder::Request>) -> Result<Notified, JobError> {
    let reminder = reminder::remind(job.payload)?;
    let webhook = config::require("slack_webhook")?;
    let reply = http::post_json(&webhook, &json!({ "text": reminder.message }))
        .map_err(|error| error.into_job_error("Slack"))?
        .or_job_error("Slack")?;
    info!(
        "reminded {} of {} pull requests",
        reminder.user, reminder.count
    );
    Ok(Notified {
        user: reminder.user,
        count: reminder.count,
        status: reply.status,
    })
}
