//! Policy resolution: capability grants × GrantMappings → a [`Decision`] or a [`Denial`].
//! A pure function of its inputs (the caller passes "now"); the order and duplication of
//! capability values and of mappings never change the result. No I/O, no clock reads.

use std::collections::{BTreeMap, BTreeSet};

use jiff::Timestamp;

use super::denial::{AvailableRole, Denial, DenialKind, RoleListing, RoleProblem, UnavailableRole};
use super::mapping::{MappingView, subjects_allow, validate_mapping};
use super::{Decision, NamespacedBinding, TtlClamp};
use crate::capability::{CapabilitySchema, ParsedGrants};
use crate::domain::{ClusterName, Identity, RoleName, Ttl};
use crate::identity::DEFAULT_CAPABILITY;

/// Namespaces a GrantMapping may never bind into, besides the server's own.
pub const DEFAULT_DENIED_NAMESPACES: &[&str] = &["kube-system", "kube-public", "kube-node-lease"];

/// The server's side of the policy: bounds, protected namespaces, and the capability names (for
/// messages).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct PolicySettings {
    /// The capability name whose values are read with the project schema.
    pub capability_name: String,
    /// The compatibility capability name, when configured.
    pub compat_capability_name: Option<String>,
    /// The TTL when neither the request nor the mapping names one.
    pub default_ttl: Ttl,
    /// No session is ever longer than this.
    pub max_ttl: Ttl,
    /// Namespaces no mapping may bind into: the server's own and the deny list.
    pub forbidden_namespaces: BTreeSet<String>,
    /// Whether `clusterRoles` may name ClusterRoles that grant more than reading
    /// (`--allow-cluster-wide-write`; default `false`). Such a binding reaches every namespace,
    /// the server's own included, so it makes a tka credential as strong as the server.
    pub allow_cluster_wide_write: bool,
}

impl PolicySettings {
    /// Settings for a server running in `server_namespace`: the default capability name, and
    /// `server_namespace` plus [`DEFAULT_DENIED_NAMESPACES`] protected. A `default_ttl` above
    /// `max_ttl` is lowered to it at resolution.
    pub fn new(server_namespace: impl Into<String>, default_ttl: Ttl, max_ttl: Ttl) -> Self {
        let mut forbidden_namespaces: BTreeSet<String> = DEFAULT_DENIED_NAMESPACES
            .iter()
            .map(|s| (*s).to_owned())
            .collect();
        forbidden_namespaces.insert(server_namespace.into());
        Self {
            capability_name: DEFAULT_CAPABILITY.to_owned(),
            compat_capability_name: None,
            default_ttl,
            max_ttl,
            forbidden_namespaces,
            allow_cluster_wide_write: false,
        }
    }

    /// Lets `clusterRoles` name ClusterRoles that grant more than reading. See
    /// [`PolicySettings::allow_cluster_wide_write`].
    #[must_use]
    pub fn allowing_cluster_wide_write(mut self, allow: bool) -> Self {
        self.allow_cluster_wide_write = allow;
        self
    }

    /// Replaces the capability names.
    #[must_use]
    pub fn with_capability_names(
        mut self,
        primary: impl Into<String>,
        compat: Option<String>,
    ) -> Self {
        self.capability_name = primary.into();
        self.compat_capability_name = compat;
        self
    }

    /// Adds namespaces to the deny list (the server's own namespace and the defaults stay).
    #[must_use]
    pub fn deny_namespaces<I, S>(mut self, namespaces: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.forbidden_namespaces
            .extend(namespaces.into_iter().map(Into::into));
        self
    }

    fn capability_names(&self) -> Vec<String> {
        let mut names = vec![self.capability_name.clone()];
        names.extend(self.compat_capability_name.clone());
        names
    }
}

/// Everything policy looks at besides the request itself.
#[derive(Debug, Clone, Copy)]
pub struct PolicyContext<'a> {
    /// The caller.
    pub identity: &'a Identity,
    /// The caller's capability values, parsed (see [`ParsedGrants::from_identity`]).
    pub grants: &'a ParsedGrants,
    /// The GrantMappings of this cluster, in any order.
    pub mappings: &'a [MappingView],
    /// This cluster's name.
    pub cluster: &'a ClusterName,
    /// The server's bounds.
    pub settings: &'a PolicySettings,
}

