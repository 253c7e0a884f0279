//! The fixed inputs of the benchmarks: one caller, one cluster's GrantMappings, a large
//! kubeconfig, a cached token. Pure data; must not read the clock or the file system.

use std::fmt::Write as _;

use jiff::{SignedDuration, Timestamp};
use serde_json::{Value, json};
use tka_core::api::ClusterEndpoint;
use tka_core::endpoint::ServerUrl;
use tka_core::kubeconfig::{ContextTemplate, EntryOptions, LoginEntries, UserCredential};
use tka_core::policy::{NamespacedGrant, Subject};
use tka_core::token_cache::{CacheKey, CachedToken};
use tka_core::{
    ClusterName, GrantMappingSpec, Identity, LoginName, MappingView, NodeId, NodeInfo,
    PolicySettings, RoleName, Secret, Ttl, UserId, UserInfo,
};

use crate::FixtureError;

/// The cluster every fixture is about.
pub const CLUSTER: &str = "prod-eu";
/// The tka server of the kubeconfig and cache fixtures.
pub const SERVER: &str = "http://tka-prod-eu";
/// The local identity of the cache fixture.
pub const DEVICE: &str = "laptop.tail1234.ts.net";
/// "Now" for every fixture that needs a time.
pub const NOW: &str = "2026-03-01T12:00:00Z";
/// Bytes in a fake ServiceAccount token: about what a real projected token weighs.
pub const TOKEN_BYTES: usize = 1_000;

/// [`NOW`], parsed.
pub fn now() -> Result<Timestamp, FixtureError> {
    NOW.parse().map_err(|e| FixtureError::new("NOW", e))
}

/// The cluster name.
pub fn cluster() -> Result<ClusterName, FixtureError> {
    ClusterName::new(CLUSTER).map_err(|e| FixtureError::new("cluster", e))
}

/// Five capability values as a policy file would grant them: one cluster glob, explicit
/// cluster lists, TTL bounds and priorities.
pub fn capability_values() -> Vec<Value> {
    vec![
        json!({"role": "sre", "clusters": ["prod-*"], "maxTTL": "4h"}),
        json!({"role": "viewer"}),
        json!({"role": "deployer", "clusters": ["prod-eu", "staging"], "priority": 5}),
        json!({"role": "oncall", "clusters": ["prod-eu", "prod-us"], "maxTTL": "8h", "priority": 10}),
        json!({"role": "auditor", "clusters": ["dev"]}),
    ]
}

/// alice on her laptop, holding [`capability_values`].
pub fn identity(node: &str) -> Result<Identity, FixtureError> {
    let err = |e: tka_core::DomainError| FixtureError::new("identity", e);
    Ok(Identity {
        user: UserInfo {
            id: UserId(101),
            login_name: LoginName::new("alice@example.com").map_err(err)?,
            display_name: "Alice".to_owned(),
        },
        node: NodeInfo {
            stable_id: NodeId::new(node).map_err(err)?,
            name: "alice-laptop.example.ts.net".to_owned(),
            addresses: vec![
                "100.64.0.10"
                    .parse()
                    .map_err(|e| FixtureError::new("ip", e))?,
            ],
            tags: Vec::new(),
        },
        groups: vec!["group:sre".to_owned()],
        capabilities: capability_values(),
        compat_capabilities: Vec::new(),
    })
}

/// Twenty GrantMappings: the five roles alice holds and fifteen team roles she does not, some
/// narrowed by subjects.
pub fn mappings() -> Result<Vec<MappingView>, FixtureError> {
    let mut out = Vec::with_capacity(20);
    let mut add = |name: String, spec: GrantMappingSpec| -> Result<(), FixtureError> {
        let role = RoleName::new(name).map_err(|e| FixtureError::new("mapping", e))?;
        out.push(MappingView::new(role, spec));
        Ok(())
    };
    let namespaced = |role: &str, namespaces: &[&str]| NamespacedGrant {
        cluster_role: role.to_owned(),
        namespaces: namespaces.iter().map(|n| (*n).to_owned()).collect(),
    };
    add(
        "sre".into(),
        GrantMappingSpec {
            cluster_roles: vec!["view".into()],
            namespaced: vec![namespaced("edit", &["team-a", "team-b", "monitoring"])],
            default_ttl: Some("1h".into()),
            max_ttl: Some("8h".into()),
            ..Default::default()
        },
    )?;
    add(
        "viewer".into(),
        GrantMappingSpec {
            cluster_roles: vec!["view".into()],
            ..Default::default()
        },
    )?;
    add(
        "deployer".into(),
        GrantMappingSpec {
            namespaced: vec![
                namespaced("edit", &["apps", "jobs"]),
                namespaced("view", &["ingress"]),
            ],
            default_ttl: Some("30m".into()),
            ..Default::default()
        },
    )?;
    add(
        "oncall".into(),
        GrantMappingSpec {
            subjects: vec![Subject {
                group: Some("group:sre".into()),
                ..Default::default()
            }],
            cluster_roles: vec!["view".into(), "tka-oncall-debug".into()],
            namespaced: vec![namespaced("admin", &["team-a", "apps"])],
            default_ttl: Some("2h".into()),
            max_ttl: Some("12h".into()),
        },
    )?;
    add(
        "auditor".into(),
        GrantMappingSpec {
            cluster_roles: vec!["tka-audit-read".into()],
            ..Default::default()
        },
    )?;
    for i in 0..15 {
        let team = format!("team-{i:02}");
        add(
            format!("{team}-dev"),
            GrantMappingSpec {
                subjects: vec![Subject {
                    user: Some(format!("lead-{i}@example.com")),
                    ..Default::default()
                }],
                namespaced: vec![namespaced("edit", &[team.as_str(), "shared"])],
                max_ttl: Some("4h".into()),
                ..Default::default()
            },
        )?;
    }
    Ok(out)
}

