//! The server's Prometheus metrics (the `prometheus-client` crate), served on the ops listener.
//! Labels are closed sets of words chosen here (outcomes, causes, problem codes); no user,
//! device, role, session or token ever becomes a label or a value.
//!
//! Active sessions are a gauge read from the session store at scrape time
//! ([`SessionCounter`]), never a counter kept here, so restarts and other replicas cannot make
//! it drift.

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric as _};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Counts live sessions, from wherever sessions are stored (the Session informer's cache).
pub trait SessionCounter: Send + Sync + std::fmt::Debug + 'static {
    /// The number of live sessions, or `None` while the store is not synced yet.
    fn active_sessions(&self) -> Option<u64>;
}

#[derive(Debug)]
struct ActiveSessions(Arc<dyn SessionCounter>);

impl Collector for ActiveSessions {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        if let Some(count) = self.0.active_sessions() {
            let gauge = ConstGauge::new(i64::try_from(count).unwrap_or(i64::MAX));
            let metric = encoder.encode_descriptor(
                "tka_active_sessions",
                "Live sessions on this cluster, read from the session store.",
                None,
                gauge.metric_type(),
            )?;
            gauge.encode(metric)?;
        }
        Ok(())
    }
}

type Labels = [(&'static str, &'static str); 1];
type Labels2 = [(&'static str, &'static str); 2];

/// Why a session was revoked, for `tka_revocations_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RevocationCause {
    /// The device logged out.
    Logout,
    /// A refresh found the grant withdrawn.
    GrantWithdrawn,
    /// The reconciler removed an expired session.
    Expired,
    /// The reconciler's re-validation or an administrator revoked it.
    Reconciler,
}

impl RevocationCause {
    fn label(self) -> &'static str {
        match self {
            Self::Logout => "logout",
            Self::GrantWithdrawn => "grant_withdrawn",
            Self::Expired => "expired",
            Self::Reconciler => "reconciler",
        }
    }
}

/// The outcome of a login, for `tka_logins_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoginOutcome {
    /// Credentials were issued.
    Issued,
    /// Policy refused.
    Denied,
    /// The request was malformed (bad TTL, bad role name).
    Invalid,
    /// The issuer failed.
    Failed,
}

impl LoginOutcome {
    fn label(self) -> &'static str {
        match self {
            Self::Issued => "issued",
            Self::Denied => "denied",
            Self::Invalid => "invalid",
            Self::Failed => "failed",
        }
    }
}

/// The outcome of a proxied request, for `tka_proxy_requests_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyOutcome {
    /// Forwarded; the upstream answered (whatever its status).
    Forwarded,
    /// Forwarded and upgraded (exec, attach, port-forward).
    Upgraded,
    /// Refused: the device has no live session (401).
    NoSession,
    /// Refused by a check (impersonation, browser, Host, identity; 403).
    Refused,
    /// Refused: over the device's request rate or stream cap (429).
    Limited,
    /// No token could be minted for the session.
    TokenFailed,
    /// The upstream could not be reached or did not answer in time.
    UpstreamFailed,
}

impl ProxyOutcome {
    fn label(self) -> &'static str {
        match self {
            Self::Forwarded => "forwarded",
            Self::Upgraded => "upgraded",
            Self::NoSession => "no_session",
            Self::Refused => "refused",
            Self::Limited => "limited",
            Self::TokenFailed => "token_failed",
            Self::UpstreamFailed => "upstream_failed",
        }
    }
}

/// All metrics of one server.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    logins: Family<Labels, Counter>,
    refused: Family<Labels, Counter>,
    connections_refused: Family<Labels2, Counter>,
    tokens_minted: Counter,
    whois_duration: Histogram,
    reconcile_duration: Histogram,
    reconcile_errors: Counter,
    revocations: Family<Labels, Counter>,
    proxy_requests: Family<Labels, Counter>,
    proxy_active_streams: Gauge,
    proxy_upstream: Histogram,
}

impl Metrics {
    /// A registry with every metric; `sessions` feeds `tka_active_sessions` when given.
    pub fn new(sessions: Option<Arc<dyn SessionCounter>>) -> Self {
        let mut registry = Registry::default();
        let logins = Family::<Labels, Counter>::default();
        registry.register(
            "tka_logins",
            "Logins by outcome (issued, denied, invalid, failed).",
            logins.clone(),
        );
        let refused = Family::<Labels, Counter>::default();
        registry.register(
            "tka_requests_refused",
            "API requests refused before reaching an endpoint, by problem code.",
            refused.clone(),
        );
        let connections_refused = Family::<Labels2, Counter>::default();
        registry.register(
            "tka_connections_refused",
            "Connections refused at a connection cap, by listener (api, ops) and cap (listener, peer).",
            connections_refused.clone(),
        );
        let tokens_minted = Counter::default();
        registry.register(
            "tka_tokens_minted",
            "Tokens handed out, by login or refresh.",
            tokens_minted.clone(),
        );
        let whois_duration = Histogram::new(exponential_buckets(0.0005, 2.0, 14));
        registry.register(
            "tka_whois_duration_seconds",
            "Time tailscaled took to answer a whois.",
            whois_duration.clone(),
        );
        let reconcile_duration = Histogram::new(exponential_buckets(0.005, 2.0, 14));
        registry.register(
            "tka_reconcile_duration_seconds",
            "Duration of one reconciler pass.",
            reconcile_duration.clone(),
        );
        let reconcile_errors = Counter::default();
        registry.register(
            "tka_reconcile_errors",
            "Reconciler passes that failed.",
            reconcile_errors.clone(),
        );
        let revocations = Family::<Labels, Counter>::default();
        registry.register(
            "tka_revocations",
            "Sessions revoked, by cause (logout, grant_withdrawn, expired, reconciler).",
            revocations.clone(),
        );
        let proxy_requests = Family::<Labels, Counter>::default();
        registry.register(
            "tka_proxy_requests",
            "Proxied requests by outcome (forwarded, upgraded, no_session, refused, limited, token_failed, upstream_failed).",
            proxy_requests.clone(),
        );
        let proxy_active_streams = Gauge::default();
        registry.register(
            "tka_proxy_active_streams",
            "Proxied responses and upgraded connections open now.",
            proxy_active_streams.clone(),
        );
        let proxy_upstream = Histogram::new(exponential_buckets(0.001, 2.0, 16));
        registry.register(
            "tka_proxy_upstream_seconds",
            "Time the upstream API server took to answer a proxied request's headers.",
            proxy_upstream.clone(),
        );
        if let Some(sessions) = sessions {
            registry.register_collector(Box::new(ActiveSessions(sessions)));
        }
        Self {
            registry,
            logins,
            refused,
            connections_refused,
            tokens_minted,
            whois_duration,
            reconcile_duration,
            reconcile_errors,
            revocations,
            proxy_requests,
            proxy_active_streams,
            proxy_upstream,
        }
    }

