//! The proxy's upstream: the Kubernetes API server requests are forwarded to, through one
//! pooled hyper-util client (HTTP/1.1 only, so upgrades work) over kube's rustls connector,
//! trusting the configured CA or the server's own one (in-cluster or its kubeconfig).
//!
//! The upstream configuration never carries the server's own credential: its client
//! certificate, token or exec plugin are stripped, so a forwarded request authenticates only
//! with the session's token the front puts on it. This module does not look at requests beyond
//! their URI; it must not add or read an `Authorization` header.
//!
//! The upstream URL may carry a path prefix (`https://host/k8s/clusters/c-1`, a cluster behind
//! a multi-cluster gateway); a request's path is appended to it as it is, so a path that could
//! climb out of the prefix once something on the way normalises it (a `.` or `..` segment, raw
//! or percent-encoded, or an encoded `/` or `\` inside a segment) is refused, never forwarded.

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
    /// The request's path could leave the upstream URL's path prefix.
    #[error(
        "the request path cannot be forwarded: {0}; the tka proxy forwards only paths without `.` or `..` segments and without encoded slashes (raw or percent-encoded)"
    )]
    EscapingPath(&'static str),
}

/// How many rounds of percent-decoding a segment is checked through: a segment encoded twice
/// (`%252e`) is still caught if something on the way decodes it twice.
const DECODE_ROUNDS: usize = 4;

/// Why `path` (no query) must not be forwarded, if it must not: it does not start with `/`, or
/// one of its segments is `.` or `..` or holds a `/` or `\` once percent-decoded (in any case,
/// through [`DECODE_ROUNDS`] rounds of decoding), or holds a raw `\`.
pub fn escaping(path: &str) -> Option<&'static str> {
    let Some(rest) = path.strip_prefix('/') else {
        return Some("it does not start with `/`");
    };
    for segment in rest.split('/') {
        if segment.contains('\\') {
            return Some("it holds a backslash");
        }
        let mut bytes = segment.as_bytes().to_vec();
        for _ in 0..DECODE_ROUNDS {
            if bytes == b"." || bytes == b".." {
                return Some("it has a `.` or `..` segment");
            }
            if bytes.contains(&b'/') || bytes.contains(&b'\\') {
                return Some("it has an encoded slash inside a segment");
            }
            match percent_decoded(&bytes) {
                Some(decoded) => bytes = decoded,
                None => break,
            }
        }
    }
    None
}

/// `bytes` with every `%XX` decoded, or `None` when there is none.
fn percent_decoded(bytes: &[u8]) -> Option<Vec<u8>> {
    let hex = |b: u8| match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    };
    let mut out = Vec::with_capacity(bytes.len());
    let mut changed = false;
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let (Some(&h), Some(&l)) = (bytes.get(i + 1), bytes.get(i + 2))
            && let (Some(h), Some(l)) = (hex(h), hex(l))
        {
            // Two hex digits make at most 0xff: no overflow.
            out.push(h * 16 + l);
            changed = true;
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    changed.then_some(out)
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

    /// The upstream URI for a request's path and query: the upstream URL's path prefix, kept
    /// exactly, then the request's. A path that could leave the prefix ([`escaping`]) is refused.
    pub fn uri_for(&self, path_and_query: &str) -> Result<Uri, UpstreamError> {
        let path = path_and_query
            .split_once('?')
            .map_or(path_and_query, |(path, _)| path);
        if let Some(why) = escaping(path) {
            return Err(UpstreamError::EscapingPath(why));
        }
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
        // The prefix is kept exactly, also for a path that only looks like a dot.
        assert_eq!(
            upstream
                .uri_for("/api/v1/namespaces/a.b/pods/..x?fieldSelector=a%2Fb")
                .unwrap(),
            "https://10.0.0.1:6443/prefix/api/v1/namespaces/a.b/pods/..x?fieldSelector=a%2Fb"
        );
    }

    #[test]
    fn paths_that_could_leave_the_prefix_are_refused() {
        let upstream = Upstream::with_connector(
            "https://10.0.0.1:6443/k8s/clusters/c-1".parse().unwrap(),
            HttpConnector::new(),
            Duration::from_secs(1),
        );
        for path in [
            "/../api/v1/secrets",
            "/api/../../other",
            "/api/./v1",
            "/api/v1/..",
            "/%2e%2e/other",
            "/%2E%2e/other",
            "/.%2e/other",
            "/%2E./other",
            "/%2e/api",
            "/%252e%252e/other",
            "/api/..%2f..%2fother",
            "/api/v1%2Fnamespaces",
            "/api/v1%2fnamespaces",
            "/api/%5c..",
            "/api/%5C",
            "/api\\..\\other",
            "*",
            "",
            "api/v1",
        ] {
            assert!(escaping(path).is_some(), "{path:?} must be refused");
            assert!(
                matches!(
                    upstream.uri_for(&format!("{path}?watch=1")),
                    Err(UpstreamError::EscapingPath(_))
                ),
                "{path:?}"
            );
        }
        for path in [
            "/",
            "/api/v1/namespaces",
            "/apis/apps/v1/namespaces/default/deployments/web",
            "/api/v1/namespaces/a.b/pods/..x/log",
            "/api/v1/namespaces/default/pods/web%2dx",
            "/openapi/v3/apis/apps/v1",
            "/api/v1/namespaces/default/pods/web/exec",
            "/100%25",
        ] {
            assert_eq!(escaping(path), None, "{path:?} is allowed");
        }
    }
}
