//! No escalation through cluster-wide roles (DESIGN §4.3), with nothing faked: the built
//! `tka-server serve` with the token of deploy/'s ServiceAccount (so deploy/'s RBAC and
//! admission policy), a real API server and a real tailnet. A mapping that binds `edit`
//! cluster-wide is `Ready=False/ClusterWideWrite` and its login is refused with the
//! per-namespace hint; the namespaced form of the same grant logs in, its token works in its
//! namespace and cannot create pods in the server's namespace. Then a role aggregated into
//! `view` gains a write: the `view` mapping turns `ClusterWideWrite` and the server's reconciler
//! revokes the live session that used it.
//!
//! Skips without `TKA_TESTENV_BIN` (fails with `TKA_REQUIRE_TESTENV=1`).

use std::path::Path;
use std::time::Duration;

use serde_json::json;
use tka_testkit::testenv::{
    KubeEnv, TailnetEnv, TailnetGrant, TailnetNodeSpec, bin_dir_or_skip, exclusive,
};

use super::e2e_refusals::{
    Http, NS, admin_kubectl, apply_deploy, apply_yaml, ready_condition, start_server,
};
use super::e2e_tailnet::{Run, managed_objects, run};

const HINT: &str = "namespaced: [{clusterRole: edit, namespaces: [...]}]";

/// `kubectl --kubeconfig KUBECONFIG ARGS…` (any outcome).
async fn kubectl_as(kube: &KubeEnv, kubeconfig: &Path, args: &[&str]) -> Run {
    let mut all = vec!["--kubeconfig", kubeconfig.to_str().unwrap()];
    all.extend_from_slice(args);
    run(
        &kube.kubectl(),
        &all,
        &[("HOME", std::env::temp_dir().display().to_string())],
    )
    .await
}

