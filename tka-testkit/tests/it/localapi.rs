//! `TailscaleLocalApi` (tka-core, feature `localapi`) against `FakeTailnet` over a real Unix
//! socket: the wire protocol, the headers tailscaled insists on, the errors a user sees, the
//! loopback retry, status and its CLI fallback.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Value, json};
use tka_core::identity::wire::LOCALAPI_HOST;
use tka_core::identity::{
    CapabilityNames, IdentityError, IdentityProvider, LoopbackRetry, TailnetStatus,
    TailscaleLocalApi, WhoisRequest, WhoisTarget,
};
use tka_testkit::tailnet::{FakeTailnet, PeerSpec};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const CAP: &str = "tka.dev/cap/kubernetes";
const COMPAT: &str = "specht-labs.de/cap/tka";

fn local(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

fn names_with_compat() -> CapabilityNames {
    CapabilityNames {
        primary: CAP.into(),
        compat: Some(COMPAT.into()),
    }
}

fn whois_requests_for(tailnet: &FakeTailnet, addr: &str) -> usize {
    tailnet
        .requests()
        .iter()
        .filter(|r| r.path == "/localapi/v0/whois" && r.query_param("addr") == Some(addr))
        .count()
}

#[tokio::test]
async fn a_user_device_is_identified_with_its_capabilities() {
    let tailnet = FakeTailnet::new().with_capability_names(names_with_compat());
    let alice = tailnet.add(
        PeerSpec::user("alice@example.com", "alice-laptop")
            .display_name("Alice Example")
            .groups(["group:sre"])
            .capability(CAP, json!({"role": "sre", "clusters": ["prod-*"]}))
            .capability(CAP, json!({"role": "read-only"}))
            .capability(COMPAT, json!({"role": "sre", "period": "4h"}))
            .capability("example.com/cap/unrelated", json!("ignored")),
    );
    tailnet
        .bind_connection(local(41001), &alice.stable_id)
        .unwrap();
    let server = tailnet.serve().await.unwrap();

    let caller = server.client().whois(local(41001)).await.unwrap();

    assert_eq!(caller.key(), &alice.stable_id);
    assert_eq!(caller.node.name, "alice-laptop.example.ts.net");
    assert_eq!(caller.node.addresses, alice.addresses());
    assert!(!caller.is_tagged());
    assert_eq!(caller.user.login_name.as_str(), "alice@example.com");
    assert_eq!(caller.user.display_name, "Alice Example");
    assert_eq!(caller.user.id, alice.user_id);
    assert_eq!(caller.groups, vec!["group:sre".to_owned()]);
    assert_eq!(
        caller.capabilities,
        vec![
            json!({"role": "sre", "clusters": ["prod-*"]}),
            json!({"role": "read-only"})
        ]
    );
    assert_eq!(
        caller.compat_capabilities,
        vec![json!({"role": "sre", "period": "4h"})]
    );
}

#[tokio::test]
async fn compat_values_are_read_only_when_a_compat_name_is_configured() {
    let tailnet = FakeTailnet::new();
    let alice = tailnet.add(
        PeerSpec::user("alice@example.com", "alice-laptop")
            .capability(CAP, json!({"role": "sre"}))
            .capability(COMPAT, json!({"role": "sre", "period": "4h"})),
    );
    let server = tailnet.serve().await.unwrap();
    let addr = alice.tailnet_addr(50000);

    let plain = server.client().whois(addr).await.unwrap();
    assert_eq!(plain.capabilities, vec![json!({"role": "sre"})]);
    assert!(plain.compat_capabilities.is_empty());

    let with_compat = server
        .client()
        .with_capabilities(names_with_compat())
        .whois(addr)
        .await
        .unwrap();
    assert_eq!(with_compat.compat_capabilities.len(), 1);
}

#[tokio::test]
async fn tagged_devices_share_a_user_but_are_keyed_by_node() {
    let tailnet = FakeTailnet::new();
    let ci = tailnet.add(
        PeerSpec::tagged(["tag:ci"], "ci-runner").capability(CAP, json!({"role": "deployer"})),
    );
    let batch = tailnet.add(PeerSpec::tagged(["tag:batch", "tag:ci"], "batch-1"));
    let server = tailnet.serve().await.unwrap();
    let client = server.client();

    let ci_id = client.whois(ci.tailnet_addr(1234)).await.unwrap();
    let batch_id = client.whois(batch.tailnet_addr(1234)).await.unwrap();

    assert!(ci_id.is_tagged());
    assert_eq!(
        ci_id
            .node
            .tags
            .iter()
            .map(|t| t.as_str())
            .collect::<Vec<_>>(),
        ["tag:ci"]
    );
    assert_eq!(ci_id.user.login_name.as_str(), "tagged-devices");
    assert_eq!(ci_id.capabilities, vec![json!({"role": "deployer"})]);
    // One shared user, two identities.
    assert_eq!(ci_id.user.id, batch_id.user.id);
    assert_ne!(ci_id.key(), batch_id.key());
    assert!(ci_id.describe().contains("tag:ci"));
    assert!(batch_id.capabilities.is_empty());
}

#[tokio::test]
async fn a_null_cap_map_means_no_capabilities() {
    let tailnet = FakeTailnet::new();
    let bob = tailnet.add(PeerSpec::user("bob@example.com", "bob-desktop"));
    let carol = tailnet.add(
        PeerSpec::user("carol@example.com", "carol-laptop").capability(CAP, json!({"role": "sre"})),
    );
    let raw: Value =
        serde_json::from_str(&tailnet.answer_whois(Some(&bob.ipv4.to_string()), None).body)
            .unwrap();
    assert_eq!(
        raw["CapMap"],
        Value::Null,
        "the fake must send CapMap: null here"
    );
    let server = tailnet.serve().await.unwrap();

    let bob_id = server.client().whois(bob.tailnet_addr(9)).await.unwrap();
    assert!(bob_id.capabilities.is_empty());
    assert_eq!(bob_id.user.login_name.as_str(), "bob@example.com");
    let carol_id = server.client().whois(carol.tailnet_addr(9)).await.unwrap();
    assert_eq!(carol_id.capabilities.len(), 1);
}

#[tokio::test]
async fn an_unknown_address_is_not_in_the_tailnet() {
    let tailnet = FakeTailnet::new();
    let alice = tailnet.add(PeerSpec::user("alice@example.com", "alice-laptop"));
    tailnet
        .bind_connection(local(41002), &alice.stable_id)
        .unwrap();
    let server = tailnet.serve().await.unwrap();
    let client = server.client();

    let stranger: SocketAddr = "192.0.2.7:443".parse().unwrap();
    match client.whois(stranger).await {
        Err(IdentityError::NotInTailnet(target)) => {
            assert_eq!(target, WhoisTarget::Connection(stranger));
        }
        other => panic!("expected NotInTailnet, got {other:?}"),
    }
    assert!(client.whois(local(41002)).await.is_ok());
}

#[tokio::test]
async fn a_daemon_that_is_not_ready_is_unavailable() {
    let tailnet = FakeTailnet::new();
    let alice = tailnet.add(PeerSpec::user("alice@example.com", "alice-laptop"));
    tailnet
        .bind_connection(local(41010), &alice.stable_id)
        .unwrap();
    let server = tailnet.serve().await.unwrap();
    let client = server.client();

    tailnet.set_daemon_ready(false);
    let err = client.whois(local(41010)).await.unwrap_err();
    assert!(
        matches!(err, IdentityError::DaemonUnavailable(_)),
        "got {err:?}"
    );
    assert!(err.to_string().contains("503"), "{err}");
    assert!(matches!(
        client.status().await,
        Err(IdentityError::DaemonUnavailable(_))
    ));
    // A 503 is not a lagging mapping: asked once, even for a loopback source.
    assert_eq!(whois_requests_for(&tailnet, "127.0.0.1:41010"), 1);

    tailnet.set_daemon_ready(true);
    assert!(client.whois(local(41010)).await.is_ok());
}

#[tokio::test]
async fn a_socket_nobody_listens_on_is_unavailable() {
    let dir = tempfile::tempdir().unwrap();
    let dead = dir.path().join("tailscaled.sock");
    drop(std::os::unix::net::UnixListener::bind(&dead).unwrap());
    assert!(
        dead.exists(),
        "the socket file stays behind, as after a crash"
    );

    let err = TailscaleLocalApi::new(&dead)
        .without_cli_fallback()
        .whois(local(1))
        .await
        .unwrap_err();
    match &err {
        IdentityError::DaemonUnavailable(message) => {
            assert!(message.contains("connection refused"), "{message}");
        }
        other => panic!("expected DaemonUnavailable, got {other:?}"),
    }

    let tailnet = FakeTailnet::new();
    let alice = tailnet.add(PeerSpec::user("alice@example.com", "alice-laptop"));
    let live = tailnet.serve().await.unwrap();
    assert!(live.client().whois(alice.tailnet_addr(1)).await.is_ok());
}

#[tokio::test]
async fn a_missing_socket_names_the_path_and_the_flag() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("run/tailscale/tailscaled.sock");
    let client = TailscaleLocalApi::new(&missing).without_cli_fallback();

    let err = client.whois(local(1)).await.unwrap_err();
    assert!(
        matches!(&err, IdentityError::SocketMissing(p) if p == &missing),
        "{err:?}"
    );
    let message = err.to_string();
    assert!(
        message.contains(&missing.display().to_string()),
        "{message}"
    );
    assert!(message.contains("--tailscale-socket"), "{message}");

    let status_err = client.status().await.unwrap_err();
    assert!(matches!(status_err, IdentityError::SocketMissing(_)));

    let tailnet = FakeTailnet::new();
    let alice = tailnet.add(PeerSpec::user("alice@example.com", "alice-laptop"));
    let live = tailnet.serve().await.unwrap();
    assert!(live.client().whois(alice.tailnet_addr(1)).await.is_ok());
}

