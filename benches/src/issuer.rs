//! A fast in-memory [`CredentialIssuer`]: no Kubernetes, no locks, no state. Every `issue`
//! answers "created" with the same fixed-size token, so a load generator measures the server's
//! own cost and not a backend's. Must not be used where a session has to exist afterwards.

use async_trait::async_trait;
use tka_core::issuer::{
    CredentialIssuer, DEFAULT_TOKEN_LIFETIME, IssueError, IssueOutcome, IssuedCredential,
    SessionInfo, token_lifetime,
};
use tka_core::{Clock, Decision, Identity, NodeId, Secret, SessionName, UserId};

use crate::FixtureError;
use crate::fixtures;

/// Issues [`fixtures::token`] to anyone, instantly.
#[derive(Debug)]
pub struct FastIssuer<C> {
    clock: C,
    session: SessionName,
    token: Secret<String>,
}

impl<C: Clock> FastIssuer<C> {
    /// An issuer reading time from `clock`.
    pub fn new(clock: C) -> Result<Self, FixtureError> {
        Ok(Self {
            clock,
            session: SessionName::new("tka-alice-bench-0001".to_owned())
                .map_err(|e| FixtureError::new("session name", e))?,
            token: fixtures::token(),
        })
    }
}

#[async_trait]
impl<C: Clock + std::fmt::Debug + 'static> CredentialIssuer for FastIssuer<C> {
    async fn issue(
        &self,
        _identity: &Identity,
        decision: &Decision,
    ) -> Result<IssuedCredential, IssueError> {
        let now = self.clock.now();
        let lifetime = token_lifetime(now, decision.expires_at, DEFAULT_TOKEN_LIFETIME);
        Ok(IssuedCredential {
            session: self.session.clone(),
            outcome: IssueOutcome::Created,
            role: decision.role.clone(),
            token: self.token.clone(),
            token_id: Some("jti-bench".to_owned()),
            token_expires_at: now + lifetime,
            session_expires_at: decision.expires_at,
            service_account: "tka-system/tka-alice-bench-0001".to_owned(),
        })
    }

    async fn refresh(&self, _identity: &Identity) -> Result<IssuedCredential, IssueError> {
        Err(IssueError::NoSession)
    }

    async fn revoke(&self, _node: &NodeId) -> Result<Vec<SessionName>, IssueError> {
        Ok(Vec::new())
    }

    async fn revoke_user(&self, _user: UserId) -> Result<Vec<SessionName>, IssueError> {
        Ok(Vec::new())
    }

    async fn describe(&self, _node: &NodeId) -> Result<Option<SessionInfo>, IssueError> {
        Ok(None)
    }
}
