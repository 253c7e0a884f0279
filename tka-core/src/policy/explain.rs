//! "Who can get what, where?" answered offline: the tailnet policy file's grants
//! ([`crate::tailnet_policy`]) turned into each principal's capability values, then judged by the
//! very functions a server uses on a login ([`mapping_views`], [`available_roles`], [`resolve`]),
//! so an explanation cannot drift from the server's decision. Only the inputs are stand-ins: a
//! synthetic identity per principal, and the cluster's ClusterRoles and bindability as given by
//! the caller. Pure: no I/O.

use std::collections::BTreeSet;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use super::denial::{AvailableRole, DenialKind, RoleListing};
use super::mapping::{
    Bindable, ClusterFacts, MappingState, NamedMapping, mapping_views, validate_mapping,
};
use super::rbac::{ClusterRoleRules, ClusterRoles, PolicyRule};
use super::resolve::{PolicyContext, PolicySettings, ResolveRequest, available_roles, resolve};
use super::{NamespacedBinding, Subject};
use crate::capability::{CapabilitySchema, ParsedGrants, parse_values};
use crate::domain::{
    ClusterName, Identity, LoginName, NodeId, NodeInfo, RoleName, Tag, Ttl, UserId, UserInfo,
};
use crate::tailnet_policy::{DeliveredValue, Principal, TailnetPolicy, Unevaluated};

/// What [`explain`] looks at.
#[derive(Clone, Copy)]
pub struct ExplainInput<'a> {
    /// The tailnet policy file.
    pub policy: &'a TailnetPolicy,
    /// The tags of the server's node (grants reach it through their `dst`).
    pub server_tags: &'a [String],
    /// The GrantMappings, as the cluster stores them.
    pub mappings: &'a [NamedMapping],
    /// The cluster's ClusterRoles (see [`kubernetes_default_roles`] when they are not known).
    pub cluster_roles: &'a ClusterRoles,
    /// Whether the server may bind a mapping's roles.
    pub bindable: &'a dyn Fn(&NamedMapping) -> Bindable,
    /// The server's bounds, namespaces and capability names.
    pub settings: &'a PolicySettings,
    /// The clusters to answer for.
    pub clusters: &'a [ClusterName],
    /// Whom to answer for; every principal the policy file names when empty.
    pub who: &'a [Principal],
    /// A role asked for, as with `tka login --role`.
    pub role: Option<&'a RoleName>,
    /// "Now", for the sessions' ends.
    pub now: Timestamp,
}

impl std::fmt::Debug for ExplainInput<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExplainInput")
            .field("clusters", &self.clusters)
            .field("who", &self.who)
            .field("role", &self.role)
            .finish_non_exhaustive()
    }
}

/// Everything [`explain`] found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Explanation {
    /// One answer per principal and cluster, principals in order, then clusters.
    pub answers: Vec<Answer>,
    /// Every GrantMapping, ready or not (and why).
    pub mappings: Vec<MappingReport>,
    /// Parts of the policy file that could not be evaluated offline.
    pub unevaluated: Vec<Unevaluated>,
}

/// What one principal gets on one cluster, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Answer {
    /// The person or tagged device.
    pub who: Principal,
    /// The groups of the policy file the person is in.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<String>,
    /// The cluster.
    pub cluster: ClusterName,
    /// The login's outcome.
    pub outcome: Outcome,
    /// Every role the principal holds there: usable ones with their TTL bounds, unusable ones
    /// with why, and skipped capability values (what `tka list` would show).
    pub roles: RoleListing,
    /// Every capability value the principal receives at the server, with its grant.
    pub values: Vec<DeliveredValue>,
}

/// A login's outcome.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "camelCase")]
pub enum Outcome {
    /// A session would be made.
    #[serde(rename_all = "camelCase")]
    Granted {
        /// The role, which is also the GrantMapping's name.
        role: RoleName,
        /// Why this role among the usable ones.
        rule: String,
        /// The session length a login without `--ttl` gets.
        ttl: Ttl,
        /// The longest session a login may ask for.
        #[serde(rename = "maxTTL")]
        max_ttl: Ttl,
        /// ClusterRoles bound cluster-wide.
        cluster_roles: Vec<String>,
        /// ClusterRoles bound per namespace.
        namespaced: Vec<NamespacedBinding>,
        /// The capability values that grant the role on this cluster.
        because: Vec<DeliveredValue>,
    },
    /// The login would be refused.
    #[serde(rename_all = "camelCase")]
    Refused {
        /// The denial's kind (the API's problem code).
        kind: DenialKind,
        /// The denial's message, as the server words it.
        message: String,
    },
}

