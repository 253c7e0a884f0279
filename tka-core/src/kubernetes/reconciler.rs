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
//! The run loop ends sessions at the earliest `expiresAt` the watched stores hold, in an
//! *ending step* that reads each over session live and ends it as a pass would, judging nothing
//! else (no re-validation, no sweep), so an expiry does not wait for the minimum interval
//! between passes nor for a pass over every session. Full passes come for the rest: a grace
//! period's end, re-validation, a change; everything is recomputed from the stores, so a
//! restart loses nothing ([`PassSchedule`] holds when the run loop wakes). The run loop learns of changes from the server's shared [`ClusterWatches`] and opens
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
use k8s_openapi::api::rbac::v1::ClusterRole;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, Preconditions};
use kube::{Api, Client, Resource, ResourceExt};
use tokio::sync::watch;
use tracing::{debug, info, warn};

use super::checkpoint::Checkpoints;
use super::error::{is_conflict, is_not_found, reconcile_error};
use super::lease::{LeaderLease, LeaseSettings};
use super::objects::{Apis, end_session, managed_selector, removal};
use super::rbac::cluster_roles;
use super::schedule::PassSchedule;
use super::session::{Session, SessionPhase};
use super::watches::{Child, ClusterWatches, Revision};
use super::{
    CONDITION_READY, GrantMappingStatus, REASON_FORBIDDEN_NAMESPACE, REASON_INVALID_SPEC,
    REASON_READY,
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
    /// The longest time between passes in [`KubernetesReconciler::run`] (default 5 min, the
    /// re-validation period: passes come when something is due, this is only a backstop).
    pub resync_every: Duration,
    /// The shortest time between passes triggered by watch events (default 1 s).
    pub min_interval: Duration,
    /// The Lease used by [`KubernetesReconciler::run`].
    pub lease: LeaseSettings,
    /// How many sessions a pass ends at once (default 16): a burst of expiries is ended
    /// concurrently, without flooding the API server.
    pub sessions_ended_at_once: usize,
    /// How many sessions a pass judges at once (default 16): the live reads that confirm a
    /// session the stores show as due, and the whois calls of re-validation, run concurrently,
    /// so a pass over many sessions does not wait for them one by one.
    pub sessions_judged_at_once: usize,
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
            resync_every: Duration::from_secs(300),
            min_interval: Duration::from_secs(1),
            sessions_ended_at_once: 16,
            sessions_judged_at_once: 16,
        }
    }

    /// The server's namespace and the deny list: where no mapping may bind.
    pub fn forbidden_namespaces(&self) -> BTreeSet<String> {
        std::iter::once(self.namespace.clone())
            .chain(self.denied_namespaces.iter().cloned())
            .collect()
    }
}

/// The labelled ServiceAccounts, by name.
type ServiceAccounts = HashMap<Box<str>, Arc<Child>>;

/// Lowers `due` to `at` if that is earlier.
fn at_opt(due: &mut Option<Timestamp>, at: Option<Timestamp>) {
    if let Some(at) = at {
        *due = Some(due.map_or(at, |d| d.min(at)));
    }
}

/// Deletes `name` if it is still the object seen (same UID and resourceVersion). `Ok(true)` when
/// this call deleted it, `Ok(false)` when it was already gone, is now another object, or has
/// changed since (the next pass judges it again).
async fn delete_unchanged<K>(
    api: &Api<K>,
    name: &str,
    uid: &str,
    resource_version: Option<String>,
) -> Result<bool, kube::Error>
where
    K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let params = DeleteParams {
        preconditions: Some(Preconditions {
            uid: Some(uid.to_owned()),
            resource_version,
        }),
        ..DeleteParams::default()
    };
    match api.delete(name, &params).await {
        Ok(_) => Ok(true),
        Err(e) if is_not_found(&e) || is_conflict(&e) => Ok(false),
        Err(e) => Err(e),
    }
}

/// What woke the run loop, once a burst has settled.
#[derive(Debug, Default, Clone, Copy)]
struct Changed {
    /// A Session, or a labelled ServiceAccount or binding.
    objects: bool,
    /// A GrantMapping.
    mappings: bool,
    /// A ClusterRole changed (not merely re-listed).
    roles: bool,
}

/// The watch receivers the run loop wakes on, and what it last saw of them.
struct Wakes {
    objects: [watch::Receiver<Revision>; 4],
    mappings: watch::Receiver<Revision>,
    roles: watch::Receiver<Revision>,
    roles_seen: u64,
    fired: Changed,
    /// The GrantMappings (name, uid, generation) at the last change looked at.
    mappings_seen: Option<Vec<(String, String, i64)>>,
}

impl Wakes {
    fn new(watches: &ClusterWatches) -> Self {
        let mut roles = watches.cluster_roles.subscribe();
        // An aggregated role can gain a write rule at any time: re-check then, not at the next
        // periodic pass. Only changes count, not the (re)list of every role; a change missed
        // across a re-list is caught by the next periodic pass, whose fingerprint holds every
        // mapping's state.
        let roles_seen = roles.borrow_and_update().changes;
        Self {
            objects: [
                watches.sessions.watched().subscribe(),
                watches.service_accounts.subscribe(),
                watches.cluster_role_bindings.subscribe(),
                watches.role_bindings.subscribe(),
            ],
            mappings: watches.grant_mappings.subscribe(),
            roles,
            roles_seen,
            fired: Changed::default(),
            mappings_seen: None,
        }
    }

