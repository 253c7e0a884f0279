//! `tka status`: a session that ended (expired, or gone on the server) says to log in again.

use jiff::{SignedDuration, Timestamp};
use serde_json::Value;
use wiremock::Mock;
use wiremock::matchers::{method, path};

use crate::support::*;

fn status(sandbox: &Sandbox, args: &[&str]) -> (String, Option<Value>) {
    let out = run(sandbox.tka().arg("status").args(args));
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let json = args
        .contains(&"json")
        .then(|| serde_json::from_str(&stdout(&out)).unwrap());
    (stdout(&out), json)
}

/// Rewrites the cached entry as if the session ended `ago`.
fn end_cached_session(sandbox: &Sandbox, server: &str, ago: SignedDuration) {
    let path = sandbox.cache_file(server);
    let mut entry: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    entry["sessionExpiresAt"] = Value::String((Timestamp::now() - ago).to_string());
    std::fs::write(&path, entry.to_string()).unwrap();
}

#[test]
fn status_says_an_ended_session_needs_a_new_login() {
    let sandbox = Sandbox::new();
    let server = Server::start();
    server.on_login(login_response("https://prod.api.example:6443"));
    let out = run(sandbox
        .tka()
        .args(["login", "prod", "--server", &server.uri()]));
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));

    // A live session: its end and time left.
    let (text, _) = status(&sandbox, &[]);
    assert!(text.contains(": until "), "{text}");
    let (_, json) = status(&sandbox, &["-o", "json"]);
    assert_eq!(json.unwrap()["sessions"][0]["state"], "active");

    // The cached session end has passed: ended, log in again.
    end_cached_session(&sandbox, &server.uri(), SignedDuration::from_mins(5));
    let (text, _) = status(&sandbox, &[]);
    assert!(
        text.contains(": ended at ") && text.contains("; log in again with `tka login prod`"),
        "{text}"
    );
    assert!(!text.contains("expiry unknown"), "{text}");
    let (_, json) = status(&sandbox, &["-o", "json"]);
    assert_eq!(json.unwrap()["sessions"][0]["state"], "ended");

    // The server says there is no session (404): ended on the server, log in again.
    server.mount(
        Mock::given(method("GET"))
            .and(path("/api/v1/session"))
            .respond_with(problem(404, "noSession", "no session", None)),
    );
    std::fs::remove_file(sandbox.cache_file(&server.uri())).unwrap();
    let (text, _) = status(&sandbox, &["--refresh"]);
    assert!(
        text.contains(": the session has ended on the server; log in again with `tka login prod`"),
        "{text}"
    );
    assert!(!text.contains("expiry unknown"), "{text}");
    let (_, json) = status(&sandbox, &["--refresh", "-o", "json"]);
    let line = &json.unwrap()["sessions"][0];
    assert_eq!(line["state"], "ended");
    assert!(line.get("expiresAt").is_none(), "{line}");

    // Nothing cached and the server not asked: unknown, and how to find out.
    let (text, json) = status(&sandbox, &["-o", "json"]);
    assert_eq!(json.unwrap()["sessions"][0]["state"], "unknown", "{text}");
    let (text, _) = status(&sandbox, &[]);
    assert!(
        text.contains("expiry unknown (no cached token); `tka status --refresh` asks the server"),
        "{text}"
    );
}

#[test]
fn status_shows_how_each_cluster_is_reached() {
    let sandbox = Sandbox::new();
    let direct = Server::start();
    direct.on_login(login_response("https://prod.api.example:6443"));
    let out = run(sandbox
        .tka()
        .args(["login", "prod", "--server", &direct.uri()]));
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let proxied = Server::start();
    let mut response = proxied_login_response("http://tka-prod.example.ts.net:8443");
    response["cluster"]["name"] = "lab".into();
    proxied.on_login(response);
    let out =
        run(sandbox
            .tka()
            .args(["login", "lab", "--server", &proxied.uri(), "--via", "proxy"]));
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));

    let (text, _) = status(&sandbox, &[]);
    assert!(text.contains("prod (context tka-prod, "), "{text}");
    let line = |cluster: &str| {
        text.lines()
            .find(|l| l.contains(&format!("{cluster} (context")))
            .unwrap_or_else(|| panic!("no {cluster} in {text}"))
            .to_owned()
    };
    assert!(line("prod").contains(", direct)"), "{text}");
    assert!(line("lab").contains(", via proxy)"), "{text}");
    let (_, json) = status(&sandbox, &["-o", "json"]);
    let json = json.unwrap();
    let via = |cluster: &str| {
        json["sessions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["cluster"] == cluster)
            .unwrap()["via"]
            .clone()
    };
    assert_eq!(via("prod"), "direct");
    assert_eq!(via("lab"), "proxy");
    let out = run(sandbox.tka().args(["status", "-o", "yaml"]));
    assert!(stdout(&out).contains("via: proxy"), "{}", stdout(&out));
}
