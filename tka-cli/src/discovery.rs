//! Finding tka servers: tailnet peers carrying the server tag (from the local tailscaled) plus the
//! servers named in the config file, each asked `GET /api/v1/cluster` in parallel, and the pins
//! that tie a cluster name to the server node that first claimed it.
//!
//! It owns the config file (`config.toml`), the pin file (`pins.json`) and the rules of who is
//! trusted for a name. It must not write the kubeconfig or log in: commands do that with what it
//! returns. Servers are reached by tailnet address (`http://<ipv4>`), never by MagicDNS name.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::net::IpAddr;
use std::os::unix::fs::{DirBuilderExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use tka_core::api::ClusterResponse;
use tka_core::endpoint::{ServerUrl, Socks5Addr};
use tka_core::identity::{IdentityError, Status, TailnetStatus as _, TailscaleLocalApi};
use tka_core::{ClusterName, Tag};

use crate::cli::Environment;
use crate::client::{ApiClient, ApiError, Network};
use crate::kubeconfig_file::write_atomically;

/// The server tag when neither flag, environment nor config file names one.
pub(crate) const DEFAULT_SERVER_TAG: &str = "tag:tka";

/// `~/.config/tka/config.toml`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ConfigFile {
    /// Servers to ask besides the tagged peers.
    #[serde(default)]
    pub(crate) servers: Vec<ConfiguredServer>,
    /// The SOCKS5 proxy, when no flag or environment variable names one.
    pub(crate) socks5: Option<Socks5Addr>,
    /// The server tag, when no flag or environment variable names one.
    pub(crate) server_tag: Option<Tag>,
}

/// One `[[servers]]` entry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ConfiguredServer {
    pub(crate) url: ServerUrl,
}

/// The config file could not be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub(crate) enum ConfigError {
    #[error("cannot read the config file {}: {source}", .path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the config file {} is not valid: {reason}", .path.display())]
    Invalid { path: PathBuf, reason: String },
}

impl ConfigError {
    pub(crate) fn hint(&self) -> String {
        "fix or remove the config file; docs/cli.md describes its keys (servers, socks5, server_tag)"
            .to_owned()
    }
}

/// Where the config file is: `$XDG_CONFIG_HOME/tka/config.toml` (absolute only), else
/// `~/.config/tka/config.toml`.
pub(crate) fn config_path(env: &Environment) -> Option<PathBuf> {
    env.xdg_config_home
        .clone()
        .filter(|p| p.is_absolute())
        .or_else(|| env.home.as_ref().map(|h| h.join(".config")))
        .map(|base| base.join("tka").join("config.toml"))
}

impl ConfigFile {
    /// Reads the config file; a missing file is an empty config.
    pub(crate) fn load(env: &Environment) -> Result<Self, ConfigError> {
        let Some(path) = config_path(env) else {
            return Ok(Self::default());
        };
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Self::default()),
            Err(source) => return Err(ConfigError::Read { path, source }),
        };
        toml::from_str(&text).map_err(|e| ConfigError::Invalid {
            path,
            reason: e.message().to_owned(),
        })
    }
}

/// How to find servers, validated.
#[derive(Debug, Clone)]
pub(crate) struct DiscoverySettings {
    pub(crate) socket: PathBuf,
    pub(crate) tailscale_cli: OsString,
    pub(crate) tag: Tag,
    pub(crate) port: u16,
    pub(crate) configured: Vec<ServerUrl>,
}

/// A server node: its stable ID (or, for a configured server that is no known peer, its URL)
/// and a name for people.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ServerNode {
    /// The pin key: the node's stable ID, or `url:<server>` when the node is not known.
    pub(crate) id: String,
    /// The node's name (first DNS label), or the URL.
    pub(crate) name: String,
}

/// A server to ask.
#[derive(Debug, Clone)]
pub(crate) struct Candidate {
    pub(crate) url: ServerUrl,
    pub(crate) node: ServerNode,
    pub(crate) online: bool,
}

/// What one server said, and whether it is trusted for the name it claims.
#[derive(Debug)]
pub(crate) struct Found {
    pub(crate) candidate: Candidate,
    pub(crate) outcome: Outcome,
}

