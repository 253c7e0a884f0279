//! The endpoints doing their job: login, refresh, session, logout, cluster.

use serde_json::json;

use crate::support::{Client, Options, TestServer, alice, ci, identity};

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

const PROXY: &str = "http://tka-prod.example.ts.net:8443";

/// A server that runs the tka proxy; `proxy_only`: it hands no token to a laptop.
async fn proxy_server(proxy_only: bool) -> TestServer {
    TestServer::with(Options {
        proxy: Some(PROXY.to_owned()),
        proxy_only,
        ..Options::default()
    })
    .await
}

#[tokio::test]
async fn a_login_through_the_proxy_makes_the_session_and_hands_out_no_token() {
    let server = proxy_server(false).await;
    let mut client = server.client(alice()).await;
    let cluster = client.get("/api/v1/cluster").send().await.json();
    assert_eq!(cluster["cluster"]["proxy"], PROXY);
    assert_eq!(cluster["cluster"]["directTokens"], true);

    let response = client.login(r#"{"via":"proxy","ttl":"2h"}"#).await;
    assert_eq!(response.status, 200, "{}", response.text());
    let body = response.json();
    assert!(body.get("token").is_none(), "{body}");
    assert!(!response.text().contains("eyJ"), "{}", response.text());
    assert_eq!(body["via"], "proxy");
    assert_eq!(body["cluster"]["proxy"], PROXY);
    assert_eq!(body["session"]["role"], "sre");
    assert_eq!(body["ttl"], "2h");
    assert_eq!(server.issuer.issue_calls(), 1);
    // The session is there for the proxy to use.
    let session = client.get("/api/v1/session").send().await;
    assert_eq!(session.status, 200, "{}", session.text());
    assert_eq!(session.json(), body["session"]);

    // A direct login on the same server (asked for, or by default) gets its token.
    for request in [r#"{"via":"direct"}"#, "{}"] {
        let direct = client.login(request).await;
        assert_eq!(direct.status, 200, "{}", direct.text());
        let direct = direct.json();
        assert!(
            direct["token"]["token"]
                .as_str()
                .unwrap()
                .starts_with("eyJ")
        );
        assert_eq!(direct["via"], "direct");
    }
    // And the token endpoint serves a server that is not proxy-only.
    let token = client.post("/api/v1/token").json("{}").send().await;
    assert_eq!(token.status, 200, "{}", token.text());
}

#[tokio::test]
async fn a_proxy_only_server_never_hands_a_token_to_a_laptop() {
    let server = proxy_server(true).await;
    let mut client = server.client(alice()).await;
    let cluster = client.get("/api/v1/cluster").send().await.json();
    assert_eq!(cluster["cluster"]["proxy"], PROXY);
    assert_eq!(cluster["cluster"]["directTokens"], false);

    // Refused: a direct login, before policy or the issuer is asked...
    let direct = client.login(r#"{"via":"direct"}"#).await;
    assert_eq!(direct.problem_code(403), "proxyOnly");
    assert!(
        direct.json()["detail"]
            .as_str()
            .unwrap()
            .contains("run `tka login prod`"),
        "{}",
        direct.text()
    );
    assert_eq!(server.issuer.issue_calls(), 0);
    // ...and a token, with or without a session.
    let token = client.post("/api/v1/token").json("{}").send().await;
    assert_eq!(token.problem_code(403), "proxyOnly");

    // Allowed: a login through the proxy, asked for or by default, with no token.
    for request in [r#"{"via":"proxy"}"#, "{}"] {
        let response = client.login(request).await;
        assert_eq!(response.status, 200, "{}", response.text());
        let body = response.json();
        assert!(body.get("token").is_none(), "{body}");
        assert_eq!(body["via"], "proxy");
        assert_eq!(body["cluster"]["directTokens"], false);
    }
    assert_eq!(server.issuer.issue_calls(), 2);
    assert_eq!(
        client.get("/api/v1/session").send().await.status,
        200,
        "the proxy login made a session"
    );
    let token = client.post("/api/v1/token").json("{}").send().await;
    assert_eq!(token.problem_code(403), "proxyOnly");
}

/// The proxy mints through the sessions service's own token path, which a proxy-only server
/// keeps open: only the handing out to the caller (`POST /api/v1/token`) is refused.
#[tokio::test]
async fn a_proxy_only_server_still_mints_for_its_proxy() {
    let server = proxy_server(true).await;
    let mut client = server.client(alice()).await;
    assert_eq!(client.login("{}").await.status, 200);
    let caller = tka_server::Caller {
        identity: std::sync::Arc::new(alice()),
        peer: tka_server::Peer::direct("127.0.0.1:40000".parse().unwrap()),
    };
    let sessions = tka_server::Sessions::new(&server.state);
    let minted = sessions.token(&caller).await.unwrap();
    assert!(minted.token.token.expose().starts_with("eyJ"));
    assert_eq!(minted.session.role.as_str(), "sre");
    let refused = sessions.token_for_caller(&caller).await.unwrap_err();
    assert!(
        matches!(
            refused,
            tka_server::sessions::SessionError::ProxyOnly { .. }
        ),
        "{refused:?}"
    );
}

#[tokio::test]
async fn a_proxy_login_to_a_server_without_a_proxy_is_refused() {
    let server = TestServer::start().await;
    let mut client = server.client(alice()).await;
    let cluster = client.get("/api/v1/cluster").send().await.json();
    assert!(cluster["cluster"].get("proxy").is_none());
    assert_eq!(cluster["cluster"]["directTokens"], true);

    let refused = client.login(r#"{"via":"proxy"}"#).await;
    assert_eq!(refused.problem_code(409), "noProxy");
    assert_eq!(server.issuer.issue_calls(), 0);
    assert_eq!(
        client.get("/api/v1/session").send().await.problem_code(404),
        "noSession"
    );

    let direct = client.login(r#"{"via":"direct"}"#).await;
    assert_eq!(direct.status, 200, "{}", direct.text());
    assert!(direct.json()["token"]["token"].is_string());
    assert_eq!(server.issuer.issue_calls(), 1);
    // A value that is not a way is a malformed request.
    assert_eq!(
        client.login(r#"{"via":"tunnel"}"#).await.problem_code(400),
        "badRequest"
    );
}

/// `POST /api/v1/login` with `Accept: application/yaml` and `via`: the kubeconfig, and its text.
async fn yaml_login(client: &mut Client, via: &str) -> (serde_json::Value, String) {
    let response = client
        .post("/api/v1/login")
        .header("accept", "application/yaml")
        .json(&format!(r#"{{"via":"{via}"}}"#))
        .send()
        .await;
    assert_eq!(response.status, 200, "{}", response.text());
    assert_eq!(response.header("content-type"), Some("application/yaml"));
    (
        serde_yaml::from_slice(&response.body).unwrap(),
        response.text(),
    )
}

#[tokio::test]
async fn a_proxy_login_as_yaml_is_a_kubeconfig_with_no_credential() {
    let server = proxy_server(false).await;
    let mut client = server.client(alice()).await;
    let (proxied, text) = yaml_login(&mut client, "proxy").await;
    let cluster = &proxied["clusters"][0]["cluster"];
    assert_eq!(cluster["server"], PROXY);
    assert!(cluster.get("certificate-authority-data").is_none());
    let user = proxied["users"][0]["user"].as_object().unwrap();
    assert!(
        user.get("token").is_none() && user.get("exec").is_none(),
        "{text}"
    );
    assert!(!text.contains("eyJ"), "{text}");
    assert_eq!(proxied["contexts"][0]["context"]["user"], "tka-prod");
    assert_eq!(proxied["current-context"], "tka-prod");

    // Direct on the same server: the API server, its CA and the token.
    let (direct, _) = yaml_login(&mut client, "direct").await;
    let cluster = &direct["clusters"][0]["cluster"];
    assert_eq!(cluster["server"], "https://10.0.0.1:6443");
    assert_eq!(cluster["certificate-authority-data"], "Q0EK");
    assert!(
        direct["users"][0]["user"]["token"]
            .as_str()
            .unwrap()
            .starts_with("eyJ")
    );
}
