//! The proxy's TLS certificate from tailscaled (the node's tailnet certificate, through the
//! LocalAPI): fetched at start (the proxy does not start without it), handed to rustls by a
//! certificate resolver, and fetched again every [`REFRESH_EVERY`] so the certificate tailscaled
//! renews (well before it expires) is served without a restart. A failed refresh keeps the
//! current certificate and is retried after [`RETRY_AFTER`].
//!
//! It holds a private key: nothing here logs the answer. It decides nothing about requests.

use std::fmt;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use tka_core::identity::TailscaleLocalApi;
use tokio_rustls::rustls::crypto::CryptoProvider;
use tokio_rustls::rustls::pki_types::pem::PemObject as _;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::server::{ClientHello, ResolvesServerCert};
use tokio_rustls::rustls::sign::CertifiedKey;
use tokio_rustls::rustls::{self, ServerConfig};
use tokio_util::sync::CancellationToken;

/// How often the certificate is fetched again.
pub const REFRESH_EVERY: Duration = Duration::from_secs(6 * 3600);

/// How soon a failed refresh is tried again.
pub const RETRY_AFTER: Duration = Duration::from_secs(60);

/// The node's tailnet certificate for one domain, kept current.
pub struct TailnetCertificate {
    localapi: TailscaleLocalApi,
    domain: String,
    provider: Arc<CryptoProvider>,
    current: RwLock<Arc<CertifiedKey>>,
}

impl fmt::Debug for TailnetCertificate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TailnetCertificate")
            .field("domain", &self.domain)
            .finish_non_exhaustive()
    }
}

/// The certified key in a PEM pair as tailscaled sends it (the key, then the chain).
fn certified_key(pem: &[u8], provider: &CryptoProvider) -> Result<CertifiedKey, String> {
    let chain = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("the certificate chain is not PEM: {e}"))?;
    if chain.is_empty() {
        return Err("the answer holds no certificate".to_owned());
    }
    let key = PrivateKeyDer::from_pem_slice(pem)
        .map_err(|e| format!("the answer holds no private key: {e}"))?;
    let signing = provider
        .key_provider
        .load_private_key(key)
        .map_err(|e| format!("the private key cannot be used: {e}"))?;
    Ok(CertifiedKey::new(chain, signing))
}

impl TailnetCertificate {
    /// Fetches the certificate for `domain` from tailscaled; fails if it cannot.
    pub async fn load(localapi: TailscaleLocalApi, domain: &str) -> anyhow::Result<Arc<Self>> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let first = Self::fetch(&localapi, domain, &provider)
            .await
            .map_err(|e| anyhow::anyhow!("--proxy-tls-tailnet-cert: {e}"))?;
        Ok(Arc::new(Self {
            localapi,
            domain: domain.to_owned(),
            provider,
            current: RwLock::new(Arc::new(first)),
        }))
    }

    async fn fetch(
        localapi: &TailscaleLocalApi,
        domain: &str,
        provider: &CryptoProvider,
    ) -> Result<CertifiedKey, String> {
        let pair = localapi.cert_pair(domain).await.map_err(|e| {
            format!(
                "tailscaled gave no certificate for {domain} ({e}); turn HTTPS certificates on for the tailnet and name one of the node's MagicDNS names"
            )
        })?;
        certified_key(pair.expose(), provider)
            .map_err(|e| format!("tailscaled's certificate for {domain} cannot be used: {e}"))
    }

    /// Fetches the certificate again and serves it from now on; on failure the current one
    /// stays.
    pub async fn refresh(&self) -> Result<(), String> {
        let fresh = Self::fetch(&self.localapi, &self.domain, &self.provider).await?;
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(fresh);
        Ok(())
    }

    /// The TLS configuration serving this certificate (HTTP/1.1 only, as upgrades need).
    pub fn server_config(self: &Arc<Self>) -> anyhow::Result<Arc<ServerConfig>> {
        let resolver: Arc<dyn ResolvesServerCert> = Arc::clone(self) as Arc<dyn ResolvesServerCert>;
        let mut config = ServerConfig::builder_with_provider(Arc::clone(&self.provider))
            .with_safe_default_protocol_versions()
            .map_err(|e| anyhow::anyhow!("cannot set up TLS for the proxy: {e}"))?
            .with_no_client_auth()
            .with_cert_resolver(resolver);
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }

    /// Refreshes every [`REFRESH_EVERY`] (after a failure, [`RETRY_AFTER`]) until `shutdown`.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let mut wait = REFRESH_EVERY;
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(wait) => {}
            }
            wait = match self.refresh().await {
                Ok(()) => REFRESH_EVERY,
                Err(e) => {
                    tracing::warn!(error = %e, "refreshing the proxy's tailnet certificate failed; serving the current one");
                    RETRY_AFTER
                }
            };
        }
    }

    /// The certificate served now.
    pub fn current(&self) -> Arc<CertifiedKey> {
        Arc::clone(&self.current.read().unwrap_or_else(PoisonError::into_inner))
    }
}

impl ResolvesServerCert for TailnetCertificate {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

#[cfg(test)]
mod tests {
    use tka_testkit::tailnet::{FakeTailnet, PeerSpec};

    use super::*;

    fn pair(domain: &str) -> (String, Vec<u8>) {
        let pair = rcgen::generate_simple_self_signed(vec![domain.to_owned()]).unwrap();
        let pem = format!("{}{}", pair.signing_key.serialize_pem(), pair.cert.pem());
        (pem, pair.cert.der().to_vec())
    }

    #[tokio::test]
    async fn the_certificate_comes_from_tailscaled_and_a_refresh_picks_up_a_renewed_one() {
        let domain = "tka-prod.example.ts.net";
        let tailnet = FakeTailnet::new();
        let me = tailnet.add(PeerSpec::tagged(["tag:tka"], "tka-prod"));
        tailnet.set_self(&me.stable_id).unwrap();
        let daemon = tailnet.serve().await.unwrap();
        let localapi = || daemon.client().without_cli_fallback();

        // Refused: tailscaled has no certificate for the domain.
        let missing = TailnetCertificate::load(localapi(), domain)
            .await
            .unwrap_err();
        assert!(
            missing.to_string().contains("HTTPS certificates"),
            "{missing}"
        );

        let (first, first_der) = pair(domain);
        tailnet.set_cert_pair(domain, &first);
        let certificate = TailnetCertificate::load(localapi(), domain).await.unwrap();
        assert_eq!(certificate.current().cert[0].as_ref(), first_der.as_slice());
        assert_eq!(
            certificate.server_config().unwrap().alpn_protocols,
            vec![b"http/1.1".to_vec()]
        );

        let (renewed, renewed_der) = pair(domain);
        tailnet.set_cert_pair(domain, &renewed);
        certificate.refresh().await.unwrap();
        assert_eq!(
            certificate.current().cert[0].as_ref(),
            renewed_der.as_slice()
        );

        // A failed refresh keeps serving the current one.
        tailnet.set_cert_pair(domain, "not a certificate");
        assert!(certificate.refresh().await.is_err());
        assert_eq!(
            certificate.current().cert[0].as_ref(),
            renewed_der.as_slice()
        );
        assert!(!format!("{certificate:?}").contains("PRIVATE KEY"));
    }
}
