//! Write jobrunner job handlers in Rust.
//!
//! A plugin is one function from a typed [`Job`] to a result, exported with [`handler!`] and
//! compiled to a WebAssembly component for the `job-handler` world in the repository's `wit/`
//! directory:
//!
//! ```no_run
//! use jobrunner_plugin_sdk::{handler, info, Job, JobError};
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Deserialize)]
//! struct Greet {
//!     name: String,
//! }
//!
//! #[derive(Serialize)]
//! struct Greeting {
//!     message: String,
//! }
//!
//! handler!(greet);
//!
//! fn greet(job: Job<Greet>) -> Result<Greeting, JobError> {
//!     if job.payload.name.is_empty() {
//!         return Err(JobError::fail("name is empty"));
//!     }
//!     info!("greeting {}", job.payload.name);
//!     Ok(Greeting { message: format!("hello, {}", job.payload.name) })
//! }
//! ```
//!
//! Build it with `cargo build --release --target wasm32-wasip2` (the crate is a `cdylib`) and
//! drop `target/wasm32-wasip2/release/<crate>.wasm` into the runner's plugin directory as
//! `<job-type>.wasm`.
//!
//! What the runner makes of the handler's answer:
//! - `Ok(value)`: the job completed; `value` is serialized to JSON and kept as its result
//!   (`()` or `None` serialize to `null`, which means "no result").
//! - `Err(JobError::Retry(..))`: a transient failure, retried with backoff while attempts
//!   remain. `Err(JobError::Fail(..))`: a permanent failure, the job fails at once.
//! - A payload that does not deserialize into `P` fails the job at once, with serde's message
//!   and the path of the field that did not fit.
//! - A panic traps the instance: the runner retries the job with backoff and keeps the panic
//!   message (the guest's stderr) and a backtrace with the error.
//!
//! What a handler can reach, each granted by the plugin's manifest:
//! - outgoing HTTP, to the hosts it grants: [`http`];
//! - config values and secrets: [`config`];
//! - follow-up jobs, written only if the attempt completes: [`enqueue`] ([`jobs`]), and the
//!   delay before a retry: [`jobs::retry_after`].

pub mod config;
pub mod http;
pub mod jobs;

pub use jobs::enqueue;

use std::fmt::Display;

use serde::Serialize;
use serde::de::DeserializeOwned;

/// Bindings for the `job-handler` world, generated from the repository's `wit/` directory.
#[doc(hidden)]
#[allow(missing_docs, clippy::all)]
pub mod bindings {
    wit_bindgen::generate!({
        world: "job-handler",
        path: "../wit",
        pub_export_macro: true,
        export_macro_name: "__export_job_handler",
        default_bindings_module: "jobrunner_plugin_sdk::bindings",
        // wasi:http included: guests call it through `wstd`, which brings its own bindings.
        generate_all,
    });
}

pub use bindings::jobrunner::plugin::host::Level;
pub use bindings::jobrunner::plugin::types::JobError;

/// One job, with its payload deserialized into `P`.
///
/// Use `serde_json::Value` for an untyped payload, or `Box<serde_json::value::RawValue>` to
/// receive the JSON text unparsed.
#[derive(Debug, Clone)]
pub struct Job<P> {
    /// The job's id in the runner's database.
    pub id: i64,
    /// The job type (the plugin's file name without `.wasm`).
    pub job_type: String,
    /// The tenant the job belongs to.
    pub tenant: String,
    /// This attempt's number, from 1.
    pub attempt: u32,
    /// The attempt after which a retryable error fails the job for good.
    pub max_attempts: u32,
    /// The payload.
    pub payload: P,
}

impl<P> Job<P> {
    /// Whether a `retry` from this attempt would fail the job instead.
    pub fn is_last_attempt(&self) -> bool {
        self.attempt >= self.max_attempts
    }
}

impl JobError {
    /// A transient failure: the runner retries the job with backoff while attempts remain.
    pub fn retry(message: impl Display) -> Self {
        JobError::Retry(message.to_string())
    }

    /// A permanent failure: the job fails at once.
    pub fn fail(message: impl Display) -> Self {
        JobError::Fail(message.to_string())
    }
}

