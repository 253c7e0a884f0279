//! The server's side of tka-core's Kubernetes backend: the kube client, the GrantMapping feed
//! that keeps the [`MappingStore`](crate::MappingStore) current from the shared GrantMapping and
//! ClusterRole stores ([`ClusterWatches`], made once in [`crate::wiring`]; so a login reads
//! nothing from the API server, DESIGN §11, and a ClusterRole that gains a write is seen at once,
//! DESIGN §4.3), the bindability check of each mapping by SelfSubjectAccessReview (DESIGN §5.1),
//! the live-session count from the shared Session store, the readiness checks (API server,
//! CRDs), and `drain`. Apart from the wiring, which only constructs, this is the only module of
//! the crate that talks to Kubernetes. It opens no watch of its own, decides no policy (that is
//! `tka_core::policy`) and creates no session objects (the issuer does).

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec,
};
use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, RoleBinding};
use kube::api::{ListParams, PostParams};
use kube::{Api, Client, ResourceExt};
use tka_core::kubernetes::{
    ClusterWatches, GrantMapping, KubernetesIssuer, MANAGED_BY, MANAGED_BY_LABEL, Session,
    SessionStore, Watched, cluster_roles,
};
pub use tka_core::policy::Bindable;
use tka_core::policy::{ClusterFacts, mapping_views};
use tka_core::reconciler::{MappingHook, NamedMapping};
use tka_core::{Clock, GrantMappingSpec};
use tokio_util::sync::CancellationToken;

use crate::mappings::InMemoryMappings;
use crate::metrics::SessionCounter;
use crate::ops::ReadinessCheck;

/// A kube client: from `kubeconfig` when given, else inferred (in-cluster ServiceAccount,
/// `KUBECONFIG`, `~/.kube/config`).
pub async fn client(kubeconfig: Option<&Path>) -> anyhow::Result<Client> {
    let config = config(kubeconfig).await?;
    Client::try_from(config).map_err(|e| anyhow::anyhow!("cannot build a Kubernetes client: {e}"))
}

/// The Kubernetes configuration [`client`] uses: from `kubeconfig` when given, else inferred.
pub async fn config(kubeconfig: Option<&Path>) -> anyhow::Result<kube::Config> {
    Ok(match kubeconfig {
        Some(path) => {
            let file = kube::config::Kubeconfig::read_from(path).map_err(|e| {
                anyhow::anyhow!("cannot read the kubeconfig {}: {e}", path.display())
            })?;
            kube::Config::from_custom_kubeconfig(file, &kube::config::KubeConfigOptions::default())
                .await
                .map_err(|e| {
                    anyhow::anyhow!("cannot use the kubeconfig {}: {e}", path.display())
                })?
        }
        None => kube::Config::infer().await.map_err(|e| {
            anyhow::anyhow!(
                "cannot find a Kubernetes configuration (not in a pod, no KUBECONFIG, no ~/.kube/config); pass --kubeconfig: {e}"
            )
        })?,
    })
}

/// The bindability of every GrantMapping, checked with SelfSubjectAccessReviews: for each
/// referenced ClusterRole the server must be allowed to `bind` it and to `create` the binding
/// (a ClusterRoleBinding cluster-wide, a RoleBinding in each namespace of a namespaced entry).
///
/// As a [`MappingHook`] it gives the reconciler the same answers the login sees: a definite
/// refusal is `Ready=False/NotBindable` (never used, sessions revoked); an unknown answer leaves
/// the mapping unchecked (logins refused, sessions neither refreshed nor revoked), so an API
/// hiccup never revokes sessions. A definite earlier answer stays when the API server cannot be
/// asked again.
pub struct Bindability {
    client: Client,
    checked: RwLock<HashMap<String, (GrantMappingSpec, Bindable)>>,
}

impl std::fmt::Debug for Bindability {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bindability").finish_non_exhaustive()
    }
}

impl Bindability {
    /// A checker using `client`'s credentials (the server's own).
    pub fn new(client: Client) -> Self {
        Self {
            client,
            checked: RwLock::default(),
        }
    }

