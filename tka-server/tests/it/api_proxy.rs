//! The tailnet API proxy (DESIGN §8), in process: the production wiring
//! (`tka_server::wiring::server` with `--proxy-listen`) on a FakeCluster and a fake tailscaled,
//! forwarding to an upstream on 127.0.0.1 that records what reaches it, streams a slow chunked
//! "watch", and accepts an upgrade and echoes bytes.
//!
//! (The module is `api_proxy`: `proxy` holds the PROXY-protocol listener tests.)

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use clap::Parser as _;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full, StreamBody};
use hyper::body::{Bytes, Frame, Incoming};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tka_core::SessionName;
use tka_server::Settings;
use tka_server::cli::{Cli, Command};
use tka_server::proxy::Proxy;
use tka_testkit::cluster::Verb;
use tka_testkit::tailnet::{FakePeer, PeerSpec};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::serve::{FakeWorld, eventually, get};
use crate::support::Client;

/// A generous bound for something that should happen within seconds.
const BOUND: Duration = Duration::from_secs(20);

/// What reached the upstream.
#[derive(Debug, Clone)]
struct Seen {
    path: String,
    authorization: Option<String>,
    headers: http::HeaderMap,
}

/// The upstream API server stand-in.
struct Upstream {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Upstream {
    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    fn authorizations(&self) -> Vec<Option<String>> {
        self.seen().into_iter().map(|s| s.authorization).collect()
    }
}

type UpBody = BoxBody<Bytes, std::io::Error>;

async fn answer(
    request: hyper::Request<Incoming>,
    seen: Arc<Mutex<Vec<Seen>>>,
) -> hyper::Response<UpBody> {
    let mut request = request;
    seen.lock().unwrap().push(Seen {
        path: request.uri().path().to_owned(),
        authorization: request
            .headers()
            .get(http::header::AUTHORIZATION)
            .map(|v| v.to_str().unwrap().to_owned()),
        headers: request.headers().clone(),
    });
    if request.uri().path().ends_with("/exec") && request.headers().contains_key("upgrade") {
        let protocol = request.headers()["upgrade"].clone();
        let on = hyper::upgrade::on(&mut request);
        tokio::spawn(async move {
            let Ok(upgraded) = on.await else { return };
            let mut io = TokioIo::new(upgraded);
            let mut buf = [0u8; 1024];
            // Echo until the other side closes (bounded by the test's own deadlines).
            for _ in 0..10_000 {
                match io.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => {
                        if io.write_all(&buf[..n]).await.is_err() {
                            return;
                        }
                    }
                }
            }
        });
        return hyper::Response::builder()
            .status(101)
            .header("connection", "Upgrade")
            .header("upgrade", protocol)
            .body(Empty::new().map_err(|never| match never {}).boxed())
            .unwrap();
    }
    if request.uri().query().is_some_and(|q| q.contains("watch=1")) {
        // One event every 100 ms, for at most 10 minutes.
        let events = futures::stream::unfold(0u32, |n| async move {
            if n > 0 {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            (n < 6000).then(|| {
                let line = format!("{{\"type\":\"ADDED\",\"n\":{n}}}\n");
                (
                    Ok::<_, std::io::Error>(Frame::data(Bytes::from(line))),
                    n + 1,
                )
            })
        });
        return hyper::Response::builder()
            .header("content-type", "application/json")
            .body(BodyExt::boxed(StreamBody::new(Box::pin(events))))
            .unwrap();
    }
    hyper::Response::builder()
        .header("content-type", "application/json")
        .body(
            Full::new(Bytes::from_static(
                br#"{"kind":"NamespaceList","items":[]}"#,
            ))
            .map_err(|never| match never {})
            .boxed(),
        )
        .unwrap()
}

async fn upstream() -> Upstream {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let recorded = Arc::clone(&seen);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let seen = Arc::clone(&recorded);
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |request| {
                    let seen = Arc::clone(&seen);
                    async move { Ok::<_, std::convert::Infallible>(answer(request, seen).await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .with_upgrades()
                    .await;
            });
        }
    });
    Upstream { addr, seen }
}

/// A server built by the production wiring with the proxy on, forwarding to `upstream`.
pub(super) struct Running {
    pub(super) api: SocketAddr,
    pub(super) ops: SocketAddr,
    pub(super) proxy_addr: SocketAddr,
    proxy: Arc<Proxy>,
    shutdown: CancellationToken,
    running: JoinHandle<std::io::Result<()>>,
}

impl Running {
    pub(super) async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(30), self.running)
            .await
            .expect("the server stops on shutdown")
            .unwrap()
            .unwrap();
    }
}

async fn start(world: &FakeWorld, upstream: &Upstream, extra: &[&str]) -> Running {
    start_at(world, &format!("http://{}", upstream.addr), extra).await
}

/// [`start`] with the proxy's upstream at `upstream_url` (which may carry a path prefix).
pub(super) async fn start_at(world: &FakeWorld, upstream_url: &str, extra: &[&str]) -> Running {
    let mut argv: Vec<std::ffi::OsString> = vec!["tka-server".into(), "serve".into()];
    argv.extend([
        "--kubeconfig".into(),
        world.kubeconfig.clone().into_os_string(),
    ]);
    argv.extend([
        "--tailscale-socket".into(),
        world.daemon.socket_path().as_os_str().to_owned(),
    ]);
    argv.extend(
        [
            "--cluster-name",
            "prod",
            "--api-server-url",
            "https://10.0.0.1:6443",
            "--server-name",
            "tka-prod",
            "--listen",
            "127.0.0.1:0",
            "--ops-listen",
            "127.0.0.3:0",
            "--proxy-listen",
            "127.0.0.1:0",
            "--proxy-upstream",
            upstream_url,
        ]
        .map(Into::into),
    );
    argv.extend(extra.iter().map(Into::into));
    let Command::Serve(args) = Cli::try_parse_from(argv).unwrap().command else {
        panic!("not serve");
    };
    let settings = Settings::try_from(*args).unwrap();
    let shutdown = CancellationToken::new();
    let server = tka_server::wiring::server(&settings, shutdown.clone())
        .await
        .unwrap();
    let api = server.api_addr();
    let ops = server.ops_addr().unwrap();
    let proxy_addr = server.proxy_addr().unwrap();
    let proxy = server.proxy().unwrap();
    let running = tokio::spawn(server.run());
    eventually("readiness", || async {
        get(ops, "/readyz")
            .await
            .filter(|(status, _)| *status == 200)
    })
    .await;
    Running {
        api,
        ops,
        proxy_addr,
        proxy,
        shutdown,
        running,
    }
}

