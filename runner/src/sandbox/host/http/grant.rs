//! Which hosts a guest may call: the patterns a plugin's manifest grants
//! (`scheme://host[:port]`, `*.` for subdomains), narrowed by its tenant's policy.

use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

use http::Uri;
use http::uri::Scheme;
use serde::{Deserialize, Serialize};

/// One granted origin: `http` or `https`, a host name (or `*.` and a domain, for its
/// subdomains but not the domain itself) or IP literal, and a port (the scheme's if omitted).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct HostPattern {
    https: bool,
    host: HostMatch,
    port: u16,
    text: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum HostMatch {
    /// This host exactly (lowercase; an IPv6 literal without brackets).
    Exact(String),
    /// Any host ending in this suffix, which starts with a dot.
    Subdomains(String),
}

/// A host pattern that cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid host {text:?}: {reason} (expected scheme://host[:port], e.g. \"https://api.example.com\" or \"https://*.example.com:8443\")"
)]
pub struct BadHostPattern {
    text: String,
    reason: &'static str,
}

impl std::str::FromStr for HostPattern {
    type Err = BadHostPattern;

    fn from_str(text: &str) -> Result<Self, BadHostPattern> {
        let bad = |reason| BadHostPattern {
            text: text.to_owned(),
            reason,
        };
        let (scheme, rest) = text.split_once("://").ok_or_else(|| bad("no scheme"))?;
        let https = match scheme {
            "https" => true,
            "http" => false,
            _ => return Err(bad("the scheme must be http or https")),
        };
        let authority = rest.strip_suffix('/').unwrap_or(rest);
        if authority.contains(['/', '?', '#']) {
            return Err(bad("a grant names an origin, without a path or query"));
        }
        if authority.contains('@') {
            return Err(bad("user names are not part of a grant"));
        }
        let (host, port) =
            split_port(authority).ok_or_else(|| bad("the port is not a number from 1 to 65535"))?;
        let port = port.unwrap_or(if https { 443 } else { 80 });
        let host = host.to_ascii_lowercase();
        let host = if let Some(domain) = host.strip_prefix("*.") {
            check_name(domain).map_err(bad)?;
            HostMatch::Subdomains(format!(".{domain}"))
        } else if let Some(v6) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
            let ip: IpAddr = v6.parse().map_err(|_| bad("not an IPv6 address"))?;
            HostMatch::Exact(ip.to_string())
        } else {
            check_name(&host).map_err(bad)?;
            HostMatch::Exact(host)
        };
        Ok(Self {
            https,
            host,
            port,
            text: text.to_owned(),
        })
    }
}

/// `host[:port]`, the port checked; `None` if it is not a port.
fn split_port(authority: &str) -> Option<(&str, Option<u16>)> {
    let colon = match authority.rfind(':') {
        Some(i) if !authority[i..].contains(']') => i,
        _ => return Some((authority, None)),
    };
    let port: u16 = authority[colon + 1..].parse().ok()?;
    (port != 0).then_some((&authority[..colon], Some(port)))
}

fn check_name(host: &str) -> Result<(), &'static str> {
    if host.is_empty() {
        return Err("no host");
    }
    if host.contains('*') {
        return Err("a wildcard is only allowed as the first label, as in *.example.com");
    }
    let valid = host.split('.').all(|label| {
        !label.is_empty()
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
    });
    if valid {
        Ok(())
    } else {
        Err("not a host name")
    }
}

impl TryFrom<String> for HostPattern {
    type Error = BadHostPattern;

    fn try_from(text: String) -> Result<Self, BadHostPattern> {
        text.parse()
    }
}

impl From<HostPattern> for String {
    fn from(pattern: HostPattern) -> String {
        pattern.text
    }
}

impl fmt::Display for HostPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl HostPattern {
    /// Whether a request to `destination` is within this grant.
    pub fn matches(&self, destination: &Destination) -> bool {
        self.https == destination.https
            && self.port == destination.port
            && match &self.host {
                HostMatch::Exact(host) => *host == destination.host,
                HostMatch::Subdomains(suffix) => {
                    destination.host.len() > suffix.len()
                        && destination.host.ends_with(suffix.as_str())
                }
            }
    }
}

/// Where a request goes: scheme, host (lowercase, an IPv6 literal without brackets) and port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Destination {
    /// `https` rather than `http`.
    pub https: bool,
    /// The host as the request names it: what DNS resolves and TLS verifies.
    pub host: String,
    /// The port, the scheme's default if the request names none.
    pub port: u16,
}

impl Destination {
    /// The destination of a request for `uri`; `None` if it has no host or its scheme is
    /// neither `http` nor `https`.
    pub fn of(uri: &Uri) -> Option<Self> {
        let https = match uri.scheme() {
            Some(s) if *s == Scheme::HTTPS => true,
            Some(s) if *s == Scheme::HTTP => false,
            _ => return None,
        };
        let host = uri.host()?;
        let host = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        let host = match host.parse::<IpAddr>() {
            Ok(ip) => ip.to_string(),
            Err(_) => host.trim_end_matches('.').to_ascii_lowercase(),
        };
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        Some(Self { https, host, port })
    }

