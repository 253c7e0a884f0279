//! Why a caller gets nothing, in words they can act on: [`Denial`] (with its [`DenialKind`]),
//! the per-role [`RoleProblem`]s, and the [`RoleListing`] of what the caller holds on a cluster,
//! which is also the answer to "what could I get here?". Only types and their wording; the
//! decisions are made in `resolve`.

use std::fmt::{self, Write as _};

use serde::{Deserialize, Serialize};

use super::MappingProblem;
use crate::capability::SkippedValue;
use crate::domain::{ClusterName, RoleName, Ttl};

/// The class of a [`Denial`], stable for machines (problem types, metrics, audit).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub enum DenialKind {
    /// The caller holds no usable-looking grant for this cluster at all.
    NoGrants,
    /// The requested role is not granted to the caller on this cluster.
    NoGrantForRole,
    /// The requested role is granted, but this cluster has no GrantMapping of that name.
    NoMapping,
    /// The requested role's GrantMapping narrows to subjects the caller matches none of.
    SubjectsDoNotMatch,
    /// The requested role's GrantMapping binds into a protected namespace.
    ForbiddenNamespace,
    /// The requested role's GrantMapping has an invalid spec.
    InvalidMapping,
    /// The requested role's GrantMapping was marked unusable by the server.
    MappingUnusable,
    /// No role was requested, and none of the caller's grants on this cluster can be used.
    NoUsableRole,
    /// The requested TTL does not parse or is not positive (a bad request, not a refusal).
    InvalidTtl,
}

impl DenialKind {
    /// A stable camelCase code, e.g. `noGrantForRole`.
    pub fn code(self) -> &'static str {
        match self {
            Self::NoGrants => "noGrants",
            Self::NoGrantForRole => "noGrantForRole",
            Self::NoMapping => "noMapping",
            Self::SubjectsDoNotMatch => "subjectsDoNotMatch",
            Self::ForbiddenNamespace => "forbiddenNamespace",
            Self::InvalidMapping => "invalidMapping",
            Self::MappingUnusable => "mappingUnusable",
            Self::NoUsableRole => "noUsableRole",
            Self::InvalidTtl => "invalidTtl",
        }
    }

    /// Whether the request itself was malformed (HTTP 400) rather than refused (HTTP 403).
    pub fn is_bad_request(self) -> bool {
        matches!(self, Self::InvalidTtl)
    }
}

impl fmt::Display for DenialKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

/// Why a role the caller holds on this cluster cannot be used.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "camelCase")]
#[non_exhaustive]
pub enum RoleProblem {
    /// This cluster has no GrantMapping named like the role.
    NoMapping,
    /// The GrantMapping's `subjects` do not include the caller.
    SubjectsDoNotMatch,
    /// The GrantMapping binds into protected namespaces, so it is never used.
    ForbiddenNamespace {
        /// The protected namespaces it binds into, sorted.
        namespaces: Vec<String>,
    },
    /// The GrantMapping's spec is invalid.
    InvalidMapping {
        /// What is wrong with it.
        problems: Vec<MappingProblem>,
    },
    /// The server marked the GrantMapping unusable (e.g. a ClusterRole is missing or not
    /// bindable).
    Unusable {
        /// Why, in words.
        reason: String,
    },
}

impl RoleProblem {
    /// The [`DenialKind`] of a request for a role with this problem.
    pub fn denial_kind(&self) -> DenialKind {
        match self {
            Self::NoMapping => DenialKind::NoMapping,
            Self::SubjectsDoNotMatch => DenialKind::SubjectsDoNotMatch,
            Self::ForbiddenNamespace { .. } => DenialKind::ForbiddenNamespace,
            Self::InvalidMapping { .. } => DenialKind::InvalidMapping,
            Self::Unusable { .. } => DenialKind::MappingUnusable,
        }
    }

