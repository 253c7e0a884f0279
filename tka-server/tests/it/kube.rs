//! The server on the real Kubernetes backend: the real router, `KubernetesIssuer`, the
//! GrantMapping feed with bindability checks and the ClusterRoles' read-only judgement, the
//! reconciler's `NotBindable` and `ClusterWideWrite` conditions and re-validation, `drain` and
//! `tka-server crds`, against a FakeCluster served over loopback TCP.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::ServiceAccount;
use kube::api::{ListParams, PostParams};
use kube::{Api, ResourceExt};
use serde_json::json;
use tka_core::IdentityProvider;
use tka_core::kubernetes::{
    ClusterWatches, GrantMapping, IssuerSettings, KubernetesIssuer, KubernetesReconciler,
    MANAGED_BY, MANAGED_BY_LABEL, PolicyGrantCheck, ReconcilerSettings, Session,
};
use tka_core::policy::NamespacedGrant;
use tka_core::reconciler::{MappingHook, Reconciler};
use tka_core::{Clock, ClusterName, GrantMappingSpec, Identity, ManualClock, PolicySettings, Ttl};
use tka_server::kubernetes::{Bindability, Bindable, MappingFeed, drain, leftovers};
use tka_server::{ApiState, Backends, InMemoryMappings, ListenMode, Metrics, Server, ops_router};
use tka_testkit::cluster::{AccessPolicy, AccessRule, FakeCluster, ServedCluster};
use tka_testkit::suite::TestTailnet;
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use crate::support::{Client, Options, ScriptedTailnet, api_config, identity};

const NAMESPACE: &str = "tka-system";

/// alice holds `sre` (view + edit in team-a: bindable) and `ops` (admin in team-a: not
/// bindable).
fn alice() -> Identity {
    identity(
        "nALICE",
        "alice@example.com",
        &[],
        json!([{"role": "sre"}, {"role": "ops"}]),
    )
}

fn ci() -> Identity {
    identity(
        "nCI",
        "tagged-devices",
        &["tag:ci"],
        json!([{"role": "sre"}]),
    )
}

struct KubeServer {
    addr: std::net::SocketAddr,
    tailnet: Arc<ScriptedTailnet>,
    cluster: FakeCluster,
    _served: ServedCluster,
    client: kube::Client,
    clock: ManualClock,
    bindability: Arc<Bindability>,
    issuer: Arc<KubernetesIssuer>,
    shutdown: CancellationToken,
}

