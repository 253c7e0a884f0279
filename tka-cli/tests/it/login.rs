//! `tka login`, `tka logout`, `tka prompt` and `tka shell` against a loopback server, with the
//! machine's kubectl writing the starting kubeconfig and reading the result.

use std::os::unix::fs::PermissionsExt;

use serde_json::{Value, json};
use serde_yaml::Value as Yaml;
use wiremock::Mock;
use wiremock::matchers::{method, path};

use crate::support::*;

const LOGIN_PATH: &str = "/api/v1/login";
const SESSION_PATH: &str = "/api/v1/session";

fn login(sandbox: &Sandbox, server: &Server) -> std::process::Command {
    let mut cmd = sandbox.tka();
    cmd.args(["login", "prod", "--server", &server.uri()]);
    cmd
}

fn ok(out: &std::process::Output) {
    assert!(
        out.status.success(),
        "exit {:?}\nstdout: {}\nstderr: {}",
        out.status.code(),
        stdout(out),
        stderr(out)
    );
}

fn kubectl(sandbox: &Sandbox, args: &[&str]) -> String {
    let out = run(sandbox.kubectl().args(args));
    ok(&out);
    stdout(&out)
}

/// What kubectl itself makes of the kubeconfig.
fn kubectl_view(sandbox: &Sandbox) -> Value {
    serde_json::from_str(&kubectl(
        sandbox,
        &["config", "view", "-o", "json", "--raw"],
    ))
    .unwrap()
}

fn yaml(text: &str) -> Yaml {
    serde_yaml::from_str(text).unwrap()
}

/// A kubeconfig written by kubectl, with comments and an unknown key added by hand.
fn foreign_kubeconfig(sandbox: &Sandbox) -> String {
    std::fs::create_dir_all(sandbox.kubeconfig().parent().unwrap()).unwrap();
    kubectl(
        sandbox,
        &[
            "config",
            "set-cluster",
            "corp",
            "--server=https://corp.example:6443",
        ],
    );
    kubectl(
        sandbox,
        &[
            "config",
            "set-credentials",
            "corp-admin",
            "--token=corp-static-token",
        ],
    );
    kubectl(
        sandbox,
        &[
            "config",
            "set-context",
            "corp",
            "--cluster=corp",
            "--user=corp-admin",
            "--namespace=apps",
        ],
    );
    kubectl(sandbox, &["config", "use-context", "corp"]);
    let written = sandbox.read_kubeconfig();
    let text = format!(
        "# My clusters, edited by hand.\n{written}# unknown keys are kept\nx-team-notes:\n  owner: platform # inline comment\n  since: \"2024\"\n"
    );
    std::fs::write(sandbox.kubeconfig(), &text).unwrap();
    text
}

#[test]
fn login_and_logout_round_trip_with_kubectl() {
    let sandbox = Sandbox::new();
    let server = Server::start();
    // kubectl only uses a kubeconfig's credentials (exec plugin included) for https servers.
    // An https API server on a closed port makes kubectl run the plugin, check its answer, and
    // only then fail to connect.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    server.on_login(login_response(&format!("https://{closed}")));
    server.on_token(REFRESHED);
    server.on_logout();
    let original_text = foreign_kubeconfig(&sandbox);
    let original_view = kubectl_view(&sandbox);

    let out = run(&mut login(&sandbox, &server));
    ok(&out);
    assert!(stdout(&out).contains("Logged in to prod as alice@example.com with role sre"));
    assert!(stdout(&out).contains("returns to corp"));
    assert_eq!(
        kubectl(&sandbox, &["config", "current-context"]).trim(),
        "tka-prod"
    );
    assert_eq!(mode_of(&sandbox.kubeconfig()), 0o600);

    // kubectl runs the exec plugin, which answers from the cache seeded by the login, and
    // accepts its ExecCredential: the failure is the connection, not "getting credentials".
    let cache_file = sandbox.cache_file(&server.uri());
    let before_handout = std::fs::metadata(&cache_file).unwrap().modified().unwrap();
    let out = run(sandbox.kubectl().args(["get", "--raw", "/version"]));
    let err = stderr(&out);
    assert!(err.contains("was refused"), "{err}");
    assert!(!err.contains("getting credentials"), "{err}");
    let after_handout = std::fs::metadata(&cache_file).unwrap().modified().unwrap();
    assert!(
        after_handout > before_handout,
        "the plugin did not hand out the cached token"
    );
    assert_eq!(server.calls("POST", "/api/v1/token"), 0);

    // The foreign part is as kubectl wrote it.
    let during = kubectl_view(&sandbox);
    for kind in ["clusters", "users", "contexts"] {
        let corp: Vec<&Value> = during[kind]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| !e["name"].as_str().unwrap().starts_with("tka-"))
            .collect();
        let before: Vec<&Value> = original_view[kind].as_array().unwrap().iter().collect();
        assert_eq!(corp, before, "{kind}");
    }

    let out = run(sandbox.tka().args(["logout", "prod"]));
    ok(&out);
    assert!(stdout(&out).contains("The current context is corp again"));
    assert_eq!(server.calls("DELETE", SESSION_PATH), 1);
    assert!(!sandbox.cache_file(&server.uri()).exists());
    // kubectl sees exactly what it saw before the login...
    assert_eq!(kubectl_view(&sandbox), original_view);
    // ...and every key, including the unknown one, is semantically identical.
    assert_eq!(yaml(&sandbox.read_kubeconfig()), yaml(&original_text));
}

