//! The JSON the fake daemon prints: `apitype.WhoIsResponse` for whois and `ipnstate.Status` for
//! status, with Go field names, in the styles different tailscaled versions print them. Written
//! field by field (never through tka-core's reader types), so a misreading in tka-core cannot be
//! mirrored here and go unnoticed.

use serde_json::{Map, Value, json};

use super::state::{DaemonStyle, Node, State};

const ZERO_TIME: &str = "0001-01-01T00:00:00Z";
const CREATED: &str = "2026-01-05T09:30:00Z";
const VERSION: &str = "1.90.6-fake";

fn list_or_null(items: Vec<Value>) -> Value {
    if items.is_empty() {
        Value::Null
    } else {
        Value::Array(items)
    }
}

fn strings(items: &[String]) -> Vec<Value> {
    items.iter().cloned().map(Value::String).collect()
}

/// Inserts `key` when `items` is non-empty; otherwise as the style prints an empty list.
fn put_list(object: &mut Map<String, Value>, style: DaemonStyle, key: &str, items: Vec<Value>) {
    if !items.is_empty() {
        object.insert(key.to_owned(), Value::Array(items));
    } else if style == DaemonStyle::ZeroValues {
        object.insert(key.to_owned(), Value::Null);
    }
}

fn user_profile(state: &State, node: &Node, style: DaemonStyle) -> Value {
    let (id, login, display) = state.profile(node);
    let groups = if node.is_tagged() {
        Vec::new()
    } else {
        strings(&node.groups)
    };
    let mut profile = Map::new();
    profile.insert("ID".into(), json!(id.0));
    profile.insert("LoginName".into(), json!(login));
    profile.insert("DisplayName".into(), json!(display));
    match style {
        DaemonStyle::ZeroValues => {
            profile.insert("ProfilePicURL".into(), json!(""));
            profile.insert("Roles".into(), json!([]));
        }
        DaemonStyle::Extended => {
            profile.insert(
                "ProfilePicURL".into(),
                json!("https://avatars.example.com/u/1"),
            );
            profile.insert("FutureProfileField".into(), json!({"Enabled": true}));
        }
        DaemonStyle::Current | DaemonStyle::Sparse => {}
    }
    put_list(&mut profile, style, "Groups", groups);
    Value::Object(profile)
}

fn hostinfo(node: &Node, style: DaemonStyle) -> Value {
    let mut info = json!({
        "IPNVersion": VERSION,
        "OS": node.os,
        "Hostname": node.host_name,
    });
    if style == DaemonStyle::Extended {
        info["Services"] = json!([{"Proto": "peerapi4", "Port": 63311}]);
        info["NetInfo"] = json!({"PreferredDERP": 1, "WorkingUDP": true, "FutureNetField": 7});
        info["FutureHostinfoField"] = json!(["x"]);
    }
    info
}

fn capability_map(caps: Option<&std::collections::BTreeMap<String, Vec<Value>>>) -> Value {
    match caps {
        Some(caps) if !caps.is_empty() => Value::Object(
            caps.iter()
                .map(|(name, values)| (name.clone(), Value::Array(values.clone())))
                .collect(),
        ),
        _ => Value::Null,
    }
}

