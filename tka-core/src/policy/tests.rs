//! Behaviour of policy resolution as a user sees it: which role a login gets, for how long, and
//! what a refusal says. Every refusal is paired with the smallest change that makes it allowed.

use jiff::{SignedDuration, Timestamp};
use serde_json::{Value, json};

use super::*;
use crate::capability::ParsedGrants;
use crate::domain::{ClusterName, Identity, LoginName, NodeId, NodeInfo, Tag, UserId, UserInfo};

fn ttl(s: &str) -> Ttl {
    Ttl::parse(s).unwrap()
}

fn role(s: &str) -> RoleName {
    RoleName::new(s).unwrap()
}

fn now() -> Timestamp {
    "2026-03-01T12:00:00Z".parse().unwrap()
}

fn settings() -> PolicySettings {
    PolicySettings::new("tka-system", ttl("1h"), ttl("8h"))
}

fn alice(caps: Vec<Value>) -> Identity {
    Identity {
        user: UserInfo {
            id: UserId(101),
            login_name: LoginName::new("alice@example.com").unwrap(),
            display_name: "Alice".into(),
        },
        node: NodeInfo {
            stable_id: NodeId::new("nALICELAPTOP").unwrap(),
            name: "alice-laptop.tail.ts.net".into(),
            addresses: vec!["100.64.0.1".parse().unwrap()],
            tags: vec![],
        },
        groups: vec!["group:sre".into()],
        capabilities: caps,
        compat_capabilities: vec![],
    }
}

/// A tagged device: on Tailscale's service every one reports the shared `tagged-devices` profile.
fn tagged(node: &str, tags: &[&str], caps: Vec<Value>) -> Identity {
    Identity {
        user: UserInfo {
            id: UserId(9_000),
            login_name: LoginName::new("tagged-devices").unwrap(),
            display_name: "Tagged Devices".into(),
        },
        node: NodeInfo {
            stable_id: NodeId::new(node).unwrap(),
            name: format!("{node}.tail.ts.net"),
            addresses: vec![],
            tags: tags.iter().map(|t| Tag::new(*t).unwrap()).collect(),
        },
        groups: vec!["group:sre".into()],
        capabilities: caps,
        compat_capabilities: vec![],
    }
}

fn view_mapping(name: &str) -> MappingView {
    MappingView::new(
        role(name),
        GrantMappingSpec {
            cluster_roles: vec!["view".into()],
            ..Default::default()
        },
    )
}

fn mapping(name: &str, spec: GrantMappingSpec) -> MappingView {
    MappingView::new(role(name), spec)
}

fn subject_tag(tag: &str) -> Subject {
    Subject {
        tag: Some(tag.into()),
        ..Default::default()
    }
}

fn subject_user(user: &str) -> Subject {
    Subject {
        user: Some(user.into()),
        ..Default::default()
    }
}

fn subject_group(group: &str) -> Subject {
    Subject {
        group: Some(group.into()),
        ..Default::default()
    }
}

/// One login: the identity's own capability values, these mappings, this cluster.
#[derive(Clone)]
struct Login<'a> {
    identity: Identity,
    mappings: Vec<MappingView>,
    cluster: &'a str,
    role: Option<&'a str>,
    ttl: Option<&'a str>,
    settings: PolicySettings,
}

impl<'a> Login<'a> {
    fn new(identity: Identity, mappings: Vec<MappingView>) -> Self {
        Self {
            identity,
            mappings,
            cluster: "prod",
            role: None,
            ttl: None,
            settings: settings(),
        }
    }

    fn cluster(&self, cluster: &'a str) -> Self {
        let mut next = self.clone();
        next.cluster = cluster;
        next
    }

    fn role(&self, role: &'a str) -> Self {
        let mut next = self.clone();
        next.role = Some(role);
        next
    }

    fn ttl(&self, ttl: &'a str) -> Self {
        let mut next = self.clone();
        next.ttl = Some(ttl);
        next
    }

    fn run(&self) -> Result<Decision, Denial> {
        let grants = ParsedGrants::from_identity(&self.identity);
        let cluster = ClusterName::new(self.cluster).unwrap();
        let requested = self.role.map(role);
        resolve(&ResolveRequest {
            context: PolicyContext {
                identity: &self.identity,
                grants: &grants,
                mappings: &self.mappings,
                cluster: &cluster,
                settings: &self.settings,
            },
            role: requested.as_ref(),
            ttl: self.ttl.map(TtlRequest::Text),
            now: now(),
        })
    }

    fn listing(&self) -> RoleListing {
        let grants = ParsedGrants::from_identity(&self.identity);
        let cluster = ClusterName::new(self.cluster).unwrap();
        available_roles(&PolicyContext {
            identity: &self.identity,
            grants: &grants,
            mappings: &self.mappings,
            cluster: &cluster,
            settings: &self.settings,
        })
    }
}

fn granted_role(result: &Result<Decision, Denial>) -> &str {
    match result {
        Ok(d) => d.role.as_str(),
        Err(e) => panic!("expected a decision, got a denial: {e}"),
    }
}

fn denial(result: Result<Decision, Denial>) -> Denial {
    match result {
        Ok(d) => panic!("expected a denial, got {d:?}"),
        Err(e) => e,
    }
}

// ---------------------------------------------------------------------------------------------
// Requested roles

#[test]
fn a_requested_role_that_is_granted_is_used() {
    let login = Login::new(
        alice(vec![
            json!({"role": "read-only"}),
            json!({"role": "sre", "priority": 1}),
        ]),
        vec![view_mapping("read-only"), view_mapping("sre")],
    );
    // Without a request the higher priority wins; the request overrides it.
    assert_eq!(granted_role(&login.run()), "sre");
    assert_eq!(granted_role(&login.role("read-only").run()), "read-only");
}

#[test]
fn a_requested_role_that_is_not_granted_is_denied_naming_the_grants_held() {
    let login = Login::new(
        alice(vec![json!({"role": "read-only"})]),
        vec![view_mapping("read-only"), view_mapping("admin")],
    );
    assert_eq!(granted_role(&login.role("read-only").run()), "read-only");

    let denied = denial(login.role("admin").run());
    assert_eq!(denied.kind, DenialKind::NoGrantForRole);
    assert_eq!(
        denied.to_string(),
        "no grant for role 'admin' on cluster 'prod'; your grants: read-only"
    );
    assert_eq!(denied.listing.roles.len(), 1);
    assert!(!denied.kind.is_bad_request());
}