/// A connection to `to` that tailscaled attributes to `peer` (bound before connecting, since
/// the proxy asks whois at accept).
pub(super) async fn connect_as(world: &FakeWorld, peer: &FakePeer, to: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    world
        .tailnet
        .bind_connection(socket.local_addr().unwrap(), &peer.stable_id)
        .unwrap();
    socket.connect(to).await.unwrap()
}

pub(super) async fn client_as(world: &FakeWorld, peer: &FakePeer, to: SocketAddr) -> Client {
    Client::over(connect_as(world, peer, to).await).await
}

/// A new connection to the proxy as `peer` (one per step: a kept-alive connection left idle
/// past `--idle-timeout` is closed, and a busy machine can stretch any pause).
async fn fresh(world: &FakeWorld, peer: &FakePeer, running: &Running) -> Client {
    client_as(world, peer, running.proxy_addr).await
}

/// Logs `peer` in through the API and returns its session's name.
async fn login(world: &FakeWorld, running: &Running, peer: &FakePeer, body: &str) -> SessionName {
    let mut client = client_as(world, peer, running.api).await;
    let response = client.login(body).await;
    assert_eq!(response.status, 200, "{}", response.text());
    SessionName::new(response.json()["session"]["name"].as_str().unwrap()).unwrap()
}

async fn logout(world: &FakeWorld, running: &Running, peer: &FakePeer) {
    let mut client = client_as(world, peer, running.api).await;
    let response = client.delete("/api/v1/session").send().await;
    assert_eq!(response.status, 204, "{}", response.text());
}