impl KubeServer {
    /// The server may bind `view` and `edit` but not `admin`.
    async fn start() -> Self {
        let clock = ManualClock::new(jiff::Timestamp::now());
        let cluster = FakeCluster::builder()
            .clock(Arc::new(clock.clone()))
            .build();
        cluster.set_access_policy(
            AccessPolicy::allow_all().deny(
                AccessRule::any()
                    .verb("bind")
                    .resource("clusterroles")
                    .name("admin"),
            ),
        );
        // The fake has the server's namespace already; the mappings bind in team-a.
        cluster
            .insert(
                json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "team-a"}}),
            )
            .unwrap();
        let served = cluster.serve_tcp().await.unwrap();
        let client = served.client().unwrap();
        let mappings: Api<GrantMapping> = Api::all(client.clone());
        for (name, spec) in [
            (
                "sre",
                GrantMappingSpec {
                    cluster_roles: vec!["view".into()],
                    namespaced: vec![NamespacedGrant {
                        cluster_role: "edit".into(),
                        namespaces: vec!["team-a".into()],
                    }],
                    ..GrantMappingSpec::default()
                },
            ),
            (
                "ops",
                GrantMappingSpec {
                    namespaced: vec![NamespacedGrant {
                        cluster_role: "admin".into(),
                        namespaces: vec!["team-a".into()],
                    }],
                    ..GrantMappingSpec::default()
                },
            ),
        ] {
            mappings
                .create(&PostParams::default(), &GrantMapping::new(name, spec))
                .await
                .unwrap();
        }

        let issuer = Arc::new(
            KubernetesIssuer::new(
                client.clone(),
                IssuerSettings::new(NAMESPACE),
                Arc::new(clock.clone()),
            )
            .unwrap(),
        );
        let store = Arc::new(InMemoryMappings::default());
        let bindability = Arc::new(Bindability::new(client.clone()));
        let feed = Arc::new(MappingFeed::new(store.clone(), bindability.clone()));
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
        for _ in 0..500 {
            if feed.is_synced() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(feed.is_synced(), "the GrantMapping feed never synced");

        let tailnet = Arc::new(ScriptedTailnet::default());
        let metrics = Arc::new(Metrics::new(None));
        let backends = Backends {
            identity: tailnet.clone(),
            issuer: issuer.clone(),
            mappings: store,
            clock: Arc::new(clock.clone()),
        };
        let state = ApiState::new(api_config(&Options::default()), backends, metrics.clone());
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
            _served: served,
            client,
            clock,
            bindability,
            issuer,
            shutdown,
        }
    }

    async fn connect(&self, who: Identity) -> Client {
        let stream = TcpStream::connect(self.addr).await.unwrap();
        self.tailnet.insert(stream.local_addr().unwrap(), who);
        Client::over(stream).await
    }

    fn labelled(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .cluster
            .list_labelled(&format!("{MANAGED_BY_LABEL}={MANAGED_BY}"))
            .unwrap()
            .iter()
            .map(|o| format!("{} {}", o["kind"], o["metadata"]["name"]))
            .collect();
        out.sort();
        out
    }

    async fn sessions(&self) -> Vec<Session> {
        Api::<Session>::all(self.client.clone())
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
    }

    fn reconciler(&self) -> KubernetesReconciler {
        self.reconciler_with(self.tailnet.clone())
    }

    /// The reconciler, asking `whois` about recorded addresses.
    fn reconciler_with(&self, whois: Arc<dyn IdentityProvider>) -> KubernetesReconciler {
        let check = PolicyGrantCheck::new(
            ClusterName::new("prod").unwrap(),
            PolicySettings::new(
                NAMESPACE,
                Ttl::parse("1h").unwrap(),
                Ttl::parse("8h").unwrap(),
            ),
        );
        KubernetesReconciler::new(
            self.client.clone(),
            ReconcilerSettings::new(NAMESPACE, "test"),
            Arc::new(self.clock.clone()),
            whois,
            Arc::new(check),
        )
        .with_mapping_hook(self.bindability.clone())
    }
}

