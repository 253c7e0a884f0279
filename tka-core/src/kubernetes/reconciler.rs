//! [`KubernetesReconciler`]: the [`Reconciler`] on a Kubernetes API, exactly DESIGN §5.
//!
//! It only removes. It never creates, updates or "repairs" a binding or ServiceAccount, so a
//! Session written by hand (or by anyone but the issuer) never yields access. One pass:
//!
//! 1. every Session: deleted ones (deletion timestamp) lose their children and finalizer; revoked,
//!    expired and half-made ones (never complete within the grace period, or lost their
//!    ServiceAccount) are ended like a revoke (ServiceAccount first, then bindings, then the
//!    Session); live ones are re-validated against the tailnet (whois by recorded address) and the
//!    GrantMappings, periodically and whenever the mappings change, and revoked if their grant no
//!    longer holds;
//! 2. the orphan sweep: objects labelled `managed-by=tka` whose session is missing, over, another
//!    object of the same name, or of a revision the session no longer has, confirmed with a live
//!    read and only once older than the grace period (so a login in flight is never raced);
//! 3. GrantMapping `Ready` conditions.
//!
//! Step 1 decides which sessions end; they are then ended together, at most
//! [`ReconcilerSettings::sessions_ended_at_once`] in flight, each in its own crash-safe order, so
//! a burst of expiries does not queue behind one another. One that fails is reported and ended
//! again at the next pass.
//!
//! The next pass is due at the earliest `expiresAt` (or grace end) of what is still live,
//! recomputed every pass, so a restart loses nothing ([`PassSchedule`] holds when the run loop
//! wakes). The run loop learns of changes from the server's shared [`ClusterWatches`] and opens
//! no watch of its own when given them. Every action is idempotent (UID
//! preconditions, "already gone" is done), so two reconcilers at once are harmless; a Lease keeps
//! one active in steady state.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::future::Future;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use futures::{StreamExt as _, stream};
use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_openapi::api::rbac::v1::ClusterRole;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::api::{ListParams, Patch, PatchParams};
use kube::{Api, Client, Resource, ResourceExt};
use tracing::{debug, info, warn};

use super::error::{is_conflict, is_not_found, reconcile_error};
use super::lease::{LeaderLease, LeaseSettings};
use super::objects::{Apis, delete_uid, end_session, managed_selector, owner_uid, removal};
use super::rbac::cluster_roles;
use super::schedule::PassSchedule;
use super::session::{Session, SessionPhase};
use super::watches::ClusterWatches;
use super::{
    CONDITION_READY, GrantMappingStatus, REASON_FORBIDDEN_NAMESPACE, REASON_INVALID_SPEC,
    REASON_READY, REVISION_LABEL, SESSION_LABEL,
};
use crate::clock::Clock;
use crate::identity::{IdentityError, IdentityProvider, WhoisRequest};
use crate::policy::{
    Bindable, ClusterFacts, ClusterRoles, DEFAULT_DENIED_NAMESPACES, GrantMapping, MappingState,
    MappingView, mapping_views, validate_mapping,
};
use crate::reconciler::{
    GrantCheck, MappingHook, NamedMapping, ObjectKind, ReconcileError, ReconcileReport, Reconciler,
    Removal, RemovalReason, Verdict, judge, wait_until,
};

/// Settings of a [`KubernetesReconciler`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReconcilerSettings {
    /// The server's namespace (session ServiceAccounts, the Lease).
    pub namespace: String,
    /// How long an unfinished session or an object without a live session is left alone, so a
    /// login in flight is never raced (default 60 s).
    pub grace: SignedDuration,
    /// How often each live session's grant is re-checked (default 5 min); a change to any
    /// GrantMapping re-checks all of them at the next pass.
    pub revalidate_every: SignedDuration,
    /// Namespaces a GrantMapping may never bind in, besides the server's own (default
    /// `kube-system`, `kube-public`, `kube-node-lease`).
    pub denied_namespaces: Vec<String>,
    /// Whether `clusterRoles` may name ClusterRoles that grant more than reading (default
    /// `false`; see `PolicySettings::allow_cluster_wide_write`).
    pub allow_cluster_wide_write: bool,
    /// The longest time between passes in [`KubernetesReconciler::run`] (default 60 s).
    pub resync_every: Duration,
    /// The shortest time between passes triggered by watch events (default 1 s).
    pub min_interval: Duration,
    /// The Lease used by [`KubernetesReconciler::run`].
    pub lease: LeaseSettings,
    /// How many sessions a pass ends at once (default 16): a burst of expiries is ended
    /// concurrently, without flooding the API server.
    pub sessions_ended_at_once: usize,
}

