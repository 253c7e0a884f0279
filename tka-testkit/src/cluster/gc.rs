//! What kube-controller-manager would do, on demand only: the garbage collector (dependents of
//! vanished owners, `foregroundDeletion` and `orphan` finalizers) and the namespace controller
//! (emptying and removing terminating namespaces). The fake never runs this by itself, so nothing
//! can come to depend on it.

use std::collections::{BTreeMap, BTreeSet};

use jiff::Timestamp;
use serde_json::Value;

use super::store::{ObjectKey, Store, finalizers, is_deleting};

fn uid(obj: &Value) -> Option<&str> {
    obj.pointer("/metadata/uid").and_then(Value::as_str)
}

fn owner_uids(obj: &Value) -> Vec<String> {
    obj.pointer("/metadata/ownerReferences")
        .and_then(Value::as_array)
        .map(|refs| {
            refs.iter()
                .filter_map(|r| r.get("uid").and_then(Value::as_str))
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

fn without_owner(obj: &Value, gone: &BTreeSet<String>) -> Value {
    let refs = obj
        .pointer("/metadata/ownerReferences")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    Value::Array(
        refs.into_iter()
            .filter(|r| {
                r.get("uid")
                    .and_then(Value::as_str)
                    .is_none_or(|u| !gone.contains(u))
            })
            .collect(),
    )
}

fn without_finalizer(obj: &Value, finalizer: &str) -> Value {
    Value::Array(
        finalizers(obj)
            .into_iter()
            .filter(|f| f != finalizer)
            .map(Value::from)
            .collect(),
    )
}

/// One pass; returns whether anything changed.
fn pass(store: &mut Store, now: Timestamp, removed: &mut usize) -> bool {
    let snapshot: BTreeMap<ObjectKey, Value> =
        store.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    let live: BTreeMap<String, &Value> = snapshot
        .values()
        .filter_map(|v| uid(v).map(|u| (u.to_owned(), v)))
        .collect();
    let mut changed = false;
    let before = snapshot.len();

    for (key, obj) in &snapshot {
        // The namespace controller: empty a terminating namespace, then remove it.
        if key.resource.group.is_empty() && key.resource.plural == "namespaces" && is_deleting(obj)
        {
            let contents: Vec<&ObjectKey> = snapshot
                .keys()
                .filter(|k| k.namespace == key.name)
                .collect();
            for k in &contents {
                changed |= store.delete_key(k, now);
            }
            if contents.is_empty() {
                changed |= store.remove(key).is_some();
            }
            continue;
        }
        let Some(my_uid) = uid(obj) else { continue };
        let dependents: Vec<&ObjectKey> = snapshot
            .iter()
            .filter(|(_, v)| owner_uids(v).iter().any(|u| u == my_uid))
            .map(|(k, _)| k)
            .collect();
        let pending = finalizers(obj);
        if is_deleting(obj) && pending.iter().any(|f| f == "foregroundDeletion") {
            for k in &dependents {
                changed |= store.delete_key(k, now);
            }
            if dependents.is_empty() {
                store.set_meta(
                    key,
                    "finalizers",
                    Some(without_finalizer(obj, "foregroundDeletion")),
                );
                changed = true;
            }
            continue;
        }
        if is_deleting(obj) && pending.iter().any(|f| f == "orphan") {
            let me: BTreeSet<String> = [my_uid.to_owned()].into();
            for k in &dependents {
                if let Some(dep) = snapshot.get(*k) {
                    store.set_meta(k, "ownerReferences", Some(without_owner(dep, &me)));
                }
            }
            store.set_meta(key, "finalizers", Some(without_finalizer(obj, "orphan")));
            changed = true;
            continue;
        }
        // The garbage collector: dependents whose owners are all gone are deleted; references
        // to vanished owners are dropped while another owner remains.
        let owners = owner_uids(obj);
        if owners.is_empty() {
            continue;
        }
        let gone: BTreeSet<String> = owners
            .iter()
            .filter(|u| !live.contains_key(*u))
            .cloned()
            .collect();
        if gone.len() == owners.len() {
            changed |= store.delete_key(key, now);
        } else if !gone.is_empty() {
            store.set_meta(key, "ownerReferences", Some(without_owner(obj, &gone)));
            changed = true;
        }
    }
    let after = store.iter().count();
    *removed += before.saturating_sub(after);
    changed
}

/// Runs the garbage collector and namespace controller until nothing changes; returns how many
/// objects were removed.
pub(crate) fn collect(store: &mut Store, now: Timestamp) -> usize {
    let mut removed = 0;
    // Each pass removes or releases at least one object while it changes anything, so the
    // number of objects (plus a margin for finalizer removals) bounds the passes.
    let bound = store.iter().count().saturating_mul(2).saturating_add(2);
    for _ in 0..bound {
        if !pass(store, now, &mut removed) {
            break;
        }
    }
    removed
}
