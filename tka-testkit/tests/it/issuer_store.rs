//! The issuer's first look at a device's sessions through a watched Session store (as a server
//! wires it): a login then lists no Sessions from the API server, whose label-selected list costs
//! time in proportion to every Session in the cluster; an issuer without a store still lists.

use std::time::Duration;

use tka_core::Clock;
use tka_core::issuer::{CredentialIssuer, IssueOutcome};
use tka_testkit::cluster::Verb;
use tka_testkit::suite::{FakeClusterBackend, Fixture, Person};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_login_through_a_listed_store_lists_no_sessions() {
    let h = Fixture::new(FakeClusterBackend::start).harness().await;
    let cluster = h.backend.cluster().clone();
    let identity = Person::AliceLaptop.identity();
    let decision = h.decision("sre", "1h");

    // Allowed baseline: without a store, a login lists the device's sessions (before and after
    // creating one).
    let created = h.issuer.issue(&identity, &decision).await.unwrap();
    assert_eq!(created.outcome, IssueOutcome::Created);
    assert!(!cluster.calls_to(Verb::List, "sessions").is_empty());
    h.issuer.revoke(&Person::AliceLaptop.node()).await.unwrap();

    let (issuer, guard) = h.issuer_with_store();
    let sessions = &guard.watches().sessions;
    for _ in 0..400 {
        if sessions.watched().is_listed() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(sessions.watched().is_listed(), "the store never listed");

    // With the listed store: a new session and an extension, and no LIST of Sessions.
    cluster.clear_calls();
    let created = issuer.issue(&identity, &decision).await.unwrap();
    assert_eq!(created.outcome, IssueOutcome::Created);
    // The extension may find the store a step behind; it then retries with a list, so wait
    // for the store to hold the completed session first, as a later login would find it.
    for _ in 0..400 {
        if sessions
            .live_for_node(&Person::AliceLaptop.node(), h.clock.now())
            .is_some_and(|s| s.is_complete())
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let extended = issuer.issue(&identity, &decision).await.unwrap();
    assert_eq!(extended.outcome, IssueOutcome::Extended);
    assert_eq!(extended.session, created.session);
    let lists = cluster.calls_to(Verb::List, "sessions");
    assert!(lists.is_empty(), "{lists:?}");

    // One session for the device, complete.
    let objects = h.objects().await;
    assert_eq!(objects.sessions.len(), 1);
}
