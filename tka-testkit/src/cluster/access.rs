//! The answers to `SelfSubjectAccessReview`s: a programmable allow/deny list standing in for the
//! API server's authorizer. It owns the decision only; the fake does not enforce it on other
//! requests (there is no authentication in the fake).

use serde_json::{Value, json};

use super::request::{Attributes, RequestMatch};

/// A request an [`AccessPolicy`] allows or denies: a [`RequestMatch`], the fake's one vocabulary
/// for requests.
pub type AccessRule = RequestMatch;

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
        let field = |f: &str| attrs.get(f).and_then(Value::as_str).unwrap_or("");
        let attrs = Attributes {
            verb: field("verb"),
            group: field("group"),
            resource: field("resource"),
            subresource: field("subresource"),
            namespace: field("namespace"),
            name: field("name"),
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
