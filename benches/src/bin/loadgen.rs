//! The server's own cost per login: drives the real `api_router` in process with
//! `tower::ServiceExt::oneshot` (no sockets), whois answered by an in-process `FakeTailnet` and
//! credentials by the instant `FastIssuer`, on a 2-worker tokio runtime.
//!
//! Two phases, each bounded in requests and in seconds:
//! 1. latency: one login at a time; p50/p90/p99/max of a whole request (guard, whois parse,
//!    rate limit, policy, issue, JSON response, audit record, metrics);
//! 2. throughput: `--concurrency` logins in flight; logins/s.
//!
//! Logs (including the audit records) go to stderr as JSON lines, as in production; run with
//! `2>/dev/null`. Usage:
//! `loadgen [--requests N] [--seconds S] [--concurrency C] [--devices D] [--no-logs]`.
//! It measures only; it must not run unbounded or talk to anything outside the process.

use std::io::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use http::Request;
use http_body_util::BodyExt as _;
use tka_benches::server::{self, HOST};
use tka_benches::{FixtureError, fixtures, or_exit};
use tka_core::identity::DEFAULT_CAPABILITY;
use tka_server::cli::LogFormat;
use tka_server::{Metrics, Peer, api_router};
use tka_testkit::{FakeTailnet, PeerSpec};
use tower::ServiceExt as _;

const BODY: &str = r#"{"ttl":"90m"}"#;

#[derive(Debug, Clone, Copy)]
struct Args {
    requests: usize,
    seconds: u64,
    concurrency: usize,
    devices: usize,
    logs: bool,
}

fn args() -> Result<Args, String> {
    let mut out = Args {
        requests: 50_000,
        seconds: 20,
        concurrency: 32,
        devices: 1_000,
        logs: true,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        if flag == "--no-logs" {
            out.logs = false;
            continue;
        }
        let value = it.next().ok_or(format!("{flag} needs a value"))?;
        let n: usize = value.parse().map_err(|e| format!("{flag} {value}: {e}"))?;
        match flag.as_str() {
            "--requests" => out.requests = n.clamp(1, 10_000_000),
            "--seconds" => out.seconds = (n as u64).clamp(1, 600),
            "--concurrency" => out.concurrency = n.clamp(1, 4_096),
            "--devices" => out.devices = n.clamp(1, 100_000),
            _ => return Err(format!("unknown flag {flag}")),
        }
    }
    Ok(out)
}

/// The router with its fakes, and the peers whois knows.
fn setup(devices: usize) -> Result<(Router, Vec<Peer>, FakeTailnet), FixtureError> {
    let tailnet = FakeTailnet::new();
    let mut peers = Vec::with_capacity(devices);
    for i in 0..devices {
        let mut spec =
            PeerSpec::user("alice@example.com", &format!("alice-laptop-{i}")).groups(["group:sre"]);
        for value in fixtures::capability_values() {
            spec = spec.capability(DEFAULT_CAPABILITY, value);
        }
        let peer = tailnet.add(spec);
        let port = u16::try_from(10_000 + i).map_err(|e| FixtureError::new("devices", e))?;
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        tailnet
            .bind_connection(addr, &peer.stable_id)
            .map_err(|e| FixtureError::new("bind", e))?;
        peers.push(Peer::direct(addr));
    }
    let state = server::api_state(Arc::new(tailnet.clone()), Arc::new(Metrics::new(None)))?;
    Ok((api_router(state), peers, tailnet))
}

/// One login; its latency, or why it failed.
async fn login(router: &Router, peer: &Peer) -> Result<Duration, String> {
    let started = Instant::now();
    let mut request = Request::post("/api/v1/login")
        .header("host", HOST)
        .header("content-type", "application/json")
        .body(Body::from(BODY))
        .map_err(|e| e.to_string())?;
    request.extensions_mut().insert(ConnectInfo(peer.clone()));
    let response = router
        .clone()
        .oneshot(request)
        .await
        .map_err(|e| e.to_string())?;
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    let elapsed = started.elapsed();
    if status != http::StatusCode::OK {
        return Err(format!("{status}: {}", String::from_utf8_lossy(&body)));
    }
    Ok(elapsed)
}

struct Phase {
    latencies: Vec<Duration>,
    wall: Duration,
    errors: usize,
    first_error: Option<String>,
}

