//! The SSRF guard: which IP addresses a guest's request may connect to. Everything public,
//! nothing that reaches the runner's own machine or networks (loopback, private, link-local
//! with the cloud metadata address, CGNAT, unspecified, multicast, broadcast, reserved),
//! unless the operator allows a network (`[http] allow_networks`). It is checked on the
//! address actually connected to, after DNS, so a name cannot smuggle one in.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use std::sync::LazyLock;

use ipnet::IpNet;

/// IPv4 ranges a guest may not reach, with the name a refusal gives. The first match names it.
const BLOCKED_V4: &[(&str, &str)] = &[
    ("0.0.0.0/8", "unspecified (this network)"),
    ("10.0.0.0/8", "private (RFC 1918)"),
    ("100.64.0.0/10", "shared address space (CGNAT)"),
    ("127.0.0.0/8", "loopback"),
    ("169.254.0.0/16", "link-local (cloud metadata)"),
    ("172.16.0.0/12", "private (RFC 1918)"),
    ("192.0.0.0/24", "IETF protocol assignments"),
    ("192.0.2.0/24", "documentation"),
    ("192.88.99.0/24", "6to4 relay anycast"),
    ("192.168.0.0/16", "private (RFC 1918)"),
    ("198.18.0.0/15", "benchmarking"),
    ("198.51.100.0/24", "documentation"),
    ("203.0.113.0/24", "documentation"),
    ("224.0.0.0/4", "multicast"),
    ("255.255.255.255/32", "broadcast"),
    ("240.0.0.0/4", "reserved"),
];

/// IPv6 ranges a guest may not reach. Addresses that embed an IPv4 address (mapped, NAT64,
/// 6to4) are also checked as that IPv4 address.
const BLOCKED_V6: &[(&str, &str)] = &[
    ("::/128", "unspecified"),
    ("::1/128", "loopback"),
    ("::/96", "IPv4-compatible (deprecated)"),
    ("64:ff9b:1::/48", "local-use NAT64"),
    ("100::/64", "discard-only"),
    ("2001:db8::/32", "documentation"),
    ("2001::/23", "IETF protocol assignments"),
    ("fc00::/7", "unique local (private)"),
    ("fe80::/10", "link-local"),
    ("fec0::/10", "site-local (deprecated)"),
    ("ff00::/8", "multicast"),
];

/// A refused address, and the range that refused it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "{ip} is a {range} address, which guests may not reach (allow its network in the runner's [http] allow_networks)"
)]
pub struct Blocked {
    /// The address refused.
    pub ip: IpAddr,
    /// The name of the blocked range it is in.
    pub range: &'static str,
}

/// The guard: the blocked ranges, less the networks the operator allows.
#[derive(Debug, Clone, Default)]
pub struct AddressGuard {
    allowed: Vec<IpNet>,
}

impl AddressGuard {
    /// A guard that lets `allowed` networks through, whatever range they are in.
    pub fn new(allowed: Vec<IpNet>) -> Self {
        Self { allowed }
    }

    /// Whether a guest may connect to `ip`.
    pub fn check(&self, ip: IpAddr) -> Result<(), Blocked> {
        let embedded = match ip {
            IpAddr::V6(v6) => embedded_v4(v6).map(IpAddr::V4),
            IpAddr::V4(_) => None,
        };
        let candidates = [Some(ip), embedded];
        if candidates
            .iter()
            .flatten()
            .any(|ip| self.allowed.iter().any(|net| net.contains(ip)))
        {
            return Ok(());
        }
        match candidates.into_iter().flatten().find_map(blocked_range) {
            Some(range) => Err(Blocked { ip, range }),
            None => Ok(()),
        }
    }
}

/// Both tables, parsed once.
static BLOCKED: LazyLock<Vec<(IpNet, &'static str)>> = LazyLock::new(|| {
    let v4 = BLOCKED_V4
        .iter()
        .map(|(net, name)| (IpNet::V4(net.parse().expect("a valid network")), *name));
    let v6 = BLOCKED_V6
        .iter()
        .map(|(net, name)| (IpNet::V6(net.parse().expect("a valid network")), *name));
    v4.chain(v6).collect()
});

