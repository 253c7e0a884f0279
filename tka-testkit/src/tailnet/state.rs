//! The fake tailnet's state: its nodes, users, connection bindings and daemon settings, and how
//! tailscaled would resolve an address, a connection or a node key to a node. It owns that data
//! and the lookups; it must not print JSON (that is `json`) or serve HTTP (that is `server`).

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use http::{HeaderMap, HeaderValue, Method, header};
use serde_json::Value;
use tka_core::identity::CapabilityNames;
use tka_core::identity::wire::{self, LOCALAPI_HOST};
use tka_core::{NodeId, UserId};

/// How a daemon version prints the same facts. tka must read them all the same.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum DaemonStyle {
    /// As current tailscaled prints: empty optional fields left out (`Tags`, `Groups`,
    /// `ProfilePicURL`), `CapMap` `null` when the peer holds no capability.
    #[default]
    Current,
    /// As older daemons print: every field present with its zero value, empty lists and maps as
    /// `null` (`"Tags": null`, `"CapMap": null`, `"Groups": null`), zero timestamps, empty
    /// strings, the legacy `"Roles": []`.
    ZeroValues,
    /// Only the fields tka reads, `CapMap` left out when empty: the least a daemon may send.
    Sparse,
    /// Current, plus fields tka has never heard of at every level (a future version), and a node
    /// attribute (`Node.CapMap`) under the capability name, which is not a grant and must be
    /// ignored.
    Extended,
}

impl DaemonStyle {
    /// Every style, for tests that must hold for all of them.
    pub const ALL: [DaemonStyle; 4] = [
        DaemonStyle::Current,
        DaemonStyle::ZeroValues,
        DaemonStyle::Sparse,
        DaemonStyle::Extended,
    ];
}

/// The user ID the fake gives the shared `tagged-devices` profile (any fixed value would do: on
/// Tailscale's service every tagged device of a tailnet reports the same one).
pub const TAGGED_DEVICES_USER_ID: UserId = UserId(1_000_000);

/// One request the fake LocalAPI received.
#[derive(Debug, Clone)]
pub struct RecordedRequest {
    /// The method.
    pub method: Method,
    /// The path, without the query.
    pub path: String,
    /// The decoded query parameters, in order.
    pub query: Vec<(String, String)>,
    /// Every header, as received.
    pub headers: HeaderMap,
    /// The status the fake answered.
    pub status: u16,
}

impl RecordedRequest {
    /// The first value of query parameter `name`.
    pub fn query_param(&self, name: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// Whether tailscaled would accept the request's headers: `Host: local-tailscaled.sock`,
    /// and neither `Origin` nor `Referer`.
    pub fn has_localapi_headers(&self) -> bool {
        is_localapi_request(&self.headers)
    }
}

pub(super) fn is_localapi_request(headers: &HeaderMap) -> bool {
    let host_ok = headers.get_all(header::HOST).iter().count() == 1
        && headers.get(header::HOST) == Some(&HeaderValue::from_static(LOCALAPI_HOST));
    host_ok && !headers.contains_key(header::ORIGIN) && !headers.contains_key(header::REFERER)
}

#[derive(Debug)]
pub(super) struct Node {
    pub(super) index: u32,
    pub(super) stable_id: NodeId,
    pub(super) host_name: String,
    pub(super) owner: Option<String>,
    pub(super) tags: Vec<String>,
    pub(super) groups: Vec<String>,
    pub(super) caps: BTreeMap<String, Vec<Value>>,
    pub(super) service_caps: BTreeMap<String, BTreeMap<String, Vec<Value>>>,
    pub(super) online: bool,
    pub(super) os: String,
    pub(super) ipv4: Option<Ipv4Addr>,
}

impl Node {
    pub(super) fn ipv4(&self) -> Ipv4Addr {
        if let Some(ipv4) = self.ipv4 {
            return ipv4;
        }
        // 100.64.0.0/10 holds 2^22 addresses; a test adds far fewer nodes.
        Ipv4Addr::from_bits(Ipv4Addr::new(100, 64, 0, 0).to_bits() + (self.index & 0x3f_ffff))
    }

