//! The cases of the behaviour suite. Each takes a constructor of fresh backends, drives tka's
//! issuer and reconciler, and asserts by listing the objects in the cluster.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{DeleteParams, PostParams};
use kube::{Api, ResourceExt};
use serde_json::json;
use tka_core::Clock;
use tka_core::issuer::{CredentialIssuer, IssueError, IssueOutcome, IssuedCredential};
use tka_core::kubernetes::{
    CONDITION_READY, FINALIZER, GrantMapping, KubernetesReconciler, LeaderLease, LeaseSettings,
    MANAGED_BY, MANAGED_BY_LABEL, NODE_LABEL, REASON_CLUSTER_ROLE_MISSING,
    REASON_FORBIDDEN_NAMESPACE, REVISION_LABEL, ReconcilerSettings, SESSION_LABEL, Session,
    SessionIdentity, SessionPhase, SessionSpec, SessionStatus, USER_LABEL,
};
use tka_core::naming::{NameSuffix, node_label, user_label};
use tka_core::reconciler::{ObjectKind, Reconciler, RemovalReason};

use super::harness::{Harness, LabelledObjects, Person};
use super::{FailureMode, SuiteBackend, WriteStep, WriteVerb};

/// The reconciler's default grace period, plus a second.
/// Well past the reconciler's 60 s grace. The margin covers a real API server, which stamps
/// `creationTimestamp` with its own time: that runs ahead of the paused test clock by the real
/// seconds a case has taken so far.
fn past_grace() -> SignedDuration {
    SignedDuration::from_secs(90)
}

/// Checks everything DESIGN §5 says about one device's session and its objects.
fn assert_session_objects(
    objects: &LabelledObjects,
    credential: &IssuedCredential,
    who: Person,
    namespace: &str,
    name_prefix: &str,
    cluster_roles: &[&str],
    namespaced: &[(&str, &str)],
) {
    let identity = who.identity();
    let name = credential.session.as_str();
    assert!(
        name.starts_with(name_prefix),
        "{name} should start with {name_prefix}"
    );
    assert!(
        name.len() <= 63 && tka_core::domain::is_dns1123_label(name),
        "{name}"
    );
    let session = objects.session(name).expect("the session exists");
    let uid = session.uid().expect("a uid");

    let labels = session.labels();
    assert_eq!(
        labels.get(MANAGED_BY_LABEL).map(String::as_str),
        Some(MANAGED_BY)
    );
    assert_eq!(
        labels.get(NODE_LABEL),
        Some(&node_label(&identity.node.stable_id))
    );
    assert_eq!(labels.get(USER_LABEL), Some(&user_label(identity.user.id)));
    assert!(session.finalizers().iter().any(|f| f == FINALIZER));
    assert_eq!(
        session.spec.identity.node_id,
        identity.node.stable_id.as_str()
    );
    assert_eq!(
        session.spec.identity.login_name,
        identity.user.login_name.as_str()
    );
    assert_eq!(session.spec.identity.user_id, identity.user.id.0);
    assert_eq!(
        session.spec.identity.tags,
        identity
            .node
            .tags
            .iter()
            .map(|t| t.as_str().to_owned())
            .collect::<Vec<_>>()
    );
    assert_eq!(session.spec.expires_at.0, credential.session_expires_at);
    assert!(session.is_complete(), "status: {:?}", session.status);
    let status = session.status.clone().unwrap_or_default();
    assert_eq!(status.last_token_id, credential.token_id);
    assert_eq!(credential.service_account, format!("{namespace}/{name}"));

    let (sas, crbs, rbs) = objects.children_of(name);
    assert_eq!(sas.len(), 1, "exactly one ServiceAccount");
    let sa = sas[0];
    assert_eq!(sa.name_any(), name);
    assert_eq!(sa.namespace().as_deref(), Some(namespace));
    for child_labels in [sa.labels()]
        .into_iter()
        .chain(crbs.iter().map(|b| b.labels()))
        .chain(rbs.iter().map(|b| b.labels()))
    {
        assert_eq!(
            child_labels.get(MANAGED_BY_LABEL).map(String::as_str),
            Some(MANAGED_BY)
        );
        assert_eq!(child_labels.get(NODE_LABEL), labels.get(NODE_LABEL));
        assert_eq!(child_labels.get(USER_LABEL), labels.get(USER_LABEL));
        assert_eq!(
            child_labels.get(SESSION_LABEL).map(String::as_str),
            Some(name)
        );
    }
    let owners = [sa.owner_references()]
        .into_iter()
        .chain(crbs.iter().map(|b| b.owner_references()))
        .chain(rbs.iter().map(|b| b.owner_references()));
    for refs in owners {
        assert_eq!(refs.len(), 1, "one owner");
        assert_eq!(refs[0].kind, "Session");
        assert_eq!(refs[0].api_version, "tka.dev/v1alpha1");
        assert_eq!(refs[0].name, name);
        assert_eq!(refs[0].uid, uid);
        assert_eq!(refs[0].controller, Some(true));
    }

    let subject_is_the_sa = |subjects: &Option<Vec<k8s_openapi::api::rbac::v1::Subject>>| {
        let subjects = subjects.as_deref().unwrap_or_default();
        subjects.len() == 1
            && subjects[0].kind == "ServiceAccount"
            && subjects[0].name == name
            && subjects[0].namespace.as_deref() == Some(namespace)
    };
    let mut have_cluster: Vec<String> = Vec::new();
    for b in &crbs {
        assert!(
            b.name_any().starts_with(&format!("{name}.")),
            "{}",
            b.name_any()
        );
        assert_eq!(b.role_ref.kind, "ClusterRole");
        assert!(subject_is_the_sa(&b.subjects), "{:?}", b.subjects);
        assert_eq!(b.labels().get(REVISION_LABEL), Some(&session.spec.revision));
        have_cluster.push(b.role_ref.name.clone());
    }
    have_cluster.sort();
    let mut want_cluster: Vec<String> = cluster_roles.iter().map(|r| (*r).to_owned()).collect();
    want_cluster.sort();
    assert_eq!(have_cluster, want_cluster);
    let mut have_ns: Vec<(String, String)> = Vec::new();
    for b in &rbs {
        assert!(
            b.name_any().starts_with(&format!("{name}.")),
            "{}",
            b.name_any()
        );
        assert_eq!(b.role_ref.kind, "ClusterRole");
        assert!(subject_is_the_sa(&b.subjects), "{:?}", b.subjects);
        have_ns.push((b.namespace().unwrap_or_default(), b.role_ref.name.clone()));
    }
    have_ns.sort();
    let mut want_ns: Vec<(String, String)> = namespaced
        .iter()
        .map(|(ns, r)| ((*ns).to_owned(), (*r).to_owned()))
        .collect();
    want_ns.sort();
    assert_eq!(have_ns, want_ns);
    assert_eq!(
        status.bindings.len(),
        crbs.len() + rbs.len(),
        "the status records every binding"
    );
}

/// The (name, uid) of every binding of a session.
fn binding_ids(objects: &LabelledObjects, session: &str) -> BTreeSet<(String, String)> {
    let (_, crbs, rbs) = objects.children_of(session);
    crbs.iter()
        .map(|b| (b.name_any(), b.uid().unwrap_or_default()))
        .chain(
            rbs.iter()
                .map(|b| (b.name_any(), b.uid().unwrap_or_default())),
        )
        .collect()
}

fn sa_uid(objects: &LabelledObjects, session: &str) -> Option<String> {
    objects
        .children_of(session)
        .0
        .first()
        .and_then(|sa| sa.uid())
}

