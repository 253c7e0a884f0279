//! The tailnet API proxy (DESIGN §8) on the real components: the built `tka-server` with
//! `--proxy-listen` in front of the real kube-apiserver (its default upstream, the server's own
//! Kubernetes configuration), a real tailnet, and the built `tka` with the real kubectl on the
//! `laptop` node (through its SOCKS5 proxy). `tka login` goes through the proxy by default;
//! kubectl then gets, applies, watches and is refused by RBAC as the session's ServiceAccount;
//! the kubeconfig holds no credential, and copied to a node with no session it gets the 401
//! naming `tka login`, audited with that node's identity. Impersonation, a browser `Origin`
//! and a foreign `Host` are refused, each paired with an allowed request; `tka logout` ends a
//! watch running through the proxy. A second device with a `view`-only grant uses the same
//! proxy at the same time with its own rights; her short session's expiry ends her watch.
//!
//! Skips without `TKA_TESTENV_BIN` (fails with `TKA_REQUIRE_TESTENV=1`).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use kube::Api;
use kube::api::PostParams;
use serde_json::json;
use tka_core::GrantMappingSpec;
use tka_core::kubernetes::GrantMapping;
use tka_core::policy::NamespacedGrant;
use tka_testkit::testenv::{
    KubeEnv, ServerProcess, TailnetEnv, TailnetGrant, TailnetNode, TailnetNodeSpec,
    bin_dir_or_skip, exclusive,
};
use tokio::io::{AsyncBufReadExt, BufReader};

use crate::e2e_refusals::Http;
use crate::e2e_tailnet::{CLUSTER, free_port, run};

/// The environment of a person's shell on `node`: its own HOME, kubeconfig and tailnet.
fn shell_env(home: &Path, path: &str, node: &TailnetNode) -> Vec<(&'static str, String)> {
    vec![
        ("PATH", path.to_owned()),
        ("HOME", home.display().to_string()),
        (
            "XDG_CONFIG_HOME",
            home.join(".config").display().to_string(),
        ),
        ("XDG_CACHE_HOME", home.join(".cache").display().to_string()),
        ("XDG_STATE_HOME", home.join(".state").display().to_string()),
        ("XDG_DATA_HOME", home.join(".data").display().to_string()),
        (
            "KUBECONFIG",
            home.join(".kube").join("config").display().to_string(),
        ),
        ("TKA_SOCKS5", format!("127.0.0.1:{}", node.socks5_port)),
        ("TKA_TAILSCALE_SOCKET", node.socket.display().to_string()),
    ]
}

/// `kubectl get ns --watch -o name` with `env`, and its output lines as they come.
struct Watch {
    child: tokio::process::Child,
    lines: tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
}

impl Watch {
    fn start(kubectl: &Path, env: &[(&str, String)]) -> Self {
        let mut cmd = tokio::process::Command::new(kubectl);
        cmd.args(["get", "ns", "--watch", "-o", "name"])
            .env_clear()
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().unwrap();
        let lines = BufReader::new(child.stdout.take().unwrap()).lines();
        Self { child, lines }
    }

    /// Waits (at most 60 s) for a line naming `what`.
    async fn until(&mut self, what: &str) {
        let found = tokio::time::timeout(Duration::from_secs(60), async {
            while let Some(line) = self.lines.next_line().await.unwrap() {
                if line.contains(what) {
                    return true;
                }
            }
            false
        })
        .await;
        assert_eq!(found, Ok(true), "the watch did not show {what}");
    }

