//! GrantMapping objects as the server reads them from the API server (`tka_core::policy`:
//! the CRD type, [`validate_mapping`], resolution against it).
//!
//! Input: a GrantMapping as JSON (`{"metadata": {"name": …}, "spec": {…}}`). Properties:
//! - an accepted object written back as JSON reads as the same object;
//! - a mapping [`validate_mapping`] accepts has a valid role name, binds something, and names
//!   only DNS-label namespaces outside the protected ones, valid TTLs and one field per
//!   subject; every duration string survives its own printing;
//! - a login with a grant for the mapping's role succeeds only when the mapping is valid, and
//!   then binds exactly the mapping's (non-empty) roles in its namespaces, for no longer than
//!   the mapping's, the grant's and the server's limits.

use jiff::Timestamp;
use serde_json::{Value, json};
use tka_core::identity::wire;
use tka_core::policy::{GrantMapping, MappingProblem, validate_mapping};
use tka_core::{
    CapabilityNames, ClusterName, MappingView, ParsedGrants, PolicyContext, PolicySettings,
    ResolveRequest, RoleName, Ttl, resolve,
};

use crate::support::{check_duration, strings};

/// The target.
pub fn target(data: &[u8]) {
    let Ok(mapping) = serde_json::from_slice::<GrantMapping>(data) else {
        return;
    };
    let value = serde_json::to_value(&mapping).expect("a GrantMapping serialises");
    let again: GrantMapping =
        serde_json::from_value(value.clone()).expect("a written GrantMapping reads back");
    assert_eq!(serde_json::to_value(&again).unwrap(), value);
    assert_eq!(again.spec, mapping.spec);

    let mut texts = Vec::new();
    strings(&value, &mut texts);
    texts.iter().for_each(|t| check_duration(t));

    let Some(name) = mapping.metadata.name.clone() else {
        return;
    };
    let settings = PolicySettings::new(
        "tka-system",
        Ttl::parse("15m").unwrap(),
        Ttl::parse("12h").unwrap(),
    );
    let spec = &mapping.spec;
    let problems = validate_mapping(&name, spec, &settings.forbidden_namespaces);
    for problem in &problems {
        let _ = (problem.to_string(), problem.condition_reason());
    }
    if problems.is_empty() {
        assert!(RoleName::new(name.as_str()).is_ok());
        assert!(
            !spec.cluster_roles.is_empty()
                || spec.namespaced.iter().any(|g| !g.namespaces.is_empty())
        );
        for grant in &spec.namespaced {
            assert!(!grant.cluster_role.trim().is_empty());
            for namespace in &grant.namespaces {
                assert!(tka_core::domain::is_dns1123_label(namespace));
                assert!(!settings.forbidden_namespaces.contains(namespace));
            }
        }
        for ttl in [&spec.default_ttl, &spec.max_ttl].into_iter().flatten() {
            assert!(Ttl::parse(ttl).is_ok());
        }
        for subject in &spec.subjects {
            let set = [&subject.user, &subject.tag, &subject.group];
            assert_eq!(set.iter().filter(|f| f.is_some()).count(), 1);
        }
    }
    let Ok(role) = RoleName::new(name.as_str()) else {
        return;
    };
    login_with(
        &role,
        MappingView::new(role.clone(), spec.clone()),
        &problems,
        &settings,
    );
}

fn login_with(
    role: &RoleName,
    view: MappingView,
    problems: &[MappingProblem],
    settings: &PolicySettings,
) {
    let grant_max = Ttl::parse("6h").unwrap();
    let body = json!({
        "Node": {"StableID": "nFuzzCNTRL", "Name": "ci.example.ts.net.", "Tags": ["tag:ci"]},
        "UserProfile": {"ID": 1, "LoginName": "tagged-devices"},
        "CapMap": {"tka.dev/cap/kubernetes": [
            {"role": role.as_str(), "maxTTL": grant_max.to_string()},
        ]},
    });
    let identity = wire::parse_whois(
        &serde_json::to_vec(&body).unwrap(),
        &CapabilityNames::default(),
    )
    .unwrap();
    let user_body = {
        let mut user = body;
        user["Node"]["Tags"] = Value::Array(Vec::new());
        user["UserProfile"]["LoginName"] = json!("alice@example.com");
        user["UserProfile"]["Groups"] = json!(["group:sre"]);
        user
    };
    let user = wire::parse_whois(
        &serde_json::to_vec(&user_body).unwrap(),
        &CapabilityNames::default(),
    )
    .unwrap();
    let mappings = [view];
    let cluster = ClusterName::new("prod").unwrap();
    for identity in [&identity, &user] {
        let grants = ParsedGrants::from_identity(identity);
        let request = ResolveRequest {
            context: PolicyContext {
                identity,
                grants: &grants,
                mappings: &mappings,
                cluster: &cluster,
                settings,
            },
            role: Some(role),
            ttl: None,
            now: Timestamp::from_second(1_800_000_000).unwrap(),
        };
        match resolve(&request) {
            Ok(decision) => {
                assert!(
                    problems.is_empty(),
                    "a mapping with problems {problems:?} was used"
                );
                let spec = &mappings[0].spec;
                assert!(decision.ttl <= settings.max_ttl && decision.ttl <= grant_max);
                if let Some(max) = spec.max_ttl.as_deref() {
                    assert!(decision.ttl <= Ttl::parse(max).unwrap());
                }
                for r in &decision.cluster_roles {
                    assert!(spec.cluster_roles.contains(r));
                }
                for binding in &decision.namespaced {
                    assert!(!settings.forbidden_namespaces.contains(&binding.namespace));
                    assert!(
                        spec.namespaced
                            .iter()
                            .any(|g| g.cluster_role == binding.cluster_role
                                && g.namespaces.contains(&binding.namespace))
                    );
                }
            }
            Err(denial) => {
                let _ = denial.to_string();
            }
        }
    }
}