#[test]
fn a_server_cannot_put_exec_or_insecure_tls_into_the_kubeconfig() {
    let sandbox = Sandbox::new();
    let server = Server::start();
    let mut hostile = login_response("https://prod.api.example:6443");
    hostile["cluster"]["insecure-skip-tls-verify"] = json!(true);
    hostile["cluster"]["insecureSkipTlsVerify"] = json!(true);
    hostile["cluster"]["exec"] = json!({"command": "/bin/sh", "args": ["-c", "evil"]});
    hostile["exec"] = json!({"command": "/bin/sh"});
    hostile["insecure-skip-tls-verify"] = json!(true);
    hostile["kubeconfig"] =
        json!("apiVersion: v1\nusers:\n- name: x\n  user:\n    exec: {command: /bin/sh}\n");
    server.on_login(hostile);
    let out = run(&mut login(&sandbox, &server));
    ok(&out);
    let text = sandbox.read_kubeconfig();
    assert!(!text.contains("/bin/sh"), "{text}");
    assert!(!text.contains("evil"), "{text}");
    assert!(!text.contains("insecure"), "{text}");
    // The legitimate data did arrive, and the exec entry runs this very binary.
    assert!(text.contains("server: https://prod.api.example:6443"));
    let config = yaml(&text);
    let exec = &config["users"][0]["user"]["exec"];
    assert_eq!(
        exec["command"].as_str().unwrap(),
        std::fs::canonicalize(env!("CARGO_BIN_EXE_tka"))
            .unwrap()
            .to_str()
            .unwrap()
    );
    assert_eq!(exec["interactiveMode"], "Never");
    assert_eq!(exec["provideClusterInfo"], false);
}

#[test]
fn static_login_embeds_the_token_and_reports_a_clamped_ttl() {
    let sandbox = Sandbox::new();
    let server = Server::start();
    let mut response = login_response("https://prod.api.example:6443");
    response["clamped"] =
        json!({"requested": "8h", "granted": "1h", "bound": "maxTTL of the capability grant"});
    server.on_login(response);
    let out = run(login(&sandbox, &server).args(["--static", "--ttl", "8h", "-n", "team-a"]));
    ok(&out);
    assert!(
        stdout(&out)
            .contains("shortened from the 8h asked for to 1h: maxTTL of the capability grant"),
        "{}",
        stdout(&out)
    );
    let config = yaml(&sandbox.read_kubeconfig());
    assert_eq!(config["users"][0]["user"]["token"].as_str(), Some(TOKEN));
    assert!(config["users"][0]["user"].get("exec").is_none());
    assert_eq!(config["contexts"][0]["context"]["namespace"], "team-a");
    // The request carried the TTL.
    let sent: Value = server.sent_logins()[0].clone();
    assert_eq!(sent, json!({"ttl": "8h"}));

    // -o json reports the same, for scripts.
    let out = run(login(&sandbox, &server).args(["-o", "json", "--role", "sre"]));
    ok(&out);
    let summary: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary["clamped"]["granted"], "1h");
    assert_eq!(summary["context"], "tka-prod");
    assert_eq!(summary["credential"], "exec");
    assert_eq!(summary["role"], "sre");
}

#[test]
fn no_switch_keeps_the_current_context_and_context_names_follow_the_template() {
    let sandbox = Sandbox::new();
    let server = Server::start();
    server.on_login(login_response("https://prod.api.example:6443"));
    foreign_kubeconfig(&sandbox);
    let out =
        run(login(&sandbox, &server).args(["--no-switch", "--context-name", "{cluster}-admin"]));
    ok(&out);
    assert_eq!(
        kubectl(&sandbox, &["config", "current-context"]).trim(),
        "corp"
    );
    let contexts = kubectl(&sandbox, &["config", "get-contexts", "-o", "name"]);
    assert!(contexts.lines().any(|l| l == "prod-admin"), "{contexts}");
    // Without --no-switch, it becomes current.
    let out = run(login(&sandbox, &server).args(["--context-name", "{cluster}-admin"]));
    ok(&out);
    assert_eq!(
        kubectl(&sandbox, &["config", "current-context"]).trim(),
        "prod-admin"
    );
}

