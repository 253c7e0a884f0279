//! [`FakeClusterBackend`]: the behaviour suite's backend on a [`FakeCluster`] with a
//! [`ManualClock`], fault injection and a call log.
//! It only adapts the fake to the suite's backend traits; the cases must not know it is a fake.

use std::sync::Arc;

use async_trait::async_trait;
use jiff::Timestamp;
use tka_core::ManualClock;

use super::{FailureMode, FaultInjector, SuiteBackend};
use crate::cluster::{Call, FakeCluster, Fault, FaultRule, RequestMatch, Verb};

/// A fresh FakeCluster per case, on a manual clock.
#[derive(Debug, Clone)]
pub struct FakeClusterBackend {
    cluster: FakeCluster,
    clock: ManualClock,
}

impl FakeClusterBackend {
    /// A fresh cluster whose clock starts now.
    pub async fn start() -> Self {
        let clock = ManualClock::new(Timestamp::now());
        let cluster = FakeCluster::builder()
            .clock(Arc::new(clock.clone()))
            .build();
        Self { cluster, clock }
    }

    /// The fake itself, for assertions beyond the API.
    pub fn cluster(&self) -> &FakeCluster {
        &self.cluster
    }
}

impl FaultInjector for FakeClusterBackend {
    fn fail_write(&self, request: &RequestMatch, nth: u32, mode: FailureMode) {
        let rule = FaultRule::on(request.clone(), Fault::InternalError).nth(nth);
        self.cluster.inject(match mode {
            FailureMode::AnswerLost => rule.after_commit(),
            FailureMode::Refused => rule,
        });
    }

    fn stall_write(&self, request: &RequestMatch, nth: u32, duration: std::time::Duration) {
        let rule = FaultRule::on(request.clone(), Fault::Timeout { after: duration }).nth(nth);
        self.cluster.inject(rule);
    }

    fn clear_faults(&self) {
        self.cluster.clear_faults();
    }

    fn writes(&self) -> Vec<Call> {
        self.cluster
            .calls()
            .into_iter()
            .filter(|call| {
                matches!(
                    call.verb,
                    Verb::Create | Verb::Update | Verb::Patch | Verb::Delete
                )
            })
            .collect()
    }

    fn clear_calls(&self) {
        self.cluster.clear_calls();
    }
}

#[async_trait]
impl SuiteBackend for FakeClusterBackend {
    async fn client(&self) -> kube::Client {
        self.cluster.client()
    }

    fn clock(&self) -> ManualClock {
        self.clock.clone()
    }

    fn namespace(&self) -> &str {
        "tka-system"
    }

    fn faults(&self) -> Option<&dyn FaultInjector> {
        Some(self)
    }

    fn server_follows_clock(&self) -> bool {
        true
    }

    async fn token_authenticates(&self, token: &str) -> Option<bool> {
        Some(self.cluster.token_is_valid(token))
    }
}
