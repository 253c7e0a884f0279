//! The HTTP face of the fake: URL layout (`/api/v1/...`, `/apis/<group>/<version>/...`),
//! verbs, discovery documents, watch streams, and where injected faults take effect. It turns
//! requests into store operations and store results into responses; it holds no state itself.

use std::collections::{HashMap, VecDeque};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Query, Request, State};
use axum::response::Response;
use http::{HeaderValue, Method, StatusCode, header};
use serde_json::{Value, json};
use tokio::sync::broadcast;

use super::faults::Fault;
use super::inner::{Inner, lock};
use super::patch::{self, PatchKind};
use super::request::{Call, Verb};
use super::resource::{ResourceType, Special};
use super::selector::{FieldSelector, LabelSelector};
use super::status::{ApiError, success_status};
use super::store::{DeleteOptions, EventType, Target, UpdateKind, WatchRecord};

/// Bodies larger than this are refused (the real server's limit is 3 MiB per object).
const MAX_BODY: usize = 8 * 1024 * 1024;
/// How long a watch lasts without `timeoutSeconds` (the real server picks 30–60 minutes).
const DEFAULT_WATCH_SECONDS: u64 = 1800;

pub(crate) fn router(inner: Arc<Inner>) -> Router {
    Router::new().fallback(handle).with_state(inner)
}

fn json_response(code: u16, body: &Value) -> Response {
    let mut response = Response::new(Body::from(body.to_string()));
    *response.status_mut() =
        StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

fn error_response(e: &ApiError) -> Response {
    let mut response = json_response(e.code, &e.to_status());
    if let Some(seconds) = e.retry_after() {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
    }
    response
}

/// A request resolved against the registry.
#[derive(Debug, Clone)]
struct Route {
    rt: ResourceType,
    namespace: Option<String>,
    name: Option<String>,
    subresource: Option<String>,
}

fn parse_route(inner: &Inner, path: &str) -> Result<Route, ApiError> {
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, version, rest) = match segments.as_slice() {
        ["api", version, rest @ ..] => ("", *version, rest),
        ["apis", group, version, rest @ ..] => (*group, *version, rest),
        _ => return Err(ApiError::page_not_found()),
    };
    let registry = inner.registry();
    let find = |plural: &str| registry.find(group, version, plural).cloned();
    let namespaced_type = match rest {
        ["namespaces", _, plural, ..] => find(plural).filter(|t| t.namespaced),
        _ => None,
    };
    let (rt, namespace, tail) = match (namespaced_type, rest) {
        (Some(rt), ["namespaces", ns, _, tail @ ..]) => (rt, Some((*ns).to_owned()), tail),
        (_, [plural, tail @ ..]) => {
            let rt = find(plural).ok_or_else(ApiError::page_not_found)?;
            // A namespaced type is reachable without a namespace only as a collection.
            if rt.namespaced && !tail.is_empty() {
                return Err(ApiError::page_not_found());
            }
            (rt, None, tail)
        }
        _ => return Err(ApiError::page_not_found()),
    };
    let (name, subresource) = match tail {
        [] => (None, None),
        [name] => (Some((*name).to_owned()), None),
        [name, sub] => (Some((*name).to_owned()), Some((*sub).to_owned())),
        _ => return Err(ApiError::page_not_found()),
    };
    let sub_ok = match subresource.as_deref() {
        None => true,
        Some("status") => rt.status,
        Some("token") => rt.special == Special::ServiceAccount,
        Some(_) => false,
    };
    if !sub_ok || name.as_deref() == Some("") {
        return Err(ApiError::page_not_found());
    }
    Ok(Route {
        rt,
        namespace,
        name,
        subresource,
    })
}

fn classify(method: &Method, route: &Route, query: &HashMap<String, String>) -> Option<Verb> {
    let watch = query.get("watch").is_some_and(|w| w == "true" || w == "1");
    let named = route.name.is_some();
    if route.rt.special == Special::AccessReview {
        return (*method == Method::POST && !named).then_some(Verb::Create);
    }
    match (method.clone(), named, route.subresource.as_deref()) {
        (Method::GET, false, _) if watch => Some(Verb::Watch),
        (Method::GET, false, _) => Some(Verb::List),
        (Method::GET, true, Some("token")) => None,
        (Method::GET, true, _) => Some(Verb::Get),
        (Method::POST, false, _) => Some(Verb::Create),
        (Method::POST, true, Some("token")) => Some(Verb::Create),
        (Method::PUT, true, sub) if sub != Some("token") => Some(Verb::Update),
        (Method::PATCH, true, sub) if sub != Some("token") => Some(Verb::Patch),
        (Method::DELETE, true, None) => Some(Verb::Delete),
        (Method::DELETE, false, _) if route.namespace.is_some() || !route.rt.namespaced => {
            Some(Verb::DeleteCollection)
        }
        _ => None,
    }
}