/// A GrantMapping and whether the server would use it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MappingReport {
    /// The mapping's name (the role).
    pub name: String,
    /// Whether it is ready.
    pub ready: bool,
    /// The `Ready=False` reason (`ForbiddenNamespace`, `ClusterWideWrite`, …), or `Unchecked`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// What is wrong, in words.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Its narrowing subjects, as written (`user:…`, `tag:…`, `group:…`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subjects: Vec<String>,
    /// ClusterRoles it binds cluster-wide.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cluster_roles: Vec<String>,
    /// ClusterRoles it binds per namespace.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub namespaced: Vec<NamespacedBinding>,
    /// `defaultTTL`, as written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_ttl: Option<String>,
    /// `maxTTL`, as written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_ttl: Option<String>,
}

/// The identity a server would see for `principal`, with `values` under the capability names of
/// `settings`: a stand-in device named by [`Principal::device_name`], the policy file's groups of
/// a person, and the shared `tagged-devices` user of a tagged device. `None` when the login name
/// or a tag is not valid.
pub fn stand_in_identity(
    principal: &Principal,
    groups: Vec<String>,
    capabilities: Vec<serde_json::Value>,
    compat_capabilities: Vec<serde_json::Value>,
) -> Option<Identity> {
    let (login, tags) = match principal {
        Principal::User { login } => (login.as_str(), Vec::new()),
        Principal::Tagged { tags } => (
            "tagged-devices",
            tags.iter()
                .map(Tag::new)
                .collect::<Result<Vec<_>, _>>()
                .ok()?,
        ),
    };
    let key: String = principal
        .to_string()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    Some(Identity {
        user: UserInfo {
            id: UserId(0),
            login_name: LoginName::new(login).ok()?,
            display_name: principal.to_string(),
        },
        node: NodeInfo {
            stable_id: NodeId::new(format!("explain-{key}")).ok()?,
            name: principal.device_name(),
            addresses: Vec::new(),
            tags,
        },
        groups: if principal.is_tagged() {
            Vec::new()
        } else {
            groups
        },
        capabilities,
        compat_capabilities,
    })
}

/// Explains who gets what: see the module documentation.
pub fn explain(input: &ExplainInput<'_>) -> Explanation {
    let settings = input.settings;
    let facts = ClusterFacts {
        cluster_roles: Some(input.cluster_roles),
        allow_cluster_wide_write: settings.allow_cluster_wide_write,
    };
    let views = mapping_views(input.mappings, &facts, input.bindable);
    let mappings = input
        .mappings
        .iter()
        .map(|m| report(m, &views, settings))
        .collect();

    let principals = if input.who.is_empty() {
        // The server's own tag names the server, not a caller.
        input
            .policy
            .principals()
            .into_iter()
            .filter(|p| !matches!(p, Principal::Tagged { tags } if tags.iter().all(|t| input.server_tags.contains(t))))
            .collect()
    } else {
        input.who.to_vec()
    };
    let mut answers = Vec::new();
    for who in principals {
        let delivered = input.policy.delivered(&who, input.server_tags);
        let groups = match &who {
            Principal::User { login } => input.policy.groups_of(login),
            Principal::Tagged { .. } => Vec::new(),
        };
        let primary = delivered.sources(&settings.capability_name).to_vec();
        let compat = settings
            .compat_capability_name
            .as_deref()
            .map(|name| delivered.sources(name).to_vec())
            .unwrap_or_default();
        let Some(identity) = stand_in_identity(
            &who,
            groups.clone(),
            primary.iter().map(|d| d.value.clone()).collect(),
            compat.iter().map(|d| d.value.clone()).collect(),
        ) else {
            continue;
        };
        let grants = ParsedGrants::from_identity(&identity);
        for cluster in input.clusters {
            let context = PolicyContext {
                identity: &identity,
                grants: &grants,
                mappings: &views,
                cluster,
                settings,
            };
            let roles = available_roles(&context);
            let request = ResolveRequest {
                context,
                role: input.role,
                ttl: None,
                now: input.now,
            };
            let outcome = match resolve(&request) {
                Ok(decision) => {
                    let bounds = roles.roles.iter().find(|r| r.role == decision.role);
                    Outcome::Granted {
                        rule: rule(input.role.is_some(), &roles.roles, &decision.role),
                        ttl: decision.ttl,
                        max_ttl: bounds.map_or(decision.ttl, |r| r.max_ttl),
                        because: because(&primary, &compat, &decision.role, cluster),
                        role: decision.role,
                        cluster_roles: decision.cluster_roles,
                        namespaced: decision.namespaced,
                    }
                }
                Err(denial) => Outcome::Refused {
                    kind: denial.kind,
                    message: denial.to_string(),
                },
            };
            answers.push(Answer {
                who: who.clone(),
                groups: groups.clone(),
                cluster: cluster.clone(),
                outcome,
                roles,
                values: primary.iter().chain(&compat).cloned().collect(),
            });
        }
    }
    let mut capabilities = vec![settings.capability_name.clone()];
    capabilities.extend(settings.compat_capability_name.clone());
    Explanation {
        answers,
        mappings,
        unevaluated: input.policy.unevaluated(&capabilities, input.server_tags),
    }
}

