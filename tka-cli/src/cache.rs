//! The token cache on disk: `$XDG_CACHE_HOME/tka/` (default `~/.cache/tka/`), a 0700 directory
//! holding one 0600 JSON file per [`CacheKey`]. What an entry holds and when it may be reused is
//! [`tka_core::token_cache`]'s business.
//!
//! The hit path opens and reads one file and touches its modification time (the "last handed
//! out" time): no directory creation, no locking, no network. Writers replace entries atomically
//! (rename), so a reader never sees half a file. Refreshes take a per-key lock file and re-check
//! the entry under it, so parallel kubectl runs make one server call.
//!
//! Only a real directory owned by this user is used, and entries are opened without following
//! symlinks and read only when this user owns them: whoever controls the directory could
//! otherwise hand kubectl a token of their choosing.
//!
//! It owns the cache directory and its files; the atomic write itself is
//! [`crate::atomic_file`]'s. It must not call servers or decide whether an entry is still good.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read as _};
use std::os::unix::fs::{MetadataExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

use jiff::Timestamp;
use tka_core::ClusterName;
use tka_core::endpoint::ServerUrl;
use tka_core::token_cache::{CacheKey, CachedToken};

use crate::atomic_file::{Kind, create_private_dir, own, write_atomically};
use crate::cli::Environment;

/// Entries examined when cleaning up by server and cluster; the cache holds a handful.
const MAX_SCAN: usize = 10_000;
/// The largest entry file read; entries are a few hundred bytes plus a token.
const MAX_ENTRY: u64 = 64 * 1024;
/// Entry and lock files are opened without following a symlink in their place.
const NOFOLLOW: i32 = rustix::fs::OFlags::NOFOLLOW.bits() as i32;

fn euid() -> u32 {
    rustix::process::geteuid().as_raw()
}

/// Why the cache could not be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub(crate) enum CacheError {
    /// Neither XDG_CACHE_HOME nor a home directory.
    #[error("cannot tell where the token cache is: neither XDG_CACHE_HOME nor HOME is set")]
    NoHome,
    /// Another process holds the entry's lock for too long.
    #[error("another tka process holds the token cache lock {}", .path.display())]
    Busy {
        /// The lock file.
        path: PathBuf,
    },
    /// The cache directory is not one tka made for this user: a symlink, not a directory, or
    /// owned by someone else. Its entries are never read, since whoever controls it could hand
    /// kubectl their token.
    #[error("the token cache {} {why}; tka does not use it", .path.display())]
    Untrusted {
        /// The directory.
        path: PathBuf,
        /// What is wrong with it.
        why: &'static str,
    },
    /// An I/O failure.
    #[error("cannot {action} {}: {source}", .path.display())]
    Io {
        /// What was being done.
        action: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
}

impl CacheError {
    pub(crate) fn hint(&self) -> String {
        match self {
            Self::NoHome => "set XDG_CACHE_HOME or HOME".to_owned(),
            Self::Busy { .. } => "try again; if it persists, stop stuck tka processes".to_owned(),
            Self::Untrusted { path, .. } => format!(
                "remove it (rm -r {}) and run the command again: tka makes its own 0700 directory",
                path.display()
            ),
            Self::Io { .. } => {
                "check the permissions of the cache directory (XDG_CACHE_HOME/tka)".to_owned()
            }
        }
    }
}

/// The cache directory.
#[derive(Debug, Clone)]
pub(crate) struct TokenCache {
    dir: PathBuf,
}

/// A cache hit candidate: the entry, when it was last handed out, and the open file.
#[derive(Debug)]
pub(crate) struct Lookup {
    pub(crate) entry: CachedToken,
    pub(crate) last_handout: Option<Timestamp>,
    file: File,
}

impl Lookup {
    /// Records that the token is being handed out now (the file's modification time). Best
    /// effort: failing costs at most an extra refresh later.
    pub(crate) fn mark_handed_out(&self, now: Timestamp) {
        let _ = self.file.set_modified(SystemTime::from(now));
    }
}

/// The per-key lock, held until dropped.
#[derive(Debug)]
pub(crate) struct CacheLock {
    _file: File,
}

impl TokenCache {
    /// `$XDG_CACHE_HOME/tka` (an absolute XDG_CACHE_HOME only, as the XDG spec says), else
    /// `~/.cache/tka`.
    pub(crate) fn locate(env: &Environment) -> Result<Self, CacheError> {
        let base = env
            .xdg_cache_home
            .clone()
            .filter(|p| p.is_absolute())
            .or_else(|| env.home.as_ref().map(|h| h.join(".cache")))
            .ok_or(CacheError::NoHome)?;
        Ok(Self {
            dir: base.join("tka"),
        })
    }

    fn path(&self, key: &CacheKey) -> PathBuf {
        self.dir.join(key.file_name())
    }

    /// The entry for `key`, if there is a readable one.
    pub(crate) fn lookup(&self, key: &CacheKey) -> Option<Lookup> {
        self.trusted_dir().ok()?;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(NOFOLLOW)
            .open(self.path(key))
            .ok()?;
        let meta = file.metadata().ok()?;
        if !meta.is_file() || meta.uid() != euid() {
            return None;
        }
        let mut bytes = Vec::with_capacity(1024);
        (&file).take(MAX_ENTRY).read_to_end(&mut bytes).ok()?;
        let entry = CachedToken::parse_for(&bytes, key)?;
        let last_handout = file
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| Timestamp::try_from(t).ok());
        Some(Lookup {
            entry,
            last_handout,
            file,
        })
    }

    /// Stores an entry (atomically, 0600, in a 0700 directory).
    pub(crate) fn store(&self, entry: &CachedToken) -> Result<(), CacheError> {
        self.ensure_dir()?;
        let key = CacheKey {
            server: entry.server.clone(),
            cluster: entry.cluster.clone(),
            identity: entry.identity.clone(),
        };
        let path = self.path(&key);
        let json = entry.to_json().map_err(|e| CacheError::Io {
            action: "encode",
            path: path.clone(),
            source: io::Error::other(e),
        })?;
        write_atomically(&path, json.as_bytes()).map_err(|source| CacheError::Io {
            action: "write",
            path,
            source,
        })
    }

    /// Drops the entry for `key`, if any.
    pub(crate) fn remove(&self, key: &CacheKey) {
        let _ = fs::remove_file(self.path(key));
    }

    /// Drops every entry for `server` and `cluster`, whatever the identity. Returns how many.
    pub(crate) fn remove_for(&self, server: &ServerUrl, cluster: &ClusterName) -> usize {
        if self.trusted_dir().is_err() {
            return 0;
        }
        let Ok(dir) = fs::read_dir(&self.dir) else {
            return 0;
        };
        let prefix = format!("{cluster}-");
        let mut removed = 0;
        for item in dir.take(MAX_SCAN).flatten() {
            let name = item.file_name();
            let Some(name) = name.to_str() else { continue };
            if !name.starts_with(&prefix) || !name.ends_with(".json") {
                continue;
            }
            let Ok(bytes) = fs::read(item.path()) else {
                continue;
            };
            let Ok(entry) = serde_json::from_slice::<CachedToken>(&bytes) else {
                continue;
            };
            if &entry.server == server
                && &entry.cluster == cluster
                && fs::remove_file(item.path()).is_ok()
            {
                removed += 1;
            }
        }
        removed
    }

    /// Takes the lock of `key`'s entry, waiting at most `wait`.
    pub(crate) fn lock(&self, key: &CacheKey, wait: Duration) -> Result<CacheLock, CacheError> {
        self.ensure_dir()?;
        let path = self.dir.join(format!("{}.lock", key.file_name()));
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .custom_flags(NOFOLLOW)
            .open(&path)
            .map_err(|source| CacheError::Io {
                action: "open",
                path: path.clone(),
                source,
            })?;
        let deadline = Instant::now() + wait;
        loop {
            match file.try_lock() {
                Ok(()) => return Ok(CacheLock { _file: file }),
                Err(fs::TryLockError::WouldBlock) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(fs::TryLockError::WouldBlock) => return Err(CacheError::Busy { path }),
                Err(fs::TryLockError::Error(source)) => {
                    return Err(CacheError::Io {
                        action: "lock",
                        path,
                        source,
                    });
                }
            }
        }
    }

    /// The directory's metadata, if it is a real directory (not a symlink) owned by this user.
    fn trusted_dir(&self) -> Result<fs::Metadata, CacheError> {
        let io_err = |source| CacheError::Io {
            action: "read",
            path: self.dir.clone(),
            source,
        };
        match own(&self.dir, Kind::Dir).map_err(io_err)? {
            Ok(Some(meta)) => Ok(meta),
            Ok(None) => Err(io_err(io::ErrorKind::NotFound.into())),
            Err(why) => Err(CacheError::Untrusted {
                path: self.dir.clone(),
                why,
            }),
        }
    }

    /// Creates the directory (0700), and tightens it if it is open to others.
    fn ensure_dir(&self) -> Result<(), CacheError> {
        let io_err = |action, source| CacheError::Io {
            action,
            path: self.dir.clone(),
            source,
        };
        create_private_dir(&self.dir).map_err(|e| io_err("create", e))?;
        let mode = self.trusted_dir()?.permissions().mode();
        if mode & 0o077 != 0 {
            fs::set_permissions(&self.dir, fs::Permissions::from_mode(0o700))
                .map_err(|e| io_err("restrict", e))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use tka_core::Secret;

    use super::*;

    fn key(identity: &str) -> CacheKey {
        CacheKey {
            server: ServerUrl::parse("http://tka-prod").unwrap(),
            cluster: ClusterName::new("prod").unwrap(),
            identity: Some(identity.to_owned()),
        }
    }

    fn cache(dir: &std::path::Path) -> TokenCache {
        TokenCache::locate(&Environment {
            xdg_cache_home: Some(dir.to_path_buf()),
            ..Environment::default()
        })
        .unwrap()
    }

    #[test]
    fn entries_round_trip_with_private_permissions() {
        let dir = tempfile::tempdir().unwrap();
        let cache = cache(dir.path());
        assert!(cache.lookup(&key("laptop")).is_none());
        let now: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        let entry = CachedToken::new(
            &key("laptop"),
            Secret::new("tok".to_owned()),
            now + jiff::SignedDuration::from_mins(15),
            now,
            None,
        );
        cache.store(&entry).unwrap();
        let dir_mode = fs::metadata(dir.path().join("tka"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(dir_mode & 0o777, 0o700);
        let file = dir.path().join("tka").join(key("laptop").file_name());
        assert_eq!(
            fs::metadata(&file).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let hit = cache.lookup(&key("laptop")).unwrap();
        assert_eq!(hit.entry, entry);
        hit.mark_handed_out(now);
        assert_eq!(
            cache.lookup(&key("laptop")).unwrap().last_handout,
            Some(now)
        );
        // Another identity's key does not see it.
        assert!(cache.lookup(&key("desktop")).is_none());
        assert_eq!(
            cache.remove_for(
                &ServerUrl::parse("http://tka-prod").unwrap(),
                &ClusterName::new("prod").unwrap()
            ),
            1
        );
        assert!(cache.lookup(&key("laptop")).is_none());
    }

    #[test]
    fn a_cache_directory_tka_did_not_make_is_never_read() {
        let now: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        let planted = |dir: &std::path::Path| {
            let entry = CachedToken::new(
                &key("laptop"),
                Secret::new("someone-elses-token".to_owned()),
                now + jiff::SignedDuration::from_mins(15),
                now,
                None,
            );
            fs::write(
                dir.join(key("laptop").file_name()),
                entry.to_json().unwrap(),
            )
            .unwrap();
        };

        // A symlink in place of the directory, to a directory holding a planted entry.
        let base = tempfile::tempdir().unwrap();
        let elsewhere = base.path().join("elsewhere");
        fs::create_dir(&elsewhere).unwrap();
        planted(&elsewhere);
        std::os::unix::fs::symlink(&elsewhere, base.path().join("tka")).unwrap();
        let linked = cache(base.path());
        assert!(linked.lookup(&key("laptop")).is_none());
        let err = linked
            .store(&CachedToken::new(
                &key("laptop"),
                Secret::new("tok".to_owned()),
                now + jiff::SignedDuration::from_mins(15),
                now,
                None,
            ))
            .unwrap_err();
        assert!(matches!(err, CacheError::Untrusted { .. }), "{err}");
        assert!(err.to_string().contains("symbolic link"), "{err}");
        assert!(err.hint().contains("rm -r"), "{}", err.hint());
        assert_eq!(
            linked.remove_for(
                &ServerUrl::parse("http://tka-prod").unwrap(),
                &ClusterName::new("prod").unwrap()
            ),
            0
        );
        assert_eq!(fs::read_dir(&elsewhere).unwrap().count(), 1);

        // A symlink in place of an entry, inside a real directory.
        let real = tempfile::tempdir().unwrap();
        let cache_dir = real.path().join("tka");
        create_private_dir(&cache_dir).unwrap();
        let outside = tempfile::tempdir().unwrap();
        planted(outside.path());
        std::os::unix::fs::symlink(
            outside.path().join(key("laptop").file_name()),
            cache_dir.join(key("laptop").file_name()),
        )
        .unwrap();
        assert!(cache(real.path()).lookup(&key("laptop")).is_none());

        // Allowed: the same entry in the user's own directory is read.
        let own = tempfile::tempdir().unwrap();
        create_private_dir(&own.path().join("tka")).unwrap();
        planted(&own.path().join("tka"));
        let hit = cache(own.path()).lookup(&key("laptop")).unwrap();
        assert_eq!(hit.entry.token.expose(), "someone-elses-token");

        // A directory owned by another user (only root can make one here).
        if euid() == 0 {
            let other = tempfile::tempdir().unwrap();
            let dir = other.path().join("tka");
            create_private_dir(&dir).unwrap();
            planted(&dir);
            rustix::fs::chown(
                &dir,
                Some(rustix::fs::Uid::from_raw(65534)),
                Some(rustix::fs::Gid::from_raw(65534)),
            )
            .unwrap();
            assert!(cache(other.path()).lookup(&key("laptop")).is_none());
        }
    }

    #[test]
    fn xdg_cache_home_must_be_absolute() {
        let env = Environment {
            xdg_cache_home: Some("relative".into()),
            home: Some("/home/alice".into()),
            ..Environment::default()
        };
        assert_eq!(
            TokenCache::locate(&env).unwrap().dir,
            PathBuf::from("/home/alice/.cache/tka")
        );
    }
}