#[test]
fn a_denial_lists_usable_and_unusable_grants() {
    let identity = alice(vec![
        json!({"role": "read-only"}),
        json!({"role": "sre"}),
        json!({"role": "ops", "clusters": ["staging"]}),
    ]);
    let mappings = vec![view_mapping("read-only")];
    let text = denial(
        Login::new(identity.clone(), mappings.clone())
            .role("admin")
            .run(),
    )
    .to_string();
    assert!(
        text.starts_with("no grant for role 'admin' on cluster 'prod'; your grants: read-only, sre (not usable: this cluster has no GrantMapping of that name)"),
        "{text}"
    );
    // `ops` is granted for another cluster only, so it is not one of the grants here.
    assert!(!text.contains("ops"), "{text}");
    assert_eq!(
        granted_role(&Login::new(identity, mappings).cluster("prod").run()),
        "read-only"
    );
}

#[test]
fn a_role_granted_for_other_clusters_says_where() {
    let identity = alice(vec![
        json!({"role": "admin", "clusters": ["staging-*"]}),
        json!({"role": "read-only"}),
    ]);
    let mappings = vec![view_mapping("admin"), view_mapping("read-only")];
    assert_eq!(
        granted_role(
            &Login::new(identity.clone(), mappings.clone())
                .cluster("staging-eu")
                .role("admin")
                .run()
        ),
        "admin"
    );
    let text = denial(Login::new(identity, mappings).role("admin").run()).to_string();
    assert_eq!(
        text,
        "no grant for role 'admin' on cluster 'prod' (your grant for role 'admin' applies only to clusters matching staging-*); your grants: read-only"
    );
}

#[test]
fn no_grants_at_all_says_how_to_get_one() {
    let mappings = vec![view_mapping("read-only")];
    let denied = denial(Login::new(alice(vec![]), mappings.clone()).run());
    assert_eq!(denied.kind, DenialKind::NoGrants);
    assert_eq!(
        denied.to_string(),
        "you have no tka grants (capability tka.dev/cap/kubernetes) for cluster 'prod'; ask your tailnet admin to add one to the policy file"
    );
    let with_role = denial(
        Login::new(alice(vec![]), mappings.clone())
            .role("read-only")
            .run(),
    );
    assert_eq!(with_role.kind, DenialKind::NoGrants);
    assert!(
        with_role
            .to_string()
            .starts_with("cannot use role 'read-only': you have no tka grants")
    );

    let mut compat = Login::new(alice(vec![]), mappings.clone());
    compat.settings = settings()
        .with_capability_names("example.com/cap/k8s", Some("specht-labs.de/cap/tka".into()));
    assert!(
        denial(compat.run())
            .to_string()
            .contains("(capability example.com/cap/k8s or specht-labs.de/cap/tka)")
    );

    assert_eq!(
        granted_role(&Login::new(alice(vec![json!({"role": "read-only"})]), mappings).run()),
        "read-only"
    );
}

#[test]
fn a_granted_role_without_a_mapping_is_denied() {
    let identity = alice(vec![json!({"role": "sre"})]);
    let denied = denial(
        Login::new(identity.clone(), vec![view_mapping("read-only")])
            .role("sre")
            .run(),
    );
    assert_eq!(denied.kind, DenialKind::NoMapping);
    assert_eq!(
        denied.to_string(),
        "role 'sre' cannot be used on cluster 'prod': this cluster has no GrantMapping named 'sre'; ask the cluster admin to create one"
    );
    assert_eq!(
        granted_role(
            &Login::new(identity, vec![view_mapping("sre")])
                .role("sre")
                .run()
        ),
        "sre"
    );
}

#[test]
fn a_mapping_the_server_marked_unusable_is_never_used() {
    let identity = alice(vec![
        json!({"role": "sre", "priority": 5}),
        json!({"role": "read-only"}),
    ]);
    let broken = vec![
        view_mapping("sre").unusable("ClusterRole 'sre-admin' is not in the bindable allowlist"),
        view_mapping("read-only"),
    ];
    let denied = denial(
        Login::new(identity.clone(), broken.clone())
            .role("sre")
            .run(),
    );
    assert_eq!(denied.kind, DenialKind::MappingUnusable);
    assert!(denied.to_string().contains(
        "GrantMapping 'sre' is not ready: ClusterRole 'sre-admin' is not in the bindable allowlist"
    ));
    // Without a request the lower-priority usable role is chosen instead.
    assert_eq!(
        granted_role(&Login::new(identity.clone(), broken).run()),
        "read-only"
    );
    let fixed = vec![view_mapping("sre"), view_mapping("read-only")];
    assert_eq!(granted_role(&Login::new(identity, fixed).run()), "sre");
}

#[test]
fn an_invalid_mapping_is_never_used() {
    let identity = alice(vec![json!({"role": "sre"})]);
    let bad = GrantMappingSpec {
        cluster_roles: vec!["view".into()],
        max_ttl: Some("a while".into()),
        ..Default::default()
    };
    let denied = denial(Login::new(identity.clone(), vec![mapping("sre", bad.clone())]).run());
    assert_eq!(denied.kind, DenialKind::NoUsableRole);
    let text = denied.to_string();
    assert!(text.starts_with("none of your grants can be used on cluster 'prod': 'sre': GrantMapping 'sre' is invalid (maxTTL \"a while\" is invalid"), "{text}");
    let requested = denial(
        Login::new(identity.clone(), vec![mapping("sre", bad.clone())])
            .role("sre")
            .run(),
    );
    assert_eq!(requested.kind, DenialKind::InvalidMapping);

    let good = GrantMappingSpec {
        max_ttl: Some("2h".into()),
        ..bad
    };
    assert_eq!(
        granted_role(&Login::new(identity, vec![mapping("sre", good)]).run()),
        "sre"
    );
}

// ---------------------------------------------------------------------------------------------
// Priority

#[test]
fn the_highest_priority_among_selecting_values_wins() {
    let mappings = vec![view_mapping("a"), view_mapping("b")];
    // `a` is selected by values of priority 1 and 10; its priority is the highest, 10.
    let identity = alice(vec![
        json!({"role": "a", "priority": 1}),
        json!({"role": "b", "priority": 5}),
        json!({"role": "a", "priority": 10}),
    ]);
    assert_eq!(
        granted_role(&Login::new(identity, mappings.clone()).run()),
        "a"
    );
    // A value that does not apply to this cluster does not lend its priority.
    let identity = alice(vec![
        json!({"role": "a", "priority": 1}),
        json!({"role": "b", "priority": 5}),
        json!({"role": "a", "priority": 100, "clusters": ["staging"]}),
    ]);
    assert_eq!(granted_role(&Login::new(identity, mappings).run()), "b");
}

#[test]
fn missing_priority_counts_as_zero() {
    let mappings = vec![view_mapping("a"), view_mapping("b")];
    let identity = alice(vec![
        json!({"role": "a"}),
        json!({"role": "b", "priority": -1}),
    ]);
    assert_eq!(
        granted_role(&Login::new(identity, mappings.clone()).run()),
        "a"
    );
    let identity = alice(vec![
        json!({"role": "a"}),
        json!({"role": "b", "priority": 1}),
    ]);
    assert_eq!(granted_role(&Login::new(identity, mappings).run()), "b");
}

