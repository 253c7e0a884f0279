//! Discovery for a device with a grant but no live session. kubectl's first request on an empty
//! cache is API discovery, and client-go reports a 401 there in its own fixed words, dropping
//! the proxy's `Status` (which says to run `tka login`). So a `GET` of exactly a discovery path
//! (`/api`, `/api/{v}`, `/apis`, `/apis/{g}`, `/apis/{g}/{v}`, `/version`, `/openapi/v2`,
//! `/openapi/v3`, `/openapi/v3/…`) from a device that holds a usable role here by policy (what
//! `GET /api/v1/cluster` lists) is forwarded with the server's own Kubernetes client; kubectl
//! then makes its real request and prints the proxy's 401. Nothing else is ever forwarded
//! without a session, and a device with no grant gets the 401 for discovery too.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::Request;
use axum::response::Response;
use http::header;
use http::{Method, StatusCode};
use tka_core::Identity;

use crate::audit::ProxyRecord;
use crate::sessions::Sessions;
use crate::state::ApiState;

/// The reason recorded in the audit record of a discovery request forwarded without a session.
pub const DISCOVERY_REASON: &str =
    "discovery without a session, forwarded with the server's own credentials";

/// Whether `path` is exactly one of the discovery paths, each segment a plain name (lower-case
/// letters, digits, `.` and `-`; no escapes, no empty segment).
pub fn is_discovery_path(path: &str) -> bool {
    let Some(rest) = path.strip_prefix('/') else {
        return false;
    };
    let segments: Vec<&str> = rest.split('/').collect();
    let plain = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-')
    };
    if !segments.iter().all(|s| plain(s)) {
        return false;
    }
    match segments.as_slice() {
        ["api" | "apis" | "version"] | ["api", _] | ["apis", _] | ["apis", _, _] => true,
        ["openapi", "v2" | "v3"] => true,
        ["openapi", "v3", more @ ..] => !more.is_empty(),
        _ => false,
    }
}

/// The server's own Kubernetes client, used only for discovery without a session.
#[derive(Clone)]
pub struct DiscoveryClient(pub kube::Client);

impl std::fmt::Debug for DiscoveryClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DiscoveryClient")
    }
}

/// A discovery request as it may be forwarded: its path and query, and its `Accept`.
#[derive(Debug)]
pub struct DiscoveryAsk {
    target: String,
    accept: Option<http::HeaderValue>,
}

impl DiscoveryAsk {
    /// `request` as a discovery ask; `None` unless it is a `GET` of a discovery path.
    pub fn of(request: &Request) -> Option<Self> {
        if request.method() != Method::GET || !is_discovery_path(request.uri().path()) {
            return None;
        }
        Some(Self {
            target: request
                .uri()
                .path_and_query()
                .map_or_else(|| request.uri().path().to_owned(), ToString::to_string),
            accept: request.headers().get(header::ACCEPT).cloned(),
        })
    }
}

/// The upstream's answer to a discovery `ask` from `identity`, which has no live session;
/// forwarded with `client`; `None` when it is not one to forward (no role available by policy
/// in `state`). Fills `record`'s status and reason.
pub async fn forward_discovery(
    DiscoveryClient(client): &DiscoveryClient,
    state: &Arc<ApiState>,
    identity: &Identity,
    ask: DiscoveryAsk,
    record: &mut ProxyRecord,
) -> Option<Response> {
    if !Sessions::new(state).has_available_role(identity) {
        return None;
    }
    let mut upstream = http::Request::get(ask.target);
    if let Some(accept) = ask.accept {
        upstream = upstream.header(header::ACCEPT, accept);
    }
    let upstream = upstream.body(Vec::new()).ok()?;
    record.reason = Some(DISCOVERY_REASON.to_owned());
    let answer = match client.send(upstream.map(kube::client::Body::from)).await {
        Ok(answer) => answer,
        Err(e) => {
            tracing::warn!(error = %e, "discovery for a device without a session failed upstream");
            let mut failed = Response::new(Body::from(
                "tka: the API server did not answer discovery; retry",
            ));
            *failed.status_mut() = StatusCode::BAD_GATEWAY;
            record.status = failed.status().as_u16();
            return Some(failed);
        }
    };
    let (parts, body) = answer.into_parts();
    let mut response = Response::new(Body::new(body));
    *response.status_mut() = parts.status;
    if let Some(kind) = parts.headers.get(header::CONTENT_TYPE) {
        response
            .headers_mut()
            .insert(header::CONTENT_TYPE, kind.clone());
    }
    record.status = parts.status.as_u16();
    Some(response)
}

#[cfg(test)]
mod tests {
    use super::is_discovery_path;

    #[test]
    fn only_exact_discovery_paths_match() {
        for path in [
            "/api",
            "/api/v1",
            "/apis",
            "/apis/apps",
            "/apis/apps/v1",
            "/apis/rbac.authorization.k8s.io/v1",
            "/version",
            "/openapi/v2",
            "/openapi/v3",
            "/openapi/v3/apis/apps/v1",
        ] {
            assert!(is_discovery_path(path), "{path}");
        }
        for path in [
            "/",
            "",
            "/api/v1/namespaces",
            "/api/v1/pods",
            "/apis/apps/v1/deployments",
            "/apis/apps/v1/namespaces/default/deployments",
            "/api/v1%2Fnamespaces",
            "/api/v1/",
            "/api//v1",
            "/apis/apps/v1/",
            "/version/x",
            "/openapi/v3/",
            "/openapi/v4",
            "/API",
            "/healthz",
            "/logs/x",
            "/api/v1/namespaces/default/pods/echo/exec",
        ] {
            assert!(!is_discovery_path(path), "{path}");
        }
    }
}
