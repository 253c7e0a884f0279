//! `FakeTailnet` itself: the in-process provider answers as the socket does, every daemon style
//! reads the same, and changes to the tailnet show at once.

use std::net::SocketAddr;

use serde_json::{Value, json};
use tka_core::identity::{
    IdentityError, IdentityProvider, TailnetStatus, WhoisRequest, WhoisTarget,
};
use tka_testkit::tailnet::{DaemonStyle, FakeTailnet, PeerSpec, TAGGED_DEVICES_USER_ID};

const CAP: &str = "tka.dev/cap/kubernetes";

fn local(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// A small tailnet: a user device with grants and groups, a tagged device, a bare user device.
fn sample() -> (FakeTailnet, Vec<WhoisRequest>) {
    let tailnet = FakeTailnet::new();
    let alice = tailnet.add(
        PeerSpec::user("alice@example.com", "alice-laptop")
            .groups(["group:sre", "group:dev"])
            .capability(CAP, json!({"role": "sre", "maxTTL": "4h"}))
            .service_capability("svc:k8s", CAP, json!({"role": "admin"})),
    );
    let ci = tailnet.add(
        PeerSpec::tagged(["tag:ci"], "ci-runner").capability(CAP, json!({"role": "deployer"})),
    );
    let bob = tailnet.add(PeerSpec::user("bob@example.com", "bob-desktop"));
    tailnet.set_self(&bob.stable_id).unwrap();
    tailnet
        .bind_connection(local(42001), &alice.stable_id)
        .unwrap();
    let requests = vec![
        WhoisRequest::connection(local(42001)),
        WhoisRequest::connection(local(42001)).for_service("svc:k8s"),
        WhoisRequest::connection(ci.tailnet_addr(5000)),
        WhoisRequest::address(ci.ipv6.into()),
        WhoisRequest::address(bob.ipv4.into()),
        WhoisRequest::connection(local(42999)),
        WhoisRequest::connection(local(42001)).for_service("not-a-service"),
    ];
    (tailnet, requests)
}

fn outcome(result: Result<tka_core::Identity, IdentityError>) -> Result<Value, String> {
    result
        .map(|id| serde_json::to_value(id).unwrap())
        .map_err(|e| match e {
            IdentityError::NotInTailnet(t) => format!("not in tailnet: {t}"),
            IdentityError::Rejected { status, body } => format!("rejected {status}: {body}"),
            other => format!("other: {other}"),
        })
}

#[tokio::test]
async fn in_process_answers_match_the_socket() {
    let (tailnet, requests) = sample();
    let server = tailnet.serve().await.unwrap();
    let client = server
        .client()
        .with_loopback_retry(tka_core::identity::LoopbackRetry {
            attempts: 1,
            delay: std::time::Duration::ZERO,
        });

    let mut found = 0;
    for request in &requests {
        let in_process = outcome(tailnet.lookup(request).await);
        let over_socket = outcome(client.lookup(request).await);
        assert_eq!(in_process, over_socket, "{request:?}");
        found += usize::from(in_process.is_ok());
    }
    assert_eq!(found, 5, "five of the requests name a node");

    assert_eq!(
        tailnet.status().await.unwrap(),
        client.status().await.unwrap()
    );
}

#[tokio::test]
async fn every_daemon_style_reads_the_same() {
    let (tailnet, requests) = sample();
    let server = tailnet.serve().await.unwrap();
    let client = server.client();

    let mut expected = Vec::new();
    for request in &requests {
        expected.push(outcome(client.lookup(request).await));
    }
    let expected_status = client.status().await.unwrap();
    assert!(expected[0].is_ok() && expected_status.require_self().is_ok());

    for style in DaemonStyle::ALL {
        tailnet.set_daemon_style(style);
        for (request, expected) in requests.iter().zip(&expected) {
            let got = outcome(client.lookup(request).await);
            assert_eq!(&got, expected, "{style:?} {request:?}");
        }
        assert_eq!(client.status().await.unwrap(), expected_status, "{style:?}");
    }
}

#[test]
fn styles_differ_on_the_wire() {
    let tailnet = FakeTailnet::new();
    let bob = tailnet.add(PeerSpec::user("bob@example.com", "bob-desktop"));
    let addr = bob.ipv4.to_string();
    let raw = |style| {
        tailnet.set_daemon_style(style);
        serde_json::from_str::<Value>(&tailnet.answer_whois(Some(&addr), None).body).unwrap()
    };

    let current = raw(DaemonStyle::Current);
    assert_eq!(current["CapMap"], Value::Null);
    assert!(current["Node"].get("Tags").is_none());
    assert!(current["UserProfile"].get("Groups").is_none());

    let zero = raw(DaemonStyle::ZeroValues);
    assert_eq!(zero["Node"]["Tags"], Value::Null);
    assert_eq!(zero["UserProfile"]["Groups"], Value::Null);
    assert_eq!(zero["UserProfile"]["Roles"], json!([]));
    assert_eq!(zero["Node"]["KeyExpiry"], json!("0001-01-01T00:00:00Z"));

    let sparse = raw(DaemonStyle::Sparse);
    assert!(sparse.get("CapMap").is_none());
    assert!(sparse["Node"].get("Hostinfo").is_none());

    let extended = raw(DaemonStyle::Extended);
    assert!(extended.get("FutureWhoisField").is_some());
    assert!(extended["Node"]["CapMap"].get(CAP).is_some());
}

#[tokio::test]
async fn node_attributes_are_not_grants() {
    let tailnet = FakeTailnet::new();
    tailnet.set_daemon_style(DaemonStyle::Extended);
    let bob = tailnet.add(PeerSpec::user("bob@example.com", "bob-desktop"));
    let alice = tailnet.add(
        PeerSpec::user("alice@example.com", "alice-laptop").capability(CAP, json!({"role": "sre"})),
    );
    // Extended answers carry Node.CapMap[CAP]; only the top-level CapMap holds grants.
    assert!(
        tailnet
            .whois(bob.tailnet_addr(1))
            .await
            .unwrap()
            .capabilities
            .is_empty()
    );
    assert_eq!(
        tailnet
            .whois(alice.tailnet_addr(1))
            .await
            .unwrap()
            .capabilities,
        vec![json!({"role": "sre"})]
    );
}

#[tokio::test]
async fn tagging_a_device_makes_it_act_as_its_tags() {
    let tailnet = FakeTailnet::new();
    let laptop = tailnet.add(PeerSpec::user("alice@example.com", "build-box"));
    let addr = laptop.tailnet_addr(1);
    let before = tailnet.whois(addr).await.unwrap();
    assert!(!before.is_tagged());
    assert_eq!(before.user.login_name.as_str(), "alice@example.com");

    tailnet.set_tags(&laptop.stable_id, ["tag:build"]).unwrap();
    let after = tailnet.whois(addr).await.unwrap();
    assert!(after.is_tagged());
    assert_eq!(after.user.login_name.as_str(), "tagged-devices");
    assert_eq!(after.user.id, TAGGED_DEVICES_USER_ID);
    assert_eq!(after.key(), before.key(), "the device keeps its key");
    assert_eq!(
        tailnet.peer(&laptop.stable_id).unwrap().login_name,
        "tagged-devices"
    );

    tailnet
        .set_tags(&laptop.stable_id, Vec::<String>::new())
        .unwrap();
    assert!(!tailnet.whois(addr).await.unwrap().is_tagged());
}

#[tokio::test]
async fn an_unreadable_tag_is_refused_not_dropped() {
    let tailnet = FakeTailnet::new();
    let odd = tailnet.add(PeerSpec::tagged(["ci"], "odd-runner"));
    let fine = tailnet.add(PeerSpec::tagged(["tag:ci"], "runner"));
    assert!(matches!(
        tailnet.whois(odd.tailnet_addr(1)).await,
        Err(IdentityError::Malformed(_))
    ));
    assert!(tailnet.whois(fine.tailnet_addr(1)).await.is_ok());
}

#[tokio::test]
async fn groups_and_capabilities_change_at_once() {
    let tailnet = FakeTailnet::new();
    let alice = tailnet.add(PeerSpec::user("alice@example.com", "alice-laptop"));
    let addr = alice.tailnet_addr(1);
    assert!(tailnet.whois(addr).await.unwrap().groups.is_empty());

    tailnet.set_groups(&alice.stable_id, ["group:sre"]).unwrap();
    tailnet
        .set_capability(
            &alice.stable_id,
            CAP,
            vec![json!({"role": "sre"}), json!({"role": "sre"})],
        )
        .unwrap();
    let id = tailnet.whois(addr).await.unwrap();
    assert_eq!(id.groups, vec!["group:sre".to_owned()]);
    assert_eq!(
        id.capabilities.len(),
        2,
        "duplicates are kept, as grants concatenate"
    );

    tailnet
        .set_service_capability(
            &alice.stable_id,
            "svc:k8s",
            CAP,
            vec![json!({"role": "admin"})],
        )
        .unwrap();
    let for_service = tailnet
        .lookup(&WhoisRequest::connection(addr).for_service("svc:k8s"))
        .await
        .unwrap();
    assert_eq!(for_service.capabilities, vec![json!({"role": "admin"})]);
}

#[tokio::test]
async fn a_removed_node_is_no_longer_in_the_tailnet() {
    let tailnet = FakeTailnet::new();
    let alice = tailnet.add(PeerSpec::user("alice@example.com", "alice-laptop"));
    let bob = tailnet.add(PeerSpec::user("bob@example.com", "bob-desktop"));
    tailnet
        .bind_connection(local(42002), &alice.stable_id)
        .unwrap();
    assert!(tailnet.whois(local(42002)).await.is_ok());

    tailnet.remove(&alice.stable_id).unwrap();
    assert!(matches!(
        tailnet.whois(local(42002)).await,
        Err(IdentityError::NotInTailnet(WhoisTarget::Connection(_)))
    ));
    assert!(matches!(
        tailnet.whois(alice.tailnet_addr(1)).await,
        Err(IdentityError::NotInTailnet(_))
    ));
    assert!(tailnet.whois(bob.tailnet_addr(1)).await.is_ok());
    // Changing a node that is gone is reported, not ignored.
    assert!(tailnet.set_tags(&alice.stable_id, ["tag:x"]).is_err());
    assert!(
        tailnet
            .bind_connection(local(42003), &alice.stable_id)
            .is_err()
    );
    assert!(tailnet.remove(&alice.stable_id).is_err());
}

#[test]
fn addresses_are_allocated_in_the_tailnet_ranges() {
    let tailnet = FakeTailnet::new();
    let peers: Vec<_> = (0..300)
        .map(|i| tailnet.add(PeerSpec::user("alice@example.com", &format!("host-{i}"))))
        .collect();
    let mut seen = std::collections::HashSet::<std::net::IpAddr>::new();
    for peer in &peers {
        let [a, b, ..] = peer.ipv4.octets();
        assert_eq!(a, 100);
        assert_eq!(b & 0xc0, 64, "{} is outside 100.64.0.0/10", peer.ipv4);
        assert_eq!(&peer.ipv6.segments()[..3], &[0xfd7a, 0x115c, 0xa1e0]);
        for ip in peer.addresses() {
            assert!(seen.insert(ip), "{ip} handed out twice");
        }
        assert_eq!(peer.user_id, peers[0].user_id, "one user, one ID");
    }
    let distinct_ids: std::collections::HashSet<_> =
        peers.iter().map(|p| p.stable_id.clone()).collect();
    assert_eq!(distinct_ids.len(), peers.len());
}

#[tokio::test]
async fn a_daemon_that_is_not_ready_fails_in_process_too() {
    let tailnet = FakeTailnet::new();
    let alice = tailnet.add(PeerSpec::user("alice@example.com", "alice-laptop"));
    tailnet.set_daemon_ready(false);
    assert!(matches!(
        tailnet.whois(alice.tailnet_addr(1)).await,
        Err(IdentityError::DaemonUnavailable(_))
    ));
    assert!(matches!(
        tailnet.status().await,
        Err(IdentityError::DaemonUnavailable(_))
    ));
    tailnet.set_daemon_ready(true);
    assert!(tailnet.whois(alice.tailnet_addr(1)).await.is_ok());
}