#[test]
fn a_socks5_setting_reaches_the_kubeconfig_and_the_exec_args() {
    let sandbox = Sandbox::new();
    let server = Server::start();
    server.on_login(login_response("https://prod.api.example:6443"));
    let socks = Socks5::start();
    let out = run(login(&sandbox, &server).args(["--socks5", &socks.addr.to_string()]));
    ok(&out);
    assert_eq!(socks.relayed(), 1);
    let config = yaml(&sandbox.read_kubeconfig());
    assert_eq!(
        config["clusters"][0]["cluster"]["proxy-url"].as_str(),
        Some(format!("socks5://{}", socks.addr).as_str())
    );
    let args: Vec<&str> = config["users"][0]["user"]["exec"]["args"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert!(
        args.windows(2)
            .any(|w| w == ["--socks5", &socks.addr.to_string()])
    );
}

#[test]
fn kubeconfig_selection_follows_kubeconfig_env() {
    let sandbox = Sandbox::new();
    let server = Server::start();
    server.on_login(login_response("https://prod.api.example:6443"));
    let dir = sandbox.dir.path();
    let (a, b, c) = (dir.join("a"), dir.join("b"), dir.join("c"));
    let list = std::env::join_paths([&a, &b, &c]).unwrap();
    // None exists: the last listed is created.
    ok(&run(login(&sandbox, &server).env("KUBECONFIG", &list)));
    assert!(!a.exists() && !b.exists() && c.exists());
    // b exists: the first existing one is written, the others are left alone.
    std::fs::remove_file(&c).unwrap();
    std::fs::write(&b, "apiVersion: v1\nkind: Config\n").unwrap();
    ok(&run(login(&sandbox, &server).env("KUBECONFIG", &list)));
    assert!(!a.exists() && !c.exists());
    assert!(std::fs::read_to_string(&b).unwrap().contains("tka-prod"));
}

#[test]
fn a_missing_kubeconfig_and_its_directory_are_created_privately() {
    let sandbox = Sandbox::new();
    let server = Server::start();
    server.on_login(login_response("https://prod.api.example:6443"));
    let nested = sandbox.dir.path().join("new").join("dir").join("config");
    ok(&run(login(&sandbox, &server).env("KUBECONFIG", &nested)));
    assert_eq!(mode_of(&nested), 0o600);
    assert_eq!(mode_of(nested.parent().unwrap()), 0o700);
}

#[test]
fn a_symlinked_kubeconfig_is_written_through_and_stays_a_link() {
    let sandbox = Sandbox::new();
    let server = Server::start();
    server.on_login(login_response("https://prod.api.example:6443"));
    let real = sandbox.dir.path().join("dotfiles").join("kubeconfig");
    std::fs::create_dir_all(real.parent().unwrap()).unwrap();
    std::fs::write(&real, "apiVersion: v1\nkind: Config\nx-keep: me\n").unwrap();
    std::fs::create_dir_all(sandbox.kubeconfig().parent().unwrap()).unwrap();
    std::os::unix::fs::symlink(&real, sandbox.kubeconfig()).unwrap();
    ok(&run(&mut login(&sandbox, &server)));
    assert!(
        std::fs::symlink_metadata(sandbox.kubeconfig())
            .unwrap()
            .file_type()
            .is_symlink()
    );
    let text = std::fs::read_to_string(&real).unwrap();
    assert!(text.contains("tka-prod") && text.contains("x-keep: me"));
}

#[test]
fn read_only_malformed_and_conflicting_kubeconfigs_are_left_untouched() {
    let sandbox = Sandbox::new();
    let server = Server::start();
    server.on_login(login_response("https://prod.api.example:6443"));
    let file = sandbox.kubeconfig();
    std::fs::create_dir_all(file.parent().unwrap()).unwrap();

    // Malformed: the file and the YAML problem are named, nothing is written, no session made.
    let malformed = b"apiVersion: v1\nclusters:\n- name: a\n  cluster: {server: x\n";
    std::fs::write(&file, malformed).unwrap();
    let out = run(&mut login(&sandbox, &server));
    assert_eq!(out.status.code(), Some(6));
    assert_eq!(std::fs::read(&file).unwrap(), malformed);
    insta::assert_snapshot!(
        "login_malformed_kubeconfig",
        redact(&stderr(&out), &sandbox)
    );

    // Read-only: refused, unchanged (even for root, who could write it).
    let valid = b"apiVersion: v1\nkind: Config\n";
    std::fs::write(&file, valid).unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o444)).unwrap();
    let out = run(&mut login(&sandbox, &server));
    assert_eq!(out.status.code(), Some(6));
    assert_eq!(std::fs::read(&file).unwrap(), valid);
    insta::assert_snapshot!(
        "login_read_only_kubeconfig",
        redact(&stderr(&out), &sandbox)
    );

    // A foreign context with tka's name: refused, unchanged.
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let foreign = b"contexts:\n- name: tka-prod\n  context: {cluster: mine, user: mine}\n";
    std::fs::write(&file, foreign).unwrap();
    let out = run(&mut login(&sandbox, &server));
    assert_eq!(out.status.code(), Some(6));
    assert_eq!(std::fs::read(&file).unwrap(), foreign);
    insta::assert_snapshot!("login_foreign_entry", redact(&stderr(&out), &sandbox));

    assert_eq!(server.calls("POST", LOGIN_PATH), 0);

    // The same file, writable and well-formed, takes the login.
    std::fs::write(&file, valid).unwrap();
    ok(&run(&mut login(&sandbox, &server)));
    assert_eq!(server.calls("POST", LOGIN_PATH), 1);
}

