//! [`RequestMatch`]: the one way to say "these requests" to the fake, whether it answers an access
//! review ([`AccessPolicy`](super::AccessPolicy)), fails a call ([`FaultRule`](super::FaultRule))
//! or a behaviour-suite case picks a write from the call log ([`Call::kind`]).
//!
//! It owns matching only: what a match does (allow, deny, fail, count) is the caller's business.
//! Every field left unset matches anything; `""` for the subresource, namespace or name matches a
//! request that has none (the main resource, a cluster-wide request, a collection).

use std::fmt;

/// A Kubernetes API verb, as the fake classifies requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Verb {
    /// POST to a collection, or to a subresource such as `serviceaccounts/token`.
    Create,
    /// GET of one object.
    Get,
    /// GET of a collection.
    List,
    /// GET of a collection with `watch=true`.
    Watch,
    /// PUT.
    Update,
    /// PATCH (any flavour, including server-side apply).
    Patch,
    /// DELETE of one object.
    Delete,
    /// DELETE of a collection.
    DeleteCollection,
}

impl fmt::Display for Verb {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Create => "create",
            Self::Get => "get",
            Self::List => "list",
            Self::Watch => "watch",
            Self::Update => "update",
            Self::Patch => "patch",
            Self::Delete => "delete",
            Self::DeleteCollection => "deletecollection",
        })
    }
}

/// One request the fake received.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Call {
    /// The verb.
    pub verb: Verb,
    /// The API group (`""` for core).
    pub group: String,
    /// The plural resource, e.g. `serviceaccounts`.
    pub resource: String,
    /// The subresource, e.g. `token` or `status`.
    pub subresource: Option<String>,
    /// The namespace in the URL, if any.
    pub namespace: Option<String>,
    /// The object's name, if the URL names one (for a create: the name in the body).
    pub name: Option<String>,
    /// The HTTP status the fake answered (0 while the call is in flight).
    pub code: u16,
}

impl Call {
    /// What kind of request this was: its verb, group, resource and subresource, whatever the
    /// namespace and name. A fault rule [`on`](super::FaultRule::on) it hits calls of the same kind.
    pub fn kind(&self) -> RequestMatch {
        RequestMatch::any()
            .verb(self.verb)
            .group(&self.group)
            .resource(&self.resource)
            .subresource(self.subresource.as_deref().unwrap_or(""))
    }
}

#[cfg(test)]
impl Call {
    /// A core-group call in namespace `ns`, as the unit tests need one.
    pub(crate) fn in_ns(verb: Verb, resource: &str, sub: Option<&str>, name: Option<&str>) -> Self {
        Self {
            verb,
            group: String::new(),
            resource: resource.to_owned(),
            subresource: sub.map(str::to_owned),
            namespace: Some("ns".to_owned()),
            name: name.map(str::to_owned),
            code: 0,
        }
    }
}

impl fmt::Display for Call {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.verb, self.resource)?;
        if let Some(sub) = &self.subresource {
            write!(f, "/{sub}")?;
        }
        match (&self.namespace, &self.name) {
            (Some(ns), Some(name)) => write!(f, " {ns}/{name}")?,
            (None, Some(name)) => write!(f, " {name}")?,
            (Some(ns), None) => write!(f, " -n {ns}")?,
            (None, None) => {}
        }
        write!(f, " -> {}", self.code)
    }
}

/// Request attributes a rule matches; each unset field matches anything.
///
/// ```
/// use tka_testkit::cluster::{RequestMatch, Verb};
///
/// // Binding the `view` ClusterRole, as an access review asks about it.
/// let bind_view = RequestMatch::any()
///     .verb("bind")
///     .group("rbac.authorization.k8s.io")
///     .resource("clusterroles")
///     .name("view");
/// // Every TokenRequest, as a fault rule or the call log names it.
/// let token_requests = RequestMatch::any()
///     .verb(Verb::Create)
///     .resource("serviceaccounts")
///     .subresource("token");
/// # let _ = (bind_view, token_requests);
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct RequestMatch {
    verb: Option<String>,
    group: Option<String>,
    resource: Option<String>,
    subresource: Option<String>,
    namespace: Option<String>,
    name: Option<String>,
}

