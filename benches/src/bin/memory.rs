//! What the server holds in memory per session, measured as resident-set growth for 10,000
//! sessions (`--sessions N` to change), one structure at a time:
//! - the per-device rate limiter (one cell per device that called);
//! - the reconciler's "validated" map (session UID → time);
//! - one reconcile pass's listing: N `Session` objects and N ServiceAccounts, deserialized from
//!   the JSON an API server sends (held only during the pass).
//!
//! First, before any of that, the idle HTTP side of the server: the real `Server` (API and ops
//! listeners on 127.0.0.1, `api_router` with the fixture mappings) on a 2-worker runtime,
//! idling for a second.
//!
//! RSS is read from `/proc/self/status`; allocator slack is included, which is what the
//! operating system charges. Usage: `memory [--sessions N]` (N at most 1,000,000).

use std::collections::HashMap;
use std::io::Write as _;
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::ServiceAccount;
use serde_json::json;
use tka_benches::rss::rss_kib;
use tka_benches::server;
use tka_core::NodeId;
use tka_core::kubernetes::Session;
use tka_server::ratelimit::{DeviceRateLimiter, RateLimitConfig};
use tka_server::{ListenMode, Metrics, Server, ops_router};
use tka_testkit::FakeTailnet;
use tokio_util::sync::CancellationToken;

fn sessions_arg() -> usize {
    let mut it = std::env::args().skip(1);
    let mut n = 10_000;
    while let Some(flag) = it.next() {
        if flag == "--sessions"
            && let Some(v) = it.next().and_then(|v| v.parse().ok())
        {
            n = v;
        }
    }
    usize::min(n, 1_000_000)
}

fn uid(i: usize) -> String {
    format!("3f2c9a1e-{:04x}-4b7d-9c1a-{i:012x}", i % 0xffff)
}

fn session_json(i: usize) -> serde_json::Value {
    json!({
        "apiVersion": "tka.dev/v1alpha1",
        "kind": "Session",
        "metadata": {
            "name": format!("tka-alice-laptop-{i:06}"),
            "uid": uid(i),
            "resourceVersion": format!("{}", 1_000_000 + i),
            "generation": 1,
            "creationTimestamp": "2026-03-01T12:00:00Z",
            "labels": {"app.kubernetes.io/managed-by": "tka", "tka.dev/node": format!("n{i:012}CNTRL")},
            "finalizers": ["tka.dev/cleanup"]
        },
        "spec": {
            "identity": {
                "nodeId": format!("n{i:012}CNTRL"),
                "nodeName": format!("alice-laptop-{i}.example.ts.net"),
                "userId": 101,
                "loginName": "alice@example.com",
                "addresses": ["100.64.0.10", "fd7a:115c:a1e0::a"]
            },
            "role": "sre",
            "clusterRoles": ["view"],
            "namespaced": [
                {"clusterRole": "edit", "namespace": "team-a"},
                {"clusterRole": "edit", "namespace": "team-b"}
            ],
            "revision": "1",
            "revisedAt": "2026-03-01T12:00:00Z",
            "expiresAt": "2026-03-01T13:30:00Z"
        },
        "status": {
            "phase": "Active",
            "revision": "1",
            "serviceAccount": {"namespace": "tka-system", "name": format!("tka-alice-laptop-{i:06}"), "uid": uid(i + 1_000_000)},
            "bindings": [
                {"kind": "ClusterRoleBinding", "name": format!("tka-alice-laptop-{i:06}-view"), "clusterRole": "view", "uid": uid(i + 2_000_000)},
                {"kind": "RoleBinding", "namespace": "team-a", "name": format!("tka-alice-laptop-{i:06}-edit"), "clusterRole": "edit", "uid": uid(i + 3_000_000)},
                {"kind": "RoleBinding", "namespace": "team-b", "name": format!("tka-alice-laptop-{i:06}-edit"), "clusterRole": "edit", "uid": uid(i + 4_000_000)}
            ],
            "lastTokenExpiresAt": "2026-03-01T12:15:00Z",
            "lastTokenId": format!("jti-{i}")
        }
    })
}

fn service_account_json(i: usize) -> serde_json::Value {
    json!({
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": {
            "name": format!("tka-alice-laptop-{i:06}"),
            "namespace": "tka-system",
            "uid": uid(i + 1_000_000),
            "resourceVersion": format!("{}", 2_000_000 + i),
            "creationTimestamp": "2026-03-01T12:00:00Z",
            "labels": {"app.kubernetes.io/managed-by": "tka"},
            "ownerReferences": [{
                "apiVersion": "tka.dev/v1alpha1", "kind": "Session",
                "name": format!("tka-alice-laptop-{i:06}"), "uid": uid(i),
                "controller": true, "blockOwnerDeletion": true
            }]
        }
    })
}

