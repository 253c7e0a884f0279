//! The one place a real server is built from [`Settings`]: the tailscaled whois client, the
//! Kubernetes issuer, the shared watches ([`ClusterWatches`]: one reflector per resource, read by
//! the GrantMapping feed, the session count, the reconciler and a login's first look at a
//! device's sessions), the metrics, the readiness checks, the API state and the background tasks
//! (the watches, the feed, the reconciler's loop with leader election) that run until shutdown. The binary calls [`server`]; so does anything
//! else that needs a server built exactly as in production.
//!
//! Construction runs in one direction (client → watches → issuer and stores → metrics →
//! reconciler → state → listeners); nothing built later is patched into something built earlier.
//! It must not decide policy or serve requests; it only connects the pieces.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use kube::Client;
use tka_core::identity::{CapabilityNames, IdentityProvider, LoopbackRetry, TailscaleLocalApi};
use tka_core::kubernetes::{
    ClusterWatches, IssuerSettings, KubernetesIssuer, KubernetesReconciler, PassObserver,
    PolicyGrantCheck, ReconcilerSettings,
};
use tka_core::reconciler::{ObjectKind, RemovalReason};
use tka_core::{Clock, SystemClock};
use tokio_util::sync::CancellationToken;

use crate::kubernetes::{
    ApiServerReady, Bindability, CrdsInstalled, LiveSessions, MappingFeed, MappingsSynced,
};
use crate::mappings::InMemoryMappings;
use crate::metrics::{Metrics, RevocationCause};
use crate::ops::{ReadinessCheck, ops_router};
use crate::proxy::Proxy;
use crate::proxy::certificate::TailnetCertificate;
use crate::proxy::upstream::Upstream;
use crate::server::Server;
use crate::settings::{ProxyTls, Settings};
use crate::state::{ApiState, Backends};
use crate::tailscale::{TailscaledReady, own_node};

/// A background task: handed the shutdown token, it returns soon after cancellation.
pub type Task =
    Box<dyn FnOnce(CancellationToken) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send>;

/// Everything a server runs on, built but not yet listening.
pub struct Wired {
    /// The API's shared state (backends, configuration, metrics).
    pub state: Arc<ApiState>,
    /// The server's metrics (also in `state`), for the ops listener.
    pub metrics: Arc<Metrics>,
    /// The shared watches; the Session store is where a device's live session is looked up.
    pub watches: ClusterWatches,
    /// What `/readyz` checks.
    pub readiness: Vec<Arc<dyn ReadinessCheck>>,
    /// The background tasks to run for the server's lifetime.
    pub tasks: Vec<Task>,
    /// The server's own Kubernetes client (for the proxy's discovery without a session).
    pub client: Client,
}

impl std::fmt::Debug for Wired {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Wired")
            .field("watches", &self.watches)
            .field("tasks", &self.tasks.len())
            .finish_non_exhaustive()
    }
}

/// How long tailscaled may take to hand over the proxy's tailnet certificate.
const TAILNET_CERT_TIMEOUT: Duration = Duration::from_secs(120);

/// How long `serve` waits for tailscaled to report its own node at start.
const OWN_NODE_ATTEMPTS: u32 = 30;

/// The name this replica holds the Lease under: the pod's name when the Deployment passes it,
/// else the host name, else a random one.
fn holder_identity() -> String {
    std::env::var("POD_NAME")
        .or_else(|_| std::env::var("HOSTNAME"))
        .unwrap_or_else(|_| format!("tka-server-{:08x}", rand::random::<u32>()))
}

/// The Kubernetes side: the issuer, the shared watches, the GrantMapping feed (with
/// bindability and the ClusterRoles' read-only judgement, the same as the reconciler's), the
/// metrics (whose session count reads the Session store), the readiness checks and the
/// background tasks (watches, feed, reconciler).
struct Kube {
    issuer: Arc<KubernetesIssuer>,
    mappings: Arc<InMemoryMappings>,
    watches: ClusterWatches,
    metrics: Arc<Metrics>,
    readiness: Vec<Arc<dyn ReadinessCheck>>,
    tasks: Vec<Task>,
}

