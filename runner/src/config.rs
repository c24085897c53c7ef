//! Runner configuration: flags (and `DATABASE_URL`) over an optional TOML file over defaults.
//!
//! [`WorkerSettings`] and [`SandboxSettings`] are both sets of command-line flags and TOML
//! tables, so the two can never drift apart: every setting has the same name in both
//! (`--poll-interval 2s` and `poll_interval = "2s"`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytesize::ByteSize;
use serde::Deserialize;

use crate::retry::{Backoff, BackoffKind, RetryPolicy};
use crate::sandbox::{HttpDoor, HttpSettings, Limits, SandboxConfig};
use crate::secrets::{SecretTable, Secrets};
use crate::tenants::{InvalidPolicy, TenantSettings, Tenants};
use crate::worker::{WorkerConfig, default_owner};

/// Why the configuration cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML, or has unknown keys or bad values.
    #[error("invalid config file {path}: {source}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// Why, with the key and line.
        source: Box<toml::de::Error>,
    },
    /// A setting has a value the runner cannot work with.
    #[error("invalid setting {key}: {reason}")]
    Invalid {
        /// The setting, as spelled in the file.
        key: &'static str,
        /// Why.
        reason: String,
    },
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines on stderr.
    #[default]
    Text,
    /// One JSON object per line on stdout.
    Json,
}

/// The config file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// Where the queue lives, unless `DATABASE_URL` or `--database-url` says otherwise.
    pub database_url: Option<String>,
    /// Whether the database URL goes through a pooler in transaction mode, unless `--pooled`
    /// says so.
    pub database_pooled: Option<bool>,
    /// A direct URL beside a pooled one, unless `--listen-url` says otherwise.
    pub database_listen_url: Option<String>,
    /// The most connections a runner opens, unless `--max-connections` says otherwise.
    pub database_max_connections: Option<u32>,
    /// Log format, unless `--log-format` says otherwise.
    pub log_format: Option<LogFormat>,
    /// The plugin directory, unless `--plugins` says otherwise (relative to the working
    /// directory).
    pub plugins: Option<PathBuf>,
    /// The compiled-plugin cache, unless `--plugin-cache` says otherwise.
    pub plugin_cache: Option<PathBuf>,
    /// The `[worker]` table.
    #[serde(default)]
    pub worker: WorkerSettings,
    /// The `[sandbox]` table.
    #[serde(default)]
    pub sandbox: SandboxSettings,
    /// The `[http]` table: outgoing HTTP's network settings and request limits for every
    /// plugin (hosts are granted per plugin, in its manifest).
    #[serde(default)]
    pub http: HttpSettings,
    /// The `[secrets]` table: the secrets plugins may be granted, and where each value is read
    /// from (tenants' own values are in their `[tenants.<name>.secrets]` tables).
    #[serde(default)]
    pub secrets: SecretTable,
    /// The `[tenant_defaults]` table: the policy of tenants not listed under `[tenants]`.
    pub tenant_defaults: Option<TenantSettings>,
    /// The `[tenants.<name>]` tables: each tenant's own policy.
    #[serde(default)]
    pub tenants: BTreeMap<String, TenantSettings>,
    /// The `[web]` table: the HTTP listener of health checks, metrics and the dashboard.
    #[serde(default)]
    pub web: crate::web::WebSettings,
}

impl FileConfig {
    /// The tenant policy this file describes, checked against the runner's maxima; `None` if
    /// it has neither `[tenant_defaults]` nor `[tenants]`.
    pub fn tenants(&self, sandbox: &SandboxConfig) -> Result<Option<Tenants>, ConfigError> {
        if self.tenant_defaults.is_none() && self.tenants.is_empty() {
            return Ok(None);
        }
        let defaults = self.tenant_defaults.clone().unwrap_or_default();
        let tenants = Tenants::from_settings(&defaults, &self.tenants, sandbox);
        tenants
            .map(Some)
            .map_err(|InvalidPolicy(reason)| ConfigError::Invalid {
                key: "tenants",
                reason,
            })
    }

