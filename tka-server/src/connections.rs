//! Serving HTTP connections so that hostile clients cannot starve anyone (DESIGN §6, "Every
//! listener survives hostile clients"). Every listener (the API, ops, and the proxy) runs
//! [`serve`], which gives each connection:
//!
//! - a deadline for each request's headers (hyper's `header_read_timeout`, with a timer) and a
//!   bound on their size (431 beyond it);
//! - a deadline for the whole request body, counted from the moment its headers arrived
//!   ([`BodyDeadline`]; reading past it fails, and [`crate::body`] answers 408);
//! - a refusal (400) of a request with both `Transfer-Encoding` and `Content-Length`
//!   ([`crate::framing`] follows the bytes, since hyper drops one of the two);
//! - an idle timeout: a connection with no request in flight that sends nothing for that long is
//!   closed (a fresh connection that never speaks, a kept-alive one that stopped, or one that
//!   stopped reading its answers: it gets one more header deadline to finish, then is dropped);
//! - TLS when the listener has an acceptor (the proxy may): the handshake must finish within
//!   the header deadline, and every check below sees the decrypted bytes;
//! - a slot under two caps, taken at accept: one on all connections of the listener, one per
//!   peer. "Peer" is what a [`PeerKeyer`] says: for the API, the tailnet node whois names
//!   (behind a userspace sidecar every connection comes from 127.0.0.1, so an address would lump
//!   every device together); for ops, the address. A connection over a cap gets a best-effort
//!   503 problem and is closed at once, so it holds nothing.
//!
//! A request is in flight from its headers until its response body has ended (or was dropped),
//! so a long watch response keeps its connection open while an idle one is still closed.
//! Connections may be upgraded (HTTP/1.1 `101 Switching Protocols`; only the proxy answers
//! one): the upgraded connection keeps its slots under both caps until it is closed, and from
//! then on belongs to whoever took the upgrade (the proxy cuts it when its session ends).
//!
//! Shutdown (the token) stops accepting and lets each connection finish the request in flight.
//! This module knows nothing about what the requests mean; it hands each to a [`Router`] with
//! the connection's [`Peer`] as axum `ConnectInfo` and a [`ConnectionInfo`] extension, which
//! carries the identity whois gave at accept (when the listener's keyer asked), so a front that
//! trusts the connection's identity for its lifetime (the proxy) does not ask again, or that
//! whois gave no verdict (tailscaled unreachable or too slow), so such a front can tell an
//! outage from a stranger.

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::{Pin, pin};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use axum::Router;
use axum::body::{Body, HttpBody};
use axum::extract::ConnectInfo;
use axum::response::IntoResponse as _;
use axum::serve::Listener;
use hyper::body::{Frame, Incoming, SizeHint};
use hyper_util::rt::{TokioIo, TokioTimer};
use tka_core::identity::{IdentityError, IdentityProvider, WhoisRequest};
use tka_core::{Identity, NodeId};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio::time::{Instant, Sleep};
use tokio_util::sync::CancellationToken;
use tower::ServiceExt as _;

use crate::error::ApiError;
use crate::framing::{Framing, Verdict};
use crate::listener::Peer;

/// The limits every listener applies to its connections. [`Default`] is the server's defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// How long a client may take to send a request's headers, counted from when the connection
    /// is ready for a request (opened, or the previous response written).
    pub header_timeout: Duration,
    /// How long a client may take to send a whole request body, counted from its headers.
    pub body_timeout: Duration,
    /// How long a connection may sit with no request in flight and no byte received.
    pub idle_timeout: Duration,
    /// The largest request head (request line and headers) accepted, in bytes.
    pub max_header_bytes: usize,
    /// Connections open at once on one listener.
    pub max_connections: usize,
    /// Connections open at once from one peer on one listener.
    pub max_connections_per_peer: usize,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        Self {
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(5),
            max_header_bytes: 16 * 1024,
            max_connections: 1024,
            max_connections_per_peer: 32,
        }
    }
}

/// Whom a connection counts against for the per-peer cap.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum PeerKey {
    /// A tailnet node, by stable ID (whois answered).
    Node(NodeId),
    /// An address (whois did not answer, or the listener does not ask).
    Address(IpAddr),
}

