//! [`FakeTailnet`]: a programmable tailnet as the local tailscaled reports it, for tests of
//! anything that asks who a caller is or which nodes exist.
//!
//! It owns the fake's state (nodes, their users, tags, groups and capability values, and which
//! connection source addresses belong to which node) and answers questions about it exactly as
//! tailscaled's LocalAPI would, in one place ([`FakeTailnet::answer_whois`],
//! [`FakeTailnet::answer_status`]) that both the Unix-socket server ([`FakeTailnet::serve`]) and
//! the in-process [`IdentityProvider`]/[`TailnetStatus`] use, so the two cannot disagree. Its JSON
//! is read back only by tka-core's own reader ([`tka_core::identity::wire`]); it must not
//! simplify the wire format into something real daemons never send.

mod json;
mod server;
mod state;

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use async_trait::async_trait;
use serde_json::Value;
use tka_core::domain::is_dns1123_label;
use tka_core::identity::wire::{self, WHOIS_NOT_FOUND};
use tka_core::identity::{
    CapabilityNames, IdentityError, IdentityProvider, Status, TailnetStatus, WhoisRequest,
};
use tka_core::{Identity, NodeId, UserId};

pub use server::FakeLocalApi;
use state::{Binding, Lookup, Node, State, UserProfile};
pub use state::{DaemonStyle, RecordedRequest, TAGGED_DEVICES_USER_ID};

/// What the in-process calls and the socket server answer while the daemon is "not ready".
const NOT_READY: &str = "tailscaled is starting: no network map yet";

/// A node to add to a [`FakeTailnet`]: a user's device or a tagged device.
///
/// ```
/// use serde_json::json;
/// use tka_testkit::tailnet::{FakeTailnet, PeerSpec};
///
/// let tailnet = FakeTailnet::new();
/// let alice = tailnet.add(
///     PeerSpec::user("alice@example.com", "alice-laptop")
///         .groups(["group:sre"])
///         .capability("tka.dev/cap/kubernetes", json!({"role": "sre"})),
/// );
/// let ci = tailnet.add(PeerSpec::tagged(["tag:ci"], "ci-runner"));
/// assert_eq!(alice.login_name, "alice@example.com");
/// assert_eq!(ci.login_name, "tagged-devices");
/// assert_ne!(alice.ipv4, ci.ipv4);
/// ```
#[derive(Debug, Clone)]
pub struct PeerSpec {
    host_name: String,
    owner: Option<String>,
    display_name: Option<String>,
    tags: Vec<String>,
    groups: Vec<String>,
    stable_id: Option<NodeId>,
    caps: BTreeMap<String, Vec<Value>>,
    service_caps: BTreeMap<String, BTreeMap<String, Vec<Value>>>,
    online: bool,
    os: String,
    ipv4: Option<Ipv4Addr>,
}

impl PeerSpec {
    fn new(host_name: &str) -> Self {
        Self {
            host_name: host_name.to_owned(),
            owner: None,
            display_name: None,
            tags: Vec::new(),
            groups: Vec::new(),
            stable_id: None,
            caps: BTreeMap::new(),
            service_caps: BTreeMap::new(),
            online: true,
            os: "linux".to_owned(),
            ipv4: None,
        }
    }

    /// A device owned by the user `login_name`, called `host_name`.
    pub fn user(login_name: &str, host_name: &str) -> Self {
        Self {
            owner: Some(login_name.to_owned()),
            ..Self::new(host_name)
        }
    }