    /// The last answer for a mapping with this name and spec.
    pub fn get(&self, mapping: &NamedMapping) -> Option<Bindable> {
        self.checked
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&mapping.name)
            .filter(|(spec, _)| *spec == mapping.spec)
            .map(|(_, b)| b.clone())
    }

    /// Asks the API server about every mapping whose spec changed since it was last checked
    /// (and again about those it could not check), and forgets removed mappings.
    pub async fn refresh(&self, mappings: &[NamedMapping]) {
        self.refresh_where(mappings, false).await;
    }

    /// Asks again about every mapping (RBAC may have changed: a role added to or removed from
    /// the allowlist). A definite earlier answer stays when the API server cannot be asked now.
    pub async fn refresh_all(&self, mappings: &[NamedMapping]) {
        self.refresh_where(mappings, true).await;
    }

    async fn refresh_where(&self, mappings: &[NamedMapping], all: bool) {
        for mapping in mappings {
            let previous = self.get(mapping);
            if !all && matches!(previous, Some(Bindable::Yes | Bindable::No(_))) {
                continue;
            }
            let mut answer = self.ask(&mapping.spec).await;
            if matches!(answer, Bindable::Unknown(_))
                && let Some(known @ (Bindable::Yes | Bindable::No(_))) = previous
            {
                answer = known;
            }
            if let Bindable::No(why) = &answer {
                tracing::warn!(mapping = %mapping.name, why, "GrantMapping is not bindable");
            }
            self.checked
                .write()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(mapping.name.clone(), (mapping.spec.clone(), answer));
        }
        self.checked
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|name, _| mappings.iter().any(|m| &m.name == name));
    }

    async fn ask(&self, spec: &GrantMappingSpec) -> Bindable {
        let mut questions: Vec<(&str, &str, &str, Option<&str>, String)> = Vec::new();
        for role in &spec.cluster_roles {
            questions.push((
                "bind",
                "clusterroles",
                role,
                None,
                format!("bind ClusterRole {role}"),
            ));
            questions.push((
                "create",
                "clusterrolebindings",
                "",
                None,
                format!("create a ClusterRoleBinding for {role}"),
            ));
        }
        for grant in &spec.namespaced {
            for ns in &grant.namespaces {
                let role = grant.cluster_role.as_str();
                questions.push((
                    "bind",
                    "clusterroles",
                    role,
                    Some(ns.as_str()),
                    format!("bind ClusterRole {role} in namespace {ns}"),
                ));
                questions.push((
                    "create",
                    "rolebindings",
                    "",
                    Some(ns.as_str()),
                    format!("create a RoleBinding in namespace {ns}"),
                ));
            }
        }
        let api: Api<SelfSubjectAccessReview> = Api::all(self.client.clone());
        let mut refused = Vec::new();
        for (verb, resource, name, namespace, words) in questions {
            let review = SelfSubjectAccessReview {
                spec: SelfSubjectAccessReviewSpec {
                    resource_attributes: Some(ResourceAttributes {
                        verb: Some(verb.to_owned()),
                        group: Some("rbac.authorization.k8s.io".to_owned()),
                        resource: Some(resource.to_owned()),
                        name: (!name.is_empty()).then(|| name.to_owned()),
                        namespace: namespace.map(str::to_owned),
                        ..ResourceAttributes::default()
                    }),
                    ..SelfSubjectAccessReviewSpec::default()
                },
                ..SelfSubjectAccessReview::default()
            };
            match api.create(&PostParams::default(), &review).await {
                Ok(answer) => {
                    if !answer.status.is_some_and(|s| s.allowed) && !refused.contains(&words) {
                        refused.push(words);
                    }
                }
                Err(e) => {
                    return Bindable::Unknown(format!(
                        "could not ask the API server whether tka-server may {words}: {e}"
                    ));
                }
            }
        }
        if refused.is_empty() {
            Bindable::Yes
        } else {
            Bindable::No(format!(
                "tka-server may not {}; add the role to the bind allowlist of its RBAC (and the admission policy) or change the mapping",
                refused.join(", ")
            ))
        }
    }
}

impl MappingHook for Bindability {
    fn bindable(&self, mapping: &NamedMapping) -> Bindable {
        self.get(mapping).unwrap_or_else(|| {
            Bindable::Unknown(
                "tka-server has not yet checked that it may bind this mapping's roles; try again shortly"
                    .to_owned(),
            )
        })
    }
}

