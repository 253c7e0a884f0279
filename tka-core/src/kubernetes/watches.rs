//! [`ClusterWatches`]: the one watch per resource a server keeps (Sessions, GrantMappings,
//! ClusterRoles, and the metadata of tka's labelled ServiceAccounts, ClusterRoleBindings and
//! RoleBindings), each a kube-rs reflector feeding a [`Store`], made once in the wiring and handed
//! to whoever reads it (the GrantMapping feed, the reconciler's passes and orphan sweep, the
//! session count, and the proxy's lookup of a device's live session,
//! [`SessionStore::live_for_node`]).
//!
//! The stores keep only what the server reads: every object loses its `managedFields` and
//! annotations before it is stored (nothing in tka reads an annotation; the last-applied one alone
//! repeats a whole object), and the ServiceAccounts and bindings are watched as metadata only
//! (`PartialObjectMeta`), selected by tka's `managed-by` label (the ServiceAccounts in the server's
//! namespace only), and kept as a [`Child`] each: the few strings the reconciler reads, about a
//! quarter of the memory of the metadata object (whose `ObjectMeta`, label map node, owner
//! reference and reflector key come to some 2 KB per object; with two children per session,
//! that was most of a server's memory at 10,000 sessions).
//!
//! It owns the reflectors and tells readers that something changed ([`Revision`], through a
//! `tokio::sync::watch` channel, which coalesces a burst into one wake). It must not decide
//! anything: no policy, no removal, no write to the API server. What a reader does with a change
//! (republish the mappings, schedule a reconcile pass) is the reader's business.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::hash::Hash;
use std::sync::{Arc, PoisonError, RwLock};

use futures::{Stream, StreamExt};
use jiff::Timestamp;
use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, RoleBinding};
use kube::core::PartialObjectMeta;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use tokio::sync::watch;

use super::objects::{managed_selector, owner_uid};
use super::session::Session;
use super::{NODE_LABEL, REVISION_LABEL, SESSION_LABEL};
use crate::domain::NodeId;
use crate::naming::node_label;
use crate::policy::GrantMapping;

/// How far a watched resource has come: how many full lists (initial and re-lists) and how many
/// changes (an object applied or deleted outside a list) the reflector has delivered. Readers
/// compare revisions to tell what happened since they last looked.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Revision {
    /// Full lists delivered (0 until the first one is in the store).
    pub lists: u64,
    /// Objects applied or deleted after a list.
    pub changes: u64,
}

impl Revision {
    /// Whether the store holds a full list.
    pub fn is_listed(&self) -> bool {
        self.lists > 0
    }
}

/// One watched resource: the reflector's store and the revision of what it holds.
pub struct Watched<K>
where
    K: Resource + Clone + 'static,
    K::DynamicType: Eq + Hash + Clone,
{
    store: Store<K>,
    revision: watch::Receiver<Revision>,
}

impl<K> Clone for Watched<K>
where
    K: Resource + Clone + 'static,
    K::DynamicType: Eq + Hash + Clone,
{
    fn clone(&self) -> Self {
        Self {
            store: self.store.clone(),
            revision: self.revision.clone(),
        }
    }
}

impl<K> fmt::Debug for Watched<K>
where
    K: Resource + Clone + 'static,
    K::DynamicType: Eq + Hash + Clone,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Watched")
            .field("revision", &*self.revision.borrow())
            .finish_non_exhaustive()
    }
}

impl<K> Watched<K>
where
    K: Resource + Clone + 'static,
    K::DynamicType: Eq + Hash + Clone,
{
    /// The reflector's store (read it with `state()` or `get()`).
    pub fn store(&self) -> &Store<K> {
        &self.store
    }

    /// Every object the store holds now.
    pub fn state(&self) -> Vec<Arc<K>> {
        self.store.state()
    }

    /// How far the watch has come.
    pub fn revision(&self) -> Revision {
        *self.revision.borrow()
    }

    /// Whether the store holds a full list.
    pub fn is_listed(&self) -> bool {
        self.revision().is_listed()
    }

    /// A receiver that wakes (`changed()`) after each list and change; a burst wakes it once.
    /// `changed()` fails once the watch has stopped (the driver ended).
    pub fn subscribe(&self) -> watch::Receiver<Revision> {
        let mut receiver = self.revision.clone();
        receiver.mark_changed();
        receiver
    }
}

