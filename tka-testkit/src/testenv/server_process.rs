//! The built `tka-server serve` as a child process on a [`KubeEnv`] and a [`TailnetEnv`]
//! node (userspace mode: its API on 127.0.0.1:P, where the node's tailscaled re-dials inbound
//! tailnet connections for port P), for the end-to-end test and the demo.
//!
//! It owns starting the server (through [`ServerProcessBuilder`]: kubeconfig, pod name, listen
//! address, PROXY-protocol mode, extra flags, or an unpacked container image to run it from, see
//! [`ImageRoot`]), waiting for `/readyz` (bounded) and killing it on
//! drop (also through the [`Watchdog`] when the test process dies). It is the one launcher of
//! the built server for the end-to-end tests and the demo. It must not decide anything about
//! what the server answers; callers assert that. The one thing it checks itself, for every
//! caller: the server logs at trace level for tka and the Kubernetes client
//! ([`TRACE_FILTER`]), and a log holding anything JWT-shaped fails the test when the server is
//! dropped (no token may reach a log, DESIGN §6).
//!
//! [`TailnetEnv`]: super::TailnetEnv

use std::ffi::OsString;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use super::http::request;
use super::{
    KubeEnv, TailnetNode, TestEnvError, Watchdog, free_port, io_err, log_tail, wait_tokio_child,
};

/// The `--log-filter` every [`ServerProcess`] starts with (a test's own `--log-filter` in
/// [`ServerProcessBuilder::args`] wins): everything tka and the Kubernetes client log, at every
/// level, so the check for tokens on drop sees all of it; other crates at `info`.
pub const TRACE_FILTER: &str = "info,tka=trace,tka_server=trace,tka_core=trace,kube=trace,kube_client=trace,kube_runtime=trace,tower_http=trace";

/// Whether `extra` flags set `--log-filter` themselves (tka-server refuses a flag given twice,
/// so [`TRACE_FILTER`] is only added when they do not).
fn sets_log_filter(extra: &[OsString]) -> bool {
    extra.iter().any(|a| {
        a.to_str()
            .is_some_and(|a| a == "--log-filter" || a.starts_with("--log-filter="))
    })
}

/// A container image's filesystem and configuration, to run the server as a container runtime
/// would: `chroot --userspec=USER ROOT ENTRYPOINT… CMD…` followed by the builder's flags (as a
/// Deployment's `args` would). The kubeconfig and CA file are copied into `ROOT/tmp/tka-test/`
/// (readable by the image's user) and the node's LocalAPI socket is hard-linked there, as the
/// Deployment shares the sidecar's socket through a volume at `/tmp`. Needs root (chroot).
#[derive(Debug, Clone)]
pub struct ImageRoot {
    /// The image's unpacked filesystem (its layers applied in order).
    pub root: PathBuf,
    /// The image's `Entrypoint` followed by its `Cmd`.
    pub argv: Vec<String>,
    /// The image's `User` (`uid:gid`), which the server runs as.
    pub user: String,
}

/// A running `tka-server serve`, killed on drop. Dropping it also fails the test (panics,
/// unless the thread is already panicking) if the server's log holds a JWT-shaped string.
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

/// How to start a [`ServerProcess`]: by default `tka-server serve` in userspace mode with the
/// control plane's admin kubeconfig, as pod `tka-server-<cluster>-0`, its API on 127.0.0.1 at a
/// free port; each of these can be changed, and flags added.
#[derive(Debug)]
#[must_use]
pub struct ServerProcessBuilder<'a> {
    server_bin: PathBuf,
    kube: &'a KubeEnv,
    node: &'a TailnetNode,
    cluster: String,
    kubeconfig: Option<PathBuf>,
    pod: Option<String>,
    listen: Option<SocketAddr>,
    proxy_protocol: bool,
    image: Option<ImageRoot>,
    extra: Vec<OsString>,
}

