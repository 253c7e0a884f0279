//! The real-component test environment: etcd, kube-apiserver and kube-controller-manager
//! ([`KubeEnv`]), a tailnet of real tailscaled nodes ([`TailnetEnv`]) and a fake API server for
//! exec and port-forward upgrades ([`FakeUpstream`]), started from the binaries that
//! `tka-testkit/testenv/build.sh` builds, on free loopback ports; real kubectl's streams
//! ([`kubectl_exec`], [`KubectlPortForward`]); and a stage where one process speaks for many
//! devices ([`devices`]).
//!
//! It owns starting, readiness (every wait has a timeout) and stopping of those processes and
//! their temporary directories. It must not reach beyond loopback and must not leave processes
//! behind: every child is its own process group, killed on drop, and a watchdog process kills
//! them when the test process dies without dropping (see [`Watchdog`]).

pub mod devices;
mod fake_upstream;
mod http;
mod kube_env;
mod kubectl_stream;
mod server_process;
mod suite;
mod tailnet_env;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

pub use fake_upstream::{FakeUpstream, Finished, RecordedRequest, UpstreamScheme};
pub use kube_env::KubeEnv;
pub use kubectl_stream::{KubectlOutput, KubectlPortForward, StreamProtocol, kubectl_exec};
pub use server_process::{ImageRoot, ServerProcess, ServerProcessBuilder, TRACE_FILTER};
pub use suite::RealClusterBackend;
pub use tailnet_env::{TailnetEnv, TailnetGrant, TailnetNode, TailnetNodeSpec};

/// The variable naming the directory of the built components (set by `build.sh`).
pub const BIN_ENV: &str = "TKA_TESTENV_BIN";
/// When `1`, a test that cannot find the components fails instead of skipping (`make test`).
pub const REQUIRE_ENV: &str = "TKA_REQUIRE_TESTENV";

/// The `viewer` GrantMapping most tests grant: ClusterRole `view`, a default TTL of 1 h, at
/// most 8 h.
pub fn viewer_mapping() -> tka_core::kubernetes::GrantMapping {
    use tka_core::GrantMappingSpec;
    use tka_core::kubernetes::GrantMapping;
    let spec = GrantMappingSpec {
        cluster_roles: vec!["view".to_owned()],
        default_ttl: Some("1h".to_owned()),
        max_ttl: Some("8h".to_owned()),
        ..GrantMappingSpec::default()
    };
    GrantMapping::new("viewer", spec)
}

/// What can go wrong while starting the environment.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TestEnvError {
    /// The binaries are not where `TKA_TESTENV_BIN` says.
    #[error(
        "the test components are missing ({0}); run `eval \"$(tka-testkit/testenv/build.sh)\"` or `make testenv`"
    )]
    Missing(String),
    /// A file or process operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The cause.
        source: std::io::Error,
    },
    /// A component did not become ready in time or exited.
    #[error("{component} did not become ready: {detail}")]
    NotReady {
        /// Which component.
        component: String,
        /// Why, with the end of its log when there is one.
        detail: String,
    },
    /// Generating the PKI failed.
    #[error("could not generate the test PKI: {0}")]
    Pki(#[from] rcgen::Error),
    /// The kube client could not be built.
    #[error("could not build the kube client: {0}")]
    Kube(String),
    /// The tailnet harness answered something unexpected.
    #[error("tailnet harness: {0}")]
    Harness(String),
    /// The fake upstream API server recorded something unreadable.
    #[error("fake-upstream: {0}")]
    FakeUpstream(String),
}

pub(crate) fn io_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> TestEnvError {
    let what = what.into();
    move |source| TestEnvError::Io { what, source }
}

/// The directory of the built components, if `TKA_TESTENV_BIN` names one with every binary.
pub fn bin_dir() -> Result<PathBuf, TestEnvError> {
    let dir = std::env::var_os(BIN_ENV)
        .map(PathBuf::from)
        .ok_or_else(|| TestEnvError::Missing(format!("{BIN_ENV} is not set")))?;
    for name in [
        "etcd",
        "kube-apiserver",
        "kube-controller-manager",
        "kubectl",
        "fake-upstream",
        "tailnet-harness",
        "tailscaled",
        "tailscale",
    ] {
        if !dir.join(name).is_file() {
            return Err(TestEnvError::Missing(format!(
                "{} does not exist",
                dir.join(name).display()
            )));
        }
    }
    Ok(dir)
}