    /// Waits until some watch reports a list or a change (forever once every watch stopped).
    async fn changed(&mut self) {
        let [sessions, sas, crbs, rbs] = &mut self.objects;
        tokio::select! {
            Ok(()) = sessions.changed() => self.fired.objects = true,
            Ok(()) = sas.changed() => self.fired.objects = true,
            Ok(()) = crbs.changed() => self.fired.objects = true,
            Ok(()) = rbs.changed() => self.fired.objects = true,
            Ok(()) = self.mappings.changed() => self.fired.mappings = true,
            Ok(()) = self.roles.changed() => self.fired.roles = true,
            else => std::future::pending().await,
        }
    }

    /// Everything that changed since the last call (a burst counts once).
    fn take(&mut self) -> Changed {
        let mut changed = std::mem::take(&mut self.fired);
        for rx in &mut self.objects {
            if rx.has_changed().unwrap_or(false) {
                rx.borrow_and_update();
                changed.objects = true;
            }
        }
        if self.mappings.has_changed().unwrap_or(false) {
            self.mappings.borrow_and_update();
            changed.mappings = true;
        }
        let roles = self.roles.borrow_and_update().changes;
        changed.roles = roles != self.roles_seen;
        self.roles_seen = roles;
        changed
    }

    /// Whether a GrantMapping was made, removed or had its spec changed (its generation) since
    /// the last call; a change of status alone (the reconciler's own conditions) is not one.
    fn mappings_moved(&mut self, watches: &ClusterWatches) -> bool {
        let mut now: Vec<(String, String, i64)> = watches
            .grant_mappings
            .state()
            .iter()
            .map(|m| {
                (
                    m.name_any(),
                    m.uid().unwrap_or_default(),
                    m.metadata.generation.unwrap_or(0),
                )
            })
            .collect();
        now.sort();
        let moved = self.mappings_seen.as_ref() != Some(&now);
        self.mappings_seen = Some(now);
        moved
    }
}

/// What the watched stores say is due (see [`KubernetesReconciler::due_in`]).
#[derive(Debug, Default, Clone, Copy)]
struct Due {
    /// A full pass.
    pass: Option<Timestamp>,
    /// An ending step: the moment the next session is over.
    ending: Option<Timestamp>,
}

