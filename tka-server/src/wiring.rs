//! The one place `serve` constructs the real implementations from [`Settings`]: the tailscaled
//! whois client, the Kubernetes issuer, the GrantMapping store fed by a watch, the session count
//! for metrics, the readiness checks, and the background tasks (the reconciler's loop, leader
//! election) that run until shutdown.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use tka_server::{Backends, ReadinessCheck, SessionCounter, Settings};
use tokio_util::sync::CancellationToken;

/// A background task: handed the shutdown token, it returns soon after cancellation.
pub(crate) type Task =
    Box<dyn FnOnce(CancellationToken) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send>;

/// What `serve` runs on.
pub(crate) struct Wired {
    pub(crate) backends: Backends,
    pub(crate) sessions: Option<Arc<dyn SessionCounter>>,
    pub(crate) readiness: Vec<Arc<dyn ReadinessCheck>>,
    pub(crate) tasks: Vec<Task>,
}

/// Builds the real implementations.
pub(crate) async fn wire(
    settings: &Settings,
    _shutdown: &CancellationToken,
) -> anyhow::Result<Wired> {
    anyhow::bail!(
        "this build has no credential issuer to serve logins with (cluster {}): the Kubernetes backend and the tailscaled client are not wired into `serve` yet",
        settings.cluster.name
    )
}
