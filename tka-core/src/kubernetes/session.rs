//! The `Session` custom resource: one device's access to this cluster. The spec is the record of
//! intent (who, which role, which bindings, until when), written before anything it owns; the
//! status records what was actually created. Only tka-server writes Sessions, and a Session
//! alone never grants anything: bindings exist only because the issuer made them.

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::CustomResource;
use serde::{Deserialize, Serialize};

use crate::domain::{Identity, LoginName, NodeId, RoleName, SessionName, Tag, UserId};
use crate::issuer::{SessionInfo, SessionState};
use crate::policy::NamespacedBinding;
use crate::reconciler::SessionGrant;

/// The spec of a Session: who it is for, what it grants, and until when.
#[derive(CustomResource, Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[kube(
    group = "tka.dev",
    version = "v1alpha1",
    kind = "Session",
    plural = "sessions",
    singular = "session",
    shortname = "tkas",
    category = "tka",
    status = "SessionStatus",
    doc = "One device's short-lived access to this cluster, made by tka-server at login. It owns a ServiceAccount and the bindings of one role; tka removes all of them when it expires or is revoked.",
    printcolumn = r#"{"name":"User","type":"string","jsonPath":".spec.identity.loginName","description":"The Tailscale login name (tagged-devices for tagged devices)"}"#,
    printcolumn = r#"{"name":"Device","type":"string","jsonPath":".spec.identity.nodeName","description":"The device's MagicDNS name"}"#,
    printcolumn = r#"{"name":"Role","type":"string","jsonPath":".spec.role","description":"The GrantMapping in force"}"#,
    printcolumn = r#"{"name":"Expires","type":"string","jsonPath":".spec.expiresAt","description":"When the session ends"}"#,
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase","description":"Active, Expired or Revoked; empty while being set up"}"#,
    printcolumn = r#"{"name":"Tags","type":"string","jsonPath":".spec.identity.tags","description":"The device's ACL tags","priority":1}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct SessionSpec {
    /// Who the session is for, as whois reported it at login.
    pub identity: SessionIdentity,
    /// The role: the name of the GrantMapping that granted the session.
    #[schemars(length(min = 1, max = 253))]
    pub role: String,
    /// ClusterRoles bound cluster-wide with ClusterRoleBindings.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cluster_roles: Vec<String>,
    /// ClusterRoles bound in single namespaces with RoleBindings.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub namespaced: Vec<SessionRoleBinding>,
    /// A random ID that names the bindings of the current role; new for every role change, so
    /// names are never reused.
    #[schemars(length(min = 1, max = 16), regex(pattern = r"^[a-z0-9]+$"))]
    pub revision: String,
    /// When `revision` was chosen: a revision that is not complete a grace period later is
    /// half-made and removed.
    pub revised_at: Time,
    /// When the session ends (RFC 3339).
    pub expires_at: Time,
}

/// The identity a session was issued to: a snapshot of whois at login.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SessionIdentity {
    /// The node's stable ID: the key of the session.
    #[schemars(length(min = 1, max = 256))]
    pub node_id: String,
    /// The node's MagicDNS name.
    pub node_name: String,
    /// The node's ACL tags.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    /// The Tailscale user ID.
    pub user_id: i64,
    /// The Tailscale login name.
    pub login_name: String,
    /// The node's tailnet addresses, used to re-validate the grant while no connection is open.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub addresses: Vec<String>,
}

/// The snapshot a login records: whois as it was, in the Session's spec.
impl From<&Identity> for SessionIdentity {
    fn from(identity: &Identity) -> Self {
        SessionIdentity {
            node_id: identity.node.stable_id.as_str().to_owned(),
            node_name: identity.node.name.clone(),
            tags: identity
                .node
                .tags
                .iter()
                .map(|t| t.as_str().to_owned())
                .collect(),
            user_id: identity.user.id.0,
            login_name: identity.user.login_name.as_str().to_owned(),
            addresses: identity
                .node
                .addresses
                .iter()
                .map(ToString::to_string)
                .collect(),
        }
    }
}

