//! Many synthetic devices in front of the real components: the testenv's control plane set up
//! as `tka-server/deploy` makes it (RBAC, admission policies, CRDs), a `viewer` GrantMapping, a
//! [`FakeTailnet`] whose LocalAPI answers the server's whois for any number of devices, and the
//! built `tka-server serve` with the `tka-system/tka-server` ServiceAccount's token, in
//! PROXY-protocol mode on 127.0.0.2, so one client process can speak for many devices (each
//! connection starts with a PROXY v2 header naming the device, as tailscaled's Tailscale Service
//! would). A real tailnet would need a tailscaled per device; this stage needs none.
//!
//! Used by the scale and proxy benchmarks (`benches/`) and by the soak test (tka-server's
//! `e2e_soak`). It also holds the small readers those share: one HTTP/1.1 exchange after a
//! PROXY header, Prometheus text, `/proc/<pid>/status`. It owns the processes it starts (the
//! testenv kills them on drop) and must not talk to anything but loopback.

use std::collections::BTreeMap;
use std::net::{SocketAddr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};
use std::time::Duration;

use kube::Api;
use kube::api::PostParams;
use serde_json::json;
use tka_core::identity::{IdentityProvider, WhoisRequest};
use tka_core::kubernetes::GrantMapping;
use tka_core::{Identity, NodeId};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use super::{KubeEnv, ServerProcess, TailnetNode, TestEnvError, io_err};
use crate::{FakeLocalApi, FakePeer, FakeTailnet, PeerSpec};

/// The cluster name the server is started with.
pub const CLUSTER: &str = "bench";
/// The server's namespace (deploy/).
pub const NS: &str = "tka-system";
/// The GrantMapping every synthetic device holds.
pub const ROLE: &str = "viewer";

fn failed(what: impl std::fmt::Display) -> TestEnvError {
    TestEnvError::Kube(what.to_string())
}

fn io_failed(what: String) -> TestEnvError {
    TestEnvError::Io {
        what,
        source: std::io::Error::from(std::io::ErrorKind::TimedOut),
    }
}

