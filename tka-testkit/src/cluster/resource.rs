//! The resource types the fake serves: what a kind is called, where it lives in the URL space, and
//! the few per-type rules the real API server applies (scope, status subresource, name format).
//! It owns the registry of types; it does not store objects or speak HTTP.

use std::collections::BTreeMap;

/// How the API server validates `metadata.name` for a resource type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum NameRule {
    /// RFC 1123 subdomain: lowercase alphanumerics, `-` and `.`, at most 253 characters (most types).
    Dns1123Subdomain,
    /// RFC 1123 label: lowercase alphanumerics and `-`, at most 63 characters (namespaces).
    Dns1123Label,
    /// Any name that is a valid URL path segment (RBAC objects, e.g. `system:basic-user`).
    PathSegment,
}

/// Behaviour that only some built-in types have; kept private so that registering a custom
/// resource stays a one-liner.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Special {
    None,
    Namespace,
    ServiceAccount,
    RoleBinding,
    AccessReview,
}

/// One resource type served by the fake, e.g. `tka.dev/v1alpha1` `sessions`.
///
/// Registering a custom resource is one line:
///
/// ```
/// use tka_testkit::cluster::{FakeCluster, ResourceType};
///
/// let cluster = FakeCluster::new();
/// cluster.register(ResourceType::cluster_scoped("example.com", "v1", "widgets", "Widget").with_status());
/// ```
#[derive(Debug, Clone)]
pub struct ResourceType {
    pub(crate) group: String,
    pub(crate) version: String,
    pub(crate) plural: String,
    pub(crate) kind: String,
    pub(crate) namespaced: bool,
    pub(crate) status: bool,
    pub(crate) custom: bool,
    pub(crate) name_rule: NameRule,
    pub(crate) short_names: Vec<String>,
    pub(crate) special: Special,
}

impl ResourceType {
    /// A custom resource (CRD-backed) living in namespaces.
    pub fn namespaced(group: &str, version: &str, plural: &str, kind: &str) -> Self {
        Self::custom(group, version, plural, kind, true)
    }

    /// A custom resource (CRD-backed) without a namespace.
    pub fn cluster_scoped(group: &str, version: &str, plural: &str, kind: &str) -> Self {
        Self::custom(group, version, plural, kind, false)
    }

    fn custom(group: &str, version: &str, plural: &str, kind: &str, namespaced: bool) -> Self {
        Self {
            group: group.to_owned(),
            version: version.to_owned(),
            plural: plural.to_owned(),
            kind: kind.to_owned(),
            namespaced,
            status: false,
            custom: true,
            name_rule: NameRule::Dns1123Subdomain,
            short_names: Vec::new(),
            special: Special::None,
        }
    }

    /// A built-in type: unconditional updates allowed, no generation tracking, strategic merge
    /// patch accepted.
    pub fn builtin(group: &str, version: &str, plural: &str, kind: &str, namespaced: bool) -> Self {
        Self {
            custom: false,
            ..Self::custom(group, version, plural, kind, namespaced)
        }
    }

    /// Adds the `/status` subresource: writes to the object ignore `.status`, writes to
    /// `/status` change only `.status`.
    #[must_use]
    pub fn with_status(mut self) -> Self {
        self.status = true;
        self
    }

    /// Sets how `metadata.name` is validated (default: RFC 1123 subdomain).
    #[must_use]
    pub fn with_name_rule(mut self, rule: NameRule) -> Self {
        self.name_rule = rule;
        self
    }

    /// Short names offered in discovery (what `kubectl get ns` resolves).
    #[must_use]
    pub fn with_short_names(mut self, names: &[&str]) -> Self {
        self.short_names = names.iter().map(|&n| n.to_owned()).collect();
        self
    }

    #[must_use]
    pub(crate) fn with_special(mut self, special: Special) -> Self {
        self.special = special;
        self
    }

    /// The API group (`""` for the core group).
    pub fn group(&self) -> &str {
        &self.group
    }

    /// The version, e.g. `v1`.
    pub fn version(&self) -> &str {
        &self.version
    }

    /// The plural resource name used in URLs, e.g. `serviceaccounts`.
    pub fn plural(&self) -> &str {
        &self.plural
    }

    /// The kind, e.g. `ServiceAccount`.
    pub fn kind(&self) -> &str {
        &self.kind
    }

    /// Whether objects live in a namespace.
    pub fn is_namespaced(&self) -> bool {
        self.namespaced
    }