    /// Counts a proxied request.
    pub fn proxy_request(&self, outcome: ProxyOutcome) {
        self.proxy_requests
            .get_or_create(&[("outcome", outcome.label())])
            .inc();
    }

    /// A proxied stream opened (`true`) or closed (`false`).
    pub fn proxy_stream(&self, opened: bool) {
        if opened {
            self.proxy_active_streams.inc();
        } else {
            self.proxy_active_streams.dec();
        }
    }

    /// Records how long the upstream took to answer a proxied request's headers.
    pub fn observe_upstream(&self, took: Duration) {
        self.proxy_upstream.observe(took.as_secs_f64());
    }

    /// Counts a login.
    pub fn login(&self, outcome: LoginOutcome) {
        self.logins
            .get_or_create(&[("outcome", outcome.label())])
            .inc();
    }

    /// Counts a request refused by the guard, by problem code.
    pub fn refused(&self, code: &'static str) {
        self.refused.get_or_create(&[("code", code)]).inc();
    }

    /// Counts a connection refused at a cap of `listener` (`cap`: "listener" or "peer").
    pub fn connection_refused(&self, listener: &'static str, cap: &'static str) {
        self.connections_refused
            .get_or_create(&[("listener", listener), ("cap", cap)])
            .inc();
    }

    /// Counts a token handed out.
    pub fn token_minted(&self) {
        self.tokens_minted.inc();
    }

    /// Records how long a whois took.
    pub fn observe_whois(&self, took: Duration) {
        self.whois_duration.observe(took.as_secs_f64());
    }

    /// Records a reconciler pass.
    pub fn observe_reconcile(&self, took: Duration, succeeded: bool) {
        self.reconcile_duration.observe(took.as_secs_f64());
        if !succeeded {
            self.reconcile_errors.inc();
        }
    }

    /// Counts revoked sessions.
    pub fn revoked(&self, cause: RevocationCause, sessions: u64) {
        self.revocations
            .get_or_create(&[("cause", cause.label())])
            .inc_by(sessions);
    }

    /// The metrics in the Prometheus text format (0.0.4).
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut out = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry)?;
        Ok(out)
    }
}

/// The `Content-Type` of [`Metrics::encode`]'s output.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Fixed(Option<u64>);

    impl SessionCounter for Fixed {
        fn active_sessions(&self) -> Option<u64> {
            self.0
        }
    }

    #[test]
    fn active_sessions_come_from_the_store() {
        let text = Metrics::new(Some(Arc::new(Fixed(Some(7)))))
            .encode()
            .unwrap();
        assert!(text.contains("tka_active_sessions 7"), "{text}");
        let text = Metrics::new(Some(Arc::new(Fixed(None)))).encode().unwrap();
        assert!(!text.contains("tka_active_sessions"), "{text}");
    }

    #[test]
    fn counters_are_labelled_by_closed_words() {
        let m = Metrics::new(None);
        m.login(LoginOutcome::Issued);
        m.login(LoginOutcome::Denied);
        m.revoked(RevocationCause::GrantWithdrawn, 1);
        m.observe_whois(Duration::from_millis(1));
        let text = m.encode().unwrap();
        assert!(
            text.contains("tka_logins_total{outcome=\"issued\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("tka_logins_total{outcome=\"denied\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("tka_revocations_total{cause=\"grant_withdrawn\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("tka_whois_duration_seconds_count 1"),
            "{text}"
        );
    }

    #[test]
    fn the_proxy_counts_requests_streams_and_upstream_latency() {
        let m = Metrics::new(None);
        m.proxy_request(ProxyOutcome::Forwarded);
        m.proxy_request(ProxyOutcome::NoSession);
        m.proxy_stream(true);
        m.proxy_stream(true);
        m.proxy_stream(false);
        m.observe_upstream(Duration::from_millis(3));
        let text = m.encode().unwrap();
        for line in [
            "tka_proxy_requests_total{outcome=\"forwarded\"} 1",
            "tka_proxy_requests_total{outcome=\"no_session\"} 1",
            "tka_proxy_active_streams 1",
            "tka_proxy_upstream_seconds_count 1",
        ] {
            assert!(text.contains(line), "{line} in {text}");
        }
    }
}