#[test]
fn a_priority_tie_is_broken_by_mapping_name() {
    let identity = alice(vec![
        json!({"role": "zeta", "priority": 3}),
        json!({"role": "alpha", "priority": 3}),
    ]);
    let mappings = vec![view_mapping("zeta"), view_mapping("alpha")];
    assert_eq!(
        granted_role(&Login::new(identity.clone(), mappings.clone()).run()),
        "alpha"
    );
    let reversed = alice(vec![
        json!({"role": "alpha", "priority": 3}),
        json!({"role": "zeta", "priority": 3}),
    ]);
    let mappings_reversed = vec![view_mapping("alpha"), view_mapping("zeta")];
    assert_eq!(
        granted_role(&Login::new(reversed, mappings_reversed).run()),
        "alpha"
    );

    let listing = Login::new(identity, mappings).listing();
    let order: Vec<(&str, bool)> = listing
        .roles
        .iter()
        .map(|r| (r.role.as_str(), r.default))
        .collect();
    assert_eq!(order, [("alpha", true), ("zeta", false)]);
}

// ---------------------------------------------------------------------------------------------
// TTL

fn ttl_mapping(default_ttl: Option<&str>, max_ttl: Option<&str>) -> Vec<MappingView> {
    vec![mapping(
        "sre",
        GrantMappingSpec {
            cluster_roles: vec!["view".into()],
            default_ttl: default_ttl.map(Into::into),
            max_ttl: max_ttl.map(Into::into),
            ..Default::default()
        },
    )]
}

#[test]
fn ttl_defaults_to_the_mapping_then_the_server() {
    let identity = alice(vec![json!({"role": "sre"})]);
    let from_mapping = Login::new(identity.clone(), ttl_mapping(Some("30m"), None))
        .run()
        .unwrap();
    assert_eq!(from_mapping.ttl, ttl("30m"));
    assert_eq!(from_mapping.clamped, None);
    assert_eq!(
        from_mapping.expires_at,
        now().checked_add(SignedDuration::from_mins(30)).unwrap()
    );

    let from_server = Login::new(identity.clone(), ttl_mapping(None, None))
        .run()
        .unwrap();
    assert_eq!(from_server.ttl, ttl("1h"));
    assert_eq!(from_server.expires_at.to_string(), "2026-03-01T13:00:00Z");

    let requested = Login::new(identity, ttl_mapping(Some("30m"), None))
        .ttl("2h")
        .run()
        .unwrap();
    assert_eq!(requested.ttl, ttl("2h"));
    assert_eq!(requested.clamped, None);
}

#[test]
fn a_requested_ttl_is_clamped_to_the_grant_max_ttl() {
    let identity = alice(vec![json!({"role": "sre", "maxTTL": "2h"})]);
    let login = || Login::new(identity.clone(), ttl_mapping(None, Some("4h")));
    let within = login().ttl("2h").run().unwrap();
    assert_eq!((within.ttl, within.clamped), (ttl("2h"), None));

    let over = login().ttl("3h").run().unwrap();
    assert_eq!(over.ttl, ttl("2h"));
    assert_eq!(
        over.clamped,
        Some(TtlClamp {
            requested: ttl("3h"),
            granted: ttl("2h"),
            bound: "the maxTTL of your tailnet grant for role 'sre'".into()
        })
    );
    assert_eq!(over.expires_at.to_string(), "2026-03-01T14:00:00Z");
}

#[test]
fn the_smallest_grant_max_ttl_among_selecting_values_applies() {
    // One value has no maxTTL: it does not lift the bound of the other.
    let identity = alice(vec![
        json!({"role": "sre"}),
        json!({"role": "sre", "maxTTL": "3h"}),
        json!({"role": "sre", "maxTTL": "90m"}),
        json!({"role": "sre", "maxTTL": "10m", "clusters": ["staging"]}),
    ]);
    let decision = Login::new(identity, ttl_mapping(None, None))
        .ttl("5h")
        .run()
        .unwrap();
    assert_eq!(decision.ttl, ttl("90m"));
    assert_eq!(decision.clamped.map(|c| c.granted), Some(ttl("90m")));
}

#[test]
fn a_requested_ttl_is_clamped_to_the_mapping_max_ttl() {
    let identity = alice(vec![json!({"role": "sre", "maxTTL": "6h"})]);
    let ok = Login::new(identity.clone(), ttl_mapping(None, Some("4h")))
        .ttl("4h")
        .run()
        .unwrap();
    assert_eq!((ok.ttl, ok.clamped), (ttl("4h"), None));
    let over = Login::new(identity, ttl_mapping(None, Some("4h")))
        .ttl("5h")
        .run()
        .unwrap();
    assert_eq!(over.ttl, ttl("4h"));
    let clamp = over.clamped.unwrap();
    assert_eq!((clamp.requested, clamp.granted), (ttl("5h"), ttl("4h")));
    assert_eq!(clamp.bound, "the maxTTL of GrantMapping 'sre'");
}

#[test]
fn a_requested_ttl_is_clamped_to_the_server_max() {
    let identity = alice(vec![json!({"role": "sre", "maxTTL": "24h"})]);
    let ok = Login::new(identity.clone(), ttl_mapping(None, Some("12h")))
        .ttl("8h")
        .run()
        .unwrap();
    assert_eq!((ok.ttl, ok.clamped), (ttl("8h"), None));
    let over = Login::new(identity, ttl_mapping(None, Some("12h")))
        .ttl("10h")
        .run()
        .unwrap();
    assert_eq!(over.ttl, ttl("8h"));
    assert_eq!(
        over.clamped.unwrap().bound,
        "the server's maximum session length"
    );
}

#[test]
fn equal_bounds_are_all_reported() {
    let identity = alice(vec![json!({"role": "sre", "maxTTL": "8h"})]);
    let over = Login::new(identity, ttl_mapping(None, Some("8h")))
        .ttl("9h")
        .run()
        .unwrap();
    assert_eq!(
        over.clamped.unwrap().bound,
        "the maxTTL of your tailnet grant for role 'sre' and the maxTTL of GrantMapping 'sre' and the server's maximum session length"
    );
}

#[test]
fn a_default_above_the_limit_is_lowered_without_a_clamp_report() {
    let identity = alice(vec![json!({"role": "sre", "maxTTL": "20m"})]);
    let decision = Login::new(identity.clone(), ttl_mapping(Some("1h"), None))
        .run()
        .unwrap();
    assert_eq!(decision.ttl, ttl("20m"));
    assert_eq!(decision.clamped, None);
    let within = Login::new(
        alice(vec![json!({"role": "sre", "maxTTL": "2h"})]),
        ttl_mapping(Some("1h"), None),
    )
    .run()
    .unwrap();
    assert_eq!(within.ttl, ttl("1h"));

    let listing = Login::new(identity, ttl_mapping(Some("1h"), None)).listing();
    assert_eq!(listing.roles[0].default_ttl, ttl("20m"));
    assert_eq!(listing.roles[0].max_ttl, ttl("20m"));
}

