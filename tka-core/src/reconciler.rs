//! The [`Reconciler`] contract: one pass that removes what should no longer exist (expired,
//! revoked and half-made sessions, orphaned objects, sessions whose grant was withdrawn), and the
//! rules for re-validating a live session against the tailnet and the GrantMappings.
//!
//! A reconciler only ever removes. It never creates or "repairs" bindings from a session's spec:
//! anyone able to write a Session would otherwise be able to mint access. This module is pure; the
//! implementation on a Kubernetes API is `kubernetes::reconciler` (feature `kubernetes`).

use std::error::Error as StdError;
use std::fmt;

use async_trait::async_trait;
use jiff::{SignedDuration, Timestamp};
use serde::{Deserialize, Serialize};

use crate::capability::ParsedGrants;
use crate::domain::{ClusterName, Identity, NodeId, RoleName, SessionName, UserId};
use crate::identity::IdentityError;
pub use crate::policy::NamedMapping;
use crate::policy::{
    Bindable, GrantVerdict, HeldGrant, MappingView, NamespacedBinding, PolicyContext,
    PolicySettings, grant_holds,
};

/// The kinds of object a reconciler removes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[non_exhaustive]
pub enum ObjectKind {
    /// A tka Session.
    Session,
    /// A session's ServiceAccount.
    ServiceAccount,
    /// A session's ClusterRoleBinding.
    ClusterRoleBinding,
    /// A session's RoleBinding.
    RoleBinding,
}

impl fmt::Display for ObjectKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Session => "Session",
            Self::ServiceAccount => "ServiceAccount",
            Self::ClusterRoleBinding => "ClusterRoleBinding",
            Self::RoleBinding => "RoleBinding",
        })
    }
}

/// Why something was removed.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub enum RemovalReason {
    /// The session passed its `expiresAt`.
    Expired,
    /// The session was marked revoked (logout that did not finish, an administrator).
    Revoked,
    /// The session never became complete within the grace period, or lost its ServiceAccount.
    HalfMade,
    /// The session was deleted (it carried a deletion timestamp) and its children had to go.
    Deleted,
    /// The object's session is missing, over, or is another object of the same name.
    Orphan,
    /// A binding of a role the session no longer has.
    StaleRevision,
    /// Re-validation found the grant, the mapping or the device gone; says which.
    GrantWithdrawn(String),
}

impl fmt::Display for RemovalReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Expired => f.write_str("expired"),
            Self::Revoked => f.write_str("revoked"),
            Self::HalfMade => f.write_str("half-made"),
            Self::Deleted => f.write_str("deleted"),
            Self::Orphan => f.write_str("orphan"),
            Self::StaleRevision => f.write_str("stale revision"),
            Self::GrantWithdrawn(why) => write!(f, "grant withdrawn: {why}"),
        }
    }
}

/// One object removed by a pass.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Removal {
    /// Its kind.
    pub kind: ObjectKind,
    /// Its namespace (ServiceAccounts and RoleBindings).
    pub namespace: Option<String>,
    /// Its name.
    pub name: String,
    /// Why it went.
    pub reason: RemovalReason,
}

/// What one pass did, and when the next one is due.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReconcileReport {
    /// Everything removed, in the order it was removed.
    pub removed: Vec<Removal>,
    /// Sessions still live after the pass.
    pub live_sessions: usize,
    /// Live sessions whose grant was checked in this pass.
    pub revalidated: usize,
    /// GrantMappings whose `Ready` condition was changed.
    pub mappings_updated: Vec<String>,
    /// When the next pass is due: the earliest `expiresAt` of a live session, or the end of a
    /// grace period that is still running. Recomputed every pass, so a restart loses nothing.
    pub next_requeue: Option<Timestamp>,
    /// Problems with single objects that did not stop the pass (they are retried next time).
    pub failures: Vec<String>,
}

impl ReconcileReport {
    /// The removals of one kind.
    pub fn removed_of(&self, kind: ObjectKind) -> impl Iterator<Item = &Removal> {
        self.removed.iter().filter(move |r| r.kind == kind)
    }

