//! [`KubernetesIssuer`]: the [`CredentialIssuer`] on a Kubernetes API.
//!
//! Per device (node stable ID): the live Session is found by the `tka.dev/node` label and then
//! checked against its spec; nothing found any other way is ever used. Writes follow DESIGN §5:
//! Session (record of intent) → ServiceAccount → bindings → TokenRequest → Session status.
//! Changes to an existing Session carry its resourceVersion, which serializes concurrent logins of
//! one device: a login that loses the race re-reads and starts over, and removes any binding it
//! made for a revision that is no longer the Session's. The reconciler removes what a failure
//! part way leaves behind; this module never trusts a Session's status to delete anything.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use base64::Engine as _;
use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_openapi::api::rbac::v1::{ClusterRoleBinding, RoleBinding, RoleRef, Subject};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kube::api::PostParams;
use kube::{Api, Client, ResourceExt};
use tracing::{debug, info, warn};

use super::error::{is_already_exists, is_conflict, is_not_found, issue_error};
use super::objects::{
    self, Apis, cluster_role_binding, delete_uid, end_session, is_exact_binding, managed_selector,
    owner_uid, role_binding, service_account, session_labels, session_selector,
};
use super::session::{
    BindingKind, BindingRef, ObjectRef, Session, SessionIdentity, SessionPhase, SessionRoleBinding,
    SessionSpec, SessionStatus,
};
use super::{FINALIZER, NODE_LABEL, REVISION_LABEL, SESSION_LABEL, USER_LABEL};
use crate::clock::Clock;
use crate::domain::{Identity, NodeId, RoleName, SessionName, UserId};
use crate::issuer::{
    CredentialIssuer, DEFAULT_TOKEN_LIFETIME, IssueError, IssueOutcome, IssuedCredential,
    SessionInfo, TOKEN_LIFETIME_FLOOR, token_lifetime,
};
use crate::naming::{self, NameSuffix, node_label, user_label};
use crate::policy::{BindingChange, Decision, NamespacedBinding, compare_bindings};
use crate::reconciler::RemovalReason;
use crate::secret::Secret;

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

/// Where the random parts of names come from.
pub type SuffixSource = Arc<dyn Fn() -> NameSuffix + Send + Sync>;

/// Issues sessions and tokens with a kube client. See the module documentation.
pub struct KubernetesIssuer {
    apis: Apis,
    settings: IssuerSettings,
    clock: Arc<dyn Clock>,
    suffixes: SuffixSource,
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

/// A status write that failed.
struct CommitError {
    error: IssueError,
    /// Whether the write may have landed after all (its answer was lost and reading back
    /// failed too).
    maybe_landed: bool,
}

/// A freshly minted token.
struct Minted {
    token: Secret<String>,
    expires_at: Timestamp,
    id: Option<String>,
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

fn snapshot(identity: &Identity) -> SessionIdentity {
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
        })
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

    fn live(&self, sessions: &[Session], now: Timestamp) -> Vec<Session> {
        sessions
            .iter()
            .filter(|s| !s.is_over(now))
            .cloned()
            .collect()
    }

    fn is_stale(&self, session: &Session, now: Timestamp) -> bool {
        let revised = session.spec.revised_at.0;
        revised + self.settings.pending_grace <= now || revised > now + self.settings.pending_grace
    }

    async fn end(
        &self,
        session: &Session,
        mark: Option<SessionPhase>,
        reason: &RemovalReason,
    ) -> Result<(), IssueError> {
        let now = self.clock.now();
        let removed = end_session(&self.apis, session, mark.map(|p| (p, now)), reason)
            .await
            .map_err(|e| issue_error(format!("end session {}", session.name_any()), e))?;
        info!(session = %session.name_any(), %reason, removed = removed.len(), "session ended");
        Ok(())
    }

