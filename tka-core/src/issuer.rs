//! The [`CredentialIssuer`] contract: turn a positive policy [`Decision`] for an [`Identity`] into a
//! session and a short-lived token, refresh that token, describe and revoke sessions.
//!
//! This module is pure: the trait, the values it trades in, its errors, and the token-lifetime
//! rule. The real implementation on a Kubernetes API lives in `kubernetes::issuer` (feature
//! `kubernetes`). An issuer never decides *whether* a caller may have access; it is handed a
//! decision that policy already made, and the caller re-checks the grant before a refresh.

use std::error::Error as StdError;
use std::fmt;

use async_trait::async_trait;
use jiff::{SignedDuration, Timestamp};
use serde::{Deserialize, Serialize};

use crate::domain::{Identity, NodeId, RoleName, SessionName, Tag, UserId};
use crate::policy::{Decision, NamespacedBinding};
use crate::secret::Secret;

/// The shortest token lifetime the Kubernetes API server accepts in a TokenRequest.
pub const TOKEN_LIFETIME_FLOOR: SignedDuration = SignedDuration::from_secs(600);

/// The token lifetime used when none is configured: tokens are refreshed within the session.
pub const DEFAULT_TOKEN_LIFETIME: SignedDuration = SignedDuration::from_secs(15 * 60);

/// How long to ask a token to live: the preferred lifetime, cut at the session's end, but never
/// below the API server's floor of 600 s (so a token minted in the last ten minutes of a session
/// may outlive it by up to that much; revocation deletes the ServiceAccount, which kills it).
///
/// ```
/// use jiff::{SignedDuration, Timestamp};
/// use tka_core::issuer::{token_lifetime, DEFAULT_TOKEN_LIFETIME};
///
/// let now: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
/// let in_1h = now + SignedDuration::from_hours(1);
/// let in_12m = now + SignedDuration::from_mins(12);
/// let in_1m = now + SignedDuration::from_mins(1);
/// assert_eq!(token_lifetime(now, in_1h, DEFAULT_TOKEN_LIFETIME).as_secs(), 900);
/// assert_eq!(token_lifetime(now, in_12m, DEFAULT_TOKEN_LIFETIME).as_secs(), 720);
/// assert_eq!(token_lifetime(now, in_1m, DEFAULT_TOKEN_LIFETIME).as_secs(), 600);
/// ```
pub fn token_lifetime(
    now: Timestamp,
    session_expires_at: Timestamp,
    preferred: SignedDuration,
) -> SignedDuration {
    let remaining = session_expires_at.duration_since(now);
    let whole = SignedDuration::from_secs(preferred.min(remaining).as_secs());
    whole.max(TOKEN_LIFETIME_FLOOR)
}

/// Where a session stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub enum SessionState {
    /// Being set up (or its setup failed and the reconciler will remove it).
    Pending,
    /// ServiceAccount and bindings exist; tokens can be minted until it expires.
    Active,
    /// Past its `expiresAt`; the reconciler removes it.
    Expired,
    /// Revoked (logout, withdrawn grant, administrator); being removed.
    Revoked,
    /// Deleted and waiting for its children to be removed.
    Ending,
}

impl fmt::Display for SessionState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Pending => "pending",
            Self::Active => "active",
            Self::Expired => "expired",
            Self::Revoked => "revoked",
            Self::Ending => "ending",
        })
    }
}

/// A device's session, as `describe` reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SessionInfo {
    /// The session's name (also the name of its ServiceAccount).
    pub name: SessionName,
    /// The device: the key of the session.
    pub node: NodeId,
    /// The device's MagicDNS name.
    pub node_name: String,
    /// The user behind the device, for audit.
    pub user: UserId,
    /// The user's login name (`tagged-devices` for tagged devices).
    pub login_name: String,
    /// The device's tags.
    pub tags: Vec<Tag>,
    /// The role (GrantMapping name).
    pub role: RoleName,
    /// ClusterRoles bound cluster-wide.
    pub cluster_roles: Vec<String>,
    /// ClusterRoles bound per namespace.
    pub namespaced: Vec<NamespacedBinding>,
    /// When the session ends.
    pub expires_at: Timestamp,
    /// Where it stands, judged at the time of the call.
    pub state: SessionState,
    /// `namespace/name` of the ServiceAccount, once created.
    pub service_account: Option<String>,
    /// Names of the bindings created for the current role.
    pub bindings: Vec<String>,
    /// When the last token minted for it expires.
    pub last_token_expires_at: Option<Timestamp>,
    /// The ID (`jti`) of the last token minted for it.
    pub last_token_id: Option<String>,
}