/// A proxied GET of the namespace list, retried (bounded) while the proxy's Session store has
/// not yet seen a session made a moment ago.
async fn list_namespaces(client: &mut Client) -> crate::support::Response {
    for _ in 0..200 {
        let response = client
            .get("/api/v1/namespaces")
            .header("authorization", "Bearer client-secret")
            .send()
            .await;
        if response.status != 401 {
            return response;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("the proxy never saw the session");
}

fn token_requests(world: &FakeWorld) -> usize {
    world
        .cluster
        .calls_to(Verb::Create, "serviceaccounts")
        .into_iter()
        .filter(|c| c.subresource.as_deref() == Some("token"))
        .count()
}

pub(super) fn assert_status(response: &crate::support::Response, code: u16, reason: &str) -> Value {
    assert_eq!(response.status, code, "{}", response.text());
    assert_eq!(
        response.header("content-type"),
        Some("application/json"),
        "{}",
        response.text()
    );
    let status = response.json();
    assert_eq!(status["kind"], "Status", "{status}");
    assert_eq!(status["apiVersion"], "v1", "{status}");
    assert_eq!(status["status"], "Failure", "{status}");
    assert_eq!(status["reason"], reason, "{status}");
    assert_eq!(status["code"], code, "{status}");
    status
}

fn add_bob(world: &FakeWorld) -> FakePeer {
    world.tailnet.add(
        PeerSpec::user("bob@example.com", "bob-laptop")
            .capability("tka.dev/cap/kubernetes", json!({"role": "sre"})),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_proxy_forwards_with_each_devices_session_token_and_refuses_the_rest() {
    let world = FakeWorld::new().await;
    let bob = add_bob(&world);
    let upstream = upstream().await;
    let running = start(&world, &upstream, &[]).await;
    let alice = world.alice.clone();

    // Refused: no session yet; the message says what to run, and nothing is forwarded.
    let response = fresh(&world, &bob, &running)
        .await
        .get("/api/v1/namespaces")
        .send()
        .await;
    let status = assert_status(&response, 401, "Unauthorized");
    assert_eq!(
        status["message"],
        "tka: no session on cluster prod for this device; run `tka login prod`"
    );
    assert!(upstream.seen().is_empty(), "{:?}", upstream.seen());

    // Allowed: with a session, forwarded with the session's token, not the client's.
    let alice_session = login(&world, &running, &alice, r#"{"role":"sre"}"#).await;
    let minted_before = token_requests(&world);
    let response = list_namespaces(&mut fresh(&world, &alice, &running).await).await;
    assert_eq!(response.status, 200, "{}", response.text());
    assert_eq!(response.json()["kind"], "NamespaceList");
    let seen = upstream.seen();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(seen[0].path, "/api/v1/namespaces");
    let alice_token = seen[0].authorization.clone().expect("a token is sent");
    assert!(alice_token.starts_with("Bearer "), "{alice_token}");
    assert_ne!(alice_token, "Bearer client-secret");
    assert!(running.proxy.holds_token(&alice_session));

    // The token is minted once and reused.
    for _ in 0..3 {
        let response = list_namespaces(&mut fresh(&world, &alice, &running).await).await;
        assert_eq!(response.status, 200, "{}", response.text());
    }
    assert_eq!(token_requests(&world), minted_before + 1);
    assert!(
        upstream
            .authorizations()
            .iter()
            .all(|a| a.as_deref() == Some(alice_token.as_str())),
        "{:?}",
        upstream.authorizations()
    );

    // Refused: impersonation, a browser page, a foreign Host; none reaches the upstream.
    let forwarded = upstream.seen().len();
    let response = fresh(&world, &alice, &running)
        .await
        .get("/api/v1/namespaces")
        .header("impersonate-user", "system:admin")
        .send()
        .await;
    let status = assert_status(&response, 403, "Forbidden");
    assert!(
        status["message"]
            .as_str()
            .unwrap()
            .contains("impersonation is not allowed"),
        "{status}"
    );
    for (header, value) in [
        ("impersonate-group", "system:masters"),
        ("origin", "https://evil.example.com"),
        ("sec-fetch-site", "cross-site"),
    ] {
        let response = fresh(&world, &alice, &running)
            .await
            .get("/api/v1/namespaces")
            .header(header, value)
            .send()
            .await;
        assert_status(&response, 403, "Forbidden");
    }
    let mut foreign = client_as(&world, &alice, running.proxy_addr).await;
    foreign.set_host("evil.example.com");
    let response = foreign.get("/api/v1/namespaces").send().await;
    assert_status(&response, 403, "Forbidden");
    assert_eq!(upstream.seen().len(), forwarded, "{:?}", upstream.seen());
    // Allowed again on the same connection without the offending headers.
    let response = list_namespaces(&mut fresh(&world, &alice, &running).await).await;
    assert_eq!(response.status, 200, "{}", response.text());

    // Another device with its own session gets its own token.
    login(&world, &running, &bob, r#"{"role":"sre"}"#).await;
    let response = list_namespaces(&mut fresh(&world, &bob, &running).await).await;
    assert_eq!(response.status, 200, "{}", response.text());
    let bob_token = upstream
        .seen()
        .last()
        .unwrap()
        .authorization
        .clone()
        .unwrap();
    assert_ne!(bob_token, alice_token);

    // Refused after logout, and the ended session's token is dropped.
    logout(&world, &running, &alice).await;
    eventually("the ended session's token is dropped", || async {
        (!running.proxy.holds_token(&alice_session)).then_some(())
    })
    .await;
    let response = fresh(&world, &alice, &running)
        .await
        .get("/api/v1/namespaces")
        .send()
        .await;
    assert_status(&response, 401, "Unauthorized");
    // Bob is untouched.
    let response = list_namespaces(&mut fresh(&world, &bob, &running).await).await;
    assert_eq!(response.status, 200, "{}", response.text());

    // A new login: a new session, a new token, minted again.
    let minted_before = token_requests(&world);
    let again = login(&world, &running, &alice, r#"{"role":"sre"}"#).await;
    assert_ne!(again, alice_session);
    let after_login = token_requests(&world);
    assert!(after_login > minted_before);
    let response = list_namespaces(&mut fresh(&world, &alice, &running).await).await;
    assert_eq!(response.status, 200, "{}", response.text());
    assert_eq!(token_requests(&world), after_login + 1);
    let new_token = upstream
        .seen()
        .last()
        .unwrap()
        .authorization
        .clone()
        .unwrap();
    assert_ne!(new_token, alice_token);
    assert_ne!(new_token, bob_token);

    running.stop().await;
}

/// An HTTP/1.1 connection to the proxy that can take an upgrade.
async fn raw_connection(
    stream: TcpStream,
) -> hyper::client::conn::http1::SendRequest<Empty<Bytes>> {
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(connection.with_upgrades());
    sender
}

/// Starts a proxied watch and reads its first event.
async fn watch(world: &FakeWorld, peer: &FakePeer, proxy: SocketAddr) -> Incoming {
    for _ in 0..200 {
        let mut sender = raw_connection(connect_as(world, peer, proxy).await).await;
        let request = http::Request::get("/api/v1/namespaces?watch=1")
            .header("host", "tka-prod")
            .body(Empty::new())
            .unwrap();
        let response = sender.send_request(request).await.unwrap();
        if response.status() == 401 {
            tokio::time::sleep(Duration::from_millis(25)).await;
            continue;
        }
        assert_eq!(response.status(), 200);
        let mut body = response.into_body();
        let first = tokio::time::timeout(BOUND, body.frame())
            .await
            .expect("the watch streams")
            .unwrap()
            .unwrap();
        assert!(first.is_data());
        return body;
    }
    panic!("the proxy never saw the session");
}

/// Reads `body` until it ends (cleanly or cut); panics if it still streams after `BOUND`.
async fn ends(mut body: Incoming, what: &str) {
    let drained = tokio::time::timeout(BOUND, async {
        // Bounded: the upstream sends at most 6000 events.
        for _ in 0..10_000 {
            match body.frame().await {
                Some(Ok(_)) => {}
                Some(Err(_)) | None => return,
            }
        }
    })
    .await;
    assert!(drained.is_ok(), "{what}: the stream was not closed");
}

/// Opens a proxied exec, upgraded to `protocol` (SPDY or WebSocket, as kubectl asks), and
/// checks that bytes go both ways.
async fn exec(
    world: &FakeWorld,
    peer: &FakePeer,
    proxy: SocketAddr,
    protocol: &str,
) -> TokioIo<hyper::upgrade::Upgraded> {
    let mut sender = raw_connection(connect_as(world, peer, proxy).await).await;
    let request = http::Request::post("/api/v1/namespaces/default/pods/web/exec?command=sh")
        .header("host", "tka-prod")
        .header("connection", "Upgrade")
        .header("upgrade", protocol)
        .header("x-stream-protocol-version", "v4.channel.k8s.io")
        .header("sec-websocket-protocol", "v5.channel.k8s.io")
        .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
        .header("sec-websocket-version", "13")
        .body(Empty::new())
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    assert_eq!(response.status(), 101);
    assert_eq!(response.headers()["upgrade"], protocol);
    let upgraded = hyper::upgrade::on(response).await.unwrap();
    let mut io = TokioIo::new(upgraded);
    io.write_all(b"ping").await.unwrap();
    let mut buf = [0u8; 4];
    tokio::time::timeout(BOUND, io.read_exact(&mut buf))
        .await
        .expect("the echo answers")
        .unwrap();
    assert_eq!(&buf, b"ping");
    io
}

async fn closed(mut io: TokioIo<hyper::upgrade::Upgraded>) {
    let read = tokio::time::timeout(BOUND, async {
        let mut buf = [0u8; 64];
        // Bounded: whatever is still in flight, then the end.
        for _ in 0..1000 {
            match io.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(read.is_ok(), "the upgraded connection was not closed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_and_upgrades_end_with_the_session_and_are_capped_per_device() {
    let world = FakeWorld::new().await;
    let bob = add_bob(&world);
    let upstream = upstream().await;
    // A short idle timeout: a watch must outlive it (it is a request in flight).
    let running = start(
        &world,
        &upstream,
        &[
            "--proxy-max-streams-per-device",
            "2",
            "--idle-timeout",
            "1s",
            "--header-timeout",
            "2s",
        ],
    )
    .await;
    let alice = world.alice.clone();
    login(&world, &running, &alice, r#"{"role":"sre"}"#).await;
    login(&world, &running, &bob, r#"{"role":"sre"}"#).await;

    let mut alice_watch = watch(&world, &alice, running.proxy_addr).await;
    let mut shell = exec(&world, &alice, running.proxy_addr, "SPDY/3.1").await;

    // The watch keeps streaming past the idle timeout and the header deadline an idle
    // connection gets to close: an event made 5 s after it started still arrives.
    tokio::time::sleep(Duration::from_secs(3)).await;
    tokio::time::timeout(BOUND, async {
        for _ in 0..10_000 {
            let frame = alice_watch
                .frame()
                .await
                .unwrap()
                .expect("the watch still streams");
            let text = String::from_utf8_lossy(frame.data_ref().unwrap()).into_owned();
            let last = text.rsplit("\"n\":").next().and_then(|n| {
                n.trim_end_matches(|c: char| !c.is_ascii_digit())
                    .parse::<u32>()
                    .ok()
            });
            if last.is_some_and(|n| n >= 50) {
                return;
            }
        }
    })
    .await
    .expect("the watch still streams");
    // While a connection that sends nothing is closed.
    let mut silent = connect_as(&world, &alice, running.proxy_addr).await;
    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(BOUND, silent.read(&mut buf)).await;
    assert!(
        matches!(read, Ok(Ok(0) | Err(_))),
        "an idle connection is closed: {read:?}"
    );
    shell.write_all(b"pong").await.unwrap();
    let mut buf = [0u8; 4];
    shell.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"pong");

    // Refused: a third stream of alice's; allowed: bob's.
    let response = fresh(&world, &alice, &running)
        .await
        .get("/api/v1/namespaces")
        .send()
        .await;
    let status = assert_status(&response, 429, "TooManyRequests");
    assert!(
        status["message"]
            .as_str()
            .unwrap()
            .contains("--proxy-max-streams-per-device"),
        "{status}"
    );
    let bob_watch = watch(&world, &bob, running.proxy_addr).await;
    let (_, metrics) = get(running.ops, "/metrics").await.unwrap();
    for line in [
        "tka_proxy_active_streams 3",
        "tka_proxy_requests_total{outcome=\"upgraded\"} 1",
        "tka_proxy_requests_total{outcome=\"limited\"} 1",
    ] {
        assert!(metrics.contains(line), "{line} in {metrics}");
    }

    // Logout ends alice's watch and exec; bob's watch goes on.
    logout(&world, &running, &alice).await;
    ends(alice_watch, "alice's watch after logout").await;
    closed(shell).await;
    let mut bob_watch = bob_watch;
    let frame = tokio::time::timeout(BOUND, bob_watch.frame())
        .await
        .expect("bob's watch still streams")
        .unwrap()
        .unwrap();
    assert!(frame.is_data());

    // A session revoked by the reconciler (its grant removed) ends bob's too.
    world
        .mappings
        .delete("sre", &kube::api::DeleteParams::default())
        .await
        .unwrap();
    ends(bob_watch, "bob's watch after revocation").await;

    running.stop().await;
}

/// Slow clients on the proxy listener: a device holding its share of connections open (each
/// proven counted by a served request, then left idle) is refused a further connection at
/// once, while another device's proxied request is served; closing them frees the slots.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_holding_its_share_of_proxy_connections_is_refused_more_and_starves_no_other() {
    let world = FakeWorld::new().await;
    let bob = add_bob(&world);
    let upstream = upstream().await;
    // Deadlines far beyond the test, so only the cap can turn alice away.
    let running = start(
        &world,
        &upstream,
        &[
            "--max-connections-per-peer",
            "2",
            "--header-timeout",
            "60s",
            "--idle-timeout",
            "60s",
        ],
    )
    .await;
    let alice = world.alice.clone();
    login(&world, &running, &alice, r#"{"role":"sre"}"#).await;
    login(&world, &running, &bob, r#"{"role":"sre"}"#).await;
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut client = fresh(&world, &alice, &running).await;
        let response = list_namespaces(&mut client).await;
        assert_eq!(response.status, 200, "{}", response.text());
        held.push(client);
    }
    // Refused: a third of alice's is closed at once (with a 503 if the socket takes it).
    let mut third = connect_as(&world, &alice, running.proxy_addr).await;
    let _ = third
        .write_all(b"GET /api/v1/namespaces HTTP/1.1\r\nHost: tka-prod\r\n\r\n")
        .await;
    let mut answer = Vec::new();
    let read = tokio::time::timeout(BOUND, third.read_to_end(&mut answer)).await;
    assert!(
        read.is_ok(),
        "the connection over the cap is closed at once"
    );
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 503"),
        "{answer}"
    );
    // Allowed: bob, meanwhile, is served through the proxy.
    let response = list_namespaces(&mut fresh(&world, &bob, &running).await).await;
    assert_eq!(response.status, 200, "{}", response.text());
    // Closing alice's slow connections frees her slots (asynchronously: bounded retries).
    drop(held);
    let mut served = false;
    for _ in 0..100 {
        let response = fresh(&world, &alice, &running)
            .await
            .get("/api/v1/namespaces")
            .send()
            .await;
        if response.status == 200 {
            served = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(served, "alice's freed slots were never usable again");
}

/// A request head trickled to the proxy, one header line at a time, is cut off at the header
/// deadline, and the next request is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_header_trickled_to_the_proxy_is_cut_off_at_the_header_deadline() {
    let world = FakeWorld::new().await;
    let upstream = upstream().await;
    let running = start(
        &world,
        &upstream,
        &["--header-timeout", "2s", "--idle-timeout", "1s"],
    )
    .await;
    let alice = world.alice.clone();
    login(&world, &running, &alice, r#"{"role":"sre"}"#).await;
    let mut slow = connect_as(&world, &alice, running.proxy_addr).await;
    slow.write_all(b"GET /api/v1/namespaces HTTP/1.1\r\nHost: tka-prod\r\n")
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
    // Allowed: a request sent at once is served.
    let response = list_namespaces(&mut fresh(&world, &alice, &running).await).await;
    assert_eq!(response.status, 200, "{}", response.text());
}

/// tailscaled down or not ready at accept is no verdict on the caller: 503 with `Retry-After`,
/// the connection closed so that the retry is identified anew; a stranger is still 403.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_tailscaled_cannot_identify_gets_503_and_the_retry_gets_through() {
    let world = FakeWorld::new().await;
    let upstream = upstream().await;
    let running = start(&world, &upstream, &[]).await;
    let alice = world.alice.clone();
    login(&world, &running, &alice, r#"{"role":"sre"}"#).await;
    let response = list_namespaces(&mut fresh(&world, &alice, &running).await).await;
    assert_eq!(response.status, 200, "{}", response.text());

    // A stranger (whois knows no node at its address): refused as one, no retry asked for.
    let stranger = Client::over(TcpStream::connect(running.proxy_addr).await.unwrap())
        .await
        .get("/api/v1/namespaces")
        .send()
        .await;
    assert_status(&stranger, 403, "Forbidden");
    assert_eq!(stranger.header("retry-after"), None);

    // tailscaled not ready: alice's new connection is unavailable, not forbidden.
    world.tailnet.set_daemon_ready(false);
    let response = fresh(&world, &alice, &running)
        .await
        .get("/api/v1/namespaces")
        .send()
        .await;
    let status = assert_status(&response, 503, "ServiceUnavailable");
    assert!(
        status["message"]
            .as_str()
            .is_some_and(|m| m.contains("tailscaled could not identify this connection")),
        "{status}"
    );
    assert_eq!(response.header("retry-after"), Some("2"));
    assert_eq!(response.header("connection"), Some("close"));
    let forwarded = upstream.seen().len();

    // Back: the retry, on a new connection, is forwarded.
    world.tailnet.set_daemon_ready(true);
    let response = list_namespaces(&mut fresh(&world, &alice, &running).await).await;
    assert_eq!(response.status, 200, "{}", response.text());
    assert_eq!(upstream.seen().len(), forwarded + 1);

    running.stop().await;
}

/// An API server that takes connections and never answers is a 504 within
/// `--proxy-upstream-timeout`; one that is down is a 502; each is audited as an upstream
/// failure, names the problem, and the proxy goes on serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_upstream_is_a_504_a_down_one_a_502_and_the_proxy_stays_up() {
    let world = FakeWorld::new().await;
    // Accepts connections and holds them, silent.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let silent = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            held.push(stream);
        }
    });
    let running = start_at(
        &world,
        &format!("http://{addr}"),
        &["--proxy-upstream-timeout", "1s"],
    )
    .await;
    let alice = world.alice.clone();
    login(&world, &running, &alice, r#"{"role":"sre"}"#).await;

    let response = list_namespaces(&mut fresh(&world, &alice, &running).await).await;
    let status = assert_status(&response, 504, "InternalError");
    assert!(
        status["message"]
            .as_str()
            .is_some_and(|m| m.contains("tka: the Kubernetes API server did not answer within 1s")),
        "{status}"
    );

    // Down: nothing listens at the upstream's address any more.
    silent.abort();
    let _ = silent.await;
    let response = list_namespaces(&mut fresh(&world, &alice, &running).await).await;
    let status = assert_status(&response, 502, "InternalError");
    assert!(
        status["message"].as_str().is_some_and(|m| m
            .contains("tka: the Kubernetes API server could not be reached through the tka proxy")),
        "{status}"
    );

    // Both counted as upstream failures; the server is still ready and still answers.
    let (code, metrics) = get(running.ops, "/metrics").await.unwrap();
    assert_eq!(code, 200);
    assert!(
        metrics.contains("tka_proxy_requests_total{outcome=\"upstream_failed\"} 2"),
        "{metrics}"
    );
    let (code, _) = get(running.ops, "/readyz").await.unwrap();
    assert_eq!(code, 200);
    let response = list_namespaces(&mut fresh(&world, &alice, &running).await).await;
    assert_status(&response, 502, "InternalError");

    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_ends_when_its_session_expires() {
    let world = FakeWorld::new().await;
    let upstream = upstream().await;
    let running = start(&world, &upstream, &[]).await;
    let alice = world.alice.clone();

    // Allowed while the session lasts: the watch streams.
    login(&world, &running, &alice, r#"{"role":"sre","ttl":"4s"}"#).await;
    let alice_watch = watch(&world, &alice, running.proxy_addr).await;
    // Cut once it has expired, and refused afterwards.
    ends(alice_watch, "the watch after expiry").await;
    let response = fresh(&world, &alice, &running)
        .await
        .get("/api/v1/namespaces")
        .send()
        .await;
    assert_status(&response, 401, "Unauthorized");

    running.stop().await;
}

#[tokio::test]
async fn every_proxied_request_is_audited_and_no_token_reaches_the_log() {
    use crate::logs::{Capture, audit_records, find_jwt};
    let capture = Capture::default();
    let writer = capture.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .json()
        .flatten_event(true)
        .with_writer(move || writer.clone())
        .finish();
    // The test runtime has one thread, so the server's tasks log through this subscriber too.
    let _guard = tracing::subscriber::set_default(subscriber);

    let world = FakeWorld::new().await;
    let bob = add_bob(&world);
    let upstream = upstream().await;
    let running = start(&world, &upstream, &[]).await;
    let alice = world.alice.clone();

    // Refused and recorded with the caller's identity: no session.
    let response = fresh(&world, &bob, &running)
        .await
        .get("/api/v1/namespaces")
        .send()
        .await;
    assert_status(&response, 401, "Unauthorized");
    // Allowed: forwarded with a JWT-shaped session token.
    let session = login(&world, &running, &alice, r#"{"role":"sre"}"#).await;
    let response = list_namespaces(&mut fresh(&world, &alice, &running).await).await;
    assert_eq!(response.status, 200, "{}", response.text());
    let token = upstream
        .seen()
        .last()
        .unwrap()
        .authorization
        .clone()
        .unwrap();
    assert!(find_jwt(&token).is_some(), "{token}");
    // Refused: impersonation, and CONNECT (which would make a tunnel).
    let response = fresh(&world, &alice, &running)
        .await
        .get("/api/v1/namespaces")
        .header("impersonate-user", "system:admin")
        .send()
        .await;
    assert_status(&response, 403, "Forbidden");
    let mut raw = connect_as(&world, &alice, running.proxy_addr).await;
    raw.write_all(b"CONNECT kubernetes.default.svc:443 HTTP/1.1\r\nHost: tka-prod\r\n\r\n")
        .await
        .unwrap();
    let mut head = [0u8; 12];
    raw.read_exact(&mut head).await.unwrap();
    assert_eq!(&head, b"HTTP/1.1 405");

    let wanted = |records: &[Value]| {
        let proxied: Vec<Value> = records
            .iter()
            .filter(|r| r["event"] == "proxy")
            .cloned()
            .collect();
        (proxied.len() >= 4).then_some(proxied)
    };
    let proxied = eventually("the proxy's audit records", || async {
        wanted(&audit_records(&capture.text()))
    })
    .await;
    let of = |node: &FakePeer, status: u64| {
        proxied
            .iter()
            .find(|r| r["node"] == node.stable_id.as_str() && r["status"] == status)
            .unwrap_or_else(|| panic!("no record of {status}: {proxied:#?}"))
    };
    let refused = of(&bob, 401);
    assert_eq!(refused["login"], "bob@example.com");
    assert_eq!(refused["session"], "-");
    assert_eq!(refused["path"], "/api/v1/namespaces");
    let forwarded = of(&alice, 200);
    assert_eq!(forwarded["login"], "alice@example.com");
    assert_eq!(forwarded["session"], session.as_str());
    assert_eq!(forwarded["verb"], "get");
    assert_eq!(forwarded["path"], "/api/v1/namespaces");
    assert_ne!(forwarded["jti"], "-");
    assert!(forwarded["bytes"].as_u64().unwrap() > 0, "{forwarded}");
    assert!(forwarded["duration_ms"].is_u64(), "{forwarded}");
    let impersonating = of(&alice, 403);
    assert!(
        impersonating["reason"]
            .as_str()
            .unwrap()
            .contains("impersonation"),
        "{impersonating}"
    );
    of(&alice, 405);
    assert_eq!(find_jwt(&capture.text()), None, "a token reached the log");

    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_proxy_serves_tls_with_its_certificate_files() {
    let world = FakeWorld::new().await;
    let upstream = upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let pair = rcgen::generate_simple_self_signed(vec!["tka-prod".to_owned()]).unwrap();
    let cert = dir.path().join("cert.pem");
    let key = dir.path().join("key.pem");
    std::fs::write(&cert, pair.cert.pem()).unwrap();
    std::fs::write(&key, pair.signing_key.serialize_pem()).unwrap();
    let running = start(
        &world,
        &upstream,
        &[
            "--proxy-tls-cert",
            cert.to_str().unwrap(),
            "--proxy-tls-key",
            key.to_str().unwrap(),
        ],
    )
    .await;
    let alice = world.alice.clone();
    login(&world, &running, &alice, r#"{"role":"sre"}"#).await;

    // Refused: plain HTTP gets no HTTP answer from the TLS listener.
    let mut plain = connect_as(&world, &alice, running.proxy_addr).await;
    plain
        .write_all(b"GET /api/v1/namespaces HTTP/1.1\r\nHost: tka-prod\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(BOUND, plain.read_to_end(&mut answer)).await;
    assert!(
        !answer.starts_with(b"HTTP/1.1 "),
        "{}",
        String::from_utf8_lossy(&answer)
    );
    assert!(upstream.seen().is_empty());

    // Allowed: over TLS, verified against the configured certificate, forwarded with the
    // session's token.
    let status = over_tls(&world, &running, &alice, pair.cert.der(), "tka-prod").await;
    assert_eq!(status, 200);
    let seen = upstream.seen();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert!(
        seen[0]
            .authorization
            .as_deref()
            .unwrap()
            .starts_with("Bearer ")
    );

    running.stop().await;
}

/// A proxied GET over TLS as `peer`, trusting only `cert` for `name`; its status (retried,
/// bounded, while the proxy has not yet seen a fresh session).
async fn over_tls(
    world: &FakeWorld,
    running: &Running,
    peer: &FakePeer,
    cert: &tokio_rustls::rustls::pki_types::CertificateDer<'static>,
    name: &'static str,
) -> u16 {
    use tokio_rustls::rustls;
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.clone()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let mut status = 0;
    for _ in 0..200 {
        let tcp = connect_as(world, peer, running.proxy_addr).await;
        let server_name = rustls::pki_types::ServerName::try_from(name).unwrap();
        let tls = connector.connect(server_name, tcp).await.unwrap();
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .unwrap();
        tokio::spawn(connection);
        let request = http::Request::get("/api/v1/namespaces")
            .header("host", name)
            .body(Empty::<Bytes>::new())
            .unwrap();
        let response = sender.send_request(request).await.unwrap();
        status = response.status().as_u16();
        if status != 401 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    status
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_proxy_serves_tls_with_the_nodes_tailnet_certificate() {
    let world = FakeWorld::new().await;
    let upstream = upstream().await;
    let domain = "tka-prod.example.ts.net";
    let pair = rcgen::generate_simple_self_signed(vec![domain.to_owned()]).unwrap();
    world.tailnet.set_cert_pair(
        domain,
        &format!("{}{}", pair.signing_key.serialize_pem(), pair.cert.pem()),
    );
    let running = start(&world, &upstream, &["--proxy-tls-tailnet-cert", domain]).await;
    let alice = world.alice.clone();
    login(&world, &running, &alice, r#"{"role":"sre"}"#).await;

    // Allowed: the certificate tailscaled holds, for the MagicDNS name.
    let status = over_tls(&world, &running, &alice, pair.cert.der(), domain).await;
    assert_eq!(status, 200);
    // Refused: a client that trusts another certificate does not get through.
    let other = rcgen::generate_simple_self_signed(vec![domain.to_owned()]).unwrap();
    let refused = tokio::spawn({
        let cert = other.cert.der().clone();
        let tcp = connect_as(&world, &alice, running.proxy_addr).await;
        async move {
            use tokio_rustls::rustls;
            let mut roots = rustls::RootCertStore::empty();
            roots.add(cert).unwrap();
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let config = rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(roots)
                .with_no_client_auth();
            let name = rustls::pki_types::ServerName::try_from(domain).unwrap();
            tokio_rustls::TlsConnector::from(Arc::new(config))
                .connect(name, tcp)
                .await
                .is_err()
        }
    });
    assert!(
        refused.await.unwrap(),
        "an untrusted certificate is refused"
    );
    assert_eq!(upstream.seen().len(), 1, "{:?}", upstream.seen());

    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_made_on_one_replica_streams_through_anothers_proxy_until_logout() {
    let world = FakeWorld::new().await;
    let upstream = upstream().await;
    let a = start(&world, &upstream, &[]).await;
    let b = start(&world, &upstream, &[]).await;
    let alice = world.alice.clone();

    // Refused on B before any session; allowed on B once the session is made through A.
    let response = fresh(&world, &alice, &b)
        .await
        .get("/api/v1/namespaces")
        .send()
        .await;
    assert_status(&response, 401, "Unauthorized");
    login(&world, &a, &alice, r#"{"role":"sre"}"#).await;
    let through_b = watch(&world, &alice, b.proxy_addr).await;
    let websocket = exec(&world, &alice, b.proxy_addr, "websocket").await;

    // Logout through A ends the watch and the WebSocket exec running through B.
    logout(&world, &a, &alice).await;
    ends(through_b, "the watch through B after logout through A").await;
    closed(websocket).await;

    a.stop().await;
    b.stop().await;
}

/// kubectl's first request on an empty cache is discovery, whose 401 client-go reports in fixed
/// words; so discovery (exact paths, `GET` only) from a device that holds a usable grant but no
/// session is forwarded with the server's own Kubernetes client (here FakeCluster, not the
/// proxy's upstream). A device with no grant gets the 401 for discovery too, and no other
/// request is ever forwarded without a session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovery_without_a_session_is_forwarded_only_for_a_granted_device() {
    let world = FakeWorld::new().await;
    let stranger = world
        .tailnet
        .add(PeerSpec::user("mallory@example.com", "mallory-laptop"));
    let upstream = upstream().await;
    let running = start(&world, &upstream, &[]).await;
    let alice = world.alice.clone();
    let no_session = "tka: no session on cluster prod for this device; run `tka login prod`";

    for path in [
        "/api",
        "/api/v1",
        "/apis",
        "/apis/apps",
        "/apis/apps/v1",
        "/version",
        "/openapi/v2",
        "/openapi/v3",
        "/openapi/v3/apis/apps/v1",
    ] {
        // Allowed: alice holds `sre` by policy and has no session.
        let response = fresh(&world, &alice, &running).await.get(path).send().await;
        assert_ne!(response.status, 401, "{path}: {}", response.text());
        assert!(!response.text().contains("tka login"), "{path}");
        // Refused: the stranger holds no grant.
        let response = fresh(&world, &stranger, &running)
            .await
            .get(path)
            .send()
            .await;
        let status = assert_status(&response, 401, "Unauthorized");
        assert_eq!(status["message"], no_session, "{path}");
    }
    // Never forwarded without a session: anything but exactly a discovery path, or not a GET.
    for path in [
        "/api/v1/namespaces",
        "/apis/apps/v1/deployments",
        "/api/v1/",
        "/apis/apps/v1/namespaces/default/deployments",
        "/api/v1/namespaces/default/pods/echo/exec",
    ] {
        let response = fresh(&world, &alice, &running).await.get(path).send().await;
        let status = assert_status(&response, 401, "Unauthorized");
        assert_eq!(status["message"], no_session, "{path}");
    }
    let response = fresh(&world, &alice, &running)
        .await
        .post("/api")
        .send()
        .await;
    assert_status(&response, 401, "Unauthorized");
    // A path that could leave the upstream's prefix is refused before anything else, discovery
    // included.
    for path in ["/api/v1%2Fnamespaces", "/apis/..", "/apis/%2e%2e/v1"] {
        let response = fresh(&world, &alice, &running).await.get(path).send().await;
        assert_status(&response, 400, "BadRequest");
    }
    // None of it reached the proxy's upstream.
    assert!(upstream.seen().is_empty(), "{:?}", upstream.seen());

    // With a session, discovery goes upstream with the session's token like every request.
    login(&world, &running, &alice, r#"{"role":"sre"}"#).await;
    let response = list_namespaces(&mut fresh(&world, &alice, &running).await).await;
    assert_eq!(response.status, 200, "{}", response.text());
    running.stop().await;
}

/// A request with the session's token and the headers a client could forge.
fn forging(client: &mut Client) -> crate::support::RequestBuilder<'_> {
    [
        ("x-forwarded-for", "10.9.9.9"),
        ("x-forwarded-for", "10.8.8.8"),
        ("x-forwarded-host", "kubernetes.default.svc"),
        ("x-forwarded-proto", "https"),
        ("x-forwarded-prefix", "/k8s/clusters/other"),
        (
            "forwarded",
            "for=10.9.9.9;host=kubernetes.default.svc;proto=https",
        ),
        ("x-real-ip", "10.9.9.9"),
        ("x-remote-user", "system:admin"),
        ("x-remote-group", "system:masters"),
        ("x-remote-extra-scopes", "cluster-admin"),
        ("cookie", "session=stolen"),
        ("accept", "application/json;as=Table;v=v1;g=meta.k8s.io"),
        ("x-trace-id", "7"),
    ]
    .into_iter()
    .fold(
        client
            .get("/api/v1/namespaces")
            .header("authorization", "Bearer client-secret"),
        |request, (name, value)| request.header(name, value),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_forwarding_and_identity_headers_never_reach_the_upstream() {
    let world = FakeWorld::new().await;
    let upstream = upstream().await;
    let running = start(&world, &upstream, &[]).await;
    let alice = world.alice.clone();
    login(&world, &running, &alice, r#"{"role":"sre"}"#).await;
    let response = list_namespaces(&mut fresh(&world, &alice, &running).await).await;
    assert_eq!(response.status, 200, "{}", response.text());

    let response = forging(&mut fresh(&world, &alice, &running).await)
        .send()
        .await;
    assert_eq!(response.status, 200, "{}", response.text());
    let seen = upstream.seen();
    assert_eq!(seen.len(), 2, "{seen:?}");
    let headers = &seen[1].headers;
    // Withheld: every forwarding header, the front-proxy identity headers and the cookie.
    for name in [
        "x-forwarded-host",
        "x-forwarded-proto",
        "x-forwarded-prefix",
        "forwarded",
        "x-real-ip",
        "x-remote-user",
        "x-remote-group",
        "x-remote-extra-scopes",
        "cookie",
    ] {
        assert!(headers.get(name).is_none(), "{name} reached the upstream");
    }
    // X-Forwarded-For names the device's tailnet address (the connection itself comes from
    // 127.0.0.1), once; the token is the session's.
    let source = alice.addresses()[0].to_string();
    let forwarded_for: Vec<_> = headers.get_all("x-forwarded-for").iter().collect();
    assert_eq!(forwarded_for, [source.as_str()], "{headers:?}");
    assert_eq!(
        seen[1].authorization, seen[0].authorization,
        "the session's token"
    );
    assert_eq!(seen[0].headers["x-forwarded-for"], source.as_str());
    // Allowed: the client's other end-to-end headers pass as they are.
    assert_eq!(
        headers["accept"],
        "application/json;as=Table;v=v1;g=meta.k8s.io"
    );
    assert_eq!(headers["x-trace-id"], "7");

    running.stop().await;
}

/// The proxy's audit records in `capture`, once at least `count` are there.
async fn proxy_records(capture: &crate::logs::Capture, count: usize) -> Vec<Value> {
    eventually("the proxy's audit records", || async {
        let proxied: Vec<Value> = crate::logs::audit_records(&capture.text())
            .into_iter()
            .filter(|r| r["event"] == "proxy")
            .collect();
        (proxied.len() >= count).then_some(proxied)
    })
    .await
}

/// The first proxy audit record in `capture` that `wanted` picks, once it is there.
async fn proxy_record(
    capture: &crate::logs::Capture,
    what: &str,
    wanted: impl Fn(&Value) -> bool,
) -> Value {
    eventually(what, || async {
        crate::logs::audit_records(&capture.text())
            .into_iter()
            .find(|r| r["event"] == "proxy" && wanted(r))
    })
    .await
}

/// A JSON log of every level into a capture, for this (one-threaded) test's tasks, the
/// server's included.
fn capture_logs() -> (crate::logs::Capture, tracing::subscriber::DefaultGuard) {
    let capture = crate::logs::Capture::default();
    let writer = capture.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .json()
        .flatten_event(true)
        .with_writer(move || writer.clone())
        .finish();
    (capture, tracing::subscriber::set_default(subscriber))
}

/// The upstream URL may carry a path prefix (a cluster behind a multi-cluster gateway): it is
/// kept exactly, and no request path may climb out of it.
#[tokio::test]
async fn paths_that_could_leave_the_upstream_prefix_are_refused_and_audited() {
    let (capture, _guard) = capture_logs();
    let world = FakeWorld::new().await;
    let upstream = upstream().await;
    let url = format!("http://{}/k8s/clusters/c-1/", upstream.addr);
    let running = start_at(&world, &url, &[]).await;
    let alice = world.alice.clone();
    login(&world, &running, &alice, r#"{"role":"sre"}"#).await;

    // Allowed: a plain path (and a name with dots in it) under the prefix.
    let response = list_namespaces(&mut fresh(&world, &alice, &running).await).await;
    assert_eq!(response.status, 200, "{}", response.text());
    let response = fresh(&world, &alice, &running)
        .await
        .get("/api/v1/namespaces/a.b/configmaps/..x?watch=0")
        .send()
        .await;
    assert_eq!(response.status, 200, "{}", response.text());
    let paths: Vec<String> = upstream.seen().into_iter().map(|s| s.path).collect();
    assert_eq!(
        paths,
        [
            "/k8s/clusters/c-1/api/v1/namespaces",
            "/k8s/clusters/c-1/api/v1/namespaces/a.b/configmaps/..x"
        ]
    );

    // Refused: dot segments raw or percent-encoded in any case, encoded slashes in a segment.
    let escapes = [
        "/../../c-2/api/v1/secrets",
        "/api/v1/../../../c-2/api/v1/secrets",
        "/api/./v1/namespaces",
        "/%2e%2e/c-2/api/v1/secrets",
        "/%2E%2e/c-2/api/v1/secrets",
        "/.%2e/c-2/api/v1/secrets",
        "/%2E./c-2/api/v1/secrets",
        "/api/%2e/v1/namespaces",
        "/%252e%252e/c-2/api/v1/secrets",
        "/api/..%2f..%2f..%2fc-2/api/v1/secrets",
        "/api/v1%2Fnamespaces",
        "/api/v1/%5c..%5c..%5cc-2",
    ];
    for path in escapes {
        let response = fresh(&world, &alice, &running).await.get(path).send().await;
        let status = assert_status(&response, 400, "BadRequest");
        assert!(
            status["message"]
                .as_str()
                .unwrap()
                .contains("the request path cannot be forwarded"),
            "{path}: {status}"
        );
    }
    assert_eq!(upstream.seen().len(), 2, "{:?}", upstream.seen());

    // Each refusal is audited as one, with the path as sent.
    let records = proxy_records(&capture, 2 + escapes.len()).await;
    for path in escapes {
        let record = records
            .iter()
            .find(|r| r["path"] == path)
            .unwrap_or_else(|| panic!("no record of {path}: {records:#?}"));
        assert_eq!(record["status"], 400, "{record}");
        assert_eq!(record["login"], "alice@example.com", "{record}");
        assert_eq!(record["bytes"], 0, "{record}");
        assert!(
            record["reason"]
                .as_str()
                .unwrap()
                .contains("cannot be forwarded"),
            "{record}"
        );
    }
    let (_, metrics) = get(running.ops, "/metrics").await.unwrap();
    let refused = format!(
        "tka_proxy_requests_total{{outcome=\"refused\"}} {}",
        escapes.len()
    );
    assert!(metrics.contains(&refused), "{refused} in {metrics}");

    running.stop().await;
}

/// An upgraded stream's audit record carries the bytes it carried both ways, whether it ends
/// because a side closes or is cut because the session ended.
#[tokio::test]
async fn an_upgraded_stream_is_audited_with_its_bytes_when_closed_or_cut() {
    let (capture, _guard) = capture_logs();
    let world = FakeWorld::new().await;
    let upstream = upstream().await;
    let running = start(&world, &upstream, &[]).await;
    let alice = world.alice.clone();
    let session = login(&world, &running, &alice, r#"{"role":"sre"}"#).await;
    let response = list_namespaces(&mut fresh(&world, &alice, &running).await).await;
    assert_eq!(response.status, 200, "{}", response.text());

    // Closed by the client: "ping" up and its echo down.
    let websocket = exec(&world, &alice, running.proxy_addr, "websocket").await;
    drop(websocket);
    let by_client = proxy_record(&capture, "the upgrade's record", |r| r["status"] == 101).await;
    assert_eq!(by_client["bytes"], 8, "{by_client}");
    assert_eq!(by_client["reason"], "-", "{by_client}");

    // Cut by logout while open: 4 + 1000 bytes each way, counted though the splice never ended.
    let mut shell = exec(&world, &alice, running.proxy_addr, "SPDY/3.1").await;
    let sent: Vec<u8> = (0..1000u32).map(|i| (i % 251) as u8).collect();
    shell.write_all(&sent).await.unwrap();
    let mut echoed = vec![0u8; sent.len()];
    tokio::time::timeout(BOUND, shell.read_exact(&mut echoed))
        .await
        .expect("the echo answers")
        .unwrap();
    assert_eq!(echoed, sent);
    logout(&world, &running, &alice).await;
    closed(shell).await;
    let cut = proxy_record(&capture, "the cut upgrade's record", |r| {
        r["status"] == 101 && r["reason"] == "the session ended"
    })
    .await;
    assert_eq!(cut["bytes"], 2008, "{cut}");
    assert_eq!(cut["session"], session.as_str(), "{cut}");
    assert_eq!(cut["verb"], "post", "{cut}");
    assert_eq!(
        cut["path"], "/api/v1/namespaces/default/pods/web/exec",
        "{cut}"
    );

    running.stop().await;
}
