//! Writes one `tka credential` cache entry, as a past login would have, so that a benchmark of
//! the cache-hit path runs without a server: `seed_cache CACHE_HOME SERVER_URL`. The entry is
//! for cluster `prod-eu` and identity `laptop.tail1234.ts.net`, fetched 5 minutes ago, valid for
//! an hour; the file's mtime ("last handed out") is set 10 minutes back. A hit rewrites that
//! mtime, and a second hit within 30 s of a stale fetch counts as "asked again" (a refresh), so
//! re-run this (or `touch -d '-10 min'` the file) before every timed run. Prints the file's path.
//! It writes only under `CACHE_HOME` and must not contact a server.

use std::io::Write as _;
use std::os::unix::fs::PermissionsExt as _;

use jiff::{SignedDuration, Timestamp};
use tka_benches::fixtures::{self, CLUSTER, DEVICE};
use tka_core::ClusterName;
use tka_core::endpoint::ServerUrl;
use tka_core::token_cache::{CacheKey, CachedToken};

fn run() -> Result<std::path::PathBuf, String> {
    let mut args = std::env::args().skip(1);
    let (Some(home), Some(server)) = (args.next(), args.next()) else {
        return Err("usage: seed_cache CACHE_HOME SERVER_URL".to_owned());
    };
    let key = CacheKey {
        server: ServerUrl::parse(&server).map_err(|e| e.to_string())?,
        cluster: ClusterName::new(CLUSTER).map_err(|e| e.to_string())?,
        identity: Some(DEVICE.to_owned()),
    };
    let now = Timestamp::now();
    let entry = CachedToken::new(
        &key,
        fixtures::token(),
        now + SignedDuration::from_hours(1),
        now - SignedDuration::from_mins(5),
        Some(now + SignedDuration::from_hours(2)),
    );
    let dir = std::path::Path::new(&home).join("tka");
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))
        .map_err(|e| format!("{}: {e}", dir.display()))?;
    let path = dir.join(key.file_name());
    let json = entry.to_json().map_err(|e| e.to_string())?;
    std::fs::write(&path, json).map_err(|e| format!("{}: {e}", path.display()))?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let file = std::fs::File::options()
        .write(true)
        .open(&path)
        .map_err(|e| e.to_string())?;
    file.set_modified(std::time::SystemTime::from(
        now - SignedDuration::from_mins(10),
    ))
    .map_err(|e| e.to_string())?;
    Ok(path)
}

fn main() -> std::process::ExitCode {
    match run() {
        Ok(path) => {
            let _ = writeln!(std::io::stdout(), "{}", path.display());
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("seed_cache: {e}");
            std::process::ExitCode::from(2)
        }
    }
}
