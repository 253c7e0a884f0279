//! The object store and its write semantics: metadata the server owns (uid, resourceVersion,
//! timestamps, generation), preconditions, the status subresource, immutable roleRefs, finalizers
//! and `deletionTimestamp`, and the bounded event history that watches replay. It must not know
//! about HTTP; every method is synchronous and runs under the cluster's lock.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use jiff::Timestamp;
use rand::Rng;
use serde_json::{Map, Value, json};

use super::resource::{ResourceKey, ResourceType, Special};
use super::selector::{FieldSelector, LabelSelector};
use super::status::{ApiError, FieldError, quote};
use super::validation;

/// Where an object lives: its type, namespace (`""` for cluster-scoped) and name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct ObjectKey {
    pub(crate) resource: ResourceKey,
    pub(crate) namespace: String,
    pub(crate) name: String,
}

/// The type of a watch event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum EventType {
    Added,
    Modified,
    Deleted,
}

impl EventType {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Added => "ADDED",
            Self::Modified => "MODIFIED",
            Self::Deleted => "DELETED",
        }
    }
}

/// One change, as kept in the history and sent to watchers.
#[derive(Debug, Clone)]
pub(crate) struct WatchRecord {
    pub(crate) revision: u64,
    pub(crate) resource: ResourceKey,
    pub(crate) namespace: String,
    pub(crate) event: EventType,
    pub(crate) object: Value,
    /// The object before the change (for MODIFIED and DELETED), so that selector-filtered
    /// watches can turn a change into ADDED or DELETED when an object enters or leaves the
    /// selection, as the real server does.
    pub(crate) previous: Option<Value>,
}

/// Which part of an object a write targets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Target {
    Main,
    Status,
}

/// How an update came in, for the rules that differ between PUT, PATCH and apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum UpdateKind {
    Put,
    Patch,
    Apply,
}

/// DELETE options the fake honours.
#[derive(Debug, Clone, Default)]
pub(crate) struct DeleteOptions {
    pub(crate) uid: Option<String>,
    pub(crate) resource_version: Option<String>,
    pub(crate) propagation: Option<String>,
}

impl DeleteOptions {
    pub(crate) fn from_body(body: &Value) -> Self {
        let s = |p: &str| body.pointer(p).and_then(Value::as_str).map(str::to_owned);
        let orphan = body.get("orphanDependents").and_then(Value::as_bool);
        Self {
            uid: s("/preconditions/uid"),
            resource_version: s("/preconditions/resourceVersion"),
            propagation: s("/propagationPolicy").or(match orphan {
                Some(true) => Some("Orphan".to_owned()),
                Some(false) => Some("Background".to_owned()),
                None => None,
            }),
        }
    }
}

/// The result of a DELETE: the object as last seen, and whether it is gone (or only marked).
#[derive(Debug, Clone)]
pub(crate) struct Deleted {
    pub(crate) object: Value,
    pub(crate) gone: bool,
}

/// A token issued by a TokenRequest.
#[derive(Debug, Clone)]
pub(crate) struct IssuedToken {
    pub(crate) namespace: String,
    pub(crate) service_account: String,
    pub(crate) uid: String,
    pub(crate) expires_at: Timestamp,
}

#[derive(Debug, Clone)]
pub(crate) struct Store {
    objects: BTreeMap<ObjectKey, Value>,
    revision: u64,
    history: VecDeque<Arc<WatchRecord>>,
    /// The newest revision dropped from the history: a watch from before it gets 410 Gone.
    compacted: u64,
    history_limit: usize,
    pub(crate) tokens: BTreeMap<String, IssuedToken>,
    /// Records committed but not yet broadcast to live watchers.
    pending: Vec<Arc<WatchRecord>>,
}

/// Formats a time the way the API server does (RFC 3339, whole seconds, UTC).
pub(crate) fn rfc3339(ts: Timestamp) -> String {
    Timestamp::from_second(ts.as_second())
        .unwrap_or(ts)
        .to_string()
}