/// `apitype.WhoIsResponse` for `node`, its `CapMap` scoped to `svc_name` when given.
pub(super) fn whois(state: &State, node: &Node, svc_name: Option<&str>) -> Value {
    let style = state.style;
    let ipv4 = format!("{}/32", node.ipv4());
    let ipv6 = format!("{}/128", node.ipv6());
    let (user_id, ..) = state.profile(node);
    let fqdn = format!("{}.", state.dns_name(node));
    let tags = strings(&node.tags);
    let cap_map = capability_map(match svc_name {
        Some(svc) => node.service_caps.get(svc),
        None => Some(&node.caps),
    });

    let mut n = Map::new();
    n.insert("ID".into(), json!(node.index));
    n.insert("StableID".into(), json!(node.stable_id.as_str()));
    n.insert("Name".into(), json!(fqdn));
    if style != DaemonStyle::Sparse {
        n.insert("User".into(), json!(user_id.0));
        n.insert("Key".into(), json!(node.public_key()));
    }
    if style == DaemonStyle::ZeroValues {
        n.insert("Sharer".into(), json!(0));
        n.insert("KeyExpiry".into(), json!(ZERO_TIME));
    } else if style != DaemonStyle::Sparse {
        n.insert("KeyExpiry".into(), json!("2026-07-04T09:30:00Z"));
    }
    if style != DaemonStyle::Sparse {
        n.insert(
            "Machine".into(),
            json!(format!("mkey:{:064x}", u64::from(node.index) << 8)),
        );
        n.insert(
            "DiscoKey".into(),
            json!(format!("discokey:{:064x}", u64::from(node.index) << 16)),
        );
    }
    n.insert("Addresses".into(), json!([ipv4, ipv6]));
    if style != DaemonStyle::Sparse {
        n.insert("AllowedIPs".into(), json!([ipv4, ipv6]));
    }
    match style {
        DaemonStyle::ZeroValues => {
            n.insert("Endpoints".into(), Value::Null);
            n.insert("DERP".into(), json!("127.3.3.40:1"));
            n.insert("Hostinfo".into(), hostinfo(node, style));
            n.insert("Created".into(), json!(CREATED));
            n.insert("Cap".into(), json!(0));
        }
        DaemonStyle::Current | DaemonStyle::Extended => {
            n.insert("HomeDERP".into(), json!(1));
            n.insert("Hostinfo".into(), hostinfo(node, style));
            n.insert("Created".into(), json!(CREATED));
            n.insert("Cap".into(), json!(130));
        }
        DaemonStyle::Sparse => {}
    }
    put_list(&mut n, style, "Tags", tags);
    match style {
        DaemonStyle::ZeroValues => {
            n.insert("PrimaryRoutes".into(), Value::Null);
            n.insert("LastSeen".into(), Value::Null);
            n.insert("Online".into(), json!(node.online));
            n.insert("KeepAlive".into(), json!(false));
            n.insert("MachineAuthorized".into(), json!(true));
            n.insert("Capabilities".into(), Value::Null);
            n.insert("UnsignedPeerAPIOnly".into(), json!(false));
            n.insert("ComputedName".into(), json!(node.host_name));
            n.insert("ComputedNameWithHost".into(), json!(node.host_name));
            n.insert("DataPlaneAuditLogID".into(), json!(""));
            n.insert("Expired".into(), json!(false));
        }
        DaemonStyle::Current | DaemonStyle::Extended => {
            n.insert("Online".into(), json!(node.online));
            n.insert("MachineAuthorized".into(), json!(true));
            n.insert("ComputedName".into(), json!(node.host_name));
            n.insert("ComputedNameWithHost".into(), json!(node.host_name));
        }
        DaemonStyle::Sparse => {}
    }
    if style == DaemonStyle::Extended {
        n.insert("PrimaryRoutes".into(), json!(["10.20.0.0/16"]));
        n.insert("LastSeen".into(), json!("2026-01-05T10:00:00Z"));
        // Node attributes, not peer capabilities: a grant never arrives here.
        n.insert(
            "CapMap".into(),
            json!({
                state.capability_names.primary.clone(): [{"role": "node-attribute-is-not-a-grant"}],
                "https://tailscale.com/cap/funnel": null
            }),
        );
        n.insert(
            "FutureNodeField".into(),
            json!({"Nested": [1, 2, 3], "Flag": true}),
        );
    }

    let mut answer = Map::new();
    answer.insert("Node".into(), Value::Object(n));
    answer.insert("UserProfile".into(), user_profile(state, node, style));
    match (style, cap_map) {
        (DaemonStyle::Sparse, Value::Null) => {}
        (_, cap_map) => {
            answer.insert("CapMap".into(), cap_map);
        }
    }
    if style == DaemonStyle::Extended {
        answer.insert("FutureWhoisField".into(), json!("ignored"));
    }
    Value::Object(answer)
}

fn peer_status(state: &State, node: &Node, style: DaemonStyle) -> Value {
    let (user_id, ..) = state.profile(node);
    let mut p = Map::new();
    p.insert("ID".into(), json!(node.stable_id.as_str()));
    if style != DaemonStyle::Sparse {
        p.insert("PublicKey".into(), json!(node.public_key()));
    }
    p.insert("HostName".into(), json!(node.host_name));
    p.insert(
        "DNSName".into(),
        json!(format!("{}.", state.dns_name(node))),
    );
    p.insert("OS".into(), json!(node.os));
    p.insert("UserID".into(), json!(user_id.0));
    p.insert(
        "TailscaleIPs".into(),
        json!([node.ipv4().to_string(), node.ipv6().to_string()]),
    );
    put_list(&mut p, style, "Tags", strings(&node.tags));
    if style != DaemonStyle::Sparse {
        p.insert(
            "AllowedIPs".into(),
            json!([
                format!("{}/32", node.ipv4()),
                format!("{}/128", node.ipv6())
            ]),
        );
        p.insert("Addrs".into(), Value::Null);
        p.insert("CurAddr".into(), json!(""));
        p.insert("Relay".into(), json!("fra"));
        p.insert("RxBytes".into(), json!(0));
        p.insert("TxBytes".into(), json!(0));
        p.insert("Created".into(), json!(CREATED));
        p.insert("LastWrite".into(), json!(ZERO_TIME));
        p.insert("LastSeen".into(), json!(ZERO_TIME));
        p.insert("LastHandshake".into(), json!(ZERO_TIME));
    }
    p.insert("Online".into(), json!(node.online));
    if style != DaemonStyle::Sparse {
        p.insert("ExitNode".into(), json!(false));
        p.insert("ExitNodeOption".into(), json!(false));
        p.insert("Active".into(), json!(false));
        p.insert(
            "PeerAPIURL".into(),
            json!([format!("http://{}:63311", node.ipv4())]),
        );
        p.insert("InNetworkMap".into(), json!(true));
        p.insert("InMagicSock".into(), json!(true));
        p.insert("InEngine".into(), json!(false));
    }
    if style == DaemonStyle::ZeroValues {
        p.insert("KeepAlive".into(), json!(false));
        p.insert("PrimaryRoutes".into(), Value::Null);
    }
    if style == DaemonStyle::Extended {
        p.insert("PeerRelay".into(), json!(""));
        p.insert(
            "Location".into(),
            json!({"Country": "Nowhere", "Priority": 1}),
        );
        p.insert(
            "FuturePeerField".into(),
            json!({"Nested": {"Deeper": [null]}}),
        );
    }
    Value::Object(p)
}

