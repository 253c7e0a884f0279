//! The CustomResourceDefinitions of tka, generated from the Rust types: `GrantMapping` (the
//! cluster's half of the policy) and `Session`. The GrantMapping schema gets its server-side
//! validation here (duration and name patterns, exactly one field per subject, bounded lists)
//! and the printer columns people want in `kubectl get`. Nothing here talks to a cluster.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    CustomResourceColumnDefinition, CustomResourceDefinition, JSONSchemaProps,
    JSONSchemaPropsOrArray, ValidationRule,
};
use kube::CustomResourceExt;

use super::session::Session;
use crate::policy::GrantMapping;

/// The pattern of a duration in a GrantMapping (`90m`, `8h`, `1h30m`, `1.5h`).
pub const DURATION_PATTERN: &str = r"^([0-9]+(\.[0-9]+)?(h|m|s|ms))+$";

/// The pattern of a Kubernetes namespace name (a DNS-1123 label).
pub const NAMESPACE_PATTERN: &str = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$";

/// The pattern of a ClusterRole name as tka accepts it (`view`, `system:aggregate-to-view`).
pub const CLUSTER_ROLE_PATTERN: &str = r"^[a-z0-9]([-a-z0-9.:]*[a-z0-9])?$";

/// The pattern of an ACL tag.
pub const TAG_PATTERN: &str = r"^tag:[a-zA-Z][a-zA-Z0-9-]*$";

/// The most entries tka accepts in any list of a GrantMapping (keeps CEL cost bounded).
pub const MAX_LIST_ITEMS: i64 = 64;

/// The CRD of `Session`.
pub fn session_crd() -> CustomResourceDefinition {
    Session::crd()
}

/// The CRD of `GrantMapping`, with its validation and printer columns.
pub fn grant_mapping_crd() -> CustomResourceDefinition {
    let mut crd = GrantMapping::crd();
    for version in &mut crd.spec.versions {
        let Some(spec) = version
            .schema
            .as_mut()
            .and_then(|s| s.open_api_v3_schema.as_mut())
            .and_then(|root| property(root, "spec"))
        else {
            continue;
        };
        validate_grant_mapping_spec(spec);
        version.additional_printer_columns = Some(grant_mapping_columns(DEFAULT_TTL, MAX_TTL));
    }
    crd
}

/// Both CRDs, GrantMapping first.
pub fn crds() -> Vec<CustomResourceDefinition> {
    vec![grant_mapping_crd(), session_crd()]
}

/// Both CRDs as one multi-document YAML stream, ready for `kubectl apply -f -`.
pub fn crds_yaml() -> String {
    let mut out = String::new();
    for crd in crds() {
        out.push_str("---\n");
        // Serializing a CRD to YAML cannot fail: it is plain data with string keys.
        match serde_yaml::to_string(&crd) {
            Ok(doc) => out.push_str(&doc),
            Err(e) => out.push_str(&format!("# could not render this CRD: {e}\n")),
        }
    }
    out
}

fn property<'a>(schema: &'a mut JSONSchemaProps, name: &str) -> Option<&'a mut JSONSchemaProps> {
    schema.properties.as_mut()?.get_mut(name)
}

fn items(schema: &mut JSONSchemaProps) -> Option<&mut JSONSchemaProps> {
    match schema.items.as_mut()? {
        JSONSchemaPropsOrArray::Schema(s) => Some(s),
        JSONSchemaPropsOrArray::Schemas(_) => None,
    }
}

fn rule(rule: &str, message: &str) -> ValidationRule {
    ValidationRule {
        rule: rule.to_owned(),
        message: Some(message.to_owned()),
        ..ValidationRule::default()
    }
}

fn string_rules(schema: &mut JSONSchemaProps, pattern: &str, max_length: i64) {
    schema.pattern = Some(pattern.to_owned());
    schema.min_length = Some(1);
    schema.max_length = Some(max_length);
}

/// The wire name of `GrantMappingSpec::default_ttl` (DESIGN §4.3).
const DEFAULT_TTL: &str = "defaultTTL";
/// The wire name of `GrantMappingSpec::max_ttl` (DESIGN §4.3).
const MAX_TTL: &str = "maxTTL";