/// What an `issue` did to the device's session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub enum IssueOutcome {
    /// A new session was created.
    Created,
    /// The live session kept its role and got the new expiry.
    Extended,
    /// The live session got a new role: new bindings under new names, the old ones deleted.
    RoleChanged,
    /// A new token for the live session, nothing else changed.
    Refreshed,
}

/// Credentials handed to a caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuedCredential {
    /// The session the token belongs to.
    pub session: SessionName,
    /// What happened to the session.
    pub outcome: IssueOutcome,
    /// The role in force.
    pub role: RoleName,
    /// The bearer token. Never log it.
    pub token: Secret<String>,
    /// The token's ID (`jti` claim), for audit; absent if the token carried none.
    pub token_id: Option<String>,
    /// When the token expires, as the API server reported it.
    pub token_expires_at: Timestamp,
    /// When the session ends; refreshes give tokens until then.
    pub session_expires_at: Timestamp,
    /// `namespace/name` of the ServiceAccount the token authenticates as.
    pub service_account: String,
}

/// A boxed error from the backend, kept as the `source` of an [`IssueError`].
pub type BoxError = Box<dyn StdError + Send + Sync + 'static>;

/// Why an issuer call failed. The variants are the classification a server maps to HTTP.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IssueError {
    /// The device has no live session.
    #[error("this device has no live session; run `tka login` first")]
    NoSession,
    /// The session is past its end.
    #[error("session {session} expired at {expired_at}; run `tka login` again")]
    Expired {
        /// The session.
        session: SessionName,
        /// When it ended.
        expired_at: Timestamp,
    },
    /// The session was revoked or is being deleted.
    #[error("session {session} was revoked; run `tka login` again")]
    Revoked {
        /// The session.
        session: SessionName,
    },
    /// The session is still being set up by another request, or half-made.
    #[error("session {session} is still being set up; try again in a few seconds")]
    Pending {
        /// The session.
        session: SessionName,
    },
    /// The device's session was made for another user (the device was re-authenticated).
    #[error("session {session} belongs to another user of this device; run `tka login` again")]
    IdentityChanged {
        /// The session.
        session: SessionName,
    },
    /// Concurrent changes kept winning over this request.
    #[error("{0}; another request for this device changed its session at the same time, try again")]
    Conflict(String),
    /// The API server cannot be reached or is overloaded.
    #[error("the Kubernetes API server is unavailable while trying to {action}; try again")]
    Unavailable {
        /// What was being done.
        action: String,
        /// The underlying error.
        #[source]
        source: BoxError,
    },
    /// The server's own ServiceAccount lacks a permission.
    #[error(
        "the API server refused to {action}: tka-server lacks a permission; check its RBAC and admission policy"
    )]
    Forbidden {
        /// What was being done.
        action: String,
        /// The underlying error.
        #[source]
        source: BoxError,
    },
    /// Something tka needs does not exist (the server's namespace, a ServiceAccount).
    #[error("{what} does not exist")]
    NotFound {
        /// What is missing.
        what: String,
    },
    /// The API server rejected an object as invalid.
    #[error("the API server rejected the request to {action} as invalid")]
    Invalid {
        /// What was being done.
        action: String,
        /// The underlying error.
        #[source]
        source: BoxError,
    },
    /// An object with tka's labels is not what tka would have made; it is never adopted.
    #[error("{what} exists but was not made for this session; it is left alone")]
    Foreign {
        /// The object.
        what: String,
    },
    /// Invalid issuer settings.
    #[error("invalid issuer settings: {0}")]
    Settings(String),
    /// The decision cannot be turned into a session (for example it has already expired).
    #[error("cannot issue a session for this decision: {0}")]
    InvalidDecision(String),
    /// Anything else the backend reported.
    #[error("the Kubernetes API failed while trying to {action}")]
    Backend {
        /// What was being done.
        action: String,
        /// The underlying error.
        #[source]
        source: BoxError,
    },
}

