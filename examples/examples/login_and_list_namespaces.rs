//! A Rust client of tka: logs in with `POST /api/v1/login` (asking for a ready kubeconfig with
//! `Accept: application/yaml`), then lists namespaces with kube through that kubeconfig, as any
//! Rust program would after `tka login`.
//!
//! A real tka server, tailscaled and kube-apiserver are not cheap to start from an example, so
//! this one stages them in process: a tka-server router with its real Kubernetes backend
//! (`KubernetesIssuer`, the GrantMapping feed) against tka-testkit's `FakeCluster` served over
//! loopback HTTP, and whois answered by tka-testkit's `FakeTailnet` over the real LocalAPI
//! protocol. The client half (`login`, `list_namespaces`) is what talks to a real server
//! unchanged: there it would connect to the server's tailnet address instead.
//!
//! Run with `cargo run -p tka-examples --example login_and_list_namespaces`. It exits non-zero
//! unless the namespaces it lists are the cluster's.

#![allow(clippy::print_stdout)] // printing the result is what this example is for

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail, ensure};
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, ListParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use serde_json::json;
use tka_core::api::ClusterEndpoint;
use tka_core::identity::DEFAULT_CAPABILITY;
use tka_core::kubernetes::{ClusterWatches, GrantMapping, IssuerSettings, KubernetesIssuer};
use tka_core::{ClusterName, GrantMappingSpec, PolicySettings, SystemClock, Ttl};
use tka_server::guard::AllowedHosts;
use tka_server::kubernetes::{Bindability, MappingFeed};
use tka_server::ratelimit::RateLimitConfig;
use tka_server::{
    ApiConfig, ApiState, Backends, InMemoryMappings, ListenMode, Metrics, Server, ops_router,
};
use tka_testkit::cluster::FakeCluster;
use tka_testkit::tailnet::{FakeTailnet, PeerSpec};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

/// The name the server answers to (its MagicDNS name on a real tailnet).
const HOST: &str = "tka-prod";

/// Logs in over `stream` (a connection to the tka server) and returns the kubeconfig it sends.
async fn login(stream: &mut TcpStream) -> anyhow::Result<String> {
    let body = json!({"ttl": "30m"}).to_string();
    let request = format!(
        "POST /api/v1/login HTTP/1.1\r\nHost: {HOST}\r\nContent-Type: application/json\r\n\
         Accept: application/yaml\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await?;
    let response = String::from_utf8(response)?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .context("no HTTP response")?;
    if !head.starts_with("HTTP/1.1 200") {
        bail!("login refused: {head}\n{body}");
    }
    Ok(body.to_owned())
}

/// Lists namespaces with kube, authenticated by the kubeconfig the login returned.
async fn list_namespaces(kubeconfig: &str) -> anyhow::Result<Vec<String>> {
    let kubeconfig = Kubeconfig::from_yaml(kubeconfig)?;
    let config =
        kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await?;
    let client = kube::Client::try_from(config)?;
    let namespaces = Api::<Namespace>::all(client)
        .list(&ListParams::default())
        .await?;
    Ok(namespaces
        .items
        .into_iter()
        .filter_map(|ns| ns.metadata.name)
        .collect())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    // --- the stage: a cluster, a tailnet, and a tka server between them ---
    let cluster = FakeCluster::new();
    let served = cluster.serve_tcp().await?;
    let kube_client = served.client()?;
    Api::<GrantMapping>::all(kube_client.clone())
        .create(
            &PostParams::default(),
            &GrantMapping::new(
                "read-only",
                GrantMappingSpec {
                    cluster_roles: vec!["view".into()],
                    ..Default::default()
                },
            ),
        )
        .await?;
    let shutdown = CancellationToken::new();
    let store = Arc::new(InMemoryMappings::default());
    let feed = Arc::new(MappingFeed::new(
        store.clone(),
        Arc::new(Bindability::new(kube_client.clone())),
    ));
    {
        let feed = feed.clone();
        let (watches, drive) = ClusterWatches::new(&kube_client, "tka-system");
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            tokio::select! {
                () = drive => {}
                () = feed.run(&watches, shutdown) => {}
            }
        });
    }
    for _ in 0..500 {
        if feed.is_synced() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    ensure!(feed.is_synced(), "the server never saw the GrantMappings");

    let tailnet = FakeTailnet::new();
    let laptop = tailnet.add(
        PeerSpec::user("alice@example.com", "alice-laptop")
            .capability(DEFAULT_CAPABILITY, json!({"role": "read-only"})),
    );
    let daemon = tailnet.serve().await?;
    let clock = Arc::new(SystemClock);
    let metrics = Arc::new(Metrics::new(None));
    let config = ApiConfig {
        cluster: ClusterEndpoint {
            name: ClusterName::new("prod")?,
            server: served.url(),
            certificate_authority_data: None,
            proxy: None,
            direct_tokens: true,
        },
        policy: PolicySettings::new("tka-system", Ttl::parse("1h")?, Ttl::parse("8h")?),
        allowed_hosts: AllowedHosts::new([HOST.to_owned()], ["127.0.0.1".parse()?]),
        proxy_only: false,
        self_node_ids: Vec::new(),
        loopback_peers_only: true,
        service_name: None,
        max_body_bytes: 1024,
        rate_limit: RateLimitConfig {
            per_minute: 600.try_into()?,
            burst: 100.try_into()?,
        },
        whois_timeout: Duration::from_secs(10),
        issuer_timeout: Duration::from_secs(20),
    };
    let backends = Backends {
        identity: Arc::new(daemon.client()),
        issuer: Arc::new(KubernetesIssuer::new(
            kube_client,
            IssuerSettings::new("tka-system"),
            clock.clone(),
        )?),
        mappings: store,
        clock,
    };
    let server = Server::bind(
        "127.0.0.1:0".parse()?,
        &ListenMode::LoopbackOnly,
        "127.0.0.1:0".parse()?,
        ApiState::new(config, backends, metrics.clone()),
        ops_router(Vec::new(), metrics),
        shutdown.clone(),
        Duration::from_secs(5),
    )
    .await?;
    let server_addr: SocketAddr = server.api_addr();
    tokio::spawn(server.run());

    // --- the client: log in, then use the kubeconfig ---
    let mut stream = TcpStream::connect(server_addr).await?;
    // On a real tailnet tailscaled knows which device this connection comes from; here the
    // fake is told.
    tailnet.bind_connection(stream.local_addr()?, &laptop.stable_id)?;
    let kubeconfig = login(&mut stream).await?;
    ensure!(
        kubeconfig.contains("token:"),
        "the kubeconfig carries no token"
    );
    println!("logged in to prod as alice@example.com; kubeconfig received");

    let namespaces = list_namespaces(&kubeconfig).await?;
    println!("namespaces: {}", namespaces.join(", "));
    for expected in ["default", "kube-system", "tka-system"] {
        ensure!(
            namespaces.iter().any(|n| n == expected),
            "namespace {expected} missing from {namespaces:?}"
        );
    }
    shutdown.cancel();
    Ok(())
}
