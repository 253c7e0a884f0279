//! `tka credential`'s cache entry on disk, written as a past login would have left it, so that
//! the cache-hit path can be timed as a whole process without a server.
//!
//! It owns only the benchmark's copy of the file layout (`$XDG_CACHE_HOME/tka/<key>.json`, 0700
//! directory, 0600 file); tka-cli's cache module stays the reference.

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use jiff::{SignedDuration, Timestamp};
use tka_core::ClusterName;
use tka_core::endpoint::ServerUrl;
use tka_core::token_cache::{CacheKey, CachedToken};

use crate::FixtureError;
use crate::fixtures::{self, CLUSTER, DEVICE};

/// The entry's key: cluster [`CLUSTER`], identity [`DEVICE`], on `server`.
pub fn key(server: &str) -> Result<CacheKey, FixtureError> {
    Ok(CacheKey {
        server: ServerUrl::parse(server).map_err(|e| FixtureError::new("server", e))?,
        cluster: ClusterName::new(CLUSTER).map_err(|e| FixtureError::new("cluster", e))?,
        identity: Some(DEVICE.to_owned()),
    })
}

/// Writes the entry for [`key`]`(server)` under `cache_home` (what `XDG_CACHE_HOME` names):
/// fetched 5 minutes ago, valid for an hour, the session for two, with [`fixtures::token`]. Its
/// "last handed out" time (the mtime) is set 10 minutes back, see [`backdate`]. Returns the
/// file's path.
pub fn seed(cache_home: &Path, server: &str) -> Result<PathBuf, FixtureError> {
    let key = key(server)?;
    let now = Timestamp::now();
    let entry = CachedToken::new(
        &key,
        fixtures::token(),
        now + SignedDuration::from_hours(1),
        now - SignedDuration::from_mins(5),
        Some(now + SignedDuration::from_hours(2)),
    );
    let dir = cache_home.join("tka");
    let io = |what: &Path, e: std::io::Error| {
        FixtureError::new("cache entry", format!("{}: {e}", what.display()))
    };
    std::fs::create_dir_all(&dir).map_err(|e| io(&dir, e))?;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))
        .map_err(|e| io(&dir, e))?;
    let path = dir.join(key.file_name());
    let json = entry
        .to_json()
        .map_err(|e| FixtureError::new("cache entry", e))?;
    std::fs::write(&path, json).map_err(|e| io(&path, e))?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| io(&path, e))?;
    backdate(&path)?;
    Ok(path)
}

/// Sets the entry's "last handed out" time (its mtime) 10 minutes back. A hit sets it to now,
/// and a second call within 30 s of a fetch older than 30 s counts as "asked again" (kubectl got
/// a 401) and refreshes, by design; so a benchmark of hits runs this before every call.
pub fn backdate(path: &Path) -> Result<(), FixtureError> {
    let io =
        |e: std::io::Error| FixtureError::new("cache entry", format!("{}: {e}", path.display()));
    let file = std::fs::File::options()
        .write(true)
        .open(path)
        .map_err(io)?;
    let ten_minutes_ago = Timestamp::now() - SignedDuration::from_mins(10);
    file.set_modified(SystemTime::from(ten_minutes_ago))
        .map_err(io)
}

/// Copies the entry file `entry` into `cache_home`'s `tka` directory, with the cache's
/// permissions (another cache directory holding the same entry).
pub fn copy_entry(entry: &Path, cache_home: &Path) -> Result<(), FixtureError> {
    let io = |what: &Path, e: std::io::Error| {
        FixtureError::new("cache entry", format!("{}: {e}", what.display()))
    };
    let dir = cache_home.join("tka");
    std::fs::create_dir_all(&dir).map_err(|e| io(&dir, e))?;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))
        .map_err(|e| io(&dir, e))?;
    let name = entry
        .file_name()
        .ok_or_else(|| FixtureError::new("cache entry", "the path has no file name"))?;
    let to = dir.join(name);
    std::fs::copy(entry, &to).map_err(|e| io(&to, e))?;
    std::fs::set_permissions(&to, std::fs::Permissions::from_mode(0o600)).map_err(|e| io(&to, e))
}
