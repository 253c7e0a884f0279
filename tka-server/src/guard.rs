//! The checks every API request passes before a handler runs, cheapest first:
//! no `Origin` header and no cross-site `Sec-Fetch-Site` (browser pages), a `Host` that is one of
//! the server's own names or addresses (DNS rebinding), a peer the listener may serve, then whois
//! on the connection (a miss is 403, never a fallback; the server's own node is refused), then
//! the per-device rate limit. What passes becomes a [`Caller`] in the request's extensions.
//!
//! Body checks (content type, size, JSON) belong to [`crate::body`]; policy to
//! [`crate::sessions`]. It reads [`crate::state`] and never imports the handlers or the router.
//! whois answers are never cached: each request asks for its own connection.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{ConnectInfo, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http::{HeaderMap, Uri, header};
use tka_core::Identity;
use tka_core::identity::WhoisRequest;

use crate::audit;
use crate::error::ApiError;
pub use crate::hosts::AllowedHosts;
use crate::listener::Peer;
pub use crate::sessions::Caller;
use crate::state::ApiState;

/// The request's one `Host` header (`""` when there is none). Two are refused: each hop could
/// read a different one.
pub fn single_host(headers: &HeaderMap) -> Result<&str, ApiError> {
    let mut hosts = headers.get_all(header::HOST).iter();
    let host = hosts
        .next()
        .map(|h| h.to_str().unwrap_or("(not text)"))
        .unwrap_or("");
    if hosts.next().is_some() {
        return Err(ApiError::BadRequest(
            "the request has more than one Host header; send exactly one".into(),
        ));
    }
    Ok(host)
}

/// The checks against browser pages and DNS rebinding: no `Origin`, no cross-site
/// `Sec-Fetch-Site`, no `Referer` naming another host, one `Host` that is one of `hosts`, and,
/// when the request target is in absolute form (`GET http://name/path`), a target authority that
/// is one of `hosts` too (HTTP then says the target's host is the request's host, whatever
/// `Host` says). Every front that serves the tailnet runs them (the API here, the proxy in
/// [`crate::proxy::front`]).
pub fn browser_checks(
    uri: &Uri,
    headers: &HeaderMap,
    hosts: &AllowedHosts,
) -> Result<(), ApiError> {
    let host = single_host(headers)?;
    if headers.contains_key(header::ORIGIN) {
        return Err(ApiError::OriginRefused);
    }
    if let Some(site) = headers.get("sec-fetch-site") {
        let site = site.to_str().unwrap_or("invalid");
        // `none` is a user typing the URL; `same-origin` a page of this server (it serves none).
        if !matches!(site, "none" | "same-origin") {
            return Err(ApiError::CrossSite(format!("Sec-Fetch-Site: {site}")));
        }
    }
    for referer in headers.get_all(header::REFERER) {
        // tka's clients send no Referer; a browser sends the page's URL. A page of another
        // host (or a Referer that names no host) made this request.
        let text = referer.to_str().unwrap_or("(not text)");
        let ours = text
            .parse::<Uri>()
            .ok()
            .and_then(|u| u.authority().cloned())
            .is_some_and(|a| hosts.allows(a.as_str()));
        if !ours {
            return Err(ApiError::CrossSite(format!("Referer: {text}")));
        }
    }
    if !hosts.allows(host) {
        return Err(ApiError::HostNotAllowed(host.to_owned()));
    }
    if let Some(target) = uri.authority()
        && !hosts.allows(target.as_str())
    {
        return Err(ApiError::HostNotAllowed(target.as_str().to_owned()));
    }
    Ok(())
}

/// Middleware: runs the checks and inserts the [`Caller`]. Refusals are answered here.
pub async fn middleware(
    State(state): State<Arc<ApiState>>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    mut request: Request,
    next: Next,
) -> Response {
    match check(&state, &peer, request.uri(), request.headers()).await {
        Ok(identity) => {
            request.extensions_mut().insert(Caller {
                identity: Arc::new(identity),
                peer,
            });
            next.run(request).await
        }
        Err(error) => {
            state.metrics.refused(error.code().as_str());
            if matches!(
                error,
                ApiError::Identity(tka_core::identity::IdentityError::NotInTailnet(_))
                    | ApiError::SelfNode
            ) {
                audit::Record::denial_before_identity(&peer, error.code(), &error).emit();
            }
            error.into_response()
        }
    }
}

