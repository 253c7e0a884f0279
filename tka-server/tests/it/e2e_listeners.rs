//! The listeners under attack with nothing faked: the built `tka-server serve` on a real API
//! server and a real tailnet (its node's userspace tailscaled, which delivers every tailnet
//! connection from 127.0.0.1). One ungranted peer holds many half-open and half-sent
//! connections through its SOCKS5 proxy (a bounded number, renewed as the server closes them);
//! meanwhile another device's login succeeds and the kubelet-style `/healthz` answers, because
//! the per-peer cap counts tailnet nodes (whois at accept), not the shared 127.0.0.1. The same
//! peer cannot reach the ops port through the tailnet, while a probe at the pod's address
//! (127.0.0.3 stands in) is answered.
//!
//! Skips without `TKA_TESTENV_BIN` (fails with `TKA_REQUIRE_TESTENV=1`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use tka_testkit::testenv::{
    KubeEnv, ServerProcess, TailnetEnv, bin_dir_or_skip, exclusive, viewer_mapping,
};
use tokio::io::AsyncWriteExt as _;

use super::e2e_refusals::{Http, exchange, socks5_connect};
use super::e2e_tailnet::{CLUSTER, status_of};

/// Connections the attacker opens per round (half silent, half with a header never finished).
const PER_ROUND: usize = 40;
/// Rounds at most (one a second); the attack stops earlier when the test is done.
const MAX_ROUNDS: usize = 120;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e2e_one_peer_holding_many_slow_connections_starves_no_one() {
    let Some(bin) = bin_dir_or_skip("e2e_one_peer_holding_many_slow_connections_starves_no_one")
    else {
        return;
    };
    let _permit = exclusive().await;
    let server_bin = PathBuf::from(env!("CARGO_BIN_EXE_tka-server"));

    let kube = KubeEnv::start(&bin).await.unwrap();
    kube.prepare_for_tka(&[viewer_mapping()]).await.unwrap();
    let tailnet = TailnetEnv::start_cluster_and_laptop(
        &bin,
        &["viewer"],
        &[("attacker", "mallory@example.com")],
    )
    .await
    .unwrap();
    let cluster = tailnet.node("cluster").unwrap().clone();
    let laptop = tailnet.node("laptop").unwrap().clone();
    let attacker = tailnet.node("attacker").unwrap().clone();

    // Default limits: 32 connections per peer, 10 s for headers, 5 s idle.
    let server = ServerProcess::start(&server_bin, &kube, &cluster, CLUSTER)
        .await
        .unwrap();
    let ops = server.ops();
    let api_on_tailnet = SocketAddr::from((cluster.ipv4, server.port()));
    let attacker_socks5 = format!("127.0.0.1:{}", attacker.socks5_port);

    // The attack: rounds of half-open and half-sent connections, each round's kept open until
    // two rounds later (or until the server closes them).
    let stop = Arc::new(AtomicBool::new(false));
    let opened = Arc::new(AtomicUsize::new(0));
    let attack = {
        let stop = Arc::clone(&stop);
        let opened = Arc::clone(&opened);
        let socks5 = attacker_socks5.clone();
        tokio::spawn(async move {
            let mut held: Vec<Vec<tokio::net::TcpStream>> = Vec::new();
            for _ in 0..MAX_ROUNDS {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                let mut round = Vec::with_capacity(PER_ROUND);
                for i in 0..PER_ROUND {
                    let Some(mut stream) = socks5_connect(&socks5, api_on_tailnet).await else {
                        continue;
                    };
                    if i % 2 == 1 {
                        let _ = stream
                            .write_all(b"POST /api/v1/login HTTP/1.1\r\nHost: cluster\r\nContent-Type: application/json\r\n")
                            .await;
                    }
                    opened.fetch_add(1, Ordering::SeqCst);
                    round.push(stream);
                }
                held.push(round);
                if held.len() > 2 {
                    held.remove(0);
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        })
    };
    // Let the attack get going (bounded).
    for _ in 0..120 {
        if opened.load(Ordering::SeqCst) >= 2 * PER_ROUND {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(
        opened.load(Ordering::SeqCst) >= PER_ROUND,
        "the attacker could not open its connections"
    );

    // Another device's login succeeds while the attack runs (curl's --max-time 30 bounds it).
    let alice = Http {
        socks5: format!("127.0.0.1:{}", laptop.socks5_port),
        base: format!("http://{api_on_tailnet}"),
    };
    let (status, body) = alice.login(r#"{"role":"viewer"}"#).await;
    assert_eq!(status, 200, "{body}\nserver log:\n{}", server.log());
    assert_eq!(body["session"]["role"], "viewer", "{body}");
    // The kubelet's probe answers too.
    assert_eq!(
        status_of(ops, &ops.to_string(), "/healthz").await,
        Some(200),
        "server log:\n{}",
        server.log()
    );
    // The attacker did run into its own cap: whois at accept told it apart from the laptop,
    // though both arrive from 127.0.0.1.
    assert!(
        server.log().contains("--max-connections-per-peer"),
        "the per-peer cap never engaged:\n{}",
        server.log()
    );
    stop.store(true, Ordering::SeqCst);
    tokio::time::timeout(Duration::from_secs(120), attack)
        .await
        .expect("the attack stops")
        .unwrap();

    // Ops is not reachable through the tailnet: the attacker's connection to the ops port of
    // the cluster node gets no HTTP answer...
    let ops_on_tailnet = SocketAddr::from((cluster.ipv4, ops.port()));
    let probe =
        format!("GET /metrics HTTP/1.1\r\nHost: {ops_on_tailnet}\r\nConnection: close\r\n\r\n");
    let answer = match socks5_connect(&attacker_socks5, ops_on_tailnet).await {
        Some(stream) => exchange(stream, probe.as_bytes()).await,
        None => String::new(),
    };
    assert!(
        !answer.starts_with("HTTP/"),
        "a tailnet peer reached ops: {answer}"
    );
    // ...while a kubelet-style probe at the pod's address is answered.
    assert_eq!(
        status_of(ops, &ops.to_string(), "/metrics").await,
        Some(200)
    );
}
