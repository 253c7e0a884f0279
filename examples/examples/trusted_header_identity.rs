//! Embeds tka-core behind a trusted front proxy: a custom [`IdentityProvider`] that believes the
//! identity headers the proxy sets, instead of asking tailscaled. Useful when tka's policy runs
//! inside another service that already sits behind an authenticating proxy on the same host
//! (one that itself asked tailscaled who is calling).
//!
//! Security caveats (read these before copying it):
//! - The headers are only as trustworthy as the hop that set them. Anything that can open a
//!   connection to this service without going through the proxy can write them too. So the
//!   provider believes them only on connections from the proxy's own address, and the service
//!   must listen where only the proxy can reach it (loopback, a Unix socket, a pod-local port).
//! - The proxy must delete these headers from every incoming request before setting its own;
//!   otherwise a client's forged header passes straight through it.
//! - The capability values must come from the control plane (the proxy's own whois), never from
//!   anything the client sent: they are the grants.
//! - The key of an identity is still the device (the node's stable ID), not the user: tagged
//!   devices all share one user. A proxy that only knows users cannot feed this provider.
//! - Without a connection there is nobody to ask: a lookup by bare address (the reconciler's
//!   re-validation of a live session) fails, which tka treats as "do not trust", not as "still
//!   granted".
//!
//! Run with `cargo run -p tka-examples --example trusted_header_identity`. It resolves three
//! requests (from the proxy, from elsewhere with forged headers, from the proxy without headers)
//! and exits non-zero unless only the first is granted.

#![allow(clippy::print_stdout)] // printing the result is what this example is for

use std::net::{IpAddr, SocketAddr};

use anyhow::{Context as _, ensure};
use async_trait::async_trait;
use tka_core::identity::{IdentityError, WhoisRequest, WhoisTarget};
use tka_core::{
    ClusterName, GrantMappingSpec, Identity, IdentityProvider, LoginName, MappingView, NodeId,
    NodeInfo, ParsedGrants, PolicyContext, PolicySettings, ResolveRequest, RoleName, Tag, Ttl,
    UserId, UserInfo, resolve,
};

/// The headers the front proxy sets (and strips from what clients send).
const USER: &str = "x-tka-user";
const NODE: &str = "x-tka-node";
const TAGS: &str = "x-tka-tags";
const CAPABILITIES: &str = "x-tka-capabilities";

/// One request's identity, as the front proxy stated it. Built per request and answering only
/// for that request's connection, so nothing is cached by address.
struct TrustedHeaderIdentity {
    connection: SocketAddr,
    /// `None` when the request did not come from the trusted proxy.
    claimed: Option<Result<Identity, String>>,
}

impl TrustedHeaderIdentity {
    /// Reads the headers of a request that arrived on `connection`; believes them only when the
    /// connection comes from `trusted_proxy`.
    fn from_request(
        trusted_proxy: IpAddr,
        connection: SocketAddr,
        headers: &[(&str, &str)],
    ) -> Self {
        Self {
            connection,
            // From anywhere else, the headers are not even read.
            claimed: (connection.ip() == trusted_proxy).then(|| parse_headers(headers)),
        }
    }
}

fn parse_headers(headers: &[(&str, &str)]) -> Result<Identity, String> {
    let get = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| *v)
    };
    let login = get(USER).ok_or("no identity header: the proxy did not identify the caller")?;
    let node = get(NODE).ok_or("no node header: identities are keyed by device")?;
    let tags = get(TAGS)
        .unwrap_or_default()
        .split(',')
        .filter(|t| !t.is_empty())
        .map(|t| Tag::new(t.trim()).map_err(|e| e.to_string()))
        .collect::<Result<Vec<_>, _>>()?;
    let capabilities = match get(CAPABILITIES) {
        Some(raw) => serde_json::from_str(raw).map_err(|e| format!("{CAPABILITIES}: {e}"))?,
        None => Vec::new(),
    };
    Ok(Identity {
        user: UserInfo {
            id: UserId(0),
            login_name: LoginName::new(login).map_err(|e| e.to_string())?,
            display_name: login.to_owned(),
        },
        node: NodeInfo {
            stable_id: NodeId::new(node).map_err(|e| e.to_string())?,
            name: node.to_owned(),
            addresses: vec![],
            tags,
        },
        groups: vec![],
        capabilities,
        compat_capabilities: vec![],
    })
}

