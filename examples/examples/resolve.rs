//! Embeds tka-core: asks a (fake) tailscaled who is calling over its real LocalAPI wire protocol,
//! then resolves the caller's grants against the cluster's GrantMappings and prints the Decision.
//!
//! It only reads and prints; it must not create anything in a cluster.
//!
//! Run with `cargo run -p tka-examples --example resolve`.

#![allow(clippy::print_stdout)] // printing the result is what this example is for

use std::net::SocketAddr;

use anyhow::Context;
use serde_json::json;
use tka_core::identity::DEFAULT_CAPABILITY;
use tka_core::policy::{NamespacedGrant, Subject};
use tka_core::{
    ClusterName, GrantMappingSpec, IdentityProvider, MappingView, ParsedGrants, PolicyContext,
    PolicySettings, ResolveRequest, RoleName, Ttl, resolve,
};
use tka_testkit::tailnet::{FakeTailnet, PeerSpec};

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    // A tailnet with one person's laptop, granted two roles by the policy file.
    let tailnet = FakeTailnet::new();
    let laptop = tailnet.add(
        PeerSpec::user("alice@example.com", "alice-laptop")
            .capability(DEFAULT_CAPABILITY, json!({"role": "view", "priority": 1}))
            .capability(
                DEFAULT_CAPABILITY,
                json!({"role": "sre", "clusters": ["prod-*"], "maxTTL": "4h", "priority": 10}),
            ),
    );
    // The laptop's connection reaches the server from this loopback address.
    let remote: SocketAddr = "127.0.0.1:40123".parse()?;
    tailnet.bind_connection(remote, &laptop.stable_id)?;

    // Serve the LocalAPI on a Unix socket and ask it, as tka-server does.
    let daemon = tailnet.serve().await?;
    let identity = daemon.client().whois(remote).await?;
    println!("caller: {}", identity.describe());

    // The cluster's half of the policy.
    let mappings = vec![
        MappingView::new(
            RoleName::new("view")?,
            GrantMappingSpec {
                cluster_roles: vec!["view".into()],
                default_ttl: Some("1h".into()),
                ..Default::default()
            },
        ),
        MappingView::new(
            RoleName::new("sre")?,
            GrantMappingSpec {
                subjects: vec![Subject {
                    user: Some("alice@example.com".into()),
                    ..Default::default()
                }],
                cluster_roles: vec!["view".into()],
                namespaced: vec![NamespacedGrant {
                    cluster_role: "edit".into(),
                    namespaces: vec!["payments".into()],
                }],
                default_ttl: Some("1h".into()),
                max_ttl: Some("8h".into()),
            },
        ),
    ];
    let settings = PolicySettings::new("tka-system", Ttl::parse("1h")?, Ttl::parse("12h")?);
    let cluster = ClusterName::new("prod-eu")?;
    let grants = ParsedGrants::from_identity(&identity);
    let context = PolicyContext {
        identity: &identity,
        grants: &grants,
        mappings: &mappings,
        cluster: &cluster,
        settings: &settings,
    };
    let request = ResolveRequest {
        context,
        role: None,
        ttl: Some("6h".into()),
        now: "2026-01-01T09:00:00Z".parse()?,
    };
    let decision = resolve(&request).context("the caller should be granted a role")?;
    println!("{}", serde_json::to_string_pretty(&decision)?);
    Ok(())
}
