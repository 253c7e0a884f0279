//! `FakeCluster`: an in-process, stateful fake of the part of the Kubernetes API that tka uses,
//! driven by kube's real client (in process, or over plain HTTP on loopback for kubectl).
//!
//! It follows the real API server where tka can notice the difference: server-owned metadata,
//! `AlreadyExists`/`NotFound`/`Conflict`/`Invalid` as `metav1.Status` bodies, resourceVersion
//! preconditions, the status subresource, immutable roleRefs, finalizers and `deletionTimestamp`,
//! UID preconditions on DELETE, namespace lifecycle, TokenRequest limits, label and field
//! selectors, and watches that kube-runtime's watcher can follow. Like an API server without
//! kube-controller-manager it never garbage-collects by itself; tests that want a collector call
//! [`FakeCluster::run_garbage_collection`].
//!
//! Known simplifications (documented so nobody relies on them):
//! - LIST ignores `limit`/`continue` and returns everything, with the current resourceVersion;
//!   a LIST's `resourceVersion` parameter is ignored (always the latest state).
//! - Watches send one BOOKMARK, when they end (if the client allows bookmarks), instead of
//!   periodic ones; a watch from a resourceVersion older than the bounded event history gets an
//!   `ERROR` event with 410 `Expired`, as from the real watch cache.
//! - `Accept: ...;as=PartialObjectMetadata[List]` (kube's `*_metadata` calls and
//!   `metadata_watcher`) is honoured; `as=Table` is not (kubectl falls back to plain lists).
//! - Strategic merge patch is merge patch plus set/keyed semantics for `metadata.finalizers` and
//!   `metadata.ownerReferences` (built-in types only; custom resources answer 415 as for real).
//!   Server-side apply is a merge patch that creates missing objects, without field ownership.
//! - There is no authentication and no RBAC enforcement; `SelfSubjectAccessReview`s are answered
//!   from an [`AccessPolicy`] (allow everything by default).
//! - `dryRun=All` is honoured; `fieldManager` is required for apply and otherwise ignored.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use k8s_openapi::api::core::v1::ServiceAccount;
//! use kube::api::{Api, PostParams};
//! use tka_testkit::cluster::{Fault, FakeCluster, Verb};
//!
//! let cluster = FakeCluster::new();
//! cluster.fail_nth(Verb::Create, "serviceaccounts", 1, Fault::InternalError);
//! let sas: Api<ServiceAccount> = Api::namespaced(cluster.client(), "tka-system");
//! let sa: ServiceAccount = serde_json::from_value(serde_json::json!({"metadata": {"name": "a"}}))?;
//! assert!(sas.create(&PostParams::default(), &sa).await.is_err());
//! sas.create(&PostParams::default(), &sa).await?;
//! assert_eq!(cluster.objects("serviceaccounts").len(), 1);
//! # Ok(()) }
//! ```

mod access;
mod faults;
mod gc;
mod http;
mod inner;
mod patch;
mod request;
mod resource;
mod selector;
mod status;
mod store;
mod tokens;
mod validation;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use tka_core::{Clock, SystemClock};
use tokio::sync::broadcast;
use tower::{BoxError, ServiceBuilder};

pub use access::{AccessPolicy, AccessRule};
pub use faults::{Fault, FaultRule};
pub use request::{Call, RequestMatch, Verb};
pub use resource::{NameRule, ResourceType};
pub use selector::LabelSelector;
pub use status::ApiError;

use faults::Faults;
use inner::{Inner, lock};
use resource::Registry;
use store::{DeleteOptions, Store};

/// Builds a [`FakeCluster`] with a chosen clock, token limit, history size and seed.
#[derive(Debug)]
pub struct FakeClusterBuilder {
    clock: Arc<dyn Clock>,
    max_token_expiration: Option<Duration>,
    history_limit: usize,
    seed: bool,
    record_calls: bool,
    extra: Vec<ResourceType>,
}

