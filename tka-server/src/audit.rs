//! Audit records: one structured tracing event (target `tka::audit`) per issue, refresh, revoke
//! and denial, and one per proxied request ([`ProxyRecord`], event `proxy`), with the device, the user, the role, the bindings, the expiry, the session, the
//! token's ID (`jti`, so Kubernetes audit lines can be joined back to a device and a person), the
//! outcome and the request ID. This module formats records; it never sees a token, only its ID.
//! It decides nothing: [`crate::sessions`] says what happened, and this module must not import
//! the handlers, the state or the error mapping.

use std::fmt::Write as _;

use jiff::Timestamp;
use tka_core::api::ProblemCode;
use tka_core::issuer::IssuedCredential;
use tka_core::{Decision, Denial, Identity, SessionName};

use crate::listener::Peer;
use crate::request_id::RequestId;

/// The tracing target of audit records.
pub const TARGET: &str = "tka::audit";

/// What was audited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// A login created, extended or changed a session and minted a token.
    Issue,
    /// A token was minted for a live session.
    Refresh,
    /// Sessions were revoked.
    Revoke,
    /// A request was refused.
    Denial,
}

impl Event {
    fn as_str(self) -> &'static str {
        match self {
            Self::Issue => "issue",
            Self::Refresh => "refresh",
            Self::Revoke => "revoke",
            Self::Denial => "denial",
        }
    }
}

/// One audit record. Absent fields are written as `-`.
#[derive(Debug, Clone)]
pub struct Record {
    event: Event,
    outcome: String,
    device: String,
    device_name: String,
    user: String,
    user_id: String,
    peer: String,
    role: String,
    bindings: String,
    expires_at: String,
    session: String,
    token_id: String,
    token_expires_at: String,
    via: String,
    reason: String,
}

const NONE: &str = "-";

fn bindings(decision: &Decision) -> String {
    let mut out = String::new();
    for role in &decision.cluster_roles {
        let _ = write!(
            out,
            "{}ClusterRole/{role}",
            if out.is_empty() { "" } else { "," }
        );
    }
    for b in &decision.namespaced {
        let _ = write!(
            out,
            "{}{}/ClusterRole/{}",
            if out.is_empty() { "" } else { "," },
            b.namespace,
            b.cluster_role
        );
    }
    if out.is_empty() { NONE.to_owned() } else { out }
}

impl Record {
    /// A record about `identity`, coming from `peer`.
    pub fn new(event: Event, identity: &Identity, peer: &Peer) -> Self {
        Self {
            event,
            outcome: NONE.to_owned(),
            device: identity.node.stable_id.to_string(),
            device_name: identity.node.name.clone(),
            user: identity.acting_as(),
            user_id: identity.user.id.to_string(),
            peer: peer.remote.to_string(),
            role: NONE.to_owned(),
            bindings: NONE.to_owned(),
            expires_at: NONE.to_owned(),
            session: NONE.to_owned(),
            token_id: NONE.to_owned(),
            token_expires_at: NONE.to_owned(),
            via: NONE.to_owned(),
            reason: NONE.to_owned(),
        }
    }

    /// A denial of a caller whois could not (or must not) identify.
    pub fn denial_before_identity(
        peer: &Peer,
        code: ProblemCode,
        reason: impl std::fmt::Display,
    ) -> Self {
        Self {
            event: Event::Denial,
            outcome: code.as_str().to_owned(),
            device: NONE.to_owned(),
            device_name: NONE.to_owned(),
            user: NONE.to_owned(),
            user_id: NONE.to_owned(),
            peer: peer.remote.to_string(),
            role: NONE.to_owned(),
            bindings: NONE.to_owned(),
            expires_at: NONE.to_owned(),
            session: NONE.to_owned(),
            token_id: NONE.to_owned(),
            token_expires_at: NONE.to_owned(),
            via: NONE.to_owned(),
            reason: reason.to_string(),
        }
    }

    /// Sets the outcome word (`created`, `refreshed`, `noGrantForRole`, `failed`, …).
    #[must_use]
    pub fn outcome(mut self, outcome: impl Into<String>) -> Self {
        self.outcome = outcome.into();
        self
    }

    /// Records what policy decided.
    #[must_use]
    pub fn decision(mut self, decision: &Decision) -> Self {
        self.role = decision.role.to_string();
        self.bindings = bindings(decision);
        self.expires_at = decision.expires_at.to_string();
        self
    }

