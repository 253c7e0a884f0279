//! Test harness: the real router and listeners on 127.0.0.1:0, a scripted tailnet (whois answers
//! by the client socket's address), an in-memory issuer that counts its calls, and a small HTTP
//! client that can send whatever headers a test needs.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use http_body_util::{BodyExt as _, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tka_core::api::ClusterEndpoint;
use tka_core::identity::{IdentityError, IdentityProvider, WhoisRequest, WhoisTarget};
use tka_core::issuer::{
    CredentialIssuer, DEFAULT_TOKEN_LIFETIME, IssueError, IssueOutcome, IssuedCredential,
    SessionInfo, SessionState, token_lifetime,
};
use tka_core::policy::{NamespacedGrant, Subject};
use tka_core::{
    Clock, ClusterName, Decision, GrantMappingSpec, Identity, LoginName, ManualClock, MappingView,
    NodeId, NodeInfo, PolicySettings, RoleName, Secret, SessionName, Tag, Ttl, UserId, UserInfo,
};
use tka_server::connections::ConnectionLimits;
use tka_server::guard::AllowedHosts;
use tka_server::ops::ReadinessCheck;
use tka_server::ratelimit::RateLimitConfig;
use tka_server::{
    ApiConfig, ApiState, Backends, InMemoryMappings, ListenMode, Metrics, Server, SessionCounter,
    ops_router,
};
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

pub(crate) const HOST: &str = "tka-prod";
pub(crate) const SELF_NODE: &str = "nSELF";
pub(crate) const START: &str = "2026-03-01T12:00:00Z";

// ---------------------------------------------------------------- identities

pub(crate) fn identity(node: &str, login: &str, tags: &[&str], capabilities: Value) -> Identity {
    let Value::Array(capabilities) = capabilities else {
        panic!("capabilities are a JSON array");
    };
    Identity {
        user: UserInfo {
            id: UserId(login.len() as i64),
            login_name: LoginName::new(login).unwrap(),
            display_name: login.to_owned(),
        },
        node: NodeInfo {
            stable_id: NodeId::new(node).unwrap(),
            name: format!("{}.example.ts.net", node.to_lowercase()),
            addresses: vec!["100.64.0.10".parse().unwrap()],
            tags: tags.iter().map(|t| Tag::new(*t).unwrap()).collect(),
        },
        groups: Vec::new(),
        capabilities,
        compat_capabilities: Vec::new(),
    }
}

/// alice: a person with a grant of role `sre` on every cluster.
pub(crate) fn alice() -> Identity {
    identity("nALICE", "alice@example.com", &[], json!([{"role": "sre"}]))
}

/// A tagged CI runner granted `sre`.
pub(crate) fn ci() -> Identity {
    identity(
        "nCI",
        "tagged-devices",
        &["tag:ci"],
        json!([{"role": "sre"}]),
    )
}

// ---------------------------------------------------------------- mappings

pub(crate) fn mapping(name: &str, spec: GrantMappingSpec) -> MappingView {
    MappingView::new(RoleName::new(name).unwrap(), spec)
}

/// `sre` (view cluster-wide, edit in team-a), `admin` (only bob), `danger` (binds kube-system).
pub(crate) fn default_mappings() -> Vec<MappingView> {
    vec![
        mapping(
            "sre",
            GrantMappingSpec {
                cluster_roles: vec!["view".into()],
                namespaced: vec![NamespacedGrant {
                    cluster_role: "edit".into(),
                    namespaces: vec!["team-a".into()],
                }],
                default_ttl: Some("1h".into()),
                max_ttl: Some("8h".into()),
                ..Default::default()
            },
        ),
        mapping(
            "admin",
            GrantMappingSpec {
                subjects: vec![Subject {
                    user: Some("bob@example.com".into()),
                    ..Default::default()
                }],
                cluster_roles: vec!["admin".into()],
                ..Default::default()
            },
        ),
        mapping(
            "danger",
            GrantMappingSpec {
                namespaced: vec![NamespacedGrant {
                    cluster_role: "edit".into(),
                    namespaces: vec!["kube-system".into()],
                }],
                ..Default::default()
            },
        ),
    ]
}

// ---------------------------------------------------------------- scripted tailnet

