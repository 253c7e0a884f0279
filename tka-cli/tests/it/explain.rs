//! `tka policy explain` agrees with a running server. The same tailnet policy file and
//! GrantMappings go to an in-process tka-server (a FakeTailnet whose whois delivers each
//! principal the capability values the policy file grants it, over the real LocalAPI protocol,
//! and a FakeCluster holding the mappings, served over loopback for kube's client) and to the
//! built `tka policy explain`, reading the mappings both from the YAML file and live from that
//! same cluster. For every principal and every requested role, the role granted (with its TTL
//! and the bindings the server really created) or the refusal (its code and message) must be
//! the same.
//!
//! The one thing explain cannot know is the caller's device name, which the server's messages
//! quote: the server's is replaced by explain's stand-in name before comparing.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use tka_core::api::ClusterEndpoint;
use tka_core::kubernetes::{
    ClusterWatches, GrantMapping, IssuerSettings, KubernetesIssuer, SESSION_LABEL,
};
use tka_core::tailnet_policy::{DEFAULT_SERVER_TAG, Principal, TailnetPolicy};
use tka_core::{ClusterName, PolicySettings, SystemClock, Ttl};
use tka_server::guard::AllowedHosts;
use tka_server::kubernetes::{Bindability, MappingFeed};
use tka_server::ratelimit::RateLimitConfig;
use tka_server::{
    ApiConfig, ApiState, Backends, InMemoryMappings, ListenMode, Metrics, Server, ops_router,
};
use tka_testkit::cluster::{FakeCluster, ServedCluster};
use tka_testkit::tailnet::{FakeLocalApi, FakeTailnet, PeerSpec};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use crate::support::{Sandbox, run, stderr, stdout};

const NAMESPACE: &str = "tka-system";
const CLUSTER: &str = "prod";
const HOST: &str = "tka-prod";
const CAPABILITY: &str = "tka.dev/cap/kubernetes";

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/it/fixtures/explain")
        .join(name)
}

/// A login's outcome, in the terms both sides can state.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Verdict {
    Granted {
        role: String,
        ttl: String,
        cluster_roles: BTreeSet<String>,
        namespaced: BTreeSet<(String, String)>,
    },
    Refused {
        code: String,
        message: String,
    },
}

/// tka-server on the Kubernetes backend (FakeCluster) and the LocalAPI (FakeTailnet).
struct Stage {
    addr: std::net::SocketAddr,
    tailnet: FakeTailnet,
    cluster: FakeCluster,
    served: ServedCluster,
    _daemon: FakeLocalApi,
    shutdown: CancellationToken,
}