/// Sends one raw HTTP/1.1 request with exactly these header lines; returns the status code.
async fn raw_request(socket: &Path, header_lines: &[&str]) -> u16 {
    let mut stream = tokio::net::UnixStream::connect(socket).await.unwrap();
    let mut request = String::from("GET /localapi/v0/status HTTP/1.1\r\n");
    for line in header_lines {
        request.push_str(line);
        request.push_str("\r\n");
    }
    request.push_str("Connection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.unwrap();
    answer
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP answer: {answer:?}"))
}

#[tokio::test]
async fn every_request_carries_the_localapi_host_and_no_origin() {
    let tailnet = FakeTailnet::new();
    let me = tailnet.add(PeerSpec::user("alice@example.com", "alice-laptop"));
    tailnet.set_self(&me.stable_id).unwrap();
    tailnet
        .bind_connection(local(41003), &me.stable_id)
        .unwrap();
    let server = tailnet.serve().await.unwrap();
    let client = server.client();

    client.whois(local(41003)).await.unwrap();
    client
        .lookup(&WhoisRequest::address(me.ipv4.into()).for_service("svc:k8s"))
        .await
        .unwrap();
    let _ = client.whois("192.0.2.1:1".parse().unwrap()).await;
    client.status().await.unwrap();

    let requests = tailnet.requests();
    assert_eq!(requests.len(), 4);
    for request in &requests {
        let hosts: Vec<_> = request.headers.get_all("host").iter().collect();
        assert_eq!(hosts, [LOCALAPI_HOST], "{request:?}");
        assert!(!request.headers.contains_key("origin"), "{request:?}");
        assert!(!request.headers.contains_key("referer"), "{request:?}");
        assert_ne!(request.status, 403, "{request:?}");
    }

    // The fake enforces what tailscaled enforces, so a client that got it wrong would fail above.
    let socket = server.socket_path();
    let host = format!("Host: {LOCALAPI_HOST}");
    assert_eq!(raw_request(socket, &[&host]).await, 200);
    assert_eq!(raw_request(socket, &[]).await, 403);
    assert_eq!(raw_request(socket, &["Host: localhost"]).await, 403);
    assert_eq!(
        raw_request(socket, &[&host, "Origin: http://evil.example"]).await,
        403
    );
    assert_eq!(
        raw_request(socket, &[&host, "Referer: http://evil.example/"]).await,
        403
    );
}

#[tokio::test]
async fn whois_by_bare_address_resolves_the_node() {
    let tailnet = FakeTailnet::new();
    let alice = tailnet.add(PeerSpec::user("alice@example.com", "alice-laptop"));
    let server = tailnet.serve().await.unwrap();
    let client = server.client();

    for ip in alice.addresses() {
        let caller = client.lookup(&WhoisRequest::address(ip)).await.unwrap();
        assert_eq!(caller.key(), &alice.stable_id);
        assert_eq!(whois_requests_for(&tailnet, &ip.to_string()), 1);
    }
    let stranger: IpAddr = "100.64.99.99".parse().unwrap();
    assert!(matches!(
        client.lookup(&WhoisRequest::address(stranger)).await,
        Err(IdentityError::NotInTailnet(WhoisTarget::Address(_)))
    ));
}

#[tokio::test]
async fn svc_name_is_passed_through_and_scopes_the_capabilities() {
    let tailnet = FakeTailnet::new();
    let alice = tailnet.add(
        PeerSpec::user("alice@example.com", "alice-laptop")
            .capability(CAP, json!({"role": "read-only"}))
            .service_capability("svc:k8s-prod", CAP, json!({"role": "sre"})),
    );
    tailnet
        .bind_connection(local(41004), &alice.stable_id)
        .unwrap();
    let server = tailnet.serve().await.unwrap();
    let client = server.client();

    let for_service = client
        .lookup(&WhoisRequest::connection(local(41004)).for_service("svc:k8s-prod"))
        .await
        .unwrap();
    assert_eq!(for_service.capabilities, vec![json!({"role": "sre"})]);
    let last = tailnet.requests().pop().unwrap();
    assert_eq!(last.query_param("svc_name"), Some("svc:k8s-prod"));
    assert_eq!(last.query_param("addr"), Some("127.0.0.1:41004"));

    let plain = client.whois(local(41004)).await.unwrap();
    assert_eq!(plain.capabilities, vec![json!({"role": "read-only"})]);
    assert_eq!(
        tailnet.requests().pop().unwrap().query_param("svc_name"),
        None
    );

    // tailscaled refuses a name that is not svc:<label>, and the client says so.
    match client
        .lookup(&WhoisRequest::connection(local(41004)).for_service("k8s prod&x=1"))
        .await
    {
        Err(IdentityError::Rejected { status: 400, body }) => {
            assert!(body.contains("svc_name"), "{body}");
        }
        other => panic!("expected Rejected 400, got {other:?}"),
    }
    // ... and received it intact: the query was encoded, not spliced.
    let last = tailnet.requests().pop().unwrap();
    assert_eq!(last.query_param("svc_name"), Some("k8s prod&x=1"));
    assert_eq!(last.query.len(), 2);
}

#[tokio::test]
async fn a_lagging_loopback_mapping_is_asked_again() {
    let tailnet = FakeTailnet::new();
    let alice = tailnet.add(PeerSpec::user("alice@example.com", "alice-laptop"));
    tailnet
        .bind_connection_lagging(local(41005), &alice.stable_id, 2)
        .unwrap();
    let server = tailnet.serve().await.unwrap();

    let caller = server.client().whois(local(41005)).await.unwrap();
    assert_eq!(caller.key(), &alice.stable_id);
    assert_eq!(whois_requests_for(&tailnet, "127.0.0.1:41005"), 3);
}

#[tokio::test]
async fn a_mapping_that_never_appears_is_given_up_on() {
    let tailnet = FakeTailnet::new();
    let alice = tailnet.add(PeerSpec::user("alice@example.com", "alice-laptop"));
    tailnet
        .bind_connection_lagging(local(41006), &alice.stable_id, 100)
        .unwrap();
    let server = tailnet.serve().await.unwrap();
    let client = server.client().with_loopback_retry(LoopbackRetry {
        attempts: 4,
        delay: Duration::from_millis(5),
    });

    assert!(matches!(
        client.whois(local(41006)).await,
        Err(IdentityError::NotInTailnet(_))
    ));
    assert_eq!(whois_requests_for(&tailnet, "127.0.0.1:41006"), 4);
}

#[tokio::test]
async fn a_miss_on_a_tailnet_address_is_not_asked_again() {
    let tailnet = FakeTailnet::new();
    let alice = tailnet.add(PeerSpec::user("alice@example.com", "alice-laptop"));
    // A PROXY-protocol source or kernel-networking peer address that is not (yet) known.
    let remote: SocketAddr = "100.64.200.1:41007".parse().unwrap();
    tailnet
        .bind_connection_lagging(remote, &alice.stable_id, 1)
        .unwrap();
    let server = tailnet.serve().await.unwrap();
    let client = server.client();

    assert!(matches!(
        client.whois(remote).await,
        Err(IdentityError::NotInTailnet(_))
    ));
    assert_eq!(whois_requests_for(&tailnet, "100.64.200.1:41007"), 1);
    // The mapping was real; only the retry was withheld.
    assert_eq!(client.whois(remote).await.unwrap().key(), &alice.stable_id);
}

#[tokio::test]
async fn an_ipv4_mapped_source_is_asked_as_ipv4() {
    let tailnet = FakeTailnet::new();
    let alice = tailnet.add(PeerSpec::user("alice@example.com", "alice-laptop"));
    tailnet
        .bind_connection(local(41008), &alice.stable_id)
        .unwrap();
    let server = tailnet.serve().await.unwrap();

    let mapped: SocketAddr = "[::ffff:127.0.0.1]:41008".parse().unwrap();
    let caller = server.client().whois(mapped).await.unwrap();
    assert_eq!(caller.key(), &alice.stable_id);
    assert_eq!(whois_requests_for(&tailnet, "127.0.0.1:41008"), 1);
}

#[tokio::test]
async fn answers_are_never_cached_by_address() {
    let tailnet = FakeTailnet::new();
    let alice = tailnet.add(
        PeerSpec::user("alice@example.com", "alice-laptop").capability(CAP, json!({"role": "sre"})),
    );
    let bob = tailnet.add(PeerSpec::user("bob@example.com", "bob-desktop"));
    tailnet
        .bind_connection(local(41009), &alice.stable_id)
        .unwrap();
    let server = tailnet.serve().await.unwrap();
    let client = server.client();

    assert_eq!(
        client.whois(local(41009)).await.unwrap().key(),
        &alice.stable_id
    );
    // The port is reused for another peer's connection.
    tailnet
        .bind_connection(local(41009), &bob.stable_id)
        .unwrap();
    assert_eq!(
        client.whois(local(41009)).await.unwrap().key(),
        &bob.stable_id
    );
    // Grants change at once too.
    tailnet
        .set_capability(&alice.stable_id, CAP, vec![])
        .unwrap();
    assert!(
        client
            .whois(alice.tailnet_addr(1))
            .await
            .unwrap()
            .capabilities
            .is_empty()
    );
    // A closed connection no longer identifies anyone.
    tailnet.unbind(local(41009));
    let client = client.with_loopback_retry(LoopbackRetry {
        attempts: 1,
        delay: Duration::ZERO,
    });
    assert!(matches!(
        client.whois(local(41009)).await,
        Err(IdentityError::NotInTailnet(_))
    ));
}

#[tokio::test(start_paused = true)]
async fn a_daemon_that_never_answers_times_out() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("silent.sock");
    // Accepts connections (the kernel queues them) but never reads or answers.
    let _silent = tokio::net::UnixListener::bind(&path).unwrap();
    let client = TailscaleLocalApi::new(&path)
        .without_cli_fallback()
        .with_timeout(Duration::from_secs(2));

    match client.whois(local(1)).await {
        Err(IdentityError::Timeout(d)) => assert_eq!(d, Duration::from_secs(2)),
        other => panic!("expected Timeout, got {other:?}"),
    }
    assert!(matches!(
        client.status().await,
        Err(IdentityError::Timeout(_))
    ));
}

