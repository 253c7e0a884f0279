//! The tka SDK: who is calling (a Tailscale identity), what they may do (grant policy), and the
//! short-lived Kubernetes credentials that follow from it.
//!
//! # How a login is decided
//!
//! A tka server answers one question per login, in four steps, each with its own module:
//!
//! 1. **Who is calling.** An [`IdentityProvider`] turns the connection's remote address into an
//!    [`Identity`]: the user, the node (its stable ID is the key of everything), its tags, and
//!    the capability values the tailnet policy file grants it at the server's node
//!    ([`identity`]; the real provider asks tailscaled's LocalAPI).
//! 2. **What the tailnet grants.** [`ParsedGrants`] reads those values as role grants, failing
//!    closed: a value with a typo is skipped and reported, never guessed at ([`capability`]).
//! 3. **What the cluster makes of it.** [`resolve`] judges the grants against the cluster's
//!    GrantMappings ([`GrantMappingSpec`], seen as [`MappingView`]s) and the server's
//!    [`PolicySettings`]: a [`Decision`] (role, bindings, TTL) or a [`Denial`] that says why, in
//!    words a user can act on. It is a pure function ([`policy`]).
//! 4. **The credential.** A [`issuer::CredentialIssuer`] makes the session's ServiceAccount,
//!    bindings and token (the real one, with feature `kubernetes`, in a cluster; a
//!    [`reconciler::Reconciler`] removes what expired or lost its grant).
//!
//! Offline, [`tailnet_policy`] computes step 1's capability values from the policy file itself,
//! and [`policy::explain`] runs steps 2 and 3 for everyone it names (what `tka policy explain`
//! prints).
//!
//! # Example
//!
//! The policy alone, with no tailnet and no cluster: a person's grants, the cluster's mappings,
//! and the decision a login would get.
//!
//! ```
//! use tka_core::policy::{NamespacedGrant, ResolveRequest};
//! use tka_core::{
//!     ClusterName, GrantMappingSpec, Identity, LoginName, MappingView, NodeId, NodeInfo,
//!     ParsedGrants, PolicyContext, PolicySettings, RoleName, Ttl, UserId, UserInfo, resolve,
//! };
//!
//! // What whois reports for Alice's laptop: two grants from the tailnet policy file.
//! let alice = Identity {
//!     user: UserInfo {
//!         id: UserId(7),
//!         login_name: LoginName::new("alice@example.com")?,
//!         display_name: "Alice".into(),
//!     },
//!     node: NodeInfo {
//!         stable_id: NodeId::new("nLAPTOP")?,
//!         name: "alice-laptop.example.ts.net".into(),
//!         addresses: vec![],
//!         tags: vec![],
//!     },
//!     groups: vec![],
//!     capabilities: vec![
//!         serde_json::json!({"role": "read-only"}),
//!         serde_json::json!({"role": "sre", "clusters": ["prod-*"], "maxTTL": "4h", "priority": 10}),
//!     ],
//!     compat_capabilities: vec![],
//! };
//! let grants = ParsedGrants::from_identity(&alice);
//! assert!(grants.skipped.is_empty());
//!
//! // The cluster's half: what the two roles mean on this cluster.
//! let mappings = [
//!     MappingView::new(
//!         RoleName::new("read-only")?,
//!         GrantMappingSpec { cluster_roles: vec!["view".into()], ..Default::default() },
//!     ),
//!     MappingView::new(
//!         RoleName::new("sre")?,
//!         GrantMappingSpec {
//!             cluster_roles: vec!["view".into()],
//!             namespaced: vec![NamespacedGrant {
//!                 cluster_role: "edit".into(),
//!                 namespaces: vec!["payments".into()],
//!             }],
//!             default_ttl: Some("1h".into()),
//!             ..Default::default()
//!         },
//!     ),
//! ];
//! // The server's side: its namespace (never bindable), default and maximum TTL.
//! let settings = PolicySettings::new("tka-system", Ttl::parse("1h")?, Ttl::parse("8h")?);
//! let cluster = ClusterName::new("prod-eu")?;
//!
//! let decision = resolve(&ResolveRequest {
//!     context: PolicyContext {
//!         identity: &alice,
//!         grants: &grants,
//!         mappings: &mappings,
//!         cluster: &cluster,
//!         settings: &settings,
//!     },
//!     role: None,                // the best role her grants allow
//!     ttl: Some("6h".into()),    // asked for 6h ...
//!     now: "2026-01-01T09:00:00Z".parse()?,
//! })?;
//! assert_eq!(decision.role.as_str(), "sre"); // priority 10 beats 0
//! assert_eq!(decision.cluster_roles, ["view"]);
//! assert_eq!(decision.namespaced[0].namespace, "payments");
//! // ... and got 4h: the grant's maxTTL, which the decision names.
//! assert_eq!(decision.ttl.to_string(), "4h");
//! let clamp = decision.clamped.as_ref().map(|c| c.bound.as_str());
//! assert_eq!(clamp, Some("the maxTTL of your tailnet grant for role 'sre'"));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Features
//!
//! The pure parts (domain types, capability parsing, policy resolution, the policy file,
//! durations, naming) do no I/O and are always compiled. The real implementations of the traits
//! live behind cargo features so that a tool embedding only the policy does not compile an HTTP
//! or Kubernetes stack:
//!
//! | feature      | brings                                                        |
//! |--------------|---------------------------------------------------------------|
//! | `localapi`   | `identity::TailscaleLocalApi`, the tailscaled LocalAPI client |
//! | `kubernetes` | the CRDs, `KubernetesIssuer` and `KubernetesReconciler`         |
//! | `client`     | `kubeconfig` (tka's entries, edited in place) and `token_cache` |
//! | `openapi`    | `utoipa` schemas of the API wire types                        |
//! | `mocks`      | mockall mocks of the core traits for other crates' tests      |
#![deny(missing_docs)]

pub mod api;
pub mod capability;
pub mod clock;
pub mod domain;
pub mod duration;
pub mod endpoint;
pub mod identity;
pub mod issuer;
#[cfg(feature = "client")]
pub mod kubeconfig;
#[cfg(feature = "kubernetes")]
pub mod kubernetes;
pub mod naming;
#[cfg(feature = "openapi")]
pub mod openapi;
pub mod policy;
pub mod reconciler;
pub mod secret;
pub mod tailnet_policy;
#[cfg(feature = "client")]
pub mod token_cache;

pub use capability::{CapabilitySchema, Grant, ParsedGrants, SkippedValue};
pub use clock::{Clock, ManualClock, SystemClock};
pub use domain::{
    ClusterName, DomainError, Identity, LoginName, NodeId, NodeInfo, RoleName, SessionName, Tag,
    Ttl, UserId, UserInfo,
};
pub use identity::{
    CapabilityNames, IdentityError, IdentityProvider, PeerStatus, Status, TailnetStatus,
    WhoisRequest, WhoisTarget,
};
#[cfg(feature = "localapi")]
pub use identity::{LoopbackRetry, TailscaleLocalApi};
pub use policy::{Decision, GrantMappingSpec};
pub use policy::{
    Denial, DenialKind, MappingView, PolicyContext, PolicySettings, ResolveRequest, RoleListing,
    TtlRequest, available_roles, resolve, validate_mapping,
};
pub use secret::Secret;
