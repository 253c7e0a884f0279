//! The built `tka-server serve` binary, wired to a FakeCluster (through `--kubeconfig`) and a
//! fake tailscaled (through `--tailscale-socket`): it becomes ready only with every check
//! passing, serves a login that creates a Session, counts it in `/metrics`, holds the
//! reconciler Lease (its passes in `/metrics` too), and on SIGTERM exits cleanly and releases the Lease.

use std::io::Write as _;
use std::net::{SocketAddr, TcpListener};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use kube::Api;
use kube::api::PostParams;
use serde_json::json;
use tka_core::GrantMappingSpec;
use tka_core::kubernetes::GrantMapping;
use tka_testkit::cluster::{FakeCluster, ServedCluster};
use tka_testkit::tailnet::{FakeLocalApi, FakePeer, FakeTailnet, PeerSpec};
use tokio::net::TcpStream;

use crate::support::Client;

fn free_port(ip: &str) -> SocketAddr {
    TcpListener::bind((ip, 0)).unwrap().local_addr().unwrap()
}

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub(super) async fn get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let stream = TcpStream::connect(addr).await.ok()?;
    let mut client = Client::over(stream).await;
    client.set_host(&addr.to_string());
    let response = client.get(path).send().await;
    Some((response.status, response.text()))
}

/// Polls `probe` (bounded) until it returns `Some`.
pub(super) async fn eventually<T, F, Fut>(what: &str, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    for _ in 0..400 {
        if let Some(v) = probe().await {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("{what} did not happen");
}

/// What a server under test runs against: a FakeCluster served over TCP with GrantMapping `sre`
/// (`view` cluster-wide), a kubeconfig for it, and a fake tailscaled whose own node is `tka-prod`
/// (tagged `tag:tka`) and whose peer alice holds role `sre`.
pub(super) struct FakeWorld {
    pub(super) cluster: FakeCluster,
    pub(super) mappings: Api<GrantMapping>,
    pub(super) kubeconfig: std::path::PathBuf,
    pub(super) tailnet: FakeTailnet,
    pub(super) alice: FakePeer,
    pub(super) daemon: FakeLocalApi,
    _served: ServedCluster,
    _dir: tempfile::TempDir,
}

impl FakeWorld {
    pub(super) async fn new() -> Self {
        let cluster = FakeCluster::new();
        let served = cluster.serve_tcp().await.unwrap();
        let mappings = Api::<GrantMapping>::all(served.client().unwrap());
        mappings
            .create(
                &PostParams::default(),
                &GrantMapping::new(
                    "sre",
                    GrantMappingSpec {
                        cluster_roles: vec!["view".into()],
                        ..GrantMappingSpec::default()
                    },
                ),
            )
            .await
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let kubeconfig = dir.path().join("kubeconfig");
        std::fs::File::create(&kubeconfig)
            .unwrap()
            .write_all(served.kubeconfig_yaml().as_bytes())
            .unwrap();

        let tailnet = FakeTailnet::new();
        let alice = tailnet.add(
            PeerSpec::user("alice@example.com", "alice-laptop")
                .capability("tka.dev/cap/kubernetes", json!({"role": "sre"})),
        );
        let me = tailnet.add(PeerSpec::tagged(["tag:tka"], "tka-prod"));
        tailnet.set_self(&me.stable_id).unwrap();
        let daemon = tailnet.serve().await.unwrap();
        Self {
            cluster,
            mappings,
            kubeconfig,
            tailnet,
            alice,
            daemon,
            _served: served,
            _dir: dir,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_wires_the_kubernetes_backend_and_releases_the_lease_on_sigterm() {
    let world = FakeWorld::new().await;
    world
        .cluster
        .insert(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "team-a"}}))
        .unwrap();
    let FakeWorld {
        cluster,
        kubeconfig,
        tailnet,
        alice,
        daemon,
        ..
    } = &world;

    let api = free_port("127.0.0.1");
    // Ops on "the pod's address" (127.0.0.3 stands in); 127.0.0.1 is where tailnet traffic
    // arrives, which the server refuses for ops.
    let ops = free_port("127.0.0.3");
    let child = Command::new(env!("CARGO_BIN_EXE_tka-server"))
        .args(["serve", "--kubeconfig"])
        .arg(kubeconfig)
        .arg("--tailscale-socket")
        .arg(daemon.socket_path())
        .args([
            "--cluster-name",
            "prod",
            "--api-server-url",
            "https://10.0.0.1:6443",
            "--server-name",
            "tka-prod",
            "--listen",
            &api.to_string(),
            "--ops-listen",
            &ops.to_string(),
            "--log-format",
            "pretty",
        ])
        .env("POD_NAME", "tka-server-test-0")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut child = Killed(child);

    // Ready once tailscaled, the API server, the CRDs and the GrantMapping watch all answer.
    eventually("readiness", || async {
        get(ops, "/readyz")
            .await
            .filter(|(status, _)| *status == 200)
    })
    .await;

    // A login through the real issuer creates a Session in the cluster.
    let stream = TcpStream::connect(api).await.unwrap();
    tailnet
        .bind_connection(stream.local_addr().unwrap(), &alice.stable_id)
        .unwrap();
    let mut alice_client = Client::over(stream).await;
    let response = alice_client.login(r#"{"role":"sre"}"#).await;
    assert_eq!(response.status, 200, "{}", response.text());
    assert_eq!(cluster.objects("sessions").len(), 1);
    eventually("the session count", || async {
        get(ops, "/metrics")
            .await
            .filter(|(_, text)| text.contains("tka_active_sessions 1"))
    })
    .await;

    // The reconciler holds the Lease under the pod's name ...
    let holder = || {
        cluster
            .get_object("leases", Some("tka-system"), "tka-server")
            .and_then(|l| l["spec"]["holderIdentity"].as_str().map(str::to_owned))
    };
    eventually("the lease", || async {
        holder().filter(|h| h == "tka-server-test-0")
    })
    .await;

    // Its passes show in the metrics.
    eventually("a reconcile pass in /metrics", || async {
        get(ops, "/metrics").await.filter(|(_, text)| {
            text.lines().any(|l| {
                l.strip_prefix("tka_reconcile_duration_seconds_count ")
                    .is_some_and(|n| n.trim() != "0")
            })
        })
    })
    .await;

    // ... and gives it up on SIGTERM, exiting 0.
    let pid = child.0.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let status = eventually("exit", || {
        let done = child.0.try_wait().unwrap();
        async move { done }
    })
    .await;
    assert!(status.success(), "{status:?}");
    assert_eq!(holder(), None);
    // The session outlives the server: it is the cluster's record, not the process's.
    assert_eq!(cluster.objects("sessions").len(), 1);
}