/// The watched Sessions, with the lookups the server and the proxy need: an index from each
/// device's node label to its Sessions' names, kept with the store, so finding a device's session
/// (on every proxied request, and at each login) does not scan every Session.
#[derive(Debug, Clone)]
pub struct SessionStore(Watched<Session>, NodeIndex);

/// Node label → the names of the Sessions carrying it; updated from the same watch events as the
/// store, before readers are told of them.
#[derive(Debug, Clone, Default)]
struct NodeIndex(Arc<RwLock<NodeNames>>);

#[derive(Debug, Default)]
struct NodeNames {
    now: Names,
    /// A (re-)list being gathered: it replaces `now` when complete, as the store's does.
    listing: Option<Names>,
}

/// Node label → Session names, and back (a Session's labels may change).
#[derive(Debug, Default)]
struct Names {
    by_node: HashMap<String, Vec<String>>,
    node_of: HashMap<String, String>,
}

impl Names {
    fn set(&mut self, session: &Session) {
        self.unset(&session.name_any());
        if let Some((node, name)) = node_of(session) {
            self.by_node
                .entry(node.clone())
                .or_default()
                .push(name.clone());
            self.node_of.insert(name, node);
        }
    }

    fn unset(&mut self, name: &str) {
        let Some(node) = self.node_of.remove(name) else {
            return;
        };
        if let Some(names) = self.by_node.get_mut(&node) {
            names.retain(|n| n != name);
            if names.is_empty() {
                self.by_node.remove(&node);
            }
        }
    }
}

fn node_of(session: &Session) -> Option<(String, String)> {
    let label = session.labels().get(NODE_LABEL)?;
    Some((label.clone(), session.name_any()))
}

impl NodeIndex {
    fn apply(&self, event: &watcher::Event<Session>) {
        let mut index = self.0.write().unwrap_or_else(PoisonError::into_inner);
        match event {
            watcher::Event::Init => index.listing = Some(Names::default()),
            watcher::Event::InitApply(session) => {
                index
                    .listing
                    .get_or_insert_with(Names::default)
                    .set(session);
            }
            watcher::Event::InitDone => index.now = index.listing.take().unwrap_or_default(),
            watcher::Event::Apply(session) => index.now.set(session),
            watcher::Event::Delete(session) => index.now.unset(&session.name_any()),
        }
    }

    fn names(&self, label: &str) -> Vec<String> {
        self.0
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .now
            .by_node
            .get(label)
            .cloned()
            .unwrap_or_default()
    }
}

impl SessionStore {
    /// The underlying watch (store and revision).
    pub fn watched(&self) -> &Watched<Session> {
        &self.0
    }

    /// The device's live session in this cluster (the store holds one cluster's Sessions): the
    /// Session labelled with the device's node hash whose recorded node is `node`, not over at
    /// `now`. `None` before the first list too; a caller that must be sure asks the API server.
    pub fn live_for_node(&self, node: &NodeId, now: Timestamp) -> Option<Arc<Session>> {
        self.of_node(node).into_iter().find(|s| !s.is_over(now))
    }

    /// Every Session of the device, live or not: labelled with the device's node hash and
    /// recording `node` in its spec (the label alone is never trusted).
    pub fn of_node(&self, node: &NodeId) -> Vec<Arc<Session>> {
        let hash = node_label(node);
        self.1
            .names(&hash)
            .into_iter()
            .filter_map(|name| self.0.store.get(&ObjectRef::new(&name)))
            .filter(|s| {
                s.labels().get(NODE_LABEL) == Some(&hash)
                    && s.spec.identity.node_id == node.as_str()
            })
            .collect()
    }

    /// Waits, at most `within`, until the store holds the Session with this `uid`, and says
    /// whether it does. A watch delivers one resource's changes in the order the API server
    /// committed them, so once the store holds an object it holds every Session committed
    /// before it: a login that sees its own new Session here sees any other made before it.
    pub async fn has_seen(&self, uid: &str, within: std::time::Duration) -> bool {
        let mut changes = self.0.revision.clone();
        let seen = |store: &Store<Session>| {
            store
                .find(|s| s.metadata.uid.as_deref() == Some(uid))
                .is_some()
        };
        let wait = async {
            loop {
                if self.0.is_listed() && seen(&self.0.store) {
                    return true;
                }
                if changes.changed().await.is_err() {
                    return false;
                }
            }
        };
        tokio::time::timeout(within, wait).await.unwrap_or(false)
    }