fn named(mappings: &[Arc<GrantMapping>]) -> Vec<NamedMapping> {
    let mut out: Vec<NamedMapping> = mappings
        .iter()
        .map(|m| NamedMapping {
            name: m.name_any(),
            spec: m.spec.clone(),
        })
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

/// Keeps a [`MappingStore`](crate::MappingStore) equal to the cluster's GrantMappings, judged
/// the one way ([`mapping_views`]) against the cluster's ClusterRoles and the server's
/// bindability: it reads the shared GrantMapping and ClusterRole stores ([`ClusterWatches`]);
/// after each change the changed mappings are checked and the whole set is replaced at once.
#[derive(Debug)]
pub struct MappingFeed {
    store: Arc<InMemoryMappings>,
    bindability: Arc<Bindability>,
    allow_cluster_wide_write: bool,
    /// Set once a publish has used the first full lists of both.
    published: AtomicBool,
}

/// How often the feed re-asks about mappings it could not check.
const RECHECK_EVERY: Duration = Duration::from_secs(30);
/// How often the feed re-asks about every mapping (the server's RBAC may have changed).
const RECHECK_ALL_EVERY: Duration = Duration::from_secs(300);

impl MappingFeed {
    /// A feed into `store` using `bindability`; `clusterRoles` may name only read-only roles.
    pub fn new(store: Arc<InMemoryMappings>, bindability: Arc<Bindability>) -> Self {
        Self {
            store,
            bindability,
            allow_cluster_wide_write: false,
            published: AtomicBool::new(false),
        }
    }

    /// Lets `clusterRoles` name roles that grant more than reading (`--allow-cluster-wide-write`).
    #[must_use]
    pub fn allowing_cluster_wide_write(mut self, allow: bool) -> Self {
        self.allow_cluster_wide_write = allow;
        self
    }

    /// Whether the mappings of the first full lists of GrantMappings and ClusterRoles have been
    /// published.
    pub fn is_synced(&self) -> bool {
        self.published.load(Ordering::SeqCst)
    }

    /// Publishes the mappings in `mappings`, judged against the roles in `roles` (once their
    /// first list is in), checking bindability first: changed and unchecked mappings, or all of
    /// them when `recheck_all`.
    pub async fn publish(
        &self,
        mappings: &Watched<GrantMapping>,
        roles: &Watched<ClusterRole>,
        recheck_all: bool,
    ) {
        let both_listed = mappings.is_listed() && roles.is_listed();
        let named_mappings = named(&mappings.state());
        if recheck_all {
            self.bindability.refresh_all(&named_mappings).await;
        } else {
            self.bindability.refresh(&named_mappings).await;
        }
        let roles = roles
            .is_listed()
            .then(|| cluster_roles(roles.state().iter().map(AsRef::as_ref)));
        let facts = ClusterFacts {
            cluster_roles: roles.as_ref(),
            allow_cluster_wide_write: self.allow_cluster_wide_write,
        };
        let bindability = self.bindability.as_ref();
        self.store
            .replace(mapping_views(&named_mappings, &facts, &|m| {
                bindability.bindable(m)
            }));
        if both_listed {
            self.published.store(true, Ordering::SeqCst);
        }
    }

    /// Republishes from `watches` after every GrantMapping or ClusterRole list or change, and
    /// periodically (bindability), until `shutdown` or until the watches stop.
    pub async fn run(&self, watches: &ClusterWatches, shutdown: CancellationToken) {
        let mappings = &watches.grant_mappings;
        let roles = &watches.cluster_roles;
        let mut mapping_changes = mappings.subscribe();
        let mut role_changes = roles.subscribe();
        let mut recheck = tokio::time::interval(RECHECK_EVERY);
        let mut recheck_all = tokio::time::interval(RECHECK_ALL_EVERY);
        loop {
            let recheck_all = tokio::select! {
                () = shutdown.cancelled() => return,
                _ = recheck.tick() => false,
                _ = recheck_all.tick() => true,
                changed = mapping_changes.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    mapping_changes.borrow_and_update();
                    false
                }
                changed = role_changes.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    role_changes.borrow_and_update();
                    false
                }
            };
            if mappings.is_listed() {
                self.publish(mappings, roles, recheck_all).await;
            }
        }
    }
}

/// The live-session count for `/metrics`, from the shared Session store.
#[derive(Debug)]
pub struct LiveSessions {
    sessions: SessionStore,
    clock: Arc<dyn Clock>,
}

impl LiveSessions {
    /// Counts the live sessions in `sessions` as of `clock`.
    pub fn new(sessions: SessionStore, clock: Arc<dyn Clock>) -> Self {
        Self { sessions, clock }
    }
}

impl SessionCounter for LiveSessions {
    fn active_sessions(&self) -> Option<u64> {
        let live = self.sessions.live_count(self.clock.now())?;
        Some(u64::try_from(live).unwrap_or(u64::MAX))
    }
}

/// Ready when the Kubernetes API server answers.
#[derive(Clone)]
pub struct ApiServerReady(pub Client);

#[async_trait]
impl ReadinessCheck for ApiServerReady {
    fn name(&self) -> &str {
        "kubernetes"
    }

