//! Credentials issued by `KubernetesIssuer` against a real API server, used with real kubectl
//! (the built one and the machine's): what they may do, what they may not, and that revocation
//! and expiry shut them out.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use serde_json::json;
use tka_core::domain::{LoginName, NodeInfo, UserInfo};
use tka_core::issuer::{CredentialIssuer, IssuedCredential};
use tka_core::kubernetes::{
    GrantMapping, IssuerSettings, KubernetesIssuer, KubernetesReconciler, ReconcilerSettings,
};
use tka_core::policy::{Decision, GrantMappingSpec, NamespacedBinding};
use tka_core::{Identity, NodeId, RoleName, SystemClock, Ttl, UserId};
use tka_testkit::suite::{TestTailnet, suite_grant_check};
use tka_testkit::testenv::{KubeEnv, bin_dir_or_skip, exclusive};

use super::{eventually, kubectl, kubectls};

const NAMESPACE: &str = "tka-system";

struct Cluster {
    env: KubeEnv,
    issuer: KubernetesIssuer,
    _permit: tokio::sync::SemaphorePermit<'static>,
}

async fn cluster(test: &str) -> Option<Cluster> {
    let bin = bin_dir_or_skip(test)?;
    let permit = exclusive().await;
    let env = KubeEnv::start(&bin).await.unwrap();
    env.install_crds().await.unwrap();
    env.ensure_namespace(NAMESPACE).await.unwrap();
    let issuer = KubernetesIssuer::new(
        env.client(),
        IssuerSettings::new(NAMESPACE),
        Arc::new(SystemClock),
    )
    .unwrap();
    Some(Cluster {
        env,
        issuer,
        _permit: permit,
    })
}

fn alice(role: &str) -> Identity {
    Identity {
        user: UserInfo {
            id: UserId(10001),
            login_name: LoginName::new("alice@example.com").unwrap(),
            display_name: "alice".to_owned(),
        },
        node: NodeInfo {
            stable_id: NodeId::new("nLaptop1CNTRL").unwrap(),
            name: "laptop.tka-test.ts.net".to_owned(),
            addresses: vec![IpAddr::from([100, 64, 0, 2])],
            tags: vec![],
        },
        groups: vec![],
        capabilities: vec![json!({ "role": role })],
        compat_capabilities: vec![],
    }
}

fn decision(
    role: &str,
    cluster_roles: &[&str],
    namespaced: &[(&str, &str)],
    ttl: &str,
) -> Decision {
    let ttl = Ttl::parse(ttl).unwrap();
    Decision {
        role: RoleName::new(role).unwrap(),
        cluster_roles: cluster_roles.iter().map(|r| (*r).to_owned()).collect(),
        namespaced: namespaced
            .iter()
            .map(|(role, ns)| NamespacedBinding {
                cluster_role: (*role).to_owned(),
                namespace: (*ns).to_owned(),
            })
            .collect(),
        ttl,
        expires_at: Timestamp::now() + ttl.as_duration(),
        clamped: None,
    }
}

