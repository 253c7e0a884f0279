//! [`TailscaleLocalApi`]: the real [`IdentityProvider`] and [`TailnetStatus`], asking the local
//! tailscaled over HTTP/1.1 on its Unix socket (feature `localapi`).
//!
//! It owns the transport and its failure modes: one connection per request (a whois is a local
//! round trip of well under a millisecond; pooling would buy little and keep state), a deadline on
//! every call, errors a user can act on, and the one retry the protocol calls for (a whois miss on
//! a loopback connection, whose userspace-networking mapping can lag the dial). It reads answers
//! only through [`super::wire`]. It must not cache answers by address (ports are reused by other
//! peers), and must never send `Origin` or `Referer` or any `Host` but [`LOCALAPI_HOST`].

use std::ffi::{OsStr, OsString};
use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use http::{Request, StatusCode, header};
use http_body_util::{BodyExt, Empty, LengthLimitError, Limited};
use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;

use super::wire::{self, LOCALAPI_HOST, STATUS_PATH, Status, WHOIS_PATH};
use super::{
    CapabilityNames, DEFAULT_CLI_BINARY, DEFAULT_SOCKET, IdentityError, IdentityProvider,
    TailnetStatus, WhoisRequest, WhoisTarget,
};
use crate::domain::Identity;

/// The default deadline of one call, retries included.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);

/// The largest answer read from the daemon (a status answer grows with the tailnet).
const MAX_ANSWER_BYTES: usize = 32 << 20;

/// The most of an error answer quoted in an error message.
const MAX_ERROR_TEXT: usize = 512;

const USER_AGENT: &str = concat!("tka/", env!("CARGO_PKG_VERSION"));

/// How a whois miss on a loopback connection is asked again. Behind a userspace-networking
/// tailscaled a tailnet connection arrives from `127.0.0.1:<port>`, and the daemon records which
/// peer that port belongs to as it dials, so the first whois can race the record. Misses on any
/// other address are final at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoopbackRetry {
    /// How many times to ask in all (at least once).
    pub attempts: u32,
    /// The pause between two asks.
    pub delay: Duration,
}

impl Default for LoopbackRetry {
    /// Five asks, 50 ms apart: a lagging mapping gets 200 ms of pauses to appear. Each miss also
    /// costs the daemon's own answer time (real userspace tailscaled takes about 360 ms to answer
    /// a miss on a loopback address), so a caller that is truly unknown waits about 2 s in all;
    /// servers with a whois timeout near that should ask fewer times (tka-server asks twice).
    fn default() -> Self {
        Self {
            attempts: 5,
            delay: Duration::from_millis(50),
        }
    }
}

/// The tailscaled LocalAPI client.
///
/// ```no_run
/// use std::time::Duration;
/// use tka_core::identity::{CapabilityNames, IdentityProvider, TailscaleLocalApi, TailnetStatus};
///
/// # async fn run() -> Result<(), tka_core::identity::IdentityError> {
/// let localapi = TailscaleLocalApi::new("/tmp/tailscaled.sock")
///     .with_capabilities(CapabilityNames::default())
///     .with_timeout(Duration::from_secs(1));
/// let caller = localapi.whois("127.0.0.1:41234".parse().unwrap()).await?;
/// println!("{} holds {} grant values", caller.describe(), caller.capabilities.len());
/// let status = localapi.status().await?;
/// println!("{} peers", status.peers.len());
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct TailscaleLocalApi {
    socket: PathBuf,
    timeout: Duration,
    capabilities: CapabilityNames,
    cli_binary: Option<OsString>,
    loopback_retry: LoopbackRetry,
}

impl Default for TailscaleLocalApi {
    fn default() -> Self {
        Self::new(DEFAULT_SOCKET)
    }
}

/// A status line and a body, read in full.
#[derive(Debug)]
struct Answer {
    status: StatusCode,
    body: Bytes,
}

impl TailscaleLocalApi {
    /// A client of the tailscaled listening on `socket`, with the default capability names,
    /// deadline ([`DEFAULT_TIMEOUT`]), loopback retry and CLI fallback ([`DEFAULT_CLI_BINARY`]).
    pub fn new(socket: impl Into<PathBuf>) -> Self {
        Self {
            socket: socket.into(),
            timeout: DEFAULT_TIMEOUT,
            capabilities: CapabilityNames::default(),
            cli_binary: Some(OsString::from(DEFAULT_CLI_BINARY)),
            loopback_retry: LoopbackRetry::default(),
        }
    }