impl IssueError {
    /// Whether repeating the same request later may succeed without anyone changing anything.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            Self::Conflict(_) | Self::Unavailable { .. } | Self::Pending { .. }
        )
    }

    /// Whether the caller has to log in again (no usable session).
    pub fn needs_login(&self) -> bool {
        matches!(
            self,
            Self::NoSession
                | Self::Expired { .. }
                | Self::Revoked { .. }
                | Self::IdentityChanged { .. }
        )
    }
}

/// Issues and manages the short-lived credentials of one cluster. One live session per device
/// (node stable ID). Object-safe: servers hold an `Arc<dyn CredentialIssuer>`.
#[cfg_attr(any(test, feature = "mocks"), mockall::automock)]
#[async_trait]
pub trait CredentialIssuer: Send + Sync {
    /// Creates the device's session for `decision`, or extends it (same role) or changes its
    /// role, and mints a token.
    async fn issue(
        &self,
        identity: &Identity,
        decision: &Decision,
    ) -> Result<IssuedCredential, IssueError>;

    /// A new token for the device's live session. Refuses expired, revoked, missing and
    /// half-made sessions. The caller re-checks the grant first.
    async fn refresh(&self, identity: &Identity) -> Result<IssuedCredential, IssueError>;

    /// Revokes the device's session now: its tokens stop working. Revoking nothing is `Ok`;
    /// returns the sessions revoked.
    async fn revoke(&self, node: &NodeId) -> Result<Vec<SessionName>, IssueError>;

    /// Revokes every session of a user, on all of their devices.
    async fn revoke_user(&self, user: UserId) -> Result<Vec<SessionName>, IssueError>;

    /// The device's session, if it has one (in any state).
    async fn describe(&self, node: &NodeId) -> Result<Option<SessionInfo>, IssueError>;
}

impl SessionInfo {
    /// Who the session's device acts as ([`crate::domain::acting_as`]).
    pub fn acting_as(&self) -> String {
        crate::domain::acting_as(&self.tags, &self.login_name)
    }
}

/// A session as clients see it, from what `describe` reports.
impl From<&SessionInfo> for crate::api::SessionInfo {
    fn from(info: &SessionInfo) -> Self {
        Self {
            name: info.name.clone(),
            role: info.role.clone(),
            expires_at: info.expires_at,
            device: info.node_name.clone(),
            caller: info.acting_as(),
        }
    }
}