#[test]
fn login_errors_say_what_happened_and_what_to_do() {
    let sandbox = Sandbox::new();
    let server = Server::start();
    // Not authorized: the server's detail, and the roles the caller does have.
    server.mount(
        Mock::given(method("POST"))
            .and(path(LOGIN_PATH))
            .respond_with(problem(
                403,
                "noGrantForRole",
                "no grant for role 'admin' on cluster 'prod'; your grants: read-only",
                Some(json!({
                    "cluster": "prod",
                    "roles": [{"role": "read-only", "priority": 0, "defaultTtl": "1h", "maxTtl": "8h", "default": true}],
                    "unavailable": [],
                    "skipped": [],
                })),
            )),
    );
    let out = run(login(&sandbox, &server).args(["--role", "admin"]));
    assert_eq!(out.status.code(), Some(3));
    insta::assert_snapshot!("login_not_authorized", redact(&stderr(&out), &sandbox));

    // Unreachable.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", l.local_addr().unwrap())
    };
    let out = run(sandbox.tka().args(["login", "prod", "--server", &closed]));
    assert_eq!(out.status.code(), Some(5));
    insta::assert_snapshot!("login_unreachable", redact(&stderr(&out), &sandbox));

    // No server known yet.
    let out = run(sandbox.tka().args(["login", "prod"]));
    assert_eq!(out.status.code(), Some(2));
    insta::assert_snapshot!("login_no_server", redact(&stderr(&out), &sandbox));

    // A server that serves another cluster.
    let other = Server::start();
    let mut staging = login_response("https://staging.api.example:6443");
    staging["cluster"]["name"] = json!("staging");
    other.on_login(staging);
    let out = run(sandbox
        .tka()
        .args(["login", "prod", "--server", &other.uri()]));
    assert_eq!(out.status.code(), Some(1));
    insta::assert_snapshot!("login_wrong_cluster", redact(&stderr(&out), &sandbox));
    assert!(!sandbox.kubeconfig().exists());
}

#[test]
fn logout_all_and_the_server_found_in_the_kubeconfig() {
    let sandbox = Sandbox::new();
    let server = Server::start();
    server.on_login(login_response("https://prod.api.example:6443"));
    server.on_logout();
    foreign_kubeconfig(&sandbox);
    let before = kubectl_view(&sandbox);
    ok(&run(&mut login(&sandbox, &server)));
    // A second login finds the server in the kubeconfig.
    ok(&run(sandbox.tka().args([
        "login",
        "prod",
        "--context-name",
        "prod-2",
    ])));
    assert_eq!(server.calls("POST", LOGIN_PATH), 2);
    let out = run(sandbox.tka().args(["logout", "--all", "-o", "json"]));
    ok(&out);
    let summary: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary[0]["removedContexts"], json!(["tka-prod", "prod-2"]));
    assert_eq!(server.calls("DELETE", SESSION_PATH), 1);
    assert_eq!(kubectl_view(&sandbox), before);

    // Nothing left: logging out of prod says so, and where it looked.
    let out = run(sandbox.tka().args(["logout", "prod"]));
    assert_eq!(out.status.code(), Some(1));
    insta::assert_snapshot!("logout_not_logged_in", redact(&stderr(&out), &sandbox));
}

#[test]
fn logout_keeps_the_entries_when_the_server_is_unreachable() {
    let sandbox = Sandbox::new();
    let server = Server::start();
    server.on_login(login_response("https://prod.api.example:6443"));
    ok(&run(&mut login(&sandbox, &server)));
    // The server goes away: point the login at a port nobody listens on.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", l.local_addr().unwrap())
    };
    let written = sandbox.read_kubeconfig().replace(&server.uri(), &closed);
    std::fs::write(sandbox.kubeconfig(), &written).unwrap();
    let out = run(sandbox.tka().args(["logout", "prod"]));
    assert_eq!(out.status.code(), Some(5));
    assert_eq!(sandbox.read_kubeconfig(), written);
    insta::assert_snapshot!("logout_unreachable", redact(&stderr(&out), &sandbox));
}

