//! The behaviour suite's fixture: a backend plus tka's issuer and reconciler wired to it, a small
//! tailnet of people and devices, the GrantMappings they use, and helpers that list every object
//! tka could have made so that cases assert on what exists, not on what tka says.

use std::collections::BTreeSet;
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;

use jiff::SignedDuration;
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRoleBinding, RoleBinding};
use kube::api::{ListParams, PostParams};
use kube::{Api, ResourceExt};
use serde_json::json;
use tka_core::domain::{LoginName, NodeInfo, UserInfo};
use tka_core::issuer::{CredentialIssuer, IssuedCredential};
use tka_core::kubernetes::{
    ClusterWatches, GrantMapping, IssuerSettings, KubernetesIssuer, KubernetesReconciler,
    MANAGED_BY, MANAGED_BY_LABEL, ReconcilerSettings, SESSION_LABEL, Session, SessionPhase,
    SuffixSource,
};
use tka_core::naming::NameSuffix;
use tka_core::policy::{
    Decision, GrantMappingSpec, NamespacedGrant, PolicyContext, PolicySettings, ResolveRequest,
    TtlRequest, resolve,
};
use tka_core::reconciler::{NamedMapping, PolicyGrantCheck, ReconcileReport, Reconciler};
use tka_core::{
    Clock, ClusterName, Identity, ManualClock, NodeId, ParsedGrants, RoleName, Tag, Ttl, UserId,
};

use super::{SuiteBackend, TestTailnet};

/// The namespaces the suite's mappings bind in.
pub const TEAM_NAMESPACES: [&str; 2] = ["team-a", "team-b"];

/// The people and devices of the suite's tailnet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Person {
    /// alice@example.com on her laptop: grants `sre` and `dev`.
    AliceLaptop,
    /// alice@example.com on her phone: the same grants, another device.
    AlicePhone,
    /// A tagged CI runner (`tag:ci`): grant `ci`.
    CiRunner,
}

impl Person {
    /// The identity whois reports for this device.
    pub fn identity(self) -> Identity {
        let (user, login, node, name, ip, tags, roles): (
            i64,
            &str,
            &str,
            &str,
            [u8; 4],
            &[&str],
            &[&str],
        ) = match self {
            Self::AliceLaptop => (
                1001,
                "alice@example.com",
                "nAliceLaptop1CNTRL",
                "alice-laptop.tail1234.ts.net",
                [100, 64, 0, 1],
                &[],
                &["sre", "dev"],
            ),
            Self::AlicePhone => (
                1001,
                "alice@example.com",
                "nAlicePhone2CNTRL",
                "alice-phone.tail1234.ts.net",
                [100, 64, 0, 2],
                &[],
                &["sre", "dev"],
            ),
            Self::CiRunner => (
                999,
                "tagged-devices",
                "nCiRunner3CNTRL",
                "ci-runner.tail1234.ts.net",
                [100, 64, 0, 9],
                &["tag:ci"],
                &["ci"],
            ),
        };
        Identity {
            user: UserInfo {
                id: UserId(user),
                login_name: LoginName::new(login).unwrap(),
                display_name: String::new(),
            },
            node: NodeInfo {
                stable_id: NodeId::new(node).unwrap(),
                name: name.to_owned(),
                addresses: vec![IpAddr::from(ip)],
                tags: tags.iter().map(|t| Tag::new(*t).unwrap()).collect(),
            },
            groups: vec![],
            capabilities: roles.iter().map(|r| json!({ "role": r })).collect(),
            compat_capabilities: vec![],
        }
    }

    /// The device's key.
    pub fn node(self) -> NodeId {
        self.identity().node.stable_id
    }
}

