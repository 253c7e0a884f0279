//! What a hostile tka server (or a hostile file system neighbour) can make `tka` do: strings
//! that would drive the terminal are shown escaped, in results and in errors, while `-o json`
//! keeps them exact; a kubeconfig symlink planted by someone else is not written through.

use std::os::unix::fs::{PermissionsExt as _, symlink};
use std::process::Output;

use serde_json::{Value, json};
use wiremock::Mock;
use wiremock::matchers::{method, path};

use crate::support::*;

/// Erase the screen, set the window title (OSC ended by BEL), a C1 CSI that erases the line, a
/// right-to-left override, and a line break that fakes a line of tka's own.
pub(crate) const HOSTILE: &str =
    "\u{1b}[2J\u{1b}]0;owned\u{7}alice\u{9b}2K\u{202e}nimda\u{202c}\nerror: fake line\u{7f}";
/// How each part of [`HOSTILE`] must look on the terminal.
const ESCAPES: [&str; 8] = [
    "\\u{1b}[2J",
    "\\u{1b}]0;owned\\u{7}",
    "\\u{9b}2K",
    "\\u{202e}nimda\\u{202c}",
    "\\nerror: fake line",
    "\\u{7f}",
    "alice",
    "nimda",
];

/// Asserts that `text` carries no character that drives a terminal or reorders text: only its
/// own line breaks.
#[track_caller]
pub(crate) fn assert_inert(text: &str) {
    let bad: Vec<char> = text
        .chars()
        .filter(|&c| {
            (c.is_control() && c != '\n')
                || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
        })
        .collect();
    assert!(bad.is_empty(), "raw control characters {bad:?} in {text:?}");
}

#[track_caller]
pub(crate) fn assert_escaped(text: &str) {
    assert_inert(text);
    for escape in ESCAPES {
        assert!(text.contains(escape), "{escape:?} not shown in {text:?}");
    }
}

fn login(sandbox: &Sandbox, server: &Server) -> std::process::Command {
    let mut cmd = sandbox.tka();
    cmd.args(["login", "prod", "--server", &server.uri()]);
    cmd
}

fn code(out: &Output) -> Option<i32> {
    out.status.code()
}

#[test]
fn a_problem_detail_is_escaped_in_errors_and_a_plain_one_is_shown_as_is() {
    let sandbox = Sandbox::new();
    let hostile = Server::start();
    hostile.mount(
        Mock::given(method("POST"))
            .and(path("/api/v1/login"))
            .respond_with(problem(403, "noGrantForRole", HOSTILE, None)),
    );
    let out = run(&mut login(&sandbox, &hostile));
    assert_eq!(code(&out), Some(3), "{}", stderr(&out));
    let err = stderr(&out);
    assert_escaped(&err);
    // Two lines, `error:` and `hint:`: the detail's line break did not make a third.
    assert_eq!(err.lines().count(), 2, "{err:?}");
    assert!(err.starts_with("error: \\u{1b}[2J"), "{err:?}");

    // A server error (5xx) with the same detail.
    let failing = Server::start();
    failing.mount(
        Mock::given(method("POST"))
            .and(path("/api/v1/login"))
            .respond_with(problem(500, "internal", HOSTILE, None)),
    );
    let out = run(&mut login(&sandbox, &failing));
    assert_eq!(code(&out), Some(5), "{}", stderr(&out));
    assert_escaped(&stderr(&out));
    assert_eq!(stderr(&out).lines().count(), 2, "{}", stderr(&out));

    // An ordinary detail, non-ASCII included, is printed unchanged.
    let plain = "no grant for role 'admin' on cluster 'prod' for José (東京)";
    let honest = Server::start();
    honest.mount(
        Mock::given(method("POST"))
            .and(path("/api/v1/login"))
            .respond_with(problem(403, "noGrantForRole", plain, None)),
    );
    let out = run(&mut login(&sandbox, &honest));
    assert_eq!(code(&out), Some(3));
    assert!(
        stderr(&out).starts_with(&format!("error: {plain}\nhint: ")),
        "{}",
        stderr(&out)
    );
}

#[test]
fn the_exec_plugin_escapes_a_problem_detail_on_its_one_line() {
    let sandbox = Sandbox::new();
    let server = Server::start();
    server.mount(
        Mock::given(method("POST"))
            .and(path("/api/v1/token"))
            .respond_with(problem(403, "grantWithdrawn", HOSTILE, None)),
    );
    let out = run(sandbox.tka().args([
        "credential",
        "prod",
        "--server",
        &server.uri(),
        "--identity",
        DEVICE,
    ]));
    assert_eq!(code(&out), Some(3), "{}", stderr(&out));
    let err = stderr(&out);
    assert_escaped(&err);
    assert_eq!(err.lines().count(), 1, "{err:?}");
    assert!(err.starts_with("tka: "), "{err:?}");
}