/// The attributes of one request, as [`RequestMatch::matches`] reads them: `""` where the request
/// has none.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Attributes<'a> {
    pub(crate) verb: &'a str,
    pub(crate) group: &'a str,
    pub(crate) resource: &'a str,
    pub(crate) subresource: &'a str,
    pub(crate) namespace: &'a str,
    pub(crate) name: &'a str,
}

impl RequestMatch {
    /// A rule matching every request.
    pub fn any() -> Self {
        Self::default()
    }

    /// Only this verb (`create`, `bind`, `get`, ..., or a [`Verb`](super::Verb)).
    #[must_use]
    pub fn verb(mut self, verb: impl fmt::Display) -> Self {
        self.verb = Some(verb.to_string());
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

    /// The main resource and every subresource.
    #[must_use]
    pub fn any_subresource(mut self) -> Self {
        self.subresource = None;
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

    /// Whether a request with these attributes matches.
    pub(crate) fn matches(&self, attrs: &Attributes<'_>) -> bool {
        [
            (&self.verb, attrs.verb),
            (&self.group, attrs.group),
            (&self.resource, attrs.resource),
            (&self.subresource, attrs.subresource),
            (&self.namespace, attrs.namespace),
            (&self.name, attrs.name),
        ]
        .into_iter()
        .all(|(want, have)| want.as_ref().is_none_or(|w| w == have))
    }

    /// Whether `call` matches.
    pub fn matches_call(&self, call: &Call) -> bool {
        let verb = call.verb.to_string();
        self.matches(&Attributes {
            verb: &verb,
            group: &call.group,
            resource: &call.resource,
            subresource: call.subresource.as_deref().unwrap_or(""),
            namespace: call.namespace.as_deref().unwrap_or(""),
            name: call.name.as_deref().unwrap_or(""),
        })
    }
}

impl fmt::Display for RequestMatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let any = |v: &Option<String>| v.clone().unwrap_or_else(|| "*".to_owned());
        write!(f, "{} {}", any(&self.verb), any(&self.resource))?;
        match self.subresource.as_deref() {
            Some("") => {}
            Some(sub) => write!(f, "/{sub}")?,
            None => f.write_str("/*")?,
        }
        if let Some(name) = self.name.as_deref().filter(|n| !n.is_empty()) {
            write!(f, " {name}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(verb: Verb, resource: &str, sub: Option<&str>, name: Option<&str>) -> Call {
        Call::in_ns(verb, resource, sub, name)
    }

    #[test]
    fn unset_matches_anything_and_empty_matches_none() {
        let sa = call(Verb::Create, "serviceaccounts", None, Some("a"));
        let token = call(Verb::Create, "serviceaccounts", Some("token"), Some("a"));
        assert!(RequestMatch::any().matches_call(&sa));
        assert!(RequestMatch::any().matches_call(&token));
        let main = RequestMatch::any()
            .resource("serviceaccounts")
            .subresource("");
        assert!(main.matches_call(&sa));
        assert!(!main.matches_call(&token));
        let tokens = main.clone().subresource("token");
        assert!(tokens.matches_call(&token));
        assert!(!tokens.matches_call(&sa));
        assert!(main.any_subresource().matches_call(&token));
        assert!(!RequestMatch::any().verb(Verb::Get).matches_call(&sa));
        assert!(
            RequestMatch::any()
                .verb("create")
                .name("a")
                .matches_call(&sa)
        );
        assert!(!RequestMatch::any().name("b").matches_call(&sa));
        assert!(!RequestMatch::any().namespace("").matches_call(&sa));
        assert!(RequestMatch::any().namespace("ns").matches_call(&sa));
    }

    #[test]
    fn a_call_kind_matches_every_call_of_its_kind_only() {
        let first = call(Verb::Create, "serviceaccounts", Some("token"), Some("a"));
        let second = call(Verb::Create, "serviceaccounts", Some("token"), Some("b"));
        let main = call(Verb::Create, "serviceaccounts", None, Some("a"));
        assert_eq!(first.kind(), second.kind());
        assert!(first.kind().matches_call(&second));
        assert!(!first.kind().matches_call(&main));
        assert_eq!(first.kind().to_string(), "create serviceaccounts/token");
    }
}