    /// Whether the session of this name was removed.
    pub fn removed_session(&self, name: &str) -> bool {
        self.removed_of(ObjectKind::Session).any(|r| r.name == name)
    }

    /// Lowers `next_requeue` to `at` if that is earlier.
    pub fn requeue_at(&mut self, at: Timestamp) {
        self.next_requeue = Some(self.next_requeue.map_or(at, |t| t.min(at)));
    }
}

/// How long to wait from `now` until `next` (if any), capped at `max` and never negative.
///
/// ```
/// use jiff::{SignedDuration, Timestamp};
/// use tka_core::reconciler::wait_until;
///
/// let now: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
/// let max = SignedDuration::from_mins(1);
/// assert_eq!(wait_until(now, Some(now + SignedDuration::from_secs(5)), max).as_secs(), 5);
/// assert_eq!(wait_until(now, Some(now - SignedDuration::from_secs(5)), max).as_secs(), 0);
/// assert_eq!(wait_until(now, None, max), max);
/// ```
pub fn wait_until(now: Timestamp, next: Option<Timestamp>, max: SignedDuration) -> SignedDuration {
    match next {
        Some(at) => at
            .duration_since(now)
            .clamp(SignedDuration::ZERO, max.max(SignedDuration::ZERO)),
        None => max,
    }
}

/// A reconciler failure that stopped a whole pass (failures of single objects are in the report).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReconcileError {
    /// The API server could not be reached.
    #[error(
        "the Kubernetes API server is unavailable while trying to {action}; the pass is retried"
    )]
    Unavailable {
        /// What was being done.
        action: String,
        /// The underlying error.
        #[source]
        source: Box<dyn StdError + Send + Sync>,
    },
    /// The reconciler's ServiceAccount lacks a permission.
    #[error("the API server refused to {action}: tka-server lacks a permission; check its RBAC")]
    Forbidden {
        /// What was being done.
        action: String,
        /// The underlying error.
        #[source]
        source: Box<dyn StdError + Send + Sync>,
    },
    /// Anything else.
    #[error("the Kubernetes API failed while trying to {action}")]
    Backend {
        /// What was being done.
        action: String,
        /// The underlying error.
        #[source]
        source: Box<dyn StdError + Send + Sync>,
    },
}

/// One pass over the cluster's tka objects. Every action is idempotent, so two reconcilers running
/// at once are harmless. Object-safe: servers hold an `Arc<dyn Reconciler>`.
#[cfg_attr(any(test, feature = "mocks"), mockall::automock)]
#[async_trait]
pub trait Reconciler: Send + Sync {
    /// Runs one pass as of `now` and reports what it did and when the next pass is due.
    async fn reconcile_once(&self, now: Timestamp) -> Result<ReconcileReport, ReconcileError>;
}

/// What a live session was granted, as recorded in its spec: what re-validation checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionGrant {
    /// The session.
    pub session: SessionName,
    /// The device it belongs to.
    pub node: NodeId,
    /// The user it was issued to.
    pub user: UserId,
    /// The role (GrantMapping name).
    pub role: RoleName,
    /// ClusterRoles bound cluster-wide.
    pub cluster_roles: Vec<String>,
    /// ClusterRoles bound per namespace.
    pub namespaced: Vec<NamespacedBinding>,
}

/// What re-validation asks about one live session.
#[derive(Debug, Clone, Copy)]
pub struct GrantQuery<'a> {
    /// What the session was granted.
    pub grant: &'a SessionGrant,
    /// The device's identity as whois reports it now.
    pub current: &'a Identity,
    /// The GrantMappings as they are now, judged against the cluster's facts
    /// ([`crate::policy::mapping_views`]).
    pub mappings: &'a [MappingView],
    /// The time of the pass.
    pub now: Timestamp,
}