/// A user device and a tagged device each get exactly the objects DESIGN §5 names.
pub async fn a_user_device_and_a_tagged_device_get_the_objects_of_design<B, F, Fut>(make: F)
where
    B: SuiteBackend,
    F: Fn() -> Fut,
    Fut: Future<Output = B>,
{
    let h = Harness::new(make().await).await;
    let start = h.clock.now();
    let alice = h.login(Person::AliceLaptop, "sre", "2h").await;
    let ci = h.login(Person::CiRunner, "ci", "30m").await;
    assert_eq!(alice.outcome, IssueOutcome::Created);
    assert_eq!(ci.outcome, IssueOutcome::Created);

    let objects = h.objects().await;
    assert_eq!(objects.sessions.len(), 2);
    assert_session_objects(
        &objects,
        &alice,
        Person::AliceLaptop,
        &h.namespace,
        "tka-alice-example-com-",
        &["view"],
        &[("team-a", "edit"), ("team-b", "edit")],
    );
    assert_session_objects(
        &objects,
        &ci,
        Person::CiRunner,
        &h.namespace,
        "tka-ci-",
        &["view"],
        &[],
    );
    assert_eq!(objects.service_accounts.len(), 2);
    assert_eq!(objects.cluster_role_bindings.len(), 2);
    assert_eq!(objects.role_bindings.len(), 2);

    // The token lives 15 minutes, the session hours: refreshes happen within the session.
    for (credential, session_len) in [(&alice, 2 * 3600), (&ci, 30 * 60)] {
        assert_eq!(
            credential.session_expires_at.as_second(),
            start.as_second() + session_len
        );
        let token_len = credential.token_expires_at.duration_since(start).as_secs();
        // A real API server counts the lifetime from its own time, which has moved on from
        // `start` by the real seconds since.
        let late = if h.backend.server_follows_clock() {
            0
        } else {
            Timestamp::now().duration_since(start).as_secs().max(0) + 1
        };
        assert!(
            (600..=900 + late).contains(&token_len),
            "token lives {token_len}s"
        );
        assert!(credential.token_expires_at < credential.session_expires_at);
        assert_ne!(h.token_works(credential).await, Some(false));
    }
    assert_ne!(alice.token.expose(), ci.token.expose());
}

/// Logging in again with the same role extends the session and keeps every object.
pub async fn relogin_with_the_same_role_extends_the_session<B, F, Fut>(make: F)
where
    B: SuiteBackend,
    F: Fn() -> Fut,
    Fut: Future<Output = B>,
{
    let h = Harness::new(make().await).await;
    let first = h.login(Person::AliceLaptop, "sre", "1h").await;
    let before = h.objects().await;
    h.advance(SignedDuration::from_mins(20));
    let second = h.login(Person::AliceLaptop, "sre", "2h").await;
    assert_eq!(second.outcome, IssueOutcome::Extended);
    assert_eq!(second.session, first.session);
    assert!(second.session_expires_at > first.session_expires_at);
    assert_eq!(
        second.session_expires_at.as_second(),
        (h.clock.now() + SignedDuration::from_hours(2)).as_second()
    );
    assert_ne!(second.token.expose(), first.token.expose());

    let after = h.objects().await;
    let name = first.session.as_str();
    assert_eq!(after.sessions.len(), 1);
    assert_eq!(
        after.session(name).unwrap().spec.expires_at.0,
        second.session_expires_at
    );
    assert_eq!(
        sa_uid(&after, name),
        sa_uid(&before, name),
        "same ServiceAccount"
    );
    assert_eq!(
        binding_ids(&after, name),
        binding_ids(&before, name),
        "same bindings"
    );
}

/// A role change creates bindings under new names and deletes the old ones.
pub async fn a_role_change_gets_new_bindings_and_deletes_the_old<B, F, Fut>(make: F)
where
    B: SuiteBackend,
    F: Fn() -> Fut,
    Fut: Future<Output = B>,
{
    let h = Harness::new(make().await).await;
    let sre = h.login(Person::AliceLaptop, "sre", "1h").await;
    let name = sre.session.to_string();
    let as_sre = h.objects().await;
    let sre_bindings = binding_ids(&as_sre, &name);
    assert_eq!(sre_bindings.len(), 3);

    let dev = h.login(Person::AliceLaptop, "dev", "1h").await;
    assert_eq!(dev.outcome, IssueOutcome::RoleChanged);
    assert_eq!(dev.session, sre.session);
    assert_eq!(dev.role.as_str(), "dev");
    let as_dev = h.objects().await;
    assert_eq!(
        sa_uid(&as_dev, &name),
        sa_uid(&as_sre, &name),
        "same ServiceAccount"
    );
    let dev_bindings = binding_ids(&as_dev, &name);
    assert_eq!(dev_bindings.len(), 1);
    let old_names: BTreeSet<&String> = sre_bindings.iter().map(|(n, _)| n).collect();
    assert!(
        dev_bindings.iter().all(|(n, _)| !old_names.contains(n)),
        "fresh names"
    );
    assert_eq!(
        as_dev.cluster_role_bindings.len(),
        0,
        "the old view binding is gone"
    );
    assert_eq!(
        as_dev.binding_names().len(),
        1,
        "only the new binding is left: {:?}",
        as_dev.binding_names()
    );
    let session = as_dev.session(&name).unwrap();
    assert_eq!(session.spec.role, "dev");
    assert_eq!(
        as_dev.role_bindings[0].namespace().as_deref(),
        Some("team-a")
    );
    assert_eq!(as_dev.role_bindings[0].role_ref.name, "edit");

    // And back: names are fresh again, never those of the first sre bindings.
    let again = h.login(Person::AliceLaptop, "sre", "1h").await;
    assert_eq!(again.outcome, IssueOutcome::RoleChanged);
    let as_sre_again = h.objects().await;
    let again_bindings = binding_ids(&as_sre_again, &name);
    assert_eq!(again_bindings.len(), 3);
    let dev_names: BTreeSet<&String> = dev_bindings.iter().map(|(n, _)| n).collect();
    assert!(
        again_bindings
            .iter()
            .all(|(n, _)| !old_names.contains(n) && !dev_names.contains(n))
    );
}

/// Refresh gives a new token for a live session and refuses one that is over.
pub async fn refresh_mints_tokens_only_for_a_live_session<B, F, Fut>(make: F)
where
    B: SuiteBackend,
    F: Fn() -> Fut,
    Fut: Future<Output = B>,
{
    let h = Harness::new(make().await).await;
    let laptop = Person::AliceLaptop.identity();
    assert!(matches!(
        h.issuer.refresh(&laptop).await,
        Err(IssueError::NoSession)
    ));

    let login = h.login(Person::AliceLaptop, "sre", "1h").await;
    h.advance(SignedDuration::from_mins(5));
    let refreshed = h.issuer.refresh(&laptop).await.unwrap();
    assert_eq!(refreshed.outcome, IssueOutcome::Refreshed);
    assert_eq!(refreshed.session, login.session);
    assert_eq!(refreshed.session_expires_at, login.session_expires_at);
    assert_ne!(refreshed.token.expose(), login.token.expose());
    if h.backend.server_follows_clock() {
        assert!(refreshed.token_expires_at > login.token_expires_at);
    } else {
        // A real server's token expiry follows real time (whole seconds), not the test clock.
        assert!(refreshed.token_expires_at >= login.token_expires_at);
    }
    let objects = h.objects().await;
    let status = objects
        .session(login.session.as_str())
        .unwrap()
        .status
        .clone()
        .unwrap();
    assert_eq!(status.last_token_id, refreshed.token_id);
    assert_eq!(
        status.last_token_expires_at.map(|t| t.0),
        Some(refreshed.token_expires_at)
    );

    // Near the end the token stops at the floor of 600 s, never less.
    h.advance(SignedDuration::from_mins(52));
    let late = h.issuer.refresh(&laptop).await.unwrap();
    if h.backend.server_follows_clock() {
        let lifetime = late.token_expires_at.as_second() - h.clock.now().as_second();
        assert_eq!(lifetime, 600);
        assert!(late.token_expires_at > late.session_expires_at);
    }

    // Over: refused with a reason, and no token.
    h.advance(SignedDuration::from_mins(4));
    let expired = h.issuer.refresh(&laptop).await;
    assert!(
        matches!(expired, Err(IssueError::Expired { .. })),
        "{expired:?}"
    );

    // A revoked session is refused too; the other device never had one.
    let again = h.login(Person::AliceLaptop, "sre", "1h").await;
    assert!(h.issuer.refresh(&laptop).await.is_ok());
    h.issuer.revoke(&Person::AliceLaptop.node()).await.unwrap();
    let revoked = h.issuer.refresh(&laptop).await;
    assert!(
        revoked.as_ref().is_err_and(IssueError::needs_login),
        "{revoked:?}"
    );
    assert!(matches!(
        h.issuer.refresh(&Person::AlicePhone.identity()).await,
        Err(IssueError::NoSession)
    ));
    assert_ne!(again.session, login.session);
}

