//! Writes one `tka credential` cache entry, as a past login would have, so that a benchmark of
//! the cache-hit path runs without a server: `seed_cache CACHE_HOME SERVER_URL`. The entry is
//! for cluster `prod-eu` and identity `laptop.tail1234.ts.net`, fetched 5 minutes ago, valid for
//! an hour; the file's mtime ("last handed out") is set 10 minutes back. A hit rewrites that
//! mtime, and a second hit within 30 s of a stale fetch counts as "asked again" (a refresh), so
//! re-run this (or `touch -d '-10 min'` the file) before every timed run. Prints the file's path.
//! (`exec_plugin` does all of this itself.) It writes only under `CACHE_HOME` and must not
//! contact a server.

use std::io::Write as _;

use tka_benches::cache_file;

fn main() -> std::process::ExitCode {
    let mut args = std::env::args().skip(1);
    let (Some(home), Some(server)) = (args.next(), args.next()) else {
        eprintln!("usage: seed_cache CACHE_HOME SERVER_URL");
        return std::process::ExitCode::from(2);
    };
    match cache_file::seed(std::path::Path::new(&home), &server) {
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
