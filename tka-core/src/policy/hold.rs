//! Whether a live session's grant still holds: one rule for the token refresh, the reconciler's
//! re-validation and the issuer's "same grant" test. A session holds while the caller still
//! holds the role, its GrantMapping is usable (as [`MappingView::state`] says, the same view
//! everywhere), and what the mapping grants now covers every binding the session has. A mapping
//! that grew still holds; one that shrank, was deleted, or is not ready does not. When the
//! mapping's state is not known yet the answer is [`GrantVerdict::Undecided`]: nothing is
//! refreshed and nothing is revoked until it is. Pure.

use std::collections::BTreeSet;

use jiff::Timestamp;

use super::NamespacedBinding;
use super::denial::{Denial, DenialKind};
use super::mapping::{MappingState, MappingView};
use super::resolve::{PolicyContext, ResolveRequest, resolve};
use crate::domain::RoleName;

/// What a live session has: its role and the bindings it was given.
#[derive(Debug, Clone, Copy)]
pub struct HeldGrant<'a> {
    /// The role (GrantMapping name).
    pub role: &'a RoleName,
    /// ClusterRoles bound cluster-wide.
    pub cluster_roles: &'a [String],
    /// ClusterRoles bound per namespace.
    pub namespaced: &'a [NamespacedBinding],
}

/// How what a role grants now compares with what a session has.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BindingChange {
    /// Exactly the same bindings (order and duplicates aside).
    Same,
    /// Every binding the session has, and more.
    Grew,
    /// Some bindings the session has are no longer granted; in words (`edit in team-a`, `view
    /// cluster-wide`).
    Lost(Vec<String>),
}

impl BindingChange {
    /// Whether every binding the session has is still granted.
    pub fn covers(&self) -> bool {
        !matches!(self, Self::Lost(_))
    }
}

/// Compares what a session has with what is granted now.
///
/// ```
/// use tka_core::policy::{BindingChange, NamespacedBinding, compare_bindings};
///
/// let edit_a = NamespacedBinding { cluster_role: "edit".into(), namespace: "team-a".into() };
/// let view = vec!["view".to_owned()];
/// assert_eq!(compare_bindings(&view, &[], &view, &[]), BindingChange::Same);
/// assert_eq!(compare_bindings(&view, &[], &view, &[edit_a.clone()]), BindingChange::Grew);
/// assert_eq!(
///     compare_bindings(&view, &[edit_a], &view, &[]),
///     BindingChange::Lost(vec!["edit in team-a".into()])
/// );
/// ```
pub fn compare_bindings(
    had_cluster_roles: &[String],
    had_namespaced: &[NamespacedBinding],
    now_cluster_roles: &[String],
    now_namespaced: &[NamespacedBinding],
) -> BindingChange {
    let had_c: BTreeSet<&String> = had_cluster_roles.iter().collect();
    let now_c: BTreeSet<&String> = now_cluster_roles.iter().collect();
    let had_n: BTreeSet<&NamespacedBinding> = had_namespaced.iter().collect();
    let now_n: BTreeSet<&NamespacedBinding> = now_namespaced.iter().collect();
    let lost: Vec<String> = had_c
        .difference(&now_c)
        .map(|r| format!("{r} cluster-wide"))
        .chain(
            had_n
                .difference(&now_n)
                .map(|b| format!("{} in {}", b.cluster_role, b.namespace)),
        )
        .collect();
    if !lost.is_empty() {
        BindingChange::Lost(lost)
    } else if had_c == now_c && had_n == now_n {
        BindingChange::Same
    } else {
        BindingChange::Grew
    }
}

/// Whether a live session's grant holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GrantVerdict {
    /// It holds: the session may go on (and get fresh tokens).
    Holds,
    /// It does not: revoke the session.
    Withdrawn {
        /// Why, in words naming what is missing.
        reason: String,
        /// Policy's refusal, when policy refused the role outright.
        denial: Option<Box<Denial>>,
    },
    /// Cannot tell yet (the mapping's state is not known): neither refresh nor revoke.
    Undecided(String),
}