async fn handle(State(inner): State<Arc<Inner>>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let body = match axum::body::to_bytes(body, MAX_BODY).await {
        Ok(b) => b,
        Err(e) => return error_response(&ApiError::bad_request(format!("reading the body: {e}"))),
    };
    let path = parts.uri.path().to_owned();
    if parts.method == Method::GET
        && let Some(document) = super::http::discovery(&inner, &path)
    {
        return json_response(200, &document);
    }
    let query: HashMap<String, String> = Query::try_from_uri(&parts.uri)
        .map(|Query(q)| q)
        .unwrap_or_default();
    let route = match parse_route(&inner, &path) {
        Ok(r) => r,
        Err(e) => return error_response(&e),
    };
    let Some(verb) = classify(&parts.method, &route, &query) else {
        return error_response(&ApiError::method_not_allowed());
    };
    let body_name = || {
        serde_json::from_slice::<Value>(&body).ok().and_then(|v| {
            v.pointer("/metadata/name")
                .and_then(Value::as_str)
                .map(str::to_owned)
        })
    };
    let call = Call {
        verb,
        group: route.rt.group.clone(),
        resource: route.rt.plural.clone(),
        subresource: route.subresource.clone(),
        namespace: route.namespace.clone(),
        name: route.name.clone().or_else(|| {
            if verb == Verb::Create {
                body_name()
            } else {
                None
            }
        }),
        code: 0,
    };
    let name_for_errors = call.name.clone().unwrap_or_default();
    let (index, fault) = lock(&inner.faults).record(call);
    let header_text = |name: header::HeaderName| {
        parts
            .headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned()
    };
    let content_type = header_text(header::CONTENT_TYPE);
    let representation = Representation::from_accept(&header_text(header::ACCEPT));
    let response = match fault {
        Some(f) if !f.after_commit => fault_response(&f.fault, &route.rt, &name_for_errors).await,
        fault => {
            let response = dispatch(
                &inner,
                verb,
                &route,
                &query,
                &content_type,
                &body,
                representation,
            )
            .await;
            match fault {
                Some(f) => fault_response(&f.fault, &route.rt, &name_for_errors).await,
                None => response,
            }
        }
    };
    lock(&inner.faults).finish(index, response.status().as_u16());
    response
}

async fn fault_response(fault: &Fault, rt: &ResourceType, name: &str) -> Response {
    let error = match fault {
        Fault::InternalError => ApiError::internal("injected fault"),
        Fault::Conflict => ApiError::stale(rt, name),
        Fault::TooManyRequests {
            retry_after_seconds,
        } => ApiError::too_many_requests(*retry_after_seconds),
        Fault::Timeout { after } => {
            tokio::time::sleep(*after).await;
            ApiError::timeout()
        }
    };
    error_response(&error)
}

fn parse_json(body: &Bytes) -> Result<Value, ApiError> {
    serde_json::from_slice(body).map_err(|e| {
        ApiError::bad_request(format!("couldn't get version/kind; json parse error: {e}"))
    })
}

/// What the client asked for with its `Accept` header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Representation {
    Full,
    /// `as=PartialObjectMetadata[List]`: kube's `get_metadata`, `list_metadata` and
    /// `metadata_watcher`.
    Metadata,
}

impl Representation {
    fn from_accept(accept: &str) -> Self {
        if accept.contains("as=PartialObjectMetadata") {
            Self::Metadata
        } else {
            Self::Full
        }
    }

