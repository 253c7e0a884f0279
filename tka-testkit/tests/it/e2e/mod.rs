//! End-to-end tests against the real components that `tka-testkit/testenv/build.sh` builds
//! (etcd, kube-apiserver, kube-controller-manager, kubectl, fake-upstream, tailscaled and the
//! tailnet harness). Without `TKA_TESTENV_BIN` they skip with a printed reason, unless
//! `TKA_REQUIRE_TESTENV=1` (set by `make test`), when they fail. They run one at a time
//! (`tka_testkit::testenv::exclusive`).

mod crds;
mod deploy;
mod kubectl;
mod localapi;
mod suite;
mod upgrades;

use std::path::{Path, PathBuf};
use std::time::Duration;

/// The kubectl binaries the credential tests use: the one built with the API server, and the
/// machine's own (a client from another build), when it exists.
pub(crate) fn kubectls(env: &tka_testkit::testenv::KubeEnv) -> Vec<PathBuf> {
    kubectls_besides(env.kubectl())
}

/// `built` and the machine's own kubectl, when it exists.
pub(crate) fn kubectls_besides(built: PathBuf) -> Vec<PathBuf> {
    let mut all = vec![built];
    let system = PathBuf::from("/usr/bin/kubectl");
    if system.exists() {
        all.push(system);
    } else {
        eprintln!("/usr/bin/kubectl is not installed; using only the built kubectl");
    }
    all
}

/// What kubectl did.
#[derive(Debug)]
pub(crate) struct Run {
    pub(crate) ok: bool,
    pub(crate) stdout: String,
    pub(crate) stderr: String,
}

/// Runs `kubectl --kubeconfig KUBECONFIG ARGS…` (bounded by 60 s) with `stdin`.
pub(crate) async fn kubectl(
    kubectl: &Path,
    kubeconfig: &Path,
    args: &[&str],
    stdin: Option<&str>,
) -> Run {
    use tokio::io::AsyncWriteExt;
    let mut child = tokio::process::Command::new(kubectl)
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .arg("--request-timeout=20s")
        .args(args)
        .env_remove("KUBECONFIG")
        .env("HOME", std::env::temp_dir())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("running {}: {e}", kubectl.display()));
    let mut input = child.stdin.take().unwrap();
    if let Some(text) = stdin {
        input.write_all(text.as_bytes()).await.unwrap();
    }
    drop(input);
    let out = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("kubectl {args:?} took over 60 s"))
        .unwrap();
    Run {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Polls `check` every 250 ms until it returns true or `limit` passes; returns whether it did.
pub(crate) async fn eventually<F, Fut>(limit: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if check().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
