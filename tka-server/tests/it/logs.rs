//! What the server writes to its log during real use: never a token (a trace-level capture of a
//! full login, refresh, kubeconfig download and logout holds nothing JWT-shaped), and one audit
//! record per issue, refresh, revoke and denial.

use std::io::Write;
use std::sync::{Arc, Mutex};

use serde_json::Value;

use crate::support::{Options, TestServer, alice};

#[derive(Clone, Default)]
pub(crate) struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Capture {
    pub(crate) fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

/// Whether `text` contains something shaped like a JWT: `eyJ[A-Za-z0-9_-]+\.`.
pub(crate) use tka_testkit::jwt::find_jwt;

#[test]
fn the_jwt_finder_finds_jwts() {
    assert!(find_jwt("token=eyJhbGciOiJSUzI1NiJ9.eyJzdWIi.sig").is_some());
    assert!(find_jwt("eyJ. eyJ eyJabc").is_none());
    // What a failure message shows instead of the token.
    assert_eq!(
        tka_testkit::jwt::redact_jwts("a token=eyJhbGciOiJSUzI1NiJ9.eyJzdWIi.sig, b eyJ."),
        "a token=[JWT], b eyJ."
    );
}

pub(crate) fn audit_records(log: &str) -> Vec<Value> {
    log.lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|record| record["target"] == "tka::audit")
        .collect()
}

