//! What the server writes to its log during real use: never a token (a trace-level capture of a
//! full login, refresh, kubeconfig download and logout holds nothing JWT-shaped), and one audit
//! record per issue, refresh, revoke and denial.

use std::io::Write;
use std::sync::{Arc, Mutex};

use serde_json::Value;

use crate::support::{TestServer, alice};

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
pub(crate) fn find_jwt(text: &str) -> Option<&str> {
    let is_b64url = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == '-';
    let mut rest = text;
    while let Some(at) = rest.find("eyJ") {
        let candidate = &rest[at..];
        let body: usize = candidate[3..]
            .chars()
            .take_while(|c| is_b64url(*c))
            .map(char::len_utf8)
            .sum();
        if body > 0 && candidate[3 + body..].starts_with('.') {
            return Some(&candidate[..(3 + body + 1).min(candidate.len())]);
        }
        rest = &candidate[3..];
    }
    None
}

#[test]
fn the_jwt_finder_finds_jwts() {
    assert!(find_jwt("token=eyJhbGciOiJSUzI1NiJ9.eyJzdWIi.sig").is_some());
    assert!(find_jwt("eyJ. eyJ eyJabc").is_none());
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
