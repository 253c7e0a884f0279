//! The PATCH flavours the API server accepts, applied to an object's JSON. It owns patch
//! semantics only: what the patched object may look like is decided by the store.
//!
//! - JSON patch (RFC 6902) and JSON merge patch (RFC 7386) are exact.
//! - Strategic merge patch (built-in types only; custom resources answer 415 like the real
//!   server) is merge patch plus the list semantics of the metadata fields tka touches:
//!   `metadata.finalizers` merges as a set and honours `$deleteFromPrimitiveList/finalizers`,
//!   `metadata.ownerReferences` merges by `uid` and honours `$patch: delete`. Other lists are
//!   replaced, and other directives are ignored.
//! - Server-side apply is treated as a merge patch that creates the object when it is missing.
//!   Field ownership is not tracked: a field dropped from the applied configuration is kept, not
//!   removed, and lists are replaced rather than merged across managers.

use serde_json::{Map, Value};

use super::status::ApiError;

/// A PATCH body's flavour, from its `Content-Type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PatchKind {
    Json,
    Merge,
    Strategic,
    Apply,
}

/// What the fake answers a PATCH with an unknown or unsupported content type.
pub(crate) const ACCEPTED_FOR_CUSTOM: &str =
    "application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml";
pub(crate) const ACCEPTED_FOR_BUILTIN: &str = "application/json-patch+json, application/merge-patch+json, application/strategic-merge-patch+json, application/apply-patch+yaml";

impl PatchKind {
    pub(crate) fn from_content_type(content_type: &str) -> Option<Self> {
        let media = content_type.split(';').next().unwrap_or("").trim();
        match media {
            "application/json-patch+json" => Some(Self::Json),
            "application/merge-patch+json" => Some(Self::Merge),
            "application/strategic-merge-patch+json" => Some(Self::Strategic),
            "application/apply-patch+yaml" => Some(Self::Apply),
            _ => None,
        }
    }
}

/// Parses a PATCH body: JSON for every flavour, YAML (a superset) for apply.
pub(crate) fn parse_body(kind: PatchKind, body: &[u8]) -> Result<Value, ApiError> {
    match serde_json::from_slice(body) {
        Ok(v) => Ok(v),
        Err(json_err) if kind == PatchKind::Apply => serde_yaml::from_slice(body).map_err(|e| {
            ApiError::bad_request(format!("error decoding YAML: {e} (as JSON: {json_err})"))
        }),
        Err(e) => Err(ApiError::bad_request(format!(
            "couldn't get version/kind; json parse error: {e}"
        ))),
    }
}

/// Applies `patch` to `doc`, returning the patched document.
pub(crate) fn apply(kind: PatchKind, doc: &Value, patch: &Value) -> Result<Value, ApiError> {
    let mut out = doc.clone();
    match kind {
        PatchKind::Json => {
            let ops: json_patch::Patch = serde_json::from_value(patch.clone())
                .map_err(|e| ApiError::bad_request(format!("invalid JSON patch: {e}")))?;
            json_patch::patch(&mut out, &ops).map_err(|e| {
                ApiError::unprocessable(format!(
                    "the server rejected our request due to an error in our request: {e}"
                ))
            })?;
        }
        PatchKind::Merge | PatchKind::Apply => {
            if !patch.is_object() {
                return Err(ApiError::bad_request(
                    "a merge patch must be a JSON object".to_owned(),
                ));
            }
            json_patch::merge(&mut out, patch);
        }
        PatchKind::Strategic => {
            let Value::Object(p) = patch else {
                return Err(ApiError::bad_request(
                    "a strategic merge patch must be a JSON object".to_owned(),
                ));
            };
            strategic_merge(&mut out, p, "");
        }
    }
    Ok(out)
}

