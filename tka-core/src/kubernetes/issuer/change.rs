//! Changing a live session of the device: extending it for the same grant, moving it to another
//! role (a new revision, whose objects `finish` makes, then the previous
//! revision's bindings go), and refreshing its token.
//!
//! Every change carries the Session's resourceVersion, so a concurrent login of the same device
//! loses cleanly and starts over. It must not create a Session, and deletes only bindings found
//! by the session's label whose revision the Session, read back, no longer has.

use jiff::Timestamp;
use k8s_openapi::api::rbac::v1::{ClusterRoleBinding, RoleBinding};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::ResourceExt;
use kube::api::PostParams;
use tracing::{info, warn};

use super::{KubernetesIssuer, Step, Wanted, pick};
use crate::domain::Identity;
use crate::issuer::{IssueError, IssueOutcome, IssuedCredential};
use crate::kubernetes::REVISION_LABEL;
use crate::kubernetes::checkpoint::Checkpoint;
use crate::kubernetes::error::{is_conflict, is_not_found, issue_error};
use crate::kubernetes::objects::{self, session_selector};
use crate::kubernetes::session::{Session, SessionIdentity, SessionPhase};
use crate::reconciler::RemovalReason;

impl KubernetesIssuer {
    pub(super) async fn change(
        &self,
        session: Session,
        identity: &Identity,
        wanted: &Wanted,
        now: Timestamp,
    ) -> Result<Step, IssueError> {
        let name = session.name_any();
        let revision = self.suffix();
        let mut next = session.clone();
        next.spec = wanted.spec(identity, &revision, now);
        let Some(claimed) = self
            .replace_spec(&next, &format!("change the role of session {name}"))
            .await?
        else {
            return Ok(Step::Retry("the session changed while changing its role"));
        };
        self.checkpoints
            .reached(Checkpoint::RoleChangeClaimed, name.as_str());
        info!(session = %name, role = %wanted.role, "session role changing");
        self.finish(claimed, wanted, &revision, IssueOutcome::RoleChanged, now)
            .await
    }

    pub(super) async fn extend(
        &self,
        session: Session,
        identity: &Identity,
        wanted: &Wanted,
        now: Timestamp,
    ) -> Result<Step, IssueError> {
        let name = session.name_any();
        let mut next = session.clone();
        next.spec.expires_at = Time(wanted.expires_at);
        next.spec.identity = SessionIdentity::from(identity);
        let current = if next.spec == session.spec {
            session
        } else {
            let replaced = self
                .replace_spec(&next, &format!("extend session {name}"))
                .await?;
            let Some(replaced) = replaced else {
                return Ok(Step::Retry("the session changed while extending it"));
            };
            replaced
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

    /// Writes `next` (a changed copy of a Session, carrying its resourceVersion). `None` when the
    /// Session changed or went meanwhile: the login starts over. `doing` names the change in
    /// errors.
    async fn replace_spec(
        &self,
        next: &Session,
        doing: &str,
    ) -> Result<Option<Session>, IssueError> {
        match self
            .apis
            .sessions
            .replace(&next.name_any(), &PostParams::default(), next)
            .await
        {
            Ok(s) => Ok(Some(s)),
            Err(e) if is_conflict(&e) || is_not_found(&e) => Ok(None),
            Err(e) => Err(issue_error(doing, e)),
        }
    }

    /// Deletes the session's bindings of revisions it no longer has (the previous role).
    ///
    /// The bindings are listed *before* the session is read back: a binding of a newer revision
    /// (another login that took the session over meanwhile) can only be in the list if that
    /// login's claim came first, so the read shows its revision as current and it is kept.
    pub(super) async fn delete_other_revisions(
        &self,
        session: &Session,
    ) -> Result<(), kube::Error> {
        let name = session.name_any();
        let selector = session_selector(&name);
        let crbs = objects::list_labelled::<ClusterRoleBinding>(&self.apis, &selector).await?;
        let rbs = objects::list_labelled::<RoleBinding>(&self.apis, &selector).await?;
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
        let reason = RemovalReason::StaleRevision;
        objects::delete_listed(&self.apis, crbs, |b| stale(b.labels()), &reason).await?;
        objects::delete_listed(&self.apis, rbs, |b| stale(b.labels()), &reason).await?;
        Ok(())
    }

    /// Mints a new token for the device's live, complete session, and records it in the
    /// session's status (best effort: the token is good either way).
    pub(super) async fn refresh_token(
        &self,
        identity: &Identity,
    ) -> Result<IssuedCredential, IssueError> {
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
}