#[tokio::test]
async fn no_token_reaches_the_log_and_every_action_is_audited() {
    let capture = Capture::default();
    let writer = capture.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .json()
        .flatten_event(true)
        .with_current_span(true)
        .with_span_list(true)
        .with_writer(move || writer.clone())
        .finish();
    // The test runtime has one thread, so the server's tasks log through this subscriber too.
    let _guard = tracing::subscriber::set_default(subscriber);
    // See `a_proxy_login_is_audited_as_handing_out_no_token`: keeps this subscriber consulted.
    let _second = tracing::Dispatch::new(tracing_subscriber::registry());

    let server = TestServer::start().await;
    let mut client = server.client(alice()).await;
    let login = client
        .post("/api/v1/login")
        .header("x-request-id", "login-1")
        .json(r#"{"ttl":"2h"}"#)
        .send()
        .await;
    assert_eq!(login.status, 200);
    let refreshed = client.post("/api/v1/token").json("{}").send().await;
    let yaml = client
        .post("/api/v1/login")
        .header("accept", "application/yaml")
        .json("{}")
        .send()
        .await;
    client.get("/api/v1/session").send().await;
    client.get("/api/v1/cluster").send().await;
    let denied = client.login(r#"{"role":"danger"}"#).await;
    assert_eq!(denied.status, 403);
    let logout = client.delete("/api/v1/session").send().await;
    assert_eq!(logout.status, 204);
    server.stranger().await.login("{}").await;

    // The tokens did go out, to the client...
    for body in [login.text(), refreshed.text(), yaml.text()] {
        assert!(
            find_jwt(&body).is_some(),
            "the client gets its token: {body}"
        );
    }
    // ...and nowhere into the log.
    let log = capture.text();
    assert!(
        log.contains("\"level\":\"TRACE\"") && log.lines().count() > 20,
        "trace logging was captured:\n{log}"
    );
    assert_eq!(find_jwt(&log), None, "a token reached the log");

    let records = audit_records(&log);
    let of =
        |event: &str| -> Vec<&Value> { records.iter().filter(|r| r["event"] == event).collect() };
    let issues = of("issue");
    assert_eq!(issues.len(), 2, "{records:#?}");
    let first = issues[0];
    assert_eq!(first["outcome"], "created");
    assert_eq!(first["request_id"], "login-1");
    assert_eq!(first["device"], "nALICE");
    assert_eq!(first["user"], "alice@example.com");
    assert_eq!(first["role"], "sre");
    assert_eq!(
        first["bindings"],
        "ClusterRole/view,team-a/ClusterRole/edit"
    );
    assert_eq!(first["expires_at"], "2026-03-01T14:00:00Z");
    assert_eq!(first["session"], login.json()["session"]["name"]);
    assert!(first["token_id"].as_str().unwrap().starts_with("jti-"));
    assert_eq!(issues[1]["outcome"], "extended");

    let refreshes = of("refresh");
    assert_eq!(refreshes.len(), 1);
    assert_eq!(refreshes[0]["outcome"], "refreshed");
    assert_ne!(refreshes[0]["token_id"], first["token_id"]);

    let revokes = of("revoke");
    assert_eq!(revokes.len(), 1);
    assert_eq!(revokes[0]["outcome"], "revoked");
    assert_eq!(revokes[0]["session"], first["session"]);
    assert_eq!(
        revokes[0]["request_id"],
        logout.header("x-request-id").unwrap()
    );

    let denials = of("denial");
    assert_eq!(denials.len(), 2, "{denials:#?}");
    assert_eq!(denials[0]["outcome"], "noGrantForRole");
    assert_eq!(denials[0]["role"], "danger");
    assert_eq!(denials[0]["device"], "nALICE");
    assert_eq!(denials[1]["outcome"], "unknownCaller");
    assert_eq!(denials[1]["device"], "-");
}

/// A login through the tka proxy is audited as an issue that handed out no token (`via=proxy`,
/// no token ID), a direct one with its token's ID; on a proxy-only server a direct login and a
/// token request are audited denials.
#[tokio::test]
async fn a_proxy_login_is_audited_as_handing_out_no_token() {
    let capture = Capture::default();
    let writer = capture.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .json()
        .flatten_event(true)
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    // tracing-core consults only the global dispatcher when it knows of a single one: a
    // callsite first met by another test's thread while this subscriber is the only scoped one
    // would be cached as uninteresting. A second live dispatcher keeps it consulted.
    let _second = tracing::Dispatch::new(tracing_subscriber::registry());

    for proxy_only in [false, true] {
        let server = TestServer::with(Options {
            proxy: Some("http://tka-prod.example.ts.net:8443".to_owned()),
            proxy_only,
            ..Options::default()
        })
        .await;
        let mut client = server.client(alice()).await;
        assert_eq!(client.login(r#"{"via":"proxy"}"#).await.status, 200);
        let direct = client.login(r#"{"via":"direct"}"#).await;
        let token = client.post("/api/v1/token").json("{}").send().await;
        if proxy_only {
            assert_eq!(direct.problem_code(403), "proxyOnly");
            assert_eq!(token.problem_code(403), "proxyOnly");
        } else {
            assert_eq!(direct.status, 200);
            assert_eq!(token.status, 200);
        }
    }

    let log = capture.text();
    assert_eq!(find_jwt(&log), None, "a token reached the log");
    let records = audit_records(&log);
    let issues: Vec<&Value> = records.iter().filter(|r| r["event"] == "issue").collect();
    assert_eq!(issues.len(), 3, "{records:#?}");
    // The open server: a proxy login (no token), then a direct one (its token's ID).
    assert_eq!(issues[0]["via"], "proxy");
    assert_eq!(issues[0]["outcome"], "created");
    assert_eq!(issues[0]["token_id"], "-");
    assert_eq!(issues[0]["token_expires_at"], "-");
    assert_ne!(issues[0]["session"], "-");
    assert_eq!(issues[1]["via"], "direct");
    assert!(issues[1]["token_id"].as_str().unwrap().starts_with("jti-"));
    // The proxy-only server: the proxy login, and two denials.
    assert_eq!(issues[2]["via"], "proxy");
    assert_eq!(issues[2]["token_id"], "-");
    let denials: Vec<&Value> = records.iter().filter(|r| r["event"] == "denial").collect();
    assert_eq!(denials.len(), 2, "{denials:#?}");
    for denial in denials {
        assert_eq!(denial["outcome"], "proxyOnly");
        assert_eq!(denial["device"], "nALICE");
    }
}

/// A skipped capability value is logged at WARN once per distinct value per interval, whatever
/// the number of requests or devices; a different value gets its own line, and the same value
/// again after the interval.
#[tokio::test]
async fn a_skipped_capability_value_is_warned_about_once_per_interval() {
    let capture = Capture::default();
    let writer = capture.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::DEBUG)
        .json()
        .flatten_event(true)
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    let warnings = || {
        capture
            .text()
            .lines()
            .filter_map(|line| serde_json::from_str::<Value>(line).ok())
            .filter(|r| {
                r["level"] == "WARN"
                    && r["message"]
                        .as_str()
                        .is_some_and(|m| m.contains("capability value was skipped"))
            })
            .map(|r| r["skipped"].as_str().unwrap_or_default().to_owned())
            .collect::<Vec<_>>()
    };

    let server = TestServer::start().await;
    let typo = serde_json::json!([{"role": "sre"}, {"role": "sre", "cluster": "prod"}]);
    for node in ["nALICE", "nALICE2", "nALICE3"] {
        let who = crate::support::identity(node, "alice@example.com", &[], typo.clone());
        let mut client = server.client(who).await;
        assert_eq!(client.login("{}").await.status, 200);
        assert_eq!(client.get("/api/v1/cluster").send().await.status, 200);
    }
    let once = warnings();
    assert_eq!(once.len(), 1, "{once:?}");
    assert!(once[0].contains("\"cluster\""), "{once:?}");

    // Another malformed value is its own line.
    let other = serde_json::json!([{"role": "sre"}, {"role": 7}]);
    let mut client = server
        .client(crate::support::identity(
            "nBOB",
            "bob@example.com",
            &[],
            other,
        ))
        .await;
    assert_eq!(client.login("{}").await.status, 200);
    assert_eq!(warnings().len(), 2, "{:?}", warnings());

    // The first one again, after the interval.
    server.clock.advance(jiff::SignedDuration::from_mins(11));
    let who = crate::support::identity("nALICE", "alice@example.com", &[], typo);
    let mut client = server.client(who).await;
    assert_eq!(client.get("/api/v1/cluster").send().await.status, 200);
    assert_eq!(warnings().len(), 3, "{:?}", warnings());
}
