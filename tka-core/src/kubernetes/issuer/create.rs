//! Making a session: a new Session (record of intent) for a device that has none, then, for a
//! new session or a changed role alike, its ServiceAccount, its bindings, a token, and the
//! committed status (`finish`); also minting tokens for the other parts.
//!
//! It owns every create the issuer makes and backs out only what this request made (by UID). It
//! must not end a session it did not make here, nor trust a Session's status to find what to
//! delete: leftovers of a failure part way are the reconciler's.

use jiff::Timestamp;
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_openapi::api::rbac::v1::{ClusterRoleBinding, RoleBinding, RoleRef, Subject};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kube::api::PostParams;
use kube::{Api, ResourceExt};
use tracing::{debug, info, warn};

use super::{KubernetesIssuer, Step, Wanted, decode_token_id, jitter};
use crate::domain::{Identity, RoleName};
use crate::issuer::{IssueError, IssueOutcome, IssuedCredential, token_lifetime};
use crate::kubernetes::checkpoint::Checkpoint;
use crate::kubernetes::error::{is_already_exists, is_conflict, is_not_found, issue_error};
use crate::kubernetes::objects::{
    self, cluster_role_binding, delete_uid, is_exact_binding, owner_uid, role_binding,
    service_account, session_labels,
};
use crate::kubernetes::session::{
    BindingKind, BindingRef, ObjectRef, Session, SessionPhase, SessionStatus,
};
use crate::kubernetes::{FINALIZER, SESSION_LABEL};
use crate::naming::{self, NameSuffix, node_label, user_label};
use crate::reconciler::RemovalReason;
use crate::secret::Secret;

/// A status write that failed.
pub(super) struct CommitError {
    pub(super) error: IssueError,
    /// Whether the write may have landed after all (its answer was lost and reading back
    /// failed too).
    pub(super) maybe_landed: bool,
}

/// A freshly minted token.
pub(super) struct Minted {
    pub(super) token: Secret<String>,
    pub(super) expires_at: Timestamp,
    pub(super) id: Option<String>,
}

impl KubernetesIssuer {
    pub(super) async fn create(
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
            spec: wanted.spec(identity, &revision, now),
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
        self.checkpoints
            .reached(Checkpoint::LoginSessionCreated, name.as_str());

        // Two logins of one device that both found no session both create one. Each looks again
        // after creating: at least one of any two sees the other and backs off, so at most one
        // goes on to make a ServiceAccount and bindings.
        let others = match self.rivals_after_create(identity.key(), &created).await {
            Ok(rivals) => self.live(&rivals, now).len(),
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

    /// Makes the ServiceAccount and bindings of `revision`, mints a token, and commits the
    /// status; backs out if another request took the session over meanwhile.
    pub(super) async fn finish(
        &self,
        session: Session,
        wanted: &Wanted,
        revision: &NameSuffix,
        outcome: IssueOutcome,
        now: Timestamp,
    ) -> Result<Step, IssueError> {
        let fresh = outcome == IssueOutcome::Created;
        let name = session.name_any();
        let reached = |login: Checkpoint, role_change: Checkpoint| {
            self.checkpoints
                .reached(if fresh { login } else { role_change }, &name);
        };
        let Some(session_name) = session.session_name() else {
            return Err(IssueError::Conflict(format!("session {name} is malformed")));
        };

        let (sa, _) = match self.ensure_service_account(&session).await {
            Ok(Some(found)) => {
                // A role change keeps the session's ServiceAccount: nothing was written.
                if fresh {
                    self.checkpoints
                        .reached(Checkpoint::LoginServiceAccountCreated, &name);
                }
                found
            }
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

        reached(
            Checkpoint::LoginBindingsCreated,
            Checkpoint::RoleChangeBindingsCreated,
        );

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

        reached(
            Checkpoint::LoginTokenRequested,
            Checkpoint::RoleChangeTokenRequested,
        );

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

        reached(
            Checkpoint::LoginStatusCommitted,
            Checkpoint::RoleChangeStatusCommitted,
        );

        // A session made by this request has no other revision: nothing to list. A login that
        // later gives it a new role removes this revision's bindings in its own `finish`.
        if !fresh {
            match self.delete_other_revisions(&committed).await {
                Ok(()) => self
                    .checkpoints
                    .reached(Checkpoint::RoleChangeOldBindingsDeleted, &name),
                Err(e) => {
                    warn!(session = %name, error = %e, "could not delete the bindings of the previous role; the reconciler will");
                }
            }
        }
        info!(session = %name, role = %wanted.role, ?outcome, "session issued");
        Ok(Step::Done(self.credential(&committed, minted, outcome)?))
    }

    /// Creates the ServiceAccount (or finds the one this session made); `None` when the name is
    /// taken by an object that is not this session's.
    pub(super) async fn ensure_service_account(
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
    pub(super) async fn create_binding(
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
    pub(super) async fn discard(&self, bindings: &[BindingRef]) {
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
    pub(super) async fn abandon(&self, session: &Session, bindings: &[BindingRef], fresh: bool) {
        self.discard(bindings).await;
        if !fresh {
            return;
        }
        if let Err(e) = self.end(session, None, &RemovalReason::HalfMade).await {
            warn!(session = %session.name_any(), error = %e, "could not remove an unfinished session; the reconciler will");
        }
    }

    pub(super) async fn mint(
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

    pub(super) fn credential(
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

    /// Writes `status` if the session still asks for `revision`; `None` when it no longer does
    /// (another request took it over, or it was revoked or deleted). When the write fails with
    /// an error that leaves open whether it landed, the session is read back to find out.
    pub(super) async fn commit(
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
