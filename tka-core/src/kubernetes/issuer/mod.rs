//! [`KubernetesIssuer`]: the [`CredentialIssuer`] on a Kubernetes API.
//!
//! Per device (node stable ID): the live Session is found by the `tka.dev/node` label and then
//! checked against its spec; nothing found any other way is ever used. Writes follow DESIGN §5:
//! Session (record of intent) → ServiceAccount → bindings → TokenRequest → Session status.
//! Changes to an existing Session carry its resourceVersion, which serializes concurrent logins of
//! one device: a login that loses the race re-reads and starts over, and removes any binding it
//! made for a revision that is no longer the Session's. The reconciler removes what a failure
//! part way leaves behind; this module never trusts a Session's status to delete anything.
//!
//! This module owns the issuer's settings, finding a device's sessions and the login loop
//! (`attempt`); the work is split by what it does: `create` makes sessions and their objects,
//! `change` extends, re-roles and refreshes a live one, `revoke` ends sessions, and
//! `uninstall` clears the cluster for `tka-server drain`.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use base64::Engine as _;
use jiff::{SignedDuration, Timestamp};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::{Client, ResourceExt};
use tracing::debug;

use super::NODE_LABEL;
use super::checkpoint::{CheckpointHook, Checkpoints};
use super::error::issue_error;
use super::objects::{self, Apis, managed_selector};
use super::session::{Session, SessionIdentity, SessionPhase, SessionRoleBinding, SessionSpec};
use super::watches::SessionStore;
use crate::clock::Clock;
use crate::domain::{Identity, NodeId, RoleName, SessionName, UserId};
use crate::issuer::{
    CredentialIssuer, DEFAULT_TOKEN_LIFETIME, IssueError, IssuedCredential, SessionInfo,
    TOKEN_LIFETIME_FLOOR,
};
use crate::naming::{NameSuffix, node_label};
use crate::policy::{BindingChange, Decision, NamespacedBinding, compare_bindings};
use crate::reconciler::RemovalReason;

mod change;
mod create;
mod revoke;
mod uninstall;

/// Settings of a [`KubernetesIssuer`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuerSettings {
    /// The server's namespace, where session ServiceAccounts live.
    pub namespace: String,
    /// How long a token lives (default 15 min, at least 600 s); never past the session's end
    /// unless the 600 s floor forces it.
    pub token_lifetime: SignedDuration,
    /// How many times one request starts over after losing a race (default 8).
    pub max_attempts: usize,
    /// How long a Session may stay unfinished before a login treats it as half-made and replaces
    /// it (default 60 s; the reconciler uses the same grace).
    pub pending_grace: SignedDuration,
    /// How long a login waits for another login of the same device to finish (default 5 s).
    pub pending_wait: Duration,
}

impl IssuerSettings {
    /// Defaults for a server in `namespace`.
    pub fn new(namespace: impl Into<String>) -> Self {
        Self {
            namespace: namespace.into(),
            token_lifetime: DEFAULT_TOKEN_LIFETIME,
            max_attempts: 8,
            pending_grace: SignedDuration::from_secs(60),
            pending_wait: Duration::from_secs(5),
        }
    }

    /// Checks the settings.
    pub fn validate(&self) -> Result<(), IssueError> {
        if !crate::domain::is_dns1123_label(&self.namespace) {
            return Err(IssueError::Settings(format!(
                "{:?} is not a namespace name",
                self.namespace
            )));
        }
        if self.token_lifetime < TOKEN_LIFETIME_FLOOR {
            return Err(IssueError::Settings(format!(
                "the token lifetime must be at least {}s (the API server's minimum)",
                TOKEN_LIFETIME_FLOOR.as_secs()
            )));
        }
        if self.max_attempts == 0 {
            return Err(IssueError::Settings(
                "max_attempts must be at least 1".into(),
            ));
        }
        Ok(())
    }
}

/// How long a login waits for the watched Session store to show the Session it has just created
/// before it lists from the API server instead.
const STORE_WAIT: Duration = Duration::from_secs(2);

/// Where the random parts of names come from.
pub type SuffixSource = Arc<dyn Fn() -> NameSuffix + Send + Sync>;

/// Issues sessions and tokens with a kube client. See the module documentation.
pub struct KubernetesIssuer {
    apis: Apis,
    settings: IssuerSettings,
    clock: Arc<dyn Clock>,
    suffixes: SuffixSource,
    store: Option<SessionStore>,
    checkpoints: Checkpoints,
}

impl std::fmt::Debug for KubernetesIssuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubernetesIssuer")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

