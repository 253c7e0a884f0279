//! The two ways a kubectl-shaped client reaches the API server in the proxy benchmark, behind one
//! type ([`Endpoint`]): **direct** (HTTPS to the kube-apiserver with the session's token, as a
//! kubeconfig from a direct `tka login` makes it) and **through the proxy** (plain HTTP to the
//! proxy listener with no credential; every connection starts with a PROXY v2 header naming the
//! device, as tailscaled's Tailscale Service would, so whois names the logged-in device). Both
//! are hyper-util pooled HTTP/1.1 clients, so a connection is kept alive between requests the
//! same way on both paths.
//!
//! Also the request mix ([`Kind`]) and one timed exchange of each. Measures; asserts nothing,
//! and must not talk to anything but loopback.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::future::BoxFuture;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, Uri};
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use kube::client::ConfigExt as _;
use serde::Serialize;
use tka_testkit::testenv::devices::proxy_v2_header;
use tokio::io::AsyncWriteExt as _;

use crate::scale::ScaleError;

/// How long any one exchange may take before the run fails (connect, headers and body).
const EXCHANGE_BOUND: Duration = Duration::from_secs(30);

/// Which way a request goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Route {
    /// Straight to the kube-apiserver with the session's token.
    Direct,
    /// Through tka-server's proxy listener, no credential.
    Proxy,
}

impl Route {
    /// Its name in tables.
    pub fn name(self) -> &'static str {
        match self {
            Self::Direct => "direct",
            Self::Proxy => "proxy",
        }
    }
}

/// One kind of request of the kubectl-shaped mix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// `kubectl get ns NAME`: GET of one namespace.
    GetNamespace,
    /// `kubectl get ns`: LIST of namespaces.
    ListNamespaces,
    /// `kubectl get cm -n NS`: LIST of the namespace's ConfigMaps.
    ListConfigMaps,
    /// `kubectl apply --server-side` of a ConfigMap whose data changes each time.
    ApplyConfigMap,
    /// `kubectl get cm -n NS --watch`: a watch, timed to its response headers on a fresh
    /// connection, then closed.
    WatchStart,
}

impl Kind {
    /// Every kind, in the order of one round of the mix.
    pub const ALL: [Kind; 5] = [
        Kind::GetNamespace,
        Kind::ListNamespaces,
        Kind::ListConfigMaps,
        Kind::ApplyConfigMap,
        Kind::WatchStart,
    ];

    /// Its name in tables.
    pub fn name(self) -> &'static str {
        match self {
            Self::GetNamespace => "GET namespace",
            Self::ListNamespaces => "LIST namespaces",
            Self::ListConfigMaps => "LIST configmaps",
            Self::ApplyConfigMap => "server-side apply configmap",
            Self::WatchStart => "watch start (new connection)",
        }
    }
}

type SendFn = Arc<
    dyn Fn(Request<Full<Bytes>>) -> BoxFuture<'static, Result<Response<Incoming>, ScaleError>>
        + Send
        + Sync,
>;

/// A client for one route: where requests go, with what `Authorization`, over which pool.
#[derive(Clone)]
pub struct Endpoint {
    route: Route,
    /// `scheme://authority` of the request URIs (for the proxy, the `Host` the proxy accepts).
    base: String,
    authorization: Option<HeaderValue>,
    send: SendFn,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint")
            .field("route", &self.route)
            .field("base", &self.base)
            .finish_non_exhaustive()
    }
}

/// Source ports for the PROXY headers: each connection of a device gets its own.
static PORTS: AtomicU16 = AtomicU16::new(0);