    /// The host as an IP address, if it is a literal.
    pub fn ip(&self) -> Option<IpAddr> {
        self.host.parse().ok()
    }
}

impl fmt::Display for Destination {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = if self.https { "https" } else { "http" };
        match self.ip() {
            Some(IpAddr::V6(ip)) => write!(f, "{scheme}://[{ip}]:{}", self.port),
            _ => write!(f, "{scheme}://{}:{}", self.host, self.port),
        }
    }
}

/// The hosts one attempt may call: its plugin's grant, narrowed by its tenant's list if the
/// tenant has one. Empty by default: no HTTP at all.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostGrant {
    /// What the plugin's manifest grants.
    pub plugin: Arc<[HostPattern]>,
    /// What the tenant's policy allows, if it narrows the grant.
    pub tenant: Option<Arc<[HostPattern]>>,
}

/// Why a request was refused by the grant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    /// The plugin's manifest grants no host.
    #[error("the plugin's manifest grants no HTTP access ([http] allowed_hosts)")]
    NoGrant,
    /// The plugin's manifest does not grant this host.
    #[error("the host is not in the plugin's [http] allowed_hosts")]
    NotGranted,
    /// The plugin grants it, but the tenant's policy does not allow it.
    #[error("the tenant's policy does not allow the host")]
    NarrowedByTenant,
}

impl HostGrant {
    /// Whether a request to `destination` may be sent.
    pub fn check(&self, destination: &Destination) -> Result<(), Denied> {
        if self.plugin.is_empty() {
            return Err(Denied::NoGrant);
        }
        if !self.plugin.iter().any(|p| p.matches(destination)) {
            return Err(Denied::NotGranted);
        }
        match &self.tenant {
            Some(tenant) if !tenant.iter().any(|p| p.matches(destination)) => {
                Err(Denied::NarrowedByTenant)
            }
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pattern(text: &str) -> HostPattern {
        text.parse().unwrap()
    }

    fn to(url: &str) -> Destination {
        Destination::of(&url.parse().unwrap()).unwrap()
    }

    #[test]
    fn exact_hosts_match_scheme_host_and_port() {
        let github = pattern("https://api.github.com");
        assert!(github.matches(&to("https://api.github.com/repos")));
        assert!(github.matches(&to("https://API.GitHub.com:443/")));
        assert!(!github.matches(&to("http://api.github.com/")));
        assert!(!github.matches(&to("https://api.github.com:8443/")));
        assert!(!github.matches(&to("https://evil-api.github.com/")));
        assert!(!github.matches(&to("https://api.github.com.evil.test/")));
    }

    #[test]
    fn wildcards_match_subdomains_not_the_domain() {
        let any = pattern("https://*.example.com:8443");
        assert!(any.matches(&to("https://a.example.com:8443/")));
        assert!(any.matches(&to("https://a.b.example.com:8443/")));
        assert!(!any.matches(&to("https://example.com:8443/")));
        assert!(!any.matches(&to("https://a.example.com/")));
        assert!(!any.matches(&to("https://aexample.com:8443/")));
    }

    #[test]
    fn ip_literals_match_in_canonical_form() {
        assert!(pattern("http://127.0.0.1:8080").matches(&to("http://127.0.0.1:8080/x")));
        assert!(pattern("http://[::1]:8080").matches(&to("http://[0:0::1]:8080/")));
        assert!(!pattern("http://[::1]:8080").matches(&to("http://127.0.0.1:8080/")));
    }

    #[test]
    fn bad_patterns_are_refused_with_the_reason() {
        for (text, reason) in [
            ("api.github.com", "no scheme"),
            ("ftp://example.com", "http or https"),
            ("https://example.com/path", "without a path"),
            ("https://user@example.com", "user names"),
            ("https://example.com:0", "port"),
            ("https://example.com:99999", "port"),
            ("https://a.*.example.com", "wildcard"),
            ("https://*", "wildcard"),
            ("https://", "no host"),
            ("https://exa mple.com", "not a host name"),
            ("https://[zz]", "IPv6"),
        ] {
            let error = text.parse::<HostPattern>().unwrap_err().to_string();
            assert!(error.contains(reason), "{text}: {error}");
        }
        assert_eq!(
            pattern("https://example.com/").to_string(),
            "https://example.com/"
        );
    }

    #[test]
    fn a_tenant_narrows_and_never_widens() {
        let plugin: Arc<[HostPattern]> =
            vec![pattern("https://a.test"), pattern("https://b.test")].into();
        let mut grant = HostGrant {
            plugin,
            tenant: None,
        };
        assert_eq!(grant.check(&to("https://b.test/")), Ok(()));
        grant.tenant = Some(vec![pattern("https://a.test"), pattern("https://c.test")].into());
        assert_eq!(grant.check(&to("https://a.test/")), Ok(()));
        assert_eq!(
            grant.check(&to("https://b.test/")),
            Err(Denied::NarrowedByTenant)
        );
        assert_eq!(grant.check(&to("https://c.test/")), Err(Denied::NotGranted));
        assert_eq!(
            HostGrant::default().check(&to("https://a.test/")),
            Err(Denied::NoGrant)
        );
    }
}
