//! The ops listener: liveness, readiness driven by its checks, Prometheus metrics without user
//! data.

use std::sync::atomic::Ordering;

use crate::support::{TestServer, alice};

#[tokio::test]
async fn healthz_and_readyz_follow_the_checks() {
    let server = TestServer::start().await;
    let mut ops = server.ops_client().await;
    assert_eq!(ops.get("/healthz").send().await.status, 200);
    let ready = ops.get("/readyz").send().await;
    assert_eq!(ready.status, 200, "{}", ready.text());

    server.readiness.ok.store(false, Ordering::SeqCst);
    let not_ready = ops.get("/readyz").send().await;
    assert_eq!(not_ready.status, 503);
    assert!(not_ready.text().contains("kubernetes: not answering"));
    assert_eq!(ops.get("/healthz").send().await.status, 200, "still alive");
}

#[tokio::test]
async fn metrics_count_logins_and_read_sessions_from_the_store() {
    let server = TestServer::start().await;
    let mut client = server.client(alice()).await;
    client.login("{}").await;
    client.login(r#"{"role":"danger"}"#).await;
    client.post("/api/v1/token").json("{}").send().await;
    let mut stranger = server.stranger().await;
    stranger.login("{}").await;

    let mut ops = server.ops_client().await;
    let response = ops.get("/metrics").send().await;
    assert_eq!(response.status, 200);
    assert!(
        response
            .header("content-type")
            .unwrap()
            .starts_with("text/plain")
    );
    let text = response.text();
    for line in [
        "tka_logins_total{outcome=\"issued\"} 1",
        "tka_logins_total{outcome=\"denied\"} 1",
        "tka_tokens_minted_total 2",
        "tka_requests_refused_total{code=\"unknownCaller\"} 1",
        "tka_active_sessions 1",
        "tka_whois_duration_seconds_count 4",
    ] {
        assert!(text.contains(line), "missing {line:?} in\n{text}");
    }
    assert!(!text.contains("alice"), "no user data on ops");
    assert!(!text.contains("nALICE"), "no device IDs on ops");

    client.delete("/api/v1/session").send().await;
    let text = ops.get("/metrics").send().await.text();
    assert!(text.contains("tka_active_sessions 0"), "{text}");
    assert!(
        text.contains("tka_revocations_total{cause=\"logout\"} 1"),
        "{text}"
    );
}

#[tokio::test]
async fn the_api_is_not_served_on_the_ops_listener() {
    let server = TestServer::start().await;
    let mut ops = server.ops_client().await;
    assert_eq!(
        ops.post("/api/v1/login").json("{}").send().await.status,
        404
    );
    assert_eq!(ops.get("/metrics").send().await.status, 200);
}