    /// Renders an object (or list) the way it was asked for; `Status` bodies pass through.
    fn render(self, value: Value) -> Value {
        if self == Self::Full || value.get("kind").and_then(Value::as_str) == Some("Status") {
            return value;
        }
        let partial = |obj: &Value| {
            json!({
                "apiVersion": "meta.k8s.io/v1",
                "kind": "PartialObjectMetadata",
                "metadata": obj.get("metadata").cloned().unwrap_or_else(|| json!({})),
            })
        };
        match value.get("items").and_then(Value::as_array) {
            Some(items) => json!({
                "apiVersion": "meta.k8s.io/v1",
                "kind": "PartialObjectMetadataList",
                "metadata": value.get("metadata").cloned().unwrap_or_else(|| json!({})),
                "items": items.iter().map(partial).collect::<Vec<_>>(),
            }),
            None => partial(&value),
        }
    }
}

async fn dispatch(
    inner: &Arc<Inner>,
    verb: Verb,
    route: &Route,
    query: &HashMap<String, String>,
    content_type: &str,
    body: &Bytes,
    representation: Representation,
) -> Response {
    let result = match verb {
        Verb::Watch => return watch(Arc::clone(inner), route, query, representation),
        Verb::Create => create(inner, route, query, body),
        Verb::Get => get(inner, route),
        Verb::List => list(inner, route, query),
        Verb::Update => update(inner, route, query, body),
        Verb::Patch => patch(inner, route, query, content_type, body),
        Verb::Delete => delete(inner, route, query, body),
        Verb::DeleteCollection => delete_collection(inner, route, query, body),
    };
    match result {
        Ok((code, value)) => json_response(code, &representation.render(value)),
        Err(e) => error_response(&e),
    }
}

type Answer = Result<(u16, Value), ApiError>;

fn dry_run(query: &HashMap<String, String>) -> bool {
    query.get("dryRun").is_some_and(|d| d == "All")
}

fn name_of(route: &Route) -> &str {
    route.name.as_deref().unwrap_or("")
}

fn create(inner: &Inner, route: &Route, query: &HashMap<String, String>, body: &Bytes) -> Answer {
    let obj = parse_json(body)?;
    let now = inner.clock.now();
    if route.rt.special == Special::AccessReview {
        return Ok((201, lock(&inner.access).review(obj)));
    }
    if route.subresource.as_deref() == Some("token") {
        let ns = route.namespace.clone().unwrap_or_default();
        let max = inner.max_token_seconds;
        return inner
            .mutate(dry_run(query), |s| {
                s.issue_token(&route.rt, &ns, name_of(route), &obj, now, max)
            })
            .map(|v| (201, v));
    }
    inner
        .mutate(dry_run(query), |s| {
            s.create(&route.rt, route.namespace.as_deref(), obj, now)
        })
        .map(|v| (201, v))
}

fn get(inner: &Inner, route: &Route) -> Answer {
    lock(&inner.store)
        .get(&route.rt, route.namespace.as_deref(), name_of(route))
        .map(|v| (200, v))
}

fn selectors(query: &HashMap<String, String>) -> Result<(LabelSelector, FieldSelector), ApiError> {
    let labels = LabelSelector::parse(query.get("labelSelector").map_or("", String::as_str))?;
    let fields = FieldSelector::parse(query.get("fieldSelector").map_or("", String::as_str))?;
    Ok((labels, fields))
}

fn list_document(rt: &ResourceType, revision: u64, items: &[Value]) -> Value {
    json!({
        "apiVersion": rt.api_version(),
        "kind": format!("{}List", rt.kind),
        "metadata": {"resourceVersion": revision.to_string()},
        "items": items,
    })
}

fn list(inner: &Inner, route: &Route, query: &HashMap<String, String>) -> Answer {
    let (labels, fields) = selectors(query)?;
    let store = lock(&inner.store);
    let items = store.list(&route.rt, route.namespace.as_deref(), &labels, &fields);
    Ok((200, list_document(&route.rt, store.revision(), &items)))
}

fn target(route: &Route) -> Target {
    if route.subresource.as_deref() == Some("status") {
        Target::Status
    } else {
        Target::Main
    }
}

fn update(inner: &Inner, route: &Route, query: &HashMap<String, String>, body: &Bytes) -> Answer {
    let obj = parse_json(body)?;
    let now = inner.clock.now();
    inner
        .mutate(dry_run(query), |s| {
            s.update(
                &route.rt,
                route.namespace.as_deref(),
                name_of(route),
                obj,
                target(route),
                UpdateKind::Put,
                now,
            )
        })
        .map(|(v, created)| (if created { 201 } else { 200 }, v))
}