#[tokio::test]
async fn the_same_client_settings_work_against_a_daemon_that_answers() {
    let tailnet = FakeTailnet::new();
    let alice = tailnet.add(PeerSpec::user("alice@example.com", "alice-laptop"));
    let server = tailnet.serve().await.unwrap();
    let client = TailscaleLocalApi::new(server.socket_path())
        .without_cli_fallback()
        .with_timeout(Duration::from_secs(2));
    assert!(client.whois(alice.tailnet_addr(1)).await.is_ok());
}

#[tokio::test]
async fn status_lists_the_tailnet_for_discovery() {
    let tailnet = FakeTailnet::new();
    let me = tailnet.add(PeerSpec::user("alice@example.com", "alice-laptop").os("macOS"));
    let prod = tailnet.add(PeerSpec::tagged(["tag:tka"], "tka-prod"));
    let staging =
        tailnet.add(PeerSpec::tagged(["tag:tka", "tag:staging"], "tka-staging").offline());
    tailnet.add(PeerSpec::user("bob@example.com", "bob-desktop"));
    tailnet.set_self(&me.stable_id).unwrap();
    let server = tailnet.serve().await.unwrap();

    let status = server.client().status().await.unwrap();

    let own = status.require_self().unwrap();
    assert_eq!(own.stable_id, me.stable_id);
    assert_eq!(own.os, "macOS");
    assert_eq!(own.addresses, me.addresses());
    assert_eq!(
        status.current_login_name().unwrap().as_str(),
        "alice@example.com"
    );
    assert_eq!(status.magic_dns_suffix, "example.ts.net");
    assert_eq!(status.peers.len(), 3);

    let tka = "tag:tka".parse().unwrap();
    let servers: Vec<_> = status.peers_with_tag(&tka).collect();
    assert_eq!(servers.len(), 2);
    assert_eq!(servers[0].stable_id, prod.stable_id);
    assert_eq!(servers[0].dns_name, "tka-prod.example.ts.net");
    assert_eq!(servers[0].host_name, "tka-prod");
    assert_eq!(servers[0].addresses, prod.addresses());
    assert!(servers[0].online);
    assert_eq!(
        servers[0].login_name.as_ref().unwrap().as_str(),
        "tagged-devices"
    );
    assert_eq!(servers[1].stable_id, staging.stable_id);
    assert!(!servers[1].online);
    let bob = status
        .peers
        .iter()
        .find(|p| p.host_name == "bob-desktop")
        .unwrap();
    assert!(!bob.is_tagged());
    assert_eq!(bob.login_name.as_ref().unwrap().as_str(), "bob@example.com");
}

