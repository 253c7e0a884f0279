//! The bounded soak (issue 14, Build 4) on the real components: the testenv's etcd and
//! kube-apiserver with deploy/'s RBAC, the built `tka-server serve --proxy-listen` with the
//! real API server as its upstream, and [`DeviceStage`]'s fake LocalAPI speaking for
//! [`DEVICES`] devices (a real tailnet would need a tailscaled each). Every device churns
//! through cycles for [`DURATION_ENV`] seconds (30 by default, as `make test` runs it; 300 under
//! `make soak`): a login with a short TTL, a proxied watch held for the whole session, refreshes
//! (`POST /api/v1/token`, the exec plugin's path) and proxied requests, then either a logout or
//! the session's expiry, after which the watch must have ended, the proxy must answer 401 and a
//! refresh must be refused. Now and then a login for a role no mapping names is refused on
//! purpose.
//!
//! It ends with: no labelled Session, ServiceAccount or binding left, no proxied stream open
//! (`tka_proxy_active_streams`, and every watch the devices opened ended), no client error but
//! the provoked kinds, no `WARN` or `ERROR` in the server's log but the expected ones, and the
//! server's resident memory (`VmRSS`) grown under 10 % from the end of the warm-up to the end
//! of the churn. The RSS bound is asserted from [`RSS_ASSERTED_FROM`] seconds on; a 30-second
//! run is mostly warm-up, so it only prints its numbers. Nothing here asserts a timing: every
//! wait is a generous bound.
//!
//! Skips without `TKA_TESTENV_BIN` (fails with `TKA_REQUIRE_TESTENV=1`).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt as _;
use jiff::Timestamp;
use k8s_openapi::api::core::v1::{ConfigMap, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRoleBinding, RoleBinding};
use kube::api::{ListParams, Patch, PatchParams};
use kube::runtime::watcher;
use kube::{Api, Resource, ResourceExt as _};
use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng as _};
use serde_json::json;
use tka_core::kubernetes::{MANAGED_BY, MANAGED_BY_LABEL, SESSION_LABEL, Session};
use tka_testkit::testenv::devices::{
    Device, DeviceStage, NS, ROLE, StageServer, http_exchange, proc_status_kib, sum_of,
};
use tka_testkit::testenv::{bin_dir_or_skip, exclusive};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// The variable that sets the churn's length in seconds (`make soak` sets 300).
const DURATION_ENV: &str = "TKA_SOAK_SECONDS";
/// The churn's length when [`DURATION_ENV`] is unset: the short form in `make test`.
const DEFAULT_SECONDS: u64 = 30;
/// Devices churning at once, each its own user.
const DEVICES: usize = 50;
/// The namespace the proxied requests and watches read; an admin changes a ConfigMap there.
const SOAK_NS: &str = "soak";
/// From this churn length on, RSS growth over 10 % fails the test; below it is only printed.
const RSS_ASSERTED_FROM: u64 = 120;
/// How long after its session ended a watch may still be open, and the proxy may still serve
/// the device, before that counts as an error (the design's bound is 2 s; the machine is shared).
const END_BOUND: Duration = Duration::from_secs(15);
/// How long a new session's first proxied request is retried while it is refused (401 or 403):
/// the API server learns of the new ServiceAccount and bindings through its own caches, so the
/// first request right after a login can be refused for some milliseconds. Counted and printed.
const SETTLE_BOUND: Duration = Duration::from_secs(10);
/// Slack for "a watch ended before its session did": `expiresAt` has whole seconds.
const EARLY_SLACK: Duration = Duration::from_secs(2);

/// The lengths of one run.
#[derive(Debug, Clone, Copy)]
struct Plan {
    /// How long devices start new cycles.
    churn: Duration,
    /// The first part of the churn, left out of the RSS comparison.
    warmup: Duration,
    /// The window at each end of the comparison whose RSS readings are taken (their median).
    window: Duration,
    /// The session TTLs a login asks for, in seconds (one picked per cycle).
    ttls: &'static [u64],
}