/// What the run loop's ending steps did since the last full pass.
#[derive(Debug, Default)]
struct Ended {
    /// Sessions (by UID) an ending step has tried: no step tries them again before the next
    /// pass (which, if one failed, comes soon and ends it again).
    tried: HashSet<String>,
    /// Sessions (by name) an ending step ended, each with every child it found, and when; kept
    /// while the stores still show a child of theirs.
    names: HashMap<String, Timestamp>,
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

/// What a pass found about one session, before it is applied to the pass's report (sessions
/// are judged concurrently; the report is written in their order afterwards).
#[derive(Debug, Default)]
struct Judgement {
    /// The session as judged (the live copy when the store's was confirmed); `None` when it is
    /// gone or could not be confirmed.
    session: Option<Arc<Session>>,
    /// It is to be ended (boxed: a pass holds one judgement per session at once, and most
    /// sessions are not ending).
    ending: Option<Box<Ending>>,
    /// It lives on, to be looked at again at these times (besides its expiry).
    live: Option<Vec<Timestamp>>,
    /// It lives on until this `expiresAt`.
    expires: Option<Timestamp>,
    /// Problems to report.
    failures: Vec<String>,
    /// It was re-validated; `Some(now)` when its grant was found to hold.
    revalidated: Option<Option<Timestamp>>,
}

impl Judgement {
    fn ending(session: &Session, mark: Option<SessionPhase>, reason: RemovalReason) -> Self {
        Self {
            ending: Some(Box::new(Ending::new(session, mark, reason))),
            ..Self::default()
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

/// Told about every pass and every ending step [`KubernetesReconciler::run`] makes: how long it
/// took and what it did (for metrics).
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

    /// Runs passes until `shutdown` completes, while holding the Lease, only when something is
    /// due: the earliest requeue a pass reported (a grace period's end), the next periodic
    /// re-validation, a watch event that makes something due sooner (a Session, or one of tka's
    /// labelled objects, that is unfinished or orphaned), or a GrantMapping or ClusterRole
    /// change; and at least every `resync_every`. Sessions that are over (the earliest
    /// `expiresAt` in the stores, or one deleted or marked ended) are ended by an ending step at
    /// that moment, without a full pass and without the minimum interval between passes; a
    /// session a step fails to end brings a pass soon after. Events are coalesced; the Lease is
    /// renewed on its own timer, and a renewal never makes a pass. The first pass waits until
    /// every watched store holds its first list, and passes read the stores, not fresh lists.
    /// The watches are the shared [`ClusterWatches`] given with [`Self::with_watches`], else
    /// watches of its own, driven for as long as this runs. When passes are due is
    /// [`PassSchedule`]'s rule.
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
                let (own, driver) = ClusterWatches::new(&client, &self.settings.namespace);
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
        let mut wakes = Wakes::new(&watches);
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
        let mut renew_now = true;
        let mut ended = Ended::default();
        loop {
            if renew_now || schedule.renewal_due(tokio::time::Instant::now()) {
                leading = self.renew(&lease, leading, &mut schedule).await;
                schedule.renewed(tokio::time::Instant::now());
                renew_now = false;
            }
            let ready = leading && watches.all_listed();
            if ready && schedule.is_due(tokio::time::Instant::now()) {
                // What the pass judges the mappings from: a later change is one to it (and the
                // pass's own status writes are not).
                wakes.mappings_moved(&watches);
                // A long pass (the first one re-validates every session) must not starve the
                // Lease: it is renewed on its timer meanwhile.
                let pass = self.pass(&watches);
                tokio::pin!(pass);
                let wait = loop {
                    tokio::select! {
                        wait = &mut pass => break wait,
                        () = tokio::time::sleep_until(schedule.renew_at()) => {
                            leading = self.renew(&lease, leading, &mut schedule).await;
                            schedule.renewed(tokio::time::Instant::now());
                        }
                    }
                };
                schedule.after_pass(tokio::time::Instant::now(), wait);
                // The pass judged (and ended) every session a step had tried.
                ended.tried.clear();
                let due = self.due_in(&watches, self.clock.now(), &mut ended);
                schedule.ends_due_by(due.ending.map(|at| self.instant_of(at)));
            }
            if ready && schedule.ending_due(tokio::time::Instant::now()) {
                // Sessions over by now are ended at once, not at the next pass: a step costs
                // a few requests per ending session, a pass judges every session.
                let all_ended = {
                    let step = self.end_due(&watches, &mut ended);
                    tokio::pin!(step);
                    loop {
                        tokio::select! {
                            all = &mut step => break all,
                            () = tokio::time::sleep_until(schedule.renew_at()) => {
                                leading = self.renew(&lease, leading, &mut schedule).await;
                                schedule.renewed(tokio::time::Instant::now());
                            }
                        }
                    }
                };
                if !all_ended {
                    schedule.ending_failed(tokio::time::Instant::now());
                }
                let due = self.due_in(&watches, self.clock.now(), &mut ended);
                schedule.due_by(due.pass.map(|at| self.instant_of(at)));
                schedule.ends_due_by(due.ending.map(|at| self.instant_of(at)));
            }
            let wake = schedule.wake_at(tokio::time::Instant::now(), ready);
            tokio::select! {
                () = &mut shutdown => break,
                () = &mut drive_own => break,
                () = tokio::time::sleep_until(wake) => continue,
                () = wakes.changed() => {}
            }
            // Coalesce a burst of events: let it settle, then look at everything it changed. A
            // pass or ending due sooner ends the settling (it reads the stores as they are by
            // then): the deletions of a pass or step are events too, and settling on them would
            // delay the next expiry by up to the settle time.
            let settled = schedule.settled_at(tokio::time::Instant::now(), ready);
            tokio::select! {
                () = &mut shutdown => break,
                () = tokio::time::sleep_until(settled) => {}
            }
            let changed = wakes.take();
            if !watches.all_listed() {
                // The first pass is due already and waits for every first list.
                continue;
            }
            if (changed.mappings && wakes.mappings_moved(&watches)) || changed.roles {
                self.request_revalidation();
                schedule.kick(tokio::time::Instant::now());
            }
            if changed.objects {
                let due = self.due_in(&watches, self.clock.now(), &mut ended);
                schedule.due_by(due.pass.map(|at| self.instant_of(at)));
                schedule.ends_due_by(due.ending.map(|at| self.instant_of(at)));
            }
        }
        lease.release().await
    }

    /// Renews (or tries to take) the Lease; returns whether this replica leads now. Taking it
    /// makes a pass due at once, re-validating every live session.
    async fn renew(&self, lease: &LeaderLease, leading: bool, schedule: &mut PassSchedule) -> bool {
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
                now_leading
            }
            Err(e) => {
                warn!(error = %e, "could not renew the reconciler lease");
                false
            }
        }
    }

    /// One pass of [`Self::run`] from the watched stores; returns how long until the next one is
    /// due for anything but an expiry, or `None` when it failed as a whole.
    async fn pass(&self, watches: &ClusterWatches) -> Option<Duration> {
        let now = self.clock.now();
        let started = std::time::Instant::now();
        let outcome = self.reconcile_from(now, Some(watches)).await;
        if let Some(observer) = &self.observer {
            observer(
                started.elapsed(),
                outcome.as_ref().map(|(report, _)| report),
            );
        }
        match outcome {
            Ok((report, besides_expiries)) => {
                if !report.removed.is_empty() || !report.failures.is_empty() {
                    info!(
                        removed = report.removed.len(),
                        failures = report.failures.len(),
                        live = report.live_sessions,
                        "reconcile pass"
                    );
                }
                warn_failures(&report);
                // Expiries are the ending steps' business (the loop schedules them from the
                // stores); a pass comes for the rest.
                let next = match (besides_expiries, self.revalidation_due()) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
                let due = wait_until(now, next, signed(self.settings.resync_every));
                Some(unsigned(due))
            }
            Err(e) => {
                warn!(error = %e, "reconcile pass failed");
                None
            }
        }
    }

    /// When the loop's clock reaches `at` on this reconciler's clock.
    fn instant_of(&self, at: Timestamp) -> tokio::time::Instant {
        let wait = at.duration_since(self.clock.now());
        tokio::time::Instant::now() + unsigned(wait)
    }

