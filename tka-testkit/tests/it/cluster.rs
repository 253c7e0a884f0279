//! FakeCluster driven by kube's real client: every semantic tka relies on, each "refused" paired
//! with an "allowed".
// Test helpers outside `#[test]` functions may fail loudly too.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::authentication::v1::TokenRequest;
use k8s_openapi::api::authorization::v1::SelfSubjectAccessReview;
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, RoleBinding};
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, ListParams, PartialObjectMeta, Patch,
    PatchParams, PostParams, Preconditions, PropagationPolicy, WatchEvent, WatchParams,
};
use kube::runtime::watcher;
use serde_json::{Value, json};
use tka_core::{ManualClock, Secret};
use tka_testkit::cluster::{
    AccessPolicy, AccessRule, FakeCluster, Fault, FaultRule, ResourceType, Verb,
};

const NS: &str = "tka-system";

fn start() -> Timestamp {
    "2026-03-01T12:00:00Z".parse().unwrap()
}

fn manual() -> (FakeCluster, ManualClock) {
    let clock = ManualClock::new(start());
    let cluster = FakeCluster::builder()
        .clock(Arc::new(clock.clone()))
        .build();
    (cluster, clock)
}

fn sa(name: &str) -> ServiceAccount {
    serde_json::from_value(json!({"metadata": {"name": name}})).unwrap()
}

fn labelled_sa(name: &str, labels: &Value) -> ServiceAccount {
    serde_json::from_value(json!({"metadata": {"name": name, "labels": labels}})).unwrap()
}

fn sessions(client: kube::Client) -> Api<DynamicObject> {
    let ar = ApiResource {
        group: "tka.dev".into(),
        version: "v1alpha1".into(),
        api_version: "tka.dev/v1alpha1".into(),
        kind: "Session".into(),
        plural: "sessions".into(),
    };
    Api::all_with(client, &ar)
}

fn session(name: &str, spec: &Value) -> DynamicObject {
    serde_json::from_value(json!({
        "apiVersion": "tka.dev/v1alpha1",
        "kind": "Session",
        "metadata": {"name": name},
        "spec": spec,
    }))
    .unwrap()
}

fn crb(name: &str, role: &str) -> ClusterRoleBinding {
    serde_json::from_value(json!({
        "metadata": {"name": name},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
        "subjects": [{"kind": "ServiceAccount", "name": "a", "namespace": NS}],
    }))
    .unwrap()
}

/// The API error behind a kube error (fails the test for anything else).
fn status(e: kube::Error) -> kube::core::Status {
    match e {
        kube::Error::Api(s) => *s,
        other => panic!("expected an API error, got {other:?}"),
    }
}

fn pp() -> PostParams {
    PostParams::default()
}

#[tokio::test]
async fn create_fills_server_owned_metadata_and_get_list_return_it() {
    let (cluster, _) = manual();
    let api: Api<ServiceAccount> = Api::namespaced(cluster.client(), NS);
    let a = api.create(&pp(), &sa("a")).await.unwrap();
    let b = api.create(&pp(), &sa("b")).await.unwrap();
    let (ma, mb) = (&a.metadata, &b.metadata);
    assert_eq!(ma.namespace.as_deref(), Some(NS));
    assert_ne!(ma.uid, mb.uid);
    let rv = |m: &kube::api::ObjectMeta| {
        m.resource_version
            .as_deref()
            .unwrap()
            .parse::<u64>()
            .unwrap()
    };
    assert!(rv(mb) > rv(ma));
    assert_eq!(
        ma.creation_timestamp.as_ref().unwrap().0,
        start(),
        "creationTimestamp comes from the injected clock"
    );

    let got = api.get("a").await.unwrap();
    assert_eq!(got.metadata.uid, ma.uid);
    // Re-creating from a fetched copy fails as on a real server: it carries a resourceVersion.
    api.delete("a", &DeleteParams::default()).await.unwrap();
    let s = status(api.create(&pp(), &got).await.unwrap_err());
    assert_eq!(s.code, 500);
    assert!(
        s.message
            .contains("resourceVersion should not be set on objects to be created")
    );
    let mut fresh = got.clone();
    fresh.metadata.resource_version = None;
    let a = api.create(&pp(), &fresh).await.unwrap();
    assert_ne!(
        a.metadata.uid, got.metadata.uid,
        "a new object gets a new uid"
    );
    let list = api.list(&ListParams::default()).await.unwrap();
    let names: Vec<_> = list
        .items
        .iter()
        .map(|s| s.metadata.name.clone().unwrap())
        .collect();
    assert_eq!(names, ["a", "b"]);
    assert_eq!(
        list.metadata.resource_version.unwrap(),
        cluster.resource_version().to_string()
    );
    // Other namespaces do not see them; the all-namespaces list does.
    let other: Api<ServiceAccount> = Api::namespaced(cluster.client(), "default");
    assert!(
        other
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .is_empty()
    );
    let all: Api<ServiceAccount> = Api::all(cluster.client());
    assert_eq!(
        all.list(&ListParams::default()).await.unwrap().items.len(),
        2
    );
}

