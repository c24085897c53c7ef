//! Tenant policy: what each tenant may run and how much of the runners it may take.
//!
//! Operators write it in the config file; a runner whose file has one publishes it to the
//! database at start ([`Queue::publish_tenants`]), where enqueue and claim enforce it for every
//! runner and client: the job types a tenant may use, its running jobs across all runners, its
//! start rate and its share of each claim. Runners read it back every few seconds
//! ([`follow`]) for the parts they apply themselves: the sandbox limit overrides (capped by the
//! runner's own maxima) and refusing a job whose type the tenant may not run.
//!
//! ```toml
//! [tenant_defaults]          # every tenant not listed below
//! max_running = 50
//!
//! [tenants.acme]             # unset keys come from [tenant_defaults]
//! max_running = 3            # jobs running at once, on all runners together
//! rate = 10.0                # jobs started per second, on all runners together
//! burst = 2                  # starts allowed at once after a pause [default: rate / 10, at least 1]
//! weight = 4                 # share of each claim against other tenants' [default: 1]
//! job_types = ["send-email"] # the types acme may enqueue and run [default: all]
//! memory = "256MiB"          # sandbox overrides, at most the runner's max_memory,
//! cpu_budget = "10s"         #   max_cpu_budget and max_timeout
//! timeout = "30s"
//!
//! [tenants.acme.http]        # narrows what plugins' manifests grant, never widens it
//! allowed_hosts = ["https://hooks.slack.com"]  # only these of the granted hosts
//! max_requests = 5           # request limits can only be lowered
//!
//! [tenants.acme.config]      # replaces the plugins' [config] values of these keys
//! repos = "acme/app"
//!
//! [tenants.acme.secrets]     # acme's own secret values: read by each runner, not published
//! github_token = { env = "ACME_GITHUB_TOKEN" }
//! ```

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use bytesize::ByteSize;
use serde::{Deserialize, Serialize};
use tokio::task::JoinHandle;

use crate::driver::Driver;
use crate::sandbox::{HttpDoor, HttpSettings, Limits, SandboxConfig};
use crate::secrets::{SecretTable, check_key};

/// The name under which the defaults are stored: not a valid tenant for the jobs table's
/// purposes, since no operator would name a tenant `*`.
pub const DEFAULTS: &str = "*";

/// How often a runner reloads the published policy.
pub const REFRESH: Duration = Duration::from_secs(5);

/// One `[tenants.<name>]` (or `[tenant_defaults]`) table of the config file.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantSettings {
    /// Jobs running at once, on all runners together.
    pub max_running: Option<u32>,
    /// Jobs started per second, on all runners together.
    pub rate: Option<f64>,
    /// Starts allowed at once after a pause.
    pub burst: Option<f64>,
    /// Share of each claim.
    pub weight: Option<u32>,
    /// Job types the tenant may enqueue and run.
    pub job_types: Option<Vec<String>>,
    /// Linear memory per attempt.
    pub memory: Option<ByteSize>,
    /// Wasm execution time per attempt.
    #[serde(default, with = "humantime_serde")]
    pub cpu_budget: Option<Duration>,
    /// Wall-clock time per attempt.
    #[serde(default, with = "humantime_serde")]
    pub timeout: Option<Duration>,
    /// Outgoing HTTP: hosts narrowing the plugins' grants, and lower request limits.
    pub http: Option<HttpSettings>,
    /// Values replacing the plugins' `[config]` values of the same keys.
    pub config: Option<BTreeMap<String, String>>,
    /// The tenant's own secret values (read by each runner, never stored in the database).
    pub secrets: Option<SecretTable>,
}