/// Who a new connection is, as its [`PeerKeyer`] found out.
#[derive(Debug, Clone)]
pub struct Keyed {
    /// The key the connection counts against.
    pub key: PeerKey,
    /// The identity whois gave, when the keyer asked and it answered in time.
    pub identity: Option<Arc<Identity>>,
    /// The keyer asked whois and got no verdict: tailscaled could not be reached, was not
    /// ready, or did not answer in time. The caller is unknown, not known to be a stranger.
    pub identity_unavailable: bool,
}

impl From<PeerKey> for Keyed {
    fn from(key: PeerKey) -> Self {
        Self {
            key,
            identity: None,
            identity_unavailable: false,
        }
    }
}

/// Names the peer of a new connection, before any request is read.
#[async_trait]
pub trait PeerKeyer: Send + Sync {
    /// The key the connection from `peer` counts against, and its identity when known.
    async fn key(&self, peer: &Peer) -> Keyed;
}

/// Keys by address: for listeners whose peers are not tailnet nodes (ops).
#[derive(Debug, Clone, Copy, Default)]
pub struct ByAddress;

#[async_trait]
impl PeerKeyer for ByAddress {
    async fn key(&self, peer: &Peer) -> Keyed {
        PeerKey::Address(peer.remote.ip().to_canonical()).into()
    }
}

/// Keys by the tailnet node whois names for the connection (the PROXY header's source in PROXY
/// mode); by address when whois has no answer in time, so strangers share one bucket per
/// address.
pub struct ByNode {
    identity: Arc<dyn IdentityProvider>,
    timeout: Duration,
    service_name: Option<String>,
}

impl ByNode {
    /// Asks `identity`, at most `timeout` per connection.
    pub fn new(
        identity: Arc<dyn IdentityProvider>,
        timeout: Duration,
        service_name: Option<String>,
    ) -> Self {
        Self {
            identity,
            timeout,
            service_name,
        }
    }
}

impl std::fmt::Debug for ByNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ByNode")
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl PeerKeyer for ByNode {
    async fn key(&self, peer: &Peer) -> Keyed {
        let mut whois = WhoisRequest::connection(peer.remote);
        whois.svc_name = peer.svc_name.clone().or_else(|| self.service_name.clone());
        match tokio::time::timeout(self.timeout, self.identity.lookup(&whois)).await {
            Ok(Ok(identity)) => Keyed {
                key: PeerKey::Node(identity.key().clone()),
                identity: Some(Arc::new(identity)),
                identity_unavailable: false,
            },
            Ok(Err(IdentityError::NotInTailnet(_))) => {
                PeerKey::Address(peer.remote.ip().to_canonical()).into()
            }
            // tailscaled down, restarting, not ready, or too slow: no verdict on the caller.
            Ok(Err(_)) | Err(_) => Keyed {
                identity_unavailable: true,
                ..PeerKey::Address(peer.remote.ip().to_canonical()).into()
            },
        }
    }
}

/// What a request knows about its connection (a request extension).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionInfo {
    /// Who is at the other end.
    pub peer: Peer,
    /// The address the client connected to (the socket's local address).
    pub local: SocketAddr,
    /// The identity whois gave for this connection at accept, when the listener asked (the
    /// API and proxy listeners do; `None` when whois did not answer in time or refused).
    pub identity: Option<Arc<Identity>>,
    /// Whois was asked at accept and gave no verdict (tailscaled unreachable, not ready or too
    /// slow): a front answers 503 instead of refusing the caller as a stranger.
    pub identity_unavailable: bool,
}

/// The per-peer counts of one listener.
#[derive(Debug)]
struct PerPeer {
    cap: usize,
    open: Mutex<HashMap<PeerKey, usize>>,
}

/// A connection's place under the per-peer cap; freed on drop.
struct PeerSlot {
    per_peer: Arc<PerPeer>,
    key: PeerKey,
}

