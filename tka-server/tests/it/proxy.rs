//! PROXY protocol v2 mode: a connection without a valid header never reaches HTTP; with one,
//! whois is asked about the header's source (and service), not the TCP peer.

use std::net::SocketAddr;

use ppp::v2::{Builder, Command, Protocol, Type, Version};
use tka_core::identity::WhoisTarget;
use tka_server::ListenMode;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

use crate::support::{Client, Options, TestServer, alice};

async fn proxy_server() -> TestServer {
    TestServer::with(Options {
        mode: ListenMode::ProxyProtocol {
            service_name: Some("svc:tka".into()),
        },
        ..Options::default()
    })
    .await
}

fn header(source: SocketAddr, destination: SocketAddr, authority: Option<&str>) -> Vec<u8> {
    let mut builder = Builder::with_addresses(
        Version::Two | Command::Proxy,
        Protocol::Stream,
        (source, destination),
    );
    if let Some(authority) = authority {
        builder = builder
            .write_tlv(Type::Authority, authority.as_bytes())
            .unwrap();
    }
    builder.build().unwrap()
}

#[tokio::test]
async fn a_connection_without_a_header_is_closed() {
    let server = proxy_server().await;
    assert_eq!(server.addr.ip().to_string(), "127.0.0.2");

    let mut raw = TcpStream::connect(server.addr).await.unwrap();
    server.tailnet.insert(raw.local_addr().unwrap(), alice());
    raw.write_all(b"GET /api/v1/cluster HTTP/1.1\r\nHost: tka-prod\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    let read = raw.read_to_end(&mut answer).await;
    assert!(
        read.is_err() || answer.is_empty(),
        "no HTTP answer without a PROXY header: {:?}",
        String::from_utf8_lossy(&answer)
    );
    assert!(
        server.tailnet.last_lookup().is_none(),
        "whois was not asked"
    );

    // The same request behind a valid header is served.
    let source: SocketAddr = "100.64.0.9:41000".parse().unwrap();
    server.tailnet.insert(source, alice());
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    stream
        .write_all(&header(source, server.addr, None))
        .await
        .unwrap();
    let mut client = Client::over(stream).await;
    let response = client.get("/api/v1/cluster").send().await;
    assert_eq!(response.status, 200, "{}", response.text());
}

#[tokio::test]
async fn whois_asks_about_the_headers_source_and_service() {
    let server = proxy_server().await;
    let source: SocketAddr = "100.64.0.9:41000".parse().unwrap();
    server.tailnet.insert(source, alice());

    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    // The TCP peer itself is unknown to whois: only the header's source identifies the caller.
    let tcp_peer = stream.local_addr().unwrap();
    stream
        .write_all(&header(source, server.addr, None))
        .await
        .unwrap();
    let mut client = Client::over(stream).await;
    let response = client.login("{}").await;
    assert_eq!(response.status, 200, "{}", response.text());
    let asked = server.tailnet.last_lookup().unwrap();
    assert_eq!(asked.target, WhoisTarget::Connection(source));
    assert_ne!(asked.target, WhoisTarget::Connection(tcp_peer));
    assert_eq!(
        asked.svc_name.as_deref(),
        Some("svc:tka"),
        "the configured service"
    );

    // A header naming a service overrides the configured one.
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    stream
        .write_all(&header(source, server.addr, Some("svc:other")))
        .await
        .unwrap();
    let mut client = Client::over(stream).await;
    assert_eq!(client.get("/api/v1/session").send().await.status, 200);
    let asked = server.tailnet.last_lookup().unwrap();
    assert_eq!(asked.svc_name.as_deref(), Some("svc:other"));
}

#[tokio::test]
async fn a_header_from_an_unknown_source_is_refused() {
    let server = proxy_server().await;
    let stranger: SocketAddr = "100.64.0.66:5000".parse().unwrap();
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    // Even though whois knows the TCP peer, the header's source is what counts.
    server.tailnet.insert(stream.local_addr().unwrap(), alice());
    stream
        .write_all(&header(stranger, server.addr, None))
        .await
        .unwrap();
    let mut client = Client::over(stream).await;
    assert_eq!(client.login("{}").await.problem_code(403), "unknownCaller");
    assert_eq!(server.issuer.issue_calls(), 0);
}

#[tokio::test]
async fn a_local_command_header_is_refused() {
    let server = proxy_server().await;
    let mut raw = TcpStream::connect(server.addr).await.unwrap();
    server.tailnet.insert(raw.local_addr().unwrap(), alice());
    let local = Builder::with_addresses(
        Version::Two | Command::Local,
        Protocol::Stream,
        ppp::v2::Addresses::Unspecified,
    )
    .build()
    .unwrap();
    raw.write_all(&local).await.unwrap();
    raw.write_all(b"GET /api/v1/cluster HTTP/1.1\r\nHost: tka-prod\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    let read = raw.read_to_end(&mut answer).await;
    assert!(read.is_err() || answer.is_empty());
}

#[tokio::test]
async fn connections_count_against_the_header_source_s_node() {
    let server = TestServer::with(Options {
        mode: ListenMode::ProxyProtocol {
            service_name: Some("svc:tka".into()),
        },
        limits: tka_server::connections::ConnectionLimits {
            max_connections_per_peer: 2,
            ..Default::default()
        },
        ..Options::default()
    })
    .await;
    // Every connection comes from the same trusted proxy on 127.0.0.1; the headers name bob's
    // node (from three source ports) and alice's.
    let bob_sources: Vec<SocketAddr> = (0..3)
        .map(|i| SocketAddr::from(([100, 64, 0, 20], 41000 + i)))
        .collect();
    for source in &bob_sources {
        server.tailnet.insert(
            *source,
            crate::support::identity(
                "nBOB",
                "bob@example.com",
                &[],
                serde_json::json!([{"role": "sre"}]),
            ),
        );
    }
    let alice_source: SocketAddr = "100.64.0.9:41000".parse().unwrap();
    server.tailnet.insert(alice_source, alice());
    let connect = |source: SocketAddr| async move {
        let mut stream = TcpStream::connect(server.addr).await.unwrap();
        stream
            .write_all(&header(source, server.addr, None))
            .await
            .unwrap();
        stream
    };

    let mut held = Vec::new();
    for source in &bob_sources[..2] {
        let mut client = Client::over(connect(*source).await).await;
        assert_eq!(client.get("/api/v1/cluster").send().await.status, 200);
        held.push(client);
    }
    let mut third = connect(bob_sources[2]).await;
    third
        .write_all(b"GET /api/v1/cluster HTTP/1.1\r\nHost: tka-prod\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(
        std::time::Duration::from_secs(30),
        third.read_to_end(&mut answer),
    )
    .await
    .expect("the connection over bob's cap is closed promptly");
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        !answer.starts_with("HTTP/1.1 200"),
        "bob's third connection was served: {answer}"
    );

    // alice, through the same proxy address, is served.
    let mut client = Client::over(connect(alice_source).await).await;
    assert_eq!(client.login("{}").await.status, 200);
}