    /// A tagged device: it reports the shared `tagged-devices` user. Tags are kept as given, so a
    /// test can also hand out tags that tka must refuse to read.
    pub fn tagged<I, S>(tags: I, host_name: &str) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self {
            tags: tags.into_iter().map(Into::into).collect(),
            ..Self::new(host_name)
        }
    }

    /// The owner's display name (default: the login name's local part).
    pub fn display_name(mut self, display_name: &str) -> Self {
        self.display_name = Some(display_name.to_owned());
        self
    }

    /// Groups reported in this device's user profile (as newer daemons do).
    pub fn groups<I, S>(mut self, groups: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.groups = groups.into_iter().map(Into::into).collect();
        self
    }

    /// A fixed stable ID instead of a generated one.
    pub fn stable_id(mut self, id: NodeId) -> Self {
        self.stable_id = Some(id);
        self
    }

    /// Adds one value under the capability `name` (values accumulate, as grants concatenate).
    pub fn capability(mut self, name: &str, value: Value) -> Self {
        self.caps.entry(name.to_owned()).or_default().push(value);
        self
    }

    /// Adds one value under the capability `name`, granted only for the Tailscale Service
    /// `svc_name` (`svc:name`): whois with that `svc_name` reports these instead of the others.
    pub fn service_capability(mut self, svc_name: &str, name: &str, value: Value) -> Self {
        self.service_caps
            .entry(svc_name.to_owned())
            .or_default()
            .entry(name.to_owned())
            .or_default()
            .push(value);
        self
    }

    /// The device is not connected to the control plane.
    pub fn offline(mut self) -> Self {
        self.online = false;
        self
    }

    /// A fixed IPv4 address instead of a generated 100.64.x.y one, e.g. a loopback address
    /// (127.0.0.2) where a test runs a server that clients find through the tailnet status.
    pub fn ipv4(mut self, ipv4: Ipv4Addr) -> Self {
        self.ipv4 = Some(ipv4);
        self
    }

    /// The operating system the device reports (default `linux`).
    pub fn os(mut self, os: &str) -> Self {
        self.os = os.to_owned();
        self
    }
}

/// A snapshot of one node of a [`FakeTailnet`], as a test needs it to make and check calls.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FakePeer {
    /// The stable ID: what an [`Identity`]'s key must equal.
    pub stable_id: NodeId,
    /// The numeric node ID.
    pub node_id: i64,
    /// The host name.
    pub host_name: String,
    /// The MagicDNS name, without the trailing dot.
    pub dns_name: String,
    /// The user ID it reports ([`TAGGED_DEVICES_USER_ID`] when tagged).
    pub user_id: UserId,
    /// The login name it reports (`tagged-devices` when tagged).
    pub login_name: String,
    /// Its tailnet IPv4 address (100.64.x.y).
    pub ipv4: Ipv4Addr,
    /// Its tailnet IPv6 address (fd7a:115c:a1e0::x).
    pub ipv6: Ipv6Addr,
}

impl FakePeer {
    /// Its tailnet addresses, IPv4 first.
    pub fn addresses(&self) -> Vec<IpAddr> {
        vec![self.ipv4.into(), self.ipv6.into()]
    }

    /// A connection from this node's tailnet IPv4 address (as a server with kernel networking
    /// sees it).
    pub fn tailnet_addr(&self, port: u16) -> SocketAddr {
        SocketAddr::new(self.ipv4.into(), port)
    }
}

/// A node the fake does not know (removed, or never added).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the fake tailnet has no node {0}")]
pub struct UnknownPeer(pub NodeId);

/// An HTTP answer of the fake daemon: status and body, exactly as the socket server sends them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FakeAnswer {
    /// HTTP status.
    pub status: u16,
    /// The body: JSON for 200, plain text (with a trailing newline, as Go's `http.Error` writes)
    /// otherwise.
    pub body: String,
}

impl FakeAnswer {
    fn json(value: &Value) -> Self {
        // Go's MarshalIndent with tabs, as tailscaled writes it.
        let mut body = Vec::new();
        let formatter = serde_json::ser::PrettyFormatter::with_indent(b"\t");
        let mut serializer = serde_json::Serializer::with_formatter(&mut body, formatter);
        let body = match serde::Serialize::serialize(value, &mut serializer) {
            Ok(()) => String::from_utf8_lossy(&body).into_owned(),
            Err(_) => value.to_string(),
        };
        Self { status: 200, body }
    }