    /// The earliest periodic re-validation of a session whose grant was last found to hold.
    fn revalidation_due(&self) -> Option<Timestamp> {
        let every = self.settings.revalidate_every;
        self.state().validated.values().map(|at| *at + every).min()
    }

    /// How early before its periodic time a session is re-validated, so that sessions whose
    /// times are close are re-validated in one pass rather than in one pass each.
    fn revalidation_slack(&self) -> SignedDuration {
        self.settings.revalidate_every / 10
    }

    /// What the watched stores say is due, judged cheaply from what they hold (the pass or the
    /// ending step decides, with live reads where it must):
    ///
    /// - an ending step when a session is over: at its `expiresAt`, or now for one deleted or
    ///   marked ended, unless an ending step has tried it since the last pass (a failed try
    ///   brings a pass, which ends it again);
    /// - a pass now for a session that is malformed or missing the ServiceAccount it recorded;
    ///   at the grace period's end for an unfinished one and for a labelled object that looks
    ///   orphaned; at the first periodic re-validation of a session no pass has re-validated yet.
    ///
    /// The objects of a session that is over are its ending's business, not orphans; so are
    /// those of a session an ending step has ended with every child it found (the watches may
    /// show the Session gone before its bindings): if one of those stays, a pass comes for it a
    /// grace period after the ending.
    fn due_in(&self, watches: &ClusterWatches, now: Timestamp, ended: &mut Ended) -> Due {
        let sessions = watches.sessions.watched().state();
        let accounts: ServiceAccounts = watches
            .service_accounts
            .state()
            .into_iter()
            .map(|sa| (sa.name.clone(), sa))
            .collect();
        let by_name: HashMap<String, &Session> =
            sessions.iter().map(|s| (s.name_any(), &**s)).collect();
        let mut due = Due::default();
        {
            let state = self.state();
            for session in &sessions {
                let Some(uid) = session.uid() else {
                    continue;
                };
                if session.is_over(now) {
                    if !ended.tried.contains(&uid) {
                        at_opt(&mut due.ending, Some(now));
                    }
                    continue;
                }
                at_opt(&mut due.ending, Some(session.expires_at()));
                let pass = if session.grant().is_none() {
                    Some(now)
                } else if !session.is_complete() {
                    Some(session.spec.revised_at.0 + self.settings.grace)
                } else if self.session_due(session, &accounts, now) <= now {
                    // Its ServiceAccount is missing.
                    Some(now)
                } else if !state.validated.contains_key(&uid) {
                    // A session made (or given another role) since the last pass is not among
                    // the validated ones, whose re-validation the passes schedule: without
                    // this its first re-check would wait for an unrelated pass or the resync
                    // backstop. Its login checked the grant at `revisedAt`.
                    Some(session.spec.revised_at.0 + self.settings.revalidate_every)
                } else {
                    None
                };
                at_opt(&mut due.pass, pass);
            }
        }
        let (crbs, rbs) = (
            watches.cluster_role_bindings.state(),
            watches.role_bindings.state(),
        );
        let children = accounts
            .values()
            .map(|sa| (sa, false))
            .chain(crbs.iter().chain(rbs.iter()).map(|b| (b, true)));
        let mut still_seen = HashMap::new();
        for (child, is_binding) in children {
            let name = child.session.as_deref();
            let session = name.and_then(|n| by_name.get(n).copied());
            if session.is_some_and(|s| s.is_over(now)) {
                continue;
            }
            if session.is_none()
                && let Some((name, at)) = name.and_then(|n| ended.names.get_key_value(n))
            {
                at_opt(&mut due.pass, Some(*at + self.settings.grace));
                still_seen.insert(name.clone(), *at);
                continue;
            }
            at_opt(
                &mut due.pass,
                self.orphan_due(child, &by_name, now, is_binding),
            );
        }
        ended.names = still_seen;
        due
    }