#[test]
fn zero_negative_and_unparseable_ttls_are_rejected() {
    let login = || Login::new(alice(vec![json!({"role": "sre"})]), ttl_mapping(None, None));
    assert_eq!(login().ttl("90m").run().unwrap().ttl, ttl("90m"));
    for (bad, words) in [
        ("0s", "positive"),
        ("-1h", "positive"),
        ("soon", "invalid duration"),
        ("", "empty"),
    ] {
        let denied = denial(login().ttl(bad).run());
        assert_eq!(denied.kind, DenialKind::InvalidTtl, "{bad}");
        assert!(denied.kind.is_bad_request());
        let text = denied.to_string();
        assert!(text.contains(words), "{bad}: {text}");
        assert!(text.contains(&format!("invalid TTL {bad:?}")), "{text}");
    }
    // A parsed TTL is taken as is.
    let grants = ParsedGrants::from_identity(&login().identity);
    let l = login();
    let cluster = ClusterName::new("prod").unwrap();
    let decision = resolve(&ResolveRequest {
        context: PolicyContext {
            identity: &l.identity,
            grants: &grants,
            mappings: &l.mappings,
            cluster: &cluster,
            settings: &l.settings,
        },
        role: None,
        ttl: Some(ttl("45m").into()),
        now: now(),
    })
    .unwrap();
    assert_eq!(decision.ttl, ttl("45m"));
}

// ---------------------------------------------------------------------------------------------
// Clusters

#[test]
fn cluster_globs_decide_where_a_grant_applies() {
    let mappings = vec![view_mapping("sre")];
    let glob = alice(vec![json!({"role": "sre", "clusters": ["prod-*"]})]);
    assert_eq!(
        granted_role(
            &Login::new(glob.clone(), mappings.clone())
                .cluster("prod-eu")
                .run()
        ),
        "sre"
    );
    let denied = denial(
        Login::new(glob, mappings.clone())
            .cluster("staging-eu")
            .run(),
    );
    assert_eq!(denied.kind, DenialKind::NoGrants);

    let all = alice(vec![json!({"role": "sre"})]);
    for cluster in ["prod-eu", "staging-eu", "x"] {
        assert_eq!(
            granted_role(
                &Login::new(all.clone(), mappings.clone())
                    .cluster(cluster)
                    .run()
            ),
            "sre"
        );
    }

    let several = alice(vec![
        json!({"role": "sre", "clusters": ["prod-*", "staging-eu"]}),
    ]);
    assert_eq!(
        granted_role(
            &Login::new(several.clone(), mappings.clone())
                .cluster("staging-eu")
                .run()
        ),
        "sre"
    );
    assert_eq!(
        granted_role(
            &Login::new(several.clone(), mappings.clone())
                .cluster("prod-us")
                .run()
        ),
        "sre"
    );
    assert!(
        Login::new(several, mappings)
            .cluster("staging-us")
            .run()
            .is_err()
    );
}

// ---------------------------------------------------------------------------------------------
// Compatibility schema

#[test]
fn compat_values_grant_with_period_as_max_ttl() {
    let mut identity = alice(vec![]);
    identity.compat_capabilities = vec![json!({"role": "sre", "period": "4h", "priority": 100})];
    let decision = Login::new(identity, ttl_mapping(None, None))
        .ttl("6h")
        .run()
        .unwrap();
    assert_eq!(decision.role.as_str(), "sre");
    assert_eq!(decision.ttl, ttl("4h"));
    assert_eq!(
        decision.clamped.unwrap().bound,
        "the period of your tailnet grant for role 'sre'"
    );
}

#[test]
fn compat_values_are_not_read_from_the_primary_capability() {
    let compat_shaped = json!({"role": "sre", "period": "4h"});
    let denied =
        denial(Login::new(alice(vec![compat_shaped.clone()]), ttl_mapping(None, None)).run());
    assert_eq!(denied.kind, DenialKind::NoGrants);
    assert_eq!(denied.skipped().len(), 1);
    assert!(
        denied.to_string().contains("unknown key \"period\""),
        "{denied}"
    );

    let mut identity = alice(vec![]);
    identity.compat_capabilities = vec![compat_shaped];
    assert_eq!(
        granted_role(&Login::new(identity, ttl_mapping(None, None)).run()),
        "sre"
    );
}

#[test]
fn primary_values_are_not_read_from_the_compat_capability() {
    let primary_shaped = json!({"role": "sre", "clusters": ["prod"], "maxTTL": "1h"});
    let mut identity = alice(vec![]);
    identity.compat_capabilities = vec![primary_shaped.clone()];
    let denied = denial(Login::new(identity, ttl_mapping(None, None)).run());
    assert_eq!(denied.kind, DenialKind::NoGrants);
    assert_eq!(denied.skipped()[0].schema, crate::CapabilitySchema::Compat);
    assert!(
        denied.to_string().contains("unknown key \"clusters\""),
        "{denied}"
    );

    assert_eq!(
        granted_role(&Login::new(alice(vec![primary_shaped]), ttl_mapping(None, None)).run()),
        "sre"
    );
}

// ---------------------------------------------------------------------------------------------
// Fail-closed capability values

#[test]
fn malformed_values_never_grant_and_are_reported() {
    let mappings = vec![view_mapping("admin")];
    // Each malformed value, next to the well-formed value it was meant to be.
    let cases = [
        (
            json!({"role": "admin", "tier": "gold"}),
            json!({"role": "admin"}),
            "unknown key \"tier\"",
        ),
        (
            json!({"Role": "admin"}),
            json!({"role": "admin"}),
            "unknown key \"Role\"",
        ),
        (
            json!({"role": "admin", "cluster": ["prod"]}),
            json!({"role": "admin", "clusters": ["prod"]}),
            "did you mean \"clusters\"",
        ),
        (
            json!({"role": "admin", "priority": "10"}),
            json!({"role": "admin", "priority": 10}),
            "\"priority\" must be a number",
        ),
        (
            json!({"role": "admin", "clusters": "prod"}),
            json!({"role": "admin", "clusters": ["prod"]}),
            "\"clusters\" must be an array",
        ),
        (
            json!("admin"),
            json!({"role": "admin"}),
            "must be a JSON object",
        ),
        (
            json!(["admin"]),
            json!({"role": "admin"}),
            "must be a JSON object",
        ),
        (
            Value::Null,
            json!({"role": "admin"}),
            "must be a JSON object",
        ),
        (
            json!({"role": "admin", "maxTTL": "1 hour"}),
            json!({"role": "admin", "maxTTL": "1h"}),
            "\"maxTTL\"",
        ),
    ];
    for (bad, good, reason) in cases {
        let denied = denial(Login::new(alice(vec![bad.clone()]), mappings.clone()).run());
        assert_eq!(denied.kind, DenialKind::NoGrants, "{bad}");
        assert_eq!(denied.skipped().len(), 1, "{bad}");
        assert_eq!(denied.skipped()[0].value, bad);
        let text = denied.to_string();
        assert!(
            text.contains("1 capability value(s) were ignored"),
            "{text}"
        );
        assert!(text.contains(reason), "{bad}: {text}");
        assert_eq!(
            granted_role(&Login::new(alice(vec![good]), mappings.clone()).run()),
            "admin"
        );
    }
}