    fn text(status: u16, text: &str) -> Self {
        Self {
            status,
            body: format!("{text}\n"),
        }
    }
}

impl State {
    fn node_mut(&mut self, id: &NodeId) -> Result<&mut Node, UnknownPeer> {
        self.nodes
            .iter_mut()
            .find(|n| &n.stable_id == id)
            .ok_or_else(|| UnknownPeer(id.clone()))
    }

    fn snapshot(&self, node: &Node) -> FakePeer {
        let (user_id, login_name, _) = self.profile(node);
        FakePeer {
            stable_id: node.stable_id.clone(),
            node_id: i64::from(node.index),
            host_name: node.host_name.clone(),
            dns_name: self.dns_name(node),
            user_id,
            login_name,
            ipv4: node.ipv4(),
            ipv6: node.ipv6(),
        }
    }
}

/// A fake tailnet: nodes, users, capabilities and connection mappings, answering as tailscaled's
/// LocalAPI does. Clones share the same tailnet.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// use serde_json::json;
/// use tka_core::identity::IdentityProvider;
/// use tka_testkit::tailnet::{FakeTailnet, PeerSpec};
///
/// let tailnet = FakeTailnet::new();
/// let alice = tailnet.add(
///     PeerSpec::user("alice@example.com", "alice-laptop")
///         .capability("tka.dev/cap/kubernetes", json!({"role": "sre"})),
/// );
/// // A userspace-networking tailscaled re-dials Alice's connection from 127.0.0.1:41234.
/// let local = "127.0.0.1:41234".parse().unwrap();
/// tailnet.bind_connection(local, &alice.stable_id).unwrap();
///
/// // In process, for fast tests ...
/// let caller = tailnet.whois(local).await.unwrap();
/// assert_eq!(caller.key(), &alice.stable_id);
///
/// // ... or through the real client over a Unix socket.
/// let server = tailnet.serve().await.unwrap();
/// let caller = server.client().whois(local).await.unwrap();
/// assert_eq!(caller.capabilities, vec![json!({"role": "sre"})]);
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct FakeTailnet {
    state: Arc<Mutex<State>>,
}

impl Default for FakeTailnet {
    fn default() -> Self {
        Self::new()
    }
}

impl FakeTailnet {
    /// An empty tailnet `example.com` with MagicDNS suffix `example.ts.net`, the default
    /// capability names, no self node (the daemon looks logged out until [`Self::set_self`]),
    /// ready, answering in [`DaemonStyle::Current`].
    pub fn new() -> Self {
        Self {
            state: Arc::new(Mutex::new(State {
                magic_dns_suffix: "example.ts.net".to_owned(),
                tailnet_name: "example.com".to_owned(),
                capability_names: CapabilityNames::default(),
                nodes: Vec::new(),
                next_index: 1,
                users: BTreeMap::new(),
                next_user_id: 101,
                bindings: HashMap::new(),
                self_node: None,
                not_ready: false,
                cert_pairs: HashMap::new(),
                style: DaemonStyle::Current,
                requests: Vec::new(),
            })),
        }
    }

    // A panic while holding the lock can only come from a failed assertion in a test thread;
    // the state is still consistent, so later calls go on with it.
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Uses this MagicDNS suffix for node names (set it before adding nodes).
    pub fn with_magic_dns_suffix(self, suffix: &str) -> Self {
        self.state().magic_dns_suffix = suffix.trim_end_matches('.').to_owned();
        self
    }

    /// Builds the in-process identities (and [`FakeLocalApi::client`]) with these names.
    pub fn with_capability_names(self, names: CapabilityNames) -> Self {
        self.state().capability_names = names;
        self
    }

    /// The capability names the in-process provider reads.
    pub fn capability_names(&self) -> CapabilityNames {
        self.state().capability_names.clone()
    }