/// What the caller asked for, normalized.
#[derive(Debug, Clone)]
struct Wanted {
    role: RoleName,
    cluster_roles: Vec<String>,
    namespaced: Vec<SessionRoleBinding>,
    expires_at: Timestamp,
}

impl Wanted {
    fn from_decision(decision: &Decision) -> Result<Self, IssueError> {
        let mut cluster_roles = decision.cluster_roles.clone();
        cluster_roles.sort();
        cluster_roles.dedup();
        let mut namespaced: Vec<SessionRoleBinding> =
            decision.namespaced.iter().map(Into::into).collect();
        namespaced.sort();
        namespaced.dedup();
        // Sessions store whole seconds (RFC 3339 without fractions); report what is stored.
        let expires_at = Timestamp::from_second(decision.expires_at.as_second())
            .map_err(|e| IssueError::InvalidDecision(e.to_string()))?;
        Ok(Self {
            role: decision.role.clone(),
            cluster_roles,
            namespaced,
            expires_at,
        })
    }

    /// The spec of a Session that asks for this grant, as `revision` of it, made at `now`.
    fn spec(&self, identity: &Identity, revision: &NameSuffix, now: Timestamp) -> SessionSpec {
        SessionSpec {
            identity: SessionIdentity::from(identity),
            role: self.role.to_string(),
            cluster_roles: self.cluster_roles.clone(),
            namespaced: self.namespaced.clone(),
            revision: revision.to_string(),
            revised_at: Time(now),
            expires_at: Time(self.expires_at),
        }
    }

    /// Whether the session already has exactly this grant (then a login extends it; any other
    /// change, a grown grant included, changes its role so the new bindings are made). The
    /// comparison is [`compare_bindings`], the one the refresh and the reconciler use.
    fn same_grant(&self, spec: &SessionSpec) -> bool {
        let had: Vec<NamespacedBinding> = spec.namespaced.iter().map(Into::into).collect();
        let wanted: Vec<NamespacedBinding> = self.namespaced.iter().map(Into::into).collect();
        spec.role == self.role.as_str()
            && compare_bindings(&spec.cluster_roles, &had, &self.cluster_roles, &wanted)
                == BindingChange::Same
    }
}

