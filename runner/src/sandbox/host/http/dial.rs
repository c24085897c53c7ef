//! Resolving a granted host and connecting to one of its addresses that the guard lets
//! through. The address checked is the address connected to: a DNS answer cannot change
//! between the check and the connection, because there is only one answer, used for both.

use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};

use super::guard::{AddressGuard, Blocked};

/// Why no connection was made.
#[derive(Debug, thiserror::Error)]
pub enum DialError {
    /// The name did not resolve.
    #[error("cannot resolve {host}: {source}")]
    Resolve {
        /// The host name.
        host: String,
        /// The resolver's error.
        source: io::Error,
    },
    /// Every address the name resolved to is refused by the guard (the first is named).
    #[error("{host} resolved only to refused addresses: {blocked}")]
    Blocked {
        /// The host name.
        host: String,
        /// The first refused address.
        blocked: Blocked,
    },
    /// The addresses allowed refused or failed the connection (the last error is kept).
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        /// The last address tried.
        addr: SocketAddr,
        /// Its error.
        source: io::Error,
    },
}

/// The addresses of `host` (a name or IP literal) at `port`. A literal is not looked up.
pub async fn resolve(host: &str, port: u16) -> Result<Vec<SocketAddr>, DialError> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(vec![SocketAddr::new(ip, port)]);
    }
    let resolve_error = |source| DialError::Resolve {
        host: host.to_owned(),
        source,
    };
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host, port))
        .await
        .map_err(resolve_error)?
        .collect();
    if addrs.is_empty() {
        return Err(resolve_error(io::Error::new(
            io::ErrorKind::NotFound,
            "no addresses",
        )));
    }
    Ok(addrs)
}

/// Connects with `connect` to the first of `addrs` that the guard lets through and that
/// accepts; each address is checked right before it is connected to.
pub async fn dial<S, F, C>(
    host: &str,
    addrs: &[SocketAddr],
    guard: &AddressGuard,
    mut connect: C,
) -> Result<(S, SocketAddr), DialError>
where
    C: FnMut(SocketAddr) -> F,
    F: Future<Output = io::Result<S>>,
{
    let mut first_blocked = None;
    let mut last_error = None;
    for &addr in addrs {
        if let Err(blocked) = guard.check(addr.ip()) {
            first_blocked.get_or_insert(blocked);
            continue;
        }
        match connect(addr).await {
            Ok(stream) => return Ok((stream, addr)),
            Err(source) => last_error = Some(DialError::Connect { addr, source }),
        }
    }
    Err(last_error.unwrap_or_else(|| DialError::Blocked {
        host: host.to_owned(),
        blocked: first_blocked.expect("resolve returns at least one address"),
    }))
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    /// Records where it was asked to connect, and connects nowhere.
    #[derive(Default)]
    struct Recorder {
        dialed: Mutex<Vec<SocketAddr>>,
    }

    impl Recorder {
        fn connect(
            &self,
            refuse: bool,
        ) -> impl FnMut(SocketAddr) -> std::future::Ready<io::Result<SocketAddr>> + '_ {
            move |addr| {
                self.dialed.lock().unwrap().push(addr);
                std::future::ready(if refuse {
                    Err(io::ErrorKind::ConnectionRefused.into())
                } else {
                    Ok(addr)
                })
            }
        }

        fn dialed(&self) -> Vec<SocketAddr> {
            self.dialed.lock().unwrap().clone()
        }
    }

    fn addrs(list: &[&str]) -> Vec<SocketAddr> {
        list.iter().map(|a| a.parse().unwrap()).collect()
    }

    #[tokio::test]
    async fn never_dials_a_refused_address() {
        let recorder = Recorder::default();
        let answer = addrs(&[
            "169.254.169.254:80",
            "10.0.0.5:80",
            "[fe80::1]:80",
            "[::ffff:192.168.0.1]:80",
        ]);
        let error = dial(
            "metadata.test",
            &answer,
            &AddressGuard::default(),
            recorder.connect(false),
        )
        .await
        .unwrap_err();
        assert!(recorder.dialed().is_empty());
        match error {
            DialError::Blocked { blocked, .. } => {
                assert_eq!(blocked.range, "link-local (cloud metadata)")
            }
            other => panic!("{other}"),
        }
    }

    #[tokio::test]
    async fn skips_refused_addresses_and_dials_the_allowed_one() {
        let recorder = Recorder::default();
        let answer = addrs(&["192.168.1.1:443", "93.184.215.14:443"]);
        let (stream, addr) = dial(
            "mixed.test",
            &answer,
            &AddressGuard::default(),
            recorder.connect(false),
        )
        .await
        .unwrap();
        assert_eq!((stream, addr), (answer[1], answer[1]));
        assert_eq!(recorder.dialed(), vec![answer[1]]);
    }

    #[tokio::test]
    async fn tries_each_allowed_address_and_keeps_the_last_error() {
        let recorder = Recorder::default();
        let answer = addrs(&["93.184.215.14:443", "127.0.0.1:443", "[2606:2800::1]:443"]);
        let error = dial(
            "down.test",
            &answer,
            &AddressGuard::default(),
            recorder.connect(true),
        )
        .await
        .unwrap_err();
        assert_eq!(recorder.dialed(), vec![answer[0], answer[2]]);
        assert!(matches!(error, DialError::Connect { addr, .. } if addr == answer[2]));
    }

    #[tokio::test]
    async fn allowed_networks_are_dialed() {
        let recorder = Recorder::default();
        let guard = AddressGuard::new(vec!["10.0.0.0/24".parse().unwrap()]);
        let answer = addrs(&["10.0.0.5:80"]);
        dial("internal.test", &answer, &guard, recorder.connect(false))
            .await
            .unwrap();
        assert_eq!(recorder.dialed(), answer);
    }

    #[tokio::test]
    async fn ip_literals_are_not_looked_up() {
        assert_eq!(
            resolve("10.0.0.1", 80).await.unwrap(),
            addrs(&["10.0.0.1:80"])
        );
        assert_eq!(resolve("::1", 80).await.unwrap(), addrs(&["[::1]:80"]));
    }
}