    fn describe(&self, role: &RoleName, caller: &str) -> String {
        match self {
            Self::NoMapping => format!(
                "this cluster has no GrantMapping named '{role}'; ask the cluster admin to create one"
            ),
            Self::SubjectsDoNotMatch => format!(
                "GrantMapping '{role}' is limited to certain users, tags or groups and {caller} is not one of them"
            ),
            Self::ForbiddenNamespace { namespaces } => format!(
                "GrantMapping '{role}' binds roles in the protected namespace(s) {}, so it is never used; ask the cluster admin to fix it",
                namespaces.join(", ")
            ),
            Self::InvalidMapping { problems } => format!(
                "GrantMapping '{role}' is invalid ({}); ask the cluster admin to fix it",
                problems
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join("; ")
            ),
            Self::Unusable { reason } => {
                format!("GrantMapping '{role}' is not ready: {reason}")
            }
        }
    }
}

impl fmt::Display for RoleProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoMapping => f.write_str("this cluster has no GrantMapping of that name"),
            Self::SubjectsDoNotMatch => {
                f.write_str("its GrantMapping is limited to other users, tags or groups")
            }
            Self::ForbiddenNamespace { namespaces } => write!(
                f,
                "its GrantMapping binds roles in the protected namespace(s) {}",
                namespaces.join(", ")
            ),
            Self::InvalidMapping { problems } => {
                f.write_str("its GrantMapping is invalid (")?;
                for (i, p) in problems.iter().enumerate() {
                    if i > 0 {
                        f.write_str("; ")?;
                    }
                    write!(f, "{p}")?;
                }
                f.write_str(")")
            }
            Self::Unusable { reason } => write!(f, "its GrantMapping is not ready: {reason}"),
        }
    }
}

/// A role the caller could get on this cluster.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AvailableRole {
    /// The role (GrantMapping name).
    pub role: RoleName,
    /// The highest `priority` among the caller's grants of this role on this cluster.
    pub priority: i64,
    /// The TTL a login without `--ttl` gets (already within [`AvailableRole::max_ttl`]).
    pub default_ttl: Ttl,
    /// The longest session this role allows the caller here: the smallest of the grants'
    /// `maxTTL`, the mapping's `maxTTL` and the server's maximum.
    pub max_ttl: Ttl,
    /// Whether a login without `--role` gets this role.
    pub default: bool,
}

/// A role the caller holds on this cluster but cannot use.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UnavailableRole {
    /// The role.
    pub role: RoleName,
    /// Why it cannot be used.
    pub problem: RoleProblem,
}

/// What a caller holds on one cluster: the roles it could get (best first), the roles it holds
/// but cannot use, and the capability values that were skipped.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RoleListing {
    /// The cluster.
    pub cluster: ClusterName,
    /// Usable roles, in the order resolution prefers them (priority, then name); the first one
    /// is the default.
    pub roles: Vec<AvailableRole>,
    /// Roles granted on this cluster that cannot be used, sorted by role.
    pub unavailable: Vec<UnavailableRole>,
    /// Capability values that were skipped, by schema and position.
    pub skipped: Vec<SkippedValue>,
}

impl RoleListing {
    /// Whether the caller holds any grant on this cluster (usable or not).
    pub fn holds_any(&self) -> bool {
        !self.roles.is_empty() || !self.unavailable.is_empty()
    }
}

/// A refusal, with everything needed to explain it. Its `Display` is the message for the user.
///
/// ```text
/// no grant for role 'admin' on cluster 'prod'; your grants: read-only
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[serde(rename_all = "camelCase")]
#[error("{}", self.message())]
#[non_exhaustive]
pub struct Denial {
    /// The class of refusal.
    pub kind: DenialKind,
    /// The role the caller asked for, if any.
    pub requested_role: Option<RoleName>,
    /// Extra detail: the TTL error, or where else the requested role is granted.
    pub detail: Option<String>,
    /// Who asked, as [`crate::Identity::describe`] puts it.
    pub caller: String,
    /// The capability name(s) grants are read from, for the "no grants" hint.
    pub capability_names: Vec<String>,
    /// What the caller holds on this cluster (boxed to keep `Result<Decision, Denial>` small).
    pub listing: Box<RoleListing>,
}