    /// The engine configuration and per-attempt limits: `flags` over this file's `[sandbox]`
    /// and `[http]` tables over the defaults, checked.
    pub fn sandbox(&self, flags: SandboxSettings) -> Result<(SandboxConfig, Limits), ConfigError> {
        let (mut config, mut limits) = flags.or(self.sandbox.clone()).resolve()?;
        self.http
            .check(HttpDoor::Runner)
            .map_err(|e| ConfigError::Invalid {
                key: "http",
                reason: e.to_string(),
            })?;
        self.http.apply(&mut limits.http);
        config.http = self.http.network();
        Ok((config, limits))
    }

    /// Reads the values of the `[secrets]` and `[tenants.<name>.secrets]` tables.
    pub fn secrets(&self) -> Result<Secrets, ConfigError> {
        let invalid = |reason: String| ConfigError::Invalid {
            key: "secrets",
            reason,
        };
        if self
            .tenant_defaults
            .as_ref()
            .is_some_and(|d| d.secrets.is_some())
        {
            return Err(invalid(
                "[tenant_defaults.secrets] is not read: values for every tenant go in [secrets]"
                    .into(),
            ));
        }
        let tenants = self
            .tenants
            .iter()
            .filter_map(|(tenant, s)| Some((tenant.clone(), s.secrets.clone()?)))
            .collect();
        Secrets::read(&self.secrets, &tenants).map_err(|e| invalid(e.to_string()))
    }

    /// Reads and parses `path`.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        toml::from_str(&text).map_err(|source| ConfigError::Parse {
            path: path.to_owned(),
            source: source.into(),
        })
    }
}

/// Worker settings; unset ones fall back to the config file, then to the defaults shown.
#[derive(Debug, Clone, Default, Deserialize, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct WorkerSettings {
    /// Jobs running at once [default: 100]
    #[arg(long)]
    pub concurrency: Option<usize>,
    /// Most jobs claimed ahead of free executors, to hide claim latency for short jobs; the
    /// runner uses what its executors will start within 5 ms at recent job times [default: 2000]
    #[arg(long)]
    pub prefetch: Option<usize>,
    /// Most jobs claimed per statement [default: 500]
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// How often an idle runner polls when no notification arrives [default: 1s]
    #[arg(long, value_parser = parse_duration)]
    #[serde(default, with = "humantime_serde")]
    pub poll_interval: Option<Duration>,
    /// How long a claim lasts without a heartbeat; heartbeats run every third of it [default: 5s]
    #[arg(long, value_parser = parse_duration)]
    #[serde(default, with = "humantime_serde")]
    pub lease: Option<Duration>,
    /// The longest a batch transaction stays open: short jobs are claimed by locking their rows
    /// and recorded as it commits; jobs still running then go on under per-job leases. 0 leases
    /// every job at its claim [default: 1s]
    #[arg(long, value_parser = parse_duration)]
    #[serde(default, with = "humantime_serde")]
    pub batch_bound: Option<Duration>,
    /// How often expired leases are rescued [default: 1s]
    #[arg(long, value_parser = parse_duration)]
    #[serde(default, with = "humantime_serde")]
    pub rescue_interval: Option<Duration>,
    /// Keep completed jobs (state `completed`, with their result) this long [default: delete at once]
    #[arg(long, value_parser = parse_duration)]
    #[serde(default, with = "humantime_serde")]
    pub keep_completed: Option<Duration>,
    /// How long shutdown waits for running jobs before requeueing them [default: 30s]
    #[arg(long, value_parser = parse_duration)]
    #[serde(default, with = "humantime_serde")]
    pub shutdown_timeout: Option<Duration>,
    /// Vacuum the jobs table once it holds this many dead row versions, and they make up a
    /// fifth of it, one runner at a time; 0 leaves it to autovacuum [default: 50000]
    #[arg(long)]
    pub vacuum_dead_rows: Option<u64>,
    /// Attempts for jobs that set none [default: 25]
    #[arg(long)]
    pub max_attempts: Option<u32>,
    /// Backoff curve between attempts [default: exponential]
    #[arg(long, value_enum)]
    pub backoff: Option<BackoffKind>,
    /// Delay after the first failed attempt [default: 1s]
    #[arg(long, value_parser = parse_duration)]
    #[serde(default, with = "humantime_serde")]
    pub backoff_base: Option<Duration>,
    /// Longest delay between attempts [default: 1h]
    #[arg(long, value_parser = parse_duration)]
    #[serde(default, with = "humantime_serde")]
    pub backoff_cap: Option<Duration>,
}

