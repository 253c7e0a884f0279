//! Ending sessions: logout, and `kubectl delete session` through the finalizer. These cases must
//! not depend on fault injection.

use kube::api::DeleteParams;
use kube::{Api, ResourceExt};
use tka_core::issuer::{CredentialIssuer, IssueError};
use tka_core::kubernetes::{Session, USER_LABEL};
use tka_core::naming::user_label;
use tka_core::reconciler::RemovalReason;

use crate::suite::SuiteBackend;
use crate::suite::harness::{Fixture, Person};

/// Logout deletes everything at once (no reconciler involved); revoking again is fine.
pub async fn logout_revokes_inline_and_is_idempotent<B: SuiteBackend>(fixture: Fixture<B>) {
    let h = fixture.harness().await;
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

/// `kubectl delete session` (or `-l tka.dev/user=…`) ends a session: it stops serving at once
/// and the reconciler removes its children before the finalizer lets it go.
pub async fn deleting_a_session_by_hand_ends_it_through_the_finalizer<B: SuiteBackend>(
    fixture: Fixture<B>,
) {
    let h = fixture.harness().await;
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