#[test]
fn session_fields_are_escaped_in_the_summary_and_exact_in_json() {
    let sandbox = Sandbox::new();
    let server = Server::start();
    let mut response = login_response("https://prod.api.example:6443");
    response["session"]["caller"] = json!(HOSTILE);
    response["clamped"] = json!({"requested": "24h", "granted": "1h", "bound": HOSTILE});
    server.on_login(response);

    let out = run(&mut login(&sandbox, &server));
    assert_eq!(code(&out), Some(0), "{}", stderr(&out));
    let text = stdout(&out);
    assert_escaped(&text);
    assert!(
        text.starts_with("Logged in to prod as \\u{1b}[2J"),
        "{text}"
    );
    assert!(
        text.contains("shortened from the 24h asked for to 1h: \\u{1b}[2J"),
        "{text}"
    );

    let out = run(login(&sandbox, &server).args(["-o", "json"]));
    assert_eq!(code(&out), Some(0), "{}", stderr(&out));
    let summary: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(summary["caller"], HOSTILE);
    assert_eq!(summary["clamped"]["bound"], HOSTILE);
    // The JSON text escapes every control itself: the raw characters never reach the terminal.
    assert_inert(&stdout(&out));

    // A caller with an ordinary name is printed as it is.
    let honest = Server::start();
    let mut response = login_response("https://prod.api.example:6443");
    response["session"]["caller"] = json!("José Müller <jose@example.com>");
    honest.on_login(response);
    let out = run(&mut login(&sandbox, &honest));
    assert_eq!(code(&out), Some(0), "{}", stderr(&out));
    assert!(
        stdout(&out).starts_with("Logged in to prod as José Müller <jose@example.com> with role"),
        "{}",
        stdout(&out)
    );
}

#[test]
fn status_refresh_escapes_what_the_server_says() {
    let sandbox = Sandbox::new();
    let server = Server::start();
    server.on_login(login_response("https://prod.api.example:6443"));
    let out = run(&mut login(&sandbox, &server));
    assert_eq!(code(&out), Some(0), "{}", stderr(&out));
    server.mount(
        Mock::given(method("GET"))
            .and(path("/api/v1/session"))
            .respond_with(problem(500, "internal", HOSTILE, None)),
    );
    let out = run(sandbox.tka().args(["status", "--refresh"]));
    assert_eq!(code(&out), Some(0), "{}", stderr(&out));
    assert_escaped(&stdout(&out));
    assert_inert(&stderr(&out));

    let out = run(sandbox.tka().args(["status", "--refresh", "-o", "json"]));
    assert_inert(&stdout(&out));
    let report: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(report["sessions"][0]["error"], HOSTILE);
}

/// `tka login` with KUBECONFIG at `link`: its exit code and stderr, and whether the server was
/// asked.
fn login_through(sandbox: &Sandbox, link: &std::path::Path) -> (Output, usize) {
    let server = Server::start();
    server.on_login(login_response("https://prod.api.example:6443"));
    let out = run(login(sandbox, &server).env("KUBECONFIG", link));
    (out, server.calls("POST", "/api/v1/login"))
}

#[test]
fn a_kubeconfig_link_planted_in_a_shared_directory_is_not_written_through() {
    let sandbox = Sandbox::new();
    // A world-writable directory like /tmp, where someone planted a link to a file of ours.
    let shared = sandbox.dir.path().join("shared");
    std::fs::create_dir(&shared).unwrap();
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o1777)).unwrap();
    let victim = sandbox.home().join(".bashrc");
    std::fs::write(&victim, "# mine\n").unwrap();
    let link = shared.join("kubeconfig");
    symlink(&victim, &link).unwrap();

    let (out, asked) = login_through(&sandbox, &link);
    assert_eq!(code(&out), Some(6), "{}", stderr(&out));
    let err = redact(&stderr(&out), &sandbox);
    assert!(
        err.contains("is in [sandbox]/shared, a directory anyone can write to"),
        "{err}"
    );
    assert!(err.contains("hint: "), "{err}");
    assert_eq!(asked, 0, "no session is created for a refused kubeconfig");
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "# mine\n");

    // A dangling link is refused too, and nothing is created at its target.
    let private = sandbox.dir.path().join("private");
    std::fs::create_dir(&private).unwrap();
    let dangling = private.join("config");
    symlink(private.join("real"), &dangling).unwrap();
    let (out, asked) = login_through(&sandbox, &dangling);
    assert_eq!(code(&out), Some(6), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("which does not exist"),
        "{}",
        stderr(&out)
    );
    assert_eq!(asked, 0);
    assert!(!private.join("real").exists());

    // The user's own link in a private directory, to a file of theirs: written through.
    std::fs::write(private.join("real"), "").unwrap();
    let (out, asked) = login_through(&sandbox, &dangling);
    assert_eq!(code(&out), Some(0), "{}", stderr(&out));
    assert_eq!(asked, 1);
    assert!(
        std::fs::symlink_metadata(&dangling)
            .unwrap()
            .file_type()
            .is_symlink()
    );
    assert!(
        std::fs::read_to_string(private.join("real"))
            .unwrap()
            .contains("tka-prod")
    );
}