    pub(super) fn ipv6(&self) -> Ipv6Addr {
        let (hi, lo) = ((self.index >> 16) as u16, (self.index & 0xffff) as u16);
        Ipv6Addr::new(0xfd7a, 0x115c, 0xa1e0, 0, 0, 0, hi, lo)
    }

    pub(super) fn has_ip(&self, ip: IpAddr) -> bool {
        ip == IpAddr::V4(self.ipv4()) || ip == IpAddr::V6(self.ipv6())
    }

    pub(super) fn public_key(&self) -> String {
        format!("nodekey:{:064x}", self.index)
    }

    pub(super) fn is_tagged(&self) -> bool {
        !self.tags.is_empty() || self.owner.is_none()
    }
}

#[derive(Debug)]
pub(super) struct Binding {
    pub(super) node: NodeId,
    pub(super) misses_left: u32,
}

#[derive(Debug)]
pub(super) struct UserProfile {
    pub(super) id: UserId,
    pub(super) login_name: String,
    pub(super) display_name: String,
}

#[derive(Debug)]
pub(super) struct State {
    pub(super) magic_dns_suffix: String,
    pub(super) tailnet_name: String,
    pub(super) capability_names: CapabilityNames,
    pub(super) nodes: Vec<Node>,
    pub(super) next_index: u32,
    pub(super) users: BTreeMap<String, UserProfile>,
    pub(super) next_user_id: i64,
    pub(super) bindings: HashMap<SocketAddr, Binding>,
    pub(super) self_node: Option<NodeId>,
    pub(super) not_ready: bool,
    /// TLS certificate pairs (key, then chain, PEM) by domain, for `/localapi/v0/cert/`.
    pub(super) cert_pairs: HashMap<String, String>,
    pub(super) style: DaemonStyle,
    pub(super) requests: Vec<RecordedRequest>,
}

impl State {
    pub(super) fn node(&self, id: &NodeId) -> Option<&Node> {
        self.nodes.iter().find(|n| &n.stable_id == id)
    }

    pub(super) fn dns_name(&self, node: &Node) -> String {
        format!("{}.{}", node.host_name, self.magic_dns_suffix)
    }

    /// The profile a node reports: its owner's, or the shared one when tagged.
    pub(super) fn profile(&self, node: &Node) -> (UserId, String, String) {
        match (&node.owner, node.is_tagged()) {
            (Some(owner), false) => match self.users.get(owner) {
                Some(p) => (p.id, p.login_name.clone(), p.display_name.clone()),
                None => (UserId(0), owner.clone(), owner.clone()),
            },
            _ => (
                TAGGED_DEVICES_USER_ID,
                wire::TAGGED_DEVICES_LOGIN.to_owned(),
                "Tagged Devices".to_owned(),
            ),
        }
    }

    /// Which node tailscaled would name for `addr` (the `addr` query parameter, already parsed).
    pub(super) fn resolve(&mut self, addr: Lookup) -> Option<usize> {
        let ip = match addr {
            Lookup::Connection(socket) => {
                if let Some(binding) = self.bindings.get_mut(&socket) {
                    if binding.misses_left > 0 {
                        binding.misses_left -= 1;
                        return None;
                    }
                    let id = binding.node.clone();
                    if let Some(i) = self.nodes.iter().position(|n| n.stable_id == id) {
                        return Some(i);
                    }
                }
                socket.ip()
            }
            Lookup::Address(ip) => ip,
            Lookup::NodeKey(key) => {
                return self.nodes.iter().position(|n| n.public_key() == key);
            }
        };
        self.nodes.iter().position(|n| n.has_ip(ip))
    }
}

pub(super) enum Lookup {
    Connection(SocketAddr),
    Address(IpAddr),
    NodeKey(String),
}
