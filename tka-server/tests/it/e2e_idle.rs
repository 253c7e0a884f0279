//! A reconciler that rests, with nothing faked: the built `tka-server serve` with deploy/'s RBAC,
//! a real API server and a real tailnet. Some thousands of Sessions with their ServiceAccounts
//! and bindings, in the exact shape the issuer makes (copied from a real login), are on the
//! cluster when the server (re)starts. After its first pass, an idle stretch makes no LIST call
//! at all, counted from the API server's own `apiserver_request_total`; and a session that
//! expires afterwards is still removed, while the others stay.
//!
//! Skips without `TKA_TESTENV_BIN` (fails with `TKA_REQUIRE_TESTENV=1`).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_openapi::api::rbac::v1::{ClusterRoleBinding, RoleBinding};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Client, ResourceExt};
use serde_json::json;
use tka_core::kubernetes::{BindingKind, SESSION_LABEL, Session};
use tka_testkit::testenv::{KubeEnv, TailnetEnv, bin_dir_or_skip, exclusive};

use super::e2e_refusals::{Http, NS, apply_deploy, apply_yaml, start_server};
use super::e2e_tailnet::get;

/// How many sessions are on the cluster when the server starts.
const SESSIONS: usize = 2_000;
/// How many seeding requests are in flight at once.
const SEEDING: usize = 16;
/// How long the server is watched while nothing is due.
const IDLE: Duration = Duration::from_secs(15);

/// The resources a pass used to list, as the API server's metrics name them.
const LISTED: [&str; 6] = [
    "serviceaccounts",
    "rolebindings",
    "clusterrolebindings",
    "clusterroles",
    "sessions",
    "grantmappings",
];

/// LIST requests the API server has answered so far, per resource of [`LISTED`].
async fn list_counts(client: &Client) -> BTreeMap<&'static str, u64> {
    let request = http::Request::get("/metrics").body(Vec::new()).unwrap();
    let text = client.request_text(request).await.unwrap();
    let mut counts: BTreeMap<&'static str, u64> = LISTED.iter().map(|r| (*r, 0)).collect();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("apiserver_request_total{") else {
            continue;
        };
        if !rest.contains("verb=\"LIST\"") {
            continue;
        }
        for resource in LISTED {
            if rest.contains(&format!("resource=\"{resource}\"")) {
                let value = line.rsplit(' ').next().unwrap_or("0");
                *counts.get_mut(resource).unwrap() += value.parse::<f64>().unwrap_or(0.0) as u64;
            }
        }
    }
    counts
}

