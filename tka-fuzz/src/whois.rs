//! tailscaled's LocalAPI answers (`tka_core::identity::wire`): the whois answer that decides who
//! a caller is, and the status answer the CLI's discovery reads.
//!
//! Input: the answer's body. Properties:
//! - an accepted whois answer carries exactly the capability values delivered under the two
//!   configured names, and its identity written back as a whois answer reads as the same
//!   identity;
//! - every capability value of that identity is either a grant or a skipped value, in order;
//! - an accepted status answer lists its peers sorted, each with a stable ID, and reading its
//!   own answer twice gives the same result.

use serde_json::{Value, json};
use tka_core::Identity;
use tka_core::capability::ParsedGrants;
use tka_core::identity::{CapabilityNames, wire};

const PRIMARY: &str = "tka.dev/cap/kubernetes";
const COMPAT: &str = "specht-labs.de/cap/tka";

/// The target.
pub fn target(data: &[u8]) {
    let names = CapabilityNames {
        primary: PRIMARY.to_owned(),
        compat: Some(COMPAT.to_owned()),
    };
    match wire::parse_whois(data, &names) {
        Ok(identity) => accepted_whois(data, &identity, &names),
        Err(e) => {
            let _ = e.to_string();
        }
    }
    match wire::parse_status(data) {
        Ok(status) => {
            let keys: Vec<_> = status
                .peers
                .iter()
                .map(|p| (p.dns_name.clone(), p.stable_id.as_str().to_owned()))
                .collect();
            let mut sorted = keys.clone();
            sorted.sort();
            assert_eq!(keys, sorted, "status peers are not sorted");
            for peer in status.peers.iter().chain(status.self_node.as_ref()) {
                assert!(!peer.stable_id.as_str().is_empty());
                let _ = (peer.short_name(), peer.acting_as(), peer.is_tagged());
            }
            let _ = (status.current_login_name(), status.is_running());
            assert_eq!(wire::parse_status(data).ok(), Some(status));
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
}

fn accepted_whois(data: &[u8], identity: &Identity, names: &CapabilityNames) {
    // serde_json skips the fields tka ignores without checking their UTF-8, so an accepted
    // answer may hold invalid UTF-8 there; never in the capability values, which are read.
    let raw: Value = serde_json::from_str(&String::from_utf8_lossy(data))
        .expect("an accepted whois answer is JSON, up to the bytes of ignored fields");
    let delivered = |name: &str| match raw.get("CapMap").and_then(|m| m.get(name)) {
        Some(Value::Array(values)) => values.clone(),
        _ => Vec::new(),
    };
    assert_eq!(identity.capabilities, delivered(PRIMARY));
    assert_eq!(identity.compat_capabilities, delivered(COMPAT));
    assert!(!identity.node.name.is_empty(), "a node without a name");

    let written = written_back(identity);
    match wire::parse_whois(&written, names) {
        Ok(again) => assert_eq!(
            &again, identity,
            "the identity written back reads differently"
        ),
        Err(e) => panic!(
            "the identity written back is refused: {e}\n{}",
            String::from_utf8_lossy(&written)
        ),
    }

    let parsed = ParsedGrants::from_identity(identity);
    assert_eq!(
        parsed.grants.len() + parsed.skipped.len(),
        identity.capabilities.len() + identity.compat_capabilities.len(),
        "a capability value was neither a grant nor skipped"
    );
    for skipped in &parsed.skipped {
        let _ = skipped.to_string();
    }
    let _ = (identity.describe(), identity.key(), identity.is_tagged());
}

/// The whois answer tailscaled would send for `identity` (names end with the root's dot).
fn written_back(identity: &Identity) -> Vec<u8> {
    let addresses: Vec<String> = identity
        .node
        .addresses
        .iter()
        .map(|a| a.to_string())
        .collect();
    let tags: Vec<&str> = identity.node.tags.iter().map(|t| t.as_str()).collect();
    let mut cap_map = serde_json::Map::new();
    cap_map.insert(
        PRIMARY.to_owned(),
        Value::from(identity.capabilities.clone()),
    );
    cap_map.insert(
        COMPAT.to_owned(),
        Value::from(identity.compat_capabilities.clone()),
    );
    let answer = json!({
        "Node": {
            "StableID": identity.node.stable_id.as_str(),
            "Name": format!("{}.", identity.node.name),
            "Addresses": addresses,
            "Tags": tags,
        },
        "UserProfile": {
            "ID": identity.user.id.0,
            "LoginName": identity.user.login_name.as_str(),
            "DisplayName": identity.user.display_name,
            "Groups": identity.groups,
        },
        "CapMap": cap_map,
    });
    serde_json::to_vec(&answer).expect("a JSON value serialises")
}
