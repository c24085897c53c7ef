//! What all of a runner's outgoing requests share: the SSRF guard, the TLS client
//! configuration and the runner-wide cap on requests in flight.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use tokio::sync::Semaphore;
use tokio_rustls::TlsConnector;

use super::guard::AddressGuard;
use super::settings::HttpNetworkConfig;

/// The runner's network for guests, one per runner, shared by every attempt.
pub(crate) struct Network {
    pub guard: AddressGuard,
    pub tls: TlsConnector,
    pub slots: Arc<Semaphore>,
}

impl std::fmt::Debug for Network {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Network")
            .field("guard", &self.guard)
            .finish_non_exhaustive()
    }
}

impl Network {
    /// The network `config` describes; fails if its CA file cannot be used.
    pub fn new(config: &HttpNetworkConfig) -> Result<Self, String> {
        Ok(Self {
            guard: AddressGuard::new(config.allow_networks.clone()),
            tls: tls_connector(config.ca_file.as_deref())?,
            slots: Arc::new(Semaphore::new(config.max_concurrent)),
        })
    }
}

/// Trusts the Mozilla roots compiled in (webpki-roots: the same on every machine, whatever
/// its CA bundle) and the certificates of `ca_file`. HTTP/1.1 only.
fn tls_connector(ca_file: Option<&Path>) -> Result<TlsConnector, String> {
    let mut roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    if let Some(path) = ca_file {
        let bad = |e: &dyn std::fmt::Display| format!("http.ca_file {}: {e}", path.display());
        let certs = CertificateDer::pem_file_iter(path)
            .map_err(|e| bad(&e))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| bad(&e))?;
        if certs.is_empty() {
            return Err(bad(&"no PEM certificates in the file"));
        }
        for cert in certs {
            roots.add(cert).map_err(|e| bad(&e))?;
        }
    }
    // ring rather than aws-lc-rs, which would need cmake and a C toolchain to build; ring's
    // provider is deprecated only for lacking post-quantum key exchange.
    #[allow(deprecated)]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsConnector::from(Arc::new(config)))
}
