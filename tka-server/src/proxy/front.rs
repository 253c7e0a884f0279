//! The proxy's front: one handler for every path. It translates HTTP to the pieces and back:
//! the browser and `Host` checks ([`crate::guard::browser_checks`], the API's own), the refusal
//! of impersonation, the connection's identity, the per-device rate limit, the device's live
//! session, its token ([`crate::proxy::tokens`]), a place under the per-device stream cap
//! ([`crate::proxy::streams`]), then the exchange with the upstream: the client's `Authorization`,
//! `Host` and hop-by-hop headers are dropped (`Upgrade`/`Connection` kept for an upgrade) and
//! the session's token is put on. A `101` answer splices the two upgraded connections. Every
//! request ends in one audit record ([`crate::audit::ProxyRecord`]) and one count by outcome.
//!
//! Refusals are Kubernetes `Status` objects, which kubectl prints as they are. It must not
//! decide policy, mint by itself, or log a token.

use std::future::Future as _;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes, HttpBody};
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{StatusCode, Uri};
use hyper::body::{Frame, Incoming, SizeHint};
use hyper_util::rt::TokioIo;
use tka_core::issuer::IssueError;
use tka_core::{Identity, SessionName};
use tokio_util::sync::WaitForCancellationFutureOwned;

use crate::audit::ProxyRecord;
use crate::connections::ConnectionInfo;
use crate::guard::browser_checks;
use crate::metrics::ProxyOutcome;
use crate::proxy::service::Proxy;
use crate::proxy::streams::StreamGuard;
use crate::proxy::tokens::{ProxyToken, TokenCache};
use crate::sessions::{Caller, SessionError, Sessions};

/// Hop-by-hop headers (RFC 9110 §7.6.1), never forwarded as they are.
const HOP_BY_HOP: [HeaderName; 9] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// A refused request: a Kubernetes `Status`.
#[derive(Debug)]
struct Refusal {
    status: StatusCode,
    reason: &'static str,
    message: String,
    outcome: ProxyOutcome,
    retry_after: Option<Duration>,
}

impl Refusal {
    fn new(status: StatusCode, reason: &'static str, message: impl Into<String>) -> Self {
        let outcome = match status {
            StatusCode::UNAUTHORIZED => ProxyOutcome::NoSession,
            StatusCode::TOO_MANY_REQUESTS => ProxyOutcome::Limited,
            _ => ProxyOutcome::Refused,
        };
        Self {
            status,
            reason,
            message: message.into(),
            outcome,
            retry_after: None,
        }
    }

    fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "Forbidden", message)
    }

    fn limited(message: impl Into<String>, retry_after: Duration) -> Self {
        Self {
            retry_after: Some(retry_after),
            ..Self::new(StatusCode::TOO_MANY_REQUESTS, "TooManyRequests", message)
        }
    }

    fn outcome(self, outcome: ProxyOutcome) -> Self {
        Self { outcome, ..self }
    }
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let mut response = kubernetes_status(self.status, self.reason, &self.message);
        if let Some(after) = self.retry_after {
            let secs = after.as_secs().max(1);
            if let Ok(value) = HeaderValue::from_str(&secs.to_string()) {
                response.headers_mut().insert(header::RETRY_AFTER, value);
            }
        }
        response
    }
}

/// A Kubernetes `Status` (`kind: Status`, `status: Failure`) as JSON.
fn kubernetes_status(status: StatusCode, reason: &str, message: &str) -> Response {
    let body = serde_json::json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": status.as_u16(),
    });
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

/// What a request was cleared to forward with.
struct Cleared {
    token: Arc<ProxyToken>,
    guard: StreamGuard,
}

