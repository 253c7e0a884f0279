//! [`FakeUpstream`]: the `fake-upstream` API server (`tka-testkit/testenv/kube/cmd/fake-upstream`)
//! on a free loopback port, for the exec, attach and port-forward upgrades that the real
//! kube-apiserver of [`KubeEnv`](super::KubeEnv) cannot answer (the test environment runs no
//! kubelet), and the requests it recorded.
//!
//! It owns the process and its temporary directory (the CA and the record are there); it must not
//! listen anywhere but loopback.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use serde::Deserialize;
use tokio::io::{AsyncBufReadExt, BufReader};

use super::kube_env::{token_kubeconfig, write_secret};
use super::{TestEnvError, Watchdog, io_err, log_tail, wait_tokio_child};

const BINARY: &str = "fake-upstream";
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// How the fake serves: HTTPS with its own CA (what an API server does), or plain HTTP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamScheme {
    /// HTTPS; the CA is in [`FakeUpstream::ca_pem`] and [`FakeUpstream::ca_file`].
    Https,
    /// Plain HTTP on loopback.
    Http,
}

#[derive(Debug, Deserialize)]
struct Ready {
    url: String,
    ca: String,
    record: PathBuf,
}

/// A running fake API server. Every pod exists (Running, one container `main` with port 80);
/// exec of `cat` echoes stdin, `echo ARGS…` prints them, `exit N` exits with N, `sleep N` waits;
/// attach echoes stdin; a forwarded port echoes every byte. Dropping it kills the process and
/// removes its directory.
pub struct FakeUpstream {
    watchdog: Watchdog,
    child: tokio::process::Child,
    stdin: Option<tokio::process::ChildStdin>,
    url: String,
    ca_file: Option<PathBuf>,
    ca_pem: Option<String>,
    record: PathBuf,
    log: PathBuf,
    kubeconfigs: AtomicU32,
    dir: tempfile::TempDir,
}

impl std::fmt::Debug for FakeUpstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeUpstream")
            .field("url", &self.url)
            .field("dir", &self.dir.path())
            .finish_non_exhaustive()
    }
}

impl FakeUpstream {
    /// Starts `fake-upstream` from `bin` (see [`bin_dir`](super::bin_dir)) over HTTPS.
    pub async fn start(bin: &Path) -> Result<Self, TestEnvError> {
        Self::start_with(bin, UpstreamScheme::Https).await
    }