impl ReconcilerSettings {
    /// Defaults for a server in `namespace`, competing for the lease as `holder`.
    pub fn new(namespace: impl Into<String>, holder: impl Into<String>) -> Self {
        let namespace = namespace.into();
        Self {
            lease: LeaseSettings::new(namespace.clone(), holder),
            namespace,
            grace: SignedDuration::from_secs(60),
            revalidate_every: SignedDuration::from_mins(5),
            denied_namespaces: DEFAULT_DENIED_NAMESPACES
                .iter()
                .map(|s| (*s).to_owned())
                .collect(),
            allow_cluster_wide_write: false,
            resync_every: Duration::from_secs(60),
            min_interval: Duration::from_secs(1),
            sessions_ended_at_once: 16,
        }
    }

    /// The server's namespace and the deny list: where no mapping may bind.
    pub fn forbidden_namespaces(&self) -> BTreeSet<String> {
        std::iter::once(self.namespace.clone())
            .chain(self.denied_namespaces.iter().cloned())
            .collect()
    }
}

#[derive(Debug, Default)]
struct State {
    /// Session UID → when its grant was last found to hold.
    validated: HashMap<String, Timestamp>,
    /// The GrantMappings (name, uid, generation, state) seen by the last complete pass.
    mappings_seen: Option<Vec<Fingerprint>>,
    /// Re-validate every live session at the next pass.
    revalidate_all: bool,
}

/// A session a pass has decided to end: how to mark it first (if at all) and why.
#[derive(Debug)]
struct Ending {
    session: Session,
    mark: Option<SessionPhase>,
    reason: RemovalReason,
}

impl Ending {
    fn new(session: &Session, mark: Option<SessionPhase>, reason: RemovalReason) -> Self {
        Self {
            session: session.clone(),
            mark,
            reason,
        }
    }
}

/// Removes expired, revoked, half-made and orphaned objects and withdrawn sessions. See the
/// module documentation.
pub struct KubernetesReconciler {
    apis: Apis,
    settings: ReconcilerSettings,
    clock: Arc<dyn Clock>,
    identity: Arc<dyn IdentityProvider>,
    check: Arc<dyn GrantCheck>,
    hook: Option<Arc<dyn MappingHook>>,
    observer: Option<PassObserver>,
    watches: Option<ClusterWatches>,
    state: Mutex<State>,
}

/// Told about every pass [`KubernetesReconciler::run`] makes: how long it took and what it
/// did (for metrics).
pub type PassObserver =
    Arc<dyn Fn(Duration, Result<&ReconcileReport, &ReconcileError>) + Send + Sync>;

impl std::fmt::Debug for KubernetesReconciler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubernetesReconciler")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

/// What decides whether every live session is re-validated: a mapping's name, uid, generation
/// and state (which changes with the ClusterRoles and the server's RBAC).
type Fingerprint = (String, String, i64, String);

impl KubernetesReconciler {
    /// A reconciler for the cluster behind `client`. `identity` answers whois for recorded
    /// tailnet addresses; `check` decides whether a session's grant still holds.
    pub fn new(
        client: Client,
        settings: ReconcilerSettings,
        clock: Arc<dyn Clock>,
        identity: Arc<dyn IdentityProvider>,
        check: Arc<dyn GrantCheck>,
    ) -> Self {
        Self {
            apis: Apis::new(client, &settings.namespace),
            settings,
            clock,
            identity,
            check,
            hook: None,
            observer: None,
            watches: None,
            state: Mutex::new(State::default()),
        }
    }

    /// Adds what the server knows about binding each mapping's roles (`Ready=False/NotBindable`,
    /// and unusable for sessions). Without it every mapping counts as bindable.
    pub fn with_mapping_hook(mut self, hook: Arc<dyn MappingHook>) -> Self {
        self.hook = Some(hook);
        self
    }

    /// Reports every pass of [`KubernetesReconciler::run`] to `observer`.
    pub fn with_pass_observer(mut self, observer: PassObserver) -> Self {
        self.observer = Some(observer);
        self
    }

    /// Wakes [`Self::run`] from the server's shared watches instead of watches of its own.
    pub fn with_watches(mut self, watches: ClusterWatches) -> Self {
        self.watches = Some(watches);
        self
    }

    /// The settings in use.
    pub fn settings(&self) -> &ReconcilerSettings {
        &self.settings
    }

