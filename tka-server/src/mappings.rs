//! Where the API reads GrantMappings from: a [`MappingStore`] that answers from memory, so a
//! login does no read of its own (DESIGN §11). The Kubernetes wiring fills it from a watch of
//! the GrantMapping resources (replacing the whole set on every change); tests fill an
//! [`InMemoryMappings`] by hand. This module does not validate mappings (policy does, at
//! resolution) and does no I/O.

use std::sync::{Arc, PoisonError, RwLock};

use tka_core::MappingView;

/// The cluster's GrantMappings, as policy sees them.
pub trait MappingStore: Send + Sync + std::fmt::Debug {
    /// The current mappings. Cheap: a shared snapshot, not a copy.
    fn snapshot(&self) -> Arc<[MappingView]>;
}

/// A [`MappingStore`] whose content is replaced wholesale by its feeder.
#[derive(Debug, Default)]
pub struct InMemoryMappings {
    current: RwLock<Arc<[MappingView]>>,
}

impl InMemoryMappings {
    /// A store holding `mappings`.
    pub fn new(mappings: impl Into<Vec<MappingView>>) -> Self {
        Self {
            current: RwLock::new(Arc::from(mappings.into())),
        }
    }

    /// Replaces every mapping at once (what a watch does after each event).
    pub fn replace(&self, mappings: impl Into<Vec<MappingView>>) {
        let next: Arc<[MappingView]> = Arc::from(mappings.into());
        // The lock is never held across an await or a panic-prone call; a poisoned lock still
        // holds a consistent Arc.
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = next;
    }
}

impl MappingStore for InMemoryMappings {
    fn snapshot(&self) -> Arc<[MappingView]> {
        self.current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

#[cfg(test)]
mod tests {
    use tka_core::{GrantMappingSpec, RoleName};

    use super::*;

    #[test]
    fn snapshots_do_not_change_under_a_reader() {
        let store = InMemoryMappings::default();
        assert!(store.snapshot().is_empty());
        let view = MappingView::new(RoleName::new("sre").unwrap(), GrantMappingSpec::default());
        store.replace(vec![view.clone()]);
        let before = store.snapshot();
        store.replace(Vec::new());
        assert_eq!(&*before, &[view]);
        assert!(store.snapshot().is_empty());
    }
}
