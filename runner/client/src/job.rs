//! What a job is on its way in ([`NewJob`]), and the states it goes through ([`JobState`]).

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::value::RawValue;

/// Longest job type or tenant name the schema accepts.
pub const MAX_NAME_LEN: usize = 200;

/// Largest payload (JSON text) any job may have, whatever the sandbox limits say: runners
/// load claimed payloads in batches, so one door left open to huge payloads would let a
/// single enqueue exhaust a runner's memory. The schema holds the same line (migration 0007).
pub const MAX_PAYLOAD_BYTES: usize = 16 << 20;

/// Deepest nesting of arrays and objects a payload may have: what `serde_json` reads by
/// default, and so what the admin commands and Rust guests can parse. The schema holds the same
/// line (migration 0007).
pub const MAX_PAYLOAD_DEPTH: usize = 127;

/// Where a job is in its life cycle (see DESIGN.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    /// Waiting for its `run_at`, or ripe and waiting for a runner.
    Available,
    /// Claimed by a runner that holds its lease.
    Running,
    /// Finished successfully (only seen while completed jobs are retained).
    Completed,
    /// Failed permanently or ran out of attempts; kept until an operator acts.
    Failed,
    /// Cancelled by an operator before it ran.
    Cancelled,
}

impl JobState {
    /// Every state, in life-cycle order.
    pub const ALL: [JobState; 5] = [
        JobState::Available,
        JobState::Running,
        JobState::Completed,
        JobState::Failed,
        JobState::Cancelled,
    ];

    /// The state's name in the database.
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Available => "available",
            JobState::Running => "running",
            JobState::Completed => "completed",
            JobState::Failed => "failed",
            JobState::Cancelled => "cancelled",
        }
    }
}

impl fmt::Display for JobState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for JobState {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        JobState::ALL
            .into_iter()
            .find(|state| state.as_str() == s)
            .ok_or_else(|| {
                let names: Vec<_> = JobState::ALL.iter().map(|s| s.as_str()).collect();
                format!(
                    "unknown job state {s:?}; expected one of {}",
                    names.join(", ")
                )
            })
    }
}

/// When a new job becomes ripe.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Schedule {
    /// At enqueue time.
    #[default]
    Now,
    /// At an absolute time.
    At(DateTime<Utc>),
    /// This long after enqueue time.
    After(Duration),
}

/// How a new job is deduplicated against pending (available or running) jobs of its tenant.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Unique {
    /// Key = MD5 of the job type and the canonical payload: the same job is queued once.
    #[default]
    ByPayload,
    /// Key given by the caller.
    Key(String),
    /// No deduplication.
    Off,
}

/// A job to enqueue. Built with [`NewJob::new`] and the builder methods.
#[derive(Debug, Clone)]
pub struct NewJob {
    pub(crate) job_type: String,
    pub(crate) payload: Box<RawValue>,
    pub(crate) tenant: String,
    pub(crate) priority: i32,
    pub(crate) schedule: Schedule,
    pub(crate) max_attempts: Option<u32>,
    pub(crate) unique: Unique,
    pub(crate) parent: Option<i64>,
}

/// Why a job cannot be enqueued.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum InvalidJob {
    /// The job type is empty.
    #[error("job type must not be empty")]
    EmptyJobType,
    /// The tenant is empty.
    #[error("tenant must not be empty")]
    EmptyTenant,
    /// A name is longer than the schema allows.
    #[error("{what} is longer than {MAX_NAME_LEN} characters")]
    NameTooLong {
        /// Which name.
        what: &'static str,
    },
    /// The payload is not valid JSON.
    #[error("payload is not valid JSON: {0}")]
    MalformedPayload(String),
    /// The payload is larger than [`MAX_PAYLOAD_BYTES`].
    #[error("payload of {0} bytes exceeds the limit of {MAX_PAYLOAD_BYTES} bytes")]
    PayloadTooLarge(usize),
    /// The payload holds the character U+0000, which PostgreSQL's `jsonb` cannot store.
    #[error("payload holds a \\u0000 character, which PostgreSQL's jsonb cannot store")]
    PayloadHoldsNul,
    /// The payload nests arrays and objects deeper than [`MAX_PAYLOAD_DEPTH`].
    #[error("payload is nested deeper than {MAX_PAYLOAD_DEPTH} levels of arrays and objects")]
    PayloadTooDeep,
    /// max_attempts is zero or too large.
    #[error("max attempts must be between 1 and {}", i32::MAX)]
    MaxAttemptsOutOfRange,
    /// The explicit unique key is empty.
    #[error("unique key must not be empty")]
    EmptyUniqueKey,
    /// The delay or run-at is beyond what the database can store.
    #[error("run-at is out of range")]
    RunAtOutOfRange,
}

impl NewJob {
    /// A job of `job_type` with a JSON payload, due now, for tenant `default`, priority 0,
    /// the runner's default max attempts, deduplicated by payload.
    pub fn new(job_type: impl Into<String>, payload: serde_json::Value) -> Self {
        let payload =
            serde_json::value::to_raw_value(&payload).expect("a JSON value always serializes");
        Self::with_raw_payload(job_type.into(), payload)
    }