#[derive(Debug)]
pub(crate) enum Outcome {
    /// The server answered and is trusted for its cluster.
    Trusted(Box<ClusterResponse>),
    /// The server answered, but its cluster name belongs to (or is also claimed by) other nodes.
    Conflict {
        response: Box<ClusterResponse>,
        /// The node the name is pinned to, if any.
        pinned_to: Option<ServerNode>,
        /// The other nodes that claim the name now.
        others: Vec<ServerNode>,
    },
    /// The peer is offline; it was not asked.
    Offline,
    /// Asking failed.
    Failed(ApiError),
}

/// Why discovery found nothing to work with.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub(crate) enum DiscoveryError {
    /// tailscaled could not be asked.
    #[error("cannot ask tailscaled for the tailnet's peers: {source}")]
    Tailscaled {
        socket: PathBuf,
        source: IdentityError,
    },
    /// No peer carries the tag and no server is configured.
    #[error("no tka servers found: no peer on the tailnet carries {tag}")]
    NoServers { tag: Tag, config: Option<PathBuf> },
    /// The async runtime for the LocalAPI call could not start.
    #[error("cannot start the runtime to ask tailscaled: {0}")]
    Runtime(std::io::Error),
}

impl DiscoveryError {
    pub(crate) fn hint(&self) -> String {
        match self {
            Self::Tailscaled {
                source: IdentityError::SocketMissing(_) | IdentityError::NotConnected(_),
                ..
            } => "start Tailscale (`tailscale up`), or pass --server URL".to_owned(),
            Self::Tailscaled { socket, .. } => format!(
                "check that tailscaled is running (`tailscale status`) and that its socket is {} \
                 (--tailscale-socket, TKA_TAILSCALE_SOCKET), or pass --server URL",
                socket.display()
            ),
            Self::NoServers { tag, config } => format!(
                "the tailnet policy must let this device reach the servers tagged {tag}; check the tag \
                 (--server-tag / TKA_SERVER_TAG), or list servers under [[servers]] in {}",
                config.as_ref().map_or_else(
                    || "~/.config/tka/config.toml".to_owned(),
                    |p| p.display().to_string()
                )
            ),
            Self::Runtime(_) => "try again".to_owned(),
        }
    }
}

/// Asks tailscaled for the tailnet's status (LocalAPI, else `tailscale status --json`).
pub(crate) fn tailnet_status(
    settings: &DiscoverySettings,
    timeout: std::time::Duration,
) -> Result<Status, DiscoveryError> {
    let localapi = TailscaleLocalApi::new(&settings.socket)
        .with_cli_binary(settings.tailscale_cli.clone())
        .with_timeout(timeout);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(DiscoveryError::Runtime)?;
    // Without a self node (logged out, stopped) this device reaches no peers: say so.
    let checked = runtime.block_on(localapi.status()).and_then(|status| {
        status.require_self()?;
        Ok(status)
    });
    checked.map_err(|source| DiscoveryError::Tailscaled {
        socket: settings.socket.clone(),
        source,
    })
}

/// The servers to ask: tagged peers (by IPv4 address, else IPv6) and configured servers, each
/// URL once.
pub(crate) fn candidates(settings: &DiscoverySettings, status: Option<&Status>) -> Vec<Candidate> {
    let mut out: Vec<Candidate> = Vec::new();
    if let Some(status) = status {
        for peer in status.peers_with_tag(&settings.tag) {
            let address = peer
                .addresses
                .iter()
                .find(|a| a.is_ipv4())
                .or_else(|| peer.addresses.first());
            let Some(address) = address else { continue };
            let Some(url) = peer_url(*address, settings.port) else {
                continue;
            };
            out.push(Candidate {
                url,
                node: ServerNode {
                    id: peer.stable_id.to_string(),
                    name: peer.short_name().to_owned(),
                },
                online: peer.online,
            });
        }
    }
    for url in &settings.configured {
        if out.iter().any(|c| &c.url == url) {
            continue;
        }
        let peer = status.and_then(|s| {
            let host = url_host(url)?;
            s.peers.iter().find(|p| p.addresses.contains(&host))
        });
        let node = match peer {
            Some(peer) => ServerNode {
                id: peer.stable_id.to_string(),
                name: peer.short_name().to_owned(),
            },
            None => ServerNode {
                id: format!("url:{url}"),
                name: url.to_string(),
            },
        };
        out.push(Candidate {
            url: url.clone(),
            node,
            online: true,
        });
    }
    out
}