/// The components' directory for a test, or `None` with a printed reason when the test should
/// skip. Panics (fails the test) when `TKA_REQUIRE_TESTENV=1` and they are missing.
pub fn bin_dir_or_skip(test: &str) -> Option<PathBuf> {
    match bin_dir() {
        Ok(dir) => Some(dir),
        Err(e) if std::env::var(REQUIRE_ENV).as_deref() == Ok("1") => {
            // The caller is a test; failing loudly is the point under `make test`.
            #[allow(clippy::panic)]
            {
                panic!("{test}: {REQUIRE_ENV}=1 but {e}")
            }
        }
        Err(e) => {
            eprintln!("skipping {test}: {e}");
            None
        }
    }
}

/// Serializes the end-to-end tests in one process: each starts several heavy processes, and the
/// machine running them may have two cores. Hold the permit for the whole test.
pub async fn exclusive() -> tokio::sync::SemaphorePermit<'static> {
    static HEAVY: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(1);
    // The semaphore is never closed, so acquiring cannot fail; a closed one would mean no limit.
    loop {
        if let Ok(permit) = HEAVY.acquire().await {
            return permit;
        }
    }
}

/// A free TCP port on 127.0.0.1 (bound, read and released; the caller binds it soon after).
pub(crate) fn free_port() -> Result<u16, TestEnvError> {
    let listener =
        std::net::TcpListener::bind(("127.0.0.1", 0)).map_err(io_err("binding a free port"))?;
    let port = listener
        .local_addr()
        .map_err(io_err("reading a free port"))?
        .port();
    Ok(port)
}

/// Kills the registered process groups when its stdin closes: when dropped, or when the test
/// process dies in any way (the kernel closes the pipe). A `sh` loop; it runs in its own process
/// group so that a terminal's Ctrl-C reaches it only through the closed pipe.
#[derive(Debug)]
pub(crate) struct Watchdog {
    child: std::process::Child,
    stdin: Option<std::process::ChildStdin>,
}

impl Watchdog {
    pub(crate) fn start() -> Result<Self, TestEnvError> {
        use std::os::unix::process::CommandExt;
        let mut child = std::process::Command::new("sh")
            .arg("-c")
            .arg(
                "pids=''; while read -r p; do pids=\"$pids -$p\"; done; \
                 if [ -n \"$pids\" ]; then kill -KILL $pids 2>/dev/null; fi; exit 0",
            )
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .map_err(io_err("starting the watchdog (sh)"))?;
        let stdin = child.stdin.take();
        Ok(Self { child, stdin })
    }

    /// Registers a process group (a child spawned with `process_group(0)`: its pid).
    pub(crate) fn watch(&mut self, pid: Option<u32>) {
        if let (Some(stdin), Some(pid)) = (self.stdin.as_mut(), pid) {
            // A failed write means the watchdog is gone; the children still die on drop.
            let _ = writeln!(stdin, "{pid}");
            let _ = stdin.flush();
        }
    }

    /// Kills every registered group now and waits (bounded) for the watchdog to finish.
    pub(crate) fn fire(&mut self) {
        self.stdin.take();
        wait_std(&mut self.child, Duration::from_secs(5));
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.fire();
    }
}

fn wait_std(child: &mut std::process::Child, limit: Duration) {
    let deadline = std::time::Instant::now() + limit;
    while std::time::Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// Waits (bounded, blocking) for a tokio child to exit; kills it when the time is up.
pub(crate) fn wait_tokio_child(child: &mut tokio::process::Child, limit: Duration) {
    let deadline = std::time::Instant::now() + limit;
    while std::time::Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.start_kill();
}

/// The last `lines` lines of a log file, for error messages.
pub(crate) fn log_tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    let start = all.len().saturating_sub(lines);
    format!(
        "{} (end of {}):\n{}",
        "log",
        path.display(),
        all[start..].join("\n")
    )
}