impl PerPeer {
    fn take(self: &Arc<Self>, key: PeerKey) -> Option<PeerSlot> {
        // A poisoned lock only means another connection task panicked while counting; the
        // counts are still usable.
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let count = open.entry(key.clone()).or_insert(0);
        if *count >= self.cap {
            return None;
        }
        *count += 1;
        Some(PeerSlot {
            per_peer: Arc::clone(self),
            key,
        })
    }
}

impl Drop for PeerSlot {
    fn drop(&mut self) {
        let mut open = self.per_peer.open.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(count) = open.get_mut(&self.key) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                open.remove(&self.key);
            }
        }
    }
}

/// Logs a warning at most once per interval, so a flood of refusals cannot flood the log.
#[derive(Debug, Default)]
struct Throttle {
    last: AtomicU64,
}

impl Throttle {
    const EVERY_SECS: u64 = 10;

    fn allow(&self, epoch: Instant) -> bool {
        // Seconds since `epoch`, plus one so that 0 means "never logged".
        let now = epoch.elapsed().as_secs() + 1;
        let last = self.last.load(Ordering::Relaxed);
        if last != 0 && now < last + Self::EVERY_SECS {
            return false;
        }
        self.last
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    }
}

/// Told of each connection refused at a cap: the listener's name, and which cap
/// (`"listener"`: `--max-connections`, `"peer"`: `--max-connections-per-peer`). The server counts
/// them in its metrics; this module knows nothing of metrics.
pub type OnRefused = Arc<dyn Fn(&'static str, &'static str) + Send + Sync>;

/// One listener's shared state.
struct Shared {
    name: &'static str,
    on_refused: OnRefused,
    router: Router,
    limits: ConnectionLimits,
    keyer: Arc<dyn PeerKeyer>,
    per_peer: Arc<PerPeer>,
    tls: Option<tokio_rustls::TlsAcceptor>,
    http: hyper::server::conn::http1::Builder,
    shutdown: CancellationToken,
    epoch: Instant,
    /// Warnings about the per-listener and the per-peer cap.
    total_full: Throttle,
    peer_full: Throttle,
}

/// How one listener serves its connections.
pub struct Serving {
    /// The listener's name in logs and metrics (`api`, `ops`).
    pub name: &'static str,
    /// What answers the requests.
    pub router: Router,
    /// The deadlines and caps.
    pub limits: ConnectionLimits,
    /// Who a connection's peer is, for the per-peer cap.
    pub keyer: Arc<dyn PeerKeyer>,
    /// Told of every connection refused at a cap.
    pub on_refused: OnRefused,
    /// Serve TLS with this acceptor (`None`: plain HTTP).
    pub tls: Option<tokio_rustls::TlsAcceptor>,
}

/// Serves `serving.router` on `listener` under `serving.limits` until `shutdown`, then waits for
/// the connections to finish their request in flight.
pub async fn serve<L>(
    serving: Serving,
    mut listener: L,
    to_peer: fn(L::Addr) -> Peer,
    shutdown: CancellationToken,
) where
    L: Listener<Io = TcpStream>,
{
    let Serving {
        name,
        router,
        limits,
        keyer,
        on_refused,
        tls,
    } = serving;
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_header_size(limits.max_header_bytes)
        // The read buffer bounds a request head too; it only needs to hold one.
        .max_buf_size(limits.max_header_bytes.saturating_add(1024).max(8192))
        .keep_alive(true);
    let shared = Arc::new(Shared {
        name,
        on_refused,
        router,
        limits,
        keyer,
        per_peer: Arc::new(PerPeer {
            cap: limits.max_connections_per_peer,
            open: Mutex::default(),
        }),
        tls,
        http,
        shutdown: shutdown.clone(),
        epoch: Instant::now(),
        total_full: Throttle::default(),
        peer_full: Throttle::default(),
    });
    let total = Arc::new(Semaphore::new(limits.max_connections));
    let mut connections = JoinSet::new();
    loop {
        let (stream, addr) = tokio::select! {
            () = shutdown.cancelled() => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
            accepted = listener.accept() => accepted,
        };
        let peer = to_peer(addr);
        let Ok(permit) = Arc::clone(&total).try_acquire_owned() else {
            if shared.total_full.allow(shared.epoch) {
                tracing::warn!(
                    listener = name,
                    limit = limits.max_connections,
                    "refusing connections: the listener is at its connection limit (--max-connections)"
                );
            }
            (shared.on_refused)(name, "listener");
            refuse(&stream, limits.max_connections, "on this listener");
            continue;
        };
        connections.spawn(connection(Arc::clone(&shared), stream, peer, permit));
    }
    // Stop accepting now; the connections finish what is in flight (each saw the token).
    drop(listener);
    while connections.join_next().await.is_some() {}
}