/// The GrantMappings of the suite: `sre` (view cluster-wide, edit in both team namespaces),
/// `dev` (edit in team-a) and `ci` (view cluster-wide).
pub fn suite_mappings() -> Vec<NamedMapping> {
    let edit_in = |namespaces: &[&str]| NamespacedGrant {
        cluster_role: "edit".to_owned(),
        namespaces: namespaces.iter().map(|n| (*n).to_owned()).collect(),
    };
    vec![
        NamedMapping {
            name: "sre".into(),
            spec: GrantMappingSpec {
                cluster_roles: vec!["view".into()],
                namespaced: vec![edit_in(&TEAM_NAMESPACES)],
                default_ttl: Some("1h".into()),
                max_ttl: Some("8h".into()),
                ..GrantMappingSpec::default()
            },
        },
        NamedMapping {
            name: "dev".into(),
            spec: GrantMappingSpec {
                namespaced: vec![edit_in(&["team-a"])],
                ..GrantMappingSpec::default()
            },
        },
        NamedMapping {
            name: "ci".into(),
            spec: GrantMappingSpec {
                cluster_roles: vec!["view".into()],
                ..GrantMappingSpec::default()
            },
        },
    ]
}

/// The suite's mappings as a login sees them: every one ready (they bind only roles the server
/// may bind, and only `view` cluster-wide).
pub fn suite_views() -> Vec<tka_core::MappingView> {
    suite_mappings()
        .into_iter()
        .map(|m| tka_core::MappingView::new(RoleName::new(&m.name).unwrap(), m.spec))
        .collect()
}

/// The cluster name the suite's policy resolves for.
pub const SUITE_CLUSTER: &str = "suite";

/// The policy settings of the suite's server in `namespace`: 1h default, 8h limit.
pub fn suite_policy(namespace: &str) -> PolicySettings {
    PolicySettings::new(
        namespace,
        Ttl::parse("1h").unwrap(),
        Ttl::parse("8h").unwrap(),
    )
}

/// The real re-validation (the policy resolver) for the suite's server in `namespace`.
pub fn suite_grant_check(namespace: &str) -> PolicyGrantCheck {
    PolicyGrantCheck::new(
        ClusterName::new(SUITE_CLUSTER).unwrap(),
        suite_policy(namespace),
    )
}

/// Every object tka could have made, as listed from the API server.
#[derive(Debug, Clone, Default)]
pub struct LabelledObjects {
    /// Every Session (labelled or not).
    pub sessions: Vec<Session>,
    /// ServiceAccounts labelled `managed-by=tka`, in every namespace.
    pub service_accounts: Vec<ServiceAccount>,
    /// ClusterRoleBindings labelled `managed-by=tka`.
    pub cluster_role_bindings: Vec<ClusterRoleBinding>,
    /// RoleBindings labelled `managed-by=tka`, in every namespace.
    pub role_bindings: Vec<RoleBinding>,
}

impl LabelledObjects {
    /// Whether nothing at all is left.
    pub fn is_empty(&self) -> bool {
        self.sessions.is_empty()
            && self.service_accounts.is_empty()
            && self.cluster_role_bindings.is_empty()
            && self.role_bindings.is_empty()
    }

    /// A session by name.
    pub fn session(&self, name: &str) -> Option<&Session> {
        self.sessions.iter().find(|s| s.name_any() == name)
    }

    /// The children of a session (by its label): ServiceAccounts, ClusterRoleBindings,
    /// RoleBindings.
    pub fn children_of(
        &self,
        session: &str,
    ) -> (
        Vec<&ServiceAccount>,
        Vec<&ClusterRoleBinding>,
        Vec<&RoleBinding>,
    ) {
        let of = |labels: &std::collections::BTreeMap<String, String>| {
            labels.get(SESSION_LABEL).map(String::as_str) == Some(session)
        };
        (
            self.service_accounts
                .iter()
                .filter(|o| of(o.labels()))
                .collect(),
            self.cluster_role_bindings
                .iter()
                .filter(|o| of(o.labels()))
                .collect(),
            self.role_bindings
                .iter()
                .filter(|o| of(o.labels()))
                .collect(),
        )
    }