#[tokio::test]
async fn create_of_an_existing_name_is_already_exists() {
    let cluster = FakeCluster::new();
    let api: Api<ServiceAccount> = Api::namespaced(cluster.client(), NS);
    api.create(&pp(), &sa("a")).await.unwrap();
    let s = status(api.create(&pp(), &sa("a")).await.unwrap_err());
    assert_eq!((s.code, s.reason.as_str()), (409, "AlreadyExists"));
    assert_eq!(s.message, r#"serviceaccounts "a" already exists"#);
    assert_eq!(s.details.unwrap().kind, "serviceaccounts");
    // The same name in another namespace is a different object.
    let other: Api<ServiceAccount> = Api::namespaced(cluster.client(), "default");
    other.create(&pp(), &sa("a")).await.unwrap();

    let s = status(
        sessions(cluster.client())
            .create(&pp(), &session("s", &json!({})))
            .await
            .and(
                sessions(cluster.client())
                    .create(&pp(), &session("s", &json!({})))
                    .await,
            )
            .unwrap_err(),
    );
    assert_eq!(s.message, r#"sessions.tka.dev "s" already exists"#);
}

#[tokio::test]
async fn missing_objects_are_not_found() {
    let cluster = FakeCluster::new();
    let api: Api<ServiceAccount> = Api::namespaced(cluster.client(), NS);
    let s = status(api.get("ghost").await.unwrap_err());
    assert_eq!((s.code, s.reason.as_str()), (404, "NotFound"));
    assert_eq!(s.message, r#"serviceaccounts "ghost" not found"#);
    assert!(api.get_opt("ghost").await.unwrap().is_none());
    let s = status(
        api.delete("ghost", &DeleteParams::default())
            .await
            .unwrap_err(),
    );
    assert_eq!(s.code, 404);
    let s = status(
        api.patch("ghost", &PatchParams::default(), &Patch::Merge(json!({})))
            .await
            .unwrap_err(),
    );
    assert_eq!(s.code, 404);
    api.create(&pp(), &sa("ghost")).await.unwrap();
    assert!(api.get_opt("ghost").await.unwrap().is_some());
}

#[tokio::test]
async fn creating_in_a_missing_namespace_is_not_found() {
    let cluster = FakeCluster::new();
    let missing: Api<ServiceAccount> = Api::namespaced(cluster.client(), "nowhere");
    let s = status(missing.create(&pp(), &sa("a")).await.unwrap_err());
    assert_eq!((s.code, s.reason.as_str()), (404, "NotFound"));
    assert_eq!(s.message, r#"namespaces "nowhere" not found"#);
    let namespaces: Api<Namespace> = Api::all(cluster.client());
    namespaces
        .create(
            &pp(),
            &serde_json::from_value(json!({"metadata": {"name": "nowhere"}})).unwrap(),
        )
        .await
        .unwrap();
    missing.create(&pp(), &sa("a")).await.unwrap();
}

#[tokio::test]
async fn names_are_validated_and_generate_name_fills_them() {
    let cluster = FakeCluster::new();
    let api: Api<ServiceAccount> = Api::namespaced(cluster.client(), NS);
    let s = status(api.create(&pp(), &sa("Bad_Name")).await.unwrap_err());
    assert_eq!((s.code, s.reason.as_str()), (422, "Invalid"));
    assert!(
        s.message.starts_with(
            r#"ServiceAccount "Bad_Name" is invalid: metadata.name: Invalid value: "Bad_Name": a lowercase RFC 1123 subdomain"#
        ),
        "{}",
        s.message
    );
    let generated: ServiceAccount =
        serde_json::from_value(json!({"metadata": {"generateName": "tka-alice-"}})).unwrap();
    let created = api.create(&pp(), &generated).await.unwrap();
    let name = created.metadata.name.unwrap();
    assert!(
        name.starts_with("tka-alice-") && name.len() == "tka-alice-".len() + 5,
        "{name}"
    );

    let s = status(
        api.create(
            &pp(),
            &labelled_sa("l", &json!({"tka.dev/user": "alice@example.com"})),
        )
        .await
        .unwrap_err(),
    );
    assert_eq!(
        s.code, 422,
        "label values are validated like the real server's"
    );
    api.create(&pp(), &labelled_sa("l", &json!({"tka.dev/user": "a1b2c3"})))
        .await
        .unwrap();
}

#[tokio::test]
async fn label_and_field_selectors_filter_lists() {
    let cluster = FakeCluster::new();
    let api: Api<ServiceAccount> = Api::namespaced(cluster.client(), NS);
    for (name, labels) in [
        ("a", json!({"app": "tka", "env": "prod"})),
        ("b", json!({"app": "tka", "env": "dev"})),
        ("c", json!({"env": "qa"})),
    ] {
        api.create(&pp(), &labelled_sa(name, &labels))
            .await
            .unwrap();
    }
    let names = |selector: &str| {
        let api = api.clone();
        let lp = ListParams::default().labels(selector);
        async move {
            api.list(&lp)
                .await
                .unwrap()
                .items
                .into_iter()
                .map(|s| s.metadata.name.unwrap())
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(names("app=tka").await, ["a", "b"]);
    assert_eq!(names("app!=tka").await, ["c"]);
    assert_eq!(names("app").await, ["a", "b"]);
    assert_eq!(names("!app").await, ["c"]);
    assert_eq!(names("env in (prod,qa)").await, ["a", "c"]);
    assert_eq!(names("env notin (prod,qa)").await, ["b"]);
    assert_eq!(names("app=tka,env=dev").await, ["b"]);
    let by_name = api
        .list(&ListParams::default().fields("metadata.name=b"))
        .await
        .unwrap();
    assert_eq!(by_name.items.len(), 1);
    let s = status(
        api.list(&ListParams::default().labels("env in prod"))
            .await
            .unwrap_err(),
    );
    assert_eq!(s.code, 400);
    let s = status(
        api.list(&ListParams::default().fields("spec.x=1"))
            .await
            .unwrap_err(),
    );
    assert_eq!(s.code, 400);
}

#[tokio::test]
async fn stale_resource_version_is_a_conflict() {
    let cluster = FakeCluster::new();
    let api: Api<ServiceAccount> = Api::namespaced(cluster.client(), NS);
    let first = api.create(&pp(), &sa("a")).await.unwrap();
    let mut fresh = first.clone();
    fresh.metadata.labels = Some([("x".to_owned(), "1".to_owned())].into());
    let updated = api.replace("a", &pp(), &fresh).await.unwrap();
    assert_ne!(
        updated.metadata.resource_version,
        first.metadata.resource_version
    );

    let mut stale = first;
    stale.metadata.labels = Some([("x".to_owned(), "2".to_owned())].into());
    let s = status(api.replace("a", &pp(), &stale).await.unwrap_err());
    assert_eq!((s.code, s.reason.as_str()), (409, "Conflict"));
    assert_eq!(
        s.message,
        r#"Operation cannot be fulfilled on serviceaccounts "a": the object has been modified; please apply your changes to the latest version and try again"#
    );

    // Built-ins accept an update without resourceVersion (last write wins) ...
    stale.metadata.resource_version = None;
    api.replace("a", &pp(), &stale).await.unwrap();
    // ... custom resources do not.
    let sessions = sessions(cluster.client());
    let created = sessions
        .create(&pp(), &session("s", &json!({"role": "view"})))
        .await
        .unwrap();
    let mut unconditional = created.clone();
    unconditional.metadata.resource_version = None;
    let s = status(
        sessions
            .replace("s", &pp(), &unconditional)
            .await
            .unwrap_err(),
    );
    assert_eq!(s.code, 422);
    assert!(
        s.message.contains("metadata.resourceVersion"),
        "{}",
        s.message
    );
    sessions.replace("s", &pp(), &created).await.unwrap();
}

#[tokio::test]
async fn merge_json_strategic_and_apply_patches() {
    let cluster = FakeCluster::new();
    let api: Api<ServiceAccount> = Api::namespaced(cluster.client(), NS);
    api.create(&pp(), &labelled_sa("a", &json!({"keep": "1", "drop": "1"})))
        .await
        .unwrap();
    let merged = api
        .patch(
            "a",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"drop": null, "new": "1"}}})),
        )
        .await
        .unwrap();
    let labels = merged.metadata.labels.unwrap();
    assert_eq!(labels.keys().collect::<Vec<_>>(), ["keep", "new"]);

    let rv = merged.metadata.resource_version.unwrap();
    let guarded = |expected: &str| {
        json_patch::Patch(
            serde_json::from_value(json!([
                {"op": "test", "path": "/metadata/resourceVersion", "value": expected},
                {"op": "add", "path": "/metadata/annotations", "value": {"a": "b"}}
            ]))
            .unwrap(),
        )
    };
    let s = status(
        api.patch(
            "a",
            &PatchParams::default(),
            &Patch::Json::<()>(guarded("1")),
        )
        .await
        .unwrap_err(),
    );
    assert_eq!(s.code, 422);
    let patched = api
        .patch(
            "a",
            &PatchParams::default(),
            &Patch::Json::<()>(guarded(&rv)),
        )
        .await
        .unwrap();
    assert_eq!(patched.metadata.annotations.unwrap()["a"], "b");

    // Strategic merge works on built-ins and is refused for custom resources, as for real.
    api.patch(
        "a",
        &PatchParams::default(),
        &Patch::Strategic(json!({"metadata": {"labels": {"s": "1"}}})),
    )
    .await
    .unwrap();
    let sessions = sessions(cluster.client());
    sessions
        .create(&pp(), &session("s", &json!({})))
        .await
        .unwrap();
    let s = status(
        sessions
            .patch(
                "s",
                &PatchParams::default(),
                &Patch::Strategic(json!({"spec": {"x": 1}})),
            )
            .await
            .unwrap_err(),
    );
    assert_eq!((s.code, s.reason.as_str()), (415, "UnsupportedMediaType"));

    // Server-side apply needs a field manager and creates what is missing.
    let apply = Patch::Apply(json!({
        "apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "applied", "labels": {"a": "1"}}
    }));
    let s = status(
        api.patch("applied", &PatchParams::default(), &apply)
            .await
            .unwrap_err(),
    );
    assert_eq!(s.code, 422);
    let created = api
        .patch("applied", &PatchParams::apply("tka"), &apply)
        .await
        .unwrap();
    assert_eq!(created.metadata.labels.unwrap()["a"], "1");
}

#[tokio::test]
async fn status_subresource_separates_status_from_the_rest() {
    let cluster = FakeCluster::new();
    let api = sessions(cluster.client());
    let mut s = session("s", &json!({"role": "view"}));
    s.data["status"] = json!({"phase": "Active"});
    let created = api.create(&pp(), &s).await.unwrap();
    assert!(
        created.data.get("status").is_none(),
        "status is dropped on create"
    );
    assert_eq!(created.metadata.generation, Some(1));

    let with_status = api
        .patch_status(
            "s",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"phase": "Active"}, "spec": {"role": "admin"}})),
        )
        .await
        .unwrap();
    assert_eq!(with_status.data["status"]["phase"], "Active");
    assert_eq!(
        with_status.data["spec"]["role"], "view",
        "/status changes only .status"
    );
    assert_eq!(with_status.metadata.generation, Some(1));

    let main = api
        .patch(
            "s",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"phase": "Revoked"}, "spec": {"role": "edit"}})),
        )
        .await
        .unwrap();
    assert_eq!(
        main.data["status"]["phase"], "Active",
        "the main resource ignores .status"
    );
    assert_eq!(main.data["spec"]["role"], "edit");
    assert_eq!(
        main.metadata.generation,
        Some(2),
        "a spec change bumps generation"
    );

    let relabelled = api
        .patch(
            "s",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"a": "b"}}})),
        )
        .await
        .unwrap();
    assert_eq!(relabelled.metadata.generation, Some(2), "metadata does not");
    // A no-op write changes nothing, not even the resourceVersion.
    let same = api
        .patch(
            "s",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"a": "b"}}})),
        )
        .await
        .unwrap();
    assert_eq!(
        same.metadata.resource_version,
        relabelled.metadata.resource_version
    );
}