    /// Starts `fake-upstream` from `bin` with the given scheme and waits until it accepts
    /// connections.
    pub async fn start_with(bin: &Path, scheme: UpstreamScheme) -> Result<Self, TestEnvError> {
        let program = bin.join(BINARY);
        if !program.is_file() {
            return Err(TestEnvError::Missing(format!(
                "{} does not exist",
                program.display()
            )));
        }
        let dir = tempfile::Builder::new()
            .prefix("tka-upstream-")
            .tempdir()
            .map_err(io_err("creating the temporary directory"))?;
        let log = dir.path().join("fake-upstream.log");
        let log_file =
            std::fs::File::create(&log).map_err(io_err(format!("creating {}", log.display())))?;
        let mut watchdog = Watchdog::start()?;
        let mut command = tokio::process::Command::new(&program);
        command
            .arg("--listen=127.0.0.1:0")
            .arg(format!("--dir={}", dir.path().display()))
            .arg("--exit-on-stdin-eof");
        if scheme == UpstreamScheme::Http {
            command.arg("--plain");
        }
        let mut child = command
            .current_dir(dir.path())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(log_file)
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .map_err(io_err(format!("starting {}", program.display())))?;
        watchdog.watch(child.id());
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().ok_or_else(|| TestEnvError::NotReady {
            component: BINARY.to_owned(),
            detail: "no stdout pipe".to_owned(),
        })?;
        let not_ready = |detail: String| TestEnvError::NotReady {
            component: BINARY.to_owned(),
            detail: format!("{detail}; {}", log_tail(&log, 40)),
        };
        let mut lines = BufReader::new(stdout).lines();
        let line = tokio::time::timeout(READY_TIMEOUT, lines.next_line())
            .await
            .map_err(|_| not_ready(format!("no address after {READY_TIMEOUT:?}")))?
            .map_err(io_err("reading fake-upstream's output"))?
            .ok_or_else(|| not_ready("it exited before it named its address".to_owned()))?;
        let ready: Ready = serde_json::from_str(&line)
            .map_err(|e| not_ready(format!("its first line {line:?} is not its address: {e}")))?;
        let (ca_file, ca_pem) = if ready.ca.is_empty() {
            (None, None)
        } else {
            let path = PathBuf::from(ready.ca);
            let pem = std::fs::read_to_string(&path)
                .map_err(io_err(format!("reading {}", path.display())))?;
            (Some(path), Some(pem))
        };
        // Nothing more is printed; keep the pipe drained all the same.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Ok(Self {
            watchdog,
            child,
            stdin,
            url: ready.url,
            ca_file,
            ca_pem,
            record: ready.record,
            log,
            kubeconfigs: AtomicU32::new(0),
            dir,
        })
    }

    /// `https://127.0.0.1:PORT` (or `http://` for [`UpstreamScheme::Http`]).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The CA that signed the serving certificate, in PEM (HTTPS only).
    pub fn ca_pem(&self) -> Option<&str> {
        self.ca_pem.as_deref()
    }

    /// The same CA as a file (HTTPS only), e.g. for `--proxy-upstream-ca`.
    pub fn ca_file(&self) -> Option<&Path> {
        self.ca_file.as_deref()
    }

    /// The fake's log (stderr), for failure messages.
    pub fn log(&self) -> &Path {
        &self.log
    }

    /// Writes a kubeconfig for the fake that authenticates with `token` (the fake accepts any
    /// credential and records it).
    pub fn kubeconfig_for_token(&self, token: &str) -> Result<PathBuf, TestEnvError> {
        let n = self.kubeconfigs.fetch_add(1, Ordering::Relaxed);
        let path = self.dir.path().join(format!("token-{n}.kubeconfig"));
        write_secret(&path, &token_kubeconfig(&self.url, self.ca_pem(), token))?;
        Ok(path)
    }

    /// Every request the fake has received so far, in arrival order, each with how it ended once
    /// its handler returned.
    pub fn requests(&self) -> Result<Vec<RecordedRequest>, TestEnvError> {
        let text = std::fs::read_to_string(&self.record)
            .map_err(io_err(format!("reading {}", self.record.display())))?;
        let mut requests: Vec<RecordedRequest> = Vec::new();
        // The last line may be half written while the fake is running; only whole lines count.
        let whole = text.rfind('\n').map_or("", |end| &text[..end]);
        for line in whole.lines() {
            let event: Event = serde_json::from_str(line).map_err(|e| {
                TestEnvError::FakeUpstream(format!(
                    "{}: a line that is not a request: {e}",
                    self.record.display()
                ))
            })?;
            if event.done {
                if let Some(request) = requests.iter_mut().find(|r| r.seq == event.seq) {
                    request.finished = Some(Finished {
                        status: event.status,
                        hijacked: event.hijacked,
                    });
                }
            } else {
                requests.push(RecordedRequest {
                    seq: event.seq,
                    method: event.method,
                    path: event.path,
                    query: event.query,
                    host: event.host,
                    proto: event.proto,
                    headers: event.headers,
                    finished: None,
                });
            }
        }
        Ok(requests)
    }
}

impl Drop for FakeUpstream {
    fn drop(&mut self) {
        self.stdin.take();
        let _ = self.child.start_kill();
        wait_tokio_child(&mut self.child, Duration::from_secs(5));
        self.watchdog.fire();
    }
}