impl FakeClusterBuilder {
    /// Whether to keep the call log (default: yes). Load tests turn it off so memory stays flat;
    /// fault rules apply either way.
    #[must_use]
    pub fn record_calls(mut self, record: bool) -> Self {
        self.record_calls = record;
        self
    }

    /// The clock for creation and deletion timestamps and token expiry (default: system clock).
    #[must_use]
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// Caps TokenRequest lifetimes, like `--service-account-max-token-expiration` (default: none).
    #[must_use]
    pub fn max_token_expiration(mut self, max: Duration) -> Self {
        self.max_token_expiration = Some(max);
        self
    }

    /// How many changes the watch history keeps (default 1000); older resourceVersions get 410.
    #[must_use]
    pub fn history_limit(mut self, changes: usize) -> Self {
        self.history_limit = changes;
        self
    }

    /// Starts with no objects at all instead of the default namespaces and ClusterRoles.
    #[must_use]
    pub fn empty(mut self) -> Self {
        self.seed = false;
        self
    }

    /// Serves an extra resource type.
    #[must_use]
    pub fn resource(mut self, rt: ResourceType) -> Self {
        self.extra.push(rt);
        self
    }

    /// The cluster.
    pub fn build(self) -> FakeCluster {
        let mut registry = Registry::with_defaults();
        for rt in self.extra {
            registry.register(rt);
        }
        let (events, _) = broadcast::channel(4096);
        let mut faults = Faults::default();
        faults.set_recording(self.record_calls);
        let cluster = FakeCluster {
            inner: Arc::new(Inner {
                registry: RwLock::new(registry),
                store: Mutex::new(Store::new(self.history_limit)),
                faults: Mutex::new(faults),
                access: Mutex::new(AccessPolicy::default()),
                events,
                clock: self.clock,
                max_token_seconds: self
                    .max_token_expiration
                    .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX)),
            }),
        };
        if self.seed {
            cluster.seed();
        }
        cluster
    }
}

/// The fake API server. Clones share the same state.
#[derive(Debug, Clone)]
pub struct FakeCluster {
    inner: Arc<Inner>,
}

impl Default for FakeCluster {
    fn default() -> Self {
        Self::new()
    }
}

/// Namespaces every seeded cluster has.
pub const SEEDED_NAMESPACES: &[&str] = &[
    "default",
    "kube-system",
    "kube-public",
    "kube-node-lease",
    "tka-system",
];

impl FakeCluster {
    /// A cluster on the system clock, seeded with [`SEEDED_NAMESPACES`] and the ClusterRoles
    /// `cluster-admin`, `admin`, `edit` and `view`.
    pub fn new() -> Self {
        Self::builder().build()
    }

    /// A builder for a cluster with a chosen clock, token limit or history size.
    pub fn builder() -> FakeClusterBuilder {
        FakeClusterBuilder {
            clock: Arc::new(SystemClock),
            max_token_expiration: None,
            history_limit: 1000,
            seed: true,
            record_calls: true,
            extra: Vec::new(),
        }
    }