/// Starts the real server on loopback, lets it idle for a second, and returns RSS while it idles.
fn idle_server() -> Result<(u64, u64), String> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    runtime.block_on(async {
        let metrics = Arc::new(Metrics::new(None));
        let state = server::api_state(Arc::new(FakeTailnet::new()), metrics.clone())
            .map_err(|e| e.to_string())?;
        let shutdown = CancellationToken::new();
        let loopback = SocketAddr::from(([127, 0, 0, 1], 0));
        let bound = Server::bind(
            loopback,
            &ListenMode::LoopbackOnly,
            loopback,
            state,
            ops_router(Vec::new(), metrics),
            shutdown.clone(),
            Duration::from_secs(1),
        )
        .await
        .map_err(|e| e.to_string())?;
        let task = tokio::spawn(bound.run());
        tokio::time::sleep(Duration::from_secs(1)).await;
        let rss = rss_kib().ok_or("no /proc/self/status")?;
        shutdown.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
        Ok(rss)
    })
}

fn main() -> std::process::ExitCode {
    let n = sessions_arg();
    let before_server = rss_kib().map(|r| r.0).unwrap_or(0);
    let idle = match idle_server() {
        Ok(rss) => rss,
        Err(e) => {
            eprintln!("memory: idle server: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let mut rows: Vec<(String, i64)> = Vec::new();
    let mut last = rss_kib().map(|r| r.0).unwrap_or(0);
    let baseline = last;
    let mut step = |name: &str, rows: &mut Vec<(String, i64)>| {
        let now = rss_kib().map(|r| r.0).unwrap_or(0);
        rows.push((
            name.to_owned(),
            i64::try_from(now).unwrap_or(0) - i64::try_from(last).unwrap_or(0),
        ));
        last = now;
    };

    let (Some(per_minute), Some(burst)) = (NonZeroU32::new(20), NonZeroU32::new(10)) else {
        return std::process::ExitCode::FAILURE;
    };
    let limiter = DeviceRateLimiter::new(RateLimitConfig { per_minute, burst });
    let mut nodes = Vec::with_capacity(n);
    for i in 0..n {
        let Ok(node) = NodeId::new(format!("n{i:012}CNTRL")) else {
            return std::process::ExitCode::FAILURE;
        };
        nodes.push(node);
    }
    step("node IDs (input, not server state)", &mut rows);
    let mut allowed = 0usize;
    for node in &nodes {
        allowed += usize::from(limiter.check(node).is_ok());
    }
    step("rate limiter, one cell per device", &mut rows);

    let now = Timestamp::UNIX_EPOCH;
    let validated: HashMap<String, Timestamp> = (0..n).map(|i| (uid(i), now)).collect();
    step("reconciler validated map (uid → time)", &mut rows);

    let mut sessions = Vec::with_capacity(n);
    for i in 0..n {
        let Ok(bytes) = serde_json::to_vec(&session_json(i)) else {
            return std::process::ExitCode::FAILURE;
        };
        match serde_json::from_slice::<Session>(&bytes) {
            Ok(s) => sessions.push(s),
            Err(e) => {
                eprintln!("memory: session fixture does not parse: {e}");
                return std::process::ExitCode::FAILURE;
            }
        }
    }
    step("listed Session objects (during a pass)", &mut rows);
    let mut accounts = Vec::with_capacity(n);
    for i in 0..n {
        let Ok(bytes) = serde_json::to_vec(&service_account_json(i)) else {
            return std::process::ExitCode::FAILURE;
        };
        match serde_json::from_slice::<ServiceAccount>(&bytes) {
            Ok(s) => accounts.push(s),
            Err(e) => {
                eprintln!("memory: service account fixture does not parse: {e}");
                return std::process::ExitCode::FAILURE;
            }
        }
    }
    step("listed ServiceAccounts (during a pass)", &mut rows);

    let mut out = std::io::stdout().lock();
    let written = (|| -> std::io::Result<()> {
        writeln!(
            out,
            "idle server (API + ops listeners, 2 workers): RSS {} KiB while idle (process before it: {before_server} KiB)",
            idle.0
        )?;
        writeln!(
            out,
            "sessions: {n}; baseline RSS {baseline} KiB (runtime shut down)"
        )?;
        for (name, kib) in &rows {
            writeln!(
                out,
                "{name}: +{kib} KiB ({:.0} bytes per session)",
                (*kib as f64) * 1024.0 / (n.max(1) as f64)
            )?;
        }
        let (rss, hwm) = rss_kib().unwrap_or_default();
        writeln!(out, "final RSS {rss} KiB, peak {hwm} KiB")?;
        // Keeps every structure alive until here, so each step's growth stays counted.
        writeln!(
            out,
            "(held: {allowed} devices allowed, {} validated, {} sessions, {} accounts)",
            validated.len(),
            sessions.len(),
            accounts.len()
        )
    })();
    if written.is_err() {
        return std::process::ExitCode::FAILURE;
    }
    std::process::ExitCode::SUCCESS
}
