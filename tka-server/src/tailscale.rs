//! What the server asks the local tailscaled besides whois: its own node (so requests that whois
//! names as the server itself are refused) and whether it is up (readiness). Both go through
//! [`TailnetStatus`]; this module does no I/O of its own.

use std::sync::Arc;

use async_trait::async_trait;
use tka_core::NodeId;
use tka_core::identity::{IdentityError, TailnetStatus};

use crate::ops::ReadinessCheck;

/// The stable ID of the node this tailscaled runs as; fails while it is not connected.
pub async fn own_node(status: &dyn TailnetStatus) -> Result<NodeId, IdentityError> {
    let status = status.status().await?;
    Ok(status.require_self()?.stable_id.clone())
}

/// Ready when tailscaled answers and is connected to its tailnet.
pub struct TailscaledReady(pub Arc<dyn TailnetStatus>);

impl std::fmt::Debug for TailscaledReady {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TailscaledReady")
    }
}

#[async_trait]
impl ReadinessCheck for TailscaledReady {
    fn name(&self) -> &str {
        "tailscaled"
    }

    async fn check(&self) -> Result<(), String> {
        own_node(self.0.as_ref())
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    }
}