fn validate_grant_mapping_spec(spec: &mut JSONSchemaProps) {
    let (default_ttl, max_ttl) = (DEFAULT_TTL, MAX_TTL);
    spec.x_kubernetes_validations = Some(vec![
        rule(
            "has(self.clusterRoles) || has(self.namespaced)",
            "a GrantMapping must bind at least one ClusterRole (clusterRoles or namespaced)",
        ),
        rule(
            &format!(
                "!has(self.{default_ttl}) || !has(self.{max_ttl}) || duration(self.{default_ttl}) <= duration(self.{max_ttl})"
            ),
            &format!("{default_ttl} must not be longer than {max_ttl}"),
        ),
    ]);
    for ttl in [default_ttl, max_ttl] {
        if let Some(p) = property(spec, ttl) {
            string_rules(p, DURATION_PATTERN, 32);
        }
    }
    if let Some(roles) = property(spec, "clusterRoles") {
        roles.max_items = Some(MAX_LIST_ITEMS);
        if let Some(item) = items(roles) {
            string_rules(item, CLUSTER_ROLE_PATTERN, 253);
        }
    }
    if let Some(namespaced) = property(spec, "namespaced") {
        namespaced.max_items = Some(MAX_LIST_ITEMS);
        if let Some(grant) = items(namespaced) {
            if let Some(role) = property(grant, "clusterRole") {
                string_rules(role, CLUSTER_ROLE_PATTERN, 253);
            }
            if let Some(namespaces) = property(grant, "namespaces") {
                namespaces.min_items = Some(1);
                namespaces.max_items = Some(4 * MAX_LIST_ITEMS);
                if let Some(ns) = items(namespaces) {
                    string_rules(ns, NAMESPACE_PATTERN, 63);
                }
            }
        }
    }
    if let Some(subjects) = property(spec, "subjects") {
        subjects.max_items = Some(MAX_LIST_ITEMS);
        if let Some(subject) = items(subjects) {
            subject.x_kubernetes_validations = Some(vec![rule(
                "(has(self.user) ? 1 : 0) + (has(self.tag) ? 1 : 0) + (has(self.group) ? 1 : 0) == 1",
                "a subject names exactly one of user, tag or group",
            )]);
            if let Some(user) = property(subject, "user") {
                user.min_length = Some(1);
                user.max_length = Some(512);
            }
            if let Some(tag) = property(subject, "tag") {
                string_rules(tag, TAG_PATTERN, 133);
            }
            if let Some(group) = property(subject, "group") {
                group.min_length = Some(1);
                group.max_length = Some(512);
            }
        }
    }
}

fn column(
    name: &str,
    type_: &str,
    json_path: &str,
    description: &str,
) -> CustomResourceColumnDefinition {
    CustomResourceColumnDefinition {
        name: name.to_owned(),
        type_: type_.to_owned(),
        json_path: json_path.to_owned(),
        description: (!description.is_empty()).then(|| description.to_owned()),
        ..CustomResourceColumnDefinition::default()
    }
}