impl Plan {
    fn from_env() -> Self {
        let seconds = std::env::var(DURATION_ENV)
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .filter(|s| *s > 0)
            .unwrap_or(DEFAULT_SECONDS);
        let long = seconds >= RSS_ASSERTED_FROM;
        Self {
            churn: Duration::from_secs(seconds),
            warmup: Duration::from_secs(if long { 60 } else { seconds / 3 }),
            window: Duration::from_secs(if long { 20 } else { 5 }),
            ttls: if long { &[20, 30, 45] } else { &[8, 10, 12] },
        }
    }

    fn rss_asserted(&self) -> bool {
        self.churn.as_secs() >= RSS_ASSERTED_FROM
    }
}

/// What happened, by kind: the work done, the errors the test provokes, refusals of a new
/// session's first proxied request while the API server catches up (retried), and any other
/// error (with the first few details).
#[derive(Debug, Default)]
struct Tally {
    done: BTreeMap<String, u64>,
    provoked: BTreeMap<String, u64>,
    settling: BTreeMap<String, u64>,
    unexpected: BTreeMap<String, u64>,
    examples: Vec<String>,
}

/// The tally, shared by the devices (never locked across an await).
#[derive(Debug, Clone, Default)]
struct Counts(Arc<Mutex<Tally>>);

impl Counts {
    fn with(&self, f: impl FnOnce(&mut Tally)) {
        let mut tally = self.0.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut tally);
    }

    fn done(&self, kind: &str) {
        self.with(|t| *t.done.entry(kind.to_owned()).or_default() += 1);
    }

    fn provoked(&self, kind: String) {
        self.with(|t| *t.provoked.entry(kind).or_default() += 1);
    }

    fn settling(&self, kind: String) {
        self.with(|t| *t.settling.entry(kind).or_default() += 1);
    }

    fn unexpected(&self, kind: &str, detail: impl std::fmt::Display) {
        self.with(|t| {
            *t.unexpected.entry(kind.to_owned()).or_default() += 1;
            if t.examples.len() < 20 {
                let detail = detail.to_string();
                let detail: String = detail.chars().take(400).collect();
                t.examples.push(format!("{kind}: {detail}"));
            }
        });
    }
}

/// The stage, the server and where its proxy listens.
struct World {
    stage: DeviceStage,
    server: StageServer,
    proxy_listen: SocketAddr,
    proxy_target: SocketAddr,
    _dir: tempfile::TempDir,
}

impl World {
    async fn start(bin: &Path) -> Self {
        let deploy = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("deploy");
        let stage = DeviceStage::start(bin, &deploy).await.unwrap();
        stage.kube.ensure_namespace(SOAK_NS).await.unwrap();
        let dir = tempfile::Builder::new()
            .prefix("tka-soak-")
            .tempdir()
            .unwrap();
        let ca = dir.path().join("apiserver-ca.pem");
        std::fs::write(&ca, stage.kube.ca_pem()).unwrap();
        let port = std::net::TcpListener::bind("127.0.0.2:0")
            .and_then(|l| l.local_addr())
            .unwrap()
            .port();
        let proxy_listen = SocketAddr::from(([127, 0, 0, 2], port));
        let proxy_target = SocketAddr::from((stage.node.ipv4, port));
        // Production's limits apart from the stage's API rate limit; audit records on (`info`).
        let extra: Vec<String> = [
            "--proxy-listen",
            &proxy_listen.to_string(),
            "--proxy-upstream",
            stage.kube.api_url(),
            "--proxy-upstream-ca",
            &ca.to_string_lossy(),
            "--proxy-url",
            &format!("http://{proxy_target}"),
            "--log-filter",
            "info",
        ]
        .map(str::to_owned)
        .to_vec();
        let server_bin = Path::new(env!("CARGO_BIN_EXE_tka-server"));
        let server = stage.start_server_with(server_bin, &extra).await.unwrap();
        Self {
            stage,
            server,
            proxy_listen,
            proxy_target,
            _dir: dir,
        }
    }

