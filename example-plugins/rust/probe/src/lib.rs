//! `probe`: reads config and secrets, enqueues follow-ups and echoes a value through the paths
//! a guest can write to, as its payload says; for the tests of config, secrets, redaction and
//! follow-ups. Every key is optional:
//!
//! ```json
//! {
//!   "read": ["github_api", "github_token"],  // result "read": key -> {"sha256", "len"} or null
//!   "all": true,                             // result "all_keys": the keys get-all returns
//!   "echo": "github_token",                  // the key whose value to write, through "via":
//!   "via": ["log", "stdout", "stderr", "result", "enqueue"],
//!   "enqueue": [{"job_type": "echo", "payload": {}, "unique_key": "k", "delay_ms": 0,
//!                "priority": 0, "max_attempts": 1}],  // result "enqueued": null or the error
//!   "then": "complete"   // or "retry", "fail", "panic" (each with the echoed value in its
//!                        // message), or "retry_first": retry on attempt 1 only
//! }
//! ```
//!
//! Values are reported by digest, not as read: a result holding a secret would be redacted.

use jobrunner_plugin_sdk::jobs::{Options, enqueue_json};
use jobrunner_plugin_sdk::{Job, JobError, config, handler, info};
use serde::Deserialize;
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};

#[derive(Deserialize, Default)]
#[serde(default)]
struct Probe {
    read: Vec<String>,
    all: bool,
    echo: Option<String>,
    via: Vec<String>,
    enqueue: Vec<FollowUp>,
    then: Option<String>,
}

#[derive(Deserialize)]
struct FollowUp {
    job_type: String,
    payload: Value,
    unique_key: Option<String>,
    delay_ms: Option<u64>,
    priority: Option<i32>,
    max_attempts: Option<u32>,
}

handler!(probe);

fn probe(job: Job<Probe>) -> Result<Value, JobError> {
    let probe = job.payload;
    let mut result = Map::new();
    let read: Map<String, Value> = probe
        .read
        .iter()
        .map(|key| (key.clone(), config::get(key).map_or(Value::Null, digest)))
        .collect();
    result.insert("read".into(), read.into());
    if probe.all {
        let keys: Vec<String> = config::all().into_iter().map(|(key, _)| key).collect();
        result.insert("all_keys".into(), json!(keys));
    }
    let echoed = probe
        .echo
        .as_deref()
        .and_then(config::get)
        .unwrap_or_default();
    let via = |path: &str| probe.via.iter().any(|v| v == path);
    if via("log") {
        info!("the value is {echoed}");
    }
    if via("stdout") {
        println!("the value is {echoed}");
    }
    if via("stderr") {
        eprintln!("the value is {echoed}");
    }
    if via("result") {
        result.insert("echo".into(), json!(echoed));
    }
    let mut follow_ups = probe.enqueue;
    if via("enqueue") {
        follow_ups.push(FollowUp {
            job_type: "echo".into(),
            payload: json!({ "echo": echoed }),
            unique_key: None,
            delay_ms: None,
            priority: None,
            max_attempts: None,
        });
    }
    let enqueued: Vec<Value> = follow_ups.into_iter().map(enqueue).collect();
    result.insert("enqueued".into(), enqueued.into());
    let message = format!("the value is {echoed}");
    match probe.then.as_deref() {
        Some("retry") => Err(JobError::retry(message)),
        Some("retry_first") if job.attempt == 1 => Err(JobError::retry(message)),
        Some("fail") => Err(JobError::fail(message)),
        Some("panic") => panic!("{message}"),
        _ => Ok(result.into()),
    }
}

fn digest(value: String) -> Value {
    let sha256 = hex::encode(Sha256::digest(value.as_bytes()));
    json!({ "sha256": sha256, "len": value.len() })
}

fn enqueue(follow_up: FollowUp) -> Value {
    let mut options = Options::new();
    if let Some(key) = follow_up.unique_key {
        options = options.unique_key(key);
    }
    if let Some(ms) = follow_up.delay_ms {
        options = options.delay(std::time::Duration::from_millis(ms));
    }
    if let Some(priority) = follow_up.priority {
        options = options.priority(priority);
    }
    if let Some(max) = follow_up.max_attempts {
        options = options.max_attempts(max);
    }
    match enqueue_json(&follow_up.job_type, &follow_up.payload.to_string(), options) {
        Ok(()) => Value::Null,
        Err(refused) => json!(refused.to_string()),
    }
}
