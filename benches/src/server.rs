//! The server side of the load generator and the memory probe: the real `ApiState` with the
//! fixtures' cluster, policy and mappings, the instant [`FastIssuer`] and a caller-chosen
//! identity provider. Builds state only; must not listen or spawn.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use tka_core::{Clock, IdentityProvider, SystemClock};
use tka_server::guard::AllowedHosts;
use tka_server::ratelimit::RateLimitConfig;
use tka_server::{ApiConfig, ApiState, Backends, InMemoryMappings, Metrics};

use crate::issuer::FastIssuer;
use crate::{FixtureError, fixtures};

/// The Host header the server accepts.
pub const HOST: &str = "tka-prod-eu";

/// The API configuration: loopback peers only, a rate limit far above any load (so its cost is
/// measured, not its refusals).
pub fn api_config() -> Result<ApiConfig, FixtureError> {
    let limit = |n: u32| NonZeroU32::new(n).ok_or(FixtureError::new("rate limit", "zero"));
    Ok(ApiConfig {
        cluster: fixtures::endpoint()?,
        policy: fixtures::policy_settings()?,
        allowed_hosts: AllowedHosts::new([HOST.to_owned()], []),
        proxy_only: false,
        self_node_ids: Vec::new(),
        loopback_peers_only: true,
        service_name: None,
        max_body_bytes: 64 * 1024,
        rate_limit: RateLimitConfig {
            per_minute: limit(u32::MAX)?,
            burst: limit(1_000_000)?,
        },
        whois_timeout: Duration::from_secs(5),
        issuer_timeout: Duration::from_secs(10),
    })
}

/// Shared state for `api_router`, with the twenty fixture mappings and the system clock.
pub fn api_state(
    identity: Arc<dyn IdentityProvider>,
    metrics: Arc<Metrics>,
) -> Result<Arc<ApiState>, FixtureError> {
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let backends = Backends {
        identity,
        issuer: Arc::new(FastIssuer::new(SystemClock)?),
        mappings: Arc::new(InMemoryMappings::new(fixtures::mappings()?)),
        clock,
    };
    Ok(ApiState::new(api_config()?, backends, metrics))
}
