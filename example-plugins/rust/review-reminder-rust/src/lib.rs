//! `review-reminder-rust`: the reference job in Rust (its contract, which every language's
//! version follows: [`../../review-reminder.md`](../../review-reminder.md)). From the pull
//! requests waiting for a user's review it builds a reminder listing them oldest first, logs
//! it and returns it.

mod reminder;

use jobrunner_plugin_sdk::{Job, JobError, handler, info};
use serde::Serialize;

#[derive(Serialize)]
struct Reminded {
    user: String,
    count: usize,
    message: String,
}

handler!(remind);

fn remind(job: Job<reminder::Request>) -> Result<Reminded, JobError> {
    let reminder::Reminder {
        user,
        count,
        message,
    } = reminder::remind(job.payload)?;
    info!("{message}");
    Ok(Reminded {
        user,
        count,
        message,
    })
}
