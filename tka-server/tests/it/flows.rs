//! The endpoints doing their job: login, refresh, session, logout, cluster.

use serde_json::json;

use crate::support::{TestServer, alice, ci, identity};

#[tokio::test]
async fn login_returns_credentials_as_data() {
    let server = TestServer::start().await;
    let mut client = server.client(alice()).await;
    let response = client.login("{}").await;
    assert_eq!(response.status, 200, "{}", response.text());
    assert_eq!(response.header("content-type"), Some("application/json"));
    let body = response.json();
    assert_eq!(body["cluster"]["name"], "prod");
    assert_eq!(body["cluster"]["server"], "https://10.0.0.1:6443");
    assert_eq!(body["cluster"]["certificateAuthorityData"], "Q0EK");
    assert_eq!(body["session"]["role"], "sre");
    assert_eq!(body["session"]["caller"], "alice@example.com");
    assert_eq!(body["session"]["device"], "nalice.example.ts.net");
    assert_eq!(body["session"]["expiresAt"], "2026-03-01T13:00:00Z");
    assert!(body["token"]["token"].as_str().unwrap().starts_with("eyJ"));
    assert_eq!(body["token"]["expiresAt"], "2026-03-01T12:15:00Z");
    assert_eq!(body["ttl"], "1h");
    assert!(body.get("clamped").is_none());
    // Data only: nothing a client would execute.
    assert!(!response.text().contains("exec"));
    assert_eq!(server.issuer.issue_calls(), 1);
}

