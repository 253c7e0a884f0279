//! `make demo`: tka's story on loopback, narrated. It starts a real Kubernetes control plane
//! (etcd, kube-apiserver, kube-controller-manager) and a real tailnet ("cluster" tagged
//! `tag:tka`, "laptop" owned by alice@example.com), identifies the laptop with a real whois,
//! decides with tka's policy, issues a credential, uses it with kubectl, and revokes it.
//! Everything stops and is removed at the end; the whole run is bounded.
//!
//! Needs `TKA_TESTENV_BIN` (`eval "$(tka-testkit/testenv/build.sh)"`; `make demo` does it).

// Narrating on stdout is this program's job.
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::error::Error;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use jiff::Timestamp;
use serde_json::json;
use tka_core::capability::ParsedGrants;
use tka_core::identity::{IdentityProvider, TailscaleLocalApi};
use tka_core::issuer::CredentialIssuer;
use tka_core::kubernetes::{GrantMapping, IssuerSettings, KubernetesIssuer};
use tka_core::policy::{
    GrantMappingSpec, MappingView, PolicyContext, PolicySettings, ResolveRequest, Subject, resolve,
};
use tka_core::{ClusterName, RoleName, SystemClock, Ttl};
use tka_testkit::testenv::{KubeEnv, TailnetEnv, TailnetGrant, TailnetNodeSpec, bin_dir};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

type Result<T> = std::result::Result<T, Box<dyn Error + Send + Sync>>;

const CAP: &str = "tka.dev/cap/kubernetes";
const NAMESPACE: &str = "tka-system";

fn step(n: u32, text: &str) {
    println!("\n== {n}. {text}");
}

fn say(text: &str) {
    println!("   {text}");
}

async fn kubectl(bin: &Path, kubeconfig: &Path, args: &[&str]) -> Result<bool> {
    println!("   $ kubectl {}", args.join(" "));
    let out = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::process::Command::new(bin)
            .arg("--kubeconfig")
            .arg(kubeconfig)
            .arg("--request-timeout=20s")
            .args(args)
            .env_remove("KUBECONFIG")
            .kill_on_drop(true)
            .output(),
    )
    .await??;
    for line in String::from_utf8_lossy(&out.stdout)
        .lines()
        .chain(String::from_utf8_lossy(&out.stderr).lines())
    {
        println!("     {line}");
    }
    Ok(out.status.success())
}

/// A SOCKS5 CONNECT (no authentication) to an IPv4 target.
async fn socks5_connect(proxy: SocketAddr, target: SocketAddr) -> Result<TcpStream> {
    let IpAddr::V4(ip) = target.ip() else {
        return Err("only IPv4 targets".into());
    };
    let mut s = TcpStream::connect(proxy).await?;
    s.write_all(&[5, 1, 0]).await?;
    let mut choice = [0u8; 2];
    s.read_exact(&mut choice).await?;
    let mut request = vec![5, 1, 0, 1];
    request.extend_from_slice(&ip.octets());
    request.extend_from_slice(&target.port().to_be_bytes());
    s.write_all(&request).await?;
    let mut reply = [0u8; 10];
    s.read_exact(&mut reply).await?;
    if choice != [5, 0] || reply[1] != 0 {
        return Err(format!("SOCKS5 CONNECT to {target} failed").into());
    }
    Ok(s)
}

