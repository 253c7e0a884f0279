//! Grant policy: what a caller may get on this cluster. The tailnet policy file grants roles by
//! name (capability values); [`GrantMappingSpec`]s in the cluster say what a role means here.
//! Resolution is a pure function: no I/O, no clock reads (the caller passes "now").
//!
//! [`resolve`] answers a login ([`Decision`] or [`Denial`]); [`available_roles`] answers "what
//! could I get here?"; [`validate_mapping`] finds the spec problems that make a mapping unusable;
//! [`judge_mapping`] what the cluster's ClusterRoles and the server's RBAC make of it; and
//! [`grant_holds`] decides whether a live session's grant still holds.
//! Capability values are parsed by [`crate::capability`]. See `docs/policy.md` for the rules.

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::domain::{RoleName, Ttl};

#[cfg(any(test, feature = "mocks"))]
pub mod cases;
mod denial;
mod explain;
mod hold;
mod mapping;
mod rbac;
mod resolve;
#[cfg(test)]
mod tests;

pub use denial::{AvailableRole, Denial, DenialKind, RoleListing, RoleProblem, UnavailableRole};
pub use explain::{
    Answer, ExplainInput, Explanation, MappingReport, Outcome, explain, kubernetes_default_roles,
    stand_in_identity,
};
pub use hold::{BindingChange, GrantVerdict, HeldGrant, compare_bindings, grant_holds};
pub use mapping::{
    Bindable, ClusterFacts, MappingProblem, MappingState, MappingView, NamedMapping,
    NotReadyReason, judge_mapping, mapping_views, validate_mapping,
};
pub use rbac::{
    ClusterRoleRules, ClusterRoles, LabelSelector, PolicyRule, READ_VERBS, SelectorRequirement,
};
pub use resolve::{
    DEFAULT_DENIED_NAMESPACES, PolicyContext, PolicySettings, ResolveRequest, TtlRequest,
    available_roles, resolve,
};

/// The spec of a GrantMapping: the cluster's own half of the policy. The mapping's
/// `metadata.name` is the role name that capability values refer to.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(
    feature = "kubernetes",
    derive(kube::CustomResource, schemars::JsonSchema),
    kube(
        group = "tka.dev",
        version = "v1alpha1",
        kind = "GrantMapping",
        plural = "grantmappings",
        singular = "grantmapping",
        shortname = "gm",
        status = "crate::kubernetes::GrantMappingStatus",
        doc = "What a tailnet role name means on this cluster: the ClusterRoles it binds, where, and for how long."
    )
)]
#[serde(rename_all = "camelCase")]
pub struct GrantMappingSpec {
    /// Optional narrowing: when set, the caller must also match one of these.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subjects: Vec<Subject>,
    /// ClusterRoles bound cluster-wide with ClusterRoleBindings.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cluster_roles: Vec<String>,
    /// ClusterRoles bound with RoleBindings in the listed namespaces.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub namespaced: Vec<NamespacedGrant>,
    /// Session lifetime when the caller asks for none (Go notation, e.g. `1h`).
    #[serde(
        default,
        rename = "defaultTTL",
        skip_serializing_if = "Option::is_none"
    )]
    pub default_ttl: Option<String>,
    /// Upper bound for sessions from this mapping.
    #[serde(default, rename = "maxTTL", skip_serializing_if = "Option::is_none")]
    pub max_ttl: Option<String>,
}

/// One narrowing subject of a GrantMapping; exactly one field is set.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "kubernetes", derive(schemars::JsonSchema))]
pub struct Subject {
    /// A Tailscale login name, e.g. `alice@example.com` (never matches a tagged device).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// An ACL tag, e.g. `tag:ci`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
    /// A group, e.g. `group:sre`; only where the control plane reports groups.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
}

/// A ClusterRole bound in a list of namespaces.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "kubernetes", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct NamespacedGrant {
    /// The ClusterRole to bind with RoleBindings.
    pub cluster_role: String,
    /// The namespaces to bind it in.
    pub namespaces: Vec<String>,
}

/// A RoleBinding to create: a ClusterRole in one namespace.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NamespacedBinding {
    /// The ClusterRole.
    pub cluster_role: String,
    /// The namespace.
    pub namespace: String,
}

/// How a requested TTL was shortened.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TtlClamp {
    /// What the caller asked for.
    pub requested: Ttl,
    /// What was granted.
    pub granted: Ttl,
    /// Which bound applied, in words ("maxTTL of the capability grant", "the server's limit", …).
    pub bound: String,
}

/// A positive policy decision: what to create for the caller.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Decision {
    /// The role (GrantMapping name) that was selected.
    pub role: RoleName,
    /// ClusterRoles to bind cluster-wide, sorted and without duplicates.
    pub cluster_roles: Vec<String>,
    /// ClusterRoles to bind per namespace, sorted and without duplicates.
    pub namespaced: Vec<NamespacedBinding>,
    /// The granted session lifetime.
    pub ttl: Ttl,
    /// When the session ends: "now" plus [`Decision::ttl`].
    pub expires_at: Timestamp,
    /// Set when the requested TTL was shortened by a bound.
    pub clamped: Option<TtlClamp>,
}