fn blocked_range(ip: IpAddr) -> Option<&'static str> {
    BLOCKED
        .iter()
        .find(|(net, _)| net.contains(&ip))
        .map(|(_, name)| *name)
}

/// The IPv4 address inside an IPv4-mapped (`::ffff:a.b.c.d`), NAT64 (`64:ff9b::a.b.c.d`) or
/// 6to4 (`2002:aabb:ccdd::`) address: each reaches that IPv4 address.
fn embedded_v4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    let s = ip.segments();
    let low = Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8);
    match s {
        [0, 0, 0, 0, 0, 0xffff, _, _] => Some(low),
        [0x64, 0xff9b, 0, 0, 0, 0, _, _] => Some(low),
        [0x2002, a, b, ..] => Some(Ipv4Addr::new(
            (a >> 8) as u8,
            a as u8,
            (b >> 8) as u8,
            b as u8,
        )),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(guard: &AddressGuard, ip: &str) -> Option<&'static str> {
        guard.check(ip.parse().unwrap()).err().map(|b| b.range)
    }

    #[test]
    fn every_blocked_range_is_a_valid_network() {
        assert_eq!(BLOCKED.len(), BLOCKED_V4.len() + BLOCKED_V6.len());
    }

    #[test]
    fn refuses_what_reaches_the_machine_and_its_networks() {
        let guard = AddressGuard::default();
        for (ip, range) in [
            ("127.0.0.1", "loopback"),
            ("127.255.0.9", "loopback"),
            ("10.1.2.3", "private (RFC 1918)"),
            ("172.31.255.255", "private (RFC 1918)"),
            ("192.168.1.1", "private (RFC 1918)"),
            ("169.254.169.254", "link-local (cloud metadata)"),
            ("100.100.100.200", "shared address space (CGNAT)"),
            ("0.0.0.0", "unspecified (this network)"),
            ("224.0.0.1", "multicast"),
            ("255.255.255.255", "broadcast"),
            ("240.0.0.1", "reserved"),
            ("::", "unspecified"),
            ("::1", "loopback"),
            ("fd00::1", "unique local (private)"),
            ("fe80::1", "link-local"),
            ("ff02::1", "multicast"),
            ("::ffff:127.0.0.1", "loopback"),
            ("::ffff:169.254.169.254", "link-local (cloud metadata)"),
            ("64:ff9b::a9fe:a9fe", "link-local (cloud metadata)"),
            ("2002:a00:1::", "private (RFC 1918)"),
            ("fd00:ec2::254", "unique local (private)"),
        ] {
            assert_eq!(refused(&guard, ip), Some(range), "{ip}");
        }
    }

    #[test]
    fn lets_public_addresses_through() {
        let guard = AddressGuard::default();
        for ip in [
            "1.1.1.1",
            "140.82.112.6",
            "172.32.0.1",
            "2606:4700::1111",
            "::ffff:8.8.8.8",
            "2002:808:808::",
        ] {
            assert_eq!(refused(&guard, ip), None, "{ip}");
        }
    }

    #[test]
    fn the_operator_allows_networks_and_only_those() {
        let guard = AddressGuard::new(vec![
            "127.0.0.1/32".parse().unwrap(),
            "fd12::/16".parse().unwrap(),
        ]);
        assert_eq!(refused(&guard, "127.0.0.1"), None);
        assert_eq!(refused(&guard, "::ffff:127.0.0.1"), None);
        assert_eq!(refused(&guard, "fd12::5"), None);
        assert_eq!(refused(&guard, "127.0.0.2"), Some("loopback"));
        assert_eq!(refused(&guard, "::1"), Some("loopback"));
        assert_eq!(
            refused(&guard, "169.254.169.254"),
            Some("link-local (cloud metadata)")
        );
    }
}