fn peer_url(address: IpAddr, port: u16) -> Option<ServerUrl> {
    let host = match address {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => format!("[{v6}]"),
    };
    let url = if port == 80 {
        format!("http://{host}")
    } else {
        format!("http://{host}:{port}")
    };
    ServerUrl::parse(&url).ok()
}

/// The IP address a URL names, if it names one.
fn url_host(url: &ServerUrl) -> Option<IpAddr> {
    let rest = url.as_str().split_once("://")?.1;
    let authority = rest.split('/').next()?;
    if let Some(v6) = authority.strip_prefix('[') {
        return v6.split(']').next()?.parse().ok();
    }
    authority.split(':').next()?.parse().ok()
}

/// Asks every candidate `GET /api/v1/cluster`, all at once (one thread each), and applies the
/// pins (recording new ones). The result keeps the candidates' order.
pub(crate) fn probe(
    candidates: Vec<Candidate>,
    network: &Network,
    pins: &mut Pins,
    now: Timestamp,
) -> Vec<Found> {
    let answers: Vec<Option<Result<ClusterResponse, ApiError>>> = std::thread::scope(|scope| {
        let handles: Vec<_> = candidates
            .iter()
            .map(|c| {
                let url = c.url.clone();
                let online = c.online;
                scope.spawn(move || {
                    online.then(|| ApiClient::new(url, network).and_then(|client| client.cluster()))
                })
            })
            .collect();
        handles
            .into_iter()
            .zip(&candidates)
            .map(|(handle, c)| {
                handle.join().unwrap_or_else(|_| {
                    Some(Err(ApiError::Unreachable {
                        server: c.url.clone(),
                        reason: "the request failed unexpectedly".to_owned(),
                        via_socks5: network.socks5.is_some(),
                    }))
                })
            })
            .collect()
    });
    let raw = candidates.into_iter().zip(answers).collect();
    judge(raw, pins, now)
}

/// Decides who is trusted for each claimed name: the pinned node; with no pin, the only
/// claimant (which gets pinned). Every other claimant is a conflict.
fn judge(
    raw: Vec<(Candidate, Option<Result<ClusterResponse, ApiError>>)>,
    pins: &mut Pins,
    now: Timestamp,
) -> Vec<Found> {
    let mut claims: BTreeMap<ClusterName, Vec<ServerNode>> = BTreeMap::new();
    for (candidate, answer) in &raw {
        if let Some(Ok(response)) = answer {
            let nodes = claims.entry(response.cluster.name.clone()).or_default();
            if !nodes.contains(&candidate.node) {
                nodes.push(candidate.node.clone());
            }
        }
    }
    for (name, nodes) in &claims {
        if let [only] = nodes.as_slice()
            && !pins.clusters.contains_key(name.as_str())
        {
            pins.pin(name, only, now);
        }
    }
    raw.into_iter()
        .map(|(candidate, answer)| {
            let outcome = match answer {
                None => Outcome::Offline,
                Some(Err(e)) => Outcome::Failed(e),
                Some(Ok(response)) => {
                    let name = &response.cluster.name;
                    let others: Vec<ServerNode> = claims
                        .get(name)
                        .map(|nodes| {
                            nodes
                                .iter()
                                .filter(|n| n.id != candidate.node.id)
                                .cloned()
                                .collect()
                        })
                        .unwrap_or_default();
                    match pins.clusters.get(name.as_str()) {
                        Some(pin) if pin.belongs_to(&candidate) => {
                            Outcome::Trusted(Box::new(response))
                        }
                        Some(pin) => Outcome::Conflict {
                            response: Box::new(response),
                            pinned_to: Some(pin.node.clone()),
                            others,
                        },
                        None => Outcome::Conflict {
                            response: Box::new(response),
                            pinned_to: None,
                            others,
                        },
                    }
                }
            };
            Found { candidate, outcome }
        })
        .collect()
}