/// A ClusterRole bound in one namespace.
#[derive(
    Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "camelCase")]
pub struct SessionRoleBinding {
    /// The ClusterRole.
    pub cluster_role: String,
    /// The namespace.
    pub namespace: String,
}

impl From<&NamespacedBinding> for SessionRoleBinding {
    fn from(b: &NamespacedBinding) -> Self {
        Self {
            cluster_role: b.cluster_role.clone(),
            namespace: b.namespace.clone(),
        }
    }
}

impl From<&SessionRoleBinding> for NamespacedBinding {
    fn from(b: &SessionRoleBinding) -> Self {
        Self {
            cluster_role: b.cluster_role.clone(),
            namespace: b.namespace.clone(),
        }
    }
}

/// The lifecycle phase of a session. A session without a phase is still being set up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
pub enum SessionPhase {
    /// Its ServiceAccount and bindings exist; tokens can be minted.
    Active,
    /// Past its end; being removed.
    Expired,
    /// Revoked; being removed.
    Revoked,
}

/// What exists for a session.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SessionStatus {
    /// Active, Expired or Revoked; absent while being set up.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<SessionPhase>,
    /// The revision whose ServiceAccount and bindings are complete.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<String>,
    /// The ServiceAccount tokens are minted for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account: Option<ObjectRef>,
    /// The bindings created for `revision`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub bindings: Vec<BindingRef>,
    /// When the last token minted expires.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_token_expires_at: Option<Time>,
    /// The ID (`jti`) of the last token minted, to join Kubernetes audit records to the session.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_token_id: Option<String>,
    /// Conditions, e.g. why a session was revoked.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

/// A namespaced object created for a session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ObjectRef {
    /// Its namespace.
    pub namespace: String,
    /// Its name.
    pub name: String,
    /// Its UID: a later object of the same name is another object.
    pub uid: String,
}

/// Which kind of binding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
pub enum BindingKind {
    /// Cluster-wide.
    ClusterRoleBinding,
    /// In one namespace.
    RoleBinding,
}

/// A binding created for a session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BindingRef {
    /// ClusterRoleBinding or RoleBinding.
    pub kind: BindingKind,
    /// The namespace of a RoleBinding.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Its name.
    pub name: String,
    /// The ClusterRole it binds.
    pub cluster_role: String,
    /// Its UID.
    pub uid: String,
}

impl Session {
    /// The session's name as a domain value, if it is one.
    pub fn session_name(&self) -> Option<SessionName> {
        self.metadata
            .name
            .as_deref()
            .and_then(|n| SessionName::new(n).ok())
    }

    /// Whether the API server is deleting it (it carries a deletion timestamp).
    pub fn is_deleting(&self) -> bool {
        self.metadata.deletion_timestamp.is_some()
    }

    /// The phase recorded in its status.
    pub fn phase(&self) -> Option<SessionPhase> {
        self.status.as_ref().and_then(|s| s.phase)
    }

    /// Whether the ServiceAccount and bindings of the spec's revision all exist.
    pub fn is_complete(&self) -> bool {
        self.status.as_ref().is_some_and(|s| {
            s.phase == Some(SessionPhase::Active)
                && s.revision.as_deref() == Some(self.spec.revision.as_str())
                && s.service_account.is_some()
        })
    }

    /// When it ends.
    pub fn expires_at(&self) -> Timestamp {
        self.spec.expires_at.0
    }

    /// Whether its last revision is older than `grace` at `now`, or dated more than `grace` ahead
    /// of `now` (a clock that jumped back must not keep it fresh). A stale unfinished Session is
    /// half-made: a login replaces it and the reconciler may remove what it left behind; a fresh
    /// one may be a login in flight and is left alone. The issuer and the reconciler use the same
    /// grace.
    pub fn is_stale(&self, now: Timestamp, grace: SignedDuration) -> bool {
        let revised = self.spec.revised_at.0;
        revised + grace <= now || revised > now + grace
    }

