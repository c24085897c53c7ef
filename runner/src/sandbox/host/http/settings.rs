//! The `[http]` table, as the runner's config file, a plugin's manifest and a tenant's
//! policy write it, and the per-attempt [`HttpLimits`] it resolves to.
//!
//! ```toml
//! [http]
//! allowed_hosts = ["https://api.github.com", "https://*.example.com:8443"]  # manifest, tenant
//! max_requests = 32             # requests per attempt
//! connect_timeout = "10s"       # DNS, TCP and TLS
//! first_byte_timeout = "30s"    # from sending the request to the response's head
//! between_bytes_timeout = "30s" # idle time while the response body streams
//! max_request_body = "16MiB"
//! max_response_body = "16MiB"
//! allow_networks = ["127.0.0.1/32"]      # runner only: networks the SSRF guard lets through
//! ca_file = "/etc/jobrunner/private-ca.pem"  # runner only: extra trusted roots (PEM)
//! max_concurrent = 256          # runner only: requests in flight across all its jobs
//! ```
//!
//! The manifest's values replace the runner's; a tenant's can only lower them, and its
//! `allowed_hosts` narrows the plugin's grant to the hosts both name.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytesize::ByteSize;
use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use super::grant::{HostGrant, HostPattern};

/// What one attempt may do over HTTP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpLimits {
    /// The hosts it may call.
    pub hosts: HostGrant,
    /// Requests per attempt.
    pub max_requests: u32,
    /// Time to resolve, connect and finish TLS (and to wait for a runner-wide slot).
    pub connect_timeout: Duration,
    /// Time from sending the request to the response's head.
    pub first_byte_timeout: Duration,
    /// Idle time allowed while the response body streams.
    pub between_bytes_timeout: Duration,
    /// Largest request body sent.
    pub max_request_body: u64,
    /// Largest response body received; the rest is cut off with an error.
    pub max_response_body: u64,
}

impl Default for HttpLimits {
    fn default() -> Self {
        Self {
            hosts: HostGrant::default(),
            max_requests: 32,
            connect_timeout: Duration::from_secs(10),
            first_byte_timeout: Duration::from_secs(30),
            between_bytes_timeout: Duration::from_secs(30),
            max_request_body: 16 << 20,
            max_response_body: 16 << 20,
        }
    }
}

/// The runner's network settings for outgoing HTTP, fixed for its lifetime.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpNetworkConfig {
    /// Networks the SSRF guard lets through although they are in a blocked range.
    pub allow_networks: Vec<IpNet>,
    /// A PEM file of extra trusted root certificates.
    pub ca_file: Option<PathBuf>,
    /// Requests in flight at once across all of the runner's jobs.
    pub max_concurrent: usize,
}

impl Default for HttpNetworkConfig {
    fn default() -> Self {
        Self {
            allow_networks: Vec::new(),
            ca_file: None,
            max_concurrent: 256,
        }
    }
}

/// Who writes an `[http]` table: each may set only its own keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HttpDoor {
    /// The runner's config file: limits and network settings, no hosts.
    Runner,
    /// A plugin's manifest: hosts and limits.
    Manifest,
    /// A tenant's policy: hosts (narrowing) and limits (lowering).
    Tenant,
}

/// An `[http]` table. Every key is optional; an absent one keeps the setting below it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpSettings {
    /// Hosts granted (manifest) or allowed (tenant).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allowed_hosts: Option<Vec<HostPattern>>,
    /// Requests per attempt.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_requests: Option<u32>,
    /// Time to resolve, connect and finish TLS.
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub connect_timeout: Option<Duration>,
    /// Time from sending the request to the response's head.
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub first_byte_timeout: Option<Duration>,
    /// Idle time allowed while the response body streams.
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub between_bytes_timeout: Option<Duration>,
    /// Largest request body sent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_request_body: Option<ByteSize>,
    /// Largest response body received.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_response_body: Option<ByteSize>,
    /// Runner only: networks the SSRF guard lets through.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allow_networks: Option<Vec<IpNet>>,
    /// Runner only: a PEM file of extra trusted root certificates.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// Runner only: requests in flight at once across all jobs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_concurrent: Option<usize>,
}

/// A key of an `[http]` table that cannot be used: `http.<key>` and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("http.{key}: {reason}")]
pub struct InvalidHttpSetting {
    /// The key, as spelled in the table.
    pub key: &'static str,
    /// Why.
    pub reason: String,
}