    /// Adds a node and returns a snapshot of it, with its generated stable ID and addresses.
    pub fn add(&self, spec: PeerSpec) -> FakePeer {
        let mut state = self.state();
        let index = state.next_index;
        state.next_index += 1;
        if let Some(owner) = &spec.owner {
            let id = UserId(state.next_user_id);
            let display = spec
                .display_name
                .clone()
                .unwrap_or_else(|| owner.split('@').next().unwrap_or(owner).to_owned());
            let created = !state.users.contains_key(owner);
            let profile = state.users.entry(owner.clone()).or_insert(UserProfile {
                id,
                login_name: owner.clone(),
                display_name: display.clone(),
            });
            if spec.display_name.is_some() {
                profile.display_name = display;
            }
            if created {
                state.next_user_id += 1;
            }
        }
        let stable_id = spec.stable_id.unwrap_or_else(|| generated_stable_id(index));
        let node = Node {
            index,
            stable_id,
            host_name: spec.host_name,
            owner: spec.owner,
            tags: spec.tags,
            groups: spec.groups,
            caps: spec.caps,
            service_caps: spec.service_caps,
            online: spec.online,
            os: spec.os,
            ipv4: spec.ipv4,
        };
        let peer = state.snapshot(&node);
        state.nodes.push(node);
        peer
    }

    /// A fresh snapshot of a node (its login name changes with its tags).
    pub fn peer(&self, id: &NodeId) -> Option<FakePeer> {
        let state = self.state();
        state.node(id).map(|n| state.snapshot(n))
    }

    /// Every node, in the order they were added.
    pub fn peers(&self) -> Vec<FakePeer> {
        let state = self.state();
        state.nodes.iter().map(|n| state.snapshot(n)).collect()
    }

    /// Removes a node, with its connection mappings; whois for it then misses.
    pub fn remove(&self, id: &NodeId) -> Result<(), UnknownPeer> {
        let mut state = self.state();
        let before = state.nodes.len();
        state.nodes.retain(|n| &n.stable_id != id);
        if state.nodes.len() == before {
            return Err(UnknownPeer(id.clone()));
        }
        state.bindings.retain(|_, b| &b.node != id);
        if state.self_node.as_ref() == Some(id) {
            state.self_node = None;
        }
        Ok(())
    }

    /// Replaces the values under capability `name` (an empty list removes the name).
    pub fn set_capability(
        &self,
        id: &NodeId,
        name: &str,
        values: Vec<Value>,
    ) -> Result<(), UnknownPeer> {
        let mut state = self.state();
        let node = state.node_mut(id)?;
        set_values(&mut node.caps, name, values);
        Ok(())
    }

    /// Replaces the values under capability `name` granted for the service `svc_name`.
    pub fn set_service_capability(
        &self,
        id: &NodeId,
        svc_name: &str,
        name: &str,
        values: Vec<Value>,
    ) -> Result<(), UnknownPeer> {
        let mut state = self.state();
        let node = state.node_mut(id)?;
        let caps = node.service_caps.entry(svc_name.to_owned()).or_default();
        set_values(caps, name, values);
        if caps.is_empty() {
            node.service_caps.remove(svc_name);
        }
        Ok(())
    }

