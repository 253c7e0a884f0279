//! The answers to `SelfSubjectAccessReview`s: a programmable allow/deny list standing in for the
//! API server's authorizer. It owns the decision only; the fake does not enforce it on other
//! requests (there is no authentication in the fake).

use serde_json::{Value, json};

/// Request attributes a rule matches; each unset field matches anything.
///
/// ```
/// use tka_testkit::cluster::AccessRule;
///
/// let bind_view = AccessRule::any()
///     .verb("bind")
///     .group("rbac.authorization.k8s.io")
///     .resource("clusterroles")
///     .name("view");
/// # let _ = bind_view;
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AccessRule {
    verb: Option<String>,
    group: Option<String>,
    resource: Option<String>,
    subresource: Option<String>,
    namespace: Option<String>,
    name: Option<String>,
}

impl AccessRule {
    /// A rule matching every request.
    pub fn any() -> Self {
        Self::default()
    }

    /// Only this verb (`create`, `bind`, `get`, ...).
    #[must_use]
    pub fn verb(mut self, verb: &str) -> Self {
        self.verb = Some(verb.to_owned());
        self
    }

    /// Only this API group (`""` for core).
    #[must_use]
    pub fn group(mut self, group: &str) -> Self {
        self.group = Some(group.to_owned());
        self
    }

    /// Only this resource (plural), or non-resource URL path.
    #[must_use]
    pub fn resource(mut self, resource: &str) -> Self {
        self.resource = Some(resource.to_owned());
        self
    }

    /// Only this subresource (`""` for the main resource).
    #[must_use]
    pub fn subresource(mut self, subresource: &str) -> Self {
        self.subresource = Some(subresource.to_owned());
        self
    }

    /// Only this namespace (`""` for cluster-wide requests).
    #[must_use]
    pub fn namespace(mut self, namespace: &str) -> Self {
        self.namespace = Some(namespace.to_owned());
        self
    }

    /// Only this object name.
    #[must_use]
    pub fn name(mut self, name: &str) -> Self {
        self.name = Some(name.to_owned());
        self
    }

    fn matches(&self, attrs: &Value) -> bool {
        let field = |f: &str| attrs.get(f).and_then(Value::as_str).unwrap_or("");
        [
            (&self.verb, "verb"),
            (&self.group, "group"),
            (&self.resource, "resource"),
            (&self.subresource, "subresource"),
            (&self.namespace, "namespace"),
            (&self.name, "name"),
        ]
        .into_iter()
        .all(|(want, f)| want.as_ref().is_none_or(|w| w == field(f)))
    }
}

/// Decides `SelfSubjectAccessReview`s: a matching deny rule wins, then a matching allow rule,
/// then the default. The default policy allows everything.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessPolicy {
    default_allow: bool,
    allow: Vec<AccessRule>,
    deny: Vec<AccessRule>,
}

impl Default for AccessPolicy {
    fn default() -> Self {
        Self::allow_all()
    }
}

impl AccessPolicy {
    /// Allows everything not denied.
    pub fn allow_all() -> Self {
        Self {
            default_allow: true,
            allow: Vec::new(),
            deny: Vec::new(),
        }
    }

    /// Denies everything not allowed.
    pub fn deny_all() -> Self {
        Self {
            default_allow: false,
            ..Self::allow_all()
        }
    }

    /// Adds an allow rule.
    #[must_use]
    pub fn allow(mut self, rule: AccessRule) -> Self {
        self.allow.push(rule);
        self
    }

    /// Adds a deny rule.
    #[must_use]
    pub fn deny(mut self, rule: AccessRule) -> Self {
        self.deny.push(rule);
        self
    }

    /// Answers a review: the request body in, the same object with `status` filled in out.
    pub(crate) fn review(&self, mut review: Value) -> Value {
        let attrs = match (
            review.pointer("/spec/resourceAttributes"),
            review.pointer("/spec/nonResourceAttributes"),
        ) {
            (Some(a), _) => a.clone(),
            (None, Some(n)) => json!({
                "verb": n.get("verb").cloned().unwrap_or(Value::Null),
                "resource": n.get("path").cloned().unwrap_or(Value::Null),
            }),
            (None, None) => json!({}),
        };
        let allowed = if self.deny.iter().any(|r| r.matches(&attrs)) {
            false
        } else {
            self.default_allow || self.allow.iter().any(|r| r.matches(&attrs))
        };
        let status = if allowed {
            json!({"allowed": true, "reason": "allowed by the fake cluster's access policy"})
        } else {
            json!({"allowed": false})
        };
        if let Value::Object(o) = &mut review {
            o.insert("status".into(), status);
            o.insert("metadata".into(), json!({"creationTimestamp": null}));
        }
        review
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn review(verb: &str, resource: &str, name: &str) -> Value {
        json!({"spec": {"resourceAttributes": {
            "verb": verb, "group": "rbac.authorization.k8s.io", "resource": resource, "name": name
        }}})
    }

    fn allowed(policy: &AccessPolicy, r: Value) -> bool {
        policy.review(r)["status"]["allowed"] == json!(true)
    }

    #[test]
    fn default_allows_and_deny_wins() {
        let policy = AccessPolicy::default();
        assert!(allowed(&policy, review("bind", "clusterroles", "admin")));
        let policy = policy.deny(AccessRule::any().verb("bind").name("admin"));
        assert!(!allowed(&policy, review("bind", "clusterroles", "admin")));
        assert!(allowed(&policy, review("bind", "clusterroles", "view")));
    }

    #[test]
    fn deny_all_allows_only_listed() {
        let policy =
            AccessPolicy::deny_all().allow(AccessRule::any().resource("clusterroles").name("view"));
        assert!(allowed(&policy, review("bind", "clusterroles", "view")));
        assert!(!allowed(&policy, review("bind", "clusterroles", "edit")));
    }
}