    /// Reads capability values under these names.
    pub fn with_capabilities(mut self, names: CapabilityNames) -> Self {
        self.capabilities = names;
        self
    }

    /// Gives up on a call (retries and CLI fallback included) after `timeout`.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Runs this binary (`<binary> status --json`) for [`TailnetStatus::status`] when the socket
    /// cannot be reached. A name is looked up on `PATH`.
    pub fn with_cli_binary(mut self, binary: impl Into<OsString>) -> Self {
        self.cli_binary = Some(binary.into());
        self
    }

    /// Never runs the CLI: a socket that cannot be reached is an error.
    pub fn without_cli_fallback(mut self) -> Self {
        self.cli_binary = None;
        self
    }

    /// Changes how whois misses on loopback connections are asked again.
    pub fn with_loopback_retry(mut self, retry: LoopbackRetry) -> Self {
        self.loopback_retry = retry;
        self
    }

    /// The socket path.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The deadline of one call.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The capability names identities are built from.
    pub fn capability_names(&self) -> &CapabilityNames {
        &self.capabilities
    }

    async fn within_deadline<T>(
        &self,
        call: impl Future<Output = Result<T, IdentityError>>,
    ) -> Result<T, IdentityError> {
        tokio::time::timeout(self.timeout, call)
            .await
            .map_err(|_| IdentityError::Timeout(self.timeout))?
    }

    async fn connect(&self) -> Result<UnixStream, IdentityError> {
        UnixStream::connect(&self.socket)
            .await
            .map_err(|e| match e.kind() {
                io::ErrorKind::NotFound | io::ErrorKind::NotADirectory => {
                    IdentityError::SocketMissing(self.socket.clone())
                }
                io::ErrorKind::ConnectionRefused => IdentityError::DaemonUnavailable(format!(
                    "nothing is listening on {} (connection refused)",
                    self.socket.display()
                )),
                _ => IdentityError::Io(e),
            })
    }

    async fn get(&self, path_and_query: &str) -> Result<Answer, IdentityError> {
        let stream = self.connect().await?;
        exchange(stream, path_and_query).await
    }

    /// The TLS certificate tailscaled holds for `domain` (one of this node's MagicDNS names),
    /// as PEM: the private key, then the certificate chain (`GET /localapi/v0/cert/<domain>?type=pair`).
    /// tailscaled obtains it (the tailnet's HTTPS certificates must be on) and renews it itself;
    /// asking again returns the current one. The answer holds a private key: never log it.
    pub async fn cert_pair(&self, domain: &str) -> Result<crate::Secret<Vec<u8>>, IdentityError> {
        if !crate::domain::is_dns1123_subdomain(domain) {
            return Err(IdentityError::Malformed(format!(
                "{domain:?} is not a DNS name; give the node's MagicDNS name"
            )));
        }
        self.within_deadline(async {
            let answer = self
                .get(&format!("/localapi/v0/cert/{domain}?type=pair"))
                .await?;
            match answer.status {
                StatusCode::OK => Ok(crate::Secret::new(answer.body.to_vec())),
                _ => Err(refusal(&answer)),
            }
        })
        .await
    }

    async fn status_from_cli(
        &self,
        binary: &OsStr,
        socket_error: IdentityError,
    ) -> Result<Status, IdentityError> {
        tracing::debug!(
            socket = %self.socket.display(),
            error = %socket_error,
            binary = %binary.to_string_lossy(),
            "LocalAPI socket unreachable; reading `status --json` from the tailscale CLI"
        );
        let output = tokio::process::Command::new(binary)
            .args(["status", "--json"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .output()
            .await;
        let output = match output {
            Ok(output) => output,
            // No CLI either: the socket's error is the one that says what to configure.
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(socket_error),
            Err(e) => return Err(IdentityError::Io(e)),
        };
        if !output.status.success() {
            return Err(IdentityError::DaemonUnavailable(format!(
                "`{} status --json` failed ({}): {}",
                binary.to_string_lossy(),
                output.status,
                error_text(&output.stderr)
            )));
        }
        wire::parse_status(&output.stdout)
    }
}

/// One request on a fresh connection, read in full.
async fn exchange(stream: UnixStream, path_and_query: &str) -> Result<Answer, IdentityError> {
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| transport_error(&e))?;
    // The connection task ends when `sender` is dropped (at the latest when this call returns or
    // is cancelled by its deadline), so it never outlives the call by more than a poll.
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "LocalAPI connection ended with an error");
        }
    });
    let request = Request::get(path_and_query)
        .header(header::HOST, LOCALAPI_HOST)
        .header(header::USER_AGENT, USER_AGENT)
        .header(header::ACCEPT, "application/json")
        .body(Empty::<Bytes>::new())
        .map_err(|e| IdentityError::Io(io::Error::new(io::ErrorKind::InvalidInput, e)))?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| transport_error(&e))?;
    let status = response.status();
    let body = Limited::new(response.into_body(), MAX_ANSWER_BYTES)
        .collect()
        .await
        .map_err(|e| {
            if e.is::<LengthLimitError>() {
                IdentityError::Malformed(format!(
                    "tailscaled's answer is larger than {MAX_ANSWER_BYTES} bytes"
                ))
            } else {
                match e.downcast::<hyper::Error>() {
                    Ok(e) => transport_error(&e),
                    Err(e) => {
                        IdentityError::DaemonUnavailable(format!("reading its answer failed: {e}"))
                    }
                }
            }
        })?
        .to_bytes();
    Ok(Answer { status, body })
}