    /// `(kind, namespace/name, roleRef)` of every binding, for readable assertions.
    pub fn binding_names(&self) -> BTreeSet<String> {
        self.cluster_role_bindings
            .iter()
            .map(|b| format!("ClusterRoleBinding {} -> {}", b.name_any(), b.role_ref.name))
            .chain(self.role_bindings.iter().map(|b| {
                format!(
                    "RoleBinding {}/{} -> {}",
                    b.namespace().unwrap_or_default(),
                    b.name_any(),
                    b.role_ref.name
                )
            }))
            .collect()
    }

    /// Asserts the state after a failure and one reconcile pass: either exactly one complete
    /// session with exactly its objects, or nothing labelled at all.
    pub fn assert_complete_or_nothing(&self, context: &str) {
        if self.sessions.is_empty() {
            assert!(
                self.is_empty(),
                "{context}: no session but labelled objects remain: {:?} {:?}",
                self.service_accounts
                    .iter()
                    .map(ResourceExt::name_any)
                    .collect::<Vec<_>>(),
                self.binding_names()
            );
            return;
        }
        assert_eq!(self.sessions.len(), 1, "{context}: more than one session");
        let session = &self.sessions[0];
        let name = session.name_any();
        assert!(
            session.is_complete(),
            "{context}: session {name} is not complete: {:?}",
            session.status
        );
        assert!(
            !session.is_deleting(),
            "{context}: session {name} is being deleted"
        );
        assert_eq!(session.phase(), Some(SessionPhase::Active), "{context}");
        let uid = session.uid();
        let (sas, crbs, rbs) = self.children_of(&name);
        assert_eq!(sas.len(), 1, "{context}: ServiceAccounts of {name}");
        assert_eq!(
            sas.len(),
            self.service_accounts.len(),
            "{context}: foreign ServiceAccounts"
        );
        assert_eq!(
            crbs.len(),
            self.cluster_role_bindings.len(),
            "{context}: foreign ClusterRoleBindings"
        );
        assert_eq!(
            rbs.len(),
            self.role_bindings.len(),
            "{context}: foreign RoleBindings"
        );
        let owned_by_session =
            |refs: &[k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference]| {
                refs.iter()
                    .any(|o| Some(&o.uid) == uid.as_ref() && o.controller == Some(true))
            };
        assert!(owned_by_session(sas[0].owner_references()), "{context}");
        let mut want: BTreeSet<String> = session
            .spec
            .cluster_roles
            .iter()
            .map(|r| format!("cluster {r}"))
            .collect();
        want.extend(
            session
                .spec
                .namespaced
                .iter()
                .map(|b| format!("{} {}", b.namespace, b.cluster_role)),
        );
        let mut have = BTreeSet::new();
        for b in &crbs {
            assert!(owned_by_session(b.owner_references()), "{context}");
            have.insert(format!("cluster {}", b.role_ref.name));
        }
        for b in &rbs {
            assert!(owned_by_session(b.owner_references()), "{context}");
            have.insert(format!(
                "{} {}",
                b.namespace().unwrap_or_default(),
                b.role_ref.name
            ));
        }
        assert_eq!(have, want, "{context}: bindings of {name}");
    }
}

/// What every case starts from: a way to get fresh backends, each wired into a [`Harness`]. A
/// case takes one harness ([`Fixture::harness`]); one that replays a scenario on fresh backends
/// calls it once per run. The constructor's bounds live here, so each case needs only
/// `fixture: Fixture<B>`.
pub struct Fixture<B> {
    make: Box<dyn Fn() -> Pin<Box<dyn Future<Output = B>>>>,
}

impl<B: SuiteBackend> Fixture<B> {
    /// A fixture whose backends come from `make`.
    pub fn new<F, Fut>(make: F) -> Self
    where
        F: Fn() -> Fut + 'static,
        Fut: Future<Output = B> + 'static,
    {
        Self {
            make: Box::new(move || Box::pin(make())),
        }
    }

    /// A fresh backend, wired ([`Harness::new`]).
    pub async fn harness(&self) -> Harness<B> {
        Harness::new((self.make)().await).await
    }
}