/// Feeds the reconciler's passes into the metrics.
fn pass_observer(metrics: Arc<Metrics>) -> PassObserver {
    Arc::new(move |took, outcome| {
        metrics.observe_reconcile(took, outcome.is_ok());
        if let Ok(report) = outcome {
            let ended: Vec<_> = report.removed_of(ObjectKind::Session).collect();
            let expired = ended
                .iter()
                .filter(|r| r.reason == RemovalReason::Expired)
                .count();
            let other = ended.len() - expired;
            if expired > 0 {
                metrics.revoked(RevocationCause::Expired, expired as u64);
            }
            if other > 0 {
                metrics.revoked(RevocationCause::Reconciler, other as u64);
            }
        }
    })
}

/// Wraps a future that runs until shutdown as a [`Task`].
fn task<F>(make: impl FnOnce(CancellationToken) -> F + Send + 'static) -> Task
where
    F: Future<Output = ()> + Send + 'static,
{
    Box::new(move |shutdown: CancellationToken| {
        Box::pin(make(shutdown)) as Pin<Box<dyn Future<Output = ()> + Send>>
    })
}

fn kube(
    settings: &Settings,
    client: Client,
    identity: Arc<dyn IdentityProvider>,
    clock: Arc<dyn Clock>,
) -> anyhow::Result<Kube> {
    let mut issuer_settings = IssuerSettings::new(&settings.namespace);
    issuer_settings.token_lifetime = settings.token_lifetime;
    let (watches, drive_watches) = ClusterWatches::new(&client, &settings.namespace);
    let issuer = KubernetesIssuer::new(client.clone(), issuer_settings, clock.clone())
        .map_err(|e| anyhow::anyhow!("cannot set up the Kubernetes issuer: {e}"))?
        .with_session_store(watches.sessions.clone());
    #[cfg(feature = "fault-injection")]
    let issuer = match settings.fault_abort_after {
        Some(point) => issuer.with_checkpoints(crate::fault::abort_after(point)),
        None => issuer,
    };
    let issuer = Arc::new(issuer);
    let mappings = Arc::new(InMemoryMappings::default());
    let bindability = Arc::new(Bindability::new(client.clone()));
    let feed = Arc::new(
        MappingFeed::new(mappings.clone(), bindability.clone())
            .allowing_cluster_wide_write(settings.policy.allow_cluster_wide_write),
    );
    let metrics = Arc::new(Metrics::new(Some(Arc::new(LiveSessions::new(
        watches.sessions.clone(),
        clock.clone(),
    )))));

    let holder = holder_identity();
    let mut reconciler_settings = ReconcilerSettings::new(&settings.namespace, &holder);
    reconciler_settings.denied_namespaces = settings
        .policy
        .forbidden_namespaces
        .iter()
        .filter(|ns| **ns != settings.namespace)
        .cloned()
        .collect();
    reconciler_settings.allow_cluster_wide_write = settings.policy.allow_cluster_wide_write;
    reconciler_settings.grace = issuer.settings().pending_grace;
    reconciler_settings.revalidate_every = settings.revalidate_every;
    // Without leader election every replica reconciles (each pass is idempotent): each holds a
    // Lease of its own.
    reconciler_settings.lease.name = match &settings.leader_election {
        Some(election) => election.lease_name.clone(),
        None => format!("tka-server-{holder}"),
    };
    let check = PolicyGrantCheck::new(settings.cluster.name.clone(), settings.policy.clone());
    let reconciler = Arc::new(
        KubernetesReconciler::new(
            client.clone(),
            reconciler_settings,
            clock,
            identity,
            Arc::new(check),
        )
        .with_mapping_hook(bindability)
        .with_watches(watches.clone())
        .with_pass_observer(pass_observer(metrics.clone())),
    );

    let watches_task = task(move |shutdown| async move {
        tokio::select! {
            () = shutdown.cancelled() => {}
            () = drive_watches => {}
        }
    });
    let feed_task = {
        let feed = feed.clone();
        let watches = watches.clone();
        task(move |shutdown| async move { feed.run(&watches, shutdown).await })
    };
    let reconciler_task = task(move |shutdown| async move {
        // `run` releases the Lease when shutdown completes, so a successor takes over at once
        // instead of waiting for the lease to expire.
        if let Err(e) = reconciler.run(shutdown.cancelled_owned()).await {
            tracing::warn!(error = %e, "the reconciler stopped with an error");
        }
    });

    let crds = CrdsInstalled::new(client.clone(), watches.clone());
    Ok(Kube {
        issuer,
        mappings,
        watches,
        metrics,
        readiness: vec![
            Arc::new(ApiServerReady(client)),
            Arc::new(crds),
            Arc::new(MappingsSynced(feed)),
        ],
        tasks: vec![watches_task, feed_task, reconciler_task],
    })
}

/// Builds the real implementations from `settings` (waiting, bounded, for tailscaled to name
/// this server's own node; `shutdown` ends that wait).
pub async fn wire(settings: &Settings, shutdown: &CancellationToken) -> anyhow::Result<Wired> {
    let client = crate::kubernetes::client(settings.kubeconfig.as_deref()).await?;
    let localapi = Arc::new(
        TailscaleLocalApi::new(&settings.tailscale_socket)
            .with_capabilities(CapabilityNames {
                primary: settings.policy.capability_name.clone(),
                compat: settings.policy.compat_capability_name.clone(),
            })
            .with_timeout(settings.whois_timeout)
            // tailscaled itself waits (about 350 ms) for the mapping of a loopback connection
            // before it answers a miss, so five asks of a non-tailnet connection would take
            // about 2 s, the default `--whois-timeout`, and refuse it with 503 instead of 403.
            // Two asks keep a miss well inside the deadline.
            .with_loopback_retry(LoopbackRetry {
                attempts: 2,
                delay: Duration::from_millis(50),
            })
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

    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let kube = kube(settings, client.clone(), localapi.clone(), clock.clone())?;
    let mut readiness: Vec<Arc<dyn ReadinessCheck>> =
        vec![Arc::new(TailscaledReady(localapi.clone()))];
    readiness.extend(kube.readiness);
    let mut config = settings.api_config();
    config.self_node_ids.extend(own);
    let backends = Backends {
        identity: localapi,
        issuer: kube.issuer,
        mappings: kube.mappings,
        clock,
    };
    let state = ApiState::new(config, backends, Arc::clone(&kube.metrics));
    Ok(Wired {
        state,
        metrics: kube.metrics,
        watches: kube.watches,
        readiness,
        tasks: kube.tasks,
        client,
    })
}

/// A server built as in production from `settings`, with its listeners bound (the proxy's too
/// when `--proxy-listen` is given) and every background task started; [`Server::run`] serves until `shutdown` is cancelled.
pub async fn server(settings: &Settings, shutdown: CancellationToken) -> anyhow::Result<Server> {
    let wired = wire(settings, &shutdown).await?;
    let proxy = match &settings.proxy {
        Some(proxy) => {
            let upstream = Upstream::from_settings(
                settings.kubeconfig.as_deref(),
                proxy.upstream.as_ref(),
                proxy.upstream_ca.as_deref(),
                proxy.upstream_timeout,
            )
            .await?;
            Some((
                proxy,
                Proxy::new(
                    Arc::clone(&wired.state),
                    wired.watches.sessions.clone(),
                    upstream,
                    proxy.config.clone(),
                    Some(wired.client.clone()),
                ),
            ))
        }
        None => None,
    };
    let mut server = Server::bind(
        settings.api_listen,
        &settings.listen_mode,
        settings.ops_listen,
        wired.state,
        ops_router(wired.readiness, wired.metrics),
        shutdown,
        settings.shutdown_grace,
    )
    .await?
    .with_connection_limits(settings.connection_limits);
    if let Some((proxy, service)) = proxy {
        let (tls, certificate) = match &proxy.tls {
            None => (None, None),
            Some(ProxyTls::Files(config)) => (Some(Arc::clone(config)), None),
            Some(ProxyTls::Tailnet(domain)) => {
                // Issuing a certificate can take tailscaled a while (ACME); not the whois
                // deadline.
                let localapi = TailscaleLocalApi::new(&settings.tailscale_socket)
                    .with_timeout(TAILNET_CERT_TIMEOUT)
                    .without_cli_fallback();
                let certificate = TailnetCertificate::load(localapi, domain).await?;
                (Some(certificate.server_config()?), Some(certificate))
            }
        };
        server = server
            .with_proxy(proxy.listen, &proxy.listen_mode, service, tls)
            .await?;
        if let Some(certificate) = certificate {
            server.spawn_task(|shutdown| certificate.run(shutdown));
        }
    }
    for task in wired.tasks {
        server.spawn_task(task);
    }
    Ok(server)
}