#[tokio::test]
async fn status_of_a_logged_out_daemon_says_to_run_tailscale_up() {
    let tailnet = FakeTailnet::new();
    let me = tailnet.add(PeerSpec::user("alice@example.com", "alice-laptop"));
    let server = tailnet.serve().await.unwrap();
    let client = server.client();

    let status = client.status().await.unwrap();
    assert!(status.self_node.is_none());
    let err = status.require_self().unwrap_err();
    assert!(matches!(err, IdentityError::NotConnected(ref s) if s == "NeedsLogin"));
    assert!(err.to_string().contains("tailscale up"));

    tailnet.set_self(&me.stable_id).unwrap();
    assert!(client.status().await.unwrap().require_self().is_ok());
}

/// Writes an executable script that checks its arguments and prints `stdout` (or fails).
fn fake_cli(dir: &Path, name: &str, stdout: &str, exit: i32) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join(name);
    let script = format!(
        "#!/bin/sh\n\
         if [ \"$1\" != status ] || [ \"$2\" != --json ]; then echo \"bad args: $*\" >&2; exit 64; fi\n\
         if [ {exit} -ne 0 ]; then echo 'failed to connect to local tailscaled; it does not appear to be running' >&2; exit {exit}; fi\n\
         cat <<'TKA_FIXTURE_EOF'\n{stdout}\nTKA_FIXTURE_EOF\n"
    );
    std::fs::write(&path, script).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

