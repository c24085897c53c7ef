//! Config values and secrets, through the runner's `wasi:config/store`. A plugin reads the
//! values of its manifest's `[config]` table (a tenant may override them) and the secrets the
//! manifest names, with its job's tenant's value; every other key reads as absent.
//!
//! ```toml
//! # <job-type>.toml, beside <job-type>.wasm
//! secrets = ["github_token"]       # named in the runner's config file: [secrets]
//! [config]
//! github_api = "https://api.github.com"
//! ```
//!
//! ```no_run
//! use jobrunner_plugin_sdk::{config, handler, Job, JobError};
//!
//! handler!(scan);
//!
//! fn scan(_job: Job<serde_json::Value>) -> Result<(), JobError> {
//!     let api = config::require("github_api")?;
//!     let token = config::require("github_token")?;
//!     // ... call `api` with `token` ...
//!     # let _ = (api, token);
//!     Ok(())
//! }
//! ```
//!
//! The runner replaces a secret's value with `[redacted:<name>]` wherever the plugin writes it
//! (a log line, an error, a panic message, its result, a follow-up's payload), so echoing one
//! does not leak it; build nothing on that, and do not transform a secret before writing it.

use crate::JobError;
use crate::bindings::wasi::config::store;

/// The value of `key`, or `None` if the plugin is not granted one. A failure of the store
/// itself (none with this runner) also reads as `None`.
pub fn get(key: &str) -> Option<String> {
    store::get(key).ok().flatten()
}

/// The value of `key`, or a permanent failure naming it (a missing value is a deployment
/// mistake, which a retry does not mend).
pub fn require(key: &str) -> Result<String, JobError> {
    get(key).ok_or_else(|| {
        JobError::fail(format!(
            "config key {key:?} has no value: the plugin's manifest must list it under [config] \
             or `secrets`, and the runner must have the secret for this tenant"
        ))
    })
}

/// Every key the plugin is granted, with its value, config values and secrets alike.
pub fn all() -> Vec<(String, String)> {
    store::get_all().unwrap_or_default()
}
