//! [`RealClusterBackend`]: the behaviour suite's backend on a real kube-apiserver, a fresh
//! control plane per case (reconcile passes are cluster-wide, so cases never share one).

// A test backend: failing loudly is its job.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use async_trait::async_trait;
use jiff::Timestamp;
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use kube::Api;
use kube::api::PostParams;
use tka_core::ManualClock;

use super::{KubeEnv, bin_dir, exclusive};
use crate::suite::SuiteBackend;

/// The namespace tka-server runs in, in the suite's clusters.
const NAMESPACE: &str = "tka-system";

/// A fresh API server (with etcd and the controller-manager) per case, tka's CRDs installed and
/// the server's namespace created. Cases run one at a time (see [`exclusive`]).
#[derive(Debug)]
pub struct RealClusterBackend {
    env: KubeEnv,
    clock: ManualClock,
    _permit: tokio::sync::SemaphorePermit<'static>,
}

impl RealClusterBackend {
    /// Starts the control plane. Panics when the components are missing or do not start: use it
    /// behind [`bin_dir_or_skip`](super::bin_dir_or_skip).
    pub async fn start() -> Self {
        let permit = exclusive().await;
        let bin = bin_dir().unwrap_or_else(|e| panic!("{e}"));
        let env = KubeEnv::start(&bin)
            .await
            .unwrap_or_else(|e| panic!("starting the control plane: {e}"));
        env.install_crds().await.unwrap();
        env.ensure_namespace(NAMESPACE).await.unwrap();
        Self {
            env,
            clock: ManualClock::new(Timestamp::now()),
            _permit: permit,
        }
    }

    /// The control plane.
    pub fn env(&self) -> &KubeEnv {
        &self.env
    }
}

#[async_trait]
impl SuiteBackend for RealClusterBackend {
    async fn client(&self) -> kube::Client {
        self.env.client()
    }

    fn clock(&self) -> ManualClock {
        self.clock.clone()
    }

    fn namespace(&self) -> &str {
        NAMESPACE
    }

    /// The API server keeps real time: token lifetimes do not follow the suite's clock.
    fn server_follows_clock(&self) -> bool {
        false
    }

    /// Asks the API server with a TokenReview. kube-apiserver caches successful token
    /// authentications for 10 s, keyed by token and requested audiences; a fresh extra audience
    /// per review (besides the API server's own, which the token carries) bypasses that cache,
    /// so the answer is the current state, not one up to 10 s old. Clients such as kubectl do
    /// see the cache: the kubectl tests allow 15 s for a revocation.
    async fn token_authenticates(&self, token: &str) -> Option<bool> {
        let reviews: Api<TokenReview> = Api::all(self.env.client());
        let nonce = format!("tka-review-{:032x}", rand::random::<u128>());
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: token.to_owned(),
                audiences: Some(vec![self.env.api_url().to_owned(), nonce]),
            },
            ..TokenReview::default()
        };
        let answer = reviews
            .create(&PostParams::default(), &review)
            .await
            .unwrap_or_else(|e| panic!("TokenReview failed: {e}"));
        Some(answer.status.and_then(|s| s.authenticated).unwrap_or(false))
    }
}