/// One pin: the node a cluster name belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Pin {
    pub(crate) node: ServerNode,
    pub(crate) pinned_at: Timestamp,
}

/// `pins.json`: cluster name → the node that first claimed it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct Pins {
    #[serde(default)]
    pub(crate) clusters: BTreeMap<String, Pin>,
    #[serde(skip)]
    changed: bool,
}

/// The pin file could not be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub(crate) enum PinError {
    #[error("no home directory (HOME) for the pin file")]
    NoHome,
    #[error("cannot read the pin file {}: {reason}", .path.display())]
    Read { path: PathBuf, reason: String },
    #[error("cannot write the pin file {}: {source}", .path.display())]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl PinError {
    pub(crate) fn hint(&self) -> String {
        match self {
            Self::NoHome => "set HOME or XDG_STATE_HOME".to_owned(),
            Self::Read { path, .. } => format!(
                "the file records which server node each cluster name belongs to; fix it, or remove {} \
                 to trust the next servers seen",
                path.display()
            ),
            Self::Write { .. } => "check the permissions of the directory".to_owned(),
        }
    }
}

/// `$XDG_STATE_HOME/tka/pins.json` (absolute only), else `~/.local/state/tka/pins.json`.
pub(crate) fn pins_path(env: &Environment) -> Result<PathBuf, PinError> {
    env.xdg_state_home
        .clone()
        .filter(|p| p.is_absolute())
        .or_else(|| env.home.as_ref().map(|h| h.join(".local").join("state")))
        .map(|base| base.join("tka").join("pins.json"))
        .ok_or(PinError::NoHome)
}

impl Pin {
    /// Whether `candidate` is the pinned node: the same stable ID, or, for a server pinned by
    /// its URL (configured, and not known as a peer then), the same URL.
    fn belongs_to(&self, candidate: &Candidate) -> bool {
        self.node.id == candidate.node.id
            || self.node.id.strip_prefix("url:") == Some(candidate.url.as_str())
    }
}

