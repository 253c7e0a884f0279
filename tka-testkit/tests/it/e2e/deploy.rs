//! The kustomize base `tka-server/deploy` on a real API server: it applies (server-side dry
//! run, then for real), and with the server's own ServiceAccount token the RBAC rules and the
//! ValidatingAdmissionPolicies allow exactly tka's own bindings and Sessions, and refuse the
//! rest.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;

use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_openapi::api::rbac::v1::{ClusterRoleBinding, RoleBinding};
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Api, ResourceExt};
use serde_json::{Value, json};
use tka_core::issuer::CredentialIssuer;
use tka_core::kubernetes::{
    GrantMapping, IssuerSettings, KubernetesIssuer, KubernetesReconciler, MANAGED_BY,
    MANAGED_BY_LABEL, ReconcilerSettings, Session, SessionPhase,
};
use tka_core::policy::{Decision, PolicyContext, ResolveRequest, TtlRequest, resolve};
use tka_core::reconciler::Reconciler;
use tka_core::{Clock, ClusterName, Identity, ManualClock, ParsedGrants, RoleName};
use tka_testkit::suite::{
    Person, SUITE_CLUSTER, TEAM_NAMESPACES, TestTailnet, suite_grant_check, suite_mappings,
    suite_policy, suite_views,
};
use tka_testkit::testenv::{KubeEnv, bin_dir_or_skip, exclusive};

use super::kubectl;

const NS: &str = "tka-system";
const SERVER_SA: &str = "tka-server";

fn deploy_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tka-server/deploy")
}

/// A token for ServiceAccount `tka-system/NAME`, requested by the admin.
async fn token_for(env: &KubeEnv, name: &str) -> String {
    let sas: Api<ServiceAccount> = Api::namespaced(env.client(), NS);
    let request = TokenRequest {
        spec: Some(TokenRequestSpec {
            expiration_seconds: Some(3600),
            ..TokenRequestSpec::default()
        }),
        ..TokenRequest::default()
    };
    let answer = sas
        .create_token_request(name, &PostParams::default(), &request)
        .await
        .unwrap();
    answer.status.unwrap().token.unwrap()
}

/// A binding as tka makes it: `tka-` name, managed-by label, ClusterRole `role`, one subject: a
/// ServiceAccount in tka-system. `edit` changes it before it is sent.
fn binding(kind: &str, name: &str, namespace: Option<&str>, role: &str) -> Value {
    let mut metadata = json!({
        "name": name,
        "labels": { MANAGED_BY_LABEL: MANAGED_BY },
    });
    if let Some(ns) = namespace {
        metadata["namespace"] = json!(ns);
    }
    json!({
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": kind,
        "metadata": metadata,
        "roleRef": {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "ClusterRole",
            "name": role,
        },
        "subjects": [{
            "kind": "ServiceAccount",
            "name": "tka-session-sa",
            "namespace": NS,
        }],
    })
}

fn crb(value: Value) -> ClusterRoleBinding {
    serde_json::from_value(value).unwrap()
}

fn session(name: &str) -> Session {
    serde_json::from_value(json!({
        "apiVersion": "tka.dev/v1alpha1",
        "kind": "Session",
        "metadata": { "name": name, "labels": { MANAGED_BY_LABEL: MANAGED_BY } },
        "spec": {
            "identity": {
                "loginName": "alice@example.com",
                "nodeId": "n1",
                "nodeName": "laptop.example.ts.net",
                "userId": 1,
            },
            "role": "viewer",
            "clusterRoles": ["view"],
            "expiresAt": "2030-01-01T00:00:00Z",
            "revisedAt": "2029-12-31T23:00:00Z",
            "revision": "abc123",
        },
    }))
    .unwrap()
}