impl TenantSettings {
    fn or(&self, fallback: &TenantSettings) -> TenantSettings {
        TenantSettings {
            max_running: self.max_running.or(fallback.max_running),
            rate: self.rate.or(fallback.rate),
            burst: self.burst.or(fallback.burst),
            weight: self.weight.or(fallback.weight),
            job_types: self
                .job_types
                .clone()
                .or_else(|| fallback.job_types.clone()),
            memory: self.memory.or(fallback.memory),
            cpu_budget: self.cpu_budget.or(fallback.cpu_budget),
            timeout: self.timeout.or(fallback.timeout),
            http: match (&self.http, &fallback.http) {
                (Some(own), Some(fallback)) => Some(own.or(fallback)),
                (own, fallback) => own.clone().or_else(|| fallback.clone()),
            },
            config: match (&self.config, &fallback.config) {
                (Some(own), Some(fallback)) => {
                    let mut merged = fallback.clone();
                    merged.extend(own.clone());
                    Some(merged)
                }
                (own, fallback) => own.clone().or_else(|| fallback.clone()),
            },
            // Never inherited: [secrets] holds the values every tenant without its own gets.
            secrets: self.secrets.clone(),
        }
    }
}

/// One tenant's policy, checked, with the defaults filled in.
#[derive(Debug, Clone, PartialEq, Serialize, sqlx::FromRow)]
pub struct TenantPolicy {
    /// The tenant, or [`DEFAULTS`].
    pub tenant: String,
    /// Jobs running at once, on all runners together; `None`: no limit.
    pub max_running: Option<i32>,
    /// Jobs started per second; `None`: no limit.
    pub rate: Option<f64>,
    /// Starts allowed at once (the token bucket's size), when `rate` is set.
    pub burst: Option<f64>,
    /// Share of each claim against the other tenants with ripe jobs.
    pub weight: i32,
    /// Job types the tenant may enqueue and run; `None`: all.
    pub job_types: Option<Vec<String>>,
    /// Linear memory per attempt, in bytes; `None`: the job type's.
    pub memory: Option<i64>,
    /// Wasm execution time per attempt, in milliseconds; `None`: the job type's.
    pub cpu_budget_ms: Option<i64>,
    /// Wall-clock time per attempt, in milliseconds; `None`: the job type's.
    pub timeout_ms: Option<i64>,
    /// Outgoing HTTP: hosts narrowing the plugins' grants, and lower request limits.
    pub http: sqlx::types::Json<HttpSettings>,
    /// Values replacing the plugins' `[config]` values of the same keys.
    pub config: sqlx::types::Json<BTreeMap<String, String>>,
}

impl TenantPolicy {
    /// No limits: the policy of every tenant while none is published.
    pub fn unlimited(tenant: &str) -> Self {
        Self {
            tenant: tenant.to_owned(),
            max_running: None,
            rate: None,
            burst: None,
            weight: 1,
            job_types: None,
            memory: None,
            cpu_budget_ms: None,
            timeout_ms: None,
            http: Default::default(),
            config: Default::default(),
        }
    }