/// whois by address: a test registers the identity behind each client socket it opens (or
/// makes every lookup fail as an unreachable tailscaled would).
#[derive(Debug, Default)]
pub(crate) struct ScriptedTailnet {
    by_addr: Mutex<HashMap<SocketAddr, Identity>>,
    pub(crate) lookups: Mutex<Vec<WhoisRequest>>,
    unavailable: Mutex<Option<String>>,
}

impl ScriptedTailnet {
    /// While `Some`, every lookup fails with [`IdentityError::DaemonUnavailable`] and this text.
    pub(crate) fn set_unavailable(&self, why: Option<&str>) {
        *self.unavailable.lock().unwrap() = why.map(str::to_owned);
    }

    pub(crate) fn insert(&self, addr: SocketAddr, identity: Identity) {
        self.by_addr.lock().unwrap().insert(addr, identity);
    }

    /// How many times whois was asked (once per connection at accept, once per request).
    pub(crate) fn lookup_count(&self) -> usize {
        self.lookups.lock().unwrap().len()
    }

    pub(crate) fn last_lookup(&self) -> Option<WhoisRequest> {
        self.lookups.lock().unwrap().last().cloned()
    }
}

#[async_trait]
impl IdentityProvider for ScriptedTailnet {
    async fn lookup(&self, request: &WhoisRequest) -> Result<Identity, IdentityError> {
        self.lookups.lock().unwrap().push(request.clone());
        if let Some(why) = self.unavailable.lock().unwrap().clone() {
            return Err(IdentityError::DaemonUnavailable(why));
        }
        let WhoisTarget::Connection(addr) = request.target else {
            return Err(IdentityError::NotInTailnet(request.target));
        };
        self.by_addr
            .lock()
            .unwrap()
            .get(&addr)
            .cloned()
            .ok_or(IdentityError::NotInTailnet(request.target))
    }
}

// ---------------------------------------------------------------- in-memory issuer

#[derive(Debug, Default)]
pub(crate) struct Calls {
    pub(crate) issue: AtomicUsize,
    pub(crate) refresh: AtomicUsize,
    pub(crate) revoke: AtomicUsize,
    pub(crate) describe: AtomicUsize,
}

/// One session per device, tokens shaped like JWTs (so the log test has something to find).
#[derive(Debug)]
pub(crate) struct FakeIssuer {
    clock: ManualClock,
    sessions: Mutex<HashMap<NodeId, SessionInfo>>,
    serial: AtomicUsize,
    pub(crate) calls: Calls,
    /// When set, `issue` waits for `release` after signalling `entered`.
    pub(crate) gate: AtomicBool,
    pub(crate) entered: Notify,
    pub(crate) release: Notify,
}

impl FakeIssuer {
    pub(crate) fn new(clock: ManualClock) -> Self {
        Self {
            clock,
            sessions: Mutex::default(),
            serial: AtomicUsize::new(0),
            calls: Calls::default(),
            gate: AtomicBool::new(false),
            entered: Notify::new(),
            release: Notify::new(),
        }
    }

    pub(crate) fn issue_calls(&self) -> usize {
        self.calls.issue.load(Ordering::SeqCst)
    }

    pub(crate) fn live_sessions(&self) -> usize {
        self.sessions.lock().unwrap().len()
    }

    fn mint(&self, session: &SessionInfo, outcome: IssueOutcome) -> IssuedCredential {
        let n = self.serial.fetch_add(1, Ordering::SeqCst);
        let now = self.clock.now();
        let lifetime = token_lifetime(now, session.expires_at, DEFAULT_TOKEN_LIFETIME);
        // Shaped like a real ServiceAccount token: header.payload.signature, base64url.
        let token = format!(
            "eyJhbGciOiJSUzI1NiIsImtpZCI6InRrYSJ9.eyJqdGkiOiJqdGktMDAw{n}In0.c2lnbmF0dXJl{n}"
        );
        IssuedCredential {
            session: session.name.clone(),
            outcome,
            role: session.role.clone(),
            token: Secret::new(token),
            token_id: Some(format!("jti-{n}")),
            token_expires_at: now + lifetime,
            session_expires_at: session.expires_at,
            service_account: format!("tka-system/{}", session.name),
        }
    }
}