/// Runs up to `requests` logins with `concurrency` in flight, for at most `limit`.
async fn phase(
    router: &Router,
    peers: &Arc<Vec<Peer>>,
    requests: usize,
    concurrency: usize,
    limit: Duration,
) -> Phase {
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let deadline = started + limit;
    let mut tasks = Vec::with_capacity(concurrency);
    for _ in 0..concurrency {
        let router = router.clone();
        let peers = peers.clone();
        let next = next.clone();
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut errors = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= requests || Instant::now() >= deadline {
                    break;
                }
                let Some(peer) = peers.get(i % peers.len()) else {
                    break;
                };
                match login(&router, peer).await {
                    Ok(d) => latencies.push(d),
                    Err(e) => errors.push(e),
                }
            }
            (latencies, errors)
        }));
    }
    let mut out = Phase {
        latencies: Vec::with_capacity(requests),
        wall: Duration::ZERO,
        errors: 0,
        first_error: None,
    };
    for task in tasks {
        match task.await {
            Ok((latencies, errors)) => {
                out.latencies.extend(latencies);
                out.errors += errors.len();
                if out.first_error.is_none() {
                    out.first_error = errors.into_iter().next();
                }
            }
            Err(e) => {
                out.errors += 1;
                out.first_error.get_or_insert(e.to_string());
            }
        }
    }
    out.wall = started.elapsed();
    out.latencies.sort_unstable();
    out
}

fn quantile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((sorted.len() as f64) * q).ceil() as usize;
    sorted
        .get(rank.saturating_sub(1).min(sorted.len() - 1))
        .copied()
        .unwrap_or_default()
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn report(out: &mut impl std::io::Write, name: &str, p: &Phase) -> std::io::Result<()> {
    let n = p.latencies.len();
    let rate = n as f64 / p.wall.as_secs_f64().max(1e-9);
    writeln!(
        out,
        "{name}: {n} logins ok, {} failed, in {:.2} s = {rate:.0} logins/s; latency p50 {:.1} µs, p90 {:.1} µs, p99 {:.1} µs, max {:.1} µs",
        p.errors,
        p.wall.as_secs_f64(),
        us(quantile(&p.latencies, 0.50)),
        us(quantile(&p.latencies, 0.90)),
        us(quantile(&p.latencies, 0.99)),
        us(p.latencies.last().copied().unwrap_or_default()),
    )?;
    if let Some(e) = &p.first_error {
        writeln!(out, "{name}: first failure: {e}")?;
    }
    Ok(())
}

fn main() -> std::process::ExitCode {
    let args = match args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("loadgen: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    if args.logs
        && let Err(e) = tka_server::logging::init(LogFormat::Json, "info")
    {
        eprintln!("loadgen: logging: {e}");
        return std::process::ExitCode::from(2);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("loadgen: runtime: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    let (router, peers, tailnet) = or_exit(setup(args.devices));
    let peers = Arc::new(peers);
    let limit = Duration::from_secs(args.seconds);
    let result = runtime.block_on(async {
        // Warm-up: fill the limiter's cells and the allocator's pools.
        let warm = phase(&router, &peers, args.devices.max(1_000), 1, limit).await;
        let latency = phase(&router, &peers, args.requests, 1, limit).await;
        let throughput = phase(&router, &peers, args.requests, args.concurrency, limit).await;
        (warm, latency, throughput)
    });
    let (warm, latency, throughput) = result;

    // What the fake tailscaled costs per whois (building the JSON answer): part of the numbers
    // above but not of a real server's work.
    let fake_rounds = 20_000usize;
    let addr = peers
        .first()
        .map(|p| p.remote.to_string())
        .unwrap_or_default();
    let started = Instant::now();
    let mut bytes = 0usize;
    for _ in 0..fake_rounds {
        bytes += tailnet.answer_whois(Some(&addr), None).body.len();
    }
    let fake_cost = started.elapsed() / u32::try_from(fake_rounds).unwrap_or(u32::MAX);

    let mut out = std::io::stdout().lock();
    let written = (|| -> std::io::Result<()> {
        writeln!(
            out,
            "setup: {} devices, 5 capability values each, 20 GrantMappings, logs {}, 2 tokio workers, token {} bytes",
            args.devices,
            if args.logs { "JSON to stderr" } else { "off" },
            fixtures::TOKEN_BYTES,
        )?;
        report(&mut out, "warm-up", &warm)?;
        report(&mut out, "latency (1 in flight)", &latency)?;
        report(
            &mut out,
            &format!("throughput ({} in flight)", args.concurrency),
            &throughput,
        )?;
        writeln!(
            out,
            "fake tailscaled: {:.1} µs per whois answer built ({} bytes each), included above",
            us(fake_cost),
            bytes / fake_rounds.max(1),
        )
    })();
    if written.is_err() || latency.errors + throughput.errors + warm.errors > 0 {
        return std::process::ExitCode::FAILURE;
    }
    std::process::ExitCode::SUCCESS
}
