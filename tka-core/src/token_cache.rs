//! The exec plugin's token cache, as data and decisions: what a cache entry holds, which file it
//! lives in, when a cached token may be handed to kubectl again, and the `ExecCredential` printed
//! for kubectl. Pure: reading and writing the files, and locking them, is the caller's job.
//!
//! kubectl runs the plugin for every invocation, so the decision uses only what one small file
//! holds plus the time the token was last handed out (the file's modification time, kept by the
//! caller), never the network.
//!
//! Rules ([`decide`]):
//! - a token is reused while more than [`REUSE_MARGIN`] of its real lifetime is left;
//! - kubectl is told it expires [`EXPIRY_LEAD`] before it really does, so it asks again in time;
//! - a token handed out less than [`REASK_WINDOW`] ago and fetched longer ago than that is
//!   refreshed instead of handed out again: client-go asks again after a 401, and a revoked token
//!   must not lock the user out until it expires. A token fetched within the window is always
//!   reused, so a burst of parallel kubectl runs costs one server call.

use jiff::{SignedDuration, Timestamp};
use serde::{Deserialize, Serialize};

use crate::domain::ClusterName;
use crate::endpoint::ServerUrl;
use crate::secret::Secret;

/// A cached token is reused only while more than this is left of its real lifetime.
pub const REUSE_MARGIN: SignedDuration = SignedDuration::from_secs(120);
/// kubectl is told a token expires this long before it really does.
pub const EXPIRY_LEAD: SignedDuration = SignedDuration::from_secs(60);
/// A token asked for again within this long of being handed out is refreshed, unless it was
/// fetched within this long too.
pub const REASK_WINDOW: SignedDuration = SignedDuration::from_secs(30);
/// The version of the entry format; entries of another version are ignored (a cache miss).
pub const ENTRY_VERSION: u32 = 1;

/// What a cache entry is for: a tka server, a cluster, and the local identity the login was made
/// as.
///
/// The local identity is the device name the server reported for this machine at login
/// ([`crate::api::SessionInfo::device`]), recorded in the kubeconfig's exec arguments
/// (`--identity`). It needs no lookup on the cache-hit path, and a login made as another tailnet
/// identity (another profile, another user on a shared kubeconfig) gets its own entry.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CacheKey {
    /// The tka server.
    pub server: ServerUrl,
    /// The cluster.
    pub cluster: ClusterName,
    /// The local identity, when known.
    pub identity: Option<String>,
}

impl CacheKey {
    /// The entry's file name: `<cluster>-<16 hex digits>.json`, the digits a hash of the whole
    /// key. A collision only costs a cache miss: entries carry their key and are checked.
    ///
    /// ```
    /// use tka_core::{ClusterName, endpoint::ServerUrl, token_cache::CacheKey};
    /// let key = CacheKey {
    ///     server: ServerUrl::parse("http://tka-prod").unwrap(),
    ///     cluster: ClusterName::new("prod").unwrap(),
    ///     identity: Some("laptop".into()),
    /// };
    /// let name = key.file_name();
    /// assert!(name.starts_with("prod-") && name.ends_with(".json"));
    /// ```
    pub fn file_name(&self) -> String {
        format!("{}-{:016x}.json", self.cluster, self.hash())
    }

    /// FNV-1a over the key's parts: stable across builds and platforms, unlike std's hasher.
    fn hash(&self) -> u64 {
        const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
        const PRIME: u64 = 0x0000_0100_0000_01b3;
        let mut h = OFFSET;
        let parts = [
            self.server.as_str(),
            self.cluster.as_str(),
            self.identity.as_deref().unwrap_or(""),
        ];
        for (i, part) in parts.iter().enumerate() {
            if i > 0 {
                // 0xff never occurs in UTF-8, so it separates the parts unambiguously.
                h ^= 0xff;
                h = h.wrapping_mul(PRIME);
            }
            for b in part.bytes() {
                h ^= u64::from(b);
                h = h.wrapping_mul(PRIME);
            }
        }
        h
    }
}

/// One cached token, as stored in its file (JSON).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CachedToken {
    /// [`ENTRY_VERSION`].
    pub version: u32,
    /// The key's server.
    pub server: ServerUrl,
    /// The key's cluster.
    pub cluster: ClusterName,
    /// The key's identity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<String>,
    /// The bearer token.
    pub token: Secret<String>,
    /// When the API server stops accepting it.
    pub expires_at: Timestamp,
    /// When tka got it from the server.
    pub fetched_at: Timestamp,
    /// When the session ends, if known (for `tka prompt`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_expires_at: Option<Timestamp>,
}

impl CachedToken {
    /// An entry for `key`.
    pub fn new(
        key: &CacheKey,
        token: Secret<String>,
        expires_at: Timestamp,
        fetched_at: Timestamp,
        session_expires_at: Option<Timestamp>,
    ) -> Self {
        Self {
            version: ENTRY_VERSION,
            server: key.server.clone(),
            cluster: key.cluster.clone(),
            identity: key.identity.clone(),
            token,
            expires_at,
            fetched_at,
            session_expires_at,
        }
    }

