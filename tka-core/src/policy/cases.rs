//! Shared test fixtures (feature `mocks`): the bootstrap ClusterRoles modelled as a fresh API
//! server stores them (`view`, `edit`, `admin` are aggregated roles whose `rules` are empty until
//! kube-controller-manager fills them), and the table of mapping changes that every path which
//! decides "does this session's grant still hold" is tested with (the pure function, the
//! reconciler's re-validation, the token refresh). It holds data only and must not decide
//! anything itself, or the tests would check the rule against itself.

use std::collections::BTreeMap;

use super::mapping::{Bindable, ClusterFacts, NamedMapping, mapping_views};
use super::rbac::{ClusterRoleRules, ClusterRoles, LabelSelector, PolicyRule};
use super::{GrantMappingSpec, MappingView, NamespacedBinding, NamespacedGrant};
use crate::domain::RoleName;

const AGGREGATE_TO_VIEW: &str = "rbac.authorization.k8s.io/aggregate-to-view";
const AGGREGATE_TO_EDIT: &str = "rbac.authorization.k8s.io/aggregate-to-edit";
const AGGREGATE_TO_ADMIN: &str = "rbac.authorization.k8s.io/aggregate-to-admin";

/// A rule on `resources` of `group` with `verbs`.
pub fn rule(group: &str, resources: &[&str], verbs: &[&str]) -> PolicyRule {
    PolicyRule {
        api_groups: vec![group.to_owned()],
        resources: resources.iter().map(|s| (*s).to_owned()).collect(),
        verbs: verbs.iter().map(|s| (*s).to_owned()).collect(),
        non_resource_urls: vec![],
    }
}

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

fn selecting(label: &str) -> Option<Vec<LabelSelector>> {
    Some(vec![LabelSelector {
        match_labels: labels(&[(label, "true")]),
        match_expressions: vec![],
    }])
}

const READ: &[&str] = &["get", "list", "watch"];
const WRITE: &[&str] = &["create", "delete", "deletecollection", "patch", "update"];

