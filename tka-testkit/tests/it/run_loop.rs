//! The reconciler's run loop on paused time (`tokio::time::pause`) against FakeCluster: it rests
//! until something is due. The next pass comes at the earliest `expiresAt`, a new session that
//! expires sooner brings it forward, lease renewals make no pass, and between passes nothing is
//! listed (the passes read the shared watches); a new session is first re-validated one period
//! after its login. Time never passes for real: the assertions are
//! about which pass happens when on the paused clock, not about how fast anything is.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::coordination::v1::Lease;
use kube::Api;
use tka_core::Clock;
use tka_core::kubernetes::{KubernetesReconciler, ReconcilerSettings};
use tka_testkit::cluster::{Fault, FaultRule, RequestMatch, Verb};
use tka_testkit::suite::{FakeClusterBackend, Harness, LabelledObjects, Person, suite_grant_check};
use tokio::time::Instant;

/// tka's clock following tokio's (paused) clock from `base`.
#[derive(Debug)]
struct TokioClock {
    base: Timestamp,
    start: Instant,
}

impl Clock for TokioClock {
    fn now(&self) -> Timestamp {
        self.base + SignedDuration::try_from(self.start.elapsed()).unwrap()
    }
}

/// One pass the loop made: when (on the paused clock), how many sessions were live after it and
/// which sessions it ended.
#[derive(Debug, Clone)]
struct Pass {
    at: Instant,
    live: usize,
    ended: Vec<String>,
    /// GrantMappings whose condition the pass wrote.
    mappings_updated: Vec<String>,
}

/// `reconciler` with an observer that records each pass.
fn observed(
    reconciler: KubernetesReconciler,
) -> (Arc<KubernetesReconciler>, Arc<Mutex<Vec<Pass>>>) {
    let passes: Arc<Mutex<Vec<Pass>>> = Arc::default();
    let seen = passes.clone();
    let reconciler = reconciler.with_pass_observer(Arc::new(move |_, outcome| {
        let report = outcome.unwrap();
        seen.lock().unwrap().push(Pass {
            at: Instant::now(),
            live: report.live_sessions,
            ended: report
                .removed_of(tka_core::reconciler::ObjectKind::Session)
                .map(|r| r.name.clone())
                .collect(),
            mappings_updated: report.mappings_updated.clone(),
        });
    }));
    (Arc::new(reconciler), passes)
}

/// Runs `reconciler`'s loop until the returned sender is used.
fn spawn_run(
    reconciler: &Arc<KubernetesReconciler>,
) -> (
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<Result<(), tka_core::reconciler::ReconcileError>>,
) {
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let runner = reconciler.clone();
    let task = tokio::spawn(async move {
        runner
            .run(async {
                let _ = stopped.await;
            })
            .await
    });
    (stop, task)
}

const LISTED: [&str; 6] = [
    "sessions",
    "grantmappings",
    "clusterroles",
    "serviceaccounts",
    "clusterrolebindings",
    "rolebindings",
];

fn lists(backend: &FakeClusterBackend) -> usize {
    LISTED
        .iter()
        .map(|r| backend.cluster().calls_to(Verb::List, r).len())
        .sum()
}

fn sessions(objects: &LabelledObjects) -> Vec<String> {
    let mut names: Vec<String> = objects
        .sessions
        .iter()
        .map(kube::ResourceExt::name_any)
        .collect();
    names.sort();
    names
}

