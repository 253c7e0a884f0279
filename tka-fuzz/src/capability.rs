//! Capability values from the tailnet policy file (`tka_core::capability`), and what policy
//! resolution makes of them.
//!
//! Input: a JSON document (a list is the list of values, anything else one value), optionally
//! followed by a NUL and a requested TTL as a user types it. Properties:
//! - with either schema every value is a grant or a skipped value, in order, and a skipped
//!   value prints;
//! - a grant's `maxTTL` is a TTL (1 s to [`Ttl::MAX`]) and every duration string survives its
//!   own printing;
//! - resolution does not depend on the order or duplication of the values (DESIGN §4.4): the
//!   values reversed and doubled give the same decision, or a denial of the same kind, and
//!   the same usable roles;
//! - a decision binds nothing in a protected namespace and lasts no longer than the server's
//!   maximum.

use std::collections::BTreeSet;

use jiff::Timestamp;
use serde_json::Value;
use tka_core::capability::{CapabilitySchema, parse_values};
use tka_core::identity::wire;
use tka_core::policy::{GrantMappingSpec, NamespacedGrant, Subject};
use tka_core::{
    CapabilityNames, ClusterName, Identity, MappingView, ParsedGrants, PolicyContext,
    PolicySettings, ResolveRequest, RoleName, Ttl, TtlRequest, available_roles, resolve,
};

use crate::support::{check_duration, split_nul, strings};

/// The target.
pub fn target(data: &[u8]) {
    let (json, ttl) = split_nul(data);
    let Ok(document) = serde_json::from_slice::<Value>(json) else {
        return;
    };
    let values = match document {
        Value::Array(values) => values,
        other => vec![other],
    };
    let mut texts = Vec::new();
    for value in &values {
        strings(value, &mut texts);
    }
    texts.iter().for_each(|t| check_duration(t));
    let ttl = ttl.and_then(|t| std::str::from_utf8(t).ok());
    if let Some(ttl) = ttl {
        check_duration(ttl);
    }

    for schema in [CapabilitySchema::Primary, CapabilitySchema::Compat] {
        let (grants, skipped) = parse_values(schema, &values);
        let mut indexes: Vec<usize> = grants
            .iter()
            .map(|g| g.index)
            .chain(skipped.iter().map(|s| s.index))
            .collect();
        indexes.sort_unstable();
        assert_eq!(indexes, (0..values.len()).collect::<Vec<_>>());
        for grant in &grants {
            assert_eq!(grant.schema, schema);
            if let Some(max) = grant.max_ttl {
                assert!(max.as_secs() >= 1 && max <= Ttl::MAX);
            }
        }
        for s in &skipped {
            assert_eq!(s.value, values[s.index]);
            assert!(!s.reason.is_empty());
            let _ = s.to_string();
        }
    }

    resolution_ignores_order(&values, ttl);
}

fn identity(capabilities: &[Value]) -> Identity {
    let body = serde_json::json!({
        "Node": {"StableID": "nFuzzCNTRL", "Name": "laptop.example.ts.net.",
                 "Addresses": ["100.64.0.7/32"]},
        "UserProfile": {"ID": 7, "LoginName": "alice@example.com", "Groups": ["group:sre"]},
        "CapMap": {
            "tka.dev/cap/kubernetes": capabilities,
            "specht-labs.de/cap/tka": capabilities,
        },
    });
    let names = CapabilityNames {
        primary: "tka.dev/cap/kubernetes".to_owned(),
        compat: Some("specht-labs.de/cap/tka".to_owned()),
    };
    wire::parse_whois(&serde_json::to_vec(&body).unwrap(), &names).unwrap()
}

fn mappings() -> Vec<MappingView> {
    let namespaced = |role: &str, namespaces: &[&str]| NamespacedGrant {
        cluster_role: role.to_owned(),
        namespaces: namespaces.iter().map(|n| (*n).to_owned()).collect(),
    };
    let specs = [
        (
            "viewer",
            GrantMappingSpec {
                cluster_roles: vec!["view".to_owned()],
                ..Default::default()
            },
        ),
        (
            "sre",
            GrantMappingSpec {
                namespaced: vec![namespaced("edit", &["team-a", "team-b"])],
                default_ttl: Some("1h".to_owned()),
                max_ttl: Some("8h".to_owned()),
                ..Default::default()
            },
        ),
        (
            "ci",
            GrantMappingSpec {
                subjects: vec![Subject {
                    tag: Some("tag:ci".to_owned()),
                    ..Default::default()
                }],
                namespaced: vec![namespaced("edit", &["ci"])],
                ..Default::default()
            },
        ),
        (
            "system",
            GrantMappingSpec {
                namespaced: vec![namespaced("admin", &["kube-system", "team-a"])],
                ..Default::default()
            },
        ),
    ];
    specs
        .into_iter()
        .map(|(name, spec)| MappingView::new(RoleName::new(name).unwrap(), spec))
        .collect()
}

fn resolution_ignores_order(values: &[Value], ttl: Option<&str>) {
    let forward = identity(values);
    let mut shuffled_values: Vec<Value> = values.iter().rev().cloned().collect();
    shuffled_values.extend(values.iter().cloned());
    let shuffled = identity(&shuffled_values);
    let mappings = mappings();
    let cluster = ClusterName::new("prod-eu").unwrap();
    let settings = PolicySettings::new(
        "tka-system",
        Ttl::parse("15m").unwrap(),
        Ttl::parse("12h").unwrap(),
    );
    let now = Timestamp::from_second(1_800_000_000).unwrap();
    let forbidden: BTreeSet<&str> = settings
        .forbidden_namespaces
        .iter()
        .map(String::as_str)
        .collect();

    let roles: Vec<Option<RoleName>> = std::iter::once(None)
        .chain(mappings.iter().map(|m| Some(m.name.clone())))
        .collect();
    let outcome = |identity: &Identity, role: Option<&RoleName>| {
        let grants = ParsedGrants::from_identity(identity);
        let context = PolicyContext {
            identity,
            grants: &grants,
            mappings: &mappings,
            cluster: &cluster,
            settings: &settings,
        };
        let listing = available_roles(&context);
        let request = ResolveRequest {
            context,
            role,
            ttl: ttl.map(TtlRequest::Text),
            now,
        };
        let decision = resolve(&request);
        if let Err(denial) = &decision {
            let _ = denial.to_string();
        }
        (decision.map_err(|d| d.kind), listing.roles)
    };
    for role in &roles {
        let (decision, listing) = outcome(&forward, role.as_ref());
        let (again, again_listing) = outcome(&shuffled, role.as_ref());
        assert_eq!(
            decision, again,
            "values reversed and doubled resolve differently (role {role:?})"
        );
        assert_eq!(
            listing, again_listing,
            "values reversed and doubled list other roles"
        );
        if let Ok(decision) = decision {
            assert!(decision.ttl <= settings.max_ttl);
            for binding in &decision.namespaced {
                assert!(
                    !forbidden.contains(binding.namespace.as_str()),
                    "a decision binds in protected namespace {}",
                    binding.namespace
                );
            }
            if let Some(role) = role {
                assert_eq!(&decision.role, role);
            }
        }
    }
}
