//! Server discovery: `tka list`, `tka status`, and `login`/`logout` without `--server`, against a
//! fake tailscaled (FakeTailnet on a Unix socket) whose tagged peers have loopback addresses
//! (127.0.0.x) where wiremock servers answer, on one port given through the hidden
//! `TKA_SERVER_PORT`.

use std::net::{Ipv4Addr, TcpListener};
use std::process::Command;

use serde_json::{Value, json};
use tka_testkit::tailnet::{FakeLocalApi, FakePeer, FakeTailnet, PeerSpec};
use wiremock::matchers::{method, path};
use wiremock::{Mock, ResponseTemplate};

use crate::support::{Sandbox, Server, login_response, mode_of, run, stderr, stdout};

const SESSION_END: &str = "2030-01-01T12:00:00Z";

/// A fake tailscaled with this device (alice's laptop) as its self node.
struct Tailnet {
    rt: tokio::runtime::Runtime,
    tailnet: FakeTailnet,
    api: Option<FakeLocalApi>,
}

impl Tailnet {
    fn start() -> Self {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let tailnet = FakeTailnet::new();
        let me = tailnet.add(PeerSpec::user("alice@example.com", "laptop"));
        tailnet.set_self(&me.stable_id).unwrap();
        let api = Some(rt.block_on(tailnet.serve()).unwrap());
        Self { rt, tailnet, api }
    }

    /// A peer tagged `tag` at `ip`.
    fn server(&self, tag: &str, name: &str, ip: Ipv4Addr) -> FakePeer {
        self.tailnet.add(PeerSpec::tagged([tag], name).ipv4(ip))
    }

    fn socket(&self) -> String {
        self.api
            .as_ref()
            .unwrap()
            .socket_path()
            .display()
            .to_string()
    }

    /// `tka ...` talking to this tailscaled, asking servers on `port`.
    fn tka(&self, sandbox: &Sandbox, port: u16) -> Command {
        let mut cmd = sandbox.tka();
        cmd.env("TKA_TAILSCALE_SOCKET", self.socket())
            .env("TKA_SERVER_PORT", port.to_string())
            .env("TKA_TIMEOUT", "5s");
        cmd
    }
}

impl Drop for Tailnet {
    fn drop(&mut self) {
        // The server task lives on this runtime: stop it inside it.
        let _guard = self.rt.enter();
        self.api.take();
    }
}

/// Listeners on `ips`, all on one port (the port discovered servers are asked on).
fn listeners(ips: &[Ipv4Addr]) -> (u16, Vec<TcpListener>) {
    for _ in 0..50 {
        let first = TcpListener::bind((ips[0], 0)).unwrap();
        let port = first.local_addr().unwrap().port();
        let mut all = vec![first];
        for ip in &ips[1..] {
            match TcpListener::bind((*ip, port)) {
                Ok(l) => all.push(l),
                Err(_) => break,
            }
        }
        if all.len() == ips.len() {
            return (port, all);
        }
    }
    panic!("no port free on all of {ips:?}");
}

fn ip(last: u8) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 0, last)
}

/// `GET /api/v1/cluster` of cluster `name`, with roles admin (default, max 8h) and view
/// (max 1d), and a session when `session` is set.
fn cluster_json(name: &str, session: bool) -> Value {
    let mut body = json!({
        "cluster": {"name": name, "server": format!("https://{name}.api.example:6443")},
        "caller": "alice@example.com",
        "roles": {
            "cluster": name,
            "roles": [
                {"role": "admin", "priority": 10, "defaultTtl": "1h", "maxTtl": "8h", "default": true},
                {"role": "view", "priority": 0, "defaultTtl": "1h", "maxTtl": "24h", "default": false}
            ],
            "unavailable": [],
            "skipped": []
        }
    });
    if session {
        body["session"] = json!({
            "name": "tka-alice-x7k2p",
            "role": "admin",
            "expiresAt": SESSION_END,
            "device": "laptop.example.ts.net",
            "caller": "alice@example.com",
        });
    }
    body
}

fn serve_cluster(listener: TcpListener, name: &str, session: bool) -> Server {
    let server = Server::on(listener);
    server.mount(
        Mock::given(method("GET"))
            .and(path("/api/v1/cluster"))
            .respond_with(ResponseTemplate::new(200).set_body_json(cluster_json(name, session))),
    );
    server
}