/// The bootstrap roles as a fresh API server stores them, without kube-controller-manager:
/// `view`, `edit` and `admin` carry only an `aggregationRule` (and the labels that chain them:
/// `view` aggregates into `edit`, `edit` into `admin`); the `system:aggregate-to-*` roles carry
/// the rules (an excerpt of the real ones); `cluster-admin` has wildcards.
pub fn bootstrap_cluster_roles() -> ClusterRoles {
    let bootstrapping = ("kubernetes.io/bootstrapping", "rbac-defaults");
    [
        (
            "cluster-admin",
            ClusterRoleRules {
                labels: labels(&[bootstrapping]),
                rules: vec![
                    rule("*", &["*"], &["*"]),
                    PolicyRule {
                        non_resource_urls: vec!["*".into()],
                        verbs: vec!["*".into()],
                        ..PolicyRule::default()
                    },
                ],
                aggregation: None,
            },
        ),
        (
            "admin",
            ClusterRoleRules {
                labels: labels(&[bootstrapping]),
                rules: vec![],
                aggregation: selecting(AGGREGATE_TO_ADMIN),
            },
        ),
        (
            "edit",
            ClusterRoleRules {
                labels: labels(&[bootstrapping, (AGGREGATE_TO_ADMIN, "true")]),
                rules: vec![],
                aggregation: selecting(AGGREGATE_TO_EDIT),
            },
        ),
        (
            "view",
            ClusterRoleRules {
                labels: labels(&[bootstrapping, (AGGREGATE_TO_EDIT, "true")]),
                rules: vec![],
                aggregation: selecting(AGGREGATE_TO_VIEW),
            },
        ),
        (
            "system:aggregate-to-admin",
            ClusterRoleRules {
                labels: labels(&[bootstrapping, (AGGREGATE_TO_ADMIN, "true")]),
                rules: vec![
                    rule(
                        "authorization.k8s.io",
                        &["localsubjectaccessreviews"],
                        &["create"],
                    ),
                    rule(
                        "rbac.authorization.k8s.io",
                        &["rolebindings", "roles"],
                        &[
                            "create",
                            "delete",
                            "deletecollection",
                            "get",
                            "list",
                            "patch",
                            "update",
                            "watch",
                        ],
                    ),
                ],
                aggregation: None,
            },
        ),
        (
            "system:aggregate-to-edit",
            ClusterRoleRules {
                labels: labels(&[bootstrapping, (AGGREGATE_TO_EDIT, "true")]),
                rules: vec![
                    rule(
                        "",
                        &[
                            "pods/attach",
                            "pods/exec",
                            "pods/portforward",
                            "pods/proxy",
                            "secrets",
                            "services/proxy",
                        ],
                        READ,
                    ),
                    rule("", &["serviceaccounts"], &["impersonate"]),
                    rule(
                        "",
                        &[
                            "pods",
                            "pods/attach",
                            "pods/exec",
                            "pods/portforward",
                            "pods/proxy",
                        ],
                        WRITE,
                    ),
                    rule("", &["pods/eviction"], &["create"]),
                    rule(
                        "",
                        &[
                            "configmaps",
                            "events",
                            "persistentvolumeclaims",
                            "secrets",
                            "serviceaccounts",
                            "services",
                        ],
                        WRITE,
                    ),
                    rule("", &["serviceaccounts/token"], &["create"]),
                    rule(
                        "apps",
                        &["daemonsets", "deployments", "replicasets", "statefulsets"],
                        WRITE,
                    ),
                    rule("batch", &["cronjobs", "jobs"], WRITE),
                ],
                aggregation: None,
            },
        ),
        (
            "system:aggregate-to-view",
            ClusterRoleRules {
                labels: labels(&[bootstrapping, (AGGREGATE_TO_VIEW, "true")]),
                rules: vec![
                    rule(
                        "",
                        &[
                            "configmaps",
                            "endpoints",
                            "persistentvolumeclaims",
                            "pods",
                            "replicationcontrollers",
                            "serviceaccounts",
                            "services",
                        ],
                        READ,
                    ),
                    rule(
                        "",
                        &[
                            "events",
                            "limitranges",
                            "namespaces/status",
                            "pods/log",
                            "pods/status",
                            "resourcequotas",
                        ],
                        READ,
                    ),
                    rule("", &["namespaces"], READ),
                    rule(
                        "apps",
                        &[
                            "controllerrevisions",
                            "daemonsets",
                            "deployments",
                            "replicasets",
                            "statefulsets",
                        ],
                        READ,
                    ),
                    rule("batch", &["cronjobs", "jobs"], READ),
                ],
                aggregation: None,
            },
        ),
        (
            "pod-creator",
            ClusterRoleRules {
                rules: vec![rule("", &["pods"], &["create"])],
                ..ClusterRoleRules::default()
            },
        ),
        (
            "secret-reader",
            ClusterRoleRules {
                rules: vec![rule("", &["secrets"], &["get", "list"])],
                ..ClusterRoleRules::default()
            },
        ),
    ]
    .into_iter()
    .map(|(name, role)| (name.to_owned(), role))
    .collect()
}

/// [`bootstrap_cluster_roles`] plus a custom role aggregated into `view` that can create Jobs:
/// what a CRD installer's careless `aggregate-to-view` role does to `view`.
pub fn view_gained_a_write() -> ClusterRoles {
    let mut roles: Vec<(String, ClusterRoleRules)> = bootstrap_cluster_roles().into_entries();
    roles.push((
        "jobs-runner-aggregated".to_owned(),
        ClusterRoleRules {
            labels: labels(&[(AGGREGATE_TO_VIEW, "true")]),
            rules: vec![rule("batch", &["jobs"], &["create"])],
            aggregation: None,
        },
    ));
    roles.into_iter().collect()
}

/// The role of the session in every [`GrantCase`].
pub const CASE_ROLE: &str = "sre";