/// Logout deletes everything at once (no reconciler involved); revoking again is fine.
pub async fn logout_revokes_inline_and_is_idempotent<B, F, Fut>(make: F)
where
    B: SuiteBackend,
    F: Fn() -> Fut,
    Fut: Future<Output = B>,
{
    let h = Harness::new(make().await).await;
    let credential = h.login(Person::AliceLaptop, "sre", "1h").await;
    let ci = h.login(Person::CiRunner, "ci", "1h").await;
    assert_ne!(h.token_works(&credential).await, Some(false));

    let revoked = h.issuer.revoke(&Person::AliceLaptop.node()).await.unwrap();
    assert_eq!(revoked, vec![credential.session.clone()]);
    let objects = h.objects().await;
    assert!(objects.session(credential.session.as_str()).is_none());
    let (sas, crbs, rbs) = objects.children_of(credential.session.as_str());
    assert!(sas.is_empty() && crbs.is_empty() && rbs.is_empty());
    assert_ne!(
        h.token_works(&credential).await,
        Some(true),
        "the token died with its ServiceAccount"
    );
    assert!(
        h.issuer
            .describe(&Person::AliceLaptop.node())
            .await
            .unwrap()
            .is_none()
    );

    // Someone else's session is untouched.
    assert!(objects.session(ci.session.as_str()).is_some());
    assert_eq!(objects.children_of(ci.session.as_str()).0.len(), 1);

    // Revoking nothing is fine; logging in again works and gets a new name.
    assert!(
        h.issuer
            .revoke(&Person::AliceLaptop.node())
            .await
            .unwrap()
            .is_empty()
    );
    let again = h.login(Person::AliceLaptop, "sre", "1h").await;
    assert_ne!(again.session, credential.session);
    assert_eq!(
        h.issuer
            .describe(&Person::AliceLaptop.node())
            .await
            .unwrap()
            .map(|s| s.name),
        Some(again.session)
    );
}

/// Two devices of one person have independent sessions.
pub async fn two_devices_of_one_user_have_independent_sessions<B, F, Fut>(make: F)
where
    B: SuiteBackend,
    F: Fn() -> Fut,
    Fut: Future<Output = B>,
{
    let h = Harness::new(make().await).await;
    let laptop = h.login(Person::AliceLaptop, "sre", "1h").await;
    let phone = h.login(Person::AlicePhone, "sre", "1h").await;
    assert_ne!(laptop.session, phone.session);
    let both = h.objects().await;
    assert_eq!(both.sessions.len(), 2);
    let laptop_s = both.session(laptop.session.as_str()).unwrap();
    let phone_s = both.session(phone.session.as_str()).unwrap();
    assert_ne!(
        laptop_s.labels().get(NODE_LABEL),
        phone_s.labels().get(NODE_LABEL)
    );
    assert_eq!(
        laptop_s.labels().get(USER_LABEL),
        phone_s.labels().get(USER_LABEL)
    );
    let phone_before = (
        sa_uid(&both, phone.session.as_str()),
        binding_ids(&both, phone.session.as_str()),
    );

    // A role change on the laptop leaves the phone alone.
    let changed = h.login(Person::AliceLaptop, "dev", "1h").await;
    assert_eq!(changed.outcome, IssueOutcome::RoleChanged);
    let after_change = h.objects().await;
    assert_eq!(
        (
            sa_uid(&after_change, phone.session.as_str()),
            binding_ids(&after_change, phone.session.as_str())
        ),
        phone_before
    );

    // Logout on the laptop leaves the phone alone.
    h.issuer.revoke(&Person::AliceLaptop.node()).await.unwrap();
    let after_logout = h.objects().await;
    assert!(after_logout.session(laptop.session.as_str()).is_none());
    assert_eq!(
        (
            sa_uid(&after_logout, phone.session.as_str()),
            binding_ids(&after_logout, phone.session.as_str())
        ),
        phone_before
    );
    assert!(
        h.issuer
            .refresh(&Person::AlicePhone.identity())
            .await
            .is_ok()
    );

    // "Revoke everything of alice" ends both, and nobody else's.
    let _laptop_again = h.login(Person::AliceLaptop, "sre", "1h").await;
    let ci = h.login(Person::CiRunner, "ci", "1h").await;
    let ended = h
        .issuer
        .revoke_user(Person::AliceLaptop.identity().user.id)
        .await
        .unwrap();
    assert_eq!(ended.len(), 2);
    let last = h.objects().await;
    assert_eq!(last.sessions.len(), 1);
    assert!(last.session(ci.session.as_str()).is_some());
    assert_eq!(last.service_accounts.len(), 1);
}

fn forged_session(
    name: &str,
    who: Person,
    cluster_roles: &[&str],
    expires_in: SignedDuration,
    now: jiff::Timestamp,
) -> Session {
    let identity = who.identity();
    let mut session = Session::new(
        name,
        SessionSpec {
            identity: SessionIdentity {
                node_id: identity.node.stable_id.to_string(),
                node_name: identity.node.name.clone(),
                tags: vec![],
                user_id: identity.user.id.0,
                login_name: identity.user.login_name.to_string(),
                addresses: identity
                    .node
                    .addresses
                    .iter()
                    .map(ToString::to_string)
                    .collect(),
            },
            role: "sre".into(),
            cluster_roles: cluster_roles.iter().map(|r| (*r).to_owned()).collect(),
            namespaced: vec![],
            revision: "forged".into(),
            revised_at: Time(now),
            expires_at: Time(now + expires_in),
        },
    );
    session.metadata.labels = Some(BTreeMap::from([
        (MANAGED_BY_LABEL.to_owned(), MANAGED_BY.to_owned()),
        (NODE_LABEL.to_owned(), node_label(&identity.node.stable_id)),
        (USER_LABEL.to_owned(), user_label(identity.user.id)),
    ]));
    session
}

/// A Session written by hand (even one claiming to be Active) never gets a ServiceAccount or a
/// binding from the reconciler; it is removed instead.
pub async fn a_hand_written_session_never_gets_bindings<B, F, Fut>(make: F)
where
    B: SuiteBackend,
    F: Fn() -> Fut,
    Fut: Future<Output = B>,
{
    let h = Harness::new(make().await).await;
    let sessions: Api<Session> = Api::all(h.client.clone());
    let now = h.clock.now();
    // Claims to be active, with a ServiceAccount that was never made.
    let forged = sessions
        .create(
            &PostParams::default(),
            &forged_session(
                "tka-mallory-aaaaaaaa",
                Person::AlicePhone,
                &["cluster-admin"],
                SignedDuration::from_hours(8),
                now,
            ),
        )
        .await
        .unwrap();
    let mut with_status = forged.clone();
    with_status.status = Some(SessionStatus {
        phase: Some(SessionPhase::Active),
        revision: Some("forged".into()),
        service_account: Some(tka_core::kubernetes::ObjectRef {
            namespace: h.namespace.clone(),
            name: "tka-mallory-aaaaaaaa".into(),
            uid: "00000000-0000-0000-0000-000000000000".into(),
        }),
        ..SessionStatus::default()
    });
    sessions
        .replace_status("tka-mallory-aaaaaaaa", &PostParams::default(), &with_status)
        .await
        .unwrap();
    // Claims nothing, just waits to be "repaired".
    sessions
        .create(
            &PostParams::default(),
            &forged_session(
                "tka-mallory-bbbbbbbb",
                Person::CiRunner,
                &["cluster-admin"],
                SignedDuration::from_hours(8),
                now,
            ),
        )
        .await
        .unwrap();

    let first = h.reconcile().await;
    let objects = h.objects().await;
    assert!(
        objects.service_accounts.is_empty(),
        "no ServiceAccount was made"
    );
    assert!(
        objects.binding_names().is_empty(),
        "no binding was made: {:?}",
        objects.binding_names()
    );
    assert!(
        first.removed_session("tka-mallory-aaaaaaaa"),
        "the active-looking forgery goes at once"
    );
    assert!(
        objects.session("tka-mallory-bbbbbbbb").is_some(),
        "the other is young"
    );

    h.advance(past_grace());
    let second = h.reconcile().await;
    assert!(second.removed_session("tka-mallory-bbbbbbbb"));
    let objects = h.objects().await;
    assert!(objects.is_empty(), "nothing is left");

    // A real login does get its bindings.
    let real = h.login(Person::AlicePhone, "sre", "1h").await;
    let objects = h.objects().await;
    assert_eq!(binding_ids(&objects, real.session.as_str()).len(), 3);
}