/// Keeps the watches behind [`Harness::issuer_with_store`] running; stops them when dropped.
#[derive(Debug)]
pub struct StoreGuard(tokio::task::JoinHandle<()>, ClusterWatches);

impl StoreGuard {
    /// The watches this guard keeps running.
    pub fn watches(&self) -> &ClusterWatches {
        &self.1
    }
}

impl Drop for StoreGuard {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A backend with tka wired to it.
pub struct Harness<B: SuiteBackend> {
    /// The backend.
    pub backend: B,
    /// A client of the backend.
    pub client: kube::Client,
    /// tka's clock.
    pub clock: ManualClock,
    /// The tailnet whois answers from.
    pub tailnet: Arc<TestTailnet>,
    /// The issuer under test.
    pub issuer: KubernetesIssuer,
    /// The reconciler under test.
    pub reconciler: KubernetesReconciler,
    /// The server's namespace.
    pub namespace: String,
}

impl<B: SuiteBackend> Harness<B> {
    /// Wires tka to `backend`: creates the team namespaces and the suite's GrantMappings, and
    /// puts the suite's people on the tailnet.
    pub async fn new(backend: B) -> Self {
        let client = backend.client().await;
        let clock = backend.clock();
        let namespace = backend.namespace().to_owned();
        let tailnet = Arc::new(TestTailnet::new());
        for person in [Person::AliceLaptop, Person::AlicePhone, Person::CiRunner] {
            tailnet.join(&person.identity());
        }
        let namespaces: Api<Namespace> = Api::all(client.clone());
        for ns in TEAM_NAMESPACES {
            let object: Namespace =
                serde_json::from_value(json!({"metadata": {"name": ns}})).unwrap();
            if namespaces.get_opt(ns).await.unwrap().is_none() {
                namespaces
                    .create(&PostParams::default(), &object)
                    .await
                    .unwrap();
            }
        }
        let mappings: Api<GrantMapping> = Api::all(client.clone());
        for m in suite_mappings() {
            let object = GrantMapping::new(&m.name, m.spec);
            if mappings.get_opt(&m.name).await.unwrap().is_none() {
                mappings
                    .create(&PostParams::default(), &object)
                    .await
                    .unwrap();
            }
        }
        let issuer = Self::make_issuer(&client, &clock, &namespace, None);
        let reconciler = Self::make_reconciler(&client, &clock, &namespace, &tailnet, "suite-0");
        Self {
            backend,
            client,
            clock,
            tailnet,
            issuer,
            reconciler,
            namespace,
        }
    }

    fn make_issuer(
        client: &kube::Client,
        clock: &ManualClock,
        namespace: &str,
        suffixes: Option<SuffixSource>,
    ) -> KubernetesIssuer {
        let issuer = KubernetesIssuer::new(
            client.clone(),
            IssuerSettings::new(namespace),
            Arc::new(clock.clone()),
        )
        .unwrap();
        match suffixes {
            Some(s) => issuer.with_suffixes(s),
            None => issuer,
        }
    }

    fn make_reconciler(
        client: &kube::Client,
        clock: &ManualClock,
        namespace: &str,
        tailnet: &Arc<TestTailnet>,
        holder: &str,
    ) -> KubernetesReconciler {
        KubernetesReconciler::new(
            client.clone(),
            ReconcilerSettings::new(namespace, holder),
            Arc::new(clock.clone()),
            tailnet.clone(),
            Arc::new(suite_grant_check(namespace)),
        )
    }

    /// Another issuer on the same cluster, with its own source of name suffixes.
    pub fn issuer_with_suffixes(&self, suffixes: SuffixSource) -> KubernetesIssuer {
        Self::make_issuer(&self.client, &self.clock, &self.namespace, Some(suffixes))
    }