#[tokio::test]
async fn role_ref_is_immutable() {
    let cluster = FakeCluster::new();
    let api: Api<ClusterRoleBinding> = Api::all(cluster.client());
    let created = api.create(&pp(), &crb("b", "view")).await.unwrap();
    let mut changed = created.clone();
    changed.role_ref.name = "edit".into();
    let s = status(api.replace("b", &pp(), &changed).await.unwrap_err());
    assert_eq!((s.code, s.reason.as_str()), (422, "Invalid"));
    assert_eq!(
        s.message,
        r#"ClusterRoleBinding.rbac.authorization.k8s.io "b" is invalid: roleRef: Invalid value: rbac.RoleRef{APIGroup:"rbac.authorization.k8s.io", Kind:"ClusterRole", Name:"edit"}: cannot change roleRef"#
    );
    let s = status(
        api.patch(
            "b",
            &PatchParams::default(),
            &Patch::Merge(json!({"roleRef": {"name": "admin"}})),
        )
        .await
        .unwrap_err(),
    );
    assert_eq!(s.code, 422);
    // Other fields may change.
    let mut subjects = created;
    subjects.subjects.as_mut().unwrap()[0].name = "other".into();
    api.replace("b", &pp(), &subjects).await.unwrap();

    let rbs: Api<RoleBinding> = Api::namespaced(cluster.client(), "default");
    let rb: RoleBinding = serde_json::from_value(json!({
        "metadata": {"name": "r"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "view"},
        "subjects": [{"kind": "ServiceAccount", "name": "a", "namespace": NS}],
    }))
    .unwrap();
    rbs.create(&pp(), &rb).await.unwrap();
    let s = status(
        rbs.patch(
            "r",
            &PatchParams::default(),
            &Patch::Merge(json!({"roleRef": {"name": "edit"}})),
        )
        .await
        .unwrap_err(),
    );
    assert!(
        s.message.ends_with("cannot change roleRef"),
        "{}",
        s.message
    );
}