#[test]
fn a_typo_cannot_drop_a_restriction() {
    // `cluster` (sic) would otherwise mean "all clusters"; the value is skipped instead, so the
    // other, correctly restricted value decides.
    let identity = alice(vec![
        json!({"role": "admin", "cluster": ["dev"]}),
        json!({"role": "read-only"}),
    ]);
    let mappings = vec![view_mapping("admin"), view_mapping("read-only")];
    let denied = denial(
        Login::new(identity.clone(), mappings.clone())
            .role("admin")
            .run(),
    );
    assert_eq!(denied.kind, DenialKind::NoGrantForRole);
    assert!(
        denied
            .to_string()
            .contains("your grants: read-only; 1 capability value(s) were ignored"),
        "{denied}"
    );
    assert_eq!(
        granted_role(&Login::new(identity, mappings).run()),
        "read-only"
    );
}

// ---------------------------------------------------------------------------------------------
// Subjects

fn narrowed(subjects: Vec<Subject>) -> Vec<MappingView> {
    vec![mapping(
        "deploy",
        GrantMappingSpec {
            subjects,
            namespaced: vec![NamespacedGrant {
                cluster_role: "edit".into(),
                namespaces: vec!["apps".into()],
            }],
            ..Default::default()
        },
    )]
}

#[test]
fn subjects_narrow_a_grant() {
    let identity = alice(vec![json!({"role": "deploy"})]);
    let matching = narrowed(vec![
        subject_tag("tag:ci"),
        subject_user("alice@example.com"),
    ]);
    assert_eq!(
        granted_role(&Login::new(identity.clone(), matching).run()),
        "deploy"
    );

    let other = narrowed(vec![subject_tag("tag:ci"), subject_user("bob@example.com")]);
    let denied = denial(
        Login::new(identity.clone(), other.clone())
            .role("deploy")
            .run(),
    );
    assert_eq!(denied.kind, DenialKind::SubjectsDoNotMatch);
    assert_eq!(
        denied.to_string(),
        "role 'deploy' cannot be used on cluster 'prod': GrantMapping 'deploy' is limited to certain users, tags or groups and alice@example.com (alice-laptop.tail.ts.net) is not one of them"
    );
    assert_eq!(
        denial(Login::new(identity, other).run()).kind,
        DenialKind::NoUsableRole
    );
}

#[test]
fn subjects_never_widen_a_grant() {
    let matching = narrowed(vec![subject_user("alice@example.com")]);
    // Alice matches the subject but holds no grant for the role: denied.
    let denied = denial(
        Login::new(alice(vec![json!({"role": "other"})]), matching.clone())
            .role("deploy")
            .run(),
    );
    assert_eq!(denied.kind, DenialKind::NoGrantForRole);
    let denied = denial(Login::new(alice(vec![]), matching.clone()).run());
    assert_eq!(denied.kind, DenialKind::NoGrants);
    // A grant for a different cluster does not count either.
    let elsewhere = alice(vec![json!({"role": "deploy", "clusters": ["staging"]})]);
    assert!(Login::new(elsewhere, matching.clone()).run().is_err());

    assert_eq!(
        granted_role(&Login::new(alice(vec![json!({"role": "deploy"})]), matching).run()),
        "deploy"
    );
}

#[test]
fn group_subjects_match_the_callers_groups() {
    let identity = alice(vec![json!({"role": "deploy"})]);
    assert_eq!(
        granted_role(
            &Login::new(identity.clone(), narrowed(vec![subject_group("group:sre")])).run()
        ),
        "deploy"
    );
    let denied = denial(Login::new(identity, narrowed(vec![subject_group("group:dev")])).run());
    assert_eq!(
        denied.listing.unavailable[0].problem,
        RoleProblem::SubjectsDoNotMatch
    );
}

#[test]
fn a_tagged_device_acts_as_its_tags_not_as_a_user_or_group() {
    let caps = vec![json!({"role": "deploy"})];
    let ci = tagged("nCIRUNNER1", &["tag:ci"], caps);
    // The shared profile's login name and groups never match.
    for subject in [subject_user("tagged-devices"), subject_group("group:sre")] {
        let denied = denial(Login::new(ci.clone(), narrowed(vec![subject])).run());
        assert_eq!(
            denied.listing.unavailable[0].problem,
            RoleProblem::SubjectsDoNotMatch
        );
    }
    assert_eq!(
        granted_role(&Login::new(ci, narrowed(vec![subject_tag("tag:ci")])).run()),
        "deploy"
    );
}

#[test]
fn two_tagged_devices_with_one_profile_are_judged_by_their_own_tags() {
    let caps = vec![json!({"role": "deploy"})];
    let ci = tagged("nCIRUNNER1", &["tag:ci"], caps.clone());
    let web = tagged("nWEBSERVER", &["tag:web"], caps);
    // Same user ID and login name: only the node tells them apart.
    assert_eq!(ci.user, web.user);
    assert_ne!(ci.key(), web.key());

    let mappings = narrowed(vec![subject_tag("tag:ci")]);
    assert_eq!(
        granted_role(&Login::new(ci, mappings.clone()).run()),
        "deploy"
    );
    let denied = denial(Login::new(web, mappings).role("deploy").run());
    assert_eq!(denied.kind, DenialKind::SubjectsDoNotMatch);
    assert!(
        denied
            .to_string()
            .contains("tag:web (nWEBSERVER.tail.ts.net) is not one of them"),
        "{denied}"
    );
}

// ---------------------------------------------------------------------------------------------
// Forbidden namespaces and bindings

fn binding_into(namespace: &str) -> GrantMappingSpec {
    GrantMappingSpec {
        namespaced: vec![NamespacedGrant {
            cluster_role: "edit".into(),
            namespaces: vec!["apps".into(), namespace.into()],
        }],
        ..Default::default()
    }
}