impl WorkerSettings {
    /// These settings, with unset ones taken from `fallback`.
    pub fn or(self, fallback: WorkerSettings) -> WorkerSettings {
        WorkerSettings {
            concurrency: self.concurrency.or(fallback.concurrency),
            prefetch: self.prefetch.or(fallback.prefetch),
            batch_size: self.batch_size.or(fallback.batch_size),
            poll_interval: self.poll_interval.or(fallback.poll_interval),
            lease: self.lease.or(fallback.lease),
            batch_bound: self.batch_bound.or(fallback.batch_bound),
            rescue_interval: self.rescue_interval.or(fallback.rescue_interval),
            keep_completed: self.keep_completed.or(fallback.keep_completed),
            shutdown_timeout: self.shutdown_timeout.or(fallback.shutdown_timeout),
            vacuum_dead_rows: self.vacuum_dead_rows.or(fallback.vacuum_dead_rows),
            max_attempts: self.max_attempts.or(fallback.max_attempts),
            backoff: self.backoff.or(fallback.backoff),
            backoff_base: self.backoff_base.or(fallback.backoff_base),
            backoff_cap: self.backoff_cap.or(fallback.backoff_cap),
        }
    }

    /// The retry policy these settings describe, defaults filled in.
    pub fn retry_policy(&self) -> Result<RetryPolicy, ConfigError> {
        let defaults = RetryPolicy::default();
        let policy = RetryPolicy {
            max_attempts: self.max_attempts.unwrap_or(defaults.max_attempts),
            backoff: Backoff {
                kind: self.backoff.unwrap_or(defaults.backoff.kind),
                base: self.backoff_base.unwrap_or(defaults.backoff.base),
                cap: self.backoff_cap.unwrap_or(defaults.backoff.cap),
            },
        };
        check(
            "max_attempts",
            (1..=i32::MAX as u32).contains(&policy.max_attempts),
            || format!("must be between 1 and {}", i32::MAX),
        )?;
        check(
            "backoff_base",
            policy.backoff.base <= policy.backoff.cap,
            || "must not exceed backoff_cap".into(),
        )?;
        Ok(policy)
    }

    /// The worker configuration these settings describe, defaults filled in and checked.
    pub fn resolve(&self) -> Result<WorkerConfig, ConfigError> {
        let d = WorkerConfig::default();
        let config = WorkerConfig {
            owner: default_owner(),
            concurrency: self.concurrency.unwrap_or(d.concurrency),
            prefetch: self.prefetch.unwrap_or(d.prefetch),
            batch_size: self.batch_size.unwrap_or(d.batch_size),
            poll_interval: self.poll_interval.unwrap_or(d.poll_interval),
            lease: self.lease.unwrap_or(d.lease),
            batch_bound: match self.batch_bound {
                Some(Duration::ZERO) => None,
                Some(bound) => Some(bound),
                None => d.batch_bound,
            },
            rescue_interval: self.rescue_interval.unwrap_or(d.rescue_interval),
            keep_completed: self.keep_completed.or(d.keep_completed),
            shutdown_timeout: self.shutdown_timeout.unwrap_or(d.shutdown_timeout),
            vacuum_dead_rows: match self.vacuum_dead_rows {
                Some(0) => None,
                Some(rows) => Some(rows),
                None => d.vacuum_dead_rows,
            },
            retry: self.retry_policy()?,
        };
        check("concurrency", config.concurrency >= 1, || {
            "must be at least 1".into()
        })?;
        check("batch_size", config.batch_size >= 1, || {
            "must be at least 1".into()
        })?;
        check("poll_interval", !config.poll_interval.is_zero(), || {
            "must be positive".into()
        })?;
        check("rescue_interval", !config.rescue_interval.is_zero(), || {
            "must be positive".into()
        })?;
        check("lease", config.lease >= Duration::from_millis(300), || {
            "must be at least 300ms (heartbeats run every third of it)".into()
        })?;
        check(
            "batch_bound",
            config
                .batch_bound
                .is_none_or(|bound| bound >= Duration::from_millis(10) && bound <= config.lease),
            || "must be 0 (off) or between 10ms and the lease".into(),
        )?;
        Ok(config)
    }
}

