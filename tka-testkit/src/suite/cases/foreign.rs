//! Objects tka did not make for this login: hand-written Sessions, objects that share a name,
//! bindings left behind. None of them may ever serve a login. These cases must not depend on
//! fault injection.

use std::collections::BTreeSet;

use jiff::SignedDuration;
use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_openapi::api::rbac::v1::ClusterRoleBinding;
use kube::api::PostParams;
use kube::{Api, ResourceExt};
use serde_json::json;
use tka_core::Clock;
use tka_core::issuer::CredentialIssuer;
use tka_core::kubernetes::{
    MANAGED_BY, MANAGED_BY_LABEL, SESSION_LABEL, Session, SessionPhase, SessionStatus,
};
use tka_core::reconciler::{ObjectKind, RemovalReason};

use crate::suite::SuiteBackend;
use crate::suite::harness::{Fixture, Person};

use super::{binding_ids, forged_session, past_grace, scripted_suffixes};

/// A Session written by hand (even one claiming to be Active) never gets a ServiceAccount or a
/// binding from the reconciler; it is removed instead.
pub async fn a_hand_written_session_never_gets_bindings<B: SuiteBackend>(fixture: Fixture<B>) {
    let h = fixture.harness().await;
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

/// Objects that happen to carry the name the issuer picks are never adopted: the login gets
/// objects of its own under another name, and nothing of the old objects serves it.
pub async fn an_object_sharing_a_name_is_never_adopted<B: SuiteBackend>(fixture: Fixture<B>) {
    let h = fixture.harness().await;
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
pub async fn a_leftover_binding_cannot_serve_a_new_login<B: SuiteBackend>(fixture: Fixture<B>) {
    let h = fixture.harness().await;
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