impl HttpSettings {
    /// These settings, with unset ones taken from `fallback`.
    pub fn or(&self, fallback: &HttpSettings) -> HttpSettings {
        let fallback = fallback.clone();
        let own = self.clone();
        HttpSettings {
            allowed_hosts: own.allowed_hosts.or(fallback.allowed_hosts),
            max_requests: own.max_requests.or(fallback.max_requests),
            connect_timeout: own.connect_timeout.or(fallback.connect_timeout),
            first_byte_timeout: own.first_byte_timeout.or(fallback.first_byte_timeout),
            between_bytes_timeout: own.between_bytes_timeout.or(fallback.between_bytes_timeout),
            max_request_body: own.max_request_body.or(fallback.max_request_body),
            max_response_body: own.max_response_body.or(fallback.max_response_body),
            allow_networks: own.allow_networks.or(fallback.allow_networks),
            ca_file: own.ca_file.or(fallback.ca_file),
            max_concurrent: own.max_concurrent.or(fallback.max_concurrent),
        }
    }

    /// Refuses keys `door` may not set, and values no request could work with.
    pub fn check(&self, door: HttpDoor) -> Result<(), InvalidHttpSetting> {
        let refuse = |key, reason: &str| {
            Err(InvalidHttpSetting {
                key,
                reason: reason.to_owned(),
            })
        };
        if door == HttpDoor::Runner && self.allowed_hosts.is_some() {
            return refuse(
                "allowed_hosts",
                "hosts are granted per plugin, in its manifest (and narrowed per tenant), not by the runner",
            );
        }
        if door != HttpDoor::Runner {
            let runner_only = [
                ("allow_networks", self.allow_networks.is_some()),
                ("ca_file", self.ca_file.is_some()),
                ("max_concurrent", self.max_concurrent.is_some()),
            ];
            if let Some((key, _)) = runner_only.into_iter().find(|(_, set)| *set) {
                return refuse(key, "only the runner's config file sets this");
            }
        }
        let zero = [
            ("max_requests", self.max_requests == Some(0)),
            (
                "connect_timeout",
                self.connect_timeout.is_some_and(|d| d.is_zero()),
            ),
            (
                "first_byte_timeout",
                self.first_byte_timeout.is_some_and(|d| d.is_zero()),
            ),
            (
                "between_bytes_timeout",
                self.between_bytes_timeout.is_some_and(|d| d.is_zero()),
            ),
            ("max_concurrent", self.max_concurrent == Some(0)),
        ];
        if let Some((key, _)) = zero.into_iter().find(|(_, zero)| *zero) {
            return refuse(key, "must be positive");
        }
        Ok(())
    }

    /// Applies the limits of a manifest (or the runner's file) over `limits`, and the
    /// manifest's grant.
    pub fn apply(&self, limits: &mut HttpLimits) {
        if let Some(hosts) = &self.allowed_hosts {
            limits.hosts.plugin = Arc::from(hosts.as_slice());
        }
        limits.max_requests = self.max_requests.unwrap_or(limits.max_requests);
        limits.connect_timeout = self.connect_timeout.unwrap_or(limits.connect_timeout);
        limits.first_byte_timeout = self.first_byte_timeout.unwrap_or(limits.first_byte_timeout);
        limits.between_bytes_timeout = self
            .between_bytes_timeout
            .unwrap_or(limits.between_bytes_timeout);
        limits.max_request_body = self
            .max_request_body
            .map_or(limits.max_request_body, |b| b.as_u64());
        limits.max_response_body = self
            .max_response_body
            .map_or(limits.max_response_body, |b| b.as_u64());
    }

    /// Applies a tenant's policy over `limits`: its hosts narrow the grant, its limits can
    /// only lower the job type's.
    pub fn narrow(&self, limits: &mut HttpLimits) {
        if let Some(hosts) = &self.allowed_hosts {
            limits.hosts.tenant = Some(Arc::from(hosts.as_slice()));
        }
        let lower = |own: Option<Duration>, base: Duration| own.map_or(base, |d| d.min(base));
        let lower_size =
            |own: Option<ByteSize>, base: u64| own.map_or(base, |b| b.as_u64().min(base));
        limits.max_requests = self
            .max_requests
            .map_or(limits.max_requests, |n| n.min(limits.max_requests));
        limits.connect_timeout = lower(self.connect_timeout, limits.connect_timeout);
        limits.first_byte_timeout = lower(self.first_byte_timeout, limits.first_byte_timeout);
        limits.between_bytes_timeout =
            lower(self.between_bytes_timeout, limits.between_bytes_timeout);
        limits.max_request_body = lower_size(self.max_request_body, limits.max_request_body);
        limits.max_response_body = lower_size(self.max_response_body, limits.max_response_body);
    }

