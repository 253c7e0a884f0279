//! The tka SDK: who is calling (a Tailscale identity), what they may do (grant policy), and the
//! short-lived Kubernetes credentials that follow from it.
//!
//! The pure parts (domain types, capability parsing, policy resolution, durations, naming) do no
//! I/O and are always compiled. The real implementations of the traits live behind cargo
//! features so that a tool embedding only the policy does not compile an HTTP or Kubernetes stack:
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
