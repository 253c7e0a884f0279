//! Crash recovery with nothing faked but the crash: the built `tka-server serve` (with the
//! `fault-injection` flag that test builds have) on a real API server with deploy/'s RBAC and a
//! real tailnet, requests from tailnet nodes through their SOCKS5 proxies (curl).
//!
//! The first test aborts the server right after each write of a login, of a role change and of a
//! logout (`--fault-abort-after <checkpoint>`, one device per checkpoint, one server start per
//! case), with every reconciler held off by a Lease another holder keeps; then one server starts
//! over the wreckage and makes one pass. After it, every session is complete (and its device gets
//! a working token) or gone (no Session, ServiceAccount or binding left, its old token refused),
//! and no labelled object is left without a complete session that owns it.
//!
//! The second keeps the reconciler down (the server stopped) past the expiry of several short
//! sessions, and shows that their tokens were bounded by construction and that the one pass
//! after the restart removes every expired session while a live one stays.
//!
//! kube-controller-manager is stopped once the cluster is set up, so no garbage collection
//! removes what tka leaves: everything gone was removed by tka.
//!
//! Skips without `TKA_TESTENV_BIN` (fails with `TKA_REQUIRE_TESTENV=1`).

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_openapi::api::rbac::v1::{ClusterRoleBinding, RoleBinding};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::{DeleteParams, ListParams, PostParams};
use kube::{Api, Client, ResourceExt};
use serde_json::{Value, json};
use tka_core::kubernetes::{Checkpoint, REVISION_LABEL, SESSION_LABEL, Session};
use tka_testkit::testenv::{
    KubeEnv, ServerProcess, TailnetEnv, TailnetGrant, TailnetNode, TailnetNodeSpec,
    bin_dir_or_skip, exclusive,
};

use super::e2e_refusals::{NS, apply_deploy, apply_yaml};
use super::e2e_tailnet::{CLUSTER, MANAGED, get, run};

/// The reconciler's grace for unfinished sessions (tka-core's default, which the server uses):
/// a half-made session younger than this may be a login in flight and is left alone.
const GRACE: Duration = Duration::from_secs(60);

/// The two roles: `viewer` binds `view` cluster-wide, `editor` binds `edit` in two namespaces,
/// so a change from one to the other makes and deletes bindings of both kinds.
const MAPPINGS: &str = r#"
apiVersion: tka.dev/v1alpha1
kind: GrantMapping
metadata: {name: viewer}
spec: {clusterRoles: [view], defaultTTL: 1h, maxTTL: 8h}
---
apiVersion: tka.dev/v1alpha1
kind: GrantMapping
metadata: {name: editor}
spec: {namespaced: [{clusterRole: edit, namespaces: [team-a, team-b]}], defaultTTL: 1h, maxTTL: 8h}
"#;

/// The cluster as deploy/ makes it, with [`MAPPINGS`], and a tailnet of the `cluster` node and
/// one user node per name in `devices`, each granted both roles. Returns the server's kubeconfig.
async fn world(bin: &Path, devices: &[String]) -> (KubeEnv, TailnetEnv, PathBuf) {
    let mut kube = KubeEnv::start(bin).await.unwrap();
    let server_kubeconfig = apply_deploy(&kube).await;
    for ns in ["team-a", "team-b"] {
        kube.ensure_namespace(ns).await.unwrap();
    }
    apply_yaml(&kube, MAPPINGS).await;
    // From here on nothing but tka removes what tka made.
    kube.stop_controller_manager();

    let mut nodes = vec![TailnetNodeSpec::tagged("cluster", &["tag:tka"])];
    let mut grants = Vec::new();
    for (i, device) in devices.iter().enumerate() {
        nodes.push(TailnetNodeSpec::user(
            device,
            &format!("user{i}@example.com"),
        ));
        grants.push(TailnetGrant::new(
            device,
            "cluster",
            "tka.dev/cap/kubernetes",
            vec![json!({"role": "viewer"}), json!({"role": "editor"})],
        ));
    }
    let tailnet = TailnetEnv::start(bin, &nodes, &grants).await.unwrap();
    (kube, tailnet, server_kubeconfig)
}