    fn resolve(
        tenant: &str,
        s: &TenantSettings,
        sandbox: &SandboxConfig,
    ) -> Result<Self, InvalidPolicy> {
        let invalid = |reason: String| InvalidPolicy(format!("tenant {tenant:?}: {reason}"));
        let millis = |d: Duration| i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
        if let Some(rate) = s.rate
            && !(rate.is_finite() && rate > 0.0)
        {
            return Err(invalid(format!("rate must be positive, not {rate}")));
        }
        if let Some(burst) = s.burst
            && !(burst.is_finite() && burst >= 1.0)
        {
            return Err(invalid(format!("burst must be at least 1, not {burst}")));
        }
        if s.max_running == Some(0) {
            return Err(invalid("max_running must be at least 1".into()));
        }
        let weight = s.weight.unwrap_or(1);
        if !(1..=1000).contains(&weight) {
            return Err(invalid(format!("weight must be 1 to 1000, not {weight}")));
        }
        let human = |d: Option<Duration>| d.map(humantime::Duration::from);
        let (largest_memory, bound) = sandbox.largest_memory();
        check_override(tenant, "memory", s.memory, ByteSize(largest_memory), bound)?;
        check_override(
            tenant,
            "cpu_budget",
            human(s.cpu_budget),
            sandbox.max_cpu_budget.into(),
            "max_cpu_budget",
        )?;
        check_override(
            tenant,
            "timeout",
            human(s.timeout),
            sandbox.max_timeout.into(),
            "max_timeout",
        )?;
        let http = s.http.clone().unwrap_or_default();
        http.check(HttpDoor::Tenant)
            .map_err(|e| invalid(e.to_string()))?;
        let config = s.config.clone().unwrap_or_default();
        for key in config.keys() {
            check_key(key).map_err(|e| invalid(format!("config: {e}")))?;
        }
        Ok(Self {
            http: sqlx::types::Json(http),
            config: sqlx::types::Json(config),
            tenant: tenant.to_owned(),
            max_running: s.max_running.map(|n| i32::try_from(n).unwrap_or(i32::MAX)),
            burst: s
                .rate
                .map(|rate| s.burst.unwrap_or((rate / 10.0).ceil().max(1.0))),
            rate: s.rate,
            weight: weight as i32,
            job_types: s.job_types.clone(),
            memory: s.memory.map(|m| m.as_u64() as i64),
            cpu_budget_ms: s.cpu_budget.map(millis),
            timeout_ms: s.timeout.map(millis),
        })
    }

    /// Whether the tenant may enqueue and run `job_type`.
    pub fn allows(&self, job_type: &str) -> bool {
        self.job_types
            .as_ref()
            .is_none_or(|types| types.iter().any(|t| t == job_type))
    }

    /// `base` (the job type's limits) with this tenant's overrides, capped by the runner's
    /// maxima: a policy published by another runner may allow more than this one does.
    pub fn limits(&self, base: &Limits, sandbox: &SandboxConfig) -> Limits {
        let duration = |ms: Option<i64>, base: Duration, max: Duration| {
            ms.map_or(base, |ms| Duration::from_millis(ms.max(1) as u64))
                .min(max)
        };
        let mut limits = Limits {
            memory: self
                .memory
                .map_or(base.memory, |m| m as u64)
                .min(sandbox.largest_memory().0),
            cpu_budget: duration(self.cpu_budget_ms, base.cpu_budget, sandbox.max_cpu_budget),
            timeout: duration(self.timeout_ms, base.timeout, sandbox.max_timeout),
            ..base.clone()
        };
        self.http.narrow(&mut limits.http);
        limits.config.override_with(&self.config);
        limits.jobs.tenant_job_types = self.job_types.as_deref().map(Arc::from);
        limits
    }
}

/// Refuses an override of zero, or one above `max`, the runner's setting `bound`.
fn check_override<T>(
    tenant: &str,
    key: &str,
    value: Option<T>,
    max: T,
    bound: &str,
) -> Result<(), InvalidPolicy>
where
    T: PartialOrd + Default + std::fmt::Display,
{
    let reason = match value {
        Some(value) if value == T::default() => format!("{key} must be positive"),
        Some(value) if value > max => {
            format!("{key} {value} is above this runner's {bound} {max}")
        }
        _ => return Ok(()),
    };
    Err(InvalidPolicy(format!("tenant {tenant:?}: {reason}")))
}

/// A tenant policy this runner cannot work with, and why (the config file reports it as its
/// `tenants` setting).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidPolicy(pub String);

/// Every tenant's policy: the named ones and the defaults for the rest.
#[derive(Debug, Clone, PartialEq)]
pub struct Tenants {
    named: HashMap<String, TenantPolicy>,
    defaults: TenantPolicy,
}

impl Default for Tenants {
    fn default() -> Self {
        Self {
            named: HashMap::new(),
            defaults: TenantPolicy::unlimited(DEFAULTS),
        }
    }
}

