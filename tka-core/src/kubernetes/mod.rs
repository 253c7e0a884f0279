//! The real Kubernetes backend (feature `kubernetes`): the `GrantMapping` and `Session` custom
//! resources, and the implementations of the issuer and reconciler on a kube client.
//!
//! The objects and their lifecycle are those of DESIGN §5: a Session (the record of intent) owns
//! a ServiceAccount in the server's namespace and the bindings of one role; tokens come from
//! TokenRequest. The issuer creates; the reconciler only removes.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use serde::{Deserialize, Serialize};

mod checkpoint;
mod crd;
mod error;
mod issuer;
mod lease;
mod objects;
mod rbac;
mod reconciler;
mod schedule;
mod session;
mod watches;

pub use checkpoint::{Checkpoint, CheckpointHook, UnknownCheckpoint};
pub use crd::{
    CLUSTER_ROLE_PATTERN, DURATION_PATTERN, MAX_LIST_ITEMS, NAMESPACE_PATTERN, TAG_PATTERN, crds,
    crds_yaml, grant_mapping_crd, session_crd,
};
pub use issuer::{IssuerSettings, KubernetesIssuer, SuffixSource, decode_token_id};
pub use lease::{LeaderLease, LeaseSettings};
pub use rbac::{cluster_role_rules, cluster_roles};
pub use reconciler::{KubernetesReconciler, PassObserver, ReconcilerSettings};
pub use schedule::PassSchedule;
pub use session::{
    BindingKind, BindingRef, ObjectRef, Session, SessionIdentity, SessionPhase, SessionRoleBinding,
    SessionSpec, SessionStatus,
};
pub use watches::{ClusterWatches, Meta, Revision, SessionStore, Watched, slim};

pub use crate::policy::GrantMapping;
pub use crate::reconciler::PolicyGrantCheck;

/// `app.kubernetes.io/managed-by`: every object tka creates carries it with value [`MANAGED_BY`].
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
/// The value of [`MANAGED_BY_LABEL`].
pub const MANAGED_BY: &str = "tka";
/// The label holding the digest of the device's node stable ID (see `naming::node_label`).
pub const NODE_LABEL: &str = "tka.dev/node";
/// The label holding the digest of the user ID (see `naming::user_label`).
pub const USER_LABEL: &str = "tka.dev/user";
/// The label on a session's children naming their session.
pub const SESSION_LABEL: &str = "tka.dev/session";
/// The label on a binding naming the session revision (role) it belongs to.
pub const REVISION_LABEL: &str = "tka.dev/revision";
/// The finalizer on every Session: the backstop that removes children of a deleted Session.
pub const FINALIZER: &str = "tka.dev/cleanup";

/// The type of the condition a GrantMapping reports.
pub const CONDITION_READY: &str = "Ready";
/// `Ready=True`: the mapping can be used.
pub const REASON_READY: &str = "Ready";
/// `Ready=False`: a ClusterRole it refers to does not exist.
pub const REASON_CLUSTER_ROLE_MISSING: &str = "ClusterRoleMissing";
/// `Ready=False`: it binds in the server's namespace or a denied namespace; it is never used.
pub const REASON_FORBIDDEN_NAMESPACE: &str = "ForbiddenNamespace";
/// `Ready=False`: the spec is invalid (see `policy::MappingProblem`); it is never used.
pub const REASON_INVALID_SPEC: &str = "InvalidSpec";
/// `Ready=False`: the server may not bind one of its ClusterRoles.
pub const REASON_NOT_BINDABLE: &str = "NotBindable";
/// `Ready=False`: `clusterRoles` names a role that grants more than reading.
pub const REASON_CLUSTER_WIDE_WRITE: &str = "ClusterWideWrite";

/// The observed state of a GrantMapping.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GrantMappingStatus {
    /// `Ready`, with a reason such as `ClusterRoleMissing`, `ClusterWideWrite`, `NotBindable` or `ForbiddenNamespace`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// The generation these conditions describe.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}
