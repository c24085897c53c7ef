//! `webhook`: POSTs the payload's `body` as JSON to its `url`. A 2xx reply completes the job
//! with `{"status": N}`; a 5xx reply, a timeout or no reply retries it; a 4xx reply or a
//! request the runner refuses (host not granted, address blocked) fails it, since trying
//! again cannot help. A 3xx reply fails it too: the runner does not follow redirects.
//!
//! The manifest beside the plugin (`webhook.toml`) grants the hosts it may call:
//! `[http] allowed_hosts = ["https://hooks.example.com"]`.

use jobrunner_plugin_sdk::{Job, JobError, handler, http, info};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

#[derive(Deserialize)]
struct Webhook {
    url: String,
    body: Box<RawValue>,
}

#[derive(Serialize)]
struct Delivered {
    status: u16,
}

handler!(webhook);

fn webhook(job: Job<Webhook>) -> Result<Delivered, JobError> {
    let Webhook { url, body } = job.payload;
    let reply = match http::post_json(&url, &body) {
        Ok(reply) => reply,
        Err(error) if error.is_refused() => return Err(JobError::fail(error)),
        Err(error) => return Err(JobError::retry(error)),
    };
    let status = reply.status;
    match status {
        200..=299 => {
            info!("delivered, status {status}");
            Ok(Delivered { status })
        }
        500..=599 => Err(JobError::retry(format!("server error: status {status}"))),
        _ => Err(JobError::fail(format!("not delivered: status {status}"))),
    }
}