    /// Replaces a node's tags. A user's device with tags reports the shared `tagged-devices`
    /// user, and reports its owner again when its tags are removed. (A device added with
    /// [`PeerSpec::tagged`] has no owner and stays `tagged-devices`.)
    pub fn set_tags<I, S>(&self, id: &NodeId, tags: I) -> Result<(), UnknownPeer>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let mut state = self.state();
        state.node_mut(id)?.tags = tags.into_iter().map(Into::into).collect();
        Ok(())
    }

    /// Replaces the groups a node's user profile reports.
    pub fn set_groups<I, S>(&self, id: &NodeId, groups: I) -> Result<(), UnknownPeer>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let mut state = self.state();
        state.node_mut(id)?.groups = groups.into_iter().map(Into::into).collect();
        Ok(())
    }

    /// Marks a node connected to the control plane or not.
    pub fn set_online(&self, id: &NodeId, online: bool) -> Result<(), UnknownPeer> {
        let mut state = self.state();
        state.node_mut(id)?.online = online;
        Ok(())
    }

    /// Makes a node this daemon's own (`Self` in status); the daemon then reports `Running`.
    pub fn set_self(&self, id: &NodeId) -> Result<(), UnknownPeer> {
        let mut state = self.state();
        if state.node(id).is_none() {
            return Err(UnknownPeer(id.clone()));
        }
        state.self_node = Some(id.clone());
        Ok(())
    }

    /// Forgets the self node: the daemon reports `NeedsLogin`.
    pub fn clear_self(&self) {
        self.state().self_node = None;
    }

    /// Maps a local source address (what a server behind userspace networking sees as a
    /// connection's remote address, e.g. `127.0.0.1:41234`) to a node, as tailscaled does while
    /// it proxies that node's connection.
    pub fn bind_connection(&self, local: SocketAddr, id: &NodeId) -> Result<(), UnknownPeer> {
        self.bind_connection_lagging(local, id, 0)
    }

    /// Like [`Self::bind_connection`], but the first `misses` whois lookups of `local` miss
    /// (404), as when the mapping lags the dial. Counting asks instead of time keeps tests
    /// deterministic.
    pub fn bind_connection_lagging(
        &self,
        local: SocketAddr,
        id: &NodeId,
        misses: u32,
    ) -> Result<(), UnknownPeer> {
        let mut state = self.state();
        if state.node(id).is_none() {
            return Err(UnknownPeer(id.clone()));
        }
        state.bindings.insert(
            local,
            Binding {
                node: id.clone(),
                misses_left: misses,
            },
        );
        Ok(())
    }

    /// Ends a mapping (the proxied connection closed): whois for `local` misses again.
    pub fn unbind(&self, local: SocketAddr) {
        self.state().bindings.remove(&local);
    }

    /// While not ready, every LocalAPI call is answered 503 (tailscaled starting or without a
    /// network map).
    pub fn set_daemon_ready(&self, ready: bool) {
        self.state().not_ready = !ready;
    }

    /// Answers in the JSON style of another daemon version.
    pub fn set_daemon_style(&self, style: DaemonStyle) {
        self.state().style = style;
    }

    /// Every request the socket server received, in order (in-process calls are not recorded).
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.state().requests.clone()
    }

    /// Forgets the recorded requests.
    pub fn clear_requests(&self) {
        self.state().requests.clear();
    }

    fn record(&self, request: RecordedRequest) {
        self.state().requests.push(request);
    }

    /// What tailscaled answers to `GET /localapi/v0/whois?addr=…[&svc_name=…]` (the decoded
    /// parameters; `None` when absent). Asking counts against a lagging mapping.
    pub fn answer_whois(&self, addr: Option<&str>, svc_name: Option<&str>) -> FakeAnswer {
        let mut state = self.state();
        if state.not_ready {
            return FakeAnswer::text(503, NOT_READY);
        }
        let Some(addr) = addr.filter(|a| !a.is_empty()) else {
            return FakeAnswer::text(400, "missing 'addr' parameter");
        };
        let lookup = if addr.starts_with("nodekey:") {
            Lookup::NodeKey(addr.to_owned())
        } else if let Ok(ip) = addr.parse::<IpAddr>() {
            Lookup::Address(ip)
        } else if let Ok(socket) = addr.parse::<SocketAddr>() {
            Lookup::Connection(socket)
        } else {
            return FakeAnswer::text(400, "invalid 'addr' parameter");
        };
        let Some(index) = state.resolve(lookup) else {
            return FakeAnswer::text(404, WHOIS_NOT_FOUND);
        };
        let svc_name = svc_name.filter(|s| !s.is_empty());
        if let Some(svc) = svc_name
            && !svc.strip_prefix("svc:").is_some_and(is_dns1123_label)
        {
            return FakeAnswer::text(400, "invalid svc_name");
        }
        let Some(node) = state.nodes.get(index) else {
            return FakeAnswer::text(404, WHOIS_NOT_FOUND);
        };
        FakeAnswer::json(&json::whois(&state, node, svc_name))
    }

    /// Makes `GET /localapi/v0/cert/<domain>?type=pair` answer `pem` (a private key, then the
    /// certificate chain, as tailscaled sends them).
    pub fn set_cert_pair(&self, domain: &str, pem: &str) {
        self.state()
            .cert_pairs
            .insert(domain.to_owned(), pem.to_owned());
    }

    /// What tailscaled answers to `GET /localapi/v0/cert/<domain>?type=pair`.
    pub fn answer_cert_pair(&self, domain: &str) -> FakeAnswer {
        let state = self.state();
        if state.not_ready {
            return FakeAnswer::text(503, NOT_READY);
        }
        match state.cert_pairs.get(domain) {
            Some(pem) => FakeAnswer::text(200, pem),
            None => FakeAnswer::text(
                500,
                &format!("invalid domain {domain:?}; must be one of the node's cert domains"),
            ),
        }
    }

    /// What tailscaled answers to `GET /localapi/v0/status` (and prints for
    /// `tailscale status --json`).
    pub fn answer_status(&self) -> FakeAnswer {
        let state = self.state();
        if state.not_ready {
            return FakeAnswer::text(503, NOT_READY);
        }
        FakeAnswer::json(&json::status(&state))
    }

    /// Binds a LocalAPI server for this tailnet on a Unix socket in a fresh temporary directory.
    /// It serves until the returned handle is dropped.
    pub async fn serve(&self) -> std::io::Result<FakeLocalApi> {
        FakeLocalApi::start(self.clone()).await
    }
}