#[async_trait]
impl CredentialIssuer for FakeIssuer {
    async fn issue(
        &self,
        identity: &Identity,
        decision: &Decision,
    ) -> Result<IssuedCredential, IssueError> {
        self.calls.issue.fetch_add(1, Ordering::SeqCst);
        if self.gate.load(Ordering::SeqCst) {
            self.entered.notify_one();
            self.release.notified().await;
        }
        let (session, outcome) = {
            let mut sessions = self.sessions.lock().unwrap();
            let n = self.serial.fetch_add(1, Ordering::SeqCst);
            let outcome = match sessions.get(identity.key()) {
                None => IssueOutcome::Created,
                Some(s) if s.role == decision.role => IssueOutcome::Extended,
                Some(_) => IssueOutcome::RoleChanged,
            };
            let name = sessions
                .get(identity.key())
                .map(|s| s.name.clone())
                .unwrap_or_else(|| SessionName::new(format!("tka-session-{n}")).unwrap());
            let session = SessionInfo {
                name,
                node: identity.key().clone(),
                node_name: identity.node.name.clone(),
                user: identity.user.id,
                login_name: identity.user.login_name.to_string(),
                tags: identity.node.tags.clone(),
                role: decision.role.clone(),
                cluster_roles: decision.cluster_roles.clone(),
                namespaced: decision.namespaced.clone(),
                expires_at: decision.expires_at,
                state: SessionState::Active,
                service_account: None,
                bindings: Vec::new(),
                last_token_expires_at: None,
                last_token_id: None,
            };
            sessions.insert(identity.key().clone(), session.clone());
            (session, outcome)
        };
        Ok(self.mint(&session, outcome))
    }

    async fn refresh(&self, identity: &Identity) -> Result<IssuedCredential, IssueError> {
        self.calls.refresh.fetch_add(1, Ordering::SeqCst);
        let session = self
            .sessions
            .lock()
            .unwrap()
            .get(identity.key())
            .cloned()
            .ok_or(IssueError::NoSession)?;
        if session.expires_at <= self.clock.now() {
            return Err(IssueError::Expired {
                session: session.name,
                expired_at: session.expires_at,
            });
        }
        Ok(self.mint(&session, IssueOutcome::Refreshed))
    }

    async fn revoke(&self, node: &NodeId) -> Result<Vec<SessionName>, IssueError> {
        self.calls.revoke.fetch_add(1, Ordering::SeqCst);
        Ok(self
            .sessions
            .lock()
            .unwrap()
            .remove(node)
            .map(|s| vec![s.name])
            .unwrap_or_default())
    }

    async fn revoke_user(&self, user: UserId) -> Result<Vec<SessionName>, IssueError> {
        let mut sessions = self.sessions.lock().unwrap();
        let names = sessions
            .values()
            .filter(|s| s.user == user)
            .map(|s| s.name.clone())
            .collect();
        sessions.retain(|_, s| s.user != user);
        Ok(names)
    }

    async fn describe(&self, node: &NodeId) -> Result<Option<SessionInfo>, IssueError> {
        self.calls.describe.fetch_add(1, Ordering::SeqCst);
        let now = self.clock.now();
        Ok(self
            .sessions
            .lock()
            .unwrap()
            .get(node)
            .cloned()
            .map(|mut s| {
                if s.expires_at <= now {
                    s.state = SessionState::Expired;
                }
                s
            }))
    }
}

impl SessionCounter for FakeIssuer {
    fn active_sessions(&self) -> Option<u64> {
        Some(self.live_sessions() as u64)
    }
}

/// A readiness check a test can flip.
#[derive(Debug)]
pub(crate) struct Switch {
    pub(crate) name: &'static str,
    pub(crate) ok: AtomicBool,
}

#[async_trait]
impl ReadinessCheck for Switch {
    fn name(&self) -> &str {
        self.name
    }

    async fn check(&self) -> Result<(), String> {
        if self.ok.load(Ordering::SeqCst) {
            Ok(())
        } else {
            Err("not answering".into())
        }
    }
}

// ---------------------------------------------------------------- server

