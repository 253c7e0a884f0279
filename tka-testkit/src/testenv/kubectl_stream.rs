//! Real kubectl's upgraded streams, for end-to-end tests: `kubectl exec` with bytes on stdin
//! ([`kubectl_exec`]) and a running `kubectl port-forward` ([`KubectlPortForward`]), each over
//! the protocol chosen with [`StreamProtocol`].
//!
//! It owns the kubectl processes it starts (killed on drop) and talks only to loopback.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

use super::{TestEnvError, io_err};

const KUBECTL_TIMEOUT: Duration = Duration::from_secs(60);

/// How kubectl carries exec/attach and port-forward streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamProtocol {
    /// WebSocket: `v5.channel.k8s.io` for exec and attach, SPDY tunnelled over WebSocket
    /// (`SPDY/3.1+portforward.k8s.io`) for port-forward. kubectl's default since 1.31.
    WebSocket,
    /// SPDY/3.1 (`KUBECTL_REMOTE_COMMAND_WEBSOCKETS=false`, `KUBECTL_PORT_FORWARD_WEBSOCKETS=false`).
    Spdy,
}

impl StreamProtocol {
    /// Both, WebSocket first.
    pub const ALL: [Self; 2] = [Self::WebSocket, Self::Spdy];

    /// The environment that makes kubectl use this protocol for both kinds of stream.
    pub fn kubectl_env(self) -> [(&'static str, &'static str); 2] {
        let websockets = match self {
            Self::WebSocket => "true",
            Self::Spdy => "false",
        };
        [
            ("KUBECTL_REMOTE_COMMAND_WEBSOCKETS", websockets),
            ("KUBECTL_PORT_FORWARD_WEBSOCKETS", websockets),
        ]
    }

    /// The `Upgrade` header value kubectl sends with this protocol (`websocket` or `SPDY/3.1`).
    pub fn upgrade_header(self) -> &'static str {
        match self {
            Self::WebSocket => "websocket",
            Self::Spdy => "SPDY/3.1",
        }
    }
}

fn kubectl_command(
    kubectl: &Path,
    kubeconfig: &Path,
    protocol: StreamProtocol,
    home: &Path,
) -> tokio::process::Command {
    let mut command = tokio::process::Command::new(kubectl);
    command
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .env_remove("KUBECONFIG")
        // kubectl keeps its discovery cache under $HOME/.kube.
        .env("HOME", home)
        .envs(protocol.kubectl_env())
        .kill_on_drop(true);
    command
}

/// What a finished kubectl printed.
#[derive(Debug)]
pub struct KubectlOutput {
    /// Its exit status.
    pub status: ExitStatus,
    /// Everything on stdout.
    pub stdout: Vec<u8>,
    /// Everything on stderr, lossily decoded.
    pub stderr: String,
}

/// Runs `kubectl --kubeconfig KUBECONFIG ARGS…` over `protocol` with `stdin` as its standard
/// input (closed after it), bounded by 60 s. `home` holds kubectl's cache.
pub async fn kubectl_exec(
    kubectl: &Path,
    kubeconfig: &Path,
    protocol: StreamProtocol,
    home: &Path,
    args: &[&str],
    stdin: &[u8],
) -> Result<KubectlOutput, TestEnvError> {
    let mut child = kubectl_command(kubectl, kubeconfig, protocol, home)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(io_err(format!("starting {}", kubectl.display())))?;
    let mut input = child.stdin.take();
    let stdin = stdin.to_vec();
    // Written concurrently with reading, so that a large input cannot deadlock on full pipes.
    let writer = tokio::spawn(async move {
        if let Some(input) = input.as_mut() {
            // kubectl may exit before reading all of it; its output tells what happened.
            let _ = input.write_all(&stdin).await;
            let _ = input.shutdown().await;
        }
    });
    let out = tokio::time::timeout(KUBECTL_TIMEOUT, child.wait_with_output())
        .await
        .map_err(|_| TestEnvError::NotReady {
            component: "kubectl".to_owned(),
            detail: format!("kubectl {args:?} did not finish within {KUBECTL_TIMEOUT:?}"),
        })?
        .map_err(io_err(format!("running kubectl {args:?}")))?;
    writer.abort();
    Ok(KubectlOutput {
        status: out.status,
        stdout: out.stdout,
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    })
}