/// Control flow of one attempt.
enum Step {
    Done(IssuedCredential),
    Retry(&'static str),
}

/// Reads the `jti` claim of a JWT without verifying it (the API server made it; tka only records
/// its ID for audit). `None` for anything that is not a JWT with a string `jti`.
///
/// ```
/// use tka_core::kubernetes::decode_token_id;
/// // header {"alg":"none"}, payload {"jti":"abc"}
/// assert_eq!(decode_token_id("eyJhbGciOiJub25lIn0.eyJqdGkiOiJhYmMifQ.sig").as_deref(), Some("abc"));
/// assert_eq!(decode_token_id("not-a-jwt"), None);
/// ```
pub fn decode_token_id(token: &str) -> Option<String> {
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    let claims: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    claims.get("jti")?.as_str().map(str::to_owned)
}

/// Prefers a complete session, then the oldest (creation time, then name).
fn pick(mut sessions: Vec<Session>) -> Option<Session> {
    sessions.sort_by(|a, b| {
        b.is_complete()
            .cmp(&a.is_complete())
            .then_with(|| a.creation_timestamp().cmp(&b.creation_timestamp()))
            .then_with(|| a.name_any().cmp(&b.name_any()))
    });
    sessions.into_iter().next()
}

/// A short random pause, so that two logins that keep colliding stop colliding.
async fn jitter() {
    let ms = 5 + rand::random::<u64>() % 45;
    tokio::time::sleep(Duration::from_millis(ms)).await;
}
impl KubernetesIssuer {
    /// An issuer for the cluster behind `client`, with random name suffixes.
    pub fn new(
        client: Client,
        settings: IssuerSettings,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, IssueError> {
        settings.validate()?;
        Ok(Self {
            apis: Apis::new(client, &settings.namespace),
            settings,
            clock,
            suffixes: Arc::new(|| NameSuffix::from_random(rand::random())),
            store: None,
            checkpoints: Checkpoints::default(),
        })
    }

    /// Lets a login find the device's sessions in the server's watched Session store instead of
    /// listing them from the API server, whose label-selected list costs time in proportion to
    /// every Session in the cluster. Only a login's first look uses it: a look after a failed
    /// attempt, and every other read (describe, refresh, revoke), still asks the API server.
    /// After creating a Session, the login waits (at most 2 s) for the store to hold
    /// it before looking for rivals there, and lists from the API server if it does not.
    pub fn with_session_store(mut self, store: SessionStore) -> Self {
        self.store = Some(store);
        self
    }

    /// Calls `hook` after each write of a login, a role change or the end of a session (see
    /// [`Checkpoint`](super::Checkpoint)), so a test can stop the process exactly between two writes. Nothing in a
    /// release build of tka-server installs one.
    pub fn with_checkpoints(mut self, hook: CheckpointHook) -> Self {
        self.checkpoints = Checkpoints::new(hook);
        self
    }

    /// Replaces the source of random name parts (tests use it to force name collisions).
    pub fn with_suffixes(mut self, suffixes: SuffixSource) -> Self {
        self.suffixes = suffixes;
        self
    }

    /// The settings in use.
    pub fn settings(&self) -> &IssuerSettings {
        &self.settings
    }

    fn suffix(&self) -> NameSuffix {
        (self.suffixes)()
    }

    /// Every Session of a device, found by label and confirmed by spec.
    async fn sessions_of(&self, node: &NodeId) -> Result<Vec<Session>, IssueError> {
        let selector = format!("{},{NODE_LABEL}={}", managed_selector(), node_label(node));
        let sessions = objects::list(&self.apis.sessions, &selector)
            .await
            .map_err(|e| issue_error("list the device's sessions", e))?;
        Ok(sessions
            .into_iter()
            .filter(|s| s.spec.identity.node_id == node.as_str())
            .collect())
    }

    /// The device's sessions for a login's first look: from the watched store when there is
    /// one and it holds a full list, else from the API server. A stale answer costs a retry,
    /// never a second session: every change to a Session found here carries its
    /// resourceVersion, and a new Session is checked for rivals by [`Self::rivals_after_create`].
    async fn sessions_at_first_look(&self, node: &NodeId) -> Result<Vec<Session>, IssueError> {
        match &self.store {
            Some(store) if store.watched().is_listed() => Ok(store
                .of_node(node)
                .into_iter()
                .map(|s| (*s).clone())
                .collect()),
            _ => self.sessions_of(node).await,
        }
    }

    /// The device's other sessions once `created` exists. From the store only once it holds
    /// `created`: a watch delivers changes in commit order, so the store then holds every
    /// Session committed before it, and of two racing logins at least one sees the other.
    async fn rivals_after_create(
        &self,
        node: &NodeId,
        created: &Session,
    ) -> Result<Vec<Session>, IssueError> {
        if let (Some(store), Some(uid)) = (&self.store, created.metadata.uid.as_deref())
            && store.has_seen(uid, STORE_WAIT).await
        {
            return Ok(store
                .of_node(node)
                .into_iter()
                .filter(|s| s.metadata.uid.as_deref() != Some(uid))
                .map(|s| (*s).clone())
                .collect());
        }
        Ok(self
            .sessions_of(node)
            .await?
            .into_iter()
            .filter(|s| s.uid() != created.uid())
            .collect())
    }

    fn live(&self, sessions: &[Session], now: Timestamp) -> Vec<Session> {
        sessions
            .iter()
            .filter(|s| !s.is_over(now))
            .cloned()
            .collect()
    }

    async fn attempt(
        &self,
        identity: &Identity,
        wanted: &Wanted,
        first: bool,
    ) -> Result<Step, IssueError> {
        let now = self.clock.now();
        let sessions = if first {
            self.sessions_at_first_look(identity.key()).await?
        } else {
            self.sessions_of(identity.key()).await?
        };
        let Some(session) = pick(self.live(&sessions, now)) else {
            return self.create(identity, wanted, now).await;
        };
        if session.spec.identity.user_id != identity.user.id.0 {
            self.end(
                &session,
                Some(SessionPhase::Revoked),
                &RemovalReason::GrantWithdrawn("the device now belongs to another user".into()),
            )
            .await?;
            return Ok(Step::Retry("the device's session belonged to another user"));
        }
        if session.is_complete() {
            if wanted.same_grant(&session.spec) {
                self.extend(session, identity, wanted, now).await
            } else {
                self.change(session, identity, wanted, now).await
            }
        } else if session.is_stale(now, self.settings.pending_grace) {
            self.end(
                &session,
                Some(SessionPhase::Revoked),
                &RemovalReason::HalfMade,
            )
            .await?;
            Ok(Step::Retry("the device's session was half-made"))
        } else {
            self.wait_for(&session).await
        }
    }

    /// Waits (bounded) for another request to finish setting up `session`.
    async fn wait_for(&self, session: &Session) -> Result<Step, IssueError> {
        let name = session.name_any();
        let deadline = tokio::time::Instant::now() + self.settings.pending_wait;
        let mut delay = Duration::from_millis(20);
        while tokio::time::Instant::now() < deadline {
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_millis(400));
            let current = self
                .apis
                .sessions
                .get_opt(&name)
                .await
                .map_err(|e| issue_error(format!("read session {name}"), e))?;
            let now = self.clock.now();
            match current {
                Some(s)
                    if s.uid() == session.uid()
                        && !s.is_over(now)
                        && !s.is_complete()
                        && !s.is_stale(now, self.settings.pending_grace) => {}
                _ => return Ok(Step::Retry("the other request finished")),
            }
        }
        Err(IssueError::Pending {
            session: session
                .session_name()
                .ok_or_else(|| IssueError::Conflict(format!("session {name} is malformed")))?,
        })
    }
}

#[async_trait]
impl CredentialIssuer for KubernetesIssuer {
    async fn issue(
        &self,
        identity: &Identity,
        decision: &Decision,
    ) -> Result<IssuedCredential, IssueError> {
        let wanted = Wanted::from_decision(decision)?;
        if wanted.expires_at <= self.clock.now() {
            return Err(IssueError::InvalidDecision(
                "the decision's expiry has already passed".into(),
            ));
        }
        let mut last = "";
        for attempt in 0..self.settings.max_attempts {
            match self.attempt(identity, &wanted, attempt == 0).await? {
                Step::Done(credential) => return Ok(credential),
                Step::Retry(why) => {
                    debug!(node = %identity.key(), why, "starting the login over");
                    last = why;
                }
            }
        }
        Err(IssueError::Conflict(format!(
            "issuing a session for {} ({last})",
            identity.describe()
        )))
    }