#[tokio::test]
async fn finalizers_hold_a_deleted_object_until_they_are_removed() {
    let (cluster, clock) = manual();
    let api = sessions(cluster.client());
    let mut s = session("s", &json!({}));
    s.metadata.finalizers = Some(vec!["tka.dev/cleanup".into()]);
    api.create(&pp(), &s).await.unwrap();
    clock.advance(SignedDuration::from_secs(30));

    let deleted = api.delete("s", &DeleteParams::default()).await.unwrap();
    let marked = deleted
        .left()
        .expect("a held object comes back as the object");
    assert_eq!(
        marked.metadata.deletion_timestamp.unwrap().0,
        start() + SignedDuration::from_secs(30)
    );
    assert_eq!(marked.metadata.deletion_grace_period_seconds, Some(0));
    assert!(api.get_opt("s").await.unwrap().is_some(), "still there");
    // Deleting again changes nothing.
    let again = api
        .delete("s", &DeleteParams::default())
        .await
        .unwrap()
        .left()
        .unwrap();
    assert_eq!(
        again.metadata.resource_version,
        marked.metadata.resource_version
    );

    let s = status(
        api.patch(
            "s",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"finalizers": ["tka.dev/cleanup", "other/x"]}})),
        )
        .await
        .unwrap_err(),
    );
    assert_eq!(s.code, 422);
    assert!(
        s.message.contains(
            r#"metadata.finalizers: Forbidden: no new finalizers can be added if the object is being deleted, found new finalizers []string{"other/x"}"#
        ),
        "{}",
        s.message
    );
    // Other changes are still allowed while it is being deleted.
    api.patch(
        "s",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"labels": {"a": "b"}}})),
    )
    .await
    .unwrap();
    api.patch(
        "s",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"finalizers": null}})),
    )
    .await
    .unwrap();
    assert!(
        api.get_opt("s").await.unwrap().is_none(),
        "gone once the finalizers are"
    );

    // Without finalizers a delete removes the object at once.
    api.create(&pp(), &session("t", &json!({}))).await.unwrap();
    let gone = api.delete("t", &DeleteParams::default()).await.unwrap();
    assert!(
        gone.is_left(),
        "custom resources answer a delete with the object"
    );
    assert!(api.get_opt("t").await.unwrap().is_none());
    // Built-ins answer with a Status.
    let sas: Api<ServiceAccount> = Api::namespaced(cluster.client(), NS);
    sas.create(&pp(), &sa("a")).await.unwrap();
    assert!(
        sas.delete("a", &DeleteParams::default())
            .await
            .unwrap()
            .is_right()
    );
}

#[tokio::test]
async fn delete_preconditions_guard_uid_and_resource_version() {
    let cluster = FakeCluster::new();
    let api: Api<ServiceAccount> = Api::namespaced(cluster.client(), NS);
    let created = api.create(&pp(), &sa("a")).await.unwrap();
    let wrong_uid = DeleteParams {
        preconditions: Some(Preconditions {
            uid: Some("00000000-0000-4000-8000-000000000000".into()),
            resource_version: None,
        }),
        ..DeleteParams::default()
    };
    let s = status(api.delete("a", &wrong_uid).await.unwrap_err());
    assert_eq!((s.code, s.reason.as_str()), (409, "Conflict"));
    assert_eq!(
        s.message,
        format!(
            r#"Operation cannot be fulfilled on serviceaccounts "a": Precondition failed: UID in precondition: 00000000-0000-4000-8000-000000000000, UID in object meta: {}"#,
            created.metadata.uid.as_deref().unwrap()
        )
    );
    let stale_rv = DeleteParams {
        preconditions: Some(Preconditions {
            uid: None,
            resource_version: Some("1".into()),
        }),
        ..DeleteParams::default()
    };
    let s = status(api.delete("a", &stale_rv).await.unwrap_err());
    assert!(
        s.message
            .contains("Precondition failed: ResourceVersion in precondition: 1")
    );
    let right = DeleteParams {
        preconditions: Some(Preconditions {
            uid: created.metadata.uid.clone(),
            resource_version: created.metadata.resource_version.clone(),
        }),
        propagation_policy: Some(PropagationPolicy::Background),
        ..DeleteParams::default()
    };
    api.delete("a", &right).await.unwrap();
    assert!(api.get_opt("a").await.unwrap().is_none());
}