    /// An ending step of [`Self::run`]: ends the sessions the watched stores show over at this
    /// moment and that no step has tried since the last pass, at most
    /// [`ReconcilerSettings::sessions_ended_at_once`] at a time, and judges nothing else. Each
    /// is read live first (a store may be behind: a session extended since is left alone) and
    /// ended as a pass ends it. Returns whether every one it tried ended (one that failed is
    /// the next pass's).
    async fn end_due(&self, watches: &ClusterWatches, ended: &mut Ended) -> bool {
        let now = self.clock.now();
        let started = std::time::Instant::now();
        let sessions = watches.sessions.watched().state();
        let held: HashSet<String> = sessions.iter().filter_map(|s| s.uid()).collect();
        ended.tried.retain(|uid| held.contains(uid));
        let due: Vec<Arc<Session>> = sessions
            .iter()
            .filter(|s| s.is_over(now) && s.uid().is_some_and(|uid| !ended.tried.contains(&uid)))
            .cloned()
            .collect();
        ended.tried.extend(due.iter().filter_map(|s| s.uid()));
        let mut report = ReconcileReport {
            live_sessions: sessions.iter().filter(|s| !s.is_over(now)).count(),
            ..ReconcileReport::default()
        };
        let bound = self.settings.sessions_ended_at_once.max(1);
        let confirmed: Vec<Result<Option<Ending>, String>> = stream::iter(due)
            .map(|stored| async move {
                let name = stored.name_any();
                match self.apis.sessions.get_opt(&name).await {
                    Ok(Some(live)) if live.uid() == stored.uid() => {
                        Ok(Self::judge_over(&live, now))
                    }
                    Ok(_) => Ok(None),
                    Err(e) => Err(format!("confirming session {name}: {e}")),
                }
            })
            .buffer_unordered(bound)
            .collect()
            .await;
        let mut endings = Vec::new();
        for outcome in confirmed {
            match outcome {
                Ok(Some(ending)) => endings.push(ending),
                Ok(None) => {}
                Err(failure) => report.failures.push(failure),
            }
        }
        let names: Vec<String> = endings.iter().map(|e| e.session.name_any()).collect();
        let ending = names.len();
        self.end_sessions(endings, now, &mut report).await;
        for name in names {
            if report.removed_session(&name) {
                ended.names.insert(name, now);
            }
        }
        debug!(
            ending,
            removed = report.removed.len(),
            failures = report.failures.len(),
            took_ms = started.elapsed().as_secs_f64() * 1e3,
            "ending step done"
        );
        if !report.removed.is_empty() || !report.failures.is_empty() {
            info!(
                removed = report.removed.len(),
                failures = report.failures.len(),
                live = report.live_sessions,
                "sessions ended"
            );
        }
        warn_failures(&report);
        if let Some(observer) = &self.observer {
            observer(started.elapsed(), Ok(&report));
        }
        report.failures.is_empty()
    }

    /// The session a pass judges: `stored` itself when it was listed just now or nothing about
    /// it is due, else (a store may be a moment behind the cluster: a session extended, completed
    /// or given back its ServiceAccount since) the live one, read now, before anything is
    /// removed. `None` when it is gone or is another object by now (its children are the
    /// sweep's business); an error (for the report) when it cannot be read.
    async fn confirmed(
        &self,
        stored: &Arc<Session>,
        from_store: bool,
        accounts: &ServiceAccounts,
        now: Timestamp,
    ) -> Result<Option<Arc<Session>>, String> {
        if !from_store || self.session_due(stored, accounts, now) > now {
            return Ok(Some(Arc::clone(stored)));
        }
        let name = stored.name_any();
        match self.apis.sessions.get_opt(&name).await {
            Ok(Some(live)) if live.uid() == stored.uid() => Ok(Some(Arc::new(live))),
            Ok(_) => Ok(None),
            Err(e) => Err(format!("confirming session {name}: {e}")),
        }
    }

    /// When a labelled object that looks orphaned in the stores may be swept (its grace end).
    fn orphan_due(
        &self,
        object: &Child,
        by_name: &HashMap<String, &Session>,
        now: Timestamp,
        is_binding: bool,
    ) -> Option<Timestamp> {
        let session = object
            .session
            .as_deref()
            .and_then(|n| by_name.get(n).copied());
        Self::orphan_reason(object, session, now, is_binding)?;
        Some(object.created.unwrap_or(now) + self.settings.grace)
    }