    /// Like [`NewJob::new`], from JSON text; fails if the text is not valid JSON.
    pub fn from_json_text(job_type: impl Into<String>, payload: &str) -> Result<Self, InvalidJob> {
        let payload = RawValue::from_string(payload.to_owned())
            .map_err(|e| InvalidJob::MalformedPayload(e.to_string()))?;
        Ok(Self::with_raw_payload(job_type.into(), payload))
    }

    fn with_raw_payload(job_type: String, payload: Box<RawValue>) -> Self {
        Self {
            job_type,
            payload,
            tenant: "default".to_owned(),
            priority: 0,
            schedule: Schedule::Now,
            max_attempts: None,
            unique: Unique::ByPayload,
            parent: None,
        }
    }

    /// Sets the tenant.
    pub fn tenant(mut self, tenant: impl Into<String>) -> Self {
        self.tenant = tenant.into();
        self
    }

    /// Sets the priority; lower runs first.
    pub fn priority(mut self, priority: i32) -> Self {
        self.priority = priority;
        self
    }

    /// Makes the job ripe at `at`.
    pub fn run_at(mut self, at: DateTime<Utc>) -> Self {
        self.schedule = Schedule::At(at);
        self
    }

    /// Makes the job ripe `delay` after it is enqueued.
    pub fn delay(mut self, delay: Duration) -> Self {
        self.schedule = Schedule::After(delay);
        self
    }

    /// Sets when the job becomes ripe.
    pub fn schedule(mut self, schedule: Schedule) -> Self {
        self.schedule = schedule;
        self
    }

    /// Caps the number of attempts (instead of the runner's default).
    pub fn max_attempts(mut self, max_attempts: u32) -> Self {
        self.max_attempts = Some(max_attempts);
        self
    }

    /// Sets how the job is deduplicated.
    pub fn unique(mut self, unique: Unique) -> Self {
        self.unique = unique;
        self
    }

    /// Deduplicates by an explicit key.
    pub fn unique_key(self, key: impl Into<String>) -> Self {
        self.unique(Unique::Key(key.into()))
    }

    /// Records `id` as the job's parent: the job that asked for it (shown by `jobs show` of
    /// either, and `jobs list --parent`).
    pub fn parent(mut self, id: i64) -> Self {
        self.parent = Some(id);
        self
    }

    /// The job type.
    pub fn job_type(&self) -> &str {
        &self.job_type
    }

    /// The payload as JSON text.
    pub fn payload(&self) -> &str {
        self.payload.get()
    }

    /// Checks everything the database would refuse, so the error is typed and nothing is sent.
    pub fn validate(&self) -> Result<(), InvalidJob> {
        validate_job_type(&self.job_type)?;
        check_name("tenant", &self.tenant, InvalidJob::EmptyTenant)?;
        if self.payload().len() > MAX_PAYLOAD_BYTES {
            return Err(InvalidJob::PayloadTooLarge(self.payload().len()));
        }
        if nesting_exceeds(self.payload(), MAX_PAYLOAD_DEPTH) {
            return Err(InvalidJob::PayloadTooDeep);
        }
        if holds_nul(self.payload()) {
            return Err(InvalidJob::PayloadHoldsNul);
        }
        if let Some(max) = self.max_attempts
            && !(1..=i32::MAX as u32).contains(&max)
        {
            return Err(InvalidJob::MaxAttemptsOutOfRange);
        }
        if matches!(&self.unique, Unique::Key(key) if key.is_empty()) {
            return Err(InvalidJob::EmptyUniqueKey);
        }
        Ok(())
    }

    /// The absolute time the job becomes ripe, given the enqueue time.
    pub(crate) fn ripe_at(&self, now: DateTime<Utc>) -> Result<DateTime<Utc>, InvalidJob> {
        match self.schedule {
            Schedule::Now => Ok(now),
            Schedule::At(at) => Ok(at),
            Schedule::After(delay) => chrono::Duration::from_std(delay)
                .ok()
                .and_then(|d| now.checked_add_signed(d))
                .ok_or(InvalidJob::RunAtOutOfRange),
        }
    }
}