/// Sandbox settings: the engine and every attempt's limits. Unset ones fall back to the config
/// file, then to the defaults shown.
#[derive(Debug, Clone, Default, Deserialize, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct SandboxSettings {
    /// Wall-clock time per attempt, instantiation included [default: 60s]
    #[arg(long, value_parser = parse_duration)]
    #[serde(default, with = "humantime_serde")]
    pub timeout: Option<Duration>,
    /// Time per attempt that the guest may spend executing Wasm [default: 30s]
    #[arg(long, value_parser = parse_duration)]
    #[serde(default, with = "humantime_serde")]
    pub cpu_budget: Option<Duration>,
    /// Linear memory per attempt [default: 128MiB]
    #[arg(long, value_parser = parse_size)]
    pub memory: Option<ByteSize>,
    /// Most memory any attempt may get: the ceiling for plugin manifests [default: 4GiB]
    #[arg(long, value_parser = parse_size)]
    pub max_memory: Option<ByteSize>,
    /// The memory caps of all attempts together: an attempt waits for room before it starts
    /// [default: half the machine's memory, or of the cgroup's limit if lower]
    #[arg(long, value_parser = parse_size)]
    pub memory_budget: Option<ByteSize>,
    /// Longest wall-clock time a tenant's override may give an attempt [default: 1h]
    #[arg(long, value_parser = parse_duration)]
    #[serde(default, with = "humantime_serde")]
    pub max_timeout: Option<Duration>,
    /// Most Wasm execution time a tenant's override may give an attempt [default: 1h]
    #[arg(long, value_parser = parse_duration)]
    #[serde(default, with = "humantime_serde")]
    pub max_cpu_budget: Option<Duration>,
    /// Largest payload handed to a guest; larger jobs fail [default: 1MiB]
    #[arg(long, value_parser = parse_size)]
    pub max_payload: Option<ByteSize>,
    /// Largest result a guest may return; larger ones fail the job [default: 1MiB]
    #[arg(long, value_parser = parse_size)]
    pub max_result: Option<ByteSize>,
    /// Guest stdout, and stderr, kept per attempt [default: 16KiB]
    #[arg(long, value_parser = parse_size)]
    pub max_output: Option<ByteSize>,
    /// The last bytes of each attempt's guest log (lines, stdout, stderr) kept with the job,
    /// for `runner jobs show` and the dashboard; 0 keeps none [default: 16KiB]
    #[arg(long, value_parser = parse_size)]
    pub keep_guest_log: Option<ByteSize>,
    /// Wasm stack per instance [default: 512KiB]
    #[arg(long, value_parser = parse_size)]
    pub max_stack: Option<ByteSize>,
    /// Sandbox instances alive at once; keep it at least --concurrency [default: 1000]
    #[arg(long)]
    pub instances: Option<u32>,
    /// Linear memory per sandbox slot kept resident between jobs, for faster starts [default: 2MiB]
    #[arg(long, value_parser = parse_size)]
    pub keep_resident: Option<ByteSize>,
}

impl SandboxSettings {
    /// These settings, with unset ones taken from `fallback`.
    pub fn or(self, fallback: SandboxSettings) -> SandboxSettings {
        SandboxSettings {
            timeout: self.timeout.or(fallback.timeout),
            cpu_budget: self.cpu_budget.or(fallback.cpu_budget),
            memory: self.memory.or(fallback.memory),
            max_memory: self.max_memory.or(fallback.max_memory),
            memory_budget: self.memory_budget.or(fallback.memory_budget),
            max_timeout: self.max_timeout.or(fallback.max_timeout),
            max_cpu_budget: self.max_cpu_budget.or(fallback.max_cpu_budget),
            max_payload: self.max_payload.or(fallback.max_payload),
            max_result: self.max_result.or(fallback.max_result),
            max_output: self.max_output.or(fallback.max_output),
            keep_guest_log: self.keep_guest_log.or(fallback.keep_guest_log),
            max_stack: self.max_stack.or(fallback.max_stack),
            instances: self.instances.or(fallback.instances),
            keep_resident: self.keep_resident.or(fallback.keep_resident),
        }
    }