fn patch(
    inner: &Inner,
    route: &Route,
    query: &HashMap<String, String>,
    content_type: &str,
    body: &Bytes,
) -> Answer {
    let accepted = if route.rt.custom {
        patch::ACCEPTED_FOR_CUSTOM
    } else {
        patch::ACCEPTED_FOR_BUILTIN
    };
    let kind = PatchKind::from_content_type(content_type)
        .filter(|k| !(route.rt.custom && *k == PatchKind::Strategic))
        .ok_or_else(|| ApiError::unsupported_media_type(accepted))?;
    if kind == PatchKind::Apply && query.get("fieldManager").is_none_or(String::is_empty) {
        return Err(ApiError::invalid_kind(
            "PatchOptions.meta.k8s.io",
            "meta.k8s.io",
            "",
            &[super::status::FieldError::required(
                "fieldManager",
                "is required for apply patch",
            )],
        ));
    }
    let patch_body = patch::parse_body(kind, body)?;
    let now = inner.clock.now();
    let name = name_of(route);
    let ns = route.namespace.as_deref();
    inner
        .mutate(dry_run(query), |s| {
            let current = match s.get(&route.rt, ns, name) {
                Ok(current) => current,
                Err(e) if kind == PatchKind::Apply && target(route) == Target::Main && e.code == 404 => {
                    let mut meta = json!({"name": name});
                    if let Some(ns) = ns {
                        meta["namespace"] = json!(ns);
                    }
                    json!({"apiVersion": route.rt.api_version(), "kind": route.rt.kind, "metadata": meta})
                }
                Err(e) => return Err(e),
            };
            let patched = patch::apply(kind, &current, &patch_body)?;
            let update_kind = if kind == PatchKind::Apply {
                UpdateKind::Apply
            } else {
                UpdateKind::Patch
            };
            s.update(&route.rt, ns, name, patched, target(route), update_kind, now)
        })
        .map(|(v, created)| (if created { 201 } else { 200 }, v))
}

fn delete_options(
    query: &HashMap<String, String>,
    body: &Bytes,
) -> Result<DeleteOptions, ApiError> {
    let mut options = if body.iter().all(u8::is_ascii_whitespace) {
        DeleteOptions::default()
    } else {
        DeleteOptions::from_body(&parse_json(body)?)
    };
    if options.propagation.is_none() {
        options.propagation = query.get("propagationPolicy").cloned();
    }
    Ok(options)
}

fn delete(inner: &Inner, route: &Route, query: &HashMap<String, String>, body: &Bytes) -> Answer {
    let options = delete_options(query, body)?;
    let now = inner.clock.now();
    let name = name_of(route);
    let deleted = inner.mutate(dry_run(query), |s| {
        s.delete(&route.rt, route.namespace.as_deref(), name, &options, now)
    })?;
    if deleted.gone && !route.rt.returns_deleted_object() {
        let uid = deleted
            .object
            .pointer("/metadata/uid")
            .and_then(Value::as_str)
            .unwrap_or("");
        return Ok((200, success_status(&route.rt, name, uid)));
    }
    Ok((200, deleted.object))
}

fn delete_collection(
    inner: &Inner,
    route: &Route,
    query: &HashMap<String, String>,
    body: &Bytes,
) -> Answer {
    let (labels, fields) = selectors(query)?;
    let options = delete_options(query, body)?;
    let now = inner.clock.now();
    inner.mutate(dry_run(query), |s| {
        let targets = s.list(&route.rt, route.namespace.as_deref(), &labels, &fields);
        let mut deleted = Vec::new();
        for obj in targets {
            let name = obj
                .pointer("/metadata/name")
                .and_then(Value::as_str)
                .unwrap_or("");
            let ns = obj.pointer("/metadata/namespace").and_then(Value::as_str);
            deleted.push(s.delete(&route.rt, ns, name, &options, now)?.object);
        }
        Ok((200, list_document(&route.rt, s.revision(), &deleted)))
    })
}

/// What a watch sends: the resource, namespace and selectors it follows.
struct WatchFilter {
    route: Route,
    labels: LabelSelector,
    fields: FieldSelector,
    representation: Representation,
}

impl WatchFilter {
    fn selects(&self, obj: &Value) -> bool {
        self.labels.matches(obj) && self.fields.matches(obj)
    }

