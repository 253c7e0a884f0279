//! The tailnet API proxy (DESIGN §8): the optional third listener's service. kubectl talks to it
//! over the tailnet with no credential; each request is forwarded to the Kubernetes API server
//! with the token of the calling device's live Session, which only this process holds.
//!
//! The pieces: [`front`] (thin: HTTP in, checks, forward, HTTP out), [`upstream`] (the pooled
//! client to the API server), [`tokens`] (the per-session token cache, minted through the
//! [`crate::sessions`] service's token path) and [`streams`] (every open response and upgraded
//! connection under its session). [`Proxy::run`] ([`service`]) is the sweeper: woken by every change of the
//! Session store and by the earliest `expiresAt` (at most [`SWEEP_EVERY`] apart), it ends the
//! streams and drops the tokens of every session that is gone, no longer live, or expired.
//!
//! Who is calling comes from the connection (whois once, at accept, by the listener's keyer:
//! [`crate::connections::ConnectionInfo::identity`]); the device's session from the shared
//! Session store, never a read per request. It decides no policy (the mint re-checks the
//! grant), writes no token anywhere, and must not import the API's routes or handlers.

pub mod certificate;
pub mod discovery;
pub mod front;
pub mod service;
pub mod streams;
pub mod tokens;
pub mod upstream;

use std::sync::Arc;

use axum::Router;

pub use service::{Proxy, ProxyConfig, SWEEP_EVERY};

/// The proxy's router: every path goes to [`front::forward`].
pub fn router(proxy: &Arc<Proxy>) -> Router {
    Router::new()
        .fallback(front::forward)
        .with_state(Arc::clone(proxy))
}
