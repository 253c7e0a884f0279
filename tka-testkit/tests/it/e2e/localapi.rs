//! `TailscaleLocalApi` against real tailscaled: a connection from the "laptop" node to the
//! "cluster" node through laptop's SOCKS5 proxy is identified by whois on cluster's LocalAPI,
//! with exactly the tka capability values granted through the harness.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use serde_json::json;
use tka_core::identity::{IdentityError, IdentityProvider, TailscaleLocalApi, WhoisRequest};
use tka_testkit::testenv::{TailnetEnv, TailnetGrant, TailnetNodeSpec, bin_dir_or_skip, exclusive};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const CAP: &str = "tka.dev/cap/kubernetes";

/// A SOCKS5 CONNECT (no authentication, IPv4 target) through the proxy at `proxy`.
async fn socks5_connect(proxy: SocketAddr, target: SocketAddr) -> TcpStream {
    let IpAddr::V4(ip) = target.ip() else {
        panic!("only IPv4 targets");
    };
    let mut s = TcpStream::connect(proxy).await.unwrap();
    s.write_all(&[5, 1, 0]).await.unwrap();
    let mut choice = [0u8; 2];
    s.read_exact(&mut choice).await.unwrap();
    assert_eq!(choice, [5, 0], "the proxy wants no authentication");
    let mut request = vec![5, 1, 0, 1];
    request.extend_from_slice(&ip.octets());
    request.extend_from_slice(&target.port().to_be_bytes());
    s.write_all(&request).await.unwrap();
    let mut reply = [0u8; 10];
    s.read_exact(&mut reply).await.unwrap();
    assert_eq!(reply[1], 0, "SOCKS5 CONNECT to {target} failed: {reply:?}");
    s
}

fn grants(values: Vec<serde_json::Value>) -> Vec<TailnetGrant> {
    let mut grant = TailnetGrant::new("laptop", "cluster", CAP, values);
    grant.caps.insert(
        "example.com/cap/other".to_owned(),
        vec![json!({"ignored": true})],
    );
    vec![grant]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whois_on_real_tailscaled_names_the_caller_and_its_capabilities() {
    let Some(bin) =
        bin_dir_or_skip("whois_on_real_tailscaled_names_the_caller_and_its_capabilities")
    else {
        return;
    };
    let _permit = exclusive().await;
    let tailnet = TailnetEnv::start(
        &bin,
        &[
            TailnetNodeSpec::tagged("cluster", &["tag:tka"]),
            TailnetNodeSpec::user("laptop", "alice@example.com"),
        ],
        &grants(vec![json!({"role": "view"})]),
    )
    .await
    .unwrap();
    let cluster = tailnet.node("cluster").unwrap().clone();
    let laptop = tailnet.node("laptop").unwrap().clone();
    let localapi = TailscaleLocalApi::new(&cluster.socket).with_timeout(Duration::from_secs(5));

    // laptop dials cluster's tailnet address; cluster's userspace tailscaled re-dials the
    // connection to 127.0.0.1:PORT, where we accept it.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let proxy = SocketAddr::from(([127, 0, 0, 1], laptop.socks5_port));
    let target = SocketAddr::new(IpAddr::V4(cluster.ipv4), port);
    let (mut client, accepted) = tokio::time::timeout(Duration::from_secs(30), async {
        tokio::join!(socks5_connect(proxy, target), listener.accept())
    })
    .await
    .expect("the connection through the tailnet took over 30 s");
    let (mut server, remote) = accepted.unwrap();
    assert!(
        remote.ip().is_loopback(),
        "userspace tailscaled re-dials from loopback: {remote}"
    );
    client.write_all(b"ping").await.unwrap();
    let mut got = [0u8; 4];
    server.read_exact(&mut got).await.unwrap();
    assert_eq!(&got, b"ping");

    let caller = localapi.whois(remote).await.unwrap();
    assert_eq!(caller.user.login_name.as_str(), "alice@example.com");
    assert_eq!(caller.node.name, "laptop.tka-test.ts.net");
    assert_eq!(caller.node.stable_id.as_str(), laptop.stable_id);
    assert!(caller.node.tags.is_empty(), "{:?}", caller.node.tags);
    assert!(caller.node.addresses.contains(&IpAddr::V4(laptop.ipv4)));
    assert_eq!(caller.capabilities, vec![json!({"role": "view"})]);
    drop((client, server));

    // By the bare tailnet address, with no connection open: the same answer.
    let by_address = localapi
        .lookup(&WhoisRequest::address(IpAddr::V4(laptop.ipv4)))
        .await
        .unwrap();
    assert_eq!(by_address.user.login_name.as_str(), "alice@example.com");
    assert_eq!(by_address.capabilities, vec![json!({"role": "view"})]);

    // A tagged device: its tags, and no capabilities (nothing is granted to cluster).
    let from_laptop = TailscaleLocalApi::new(&laptop.socket).with_timeout(Duration::from_secs(5));
    let tagged = from_laptop
        .lookup(&WhoisRequest::address(IpAddr::V4(cluster.ipv4)))
        .await
        .unwrap();
    assert_eq!(
        tagged
            .node
            .tags
            .iter()
            .map(|t| t.as_str())
            .collect::<Vec<_>>(),
        ["tag:tka"]
    );
    assert!(tagged.capabilities.is_empty(), "{:?}", tagged.capabilities);

    // A changed grant is what whois reports next; a stranger is not in the tailnet.
    let now = tailnet
        .set_grants(&grants(vec![
            json!({"role": "edit", "namespaces": ["dev"]}),
            json!({"role": "view"}),
        ]))
        .await
        .unwrap();
    assert_eq!(now.len(), 1);
    let changed = localapi
        .lookup(&WhoisRequest::address(IpAddr::V4(laptop.ipv4)))
        .await
        .unwrap();
    assert_eq!(
        changed.capabilities,
        vec![
            json!({"role": "edit", "namespaces": ["dev"]}),
            json!({"role": "view"})
        ]
    );
    let stranger = localapi
        .lookup(&WhoisRequest::address("100.100.0.200".parse().unwrap()))
        .await;
    assert!(
        matches!(stranger, Err(IdentityError::NotInTailnet(_))),
        "{stranger:?}"
    );
}
