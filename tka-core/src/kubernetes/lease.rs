//! [`LeaderLease`]: a `coordination.k8s.io/v1` Lease that keeps one reconciler active in steady
//! state. Acquire and renew are read-modify-writes with resourceVersion preconditions, so two
//! candidates can never both win the same write. Like client-go, a candidate judges expiry by how
//! long *it* has seen the record unchanged (on the injected [`Clock`]), not by comparing its clock
//! with the holder's timestamps, so clock skew between pods does not hand the lease over early.
//!
//! Correctness never depends on the lease: every reconciler action is idempotent.

use std::sync::{Arc, Mutex, PoisonError};

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::PostParams;
use kube::{Api, Client};

use super::error::{is_already_exists, is_conflict, is_not_found, reconcile_error};
use crate::clock::Clock;
use crate::reconciler::ReconcileError;

/// Settings of a [`LeaderLease`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseSettings {
    /// The Lease's name (default `tka-reconciler`).
    pub name: String,
    /// The Lease's namespace: the server's.
    pub namespace: String,
    /// This candidate's identity, unique among replicas (e.g. the pod name).
    pub holder: String,
    /// How long a holder that stopped renewing keeps the lease (default 15 s).
    pub duration: SignedDuration,
}

impl LeaseSettings {
    /// Defaults for `holder` in `namespace`.
    pub fn new(namespace: impl Into<String>, holder: impl Into<String>) -> Self {
        Self {
            name: "tka-reconciler".to_owned(),
            namespace: namespace.into(),
            holder: holder.into(),
            duration: SignedDuration::from_secs(15),
        }
    }
}

/// What a candidate last saw of someone else's lease, and when (on its own clock).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Observed {
    holder: Option<String>,
    renew: Option<Timestamp>,
    at: Timestamp,
}

/// A Lease-based leader election candidate.
pub struct LeaderLease {
    api: Api<Lease>,
    settings: LeaseSettings,
    clock: Arc<dyn Clock>,
    observed: Mutex<Option<Observed>>,
}

impl std::fmt::Debug for LeaderLease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeaderLease")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

fn duration_secs(d: SignedDuration) -> i32 {
    i32::try_from(d.as_secs().max(1)).unwrap_or(i32::MAX)
}

impl LeaderLease {
    /// A candidate for the lease described by `settings`.
    pub fn new(client: Client, settings: LeaseSettings, clock: Arc<dyn Clock>) -> Self {
        Self {
            api: Api::namespaced(client, &settings.namespace),
            settings,
            clock,
            observed: Mutex::new(None),
        }
    }

    /// This candidate's identity.
    pub fn holder_identity(&self) -> &str {
        &self.settings.holder
    }

    fn spec(&self, now: Timestamp, acquired: Option<Timestamp>, transitions: i32) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(self.settings.holder.clone()),
            lease_duration_seconds: Some(duration_secs(self.settings.duration)),
            acquire_time: Some(MicroTime(acquired.unwrap_or(now))),
            renew_time: Some(MicroTime(now)),
            lease_transitions: Some(transitions),
            ..LeaseSpec::default()
        }
    }

    /// Whether someone else's lease has gone unrenewed for its duration, as seen by this
    /// candidate.
    fn expired_for_me(&self, spec: &LeaseSpec, now: Timestamp) -> bool {
        let seen = Observed {
            holder: spec.holder_identity.clone(),
            renew: spec.renew_time.as_ref().map(|t| t.0),
            at: now,
        };
        let duration = spec
            .lease_duration_seconds
            .map_or(self.settings.duration, |s| {
                SignedDuration::from_secs(i64::from(s))
            });
        let mut observed = self.observed.lock().unwrap_or_else(PoisonError::into_inner);
        match observed.as_ref() {
            Some(o) if o.holder == seen.holder && o.renew == seen.renew => o.at + duration <= now,
            _ => {
                *observed = Some(seen);
                false
            }
        }
    }

    /// Acquires the lease if it is free or expired, renews it if held; `true` while this
    /// candidate holds it.
    pub async fn try_acquire_or_renew(&self) -> Result<bool, ReconcileError> {
        let now = self.clock.now();
        let name = self.settings.name.as_str();
        let current = self
            .api
            .get_opt(name)
            .await
            .map_err(|e| reconcile_error(format!("read Lease {name}"), e))?;
        let Some(mut lease) = current else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(name.to_owned()),
                    namespace: Some(self.settings.namespace.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(self.spec(now, None, 0)),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(e) if is_already_exists(&e) => Ok(false),
                Err(e) => Err(reconcile_error(format!("create Lease {name}"), e)),
            };
        };
        let spec = lease.spec.clone().unwrap_or_default();
        let holder = spec.holder_identity.as_deref().filter(|h| !h.is_empty());
        let transitions = spec.lease_transitions.unwrap_or(0);
        let next = match holder {
            Some(h) if h == self.settings.holder => {
                self.spec(now, spec.acquire_time.as_ref().map(|t| t.0), transitions)
            }
            Some(_) if !self.expired_for_me(&spec, now) => return Ok(false),
            _ => self.spec(now, None, transitions.saturating_add(1)),
        };
        lease.spec = Some(next);
        match self.api.replace(name, &PostParams::default(), &lease).await {
            Ok(_) => Ok(true),
            Err(e) if is_conflict(&e) || is_not_found(&e) => Ok(false),
            Err(e) => Err(reconcile_error(format!("update Lease {name}"), e)),
        }
    }

    /// Gives the lease up if this candidate holds it, so another takes over without waiting.
    pub async fn release(&self) -> Result<(), ReconcileError> {
        let name = self.settings.name.as_str();
        let Some(mut lease) = self
            .api
            .get_opt(name)
            .await
            .map_err(|e| reconcile_error(format!("read Lease {name}"), e))?
        else {
            return Ok(());
        };
        let mut spec = lease.spec.clone().unwrap_or_default();
        if spec.holder_identity.as_deref() != Some(self.settings.holder.as_str()) {
            return Ok(());
        }
        spec.holder_identity = None;
        spec.renew_time = None;
        lease.spec = Some(spec);
        match self.api.replace(name, &PostParams::default(), &lease).await {
            Ok(_) => Ok(()),
            Err(e) if is_conflict(&e) || is_not_found(&e) => Ok(()),
            Err(e) => Err(reconcile_error(format!("release Lease {name}"), e)),
        }
    }

    /// Who holds the lease now, if anyone.
    pub async fn holder(&self) -> Result<Option<String>, ReconcileError> {
        let name = self.settings.name.as_str();
        let lease = self
            .api
            .get_opt(name)
            .await
            .map_err(|e| reconcile_error(format!("read Lease {name}"), e))?;
        Ok(lease
            .and_then(|l| l.spec)
            .and_then(|s| s.holder_identity)
            .filter(|h| !h.is_empty()))
    }
}
