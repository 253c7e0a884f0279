//! The scenario of the proxy benchmark, in one run on one stage (the scale run's: deploy/'s
//! RBAC on the testenv's kube-apiserver, a fake LocalAPI, the release `tka-server` in
//! PROXY-protocol mode with `--proxy-listen` on 127.0.0.2 and `--proxy-upstream` the same API
//! server), in order:
//!
//! 1. **latency**: one client, the kubectl-shaped mix ([`Kind`]) sent directly (the session's
//!    token) and through the proxy (no credential), the two routes interleaved request by
//!    request (which goes first alternates), each kind in each round;
//! 2. **throughput**: `concurrency` clients running the mix in a closed loop, in time slices that
//!    alternate between the routes;
//! 3. **memory**: proxied watches opened in steps up to `watches`, the server's RSS at each;
//! 4. **logout**: `logout_watches` proxied watches open, `DELETE /api/v1/session`, the time
//!    until each watch is closed; `logout_rounds` times, a new device each.
//!
//! Every phase is bounded by counts and deadlines. Reports; asserts nothing.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt as _;
use http::Method;
use k8s_openapi::api::core::v1::Namespace;
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use serde::Serialize;
use serde_json::json;
use tka_core::kubernetes::GrantMapping;

use super::client::{Endpoint, Kind, Route, Worker, until_closed, watch_path};
use crate::scale::ScaleError;
use crate::scale::env::{ROLE, Server, Stage, User};
use crate::scale::login::{tka_exchange, tka_logout};
use crate::scale::probe;
use crate::scale::stats::{self, Summary};

/// The namespace the mix reads and writes (the session may edit there).
pub const MIX_NS: &str = "bench-proxy";
/// The namespace the memory and logout watches watch (nothing changes there).
pub const WATCH_NS: &str = "bench-watch";

/// What to run, and how much.
#[derive(Debug, Clone, Serialize)]
pub struct Config {
    /// The testenv's components (`TKA_TESTENV_BIN`).
    pub testenv_bin: PathBuf,
    /// The `tka-server` binary under test (release).
    pub server_bin: PathBuf,
    /// The kustomize base (`tka-server/deploy`).
    pub deploy: PathBuf,
    /// Where the results go.
    pub out: PathBuf,
    /// Rounds of the sequential mix (each: every kind on both routes).
    pub rounds: usize,
    /// Clients at once in the throughput phase.
    pub concurrency: usize,
    /// Throughput slices per route.
    pub slices: usize,
    /// Length of one slice.
    pub slice_seconds: u64,
    /// Proxied watches open at once for the memory measure.
    pub watches: usize,
    /// Logout rounds.
    pub logout_rounds: usize,
    /// Proxied watches open in each logout round.
    pub logout_watches: usize,
}

/// Latency of one kind on both routes and what the proxy adds.
#[derive(Debug, Clone, Serialize)]
pub struct KindRow {
    /// The request kind (`all` for every kind together).
    pub kind: String,
    /// Sent directly.
    pub direct: Summary,
    /// Through the proxy.
    pub proxy: Summary,
    /// proxy p50 − direct p50, ms.
    pub added_p50_ms: f64,
    /// proxy p99 − direct p99, ms.
    pub added_p99_ms: f64,
    /// The median of the paired differences (proxy − direct within the same round), ms.
    pub paired_median_ms: f64,
}

/// Throughput of one route.
#[derive(Debug, Clone, Serialize)]
pub struct ThroughputRow {
    /// The route.
    pub route: Route,
    /// Clients at once.
    pub concurrency: usize,
    /// Requests completed over its slices.
    pub requests: usize,
    /// Wall seconds of its slices.
    pub seconds: f64,
    /// Requests per second.
    pub per_second: f64,
    /// Latency of every request at this concurrency.
    pub latency: Summary,
}

/// The server's memory with proxied watches open.
#[derive(Debug, Clone, Serialize)]
pub struct MemoryStep {
    /// Watches open.
    pub open: usize,
    /// The server's `tka_proxy_active_streams` then.
    pub active_streams: f64,
    /// The server's RSS, KiB (median of three readings).
    pub rss_kib: u64,
}

/// The memory measure.
#[derive(Debug, Clone, Serialize)]
pub struct Memory {
    /// RSS with 0, then each step of watches open.
    pub steps: Vec<MemoryStep>,
    /// (RSS at the last step − RSS at 0) / watches, KiB.
    pub per_stream_kib: f64,
    /// RSS 3 s after every watch was closed, KiB.
    pub after_close_kib: u64,
    /// The open file descriptors of the server with every watch open.
    pub fds_open: usize,
    /// Time to open all the watches, s.
    pub open_seconds: f64,
}