/// A suffix source that hands out `names` first, then random suffixes.
fn scripted_suffixes(names: &[&str]) -> tka_core::kubernetes::SuffixSource {
    let names: Vec<NameSuffix> = names.iter().map(|n| NameSuffix::new(*n).unwrap()).collect();
    let next = AtomicUsize::new(0);
    Arc::new(move || {
        let i = next.fetch_add(1, Ordering::SeqCst);
        names
            .get(i)
            .cloned()
            .unwrap_or_else(|| NameSuffix::from_random(rand::random()))
    })
}

/// Objects that happen to carry the name the issuer picks are never adopted: the login gets
/// objects of its own under another name, and nothing of the old objects serves it.
pub async fn an_object_sharing_a_name_is_never_adopted<B, F, Fut>(make: F)
where
    B: SuiteBackend,
    F: Fn() -> Fut,
    Fut: Future<Output = B>,
{
    let h = Harness::new(make().await).await;
    let taken = "tka-alice-example-com-aaaaaaaa";
    let leftover_labels = json!({
        MANAGED_BY_LABEL: MANAGED_BY,
        SESSION_LABEL: taken,
    });
    let sas: Api<ServiceAccount> = Api::namespaced(h.client.clone(), &h.namespace);
    let leftover_sa: ServiceAccount = serde_json::from_value(json!({
        "metadata": {"name": taken, "labels": leftover_labels, "ownerReferences": [{
            "apiVersion": "tka.dev/v1alpha1", "kind": "Session", "name": taken,
            "uid": "11111111-1111-1111-1111-111111111111", "controller": true}]}
    }))
    .unwrap();
    let leftover_sa = sas
        .create(&PostParams::default(), &leftover_sa)
        .await
        .unwrap();
    let crbs: Api<ClusterRoleBinding> = Api::all(h.client.clone());
    let admin: ClusterRoleBinding = serde_json::from_value(json!({
        "metadata": {"name": format!("{taken}.admin.old-0"), "labels": leftover_labels},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "cluster-admin"},
        "subjects": [{"kind": "ServiceAccount", "name": taken, "namespace": h.namespace}]
    }))
    .unwrap();
    crbs.create(&PostParams::default(), &admin).await.unwrap();

    let issuer = h.issuer_with_suffixes(scripted_suffixes(&["aaaaaaaa", "rev1"]));
    let credential = issuer
        .issue(&Person::AliceLaptop.identity(), &h.decision("sre", "1h"))
        .await
        .unwrap();
    assert_ne!(
        credential.session.as_str(),
        taken,
        "the taken name is not used"
    );

    let objects = h.objects().await;
    let name = credential.session.as_str();
    let session = objects.session(name).unwrap();
    let (own_sas, own_crbs, _) = objects.children_of(name);
    assert_eq!(own_sas.len(), 1);
    assert_ne!(
        own_sas[0].uid(),
        leftover_sa.uid(),
        "a ServiceAccount of its own"
    );
    assert!(own_crbs.iter().all(|b| b.role_ref.name != "cluster-admin"));
    // Whatever of the old objects is left names the old ServiceAccount, never the new one.
    for b in &objects.cluster_role_bindings {
        let subjects = b.subjects.as_deref().unwrap_or_default();
        if b.role_ref.name == "cluster-admin" {
            assert!(
                subjects.iter().all(|s| s.name != name),
                "cluster-admin never reaches {name}"
            );
        }
    }
    assert_eq!(session.spec.role, "sre");

    h.advance(past_grace());
    h.reconcile().await;
    let objects = h.objects().await;
    assert!(
        objects
            .binding_names()
            .iter()
            .all(|b| !b.contains("cluster-admin"))
    );
    assert_eq!(
        binding_ids(&objects, name).len(),
        3,
        "the login's own objects stay"
    );
}

/// A binding left behind by an old session never serves a new login: names are never reused.
pub async fn a_leftover_binding_cannot_serve_a_new_login<B, F, Fut>(make: F)
where
    B: SuiteBackend,
    F: Fn() -> Fut,
    Fut: Future<Output = B>,
{
    let h = Harness::new(make().await).await;
    let old = h.login(Person::AliceLaptop, "sre", "1h").await;
    let old_objects = h.objects().await;
    let (_, old_crbs, _) = old_objects.children_of(old.session.as_str());
    let leftover = (*old_crbs[0]).clone();
    h.issuer.revoke(&Person::AliceLaptop.node()).await.unwrap();

    // The binding survives the logout (say its delete was lost).
    let crbs: Api<ClusterRoleBinding> = Api::all(h.client.clone());
    let mut copy = leftover.clone();
    copy.metadata.resource_version = None;
    copy.metadata.uid = None;
    copy.metadata.creation_timestamp = None;
    copy.metadata.managed_fields = None;
    crbs.create(&PostParams::default(), &copy).await.unwrap();

    let new = h.login(Person::AliceLaptop, "sre", "1h").await;
    assert_ne!(new.session, old.session);
    let objects = h.objects().await;
    let new_names: BTreeSet<String> = binding_ids(&objects, new.session.as_str())
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    let old_names: BTreeSet<String> = binding_ids(&old_objects, old.session.as_str())
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    assert!(new_names.is_disjoint(&old_names), "names are never reused");
    let left = crbs.get(&leftover.name_any()).await.unwrap();
    let subject = &left.subjects.as_deref().unwrap()[0];
    assert_eq!(
        subject.name,
        old.session.as_str(),
        "it names the old ServiceAccount"
    );
    assert_ne!(subject.name, new.session.as_str(), "never the new one");
    let sas: Api<ServiceAccount> = Api::namespaced(h.client.clone(), &h.namespace);
    assert!(
        sas.get_opt(old.session.as_str()).await.unwrap().is_none(),
        "whose ServiceAccount is gone"
    );

    h.advance(past_grace());
    let report = h.reconcile().await;
    assert!(
        report
            .removed_of(ObjectKind::ClusterRoleBinding)
            .any(|r| r.name == leftover.name_any() && r.reason == RemovalReason::Orphan)
    );
    let objects = h.objects().await;
    assert_eq!(binding_ids(&objects, new.session.as_str()).len(), 3);
    assert_eq!(objects.cluster_role_bindings.len(), 1);
}

/// Expiry removes the session and all of its children in one pass, ServiceAccount first.
pub async fn expiry_removes_every_child_in_one_pass<B, F, Fut>(make: F)
where
    B: SuiteBackend,
    F: Fn() -> Fut,
    Fut: Future<Output = B>,
{
    let h = Harness::new(make().await).await;
    let alice = h.login(Person::AliceLaptop, "sre", "1h").await;
    let ci = h.login(Person::CiRunner, "ci", "2h").await;

    let before = h.reconcile().await;
    assert!(before.removed.is_empty(), "{:?}", before.removed);
    assert_eq!(before.live_sessions, 2);
    assert_eq!(before.next_requeue, Some(alice.session_expires_at));

    h.clock
        .set(alice.session_expires_at + SignedDuration::from_secs(1));
    let report = h.reconcile().await;
    let name = alice.session.as_str();
    assert!(report.removed_session(name));
    let kinds: Vec<ObjectKind> = report.removed.iter().map(|r| r.kind).collect();
    assert_eq!(
        kinds.first(),
        Some(&ObjectKind::ServiceAccount),
        "{kinds:?}"
    );
    assert_eq!(kinds.last(), Some(&ObjectKind::Session), "{kinds:?}");
    assert_eq!(
        report.removed.len(),
        5,
        "session, ServiceAccount and three bindings"
    );
    assert!(
        report
            .removed
            .iter()
            .all(|r| r.reason == RemovalReason::Expired)
    );
    assert_eq!(report.next_requeue, Some(ci.session_expires_at));

    let objects = h.objects().await;
    assert!(objects.session(name).is_none());
    let (sas, crbs, rbs) = objects.children_of(name);
    assert!(sas.is_empty() && crbs.is_empty() && rbs.is_empty());
    assert!(objects.session(ci.session.as_str()).is_some());
    assert_eq!(objects.children_of(ci.session.as_str()).1.len(), 1);
    assert_ne!(h.token_works(&alice).await, Some(true));
}

