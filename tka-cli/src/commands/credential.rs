//! `tka credential`: the kubectl exec plugin. kubectl runs it for every invocation, so the cache
//! hit path reads one file and prints; only a miss locks, re-checks and calls the server.
//!
//! It owns the exec-credential output. It must not change the kubeconfig or run discovery: the
//! server is the one its arguments name (written into the kubeconfig at login).

use tka_core::Clock;
use tka_core::token_cache::{CacheDecision, CachedToken, decide};

use crate::cache::{Lookup, TokenCache};
use crate::cli::Environment;
use crate::client::{ApiClient, ApiError, Network};
use crate::error::CliError;
use crate::output;
use crate::settings::CredentialSettings;

pub(crate) fn run(
    settings: &CredentialSettings,
    network: &Network,
    env: &Environment,
    clock: &dyn Clock,
) -> Result<(), CliError> {
    let cache = TokenCache::locate(env)?;
    let key = &settings.key;

    // The hit path: one file, no lock, no network.
    if let Some(hit) = reusable(&cache, settings, clock) {
        return hand_out(&hit, clock);
    }

    // A miss: take the entry's lock and look again, since a parallel run may have refreshed.
    let _lock = cache.lock(key, settings.lock_wait)?;
    if let Some(hit) = reusable(&cache, settings, clock) {
        return hand_out(&hit, clock);
    }
    let stale = cache.lookup(key);

    let client = ApiClient::new(key.server.clone(), network)?;
    match client.token() {
        Ok(response) => {
            if let Some(identity) = &key.identity
                && &response.session.device != identity
            {
                cache.remove(key);
                return Err(CliError::IdentityChanged {
                    cluster: key.cluster.clone(),
                    login_identity: identity.clone(),
                    device: response.session.device,
                });
            }
            let entry = CachedToken::new(
                key,
                response.token.token,
                response.token.expires_at,
                clock.now(),
                Some(response.session.expires_at),
            );
            if let Err(e) = cache.store(&entry) {
                output::warn(
                    &format!("the token works but was not cached: {e}; {}", e.hint()),
                    true,
                );
            }
            output::stdout(&(entry.exec_credential() + "\n"))
        }
        Err(error) => {
            let error = CliError::from_session_call(&key.cluster, error);
            match error {
                CliError::NotAuthorized { .. }
                | CliError::SessionEnded { .. }
                | CliError::ProxyOnly { .. } => {
                    cache.remove(key);
                    Err(error)
                }
                CliError::Api(ApiError::Unreachable { .. })
                | CliError::Api(ApiError::Status { .. } | ApiError::Problem { .. })
                    if error.exit() == crate::exit::Exit::Unreachable =>
                {
                    // The server is away; a token that still works is better than none.
                    match stale.filter(|s| s.entry.reported_expiry() > clock.now()) {
                        Some(stale) => {
                            output::warn(
                                &format!(
                                    "{error}; using the cached token until {}",
                                    output::local_time(stale.entry.reported_expiry())
                                ),
                                true,
                            );
                            hand_out(&stale, clock)
                        }
                        None => Err(error),
                    }
                }
                other => Err(other),
            }
        }
    }
}

fn reusable(
    cache: &TokenCache,
    settings: &CredentialSettings,
    clock: &dyn Clock,
) -> Option<Lookup> {
    let hit = cache.lookup(&settings.key)?;
    (decide(Some(&hit.entry), hit.last_handout, clock.now()) == CacheDecision::Reuse).then_some(hit)
}

fn hand_out(hit: &Lookup, clock: &dyn Clock) -> Result<(), CliError> {
    hit.mark_handed_out(clock.now());
    output::stdout(&(hit.entry.exec_credential() + "\n"))
}