#[tokio::test]
async fn a_tagged_device_acts_as_its_tags() {
    let server = TestServer::start().await;
    let mut client = server.client(ci()).await;
    let body = client.login(r#"{"role":"sre","ttl":"30m"}"#).await.json();
    assert_eq!(body["session"]["caller"], "tag:ci");
    assert_eq!(body["ttl"], "30m");
}

#[tokio::test]
async fn login_as_yaml_is_a_ready_kubeconfig() {
    let server = TestServer::start().await;
    let mut client = server.client(alice()).await;
    let response = client
        .post("/api/v1/login")
        .header("accept", "application/yaml")
        .json("{}")
        .send()
        .await;
    assert_eq!(response.status, 200, "{}", response.text());
    assert_eq!(response.header("content-type"), Some("application/yaml"));
    let config: serde_json::Value = serde_yaml::from_slice(&response.body).unwrap();
    assert_eq!(config["kind"], "Config");
    assert_eq!(config["current-context"], "tka-prod");
    assert_eq!(
        config["clusters"][0]["cluster"]["server"],
        "https://10.0.0.1:6443"
    );
    assert_eq!(
        config["clusters"][0]["cluster"]["certificate-authority-data"],
        "Q0EK"
    );
    assert!(
        config["users"][0]["user"]["token"]
            .as_str()
            .unwrap()
            .starts_with("eyJ")
    );
    assert_eq!(config["contexts"][0]["context"]["user"], "tka-prod");
}

#[tokio::test]
async fn token_refreshes_within_the_session() {
    let server = TestServer::start().await;
    let mut client = server.client(alice()).await;
    let login = client.login("{}").await.json();
    let refreshed = client.post("/api/v1/token").json("{}").send().await;
    assert_eq!(refreshed.status, 200, "{}", refreshed.text());
    let body = refreshed.json();
    assert_eq!(body["session"]["name"], login["session"]["name"]);
    assert_eq!(body["session"]["expiresAt"], login["session"]["expiresAt"]);
    assert_ne!(body["token"]["token"], login["token"]["token"]);
    assert_eq!(
        server
            .issuer
            .calls
            .refresh
            .load(std::sync::atomic::Ordering::SeqCst),
        1
    );
}

#[tokio::test]
async fn token_without_a_session_is_not_found() {
    let server = TestServer::start().await;
    let mut client = server.client(alice()).await;
    let response = client.post("/api/v1/token").json("{}").send().await;
    assert_eq!(response.problem_code(404), "noSession");
    client.login("{}").await;
    let response = client.post("/api/v1/token").json("{}").send().await;
    assert_eq!(response.status, 200);
}

#[tokio::test]
async fn refresh_ends_the_session_when_the_grant_is_withdrawn() {
    let server = TestServer::start().await;
    let mut client = server.client(alice()).await;
    assert_eq!(client.login("{}").await.status, 200);

    // The tailnet admin removes the grant; the same device calls again.
    let withdrawn = identity(
        "nALICE",
        "alice@example.com",
        &[],
        json!([{"role": "read-only"}]),
    );
    let mut client = server.client(withdrawn).await;
    let response = client.post("/api/v1/token").json("{}").send().await;
    assert_eq!(response.problem_code(403), "sessionEnded");
    let detail = response.json()["detail"].as_str().unwrap().to_owned();
    assert!(
        detail.contains("'sre'"),
        "names the missing grant: {detail}"
    );
    assert_eq!(server.issuer.live_sessions(), 0, "the session was revoked");
    let after = client.get("/api/v1/session").send().await;
    assert_eq!(after.problem_code(404), "noSession");
}

#[tokio::test]
async fn refresh_ends_the_session_when_the_mapping_changes_its_bindings() {
    let server = TestServer::start().await;
    let mut client = server.client(alice()).await;
    assert_eq!(client.login("{}").await.status, 200);
    let mut mappings = crate::support::default_mappings();
    mappings[0].spec.cluster_roles = vec!["admin".into()];
    server.mappings.replace(mappings);
    let response = client.post("/api/v1/token").json("{}").send().await;
    assert_eq!(response.problem_code(403), "sessionEnded");
    assert_eq!(server.issuer.live_sessions(), 0);
}

/// The shared table of mapping changes (`tka_core::policy::cases`), through `POST
/// /api/v1/token`: the refresh keeps exactly the sessions the reconciler keeps.
#[tokio::test]
async fn refresh_keeps_exactly_the_sessions_the_table_keeps() {
    use tka_core::policy::cases::{CASE_ROLE, case_mapping_at_login, grant_cases};
    for case in grant_cases() {
        let server = TestServer::start().await;
        server.mappings.replace(vec![crate::support::mapping(
            CASE_ROLE,
            case_mapping_at_login(),
        )]);
        let caller = identity(
            "nALICE",
            "alice@example.com",
            &[],
            json!([{ "role": CASE_ROLE }]),
        );
        let mut client = server.client(caller).await;
        let login = client.login("{}").await;
        assert_eq!(login.status, 200, "{}: {}", case.name, login.text());

        server.mappings.replace(case.views());
        let response = client.post("/api/v1/token").json("{}").send().await;
        if case.holds {
            assert_eq!(response.status, 200, "{}: {}", case.name, response.text());
            assert_eq!(server.issuer.live_sessions(), 1, "{}", case.name);
        } else {
            assert_eq!(
                response.problem_code(403),
                "sessionEnded",
                "{}: {}",
                case.name,
                response.text()
            );
            assert_eq!(
                server.issuer.live_sessions(),
                0,
                "{}: not revoked",
                case.name
            );
        }
    }
}

/// While the session's mapping cannot be checked yet (the ClusterRoles are not listed, the
/// bindability not asked), a refresh gets no token and the session is not revoked; once it is
/// checked the refresh works again.
#[tokio::test]
async fn refresh_neither_mints_nor_revokes_while_the_mapping_is_unchecked() {
    let server = TestServer::start().await;
    let mut client = server.client(alice()).await;
    assert_eq!(client.login("{}").await.status, 200);
    let mut mappings = crate::support::default_mappings();
    mappings[0] = mappings[0]
        .clone()
        .with_state(tka_core::policy::MappingState::Unchecked(
            "tka-server has not listed the cluster's ClusterRoles yet; try again shortly".into(),
        ));
    server.mappings.replace(mappings);
    let response = client.post("/api/v1/token").json("{}").send().await;
    assert_eq!(response.problem_code(503), "clusterUnavailable");
    assert!(response.header("retry-after").is_some());
    assert_eq!(server.issuer.live_sessions(), 1, "the session was kept");
    server.mappings.replace(crate::support::default_mappings());
    let response = client.post("/api/v1/token").json("{}").send().await;
    assert_eq!(response.status, 200, "{}", response.text());
}

#[tokio::test]
async fn an_expired_session_is_reported_as_such() {
    let server = TestServer::start().await;
    let mut client = server.client(alice()).await;
    assert_eq!(client.login(r#"{"ttl":"10m"}"#).await.status, 200);
    assert_eq!(
        client.post("/api/v1/token").json("{}").send().await.status,
        200
    );
    server.clock.advance(jiff::SignedDuration::from_mins(11));
    let response = client.post("/api/v1/token").json("{}").send().await;
    assert_eq!(response.problem_code(404), "sessionExpired");
    assert_eq!(
        client.get("/api/v1/session").send().await.problem_code(404),
        "noSession"
    );
}

#[tokio::test]
async fn session_is_shown_and_logout_is_idempotent() {
    let server = TestServer::start().await;
    let mut client = server.client(alice()).await;
    assert_eq!(
        client.get("/api/v1/session").send().await.problem_code(404),
        "noSession"
    );
    let login = client.login("{}").await.json();
    let session = client.get("/api/v1/session").send().await;
    assert_eq!(session.status, 200);
    assert_eq!(session.json(), login["session"]);

    for _ in 0..2 {
        let logout = client.delete("/api/v1/session").send().await;
        assert_eq!(logout.status, 204, "{}", logout.text());
        assert!(logout.body.is_empty());
    }
    assert_eq!(
        client.get("/api/v1/session").send().await.problem_code(404),
        "noSession"
    );
    assert_eq!(
        server
            .issuer
            .calls
            .revoke
            .load(std::sync::atomic::Ordering::SeqCst),
        2
    );
}

#[tokio::test]
async fn cluster_lists_the_roles_this_caller_could_get() {
    let server = TestServer::start().await;
    let caller = identity(
        "nALICE",
        "alice@example.com",
        &[],
        json!([{"role": "sre", "priority": 5}, {"role": "admin"}, {"role": "sre", "cluster": "typo"}]),
    );
    let mut client = server.client(caller).await;
    let response = client.get("/api/v1/cluster").send().await;
    assert_eq!(response.status, 200, "{}", response.text());
    let body = response.json();
    assert_eq!(body["cluster"]["name"], "prod");
    assert_eq!(body["caller"], "alice@example.com (nalice.example.ts.net)");
    assert_eq!(body["roles"]["roles"][0]["role"], "sre");
    assert_eq!(body["roles"]["roles"][0]["default"], true);
    assert_eq!(body["roles"]["unavailable"][0]["role"], "admin");
    assert_eq!(
        body["roles"]["unavailable"][0]["problem"]["kind"],
        "subjectsDoNotMatch"
    );
    assert_eq!(body["roles"]["skipped"][0]["index"], 2);
    assert!(body.get("session").is_none());

    client.login("{}").await;
    let body = client.get("/api/v1/cluster").send().await.json();
    assert_eq!(body["session"]["role"], "sre");
    assert_eq!(server.issuer.issue_calls(), 1);
}

#[tokio::test]
async fn a_long_ttl_is_clamped_and_reported() {
    let server = TestServer::start().await;
    let mut client = server.client(alice()).await;
    let response = client.login(r#"{"ttl":"100000h"}"#).await;
    assert_eq!(response.status, 200, "{}", response.text());
    let body = response.json();
    assert_eq!(body["ttl"], "8h");
    assert_eq!(body["clamped"]["granted"], "8h");
    assert!(
        body["clamped"]["bound"]
            .as_str()
            .unwrap()
            .contains("maxTTL")
    );
    assert_eq!(body["session"]["expiresAt"], "2026-03-01T20:00:00Z");

    let short = client.login(r#"{"ttl":"2h"}"#).await.json();
    assert_eq!(short["ttl"], "2h");
    assert!(short.get("clamped").is_none());
}
