//! [`TestTailnet`]: a minimal in-memory [`IdentityProvider`] for the behaviour suite, whose peers
//! and capabilities a test changes at will (a grant removed from the policy file, a device that
//! left the tailnet). It answers whois by address only; it is not a model of tailscaled's wire
//! protocol.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Mutex, PoisonError};

use async_trait::async_trait;
use tka_core::identity::{IdentityError, IdentityProvider, WhoisRequest, WhoisTarget};
use tka_core::{Identity, NodeId};

/// An in-memory tailnet: address → identity.
#[derive(Debug, Default)]
pub struct TestTailnet {
    peers: Mutex<HashMap<IpAddr, Identity>>,
    unavailable: Mutex<bool>,
}

impl TestTailnet {
    /// An empty tailnet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds (or replaces) a peer at each of its addresses.
    pub fn join(&self, identity: &Identity) {
        let mut peers = self.peers.lock().unwrap_or_else(PoisonError::into_inner);
        for address in &identity.node.addresses {
            peers.insert(*address, identity.clone());
        }
    }

    /// Removes a device from the tailnet.
    pub fn leave(&self, node: &NodeId) {
        self.peers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|_, id| id.node.stable_id != *node);
    }

    /// Replaces the capability values a device receives (a policy file edit).
    pub fn set_capabilities(&self, node: &NodeId, capabilities: &[serde_json::Value]) {
        for id in self
            .peers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .values_mut()
        {
            if id.node.stable_id == *node {
                id.capabilities = capabilities.to_vec();
            }
        }
    }

    /// Makes every lookup fail as if tailscaled were down (or brings it back).
    pub fn set_unavailable(&self, unavailable: bool) {
        *self
            .unavailable
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = unavailable;
    }
}

#[async_trait]
impl IdentityProvider for TestTailnet {
    async fn lookup(&self, request: &WhoisRequest) -> Result<Identity, IdentityError> {
        if *self
            .unavailable
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
        {
            return Err(IdentityError::DaemonUnavailable(
                "tailscaled is stopped".into(),
            ));
        }
        let ip = match request.target {
            WhoisTarget::Connection(addr) => addr.ip(),
            WhoisTarget::Address(ip) => ip,
        };
        self.peers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&ip)
            .cloned()
            .ok_or(IdentityError::NotInTailnet(request.target))
    }
}