#[async_trait]
impl IdentityProvider for TrustedHeaderIdentity {
    async fn lookup(&self, request: &WhoisRequest) -> Result<Identity, IdentityError> {
        match (&request.target, &self.claimed) {
            (WhoisTarget::Connection(addr), Some(Ok(identity))) if *addr == self.connection => {
                Ok(identity.clone())
            }
            // The proxy's statement cannot be understood: nobody is identified.
            (WhoisTarget::Connection(addr), Some(Err(why))) if *addr == self.connection => Err(
                IdentityError::Malformed(format!("the front proxy's headers: {why}")),
            ),
            // Not through the proxy, another connection, or a bare address: unknown caller.
            (target, _) => Err(IdentityError::NotInTailnet(*target)),
        }
    }
}

/// What the embedding service does per request: ask the provider, then policy.
async fn decide(
    provider: &dyn IdentityProvider,
    connection: SocketAddr,
    mappings: &[MappingView],
) -> anyhow::Result<Result<String, String>> {
    let identity = match provider.whois(connection).await {
        Ok(identity) => identity,
        Err(e) => return Ok(Err(format!("not identified: {e}"))),
    };
    let grants = ParsedGrants::from_identity(&identity);
    let settings = PolicySettings::new("tka-system", Ttl::parse("1h")?, Ttl::parse("8h")?);
    let cluster = ClusterName::new("prod")?;
    let request = ResolveRequest {
        context: PolicyContext {
            identity: &identity,
            grants: &grants,
            mappings,
            cluster: &cluster,
            settings: &settings,
        },
        role: None,
        ttl: None,
        now: jiff::Timestamp::now(),
    };
    Ok(match resolve(&request) {
        Ok(decision) => Ok(format!(
            "{} gets {} for {}",
            identity.describe(),
            decision.role,
            decision.ttl
        )),
        Err(denial) => Err(denial.to_string()),
    })
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let mappings = [MappingView::new(
        RoleName::new("read-only")?,
        GrantMappingSpec {
            cluster_roles: vec!["view".into()],
            ..Default::default()
        },
    )];
    let proxy: IpAddr = "127.0.0.1".parse()?;
    let headers = [
        (USER, "alice@example.com"),
        (NODE, "nALICE"),
        (CAPABILITIES, r#"[{"role": "read-only", "maxTTL": "2h"}]"#),
    ];

    // 1. Through the proxy: believed.
    let via_proxy: SocketAddr = "127.0.0.1:50001".parse()?;
    let provider = TrustedHeaderIdentity::from_request(proxy, via_proxy, &headers);
    let granted = decide(&provider, via_proxy, &mappings).await?;
    println!("via the proxy:        {granted:?}");
    let granted = granted.map_err(anyhow::Error::msg)?;
    ensure!(granted.contains("gets read-only"), "{granted}");
    // The same provider knows nothing about any other connection.
    let other: SocketAddr = "127.0.0.1:50002".parse()?;
    ensure!(provider.whois(other).await.is_err());

    // 2. The same headers from anywhere else: ignored, nobody is identified.
    let direct: SocketAddr = "10.0.0.9:40000".parse()?;
    let provider = TrustedHeaderIdentity::from_request(proxy, direct, &headers);
    let forged = decide(&provider, direct, &mappings).await?;
    println!("forged, not via proxy: {forged:?}");
    let why = forged
        .err()
        .context("forged headers must not identify anyone")?;
    ensure!(why.contains("10.0.0.9:40000 is not a peer"), "{why}");

    // 3. Through the proxy, but the proxy did not identify the caller.
    let provider = TrustedHeaderIdentity::from_request(proxy, via_proxy, &[]);
    let anonymous = decide(&provider, via_proxy, &mappings).await?;
    println!("no identity header:   {anonymous:?}");
    ensure!(
        anonymous.is_err(),
        "an unidentified request must be refused"
    );
    Ok(())
}
