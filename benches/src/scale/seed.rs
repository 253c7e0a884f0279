//! Sessions in the exact shape the server makes: tka-core's own [`KubernetesIssuer`], with the
//! server's token, for synthetic users of the fake tailnet (each really holds the `viewer` role,
//! so the server's re-validation keeps them). Concurrent with a bound. Must not be pointed at
//! anything but the testenv.

use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use tka_core::issuer::CredentialIssuer as _;
use tka_core::kubernetes::{IssuerSettings, KubernetesIssuer};
use tka_core::{Decision, RoleName, Secret, SystemClock, Ttl};

use super::ScaleError;
use super::env::{NS, ROLE, Stage};
use super::login::batch;

/// A session made by [`seed`].
#[derive(Debug, Clone)]
pub struct Seeded {
    /// The ServiceAccount's name (in [`NS`]).
    pub service_account: String,
    /// When the session ends (whole seconds, as stored).
    pub expires_at: Timestamp,
    /// A token of the session.
    pub token: Secret<String>,
    /// How long the issuer's `issue` took.
    pub took: Duration,
}

/// The issuer the seeding uses: the server's own, with the server's token.
pub fn issuer(stage: &Stage) -> Result<KubernetesIssuer, ScaleError> {
    KubernetesIssuer::new(
        stage.server_client.clone(),
        IssuerSettings::new(NS),
        Arc::new(SystemClock),
    )
    .map_err(ScaleError::from_display)
}

/// Makes `n` sessions of new users, at most `concurrency` at once; session `i` ends at
/// `expires_at(i)`. Returns them with the wall time taken.
pub async fn seed(
    stage: &Stage,
    n: usize,
    concurrency: usize,
    expires_at: impl Fn(usize) -> Timestamp,
) -> Result<(Vec<Seeded>, Duration), ScaleError> {
    let issuer = issuer(stage)?;
    let role = RoleName::new(ROLE).map_err(ScaleError::from_display)?;
    let (made, took) = batch(n, concurrency, |i| {
        let (issuer, role) = (&issuer, role.clone());
        let user = stage.new_device();
        let ends = expires_at(i);
        async move {
            let identity = stage.identity(&user).await?;
            let now = Timestamp::now();
            let ttl = Ttl::from_duration(ends.duration_since(now))
                .map_err(|e| ScaleError::new(format!("session {i} ends too soon: {e}")))?;
            let decision = Decision {
                role,
                cluster_roles: vec!["view".to_owned()],
                namespaced: Vec::new(),
                ttl,
                expires_at: ends,
                clamped: None,
            };
            let started = std::time::Instant::now();
            let issued = issuer
                .issue(&identity, &decision)
                .await
                .map_err(|e| ScaleError::new(format!("seeding session {i}: {e}")))?;
            let service_account = issued
                .service_account
                .rsplit('/')
                .next()
                .unwrap_or_default()
                .to_owned();
            Ok(Seeded {
                service_account,
                expires_at: issued.session_expires_at,
                token: issued.token,
                took: started.elapsed(),
            })
        }
    })
    .await?;
    Ok((made, took))
}
