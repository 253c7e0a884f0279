//! Stands in for a cluster and tailscaled so the real `tka-server` binary can start and idle on
//! this machine (for its idle RSS): serves a `FakeCluster` over HTTP on 127.0.0.1 and a
//! `FakeTailnet` LocalAPI on a Unix socket, writes `DIR/kubeconfig` and `DIR/socket` (the
//! socket's path), then exits after `SECONDS` (at most 600). Usage: `fakes DIR SECONDS`.
//! It only stands in; it must not measure anything itself or listen beyond loopback.

use std::time::Duration;

use tka_testkit::cluster::FakeCluster;
use tka_testkit::{FakeTailnet, PeerSpec};

async fn run(dir: std::path::PathBuf, seconds: u64) -> Result<(), String> {
    let cluster = FakeCluster::new();
    let served = cluster.serve_tcp().await.map_err(|e| e.to_string())?;
    let tailnet = FakeTailnet::new();
    let me = tailnet.add(PeerSpec::tagged(["tag:k8s-operator"], "tka-prod"));
    tailnet.set_self(&me.stable_id).map_err(|e| e.to_string())?;
    let localapi = tailnet.serve().await.map_err(|e| e.to_string())?;
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    std::fs::write(dir.join("kubeconfig"), served.kubeconfig_yaml()).map_err(|e| e.to_string())?;
    std::fs::write(
        dir.join("socket"),
        localapi.socket_path().display().to_string(),
    )
    .map_err(|e| e.to_string())?;
    tokio::time::sleep(Duration::from_secs(seconds.min(600))).await;
    drop(localapi);
    drop(served);
    Ok(())
}

fn main() -> std::process::ExitCode {
    let mut args = std::env::args().skip(1);
    let (Some(dir), Some(seconds)) = (args.next(), args.next().and_then(|s| s.parse().ok())) else {
        eprintln!("usage: fakes DIR SECONDS");
        return std::process::ExitCode::from(2);
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("fakes: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(dir.into(), seconds)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("fakes: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
