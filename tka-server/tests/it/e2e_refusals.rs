//! The server's refusals with nothing faked: the built `tka-server serve` runs with the token of
//! the `tka-system/tka-server` ServiceAccount that `kubectl apply -k tka-server/deploy` makes
//! (so with deploy/'s RBAC and admission policy, not as admin), on a real API server and a real
//! tailnet. Requests come from other nodes through their SOCKS5 proxies (curl). Each refusal
//! gets its documented status and problem code and creates no labelled object; each is paired
//! with an allowed request that succeeds; `tka-server drain` then leaves nothing behind. A
//! second test runs two replicas on two tagged nodes and checks that the Lease is handed over.
//! A third runs the server in PROXY protocol mode on 127.0.0.2 and checks that a tailnet peer
//! cannot reach it with a forged header, while the same bytes from the host are served.
//!
//! Skips without `TKA_TESTENV_BIN` (fails with `TKA_REQUIRE_TESTENV=1`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Value, json};
use tka_testkit::testenv::{
    KubeEnv, ServerProcess, TailnetEnv, TailnetGrant, TailnetNode, TailnetNodeSpec,
    bin_dir_or_skip, exclusive,
};

use super::e2e_tailnet::{CLUSTER, free_port, managed_objects, run};

pub(super) const NS: &str = "tka-system";
const MAX_BODY: usize = 4096;

fn deploy_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("deploy")
}

/// `kubectl --kubeconfig ADMIN ARGS…`; must succeed; its stdout.
pub(super) async fn admin_kubectl(kube: &KubeEnv, args: &[&str]) -> String {
    let mut all = vec!["--kubeconfig", kube.admin_kubeconfig().to_str().unwrap()];
    all.extend_from_slice(args);
    let out = run(
        &kube.kubectl(),
        &all,
        &[("HOME", std::env::temp_dir().display().to_string())],
    )
    .await;
    assert!(out.ok, "kubectl {args:?}: {out:?}");
    out.stdout
}

/// `kubectl apply` of the manifests in `yaml` as the admin; must succeed.
pub(super) async fn apply_yaml(kube: &KubeEnv, yaml: &str) {
    let work = tempfile::tempdir().unwrap();
    let file = work.path().join("manifests.yaml");
    std::fs::write(&file, yaml).unwrap();
    admin_kubectl(kube, &["apply", "-f", file.to_str().unwrap()]).await;
}

/// `Ready` condition of GrantMapping `name` as `Status/Reason`, once it is there (30 s at most).
pub(super) async fn ready_condition(kube: &KubeEnv, name: &str) -> String {
    let path = format!("grantmapping/{name}");
    let jsonpath =
        "jsonpath={range .status.conditions[?(@.type==\"Ready\")]}{.status}/{.reason}{end}";
    for _ in 0..120 {
        let got = admin_kubectl(kube, &["get", &path, "-o", jsonpath]).await;
        if !got.trim().is_empty() {
            return got.trim().to_owned();
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    panic!("GrantMapping {name} got no Ready condition in 30 s");
}

/// One HTTP request through a node's SOCKS5 proxy with curl: the status and the body (JSON
/// when it is JSON, else a string).
pub(super) struct Http {
    pub(super) socks5: String,
    pub(super) base: String,
}

impl Http {
    pub(super) async fn send(
        &self,
        method: &str,
        path: &str,
        headers: &[&str],
        body: Option<&str>,
    ) -> (u16, Value) {
        let url = format!("{}{path}", self.base);
        let mut args: Vec<&str> = vec![
            "-sS",
            "--max-time",
            "30",
            "--socks5-hostname",
            &self.socks5,
            "-X",
            method,
            "-o",
            "-",
            "-w",
            "\n%{http_code}",
        ];
        for h in headers {
            args.push("-H");
            args.push(h);
        }
        if let Some(b) = body {
            args.push("--data-binary");
            args.push(b);
        }
        args.push(&url);
        let out = run(Path::new("/usr/bin/curl"), &args, &[]).await;
        assert!(out.ok, "curl {args:?}: {out:?}");
        let (text, status) = out.stdout.rsplit_once('\n').unwrap();
        let status = status.trim().parse().unwrap();
        let value = serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.to_owned()));
        (status, value)
    }

    /// `POST /api/v1/login` with a JSON body.
    pub(super) async fn login(&self, body: &str) -> (u16, Value) {
        self.send(
            "POST",
            "/api/v1/login",
            &["Content-Type: application/json"],
            Some(body),
        )
        .await
    }
}