impl Endpoint {
    /// HTTPS straight to the API server that `config` describes (its URL and CA; nothing else
    /// of it is used), with `token`.
    pub fn direct(config: &kube::Config, token: &str) -> Result<Self, ScaleError> {
        let api_url = config.cluster_url.to_string();
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        let connector = config
            .rustls_https_connector_with_connector(http)
            .map_err(|e| ScaleError::new(format!("TLS to the API server: {e}")))?;
        let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .build(connector);
        let mut bearer = HeaderValue::from_str(&format!("Bearer {token}"))
            .map_err(|_| ScaleError::new("the session's token is not a header value"))?;
        bearer.set_sensitive(true);
        Ok(Self {
            route: Route::Direct,
            base: api_url.trim_end_matches('/').to_owned(),
            authorization: Some(bearer),
            send: Arc::new(move |request| {
                let client = client.clone();
                Box::pin(async move {
                    client
                        .request(request)
                        .await
                        .map_err(|e| ScaleError::new(format!("direct: {e:?}")))
                })
            }),
        })
    }

    /// Plain HTTP to the proxy listener at `listen`, every connection opened with a PROXY v2
    /// header from `device` (a fresh source port each) to `target` (the proxy's tailnet address,
    /// also the `Host`).
    pub fn proxy(listen: SocketAddr, device: Ipv4Addr, target: SocketAddr) -> Self {
        // hyper-util wants an `Unpin` connecting future: boxed.
        let connector = tower::service_fn(
            move |_: Uri| -> BoxFuture<'static, std::io::Result<TokioIo<tokio::net::TcpStream>>> {
                Box::pin(async move {
                    let port = 20_000 + PORTS.fetch_add(1, Ordering::Relaxed) % 40_000;
                    let from = SocketAddr::from((device, port));
                    let header = proxy_v2_header(from, target).map_err(std::io::Error::other)?;
                    let mut stream = tokio::net::TcpStream::connect(listen).await?;
                    stream.set_nodelay(true)?;
                    stream.write_all(&header).await?;
                    Ok(TokioIo::new(stream))
                })
            },
        );
        let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .build(connector);
        Self {
            route: Route::Proxy,
            base: format!("http://{target}"),
            authorization: None,
            send: Arc::new(move |request| {
                let client = client.clone();
                Box::pin(async move {
                    client
                        .request(request)
                        .await
                        .map_err(|e| ScaleError::new(format!("proxy: {e:?}")))
                })
            }),
        }
    }

    /// Which route it takes.
    pub fn route(&self) -> Route {
        self.route
    }

    fn request(
        &self,
        method: Method,
        path: &str,
        content_type: Option<&'static str>,
        body: Bytes,
    ) -> Result<Request<Full<Bytes>>, ScaleError> {
        let mut builder = Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base))
            .header(header::ACCEPT, "application/json")
            .header(
                header::USER_AGENT,
                "kubectl/v1.34.0 (linux/amd64) tka-bench",
            );
        if let Some(auth) = &self.authorization {
            builder = builder.header(header::AUTHORIZATION, auth.clone());
        }
        if let Some(content_type) = content_type {
            builder = builder.header(header::CONTENT_TYPE, content_type);
        }
        builder
            .body(Full::new(body))
            .map_err(ScaleError::from_display)
    }

    /// Sends a request; the response once its headers are in, or an error for anything but 2xx
    /// (with the body).
    pub async fn open(
        &self,
        method: Method,
        path: &str,
        content_type: Option<&'static str>,
        body: Bytes,
    ) -> Result<Response<Incoming>, ScaleError> {
        let request = self.request(method.clone(), path, content_type, body)?;
        let response = tokio::time::timeout(EXCHANGE_BOUND, (self.send)(request))
            .await
            .map_err(|_| ScaleError::new(format!("{method} {path}: no answer in 30 s")))??;
        if !response.status().is_success() {
            let status = response.status();
            let text = read_body(response).await.unwrap_or_default();
            return Err(ScaleError::new(format!(
                "{} {method} {path} answered {status}: {}",
                self.route.name(),
                String::from_utf8_lossy(&text)
            )));
        }
        Ok(response)
    }

    /// Sends a request and reads the whole answer (a 2xx).
    pub async fn exchange(
        &self,
        method: Method,
        path: &str,
        content_type: Option<&'static str>,
        body: Bytes,
    ) -> Result<Bytes, ScaleError> {
        let response = self.open(method.clone(), path, content_type, body).await?;
        tokio::time::timeout(EXCHANGE_BOUND, read_body(response))
            .await
            .map_err(|_| ScaleError::new(format!("{method} {path}: body not read in 30 s")))?
    }
}