    /// Another issuer on the same cluster that finds a device's sessions in a watched Session
    /// store of its own, as a server replica does, with random name suffixes. The store's watch
    /// runs until the returned guard is dropped; the issuer lists from the cluster until the
    /// store holds a full list.
    pub fn issuer_with_store(&self) -> (KubernetesIssuer, StoreGuard) {
        let (watches, drive) = ClusterWatches::new(&self.client);
        let issuer = Self::make_issuer(
            &self.client,
            &self.clock,
            &self.namespace,
            Some(Arc::new(|| NameSuffix::from_random(rand::random()))),
        )
        .with_session_store(watches.sessions.clone());
        (issuer, StoreGuard(tokio::spawn(drive), watches))
    }

    /// Another reconciler on the same cluster (a second replica, or a restart).
    pub fn another_reconciler(&self, holder: &str) -> KubernetesReconciler {
        Self::make_reconciler(
            &self.client,
            &self.clock,
            &self.namespace,
            &self.tailnet,
            holder,
        )
    }

    /// The decision policy makes for `role` with `ttl`, now: alice's laptop for `sre` and
    /// `dev`, the CI runner for `ci`.
    pub fn decision(&self, role: &str, ttl: &str) -> Decision {
        let who = if role == "ci" {
            Person::CiRunner
        } else {
            Person::AliceLaptop
        };
        self.decision_for(who, role, ttl)
    }

    /// The decision the policy resolver makes for `who` asking for `role` with `ttl`, now,
    /// against the suite's GrantMappings; panics on a denial.
    pub fn decision_for(&self, who: Person, role: &str, ttl: &str) -> Decision {
        let identity = who.identity();
        let grants = ParsedGrants::from_identity(&identity);
        let views = suite_views();
        let settings = suite_policy(&self.namespace);
        let cluster = ClusterName::new(SUITE_CLUSTER).unwrap();
        let role = RoleName::new(role).unwrap();
        resolve(&ResolveRequest {
            context: PolicyContext {
                identity: &identity,
                grants: &grants,
                mappings: &views,
                cluster: &cluster,
                settings: &settings,
            },
            role: Some(&role),
            ttl: Some(TtlRequest::Text(ttl)),
            now: self.clock.now(),
        })
        .unwrap_or_else(|denial| panic!("policy denied {who:?} {role}: {}", denial.message()))
    }

    /// Logs `who` in with `role` for `ttl`; panics if that fails.
    pub async fn login(&self, who: Person, role: &str, ttl: &str) -> IssuedCredential {
        self.issuer
            .issue(&who.identity(), &self.decision_for(who, role, ttl))
            .await
            .unwrap_or_else(|e| panic!("login of {who:?} as {role} failed: {e}"))
    }

    /// Moves tka's clock (and the fake's) forward.
    pub fn advance(&self, by: SignedDuration) {
        self.clock.advance(by);
    }

    /// One reconcile pass as of now; panics if the pass fails as a whole.
    pub async fn reconcile(&self) -> ReconcileReport {
        self.reconciler
            .reconcile_once(self.clock.now())
            .await
            .unwrap_or_else(|e| panic!("reconcile pass failed: {e}"))
    }

    /// Lists every Session and every labelled ServiceAccount and binding.
    pub async fn objects(&self) -> LabelledObjects {
        let labelled = ListParams::default().labels(&format!("{MANAGED_BY_LABEL}={MANAGED_BY}"));
        LabelledObjects {
            sessions: Api::<Session>::all(self.client.clone())
                .list(&ListParams::default())
                .await
                .unwrap()
                .items,
            service_accounts: Api::<ServiceAccount>::all(self.client.clone())
                .list(&labelled)
                .await
                .unwrap()
                .items,
            cluster_role_bindings: Api::<ClusterRoleBinding>::all(self.client.clone())
                .list(&labelled)
                .await
                .unwrap()
                .items,
            role_bindings: Api::<RoleBinding>::all(self.client.clone())
                .list(&labelled)
                .await
                .unwrap()
                .items,
        }
    }

    /// Whether the token still authenticates, when the backend can tell.
    pub async fn token_works(&self, credential: &IssuedCredential) -> Option<bool> {
        self.backend
            .token_authenticates(credential.token.expose())
            .await
    }
}