fn transport_error(e: &hyper::Error) -> IdentityError {
    if e.is_parse() || e.is_parse_status() {
        IdentityError::Malformed(format!("tailscaled's answer is not HTTP/1.1: {e}"))
    } else {
        IdentityError::DaemonUnavailable(format!("the connection to it broke: {e}"))
    }
}

/// The error for a non-200 answer that has no meaning of its own for the endpoint.
fn refusal(answer: &Answer) -> IdentityError {
    let text = error_text(&answer.body);
    if answer.status.is_server_error() {
        IdentityError::DaemonUnavailable(format!("it answered {}: {text}", answer.status))
    } else {
        IdentityError::Rejected {
            status: answer.status.as_u16(),
            body: text,
        }
    }
}

/// The daemon's plain-text explanation, trimmed and bounded, for an error message.
fn error_text(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    match text.char_indices().nth(MAX_ERROR_TEXT) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_owned(),
    }
}

/// `/localapi/v0/whois?addr=…[&svc_name=…]`, form-encoded as tailscaled decodes it.
fn whois_path(target: WhoisTarget, svc_name: Option<&str>) -> String {
    let mut query = form_urlencoded::Serializer::new(String::new());
    query.append_pair("addr", &target.to_string());
    if let Some(svc_name) = svc_name {
        query.append_pair("svc_name", svc_name);
    }
    format!("{WHOIS_PATH}?{}", query.finish())
}

/// Asks up to `attempts` times while the answer is a 404, pausing `delay` in between; any other
/// answer or error ends it at once.
async fn ask_until_found<F, Fut>(
    attempts: u32,
    delay: Duration,
    mut ask: F,
) -> Result<Answer, IdentityError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Answer, IdentityError>>,
{
    let mut asked = 1;
    loop {
        let answer = ask().await?;
        if answer.status != StatusCode::NOT_FOUND || asked >= attempts {
            return Ok(answer);
        }
        tracing::debug!(
            asked,
            "whois miss on a loopback connection; the mapping may lag the dial, asking again"
        );
        asked += 1;
        tokio::time::sleep(delay).await;
    }
}

#[async_trait]
impl IdentityProvider for TailscaleLocalApi {
    async fn lookup(&self, request: &WhoisRequest) -> Result<Identity, IdentityError> {
        let target = request.target.to_canonical();
        let path = whois_path(target, request.svc_name.as_deref());
        let attempts = if target.is_loopback_connection() {
            self.loopback_retry.attempts.max(1)
        } else {
            1
        };
        self.within_deadline(async {
            let answer =
                ask_until_found(attempts, self.loopback_retry.delay, || self.get(&path)).await?;
            match answer.status {
                StatusCode::OK => wire::parse_whois(&answer.body, &self.capabilities),
                StatusCode::NOT_FOUND => Err(IdentityError::NotInTailnet(target)),
                _ => Err(refusal(&answer)),
            }
        })
        .await
    }
}