/// A session as clients see it, from a credential just issued or refreshed for `identity`.
impl From<(&IssuedCredential, &Identity)> for crate::api::SessionInfo {
    fn from((credential, identity): (&IssuedCredential, &Identity)) -> Self {
        Self {
            name: credential.session.clone(),
            role: credential.role.clone(),
            expires_at: credential.session_expires_at,
            device: identity.node.name.clone(),
            caller: identity.acting_as(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    fn at(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn token_lifetime_is_separate_from_the_session() {
        let now = at("2026-01-01T00:00:00Z");
        let session_end = at("2026-01-01T08:00:00Z");
        assert_eq!(
            token_lifetime(now, session_end, DEFAULT_TOKEN_LIFETIME),
            SignedDuration::from_mins(15)
        );
        assert_eq!(
            token_lifetime(now, session_end, SignedDuration::from_hours(1)),
            SignedDuration::from_hours(1)
        );
    }

    #[test]
    fn token_lifetime_stops_at_the_session_end_unless_the_floor_forces_it() {
        let now = at("2026-01-01T00:00:00Z");
        let end = at("2026-01-01T00:11:30Z");
        assert_eq!(
            token_lifetime(now, end, DEFAULT_TOKEN_LIFETIME).as_secs(),
            690
        );
        let end = at("2026-01-01T00:05:00Z");
        assert_eq!(
            token_lifetime(now, end, DEFAULT_TOKEN_LIFETIME).as_secs(),
            600
        );
        // A session already over still gets the floor; the issuer refuses those before asking.
        let end = at("2025-12-31T23:00:00Z");
        assert_eq!(
            token_lifetime(now, end, DEFAULT_TOKEN_LIFETIME).as_secs(),
            600
        );
    }

    #[test]
    fn errors_tell_the_user_what_to_do() {
        let expired = IssueError::Expired {
            session: SessionName::new("tka-a-b").unwrap(),
            expired_at: at("2026-01-01T00:00:00Z"),
        };
        assert!(expired.to_string().contains("tka login"));
        assert!(expired.needs_login());
        assert!(!expired.is_retryable());
        let conflict = IssueError::Conflict("extending session tka-a-b".into());
        assert!(conflict.is_retryable());
        assert!(!conflict.needs_login());
    }

    #[tokio::test]
    async fn the_trait_is_object_safe_and_mockable() {
        let mut mock = MockCredentialIssuer::new();
        mock.expect_revoke().returning(|_| Ok(vec![]));
        let issuer: Arc<dyn CredentialIssuer> = Arc::new(mock);
        let revoked = issuer.revoke(&NodeId::new("n1").unwrap()).await.unwrap();
        assert!(revoked.is_empty());
    }

    /// What clients see of a session names who the device acts as, whether it comes from
    /// `describe` or from a credential just issued.
    #[test]
    fn clients_see_the_session_and_who_the_device_acts_as() {
        use crate::domain::{LoginName, NodeInfo, UserInfo};
        let mut identity = Identity {
            user: UserInfo {
                id: UserId(9000),
                login_name: LoginName::new("tagged-devices").unwrap(),
                display_name: String::new(),
            },
            node: NodeInfo {
                stable_id: NodeId::new("nCI").unwrap(),
                name: "ci.example.ts.net".into(),
                addresses: vec![],
                tags: vec![Tag::new("tag:ci").unwrap(), Tag::new("tag:prod").unwrap()],
            },
            groups: vec![],
            capabilities: vec![],
            compat_capabilities: vec![],
        };
        let credential = IssuedCredential {
            session: SessionName::new("tka-ci-x7k2p9qz").unwrap(),
            outcome: IssueOutcome::Created,
            role: RoleName::new("deploy").unwrap(),
            token: Secret::new("t".into()),
            token_id: None,
            token_expires_at: at("2026-01-01T00:15:00Z"),
            session_expires_at: at("2026-01-01T01:00:00Z"),
            service_account: "tka-system/tka-ci-x7k2p9qz".into(),
        };
        let issued = crate::api::SessionInfo::from((&credential, &identity));
        assert_eq!(issued.name.as_str(), "tka-ci-x7k2p9qz");
        assert_eq!(issued.role.as_str(), "deploy");
        assert_eq!(issued.expires_at, at("2026-01-01T01:00:00Z"));
        assert_eq!(issued.device, "ci.example.ts.net");
        assert_eq!(issued.caller, "tag:ci,tag:prod");

        let info = SessionInfo {
            name: credential.session.clone(),
            node: identity.node.stable_id.clone(),
            node_name: identity.node.name.clone(),
            user: identity.user.id,
            login_name: identity.user.login_name.to_string(),
            tags: identity.node.tags.clone(),
            role: credential.role.clone(),
            cluster_roles: vec![],
            namespaced: vec![],
            expires_at: credential.session_expires_at,
            state: SessionState::Active,
            service_account: None,
            bindings: vec![],
            last_token_expires_at: None,
            last_token_id: None,
        };
        assert_eq!(crate::api::SessionInfo::from(&info), issued);

        // An untagged device acts as its user, in both.
        identity.node.tags.clear();
        identity.user.login_name = LoginName::new("alice@example.com").unwrap();
        let person = SessionInfo {
            tags: vec![],
            login_name: "alice@example.com".into(),
            ..info
        };
        assert_eq!(
            crate::api::SessionInfo::from(&person).caller,
            "alice@example.com"
        );
        assert_eq!(
            crate::api::SessionInfo::from((&credential, &identity)).caller,
            "alice@example.com"
        );
    }
}
