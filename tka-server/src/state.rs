//! The API's shared state (DESIGN §6): the validated configuration ([`ApiConfig`]), the
//! implementations it runs on ([`Backends`]: whois, the issuer, the GrantMappings, the clock), the
//! per-device rate limiter and the metrics, held together as [`ApiState`]. Everything else in the
//! request path reads it: the guard, the body extractor, the [`crate::sessions`] service and the
//! handlers. It holds data and decides nothing; it must not import the sessions service, the
//! handlers, the router or the error mapping, so the flow stays one way: state → sessions → fronts.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use tka_core::api::ClusterEndpoint;
use tka_core::issuer::CredentialIssuer;
use tka_core::{
    Clock, Identity, IdentityProvider, NodeId, ParsedGrants, PolicySettings, SkippedValue,
};

use crate::hosts::AllowedHosts;
use crate::mappings::MappingStore;
use crate::metrics::Metrics;
use crate::ratelimit::{DeviceRateLimiter, RateLimitConfig};

/// The API's configuration: plain values, validated by [`crate::settings::Settings`].
#[derive(Debug, Clone)]
pub struct ApiConfig {
    /// The cluster as clients are told about it.
    pub cluster: ClusterEndpoint,
    /// Policy bounds, capability names, protected namespaces.
    pub policy: PolicySettings,
    /// The `Host` values the API answers to.
    pub allowed_hosts: AllowedHosts,
    /// The cluster is reached through the tka proxy only: no token is handed to a laptop
    /// (`POST /api/v1/token` and logins with `via: direct` are refused with `proxyOnly`).
    pub proxy_only: bool,
    /// The server's own node IDs; whois answers naming one are refused.
    pub self_node_ids: Vec<NodeId>,
    /// Refuse TCP peers that are not loopback (userspace networking and PROXY mode).
    pub loopback_peers_only: bool,
    /// The Tailscale Service connections are addressed to, when the peer does not say.
    pub service_name: Option<String>,
    /// The largest request body accepted.
    pub max_body_bytes: usize,
    /// Per-device rate limit.
    pub rate_limit: RateLimitConfig,
    /// Deadline for one whois.
    pub whois_timeout: Duration,
    /// Deadline for one issuer call.
    pub issuer_timeout: Duration,
}

impl ApiConfig {
    /// The cluster as clients are told about it, saying whether tokens for direct use are
    /// handed out (not on a proxy-only server).
    pub fn cluster_endpoint(&self) -> ClusterEndpoint {
        ClusterEndpoint {
            direct_tokens: !self.proxy_only,
            ..self.cluster.clone()
        }
    }
}

/// The implementations the API runs on.
#[derive(Clone)]
pub struct Backends {
    /// Who is calling (tailscaled's whois).
    pub identity: Arc<dyn IdentityProvider>,
    /// Sessions and tokens (the Kubernetes backend).
    pub issuer: Arc<dyn CredentialIssuer>,
    /// The GrantMappings, from memory.
    pub mappings: Arc<dyn MappingStore>,
    /// The time, for expiries.
    pub clock: Arc<dyn Clock>,
}

impl std::fmt::Debug for Backends {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Backends")
            .field("mappings", &self.mappings)
            .field("clock", &self.clock)
            .finish_non_exhaustive()
    }
}

/// Everything the handlers share.
#[derive(Debug)]
pub struct ApiState {
    /// Configuration.
    pub config: ApiConfig,
    /// Implementations.
    pub backends: Backends,
    /// The per-device rate limiter.
    pub rate_limiter: DeviceRateLimiter,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// When each distinct skipped capability value was last logged.
    skipped_log: SkippedLog,
}

/// How often one distinct skipped capability value is logged at WARN.
const SKIPPED_LOG_EVERY: SignedDuration = SignedDuration::from_mins(10);
/// How many distinct skipped values are remembered; beyond that they are logged at DEBUG only.
const SKIPPED_LOG_CAP: usize = 1024;

/// Rate-limits the WARN for skipped capability values: once per distinct value (schema, value,
/// reason; not the device or position) per [`SKIPPED_LOG_EVERY`], so a malformed grant in the
/// policy file is reported without a line on every request of every device that holds it.
#[derive(Debug, Default)]
struct SkippedLog {
    /// Keyed by a digest of the value, so a large value costs no more memory than a small one.
    last: Mutex<HashMap<u64, Timestamp>>,
}

impl SkippedLog {
    /// Whether `value` is due for a WARN at `now` (and remembers that it was logged).
    fn due(&self, value: &SkippedValue, now: Timestamp) -> bool {
        let mut digest = std::hash::DefaultHasher::new();
        (
            value.schema.to_string(),
            value.value.to_string(),
            &value.reason,
        )
            .hash(&mut digest);
        let key = digest.finish();
        // The lock is never held across an await; a poisoned map is still a valid map.
        let mut last = self.last.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(at) = last.get(&key)
            && *at + SKIPPED_LOG_EVERY > now
        {
            return false;
        }
        if last.len() >= SKIPPED_LOG_CAP && !last.contains_key(&key) {
            last.retain(|_, at| *at + SKIPPED_LOG_EVERY > now);
            if last.len() >= SKIPPED_LOG_CAP {
                return false;
            }
        }
        last.insert(key, now);
        true
    }
}

impl ApiState {
    /// Shared state for [`crate::routes::api_router`] (and any other front on the same service).
    ///
    /// `ApiState::new(config, backends, metrics)` is all a caller needs: the rate limiter is made
    /// from `config.rate_limit`.
    pub fn new(config: ApiConfig, backends: Backends, metrics: Arc<Metrics>) -> Arc<Self> {
        let rate_limiter = DeviceRateLimiter::new(config.rate_limit);
        Arc::new(Self {
            config,
            backends,
            rate_limiter,
            metrics,
            skipped_log: SkippedLog::default(),
        })
    }

    /// Logs the capability values a caller's grants skipped, each distinct value at WARN at most
    /// once per [`SKIPPED_LOG_EVERY`] (DEBUG otherwise).
    pub fn report_skipped(&self, grants: &ParsedGrants, identity: &Identity) {
        let now = self.backends.clock.now();
        for skipped in &grants.skipped {
            if self.skipped_log.due(skipped, now) {
                tracing::warn!(
                    device = %identity.node.stable_id,
                    skipped = %skipped,
                    "a capability value was skipped (logged once per distinct value every 10 minutes)"
                );
            } else {
                tracing::debug!(
                    device = %identity.node.stable_id,
                    skipped = %skipped,
                    "a capability value was skipped"
                );
            }
        }
    }
}