impl Stage {
    /// A server for cluster `name` holding the GrantMappings of `mappings_yaml`, with every
    /// namespace they bind in.
    async fn start(mappings_yaml: &str, name: &str) -> Self {
        let cluster = FakeCluster::new();
        for document in serde_yaml::Deserializer::from_str(mappings_yaml) {
            let mapping: Value = serde::Deserialize::deserialize(document).unwrap();
            for grant in mapping["spec"]["namespaced"]
                .as_array()
                .into_iter()
                .flatten()
            {
                for ns in grant["namespaces"].as_array().unwrap() {
                    // The seeded ones (kube-system, ...) exist already.
                    let _ = cluster.insert(
                        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}),
                    );
                }
            }
        }
        let served = cluster.serve_tcp().await.unwrap();
        let client = served.client().unwrap();
        let api: kube::Api<GrantMapping> = kube::Api::all(client.clone());
        for document in serde_yaml::Deserializer::from_str(mappings_yaml) {
            let mapping: GrantMapping = serde::Deserialize::deserialize(document).unwrap();
            api.create(&kube::api::PostParams::default(), &mapping)
                .await
                .unwrap();
        }

        let clock = Arc::new(SystemClock);
        let issuer = Arc::new(
            KubernetesIssuer::new(
                client.clone(),
                IssuerSettings::new(NAMESPACE),
                clock.clone(),
            )
            .unwrap(),
        );
        let store = Arc::new(InMemoryMappings::default());
        let feed = Arc::new(MappingFeed::new(
            store.clone(),
            Arc::new(Bindability::new(client.clone())),
        ));
        let shutdown = CancellationToken::new();
        {
            let feed = feed.clone();
            let (watches, drive) = ClusterWatches::new(&client, NAMESPACE);
            let shutdown = shutdown.clone();
            tokio::spawn(async move {
                tokio::select! {
                    () = drive => {}
                    () = feed.run(&watches, shutdown.clone()) => {}
                }
            });
        }
        for _ in 0..1000 {
            if feed.is_synced() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(feed.is_synced(), "the GrantMapping feed never synced");

        let tailnet = FakeTailnet::new();
        let daemon = tailnet.serve().await.unwrap();
        let metrics = Arc::new(Metrics::new(None));
        let config = ApiConfig {
            cluster: ClusterEndpoint {
                name: ClusterName::new(name).unwrap(),
                server: served.url(),
                certificate_authority_data: None,
                proxy: None,
                direct_tokens: true,
            },
            // explain's defaults: the server's own.
            policy: PolicySettings::new(
                NAMESPACE,
                Ttl::parse("1h").unwrap(),
                Ttl::parse("8h").unwrap(),
            ),
            allowed_hosts: AllowedHosts::new([HOST.to_owned()], ["127.0.0.1".parse().unwrap()]),
            proxy_only: false,
            self_node_ids: Vec::new(),
            loopback_peers_only: true,
            service_name: None,
            max_body_bytes: 1024,
            rate_limit: RateLimitConfig {
                per_minute: 6000.try_into().unwrap(),
                burst: 1000.try_into().unwrap(),
            },
            whois_timeout: Duration::from_secs(10),
            issuer_timeout: Duration::from_secs(20),
        };
        let backends = Backends {
            identity: Arc::new(daemon.client()),
            issuer: issuer.clone(),
            mappings: store,
            clock,
        };
        let state = ApiState::new(config, backends, metrics.clone());
        let server = Server::bind(
            "127.0.0.1:0".parse().unwrap(),
            &ListenMode::LoopbackOnly,
            "127.0.0.1:0".parse().unwrap(),
            state,
            ops_router(Vec::new(), metrics),
            shutdown.clone(),
            Duration::from_secs(5),
        )
        .await
        .unwrap();
        let addr = server.api_addr();
        tokio::spawn(server.run());
        Self {
            addr,
            tailnet,
            cluster,
            served,
            _daemon: daemon,
            shutdown,
        }
    }

    /// Logs in as a fresh device of `who` that receives `values`; the server's verdict, with
    /// the device's name replaced by explain's stand-in name.
    async fn login(
        &self,
        who: &Principal,
        groups: &[String],
        values: &[Value],
        role: Option<&str>,
        device: &str,
    ) -> Verdict {
        let spec = match who {
            Principal::User { login } => {
                PeerSpec::user(login, device).groups(groups.iter().cloned())
            }
            Principal::Tagged { tags } => PeerSpec::tagged(tags.iter().cloned(), device),
        };
        let spec = values
            .iter()
            .fold(spec, |spec, v| spec.capability(CAPABILITY, v.clone()));
        let peer = self.tailnet.add(spec);
        let mut stream = TcpStream::connect(self.addr).await.unwrap();
        self.tailnet
            .bind_connection(stream.local_addr().unwrap(), &peer.stable_id)
            .unwrap();
        let body = match role {
            Some(role) => json!({"role": role}).to_string(),
            None => "{}".to_owned(),
        };
        let request = format!(
            "POST /api/v1/login HTTP/1.1\r\nHost: {HOST}\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await.unwrap();
        let response = String::from_utf8(response).unwrap();
        let (head, body) = response.split_once("\r\n\r\n").unwrap();
        let status: u16 = head.split(' ').nth(1).unwrap().parse().unwrap();
        let body: Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {response}"));
        if status != 200 {
            let node = format!("{device}.example.ts.net");
            let message = body["detail"]
                .as_str()
                .unwrap()
                .replace(&node, &who.device_name());
            return Verdict::Refused {
                code: body["code"].as_str().unwrap().to_owned(),
                message,
            };
        }
        let session = body["session"]["name"].as_str().unwrap();
        let mut cluster_roles = BTreeSet::new();
        let mut namespaced = BTreeSet::new();
        for object in self
            .cluster
            .list_labelled(&format!("{SESSION_LABEL}={session}"))
            .unwrap()
        {
            let role = object["roleRef"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            match object["kind"].as_str() {
                Some("ClusterRoleBinding") => {
                    cluster_roles.insert(role);
                }
                Some("RoleBinding") => {
                    let ns = object["metadata"]["namespace"].as_str().unwrap().to_owned();
                    namespaced.insert((role, ns));
                }
                _ => {}
            }
        }
        Verdict::Granted {
            role: body["session"]["role"].as_str().unwrap().to_owned(),
            ttl: body["ttl"].as_str().unwrap().to_owned(),
            cluster_roles,
            namespaced,
        }
    }
}

impl Drop for Stage {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// explain's answers, by principal, from its JSON output.
fn explain_verdicts(output: &Value) -> BTreeMap<String, Verdict> {
    output["answers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|answer| {
            let who: Principal = serde_json::from_value(answer["who"].clone()).unwrap();
            let outcome = &answer["outcome"];
            let verdict = if outcome["result"] == "granted" {
                let strings = |v: &Value| -> BTreeSet<String> {
                    v.as_array()
                        .unwrap()
                        .iter()
                        .map(|s| s.as_str().unwrap().to_owned())
                        .collect()
                };
                Verdict::Granted {
                    role: outcome["role"].as_str().unwrap().to_owned(),
                    ttl: outcome["ttl"].as_str().unwrap().to_owned(),
                    cluster_roles: strings(&outcome["clusterRoles"]),
                    namespaced: outcome["namespaced"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|b| {
                            (
                                b["clusterRole"].as_str().unwrap().to_owned(),
                                b["namespace"].as_str().unwrap().to_owned(),
                            )
                        })
                        .collect(),
                }
            } else {
                Verdict::Refused {
                    code: outcome["kind"].as_str().unwrap().to_owned(),
                    message: outcome["message"].as_str().unwrap().to_owned(),
                }
            };
            (who.to_string(), verdict)
        })
        .collect()
}

fn explain(
    sandbox: &Sandbox,
    policy: &Path,
    cluster: &str,
    source: &[&str],
    role: Option<&str>,
) -> Value {
    let mut cmd = sandbox.tka();
    cmd.args([
        "policy",
        "explain",
        "-o",
        "json",
        "--cluster",
        cluster,
        "--policy",
    ])
    .arg(policy)
    .args(source);
    if let Some(role) = role {
        cmd.args(["--role", role]);
    }
    let out = run(&mut cmd);
    assert!(out.status.success(), "{}", stderr(&out));
    serde_json::from_str(&stdout(&out)).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explain_agrees_with_the_server() {
    let mappings_yaml = std::fs::read_to_string(fixture("mappings.yaml")).unwrap();
    let stage = Stage::start(&mappings_yaml, CLUSTER).await;
    let sandbox = Sandbox::new();
    std::fs::create_dir_all(sandbox.kubeconfig().parent().unwrap()).unwrap();
    std::fs::write(sandbox.kubeconfig(), stage.served.kubeconfig_yaml()).unwrap();
    // The files mode gets the cluster's own ClusterRoles, as an operator would export them.
    let roles_file = sandbox.dir.path().join("clusterroles.yaml");
    let roles: Vec<String> = stage
        .cluster
        .objects("clusterroles")
        .iter()
        .map(|r| serde_yaml::to_string(r).unwrap())
        .collect();
    std::fs::write(&roles_file, roles.join("---\n")).unwrap();
    let mappings_file = fixture("mappings.yaml");
    let files = [
        "-f",
        mappings_file.to_str().unwrap(),
        "-f",
        roles_file.to_str().unwrap(),
    ];

    let policy =
        TailnetPolicy::parse(&std::fs::read_to_string(fixture("policy.hujson")).unwrap()).unwrap();
    let principals: Vec<Principal> = policy
        .principals()
        .into_iter()
        .filter(|p| p != &Principal::tagged([DEFAULT_SERVER_TAG]))
        .collect();
    assert_eq!(principals.len(), 6, "{principals:?}");

    let mut device = 0;
    let mut granted = 0;
    let mut codes = BTreeSet::new();
    for role in [
        None,
        Some("sre"),
        Some("read-only"),
        Some("deploy"),
        Some("wide"),
        Some("system"),
        Some("missing"),
        Some("ghost"),
        Some("dba"),
    ] {
        let run_explain = |source: &[&str]| {
            let sandbox = &sandbox;
            let source: Vec<String> = source.iter().map(|s| (*s).to_owned()).collect();
            let role = role.map(str::to_owned);
            move || {
                let source: Vec<&str> = source.iter().map(String::as_str).collect();
                explain_verdicts(&explain(
                    sandbox,
                    &fixture("policy.hujson"),
                    CLUSTER,
                    &source,
                    role.as_deref(),
                ))
            }
        };
        let from_files = tokio::task::block_in_place(run_explain(&files));
        let live = tokio::task::block_in_place(run_explain(&["--live"]));
        for who in &principals {
            device += 1;
            let groups = match who {
                Principal::User { login } => policy.groups_of(login),
                Principal::Tagged { .. } => Vec::new(),
            };
            let values = policy
                .delivered(who, &[DEFAULT_SERVER_TAG.to_owned()])
                .values(CAPABILITY);
            let server = stage
                .login(who, &groups, &values, role, &format!("device{device}"))
                .await;
            let key = who.to_string();
            assert_eq!(
                from_files.get(&key),
                Some(&server),
                "{key} asking for {role:?} (files)"
            );
            assert_eq!(
                live.get(&key),
                Some(&server),
                "{key} asking for {role:?} (live)"
            );
            match server {
                Verdict::Granted { .. } => granted += 1,
                Verdict::Refused { code, .. } => {
                    codes.insert(code);
                }
            }
        }
    }
    // The inputs reach every kind of answer, so agreement is not agreement on nothing.
    assert!(granted >= 6, "{granted}");
    let expected: BTreeSet<String> = [
        "noGrants",
        "noGrantForRole",
        "noMapping",
        "subjectsDoNotMatch",
        "forbiddenNamespace",
        "mappingUnusable",
    ]
    .into_iter()
    .map(str::to_owned)
    .collect();
    assert!(codes.is_superset(&expected), "{codes:?}");
}

/// The cookbook's recipes (docs/cookbook/), each on the clusters its page talks about: for every
/// principal the policy file names, plus a member it names nowhere, and for a login without a
/// role and one for each mapping, the server and `tka policy explain -f` (the recipe's files
/// alone, so the Kubernetes default roles stand in for the cluster's) give the same answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cookbook_recipes_agree_with_the_server() {
    let cookbook = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/cookbook");
    let sandbox = Sandbox::new();
    let mut device = 0;
    let mut compared = 0;
    let mut granted = 0;
    for (recipe, clusters) in [
        ("read-only-for-everyone", &["prod"][..]),
        ("sre-break-glass", &["prod"]),
        ("team-namespaces", &["prod"]),
        ("ci-runners", &["staging", "prod"]),
        ("multi-cluster", &["prod-eu", "staging-eu", "dev-1"]),
        ("proxied-cluster", &["edge-1", "core-1"]),
    ] {
        let policy_path = cookbook.join(recipe).join("policy.hujson");
        let mappings_path = cookbook.join(recipe).join("mappings.yaml");
        let mappings_yaml = std::fs::read_to_string(&mappings_path).unwrap();
        let policy = TailnetPolicy::parse(&std::fs::read_to_string(&policy_path).unwrap()).unwrap();
        let mut principals: Vec<Principal> = policy
            .principals()
            .into_iter()
            .filter(|p| p != &Principal::tagged([DEFAULT_SERVER_TAG]))
            .collect();
        principals.push(Principal::user("nobody-named@example.com"));
        let mut roles: Vec<Option<String>> = vec![None];
        for document in serde_yaml::Deserializer::from_str(&mappings_yaml) {
            let mapping: Value = serde::Deserialize::deserialize(document).unwrap();
            roles.push(mapping["metadata"]["name"].as_str().map(str::to_owned));
        }
        for cluster in clusters {
            let stage = Stage::start(&mappings_yaml, cluster).await;
            for role in &roles {
                let answers = tokio::task::block_in_place(|| {
                    let mut verdicts = BTreeMap::new();
                    for who in &principals {
                        let mut cmd_args = vec!["--who".to_owned(), who.to_string()];
                        cmd_args.extend(["-f".to_owned(), mappings_path.display().to_string()]);
                        let args: Vec<&str> = cmd_args.iter().map(String::as_str).collect();
                        let output =
                            explain(&sandbox, &policy_path, cluster, &args, role.as_deref());
                        verdicts.extend(explain_verdicts(&output));
                    }
                    verdicts
                });
                for who in &principals {
                    device += 1;
                    let groups = match who {
                        Principal::User { login } => policy.groups_of(login),
                        Principal::Tagged { .. } => Vec::new(),
                    };
                    let values = policy
                        .delivered(who, &[DEFAULT_SERVER_TAG.to_owned()])
                        .values(CAPABILITY);
                    let server = stage
                        .login(
                            who,
                            &groups,
                            &values,
                            role.as_deref(),
                            &format!("device{device}"),
                        )
                        .await;
                    assert_eq!(
                        answers.get(&who.to_string()),
                        Some(&server),
                        "{recipe} on {cluster}: {who} asking for {role:?}"
                    );
                    compared += 1;
                    granted += usize::from(matches!(server, Verdict::Granted { .. }));
                }
            }
        }
    }
    // Both kinds of answer, many of each: agreement is not agreement on nothing.
    assert!(compared >= 90, "{compared}");
    assert!(
        granted >= 20 && compared - granted >= 20,
        "{granted} of {compared} granted"
    );
}