impl ServerProcessBuilder<'_> {
    /// Runs the server from an unpacked container image instead of `server_bin serve` (see
    /// [`ImageRoot`]); the image's `Cmd` takes the place of `serve`.
    pub fn image(mut self, image: ImageRoot) -> Self {
        self.image = Some(image);
        self
    }

    /// The kubeconfig the server uses (e.g. one for its own ServiceAccount) instead of the
    /// admin's.
    pub fn kubeconfig(mut self, path: impl Into<PathBuf>) -> Self {
        self.kubeconfig = Some(path.into());
        self
    }

    /// The pod name (`POD_NAME`: the holder of the reconciler's Lease).
    pub fn pod_name(mut self, pod: impl Into<String>) -> Self {
        self.pod = Some(pod.into());
        self
    }

    /// Where the API listens instead of 127.0.0.1 at a free port.
    pub fn listen(mut self, listen: SocketAddr) -> Self {
        self.listen = Some(listen);
        self
    }

    /// PROXY-protocol mode (`--proxy-protocol`) instead of `--network-mode userspace`; give it a
    /// [`listen`](Self::listen) address tailscaled never dials, such as 127.0.0.2.
    pub fn proxy_protocol(mut self) -> Self {
        self.proxy_protocol = true;
        self
    }

    /// Adds flags after the defaults (a flag given twice takes its last value).
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        self.extra.extend(args.into_iter().map(Into::into));
        self
    }

    /// Starts the server and waits (at most 60 s) until its `/readyz` answers 200.
    pub async fn start(self) -> Result<ServerProcess, TestEnvError> {
        use std::os::unix::process::CommandExt as _;
        let (kube, node) = (self.kube, self.node);
        let dir = tempfile::Builder::new()
            .prefix("tka-server-")
            .tempdir()
            .map_err(io_err("creating the server's temporary directory"))?;
        let ca_file = dir.path().join("ca.pem");
        std::fs::write(&ca_file, kube.ca_pem())
            .map_err(io_err(format!("writing {}", ca_file.display())))?;
        let listen = match self.listen {
            Some(listen) => listen,
            None => SocketAddr::from(([127, 0, 0, 1], free_port()?)),
        };
        // Ops on "the pod's address" (127.0.0.3 stands in): the server refuses ops where
        // tailnet traffic arrives (127.0.0.1 behind a userspace tailscaled).
        let ops = SocketAddr::from(([127, 0, 0, 3], free_port()?));
        let dns_name = node.dns_name.trim_end_matches('.');
        let server_names = format!("{},{dns_name},{}", node.ipv4, node.name);
        let log = dir.path().join("tka-server.log");
        let log_file =
            std::fs::File::create(&log).map_err(io_err(format!("creating {}", log.display())))?;
        let kubeconfig = self
            .kubeconfig
            .unwrap_or_else(|| kube.admin_kubeconfig().to_owned());
        let pod = self
            .pod
            .unwrap_or_else(|| format!("tka-server-{}-0", self.cluster));
        let mode: &[&str] = if self.proxy_protocol {
            &["--proxy-protocol"]
        } else {
            &["--network-mode", "userspace"]
        };
        let (mut cmd, kubeconfig, socket, ca_file) = match &self.image {
            None => {
                let mut cmd = std::process::Command::new(&self.server_bin);
                cmd.arg("serve");
                (cmd, kubeconfig, node.socket.clone(), ca_file)
            }
            Some(image) => image_command(image, &kubeconfig, &node.socket, &ca_file)?,
        };
        cmd.arg("--kubeconfig")
            .arg(&kubeconfig)
            .arg("--tailscale-socket")
            .arg(&socket)
            .arg("--api-server-ca-file")
            .arg(&ca_file)
            .args(mode)
            .args([
                "--cluster-name",
                &self.cluster,
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
            .args(
                (!sets_log_filter(&self.extra))
                    .then_some(["--log-filter", TRACE_FILTER])
                    .into_iter()
                    .flatten(),
            )
            .args(&self.extra)
            .env("POD_NAME", pod)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file)
            .process_group(0);
        let mut watchdog = Watchdog::start()?;
        let child = tokio::process::Command::from(cmd)
            .kill_on_drop(true)
            .spawn()
            .map_err(io_err(format!("starting {}", self.server_bin.display())))?;
        watchdog.watch(child.id());
        let mut server = ServerProcess {
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
        server.stop();
        Err(TestEnvError::NotReady {
            component: "tka-server".to_owned(),
            detail,
        })
    }
}

/// `chroot --userspec=USER ROOT ENTRYPOINT… CMD…`, and the in-root paths of the kubeconfig,
/// the LocalAPI socket and the CA file, placed under `ROOT/tmp/tka-test/`.
fn image_command(
    image: &ImageRoot,
    kubeconfig: &Path,
    socket: &Path,
    ca_file: &Path,
) -> Result<(std::process::Command, PathBuf, PathBuf, PathBuf), TestEnvError> {
    use std::os::unix::fs::PermissionsExt as _;
    let inside = Path::new("/tmp/tka-test");
    let dir = image.root.join("tmp/tka-test");
    std::fs::create_dir_all(&dir).map_err(io_err(format!("creating {}", dir.display())))?;
    let readable = |path: &Path, mode: u32| {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
            .map_err(io_err(format!("chmod {}", path.display())))
    };
    readable(&dir, 0o755)?;
    for (from, name) in [(kubeconfig, "kubeconfig"), (ca_file, "ca.pem")] {
        let to = dir.join(name);
        std::fs::copy(from, &to).map_err(io_err(format!("copying {}", from.display())))?;
        readable(&to, 0o644)?;
    }
    // A hard link reaches the same socket inode from inside the root (a symbolic link would
    // resolve inside it); both live on the temporary directory's file system.
    let link = dir.join("tailscaled.sock");
    std::fs::hard_link(socket, &link).map_err(io_err(format!(
        "linking {} into the image root (it must be on the same file system as {})",
        socket.display(),
        image.root.display()
    )))?;
    let mut cmd = std::process::Command::new("chroot");
    cmd.arg(format!("--userspec={}", image.user))
        .arg(&image.root)
        .args(&image.argv);
    Ok((
        cmd,
        inside.join("kubeconfig"),
        inside.join("tailscaled.sock"),
        inside.join("ca.pem"),
    ))
}

impl ServerProcess {
    /// The server's process ID (the image's entrypoint itself when run from an image: chroot
    /// replaces itself with it).
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// How to start `server_bin serve` for cluster `cluster` on the tailnet node `node` of the
    /// control plane `kube` (its API URL and CA); see [`ServerProcessBuilder`].
    pub fn builder<'a>(
        server_bin: &Path,
        kube: &'a KubeEnv,
        node: &'a TailnetNode,
        cluster: &str,
    ) -> ServerProcessBuilder<'a> {
        ServerProcessBuilder {
            server_bin: server_bin.to_owned(),
            kube,
            node,
            cluster: cluster.to_owned(),
            kubeconfig: None,
            pod: None,
            listen: None,
            proxy_protocol: false,
            image: None,
            extra: Vec::new(),
        }
    }

    /// Starts `server_bin serve` with the defaults of [`ServerProcess::builder`] and waits (at
    /// most 60 s) until its `/readyz` answers 200.
    pub async fn start(
        server_bin: &Path,
        kube: &KubeEnv,
        node: &TailnetNode,
        cluster: &str,
    ) -> Result<Self, TestEnvError> {
        Self::builder(server_bin, kube, node, cluster).start().await
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

    /// Where the server writes its log (it stays readable after [`ServerProcess::stop`]).
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// Kills the server (bounded wait) before it is dropped, e.g. to run `tka-server drain`.
    pub fn stop(&mut self) {
        let _ = self.child.start_kill();
        wait_tokio_child(&mut self.child, Duration::from_secs(5));
        self.watchdog.fire();
    }
}

