//! ClusterRoles as the read-only judgement sees them: the conversion from the API's
//! `ClusterRole` to [`ClusterRoleRules`] (rules, labels, aggregation selectors). No I/O; the
//! reconciler and the server's GrantMapping feed list or watch the roles themselves.

use k8s_openapi::api::rbac::v1::ClusterRole;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector as KubeSelector;
use kube::ResourceExt;

use crate::policy::{
    ClusterRoleRules, ClusterRoles, LabelSelector, PolicyRule, SelectorRequirement,
};

fn selector(s: &KubeSelector) -> LabelSelector {
    LabelSelector {
        match_labels: s.match_labels.clone().unwrap_or_default(),
        match_expressions: s
            .match_expressions
            .iter()
            .flatten()
            .map(|e| SelectorRequirement {
                key: e.key.clone(),
                operator: e.operator.clone(),
                values: e.values.clone().unwrap_or_default(),
            })
            .collect(),
    }
}

/// One ClusterRole's rules, labels and aggregation selectors.
pub fn cluster_role_rules(role: &ClusterRole) -> ClusterRoleRules {
    ClusterRoleRules {
        labels: role.labels().clone(),
        rules: role
            .rules
            .iter()
            .flatten()
            .map(|r| PolicyRule {
                api_groups: r.api_groups.clone().unwrap_or_default(),
                resources: r.resources.clone().unwrap_or_default(),
                verbs: r.verbs.clone(),
                non_resource_urls: r.non_resource_urls.clone().unwrap_or_default(),
            })
            .collect(),
        aggregation: role.aggregation_rule.as_ref().map(|a| {
            a.cluster_role_selectors
                .iter()
                .flatten()
                .map(selector)
                .collect()
        }),
    }
}

/// Every listed ClusterRole, by name.
pub fn cluster_roles<'a>(roles: impl IntoIterator<Item = &'a ClusterRole>) -> ClusterRoles {
    roles
        .into_iter()
        .map(|r| (r.name_any(), cluster_role_rules(r)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_aggregated_role_converts_with_its_selectors() {
        let role: ClusterRole = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "view", "labels": {"rbac.authorization.k8s.io/aggregate-to-edit": "true"}},
            "aggregationRule": {"clusterRoleSelectors": [
                {"matchLabels": {"rbac.authorization.k8s.io/aggregate-to-view": "true"}},
                {"matchExpressions": [{"key": "tier", "operator": "In", "values": ["a"]}]}
            ]},
            "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]},
                      {"nonResourceURLs": ["/healthz"], "verbs": ["get"]}]
        }))
        .unwrap();
        let converted = cluster_role_rules(&role);
        assert_eq!(converted.rules.len(), 2);
        assert_eq!(converted.rules[1].non_resource_urls, ["/healthz"]);
        let selectors = converted.aggregation.unwrap();
        assert_eq!(selectors.len(), 2);
        assert_eq!(selectors[1].match_expressions[0].operator, "In");
        let roles = cluster_roles([&role]);
        assert!(roles.contains("view"));
        assert_eq!(roles.beyond_read("view"), Some(vec![]));
    }
}