    /// The engine configuration and per-attempt limits these settings describe, defaults
    /// filled in and checked.
    pub fn resolve(&self) -> Result<(SandboxConfig, Limits), ConfigError> {
        let (c, l) = (SandboxConfig::default(), Limits::default());
        let size = |setting: Option<ByteSize>, default: usize| {
            setting.map_or(default, |s| {
                usize::try_from(s.as_u64()).unwrap_or(usize::MAX)
            })
        };
        let limits = Limits {
            timeout: self.timeout.unwrap_or(l.timeout),
            cpu_budget: self.cpu_budget.unwrap_or(l.cpu_budget),
            memory: self.memory.map_or(l.memory, |m| m.as_u64()),
            max_payload: size(self.max_payload, l.max_payload),
            max_result: size(self.max_result, l.max_result),
            max_output: size(self.max_output, l.max_output),
            keep_log: size(self.keep_guest_log, l.keep_log),
            ..l
        };
        let config = SandboxConfig {
            instances: self.instances.unwrap_or(c.instances),
            max_memory: self.max_memory.map_or(c.max_memory, |m| m.as_u64()),
            memory_budget: self.memory_budget.map_or(c.memory_budget, |m| m.as_u64()),
            max_timeout: self.max_timeout.unwrap_or(c.max_timeout),
            max_cpu_budget: self.max_cpu_budget.unwrap_or(c.max_cpu_budget),
            max_stack: size(self.max_stack, c.max_stack),
            keep_resident: size(self.keep_resident, c.keep_resident),
            epoch_tick: c.epoch_tick,
            http: c.http,
        };
        let positive = || "must be positive".to_string();
        check("timeout", !limits.timeout.is_zero(), positive)?;
        check("cpu_budget", !limits.cpu_budget.is_zero(), positive)?;
        check("max_timeout", limits.timeout <= config.max_timeout, || {
            "must be at least timeout".into()
        })?;
        check(
            "max_cpu_budget",
            limits.cpu_budget <= config.max_cpu_budget,
            || "must be at least cpu_budget".into(),
        )?;
        check(
            "max_memory",
            (1 << 20..=4 << 30).contains(&config.max_memory),
            || "must be between 1MiB and 4GiB".into(),
        )?;
        check(
            "memory",
            (1 << 20..=config.max_memory).contains(&limits.memory),
            || "must be between 1MiB and max_memory".into(),
        )?;
        check(
            "memory_budget",
            limits.memory <= config.memory_budget,
            || {
                format!(
                    "{} cannot hold one attempt's memory ({}); raise it or lower memory",
                    ByteSize(config.memory_budget),
                    ByteSize(limits.memory)
                )
            },
        )?;
        check(
            "max_stack",
            (64 << 10..=64 << 20).contains(&config.max_stack),
            || "must be between 64KiB and 64MiB".into(),
        )?;
        check(
            "max_payload",
            limits.max_payload <= crate::job::MAX_PAYLOAD_BYTES,
            || "must be at most 16MiB, the largest payload a job can be enqueued with".into(),
        )?;
        check("instances", config.instances >= 1, || {
            "must be at least 1".into()
        })?;
        check(
            "keep_resident",
            config.keep_resident as u64 <= config.max_memory,
            || "must be at most max_memory".into(),
        )?;
        Ok((config, limits))
    }
}

fn check(key: &'static str, ok: bool, reason: impl FnOnce() -> String) -> Result<(), ConfigError> {
    if ok {
        Ok(())
    } else {
        Err(ConfigError::Invalid {
            key,
            reason: reason(),
        })
    }
}

/// Parses a human duration (`90s`, `5m`, `1h30m`, `250ms`).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    if text.trim_start().starts_with('-') {
        return Err(format!(
            "{text:?} is negative; durations must be zero or more"
        ));
    }
    humantime::parse_duration(text)
        .map_err(|e| format!("{text:?} is not a duration ({e}); write e.g. 90s, 5m, 1h"))
}

