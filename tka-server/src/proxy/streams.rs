//! The proxy's stream registry: every proxied response in flight and every upgraded connection,
//! registered under its session with a [`CancellationToken`], and counted per device against
//! the per-device cap. When a session ends (the sweeper, [`crate::proxy::service`], decides
//! that from the Session store), [`Streams::end`] cancels every stream of it at once: the
//! response bodies fail and the upgraded connections are closed.
//!
//! It decides nothing about sessions and reads no store; it must not import the front.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use tka_core::{NodeId, SessionName};
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;

/// The device already has as many streams open as its cap allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "this device already has {0} requests or streams open through the tka proxy (--proxy-max-streams-per-device); close some and retry"
)]
pub struct TooManyStreams(pub usize);

#[derive(Debug)]
struct Entry {
    cancel: CancellationToken,
    open: usize,
    /// Which registration of the session this is: a stream of an ended entry must not count
    /// against a later one under the same name.
    generation: u64,
}

#[derive(Debug, Default)]
struct Inner {
    sessions: HashMap<SessionName, Entry>,
    devices: HashMap<NodeId, usize>,
    generations: u64,
}

/// The registry.
#[derive(Debug)]
pub struct Streams {
    inner: Mutex<Inner>,
    max_per_device: usize,
    metrics: Arc<Metrics>,
}

/// One open stream; dropping it unregisters it.
#[derive(Debug)]
pub struct StreamGuard {
    streams: Arc<Streams>,
    session: SessionName,
    node: NodeId,
    cancel: CancellationToken,
    generation: u64,
}

impl StreamGuard {
    /// Cancelled when the session ends (or the server shuts down).
    pub fn cancelled(&self) -> CancellationToken {
        self.cancel.clone()
    }
}

impl Streams {
    /// A registry allowing `max_per_device` open streams per device.
    pub fn new(max_per_device: usize, metrics: Arc<Metrics>) -> Arc<Self> {
        Arc::new(Self {
            inner: Mutex::default(),
            max_per_device,
            metrics,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // Never held across an await; poisoned counts are still counts.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Registers a stream of `session` on device `node`, or refuses it over the device's cap.
    pub fn open(
        self: &Arc<Self>,
        session: &SessionName,
        node: &NodeId,
    ) -> Result<StreamGuard, TooManyStreams> {
        let mut inner = self.lock();
        let count = inner.devices.entry(node.clone()).or_insert(0);
        if *count >= self.max_per_device {
            return Err(TooManyStreams(self.max_per_device));
        }
        *count += 1;
        inner.generations += 1;
        let generation = inner.generations;
        let entry = inner
            .sessions
            .entry(session.clone())
            .or_insert_with(|| Entry {
                cancel: CancellationToken::new(),
                open: 0,
                generation,
            });
        entry.open += 1;
        let cancel = entry.cancel.child_token();
        let generation = entry.generation;
        drop(inner);
        self.metrics.proxy_stream(true);
        Ok(StreamGuard {
            streams: Arc::clone(self),
            session: session.clone(),
            node: node.clone(),
            cancel,
            generation,
        })
    }

    /// The sessions with open streams.
    pub fn sessions(&self) -> Vec<SessionName> {
        self.lock().sessions.keys().cloned().collect()
    }

    /// Cancels every stream of `session` (it ended).
    pub fn end(&self, session: &SessionName) {
        if let Some(entry) = self.lock().sessions.remove(session) {
            entry.cancel.cancel();
        }
    }

    /// Cancels every stream (the server is shutting down).
    pub fn end_all(&self) {
        for (_, entry) in self.lock().sessions.drain() {
            entry.cancel.cancel();
        }
    }

    /// Streams open now on device `node`.
    pub fn open_on(&self, node: &NodeId) -> usize {
        self.lock().devices.get(node).copied().unwrap_or(0)
    }
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        let mut inner = self.streams.lock();
        if let Some(count) = inner.devices.get_mut(&self.node) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                inner.devices.remove(&self.node);
            }
        }
        if let Some(entry) = inner.sessions.get_mut(&self.session)
            && entry.generation == self.generation
        {
            entry.open = entry.open.saturating_sub(1);
            if entry.open == 0 {
                inner.sessions.remove(&self.session);
            }
        }
        drop(inner);
        self.streams.metrics.proxy_stream(false);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cap_is_per_device_and_ending_a_session_cancels_its_streams_only() {
        let streams = Streams::new(2, Arc::new(Metrics::new(None)));
        let alice = NodeId::new("nAlice").unwrap();
        let bob = NodeId::new("nBob").unwrap();
        let a = SessionName::new("tka-alice-a1").unwrap();
        let b = SessionName::new("tka-bob-b1").unwrap();
        let first = streams.open(&a, &alice).unwrap();
        let second = streams.open(&a, &alice).unwrap();
        assert_eq!(streams.open(&a, &alice).unwrap_err(), TooManyStreams(2));
        let bobs = streams.open(&b, &bob).unwrap();
        assert_eq!(streams.open_on(&alice), 2);

        streams.end(&a);
        assert!(first.cancelled().is_cancelled());
        assert!(second.cancelled().is_cancelled());
        assert!(
            !bobs.cancelled().is_cancelled(),
            "another session is untouched"
        );
        drop((first, second));
        assert_eq!(streams.open_on(&alice), 0);
        let again = streams.open(&a, &alice).unwrap();
        assert!(
            !again.cancelled().is_cancelled(),
            "a new stream starts fresh"
        );
        assert_eq!(streams.sessions().len(), 2);
    }
}
