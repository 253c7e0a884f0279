//! GrantMappings as policy sees them: [`MappingView`] (a mapping plus what the server knows about
//! its usability: [`MappingState`]), [`validate_mapping`] (the spec problems that make a mapping
//! unusable, for the reconciler's `Ready` condition and for resolution), [`judge_mapping`] (what
//! the cluster's facts make of a mapping: missing or cluster-wide write roles, bindability), and
//! subject matching. No I/O.

use std::collections::BTreeSet;
use std::fmt;

use serde::{Deserialize, Serialize};

use super::rbac::ClusterRoles;
use super::{GrantMappingSpec, Subject};
use crate::domain::{Identity, RoleName, Ttl, is_dns1123_label};

/// A GrantMapping as resolution sees it: its name (the role), its spec, and what the server
/// knows about it beyond the spec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MappingView {
    /// The mapping's `metadata.name`: the role that capability values refer to.
    pub name: RoleName,
    /// The mapping's spec.
    pub spec: GrantMappingSpec,
    /// Whether the server may use it, as far as the cluster's facts tell.
    pub state: MappingState,
}

impl MappingView {
    /// A usable view of a mapping.
    pub fn new(name: RoleName, spec: GrantMappingSpec) -> Self {
        Self {
            name,
            spec,
            state: MappingState::Ready,
        }
    }

    /// The same mapping, not ready (`NotBindable`) for `reason`.
    #[must_use]
    pub fn unusable(self, reason: impl Into<String>) -> Self {
        self.with_state(MappingState::NotReady {
            reason: NotReadyReason::NotBindable,
            message: reason.into(),
        })
    }

    /// The same mapping in `state`.
    #[must_use]
    pub fn with_state(mut self, state: MappingState) -> Self {
        self.state = state;
        self
    }
}

/// The reason of a GrantMapping's `Ready=False` condition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum NotReadyReason {
    /// It binds in the server's namespace or a denied namespace.
    ForbiddenNamespace,
    /// Its spec is invalid (see [`MappingProblem`]).
    InvalidSpec,
    /// A ClusterRole it refers to does not exist.
    ClusterRoleMissing,
    /// `clusterRoles` names a role that grants more than reading (see [`ClusterRoles::beyond_read`]).
    ClusterWideWrite,
    /// The server may not bind one of its ClusterRoles.
    NotBindable,
}

impl NotReadyReason {
    /// The condition reason, e.g. `ClusterWideWrite`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ForbiddenNamespace => "ForbiddenNamespace",
            Self::InvalidSpec => "InvalidSpec",
            Self::ClusterRoleMissing => "ClusterRoleMissing",
            Self::ClusterWideWrite => "ClusterWideWrite",
            Self::NotBindable => "NotBindable",
        }
    }
}

impl fmt::Display for NotReadyReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Whether the server may use a mapping, beyond what its spec says.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum MappingState {
    /// Usable.
    Ready,
    /// Never used while this holds: a login is refused and sessions that used it are revoked.
    NotReady {
        /// The condition reason.
        reason: NotReadyReason,
        /// What is wrong and what to do, in words (the condition message and the denial).
        message: String,
    },
    /// The server could not check it yet (the ClusterRoles are not listed yet, the API server
    /// did not answer a bindability question): a login is refused, a live session is neither
    /// refreshed nor revoked until it is known.
    Unchecked(String),
}

impl MappingState {
    /// The words for a login refused because of this state, when not [`MappingState::Ready`].
    pub fn refusal(&self) -> Option<&str> {
        match self {
            Self::Ready => None,
            Self::NotReady { message, .. } | Self::Unchecked(message) => Some(message),
        }
    }
}

/// Whether the server may bind a mapping's roles, as the API server answered it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Bindable {
    /// Every question was allowed.
    Yes,
    /// The API server said no; says what.
    No(String),
    /// Not asked yet, or the API server failed; says why.
    Unknown(String),
}