    /// Makes the next pass re-validate every live session (e.g. after a policy change the
    /// reconciler cannot see, such as the tailnet policy file).
    pub fn request_revalidation(&self) {
        self.state().revalidate_all = true;
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs passes until `shutdown` completes: while holding the Lease, at the requeue time, at
    /// least every `resync_every`, and soon after Session, GrantMapping or ClusterRole changes
    /// (from the shared [`ClusterWatches`] given with [`Self::with_watches`], else from watches of
    /// its own, driven for as long as this runs). When passes are due is [`PassSchedule`]'s rule.
    pub async fn run<F>(&self, shutdown: F) -> Result<(), ReconcileError>
    where
        F: Future<Output = ()> + Send,
    {
        let client = self.apis.client().clone();
        let lease = LeaderLease::new(
            client.clone(),
            self.settings.lease.clone(),
            self.clock.clone(),
        );
        let (watches, own_driver) = match &self.watches {
            Some(shared) => (shared.clone(), None),
            None => {
                let (own, driver) = ClusterWatches::new(&client);
                (own, Some(driver))
            }
        };
        let drive_own = async move {
            match own_driver {
                Some(driver) => driver.await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(drive_own);
        let mut sessions = watches.sessions.watched().subscribe();
        let mut mappings = watches.grant_mappings.subscribe();
        // An aggregated role can gain a write rule at any time: re-check then, not at the next
        // periodic pass. Only changes wake the loop, not the (re)list of every role; a change
        // missed across a re-list is caught by the next periodic pass, whose fingerprint holds
        // every mapping's state.
        let mut roles = watches.cluster_roles.subscribe();
        let mut roles_seen = roles.borrow_and_update().changes;
        tokio::pin!(shutdown);

        let renew_every = Duration::from_secs(
            u64::try_from((self.settings.lease.duration.as_secs() / 3).max(1)).unwrap_or(5),
        );
        let mut schedule = PassSchedule::new(
            tokio::time::Instant::now(),
            self.settings.min_interval,
            renew_every,
        );
        let mut leading = false;
        loop {
            match lease.try_acquire_or_renew().await {
                Ok(now_leading) => {
                    if now_leading != leading {
                        info!(
                            holder = lease.holder_identity(),
                            leading = now_leading,
                            "reconciler leadership changed"
                        );
                        if now_leading {
                            self.request_revalidation();
                            schedule.took_lease(tokio::time::Instant::now());
                        }
                    }
                    leading = now_leading;
                }
                Err(e) => {
                    warn!(error = %e, "could not renew the reconciler lease");
                    leading = false;
                }
            }
            if leading && schedule.is_due(tokio::time::Instant::now()) {
                let now = self.clock.now();
                let started = std::time::Instant::now();
                let outcome = self.reconcile_once(now).await;
                if let Some(observer) = &self.observer {
                    observer(started.elapsed(), outcome.as_ref());
                }
                let wait = match outcome {
                    Ok(report) => {
                        if !report.removed.is_empty() || !report.failures.is_empty() {
                            info!(
                                removed = report.removed.len(),
                                failures = report.failures.len(),
                                live = report.live_sessions,
                                "reconcile pass"
                            );
                        }
                        let due = wait_until(
                            now,
                            report.next_requeue,
                            signed(self.settings.resync_every),
                        );
                        Some(unsigned(due))
                    }
                    Err(e) => {
                        warn!(error = %e, "reconcile pass failed");
                        None
                    }
                };
                schedule.after_pass(tokio::time::Instant::now(), wait);
            }
            let wake = schedule.wake_at(tokio::time::Instant::now(), leading);
            let kicked = tokio::select! {
                () = &mut shutdown => break,
                () = &mut drive_own => break,
                () = tokio::time::sleep_until(wake) => false,
                Ok(()) = sessions.changed() => {
                    sessions.borrow_and_update();
                    true
                }
                Ok(()) = mappings.changed() => {
                    mappings.borrow_and_update();
                    self.request_revalidation();
                    true
                }
                Ok(()) = roles.changed() => {
                    let changes = roles.borrow_and_update().changes;
                    let changed = changes != roles_seen;
                    roles_seen = changes;
                    if changed {
                        self.request_revalidation();
                    }
                    changed
                }
            };
            if kicked {
                schedule.kick(tokio::time::Instant::now());
                // Coalesce a burst of events into one pass.
                tokio::select! {
                    () = &mut shutdown => break,
                    () = tokio::time::sleep(schedule.settle()) => {}
                }
            }
        }
        lease.release().await
    }

    async fn list_all<K>(
        &self,
        api: &Api<K>,
        selector: Option<&str>,
        what: &str,
    ) -> Result<Vec<K>, ReconcileError>
    where
        K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
    {
        let params = match selector {
            Some(s) => ListParams::default().labels(s),
            None => ListParams::default(),
        };
        api.list(&params)
            .await
            .map(|l| l.items)
            .map_err(|e| reconcile_error(format!("list {what}"), e))
    }

    /// Ends `endings` with at most [`ReconcilerSettings::sessions_ended_at_once`] in flight, and
    /// records what went. Each is independent (its own order: ServiceAccount, bindings,
    /// Session): one that fails is a failure in the report, does not stop the others, and is
    /// ended again by the next pass, which finds its Session still there.
    async fn end_sessions(
        &self,
        endings: Vec<Ending>,
        now: Timestamp,
        report: &mut ReconcileReport,
    ) {
        let bound = self.settings.sessions_ended_at_once.max(1);
        let outcomes: Vec<(Ending, Result<Vec<Removal>, kube::Error>)> = stream::iter(endings)
            .map(|ending| async move {
                let mark = ending.mark.map(|p| (p, now));
                let outcome = end_session(&self.apis, &ending.session, mark, &ending.reason).await;
                (ending, outcome)
            })
            .buffered(bound)
            .collect()
            .await;
        for (ending, outcome) in outcomes {
            let Ending {
                session, reason, ..
            } = ending;
            match outcome {
                Ok(removed) => {
                    if !removed.is_empty() {
                        info!(session = %session.name_any(), %reason, "session removed");
                    }
                    report.removed.extend(removed);
                }
                Err(e) => report.failures.push(format!(
                    "ending session {} ({reason}): {e}",
                    session.name_any()
                )),
            }
        }
    }

    /// Whether a complete session still has the ServiceAccount it recorded, confirmed with a
    /// live read when the list does not show it.
    async fn service_account_intact(
        &self,
        session: &Session,
        listed: &HashMap<String, ServiceAccount>,
    ) -> Result<bool, kube::Error> {
        let name = session.name_any();
        let Some(recorded) = session
            .status
            .as_ref()
            .and_then(|s| s.service_account.as_ref())
        else {
            return Ok(false);
        };
        if recorded.namespace != self.settings.namespace || recorded.name != name {
            return Ok(false);
        }
        let intact = |sa: &ServiceAccount| {
            sa.uid().as_deref() == Some(recorded.uid.as_str())
                && owner_uid(sa) == session.uid().as_deref()
        };
        if listed.get(&name).is_some_and(intact) {
            return Ok(true);
        }
        Ok(self
            .apis
            .service_accounts
            .get_opt(&name)
            .await?
            .is_some_and(|sa| intact(&sa)))
    }

    async fn revalidate(
        &self,
        session: &Session,
        mappings: &[MappingView],
        now: Timestamp,
    ) -> Verdict {
        let Some(grant) = session.grant() else {
            return Verdict::Withdrawn("the session's spec is not well-formed".into());
        };
        let addresses: Vec<IpAddr> = session
            .spec
            .identity
            .addresses
            .iter()
            .filter_map(|a| a.parse().ok())
            .collect();
        let mut last: Option<Result<crate::domain::Identity, IdentityError>> = None;
        for address in addresses {
            let answer = self.identity.lookup(&WhoisRequest::address(address)).await;
            if matches!(answer, Err(IdentityError::NotInTailnet(_))) {
                last = Some(answer);
                continue;
            }
            return judge(&grant, &answer, mappings, now, self.check.as_ref());
        }
        match last {
            Some(answer) => judge(&grant, &answer, mappings, now, self.check.as_ref()),
            None => Verdict::Withdrawn("no tailnet address is recorded to re-validate it".into()),
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn session_pass(
        &self,
        session: &Session,
        now: Timestamp,
        revalidate_all: bool,
        mappings: &[MappingView],
        service_accounts: &HashMap<String, ServiceAccount>,
        report: &mut ReconcileReport,
        validated: &mut HashMap<String, Timestamp>,
        endings: &mut Vec<Ending>,
    ) {
        let uid = session.uid().unwrap_or_default();
        if session.is_deleting() {
            return endings.push(Ending::new(session, None, RemovalReason::Deleted));
        }
        match session.phase() {
            Some(SessionPhase::Revoked) => {
                return endings.push(Ending::new(session, None, RemovalReason::Revoked));
            }
            Some(SessionPhase::Expired) => {
                return endings.push(Ending::new(session, None, RemovalReason::Expired));
            }
            _ => {}
        }
        if session.expires_at() <= now {
            return endings.push(Ending::new(
                session,
                Some(SessionPhase::Expired),
                RemovalReason::Expired,
            ));
        }
        if session.grant().is_none() {
            return endings.push(Ending::new(
                session,
                Some(SessionPhase::Revoked),
                RemovalReason::HalfMade,
            ));
        }
        if !session.is_complete() {
            if session.is_stale(now, self.settings.grace) {
                return endings.push(Ending::new(
                    session,
                    Some(SessionPhase::Revoked),
                    RemovalReason::HalfMade,
                ));
            }
            report.live_sessions += 1;
            report.requeue_at(session.spec.revised_at.0 + self.settings.grace);
            report.requeue_at(session.expires_at());
            return;
        }
        match self.service_account_intact(session, service_accounts).await {
            Ok(true) => {}
            Ok(false) => {
                return endings.push(Ending::new(
                    session,
                    Some(SessionPhase::Revoked),
                    RemovalReason::HalfMade,
                ));
            }
            Err(e) => {
                report.failures.push(format!(
                    "checking the ServiceAccount of session {}: {e}",
                    session.name_any()
                ));
            }
        }
        let due = revalidate_all
            || validated
                .get(&uid)
                .is_none_or(|at| *at + self.settings.revalidate_every <= now);
        if due {
            report.revalidated += 1;
            match self.revalidate(session, mappings, now).await {
                Verdict::Holds => {
                    validated.insert(uid.clone(), now);
                }
                Verdict::Withdrawn(why) => {
                    info!(session = %session.name_any(), why, "grant withdrawn; revoking");
                    return endings.push(Ending::new(
                        session,
                        Some(SessionPhase::Revoked),
                        RemovalReason::GrantWithdrawn(why),
                    ));
                }
                Verdict::Unknown(why) => report.failures.push(format!(
                    "re-validating session {}: {why}",
                    session.name_any()
                )),
            }
        }
        report.live_sessions += 1;
        report.requeue_at(session.expires_at());
    }

    /// Why `object` must go, judged against `session` (its `tka.dev/session`), or `None`.
    fn orphan_reason<K: Resource>(
        object: &K,
        session: Option<&Session>,
        now: Timestamp,
        is_binding: bool,
    ) -> Option<RemovalReason> {
        let Some(session) = session else {
            return Some(RemovalReason::Orphan);
        };
        if session.is_over(now) || owner_uid(object) != session.uid().as_deref() {
            return Some(RemovalReason::Orphan);
        }
        if is_binding {
            let revision = object
                .meta()
                .labels
                .as_ref()
                .and_then(|l| l.get(REVISION_LABEL));
            let current = Some(&session.spec.revision);
            let committed = session.status.as_ref().and_then(|s| s.revision.as_ref());
            if revision != current && revision != committed {
                return Some(RemovalReason::StaleRevision);
            }
        }
        None
    }

    /// Decides about one labelled object; `Some(reason)` when it must be deleted.
    async fn sweep_verdict<K: Resource>(
        &self,
        object: &K,
        sessions: &BTreeMap<String, Session>,
        now: Timestamp,
        is_binding: bool,
        report: &mut ReconcileReport,
    ) -> Option<RemovalReason> {
        let session_name = object
            .meta()
            .labels
            .as_ref()
            .and_then(|l| l.get(SESSION_LABEL));
        let listed = session_name.and_then(|n| sessions.get(n));
        Self::orphan_reason(object, listed, now, is_binding)?;
        // It looks orphaned. A young object may belong to a login in flight whose Session this
        // pass's list predates: leave it until the grace period is over.
        let created = object
            .meta()
            .creation_timestamp
            .as_ref()
            .map_or(now, |t| t.0);
        if created + self.settings.grace > now {
            report.requeue_at(created + self.settings.grace);
            return None;
        }
        let Some(session_name) = session_name else {
            return Some(RemovalReason::Orphan);
        };
        // Confirm with a live read: the session may have been made or changed since the list.
        match self.apis.sessions.get_opt(session_name).await {
            Ok(live) => Self::orphan_reason(object, live.as_ref(), now, is_binding),
            Err(e) => {
                report
                    .failures
                    .push(format!("confirming session {session_name}: {e}"));
                None
            }
        }
    }

    async fn sweep(
        &self,
        sessions: &BTreeMap<String, Session>,
        now: Timestamp,
        report: &mut ReconcileReport,
    ) -> Result<(), ReconcileError> {
        let selector = managed_selector();
        let sas = self
            .list_all(
                &self.apis.service_accounts,
                Some(&selector),
                "ServiceAccounts",
            )
            .await?;
        self.sweep_objects(
            sas,
            ObjectKind::ServiceAccount,
            |_| self.apis.service_accounts.clone(),
            sessions,
            now,
            report,
        )
        .await;
        let crbs = self
            .list_all(
                &self.apis.cluster_role_bindings,
                Some(&selector),
                "ClusterRoleBindings",
            )
            .await?;
        self.sweep_objects(
            crbs,
            ObjectKind::ClusterRoleBinding,
            |_| self.apis.cluster_role_bindings.clone(),
            sessions,
            now,
            report,
        )
        .await;
        let rbs = self
            .list_all(
                &self.apis.all_role_bindings,
                Some(&selector),
                "RoleBindings",
            )
            .await?;
        self.sweep_objects(
            rbs,
            ObjectKind::RoleBinding,
            |rb| self.apis.role_bindings(&rb.namespace().unwrap_or_default()),
            sessions,
            now,
            report,
        )
        .await;
        Ok(())
    }

    /// Deletes (with a UID precondition) each of `objects` that [`Self::sweep_verdict`] condemns,
    /// recording removals and failures in `report`; `api_for` gives the API to delete it through.
    async fn sweep_objects<K>(
        &self,
        objects: Vec<K>,
        kind: ObjectKind,
        api_for: impl Fn(&K) -> Api<K>,
        sessions: &BTreeMap<String, Session>,
        now: Timestamp,
        report: &mut ReconcileReport,
    ) where
        K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
    {
        let is_binding = kind != ObjectKind::ServiceAccount;
        for object in objects {
            let Some(reason) = self
                .sweep_verdict(&object, sessions, now, is_binding, report)
                .await
            else {
                continue;
            };
            let (namespace, name) = (object.namespace(), object.name_any());
            let uid = object.uid().unwrap_or_default();
            match delete_uid(&api_for(&object), &name, &uid).await {
                Ok(true) => report.removed.push(removal(kind, namespace, name, &reason)),
                Ok(false) => {}
                Err(e) => {
                    let shown = match &namespace {
                        Some(ns) => format!("{ns}/{name}"),
                        None => name,
                    };
                    report
                        .failures
                        .push(format!("deleting {kind} {shown}: {e}"));
                }
            }
        }
    }

    async fn update_conditions(
        &self,
        mappings: &[GrantMapping],
        views: &[MappingView],
        now: Timestamp,
        report: &mut ReconcileReport,
    ) {
        let api: Api<GrantMapping> = Api::all(self.apis.client().clone());
        for mapping in mappings {
            let named = NamedMapping {
                name: mapping.name_any(),
                spec: mapping.spec.clone(),
            };
            let state = views
                .iter()
                .find(|v| v.name.as_str() == named.name)
                .map(|v| &v.state);
            // A mapping whose state is not known yet keeps the condition it has.
            let Some((ready, reason, message)) = readiness(&self.settings, &named, state) else {
                continue;
            };
            let status_word = if ready { "True" } else { "False" };
            let generation = mapping.metadata.generation;
            let mut status = mapping.status.clone().unwrap_or_default();
            let previous = status
                .conditions
                .iter()
                .find(|c| c.type_ == CONDITION_READY);
            let unchanged = previous.is_some_and(|c| {
                c.status == status_word
                    && c.reason == reason
                    && c.message == message
                    && c.observed_generation == generation
            });
            if unchanged {
                continue;
            }
            let transition = previous
                .filter(|c| c.status == status_word)
                .map_or(Time(now), |c| c.last_transition_time.clone());
            status.conditions.retain(|c| c.type_ != CONDITION_READY);
            status.conditions.push(Condition {
                type_: CONDITION_READY.to_owned(),
                status: status_word.to_owned(),
                reason: reason.to_owned(),
                message,
                last_transition_time: transition,
                observed_generation: generation,
            });
            status.observed_generation = generation;
            // A merge patch (the server may only patch grantmappings/status) carrying the
            // resourceVersion it was computed from, so a concurrent change wins and the next
            // pass recomputes.
            let patch = serde_json::json!({
                "metadata": {"resourceVersion": mapping.resource_version()},
                "status": GrantMappingStatus { ..status },
            });
            match api
                .patch_status(&named.name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                Ok(_) => report.mappings_updated.push(named.name),
                Err(e) if is_conflict(&e) || is_not_found(&e) => {}
                Err(e) => report.failures.push(format!(
                    "updating the status of GrantMapping {}: {e}",
                    named.name
                )),
            }
        }
    }

    /// Every ClusterRole, for the read-only judgement; `None` (and a failure in the report)
    /// when they cannot be listed, which leaves every mapping unchecked for this pass.
    async fn cluster_roles(&self, report: &mut ReconcileReport) -> Option<ClusterRoles> {
        match self
            .list_all(
                &Api::<ClusterRole>::all(self.apis.client().clone()),
                None,
                "ClusterRoles",
            )
            .await
        {
            Ok(roles) => Some(cluster_roles(&roles)),
            Err(e) => {
                report.failures.push(e.to_string());
                None
            }
        }
    }
}

/// The `Ready` condition a mapping should carry: (ready, reason, message). Spec problems first
/// (`ForbiddenNamespace`, `InvalidSpec`), then the state the cluster's facts give it
/// (`ClusterRoleMissing`, `ClusterWideWrite`, `NotBindable`); `None` while that state is not
/// known.
fn readiness(
    settings: &ReconcilerSettings,
    mapping: &NamedMapping,
    state: Option<&MappingState>,
) -> Option<(bool, &'static str, String)> {
    let problems = validate_mapping(
        &mapping.name,
        &mapping.spec,
        &settings.forbidden_namespaces(),
    );
    if let Some(first) = problems.first() {
        let reason = if first.is_forbidden_namespace() {
            REASON_FORBIDDEN_NAMESPACE
        } else {
            REASON_INVALID_SPEC
        };
        let words: Vec<String> = problems
            .iter()
            .filter(|p| p.is_forbidden_namespace() == first.is_forbidden_namespace())
            .map(ToString::to_string)
            .collect();
        return Some((
            false,
            reason,
            format!("{}; fix or remove it", words.join("; ")),
        ));
    }
    match state? {
        MappingState::Ready => Some((true, REASON_READY, "the mapping can be used".to_owned())),
        MappingState::NotReady { reason, message } => {
            Some((false, reason.as_str(), message.clone()))
        }
        _ => None,
    }
}

fn signed(d: Duration) -> SignedDuration {
    SignedDuration::try_from(d).unwrap_or(SignedDuration::MAX)
}

fn unsigned(d: SignedDuration) -> Duration {
    Duration::try_from(d).unwrap_or(Duration::ZERO)
}

#[async_trait]
impl Reconciler for KubernetesReconciler {
    async fn reconcile_once(&self, now: Timestamp) -> Result<ReconcileReport, ReconcileError> {
        let mut report = ReconcileReport::default();
        let sessions = self.list_all(&self.apis.sessions, None, "Sessions").await?;
        let mappings: Vec<GrantMapping> = self
            .list_all(&Api::all(self.apis.client().clone()), None, "GrantMappings")
            .await?;
        let service_accounts: HashMap<String, ServiceAccount> = self
            .list_all(
                &self.apis.service_accounts,
                Some(&managed_selector()),
                "ServiceAccounts",
            )
            .await?
            .into_iter()
            .map(|sa| (sa.name_any(), sa))
            .collect();

        let named: Vec<NamedMapping> = mappings
            .iter()
            .map(|m| NamedMapping {
                name: m.name_any(),
                spec: m.spec.clone(),
            })
            .collect();
        // One view of the mappings for this pass: the sessions are judged and the conditions
        // written from it, with the same judgement the login uses.
        let roles = if named.is_empty() {
            None
        } else {
            self.cluster_roles(&mut report).await
        };
        let facts = ClusterFacts {
            cluster_roles: roles.as_ref(),
            allow_cluster_wide_write: self.settings.allow_cluster_wide_write,
        };
        let hook = self.hook.as_deref();
        let views = mapping_views(&named, &facts, &|m| {
            hook.map_or(Bindable::Yes, |h| h.bindable(m))
        });
        let mut fingerprint: Vec<Fingerprint> = mappings
            .iter()
            .map(|m| {
                let name = m.name_any();
                let state = views
                    .iter()
                    .find(|v| v.name.as_str() == name)
                    .map(|v| format!("{:?}", v.state))
                    .unwrap_or_default();
                (
                    name,
                    m.uid().unwrap_or_default(),
                    m.metadata.generation.unwrap_or(0),
                    state,
                )
            })
            .collect();
        fingerprint.sort();
        let (revalidate_all, mut validated) = {
            let state = self.state();
            (
                state.revalidate_all || state.mappings_seen.as_ref() != Some(&fingerprint),
                state.validated.clone(),
            )
        };

        let mut endings = Vec::new();
        for session in &sessions {
            self.session_pass(
                session,
                now,
                revalidate_all,
                &views,
                &service_accounts,
                &mut report,
                &mut validated,
                &mut endings,
            )
            .await;
        }
        self.end_sessions(endings, now, &mut report).await;

        let ended: HashSet<&str> = report
            .removed_of(ObjectKind::Session)
            .map(|r| r.name.as_str())
            .collect();
        let by_name: BTreeMap<String, Session> = sessions
            .iter()
            .filter(|s| !ended.contains(s.name_any().as_str()))
            .map(|s| (s.name_any(), s.clone()))
            .collect();
        self.sweep(&by_name, now, &mut report).await?;
        self.update_conditions(&mappings, &views, now, &mut report)
            .await;

        let live: HashSet<String> = by_name.values().filter_map(|s| s.uid()).collect();
        validated.retain(|uid, _| live.contains(uid));
        {
            let mut state = self.state();
            state.validated = validated;
            state.mappings_seen = Some(fingerprint);
            state.revalidate_all = false;
        }
        debug!(
            removed = report.removed.len(),
            live = report.live_sessions,
            next = ?report.next_requeue,
            "reconcile pass done"
        );
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{GrantMappingSpec, NamespacedGrant};

    fn reconciler_settings() -> ReconcilerSettings {
        ReconcilerSettings::new("tka-system", "test")
    }

    #[test]
    fn the_servers_namespace_and_kube_system_are_denied() {
        let s = reconciler_settings();
        let denied = s.forbidden_namespaces();
        assert!(denied.contains("tka-system"));
        assert!(denied.contains("kube-system"));
        assert!(!denied.contains("team-a"));
    }

    fn mapping(cluster_roles: &[&str], namespaced: &[(&str, &str)]) -> NamedMapping {
        NamedMapping {
            name: "dev".into(),
            spec: GrantMappingSpec {
                cluster_roles: cluster_roles.iter().map(|r| (*r).to_owned()).collect(),
                namespaced: namespaced
                    .iter()
                    .map(|(role, ns)| NamespacedGrant {
                        cluster_role: (*role).to_owned(),
                        namespaces: vec![(*ns).to_owned()],
                    })
                    .collect(),
                ..GrantMappingSpec::default()
            },
        }
    }

    fn state_of(m: &NamedMapping, bindable: &Bindable) -> MappingState {
        let roles = crate::policy::cases::bootstrap_cluster_roles();
        let facts = ClusterFacts {
            cluster_roles: Some(&roles),
            allow_cluster_wide_write: false,
        };
        crate::policy::judge_mapping(&m.spec, &facts, bindable)
    }

    fn condition(m: &NamedMapping, bindable: &Bindable) -> (bool, &'static str, String) {
        readiness(&reconciler_settings(), m, Some(&state_of(m, bindable))).unwrap()
    }

    #[test]
    fn mapping_readiness_names_the_problem() {
        let ok = condition(&mapping(&["view"], &[("edit", "team-a")]), &Bindable::Yes);
        assert_eq!((ok.0, ok.1), (true, REASON_READY));
        let missing = condition(&mapping(&["ghost"], &[]), &Bindable::Yes);
        assert_eq!((missing.0, missing.1), (false, "ClusterRoleMissing"));
        assert!(missing.2.contains("ghost"));
        let forbidden = condition(
            &mapping(&["view"], &[("edit", "kube-system")]),
            &Bindable::Yes,
        );
        assert_eq!(
            (forbidden.0, forbidden.1),
            (false, REASON_FORBIDDEN_NAMESPACE)
        );
        for ns in ["tka-system", "kube-public", "kube-node-lease"] {
            let own = condition(&mapping(&[], &[("view", ns)]), &Bindable::Yes);
            assert_eq!(own.1, REASON_FORBIDDEN_NAMESPACE, "{ns}");
        }
        let refused = Bindable::No("dev binds a role outside the allowlist".into());
        let hooked = condition(&mapping(&["view"], &[]), &refused);
        assert_eq!((hooked.0, hooked.1), (false, "NotBindable"));
        let mut bad_ttl = mapping(&["view"], &[]);
        bad_ttl.spec.default_ttl = Some("0s".into());
        let invalid = condition(&bad_ttl, &Bindable::Yes);
        assert_eq!((invalid.0, invalid.1), (false, REASON_INVALID_SPEC));
        assert!(invalid.2.contains("defaultTTL"), "{}", invalid.2);
        let nothing = condition(&mapping(&[], &[]), &Bindable::Yes);
        assert_eq!((nothing.0, nothing.1), (false, REASON_INVALID_SPEC));
        // A state not known yet leaves the condition alone; a spec problem is known anyway.
        let m = mapping(&["view"], &[]);
        let unknown = MappingState::Unchecked("not asked".into());
        assert_eq!(readiness(&reconciler_settings(), &m, Some(&unknown)), None);
        let bad = mapping(&["view"], &[("edit", "kube-system")]);
        assert!(readiness(&reconciler_settings(), &bad, Some(&unknown)).is_some());
    }

    #[test]
    fn cluster_wide_write_roles_are_not_ready_and_say_how_to_bind_them_per_namespace() {
        let view = condition(&mapping(&["view"], &[]), &Bindable::Yes);
        assert_eq!((view.0, view.1), (true, REASON_READY));
        for role in [
            "edit",
            "admin",
            "cluster-admin",
            "pod-creator",
            "secret-reader",
        ] {
            let (ready, reason, message) = condition(&mapping(&[role], &[]), &Bindable::Yes);
            assert_eq!((ready, reason), (false, "ClusterWideWrite"), "{role}");
            assert!(
                message.contains(&format!(
                    "namespaced: [{{clusterRole: {role}, namespaces: [...]}}]"
                )),
                "{message}"
            );
            // The same role per namespace is fine.
            let per_namespace = condition(&mapping(&[], &[(role, "team-a")]), &Bindable::Yes);
            assert_eq!(
                (per_namespace.0, per_namespace.1),
                (true, REASON_READY),
                "{role}"
            );
        }
        // The server flag lifts it.
        let roles = crate::policy::cases::bootstrap_cluster_roles();
        let allowed = ClusterFacts {
            cluster_roles: Some(&roles),
            allow_cluster_wide_write: true,
        };
        assert_eq!(
            crate::policy::judge_mapping(&mapping(&["edit"], &[]).spec, &allowed, &Bindable::Yes),
            MappingState::Ready
        );
    }
}
