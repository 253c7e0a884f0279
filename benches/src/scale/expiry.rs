//! Expiry lag: for sessions made by [`seed`](super::seed::seed) with their ends spread over a
//! window, the time from each `expiresAt` until its ServiceAccount is gone (a watch of the
//! ServiceAccounts, admin access) and, for a sample of them, until its token is refused
//! (TokenReview, polled every 100 ms from the moment the ServiceAccount is gone: the token is
//! never presented before, so no cached authentication hides the refusal). Bounded by a deadline.
//! Must not delete anything.
//!
//! Only a sample is polled because the measure must not be the load it measures: the API server
//! takes seconds to refuse a deleted ServiceAccount's token, so polling every session's token
//! every 50 ms (as this did first) kept some 150 polls in flight and sent about 3,000
//! TokenReviews a second to the same two cores as the server under test.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures::StreamExt as _;
use jiff::Timestamp;
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use k8s_openapi::api::core::v1::ServiceAccount;
use kube::api::PostParams;
use kube::runtime::watcher;
use kube::{Api, ResourceExt};
use serde::Serialize;
use tka_core::Secret;
use tka_core::kubernetes::{MANAGED_BY, MANAGED_BY_LABEL};

use super::ScaleError;
use super::env::NS;
use super::seed::Seeded;

/// What the watch saw.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ExpiryLags {
    /// Per session: milliseconds from `expiresAt` until its ServiceAccount was gone.
    pub service_account_gone_ms: Vec<f64>,
    /// Per sampled session: milliseconds from `expiresAt` until a TokenReview of its token said
    /// "not authenticated".
    pub token_refused_ms: Vec<f64>,
    /// How many sessions' tokens were polled (every n-th session, at most [`TOKEN_SAMPLE`]).
    pub token_sampled: usize,
    /// Sessions whose ServiceAccount was still there at the deadline.
    pub not_gone: usize,
    /// Sampled sessions whose token was still accepted 30 s after their ServiceAccount was gone.
    pub not_refused: usize,
}

/// At most this many sessions have their token polled.
pub const TOKEN_SAMPLE: usize = 100;

/// The pause between two TokenReviews of one token.
const POLL_EVERY: Duration = Duration::from_millis(100);

fn since(at: Timestamp, expires_at: Timestamp) -> f64 {
    at.duration_since(expires_at).as_secs_f64() * 1_000.0
}

async fn refused(client: kube::Client, token: Secret<String>) -> Option<Timestamp> {
    let reviews: Api<TokenReview> = Api::all(client);
    let review = TokenReview {
        spec: TokenReviewSpec {
            token: token.expose().clone(),
            audiences: None,
        },
        ..TokenReview::default()
    };
    for _ in 0..300 {
        if let Ok(answer) = reviews.create(&PostParams::default(), &review).await
            && !answer.status.and_then(|s| s.authenticated).unwrap_or(false)
        {
            return Some(Timestamp::now());
        }
        tokio::time::sleep(POLL_EVERY).await;
    }
    None
}

/// Watches until every session in `sessions` has lost its ServiceAccount and had its token
/// refused, or until `deadline` (wall clock).
pub async fn measure(
    admin: kube::Client,
    sessions: &[Seeded],
    deadline: Timestamp,
) -> Result<ExpiryLags, ScaleError> {
    let wanted: HashMap<String, Seeded> = sessions
        .iter()
        .map(|s| (s.service_account.clone(), s.clone()))
        .collect();
    let every = sessions.len().div_ceil(TOKEN_SAMPLE).max(1);
    let sampled: std::collections::HashSet<&str> = sessions
        .iter()
        .step_by(every)
        .map(|s| s.service_account.as_str())
        .collect();
    let api: Api<ServiceAccount> = Api::namespaced(admin.clone(), NS);
    let config = watcher::Config::default().labels(&format!("{MANAGED_BY_LABEL}={MANAGED_BY}"));
    let mut stream = Box::pin(watcher(api, config));
    let gone: Arc<Mutex<HashMap<String, Timestamp>>> = Arc::default();
    let refusals = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = tokio::task::JoinSet::new();
    let mut listed: Vec<String> = Vec::new();
    let on_gone = |name: String, at: Timestamp, tasks: &mut tokio::task::JoinSet<()>| {
        let Some(session) = wanted.get(&name) else {
            return;
        };
        let polled = sampled.contains(name.as_str());
        if gone
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(name, at)
            .is_some()
            || !polled
        {
            return;
        }
        let (client, token, ends) = (admin.clone(), session.token.clone(), session.expires_at);
        let refusals = refusals.clone();
        tasks.spawn(async move {
            let at = refused(client, token).await;
            refusals
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(at.map(|at| since(at, ends)));
        });
    };
    loop {
        let done = gone.lock().unwrap_or_else(PoisonError::into_inner).len() == wanted.len();
        let left = deadline.duration_since(Timestamp::now());
        if done || left.is_negative() {
            break;
        }
        let wait = Duration::try_from(left).unwrap_or(Duration::ZERO);
        let Ok(event) = tokio::time::timeout(wait, stream.next()).await else {
            break;
        };
        match event {
            Some(Ok(watcher::Event::Delete(sa))) => {
                on_gone(sa.name_any(), Timestamp::now(), &mut tasks);
            }
            Some(Ok(watcher::Event::Init)) => listed.clear(),
            Some(Ok(watcher::Event::InitApply(sa))) => listed.push(sa.name_any()),
            Some(Ok(watcher::Event::InitDone)) => {
                // A (re)list: whatever is wanted and not listed is gone by now.
                let present: std::collections::HashSet<&String> = listed.iter().collect();
                let now = Timestamp::now();
                let missing: Vec<String> = wanted
                    .keys()
                    .filter(|k| !present.contains(k))
                    .cloned()
                    .collect();
                for name in missing {
                    on_gone(name, now, &mut tasks);
                }
            }
            Some(Ok(watcher::Event::Apply(_))) => {}
            Some(Err(e)) => eprintln!("scale: the ServiceAccount watch failed, retrying: {e}"),
            None => break,
        }
    }
    // Each refusal poll ends within 30 s.
    let _ = tokio::time::timeout(Duration::from_secs(40), async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    let gone = gone.lock().unwrap_or_else(PoisonError::into_inner).clone();
    let refusals = refusals
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone();
    let mut lags = ExpiryLags {
        not_gone: wanted.len() - gone.len(),
        token_sampled: sampled.len(),
        ..ExpiryLags::default()
    };
    for (name, at) in &gone {
        if let Some(s) = wanted.get(name) {
            lags.service_account_gone_ms.push(since(*at, s.expires_at));
        }
    }
    for r in refusals {
        match r {
            Some(ms) => lags.token_refused_ms.push(ms),
            None => lags.not_refused += 1,
        }
    }
    Ok(lags)
}
