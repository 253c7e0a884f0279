//! Object validation the API server does before storing anything: names, label and annotation
//! keys, label values, owner references, and the RBAC binding rules tka depends on. Messages use
//! apimachinery's wording. It owns no state and decides nothing about existing objects.

use serde_json::Value;

use super::resource::{NameRule, ResourceType, Special};
use super::status::{FieldError, quote};

const SUBDOMAIN_MSG: &str = "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')";
const LABEL_MSG: &str = "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')";
const QUALIFIED_NAME_MSG: &str = "name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')";
const LABEL_VALUE_MSG: &str = "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyValue',  or 'my_value',  or '12345', regex used for validation is '(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')";

fn is_dns1123_label(s: &str) -> bool {
    let bytes = s.as_bytes();
    !bytes.is_empty()
        && bytes
            .iter()
            .all(|&b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && bytes.first().is_some_and(u8::is_ascii_alphanumeric)
        && bytes.last().is_some_and(u8::is_ascii_alphanumeric)
}

fn is_dns1123_subdomain(s: &str) -> bool {
    s.split('.').all(is_dns1123_label)
}

/// `[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?`, possibly empty when `allow_empty`.
fn is_qualified_part(s: &str, allow_empty: bool) -> bool {
    if s.is_empty() {
        return allow_empty;
    }
    let bytes = s.as_bytes();
    bytes
        .iter()
        .all(|&b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && bytes.first().is_some_and(u8::is_ascii_alphanumeric)
        && bytes.last().is_some_and(u8::is_ascii_alphanumeric)
}

/// Problems with `metadata.name` under a resource type's rule.
pub(crate) fn name(rt: &ResourceType, name: &str) -> Vec<FieldError> {
    let field = "metadata.name";
    let q = quote(name);
    let mut errors = Vec::new();
    match rt.name_rule {
        NameRule::Dns1123Subdomain => {
            if name.len() > 253 {
                errors.push(FieldError::invalid(
                    field,
                    &q,
                    "must be no more than 253 characters",
                ));
            }
            if !is_dns1123_subdomain(name) {
                errors.push(FieldError::invalid(field, &q, SUBDOMAIN_MSG));
            }
        }
        NameRule::Dns1123Label => {
            if name.len() > 63 {
                errors.push(FieldError::invalid(
                    field,
                    &q,
                    "must be no more than 63 characters",
                ));
            }
            if !is_dns1123_label(name) {
                errors.push(FieldError::invalid(field, &q, LABEL_MSG));
            }
        }
        NameRule::PathSegment => {
            if name == "." || name == ".." {
                errors.push(FieldError::invalid(
                    field,
                    &q,
                    &format!("may not be {}", quote(name).replace('"', "'")),
                ));
            }
            for bad in ['/', '%'] {
                if name.contains(bad) {
                    errors.push(FieldError::invalid(
                        field,
                        &q,
                        &format!("may not contain '{bad}'"),
                    ));
                }
            }
        }
    }
    errors
}

fn qualified_key(field: &str, key: &str) -> Vec<FieldError> {
    let q = quote(key);
    let mut errors = Vec::new();
    let (prefix, name) = match key.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    if let Some(prefix) = prefix {
        if prefix.is_empty() {
            errors.push(FieldError::invalid(
                field,
                &q,
                "prefix part must be non-empty",
            ));
        } else if prefix.len() > 253 || !is_dns1123_subdomain(prefix) {
            errors.push(FieldError::invalid(
                field,
                &q,
                &format!("prefix part {SUBDOMAIN_MSG}"),
            ));
        }
    }
    if name.is_empty() {
        errors.push(FieldError::invalid(
            field,
            &q,
            "name part must be non-empty",
        ));
    } else {
        if name.len() > 63 {
            errors.push(FieldError::invalid(
                field,
                &q,
                "name part must be no more than 63 characters",
            ));
        }
        if !is_qualified_part(name, false) {
            errors.push(FieldError::invalid(field, &q, QUALIFIED_NAME_MSG));
        }
    }
    errors
}

/// Problems with labels, annotation keys and owner references.
pub(crate) fn metadata(meta: &Value) -> Vec<FieldError> {
    let mut errors = Vec::new();
    if let Some(labels) = meta.get("labels").and_then(Value::as_object) {
        for (key, value) in labels {
            errors.extend(qualified_key("metadata.labels", key));
            let Some(value) = value.as_str() else {
                errors.push(FieldError::invalid(
                    "metadata.labels",
                    &value.to_string(),
                    "must be a string",
                ));
                continue;
            };
            if value.len() > 63 {
                errors.push(FieldError::invalid(
                    "metadata.labels",
                    &quote(value),
                    "must be no more than 63 characters",
                ));
            }
            if !is_qualified_part(value, true) {
                errors.push(FieldError::invalid(
                    "metadata.labels",
                    &quote(value),
                    LABEL_VALUE_MSG,
                ));
            }
        }
    }
    if let Some(annotations) = meta.get("annotations").and_then(Value::as_object) {
        for key in annotations.keys() {
            errors.extend(qualified_key("metadata.annotations", key));
        }
    }
    if let Some(owners) = meta.get("ownerReferences").and_then(Value::as_array) {
        let mut controllers = 0;
        for (i, owner) in owners.iter().enumerate() {
            for (field, what) in [
                ("apiVersion", "version must not be empty"),
                ("kind", "kind must not be empty"),
                ("name", "name must not be empty"),
                ("uid", "uid must not be empty"),
            ] {
                if owner
                    .get(field)
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .is_empty()
                {
                    errors.push(FieldError::invalid(
                        &format!("metadata.ownerReferences[{i}].{field}"),
                        "\"\"",
                        what,
                    ));
                }
            }
            if owner.get("controller").and_then(Value::as_bool) == Some(true) {
                controllers += 1;
            }
        }
        if controllers > 1 {
            errors.push(FieldError::invalid(
                "metadata.ownerReferences",
                "[]v1.OwnerReference{...}",
                "Only one reference can have Controller set to true",
            ));
        }
    }
    errors
}

/// Type-specific rules on a whole object (today: RBAC bindings).
pub(crate) fn object(rt: &ResourceType, obj: &Value) -> Vec<FieldError> {
    let mut errors = Vec::new();
    if rt.special != Special::RoleBinding {
        return errors;
    }
    let role_ref = obj.get("roleRef").cloned().unwrap_or(Value::Null);
    let kind = role_ref.get("kind").and_then(Value::as_str).unwrap_or("");
    if role_ref
        .get("name")
        .and_then(Value::as_str)
        .unwrap_or("")
        .is_empty()
    {
        errors.push(FieldError::required("roleRef.name", ""));
    }
    let allowed_kinds: &[&str] = if rt.namespaced {
        &["Role", "ClusterRole"]
    } else {
        &["ClusterRole"]
    };
    if !allowed_kinds.contains(&kind) {
        errors.push(FieldError {
            field: "roleRef.kind".to_owned(),
            reason: "FieldValueNotSupported",
            body: format!(
                "Unsupported value: {}: supported values: {}",
                quote(kind),
                allowed_kinds
                    .iter()
                    .map(|k| quote(k))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        });
    }
    if role_ref.get("apiGroup").and_then(Value::as_str) != Some("rbac.authorization.k8s.io") {
        errors.push(FieldError {
            field: "roleRef.apiGroup".to_owned(),
            reason: "FieldValueNotSupported",
            body: format!(
                "Unsupported value: {}: supported values: \"rbac.authorization.k8s.io\"",
                quote(
                    role_ref
                        .get("apiGroup")
                        .and_then(Value::as_str)
                        .unwrap_or("")
                )
            ),
        });
    }
    let subjects = obj.get("subjects").and_then(Value::as_array);
    for (i, subject) in subjects.into_iter().flatten().enumerate() {
        let field = |f: &str| format!("subjects[{i}].{f}");
        let kind = subject.get("kind").and_then(Value::as_str).unwrap_or("");
        if subject
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or("")
            .is_empty()
        {
            errors.push(FieldError::required(&field("name"), ""));
        }
        if kind == "ServiceAccount"
            && subject
                .get("namespace")
                .and_then(Value::as_str)
                .unwrap_or("")
                .is_empty()
        {
            errors.push(FieldError::required(&field("namespace"), ""));
        }
        if !["ServiceAccount", "User", "Group"].contains(&kind) {
            errors.push(FieldError {
                field: field("kind"),
                reason: "FieldValueNotSupported",
                body: format!(
                    "Unsupported value: {}: supported values: \"ServiceAccount\", \"User\", \"Group\"",
                    quote(kind)
                ),
            });
        }
    }
    errors
}

/// Renders a roleRef the way the real server prints it in "cannot change roleRef".
pub(crate) fn role_ref_go_syntax(role_ref: &Value) -> String {
    let s = |f: &str| {
        role_ref
            .get(f)
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned()
    };
    format!(
        "rbac.RoleRef{{APIGroup:{}, Kind:{}, Name:{}}}",
        quote(&s("apiGroup")),
        quote(&s("kind")),
        quote(&s("name"))
    )
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::cluster::resource::Registry;

    fn rt(plural: &str) -> ResourceType {
        Registry::with_defaults()
            .find_plural(plural)
            .cloned()
            .unwrap()
    }

    #[test]
    fn names_follow_each_types_rule() {
        assert!(name(&rt("sessions"), "tka-alice-x7k2p").is_empty());
        assert!(name(&rt("sessions"), "a.b-c").is_empty());
        assert!(!name(&rt("sessions"), "Alice").is_empty());
        assert!(!name(&rt("sessions"), "-a").is_empty());
        assert!(!name(&rt("sessions"), &"a".repeat(254)).is_empty());
        assert!(!name(&rt("namespaces"), "a.b").is_empty());
        assert!(!name(&rt("namespaces"), &"a".repeat(64)).is_empty());
        assert!(name(&rt("clusterroles"), "system:basic-user").is_empty());
        assert!(!name(&rt("clusterroles"), "a/b").is_empty());
    }

    #[test]
    fn label_values_and_keys() {
        assert!(
            metadata(&json!({"labels": {"app.kubernetes.io/managed-by": "tka", "empty": ""}}))
                .is_empty()
        );
        let errors = metadata(&json!({"labels": {"tka.dev/user": "alice@example.com"}}));
        assert_eq!(errors.len(), 1);
        assert!(errors[0].body.contains("a valid label must be"));
        assert_eq!(metadata(&json!({"labels": {"a": "x".repeat(64)}})).len(), 1);
        assert!(!metadata(&json!({"labels": {"Bad_Prefix/a": "x"}})).is_empty());
    }

    #[test]
    fn bindings_need_a_valid_role_ref_and_namespaced_service_accounts() {
        let ok = json!({
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "view"},
            "subjects": [{"kind": "ServiceAccount", "name": "a", "namespace": "tka-system"}]
        });
        assert!(object(&rt("clusterrolebindings"), &ok).is_empty());
        let mut bad = ok.clone();
        bad["subjects"][0]["namespace"] = Value::Null;
        bad["roleRef"]["kind"] = json!("Role");
        let fields: Vec<_> = object(&rt("clusterrolebindings"), &bad)
            .into_iter()
            .map(|e| e.field)
            .collect();
        assert_eq!(fields, ["roleRef.kind", "subjects[0].namespace"]);
        let mut role = ok;
        role["roleRef"]["kind"] = json!("Role");
        assert!(object(&rt("rolebindings"), &role).is_empty());
    }
}