    /// When the run loop must look at `session` again, as far as the stores show.
    fn session_due(
        &self,
        session: &Session,
        accounts: &ServiceAccounts,
        now: Timestamp,
    ) -> Timestamp {
        if session.is_over(now) || session.grant().is_none() {
            return now;
        }
        if !session.is_complete() {
            return (session.spec.revised_at.0 + self.settings.grace).min(session.expires_at());
        }
        let recorded = session
            .status
            .as_ref()
            .and_then(|s| s.service_account.as_ref());
        let held = recorded.is_some_and(|r| {
            accounts
                .get(r.name.as_str())
                .is_some_and(|sa| *sa.uid == *r.uid)
        });
        if held { session.expires_at() } else { now }
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
                let began = self.clock.now();
                let outcome = end_session(
                    &self.apis,
                    &ending.session,
                    mark,
                    &ending.reason,
                    &Checkpoints::default(),
                )
                .await;
                // From its end (for an expiry) to the pass that found it, to this ending's
                // start and to its last deletion: where an expiry's lag goes.
                let expires_at = ending.session.expires_at();
                let ms = |at: Timestamp| at.duration_since(expires_at).as_secs_f64() * 1e3;
                debug!(
                    session = %ending.session.name_any(),
                    reason = %ending.reason,
                    pass_ms = ms(now),
                    began_ms = ms(began),
                    done_ms = ms(self.clock.now()),
                    "session ended (times since its expiresAt)"
                );
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
    /// live read when the store (or list) does not show it.
    async fn service_account_intact(
        &self,
        session: &Session,
        listed: &ServiceAccounts,
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
        let intact = |sa: &Child| {
            *sa.uid == *recorded.uid && sa.owner.as_deref() == session.uid().as_deref()
        };
        if listed.get(name.as_str()).is_some_and(|sa| intact(sa)) {
            return Ok(true);
        }
        Ok(self
            .apis
            .service_accounts
            .get_metadata_opt(&name)
            .await?
            .is_some_and(|sa| intact(&Child::of(&sa))))
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

    /// What the pass decides about `session`; reads only (the live ServiceAccount when the
    /// store does not show it, whois when re-validation is due), so sessions are judged
    /// concurrently.
    async fn judge_session(
        &self,
        session: &Session,
        now: Timestamp,
        revalidate_all: bool,
        mappings: &[MappingView],
        service_accounts: &ServiceAccounts,
        validated: &HashMap<String, Timestamp>,
    ) -> Judgement {
        if let Some(ending) = Self::judge_over(session, now) {
            return Judgement {
                ending: Some(Box::new(ending)),
                ..Judgement::default()
            };
        }
        if session.grant().is_none() {
            return Judgement::ending(
                session,
                Some(SessionPhase::Revoked),
                RemovalReason::HalfMade,
            );
        }
        if !session.is_complete() {
            if session.is_stale(now, self.settings.grace) {
                return Judgement::ending(
                    session,
                    Some(SessionPhase::Revoked),
                    RemovalReason::HalfMade,
                );
            }
            return Judgement {
                live: Some(vec![session.spec.revised_at.0 + self.settings.grace]),
                expires: Some(session.expires_at()),
                ..Judgement::default()
            };
        }
        let mut judgement = Judgement::default();
        match self.service_account_intact(session, service_accounts).await {
            Ok(true) => {}
            Ok(false) => {
                return Judgement::ending(
                    session,
                    Some(SessionPhase::Revoked),
                    RemovalReason::HalfMade,
                );
            }
            Err(e) => judgement.failures.push(format!(
                "checking the ServiceAccount of session {}: {e}",
                session.name_any()
            )),
        }
        let uid = session.uid().unwrap_or_default();
        let due = revalidate_all
            || validated.get(&uid).is_none_or(|at| {
                *at + self.settings.revalidate_every <= now + self.revalidation_slack()
            });
        if due {
            match self.revalidate(session, mappings, now).await {
                Verdict::Holds => judgement.revalidated = Some(Some(now)),
                Verdict::Withdrawn(why) => {
                    info!(session = %session.name_any(), why, "grant withdrawn; revoking");
                    let mut ending = Judgement::ending(
                        session,
                        Some(SessionPhase::Revoked),
                        RemovalReason::GrantWithdrawn(why),
                    );
                    ending.revalidated = Some(None);
                    ending.failures = judgement.failures;
                    return ending;
                }
                Verdict::Unknown(why) => {
                    judgement.revalidated = Some(None);
                    judgement.failures.push(format!(
                        "re-validating session {}: {why}",
                        session.name_any()
                    ));
                }
            }
        }
        judgement.live = Some(Vec::new());
        judgement.expires = Some(session.expires_at());
        judgement
    }

    /// How `session` is ended when it is over at `now` (being deleted, marked revoked or
    /// expired, or past its `expiresAt`): decided from the session alone, with no read.
    /// `None` while it is not over.
    fn judge_over(session: &Session, now: Timestamp) -> Option<Ending> {
        if session.is_deleting() {
            return Some(Ending::new(session, None, RemovalReason::Deleted));
        }
        match session.phase() {
            Some(SessionPhase::Revoked) => {
                return Some(Ending::new(session, None, RemovalReason::Revoked));
            }
            Some(SessionPhase::Expired) => {
                return Some(Ending::new(session, None, RemovalReason::Expired));
            }
            _ => {}
        }
        (session.expires_at() <= now)
            .then(|| Ending::new(session, Some(SessionPhase::Expired), RemovalReason::Expired))
    }

    /// Why `object` must go, judged against `session` (its `tka.dev/session`), or `None`.
    fn orphan_reason(
        object: &Child,
        session: Option<&Session>,
        now: Timestamp,
        is_binding: bool,
    ) -> Option<RemovalReason> {
        let Some(session) = session else {
            return Some(RemovalReason::Orphan);
        };
        if session.is_over(now) || object.owner.as_deref() != session.uid().as_deref() {
            return Some(RemovalReason::Orphan);
        }
        if is_binding {
            let revision = object.revision.as_deref();
            let current = Some(session.spec.revision.as_str());
            let committed = session.status.as_ref().and_then(|s| s.revision.as_deref());
            if revision != current && revision != committed {
                return Some(RemovalReason::StaleRevision);
            }
        }
        None
    }

    /// Decides about one labelled object; `Some(reason)` when it must be deleted.
    async fn sweep_verdict(
        &self,
        object: &Child,
        sessions: &BTreeMap<String, Arc<Session>>,
        now: Timestamp,
        is_binding: bool,
        report: &mut ReconcileReport,
    ) -> Option<RemovalReason> {
        let session_name = object.session.as_deref();
        let listed = session_name.and_then(|n| sessions.get(n)).map(|s| &**s);
        Self::orphan_reason(object, listed, now, is_binding)?;
        // It looks orphaned. A young object may belong to a login in flight whose Session this
        // pass's list predates: leave it until the grace period is over.
        let created = object.created.unwrap_or(now);
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

    /// Sweeps the labelled ServiceAccounts, ClusterRoleBindings and RoleBindings: from the
    /// stores when `watches` are given, else listed now. Objects of `ended` sessions (ended by
    /// this pass, with their children) are left to that ending.
    async fn sweep(
        &self,
        watches: Option<&ClusterWatches>,
        sessions: &BTreeMap<String, Arc<Session>>,
        ended: &HashSet<String>,
        now: Timestamp,
        report: &mut ReconcileReport,
    ) -> Result<(), ReconcileError> {
        let sas = match watches {
            Some(w) => w.service_accounts.state(),
            None => {
                self.labelled(&self.apis.service_accounts, "ServiceAccounts")
                    .await?
            }
        };
        self.sweep_objects(
            sas,
            ObjectKind::ServiceAccount,
            |_| self.apis.service_accounts.clone(),
            (sessions, ended),
            now,
            report,
        )
        .await;
        let crbs = match watches {
            Some(w) => w.cluster_role_bindings.state(),
            None => {
                self.labelled(&self.apis.cluster_role_bindings, "ClusterRoleBindings")
                    .await?
            }
        };
        self.sweep_objects(
            crbs,
            ObjectKind::ClusterRoleBinding,
            |_| self.apis.cluster_role_bindings.clone(),
            (sessions, ended),
            now,
            report,
        )
        .await;
        let rbs = match watches {
            Some(w) => w.role_bindings.state(),
            None => {
                self.labelled(&self.apis.all_role_bindings, "RoleBindings")
                    .await?
            }
        };
        self.sweep_objects(
            rbs,
            ObjectKind::RoleBinding,
            |rb| {
                self.apis
                    .role_bindings(rb.namespace.as_deref().unwrap_or_default())
            },
            (sessions, ended),
            now,
            report,
        )
        .await;
        Ok(())
    }

    /// The metadata of the objects labelled `managed-by=tka` that `api` lists, listed now.
    async fn labelled<K>(&self, api: &Api<K>, what: &str) -> Result<Vec<Arc<Child>>, ReconcileError>
    where
        K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
    {
        api.list_metadata(&ListParams::default().labels(&managed_selector()))
            .await
            .map(|l| l.items.iter().map(|o| Arc::new(Child::of(o))).collect())
            .map_err(|e| reconcile_error(format!("list {what}"), e))
    }

    /// Deletes (with UID and resourceVersion preconditions, so an object changed since it was
    /// seen is judged again at the next pass) each of `objects` that [`Self::sweep_verdict`]
    /// condemns, recording removals and failures in `report`; `api_for` gives the API to
    /// delete it through.
    async fn sweep_objects<K>(
        &self,
        objects: Vec<Arc<Child>>,
        kind: ObjectKind,
        api_for: impl Fn(&Child) -> Api<K>,
        (sessions, ended): (&BTreeMap<String, Arc<Session>>, &HashSet<String>),
        now: Timestamp,
        report: &mut ReconcileReport,
    ) where
        K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
    {
        let is_binding = kind != ObjectKind::ServiceAccount;
        for object in objects {
            let of_ended = object.session.as_deref().is_some_and(|n| ended.contains(n));
            if of_ended {
                continue;
            }
            let Some(reason) = self
                .sweep_verdict(&object, sessions, now, is_binding, report)
                .await
            else {
                continue;
            };
            let namespace = object.namespace.as_deref().map(str::to_owned);
            let name = object.name.to_string();
            let version = object.resource_version.as_deref().map(str::to_owned);
            match delete_unchanged(&api_for(&object), &name, &object.uid, version).await {
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
        mappings: &[Arc<GrantMapping>],
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

    /// Every ClusterRole, for the read-only judgement, from the store when `watches` are given;
    /// `None` (and a failure in the report) when they cannot be listed, which leaves every
    /// mapping unchecked for this pass.
    async fn cluster_roles(
        &self,
        watches: Option<&ClusterWatches>,
        report: &mut ReconcileReport,
    ) -> Option<ClusterRoles> {
        if let Some(w) = watches {
            return Some(cluster_roles(
                w.cluster_roles.state().iter().map(AsRef::as_ref),
            ));
        }
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

/// Each failure of a pass or an ending step, with its message: the summary line only counts
/// them. The next pass (or, after a failed ending step, a pass soon after) retries.
fn warn_failures(report: &ReconcileReport) {
    for failure in &report.failures {
        warn!(%failure, "a reconciler step failed; it is retried");
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
    /// One pass: from the shared watches' stores when this reconciler was given them and every
    /// one holds its first list, else from lists made now.
    async fn reconcile_once(&self, now: Timestamp) -> Result<ReconcileReport, ReconcileError> {
        let watches = self.watches.as_ref().filter(|w| w.all_listed());
        self.reconcile_from(now, watches)
            .await
            .map(|(report, _)| report)
    }
}

impl KubernetesReconciler {
    /// One pass reading the stores of `watches`, or lists made now when `None`. Every deletion
    /// is confirmed (a live read, preconditions), so a store a little behind never removes what
    /// it should not. Beside the report: when the next pass is due for anything but an expiry
    /// (the report's `next_requeue` counts the expiries too; the run loop ends those in ending
    /// steps).
    async fn reconcile_from(
        &self,
        now: Timestamp,
        watches: Option<&ClusterWatches>,
    ) -> Result<(ReconcileReport, Option<Timestamp>), ReconcileError> {
        let started = std::time::Instant::now();
        let mut report = ReconcileReport::default();
        let (sessions, mappings, service_accounts) = match watches {
            Some(w) => (
                w.sessions.watched().state(),
                w.grant_mappings.state(),
                w.service_accounts.state(),
            ),
            None => (
                self.list_all(&self.apis.sessions, None, "Sessions")
                    .await?
                    .into_iter()
                    .map(Arc::new)
                    .collect(),
                self.list_all(&Api::all(self.apis.client().clone()), None, "GrantMappings")
                    .await?
                    .into_iter()
                    .map(Arc::new)
                    .collect(),
                self.labelled(&self.apis.service_accounts, "ServiceAccounts")
                    .await?,
            ),
        };
        let service_accounts: ServiceAccounts = service_accounts
            .into_iter()
            .map(|sa| (sa.name.clone(), sa))
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
            self.cluster_roles(watches, &mut report).await
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

        // Each session is judged on its own (reads only), several at once; the outcomes are
        // applied in the sessions' order.
        let from_store = watches.is_some();
        let bound = self.settings.sessions_judged_at_once.max(1);
        let judgements: Vec<Judgement> = stream::iter(sessions.iter().cloned())
            .map(|stored: Arc<Session>| {
                let (views, service_accounts, validated) = (&views, &service_accounts, &validated);
                async move {
                    let session = match self
                        .confirmed(&stored, from_store, service_accounts, now)
                        .await
                    {
                        Ok(Some(session)) => session,
                        Ok(None) => return Judgement::default(),
                        Err(failure) => {
                            return Judgement {
                                failures: vec![failure],
                                ..Judgement::default()
                            };
                        }
                    };
                    let mut judgement = self
                        .judge_session(
                            &session,
                            now,
                            revalidate_all,
                            views,
                            service_accounts,
                            validated,
                        )
                        .await;
                    judgement.session = Some(session);
                    judgement
                }
            })
            .buffered(bound)
            .collect()
            .await;
        let judged_in = started.elapsed();
        let mut endings = Vec::new();
        let mut next_expiry: Option<Timestamp> = None;
        let mut judged: Vec<Arc<Session>> = Vec::with_capacity(sessions.len());
        for judgement in judgements {
            report.failures.extend(judgement.failures);
            let Some(session) = judgement.session else {
                continue;
            };
            if let Some(outcome) = judgement.revalidated {
                report.revalidated += 1;
                if let Some(at) = outcome {
                    validated.insert(session.uid().unwrap_or_default(), at);
                }
            }
            if let Some(ending) = judgement.ending {
                endings.push(*ending);
            }
            if let Some(requeue) = judgement.live {
                report.live_sessions += 1;
                for at in requeue {
                    report.requeue_at(at);
                }
                at_opt(&mut next_expiry, judgement.expires);
            }
            judged.push(session);
        }
        let ending = endings.len();
        self.end_sessions(endings, now, &mut report).await;
        let ended_in = started.elapsed();

        let ended: HashSet<String> = report
            .removed_of(ObjectKind::Session)
            .map(|r| r.name.clone())
            .collect();
        let by_name: BTreeMap<String, Arc<Session>> = judged
            .iter()
            .filter(|s| !ended.contains(s.name_any().as_str()))
            .map(|s| (s.name_any(), Arc::clone(s)))
            .collect();
        self.sweep(watches, &by_name, &ended, now, &mut report)
            .await?;
        self.update_conditions(&mappings, &views, now, &mut report)
            .await;
        // A mapping not judged yet (the server's check that it may bind its roles runs beside
        // the reconciler) has no condition written; nothing else would bring the next pass
        // before the resync, so one comes back for it shortly.
        if views
            .iter()
            .any(|v| matches!(v.state, MappingState::Unchecked(_)))
        {
            report.requeue_at(now + UNCHECKED_RETRY);
        }
        let besides_expiries = report.next_requeue;
        if let Some(at) = next_expiry {
            report.requeue_at(at);
        }

        let live: HashSet<String> = by_name.values().filter_map(|s| s.uid()).collect();
        validated.retain(|uid, _| live.contains(uid));
        {
            let mut state = self.state();
            state.validated = validated;
            state.mappings_seen = Some(fingerprint);
            state.revalidate_all = false;
        }
        // Where a pass's time goes (the expiry lag is mostly waiting for a pass, then this).
        debug!(
            sessions = sessions.len(),
            ending,
            removed = report.removed.len(),
            live = report.live_sessions,
            revalidated = report.revalidated,
            judged_ms = judged_in.as_secs_f64() * 1e3,
            ended_ms = (ended_in - judged_in).as_secs_f64() * 1e3,
            swept_ms = (started.elapsed() - ended_in).as_secs_f64() * 1e3,
            next = ?report.next_requeue,
            "reconcile pass done"
        );
        Ok((report, besides_expiries))
    }
}

/// How soon a pass comes back while a GrantMapping's state is not known yet.
const UNCHECKED_RETRY: SignedDuration = SignedDuration::from_secs(10);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{GrantMappingSpec, NamespacedGrant};

    fn reconciler_settings() -> ReconcilerSettings {
        ReconcilerSettings::new("tka-system", "test")
    }

    #[test]
    fn a_judgement_is_small_whatever_the_session_holds() {
        // A pass holds one judgement per session at once (10,000 at scale): the session to end
        // is boxed, so a judgement stays a few words, not a Session's size.
        assert!(
            std::mem::size_of::<Judgement>() <= 128,
            "Judgement is {} bytes",
            std::mem::size_of::<Judgement>()
        );
        assert!(std::mem::size_of::<Session>() > std::mem::size_of::<Judgement>());
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