    /// How many sessions are live at `now`; `None` before the first list.
    pub fn live_count(&self, now: Timestamp) -> Option<usize> {
        if !self.0.is_listed() {
            return None;
        }
        Some(self.0.state().iter().filter(|s| !s.is_over(now)).count())
    }
}

/// The metadata of one of tka's labelled objects (a ServiceAccount or a binding), as watched.
pub type Meta<K> = PartialObjectMeta<K>;

/// The server's watches: one reflector per resource, shared by every reader.
#[derive(Debug, Clone)]
pub struct ClusterWatches {
    /// Every Session.
    pub sessions: SessionStore,
    /// Every GrantMapping.
    pub grant_mappings: Watched<GrantMapping>,
    /// Every ClusterRole (for the read-only judgement of `clusterRoles`, DESIGN §4.3).
    pub cluster_roles: Watched<ClusterRole>,
    /// The ServiceAccounts labelled `managed-by=tka` in the server's namespace.
    pub service_accounts: Children,
    /// The ClusterRoleBindings labelled `managed-by=tka`.
    pub cluster_role_bindings: Children,
    /// The RoleBindings labelled `managed-by=tka`, in every namespace.
    pub role_bindings: Children,
}

/// What the server keeps of one of its labelled ServiceAccounts or bindings: enough to judge it
/// (whose it is, which revision) and to delete it with UID and resourceVersion preconditions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Child {
    /// Its namespace (ServiceAccounts and RoleBindings).
    pub namespace: Option<Box<str>>,
    /// Its name.
    pub name: Box<str>,
    /// Its UID.
    pub uid: Box<str>,
    /// Its resourceVersion when last seen.
    pub resource_version: Option<Box<str>>,
    /// Its `tka.dev/session` label.
    pub session: Option<Box<str>>,
    /// Its `tka.dev/revision` label (bindings).
    pub revision: Option<Box<str>>,
    /// The UID of the Session that owns it (its owner reference of kind Session).
    pub owner: Option<Box<str>>,
    /// When it was created.
    pub created: Option<Timestamp>,
}

impl Child {
    /// What is kept of `object`.
    pub fn of<K: Resource>(object: &K) -> Self {
        let meta = object.meta();
        let label = |key: &str| {
            meta.labels
                .as_ref()
                .and_then(|l| l.get(key))
                .map(|v| v.as_str().into())
        };
        Self {
            namespace: meta.namespace.as_deref().map(Into::into),
            name: meta.name.as_deref().unwrap_or_default().into(),
            uid: meta.uid.as_deref().unwrap_or_default().into(),
            resource_version: meta.resource_version.as_deref().map(Into::into),
            session: label(SESSION_LABEL),
            revision: label(REVISION_LABEL),
            owner: owner_uid(object).map(Into::into),
            created: meta.creation_timestamp.as_ref().map(|t| t.0),
        }
    }
}

/// A watched set of [`Child`]ren, by UID: filled from a metadata watch (initial list, then
/// changes; a re-list replaces the whole set when it is complete), like a reflector's store.
#[derive(Clone)]
pub struct Children {
    by_uid: Arc<RwLock<HashMap<Box<str>, Arc<Child>>>>,
    revision: watch::Receiver<Revision>,
}

impl fmt::Debug for Children {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Children")
            .field("revision", &*self.revision.borrow())
            .finish_non_exhaustive()
    }
}

impl Children {
    /// Everything in the set now.
    pub fn state(&self) -> Vec<Arc<Child>> {
        self.by_uid
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .cloned()
            .collect()
    }

    /// How far the watch has come.
    pub fn revision(&self) -> Revision {
        *self.revision.borrow()
    }

    /// Whether the set holds a full list.
    pub fn is_listed(&self) -> bool {
        self.revision().is_listed()
    }

    /// A receiver that wakes on every list and change.
    pub fn subscribe(&self) -> watch::Receiver<Revision> {
        self.revision.clone()
    }
}

