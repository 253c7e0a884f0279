//! `tka credential`, the kubectl exec plugin, against a loopback server that counts calls.

use jiff::{SignedDuration, Timestamp};
use serde_json::{Value, json};
use wiremock::Mock;
use wiremock::matchers::{body_json, header, method, path};

use crate::support::*;

const TOKEN_PATH: &str = "/api/v1/token";

fn credential(sandbox: &Sandbox, server: &str) -> std::process::Command {
    let mut cmd = sandbox.tka();
    cmd.args([
        "credential",
        "prod",
        "--server",
        server,
        "--identity",
        DEVICE,
    ]);
    cmd
}

fn exec_credential(out: &std::process::Output) -> Value {
    assert!(
        out.status.success(),
        "tka credential failed: {}",
        stderr(out)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn a_cache_hit_makes_no_server_call() {
    let sandbox = Sandbox::new();
    let server = Server::start();
    server.on_token(REFRESHED);
    sandbox.seed_cache(
        &server.uri(),
        TOKEN,
        SignedDuration::from_mins(5),
        SignedDuration::from_mins(10),
        SignedDuration::from_mins(5),
    );
    let cred = exec_credential(&run(&mut credential(&sandbox, &server.uri())));
    assert_eq!(cred["apiVersion"], "client.authentication.k8s.io/v1");
    assert_eq!(cred["kind"], "ExecCredential");
    assert_eq!(cred["status"]["token"], TOKEN);
    // kubectl is told the token expires at least a minute before it does (10 min from now).
    let reported: Timestamp = cred["status"]["expirationTimestamp"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(reported <= Timestamp::now() + SignedDuration::from_mins(9));
    assert_eq!(server.calls("POST", TOKEN_PATH), 0);

    // The same entry with too little time left is refreshed: the server is asked.
    sandbox.seed_cache(
        &server.uri(),
        TOKEN,
        SignedDuration::from_mins(14),
        SignedDuration::from_secs(90),
        SignedDuration::from_mins(5),
    );
    let cred = exec_credential(&run(&mut credential(&sandbox, &server.uri())));
    assert_eq!(cred["status"]["token"], REFRESHED);
    assert_eq!(server.calls("POST", TOKEN_PATH), 1);
    // The refresh sends `{}` as JSON.
    let sent = &server.requests()[0];
    assert_eq!(sent.body_json::<Value>().unwrap(), json!({}));
    assert_eq!(
        sent.headers.get("content-type").unwrap(),
        "application/json"
    );
}

#[test]
fn twenty_parallel_runs_on_an_empty_cache_make_one_call() {
    let sandbox = Sandbox::new();
    let server = Server::start();
    server.mount(
        Mock::given(method("POST"))
            .and(path(TOKEN_PATH))
            .and(header("content-type", "application/json"))
            .and(body_json(json!({})))
            .respond_with(
                wiremock::ResponseTemplate::new(200)
                    .set_body_json(token_response(REFRESHED))
                    // Long enough that the runs overlap while the first one waits.
                    .set_delay(std::time::Duration::from_millis(300)),
            ),
    );
    let children: Vec<_> = (0..20)
        .map(|_| {
            credential(&sandbox, &server.uri())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for child in children {
        let out = child.wait_with_output().unwrap();
        assert_eq!(exec_credential(&out)["status"]["token"], REFRESHED);
    }
    assert_eq!(server.calls("POST", TOKEN_PATH), 1);
    // The cache directory and file are private.
    assert_eq!(mode_of(&sandbox.cache_dir()), 0o700);
    assert_eq!(mode_of(&sandbox.cache_file(&server.uri())), 0o600);
}

#[test]
fn a_403_on_refresh_names_the_missing_grant_and_drops_the_token() {
    let sandbox = Sandbox::new();
    let server = Server::start();
    let detail = "no grant for role 'sre' on cluster 'prod'; your grants: read-only";
    server.mount(
        Mock::given(method("POST"))
            .and(path(TOKEN_PATH))
            .respond_with(problem(403, "noGrantForRole", detail, None)),
    );
    sandbox.seed_cache(
        &server.uri(),
        TOKEN,
        SignedDuration::from_mins(14),
        SignedDuration::from_secs(60),
        SignedDuration::from_mins(5),
    );
    let out = run(&mut credential(&sandbox, &server.uri()));
    assert_eq!(out.status.code(), Some(3));
    assert!(out.stdout.is_empty());
    let err = stderr(&out);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains(detail), "{err}");
    assert!(!sandbox.cache_file(&server.uri()).exists());
    insta::assert_snapshot!("credential_403", redact(&err, &sandbox));
}

#[test]
fn a_404_session_ended_says_log_in_and_the_next_run_asks_again() {
    let sandbox = Sandbox::new();
    let server = Server::start();
    server.mount(
        Mock::given(method("POST"))
            .and(path(TOKEN_PATH))
            .respond_with(problem(
                404,
                "sessionEnded",
                "no live session for this device",
                None,
            ))
            .up_to_n_times(2)
            .with_priority(1),
    );
    server.on_token(REFRESHED);
    sandbox.seed_cache(
        &server.uri(),
        TOKEN,
        SignedDuration::from_mins(14),
        SignedDuration::from_secs(100),
        SignedDuration::from_mins(5),
    );
    let out = run(&mut credential(&sandbox, &server.uri()));
    assert_eq!(out.status.code(), Some(4));
    assert_eq!(stderr(&out), "tka: session ended, run `tka login prod`\n");
    assert!(!sandbox.cache_file(&server.uri()).exists());
    insta::assert_snapshot!("credential_session_ended", stderr(&out));

    // The dead token is not handed out again: the next run asks the server.
    let out = run(&mut credential(&sandbox, &server.uri()));
    assert_eq!(out.status.code(), Some(4));
    assert!(!stdout(&out).contains(TOKEN));
    assert_eq!(server.calls("POST", TOKEN_PATH), 2);

    // Once the server has a session again (after a login), the plugin works.
    let cred = exec_credential(&run(&mut credential(&sandbox, &server.uri())));
    assert_eq!(cred["status"]["token"], REFRESHED);
    assert_eq!(server.calls("POST", TOKEN_PATH), 3);
}

#[test]
fn asked_again_within_seconds_refreshes_instead_of_repeating_the_token() {
    let sandbox = Sandbox::new();
    let server = Server::start();
    server.on_token(REFRESHED);
    // Fetched five minutes ago, last handed out five minutes ago.
    sandbox.seed_cache(
        &server.uri(),
        TOKEN,
        SignedDuration::from_mins(5),
        SignedDuration::from_mins(10),
        SignedDuration::from_mins(5),
    );
    // kubectl's first run gets the cached token.
    let first = exec_credential(&run(&mut credential(&sandbox, &server.uri())));
    assert_eq!(first["status"]["token"], TOKEN);
    assert_eq!(server.calls("POST", TOKEN_PATH), 0);
    // Asked again right away (kubectl got a 401): a fresh token, not the same one.
    let second = exec_credential(&run(&mut credential(&sandbox, &server.uri())));
    assert_eq!(second["status"]["token"], REFRESHED);
    assert_eq!(server.calls("POST", TOKEN_PATH), 1);
    // The fresh token is then reused, however soon it is asked for.
    let third = exec_credential(&run(&mut credential(&sandbox, &server.uri())));
    assert_eq!(third["status"]["token"], REFRESHED);
    assert_eq!(server.calls("POST", TOKEN_PATH), 1);
}

#[test]
fn ambient_proxies_are_ignored_and_socks5_is_used_when_set() {
    let sandbox = Sandbox::new();
    let server = Server::start();
    server.on_token(REFRESHED);
    let ambient = Recorder::start();
    let proxy_url = format!("http://{}", ambient.addr);
    let mut cmd = credential(&sandbox, &server.uri());
    for var in [
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
        "http_proxy",
        "https_proxy",
        "all_proxy",
    ] {
        cmd.env(var, &proxy_url);
    }
    let cred = exec_credential(&run(&mut cmd));
    assert_eq!(cred["status"]["token"], REFRESHED);
    assert_eq!(server.calls("POST", TOKEN_PATH), 1);
    assert_eq!(ambient.connections(), 0);

    // An explicit SOCKS5 proxy is used (the same kind of listener does see connections).
    std::fs::remove_file(sandbox.cache_file(&server.uri())).unwrap();
    let socks = Socks5::start();
    let mut cmd = credential(&sandbox, &server.uri());
    cmd.env("TKA_SOCKS5", socks.addr.to_string());
    let cred = exec_credential(&run(&mut cmd));
    assert_eq!(cred["status"]["token"], REFRESHED);
    assert_eq!(server.calls("POST", TOKEN_PATH), 2);
    assert_eq!(socks.relayed(), 1);
}

#[test]
fn an_unreachable_server_is_one_line_and_a_working_cached_token_still_serves() {
    let sandbox = Sandbox::new();
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", l.local_addr().unwrap())
    };
    let out = run(&mut credential(&sandbox, &closed));
    assert_eq!(out.status.code(), Some(5));
    assert_eq!(stderr(&out).lines().count(), 1);
    insta::assert_snapshot!("credential_unreachable", redact(&stderr(&out), &sandbox));

    // A cached token near its refresh margin, but still valid, is handed out with a warning.
    sandbox.seed_cache(
        &closed,
        TOKEN,
        SignedDuration::from_mins(14),
        SignedDuration::from_secs(110),
        SignedDuration::from_mins(5),
    );
    let out = run(&mut credential(&sandbox, &closed));
    assert_eq!(exec_credential(&out)["status"]["token"], TOKEN);
    assert!(stderr(&out).contains("warning"));
}

#[test]
fn a_refresh_for_another_device_is_refused_and_the_right_one_accepted() {
    let sandbox = Sandbox::new();
    let server = Server::start();
    let mut other_device = token_response(REFRESHED);
    other_device["session"]["device"] = json!("desktop.tail1234.ts.net");
    server.mount(
        Mock::given(method("POST"))
            .and(path(TOKEN_PATH))
            .respond_with(wiremock::ResponseTemplate::new(200).set_body_json(other_device))
            .up_to_n_times(1)
            .with_priority(1),
    );
    server.on_token(REFRESHED);
    let out = run(&mut credential(&sandbox, &server.uri()));
    assert_eq!(out.status.code(), Some(4));
    assert!(
        stderr(&out).contains("desktop.tail1234.ts.net"),
        "{}",
        stderr(&out)
    );
    assert!(!sandbox.cache_file(&server.uri()).exists());
    // The same device as at login: accepted and cached.
    let cred = exec_credential(&run(&mut credential(&sandbox, &server.uri())));
    assert_eq!(cred["status"]["token"], REFRESHED);
    assert!(sandbox.cache_file(&server.uri()).exists());
}

#[test]
fn a_proxy_only_server_says_to_log_in_again_through_the_proxy() {
    let sandbox = Sandbox::new();
    // Allowed: a server that hands out tokens refreshes as ever.
    let open = Server::start();
    open.on_token(REFRESHED);
    let cred = exec_credential(&run(&mut credential(&sandbox, &open.uri())));
    assert_eq!(cred["status"]["token"], REFRESHED);

    // Refused: the cluster became proxy-only; the context's exec plugin is told why and what
    // to run, in one line, and the cached token is dropped.
    let proxy_only = Server::start();
    proxy_only.mount(
        Mock::given(method("POST"))
            .and(path(TOKEN_PATH))
            .respond_with(problem(
                403,
                "proxyOnly",
                "cluster prod is reached through the tka proxy only, so this server hands no token to a laptop",
                None,
            )),
    );
    sandbox.seed_cache(
        &proxy_only.uri(),
        TOKEN,
        SignedDuration::from_mins(14),
        SignedDuration::from_secs(60),
        SignedDuration::from_mins(5),
    );
    let out = run(&mut credential(&sandbox, &proxy_only.uri()));
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(out.stdout.is_empty());
    let err = stderr(&out);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("reached through the tka proxy only"), "{err}");
    assert!(
        err.contains("run `tka login prod` to point it at the tka proxy"),
        "{err}"
    );
    assert!(!sandbox.cache_file(&proxy_only.uri()).exists());
}