/// Starts `tka-server serve` as `pod` with deploy/'s ServiceAccount on the `cluster` node,
/// aborting at `fault` when given; returns once ready.
async fn start(
    kube: &KubeEnv,
    kubeconfig: &Path,
    cluster: &TailnetNode,
    pod: &str,
    fault: Option<Checkpoint>,
    extra: &[&str],
) -> ServerProcess {
    let server_bin = PathBuf::from(env!("CARGO_BIN_EXE_tka-server"));
    let mut args: Vec<String> = [
        "--rate-limit-per-minute",
        "600",
        "--rate-limit-burst",
        "200",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    if let Some(point) = fault {
        args.extend(["--fault-abort-after".to_owned(), point.to_string()]);
    }
    args.extend(extra.iter().map(|s| (*s).to_owned()));
    ServerProcess::builder(&server_bin, kube, cluster, CLUSTER)
        .kubeconfig(kubeconfig)
        .pod_name(pod)
        .args(args)
        .start()
        .await
        .unwrap_or_else(|e| panic!("{pod} did not start: {e}"))
}

/// One request from `device` to the server at `base` through the device's SOCKS5 proxy: the
/// status and body, or `None` when no answer came (the server died under it).
async fn call(
    device: &TailnetNode,
    base: &str,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> Option<(u16, Value)> {
    let url = format!("{base}{path}");
    let socks5 = format!("127.0.0.1:{}", device.socks5_port);
    let mut args: Vec<&str> = vec![
        "-sS",
        "--max-time",
        "30",
        "--socks5-hostname",
        &socks5,
        "-X",
        method,
        "-o",
        "-",
        "-w",
        "\n%{http_code}",
    ];
    if let Some(b) = body {
        args.extend(["-H", "Content-Type: application/json", "--data-binary", b]);
    }
    args.push(&url);
    let out = run(Path::new("/usr/bin/curl"), &args, &[]).await;
    if !out.ok {
        return None;
    }
    let (text, status) = out.stdout.rsplit_once('\n')?;
    let status = status.trim().parse().ok()?;
    let value = serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.to_owned()));
    Some((status, value))
}

async fn login(device: &TailnetNode, base: &str, body: &str) -> Option<(u16, Value)> {
    call(device, base, "POST", "/api/v1/login", Some(body)).await
}