/// The cluster's facts a mapping is judged against.
#[derive(Debug, Clone, Copy)]
pub struct ClusterFacts<'a> {
    /// Every ClusterRole, once listed; `None` before the first list.
    pub cluster_roles: Option<&'a ClusterRoles>,
    /// Whether `clusterRoles` may name roles that grant more than reading (the server flag
    /// `--allow-cluster-wide-write`).
    pub allow_cluster_wide_write: bool,
}

/// How many offending rules a `ClusterWideWrite` message names.
const NAMED_RULES: usize = 4;

/// What the cluster's facts make of a mapping whose spec is valid: `ClusterRoleMissing`, then
/// `ClusterWideWrite` (unless allowed), then `NotBindable`; [`MappingState::Unchecked`] when a
/// fact is not known yet. The reconciler's `Ready` condition, the login and the re-validation of
/// sessions all use this one judgement.
///
/// ```
/// use tka_core::policy::{
///     Bindable, ClusterFacts, ClusterRoleRules, ClusterRoles, GrantMappingSpec, MappingState,
///     NotReadyReason, PolicyRule, judge_mapping,
/// };
///
/// let roles: ClusterRoles = [("edit".to_owned(), ClusterRoleRules {
///     rules: vec![PolicyRule {
///         api_groups: vec![String::new()],
///         resources: vec!["pods".into()],
///         verbs: vec!["create".into()],
///         ..Default::default()
///     }],
///     ..Default::default()
/// })].into_iter().collect();
/// let facts = ClusterFacts { cluster_roles: Some(&roles), allow_cluster_wide_write: false };
/// let spec = GrantMappingSpec { cluster_roles: vec!["edit".into()], ..Default::default() };
/// let MappingState::NotReady { reason, message } = judge_mapping(&spec, &facts, &Bindable::Yes) else {
///     panic!("edit cluster-wide must not be ready");
/// };
/// assert_eq!(reason, NotReadyReason::ClusterWideWrite);
/// assert!(message.contains("namespaced: [{clusterRole: edit, namespaces: [...]}]"));
/// ```
pub fn judge_mapping(
    spec: &GrantMappingSpec,
    facts: &ClusterFacts<'_>,
    bindable: &Bindable,
) -> MappingState {
    let Some(roles) = facts.cluster_roles else {
        return MappingState::Unchecked(
            "tka-server has not listed the cluster's ClusterRoles yet; try again shortly"
                .to_owned(),
        );
    };
    let mut missing: Vec<&str> = spec
        .cluster_roles
        .iter()
        .map(String::as_str)
        .chain(spec.namespaced.iter().map(|g| g.cluster_role.as_str()))
        .filter(|r| !roles.contains(r))
        .collect();
    missing.sort_unstable();
    missing.dedup();
    if !missing.is_empty() {
        return MappingState::NotReady {
            reason: NotReadyReason::ClusterRoleMissing,
            message: format!(
                "ClusterRole {} does not exist; create it or fix the name",
                missing.join(", ")
            ),
        };
    }
    if !facts.allow_cluster_wide_write {
        let mut names: Vec<&str> = spec.cluster_roles.iter().map(String::as_str).collect();
        names.sort_unstable();
        names.dedup();
        for role in names {
            let beyond = roles.beyond_read(role).unwrap_or_default();
            if beyond.is_empty() {
                continue;
            }
            let named: Vec<&str> = beyond
                .iter()
                .take(NAMED_RULES)
                .map(String::as_str)
                .collect();
            let more = beyond.len().saturating_sub(NAMED_RULES);
            let more = if more > 0 {
                format!("; and {more} more")
            } else {
                String::new()
            };
            return MappingState::NotReady {
                reason: NotReadyReason::ClusterWideWrite,
                message: format!(
                    "ClusterRole {role} grants more than read access ({}{more}), and clusterRoles binds it in every namespace, the protected ones included; bind it per namespace instead: namespaced: [{{clusterRole: {role}, namespaces: [...]}}]",
                    named.join("; ")
                ),
            };
        }
    }
    match bindable {
        Bindable::Yes => MappingState::Ready,
        Bindable::No(why) => MappingState::NotReady {
            reason: NotReadyReason::NotBindable,
            message: why.clone(),
        },
        Bindable::Unknown(why) => MappingState::Unchecked(why.clone()),
    }
}