#[async_trait]
impl TailnetStatus for TailscaleLocalApi {
    /// `GET /localapi/v0/status`; where the socket cannot be reached (missing, refused, not
    /// permitted) and a CLI binary is configured, `<binary> status --json` instead. When the CLI
    /// cannot be found either, the socket's error is returned, since it names the setting to fix.
    async fn status(&self) -> Result<Status, IdentityError> {
        self.within_deadline(async {
            match self.connect().await {
                Ok(stream) => {
                    let answer = exchange(stream, STATUS_PATH).await?;
                    match answer.status {
                        StatusCode::OK => wire::parse_status(&answer.body),
                        _ => Err(refusal(&answer)),
                    }
                }
                Err(socket_error) => match &self.cli_binary {
                    Some(binary) => self.status_from_cli(binary, socket_error).await,
                    None => Err(socket_error),
                },
            }
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;
    use std::net::SocketAddr;

    use super::*;

    fn answer(status: u16, body: &str) -> Answer {
        Answer {
            status: StatusCode::from_u16(status).unwrap(),
            body: Bytes::from(body.to_owned()),
        }
    }

    #[test]
    fn whois_paths_are_form_encoded() {
        let conn: SocketAddr = "127.0.0.1:41234".parse().unwrap();
        assert_eq!(
            whois_path(WhoisTarget::Connection(conn), None),
            "/localapi/v0/whois?addr=127.0.0.1%3A41234"
        );
        let v6: SocketAddr = "[fd7a:115c:a1e0::7]:443".parse().unwrap();
        assert_eq!(
            whois_path(WhoisTarget::Connection(v6), Some("svc:k8s api&x=1")),
            "/localapi/v0/whois?addr=%5Bfd7a%3A115c%3Aa1e0%3A%3A7%5D%3A443&svc_name=svc%3Ak8s+api%26x%3D1"
        );
        let bare = WhoisTarget::Address("100.64.0.7".parse().unwrap());
        assert_eq!(whois_path(bare, None), "/localapi/v0/whois?addr=100.64.0.7");
    }

    #[tokio::test(start_paused = true)]
    async fn a_lagging_miss_is_asked_again_until_found() {
        let asked = Cell::new(0);
        let found = ask_until_found(5, Duration::from_millis(50), || {
            asked.set(asked.get() + 1);
            let n = asked.get();
            async move {
                Ok(if n < 3 {
                    answer(404, "no match for IP:port")
                } else {
                    answer(200, "{}")
                })
            }
        })
        .await
        .unwrap();
        assert_eq!(found.status, StatusCode::OK);
        assert_eq!(asked.get(), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn asking_again_is_bounded_and_only_for_misses() {
        let asked = Cell::new(0);
        let miss = ask_until_found(5, Duration::from_millis(50), || {
            asked.set(asked.get() + 1);
            async { Ok(answer(404, "no match for IP:port")) }
        })
        .await
        .unwrap();
        assert_eq!(miss.status, StatusCode::NOT_FOUND);
        assert_eq!(asked.get(), 5);

        let asked = Cell::new(0);
        let unavailable = ask_until_found(5, Duration::from_millis(50), || {
            asked.set(asked.get() + 1);
            async { Ok(answer(503, "not ready")) }
        })
        .await
        .unwrap();
        assert_eq!(unavailable.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(asked.get(), 1);

        let asked = Cell::new(0);
        let once = ask_until_found(1, Duration::from_millis(50), || {
            asked.set(asked.get() + 1);
            async { Ok(answer(404, "no match for IP:port")) }
        })
        .await
        .unwrap();
        assert_eq!(once.status, StatusCode::NOT_FOUND);
        assert_eq!(asked.get(), 1);
    }

    #[test]
    fn refusals_are_classified() {
        assert!(matches!(
            refusal(&answer(503, "no netmap\n")),
            IdentityError::DaemonUnavailable(m) if m.contains("no netmap")
        ));
        assert!(matches!(
            refusal(&answer(500, "JSON encoding error")),
            IdentityError::DaemonUnavailable(_)
        ));
        assert!(matches!(
            refusal(&answer(403, "invalid localapi request\n")),
            IdentityError::Rejected { status: 403, body } if body == "invalid localapi request"
        ));
        assert!(matches!(
            refusal(&answer(400, "invalid 'addr' parameter")),
            IdentityError::Rejected { status: 400, .. }
        ));
    }

    #[test]
    fn error_text_is_bounded() {
        let long = "é".repeat(2 * MAX_ERROR_TEXT);
        let text = error_text(long.as_bytes());
        assert_eq!(text.chars().count(), MAX_ERROR_TEXT + 1);
        assert_eq!(error_text(b"  short\n"), "short");
    }
}