async fn issue(c: &Cluster, role: &str, d: &Decision) -> (IssuedCredential, std::path::PathBuf) {
    let credential = c.issuer.issue(&alice(role), d).await.unwrap();
    let kubeconfig = c
        .env
        .kubeconfig_for_token(credential.token.expose())
        .unwrap();
    (credential, kubeconfig)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_view_credential_reads_everything_and_writes_nothing() {
    let Some(c) = cluster("a_view_credential_reads_everything_and_writes_nothing").await else {
        return;
    };
    let (_credential, kubeconfig) =
        issue(&c, "viewer", &decision("viewer", &["view"], &[], "1h")).await;
    for bin in kubectls(&c.env) {
        let who = bin.display().to_string();
        let ns = kubectl(
            &bin,
            &kubeconfig,
            &["get", "namespaces", "-o", "name"],
            None,
        )
        .await;
        assert!(ns.ok, "{who} get namespaces: {ns:?}");
        assert!(ns.stdout.contains("namespace/default"), "{who}: {ns:?}");
        assert!(ns.stdout.contains("namespace/kube-system"), "{who}: {ns:?}");
        let pods = kubectl(
            &bin,
            &kubeconfig,
            &["get", "pods", "--all-namespaces"],
            None,
        )
        .await;
        assert!(pods.ok, "{who} get pods: {pods:?}");

        let can_list = kubectl(&bin, &kubeconfig, &["auth", "can-i", "list", "pods"], None).await;
        assert_eq!(can_list.stdout.trim(), "yes", "{who}: {can_list:?}");
        let can_create = kubectl(
            &bin,
            &kubeconfig,
            &["auth", "can-i", "create", "pods"],
            None,
        )
        .await;
        assert_eq!(can_create.stdout.trim(), "no", "{who}: {can_create:?}");
        assert!(!can_create.ok, "{who}: can-i answers no with exit status 1");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edit_credential_writes_only_in_its_namespace() {
    let Some(c) = cluster("an_edit_credential_writes_only_in_its_namespace").await else {
        return;
    };
    c.env.ensure_namespace("team-a").await.unwrap();
    c.env.ensure_namespace("team-b").await.unwrap();
    let (_credential, kubeconfig) = issue(
        &c,
        "dev",
        &decision("dev", &[], &[("edit", "team-a")], "1h"),
    )
    .await;
    for (i, bin) in kubectls(&c.env).into_iter().enumerate() {
        let who = bin.display().to_string();
        let name = format!("settings-{i}");
        let allowed = kubectl(
            &bin,
            &kubeconfig,
            &[
                "-n",
                "team-a",
                "create",
                "configmap",
                &name,
                "--from-literal=a=b",
            ],
            None,
        )
        .await;
        assert!(allowed.ok, "{who} create in team-a: {allowed:?}");
        let read = kubectl(
            &bin,
            &kubeconfig,
            &["-n", "team-a", "get", "configmap", &name],
            None,
        )
        .await;
        assert!(read.ok, "{who}: {read:?}");

        let refused = kubectl(
            &bin,
            &kubeconfig,
            &[
                "-n",
                "team-b",
                "create",
                "configmap",
                &name,
                "--from-literal=a=b",
            ],
            None,
        )
        .await;
        assert!(
            !refused.ok,
            "{who} create in team-b must be refused: {refused:?}"
        );
        assert!(refused.stderr.contains("forbidden"), "{who}: {refused:?}");
    }
}

/// `get namespaces` with this kubeconfig: `Some(true)` allowed, `Some(false)` refused as
/// unauthenticated, `None` anything else.
async fn get_namespaces(bin: &std::path::Path, kubeconfig: &std::path::Path) -> Option<bool> {
    let run = kubectl(bin, kubeconfig, &["get", "namespaces", "-o", "name"], None).await;
    if run.ok {
        Some(true)
    } else if run.stderr.contains("Unauthorized") || run.stderr.contains("must be logged in") {
        Some(false)
    } else {
        eprintln!("kubectl get namespaces: {run:?}");
        None
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_credential_is_refused_within_15_seconds() {
    let Some(c) = cluster("a_revoked_credential_is_refused_within_15_seconds").await else {
        return;
    };
    let bins = kubectls(&c.env);
    let (credential, kubeconfig) =
        issue(&c, "viewer", &decision("viewer", &["view"], &[], "1h")).await;
    for bin in &bins {
        assert_eq!(
            get_namespaces(bin, &kubeconfig).await,
            Some(true),
            "{}",
            bin.display()
        );
    }

    let revoked = c
        .issuer
        .revoke(&alice("viewer").node.stable_id)
        .await
        .unwrap();
    assert_eq!(revoked, vec![credential.session.clone()]);
    let refused = eventually(Duration::from_secs(15), || {
        let (bin, kubeconfig) = (bins[0].clone(), kubeconfig.clone());
        async move { get_namespaces(&bin, &kubeconfig).await == Some(false) }
    })
    .await;
    assert!(refused, "the revoked token still works after 15 s");
    for bin in &bins {
        assert_eq!(
            get_namespaces(bin, &kubeconfig).await,
            Some(false),
            "{}",
            bin.display()
        );
    }
    // The cluster itself still answers: the admin is not shut out.
    assert_eq!(
        get_namespaces(&bins[0], c.env.admin_kubeconfig()).await,
        Some(true)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_is_refused_within_15_seconds_of_its_expiry() {
    let Some(c) = cluster("a_session_is_refused_within_15_seconds_of_its_expiry").await else {
        return;
    };
    let mappings: kube::Api<GrantMapping> = kube::Api::all(c.env.client());
    let spec = GrantMappingSpec {
        cluster_roles: vec!["view".to_owned()],
        ..GrantMappingSpec::default()
    };
    mappings
        .create(&Default::default(), &GrantMapping::new("viewer", spec))
        .await
        .unwrap();
    let tailnet = Arc::new(TestTailnet::new());
    tailnet.join(&alice("viewer"));
    let reconciler = KubernetesReconciler::new(
        c.env.client(),
        ReconcilerSettings::new(NAMESPACE, "e2e-reconciler"),
        Arc::new(SystemClock),
        tailnet,
        Arc::new(suite_grant_check(NAMESPACE)),
    );
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(async move {
        reconciler
            .run(async {
                let _ = stopped.await;
            })
            .await
    });

    let bin = c.env.kubectl();
    let (credential, kubeconfig) =
        issue(&c, "viewer", &decision("viewer", &["view"], &[], "30s")).await;
    assert_eq!(get_namespaces(&bin, &kubeconfig).await, Some(true));
    // The token itself lives at least 600 s (TokenRequest's floor): only tka ends it.
    assert!(credential.token_expires_at > credential.session_expires_at);

    let limit = credential.session_expires_at + jiff::SignedDuration::from_secs(15);
    let wait = Duration::try_from(limit.duration_since(Timestamp::now())).unwrap_or_default();
    let refused = eventually(wait, || {
        let (bin, kubeconfig) = (bin.clone(), kubeconfig.clone());
        async move { get_namespaces(&bin, &kubeconfig).await == Some(false) }
    })
    .await;
    assert!(
        refused,
        "the expired session's token still works 15 s after the expiry"
    );
    assert!(
        Timestamp::now() >= credential.session_expires_at,
        "refused before the session expired"
    );
    let _ = stop.send(());
    tokio::time::timeout(Duration::from_secs(30), running)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}