/// The handler for every proxied request.
pub async fn forward(State(proxy): State<Arc<Proxy>>, mut request: Request) -> Response {
    let started = Instant::now();
    let info = request.extensions().get::<ConnectionInfo>().cloned();
    let mut record = ProxyRecord {
        login: "-".to_owned(),
        node: "-".to_owned(),
        node_name: "-".to_owned(),
        peer: info
            .as_ref()
            .map_or_else(|| "-".to_owned(), |i| i.peer.remote.to_string()),
        session: None,
        jti: None,
        verb: request.method().as_str().to_ascii_lowercase(),
        path: request.uri().path().to_owned(),
        status: 0,
        bytes: 0,
        duration_ms: 0,
        reason: None,
    };
    // Every record, refusals included, names the device when whois did.
    if let Some(identity) = info.as_ref().and_then(|i| i.identity.as_deref()) {
        describe(&mut record, identity);
    }
    let metrics = Arc::clone(&proxy.state.metrics);
    let checked = if request.method() == http::Method::CONNECT {
        // The Kubernetes API has no use for CONNECT; a 2xx answer would turn the connection
        // into a tunnel.
        Err(Refusal::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            "tka: CONNECT is not forwarded by the tka proxy",
        ))
    } else {
        clear(&proxy, info.as_ref(), request.headers(), &mut record).await
    };
    let cleared = match checked {
        Ok(cleared) => cleared,
        Err(refusal) => {
            let ask = crate::proxy::discovery::DiscoveryAsk::of(&request);
            if let Some(answer) =
                without_session(&proxy, info.as_ref(), &refusal, ask, &mut record).await
            {
                metrics.proxy_request(ProxyOutcome::Forwarded);
                record.duration_ms = elapsed_ms(started);
                record.emit();
                return answer;
            }
            metrics.proxy_request(refusal.outcome);
            record.status = refusal.status.as_u16();
            record.reason = Some(refusal.message.clone());
            record.duration_ms = elapsed_ms(started);
            record.emit();
            return refusal.into_response();
        }
    };
    exchange(&proxy, cleared, &mut request, record, started).await
}

/// For a device with no live session (the refusal is the 401): its discovery request's answer
/// when [`crate::proxy::discovery`] forwards it.
async fn without_session(
    proxy: &Proxy,
    info: Option<&ConnectionInfo>,
    refusal: &Refusal,
    ask: Option<crate::proxy::discovery::DiscoveryAsk>,
    record: &mut ProxyRecord,
) -> Option<Response> {
    if refusal.status != StatusCode::UNAUTHORIZED {
        return None;
    }
    let identity = Arc::clone(info?.identity.as_ref()?);
    let client = proxy.discovery.as_ref()?;
    crate::proxy::discovery::forward_discovery(client, &proxy.state, &identity, ask?, record).await
}

fn elapsed_ms(started: Instant) -> u64 {
    u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// Every check before the request may be forwarded.
async fn clear(
    proxy: &Arc<Proxy>,
    info: Option<&ConnectionInfo>,
    headers: &HeaderMap,
    record: &mut ProxyRecord,
) -> Result<Cleared, Refusal> {
    browser_checks(headers, &proxy.config.allowed_hosts)
        .map_err(|e| Refusal::new(e.status(), reason_for(e.status()), format!("tka: {e}")))?;
    if let Some(name) = headers
        .keys()
        .find(|name| name.as_str().starts_with("impersonate-"))
    {
        return Err(Refusal::forbidden(format!(
            "tka: impersonation is not allowed through the tka proxy (the request carries {name}); requests run with this device's own session"
        )));
    }
    let Some(info) = info else {
        return Err(Refusal::forbidden(
            "tka: the connection has no tailnet identity; connect over the tailnet",
        ));
    };
    let Some(identity) = info.identity.clone() else {
        return Err(Refusal::forbidden(
            "tka: tailscaled did not identify this connection; connect over the tailnet and retry",
        ));
    };
    let config = &proxy.state.config;
    let node = identity.key();
    if config.self_node_ids.contains(node) {
        return Err(Refusal::forbidden(
            "tka: requests from the server's own node are refused",
        ));
    }
    if let Err(limited) = proxy.limiter.check(node) {
        return Err(Refusal::limited(
            "tka: this device sends requests through the tka proxy too fast (--proxy-rate-limit); slow down",
            limited.retry_after,
        ));
    }
    let cluster = &config.cluster.name;
    let now = proxy.now();
    let no_session = || {
        Refusal::new(
            StatusCode::UNAUTHORIZED,
            "Unauthorized",
            format!(
                "tka: no session on cluster {cluster} for this device; run `tka login {cluster}`"
            ),
        )
    };
    let Some(session) = proxy.sessions.live_for_node(node, now) else {
        return Err(no_session());
    };
    let Some(name) = session.session_name() else {
        return Err(no_session());
    };
    record.session = Some(name.to_string());
    let caller = Caller {
        identity: Arc::clone(&identity),
        peer: info.peer.clone(),
    };
    let token = mint(&proxy.tokens, proxy, &name, now, &caller)
        .await
        .map_err(|e| match e {
            SessionError::NoSession
            | SessionError::Issue(
                IssueError::NoSession | IssueError::Expired { .. } | IssueError::Revoked { .. },
            ) => no_session(),
            SessionError::GrantWithdrawn { .. } => Refusal::new(
                StatusCode::UNAUTHORIZED,
                "Unauthorized",
                format!("tka: {e} (cluster {cluster}: `tka login {cluster}`)"),
            ),
            other => Refusal {
                retry_after: Some(Duration::from_secs(1)),
                ..Refusal::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "ServiceUnavailable",
                    format!("tka: no token for this device's session yet: {other}"),
                )
            }
            .outcome(ProxyOutcome::TokenFailed),
        })?;
    record.session = Some(token.session.to_string());
    record.jti.clone_from(&token.jti);
    let guard = proxy
        .streams
        .open(&token.session, node)
        .map_err(|e| Refusal::limited(format!("tka: {e}"), Duration::from_secs(1)))?;
    Ok(Cleared { token, guard })
}