    /// Reads an entry; `None` for anything unreadable, of another version or for another key
    /// (all of which mean "ask the server").
    pub fn parse_for(bytes: &[u8], key: &CacheKey) -> Option<Self> {
        let entry: Self = serde_json::from_slice(bytes).ok()?;
        (entry.version == ENTRY_VERSION && entry.is_for(key)).then_some(entry)
    }

    /// Whether this entry belongs to `key`.
    pub fn is_for(&self, key: &CacheKey) -> bool {
        self.server == key.server && self.cluster == key.cluster && self.identity == key.identity
    }

    /// The entry as JSON.
    pub fn to_json(&self) -> Result<String, serde_json::Error> {
        serde_json::to_string(self)
    }

    /// The expiry to report to kubectl: [`EXPIRY_LEAD`] before the real one, in whole seconds.
    pub fn reported_expiry(&self) -> Timestamp {
        let early = self
            .expires_at
            .checked_sub(EXPIRY_LEAD)
            .unwrap_or(self.expires_at);
        Timestamp::from_second(early.as_second()).unwrap_or(early)
    }

    /// The ExecCredential kubectl reads from the plugin's stdout.
    pub fn exec_credential(&self) -> String {
        exec_credential(&self.token, self.reported_expiry())
    }
}

/// Why the server must be asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefreshReason {
    /// Nothing usable is cached.
    Missing,
    /// The cached token has [`REUSE_MARGIN`] or less left.
    ExpiresSoon,
    /// The cached token was handed out moments ago and is asked for again: kubectl probably
    /// got a 401 with it.
    AskedAgain,
}

/// What to do with a cache entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheDecision {
    /// Hand out the cached token.
    Reuse,
    /// Ask the server for a fresh one.
    Refresh(RefreshReason),
}

/// Decides between the cached token and a refresh. `last_handout` is when the token was last
/// handed out (or written), `now` the clock's time.
///
/// ```
/// use jiff::{SignedDuration, Timestamp};
/// use tka_core::token_cache::{decide, CacheDecision, RefreshReason};
/// assert_eq!(decide(None, None, Timestamp::UNIX_EPOCH), CacheDecision::Refresh(RefreshReason::Missing));
/// ```
pub fn decide(
    entry: Option<&CachedToken>,
    last_handout: Option<Timestamp>,
    now: Timestamp,
) -> CacheDecision {
    let Some(entry) = entry else {
        return CacheDecision::Refresh(RefreshReason::Missing);
    };
    if entry.expires_at.duration_since(now) <= REUSE_MARGIN {
        return CacheDecision::Refresh(RefreshReason::ExpiresSoon);
    }
    let fresh = now.duration_since(entry.fetched_at) < REASK_WINDOW;
    let handed_out_recently = last_handout.is_some_and(|t| now.duration_since(t) < REASK_WINDOW);
    if handed_out_recently && !fresh {
        return CacheDecision::Refresh(RefreshReason::AskedAgain);
    }
    CacheDecision::Reuse
}