#[tokio::test]
async fn watcher_follows_changes_with_selectors() {
    let cluster = FakeCluster::new();
    let api: Api<ServiceAccount> = Api::namespaced(cluster.client(), NS);
    api.create(&pp(), &labelled_sa("before", &json!({"app": "tka"})))
        .await
        .unwrap();
    api.create(&pp(), &sa("unlabelled")).await.unwrap();
    let mut events = watcher(api.clone(), watcher::Config::default().labels("app=tka")).boxed();
    let mut next = async || {
        tokio::time::timeout(Duration::from_secs(10), events.try_next())
            .await
            .expect("an event within 10 s")
            .unwrap()
            .unwrap()
    };
    let name = |sa: &ServiceAccount| sa.metadata.name.clone().unwrap();
    assert!(matches!(next().await, watcher::Event::Init));
    assert!(matches!(next().await, watcher::Event::InitApply(s) if name(&s) == "before"));
    assert!(matches!(next().await, watcher::Event::InitDone));

    api.create(&pp(), &sa("ignored")).await.unwrap();
    api.create(&pp(), &labelled_sa("after", &json!({"app": "tka"})))
        .await
        .unwrap();
    assert!(matches!(next().await, watcher::Event::Apply(s) if name(&s) == "after"));
    // Gaining the label shows up as an addition, losing it as a deletion.
    api.patch(
        "unlabelled",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"labels": {"app": "tka"}}})),
    )
    .await
    .unwrap();
    assert!(matches!(next().await, watcher::Event::Apply(s) if name(&s) == "unlabelled"));
    api.patch(
        "before",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"labels": {"app": null}}})),
    )
    .await
    .unwrap();
    assert!(matches!(next().await, watcher::Event::Delete(s) if name(&s) == "before"));
    api.delete("after", &DeleteParams::default()).await.unwrap();
    assert!(matches!(next().await, watcher::Event::Delete(s) if name(&s) == "after"));
}

#[tokio::test]
async fn watch_from_a_compacted_resource_version_is_gone() {
    let cluster = FakeCluster::builder().history_limit(3).build();
    let api: Api<ServiceAccount> = Api::namespaced(cluster.client(), NS);
    let first = api.create(&pp(), &sa("a")).await.unwrap();
    let old_rv = first.metadata.resource_version.unwrap();
    for name in ["b", "c", "d", "e"] {
        api.create(&pp(), &sa(name)).await.unwrap();
    }
    let mut stream = api
        .watch(&WatchParams::default(), &old_rv)
        .await
        .unwrap()
        .boxed();
    match stream.try_next().await.unwrap().unwrap() {
        WatchEvent::Error(e) => assert_eq!((e.code, e.reason.as_str()), (410, "Expired")),
        other => panic!("expected 410, got {other:?}"),
    }
    // From a recent resourceVersion the history replays.
    let recent = cluster.resource_version() - 1;
    let mut stream = api
        .watch(&WatchParams::default(), &recent.to_string())
        .await
        .unwrap()
        .boxed();
    match stream.try_next().await.unwrap().unwrap() {
        WatchEvent::Added(s) => assert_eq!(s.metadata.name.as_deref(), Some("e")),
        other => panic!("expected ADDED e, got {other:?}"),
    }
}

#[tokio::test]
async fn injected_faults_fail_the_chosen_calls() {
    let cluster = FakeCluster::new();
    let api: Api<ServiceAccount> = Api::namespaced(cluster.raw_client(), NS);

    cluster.fail_nth(Verb::Create, "serviceaccounts", 2, Fault::InternalError);
    api.create(&pp(), &sa("a")).await.unwrap();
    let s = status(api.create(&pp(), &sa("b")).await.unwrap_err());
    assert_eq!((s.code, s.reason.as_str()), (500, "InternalError"));
    api.create(&pp(), &sa("b")).await.unwrap();

    cluster.fail_next(Verb::Get, "serviceaccounts", 1, Fault::Conflict);
    assert_eq!(status(api.get("a").await.unwrap_err()).code, 409);
    api.get("a").await.unwrap();

    cluster.fail_next(
        Verb::Delete,
        "serviceaccounts",
        1,
        Fault::TooManyRequests {
            retry_after_seconds: 1,
        },
    );
    let s = status(api.delete("a", &DeleteParams::default()).await.unwrap_err());
    assert_eq!((s.code, s.reason.as_str()), (429, "TooManyRequests"));
    assert!(
        api.get_opt("a").await.unwrap().is_some(),
        "a fault before commit changes nothing"
    );

    // A fault after commit: the write happened, the answer was lost.
    cluster.inject(
        FaultRule::new(Verb::Create, "serviceaccounts", Fault::InternalError).after_commit(),
    );
    assert_eq!(
        status(api.create(&pp(), &sa("c")).await.unwrap_err()).code,
        500
    );
    assert!(api.get_opt("c").await.unwrap().is_some());

    // Hangs: a client timeout fires first; a short hang ends in 504.
    cluster.fail_next(
        Verb::List,
        "serviceaccounts",
        1,
        Fault::Timeout {
            after: Duration::from_secs(30),
        },
    );
    let hung =
        tokio::time::timeout(Duration::from_millis(200), api.list(&ListParams::default())).await;
    assert!(hung.is_err(), "the request hangs");
    cluster.fail_next(
        Verb::List,
        "serviceaccounts",
        1,
        Fault::Timeout {
            after: Duration::from_millis(1),
        },
    );
    let s = status(api.list(&ListParams::default()).await.unwrap_err());
    assert_eq!((s.code, s.reason.as_str()), (504, "Timeout"));
    api.list(&ListParams::default()).await.unwrap();

    // Subresource rules match only that subresource.
    cluster.inject(
        FaultRule::new(Verb::Create, "serviceaccounts", Fault::InternalError)
            .subresource("token")
            .always(),
    );
    api.create(&pp(), &sa("d")).await.unwrap();
    let token = api
        .create_subresource::<_, TokenRequest>(
            "token",
            "d",
            &pp(),
            &json!({"spec": {"audiences": []}}),
        )
        .await;
    assert_eq!(status(token.unwrap_err()).code, 500);
    cluster.clear_faults();
    api.create_subresource::<_, TokenRequest>(
        "token",
        "d",
        &pp(),
        &json!({"spec": {"audiences": []}}),
    )
    .await
    .unwrap();
}