/// Asserts that a request was refused with 403 or 422, and that the refusal's message contains
/// `because` (the admission rule or the RBAC check that refused it).
fn refused<T: std::fmt::Debug>(what: &str, because: &str, result: Result<T, kube::Error>) {
    match result {
        Ok(object) => panic!("{what} must be refused, but was allowed: {object:?}"),
        Err(kube::Error::Api(status)) => {
            assert!(
                status.code == 403 || status.code == 422,
                "{what}: expected 403 or 422, got {status:?}"
            );
            assert!(
                status.message.contains(because),
                "{what}: expected a refusal mentioning {because:?}, got {status:?}"
            );
        }
        Err(e) => panic!("{what}: expected an API refusal, got {e}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_deploy_base_applies_and_its_rbac_and_admission_policies_hold() {
    let Some(bin) =
        bin_dir_or_skip("the_deploy_base_applies_and_its_rbac_and_admission_policies_hold")
    else {
        return;
    };
    let _permit = exclusive().await;
    let env = KubeEnv::start(&bin).await.unwrap();
    let (kubectl_bin, admin_kc) = (env.kubectl(), env.admin_kubeconfig().to_path_buf());
    let dir = deploy_dir();
    let dir = dir.to_str().unwrap();

    // 1. The base applies: a server-side dry run creates nothing, then the real apply. A dry
    // run cannot create the namespace its namespaced objects go to, so the namespace comes
    // first (as an operator doing the same check would).
    let ns_file = format!("{dir}/namespace.yaml");
    let ns = kubectl(&kubectl_bin, &admin_kc, &["apply", "-f", &ns_file], None).await;
    assert!(ns.ok, "{ns:?}");
    let dry = kubectl(
        &kubectl_bin,
        &admin_kc,
        &["apply", "--dry-run=server", "-k", dir],
        None,
    )
    .await;
    assert!(dry.ok, "server-side dry run: {dry:?}");
    assert!(dry.stdout.contains("deployment.apps/tka-server"), "{dry:?}");
    let none = kubectl(
        &kubectl_bin,
        &admin_kc,
        &[
            "get",
            "deployments,crd,validatingadmissionpolicies",
            "-A",
            "-o",
            "name",
        ],
        None,
    )
    .await;
    assert!(
        none.ok && !none.stdout.contains("tka"),
        "a dry run creates nothing: {none:?}"
    );
    let applied = kubectl(&kubectl_bin, &admin_kc, &["apply", "-k", dir], None).await;
    assert!(applied.ok, "apply -k: {applied:?}");
    for expected in [
        "deployment.apps/tka-server",
        "networkpolicy.networking.k8s.io/tka-server",
        "validatingadmissionpolicy.admissionregistration.k8s.io/tka-server-bindings",
        "validatingadmissionpolicy.admissionregistration.k8s.io/tka-sessions",
        "clusterrole.rbac.authorization.k8s.io/tka-server-bind",
    ] {
        assert!(applied.stdout.contains(expected), "{expected}: {applied:?}");
    }
    env.wait_crds_established().await.unwrap();
    env.ensure_namespace("team-a").await.unwrap();

    // 2. The server's own credentials.
    let server = env
        .client_for_token(&token_for(&env, SERVER_SA).await)
        .await
        .unwrap();
    let server_crbs: Api<ClusterRoleBinding> = Api::all(server.clone());
    let admin_crbs: Api<ClusterRoleBinding> = Api::all(env.client());
    let pp = PostParams::default();

    // The first refusal waits (bounded) until the API server enforces the new policy; a binding
    // that got through meanwhile is removed by the admin and the attempt repeated.
    let unlabelled = {
        let mut b = binding("ClusterRoleBinding", "tka-unlabelled", None, "view");
        b["metadata"]["labels"] = json!({});
        crb(b)
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let first = loop {
        match server_crbs.create(&pp, &unlabelled).await {
            Ok(_) => {
                admin_crbs
                    .delete("tka-unlabelled", &DeleteParams::default())
                    .await
                    .unwrap();
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "the admission policy tka-server-bindings was not enforced within 10 s"
                );
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            Err(e) => break Err::<ClusterRoleBinding, _>(e),
        }
    };
    refused(
        "a binding without the managed-by label",
        "labelled app.kubernetes.io/managed-by=tka",
        first,
    );
    assert!(
        admin_crbs
            .get_opt("tka-unlabelled")
            .await
            .unwrap()
            .is_none(),
        "the unlabelled binding was not created"
    );

    // ALLOWED: tka's own ClusterRoleBinding to view, and a RoleBinding in team-a.
    let allowed = crb(binding("ClusterRoleBinding", "tka-allowed", None, "view"));
    server_crbs.create(&pp, &allowed).await.unwrap();
    assert!(admin_crbs.get_opt("tka-allowed").await.unwrap().is_some());
    let server_rbs: Api<RoleBinding> = Api::namespaced(server.clone(), "team-a");
    let admin_rbs: Api<RoleBinding> = Api::namespaced(env.client(), "team-a");
    let allowed_rb: RoleBinding = serde_json::from_value(binding(
        "RoleBinding",
        "tka-allowed-rb",
        Some("team-a"),
        "view",
    ))
    .unwrap();
    server_rbs.create(&pp, &allowed_rb).await.unwrap();
    assert!(admin_rbs.get_opt("tka-allowed-rb").await.unwrap().is_some());

    // REFUSED, each next to the allowed binding above.
    let refused_cases: Vec<(&str, &str, Value)> = vec![
        (
            "a binding to cluster-admin",
            "attempting to grant",
            binding(
                "ClusterRoleBinding",
                "tka-cluster-admin",
                None,
                "cluster-admin",
            ),
        ),
        (
            "a binding to admin",
            "attempting to grant",
            binding("ClusterRoleBinding", "tka-admin", None, "admin"),
        ),
        ("a binding with a second subject", "exactly one subject", {
            let mut b = binding("ClusterRoleBinding", "tka-two-subjects", None, "view");
            b["subjects"]
                .as_array_mut()
                .unwrap()
                .push(json!({"kind": "ServiceAccount", "name": "other", "namespace": NS}));
            b
        }),
        (
            "a binding whose subject is a User",
            "exactly one subject",
            {
                let mut b = binding("ClusterRoleBinding", "tka-user-subject", None, "view");
                b["subjects"] = json!([{
                    "kind": "User",
                    "name": "alice@example.com",
                    "apiGroup": "rbac.authorization.k8s.io",
                }]);
                b
            },
        ),
        (
            "a binding whose subject is outside tka-system",
            "exactly one subject",
            {
                let mut b = binding("ClusterRoleBinding", "tka-other-ns-subject", None, "view");
                b["subjects"][0]["namespace"] = json!("default");
                b
            },
        ),
        (
            "a binding whose name lacks the tka- prefix",
            "name starts with tka-",
            binding("ClusterRoleBinding", "not-tka", None, "view"),
        ),
    ];
    for (what, because, value) in refused_cases {
        let name = value["metadata"]["name"].as_str().unwrap().to_owned();
        refused(what, because, server_crbs.create(&pp, &crb(value)).await);
        assert!(
            admin_crbs.get_opt(&name).await.unwrap().is_none(),
            "{what}: nothing was created"
        );
    }
    let in_kube_system: RoleBinding = serde_json::from_value(binding(
        "RoleBinding",
        "tka-kube-system",
        Some("kube-system"),
        "view",
    ))
    .unwrap();
    refused(
        "a RoleBinding in kube-system",
        "own namespace or kube-system",
        Api::<RoleBinding>::namespaced(server.clone(), "kube-system")
            .create(&pp, &in_kube_system)
            .await,
    );
    assert!(
        Api::<RoleBinding>::namespaced(env.client(), "kube-system")
            .get_opt("tka-kube-system")
            .await
            .unwrap()
            .is_none()
    );
    let user_rb: RoleBinding = serde_json::from_value({
        let mut b = binding("RoleBinding", "tka-user-rb", Some("team-a"), "view");
        b["subjects"] = json!([{
            "kind": "User",
            "name": "alice@example.com",
            "apiGroup": "rbac.authorization.k8s.io",
        }]);
        b
    })
    .unwrap();
    refused(
        "a RoleBinding whose subject is a User",
        "exactly one subject",
        server_rbs.create(&pp, &user_rb).await,
    );
    assert!(admin_rbs.get_opt("tka-user-rb").await.unwrap().is_none());

    // A tka binding is never updated or patched, not even its labels.
    let patch = json!({ "metadata": { "labels": { "extra": "x" } } });
    refused(
        "a patch of a tka binding",
        "cannot patch",
        server_crbs
            .patch(
                "tka-allowed",
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await,
    );
    let mut current = admin_crbs.get("tka-allowed").await.unwrap();
    current
        .metadata
        .labels
        .get_or_insert_default()
        .insert("extra".to_owned(), "x".to_owned());
    refused(
        "an update of a tka binding",
        "cannot update",
        server_crbs.replace("tka-allowed", &pp, &current).await,
    );
    let unchanged = admin_crbs.get("tka-allowed").await.unwrap();
    assert!(
        !unchanged
            .metadata
            .labels
            .unwrap_or_default()
            .contains_key("extra"),
        "the binding is unchanged"
    );

    // Deleting tka's own bindings is allowed; deleting someone else's is not.
    refused(
        "deleting the server's own ClusterRoleBinding",
        "labelled app.kubernetes.io/managed-by=tka",
        server_crbs
            .delete("tka-server", &DeleteParams::default())
            .await,
    );
    assert!(admin_crbs.get_opt("tka-server").await.unwrap().is_some());
    server_crbs
        .delete("tka-allowed", &DeleteParams::default())
        .await
        .unwrap();
    server_rbs
        .delete("tka-allowed-rb", &DeleteParams::default())
        .await
        .unwrap();
    assert!(admin_crbs.get_opt("tka-allowed").await.unwrap().is_none());
    assert!(admin_rbs.get_opt("tka-allowed-rb").await.unwrap().is_none());

    // Sessions: the server creates them; another identity with RBAC to write them is refused by
    // the tka-sessions policy, yet may delete one (revocation).
    let other = json!({
        "apiVersion": "v1", "kind": "ServiceAccount",
        "metadata": { "name": "session-writer", "namespace": NS },
    });
    let grant = json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
        "metadata": { "name": "session-writer" },
        "rules": [{
            "apiGroups": ["tka.dev"],
            "resources": ["sessions", "sessions/status"],
            "verbs": ["create", "get", "list", "update", "patch", "delete"],
        }],
    });
    let grant_binding = json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
        "metadata": { "name": "session-writer" },
        "roleRef": {
            "apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "session-writer",
        },
        "subjects": [{ "kind": "ServiceAccount", "name": "session-writer", "namespace": NS }],
    });
    let objects = format!("{other}\n---\n{grant}\n---\n{grant_binding}\n");
    let made = kubectl(
        &kubectl_bin,
        &admin_kc,
        &["apply", "-f", "-"],
        Some(&objects),
    )
    .await;
    assert!(made.ok, "{made:?}");
    let writer = env
        .client_for_token(&token_for(&env, "session-writer").await)
        .await
        .unwrap();
    let server_sessions: Api<Session> = Api::all(server.clone());
    let writer_sessions: Api<Session> = Api::all(writer);
    let admin_sessions: Api<Session> = Api::all(env.client());

    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let forged = loop {
        match writer_sessions.create(&pp, &session("forged")).await {
            Ok(_) => {
                admin_sessions
                    .delete("forged", &DeleteParams::default())
                    .await
                    .unwrap();
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "the admission policy tka-sessions was not enforced within 10 s"
                );
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            Err(e) => break Err::<Session, _>(e),
        }
    };
    refused(
        "a Session created by another identity",
        "only tka-server creates Sessions",
        forged,
    );
    assert!(admin_sessions.get_opt("forged").await.unwrap().is_none());

    server_sessions
        .create(&pp, &session("by-server"))
        .await
        .unwrap();
    assert!(admin_sessions.get_opt("by-server").await.unwrap().is_some());
    let spec_patch = json!({ "spec": { "role": "admin" } });
    refused(
        "another identity changing a Session's spec",
        "only tka-server changes a Session's spec",
        writer_sessions
            .patch(
                "by-server",
                &PatchParams::default(),
                &Patch::Merge(&spec_patch),
            )
            .await,
    );
    assert_eq!(
        admin_sessions.get("by-server").await.unwrap().spec.role,
        "viewer"
    );
    // What `tka-server drain` run by an administrator does: metadata other than labels.
    let annotate = json!({ "metadata": { "annotations": { "example.com/note": "drained" } } });
    writer_sessions
        .patch(
            "by-server",
            &PatchParams::default(),
            &Patch::Merge(&annotate),
        )
        .await
        .unwrap();
    let status_patch = json!({ "status": { "phase": "Revoked" } });
    refused(
        "another identity writing a Session's status",
        "only tka-server writes a Session's status",
        writer_sessions
            .patch_status(
                "by-server",
                &PatchParams::default(),
                &Patch::Merge(&status_patch),
            )
            .await,
    );
    server_sessions
        .patch_status(
            "by-server",
            &PatchParams::default(),
            &Patch::Merge(&status_patch),
        )
        .await
        .unwrap();
    writer_sessions
        .delete("by-server", &DeleteParams::default())
        .await
        .unwrap();
    assert!(
        super::eventually(Duration::from_secs(10), || async {
            admin_sessions.get_opt("by-server").await.unwrap().is_none()
        })
        .await,
        "another identity may delete (revoke) a Session"
    );

    // 3. The real write path: KubernetesIssuer with the server's client (not the admin) issues
    // a session of mapping `sre` (view cluster-wide, edit in the team namespaces), and revokes it.
    for namespace in TEAM_NAMESPACES {
        env.ensure_namespace(namespace).await.unwrap();
    }
    let clock = ManualClock::new(Timestamp::now());
    let issuer = KubernetesIssuer::new(
        server.clone(),
        IssuerSettings::new(NS),
        Arc::new(clock.clone()),
    )
    .unwrap();
    let alice = Person::AliceLaptop.identity();
    let decision = decision(&alice, "sre", &clock);
    let issued = issuer.issue(&alice, &decision).await.unwrap();
    let session = admin_sessions.get(issued.session.as_str()).await.unwrap();
    let status = session.status.unwrap();
    assert_eq!(status.phase, Some(SessionPhase::Active), "{status:?}");
    let labelled = ListParams::default().labels(&format!("{MANAGED_BY_LABEL}={MANAGED_BY}"));
    let made_crbs = admin_crbs.list(&labelled).await.unwrap();
    assert!(
        made_crbs
            .items
            .iter()
            .any(|b| b.role_ref.name == "view" && b.name_any().starts_with("tka-")),
        "the issuer made its view ClusterRoleBinding"
    );
    for namespace in TEAM_NAMESPACES {
        let made = Api::<RoleBinding>::namespaced(env.client(), namespace)
            .list(&labelled)
            .await
            .unwrap();
        assert!(
            made.items.iter().any(|b| b.role_ref.name == "edit"),
            "the issuer made its edit RoleBinding in {namespace}"
        );
    }
    // The token the server minted authenticates as the session's ServiceAccount and can read.
    let session_client = env.client_for_token(issued.token.expose()).await.unwrap();
    Api::<ServiceAccount>::namespaced(session_client, "team-a")
        .list(&ListParams::default())
        .await
        .unwrap();
    let revoked = issuer.revoke(&alice.node.stable_id).await.unwrap();
    assert_eq!(revoked.len(), 1, "{revoked:?}");

    // The reconciler, also with the server's client, cleans up after the revocation (deletes,
    // finalizer removal, its Lease) and reports each GrantMapping's readiness (status patch).
    let mappings: Api<GrantMapping> = Api::all(env.client());
    for mapping in suite_mappings() {
        mappings
            .create(&pp, &GrantMapping::new(mapping.name.as_str(), mapping.spec))
            .await
            .unwrap();
    }
    let tailnet = Arc::new(TestTailnet::new());
    tailnet.join(&alice);
    let reconciler = KubernetesReconciler::new(
        server.clone(),
        ReconcilerSettings::new(NS, "deploy-e2e"),
        Arc::new(clock.clone()),
        tailnet,
        Arc::new(suite_grant_check(NS)),
    );
    let report = reconciler.reconcile_once(clock.now()).await.unwrap();
    assert!(report.failures.is_empty(), "{report:?}");
    assert!(
        report.removed_session(issued.session.as_str())
            || admin_sessions
                .get_opt(issued.session.as_str())
                .await
                .unwrap()
                .is_none(),
        "{report:?}"
    );
    assert!(
        super::eventually(Duration::from_secs(10), || async {
            admin_sessions
                .get_opt(issued.session.as_str())
                .await
                .unwrap()
                .is_none()
        })
        .await,
        "the revoked session is gone"
    );
    assert!(admin_crbs.list(&labelled).await.unwrap().items.is_empty());
    for namespace in TEAM_NAMESPACES {
        let left = Api::<RoleBinding>::namespaced(env.client(), namespace)
            .list(&labelled)
            .await
            .unwrap();
        assert!(left.items.is_empty(), "{namespace}: {left:?}");
    }
    // The status patch went through: `sre`'s ClusterRoles exist. (Bindability, `NotBindable`, is
    // a check of tka-server's, not of the reconciler run here.)
    let ready = |mapping: GrantMapping| {
        mapping
            .status
            .map(|s| s.conditions)
            .unwrap_or_default()
            .into_iter()
            .find(|c| c.type_ == "Ready")
            .map(|c| (c.status, c.reason))
    };
    assert_eq!(
        ready(mappings.get("sre").await.unwrap()),
        Some(("True".to_owned(), "Ready".to_owned()))
    );
}

/// What the policy resolver decides for `who` asking for `role` (1h) under the suite's
/// mappings; panics on a denial.
fn decision(who: &Identity, role: &str, clock: &ManualClock) -> Decision {
    let grants = ParsedGrants::from_identity(who);
    let views = suite_views();
    let settings = suite_policy(NS);
    let cluster = ClusterName::new(SUITE_CLUSTER).unwrap();
    let role = RoleName::new(role).unwrap();
    resolve(&ResolveRequest {
        context: PolicyContext {
            identity: who,
            grants: &grants,
            mappings: &views,
            cluster: &cluster,
            settings: &settings,
        },
        role: Some(&role),
        ttl: Some(TtlRequest::Text("1h")),
        now: clock.now(),
    })
    .unwrap_or_else(|denial| panic!("policy denied {role}: {}", denial.message()))
}