#[test]
fn prompt_shows_the_cluster_and_time_left_without_network() {
    let sandbox = Sandbox::new();
    let server = Server::start();
    server.on_login(login_response("https://prod.api.example:6443"));
    foreign_kubeconfig(&sandbox);
    // Not a tka context: nothing.
    let out = run(sandbox.tka().arg("prompt"));
    ok(&out);
    assert_eq!(stdout(&out), "");
    ok(&run(&mut login(&sandbox, &server)));
    let calls = server.requests().len();
    let out = run(sandbox.tka().arg("prompt"));
    ok(&out);
    let text = stdout(&out);
    // The session has an hour left at login; a slow machine may have used some of it.
    assert!(
        text == "prod (1h)\n" || (text.starts_with("prod (5") && text.ends_with("m)\n")),
        "{text:?}"
    );
    assert_eq!(server.requests().len(), calls);
}

#[test]
fn shell_runs_with_a_private_kubeconfig_and_logs_out_on_exit() {
    let sandbox = Sandbox::new();
    let server = Server::start();
    server.on_login(login_response("https://prod.api.example:6443"));
    server.on_logout();
    // A "shell" that records what it was given and exits with 7.
    let report = sandbox.dir.path().join("shell-report");
    let script = sandbox.dir.path().join("fake-shell");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\nstat -c %a \"$KUBECONFIG\" > {r}.mode\ncp \"$KUBECONFIG\" {r}\necho \"$KUBECONFIG\" > {r}.path\nexit 7\n",
            r = report.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    foreign_kubeconfig(&sandbox);
    let user_config = sandbox.read_kubeconfig();

    let out =
        run(sandbox
            .tka()
            .env("SHELL", &script)
            .args(["shell", "prod", "--server", &server.uri()]));
    assert_eq!(out.status.code(), Some(7), "{}", stderr(&out));
    let private = yaml(&std::fs::read_to_string(&report).unwrap());
    assert_eq!(private["current-context"], "tka-prod");
    for kind in ["clusters", "users", "contexts"] {
        assert_eq!(private[kind].as_sequence().unwrap().len(), 1, "{kind}");
    }
    assert_eq!(
        std::fs::read_to_string(report.with_extension("mode"))
            .unwrap()
            .trim(),
        "600"
    );
    let private_path = std::fs::read_to_string(report.with_extension("path")).unwrap();
    assert!(!std::path::Path::new(private_path.trim()).exists());
    assert_eq!(server.calls("DELETE", SESSION_PATH), 1);
    // The user's own kubeconfig was not touched.
    assert_eq!(sandbox.read_kubeconfig(), user_config);

    // --keep leaves the session alone.
    let out = run(sandbox.tka().env("SHELL", &script).args([
        "shell",
        "prod",
        "--server",
        &server.uri(),
        "--keep",
    ]));
    assert_eq!(out.status.code(), Some(7));
    assert_eq!(server.calls("DELETE", SESSION_PATH), 1);
}

#[test]
fn the_login_token_never_reaches_stderr_or_the_human_summary() {
    let sandbox = Sandbox::new();
    let server = Server::start();
    server.on_login(login_response("https://prod.api.example:6443"));
    let out = run(&mut login(&sandbox, &server));
    ok(&out);
    assert!(!stdout(&out).contains(TOKEN) && !stderr(&out).contains(TOKEN));
}

