//! Who is calling: the [`IdentityProvider`] trait, the [`TailnetStatus`] trait (which nodes are in
//! the tailnet, for discovery), the LocalAPI wire format ([`wire`], pure), and the real
//! implementation that asks the local tailscaled over its LocalAPI (feature `localapi`).
//!
//! This module decides nothing about access: it reports who tailscaled says is behind an address
//! and which capability values that caller holds, and policy decides. It must never guess: an
//! answer it cannot read is an error, not an anonymous identity.
//!
//! Answers are never cached by address: loopback ports and PROXY sources are reused by other peers,
//! so a cached answer could name the wrong caller. Cache, if at all, per accepted connection.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use async_trait::async_trait;

use crate::domain::Identity;

#[cfg(feature = "localapi")]
pub mod localapi;
pub mod wire;

#[cfg(feature = "localapi")]
pub use localapi::{LoopbackRetry, TailscaleLocalApi};
pub use wire::{PeerStatus, Status};

/// The default name of the Tailscale CLI, run for [`TailnetStatus::status`] where the LocalAPI
/// socket cannot be reached (macOS and Windows, where the daemon has no socket at a fixed path).
pub const DEFAULT_CLI_BINARY: &str = "tailscale";

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

impl WhoisTarget {
    /// The same target with IPv4-mapped IPv6 addresses (`::ffff:127.0.0.1`, as a dual-stack
    /// listener reports IPv4 peers) turned into plain IPv4, which is how tailscaled knows them.
    ///
    /// ```
    /// use tka_core::identity::WhoisTarget;
    /// let mapped: std::net::SocketAddr = "[::ffff:127.0.0.1]:4242".parse().unwrap();
    /// assert_eq!(
    ///     WhoisTarget::Connection(mapped).to_canonical().to_string(),
    ///     "127.0.0.1:4242"
    /// );
    /// ```
    pub fn to_canonical(self) -> Self {
        match self {
            Self::Connection(addr) => {
                Self::Connection(SocketAddr::new(addr.ip().to_canonical(), addr.port()))
            }
            Self::Address(ip) => Self::Address(ip.to_canonical()),
        }
    }

    /// The IP address looked up.
    pub fn ip(&self) -> IpAddr {
        match self {
            Self::Connection(addr) => addr.ip(),
            Self::Address(ip) => *ip,
        }
    }

    /// Whether this is the loopback source address of a connection: what a server behind a
    /// userspace-networking tailscaled sees, and the only case where a miss may be a mapping that
    /// lags the dial rather than a stranger.
    pub fn is_loopback_connection(&self) -> bool {
        matches!(self, Self::Connection(addr) if addr.ip().to_canonical().is_loopback())
    }
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

    /// The same request, scoped to the Tailscale Service `svc_name` (`svc:name`): the capability
    /// values are then the ones granted for that service. Daemons up to 1.98 ignore the
    /// parameter and answer with the values granted to the node itself.
    pub fn for_service(mut self, svc_name: impl Into<String>) -> Self {
        self.svc_name = Some(svc_name.into());
        self
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
    /// The local tailscaled is not connected to a tailnet (logged out, stopped, starting; its
    /// backend state is given), so this machine has no tailnet identity and reaches no peers.
    #[error(
        "tailscale is not connected to a tailnet (state {0:?}); run `tailscale up` and try again"
    )]
    NotConnected(String),
}

/// Identifies callers. Object-safe: servers hold an `Arc<dyn IdentityProvider>`.
#[async_trait]
pub trait IdentityProvider: Send + Sync {
    /// Looks up who is behind an address.
    async fn lookup(&self, request: &WhoisRequest) -> Result<Identity, IdentityError>;

    /// Who is behind the remote address of an accepted connection.
    async fn whois(&self, remote: SocketAddr) -> Result<Identity, IdentityError> {
        self.lookup(&WhoisRequest::connection(remote)).await
    }
}

/// Which nodes are in the tailnet, as the local tailscaled sees them: the CLI's discovery of
/// servers (peers carrying the server tag) and of its own identity. Object-safe, like
/// [`IdentityProvider`]; the real implementation is [`TailscaleLocalApi`] (feature `localapi`),
/// which reads `GET /localapi/v0/status` and falls back to `tailscale status --json` where the
/// socket cannot be reached.
#[cfg_attr(any(test, feature = "mocks"), mockall::automock)]
#[async_trait]
pub trait TailnetStatus: Send + Sync {
    /// The local node, its peers and their users.
    async fn status(&self) -> Result<Status, IdentityError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mapped_ipv4_is_canonicalized_and_counts_as_loopback() {
        let mapped: SocketAddr = "[::ffff:127.0.0.1]:4242".parse().unwrap();
        let target = WhoisTarget::Connection(mapped);
        assert!(target.is_loopback_connection());
        assert_eq!(target.to_canonical().to_string(), "127.0.0.1:4242");

        let tailnet: SocketAddr = "100.64.0.7:4242".parse().unwrap();
        assert!(!WhoisTarget::Connection(tailnet).is_loopback_connection());
        assert_eq!(
            WhoisTarget::Connection(tailnet).to_canonical(),
            WhoisTarget::Connection(tailnet)
        );
        let v6: SocketAddr = "[fd7a:115c:a1e0::7]:80".parse().unwrap();
        assert_eq!(
            WhoisTarget::Connection(v6).to_canonical().to_string(),
            "[fd7a:115c:a1e0::7]:80"
        );
    }

    #[test]
    fn a_bare_loopback_address_is_not_a_connection() {
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        assert!(!WhoisTarget::Address(ip).is_loopback_connection());
        assert!(WhoisTarget::Connection(SocketAddr::new(ip, 1)).is_loopback_connection());
    }

    #[test]
    fn socket_missing_names_the_path_and_the_flag() {
        let message = IdentityError::SocketMissing("/nowhere/tailscaled.sock".into()).to_string();
        assert!(message.contains("/nowhere/tailscaled.sock"), "{message}");
        assert!(message.contains("--tailscale-socket"), "{message}");
    }
}