    /// The line to send for a record, if any. An object entering the selection is ADDED and one
    /// leaving it is DELETED, as the real server reports them.
    fn line(&self, record: &WatchRecord) -> Option<Bytes> {
        if record.resource != self.route.rt.key()
            || self
                .route
                .namespace
                .as_ref()
                .is_some_and(|ns| *ns != record.namespace)
        {
            return None;
        }
        let now = self.selects(&record.object);
        let before = record.previous.as_ref().is_some_and(|p| self.selects(p));
        let event = match record.event {
            EventType::Added => now.then_some(EventType::Added),
            EventType::Modified => match (before, now) {
                (true, true) => Some(EventType::Modified),
                (false, true) => Some(EventType::Added),
                (true, false) => Some(EventType::Deleted),
                (false, false) => None,
            },
            EventType::Deleted => (before || now).then_some(EventType::Deleted),
        }?;
        Some(self.event(event.as_str(), &record.object))
    }

    fn event(&self, kind: &str, object: &Value) -> Bytes {
        event_line(kind, &self.representation.render(object.clone()))
    }
}

fn event_line(kind: &str, object: &Value) -> Bytes {
    let mut line = json!({"type": kind, "object": object}).to_string();
    line.push('\n');
    Bytes::from(line)
}

struct WatchState {
    inner: Arc<Inner>,
    queued: VecDeque<Bytes>,
    done: bool,
    bookmarks: bool,
    receiver: broadcast::Receiver<Arc<WatchRecord>>,
    filter: WatchFilter,
    deadline: Pin<Box<tokio::time::Sleep>>,
}

impl WatchState {
    /// Ends the watch. With bookmarks allowed, first sends what is already committed and a
    /// BOOKMARK at the current resourceVersion, so the client resumes from there instead of
    /// from a revision that may be compacted by then.
    fn finish(&mut self) {
        self.done = true;
        if !self.bookmarks {
            return;
        }
        let store = lock(&self.inner.store);
        // Every record up to this revision was sent while the store lock was held, so it is
        // already in the channel: drain it before marking the revision as seen.
        loop {
            match self.receiver.try_recv() {
                Ok(record) => self.queued.extend(self.filter.line(&record)),
                Err(broadcast::error::TryRecvError::Lagged(_)) => {
                    self.queued.push_back(lagged_line());
                    return;
                }
                Err(_) => break,
            }
        }
        let rt = &self.filter.route.rt;
        self.queued.push_back(event_line(
            "BOOKMARK",
            &json!({
                "apiVersion": rt.api_version(),
                "kind": rt.kind,
                "metadata": {"resourceVersion": store.revision().to_string()},
            }),
        ));
    }
}

fn lagged_line() -> Bytes {
    let expired = ApiError::expired("the watcher fell behind; too old resource version".to_owned());
    event_line("ERROR", &expired.to_status())
}

fn watch(
    inner: Arc<Inner>,
    route: &Route,
    query: &HashMap<String, String>,
    representation: Representation,
) -> Response {
    let (labels, fields) = match selectors(query) {
        Ok(s) => s,
        Err(e) => return error_response(&e),
    };
    let seconds = query
        .get("timeoutSeconds")
        .and_then(|t| t.parse::<u64>().ok())
        .unwrap_or(DEFAULT_WATCH_SECONDS);
    let filter = WatchFilter {
        route: route.clone(),
        labels,
        fields,
        representation,
    };
    let from = query
        .get("resourceVersion")
        .map(String::as_str)
        .unwrap_or("");
    let (queued, done, receiver) = {
        let store = lock(&inner.store);
        // Subscribing under the store lock: every change is either in the history read below
        // or arrives on the receiver, never both, never neither.
        let receiver = inner.events.subscribe();
        let mut queued = VecDeque::new();
        let mut done = false;
        if from.is_empty() || from == "0" {
            for obj in store.list(
                &route.rt,
                route.namespace.as_deref(),
                &filter.labels,
                &filter.fields,
            ) {
                queued.push_back(filter.event("ADDED", &obj));
            }
        } else {
            let Ok(revision) = from.parse::<u64>() else {
                return error_response(&ApiError::bad_request(format!(
                    "invalid resource version: {from}"
                )));
            };
            match store.history_since(&route.rt.key(), revision) {
                Ok(records) => queued.extend(records.iter().filter_map(|r| filter.line(r))),
                Err(e) => {
                    queued.push_back(event_line("ERROR", &e.to_status()));
                    done = true;
                }
            }
        }
        (queued, done, receiver)
    };
    let bookmarks = query
        .get("allowWatchBookmarks")
        .is_some_and(|b| b == "true" || b == "1");
    let state = WatchState {
        inner,
        queued,
        done,
        bookmarks,
        receiver,
        filter,
        deadline: Box::pin(tokio::time::sleep(Duration::from_secs(seconds))),
    };
    let stream = futures::stream::unfold(state, |mut state| async move {
        loop {
            if let Some(line) = state.queued.pop_front() {
                return Some((Ok::<_, std::convert::Infallible>(line), state));
            }
            if state.done {
                return None;
            }
            tokio::select! {
                () = &mut state.deadline => state.finish(),
                received = state.receiver.recv() => match received {
                    Ok(record) => state.queued.extend(state.filter.line(&record)),
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        state.queued.push_back(lagged_line());
                        state.done = true;
                    }
                    Err(broadcast::error::RecvError::Closed) => state.done = true,
                },
            }
        }
    });
    let mut response = Response::new(Body::from_stream(stream));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