impl Pins {
    /// Reads the pin file; a missing file has no pins.
    pub(crate) fn load(path: &Path) -> Result<Self, PinError> {
        match std::fs::read_to_string(path) {
            Ok(text) => serde_json::from_str(&text).map_err(|e| PinError::Read {
                path: path.to_path_buf(),
                reason: e.to_string(),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(e) => Err(PinError::Read {
                path: path.to_path_buf(),
                reason: e.to_string(),
            }),
        }
    }

    /// Whether `cluster` is pinned to `candidate`.
    pub(crate) fn is_pinned_to(&self, cluster: &ClusterName, candidate: &Candidate) -> bool {
        self.clusters
            .get(cluster.as_str())
            .is_some_and(|pin| pin.belongs_to(candidate))
    }

    fn pin(&mut self, name: &ClusterName, node: &ServerNode, now: Timestamp) {
        self.clusters.insert(
            name.to_string(),
            Pin {
                node: node.clone(),
                pinned_at: now,
            },
        );
        self.changed = true;
    }

    /// Writes the file (0600, in a 0700 directory) when a pin was added.
    pub(crate) fn save_if_changed(&self, path: &Path) -> Result<(), PinError> {
        if !self.changed {
            return Ok(());
        }
        let write = |source| PinError::Write {
            path: path.to_path_buf(),
            source,
        };
        let dir = crate::kubeconfig_file::parent_dir(path);
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(write)?;
        let text = serde_json::to_string_pretty(self)
            .map_err(|e| write(std::io::Error::other(e.to_string())))?;
        write_atomically(path, text.as_bytes()).map_err(write)?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(write)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: &str) -> ServerNode {
        ServerNode {
            id: id.to_owned(),
            name: format!("tka-{id}"),
        }
    }

    fn response(cluster: &str) -> ClusterResponse {
        serde_json::from_value(serde_json::json!({
            "cluster": {"name": cluster, "server": "https://k8s.example:6443", "certificateAuthorityData": "Q0E="},
            "caller": "alice@example.com",
            "roles": {"cluster": cluster, "roles": [], "unavailable": [], "skipped": []}
        }))
        .unwrap()
    }

    fn candidate(id: &str) -> Candidate {
        Candidate {
            url: ServerUrl::parse(&format!("http://{id}")).unwrap(),
            node: node(id),
            online: true,
        }
    }

    fn is_trusted(f: &Found) -> bool {
        matches!(f.outcome, Outcome::Trusted(_))
    }

    #[test]
    fn a_single_claimant_is_pinned_and_a_later_one_is_a_conflict() {
        let now: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        let mut pins = Pins::default();
        let found = judge(
            vec![(candidate("a"), Some(Ok(response("prod"))))],
            &mut pins,
            now,
        );
        assert!(is_trusted(&found[0]));
        assert_eq!(pins.clusters["prod"].node, node("a"));

        let found = judge(
            vec![
                (candidate("b"), Some(Ok(response("prod")))),
                (candidate("a"), Some(Ok(response("prod")))),
            ],
            &mut pins,
            now,
        );
        assert!(matches!(
            &found[0].outcome,
            Outcome::Conflict { pinned_to: Some(p), .. } if p == &node("a")
        ));
        assert!(is_trusted(&found[1]));
        assert_eq!(pins.clusters["prod"].node, node("a"));
    }

    #[test]
    fn two_first_claimants_are_both_conflicts_and_nothing_is_pinned() {
        let now: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        let mut pins = Pins::default();
        let found = judge(
            vec![
                (candidate("a"), Some(Ok(response("prod")))),
                (candidate("b"), Some(Ok(response("prod")))),
                (candidate("c"), Some(Ok(response("staging")))),
            ],
            &mut pins,
            now,
        );
        assert!(!is_trusted(&found[0]) && !is_trusted(&found[1]));
        assert!(is_trusted(&found[2]));
        assert!(!pins.clusters.contains_key("prod"));
        assert!(pins.clusters.contains_key("staging"));
    }

    #[test]
    fn a_server_pinned_by_url_is_still_trusted_once_its_node_is_known() {
        let now: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        let mut pins = Pins::default();
        let by_url = Candidate {
            node: ServerNode {
                id: "url:http://a".to_owned(),
                name: "http://a".to_owned(),
            },
            ..candidate("a")
        };
        judge(vec![(by_url, Some(Ok(response("lab"))))], &mut pins, now);
        let found = judge(
            vec![(candidate("a"), Some(Ok(response("lab"))))],
            &mut pins,
            now,
        );
        assert!(is_trusted(&found[0]));
        let found = judge(
            vec![(candidate("b"), Some(Ok(response("lab"))))],
            &mut pins,
            now,
        );
        assert!(!is_trusted(&found[0]));
    }

    #[test]
    fn the_config_file_has_servers_socks5_and_tag_and_refuses_unknown_keys() {
        let config: ConfigFile = toml::from_str(
            "server_tag = \"tag:k8s-auth\"\nsocks5 = \"localhost:1055\"\n\n[[servers]]\nurl = \"http://tka-lab\"\n",
        )
        .unwrap();
        assert_eq!(config.server_tag.unwrap().to_string(), "tag:k8s-auth");
        assert!(config.socks5.is_some());
        assert_eq!(config.servers[0].url.as_str(), "http://tka-lab");
        assert!(toml::from_str::<ConfigFile>("servers = []\nsever_tag = \"tag:x\"\n").is_err());
        assert!(toml::from_str::<ConfigFile>("[[servers]]\nurl = \"ftp://x\"\n").is_err());
        assert!(toml::from_str::<ConfigFile>("").unwrap().servers.is_empty());
    }

    #[test]
    fn url_hosts_are_read_for_ip_addresses_only() {
        let url = |s: &str| ServerUrl::parse(s).unwrap();
        assert_eq!(
            url_host(&url("http://100.64.0.5:8080/x")),
            Some("100.64.0.5".parse().unwrap())
        );
        assert_eq!(
            url_host(&url("http://[fd7a:115c:a1e0::5]")),
            Some("fd7a:115c:a1e0::5".parse().unwrap())
        );
        assert_eq!(url_host(&url("http://tka-prod")), None);
    }
}