/// The set fed by `events`, and the future that feeds it (with kube-rs's default backoff).
fn children<K, S>(events: S, what: &'static str) -> (Children, impl Future<Output = ()> + Send)
where
    K: Resource + Send + 'static,
    S: Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send + 'static,
{
    let by_uid: Arc<RwLock<HashMap<Box<str>, Arc<Child>>>> = Arc::default();
    let (sender, revision) = watch::channel(Revision::default());
    let set = Children {
        by_uid: Arc::clone(&by_uid),
        revision,
    };
    let drive = async move {
        let stream = events.default_backoff();
        tokio::pin!(stream);
        // A (re-)list is gathered here and replaces the set when it is complete.
        let mut listing: Option<HashMap<Box<str>, Arc<Child>>> = None;
        let write = || by_uid.write().unwrap_or_else(PoisonError::into_inner);
        while let Some(event) = stream.next().await {
            match event {
                Ok(watcher::Event::Init) => listing = Some(HashMap::new()),
                Ok(watcher::Event::InitApply(object)) => {
                    let child = Child::of(&object);
                    listing
                        .get_or_insert_with(HashMap::new)
                        .insert(child.uid.clone(), Arc::new(child));
                }
                Ok(watcher::Event::InitDone) => {
                    let mut listed = listing.take().unwrap_or_default();
                    listed.shrink_to_fit();
                    *write() = listed;
                    sender.send_modify(|r| r.lists += 1);
                }
                Ok(watcher::Event::Apply(object)) => {
                    let child = Child::of(&object);
                    write().insert(child.uid.clone(), Arc::new(child));
                    sender.send_modify(|r| r.changes += 1);
                }
                Ok(watcher::Event::Delete(object)) => {
                    write().remove(object.meta().uid.as_deref().unwrap_or_default());
                    sender.send_modify(|r| r.changes += 1);
                }
                Err(e) => tracing::warn!(error = %e, "{what} watch failed; retrying"),
            }
        }
    };
    (set, drive)
}

impl ClusterWatches {
    /// Starts nothing: returns the watches and the future that drives their reflectors with
    /// `client` (with kube-rs's default backoff) until it is dropped. Run it once, for as long
    /// as the readers need current stores. `namespace` is the server's (its ServiceAccounts).
    pub fn new(
        client: &Client,
        namespace: &str,
    ) -> (Self, impl Future<Output = ()> + Send + 'static) {
        let all = watcher::Config::default();
        let labelled = watcher::Config::default().labels(&managed_selector());
        let index = NodeIndex::default();
        let (sessions, drive_sessions) = {
            let index = index.clone();
            watched(
                watcher(Api::<Session>::all(client.clone()), all.clone()),
                "Session",
                move |event| index.apply(event),
            )
        };
        let (grant_mappings, drive_mappings) = watched(
            watcher(Api::<GrantMapping>::all(client.clone()), all.clone()),
            "GrantMapping",
            |_| {},
        );
        let (cluster_roles, drive_roles) = watched(
            watcher(Api::<ClusterRole>::all(client.clone()), all),
            "ClusterRole",
            |_| {},
        );
        // `Api<PartialObjectMeta<K>>` asks for metadata only (kube's metadata watcher).
        let (service_accounts, drive_sas) = children(
            watcher(
                Api::<Meta<ServiceAccount>>::namespaced(client.clone(), namespace),
                labelled.clone(),
            ),
            "ServiceAccount",
        );
        let (cluster_role_bindings, drive_crbs) = children(
            watcher(
                Api::<Meta<ClusterRoleBinding>>::all(client.clone()),
                labelled.clone(),
            ),
            "ClusterRoleBinding",
        );
        let (role_bindings, drive_rbs) = children(
            watcher(Api::<Meta<RoleBinding>>::all(client.clone()), labelled),
            "RoleBinding",
        );
        // Boxed: six watchers' state is too large to move around on the stack.
        let drive = Box::pin(async move {
            tokio::join!(
                drive_sessions,
                drive_mappings,
                drive_roles,
                drive_sas,
                drive_crbs,
                drive_rbs
            );
        });
        (
            Self {
                sessions: SessionStore(sessions, index),
                grant_mappings,
                cluster_roles,
                service_accounts,
                cluster_role_bindings,
                role_bindings,
            },
            drive,
        )
    }

    /// Whether every store holds a full list (before that, a reader that needs the whole picture
    /// waits, or asks the API server).
    pub fn all_listed(&self) -> bool {
        self.sessions.watched().is_listed()
            && self.grant_mappings.is_listed()
            && self.cluster_roles.is_listed()
            && self.service_accounts.is_listed()
            && self.cluster_role_bindings.is_listed()
            && self.role_bindings.is_listed()
    }
}

/// Drops what the server never reads from an object before it is stored: its `managedFields`
/// and its annotations (the last-applied one repeats the whole object).
pub fn slim<K: Resource>(object: &mut K) {
    let meta = object.meta_mut();
    meta.managed_fields = None;
    meta.annotations = None;
}

/// A reflector over `events`; `also` sees each event after the store has it and before readers
/// are told (an index kept beside the store).
fn watched<K, S>(
    events: S,
    what: &'static str,
    mut also: impl FnMut(&watcher::Event<K>) + Send + 'static,
) -> (Watched<K>, impl Future<Output = ()> + Send + 'static)
where
    K: Resource + Clone + fmt::Debug + Send + Sync + 'static,
    K::DynamicType: Eq + Hash + Clone + Default + Send + Sync,
    S: Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send + 'static,
{
    let (store, writer) = reflector::store::<K>();
    let (sender, revision) = watch::channel(Revision::default());
    let drive = async move {
        let stream = reflector::reflector(writer, events.modify(slim::<K>))
            .default_backoff()
            .boxed();
        tokio::pin!(stream);
        while let Some(event) = stream.next().await {
            // The reflector has already applied the event to the store.
            if let Ok(event) = &event {
                also(event);
            }
            match event {
                Ok(watcher::Event::InitDone) => sender.send_modify(|r| r.lists += 1),
                Ok(watcher::Event::Apply(_) | watcher::Event::Delete(_)) => {
                    sender.send_modify(|r| r.changes += 1);
                }
                Ok(watcher::Event::Init | watcher::Event::InitApply(_)) => {}
                Err(e) => tracing::warn!(error = %e, "{what} watch failed; retrying"),
            }
        }
    };
    (Watched { store, revision }, drive)
}

#[cfg(test)]
mod tests {
    use jiff::SignedDuration;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    use super::*;
    use crate::kubernetes::SessionSpec;
    use crate::kubernetes::session::SessionIdentity;

    fn node(id: &str) -> NodeId {
        NodeId::new(id).unwrap()
    }

    /// A Session for `node_id`, labelled with the hash of `labelled`, ending at `expires_at`.
    fn session(name: &str, node_id: &str, labelled: &str, expires_at: Timestamp) -> Session {
        let mut s = Session::new(
            name,
            SessionSpec {
                identity: SessionIdentity {
                    node_id: node_id.to_owned(),
                    node_name: format!("{node_id}.example.ts.net"),
                    tags: Vec::new(),
                    user_id: 1,
                    login_name: "alice@example.com".to_owned(),
                    addresses: Vec::new(),
                },
                role: "viewer".to_owned(),
                cluster_roles: vec!["view".to_owned()],
                namespaced: Vec::new(),
                revision: "r1".to_owned(),
                revised_at: Time(expires_at - SignedDuration::from_hours(1)),
                expires_at: Time(expires_at),
            },
        );
        s.metadata.uid = Some(format!("uid-{name}"));
        s.metadata.labels = Some(
            [(NODE_LABEL.to_owned(), node_label(&node(labelled)))]
                .into_iter()
                .collect(),
        );
        s
    }

    /// A store (and its node index) fed `events` as the watch would.
    fn store_fed(events: Vec<watcher::Event<Session>>) -> SessionStore {
        let (store, mut writer) = reflector::store::<Session>();
        let (sender, revision) = watch::channel(Revision::default());
        let index = NodeIndex::default();
        for event in events {
            writer.apply_watcher_event(&event);
            index.apply(&event);
            if matches!(event, watcher::Event::InitDone) {
                sender.send_modify(|r| r.lists += 1);
            }
        }
        SessionStore(Watched { store, revision }, index)
    }

    fn store_of(sessions: Vec<Session>, listed: bool) -> SessionStore {
        if !listed {
            return store_fed(Vec::new());
        }
        let mut events = vec![watcher::Event::Init];
        events.extend(sessions.into_iter().map(watcher::Event::InitApply));
        events.push(watcher::Event::InitDone);
        store_fed(events)
    }

    #[test]
    fn the_node_index_follows_changes_relabels_deletions_and_relists() {
        let now = Timestamp::now();
        let later = now + SignedDuration::from_hours(1);
        let alice = session("tka-alice-a1", "nAlice", "nAlice", later);
        let bob = session("tka-bob-b1", "nBob", "nBob", later);
        // A second session of Alice's device, made after the list.
        let alice2 = session("tka-alice-a2", "nAlice", "nAlice", later);
        // Bob's session relabelled (by hand) as Carol's device: no longer found as Bob's.
        let relabelled = session("tka-bob-b1", "nBob", "nCarol", later);
        let store = store_fed(vec![
            watcher::Event::Init,
            watcher::Event::InitApply(alice.clone()),
            watcher::Event::InitApply(bob.clone()),
            watcher::Event::InitDone,
            watcher::Event::Apply(alice2.clone()),
            watcher::Event::Apply(relabelled),
        ]);
        let names = |id: &str| {
            let mut names: Vec<String> = store
                .of_node(&node(id))
                .iter()
                .map(|s| s.name_any())
                .collect();
            names.sort();
            names
        };
        assert_eq!(names("nAlice"), ["tka-alice-a1", "tka-alice-a2"]);
        assert!(names("nBob").is_empty());
        // Labelled as Carol's but recorded for Bob: never Carol's either.
        assert!(names("nCarol").is_empty());

        let store = store_fed(vec![
            watcher::Event::Init,
            watcher::Event::InitApply(alice.clone()),
            watcher::Event::InitApply(alice2),
            watcher::Event::InitDone,
            watcher::Event::Delete(alice),
            // A re-list without Alice's second session: gone from the index too.
            watcher::Event::Init,
            watcher::Event::InitApply(bob),
            watcher::Event::InitDone,
        ]);
        assert!(store.of_node(&node("nAlice")).is_empty());
        assert_eq!(store.of_node(&node("nBob")).len(), 1);
    }

    #[test]
    fn a_devices_live_session_is_found_by_its_node_and_nothing_else() {
        let now = Timestamp::now();
        let later = now + SignedDuration::from_hours(1);
        let store = store_of(
            vec![
                session("tka-alice-a1", "nAlice", "nAlice", later),
                session(
                    "tka-bob-b1",
                    "nBob",
                    "nBob",
                    now - SignedDuration::from_secs(1),
                ),
                // Labelled as Carol's device but recorded for Mallory's: never Carol's session.
                session("tka-mallory-m1", "nMallory", "nCarol", later),
            ],
            true,
        );
        let alice = store.live_for_node(&node("nAlice"), now).unwrap();
        assert_eq!(alice.name_any(), "tka-alice-a1");
        // Expired: no live session.
        assert!(store.live_for_node(&node("nBob"), now).is_none());
        assert!(store.live_for_node(&node("nCarol"), now).is_none());
        assert!(store.live_for_node(&node("nNobody"), now).is_none());
        // Alice's session ends: no longer live.
        assert!(store.live_for_node(&node("nAlice"), later).is_none());
        assert_eq!(store.live_count(now), Some(2));
    }

    #[test]
    fn nothing_is_counted_before_the_first_list() {
        let store = store_of(Vec::new(), false);
        assert_eq!(store.live_count(Timestamp::now()), None);
        assert!(!store.watched().is_listed());
        let listed = store_of(Vec::new(), true);
        assert_eq!(listed.live_count(Timestamp::now()), Some(0));
    }

    /// The metadata of a binding of session `session` (owned by `owner`), as watched.
    fn binding_meta(name: &str, uid: &str, session: &str, owner: &str) -> Meta<RoleBinding> {
        use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
        PartialObjectMeta {
            types: None,
            metadata: ObjectMeta {
                name: Some(name.to_owned()),
                namespace: Some("team-a".to_owned()),
                uid: Some(uid.to_owned()),
                resource_version: Some("42".to_owned()),
                creation_timestamp: Some(Time(Timestamp::UNIX_EPOCH)),
                labels: Some(
                    [
                        (SESSION_LABEL.to_owned(), session.to_owned()),
                        (REVISION_LABEL.to_owned(), "r1".to_owned()),
                        ("app.kubernetes.io/managed-by".to_owned(), "tka".to_owned()),
                    ]
                    .into_iter()
                    .collect(),
                ),
                owner_references: Some(vec![
                    OwnerReference {
                        api_version: "v1".to_owned(),
                        kind: "ServiceAccount".to_owned(),
                        name: session.to_owned(),
                        uid: "not-the-session".to_owned(),
                        ..OwnerReference::default()
                    },
                    OwnerReference {
                        api_version: Session::api_version(&()).into_owned(),
                        kind: Session::kind(&()).into_owned(),
                        name: session.to_owned(),
                        uid: owner.to_owned(),
                        ..OwnerReference::default()
                    },
                ]),
                ..ObjectMeta::default()
            },
            _phantom: std::marker::PhantomData,
        }
    }

    #[test]
    fn a_child_keeps_what_the_reconciler_judges_and_deletes_by() {
        let child = Child::of(&binding_meta(
            "tka-a.sre.r1-0",
            "u1",
            "tka-a",
            "session-uid",
        ));
        assert_eq!(
            child,
            Child {
                namespace: Some("team-a".into()),
                name: "tka-a.sre.r1-0".into(),
                uid: "u1".into(),
                resource_version: Some("42".into()),
                session: Some("tka-a".into()),
                revision: Some("r1".into()),
                // The Session owner's UID, not another owner's.
                owner: Some("session-uid".into()),
                created: Some(Timestamp::UNIX_EPOCH),
            }
        );
    }

    #[tokio::test]
    async fn children_follow_lists_changes_and_deletions() {
        use watcher::Event;
        let (a, b, c) = (
            binding_meta("a", "ua", "tka-a", "sa"),
            binding_meta("b", "ub", "tka-b", "sb"),
            binding_meta("c", "uc", "tka-c", "sc"),
        );
        let mut a2 = a.clone();
        a2.metadata.resource_version = Some("43".to_owned());
        let names = |set: &Children| {
            let mut names: Vec<(String, Option<String>)> = set
                .state()
                .iter()
                .map(|c| {
                    (
                        c.name.to_string(),
                        c.resource_version.as_deref().map(str::to_owned),
                    )
                })
                .collect();
            names.sort();
            names
        };

        let events = vec![
            Ok(Event::Init),
            Ok(Event::InitApply(a.clone())),
            Ok(Event::InitApply(b.clone())),
            Ok(Event::InitDone),
            Ok(Event::Apply(a2)),
            Ok(Event::Delete(b)),
        ];
        let (set, drive) = children(futures::stream::iter(events), "RoleBinding");
        assert!(!set.is_listed());
        drive.await;
        assert_eq!(names(&set), vec![("a".to_owned(), Some("43".to_owned()))]);
        assert_eq!(
            set.revision(),
            Revision {
                lists: 1,
                changes: 2
            }
        );

        // A re-list replaces the whole set once it is complete; until then the old one stands.
        let events = vec![
            Ok(Event::Init),
            Ok(Event::InitApply(a.clone())),
            Ok(Event::InitDone),
            Ok(Event::Init),
            Ok(Event::InitApply(c)),
            Ok(Event::InitDone),
        ];
        let (set, drive) = children(futures::stream::iter(events), "RoleBinding");
        drive.await;
        assert_eq!(names(&set), vec![("c".to_owned(), Some("42".to_owned()))]);
        assert_eq!(set.revision().lists, 2);
    }

    #[test]
    fn stored_objects_keep_what_the_server_reads_and_nothing_else() {
        use k8s_openapi::apimachinery::pkg::apis::meta::v1::ManagedFieldsEntry;

        let now = Timestamp::now();
        let mut s = session("tka-alice-a1", "nAlice", "nAlice", now);
        s.metadata.managed_fields = Some(vec![ManagedFieldsEntry {
            manager: Some("tka-server".to_owned()),
            ..ManagedFieldsEntry::default()
        }]);
        s.metadata.annotations = Some(
            [(
                "kubectl.kubernetes.io/last-applied-configuration".to_owned(),
                "{\"spec\":{}}".to_owned(),
            )]
            .into_iter()
            .collect(),
        );
        s.metadata.finalizers = Some(vec!["tka.dev/cleanup".to_owned()]);
        let before = s.clone();
        slim(&mut s);
        assert_eq!(s.metadata.managed_fields, None);
        assert_eq!(s.metadata.annotations, None);
        // Everything the server reads stays.
        assert_eq!(s.spec, before.spec);
        assert_eq!(s.metadata.labels, before.metadata.labels);
        assert_eq!(s.metadata.uid, before.metadata.uid);
        assert_eq!(s.metadata.finalizers, before.metadata.finalizers);

        let mut meta: Meta<ServiceAccount> = PartialObjectMeta {
            types: None,
            metadata: before.metadata.clone(),
            _phantom: std::marker::PhantomData,
        };
        slim(&mut meta);
        assert_eq!(meta.metadata.managed_fields, None);
        assert_eq!(meta.metadata.annotations, None);
        assert_eq!(meta.metadata.labels, before.metadata.labels);
    }
}