/// The mapping the session of every [`GrantCase`] was issued from: `view` cluster-wide, `edit`
/// in team-a.
pub fn case_mapping_at_login() -> GrantMappingSpec {
    GrantMappingSpec {
        cluster_roles: vec!["view".into()],
        namespaced: vec![NamespacedGrant {
            cluster_role: "edit".into(),
            namespaces: vec!["team-a".into()],
        }],
        ..GrantMappingSpec::default()
    }
}

/// What the session of every [`GrantCase`] has: `view` cluster-wide and `edit` in team-a.
pub fn case_session_bindings() -> (Vec<String>, Vec<NamespacedBinding>) {
    (
        vec!["view".into()],
        vec![NamespacedBinding {
            cluster_role: "edit".into(),
            namespace: "team-a".into(),
        }],
    )
}

/// One change to the session's mapping, and whether the session must survive it.
#[derive(Debug, Clone)]
pub struct GrantCase {
    /// What changed.
    pub name: &'static str,
    /// The mapping `sre` now; `None` when it was deleted.
    pub mapping: Option<GrantMappingSpec>,
    /// The cluster's ClusterRoles now.
    pub cluster_roles: ClusterRoles,
    /// What the API server answers about binding the mapping's roles now.
    pub bindable: Bindable,
    /// Whether the session holds.
    pub holds: bool,
}

impl GrantCase {
    /// The mappings now, as resolution sees them: built by [`mapping_views`], the one function
    /// the login, the refresh and the reconciler build their views with.
    pub fn views(&self) -> Vec<MappingView> {
        let named: Vec<NamedMapping> = self
            .mapping
            .iter()
            .map(|spec| NamedMapping {
                name: CASE_ROLE.to_owned(),
                spec: spec.clone(),
            })
            .collect();
        let facts = ClusterFacts {
            cluster_roles: Some(&self.cluster_roles),
            allow_cluster_wide_write: false,
        };
        mapping_views(&named, &facts, &|_| self.bindable.clone())
    }

    /// The role of the session.
    pub fn role(&self) -> RoleName {
        // A valid role name, constant.
        RoleName::new(CASE_ROLE).unwrap_or_else(|_| unreachable!("{CASE_ROLE} is a valid role"))
    }
}

/// The table: unchanged, grew (holds); shrank, deleted, not ready, its role became cluster-wide
/// write (revoked).
pub fn grant_cases() -> Vec<GrantCase> {
    let at_login = case_mapping_at_login();
    let mut grew = at_login.clone();
    grew.namespaced[0].namespaces.push("team-b".into());
    grew.cluster_roles.push("pod-reader-extra".into());
    let mut grew_roles = bootstrap_cluster_roles().into_entries();
    grew_roles.push((
        "pod-reader-extra".to_owned(),
        ClusterRoleRules {
            rules: vec![rule("", &["pods"], READ)],
            ..ClusterRoleRules::default()
        },
    ));
    let mut shrank = at_login.clone();
    shrank.namespaced[0].namespaces = vec!["team-b".into()];
    let case = |name, mapping, cluster_roles, bindable, holds| GrantCase {
        name,
        mapping,
        cluster_roles,
        bindable,
        holds,
    };
    vec![
        case(
            "unchanged",
            Some(at_login.clone()),
            bootstrap_cluster_roles(),
            Bindable::Yes,
            true,
        ),
        case(
            "grew",
            Some(grew),
            grew_roles.into_iter().collect(),
            Bindable::Yes,
            true,
        ),
        case(
            "shrank",
            Some(shrank),
            bootstrap_cluster_roles(),
            Bindable::Yes,
            false,
        ),
        case(
            "deleted",
            None,
            bootstrap_cluster_roles(),
            Bindable::Yes,
            false,
        ),
        case(
            "not ready",
            Some(at_login.clone()),
            bootstrap_cluster_roles(),
            Bindable::No("tka-server may not bind ClusterRole view".into()),
            false,
        ),
        case(
            "its role became cluster-wide write",
            Some(at_login),
            view_gained_a_write(),
            Bindable::Yes,
            false,
        ),
    ]
}