/// Decides whether a live session's grant still holds for the caller as the tailnet reports it
/// now and the GrantMappings as they are now.
///
/// Closures of the right shape are `GrantCheck`s, so a test can plug in a simple rule.
pub trait GrantCheck: Send + Sync {
    /// [`Verdict::Holds`] when the session's role and bindings are still granted to the device,
    /// [`Verdict::Withdrawn`] (with why) when not, [`Verdict::Unknown`] when it cannot tell yet.
    fn check(&self, query: &GrantQuery<'_>) -> Verdict;
}

impl<F> GrantCheck for F
where
    F: Fn(&GrantQuery<'_>) -> Verdict + Send + Sync,
{
    fn check(&self, query: &GrantQuery<'_>) -> Verdict {
        self(query)
    }
}

/// Whether the server may bind a mapping's roles, as far as it has asked the API server
/// (reported as `Ready=False/NotBindable`, and unusable for logins and sessions alike).
pub trait MappingHook: Send + Sync {
    /// What the API server said about binding `mapping`'s roles; [`Bindable::Unknown`] when it
    /// has not been asked yet.
    fn bindable(&self, mapping: &NamedMapping) -> Bindable;
}

/// The real re-validation: [`grant_holds`], the same decision the token refresh makes, with the
/// device's capability values and the GrantMappings as they are now. The grant holds while the
/// caller holds the role, the mapping is ready, and it still covers every binding the session
/// has (a mapping that grew is fine; one that shrank, was deleted or is not ready is not).
#[derive(Debug, Clone)]
pub struct PolicyGrantCheck {
    cluster: ClusterName,
    settings: PolicySettings,
}

impl PolicyGrantCheck {
    /// A check for this cluster with the server's policy settings.
    pub fn new(cluster: ClusterName, settings: PolicySettings) -> Self {
        Self { cluster, settings }
    }
}

impl GrantCheck for PolicyGrantCheck {
    fn check(&self, query: &GrantQuery<'_>) -> Verdict {
        let grants = ParsedGrants::from_identity(query.current);
        let context = PolicyContext {
            identity: query.current,
            grants: &grants,
            mappings: query.mappings,
            cluster: &self.cluster,
            settings: &self.settings,
        };
        let held = HeldGrant {
            role: &query.grant.role,
            cluster_roles: &query.grant.cluster_roles,
            namespaced: &query.grant.namespaced,
        };
        match grant_holds(&context, &held, query.now) {
            GrantVerdict::Holds => Verdict::Holds,
            GrantVerdict::Withdrawn { reason, .. } => Verdict::Withdrawn(reason),
            GrantVerdict::Undecided(why) => Verdict::Unknown(why),
        }
    }
}

/// The outcome of re-validating one live session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The grant still holds.
    Holds,
    /// The grant no longer holds: revoke the session. Says why.
    Withdrawn(String),
    /// Could not tell (tailscaled unavailable, …): keep the session and try again later.
    Unknown(String),
}

/// Judges a live session from a whois answer for its recorded tailnet address. A device that left
/// the tailnet, an address now used by another device or another user, and a grant that no longer
/// holds all withdraw the session; a whois that failed for other reasons decides nothing.
pub fn judge(
    grant: &SessionGrant,
    whois: &Result<Identity, IdentityError>,
    mappings: &[MappingView],
    now: Timestamp,
    check: &dyn GrantCheck,
) -> Verdict {
    let current = match whois {
        Ok(identity) => identity,
        Err(IdentityError::NotInTailnet(target)) => {
            return Verdict::Withdrawn(format!("the device's address {target} left the tailnet"));
        }
        Err(other) => return Verdict::Unknown(other.to_string()),
    };
    if current.node.stable_id != grant.node {
        return Verdict::Withdrawn(format!(
            "the device's address now belongs to another device ({})",
            current.node.stable_id
        ));
    }
    if current.user.id != grant.user {
        return Verdict::Withdrawn("the device now belongs to another user".to_owned());
    }
    let query = GrantQuery {
        grant,
        current,
        mappings,
        now,
    };
    check.check(&query)
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr};

    use super::*;
    use crate::domain::{LoginName, NodeInfo, UserInfo};
    use crate::identity::WhoisTarget;

    fn grant() -> SessionGrant {
        SessionGrant {
            session: SessionName::new("tka-alice-x").unwrap(),
            node: NodeId::new("n1").unwrap(),
            user: UserId(1),
            role: RoleName::new("sre").unwrap(),
            cluster_roles: vec!["view".into()],
            namespaced: vec![],
        }
    }