    /// One request to the API listener as `device`: status and body.
    async fn api(
        &self,
        device: &Device,
        method: &str,
        path: &str,
        body: Option<&str>,
    ) -> Result<(u16, String), String> {
        self.server
            .call(device, method, path, body)
            .await
            .map(|(status, body, _)| (status, body))
            .map_err(|e| e.to_string())
    }

    /// One proxied `GET` as `device` (no credential): status and body.
    async fn proxied(&self, device: &Device, path: &str) -> Result<(u16, String), String> {
        let header = self
            .server
            .proxy_header(device, self.proxy_target)
            .map_err(|e| e.to_string())?;
        http_exchange(
            self.proxy_listen,
            &header,
            &self.proxy_target.to_string(),
            "GET",
            path,
            None,
        )
        .await
        .map(|(status, body, _)| (status, body))
        .map_err(|e| e.to_string())
    }

    /// Opens a proxied watch of the soak namespace's ConfigMaps as `device`: for a 200, a task
    /// that reads the stream until it ends (the instant it ended) or gives up after `cap`
    /// (`None`); else the status and body (or a transport error).
    async fn watch(
        &self,
        device: &Device,
        cap: Duration,
    ) -> Result<Result<JoinHandle<Option<Instant>>, (u16, String)>, String> {
        let header = self
            .server
            .proxy_header(device, self.proxy_target)
            .map_err(|e| e.to_string())?;
        let open = async {
            let mut stream = tokio::net::TcpStream::connect(self.proxy_listen).await?;
            let mut request = header;
            request.extend_from_slice(
                format!(
                    "GET /api/v1/namespaces/{SOAK_NS}/configmaps?watch=true&allowWatchBookmarks=true&timeoutSeconds=1800 HTTP/1.1\r\nHost: {}\r\nAccept: application/json\r\nConnection: close\r\n\r\n",
                    self.proxy_target
                )
                .as_bytes(),
            );
            stream.write_all(&request).await?;
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") && head.len() < 64 * 1024 {
                if stream.read(&mut byte).await? == 0 {
                    break;
                }
                head.push(byte[0]);
            }
            Ok::<_, std::io::Error>((stream, head))
        };
        let (mut stream, head) = tokio::time::timeout(Duration::from_secs(30), open)
            .await
            .map_err(|_| "no answer to the watch in 30 s".to_owned())?
            .map_err(|e| format!("opening the watch: {e}"))?;
        let head = String::from_utf8_lossy(&head);
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse::<u16>().ok())
            .ok_or_else(|| format!("no HTTP status for the watch: {head}"))?;
        if status != 200 {
            let mut body = Vec::new();
            let _ =
                tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut body)).await;
            return Ok(Err((status, String::from_utf8_lossy(&body).into_owned())));
        }
        let reader = tokio::spawn(async move {
            let read = async {
                let mut buf = vec![0u8; 16 * 1024];
                while let Ok(n) = stream.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                }
                Instant::now()
            };
            tokio::time::timeout(cap, read).await.ok()
        });
        Ok(Ok(reader))
    }
}

/// The instant (on tokio's clock) of a wall-clock time, `now` when it is past.
fn instant_of(at: Timestamp) -> Instant {
    let left = Duration::try_from(at.duration_since(Timestamp::now())).unwrap_or_default();
    Instant::now() + left
}

/// Who refused a proxied request: tka's proxy (its messages start with `tka:`) or the API
/// server behind it.
fn refused_by(body: &str) -> &'static str {
    let message = serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v["message"].as_str().map(str::to_owned))
        .unwrap_or_default();
    if message.starts_with("tka:") {
        "tka's proxy"
    } else {
        "the API server"
    }
}

/// The `code` of a problem+json body, or `-`.
fn problem_code(body: &str) -> String {
    serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v["code"].as_str().map(str::to_owned))
        .unwrap_or_else(|| "-".to_owned())
}