fn new_uid() -> String {
    let n: u128 = rand::random();
    // Version 4, variant 1, like the UUIDs the API server assigns.
    let n = (n & !(0xf << 76) & !(0x3 << 62)) | (0x4 << 76) | (0x2 << 62);
    let hex = format!("{n:032x}");
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

fn generated_suffix() -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut rng = rand::rng();
    (0..5)
        .map(|_| char::from(ALPHABET[rng.random_range(0..ALPHABET.len())]))
        .collect()
}

fn meta(obj: &Value) -> &Value {
    obj.get("metadata").unwrap_or(&Value::Null)
}

fn meta_str<'a>(obj: &'a Value, field: &str) -> Option<&'a str> {
    meta(obj).get(field).and_then(Value::as_str)
}

fn meta_mut(obj: &mut Value) -> Option<&mut Map<String, Value>> {
    if !obj.is_object() {
        *obj = Value::Object(Map::new());
    }
    let m = obj
        .as_object_mut()?
        .entry("metadata")
        .or_insert_with(|| Value::Object(Map::new()));
    if !m.is_object() {
        *m = Value::Object(Map::new());
    }
    m.as_object_mut()
}

fn set_meta(obj: &mut Value, field: &str, value: Value) {
    if let Some(m) = meta_mut(obj) {
        m.insert(field.into(), value);
    }
}

fn remove_meta(obj: &mut Value, field: &str) {
    if let Some(m) = meta_mut(obj) {
        m.remove(field);
    }
}

fn not_an_object() -> ApiError {
    ApiError::bad_request("the body of the request must be a JSON object")
}