/// `kubectl apply -k tka-server/deploy` (its namespace first); a kubeconfig with a token of the
/// `tka-system/tka-server` ServiceAccount it makes.
pub(super) async fn apply_deploy(kube: &KubeEnv) -> PathBuf {
    let dir = deploy_dir();
    let ns_file = dir.join("namespace.yaml");
    admin_kubectl(kube, &["apply", "-f", ns_file.to_str().unwrap()]).await;
    admin_kubectl(kube, &["apply", "-k", dir.to_str().unwrap()]).await;
    admin_kubectl(
        kube,
        &[
            "wait",
            "--for=condition=Established",
            "crd/grantmappings.tka.dev",
            "crd/sessions.tka.dev",
            "--timeout=60s",
        ],
    )
    .await;
    let token = admin_kubectl(
        kube,
        &["create", "token", "tka-server", "-n", NS, "--duration=2h"],
    )
    .await;
    kube.kubeconfig_for_token(token.trim()).unwrap()
}

/// Starts `tka-server serve` as `pod` with `kubeconfig` on `node`'s tailscaled (API on
/// 127.0.0.1:P, where that node re-dials tailnet connections for port P), with this file's
/// body cap and a rate limit the tests stay under; returns once ready.
pub(super) async fn start_server(
    kube: &KubeEnv,
    kubeconfig: &Path,
    node: &TailnetNode,
    pod: &str,
) -> ServerProcess {
    let server_bin = PathBuf::from(env!("CARGO_BIN_EXE_tka-server"));
    ServerProcess::builder(&server_bin, kube, node, CLUSTER)
        .kubeconfig(kubeconfig)
        .pod_name(pod)
        .args([
            "--max-body-bytes",
            &MAX_BODY.to_string(),
            "--rate-limit-per-minute",
            "600",
            "--rate-limit-burst",
            "200",
        ])
        .start()
        .await
        .unwrap_or_else(|e| panic!("{pod} did not start: {e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e2e_refusals_with_deploy_rbac_create_nothing_and_allowed_requests_pass() {
    let Some(bin) =
        bin_dir_or_skip("e2e_refusals_with_deploy_rbac_create_nothing_and_allowed_requests_pass")
    else {
        return;
    };
    let _permit = exclusive().await;
    let server_bin = PathBuf::from(env!("CARGO_BIN_EXE_tka-server"));

    // 1. The cluster as deploy/ makes it; the server's own ServiceAccount token.
    let kube = KubeEnv::start(&bin).await.unwrap();
    let server_kubeconfig = apply_deploy(&kube).await;
    kube.ensure_namespace("team-a").await.unwrap();

    // Mappings: usable ones, and one per refusal.
    let mappings = r#"
apiVersion: tka.dev/v1alpha1
kind: GrantMapping
metadata: {name: viewer}
spec: {clusterRoles: [view], defaultTTL: 1h, maxTTL: 8h}
---
apiVersion: tka.dev/v1alpha1
kind: GrantMapping
metadata: {name: alice-only}
spec: {subjects: [{user: alice@example.com}], clusterRoles: [view]}
---
apiVersion: tka.dev/v1alpha1
kind: GrantMapping
metadata: {name: bob-only}
spec: {subjects: [{user: bob@example.com}], clusterRoles: [view]}
---
apiVersion: tka.dev/v1alpha1
kind: GrantMapping
metadata: {name: admin}
spec: {namespaced: [{clusterRole: admin, namespaces: [team-a]}]}
---
apiVersion: tka.dev/v1alpha1
kind: GrantMapping
metadata: {name: team}
spec: {namespaced: [{clusterRole: edit, namespaces: [team-a]}]}
---
apiVersion: tka.dev/v1alpha1
kind: GrantMapping
metadata: {name: sysns}
spec: {namespaced: [{clusterRole: edit, namespaces: [tka-system]}]}
"#;
    apply_yaml(&kube, mappings).await;

    let roles = [
        "viewer",
        "alice-only",
        "bob-only",
        "admin",
        "team",
        "sysns",
        "ghost",
    ];
    let tailnet =
        TailnetEnv::start_cluster_and_laptop(&bin, &roles, &[("other", "bob@example.com")])
            .await
            .unwrap();
    let cluster = tailnet.node("cluster").unwrap().clone();
    let laptop = tailnet.node("laptop").unwrap().clone();
    let other = tailnet.node("other").unwrap().clone();

    // 2. The server, with the ServiceAccount's kubeconfig.
    let dns_name = cluster.dns_name.trim_end_matches('.').to_owned();
    let mut server =
        start_server(&kube, &server_kubeconfig, &cluster, "tka-server-refusals-0").await;
    let port = server.port();
    let server_log = server.log_path().to_owned();
    let log = || std::fs::read_to_string(&server_log).unwrap_or_default();

    let base = format!("http://{}:{port}", cluster.ipv4);
    let alice = Http {
        socks5: format!("127.0.0.1:{}", laptop.socks5_port),
        base: base.clone(),
    };
    let bob = Http {
        socks5: format!("127.0.0.1:{}", other.socks5_port),
        base: base.clone(),
    };
    let code = |v: &Value| v["code"].as_str().unwrap_or_default().to_owned();

    // Mapping conditions: the server (with deploy/'s RBAC) judges them.
    assert_eq!(ready_condition(&kube, "viewer").await, "True/Ready");
    assert_eq!(ready_condition(&kube, "team").await, "True/Ready");
    assert_eq!(
        ready_condition(&kube, "admin").await,
        "False/NotBindable",
        "server log:\n{}",
        log()
    );
    let sysns = ready_condition(&kube, "sysns").await;
    assert_eq!(sysns, "False/ForbiddenNamespace", "server log:\n{}", log());

    // A refusal: the status and code, and no labelled object made or removed by it.
    macro_rules! refused {
        ($req:expr, $status:expr, $code:expr) => {{
            let before = managed_objects(&kube).await;
            let (status, answer) = $req.await;
            assert_eq!(status, $status, "{answer}\nserver log:\n{}", log());
            assert_eq!(code(&answer), $code, "{answer}");
            assert_eq!(managed_objects(&kube).await, before, "after {answer}");
        }};
    }

    // Allowed first: the plain login works with deploy/'s RBAC and binds view.
    let (status, answer) = alice.login(r#"{"role":"viewer"}"#).await;
    assert_eq!(status, 200, "{answer}\nserver log:\n{}", log());
    assert_eq!(answer["session"]["role"], "viewer", "{answer}");
    let made = managed_objects(&kube).await;
    assert!(
        made.iter().any(|o| o.starts_with("clusterrolebinding")),
        "{made:?}"
    );

    // 1. A node without the capability.
    refused!(bob.login("{}"), 403, "noGrants");
    let (status, _) = alice.send("GET", "/api/v1/cluster", &[], None).await;
    assert_eq!(status, 200);

    // 2. A capability for a role no GrantMapping maps.
    refused!(alice.login(r#"{"role":"ghost"}"#), 403, "noMapping");
    // 3. A mapping whose subjects exclude the caller; one that includes her works.
    refused!(
        alice.login(r#"{"role":"bob-only"}"#),
        403,
        "subjectsDoNotMatch"
    );
    let (status, answer) = alice.login(r#"{"role":"alice-only"}"#).await;
    assert_eq!(status, 200, "{answer}\nserver log:\n{}", log());
    // 4. A ClusterRole outside deploy/'s bind list; a namespaced edit in team-a works.
    refused!(alice.login(r#"{"role":"admin"}"#), 403, "mappingUnusable");
    // 5. A mapping into the server's namespace.
    refused!(
        alice.login(r#"{"role":"sysns"}"#),
        403,
        "forbiddenNamespace"
    );
    let (status, answer) = alice.login(r#"{"role":"team"}"#).await;
    assert_eq!(status, 200, "{answer}\nserver log:\n{}", log());
    let made = managed_objects(&kube).await;
    assert!(
        made.iter().any(|o| o.starts_with("rolebinding")),
        "{made:?}"
    );

    // 6. Bodies: malformed, mistyped, too large, no content type; `{}` works.
    refused!(alice.login(r#"{"role":"#), 400, "badRequest");
    refused!(alice.login(r#"{"role":5}"#), 400, "badRequest");
    let big = format!(r#"{{"role":"viewer","x":"{}"}}"#, "a".repeat(2 * MAX_BODY));
    refused!(alice.login(&big), 413, "bodyTooLarge");
    refused!(
        alice.send(
            "POST",
            "/api/v1/login",
            &["Content-Type:"],
            Some(r#"{"role":"viewer"}"#)
        ),
        415,
        "unsupportedMediaType"
    );
    let (status, answer) = alice.login("{}").await;
    assert_eq!(status, 200, "{answer}");

    // 7. An Origin header; a foreign Host. The server's DNS name as Host works.
    refused!(
        alice.send(
            "POST",
            "/api/v1/login",
            &[
                "Content-Type: application/json",
                "Origin: https://evil.example"
            ],
            Some(r#"{"role":"viewer"}"#)
        ),
        403,
        "originRefused"
    );
    refused!(
        alice.send(
            "POST",
            "/api/v1/login",
            &["Content-Type: application/json", "Host: evil.example"],
            Some(r#"{"role":"viewer"}"#)
        ),
        403,
        "hostNotAllowed"
    );
    let host = format!("Host: {dns_name}:{port}");
    let (status, answer) = alice
        .send(
            "POST",
            "/api/v1/login",
            &["Content-Type: application/json", &host],
            Some(r#"{"role":"viewer"}"#),
        )
        .await;
    assert_eq!(status, 200, "{answer}");

    // 8. TTLs that are not positive durations; one above the limits is clamped and said so.
    for ttl in ["0s", "-1h", "abc"] {
        refused!(
            alice.login(&format!(r#"{{"role":"viewer","ttl":"{ttl}"}}"#)),
            400,
            "invalidTtl"
        );
    }
    let (status, answer) = alice.login(r#"{"role":"viewer","ttl":"100000h"}"#).await;
    assert_eq!(status, 200, "{answer}");
    assert!(
        !answer["clamped"].is_null(),
        "not reported as clamped: {answer}"
    );
    assert_ne!(answer["ttl"], "100000h", "{answer}");

    // Uninstall: with the server stopped, `tka-server drain` (with the same ServiceAccount's
    // kubeconfig) leaves no Session and no labelled object, and the CRDs delete without
    // hanging in Terminating.
    let left = managed_objects(&kube).await;
    assert!(
        left.iter().any(|o| o.starts_with("session.tka.dev/")),
        "{left:?}"
    );
    server.stop();
    let drain = run(
        &server_bin,
        &[
            "drain",
            "--kubeconfig",
            server_kubeconfig.to_str().unwrap(),
            "--timeout",
            "60s",
        ],
        &[("HOME", std::env::temp_dir().display().to_string())],
    )
    .await;
    assert!(drain.ok, "tka-server drain: {drain:?}");
    assert_eq!(managed_objects(&kube).await, Vec::<String>::new());
    let sessions = admin_kubectl(&kube, &["get", "sessions.tka.dev", "-A", "-o", "name"]).await;
    assert_eq!(sessions.trim(), "", "sessions left after drain");
    admin_kubectl(
        &kube,
        &[
            "delete",
            "crd",
            "sessions.tka.dev",
            "grantmappings.tka.dev",
            "--timeout=60s",
        ],
    )
    .await;
    let crds = admin_kubectl(&kube, &["get", "crd", "-o", "name"]).await;
    assert!(!crds.contains("tka.dev"), "CRDs left: {crds}");
}

/// The Lease's holder, once there is one (60 s at most).
async fn lease_holder(kube: &KubeEnv, not: Option<&str>) -> String {
    for _ in 0..240 {
        let out = run(
            &kube.kubectl(),
            &[
                "--kubeconfig",
                kube.admin_kubeconfig().to_str().unwrap(),
                "get",
                "lease",
                "tka-server",
                "-n",
                NS,
                "-o",
                "jsonpath={.spec.holderIdentity}",
            ],
            &[("HOME", std::env::temp_dir().display().to_string())],
        )
        .await;
        let holder = out.stdout.trim().to_owned();
        if out.ok && !holder.is_empty() && Some(holder.as_str()) != not {
            return holder;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    panic!("Lease {NS}/tka-server got no holder (other than {not:?}) in 60 s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e2e_two_replicas_serve_logins_and_hand_the_lease_over() {
    let Some(bin) = bin_dir_or_skip("e2e_two_replicas_serve_logins_and_hand_the_lease_over") else {
        return;
    };
    let _permit = exclusive().await;
    let kube = KubeEnv::start(&bin).await.unwrap();
    let server_kubeconfig = apply_deploy(&kube).await;
    apply_yaml(&kube, "apiVersion: tka.dev/v1alpha1\nkind: GrantMapping\nmetadata: {name: viewer}\nspec: {clusterRoles: [view]}\n").await;
    let cap = "tka.dev/cap/kubernetes";
    let tailnet = TailnetEnv::start(
        &bin,
        &[
            TailnetNodeSpec::tagged("cluster-a", &["tag:tka"]),
            TailnetNodeSpec::tagged("cluster-b", &["tag:tka"]),
            TailnetNodeSpec::user("laptop", "alice@example.com"),
        ],
        &[
            TailnetGrant::new("laptop", "cluster-a", cap, vec![json!({"role": "viewer"})]),
            TailnetGrant::new("laptop", "cluster-b", cap, vec![json!({"role": "viewer"})]),
        ],
    )
    .await
    .unwrap();
    let laptop = tailnet.node("laptop").unwrap().clone();
    let mut replicas = Vec::new();
    for (node, pod) in [("cluster-a", "tka-server-a"), ("cluster-b", "tka-server-b")] {
        let node = tailnet.node(node).unwrap().clone();
        let server = start_server(&kube, &server_kubeconfig, &node, pod).await;
        let http = Http {
            socks5: format!("127.0.0.1:{}", laptop.socks5_port),
            base: format!("http://{}:{}", node.ipv4, server.port()),
        };
        replicas.push((pod, server, http));
    }
    let logs = |replicas: &[(&str, ServerProcess, Http)]| {
        replicas
            .iter()
            .map(|(pod, s, _)| format!("{pod}:\n{}", s.log()))
            .collect::<Vec<_>>()
            .join("\n")
    };

    // Logins succeed on both replicas; one of them holds the Lease, and keeps it.
    for (pod, _, http) in &replicas {
        let (status, answer) = http.login(r#"{"role":"viewer"}"#).await;
        assert_eq!(status, 200, "{pod}: {answer}\n{}", logs(&replicas));
    }
    let holder = lease_holder(&kube, None).await;
    assert!(
        replicas.iter().any(|(pod, _, _)| *pod == holder),
        "the Lease is held by {holder}"
    );
    assert_eq!(lease_holder(&kube, None).await, holder);

    // Killing the holder hands the Lease to the other; logins keep working there and the
    // killed replica answers nothing.
    let at = replicas
        .iter()
        .position(|(pod, _, _)| *pod == holder)
        .unwrap();
    let (_, mut killed, killed_http) = replicas.remove(at);
    killed.stop();
    let successor = lease_holder(&kube, Some(&holder)).await;
    assert_eq!(successor, replicas[0].0, "{}", logs(&replicas));
    let (status, answer) = replicas[0].2.login(r#"{"role":"viewer"}"#).await;
    assert_eq!(status, 200, "{answer}\n{}", logs(&replicas));
    let gone = run(
        Path::new("/usr/bin/curl"),
        &[
            "-sS",
            "--max-time",
            "10",
            "--socks5-hostname",
            &killed_http.socks5,
            &format!("{}/api/v1/cluster", killed_http.base),
        ],
        &[],
    )
    .await;
    assert!(!gone.ok, "the killed replica answered: {gone:?}");
}

/// `bytes` sent on `stream`, then everything it answers until it closes (10 s at most); an
/// error or a timeout counts as no answer.
pub(super) async fn exchange(mut stream: tokio::net::TcpStream, bytes: &[u8]) -> String {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    if stream.write_all(bytes).await.is_err() {
        return String::new();
    }
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer)).await;
    String::from_utf8_lossy(&answer).into_owned()
}

/// A TCP stream to `target` through the SOCKS5 proxy at `socks5` (no authentication), or `None`
/// when the proxy refuses to connect.
pub(super) async fn socks5_connect(
    socks5: &str,
    target: SocketAddr,
) -> Option<tokio::net::TcpStream> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut stream = tokio::net::TcpStream::connect(socks5).await.unwrap();
    stream.write_all(&[5, 1, 0]).await.unwrap();
    let mut choice = [0u8; 2];
    stream.read_exact(&mut choice).await.unwrap();
    assert_eq!(choice, [5, 0], "the SOCKS5 proxy wants authentication");
    let SocketAddr::V4(v4) = target else {
        panic!("an IPv4 target");
    };
    let mut request = vec![5, 1, 0, 1];
    request.extend_from_slice(&v4.ip().octets());
    request.extend_from_slice(&v4.port().to_be_bytes());
    stream.write_all(&request).await.unwrap();
    let mut reply = [0u8; 10];
    if stream.read_exact(&mut reply).await.is_err() || reply[1] != 0 {
        return None;
    }
    Some(stream)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_proxy_header_from_a_tailnet_peer_is_refused() {
    let Some(bin) = bin_dir_or_skip("a_forged_proxy_header_from_a_tailnet_peer_is_refused") else {
        return;
    };
    let _permit = exclusive().await;
    let kube = KubeEnv::start(&bin).await.unwrap();
    let server_kubeconfig = apply_deploy(&kube).await;
    apply_yaml(&kube, "apiVersion: tka.dev/v1alpha1\nkind: GrantMapping\nmetadata: {name: viewer}\nspec: {clusterRoles: [view]}\n").await;
    let tailnet =
        TailnetEnv::start_cluster_and_laptop(&bin, &["viewer"], &[("other", "bob@example.com")])
            .await
            .unwrap();
    let cluster = tailnet.node("cluster").unwrap().clone();
    let laptop = tailnet.node("laptop").unwrap().clone();
    let other = tailnet.node("other").unwrap().clone();

    // The server in PROXY mode on 127.0.0.2:P, an address tailscaled never dials.
    let server_bin = PathBuf::from(env!("CARGO_BIN_EXE_tka-server"));
    let port = free_port();
    let listen = SocketAddr::from(([127, 0, 0, 2], port));
    let server = ServerProcess::builder(&server_bin, &kube, &cluster, CLUSTER)
        .kubeconfig(&server_kubeconfig)
        .pod_name("tka-server-proxy-0")
        .listen(listen)
        .proxy_protocol()
        .start()
        .await
        .unwrap();
    let log = || server.log();

    // The header: "other" (not granted) claims to be the laptop, which is granted.
    let claimed = SocketAddr::from((laptop.ipv4, 40000));
    let tailnet_target = SocketAddr::from((cluster.ipv4, port));
    let header = ppp::v2::Builder::with_addresses(
        ppp::v2::Version::Two | ppp::v2::Command::Proxy,
        ppp::v2::Protocol::Stream,
        (claimed, tailnet_target),
    )
    .build()
    .unwrap();
    let body = r#"{"role":"viewer"}"#;
    let mut forged = header.clone();
    forged.extend_from_slice(
        format!(
            "POST /api/v1/login HTTP/1.1\r\nHost: {tailnet_target}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    );

    // Refused: through the tailnet the bytes reach 127.0.0.1:P, where nothing of tka
    // listens; no HTTP answer and no labelled object.
    let before = managed_objects(&kube).await;
    let socks5 = format!("127.0.0.1:{}", other.socks5_port);
    let answer = match socks5_connect(&socks5, tailnet_target).await {
        Some(stream) => exchange(stream, &forged).await,
        None => String::new(),
    };
    assert!(
        !answer.starts_with("HTTP/"),
        "a tailnet peer got an HTTP answer: {answer}\nserver log:\n{}",
        log()
    );
    assert_eq!(managed_objects(&kube).await, before);

    // Allowed: the same bytes on 127.0.0.2:P (where only a trusted proxy can connect) are
    // parsed, whois is asked about the header's source, and the laptop's login succeeds.
    let stream = tokio::net::TcpStream::connect(listen).await.unwrap();
    let answer = exchange(stream, &forged).await;
    assert!(
        answer.starts_with("HTTP/1.1 200"),
        "{answer}\nserver log:\n{}",
        log()
    );
    let made = managed_objects(&kube).await;
    assert!(
        made.iter().any(|o| o.starts_with("session.tka.dev/")),
        "{made:?}"
    );
}