fn set_values(caps: &mut BTreeMap<String, Vec<Value>>, name: &str, values: Vec<Value>) {
    if values.is_empty() {
        caps.remove(name);
    } else {
        caps.insert(name.to_owned(), values);
    }
}

/// `n` + the index + `FakeCNTRL`, the shape of Tailscale's stable IDs.
fn generated_stable_id(index: u32) -> NodeId {
    // Infallible: ASCII letters and digits, at most 19 characters, always make a valid node ID.
    #[allow(clippy::expect_used)]
    NodeId::new(format!("n{index:04}FakeCNTRL")).expect("a generated stable ID is valid")
}

fn daemon_error(answer: &FakeAnswer) -> IdentityError {
    let body = answer.body.trim().to_owned();
    if answer.status >= 500 {
        IdentityError::DaemonUnavailable(format!("it answered {}: {body}", answer.status))
    } else {
        IdentityError::Rejected {
            status: answer.status,
            body,
        }
    }
}

/// In process: the same answers as the socket, read by tka-core's own reader.
#[async_trait]
impl IdentityProvider for FakeTailnet {
    async fn lookup(&self, request: &WhoisRequest) -> Result<Identity, IdentityError> {
        let target = request.target.to_canonical();
        let answer = self.answer_whois(Some(&target.to_string()), request.svc_name.as_deref());
        match answer.status {
            200 => wire::parse_whois(answer.body.as_bytes(), &self.capability_names()),
            404 => Err(IdentityError::NotInTailnet(target)),
            _ => Err(daemon_error(&answer)),
        }
    }
}

/// In process: the same answer as the socket, read by tka-core's own reader.
#[async_trait]
impl TailnetStatus for FakeTailnet {
    async fn status(&self) -> Result<Status, IdentityError> {
        let answer = self.answer_status();
        match answer.status {
            200 => wire::parse_status(answer.body.as_bytes()),
            _ => Err(daemon_error(&answer)),
        }
    }
}