fn redact_port(text: &str, port: u16) -> String {
    text.replace(&format!(":{port}"), ":[port]")
}

fn pins(sandbox: &Sandbox) -> Value {
    let text = std::fs::read_to_string(sandbox.dir.path().join("state/tka/pins.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

#[test]
fn list_shows_clusters_roles_and_this_devices_session() {
    let sandbox = Sandbox::new();
    let tailnet = Tailnet::start();
    let (port, mut ls) = listeners(&[ip(2), ip(3), ip(4), ip(5)]);
    let offline = serve_cluster(ls.pop().unwrap(), "down", false);
    let other = Server::on(ls.pop().unwrap());
    let staging = serve_cluster(ls.pop().unwrap(), "staging", false);
    let prod = serve_cluster(ls.pop().unwrap(), "prod", true);
    tailnet.server("tag:tka", "tka-prod", ip(2));
    tailnet.server("tag:tka", "tka-staging", ip(3));
    // A peer without the server tag is never asked.
    tailnet.server("tag:web", "web", ip(4));
    // An offline server is listed but not asked.
    let down = tailnet.server("tag:tka", "tka-down", ip(5));
    tailnet.tailnet.set_online(&down.stable_id, false).unwrap();

    let out = run(tailnet.tka(&sandbox, port).arg("list"));
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}\n{}",
        stderr(&out),
        stdout(&out)
    );
    insta::assert_snapshot!("list_table", stdout(&out));
    assert_eq!(prod.calls("GET", "/api/v1/cluster"), 1);
    assert_eq!(staging.calls("GET", "/api/v1/cluster"), 1);
    assert_eq!(other.requests().len(), 0);
    assert_eq!(offline.requests().len(), 0);

    let out = run(tailnet.tka(&sandbox, port).args(["list", "-o", "json"]));
    let list: Value = serde_json::from_str(&stdout(&out)).unwrap();
    let prod_entry = &list[0];
    assert_eq!(prod_entry["cluster"], "prod");
    assert_eq!(prod_entry["node"], "tka-prod");
    assert_eq!(prod_entry["state"], "ok");
    assert_eq!(prod_entry["roles"][0]["role"], "admin");
    assert_eq!(prod_entry["roles"][0]["default"], true);
    assert_eq!(prod_entry["roles"][0]["maxTtl"], "8h");
    assert_eq!(prod_entry["session"]["expiresAt"], SESSION_END);
    assert_eq!(prod_entry["via"], "direct");
    assert_eq!(prod_entry["directTokens"], true);
    assert_eq!(list[1]["cluster"], "staging");
    assert!(list[1].get("session").is_none());

    // The names are pinned to the nodes, in a private file.
    let pinned = pins(&sandbox);
    assert_eq!(pinned["clusters"]["prod"]["node"]["name"], "tka-prod");
    assert_eq!(pinned["clusters"]["staging"]["node"]["name"], "tka-staging");
    assert_eq!(
        mode_of(&sandbox.dir.path().join("state/tka/pins.json")) & 0o777,
        0o600
    );

    let out = run(tailnet.tka(&sandbox, port).args(["list", "-o", "yaml"]));
    assert!(stdout(&out).contains("cluster: prod"), "{}", stdout(&out));
}

#[test]
fn a_second_server_claiming_a_name_is_a_conflict_and_the_name_stays_pinned() {
    let sandbox = Sandbox::new();
    let tailnet = Tailnet::start();
    let (port, mut ls) = listeners(&[ip(2), ip(3)]);
    let impostor = serve_cluster(ls.pop().unwrap(), "prod", false);
    let prod = serve_cluster(ls.pop().unwrap(), "prod", false);
    let first = tailnet.server("tag:tka", "tka-prod", ip(2));

    let out = run(tailnet.tka(&sandbox, port).arg("list"));
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(
        pins(&sandbox)["clusters"]["prod"]["node"]["id"],
        first.stable_id.to_string()
    );

    // Another node starts claiming the name.
    tailnet.server("tag:tka", "tka-impostor", ip(3));
    let out = run(tailnet.tka(&sandbox, port).arg("list"));
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    insta::assert_snapshot!("list_conflict", stdout(&out));
    assert_eq!(
        pins(&sandbox)["clusters"]["prod"]["node"]["id"],
        first.stable_id.to_string()
    );

    // Login without --server goes to the pinned node, not to the impostor.
    prod.on_login(login_response("https://prod.api.example:6443"));
    impostor.on_login(login_response("https://evil.example:6443"));
    let out = run(tailnet.tka(&sandbox, port).args(["login", "prod"]));
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(prod.calls("POST", "/api/v1/login"), 1);
    assert_eq!(impostor.calls("POST", "/api/v1/login"), 0);
    assert!(
        sandbox
            .read_kubeconfig()
            .contains("https://prod.api.example:6443")
    );
    assert!(!sandbox.read_kubeconfig().contains("evil.example"));

    // With the pinned node gone, the impostor is still not trusted: a clear error naming both.
    tailnet.tailnet.set_online(&first.stable_id, false).unwrap();
    let out = run(tailnet.tka(&sandbox, port).args(["login", "prod"]));
    assert_eq!(out.status.code(), Some(1));
    insta::assert_snapshot!("login_conflict", stderr(&out));
    assert_eq!(impostor.calls("POST", "/api/v1/login"), 0);
}

#[test]
fn tailscaled_down_is_one_error_naming_the_socket_and_the_flag() {
    let sandbox = Sandbox::new();
    let out = run(sandbox.tka().arg("list"));
    assert_eq!(out.status.code(), Some(5));
    let err = stderr(&out).replace(&sandbox.dir.path().display().to_string(), "[sandbox]");
    insta::assert_snapshot!("list_tailscaled_down", err);
    assert_eq!(stdout(&out), "");

    // The same command works once tailscaled answers.
    let tailnet = Tailnet::start();
    let (port, mut ls) = listeners(&[ip(2)]);
    let _prod = serve_cluster(ls.pop().unwrap(), "prod", false);
    tailnet.server("tag:tka", "tka-prod", ip(2));
    let out = run(tailnet.tka(&sandbox, port).arg("list"));
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
}

#[test]
fn no_servers_found_names_the_tag_and_the_policy() {
    let sandbox = Sandbox::new();
    let tailnet = Tailnet::start();
    let (port, mut ls) = listeners(&[ip(2)]);
    let _prod = serve_cluster(ls.pop().unwrap(), "prod", false);
    tailnet.server("tag:k8s-auth", "tka-prod", ip(2));

    let out = run(tailnet.tka(&sandbox, port).arg("list"));
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.starts_with("error: no tka servers found: no peer on the tailnet carries tag:tka\n"),
        "{err}"
    );
    assert!(
        err.contains("the tailnet policy must let this device reach the servers tagged tag:tka"),
        "{err}"
    );

    // The server tag is a setting.
    let out = run(tailnet
        .tka(&sandbox, port)
        .args(["list", "--server-tag", "tag:k8s-auth"]));
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(stdout(&out).contains("prod"));
}

