//! The per-plugin manifest, `<job-type>.toml` beside `<job-type>.wasm`: limits, retry policy,
//! a concurrency limit, the tenants allowed to run the type, and what its guests may reach
//! (hosts, config values, secrets, follow-up job types). Every key is optional; an
//! absent key keeps the runner's setting.
//!
//! ```toml
//! timeout = "30s"          # wall-clock time per attempt
//! cpu_budget = "5s"        # time per attempt spent executing Wasm
//! memory = "64MiB"         # linear memory per attempt, at most the runner's max_memory and memory budget
//! max_attempts = 5         # for jobs that do not set their own
//! backoff = "exponential"  # or "quadratic"
//! backoff_base = "2s"
//! backoff_cap = "10m"
//! concurrency = 4          # jobs of this type running at once, across all runners
//! tenants = ["acme"]       # only these tenants' jobs run; others fail [default: all]
//!
//! enqueue = ["slack-notify"] # job types its jobs may enqueue as follow-ups [default: none]
//! max_follow_ups = 100     # follow-ups per attempt
//! secrets = ["github_token"] # secrets it may read through wasi:config [default: none]
//!
//! [http]                   # outgoing HTTP: no table, no HTTP at all
//! allowed_hosts = ["https://api.github.com", "https://*.example.com:8443"]
//! max_requests = 10        # and the other request limits of the runner's [http] table
//!
//! [config]                 # plain string values it reads through wasi:config
//! github_api = "https://api.github.com"
//!
//! [[schedules]]            # jobs of this type enqueued at every tick (synced on load)
//! name = "weekday-mornings"
//! cron = "0 9 * * MON-FRI"  # 5 fields, 6 with seconds first, or @hourly, @daily, ...
//! tz = "Europe/Berlin"      # IANA time zone [default: UTC]
//! payload = { team = "web" }
//! # tenant, priority, max_attempts, unique_key, overlap, catch_up and within, as in
//! # `runner schedules add`
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytesize::ByteSize;
use serde::Deserialize;

use crate::client::schedules::{CatchUp, NewSchedule, Overlap};
use crate::job::{NewJob, validate_job_type};
use crate::retry::{BackoffKind, RetryPolicy};
use crate::sandbox::{ConfigGrant, HttpDoor, HttpSettings, Limits};
use crate::secrets::check_key;

/// How jobs of one plugin version run: the runner's settings with the manifest's overrides.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// Each attempt's sandbox limits.
    pub limits: Limits,
    /// Attempts (for jobs that set none) and backoff.
    pub retry: RetryPolicy,
    /// Most jobs of the type running at once across all runners; `None`: no limit.
    pub concurrency: Option<u32>,
    /// The tenants whose jobs may run; `None`: every tenant.
    pub tenants: Option<Vec<String>>,
    /// The schedules the manifest declares for its job type.
    pub schedules: Arc<[ManifestSchedule]>,
}

/// A `[[schedules]]` entry of a manifest: a schedule of the manifest's job type.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ManifestSchedule {
    name: String,
    cron: String,
    #[serde(default = "utc")]
    tz: String,
    #[serde(default = "empty_object")]
    payload: serde_json::Value,
    #[serde(default = "default_tenant")]
    tenant: String,
    #[serde(default)]
    priority: i32,
    max_attempts: Option<u32>,
    unique_key: Option<String>,
    #[serde(default)]
    overlap: Overlap,
    #[serde(default)]
    catch_up: CatchUp,
    #[serde(default = "one_day", with = "humantime_serde")]
    within: Duration,
}

fn utc() -> String {
    "UTC".to_owned()
}

fn empty_object() -> serde_json::Value {
    serde_json::json!({})
}

fn default_tenant() -> String {
    "default".to_owned()
}

fn one_day() -> Duration {
    Duration::from_secs(24 * 3600)
}