fn reason_for(status: StatusCode) -> &'static str {
    match status {
        StatusCode::BAD_REQUEST => "BadRequest",
        StatusCode::FORBIDDEN => "Forbidden",
        _ => "Unknown",
    }
}

fn describe(record: &mut ProxyRecord, identity: &Identity) {
    record.login = identity.acting_as();
    record.node = identity.node.stable_id.to_string();
    record.node_name.clone_from(&identity.node.name);
}

/// The session's token, from the cache or minted through the sessions service's token path.
async fn mint(
    tokens: &TokenCache,
    proxy: &Proxy,
    session: &SessionName,
    now: jiff::Timestamp,
    caller: &Caller,
) -> Result<Arc<ProxyToken>, SessionError> {
    tokens
        .get_or_mint(session, now, || async {
            let credential = Sessions::new(&proxy.state).proxy_credential(caller).await?;
            Ok(ProxyToken {
                session: credential.session,
                token: credential.token,
                jti: credential.token_id,
                expires_at: credential.token_expires_at,
                minted_at: proxy.now(),
            })
        })
        .await
}

/// Whether the request asks to upgrade the connection (`Connection: upgrade` and `Upgrade`).
fn is_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE) && connection_tokens(headers).any(|t| t == "upgrade")
}

fn connection_tokens(headers: &HeaderMap) -> impl Iterator<Item = String> + '_ {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().to_ascii_lowercase())
        .filter(|t| !t.is_empty())
}

/// `headers` without hop-by-hop headers (and those `Connection` names); with `Upgrade` and
/// `Connection: Upgrade` again when `upgrade`.
fn end_to_end(headers: &HeaderMap, upgrade: bool) -> HeaderMap {
    let listed: Vec<String> = connection_tokens(headers).collect();
    let mut out = HeaderMap::with_capacity(headers.len());
    for (name, value) in headers {
        if HOP_BY_HOP.contains(name) || listed.iter().any(|l| l == name.as_str()) {
            continue;
        }
        out.append(name.clone(), value.clone());
    }
    if upgrade {
        for value in headers.get_all(header::UPGRADE) {
            out.append(header::UPGRADE, value.clone());
        }
        out.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    }
    out
}

/// The request as the upstream gets it: end-to-end headers only, no `Authorization`, `Host`
/// or `Impersonate-*` of the client's, and the session's token.
fn upstream_request(
    proxy: &Proxy,
    request: &mut Request,
    token: &ProxyToken,
    upgrade: bool,
) -> Result<http::Request<Body>, Refusal> {
    let path = request
        .uri()
        .path_and_query()
        .map_or("/", http::uri::PathAndQuery::as_str);
    let uri: Uri = proxy
        .upstream
        .uri_for(path)
        .map_err(|e| Refusal::new(StatusCode::BAD_REQUEST, "BadRequest", format!("tka: {e}")))?;
    let mut headers = end_to_end(request.headers(), upgrade);
    headers.remove(header::AUTHORIZATION);
    headers.remove(header::HOST);
    let mut bearer =
        HeaderValue::from_str(&format!("Bearer {}", token.token.expose())).map_err(|_| {
            Refusal::new(
                StatusCode::BAD_GATEWAY,
                "InternalError",
                "tka: the session's token cannot be sent as a header",
            )
            .outcome(ProxyOutcome::TokenFailed)
        })?;
    bearer.set_sensitive(true);
    headers.insert(header::AUTHORIZATION, bearer);
    let body = std::mem::replace(request.body_mut(), Body::empty());
    let mut upstream = http::Request::builder()
        .method(request.method().clone())
        .uri(uri)
        .body(body)
        .map_err(|e| Refusal::new(StatusCode::BAD_REQUEST, "BadRequest", format!("tka: {e}")))?;
    *upstream.headers_mut() = headers;
    Ok(upstream)
}

