//! The library's wiring (`tka_server::wiring::server`), in process, on a FakeCluster and a fake
//! tailscaled: the server it builds is the production one, it opens one watch per resource
//! (Sessions, GrantMappings, ClusterRoles) shared by the GrantMapping feed, the session count
//! and the reconciler, and the reconciler wakes from those shared watches.
//!
//! It owns only these assertions; the binary's own start and stop are in `serve.rs`.

use std::time::Duration;

use clap::Parser as _;
use kube::api::DeleteParams;
use tka_server::Settings;
use tka_server::cli::{Cli, Command};
use tka_testkit::cluster::Verb;
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use crate::serve::{FakeWorld, eventually, get};
use crate::support::Client;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_wiring_watches_each_resource_once_and_every_reader_shares_it() {
    let world = FakeWorld::new().await;
    let FakeWorld {
        cluster,
        mappings,
        kubeconfig,
        tailnet,
        alice,
        daemon,
        ..
    } = &world;

    let mut argv: Vec<std::ffi::OsString> = vec!["tka-server".into(), "serve".into()];
    argv.extend(["--kubeconfig".into(), kubeconfig.clone().into_os_string()]);
    argv.extend([
        "--tailscale-socket".into(),
        daemon.socket_path().as_os_str().to_owned(),
    ]);
    argv.extend(
        [
            "--cluster-name",
            "prod",
            "--api-server-url",
            "https://10.0.0.1:6443",
            "--server-name",
            "tka-prod",
            "--listen",
            "127.0.0.1:0",
            // Ops on "the pod's address" (127.0.0.3 stands in), never where tailnet traffic
            // arrives.
            "--ops-listen",
            "127.0.0.3:0",
        ]
        .map(Into::into),
    );
    let cli = Cli::try_parse_from(argv).unwrap();
    let Command::Serve(args) = cli.command else {
        panic!("not serve");
    };
    let settings = Settings::try_from(*args).unwrap();
    let shutdown = CancellationToken::new();
    let server = tka_server::wiring::server(&settings, shutdown.clone())
        .await
        .unwrap();
    let api = server.api_addr();
    let ops = server.ops_addr().unwrap();
    let running = tokio::spawn(server.run());

    eventually("readiness", || async {
        get(ops, "/readyz")
            .await
            .filter(|(status, _)| *status == 200)
    })
    .await;

    // Allowed: a login through the real issuer; the session count reads the shared store.
    let stream = TcpStream::connect(api).await.unwrap();
    tailnet
        .bind_connection(stream.local_addr().unwrap(), &alice.stable_id)
        .unwrap();
    let mut alice_client = Client::over(stream).await;
    let response = alice_client.login(r#"{"role":"sre"}"#).await;
    assert_eq!(response.status, 200, "{}", response.text());
    eventually("the session count", || async {
        get(ops, "/metrics")
            .await
            .filter(|(_, text)| text.contains("tka_active_sessions 1"))
    })
    .await;

    // Refused once the mapping goes: the reconciler, woken by the shared GrantMapping watch
    // (its periodic pass is a minute away), revokes the session.
    mappings
        .delete("sre", &DeleteParams::default())
        .await
        .unwrap();
    eventually("the session's revocation", || async {
        cluster.objects("sessions").is_empty().then_some(())
    })
    .await;
    eventually("the session count", || async {
        get(ops, "/metrics")
            .await
            .filter(|(_, text)| text.contains("tka_active_sessions 0"))
    })
    .await;

    // One watch per resource for the whole server.
    for resource in ["sessions", "grantmappings", "clusterroles"] {
        let watches = cluster.calls_to(Verb::Watch, resource);
        assert_eq!(watches.len(), 1, "{resource}: {watches:?}");
    }

    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(30), running)
        .await
        .expect("the server stops on shutdown")
        .unwrap()
        .unwrap();
}