/// A reconciler that starts over existing sessions computes its requeue from them.
pub async fn a_restarted_reconciler_requeues_from_the_sessions<B, F, Fut>(make: F)
where
    B: SuiteBackend,
    F: Fn() -> Fut,
    Fut: Future<Output = B>,
{
    let h = Harness::new(make().await).await;
    let _alice = h.login(Person::AliceLaptop, "sre", "3h").await;
    let ci = h.login(Person::CiRunner, "ci", "45m").await;
    let phone = h.login(Person::AlicePhone, "dev", "2h").await;

    let restarted = h.another_reconciler("restarted-1");
    let report = restarted.reconcile_once(h.clock.now()).await.unwrap();
    assert!(report.removed.is_empty());
    assert_eq!(report.live_sessions, 3);
    assert_eq!(report.next_requeue, Some(ci.session_expires_at));

    h.clock
        .set(ci.session_expires_at + SignedDuration::from_secs(1));
    let again = h.another_reconciler("restarted-2");
    let report = again.reconcile_once(h.clock.now()).await.unwrap();
    assert!(report.removed_session(ci.session.as_str()));
    assert_eq!(report.removed_of(ObjectKind::Session).count(), 1);
    assert_eq!(report.next_requeue, Some(phone.session_expires_at));
    assert_eq!(h.objects().await.sessions.len(), 2);
}

/// Orphans are swept once past the grace period; a login in flight is left alone, and removed
/// only if it never completes.
pub async fn orphans_are_swept_but_a_login_in_flight_is_not<B, F, Fut>(make: F)
where
    B: SuiteBackend,
    F: Fn() -> Fut,
    Fut: Future<Output = B>,
{
    let h = Harness::new(make().await).await;
    let live = h.login(Person::CiRunner, "ci", "8h").await;
    let ghost = "tka-ghost-aaaaaaaa";
    let labels = json!({MANAGED_BY_LABEL: MANAGED_BY, SESSION_LABEL: ghost});
    let sas: Api<ServiceAccount> = Api::namespaced(h.client.clone(), &h.namespace);
    let sa: ServiceAccount =
        serde_json::from_value(json!({"metadata": {"name": ghost, "labels": labels}})).unwrap();
    sas.create(&PostParams::default(), &sa).await.unwrap();
    let crbs: Api<ClusterRoleBinding> = Api::all(h.client.clone());
    let crb: ClusterRoleBinding = serde_json::from_value(json!({
        "metadata": {"name": format!("{ghost}.ci.r-0"), "labels": labels},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "view"},
        "subjects": [{"kind": "ServiceAccount", "name": ghost, "namespace": h.namespace}]
    }))
    .unwrap();
    crbs.create(&PostParams::default(), &crb).await.unwrap();

    // Young orphans are left alone: they may belong to a login that has not written its Session.
    let young = h.reconcile().await;
    assert!(young.removed.is_empty(), "{:?}", young.removed);
    assert!(young.next_requeue.is_some());

    h.advance(past_grace());
    // A login in flight: its Session and ServiceAccount exist, its status does not yet.
    let in_flight = "tka-alice-example-com-inflight";
    let sessions: Api<Session> = Api::all(h.client.clone());
    let mut session = forged_session(
        in_flight,
        Person::AliceLaptop,
        &["view"],
        SignedDuration::from_hours(1),
        h.clock.now(),
    );
    session.metadata.finalizers = Some(vec![FINALIZER.to_owned()]);
    let session = sessions
        .create(&PostParams::default(), &session)
        .await
        .unwrap();
    let child: ServiceAccount = serde_json::from_value(json!({"metadata": {
        "name": in_flight,
        "labels": {MANAGED_BY_LABEL: MANAGED_BY, SESSION_LABEL: in_flight},
        "ownerReferences": [{"apiVersion": "tka.dev/v1alpha1", "kind": "Session", "name": in_flight,
            "uid": session.uid().unwrap(), "controller": true}]
    }}))
    .unwrap();
    sas.create(&PostParams::default(), &child).await.unwrap();

    let report = h.reconcile().await;
    let removed: BTreeSet<(ObjectKind, String)> = report
        .removed
        .iter()
        .map(|r| (r.kind, r.name.clone()))
        .collect();
    assert_eq!(
        removed,
        BTreeSet::from([
            (ObjectKind::ServiceAccount, ghost.to_owned()),
            (ObjectKind::ClusterRoleBinding, format!("{ghost}.ci.r-0")),
        ])
    );
    assert!(
        report
            .removed
            .iter()
            .all(|r| r.reason == RemovalReason::Orphan)
    );
    let objects = h.objects().await;
    assert!(
        objects.session(in_flight).is_some(),
        "the login in flight is left alone"
    );
    assert_eq!(objects.children_of(in_flight).0.len(), 1);
    assert_eq!(
        binding_ids(&objects, live.session.as_str()).len(),
        1,
        "live sessions too"
    );

    // A login that never completes is removed once its grace period is over.
    h.advance(past_grace());
    let report = h.reconcile().await;
    assert!(report.removed_session(in_flight));
    assert!(
        report
            .removed
            .iter()
            .any(|r| r.kind == ObjectKind::ServiceAccount
                && r.name == in_flight
                && r.reason == RemovalReason::HalfMade)
    );
    let objects = h.objects().await;
    assert!(objects.session(in_flight).is_none());
    assert!(objects.children_of(in_flight).0.is_empty());
    assert!(objects.session(live.session.as_str()).is_some());
}

/// A session extended after a pass computed its requeue is not removed at the old time.
pub async fn a_session_extended_while_pending_gets_its_new_expiry<B, F, Fut>(make: F)
where
    B: SuiteBackend,
    F: Fn() -> Fut,
    Fut: Future<Output = B>,
{
    let h = Harness::new(make().await).await;
    let first = h.login(Person::AliceLaptop, "sre", "1h").await;
    assert_eq!(
        h.reconcile().await.next_requeue,
        Some(first.session_expires_at)
    );

    h.advance(SignedDuration::from_mins(30));
    let extended = h.login(Person::AliceLaptop, "sre", "2h").await;
    assert_eq!(extended.outcome, IssueOutcome::Extended);

    h.clock
        .set(first.session_expires_at + SignedDuration::from_secs(1));
    let report = h.reconcile().await;
    assert!(report.removed.is_empty(), "{:?}", report.removed);
    assert_eq!(report.next_requeue, Some(extended.session_expires_at));
    let objects = h.objects().await;
    assert_eq!(binding_ids(&objects, first.session.as_str()).len(), 3);

    h.clock
        .set(extended.session_expires_at + SignedDuration::from_secs(1));
    let report = h.reconcile().await;
    assert!(report.removed_session(first.session.as_str()));
    assert!(h.objects().await.is_empty());
}

/// Removing a grant from the policy file (or the device from the tailnet) revokes live sessions
/// at the next validation; a tailscaled that does not answer decides nothing.
pub async fn a_withdrawn_grant_revokes_at_the_next_validation<B, F, Fut>(make: F)
where
    B: SuiteBackend,
    F: Fn() -> Fut,
    Fut: Future<Output = B>,
{
    let h = Harness::new(make().await).await;
    let alice = h.login(Person::AliceLaptop, "sre", "8h").await;
    let ci = h.login(Person::CiRunner, "ci", "8h").await;
    let phone = h.login(Person::AlicePhone, "sre", "8h").await;
    let first = h.reconcile().await;
    assert!(first.removed.is_empty());
    assert_eq!(first.revalidated, 3);

    // The policy file loses alice's laptop's sre grant.
    h.tailnet
        .set_capabilities(&Person::AliceLaptop.node(), &[json!({"role": "dev"})]);
    let not_due = h.reconcile().await;
    assert!(
        not_due.removed.is_empty(),
        "validation is periodic, not every pass"
    );
    h.advance(SignedDuration::from_mins(5));
    let report = h.reconcile().await;
    assert!(report.removed_session(alice.session.as_str()));
    assert!(
        report
            .removed
            .iter()
            .all(|r| matches!(r.reason, RemovalReason::GrantWithdrawn(_)))
    );
    let objects = h.objects().await;
    assert!(objects.session(alice.session.as_str()).is_none());
    assert!(objects.children_of(alice.session.as_str()).0.is_empty());
    assert!(objects.session(ci.session.as_str()).is_some());
    assert!(objects.session(phone.session.as_str()).is_some());
    assert_ne!(h.token_works(&alice).await, Some(true));

    // tailscaled down: nothing is decided, the failure is reported.
    h.tailnet.set_unavailable(true);
    h.reconciler.request_revalidation();
    let down = h.reconcile().await;
    assert!(down.removed.is_empty());
    assert!(!down.failures.is_empty());
    h.tailnet.set_unavailable(false);

    // The CI runner leaves the tailnet.
    h.tailnet.leave(&Person::CiRunner.node());
    h.reconciler.request_revalidation();
    let left = h.reconcile().await;
    assert!(left.removed_session(ci.session.as_str()));
    let objects = h.objects().await;
    assert_eq!(objects.sessions.len(), 1);
    assert!(objects.session(phone.session.as_str()).is_some());
}

