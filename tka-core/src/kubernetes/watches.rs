//! [`ClusterWatches`]: the one watch per resource a server keeps (Sessions, GrantMappings,
//! ClusterRoles), each a kube-rs reflector feeding a [`Store`], made once in the wiring and handed
//! to whoever reads it (the GrantMapping feed, the reconciler, the session count, and the proxy's
//! lookup of a device's live session, [`SessionStore::live_for_node`]).
//!
//! It owns the reflectors and tells readers that something changed ([`Revision`], through a
//! `tokio::sync::watch` channel, which coalesces a burst into one wake). It must not decide
//! anything: no policy, no removal, no write to the API server. What a reader does with a change
//! (republish the mappings, schedule a reconcile pass) is the reader's business.

use std::fmt;
use std::future::Future;
use std::hash::Hash;
use std::sync::Arc;

use futures::StreamExt;
use jiff::Timestamp;
use k8s_openapi::api::rbac::v1::ClusterRole;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use tokio::sync::watch;

use super::NODE_LABEL;
use super::session::Session;
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

/// The watched Sessions, with the lookups the server and the proxy need.
#[derive(Debug, Clone)]
pub struct SessionStore(Watched<Session>);

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
        self.0
            .store
            .state()
            .into_iter()
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

/// The server's watches: one reflector per resource, shared by every reader.
#[derive(Debug, Clone)]
pub struct ClusterWatches {
    /// Every Session.
    pub sessions: SessionStore,
    /// Every GrantMapping.
    pub grant_mappings: Watched<GrantMapping>,
    /// Every ClusterRole (for the read-only judgement of `clusterRoles`, DESIGN §4.3).
    pub cluster_roles: Watched<ClusterRole>,
}

impl ClusterWatches {
    /// Starts nothing: returns the watches and the future that drives their reflectors with
    /// `client` (with kube-rs's default backoff) until it is dropped. Run it once, for as long
    /// as the readers need current stores.
    pub fn new(client: &Client) -> (Self, impl Future<Output = ()> + Send + 'static) {
        let (sessions, drive_sessions) = watched(Api::<Session>::all(client.clone()), "Session");
        let (grant_mappings, drive_mappings) =
            watched(Api::<GrantMapping>::all(client.clone()), "GrantMapping");
        let (cluster_roles, drive_roles) =
            watched(Api::<ClusterRole>::all(client.clone()), "ClusterRole");
        let drive = async move {
            tokio::join!(drive_sessions, drive_mappings, drive_roles);
        };
        (
            Self {
                sessions: SessionStore(sessions),
                grant_mappings,
                cluster_roles,
            },
            drive,
        )
    }
}

fn watched<K>(
    api: Api<K>,
    what: &'static str,
) -> (Watched<K>, impl Future<Output = ()> + Send + 'static)
where
    K: Resource + Clone + DeserializeOwned + fmt::Debug + Send + Sync + 'static,
    K::DynamicType: Eq + Hash + Clone + Default + Send + Sync,
{
    let (store, writer) = reflector::store::<K>();
    let (sender, revision) = watch::channel(Revision::default());
    let drive = async move {
        let stream = reflector::reflector(writer, watcher(api, watcher::Config::default()))
            .default_backoff()
            .boxed();
        tokio::pin!(stream);
        while let Some(event) = stream.next().await {
            // The reflector has already applied the event to the store.
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

    fn store_of(sessions: Vec<Session>, listed: bool) -> SessionStore {
        let (store, mut writer) = reflector::store::<Session>();
        let (sender, revision) = watch::channel(Revision::default());
        if listed {
            writer.apply_watcher_event(&watcher::Event::Init);
            for s in sessions {
                writer.apply_watcher_event(&watcher::Event::InitApply(s));
            }
            writer.apply_watcher_event(&watcher::Event::InitDone);
            sender.send_modify(|r| r.lists += 1);
        }
        SessionStore(Watched { store, revision })
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
}
