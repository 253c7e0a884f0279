//! Test support: the built `tka` run in an isolated home, a loopback tka server (wiremock) that
//! counts calls, canned API responses, a recording "proxy" and a tiny SOCKS5 relay.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use jiff::{SignedDuration, Timestamp};
use serde_json::{Value, json};
use tempfile::TempDir;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

pub(crate) const TOKEN: &str = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ0a2EtbG9naW4ifQ.login-sig";
pub(crate) const REFRESHED: &str = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ0a2EtcmVmcmVzaCJ9.refresh-sig";
pub(crate) const DEVICE: &str = "laptop.tail1234.ts.net";

/// An isolated home, cache and kubeconfig for one test, and a way to run `tka` in it.
pub(crate) struct Sandbox {
    pub(crate) dir: TempDir,
}

impl Sandbox {
    pub(crate) fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("home")).unwrap();
        Self { dir }
    }

    pub(crate) fn home(&self) -> PathBuf {
        self.dir.path().join("home")
    }

    pub(crate) fn cache_dir(&self) -> PathBuf {
        self.dir.path().join("cache").join("tka")
    }

    /// The default kubeconfig (KUBECONFIG points here unless a test says otherwise).
    pub(crate) fn kubeconfig(&self) -> PathBuf {
        self.dir.path().join("kube").join("config")
    }

    /// `tka` with a clean environment: only PATH, HOME, XDG_CACHE_HOME, KUBECONFIG, TZ and
    /// NO_COLOR, so no ambient proxy or setting leaks in.
    pub(crate) fn tka(&self) -> Command {
        let mut cmd = self.isolated(env!("CARGO_BIN_EXE_tka"));
        // No tailscaled and no `tailscale` CLI unless a test serves a fake one.
        cmd.env(
            "TKA_TAILSCALE_SOCKET",
            self.dir.path().join("no-tailscaled.sock"),
        )
        .env("TKA_TAILSCALE_CLI", self.dir.path().join("no-tailscale"))
        .env("XDG_STATE_HOME", self.dir.path().join("state"))
        .env("XDG_CONFIG_HOME", self.dir.path().join("config"));
        cmd
    }

    /// The machine's `kubectl` in the same environment.
    pub(crate) fn kubectl(&self) -> Command {
        self.isolated("kubectl")
    }

    /// `program` with the clean environment of [`Self::tka`].
    pub(crate) fn isolated(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new(program);
        cmd.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", self.home())
            .env("XDG_CACHE_HOME", self.dir.path().join("cache"))
            .env("KUBECONFIG", self.kubeconfig())
            .env("TZ", "UTC")
            .env("NO_COLOR", "1");
        cmd
    }

    pub(crate) fn read_kubeconfig(&self) -> String {
        std::fs::read_to_string(self.kubeconfig()).unwrap()
    }

    /// The cache file of the default key (server, cluster `prod`, [`DEVICE`]).
    pub(crate) fn cache_file(&self, server: &str) -> PathBuf {
        self.cache_dir().join(key(server).file_name())
    }

    /// Writes a cache entry as a past login would have, with its "last handed out" time.
    pub(crate) fn seed_cache(
        &self,
        server: &str,
        token: &str,
        fetched: SignedDuration,
        expires_in: SignedDuration,
        handed_out: SignedDuration,
    ) {
        let now = Timestamp::now();
        let entry = tka_core::token_cache::CachedToken::new(
            &key(server),
            tka_core::Secret::new(token.to_owned()),
            now + expires_in,
            now - fetched,
            Some(now + SignedDuration::from_hours(1)),
        );
        std::fs::create_dir_all(self.cache_dir()).unwrap();
        let path = self.cache_file(server);
        std::fs::write(&path, entry.to_json().unwrap()).unwrap();
        let file = std::fs::File::options().write(true).open(&path).unwrap();
        file.set_modified(std::time::SystemTime::from(now - handed_out))
            .unwrap();
    }
}

pub(crate) fn key(server: &str) -> tka_core::token_cache::CacheKey {
    tka_core::token_cache::CacheKey {
        server: tka_core::endpoint::ServerUrl::parse(server).unwrap(),
        cluster: tka_core::ClusterName::new("prod").unwrap(),
        identity: Some(DEVICE.to_owned()),
    }
}

/// Runs a command to completion.
pub(crate) fn run(cmd: &mut Command) -> Output {
    cmd.output().unwrap()
}

pub(crate) fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub(crate) fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A loopback tka server that records every request.
pub(crate) struct Server {
    rt: tokio::runtime::Runtime,
    pub(crate) mock: MockServer,
}

impl Server {
    pub(crate) fn start() -> Self {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let mock = rt.block_on(MockServer::start());
        Self::answering_cluster(Self { rt, mock })
    }

