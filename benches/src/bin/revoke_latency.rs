//! Login and logout latency of the real issuer on the testenv's kube-apiserver, and where each
//! one's time goes, request by request.
//!
//! Starts etcd, kube-apiserver and kube-controller-manager from `TKA_TESTENV_BIN` (run
//! `eval "$(tka-testkit/testenv/build.sh)"` first), installs tka's CRDs, then drives
//! [`KubernetesIssuer`] directly (no HTTP front, no tailnet): N devices log in one after another
//! (`sre`-shaped grant: one ClusterRoleBinding and one RoleBinding), then each logs out. Every API
//! request goes through a timing layer, so the report shows the latency of a login and of a
//! logout (p50/p90/p99/max) and, per operation, how many requests of each kind it made and their
//! mean time. Usage: `revoke_latency [--sessions N]` (default 300, at most 5,000).
//! Nothing here asserts a timing.

use std::collections::BTreeMap;
use std::future::Future;
use std::io::Write;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, PostParams};
use tka_benches::fixtures;
use tka_core::issuer::CredentialIssuer;
use tka_core::kubernetes::{IssuerSettings, KubernetesIssuer};
use tka_core::policy::NamespacedBinding;
use tka_core::{Decision, NodeId, RoleName, SystemClock, Ttl};
use tka_testkit::testenv::{KubeEnv, bin_dir};

/// The namespace the server runs in.
const NAMESPACE: &str = "tka-system";
/// The namespace the sessions' RoleBindings go to.
const TEAM: &str = "team-a";

type Log = Arc<Mutex<Vec<(String, Duration)>>>;

/// A tower layer that records each request's kind (method and path shape) and latency.
#[derive(Clone)]
struct Timing(Log);

impl<S> tower::Layer<S> for Timing {
    type Service = Timed<S>;
    fn layer(&self, inner: S) -> Timed<S> {
        Timed {
            inner,
            log: self.0.clone(),
        }
    }
}

#[derive(Clone)]
struct Timed<S> {
    inner: S,
    log: Log,
}

impl<S, B> tower::Service<http::Request<B>> for Timed<S>
where
    S: tower::Service<http::Request<B>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let kind = format!("{} {}", request.method(), shape(request.uri()));
        let started = Instant::now();
        let response = self.inner.call(request);
        let log = self.log.clone();
        Box::pin(async move {
            let answer = response.await;
            log.lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push((kind, started.elapsed()));
            answer
        })
    }
}

/// The path with session-specific names replaced, plus whether it carried a label selector.
fn shape(uri: &http::Uri) -> String {
    let path: Vec<&str> = uri
        .path()
        .split('/')
        .map(|s| {
            if s.starts_with("tka-") && s != NAMESPACE {
                "{name}"
            } else {
                s
            }
        })
        .collect();
    let selector = if uri.query().is_some_and(|q| q.contains("labelSelector")) {
        "?labelSelector"
    } else {
        ""
    };
    format!("{}{selector}", path.join("/"))
}

fn sessions_arg() -> usize {
    let mut it = std::env::args().skip(1);
    let mut n = 300;
    while let Some(flag) = it.next() {
        if flag == "--sessions"
            && let Some(v) = it.next().and_then(|v| v.parse().ok())
        {
            n = v;
        }
    }
    n.clamp(1, 5_000)
}

fn decision(now: Timestamp) -> Result<Decision, String> {
    let ttl = Ttl::parse("1h").map_err(|e| e.to_string())?;
    Ok(Decision {
        role: RoleName::new("sre").map_err(|e| e.to_string())?,
        cluster_roles: vec!["view".to_owned()],
        namespaced: vec![NamespacedBinding {
            cluster_role: "edit".to_owned(),
            namespace: TEAM.to_owned(),
        }],
        ttl,
        expires_at: now + SignedDuration::from_hours(1),
        clamped: None,
    })
}

/// Latencies of one operation, and the requests it made.
#[derive(Default)]
struct Measured {
    latencies: Vec<Duration>,
    requests: BTreeMap<String, (usize, Duration, Duration)>,
}

impl Measured {
    fn add(&mut self, took: Duration, requests: Vec<(String, Duration)>) {
        self.latencies.push(took);
        for (kind, d) in requests {
            let entry = self.requests.entry(kind).or_default();
            entry.0 += 1;
            entry.1 += d;
            entry.2 = entry.2.max(d);
        }
    }