/// One device's cycles until `until`, then a last logout or expiry.
async fn churn(
    world: Arc<World>,
    device: Device,
    plan: Plan,
    until: Instant,
    counts: Counts,
    seed: u64,
) {
    let mut rng = StdRng::seed_from_u64(seed);
    let watch_cap = plan.churn + Duration::from_secs(300);
    while Instant::now() < until {
        let ttl = plan.ttls[rng.random_range(0..plan.ttls.len())];
        let expire = rng.random_bool(1.0 / 3.0);
        let body = format!(r#"{{"role":"{ROLE}","ttl":"{ttl}s"}}"#);
        let expires = match world
            .api(&device, "POST", "/api/v1/login", Some(&body))
            .await
        {
            Ok((200, answer)) => {
                let at = serde_json::from_str::<serde_json::Value>(&answer)
                    .ok()
                    .and_then(|v| v["session"]["expiresAt"].as_str().map(str::to_owned))
                    .and_then(|s| s.parse::<Timestamp>().ok());
                let Some(at) = at else {
                    counts.unexpected("login answer without session.expiresAt", &answer);
                    return;
                };
                counts.done("login");
                instant_of(at)
            }
            Ok((status, answer)) => {
                counts.unexpected(&format!("login {status}"), answer);
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
            Err(e) => {
                counts.unexpected("login transport", e);
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };

        // The session's first proxied request: a watch held until the session ends. Refusals
        // while the API server's caches catch up with the new objects are retried (bounded).
        let settle_until = Instant::now() + SETTLE_BOUND;
        let mut watch = loop {
            match world.watch(&device, watch_cap).await {
                Ok(Ok(reader)) => {
                    counts.done("watch opened");
                    break Some(reader);
                }
                Ok(Err((status @ (401 | 403), body))) if Instant::now() < settle_until => {
                    counts.settling(format!("{status} from {}", refused_by(&body)));
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                Ok(Err((status, body))) => {
                    counts.unexpected(&format!("watch not opened: {status}"), body);
                    break None;
                }
                Err(e) => {
                    counts.unexpected("watch transport", e);
                    break None;
                }
            }
        };

        // Act until the logout (somewhere in the session) or until shortly before the expiry.
        let logout_at =
            Instant::now() + Duration::from_secs(ttl).mul_f64(rng.random_range(0.3..0.8));
        let act_until = if expire { expires } else { logout_at }
            .min(expires - Duration::from_secs(3))
            .min(until.max(Instant::now()));
        while Instant::now() < act_until {
            match rng.random_range(0..20) {
                0 => {
                    // Provoked: a role no GrantMapping names.
                    let body = r#"{"role":"no-such-role"}"#;
                    match world
                        .api(&device, "POST", "/api/v1/login", Some(body))
                        .await
                    {
                        Ok((status @ 400..=499, answer)) => counts.provoked(format!(
                            "login for an unmapped role: {status} {}",
                            problem_code(&answer)
                        )),
                        Ok((status, answer)) => {
                            counts.unexpected(&format!("unmapped-role login {status}"), answer);
                        }
                        Err(e) => counts.unexpected("unmapped-role login transport", e),
                    }
                }
                1..=6 => match world
                    .api(&device, "POST", "/api/v1/token", Some("{}"))
                    .await
                {
                    Ok((200, _)) => counts.done("refresh"),
                    Ok((status, answer)) => {
                        counts.unexpected(&format!("refresh {status}"), answer);
                    }
                    Err(e) => counts.unexpected("refresh transport", e),
                },
                n => {
                    let path = if n <= 13 {
                        format!("/api/v1/namespaces/{SOAK_NS}")
                    } else {
                        format!("/api/v1/namespaces/{SOAK_NS}/configmaps?limit=500")
                    };
                    match world.proxied(&device, &path).await {
                        Ok((200, _)) => counts.done("proxied request"),
                        Ok((status, answer)) => {
                            counts.unexpected(&format!("proxied request {status}"), answer);
                        }
                        Err(e) => counts.unexpected("proxied request transport", e),
                    }
                }
            }
            let pause = Duration::from_millis(rng.random_range(1000..3000));
            tokio::time::sleep_until((Instant::now() + pause).min(act_until)).await;
        }

        // The end: a logout, or the expiry (the reconciler's and the proxy's own timer).
        let ended = if expire {
            tokio::time::sleep_until(expires).await;
            counts.done("expired");
            expires
        } else {
            let started = Instant::now();
            match world.api(&device, "DELETE", "/api/v1/session", None).await {
                Ok((204, _)) => counts.done("logout"),
                Ok((status, answer)) => counts.unexpected(&format!("logout {status}"), answer),
                Err(e) => counts.unexpected("logout transport", e),
            }
            started
        };

        // The session's watch ends with it.
        if let Some(reader) = watch.take() {
            match tokio::time::timeout_at(ended + END_BOUND, reader).await {
                Ok(Ok(Some(at))) if at + EARLY_SLACK < ended => {
                    counts.unexpected("watch ended before its session", "");
                }
                Ok(Ok(Some(_))) => counts.done("watch ended with its session"),
                Ok(Ok(None)) | Ok(Err(_)) => counts.unexpected("watch reader failed", ""),
                Err(_) => counts.unexpected("watch outlived its session by 15 s", ""),
            }
        }

        // Provoked: the ended session serves nothing (bounded retry while the end propagates).
        let path = format!("/api/v1/namespaces/{SOAK_NS}");
        let give_up = ended + END_BOUND;
        loop {
            match world.proxied(&device, &path).await {
                Ok((200, _)) if Instant::now() < give_up => {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Ok((200, _)) => {
                    counts.unexpected("proxy served an ended session for 15 s", "");
                    break;
                }
                Ok((401, _)) => {
                    counts.provoked("proxied request after the session ended: 401".to_owned());
                    break;
                }
                Ok((status, answer)) => {
                    counts.unexpected(&format!("proxied request after the end {status}"), answer);
                    break;
                }
                Err(e) => {
                    counts.unexpected("proxied request after the end transport", e);
                    break;
                }
            }
        }
        match world
            .api(&device, "POST", "/api/v1/token", Some("{}"))
            .await
        {
            Ok((status @ 400..=499, answer)) => counts.provoked(format!(
                "refresh after the session ended: {status} {}",
                problem_code(&answer)
            )),
            Ok((status, answer)) => {
                counts.unexpected(&format!("refresh after the end {status}"), answer);
            }
            Err(e) => counts.unexpected("refresh after the end transport", e),
        }
        tokio::time::sleep(Duration::from_millis(rng.random_range(0..1000))).await;
    }
}

/// Deletions of tka's labelled objects as the admin's watches saw them: each with the
/// `resourceVersion` of its delete, which on the testenv's single etcd is the revision it was
/// committed at, so deletes of different kinds can be ordered.
#[derive(Debug, Default)]
struct Deletions {
    /// Session name → revision of its final delete (the finalizer gone).
    sessions: BTreeMap<String, u64>,
    /// (kind, name, its session, revision) of every ServiceAccount and binding deleted.
    children: Vec<(&'static str, String, String, u64)>,
    /// Watch errors and restarts (a restart can miss deletes).
    interruptions: u64,
}

/// Watches `api`'s labelled objects and records their deletions into `into` (until aborted).
fn record_deletions<K>(
    api: Api<K>,
    kind: &'static str,
    into: Arc<Mutex<Deletions>>,
) -> JoinHandle<()>
where
    K: Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone,
{
    tokio::spawn(async move {
        let config = watcher::Config::default().labels(&format!("{MANAGED_BY_LABEL}={MANAGED_BY}"));
        let mut events = watcher(api, config).boxed();
        let mut inits = 0u64;
        while let Some(event) = events.next().await {
            let mut deletions = into.lock().unwrap_or_else(|e| e.into_inner());
            match event {
                Ok(watcher::Event::Delete(object)) => {
                    let revision = object
                        .resource_version()
                        .and_then(|v| v.parse::<u64>().ok())
                        .unwrap_or(0);
                    if kind == "Session" {
                        deletions.sessions.insert(object.name_any(), revision);
                    } else {
                        let session = object
                            .labels()
                            .get(SESSION_LABEL)
                            .cloned()
                            .unwrap_or_default();
                        deletions
                            .children
                            .push((kind, object.name_any(), session, revision));
                    }
                }
                Ok(watcher::Event::Init) => {
                    inits += 1;
                    if inits > 1 {
                        deletions.interruptions += 1;
                    }
                }
                Err(_) => deletions.interruptions += 1,
                Ok(_) => {}
            }
        }
    })
}

/// The labelled objects tka made that still exist, by kind (admin reads).
async fn leftovers(client: &kube::Client) -> BTreeMap<&'static str, usize> {
    let lp = ListParams::default().labels(&format!("{MANAGED_BY_LABEL}={MANAGED_BY}"));
    let sessions: Api<Session> = Api::all(client.clone());
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), NS);
    let crbs: Api<ClusterRoleBinding> = Api::all(client.clone());
    let rbs: Api<RoleBinding> = Api::all(client.clone());
    BTreeMap::from([
        ("Session", sessions.list(&lp).await.unwrap().items.len()),
        (
            "ServiceAccount",
            accounts.list(&lp).await.unwrap().items.len(),
        ),
        (
            "ClusterRoleBinding",
            crbs.list(&lp).await.unwrap().items.len(),
        ),
        ("RoleBinding", rbs.list(&lp).await.unwrap().items.len()),
    ])
}

/// The median of the readings taken in `[from, to)` (seconds since the churn started).
fn median_in(samples: &[(f64, u64)], from: f64, to: f64) -> Option<u64> {
    let mut window: Vec<u64> = samples
        .iter()
        .filter(|(t, _)| *t >= from && *t < to)
        .map(|(_, kib)| *kib)
        .collect();
    window.sort_unstable();
    window.get(window.len() / 2).copied()
}

/// The server's `WARN` and `ERROR` lines (pretty format), their timestamps cut, by text.
fn warnings(log: &str) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for line in log.lines() {
        let mut words = line.split_whitespace();
        let Some(level) = words.find(|w| *w == "WARN" || *w == "ERROR") else {
            continue;
        };
        let rest: Vec<&str> = words.collect();
        *out.entry(format!("{level} {}", rest.join(" ")))
            .or_default() += 1;
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e2e_soak_many_devices_churn_and_nothing_leaks() {
    let Some(bin) = bin_dir_or_skip("e2e_soak_many_devices_churn_and_nothing_leaks") else {
        return;
    };
    let _permit = exclusive().await;
    let plan = Plan::from_env();
    let world = Arc::new(World::start(&bin).await);
    let admin = world.stage.kube.client();
    let pid = world.server.pid;
    eprintln!(
        "soak: {DEVICES} devices for {} s (warm-up {} s, TTLs {:?} s), tka-server pid {pid}",
        plan.churn.as_secs(),
        plan.warmup.as_secs(),
        plan.ttls
    );

    // Every delete of tka's objects, to tell tka's own cleanup (a session's ServiceAccount and
    // bindings go before the Session) from the garbage collector's (after it).
    let deletions = Arc::new(Mutex::new(Deletions::default()));
    let recorders = [
        record_deletions(
            Api::<Session>::all(admin.clone()),
            "Session",
            deletions.clone(),
        ),
        record_deletions(
            Api::<ServiceAccount>::namespaced(admin.clone(), NS),
            "ServiceAccount",
            deletions.clone(),
        ),
        record_deletions(
            Api::<ClusterRoleBinding>::all(admin.clone()),
            "ClusterRoleBinding",
            deletions.clone(),
        ),
        record_deletions(
            Api::<RoleBinding>::all(admin.clone()),
            "RoleBinding",
            deletions.clone(),
        ),
    ];

    let start = Instant::now();
    let until = start + plan.churn;
    let stop = Arc::new(AtomicBool::new(false));

    // The server's resident memory, once a second while the churn runs.
    let sampler = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut samples = Vec::new();
            while !stop.load(Ordering::Relaxed) && Instant::now() < until {
                if let Some(kib) = proc_status_kib(pid, "VmRSS") {
                    samples.push((start.elapsed().as_secs_f64(), kib));
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            samples
        })
    };
    // Something for the watches to carry: an admin changes a ConfigMap every 2 s.
    let writer = {
        let stop = stop.clone();
        let config_maps: Api<ConfigMap> = Api::namespaced(admin.clone(), SOAK_NS);
        tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) && Instant::now() < until {
                n += 1;
                let cm = json!({"apiVersion": "v1", "kind": "ConfigMap",
                    "metadata": {"name": "soak", "namespace": SOAK_NS},
                    "data": {"n": n.to_string()}});
                let _ = config_maps
                    .patch(
                        "soak",
                        &PatchParams::apply("soak").force(),
                        &Patch::Apply(&cm),
                    )
                    .await;
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
        })
    };

    let counts = Counts::default();
    let seed: u64 = rand::random::<u32>().into();
    eprintln!("soak: seed {seed}");
    let mut devices = Vec::new();
    for i in 0..DEVICES {
        let device = world.stage.new_device();
        let (world, counts) = (world.clone(), counts.clone());
        devices.push(tokio::spawn(async move {
            // Spread the first logins over 5 s (part of the warm-up).
            tokio::time::sleep(Duration::from_millis(100 * i as u64)).await;
            churn(world, device, plan, until, counts, seed + i as u64).await;
        }));
    }
    // Every device's last cycle ends by the longest TTL plus the end checks after `until`.
    let bound = until + Duration::from_secs(plan.ttls.iter().max().copied().unwrap_or(60) + 120);
    for device in devices {
        if tokio::time::timeout_at(bound, device).await.is_err() {
            counts.unexpected("device still churning long after the end", "");
        }
    }
    stop.store(true, Ordering::Relaxed);
    let samples = sampler.await.unwrap();
    writer.await.unwrap();
    let drained = start.elapsed();

    // The last sessions have ended; wait (bounded) for the objects and streams to be gone.
    let passes_at_end = sum_of(
        &world.server.metrics().await.unwrap(),
        "tka_reconcile_duration_seconds_count",
    );
    let deadline = Instant::now() + Duration::from_secs(90);
    let (left, metrics) = loop {
        let left = leftovers(&admin).await;
        let metrics = world.server.metrics().await.unwrap();
        let clean =
            left.values().all(|n| *n == 0) && sum_of(&metrics, "tka_proxy_active_streams") == 0.0;
        if clean || Instant::now() >= deadline {
            break (left, metrics);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    let passes = sum_of(&metrics, "tka_reconcile_duration_seconds_count");
    // The last deletes' events arrive within milliseconds of the objects being gone.
    tokio::time::sleep(Duration::from_secs(2)).await;
    for recorder in &recorders {
        recorder.abort();
    }
    let deletions = std::mem::take(&mut *deletions.lock().unwrap());
    let late: Vec<_> = deletions
        .children
        .iter()
        .filter(|(_, _, session, revision)| {
            deletions
                .sessions
                .get(session)
                .is_some_and(|gone| revision > gone)
        })
        .collect();
    let unpaired = deletions
        .children
        .iter()
        .filter(|(_, _, session, _)| !deletions.sessions.contains_key(session))
        .count();
    let rss_end_of_run = proc_status_kib(pid, "VmRSS").unwrap_or(0);

    // Resident memory: the end of the warm-up against the end of the churn.
    let churn = plan.churn.as_secs_f64();
    let (warm, win) = (plan.warmup.as_secs_f64(), plan.window.as_secs_f64());
    let rss_start = median_in(&samples, warm, warm + win);
    let rss_end = median_in(&samples, churn - win, churn);
    let growth = match (rss_start, rss_end) {
        (Some(a), Some(b)) if a > 0 => Some((b as f64 - a as f64) / a as f64 * 100.0),
        _ => None,
    };

    let log = world.server.process.log();
    let warned = warnings(&log);
    let tally = std::mem::take(&mut *counts.0.lock().unwrap());
    let revocations: Vec<(String, f64)> = metrics
        .iter()
        .filter(|(k, _)| k.starts_with("tka_revocations"))
        .map(|(k, v)| (k.clone(), *v))
        .collect();
    eprintln!(
        "soak: churned {:.0} s, drained at {:.0} s; done {:?}",
        churn,
        drained.as_secs_f64(),
        tally.done
    );
    eprintln!("soak: provoked {:?}", tally.provoked);
    eprintln!(
        "soak: a new session's first proxied request refused, then retried {:?}",
        tally.settling
    );
    eprintln!(
        "soak: unexpected {:?} {:#?}",
        tally.unexpected, tally.examples
    );
    eprintln!(
        "soak: reconciler passes {passes_at_end} at the end of the churn, {passes} after; revocations {revocations:?}"
    );
    eprintln!(
        "soak: deletes seen: {} Sessions, {} ServiceAccounts and bindings ({} after their Session's, {} whose Session's delete was not seen); watch interruptions {}",
        deletions.sessions.len(),
        deletions.children.len(),
        late.len(),
        unpaired,
        deletions.interruptions
    );
    eprintln!(
        "soak: left over {left:?}; tka_proxy_active_streams {}; tka_active_sessions {}",
        sum_of(&metrics, "tka_proxy_active_streams"),
        sum_of(&metrics, "tka_active_sessions")
    );
    eprintln!(
        "soak: VmRSS KiB: after warm-up {rss_start:?}, end of churn {rss_end:?}, growth {growth:?} % ({}), after the drain {rss_end_of_run}; {} readings",
        if plan.rss_asserted() {
            "asserted < 10 %"
        } else {
            "printed only: the run is too short"
        },
        samples.len()
    );
    eprintln!("soak: server WARN/ERROR lines {warned:#?}");

    // No leak, no open stream.
    assert!(
        left.values().all(|n| *n == 0),
        "labelled objects left 90 s after the last session ended: {left:?}"
    );
    assert_eq!(
        sum_of(&metrics, "tka_proxy_active_streams"),
        0.0,
        "proxied streams still open"
    );
    assert_eq!(sum_of(&metrics, "tka_active_sessions"), 0.0);
    // tka cleaned up itself: no ServiceAccount or binding outlived its Session (what the
    // garbage collector or the reconciler's orphan sweep would have removed).
    assert!(
        late.is_empty(),
        "deleted after their Session, not by tka's own cleanup: {late:?}"
    );
    assert!(
        !deletions.children.is_empty() && !deletions.sessions.is_empty(),
        "the watches saw no deletes"
    );
    assert_eq!(
        tally.done.get("watch opened"),
        tally.done.get("watch ended with its session"),
        "every watch ends with its session: {:?}",
        tally.done
    );
    // No error but the provoked ones.
    assert!(
        tally.unexpected.is_empty(),
        "client errors: {:?} {:#?}",
        tally.unexpected,
        tally.examples
    );
    assert!(
        warned.is_empty(),
        "the server logged warnings or errors: {warned:#?}"
    );
    // The churn did what it says: every device logged in, sessions ended both ways, the
    // refresh and proxy paths ran, and the reconciler made passes.
    let n = |k: &str| tally.done.get(k).copied().unwrap_or(0);
    assert!(n("login") >= DEVICES as u64, "{:?}", tally.done);
    assert!(n("logout") > 0 && n("expired") > 0, "{:?}", tally.done);
    assert!(
        n("refresh") > 0 && n("proxied request") > 0,
        "{:?}",
        tally.done
    );
    assert!(passes > 0.0, "no reconciler pass ran");
    // Resident memory.
    if plan.rss_asserted() {
        let growth = growth.expect("RSS readings at both ends of the comparison");
        assert!(
            growth < 10.0,
            "tka-server's RSS grew {growth:.1} % after warm-up ({rss_start:?} → {rss_end:?} KiB)"
        );
    }
}