#[test]
fn a_kubeconfig_that_cannot_be_written_costs_no_session() {
    let sandbox = Sandbox::new();
    let server = Server::start();
    server.on_login(login_response("https://prod.api.example:6443"));
    // A path through a regular file cannot be written, not even by root (chmod would not stop
    // root, which is who CI runs as).
    // A directory that cannot be created: /proc takes no new entries, from anyone. The file
    // does not exist, so only trying to write shows the problem.
    let uncreatable = std::path::Path::new("/proc/tka-no-such-dir/kube/config");
    assert!(!uncreatable.parent().unwrap().exists());
    let out = run(login(&sandbox, &server).env("KUBECONFIG", uncreatable));
    assert_eq!(out.status.code(), Some(6), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("cannot write in the directory of /proc/tka-no-such-dir/kube/config"),
        "{}",
        stderr(&out)
    );
    assert_eq!(server.calls("POST", LOGIN_PATH), 0);
    // A path through a regular file.
    let blocker = sandbox.dir.path().join("not-a-dir");
    std::fs::write(&blocker, "a file").unwrap();
    let unwritable = blocker.join("kube").join("config");
    let out = run(login(&sandbox, &server).env("KUBECONFIG", &unwritable));
    assert_eq!(out.status.code(), Some(6), "{}", stderr(&out));
    assert!(
        stderr(&out).to_lowercase().contains("not a directory"),
        "{}",
        stderr(&out)
    );
    assert_eq!(server.calls("POST", LOGIN_PATH), 0);
    assert_eq!(std::fs::read_to_string(&blocker).unwrap(), "a file");

    // A path that can be written (its directories are created) takes the login.
    let writable = sandbox.dir.path().join("new").join("kube").join("config");
    ok(&run(login(&sandbox, &server).env("KUBECONFIG", &writable)));
    assert_eq!(server.calls("POST", LOGIN_PATH), 1);
    // The probe left nothing behind.
    let left: Vec<_> = std::fs::read_dir(sandbox.dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|n| n.to_string_lossy().contains(".probe"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

/// Answers the login, and then takes the kubeconfig's directory away (turns it into a file), so
/// the write after the answer fails.
struct LoginThenBreakTheDirectory {
    dir: std::path::PathBuf,
    body: Value,
}

impl wiremock::Respond for LoginThenBreakTheDirectory {
    fn respond(&self, _: &wiremock::Request) -> wiremock::ResponseTemplate {
        std::fs::remove_dir_all(&self.dir).unwrap();
        std::fs::write(&self.dir, "no longer a directory").unwrap();
        wiremock::ResponseTemplate::new(200).set_body_json(&self.body)
    }
}

#[test]
fn a_write_that_fails_after_the_server_answered_ends_the_new_session() {
    let sandbox = Sandbox::new();
    let server = Server::start();
    server.on_logout();
    let dir = sandbox.kubeconfig().parent().unwrap().to_path_buf();
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(sandbox.kubeconfig(), "apiVersion: v1\nkind: Config\n").unwrap();
    server.mount(
        Mock::given(method("POST"))
            .and(path(LOGIN_PATH))
            .respond_with(LoginThenBreakTheDirectory {
                dir,
                body: login_response("https://prod.api.example:6443"),
            }),
    );
    let out = run(&mut login(&sandbox, &server));
    assert_eq!(out.status.code(), Some(6), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("the session the server had just created was ended again"),
        "{}",
        stderr(&out)
    );
    assert_eq!(server.calls("POST", LOGIN_PATH), 1);
    assert_eq!(server.calls("DELETE", SESSION_PATH), 1);

    // A login whose write succeeds keeps its session.
    let sandbox = Sandbox::new();
    let server = Server::start();
    server.on_logout();
    server.on_login(login_response("https://prod.api.example:6443"));
    ok(&run(&mut login(&sandbox, &server)));
    assert_eq!(server.calls("DELETE", SESSION_PATH), 0);
}

#[test]
fn a_logout_tka_cannot_write_ends_no_session() {
    let sandbox = Sandbox::new();
    let server = Server::start();
    server.on_login(login_response("https://prod.api.example:6443"));
    server.on_logout();
    ok(&run(&mut login(&sandbox, &server)));
    // An anchor in tka's user entry, used elsewhere: removing the entry would break the alias.
    let written = sandbox.read_kubeconfig();
    let anchored = written.replacen("  user:\n", "  user: &mine\n", 1) + "x-copy: *mine\n";
    std::fs::write(sandbox.kubeconfig(), &anchored).unwrap();
    kubectl(&sandbox, &["config", "view"]);
    let out = run(sandbox.tka().args(["logout", "prod"]));
    assert_eq!(out.status.code(), Some(6), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("kubectl reads that, but tka does not edit it"),
        "{}",
        stderr(&out)
    );
    assert_eq!(server.calls("DELETE", SESSION_PATH), 0);
    assert_eq!(sandbox.read_kubeconfig(), anchored);
    // Without the anchor the logout goes through.
    std::fs::write(sandbox.kubeconfig(), &written).unwrap();
    ok(&run(sandbox.tka().args(["logout", "prod"])));
    assert_eq!(server.calls("DELETE", SESSION_PATH), 1);
}

/// A tka server offering the proxy at `proxy`: its cluster says so, and a login answers as a
/// proxy login (no token) or a direct one by what the request asks.
fn proxy_server(proxy: &str) -> Server {
    let server = Server::start();
    server.mount(
        Mock::given(method("GET"))
            .and(path("/api/v1/cluster"))
            .respond_with(
                wiremock::ResponseTemplate::new(200)
                    .set_body_json(cluster_response("prod", Some(proxy))),
            ),
    );
    let mut direct = login_response("https://prod.api.example:6443");
    direct["cluster"]["proxy"] = json!(proxy);
    server.mount(
        Mock::given(method("POST"))
            .and(path(LOGIN_PATH))
            .and(wiremock::matchers::body_partial_json(
                json!({"via": "direct"}),
            ))
            .respond_with(wiremock::ResponseTemplate::new(200).set_body_json(direct)),
    );
    server.mount(
        Mock::given(method("POST"))
            .and(path(LOGIN_PATH))
            .and(wiremock::matchers::body_partial_json(
                json!({"via": "proxy"}),
            ))
            .respond_with(
                wiremock::ResponseTemplate::new(200).set_body_json(proxied_login_response(proxy)),
            ),
    );
    server
}

#[test]
fn a_proxy_login_writes_a_context_with_no_credential_that_kubectl_uses_as_is() {
    let sandbox = Sandbox::new();
    // The "proxy": records what kubectl sends it.
    let proxy = Server::start();
    proxy.mount(
        Mock::given(method("GET"))
            .and(path("/version"))
            .respond_with(
                wiremock::ResponseTemplate::new(200)
                    .set_body_json(json!({"major": "1", "minor": "34", "gitVersion": "v1.34.0"})),
            ),
    );
    let server = proxy_server(&proxy.uri());
    server.on_logout();
    let original_view = {
        foreign_kubeconfig(&sandbox);
        kubectl_view(&sandbox)
    };

    // By default: through the proxy, since the server offers it.
    let out = run(login(&sandbox, &server).args(["-o", "json"]));
    ok(&out);
    assert_eq!(server.sent_logins(), [json!({"via": "proxy"})]);
    let summary: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary["via"], "proxy");
    assert_eq!(summary["credential"], "none");
    assert!(summary.get("tokenExpiresAt").is_none(), "{summary}");

    let text = sandbox.read_kubeconfig();
    let view = kubectl_view(&sandbox);
    let named = |kind: &str| -> Value {
        view[kind]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["name"] == "tka-prod")
            .cloned()
            .unwrap_or_else(|| panic!("no tka-prod in {kind}: {text}"))
    };
    let cluster = named("clusters");
    assert_eq!(cluster["cluster"]["server"], proxy.uri().as_str());
    assert!(
        cluster["cluster"]
            .get("certificate-authority-data")
            .is_none()
    );
    let user = named("users");
    let user = user["user"].as_object().unwrap();
    assert!(
        user.keys().all(|k| k == "extensions"),
        "the user entry holds a credential: {text}"
    );
    assert!(!text.contains(TOKEN) && !text.contains("exec:"), "{text}");
    // Nothing cached either: no token ever reached this machine's disk.
    assert!(!sandbox.cache_file(&server.uri()).exists());

    // kubectl talks to the proxy, with no credential of its own.
    let out = run(sandbox.kubectl().args(["get", "--raw", "/version"]));
    assert!(out.status.success(), "{}", stderr(&out));
    let sent = proxy.requests();
    assert!(!sent.is_empty());
    for request in &sent {
        assert!(
            request.headers.get("authorization").is_none(),
            "{request:?}"
        );
    }

    // Logout works as for any login: the session ends, the entries go.
    let out = run(sandbox.tka().args(["logout", "prod"]));
    ok(&out);
    assert_eq!(server.calls("DELETE", SESSION_PATH), 1);
    assert_eq!(kubectl_view(&sandbox), original_view);

    // --via direct on the same server: the API server, its token through the exec plugin.
    let out = run(login(&sandbox, &server).args(["--via", "direct", "-o", "json"]));
    ok(&out);
    assert_eq!(server.sent_logins()[1], json!({"via": "direct"}));
    let summary: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary["via"], "direct");
    assert_eq!(summary["credential"], "exec");
    let config = yaml(&sandbox.read_kubeconfig());
    let direct = config["clusters"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "tka-prod")
        .unwrap();
    assert_eq!(
        direct["cluster"]["server"].as_str(),
        Some("https://prod.api.example:6443")
    );
    assert!(sandbox.read_kubeconfig().contains("exec:"));
    assert!(sandbox.cache_file(&server.uri()).exists());

    // Back through the proxy: the direct login's cached token goes too.
    let out = run(&mut login(&sandbox, &server));
    ok(&out);
    assert!(!sandbox.cache_file(&server.uri()).exists());
    assert!(!sandbox.read_kubeconfig().contains("exec:"));
}

