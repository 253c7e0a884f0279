//! The one place `serve` constructs the real implementations from [`Settings`]: the tailscaled
//! whois client, the Kubernetes issuer, the GrantMapping store fed by a watch, the session count
//! for metrics, the readiness checks, and the background tasks (the reconciler's loop, leader
//! election) that run until shutdown.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use kube::Client;
use tka_core::identity::{CapabilityNames, IdentityProvider, LoopbackRetry, TailscaleLocalApi};
use tka_core::kubernetes::{
    IssuerSettings, KubernetesIssuer, KubernetesReconciler, PassObserver, PolicyGrantCheck,
    ReconcilerSettings,
};
use tka_core::reconciler::{ObjectKind, RemovalReason};
use tka_core::{Clock, NodeId, SystemClock};
use tka_server::kubernetes::{
    ApiServerReady, Bindability, CrdsInstalled, MappingFeed, MappingsSynced, ReflectedSessions,
};
use tka_server::metrics::RevocationCause;
use tka_server::tailscale::{TailscaledReady, own_node};
use tka_server::{Backends, InMemoryMappings, Metrics, ReadinessCheck, SessionCounter, Settings};
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
    /// Set by `serve` once the metrics exist; the reconciler reports its passes there.
    pub(crate) metrics: Arc<OnceLock<Arc<Metrics>>>,
}

/// How long `serve` waits for tailscaled to report its own node at start.
const OWN_NODE_ATTEMPTS: u32 = 30;

/// The name this replica holds the Lease under: the pod's name when the Deployment passes it,
/// else the host name, else a random one.
fn holder_identity() -> String {
    std::env::var("POD_NAME")
        .or_else(|_| std::env::var("HOSTNAME"))
        .unwrap_or_else(|_| format!("tka-server-{:08x}", rand::random::<u32>()))
}

/// The Kubernetes side: the issuer, the GrantMapping feed (with bindability and the ClusterRoles'
/// read-only judgement, the same as the reconciler's), the session
/// count, the readiness checks and the background tasks (feed, session reflector, reconciler).
struct Kube {
    issuer: Arc<KubernetesIssuer>,
    mappings: Arc<InMemoryMappings>,
    sessions: Arc<dyn SessionCounter>,
    readiness: Vec<Arc<dyn ReadinessCheck>>,
    tasks: Vec<Task>,
    metrics: Arc<OnceLock<Arc<Metrics>>>,
}

/// Feeds the reconciler's passes into the metrics, once they exist.
fn pass_observer(metrics: Arc<OnceLock<Arc<Metrics>>>) -> PassObserver {
    Arc::new(move |took, outcome| {
        let Some(metrics) = metrics.get() else { return };
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

fn kube(
    settings: &Settings,
    client: Client,
    identity: Arc<dyn IdentityProvider>,
    clock: Arc<dyn Clock>,
) -> anyhow::Result<Kube> {
    let mut issuer_settings = IssuerSettings::new(&settings.namespace);
    issuer_settings.token_lifetime = settings.token_lifetime;
    let issuer = Arc::new(
        KubernetesIssuer::new(client.clone(), issuer_settings, clock.clone())
            .map_err(|e| anyhow::anyhow!("cannot set up the Kubernetes issuer: {e}"))?,
    );

    let mappings = Arc::new(InMemoryMappings::default());
    let bindability = Arc::new(Bindability::new(client.clone()));
    let feed = Arc::new(
        MappingFeed::new(mappings.clone(), bindability.clone())
            .allowing_cluster_wide_write(settings.policy.allow_cluster_wide_write),
    );
    let (sessions, session_task) = ReflectedSessions::new(client.clone(), clock.clone());

    let metrics = Arc::new(OnceLock::new());
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
        .with_pass_observer(pass_observer(metrics.clone())),
    );

    let feed_task = {
        let feed = feed.clone();
        let client = client.clone();
        Box::new(move |shutdown: CancellationToken| {
            Box::pin(async move { feed.run(client, shutdown).await })
                as Pin<Box<dyn Future<Output = ()> + Send>>
        }) as Task
    };
    let sessions_task = Box::new(move |shutdown: CancellationToken| {
        Box::pin(async move {
            tokio::select! {
                () = shutdown.cancelled() => {}
                () = session_task => {}
            }
        }) as Pin<Box<dyn Future<Output = ()> + Send>>
    }) as Task;
    let reconciler_task = Box::new(move |shutdown: CancellationToken| {
        Box::pin(async move {
            // `run` releases the Lease when shutdown completes, so a successor takes over at
            // once instead of waiting for the lease to expire.
            if let Err(e) = reconciler.run(shutdown.cancelled_owned()).await {
                tracing::warn!(error = %e, "the reconciler stopped with an error");
            }
        }) as Pin<Box<dyn Future<Output = ()> + Send>>
    }) as Task;

    Ok(Kube {
        issuer,
        mappings,
        sessions: Arc::new(sessions),
        readiness: vec![
            Arc::new(ApiServerReady(client.clone())),
            Arc::new(CrdsInstalled(client)),
            Arc::new(MappingsSynced(feed)),
        ],
        tasks: vec![feed_task, sessions_task, reconciler_task],
        metrics,
    })
}

/// Builds the real implementations.
pub(crate) async fn wire(
    settings: &Settings,
    shutdown: &CancellationToken,
) -> anyhow::Result<Wired> {
    let client = tka_server::kubernetes::client(settings.kubeconfig.as_deref()).await?;
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
    let kube = kube(settings, client, localapi.clone(), clock.clone())?;
    let mut readiness: Vec<Arc<dyn ReadinessCheck>> =
        vec![Arc::new(TailscaledReady(localapi.clone()))];
    readiness.extend(kube.readiness);
    Ok(Wired {
        backends: Backends {
            identity: localapi,
            issuer: kube.issuer,
            mappings: kube.mappings,
            clock,
        },
        own_node: own,
        sessions: Some(kube.sessions),
        readiness,
        tasks: kube.tasks,
        metrics: kube.metrics,
    })
}
