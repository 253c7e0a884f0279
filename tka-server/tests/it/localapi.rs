//! The router with the real LocalAPI client, asking a fake tailscaled over its Unix socket (the
//! same wire protocol as the real daemon): who is calling is decided by the connection's source
//! address, the server's own node is learned from status and refused.

use std::sync::Arc;

use serde_json::json;
use tka_server::ops::ReadinessCheck as _;
use tka_server::tailscale::{TailscaledReady, own_node};
use tka_testkit::tailnet::{FakeTailnet, PeerSpec};
use tokio::net::TcpStream;

use crate::support::{Client, Options, TestServer};

#[tokio::test]
async fn whois_over_the_localapi_decides_who_logs_in() {
    let tailnet = FakeTailnet::new();
    let alice = tailnet.add(
        PeerSpec::user("alice@example.com", "alice-laptop")
            .capability("tka.dev/cap/kubernetes", json!({"role": "sre"})),
    );
    let me = tailnet.add(
        PeerSpec::tagged(["tag:tka"], "tka-prod")
            .capability("tka.dev/cap/kubernetes", json!({"role": "sre"})),
    );
    tailnet.set_self(&me.stable_id).unwrap();
    let daemon = tailnet.serve().await.unwrap();
    let localapi = Arc::new(daemon.client());

    let own = own_node(localapi.as_ref()).await.unwrap();
    assert_eq!(own, me.stable_id);
    let server = TestServer::with(Options {
        identity: Some(localapi.clone()),
        self_node_ids: vec![own],
        ..Options::default()
    })
    .await;

    // A connection tailscaled attributes to alice.
    let stream = TcpStream::connect(server.addr).await.unwrap();
    tailnet
        .bind_connection(stream.local_addr().unwrap(), &alice.stable_id)
        .unwrap();
    let mut client = Client::over(stream).await;
    let response = client.login("{}").await;
    assert_eq!(response.status, 200, "{}", response.text());
    assert_eq!(response.json()["session"]["caller"], "alice@example.com");

    // A connection tailscaled knows nothing about.
    let mut stranger = Client::over(TcpStream::connect(server.addr).await.unwrap()).await;
    assert_eq!(
        stranger.login("{}").await.problem_code(403),
        "unknownCaller"
    );

    // A connection from the server's own node, even though it holds the grant.
    let stream = TcpStream::connect(server.addr).await.unwrap();
    tailnet
        .bind_connection(stream.local_addr().unwrap(), &me.stable_id)
        .unwrap();
    let mut itself = Client::over(stream).await;
    assert_eq!(itself.login("{}").await.problem_code(403), "selfNode");
    assert_eq!(server.issuer.issue_calls(), 1);
}

#[tokio::test]
async fn readiness_follows_tailscaled() {
    let tailnet = FakeTailnet::new();
    let me = tailnet.add(PeerSpec::tagged(["tag:tka"], "tka-prod"));
    tailnet.set_self(&me.stable_id).unwrap();
    let daemon = tailnet.serve().await.unwrap();
    let check = TailscaledReady(Arc::new(daemon.client()));
    assert_eq!(check.check().await, Ok(()));
    tailnet.set_daemon_ready(false);
    assert!(check.check().await.is_err());
    tailnet.set_daemon_ready(true);
    tailnet.clear_self();
    let logged_out = check.check().await.unwrap_err();
    assert!(logged_out.contains("tailscale up"), "{logged_out}");
}
