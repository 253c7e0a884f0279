//! The proxy's front: one handler for every path. It translates HTTP to the pieces and back:
//! the browser and `Host` checks ([`crate::guard::browser_checks`], the API's own), the refusal
//! of impersonation, the connection's identity, the per-device rate limit, the device's live
//! session, its token ([`crate::proxy::tokens`]), a place under the per-device stream cap
//! ([`crate::proxy::streams`]), then the exchange with the upstream: the client's `Authorization`,
//! `Host`, `Cookie`, forwarding headers (`Forwarded`, `X-Forwarded-*`, `X-Real-Ip`), the API
//! server's front-proxy identity headers (`X-Remote-*`) and hop-by-hop headers are dropped
//! (`Upgrade`/`Connection` kept for an upgrade); the session's token is put on, and
//! `X-Forwarded-For` names the device's tailnet address. A path that could leave the upstream
//! URL's prefix is refused first ([`crate::proxy::upstream::escaping`]). A `101` answer splices
//! the two upgraded connections. Every request ends in one audit record
//! ([`crate::audit::ProxyRecord`]) and one count by outcome.
//!
//! Refusals are Kubernetes `Status` objects, which kubectl prints as they are. It must not
//! decide policy, mint by itself, or log a token.

use std::future::Future as _;
use std::net::IpAddr;
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
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_util::sync::WaitForCancellationFutureOwned;

use crate::audit::ProxyRecord;
use crate::connections::{BodyTimedOut, ConnectionInfo};
use crate::error::find_cause;
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

/// Whether a client's header never reaches the upstream, beyond hop-by-hop ones: its own
/// credentials (`Authorization`, `Cookie`), `Host`, forwarding headers it could forge
/// (`Forwarded`, `X-Forwarded-*`, `X-Real-Ip`; the proxy sets `X-Forwarded-For` itself), and the
/// names the API server's front-proxy (request-header) authentication reads (`X-Remote-*`).
fn is_withheld(name: &HeaderName) -> bool {
    // Header names are lower case in `http`.
    let name = name.as_str();
    matches!(
        name,
        "authorization" | "cookie" | "host" | "forwarded" | "x-real-ip"
    ) || name.starts_with("x-forwarded-")
        || name.starts_with("x-remote-")
}

/// The `Retry-After` when tailscaled could not identify a connection (the API's answer to an
/// unavailable tailscaled says the same).
const IDENTITY_RETRY_AFTER: Duration = Duration::from_secs(2);

/// A refused request: a Kubernetes `Status`.
#[derive(Debug)]
struct Refusal {
    status: StatusCode,
    reason: &'static str,
    message: String,
    outcome: ProxyOutcome,
    retry_after: Option<Duration>,
    /// Close the connection after this answer (its identity is settled at accept, so a retry
    /// must come on a new connection to be asked about again).
    close: bool,
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
            close: false,
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