#[test]
fn an_unreachable_server_is_listed_and_the_others_still_are() {
    let sandbox = Sandbox::new();
    let tailnet = Tailnet::start();
    let (port, mut ls) = listeners(&[ip(2), ip(3)]);
    drop(ls.pop()); // nothing listens on 127.0.0.3 now
    let _prod = serve_cluster(ls.pop().unwrap(), "prod", false);
    tailnet.server("tag:tka", "tka-prod", ip(2));
    tailnet.server("tag:tka", "tka-broken", ip(3));

    let out = run(tailnet.tka(&sandbox, port).arg("list"));
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    insta::assert_snapshot!("list_unreachable", redact_port(&stdout(&out), port));
    assert!(stderr(&out).contains("tag:tka"), "{}", stderr(&out));
}

#[test]
fn config_file_servers_and_tag_are_used() {
    let sandbox = Sandbox::new();
    let (_, mut ls) = listeners(&[ip(1)]);
    let listener = ls.pop().unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let _configured = serve_cluster(listener, "lab", false);
    let config_dir = sandbox.dir.path().join("config/tka");
    std::fs::create_dir_all(&config_dir).unwrap();
    std::fs::write(
        config_dir.join("config.toml"),
        format!("server_tag = \"tag:k8s-auth\"\n\n[[servers]]\nurl = \"{url}\"\n"),
    )
    .unwrap();

    // Without tailscaled the configured server is still asked (with a warning).
    let out = run(sandbox.tka().args(["list", "-o", "json"]));
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let list: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(list[0]["cluster"], "lab");
    assert_eq!(list[0]["server"], url);
    assert!(stderr(&out).contains("asking only the servers in the config file"));

    // With tailscaled: peers with the configured tag are asked too, tag:tka ones are not.
    let tailnet = Tailnet::start();
    let (port, mut ls) = listeners(&[ip(2), ip(3)]);
    let untagged = serve_cluster(ls.pop().unwrap(), "other", false);
    let tagged = serve_cluster(ls.pop().unwrap(), "prod", false);
    tailnet.server("tag:k8s-auth", "tka-prod", ip(2));
    tailnet.server("tag:tka", "tka-other", ip(3));
    let out = run(tailnet.tka(&sandbox, port).args(["list", "-o", "json"]));
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let list: Value = serde_json::from_str(&stdout(&out)).unwrap();
    let clusters: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["cluster"].as_str().unwrap())
        .collect();
    assert_eq!(clusters, ["lab", "prod"]);
    assert_eq!(tagged.calls("GET", "/api/v1/cluster"), 1);
    assert_eq!(untagged.requests().len(), 0);

    // A malformed config file is an error that names it.
    std::fs::write(config_dir.join("config.toml"), "servers = 3\n").unwrap();
    let out = run(sandbox.tka().arg("list"));
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("config.toml is not valid"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn login_all_logs_in_to_every_listed_cluster_and_status_shows_the_sessions() {
    let sandbox = Sandbox::new();
    let tailnet = Tailnet::start();
    let (port, mut ls) = listeners(&[ip(2), ip(3)]);
    let staging = serve_cluster(ls.pop().unwrap(), "staging", false);
    let prod = serve_cluster(ls.pop().unwrap(), "prod", false);
    tailnet.server("tag:tka", "tka-prod", ip(2));
    tailnet.server("tag:tka", "tka-staging", ip(3));
    prod.on_login(login_response("https://prod.api.example:6443"));
    let mut staging_login = login_response("https://staging.api.example:6443");
    staging_login["cluster"]["name"] = json!("staging");
    staging.on_login(staging_login);

    // Before any login: who this device is, and no sessions.
    let out = run(tailnet.tka(&sandbox, port).arg("status"));
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(
        text.starts_with("Tailnet: alice@example.com on laptop.example.ts.net"),
        "{text}"
    );
    assert!(text.contains("No tka sessions in"), "{text}");

    let out = run(tailnet.tka(&sandbox, port).args(["login", "--all"]));
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(prod.calls("POST", "/api/v1/login"), 1);
    assert_eq!(staging.calls("POST", "/api/v1/login"), 1);
    let config = sandbox.read_kubeconfig();
    assert!(
        config.contains("tka-prod") && config.contains("tka-staging"),
        "{config}"
    );

    // status reads the kubeconfig and the cache only: no server call.
    let before = prod.requests().len() + staging.requests().len();
    let out = run(tailnet.tka(&sandbox, port).args(["status", "-o", "json"]));
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let report: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(report["tailnet"]["user"], "alice@example.com");
    assert_eq!(report["tailnet"]["device"], "laptop.example.ts.net");
    let sessions = report["sessions"].as_array().unwrap();
    assert_eq!(sessions.len(), 2);
    assert!(
        sessions
            .iter()
            .all(|s| s["expiresAt"].is_string() && s["remaining"].is_string())
    );
    assert_eq!(prod.requests().len() + staging.requests().len(), before);

    // Without tailscaled, status still shows the sessions, with a warning.
    let out = run(sandbox.tka().arg("status"));
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("prod (context tka-prod"),
        "{}",
        stdout(&out)
    );
    assert!(
        stderr(&out).contains("--tailscale-socket"),
        "{}",
        stderr(&out)
    );

    // logout without --server, nothing in the kubeconfig for the name: discovery finds it.
    prod.on_logout();
    let out = run(tailnet.tka(&sandbox, port).args(["logout", "prod"]));
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let out = run(tailnet.tka(&sandbox, port).args(["logout", "prod"]));
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(prod.calls("DELETE", "/api/v1/session"), 2);
}