#[test]
fn a_proxied_context_gets_the_socks5_proxy_url_too() {
    let sandbox = Sandbox::new();
    let server = proxy_server("http://tka-prod.example.ts.net:8443");
    let socks = Socks5::start();
    let out = run(login(&sandbox, &server).args(["--socks5", &socks.addr.to_string()]));
    ok(&out);
    let config = yaml(&sandbox.read_kubeconfig());
    let cluster = &config["clusters"][0]["cluster"];
    assert_eq!(
        cluster["server"].as_str(),
        Some("http://tka-prod.example.ts.net:8443")
    );
    assert_eq!(
        cluster["proxy-url"].as_str(),
        Some(format!("socks5://{}", socks.addr).as_str())
    );
    assert!(config["users"][0]["user"].get("exec").is_none());
    assert!(config["users"][0]["user"].get("token").is_none());
    // No warning about kubectl sending no credentials to http://: there are none to send.
    assert!(
        !stderr(&out).contains("sends no credentials"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn the_way_asked_for_is_refused_clearly_when_the_server_cannot_go_it() {
    let sandbox = Sandbox::new();

    // --static embeds a token; through the proxy there is none. Refused before any request.
    let server = proxy_server("http://tka-prod.example.ts.net:8443");
    let out = run(login(&sandbox, &server).args(["--static", "--via", "proxy"]));
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("--static and --via proxy do not go together"),
        "{}",
        stderr(&out)
    );
    assert!(server.requests().is_empty());
    // --static alone is a direct login, asked for as such.
    let out = run(login(&sandbox, &server).arg("--static"));
    ok(&out);
    assert_eq!(server.sent_logins(), [json!({"via": "direct"})]);
    assert!(sandbox.read_kubeconfig().contains(TOKEN));

    // A proxy-only server refuses --via direct with its own words, and tka says what to run.
    let sandbox = Sandbox::new();
    let proxy_only = Server::start();
    proxy_only.mount(
        Mock::given(method("POST"))
            .and(path(LOGIN_PATH))
            .and(wiremock::matchers::body_partial_json(json!({"via": "direct"})))
            .respond_with(problem(
                403,
                "proxyOnly",
                "cluster prod is reached through the tka proxy only, so this server hands no token to a laptop; run `tka login prod` (it uses the proxy) instead of asking for a token",
                None,
            )),
    );
    proxy_only.on_login(proxied_login_response(
        "http://tka-prod.example.ts.net:8443",
    ));
    let out = run(login(&sandbox, &proxy_only).args(["--via", "direct"]));
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("reached through the tka proxy only"), "{err}");
    assert!(err.contains("without `--via direct`"), "{err}");
    assert!(!sandbox.kubeconfig().exists());
    // Through the proxy it works.
    let out = run(login(&sandbox, &proxy_only).args(["--via", "proxy"]));
    ok(&out);
    assert!(!sandbox.read_kubeconfig().contains("exec:"));

    // A server without a proxy refuses --via proxy; the default there is direct.
    let sandbox = Sandbox::new();
    let plain = Server::start();
    plain.mount(
        Mock::given(method("POST"))
            .and(path(LOGIN_PATH))
            .and(wiremock::matchers::body_partial_json(
                json!({"via": "proxy"}),
            ))
            .respond_with(problem(
                409,
                "noProxy",
                "this server runs no tka proxy for cluster prod",
                None,
            )),
    );
    plain.on_login(login_response("https://prod.api.example:6443"));
    let out = run(login(&sandbox, &plain).args(["--via", "proxy"]));
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("runs no tka proxy"), "{err}");
    assert!(err.contains("without `--via proxy`"), "{err}");
    let out = run(&mut login(&sandbox, &plain));
    ok(&out);
    // No `via` is sent to a server that offers no proxy (an older server would refuse it).
    assert_eq!(plain.sent_logins()[1], json!({}));
    assert!(sandbox.read_kubeconfig().contains("exec:"));
}