/// A GrantMapping as the cluster stores it: its name (the role) and spec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamedMapping {
    /// The mapping's name: the role name capability values refer to.
    pub name: String,
    /// Its spec.
    pub spec: GrantMappingSpec,
}

/// The mappings as resolution sees them: invalid names dropped (no capability value can name
/// them), each judged by [`judge_mapping`] against the cluster's facts and what `bindable` says
/// about it. The one way views are built: for the login and the token refresh (from the
/// server's watch) and for the reconciler's re-validation (from its list).
pub fn mapping_views(
    mappings: &[NamedMapping],
    facts: &ClusterFacts<'_>,
    bindable: &dyn Fn(&NamedMapping) -> Bindable,
) -> Vec<MappingView> {
    mappings
        .iter()
        .filter_map(|m| {
            let name = RoleName::new(&m.name).ok()?;
            let state = judge_mapping(&m.spec, facts, &bindable(m));
            Some(MappingView::new(name, m.spec.clone()).with_state(state))
        })
        .collect()
}

/// Something wrong with a GrantMapping's spec; a mapping with any problem is never used.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(tag = "problem", rename_all = "camelCase")]
#[non_exhaustive]
pub enum MappingProblem {
    /// The mapping binds a ClusterRole in a namespace tka must never grant access to (the
    /// server's own namespace or the deny list).
    ForbiddenNamespace {
        /// The namespace.
        namespace: String,
    },
    /// The mapping binds nothing: no cluster roles and no namespaced grants.
    BindsNothing,
    /// A `defaultTTL` or `maxTTL` that does not parse or is not positive.
    InvalidTtl {
        /// `defaultTTL` or `maxTTL`.
        field: String,
        /// The value as written.
        value: String,
        /// Why it cannot be used.
        reason: String,
    },
    /// A namespace that is not a valid Kubernetes namespace name.
    InvalidNamespace {
        /// The namespace as written.
        namespace: String,
    },
    /// An empty ClusterRole name.
    EmptyClusterRole,
    /// A subject with none or more than one of `user`, `tag`, `group` set.
    InvalidSubject {
        /// The subject's position in `subjects` (0-based).
        index: usize,
    },
    /// The mapping's name is not a valid role name.
    InvalidName {
        /// The name as given.
        name: String,
    },
}

impl MappingProblem {
    /// The reason for the mapping's `Ready=False` condition: `ForbiddenNamespace` or
    /// `InvalidSpec`.
    pub fn condition_reason(&self) -> &'static str {
        match self {
            Self::ForbiddenNamespace { .. } => "ForbiddenNamespace",
            _ => "InvalidSpec",
        }
    }

    /// Whether this is a [`MappingProblem::ForbiddenNamespace`].
    pub fn is_forbidden_namespace(&self) -> bool {
        matches!(self, Self::ForbiddenNamespace { .. })
    }
}

impl fmt::Display for MappingProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::ForbiddenNamespace { namespace } => write!(
                f,
                "binds a role in the protected namespace {namespace:?}, which tka never grants access to"
            ),
            Self::BindsNothing => f.write_str("binds nothing: set clusterRoles or namespaced"),
            Self::InvalidTtl {
                field,
                value,
                reason,
            } => write!(f, "{field} {value:?} is invalid: {reason}"),
            Self::InvalidNamespace { namespace } => {
                write!(f, "{namespace:?} is not a valid namespace name")
            }
            Self::EmptyClusterRole => f.write_str("a clusterRole name is empty"),
            Self::InvalidSubject { index } => write!(
                f,
                "subject #{} must set exactly one of user, tag or group",
                index + 1
            ),
            Self::InvalidName { name } => write!(
                f,
                "the name {name:?} is not a valid role name (lowercase letters, digits, '-' and '.')"
            ),
        }
    }
}