#[tokio::test]
async fn status_falls_back_to_the_cli_where_there_is_no_socket() {
    let tailnet = FakeTailnet::new();
    let me = tailnet.add(PeerSpec::user("alice@example.com", "alice-mac"));
    let prod = tailnet.add(PeerSpec::tagged(["tag:tka"], "tka-prod"));
    tailnet.set_self(&me.stable_id).unwrap();
    let printed = tailnet.answer_status().body;

    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no-such.sock");
    let cli = fake_cli(dir.path(), "tailscale", &printed, 0);

    let status = TailscaleLocalApi::new(&missing)
        .with_cli_binary(&cli)
        .status()
        .await
        .unwrap();
    assert_eq!(status.require_self().unwrap().stable_id, me.stable_id);
    assert_eq!(status.peers.len(), 1);
    assert_eq!(status.peers[0].stable_id, prod.stable_id);

    // Without the fallback the same setup is an error that names the socket.
    assert!(matches!(
        TailscaleLocalApi::new(&missing)
            .without_cli_fallback()
            .status()
            .await,
        Err(IdentityError::SocketMissing(_))
    ));
}

#[tokio::test]
async fn a_failing_or_missing_cli_reports_what_to_fix() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no-such.sock");

    let failing = fake_cli(dir.path(), "tailscale-down", "", 1);
    match TailscaleLocalApi::new(&missing)
        .with_cli_binary(&failing)
        .status()
        .await
    {
        Err(IdentityError::DaemonUnavailable(message)) => {
            assert!(
                message.contains("does not appear to be running"),
                "{message}"
            );
        }
        other => panic!("expected DaemonUnavailable, got {other:?}"),
    }

    // No CLI either: the socket's error, which names the setting.
    let absent = dir.path().join("not-installed");
    let err = TailscaleLocalApi::new(&missing)
        .with_cli_binary(&absent)
        .status()
        .await
        .unwrap_err();
    assert!(
        matches!(&err, IdentityError::SocketMissing(p) if p == &missing),
        "{err:?}"
    );

    // The CLI's own garbage is malformed, not an empty tailnet.
    let garbage = fake_cli(dir.path(), "tailscale-garbage", "not json", 0);
    assert!(matches!(
        TailscaleLocalApi::new(&missing)
            .with_cli_binary(&garbage)
            .status()
            .await,
        Err(IdentityError::Malformed(_))
    ));
}

#[tokio::test]
async fn the_cli_is_not_run_while_the_socket_answers() {
    let tailnet = FakeTailnet::new();
    let me = tailnet.add(PeerSpec::user("alice@example.com", "alice-laptop"));
    tailnet.set_self(&me.stable_id).unwrap();
    let server = tailnet.serve().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let failing = fake_cli(dir.path(), "tailscale", "", 1);

    let status = TailscaleLocalApi::new(server.socket_path())
        .with_cli_binary(&failing)
        .status()
        .await
        .unwrap();
    assert!(status.require_self().is_ok());
}
