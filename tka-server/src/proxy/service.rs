//! The proxy as one value ([`Proxy`]: its configuration, the Session store, the upstream, the
//! token cache, the stream registry and the per-device rate limiter) and its sweeper
//! ([`Proxy::run`]), which ends the streams and drops the tokens of sessions that ended. It
//! serves no request (that is [`crate::proxy::front`]) and must not import the front.

use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use kube::runtime::reflector::ObjectRef;
use tka_core::SessionName;
use tka_core::kubernetes::{Session, SessionStore};
use tokio_util::sync::CancellationToken;

use crate::hosts::AllowedHosts;
use crate::proxy::streams::Streams;
use crate::proxy::tokens::TokenCache;
use crate::proxy::upstream::Upstream;
use crate::ratelimit::{DeviceRateLimiter, RateLimitConfig};
use crate::state::ApiState;

/// The longest the sweeper waits between two looks at the open streams, whatever happens.
pub const SWEEP_EVERY: Duration = Duration::from_millis(500);

/// How often the proxy's rate limiter forgets idle devices.
const FORGET_IDLE_EVERY: Duration = Duration::from_secs(60);

/// The proxy's own configuration (validated by [`crate::settings`]).
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    /// The `Host` values the proxy answers to (the API's, plus the proxy URL's host and the
    /// proxy's listen address).
    pub allowed_hosts: AllowedHosts,
    /// Open proxied requests and streams per device.
    pub max_streams_per_device: usize,
    /// Proxied requests per device.
    pub rate_limit: RateLimitConfig,
}

/// The proxy: everything a proxied request needs.
#[derive(Debug)]
pub struct Proxy {
    pub(crate) state: Arc<ApiState>,
    pub(crate) sessions: SessionStore,
    pub(crate) upstream: Upstream,
    pub(crate) tokens: TokenCache,
    pub(crate) streams: Arc<Streams>,
    pub(crate) limiter: DeviceRateLimiter,
    pub(crate) config: ProxyConfig,
    /// The server's own Kubernetes client, for discovery without a session
    /// ([`crate::proxy::discovery`]); none in a proxy built without it.
    pub(crate) discovery: Option<crate::proxy::discovery::DiscoveryClient>,
}

impl Proxy {
    /// A proxy forwarding to `upstream` for the devices whose sessions are in `sessions`, with
    /// the API's `state` (whose sessions service mints the tokens, whose metrics count), and
    /// `discovery`, the server's own Kubernetes client, for discovery by devices with a grant
    /// but no session ([`crate::proxy::discovery`]; none: such discovery gets the 401 too).
    pub fn new(
        state: Arc<ApiState>,
        sessions: SessionStore,
        upstream: Upstream,
        config: ProxyConfig,
        discovery: Option<kube::Client>,
    ) -> Arc<Self> {
        let streams = Streams::new(config.max_streams_per_device, Arc::clone(&state.metrics));
        Arc::new(Self {
            limiter: DeviceRateLimiter::new(config.rate_limit),
            state,
            sessions,
            upstream,
            tokens: TokenCache::default(),
            streams,
            config,
            discovery: discovery.map(crate::proxy::discovery::DiscoveryClient),
        })
    }

    /// Whether the proxy holds a token for `session` (for tests and diagnostics; never the
    /// token itself).
    pub fn holds_token(&self, session: &SessionName) -> bool {
        self.tokens.holds(session)
    }

    pub(crate) fn now(&self) -> Timestamp {
        self.state.backends.clock.now()
    }

    /// The session if it is live at `now`.
    fn live(&self, name: &SessionName, now: Timestamp) -> Option<Arc<Session>> {
        self.sessions
            .watched()
            .store()
            .get(&ObjectRef::new(name.as_str()))
            .filter(|s| !s.is_over(now))
    }

    /// Ends the streams and drops the tokens of every session that is no longer live; returns
    /// the earliest end of the sessions still open.
    fn sweep(&self) -> Option<Timestamp> {
        let now = self.now();
        let listed = self.sessions.watched().is_listed();
        let mut earliest: Option<Timestamp> = None;
        let mut names = self.streams.sessions();
        names.extend(self.tokens.sessions());
        names.sort();
        names.dedup();
        for name in names {
            match self.live(&name, now) {
                Some(session) => {
                    let ends = session.expires_at();
                    earliest = Some(earliest.map_or(ends, |e| e.min(ends)));
                }
                // Before the first list the store knows nothing; nothing is ended on that.
                None if !listed => {}
                None => {
                    tracing::debug!(session = %name, "the session ended; closing its proxied streams");
                    self.streams.end(&name);
                    self.tokens.forget(&name);
                }
            }
        }
        earliest
    }

    /// The sweeper: runs until `shutdown`, then closes every stream.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let mut changes = self.sessions.watched().subscribe();
        let mut watching = true;
        let mut forgot = tokio::time::Instant::now();
        loop {
            let earliest = self.sweep();
            if forgot.elapsed() >= FORGET_IDLE_EVERY {
                self.limiter.forget_idle();
                forgot = tokio::time::Instant::now();
            }
            let mut wait = SWEEP_EVERY;
            if let Some(at) = earliest {
                let until = at.duration_since(self.now()).unsigned_abs();
                wait = wait.min(until);
            }
            tokio::select! {
                () = shutdown.cancelled() => break,
                changed = changes.changed(), if watching => {
                    // A stopped watch leaves the timer.
                    watching = changed.is_ok();
                }
                () = tokio::time::sleep(wait) => {}
            }
        }
        self.streams.end_all();
    }
}
