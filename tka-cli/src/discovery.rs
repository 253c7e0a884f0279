//! Finding tka servers: tailnet peers carrying the server tag (from the local tailscaled) plus the
//! servers named in the config file, each asked `GET /api/v1/cluster` in parallel, and the pins
//! that tie a cluster name to the server node that first claimed it.
//!
//! It owns the rules of who is trusted for a name, applied to the pins it is handed. It must not
//! write the kubeconfig or log in (commands do that with what it returns), nor read the config
//! file ([`crate::config`]) or keep the pin file ([`crate::pins`]). Servers are reached by
//! tailnet address (`http://<ipv4>`), never by MagicDNS name.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, PoisonError};

use jiff::Timestamp;
use tka_core::api::ClusterResponse;
use tka_core::endpoint::ServerUrl;
use tka_core::identity::{IdentityError, Status, TailnetStatus as _, TailscaleLocalApi};
use tka_core::{ClusterName, Tag};

use crate::client::{ApiClient, ApiError, Network};
use crate::pins::{Pins, ServerNode};

/// The most candidates probed at once.
const MAX_PROBES: usize = 16;

/// How to find servers, validated.
#[derive(Debug, Clone)]
pub(crate) struct DiscoverySettings {
    pub(crate) socket: PathBuf,
    pub(crate) tailscale_cli: OsString,
    pub(crate) tag: Tag,
    pub(crate) port: u16,
    pub(crate) configured: Vec<ServerUrl>,
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

/// Asks every candidate `GET /api/v1/cluster`, at most [`MAX_PROBES`] at a time (one thread
/// each: a tailnet with many tagged servers must not make the CLI start hundreds of threads),
/// and applies the pins (recording new ones). The result keeps the candidates' order.
pub(crate) fn probe(
    candidates: Vec<Candidate>,
    network: &Network,
    pins: &mut Pins,
    now: Timestamp,
) -> Vec<Found> {
    let next = AtomicUsize::new(0);
    let answers: Vec<Mutex<Option<Result<ClusterResponse, ApiError>>>> =
        candidates.iter().map(|_| Mutex::new(None)).collect();
    std::thread::scope(|scope| {
        for _ in 0..candidates.len().min(MAX_PROBES) {
            scope.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(c) = candidates.get(i) else { break };
                    let ask = || {
                        c.online.then(|| {
                            ApiClient::new(c.url.clone(), network)
                                .and_then(|client| client.cluster())
                        })
                    };
                    let answer = std::panic::catch_unwind(std::panic::AssertUnwindSafe(ask))
                        .unwrap_or_else(|_| {
                            Some(Err(ApiError::Unreachable {
                                server: c.url.clone(),
                                reason: "the request failed unexpectedly".to_owned(),
                                via_socks5: network.socks5.is_some(),
                            }))
                        });
                    *answers[i].lock().unwrap_or_else(PoisonError::into_inner) = answer;
                }
            });
        }
    });
    let answers = answers
        .into_iter()
        .map(|a| a.into_inner().unwrap_or_else(PoisonError::into_inner));
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
                        Some(pin) if pin.belongs_to(&candidate.node, &candidate.url) => {
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

    #[test]
    fn many_candidates_are_probed_a_bounded_number_at_a_time() {
        use std::io::{Read as _, Write as _};
        use std::sync::atomic::AtomicUsize;
        use std::time::Duration;

        // A loopback server that holds each request 100 ms and counts how many are open at once.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let open = std::sync::Arc::new(AtomicUsize::new(0));
        let most = std::sync::Arc::new(AtomicUsize::new(0));
        let total = 40;
        let server = {
            let (open, most) = (open, most.clone());
            std::thread::spawn(move || {
                let mut handlers = Vec::new();
                for stream in listener.incoming().take(total) {
                    let mut stream = stream.unwrap();
                    let (open, most) = (open.clone(), most.clone());
                    handlers.push(std::thread::spawn(move || {
                        let now = open.fetch_add(1, Ordering::SeqCst) + 1;
                        most.fetch_max(now, Ordering::SeqCst);
                        let mut buf = [0u8; 4096];
                        let _ = stream.read(&mut buf);
                        std::thread::sleep(Duration::from_millis(100));
                        open.fetch_sub(1, Ordering::SeqCst);
                        let _ = stream.write_all(
                            b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                        );
                    }));
                }
                for h in handlers {
                    let _ = h.join();
                }
            })
        };
        let candidates: Vec<Candidate> = (0..total)
            .map(|i| Candidate {
                url: ServerUrl::parse(&format!("http://{addr}")).unwrap(),
                node: node(&format!("n{i}")),
                online: true,
            })
            .collect();
        let network = Network {
            socks5: None,
            timeout: Duration::from_secs(10),
        };
        let found = probe(candidates, &network, &mut Pins::default(), Timestamp::now());
        server.join().unwrap();
        // Every candidate was asked and answered (with an error), in order.
        assert_eq!(found.len(), total);
        assert!(found.iter().all(|f| !is_trusted(f)));
        let most = most.load(Ordering::SeqCst);
        assert!(most <= MAX_PROBES, "{most} probes at once");
        assert!(most > 1, "probes run in parallel, not one by one");
    }
}