fn strategic_merge(doc: &mut Value, patch: &Map<String, Value>, path: &str) {
    if !doc.is_object() {
        *doc = Value::Object(Map::new());
    }
    let Value::Object(target) = doc else {
        return;
    };
    let mut deletions = Vec::new();
    for (key, value) in patch {
        if let Some(field) = key.strip_prefix("$deleteFromPrimitiveList/") {
            deletions.push((field.to_owned(), value.clone()));
            continue;
        }
        if key.starts_with('$') {
            continue;
        }
        let field_path = format!("{path}/{key}");
        match (field_path.as_str(), value) {
            (_, Value::Null) => {
                target.remove(key);
            }
            ("/metadata/finalizers", Value::Array(items)) => {
                let list = target
                    .entry(key.clone())
                    .or_insert_with(|| Value::Array(Vec::new()));
                if let Value::Array(existing) = list {
                    for item in items {
                        if !existing.contains(item) {
                            existing.push(item.clone());
                        }
                    }
                } else {
                    *list = Value::Array(items.clone());
                }
            }
            ("/metadata/ownerReferences", Value::Array(items)) => {
                let list = target
                    .entry(key.clone())
                    .or_insert_with(|| Value::Array(Vec::new()));
                if !list.is_array() {
                    *list = Value::Array(Vec::new());
                }
                if let Value::Array(existing) = list {
                    merge_by_key(existing, items, "uid");
                }
            }
            (_, Value::Object(inner)) => {
                let slot = target.entry(key.clone()).or_insert(Value::Null);
                strategic_merge(slot, inner, &field_path);
            }
            (_, other) => {
                target.insert(key.clone(), other.clone());
            }
        }
    }
    for (field, remove) in deletions {
        if let (Some(Value::Array(list)), Value::Array(remove)) = (target.get_mut(&field), remove) {
            list.retain(|item| !remove.contains(item));
        }
    }
}

fn merge_by_key(existing: &mut Vec<Value>, items: &[Value], merge_key: &str) {
    for item in items {
        let key = item.get(merge_key).cloned();
        let position = existing
            .iter()
            .position(|e| key.is_some() && e.get(merge_key) == key.as_ref());
        let delete = item.get("$patch").and_then(Value::as_str) == Some("delete");
        match (position, delete) {
            (Some(i), true) => {
                existing.remove(i);
            }
            (None, true) => {}
            (Some(i), false) => {
                if let (Some(slot), Value::Object(fields)) = (existing.get_mut(i), item) {
                    json_patch::merge(slot, &Value::Object(fields.clone()));
                }
            }
            (None, false) => existing.push(item.clone()),
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn merge_patch_replaces_lists_and_null_deletes() {
        let doc = json!({"metadata": {"finalizers": ["a", "b"], "labels": {"x": "1", "y": "2"}}});
        let patch = json!({"metadata": {"finalizers": ["b"], "labels": {"x": null}}});
        let out = apply(PatchKind::Merge, &doc, &patch).unwrap();
        assert_eq!(
            out,
            json!({"metadata": {"finalizers": ["b"], "labels": {"y": "2"}}})
        );
    }

    #[test]
    fn json_patch_test_failure_is_unprocessable() {
        let doc = json!({"metadata": {"resourceVersion": "5"}});
        let failing = json!([{"op": "test", "path": "/metadata/resourceVersion", "value": "4"}]);
        assert_eq!(
            apply(PatchKind::Json, &doc, &failing).unwrap_err().code,
            422
        );
        let passing = json!([
            {"op": "test", "path": "/metadata/resourceVersion", "value": "5"},
            {"op": "add", "path": "/metadata/labels", "value": {"a": "b"}}
        ]);
        let out = apply(PatchKind::Json, &doc, &passing).unwrap();
        assert_eq!(out["metadata"]["labels"]["a"], "b");
    }

    #[test]
    fn strategic_merge_unions_finalizers_and_deletes_from_primitive_list() {
        let doc = json!({"metadata": {"finalizers": ["a", "b"]}});
        let add = json!({"metadata": {"finalizers": ["c"]}});
        let out = apply(PatchKind::Strategic, &doc, &add).unwrap();
        assert_eq!(out["metadata"]["finalizers"], json!(["a", "b", "c"]));
        let remove = json!({"metadata": {"$deleteFromPrimitiveList/finalizers": ["a"]}});
        let out = apply(PatchKind::Strategic, &out, &remove).unwrap();
        assert_eq!(out["metadata"]["finalizers"], json!(["b", "c"]));
    }

    #[test]
    fn strategic_merge_owner_references_by_uid() {
        let doc = json!({"metadata": {"ownerReferences": [{"uid": "1", "name": "a"}, {"uid": "2", "name": "b"}]}});
        let patch = json!({"metadata": {"ownerReferences": [
            {"uid": "1", "$patch": "delete"},
            {"uid": "3", "name": "c"}
        ]}});
        let out = apply(PatchKind::Strategic, &doc, &patch).unwrap();
        assert_eq!(
            out["metadata"]["ownerReferences"],
            json!([{"uid": "2", "name": "b"}, {"uid": "3", "name": "c"}])
        );
    }

    #[test]
    fn apply_accepts_yaml() {
        let v = parse_body(PatchKind::Apply, b"metadata:\n  name: x\n").unwrap();
        assert_eq!(v, json!({"metadata": {"name": "x"}}));
        assert_eq!(
            parse_body(PatchKind::Merge, b"metadata:\n  name: x\n")
                .unwrap_err()
                .code,
            400
        );
    }
}