/// `kubectl auth can-i VERB RESOURCE -n NAMESPACE` with `kubeconfig`: "yes" or "no".
async fn can_i(kube: &KubeEnv, kubeconfig: &Path, verb: &str, resource: &str, ns: &str) -> String {
    let out = kubectl_as(
        kube,
        kubeconfig,
        &["auth", "can-i", verb, resource, "-n", ns],
    )
    .await;
    out.stdout.trim().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e2e_cluster_wide_edit_is_refused_and_the_namespaced_grant_stays_in_its_namespace() {
    let Some(bin) = bin_dir_or_skip(
        "e2e_cluster_wide_edit_is_refused_and_the_namespaced_grant_stays_in_its_namespace",
    ) else {
        return;
    };
    let _permit = exclusive().await;

    // 1. The cluster as deploy/ makes it (bind allowlist: view, edit).
    let kube = KubeEnv::start(&bin).await.unwrap();
    let server_kubeconfig = apply_deploy(&kube).await;
    kube.ensure_namespace("team-a").await.unwrap();
    let mappings = r#"
apiVersion: tka.dev/v1alpha1
kind: GrantMapping
metadata: {name: cluster-edit}
spec: {clusterRoles: [edit]}
---
apiVersion: tka.dev/v1alpha1
kind: GrantMapping
metadata: {name: team-edit}
spec: {namespaced: [{clusterRole: edit, namespaces: [team-a]}]}
---
apiVersion: tka.dev/v1alpha1
kind: GrantMapping
metadata: {name: viewer}
spec: {clusterRoles: [view]}
"#;
    apply_yaml(&kube, mappings).await;

    let tailnet = TailnetEnv::start(
        &bin,
        &[
            TailnetNodeSpec::tagged("cluster", &["tag:tka"]),
            TailnetNodeSpec::user("laptop", "alice@example.com"),
            TailnetNodeSpec::user("other", "bob@example.com"),
        ],
        &[
            TailnetGrant::new(
                "laptop",
                "cluster",
                "tka.dev/cap/kubernetes",
                vec![
                    json!({"role": "cluster-edit"}),
                    json!({"role": "team-edit"}),
                ],
            ),
            TailnetGrant::new(
                "other",
                "cluster",
                "tka.dev/cap/kubernetes",
                vec![json!({"role": "viewer"})],
            ),
        ],
    )
    .await
    .unwrap();
    let cluster = tailnet.node("cluster").unwrap().clone();
    let laptop = tailnet.node("laptop").unwrap().clone();
    let other = tailnet.node("other").unwrap().clone();

    // 2. The server with the ServiceAccount's kubeconfig.
    let server = start_server(
        &kube,
        &server_kubeconfig,
        &cluster,
        "tka-server-escalation-0",
    )
    .await;
    let log = || server.log();
    let base = format!("http://{}:{}", cluster.ipv4, server.port());
    let alice = Http {
        socks5: format!("127.0.0.1:{}", laptop.socks5_port),
        base: base.clone(),
    };
    let bob = Http {
        socks5: format!("127.0.0.1:{}", other.socks5_port),
        base,
    };

    // 3. edit cluster-wide: not ready, and the condition says how to bind it per namespace.
    assert_eq!(
        ready_condition(&kube, "cluster-edit").await,
        "False/ClusterWideWrite",
        "server log:\n{}",
        log()
    );
    let message = admin_kubectl(
        &kube,
        &[
            "get",
            "grantmapping/cluster-edit",
            "-o",
            "jsonpath={.status.conditions[?(@.type==\"Ready\")].message}",
        ],
    )
    .await;
    assert!(message.contains(HINT), "{message}");
    assert_eq!(ready_condition(&kube, "team-edit").await, "True/Ready");
    assert_eq!(ready_condition(&kube, "viewer").await, "True/Ready");

    // Its login is refused with the same words, and creates nothing.
    let (status, answer) = alice.login(r#"{"role":"cluster-edit"}"#).await;
    assert_eq!(status, 403, "{answer}\nserver log:\n{}", log());
    assert_eq!(answer["code"], "mappingUnusable", "{answer}");
    let detail = answer["detail"].as_str().unwrap_or_default();
    assert!(detail.contains(HINT), "{detail}");
    assert_eq!(managed_objects(&kube).await, Vec::<String>::new());

    // 4. The namespaced form of the same grant: the login works ...
    let (status, answer) = alice.login(r#"{"role":"team-edit"}"#).await;
    assert_eq!(status, 200, "{answer}\nserver log:\n{}", log());
    let token = answer["token"]["token"].as_str().unwrap().to_owned();
    let as_alice = kube.kubeconfig_for_token(&token).unwrap();
    // ... the token works in its namespace (the RoleBinding may take a moment to be seen) ...
    let mut created = kubectl_as(
        &kube,
        &as_alice,
        &[
            "create",
            "configmap",
            "tka-e2e",
            "-n",
            "team-a",
            "--from-literal=a=b",
        ],
    )
    .await;
    for _ in 0..40 {
        if created.ok {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
        created = kubectl_as(
            &kube,
            &as_alice,
            &[
                "create",
                "configmap",
                "tka-e2e",
                "-n",
                "team-a",
                "--from-literal=a=b",
            ],
        )
        .await;
    }
    assert!(created.ok, "{created:?}");
    let got = kubectl_as(
        &kube,
        &as_alice,
        &["get", "configmap", "tka-e2e", "-n", "team-a", "-o", "name"],
    )
    .await;
    assert!(got.ok && got.stdout.contains("tka-e2e"), "{got:?}");
    assert_eq!(
        can_i(&kube, &as_alice, "create", "pods", "team-a").await,
        "yes"
    );
    // ... and reaches neither the server's namespace nor kube-system.
    assert_eq!(can_i(&kube, &as_alice, "create", "pods", NS).await, "no");
    assert_eq!(
        can_i(&kube, &as_alice, "get", "secrets", "kube-system").await,
        "no"
    );
    let denied = kubectl_as(
        &kube,
        &as_alice,
        &[
            "create",
            "configmap",
            "tka-e2e",
            "-n",
            NS,
            "--from-literal=a=b",
        ],
    )
    .await;
    assert!(
        !denied.ok && denied.stderr.contains("forbidden"),
        "{denied:?}"
    );

    // 5. bob logs in as viewer; then a role aggregated into `view` gains a write.
    let (status, answer) = bob.login(r#"{"role":"viewer"}"#).await;
    assert_eq!(status, 200, "{answer}\nserver log:\n{}", log());
    let session = answer["session"]["name"].as_str().unwrap().to_owned();
    let runner = r#"
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata:
  name: tka-e2e-jobs-runner
  labels: {rbac.authorization.k8s.io/aggregate-to-view: "true"}
rules:
  - {apiGroups: [batch], resources: [jobs], verbs: [create]}
"#;
    apply_yaml(&kube, runner).await;

    // The mapping turns not ready and the server's reconciler revokes bob's session.
    let mut state = String::new();
    let mut sessions = String::new();
    for _ in 0..240 {
        state = ready_condition(&kube, "viewer").await;
        sessions = admin_kubectl(&kube, &["get", "sessions.tka.dev", "-o", "name"]).await;
        if state == "False/ClusterWideWrite" && !sessions.contains(&session) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(state, "False/ClusterWideWrite", "server log:\n{}", log());
    assert!(
        !sessions.contains(&session),
        "session {session} still there: {sessions}\nserver log:\n{}",
        log()
    );
    // alice's namespaced session is untouched.
    assert_eq!(ready_condition(&kube, "team-edit").await, "True/Ready");
    assert_eq!(
        sessions.lines().count(),
        1,
        "alice's session must stay: {sessions}"
    );
    let (status, answer) = bob.login(r#"{"role":"viewer"}"#).await;
    assert_eq!(status, 403, "{answer}");
    assert!(
        answer["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("namespaced: [{clusterRole: view, namespaces: [...]}]"),
        "{answer}"
    );
    drop(server);
}
