//! The proxy's upstream: the Kubernetes API server requests are forwarded to, through one
//! pooled hyper-util client (HTTP/1.1 only, so upgrades work) over kube's rustls connector,
//! trusting the configured CA or the server's own one (in-cluster or its kubeconfig).
//!
//! The upstream configuration never carries the server's own credential: its client
//! certificate, token or exec plugin are stripped, so a forwarded request authenticates only
//! with the session's token the front puts on it. This module does not look at requests beyond
//! their URI; it must not add or read an `Authorization` header.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use futures::future::BoxFuture;
use http::{Request, Response, Uri};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::{Connect, HttpConnector};
use hyper_util::rt::TokioExecutor;
use kube::client::ConfigExt as _;

/// How a request reached (or failed to reach) the upstream.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum UpstreamError {
    /// The upstream could not be reached, or the exchange failed.
    #[error("the Kubernetes API server could not be reached through the tka proxy: {0}")]
    Unreachable(#[source] hyper_util::client::legacy::Error),
    /// No response headers within the deadline.
    #[error("the Kubernetes API server did not answer within {}s", .0.as_secs_f32())]
    Timeout(Duration),
    /// The request's path cannot be joined to the upstream URL.
    #[error("the request path cannot be forwarded: {0}")]
    BadPath(String),
}

type SendFn = Arc<
    dyn Fn(Request<Body>) -> BoxFuture<'static, Result<Response<Incoming>, UpstreamError>>
        + Send
        + Sync,
>;

/// The upstream API server and the client to it.
#[derive(Clone)]
pub struct Upstream {
    base: Uri,
    send: SendFn,
    timeout: Duration,
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream")
            .field("base", &self.base)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl Upstream {
    /// The upstream described by `config` (its URL, CA and TLS settings; its credentials are
    /// dropped), answering each request's headers within `timeout`.
    pub fn new(mut config: kube::Config, timeout: Duration) -> anyhow::Result<Self> {
        config.auth_info = kube::config::AuthInfo::default();
        config.headers.clear();
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_connect_timeout(Some(timeout));
        http.set_nodelay(true);
        let connector = config
            .rustls_https_connector_with_connector(http)
            .map_err(|e| anyhow::anyhow!("cannot set up TLS to the proxy upstream: {e}"))?;
        Ok(Self::with_connector(
            config.cluster_url.clone(),
            connector,
            timeout,
        ))
    }

    fn with_connector<C>(base: Uri, connector: C, timeout: Duration) -> Self
    where
        C: Connect + Clone + Send + Sync + 'static,
    {
        let client: Client<C, Body> = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .build(connector);
        let send: SendFn = Arc::new(move |request| {
            let client = client.clone();
            Box::pin(async move {
                match tokio::time::timeout(timeout, client.request(request)).await {
                    Ok(answer) => answer.map_err(UpstreamError::Unreachable),
                    Err(_) => Err(UpstreamError::Timeout(timeout)),
                }
            })
        });
        Self {
            base,
            send,
            timeout,
        }
    }

    /// The upstream from the server's settings: `url` and `ca` when given, else the server's
    /// own Kubernetes configuration (`kubeconfig`, or in-cluster).
    pub async fn from_settings(
        kubeconfig: Option<&Path>,
        url: Option<&Uri>,
        ca: Option<&Path>,
        timeout: Duration,
    ) -> anyhow::Result<Self> {
        let config = match url {
            Some(url) => {
                let mut config = kube::Config::new(url.clone());
                if let Some(ca) = ca {
                    config = with_ca(config, url, ca).await?;
                }
                config
            }
            None => crate::kubernetes::config(kubeconfig).await?,
        };
        Self::new(config, timeout)
    }

    /// The upstream URI for a request's path and query.
    pub fn uri_for(&self, path_and_query: &str) -> Result<Uri, UpstreamError> {
        let base = self.base.path().trim_end_matches('/');
        let mut parts = self.base.clone().into_parts();
        parts.path_and_query = Some(
            format!("{base}{path_and_query}")
                .parse()
                .map_err(|e: http::uri::InvalidUri| UpstreamError::BadPath(e.to_string()))?,
        );
        Uri::from_parts(parts).map_err(|e| UpstreamError::BadPath(e.to_string()))
    }

    /// Sends `request` (its URI already from [`Upstream::uri_for`]); the deadline covers
    /// connecting and the response headers, never the body.
    pub async fn send(&self, request: Request<Body>) -> Result<Response<Incoming>, UpstreamError> {
        (self.send)(request).await
    }
}

/// `config` trusting the PEM bundle at `ca` (read through kube's kubeconfig loader, which
/// parses it the way kubectl does).
async fn with_ca(mut config: kube::Config, url: &Uri, ca: &Path) -> anyhow::Result<kube::Config> {
    let yaml = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "upstream", "cluster": {
            "server": url.to_string(),
            "certificate-authority": ca.display().to_string(),
        }}],
        "users": [{"name": "none", "user": {}}],
        "contexts": [{"name": "upstream", "context": {"cluster": "upstream", "user": "none"}}],
        "current-context": "upstream",
    });
    let kubeconfig: kube::config::Kubeconfig = serde_json::from_value(yaml)
        .map_err(|e| anyhow::anyhow!("cannot describe the proxy upstream: {e}"))?;
    let loaded = kube::Config::from_custom_kubeconfig(
        kubeconfig,
        &kube::config::KubeConfigOptions::default(),
    )
    .await
    .map_err(|e| {
        anyhow::anyhow!(
            "--proxy-upstream-ca: cannot use {} as the upstream's CA: {e}",
            ca.display()
        )
    })?;
    config.root_cert = loaded.root_cert;
    config.root_cert_file = None;
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_joined_to_the_upstream_url() {
        let upstream = Upstream::with_connector(
            "https://10.0.0.1:6443/prefix/".parse().unwrap(),
            HttpConnector::new(),
            Duration::from_secs(1),
        );
        assert_eq!(
            upstream.uri_for("/api/v1/namespaces?watch=1").unwrap(),
            "https://10.0.0.1:6443/prefix/api/v1/namespaces?watch=1"
        );
        let plain = Upstream::with_connector(
            "https://kubernetes.default.svc".parse().unwrap(),
            HttpConnector::new(),
            Duration::from_secs(1),
        );
        assert_eq!(
            plain.uri_for("/version").unwrap(),
            "https://kubernetes.default.svc/version"
        );
    }
}