/// The logout measure.
#[derive(Debug, Clone, Serialize)]
pub struct Logout {
    /// From the start of `DELETE /api/v1/session` until each watch was closed.
    pub closed: Summary,
    /// The `DELETE /api/v1/session` call itself.
    pub logout_call: Summary,
    /// Watches still open 60 s after they were opened (the logout came some 0.3 s after).
    pub not_closed: usize,
    /// Every close, ms (for the JSON).
    pub closed_ms: Vec<f64>,
}

/// Everything the run measured.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// When the run started (UTC).
    pub started: String,
    /// The settings.
    pub config: Config,
    /// The load average at the start and after each phase.
    pub loadavg: Vec<(String, String)>,
    /// Sequential latency by kind, then all kinds.
    pub latency: Vec<KindRow>,
    /// The server's own view over the sequential phase: mean time waiting for the upstream's
    /// headers (`tka_proxy_upstream_seconds`), ms, and the proxied requests it counted.
    pub upstream_mean_ms: f64,
    /// Proxied requests the server counted in the sequential phase.
    pub upstream_count: f64,
    /// Throughput, direct then proxy.
    pub throughput: Vec<ThroughputRow>,
    /// proxy per second / direct per second.
    pub throughput_ratio: f64,
    /// Memory per open watch.
    pub memory: Memory,
    /// Logout → streams closed.
    pub logout: Logout,
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn free_port(ip: [u8; 4]) -> Result<u16, ScaleError> {
    std::net::TcpListener::bind((std::net::Ipv4Addr::from(ip), 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| ScaleError::new(format!("finding a free port: {e}")))
}

/// The running stage, server and proxy addresses.
struct Bench {
    stage: Stage,
    server: Server,
    proxy_listen: std::net::SocketAddr,
    proxy_target: std::net::SocketAddr,
    _dir: tempfile::TempDir,
}

/// A logged-in device and its routes.
struct Device {
    user: User,
    token: String,
}

impl Bench {
    async fn start(config: &Config) -> Result<Self, ScaleError> {
        let stage = Stage::start(&config.testenv_bin, &config.deploy).await?;
        let admin = stage.kube.client();
        let namespaces: Api<Namespace> = Api::all(admin.clone());
        for ns in [MIX_NS, WATCH_NS] {
            let object: Namespace = serde_json::from_value(json!({"metadata": {"name": ns}}))
                .map_err(ScaleError::from_display)?;
            namespaces
                .create(&PostParams::default(), &object)
                .await
                .map_err(|e| ScaleError::new(format!("creating namespace {ns}: {e}")))?;
        }
        // The session may write ConfigMaps in the mix's namespace (server-side apply).
        let mappings: Api<GrantMapping> = Api::all(admin);
        let patch =
            json!({"spec": {"namespaced": [{"clusterRole": "edit", "namespaces": [MIX_NS]}]}});
        mappings
            .patch(ROLE, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map_err(|e| ScaleError::new(format!("patching GrantMapping {ROLE}: {e}")))?;

        let dir = tempfile::Builder::new()
            .prefix("tka-proxy-bench-")
            .tempdir()
            .map_err(ScaleError::from_display)?;
        let ca = dir.path().join("apiserver-ca.pem");
        std::fs::write(&ca, stage.kube.ca_pem()).map_err(ScaleError::from_display)?;
        let port = free_port([127, 0, 0, 2])?;
        let proxy_listen = std::net::SocketAddr::from(([127, 0, 0, 2], port));
        let proxy_target = std::net::SocketAddr::from((stage.node.ipv4, port));
        // One device holds every watch of the memory measure: lift the per-device caps above
        // it (and the listener's), and the proxy's rate limit out of the load's way. Audit
        // records on (`info`, as in production; the launcher writes them `pretty`).
        let streams = (config.watches + 64).clamp(64, 4096);
        let extra: Vec<String> = [
            "--proxy-listen",
            &proxy_listen.to_string(),
            "--proxy-upstream",
            stage.kube.api_url(),
            "--proxy-upstream-ca",
            &ca.to_string_lossy(),
            "--proxy-url",
            &format!("http://{proxy_target}"),
            "--proxy-max-streams-per-device",
            &streams.to_string(),
            "--max-connections",
            &(streams * 2).to_string(),
            "--max-connections-per-peer",
            &(streams + 64).to_string(),
            "--proxy-rate-limit",
            "1000000",
            "--proxy-rate-limit-burst",
            "1000000",
            "--log-filter",
            "info",
        ]
        .map(str::to_owned)
        .to_vec();
        let server = stage.start_server_with(&config.server_bin, &extra).await?;
        Ok(Self {
            stage,
            server,
            proxy_listen,
            proxy_target,
            _dir: dir,
        })
    }

    /// A new device logged in (direct login, so the direct route has its token).
    async fn login(&self) -> Result<Device, ScaleError> {
        let user = self.stage.new_device();
        let body = format!(r#"{{"role":"{ROLE}"}}"#);
        let (_, text, _) =
            tka_exchange(&self.server, &user, "POST", "/api/v1/login", Some(&body)).await?;
        let answer: serde_json::Value =
            serde_json::from_str(&text).map_err(ScaleError::from_display)?;
        let token = answer["token"]["token"]
            .as_str()
            .ok_or_else(|| ScaleError::new("the login answer holds no token"))?
            .to_owned();
        Ok(Device { user, token })
    }

    fn proxy_endpoint(&self, device: &Device) -> Endpoint {
        Endpoint::proxy(self.proxy_listen, device.user.peer.ipv4, self.proxy_target)
    }

    async fn direct_endpoint(&self, device: &Device) -> Result<Endpoint, ScaleError> {
        let path = self
            .stage
            .kube
            .kubeconfig_for_token(&device.token)
            .map_err(ScaleError::from_display)?;
        let kubeconfig =
            kube::config::Kubeconfig::read_from(&path).map_err(ScaleError::from_display)?;
        let config = kube::Config::from_custom_kubeconfig(
            kubeconfig,
            &kube::config::KubeConfigOptions::default(),
        )
        .await
        .map_err(ScaleError::from_display)?;
        Endpoint::direct(&config, &device.token)
    }

    async fn worker(&self, device: &Device, route: Route, i: usize) -> Result<Worker, ScaleError> {
        let endpoint = || async {
            match route {
                Route::Direct => self.direct_endpoint(device).await,
                Route::Proxy => Ok(self.proxy_endpoint(device)),
            }
        };
        Ok(Worker {
            kept: endpoint().await?,
            watch: endpoint().await?,
            config_map: format!("mix-{}-{i}", route.name()),
            namespace: MIX_NS.to_owned(),
        })
    }

    fn rss(&self) -> Result<u64, ScaleError> {
        Ok(probe::proc_sample(self.server.pid)?.rss_kib)
    }

    /// The median of three RSS readings 0.5 s apart, after `settle`.
    async fn settled_rss(&self, settle: Duration) -> Result<u64, ScaleError> {
        tokio::time::sleep(settle).await;
        let mut readings = Vec::new();
        for _ in 0..3 {
            readings.push(self.rss()?);
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        readings.sort_unstable();
        Ok(readings[1])
    }

    async fn metric(&self, name: &str) -> Result<f64, ScaleError> {
        Ok(probe::sum_of(&self.server.metrics().await?, name))
    }
}

fn row(kind: &str, direct: &[Duration], proxy: &[Duration]) -> KindRow {
    let d = stats::summarize(direct);
    let p = stats::summarize(proxy);
    let paired: Vec<f64> = direct
        .iter()
        .zip(proxy)
        .map(|(d, p)| stats::ms(*p) - stats::ms(*d))
        .collect();
    let paired_median_ms = stats::percentile(&stats::sorted(paired), 50.0);
    KindRow {
        kind: kind.to_owned(),
        added_p50_ms: p.p50_ms - d.p50_ms,
        added_p99_ms: p.p99_ms - d.p99_ms,
        paired_median_ms,
        direct: d,
        proxy: p,
    }
}

/// Phase 1: the sequential, interleaved mix.
async fn latency(
    bench: &Bench,
    device: &Device,
    rounds: usize,
) -> Result<(Vec<KindRow>, f64, f64), ScaleError> {
    let direct = bench.worker(device, Route::Direct, 0).await?;
    let proxy = bench.worker(device, Route::Proxy, 0).await?;
    // Warm-up: connections, the proxy's token for the session, the API server's caches.
    for _ in 0..5 {
        for kind in Kind::ALL {
            direct.run(kind).await?;
            proxy.run(kind).await?;
        }
    }
    let sum0 = bench.metric("tka_proxy_upstream_seconds_sum").await?;
    let count0 = bench.metric("tka_proxy_upstream_seconds_count").await?;
    let mut samples: BTreeMap<(Kind, Route), Vec<Duration>> = BTreeMap::new();
    for round in 0..rounds {
        for (k, kind) in Kind::ALL.into_iter().enumerate() {
            let order = if (round + k) % 2 == 0 {
                [&direct, &proxy]
            } else {
                [&proxy, &direct]
            };
            for worker in order {
                let took = worker.run(kind).await?;
                samples
                    .entry((kind, worker.kept.route()))
                    .or_default()
                    .push(took);
            }
        }
    }
    let sum1 = bench.metric("tka_proxy_upstream_seconds_sum").await?;
    let count1 = bench.metric("tka_proxy_upstream_seconds_count").await?;
    let mut rows = Vec::new();
    let (mut all_direct, mut all_proxy) = (Vec::new(), Vec::new());
    for kind in Kind::ALL {
        let d = samples.remove(&(kind, Route::Direct)).unwrap_or_default();
        let p = samples.remove(&(kind, Route::Proxy)).unwrap_or_default();
        rows.push(row(kind.name(), &d, &p));
        all_direct.extend(d);
        all_proxy.extend(p);
    }
    rows.push(row("all kinds", &all_direct, &all_proxy));
    let count = count1 - count0;
    let mean = if count > 0.0 {
        (sum1 - sum0) * 1e3 / count
    } else {
        0.0
    };
    Ok((rows, mean, count))
}

/// Phase 2: throughput at `concurrency`, slices alternating between the routes.
async fn throughput(
    bench: &Bench,
    device: &Device,
    config: &Config,
) -> Result<Vec<ThroughputRow>, ScaleError> {
    let mut workers: BTreeMap<Route, Vec<Worker>> = BTreeMap::new();
    for route in [Route::Direct, Route::Proxy] {
        for i in 0..config.concurrency {
            let worker = bench.worker(device, route, i).await?;
            for kind in Kind::ALL {
                worker.run(kind).await?;
            }
            workers.entry(route).or_default().push(worker);
        }
    }
    let mut totals: BTreeMap<Route, (usize, Duration, Vec<Duration>)> = BTreeMap::new();
    for slice in 0..config.slices * 2 {
        let route = if slice % 2 == 0 {
            Route::Direct
        } else {
            Route::Proxy
        };
        let deadline = Instant::now() + Duration::from_secs(config.slice_seconds);
        let started = Instant::now();
        let tasks = workers
            .get(&route)
            .map(Vec::as_slice)
            .unwrap_or_default()
            .iter()
            .enumerate()
            .map(|(i, worker)| async move {
                let mut samples = Vec::new();
                let mut k = i;
                while Instant::now() < deadline {
                    samples.push(worker.run(Kind::ALL[k % Kind::ALL.len()]).await?);
                    k += 1;
                }
                Ok::<_, ScaleError>(samples)
            });
        let results = futures::future::join_all(tasks).await;
        let took = started.elapsed();
        let entry = totals.entry(route).or_default();
        entry.1 += took;
        for result in results {
            let samples = result?;
            entry.0 += samples.len();
            entry.2.extend(samples);
        }
    }
    Ok(totals
        .into_iter()
        .map(|(route, (requests, seconds, samples))| ThroughputRow {
            route,
            concurrency: config.concurrency,
            requests,
            seconds: seconds.as_secs_f64(),
            per_second: requests as f64 / seconds.as_secs_f64().max(f64::EPSILON),
            latency: stats::summarize(&samples),
        })
        .collect())
}

/// Opens `n` proxied watches on `endpoint` (at most 32 opening at once); each is read until it
/// closes or `deadline`, in its own task, which reports when it closed.
async fn open_watches(
    endpoint: &Endpoint,
    n: usize,
    deadline: tokio::time::Instant,
) -> Result<Vec<tokio::task::JoinHandle<Option<Instant>>>, ScaleError> {
    let path = watch_path(WATCH_NS);
    let opened = futures::stream::iter(0..n)
        .map(|_| endpoint.open(Method::GET, &path, None, Bytes::new()))
        .buffer_unordered(32)
        .collect::<Vec<_>>()
        .await;
    let mut handles = Vec::with_capacity(n);
    for response in opened {
        let response = response?;
        handles.push(tokio::spawn(until_closed(response, deadline)));
    }
    Ok(handles)
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, Iterator::count)
}

/// Phase 3: RSS with proxied watches open, in steps.
async fn memory(bench: &Bench, watches: usize) -> Result<Memory, ScaleError> {
    let device = bench.login().await?;
    let endpoint = bench.proxy_endpoint(&device);
    // The session's proxy token, a first connection and stream: out of the baseline.
    let warm = open_watches(
        &endpoint,
        4,
        tokio::time::Instant::now() + Duration::from_secs(600),
    )
    .await?;
    for handle in &warm {
        handle.abort();
    }
    let base = bench.settled_rss(Duration::from_secs(2)).await?;
    let mut steps = vec![MemoryStep {
        open: 0,
        active_streams: bench.metric("tka_proxy_active_streams").await?,
        rss_kib: base,
    }];
    let far = tokio::time::Instant::now() + Duration::from_secs(900);
    let mut handles = Vec::new();
    let started = Instant::now();
    let mut open_seconds = 0.0;
    for target in [watches / 4, watches / 2, watches] {
        if target <= handles.len() {
            continue;
        }
        let t = Instant::now();
        handles.extend(open_watches(&endpoint, target - handles.len(), far).await?);
        open_seconds += t.elapsed().as_secs_f64();
        let rss = bench.settled_rss(Duration::from_secs(2)).await?;
        steps.push(MemoryStep {
            open: handles.len(),
            active_streams: bench.metric("tka_proxy_active_streams").await?,
            rss_kib: rss,
        });
        eprintln!(
            "proxy: {} watches open after {:.1} s, RSS {rss} KiB",
            handles.len(),
            started.elapsed().as_secs_f64()
        );
    }
    let fds_open = open_fds(bench.server.pid);
    for handle in &handles {
        handle.abort();
    }
    let after_close_kib = bench.settled_rss(Duration::from_secs(3)).await?;
    let last = steps.last().map_or(base, |s| s.rss_kib);
    Ok(Memory {
        per_stream_kib: (last as f64 - base as f64) / watches.max(1) as f64,
        steps,
        after_close_kib,
        fds_open,
        open_seconds,
    })
}

/// Phase 4: logout with proxied watches open.
async fn logout(bench: &Bench, rounds: usize, per_round: usize) -> Result<Logout, ScaleError> {
    let mut closed = Vec::new();
    let mut calls = Vec::new();
    let mut not_closed = 0;
    for _ in 0..rounds {
        let device = bench.login().await?;
        let endpoint = bench.proxy_endpoint(&device);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        let handles = open_watches(&endpoint, per_round, deadline).await?;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let t0 = Instant::now();
        calls.push(tka_logout(&bench.server, &device.user).await?);
        for handle in handles {
            match handle.await {
                Ok(Some(at)) => closed.push(at.duration_since(t0)),
                Ok(None) => not_closed += 1,
                Err(e) => return Err(ScaleError::new(format!("a watch reader failed: {e}"))),
            }
        }
    }
    Ok(Logout {
        closed: stats::summarize(&closed),
        logout_call: stats::summarize(&calls),
        not_closed,
        closed_ms: closed.iter().copied().map(stats::ms).collect(),
    })
}

/// Runs every phase.
pub async fn run(config: Config) -> Result<Report, ScaleError> {
    let started = jiff::Timestamp::now().to_string();
    let mut load = vec![("start".to_owned(), loadavg())];
    eprintln!("proxy: starting the control plane and tka-server");
    let bench = Bench::start(&config).await?;
    let device = bench.login().await?;
    eprintln!("proxy: sequential mix, {} rounds", config.rounds);
    let (latency, upstream_mean_ms, upstream_count) =
        latency(&bench, &device, config.rounds).await?;
    load.push(("after latency".to_owned(), loadavg()));
    eprintln!(
        "proxy: throughput, {} clients, {} × {} s per route",
        config.concurrency, config.slices, config.slice_seconds
    );
    let throughput = throughput(&bench, &device, &config).await?;
    load.push(("after throughput".to_owned(), loadavg()));
    let per = |route: Route| {
        throughput
            .iter()
            .find(|r| r.route == route)
            .map_or(0.0, |r| r.per_second)
    };
    let throughput_ratio = per(Route::Proxy) / per(Route::Direct).max(f64::EPSILON);
    eprintln!("proxy: memory, {} watches", config.watches);
    let memory = memory(&bench, config.watches).await?;
    load.push(("after memory".to_owned(), loadavg()));
    eprintln!(
        "proxy: logout, {} rounds of {} watches",
        config.logout_rounds, config.logout_watches
    );
    let logout = logout(&bench, config.logout_rounds, config.logout_watches).await?;
    load.push(("after logout".to_owned(), loadavg()));
    Ok(Report {
        started,
        config,
        loadavg: load,
        latency,
        upstream_mean_ms,
        upstream_count,
        throughput,
        throughput_ratio,
        memory,
        logout,
    })
}
