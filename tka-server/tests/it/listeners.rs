//! Hostile clients on the real listeners (raw TCP where a well-behaved client library would not
//! send the bytes): silent, slow and oversized requests are cut off, connection caps hold per
//! device and per listener, malformed framing is refused, and the ops listener answers only a
//! kubelet-style probe. Every refusal is paired with a request that is served. Deadlines here
//! are generous bounds, never timing assertions.

use std::sync::Arc;
use std::time::Duration;

use tka_core::Identity;
use tka_server::connections::ConnectionLimits;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

use crate::support::{Client, Options, ScriptedTailnet, TestServer, alice, ci, identity};

/// A generous bound for anything the server must do "promptly".
pub(super) const BOUND: Duration = Duration::from_secs(30);

/// Short deadlines, so tests that wait for them stay quick.
fn short() -> ConnectionLimits {
    ConnectionLimits {
        header_timeout: Duration::from_secs(2),
        body_timeout: Duration::from_secs(2),
        idle_timeout: Duration::from_secs(1),
        ..ConnectionLimits::default()
    }
}

/// Reads until the server closes (or resets) the connection; what arrived before.
pub(super) async fn read_until_closed(stream: &mut TcpStream) -> String {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let read = async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
    };
    tokio::time::timeout(BOUND, read)
        .await
        .expect("the server closes the connection within the bound");
    String::from_utf8_lossy(&out).into_owned()
}

/// Writes `bytes` (a write error is tolerated: the server may close first) and reads the
/// answer until the connection closes.
pub(super) async fn exchange(mut stream: TcpStream, bytes: &[u8]) -> String {
    let _ = stream.write_all(bytes).await;
    read_until_closed(&mut stream).await
}

pub(super) fn status_of(answer: &str) -> Option<u16> {
    answer.split_whitespace().nth(1)?.parse().ok()
}

pub(super) fn problem_of(answer: &str) -> serde_json::Value {
    let (_, body) = answer
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no HTTP answer: {answer:?}"));
    serde_json::from_str(body).unwrap_or_else(|e| panic!("no problem document ({e}): {answer}"))
}

fn bob() -> Identity {
    identity(
        "nBOB",
        "bob@example.com",
        &[],
        serde_json::json!([{"role": "sre"}]),
    )
}

// ------------------------------------------------------------------ finding 2: slowloris

#[tokio::test]
async fn a_silent_connection_is_closed_while_others_are_served() {
    let server = TestServer::with(Options {
        limits: short(),
        ..Options::default()
    })
    .await;
    let mut silent = server.stream_of(bob()).await;
    let mut client = server.client(alice()).await;
    assert_eq!(client.login("{}").await.status, 200);
    let answer = read_until_closed(&mut silent).await;
    assert!(
        status_of(&answer).is_none_or(|s| s >= 400),
        "a connection that never sent a request got no success: {answer:?}"
    );
}

#[tokio::test]
async fn a_trickled_header_is_cut_off_at_the_header_deadline() {
    let server = TestServer::with(Options {
        limits: short(),
        ..Options::default()
    })
    .await;
    let mut slow = server.stream_of(bob()).await;
    slow.write_all(b"GET /api/v1/cluster HTTP/1.1\r\nHost: tka-prod\r\n")
        .await
        .unwrap();
    // One header line every 300 ms keeps the connection busy (never idle) but never ends the
    // head. Bounded: 200 lines is a minute; the deadline is 2 s.
    let mut closed = false;
    for i in 0..200 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        if slow
            .write_all(format!("x-trickle-{i}: y\r\n").as_bytes())
            .await
            .is_err()
        {
            closed = true;
            break;
        }
        let mut probe = [0u8; 1];
        if let Ok(Ok(0)) =
            tokio::time::timeout(Duration::from_millis(1), slow.read(&mut probe)).await
        {
            closed = true;
            break;
        }
    }
    assert!(closed, "a header trickled for a minute was never cut off");

    let mut client = server.client(alice()).await;
    assert_eq!(client.get("/api/v1/cluster").send().await.status, 200);
}

