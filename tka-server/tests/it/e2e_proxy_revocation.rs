//! The end of a session ends the streams through the proxy (DESIGN §8) in the two ways the
//! other proxy tests do not cover, on the real components (kube-apiserver, tailscaled nodes,
//! the built `tka-server`, `tka` and kubectl):
//!
//! - a grant removed from the tailnet policy: the reconciler (`--revalidate-every 1s`)
//!   re-checks the session, finds the grant gone and revokes it, which ends a
//!   `kubectl get ns --watch` running through the proxy; the Session is removed and the next
//!   proxied request gets the 401;
//! - two replicas (deploy/'s RBAC, leader election), each with its own proxy on its own tagged
//!   node: a session made through replica A serves requests through replica B's proxy (B learns
//!   it from its Session watch and mints its own token), and `tka logout` through A ends a
//!   watch running through B.
//!
//! Skips without `TKA_TESTENV_BIN` (fails with `TKA_REQUIRE_TESTENV=1`).

use std::net::IpAddr;
use std::time::{Duration, Instant};

use kube::Api;
use kube::api::ListParams;
use serde_json::json;
use tka_core::identity::{IdentityProvider as _, TailscaleLocalApi, WhoisRequest};
use tka_core::kubernetes::Session;
use tka_testkit::testenv::{
    KubeEnv, ServerProcess, TailnetEnv, TailnetGrant, TailnetNodeSpec, bin_dir_or_skip, exclusive,
};

use crate::e2e_proxy::{
    ProxyWorld, Watch, binaries, person, proxied_login, proxy_flags, shell_path,
};
use crate::e2e_refusals::{Http, apply_deploy, apply_yaml};
use crate::e2e_tailnet::{CLUSTER, run};

const CAP: &str = "tka.dev/cap/kubernetes";
const ALICE: &str = "alice@example.com";

/// The acceptance bound for a stream to end after its session does (generous: the proxy
/// closes streams within 2 s of seeing the end).
const ENDS_WITHIN: Duration = Duration::from_secs(5);

/// The Sessions of tailnet user `login`.
async fn sessions_of(kube: &KubeEnv, login: &str) -> Vec<Session> {
    let api: Api<Session> = Api::all(kube.client());
    api.list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|s| s.spec.identity.login_name == login)
        .collect()
}

