//! The reconciler: expiry, requeues, the orphan sweep and its grace, re-validation of grants,
//! GrantMapping conditions, several reconcilers, the Lease and the run loop. These cases must not
//! depend on fault injection.

use std::collections::BTreeSet;
use std::sync::Arc;

use jiff::SignedDuration;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use kube::api::{DeleteParams, PostParams};
use kube::{Api, ResourceExt};
use serde_json::json;
use tka_core::Clock;
use tka_core::issuer::IssueOutcome;
use tka_core::kubernetes::{
    CONDITION_READY, FINALIZER, GrantMapping, KubernetesReconciler, LeaderLease, LeaseSettings,
    MANAGED_BY, MANAGED_BY_LABEL, REASON_CLUSTER_ROLE_MISSING, REASON_FORBIDDEN_NAMESPACE,
    ReconcilerSettings, SESSION_LABEL, Session,
};
use tka_core::reconciler::{ObjectKind, Reconciler, RemovalReason};

use crate::suite::SuiteBackend;
use crate::suite::harness::{Fixture, Person};

use super::{binding_ids, forged_session, past_grace};

/// Expiry removes the session and all of its children in one pass, ServiceAccount first.
pub async fn expiry_removes_every_child_in_one_pass<B: SuiteBackend>(fixture: Fixture<B>) {
    let h = fixture.harness().await;
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
pub async fn a_restarted_reconciler_requeues_from_the_sessions<B: SuiteBackend>(
    fixture: Fixture<B>,
) {
    let h = fixture.harness().await;
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
pub async fn orphans_are_swept_but_a_login_in_flight_is_not<B: SuiteBackend>(fixture: Fixture<B>) {
    let h = fixture.harness().await;
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
pub async fn a_session_extended_while_pending_gets_its_new_expiry<B: SuiteBackend>(
    fixture: Fixture<B>,
) {
    let h = fixture.harness().await;
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
pub async fn a_withdrawn_grant_revokes_at_the_next_validation<B: SuiteBackend>(
    fixture: Fixture<B>,
) {
    let h = fixture.harness().await;
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
pub async fn an_edited_grant_mapping_revokes_at_the_next_pass<B: SuiteBackend>(
    fixture: Fixture<B>,
) {
    let h = fixture.harness().await;
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
pub async fn grant_mappings_report_why_they_are_not_ready<B: SuiteBackend>(fixture: Fixture<B>) {
    let h = fixture.harness().await;
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

/// Two reconcilers running the same pass at once end in the same state as one, without errors.
pub async fn two_reconcilers_at_once_are_harmless<B: SuiteBackend>(fixture: Fixture<B>) {
    let h = fixture.harness().await;
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
pub async fn the_lease_keeps_one_reconciler_active_and_hands_over<B: SuiteBackend>(
    fixture: Fixture<B>,
) {
    let h = fixture.harness().await;
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
pub async fn the_run_loop_reconciles_on_events_and_stops_on_shutdown<B: SuiteBackend>(
    fixture: Fixture<B>,
) {
    let h = fixture.harness().await;
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
        Arc::new(crate::suite::suite_grant_check(&h.namespace)),
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