/// A requested TTL, parsed or as the caller wrote it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TtlRequest<'a> {
    /// Already a valid TTL.
    Ttl(Ttl),
    /// Text to parse (`90m`, `8h`, …); `0s`, negatives and garbage are a
    /// [`DenialKind::InvalidTtl`].
    Text(&'a str),
}

impl From<Ttl> for TtlRequest<'_> {
    fn from(ttl: Ttl) -> Self {
        Self::Ttl(ttl)
    }
}

impl<'a> From<&'a str> for TtlRequest<'a> {
    fn from(text: &'a str) -> Self {
        Self::Text(text)
    }
}

/// A login's question to policy.
#[derive(Debug, Clone, Copy)]
pub struct ResolveRequest<'a> {
    /// Who, with what grants, against which mappings, on which cluster.
    pub context: PolicyContext<'a>,
    /// The role asked for (`--role`), if any.
    pub role: Option<&'a RoleName>,
    /// The TTL asked for (`--ttl`), if any.
    pub ttl: Option<TtlRequest<'a>>,
    /// The current time; the session ends at `now + ttl`.
    pub now: Timestamp,
}

/// A grant's max TTL and the schema it came from (which decides its name in messages).
type GrantMax = (Ttl, CapabilitySchema);

/// What policy knows about one role the caller holds on this cluster.
struct Held<'a> {
    priority: i64,
    /// The smallest max TTL among the grants of this role here, with the schema it came from.
    grant_max: Option<GrantMax>,
    outcome: Result<Usable<'a>, RoleProblem>,
}

struct Usable<'a> {
    mapping: &'a MappingView,
    default_ttl: Option<Ttl>,
    max_ttl: Option<Ttl>,
}

fn evaluate<'a>(ctx: &PolicyContext<'a>) -> BTreeMap<&'a RoleName, Held<'a>> {
    // Per role: the highest priority and the smallest max TTL among the values granting it here.
    let mut held: BTreeMap<&'a RoleName, (i64, Option<GrantMax>)> = BTreeMap::new();
    for grant in ctx
        .grants
        .grants
        .iter()
        .filter(|g| g.applies_to(ctx.cluster))
    {
        let entry = held.entry(&grant.role).or_insert((grant.priority, None));
        entry.0 = entry.0.max(grant.priority);
        if let Some(max) = grant.max_ttl {
            let candidate = (max, grant.schema);
            entry.1 = Some(entry.1.map_or(candidate, |current| current.min(candidate)));
        }
    }

    let mut by_name: BTreeMap<&RoleName, Vec<&'a MappingView>> = BTreeMap::new();
    for mapping in ctx.mappings {
        by_name.entry(&mapping.name).or_default().push(mapping);
    }

    held.into_iter()
        .map(|(role, (priority, grant_max))| {
            let outcome = judge(ctx, role, by_name.get(role).map(Vec::as_slice));
            (
                role,
                Held {
                    priority,
                    grant_max,
                    outcome,
                },
            )
        })
        .collect()
}

fn judge<'a>(
    ctx: &PolicyContext<'a>,
    role: &RoleName,
    mappings: Option<&[&'a MappingView]>,
) -> Result<Usable<'a>, RoleProblem> {
    let mapping = match mappings {
        None | Some([]) => return Err(RoleProblem::NoMapping),
        Some([one]) => *one,
        Some(_) => {
            return Err(RoleProblem::Unusable {
                reason: format!("several GrantMappings are named '{role}'"),
            });
        }
    };
    if !subjects_allow(&mapping.spec, ctx.identity) {
        return Err(RoleProblem::SubjectsDoNotMatch);
    }
    let problems = validate_mapping(
        mapping.name.as_str(),
        &mapping.spec,
        &ctx.settings.forbidden_namespaces,
    );
    let forbidden: Vec<String> = problems
        .iter()
        .filter_map(|p| match p {
            super::MappingProblem::ForbiddenNamespace { namespace } => Some(namespace.clone()),
            _ => None,
        })
        .collect();
    if !forbidden.is_empty() {
        return Err(RoleProblem::ForbiddenNamespace {
            namespaces: forbidden,
        });
    }
    if !problems.is_empty() {
        return Err(RoleProblem::InvalidMapping { problems });
    }
    if let Some(reason) = mapping.state.refusal() {
        return Err(RoleProblem::Unusable {
            reason: reason.to_owned(),
        });
    }
    // validate_mapping has accepted both TTL strings, so these parse.
    let parse = |s: &Option<String>| s.as_deref().and_then(|s| Ttl::parse(s).ok());
    Ok(Usable {
        mapping,
        default_ttl: parse(&mapping.spec.default_ttl),
        max_ttl: parse(&mapping.spec.max_ttl),
    })
}

