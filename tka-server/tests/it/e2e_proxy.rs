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
//! The setup ([`ProxyWorld`]) and the laptop's helpers are shared with `e2e_proxy_revocation`.
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
pub(super) fn shell_env(
    home: &Path,
    path: &str,
    node: &TailnetNode,
) -> Vec<(&'static str, String)> {
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
pub(super) struct Watch {
    pub(super) child: tokio::process::Child,
    lines: tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
}

impl Watch {
    pub(super) fn start(kubectl: &Path, env: &[(&str, String)]) -> Self {
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
    pub(super) async fn until(&mut self, what: &str) {
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
    pub(super) async fn ends_within(&mut self, bound: Duration) -> bool {
        tokio::time::timeout(bound, self.child.wait()).await.is_ok()
    }
}

/// The built `tka-server` and the `tka` beside it (built by `cargo build -p tka-cli`).
pub(super) fn binaries() -> (PathBuf, PathBuf) {
    let server_bin = PathBuf::from(env!("CARGO_BIN_EXE_tka-server"));
    let tka = server_bin.with_file_name("tka");
    assert!(
        tka.exists(),
        "{} is missing: run `cargo build -p tka-cli` (cargo test --workspace builds it)",
        tka.display()
    );
    (server_bin, tka)
}

/// The flags that turn on the proxy of a server on `node` (`--proxy-listen 127.0.0.1:P`, where
/// the node's userspace tailscaled re-dials tailnet connections for port P), and the URL a
/// tailnet peer reaches it at, `http://<node's IPv4>:P`.
pub(super) fn proxy_flags(node: &TailnetNode) -> (Vec<String>, String) {
    let port = free_port();
    let url = format!("http://{}:{port}", node.ipv4);
    let flags = vec![
        "--proxy-listen".to_owned(),
        format!("127.0.0.1:{port}"),
        "--proxy-url".to_owned(),
        url.clone(),
    ];
    (flags, url)
}

/// `PATH` for a person's shell: the built `tka`, then the test components (kubectl).
pub(super) fn shell_path(tka: &Path, bin: &Path) -> String {
    format!(
        "{}:{}:/usr/bin:/bin",
        tka.parent().unwrap().display(),
        bin.display()
    )
}

/// A person `who` at `node`: a fresh HOME under `work`, and the environment of their shell.
pub(super) fn person(
    work: &Path,
    who: &str,
    path: &str,
    node: &TailnetNode,
) -> (PathBuf, Vec<(&'static str, String)>) {
    let home = work.join(who);
    std::fs::create_dir_all(&home).unwrap();
    let env = shell_env(&home, path, node);
    (home, env)
}

/// `tka login CLUSTER --server URL -o json` (plus `extra`) in `env`; must succeed through the
/// proxy. Its JSON answer.
pub(super) async fn proxied_login(
    tka: &Path,
    server_url: &str,
    env: &[(&str, String)],
    extra: &[&str],
    log: impl Fn() -> String,
) -> serde_json::Value {
    let mut args = vec!["login", CLUSTER, "--server", server_url, "-o", "json"];
    args.extend_from_slice(extra);
    let login = run(tka, &args, env).await;
    assert!(login.ok, "tka login: {login:?}\nserver log:\n{}", log());
    let answer: serde_json::Value = serde_json::from_str(&login.stdout).unwrap();
    assert_eq!(answer["via"], "proxy", "{answer}");
    answer
}

/// What the proxy tests run on: a control plane with tka's CRDs, namespaces `tka-system` and
/// `team`, and two GrantMappings (`developer`: `view` plus `edit` in `team`; `viewer`: `view`);
/// a tailnet of the tagged `cluster` node and the caller's nodes; `tka-server serve
/// --proxy-listen` on `cluster` (admin kubeconfig, its upstream the real API server), and a
/// work directory for people's homes. Fields drop in order: the server before the tailnet and
/// the control plane, the permit last.
pub(super) struct ProxyWorld {
    pub(super) server: ServerProcess,
    /// The proxy's URL on the tailnet.
    pub(super) proxy_url: String,
    pub(super) tailnet: TailnetEnv,
    pub(super) kube: KubeEnv,
    pub(super) work: tempfile::TempDir,
    /// The built `tka`.
    pub(super) tka: PathBuf,
    /// `PATH` for people's shells.
    pub(super) path: String,
    _permit: tokio::sync::SemaphorePermit<'static>,
}

impl ProxyWorld {
    /// Starts it all for `test`, with the `cluster` node added to `nodes` and `server_flags`
    /// added to the server's; `None` when the components are not there (a skip).
    pub(super) async fn start(
        test: &str,
        nodes: &[TailnetNodeSpec],
        grants: &[TailnetGrant],
        server_flags: &[&str],
    ) -> Option<Self> {
        let bin = bin_dir_or_skip(test)?;
        let permit = exclusive().await;
        let (server_bin, tka) = binaries();

        let kube = KubeEnv::start(&bin).await.unwrap();
        kube.install_crds().await.unwrap();
        kube.ensure_namespace("tka-system").await.unwrap();
        kube.ensure_namespace("team").await.unwrap();
        let mappings: Api<GrantMapping> = Api::all(kube.client());
        let developer = GrantMappingSpec {
            cluster_roles: vec!["view".to_owned()],
            namespaced: vec![NamespacedGrant {
                cluster_role: "edit".to_owned(),
                namespaces: vec!["team".to_owned()],
            }],
            default_ttl: Some("1h".to_owned()),
            max_ttl: Some("8h".to_owned()),
            ..GrantMappingSpec::default()
        };
        let viewer = GrantMappingSpec {
            cluster_roles: vec!["view".to_owned()],
            default_ttl: Some("1h".to_owned()),
            max_ttl: Some("8h".to_owned()),
            ..GrantMappingSpec::default()
        };
        for (name, spec) in [("developer", developer), ("viewer", viewer)] {
            mappings
                .create(&PostParams::default(), &GrantMapping::new(name, spec))
                .await
                .unwrap();
        }

        let mut all_nodes = vec![TailnetNodeSpec::tagged("cluster", &["tag:tka"])];
        all_nodes.extend_from_slice(nodes);
        let tailnet = TailnetEnv::start(&bin, &all_nodes, grants).await.unwrap();
        let cluster = tailnet.node("cluster").unwrap().clone();

        // The upstream is the real API server (no --proxy-upstream).
        let (mut flags, proxy_url) = proxy_flags(&cluster);
        flags.extend(server_flags.iter().map(|f| (*f).to_owned()));
        let server = ServerProcess::builder(&server_bin, &kube, &cluster, CLUSTER)
            .args(flags)
            .start()
            .await
            .unwrap();
        Some(Self {
            server,
            proxy_url,
            tailnet,
            kube,
            work: tempfile::tempdir().unwrap(),
            path: shell_path(&tka, &bin),
            tka,
            _permit: permit,
        })
    }

    /// A node of the tailnet.
    pub(super) fn node(&self, name: &str) -> TailnetNode {
        self.tailnet.node(name).unwrap().clone()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e2e_proxied_login_kubectl_rbac_watch_refusals_and_logout_on_the_real_api_server() {
    let cap = "tka.dev/cap/kubernetes";
    let Some(world) = ProxyWorld::start(
        "e2e_proxied_login_kubectl_rbac_watch_refusals_and_logout_on_the_real_api_server",
        &[
            TailnetNodeSpec::user("laptop", "alice@example.com"),
            TailnetNodeSpec::user("other", "bob@example.com"),
            TailnetNodeSpec::user("desk", "carol@example.com"),
        ],
        &[
            TailnetGrant::new("laptop", "cluster", cap, vec![json!({"role": "developer"})]),
            // bob holds a grant but never logs in.
            TailnetGrant::new("other", "cluster", cap, vec![json!({"role": "viewer"})]),
            TailnetGrant::new("desk", "cluster", cap, vec![json!({"role": "viewer"})]),
        ],
        &[],
    )
    .await
    else {
        return;
    };
    let (kube, server, tka) = (&world.kube, &world.server, world.tka.clone());
    let laptop = world.node("laptop");
    let other = world.node("other");
    let desk = world.node("desk");
    let proxy_url = world.proxy_url.clone();
    let log = || server.log();
    let server_url = server.url();
    let work = &world.work;
    let path = world.path.clone();
    let (home, env) = person(work.path(), "alice", &path, &laptop);
    let kubectl = kube.kubectl();

    // 1. `tka login` through the proxy (the default when the server offers one).
    let answer = proxied_login(&tka, &server_url, &env, &[], log).await;
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
    let accounts = crate::e2e_tailnet::managed_objects(kube).await;
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
    let (_, carol_env) = person(work.path(), "carol", &path, &desk);
    // Her session is short (30 s): its expiry ends her watch below.
    let carol_answer = proxied_login(&tka, &server_url, &carol_env, &["--ttl", "30s"], log).await;
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