    /// tailscaled gave no verdict on the connection's caller at accept: 503, retry on a new
    /// connection.
    fn identity_unavailable() -> Self {
        Self {
            retry_after: Some(IDENTITY_RETRY_AFTER),
            close: true,
            ..Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "ServiceUnavailable",
                "tka: tailscaled could not identify this connection (it is not running, not ready or too slow); retry shortly",
            )
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
        if self.close {
            response
                .headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
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
    /// The device's tailnet address, for `X-Forwarded-For`.
    source: Option<IpAddr>,
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
    let method = request.method();
    let checked = if method == http::Method::CONNECT
        || method == http::Method::TRACE
        || method.as_str() == "TRACK"
    {
        // The Kubernetes API has no use for these. A 2xx answer to CONNECT would turn the
        // connection into a tunnel; TRACE (and IIS's TRACK) echo the request as the upstream
        // got it, and that carries the session's token, which never goes to a laptop.
        Err(Refusal::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            format!("tka: {method} is not forwarded by the tka proxy"),
        ))
    } else {
        let path = request
            .uri()
            .path_and_query()
            .map_or("/", http::uri::PathAndQuery::as_str);
        // Before anything else: a path that could leave the upstream's prefix reaches nothing,
        // discovery without a session included.
        match proxy.upstream.uri_for(path) {
            Ok(target) => clear(
                &proxy,
                info.as_ref(),
                request.uri(),
                request.headers(),
                &mut record,
            )
            .await
            .map(|cleared| (cleared, target)),
            Err(e) => Err(Refusal::new(
                StatusCode::BAD_REQUEST,
                "BadRequest",
                format!("tka: {e}"),
            )),
        }
    };
    let (cleared, target) = match checked {
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
    exchange(&proxy, cleared, target, &mut request, record, started).await
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
    uri: &Uri,
    headers: &HeaderMap,
    record: &mut ProxyRecord,
) -> Result<Cleared, Refusal> {
    browser_checks(uri, headers, &proxy.config.allowed_hosts)
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
        if info.identity_unavailable {
            return Err(Refusal::identity_unavailable());
        }
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
    Ok(Cleared {
        token,
        guard,
        source: tailnet_address(info, &identity),
    })
}

/// The device's tailnet address: the connection's source when it is one of the device's
/// addresses, else the device's first IPv4 address (or first address) as whois names them. (A
/// connection relayed by a userspace tailscaled comes from a loopback address.)
fn tailnet_address(info: &ConnectionInfo, identity: &Identity) -> Option<IpAddr> {
    let addresses = &identity.node.addresses;
    let remote = info.peer.remote.ip().to_canonical();
    if addresses.contains(&remote) {
        return Some(remote);
    }
    addresses
        .iter()
        .find(|a| a.is_ipv4())
        .or_else(|| addresses.first())
        .copied()
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

/// The request as the upstream gets it, at `uri`: end-to-end headers only, none the client may
/// not send on ([`is_withheld`]; `Impersonate-*` was refused before), the session's token, and
/// `X-Forwarded-For` with the device's tailnet address (`source`), so the API server's audit
/// log shows where the request came from.
fn upstream_request(
    request: &mut Request,
    uri: Uri,
    token: &ProxyToken,
    source: Option<IpAddr>,
    upgrade: bool,
) -> Result<http::Request<Body>, Refusal> {
    let mut headers = end_to_end(request.headers(), upgrade);
    let withheld: Vec<HeaderName> = headers.keys().filter(|n| is_withheld(n)).cloned().collect();
    for name in withheld {
        headers.remove(name);
    }
    if let Some(source) = source {
        // An IP address is always a valid header value.
        if let Ok(value) = HeaderValue::from_str(&source.to_string()) {
            headers.insert(HeaderName::from_static("x-forwarded-for"), value);
        }
    }
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
    target: Uri,
    request: &mut Request,
    mut record: ProxyRecord,
    started: Instant,
) -> Response {
    let metrics = Arc::clone(&proxy.state.metrics);
    let Cleared {
        token,
        guard,
        source,
    } = cleared;
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
    let upstream = match upstream_request(request, target, &token, source, upgrade) {
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
            // The client's own body missing its deadline fails the exchange too: that is the
            // client's doing (408, as on the API), not the upstream's.
            if let Some(timed_out) = find_cause::<BodyTimedOut>(&e) {
                let refusal = Refusal::new(
                    StatusCode::REQUEST_TIMEOUT,
                    "Timeout",
                    format!("tka: {timed_out} (--body-timeout); send the whole body at once"),
                );
                return refused(refusal, record);
            }
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
            let mut client = Counted::new(TokioIo::new(client));
            let mut upstream = Counted::new(TokioIo::new(upstream));
            tokio::select! {
                copied = tokio::io::copy_bidirectional(&mut client, &mut upstream) => {
                    if let Err(e) = copied {
                        record.reason = Some(format!("the upgraded connection failed: {e}"));
                    }
                }
                () = cancel.cancelled() => {
                    record.reason = Some("the session ended".to_owned());
                }
            }
            // Counted as written, so a splice cut short (or failed) still records what it
            // carried both ways.
            record.bytes = upstream.written.saturating_add(client.written);
        }
        Err(e) => record.reason = Some(format!("the upgrade did not complete: {e}")),
    }
    drop(guard);
    record.duration_ms = elapsed_ms(started);
    record.emit();
}

/// An upgraded connection that counts the bytes written to it.
struct Counted<T> {
    io: T,
    written: u64,
}

impl<T> Counted<T> {
    fn new(io: T) -> Self {
        Self { io, written: 0 }
    }

    fn wrote(&mut self, written: Poll<std::io::Result<usize>>) -> Poll<std::io::Result<usize>> {
        if let Poll::Ready(Ok(n)) = written {
            self.written = self.written.saturating_add(n as u64);
        }
        written
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Counted<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Counted<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let written = Pin::new(&mut self.io).poll_write(cx, buf);
        self.wrote(written)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let written = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        self.wrote(written)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
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

    /// A request as the front gets it, with `headers`.
    fn client_request(headers: &[(&str, &str)]) -> Request {
        let mut request = Request::post("/api/v1/namespaces/default/pods/web/exec?command=sh")
            .body(Body::empty())
            .unwrap();
        for (name, value) in headers {
            request.headers_mut().append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        request
    }

    fn token() -> ProxyToken {
        ProxyToken {
            session: SessionName::new("tka-alice-sre-1a2b3c").unwrap(),
            token: tka_core::Secret::new("session-token".to_owned()),
            jti: None,
            expires_at: jiff::Timestamp::UNIX_EPOCH,
            minted_at: jiff::Timestamp::UNIX_EPOCH,
        }
    }

    #[test]
    fn forged_forwarding_and_identity_headers_are_withheld_and_the_source_is_set() {
        let forged = [
            ("authorization", "Bearer client-secret"),
            ("host", "evil.example.com"),
            ("cookie", "session=stolen"),
            ("x-forwarded-for", "10.9.9.9"),
            ("x-forwarded-for", "10.8.8.8"),
            ("x-forwarded-host", "evil.example.com"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-prefix", "/other"),
            ("X-Forwarded-Port", "443"),
            ("forwarded", "for=10.9.9.9;proto=https"),
            ("x-real-ip", "10.9.9.9"),
            ("x-remote-user", "system:admin"),
            ("X-Remote-Group", "system:masters"),
            ("x-remote-extra-scopes", "all"),
        ];
        let kept = [
            ("accept", "application/json"),
            ("x-stream-protocol-version", "v4.channel.k8s.io"),
            ("user-agent", "kubectl/v1.33"),
        ];
        for upgrade in [false, true] {
            let mut headers: Vec<(&str, &str)> = forged.iter().chain(&kept).copied().collect();
            if upgrade {
                headers.extend([("connection", "Upgrade"), ("upgrade", "SPDY/3.1")]);
            }
            let mut request = client_request(&headers);
            assert_eq!(is_upgrade(request.headers()), upgrade);
            let source: IpAddr = "100.64.0.10".parse().unwrap();
            let uri: Uri = "http://10.0.0.1:6443/k8s/api".parse().unwrap();
            let upstream =
                upstream_request(&mut request, uri.clone(), &token(), Some(source), upgrade)
                    .unwrap();
            let sent = upstream.headers();
            assert_eq!(upstream.uri(), &uri);
            for (name, _) in forged {
                let name = name.to_ascii_lowercase();
                match name.as_str() {
                    "authorization" => {
                        assert_eq!(sent[header::AUTHORIZATION], "Bearer session-token");
                    }
                    "x-forwarded-for" => {
                        let values: Vec<_> = sent.get_all("x-forwarded-for").iter().collect();
                        assert_eq!(values, ["100.64.0.10"], "upgrade {upgrade}");
                    }
                    _ => assert!(sent.get(&name).is_none(), "{name} (upgrade {upgrade})"),
                }
            }
            for (name, value) in kept {
                assert_eq!(sent[name], value, "upgrade {upgrade}");
            }
            assert_eq!(sent.get(header::UPGRADE).is_some(), upgrade);
            // Without a known source, no X-Forwarded-For at all (never the client's).
            let mut request = client_request(&headers);
            let upstream = upstream_request(&mut request, uri, &token(), None, upgrade).unwrap();
            assert!(upstream.headers().get("x-forwarded-for").is_none());
        }
    }

    #[test]
    fn the_source_is_the_devices_tailnet_address() {
        let identity = |addresses: &[&str]| Identity {
            user: tka_core::UserInfo {
                id: tka_core::UserId(1),
                login_name: tka_core::LoginName::new("alice@example.com").unwrap(),
                display_name: "alice".to_owned(),
            },
            node: tka_core::NodeInfo {
                stable_id: tka_core::NodeId::new("nALICE").unwrap(),
                name: "alice.example.ts.net".to_owned(),
                addresses: addresses.iter().map(|a| a.parse().unwrap()).collect(),
                tags: Vec::new(),
            },
            groups: Vec::new(),
            capabilities: Vec::new(),
            compat_capabilities: Vec::new(),
        };
        let from = |remote: &str| ConnectionInfo {
            peer: crate::listener::Peer::direct(remote.parse().unwrap()),
            local: "127.0.0.1:8443".parse().unwrap(),
            identity: None,
            identity_unavailable: false,
        };
        let both = identity(&["fd7a:115c:a1e0::1", "100.64.0.10"]);
        // A connection straight from the device: its own source.
        assert_eq!(
            tailnet_address(&from("[fd7a:115c:a1e0::1]:40000"), &both),
            Some("fd7a:115c:a1e0::1".parse().unwrap())
        );
        assert_eq!(
            tailnet_address(&from("[::ffff:100.64.0.10]:40000"), &both),
            Some("100.64.0.10".parse().unwrap())
        );
        // Relayed (userspace tailscaled dials from loopback): the device's IPv4 address.
        assert_eq!(
            tailnet_address(&from("127.0.0.1:40000"), &both),
            Some("100.64.0.10".parse().unwrap())
        );
        assert_eq!(
            tailnet_address(&from("127.0.0.1:40000"), &identity(&["fd7a:115c:a1e0::1"])),
            Some("fd7a:115c:a1e0::1".parse().unwrap())
        );
        assert_eq!(
            tailnet_address(&from("127.0.0.1:40000"), &identity(&[])),
            None
        );
    }

    #[tokio::test]
    async fn a_counted_connection_counts_what_was_written_to_it() {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let (near, mut far) = tokio::io::duplex(64);
        let mut counted = Counted::new(near);
        counted.write_all(b"hello").await.unwrap();
        let written = counted
            .write_vectored(&[std::io::IoSlice::new(b"ab")])
            .await
            .unwrap();
        assert_eq!(written, 2);
        let mut buf = [0u8; 7];
        far.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"helloab");
        far.write_all(b"read bytes are not counted").await.unwrap();
        let mut buf = [0u8; 4];
        counted.read_exact(&mut buf).await.unwrap();
        assert_eq!(counted.written, 7);
    }

    #[test]
    fn an_unidentified_connection_is_503_and_closed_a_stranger_403() {
        let unavailable = Refusal::identity_unavailable();
        assert_eq!(unavailable.outcome, ProxyOutcome::Refused);
        let response = unavailable.into_response();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(response.headers()[header::RETRY_AFTER], "2");
        assert_eq!(response.headers()[header::CONNECTION], "close");
        let stranger = Refusal::forbidden("no").into_response();
        assert_eq!(stranger.status(), StatusCode::FORBIDDEN);
        assert!(stranger.headers().get(header::CONNECTION).is_none());
        assert!(stranger.headers().get(header::RETRY_AFTER).is_none());
    }

    #[test]
    fn refusals_are_kubernetes_status_objects() {
        let response = Refusal::limited("slow down", Duration::from_millis(10)).into_response();
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(response.headers()[header::RETRY_AFTER], "1");
        assert_eq!(response.headers()[header::CONTENT_TYPE], "application/json");
    }
}