#[test]
fn status_refresh_asks_each_sessions_server() {
    let sandbox = Sandbox::new();
    let tailnet = Tailnet::start();
    let (port, mut ls) = listeners(&[ip(2)]);
    let prod = serve_cluster(ls.pop().unwrap(), "prod", true);
    tailnet.server("tag:tka", "tka-prod", ip(2));
    prod.on_login(login_response("https://prod.api.example:6443"));
    let out = run(tailnet.tka(&sandbox, port).args(["login", "prod"]));
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));

    // The server says the session ends at SESSION_END with role admin.
    prod.mount(
        Mock::given(method("GET"))
            .and(path("/api/v1/session"))
            .respond_with(
                ResponseTemplate::new(200)
                    .set_body_json(cluster_json("prod", true)["session"].clone()),
            ),
    );
    let out = run(tailnet
        .tka(&sandbox, port)
        .args(["status", "--refresh", "-o", "json"]));
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let report: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(report["sessions"][0]["role"], "admin");
    assert_eq!(report["sessions"][0]["expiresAt"], SESSION_END);
    assert_eq!(prod.calls("GET", "/api/v1/session"), 1);

    // Without --refresh the server is not asked.
    let out = run(tailnet.tka(&sandbox, port).arg("status"));
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("* prod (context tka-prod"),
        "{}",
        stdout(&out)
    );
    assert_eq!(prod.calls("GET", "/api/v1/session"), 1);
}