#[test]
fn a_mapping_binding_into_a_protected_namespace_is_never_used() {
    let identity = alice(vec![
        json!({"role": "ops", "priority": 10}),
        json!({"role": "read-only"}),
    ]);
    for namespace in ["kube-system", "tka-system"] {
        let mappings = vec![
            mapping("ops", binding_into(namespace)),
            view_mapping("read-only"),
        ];
        let denied = denial(
            Login::new(identity.clone(), mappings.clone())
                .role("ops")
                .run(),
        );
        assert_eq!(denied.kind, DenialKind::ForbiddenNamespace, "{namespace}");
        assert!(
            denied
                .to_string()
                .contains(&format!("protected namespace(s) {namespace}")),
            "{denied}"
        );
        // The higher-priority role is skipped for the usable one.
        assert_eq!(
            granted_role(&Login::new(identity.clone(), mappings).run()),
            "read-only"
        );
        let problems = validate_mapping(
            "ops",
            &binding_into(namespace),
            &settings().forbidden_namespaces,
        );
        assert_eq!(
            problems,
            [MappingProblem::ForbiddenNamespace {
                namespace: namespace.into()
            }]
        );
    }
    let allowed = vec![
        mapping("ops", binding_into("team-a")),
        view_mapping("read-only"),
    ];
    assert_eq!(
        granted_role(&Login::new(identity.clone(), allowed.clone()).run()),
        "ops"
    );
    assert!(
        validate_mapping(
            "ops",
            &binding_into("team-a"),
            &settings().forbidden_namespaces
        )
        .is_empty()
    );

    // The deny list is configurable.
    let mut login = Login::new(identity, allowed);
    login.settings = settings().deny_namespaces(["team-a"]);
    assert_eq!(
        denial(login.role("ops").run()).kind,
        DenialKind::ForbiddenNamespace
    );
}

#[test]
fn bindings_are_sorted_and_deduplicated() {
    let spec = GrantMappingSpec {
        cluster_roles: vec!["view".into(), "audit".into(), "view".into()],
        namespaced: vec![
            NamespacedGrant {
                cluster_role: "edit".into(),
                namespaces: vec!["team-b".into(), "team-a".into(), "team-b".into()],
            },
            NamespacedGrant {
                cluster_role: "admin".into(),
                namespaces: vec!["team-a".into()],
            },
            NamespacedGrant {
                cluster_role: "edit".into(),
                namespaces: vec!["team-a".into()],
            },
        ],
        ..Default::default()
    };
    let decision = Login::new(
        alice(vec![json!({"role": "sre"})]),
        vec![mapping("sre", spec)],
    )
    .run()
    .unwrap();
    assert_eq!(decision.cluster_roles, ["audit", "view"]);
    let pairs: Vec<(&str, &str)> = decision
        .namespaced
        .iter()
        .map(|b| (b.cluster_role.as_str(), b.namespace.as_str()))
        .collect();
    assert_eq!(
        pairs,
        [("admin", "team-a"), ("edit", "team-a"), ("edit", "team-b")]
    );
}

// ---------------------------------------------------------------------------------------------
// Listing

#[test]
fn the_listing_shows_usable_roles_with_effective_ttls_unusable_roles_and_skipped_values() {
    let identity = alice(vec![
        json!({"role": "sre", "maxTTL": "2h", "priority": 1}),
        json!({"role": "read-only"}),
        json!({"role": "ghost"}),
        json!({"Role": "typo"}),
        json!({"role": "staging-only", "clusters": ["staging"]}),
    ]);
    let mappings = vec![
        mapping(
            "sre",
            GrantMappingSpec {
                cluster_roles: vec!["edit".into()],
                default_ttl: Some("3h".into()),
                ..Default::default()
            },
        ),
        view_mapping("read-only"),
        view_mapping("staging-only"),
    ];
    let listing = Login::new(identity, mappings).listing();
    assert!(listing.holds_any());
    assert_eq!(
        listing.roles,
        [
            AvailableRole {
                role: role("sre"),
                priority: 1,
                default_ttl: ttl("2h"),
                max_ttl: ttl("2h"),
                default: true,
            },
            AvailableRole {
                role: role("read-only"),
                priority: 0,
                default_ttl: ttl("1h"),
                max_ttl: ttl("8h"),
                default: false,
            },
        ]
    );
    assert_eq!(
        listing.unavailable,
        [UnavailableRole {
            role: role("ghost"),
            problem: RoleProblem::NoMapping
        }]
    );
    assert_eq!(listing.skipped.len(), 1);
    assert_eq!(listing.skipped[0].index, 3);

    let nothing = Login::new(alice(vec![]), vec![view_mapping("sre")]).listing();
    assert!(!nothing.holds_any());
}

#[test]
fn denials_serialize_with_a_stable_kind() {
    let denied = denial(
        Login::new(
            alice(vec![json!({"role": "read-only"})]),
            vec![view_mapping("read-only")],
        )
        .role("admin")
        .run(),
    );
    let json = serde_json::to_value(&denied).unwrap();
    assert_eq!(json["kind"], "noGrantForRole");
    assert_eq!(json["listing"]["roles"][0]["role"], "read-only");
    assert_eq!(json["listing"]["roles"][0]["maxTtl"], "8h");
    assert_eq!(denied.kind.code(), "noGrantForRole");
}

// ---------------------------------------------------------------------------------------------
// The worked examples of docs/policy.md, as the capability values each caller receives.

fn carol(caps: Vec<Value>) -> Identity {
    let mut identity = alice(caps);
    identity.user.login_name = LoginName::new("carol@example.com").unwrap();
    identity.node.stable_id = NodeId::new("nCAROL").unwrap();
    identity.groups = vec!["group:eng".into()];
    identity
}

#[test]
fn docs_example_1_sre_team_and_everyone_else() {
    let read_only = json!({"role": "read-only", "maxTTL": "8h"});
    let sre = [
        json!({"role": "sre", "clusters": ["prod-*"], "maxTTL": "4h", "priority": 10}),
        json!({"role": "sre", "clusters": ["staging-*", "dev"], "priority": 10}),
    ];
    let mappings = vec![
        mapping(
            "read-only",
            GrantMappingSpec {
                cluster_roles: vec!["view".into()],
                default_ttl: Some("1h".into()),
                ..Default::default()
            },
        ),
        mapping(
            "sre",
            GrantMappingSpec {
                cluster_roles: vec!["view".into()],
                namespaced: vec![NamespacedGrant {
                    cluster_role: "admin".into(),
                    namespaces: vec!["payments".into(), "checkout".into()],
                }],
                default_ttl: Some("1h".into()),
                max_ttl: Some("8h".into()),
                ..Default::default()
            },
        ),
    ];

    let carol = Login::new(carol(vec![read_only.clone()]), mappings.clone()).cluster("prod-eu");
    let decision = carol.run().unwrap();
    assert_eq!(
        (decision.role.as_str(), decision.ttl),
        ("read-only", ttl("1h"))
    );
    assert_eq!(
        denial(carol.role("sre").run()).to_string(),
        "no grant for role 'sre' on cluster 'prod-eu'; your grants: read-only"
    );

    let mut caps = vec![read_only];
    caps.extend(sre);
    let alice = Login::new(alice(caps), mappings).cluster("prod-eu");
    assert_eq!(granted_role(&alice.run()), "sre");
    assert_eq!(granted_role(&alice.role("read-only").run()), "read-only");
    let clamped = alice.ttl("6h").run().unwrap();
    assert_eq!(clamped.ttl, ttl("4h"));
    assert_eq!(
        clamped.clamped.unwrap().bound,
        "the maxTTL of your tailnet grant for role 'sre'"
    );
    let staging = alice.cluster("staging-eu").ttl("6h").run().unwrap();
    assert_eq!(
        (staging.role.as_str(), staging.ttl, staging.clamped),
        ("sre", ttl("6h"), None)
    );
}

