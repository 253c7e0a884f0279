//! [`Inner`]: the state shared by every clone of a [`FakeCluster`](super::FakeCluster) and by its
//! HTTP front (the registry of kinds, the object store, faults, the access policy, the watch
//! broadcast, the clock), and the one way to lock it. It owns that state and the rule that a
//! write is broadcast only once committed; it must not know HTTP or the public API of the fake.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};

use tka_core::Clock;
use tokio::sync::broadcast;

use super::access::AccessPolicy;
use super::faults::Faults;
use super::resource::{Registry, ResourceType};
use super::status::ApiError;
use super::store::{Store, WatchRecord};

/// Locks a mutex, carrying on after a panic elsewhere (the data is plain state, never left
/// half-written by a panic in this module).
pub(super) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Shared state behind every clone of a [`FakeCluster`] and every client of it.
#[derive(Debug)]
pub(crate) struct Inner {
    pub(super) registry: RwLock<Registry>,
    pub(super) store: Mutex<Store>,
    pub(super) faults: Mutex<Faults>,
    pub(super) access: Mutex<AccessPolicy>,
    pub(super) events: broadcast::Sender<Arc<WatchRecord>>,
    pub(super) clock: Arc<dyn Clock>,
    pub(super) max_token_seconds: Option<i64>,
}

impl Inner {
    pub(super) fn registry(&self) -> std::sync::RwLockReadGuard<'_, Registry> {
        self.registry.read().unwrap_or_else(PoisonError::into_inner)
    }

    pub(super) fn resolve(&self, resource: &str) -> Option<ResourceType> {
        let registry = self.registry();
        match resource.split_once('.') {
            Some((plural, group)) => registry
                .all()
                .iter()
                .find(|t| t.plural == plural && t.group == group)
                .cloned(),
            None => registry.find_plural(resource).cloned(),
        }
    }

    /// Runs a write under the store lock and broadcasts what it committed, or runs it on a
    /// scratch copy for a dry run.
    pub(super) fn mutate<T>(
        &self,
        dry_run: bool,
        f: impl FnOnce(&mut Store) -> Result<T, ApiError>,
    ) -> Result<T, ApiError> {
        let mut store = lock(&self.store);
        if dry_run {
            let mut scratch = store.clone();
            return f(&mut scratch);
        }
        let result = f(&mut store);
        for record in store.take_pending() {
            // No receivers is fine: nobody is watching.
            let _ = self.events.send(record);
        }
        result
    }
}