/// Why resolution picked `role`, in words.
fn rule(requested: bool, usable: &[AvailableRole], role: &RoleName) -> String {
    if requested {
        return format!("role '{role}' was asked for");
    }
    let Some(first) = usable.first() else {
        return "the only usable role".to_owned();
    };
    if usable.len() == 1 {
        return "the only usable role".to_owned();
    }
    let tied = usable
        .iter()
        .filter(|r| r.priority == first.priority)
        .count();
    if tied > 1 {
        format!(
            "highest priority ({}) of {} usable roles, tied with {} other(s) and first by name",
            first.priority,
            usable.len(),
            tied - 1
        )
    } else {
        format!(
            "highest priority ({}) of {} usable roles",
            first.priority,
            usable.len()
        )
    }
}

/// The delivered values that grant `role` on `cluster`, parsed with their own schema.
fn because(
    primary: &[DeliveredValue],
    compat: &[DeliveredValue],
    role: &RoleName,
    cluster: &ClusterName,
) -> Vec<DeliveredValue> {
    let grants = |schema: CapabilitySchema, value: &DeliveredValue| {
        let (grants, _) = parse_values(schema, std::slice::from_ref(&value.value));
        grants
            .iter()
            .any(|g| &g.role == role && g.applies_to(cluster))
    };
    primary
        .iter()
        .filter(|v| grants(CapabilitySchema::Primary, v))
        .chain(
            compat
                .iter()
                .filter(|v| grants(CapabilitySchema::Compat, v)),
        )
        .cloned()
        .collect()
}

fn report(
    mapping: &NamedMapping,
    views: &[super::MappingView],
    settings: &PolicySettings,
) -> MappingReport {
    let spec = &mapping.spec;
    let problems = validate_mapping(&mapping.name, spec, &settings.forbidden_namespaces);
    let (reason, message) = if let Some(first) = problems.first() {
        (
            Some(first.condition_reason().to_owned()),
            Some(
                problems
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join("; "),
            ),
        )
    } else {
        match views
            .iter()
            .find(|v| v.name.as_str() == mapping.name)
            .map(|v| &v.state)
        {
            Some(MappingState::Ready) => (None, None),
            Some(MappingState::NotReady { reason, message }) => {
                (Some(reason.as_str().to_owned()), Some(message.clone()))
            }
            Some(MappingState::Unchecked(why)) => (Some("Unchecked".to_owned()), Some(why.clone())),
            None => (Some("InvalidSpec".to_owned()), None),
        }
    };
    let namespaced: BTreeSet<NamespacedBinding> = spec
        .namespaced
        .iter()
        .flat_map(|g| {
            g.namespaces.iter().map(|ns| NamespacedBinding {
                cluster_role: g.cluster_role.clone(),
                namespace: ns.clone(),
            })
        })
        .collect();
    MappingReport {
        name: mapping.name.clone(),
        ready: reason.is_none(),
        reason,
        message,
        subjects: spec.subjects.iter().map(subject_text).collect(),
        cluster_roles: spec.cluster_roles.clone(),
        namespaced: namespaced.into_iter().collect(),
        default_ttl: spec.default_ttl.clone(),
        max_ttl: spec.max_ttl.clone(),
    }
}

fn subject_text(subject: &Subject) -> String {
    match (&subject.user, &subject.tag, &subject.group) {
        (Some(user), None, None) => format!("user:{user}"),
        (None, Some(tag), None) => tag.clone(),
        (None, None, Some(group)) => group.clone(),
        _ => "(invalid subject)".to_owned(),
    }
}

