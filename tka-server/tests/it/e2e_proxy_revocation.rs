//! The end of a session ends the streams through the proxy (DESIGN §8) in the two ways the
//! other proxy tests do not cover, on the real components (kube-apiserver, tailscaled nodes,
//! the built `tka-server`, `tka` and kubectl):
//!
//! - a grant removed from the tailnet policy: the reconciler (`--revalidate-every 1s`)
//!   re-checks the session, finds the grant gone and revokes it, which ends a
//!   `kubectl get ns --watch` running through the proxy; the Session is removed and the next
//!   proxied request gets the 401.
//!
//! Skips without `TKA_TESTENV_BIN` (fails with `TKA_REQUIRE_TESTENV=1`).

use std::net::IpAddr;
use std::time::{Duration, Instant};

use kube::Api;
use kube::api::ListParams;
use serde_json::json;
use tka_core::identity::{IdentityProvider as _, TailscaleLocalApi, WhoisRequest};
use tka_core::kubernetes::Session;
use tka_testkit::testenv::{KubeEnv, TailnetGrant, TailnetNodeSpec};

use crate::e2e_proxy::{ProxyWorld, Watch, person, proxied_login};
use crate::e2e_refusals::Http;
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