impl Drop for ServerProcess {
    // Failing the test is this check's job; a panic while already panicking would abort, so it
    // is skipped then (the first failure is the one to read).
    #[allow(clippy::panic)]
    fn drop(&mut self) {
        self.stop();
        if std::thread::panicking() {
            return;
        }
        if let Some(at) = token_in_log(&self.log()) {
            panic!(
                "tka-server wrote a JWT-shaped string to its log ({}), at line {at}",
                self.log.display()
            );
        }
    }
}

/// Where `log` holds a JWT-shaped string: its line number and that line and the two before it,
/// with every token in them redacted.
fn token_in_log(log: &str) -> Option<String> {
    let lines: Vec<&str> = log.lines().collect();
    let hit = lines
        .iter()
        .position(|line| crate::jwt::find_jwt(line).is_some())?;
    let context = lines[hit.saturating_sub(2)..=hit]
        .iter()
        .map(|line| crate::jwt::redact_jwts(line))
        .collect::<Vec<_>>()
        .join("\n");
    Some(format!("{} (redacted):\n{context}", hit + 1))
}

#[cfg(test)]
mod tests {
    use std::ffi::OsString;

    use super::{sets_log_filter, token_in_log};

    #[test]
    fn a_callers_own_log_filter_replaces_the_trace_filter() {
        let flags = |f: &[&str]| f.iter().map(OsString::from).collect::<Vec<_>>();
        assert!(sets_log_filter(&flags(&[
            "--proxy-listen",
            "x",
            "--log-filter",
            "warn"
        ])));
        assert!(sets_log_filter(&flags(&["--log-filter=warn"])));
        assert!(!sets_log_filter(&flags(&["--proxy-listen", "x"])));
        assert!(!sets_log_filter(&flags(&["--log-format", "json"])));
    }

    #[test]
    fn a_token_in_the_log_is_found_and_quoted_redacted() {
        let clean = "INFO login role=sre token_id=2b1e\nDEBUG minted expires_at=2030-01-01\n";
        assert_eq!(token_in_log(clean), None);
        let leaked =
            format!("{clean}TRACE answer token=eyJhbGciOi.eyJzdWIi.c2ln rest\nINFO next\n");
        let found = token_in_log(&leaked).unwrap();
        assert!(found.starts_with("3 (redacted)"), "{found}");
        assert!(found.contains("token=[JWT] rest"), "{found}");
        assert!(
            found.contains("DEBUG minted") && !found.contains("INFO next"),
            "{found}"
        );
        assert!(!found.contains("eyJ"), "{found}");
    }
}
