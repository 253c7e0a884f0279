//! The tailscaled LocalAPI wire format, read into tka's types: the whois answer
//! (`apitype.WhoIsResponse`) into an [`Identity`], and the status answer (`ipnstate.Status`, also
//! what `tailscale status --json` prints) into a [`Status`].
//!
//! Pure: bytes in, values out, no I/O, so the real client, the testkit's fake tailnet and fixture
//! tests all share one reading of the format. The JSON uses Go field names without tags, and what
//! a daemon prints varies by version (zero values printed or omitted, fields added over time), so
//! every field is optional, `null` reads as empty, and unknown fields are ignored. Where a value
//! decides who a caller is (stable ID, login name, tags, addresses, the configured capability
//! names) an unreadable value is an error, never a guess; the status answer, which only feeds
//! discovery, skips what it cannot read instead.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;

use super::{CapabilityNames, IdentityError};
use crate::domain::{Identity, LoginName, NodeId, NodeInfo, Tag, UserId, UserInfo};

/// The `Host` header every LocalAPI request must carry (tailscaled refuses any other, and any
/// request with an `Origin` or `Referer`, with 403: a browser must not reach it).
pub const LOCALAPI_HOST: &str = "local-tailscaled.sock";

/// The whois endpoint: `?addr=IP:PORT` or `?addr=IP`, optionally `&svc_name=svc:NAME`.
pub const WHOIS_PATH: &str = "/localapi/v0/whois";

/// The status endpoint: this node, its peers and their users.
pub const STATUS_PATH: &str = "/localapi/v0/status";

/// The login name Tailscale's service reports for every tagged device. Informational only: a
/// device is tagged when its node has tags, whatever its login name says.
pub const TAGGED_DEVICES_LOGIN: &str = "tagged-devices";

/// The body (without the trailing newline) of tailscaled's 404 for an unknown whois address.
pub const WHOIS_NOT_FOUND: &str = "no match for IP:port";

/// The backend state of a daemon that is connected to its tailnet.
pub const BACKEND_RUNNING: &str = "Running";

/// Reads `null` as the type's empty value; with `#[serde(default)]` an absent field is empty too.
fn nullable<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

fn malformed(message: impl Into<String>) -> IdentityError {
    IdentityError::Malformed(message.into())
}

