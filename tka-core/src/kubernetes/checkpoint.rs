//! Checkpoints: the points between two writes of the issuer, where an observer may look in.
//!
//! A login, a role change and the end of a session are each a sequence of writes to the API
//! server (DESIGN §5). A process that dies between two of them leaves the cluster half-way, and
//! recovery from every such point is what the reconciler must guarantee. To prove it on a real
//! API server a test has to stop the server exactly there: [`KubernetesIssuer::with_checkpoints`]
//! installs a [`CheckpointHook`] that the issuer calls after each write has been answered.
//!
//! This module owns only the names of the points and the hook's shape; it must not decide what
//! an observer does (tka-server's `fault-injection` feature aborts the process there; nothing in a
//! release build installs a hook). Only the issuer reports checkpoints: the reconciler's own
//! removals are not reported, so a hook never fires from a pass.
//!
//! [`KubernetesIssuer::with_checkpoints`]: super::KubernetesIssuer::with_checkpoints

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

/// A point between two writes of the issuer; reported once the first write was answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Checkpoint {
    /// A login made a new Session (the record of intent) and nothing else yet.
    LoginSessionCreated,
    /// A login made the session's ServiceAccount.
    LoginServiceAccountCreated,
    /// A login made every binding of the session.
    LoginBindingsCreated,
    /// A login got the session's token (TokenRequest answered); the status is not written.
    LoginTokenRequested,
    /// A login wrote the session's status: the session is complete; the answer is not sent.
    LoginStatusCommitted,
    /// A role change claimed the session for the new role (its spec names a new revision).
    RoleChangeClaimed,
    /// A role change made every binding of the new role; the old role's bindings remain.
    RoleChangeBindingsCreated,
    /// A role change got the session's token; the status still names the old role.
    RoleChangeTokenRequested,
    /// A role change wrote the status of the new role; the old role's bindings remain.
    RoleChangeStatusCommitted,
    /// A role change deleted the old role's bindings; the answer is not sent.
    RoleChangeOldBindingsDeleted,
    /// Ending a session (logout, revocation, or a login replacing a half-made one) marked it
    /// Revoked; nothing is deleted yet.
    EndMarked,
    /// Ending a session deleted its ServiceAccount (its tokens die).
    EndServiceAccountDeleted,
    /// Ending a session deleted its bindings.
    EndBindingsDeleted,
    /// Ending a session asked for the Session's deletion; its finalizer is not removed yet.
    EndSessionDeleted,
}

impl Checkpoint {
    /// Every checkpoint, in the order the writes happen.
    pub const ALL: [Checkpoint; 14] = [
        Checkpoint::LoginSessionCreated,
        Checkpoint::LoginServiceAccountCreated,
        Checkpoint::LoginBindingsCreated,
        Checkpoint::LoginTokenRequested,
        Checkpoint::LoginStatusCommitted,
        Checkpoint::RoleChangeClaimed,
        Checkpoint::RoleChangeBindingsCreated,
        Checkpoint::RoleChangeTokenRequested,
        Checkpoint::RoleChangeStatusCommitted,
        Checkpoint::RoleChangeOldBindingsDeleted,
        Checkpoint::EndMarked,
        Checkpoint::EndServiceAccountDeleted,
        Checkpoint::EndBindingsDeleted,
        Checkpoint::EndSessionDeleted,
    ];

    /// Its name, as flags and logs spell it (`login-session-created`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            Checkpoint::LoginSessionCreated => "login-session-created",
            Checkpoint::LoginServiceAccountCreated => "login-service-account-created",
            Checkpoint::LoginBindingsCreated => "login-bindings-created",
            Checkpoint::LoginTokenRequested => "login-token-requested",
            Checkpoint::LoginStatusCommitted => "login-status-committed",
            Checkpoint::RoleChangeClaimed => "role-change-claimed",
            Checkpoint::RoleChangeBindingsCreated => "role-change-bindings-created",
            Checkpoint::RoleChangeTokenRequested => "role-change-token-requested",
            Checkpoint::RoleChangeStatusCommitted => "role-change-status-committed",
            Checkpoint::RoleChangeOldBindingsDeleted => "role-change-old-bindings-deleted",
            Checkpoint::EndMarked => "end-marked",
            Checkpoint::EndServiceAccountDeleted => "end-service-account-deleted",
            Checkpoint::EndBindingsDeleted => "end-bindings-deleted",
            Checkpoint::EndSessionDeleted => "end-session-deleted",
        }
    }
}

impl fmt::Display for Checkpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A name that is no [`Checkpoint`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a checkpoint; one of: {names}", names = Checkpoint::ALL.map(Checkpoint::as_str).join(", "))]
pub struct UnknownCheckpoint(pub String);

impl FromStr for Checkpoint {
    type Err = UnknownCheckpoint;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Checkpoint::ALL
            .into_iter()
            .find(|c| c.as_str() == s)
            .ok_or_else(|| UnknownCheckpoint(s.to_owned()))
    }
}

/// What the issuer calls at each [`Checkpoint`], with the name of the session concerned. It runs
/// on the request's task between two awaits: it must not block for long.
pub type CheckpointHook = Arc<dyn Fn(Checkpoint, &str) + Send + Sync>;

/// The issuer's hook, if any; reports nothing when none is installed.
#[derive(Clone, Default)]
pub(crate) struct Checkpoints(Option<CheckpointHook>);

impl Checkpoints {
    pub(crate) fn new(hook: CheckpointHook) -> Self {
        Self(Some(hook))
    }

    /// Reports that `session` reached `point`.
    pub(crate) fn reached(&self, point: Checkpoint, session: &str) {
        if let Some(hook) = &self.0 {
            hook(point, session);
        }
    }
}

impl fmt::Debug for Checkpoints {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_some() {
            "Checkpoints(hooked)"
        } else {
            "Checkpoints(none)"
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_checkpoint_parses_back_from_its_name_and_others_are_refused() {
        for point in Checkpoint::ALL {
            assert_eq!(point.as_str().parse::<Checkpoint>(), Ok(point));
            assert_eq!(point.to_string(), point.as_str());
        }
        let names: std::collections::BTreeSet<_> =
            Checkpoint::ALL.iter().map(|c| c.as_str()).collect();
        assert_eq!(names.len(), Checkpoint::ALL.len(), "names are unique");
        let err = "login".parse::<Checkpoint>().unwrap_err();
        assert!(err.to_string().contains("login-session-created"), "{err}");
    }

    #[test]
    fn a_hook_sees_what_is_reached_and_no_hook_is_silent() {
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let hooked = {
            let seen = seen.clone();
            Checkpoints::new(Arc::new(move |c, s: &str| {
                seen.lock().unwrap().push((c, s.to_owned()));
            }))
        };
        hooked.reached(Checkpoint::EndMarked, "tka-a-1");
        Checkpoints::default().reached(Checkpoint::EndMarked, "tka-a-2");
        assert_eq!(
            *seen.lock().unwrap(),
            vec![(Checkpoint::EndMarked, "tka-a-1".to_owned())]
        );
    }
}