    fn print(&mut self, out: &mut impl Write, what: &str) -> std::io::Result<()> {
        self.latencies.sort();
        let n = self.latencies.len();
        let at = |q: f64| {
            let i = ((n as f64 * q).ceil() as usize).clamp(1, n) - 1;
            ms(self.latencies[i])
        };
        writeln!(
            out,
            "{what}: n={n} p50={:.1} ms p90={:.1} ms p99={:.1} ms max={:.1} ms",
            at(0.50),
            at(0.90),
            at(0.99),
            at(1.0)
        )?;
        for (kind, (count, total, max)) in &self.requests {
            writeln!(
                out,
                "    {:>5.2} x {kind}: mean {:.1} ms, max {:.1} ms",
                *count as f64 / n as f64,
                ms(*total) / *count as f64,
                ms(*max)
            )?;
        }
        Ok(())
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1_000.0
}

fn take(log: &Log) -> Vec<(String, Duration)> {
    std::mem::take(&mut *log.lock().unwrap_or_else(PoisonError::into_inner))
}

async fn run() -> Result<(), String> {
    let n = sessions_arg();
    let bin = bin_dir().map_err(|e| e.to_string())?;
    let env = KubeEnv::start(&bin).await.map_err(|e| e.to_string())?;
    env.install_crds().await.map_err(|e| e.to_string())?;
    env.ensure_namespace(NAMESPACE)
        .await
        .map_err(|e| e.to_string())?;
    let namespaces: Api<Namespace> = Api::all(env.client());
    let team: Namespace = serde_json::from_value(serde_json::json!({"metadata": {"name": TEAM}}))
        .map_err(|e| e.to_string())?;
    namespaces
        .create(&PostParams::default(), &team)
        .await
        .map_err(|e| e.to_string())?;

    let kubeconfig =
        kube::config::Kubeconfig::read_from(env.admin_kubeconfig()).map_err(|e| e.to_string())?;
    let config = kube::Config::from_custom_kubeconfig(
        kubeconfig,
        &kube::config::KubeConfigOptions::default(),
    )
    .await
    .map_err(|e| e.to_string())?;
    let log: Log = Arc::default();
    let client = kube::client::ClientBuilder::try_from(config)
        .map_err(|e| e.to_string())?
        .with_layer(&Timing(log.clone()))
        .build();
    let issuer = KubernetesIssuer::new(
        client,
        IssuerSettings::new(NAMESPACE),
        Arc::new(SystemClock),
    )
    .map_err(|e| e.to_string())?;

    let identities = (0..n)
        .map(|i| fixtures::identity(&format!("nBench{i:05}CNTRL")))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())?;
    // Warm the connection pool and the API server's caches with a throwaway login and logout.
    let warm = fixtures::identity("nBenchWarmCNTRL").map_err(|e| e.to_string())?;
    issuer
        .issue(&warm, &decision(Timestamp::now())?)
        .await
        .map_err(|e| e.to_string())?;
    issuer.revoke(warm.key()).await.map_err(|e| e.to_string())?;
    take(&log);

    let mut login = Measured::default();
    for identity in &identities {
        let started = Instant::now();
        issuer
            .issue(identity, &decision(Timestamp::now())?)
            .await
            .map_err(|e| format!("login: {e}"))?;
        login.add(started.elapsed(), take(&log));
    }
    let mut logout = Measured::default();
    for identity in &identities {
        let node: &NodeId = identity.key();
        let started = Instant::now();
        let ended = issuer
            .revoke(node)
            .await
            .map_err(|e| format!("logout: {e}"))?;
        if ended.len() != 1 {
            return Err(format!("logout of {node} ended {} sessions", ended.len()));
        }
        logout.add(started.elapsed(), take(&log));
    }
    let mut out = std::io::stdout().lock();
    let mut report = |out: &mut std::io::StdoutLock<'_>| -> std::io::Result<()> {
        writeln!(
            out,
            "real kube-apiserver (testenv), sequential, {n} sessions, {} cores",
            std::thread::available_parallelism().map_or(0, usize::from)
        )?;
        login.print(out, "login (issue, created)")?;
        logout.print(out, "logout (revoke)")
    };
    report(&mut out).map_err(|e| format!("writing the report: {e}"))
}

#[tokio::main]
async fn main() {
    if let Err(e) = run().await {
        eprintln!("revoke_latency: {e}");
        std::process::exit(1);
    }
}