#[derive(Debug, Deserialize)]
struct Event {
    seq: u64,
    #[serde(default)]
    done: bool,
    #[serde(default)]
    status: u16,
    #[serde(default)]
    hijacked: bool,
    #[serde(default)]
    method: String,
    #[serde(default)]
    path: String,
    #[serde(default)]
    query: String,
    #[serde(default)]
    host: String,
    #[serde(default)]
    proto: String,
    #[serde(default)]
    headers: BTreeMap<String, Vec<String>>,
}

/// One request as it reached the fake API server.
#[derive(Clone, PartialEq, Eq)]
pub struct RecordedRequest {
    /// Arrival order, from 1.
    pub seq: u64,
    /// `GET`, `POST`, …
    pub method: String,
    /// The path, without the query.
    pub path: String,
    /// The raw query string.
    pub query: String,
    /// The `Host` the request named.
    pub host: String,
    /// `HTTP/1.1` or `HTTP/2.0`.
    pub proto: String,
    /// Every header, by its canonical name (`Authorization`, `Sec-Websocket-Protocol`, …).
    pub headers: BTreeMap<String, Vec<String>>,
    /// How the handler ended; `None` while it runs (an open stream).
    pub finished: Option<Finished>,
}

/// How a recorded request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Finished {
    /// The status written through the handler; 0 for an upgrade (the 101 goes out on the
    /// hijacked connection).
    pub status: u16,
    /// Whether the connection was taken over for an upgrade (SPDY or WebSocket).
    pub hijacked: bool,
}

impl RecordedRequest {
    /// The values of a header, by name in any case.
    pub fn header_values(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .flat_map(|(_, v)| v.iter().map(String::as_str))
            .collect()
    }

    /// The first value of a header, by name in any case.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.header_values(name).into_iter().next()
    }

    /// The `Authorization` header as received.
    pub fn authorization(&self) -> Option<&str> {
        self.header("Authorization")
    }

    /// Whether this is an upgrade request, and to what (`SPDY/3.1`, `websocket`).
    pub fn upgrade(&self) -> Option<&str> {
        self.header("Upgrade")
    }
}

impl std::fmt::Debug for RecordedRequest {
    /// Like the derived one, but credentials are shown by length only.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let headers: BTreeMap<&str, Vec<String>> = self
            .headers
            .iter()
            .map(|(k, v)| {
                let shown = if k.eq_ignore_ascii_case("authorization") {
                    v.iter()
                        .map(|value| format!("<{} bytes>", value.len()))
                        .collect()
                } else {
                    v.clone()
                };
                (k.as_str(), shown)
            })
            .collect();
        f.debug_struct("RecordedRequest")
            .field("seq", &self.seq)
            .field("method", &self.method)
            .field("path", &self.path)
            .field("query", &self.query)
            .field("host", &self.host)
            .field("proto", &self.proto)
            .field("headers", &headers)
            .field("finished", &self.finished)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(authorization: &str) -> RecordedRequest {
        RecordedRequest {
            seq: 1,
            method: "GET".to_owned(),
            path: "/api".to_owned(),
            query: String::new(),
            host: "127.0.0.1:1".to_owned(),
            proto: "HTTP/1.1".to_owned(),
            headers: BTreeMap::from([
                ("Authorization".to_owned(), vec![authorization.to_owned()]),
                ("User-Agent".to_owned(), vec!["kubectl/v1.36.3".to_owned()]),
            ]),
            finished: None,
        }
    }

    #[test]
    fn debug_output_shows_headers_but_not_the_credential() {
        let request = request("Bearer a-secret-token");
        let shown = format!("{request:?}");
        assert!(!shown.contains("a-secret-token"), "{shown}");
        assert!(shown.contains("<21 bytes>"), "{shown}");
        // Everything else is shown, and the value itself stays readable to the test.
        assert!(shown.contains("kubectl/v1.36.3"), "{shown}");
        assert_eq!(request.authorization(), Some("Bearer a-secret-token"));
        assert_eq!(request.header("user-agent"), Some("kubectl/v1.36.3"));
    }
}