#[tokio::test]
async fn the_default_client_retries_throttling_like_kube_does() {
    let cluster = FakeCluster::new();
    let api: Api<ServiceAccount> = Api::namespaced(cluster.client(), NS);
    cluster.fail_next(
        Verb::Create,
        "serviceaccounts",
        2,
        Fault::TooManyRequests {
            retry_after_seconds: 0,
        },
    );
    api.create(&pp(), &sa("a")).await.unwrap();
    let codes: Vec<u16> = cluster
        .calls_to(Verb::Create, "serviceaccounts")
        .iter()
        .map(|c| c.code)
        .collect();
    assert_eq!(codes, [429, 429, 201]);
    // 500 is not retried.
    cluster.fail_next(Verb::Create, "serviceaccounts", 1, Fault::InternalError);
    assert_eq!(
        status(api.create(&pp(), &sa("b")).await.unwrap_err()).code,
        500
    );
}

#[tokio::test]
async fn calls_are_recorded_in_order() {
    let cluster = FakeCluster::new();
    let sas: Api<ServiceAccount> = Api::namespaced(cluster.client(), NS);
    let crbs: Api<ClusterRoleBinding> = Api::all(cluster.client());
    sas.create(&pp(), &sa("a")).await.unwrap();
    crbs.create(&pp(), &crb("b", "view")).await.unwrap();
    sas.delete("a", &DeleteParams::default()).await.unwrap();
    crbs.delete("b", &DeleteParams::default()).await.unwrap();
    let calls: Vec<String> = cluster.calls().iter().map(ToString::to_string).collect();
    assert_eq!(
        calls,
        [
            "create serviceaccounts tka-system/a -> 201",
            "create clusterrolebindings b -> 201",
            "delete serviceaccounts tka-system/a -> 200",
            "delete clusterrolebindings b -> 200",
        ]
    );
    let order = |verb, resource: &str| {
        cluster
            .calls()
            .iter()
            .position(|c| c.verb == verb && c.resource == resource)
            .unwrap()
    };
    assert!(order(Verb::Delete, "serviceaccounts") < order(Verb::Delete, "clusterrolebindings"));
    cluster.clear_calls();
    assert!(cluster.calls().is_empty());
}

/// A TokenRequest's token and expiry.
#[derive(Debug)]
struct Issued {
    token: Secret<String>,
    expires_at: Timestamp,
}

async fn request_token(
    api: &Api<ServiceAccount>,
    name: &str,
    seconds: i64,
) -> kube::Result<Issued> {
    let answer: TokenRequest = api
        .create_subresource(
            "token",
            name,
            &pp(),
            &json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": {"expirationSeconds": seconds}}),
        )
        .await?;
    let status = answer.status.unwrap();
    Ok(Issued {
        token: Secret::new(status.token.unwrap()),
        expires_at: status.expiration_timestamp.unwrap().0,
    })
}

#[tokio::test]
async fn token_requests_enforce_the_floor_and_cap_and_die_with_the_service_account() {
    let clock = ManualClock::new(start());
    let cluster = FakeCluster::builder()
        .clock(Arc::new(clock.clone()))
        .max_token_expiration(Duration::from_secs(3600))
        .build();
    let api: Api<ServiceAccount> = Api::namespaced(cluster.client(), NS);
    api.create(&pp(), &sa("a")).await.unwrap();

    let s = status(request_token(&api, "a", 599).await.unwrap_err());
    assert_eq!((s.code, s.reason.as_str()), (422, "Invalid"));
    assert!(
        s.message
            .contains("spec.expirationSeconds: Invalid value: 599: may not specify a duration less than 10 minutes"),
        "{}",
        s.message
    );
    let t = request_token(&api, "a", 600).await.unwrap();
    assert_eq!(t.expires_at, start() + SignedDuration::from_secs(600));
    let capped = request_token(&api, "a", 7200).await.unwrap();
    assert_eq!(
        capped.expires_at,
        start() + SignedDuration::from_secs(3600),
        "the server may shorten a token"
    );
    assert_eq!(
        status(request_token(&api, "ghost", 600).await.unwrap_err()).code,
        404
    );

    let claims = FakeCluster::token_claims(t.token.expose()).unwrap();
    assert_eq!(claims["sub"], "system:serviceaccount:tka-system:a");
    assert_ne!(
        claims["jti"],
        FakeCluster::token_claims(capped.token.expose()).unwrap()["jti"]
    );
    assert!(cluster.token_is_valid(t.token.expose()));
    assert_eq!(
        cluster.token_subject(t.token.expose()).as_deref(),
        Some("system:serviceaccount:tka-system:a")
    );
    assert!(!cluster.token_is_valid("not-a-token"));

    clock.advance(SignedDuration::from_secs(600));
    assert!(
        !cluster.token_is_valid(t.token.expose()),
        "expired by the cluster's clock"
    );
    assert!(cluster.token_is_valid(capped.token.expose()));

    api.delete("a", &DeleteParams::default()).await.unwrap();
    assert!(
        !cluster.token_is_valid(capped.token.expose()),
        "dies with its ServiceAccount"
    );
    api.create(&pp(), &sa("a")).await.unwrap();
    assert!(
        !cluster.token_is_valid(capped.token.expose()),
        "a new ServiceAccount of the same name does not revive it"
    );
}

#[tokio::test]
async fn access_reviews_follow_the_programmed_policy() {
    let cluster = FakeCluster::new();
    let api: Api<SelfSubjectAccessReview> = Api::all(cluster.client());
    let review = |verb: &str, name: &str| -> SelfSubjectAccessReview {
        serde_json::from_value(json!({"spec": {"resourceAttributes": {
            "verb": verb, "group": "rbac.authorization.k8s.io", "resource": "clusterroles", "name": name
        }}}))
        .unwrap()
    };
    let allowed = |r: SelfSubjectAccessReview| r.status.unwrap().allowed;
    assert!(allowed(
        api.create(&pp(), &review("bind", "admin")).await.unwrap()
    ));
    cluster.set_access_policy(
        AccessPolicy::deny_all().allow(AccessRule::any().verb("bind").name("view")),
    );
    assert!(!allowed(
        api.create(&pp(), &review("bind", "admin")).await.unwrap()
    ));
    assert!(allowed(
        api.create(&pp(), &review("bind", "view")).await.unwrap()
    ));
}