/// Editing or deleting a GrantMapping re-validates every live session at the next pass.
pub async fn an_edited_grant_mapping_revokes_at_the_next_pass<B, F, Fut>(make: F)
where
    B: SuiteBackend,
    F: Fn() -> Fut,
    Fut: Future<Output = B>,
{
    let h = Harness::new(make().await).await;
    let laptop = h.login(Person::AliceLaptop, "sre", "8h").await;
    let phone = h.login(Person::AlicePhone, "dev", "8h").await;
    assert!(h.reconcile().await.removed.is_empty());

    let mappings: Api<GrantMapping> = Api::all(h.client.clone());
    let mut sre = mappings.get("sre").await.unwrap();
    sre.spec.cluster_roles.clear();
    mappings
        .replace("sre", &PostParams::default(), &sre)
        .await
        .unwrap();

    let report = h.reconcile().await;
    assert!(
        report.removed_session(laptop.session.as_str()),
        "{:?}",
        report.removed
    );
    assert!(!report.removed_session(phone.session.as_str()));
    assert!(h.objects().await.session(phone.session.as_str()).is_some());

    mappings
        .delete("dev", &DeleteParams::default())
        .await
        .unwrap();
    let report = h.reconcile().await;
    assert!(report.removed_session(phone.session.as_str()));
    assert!(h.objects().await.is_empty());
}

/// GrantMappings carry a `Ready` condition that names what is wrong.
pub async fn grant_mappings_report_why_they_are_not_ready<B, F, Fut>(make: F)
where
    B: SuiteBackend,
    F: Fn() -> Fut,
    Fut: Future<Output = B>,
{
    let h = Harness::new(make().await).await;
    let mappings: Api<GrantMapping> = Api::all(h.client.clone());
    let missing: GrantMapping = serde_json::from_value(json!({
        "apiVersion": "tka.dev/v1alpha1", "kind": "GrantMapping",
        "metadata": {"name": "auditor"}, "spec": {"clusterRoles": ["tka-suite-auditor"]}
    }))
    .unwrap();
    mappings
        .create(&PostParams::default(), &missing)
        .await
        .unwrap();
    let forbidden: GrantMapping = serde_json::from_value(json!({
        "apiVersion": "tka.dev/v1alpha1", "kind": "GrantMapping",
        "metadata": {"name": "kube-admin"},
        "spec": {"namespaced": [{"clusterRole": "admin", "namespaces": ["kube-system"]}]}
    }))
    .unwrap();
    mappings
        .create(&PostParams::default(), &forbidden)
        .await
        .unwrap();

    let report = h.reconcile().await;
    assert!(
        report.mappings_updated.len() >= 5,
        "{:?}",
        report.mappings_updated
    );
    let ready = |m: &GrantMapping| {
        m.status
            .as_ref()
            .and_then(|s| s.conditions.iter().find(|c| c.type_ == CONDITION_READY))
            .map(|c| (c.status.clone(), c.reason.clone()))
    };
    assert_eq!(
        ready(&mappings.get("sre").await.unwrap()),
        Some(("True".into(), "Ready".into()))
    );
    assert_eq!(
        ready(&mappings.get("auditor").await.unwrap()),
        Some(("False".into(), REASON_CLUSTER_ROLE_MISSING.into()))
    );
    assert_eq!(
        ready(&mappings.get("kube-admin").await.unwrap()),
        Some(("False".into(), REASON_FORBIDDEN_NAMESPACE.into()))
    );
    // Nothing changes, nothing is written.
    assert!(h.reconcile().await.mappings_updated.is_empty());

    // The missing role appears: the mapping becomes ready.
    let roles: Api<ClusterRole> = Api::all(h.client.clone());
    let role: ClusterRole =
        serde_json::from_value(json!({"metadata": {"name": "tka-suite-auditor"}, "rules": []}))
            .unwrap();
    roles.create(&PostParams::default(), &role).await.unwrap();
    let report = h.reconcile().await;
    assert_eq!(report.mappings_updated, vec!["auditor".to_owned()]);
    assert_eq!(
        ready(&mappings.get("auditor").await.unwrap()),
        Some(("True".into(), "Ready".into()))
    );
}

/// Many logins of one device at once, asking for different roles, end with one session whose
/// bindings are all of one role.
pub async fn concurrent_logins_of_one_device_never_leave_two_roles<B, F, Fut>(make: F)
where
    B: SuiteBackend,
    F: Fn() -> Fut,
    Fut: Future<Output = B>,
{
    let h = Harness::new(make().await).await;
    let identity = Person::AliceLaptop.identity();
    for round in 0..10 {
        let mut tasks = Vec::new();
        for i in 0..8 {
            // Each login through its own issuer, as if through different server replicas.
            let issuer =
                h.issuer_with_suffixes(Arc::new(|| NameSuffix::from_random(rand::random())));
            let decision = h.decision(if (i + round) % 2 == 0 { "sre" } else { "dev" }, "1h");
            let identity = identity.clone();
            tasks.push(tokio::spawn(async move {
                issuer.issue(&identity, &decision).await
            }));
        }
        let mut succeeded = 0;
        for task in tasks {
            match task.await.unwrap() {
                Ok(_) => succeeded += 1,
                Err(e) => assert!(e.is_retryable(), "round {round}: {e}"),
            }
        }
        assert!(succeeded >= 1, "round {round}: some login succeeds");

        let objects = h.objects().await;
        let live: Vec<&Session> = objects
            .sessions
            .iter()
            .filter(|s| !s.is_deleting())
            .collect();
        assert_eq!(live.len(), 1, "round {round}: one session per device");
        let session = live[0];
        assert!(session.is_complete(), "round {round}: {:?}", session.status);
        let name = session.name_any();
        let (sas, crbs, rbs) = objects.children_of(&name);
        assert_eq!(sas.len(), 1);
        let revisions: BTreeSet<Option<&String>> = crbs
            .iter()
            .map(|b| b.labels().get(REVISION_LABEL))
            .chain(rbs.iter().map(|b| b.labels().get(REVISION_LABEL)))
            .collect();
        assert_eq!(
            revisions,
            BTreeSet::from([Some(&session.spec.revision)]),
            "round {round}: one revision"
        );
        let expected = if session.spec.role == "sre" {
            (1, 2)
        } else {
            (0, 1)
        };
        assert_eq!(
            (crbs.len(), rbs.len()),
            expected,
            "round {round}: bindings of {}",
            session.spec.role
        );
        assert_eq!(
            objects.cluster_role_bindings.len(),
            crbs.len(),
            "round {round}: nothing else"
        );
        assert_eq!(
            objects.role_bindings.len(),
            rbs.len(),
            "round {round}: nothing else"
        );
        // Every other round starts without a session, so concurrent logins also race to
        // create one.
        if round % 2 == 1 {
            h.issuer.revoke(&Person::AliceLaptop.node()).await.unwrap();
        }
    }
}

