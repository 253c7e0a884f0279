//! The stage of the scale run: the testenv's real control plane set up as `tka-server/deploy`
//! makes it (RBAC, admission policies, CRDs), a `viewer` GrantMapping, a [`FakeTailnet`] whose
//! LocalAPI answers the server's whois for any number of synthetic users, and the built
//! `tka-server serve` (release) with the `tka-system/tka-server` ServiceAccount's token, in
//! PROXY-protocol mode on 127.0.0.2 so one load generator can speak for many devices.
//!
//! It owns those processes for the run (the testenv kills them on drop). It must not talk to
//! anything but loopback.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use kube::Api;
use kube::api::PostParams;
use serde_json::json;
use tka_core::GrantMappingSpec;
use tka_core::identity::{IdentityProvider, WhoisRequest};
use tka_core::kubernetes::GrantMapping;
use tka_core::{Identity, NodeId};
use tka_testkit::testenv::{KubeEnv, ServerProcess, TailnetNode};
use tka_testkit::{FakeLocalApi, FakePeer, FakeTailnet, PeerSpec};

use super::ScaleError;
use super::probe;

/// The cluster name the server is started with.
pub const CLUSTER: &str = "bench";
/// The server's namespace (deploy/).
pub const NS: &str = "tka-system";
/// The GrantMapping every synthetic user holds.
pub const ROLE: &str = "viewer";
/// The capability every synthetic user is granted.
const CAPABILITY: &str = "tka.dev/cap/kubernetes";