/// The effective upper bound for a role, and the words for every bound that reaches it.
fn limit(
    role: &RoleName,
    held: &Held<'_>,
    usable: &Usable<'_>,
    settings: &PolicySettings,
) -> (Ttl, String) {
    let bounds = [
        held.grant_max.map(|(ttl, schema)| {
            (
                ttl,
                format!(
                    "the {} of your tailnet grant for role '{role}'",
                    schema.max_ttl_key()
                ),
            )
        }),
        usable
            .max_ttl
            .map(|ttl| (ttl, format!("the maxTTL of GrantMapping '{role}'"))),
        Some((
            settings.max_ttl,
            "the server's maximum session length".to_owned(),
        )),
    ];
    let smallest = bounds
        .iter()
        .flatten()
        .map(|(ttl, _)| *ttl)
        .min()
        .unwrap_or(settings.max_ttl);
    let words: Vec<&str> = bounds
        .iter()
        .flatten()
        .filter(|(ttl, _)| *ttl == smallest)
        .map(|(_, words)| words.as_str())
        .collect();
    (smallest, words.join(" and "))
}

fn listing(ctx: &PolicyContext<'_>, evaluated: &BTreeMap<&RoleName, Held<'_>>) -> RoleListing {
    let mut roles: Vec<AvailableRole> = Vec::new();
    let mut unavailable = Vec::new();
    for (role, held) in evaluated {
        match &held.outcome {
            Ok(usable) => {
                let (max_ttl, _) = limit(role, held, usable, ctx.settings);
                let default_ttl = usable
                    .default_ttl
                    .unwrap_or(ctx.settings.default_ttl)
                    .min(max_ttl);
                roles.push(AvailableRole {
                    role: (*role).clone(),
                    priority: held.priority,
                    default_ttl,
                    max_ttl,
                    default: false,
                });
            }
            Err(problem) => unavailable.push(UnavailableRole {
                role: (*role).clone(),
                problem: problem.clone(),
            }),
        }
    }
    // Highest priority first, then by name: the first one is what a login without a role gets.
    roles.sort_by(|a, b| {
        b.priority
            .cmp(&a.priority)
            .then_with(|| a.role.cmp(&b.role))
    });
    if let Some(first) = roles.first_mut() {
        first.default = true;
    }
    let mut skipped = ctx.grants.skipped.clone();
    skipped.sort_by_key(|s| (s.schema, s.index));
    RoleListing {
        cluster: ctx.cluster.clone(),
        roles,
        unavailable,
        skipped,
    }
}

/// The roles the caller could get on this cluster (with their effective TTLs), the ones it holds
/// but cannot use (with why), and the skipped capability values: the answer for
/// `GET /api/v1/cluster` and `tka list`.
pub fn available_roles(ctx: &PolicyContext<'_>) -> RoleListing {
    listing(ctx, &evaluate(ctx))
}