#[test]
fn a_kubeconfig_link_owned_by_another_user_is_not_followed() {
    // Only root can give a link away (CI runs as root); as another user there is nothing to
    // plant with, and the unit tests cover the rule.
    if effective_uid() != 0 {
        return;
    }
    let sandbox = Sandbox::new();
    let private = sandbox.dir.path().join("private");
    std::fs::create_dir(&private).unwrap();
    let real = private.join("real");
    std::fs::write(&real, "").unwrap();
    let link = private.join("config");
    symlink(&real, &link).unwrap();
    std::os::unix::fs::lchown(&link, Some(4242), None).unwrap();
    let (out, asked) = login_through(&sandbox, &link);
    assert_eq!(code(&out), Some(6), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("belongs to uid 4242, not to you"),
        "{}",
        stderr(&out)
    );
    assert_eq!(asked, 0);
    assert_eq!(std::fs::read_to_string(&real).unwrap(), "");

    // Given back, it is followed.
    std::os::unix::fs::lchown(&link, Some(0), None).unwrap();
    let (out, asked) = login_through(&sandbox, &link);
    assert_eq!(code(&out), Some(0), "{}", stderr(&out));
    assert_eq!(asked, 1);

    // A link of ours to a file of someone else's is refused.
    std::os::unix::fs::chown(&real, Some(4242), None).unwrap();
    let before = std::fs::read_to_string(&real).unwrap();
    let (out, asked) = login_through(&sandbox, &link);
    assert_eq!(code(&out), Some(6), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("which belongs to uid 4242"),
        "{}",
        stderr(&out)
    );
    assert_eq!(asked, 0);
    assert_eq!(std::fs::read_to_string(&real).unwrap(), before);
}

/// The effective uid of the tests (the owner of a file they create).
fn effective_uid() -> u32 {
    use std::os::unix::fs::MetadataExt as _;
    let file = tempfile::NamedTempFile::new().unwrap();
    file.as_file().metadata().unwrap().uid()
}

#[test]
fn a_device_name_that_would_be_an_option_is_refused() {
    let sandbox = Sandbox::new();
    let server = Server::start();
    let mut response = login_response("https://prod.api.example:6443");
    response["session"]["device"] = json!("--server=http://evil.example");
    server.on_login(response);
    let out = run(&mut login(&sandbox, &server));
    assert_eq!(code(&out), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("cannot be a command-line argument"),
        "{}",
        stderr(&out)
    );
    assert!(!sandbox.kubeconfig().exists());

    // The device name the server normally sends is recorded as the identity.
    let honest = Server::start();
    honest.on_login(login_response("https://prod.api.example:6443"));
    let out = run(&mut login(&sandbox, &honest));
    assert_eq!(code(&out), Some(0), "{}", stderr(&out));
    assert!(
        sandbox
            .read_kubeconfig()
            .contains(&format!("--identity\n      - {DEVICE}")),
        "{}",
        sandbox.read_kubeconfig()
    );
}

#[test]
fn login_warns_when_the_server_hands_out_a_plain_http_api_server() {
    let sandbox = Sandbox::new();
    let server = Server::start();
    server.on_login(login_response("http://prod.api.example:8080"));
    let out = run(&mut login(&sandbox, &server));
    assert_eq!(code(&out), Some(0), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("kubectl sends no credentials to http:// servers"),
        "{}",
        stderr(&out)
    );

    let tls = Server::start();
    tls.on_login(login_response("https://prod.api.example:6443"));
    let out = run(&mut login(&sandbox, &tls));
    assert_eq!(code(&out), Some(0), "{}", stderr(&out));
    assert!(!stderr(&out).contains("warning"), "{}", stderr(&out));
}