/// The ClusterRoles every Kubernetes cluster starts with, in outline: `view` (reads, no
/// Secrets), `edit` and `admin` (writes, and Secrets), and `cluster-admin` (everything). Enough
/// for [`explain`] to judge a mapping's `clusterRoles` when the cluster's own roles are not at
/// hand; the real roles hold more rules, but the same answer to "read-only or not".
pub fn kubernetes_default_roles() -> ClusterRoles {
    let rule = |groups: &[&str], resources: &[&str], verbs: &[&str]| PolicyRule {
        api_groups: groups.iter().map(|s| (*s).to_owned()).collect(),
        resources: resources.iter().map(|s| (*s).to_owned()).collect(),
        verbs: verbs.iter().map(|s| (*s).to_owned()).collect(),
        non_resource_urls: Vec::new(),
    };
    let workload_groups = ["", "apps", "batch"];
    let workloads = ["pods", "services", "configmaps", "deployments", "jobs"];
    let read = ["get", "list", "watch"];
    let write = ["create", "delete", "deletecollection", "patch", "update"];
    let role = |rules: Vec<PolicyRule>| ClusterRoleRules {
        rules,
        ..ClusterRoleRules::default()
    };
    let view = vec![rule(&workload_groups, &workloads, &read)];
    let mut edit = view.clone();
    edit.push(rule(&workload_groups, &workloads, &write));
    edit.push(rule(&[""], &["secrets"], &read));
    edit.push(rule(
        &[""],
        &["pods/exec", "pods/portforward"],
        &["create", "get"],
    ));
    let mut admin = edit.clone();
    admin.push(rule(
        &["rbac.authorization.k8s.io"],
        &["roles", "rolebindings"],
        &[
            "create", "delete", "get", "list", "patch", "update", "watch",
        ],
    ));
    let cluster_admin = vec![
        rule(&["*"], &["*"], &["*"]),
        PolicyRule {
            non_resource_urls: vec!["*".to_owned()],
            verbs: vec!["*".to_owned()],
            ..PolicyRule::default()
        },
    ];
    [
        ("view", view),
        ("edit", edit),
        ("admin", admin),
        ("cluster-admin", cluster_admin),
    ]
    .into_iter()
    .map(|(name, rules)| (name.to_owned(), role(rules)))
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{GrantMappingSpec, NamespacedGrant};

    fn input_mappings() -> Vec<NamedMapping> {
        vec![
            NamedMapping {
                name: "read-only".into(),
                spec: GrantMappingSpec {
                    cluster_roles: vec!["view".into()],
                    default_ttl: Some("1h".into()),
                    ..GrantMappingSpec::default()
                },
            },
            NamedMapping {
                name: "sre".into(),
                spec: GrantMappingSpec {
                    cluster_roles: vec!["view".into()],
                    namespaced: vec![NamespacedGrant {
                        cluster_role: "admin".into(),
                        namespaces: vec!["payments".into()],
                    }],
                    max_ttl: Some("8h".into()),
                    ..GrantMappingSpec::default()
                },
            },
            NamedMapping {
                name: "wide".into(),
                spec: GrantMappingSpec {
                    cluster_roles: vec!["edit".into()],
                    ..GrantMappingSpec::default()
                },
            },
            NamedMapping {
                name: "system".into(),
                spec: GrantMappingSpec {
                    namespaced: vec![NamespacedGrant {
                        cluster_role: "edit".into(),
                        namespaces: vec!["kube-system".into()],
                    }],
                    ..GrantMappingSpec::default()
                },
            },
            NamedMapping {
                name: "custom".into(),
                spec: GrantMappingSpec {
                    cluster_roles: vec!["no-such-role".into()],
                    ..GrantMappingSpec::default()
                },
            },
        ]
    }

    fn run(who: &[Principal], role: Option<&RoleName>) -> Explanation {
        let policy = TailnetPolicy::parse(
            r#"{
              "groups": {"group:sre": ["alice@example.com"]},
              "grants": [
                {"src": ["autogroup:member"], "dst": ["tag:tka"],
                 "app": {"tka.dev/cap/kubernetes": [{"role": "read-only"}]}},
                {"src": ["group:sre"], "dst": ["tag:tka"],
                 "app": {"tka.dev/cap/kubernetes": [
                   {"role": "sre", "clusters": ["prod-*"], "maxTTL": "4h", "priority": 10},
                   {"role": "wide"}, {"role": "system"}, {"role": "custom"}]}},
              ],
            }"#,
        )
        .unwrap();
        let settings = PolicySettings::new(
            "tka-system",
            Ttl::parse("1h").unwrap(),
            Ttl::parse("8h").unwrap(),
        );
        explain(&ExplainInput {
            policy: &policy,
            server_tags: &["tag:tka".to_owned()],
            mappings: &input_mappings(),
            cluster_roles: &kubernetes_default_roles(),
            bindable: &|_| Bindable::Yes,
            settings: &settings,
            clusters: &[
                ClusterName::new("prod-eu").unwrap(),
                ClusterName::new("dev").unwrap(),
            ],
            who,
            role,
            now: "2026-01-01T00:00:00Z".parse().unwrap(),
        })
    }

    #[test]
    fn each_principal_gets_the_servers_answer_per_cluster() {
        let e = run(&[], None);
        let summary: Vec<(String, String, String)> = e
            .answers
            .iter()
            .map(|a| {
                let what = match &a.outcome {
                    Outcome::Granted { role, .. } => role.to_string(),
                    Outcome::Refused { kind, .. } => format!("refused: {kind}"),
                };
                (a.who.to_string(), a.cluster.to_string(), what)
            })
            .collect();
        assert_eq!(
            summary,
            [
                ("alice@example.com".into(), "prod-eu".into(), "sre".into()),
                ("alice@example.com".into(), "dev".into(), "read-only".into()),
            ]
        );
        let Outcome::Granted {
            rule,
            ttl,
            max_ttl,
            namespaced,
            because,
            ..
        } = &e.answers[0].outcome
        else {
            panic!("alice gets sre on prod-eu");
        };
        assert!(rule.contains("highest priority (10)"), "{rule}");
        assert_eq!((ttl.as_secs(), max_ttl.as_secs()), (3600, 4 * 3600));
        assert_eq!(namespaced[0].namespace, "payments");
        assert_eq!(
            (because[0].grant, because[0].src.as_str()),
            (2, "group:sre")
        );
        assert_eq!(e.answers[0].groups, ["group:sre"]);
    }

    #[test]
    fn unready_mappings_are_reported_with_their_reasons_and_refused() {
        let e = run(&[], None);
        let reasons: Vec<(&str, Option<&str>)> = e
            .mappings
            .iter()
            .map(|m| (m.name.as_str(), m.reason.as_deref()))
            .collect();
        assert_eq!(
            reasons,
            [
                ("read-only", None),
                ("sre", None),
                ("wide", Some("ClusterWideWrite")),
                ("system", Some("ForbiddenNamespace")),
                ("custom", Some("ClusterRoleMissing")),
            ]
        );
        let alice = [Principal::user("alice@example.com")];
        let wide = RoleName::new("wide").unwrap();
        let refused = run(&alice, Some(&wide));
        let Outcome::Refused { kind, message } = &refused.answers[0].outcome else {
            panic!("a cluster-wide edit must be refused");
        };
        assert_eq!(*kind, DenialKind::MappingUnusable);
        assert!(message.contains("bind it per namespace"), "{message}");
        let ok = run(&alice, Some(&RoleName::new("read-only").unwrap()));
        assert!(matches!(ok.answers[0].outcome, Outcome::Granted { .. }));
    }

    #[test]
    fn people_outside_the_file_and_tags_without_grants_are_refused() {
        let e = run(
            &[
                Principal::user("dave@example.com"),
                Principal::tagged(["tag:ci"]),
            ],
            None,
        );
        assert!(
            matches!(e.answers[0].outcome, Outcome::Granted { ref role, .. } if role.as_str() == "read-only")
        );
        let Outcome::Refused { kind, .. } = &e.answers[2].outcome else {
            panic!("tag:ci holds nothing");
        };
        assert_eq!(*kind, DenialKind::NoGrants);
    }

    #[test]
    fn default_roles_are_judged_like_the_real_ones() {
        let roles = kubernetes_default_roles();
        assert!(roles.beyond_read("view").unwrap_or_default().is_empty());
        for write in ["edit", "admin", "cluster-admin"] {
            assert!(
                !roles.beyond_read(write).unwrap_or_default().is_empty(),
                "{write}"
            );
        }
    }
}