#[test]
fn hostile_node_names_and_server_errors_are_escaped_in_list() {
    use crate::hostile::{HOSTILE, assert_escaped, assert_inert};
    let sandbox = Sandbox::new();
    let tailnet = Tailnet::start();
    let (port, mut ls) = listeners(&[ip(2), ip(3)]);
    let failing = Server::on(ls.pop().unwrap());
    failing.mount(
        Mock::given(method("GET"))
            .and(path("/api/v1/cluster"))
            .respond_with(crate::support::problem(500, "internal", HOSTILE, None)),
    );
    let _prod = serve_cluster(ls.pop().unwrap(), "prod", true);
    tailnet.server("tag:tka", HOSTILE, ip(2));
    tailnet.server("tag:tka", "tka-broken", ip(3));

    let out = run(tailnet.tka(&sandbox, port).arg("list"));
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = stdout(&out);
    // The node's name and the failing server's detail, each escaped on its row.
    assert_escaped(&text);
    assert_eq!(text.matches("\\u{1b}[2J").count(), 2, "{text}");
    assert!(
        text.contains("\ntka-broken") || text.contains(" tka-broken "),
        "{text}"
    );
    assert!(text.contains("prod "), "{text}");
    assert_inert(&stderr(&out));

    // JSON carries the exact strings.
    let out = run(tailnet.tka(&sandbox, port).args(["list", "-o", "json"]));
    assert_inert(&stdout(&out));
    let list: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(list[0]["node"], HOSTILE);
    assert_eq!(list[0]["cluster"], "prod");
    assert_eq!(list[1]["node"], "tka-broken");
    assert_eq!(list[1]["error"], HOSTILE);
}

