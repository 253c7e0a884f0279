//! The one place `serve` constructs the real implementations from [`Settings`]: the tailscaled
//! whois client, the Kubernetes issuer, the GrantMapping store fed by a watch, the session count
//! for metrics, the readiness checks, and the background tasks (the reconciler's loop, leader
//! election) that run until shutdown.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tka_core::identity::{CapabilityNames, TailscaleLocalApi};
use tka_core::issuer::CredentialIssuer;
use tka_core::{NodeId, SystemClock};
use tka_server::tailscale::{TailscaledReady, own_node};
use tka_server::{Backends, InMemoryMappings, ReadinessCheck, SessionCounter, Settings};
use tokio_util::sync::CancellationToken;

/// A background task: handed the shutdown token, it returns soon after cancellation.
pub(crate) type Task =
    Box<dyn FnOnce(CancellationToken) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send>;

/// What `serve` runs on.
pub(crate) struct Wired {
    pub(crate) backends: Backends,
    pub(crate) own_node: Option<NodeId>,
    pub(crate) sessions: Option<Arc<dyn SessionCounter>>,
    pub(crate) readiness: Vec<Arc<dyn ReadinessCheck>>,
    pub(crate) tasks: Vec<Task>,
}

/// How long `serve` waits for tailscaled to report its own node at start.
const OWN_NODE_ATTEMPTS: u32 = 30;

/// The Kubernetes issuer. Its constructor (a kube client, `IssuerSettings` with the namespace
/// and token lifetime from [`Settings`]) belongs here together with the GrantMapping watch that
/// feeds the mapping store, the session count, the API-server and CRD readiness checks, and the
/// reconciler task.
fn issuer(settings: &Settings) -> anyhow::Result<Arc<dyn CredentialIssuer>> {
    anyhow::bail!(
        "this build has no Kubernetes credential issuer to serve cluster {} with; `serve` cannot start",
        settings.cluster.name
    )
}

/// Builds the real implementations.
pub(crate) async fn wire(
    settings: &Settings,
    shutdown: &CancellationToken,
) -> anyhow::Result<Wired> {
    let issuer = issuer(settings)?;
    let localapi = Arc::new(
        TailscaleLocalApi::new(&settings.tailscale_socket)
            .with_capabilities(CapabilityNames {
                primary: settings.policy.capability_name.clone(),
                compat: settings.policy.compat_capability_name.clone(),
            })
            .with_timeout(settings.whois_timeout)
            // The server never runs a `tailscale` binary it happens to find.
            .without_cli_fallback(),
    );

    let mut own = None;
    for attempt in 1..=OWN_NODE_ATTEMPTS {
        match own_node(localapi.as_ref()).await {
            Ok(node) => {
                own = Some(node);
                break;
            }
            Err(e) if attempt == OWN_NODE_ATTEMPTS => {
                tracing::warn!(error = %e, "tailscaled did not report this server's own node; requests from it are refused only if --self-node-id names it");
            }
            Err(e) => {
                tracing::info!(error = %e, attempt, "waiting for tailscaled");
                tokio::select! {
                    () = shutdown.cancelled() => anyhow::bail!("shut down while waiting for tailscaled"),
                    () = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
        }
    }

    Ok(Wired {
        backends: Backends {
            identity: localapi.clone(),
            issuer,
            mappings: Arc::new(InMemoryMappings::default()),
            clock: Arc::new(SystemClock),
        },
        own_node: own,
        sessions: None,
        readiness: vec![Arc::new(TailscaledReady(localapi))],
        tasks: Vec::new(),
    })
}
