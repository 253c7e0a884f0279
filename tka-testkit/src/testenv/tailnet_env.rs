//! [`TailnetEnv`]: a tailnet of real tailscaled nodes on loopback, run by `tailnet-harness`
//! (control server, DERP, STUN, one tailscaled per node), and its admin API.
//!
//! It owns the harness process (which owns the daemons and its state directory); it must not
//! talk to anything but the harness's loopback admin API.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tka_core::identity::DEFAULT_CAPABILITY;
use tokio::io::{AsyncBufReadExt, BufReader};

use super::{TestEnvError, io_err, log_tail, wait_tokio_child};

const READY_TIMEOUT: Duration = Duration::from_secs(180);

/// A node to start: owned by a user, or tagged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TailnetNodeSpec {
    name: String,
    owner: String,
}

impl TailnetNodeSpec {
    /// A node owned by `login` (e.g. `alice@example.com`).
    pub fn user(name: &str, login: &str) -> Self {
        Self {
            name: name.to_owned(),
            owner: login.to_owned(),
        }
    }

    /// A tagged node (`tags` like `tag:tka`).
    pub fn tagged(name: &str, tags: &[&str]) -> Self {
        Self {
            name: name.to_owned(),
            owner: tags.join(","),
        }
    }
}

/// A grant: `src` gets the application capabilities `caps` on `dst` (`"*"` is every node).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TailnetGrant {
    /// The node that gets the capabilities.
    pub src: String,
    /// The node they apply to.
    pub dst: String,
    /// Capability name → values.
    pub caps: BTreeMap<String, Vec<serde_json::Value>>,
}

impl TailnetGrant {
    /// A grant of one capability with the given values.
    pub fn new(src: &str, dst: &str, cap: &str, values: Vec<serde_json::Value>) -> Self {
        Self {
            src: src.to_owned(),
            dst: dst.to_owned(),
            caps: BTreeMap::from([(cap.to_owned(), values)]),
        }
    }
}

/// A running node, as the harness reports it.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct TailnetNode {
    /// The node's name (also its hostname and MagicDNS label).
    pub name: String,
    /// The owner's login name (user-owned nodes).
    #[serde(default)]
    pub user: Option<String>,
    /// The tags (tagged nodes).
    #[serde(default)]
    pub tags: Option<Vec<String>>,
    /// The MagicDNS name with a trailing dot.
    pub dns_name: String,
    /// Tailnet IPv4 address.
    pub ipv4: Ipv4Addr,
    /// Tailnet IPv6 address.
    pub ipv6: Ipv6Addr,
    /// Both addresses.
    #[serde(default)]
    pub addresses: Vec<IpAddr>,
    /// The control server's node ID.
    #[serde(default)]
    pub node_id: i64,
    /// The stable node ID.
    pub stable_id: String,
    /// The LocalAPI Unix socket of this node's tailscaled.
    pub socket: PathBuf,
    /// The SOCKS5 proxy's port on 127.0.0.1.
    pub socks5_port: u16,
    /// The tailscaled log file.
    #[serde(default)]
    pub log: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
struct Info {
    admin: String,
}

#[derive(Debug, Deserialize)]
struct Ready {
    ready: bool,
    nodes: Vec<TailnetNode>,
}

/// A running tailnet. Dropping it closes the harness's stdin; the harness then stops every
/// tailscaled and removes its directory.
#[derive(Debug)]
pub struct TailnetEnv {
    child: tokio::process::Child,
    stdin: Option<tokio::process::ChildStdin>,
    admin: String,
    nodes: Vec<TailnetNode>,
    _log_dir: tempfile::TempDir,
}