impl Denial {
    /// The cluster the request was for.
    pub fn cluster(&self) -> &ClusterName {
        &self.listing.cluster
    }

    /// The skipped capability values, with reasons.
    pub fn skipped(&self) -> &[SkippedValue] {
        &self.listing.skipped
    }

    /// The user-facing message (the same as `Display`).
    pub fn message(&self) -> String {
        let cluster = &self.listing.cluster;
        let mut out = String::new();
        match self.kind {
            DenialKind::InvalidTtl => {
                out.push_str(self.detail.as_deref().unwrap_or("invalid TTL"));
                out.push_str("; write it like 90m, 8h or 1h30m");
                return out;
            }
            DenialKind::NoGrants => {
                if let Some(role) = &self.requested_role {
                    let _ = write!(out, "cannot use role '{role}': ");
                }
                let _ = write!(
                    out,
                    "you have no tka grants (capability {}) for cluster '{cluster}'",
                    self.capability_names.join(" or ")
                );
                if let Some(detail) = &self.detail {
                    let _ = write!(out, " ({detail})");
                }
                out.push_str("; ask your tailnet admin to add one to the policy file");
            }
            DenialKind::NoGrantForRole => {
                let role = self.requested_role_display();
                let _ = write!(out, "no grant for role '{role}' on cluster '{cluster}'");
                if let Some(detail) = &self.detail {
                    let _ = write!(out, " ({detail})");
                }
                self.push_grants(&mut out);
            }
            DenialKind::NoUsableRole => {
                let _ = write!(
                    out,
                    "none of your grants can be used on cluster '{cluster}': "
                );
                let reasons: Vec<String> = self
                    .listing
                    .unavailable
                    .iter()
                    .map(|u| {
                        format!(
                            "'{}': {}",
                            u.role,
                            u.problem.describe(&u.role, &self.caller)
                        )
                    })
                    .collect();
                out.push_str(&reasons.join("; "));
            }
            _ => {
                let role = self.requested_role_display();
                let _ = write!(out, "role '{role}' cannot be used on cluster '{cluster}': ");
                let problem = self
                    .requested_role
                    .as_ref()
                    .and_then(|r| self.listing.unavailable.iter().find(|u| &u.role == r));
                match problem {
                    Some(u) => out.push_str(&u.problem.describe(&u.role, &self.caller)),
                    None => out.push_str(self.kind.code()),
                }
                self.push_grants(&mut out);
            }
        }
        self.push_skipped(&mut out);
        out
    }

    fn requested_role_display(&self) -> &str {
        self.requested_role.as_ref().map_or("?", RoleName::as_str)
    }

    fn push_grants(&self, out: &mut String) {
        let mut held: Vec<String> = self
            .listing
            .roles
            .iter()
            .map(|r| r.role.to_string())
            .collect();
        held.extend(
            self.listing
                .unavailable
                .iter()
                .filter(|u| Some(&u.role) != self.requested_role.as_ref())
                .map(|u| format!("{} (not usable: {})", u.role, u.problem)),
        );
        if held.is_empty() {
            return;
        }
        let _ = write!(out, "; your grants: {}", held.join(", "));
    }

    fn push_skipped(&self, out: &mut String) {
        let skipped = &self.listing.skipped;
        if skipped.is_empty() {
            return;
        }
        let _ = write!(
            out,
            "; {} capability value(s) were ignored because they are malformed: ",
            skipped.len()
        );
        let items: Vec<String> = skipped.iter().map(ToString::to_string).collect();
        out.push_str(&items.join(" | "));
    }
}