    /// Records the credential handed out (its ID and expiry, never the token).
    #[must_use]
    pub fn credential(self, credential: &IssuedCredential) -> Self {
        let mut this = self.session_of(credential);
        this.token_id = credential
            .token_id
            .clone()
            .unwrap_or_else(|| NONE.to_owned());
        this.token_expires_at = credential.token_expires_at.to_string();
        this
    }

    /// Records the session a credential belongs to, without the token's ID or expiry: for a
    /// login through the proxy, which hands the caller no token.
    #[must_use]
    pub fn session_of(mut self, credential: &IssuedCredential) -> Self {
        self.role = credential.role.to_string();
        self.session = credential.session.to_string();
        self.expires_at = credential.session_expires_at.to_string();
        self
    }

    /// Records how kubectl reaches the cluster for a login (`proxy`: the caller got no token).
    #[must_use]
    pub fn via(mut self, via: tka_core::api::Via) -> Self {
        self.via = via.to_string();
        self
    }

    /// Records the role asked for or held.
    #[must_use]
    pub fn role(mut self, role: impl std::fmt::Display) -> Self {
        self.role = role.to_string();
        self
    }

    /// Records the sessions concerned.
    #[must_use]
    pub fn sessions(mut self, sessions: &[SessionName]) -> Self {
        if !sessions.is_empty() {
            self.session = sessions
                .iter()
                .map(SessionName::as_str)
                .collect::<Vec<_>>()
                .join(",");
        }
        self
    }

    /// Records when the session ends.
    #[must_use]
    pub fn expires_at(mut self, at: Timestamp) -> Self {
        self.expires_at = at.to_string();
        self
    }

    /// Records why, in words.
    #[must_use]
    pub fn reason(mut self, reason: impl std::fmt::Display) -> Self {
        self.reason = reason.to_string();
        self
    }

    /// Records a denial's class and message.
    #[must_use]
    pub fn denial(self, denial: &Denial) -> Self {
        let role = denial
            .requested_role
            .as_ref()
            .map_or_else(|| self.role.clone(), ToString::to_string);
        Self {
            role,
            ..self.outcome(denial.kind.code()).reason(denial)
        }
    }

    /// Writes the record.
    pub fn emit(&self) {
        let request_id = RequestId::current().map_or_else(|| NONE.to_owned(), |id| id.to_string());
        tracing::info!(
            target: TARGET,
            event = self.event.as_str(),
            outcome = %self.outcome,
            request_id = %request_id,
            device = %self.device,
            device_name = %self.device_name,
            user = %self.user,
            user_id = %self.user_id,
            peer = %self.peer,
            role = %self.role,
            bindings = %self.bindings,
            expires_at = %self.expires_at,
            session = %self.session,
            token_id = %self.token_id,
            token_expires_at = %self.token_expires_at,
            via = %self.via,
            reason = %self.reason,
            "audit"
        );
    }
}

/// The audit record of one proxied request (event `proxy`): who (login name and node), which
/// session and token ID, what (verb and path, never the query), and how it went (status, bytes
/// sent to the client, duration). Absent fields are `-`. It never holds the token.
#[derive(Debug, Clone)]
pub struct ProxyRecord {
    /// The login name the device acts as (or its tags).
    pub login: String,
    /// The device's node stable ID.
    pub node: String,
    /// The device's node name.
    pub node_name: String,
    /// The peer address.
    pub peer: String,
    /// The session the request was forwarded under.
    pub session: Option<String>,
    /// The forwarding token's ID.
    pub jti: Option<String>,
    /// The HTTP method, lowercase.
    pub verb: String,
    /// The request path (no query).
    pub path: String,
    /// The status answered to the client.
    pub status: u16,
    /// Bytes sent to the client (body, or both ways of an upgraded connection).
    pub bytes: u64,
    /// How long the request (or upgraded connection) lasted.
    pub duration_ms: u64,
    /// Why it was refused or failed, when it was.
    pub reason: Option<String>,
}

impl ProxyRecord {
    /// Writes the record.
    pub fn emit(&self) {
        tracing::info!(
            target: TARGET,
            event = "proxy",
            login = %self.login,
            node = %self.node,
            node_name = %self.node_name,
            peer = %self.peer,
            session = %self.session.as_deref().unwrap_or(NONE),
            jti = %self.jti.as_deref().unwrap_or(NONE),
            verb = %self.verb,
            path = %self.path,
            status = self.status,
            bytes = self.bytes,
            duration_ms = self.duration_ms,
            reason = %self.reason.as_deref().unwrap_or(NONE),
            "audit"
        );
    }
}