impl Tenants {
    /// The policy the config file's `[tenant_defaults]` and `[tenants.*]` tables describe,
    /// checked against the runner's maxima.
    pub fn from_settings(
        defaults: &TenantSettings,
        named: &BTreeMap<String, TenantSettings>,
        sandbox: &SandboxConfig,
    ) -> Result<Self, InvalidPolicy> {
        let mut tenants = Tenants {
            named: HashMap::new(),
            defaults: TenantPolicy::resolve(DEFAULTS, defaults, sandbox)?,
        };
        for (tenant, settings) in named {
            if tenant.is_empty() || tenant == DEFAULTS {
                return Err(InvalidPolicy(format!("{tenant:?} cannot name a tenant")));
            }
            let policy = TenantPolicy::resolve(tenant, &settings.or(defaults), sandbox)?;
            tenants.named.insert(tenant.clone(), policy);
        }
        Ok(tenants)
    }

    /// The policies as stored, one per row, the defaults among them.
    pub fn from_rows(rows: Vec<TenantPolicy>) -> Self {
        let mut tenants = Tenants::default();
        for row in rows {
            if row.tenant == DEFAULTS {
                tenants.defaults = row;
            } else {
                tenants.named.insert(row.tenant.clone(), row);
            }
        }
        tenants
    }

    /// Every row to store: the defaults, then the named tenants by name.
    pub fn rows(&self) -> Vec<&TenantPolicy> {
        let mut named: Vec<&TenantPolicy> = self.named.values().collect();
        named.sort_by(|a, b| a.tenant.cmp(&b.tenant));
        std::iter::once(&self.defaults).chain(named).collect()
    }

    /// The policy that applies to `tenant`.
    pub fn policy(&self, tenant: &str) -> &TenantPolicy {
        self.named.get(tenant).unwrap_or(&self.defaults)
    }
}

/// The policy a runner applies, swapped whole when a newer one is read.
pub type SharedTenants = Arc<ArcSwap<Tenants>>;