    async fn attempt(&self, identity: &Identity, wanted: &Wanted) -> Result<Step, IssueError> {
        let now = self.clock.now();
        let sessions = self.sessions_of(identity.key()).await?;
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
        } else if self.is_stale(&session, now) {
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
                        && !self.is_stale(&s, now) => {}
                _ => return Ok(Step::Retry("the other request finished")),
            }
        }
        Err(IssueError::Pending {
            session: session
                .session_name()
                .ok_or_else(|| IssueError::Conflict(format!("session {name} is malformed")))?,
        })
    }

    async fn create(
        &self,
        identity: &Identity,
        wanted: &Wanted,
        now: Timestamp,
    ) -> Result<Step, IssueError> {
        let name = naming::session_name(identity, &self.suffix())
            .map_err(|e| IssueError::InvalidDecision(e.to_string()))?;
        let revision = self.suffix();
        let session = Session {
            metadata: ObjectMeta {
                name: Some(name.to_string()),
                labels: Some(session_labels(
                    &node_label(identity.key()),
                    &user_label(identity.user.id),
                )),
                finalizers: Some(vec![FINALIZER.to_owned()]),
                ..ObjectMeta::default()
            },
            spec: SessionSpec {
                identity: snapshot(identity),
                role: wanted.role.to_string(),
                cluster_roles: wanted.cluster_roles.clone(),
                namespaced: wanted.namespaced.clone(),
                revision: revision.to_string(),
                revised_at: Time(now),
                expires_at: Time(wanted.expires_at),
            },
            status: None,
        };
        let created = match self
            .apis
            .sessions
            .create(&PostParams::default(), &session)
            .await
        {
            Ok(s) => s,
            Err(e) if is_already_exists(&e) => return Ok(Step::Retry("the session name is taken")),
            Err(e) => return Err(issue_error(format!("create session {name}"), e)),
        };
        debug!(session = %name, "session created");

        // Two logins of one device that both found no session both create one. Each looks again
        // after creating: at least one of any two sees the other and backs off, so at most one
        // goes on to make a ServiceAccount and bindings.
        let others = match self.sessions_of(identity.key()).await {
            Ok(all) => self
                .live(&all, now)
                .into_iter()
                .filter(|s| s.uid() != created.uid())
                .count(),
            Err(e) => {
                let _ = self.end(&created, None, &RemovalReason::HalfMade).await;
                return Err(e);
            }
        };
        if others > 0 {
            self.end(&created, None, &RemovalReason::HalfMade).await?;
            jitter().await;
            return Ok(Step::Retry(
                "another login of this device created a session",
            ));
        }
        self.finish(created, wanted, &revision, IssueOutcome::Created, now)
            .await
    }

    async fn change(
        &self,
        session: Session,
        identity: &Identity,
        wanted: &Wanted,
        now: Timestamp,
    ) -> Result<Step, IssueError> {
        let name = session.name_any();
        let revision = self.suffix();
        let mut next = session.clone();
        next.spec = SessionSpec {
            identity: snapshot(identity),
            role: wanted.role.to_string(),
            cluster_roles: wanted.cluster_roles.clone(),
            namespaced: wanted.namespaced.clone(),
            revision: revision.to_string(),
            revised_at: Time(now),
            expires_at: Time(wanted.expires_at),
        };
        let claimed = match self
            .apis
            .sessions
            .replace(&name, &PostParams::default(), &next)
            .await
        {
            Ok(s) => s,
            Err(e) if is_conflict(&e) || is_not_found(&e) => {
                return Ok(Step::Retry("the session changed while changing its role"));
            }
            Err(e) => return Err(issue_error(format!("change the role of session {name}"), e)),
        };
        info!(session = %name, role = %wanted.role, "session role changing");
        self.finish(claimed, wanted, &revision, IssueOutcome::RoleChanged, now)
            .await
    }

    /// Creates the ServiceAccount (or finds the one this session made); `None` when the name is
    /// taken by an object that is not this session's.
    async fn ensure_service_account(
        &self,
        session: &Session,
    ) -> Result<Option<(ServiceAccount, bool)>, IssueError> {
        let wanted = service_account(session, &self.apis.namespace);
        let name = session.name_any();
        match self
            .apis
            .service_accounts
            .create(&PostParams::default(), &wanted)
            .await
        {
            Ok(sa) => Ok(Some((sa, true))),
            Err(e) if is_already_exists(&e) => {
                let existing = self
                    .apis
                    .service_accounts
                    .get_opt(&name)
                    .await
                    .map_err(|e| issue_error(format!("read ServiceAccount {name}"), e))?;
                Ok(existing.and_then(|sa| {
                    let ours = owner_uid(&sa) == session.uid().as_deref()
                        && sa.labels().get(SESSION_LABEL) == Some(&name);
                    ours.then_some((sa, false))
                }))
            }
            Err(e) => Err(issue_error(format!("create ServiceAccount {name}"), e)),
        }
    }

    /// Creates one binding; `None` when its name is taken by something else.
    async fn create_binding(
        &self,
        session: &Session,
        name: &str,
        revision: &str,
        cluster_role: &str,
        namespace: Option<&str>,
    ) -> Result<Option<BindingRef>, IssueError> {
        let sa_ns = self.apis.namespace.as_str();
        let created = match namespace {
            None => create_or_confirm_binding(
                &self.apis.cluster_role_bindings,
                &cluster_role_binding(session, name, revision, cluster_role, sa_ns),
                &format!("ClusterRoleBinding {name}"),
                |b: &ClusterRoleBinding| (&b.metadata, &b.role_ref, b.subjects.as_ref()),
            )
            .await?
            .map(|uid| (uid, BindingKind::ClusterRoleBinding)),
            Some(ns) => create_or_confirm_binding(
                &self.apis.role_bindings(ns),
                &role_binding(session, name, revision, cluster_role, ns, sa_ns),
                &format!("RoleBinding {ns}/{name}"),
                |b: &RoleBinding| (&b.metadata, &b.role_ref, b.subjects.as_ref()),
            )
            .await?
            .map(|uid| (uid, BindingKind::RoleBinding)),
        };
        let Some((uid, kind)) = created else {
            return Ok(None);
        };
        Ok(Some(BindingRef {
            kind,
            namespace: namespace.map(str::to_owned),
            name: name.to_owned(),
            cluster_role: cluster_role.to_owned(),
            uid: uid.unwrap_or_default(),
        }))
    }

    /// Deletes bindings this request made (best effort: the reconciler removes leftovers).
    async fn discard(&self, bindings: &[BindingRef]) {
        for b in bindings {
            let result = match (&b.kind, &b.namespace) {
                (BindingKind::RoleBinding, Some(ns)) => {
                    delete_uid(&self.apis.role_bindings(ns), &b.name, &b.uid).await
                }
                _ => delete_uid(&self.apis.cluster_role_bindings, &b.name, &b.uid).await,
            };
            if let Err(e) = result {
                warn!(binding = %b.name, error = %e, "could not delete a binding; the reconciler will");
            }
        }
    }

    /// Gives up on this attempt's objects: its bindings, and for a new session the session too.
    async fn abandon(&self, session: &Session, bindings: &[BindingRef], fresh: bool) {
        self.discard(bindings).await;
        if !fresh {
            return;
        }
        if let Err(e) = self.end(session, None, &RemovalReason::HalfMade).await {
            warn!(session = %session.name_any(), error = %e, "could not remove an unfinished session; the reconciler will");
        }
    }

    async fn mint(
        &self,
        sa_name: &str,
        session_expires_at: Timestamp,
        now: Timestamp,
    ) -> Result<Option<Minted>, IssueError> {
        let lifetime = token_lifetime(now, session_expires_at, self.settings.token_lifetime);
        let request = TokenRequest {
            spec: Some(TokenRequestSpec {
                audiences: None,
                bound_object_ref: None,
                expiration_seconds: Some(lifetime.as_secs()),
            }),
            ..TokenRequest::default()
        };
        let answer = match self
            .apis
            .service_accounts
            .create_token_request(sa_name, &PostParams::default(), &request)
            .await
        {
            Ok(a) => a,
            Err(e) if is_not_found(&e) => return Ok(None),
            Err(e) => {
                return Err(issue_error(
                    format!("request a token for ServiceAccount {sa_name}"),
                    e,
                ));
            }
        };
        let status = answer.status.unwrap_or_default();
        let (Some(token), Some(expires)) = (status.token, status.expiration_timestamp) else {
            return Err(IssueError::Backend {
                action: format!("request a token for ServiceAccount {sa_name}"),
                source: "the TokenRequest answer carried no token or expiry".into(),
            });
        };
        let id = decode_token_id(&token);
        Ok(Some(Minted {
            token: Secret::new(token),
            expires_at: expires.0,
            id,
        }))
    }

    fn credential(
        &self,
        session: &Session,
        minted: Minted,
        outcome: IssueOutcome,
    ) -> Result<IssuedCredential, IssueError> {
        let malformed =
            || IssueError::Conflict(format!("session {} is malformed", session.name_any()));
        Ok(IssuedCredential {
            session: session.session_name().ok_or_else(malformed)?,
            outcome,
            role: RoleName::new(session.spec.role.as_str()).map_err(|_| malformed())?,
            token: minted.token,
            token_id: minted.id,
            token_expires_at: minted.expires_at,
            session_expires_at: session.expires_at(),
            service_account: format!("{}/{}", self.apis.namespace, session.name_any()),
        })
    }

    /// Makes the ServiceAccount and bindings of `revision`, mints a token, and commits the
    /// status; backs out if another request took the session over meanwhile.
    async fn finish(
        &self,
        session: Session,
        wanted: &Wanted,
        revision: &NameSuffix,
        outcome: IssueOutcome,
        now: Timestamp,
    ) -> Result<Step, IssueError> {
        let fresh = outcome == IssueOutcome::Created;
        let name = session.name_any();
        let Some(session_name) = session.session_name() else {
            return Err(IssueError::Conflict(format!("session {name} is malformed")));
        };

        let (sa, _) = match self.ensure_service_account(&session).await {
            Ok(Some(found)) => found,
            Ok(None) => {
                warn!(session = %name, "a ServiceAccount of this name exists and is not this session's; not using it");
                self.end(
                    &session,
                    (!fresh).then_some(SessionPhase::Revoked),
                    &RemovalReason::HalfMade,
                )
                .await?;
                return Ok(Step::Retry("the ServiceAccount name was taken"));
            }
            Err(e) => {
                self.abandon(&session, &[], fresh).await;
                return Err(e);
            }
        };

        let mut created = Vec::new();
        let plan = wanted
            .cluster_roles
            .iter()
            .map(|r| (r.as_str(), None))
            .chain(
                wanted
                    .namespaced
                    .iter()
                    .map(|b| (b.cluster_role.as_str(), Some(b.namespace.as_str()))),
            );
        for (index, (cluster_role, namespace)) in plan.enumerate() {
            let binding = naming::binding_name(&session_name, &wanted.role, revision, index);
            match self
                .create_binding(
                    &session,
                    &binding,
                    revision.as_str(),
                    cluster_role,
                    namespace,
                )
                .await
            {
                Ok(Some(made)) => created.push(made),
                Ok(None) => {
                    self.abandon(&session, &created, fresh).await;
                    return Err(IssueError::Foreign {
                        what: format!("binding {binding}"),
                    });
                }
                Err(e) => {
                    self.abandon(&session, &created, fresh).await;
                    return Err(e);
                }
            }
        }

        let minted = match self.mint(&name, wanted.expires_at, now).await {
            Ok(Some(m)) => m,
            Ok(None) => {
                self.abandon(&session, &created, true).await;
                return Ok(Step::Retry("the ServiceAccount disappeared"));
            }
            Err(e) => {
                self.abandon(&session, &created, fresh).await;
                return Err(e);
            }
        };

        let status = SessionStatus {
            phase: Some(SessionPhase::Active),
            revision: Some(revision.to_string()),
            service_account: Some(ObjectRef {
                namespace: self.apis.namespace.clone(),
                name: sa.name_any(),
                uid: sa.uid().unwrap_or_default(),
            }),
            bindings: created.clone(),
            last_token_expires_at: Some(Time(minted.expires_at)),
            last_token_id: minted.id.clone(),
            conditions: Vec::new(),
        };
        let committed = match self
            .commit(session.clone(), revision.as_str(), status)
            .await
        {
            Ok(Some(s)) => s,
            Ok(None) => {
                self.abandon(&session, &created, fresh).await;
                return Ok(Step::Retry("another request took the session over"));
            }
            Err(CommitError {
                error,
                maybe_landed,
            }) => {
                // If the status may have landed, the session may be complete with these
                // bindings: leave it whole (complete, or half-made for the reconciler).
                if !maybe_landed {
                    self.abandon(&session, &created, fresh).await;
                }
                return Err(error);
            }
        };

        if let Err(e) = self.delete_other_revisions(&committed).await {
            warn!(session = %name, error = %e, "could not delete the bindings of the previous role; the reconciler will");
        }
        info!(session = %name, role = %wanted.role, ?outcome, "session issued");
        Ok(Step::Done(self.credential(&committed, minted, outcome)?))
    }

    /// Writes `status` if the session still asks for `revision`; `None` when it no longer does
    /// (another request took it over, or it was revoked or deleted). When the write fails with
    /// an error that leaves open whether it landed, the session is read back to find out.
    async fn commit(
        &self,
        mut current: Session,
        revision: &str,
        status: SessionStatus,
    ) -> Result<Option<Session>, CommitError> {
        let name = current.name_any();
        let uid = current.uid();
        let failed = |error: IssueError, maybe_landed: bool| CommitError {
            error,
            maybe_landed,
        };
        for _ in 0..objects::WRITE_ATTEMPTS {
            let mut next = current.clone();
            next.status = Some(status.clone());
            match self
                .apis
                .sessions
                .replace_status(&name, &PostParams::default(), &next)
                .await
            {
                Ok(written) => return Ok(Some(written)),
                Err(e) if is_not_found(&e) => return Ok(None),
                Err(e) if is_conflict(&e) => {
                    let fresh = self.apis.sessions.get_opt(&name).await.map_err(|e| {
                        failed(issue_error(format!("read session {name}"), e), false)
                    })?;
                    match fresh {
                        Some(s)
                            if s.uid() == uid
                                && s.spec.revision == revision
                                && !s.is_over(self.clock.now()) =>
                        {
                            current = s;
                        }
                        _ => return Ok(None),
                    }
                }
                Err(e) => {
                    let error = issue_error(format!("record the status of session {name}"), e);
                    return match self.apis.sessions.get_opt(&name).await {
                        Ok(Some(s)) if s.uid() == uid && s.status.as_ref() == Some(&status) => {
                            debug!(session = %name, "the status write landed although its answer was lost");
                            Ok(Some(s))
                        }
                        Ok(_) => Err(failed(error, false)),
                        Err(_) => Err(failed(error, true)),
                    };
                }
            }
        }
        Err(failed(
            IssueError::Conflict(format!("record the status of session {name}")),
            false,
        ))
    }

    /// Deletes the session's bindings of revisions it no longer has (the previous role).
    ///
    /// The bindings are listed *before* the session is read back: a binding of a newer revision
    /// (another login that took the session over meanwhile) can only be in the list if that
    /// login's claim came first, so the read shows its revision as current and it is kept.
    async fn delete_other_revisions(&self, session: &Session) -> Result<(), kube::Error> {
        let name = session.name_any();
        let selector = session_selector(&name);
        let crbs = objects::list(&self.apis.cluster_role_bindings, &selector).await?;
        let rbs = objects::list(&self.apis.all_role_bindings, &selector).await?;
        let Some(current) = self.apis.sessions.get_opt(&name).await? else {
            return Ok(());
        };
        if current.uid() != session.uid() {
            return Ok(());
        }
        let keep: Vec<&str> = std::iter::once(current.spec.revision.as_str())
            .chain(current.status.as_ref().and_then(|s| s.revision.as_deref()))
            .collect();
        let stale = |labels: &std::collections::BTreeMap<String, String>| {
            labels
                .get(REVISION_LABEL)
                .is_none_or(|r| !keep.contains(&r.as_str()))
        };
        for b in crbs.iter().filter(|b| stale(b.labels())) {
            delete_uid(
                &self.apis.cluster_role_bindings,
                &b.name_any(),
                &b.uid().unwrap_or_default(),
            )
            .await?;
        }
        for b in rbs.iter().filter(|b| stale(b.labels())) {
            let ns = b.namespace().unwrap_or_default();
            delete_uid(
                &self.apis.role_bindings(&ns),
                &b.name_any(),
                &b.uid().unwrap_or_default(),
            )
            .await?;
        }
        Ok(())
    }

    async fn extend(
        &self,
        session: Session,
        identity: &Identity,
        wanted: &Wanted,
        now: Timestamp,
    ) -> Result<Step, IssueError> {
        let name = session.name_any();
        let mut next = session.clone();
        next.spec.expires_at = Time(wanted.expires_at);
        next.spec.identity = snapshot(identity);
        let current = if next.spec == session.spec {
            session
        } else {
            match self
                .apis
                .sessions
                .replace(&name, &PostParams::default(), &next)
                .await
            {
                Ok(s) => s,
                Err(e) if is_conflict(&e) || is_not_found(&e) => {
                    return Ok(Step::Retry("the session changed while extending it"));
                }
                Err(e) => return Err(issue_error(format!("extend session {name}"), e)),
            }
        };
        let Some(minted) = self.mint(&name, wanted.expires_at, now).await? else {
            self.end(
                &current,
                Some(SessionPhase::Revoked),
                &RemovalReason::HalfMade,
            )
            .await?;
            return Ok(Step::Retry("the session's ServiceAccount was gone"));
        };
        let mut status = current.status.clone().unwrap_or_default();
        status.last_token_expires_at = Some(Time(minted.expires_at));
        status.last_token_id = minted.id.clone();
        let revision = current.spec.revision.clone();
        let Some(committed) = self
            .commit(current, &revision, status)
            .await
            .map_err(|e| e.error)?
        else {
            return Ok(Step::Retry("another request took the session over"));
        };
        info!(session = %name, expires_at = %wanted.expires_at, "session extended");
        Ok(Step::Done(self.credential(
            &committed,
            minted,
            IssueOutcome::Extended,
        )?))
    }

    /// Ends every Session on the cluster (labelled or not) like a logout: ServiceAccount,
    /// bindings, Session, finalizer. What `tka-server drain` does before an uninstall. Unlike a
    /// logout it writes no status (an administrator running it is not allowed to, by the
    /// admission policy that reserves Session writes to the server), so it only deletes and
    /// removes finalizers.
    pub async fn revoke_all(&self) -> Result<Vec<SessionName>, IssueError> {
        let sessions = self
            .apis
            .sessions
            .list(&kube::api::ListParams::default())
            .await
            .map_err(|e| issue_error("list every Session", e))?
            .items;
        let mut ended = Vec::new();
        for session in sessions {
            self.end(&session, None, &RemovalReason::Revoked).await?;
            ended.extend(session.session_name());
        }
        Ok(ended)
    }

    /// Removes what [`KubernetesIssuer::revoke_all`] could not: ServiceAccounts and bindings
    /// labelled `managed-by=tka` whatever their session, and tka's finalizer from any Session
    /// still there (so deleting the CRD never hangs). Returns how many objects it changed.
    /// Only for an uninstall: a login in flight loses its objects.
    pub async fn remove_leftovers(&self) -> Result<usize, IssueError> {
        let selector = managed_selector();
        let fail = |what: &'static str| move |e| issue_error(what, e);
        let mut changed = 0;
        for sa in objects::list(&self.apis.service_accounts, &selector)
            .await
            .map_err(fail("list tka's ServiceAccounts"))?
        {
            let uid = sa.uid().unwrap_or_default();
            changed += usize::from(
                delete_uid(&self.apis.service_accounts, &sa.name_any(), &uid)
                    .await
                    .map_err(fail("delete a ServiceAccount"))?,
            );
        }
        for crb in objects::list(&self.apis.cluster_role_bindings, &selector)
            .await
            .map_err(fail("list tka's ClusterRoleBindings"))?
        {
            let uid = crb.uid().unwrap_or_default();
            changed += usize::from(
                delete_uid(&self.apis.cluster_role_bindings, &crb.name_any(), &uid)
                    .await
                    .map_err(fail("delete a ClusterRoleBinding"))?,
            );
        }
        for rb in objects::list(&self.apis.all_role_bindings, &selector)
            .await
            .map_err(fail("list tka's RoleBindings"))?
        {
            let uid = rb.uid().unwrap_or_default();
            let api = self.apis.role_bindings(&rb.namespace().unwrap_or_default());
            changed += usize::from(
                delete_uid(&api, &rb.name_any(), &uid)
                    .await
                    .map_err(fail("delete a RoleBinding"))?,
            );
        }
        let sessions = self
            .apis
            .sessions
            .list(&kube::api::ListParams::default())
            .await
            .map_err(fail("list every Session"))?
            .items;
        for session in sessions {
            let Some(uid) = session.uid() else { continue };
            let had = session.finalizers().iter().any(|f| f == FINALIZER);
            objects::remove_finalizer(&self.apis.sessions, &session.name_any(), &uid)
                .await
                .map_err(fail("remove tka's finalizer from a Session"))?;
            delete_uid(&self.apis.sessions, &session.name_any(), &uid)
                .await
                .map_err(fail("delete a Session"))?;
            changed += usize::from(had) + 1;
        }
        Ok(changed)
    }

    async fn end_all(&self, sessions: Vec<Session>) -> Result<Vec<SessionName>, IssueError> {
        let mut ended = Vec::new();
        for session in sessions {
            self.end(
                &session,
                Some(SessionPhase::Revoked),
                &RemovalReason::Revoked,
            )
            .await?;
            if let Some(name) = session.session_name() {
                ended.push(name);
            }
        }
        Ok(ended)
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
        for _ in 0..self.settings.max_attempts {
            match self.attempt(identity, &wanted).await? {
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
        let now = self.clock.now();
        let sessions = self.sessions_of(identity.key()).await?;
        let live = self.live(&sessions, now);
        let Some(session) = pick(live) else {
            // Report the most recent session's end rather than "no session" when there is one.
            let latest = sessions
                .into_iter()
                .max_by(|a, b| a.creation_timestamp().cmp(&b.creation_timestamp()));
            return Err(
                match latest.and_then(|s| s.session_name().map(|n| (s, n))) {
                    None => IssueError::NoSession,
                    Some((s, session))
                        if s.is_deleting() || s.phase() == Some(SessionPhase::Revoked) =>
                    {
                        IssueError::Revoked { session }
                    }
                    Some((s, session)) => IssueError::Expired {
                        session,
                        expired_at: s.expires_at(),
                    },
                },
            );
        };
        let Some(session_name) = session.session_name() else {
            return Err(IssueError::NoSession);
        };
        if session.spec.identity.user_id != identity.user.id.0 {
            return Err(IssueError::IdentityChanged {
                session: session_name,
            });
        }
        if !session.is_complete() {
            return Err(IssueError::Pending {
                session: session_name,
            });
        }
        let Some(minted) = self
            .mint(&session.name_any(), session.expires_at(), now)
            .await?
        else {
            self.end(
                &session,
                Some(SessionPhase::Revoked),
                &RemovalReason::HalfMade,
            )
            .await?;
            return Err(IssueError::Revoked {
                session: session_name,
            });
        };
        let (expires, id) = (minted.expires_at, minted.id.clone());
        let revision = session.spec.revision.clone();
        let recorded = objects::update_status(&self.apis.sessions, &session, |current, status| {
            if current.spec.revision != revision {
                return false;
            }
            status.last_token_expires_at = Some(Time(expires));
            status.last_token_id = id.clone();
            true
        })
        .await;
        if let Err(e) = recorded {
            warn!(session = %session_name, error = %e, "could not record the token in the session's status");
        }
        self.credential(&session, minted, IssueOutcome::Refreshed)
    }

    async fn revoke(&self, node: &NodeId) -> Result<Vec<SessionName>, IssueError> {
        let sessions = self.sessions_of(node).await?;
        self.end_all(sessions).await
    }

    async fn revoke_user(&self, user: UserId) -> Result<Vec<SessionName>, IssueError> {
        let selector = format!("{},{USER_LABEL}={}", managed_selector(), user_label(user));
        let sessions = objects::list(&self.apis.sessions, &selector)
            .await
            .map_err(|e| issue_error("list the user's sessions", e))?
            .into_iter()
            .filter(|s| s.spec.identity.user_id == user.0)
            .collect();
        self.end_all(sessions).await
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

/// The parts of a binding that decide whether it is exactly the one wanted.
type BindingParts<'a> = (&'a ObjectMeta, &'a RoleRef, Option<&'a Vec<Subject>>);

/// Creates `wanted`; when its name exists already, confirms that the existing object is exactly
/// the one wanted (a lost answer to our own create) rather than adopting a stranger. The UID of
/// the binding, or `None` when the name is taken by something else. `what` names it in errors.
async fn create_or_confirm_binding<K>(
    api: &Api<K>,
    wanted: &K,
    what: &str,
    parts: impl Fn(&K) -> BindingParts<'_>,
) -> Result<Option<Option<String>>, IssueError>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + serde::Serialize + std::fmt::Debug,
{
    match api.create(&PostParams::default(), wanted).await {
        Ok(created) => Ok(Some(created.uid())),
        Err(e) if is_already_exists(&e) => {
            let existing = api
                .get_opt(&wanted.name_any())
                .await
                .map_err(|e| issue_error(format!("read {what}"), e))?;
            Ok(existing.and_then(|b| {
                let (meta, role_ref, subjects) = parts(&b);
                let (w_meta, w_role_ref, w_subjects) = parts(wanted);
                is_exact_binding(meta, role_ref, subjects, w_meta, w_role_ref, w_subjects)
                    .then(|| b.uid())
            }))
        }
        Err(e) => Err(issue_error(format!("create {what}"), e)),
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