/// Waits (at most 15 s) for the server to abort at `point` (its log says so), then reaps it.
async fn wait_for_abort(server: &mut ServerProcess, point: Checkpoint) {
    let line = format!("fault injection: aborting after {point}");
    for _ in 0..60 {
        if server.log().contains(&line) {
            server.stop();
            return;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    panic!(
        "the server did not abort at {point}\nserver log:\n{}",
        server.log()
    );
}

/// Whether `token` authenticates at the API server (`kubectl auth whoami`).
async fn authenticates(kube: &KubeEnv, token: &str) -> bool {
    let kubeconfig = kube.kubeconfig_for_token(token).unwrap();
    let out = run(
        &kube.kubectl(),
        &[
            "--kubeconfig",
            kubeconfig.to_str().unwrap(),
            "auth",
            "whoami",
        ],
        &[("HOME", std::env::temp_dir().display().to_string())],
    )
    .await;
    out.ok
}

/// Whether `token` is refused within 15 s (the API server caches authentications for 10 s).
async fn refused_soon(kube: &KubeEnv, token: &str) -> bool {
    for _ in 0..30 {
        if !authenticates(kube, token).await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    false
}

/// `kubectl auth can-i ARGS…` with `token`: `yes` or `no`.
async fn can_i(kube: &KubeEnv, token: &str, args: &[&str]) -> String {
    let kubeconfig = kube.kubeconfig_for_token(token).unwrap();
    let mut all = vec![
        "--kubeconfig",
        kubeconfig.to_str().unwrap(),
        "auth",
        "can-i",
    ];
    all.extend_from_slice(args);
    let out = run(
        &kube.kubectl(),
        &all,
        &[("HOME", std::env::temp_dir().display().to_string())],
    )
    .await;
    out.stdout.trim().to_owned()
}

/// A Lease `tka-system/tka-server` held by a holder that is no server, for an hour: no server
/// started meanwhile reconciles (it waits for the holder's lease to run out).
async fn hold_the_lease(client: &Client) {
    let now = MicroTime(Timestamp::now());
    let lease = Lease {
        metadata: ObjectMeta {
            name: Some("tka-server".to_owned()),
            namespace: Some(NS.to_owned()),
            ..ObjectMeta::default()
        },
        spec: Some(LeaseSpec {
            holder_identity: Some("held-by-the-test".to_owned()),
            lease_duration_seconds: Some(3600),
            acquire_time: Some(now.clone()),
            renew_time: Some(now),
            ..LeaseSpec::default()
        }),
    };
    Api::<Lease>::namespaced(client.clone(), NS)
        .create(&PostParams::default(), &lease)
        .await
        .unwrap();
}

async fn release_the_lease(client: &Client) {
    Api::<Lease>::namespaced(client.clone(), NS)
        .delete("tka-server", &DeleteParams::default())
        .await
        .unwrap();
}

/// A number the server's `/metrics` reports on the line starting with `prefix`, or 0.
async fn metric(ops: SocketAddr, prefix: &str) -> u64 {
    let Some((200, text)) = get(ops, &ops.to_string(), "/metrics").await else {
        return 0;
    };
    text.lines()
        .find_map(|l| l.strip_prefix(prefix))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map_or(0, |v| v as u64)
}

/// How many passes the server's reconciler has finished.
async fn passes(ops: SocketAddr) -> u64 {
    metric(ops, "tka_reconcile_duration_seconds_count ").await
}

/// Waits (at most 60 s) for the first pass of the server at `ops`.
async fn first_pass(server: &ServerProcess) {
    for _ in 0..240 {
        if passes(server.ops()).await > 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    panic!("no reconcile pass in 60 s\nserver log:\n{}", server.log());
}

/// The `removed=` count of each `reconcile pass` line of the server's log (the reconciler logs
/// one at info level for every pass that removed something or failed), and whether any pass
/// failed or reported a failure.
fn passes_that_removed(log: &str) -> (Vec<u64>, bool) {
    let mut removed = Vec::new();
    let mut failed = false;
    for line in log.lines().map(without_ansi) {
        failed |= line.contains("reconcile pass failed");
        if !line.contains("reconcile pass removed=") {
            continue;
        }
        let field = |name: &str| {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(name))
                .and_then(|v| v.parse::<u64>().ok())
        };
        if let Some(n) = field("removed=") {
            removed.push(n);
        }
        failed |= field("failures=").is_some_and(|n| n > 0);
    }
    (removed, failed)
}

/// `line` without terminal colour sequences (`ESC [ … m`).
fn without_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Every labelled object of the cluster, as `Kind/[namespace/]name` with its session label and
/// (bindings) revision label.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Child {
    what: String,
    session: Option<String>,
    revision: Option<String>,
    role: Option<String>,
}

async fn children(client: &Client) -> Vec<Child> {
    let params = ListParams::default().labels(MANAGED);
    let of = |what: String, labels: &std::collections::BTreeMap<String, String>, role| Child {
        what,
        session: labels.get(SESSION_LABEL).cloned(),
        revision: labels.get(REVISION_LABEL).cloned(),
        role,
    };
    let mut out = Vec::new();
    for sa in Api::<ServiceAccount>::all(client.clone())
        .list(&params)
        .await
        .unwrap()
    {
        out.push(of(
            format!(
                "ServiceAccount/{}/{}",
                sa.namespace().unwrap_or_default(),
                sa.name_any()
            ),
            sa.labels(),
            None,
        ));
    }
    for b in Api::<ClusterRoleBinding>::all(client.clone())
        .list(&params)
        .await
        .unwrap()
    {
        out.push(of(
            format!("ClusterRoleBinding/{}", b.name_any()),
            b.labels(),
            Some(b.role_ref.name.clone()),
        ));
    }
    for b in Api::<RoleBinding>::all(client.clone())
        .list(&params)
        .await
        .unwrap()
    {
        out.push(of(
            format!(
                "RoleBinding/{}/{}",
                b.namespace().unwrap_or_default(),
                b.name_any()
            ),
            b.labels(),
            Some(b.role_ref.name.clone()),
        ));
    }
    out.sort();
    out
}

async fn sessions(client: &Client) -> Vec<Session> {
    Api::<Session>::all(client.clone())
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
}

/// The sessions of the device `node` (by the node's stable ID in their spec).
fn of_device<'a>(all: &'a [Session], node: &TailnetNode) -> Vec<&'a Session> {
    all.iter()
        .filter(|s| s.spec.identity.node_id == node.stable_id)
        .collect()
}

