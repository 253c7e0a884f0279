//! The ops endpoints, on their own listener for the kubelet and Prometheus: `/healthz` (the
//! process is alive), `/readyz` (every [`ReadinessCheck`] passes: tailscaled answers, the API
//! server answers, the CRDs are installed), `/metrics` (Prometheus text). No user data here:
//! readiness names its failing checks and their messages, nothing about callers.
//!
//! Every request passes the API's `Host` check ([`crate::guard`]), with one allowed host: the
//! address the client connected to, as the kubelet's probes and Prometheus send it
//! (`Host: <pod IP>:9090`). A name in `Host` is refused (DNS rebinding). Which connections reach
//! ops at all is [`crate::listener::OpsListener`]'s business.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use axum::Router;
use axum::extract::{Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, get};
use http::{HeaderValue, StatusCode, header};

use crate::connections::ConnectionInfo;
use crate::guard::{AllowedHosts, single_host};
use crate::metrics::{self, Metrics};

/// One condition the server needs before it can serve logins.
#[async_trait]
pub trait ReadinessCheck: Send + Sync {
    /// A short name for the check (`tailscaled`, `kubernetes`, `crds`).
    fn name(&self) -> &str;

    /// `Ok` when the condition holds; otherwise what is wrong, for the operator.
    async fn check(&self) -> Result<(), String>;
}

/// How long one readiness check may take.
pub const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Clone)]
struct OpsState {
    checks: Arc<[Arc<dyn ReadinessCheck>]>,
    metrics: Arc<Metrics>,
}

/// The table the ops router is built from: path and handler (each answers `GET`).
fn endpoints() -> Vec<(&'static str, MethodRouter<OpsState>)> {
    vec![
        ("/healthz", get(|| async { "ok\n" })),
        ("/readyz", get(readyz)),
        ("/metrics", get(metrics_text)),
    ]
}

/// Every path of the ops listener (each answers `GET` and `HEAD` only), in the router's order.
pub fn ops_paths() -> Vec<&'static str> {
    endpoints().into_iter().map(|(path, _)| path).collect()
}

/// The ops router.
pub fn ops_router(checks: Vec<Arc<dyn ReadinessCheck>>, metrics: Arc<Metrics>) -> Router {
    endpoints()
        .into_iter()
        .fold(Router::new(), |router, (path, handler)| {
            router.route(path, handler)
        })
        .with_state(OpsState {
            checks: checks.into(),
            metrics,
        })
        .layer(middleware::from_fn(host_check))
}

/// Refuses a request whose `Host` is not the address the client connected to.
async fn host_check(request: Request, next: Next) -> Response {
    let local = request
        .extensions()
        .get::<ConnectionInfo>()
        .map(|info| info.local.ip());
    let host = match single_host(request.headers()) {
        Ok(host) => host,
        Err(e) => return (StatusCode::BAD_REQUEST, format!("{e}\n")).into_response(),
    };
    // An absolute request target names the host too (and wins over `Host`): both must be ours.
    let allowed = local.is_some_and(|ip| {
        let own = AllowedHosts::new([], [ip]);
        own.allows(host)
            && request
                .uri()
                .authority()
                .is_none_or(|target| own.allows(target.as_str()))
    });
    if !allowed {
        tracing::debug!(host, "ops refused a request for a foreign Host");
        return (
            StatusCode::FORBIDDEN,
            "Host must be the address you connected to (the pod's IP and port)\n",
        )
            .into_response();
    }
    next.run(request).await
}

async fn readyz(State(state): State<OpsState>) -> Response {
    let results = futures_join(&state.checks).await;
    let failures: Vec<String> = results
        .into_iter()
        .filter_map(|(name, result)| result.err().map(|why| format!("{name}: {why}")))
        .collect();
    if failures.is_empty() {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        tracing::debug!(failures = ?failures, "not ready");
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready\n{}\n", failures.join("\n")),
        )
            .into_response()
    }
}

/// Runs every check concurrently, each under [`CHECK_TIMEOUT`].
async fn futures_join(checks: &[Arc<dyn ReadinessCheck>]) -> Vec<(String, Result<(), String>)> {
    let mut set = tokio::task::JoinSet::new();
    for (index, check) in checks.iter().enumerate() {
        let check = Arc::clone(check);
        set.spawn(async move {
            let result = match tokio::time::timeout(CHECK_TIMEOUT, check.check()).await {
                Ok(result) => result,
                Err(_) => Err(format!("no answer within {}s", CHECK_TIMEOUT.as_secs())),
            };
            (index, check.name().to_owned(), result)
        });
    }
    let mut results: Vec<(usize, String, Result<(), String>)> = Vec::with_capacity(checks.len());
    while let Some(joined) = set.join_next().await {
        match joined {
            Ok(result) => results.push(result),
            Err(e) => results.push((usize::MAX, "check".into(), Err(format!("panicked: {e}")))),
        }
    }
    results.sort_by_key(|(index, _, _)| *index);
    results
        .into_iter()
        .map(|(_, name, result)| (name, result))
        .collect()
}

async fn metrics_text(State(state): State<OpsState>) -> Response {
    match state.metrics.encode() {
        Ok(text) => (
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static(metrics::CONTENT_TYPE),
            )],
            text,
        )
            .into_response(),
        Err(_) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            "encoding metrics failed\n",
        )
            .into_response(),
    }
}