pub(crate) struct Options {
    pub(crate) mode: ListenMode,
    pub(crate) rate_limit: RateLimitConfig,
    pub(crate) max_body_bytes: usize,
    pub(crate) mappings: Vec<MappingView>,
    pub(crate) service_name: Option<String>,
    /// whois through this instead of the scripted tailnet.
    pub(crate) identity: Option<Arc<dyn IdentityProvider>>,
    pub(crate) self_node_ids: Vec<NodeId>,
    /// Deadlines and connection caps of both listeners.
    pub(crate) limits: ConnectionLimits,
    /// Where ops listens (port 0).
    pub(crate) ops_ip: &'static str,
    /// The tka proxy URL the cluster advertises, if any.
    pub(crate) proxy: Option<String>,
    /// Whether the server hands tokens to laptops at all (`--proxy-only`).
    pub(crate) proxy_only: bool,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            mode: ListenMode::LoopbackOnly,
            rate_limit: RateLimitConfig {
                per_minute: 6000.try_into().unwrap(),
                burst: 1000.try_into().unwrap(),
            },
            max_body_bytes: 1024,
            mappings: default_mappings(),
            service_name: None,
            identity: None,
            self_node_ids: vec![NodeId::new(SELF_NODE).unwrap()],
            limits: ConnectionLimits::default(),
            // Ops binds "the pod's address" (127.0.0.3 stands in): never where tailnet traffic
            // arrives.
            ops_ip: "127.0.0.3",
            proxy: None,
            proxy_only: false,
        }
    }
}

pub(crate) struct TestServer {
    /// The state the server runs on (for calling the sessions service as another front would).
    pub(crate) state: Arc<ApiState>,
    pub(crate) addr: SocketAddr,
    pub(crate) ops: SocketAddr,
    pub(crate) tailnet: Arc<ScriptedTailnet>,
    pub(crate) issuer: Arc<FakeIssuer>,
    pub(crate) mappings: Arc<InMemoryMappings>,
    pub(crate) clock: ManualClock,
    pub(crate) readiness: Arc<Switch>,
    pub(crate) shutdown: CancellationToken,
    pub(crate) task: tokio::task::JoinHandle<std::io::Result<()>>,
}

pub(crate) fn api_config(options: &Options) -> ApiConfig {
    ApiConfig {
        cluster: ClusterEndpoint {
            name: ClusterName::new("prod").unwrap(),
            server: "https://10.0.0.1:6443".into(),
            certificate_authority_data: Some("Q0EK".into()),
            proxy: options.proxy.clone(),
            direct_tokens: true,
        },
        policy: PolicySettings::new(
            "tka-system",
            Ttl::parse("1h").unwrap(),
            Ttl::parse("8h").unwrap(),
        ),
        allowed_hosts: AllowedHosts::new(
            [HOST.to_owned(), "tka-prod.example.ts.net".to_owned()],
            ["127.0.0.1".parse().unwrap()],
        ),
        proxy_only: options.proxy_only,
        self_node_ids: options.self_node_ids.clone(),
        loopback_peers_only: true,
        service_name: options.service_name.clone(),
        max_body_bytes: options.max_body_bytes,
        rate_limit: options.rate_limit,
        whois_timeout: Duration::from_secs(5),
        issuer_timeout: Duration::from_secs(10),
    }
}

impl TestServer {
    pub(crate) async fn start() -> Self {
        Self::with(Options::default()).await
    }

    pub(crate) async fn with(options: Options) -> Self {
        let clock = ManualClock::new(START.parse().unwrap());
        let tailnet = Arc::new(ScriptedTailnet::default());
        let issuer = Arc::new(FakeIssuer::new(clock.clone()));
        let mappings = Arc::new(InMemoryMappings::new(options.mappings.clone()));
        let readiness = Arc::new(Switch {
            name: "kubernetes",
            ok: AtomicBool::new(true),
        });
        let metrics = Arc::new(Metrics::new(Some(issuer.clone())));
        let backends = Backends {
            identity: options.identity.clone().unwrap_or_else(|| tailnet.clone()),
            issuer: issuer.clone(),
            mappings: mappings.clone(),
            clock: Arc::new(clock.clone()),
        };
        let state = ApiState::new(api_config(&options), backends, metrics.clone());
        let shutdown = CancellationToken::new();
        let api_ip = match options.mode {
            ListenMode::ProxyProtocol { .. } => "127.0.0.2:0",
            _ => "127.0.0.1:0",
        };
        let server = Server::bind(
            api_ip.parse().unwrap(),
            &options.mode,
            SocketAddr::new(options.ops_ip.parse().unwrap(), 0),
            state.clone(),
            ops_router(vec![readiness.clone()], metrics),
            shutdown.clone(),
            Duration::from_secs(10),
        )
        .await
        .unwrap()
        .with_connection_limits(options.limits);
        let addr = server.api_addr();
        let ops = server.ops_addr().unwrap();
        let task = tokio::spawn(server.run());
        Self {
            state,
            addr,
            ops,
            tailnet,
            issuer,
            mappings,
            clock,
            readiness,
            shutdown,
            task,
        }
    }