fn grant_mapping_columns(default_ttl: &str, max_ttl: &str) -> Vec<CustomResourceColumnDefinition> {
    vec![
        column(
            "ClusterRoles",
            "string",
            ".spec.clusterRoles",
            "ClusterRoles bound cluster-wide",
        ),
        column(
            "Default TTL",
            "string",
            &format!(".spec.{default_ttl}"),
            "Session lifetime when none is asked for",
        ),
        column(
            "Max TTL",
            "string",
            &format!(".spec.{max_ttl}"),
            "Longest session",
        ),
        column(
            "Ready",
            "string",
            r#".status.conditions[?(@.type=="Ready")].status"#,
            "Whether the mapping can be used",
        ),
        column(
            "Reason",
            "string",
            r#".status.conditions[?(@.type=="Ready")].reason"#,
            "Why it cannot be used",
        ),
        column("Age", "date", ".metadata.creationTimestamp", ""),
    ]
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    /// Every schema node of a CRD, with its JSON path, for structural checks.
    fn walk<'a>(
        path: String,
        schema: &'a JSONSchemaProps,
        out: &mut BTreeMap<String, &'a JSONSchemaProps>,
    ) {
        if let Some(props) = &schema.properties {
            for (name, child) in props {
                walk(format!("{path}.{name}"), child, out);
            }
        }
        if let Some(JSONSchemaPropsOrArray::Schema(item)) = &schema.items {
            walk(format!("{path}[]"), item, out);
        }
        out.insert(path, schema);
    }

    fn nodes(crd: &CustomResourceDefinition) -> BTreeMap<String, JSONSchemaProps> {
        let root = crd.spec.versions[0]
            .schema
            .as_ref()
            .unwrap()
            .open_api_v3_schema
            .as_ref()
            .unwrap();
        let mut out = BTreeMap::new();
        walk(String::new(), root, &mut out);
        out.into_iter().map(|(k, v)| (k, v.clone())).collect()
    }

    #[test]
    fn crds_yaml_is_reviewed() {
        insta::assert_snapshot!("crds", crds_yaml());
    }

    #[test]
    fn schemas_are_structural() {
        // Structural: every node has a type (or preserves unknown fields / is int-or-string), and
        // nothing uses oneOf/anyOf/allOf to describe its shape.
        for crd in crds() {
            for (path, node) in nodes(&crd) {
                let typed = node.type_.is_some()
                    || node.x_kubernetes_int_or_string == Some(true)
                    || node.x_kubernetes_preserve_unknown_fields == Some(true);
                assert!(typed, "{}: {path} has no type", crd.spec.names.kind);
                assert!(
                    node.one_of.is_none() && node.any_of.is_none() && node.all_of.is_none(),
                    "{}: {path} is not structural",
                    crd.spec.names.kind
                );
            }
        }
    }

    #[test]
    fn both_crds_are_cluster_scoped_with_a_status_subresource() {
        for crd in crds() {
            assert_eq!(crd.spec.group, "tka.dev");
            assert_eq!(crd.spec.scope, "Cluster");
            let version = &crd.spec.versions[0];
            assert_eq!(version.name, "v1alpha1");
            assert!(
                version
                    .subresources
                    .as_ref()
                    .and_then(|s| s.status.as_ref())
                    .is_some()
            );
        }
    }

    #[test]
    fn grant_mapping_durations_and_subjects_are_validated() {
        let nodes = nodes(&grant_mapping_crd());
        let ttl_fields: Vec<_> = nodes
            .iter()
            .filter(|(path, _)| path.to_lowercase().ends_with("ttl"))
            .collect();
        assert_eq!(ttl_fields.len(), 2, "defaultTTL and maxTTL");
        for (path, node) in ttl_fields {
            assert_eq!(node.pattern.as_deref(), Some(DURATION_PATTERN), "{path}");
        }
        assert_eq!(
            nodes[".spec.namespaced[].namespaces[]"].pattern.as_deref(),
            Some(NAMESPACE_PATTERN)
        );
        let subject_rules = nodes[".spec.subjects[]"]
            .x_kubernetes_validations
            .as_ref()
            .unwrap();
        assert!(subject_rules[0].rule.contains("== 1"));
    }

    #[test]
    fn grant_mapping_ttl_fields_are_spelled_as_documented() {
        let nodes = nodes(&grant_mapping_crd());
        assert!(nodes.contains_key(".spec.defaultTTL"));
        assert!(nodes.contains_key(".spec.maxTTL"));
        assert!(!nodes.contains_key(".spec.defaultTtl"));
        let spec: crate::policy::GrantMappingSpec = serde_json::from_value(serde_json::json!({
            "clusterRoles": ["view"], "defaultTTL": "1h", "maxTTL": "8h"
        }))
        .unwrap();
        assert_eq!(spec.default_ttl.as_deref(), Some("1h"));
        assert_eq!(spec.max_ttl.as_deref(), Some("8h"));
        let back = serde_json::to_value(&spec).unwrap();
        assert_eq!(back["defaultTTL"], "1h");
        assert_eq!(back["maxTTL"], "8h");
    }

    #[test]
    fn the_patterns_accept_what_tka_accepts() {
        let duration = regex::Regex::new(DURATION_PATTERN).unwrap();
        for ok in ["90m", "8h", "1h30m", "1.5h", "45s", "500ms", "2h0m30s"] {
            assert!(crate::duration::parse(ok).is_ok(), "{ok}");
            assert!(duration.is_match(ok), "{ok}");
        }
        for bad in ["", "1", "h", "1d", "-1h", "1h 30m", "abc"] {
            assert!(!duration.is_match(bad), "{bad}");
        }
        let namespace = regex::Regex::new(NAMESPACE_PATTERN).unwrap();
        assert!(namespace.is_match("team-a"));
        assert!(!namespace.is_match("Team_A"));
        let role = regex::Regex::new(CLUSTER_ROLE_PATTERN).unwrap();
        assert!(role.is_match("system:aggregate-to-view"));
        assert!(!role.is_match("view/"));
        let tag = regex::Regex::new(TAG_PATTERN).unwrap();
        assert!(tag.is_match("tag:ci") && crate::Tag::new("tag:ci").is_ok());
        assert!(!tag.is_match("ci") && crate::Tag::new("ci").is_err());
    }

    #[test]
    fn session_has_the_columns_people_want() {
        let crd = session_crd();
        let names: Vec<_> = crd.spec.versions[0]
            .additional_printer_columns
            .as_ref()
            .unwrap()
            .iter()
            .map(|c| c.name.as_str())
            .collect();
        for wanted in ["User", "Device", "Role", "Expires", "Phase"] {
            assert!(names.contains(&wanted), "{wanted} missing from {names:?}");
        }
    }
}