    fn seed(&self) {
        for ns in SEEDED_NAMESPACES {
            self.seed_object(
                json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}),
            );
        }
        let read = ["get", "list", "watch"];
        let write = ["create", "delete", "deletecollection", "patch", "update"];
        let all: Vec<&str> = read.iter().chain(write.iter()).copied().collect();
        let workloads = json!({"apiGroups": ["", "apps", "batch"], "resources": [
            "pods", "services", "configmaps", "deployments", "replicasets", "statefulsets", "jobs", "cronjobs"
        ]});
        let with_verbs = |rule: &Value, verbs: &[&str]| {
            let mut r = rule.clone();
            r["verbs"] = json!(verbs);
            r
        };
        for (name, rules) in [
            (
                "cluster-admin",
                json!([
                    {"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]},
                    {"nonResourceURLs": ["*"], "verbs": ["*"]}
                ]),
            ),
            (
                "admin",
                json!([
                    with_verbs(&workloads, &all),
                    {"apiGroups": ["rbac.authorization.k8s.io"], "resources": ["roles", "rolebindings"], "verbs": all},
                    {"apiGroups": [""], "resources": ["secrets", "serviceaccounts"], "verbs": all}
                ]),
            ),
            (
                "edit",
                json!([
                    with_verbs(&workloads, &all),
                    {"apiGroups": [""], "resources": ["secrets"], "verbs": all}
                ]),
            ),
            ("view", json!([with_verbs(&workloads, &read)])),
        ] {
            self.seed_object(json!({
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "ClusterRole",
                "metadata": {"name": name, "labels": {"kubernetes.io/bootstrapping": "rbac-defaults"}},
                "rules": rules,
            }));
        }
    }

    fn seed_object(&self, obj: Value) {
        if let Err(e) = self.insert(obj) {
            tracing::error!(error = %e, "the fake cluster could not seed an object");
        }
    }

    /// Serves another resource type (replacing one with the same group, version and plural).
    pub fn register(&self, rt: ResourceType) {
        self.inner
            .registry
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .register(rt);
    }

    /// The clock the cluster reads.
    pub fn clock(&self) -> Arc<dyn Clock> {
        Arc::clone(&self.inner.clock)
    }

    /// The fake as an axum router (the same thing [`client`](Self::client) and
    /// [`serve_tcp`](Self::serve_tcp) talk to).
    pub fn router(&self) -> axum::Router {
        http::router(Arc::clone(&self.inner))
    }

    /// A kube client talking to the fake in process, with the retry policy kube's clients built
    /// from a `Config` have by default (429, 503 and 504 are retried, honouring `Retry-After`).
    /// Needs a tokio runtime (kube buffers requests on a spawned task).
    pub fn client(&self) -> kube::Client {
        let service = ServiceBuilder::new()
            .layer(tower::retry::RetryLayer::new(
                kube::client::retry::RetryPolicy::server_retry(),
            ))
            .map_err(|never: Infallible| -> BoxError { match never {} })
            .service(self.router());
        kube::Client::new(service, "default")
    }

    /// A kube client without any retry: every injected fault reaches the caller.
    pub fn raw_client(&self) -> kube::Client {
        kube::Client::new(self.router(), "default")
    }

    /// Serves the fake over plain HTTP on `127.0.0.1` (a free port), for kubectl or a client
    /// built from a `kube::Config`. The listener stops when the returned handle is dropped.
    ///
    /// # Errors
    /// When no loopback port can be bound.
    pub async fn serve_tcp(&self) -> std::io::Result<ServedCluster> {
        let listener = tokio::net::TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, 0)).await?;
        let addr = listener.local_addr()?;
        let router = self.router();
        let task = tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, router).await {
                tracing::warn!(error = %e, "the fake cluster's HTTP listener stopped");
            }
        });
        Ok(ServedCluster { addr, task })
    }

    /// Every stored object of a resource (`plural`, or `plural.group` when ambiguous, e.g.
    /// `events.events.k8s.io`), in namespace/name order. Unknown resources have none.
    pub fn objects(&self, resource: &str) -> Vec<Value> {
        let Some(rt) = self.inner.resolve(resource) else {
            return Vec::new();
        };
        lock(&self.inner.store).list(&rt, None, &LabelSelector::default(), &Default::default())
    }

    /// Every stored object of a k8s-openapi or kube-derived type.
    ///
    /// # Errors
    /// When a stored object does not deserialize as `K`.
    pub fn objects_of<K>(&self) -> Result<Vec<K>, serde_json::Error>
    where
        K: kube::Resource<DynamicType = ()> + DeserializeOwned,
    {
        let group = K::group(&());
        let resource = if group.is_empty() {
            K::plural(&()).into_owned()
        } else {
            format!("{}.{group}", K::plural(&()))
        };
        self.objects(&resource)
            .into_iter()
            .map(serde_json::from_value)
            .collect()
    }

    /// One stored object, if it exists.
    pub fn get_object(&self, resource: &str, namespace: Option<&str>, name: &str) -> Option<Value> {
        let rt = self.inner.resolve(resource)?;
        lock(&self.inner.store).get(&rt, namespace, name).ok()
    }

    /// Every stored object of every type matching a label selector, e.g.
    /// `app.kubernetes.io/managed-by=tka`.
    ///
    /// # Errors
    /// A 400 [`ApiError`] for a malformed selector.
    pub fn list_labelled(&self, selector: &str) -> Result<Vec<Value>, ApiError> {
        let selector = LabelSelector::parse(selector)?;
        Ok(lock(&self.inner.store)
            .iter()
            .filter(|(_, v)| selector.matches(v))
            .map(|(_, v)| v.clone())
            .collect())
    }

    /// Creates an object directly (no HTTP, no faults, not recorded), with the same checks as a
    /// POST. The type comes from `apiVersion` and `kind`, the namespace from `metadata.namespace`.
    ///
    /// # Errors
    /// What the API server would answer (AlreadyExists, Invalid, NotFound namespace, ...), or 400
    /// for a type the fake does not serve.
    pub fn insert(&self, obj: Value) -> Result<Value, ApiError> {
        let api_version = obj.get("apiVersion").and_then(Value::as_str).unwrap_or("");
        let kind = obj.get("kind").and_then(Value::as_str).unwrap_or("");
        let rt = self
            .inner
            .registry()
            .find_kind(api_version, kind)
            .cloned()
            .ok_or_else(|| {
                ApiError::bad_request(format!("the fake serves no {kind} in {api_version}"))
            })?;
        let namespace = obj
            .pointer("/metadata/namespace")
            .and_then(Value::as_str)
            .map(str::to_owned);
        let now = self.inner.clock.now();
        self.inner
            .mutate(false, |s| s.create(&rt, namespace.as_deref(), obj, now))
    }

    /// Deletes an object directly, with the same semantics as a DELETE without options
    /// (finalizers hold it). Returns the object as left.
    ///
    /// # Errors
    /// NotFound, or 400 for an unknown resource.
    pub fn delete_object(
        &self,
        resource: &str,
        namespace: Option<&str>,
        name: &str,
    ) -> Result<Value, ApiError> {
        let rt = self
            .inner
            .resolve(resource)
            .ok_or_else(|| ApiError::bad_request(format!("the fake serves no {resource}")))?;
        let now = self.inner.clock.now();
        self.inner
            .mutate(false, |s| {
                s.delete(&rt, namespace, name, &DeleteOptions::default(), now)
            })
            .map(|d| d.object)
    }

    /// The latest resourceVersion the cluster has handed out.
    pub fn resource_version(&self) -> u64 {
        lock(&self.inner.store).revision()
    }

    /// Whether a token from a TokenRequest would still authenticate: it was issued by this
    /// cluster, it has not expired by the cluster's clock, and the ServiceAccount it was issued
    /// for still exists (same uid) and is not being deleted.
    pub fn token_is_valid(&self, token: &str) -> bool {
        self.token_subject(token).is_some()
    }

    /// The username a valid token authenticates as (`system:serviceaccount:<ns>:<name>`), or
    /// `None` when [`token_is_valid`](Self::token_is_valid) is false.
    pub fn token_subject(&self, token: &str) -> Option<String> {
        let now = self.inner.clock.now();
        let store = lock(&self.inner.store);
        let issued = store.tokens.get(token)?;
        if now >= issued.expires_at {
            return None;
        }
        let sa_type = self.inner.resolve("serviceaccounts")?;
        let sa = store
            .get(&sa_type, Some(&issued.namespace), &issued.service_account)
            .ok()?;
        let same_uid = sa.pointer("/metadata/uid").and_then(Value::as_str) == Some(&issued.uid);
        (same_uid && !store::is_deleting(&sa)).then(|| {
            format!(
                "system:serviceaccount:{}:{}",
                issued.namespace, issued.service_account
            )
        })
    }

    /// The claims of a JWT-shaped token (for asserting what the fake issued).
    pub fn token_claims(token: &str) -> Option<Value> {
        tokens::decode_claims(token)
    }

    /// Does what kube-controller-manager's garbage collector and namespace controller would:
    /// deletes dependents whose owners (by uid) are all gone, honours `foregroundDeletion` and
    /// `orphan` finalizers, and empties and removes terminating namespaces. Returns how many
    /// objects were removed. Never runs unless called.
    pub fn run_garbage_collection(&self) -> usize {
        let now = self.inner.clock.now();
        self.inner
            .mutate(false, |s| Ok(gc::collect(s, now)))
            .unwrap_or(0)
    }

    /// Sets how `SelfSubjectAccessReview`s are answered.
    pub fn set_access_policy(&self, policy: AccessPolicy) {
        *lock(&self.inner.access) = policy;
    }

    /// Adds a fault-injection rule.
    pub fn inject(&self, rule: FaultRule) {
        lock(&self.inner.faults).inject(rule);
    }

    /// Fails only the `n`th (1-based, counted from now) `verb` on `resource` (main resource).
    pub fn fail_nth(&self, verb: Verb, resource: &str, n: u32, fault: Fault) {
        self.inject(FaultRule::new(verb, resource, fault).nth(n));
    }

    /// Fails the next `k` `verb` calls on `resource` (main resource).
    pub fn fail_next(&self, verb: Verb, resource: &str, k: u32, fault: Fault) {
        self.inject(FaultRule::new(verb, resource, fault).next(k));
    }

    /// Fails every `verb` on `resource` (main resource) until [`clear_faults`](Self::clear_faults).
    pub fn fail_always(&self, verb: Verb, resource: &str, fault: Fault) {
        self.inject(FaultRule::new(verb, resource, fault).always());
    }

    /// Removes every fault rule.
    pub fn clear_faults(&self) {
        lock(&self.inner.faults).clear_rules();
    }

    /// Every API call received so far (discovery excluded), in arrival order.
    pub fn calls(&self) -> Vec<Call> {
        lock(&self.inner.faults).calls()
    }

    /// The calls of one verb on one resource (any subresource).
    pub fn calls_to(&self, verb: Verb, resource: &str) -> Vec<Call> {
        self.calls()
            .into_iter()
            .filter(|c| c.verb == verb && c.resource == resource)
            .collect()
    }

    /// Forgets the recorded calls.
    pub fn clear_calls(&self) {
        lock(&self.inner.faults).clear_calls();
    }
}

/// A [`FakeCluster`] listening on loopback; stops listening when dropped.
#[derive(Debug)]
pub struct ServedCluster {
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl ServedCluster {
    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The listening address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// A kube `Config` for this server (default namespace `default`).
    pub fn kube_config(&self) -> kube::Config {
        // The URL is built from a socket address, so it always parses; fall back to the default
        // URI rather than panic.
        kube::Config::new(self.url().parse().unwrap_or_default())
    }

    /// A kube client built the way production builds one: from a `Config`, over TCP.
    ///
    /// # Errors
    /// When kube cannot build an HTTP client from the config.
    pub fn client(&self) -> Result<kube::Client, kube::Error> {
        kube::Client::try_from(self.kube_config())
    }

    /// A kubeconfig document pointing at this server (no credentials), for kubectl.
    pub fn kubeconfig_yaml(&self) -> String {
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: {}\ncontexts:\n- name: fake\n  context:\n    cluster: fake\n    user: fake\n    namespace: default\ncurrent-context: fake\nusers:\n- name: fake\n  user: {{}}\n",
            self.url()
        )
    }
}

impl Drop for ServedCluster {
    fn drop(&mut self) {
        self.task.abort();
    }
}