/// Decides what a login gets: the role (the requested one, or the best-priority usable one, ties
/// broken by name), the bindings of its GrantMapping, and the TTL (requested, else the mapping's
/// `defaultTTL`, else the server default; clamped to the smallest of the grants' `maxTTL`, the
/// mapping's `maxTTL` and the server maximum). Anything else is a [`Denial`] that says why.
///
/// A default TTL above the limit is lowered silently: [`Decision::clamped`] reports only a
/// *requested* TTL that was shortened.
pub fn resolve(request: &ResolveRequest<'_>) -> Result<Decision, Denial> {
    let ctx = &request.context;
    let denial = |kind: DenialKind, detail: Option<String>, listing: RoleListing| Denial {
        kind,
        requested_role: request.role.cloned(),
        detail,
        caller: ctx.identity.describe(),
        capability_names: ctx.settings.capability_names(),
        listing: Box::new(listing),
    };

    let requested_ttl = match request.ttl {
        None => None,
        Some(TtlRequest::Ttl(ttl)) => Some(ttl),
        Some(TtlRequest::Text(text)) => match Ttl::parse(text) {
            Ok(ttl) => Some(ttl),
            Err(e) => {
                return Err(denial(
                    DenialKind::InvalidTtl,
                    Some(e.to_string()),
                    available_roles(ctx),
                ));
            }
        },
    };

    let evaluated = evaluate(ctx);
    let chosen = match request.role {
        Some(role) => match evaluated.get_key_value(role) {
            Some((role, held)) => match &held.outcome {
                Ok(usable) => (*role, held, usable),
                Err(problem) => {
                    return Err(denial(
                        problem.denial_kind(),
                        None,
                        listing(ctx, &evaluated),
                    ));
                }
            },
            None => {
                let kind = if evaluated.is_empty() {
                    DenialKind::NoGrants
                } else {
                    DenialKind::NoGrantForRole
                };
                let elsewhere = granted_elsewhere(ctx, role);
                return Err(denial(kind, elsewhere, listing(ctx, &evaluated)));
            }
        },
        None => {
            let best = evaluated
                .iter()
                .filter_map(|(role, held)| held.outcome.as_ref().ok().map(|u| (*role, held, u)))
                // Highest priority, then the smallest name (BTreeMap order).
                .reduce(|best, next| {
                    if next.1.priority > best.1.priority {
                        next
                    } else {
                        best
                    }
                });
            match best {
                Some(best) => best,
                None => {
                    let kind = if evaluated.is_empty() {
                        DenialKind::NoGrants
                    } else {
                        DenialKind::NoUsableRole
                    };
                    return Err(denial(kind, None, listing(ctx, &evaluated)));
                }
            }
        }
    };

    let (role, held, usable) = chosen;
    let (max, bound) = limit(role, held, usable, ctx.settings);
    let wanted = requested_ttl
        .or(usable.default_ttl)
        .unwrap_or(ctx.settings.default_ttl);
    let ttl = wanted.min(max);
    let clamped = requested_ttl
        .filter(|requested| *requested > max)
        .map(|requested| TtlClamp {
            requested,
            granted: max,
            bound,
        });

    let spec = &usable.mapping.spec;
    let cluster_roles: Vec<String> = spec
        .cluster_roles
        .iter()
        .cloned()
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let namespaced: Vec<NamespacedBinding> = spec
        .namespaced
        .iter()
        .flat_map(|grant| {
            grant.namespaces.iter().map(|namespace| NamespacedBinding {
                cluster_role: grant.cluster_role.clone(),
                namespace: namespace.clone(),
            })
        })
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();

    Ok(Decision {
        role: role.clone(),
        cluster_roles,
        namespaced,
        ttl,
        // Adding a plain duration only fails on overflow, far beyond any session's end.
        expires_at: request
            .now
            .checked_add(ttl.as_duration())
            .unwrap_or(Timestamp::MAX),
        clamped,
    })
}

/// "your grant for role 'x' applies only to clusters matching …", when the caller holds the role
/// for other clusters.
fn granted_elsewhere(ctx: &PolicyContext<'_>, role: &RoleName) -> Option<String> {
    let patterns: BTreeSet<String> = ctx
        .grants
        .grants
        .iter()
        .filter(|g| &g.role == role && !g.applies_to(ctx.cluster))
        .map(|g| g.clusters.to_string())
        .collect();
    if patterns.is_empty() {
        return None;
    }
    Some(format!(
        "your grant for role '{role}' applies only to clusters matching {}",
        patterns.into_iter().collect::<Vec<_>>().join(", ")
    ))
}
