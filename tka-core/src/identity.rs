//! Who is calling: the [`IdentityProvider`] trait, and the real implementation that asks the local
//! tailscaled over its LocalAPI (feature `localapi`).
//!
//! Answers are never cached by address: loopback ports and PROXY sources are reused by other peers,
//! so a cached answer could name the wrong caller. Cache, if at all, per accepted connection.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use async_trait::async_trait;

use crate::domain::Identity;

/// The default tailscaled LocalAPI socket on Linux.
pub const DEFAULT_SOCKET: &str = "/var/run/tailscale/tailscaled.sock";

/// The default capability name whose values are tka grants.
pub const DEFAULT_CAPABILITY: &str = "tka.dev/cap/kubernetes";

/// The capability names an [`Identity`] is built from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CapabilityNames {
    /// Values under this name become [`Identity::capabilities`].
    pub primary: String,
    /// Values under this name (the SpechtLabs/tka schema) become
    /// [`Identity::compat_capabilities`], only when configured.
    pub compat: Option<String>,
}

impl Default for CapabilityNames {
    fn default() -> Self {
        Self {
            primary: DEFAULT_CAPABILITY.to_owned(),
            compat: None,
        }
    }
}

/// What to look up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WhoisTarget {
    /// The remote address of an accepted connection (or the source of a PROXY header).
    Connection(SocketAddr),
    /// A bare tailnet address, with no connection open; used to re-validate live sessions.
    Address(IpAddr),
}

impl std::fmt::Display for WhoisTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Connection(a) => a.fmt(f),
            Self::Address(a) => a.fmt(f),
        }
    }
}

/// A whois question.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct WhoisRequest {
    /// The address to identify.
    pub target: WhoisTarget,
    /// The Tailscale Service the connection was addressed to, for grants aimed at a service.
    pub svc_name: Option<String>,
}

impl WhoisRequest {
    /// A request for an accepted connection's remote address.
    pub fn connection(remote: SocketAddr) -> Self {
        Self {
            target: WhoisTarget::Connection(remote),
            svc_name: None,
        }
    }

    /// A request for a bare tailnet address.
    pub fn address(addr: IpAddr) -> Self {
        Self {
            target: WhoisTarget::Address(addr),
            svc_name: None,
        }
    }
}

/// Why an identity could not be established. Every variant means "do not trust this caller".
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IdentityError {
    /// tailscaled knows no node at that address: the caller did not come through the tailnet.
    #[error("{0} is not a peer in this tailnet")]
    NotInTailnet(WhoisTarget),
    /// tailscaled is up but not ready (503), or refused the connection.
    #[error("tailscaled is not available: {0}; check that it is running and logged in")]
    DaemonUnavailable(String),
    /// There is no socket at the configured path.
    #[error(
        "tailscaled is not running or its socket is not at {}; set --tailscale-socket (TKA_TAILSCALE_SOCKET)",
        .0.display()
    )]
    SocketMissing(PathBuf),
    /// The daemon did not answer within the deadline.
    #[error("tailscaled did not answer within {0:?}")]
    Timeout(std::time::Duration),
    /// The daemon answered something that cannot be understood.
    #[error("unexpected answer from tailscaled: {0}")]
    Malformed(String),
    /// The daemon refused the request (400 or 403); a bug on our side or a version mismatch.
    #[error("tailscaled refused the request ({status}): {body}")]
    Rejected {
        /// HTTP status.
        status: u16,
        /// The daemon's plain-text explanation.
        body: String,
    },
    /// Any other I/O failure talking to the daemon.
    #[error("talking to tailscaled failed")]
    Io(#[source] std::io::Error),
}

/// Identifies callers. Object-safe: servers hold an `Arc<dyn IdentityProvider>`.
#[cfg_attr(any(test, feature = "mocks"), mockall::automock)]
#[async_trait]
pub trait IdentityProvider: Send + Sync {
    /// Looks up who is behind an address.
    async fn lookup(&self, request: &WhoisRequest) -> Result<Identity, IdentityError>;

    /// Who is behind the remote address of an accepted connection.
    async fn whois(&self, remote: SocketAddr) -> Result<Identity, IdentityError> {
        self.lookup(&WhoisRequest::connection(remote)).await
    }
}