#[tokio::test(start_paused = true)]
async fn the_loop_rests_until_the_earliest_expiry_and_a_sooner_session_brings_it_forward() {
    let h = Harness::new(FakeClusterBackend::start().await).await;
    let clock = Arc::new(TokioClock {
        base: h.clock.now(),
        start: Instant::now(),
    });
    let alice = h.login(Person::AliceLaptop, "sre", "2h").await;
    let ci = h.login(Person::CiRunner, "ci", "1h").await;

    let mut settings = ReconcilerSettings::new(&h.namespace, "rests");
    // Only expiries decide here: no periodic re-validation or backstop within the test.
    settings.revalidate_every = SignedDuration::from_hours(24);
    settings.resync_every = Duration::from_secs(24 * 3600);
    let renew_every = Duration::try_from(settings.lease.duration / 3).unwrap();
    let (reconciler, passes) = observed(KubernetesReconciler::new(
        h.client.clone(),
        settings,
        clock.clone(),
        h.tailnet.clone(),
        Arc::new(suite_grant_check(&h.namespace)),
    ));
    // The ServiceAccounts are listed last, long after the others (as with thousands of them):
    // the first pass waits for them, and its own GrantMapping conditions make no second pass.
    h.backend.cluster().inject(
        FaultRule::on(
            RequestMatch::any().verb("list").resource("serviceaccounts"),
            Fault::Timeout {
                after: Duration::from_secs(5),
            },
        )
        .nth(1),
    );
    let (stop, task) = spawn_run(&reconciler);
    let passes_now = || passes.lock().unwrap().clone();
    let instant_of = |at: Timestamp| {
        let since = at.duration_since(clock.base);
        clock.start + Duration::try_from(since).unwrap()
    };

    // The initial lists of every store make one pass, not one per object.
    for _ in 0..60 {
        if !passes_now().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    tokio::time::sleep(Duration::from_secs(10)).await;
    let first = passes_now();
    assert_eq!(first.len(), 1, "{first:?}");
    assert_eq!(first[0].live, 2);
    let lists_after_first = lists(&h.backend);

    // A minute of rest: the lease is renewed several times, and no renewal makes a pass.
    let leases: Api<Lease> = Api::namespaced(h.client.clone(), &h.namespace);
    let renewed_before = leases
        .get("tka-reconciler")
        .await
        .unwrap()
        .spec
        .unwrap()
        .renew_time;
    tokio::time::sleep(renew_every * 6).await;
    let renewed_after = leases
        .get("tka-reconciler")
        .await
        .unwrap()
        .spec
        .unwrap()
        .renew_time;
    assert!(renewed_after.is_some());
    assert_ne!(
        renewed_before, renewed_after,
        "the lease was renewed meanwhile"
    );
    assert_eq!(passes_now().len(), 1, "a renewal is not a pass");
    assert_eq!(
        lists(&h.backend),
        lists_after_first,
        "nothing is listed between passes"
    );

    // A new session that expires sooner than any other: the store tells the loop, which moves
    // its next pass to that expiry without passing now.
    h.clock.set(clock.now());
    let phone = h.login(Person::AlicePhone, "dev", "30m").await;
    assert!(phone.session_expires_at < ci.session_expires_at);
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(
        passes_now().len(),
        1,
        "a live session coming is nothing due"
    );
    // (The login itself looks the device's session up; the reconciler lists nothing.)
    let lists_after_login = lists(&h.backend);
    let phone_due = instant_of(phone.session_expires_at);
    tokio::time::sleep_until(phone_due - Duration::from_secs(1)).await;
    assert_eq!(passes_now().len(), 1, "no pass before the earliest expiry");
    assert_eq!(
        lists(&h.backend),
        lists_after_login,
        "nothing is listed between passes"
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    let second = passes_now();
    assert_eq!(second.len(), 2, "{second:?}");
    assert!(second[1].at >= phone_due, "{second:?}");
    assert!(
        second[1].at <= phone_due + Duration::from_secs(2),
        "{second:?}"
    );
    assert_eq!(second[1].ended, vec![phone.session.to_string()]);

    // Then the loop rests until the next expiry, the CI runner's; Alice's stays.
    let ci_due = instant_of(ci.session_expires_at);
    tokio::time::sleep_until(ci_due - Duration::from_secs(1)).await;
    assert_eq!(passes_now().len(), 2, "{:?}", passes_now());
    tokio::time::sleep(Duration::from_secs(3)).await;
    let third = passes_now();
    assert_eq!(third.len(), 3, "{third:?}");
    assert!(third[2].at >= ci_due);
    assert_eq!(third[2].ended, vec![ci.session.to_string()]);
    assert_eq!(third[2].live, 1);
    assert_eq!(
        sessions(&h.objects().await),
        vec![alice.session.to_string()],
        "the live, granted session stays"
    );

    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(30), task)
        .await
        .expect("run stops on shutdown")
        .unwrap()
        .unwrap();
}

/// Waits (bounded) until `ready` holds.
async fn until(what: &str, mut ready: impl FnMut() -> bool) {
    for _ in 0..400 {
        if ready() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("{what} never happened");
}

/// A pass reads the stores, which may be behind the cluster: a session the store still shows
/// at its old `expiresAt` was extended meanwhile. The pass confirms with a live read before it
/// ends anything, so the live, granted session stays; once it is really over, it goes. The
/// pass lists nothing.
#[tokio::test]
async fn a_store_behind_the_cluster_never_ends_an_extended_session() {
    let h = Harness::new(FakeClusterBackend::start().await).await;
    let first = h.login(Person::AliceLaptop, "sre", "1h").await;
    let (watches, drive) = tka_core::kubernetes::ClusterWatches::new(&h.client, &h.namespace);
    let driver = tokio::spawn(drive);
    let name = first.session.to_string();
    until("the stores list the session", || {
        watches.all_listed()
            && watches
                .sessions
                .watched()
                .state()
                .iter()
                .any(|s| kube::ResourceExt::name_any(&**s) == name && s.is_complete())
    })
    .await;
    // From here on the stores hold what they hold now.
    driver.abort();
    let _ = driver.await;

    h.advance(SignedDuration::from_mins(30));
    let extended = h.login(Person::AliceLaptop, "sre", "2h").await;
    assert_eq!(extended.session, first.session);
    assert!(extended.session_expires_at > first.session_expires_at);
    let reconciler = h.another_reconciler("behind").with_watches(watches.clone());

    // Refused: ending it from the store's stale expiresAt.
    h.clock
        .set(first.session_expires_at + SignedDuration::from_secs(1));
    h.backend.cluster().clear_calls();
    let report = tka_core::reconciler::Reconciler::reconcile_once(&reconciler, h.clock.now())
        .await
        .unwrap();
    assert!(report.removed.is_empty(), "{:?}", report.removed);
    assert_eq!(
        lists(&h.backend),
        0,
        "the pass read the stores: {:?}",
        h.backend.cluster().calls()
    );
    assert_eq!(sessions(&h.objects().await), vec![name.clone()]);

    // Allowed: past the extended end, it goes.
    h.clock
        .set(extended.session_expires_at + SignedDuration::from_secs(1));
    let report = tka_core::reconciler::Reconciler::reconcile_once(&reconciler, h.clock.now())
        .await
        .unwrap();
    assert!(report.removed_session(&name), "{:?}", report.removed);
    assert!(h.objects().await.is_empty());
}

/// A long pass does not starve the Lease: it is renewed on its own timer while the pass runs.
#[tokio::test(start_paused = true)]
async fn the_lease_is_renewed_during_a_long_pass() {
    let h = Harness::new(FakeClusterBackend::start().await).await;
    let clock = Arc::new(TokioClock {
        base: h.clock.now(),
        start: Instant::now(),
    });
    let _alice = h.login(Person::AliceLaptop, "sre", "2h").await;
    let settings = ReconcilerSettings::new(&h.namespace, "long");
    let lease_duration = Duration::try_from(settings.lease.duration).unwrap();
    // The first pass hangs on its first GrantMapping condition for three lease durations.
    h.backend.cluster().inject(
        FaultRule::on(
            RequestMatch::any()
                .verb("patch")
                .resource("grantmappings")
                .subresource("status"),
            Fault::Timeout {
                after: lease_duration * 3,
            },
        )
        .nth(1),
    );
    let passes: Arc<Mutex<usize>> = Arc::default();
    let seen = passes.clone();
    let reconciler = Arc::new(
        KubernetesReconciler::new(
            h.client.clone(),
            settings,
            clock.clone(),
            h.tailnet.clone(),
            Arc::new(suite_grant_check(&h.namespace)),
        )
        .with_pass_observer(Arc::new(move |_, _| *seen.lock().unwrap() += 1)),
    );
    let (stop, task) = spawn_run(&reconciler);
    let leases: Api<Lease> = Api::namespaced(h.client.clone(), &h.namespace);
    let renewed = || async {
        leases
            .get_opt("tka-reconciler")
            .await
            .unwrap()
            .and_then(|l| l.spec)
            .and_then(|s| s.renew_time)
    };
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(
        *passes.lock().unwrap(),
        0,
        "the first pass is still running"
    );
    let early = renewed().await.expect("the lease is held");
    tokio::time::sleep(lease_duration * 2).await;
    assert_eq!(
        *passes.lock().unwrap(),
        0,
        "the first pass is still running"
    );
    let later = renewed().await.unwrap();
    assert!(
        later.0 > early.0,
        "renewed during the pass: {early:?} {later:?}"
    );
    let spec = leases.get("tka-reconciler").await.unwrap().spec.unwrap();
    assert_eq!(spec.holder_identity.as_deref(), Some("long"));
    // Allowed: the pass ends and the loop carries on.
    tokio::time::sleep(lease_duration * 2).await;
    assert_eq!(*passes.lock().unwrap(), 1);

    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(30), task)
        .await
        .expect("run stops on shutdown")
        .unwrap()
        .unwrap();
}

/// A session made after the loop's last pass is re-checked `revalidate_every` after its login,
/// not at the next pass something else makes due: its grant withdrawn right after the login,
/// the loop ends it then, with no expiry and no backstop anywhere near.
#[tokio::test(start_paused = true)]
async fn a_new_session_is_first_revalidated_one_period_after_its_login() {
    let h = Harness::new(FakeClusterBackend::start().await).await;
    let clock = Arc::new(TokioClock {
        base: h.clock.now(),
        start: Instant::now(),
    });
    let every = Duration::from_secs(30);
    let mut settings = ReconcilerSettings::new(&h.namespace, "revalidates");
    settings.revalidate_every = SignedDuration::try_from(every).unwrap();
    settings.resync_every = Duration::from_secs(24 * 3600);
    let (reconciler, passes) = observed(KubernetesReconciler::new(
        h.client.clone(),
        settings,
        clock.clone(),
        h.tailnet.clone(),
        Arc::new(suite_grant_check(&h.namespace)),
    ));
    let (stop, task) = spawn_run(&reconciler);
    let passes_now = || passes.lock().unwrap().clone();
    for _ in 0..60 {
        if !passes_now().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(passes_now().len(), 1, "{:?}", passes_now());

    h.clock.set(clock.now());
    let phone = h.login(Person::AlicePhone, "dev", "1h").await;
    let logged_in = Instant::now();
    h.tailnet.set_capabilities(&Person::AlicePhone.node(), &[]);
    let name = phone.session.to_string();
    let ended_by = |at: Instant| {
        passes_now()
            .iter()
            .any(|p| p.at <= at && p.ended.contains(&name))
    };

    // Refused to wait for the expiry: ended one period after the login (plus the loop's
    // minimum interval), not before.
    tokio::time::sleep_until(logged_in + every - Duration::from_secs(5)).await;
    assert!(!ended_by(Instant::now()), "{:?}", passes_now());
    assert_eq!(sessions(&h.objects().await), vec![name.clone()]);
    tokio::time::sleep_until(logged_in + every + Duration::from_secs(5)).await;
    assert!(ended_by(Instant::now()), "{:?}", passes_now());
    assert!(h.objects().await.is_empty());

    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(30), task)
        .await
        .expect("run stops on shutdown")
        .unwrap()
        .unwrap();
}

/// Events that come just before an expiry (here another device's login; at scale, the last
/// pass's own deletions) are settled for up to a second, but never past a pass already due:
/// the expired session ends at its `expiresAt`, not a settle time later.
#[tokio::test(start_paused = true)]
async fn an_expiry_due_while_events_settle_is_not_delayed_by_them() {
    let h = Harness::new(FakeClusterBackend::start().await).await;
    let clock = Arc::new(TokioClock {
        base: h.clock.now(),
        start: Instant::now(),
    });
    let mut settings = ReconcilerSettings::new(&h.namespace, "settles");
    settings.revalidate_every = SignedDuration::from_hours(24);
    settings.resync_every = Duration::from_secs(24 * 3600);
    let settle = settings.min_interval;
    let (reconciler, passes) = observed(KubernetesReconciler::new(
        h.client.clone(),
        settings,
        clock.clone(),
        h.tailnet.clone(),
        Arc::new(suite_grant_check(&h.namespace)),
    ));
    let (stop, task) = spawn_run(&reconciler);
    let passes_now = || passes.lock().unwrap().clone();
    for _ in 0..60 {
        if !passes_now().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(passes_now().len(), 1, "{:?}", passes_now());

    h.clock.set(clock.now());
    let phone = h.login(Person::AlicePhone, "dev", "30m").await;
    let due = {
        let since = phone.session_expires_at.duration_since(clock.base);
        clock.start + Duration::try_from(since).unwrap()
    };
    // A burst of events a fifth of the settle time before the expiry.
    tokio::time::sleep_until(due - settle / 5).await;
    assert_eq!(passes_now().len(), 1, "{:?}", passes_now());
    h.clock.set(clock.now());
    let ci = h.login(Person::CiRunner, "ci", "1h").await;
    tokio::time::sleep_until(due + 3 * settle).await;

    let name = phone.session.to_string();
    let ended: Vec<Pass> = passes_now()
        .into_iter()
        .filter(|p| p.ended.contains(&name))
        .collect();
    assert_eq!(ended.len(), 1, "{:?}", passes_now());
    assert!(ended[0].at >= due, "{ended:?}");
    // Settling the login's events from their start would have put the pass at
    // `due + 4/5 settle`.
    assert!(
        ended[0].at < due + settle / 2,
        "the pass waited for the burst to settle: {ended:?}, due {due:?}"
    );
    assert_eq!(
        sessions(&h.objects().await),
        vec![ci.session.to_string()],
        "the other device's session stays"
    );

    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(30), task)
        .await
        .expect("run stops on shutdown")
        .unwrap()
        .unwrap();
}

/// Unknown until `known` is set, then bindable: the server's bind check, still running.
#[derive(Debug, Default)]
struct LateBindCheck {
    known: std::sync::atomic::AtomicBool,
}

impl tka_core::reconciler::MappingHook for LateBindCheck {
    fn bindable(&self, _: &tka_core::reconciler::NamedMapping) -> tka_core::policy::Bindable {
        if self.known.load(std::sync::atomic::Ordering::SeqCst) {
            tka_core::policy::Bindable::Yes
        } else {
            tka_core::policy::Bindable::Unknown("not asked yet".to_owned())
        }
    }
}

#[tokio::test(start_paused = true)]
async fn a_mapping_not_judged_yet_gets_its_condition_from_a_pass_soon_after() {
    let h = Harness::new(FakeClusterBackend::start().await).await;
    let clock = Arc::new(TokioClock {
        base: h.clock.now(),
        start: Instant::now(),
    });
    let mut settings = ReconcilerSettings::new(&h.namespace, "unchecked");
    settings.resync_every = Duration::from_secs(24 * 3600);
    let check = Arc::new(LateBindCheck::default());
    let (reconciler, passes) = observed(
        KubernetesReconciler::new(
            h.client.clone(),
            settings,
            clock.clone(),
            h.tailnet.clone(),
            Arc::new(suite_grant_check(&h.namespace)),
        )
        .with_mapping_hook(check.clone()),
    );
    let (stop, task) = spawn_run(&reconciler);
    let passes = || passes.lock().unwrap().clone();
    for _ in 0..60 {
        if !passes().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    // The first pass could not judge the mappings, so it wrote no condition.
    let first = passes();
    assert_eq!(first.len(), 1, "{first:?}");
    assert!(first[0].mappings_updated.is_empty(), "{first:?}");

    // The bind check answers (which is no event the loop watches); a pass within the retry
    // writes the conditions, long before the day-long resync.
    check.known.store(true, std::sync::atomic::Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(15)).await;
    let later = passes();
    assert!(
        later.iter().skip(1).any(|p| !p.mappings_updated.is_empty()),
        "{later:?}"
    );

    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(30), task)
        .await
        .expect("run stops on shutdown")
        .unwrap()
        .unwrap();
}

/// Sessions that expire a second apart, closer than the loop's minimum interval between passes
/// (three seconds here; `expiresAt` has whole seconds): each is ended at its own `expiresAt` by
/// an ending step, none waits for the minimum interval after the one before, and everything
/// they owned goes.
#[tokio::test(start_paused = true)]
async fn expiries_closer_than_the_minimum_interval_each_end_at_their_own_time() {
    let h = Harness::new(FakeClusterBackend::start().await).await;
    let clock = Arc::new(TokioClock {
        base: h.clock.now(),
        start: Instant::now(),
    });
    let mut settings = ReconcilerSettings::new(&h.namespace, "burst");
    settings.revalidate_every = SignedDuration::from_hours(24);
    settings.resync_every = Duration::from_secs(24 * 3600);
    settings.min_interval = Duration::from_secs(3);
    let min_interval = settings.min_interval;
    let (reconciler, passes) = observed(KubernetesReconciler::new(
        h.client.clone(),
        settings,
        clock.clone(),
        h.tailnet.clone(),
        Arc::new(suite_grant_check(&h.namespace)),
    ));
    let (stop, task) = spawn_run(&reconciler);
    let passes_now = || passes.lock().unwrap().clone();
    for _ in 0..60 {
        if !passes_now().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(passes_now().len(), 1, "{:?}", passes_now());

    let apart = Duration::from_secs(1);
    let mut logins = Vec::new();
    for (person, role) in [
        (Person::AlicePhone, "dev"),
        (Person::CiRunner, "ci"),
        (Person::AliceLaptop, "sre"),
    ] {
        h.clock.set(clock.now());
        logins.push(h.login(person, role, "30m").await);
        tokio::time::sleep(apart).await;
    }
    let due =
        |at: Timestamp| clock.start + Duration::try_from(at.duration_since(clock.base)).unwrap();
    let dues: Vec<Instant> = logins.iter().map(|l| due(l.session_expires_at)).collect();
    assert!(
        dues.windows(2)
            .all(|w| w[1] > w[0] && w[1] - w[0] < min_interval)
    );
    tokio::time::sleep_until(dues[0] - Duration::from_secs(1)).await;
    assert_eq!(
        passes_now().len(),
        1,
        "nothing is due before the first expiry"
    );
    tokio::time::sleep_until(dues[2] + 3 * min_interval).await;

    let all = passes_now();
    for (login, due) in logins.iter().zip(&dues) {
        let name = login.session.to_string();
        let ended: Vec<&Pass> = all.iter().filter(|p| p.ended.contains(&name)).collect();
        assert_eq!(ended.len(), 1, "{name}: {all:?}");
        assert!(
            ended[0].at >= *due,
            "{name} ended before its expiry: {all:?}"
        );
        // A pass held to the minimum interval after the one that ended the session before
        // would have come two seconds later.
        assert!(
            ended[0].at < *due + min_interval / 2,
            "{name} waited for the minimum interval: {all:?}, due {due:?}"
        );
    }
    assert!(
        h.objects().await.is_empty(),
        "everything they owned is gone"
    );

    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(30), task)
        .await
        .expect("run stops on shutdown")
        .unwrap()
        .unwrap();
}

/// An ending step that cannot end its session (the API server fails the ServiceAccount's
/// delete once) leaves it to a pass, which comes after the failure pause and ends it, long
/// before any resync.
#[tokio::test(start_paused = true)]
async fn a_session_an_ending_step_fails_to_end_is_ended_by_a_pass_soon_after() {
    let h = Harness::new(FakeClusterBackend::start().await).await;
    let clock = Arc::new(TokioClock {
        base: h.clock.now(),
        start: Instant::now(),
    });
    let mut settings = ReconcilerSettings::new(&h.namespace, "retries");
    settings.revalidate_every = SignedDuration::from_hours(24);
    settings.resync_every = Duration::from_secs(24 * 3600);
    let (reconciler, passes) = observed(KubernetesReconciler::new(
        h.client.clone(),
        settings,
        clock.clone(),
        h.tailnet.clone(),
        Arc::new(suite_grant_check(&h.namespace)),
    ));
    let (stop, task) = spawn_run(&reconciler);
    let passes_now = || passes.lock().unwrap().clone();
    for _ in 0..60 {
        if !passes_now().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(passes_now().len(), 1, "{:?}", passes_now());

    h.clock.set(clock.now());
    let phone = h.login(Person::AlicePhone, "dev", "30m").await;
    let due = clock.start
        + Duration::try_from(phone.session_expires_at.duration_since(clock.base)).unwrap();
    h.backend.cluster().inject(
        FaultRule::on(
            RequestMatch::any()
                .verb("delete")
                .resource("serviceaccounts"),
            Fault::InternalError,
        )
        .nth(1),
    );
    tokio::time::sleep_until(due + Duration::from_secs(1)).await;
    let name = phone.session.to_string();
    assert!(
        passes_now().iter().all(|p| !p.ended.contains(&name)),
        "the first try failed: {:?}",
        passes_now()
    );
    assert_eq!(sessions(&h.objects().await), vec![name.clone()]);

    tokio::time::sleep_until(due + Duration::from_secs(30)).await;
    let ended: Vec<Pass> = passes_now()
        .into_iter()
        .filter(|p| p.ended.contains(&name))
        .collect();
    assert_eq!(ended.len(), 1, "{:?}", passes_now());
    assert!(h.objects().await.is_empty());

    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(30), task)
        .await
        .expect("run stops on shutdown")
        .unwrap()
        .unwrap();
}