/// Two reconcilers running the same pass at once end in the same state as one, without errors.
pub async fn two_reconcilers_at_once_are_harmless<B, F, Fut>(make: F)
where
    B: SuiteBackend,
    F: Fn() -> Fut,
    Fut: Future<Output = B>,
{
    let h = Harness::new(make().await).await;
    let alice = h.login(Person::AliceLaptop, "sre", "1h").await;
    let ci = h.login(Person::CiRunner, "ci", "1h").await;
    let phone = h.login(Person::AlicePhone, "dev", "3h").await;
    let sas: Api<ServiceAccount> = Api::namespaced(h.client.clone(), &h.namespace);
    let orphan: ServiceAccount = serde_json::from_value(json!({"metadata": {
        "name": "tka-ghost-bbbbbbbb",
        "labels": {MANAGED_BY_LABEL: MANAGED_BY, SESSION_LABEL: "tka-ghost-bbbbbbbb"}}}))
    .unwrap();
    sas.create(&PostParams::default(), &orphan).await.unwrap();
    h.clock
        .set(alice.session_expires_at + SignedDuration::from_secs(1));

    let other = h.another_reconciler("suite-1");
    let now = h.clock.now();
    let (a, b) = tokio::join!(h.reconciler.reconcile_once(now), other.reconcile_once(now));
    let (a, b) = (a.unwrap(), b.unwrap());
    assert!(a.failures.is_empty(), "{:?}", a.failures);
    assert!(b.failures.is_empty(), "{:?}", b.failures);
    let removed: BTreeSet<String> = a
        .removed_of(ObjectKind::Session)
        .chain(b.removed_of(ObjectKind::Session))
        .map(|r| r.name.clone())
        .collect();
    assert_eq!(
        removed,
        BTreeSet::from([alice.session.to_string(), ci.session.to_string()])
    );

    let objects = h.objects().await;
    assert_eq!(objects.sessions.len(), 1);
    assert!(objects.session(phone.session.as_str()).is_some());
    assert_eq!(
        objects.service_accounts.len(),
        1,
        "only the phone's ServiceAccount is left"
    );
    assert_eq!(binding_ids(&objects, phone.session.as_str()).len(), 1);
    assert_eq!(objects.binding_names().len(), 1);
}

/// The Lease keeps one reconciler active and hands over once the holder stops renewing.
pub async fn the_lease_keeps_one_reconciler_active_and_hands_over<B, F, Fut>(make: F)
where
    B: SuiteBackend,
    F: Fn() -> Fut,
    Fut: Future<Output = B>,
{
    let h = Harness::new(make().await).await;
    let clock: Arc<dyn Clock> = Arc::new(h.clock.clone());
    let a = LeaderLease::new(
        h.client.clone(),
        LeaseSettings::new(&h.namespace, "replica-a"),
        clock.clone(),
    );
    let b = LeaderLease::new(
        h.client.clone(),
        LeaseSettings::new(&h.namespace, "replica-b"),
        clock,
    );

    assert!(a.try_acquire_or_renew().await.unwrap());
    assert!(!b.try_acquire_or_renew().await.unwrap());
    assert_eq!(a.holder().await.unwrap().as_deref(), Some("replica-a"));
    h.advance(SignedDuration::from_secs(5));
    assert!(a.try_acquire_or_renew().await.unwrap(), "the holder renews");
    assert!(
        !b.try_acquire_or_renew().await.unwrap(),
        "a renewed lease is not taken"
    );

    // replica-a stops renewing; after the lease duration replica-b takes over.
    h.advance(SignedDuration::from_secs(10));
    assert!(
        !b.try_acquire_or_renew().await.unwrap(),
        "not before the lease duration"
    );
    h.advance(SignedDuration::from_secs(6));
    assert!(b.try_acquire_or_renew().await.unwrap());
    assert!(
        !a.try_acquire_or_renew().await.unwrap(),
        "the old holder has lost it"
    );
    assert_eq!(b.holder().await.unwrap().as_deref(), Some("replica-b"));
    let leases: Api<Lease> = Api::namespaced(h.client.clone(), &h.namespace);
    let lease = leases.get("tka-reconciler").await.unwrap();
    assert_eq!(lease.spec.unwrap().lease_transitions, Some(1));

    // Releasing hands over at once.
    b.release().await.unwrap();
    assert_eq!(b.holder().await.unwrap(), None);
    assert!(a.try_acquire_or_renew().await.unwrap());
}