#[test]
fn docs_example_2_ci_runner() {
    let caps = vec![json!({"role": "deploy", "clusters": ["staging-*"], "maxTTL": "30m"})];
    let mappings = vec![mapping(
        "deploy",
        GrantMappingSpec {
            subjects: vec![subject_tag("tag:ci")],
            namespaced: vec![NamespacedGrant {
                cluster_role: "edit".into(),
                namespaces: vec!["apps".into()],
            }],
            default_ttl: Some("15m".into()),
            ..Default::default()
        },
    )];
    let runner = Login::new(
        tagged("nRUNNER", &["tag:ci"], caps.clone()),
        mappings.clone(),
    )
    .cluster("staging-eu");
    let decision = runner.run().unwrap();
    assert_eq!(decision.ttl, ttl("15m"));
    assert_eq!(
        decision.namespaced,
        [NamespacedBinding {
            cluster_role: "edit".into(),
            namespace: "apps".into()
        }]
    );
    assert_eq!(
        denial(runner.cluster("prod-eu").run()).kind,
        DenialKind::NoGrants
    );

    let web = Login::new(tagged("nWEB", &["tag:web"], caps), mappings).cluster("staging-eu");
    let text = denial(web.run()).to_string();
    assert!(
        text.contains("GrantMapping 'deploy' is limited to certain users, tags or groups and tag:web (nWEB.tail.ts.net) is not one of them"),
        "{text}"
    );
}

#[test]
fn docs_example_3_compatibility() {
    let mut identity = alice(vec![json!({"role": "read-only"})]);
    identity.compat_capabilities =
        vec![json!({"role": "cluster-admin", "period": "4h", "priority": 100})];
    let mappings = vec![
        mapping(
            "cluster-admin",
            GrantMappingSpec {
                cluster_roles: vec!["cluster-admin".into()],
                default_ttl: Some("1h".into()),
                ..Default::default()
            },
        ),
        view_mapping("read-only"),
    ];
    let admin = Login::new(identity, mappings);
    let decision = admin.run().unwrap();
    assert_eq!(
        (decision.role.as_str(), decision.ttl),
        ("cluster-admin", ttl("1h"))
    );
    assert_eq!(admin.ttl("6h").run().unwrap().ttl, ttl("4h"));
    assert_eq!(granted_role(&admin.role("read-only").run()), "read-only");
}

#[test]
fn docs_skipped_value_message() {
    let text = denial(
        Login::new(
            alice(vec![json!({"role": "admin", "cluster": ["dev"]})]),
            vec![view_mapping("admin")],
        )
        .run(),
    )
    .to_string();
    assert!(text.starts_with("you have no tka grants (capability tka.dev/cap/kubernetes) for cluster 'prod'; ask your tailnet admin to add one to the policy file; 1 capability value(s) were ignored because they are malformed: tka value #1 "), "{text}");
    assert!(text.ends_with(": unknown key \"cluster\" (did you mean \"clusters\"? the keys are \"role\", \"clusters\", \"maxTTL\", \"priority\")"), "{text}");
}

// ---------------------------------------------------------------------------------------------
// Properties: order and duplication of values (and of mappings) never matter, and a decision
// never exceeds what was granted.

mod properties {
    use proptest::prelude::*;
    use proptest::sample::{Index, select};

    use super::*;

    const ROLES: [&str; 4] = ["a", "b", "c", "d"];

    fn primary_value() -> impl Strategy<Value = Value> {
        let valid = (
            select(ROLES.to_vec()),
            select(vec![
                None,
                Some(json!(["prod-*"])),
                Some(json!(["staging", "dev"])),
            ]),
            select(vec![None, Some("30m"), Some("2h"), Some("10h")]),
            select(vec![None, Some(0), Some(1), Some(5)]),
        )
            .prop_map(|(role, clusters, max, priority)| {
                let mut v = json!({"role": role});
                if let Some(c) = clusters {
                    v["clusters"] = c;
                }
                if let Some(m) = max {
                    v["maxTTL"] = json!(m);
                }
                if let Some(p) = priority {
                    v["priority"] = json!(p);
                }
                v
            });
        let invalid = select(vec![
            json!("a"),
            Value::Null,
            json!({"Role": "a"}),
            json!({"role": "b", "cluster": ["staging"]}),
            json!({"role": "c", "priority": "10"}),
            json!({"role": "d", "period": "1h"}),
        ]);
        prop_oneof![4 => valid, 1 => invalid]
    }

    fn compat_value() -> impl Strategy<Value = Value> {
        (
            select(ROLES.to_vec()),
            select(vec![None, Some("45m"), Some("3h"), Some("0s")]),
            select(vec![None, Some(2), Some(7)]),
        )
            .prop_map(|(role, period, priority)| {
                let mut v = json!({"role": role});
                if let Some(p) = period {
                    v["period"] = json!(p);
                }
                if let Some(p) = priority {
                    v["priority"] = json!(p);
                }
                v
            })
    }

    fn spec() -> impl Strategy<Value = (GrantMappingSpec, bool)> {
        (
            prop_oneof![
                3 => Just(vec![]),
                1 => select(vec![
                    vec![subject_user("alice@example.com")],
                    vec![subject_tag("tag:ci")],
                    vec![subject_group("group:sre"), subject_tag("tag:web")],
                ]),
            ],
            prop_oneof![
                6 => select(vec![
                    (vec!["view".to_owned()], vec![]),
                    (vec!["view".to_owned(), "edit".to_owned(), "view".to_owned()], vec![]),
                    (vec![], vec![("edit", vec!["team-b", "team-a", "team-b"])]),
                ]),
                1 => select(vec![
                    (vec![], vec![("edit", vec!["team-a", "kube-system"])]),
                    (vec![], vec![]),
                ]),
            ],
            prop_oneof![
                6 => select(vec![None, Some("20m"), Some("3h")]),
                1 => Just(Some("soon")),
            ],
            select(vec![None, Some("1h"), Some("4h")]),
            prop::bool::weighted(0.1),
        )
            .prop_map(
                |(subjects, (cluster_roles, namespaced), default_ttl, max_ttl, unusable)| {
                    (
                        GrantMappingSpec {
                            subjects,
                            cluster_roles,
                            namespaced: namespaced
                                .into_iter()
                                .map(|(role, namespaces)| NamespacedGrant {
                                    cluster_role: role.into(),
                                    namespaces: namespaces.into_iter().map(Into::into).collect(),
                                })
                                .collect(),
                            default_ttl: default_ttl.map(Into::into),
                            max_ttl: max_ttl.map(Into::into),
                        },
                        unusable,
                    )
                },
            )
    }