    /// A connection whose socket whois knows as `identity`.
    pub(crate) async fn client(&self, identity: Identity) -> Client {
        Client::over(self.stream_of(identity).await).await
    }

    /// A TCP connection whose socket whois knows as `identity` from the start (the server asks
    /// at accept).
    pub(crate) async fn stream_of(&self, identity: Identity) -> TcpStream {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        self.tailnet.insert(socket.local_addr().unwrap(), identity);
        socket.connect(self.addr).await.unwrap()
    }

    /// A connection whois knows nothing about.
    pub(crate) async fn stranger(&self) -> Client {
        Client::over(TcpStream::connect(self.addr).await.unwrap()).await
    }

    /// A client of the ops listener, sending `Host: <ops address>` as the kubelet does.
    pub(crate) async fn ops_client(&self) -> Client {
        let mut client = Client::over(TcpStream::connect(self.ops).await.unwrap()).await;
        client.set_host(&self.ops.to_string());
        client
    }
}

// ---------------------------------------------------------------- client

pub(crate) struct Client {
    sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    /// The `Host` every request carries unless a test replaces it.
    host: String,
}

pub(crate) struct Response {
    pub(crate) status: u16,
    pub(crate) headers: http::HeaderMap,
    pub(crate) body: Bytes,
}

impl Response {
    pub(crate) fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }

    pub(crate) fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The problem's `code`, after checking it is a problem document with this status.
    pub(crate) fn problem_code(&self, status: u16) -> String {
        assert_eq!(self.status, status, "{}", self.text());
        assert_eq!(
            self.header("content-type"),
            Some("application/problem+json")
        );
        let p = self.json();
        assert_eq!(p["status"], status);
        p["code"].as_str().unwrap().to_owned()
    }
}

pub(crate) struct RequestBuilder<'a> {
    client: &'a mut Client,
    request: http::request::Builder,
    body: Bytes,
}

impl<'a> RequestBuilder<'a> {
    pub(crate) fn header(mut self, name: &str, value: &str) -> Self {
        self.request = self.request.header(name, value);
        self
    }

    pub(crate) fn without_header(mut self, name: &str) -> Self {
        if let Some(headers) = self.request.headers_mut() {
            headers.remove(name);
        }
        self
    }

    pub(crate) fn json(mut self, body: &str) -> Self {
        self.body = Bytes::from(body.to_owned());
        self
    }

    pub(crate) async fn send(self) -> Response {
        let request = self.request.body(Full::new(self.body)).unwrap();
        let response = self.client.sender.send_request(request).await.unwrap();
        let (parts, body) = response.into_parts();
        Response {
            status: parts.status.as_u16(),
            headers: parts.headers,
            body: body.collect().await.unwrap().to_bytes(),
        }
    }
}

impl Client {
    pub(crate) async fn over(stream: TcpStream) -> Self {
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(connection);
        Self {
            sender,
            host: HOST.to_owned(),
        }
    }

    /// Sends `host` as `Host` from now on.
    pub(crate) fn set_host(&mut self, host: &str) {
        self.host = host.to_owned();
    }

    pub(crate) fn request(&mut self, method: &str, path: &str) -> RequestBuilder<'_> {
        let mut request = http::Request::builder()
            .method(method)
            .uri(path)
            .header("host", self.host.as_str());
        if method == "POST" {
            request = request.header("content-type", "application/json");
        }
        RequestBuilder {
            client: self,
            request,
            body: Bytes::new(),
        }
    }

    pub(crate) fn post(&mut self, path: &str) -> RequestBuilder<'_> {
        self.request("POST", path)
    }

    pub(crate) fn get(&mut self, path: &str) -> RequestBuilder<'_> {
        self.request("GET", path)
    }

    pub(crate) fn delete(&mut self, path: &str) -> RequestBuilder<'_> {
        self.request("DELETE", path)
    }

    pub(crate) async fn login(&mut self, body: &str) -> Response {
        self.post("/api/v1/login").json(body).send().await
    }
}