/// `run` reconciles while holding the lease (expired sessions go without anyone calling a pass)
/// and releases the lease when shut down.
pub async fn the_run_loop_reconciles_on_events_and_stops_on_shutdown<B, F, Fut>(make: F)
where
    B: SuiteBackend,
    F: Fn() -> Fut,
    Fut: Future<Output = B>,
{
    let h = Harness::new(make().await).await;
    let alice = h.login(Person::AliceLaptop, "sre", "1h").await;
    let ci = h.login(Person::CiRunner, "ci", "8h").await;
    h.clock
        .set(alice.session_expires_at + SignedDuration::from_secs(1));

    let mut settings = ReconcilerSettings::new(&h.namespace, "runner");
    settings.min_interval = std::time::Duration::from_millis(20);
    settings.resync_every = std::time::Duration::from_millis(200);
    let reconciler = Arc::new(KubernetesReconciler::new(
        h.client.clone(),
        settings,
        Arc::new(h.clock.clone()),
        h.tailnet.clone(),
        Arc::new(super::suite_grant_check(&h.namespace)),
    ));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let runner = reconciler.clone();
    let task = tokio::spawn(async move {
        runner
            .run(async {
                let _ = stopped.await;
            })
            .await
    });

    let mut gone = false;
    for _ in 0..200 {
        if h.objects().await.session(alice.session.as_str()).is_none() {
            gone = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    assert!(gone, "the run loop removed the expired session");
    let leases: Api<Lease> = Api::namespaced(h.client.clone(), &h.namespace);
    let held = leases.get("tka-reconciler").await.unwrap();
    assert_eq!(
        held.spec.unwrap().holder_identity.as_deref(),
        Some("runner")
    );

    stop.send(()).unwrap();
    tokio::time::timeout(std::time::Duration::from_secs(10), task)
        .await
        .expect("run stops on shutdown")
        .unwrap()
        .unwrap();
    let released = leases.get("tka-reconciler").await.unwrap();
    assert_eq!(released.spec.unwrap().holder_identity, None);
    let objects = h.objects().await;
    assert!(
        objects.session(ci.session.as_str()).is_some(),
        "live sessions stay"
    );
    assert_eq!(objects.sessions.len(), 1);
}

/// The writes of a scenario, recorded on a fresh backend without faults.
async fn recorded_writes<B: SuiteBackend>(h: &Harness<B>) -> Vec<WriteStep> {
    h.backend
        .faults()
        .expect("this case needs fault injection")
        .writes()
}

/// For step `i` of `steps`, how many earlier steps (including it) share its verb, resource and
/// subresource: the occurrence a fault rule must hit.
fn occurrence(steps: &[WriteStep], i: usize) -> u32 {
    let key = |s: &WriteStep| (s.verb, s.resource.clone(), s.subresource.clone());
    let n = steps[..=i]
        .iter()
        .filter(|s| key(s) == key(&steps[i]))
        .count();
    u32::try_from(n).unwrap()
}

/// A failure at every write of a login (new session, and role change) and one reconcile pass
/// later: a complete session or nothing labelled at all.
pub async fn a_failure_at_any_write_of_issue_leaves_a_session_or_nothing<B, F, Fut>(make: F)
where
    B: SuiteBackend,
    F: Fn() -> Fut,
    Fut: Future<Output = B>,
{
    for change_role in [false, true] {
        let steps = {
            let h = Harness::new(make().await).await;
            if change_role {
                h.login(Person::AliceLaptop, "sre", "1h").await;
            }
            h.backend.faults().unwrap().clear_calls();
            h.login(
                Person::AliceLaptop,
                if change_role { "dev" } else { "sre" },
                "1h",
            )
            .await;
            recorded_writes(&h).await
        };
        assert!(steps.len() >= 4, "{steps:?}");
        for (i, step) in steps.iter().enumerate() {
            for mode in [FailureMode::Refused, FailureMode::AnswerLost] {
                let context = format!("role change {change_role}, write {i} ({step}), {mode:?}");
                let h = Harness::new(make().await).await;
                if change_role {
                    h.login(Person::AliceLaptop, "sre", "1h").await;
                }
                let faults = h.backend.faults().unwrap();
                faults.fail_write(step, occurrence(&steps, i), mode);
                let result = h
                    .issuer
                    .issue(
                        &Person::AliceLaptop.identity(),
                        &h.decision(if change_role { "dev" } else { "sre" }, "1h"),
                    )
                    .await;
                faults.clear_faults();
                h.advance(past_grace());
                h.reconcile().await;
                let objects = h.objects().await;
                objects.assert_complete_or_nothing(&context);
                if let Ok(credential) = &result {
                    let session = objects.session(credential.session.as_str());
                    assert!(
                        session.is_some(),
                        "{context}: a login that succeeded keeps its session"
                    );
                    assert_eq!(
                        session.unwrap().spec.role,
                        credential.role.as_str(),
                        "{context}"
                    );
                    assert_ne!(h.token_works(credential).await, Some(false), "{context}");
                }
            }
        }
    }
}

/// A failure at every write of a logout and one reconcile pass later: the session is either
/// still complete (the logout reported its failure) or nothing labelled is left.
pub async fn a_failure_at_any_write_of_revoke_leaves_a_session_or_nothing<B, F, Fut>(make: F)
where
    B: SuiteBackend,
    F: Fn() -> Fut,
    Fut: Future<Output = B>,
{
    let steps = {
        let h = Harness::new(make().await).await;
        h.login(Person::AliceLaptop, "sre", "1h").await;
        h.backend.faults().unwrap().clear_calls();
        h.issuer.revoke(&Person::AliceLaptop.node()).await.unwrap();
        recorded_writes(&h).await
    };
    assert!(steps.len() >= 5, "{steps:?}");
    for (i, step) in steps.iter().enumerate() {
        for mode in [FailureMode::Refused, FailureMode::AnswerLost] {
            let context = format!("write {i} ({step}), {mode:?}");
            let h = Harness::new(make().await).await;
            let credential = h.login(Person::AliceLaptop, "sre", "1h").await;
            let faults = h.backend.faults().unwrap();
            faults.fail_write(step, occurrence(&steps, i), mode);
            let result = h.issuer.revoke(&Person::AliceLaptop.node()).await;
            faults.clear_faults();
            h.advance(past_grace());
            h.reconcile().await;
            let objects = h.objects().await;
            objects.assert_complete_or_nothing(&context);
            if result.is_ok() {
                assert!(
                    objects.is_empty(),
                    "{context}: a logout that succeeded leaves nothing"
                );
                assert_ne!(h.token_works(&credential).await, Some(true), "{context}");
            }
        }
    }
}

/// Revocation deletes the ServiceAccount (killing its tokens) before the bindings, and the
/// Session last; expiry in the reconciler does the same.
pub async fn revoke_deletes_the_service_account_before_the_bindings<B, F, Fut>(make: F)
where
    B: SuiteBackend,
    F: Fn() -> Fut,
    Fut: Future<Output = B>,
{
    let deletes = |steps: Vec<WriteStep>| -> Vec<String> {
        steps
            .into_iter()
            .filter(|s| s.verb == WriteVerb::Delete)
            .map(|s| s.resource)
            .collect()
    };
    let h = Harness::new(make().await).await;
    let faults = h.backend.faults().expect("this case needs a call log");
    let alice = h.login(Person::AliceLaptop, "sre", "1h").await;
    faults.clear_calls();
    h.issuer.revoke(&Person::AliceLaptop.node()).await.unwrap();
    let order = deletes(faults.writes());
    assert_eq!(
        order,
        [
            "serviceaccounts",
            "clusterrolebindings",
            "rolebindings",
            "rolebindings",
            "sessions"
        ],
        "logout of {}",
        alice.session
    );

    let phone = h.login(Person::AlicePhone, "sre", "1h").await;
    h.clock
        .set(phone.session_expires_at + SignedDuration::from_secs(1));
    faults.clear_calls();
    h.reconcile().await;
    let order = deletes(faults.writes());
    assert_eq!(
        order,
        [
            "serviceaccounts",
            "clusterrolebindings",
            "rolebindings",
            "rolebindings",
            "sessions"
        ],
        "expiry of {}",
        phone.session
    );
    assert!(h.objects().await.is_empty());
}

/// `kubectl delete session` (or `-l tka.dev/user=…`) ends a session: it stops serving at once
/// and the reconciler removes its children before the finalizer lets it go.
pub async fn deleting_a_session_by_hand_ends_it_through_the_finalizer<B, F, Fut>(make: F)
where
    B: SuiteBackend,
    F: Fn() -> Fut,
    Fut: Future<Output = B>,
{
    let h = Harness::new(make().await).await;
    let laptop = h.login(Person::AliceLaptop, "sre", "1h").await;
    let phone = h.login(Person::AlicePhone, "dev", "1h").await;
    let ci = h.login(Person::CiRunner, "ci", "1h").await;
    let sessions: Api<Session> = Api::all(h.client.clone());
    let alice = user_label(Person::AliceLaptop.identity().user.id);
    let selected = sessions
        .list(&kube::api::ListParams::default().labels(&format!("{USER_LABEL}={alice}")))
        .await
        .unwrap();
    assert_eq!(selected.items.len(), 2);
    for s in &selected.items {
        sessions
            .delete(&s.name_any(), &DeleteParams::default())
            .await
            .unwrap();
    }

    // Held by the finalizer, and refused at once.
    let held = h.objects().await;
    assert!(
        held.session(laptop.session.as_str())
            .is_some_and(Session::is_deleting)
    );
    assert!(matches!(
        h.issuer.refresh(&Person::AliceLaptop.identity()).await,
        Err(IssueError::Revoked { .. })
    ));
    assert!(h.issuer.refresh(&Person::CiRunner.identity()).await.is_ok());

    let report = h.reconcile().await;
    assert!(report.removed_session(laptop.session.as_str()));
    assert!(report.removed_session(phone.session.as_str()));
    assert!(
        report
            .removed
            .iter()
            .all(|r| r.reason == RemovalReason::Deleted)
    );
    let objects = h.objects().await;
    assert_eq!(objects.sessions.len(), 1);
    assert!(objects.session(ci.session.as_str()).is_some());
    assert_eq!(objects.service_accounts.len(), 1);
    assert_eq!(objects.binding_names().len(), 1);
}

/// A reconcile pass while a login is half-way (its TokenRequest stalled) leaves it alone, and
/// the login completes.
pub async fn a_reconcile_pass_during_a_login_does_not_disturb_it<B, F, Fut>(make: F)
where
    B: SuiteBackend,
    F: Fn() -> Fut,
    Fut: Future<Output = B>,
{
    let h = Arc::new(Harness::new(make().await).await);
    let faults = h.backend.faults().expect("this case needs fault injection");
    let token_request = WriteStep {
        verb: WriteVerb::Create,
        resource: "serviceaccounts".into(),
        subresource: Some("token".into()),
        name: None,
    };
    faults.stall_write(&token_request, 1, std::time::Duration::from_millis(600));
    let login = {
        let h = h.clone();
        tokio::spawn(async move {
            h.issuer
                .issue(&Person::AliceLaptop.identity(), &h.decision("sre", "1h"))
                .await
        })
    };

    // Wait until the login has made its objects and is waiting for its token.
    let mut in_flight = None;
    for _ in 0..100 {
        let objects = h.objects().await;
        if let Some(s) = objects.sessions.first()
            && binding_ids(&objects, &s.name_any()).len() == 3
        {
            in_flight = Some(objects);
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    let in_flight = in_flight.expect("the login got as far as its TokenRequest");
    assert!(!in_flight.sessions[0].is_complete(), "not complete yet");
    for _ in 0..3 {
        let report = h.reconcile().await;
        assert!(report.removed.is_empty(), "{:?}", report.removed);
    }

    let credential = login.await.unwrap().unwrap();
    faults.clear_faults();
    let objects = h.objects().await;
    objects.assert_complete_or_nothing("after the stalled login");
    assert_eq!(objects.sessions[0].name_any(), credential.session.as_str());
    assert_eq!(
        binding_ids(&objects, credential.session.as_str()),
        binding_ids(&in_flight, credential.session.as_str()),
        "the same objects the login made"
    );
}
