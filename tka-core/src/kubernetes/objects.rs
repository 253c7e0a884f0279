//! The Kubernetes objects of a session and the operations shared by the issuer and the
//! reconciler: building the ServiceAccount and bindings (labelled, owned by the Session, one
//! subject each), and ending a session: ServiceAccount first (its tokens die), then the bindings,
//! then the Session, then its finalizer. Every delete carries a UID precondition and treats
//! "already gone" as done, so two actors ending the same session are harmless.
//!
//! Only objects that carry tka's labels are ever deleted: found by label, or (ending a session)
//! read by the names the session's own name and revisions give and then confirmed by label. A
//! Session's status is a hint, never a licence to delete what it names.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Debug;

use futures::{StreamExt as _, stream};

use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_openapi::api::rbac::v1::{ClusterRoleBinding, RoleBinding, RoleRef, Subject};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, ObjectMeta, OwnerReference, Time};
use kube::api::{DeleteParams, ListParams, PostParams, Preconditions};
use kube::{Api, Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;

use super::checkpoint::{Checkpoint, Checkpoints};
use super::error::{is_conflict, is_not_found};
use super::session::{BindingKind, Session, SessionPhase, SessionStatus};
use super::{MANAGED_BY, MANAGED_BY_LABEL, NODE_LABEL, REVISION_LABEL, SESSION_LABEL, USER_LABEL};
use crate::domain::RoleName;
use crate::naming::{self, NameSuffix};
use crate::reconciler::{ObjectKind, Removal, RemovalReason};

/// How many times a read-modify-write on one object is retried on a conflict.
pub(crate) const WRITE_ATTEMPTS: usize = 5;

/// The APIs of the objects tka manages.
#[derive(Clone)]
pub(crate) struct Apis {
    pub(crate) namespace: String,
    pub(crate) sessions: Api<Session>,
    pub(crate) service_accounts: Api<ServiceAccount>,
    pub(crate) cluster_role_bindings: Api<ClusterRoleBinding>,
    pub(crate) all_role_bindings: Api<RoleBinding>,
    client: Client,
}

impl Apis {
    pub(crate) fn new(client: Client, namespace: &str) -> Self {
        Self {
            namespace: namespace.to_owned(),
            sessions: Api::all(client.clone()),
            service_accounts: Api::namespaced(client.clone(), namespace),
            cluster_role_bindings: Api::all(client.clone()),
            all_role_bindings: Api::all(client.clone()),
            client,
        }
    }

    pub(crate) fn role_bindings(&self, namespace: &str) -> Api<RoleBinding> {
        Api::namespaced(self.client.clone(), namespace)
    }

    pub(crate) fn client(&self) -> &Client {
        &self.client
    }
}

/// A kind of object tka makes for a session and finds again only by its labels: the
/// ServiceAccount and the two kinds of binding.
pub(crate) trait Labelled: Resource + Clone + DeserializeOwned + Debug + Sized {
    /// The kind, as removals report it.
    const KIND: ObjectKind;
    /// The API that lists objects of this kind wherever tka may have made them.
    fn listing(apis: &Apis) -> &Api<Self>;
    /// The API that deletes `object` (a namespaced one is deleted in its own namespace).
    fn deleting(apis: &Apis, object: &Self) -> Api<Self>;
}

impl Labelled for ServiceAccount {
    const KIND: ObjectKind = ObjectKind::ServiceAccount;
    fn listing(apis: &Apis) -> &Api<Self> {
        &apis.service_accounts
    }
    fn deleting(apis: &Apis, _: &Self) -> Api<Self> {
        apis.service_accounts.clone()
    }
}

impl Labelled for ClusterRoleBinding {
    const KIND: ObjectKind = ObjectKind::ClusterRoleBinding;
    fn listing(apis: &Apis) -> &Api<Self> {
        &apis.cluster_role_bindings
    }
    fn deleting(apis: &Apis, _: &Self) -> Api<Self> {
        apis.cluster_role_bindings.clone()
    }
}

impl Labelled for RoleBinding {
    const KIND: ObjectKind = ObjectKind::RoleBinding;
    fn listing(apis: &Apis) -> &Api<Self> {
        &apis.all_role_bindings
    }
    fn deleting(apis: &Apis, object: &Self) -> Api<Self> {
        apis.role_bindings(&object.namespace().unwrap_or_default())
    }
}

/// Lists the objects of kind `K` that `selector` picks.
pub(crate) async fn list_labelled<K: Labelled>(
    apis: &Apis,
    selector: &str,
) -> Result<Vec<K>, kube::Error> {
    list(K::listing(apis), selector).await
}

/// Deletes each of `objects` (found by label) that `condemned` picks, each with a UID
/// precondition, several at once. Returns what this call removed; one already gone or replaced is
/// not counted. One failing delete does not stop the others; the first error other than "already
/// gone" is returned once all were tried.
pub(crate) async fn delete_listed<K: Labelled>(
    apis: &Apis,
    objects: Vec<K>,
    condemned: impl Fn(&K) -> bool,
    reason: &RemovalReason,
) -> Result<Vec<Removal>, kube::Error> {
    let outcomes: Vec<Result<Option<Removal>, kube::Error>> =
        stream::iter(objects.into_iter().filter(|o| condemned(o)))
            .map(|object| async move {
                let name = object.name_any();
                let uid = object.uid().unwrap_or_default();
                let deleted = delete_uid(&K::deleting(apis, &object), &name, &uid).await?;
                Ok(deleted.then(|| removal(K::KIND, object.namespace(), name, reason)))
            })
            .buffered(SESSION_REQUESTS_IN_FLIGHT)
            .collect()
            .await;
    let mut removed = Vec::new();
    let mut failed = None;
    for outcome in outcomes {
        match outcome {
            Ok(r) => removed.extend(r),
            Err(e) => {
                failed.get_or_insert(e);
            }
        }
    }
    match failed {
        Some(e) => Err(e),
        None => Ok(removed),
    }
}

/// Deletes every object of kind `K` labelled as `selector` says: [`list_labelled`], then
/// [`delete_listed`] on all of them.
pub(crate) async fn delete_labelled<K: Labelled>(
    apis: &Apis,
    selector: &str,
    reason: &RemovalReason,
) -> Result<Vec<Removal>, kube::Error> {
    let objects = list_labelled::<K>(apis, selector).await?;
    delete_listed(apis, objects, |_| true, reason).await
}

/// `managed-by=tka`.
pub(crate) fn managed_selector() -> String {
    format!("{MANAGED_BY_LABEL}={MANAGED_BY}")
}

/// Selects a session's children.
pub(crate) fn session_selector(session: &str) -> String {
    format!("{MANAGED_BY_LABEL}={MANAGED_BY},{SESSION_LABEL}={session}")
}

/// The labels of a Session: managed-by, node and user digests.
pub(crate) fn session_labels(node_label: &str, user_label: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (MANAGED_BY_LABEL.to_owned(), MANAGED_BY.to_owned()),
        (NODE_LABEL.to_owned(), node_label.to_owned()),
        (USER_LABEL.to_owned(), user_label.to_owned()),
    ])
}