    /// `apiVersion` as written in objects: `v1` or `group/version`.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.clone()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// `plural` or `plural.group`, as the API server names a resource in error messages.
    pub(crate) fn qualified_resource(&self) -> String {
        if self.group.is_empty() {
            self.plural.clone()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }

    /// `Kind` or `Kind.group`, as the API server names a kind in validation messages.
    pub(crate) fn qualified_kind(&self) -> String {
        if self.group.is_empty() {
            self.kind.clone()
        } else {
            format!("{}.{}", self.kind, self.group)
        }
    }

    pub(crate) fn key(&self) -> ResourceKey {
        ResourceKey {
            group: self.group.clone(),
            plural: self.plural.clone(),
        }
    }

    /// Custom resources refuse updates without a resourceVersion; built-ins accept them.
    pub(crate) fn allows_unconditional_update(&self) -> bool {
        !self.custom
    }

    /// RBAC objects, leases and events may be created by a PUT.
    pub(crate) fn allows_create_on_update(&self) -> bool {
        matches!(
            self.group.as_str(),
            "rbac.authorization.k8s.io" | "coordination.k8s.io" | "events.k8s.io"
        ) || (self.group.is_empty() && self.plural == "events")
    }

    /// Custom resources answer a DELETE with the object, most built-ins with a `Status`.
    pub(crate) fn returns_deleted_object(&self) -> bool {
        self.custom
    }
}

/// Identifies a resource type in the store, independent of the version it was reached through.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct ResourceKey {
    pub(crate) group: String,
    pub(crate) plural: String,
}

/// The types the fake serves, in registration order.
#[derive(Debug, Clone, Default)]
pub(crate) struct Registry {
    types: Vec<ResourceType>,
}

impl Registry {
    /// The Kubernetes types tka uses, plus tka's own custom resources.
    pub(crate) fn with_defaults() -> Self {
        let rbac = "rbac.authorization.k8s.io";
        let mut registry = Self::default();
        for rt in [
            ResourceType::builtin("", "v1", "namespaces", "Namespace", false)
                .with_status()
                .with_name_rule(NameRule::Dns1123Label)
                .with_short_names(&["ns"])
                .with_special(Special::Namespace),
            ResourceType::builtin("", "v1", "serviceaccounts", "ServiceAccount", true)
                .with_short_names(&["sa"])
                .with_special(Special::ServiceAccount),
            ResourceType::builtin("", "v1", "events", "Event", true).with_short_names(&["ev"]),
            ResourceType::builtin("events.k8s.io", "v1", "events", "Event", true),
            ResourceType::builtin(rbac, "v1", "clusterroles", "ClusterRole", false)
                .with_name_rule(NameRule::PathSegment),
            ResourceType::builtin(
                rbac,
                "v1",
                "clusterrolebindings",
                "ClusterRoleBinding",
                false,
            )
            .with_name_rule(NameRule::PathSegment)
            .with_special(Special::RoleBinding),
            ResourceType::builtin(rbac, "v1", "roles", "Role", true)
                .with_name_rule(NameRule::PathSegment),
            ResourceType::builtin(rbac, "v1", "rolebindings", "RoleBinding", true)
                .with_name_rule(NameRule::PathSegment)
                .with_special(Special::RoleBinding),
            ResourceType::builtin("coordination.k8s.io", "v1", "leases", "Lease", true),
            ResourceType::builtin(
                "authorization.k8s.io",
                "v1",
                "selfsubjectaccessreviews",
                "SelfSubjectAccessReview",
                false,
            )
            .with_special(Special::AccessReview),
            ResourceType::cluster_scoped("tka.dev", "v1alpha1", "sessions", "Session")
                .with_status(),
            ResourceType::cluster_scoped("tka.dev", "v1alpha1", "grantmappings", "GrantMapping")
                .with_status(),
        ] {
            registry.register(rt);
        }
        registry
    }

    /// Adds a type, replacing one with the same group, version and plural.
    pub(crate) fn register(&mut self, rt: ResourceType) {
        self.types
            .retain(|t| !(t.group == rt.group && t.version == rt.version && t.plural == rt.plural));
        self.types.push(rt);
    }

    pub(crate) fn find(&self, group: &str, version: &str, plural: &str) -> Option<&ResourceType> {
        self.types
            .iter()
            .find(|t| t.group == group && t.version == version && t.plural == plural)
    }

    /// The type with this plural in any group (the first registered wins, core before others).
    pub(crate) fn find_plural(&self, plural: &str) -> Option<&ResourceType> {
        self.types.iter().find(|t| t.plural == plural)
    }

    pub(crate) fn find_kind(&self, api_version: &str, kind: &str) -> Option<&ResourceType> {
        self.types
            .iter()
            .find(|t| t.api_version() == api_version && t.kind == kind)
    }

    pub(crate) fn all(&self) -> &[ResourceType] {
        &self.types
    }

    /// Group name → versions served, for discovery.
    pub(crate) fn groups(&self) -> BTreeMap<&str, Vec<&str>> {
        let mut groups: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for t in self.types.iter().filter(|t| !t.group.is_empty()) {
            let versions = groups.entry(t.group.as_str()).or_default();
            if !versions.contains(&t.version.as_str()) {
                versions.push(t.version.as_str());
            }
        }
        groups
    }
}