    /// Whether it is over at `now`: revoked, expired by phase or by time, or being deleted.
    pub fn is_over(&self, now: Timestamp) -> bool {
        self.is_deleting()
            || matches!(
                self.phase(),
                Some(SessionPhase::Revoked | SessionPhase::Expired)
            )
            || self.expires_at() <= now
    }

    /// Its state at `now`, in the issuer's terms.
    pub fn state(&self, now: Timestamp) -> SessionState {
        if self.is_deleting() {
            SessionState::Ending
        } else if self.phase() == Some(SessionPhase::Revoked) {
            SessionState::Revoked
        } else if self.phase() == Some(SessionPhase::Expired) || self.expires_at() <= now {
            SessionState::Expired
        } else if self.is_complete() {
            SessionState::Active
        } else {
            SessionState::Pending
        }
    }

    /// What it grants, for re-validation; `None` for a session whose spec is not well-formed
    /// (such a session can never be re-validated and is revoked).
    pub fn grant(&self) -> Option<SessionGrant> {
        Some(SessionGrant {
            session: self.session_name()?,
            node: NodeId::new(self.spec.identity.node_id.as_str()).ok()?,
            user: UserId(self.spec.identity.user_id),
            role: RoleName::new(self.spec.role.as_str()).ok()?,
            cluster_roles: self.spec.cluster_roles.clone(),
            namespaced: self.spec.namespaced.iter().map(Into::into).collect(),
        })
    }