    /// Whether kubectl exits within `bound` (a generous bound, not a timing assertion).
    async fn ends_within(&mut self, bound: Duration) -> bool {
        tokio::time::timeout(bound, self.child.wait()).await.is_ok()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e2e_proxied_login_kubectl_rbac_watch_refusals_and_logout_on_the_real_api_server() {
    let Some(bin) = bin_dir_or_skip(
        "e2e_proxied_login_kubectl_rbac_watch_refusals_and_logout_on_the_real_api_server",
    ) else {
        return;
    };
    let _permit = exclusive().await;
    let server_bin = PathBuf::from(env!("CARGO_BIN_EXE_tka-server"));
    let tka = server_bin.with_file_name("tka");
    assert!(
        tka.exists(),
        "{} is missing: run `cargo build -p tka-cli` (cargo test --workspace builds it)",
        tka.display()
    );

    // The cluster: `view` cluster-wide and `edit` in namespace `team`.
    let kube = KubeEnv::start(&bin).await.unwrap();
    kube.install_crds().await.unwrap();
    kube.ensure_namespace("tka-system").await.unwrap();
    kube.ensure_namespace("team").await.unwrap();
    let mappings: Api<GrantMapping> = Api::all(kube.client());
    let spec = GrantMappingSpec {
        cluster_roles: vec!["view".to_owned()],
        namespaced: vec![NamespacedGrant {
            cluster_role: "edit".to_owned(),
            namespaces: vec!["team".to_owned()],
        }],
        default_ttl: Some("1h".to_owned()),
        max_ttl: Some("8h".to_owned()),
        ..GrantMappingSpec::default()
    };
    mappings
        .create(
            &PostParams::default(),
            &GrantMapping::new("developer", spec),
        )
        .await
        .unwrap();
    let spec = GrantMappingSpec {
        cluster_roles: vec!["view".to_owned()],
        default_ttl: Some("1h".to_owned()),
        max_ttl: Some("8h".to_owned()),
        ..GrantMappingSpec::default()
    };
    mappings
        .create(&PostParams::default(), &GrantMapping::new("viewer", spec))
        .await
        .unwrap();
    let tailnet = TailnetEnv::start(
        &bin,
        &[
            TailnetNodeSpec::tagged("cluster", &["tag:tka"]),
            TailnetNodeSpec::user("laptop", "alice@example.com"),
            TailnetNodeSpec::user("other", "bob@example.com"),
            TailnetNodeSpec::user("desk", "carol@example.com"),
        ],
        &[
            TailnetGrant::new(
                "laptop",
                "cluster",
                "tka.dev/cap/kubernetes",
                vec![json!({"role": "developer"})],
            ),
            // bob holds a grant but never logs in.
            TailnetGrant::new(
                "other",
                "cluster",
                "tka.dev/cap/kubernetes",
                vec![json!({"role": "viewer"})],
            ),
            TailnetGrant::new(
                "desk",
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
    let desk = tailnet.node("desk").unwrap().clone();

    // The server with its proxy; the upstream is the real API server (no --proxy-upstream).
    let proxy_port = free_port();
    let proxy_url = format!("http://{}:{proxy_port}", cluster.ipv4);
    let server = ServerProcess::builder(&server_bin, &kube, &cluster, CLUSTER)
        .args([
            "--proxy-listen".to_owned(),
            format!("127.0.0.1:{proxy_port}"),
            "--proxy-url".to_owned(),
            proxy_url.clone(),
        ])
        .start()
        .await
        .unwrap();
    let log = || server.log();
    let server_url = server.url();

    let work = tempfile::tempdir().unwrap();
    let path = format!(
        "{}:{}:/usr/bin:/bin",
        tka.parent().unwrap().display(),
        bin.display()
    );
    let home = work.path().join("alice");
    std::fs::create_dir_all(&home).unwrap();
    let env = shell_env(&home, &path, &laptop);
    let kubectl = kube.kubectl();

    // 1. `tka login` through the proxy (the default when the server offers one).
    let login = run(
        &tka,
        &["login", CLUSTER, "--server", &server_url, "-o", "json"],
        &env,
    )
    .await;
    assert!(login.ok, "tka login: {login:?}\nserver log:\n{}", log());
    let answer: serde_json::Value = serde_json::from_str(&login.stdout).unwrap();
    assert_eq!(answer["via"], "proxy", "{answer}");
    assert_eq!(answer["role"], "developer", "{answer}");

    // 2. The context holds no token and no exec entry: only the proxy's URL.
    let config_path = home.join(".kube").join("config");
    let config = std::fs::read_to_string(&config_path).unwrap();
    assert!(config.contains(&proxy_url), "{config}");
    for credential in [
        "token",
        "exec",
        "client-key",
        "client-certificate",
        "password",
    ] {
        assert!(
            !config.contains(credential),
            "the proxied kubeconfig holds `{credential}`:\n{config}"
        );
    }

    // kubectl through the proxy, as the session's ServiceAccount.
    let ns = run(&kubectl, &["get", "ns", "-o", "name"], &env).await;
    assert!(ns.ok, "get ns: {ns:?}\nserver log:\n{}", log());
    assert!(ns.stdout.contains("namespace/kube-system"), "{ns:?}");
    let whoami = run(&kubectl, &["auth", "whoami", "-o", "json"], &env).await;
    assert!(whoami.ok, "auth whoami: {whoami:?}\nserver log:\n{}", log());
    let whoami: serde_json::Value = serde_json::from_str(&whoami.stdout).unwrap();
    let user = whoami["status"]["userInfo"]["username"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        user.starts_with("system:serviceaccount:"),
        "whoami through the proxy: {whoami}"
    );
    let accounts = crate::e2e_tailnet::managed_objects(&kube).await;
    let account = user.rsplit(':').next().unwrap();
    assert!(
        accounts.contains(&format!("serviceaccount/{account}")),
        "{user} is not the session's ServiceAccount: {accounts:?}"
    );

    // Allowed by the role: a ConfigMap in `team`; refused by RBAC: the same in `default`.
    let manifest = work.path().join("cm.yaml");
    std::fs::write(
        &manifest,
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: settings\ndata:\n  a: b\n",
    )
    .unwrap();
    let manifest = manifest.to_str().unwrap();
    let applied = run(&kubectl, &["apply", "-n", "team", "-f", manifest], &env).await;
    assert!(
        applied.ok,
        "apply in team: {applied:?}\nserver log:\n{}",
        log()
    );
    let refused = run(
        &kubectl,
        &["create", "configmap", "nope", "-n", "default"],
        &env,
    )
    .await;
    assert!(!refused.ok, "a create outside the role worked: {refused:?}");
    assert!(
        refused.stderr.contains("forbidden") && refused.stderr.contains(account),
        "not refused by the API server's RBAC: {refused:?}"
    );

    // 3. A second device with another grant (view only) uses the same proxy at once, each
    // with its own rights.
    let carol_home = work.path().join("carol");
    std::fs::create_dir_all(&carol_home).unwrap();
    let carol_env = shell_env(&carol_home, &path, &desk);
    // Her session is short (30 s): its expiry ends her watch below.
    let carol_login = run(
        &tka,
        &[
            "login",
            CLUSTER,
            "--server",
            &server_url,
            "--ttl",
            "30s",
            "-o",
            "json",
        ],
        &carol_env,
    )
    .await;
    assert!(carol_login.ok, "{carol_login:?}\nserver log:\n{}", log());
    let carol_answer: serde_json::Value = serde_json::from_str(&carol_login.stdout).unwrap();
    let carol_expires: jiff::Timestamp = carol_answer["sessionExpiresAt"]
        .as_str()
        .unwrap_or_else(|| panic!("no sessionExpiresAt: {carol_answer}"))
        .parse()
        .unwrap();
    let can_i = ["auth", "can-i", "create", "configmaps", "-n", "team"];
    let (alice_can, carol_can, carol_ns) = tokio::join!(
        run(&kubectl, &can_i, &env),
        run(&kubectl, &can_i, &carol_env),
        run(&kubectl, &["get", "ns", "-o", "name"], &carol_env),
    );
    assert_eq!(alice_can.stdout.trim(), "yes", "{alice_can:?}");
    assert_eq!(carol_can.stdout.trim(), "no", "{carol_can:?}");
    assert!(
        carol_ns.ok && carol_ns.stdout.contains("namespace/team"),
        "{carol_ns:?}"
    );
    let carol_whoami = run(
        &kubectl,
        &[
            "auth",
            "whoami",
            "-o",
            "jsonpath={.status.userInfo.username}",
        ],
        &carol_env,
    )
    .await;
    assert!(
        carol_whoami.stdout.starts_with("system:serviceaccount:")
            && carol_whoami.stdout.trim() != user,
        "carol's requests run as alice's account or none: {carol_whoami:?} (alice: {user})"
    );

    let mut carol_watch = Watch::start(&kubectl, &carol_env);
    carol_watch.until("namespace/kube-system").await;

    // 5. Impersonation is refused by the proxy; the same request without it works (above).
    let as_admin = run(&kubectl, &["--as=system:admin", "get", "ns"], &env).await;
    assert!(!as_admin.ok, "impersonation went through: {as_admin:?}");
    assert!(
        as_admin
            .stderr
            .contains("impersonation is not allowed through the tka proxy"),
        "{as_admin:?}"
    );
    // A browser's Origin and a foreign Host are refused; the plain request is allowed.
    let alice = Http {
        socks5: format!("127.0.0.1:{}", laptop.socks5_port),
        base: proxy_url.clone(),
    };
    let (status, body) = alice.send("GET", "/api/v1/namespaces", &[], None).await;
    assert_eq!(status, 200, "{body}\nserver log:\n{}", log());
    let (status, body) = alice
        .send(
            "GET",
            "/api/v1/namespaces",
            &["Origin: https://evil.example"],
            None,
        )
        .await;
    assert_eq!(status, 403, "an Origin went through: {body}");
    let (status, body) = alice
        .send("GET", "/api/v1/namespaces", &["Host: evil.example"], None)
        .await;
    assert_eq!(status, 403, "a foreign Host went through: {body}");

    // 1. A watch streams: it sees a namespace the admin creates.
    let mut watch = Watch::start(&kubectl, &env);
    watch.until("namespace/kube-system").await;
    kube.ensure_namespace("watched").await.unwrap();
    watch.until("namespace/watched").await;

    // 2. The kubeconfig copied to a node with no session: the 401 naming `tka login`, and the
    // audit log has the attempt with that node's identity.
    let bob_home = work.path().join("bob");
    std::fs::create_dir_all(bob_home.join(".kube")).unwrap();
    // On the other machine the same file reaches the tailnet through that machine's own
    // tailscaled: here, that node's SOCKS5 proxy instead of the laptop's.
    let laptop_socks5 = format!("socks5://127.0.0.1:{}", laptop.socks5_port);
    assert!(config.contains(&laptop_socks5), "{config}");
    std::fs::write(
        bob_home.join(".kube").join("config"),
        config.replace(
            &laptop_socks5,
            &format!("socks5://127.0.0.1:{}", other.socks5_port),
        ),
    )
    .unwrap();
    let bob_env = shell_env(&bob_home, &path, &other);
    // With an empty discovery cache: the proxy forwards only discovery for a granted device
    // with no session, so kubectl reaches its real request and prints the proxy's message.
    let bob = run(&kubectl, &["get", "ns"], &bob_env).await;
    assert!(!bob.ok, "a node with no session got in: {bob:?}");
    assert!(
        bob.stderr.contains(&format!("tka login {CLUSTER}")),
        "kubectl does not name `tka login`: {bob:?}\nserver log:\n{}",
        log()
    );
    let bob_http = Http {
        socks5: format!("127.0.0.1:{}", other.socks5_port),
        base: proxy_url.clone(),
    };
    let (status, body) = bob_http.send("GET", "/api/v1/namespaces", &[], None).await;
    assert_eq!(status, 401, "{body}");
    assert!(
        body["message"]
            .as_str()
            .is_some_and(|m| m.contains(&format!("tka login {CLUSTER}"))),
        "{body}"
    );
    let audited = log();
    assert!(
        audited.lines().any(|l| l.contains("tka::audit")
            && l.contains("proxy")
            && l.contains("bob@example.com")
            && l.contains("401")),
        "no audit record of the refused node:\n{audited}"
    );
    assert!(
        audited.lines().any(|l| l.contains("tka::audit")
            && l.contains("bob@example.com")
            && l.contains("discovery without a session")),
        "no audit record of the discovery forwarded for the node:\n{audited}"
    );

    // 4. `tka logout` ends the watch running through the proxy (5 s is a generous bound).
    let logout = run(&tka, &["logout", CLUSTER], &env).await;
    assert!(logout.ok, "tka logout: {logout:?}\nserver log:\n{}", log());
    assert!(
        watch.ends_within(Duration::from_secs(5)).await,
        "the watch through the proxy outlived the logout\nserver log:\n{}",
        log()
    );
    // And the proxy no longer forwards for the laptop.
    let (status, body) = alice.send("GET", "/api/v1/namespaces", &[], None).await;
    assert_eq!(status, 401, "{body}");

    // 4. The session's expiry ends carol's watch; alice's logout did not.
    assert!(
        carol_watch.child.try_wait().unwrap().is_none(),
        "alice's logout ended carol's watch"
    );
    let left = u64::try_from(
        (carol_expires - jiff::Timestamp::now())
            .get_seconds()
            .max(0),
    )
    .unwrap_or(0);
    assert!(
        carol_watch.ends_within(Duration::from_secs(left + 5)).await,
        "the watch through the proxy outlived its session's expiry ({carol_expires})\nserver log:\n{}",
        log()
    );
}
