//! [`FakeClusterBackend`]: the behaviour suite's backend on a [`FakeCluster`] with a
//! [`ManualClock`], fault injection and a call log.

use std::sync::Arc;

use async_trait::async_trait;
use jiff::Timestamp;
use tka_core::ManualClock;

use super::{FailureMode, FaultInjector, SuiteBackend, WriteStep, WriteVerb};
use crate::cluster::{FakeCluster, Fault, FaultRule, Verb};

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

fn verb(v: WriteVerb) -> Verb {
    match v {
        WriteVerb::Create => Verb::Create,
        WriteVerb::Update => Verb::Update,
        WriteVerb::Patch => Verb::Patch,
        WriteVerb::Delete => Verb::Delete,
    }
}

impl FaultInjector for FakeClusterBackend {
    fn fail_write(&self, step: &WriteStep, nth: u32, mode: FailureMode) {
        let mut rule =
            FaultRule::new(verb(step.verb), &step.resource, Fault::InternalError).nth(nth);
        if let Some(sub) = &step.subresource {
            rule = rule.subresource(sub);
        }
        if mode == FailureMode::AnswerLost {
            rule = rule.after_commit();
        }
        self.cluster.inject(rule);
    }

    fn stall_write(&self, step: &WriteStep, nth: u32, duration: std::time::Duration) {
        let mut rule = FaultRule::new(
            verb(step.verb),
            &step.resource,
            Fault::Timeout { after: duration },
        )
        .nth(nth);
        if let Some(sub) = &step.subresource {
            rule = rule.subresource(sub);
        }
        self.cluster.inject(rule);
    }

    fn clear_faults(&self) {
        self.cluster.clear_faults();
    }

    fn writes(&self) -> Vec<WriteStep> {
        self.cluster
            .calls()
            .into_iter()
            .filter_map(|call| {
                let verb = match call.verb {
                    Verb::Create => WriteVerb::Create,
                    Verb::Update => WriteVerb::Update,
                    Verb::Patch => WriteVerb::Patch,
                    Verb::Delete => WriteVerb::Delete,
                    _ => return None,
                };
                Some(WriteStep {
                    verb,
                    resource: call.resource,
                    subresource: call.subresource,
                    name: call.name,
                })
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
