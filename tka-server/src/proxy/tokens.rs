//! The proxy's token cache: per session, the token the proxy forwards with, its ID (`jti`, for
//! audit) and expiry, in memory only. A token is minted by whoever the caller passes in (the
//! sessions service's token path, so the grant is re-checked and the mint audited), at most one
//! mint per session at a time (single-flight: concurrent requests of one session wait for the
//! same mint), and renewed once a third of its lifetime is left. The sweeper drops a session's
//! entry when the session ends ([`TokenCache::forget`]).
//!
//! It must not mint by itself, write a token anywhere, or show one: [`ProxyToken`]'s token is a
//! [`Secret`], whose `Debug` is redacted.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};

use jiff::{SignedDuration, Timestamp};
use tka_core::SessionName;
use tka_core::secret::Secret;

/// A token the proxy forwards with.
#[derive(Debug, Clone)]
pub struct ProxyToken {
    /// The session it belongs to.
    pub session: SessionName,
    /// The bearer token. Never logged.
    pub token: Secret<String>,
    /// Its ID (`jti`), for audit.
    pub jti: Option<String>,
    /// When the API server stops accepting it.
    pub expires_at: Timestamp,
    /// When it was minted.
    pub minted_at: Timestamp,
}

/// Renewed no later than this before it expires, whatever its lifetime.
pub const RENEW_FLOOR: SignedDuration = SignedDuration::from_secs(30);

impl ProxyToken {
    /// Whether it is still good to forward with at `now`: more than a third of its lifetime
    /// (and at least [`RENEW_FLOOR`]) is left.
    pub fn is_fresh(&self, now: Timestamp) -> bool {
        let lifetime = self.expires_at.duration_since(self.minted_at);
        let margin = (lifetime / 3).max(RENEW_FLOOR);
        now + margin < self.expires_at
    }
}

type Slot = Arc<tokio::sync::Mutex<Option<Arc<ProxyToken>>>>;

/// The tokens, one slot per session.
#[derive(Debug, Default)]
pub struct TokenCache {
    slots: Mutex<HashMap<SessionName, Slot>>,
}

impl TokenCache {
    /// The session's token: the cached one while fresh at `now`, else one from `mint`, which
    /// runs at most once at a time per session. A token minted for another session (the device
    /// changed sessions in between) is handed back but not cached.
    pub async fn get_or_mint<F, Fut, E>(
        &self,
        session: &SessionName,
        now: Timestamp,
        mint: F,
    ) -> Result<Arc<ProxyToken>, E>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<ProxyToken, E>>,
    {
        let slot = {
            // Never held across an await; a poisoned map is still a valid map.
            let mut slots = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
            Arc::clone(slots.entry(session.clone()).or_default())
        };
        let mut held = slot.lock().await;
        if let Some(token) = held.as_ref()
            && token.is_fresh(now)
        {
            return Ok(Arc::clone(token));
        }
        let minted = Arc::new(mint().await?);
        if minted.session == *session {
            *held = Some(Arc::clone(&minted));
        }
        Ok(minted)
    }

    /// Drops the session's token (its session ended).
    pub fn forget(&self, session: &SessionName) {
        self.slots
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(session);
    }

    /// The sessions with a slot.
    pub fn sessions(&self) -> Vec<SessionName> {
        self.slots
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .keys()
            .cloned()
            .collect()
    }