/// Decides whether `held` still holds for the caller in `ctx` (its identity and capability
/// values as whois reports them now, the mappings as the server sees them now).
pub fn grant_holds(ctx: &PolicyContext<'_>, held: &HeldGrant<'_>, now: Timestamp) -> GrantVerdict {
    let ask = |mappings: &[MappingView]| {
        resolve(&ResolveRequest {
            context: PolicyContext { mappings, ..*ctx },
            role: Some(held.role),
            ttl: None,
            now,
        })
    };
    let covered = |decision: &super::Decision| {
        compare_bindings(
            held.cluster_roles,
            held.namespaced,
            &decision.cluster_roles,
            &decision.namespaced,
        )
    };
    let withdrawn_by = |lost: Vec<String>| GrantVerdict::Withdrawn {
        reason: format!(
            "GrantMapping '{}' no longer grants {}",
            held.role,
            lost.join(", ")
        ),
        denial: None,
    };
    match ask(ctx.mappings) {
        Ok(decision) => match covered(&decision) {
            BindingChange::Lost(lost) => withdrawn_by(lost),
            BindingChange::Same | BindingChange::Grew => GrantVerdict::Holds,
        },
        Err(denial) => {
            let unchecked = ctx.mappings.iter().find_map(|m| match &m.state {
                MappingState::Unchecked(why) if &m.name == held.role => Some(why.clone()),
                _ => None,
            });
            match unchecked {
                Some(why) if denial.kind == DenialKind::MappingUnusable => {
                    // Everything else about the grant holds; only the mapping's state is unknown.
                    // A spec that no longer covers the session withdraws it all the same.
                    let assumed: Vec<MappingView> = ctx
                        .mappings
                        .iter()
                        .map(|m| {
                            if &m.name == held.role {
                                m.clone().with_state(MappingState::Ready)
                            } else {
                                m.clone()
                            }
                        })
                        .collect();
                    match ask(&assumed).map(|d| covered(&d)) {
                        Ok(BindingChange::Lost(lost)) => withdrawn_by(lost),
                        _ => GrantVerdict::Undecided(why),
                    }
                }
                _ => GrantVerdict::Withdrawn {
                    reason: denial.message(),
                    denial: Some(Box::new(denial)),
                },
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr};

    use super::*;
    use crate::Ttl;
    use crate::capability::ParsedGrants;
    use crate::domain::{ClusterName, Identity, LoginName, NodeId, NodeInfo, UserId, UserInfo};
    use crate::policy::PolicySettings;
    use crate::policy::cases::{CASE_ROLE, case_session_bindings, grant_cases};

    fn caller(roles: &[&str]) -> Identity {
        Identity {
            user: UserInfo {
                id: UserId(1),
                login_name: LoginName::new("alice@example.com").unwrap(),
                display_name: String::new(),
            },
            node: NodeInfo {
                stable_id: NodeId::new("n1").unwrap(),
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

    /// The shared table through the function itself.
    #[test]
    fn a_session_holds_exactly_while_the_grant_covers_what_it_has() {
        let identity = caller(&[CASE_ROLE]);
        let grants = ParsedGrants::from_identity(&identity);
        let cluster = ClusterName::new("prod").unwrap();
        let settings = PolicySettings::new(
            "tka-system",
            Ttl::parse("1h").unwrap(),
            Ttl::parse("8h").unwrap(),
        );
        let (cluster_roles, namespaced) = case_session_bindings();
        let now: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        for case in grant_cases() {
            let views = case.views();
            let role = case.role();
            let verdict = grant_holds(
                &PolicyContext {
                    identity: &identity,
                    grants: &grants,
                    mappings: &views,
                    cluster: &cluster,
                    settings: &settings,
                },
                &HeldGrant {
                    role: &role,
                    cluster_roles: &cluster_roles,
                    namespaced: &namespaced,
                },
                now,
            );
            match (&verdict, case.holds) {
                (GrantVerdict::Holds, true) => {}
                (GrantVerdict::Withdrawn { reason, .. }, false) => {
                    assert!(reason.contains(CASE_ROLE), "{}: {reason}", case.name);
                }
                _ => panic!("{}: got {verdict:?}", case.name),
            }
        }
    }

    #[test]
    fn binding_changes_ignore_order_and_duplicates() {
        let b = |role: &str, ns: &str| NamespacedBinding {
            cluster_role: role.into(),
            namespace: ns.into(),
        };
        let roles = |r: &[&str]| r.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        assert_eq!(
            compare_bindings(
                &roles(&["view", "edit"]),
                &[b("edit", "a"), b("view", "b")],
                &roles(&["edit", "view", "view"]),
                &[b("view", "b"), b("edit", "a")],
            ),
            BindingChange::Same
        );
        let lost = compare_bindings(&roles(&["view"]), &[b("edit", "a")], &[], &[b("edit", "b")]);
        assert_eq!(
            lost,
            BindingChange::Lost(vec!["view cluster-wide".into(), "edit in a".into()])
        );
        assert!(!lost.covers());
        assert!(compare_bindings(&[], &[], &roles(&["view"]), &[]).covers());
    }
}