#[test]
fn login_through_discovery_says_the_server_was_found_and_did_not_answer() {
    let sandbox = Sandbox::new();
    let tailnet = Tailnet::start();
    let (port, mut ls) = listeners(&[ip(2), ip(3)]);
    let idle = ls.pop().unwrap();
    let prod = serve_cluster(ls.pop().unwrap(), "prod", false);
    tailnet.server("tag:tka", "tka-prod", ip(2));

    // While it answers, `tka list` pins the name to it.
    let out = run(tailnet.tka(&sandbox, port).arg("list"));
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(
        pins(&sandbox)["clusters"]["prod"]["node"]["name"],
        "tka-prod"
    );

    // The pinned server stops answering: the login says so (as `tka list` does), not that no
    // server is known.
    drop(prod);
    let out = run(tailnet.tka(&sandbox, port).args(["login", "prod"]));
    assert_eq!(out.status.code(), Some(5), "{}", stderr(&out));
    let err = redact_port(&stderr(&out), port);
    assert!(
        err.starts_with(
            "error: the tka server of cluster 'prod' was found on the tailnet but did not answer: \
             tka-prod (cannot reach the tka server at http://127.0.0.2:[port]: connection refused)\n"
        ),
        "{err}"
    );
    assert!(
        err.contains("hint: check that the server is up and that the tailnet policy lets this device reach tag:tka"),
        "{err}"
    );
    assert!(!err.contains("no tka server known"), "{err}");

    // A first login, nothing pinned, the only server silent: it was found and did not answer.
    let fresh = Sandbox::new();
    drop(idle); // nothing listens on 127.0.0.3
    tailnet.server("tag:tka", "tka-new", ip(3));
    let out = run(tailnet.tka(&fresh, port).args(["login", "staging"]));
    assert_eq!(out.status.code(), Some(5), "{}", stderr(&out));
    let err = redact_port(&stderr(&out), port);
    assert!(
        err.starts_with(
            "error: no tka server that answered serves cluster 'staging'; found on the tailnet but \
             not answering: "
        ),
        "{err}"
    );
    assert!(err.contains("tka-new (cannot reach"), "{err}");
    assert!(err.contains("tka-prod (cannot reach"), "{err}");

    // When every server answers and none serves the name, no server is known (exit 2).
    let (port, mut ls) = listeners(&[ip(4)]);
    let _lab = serve_cluster(ls.pop().unwrap(), "lab", false);
    let tailnet = Tailnet::start();
    tailnet.server("tag:tka", "tka-lab", ip(4));
    let out = run(tailnet.tka(&fresh, port).args(["login", "staging"]));
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).starts_with("error: no tka server known for cluster 'staging'\n"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn list_shows_which_clusters_are_reached_through_the_proxy() {
    let sandbox = Sandbox::new();
    let tailnet = Tailnet::start();
    let (port, mut ls) = listeners(&[ip(2), ip(3), ip(4)]);
    let serve = |listener, name: &str, proxy: Option<(&str, bool)>| {
        let mut body = cluster_json(name, false);
        if let Some((url, direct_tokens)) = proxy {
            body["cluster"]["proxy"] = json!(url);
            body["cluster"]["directTokens"] = json!(direct_tokens);
        }
        let server = Server::on(listener);
        server.mount(
            Mock::given(method("GET"))
                .and(path("/api/v1/cluster"))
                .respond_with(ResponseTemplate::new(200).set_body_json(body)),
        );
        server
    };
    let lab = serve(
        ls.pop().unwrap(),
        "lab",
        Some(("http://tka-lab.example.ts.net:8443", true)),
    );
    let _prod = serve(
        ls.pop().unwrap(),
        "prod",
        Some(("http://tka-prod.example.ts.net:8443", false)),
    );
    let _dev = serve(ls.pop().unwrap(), "dev", None);
    tailnet.server("tag:tka", "tka-dev", ip(2));
    tailnet.server("tag:tka", "tka-prod", ip(3));
    tailnet.server("tag:tka", "tka-lab", ip(4));

    let out = run(tailnet.tka(&sandbox, port).arg("list"));
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = stdout(&out);
    let row = |cluster: &str| {
        text.lines()
            .find(|l| l.starts_with(cluster))
            .unwrap_or_else(|| panic!("no {cluster} in {text}"))
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
    };
    assert!(row("dev").starts_with("dev tka-dev direct "), "{text}");
    assert!(row("lab").starts_with("lab tka-lab proxy "), "{text}");
    assert!(
        row("prod").starts_with("prod tka-prod proxy only "),
        "{text}"
    );

    let out = run(tailnet.tka(&sandbox, port).args(["list", "-o", "json"]));
    let list: Value = serde_json::from_str(&stdout(&out)).unwrap();
    let entry = |cluster: &str| {
        list.as_array()
            .unwrap()
            .iter()
            .find(|e| e["cluster"] == cluster)
            .cloned()
            .unwrap()
    };
    assert_eq!(entry("dev")["via"], "direct");
    assert_eq!(entry("lab")["via"], "proxy");
    assert_eq!(entry("lab")["directTokens"], true);
    assert_eq!(entry("prod")["via"], "proxy");
    assert_eq!(entry("prod")["directTokens"], false);

    // A login found by discovery goes through the proxy the server offered, without asking the
    // server a second time.
    let mut response = crate::support::proxied_login_response("http://tka-lab.example.ts.net:8443");
    response["cluster"]["name"] = json!("lab");
    lab.on_login(response);
    let asked = lab.calls("GET", "/api/v1/cluster");
    let out = run(tailnet.tka(&sandbox, port).args(["login", "lab"]));
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(lab.calls("GET", "/api/v1/cluster"), asked + 1);
    assert_eq!(lab.sent_logins(), [json!({"via": "proxy"})]);
    let written = std::fs::read_to_string(sandbox.kubeconfig()).unwrap();
    assert!(
        written.contains("server: http://tka-lab.example.ts.net:8443"),
        "{written}"
    );
    assert!(
        !written.contains("exec:") && !written.contains("token:"),
        "{written}"
    );
}

/// Every directory and regular file under `dir`, depth first (symlinks not followed).
fn walk(dir: &std::path::Path, out: &mut Vec<(std::path::PathBuf, std::fs::Metadata)>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let meta = std::fs::symlink_metadata(&path).unwrap();
        out.push((path.clone(), meta.clone()));
        if meta.is_dir() {
            walk(&path, out);
        }
    }
}