    /// Whether the session has a slot (a token, or a mint under way).
    pub fn holds(&self, session: &SessionName) -> bool {
        self.slots
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .contains_key(session)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    fn token(session: &SessionName, now: Timestamp, n: usize) -> ProxyToken {
        ProxyToken {
            session: session.clone(),
            token: Secret::new(format!("token-{n}")),
            jti: Some(format!("jti-{n}")),
            expires_at: now + SignedDuration::from_mins(15),
            minted_at: now,
        }
    }

    #[tokio::test]
    async fn one_mint_is_shared_until_renewal_is_due_and_forgetting_drops_it() {
        let session = SessionName::new("tka-alice-a1").unwrap();
        let cache = TokenCache::default();
        let mints = AtomicUsize::new(0);
        let now = Timestamp::now();
        let mint = || async {
            let n = mints.fetch_add(1, Ordering::SeqCst);
            Ok::<_, ()>(token(&session, now, n))
        };
        // Concurrent requests of one session: one mint.
        let (a, b) = tokio::join!(
            cache.get_or_mint(&session, now, mint),
            cache.get_or_mint(&session, now, mint)
        );
        assert_eq!(a.unwrap().jti, b.unwrap().jti);
        assert_eq!(mints.load(Ordering::SeqCst), 1);
        // Still fresh at 9 minutes of 15; due at 11.
        let later = now + SignedDuration::from_mins(9);
        cache.get_or_mint(&session, later, mint).await.unwrap();
        assert_eq!(mints.load(Ordering::SeqCst), 1);
        let due = now + SignedDuration::from_mins(11);
        cache.get_or_mint(&session, due, mint).await.unwrap();
        assert_eq!(mints.load(Ordering::SeqCst), 2);

        assert!(cache.holds(&session));
        cache.forget(&session);
        assert!(!cache.holds(&session));
        assert!(format!("{:?}", token(&session, now, 7)).contains("redacted"));
    }

    /// An error holding `value`.
    fn failed<T>(value: T) -> Result<(), T> {
        Err(value)
    }

    /// The message of the panic `f` raises.
    fn panic_message(f: impl FnOnce()) -> String {
        let payload = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_err();
        payload.downcast_ref::<String>().unwrap().clone()
    }

    #[tokio::test]
    async fn the_proxy_token_and_its_cache_keep_the_token_out_of_debug_and_panics() {
        const JWT: &str = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJwcm94eSJ9.proxy-signature";
        let session = SessionName::new("tka-alice-a1").unwrap();
        let now = Timestamp::now();
        let minted = ProxyToken {
            token: Secret::new(JWT.to_owned()),
            ..token(&session, now, 1)
        };
        // Allowed where it belongs: the header the proxy forwards with.
        assert_eq!(minted.token.expose(), JWT);
        let cache = TokenCache::default();
        let cached = cache
            .get_or_mint(&session, now, || async { Ok::<_, ()>(minted) })
            .await
            .unwrap();
        for debug in [
            format!("{cached:?} {cached:#?}"),
            // The cache as a whole, holding the token.
            format!("{cache:?} {cache:#?}"),
            // A panic that prints it, as `unwrap` of an error holding it would.
            panic_message(|| failed(Arc::clone(&cached)).unwrap()),
            panic_message(|| failed(&cache).unwrap()),
        ] {
            assert!(
                !debug.contains("eyJ") && !debug.contains("signature"),
                "{debug}"
            );
            assert!(debug.contains("[redacted]"), "{debug}");
        }
    }

    #[tokio::test]
    async fn a_failed_mint_caches_nothing_and_another_sessions_token_is_not_cached() {
        let session = SessionName::new("tka-alice-a1").unwrap();
        let other = SessionName::new("tka-alice-a2").unwrap();
        let cache = TokenCache::default();
        let now = Timestamp::now();
        let failed = cache
            .get_or_mint(&session, now, || async { Err::<ProxyToken, _>("no") })
            .await;
        assert!(failed.is_err());
        let elsewhere = cache
            .get_or_mint(&session, now, || async {
                Ok::<_, ()>(token(&other, now, 1))
            })
            .await
            .unwrap();
        assert_eq!(elsewhere.session, other);
        let mine = cache
            .get_or_mint(&session, now, || async {
                Ok::<_, ()>(token(&session, now, 2))
            })
            .await
            .unwrap();
        assert_eq!(mine.jti.as_deref(), Some("jti-2"));
    }
}
