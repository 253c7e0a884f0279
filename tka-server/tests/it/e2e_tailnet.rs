//! The product's happy path with nothing faked: the built `tka-server serve` on a real API
//! server and a real tailnet (its node's userspace tailscaled), and the built `tka` CLI on
//! another node (through that node's SOCKS5 proxy). `tka login` writes a kubeconfig that the
//! real kubectl uses through the exec plugin; `tka logout` shuts kubectl out and restores the
//! user's kubeconfig. Refused with paired allowed: a connection that does not come through the
//! tailnet, and a login for a role the device does not hold (which creates nothing).
//!
//! Skips without `TKA_TESTENV_BIN` (fails with `TKA_REQUIRE_TESTENV=1`), like the e2e tests of
//! tka-testkit.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tka_testkit::testenv::{
    KubeEnv, ServerProcess, TailnetEnv, bin_dir_or_skip, exclusive, viewer_mapping,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub(super) const CLUSTER: &str = "e2e";
pub(super) const MANAGED: &str = "app.kubernetes.io/managed-by=tka";

pub(super) fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[derive(Debug)]
pub(super) struct Run {
    pub(super) ok: bool,
    pub(super) stdout: String,
    pub(super) stderr: String,
}

/// Runs `program ARGS…` with exactly `env` besides `PATH` (bounded by 90 s).
pub(super) async fn run(program: &Path, args: &[&str], env: &[(&str, String)]) -> Run {
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args)
        .env_clear()
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("running {}: {e}", program.display()));
    let out = tokio::time::timeout(Duration::from_secs(90), child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("{} {args:?} took over 90 s", program.display()))
        .unwrap();
    Run {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// A plain HTTP/1.1 GET straight to `addr` (not through the tailnet); the status code.
pub(super) async fn status_of(addr: SocketAddr, host: &str, path: &str) -> Option<u16> {
    let (status, _) = get(addr, host, path).await?;
    Some(status)
}

/// A plain HTTP/1.1 GET straight to `addr`; the status code and the whole response text.
pub(super) async fn get(addr: SocketAddr, host: &str, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(addr).await.ok()?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    s.write_all(request.as_bytes()).await.ok()?;
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out))
        .await
        .ok()?
        .ok()?;
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, text))
}