#[test]
fn every_file_and_directory_tka_writes_is_private_and_only_the_cache_holds_the_token() {
    use std::os::unix::fs::PermissionsExt;

    let sandbox = Sandbox::new();
    let tailnet = Tailnet::start();
    let (port, mut ls) = listeners(&[ip(2)]);
    let prod = serve_cluster(ls.pop().unwrap(), "prod", false);
    tailnet.server("tag:tka", "tka-prod", ip(2));
    prod.on_login(login_response("https://prod.api.example:6443"));
    // Everything tka writes in a login found by discovery: the pin, the kubeconfig (and its
    // directory) and the token cache entry.
    for args in [&["list"][..], &["login", "prod"]] {
        let out = run(tailnet.tka(&sandbox, port).args(args));
        assert_eq!(out.status.code(), Some(0), "{args:?}: {}", stderr(&out));
    }
    // And what the exec plugin writes on a cache miss, as kubectl runs it from the kubeconfig:
    // the cache directory, the entry's lock and the entry.
    let config: serde_yaml::Value = serde_yaml::from_str(&sandbox.read_kubeconfig()).unwrap();
    let exec_args: Vec<&str> = config["users"][0]["user"]["exec"]["args"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|arg| arg.as_str().unwrap())
        .collect();
    std::fs::remove_dir_all(sandbox.cache_dir()).unwrap();
    prod.on_token(crate::support::REFRESHED);
    let out = run(tailnet.tka(&sandbox, port).args(&exec_args));
    assert_eq!(
        out.status.code(),
        Some(0),
        "{exec_args:?}: {}",
        stderr(&out)
    );
    assert!(stdout(&out).contains(crate::support::REFRESHED));
    let root = sandbox.dir.path();
    let mut found = Vec::new();
    walk(root, &mut found);
    let mut files = Vec::new();
    for (path, meta) in &found {
        let relative = path.strip_prefix(root).unwrap();
        // The home directory is the test's own (made before tka ran, with the umask's mode).
        if relative == std::path::Path::new("home") {
            continue;
        }
        let mode = meta.permissions().mode() & 0o777;
        if meta.is_dir() {
            assert_eq!(
                mode,
                0o700,
                "{} is a directory tka made",
                relative.display()
            );
        } else {
            assert!(
                meta.is_file(),
                "{} is neither a file nor a directory",
                relative.display()
            );
            assert_eq!(mode, 0o600, "{} is a file tka wrote", relative.display());
            files.push(relative.to_owned());
        }
    }
    // The walk saw what a login writes, so the modes above were checked on real files.
    let named = |f: &dyn Fn(&str) -> bool| files.iter().any(|p| f(&p.display().to_string()));
    assert!(named(&|p| p == "kube/config"), "{files:?}");
    assert!(named(&|p| p == "state/tka/pins.json"), "{files:?}");
    assert!(
        named(&|p| p.starts_with("cache/tka/") && p.ends_with(".json")),
        "{files:?}"
    );
    assert!(
        named(&|p| p.starts_with("cache/tka/") && p.ends_with(".lock")),
        "{files:?}"
    );
    // A token is in the cache entry and nowhere else: the kubeconfig holds the exec entry.
    let holding: Vec<_> = files
        .iter()
        .filter(|p| {
            std::fs::read_to_string(root.join(p)).is_ok_and(|text| {
                text.contains(crate::support::TOKEN) || text.contains(crate::support::REFRESHED)
            })
        })
        .collect();
    assert_eq!(holding.len(), 1, "{holding:?}");
    assert!(holding[0].starts_with("cache/tka"), "{holding:?}");
}
