//! Logging in: the objects a login makes, extending, changing role, refreshing, several devices,
//! and concurrent logins of one device. These cases must not depend on fault injection.

use std::collections::BTreeSet;
use std::sync::Arc;

use jiff::{SignedDuration, Timestamp};
use kube::ResourceExt;
use tka_core::Clock;
use tka_core::issuer::{CredentialIssuer, IssueError, IssueOutcome};
use tka_core::kubernetes::{NODE_LABEL, REVISION_LABEL, Session, USER_LABEL};
use tka_core::naming::NameSuffix;

use crate::suite::SuiteBackend;
use crate::suite::harness::{Fixture, Person};

use super::{assert_session_objects, binding_ids, sa_uid};

/// A user device and a tagged device each get exactly the objects DESIGN §5 names.
pub async fn a_user_device_and_a_tagged_device_get_the_objects_of_design<B: SuiteBackend>(
    fixture: Fixture<B>,
) {
    let h = fixture.harness().await;
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
pub async fn relogin_with_the_same_role_extends_the_session<B: SuiteBackend>(fixture: Fixture<B>) {
    let h = fixture.harness().await;
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
pub async fn a_role_change_gets_new_bindings_and_deletes_the_old<B: SuiteBackend>(
    fixture: Fixture<B>,
) {
    let h = fixture.harness().await;
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
pub async fn refresh_mints_tokens_only_for_a_live_session<B: SuiteBackend>(fixture: Fixture<B>) {
    let h = fixture.harness().await;
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

/// Two devices of one person have independent sessions.
pub async fn two_devices_of_one_user_have_independent_sessions<B: SuiteBackend>(
    fixture: Fixture<B>,
) {
    let h = fixture.harness().await;
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

/// Many logins of one device at once, asking for different roles, end with one session whose
/// bindings are all of one role.
pub async fn concurrent_logins_of_one_device_never_leave_two_roles<B: SuiteBackend>(
    fixture: Fixture<B>,
) {
    concurrent_logins(fixture, false).await;
}

/// The same, with every other replica finding the device's sessions in a watched Session store
/// of its own (as a server does) instead of listing them: a store that lags costs a retry, never
/// a second session or a second role.
pub async fn concurrent_logins_through_watched_stores_never_leave_two_roles<B: SuiteBackend>(
    fixture: Fixture<B>,
) {
    concurrent_logins(fixture, true).await;
}

async fn concurrent_logins<B: SuiteBackend>(fixture: Fixture<B>, stores: bool) {
    let h = fixture.harness().await;
    let identity = Person::AliceLaptop.identity();
    // Replicas with stores keep them across rounds, as servers do.
    let replicas: Vec<_> = (0..8)
        .map(|i| {
            if stores && i % 2 == 0 {
                let (issuer, guard) = h.issuer_with_store();
                (Arc::new(issuer), Some(guard))
            } else {
                let issuer =
                    h.issuer_with_suffixes(Arc::new(|| NameSuffix::from_random(rand::random())));
                (Arc::new(issuer), None)
            }
        })
        .collect();
    for round in 0..10 {
        let mut tasks = Vec::new();
        for (i, (issuer, _)) in replicas.iter().enumerate() {
            // Each login through its own issuer, as if through different server replicas.
            let issuer = issuer.clone();
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
