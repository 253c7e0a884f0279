//! Every LocalAPI fixture in `tests/fixtures/localapi/` (see the README there) is read by
//! `identity::wire`, and the result agrees with the raw JSON; a `<stem>.expected.json` sidecar
//! pins the exact result. New fixtures are picked up without touching this file.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use serde_json::Value;
use tka_core::identity::wire::{parse_status, parse_whois};
use tka_core::identity::{CapabilityNames, IdentityError};

const PRIMARY: &str = "tka.dev/cap/kubernetes";
const COMPAT: &str = "specht-labs.de/cap/tka";

fn names() -> CapabilityNames {
    CapabilityNames {
        primary: PRIMARY.into(),
        compat: Some(COMPAT.into()),
    }
}

fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/localapi")
}

/// The fixtures (not the sidecars), sorted.
fn fixtures() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(fixture_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            let name = p.file_name().unwrap().to_string_lossy();
            name.ends_with(".json") && !name.ends_with(".expected.json")
        })
        .collect();
    files.sort();
    files
}

fn file_name(path: &Path) -> String {
    path.file_name().unwrap().to_string_lossy().into_owned()
}

fn sidecar(path: &Path) -> Option<Value> {
    let name = file_name(path);
    let stem = name.strip_suffix(".json").unwrap();
    let expected = path.with_file_name(format!("{stem}.expected.json"));
    expected
        .exists()
        .then(|| serde_json::from_slice(&std::fs::read(expected).unwrap()).unwrap())
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| a.iter().map(|s| s.as_str().unwrap().to_owned()).collect())
        .unwrap_or_default()
}

fn values(cap_map: &Value, name: &str) -> Vec<Value> {
    cap_map
        .get(name)
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default()
}

fn check_whois(path: &Path, body: &[u8]) {
    let name = file_name(path);
    let raw: Value = serde_json::from_slice(body).unwrap();
    let identity = parse_whois(body, &names())
        .unwrap_or_else(|e| panic!("{name}: a whois fixture must parse: {e}"));

    let node = &raw["Node"];
    let profile = &raw["UserProfile"];
    assert_eq!(
        identity.key().as_str(),
        node["StableID"].as_str().unwrap(),
        "{name}"
    );
    assert!(
        !identity.node.name.ends_with('.'),
        "{name}: {}",
        identity.node.name
    );
    if let Some(fqdn) = node["Name"].as_str().filter(|n| !n.is_empty()) {
        assert_eq!(identity.node.name, fqdn.trim_end_matches('.'), "{name}");
    }
    let raw_addresses: Vec<IpAddr> = strings(&node["Addresses"])
        .iter()
        .map(|a| a.split('/').next().unwrap().parse().unwrap())
        .collect();
    assert_eq!(identity.node.addresses, raw_addresses, "{name}");
    let raw_tags = strings(&node["Tags"]);
    assert_eq!(
        identity.is_tagged(),
        !raw_tags.is_empty(),
        "{name}: tags decide"
    );
    let tags: Vec<&str> = identity.node.tags.iter().map(|t| t.as_str()).collect();
    assert_eq!(tags, raw_tags, "{name}");
    assert_eq!(
        identity.user.id.0,
        profile["ID"].as_i64().unwrap_or(0),
        "{name}"
    );
    assert_eq!(
        identity.user.login_name.as_str(),
        profile["LoginName"].as_str().unwrap(),
        "{name}"
    );
    assert_eq!(identity.groups, strings(&profile["Groups"]), "{name}");
    assert_eq!(
        identity.capabilities,
        values(&raw["CapMap"], PRIMARY),
        "{name}"
    );
    assert_eq!(
        identity.compat_capabilities,
        values(&raw["CapMap"], COMPAT),
        "{name}"
    );
    // Only the top-level CapMap carries grants; Node.CapMap holds node attributes.
    if !node["CapMap"].is_null() && raw["CapMap"].get(PRIMARY).is_none() {
        assert!(identity.capabilities.is_empty(), "{name}");
    }

    if let Some(expected) = sidecar(path) {
        assert_eq!(serde_json::to_value(&identity).unwrap(), expected, "{name}");
    }
}

fn check_malformed_whois(path: &Path, body: &[u8]) {
    let name = file_name(path);
    match parse_whois(body, &names()) {
        Err(IdentityError::Malformed(message)) => assert!(!message.is_empty(), "{name}"),
        other => panic!("{name}: expected Malformed, got {other:?}"),
    }
}