    async fn refresh(&self, identity: &Identity) -> Result<IssuedCredential, IssueError> {
        self.refresh_token(identity).await
    }

    async fn revoke(&self, node: &NodeId) -> Result<Vec<SessionName>, IssueError> {
        self.end_device(node).await
    }

    async fn revoke_user(&self, user: UserId) -> Result<Vec<SessionName>, IssueError> {
        self.end_user(user).await
    }

    async fn describe(&self, node: &NodeId) -> Result<Option<SessionInfo>, IssueError> {
        let now = self.clock.now();
        let sessions = self.sessions_of(node).await?;
        let live = self.live(&sessions, now);
        let chosen = if live.is_empty() {
            sessions
                .into_iter()
                .max_by(|a, b| a.creation_timestamp().cmp(&b.creation_timestamp()))
        } else {
            pick(live)
        };
        Ok(chosen.and_then(|s| s.info(now)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_refuse_tokens_below_the_floor() {
        let mut s = IssuerSettings::new("tka-system");
        assert!(s.validate().is_ok());
        s.token_lifetime = SignedDuration::from_secs(599);
        assert!(matches!(s.validate(), Err(IssueError::Settings(_))));
        let bad_ns = IssuerSettings::new("Not A Namespace");
        assert!(bad_ns.validate().is_err());
    }

    #[test]
    fn reads_the_token_id_without_verifying() {
        let payload = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(br#"{"iss":"k8s","jti":"5f0c-11","sub":"system:serviceaccount:tka:x"}"#);
        let token = format!("eyJhbGciOiJSUzI1NiJ9.{payload}.c2ln");
        assert_eq!(decode_token_id(&token).as_deref(), Some("5f0c-11"));
        let no_jti = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(br#"{"sub":"x"}"#);
        assert_eq!(decode_token_id(&format!("a.{no_jti}.b")), None);
        assert_eq!(decode_token_id("a.!!!.b"), None);
    }

    #[test]
    fn same_grant_ignores_order_and_duplicates() {
        let decision = Decision {
            role: RoleName::new("sre").unwrap(),
            cluster_roles: vec!["view".into(), "edit".into()],
            namespaced: vec![],
            ttl: crate::Ttl::parse("1h").unwrap(),
            expires_at: "2026-01-01T01:00:00.5Z".parse().unwrap(),
            clamped: None,
        };
        let wanted = Wanted::from_decision(&decision).unwrap();
        assert_eq!(wanted.expires_at.to_string(), "2026-01-01T01:00:00Z");
        let spec = SessionSpec {
            identity: SessionIdentity {
                node_id: "n".into(),
                node_name: "n".into(),
                tags: vec![],
                user_id: 1,
                login_name: "a@b".into(),
                addresses: vec![],
            },
            role: "sre".into(),
            cluster_roles: vec!["edit".into(), "view".into(), "view".into()],
            namespaced: vec![],
            revision: "r".into(),
            revised_at: Time(Timestamp::UNIX_EPOCH),
            expires_at: Time(Timestamp::UNIX_EPOCH),
        };
        assert!(wanted.same_grant(&spec));
        let other_role = SessionSpec {
            role: "dev".into(),
            ..spec
        };
        assert!(!wanted.same_grant(&other_role));
    }
}