async fn exchange(
    proxy: &Arc<Proxy>,
    cleared: Cleared,
    request: &mut Request,
    mut record: ProxyRecord,
    started: Instant,
) -> Response {
    let metrics = Arc::clone(&proxy.state.metrics);
    let Cleared { token, guard } = cleared;
    let upgrade = is_upgrade(request.headers());
    let on_client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut *request));
    let refused = |refusal: Refusal, mut record: ProxyRecord| {
        metrics.proxy_request(refusal.outcome);
        record.status = refusal.status.as_u16();
        record.reason = Some(refusal.message.clone());
        record.duration_ms = elapsed_ms(started);
        record.emit();
        refusal.into_response()
    };
    let upstream = match upstream_request(proxy, request, &token, upgrade) {
        Ok(upstream) => upstream,
        Err(refusal) => return refused(refusal, record),
    };
    let asked = Instant::now();
    let answer = tokio::select! {
        answer = proxy.upstream.send(upstream) => answer,
        () = guard.cancelled().cancelled_owned() => {
            return refused(no_longer(&proxy.state.config.cluster.name), record);
        }
    };
    metrics.observe_upstream(asked.elapsed());
    let mut response = match answer {
        Ok(response) => response,
        Err(e) => {
            let status = match e {
                crate::proxy::upstream::UpstreamError::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
                _ => StatusCode::BAD_GATEWAY,
            };
            let refusal = Refusal::new(status, "InternalError", format!("tka: {e}"))
                .outcome(ProxyOutcome::UpstreamFailed);
            return refused(refusal, record);
        }
    };
    record.status = response.status().as_u16();

    if response.status() == StatusCode::SWITCHING_PROTOCOLS
        && let Some(on_client) = on_client_upgrade
    {
        metrics.proxy_request(ProxyOutcome::Upgraded);
        let on_upstream = hyper::upgrade::on(&mut response);
        let mut answer = Response::builder()
            .status(StatusCode::SWITCHING_PROTOCOLS)
            .body(Body::empty())
            .unwrap_or_default();
        *answer.headers_mut() = end_to_end(response.headers(), true);
        tokio::spawn(splice(on_client, on_upstream, guard, record, started));
        return answer;
    }

    if response.status() == StatusCode::SWITCHING_PROTOCOLS {
        // The client did not ask to upgrade: there is nothing to splice the upstream to.
        let refusal = Refusal::new(
            StatusCode::BAD_GATEWAY,
            "InternalError",
            "tka: the Kubernetes API server switched protocols on a request that did not ask to",
        )
        .outcome(ProxyOutcome::UpstreamFailed);
        return refused(refusal, record);
    }
    metrics.proxy_request(ProxyOutcome::Forwarded);
    let (parts, body) = response.into_parts();
    let headers = end_to_end(&parts.headers, false);
    let cancel = Box::pin(guard.cancelled().cancelled_owned());
    let body = Metered {
        inner: body,
        cancel,
        _guard: guard,
        record: Some(record),
        started,
    };
    let mut answer = Response::new(Body::new(body));
    *answer.status_mut() = parts.status;
    *answer.headers_mut() = headers;
    answer
}

fn no_longer(cluster: &tka_core::ClusterName) -> Refusal {
    Refusal::new(
        StatusCode::UNAUTHORIZED,
        "Unauthorized",
        format!("tka: the session on cluster {cluster} ended; run `tka login {cluster}`"),
    )
}