    fn mappings() -> impl Strategy<Value = Vec<MappingView>> {
        prop::collection::vec(prop::option::weighted(0.8, spec()), ROLES.len()).prop_map(|specs| {
            ROLES
                .iter()
                .zip(specs)
                .filter_map(|(name, spec)| {
                    spec.map(|(spec, unusable)| {
                        let view = mapping(name, spec);
                        if unusable {
                            view.unusable("NotBindable")
                        } else {
                            view
                        }
                    })
                })
                .collect()
        })
    }

    /// The values, and the same values shuffled with some of them repeated.
    fn shuffled_with_duplicates(
        values: impl Strategy<Value = Vec<Value>>,
    ) -> impl Strategy<Value = (Vec<Value>, Vec<Value>)> {
        (values, prop::collection::vec(any::<Index>(), 0..4)).prop_flat_map(|(values, repeats)| {
            let mut variant = values.clone();
            if !values.is_empty() {
                variant.extend(
                    repeats
                        .iter()
                        .map(|i| values[i.index(values.len())].clone()),
                );
            }
            (Just(values), Just(variant).prop_shuffle())
        })
    }

    #[derive(Debug, Clone)]
    struct Case {
        identity: Identity,
        mappings: Vec<MappingView>,
        cluster: &'static str,
        role: Option<&'static str>,
        ttl: Option<&'static str>,
    }

    impl Case {
        fn login(&self) -> Login<'static> {
            Login {
                identity: self.identity.clone(),
                mappings: self.mappings.clone(),
                cluster: self.cluster,
                role: self.role,
                ttl: self.ttl,
                settings: settings(),
            }
        }
    }

    fn case() -> impl Strategy<Value = (Case, Case)> {
        (
            shuffled_with_duplicates(prop::collection::vec(primary_value(), 0..6)),
            shuffled_with_duplicates(prop::collection::vec(compat_value(), 0..3)),
            mappings().prop_flat_map(|m| (Just(m.clone()), Just(m).prop_shuffle())),
            any::<bool>(),
            select(vec!["prod-eu", "staging"]),
            prop_oneof![3 => Just(None), 1 => select(vec![Some("a"), Some("b"), Some("e")])],
            prop_oneof![
                2 => Just(None),
                3 => select(vec![Some("10m"), Some("3h"), Some("20h")]),
                1 => Just(Some("0s")),
            ],
        )
            .prop_map(
                |((caps, caps2), (compat, compat2), (maps, maps2), is_ci, cluster, role, ttl)| {
                    let make = |caps: Vec<Value>, compat: Vec<Value>| {
                        let mut identity = if is_ci {
                            tagged("nCIRUNNER1", &["tag:ci"], caps)
                        } else {
                            alice(caps)
                        };
                        identity.compat_capabilities = compat;
                        identity
                    };
                    (
                        Case {
                            identity: make(caps, compat),
                            mappings: maps,
                            cluster,
                            role,
                            ttl,
                        },
                        Case {
                            identity: make(caps2, compat2),
                            mappings: maps2,
                            cluster,
                            role,
                            ttl,
                        },
                    )
                },
            )
    }

    type Comparable = (
        DenialKind,
        Vec<AvailableRole>,
        Vec<UnavailableRole>,
        Vec<(Value, String)>,
    );

    /// A denial without the positions of skipped values, which move when values are reordered.
    fn comparable(denial: &Denial) -> Comparable {
        let mut skipped: Vec<(Value, String)> = denial
            .skipped()
            .iter()
            .map(|s| (s.value.clone(), s.reason.clone()))
            .collect();
        skipped.sort_by_key(|(v, r)| (v.to_string(), r.clone()));
        skipped.dedup();
        (
            denial.kind,
            denial.listing.roles.clone(),
            denial.listing.unavailable.clone(),
            skipped,
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn order_and_duplication_of_values_and_mappings_do_not_matter((original, variant) in case()) {
            let a = original.login().run();
            let b = variant.login().run();
            match (&a, &b) {
                (Ok(a), Ok(b)) => prop_assert_eq!(a, b),
                (Err(a), Err(b)) => prop_assert_eq!(comparable(a), comparable(b)),
                _ => prop_assert!(false, "different outcomes: {:?} vs {:?}", a, b),
            }
            prop_assert_eq!(original.login().listing().roles, variant.login().listing().roles);
        }

        #[test]
        fn a_decision_never_exceeds_the_grant((case, _) in case()) {
            let login = case.login();
            let Ok(decision) = login.run() else { return Ok(()); };
            let grants = ParsedGrants::from_identity(&login.identity);
            let cluster = ClusterName::new(login.cluster).unwrap();
            let selecting: Vec<_> = grants
                .grants
                .iter()
                .filter(|g| g.role == decision.role && g.applies_to(&cluster))
                .collect();
            // Granted by the tailnet, on this cluster.
            prop_assert!(!selecting.is_empty());
            if let Some(role) = login.role {
                prop_assert_eq!(decision.role.as_str(), role);
            } else {
                let listing = login.listing();
                prop_assert_eq!(&listing.roles[0].role, &decision.role);
                let best = listing.roles.iter().map(|r| r.priority).max();
                prop_assert_eq!(Some(listing.roles[0].priority), best);
            }
            // Within every bound.
            let mapping = login.mappings.iter().find(|m| m.name == decision.role).unwrap();
            prop_assert_eq!(&mapping.state, &crate::policy::MappingState::Ready);
            prop_assert!(decision.ttl <= login.settings.max_ttl);
            for grant in &selecting {
                if let Some(max) = grant.max_ttl {
                    prop_assert!(decision.ttl <= max);
                }
            }
            if let Some(max) = &mapping.spec.max_ttl {
                prop_assert!(decision.ttl <= ttl(max));
            }
            if let Some(clamp) = &decision.clamped {
                prop_assert!(clamp.granted < clamp.requested);
                prop_assert_eq!(clamp.granted, decision.ttl);
            }
            // Subjects narrow.
            prop_assert!(mapping.spec.subjects.is_empty() || super::super::mapping::subjects_allow(&mapping.spec, &login.identity));
            // Never into a protected namespace; bindings sorted and unique.
            prop_assert!(decision.namespaced.iter().all(|b| !login.settings.forbidden_namespaces.contains(&b.namespace)));
            prop_assert!(decision.cluster_roles.windows(2).all(|w| w[0] < w[1]));
            prop_assert!(decision.namespaced.windows(2).all(|w| w[0] < w[1]));
            prop_assert_eq!(decision.expires_at, now().checked_add(decision.ttl.as_duration()).unwrap());
        }
    }
}