/// The `Self` of a daemon that is not logged in.
fn logged_out_self(style: DaemonStyle) -> Value {
    let mut p = Map::new();
    p.insert("ID".into(), json!(""));
    p.insert("HostName".into(), json!("localhost"));
    p.insert("DNSName".into(), json!(""));
    p.insert("OS".into(), json!("linux"));
    p.insert("UserID".into(), json!(0));
    p.insert("TailscaleIPs".into(), Value::Null);
    p.insert("Online".into(), json!(false));
    if style != DaemonStyle::Sparse {
        p.insert("PublicKey".into(), json!(format!("nodekey:{:064x}", 0)));
        p.insert("Created".into(), json!(ZERO_TIME));
    }
    Value::Object(p)
}

/// `ipnstate.Status`: `Self`, `Peer` keyed by public key, `User` keyed by user ID.
pub(super) fn status(state: &State) -> Value {
    let style = state.style;
    let me = state
        .self_node
        .as_ref()
        .and_then(|id| state.nodes.iter().find(|n| &n.stable_id == id));

    let mut peers = Map::new();
    let mut users = Map::new();
    if me.is_some() {
        for node in &state.nodes {
            let (id, login, display) = state.profile(node);
            let mut profile = Map::new();
            profile.insert("ID".into(), json!(id.0));
            profile.insert("LoginName".into(), json!(login));
            profile.insert("DisplayName".into(), json!(display));
            if style == DaemonStyle::ZeroValues {
                profile.insert("ProfilePicURL".into(), json!(""));
                profile.insert("Roles".into(), json!([]));
            }
            users.insert(id.0.to_string(), Value::Object(profile));
            if Some(&node.stable_id) != me.map(|m| &m.stable_id) {
                peers.insert(node.public_key(), peer_status(state, node, style));
            }
        }
    }

    let mut status = Map::new();
    status.insert("Version".into(), json!(VERSION));
    if style != DaemonStyle::Sparse {
        status.insert("TUN".into(), json!(false));
    }
    status.insert(
        "BackendState".into(),
        json!(if me.is_some() {
            "Running"
        } else {
            "NeedsLogin"
        }),
    );
    if style != DaemonStyle::Sparse {
        status.insert("AuthURL".into(), json!(""));
        status.insert(
            "TailscaleIPs".into(),
            match me {
                Some(node) => json!([node.ipv4().to_string(), node.ipv6().to_string()]),
                None => Value::Null,
            },
        );
    }
    status.insert(
        "Self".into(),
        match me {
            Some(node) => peer_status(state, node, style),
            None => logged_out_self(style),
        },
    );
    if style != DaemonStyle::Sparse {
        status.insert("Health".into(), list_or_null(Vec::new()));
    }
    status.insert(
        "MagicDNSSuffix".into(),
        json!(state.magic_dns_suffix.clone()),
    );
    status.insert(
        "CurrentTailnet".into(),
        if me.is_some() {
            json!({
                "Name": state.tailnet_name,
                "MagicDNSSuffix": state.magic_dns_suffix,
                "MagicDNSEnabled": true,
            })
        } else {
            Value::Null
        },
    );
    if style != DaemonStyle::Sparse {
        status.insert("CertDomains".into(), Value::Null);
    }
    status.insert(
        "Peer".into(),
        if peers.is_empty() && style != DaemonStyle::Current {
            Value::Null
        } else {
            Value::Object(peers)
        },
    );
    status.insert(
        "User".into(),
        if users.is_empty() {
            Value::Null
        } else {
            Value::Object(users)
        },
    );
    if style == DaemonStyle::Current || style == DaemonStyle::Extended {
        status.insert("ClientVersion".into(), Value::Null);
    }
    if style == DaemonStyle::Extended {
        status.insert(
            "ExitNodeStatus".into(),
            json!({"ID": "nExitCNTRL", "Online": true}),
        );
        status.insert("FutureStatusField".into(), json!([{"A": 1}]));
    }
    Value::Object(status)
}