fn api_resource(rt: &ResourceType) -> Vec<Value> {
    let verbs: Vec<&str> = if rt.special == Special::AccessReview {
        vec!["create"]
    } else {
        vec![
            "create",
            "delete",
            "deletecollection",
            "get",
            "list",
            "patch",
            "update",
            "watch",
        ]
    };
    let mut resources = vec![json!({
        "name": rt.plural,
        "singularName": rt.kind.to_lowercase(),
        "namespaced": rt.namespaced,
        "kind": rt.kind,
        "verbs": verbs,
        "shortNames": rt.short_names,
    })];
    if rt.status {
        resources.push(json!({
            "name": format!("{}/status", rt.plural),
            "singularName": "",
            "namespaced": rt.namespaced,
            "kind": rt.kind,
            "verbs": ["get", "patch", "update"],
        }));
    }
    if rt.special == Special::ServiceAccount {
        resources.push(json!({
            "name": "serviceaccounts/token",
            "singularName": "",
            "namespaced": true,
            "group": "authentication.k8s.io",
            "version": "v1",
            "kind": "TokenRequest",
            "verbs": ["create"],
        }));
    }
    resources
}

fn group_document(name: &str, versions: &[&str]) -> Value {
    let versions: Vec<Value> = versions
        .iter()
        .map(|v| json!({"groupVersion": format!("{name}/{v}"), "version": v}))
        .collect();
    json!({
        "name": name,
        "versions": versions,
        "preferredVersion": versions.first().cloned().unwrap_or(Value::Null),
    })
}

/// The discovery documents kubectl reads (legacy discovery; kubectl falls back to it).
pub(crate) fn discovery(inner: &Inner, path: &str) -> Option<Value> {
    let registry = inner.registry();
    let resource_list = |group: &str, version: &str| {
        let resources: Vec<Value> = registry
            .all()
            .iter()
            .filter(|t| t.group == group && t.version == version)
            .flat_map(api_resource)
            .collect();
        (!resources.is_empty()).then(|| {
            json!({
                "kind": "APIResourceList",
                "apiVersion": "v1",
                "groupVersion": if group.is_empty() { version.to_owned() } else { format!("{group}/{version}") },
                "resources": resources,
            })
        })
    };
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    match segments.as_slice() {
        ["version"] => Some(json!({
            "major": "1",
            "minor": "36",
            "gitVersion": "v1.36.0-tka-fake",
            "platform": "linux/amd64",
        })),
        ["api"] => Some(json!({
            "kind": "APIVersions",
            "versions": ["v1"],
            "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1"}],
        })),
        ["api", version] => resource_list("", version),
        ["apis"] => Some(json!({
            "kind": "APIGroupList",
            "apiVersion": "v1",
            "groups": registry
                .groups()
                .iter()
                .map(|(name, versions)| group_document(name, versions))
                .collect::<Vec<_>>(),
        })),
        ["apis", group] => registry.groups().get(group).map(|versions| {
            let mut doc = group_document(group, versions);
            doc["kind"] = json!("APIGroup");
            doc["apiVersion"] = json!("v1");
            doc
        }),
        ["apis", group, version] => resource_list(group, version),
        _ => None,
    }
}