async fn demo() -> Result<()> {
    let bin = bin_dir()?;
    let started = Instant::now();

    step(1, "A Kubernetes control plane on loopback");
    let kube = KubeEnv::start(&bin).await?;
    say(&format!(
        "etcd, kube-apiserver ({}) and kube-controller-manager are up after {:.1} s",
        kube.api_url(),
        started.elapsed().as_secs_f64()
    ));
    kube.install_crds().await?;
    kube.ensure_namespace(NAMESPACE).await?;
    say("tka's CRDs (GrantMapping, Session) are installed; tka-server's namespace is tka-system");

    step(
        2,
        "A tailnet: \"cluster\" (tag:tka) and \"laptop\" (alice@example.com)",
    );
    let tailnet = TailnetEnv::start(
        &bin,
        &[
            TailnetNodeSpec::tagged("cluster", &["tag:tka"]),
            TailnetNodeSpec::user("laptop", "alice@example.com"),
        ],
        &[TailnetGrant::new(
            "laptop",
            "cluster",
            CAP,
            vec![json!({"role": "viewer", "maxTTL": "4h"})],
        )],
    )
    .await?;
    let cluster = tailnet.node("cluster").ok_or("no cluster node")?.clone();
    let laptop = tailnet.node("laptop").ok_or("no laptop node")?.clone();
    say(&format!(
        "cluster is {} ({}), laptop is {} ({})",
        cluster.ipv4, cluster.dns_name, laptop.ipv4, laptop.dns_name
    ));
    say(&format!(
        "the tailnet policy grants laptop -> cluster: {CAP} = {{\"role\":\"viewer\",\"maxTTL\":\"4h\"}}"
    ));

    step(
        3,
        "The cluster admin maps the role \"viewer\" to the ClusterRole view",
    );
    let spec = GrantMappingSpec {
        subjects: vec![Subject {
            user: Some("alice@example.com".to_owned()),
            ..Subject::default()
        }],
        cluster_roles: vec!["view".to_owned()],
        default_ttl: Some("1h".to_owned()),
        max_ttl: Some("8h".to_owned()),
        ..GrantMappingSpec::default()
    };
    let mappings: kube::Api<GrantMapping> = kube::Api::all(kube.client());
    mappings
        .create(
            &Default::default(),
            &GrantMapping::new("viewer", spec.clone()),
        )
        .await?;
    kubectl(
        &kube.kubectl(),
        kube.admin_kubeconfig(),
        &["get", "grantmappings"],
    )
    .await?;

    step(
        4,
        "The laptop connects to the cluster node; whois says who it is",
    );
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    let proxy = SocketAddr::from(([127, 0, 0, 1], laptop.socks5_port));
    let target = SocketAddr::new(IpAddr::V4(cluster.ipv4), port);
    let (client, accepted) = tokio::time::timeout(Duration::from_secs(30), async {
        tokio::join!(socks5_connect(proxy, target), listener.accept())
    })
    .await?;
    let (_server, remote) = accepted?;
    let _client = client?;
    say(&format!(
        "laptop dialled {target} through its SOCKS5 proxy; cluster's tailscaled re-dialled it from {remote}"
    ));
    let localapi = TailscaleLocalApi::new(&cluster.socket).with_timeout(Duration::from_secs(5));
    let identity = localapi.whois(remote).await?;
    say(&format!(
        "whois {remote} -> {} on {} (node {}), capabilities {}",
        identity.user.login_name.as_str(),
        identity.node.name,
        identity.node.stable_id.as_str(),
        serde_json::to_string(&identity.capabilities)?
    ));

    step(
        5,
        "tka's policy decides, and the issuer makes a session and a token",
    );
    let grants = ParsedGrants::from_identity(&identity);
    let views = vec![MappingView::new(RoleName::new("viewer")?, spec)];
    let cluster_name = ClusterName::new("demo")?;
    let settings = PolicySettings::new(NAMESPACE, Ttl::parse("1h")?, Ttl::parse("8h")?);
    let decision = resolve(&ResolveRequest {
        context: PolicyContext {
            identity: &identity,
            grants: &grants,
            mappings: &views,
            cluster: &cluster_name,
            settings: &settings,
        },
        role: None,
        ttl: None,
        now: Timestamp::now(),
    })
    .map_err(|d| format!("policy refused: {d}"))?;
    say(&format!(
        "decision: role {}, cluster roles {:?}, TTL {}",
        decision.role.as_str(),
        decision.cluster_roles,
        decision.ttl.as_secs()
    ));
    let issuer = KubernetesIssuer::new(
        kube.client(),
        IssuerSettings::new(NAMESPACE),
        Arc::new(SystemClock),
    )?;
    let credential = issuer.issue(&identity, &decision).await?;
    say(&format!(
        "session {} for ServiceAccount {}; token valid until {}, session until {}",
        credential.session.as_str(),
        credential.service_account,
        credential.token_expires_at,
        credential.session_expires_at
    ));
    let kubeconfig = kube.kubeconfig_for_token(credential.token.expose())?;

    step(6, "kubectl with the issued token");
    let kubectl_bin = kube.kubectl();
    let read = kubectl(&kubectl_bin, &kubeconfig, &["get", "namespaces"]).await?;
    say(if read {
        "allowed: view reads"
    } else {
        "UNEXPECTED: reading was refused"
    });
    let write = kubectl(
        &kubectl_bin,
        &kubeconfig,
        &[
            "-n",
            "default",
            "create",
            "configmap",
            "demo",
            "--from-literal=a=b",
        ],
    )
    .await?;
    say(if write {
        "UNEXPECTED: writing was allowed"
    } else {
        "refused: view does not write"
    });

    step(7, "Revoke the session");
    let revoked = issuer.revoke(&identity.node.stable_id).await?;
    say(&format!("revoked {} session(s)", revoked.len()));
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut refused = false;
    while Instant::now() < deadline {
        if !kubectl(&kubectl_bin, &kubeconfig, &["get", "namespaces"]).await? {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    say(if refused {
        "the same token is refused now"
    } else {
        "UNEXPECTED: the token still works 15 s after the revocation"
    });

    step(
        8,
        "Coming with tka-server and the tka CLI (being wired now)",
    );
    say("`tka login` on the laptop asks tka-server over the tailnet; the server does steps 4-5");
    say("the kubeconfig uses the exec credential plugin (`tka kubeconfig`), refreshing tokens");
    say("the reconciler runs inside tka-server: expiry and withdrawn grants end sessions");

    println!(
        "\ndemo finished in {:.1} s; stopping everything",
        started.elapsed().as_secs_f64()
    );
    if read && !write && refused {
        Ok(())
    } else {
        Err("the demo saw something unexpected (see above)".into())
    }
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    match tokio::time::timeout(Duration::from_secs(300), demo()).await {
        Ok(Ok(())) => std::process::ExitCode::SUCCESS,
        Ok(Err(e)) => {
            eprintln!("demo failed: {e}");
            std::process::ExitCode::FAILURE
        }
        Err(_) => {
            eprintln!("demo took over 5 minutes; stopped");
            std::process::ExitCode::FAILURE
        }
    }
}