#[tokio::test]
async fn nothing_is_garbage_collected_unless_asked() {
    let cluster = FakeCluster::new();
    let sessions = sessions(cluster.client());
    let owner = sessions
        .create(&pp(), &session("owner", &json!({})))
        .await
        .unwrap();
    let other = sessions
        .create(&pp(), &session("other", &json!({})))
        .await
        .unwrap();
    let owner_ref = |o: &DynamicObject| json!({"apiVersion": "tka.dev/v1alpha1", "kind": "Session", "name": o.metadata.name, "uid": o.metadata.uid});
    let sas: Api<ServiceAccount> = Api::namespaced(cluster.client(), NS);
    for (name, owners) in [
        ("orphaned", vec![owner_ref(&owner)]),
        ("shared", vec![owner_ref(&owner), owner_ref(&other)]),
    ] {
        sas.create(
            &pp(),
            &serde_json::from_value(json!({"metadata": {"name": name, "ownerReferences": owners}}))
                .unwrap(),
        )
        .await
        .unwrap();
    }
    sessions
        .delete("owner", &DeleteParams::default())
        .await
        .unwrap();
    assert!(
        sas.get_opt("orphaned").await.unwrap().is_some(),
        "no GC by default"
    );

    assert_eq!(cluster.run_garbage_collection(), 1);
    assert!(sas.get_opt("orphaned").await.unwrap().is_none());
    let shared = sas.get("shared").await.unwrap();
    assert_eq!(
        shared.metadata.owner_references.unwrap().len(),
        1,
        "a dependent with a live owner stays, without the dangling reference"
    );

    // Foreground deletion without a garbage collector leaves the owner stuck, as for real.
    sessions
        .delete("other", &DeleteParams::foreground())
        .await
        .unwrap();
    let stuck = sessions.get("other").await.unwrap();
    assert_eq!(stuck.metadata.finalizers.unwrap(), ["foregroundDeletion"]);
    cluster.run_garbage_collection();
    assert!(sessions.get_opt("other").await.unwrap().is_none());
    assert!(sas.get_opt("shared").await.unwrap().is_none());
}

#[tokio::test]
async fn terminating_namespaces_refuse_new_content() {
    let cluster = FakeCluster::new();
    let namespaces: Api<Namespace> = Api::all(cluster.client());
    namespaces
        .create(
            &pp(),
            &serde_json::from_value(json!({"metadata": {"name": "doomed"}})).unwrap(),
        )
        .await
        .unwrap();
    let sas: Api<ServiceAccount> = Api::namespaced(cluster.client(), "doomed");
    sas.create(&pp(), &sa("a")).await.unwrap();
    namespaces
        .delete("doomed", &DeleteParams::default())
        .await
        .unwrap();
    let ns = namespaces.get("doomed").await.unwrap();
    assert_eq!(ns.status.unwrap().phase.as_deref(), Some("Terminating"));
    let s = status(sas.create(&pp(), &sa("b")).await.unwrap_err());
    assert_eq!((s.code, s.reason.as_str()), (403, "Forbidden"));
    cluster.run_garbage_collection();
    assert!(namespaces.get_opt("doomed").await.unwrap().is_none());
    assert!(cluster.objects("serviceaccounts").is_empty());
}

#[tokio::test]
async fn seeds_helpers_and_labelled_objects() {
    let cluster = FakeCluster::new();
    let names: Vec<String> = cluster
        .objects_of::<Namespace>()
        .unwrap()
        .into_iter()
        .map(|n| n.metadata.name.unwrap())
        .collect();
    for ns in ["default", "kube-system", "tka-system"] {
        assert!(names.iter().any(|n| n == ns), "{ns} is seeded");
    }
    let roles: Vec<ClusterRole> = cluster.objects_of().unwrap();
    for role in ["cluster-admin", "admin", "edit", "view"] {
        let r = roles
            .iter()
            .find(|r| r.metadata.name.as_deref() == Some(role))
            .unwrap();
        assert!(!r.rules.as_ref().unwrap().is_empty(), "{role} has rules");
    }

    assert!(
        cluster
            .list_labelled("app.kubernetes.io/managed-by=tka")
            .unwrap()
            .is_empty()
    );
    let sas: Api<ServiceAccount> = Api::namespaced(cluster.client(), NS);
    sas.create(
        &pp(),
        &labelled_sa("a", &json!({"app.kubernetes.io/managed-by": "tka"})),
    )
    .await
    .unwrap();
    cluster
        .insert(json!({
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": "b", "labels": {"app.kubernetes.io/managed-by": "tka"}},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "view"},
            "subjects": [{"kind": "ServiceAccount", "name": "a", "namespace": NS}],
        }))
        .unwrap();
    let kinds: Vec<String> = cluster
        .list_labelled("app.kubernetes.io/managed-by=tka")
        .unwrap()
        .iter()
        .map(|o| o["kind"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(kinds.len(), 2);
    assert!(
        kinds.contains(&"ServiceAccount".to_owned())
            && kinds.contains(&"ClusterRoleBinding".to_owned())
    );
    assert!(
        cluster
            .get_object("clusterrolebindings", None, "b")
            .is_some()
    );
    cluster
        .delete_object("clusterrolebindings", None, "b")
        .unwrap();
    assert!(
        cluster
            .get_object("clusterrolebindings", None, "b")
            .is_none()
    );
    assert_eq!(
        cluster
            .insert(json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}}))
            .unwrap_err()
            .code,
        400
    );
}