/// Reloads the published policy into `tenants` every [`REFRESH`], until the task is aborted.
pub fn follow(driver: Driver, tenants: SharedTenants) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut refresh = tokio::time::interval(REFRESH);
        loop {
            refresh.tick().await;
            match driver.tenants().await {
                Ok(latest) if **tenants.load() != latest => {
                    tracing::info!("tenant policy changed; applying it");
                    tenants.store(Arc::new(latest));
                }
                Ok(_) => {}
                Err(error) => tracing::warn!(%error, "cannot read the tenant policy; retrying"),
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{ConfigError, FileConfig};

    fn tenants(toml: &str) -> Result<Tenants, ConfigError> {
        let file: FileConfig = toml::from_str(toml).expect("valid TOML");
        Ok(file.tenants(&SandboxConfig::default())?.expect("a policy"))
    }

    #[test]
    fn a_tenants_http_table_narrows_hosts_and_lowers_limits_key_by_key() {
        let t = tenants(
            r#"
            [tenant_defaults.http]
            max_requests = 4
            [tenants.acme.http]
            allowed_hosts = ["https://hooks.slack.com"]
            "#,
        )
        .unwrap();
        let mut base = Limits::default();
        base.http.hosts.plugin = vec![
            "https://hooks.slack.com".parse().unwrap(),
            "https://api.github.com".parse().unwrap(),
        ]
        .into();
        let acme = t.policy("acme").limits(&base, &SandboxConfig::default());
        assert_eq!(acme.http.max_requests, 4, "from the defaults");
        assert_eq!(acme.http.hosts.tenant.as_deref().map(<[_]>::len), Some(1));
        let other = t.policy("globex").limits(&base, &SandboxConfig::default());
        assert_eq!(
            (other.http.max_requests, other.http.hosts.tenant.is_none()),
            (4, true)
        );
        assert_eq!(
            Tenants::from_rows(t.rows().into_iter().cloned().collect()),
            t
        );
    }

    #[test]
    fn named_tenants_fall_back_to_the_defaults_key_by_key() {
        let t = tenants(
            r#"
            [tenant_defaults]
            max_running = 10
            job_types = ["echo"]
            [tenants.acme]
            rate = 20.0
            weight = 3
            memory = "256MiB"
            "#,
        )
        .unwrap();
        let acme = t.policy("acme");
        assert_eq!(acme.max_running, Some(10));
        assert_eq!((acme.rate, acme.burst), (Some(20.0), Some(2.0)));
        assert_eq!(acme.weight, 3);
        assert_eq!(acme.memory, Some(256 << 20));
        assert!(acme.allows("echo") && !acme.allows("poison"));
        let other = t.policy("globex");
        assert_eq!((other.tenant.as_str(), other.rate), (DEFAULTS, None));
        assert_eq!(t.rows().len(), 2);
        assert_eq!(
            Tenants::from_rows(t.rows().into_iter().cloned().collect()),
            t
        );
    }

    #[test]
    fn bad_policies_name_the_tenant_and_the_key() {
        for (toml, expected) in [
            ("[tenants.a]\nrate = -1.0", "rate must be positive"),
            (
                "[tenants.a]\nburst = 0.5\nrate = 1.0",
                "burst must be at least 1",
            ),
            ("[tenants.a]\nweight = 0", "weight must be 1 to 1000"),
            (
                "[tenants.a]\nmax_running = 0",
                "max_running must be at least 1",
            ),
            (
                "[tenants.a]\nmemory = \"8GiB\"",
                "above this runner's max_memory",
            ),
            (
                "[tenants.a]\ntimeout = \"2h\"",
                "above this runner's max_timeout",
            ),
            ("[tenants.\"*\"]\nweight = 2", "cannot name a tenant"),
            (
                "[tenants.a.http]\nca_file = \"/ca.pem\"",
                "tenant \"a\": http.ca_file: only the runner's config file sets this",
            ),
        ] {
            let error = tenants(toml).unwrap_err().to_string();
            assert!(error.contains(expected), "{toml}: {error}");
        }
        let bad_host = "[tenants.a.http]\nallowed_hosts = [\"github.com\"]";
        let bad_host = toml::from_str::<FileConfig>(bad_host)
            .unwrap_err()
            .to_string();
        assert!(
            bad_host.contains("invalid host \"github.com\": no scheme"),
            "{bad_host}"
        );
        let unknown = toml::from_str::<FileConfig>("[tenants.a]\nmax_runing = 3").unwrap_err();
        assert!(unknown.to_string().contains("max_runing"));
    }

    #[test]
    fn overrides_are_capped_by_the_runners_maxima() {
        let policy = TenantPolicy {
            memory: Some(8 << 30),
            timeout_ms: Some(7_200_000),
            cpu_budget_ms: Some(500),
            ..TenantPolicy::unlimited("big")
        };
        let sandbox = SandboxConfig {
            max_memory: 1 << 30,
            ..SandboxConfig::default()
        };
        let limits = policy.limits(&Limits::default(), &sandbox);
        assert_eq!(limits.memory, 1 << 30);
        assert_eq!(limits.timeout, sandbox.max_timeout);
        let small_budget = SandboxConfig {
            memory_budget: 256 << 20,
            ..sandbox.clone()
        };
        let limits = policy.limits(&Limits::default(), &small_budget);
        assert_eq!(
            limits.memory,
            256 << 20,
            "no attempt gets more than the budget"
        );
        let error = TenantPolicy::resolve(
            "big",
            &toml::from_str("memory = \"512MiB\"").unwrap(),
            &small_budget,
        )
        .unwrap_err();
        assert!(
            error
                .to_string()
                .contains("above this runner's memory_budget"),
            "{error}"
        );
        assert_eq!(limits.cpu_budget, Duration::from_millis(500));
        assert_eq!(limits.max_payload, Limits::default().max_payload);
    }

    #[test]
    fn no_tenant_tables_means_no_policy_to_publish() {
        let file: FileConfig = toml::from_str("[worker]\nconcurrency = 3").unwrap();
        assert!(file.tenants(&SandboxConfig::default()).unwrap().is_none());
    }
}