    /// The session as `describe` reports it; `None` if its spec is not well-formed.
    pub fn info(&self, now: Timestamp) -> Option<SessionInfo> {
        let status = self.status.clone().unwrap_or_default();
        Some(SessionInfo {
            name: self.session_name()?,
            node: NodeId::new(self.spec.identity.node_id.as_str()).ok()?,
            node_name: self.spec.identity.node_name.clone(),
            user: UserId(self.spec.identity.user_id),
            login_name: LoginName::new(self.spec.identity.login_name.as_str())
                .map(String::from)
                .unwrap_or_else(|_| self.spec.identity.login_name.clone()),
            tags: self
                .spec
                .identity
                .tags
                .iter()
                .filter_map(|t| Tag::new(t.as_str()).ok())
                .collect(),
            role: RoleName::new(self.spec.role.as_str()).ok()?,
            cluster_roles: self.spec.cluster_roles.clone(),
            namespaced: self.spec.namespaced.iter().map(Into::into).collect(),
            expires_at: self.expires_at(),
            state: self.state(now),
            service_account: status
                .service_account
                .as_ref()
                .map(|sa| format!("{}/{}", sa.namespace, sa.name)),
            bindings: status.bindings.iter().map(|b| b.name.clone()).collect(),
            last_token_expires_at: status.last_token_expires_at.map(|t| t.0),
            last_token_id: status.last_token_id,
        })
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    use super::*;

    fn at(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn session(status: Option<SessionStatus>) -> Session {
        let mut s = Session::new(
            "tka-alice-example-com-x7k2p9qz",
            SessionSpec {
                identity: SessionIdentity {
                    node_id: "nNODE".into(),
                    node_name: "laptop".into(),
                    tags: vec![],
                    user_id: 7,
                    login_name: "alice@example.com".into(),
                    addresses: vec!["100.64.0.1".into()],
                },
                role: "sre".into(),
                cluster_roles: vec!["view".into()],
                namespaced: vec![SessionRoleBinding {
                    cluster_role: "edit".into(),
                    namespace: "team-a".into(),
                }],
                revision: "r2".into(),
                revised_at: Time(at("2026-01-01T00:00:00Z")),
                expires_at: Time(at("2026-01-01T01:00:00Z")),
            },
        );
        s.status = status;
        s
    }

    fn active(revision: &str) -> SessionStatus {
        SessionStatus {
            phase: Some(SessionPhase::Active),
            revision: Some(revision.into()),
            service_account: Some(ObjectRef {
                namespace: "tka-system".into(),
                name: "tka-alice-example-com-x7k2p9qz".into(),
                uid: "u1".into(),
            }),
            ..SessionStatus::default()
        }
    }

    #[test]
    fn a_session_is_complete_only_for_the_revision_it_asks_for() {
        let now = at("2026-01-01T00:30:00Z");
        assert_eq!(session(None).state(now), SessionState::Pending);
        assert!(
            !session(Some(active("r1"))).is_complete(),
            "a role change in flight"
        );
        assert_eq!(
            session(Some(active("r1"))).state(now),
            SessionState::Pending
        );
        assert!(session(Some(active("r2"))).is_complete());
        assert_eq!(session(Some(active("r2"))).state(now), SessionState::Active);
    }

    #[test]
    fn a_session_is_over_when_expired_revoked_or_deleting() {
        let live = session(Some(active("r2")));
        assert!(!live.is_over(at("2026-01-01T00:59:59Z")));
        assert!(live.is_over(at("2026-01-01T01:00:00Z")));
        assert_eq!(
            live.state(at("2026-01-01T01:00:00Z")),
            SessionState::Expired
        );

        let mut revoked = active("r2");
        revoked.phase = Some(SessionPhase::Revoked);
        let revoked = session(Some(revoked));
        assert!(revoked.is_over(at("2026-01-01T00:10:00Z")));
        assert_eq!(
            revoked.state(at("2026-01-01T00:10:00Z")),
            SessionState::Revoked
        );

        let mut deleting = session(Some(active("r2")));
        deleting.metadata.deletion_timestamp = Some(Time(at("2026-01-01T00:05:00Z")));
        assert!(deleting.is_over(at("2026-01-01T00:10:00Z")));
        assert_eq!(
            deleting.state(at("2026-01-01T00:10:00Z")),
            SessionState::Ending
        );
    }

    #[test]
    fn an_unfinished_session_is_stale_after_the_grace_or_when_dated_ahead() {
        let grace = SignedDuration::from_secs(60);
        let mut s = session(None);
        s.spec.revised_at = Time(at("2026-01-01T00:10:00Z"));
        assert!(!s.is_stale(at("2026-01-01T00:10:00Z"), grace));
        assert!(!s.is_stale(at("2026-01-01T00:10:59Z"), grace));
        assert!(s.is_stale(at("2026-01-01T00:11:00Z"), grace));
        // A revision dated more than the grace ahead (a clock that jumped back) is stale too;
        // one within the grace is not.
        assert!(!s.is_stale(at("2026-01-01T00:09:00Z"), grace));
        assert!(s.is_stale(at("2026-01-01T00:08:59Z"), grace));
    }

    #[test]
    fn grant_and_info_read_the_spec_and_refuse_garbage() {
        let s = session(Some(active("r2")));
        let grant = s.grant().unwrap();
        assert_eq!(grant.role.as_str(), "sre");
        assert_eq!(grant.user, UserId(7));
        assert_eq!(grant.namespaced[0].namespace, "team-a");
        let info = s.info(at("2026-01-01T00:30:00Z")).unwrap();
        assert_eq!(
            info.service_account.as_deref(),
            Some("tka-system/tka-alice-example-com-x7k2p9qz")
        );
        assert_eq!(info.state, SessionState::Active);

        let mut garbage = s.clone();
        garbage.spec.role = "Not A Role".into();
        assert!(garbage.grant().is_none());
        assert!(garbage.info(at("2026-01-01T00:30:00Z")).is_none());
        let mut no_node = s;
        no_node.spec.identity.node_id = String::new();
        assert!(no_node.grant().is_none());
    }
}