/// The problems of a GrantMapping's spec, in a stable order; empty when the mapping is usable as
/// far as policy can tell. The reconciler sets `Ready=False` with
/// [`MappingProblem::condition_reason`] of the first problem; resolution never uses a mapping
/// with problems.
///
/// ```
/// use std::collections::BTreeSet;
/// use tka_core::policy::{validate_mapping, GrantMappingSpec, MappingProblem, NamespacedGrant};
///
/// let forbidden: BTreeSet<String> = ["kube-system".to_owned(), "tka".to_owned()].into();
/// let spec = GrantMappingSpec {
///     namespaced: vec![NamespacedGrant { cluster_role: "edit".into(), namespaces: vec!["kube-system".into()] }],
///     ..Default::default()
/// };
/// let problems = validate_mapping("sre", &spec, &forbidden);
/// assert_eq!(problems, [MappingProblem::ForbiddenNamespace { namespace: "kube-system".into() }]);
/// assert_eq!(problems[0].condition_reason(), "ForbiddenNamespace");
/// ```
pub fn validate_mapping(
    name: &str,
    spec: &GrantMappingSpec,
    forbidden_namespaces: &BTreeSet<String>,
) -> Vec<MappingProblem> {
    let mut forbidden = BTreeSet::new();
    let mut invalid_namespaces = BTreeSet::new();
    let mut empty_role = spec.cluster_roles.iter().any(|r| r.trim().is_empty());
    let mut binds_any = !spec.cluster_roles.is_empty();
    for grant in &spec.namespaced {
        empty_role |= grant.cluster_role.trim().is_empty();
        for namespace in &grant.namespaces {
            binds_any = true;
            if forbidden_namespaces.contains(namespace) {
                forbidden.insert(namespace.clone());
            } else if !is_dns1123_label(namespace) {
                invalid_namespaces.insert(namespace.clone());
            }
        }
    }

    let mut problems: Vec<MappingProblem> = forbidden
        .into_iter()
        .map(|namespace| MappingProblem::ForbiddenNamespace { namespace })
        .collect();
    if RoleName::new(name).is_err() {
        problems.push(MappingProblem::InvalidName {
            name: name.to_owned(),
        });
    }
    if !binds_any {
        problems.push(MappingProblem::BindsNothing);
    }
    if empty_role {
        problems.push(MappingProblem::EmptyClusterRole);
    }
    problems.extend(
        invalid_namespaces
            .into_iter()
            .map(|namespace| MappingProblem::InvalidNamespace { namespace }),
    );
    for (field, value) in [("defaultTTL", &spec.default_ttl), ("maxTTL", &spec.max_ttl)] {
        if let Some(value) = value
            && let Err(e) = Ttl::parse(value)
        {
            problems.push(MappingProblem::InvalidTtl {
                field: field.to_owned(),
                value: value.clone(),
                reason: match e {
                    crate::DomainError::Ttl { reason, .. } => reason,
                    other => other.to_string(),
                },
            });
        }
    }
    for (index, subject) in spec.subjects.iter().enumerate() {
        let set = [&subject.user, &subject.tag, &subject.group]
            .iter()
            .filter(|f| f.is_some())
            .count();
        if set != 1 {
            problems.push(MappingProblem::InvalidSubject { index });
        }
    }
    problems
}

/// Whether the caller matches a subject. A `user` matches only an untagged device with that
/// login name; a `tag` matches a device carrying it; a `group` matches only an untagged device
/// whose user is in it (a tagged device acts as its tags, never as the user who created it). A
/// subject with none or several fields set matches nothing.
pub(crate) fn subject_matches(subject: &Subject, identity: &Identity) -> bool {
    match (&subject.user, &subject.tag, &subject.group) {
        (Some(user), None, None) => {
            !identity.is_tagged() && identity.user.login_name.as_str() == user
        }
        (None, Some(tag), None) => identity.node.tags.iter().any(|t| t.as_str() == tag),
        (None, None, Some(group)) => !identity.is_tagged() && identity.groups.contains(group),
        _ => false,
    }
}

