//! Ending sessions: one session (`end`: ServiceAccount first, so its tokens
//! die, then bindings, Session, finalizer), a device's sessions (logout), a user's sessions.
//!
//! Sessions are found by label and confirmed by spec; their objects only by the session's label.
//! It must not delete anything a Session's status names, nor anything of another session.

use futures::{StreamExt as _, stream};
use kube::ResourceExt;
use tracing::info;

use super::KubernetesIssuer;
use crate::domain::{NodeId, SessionName, UserId};
use crate::issuer::IssueError;
use crate::kubernetes::USER_LABEL;
use crate::kubernetes::error::issue_error;
use crate::kubernetes::objects::{self, end_session, managed_selector};
use crate::kubernetes::session::{Session, SessionPhase};
use crate::naming::user_label;
use crate::reconciler::RemovalReason;

/// How many sessions one revocation ends at once (a user may have many devices).
const SESSIONS_ENDED_AT_ONCE: usize = 8;

impl KubernetesIssuer {
    pub(super) async fn end(
        &self,
        session: &Session,
        mark: Option<SessionPhase>,
        reason: &RemovalReason,
    ) -> Result<(), IssueError> {
        let now = self.clock.now();
        let removed = end_session(
            &self.apis,
            session,
            mark.map(|p| (p, now)),
            reason,
            &self.checkpoints,
        )
        .await
        .map_err(|e| issue_error(format!("end session {}", session.name_any()), e))?;
        info!(session = %session.name_any(), %reason, removed = removed.len(), "session ended");
        Ok(())
    }

    /// Ends each of `sessions`, several at once; one that fails does not stop the others, and
    /// the first error is returned once all were tried (what failed stays for the reconciler).
    pub(super) async fn end_all(
        &self,
        sessions: Vec<Session>,
    ) -> Result<Vec<SessionName>, IssueError> {
        let outcomes: Vec<Result<Option<SessionName>, IssueError>> = stream::iter(sessions)
            .map(|session| async move {
                self.end(
                    &session,
                    Some(SessionPhase::Revoked),
                    &RemovalReason::Revoked,
                )
                .await
                .map(|()| session.session_name())
            })
            .buffered(SESSIONS_ENDED_AT_ONCE)
            .collect()
            .await;
        let mut ended = Vec::new();
        for outcome in outcomes {
            ended.extend(outcome?);
        }
        Ok(ended)
    }

    /// Ends every session of the device (found by label, confirmed by spec).
    pub(super) async fn end_device(&self, node: &NodeId) -> Result<Vec<SessionName>, IssueError> {
        let sessions = self.sessions_of(node).await?;
        self.end_all(sessions).await
    }

    /// Ends every session of the user on any device (found by label, confirmed by spec).
    pub(super) async fn end_user(&self, user: UserId) -> Result<Vec<SessionName>, IssueError> {
        let selector = format!("{},{USER_LABEL}={}", managed_selector(), user_label(user));
        let sessions = objects::list(&self.apis.sessions, &selector)
            .await
            .map_err(|e| issue_error("list the user's sessions", e))?
            .into_iter()
            .filter(|s| s.spec.identity.user_id == user.0)
            .collect();
        self.end_all(sessions).await
    }
}