/// A running `kubectl port-forward --address 127.0.0.1 TARGET 0:PORT`. Dropping it kills
/// kubectl.
#[derive(Debug)]
pub struct KubectlPortForward {
    child: tokio::process::Child,
    local: SocketAddr,
    stderr_log: std::path::PathBuf,
}

impl KubectlPortForward {
    /// Starts kubectl over `protocol` and waits (bounded) until it prints its local address.
    /// `target` is what kubectl takes (`pod/NAME`, `NAME`); `home` holds kubectl's cache and
    /// its stderr (`port-forward-<port>.log`).
    pub async fn start(
        kubectl: &Path,
        kubeconfig: &Path,
        protocol: StreamProtocol,
        home: &Path,
        target: &str,
        remote_port: u16,
    ) -> Result<Self, TestEnvError> {
        let stderr_log = home.join(format!("port-forward-{}.log", rand::random::<u32>()));
        let stderr = std::fs::File::create(&stderr_log)
            .map_err(io_err(format!("creating {}", stderr_log.display())))?;
        let mut child = kubectl_command(kubectl, kubeconfig, protocol, home)
            .args(["port-forward", "--address", "127.0.0.1", target])
            .arg(format!("0:{remote_port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .map_err(io_err(format!("starting {}", kubectl.display())))?;
        let stdout = child.stdout.take().ok_or_else(|| TestEnvError::NotReady {
            component: "kubectl port-forward".to_owned(),
            detail: "no stdout pipe".to_owned(),
        })?;
        let mut lines = BufReader::new(stdout).lines();
        let not_ready = |detail: String| TestEnvError::NotReady {
            component: "kubectl port-forward".to_owned(),
            detail: format!(
                "{detail}; stderr: {}",
                std::fs::read_to_string(&stderr_log).unwrap_or_default()
            ),
        };
        // "Forwarding from 127.0.0.1:PORT -> 80"
        let read = async {
            while let Some(line) = lines
                .next_line()
                .await
                .map_err(io_err("reading kubectl's output"))?
            {
                let local = line
                    .strip_prefix("Forwarding from ")
                    .and_then(|rest| rest.split(" -> ").next())
                    .and_then(|addr| addr.parse::<SocketAddr>().ok());
                if let Some(local) = local {
                    return Ok(Some(local));
                }
            }
            Ok::<_, TestEnvError>(None)
        };
        let local = tokio::time::timeout(KUBECTL_TIMEOUT, read)
            .await
            .map_err(|_| not_ready(format!("no local address after {KUBECTL_TIMEOUT:?}")))??
            .ok_or_else(|| not_ready("kubectl exited before it forwarded".to_owned()))?;
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Ok(Self {
            child,
            local,
            stderr_log,
        })
    }

    /// The local address kubectl listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// What kubectl wrote on stderr so far.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_log).unwrap_or_default()
    }

    /// kubectl's exit status, if it has exited.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// One connection to the local port: sends `payload`, closes the sending side and reads
    /// until the other end closes (bounded by 60 s). With an echo behind the port, the answer
    /// is `payload`.
    pub async fn exchange(&self, payload: &[u8]) -> Result<Vec<u8>, TestEnvError> {
        let exchange = async {
            let stream = tokio::net::TcpStream::connect(self.local)
                .await
                .map_err(io_err(format!("connecting to {}", self.local)))?;
            let (mut read, mut write) = stream.into_split();
            let payload = payload.to_vec();
            let writer = tokio::spawn(async move {
                write.write_all(&payload).await?;
                write.shutdown().await
            });
            let mut answer = Vec::new();
            read.read_to_end(&mut answer)
                .await
                .map_err(io_err(format!("reading from {}", self.local)))?;
            writer
                .await
                .map_err(|e| TestEnvError::Io {
                    what: format!("writing to {}", self.local),
                    source: std::io::Error::other(e),
                })?
                .map_err(io_err(format!("writing to {}", self.local)))?;
            Ok(answer)
        };
        tokio::time::timeout(KUBECTL_TIMEOUT, exchange)
            .await
            .map_err(|_| TestEnvError::NotReady {
                component: "kubectl port-forward".to_owned(),
                detail: format!(
                    "no end of the exchange through {} within {KUBECTL_TIMEOUT:?}; stderr: {}",
                    self.local,
                    self.stderr()
                ),
            })?
    }
}
