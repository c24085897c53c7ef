//! `fetch-rust`: GETs the payload's `url` `times` times (default 1) with `headers`, reading
//! each body whole, and returns each request's outcome: `{"requests": [{"status": 200,
//! "bytes": 2}, {"error": "...", "refused": false}, ...]}`. A failed request is an outcome,
//! not a failed job, so a test can see what every request met; the benchmark's HTTP phase runs
//! it with one request per job.
//!
//! The manifest beside the plugin (`fetch-rust.toml`) grants the hosts it may call.

use jobrunner_plugin_sdk::{Job, JobError, handler, http};
use serde::Deserialize;
use serde_json::{Value, json};

#[derive(Deserialize)]
struct Fetch {
    url: String,
    #[serde(default = "once")]
    times: u32,
    #[serde(default)]
    headers: Vec<(String, String)>,
}

fn once() -> u32 {
    1
}

handler!(fetch);

fn fetch(job: Job<Fetch>) -> Result<Value, JobError> {
    let Fetch {
        url,
        times,
        headers,
    } = job.payload;
    let outcomes: Vec<Value> = (0..times).map(|_| get(&url, &headers)).collect();
    Ok(json!({ "requests": outcomes }))
}

fn get(url: &str, headers: &[(String, String)]) -> Value {
    let mut request = http::Request::get(url);
    for (name, value) in headers {
        request = request.header(name, value);
    }
    let request = match request.body(Vec::new()) {
        Ok(request) => request,
        Err(e) => return json!({ "error": e.to_string() }),
    };
    match http::send(request) {
        Ok(reply) => json!({ "status": reply.status, "bytes": reply.body.len() }),
        Err(e) => json!({ "error": e.to_string(), "refused": e.is_refused() }),
    }
}
