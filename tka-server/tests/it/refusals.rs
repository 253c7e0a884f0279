//! Requests that must be refused before any credential exists: each one gets its documented
//! status and problem code, the issuer sees no `issue` call, and each is paired with the same
//! request allowed.

use serde_json::json;

use crate::support::{SELF_NODE, TestServer, alice, identity};

/// Sends a login as `caller` and returns its problem code; checks the issuer was not asked.
async fn refused_login(
    server: &TestServer,
    caller: tka_core::Identity,
    body: &str,
    status: u16,
) -> String {
    let before = server.issuer.issue_calls();
    let mut client = server.client(caller).await;
    let code = client.login(body).await.problem_code(status);
    assert_eq!(
        server.issuer.issue_calls(),
        before,
        "the issuer was called for {code}"
    );
    code
}

async fn allowed_login(server: &TestServer, caller: tka_core::Identity, body: &str) {
    let before = server.issuer.issue_calls();
    let mut client = server.client(caller).await;
    let response = client.login(body).await;
    assert_eq!(response.status, 200, "{}", response.text());
    assert_eq!(server.issuer.issue_calls(), before + 1);
}

#[tokio::test]
async fn a_caller_unknown_to_whois_is_refused() {
    let server = TestServer::start().await;
    let mut stranger = server.stranger().await;
    let response = stranger.login("{}").await;
    assert_eq!(response.problem_code(403), "unknownCaller");
    assert_eq!(server.issuer.issue_calls(), 0);
    allowed_login(&server, alice(), "{}").await;
}

#[tokio::test]
async fn the_servers_own_node_is_refused() {
    let server = TestServer::start().await;
    let own = identity(
        SELF_NODE,
        "tagged-devices",
        &["tag:tka"],
        json!([{"role": "sre"}]),
    );
    assert_eq!(refused_login(&server, own, "{}", 403).await, "selfNode");
    allowed_login(&server, alice(), "{}").await;
}

#[tokio::test]
async fn a_node_without_the_capability_is_refused() {
    let server = TestServer::start().await;
    let bare = identity("nBARE", "carol@example.com", &[], json!([]));
    let code = refused_login(&server, bare, "{}", 403).await;
    assert_eq!(code, "noGrants");
    allowed_login(&server, alice(), "{}").await;
}