/// Parses a byte size (`128MiB`, `512KiB`, `1GiB`, `65536`).
pub fn parse_size(text: &str) -> Result<ByteSize, String> {
    text.parse::<ByteSize>()
        .map_err(|e| format!("{text:?} is not a size ({e}); write e.g. 128MiB, 512KiB"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_override_file_override_defaults() {
        let file: FileConfig = toml::from_str(
            r#"
            database_url = "postgres://db/x"
            [worker]
            concurrency = 8
            poll_interval = "2s"
            backoff = "quadratic"
            "#,
        )
        .unwrap();
        let flags = WorkerSettings {
            concurrency: Some(3),
            ..Default::default()
        };
        let config = flags.or(file.worker).resolve().unwrap();
        assert_eq!(config.concurrency, 3);
        assert_eq!(config.poll_interval, Duration::from_secs(2));
        assert_eq!(config.retry.backoff.kind, BackoffKind::Quadratic);
        assert_eq!(config.lease, WorkerConfig::default().lease);
    }

    #[test]
    fn bad_files_name_the_key() {
        let err = toml::from_str::<FileConfig>("[worker]\nconcurency = 3").unwrap_err();
        assert!(err.to_string().contains("concurency"), "{err}");
        let err = toml::from_str::<FileConfig>("[worker]\nlease = \"soon\"").unwrap_err();
        assert!(err.to_string().contains("lease"), "{err}");
    }

    #[test]
    fn invalid_values_are_refused() {
        let zero = WorkerSettings {
            concurrency: Some(0),
            ..Default::default()
        };
        assert!(matches!(
            zero.resolve(),
            Err(ConfigError::Invalid {
                key: "concurrency",
                ..
            })
        ));
        let inverted = WorkerSettings {
            backoff_base: Some(Duration::from_secs(10)),
            backoff_cap: Some(Duration::from_secs(1)),
            ..Default::default()
        };
        assert!(matches!(
            inverted.resolve(),
            Err(ConfigError::Invalid {
                key: "backoff_base",
                ..
            })
        ));
    }

    #[test]
    fn sandbox_settings_resolve_and_check() {
        let file: FileConfig =
            toml::from_str("[sandbox]\nmemory = \"64MiB\"\ntimeout = \"5s\"").unwrap();
        let flags = SandboxSettings {
            timeout: Some(Duration::from_secs(2)),
            ..Default::default()
        };
        let (config, limits) = flags.or(file.sandbox).resolve().unwrap();
        assert_eq!(limits.memory, 64 << 20);
        assert_eq!(config.max_memory, SandboxConfig::default().max_memory);
        assert_eq!(limits.timeout, Duration::from_secs(2));
        assert_eq!(limits.cpu_budget, Limits::default().cpu_budget);
        let tiny = SandboxSettings {
            memory: Some(ByteSize::kib(4)),
            ..Default::default()
        };
        assert!(matches!(
            tiny.resolve(),
            Err(ConfigError::Invalid { key: "memory", .. })
        ));
        let above_max = SandboxSettings {
            memory: Some(ByteSize::mib(256)),
            max_memory: Some(ByteSize::mib(128)),
            ..Default::default()
        };
        assert!(matches!(
            above_max.resolve(),
            Err(ConfigError::Invalid { key: "memory", .. })
        ));
        let file: FileConfig = toml::from_str("[sandbox]\nkeep_resident = \"8MiB\"").unwrap();
        assert_eq!(file.sandbox.resolve().unwrap().0.keep_resident, 8 << 20);
        let too_much = SandboxSettings {
            keep_resident: Some(ByteSize::gib(8)),
            ..Default::default()
        };
        assert!(matches!(
            too_much.resolve(),
            Err(ConfigError::Invalid {
                key: "keep_resident",
                ..
            })
        ));
        assert!(parse_size("lots").unwrap_err().contains("not a size"));
        assert_eq!(parse_size("512KiB"), Ok(ByteSize::kib(512)));
    }

    #[test]
    fn the_http_table_sets_network_and_request_limits_but_no_hosts() {
        let file: FileConfig = toml::from_str(
            "[http]\nallow_networks = [\"10.0.0.0/8\"]\nmax_concurrent = 8\nmax_requests = 5",
        )
        .unwrap();
        let (config, limits) = file.sandbox(SandboxSettings::default()).unwrap();
        assert_eq!(
            config.http.allow_networks,
            vec!["10.0.0.0/8".parse().unwrap()]
        );
        assert_eq!(
            (config.http.max_concurrent, limits.http.max_requests),
            (8, 5)
        );
        assert!(
            limits.http.hosts.plugin.is_empty(),
            "no host is granted by the runner"
        );
        let hosts: FileConfig =
            toml::from_str("[http]\nallowed_hosts = [\"https://a.test\"]").unwrap();
        let error = hosts
            .sandbox(SandboxSettings::default())
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("invalid setting http: http.allowed_hosts"),
            "{error}"
        );
    }

    #[test]
    fn durations_are_human() {
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert!(parse_duration("-5s").unwrap_err().contains("negative"));
        assert!(
            parse_duration("soon")
                .unwrap_err()
                .contains("not a duration")
        );
    }
}