/// Turns any error into a [`JobError`] with `?`: `fetch(url).or_retry()?`.
pub trait OrJobError<T> {
    /// A transient failure, with the error's message.
    fn or_retry(self) -> Result<T, JobError>;
    /// A permanent failure, with the error's message.
    fn or_fail(self) -> Result<T, JobError>;
}

impl<T, E: Display> OrJobError<T> for Result<T, E> {
    fn or_retry(self) -> Result<T, JobError> {
        self.map_err(JobError::retry)
    }

    fn or_fail(self) -> Result<T, JobError> {
        self.map_err(JobError::fail)
    }
}

/// Writes a log line, attributed by the runner to the running job (its id, type, tenant and
/// attempt). The runner caps the size and rate of a job's log lines.
pub fn log(level: Level, message: &str) {
    bindings::jobrunner::plugin::host::log(level, message);
}

/// Exports `handler` as the plugin's `run` function.
///
/// `handler` is a function `fn(Job<P>) -> Result<R, JobError>` where `P: DeserializeOwned`
/// and `R: Serialize`. Use it once per plugin crate, at the top level.
#[macro_export]
macro_rules! handler {
    ($handler:path) => {
        #[doc(hidden)]
        struct __JobrunnerHandler;

        impl $crate::bindings::Guest for __JobrunnerHandler {
            fn run(
                job: $crate::bindings::jobrunner::plugin::types::Job,
            ) -> ::core::result::Result<
                ::core::option::Option<::std::string::String>,
                $crate::JobError,
            > {
                $crate::__private::dispatch(job, $handler)
            }
        }

        $crate::bindings::__export_job_handler!(__JobrunnerHandler with_types_in $crate::bindings);
    };
}

/// Writes a log line at [`Level::Trace`], `format!`-style.
#[macro_export]
macro_rules! trace {
    ($($arg:tt)+) => { $crate::log($crate::Level::Trace, &::std::format!($($arg)+)) };
}

/// Writes a log line at [`Level::Debug`], `format!`-style.
#[macro_export]
macro_rules! debug {
    ($($arg:tt)+) => { $crate::log($crate::Level::Debug, &::std::format!($($arg)+)) };
}

/// Writes a log line at [`Level::Info`], `format!`-style.
#[macro_export]
macro_rules! info {
    ($($arg:tt)+) => { $crate::log($crate::Level::Info, &::std::format!($($arg)+)) };
}

/// Writes a log line at [`Level::Warn`], `format!`-style.
#[macro_export]
macro_rules! warn {
    ($($arg:tt)+) => { $crate::log($crate::Level::Warn, &::std::format!($($arg)+)) };
}

/// Writes a log line at [`Level::Error`], `format!`-style.
#[macro_export]
macro_rules! error {
    ($($arg:tt)+) => { $crate::log($crate::Level::Error, &::std::format!($($arg)+)) };
}

#[doc(hidden)]
pub mod __private {
    use super::*;
    use bindings::jobrunner::plugin::types::Job as WitJob;

    /// Decodes the payload, runs the handler and encodes its result.
    pub fn dispatch<P, R>(
        job: WitJob,
        handler: impl FnOnce(Job<P>) -> Result<R, JobError>,
    ) -> Result<Option<String>, JobError>
    where
        P: DeserializeOwned,
        R: Serialize,
    {
        let payload = decode(&job.payload)?;
        let output = handler(Job {
            id: job.id,
            job_type: job.job_type,
            tenant: job.tenant,
            attempt: job.attempt,
            max_attempts: job.max_attempts,
            payload,
        })?;
        encode(&output)
    }

    /// The payload as `P`. The error names the field that did not fit (`pull_requests[0].age_days:
    /// invalid type: ...`), which serde_json alone does not.
    fn decode<P: DeserializeOwned>(json: &str) -> Result<P, JobError> {
        let mut json = serde_json::Deserializer::from_str(json);
        serde_path_to_error::deserialize(&mut json)
            .map_err(|e| JobError::fail(format!("invalid payload: {e}")))
    }

    fn encode(output: &impl Serialize) -> Result<Option<String>, JobError> {
        let json = serde_json::to_string(output)
            .map_err(|e| JobError::fail(format!("result is not serializable: {e}")))?;
        Ok((json != "null").then_some(json))
    }
}