    fn identity(node: &str, user: i64, roles: &[&str]) -> Identity {
        Identity {
            user: UserInfo {
                id: UserId(user),
                login_name: LoginName::new("alice@example.com").unwrap(),
                display_name: String::new(),
            },
            node: NodeInfo {
                stable_id: NodeId::new(node).unwrap(),
                name: "laptop".into(),
                addresses: vec![IpAddr::V4(Ipv4Addr::new(100, 64, 0, 1))],
                tags: vec![],
            },
            groups: vec![],
            capabilities: roles
                .iter()
                .map(|r| serde_json::json!({ "role": r }))
                .collect(),
            compat_capabilities: vec![],
        }
    }

    fn has_role(q: &GrantQuery<'_>) -> Verdict {
        let role = q.grant.role.as_str();
        if q.current.capabilities.iter().any(|v| v["role"] == role) {
            Verdict::Holds
        } else {
            Verdict::Withdrawn(format!("no grant for role '{role}'"))
        }
    }

    fn now() -> Timestamp {
        "2026-01-01T00:00:00Z".parse().unwrap()
    }

    #[test]
    fn a_grant_that_still_holds_keeps_the_session() {
        let v = judge(
            &grant(),
            &Ok(identity("n1", 1, &["sre"])),
            &[],
            now(),
            &has_role,
        );
        assert_eq!(v, Verdict::Holds);
    }

    #[test]
    fn a_removed_grant_withdraws_the_session() {
        let v = judge(
            &grant(),
            &Ok(identity("n1", 1, &["dev"])),
            &[],
            now(),
            &has_role,
        );
        assert_eq!(v, Verdict::Withdrawn("no grant for role 'sre'".into()));
    }

    #[test]
    fn another_device_or_user_at_the_address_withdraws_the_session() {
        let other_node = judge(
            &grant(),
            &Ok(identity("n2", 1, &["sre"])),
            &[],
            now(),
            &has_role,
        );
        assert!(matches!(other_node, Verdict::Withdrawn(_)));
        let other_user = judge(
            &grant(),
            &Ok(identity("n1", 2, &["sre"])),
            &[],
            now(),
            &has_role,
        );
        assert!(matches!(other_user, Verdict::Withdrawn(_)));
    }

    #[test]
    fn leaving_the_tailnet_withdraws_but_an_unavailable_daemon_decides_nothing() {
        let target = WhoisTarget::Address(IpAddr::V4(Ipv4Addr::new(100, 64, 0, 1)));
        let gone = judge(
            &grant(),
            &Err(IdentityError::NotInTailnet(target)),
            &[],
            now(),
            &has_role,
        );
        assert!(matches!(gone, Verdict::Withdrawn(_)));
        let down = judge(
            &grant(),
            &Err(IdentityError::DaemonUnavailable("503".into())),
            &[],
            now(),
            &has_role,
        );
        assert!(matches!(down, Verdict::Unknown(_)));
    }

    #[test]
    fn requeue_takes_the_earliest_time() {
        let t0: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        let mut report = ReconcileReport::default();
        report.requeue_at(t0 + SignedDuration::from_mins(10));
        report.requeue_at(t0 + SignedDuration::from_mins(5));
        report.requeue_at(t0 + SignedDuration::from_mins(7));
        assert_eq!(report.next_requeue, Some(t0 + SignedDuration::from_mins(5)));
    }

    fn policy_check() -> PolicyGrantCheck {
        PolicyGrantCheck::new(
            ClusterName::new("prod").unwrap(),
            PolicySettings::new(
                "tka-system",
                crate::Ttl::parse("1h").unwrap(),
                crate::Ttl::parse("8h").unwrap(),
            ),
        )
    }

    fn sre_mapping(cluster_roles: &[&str]) -> MappingView {
        MappingView::new(
            RoleName::new("sre").unwrap(),
            crate::policy::GrantMappingSpec {
                cluster_roles: cluster_roles.iter().map(|r| (*r).to_owned()).collect(),
                ..crate::policy::GrantMappingSpec::default()
            },
        )
    }