/// Whether valid JSON `text` nests arrays and objects deeper than `limit`. A byte scan, since
/// `serde_json` does not count depth when it only checks that text is JSON.
fn nesting_exceeds(text: &str, limit: usize) -> bool {
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    for byte in text.bytes() {
        match (in_string, byte) {
            (true, _) if escaped => escaped = false,
            (true, b'\\') => escaped = true,
            (true, b'"') | (false, b'"') => in_string = !in_string,
            (false, b'[' | b'{') => {
                depth += 1;
                if depth > limit {
                    return true;
                }
            }
            (false, b']' | b'}') => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    false
}

/// Whether valid JSON `text` has a string holding U+0000. Parsed only when the escape is
/// there at all, so that bulk enqueues pay for a byte search.
fn holds_nul(text: &str) -> bool {
    fn any_nul(value: &serde_json::Value) -> bool {
        match value {
            serde_json::Value::String(s) => s.contains('\0'),
            serde_json::Value::Array(items) => items.iter().any(any_nul),
            serde_json::Value::Object(map) => {
                map.iter().any(|(k, v)| k.contains('\0') || any_nul(v))
            }
            _ => false,
        }
    }
    text.contains("\\u0000")
        && serde_json::from_str::<serde_json::Value>(text).is_ok_and(|v| any_nul(&v))
}

/// Checks a job type name: not empty, not longer than the schema allows.
pub fn validate_job_type(job_type: &str) -> Result<(), InvalidJob> {
    check_name("job type", job_type, InvalidJob::EmptyJobType)
}

fn check_name(what: &'static str, value: &str, empty: InvalidJob) -> Result<(), InvalidJob> {
    if value.is_empty() {
        Err(empty)
    } else if value.chars().count() > MAX_NAME_LEN {
        Err(InvalidJob::NameTooLong { what })
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_nul_character_is_refused_but_an_escaped_backslash_before_u0000_is_not() {
        let job = |text: &str| NewJob::from_json_text("t", text).unwrap().validate();
        assert_eq!(
            job(r#"{"a": "x\u0000y"}"#),
            Err(InvalidJob::PayloadHoldsNul)
        );
        assert_eq!(job(r#"{"a\u0000": 1}"#), Err(InvalidJob::PayloadHoldsNul));
        assert_eq!(job(r#"{"a": "\\u0000"}"#), Ok(()));
    }

    #[test]
    fn nesting_is_counted_outside_strings_only() {
        let nested = |n: usize| format!("{}{}", "[".repeat(n), "]".repeat(n));
        assert!(!nesting_exceeds(&nested(127), 127));
        assert!(nesting_exceeds(&nested(128), 127));
        let object = format!(r#"{{"a": {}}}"#, nested(126));
        assert!(!nesting_exceeds(&object, 127));
        assert!(nesting_exceeds(&object, 126));
        let brackets_in_strings = format!(r#"["{}", "\"[[", "\\"]"#, "[".repeat(500));
        assert!(!nesting_exceeds(&brackets_in_strings, 1));
        // serde_json reads exactly what the limit lets through.
        assert!(serde_json::from_str::<serde_json::Value>(&nested(127)).is_ok());
        assert!(serde_json::from_str::<serde_json::Value>(&nested(128)).is_err());
    }

    #[test]
    fn defaults_and_builders() {
        let job = NewJob::new("send", json!({"to": "x"}));
        assert_eq!(job.tenant, "default");
        assert_eq!(job.unique, Unique::ByPayload);
        assert_eq!(job.payload(), r#"{"to":"x"}"#);
        let job = job
            .tenant("acme")
            .priority(-3)
            .max_attempts(4)
            .unique_key("k");
        assert_eq!((job.tenant.as_str(), job.priority), ("acme", -3));
        assert_eq!(job.max_attempts, Some(4));
        assert_eq!(job.unique, Unique::Key("k".into()));
        job.validate().unwrap();
    }

    #[test]
    fn invalid_jobs_are_named() {
        let job = |t: &str| NewJob::new(t, json!({}));
        assert_eq!(job("").validate(), Err(InvalidJob::EmptyJobType));
        assert_eq!(job("t").tenant("").validate(), Err(InvalidJob::EmptyTenant));
        assert_eq!(
            job("t").max_attempts(0).validate(),
            Err(InvalidJob::MaxAttemptsOutOfRange)
        );
        assert_eq!(
            job("t").unique_key("").validate(),
            Err(InvalidJob::EmptyUniqueKey)
        );
        assert_eq!(
            job(&"x".repeat(201)).validate(),
            Err(InvalidJob::NameTooLong { what: "job type" })
        );
        let err = NewJob::from_json_text("t", "{not json").unwrap_err();
        assert!(
            err.to_string().starts_with("payload is not valid JSON"),
            "{err}"
        );
    }

    #[test]
    fn ripe_at_follows_the_schedule() {
        let now = Utc::now();
        let job = NewJob::new("t", json!(null));
        assert_eq!(job.ripe_at(now), Ok(now));
        let job = job.delay(Duration::from_secs(90));
        assert_eq!(
            job.ripe_at(now).unwrap() - now,
            chrono::Duration::seconds(90)
        );
        assert_eq!(
            job.delay(Duration::MAX).ripe_at(now),
            Err(InvalidJob::RunAtOutOfRange)
        );
    }

    #[test]
    fn states_round_trip() {
        for state in JobState::ALL {
            assert_eq!(state.as_str().parse::<JobState>(), Ok(state));
        }
        assert!(
            "done"
                .parse::<JobState>()
                .unwrap_err()
                .contains("available")
        );
    }
}
