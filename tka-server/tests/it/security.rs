//! The checks every API request passes: browser requests, foreign Hosts, the per-device rate
//! limit, request IDs, unknown paths. Each refusal is paired with the request allowed.

use tka_server::ratelimit::RateLimitConfig;

use crate::support::{Options, TestServer, alice, ci};

#[tokio::test]
async fn an_origin_header_is_refused() {
    let server = TestServer::start().await;
    let mut client = server.client(alice()).await;
    let response = client
        .post("/api/v1/login")
        .header("origin", "https://evil.example.com")
        .json("{}")
        .send()
        .await;
    assert_eq!(response.problem_code(403), "originRefused");
    let response = client
        .get("/api/v1/session")
        .header("origin", "null")
        .send()
        .await;
    assert_eq!(response.problem_code(403), "originRefused");
    assert_eq!(server.issuer.issue_calls(), 0);
    assert_eq!(
        server.tailnet.lookup_count(),
        1,
        "refused before asking tailscaled about the request (the one whois is the connection's, at accept)"
    );
    assert_eq!(client.login("{}").await.status, 200);
}

#[tokio::test]
async fn a_foreign_host_is_refused() {
    let server = TestServer::start().await;
    let mut client = server.client(alice()).await;
    for host in [
        "evil.example.com",
        "tka-prod.evil.com",
        "127.0.0.2",
        "localhost",
    ] {
        let response = client
            .post("/api/v1/login")
            .without_header("host")
            .header("host", host)
            .json("{}")
            .send()
            .await;
        assert_eq!(response.problem_code(403), "hostNotAllowed", "{host}");
    }
    assert_eq!(server.issuer.issue_calls(), 0);
    for host in ["tka-prod", "TKA-PROD.example.ts.net:80", "127.0.0.1"] {
        let response = client
            .post("/api/v1/login")
            .without_header("host")
            .header("host", host)
            .json("{}")
            .send()
            .await;
        assert_eq!(response.status, 200, "{host}: {}", response.text());
    }
}

#[tokio::test]
async fn cross_site_fetches_are_refused() {
    let server = TestServer::start().await;
    let mut client = server.client(alice()).await;
    for site in ["cross-site", "same-site"] {
        let response = client
            .post("/api/v1/login")
            .header("sec-fetch-site", site)
            .json("{}")
            .send()
            .await;
        assert_eq!(response.problem_code(403), "crossSiteRefused", "{site}");
    }
    assert_eq!(server.issuer.issue_calls(), 0);
    let response = client
        .post("/api/v1/login")
        .header("sec-fetch-site", "none")
        .json("{}")
        .send()
        .await;
    assert_eq!(response.status, 200);
}

#[tokio::test]
async fn each_device_is_rate_limited() {
    let server = TestServer::with(Options {
        rate_limit: RateLimitConfig {
            per_minute: 1.try_into().unwrap(),
            burst: 3.try_into().unwrap(),
        },
        ..Options::default()
    })
    .await;
    let mut client = server.client(alice()).await;
    for _ in 0..3 {
        assert_eq!(client.get("/api/v1/cluster").send().await.status, 200);
    }
    let limited = client.login("{}").await;
    assert_eq!(limited.problem_code(429), "rateLimited");
    let retry_after: u64 = limited.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry_after), "{retry_after}");
    assert_eq!(server.issuer.issue_calls(), 0);

    // Another device has its own budget, even on a new connection of the same machine.
    let mut other = server.client(ci()).await;
    assert_eq!(other.login("{}").await.status, 200);
    // And the limited device stays limited on a fresh connection: the key is the node.
    let mut again = server.client(alice()).await;
    assert_eq!(again.login("{}").await.status, 429);
}

#[tokio::test]
async fn request_ids_are_echoed_and_name_the_problem() {
    let server = TestServer::start().await;
    let mut client = server.client(alice()).await;
    let response = client
        .get("/api/v1/session")
        .header("x-request-id", "req-123")
        .send()
        .await;
    assert_eq!(response.header("x-request-id"), Some("req-123"));
    assert_eq!(response.json()["instance"], "req-123");

    let generated = client.get("/api/v1/cluster").send().await;
    assert_eq!(generated.status, 200);
    assert_eq!(generated.header("x-request-id").unwrap().len(), 32);

    let forged = client
        .get("/api/v1/cluster")
        .header("x-request-id", "a b\"c")
        .send()
        .await;
    assert_ne!(forged.header("x-request-id"), Some("a b\"c"));
}

#[tokio::test]
async fn unknown_paths_and_methods_are_problems() {
    let server = TestServer::start().await;
    let mut client = server.client(alice()).await;
    assert_eq!(
        client.get("/api/v1/nothing").send().await.problem_code(404),
        "notFound"
    );
    assert_eq!(
        client.get("/api/v1/login").send().await.problem_code(405),
        "methodNotAllowed"
    );
    assert_eq!(client.get("/api/v1/cluster").send().await.status, 200);
}
