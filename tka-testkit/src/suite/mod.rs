//! The behaviour suite of the Kubernetes backend: what `KubernetesIssuer` and
//! `KubernetesReconciler` must do, written once and run against every backend that speaks the
//! Kubernetes API (FakeCluster here; a real kube-apiserver in the end-to-end tests), so the fake
//! cannot drift from real semantics.
//!
//! A backend implements [`SuiteBackend`]; [`behaviour_suite!`](crate::behaviour_suite) expands to
//! one `#[tokio::test]` per case. The cases talk to the cluster only through the kube API; the
//! ones that need fault injection or a call log are generated only when the backend says it has
//! them (`behaviour_suite!(make; faults)`), so no case ever passes by skipping its assertions.
//!
//! Every case gets a fresh backend from the constructor expression; a backend that shares one API
//! server between cases must serialize them and wipe tka's objects in between.

// This module is a test suite compiled as a library so that other test binaries can run it:
// failing loudly is its job.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod cases;
mod fake;
mod harness;
mod tailnet;

use async_trait::async_trait;
use tka_core::ManualClock;

use crate::cluster::{Call, Hold, RequestMatch};

pub use cases::*;
pub use fake::FakeClusterBackend;
pub use harness::{
    Fixture, Harness, LabelledObjects, Person, SUITE_CLUSTER, StoreGuard, TEAM_NAMESPACES,
    suite_grant_check, suite_mappings, suite_policy, suite_views,
};
pub use tailnet::TestTailnet;

/// How an injected failure behaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FailureMode {
    /// The request fails before the server acts on it.
    Refused,
    /// The server acts on the request, then the answer is lost (an error reaches the client).
    AnswerLost,
}

/// Fault injection and a call log: optional backend capabilities. Requests are named the way
/// FakeCluster names them: [`RequestMatch`] says which, [`Call`] is one in the log.
pub trait FaultInjector: Send + Sync {
    /// Makes the `nth` (1-based, counted from now) request that `request` matches fail with a
    /// server error.
    fn fail_write(&self, request: &RequestMatch, nth: u32, mode: FailureMode);

    /// Makes the `nth` request that `request` matches hang for `duration` before the server
    /// answers a retryable error (the client's retry then goes through): a request in flight for
    /// a while.
    fn stall_write(&self, request: &RequestMatch, nth: u32, duration: std::time::Duration);

    /// Holds every request `request` matches before the server acts on it, until the [`Hold`]
    /// is released; the hold counts how many wait at once (requests a client has in flight).
    fn hold(&self, request: &RequestMatch) -> Hold;

    /// Removes every injected failure.
    fn clear_faults(&self);

    /// The write requests (create, update, patch, delete) received since the last
    /// [`clear_calls`](Self::clear_calls), in order, whether or not they succeeded.
    fn writes(&self) -> Vec<Call>;

    /// Forgets the recorded calls.
    fn clear_calls(&self);
}

/// An API server the suite runs against.
#[async_trait]
pub trait SuiteBackend: Send + Sync + 'static {
    /// A client with the rights tka-server has (or more).
    async fn client(&self) -> kube::Client;

    /// tka's clock in this case. It must start at the API server's "now" and only move forward,
    /// so `creationTimestamp`s and the clock agree about what is young.
    fn clock(&self) -> ManualClock;

    /// The server's namespace; it exists.
    fn namespace(&self) -> &str;

    /// Fault injection and the call log, when the backend has them.
    fn faults(&self) -> Option<&dyn FaultInjector> {
        None
    }

    /// Whether the API server's own clock is [`clock`](Self::clock) (a fake), so that
    /// server-side times (token expiry) follow it when a case moves it forward.
    fn server_follows_clock(&self) -> bool {
        false
    }

    /// Whether a token still authenticates, when the backend can tell.
    async fn token_authenticates(&self, _token: &str) -> Option<bool> {
        None
    }
}

/// Expands to one `#[tokio::test]` per behaviour case, each with a fresh backend from `$make`
/// (an expression evaluating to a future of a [`SuiteBackend`]). With `; faults`, also the cases
/// that need [`SuiteBackend::faults`]. With `; when GUARD`, each case first evaluates `GUARD` (a
/// `bool`) and returns at once when it is false (a backend whose components may be missing).
///
/// ```ignore
/// tka_testkit::behaviour_suite!(tka_testkit::suite::FakeClusterBackend::start(); faults);
/// ```
#[macro_export]
macro_rules! behaviour_suite {
    ($make:expr) => {
        $crate::behaviour_suite!($make; when true);
    };
    ($make:expr; when $guard:expr) => {
        $crate::behaviour_suite!(@cases ($guard) $make;
            a_user_device_and_a_tagged_device_get_the_objects_of_design,
            relogin_with_the_same_role_extends_the_session,
            a_role_change_gets_new_bindings_and_deletes_the_old,
            refresh_mints_tokens_only_for_a_live_session,
            logout_revokes_inline_and_is_idempotent,
            two_devices_of_one_user_have_independent_sessions,
            a_hand_written_session_never_gets_bindings,
            an_object_sharing_a_name_is_never_adopted,
            a_leftover_binding_cannot_serve_a_new_login,
            expiry_removes_every_child_in_one_pass,
            a_restarted_reconciler_requeues_from_the_sessions,
            orphans_are_swept_but_a_login_in_flight_is_not,
            a_session_extended_while_pending_gets_its_new_expiry,
            a_withdrawn_grant_revokes_at_the_next_validation,
            an_edited_grant_mapping_revokes_at_the_next_pass,
            grant_mappings_report_why_they_are_not_ready,
            concurrent_logins_of_one_device_never_leave_two_roles,
            concurrent_logins_through_watched_stores_never_leave_two_roles,
            two_reconcilers_at_once_are_harmless,
            the_lease_keeps_one_reconciler_active_and_hands_over,
            the_run_loop_reconciles_on_events_and_stops_on_shutdown,
            deleting_a_session_by_hand_ends_it_through_the_finalizer
        );
    };
    ($make:expr; faults) => {
        $crate::behaviour_suite!($make);
        $crate::behaviour_suite!(@cases (true) $make;
            a_failure_at_any_write_of_issue_leaves_a_session_or_nothing,
            a_failure_at_any_write_of_revoke_leaves_a_session_or_nothing,
            revoke_deletes_the_service_account_before_the_bindings,
            a_reconcile_pass_during_a_login_does_not_disturb_it,
            expired_sessions_end_concurrently_within_the_bound,
            a_session_that_fails_to_end_does_not_stop_the_others,
            a_session_extended_while_being_ended_is_left_alone,
            due_sessions_are_confirmed_concurrently_within_the_bound
        );
    };
    (@cases ($guard:expr) $make:expr; $($case:ident),+ $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                if !$guard {
                    return;
                }
                $crate::suite::$case($crate::suite::Fixture::new(|| $make)).await;
            }
        )+
    };
}