/// Whether the caller passes a mapping's `subjects` narrowing (always, when there are none).
pub(crate) fn subjects_allow(spec: &GrantMappingSpec, identity: &Identity) -> bool {
    spec.subjects.is_empty() || spec.subjects.iter().any(|s| subject_matches(s, identity))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::NamespacedGrant;

    fn forbidden() -> BTreeSet<String> {
        ["kube-system".to_owned(), "tka-system".to_owned()].into()
    }

    fn spec_in(namespaces: &[&str]) -> GrantMappingSpec {
        GrantMappingSpec {
            namespaced: vec![NamespacedGrant {
                cluster_role: "edit".into(),
                namespaces: namespaces.iter().map(|s| (*s).to_owned()).collect(),
            }],
            ..Default::default()
        }
    }

    #[test]
    fn a_plain_mapping_has_no_problems() {
        let spec = GrantMappingSpec {
            cluster_roles: vec!["view".into()],
            default_ttl: Some("1h".into()),
            max_ttl: Some("8h".into()),
            subjects: vec![Subject {
                tag: Some("tag:ci".into()),
                ..Default::default()
            }],
            ..spec_in(&["team-a"])
        };
        assert_eq!(validate_mapping("sre", &spec, &forbidden()), []);
    }

    #[test]
    fn forbidden_namespaces_are_flagged_each_once() {
        assert_eq!(
            validate_mapping("sre", &spec_in(&["team-a"]), &forbidden()),
            []
        );
        let problems = validate_mapping(
            "sre",
            &spec_in(&["team-a", "tka-system", "kube-system", "kube-system"]),
            &forbidden(),
        );
        assert_eq!(
            problems,
            [
                MappingProblem::ForbiddenNamespace {
                    namespace: "kube-system".into()
                },
                MappingProblem::ForbiddenNamespace {
                    namespace: "tka-system".into()
                },
            ]
        );
        assert!(
            problems
                .iter()
                .all(|p| p.condition_reason() == "ForbiddenNamespace")
        );
    }

    #[test]
    fn binding_nothing_is_flagged() {
        assert_eq!(
            validate_mapping("sre", &GrantMappingSpec::default(), &forbidden()),
            [MappingProblem::BindsNothing]
        );
        // An entry without namespaces binds nothing either.
        assert_eq!(
            validate_mapping("sre", &spec_in(&[]), &forbidden()),
            [MappingProblem::BindsNothing]
        );
        let cluster_wide = GrantMappingSpec {
            cluster_roles: vec!["view".into()],
            ..Default::default()
        };
        assert_eq!(validate_mapping("sre", &cluster_wide, &forbidden()), []);
    }

    #[test]
    fn invalid_ttls_are_flagged() {
        let spec = GrantMappingSpec {
            default_ttl: Some("0s".into()),
            max_ttl: Some("forever".into()),
            ..spec_in(&["team-a"])
        };
        let problems = validate_mapping("sre", &spec, &forbidden());
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(
            matches!(&problems[0], MappingProblem::InvalidTtl { field, .. } if field == "defaultTTL")
        );
        assert!(
            matches!(&problems[1], MappingProblem::InvalidTtl { field, .. } if field == "maxTTL")
        );
        assert_eq!(problems[0].condition_reason(), "InvalidSpec");
        assert!(problems[1].to_string().contains("\"forever\""));
    }

    #[test]
    fn malformed_subjects_names_and_namespaces_are_flagged() {
        let spec = GrantMappingSpec {
            subjects: vec![
                Subject::default(),
                Subject {
                    user: Some("a@b".into()),
                    tag: Some("tag:ci".into()),
                    group: None,
                },
            ],
            cluster_roles: vec![String::new()],
            ..spec_in(&["Team_A"])
        };
        let problems = validate_mapping("Bad Name", &spec, &forbidden());
        assert_eq!(
            problems,
            [
                MappingProblem::InvalidName {
                    name: "Bad Name".into()
                },
                MappingProblem::EmptyClusterRole,
                MappingProblem::InvalidNamespace {
                    namespace: "Team_A".into()
                },
                MappingProblem::InvalidSubject { index: 0 },
                MappingProblem::InvalidSubject { index: 1 },
            ]
        );
    }
}