/// What a case expects once the restarted server has made its pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// The device's session is complete with the bindings of this role, and only those.
    Complete(&'static str),
    /// The device has no session and nothing of it is left.
    Gone,
}

/// What a case does before the server aborts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    /// A first login (`viewer`).
    Login,
    /// A login for `editor` by a device logged in as `viewer`.
    RoleChange,
    /// `DELETE /api/v1/session` by a device logged in as `viewer`.
    Logout,
}

const CASES: [(Checkpoint, Action, Outcome); 14] = [
    (
        Checkpoint::LoginSessionCreated,
        Action::Login,
        Outcome::Gone,
    ),
    (
        Checkpoint::LoginServiceAccountCreated,
        Action::Login,
        Outcome::Gone,
    ),
    (
        Checkpoint::LoginBindingsCreated,
        Action::Login,
        Outcome::Gone,
    ),
    (
        Checkpoint::LoginTokenRequested,
        Action::Login,
        Outcome::Gone,
    ),
    (
        Checkpoint::LoginStatusCommitted,
        Action::Login,
        Outcome::Complete("viewer"),
    ),
    (
        Checkpoint::RoleChangeClaimed,
        Action::RoleChange,
        Outcome::Gone,
    ),
    (
        Checkpoint::RoleChangeBindingsCreated,
        Action::RoleChange,
        Outcome::Gone,
    ),
    (
        Checkpoint::RoleChangeTokenRequested,
        Action::RoleChange,
        Outcome::Gone,
    ),
    (
        Checkpoint::RoleChangeStatusCommitted,
        Action::RoleChange,
        Outcome::Complete("editor"),
    ),
    (
        Checkpoint::RoleChangeOldBindingsDeleted,
        Action::RoleChange,
        Outcome::Complete("editor"),
    ),
    (Checkpoint::EndMarked, Action::Logout, Outcome::Gone),
    (
        Checkpoint::EndServiceAccountDeleted,
        Action::Logout,
        Outcome::Gone,
    ),
    (
        Checkpoint::EndBindingsDeleted,
        Action::Logout,
        Outcome::Gone,
    ),
    (Checkpoint::EndSessionDeleted, Action::Logout, Outcome::Gone),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e2e_a_server_killed_between_any_two_writes_recovers_in_one_pass() {
    let Some(bin) =
        bin_dir_or_skip("e2e_a_server_killed_between_any_two_writes_recovers_in_one_pass")
    else {
        return;
    };
    let _permit = exclusive().await;
    assert_eq!(
        CASES.map(|(point, _, _)| point),
        Checkpoint::ALL,
        "every checkpoint has its case"
    );
    let devices: Vec<String> = (0..CASES.len()).map(|i| format!("device{i}")).collect();
    let (kube, tailnet, kubeconfig) = world(&bin, &devices).await;
    let admin = kube.client();
    let cluster = tailnet.node("cluster").unwrap().clone();
    let node = |i: usize| tailnet.node(&devices[i]).unwrap().clone();
    hold_the_lease(&admin).await;

    // 1. Devices that change roles or log out have a complete `viewer` session first; their
    // tokens work.
    let mut tokens = vec![None; CASES.len()];
    {
        let server = start(
            &kube,
            &kubeconfig,
            &cluster,
            "tka-server-crash-setup",
            None,
            &[],
        )
        .await;
        for (i, (_, action, _)) in CASES.iter().enumerate() {
            if *action == Action::Login {
                continue;
            }
            let (status, answer) = login(&node(i), &server.url(), r#"{"role":"viewer"}"#)
                .await
                .unwrap_or_else(|| panic!("no answer\nserver log:\n{}", server.log()));
            assert_eq!(status, 200, "{answer}\nserver log:\n{}", server.log());
            let token = answer["token"]["token"].as_str().unwrap().to_owned();
            tokens[i] = Some(token);
        }
        let token = tokens.iter().flatten().next().unwrap();
        assert_eq!(can_i(&kube, token, &["list", "pods", "-A"]).await, "yes");
    }

    // 2. One server per case, aborted right after its checkpoint; none of them reconciles.
    for (i, (point, action, _)) in CASES.iter().enumerate() {
        let pod = format!("tka-server-crash-{i}");
        let mut server = start(&kube, &kubeconfig, &cluster, &pod, Some(*point), &[]).await;
        let url = server.url();
        let answer = match action {
            Action::Login => login(&node(i), &url, r#"{"role":"viewer"}"#).await,
            Action::RoleChange => login(&node(i), &url, r#"{"role":"editor"}"#).await,
            Action::Logout => call(&node(i), &url, "DELETE", "/api/v1/session", None).await,
        };
        assert!(
            answer.is_none(),
            "{point}: an answer from a server that should have died: {answer:?}"
        );
        wait_for_abort(&mut server, *point).await;
    }
    let killed = Timestamp::now();
    // Refused first: every case left something behind (the device's Session at least).
    let wreck = sessions(&admin).await;
    let wreckage = children(&admin).await;
    eprintln!(
        "after the kills: {} sessions, {} labelled objects",
        wreck.len(),
        wreckage.len()
    );
    for (i, (point, _, _)) in CASES.iter().enumerate() {
        assert!(
            !of_device(&wreck, &node(i)).is_empty(),
            "{point}: nothing was left to recover from"
        );
    }

    // 3. Past the grace, so the first pass may judge every half-made session, one server
    // starts over it all, leading the reconciler.
    let rest = GRACE + Duration::from_secs(3);
    let since = Timestamp::now().duration_since(killed).unsigned_abs();
    if let Some(left) = rest.checked_sub(since) {
        tokio::time::sleep(left).await;
    }
    release_the_lease(&admin).await;
    let server = start(
        &kube,
        &kubeconfig,
        &cluster,
        "tka-server-crash-final",
        None,
        &[],
    )
    .await;
    first_pass(&server).await;
    let all = sessions(&admin).await;
    let objects = children(&admin).await;
    let passes_seen = passes(server.ops()).await;

    // 4. One pass removed everything half-made; the state read right after it is clean.
    let log = server.log();
    let (removals, failed) = passes_that_removed(&log);
    assert!(!failed, "a pass failed\nserver log:\n{log}");
    // What is gone went in that one pass: every Session and labelled object of the wreckage
    // that is not there any more.
    let gone = (wreck.len() - all.len()) + (wreckage.len() - objects.len());
    assert_eq!(
        removals
            .iter()
            .filter(|n| **n > 0)
            .copied()
            .collect::<Vec<_>>(),
        vec![gone as u64],
        "exactly one pass removed something ({passes_seen} passes)\nserver log:\n{log}"
    );
    // Every labelled object belongs to a complete session, of that session's current revision.
    for child in &objects {
        let session = child
            .session
            .as_deref()
            .and_then(|name| all.iter().find(|s| s.name_any() == name));
        let Some(session) = session else {
            panic!("{child:?} has no session\nall objects: {objects:#?}\nserver log:\n{log}");
        };
        assert!(
            session.is_complete(),
            "{child:?} belongs to an unfinished session {session:?}"
        );
        if child.role.is_some() {
            assert_eq!(
                child.revision.as_deref(),
                Some(session.spec.revision.as_str()),
                "{child:?}: a binding of another revision than the session's"
            );
        }
    }

    for (i, (point, _, outcome)) in CASES.iter().enumerate() {
        let device = node(i);
        let mine = of_device(&all, &device);
        match outcome {
            Outcome::Gone => {
                assert!(
                    mine.is_empty(),
                    "{point}: the device still has sessions {mine:?}\nserver log:\n{log}"
                );
                // Its old token (if it had one) no longer gets in.
                if let Some(token) = &tokens[i] {
                    assert!(
                        refused_soon(&kube, token).await,
                        "{point}: the old token still authenticates"
                    );
                }
            }
            Outcome::Complete(role) => {
                let [session] = mine.as_slice() else {
                    panic!("{point}: expected one session, found {mine:?}\nserver log:\n{log}");
                };
                assert!(session.is_complete(), "{point}: {session:?}");
                assert_eq!(session.spec.role, *role, "{point}");
                let name = session.name_any();
                let own: Vec<&Child> = objects
                    .iter()
                    .filter(|c| c.session.as_deref() == Some(name.as_str()))
                    .collect();
                let roles: BTreeSet<&str> = own.iter().filter_map(|c| c.role.as_deref()).collect();
                let expected: BTreeSet<&str> = match *role {
                    "viewer" => ["view"].into(),
                    _ => ["edit"].into(),
                };
                assert_eq!(
                    roles, expected,
                    "{point}: exactly one set of bindings: {own:?}"
                );
                let bindings = own.iter().filter(|c| c.role.is_some()).count();
                assert_eq!(
                    bindings,
                    if *role == "viewer" { 1 } else { 2 },
                    "{point}: {own:?}"
                );
                assert_eq!(
                    own.iter()
                        .filter(|c| c.what.starts_with("ServiceAccount/"))
                        .count(),
                    1,
                    "{point}: {own:?}"
                );
                // Usable: the device gets a token for it, and the token has the role's rights.
                let (status, answer) =
                    call(&device, &server.url(), "POST", "/api/v1/token", Some("{}"))
                        .await
                        .unwrap();
                assert_eq!(status, 200, "{point}: {answer}\nserver log:\n{log}");
                let token = answer["token"]["token"].as_str().unwrap();
                if *role == "viewer" {
                    assert_eq!(can_i(&kube, token, &["list", "pods", "-A"]).await, "yes");
                    assert_eq!(
                        can_i(&kube, token, &["create", "configmaps", "-n", "team-a"]).await,
                        "no"
                    );
                } else {
                    assert_eq!(
                        can_i(&kube, token, &["create", "configmaps", "-n", "team-a"]).await,
                        "yes"
                    );
                    assert_eq!(can_i(&kube, token, &["list", "pods", "-A"]).await, "no");
                }
            }
        }
    }

    // 5. Allowed pair: a device whose login died half-way logs in again at once.
    let (status, answer) = login(&node(0), &server.url(), r#"{"role":"viewer"}"#)
        .await
        .unwrap();
    assert_eq!(status, 200, "{answer}\nserver log:\n{}", server.log());
    let token = answer["token"]["token"].as_str().unwrap();
    assert!(authenticates(&kube, token).await);
}

/// The short sessions of the second test: their TTLs.
const SHORT_TTLS: [u64; 3] = [30, 35, 40];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e2e_a_reconciler_down_past_several_expiries_ends_them_all_in_one_pass() {
    let Some(bin) =
        bin_dir_or_skip("e2e_a_reconciler_down_past_several_expiries_ends_them_all_in_one_pass")
    else {
        return;
    };
    let _permit = exclusive().await;
    let devices: Vec<String> = (0..=SHORT_TTLS.len())
        .map(|i| format!("device{i}"))
        .collect();
    let (kube, tailnet, kubeconfig) = world(&bin, &devices).await;
    let admin = kube.client();
    let cluster = tailnet.node("cluster").unwrap().clone();
    let node = |i: usize| tailnet.node(&devices[i]).unwrap().clone();
    // The pod keeps its name across the crash (the kubelet restarts the container in place), so
    // the restarted server resumes its own Lease at once.
    let pod = "tka-server-expiry-0";

    // 1. Three short sessions and a long one; each token lives as long as the API server's
    // floor allows for a session that short (600 s), the long session's the default 15 min.
    let mut server = start(&kube, &kubeconfig, &cluster, pod, None, &[]).await;
    let mut short = Vec::new();
    for (i, ttl) in SHORT_TTLS.iter().enumerate() {
        let body = format!(r#"{{"role":"viewer","ttl":"{ttl}s"}}"#);
        let asked = Timestamp::now();
        let (status, answer) = login(&node(i), &server.url(), &body).await.unwrap();
        assert_eq!(status, 200, "{answer}\nserver log:\n{}", server.log());
        let token = answer["token"]["token"].as_str().unwrap().to_owned();
        let token_expires: Timestamp = answer["token"]["expiresAt"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap();
        let session_expires: Timestamp = answer["session"]["expiresAt"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap();
        let lifetime = token_expires.duration_since(asked);
        assert!(
            lifetime >= SignedDuration::from_secs(590)
                && lifetime <= SignedDuration::from_secs(610),
            "a token of a {ttl}s session lives {lifetime:#}: {answer}"
        );
        short.push((
            answer["session"]["name"].as_str().unwrap().to_owned(),
            token,
            session_expires,
        ));
    }
    let asked = Timestamp::now();
    let (status, answer) = login(
        &node(SHORT_TTLS.len()),
        &server.url(),
        r#"{"role":"viewer","ttl":"1h"}"#,
    )
    .await
    .unwrap();
    assert_eq!(status, 200, "{answer}");
    let long_token = answer["token"]["token"].as_str().unwrap().to_owned();
    let long_session = answer["session"]["name"].as_str().unwrap().to_owned();
    let token_expires: Timestamp = answer["token"]["expiresAt"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let lifetime = token_expires.duration_since(asked);
    assert!(
        lifetime >= SignedDuration::from_secs(890) && lifetime <= SignedDuration::from_secs(910),
        "the long session's token lives {lifetime:#}"
    );

    // 2. The server dies; the sessions expire one after the other while nothing reconciles.
    server.stop();
    let last = short.iter().map(|(_, _, at)| *at).max().unwrap();
    let wait = last.duration_since(Timestamp::now()) + SignedDuration::from_secs(3);
    if wait.is_positive() {
        tokio::time::sleep(wait.unsigned_abs()).await;
    }
    let names: BTreeSet<String> = sessions(&admin)
        .await
        .iter()
        .map(ResourceExt::name_any)
        .collect();
    for (name, token, expires) in &short {
        assert!(*expires < Timestamp::now());
        assert!(
            names.contains(name),
            "{name} was removed while no reconciler ran"
        );
        // What the reconciler being down costs, as docs/security.md says: the expired session's
        // last token still authenticates until its ServiceAccount goes (or its 600 s run out).
        assert!(
            authenticates(&kube, token).await,
            "{name}: the token of an expired session, reconciler down"
        );
    }

    // 3. The restarted server's first pass ends every expired session; the live one stays.
    let server = start(&kube, &kubeconfig, &cluster, pod, None, &[]).await;
    first_pass(&server).await;
    let left: BTreeSet<String> = sessions(&admin)
        .await
        .iter()
        .map(ResourceExt::name_any)
        .collect();
    let objects = children(&admin).await;
    let log = server.log();
    assert_eq!(
        left,
        BTreeSet::from([long_session.clone()]),
        "server log:\n{log}"
    );
    assert!(
        objects
            .iter()
            .all(|c| c.session.as_deref() == Some(long_session.as_str())),
        "{objects:#?}"
    );
    let (removals, failed) = passes_that_removed(&log);
    assert!(!failed, "a pass failed\nserver log:\n{log}");
    // Each expired session: its Session, ServiceAccount and ClusterRoleBinding, in one pass.
    assert_eq!(
        removals
            .iter()
            .filter(|n| **n > 0)
            .copied()
            .collect::<Vec<_>>(),
        vec![3 * SHORT_TTLS.len() as u64],
        "one pass removed everything expired\nserver log:\n{log}"
    );
    assert_eq!(
        metric(server.ops(), "tka_revocations_total{cause=\"expired\"} ").await,
        SHORT_TTLS.len() as u64
    );
    for (name, token, _) in &short {
        assert!(
            refused_soon(&kube, token).await,
            "{name}: the token still authenticates"
        );
    }
    assert!(
        authenticates(&kube, &long_token).await,
        "the live session's token works"
    );
}