/// The objects tka labels as its own, as `kind/name` lines.
pub(super) async fn managed_objects(env: &KubeEnv) -> Vec<String> {
    let out = run(
        &env.kubectl(),
        &[
            "--kubeconfig",
            env.admin_kubeconfig().to_str().unwrap(),
            "get",
            "serviceaccounts,rolebindings,clusterrolebindings,sessions.tka.dev",
            "--all-namespaces",
            "-l",
            MANAGED,
            "-o",
            "name",
        ],
        &[("HOME", std::env::temp_dir().display().to_string())],
    )
    .await;
    assert!(out.ok, "listing managed objects: {out:?}");
    out.stdout.lines().map(str::to_owned).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tka_login_on_a_real_tailnet_lets_kubectl_in_and_logout_shuts_it_out() {
    let Some(bin) =
        bin_dir_or_skip("tka_login_on_a_real_tailnet_lets_kubectl_in_and_logout_shuts_it_out")
    else {
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

    // 1. The cluster with the CRDs and a mapping; the tailnet with a grant to the laptop.
    let kube = KubeEnv::start(&bin).await.unwrap();
    kube.prepare_for_tka(&[viewer_mapping()]).await.unwrap();
    let tailnet = TailnetEnv::start_cluster_and_laptop(&bin, &["viewer"], &[])
        .await
        .unwrap();
    let cluster = tailnet.node("cluster").unwrap().clone();
    let laptop = tailnet.node("laptop").unwrap().clone();

    // 2. The server, its API on 127.0.0.1:P where cluster's userspace tailscaled re-dials
    // inbound tailnet connections for port P.
    let server = ServerProcess::start(&server_bin, &kube, &cluster, CLUSTER)
        .await
        .unwrap();
    let port = server.port();
    let listen = server.listen();
    let ops = server.ops();
    let log = || server.log();

    let work = tempfile::tempdir().unwrap();
    // 3. The laptop: its own HOME and a kubeconfig with a foreign context.
    let home = work.path().join("home");
    std::fs::create_dir_all(&home).unwrap();
    let kubeconfig = home.join(".kube").join("config");
    let path = format!(
        "{}:{}:/usr/bin:/bin",
        tka.parent().unwrap().display(),
        bin.display()
    );
    let socks5 = format!("127.0.0.1:{}", laptop.socks5_port);
    let env: Vec<(&str, String)> = vec![
        ("PATH", path),
        ("HOME", home.display().to_string()),
        (
            "XDG_CONFIG_HOME",
            home.join(".config").display().to_string(),
        ),
        ("XDG_CACHE_HOME", home.join(".cache").display().to_string()),
        ("XDG_STATE_HOME", home.join(".state").display().to_string()),
        ("XDG_DATA_HOME", home.join(".data").display().to_string()),
        ("KUBECONFIG", kubeconfig.display().to_string()),
        ("TKA_SOCKS5", socks5.clone()),
        ("TKA_TAILSCALE_SOCKET", laptop.socket.display().to_string()),
    ];
    let kubectl = kube.kubectl();
    for args in [
        &[
            "config",
            "set-cluster",
            "foreign",
            "--server=https://127.0.0.1:1",
        ][..],
        &["config", "set-credentials", "foreign-user", "--token=x"],
        &[
            "config",
            "set-context",
            "foreign",
            "--cluster=foreign",
            "--user=foreign-user",
        ],
        &["config", "use-context", "foreign"],
    ] {
        let out = run(&kubectl, args, &env).await;
        assert!(out.ok, "kubectl {args:?}: {out:?}");
    }
    // People annotate their kubeconfigs: comments must not make tka refuse or lose the file.
    let written = std::fs::read_to_string(&kubeconfig).unwrap();
    std::fs::write(
        &kubeconfig,
        format!("# kubeconfig of alice's laptop\n{written}# the foreign context is the team's\n"),
    )
    .unwrap();
    let foreign_before = run(&kubectl, &["config", "view", "-o", "json"], &env).await;
    assert!(foreign_before.ok, "{foreign_before:?}");

    let server_url = server.url();

    // Discovery through the laptop's LocalAPI finds the tagged node and asks it on port P.
    let list = run(
        &tka,
        &["list", "--server-port", &port.to_string(), "-o", "json"],
        &env,
    )
    .await;
    assert!(list.ok, "tka list: {list:?}\nserver log:\n{}", log());
    let listed: serde_json::Value = serde_json::from_str(&list.stdout).unwrap();
    let row = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["cluster"] == CLUSTER)
        .unwrap_or_else(|| panic!("{CLUSTER} not listed: {listed}"));
    assert_eq!(row["state"], "ok", "{row}");
    assert_eq!(row["roles"][0]["role"], "viewer", "{row}");

    // 5b. Refused: a role the laptop does not hold; nothing is created.
    let refused = run(
        &tka,
        &["login", CLUSTER, "--server", &server_url, "--role", "admin"],
        &env,
    )
    .await;
    assert!(!refused.ok, "a login for admin succeeded: {refused:?}");
    assert!(
        refused.stderr.contains("no grant for role 'admin'"),
        "{refused:?}"
    );
    // The server refused it (not only the CLI): a denied login in its metrics.
    let (_, metrics) = get(ops, &ops.to_string(), "/metrics").await.unwrap();
    assert!(
        metrics.contains("tka_logins_total{outcome=\"denied\"} 1"),
        "{metrics}"
    );
    assert_eq!(managed_objects(&kube).await, Vec::<String>::new());

    // Allowed: the granted role.
    let login = run(
        &tka,
        &["login", CLUSTER, "--server", &server_url, "-o", "json"],
        &env,
    )
    .await;
    assert!(login.ok, "tka login: {login:?}\nserver log:\n{}", log());
    let answer: serde_json::Value = serde_json::from_str(&login.stdout).unwrap();
    assert_eq!(answer["role"], "viewer", "{answer}");
    assert_eq!(answer["credential"], "exec", "{answer}");
    assert_eq!(answer["previousContext"], "foreign", "{answer}");
    let created = managed_objects(&kube).await;
    assert!(
        created.iter().any(|o| o.starts_with("serviceaccount/")),
        "{created:?}"
    );
    assert!(
        created.iter().any(|o| o.starts_with("session.tka.dev/")),
        "{created:?}"
    );

    let current = run(&kubectl, &["config", "current-context"], &env).await;
    assert_eq!(current.stdout.trim(), "tka-e2e", "{current:?}");

    // kubectl reaches the API server (on 127.0.0.1) through the laptop's SOCKS5 proxy too:
    // userspace tailscaled forwards non-tailnet destinations with the host's network.
    let proxy = run(
        &kubectl,
        &[
            "config",
            "view",
            "-o",
            "jsonpath={.clusters[?(@.name==\"tka-e2e\")].cluster.proxy-url}",
        ],
        &env,
    )
    .await;
    assert_eq!(
        proxy.stdout.trim(),
        format!("socks5://{socks5}"),
        "{proxy:?}"
    );

    // kubectl through the exec plugin, with the machine's kubectl and the built one.
    let mut kubectls = vec![kubectl.clone()];
    if Path::new("/usr/bin/kubectl").exists() {
        kubectls.push(PathBuf::from("/usr/bin/kubectl"));
    } else {
        eprintln!("/usr/bin/kubectl is not installed; using only the built kubectl");
    }
    for k in &kubectls {
        let ns = run(
            k,
            &["get", "ns", "-o", "name", "--request-timeout=20s"],
            &env,
        )
        .await;
        assert!(
            ns.ok,
            "{} get ns: {ns:?}\nserver log:\n{}",
            k.display(),
            log()
        );
        assert!(ns.stdout.contains("namespace/kube-system"), "{ns:?}");
        let can = run(k, &["auth", "can-i", "create", "pods"], &env).await;
        assert_eq!(can.stdout.trim(), "no", "{} can-i: {can:?}", k.display());
        let can_list = run(k, &["auth", "can-i", "list", "pods"], &env).await;
        assert_eq!(can_list.stdout.trim(), "yes", "{can_list:?}");
    }

    // The token the exec plugin hands kubectl.
    let credential = run(
        &tka,
        &["credential", CLUSTER, "--server", &server_url],
        &env,
    )
    .await;
    assert!(credential.ok, "tka credential: {credential:?}");
    let credential: serde_json::Value = serde_json::from_str(&credential.stdout).unwrap();
    let token = credential["status"]["token"].as_str().unwrap().to_owned();

    // 5a. Refused: straight to 127.0.0.1:P, not through the tailnet (the same Host header
    // the laptop sends, which works through the tailnet: `tka list` and `tka login` above).
    let (status, direct) = get(
        listen,
        &format!("{}:{port}", cluster.ipv4),
        "/api/v1/cluster",
    )
    .await
    .unwrap();
    assert_eq!(status, 403, "{direct}\nserver log:\n{}", log());
    assert!(direct.contains("unknownCaller"), "{direct}");

    // 4. Logout: kubectl is shut out, tka's entries are gone, the foreign context is back.
    let logout = run(&tka, &["logout", CLUSTER], &env).await;
    assert!(logout.ok, "tka logout: {logout:?}\nserver log:\n{}", log());
    let current = run(&kubectl, &["config", "current-context"], &env).await;
    assert_eq!(current.stdout.trim(), "foreign", "{current:?}");
    let after = run(&kubectl, &["config", "view", "-o", "json"], &env).await;
    assert!(after.ok, "{after:?}");
    let before: serde_json::Value = serde_json::from_str(&foreign_before.stdout).unwrap();
    let after: serde_json::Value = serde_json::from_str(&after.stdout).unwrap();
    for key in ["clusters", "users", "contexts"] {
        assert_eq!(after[key], before[key], "{key} after logout: {after}");
    }
    let gone = run(
        &kubectl,
        &["config", "view", "-o", "jsonpath={.users[*].name}"],
        &env,
    )
    .await;
    assert!(!gone.stdout.contains("tka-e2e"), "{gone:?}");
    // The token kubectl was using no longer works (within 15 s); the admin's still does.
    let stale = kube.kubeconfig_for_token(&token).unwrap();
    let admin = run(
        &kubectl,
        &[
            "--kubeconfig",
            kube.admin_kubeconfig().to_str().unwrap(),
            "get",
            "ns",
        ],
        &[("HOME", std::env::temp_dir().display().to_string())],
    )
    .await;
    assert!(admin.ok, "{admin:?}");
    let mut shut_out = false;
    for _ in 0..60 {
        let ns = run(
            &kubectl,
            &[
                "--kubeconfig",
                stale.to_str().unwrap(),
                "get",
                "ns",
                "--request-timeout=5s",
            ],
            &[("HOME", std::env::temp_dir().display().to_string())],
        )
        .await;
        if !ns.ok {
            shut_out = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(shut_out, "kubectl still works after logout");
}