    /// A server on an already bound listener (e.g. on 127.0.0.2).
    pub(crate) fn on(listener: TcpListener) -> Self {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let mock = rt.block_on(MockServer::builder().listener(listener).start());
        Self::answering_cluster(Self { rt, mock })
    }

    /// Unless a test mounts its own, `GET /api/v1/cluster` says cluster `prod`, with no tka
    /// proxy (what `tka login` asks a server given with --server before it logs in).
    fn answering_cluster(self) -> Self {
        self.mount(
            Mock::given(method("GET"))
                .and(path("/api/v1/cluster"))
                .respond_with(
                    ResponseTemplate::new(200).set_body_json(cluster_response("prod", None)),
                )
                .with_priority(u8::MAX),
        );
        self
    }

    pub(crate) fn uri(&self) -> String {
        self.mock.uri()
    }

    pub(crate) fn mount(&self, mock: Mock) {
        self.rt.block_on(mock.mount(&self.mock));
    }

    /// How many requests with this method and path arrived.
    pub(crate) fn calls(&self, http_method: &str, request_path: &str) -> usize {
        self.rt
            .block_on(self.mock.received_requests())
            .unwrap_or_default()
            .iter()
            .filter(|r| r.method.as_str() == http_method && r.url.path() == request_path)
            .count()
    }

    pub(crate) fn requests(&self) -> Vec<wiremock::Request> {
        self.rt
            .block_on(self.mock.received_requests())
            .unwrap_or_default()
    }

    /// The bodies of the `POST /api/v1/login` requests that arrived, in order.
    pub(crate) fn sent_logins(&self) -> Vec<Value> {
        self.requests()
            .iter()
            .filter(|r| r.method.as_str() == "POST" && r.url.path() == "/api/v1/login")
            .map(|r| r.body_json().unwrap())
            .collect()
    }

    /// `POST /api/v1/login` answers with `body`.
    pub(crate) fn on_login(&self, body: Value) {
        self.mount(
            Mock::given(method("POST"))
                .and(path("/api/v1/login"))
                .respond_with(ResponseTemplate::new(200).set_body_json(body)),
        );
    }

    /// `POST /api/v1/token` answers with a fresh token.
    pub(crate) fn on_token(&self, token: &str) {
        self.mount(
            Mock::given(method("POST"))
                .and(path("/api/v1/token"))
                .respond_with(ResponseTemplate::new(200).set_body_json(token_response(token))),
        );
    }

    /// `DELETE /api/v1/session` answers 204.
    pub(crate) fn on_logout(&self) {
        self.mount(
            Mock::given(method("DELETE"))
                .and(path("/api/v1/session"))
                .respond_with(ResponseTemplate::new(204)),
        );
    }
}

/// An `application/problem+json` response.
pub(crate) fn problem(
    status: u16,
    code: &str,
    detail: &str,
    roles: Option<Value>,
) -> ResponseTemplate {
    let mut body = json!({
        "type": format!("urn:tka:problem:{code}"),
        "title": "problem",
        "status": status,
        "detail": detail,
        "code": code,
    });
    if let Some(roles) = roles {
        body["roles"] = roles;
    }
    ResponseTemplate::new(status).set_body_raw(body.to_string(), "application/problem+json")
}

fn in_future(d: SignedDuration) -> String {
    (Timestamp::now() + d).to_string()
}

pub(crate) fn session_json() -> Value {
    json!({
        "name": "tka-alice-x7k2p",
        "role": "sre",
        "expiresAt": in_future(SignedDuration::from_hours(1)),
        "device": DEVICE,
        "caller": "alice@example.com",
    })
}

/// A login response for cluster `prod` whose API server is `api_server`.
pub(crate) fn login_response(api_server: &str) -> Value {
    json!({
        "cluster": {"name": "prod", "server": api_server},
        "session": session_json(),
        "token": {"token": TOKEN, "expiresAt": in_future(SignedDuration::from_mins(15))},
        "ttl": "1h",
    })
}

/// A login through the tka proxy at `proxy` for cluster `prod`: no token, as a server answers it.
pub(crate) fn proxied_login_response(proxy: &str) -> Value {
    json!({
        "cluster": {
            "name": "prod",
            "server": "https://prod.api.example:6443",
            "certificateAuthorityData": "Q0EK",
            "proxy": proxy,
        },
        "session": session_json(),
        "via": "proxy",
        "ttl": "1h",
    })
}

/// `GET /api/v1/cluster` of cluster `name` (API server `https://<name>.api.example:6443`), with
/// the tka proxy at `proxy` when given.
pub(crate) fn cluster_response(name: &str, proxy: Option<&str>) -> Value {
    let mut body = json!({
        "cluster": {"name": name, "server": format!("https://{name}.api.example:6443")},
        "caller": "alice@example.com",
        "roles": {"cluster": name, "roles": [], "unavailable": [], "skipped": []},
    });
    if let Some(proxy) = proxy {
        body["cluster"]["proxy"] = json!(proxy);
    }
    body
}