async fn check(
    state: &ApiState,
    peer: &Peer,
    uri: &Uri,
    headers: &HeaderMap,
) -> Result<Identity, ApiError> {
    let config = &state.config;
    browser_checks(uri, headers, &config.allowed_hosts)?;
    if config.loopback_peers_only && !peer.transport.ip().to_canonical().is_loopback() {
        return Err(ApiError::PeerNotAllowed(peer.transport.ip()));
    }

    let mut whois = WhoisRequest::connection(peer.remote);
    whois.svc_name = peer
        .svc_name
        .clone()
        .or_else(|| config.service_name.clone());
    let started = Instant::now();
    let answer =
        tokio::time::timeout(config.whois_timeout, state.backends.identity.lookup(&whois)).await;
    state.metrics.observe_whois(started.elapsed());
    let identity = match answer {
        Ok(Ok(identity)) => identity,
        Ok(Err(e)) => return Err(ApiError::Identity(e)),
        Err(_) => {
            return Err(ApiError::Timeout {
                what: "tailscaled",
                after: config.whois_timeout,
            });
        }
    };
    tracing::trace!(
        device = %identity.key(),
        peer = %peer.remote,
        capability_values = identity.capabilities.len(),
        "caller identified"
    );
    if config.self_node_ids.contains(identity.key()) {
        return Err(ApiError::SelfNode);
    }
    state.rate_limiter.check(identity.key())?;
    Ok(identity)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hosts() -> AllowedHosts {
        crate::hosts::example_hosts()
    }

    #[test]
    fn browser_requests_are_refused() {
        let h = hosts();
        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, "tka-prod".parse().unwrap());
        assert!(browser_checks(&Uri::from_static("/api/v1/cluster"), &headers, &h).is_ok());
        headers.insert("sec-fetch-site", "none".parse().unwrap());
        assert!(browser_checks(&Uri::from_static("/api/v1/cluster"), &headers, &h).is_ok());
        for site in ["cross-site", "same-site"] {
            headers.insert("sec-fetch-site", site.parse().unwrap());
            assert!(matches!(
                browser_checks(&Uri::from_static("/api/v1/cluster"), &headers, &h),
                Err(ApiError::CrossSite(_))
            ));
        }
        headers.remove("sec-fetch-site");
        headers.append(header::HOST, "tka-prod".parse().unwrap());
        assert!(matches!(
            browser_checks(&Uri::from_static("/api/v1/cluster"), &headers, &h),
            Err(ApiError::BadRequest(_))
        ));
        headers.insert(header::HOST, "tka-prod".parse().unwrap());
        headers.insert(header::ORIGIN, "null".parse().unwrap());
        assert!(matches!(
            browser_checks(&Uri::from_static("/api/v1/cluster"), &headers, &h),
            Err(ApiError::OriginRefused)
        ));
    }

    #[test]
    fn a_foreign_referer_or_request_target_is_refused() {
        let h = hosts();
        let path = Uri::from_static("/api/v1/cluster");
        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, "tka-prod".parse().unwrap());
        for referer in [
            "https://evil.example.com/",
            "/relative",
            "http://100.64.0.6/",
        ] {
            headers.insert(header::REFERER, referer.parse().unwrap());
            assert!(
                matches!(
                    browser_checks(&path, &headers, &h),
                    Err(ApiError::CrossSite(_))
                ),
                "{referer}"
            );
        }
        headers.insert(header::REFERER, "http://tka-prod/x".parse().unwrap());
        assert!(browser_checks(&path, &headers, &h).is_ok());
        headers.remove(header::REFERER);

        let foreign = Uri::from_static("http://evil.example.com/api/v1/cluster");
        assert!(matches!(
            browser_checks(&foreign, &headers, &h),
            Err(ApiError::HostNotAllowed(_))
        ));
        let own = Uri::from_static("http://100.64.0.5:80/api/v1/cluster");
        assert!(browser_checks(&own, &headers, &h).is_ok());
    }
}