#[tokio::test]
async fn a_capability_for_an_unmapped_role_is_refused() {
    let server = TestServer::start().await;
    let ghost = identity(
        "nGHOST",
        "dave@example.com",
        &[],
        json!([{"role": "ghost"}, {"role": "sre"}]),
    );
    assert_eq!(
        refused_login(&server, ghost.clone(), r#"{"role":"ghost"}"#, 403).await,
        "noMapping"
    );
    let only_ghost = identity(
        "nGHOST2",
        "dave@example.com",
        &[],
        json!([{"role": "ghost"}]),
    );
    assert_eq!(
        refused_login(&server, only_ghost, "{}", 403).await,
        "noUsableRole"
    );
    allowed_login(&server, ghost, r#"{"role":"sre"}"#).await;
}

#[tokio::test]
async fn a_role_not_granted_is_refused_with_the_grants_held() {
    let server = TestServer::start().await;
    let before = server.issuer.issue_calls();
    let mut client = server.client(alice()).await;
    let response = client.login(r#"{"role":"danger"}"#).await;
    assert_eq!(response.problem_code(403), "noGrantForRole");
    let problem = response.json();
    assert!(problem["detail"].as_str().unwrap().contains("'danger'"));
    assert_eq!(problem["roles"]["roles"][0]["role"], "sre");
    assert_eq!(server.issuer.issue_calls(), before);
    allowed_login(&server, alice(), r#"{"role":"sre"}"#).await;
}

#[tokio::test]
async fn subjects_that_do_not_match_are_refused() {
    let server = TestServer::start().await;
    let alice_admin = identity(
        "nALICE",
        "alice@example.com",
        &[],
        json!([{"role": "admin"}]),
    );
    assert_eq!(
        refused_login(&server, alice_admin, r#"{"role":"admin"}"#, 403).await,
        "subjectsDoNotMatch"
    );
    let bob = identity("nBOB", "bob@example.com", &[], json!([{"role": "admin"}]));
    allowed_login(&server, bob, r#"{"role":"admin"}"#).await;
}

#[tokio::test]
async fn a_mapping_into_a_forbidden_namespace_is_refused() {
    let server = TestServer::start().await;
    let caller = identity(
        "nEVE",
        "eve@example.com",
        &[],
        json!([{"role": "danger"}, {"role": "sre"}]),
    );
    assert_eq!(
        refused_login(&server, caller.clone(), r#"{"role":"danger"}"#, 403).await,
        "forbiddenNamespace"
    );
    allowed_login(&server, caller, r#"{"role":"sre"}"#).await;
}

#[tokio::test]
async fn bad_ttls_are_bad_requests() {
    let server = TestServer::start().await;
    for ttl in ["0s", "-1h", "abc"] {
        let body = format!(r#"{{"ttl":"{ttl}"}}"#);
        let code = refused_login(&server, alice(), &body, 400).await;
        assert_eq!(code, "invalidTtl", "{ttl}");
    }
    allowed_login(&server, alice(), r#"{"ttl":"90m"}"#).await;
}

#[tokio::test]
async fn a_malformed_role_name_is_a_bad_request() {
    let server = TestServer::start().await;
    assert_eq!(
        refused_login(&server, alice(), r#"{"role":"Not A Role"}"#, 400).await,
        "badRequest"
    );
    allowed_login(&server, alice(), r#"{"role":"sre"}"#).await;
}

#[tokio::test]
async fn malformed_bodies_are_bad_requests() {
    let server = TestServer::start().await;
    for body in [
        "{",
        "not json",
        r#"{"ttl": 5}"#,
        r#"{"role": ["sre"]}"#,
        r#"{"rol": "sre"}"#,
        "[]",
        "",
        "   ",
    ] {
        let code = refused_login(&server, alice(), body, 400).await;
        assert_eq!(code, "badRequest", "{body:?}");
    }
    allowed_login(&server, alice(), "{}").await;
}

#[tokio::test]
async fn token_takes_only_an_empty_object() {
    let server = TestServer::start().await;
    let mut client = server.client(alice()).await;
    client.login("{}").await;
    let response = client
        .post("/api/v1/token")
        .json(r#"{"role":"x"}"#)
        .send()
        .await;
    assert_eq!(response.problem_code(400), "badRequest");
    let response = client.post("/api/v1/token").json("").send().await;
    assert_eq!(response.problem_code(400), "badRequest");
    assert_eq!(
        client.post("/api/v1/token").json("{}").send().await.status,
        200
    );
}

#[tokio::test]
async fn a_body_over_the_cap_is_refused() {
    let server = TestServer::start().await;
    let padding = " ".repeat(2000);
    let body = format!("{{{padding}}}");
    let code = refused_login(&server, alice(), &body, 413).await;
    assert_eq!(code, "bodyTooLarge");
    let fits = format!("{{{}}}", " ".repeat(500));
    allowed_login(&server, alice(), &fits).await;
}

/// A body sent in chunks, with no Content-Length.
struct Chunked(Vec<hyper::body::Bytes>);

impl hyper::body::Body for Chunked {
    type Data = hyper::body::Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        std::task::Poll::Ready(
            self.0
                .pop()
                .map(|chunk| Ok(hyper::body::Frame::data(chunk))),
        )
    }
}

async fn chunked_login(server: &TestServer, chunks: usize) -> u16 {
    let stream = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    server.tailnet.insert(stream.local_addr().unwrap(), alice());
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(connection);
    let mut body = vec![hyper::body::Bytes::from_static(b"}")];
    body.extend((0..chunks).map(|_| hyper::body::Bytes::from(" ".repeat(300))));
    body.push(hyper::body::Bytes::from_static(b"{"));
    let request = http::Request::post("/api/v1/login")
        .header("host", crate::support::HOST)
        .header("content-type", "application/json")
        .body(Chunked(body))
        .unwrap();
    sender
        .send_request(request)
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test]
async fn a_body_over_the_cap_without_a_length_is_refused() {
    // A chunked body declares no Content-Length; the cap applies while reading.
    let server = TestServer::start().await;
    assert_eq!(chunked_login(&server, 8).await, 413);
    assert_eq!(server.issuer.issue_calls(), 0);
    assert_eq!(chunked_login(&server, 2).await, 200);
}

#[tokio::test]
async fn a_missing_or_wrong_content_type_is_refused() {
    let server = TestServer::start().await;
    let mut client = server.client(alice()).await;
    let response = client
        .post("/api/v1/login")
        .without_header("content-type")
        .json("{}")
        .send()
        .await;
    assert_eq!(response.problem_code(415), "unsupportedMediaType");
    let response = client
        .post("/api/v1/login")
        .without_header("content-type")
        .header("content-type", "text/plain")
        .json("{}")
        .send()
        .await;
    assert_eq!(response.problem_code(415), "unsupportedMediaType");
    assert_eq!(server.issuer.issue_calls(), 0);
    let response = client
        .post("/api/v1/login")
        .without_header("content-type")
        .header("content-type", "application/json; charset=utf-8")
        .json("{}")
        .send()
        .await;
    assert_eq!(response.status, 200);
}