/// Splices an upgraded client connection to the upgraded upstream one until either side closes
/// or the session ends, then writes the audit record.
async fn splice(
    on_client: hyper::upgrade::OnUpgrade,
    on_upstream: hyper::upgrade::OnUpgrade,
    guard: StreamGuard,
    mut record: ProxyRecord,
    started: Instant,
) {
    let cancel = guard.cancelled();
    let upgraded = tokio::select! {
        both = async { tokio::try_join!(on_client, on_upstream) } => both,
        () = cancel.cancelled() => {
            record.reason = Some("the session ended".to_owned());
            record.duration_ms = elapsed_ms(started);
            record.emit();
            return;
        }
    };
    match upgraded {
        Ok((client, upstream)) => {
            let mut client = TokioIo::new(client);
            let mut upstream = TokioIo::new(upstream);
            tokio::select! {
                copied = tokio::io::copy_bidirectional(&mut client, &mut upstream) => {
                    match copied {
                        Ok((up, down)) => record.bytes = up.saturating_add(down),
                        Err(e) => record.reason = Some(format!("the upgraded connection failed: {e}")),
                    }
                }
                () = cancel.cancelled() => {
                    record.reason = Some("the session ended".to_owned());
                }
            }
        }
        Err(e) => record.reason = Some(format!("the upgrade did not complete: {e}")),
    }
    drop(guard);
    record.duration_ms = elapsed_ms(started);
    record.emit();
}

/// An upstream response body passed to the client: counts its bytes, fails as soon as the
/// session ends (which cuts the client's response), keeps the stream registered while it
/// lasts, and writes the audit record when it ends or is dropped.
struct Metered {
    inner: Incoming,
    cancel: Pin<Box<WaitForCancellationFutureOwned>>,
    _guard: StreamGuard,
    record: Option<ProxyRecord>,
    started: Instant,
}

/// The session of a proxied stream ended.
#[derive(Debug, thiserror::Error)]
#[error("the session ended; the proxied stream was closed")]
struct SessionEnded;

impl HttpBody for Metered {
    type Data = Bytes;
    type Error = axum::BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        if self.cancel.as_mut().poll(cx).is_ready() {
            if let Some(record) = self.record.as_mut() {
                record.reason = Some("the session ended".to_owned());
            }
            return Poll::Ready(Some(Err(Box::new(SessionEnded))));
        }
        match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref()
                    && let Some(record) = self.record.as_mut()
                {
                    record.bytes = record.bytes.saturating_add(data.len() as u64);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                if let Some(record) = self.record.as_mut() {
                    record.reason = Some(format!("the upstream response failed: {e}"));
                }
                Poll::Ready(Some(Err(Box::new(e))))
            }
            other => other.map(|f| f.map(|r| r.map_err(Into::into))),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Metered {
    fn drop(&mut self) {
        if let Some(mut record) = self.record.take() {
            record.duration_ms = elapsed_ms(self.started);
            record.emit();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_are_dropped_and_upgrades_keep_theirs() {
        let mut headers = HeaderMap::new();
        headers.insert(header::CONNECTION, "Upgrade, X-Private".parse().unwrap());
        headers.insert(header::UPGRADE, "SPDY/3.1".parse().unwrap());
        headers.insert("x-private", "1".parse().unwrap());
        headers.insert("keep-alive", "timeout=5".parse().unwrap());
        headers.insert(
            "x-stream-protocol-version",
            "v4.channel.k8s.io".parse().unwrap(),
        );
        assert!(is_upgrade(&headers));
        let plain = end_to_end(&headers, false);
        assert!(plain.get(header::UPGRADE).is_none());
        assert!(plain.get(header::CONNECTION).is_none());
        assert!(plain.get("x-private").is_none());
        assert!(plain.get("keep-alive").is_none());
        assert!(plain.get("x-stream-protocol-version").is_some());
        let upgraded = end_to_end(&headers, true);
        assert_eq!(upgraded[header::UPGRADE], "SPDY/3.1");
        assert_eq!(upgraded[header::CONNECTION], "Upgrade");

        let mut plain_request = HeaderMap::new();
        plain_request.insert(header::UPGRADE, "websocket".parse().unwrap());
        assert!(!is_upgrade(&plain_request), "Upgrade without Connection");
    }

    #[test]
    fn refusals_are_kubernetes_status_objects() {
        let response = Refusal::limited("slow down", Duration::from_millis(10)).into_response();
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(response.headers()[header::RETRY_AFTER], "1");
        assert_eq!(response.headers()[header::CONTENT_TYPE], "application/json");
    }
}