    async fn check(&self) -> Result<(), String> {
        self.0
            .apiserver_version()
            .await
            .map(|_| ())
            .map_err(|e| format!("the Kubernetes API server does not answer: {e}"))
    }
}

/// Ready when both CRDs are installed (their resources can be listed).
#[derive(Clone)]
pub struct CrdsInstalled(pub Client);

#[async_trait]
impl ReadinessCheck for CrdsInstalled {
    fn name(&self) -> &str {
        "crds"
    }

    async fn check(&self) -> Result<(), String> {
        let one = ListParams::default().limit(1);
        let hint = "install them with `tka-server crds | kubectl apply -f -`";
        Api::<GrantMapping>::all(self.0.clone())
            .list_metadata(&one)
            .await
            .map_err(|e| format!("GrantMappings cannot be listed ({e}); {hint}"))?;
        Api::<Session>::all(self.0.clone())
            .list_metadata(&one)
            .await
            .map_err(|e| format!("Sessions cannot be listed ({e}); {hint}"))?;
        Ok(())
    }
}

/// Ready once the GrantMapping feed has applied its first full list.
#[derive(Debug, Clone)]
pub struct MappingsSynced(pub Arc<MappingFeed>);

#[async_trait]
impl ReadinessCheck for MappingsSynced {
    fn name(&self) -> &str {
        "grantmappings"
    }

    async fn check(&self) -> Result<(), String> {
        if self.0.is_synced() {
            Ok(())
        } else {
            Err(
                "the GrantMapping and ClusterRole watches have not delivered their first lists yet"
                    .to_owned(),
            )
        }
    }
}

/// What [`drain`] left behind (all zero when it succeeded).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Leftovers {
    /// Sessions still present.
    pub sessions: usize,
    /// ServiceAccounts, ClusterRoleBindings and RoleBindings labelled `managed-by=tka`.
    pub labelled: usize,
}

impl Leftovers {
    /// Whether nothing is left.
    pub fn is_empty(&self) -> bool {
        self.sessions == 0 && self.labelled == 0
    }
}

/// Counts what tka has on the cluster: Sessions, and labelled ServiceAccounts (in `namespace`)
/// and bindings.
pub async fn leftovers(client: &Client, namespace: &str) -> Result<Leftovers, kube::Error> {
    let labelled = ListParams::default().labels(&format!("{MANAGED_BY_LABEL}={MANAGED_BY}"));
    let sessions = Api::<Session>::all(client.clone())
        .list_metadata(&ListParams::default())
        .await?
        .items
        .len();
    let sas = Api::<ServiceAccount>::namespaced(client.clone(), namespace)
        .list_metadata(&labelled)
        .await?
        .items
        .len();
    let crbs = Api::<ClusterRoleBinding>::all(client.clone())
        .list_metadata(&labelled)
        .await?
        .items
        .len();
    let rbs = Api::<RoleBinding>::all(client.clone())
        .list_metadata(&labelled)
        .await?
        .items
        .len();
    Ok(Leftovers {
        sessions,
        labelled: sas + crbs + rbs,
    })
}

/// How many rounds [`drain`] makes at most.
const DRAIN_ROUNDS: u32 = 30;

/// Revokes every session (ServiceAccount first, so tokens die), then, round by round until
/// nothing is left or `timeout` passes, removes labelled leftovers and tka's finalizers. Stop the
/// server first (or it may admit new logins while this runs). Returns what is left.
pub async fn drain(
    issuer: &KubernetesIssuer,
    client: &Client,
    namespace: &str,
    timeout: Duration,
) -> anyhow::Result<Leftovers> {
    let revoked = issuer
        .revoke_all()
        .await
        .map_err(|e| anyhow::anyhow!("revoking the sessions failed: {e}"))?;
    tracing::info!(revoked = revoked.len(), "sessions revoked");
    let deadline = tokio::time::Instant::now() + timeout;
    let pause = (timeout / DRAIN_ROUNDS).max(Duration::from_millis(50));
    let mut left = leftovers(client, namespace).await?;
    for _ in 0..DRAIN_ROUNDS {
        if left.is_empty() || tokio::time::Instant::now() >= deadline {
            break;
        }
        issuer
            .remove_leftovers()
            .await
            .map_err(|e| anyhow::anyhow!("removing leftovers failed: {e}"))?;
        left = leftovers(client, namespace).await?;
        if !left.is_empty() {
            tokio::time::sleep(pause).await;
        }
    }
    Ok(left)
}