/// An `ExecCredential` (`client.authentication.k8s.io/v1`) with a token and its expiry, as JSON.
pub fn exec_credential(token: &Secret<String>, expires_at: Timestamp) -> String {
    let credential = serde_json::json!({
        "apiVersion": crate::kubeconfig::EXEC_API_VERSION,
        "kind": "ExecCredential",
        "status": {
            "token": token.expose(),
            "expirationTimestamp": expires_at.to_string(),
        },
    });
    credential.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Clock, ManualClock};

    fn key(identity: Option<&str>) -> CacheKey {
        CacheKey {
            server: ServerUrl::parse("http://tka-prod").unwrap(),
            cluster: ClusterName::new("prod").unwrap(),
            identity: identity.map(str::to_owned),
        }
    }

    fn at(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn entry(fetched: &str, expires: &str) -> CachedToken {
        CachedToken::new(
            &key(Some("laptop")),
            Secret::new("tok".into()),
            at(expires),
            at(fetched),
            None,
        )
    }

    #[test]
    fn reuses_a_token_with_time_left_and_refreshes_near_expiry() {
        let clock = ManualClock::new(at("2026-01-01T00:00:00Z"));
        let e = entry("2026-01-01T00:00:00Z", "2026-01-01T00:15:00Z");
        // Well within its life, never handed out: reuse.
        clock.advance(SignedDuration::from_mins(5));
        assert_eq!(decide(Some(&e), None, clock.now()), CacheDecision::Reuse);
        // 2m01s left: still reused.
        clock.set(at("2026-01-01T00:12:59Z"));
        assert_eq!(decide(Some(&e), None, clock.now()), CacheDecision::Reuse);
        // 2m left: refreshed.
        clock.set(at("2026-01-01T00:13:00Z"));
        assert_eq!(
            decide(Some(&e), None, clock.now()),
            CacheDecision::Refresh(RefreshReason::ExpiresSoon)
        );
        // Expired: refreshed.
        clock.set(at("2026-01-01T01:00:00Z"));
        assert_eq!(
            decide(Some(&e), None, clock.now()),
            CacheDecision::Refresh(RefreshReason::ExpiresSoon)
        );
    }

    #[test]
    fn asked_again_moments_after_a_handout_refreshes_unless_just_fetched() {
        let e = entry("2026-01-01T00:00:00Z", "2026-01-01T00:15:00Z");
        let now = at("2026-01-01T00:05:00Z");
        // Handed out 5 s ago (kubectl got a 401 and asks again): refresh.
        assert_eq!(
            decide(Some(&e), Some(at("2026-01-01T00:04:55Z")), now),
            CacheDecision::Refresh(RefreshReason::AskedAgain)
        );
        // Handed out a minute ago (a separate kubectl run): reuse.
        assert_eq!(
            decide(Some(&e), Some(at("2026-01-01T00:04:00Z")), now),
            CacheDecision::Reuse
        );
        // Fetched 2 s ago and handed out 1 s ago (a burst of parallel runs): reuse.
        let fresh = entry("2026-01-01T00:04:58Z", "2026-01-01T00:20:00Z");
        assert_eq!(
            decide(Some(&fresh), Some(at("2026-01-01T00:04:59Z")), now),
            CacheDecision::Reuse
        );
    }

    #[test]
    fn reported_expiry_is_a_minute_early_in_whole_seconds() {
        let e = entry("2026-01-01T00:00:00Z", "2026-01-01T00:15:00.750Z");
        assert_eq!(e.reported_expiry(), at("2026-01-01T00:14:00Z"));
        let json: serde_json::Value = serde_json::from_str(&e.exec_credential()).unwrap();
        assert_eq!(json["apiVersion"], "client.authentication.k8s.io/v1");
        assert_eq!(json["kind"], "ExecCredential");
        assert_eq!(json["status"]["token"], "tok");
        assert_eq!(
            json["status"]["expirationTimestamp"],
            "2026-01-01T00:14:00Z"
        );
    }

    #[test]
    fn entries_belong_to_one_key() {
        let e = entry("2026-01-01T00:00:00Z", "2026-01-01T00:15:00Z");
        let bytes = e.to_json().unwrap();
        assert!(CachedToken::parse_for(bytes.as_bytes(), &key(Some("laptop"))).is_some());
        assert!(CachedToken::parse_for(bytes.as_bytes(), &key(Some("desktop"))).is_none());
        assert!(CachedToken::parse_for(bytes.as_bytes(), &key(None)).is_none());
        assert!(CachedToken::parse_for(b"{not json", &key(Some("laptop"))).is_none());
        let other_version = bytes.replace("\"version\":1", "\"version\":2");
        assert!(CachedToken::parse_for(other_version.as_bytes(), &key(Some("laptop"))).is_none());
    }

    #[test]
    fn file_names_differ_per_key_and_are_stable() {
        let a = key(Some("laptop")).file_name();
        assert_eq!(a, key(Some("laptop")).file_name());
        assert_ne!(a, key(Some("desktop")).file_name());
        assert_ne!(a, key(None).file_name());
        let other_server = CacheKey {
            server: ServerUrl::parse("http://tka-prod-2").unwrap(),
            ..key(Some("laptop"))
        };
        assert_ne!(a, other_server.file_name());
        assert!(
            a.starts_with("prod-") && a.ends_with(".json") && a.len() == "prod-".len() + 16 + 5
        );
    }

    #[test]
    fn debug_never_shows_the_token() {
        let with = |token: &str| {
            let mut e = entry("2026-01-01T00:00:00Z", "2026-01-01T00:15:00Z");
            e.token = Secret::new(token.to_owned());
            e
        };
        let (a, b) = (
            with("eyJhbGciOi.eyJzdWIi.sig-a"),
            with("eyJhbGciOi.eyJzdWIi.sig-b"),
        );
        let debug = format!("{a:?} {a:#?}");
        assert!(
            !debug.contains("eyJ") && debug.contains("[redacted]"),
            "{debug}"
        );
        // A failed assertion prints both sides with `Debug`: no token there either.
        let panic = std::panic::catch_unwind(|| assert_eq!(a, b)).unwrap_err();
        let message = panic.downcast_ref::<String>().unwrap();
        assert!(message.contains("left == right"), "{message}");
        assert!(
            !message.contains("eyJ") && !message.contains("sig-"),
            "{message}"
        );
        // Allowed where it belongs: the file the exec plugin reads holds it.
        assert!(a.to_json().unwrap().contains("eyJhbGciOi.eyJzdWIi.sig-a"));
    }
}
