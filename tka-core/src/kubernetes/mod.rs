//! The real Kubernetes backend (feature `kubernetes`): the `GrantMapping` and `Session` custom
//! resources, and the implementations of the issuer and reconciler on a kube client.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use serde::{Deserialize, Serialize};

/// The observed state of a GrantMapping.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GrantMappingStatus {
    /// `Ready`, with a reason such as `ClusterRoleMissing`, `NotBindable` or `ForbiddenNamespace`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// The generation these conditions describe.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}