impl ManifestSchedule {
    /// The schedule, enqueueing jobs of `job_type`.
    pub fn to_schedule(&self, job_type: &str) -> NewSchedule {
        let mut job = NewJob::new(job_type, self.payload.clone())
            .tenant(&self.tenant)
            .priority(self.priority);
        if let Some(max) = self.max_attempts {
            job = job.max_attempts(max);
        }
        let schedule = NewSchedule::new(&self.name, &self.cron, job)
            .time_zone(&self.tz)
            .overlap(self.overlap)
            .catch_up(self.catch_up, self.within);
        match &self.unique_key {
            Some(key) => schedule.unique_key(key),
            None => schedule,
        }
    }
}

impl Policy {
    /// The runner's own settings, for plugins without a manifest.
    pub fn new(limits: Limits, retry: RetryPolicy) -> Self {
        Self {
            limits,
            retry,
            concurrency: None,
            tenants: None,
            schedules: Arc::new([]),
        }
    }

    /// Whether `tenant`'s jobs may run.
    pub fn allows(&self, tenant: &str) -> bool {
        self.tenants
            .as_ref()
            .is_none_or(|tenants| tenants.iter().any(|t| t == tenant))
    }
}

/// Why a manifest cannot be used. The plugin is then not loaded.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// The file could not be read.
    #[error("cannot read manifest {}: {source}", path.display())]
    Read {
        /// The manifest.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Not TOML, an unknown key, or a value of the wrong kind; the message names the key.
    #[error("invalid manifest {}: {message}", path.display())]
    Parse {
        /// The manifest.
        path: PathBuf,
        /// The parser's message, with the key and line.
        message: String,
    },
    /// A value the runner cannot use.
    #[error("invalid manifest {}: {key}: {reason}", path.display())]
    Invalid {
        /// The manifest.
        path: PathBuf,
        /// The key, as spelled in the file.
        key: &'static str,
        /// Why.
        reason: String,
    },
}

/// The manifest file, as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Manifest {
    #[serde(default, with = "humantime_serde")]
    timeout: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    cpu_budget: Option<Duration>,
    memory: Option<ByteSize>,
    max_attempts: Option<u32>,
    backoff: Option<BackoffKind>,
    #[serde(default, with = "humantime_serde")]
    backoff_base: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    backoff_cap: Option<Duration>,
    concurrency: Option<u32>,
    tenants: Option<Vec<String>>,
    #[serde(default)]
    http: HttpSettings,
    enqueue: Option<Vec<String>>,
    max_follow_ups: Option<u32>,
    secrets: Option<Vec<String>>,
    #[serde(default)]
    config: BTreeMap<String, String>,
    #[serde(default)]
    schedules: Vec<ManifestSchedule>,
}

/// Reads the manifest at `path` and applies it over `defaults`. `largest_memory` is the most
/// memory the runner can give one job, with the setting that bounds it
/// ([`SandboxConfig::largest_memory`](crate::SandboxConfig::largest_memory)).
pub fn read(
    path: &Path,
    defaults: &Policy,
    largest_memory: (u64, &str),
) -> Result<Policy, ManifestError> {
    let text = std::fs::read_to_string(path).map_err(|source| ManifestError::Read {
        path: path.to_owned(),
        source,
    })?;
    parse(&text, defaults, largest_memory).map_err(|error| error.at(path))
}

