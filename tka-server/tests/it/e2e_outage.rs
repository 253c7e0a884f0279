//! Outages of the components tka-server depends on, on the real components (kube-apiserver and
//! etcd, tailscaled nodes, the built `tka-server`, `tka` and kubectl):
//!
//! - the API server stops (SIGKILL) while logins and logouts are running and while watches run
//!   through the proxy: the watches end (no client hangs), logins and logouts fail fast with
//!   503, `Retry-After` and a problem+json body, proxied requests get a Kubernetes `Status`,
//!   `/readyz` says which check fails; a session that ends during the outage is refused by
//!   the proxy then and after the API server is back (its watch does not resume); once the API
//!   server is back (same port, same etcd) readiness recovers without a restart of tka-server,
//!   every Session left is complete or gone and no labelled object is orphaned.
//!
//! Skips without `TKA_TESTENV_BIN` (fails with `TKA_REQUIRE_TESTENV=1`).

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_openapi::api::rbac::v1::{ClusterRoleBinding, RoleBinding};
use kube::api::ListParams;
use kube::{Api, ResourceExt as _};
use serde_json::{Value, json};
use tka_core::kubernetes::{MANAGED_BY_LABEL, SESSION_LABEL, Session};
use tka_testkit::testenv::{
    FakeUpstream, KubeEnv, KubectlPortForward, ServerProcess, StreamProtocol, TailnetEnv,
    TailnetGrant, TailnetNodeSpec, bin_dir_or_skip, exclusive, viewer_mapping,
};
use tokio::io::AsyncReadExt as _;

use crate::e2e_proxy::{ProxyWorld, Watch, binaries, person, proxied_login, proxy_flags};
use crate::e2e_proxy_upgrades::{held_exec, proxied_kubeconfig};
use crate::e2e_tailnet::{CLUSTER, run};

const CAP: &str = "tka.dev/cap/kubernetes";

/// "Nothing hangs": every request made during an outage is answered, and every stream open when
/// it starts ends, within this bound (generous; not a timing assertion).
const BOUND: Duration = Duration::from_secs(15);

/// One HTTP exchange with curl (through a SOCKS5 proxy when `socks5` is set): status, the
/// response headers (lower-case names), the body (JSON when it is JSON), and how long it took.
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: Value,
    took: Duration,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

impl std::fmt::Debug for Answer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} after {:?}; {:?}; {}",
            self.status, self.took, self.headers, self.body
        )
    }
}

async fn curl(socks5: Option<&str>, method: &str, url: &str, json_body: Option<&str>) -> Answer {
    let dir = tempfile::tempdir().unwrap();
    let head = dir.path().join("head");
    let head_arg = head.display().to_string();
    let mut args: Vec<&str> = vec![
        "-sS",
        "--max-time",
        "30",
        "-X",
        method,
        "-D",
        &head_arg,
        "-o",
        "-",
    ];
    if let Some(socks5) = socks5 {
        args.extend(["--socks5-hostname", socks5]);
    }
    if let Some(body) = json_body {
        args.extend([
            "-H",
            "Content-Type: application/json",
            "--data-binary",
            body,
        ]);
    }
    args.push(url);
    let started = Instant::now();
    let out = run(Path::new("/usr/bin/curl"), &args, &[]).await;
    let took = started.elapsed();
    assert!(out.ok, "curl {args:?}: {out:?}");
    let head = std::fs::read_to_string(&head).unwrap();
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {head:?}"));
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let body =
        serde_json::from_str(&out.stdout).unwrap_or_else(|_| Value::String(out.stdout.clone()));
    Answer {
        status,
        headers,
        body,
        took,
    }
}

/// The ops listener's `/readyz`: status and text.
async fn readyz(ops: SocketAddr) -> (u16, String) {
    let answer = curl(None, "GET", &format!("http://{ops}/readyz"), None).await;
    let text = answer.body.as_str().unwrap_or_default().to_owned();
    (answer.status, text)
}