/// Reads a JSON object; serde would also take a list for a struct, which no daemon sends.
fn object<'de, T: Deserialize<'de>>(body: &'de [u8], what: &str) -> Result<T, IdentityError> {
    if body.trim_ascii_start().first() != Some(&b'{') {
        return Err(malformed(format!(
            "the {what} answer is not a JSON object: {:?}",
            String::from_utf8_lossy(&body[..body.len().min(64)])
        )));
    }
    serde_json::from_slice(body)
        .map_err(|e| malformed(format!("the {what} answer is not the expected JSON: {e}")))
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct WireWhois {
    #[serde(rename = "Node")]
    node: Option<WireNode>,
    #[serde(rename = "UserProfile")]
    user_profile: Option<WireUserProfile>,
    /// Capability name → list of raw values. Kept as raw JSON so that a name tka does not read
    /// can hold anything without failing the answer.
    #[serde(rename = "CapMap", deserialize_with = "nullable")]
    cap_map: serde_json::Map<String, Value>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct WireNode {
    #[serde(rename = "StableID", deserialize_with = "nullable")]
    stable_id: String,
    #[serde(rename = "Name", deserialize_with = "nullable")]
    name: String,
    #[serde(rename = "ComputedName", deserialize_with = "nullable")]
    computed_name: String,
    #[serde(rename = "Addresses", deserialize_with = "nullable")]
    addresses: Vec<String>,
    #[serde(rename = "Tags", deserialize_with = "nullable")]
    tags: Vec<String>,
    /// Only `Hostinfo.Hostname` is read (a last resort for the name); the rest changes often.
    #[serde(rename = "Hostinfo", deserialize_with = "nullable")]
    hostinfo: Value,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct WireUserProfile {
    #[serde(rename = "ID", deserialize_with = "nullable")]
    id: i64,
    #[serde(rename = "LoginName", deserialize_with = "nullable")]
    login_name: String,
    #[serde(rename = "DisplayName", deserialize_with = "nullable")]
    display_name: String,
    #[serde(rename = "Groups", deserialize_with = "nullable")]
    groups: Vec<String>,
}

/// Reads a whois answer (`GET /localapi/v0/whois` → 200) into an [`Identity`].
///
/// Values under `names.primary` become [`Identity::capabilities`], values under `names.compat`
/// (when set) [`Identity::compat_capabilities`], exactly as delivered; every other capability name
/// is ignored, whatever its shape. `Node.Name` loses its trailing dot; addresses lose their prefix
/// length. A tagged device is one whose node has tags.
///
/// ```
/// use tka_core::identity::{CapabilityNames, wire};
/// let body = br#"{
///   "Node": {"ID": 7, "StableID": "nK8tCNTRL", "Name": "alice-laptop.example.ts.net.",
///            "Addresses": ["100.64.0.7/32", "fd7a:115c:a1e0::7/128"]},
///   "UserProfile": {"ID": 42, "LoginName": "alice@example.com", "DisplayName": "Alice"},
///   "CapMap": {"tka.dev/cap/kubernetes": [{"role": "sre"}], "other.example/cap": [1]}
/// }"#;
/// let id = wire::parse_whois(body, &CapabilityNames::default()).unwrap();
/// assert_eq!(id.key().as_str(), "nK8tCNTRL");
/// assert_eq!(id.node.name, "alice-laptop.example.ts.net");
/// assert_eq!(id.capabilities, vec![serde_json::json!({"role": "sre"})]);
/// assert!(!id.is_tagged());
/// ```
pub fn parse_whois(body: &[u8], names: &CapabilityNames) -> Result<Identity, IdentityError> {
    let wire: WireWhois = object(body, "whois")?;
    let node = wire
        .node
        .ok_or_else(|| malformed("the whois answer has no Node"))?;
    let profile = wire
        .user_profile
        .ok_or_else(|| malformed("the whois answer has no UserProfile"))?;

    let stable_id = NodeId::new(node.stable_id)
        .map_err(|e| malformed(format!("the whois answer's Node.StableID: {e}")))?;
    let addresses = node
        .addresses
        .iter()
        .map(|a| {
            parse_addr(a).ok_or_else(|| {
                malformed(format!(
                    "the whois answer's Node.Addresses has {a:?}, not an IP prefix"
                ))
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    // Tags decide whether the caller acts as a person or as its tags: an unreadable tag must not
    // quietly turn a tagged device into its owner.
    let tags = node
        .tags
        .into_iter()
        .map(|t| Tag::new(t).map_err(|e| malformed(format!("the whois answer's Node.Tags: {e}"))))
        .collect::<Result<Vec<_>, _>>()?;
    let hostname = node
        .hostinfo
        .get("Hostname")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let name = [node.name.as_str(), node.computed_name.as_str(), hostname]
        .into_iter()
        .map(strip_root)
        .find(|n| !n.is_empty())
        .unwrap_or(stable_id.as_str())
        .to_owned();

    let login_name = LoginName::new(profile.login_name)
        .map_err(|e| malformed(format!("the whois answer's UserProfile.LoginName: {e}")))?;

    let capabilities = capability_values(&wire.cap_map, &names.primary)?;
    let compat_capabilities = match &names.compat {
        Some(compat) => capability_values(&wire.cap_map, compat)?,
        None => Vec::new(),
    };

    Ok(Identity {
        user: UserInfo {
            id: UserId(profile.id),
            login_name,
            display_name: profile.display_name,
        },
        node: NodeInfo {
            stable_id,
            name,
            addresses,
            tags,
        },
        groups: profile.groups,
        capabilities,
        compat_capabilities,
    })
}

fn capability_values(
    cap_map: &serde_json::Map<String, Value>,
    name: &str,
) -> Result<Vec<Value>, IdentityError> {
    match cap_map.get(name) {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(values)) => Ok(values.clone()),
        Some(other) => Err(malformed(format!(
            "the whois answer's CapMap[{name:?}] is {}, not a list of values",
            json_kind(other)
        ))),
    }
}

fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

/// An address as tailscaled prints it: a prefix (`100.64.0.1/32`, in whois) or a bare address
/// (`100.64.0.1`, in status).
fn parse_addr(s: &str) -> Option<IpAddr> {
    let (ip, bits) = match s.split_once('/') {
        Some((ip, bits)) => (ip, Some(bits)),
        None => (s, None),
    };
    let ip: IpAddr = ip.parse().ok()?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    match bits {
        Some(bits) if bits.parse::<u8>().ok()? > max => None,
        _ => Some(ip),
    }
}

/// A DNS name without the root's trailing dot.
fn strip_root(name: &str) -> &str {
    name.strip_suffix('.').unwrap_or(name)
}

/// What the local tailscaled knows about its tailnet: `GET /localapi/v0/status`, or
/// `tailscale status --json`. Built by [`parse_status`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Status {
    /// The daemon's backend state: `Running` when connected ([`BACKEND_RUNNING`]), otherwise
    /// e.g. `NeedsLogin`, `Stopped`, `Starting`.
    pub backend_state: String,
    /// The daemon's version, as it reports it.
    pub version: String,
    /// The tailnet's name, where the daemon reports it.
    pub tailnet: Option<String>,
    /// The MagicDNS suffix (`example.ts.net`), without the trailing dot; empty if unknown.
    pub magic_dns_suffix: String,
    /// This machine's own node; `None` when the daemon has no identity (logged out).
    pub self_node: Option<PeerStatus>,
    /// The other nodes, ordered by DNS name, then stable ID.
    pub peers: Vec<PeerStatus>,
}

/// One node of [`Status`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PeerStatus {
    /// The node's stable ID: the key tka uses for devices.
    pub stable_id: NodeId,
    /// The host name the device reports (not necessarily unique, not a DNS name).
    pub host_name: String,
    /// The MagicDNS name, without the trailing dot; empty if the node has none.
    pub dns_name: String,
    /// The operating system the device reports.
    pub os: String,
    /// The node's tailnet addresses.
    pub addresses: Vec<IpAddr>,
    /// The node's ACL tags.
    pub tags: Vec<Tag>,
    /// Whether the node is connected to the control plane.
    pub online: bool,
    /// The owning user's ID (the shared `tagged-devices` user for tagged devices).
    pub user_id: UserId,
    /// The owning user's login name, where the status lists that user.
    pub login_name: Option<LoginName>,
}

impl PeerStatus {
    /// Whether this is a tagged device.
    pub fn is_tagged(&self) -> bool {
        !self.tags.is_empty()
    }

    /// Who the node acts as ([`crate::domain::acting_as`]); `None` for an untagged node whose
    /// user the status does not list.
    pub fn acting_as(&self) -> Option<String> {
        if !self.is_tagged() && self.login_name.is_none() {
            return None;
        }
        let login_name = self.login_name.as_ref().map_or("", LoginName::as_str);
        Some(crate::domain::acting_as(&self.tags, login_name))
    }

    /// Whether the node carries `tag`.
    pub fn has_tag(&self, tag: &Tag) -> bool {
        self.tags.contains(tag)
    }

    /// The first label of the DNS name (what MagicDNS resolves on its own), else the host name.
    pub fn short_name(&self) -> &str {
        match self.dns_name.split('.').next() {
            Some(label) if !label.is_empty() => label,
            _ => &self.host_name,
        }
    }
}

impl Status {
    /// Whether the daemon is connected to its tailnet.
    pub fn is_running(&self) -> bool {
        self.backend_state == BACKEND_RUNNING
    }

    /// This machine's node, if the daemon is connected; otherwise
    /// [`IdentityError::NotConnected`] with the backend state, which tells the user what to do.
    pub fn require_self(&self) -> Result<&PeerStatus, IdentityError> {
        match &self.self_node {
            Some(node) if self.is_running() => Ok(node),
            _ => Err(IdentityError::NotConnected(self.backend_state.clone())),
        }
    }

    /// The login name of the user this machine is logged in as (`tagged-devices` when the
    /// machine itself is tagged).
    pub fn current_login_name(&self) -> Option<&LoginName> {
        self.self_node.as_ref()?.login_name.as_ref()
    }

    /// The peers carrying `tag` (e.g. the server tag `tag:tka`, for discovery).
    pub fn peers_with_tag<'a>(&'a self, tag: &'a Tag) -> impl Iterator<Item = &'a PeerStatus> {
        self.peers.iter().filter(move |p| p.has_tag(tag))
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct WireStatus {
    #[serde(rename = "Version", deserialize_with = "nullable")]
    version: String,
    #[serde(rename = "BackendState", deserialize_with = "nullable")]
    backend_state: String,
    #[serde(rename = "MagicDNSSuffix", deserialize_with = "nullable")]
    magic_dns_suffix: String,
    #[serde(rename = "CurrentTailnet")]
    current_tailnet: Option<WireTailnet>,
    #[serde(rename = "Self")]
    self_node: Option<WirePeerStatus>,
    /// Keyed by node public key, which tka has no use for.
    #[serde(rename = "Peer", deserialize_with = "nullable")]
    peer: BTreeMap<String, Option<WirePeerStatus>>,
    /// Keyed by user ID, as a JSON string.
    #[serde(rename = "User", deserialize_with = "nullable")]
    user: BTreeMap<String, Option<WireUserProfile>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct WireTailnet {
    #[serde(rename = "Name", deserialize_with = "nullable")]
    name: String,
    #[serde(rename = "MagicDNSSuffix", deserialize_with = "nullable")]
    magic_dns_suffix: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct WirePeerStatus {
    #[serde(rename = "ID", deserialize_with = "nullable")]
    id: String,
    #[serde(rename = "HostName", deserialize_with = "nullable")]
    host_name: String,
    #[serde(rename = "DNSName", deserialize_with = "nullable")]
    dns_name: String,
    #[serde(rename = "OS", deserialize_with = "nullable")]
    os: String,
    #[serde(rename = "UserID", deserialize_with = "nullable")]
    user_id: i64,
    #[serde(rename = "TailscaleIPs", deserialize_with = "nullable")]
    tailscale_ips: Vec<String>,
    #[serde(rename = "Tags", deserialize_with = "nullable")]
    tags: Vec<String>,
    #[serde(rename = "Online", deserialize_with = "nullable")]
    online: bool,
}

/// Reads a status answer (`GET /localapi/v0/status` → 200, or the output of
/// `tailscale status --json`) into a [`Status`].
///
/// Only an answer that is not a JSON object of the expected shape is an error. A node without a
/// stable ID (the self node of a logged-out daemon) is left out, and so are addresses and tags
/// that cannot be read (logged at debug level): discovery shows what it can.
///
/// ```
/// use tka_core::identity::wire;
/// let body = br#"{"BackendState": "Running", "MagicDNSSuffix": "example.ts.net",
///   "Self": {"ID": "nSelfCNTRL", "DNSName": "laptop.example.ts.net.", "UserID": 1,
///            "TailscaleIPs": ["100.64.0.1"], "Online": true},
///   "Peer": {"nodekey:ab": {"ID": "nSrvCNTRL", "DNSName": "tka-prod.example.ts.net.",
///            "UserID": 2, "TailscaleIPs": ["100.64.0.2"], "Tags": ["tag:tka"], "Online": true}},
///   "User": {"1": {"ID": 1, "LoginName": "alice@example.com"},
///            "2": {"ID": 2, "LoginName": "tagged-devices"}}}"#;
/// let status = wire::parse_status(body).unwrap();
/// assert_eq!(status.current_login_name().unwrap().as_str(), "alice@example.com");
/// let tag = "tag:tka".parse().unwrap();
/// let servers: Vec<_> = status.peers_with_tag(&tag).map(|p| p.short_name()).collect();
/// assert_eq!(servers, ["tka-prod"]);
/// ```
pub fn parse_status(body: &[u8]) -> Result<Status, IdentityError> {
    let wire: WireStatus = object(body, "status")?;

    let logins: HashMap<i64, LoginName> = wire
        .user
        .iter()
        .filter_map(|(key, profile)| {
            let profile = profile.as_ref()?;
            let id = if profile.id != 0 {
                profile.id
            } else {
                key.parse().ok()?
            };
            let login = LoginName::new(profile.login_name.clone()).ok()?;
            Some((id, login))
        })
        .collect();

    let self_node = wire.self_node.and_then(|node| peer_status(node, &logins));
    let mut peers: Vec<PeerStatus> = wire
        .peer
        .into_values()
        .flatten()
        .filter_map(|node| peer_status(node, &logins))
        .collect();
    peers.sort_by(|a, b| {
        (a.dns_name.as_str(), a.stable_id.as_str())
            .cmp(&(b.dns_name.as_str(), b.stable_id.as_str()))
    });

    let (tailnet, tailnet_suffix) = match wire.current_tailnet {
        Some(t) => ((!t.name.is_empty()).then_some(t.name), t.magic_dns_suffix),
        None => (None, String::new()),
    };
    let magic_dns_suffix = if wire.magic_dns_suffix.is_empty() {
        tailnet_suffix
    } else {
        wire.magic_dns_suffix
    };

    Ok(Status {
        backend_state: wire.backend_state,
        version: wire.version,
        tailnet,
        magic_dns_suffix: strip_root(&magic_dns_suffix).to_owned(),
        self_node,
        peers,
    })
}

fn peer_status(node: WirePeerStatus, logins: &HashMap<i64, LoginName>) -> Option<PeerStatus> {
    let Ok(stable_id) = NodeId::new(node.id) else {
        tracing::debug!(host = %node.host_name, "status lists a node without a stable ID; skipped");
        return None;
    };
    let addresses = node
        .tailscale_ips
        .iter()
        .filter_map(|a| {
            let ip = parse_addr(a);
            if ip.is_none() {
                tracing::debug!(node = %stable_id, address = %a, "unreadable address in status; skipped");
            }
            ip
        })
        .collect();
    let tags = node
        .tags
        .into_iter()
        .filter_map(|t| match Tag::new(t) {
            Ok(tag) => Some(tag),
            Err(e) => {
                tracing::debug!(node = %stable_id, error = %e, "unreadable tag in status; skipped");
                None
            }
        })
        .collect();
    Some(PeerStatus {
        login_name: logins.get(&node.user_id).cloned(),
        stable_id,
        host_name: node.host_name,
        dns_name: strip_root(&node.dns_name).to_owned(),
        os: node.os,
        addresses,
        tags,
        online: node.online,
        user_id: UserId(node.user_id),
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn names() -> CapabilityNames {
        CapabilityNames {
            primary: "tka.dev/cap/kubernetes".into(),
            compat: Some("specht-labs.de/cap/tka".into()),
        }
    }

    fn whois(value: &Value) -> Result<Identity, IdentityError> {
        parse_whois(value.to_string().as_bytes(), &names())
    }

    fn user_device() -> Value {
        json!({
            "Node": {
                "ID": 12, "StableID": "nAliceCNTRL", "Name": "alice-laptop.example.ts.net.",
                "Addresses": ["100.64.0.12/32", "fd7a:115c:a1e0::c/128"],
                "ComputedName": "alice-laptop"
            },
            "UserProfile": {"ID": 101, "LoginName": "alice@example.com", "DisplayName": "Alice"},
            "CapMap": {
                "tka.dev/cap/kubernetes": [{"role": "sre"}, {"role": "read-only", "clusters": ["prod-*"]}],
                "specht-labs.de/cap/tka": [{"role": "sre", "period": "4h"}],
                "example.com/cap/other": {"not": "a list"}
            }
        })
    }

    #[test]
    fn reads_a_user_device_with_capabilities() {
        let id = whois(&user_device()).unwrap();
        assert_eq!(id.key().as_str(), "nAliceCNTRL");
        assert_eq!(id.node.name, "alice-laptop.example.ts.net");
        assert_eq!(
            id.node.addresses,
            vec![
                "100.64.0.12".parse::<IpAddr>().unwrap(),
                "fd7a:115c:a1e0::c".parse::<IpAddr>().unwrap()
            ]
        );
        assert_eq!(id.user.login_name.as_str(), "alice@example.com");
        assert_eq!(id.user.id, UserId(101));
        assert!(!id.is_tagged());
        assert_eq!(
            id.capabilities,
            vec![
                json!({"role": "sre"}),
                json!({"role": "read-only", "clusters": ["prod-*"]})
            ]
        );
        assert_eq!(
            id.compat_capabilities,
            vec![json!({"role": "sre", "period": "4h"})]
        );
    }

    #[test]
    fn compat_values_are_read_only_when_configured() {
        let only_primary = CapabilityNames::default();
        let id = parse_whois(user_device().to_string().as_bytes(), &only_primary).unwrap();
        assert_eq!(id.capabilities.len(), 2);
        assert!(id.compat_capabilities.is_empty());
    }

    #[test]
    fn a_tagged_device_is_known_by_its_tags_not_its_login_name() {
        let mut v = user_device();
        v["Node"]["Tags"] = json!(["tag:ci", "tag:deploy"]);
        v["UserProfile"] =
            json!({"ID": 9000, "LoginName": "tagged-devices", "DisplayName": "Tagged Devices"});
        let id = whois(&v).unwrap();
        assert!(id.is_tagged());
        assert_eq!(
            id.node.tags,
            vec![Tag::new("tag:ci").unwrap(), Tag::new("tag:deploy").unwrap()]
        );

        assert_eq!(id.acting_as(), "tag:ci,tag:deploy");
        assert_eq!(
            id.describe(),
            format!("tag:ci,tag:deploy ({})", id.node.name)
        );

        // A node that reports the shared login name but no tags is not tagged.
        let mut untagged = user_device();
        untagged["UserProfile"]["LoginName"] = json!(TAGGED_DEVICES_LOGIN);
        assert!(!whois(&untagged).unwrap().is_tagged());
        assert_eq!(whois(&untagged).unwrap().acting_as(), TAGGED_DEVICES_LOGIN);
        let person = whois(&user_device()).unwrap();
        assert_eq!(person.acting_as(), person.user.login_name.as_str());
    }

    #[test]
    fn nulls_and_absent_fields_read_as_empty() {
        let mut v = user_device();
        v["CapMap"] = Value::Null;
        v["Node"]["Tags"] = Value::Null;
        v["Node"]["Hostinfo"] = Value::Null;
        v["UserProfile"]["Groups"] = Value::Null;
        let id = whois(&v).unwrap();
        assert!(id.capabilities.is_empty());
        assert!(id.groups.is_empty());
        assert!(!id.is_tagged());

        let mut sparse = user_device();
        sparse.as_object_mut().unwrap().remove("CapMap");
        let id = whois(&sparse).unwrap();
        assert!(id.capabilities.is_empty());

        let mut null_values = user_device();
        null_values["CapMap"]["tka.dev/cap/kubernetes"] = Value::Null;
        assert!(whois(&null_values).unwrap().capabilities.is_empty());
    }

    #[test]
    fn groups_are_read_where_reported() {
        let mut v = user_device();
        v["UserProfile"]["Groups"] = json!(["group:sre"]);
        assert_eq!(whois(&v).unwrap().groups, vec!["group:sre".to_owned()]);
    }

    #[test]
    fn the_name_falls_back_to_computed_name_then_hostname() {
        let mut v = user_device();
        v["Node"]["Name"] = json!("");
        assert_eq!(whois(&v).unwrap().node.name, "alice-laptop");
        v["Node"]["ComputedName"] = json!("");
        v["Node"]["Hostinfo"] = json!({"Hostname": "alice-mbp"});
        assert_eq!(whois(&v).unwrap().node.name, "alice-mbp");
        v["Node"]["Hostinfo"] = json!({});
        assert_eq!(whois(&v).unwrap().node.name, "nAliceCNTRL");
    }

    #[test]
    fn what_decides_identity_must_be_readable() {
        assert!(whois(&user_device()).is_ok());
        type Mutation = Box<dyn Fn(&mut Value)>;
        let cases: Vec<(&str, Mutation)> = vec![
            ("no Node", Box::new(|v: &mut Value| v["Node"] = Value::Null)),
            (
                "no UserProfile",
                Box::new(|v: &mut Value| {
                    v.as_object_mut().unwrap().remove("UserProfile");
                }),
            ),
            (
                "empty StableID",
                Box::new(|v: &mut Value| v["Node"]["StableID"] = json!("")),
            ),
            (
                "bad address",
                Box::new(|v: &mut Value| v["Node"]["Addresses"] = json!(["100.64.0.1/99"])),
            ),
            (
                "bad tag",
                Box::new(|v: &mut Value| v["Node"]["Tags"] = json!(["ci"])),
            ),
            (
                "empty login",
                Box::new(|v: &mut Value| v["UserProfile"]["LoginName"] = json!("")),
            ),
            (
                "capability not a list",
                Box::new(|v: &mut Value| {
                    v["CapMap"]["tka.dev/cap/kubernetes"] = json!({"role": "sre"});
                }),
            ),
        ];
        for (what, mutate) in cases {
            let mut v = user_device();
            mutate(&mut v);
            match whois(&v) {
                Err(IdentityError::Malformed(message)) => assert!(!message.is_empty(), "{what}"),
                other => panic!("{what}: expected Malformed, got {other:?}"),
            }
        }
        for body in [&b"null"[..], b"[]", b"<html>", b""] {
            assert!(matches!(
                parse_whois(body, &names()),
                Err(IdentityError::Malformed(_))
            ));
        }
    }

    #[test]
    fn addresses_read_as_prefixes_or_bare() {
        assert_eq!(parse_addr("100.64.0.1/32"), "100.64.0.1".parse().ok());
        assert_eq!(parse_addr("100.64.0.1"), "100.64.0.1".parse().ok());
        assert_eq!(
            parse_addr("fd7a:115c:a1e0::1/128"),
            "fd7a:115c:a1e0::1".parse().ok()
        );
        assert_eq!(parse_addr("100.64.0.1/33"), None);
        assert_eq!(parse_addr("host/32"), None);
    }

    fn status_json() -> Value {
        json!({
            "Version": "1.90.0",
            "BackendState": "Running",
            "MagicDNSSuffix": "example.ts.net",
            "CurrentTailnet": {"Name": "example.com", "MagicDNSSuffix": "example.ts.net", "MagicDNSEnabled": true},
            "Self": {"ID": "nSelfCNTRL", "HostName": "laptop", "DNSName": "laptop.example.ts.net.",
                     "OS": "linux", "UserID": 1, "TailscaleIPs": ["100.64.0.1", "fd7a:115c:a1e0::1"], "Online": true},
            "Peer": {
                "nodekey:02": {"ID": "nZedCNTRL", "HostName": "zed", "DNSName": "zed.example.ts.net.",
                               "UserID": 1, "TailscaleIPs": ["100.64.0.3"], "Online": false},
                "nodekey:01": {"ID": "nSrvCNTRL", "HostName": "tka-prod", "DNSName": "tka-prod.example.ts.net.",
                               "UserID": 2, "TailscaleIPs": ["100.64.0.2"], "Tags": ["tag:tka", "bogus"], "Online": true},
                "nodekey:03": null
            },
            "User": {"1": {"ID": 1, "LoginName": "alice@example.com", "DisplayName": "Alice"},
                     "2": {"ID": 2, "LoginName": "tagged-devices", "DisplayName": "Tagged Devices"}}
        })
    }

    #[test]
    fn reads_status_for_discovery() {
        let status = parse_status(status_json().to_string().as_bytes()).unwrap();
        assert!(status.is_running());
        assert_eq!(status.tailnet.as_deref(), Some("example.com"));
        assert_eq!(status.magic_dns_suffix, "example.ts.net");
        let me = status.require_self().unwrap();
        assert_eq!(me.stable_id.as_str(), "nSelfCNTRL");
        assert_eq!(me.addresses.len(), 2);
        assert_eq!(
            status.current_login_name().unwrap().as_str(),
            "alice@example.com"
        );
        let ids: Vec<&str> = status.peers.iter().map(|p| p.stable_id.as_str()).collect();
        assert_eq!(ids, ["nSrvCNTRL", "nZedCNTRL"]);
        let server = &status.peers[0];
        assert_eq!(server.dns_name, "tka-prod.example.ts.net");
        assert_eq!(server.short_name(), "tka-prod");
        assert_eq!(server.tags, vec![Tag::new("tag:tka").unwrap()]);
        assert!(server.online);
        assert_eq!(
            server.login_name.as_ref().unwrap().as_str(),
            "tagged-devices"
        );
        let tka = Tag::new("tag:tka").unwrap();
        assert_eq!(status.peers_with_tag(&tka).count(), 1);
        // A peer acts as its tags, a person's device as its user, and one whose user the status
        // does not list as nobody known.
        assert_eq!(server.acting_as().as_deref(), Some("tag:tka"));
        assert_eq!(me.acting_as().as_deref(), Some("alice@example.com"));
        let mut unlisted = me.clone();
        unlisted.login_name = None;
        assert_eq!(unlisted.acting_as(), None);
        assert!(!status.peers[1].online);
    }

    #[test]
    fn a_logged_out_daemon_has_no_self() {
        let body = json!({"BackendState": "NeedsLogin", "Self": {"ID": "", "TailscaleIPs": null},
                          "Peer": null, "User": null, "TailscaleIPs": null});
        let status = parse_status(body.to_string().as_bytes()).unwrap();
        assert!(status.self_node.is_none());
        assert!(status.peers.is_empty());
        match status.require_self() {
            Err(e @ IdentityError::NotConnected(_)) => {
                assert!(e.to_string().contains("NeedsLogin"));
                assert!(e.to_string().contains("tailscale up"));
            }
            other => panic!("expected NotConnected, got {other:?}"),
        }
        // Connected, by contrast, has a self node.
        let running = parse_status(status_json().to_string().as_bytes()).unwrap();
        assert!(running.require_self().is_ok());
    }

    #[test]
    fn a_status_that_is_not_an_object_is_malformed() {
        assert!(parse_status(b"{}").is_ok());
        for body in [&b"null"[..], b"[]", b"tailscaled\n"] {
            assert!(matches!(
                parse_status(body),
                Err(IdentityError::Malformed(_))
            ));
        }
    }
}