impl TailnetEnv {
    /// Starts the harness from `bin` with `nodes` and the initial `grants`, and waits until it
    /// reports every node up and the grants in effect.
    pub async fn start(
        bin: &Path,
        nodes: &[TailnetNodeSpec],
        grants: &[TailnetGrant],
    ) -> Result<Self, TestEnvError> {
        let log_dir = tempfile::Builder::new()
            .prefix("tka-tailnet-")
            .tempdir()
            .map_err(io_err("creating the temporary directory"))?;
        let log_path = log_dir.path().join("harness.log");
        let log = std::fs::File::create(&log_path)
            .map_err(io_err(format!("creating {}", log_path.display())))?;
        let mut command = tokio::process::Command::new(bin.join("tailnet-harness"));
        command.args(["run", "--admin", "127.0.0.1:0", "--exit-on-stdin-eof"]);
        for node in nodes {
            command
                .arg("--node")
                .arg(format!("{}={}", node.name, node.owner));
        }
        for grant in grants {
            let json = serde_json::to_string(grant)
                .map_err(|e| TestEnvError::Harness(format!("encoding a grant: {e}")))?;
            command.arg("--grant").arg(json);
        }
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(log)
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .map_err(io_err(format!(
                "starting {}",
                bin.join("tailnet-harness").display()
            )))?;
        let stdin = child.stdin.take();
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| TestEnvError::Harness("no stdout pipe".to_owned()))?;
        let mut lines = BufReader::new(stdout).lines();
        let read = async {
            let mut admin = None;
            loop {
                let Some(line) = lines
                    .next_line()
                    .await
                    .map_err(io_err("reading the harness's output"))?
                else {
                    return Err(TestEnvError::Harness(format!(
                        "exited before it was ready; {}",
                        log_tail(&log_path, 40)
                    )));
                };
                if admin.is_none()
                    && let Ok(info) = serde_json::from_str::<Info>(&line)
                {
                    admin = Some(info.admin);
                    continue;
                }
                if let Ok(ready) = serde_json::from_str::<Ready>(&line)
                    && ready.ready
                {
                    let admin = admin.ok_or_else(|| {
                        TestEnvError::Harness("ready before it named its admin API".to_owned())
                    })?;
                    return Ok((admin, ready.nodes));
                }
            }
        };
        let (admin, nodes) = tokio::time::timeout(READY_TIMEOUT, read)
            .await
            .map_err(|_| {
                TestEnvError::Harness(format!(
                    "not ready after {READY_TIMEOUT:?}; {}",
                    log_tail(&log_path, 40)
                ))
            })??;
        // Keep draining stdout so that later lines never block the harness.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Ok(Self {
            child,
            stdin,
            admin,
            nodes,
            _log_dir: log_dir,
        })
    }

    /// The tailnet most end-to-end tests start from: `cluster` (tagged `tag:tka`, where
    /// tka-server runs) and `laptop` (alice@example.com), granted tka's capability on `cluster`
    /// with one `{"role": r}` per entry of `roles`, then one node per `(name, login)` of
    /// `others`, granted nothing.
    pub async fn start_cluster_and_laptop(
        bin: &Path,
        roles: &[&str],
        others: &[(&str, &str)],
    ) -> Result<Self, TestEnvError> {
        let mut nodes = vec![
            TailnetNodeSpec::tagged("cluster", &["tag:tka"]),
            TailnetNodeSpec::user("laptop", "alice@example.com"),
        ];
        nodes.extend(
            others
                .iter()
                .map(|(name, login)| TailnetNodeSpec::user(name, login)),
        );
        let grant = TailnetGrant::new(
            "laptop",
            "cluster",
            DEFAULT_CAPABILITY,
            roles
                .iter()
                .map(|r| serde_json::json!({"role": r}))
                .collect(),
        );
        Self::start(bin, &nodes, &[grant]).await
    }

    /// The admin API's address (`127.0.0.1:PORT`).
    pub fn admin_addr(&self) -> &str {
        &self.admin
    }

    /// Every node started with the tailnet, in start order.
    pub fn nodes(&self) -> &[TailnetNode] {
        &self.nodes
    }

    /// A node by name.
    pub fn node(&self, name: &str) -> Option<&TailnetNode> {
        self.nodes.iter().find(|n| n.name == name)
    }

    /// Replaces the whole grant table; returns once every node sees the change.
    pub async fn set_grants(
        &self,
        grants: &[TailnetGrant],
    ) -> Result<Vec<TailnetGrant>, TestEnvError> {
        let body = serde_json::to_string(grants)
            .map_err(|e| TestEnvError::Harness(format!("encoding grants: {e}")))?;
        let (status, answer) =
            super::http::request(&self.admin, "PUT", "/v0/grants", Some(&body)).await?;
        if status != 200 {
            return Err(TestEnvError::Harness(format!(
                "PUT /v0/grants answered {status}: {answer}"
            )));
        }
        serde_json::from_str(&answer)
            .map_err(|e| TestEnvError::Harness(format!("PUT /v0/grants answered {answer}: {e}")))
    }
}

impl Drop for TailnetEnv {
    fn drop(&mut self) {
        // EOF on stdin: the harness stops its daemons and removes its directory (about 2 s).
        self.stdin.take();
        wait_tokio_child(&mut self.child, Duration::from_secs(10));
    }
}

/// A tailscaled outage on one node: its daemon stopped and started again by the harness, from
/// the same state directory (the same node: stable ID, addresses, LocalAPI socket path). Its
/// SOCKS5 port changes; [`TailnetEnv::node`] reports the new one once it is back.
impl TailnetEnv {
    /// Stops node `name`'s tailscaled and returns once it has exited: its LocalAPI socket and
    /// SOCKS5 proxy stop answering, and tailnet traffic to it stops.
    pub async fn stop_node(&self, name: &str) -> Result<(), TestEnvError> {
        let path = format!("/v0/nodes/{name}/stop");
        let (status, answer) = super::http::request(&self.admin, "POST", &path, None).await?;
        if status != 200 {
            return Err(TestEnvError::Harness(format!(
                "POST {path} answered {status}: {answer}"
            )));
        }
        Ok(())
    }

    /// Starts node `name`'s tailscaled again after [`TailnetEnv::stop_node`] and returns the
    /// node once it is running as before and every grant is in effect again (bounded by the
    /// harness's node timeout).
    pub async fn start_node(&mut self, name: &str) -> Result<TailnetNode, TestEnvError> {
        let path = format!("/v0/nodes/{name}/start");
        let (status, answer) = super::http::request(&self.admin, "POST", &path, None).await?;
        if status != 200 {
            return Err(TestEnvError::Harness(format!(
                "POST {path} answered {status}: {answer}"
            )));
        }
        let node: TailnetNode = serde_json::from_str(&answer)
            .map_err(|e| TestEnvError::Harness(format!("POST {path} answered {answer}: {e}")))?;
        if let Some(known) = self.nodes.iter_mut().find(|n| n.name == node.name) {
            *known = node.clone();
        }
        Ok(node)
    }
}