/// The server's bounds: default 1h, max 8h, namespace `tka-system`.
pub fn policy_settings() -> Result<PolicySettings, FixtureError> {
    let ttl = |s| Ttl::parse(s).map_err(|e| FixtureError::new("ttl", e));
    Ok(PolicySettings::new("tka-system", ttl("1h")?, ttl("8h")?))
}

/// The cluster endpoint the server hands out.
pub fn endpoint() -> Result<ClusterEndpoint, FixtureError> {
    Ok(ClusterEndpoint {
        name: cluster()?,
        server: "https://10.0.0.1:6443".to_owned(),
        certificate_authority_data: Some("LS0tLS1CRUdJTiBDRVJUSUZJQ0FURS0tLS0tCg==".to_owned()),
        proxy: None,
        direct_tokens: true,
    })
}

/// The tka server URL.
pub fn server() -> Result<ServerUrl, FixtureError> {
    ServerUrl::parse(SERVER).map_err(|e| FixtureError::new("server", e))
}

/// The entries a login to [`CLUSTER`] writes (exec plugin, default context template).
pub fn login_entries(template: &ContextTemplate) -> Result<LoginEntries, FixtureError> {
    let server = server()?;
    LoginEntries::new(
        &endpoint()?,
        EntryOptions {
            template,
            server: &server,
            identity: Some(DEVICE),
            socks5: None,
            namespace: None,
            credential: UserCredential::Exec {
                command: "/usr/local/bin/tka".to_owned(),
            },
        },
    )
    .map_err(|e| FixtureError::new("login entries", e))
}

/// A kubeconfig with `n` foreign clusters, users and contexts (certificates, exec plugins,
/// namespaces, extensions), as a long-lived developer machine has.
pub fn kubeconfig_text(n: usize) -> String {
    let mut clusters = String::new();
    let mut users = String::new();
    let mut contexts = String::new();
    for i in 0..n {
        let _ = write!(
            clusters,
            "- name: cluster-{i}\n  cluster:\n    server: https://10.{}.{}.1:6443\n    certificate-authority-data: {}\n    extensions:\n    - name: client.authentication.k8s.io/exec\n      extension: {{audience: cluster-{i}}}\n",
            i / 256,
            i % 256,
            "QUJD".repeat(64),
        );
        let _ = write!(
            users,
            "- name: user-{i}\n  user:\n    exec:\n      apiVersion: client.authentication.k8s.io/v1\n      command: gke-gcloud-auth-plugin\n      args: [--cluster, cluster-{i}, --verbose]\n      interactiveMode: IfAvailable\n      provideClusterInfo: true\n",
        );
        let _ = write!(
            contexts,
            "- name: ctx-{i}\n  context:\n    cluster: cluster-{i}\n    user: user-{i}\n    namespace: ns-{i}\n",
        );
    }
    format!(
        "apiVersion: v1\nkind: Config\npreferences: {{}}\ncurrent-context: ctx-0\nclusters:\n{clusters}users:\n{users}contexts:\n{contexts}"
    )
}

/// The cache key of the cache fixture.
pub fn cache_key() -> Result<CacheKey, FixtureError> {
    Ok(CacheKey {
        server: server()?,
        cluster: cluster()?,
        identity: Some(DEVICE.to_owned()),
    })
}

/// A token of [`TOKEN_BYTES`] shaped like a JWT (base64url text with two dots).
pub fn token() -> Secret<String> {
    let part = TOKEN_BYTES / 3;
    let mut s = String::with_capacity(TOKEN_BYTES);
    s.push_str(&"e".repeat(part));
    s.push('.');
    s.push_str(&"y".repeat(part));
    s.push('.');
    s.push_str(&"J".repeat(TOKEN_BYTES - 2 * part - 2));
    Secret::new(s)
}

/// A cache entry for [`cache_key`], fetched 5 minutes before `now` and valid 10 more minutes.
pub fn cached_token(now: Timestamp) -> Result<CachedToken, FixtureError> {
    Ok(CachedToken::new(
        &cache_key()?,
        token(),
        now + SignedDuration::from_mins(10),
        now - SignedDuration::from_mins(5),
        Some(now + SignedDuration::from_hours(1)),
    ))
}