#[tokio::test]
async fn a_registered_resource_is_served_in_one_line() {
    let cluster = FakeCluster::new();
    let api: Api<DynamicObject> = Api::all_with(
        cluster.client(),
        &ApiResource {
            group: "example.com".into(),
            version: "v1".into(),
            api_version: "example.com/v1".into(),
            kind: "Widget".into(),
            plural: "widgets".into(),
        },
    );
    let widget: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"}, "spec": {}
    }))
    .unwrap();
    assert_eq!(
        status(api.create(&pp(), &widget).await.unwrap_err()).code,
        404
    );
    cluster.register(
        ResourceType::cluster_scoped("example.com", "v1", "widgets", "Widget").with_status(),
    );
    api.create(&pp(), &widget).await.unwrap();
    assert_eq!(cluster.objects("widgets").len(), 1);
}

#[tokio::test]
async fn served_over_tcp_for_kube_config_clients_and_kubectl() {
    let cluster = FakeCluster::new();
    let served = cluster.serve_tcp().await.unwrap();
    assert!(served.addr().ip().is_loopback());
    let api: Api<ServiceAccount> = Api::namespaced(served.client().unwrap(), NS);
    api.create(&pp(), &sa("over-tcp")).await.unwrap();
    assert!(
        cluster
            .get_object("serviceaccounts", Some(NS), "over-tcp")
            .is_some()
    );
    // Watch over a real connection.
    let mut events = watcher(api.clone(), watcher::Config::default()).boxed();
    let first = tokio::time::timeout(Duration::from_secs(10), events.try_next()).await;
    assert!(matches!(first, Ok(Ok(Some(watcher::Event::Init)))));

    let Ok(kubectl) = which("kubectl") else {
        eprintln!("kubectl is not on PATH; skipping the kubectl part");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("config");
    std::fs::write(&kubeconfig, served.kubeconfig_yaml()).unwrap();
    let output = tokio::process::Command::new(&kubectl)
        .arg(format!("--kubeconfig={}", kubeconfig.display()))
        .arg(format!(
            "--cache-dir={}",
            dir.path().join("cache").display()
        ))
        .args(["get", "ns"])
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "kubectl failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout.lines().any(|l| l.starts_with("tka-system ")),
        "{stdout}"
    );

    // Also the brief form, `kubectl --server=...`, with an empty kubeconfig.
    let empty = dir.path().join("empty");
    std::fs::write(&empty, "").unwrap();
    let output = tokio::process::Command::new(&kubectl)
        .arg(format!("--server={}", served.url()))
        .arg(format!("--kubeconfig={}", empty.display()))
        .arg(format!(
            "--cache-dir={}",
            dir.path().join("cache2").display()
        ))
        .args(["get", "serviceaccounts", "-n", NS, "-o", "name"])
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "kubectl failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(stdout.trim(), "serviceaccount/over-tcp");
}

fn which(program: &str) -> Result<std::path::PathBuf, ()> {
    let path = std::env::var_os("PATH").ok_or(())?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
        .ok_or(())
}

#[tokio::test]
async fn a_watch_that_times_out_ends_with_a_bookmark() {
    let cluster = FakeCluster::new();
    let api: Api<ServiceAccount> = Api::namespaced(cluster.client(), NS);
    let rv = cluster.resource_version().to_string();
    let params = WatchParams::default().timeout(1);
    let watching = api.watch(&params, &rv).await.unwrap();
    api.create(&pp(), &sa("a")).await.unwrap();
    let events: Vec<_> = watching.try_collect().await.unwrap();
    assert!(matches!(&events[0], WatchEvent::Added(s) if s.metadata.name.as_deref() == Some("a")));
    match events.last() {
        Some(WatchEvent::Bookmark(b)) => {
            assert_eq!(
                b.metadata.resource_version,
                cluster.resource_version().to_string()
            );
        }
        other => panic!("expected a closing bookmark, got {other:?}"),
    }
    // Without bookmarks the watch just ends.
    let params = WatchParams::default().timeout(1).disable_bookmarks();
    let events: Vec<_> = api
        .watch(&params, &rv)
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    assert_eq!(events.len(), 1);
}

#[tokio::test]
async fn dry_run_answers_without_storing() {
    let cluster = FakeCluster::new();
    let api: Api<ServiceAccount> = Api::namespaced(cluster.client(), NS);
    let dry = PostParams {
        dry_run: true,
        ..PostParams::default()
    };
    let answered = api.create(&dry, &sa("a")).await.unwrap();
    assert_eq!(answered.metadata.name.as_deref(), Some("a"));
    assert!(api.get_opt("a").await.unwrap().is_none());
    api.create(&pp(), &sa("a")).await.unwrap();
    assert!(api.get_opt("a").await.unwrap().is_some());
}

#[tokio::test]
async fn metadata_only_reads_and_watches() {
    let cluster = FakeCluster::new();
    let api: Api<ServiceAccount> = Api::namespaced(cluster.client(), NS);
    api.create(&pp(), &labelled_sa("a", &json!({"app": "tka"})))
        .await
        .unwrap();
    let meta = api.get_metadata("a").await.unwrap();
    assert_eq!(meta.types.unwrap().kind, "PartialObjectMetadata");
    assert_eq!(meta.metadata.labels.unwrap()["app"], "tka");
    let list = api
        .list_metadata(&ListParams::default().labels("app=tka"))
        .await
        .unwrap();
    assert_eq!(list.items.len(), 1);
    assert!(api.get_metadata_opt("ghost").await.unwrap().is_none());

    let metadata: Api<PartialObjectMeta<ServiceAccount>> = Api::namespaced(cluster.client(), NS);
    let mut events = watcher(metadata, watcher::Config::default()).boxed();
    let mut names = Vec::new();
    while names.len() < 2 {
        let event = tokio::time::timeout(Duration::from_secs(10), events.try_next())
            .await
            .expect("an event within 10 s")
            .unwrap()
            .unwrap();
        match event {
            watcher::Event::InitApply(m) | watcher::Event::Apply(m) => {
                names.push(m.metadata.name.unwrap());
            }
            watcher::Event::InitDone => {
                api.create(&pp(), &sa("b")).await.unwrap();
            }
            _ => {}
        }
    }
    assert_eq!(names, ["a", "b"]);
}