/// How many passes the server's reconciler has made (its pass duration histogram's count).
async fn passes(ops: SocketAddr) -> u64 {
    let Some((200, text)) = get(ops, &ops.to_string(), "/metrics").await else {
        return 0;
    };
    text.lines()
        .find_map(|l| l.strip_prefix("tka_reconcile_duration_seconds_count "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// A real login's objects, copied under a new session name: what the issuer would have made.
#[derive(Clone)]
struct Template {
    session: Session,
    service_account: ServiceAccount,
    cluster_role_bindings: Vec<ClusterRoleBinding>,
    role_bindings: Vec<RoleBinding>,
}

/// Fresh metadata for a copy of `meta` belonging to session `name` (uid `uid`); the binding
/// named `binding` (or the ServiceAccount, named like its session).
fn child_meta(meta: &ObjectMeta, name: &str, uid: &str, object_name: &str) -> ObjectMeta {
    let mut labels = meta.labels.clone().unwrap_or_default();
    labels.insert(SESSION_LABEL.to_owned(), name.to_owned());
    let mut owners = meta.owner_references.clone().unwrap_or_default();
    for o in &mut owners {
        o.name = name.to_owned();
        o.uid = uid.to_owned();
    }
    ObjectMeta {
        name: Some(object_name.to_owned()),
        namespace: meta.namespace.clone(),
        labels: Some(labels),
        owner_references: Some(owners),
        ..ObjectMeta::default()
    }
}

/// Makes one copy of `template` named `name`, ending at `expires_at`: the Session, its
/// ServiceAccount and bindings, then its status, as the issuer writes them.
async fn copy_session(client: &Client, template: &Template, name: &str, expires_at: Timestamp) {
    let sessions: Api<Session> = Api::all(client.clone());
    let mut session = Session::new(name, template.session.spec.clone());
    session.spec.expires_at = Time(expires_at);
    session.metadata.labels = template.session.metadata.labels.clone();
    session.metadata.finalizers = template.session.metadata.finalizers.clone();
    let made = sessions
        .create(&PostParams::default(), &session)
        .await
        .unwrap();
    let uid = made.uid().unwrap();

    let mut sa = template.service_account.clone();
    sa.metadata = child_meta(&sa.metadata, name, &uid, name);
    let sa = Api::<ServiceAccount>::namespaced(client.clone(), NS)
        .create(&PostParams::default(), &sa)
        .await
        .unwrap();
    let mut status = template.session.status.clone().unwrap();
    let account = status.service_account.as_mut().unwrap();
    account.name = name.to_owned();
    account.uid = sa.uid().unwrap();
    status.bindings.clear();
    status.last_token_id = None;
    status.last_token_expires_at = None;
    for (i, crb) in template.cluster_role_bindings.iter().enumerate() {
        let mut crb = crb.clone();
        let binding = format!("{name}-c{i}");
        crb.metadata = child_meta(&crb.metadata, name, &uid, &binding);
        for s in crb.subjects.iter_mut().flatten() {
            s.name = name.to_owned();
        }
        let made = Api::<ClusterRoleBinding>::all(client.clone())
            .create(&PostParams::default(), &crb)
            .await
            .unwrap();
        status.bindings.push(tka_core::kubernetes::BindingRef {
            kind: BindingKind::ClusterRoleBinding,
            namespace: None,
            name: binding,
            cluster_role: made.role_ref.name.clone(),
            uid: made.uid().unwrap(),
        });
    }
    for (i, rb) in template.role_bindings.iter().enumerate() {
        let mut rb = rb.clone();
        let binding = format!("{name}-r{i}");
        let namespace = rb.namespace().unwrap();
        rb.metadata = child_meta(&rb.metadata, name, &uid, &binding);
        for s in rb.subjects.iter_mut().flatten() {
            s.name = name.to_owned();
        }
        let made = Api::<RoleBinding>::namespaced(client.clone(), &namespace)
            .create(&PostParams::default(), &rb)
            .await
            .unwrap();
        status.bindings.push(tka_core::kubernetes::BindingRef {
            kind: BindingKind::RoleBinding,
            namespace: Some(namespace),
            name: binding,
            cluster_role: made.role_ref.name.clone(),
            uid: made.uid().unwrap(),
        });
    }
    sessions
        .patch_status(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({ "status": status })),
        )
        .await
        .unwrap();
}

async fn session_names(client: &Client) -> Vec<String> {
    Api::<Session>::all(client.clone())
        .list_metadata(&Default::default())
        .await
        .unwrap()
        .items
        .iter()
        .map(ResourceExt::name_any)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e2e_an_idle_server_with_thousands_of_sessions_lists_nothing_and_still_expires() {
    let Some(bin) = bin_dir_or_skip(
        "e2e_an_idle_server_with_thousands_of_sessions_lists_nothing_and_still_expires",
    ) else {
        return;
    };
    let _permit = exclusive().await;

    // 1. The cluster as deploy/ makes it; a mapping that binds cluster-wide and in a namespace.
    let kube = KubeEnv::start(&bin).await.unwrap();
    let server_kubeconfig = apply_deploy(&kube).await;
    kube.ensure_namespace("team-a").await.unwrap();
    apply_yaml(&kube, r#"
apiVersion: tka.dev/v1alpha1
kind: GrantMapping
metadata: {name: team}
spec: {clusterRoles: [view], namespaced: [{clusterRole: edit, namespaces: [team-a]}], defaultTTL: 1h, maxTTL: 8h}
"#).await;
    let tailnet = TailnetEnv::start_cluster_and_laptop(&bin, &["team"], &[])
        .await
        .unwrap();
    let cluster = tailnet.node("cluster").unwrap().clone();
    let laptop = tailnet.node("laptop").unwrap().clone();
    let admin = kube.client();
    // Only tka-server may write Sessions (deploy/'s admission policy): the copies are made with
    // its ServiceAccount's token, as the issuer would.
    let as_server = {
        let config = kube::config::Kubeconfig::read_from(&server_kubeconfig).unwrap();
        let config = kube::Config::from_custom_kubeconfig(config, &Default::default())
            .await
            .unwrap();
        Client::try_from(config).unwrap()
    };

    // 2. One real login gives the exact shape of a session's objects.
    let mut server = start_server(&kube, &server_kubeconfig, &cluster, "tka-server-idle-0").await;
    let alice = Http {
        socks5: format!("127.0.0.1:{}", laptop.socks5_port),
        base: format!("http://{}:{}", cluster.ipv4, server.port()),
    };
    let (status, answer) = alice.login(r#"{"role":"team"}"#).await;
    assert_eq!(status, 200, "{answer}\nserver log:\n{}", server.log());
    let template_name = answer["session"]["name"].as_str().unwrap().to_owned();
    server.stop();
    let session: Session = Api::all(admin.clone()).get(&template_name).await.unwrap();
    let service_account = Api::<ServiceAccount>::namespaced(admin.clone(), NS)
        .get(&template_name)
        .await
        .unwrap();
    let selector = format!("{SESSION_LABEL}={template_name}");
    let params = kube::api::ListParams::default().labels(&selector);
    let template = Arc::new(Template {
        session,
        service_account,
        cluster_role_bindings: Api::<ClusterRoleBinding>::all(admin.clone())
            .list(&params)
            .await
            .unwrap()
            .items,
        role_bindings: Api::<RoleBinding>::all(admin.clone())
            .list(&params)
            .await
            .unwrap()
            .items,
    });
    assert_eq!(template.cluster_role_bindings.len(), 1);
    assert_eq!(template.role_bindings.len(), 1);

    // 3. Thousands more like it, made concurrently with a bound, all ending in an hour.
    let ends = Timestamp::now() + SignedDuration::from_hours(1);
    futures::stream::iter(0..SESSIONS)
        .for_each_concurrent(SEEDING, |i| {
            let (client, template) = (as_server.clone(), template.clone());
            let name = format!("{template_name}-{i:04}");
            async move { copy_session(&client, &template, &name, ends).await }
        })
        .await;
    assert_eq!(session_names(&admin).await.len(), SESSIONS + 1);

    // 4. The server starts over them: its first pass, once every watch is listed.
    let server = start_server(&kube, &server_kubeconfig, &cluster, "tka-server-idle-1").await;
    let ops = server.ops();
    let mut first = 0;
    for _ in 0..240 {
        first = passes(ops).await;
        if first > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(first > 0, "no pass in 120 s\nserver log:\n{}", server.log());
    // Let whatever the first pass started settle.
    tokio::time::sleep(Duration::from_secs(3)).await;

    // 5. Refused: an idle stretch asks the API server for no list at all.
    let before = list_counts(&admin).await;
    let passes_before = passes(ops).await;
    tokio::time::sleep(IDLE).await;
    let after = list_counts(&admin).await;
    let passes_after = passes(ops).await;
    eprintln!(
        "LIST requests by resource before/after {IDLE:?} idle with {} sessions: {before:?} / {after:?}; passes {passes_before} / {passes_after}",
        SESSIONS + 1
    );
    assert_eq!(
        before,
        after,
        "LIST calls during an idle stretch\nserver log:\n{}",
        server.log()
    );
    assert_eq!(passes_before, passes_after, "a pass while nothing was due");
    assert_eq!(session_names(&admin).await.len(), SESSIONS + 1);

    // 6. Allowed: a session that expires now is still removed, and only it.
    let short = format!("{template_name}-short");
    copy_session(
        &as_server,
        &template,
        &short,
        Timestamp::now() + SignedDuration::from_secs(5),
    )
    .await;
    let mut gone = false;
    for _ in 0..120 {
        if !session_names(&admin).await.contains(&short) {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(
        gone,
        "the expired session was not removed\nserver log:\n{}",
        server.log()
    );
    let sa_left = Api::<ServiceAccount>::namespaced(admin.clone(), NS)
        .get_opt(&short)
        .await
        .unwrap();
    assert!(sa_left.is_none(), "its ServiceAccount went with it");
    assert_eq!(
        session_names(&admin).await.len(),
        SESSIONS + 1,
        "the live ones stay"
    );
}