#[test]
fn a_token_sent_with_a_proxy_login_is_neither_written_nor_cached() {
    let sandbox = Sandbox::new();
    let server = proxy_server("http://tka-prod.example.ts.net:8443");
    // A server that answers a proxy login with a token anyway.
    let mut answer = proxied_login_response("http://tka-prod.example.ts.net:8443");
    answer["token"] = json!({"token": TOKEN, "expiresAt": "2099-01-01T00:00:00Z"});
    server.mount(
        Mock::given(method("POST"))
            .and(path(LOGIN_PATH))
            .respond_with(wiremock::ResponseTemplate::new(200).set_body_json(answer))
            .with_priority(1),
    );
    let out = run(&mut login(&sandbox, &server));
    ok(&out);
    assert_eq!(server.sent_logins(), [json!({"via": "proxy"})]);
    let text = sandbox.read_kubeconfig();
    assert!(!text.contains(TOKEN) && !text.contains("exec:"), "{text}");
    assert!(
        text.contains("server: http://tka-prod.example.ts.net:8443"),
        "{text}"
    );
    assert!(!sandbox.cache_file(&server.uri()).exists());
    assert!(!stdout(&out).contains(TOKEN) && !stderr(&out).contains(TOKEN));
}

#[test]
fn shell_through_the_proxy_holds_no_credential_either() {
    let sandbox = Sandbox::new();
    let server = proxy_server("http://tka-prod.example.ts.net:8443");
    server.on_logout();
    let report = sandbox.dir.path().join("shell-report");
    let script = sandbox.dir.path().join("fake-shell");
    std::fs::write(
        &script,
        format!("#!/bin/sh\ncp \"$KUBECONFIG\" {}\n", report.display()),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let shell = |via: &str| {
        let out = run(sandbox.tka().env("SHELL", &script).args([
            "shell",
            "prod",
            "--server",
            &server.uri(),
            "--via",
            via,
        ]));
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        std::fs::read_to_string(&report).unwrap()
    };
    let proxied = shell("proxy");
    let private = yaml(&proxied);
    assert_eq!(
        private["clusters"][0]["cluster"]["server"].as_str(),
        Some("http://tka-prod.example.ts.net:8443")
    );
    assert!(
        !proxied.contains("exec:") && !proxied.contains(TOKEN),
        "{proxied}"
    );
    assert_eq!(server.calls("DELETE", SESSION_PATH), 1);
    // Direct: the exec entry, as before.
    let direct = shell("direct");
    assert!(direct.contains("exec:"), "{direct}");
    assert!(
        direct.contains("server: https://prod.api.example:6443"),
        "{direct}"
    );
    assert_eq!(server.calls("DELETE", SESSION_PATH), 2);
}