async fn read_body(response: Response<Incoming>) -> Result<Bytes, ScaleError> {
    response
        .into_body()
        .collect()
        .await
        .map(http_body_util::Collected::to_bytes)
        .map_err(ScaleError::from_display)
}

/// One worker's clients on one route: a kept-alive pool for most requests and a pool of its own
/// for watches (a closed watch closes its connection; no other kind pays for that).
#[derive(Debug, Clone)]
pub struct Worker {
    /// Get, list, apply.
    pub kept: Endpoint,
    /// Watch starts.
    pub watch: Endpoint,
    /// The ConfigMap this worker applies on this route.
    pub config_map: String,
    /// The namespace of the mix.
    pub namespace: String,
}

/// A counter making every apply change the ConfigMap's data (so every apply writes).
static APPLIES: AtomicU64 = AtomicU64::new(0);

impl Worker {
    /// Runs one request of `kind`; its time from sending until the whole answer is read (for a
    /// watch start: until the response headers are in, on a new connection; then the watch is
    /// closed).
    pub async fn run(&self, kind: Kind) -> Result<Duration, ScaleError> {
        let ns = &self.namespace;
        let started = Instant::now();
        match kind {
            Kind::GetNamespace => {
                self.kept
                    .exchange(
                        Method::GET,
                        &format!("/api/v1/namespaces/{ns}"),
                        None,
                        Bytes::new(),
                    )
                    .await?;
            }
            Kind::ListNamespaces => {
                self.kept
                    .exchange(
                        Method::GET,
                        "/api/v1/namespaces?limit=500",
                        None,
                        Bytes::new(),
                    )
                    .await?;
            }
            Kind::ListConfigMaps => {
                self.kept
                    .exchange(
                        Method::GET,
                        &format!("/api/v1/namespaces/{ns}/configmaps?limit=500"),
                        None,
                        Bytes::new(),
                    )
                    .await?;
            }
            Kind::ApplyConfigMap => {
                let n = APPLIES.fetch_add(1, Ordering::Relaxed);
                let name = &self.config_map;
                let body = serde_json::json!({
                    "apiVersion": "v1",
                    "kind": "ConfigMap",
                    "metadata": {"name": name, "namespace": ns},
                    "data": {"n": n.to_string()},
                });
                self.kept
                    .exchange(
                        Method::PATCH,
                        &format!(
                            "/api/v1/namespaces/{ns}/configmaps/{name}?fieldManager=kubectl&fieldValidation=Strict&force=true"
                        ),
                        Some("application/apply-patch+yaml"),
                        Bytes::from(body.to_string()),
                    )
                    .await?;
            }
            Kind::WatchStart => {
                let response = self
                    .watch
                    .open(Method::GET, &watch_path(ns), None, Bytes::new())
                    .await?;
                let took = started.elapsed();
                drop(response);
                return Ok(took);
            }
        }
        Ok(started.elapsed())
    }
}

/// The watch kubectl starts for `kubectl get cm -n NS --watch` after its list (from "any"
/// resourceVersion, with bookmarks).
pub fn watch_path(namespace: &str) -> String {
    format!(
        "/api/v1/namespaces/{namespace}/configmaps?watch=true&resourceVersion=0&allowWatchBookmarks=true&timeoutSeconds=1800"
    )
}

/// Reads a watch's body until it ends (the stream was closed, or it failed); the instant it
/// ended, or `None` when it was still open at `deadline`.
pub async fn until_closed(
    response: Response<Incoming>,
    deadline: tokio::time::Instant,
) -> Option<Instant> {
    let mut body = response.into_body();
    let read = async {
        while let Some(frame) = body.frame().await {
            if frame.is_err() {
                break;
            }
        }
        Instant::now()
    };
    tokio::time::timeout_at(deadline, read).await.ok()
}