/// Writes a 503 problem if the socket takes it without waiting, then closes.
fn refuse(stream: &TcpStream, limit: usize, scope: &'static str) {
    let problem = ApiError::TooManyConnections { limit, scope }.problem();
    let body = serde_json::to_vec(&problem).unwrap_or_default();
    let mut response = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: {}\r\nretry-after: 1\r\nconnection: close\r\ncontent-length: {}\r\n\r\n",
        tka_core::api::Problem::CONTENT_TYPE,
        body.len()
    )
    .into_bytes();
    response.extend_from_slice(&body);
    // Best effort: a full socket buffer (a client that does not read) gets nothing.
    let _ = stream.try_write(&response);
}

async fn connection(
    shared: Arc<Shared>,
    stream: TcpStream,
    peer: Peer,
    total: OwnedSemaphorePermit,
) {
    let keyed = tokio::select! {
        () = shared.shutdown.cancelled() => return,
        keyed = shared.keyer.key(&peer) => keyed,
    };
    let Some(slot) = shared.per_peer.take(keyed.key) else {
        if shared.peer_full.allow(shared.epoch) {
            tracing::warn!(
                listener = shared.name,
                peer = %peer.remote,
                limit = shared.limits.max_connections_per_peer,
                "refusing connections: a peer is at its connection limit (--max-connections-per-peer)"
            );
        }
        (shared.on_refused)(shared.name, "peer");
        refuse(
            &stream,
            shared.limits.max_connections_per_peer,
            "from this device",
        );
        return;
    };
    let Ok(local) = stream.local_addr() else {
        return;
    };
    // A streamed response (the proxy's: an upstream body forwarded frame by frame) is written
    // in several small writes; with Nagle's algorithm each one after the first waits for the
    // client's delayed ACK (40 ms on Linux).
    if let Err(e) = stream.set_nodelay(true) {
        tracing::debug!(listener = shared.name, error = %e, "cannot set TCP_NODELAY");
    }
    let stream: Box<dyn Io> = match &shared.tls {
        None => Box::new(stream),
        Some(acceptor) => {
            let handshake =
                tokio::time::timeout(shared.limits.header_timeout, acceptor.accept(stream));
            let accepted = tokio::select! {
                () = shared.shutdown.cancelled() => return,
                accepted = handshake => accepted,
            };
            match accepted {
                Ok(Ok(tls)) => Box::new(tls),
                Ok(Err(e)) => {
                    tracing::debug!(listener = shared.name, error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!(
                        listener = shared.name,
                        "no TLS handshake within the header deadline"
                    );
                    return;
                }
            }
        }
    };
    let activity = Arc::new(Activity::new());
    let framing = Arc::new(Mutex::new(Framing::new(shared.limits.max_header_bytes)));
    let io = TokioIo::new(Watched {
        inner: stream,
        activity: Arc::clone(&activity),
        framing: Arc::clone(&framing),
        _slots: (slot, total),
    });
    let info = ConnectionInfo {
        peer,
        local,
        identity: keyed.identity,
        identity_unavailable: keyed.identity_unavailable,
    };
    let service = {
        let shared = Arc::clone(&shared);
        let activity = Arc::clone(&activity);
        let framing = Arc::clone(&framing);
        hyper::service::service_fn(move |request: http::Request<Incoming>| {
            let busy = Busy::begin(Arc::clone(&activity));
            let verdict = framing
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .next_verdict();
            let ambiguous = verdict == Some(Verdict::Ambiguous);
            let (mut parts, body) = request.into_parts();
            parts.extensions.insert(ConnectInfo(info.peer.clone()));
            parts.extensions.insert(info.clone());
            let body = Body::new(BodyDeadline::new(body, shared.limits.body_timeout));
            let request = http::Request::from_parts(parts, body);
            let router = shared.router.clone();
            async move {
                let response = if ambiguous {
                    let mut refused = ApiError::BadRequest(
                        "the request has both Transfer-Encoding and Content-Length; send one"
                            .into(),
                    )
                    .into_response();
                    refused.headers_mut().insert(
                        http::header::CONNECTION,
                        http::HeaderValue::from_static("close"),
                    );
                    Ok(refused)
                } else {
                    router.oneshot(request).await
                };
                // In flight until the body has been written (or dropped): a watch is busy for
                // as long as it streams.
                response
                    .map(|response| response.map(|body| Body::new(InFlight { body, _busy: busy })))
            }
        })
    };
    let mut conn = pin!(shared.http.serve_connection(io, service).with_upgrades());
    let mut closing = false;
    // Set when an idle connection is being closed: nothing is in flight, so anything left (an
    // answer the client does not read, say) gets one header deadline and is then dropped.
    let mut abandon: Option<Instant> = None;
    loop {
        tokio::select! {
            served = conn.as_mut() => {
                if let Err(e) = served {
                    tracing::debug!(listener = shared.name, error = %e, "connection ended with an error");
                }
                return;
            }
            () = shared.shutdown.cancelled(), if !closing => {
                closing = true;
                conn.as_mut().graceful_shutdown();
            }
            () = activity.idle_for(shared.limits.idle_timeout), if abandon.is_none() => {
                closing = true;
                abandon = Some(Instant::now() + shared.limits.header_timeout);
                tracing::debug!(listener = shared.name, "closing an idle connection");
                conn.as_mut().graceful_shutdown();
            }
            () = tokio::time::sleep_until(abandon.unwrap_or_else(Instant::now)), if abandon.is_some() => {
                tracing::debug!(listener = shared.name, "dropped a connection that did not close when idle");
                return;
            }
        }
    }
}

/// What a connection is doing: requests in flight and when it last received a byte or
/// finished a request.
#[derive(Debug)]
struct Activity {
    in_flight: AtomicUsize,
    last: Mutex<Instant>,
}

impl Activity {
    fn new() -> Self {
        Self {
            in_flight: AtomicUsize::new(0),
            last: Mutex::new(Instant::now()),
        }
    }

    fn touch(&self) {
        *self.last.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
    }

    fn last(&self) -> Instant {
        *self.last.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Resolves once the connection has been idle (nothing in flight, nothing received) for
    /// `idle`.
    async fn idle_for(&self, idle: Duration) {
        loop {
            let wake = if self.in_flight.load(Ordering::SeqCst) > 0 {
                Instant::now() + idle
            } else {
                let deadline = self.last() + idle;
                if Instant::now() >= deadline {
                    return;
                }
                deadline
            };
            tokio::time::sleep_until(wake).await;
        }
    }
}

/// A request in flight; counts as activity when it ends.
struct Busy(Arc<Activity>);

impl Busy {
    fn begin(activity: Arc<Activity>) -> Self {
        activity.in_flight.fetch_add(1, Ordering::SeqCst);
        Self(activity)
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.touch();
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A response body that keeps its request counted as in flight until it ends or is dropped.
struct InFlight {
    body: Body,
    _busy: Busy,
}

impl HttpBody for InFlight {
    type Data = axum::body::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// The socket, noting each byte received as activity and following the request framing. It
/// holds the connection's slots under both caps, so an upgraded connection (which outlives
/// the connection task) keeps counting until it is closed.
struct Watched {
    inner: Box<dyn Io>,
    activity: Arc<Activity>,
    framing: Arc<Mutex<Framing>>,
    _slots: (PeerSlot, OwnedSemaphorePermit),
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.touch();
            self.framing
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .feed(&buf.filled()[before..]);
        }
        polled
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// A connection's byte stream: the TCP socket, or TLS over it.
trait Io: AsyncRead + AsyncWrite + Unpin + Send {}

impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// The request body was not complete within the body deadline.
#[derive(Debug, thiserror::Error)]
#[error("the request body did not arrive within {}s", .0.as_secs_f32())]
pub struct BodyTimedOut(pub Duration);

/// A request body that fails with [`BodyTimedOut`] once its deadline has passed. tower-http's
/// body timeout restarts with every frame, so a client trickling one byte at a time would never
/// meet it; this one is for the whole body.
pub struct BodyDeadline<B> {
    inner: B,
    deadline: Pin<Box<Sleep>>,
    after: Duration,
}

impl<B> BodyDeadline<B> {
    /// `inner`, to be complete within `after` from now.
    pub fn new(inner: B, after: Duration) -> Self {
        Self {
            inner,
            deadline: Box::pin(tokio::time::sleep(after)),
            after,
        }
    }
}

impl<B> HttpBody for BodyDeadline<B>
where
    B: HttpBody + Unpin,
    B::Error: Into<axum::BoxError>,
{
    type Data = B::Data;
    type Error = axum::BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.get_mut();
        if let Poll::Ready(frame) = Pin::new(&mut this.inner).poll_frame(cx) {
            return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
        }
        if this.deadline.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Some(Err(Box::new(BodyTimedOut(this.after)))));
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_peer_slots_are_counted_and_freed() {
        let per_peer = Arc::new(PerPeer {
            cap: 2,
            open: Mutex::default(),
        });
        let a = PeerKey::Node(NodeId::new("nA").unwrap());
        let b = PeerKey::Node(NodeId::new("nB").unwrap());
        let first = per_peer.take(a.clone()).unwrap();
        let _second = per_peer.take(a.clone()).unwrap();
        assert!(
            per_peer.take(a.clone()).is_none(),
            "a third is over the cap"
        );
        assert!(per_peer.take(b).is_some(), "another peer has its own slots");
        drop(first);
        assert!(
            per_peer.take(a).is_some(),
            "a closed connection frees its slot"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn refusal_warnings_are_throttled() {
        let epoch = Instant::now();
        let throttle = Throttle::default();
        assert!(throttle.allow(epoch), "the first is logged");
        assert!(!throttle.allow(epoch), "a second at once is not");
        tokio::time::advance(Duration::from_secs(Throttle::EVERY_SECS)).await;
        assert!(throttle.allow(epoch), "one per interval is");
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_deadline_covers_the_whole_body() {
        use http_body_util::BodyExt as _;
        // One byte every 3 s: each frame is quick, the whole body is not.
        let trickle = futures::stream::unfold(0, |n| async move {
            if n > 0 {
                tokio::time::sleep(Duration::from_secs(3)).await;
            }
            (n < 10).then(|| {
                let frame = Frame::data(axum::body::Bytes::from_static(b"x"));
                (Ok::<_, std::io::Error>(frame), n + 1)
            })
        });
        let body = http_body_util::StreamBody::new(Box::pin(trickle));
        let mut body = BodyDeadline::new(body, Duration::from_secs(10));
        let mut frames = 0;
        let failed = loop {
            match body.frame().await {
                Some(Ok(_)) => frames += 1,
                Some(Err(e)) => break e,
                None => panic!("the body ended before its deadline"),
            }
        };
        assert!(failed.downcast_ref::<BodyTimedOut>().is_some(), "{failed}");
        assert!((3..=5).contains(&frames), "{frames}");
    }

    #[tokio::test(start_paused = true)]
    async fn idleness_waits_for_requests_in_flight() {
        let activity = Arc::new(Activity::new());
        let busy = Busy::begin(Arc::clone(&activity));
        let idle = activity.idle_for(Duration::from_secs(5));
        tokio::pin!(idle);
        assert!(
            tokio::time::timeout(Duration::from_secs(60), idle.as_mut())
                .await
                .is_err(),
            "a connection with a request in flight is not idle"
        );
        drop(busy);
        assert!(
            tokio::time::timeout(Duration::from_secs(11), idle)
                .await
                .is_ok(),
            "idle once the request is done"
        );
    }
}