pub(crate) fn finalizers(obj: &Value) -> Vec<String> {
    meta(obj)
        .get("finalizers")
        .and_then(Value::as_array)
        .map(|f| {
            f.iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

pub(crate) fn is_deleting(obj: &Value) -> bool {
    meta(obj)
        .get("deletionTimestamp")
        .is_some_and(|v| !v.is_null())
}

/// The object without metadata and status: what `generation` tracks.
fn spec_part(obj: &Value) -> Value {
    let mut o = obj.clone();
    if let Value::Object(m) = &mut o {
        for k in ["metadata", "status", "apiVersion", "kind"] {
            m.remove(k);
        }
    }
    o
}

fn without_revision(obj: &Value) -> Value {
    let mut o = obj.clone();
    remove_meta(&mut o, "resourceVersion");
    o
}

/// Checks `apiVersion`/`kind` in a body against the type and fills them in.
fn check_type(rt: &ResourceType, obj: &mut Value) -> Result<(), ApiError> {
    let Value::Object(o) = obj else {
        return Err(not_an_object());
    };
    let api_version = rt.api_version();
    if let Some(v) = o.get("apiVersion").and_then(Value::as_str)
        && v != api_version
    {
        return Err(ApiError::bad_request(format!(
            "the API version in the data ({v}) does not match the expected API version ({api_version})"
        )));
    }
    if let Some(k) = o.get("kind").and_then(Value::as_str)
        && k != rt.kind
    {
        return Err(ApiError::bad_request(format!(
            "the kind in the data ({k}) does not match the expected kind ({})",
            rt.kind
        )));
    }
    o.insert("apiVersion".into(), api_version.into());
    o.insert("kind".into(), rt.kind.clone().into());
    Ok(())
}

impl Store {
    pub(crate) fn new(history_limit: usize) -> Self {
        Self {
            objects: BTreeMap::new(),
            revision: 0,
            history: VecDeque::new(),
            compacted: 0,
            history_limit: history_limit.max(1),
            tokens: BTreeMap::new(),
            pending: Vec::new(),
        }
    }

    pub(crate) fn revision(&self) -> u64 {
        self.revision
    }

    pub(crate) fn take_pending(&mut self) -> Vec<Arc<WatchRecord>> {
        std::mem::take(&mut self.pending)
    }

    fn key(rt: &ResourceType, namespace: Option<&str>, name: &str) -> ObjectKey {
        ObjectKey {
            resource: rt.key(),
            namespace: if rt.namespaced {
                namespace.unwrap_or("").to_owned()
            } else {
                String::new()
            },
            name: name.to_owned(),
        }
    }

    fn next_revision(&mut self) -> u64 {
        self.revision += 1;
        self.revision
    }

    fn record(
        &mut self,
        key: &ObjectKey,
        event: EventType,
        object: &Value,
        previous: Option<Value>,
    ) {
        let record = Arc::new(WatchRecord {
            revision: self.revision,
            resource: key.resource.clone(),
            namespace: key.namespace.clone(),
            event,
            object: object.clone(),
            previous,
        });
        self.history.push_back(Arc::clone(&record));
        while self.history.len() > self.history_limit {
            if let Some(dropped) = self.history.pop_front() {
                self.compacted = dropped.revision;
            }
        }
        self.pending.push(record);
    }

    pub(crate) fn get(
        &self,
        rt: &ResourceType,
        namespace: Option<&str>,
        name: &str,
    ) -> Result<Value, ApiError> {
        self.objects
            .get(&Self::key(rt, namespace, name))
            .cloned()
            .ok_or_else(|| ApiError::not_found(rt, name))
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = (&ObjectKey, &Value)> {
        self.objects.iter()
    }

    /// Objects of a type, optionally in one namespace, in key order.
    pub(crate) fn list(
        &self,
        rt: &ResourceType,
        namespace: Option<&str>,
        labels: &LabelSelector,
        fields: &FieldSelector,
    ) -> Vec<Value> {
        let resource = rt.key();
        self.objects
            .iter()
            .filter(|(k, _)| k.resource == resource)
            .filter(|(k, _)| namespace.is_none_or(|ns| k.namespace == ns))
            .filter(|(_, v)| labels.matches(v) && fields.matches(v))
            .map(|(_, v)| v.clone())
            .collect()
    }

    /// Checks the namespace an object would be created in (namespace lifecycle admission).
    fn check_namespace(
        &self,
        rt: &ResourceType,
        namespace: &str,
        name: &str,
    ) -> Result<(), ApiError> {
        let key = ObjectKey {
            resource: ResourceKey {
                group: String::new(),
                plural: "namespaces".to_owned(),
            },
            namespace: String::new(),
            name: namespace.to_owned(),
        };
        match self.objects.get(&key) {
            None => Err(ApiError::namespace_not_found(namespace)),
            Some(ns) if is_deleting(ns) => {
                Err(ApiError::namespace_terminating(rt, name, namespace))
            }
            Some(_) => Ok(()),
        }
    }

    fn validate(rt: &ResourceType, name: &str, obj: &Value) -> Result<(), ApiError> {
        let mut errors = validation::metadata(meta(obj));
        errors.extend(validation::object(rt, obj));
        if errors.is_empty() {
            Ok(())
        } else {
            Err(ApiError::invalid(rt, name, &errors))
        }
    }

    /// Creates an object (POST), filling in what the server owns.
    pub(crate) fn create(
        &mut self,
        rt: &ResourceType,
        namespace: Option<&str>,
        mut obj: Value,
        now: Timestamp,
    ) -> Result<Value, ApiError> {
        check_type(rt, &mut obj)?;
        let m = meta_mut(&mut obj).ok_or_else(not_an_object)?;
        if m.get("resourceVersion")
            .and_then(Value::as_str)
            .is_some_and(|v| !v.is_empty())
        {
            // The storage layer refuses this outright; the server reports it as an internal error.
            return Err(ApiError::internal(
                "resourceVersion should not be set on objects to be created",
            ));
        }
        if rt.namespaced {
            let ns = namespace.unwrap_or("");
            match m.get("namespace").and_then(Value::as_str) {
                Some(body_ns) if !body_ns.is_empty() && body_ns != ns => {
                    return Err(ApiError::bad_request(
                        "the namespace of the provided object does not match the namespace sent on the request",
                    ));
                }
                _ => {}
            }
            m.insert("namespace".into(), ns.into());
        } else {
            m.remove("namespace");
        }
        let mut name = m
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned();
        let generate = m
            .get("generateName")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned();
        if name.is_empty() {
            if generate.is_empty() {
                return Err(ApiError::invalid(
                    rt,
                    "",
                    &[FieldError::required(
                        "metadata.name",
                        "name or generateName is required",
                    )],
                ));
            }
            // Like the server: a few attempts at an unused name, then AlreadyExists.
            for _ in 0..8 {
                name = format!("{generate}{}", generated_suffix());
                if !self.objects.contains_key(&Self::key(rt, namespace, &name)) {
                    break;
                }
            }
        }
        m.insert("name".into(), name.clone().into());
        let name_errors = validation::name(rt, &name);
        if !name_errors.is_empty() {
            return Err(ApiError::invalid(rt, &name, &name_errors));
        }
        Self::validate(rt, &name, &obj)?;
        if rt.namespaced {
            self.check_namespace(rt, namespace.unwrap_or(""), &name)?;
        }
        let key = Self::key(rt, namespace, &name);
        if self.objects.contains_key(&key) {
            return Err(ApiError::already_exists(rt, &name));
        }
        let revision = self.next_revision();
        let m = meta_mut(&mut obj).ok_or_else(not_an_object)?;
        for k in [
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "managedFields",
            "selfLink",
        ] {
            m.remove(k);
        }
        m.insert("uid".into(), new_uid().into());
        m.insert("resourceVersion".into(), revision.to_string().into());
        m.insert("creationTimestamp".into(), rfc3339(now).into());
        if rt.custom {
            m.insert("generation".into(), 1.into());
        } else {
            m.remove("generation");
        }
        if let Value::Object(o) = &mut obj {
            if rt.status && rt.custom {
                o.remove("status");
            }
            if rt.special == Special::Namespace {
                o.insert("spec".into(), json!({"finalizers": ["kubernetes"]}));
                o.insert("status".into(), json!({"phase": "Active"}));
            }
        }
        self.objects.insert(key.clone(), obj.clone());
        self.record(&key, EventType::Added, &obj, None);
        Ok(obj)
    }

    /// Replaces an object (PUT, or the result of a PATCH). Returns the stored object and
    /// whether it was created.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn update(
        &mut self,
        rt: &ResourceType,
        namespace: Option<&str>,
        name: &str,
        mut new: Value,
        target: Target,
        kind: UpdateKind,
        now: Timestamp,
    ) -> Result<(Value, bool), ApiError> {
        check_type(rt, &mut new)?;
        let m = meta_mut(&mut new).ok_or_else(not_an_object)?;
        match m.get("name").and_then(Value::as_str) {
            Some(n) if !n.is_empty() && n != name => {
                return Err(ApiError::bad_request(format!(
                    "the name of the object ({n}) does not match the name on the URL ({name})"
                )));
            }
            _ => {
                m.insert("name".into(), name.into());
            }
        }
        if rt.namespaced
            && let Some(body_ns) = m.get("namespace").and_then(Value::as_str)
            && !body_ns.is_empty()
            && Some(body_ns) != namespace
        {
            return Err(ApiError::bad_request(
                "the namespace of the provided object does not match the namespace sent on the request",
            ));
        }
        let key = Self::key(rt, namespace, name);
        let Some(old) = self.objects.get(&key).cloned() else {
            let may_create = target == Target::Main
                && match kind {
                    UpdateKind::Put => rt.allows_create_on_update(),
                    UpdateKind::Apply => true,
                    UpdateKind::Patch => false,
                };
            let has_revision = meta_str(&new, "resourceVersion").is_some_and(|v| !v.is_empty());
            if !may_create || (kind == UpdateKind::Put && has_revision) {
                return Err(ApiError::not_found(rt, name));
            }
            remove_meta(&mut new, "resourceVersion");
            return self.create(rt, namespace, new, now).map(|o| (o, true));
        };
        let old_revision = meta_str(&old, "resourceVersion").unwrap_or("").to_owned();
        match meta_str(&new, "resourceVersion") {
            Some(v) if !v.is_empty() && v != old_revision => {
                return Err(ApiError::stale(rt, name));
            }
            Some(v) if !v.is_empty() => {}
            _ if kind == UpdateKind::Put && !rt.allows_unconditional_update() => {
                return Err(ApiError::invalid(
                    rt,
                    name,
                    &[FieldError::invalid(
                        "metadata.resourceVersion",
                        "0x0",
                        "must be specified for an update",
                    )],
                ));
            }
            _ => {}
        }
        let old_uid = meta_str(&old, "uid").unwrap_or("").to_owned();
        if let Some(uid) = meta_str(&new, "uid")
            && !uid.is_empty()
            && uid != old_uid
        {
            return Err(ApiError::conflict(
                rt,
                name,
                &format!(
                    "Precondition failed: UID in precondition: {uid}, UID in object meta: {old_uid}"
                ),
            ));
        }

        let mut merged = match target {
            Target::Status => {
                let mut o = old.clone();
                if let (Value::Object(o), Value::Object(n)) = (&mut o, &new) {
                    match n.get("status") {
                        Some(s) => o.insert("status".into(), s.clone()),
                        None => o.remove("status"),
                    };
                }
                o
            }
            Target::Main => {
                let mut o = new;
                let old_meta = meta(&old).clone();
                let m = meta_mut(&mut o).ok_or_else(not_an_object)?;
                for k in [
                    "uid",
                    "creationTimestamp",
                    "deletionTimestamp",
                    "deletionGracePeriodSeconds",
                    "generation",
                    "namespace",
                ] {
                    match old_meta.get(k) {
                        Some(v) => m.insert(k.into(), v.clone()),
                        None => m.remove(k),
                    };
                }
                m.remove("managedFields");
                m.remove("selfLink");
                if rt.status
                    && let Value::Object(fields) = &mut o
                {
                    match old.get("status") {
                        Some(s) => fields.insert("status".into(), s.clone()),
                        None => fields.remove("status"),
                    };
                }
                if rt.special == Special::Namespace
                    && let Value::Object(fields) = &mut o
                    && let Some(spec) = old.get("spec")
                {
                    // spec.finalizers of a namespace change only through /finalize.
                    fields.insert("spec".into(), spec.clone());
                }
                o
            }
        };

        Self::validate(rt, name, &merged)?;
        if rt.special == Special::RoleBinding && merged.get("roleRef") != old.get("roleRef") {
            let role_ref = merged.get("roleRef").cloned().unwrap_or(Value::Null);
            let rendered = validation::role_ref_go_syntax(&role_ref);
            return Err(ApiError::invalid(
                rt,
                name,
                &[FieldError::invalid(
                    "roleRef",
                    &rendered,
                    "cannot change roleRef",
                )],
            ));
        }
        if is_deleting(&old) {
            let before = finalizers(&old);
            let added: Vec<String> = finalizers(&merged)
                .into_iter()
                .filter(|f| !before.contains(f))
                .collect();
            if !added.is_empty() {
                let list = added
                    .iter()
                    .map(|f| quote(f))
                    .collect::<Vec<_>>()
                    .join(", ");
                return Err(ApiError::invalid(
                    rt,
                    name,
                    &[FieldError::forbidden(
                        "metadata.finalizers",
                        &format!(
                            "no new finalizers can be added if the object is being deleted, found new finalizers []string{{{list}}}"
                        ),
                    )],
                ));
            }
        }
        if rt.custom && target == Target::Main && spec_part(&merged) != spec_part(&old) {
            let generation = meta(&old)
                .get("generation")
                .and_then(Value::as_i64)
                .unwrap_or(0);
            set_meta(&mut merged, "generation", (generation + 1).into());
        }
        if without_revision(&merged) == without_revision(&old) {
            // A no-op write: the real server skips the storage write, so nothing changes.
            return Ok((old, false));
        }
        let revision = self.next_revision();
        set_meta(&mut merged, "resourceVersion", revision.to_string().into());
        if is_deleting(&merged) && finalizers(&merged).is_empty() {
            self.objects.remove(&key);
            self.record(&key, EventType::Deleted, &merged, Some(old));
        } else {
            self.objects.insert(key.clone(), merged.clone());
            self.record(&key, EventType::Modified, &merged, Some(old));
        }
        Ok((merged, false))
    }

    /// Deletes an object, or marks it for deletion when finalizers hold it.
    pub(crate) fn delete(
        &mut self,
        rt: &ResourceType,
        namespace: Option<&str>,
        name: &str,
        options: &DeleteOptions,
        now: Timestamp,
    ) -> Result<Deleted, ApiError> {
        let key = Self::key(rt, namespace, name);
        let old = self
            .objects
            .get(&key)
            .cloned()
            .ok_or_else(|| ApiError::not_found(rt, name))?;
        if let Some(uid) = &options.uid {
            let actual = meta_str(&old, "uid").unwrap_or("");
            if uid != actual {
                return Err(ApiError::conflict(
                    rt,
                    name,
                    &format!(
                        "Precondition failed: UID in precondition: {uid}, UID in object meta: {actual}"
                    ),
                ));
            }
        }
        if let Some(rv) = &options.resource_version {
            let actual = meta_str(&old, "resourceVersion").unwrap_or("");
            if rv != actual {
                return Err(ApiError::conflict(
                    rt,
                    name,
                    &format!(
                        "Precondition failed: ResourceVersion in precondition: {rv}, ResourceVersion in object meta: {actual}"
                    ),
                ));
            }
        }
        if is_deleting(&old) {
            return Ok(Deleted {
                object: old,
                gone: false,
            });
        }
        let mut pending = finalizers(&old);
        match options.propagation.as_deref() {
            Some("Foreground") => pending.push("foregroundDeletion".to_owned()),
            Some("Orphan") => pending.push("orphan".to_owned()),
            _ => {}
        }
        let held = !pending.is_empty() || rt.special == Special::Namespace;
        let revision = self.next_revision();
        let mut obj = old.clone();
        let m = meta_mut(&mut obj).ok_or_else(not_an_object)?;
        m.insert("resourceVersion".into(), revision.to_string().into());
        if held {
            m.insert("deletionTimestamp".into(), rfc3339(now).into());
            m.insert("deletionGracePeriodSeconds".into(), 0.into());
            if !pending.is_empty() {
                m.insert("finalizers".into(), pending.into());
            }
            if let Some(generation) = m.get("generation").and_then(Value::as_i64)
                && generation > 0
            {
                m.insert("generation".into(), (generation + 1).into());
            }
            if rt.special == Special::Namespace
                && let Value::Object(o) = &mut obj
            {
                o.insert("status".into(), json!({"phase": "Terminating"}));
            }
            self.objects.insert(key.clone(), obj.clone());
            self.record(&key, EventType::Modified, &obj, Some(old));
            Ok(Deleted {
                object: obj,
                gone: false,
            })
        } else {
            self.objects.remove(&key);
            self.record(&key, EventType::Deleted, &obj, Some(old));
            Ok(Deleted {
                object: obj,
                gone: true,
            })
        }
    }

    /// Removes an object outright, bypassing finalizers (what the namespace controller and
    /// garbage collector end with).
    pub(crate) fn remove(&mut self, key: &ObjectKey) -> Option<Value> {
        let old = self.objects.remove(key)?;
        self.next_revision();
        let mut obj = old.clone();
        set_meta(
            &mut obj,
            "resourceVersion",
            self.revision.to_string().into(),
        );
        self.record(key, EventType::Deleted, &obj, Some(old));
        Some(obj)
    }

    /// Deletes a stored object the way a controller's DELETE would (finalizers hold it), without
    /// preconditions. Returns whether anything changed.
    pub(crate) fn delete_key(&mut self, key: &ObjectKey, now: Timestamp) -> bool {
        let Some(old) = self.objects.get(key).cloned() else {
            return false;
        };
        if is_deleting(&old) {
            return false;
        }
        if finalizers(&old).is_empty() {
            return self.remove(key).is_some();
        }
        let mut obj = old.clone();
        self.next_revision();
        set_meta(
            &mut obj,
            "resourceVersion",
            self.revision.to_string().into(),
        );
        set_meta(&mut obj, "deletionTimestamp", rfc3339(now).into());
        set_meta(&mut obj, "deletionGracePeriodSeconds", 0.into());
        self.objects.insert(key.clone(), obj.clone());
        self.record(key, EventType::Modified, &obj, Some(old));
        true
    }

    /// Replaces a stored object's metadata field, as a controller's update would.
    pub(crate) fn set_meta(&mut self, key: &ObjectKey, field: &str, value: Option<Value>) {
        let Some(old) = self.objects.get(key).cloned() else {
            return;
        };
        let mut obj = old.clone();
        match value {
            Some(v) => set_meta(&mut obj, field, v),
            None => remove_meta(&mut obj, field),
        }
        if obj == old {
            return;
        }
        self.next_revision();
        set_meta(
            &mut obj,
            "resourceVersion",
            self.revision.to_string().into(),
        );
        if is_deleting(&obj) && finalizers(&obj).is_empty() {
            self.objects.remove(key);
            self.record(key, EventType::Deleted, &obj, Some(old));
        } else {
            self.objects.insert(key.clone(), obj.clone());
            self.record(key, EventType::Modified, &obj, Some(old));
        }
    }

    /// History records of a type after `revision`, or `Err` when that revision is compacted.
    pub(crate) fn history_since(
        &self,
        resource: &ResourceKey,
        revision: u64,
    ) -> Result<Vec<Arc<WatchRecord>>, ApiError> {
        if revision < self.compacted {
            return Err(ApiError::expired(format!(
                "too old resource version: {revision} ({})",
                self.compacted
            )));
        }
        Ok(self
            .history
            .iter()
            .filter(|r| r.revision > revision && r.resource == *resource)
            .cloned()
            .collect())
    }

    /// Issues a token for a ServiceAccount (the `token` subresource).
    pub(crate) fn issue_token(
        &mut self,
        rt: &ResourceType,
        namespace: &str,
        name: &str,
        request: &Value,
        now: Timestamp,
        max_seconds: Option<i64>,
    ) -> Result<Value, ApiError> {
        let sa = self.get(rt, Some(namespace), name)?;
        let requested = request
            .pointer("/spec/expirationSeconds")
            .and_then(Value::as_i64)
            .unwrap_or(3600);
        let invalid = |detail: &str| {
            ApiError::invalid_kind(
                "TokenRequest.authentication.k8s.io",
                "authentication.k8s.io",
                name,
                &[FieldError::invalid(
                    "spec.expirationSeconds",
                    &requested.to_string(),
                    detail,
                )],
            )
        };
        if requested < 600 {
            return Err(invalid("may not specify a duration less than 10 minutes"));
        }
        if requested > 1 << 32 {
            return Err(invalid(
                "may not specify a duration larger than 2^32 seconds",
            ));
        }
        let seconds = max_seconds.map_or(requested, |max| requested.min(max));
        let expires_at = now
            .checked_add(jiff::SignedDuration::from_secs(seconds))
            .map_err(|e| ApiError::internal(&e.to_string()))?;
        let uid = meta_str(&sa, "uid").unwrap_or("").to_owned();
        let audiences = request
            .pointer("/spec/audiences")
            .and_then(Value::as_array)
            .filter(|a| !a.is_empty())
            .cloned()
            .unwrap_or_else(|| vec!["https://kubernetes.default.svc.cluster.local".into()]);
        let token = super::tokens::encode(&super::tokens::Claims {
            audiences: &audiences,
            namespace,
            service_account: name,
            uid: &uid,
            issued_at: now,
            expires_at,
            jti: &new_uid(),
        });
        if self.tokens.len() >= 10_000 {
            // Expired tokens can never become valid again; keep the map bounded under load.
            self.tokens.retain(|_, t| t.expires_at > now);
        }
        self.tokens.insert(
            token.clone(),
            IssuedToken {
                namespace: namespace.to_owned(),
                service_account: name.to_owned(),
                uid,
                expires_at,
            },
        );
        let mut spec = request.get("spec").cloned().unwrap_or_else(|| json!({}));
        if let Value::Object(s) = &mut spec {
            s.insert("audiences".into(), audiences.into());
            s.insert("expirationSeconds".into(), seconds.into());
        }
        Ok(json!({
            "kind": "TokenRequest",
            "apiVersion": "authentication.k8s.io/v1",
            "metadata": {"name": name, "namespace": namespace, "creationTimestamp": null},
            "spec": spec,
            "status": {"token": token, "expirationTimestamp": rfc3339(expires_at)},
        }))
    }
}