/// A manifest error before the file is known.
#[derive(Debug)]
enum Problem {
    Parse(String),
    Invalid(&'static str, String),
}

impl Problem {
    fn at(self, path: &Path) -> ManifestError {
        let path = path.to_owned();
        match self {
            Problem::Parse(message) => ManifestError::Parse { path, message },
            Problem::Invalid(key, reason) => ManifestError::Invalid { path, key, reason },
        }
    }
}

fn parse(text: &str, defaults: &Policy, largest_memory: (u64, &str)) -> Result<Policy, Problem> {
    let m: Manifest = toml::from_str(text).map_err(|e| Problem::Parse(e.to_string()))?;
    let mut policy = defaults.clone();
    let limits = &mut policy.limits;
    limits.timeout = m.timeout.unwrap_or(limits.timeout);
    limits.cpu_budget = m.cpu_budget.unwrap_or(limits.cpu_budget);
    limits.memory = m.memory.map_or(limits.memory, |m| m.as_u64());
    let retry = &mut policy.retry;
    retry.max_attempts = m.max_attempts.unwrap_or(retry.max_attempts);
    retry.backoff.kind = m.backoff.unwrap_or(retry.backoff.kind);
    retry.backoff.base = m.backoff_base.unwrap_or(retry.backoff.base);
    retry.backoff.cap = m.backoff_cap.unwrap_or(retry.backoff.cap);
    policy.concurrency = m.concurrency;
    grant_config(&m, &mut policy.limits)?;
    grant_jobs(&m, &mut policy.limits)?;
    policy.tenants = m.tenants;
    policy.schedules = check_schedules(m.schedules)?;
    m.http
        .check(HttpDoor::Manifest)
        .map_err(|e| Problem::Invalid("http", e.to_string()))?;
    m.http.apply(&mut policy.limits.http);
    check(&policy, largest_memory)?;
    Ok(policy)
}

fn grant_config(m: &Manifest, limits: &mut Limits) -> Result<(), Problem> {
    for key in m.config.keys() {
        check_key(key).map_err(|reason| Problem::Invalid("config", reason))?;
    }
    let secrets = m.secrets.clone().unwrap_or_default();
    for name in &secrets {
        check_key(name).map_err(|reason| Problem::Invalid("secrets", reason))?;
        if m.config.contains_key(name) {
            return Err(Problem::Invalid(
                "secrets",
                format!("{name:?} is also a [config] key: a key is a value or a secret"),
            ));
        }
    }
    limits.config = ConfigGrant {
        values: Arc::new(m.config.clone()),
        secrets: secrets.into(),
    };
    Ok(())
}

fn check_schedules(schedules: Vec<ManifestSchedule>) -> Result<Arc<[ManifestSchedule]>, Problem> {
    let mut names = std::collections::HashSet::new();
    for schedule in &schedules {
        let invalid = |reason: String| {
            Problem::Invalid(
                "schedules",
                format!("schedule {:?}: {reason}", schedule.name),
            )
        };
        // The job type is the plugin's, valid by then; any valid name checks the rest.
        schedule
            .to_schedule("job-type")
            .validate()
            .map_err(|e| invalid(e.to_string()))?;
        if !names.insert((&schedule.tenant, &schedule.name)) {
            return Err(invalid("declared twice".into()));
        }
    }
    Ok(schedules.into())
}

fn grant_jobs(m: &Manifest, limits: &mut Limits) -> Result<(), Problem> {
    let enqueue = m.enqueue.clone().unwrap_or_default();
    for job_type in &enqueue {
        validate_job_type(job_type).map_err(|e| Problem::Invalid("enqueue", e.to_string()))?;
    }
    let jobs = &mut limits.jobs;
    jobs.enqueue = enqueue.into();
    if let Some(max) = m.max_follow_ups {
        if max == 0 {
            return Err(Problem::Invalid(
                "max_follow_ups",
                "must be at least 1 (leave `enqueue` out to allow none)".into(),
            ));
        }
        jobs.max_follow_ups = max;
    }
    Ok(())
}

fn check(policy: &Policy, (max_memory, bound): (u64, &str)) -> Result<(), Problem> {
    let rule = |key, ok: bool, reason: &dyn Fn() -> String| {
        if ok {
            Ok(())
        } else {
            Err(Problem::Invalid(key, reason()))
        }
    };
    let (limits, retry) = (&policy.limits, &policy.retry);
    rule("timeout", !limits.timeout.is_zero(), &|| {
        "must be positive".into()
    })?;
    rule("cpu_budget", !limits.cpu_budget.is_zero(), &|| {
        "must be positive".into()
    })?;
    rule(
        "memory",
        (1 << 20..=max_memory).contains(&limits.memory),
        &|| {
            format!(
                "must be between 1MiB and the runner's {bound} ({})",
                ByteSize(max_memory)
            )
        },
    )?;
    rule(
        "max_attempts",
        (1..=i32::MAX as u32).contains(&retry.max_attempts),
        &|| format!("must be between 1 and {}", i32::MAX),
    )?;
    rule(
        "backoff_base",
        retry.backoff.base <= retry.backoff.cap,
        &|| "must not exceed backoff_cap".into(),
    )?;
    rule(
        "concurrency",
        policy
            .concurrency
            .is_none_or(|c| (1..=i32::MAX as u32).contains(&c)),
        &|| "must be at least 1".into(),
    )?;
    rule(
        "tenants",
        policy
            .tenants
            .as_ref()
            .is_none_or(|t| !t.is_empty() && t.iter().all(|t| !t.is_empty())),
        &|| "must list at least one tenant, none of them empty (omit the key to allow all)".into(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_is_granted_by_the_manifest_alone() {
        let policy = parsed(
            r#"
            [http]
            allowed_hosts = ["https://api.github.com"]
            max_requests = 5
            "#,
        )
        .unwrap();
        let http = &policy.limits.http;
        assert_eq!(http.hosts.plugin[0].to_string(), "https://api.github.com");
        assert_eq!(http.max_requests, 5);
        assert_eq!(http.connect_timeout, Limits::default().http.connect_timeout);
    }

    fn defaults() -> Policy {
        Policy::new(Limits::default(), RetryPolicy::default())
    }

    fn parsed(text: &str) -> Result<Policy, Problem> {
        parse(text, &defaults(), (4 << 30, "max_memory"))
    }

    #[test]
    fn config_secrets_and_follow_ups_are_granted_by_the_manifest_alone() {
        let policy = parsed(
            r#"
            enqueue = ["slack-notify"]
            secrets = ["github_token"]
            [config]
            repos = "acme/app,acme/web"
            "#,
        )
        .unwrap();
        let limits = &policy.limits;
        assert_eq!(&*limits.jobs.enqueue, ["slack-notify".to_owned()]);
        assert_eq!(limits.jobs.max_follow_ups, 100);
        assert_eq!(&*limits.config.secrets, ["github_token".to_owned()]);
        assert_eq!(limits.config.values["repos"], "acme/app,acme/web");
        let none = &defaults().limits;
        assert!(none.jobs.enqueue.is_empty() && none.config.secrets.is_empty());
        assert!(none.config.values.is_empty());
    }

    #[test]
    fn a_memory_above_the_budget_is_refused_naming_it() {
        let error = parse(
            "memory = \"1GiB\"",
            &defaults(),
            (512 << 20, "memory_budget"),
        )
        .unwrap_err()
        .at(Path::new("t.toml"))
        .to_string();
        assert!(error.contains("memory_budget (512.0 MiB)"), "{error}");
    }

    #[test]
    fn schedules_are_declared_with_defaults_and_refused_with_the_reason() {
        let policy = parsed(
            r#"
            [[schedules]]
            name = "weekday-mornings"
            cron = "0 9 * * MON-FRI"
            tz = "Europe/Berlin"
            payload = { team = "web" }
            catch_up = "latest"
            within = "6h"
            [[schedules]]
            name = "hourly"
            cron = "@hourly"
            "#,
        )
        .unwrap();
        let rows: Vec<_> = policy
            .schedules
            .iter()
            .map(|s| s.to_schedule("pr-reminders").to_row())
            .collect();
        assert_eq!(rows[0]["time_zone"], "Europe/Berlin");
        assert_eq!(rows[0]["payload"], serde_json::json!({"team": "web"}));
        assert_eq!(rows[0]["catch_up"], "latest");
        assert_eq!(rows[0]["catch_up_within"], "21600 seconds");
        assert_eq!(rows[1]["time_zone"], "UTC");
        assert_eq!(rows[1]["tenant"], "default");
        assert_eq!(rows[1]["payload"], serde_json::json!({}));
        assert_eq!(rows[1]["overlap"], "allow");
        for (manifest, reason) in [
            (
                "[[schedules]]\nname = \"s\"\ncron = \"0 25 * * *\"",
                "schedule \"s\": invalid cron expression \"0 25 * * *\": hour field",
            ),
            (
                "[[schedules]]\nname = \"s\"\ncron = \"@daily\"\ntz = \"Berlin\"",
                "unknown time zone \"Berlin\"",
            ),
            (
                "[[schedules]]\nname = \"s\"\ncron = \"@daily\"\noverlap = \"never\"",
                "unknown variant `never`",
            ),
            (
                "[[schedules]]\nname = \"s\"\ncron = \"@daily\"\n\
                 [[schedules]]\nname = \"s\"\ncron = \"@hourly\"",
                "schedule \"s\": declared twice",
            ),
        ] {
            let error = parse(manifest, &defaults(), (4 << 30, "max_memory"))
                .unwrap_err()
                .at(Path::new("t.toml"))
                .to_string();
            assert!(error.contains(reason), "{manifest}: {error}");
        }
    }

    #[test]
    fn keys_override_the_runner_settings() {
        let policy = parsed(
            r#"
            timeout = "3s"
            memory = "64MiB"
            max_attempts = 2
            backoff = "quadratic"
            concurrency = 4
            tenants = ["acme"]
            "#,
        )
        .unwrap();
        assert_eq!(policy.limits.timeout, Duration::from_secs(3));
        assert_eq!(policy.limits.memory, 64 << 20);
        assert_eq!(policy.limits.cpu_budget, Limits::default().cpu_budget);
        assert_eq!(policy.retry.max_attempts, 2);
        assert_eq!(policy.retry.backoff.kind, BackoffKind::Quadratic);
        assert_eq!(policy.concurrency, Some(4));
        assert!(policy.allows("acme") && !policy.allows("globex"));
        assert_eq!(parsed("").unwrap(), defaults());
        assert!(defaults().limits.http.hosts.plugin.is_empty());
        assert!(defaults().allows("anyone"));
    }

    #[test]
    fn errors_name_the_key() {
        let cases = [
            ("timout = \"3s\"", "timout"),
            ("timeout = \"soon\"", "timeout"),
            ("memory = \"8GiB\"", "memory"),
            ("max_attempts = 0", "max_attempts"),
            ("backoff_base = \"2h\"", "backoff_base"),
            ("concurrency = 0", "concurrency"),
            ("tenants = []", "tenants"),
            ("backoff = \"linear\"", "backoff"),
            ("[http]\nallowed_hosts = [\"github.com\"]", "no scheme"),
            (
                "[http]\nallow_networks = [\"10.0.0.0/8\"]",
                "http.allow_networks",
            ),
            ("[http]\nmax_requests = 0", "http.max_requests"),
            ("enqueue = [\"\"]", "enqueue"),
            ("max_follow_ups = 0", "max_follow_ups"),
            ("secrets = [\"a b\"]", "secrets"),
            (
                "secrets = [\"k\"]\n[config]\nk = \"v\"",
                "also a [config] key",
            ),
            ("[config]\nretries = 3", "retries"),
        ];
        for (text, key) in cases {
            let error = parsed(text)
                .unwrap_err()
                .at(Path::new("t.toml"))
                .to_string();
            assert!(
                error.contains(key) && error.contains("t.toml"),
                "{text}: {error}"
            );
        }
    }
}