impl Drop for KubeServer {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

#[tokio::test]
async fn a_login_creates_the_session_objects_and_logout_removes_them() {
    let server = KubeServer::start().await;
    assert!(server.labelled().is_empty());
    let mut alice = server.connect(alice()).await;
    let response = alice.login(r#"{"role":"sre"}"#).await;
    assert_eq!(response.status, 200, "{}", response.text());
    let body = response.json();
    assert_eq!(body["session"]["role"], "sre");
    let token = body["token"]["token"].as_str().unwrap().to_owned();
    assert!(server.cluster.token_is_valid(&token));

    // DESIGN §5: one Session, its ServiceAccount in the server's namespace, a
    // ClusterRoleBinding to view and a RoleBinding to edit in team-a, all labelled and owned.
    let sessions = server.sessions().await;
    assert_eq!(sessions.len(), 1);
    let session = &sessions[0];
    assert!(session.is_complete());
    assert_eq!(session.spec.identity.node_id, "nALICE");
    let labelled = server.labelled();
    let kinds: Vec<&str> = labelled
        .iter()
        .map(|l| l.split(' ').next().unwrap())
        .collect();
    assert_eq!(
        kinds,
        [
            "\"ClusterRoleBinding\"",
            "\"RoleBinding\"",
            "\"ServiceAccount\"",
            "\"Session\""
        ],
        "{labelled:?}"
    );
    let sa: Vec<ServiceAccount> = Api::namespaced(server.client.clone(), NAMESPACE)
        .list(&ListParams::default().labels(&format!("{MANAGED_BY_LABEL}={MANAGED_BY}")))
        .await
        .unwrap()
        .items;
    assert_eq!(sa.len(), 1);
    assert_eq!(sa[0].owner_references()[0].uid, session.uid().unwrap());
    let crb = server
        .cluster
        .objects("clusterrolebindings")
        .into_iter()
        .find(|b| b["metadata"]["labels"][MANAGED_BY_LABEL] == MANAGED_BY)
        .unwrap();
    assert_eq!(crb["roleRef"]["name"], "view");
    assert_eq!(crb["subjects"].as_array().unwrap().len(), 1);
    assert_eq!(crb["subjects"][0]["kind"], "ServiceAccount");
    assert_eq!(crb["subjects"][0]["namespace"], NAMESPACE);

    let gone = alice.delete("/api/v1/session").send().await;
    assert_eq!(gone.status, 204, "{}", gone.text());
    assert!(server.sessions().await.is_empty());
    assert!(server.labelled().is_empty(), "{:?}", server.labelled());
    assert!(!server.cluster.token_is_valid(&token));
}

/// The device's user changes between login and the next request (the node was re-authenticated
/// as someone else, or whois now answers for another user at that node): the new user gets no
/// token of the old session, and a login of theirs revokes it before making their own.
#[tokio::test]
async fn another_user_of_the_device_gets_no_token_of_the_old_session_and_a_login_replaces_it() {
    let server = KubeServer::start().await;
    let alice_id = alice().user.id;
    let mut alice = server.connect(alice()).await;
    let response = alice.login(r#"{"role":"sre"}"#).await;
    assert_eq!(response.status, 200, "{}", response.text());
    let alices_token = response.json()["token"]["token"]
        .as_str()
        .unwrap()
        .to_owned();
    // Allowed: alice refreshes her own session.
    let refreshed = alice.post("/api/v1/token").json("{}").send().await;
    assert_eq!(refreshed.status, 200, "{}", refreshed.text());

    // The same node, now another user with the same grant.
    let mallory = identity(
        "nALICE",
        "mallory@example.org",
        &[],
        json!([{"role": "sre"}]),
    );
    assert_ne!(mallory.user.id, alice_id);
    let mut device = server.connect(mallory).await;
    let refused = device.post("/api/v1/token").json("{}").send().await;
    assert_eq!(refused.problem_code(409), "identityChanged");
    assert!(server.cluster.token_is_valid(&alices_token));

    // A login as the new user ends alice's session (her token dies) and makes a new one.
    let response = device.login(r#"{"role":"sre"}"#).await;
    assert_eq!(response.status, 200, "{}", response.text());
    assert!(!server.cluster.token_is_valid(&alices_token));
    let sessions = server.sessions().await;
    let live: Vec<_> = sessions
        .iter()
        .filter(|s| s.metadata.deletion_timestamp.is_none())
        .collect();
    assert_eq!(live.len(), 1, "{sessions:?}");
    assert_eq!(live[0].spec.identity.login_name, "mallory@example.org");
    let token = response.json()["token"]["token"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(server.cluster.token_is_valid(&token));
}

#[tokio::test]
async fn a_mapping_the_server_may_not_bind_is_not_bindable_and_its_login_creates_nothing() {
    let server = KubeServer::start().await;

    // The reconciler reports it on the mapping.
    server
        .reconciler()
        .reconcile_once(server.clock.now())
        .await
        .unwrap();
    let mappings: Api<GrantMapping> = Api::all(server.client.clone());
    let ready = |m: &GrantMapping| {
        let c = m
            .status
            .as_ref()
            .unwrap()
            .conditions
            .iter()
            .find(|c| c.type_ == "Ready")
            .unwrap()
            .clone();
        (c.status, c.reason, c.message)
    };
    let ops = ready(&mappings.get("ops").await.unwrap());
    assert_eq!((ops.0.as_str(), ops.1.as_str()), ("False", "NotBindable"));
    assert!(ops.2.contains("bind ClusterRole admin"), "{}", ops.2);
    let sre = ready(&mappings.get("sre").await.unwrap());
    assert_eq!((sre.0.as_str(), sre.1.as_str()), ("True", "Ready"));

    // Its login is refused with a clear 403 and nothing is created ...
    let mut alice = server.connect(alice()).await;
    let refused = alice.login(r#"{"role":"ops"}"#).await;
    assert_eq!(refused.status, 403, "{}", refused.text());
    assert_eq!(refused.problem_code(403), "mappingUnusable");
    let detail = refused.json()["detail"].as_str().unwrap().to_owned();
    assert!(
        detail.contains("may not bind ClusterRole admin"),
        "{detail}"
    );
    assert!(server.sessions().await.is_empty());
    assert!(server.labelled().is_empty(), "{:?}", server.labelled());

    // ... while the bindable mapping works for the same caller.
    let allowed = alice.login(r#"{"role":"sre"}"#).await;
    assert_eq!(allowed.status, 200, "{}", allowed.text());
    assert_eq!(server.sessions().await.len(), 1);

    // Once the server's RBAC allows it (the allowlist grew), a re-check makes it Ready.
    server.cluster.set_access_policy(AccessPolicy::allow_all());
    let named: Vec<_> = mappings
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .map(|m| tka_core::reconciler::NamedMapping {
            name: m.name_any(),
            spec: m.spec,
        })
        .collect();
    server.bindability.refresh_all(&named).await;
    server
        .reconciler()
        .reconcile_once(server.clock.now())
        .await
        .unwrap();
    let ops = ready(&mappings.get("ops").await.unwrap());
    assert_eq!((ops.0.as_str(), ops.1.as_str()), ("True", "Ready"));
    assert!(
        named
            .iter()
            .all(|m| server.bindability.bindable(m) == Bindable::Yes)
    );
}

#[tokio::test]
async fn drain_leaves_no_session_and_no_labelled_object() {
    let server = KubeServer::start().await;
    for who in [alice(), ci()] {
        let mut c = server.connect(who).await;
        let r = c.login(r#"{"role":"sre"}"#).await;
        assert_eq!(r.status, 200, "{}", r.text());
    }
    // A stray labelled ServiceAccount whose session is gone, and a Session stuck in Terminating.
    server
        .cluster
        .insert(json!({
            "apiVersion": "v1", "kind": "ServiceAccount",
            "metadata": {"name": "tka-stray-abcde", "namespace": NAMESPACE,
                         "labels": {MANAGED_BY_LABEL: MANAGED_BY}}
        }))
        .unwrap();
    let sessions: Api<Session> = Api::all(server.client.clone());
    let mut copy = serde_json::to_value(&server.sessions().await[0]).unwrap();
    copy["metadata"] = json!({
        "name": "tka-stuck-zzzzz",
        "finalizers": ["tka.dev/cleanup"],
        "labels": copy["metadata"]["labels"].clone(),
    });
    let stuck: Session = serde_json::from_value(copy).unwrap();
    sessions
        .create(&PostParams::default(), &stuck)
        .await
        .unwrap();
    sessions
        .delete("tka-stuck-zzzzz", &Default::default())
        .await
        .unwrap();
    let terminating = sessions.get("tka-stuck-zzzzz").await.unwrap();
    assert!(
        terminating.is_deleting(),
        "the finalizer holds it in Terminating"
    );

    let before = leftovers(&server.client, NAMESPACE).await.unwrap();
    assert_eq!(before.sessions, 3);
    assert!(before.labelled >= 7, "{before:?}");

    let left = drain(
        &server.issuer,
        &server.client,
        NAMESPACE,
        Duration::from_secs(10),
    )
    .await
    .unwrap();
    assert!(left.is_empty(), "{left:?}");
    assert!(server.sessions().await.is_empty());
    assert!(server.labelled().is_empty(), "{:?}", server.labelled());
    // The GrantMappings (the operator's own objects) are untouched.
    assert_eq!(server.cluster.objects("grantmappings").len(), 2);
}

#[test]
fn the_crds_subcommand_prints_the_generated_crds() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tka-server"))
        .arg("crds")
        .output()
        .unwrap();
    assert!(out.status.success());
    let printed = String::from_utf8(out.stdout).unwrap();
    assert_eq!(
        printed.trim_end(),
        tka_core::kubernetes::crds_yaml().trim_end()
    );
    assert!(printed.contains("defaultTTL"));
}

/// `Ready` condition of a GrantMapping as (status, reason, message).
async fn ready_of(client: &kube::Client, name: &str) -> (String, String, String) {
    let mapping = Api::<GrantMapping>::all(client.clone())
        .get(name)
        .await
        .unwrap();
    let c = mapping
        .status
        .unwrap()
        .conditions
        .into_iter()
        .find(|c| c.type_ == "Ready")
        .unwrap();
    (c.status, c.reason, c.message)
}

/// DESIGN §4.3: a role aggregated into a mapped read-only role that gains a write rule turns the
/// mapping `ClusterWideWrite`, the reconciler revokes the live session that used it, and a new
/// login is refused with the per-namespace hint; the namespaced form of the same role is fine.
#[tokio::test]
async fn an_aggregated_role_gaining_a_write_makes_the_mapping_not_ready_and_revokes_its_session() {
    let server = KubeServer::start().await;
    let roles: Api<k8s_openapi::api::rbac::v1::ClusterRole> = Api::all(server.client.clone());
    let label = "example.com/aggregate-to-team-view";
    // team-view stores no rules: what it grants comes only from the roles it aggregates.
    for role in [
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
               "metadata": {"name": "team-view"},
               "aggregationRule": {"clusterRoleSelectors": [{"matchLabels": {label: "true"}}]}}),
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
               "metadata": {"name": "team-view-pods", "labels": {label: "true"}},
               "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]}]}),
    ] {
        roles
            .create(
                &PostParams::default(),
                &serde_json::from_value(role).unwrap(),
            )
            .await
            .unwrap();
    }
    let mappings: Api<GrantMapping> = Api::all(server.client.clone());
    for (name, spec) in [
        (
            "viewer",
            GrantMappingSpec {
                cluster_roles: vec!["team-view".into()],
                ..GrantMappingSpec::default()
            },
        ),
        (
            "team-editor",
            GrantMappingSpec {
                namespaced: vec![NamespacedGrant {
                    cluster_role: "team-view".into(),
                    namespaces: vec!["team-a".into()],
                }],
                ..GrantMappingSpec::default()
            },
        ),
    ] {
        mappings
            .create(&PostParams::default(), &GrantMapping::new(name, spec))
            .await
            .unwrap();
    }
    let carol = identity(
        "nCAROL",
        "carol@example.com",
        &[],
        json!([{"role": "viewer"}, {"role": "team-editor"}]),
    );
    // whois by the session's recorded address: the device is still in the tailnet, so only
    // the grant decides.
    let tailnet = TestTailnet::new();
    tailnet.join(&carol);
    let reconciler = server.reconciler_with(Arc::new(tailnet));

    // Read-only so far: Ready, and the login works (once the feed has seen the new objects).
    let mut client = server.connect(carol.clone()).await;
    let mut login = client.login(r#"{"role":"viewer"}"#).await;
    for _ in 0..200 {
        if login.status == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
        login = client.login(r#"{"role":"viewer"}"#).await;
    }
    assert_eq!(login.status, 200, "{}", login.text());
    let session = login.json()["session"]["name"].as_str().unwrap().to_owned();
    let report = reconciler.reconcile_once(server.clock.now()).await.unwrap();
    assert!(!report.removed_session(&session), "{report:?}");
    assert_eq!(
        ready_of(&server.client, "viewer").await.1,
        "Ready",
        "{report:?}"
    );

    // A role aggregated into team-view gains `create pods`.
    roles
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
                "metadata": {"name": "team-view-runner", "labels": {label: "true"}},
                "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["create"]}]
            }))
            .unwrap(),
        )
        .await
        .unwrap();
    let report = reconciler.reconcile_once(server.clock.now()).await.unwrap();
    assert!(report.removed_session(&session), "{report:?}");
    assert!(server.sessions().await.is_empty());
    assert!(server.labelled().is_empty(), "{:?}", server.labelled());
    let (status, reason, message) = ready_of(&server.client, "viewer").await;
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("False", "ClusterWideWrite")
    );
    assert!(message.contains("create pods"), "{message}");
    assert!(
        message.contains("namespaced: [{clusterRole: team-view, namespaces: [...]}]"),
        "{message}"
    );
    // The namespaced form of the same role stays ready.
    assert_eq!(ready_of(&server.client, "team-editor").await.1, "Ready");

    // The login is refused with the same words, once the feed has seen the change ...
    let mut refused = client.login(r#"{"role":"viewer"}"#).await;
    for _ in 0..200 {
        if refused.status == 403 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
        refused = client.login(r#"{"role":"viewer"}"#).await;
    }
    assert_eq!(refused.status, 403, "{}", refused.text());
    assert_eq!(refused.problem_code(403), "mappingUnusable");
    let detail = refused.json()["detail"].as_str().unwrap().to_owned();
    assert!(detail.contains(&message), "{detail}");
    assert!(server.sessions().await.is_empty());
    // ... and the namespaced form logs in.
    let allowed = client.login(r#"{"role":"team-editor"}"#).await;
    assert_eq!(allowed.status, 200, "{}", allowed.text());
}

/// The readiness check of the CRDs lists one object of each until the shared watches have
/// listed them; after that it answers from the watches, so the kubelet's probes make no LIST on
/// an idle server. Without permission to list GrantMappings it is not ready, and says how to fix
/// it.
#[tokio::test]
async fn the_crds_check_stops_listing_once_the_watches_have_listed() {
    use tka_server::ReadinessCheck as _;
    use tka_server::kubernetes::CrdsInstalled;
    use tka_testkit::cluster::{Fault, Verb};

    let cluster = FakeCluster::new();
    let served = cluster.serve_tcp().await.unwrap();
    let client = served.client().unwrap();
    let (watches, drive) = ClusterWatches::new(&client, NAMESPACE);
    let driving = tokio::spawn(drive);
    for _ in 0..500 {
        if watches.all_listed() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(watches.all_listed(), "the watches never listed");
    let check = CrdsInstalled::new(client.clone(), watches.clone());
    cluster.clear_calls();
    for _ in 0..5 {
        assert_eq!(check.check().await, Ok(()));
    }
    let lists: Vec<_> = cluster
        .calls()
        .into_iter()
        .filter(|c| c.verb == Verb::List)
        .collect();
    assert!(lists.is_empty(), "probes listed: {lists:?}");
    driving.abort();

    // An API server that fails every list of GrantMappings: the watches never list, the check
    // asks, and the answer says what to do.
    let refused = FakeCluster::new();
    refused.fail_always(Verb::List, "grantmappings", Fault::InternalError);
    let served = refused.serve_tcp().await.unwrap();
    let client = served.client().unwrap();
    let (watches, _drive) = ClusterWatches::new(&client, NAMESPACE);
    let check = CrdsInstalled::new(client, watches);
    let answer = check.check().await.unwrap_err();
    assert!(
        answer.contains("GrantMappings cannot be listed") && answer.contains("tka-server crds"),
        "{answer}"
    );
}
