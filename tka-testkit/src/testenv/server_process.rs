//! The built `tka-server serve` as a child process on a [`KubeEnv`] and a [`TailnetEnv`]
//! node (userspace mode: its API on 127.0.0.1:P, where the node's tailscaled re-dials inbound
//! tailnet connections for port P), for the end-to-end test and the demo.
//!
//! It owns starting the server, waiting for `/readyz` (bounded) and killing it on drop (also
//! through the [`Watchdog`] when the test process dies). It must not decide anything about what
//! the server answers; callers assert that.
//!
//! [`TailnetEnv`]: super::TailnetEnv

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use super::http::request;
use super::{
    KubeEnv, TailnetNode, TestEnvError, Watchdog, free_port, io_err, log_tail, wait_tokio_child,
};

/// A running `tka-server serve`, killed on drop.
pub struct ServerProcess {
    child: tokio::process::Child,
    watchdog: Watchdog,
    address: Ipv4Addr,
    listen: SocketAddr,
    ops: SocketAddr,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl std::fmt::Debug for ServerProcess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerProcess")
            .field("listen", &self.listen)
            .field("ops", &self.ops)
            .field("log", &self.log)
            .finish_non_exhaustive()
    }
}

impl ServerProcess {
    /// Starts `server_bin serve` for cluster `cluster` on the tailnet node `node`, with the
    /// control plane's admin kubeconfig, API URL and CA, and waits (at most 60 s) until its
    /// `/readyz` answers 200. `POD_NAME` is `tka-server-<cluster>-0`.
    pub async fn start(
        server_bin: &Path,
        kube: &KubeEnv,
        node: &TailnetNode,
        cluster: &str,
    ) -> Result<Self, TestEnvError> {
        use std::os::unix::process::CommandExt as _;
        let dir = tempfile::Builder::new()
            .prefix("tka-server-")
            .tempdir()
            .map_err(io_err("creating the server's temporary directory"))?;
        let ca_file = dir.path().join("ca.pem");
        std::fs::write(&ca_file, kube.ca_pem())
            .map_err(io_err(format!("writing {}", ca_file.display())))?;
        let port = free_port()?;
        let listen = SocketAddr::from(([127, 0, 0, 1], port));
        // Ops on "the pod's address" (127.0.0.3 stands in): the server refuses ops where
        // tailnet traffic arrives (127.0.0.1 behind a userspace tailscaled).
        let ops = SocketAddr::from(([127, 0, 0, 3], free_port()?));
        let dns_name = node.dns_name.trim_end_matches('.');
        let server_names = format!("{},{dns_name},{}", node.ipv4, node.name);
        let log = dir.path().join("tka-server.log");
        let log_file =
            std::fs::File::create(&log).map_err(io_err(format!("creating {}", log.display())))?;
        let mut cmd = std::process::Command::new(server_bin);
        cmd.arg("serve")
            .arg("--kubeconfig")
            .arg(kube.admin_kubeconfig())
            .arg("--tailscale-socket")
            .arg(&node.socket)
            .arg("--api-server-ca-file")
            .arg(&ca_file)
            .args([
                "--network-mode",
                "userspace",
                "--cluster-name",
                cluster,
                "--api-server-url",
                kube.api_url(),
                "--server-name",
                &server_names,
                "--server-address",
                &node.ipv4.to_string(),
                "--listen",
                &listen.to_string(),
                "--ops-listen",
                &ops.to_string(),
                "--log-format",
                "pretty",
            ])
            .env("POD_NAME", format!("tka-server-{cluster}-0"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file)
            .process_group(0);
        let mut watchdog = Watchdog::start()?;
        let child = tokio::process::Command::from(cmd)
            .kill_on_drop(true)
            .spawn()
            .map_err(io_err(format!("starting {}", server_bin.display())))?;
        watchdog.watch(child.id());
        let mut server = Self {
            child,
            watchdog,
            address: node.ipv4,
            listen,
            ops,
            log,
            _dir: dir,
        };
        for _ in 0..240 {
            if let Ok(Some(status)) = server.child.try_wait() {
                return Err(TestEnvError::NotReady {
                    component: "tka-server".to_owned(),
                    detail: format!("exited with {status}; {}", log_tail(&server.log, 40)),
                });
            }
            let ops = ops.to_string();
            if let Ok((200, _)) = request(&ops, "GET", "/readyz", None).await {
                return Ok(server);
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        let detail = format!("no 200 from /readyz in 60 s; {}", log_tail(&server.log, 40));
        server.kill();
        Err(TestEnvError::NotReady {
            component: "tka-server".to_owned(),
            detail,
        })
    }

    /// Where the API listens on loopback (127.0.0.1:P).
    pub fn listen(&self) -> SocketAddr {
        self.listen
    }

    /// The API's port P (the same on the tailnet address).
    pub fn port(&self) -> u16 {
        self.listen.port()
    }

    /// The ops listener (`/readyz`, `/metrics`) on 127.0.0.3, a loopback address tailscaled
    /// never dials; requests must carry `Host: <this address>`.
    pub fn ops(&self) -> SocketAddr {
        self.ops
    }

    /// The URL a tailnet peer uses: `http://<node's IPv4>:P`.
    pub fn url(&self) -> String {
        format!("http://{}:{}", self.address, self.listen.port())
    }

    /// The server's log so far (pretty format).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn kill(&mut self) {
        let _ = self.child.start_kill();
        wait_tokio_child(&mut self.child, Duration::from_secs(5));
        self.watchdog.fire();
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        self.kill();
    }
}