    fn policy_verdict(
        check: &PolicyGrantCheck,
        roles: &[&str],
        mapping: &[MappingView],
    ) -> Verdict {
        judge(
            &grant(),
            &Ok(identity("n1", 1, roles)),
            mapping,
            now(),
            check,
        )
    }

    #[test]
    fn policy_check_holds_while_grant_and_mapping_cover_the_session() {
        let check = policy_check();
        assert_eq!(
            policy_verdict(&check, &["sre"], &[sre_mapping(&["view"])]),
            Verdict::Holds
        );
        // A mapping that grew still covers the session.
        assert_eq!(
            policy_verdict(&check, &["sre"], &[sre_mapping(&["view", "edit"])]),
            Verdict::Holds
        );
    }

    #[test]
    fn policy_check_withdraws_when_grant_mapping_or_bindings_go() {
        let check = policy_check();
        let Verdict::Withdrawn(no_grant) =
            policy_verdict(&check, &["dev"], &[sre_mapping(&["view"])])
        else {
            panic!("a session without its grant must be withdrawn");
        };
        assert!(no_grant.contains("sre"), "{no_grant}");
        assert!(matches!(
            policy_verdict(&check, &["sre"], &[]),
            Verdict::Withdrawn(_)
        ));
        let Verdict::Withdrawn(shrunk) =
            policy_verdict(&check, &["sre"], &[sre_mapping(&["edit"])])
        else {
            panic!("a mapping that no longer grants view must withdraw the session");
        };
        assert!(shrunk.contains("view cluster-wide"), "{shrunk}");
        // A value for another cluster does not hold here.
        let mut elsewhere = identity("n1", 1, &[]);
        elsewhere.capabilities = vec![serde_json::json!({"role": "sre", "clusters": ["staging"]})];
        assert!(matches!(
            judge(
                &grant(),
                &Ok(elsewhere),
                &[sre_mapping(&["view"])],
                now(),
                &check
            ),
            Verdict::Withdrawn(_)
        ));
    }

    #[test]
    fn policy_check_revokes_on_a_mapping_not_ready_and_waits_on_an_unchecked_one() {
        let check = policy_check();
        let not_ready = sre_mapping(&["view"]).unusable("may not bind view");
        assert!(matches!(
            policy_verdict(&check, &["sre"], &[not_ready]),
            Verdict::Withdrawn(_)
        ));
        let unchecked = sre_mapping(&["view"]).with_state(crate::policy::MappingState::Unchecked(
            "not asked yet".into(),
        ));
        assert_eq!(
            policy_verdict(&check, &["sre"], std::slice::from_ref(&unchecked)),
            Verdict::Unknown("not asked yet".into())
        );
        // Unknown readiness never hides a loss that the spec shows, nor a withdrawn grant.
        let shrunk_unchecked = sre_mapping(&["edit"]).with_state(
            crate::policy::MappingState::Unchecked("not asked yet".into()),
        );
        assert!(matches!(
            policy_verdict(&check, &["sre"], &[shrunk_unchecked]),
            Verdict::Withdrawn(_)
        ));
        assert!(matches!(
            policy_verdict(&check, &["dev"], &[unchecked]),
            Verdict::Withdrawn(_)
        ));
    }

    /// The shared table (`policy::cases`), through the reconciler's decision: `judge` with the
    /// real `PolicyGrantCheck` on views built as the reconciler builds them.
    #[test]
    fn the_reconciler_revokes_exactly_the_sessions_the_table_revokes() {
        let check = policy_check();
        let (cluster_roles, namespaced) = crate::policy::cases::case_session_bindings();
        let grant = SessionGrant {
            role: RoleName::new(crate::policy::cases::CASE_ROLE).unwrap(),
            cluster_roles,
            namespaced,
            ..grant()
        };
        for case in crate::policy::cases::grant_cases() {
            let verdict = judge(
                &grant,
                &Ok(identity("n1", 1, &[crate::policy::cases::CASE_ROLE])),
                &case.views(),
                now(),
                &check,
            );
            if case.holds {
                assert_eq!(verdict, Verdict::Holds, "{}", case.name);
            } else {
                assert!(
                    matches!(verdict, Verdict::Withdrawn(_)),
                    "{}: {verdict:?}",
                    case.name
                );
            }
        }
    }
}
