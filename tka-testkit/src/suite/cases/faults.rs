//! Failures and order: a failure at any write of a login or a logout, the order of deletes, and a
//! reconcile pass during a stalled login. Only for a backend with
//! [`FaultInjector`](crate::suite::FaultInjector) (`behaviour_suite!(make; faults)`).

use std::sync::Arc;

use jiff::SignedDuration;
use kube::ResourceExt;
use tka_core::issuer::CredentialIssuer;
use tka_core::kubernetes::{KubernetesReconciler, ReconcilerSettings, SessionPhase};
use tka_core::reconciler::Reconciler;
use tka_core::{Clock, NodeId};

use crate::cluster::{Call, RequestMatch, Verb};
use crate::suite::harness::{Fixture, Harness, Person};
use crate::suite::{FailureMode, SuiteBackend};

use super::{binding_ids, occurrence, past_grace, recorded_writes};

/// A failure at every write of a login (new session, and role change) and one reconcile pass
/// later: a complete session or nothing labelled at all.
pub async fn a_failure_at_any_write_of_issue_leaves_a_session_or_nothing<B: SuiteBackend>(
    fixture: Fixture<B>,
) {
    for change_role in [false, true] {
        let steps = {
            let h = fixture.harness().await;
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
                let h = fixture.harness().await;
                if change_role {
                    h.login(Person::AliceLaptop, "sre", "1h").await;
                }
                let faults = h.backend.faults().unwrap();
                faults.fail_write(&step.kind(), occurrence(&steps, i), mode);
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
pub async fn a_failure_at_any_write_of_revoke_leaves_a_session_or_nothing<B: SuiteBackend>(
    fixture: Fixture<B>,
) {
    let steps = {
        let h = fixture.harness().await;
        h.login(Person::AliceLaptop, "sre", "1h").await;
        h.backend.faults().unwrap().clear_calls();
        h.issuer.revoke(&Person::AliceLaptop.node()).await.unwrap();
        recorded_writes(&h).await
    };
    assert!(steps.len() >= 5, "{steps:?}");
    for (i, step) in steps.iter().enumerate() {
        for mode in [FailureMode::Refused, FailureMode::AnswerLost] {
            let context = format!("write {i} ({step}), {mode:?}");
            let h = fixture.harness().await;
            let credential = h.login(Person::AliceLaptop, "sre", "1h").await;
            let faults = h.backend.faults().unwrap();
            faults.fail_write(&step.kind(), occurrence(&steps, i), mode);
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
/// Session last; expiry in the reconciler does the same. The bindings are deleted at once, so
/// their order among themselves is not part of the contract.
pub async fn revoke_deletes_the_service_account_before_the_bindings<B: SuiteBackend>(
    fixture: Fixture<B>,
) {
    let deletes = |steps: Vec<Call>| -> Vec<String> {
        let mut order: Vec<String> = steps
            .into_iter()
            .filter(|s| s.verb == Verb::Delete)
            .map(|s| s.resource)
            .collect();
        // The bindings between the first and the last delete, in a fixed order.
        if order.len() > 2 {
            let last = order.len() - 1;
            order[1..last].sort();
        }
        order
    };
    let service_account_first = [
        "serviceaccounts",
        "clusterrolebindings",
        "rolebindings",
        "rolebindings",
        "sessions",
    ];
    let h = fixture.harness().await;
    let faults = h.backend.faults().expect("this case needs a call log");
    let alice = h.login(Person::AliceLaptop, "sre", "1h").await;
    faults.clear_calls();
    h.issuer.revoke(&Person::AliceLaptop.node()).await.unwrap();
    let order = deletes(faults.writes());
    assert_eq!(order, service_account_first, "logout of {}", alice.session);

    let phone = h.login(Person::AlicePhone, "sre", "1h").await;
    h.clock
        .set(phone.session_expires_at + SignedDuration::from_secs(1));
    faults.clear_calls();
    h.reconcile().await;
    let order = deletes(faults.writes());
    assert_eq!(order, service_account_first, "expiry of {}", phone.session);
    assert!(h.objects().await.is_empty());
}

/// A reconcile pass while a login is half-way (its TokenRequest stalled) leaves it alone, and
/// the login completes.
pub async fn a_reconcile_pass_during_a_login_does_not_disturb_it<B: SuiteBackend>(
    fixture: Fixture<B>,
) {
    let h = Arc::new(fixture.harness().await);
    let faults = h.backend.faults().expect("this case needs fault injection");
    let token_request = RequestMatch::any()
        .verb(Verb::Create)
        .resource("serviceaccounts")
        .subresource("token");
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

/// Logs in `n` devices of alice's (alice's laptop with another node ID each) as `sre` for 1h;
/// returns their credentials.
async fn log_in_devices<B: SuiteBackend>(
    h: &Harness<B>,
    n: usize,
) -> Vec<tka_core::issuer::IssuedCredential> {
    let mut credentials = Vec::new();
    for i in 0..n {
        let mut identity = Person::AliceLaptop.identity();
        identity.node.stable_id = NodeId::new(format!("nAliceDevice{i:02}CNTRL")).unwrap();
        let credential = h
            .issuer
            .issue(&identity, &h.decision("sre", "1h"))
            .await
            .unwrap_or_else(|e| panic!("login of device {i} failed: {e}"));
        credentials.push(credential);
    }
    credentials
}

/// A reconciler on the harness's cluster that ends at most `bound` sessions at once.
fn bounded_reconciler<B: SuiteBackend>(h: &Harness<B>, bound: usize) -> KubernetesReconciler {
    let mut settings = ReconcilerSettings::new(&h.namespace, "bounded");
    settings.sessions_ended_at_once = bound;
    KubernetesReconciler::new(
        h.client.clone(),
        settings,
        Arc::new(h.clock.clone()),
        h.tailnet.clone(),
        Arc::new(crate::suite::suite_grant_check(&h.namespace)),
    )
}

/// A pass ends many expired sessions concurrently, never more than the bound at once: with every
/// ServiceAccount delete held, exactly `bound` are in flight; once released, all are gone.
pub async fn expired_sessions_end_concurrently_within_the_bound<B: SuiteBackend>(
    fixture: Fixture<B>,
) {
    const SESSIONS: usize = 10;
    const BOUND: usize = 3;
    let h = fixture.harness().await;
    let faults = h
        .backend
        .faults()
        .expect("this case needs to hold requests");
    let credentials = log_in_devices(&h, SESSIONS).await;
    let last = credentials
        .iter()
        .map(|c| c.session_expires_at)
        .max()
        .unwrap();
    h.clock.set(last + SignedDuration::from_secs(1));

    let held = faults.hold(
        &RequestMatch::any()
            .verb(Verb::Delete)
            .resource("serviceaccounts"),
    );
    let reconciler = Arc::new(bounded_reconciler(&h, BOUND));
    let pass = {
        let reconciler = reconciler.clone();
        let now = h.clock.now();
        tokio::spawn(async move { reconciler.reconcile_once(now).await })
    };
    // Bounded wait until the pass has as many deletes in flight as it may.
    held.until_waiting(BOUND).await;
    // Give an unbounded pass every chance to start more (a settle, not a measured time).
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    assert_eq!(
        held.waiting(),
        BOUND,
        "sessions being ended at once, with {SESSIONS} due"
    );
    held.release();
    let report = pass.await.unwrap().unwrap();
    assert_eq!(held.peak(), BOUND, "never more than the bound in flight");
    assert!(report.failures.is_empty(), "{:?}", report.failures);
    for credential in &credentials {
        assert!(
            report.removed_session(credential.session.as_str()),
            "{} was ended",
            credential.session
        );
    }
    assert!(h.objects().await.is_empty());
}

/// A pass from the watched stores confirms each session the stores show as due with a live
/// read before it ends it; those reads run concurrently, never more than the bound at once, so
/// a burst of expiries is not confirmed one by one. Once released, every one is ended.
pub async fn due_sessions_are_confirmed_concurrently_within_the_bound<B: SuiteBackend>(
    fixture: Fixture<B>,
) {
    const SESSIONS: usize = 10;
    const BOUND: usize = 3;
    let h = fixture.harness().await;
    let faults = h
        .backend
        .faults()
        .expect("this case needs to hold requests");
    let credentials = log_in_devices(&h, SESSIONS).await;
    let (watches, drive) = tka_core::kubernetes::ClusterWatches::new(&h.client, &h.namespace);
    let driving = tokio::spawn(drive);
    for _ in 0..1_000 {
        if watches.all_listed() && watches.sessions.watched().state().len() == SESSIONS {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert_eq!(watches.sessions.watched().state().len(), SESSIONS);
    let last = credentials
        .iter()
        .map(|c| c.session_expires_at)
        .max()
        .unwrap();
    h.clock.set(last + SignedDuration::from_secs(1));

    let mut settings = ReconcilerSettings::new(&h.namespace, "judging");
    settings.sessions_judged_at_once = BOUND;
    let reconciler = Arc::new(
        KubernetesReconciler::new(
            h.client.clone(),
            settings,
            Arc::new(h.clock.clone()),
            h.tailnet.clone(),
            Arc::new(crate::suite::suite_grant_check(&h.namespace)),
        )
        .with_watches(watches),
    );
    let held = faults.hold(&RequestMatch::any().verb(Verb::Get).resource("sessions"));
    let pass = {
        let reconciler = reconciler.clone();
        let now = h.clock.now();
        tokio::spawn(async move { reconciler.reconcile_once(now).await })
    };
    held.until_waiting(BOUND).await;
    // Give an unbounded pass every chance to start more (a settle, not a measured time).
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    assert_eq!(
        held.waiting(),
        BOUND,
        "sessions confirmed at once, with {SESSIONS} due"
    );
    held.release();
    let report = pass.await.unwrap().unwrap();
    assert_eq!(held.peak(), BOUND, "never more than the bound in flight");
    assert!(report.failures.is_empty(), "{:?}", report.failures);
    for credential in &credentials {
        assert!(
            report.removed_session(credential.session.as_str()),
            "{} was ended",
            credential.session
        );
    }
    assert!(h.objects().await.is_empty());
    driving.abort();
}

/// One session whose ServiceAccount cannot be deleted does not stop the pass from ending the
/// others; it stays (marked expired, still found) and the next pass ends it.
pub async fn a_session_that_fails_to_end_does_not_stop_the_others<B: SuiteBackend>(
    fixture: Fixture<B>,
) {
    let h = fixture.harness().await;
    let faults = h.backend.faults().expect("this case needs fault injection");
    let credentials = log_in_devices(&h, 3).await;
    let stuck = credentials[0].session.as_str().to_owned();
    let last = credentials
        .iter()
        .map(|c| c.session_expires_at)
        .max()
        .unwrap();
    h.clock.set(last + SignedDuration::from_secs(1));
    // Its ServiceAccount's delete fails for the whole pass: when the session is ended, and when
    // the orphan sweep (which sees it expired) tries too.
    let stuck_sa = RequestMatch::any()
        .verb(Verb::Delete)
        .resource("serviceaccounts")
        .name(&stuck);
    faults.fail_write(&stuck_sa, 1, FailureMode::Refused);
    faults.fail_write(&stuck_sa, 2, FailureMode::Refused);

    let report = bounded_reconciler(&h, 2)
        .reconcile_once(h.clock.now())
        .await
        .unwrap();
    assert!(!report.failures.is_empty());
    assert!(
        report.failures.iter().all(|f| f.contains(&stuck)),
        "{:?}",
        report.failures
    );
    assert!(!report.removed_session(&stuck));
    for other in &credentials[1..] {
        assert!(report.removed_session(other.session.as_str()));
    }
    let objects = h.objects().await;
    let left = objects.session(&stuck).expect("the failed session is kept");
    assert_eq!(left.phase(), Some(SessionPhase::Expired));
    let (sas, _, _) = objects.children_of(&stuck);
    assert_eq!(sas.len(), 1, "its ServiceAccount is still there");
    for other in &credentials[1..] {
        assert!(objects.session(other.session.as_str()).is_none());
    }

    faults.clear_faults();
    let next = h.reconcile().await;
    assert!(next.failures.is_empty(), "{:?}", next.failures);
    assert!(next.removed_session(&stuck), "the next pass ends it");
    assert!(h.objects().await.is_empty());
}

/// A pass acts only on the session it decided on. A reconciler whose clock says a session is
/// over starts to end it; meanwhile the device logs in again on a replica whose clock says it is
/// still live, and extends it. The pass's mark then conflicts, and its retry finds a newer spec:
/// it leaves the session (with its ServiceAccount) alone for the next pass to judge, instead of
/// ending the session that was just extended.
pub async fn a_session_extended_while_being_ended_is_left_alone<B: SuiteBackend>(
    fixture: Fixture<B>,
) {
    let h = fixture.harness().await;
    let faults = h
        .backend
        .faults()
        .expect("this case needs to hold requests");
    let identity = Person::AliceLaptop.identity();
    let first = h
        .issuer
        .issue(&identity, &h.decision("sre", "1h"))
        .await
        .unwrap();
    let name = first.session.as_str().to_owned();

    let held = faults.hold(
        &RequestMatch::any()
            .verb(Verb::Update)
            .resource("sessions")
            .subresource("status")
            .name(&name),
    );
    // The reconciler's replica runs ahead: for it the session is over.
    let ahead = tka_core::ManualClock::new(first.session_expires_at + SignedDuration::from_secs(1));
    let reconciler = KubernetesReconciler::new(
        h.client.clone(),
        ReconcilerSettings::new(&h.namespace, "ahead"),
        Arc::new(ahead.clone()),
        h.tailnet.clone(),
        Arc::new(crate::suite::suite_grant_check(&h.namespace)),
    );
    let pass = tokio::spawn(async move { reconciler.reconcile_once(ahead.now()).await });
    assert!(
        held.until_waiting(1).await,
        "the pass's status write was never held"
    );

    // The same device logs in again through a replica whose clock says the session is live.
    let decision = h.decision("sre", "2h");
    let login = h.issuer.issue(&identity, &decision);
    // Its spec write goes through; its own status write is held beside the pass's mark.
    let release = async {
        assert!(
            held.until_waiting(2).await,
            "2 status writes were never held"
        );
        held.release();
    };
    let (extended, ()) = tokio::join!(login, release);
    let extended = extended.expect("the login extends the session");
    assert_eq!(extended.session.as_str(), name);
    assert!(extended.session_expires_at > first.session_expires_at);
    let report = pass.await.unwrap().unwrap();
    assert!(
        !report.removed_session(&name),
        "the pass ended a session that was extended under it: {report:?}"
    );
    let objects = h.objects().await;
    let left = objects.session(&name).expect("the extended session stays");
    assert_eq!(left.expires_at(), extended.session_expires_at);
    assert_ne!(left.phase(), Some(SessionPhase::Expired));
    let (sas, _, _) = objects.children_of(&name);
    assert_eq!(sas.len(), 1, "its ServiceAccount stays");

    // Judged again on the spec it now has, the session is ended only once it is over.
    let next = h.reconcile().await;
    assert!(!next.removed_session(&name), "{next:?}");
}