pub(crate) fn token_response(token: &str) -> Value {
    json!({
        "session": session_json(),
        "token": {"token": token, "expiresAt": in_future(SignedDuration::from_mins(15))},
    })
}

/// A TCP listener that counts connections and answers nothing useful: an ambient "proxy" that
/// must never be contacted.
pub(crate) struct Recorder {
    pub(crate) addr: SocketAddr,
    count: Arc<AtomicUsize>,
}

impl Recorder {
    pub(crate) fn start() -> Self {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let addr = listener.local_addr().unwrap();
        let count = Arc::new(AtomicUsize::new(0));
        let seen = Arc::clone(&count);
        std::thread::spawn(move || {
            for stream in listener.incoming().take(100) {
                seen.fetch_add(1, Ordering::SeqCst);
                drop(stream);
            }
        });
        Self { addr, count }
    }

    pub(crate) fn connections(&self) -> usize {
        self.count.load(Ordering::SeqCst)
    }
}

/// A minimal SOCKS5 relay (no authentication, CONNECT to loopback targets only) that counts
/// the connections it relays.
pub(crate) struct Socks5 {
    pub(crate) addr: SocketAddr,
    count: Arc<AtomicUsize>,
}

impl Socks5 {
    pub(crate) fn start() -> Self {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let addr = listener.local_addr().unwrap();
        let count = Arc::new(AtomicUsize::new(0));
        let seen = Arc::clone(&count);
        std::thread::spawn(move || {
            for stream in listener.incoming().take(100).flatten() {
                let seen = Arc::clone(&seen);
                std::thread::spawn(move || relay(stream, &seen));
            }
        });
        Self { addr, count }
    }

    pub(crate) fn relayed(&self) -> usize {
        self.count.load(Ordering::SeqCst)
    }
}

fn relay(mut client: TcpStream, relayed: &AtomicUsize) -> std::io::Result<()> {
    let mut head = [0u8; 2];
    client.read_exact(&mut head)?;
    let mut methods = vec![0u8; usize::from(head[1])];
    client.read_exact(&mut methods)?;
    client.write_all(&[5, 0])?;
    let mut req = [0u8; 4];
    client.read_exact(&mut req)?;
    let host: String = match req[3] {
        1 => {
            let mut ip = [0u8; 4];
            client.read_exact(&mut ip)?;
            Ipv4Addr::from(ip).to_string()
        }
        3 => {
            let mut len = [0u8; 1];
            client.read_exact(&mut len)?;
            let mut name = vec![0u8; usize::from(len[0])];
            client.read_exact(&mut name)?;
            String::from_utf8_lossy(&name).into_owned()
        }
        _ => return Err(std::io::Error::other("unsupported address type")),
    };
    let mut port = [0u8; 2];
    client.read_exact(&mut port)?;
    let port = u16::from_be_bytes(port);
    // Only ever relay to this machine.
    let target: SocketAddr = format!("{host}:{port}")
        .parse()
        .map_err(std::io::Error::other)?;
    if !target.ip().is_loopback() {
        return Err(std::io::Error::other("refusing a non-loopback target"));
    }
    let upstream = TcpStream::connect(target)?;
    relayed.fetch_add(1, Ordering::SeqCst);
    client.write_all(&[5, 0, 0, 1, 127, 0, 0, 1, 0, 0])?;
    let (mut c_read, mut u_write) = (client.try_clone()?, upstream.try_clone()?);
    let up = std::thread::spawn(move || std::io::copy(&mut c_read, &mut u_write));
    let (mut u_read, mut c_write) = (upstream, client);
    let _ = std::io::copy(&mut u_read, &mut c_write);
    let _ = up.join();
    Ok(())
}

/// Replaces what differs between runs (ports, temporary paths) in messages for snapshots.
pub(crate) fn redact(text: &str, sandbox: &Sandbox) -> String {
    let mut out = text.replace(&sandbox.dir.path().display().to_string(), "[sandbox]");
    // Loopback ports.
    let mut redacted = String::with_capacity(out.len());
    let mut rest = out.as_str();
    while let Some(i) = rest.find("127.0.0.1:") {
        let (before, after) = rest.split_at(i + "127.0.0.1:".len());
        redacted.push_str(before);
        let digits = after.bytes().take_while(u8::is_ascii_digit).count();
        redacted.push_str("[port]");
        rest = &after[digits..];
    }
    redacted.push_str(rest);
    out = redacted;
    out
}

/// Whether a path's permission bits are exactly `mode`.
pub(crate) fn mode_of(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}