fn check_status(path: &Path, body: &[u8]) {
    let name = file_name(path);
    let raw: Value = serde_json::from_slice(body).unwrap();
    let status =
        parse_status(body).unwrap_or_else(|e| panic!("{name}: a status fixture must parse: {e}"));

    assert_eq!(
        status.backend_state,
        raw["BackendState"].as_str().unwrap_or(""),
        "{name}"
    );
    let self_id = raw["Self"]["ID"].as_str().unwrap_or("");
    assert_eq!(status.self_node.is_some(), !self_id.is_empty(), "{name}");
    if let Some(me) = &status.self_node {
        assert_eq!(me.stable_id.as_str(), self_id, "{name}");
        let user_id = raw["Self"]["UserID"].as_i64().unwrap();
        let login = raw["User"][user_id.to_string()]["LoginName"].as_str();
        assert_eq!(
            status.current_login_name().map(|l| l.as_str()),
            login,
            "{name}"
        );
    }

    let raw_peers: Vec<&Value> = raw["Peer"]
        .as_object()
        .map(|m| m.values().filter(|p| !p.is_null()).collect())
        .unwrap_or_default();
    let listed: Vec<&Value> = raw_peers
        .iter()
        .copied()
        .filter(|p| !p["ID"].as_str().unwrap_or("").is_empty())
        .collect();
    assert_eq!(status.peers.len(), listed.len(), "{name}");
    let ids: BTreeSet<&str> = status.peers.iter().map(|p| p.stable_id.as_str()).collect();
    assert_eq!(
        ids.len(),
        status.peers.len(),
        "{name}: peers are listed once"
    );
    for raw_peer in listed {
        let id = raw_peer["ID"].as_str().unwrap();
        let peer = status
            .peers
            .iter()
            .find(|p| p.stable_id.as_str() == id)
            .unwrap_or_else(|| panic!("{name}: peer {id} missing"));
        assert!(!peer.dns_name.ends_with('.'), "{name}: {}", peer.dns_name);
        let tags: Vec<&str> = peer.tags.iter().map(|t| t.as_str()).collect();
        assert_eq!(tags, strings(&raw_peer["Tags"]), "{name}: {id}");
        assert_eq!(
            peer.addresses.len(),
            strings(&raw_peer["TailscaleIPs"]).len(),
            "{name}: {id}"
        );
        assert_eq!(
            peer.online,
            raw_peer["Online"].as_bool().unwrap_or(false),
            "{name}: {id}"
        );
    }

    if let Some(expected) = sidecar(path) {
        assert_eq!(serde_json::to_value(&status).unwrap(), expected, "{name}");
    }
}

#[test]
fn every_localapi_fixture_reads_as_the_daemon_meant_it() {
    let files = fixtures();
    let (mut whois, mut malformed, mut status) = (0, 0, 0);
    for path in &files {
        let name = file_name(path);
        let body = std::fs::read(path).unwrap();
        if name.starts_with("whois-malformed-") {
            check_malformed_whois(path, &body);
            malformed += 1;
        } else if name.starts_with("whois-") {
            check_whois(path, &body);
            whois += 1;
        } else if name.starts_with("status-") {
            check_status(path, &body);
            status += 1;
        } else {
            panic!("{name}: fixture names start with whois- or status- (see the README)");
        }
    }
    // The hand-written variants (zero values, omitted fields, unknown fields, pre-CapMap) stay.
    assert!(whois >= 5, "only {whois} whois fixtures");
    assert!(
        malformed >= 1 && status >= 3,
        "{malformed} malformed, {status} status"
    );
}

#[test]
fn every_sidecar_belongs_to_a_fixture() {
    for entry in std::fs::read_dir(fixture_dir()).unwrap() {
        let path = entry.unwrap().path();
        let name = file_name(&path);
        if let Some(stem) = name.strip_suffix(".expected.json") {
            assert!(
                path.with_file_name(format!("{stem}.json")).exists(),
                "{name} has no {stem}.json"
            );
        }
    }
}

#[test]
fn old_daemons_without_cap_map_deliver_no_grants() {
    let body = std::fs::read(fixture_dir().join("whois-legacy-caps.json")).unwrap();
    let identity = parse_whois(&body, &names()).unwrap();
    assert!(identity.capabilities.is_empty());
    assert_eq!(identity.user.login_name.as_str(), "dave@example.com");
}

#[test]
fn recorded_not_found_answers_are_the_body_the_client_expects() {
    let mut seen = 0;
    for entry in std::fs::read_dir(fixture_dir()).unwrap() {
        let path = entry.unwrap().path();
        let name = file_name(&path);
        if name.starts_with("whois-") && name.ends_with("-notfound.txt") {
            let body = std::fs::read_to_string(&path).unwrap();
            assert_eq!(
                body.trim_end(),
                tka_core::identity::wire::WHOIS_NOT_FOUND,
                "{name}"
            );
            seen += 1;
        }
    }
    assert!(seen >= 1, "no recorded not-found answer");
}