#[tokio::test]
async fn a_body_slower_than_the_body_deadline_is_answered_408() {
    let server = TestServer::with(Options {
        limits: short(),
        ..Options::default()
    })
    .await;
    let mut slow = server.stream_of(alice()).await;
    slow.write_all(
        b"POST /api/v1/login HTTP/1.1\r\nHost: tka-prod\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{",
    )
    .await
    .unwrap();
    // The rest of the body trickles, one byte per 300 ms (each byte keeps it from being idle).
    let mut answer = String::new();
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        if slow.write_all(b" ").await.is_err() {
            break;
        }
        let mut buf = [0u8; 4096];
        if let Ok(Ok(n)) = tokio::time::timeout(Duration::from_millis(1), slow.read(&mut buf)).await
        {
            answer = String::from_utf8_lossy(&buf[..n]).into_owned();
            if n > 0 {
                answer.push_str(&read_until_closed(&mut slow).await);
            }
            break;
        }
    }
    assert_eq!(status_of(&answer), Some(408), "{answer:?}");
    assert_eq!(problem_of(&answer)["code"], "bodyTimeout");
    assert_eq!(server.issuer.issue_calls(), 0);

    let mut client = server.client(alice()).await;
    assert_eq!(client.login("{}").await.status, 200);
}

#[tokio::test]
async fn one_device_cannot_hold_more_than_its_share_of_connections() {
    let server = TestServer::with(Options {
        limits: ConnectionLimits {
            max_connections_per_peer: 3,
            ..ConnectionLimits::default()
        },
        ..Options::default()
    })
    .await;
    // Three kept-alive connections of bob's, each proven counted by a served request.
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut client = server.client(bob()).await;
        assert_eq!(client.get("/api/v1/cluster").send().await.status, 200);
        held.push(client);
    }
    // A fourth from bob is refused at once, with a problem if the socket takes it.
    let answer = exchange(
        server.stream_of(bob()).await,
        b"GET /api/v1/cluster HTTP/1.1\r\nHost: tka-prod\r\nConnection: close\r\n\r\n",
    )
    .await;
    if let Some(status) = status_of(&answer) {
        assert_eq!(status, 503, "{answer}");
        assert_eq!(problem_of(&answer)["code"], "tooManyConnections");
    }
    // Another device is not affected.
    let mut other = server.client(alice()).await;
    assert_eq!(other.login("{}").await.status, 200);
    // The refusal is counted for the operator, by listener and cap.
    assert_eq!(
        refused_connections(&server, "api", "peer").await,
        1,
        "refused at the per-peer cap"
    );
    assert_eq!(refused_connections(&server, "api", "listener").await, 0);

    // A closed connection frees bob's slot (freed asynchronously: bounded retries).
    held.pop();
    let mut served = false;
    for _ in 0..100 {
        let answer = exchange(
            server.stream_of(bob()).await,
            b"GET /api/v1/cluster HTTP/1.1\r\nHost: tka-prod\r\nConnection: close\r\n\r\n",
        )
        .await;
        if status_of(&answer) == Some(200) {
            served = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(served, "bob's freed slot was never usable again");
}

#[tokio::test]
async fn the_listener_caps_connections_in_total() {
    let server = TestServer::with(Options {
        limits: ConnectionLimits {
            max_connections: 2,
            max_connections_per_peer: 2,
            ..ConnectionLimits::default()
        },
        ..Options::default()
    })
    .await;
    let mut first = server.client(alice()).await;
    assert_eq!(first.get("/api/v1/cluster").send().await.status, 200);
    let mut second = server.client(ci()).await;
    assert_eq!(second.get("/api/v1/cluster").send().await.status, 200);
    let answer = exchange(
        server.stream_of(bob()).await,
        b"GET /api/v1/cluster HTTP/1.1\r\nHost: tka-prod\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_ne!(status_of(&answer), Some(200), "{answer}");
    // The connections already open keep being served.
    assert_eq!(first.login("{}").await.status, 200);
    assert_eq!(refused_connections(&server, "api", "listener").await, 1);
}

/// `tka_connections_refused_total{listener, cap}` from the server's /metrics (0 when absent).
async fn refused_connections(server: &TestServer, listener: &str, cap: &str) -> u64 {
    let text = server
        .ops_client()
        .await
        .get("/metrics")
        .send()
        .await
        .text();
    let series = format!("tka_connections_refused_total{{listener=\"{listener}\",cap=\"{cap}\"}} ");
    text.lines()
        .find_map(|line| line.strip_prefix(series.as_str()))
        .map_or(0, |n| n.trim().parse().unwrap())
}

#[tokio::test]
async fn a_client_that_never_reads_its_answers_loses_its_connection() {
    let server = TestServer::with(Options {
        limits: ConnectionLimits {
            max_connections_per_peer: 1,
            ..short()
        },
        ..Options::default()
    })
    .await;
    // Pipelined requests whose answers (megabytes) are never read: the server's writes stall.
    let stalled = server.stream_of(bob()).await;
    let (_reader, mut writer) = stalled.into_split();
    let pipelined = b"GET /api/v1/cluster HTTP/1.1\r\nHost: tka-prod\r\n\r\n".repeat(60_000);
    let flood = tokio::spawn(async move {
        let _ = writer.write_all(&pipelined).await;
        writer
    });
    // bob's one slot is taken while that connection lives; it is freed once the server drops
    // it (bounded wait).
    let mut served = false;
    for _ in 0..300 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let answer = exchange(
            server.stream_of(bob()).await,
            b"GET /api/v1/cluster HTTP/1.1\r\nHost: tka-prod\r\nConnection: close\r\n\r\n",
        )
        .await;
        // Served (bob's flood used up his rate limit, so 429 counts) rather than refused for
        // want of a connection slot.
        if status_of(&answer).is_some_and(|s| s != 503) {
            served = true;
            break;
        }
    }
    assert!(
        served,
        "a connection whose answers were never read was never dropped"
    );
    flood.abort();
}

// ------------------------------------------------------------------ finding 9: hygiene

#[tokio::test]
async fn two_host_headers_are_refused() {
    let server = TestServer::start().await;
    let answer = exchange(
        server.stream_of(alice()).await,
        b"GET /api/v1/cluster HTTP/1.1\r\nHost: tka-prod\r\nHost: evil.example.com\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status_of(&answer), Some(400), "{answer}");
    assert_eq!(problem_of(&answer)["code"], "badRequest");
    let answer = exchange(
        server.stream_of(alice()).await,
        b"GET /api/v1/cluster HTTP/1.1\r\nHost: tka-prod\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status_of(&answer), Some(200), "{answer}");
}

#[tokio::test]
async fn a_huge_header_is_refused() {
    let server = TestServer::start().await;
    let mut request = b"GET /api/v1/cluster HTTP/1.1\r\nHost: tka-prod\r\nX-Big: ".to_vec();
    request.extend(std::iter::repeat_n(b'a', 300 * 1024));
    request.extend_from_slice(b"\r\nConnection: close\r\n\r\n");
    let answer = exchange(server.stream_of(alice()).await, &request).await;
    assert!(
        matches!(status_of(&answer), None | Some(431)),
        "a 300 kB header was not refused: {answer:?}"
    );
    let answer = exchange(
        server.stream_of(alice()).await,
        b"GET /api/v1/cluster HTTP/1.1\r\nHost: tka-prod\r\nX-Small: aaaa\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status_of(&answer), Some(200), "{answer}");
}

#[tokio::test]
async fn both_transfer_encoding_and_content_length_are_refused() {
    let server = TestServer::start().await;
    for head in [
        "Content-Length: 7\r\nTransfer-Encoding: chunked",
        "Transfer-Encoding: chunked\r\nContent-Length: 7",
    ] {
        let request = format!(
            "POST /api/v1/login HTTP/1.1\r\nHost: tka-prod\r\nContent-Type: application/json\r\n{head}\r\n\r\n2\r\n{{}}\r\n0\r\n\r\n"
        );
        let answer = exchange(server.stream_of(alice()).await, request.as_bytes()).await;
        assert_eq!(status_of(&answer), Some(400), "{head}: {answer}");
        assert_eq!(problem_of(&answer)["code"], "badRequest");
    }
    assert_eq!(server.issuer.issue_calls(), 0);

    // On a kept-alive connection, after requests framed each way, the same holds.
    let mut stream = server.stream_of(alice()).await;
    stream
        .write_all(b"GET /api/v1/cluster HTTP/1.1\r\nHost: tka-prod\r\n\r\nPOST /api/v1/login HTTP/1.1\r\nHost: tka-prod\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\nPOST /api/v1/login HTTP/1.1\r\nHost: tka-prod\r\nContent-Type: application/json\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n")
        .await
        .unwrap();
    let answers = read_until_closed(&mut stream).await;
    let statuses: Vec<&str> = answers
        .match_indices("HTTP/1.1 ")
        .map(|(i, _)| &answers[i + 9..i + 12])
        .collect();
    assert_eq!(statuses, ["200", "200", "400"], "{answers}");
    assert_eq!(
        server.issuer.issue_calls(),
        1,
        "only the clear login was served"
    );
}

/// A chunked body: `data` in chunks of at most 4 KiB.
fn chunked(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    for chunk in data.chunks(4096) {
        out.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        out.extend_from_slice(chunk);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"0\r\n\r\n");
    out
}

#[tokio::test]
async fn an_oversized_chunked_body_gets_a_readable_413() {
    let server = TestServer::start().await;
    let head = b"POST /api/v1/login HTTP/1.1\r\nHost: tka-prod\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n";
    // 64 KiB against a 1 KiB cap, as a client that writes everything before it reads.
    let mut request = head.to_vec();
    let mut big = b"{\"role\":\"".to_vec();
    big.extend(std::iter::repeat_n(b'a', 64 * 1024));
    big.extend_from_slice(b"\"}");
    request.extend(chunked(&big));
    let mut stream = server.stream_of(alice()).await;
    stream
        .write_all(&request)
        .await
        .expect("the server reads the body it refuses");
    let answer = read_until_closed(&mut stream).await;
    assert_eq!(status_of(&answer), Some(413), "{answer:?}");
    assert_eq!(problem_of(&answer)["code"], "bodyTooLarge");
    assert_eq!(server.issuer.issue_calls(), 0);

    let mut request = head.to_vec();
    request.extend(chunked(b"{}"));
    let answer = exchange(server.stream_of(alice()).await, &request).await;
    assert_eq!(status_of(&answer), Some(200), "{answer}");
}

/// Backend text a caller must never see.
const SECRET_TEXT: &str = "dial unix /var/run/secret-socket: permission denied for uid 1234";

#[tokio::test]
async fn server_errors_name_the_request_id_not_the_backend_text() {
    let tailnet = Arc::new(ScriptedTailnet::default());
    tailnet.set_unavailable(Some(SECRET_TEXT));
    let server = TestServer::with(Options {
        identity: Some(tailnet.clone()),
        ..Options::default()
    })
    .await;
    let stream = {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        tailnet.insert(socket.local_addr().unwrap(), alice());
        socket.connect(server.addr).await.unwrap()
    };
    let mut client = Client::over(stream).await;
    let response = client
        .post("/api/v1/login")
        .header("x-request-id", "req-5xx")
        .json("{}")
        .send()
        .await;
    assert_eq!(response.problem_code(503), "identityUnavailable");
    let problem = response.json();
    let detail = problem["detail"].as_str().unwrap();
    assert!(!detail.contains("secret-socket"), "{detail}");
    assert!(!response.text().contains("uid 1234"), "{}", response.text());
    assert!(detail.contains("request ID"), "{detail}");
    assert_eq!(problem["instance"], "req-5xx");

    tailnet.set_unavailable(None);
    assert_eq!(client.login("{}").await.status, 200);
}

// ------------------------------------------------------------------ finding 3: ops

#[tokio::test]
async fn ops_answers_a_kubelet_probe_and_refuses_foreign_hosts() {
    let server = TestServer::start().await;
    let probe = format!(
        "GET /healthz HTTP/1.1\r\nHost: {}\r\nUser-Agent: kube-probe/1.36\r\nConnection: close\r\n\r\n",
        server.ops
    );
    let answer = exchange(
        TcpStream::connect(server.ops).await.unwrap(),
        probe.as_bytes(),
    )
    .await;
    assert_eq!(status_of(&answer), Some(200), "{answer}");

    for host in [
        "tka-prod",
        "evil.example.com",
        "127.0.0.1",
        "localhost:9090",
    ] {
        let request = format!("GET /metrics HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
        let answer = exchange(
            TcpStream::connect(server.ops).await.unwrap(),
            request.as_bytes(),
        )
        .await;
        assert_eq!(status_of(&answer), Some(403), "{host}: {answer}");
        assert!(!answer.contains("tka_"), "no metrics for {host}");
    }
    let two = format!(
        "GET /metrics HTTP/1.1\r\nHost: {}\r\nHost: evil.example.com\r\nConnection: close\r\n\r\n",
        server.ops
    );
    let answer = exchange(
        TcpStream::connect(server.ops).await.unwrap(),
        two.as_bytes(),
    )
    .await;
    assert_eq!(status_of(&answer), Some(400), "{answer}");
}

#[tokio::test]
async fn ops_bound_where_tailnet_traffic_arrives_answers_nobody() {
    // 127.0.0.1 is where a userspace tailscaled delivers every tailnet connection: a server
    // whose ops listener ends up there (settings refuse it; a wildcard bind also receives
    // there) must not answer it.
    let server = TestServer::with(Options {
        ops_ip: "127.0.0.1",
        ..Options::default()
    })
    .await;
    let probe = format!(
        "GET /metrics HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
        server.ops
    );
    let answer = exchange(
        TcpStream::connect(server.ops).await.unwrap(),
        probe.as_bytes(),
    )
    .await;
    assert!(answer.is_empty(), "ops answered at 127.0.0.1: {answer}");
    // The API of the same server is served.
    let mut client = server.client(alice()).await;
    assert_eq!(client.get("/api/v1/cluster").send().await.status, 200);
}