/// Runs `program ARGS…` (bounded by 120 s); its stdout, or an error with its stderr.
pub async fn run_program(program: &Path, args: &[&str]) -> Result<String, TestEnvError> {
    let child = tokio::process::Command::new(program)
        .args(args)
        .env("HOME", std::env::temp_dir())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(io_err(format!("running {}", program.display())))?;
    let out = tokio::time::timeout(Duration::from_secs(120), child.wait_with_output())
        .await
        .map_err(|_| io_failed(format!("{} {args:?} took over 120 s", program.display())))?
        .map_err(io_err(format!("{} {args:?}", program.display())))?;
    if !out.status.success() {
        return Err(failed(format!(
            "{} {args:?} failed: {}",
            program.display(),
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The running stage.
pub struct DeviceStage {
    /// The control plane (admin access).
    pub kube: KubeEnv,
    /// The tailnet the server's LocalAPI reports.
    pub tailnet: FakeTailnet,
    /// Its LocalAPI socket (kept open for the server).
    _localapi: FakeLocalApi,
    /// The server's node, as the server is told about it.
    pub node: TailnetNode,
    /// A kubeconfig with the `tka-system/tka-server` ServiceAccount's token.
    pub server_kubeconfig: PathBuf,
    /// A client with that token (the server's rights).
    pub server_client: kube::Client,
    next_device: AtomicUsize,
}

impl std::fmt::Debug for DeviceStage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceStage")
            .field("kube", &self.kube)
            .finish_non_exhaustive()
    }
}

/// A synthetic device (its own user, `u<i>@example.com`).
#[derive(Debug, Clone)]
pub struct Device {
    /// The fake tailnet's view of the device.
    pub peer: FakePeer,
}

impl Device {
    /// The node's stable ID.
    pub fn node(&self) -> &NodeId {
        &self.peer.stable_id
    }
}

impl DeviceStage {
    /// Starts the control plane from the components in `bin`, applies `deploy` (the kustomize
    /// base), makes the `viewer` mapping (ClusterRole `view`, default TTL 1 h, at most 8 h) and
    /// the fake tailnet.
    pub async fn start(bin: &Path, deploy: &Path) -> Result<Self, TestEnvError> {
        let kube = KubeEnv::start(bin).await?;
        let admin = kube.admin_kubeconfig().to_string_lossy().into_owned();
        let kubectl = kube.kubectl();
        let namespace = deploy.join("namespace.yaml");
        let deploy_s = deploy.to_string_lossy().into_owned();
        let namespace_s = namespace.to_string_lossy().into_owned();
        run_program(
            &kubectl,
            &["--kubeconfig", &admin, "apply", "-f", &namespace_s],
        )
        .await?;
        run_program(
            &kubectl,
            &["--kubeconfig", &admin, "apply", "-k", &deploy_s],
        )
        .await?;
        run_program(
            &kubectl,
            &[
                "--kubeconfig",
                &admin,
                "wait",
                "--for=condition=Established",
                "crd/grantmappings.tka.dev",
                "crd/sessions.tka.dev",
                "--timeout=60s",
            ],
        )
        .await?;
        let token = run_program(
            &kubectl,
            &[
                "--kubeconfig",
                &admin,
                "create",
                "token",
                "tka-server",
                "-n",
                NS,
                "--duration=6h",
            ],
        )
        .await?;
        let server_kubeconfig = kube.kubeconfig_for_token(token.trim())?;
        let server_client = kube.client_for_token(token.trim()).await?;

        let mappings: Api<GrantMapping> = Api::all(kube.client());
        mappings
            .create(&PostParams::default(), &super::viewer_mapping())
            .await
            .map_err(|e| failed(format!("creating GrantMapping {ROLE}: {e}")))?;

        let tailnet = FakeTailnet::new();
        let me = tailnet.add(PeerSpec::tagged(["tag:tka"], "cluster"));
        tailnet
            .set_self(&me.stable_id)
            .map_err(|e| TestEnvError::Harness(e.to_string()))?;
        let localapi = tailnet
            .serve()
            .await
            .map_err(io_err("serving the fake LocalAPI"))?;
        let node = TailnetNode {
            name: me.host_name.clone(),
            user: None,
            tags: Some(vec!["tag:tka".to_owned()]),
            dns_name: format!("{}.", me.dns_name),
            ipv4: me.ipv4,
            ipv6: me.ipv6,
            addresses: me.addresses(),
            node_id: me.node_id,
            stable_id: me.stable_id.to_string(),
            socket: localapi.socket_path().to_owned(),
            socks5_port: 0,
            log: None,
        };
        Ok(Self {
            kube,
            tailnet,
            _localapi: localapi,
            node,
            server_kubeconfig,
            server_client,
            next_device: AtomicUsize::new(0),
        })
    }

    /// A new synthetic device, its own user's, that holds the `viewer` role.
    pub fn new_device(&self) -> Device {
        let i = self.next_device.fetch_add(1, Ordering::Relaxed);
        let peer = self.tailnet.add(
            PeerSpec::user(&format!("u{i}@example.com"), &format!("dev-{i}")).capability(
                tka_core::identity::DEFAULT_CAPABILITY,
                json!({"role": ROLE}),
            ),
        );
        Device { peer }
    }

    /// The identity the server sees for `device` (the fake's whois, read by tka-core's reader).
    pub async fn identity(&self, device: &Device) -> Result<Identity, TestEnvError> {
        self.tailnet
            .lookup(&WhoisRequest::address(device.peer.ipv4.into()))
            .await
            .map_err(|e| TestEnvError::Harness(e.to_string()))
    }

    /// Starts `server_bin serve` with the server's token, PROXY protocol on 127.0.0.2 and a rate
    /// limit no load here reaches, at `--log-filter warn`.
    pub async fn start_server(&self, server_bin: &Path) -> Result<StageServer, TestEnvError> {
        let quiet = ["--log-filter", "warn"].map(str::to_owned);
        self.start_server_with(server_bin, &quiet).await
    }

    /// [`DeviceStage::start_server`] with `extra` flags instead of its `--log-filter warn` (a
    /// flag may be given once).
    pub async fn start_server_with(
        &self,
        server_bin: &Path,
        extra: &[String],
    ) -> Result<StageServer, TestEnvError> {
        let port = std::net::TcpListener::bind("127.0.0.2:0")
            .and_then(|l| l.local_addr())
            .map_err(io_err("finding a port on 127.0.0.2"))?
            .port();
        let listen = SocketAddr::from(([127, 0, 0, 2], port));
        let process = ServerProcess::builder(server_bin, &self.kube, &self.node, CLUSTER)
            .kubeconfig(&self.server_kubeconfig)
            .pod_name("tka-server-bench-0")
            .listen(listen)
            .proxy_protocol()
            .args([
                "--rate-limit-per-minute",
                "1000000",
                "--rate-limit-burst",
                "100000",
            ])
            .args(extra)
            .start()
            .await?;
        let pid = find_server_pid(&process.ops().to_string())?;
        Ok(StageServer {
            target: SocketAddr::from((self.node.ipv4, port)),
            process,
            pid,
        })
    }
}

/// The running server of a [`DeviceStage`].
#[derive(Debug)]
pub struct StageServer {
    /// The process (killed on drop).
    pub process: ServerProcess,
    /// Its pid.
    pub pid: u32,
    /// The tailnet address the PROXY headers name as the destination (`Host` too).
    pub target: SocketAddr,
}

/// Source ports for PROXY headers: each connection gets its own.
static PORTS: AtomicU16 = AtomicU16::new(0);

impl StageServer {
    /// The server's own metrics.
    pub async fn metrics(&self) -> Result<Series, TestEnvError> {
        let ops = self.process.ops();
        let (status, body, _) =
            http_exchange(ops, &[], &ops.to_string(), "GET", "/metrics", None).await?;
        if status != 200 {
            return Err(failed(format!("tka-server /metrics answered {status}")));
        }
        Ok(parse_prometheus(&body))
    }

    /// A PROXY v2 header from `device` (a fresh source port) to `to`: what opens every
    /// connection the server's listeners accept from that device.
    pub fn proxy_header(&self, device: &Device, to: SocketAddr) -> Result<Vec<u8>, TestEnvError> {
        let port = 20_000 + PORTS.fetch_add(1, Ordering::Relaxed) % 40_000;
        proxy_v2_header(
            SocketAddr::V4(SocketAddrV4::new(device.peer.ipv4, port)),
            to,
        )
    }

    /// One request to the API listener as `device`: the status, the body and the time from
    /// connecting to the last byte, whatever the status.
    pub async fn call(
        &self,
        device: &Device,
        method: &str,
        path: &str,
        body: Option<&str>,
    ) -> Result<(u16, String, Duration), TestEnvError> {
        let header = self.proxy_header(device, self.target)?;
        http_exchange(
            self.process.listen(),
            &header,
            &self.target.to_string(),
            method,
            path,
            body,
        )
        .await
    }
}

/// A PROXY protocol v2 header for a TCP connection from `from` to `to`.
pub fn proxy_v2_header(from: SocketAddr, to: SocketAddr) -> Result<Vec<u8>, TestEnvError> {
    ppp::v2::Builder::with_addresses(
        ppp::v2::Version::Two | ppp::v2::Command::Proxy,
        ppp::v2::Protocol::Stream,
        (from, to),
    )
    .build()
    .map_err(|e| TestEnvError::Io {
        what: "building a PROXY header".to_owned(),
        source: std::io::Error::other(e.to_string()),
    })
}

/// One HTTP/1.1 request on a fresh connection (`Connection: close`), after `preface` bytes (a
/// PROXY header, or nothing); the status, the body and the time from connecting to the last
/// byte. Bounded by 60 s.
pub async fn http_exchange(
    addr: SocketAddr,
    preface: &[u8],
    host: &str,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> Result<(u16, String, Duration), TestEnvError> {
    let exchange = async {
        let started = std::time::Instant::now();
        let mut stream = tokio::net::TcpStream::connect(addr).await?;
        let body = body.unwrap_or("");
        let mut request = preface.to_vec();
        request.extend_from_slice(
            format!(
                "{method} {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            )
            .as_bytes(),
        );
        stream.write_all(&request).await?;
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await?;
        let took = started.elapsed();
        Ok::<_, std::io::Error>((raw, took))
    };
    let (raw, took) = tokio::time::timeout(Duration::from_secs(60), exchange)
        .await
        .map_err(|_| io_failed(format!("{method} {path} on {addr} took over 60 s")))?
        .map_err(io_err(format!("{method} {path} on {addr}")))?;
    let text = String::from_utf8_lossy(&raw);
    let (head, rest) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| failed(format!("no HTTP status from {addr}: {head}")))?;
    Ok((status, rest.to_owned(), took))
}

/// The pid of the process whose command line contains `needle` and `serve` (the server started
/// by the testenv's launcher, found by its unique ops address).
pub fn find_server_pid(needle: &str) -> Result<u32, TestEnvError> {
    let entries = std::fs::read_dir("/proc").map_err(io_err("reading /proc"))?;
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(Path::new("/proc").join(pid.to_string()).join("cmdline"))
        else {
            continue;
        };
        let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        let has = |s: &str| args.contains(&s.as_bytes());
        if has(needle) && has("serve") {
            return Ok(pid);
        }
    }
    Err(failed(format!(
        "no process with `serve` and {needle} on its command line"
    )))
}

/// A `… kB` field of `/proc/<pid>/status` (`VmRSS`, `VmHWM`), in KiB; `None` when the process
/// is gone or has no such field.
pub fn proc_status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
}

/// Prometheus samples by full series text (`name{labels}`) → value.
pub type Series = BTreeMap<String, f64>;

/// Parses Prometheus text exposition (comments skipped).
pub fn parse_prometheus(text: &str) -> Series {
    let mut out = Series::new();
    for line in text.lines() {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        // The value is the last field unless a timestamp follows it; neither side has one here.
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        if let Ok(v) = value.trim().parse::<f64>() {
            out.insert(series.trim().to_owned(), v);
        }
    }
    out
}

/// Sum of every series named exactly `metric` (any labels).
pub fn sum_of(series: &Series, metric: &str) -> f64 {
    series
        .iter()
        .filter(|(k, _)| {
            k.as_str() == metric || k.strip_prefix(metric).is_some_and(|r| r.starts_with('{'))
        })
        .map(|(_, v)| *v)
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_a_metric_over_its_labels_and_not_its_longer_namesakes() {
        let series = parse_prometheus(
            "# HELP x\n\
             tka_proxy_active_streams 2\n\
             tka_revocations_total{cause=\"logout\"} 3\n\
             tka_revocations_total{cause=\"expired\"} 4\n\
             tka_reconcile_duration_seconds_count 4\n",
        );
        assert_eq!(sum_of(&series, "tka_revocations_total"), 7.0);
        assert_eq!(sum_of(&series, "tka_proxy_active_streams"), 2.0);
        assert_eq!(sum_of(&series, "tka_reconcile_duration_seconds"), 0.0);
    }

    #[test]
    fn reads_this_process_resident_memory() {
        let rss = proc_status_kib(std::process::id(), "VmRSS").unwrap();
        let peak = proc_status_kib(std::process::id(), "VmHWM").unwrap();
        assert!(rss > 0 && peak >= rss, "{rss} {peak}");
        assert_eq!(proc_status_kib(std::process::id(), "NoSuchField"), None);
    }
}