/// Whether `login` has no Session left within 30 s.
async fn sessions_gone(kube: &KubeEnv, login: &str) -> bool {
    for _ in 0..120 {
        if sessions_of(kube, login).await.is_empty() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    false
}

/// Whether `log` has (within 5 s) the proxy's audit record of a stream of alice's that it
/// closed because her session ended.
async fn closed_for_the_session(log: impl Fn() -> String) -> bool {
    for _ in 0..50 {
        if log().lines().any(|l| {
            l.contains("tka::audit") && l.contains(ALICE) && l.contains("the session ended")
        }) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e2e_a_grant_removed_from_the_tailnet_policy_ends_the_watch_through_the_proxy() {
    let Some(world) = ProxyWorld::start(
        "e2e_a_grant_removed_from_the_tailnet_policy_ends_the_watch_through_the_proxy",
        &[TailnetNodeSpec::user("laptop", ALICE)],
        &[TailnetGrant::new(
            "laptop",
            "cluster",
            CAP,
            vec![json!({"role": "developer"})],
        )],
        &["--revalidate-every", "1s"],
    )
    .await
    else {
        return;
    };
    let log = || world.server.log();
    let laptop = world.node("laptop");
    let cluster = world.node("cluster");
    let (_, env) = person(world.work.path(), "alice", &world.path, &laptop);
    let kubectl = world.kube.kubectl();

    proxied_login(&world.tka, &world.server.url(), &env, &[], log).await;
    let mut watch = Watch::start(&kubectl, &env);
    watch.until("namespace/kube-system").await;
    assert_eq!(sessions_of(&world.kube, ALICE).await.len(), 1);
    let alice = Http {
        socks5: format!("127.0.0.1:{}", laptop.socks5_port),
        base: world.proxy_url.clone(),
    };
    let (status, body) = alice.send("GET", "/api/v1/namespaces", &[], None).await;
    assert_eq!(status, 200, "{body}\nserver log:\n{}", log());
    // The cluster node's tailscaled names the grant before its removal ...
    let whois = TailscaleLocalApi::new(&cluster.socket).with_timeout(Duration::from_secs(5));
    let laptop_address = WhoisRequest::address(IpAddr::V4(laptop.ipv4));
    let before = whois.lookup(&laptop_address).await.unwrap();
    assert_eq!(before.capabilities, vec![json!({"role": "developer"})]);

    // ... and not after: `set_grants` returns once every node's whois shows the new table,
    // so the bound counts from when the cluster node sees the grant gone.
    let now = world.tailnet.set_grants(&[]).await.unwrap();
    let removed = Instant::now();
    assert!(now.is_empty(), "{now:?}");
    assert!(
        watch.child.try_wait().unwrap().is_none(),
        "the watch ended before the grant was gone"
    );
    let after = whois.lookup(&laptop_address).await.unwrap();
    assert!(after.capabilities.is_empty(), "{:?}", after.capabilities);

    let ended = watch.ends_within(ENDS_WITHIN).await;
    eprintln!(
        "the watch ended {:?} after the grant was gone",
        removed.elapsed()
    );
    assert!(
        ended,
        "the watch through the proxy outlived the grant's removal by {ENDS_WITHIN:?}\nserver log:\n{}",
        log()
    );
    assert!(
        closed_for_the_session(log).await,
        "the proxy did not close the watch for the session's end\nserver log:\n{}",
        log()
    );
    // The reconciler revoked the session: the Session is removed ...
    assert!(
        sessions_gone(&world.kube, ALICE).await,
        "alice's Session is still there: {:?}\nserver log:\n{}",
        sessions_of(&world.kube, ALICE).await,
        log()
    );
    // ... by the reconciler's re-validation.
    let revoked = log();
    assert!(
        revoked
            .lines()
            .any(|l| l.contains("grant withdrawn; revoking")),
        "the reconciler did not revoke the session for its grant:\n{revoked}"
    );
    // The proxy no longer forwards for the laptop: the 401 naming `tka login`.
    let (status, body) = alice.send("GET", "/api/v1/namespaces", &[], None).await;
    assert_eq!(status, 401, "{body}");
    assert!(
        body["message"]
            .as_str()
            .is_some_and(|m| m.contains(&format!("tka login {CLUSTER}"))),
        "{body}"
    );
    let refused = run(&kubectl, &["get", "ns"], &env).await;
    assert!(!refused.ok, "kubectl still gets in: {refused:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e2e_a_session_made_through_one_replica_serves_the_others_proxy_and_logout_ends_its_watch()
{
    let Some(bin) = bin_dir_or_skip(
        "e2e_a_session_made_through_one_replica_serves_the_others_proxy_and_logout_ends_its_watch",
    ) else {
        return;
    };
    let _permit = exclusive().await;
    let (server_bin, tka) = binaries();
    let kube = KubeEnv::start(&bin).await.unwrap();
    let server_kubeconfig = apply_deploy(&kube).await;
    apply_yaml(&kube, "apiVersion: tka.dev/v1alpha1\nkind: GrantMapping\nmetadata: {name: viewer}\nspec: {clusterRoles: [view]}\n").await;
    let tailnet = TailnetEnv::start(
        &bin,
        &[
            TailnetNodeSpec::tagged("cluster-a", &["tag:tka"]),
            TailnetNodeSpec::tagged("cluster-b", &["tag:tka"]),
            TailnetNodeSpec::user("laptop", ALICE),
        ],
        &[
            TailnetGrant::new("laptop", "cluster-a", CAP, vec![json!({"role": "viewer"})]),
            TailnetGrant::new("laptop", "cluster-b", CAP, vec![json!({"role": "viewer"})]),
        ],
    )
    .await
    .unwrap();
    let laptop = tailnet.node("laptop").unwrap().clone();

    // Two replicas of one cluster, each with its proxy on its own node; the server's own
    // ServiceAccount (deploy/'s RBAC) and leader election on Lease tka-system/tka-server.
    let mut replicas = Vec::new();
    for (node, pod) in [("cluster-a", "tka-server-a"), ("cluster-b", "tka-server-b")] {
        let node = tailnet.node(node).unwrap().clone();
        let (flags, proxy_url) = proxy_flags(&node);
        let server = ServerProcess::builder(&server_bin, &kube, &node, CLUSTER)
            .kubeconfig(&server_kubeconfig)
            .pod_name(pod)
            .args(flags)
            .start()
            .await
            .unwrap_or_else(|e| panic!("{pod} did not start: {e}"));
        replicas.push((server, proxy_url));
    }
    let (a, a_proxy) = &replicas[0];
    let (b, b_proxy) = &replicas[1];
    let logs = || format!("tka-server-a:\n{}\ntka-server-b:\n{}", a.log(), b.log());

    // The login goes through A; its kubeconfig points at A's proxy.
    let work = tempfile::tempdir().unwrap();
    let (home, env) = person(work.path(), "alice", &shell_path(&tka, &bin), &laptop);
    proxied_login(&tka, &a.url(), &env, &[], logs).await;
    let config = std::fs::read_to_string(home.join(".kube").join("config")).unwrap();
    assert!(config.contains(a_proxy.as_str()), "{config}");
    let kubectl = kube.kubectl();
    let whoami = [
        "auth",
        "whoami",
        "-o",
        "jsonpath={.status.userInfo.username}",
    ];
    let through_a = run(&kubectl, &whoami, &env).await;
    assert!(through_a.ok, "{through_a:?}\n{}", logs());
    assert!(
        through_a.stdout.starts_with("system:serviceaccount:"),
        "{through_a:?}"
    );

    // The same context with B's proxy as its server: B learns the session from its Session
    // watch (30 s at most) and forwards as the same ServiceAccount, with a token it mints.
    let b_config = home.join(".kube").join("config-b");
    std::fs::write(&b_config, config.replace(a_proxy.as_str(), b_proxy)).unwrap();
    let mut b_env = env.clone();
    for (k, v) in &mut b_env {
        if *k == "KUBECONFIG" {
            *v = b_config.display().to_string();
        }
    }
    let mut through_b = run(&kubectl, &whoami, &b_env).await;
    for _ in 0..30 {
        if through_b.ok {
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        through_b = run(&kubectl, &whoami, &b_env).await;
    }
    assert!(through_b.ok, "{through_b:?}\n{}", logs());
    assert_eq!(through_b.stdout, through_a.stdout);
    let ns = run(&kubectl, &["get", "ns", "-o", "name"], &b_env).await;
    assert!(
        ns.ok && ns.stdout.contains("namespace/kube-system"),
        "{ns:?}\n{}",
        logs()
    );
    let b_log = b.log();
    assert!(
        b_log.lines().any(|l| l.contains("tka::audit")
            && l.contains("proxy")
            && l.contains(ALICE)
            && l.contains("200")),
        "no audit record of alice's request through B:\n{b_log}"
    );
    // One session: B made none of its own.
    assert_eq!(sessions_of(&kube, ALICE).await.len(), 1);

    // A watch through B; `tka logout` through A ends it.
    let mut watch = Watch::start(&kubectl, &b_env);
    watch.until("namespace/kube-system").await;
    kube.ensure_namespace("watched").await.unwrap();
    watch.until("namespace/watched").await;
    assert!(
        watch.child.try_wait().unwrap().is_none(),
        "the watch through B ended before the logout\n{}",
        logs()
    );
    // The bound counts from the start of `tka logout` (its answer comes after the Session is
    // deleted, which B may already have seen).
    let logging_out = Instant::now();
    let logout = run(&tka, &["logout", CLUSTER], &env).await;
    assert!(logout.ok, "tka logout: {logout:?}\n{}", logs());
    let ended = watch.ends_within(ENDS_WITHIN).await;
    eprintln!(
        "the watch through B ended {:?} after `tka logout` through A started",
        logging_out.elapsed()
    );
    assert!(
        ended,
        "the watch through B outlived the logout through A by {ENDS_WITHIN:?}\n{}",
        logs()
    );
    assert!(
        closed_for_the_session(|| b.log()).await,
        "B did not close the watch for the session's end\n{}",
        logs()
    );
    // And B no longer forwards for the laptop.
    let alice_b = Http {
        socks5: format!("127.0.0.1:{}", laptop.socks5_port),
        base: b_proxy.clone(),
    };
    let (status, body) = alice_b.send("GET", "/api/v1/namespaces", &[], None).await;
    assert_eq!(status, 401, "{body}\n{}", logs());
}