    /// The runner's network settings, defaults filled in.
    pub fn network(&self) -> HttpNetworkConfig {
        let defaults = HttpNetworkConfig::default();
        HttpNetworkConfig {
            allow_networks: self.allow_networks.clone().unwrap_or_default(),
            ca_file: self.ca_file.clone(),
            max_concurrent: self.max_concurrent.unwrap_or(defaults.max_concurrent),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(toml: &str) -> HttpSettings {
        toml::from_str(toml).unwrap()
    }

    #[test]
    fn each_door_sets_only_its_own_keys() {
        let hosts = settings(r#"allowed_hosts = ["https://a.test"]"#);
        assert_eq!(
            hosts.check(HttpDoor::Runner).unwrap_err().key,
            "allowed_hosts"
        );
        hosts.check(HttpDoor::Manifest).unwrap();
        hosts.check(HttpDoor::Tenant).unwrap();
        let networks = settings(r#"allow_networks = ["127.0.0.1/32"]"#);
        networks.check(HttpDoor::Runner).unwrap();
        assert_eq!(
            networks.check(HttpDoor::Manifest).unwrap_err().key,
            "allow_networks"
        );
        assert_eq!(
            settings(r#"ca_file = "/ca.pem""#)
                .check(HttpDoor::Tenant)
                .unwrap_err()
                .key,
            "ca_file"
        );
        assert_eq!(
            settings("max_requests = 0")
                .check(HttpDoor::Manifest)
                .unwrap_err()
                .key,
            "max_requests"
        );
        assert_eq!(
            settings(r#"connect_timeout = "0s""#)
                .check(HttpDoor::Runner)
                .unwrap_err()
                .key,
            "connect_timeout"
        );
    }

    #[test]
    fn bad_values_are_refused_by_the_parser_with_the_key() {
        for (toml, needle) in [
            (r#"allowed_hosts = ["api.github.com"]"#, "no scheme"),
            (
                r#"allow_networks = ["127.0.0.1"]"#,
                "invalid IP address syntax",
            ),
            (r#"max_response_body = "lots""#, "max_response_body"),
            (r#"follow_redirects = true"#, "unknown field"),
        ] {
            let error = toml::from_str::<HttpSettings>(toml)
                .unwrap_err()
                .to_string();
            assert!(error.contains(needle), "{toml}: {error}");
        }
    }

    #[test]
    fn a_manifest_replaces_and_a_tenant_only_lowers() {
        let mut limits = HttpLimits::default();
        settings(
            r#"allowed_hosts = ["https://a.test"]
            max_requests = 100
            max_response_body = "64MiB""#,
        )
        .apply(&mut limits);
        assert_eq!(
            (limits.max_requests, limits.max_response_body),
            (100, 64 << 20)
        );
        assert_eq!(limits.hosts.plugin.len(), 1);
        settings(
            r#"allowed_hosts = ["https://b.test"]
            max_requests = 1000
            max_response_body = "1MiB""#,
        )
        .narrow(&mut limits);
        assert_eq!(
            (limits.max_requests, limits.max_response_body),
            (100, 1 << 20)
        );
        assert_eq!(
            limits.hosts.tenant.as_ref().unwrap()[0].to_string(),
            "https://b.test"
        );
    }

    #[test]
    fn a_tenant_policy_round_trips_through_json() {
        let policy = settings(
            r#"allowed_hosts = ["https://a.test"]
            connect_timeout = "2s"
            max_response_body = "1MiB""#,
        );
        let json = serde_json::to_string(&policy).unwrap();
        assert_eq!(serde_json::from_str::<HttpSettings>(&json).unwrap(), policy);
        assert_eq!(
            serde_json::to_string(&HttpSettings::default()).unwrap(),
            "{}"
        );
    }
}