/// Runs `program ARGS…` (bounded by 120 s); its stdout, or an error with its stderr.
pub async fn run(program: &Path, args: &[&str]) -> Result<String, ScaleError> {
    let child = tokio::process::Command::new(program)
        .args(args)
        .env("HOME", std::env::temp_dir())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| ScaleError::new(format!("running {}: {e}", program.display())))?;
    let out = tokio::time::timeout(Duration::from_secs(120), child.wait_with_output())
        .await
        .map_err(|_| ScaleError::new(format!("{} {args:?} took over 120 s", program.display())))?
        .map_err(|e| ScaleError::new(format!("{} {args:?}: {e}", program.display())))?;
    if !out.status.success() {
        return Err(ScaleError::new(format!(
            "{} {args:?} failed: {}",
            program.display(),
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The running stage.
pub struct Stage {
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
    /// A client with that token (the baseline and the seeding use the server's rights).
    pub server_client: kube::Client,
    next_user: AtomicUsize,
}

impl std::fmt::Debug for Stage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stage")
            .field("kube", &self.kube)
            .finish_non_exhaustive()
    }
}

/// A synthetic user's device.
#[derive(Debug, Clone)]
pub struct User {
    /// The fake tailnet's view of the device.
    pub peer: FakePeer,
}

impl User {
    /// The node's stable ID.
    pub fn node(&self) -> &NodeId {
        &self.peer.stable_id
    }
}

impl Stage {
    /// Starts the control plane from the components in `bin`, applies `deploy` (the kustomize
    /// base), makes the `viewer` mapping and the fake tailnet.
    pub async fn start(bin: &Path, deploy: &Path) -> Result<Self, ScaleError> {
        let kube = KubeEnv::start(bin)
            .await
            .map_err(ScaleError::from_display)?;
        let admin = kube.admin_kubeconfig().to_string_lossy().into_owned();
        let kubectl = kube.kubectl();
        let namespace = deploy.join("namespace.yaml");
        let deploy_s = deploy.to_string_lossy().into_owned();
        run(
            &kubectl,
            &[
                "--kubeconfig",
                &admin,
                "apply",
                "-f",
                &namespace.to_string_lossy(),
            ],
        )
        .await?;
        run(
            &kubectl,
            &["--kubeconfig", &admin, "apply", "-k", &deploy_s],
        )
        .await?;
        run(
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
        let token = run(
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
        let server_kubeconfig = kube
            .kubeconfig_for_token(token.trim())
            .map_err(ScaleError::from_display)?;
        let server_client = kube
            .client_for_token(token.trim())
            .await
            .map_err(ScaleError::from_display)?;

        let mappings: Api<GrantMapping> = Api::all(kube.client());
        let spec = GrantMappingSpec {
            cluster_roles: vec!["view".to_owned()],
            default_ttl: Some("1h".to_owned()),
            max_ttl: Some("8h".to_owned()),
            ..GrantMappingSpec::default()
        };
        mappings
            .create(&PostParams::default(), &GrantMapping::new(ROLE, spec))
            .await
            .map_err(|e| ScaleError::new(format!("creating GrantMapping {ROLE}: {e}")))?;

        let tailnet = FakeTailnet::new();
        let me = tailnet.add(PeerSpec::tagged(["tag:tka"], "cluster"));
        tailnet
            .set_self(&me.stable_id)
            .map_err(ScaleError::from_display)?;
        let localapi = tailnet
            .serve()
            .await
            .map_err(|e| ScaleError::new(format!("serving the fake LocalAPI: {e}")))?;
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
            next_user: AtomicUsize::new(0),
        })
    }

    /// A new synthetic user with one device that holds the `viewer` role.
    pub fn new_user(&self) -> User {
        let i = self.next_user.fetch_add(1, Ordering::Relaxed);
        let peer = self.tailnet.add(
            PeerSpec::user(&format!("u{i}@example.com"), &format!("dev-{i}"))
                .capability(CAPABILITY, json!({"role": ROLE})),
        );
        User { peer }
    }

    /// The identity the server sees for `user` (the fake's whois, read by tka-core's reader).
    pub async fn identity(&self, user: &User) -> Result<Identity, ScaleError> {
        self.tailnet
            .lookup(&WhoisRequest::address(user.peer.ipv4.into()))
            .await
            .map_err(ScaleError::from_display)
    }

    /// Starts `server_bin serve` with the server's token, PROXY protocol on 127.0.0.2 and a rate
    /// limit no load here reaches.
    pub async fn start_server(&self, server_bin: &Path) -> Result<Server, ScaleError> {
        let quiet = ["--log-filter", "warn"].map(str::to_owned);
        self.start_server_with(server_bin, &quiet).await
    }

    /// [`Stage::start_server`] with `extra` flags instead of its `--log-filter warn` (a flag may
    /// be given once).
    pub async fn start_server_with(
        &self,
        server_bin: &Path,
        extra: &[String],
    ) -> Result<Server, ScaleError> {
        let port = std::net::TcpListener::bind("127.0.0.2:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| ScaleError::new(format!("finding a port on 127.0.0.2: {e}")))?
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
            .await
            .map_err(ScaleError::from_display)?;
        let pid = probe::find_pid(&process.ops().to_string())?;
        Ok(Server {
            target: SocketAddr::from((self.node.ipv4, port)),
            process,
            pid,
        })
    }
}

/// The running server.
#[derive(Debug)]
pub struct Server {
    /// The process (killed on drop).
    pub process: ServerProcess,
    /// Its pid.
    pub pid: u32,
    /// The tailnet address the PROXY headers name as the destination (`Host` too).
    pub target: SocketAddr,
}

impl Server {
    /// The server's own metrics.
    pub async fn metrics(&self) -> Result<probe::Series, ScaleError> {
        let ops = self.process.ops();
        let (status, body, _) =
            probe::http(ops, &[], &ops.to_string(), "GET", "/metrics", None).await?;
        if status != 200 {
            return Err(ScaleError::new(format!(
                "tka-server /metrics answered {status}"
            )));
        }
        Ok(probe::parse_prometheus(&body))
    }
}

/// The API server's own metrics (admin access).
pub async fn apiserver_metrics(client: &kube::Client) -> Result<probe::Series, ScaleError> {
    let request = http::Request::get("/metrics")
        .body(Vec::new())
        .map_err(ScaleError::from_display)?;
    let text = client
        .request_text(request)
        .await
        .map_err(|e| ScaleError::new(format!("reading the API server's /metrics: {e}")))?;
    Ok(probe::parse_prometheus(&text))
}