/// The labels of a session's child: the session's labels plus `tka.dev/session`.
pub(crate) fn child_labels(session: &Session) -> BTreeMap<String, String> {
    let mut labels: BTreeMap<String, String> = session
        .labels()
        .iter()
        .filter(|(k, _)| [MANAGED_BY_LABEL, NODE_LABEL, USER_LABEL].contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    labels.insert(MANAGED_BY_LABEL.to_owned(), MANAGED_BY.to_owned());
    labels.insert(SESSION_LABEL.to_owned(), session.name_any());
    labels
}

/// The owner reference to a session (controller, no blocking of the owner's deletion).
pub(crate) fn owner_reference(session: &Session) -> OwnerReference {
    OwnerReference {
        api_version: Session::api_version(&()).into_owned(),
        kind: Session::kind(&()).into_owned(),
        name: session.name_any(),
        uid: session.uid().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(false),
    }
}

/// The UID of the Session that owns `object`, if a Session does.
pub(crate) fn owner_uid<K: Resource>(object: &K) -> Option<&str> {
    let kind = Session::kind(&());
    object
        .meta()
        .owner_references
        .as_deref()
        .unwrap_or_default()
        .iter()
        .find(|o| o.kind == kind && o.api_version == Session::api_version(&()))
        .map(|o| o.uid.as_str())
}

/// The ServiceAccount of a session.
pub(crate) fn service_account(session: &Session, namespace: &str) -> ServiceAccount {
    ServiceAccount {
        metadata: ObjectMeta {
            name: Some(session.name_any()),
            namespace: Some(namespace.to_owned()),
            labels: Some(child_labels(session)),
            owner_references: Some(vec![owner_reference(session)]),
            ..ObjectMeta::default()
        },
        automount_service_account_token: Some(false),
        ..ServiceAccount::default()
    }
}

fn subject(session: &Session, namespace: &str) -> Subject {
    Subject {
        kind: "ServiceAccount".to_owned(),
        name: session.name_any(),
        namespace: Some(namespace.to_owned()),
        api_group: None,
    }
}

fn role_ref(cluster_role: &str) -> RoleRef {
    RoleRef {
        api_group: Some("rbac.authorization.k8s.io".to_owned()),
        kind: "ClusterRole".to_owned(),
        name: cluster_role.to_owned(),
    }
}

fn binding_meta(
    session: &Session,
    name: &str,
    namespace: Option<&str>,
    revision: &str,
) -> ObjectMeta {
    let mut labels = child_labels(session);
    labels.insert(REVISION_LABEL.to_owned(), revision.to_owned());
    ObjectMeta {
        name: Some(name.to_owned()),
        namespace: namespace.map(str::to_owned),
        labels: Some(labels),
        owner_references: Some(vec![owner_reference(session)]),
        ..ObjectMeta::default()
    }
}

/// A ClusterRoleBinding of `cluster_role` to the session's ServiceAccount, and nothing else.
pub(crate) fn cluster_role_binding(
    session: &Session,
    name: &str,
    revision: &str,
    cluster_role: &str,
    sa_namespace: &str,
) -> ClusterRoleBinding {
    ClusterRoleBinding {
        metadata: binding_meta(session, name, None, revision),
        role_ref: role_ref(cluster_role),
        subjects: Some(vec![subject(session, sa_namespace)]),
    }
}

/// A RoleBinding of `cluster_role` in `namespace` to the session's ServiceAccount, and nothing
/// else.
pub(crate) fn role_binding(
    session: &Session,
    name: &str,
    revision: &str,
    cluster_role: &str,
    namespace: &str,
    sa_namespace: &str,
) -> RoleBinding {
    RoleBinding {
        metadata: binding_meta(session, name, Some(namespace), revision),
        role_ref: role_ref(cluster_role),
        subjects: Some(vec![subject(session, sa_namespace)]),
    }
}

/// Whether an existing binding is exactly the one tka would have made (same owner, labels,
/// roleRef and single subject): only then may a retry of the same request use it.
pub(crate) fn is_exact_binding(
    meta: &ObjectMeta,
    existing_role_ref: &RoleRef,
    existing_subjects: Option<&Vec<Subject>>,
    wanted_meta: &ObjectMeta,
    wanted_role_ref: &RoleRef,
    wanted_subjects: Option<&Vec<Subject>>,
) -> bool {
    let owner = |m: &ObjectMeta| {
        m.owner_references
            .as_deref()
            .unwrap_or_default()
            .iter()
            .map(|o| o.uid.clone())
            .collect::<Vec<_>>()
    };
    let label = |m: &ObjectMeta, k: &str| m.labels.as_ref().and_then(|l| l.get(k).cloned());
    owner(meta) == owner(wanted_meta)
        && label(meta, SESSION_LABEL) == label(wanted_meta, SESSION_LABEL)
        && label(meta, REVISION_LABEL) == label(wanted_meta, REVISION_LABEL)
        && existing_role_ref == wanted_role_ref
        && existing_subjects == wanted_subjects
}

/// Deletes `name` if it still has `uid`. `Ok(true)` when this call deleted it, `Ok(false)` when
/// it was already gone or is now another object.
pub(crate) async fn delete_uid<K>(api: &Api<K>, name: &str, uid: &str) -> Result<bool, kube::Error>
where
    K: Resource + Clone + DeserializeOwned + Debug,
{
    Ok(delete_uid_answer(api, name, uid).await?.is_some())
}

/// Deletes `name` if it still has `uid`: `None` when it was already gone or is now another
/// object; `Some(held)` when this call deleted it, with the object as the API server left it
/// when a finalizer holds it back (`None` once it is gone).
async fn delete_uid_answer<K>(
    api: &Api<K>,
    name: &str,
    uid: &str,
) -> Result<Option<Option<K>>, kube::Error>
where
    K: Resource + Clone + DeserializeOwned + Debug,
{
    let params = DeleteParams {
        preconditions: Some(Preconditions {
            uid: Some(uid.to_owned()),
            resource_version: None,
        }),
        ..DeleteParams::default()
    };
    match api.delete(name, &params).await {
        Ok(answer) => Ok(Some(answer.left())),
        Err(e) if is_not_found(&e) || is_conflict(&e) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Lists objects by label selector.
pub(crate) async fn list<K>(api: &Api<K>, selector: &str) -> Result<Vec<K>, kube::Error>
where
    K: Resource + Clone + DeserializeOwned + Debug,
{
    Ok(api
        .list(&ListParams::default().labels(selector))
        .await?
        .items)
}

/// Replaces a session's status through a read-modify-write with resourceVersion preconditions.
/// `change` returns false to leave the status alone. Returns the session as written, or `None`
/// if it is gone or is now another object.
pub(crate) async fn update_status(
    api: &Api<Session>,
    session: &Session,
    mut change: impl FnMut(&Session, &mut SessionStatus) -> bool,
) -> Result<Option<Session>, kube::Error> {
    let name = session.name_any();
    let uid = session.uid();
    let mut current = session.clone();
    for attempt in 0..WRITE_ATTEMPTS {
        if attempt > 0 {
            current = match api.get_opt(&name).await? {
                Some(s) if s.uid() == uid => s,
                _ => return Ok(None),
            };
        }
        let mut status = current.status.clone().unwrap_or_default();
        if !change(&current, &mut status) {
            return Ok(Some(current));
        }
        let mut next = current.clone();
        next.status = Some(status);
        match api
            .replace_status(&name, &PostParams::default(), &next)
            .await
        {
            Ok(written) => return Ok(Some(written)),
            Err(e) if is_conflict(&e) => continue,
            Err(e) if is_not_found(&e) => return Ok(None),
            Err(e) => return Err(e),
        }
    }
    Err(conflict_error(&name))
}

fn conflict_error(name: &str) -> kube::Error {
    kube::Error::Api(
        kube::core::Status {
            code: 409,
            reason: "Conflict".to_owned(),
            message: format!("session {name} kept changing"),
            ..kube::core::Status::default()
        }
        .boxed(),
    )
}

/// Deletes session `name` if it still has `uid`: whether this call deleted it (as
/// [`delete_uid`]), and the session as the API server left it when a finalizer holds it back.
async fn delete_session(
    api: &Api<Session>,
    name: &str,
    uid: &str,
) -> Result<(bool, Option<Session>), kube::Error> {
    Ok(match delete_uid_answer(api, name, uid).await? {
        Some(held) => (true, held),
        None => (false, None),
    })
}

/// Removes tka's finalizer from a session (if it is still the same object), with
/// resourceVersion preconditions. `known` is the session as last seen (the answer to its
/// delete), which spares a read; without it, or when it is out of date, the session is read.
pub(crate) async fn remove_finalizer(
    api: &Api<Session>,
    name: &str,
    uid: &str,
    mut known: Option<Session>,
) -> Result<(), kube::Error> {
    for _ in 0..WRITE_ATTEMPTS {
        let current = match known.take() {
            Some(seen) => Some(seen),
            None => api.get_opt(name).await?,
        };
        let Some(mut current) = current else {
            return Ok(());
        };
        if current.uid().as_deref() != Some(uid) {
            return Ok(());
        }
        let before = current.finalizers().len();
        current.finalizers_mut().retain(|f| f != super::FINALIZER);
        if current.finalizers().len() == before {
            return Ok(());
        }
        match api.replace(name, &PostParams::default(), &current).await {
            Ok(_) => return Ok(()),
            Err(e) if is_conflict(&e) => continue,
            Err(e) if is_not_found(&e) => return Ok(()),
            Err(e) => return Err(e),
        }
    }
    Err(conflict_error(name))
}

/// A `Ready=False` condition recording why a session ended.
pub(crate) fn ended_condition(
    reason: &RemovalReason,
    now: jiff::Timestamp,
    generation: Option<i64>,
) -> Condition {
    let (reason_word, message) = match reason {
        RemovalReason::Expired => ("Expired", "the session passed its expiresAt".to_owned()),
        RemovalReason::Revoked => ("Revoked", "the session was revoked".to_owned()),
        RemovalReason::HalfMade => (
            "HalfMade",
            "the session was never completed or lost its ServiceAccount".to_owned(),
        ),
        RemovalReason::Deleted => ("Deleted", "the session was deleted".to_owned()),
        RemovalReason::Orphan | RemovalReason::StaleRevision => {
            ("Revoked", "the session was revoked".to_owned())
        }
        RemovalReason::GrantWithdrawn(why) => ("GrantWithdrawn", why.clone()),
    };
    Condition {
        type_: "Ready".to_owned(),
        status: "False".to_owned(),
        reason: reason_word.to_owned(),
        message,
        last_transition_time: Time(now),
        observed_generation: generation,
    }
}

/// How many requests ending one session makes at once (its reads, then its bindings' deletes).
const SESSION_REQUESTS_IN_FLIGHT: usize = 8;

/// What a session owns, found by name and confirmed by its labels.
struct Children {
    service_accounts: Vec<ServiceAccount>,
    cluster_role_bindings: Vec<ClusterRoleBinding>,
    role_bindings: Vec<RoleBinding>,
}

/// Whether `object` carries the labels tka gives the children of session `name`.
fn labelled_for<K: Resource>(object: &K, name: &str) -> bool {
    let labels = object.labels();
    labels.get(MANAGED_BY_LABEL).map(String::as_str) == Some(MANAGED_BY)
        && labels.get(SESSION_LABEL).map(String::as_str) == Some(name)
}

/// The names of the bindings `session` may own: those its spec's revision plans (the issuer's
/// naming, in the same order) and those its status records, limited to names under the
/// session's own (`<session>.`), with the namespace of a RoleBinding.
fn binding_names(session: &Session) -> (Vec<String>, Vec<(String, String)>) {
    let name = session.name_any();
    let mut cluster = BTreeSet::new();
    let mut namespaced = BTreeSet::new();
    let planned = (
        session.session_name(),
        RoleName::new(session.spec.role.as_str()).ok(),
        NameSuffix::new(session.spec.revision.as_str()).ok(),
    );
    if let (Some(session_name), Some(role), Some(revision)) = planned {
        let plan = session
            .spec
            .cluster_roles
            .iter()
            .map(|_| None)
            .chain(session.spec.namespaced.iter().map(|b| Some(&b.namespace)));
        for (index, namespace) in plan.enumerate() {
            let binding = naming::binding_name(&session_name, &role, &revision, index);
            match namespace {
                None => cluster.insert(binding),
                Some(ns) => namespaced.insert((ns.clone(), binding)),
            };
        }
    }
    let prefix = format!("{name}.");
    let recorded = session.status.iter().flat_map(|s| s.bindings.iter());
    for binding in recorded.filter(|b| b.name.starts_with(&prefix)) {
        match (binding.kind, &binding.namespace) {
            (BindingKind::ClusterRoleBinding, _) => {
                cluster.insert(binding.name.clone());
            }
            (BindingKind::RoleBinding, Some(ns)) => {
                namespaced.insert((ns.clone(), binding.name.clone()));
            }
            (BindingKind::RoleBinding, None) => {}
        }
    }
    (
        cluster.into_iter().collect(),
        namespaced.into_iter().collect(),
    )
}

/// Reads `name` through `api` and keeps it if it is labelled as a child of `session`.
async fn get_child<K>(api: Api<K>, name: String, session: &str) -> Result<Option<K>, kube::Error>
where
    K: Resource + Clone + DeserializeOwned + Debug,
{
    Ok(api
        .get_opt(&name)
        .await?
        .filter(|o| labelled_for(o, session)))
}

/// Reads each named object (bounded concurrency), keeping those labelled for `session`.
async fn get_children<K>(reads: Vec<(Api<K>, String)>, session: &str) -> Result<Vec<K>, kube::Error>
where
    K: Resource + Clone + DeserializeOwned + Debug,
{
    let found: Vec<Result<Option<K>, kube::Error>> = stream::iter(reads)
        .map(|(api, name)| get_child(api, name, session))
        .buffered(SESSION_REQUESTS_IN_FLIGHT)
        .collect()
        .await;
    let mut kept = Vec::new();
    for object in found {
        kept.extend(object?);
    }
    Ok(kept)
}

/// Finds what `session` owns with consistent reads by name, all at once: its ServiceAccount (named
/// as the session) and the bindings of [`binding_names`], each confirmed by the session's label.
/// A labelled list would cost a wait for the API server's watch cache to catch up (tens of
/// milliseconds) and a scan of every object of the kind; anything labelled for the session under
/// another name (a binding of an older revision whose removal failed) is the orphan sweep's.
async fn find_children(apis: &Apis, session: &Session) -> Result<Children, kube::Error> {
    let name = session.name_any();
    let (cluster, namespaced) = binding_names(session);
    let service_account = get_child(apis.service_accounts.clone(), name.clone(), &name);
    let cluster_role_bindings = get_children(
        cluster
            .into_iter()
            .map(|b| (apis.cluster_role_bindings.clone(), b))
            .collect(),
        &name,
    );
    let role_bindings = get_children(
        namespaced
            .into_iter()
            .map(|(ns, b)| (apis.role_bindings(&ns), b))
            .collect(),
        &name,
    );
    let (service_account, cluster_role_bindings, role_bindings) =
        futures::join!(service_account, cluster_role_bindings, role_bindings);
    Ok(Children {
        service_accounts: service_account?.into_iter().collect(),
        cluster_role_bindings: cluster_role_bindings?,
        role_bindings: role_bindings?,
    })
}

/// Marks a session ended (phase and `Ready=False` condition). `None` when it is gone, is now
/// another object, or (for an expiry) its spec changed since `session` was read: an expiry was
/// decided on one `expiresAt` and never applies to another (a login may have just extended it,
/// on a replica whose clock is behind this one's), so the session is left for the next pass.
async fn mark_ended(
    apis: &Apis,
    session: &Session,
    phase: SessionPhase,
    now: jiff::Timestamp,
    reason: &RemovalReason,
) -> Result<Option<Session>, kube::Error> {
    let generation = session.metadata.generation;
    let decided_on = session.spec.expires_at.clone();
    let mut changed = false;
    let marked = update_status(&apis.sessions, session, |current, status| {
        if phase == SessionPhase::Expired
            && (current.metadata.generation != generation || current.spec.expires_at != decided_on)
        {
            changed = true;
            return false;
        }
        status.phase = Some(phase);
        status.conditions.retain(|c| c.type_ != "Ready");
        status
            .conditions
            .push(ended_condition(reason, now, generation));
        true
    })
    .await?;
    if changed {
        tracing::info!(session = %session.name_any(), "the session changed while it was being ended as expired; left for the next pass");
        return Ok(None);
    }
    Ok(marked)
}

/// Ends a session: marks it (when `mark` is given and it is not being deleted), deletes its
/// ServiceAccount, then its bindings, then the Session itself, then removes the finalizer.
/// Returns what this call removed, in order.
///
/// The order is what makes a crash at any point harmless: the ServiceAccount goes first (its
/// tokens die, and the bindings name nothing), the Session last, so until everything it owns is
/// gone the Session (marked, or being deleted) is there for the reconciler to end again.
/// Reads run together with the mark and the bindings' deletes together after the
/// ServiceAccount's, so a session costs about five round trips whatever it owns; a binding that
/// fails to go does not stop the others, and the Session stays for the next attempt.
pub(crate) async fn end_session(
    apis: &Apis,
    session: &Session,
    mark: Option<(SessionPhase, jiff::Timestamp)>,
    reason: &RemovalReason,
    checkpoints: &Checkpoints,
) -> Result<Vec<Removal>, kube::Error> {
    let name = session.name_any();
    let Some(uid) = session.uid() else {
        return Ok(Vec::new());
    };
    let mut removed = Vec::new();

    // `Some(wrote)`: go on, `wrote` saying whether a mark was written now.
    let marking = async {
        match mark {
            Some((phase, now)) if !session.is_deleting() && session.phase() != Some(phase) => {
                mark_ended(apis, session, phase, now, reason)
                    .await
                    .map(|m| m.map(|_| true))
            }
            _ => Ok(Some(false)),
        }
    };
    // Only reads run beside the mark: nothing is deleted before the mark is written.
    let (marked, children) = futures::join!(marking, find_children(apis, session));
    let Some(wrote_mark) = marked? else {
        // Gone, another object by now (its children are the sweep's business), or extended
        // under an expiry (the next pass judges it again).
        return Ok(removed);
    };
    if wrote_mark {
        checkpoints.reached(Checkpoint::EndMarked, &name);
    }
    let children = children?;

    removed.extend(delete_listed(apis, children.service_accounts, |_| true, reason).await?);
    checkpoints.reached(Checkpoint::EndServiceAccountDeleted, &name);
    let (cluster, namespaced) = futures::join!(
        delete_listed(apis, children.cluster_role_bindings, |_| true, reason),
        delete_listed(apis, children.role_bindings, |_| true, reason),
    );
    let (cluster, namespaced) = (cluster?, namespaced?);
    removed.extend(cluster);
    removed.extend(namespaced);
    checkpoints.reached(Checkpoint::EndBindingsDeleted, &name);
    let (deleted, remaining) = delete_session(&apis.sessions, &name, &uid).await?;
    checkpoints.reached(Checkpoint::EndSessionDeleted, &name);
    remove_finalizer(&apis.sessions, &name, &uid, remaining).await?;
    if deleted || session.is_deleting() {
        removed.push(removal(ObjectKind::Session, None, name, reason));
    }
    Ok(removed)
}

/// A removal record.
pub(crate) fn removal(
    kind: ObjectKind,
    namespace: Option<String>,
    name: String,
    reason: &RemovalReason,
) -> Removal {
    Removal {
        kind,
        namespace,
        name,
        reason: reason.clone(),
    }
}
