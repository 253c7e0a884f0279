//! Ending sessions: one session (`end`: ServiceAccount first, so its tokens
//! die, then bindings, Session, finalizer), a device's sessions (logout), a user's sessions.
//!
//! Sessions are found by label and confirmed by spec; their objects only by the session's label.
//! It must not delete anything a Session's status names, nor anything of another session.

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

impl KubernetesIssuer {
    pub(super) async fn end(
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

    pub(super) async fn end_all(
        &self,
        sessions: Vec<Session>,
    ) -> Result<Vec<SessionName>, IssueError> {
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