/// Polls `/readyz` every 250 ms until it answers `want`, for at most `limit`.
async fn readyz_until(ops: SocketAddr, want: u16, limit: Duration) -> (u16, String) {
    let deadline = Instant::now() + limit;
    loop {
        let (status, text) = readyz(ops).await;
        if status == want || Instant::now() >= deadline {
            return (status, text);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// An API refusal during an outage: 503 with a `Retry-After` of whole seconds and a problem
/// document whose code is `code`, answered within [`BOUND`].
fn assert_unavailable(answer: &Answer, code: &str, what: &str, log: &str) {
    assert_eq!(answer.status, 503, "{what}: {answer:?}\nserver log:\n{log}");
    assert!(
        answer
            .header("retry-after")
            .is_some_and(|v| v.parse::<u64>().is_ok_and(|s| s >= 1)),
        "{what} has no Retry-After: {answer:?}"
    );
    assert!(
        answer
            .header("content-type")
            .is_some_and(|v| v.starts_with("application/problem+json")),
        "{what} is no problem+json: {answer:?}"
    );
    assert_eq!(answer.body["status"], 503, "{what}: {answer:?}");
    assert_eq!(answer.body["code"], code, "{what}: {answer:?}");
    assert!(answer.took < BOUND, "{what} took {:?}", answer.took);
}

/// What is wrong with tka's objects: a Session that is not complete (no ServiceAccount or
/// revision recorded, or a recorded child missing), or a labelled ServiceAccount or binding
/// that no complete Session records. Empty when every session is complete and nothing is
/// orphaned.
async fn half_made(kube: &KubeEnv) -> Vec<String> {
    let client = kube.client();
    let managed = ListParams::default().labels(&format!("{MANAGED_BY_LABEL}=tka"));
    let sessions = Api::<Session>::all(client.clone())
        .list(&ListParams::default())
        .await
        .unwrap()
        .items;
    let accounts = Api::<ServiceAccount>::all(client.clone())
        .list(&managed)
        .await
        .unwrap()
        .items;
    let cluster_bindings = Api::<ClusterRoleBinding>::all(client.clone())
        .list(&managed)
        .await
        .unwrap()
        .items;
    let bindings = Api::<RoleBinding>::all(client)
        .list(&managed)
        .await
        .unwrap()
        .items;
    let mut recorded = BTreeSet::new();
    let mut wrong = Vec::new();
    let existing: BTreeSet<String> = accounts
        .iter()
        .map(|a| a.uid().unwrap_or_default())
        .chain(cluster_bindings.iter().map(|b| b.uid().unwrap_or_default()))
        .chain(bindings.iter().map(|b| b.uid().unwrap_or_default()))
        .collect();
    for session in &sessions {
        let name = session.name_any();
        let Some(status) = session.status.as_ref() else {
            wrong.push(format!("session {name} has no status"));
            continue;
        };
        let Some(account) = status.service_account.as_ref() else {
            wrong.push(format!("session {name} records no ServiceAccount"));
            continue;
        };
        if status.revision.is_none() {
            wrong.push(format!("session {name} has no complete revision"));
        }
        let uids = std::iter::once(&account.uid).chain(status.bindings.iter().map(|b| &b.uid));
        for uid in uids {
            if !existing.contains(uid) {
                wrong.push(format!("session {name} records a child {uid} that is gone"));
            }
            recorded.insert(uid.clone());
        }
        if session.metadata.deletion_timestamp.is_some() {
            wrong.push(format!("session {name} is being deleted"));
        }
    }
    let labelled = accounts
        .iter()
        .map(|a| ("ServiceAccount", a.name_any(), a.uid(), a.labels().clone()))
        .chain(cluster_bindings.iter().map(|b| {
            (
                "ClusterRoleBinding",
                b.name_any(),
                b.uid(),
                b.labels().clone(),
            )
        }))
        .chain(
            bindings
                .iter()
                .map(|b| ("RoleBinding", b.name_any(), b.uid(), b.labels().clone())),
        );
    for (kind, name, uid, labels) in labelled {
        if !uid.is_some_and(|uid| recorded.contains(&uid)) {
            wrong.push(format!(
                "{kind} {name} (session {:?}) belongs to no complete session",
                labels.get(SESSION_LABEL)
            ));
        }
    }
    wrong
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e2e_an_api_server_outage_fails_fast_ends_the_streams_and_leaves_nothing_half_made() {
    let Some(mut world) = ProxyWorld::start(
        "e2e_an_api_server_outage_fails_fast_ends_the_streams_and_leaves_nothing_half_made",
        &[
            TailnetNodeSpec::user("laptop", "alice@example.com"),
            TailnetNodeSpec::user("desk", "carol@example.com"),
            TailnetNodeSpec::user("other", "bob@example.com"),
        ],
        &[
            TailnetGrant::new("laptop", "cluster", CAP, vec![json!({"role": "developer"})]),
            TailnetGrant::new("desk", "cluster", CAP, vec![json!({"role": "viewer"})]),
            TailnetGrant::new("other", "cluster", CAP, vec![json!({"role": "developer"})]),
        ],
        // bob's churn below makes many requests a second.
        &[
            "--rate-limit-per-minute",
            "6000",
            "--rate-limit-burst",
            "100",
        ],
    )
    .await
    else {
        return;
    };
    let laptop = world.node("laptop");
    let desk = world.node("desk");
    let other = world.node("other");
    let server_url = world.server.url();
    let proxy_url = world.proxy_url.clone();
    let ops = world.server.ops();
    let kubectl = world.kube.kubectl();
    let tka = world.tka.clone();
    let path = world.path.clone();
    let (_, alice_env) = person(world.work.path(), "alice", &path, &laptop);
    let (_, carol_env) = person(world.work.path(), "carol", &path, &desk);
    let alice_socks = format!("127.0.0.1:{}", laptop.socks5_port);
    let carol_socks = format!("127.0.0.1:{}", desk.socks5_port);
    let bob_socks = format!("127.0.0.1:{}", other.socks5_port);
    let server_log = world.server.log_path().to_owned();
    let log = move || std::fs::read_to_string(&server_log).unwrap_or_default();

    // Before: ready; alice (1 h) and carol (30 s) logged in through the proxy, each with a
    // watch running through it.
    let (status, text) = readyz(ops).await;
    assert_eq!(status, 200, "{text}");
    proxied_login(&tka, &server_url, &alice_env, &[], &log).await;
    let carol = proxied_login(&tka, &server_url, &carol_env, &["--ttl", "30s"], &log).await;
    let carol_expires: jiff::Timestamp = carol["sessionExpiresAt"]
        .as_str()
        .unwrap_or_else(|| panic!("no sessionExpiresAt: {carol}"))
        .parse()
        .unwrap();
    let mut alice_watch = Watch::start(&kubectl, &alice_env);
    alice_watch.until("namespace/kube-system").await;
    let mut carol_watch = Watch::start(&kubectl, &carol_env);
    carol_watch.until("namespace/kube-system").await;

    // bob logs in and out in a loop while the API server goes away under him: whatever step
    // the outage cuts, nothing half-made may survive it.
    let churning = Arc::new(AtomicBool::new(true));
    let churn = tokio::spawn({
        let churning = Arc::clone(&churning);
        let (socks, url) = (bob_socks.clone(), server_url.clone());
        async move {
            let mut answers = Vec::new();
            // Bounded: at most 400 requests, each bounded by curl's --max-time.
            for round in 0..400 {
                if !churning.load(Ordering::Relaxed) {
                    break;
                }
                let answer = if round % 2 == 0 {
                    curl(
                        Some(&socks),
                        "POST",
                        &format!("{url}/api/v1/login"),
                        Some("{}"),
                    )
                    .await
                } else {
                    curl(
                        Some(&socks),
                        "DELETE",
                        &format!("{url}/api/v1/session"),
                        None,
                    )
                    .await
                };
                answers.push(answer);
            }
            answers
        }
    });
    tokio::time::sleep(Duration::from_millis(1500)).await;
    world.kube.stop_api_server().await.unwrap();
    let stopped = Instant::now();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    churning.store(false, Ordering::Relaxed);
    let answers = churn.await.unwrap();
    assert!(
        answers.iter().any(|a| a.status == 200),
        "bob's churn never got through before the outage: {answers:?}\nserver log:\n{}",
        log()
    );
    for answer in &answers {
        assert!(
            [200, 204, 503].contains(&answer.status) && answer.took < BOUND,
            "a login or logout during the outage: {answer:?}\nserver log:\n{}",
            log()
        );
        if answer.status == 503 {
            assert!(answer.header("retry-after").is_some(), "{answer:?}");
        }
    }

    // The open watches end: nothing hangs on a dead upstream.
    assert!(
        alice_watch.ends_within(BOUND).await,
        "alice's watch through the proxy hangs on the stopped API server\nserver log:\n{}",
        log()
    );
    assert!(
        carol_watch.ends_within(BOUND).await,
        "carol's watch through the proxy hangs on the stopped API server"
    );

    // During the outage: logins and logouts fail fast with 503, Retry-After and a problem.
    let login = curl(
        Some(&bob_socks),
        "POST",
        &format!("{server_url}/api/v1/login"),
        Some("{}"),
    )
    .await;
    assert_unavailable(&login, "clusterUnavailable", "a login", &log());
    let logout = curl(
        Some(&alice_socks),
        "DELETE",
        &format!("{server_url}/api/v1/session"),
        None,
    )
    .await;
    assert_unavailable(&logout, "clusterUnavailable", "a logout", &log());
    let refresh = curl(
        Some(&alice_socks),
        "POST",
        &format!("{server_url}/api/v1/token"),
        Some("{}"),
    )
    .await;
    assert_unavailable(&refresh, "clusterUnavailable", "a refresh", &log());
    // Readiness says so, and names the check.
    let (status, text) = readyz_until(ops, 503, BOUND).await;
    assert_eq!(status, 503, "/readyz during the outage: {text}");
    assert!(text.contains("kubernetes:"), "{text}");
    // A proxied request gets a Kubernetes Status, at once.
    let proxied = curl(
        Some(&alice_socks),
        "GET",
        &format!("{proxy_url}/api/v1/namespaces"),
        None,
    )
    .await;
    assert!(
        proxied.status >= 500 && proxied.body["kind"] == "Status" && proxied.took < BOUND,
        "a proxied request during the outage: {proxied:?}\nserver log:\n{}",
        log()
    );
    let ns = run(
        &kubectl,
        &["get", "ns", "--request-timeout=15s"],
        &alice_env,
    )
    .await;
    assert!(
        !ns.ok,
        "kubectl got through to a stopped API server: {ns:?}"
    );

    // carol's session ends while the API server is down: the proxy refuses her at once, by
    // the session's own end, with nothing to ask the API server.
    let left = carol_expires.duration_since(jiff::Timestamp::now());
    let left = Duration::try_from(left).unwrap_or(Duration::ZERO);
    tokio::time::sleep(left + Duration::from_secs(1)).await;
    assert!(
        !world.kube.api_server_running(),
        "the API server is back early"
    );
    let refused = curl(
        Some(&carol_socks),
        "GET",
        &format!("{proxy_url}/api/v1/namespaces"),
        None,
    )
    .await;
    assert_eq!(refused.status, 401, "carol's ended session: {refused:?}");
    eprintln!("the API server was down for {:?}", stopped.elapsed());

    // The API server comes back on the same port and etcd; tka-server is not restarted.
    world.kube.start_api_server().await.unwrap();
    let (status, text) = readyz_until(ops, 200, Duration::from_secs(60)).await;
    assert_eq!(
        status,
        200,
        "/readyz after the outage: {text}\nserver log:\n{}",
        log()
    );

    // alice's session works again through the proxy: a new watch sees a new namespace.
    let mut watch = None;
    for _ in 0..60 {
        let ns = run(&kubectl, &["get", "ns", "-o", "name"], &alice_env).await;
        if ns.ok {
            watch = Some(Watch::start(&kubectl, &alice_env));
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let mut watch = watch.unwrap_or_else(|| {
        panic!(
            "alice's session does not work through the proxy 30 s after the outage\nserver log:\n{}",
            log()
        )
    });
    watch.until("namespace/kube-system").await;
    world.kube.ensure_namespace("after-outage").await.unwrap();
    watch.until("namespace/after-outage").await;

    // carol's ended session does not come back: a watch is refused with the proxy's message,
    // and the proxy still answers 401.
    let carol_again = run(
        &kubectl,
        &["get", "ns", "--watch", "--request-timeout=15s"],
        &carol_env,
    )
    .await;
    assert!(
        !carol_again.ok,
        "carol's watch resumed after her session ended: {carol_again:?}"
    );
    let refused = curl(
        Some(&carol_socks),
        "GET",
        &format!("{proxy_url}/api/v1/namespaces?watch=true"),
        None,
    )
    .await;
    assert_eq!(
        refused.status, 401,
        "carol's ended session after the outage: {refused:?}"
    );

    // Nothing half-made survives: once the reconciler has been through (its grace period for
    // a session caught half-way is 60 s), every Session is complete and every labelled object
    // belongs to one; carol's expired session is gone.
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut wrong = half_made(&world.kube).await;
    eprintln!("right after the outage: {wrong:?}");
    while !wrong.is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_secs(1)).await;
        wrong = half_made(&world.kube).await;
    }
    assert!(wrong.is_empty(), "{wrong:?}\nserver log:\n{}", log());
    // carol's session expired during the outage; the reconciler ends it once its watches have
    // listed again after the outage (bounded by the same deadline).
    let logins = || async {
        Api::<Session>::all(world.kube.client())
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .iter()
            .map(|s| s.spec.identity.login_name.clone())
            .collect::<Vec<String>>()
    };
    let mut sessions = logins().await;
    while sessions.iter().any(|l| l == "carol@example.com") && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_secs(1)).await;
        sessions = logins().await;
    }
    assert!(
        sessions.iter().any(|l| l == "alice@example.com")
            && !sessions.iter().any(|l| l == "carol@example.com"),
        "{sessions:?}\nserver log:\n{}",
        log()
    );

    // And logins work again.
    let login = curl(
        Some(&bob_socks),
        "POST",
        &format!("{server_url}/api/v1/login"),
        Some("{}"),
    )
    .await;
    assert_eq!(login.status, 200, "{login:?}\nserver log:\n{}", log());
    assert!(half_made(&world.kube).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e2e_a_tailscaled_restart_under_the_server_answers_503_and_recovers_without_a_restart() {
    let Some(mut world) = ProxyWorld::start(
        "e2e_a_tailscaled_restart_under_the_server_answers_503_and_recovers_without_a_restart",
        &[TailnetNodeSpec::user("laptop", "alice@example.com")],
        &[TailnetGrant::new(
            "laptop",
            "cluster",
            CAP,
            vec![json!({"role": "developer"})],
        )],
        &[],
    )
    .await
    else {
        return;
    };
    let laptop = world.node("laptop");
    let server_url = world.server.url();
    let proxy_url = world.proxy_url.clone();
    let ops = world.server.ops();
    let kubectl = world.kube.kubectl();
    let tka = world.tka.clone();
    let path = world.path.clone();
    let (_, alice_env) = person(world.work.path(), "alice", &path, &laptop);
    let alice_socks = format!("127.0.0.1:{}", laptop.socks5_port);
    let server_log = world.server.log_path().to_owned();
    let log = move || std::fs::read_to_string(&server_log).unwrap_or_default();
    // Straight to the listeners on loopback, not through the tailnet: with tailscaled up whois
    // knows no such caller (403); with it down, whois cannot be asked (503).
    let api_direct = format!("http://{}", world.server.listen());
    let proxy_port = proxy_url.rsplit(':').next().unwrap().to_owned();
    let proxy_direct = format!("http://127.0.0.1:{proxy_port}");

    // Before: ready, alice logged in through the proxy, kubectl works through it; a stranger
    // on loopback is refused as one.
    let (status, text) = readyz(ops).await;
    assert_eq!(status, 200, "{text}");
    proxied_login(&tka, &server_url, &alice_env, &[], &log).await;
    let ns = run(&kubectl, &["get", "ns", "-o", "name"], &alice_env).await;
    assert!(ns.ok, "{ns:?}");
    let stranger = curl(
        None,
        "POST",
        &format!("{api_direct}/api/v1/login"),
        Some("{}"),
    )
    .await;
    assert_eq!(stranger.status, 403, "{stranger:?}");
    assert_eq!(stranger.body["code"], "unknownCaller", "{stranger:?}");
    let stranger = curl(
        None,
        "GET",
        &format!("{proxy_direct}/api/v1/namespaces"),
        None,
    )
    .await;
    assert_eq!(stranger.status, 403, "{stranger:?}");

    // tailscaled stops under the running server.
    world.tailnet.stop_node("cluster").await.unwrap();
    let login = curl(
        None,
        "POST",
        &format!("{api_direct}/api/v1/login"),
        Some("{}"),
    )
    .await;
    assert_unavailable(
        &login,
        "identityUnavailable",
        "a login while tailscaled is down",
        &log(),
    );
    let proxied = curl(
        None,
        "GET",
        &format!("{proxy_direct}/api/v1/namespaces"),
        None,
    )
    .await;
    assert!(
        proxied.status == 503
            && proxied.body["kind"] == "Status"
            && proxied.header("retry-after").is_some()
            && proxied.took < BOUND,
        "a proxied request while tailscaled is down: {proxied:?}\nserver log:\n{}",
        log()
    );
    let (status, text) = readyz_until(ops, 503, BOUND).await;
    assert_eq!(status, 503, "/readyz while tailscaled is down: {text}");
    assert!(text.contains("tailscaled:"), "{text}");

    // It comes back from its state as the same node; the server, never restarted, serves
    // again: readiness, a login through the tailnet and kubectl through the proxy.
    let cluster = world.tailnet.start_node("cluster").await.unwrap();
    assert_eq!(cluster.stable_id, world.node("cluster").stable_id);
    let (status, text) = readyz_until(ops, 200, Duration::from_secs(60)).await;
    assert_eq!(
        status,
        200,
        "/readyz after tailscaled is back: {text}\nserver log:\n{}",
        log()
    );
    let mut answer = None;
    for _ in 0..60 {
        let login = curl(
            Some(&alice_socks),
            "POST",
            &format!("{server_url}/api/v1/login"),
            Some("{}"),
        )
        .await;
        if login.status == 200 {
            answer = Some(login);
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(
        answer.is_some(),
        "no login through the tailnet within 30 s of tailscaled's return\nserver log:\n{}",
        log()
    );
    let ns = run(&kubectl, &["get", "ns", "-o", "name"], &alice_env).await;
    assert!(
        ns.ok,
        "kubectl through the proxy after the restart: {ns:?}\nserver log:\n{}",
        log()
    );
    let stranger = curl(
        None,
        "POST",
        &format!("{api_direct}/api/v1/login"),
        Some("{}"),
    )
    .await;
    assert_eq!(stranger.status, 403, "{stranger:?}");
}

/// The proxy's `tka_proxy_active_streams` gauge.
async fn active_streams(ops: SocketAddr) -> Option<f64> {
    let answer = curl(None, "GET", &format!("http://{ops}/metrics"), None).await;
    answer
        .body
        .as_str()?
        .lines()
        .find_map(|l| l.strip_prefix("tka_proxy_active_streams "))?
        .trim()
        .parse()
        .ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e2e_the_proxys_upstream_killed_under_open_streams_ends_them_and_answers_a_clean_error() {
    let Some(bin) = bin_dir_or_skip(
        "e2e_the_proxys_upstream_killed_under_open_streams_ends_them_and_answers_a_clean_error",
    ) else {
        return;
    };
    let _permit = exclusive().await;
    let (server_bin, _) = binaries();
    let kube = KubeEnv::start(&bin).await.unwrap();
    kube.prepare_for_tka(&[viewer_mapping()]).await.unwrap();
    let tailnet = TailnetEnv::start_cluster_and_laptop(&bin, &["viewer"], &[])
        .await
        .unwrap();
    let cluster = tailnet.node("cluster").unwrap().clone();
    let laptop = tailnet.node("laptop").unwrap().clone();
    let upstream = FakeUpstream::start(&bin).await.unwrap();
    let (mut flags, proxy_url) = proxy_flags(&cluster);
    flags.extend([
        "--proxy-upstream".to_owned(),
        upstream.url().to_owned(),
        "--proxy-upstream-ca".to_owned(),
        upstream.ca_file().unwrap().display().to_string(),
    ]);
    let server = ServerProcess::builder(&server_bin, &kube, &cluster, CLUSTER)
        .args(flags)
        .start()
        .await
        .unwrap();
    let log = || server.log();
    let ops = server.ops();
    let alice_socks = format!("127.0.0.1:{}", laptop.socks5_port);
    let work = tempfile::tempdir().unwrap();
    let home = work.path();
    let config = proxied_kubeconfig(home, "laptop", &proxy_url, &laptop);
    let kubectl = kube.kubectl();

    let login = curl(
        Some(&alice_socks),
        "POST",
        &format!("{}/api/v1/login", server.url()),
        Some(r#"{"role":"viewer"}"#),
    )
    .await;
    assert_eq!(login.status, 200, "{login:?}\nserver log:\n{}", log());

    // Open through the proxy: an exec with stdin held open and a port-forward.
    let protocol = StreamProtocol::WebSocket;
    let mut held = held_exec(&kubectl, &config, protocol, home).await;
    let forward = KubectlPortForward::start(&kubectl, &config, protocol, home, "pod/echo", 80)
        .await
        .unwrap();
    assert_eq!(forward.exchange(b"ping").await.unwrap(), b"ping");
    assert!(
        active_streams(ops).await.is_some_and(|n| n >= 1.0),
        "the open streams are not counted"
    );

    // The upstream dies (SIGKILL).
    drop(upstream);

    // The exec ends although its stdin stays open.
    let mut rest = Vec::new();
    let ended = tokio::time::timeout(BOUND, async {
        let _ = held.stdout.read_to_end(&mut rest).await;
        held.child.wait().await
    })
    .await;
    assert!(
        ended.is_ok(),
        "kubectl exec hangs on a dead upstream\nserver log:\n{}",
        log()
    );
    drop(held.stdin);
    // The port-forward carries nothing any more: kubectl has exited or the exchange fails,
    // without hanging.
    let carried = tokio::time::timeout(BOUND, forward.exchange(b"ping")).await;
    let hung = carried.is_err();
    let still_echoes = matches!(&carried, Ok(Ok(answer)) if answer == b"ping");
    assert!(
        !hung && !still_echoes,
        "the port-forward hangs or still echoes on a dead upstream: {carried:?}; kubectl: {}\nserver log:\n{}",
        forward.stderr(),
        log()
    );
    // No stream is left open in the proxy.
    let deadline = Instant::now() + BOUND;
    let mut open = active_streams(ops).await;
    while open != Some(0.0) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(250)).await;
        open = active_streams(ops).await;
    }
    assert_eq!(open, Some(0.0), "streams left open\nserver log:\n{}", log());

    // A new request gets a clean error at once: a Kubernetes Status naming the upstream.
    let answer = curl(
        Some(&alice_socks),
        "GET",
        &format!("{proxy_url}/api/v1/namespaces/default/pods/echo"),
        None,
    )
    .await;
    assert_eq!(answer.status, 502, "{answer:?}");
    assert_eq!(answer.body["kind"], "Status", "{answer:?}");
    assert!(
        answer.body["message"]
            .as_str()
            .is_some_and(|m| m.contains("could not be reached")),
        "{answer:?}"
    );
    assert!(answer.took < BOUND, "{answer:?}");
    let exec = run(
        &kubectl,
        &[
            "--kubeconfig",
            config.to_str().unwrap(),
            "--request-timeout=15s",
            "exec",
            "echo",
            "--",
            "echo",
            "hi",
        ],
        &[("HOME", home.display().to_string())],
    )
    .await;
    assert!(!exec.ok, "{exec:?}");
    // The API listener still answers: the session is there.
    let session = curl(
        Some(&alice_socks),
        "GET",
        &format!("{}/api/v1/session", server.url()),
        None,
    )
    .await;
    assert_eq!(session.status, 200, "{session:?}");
}
