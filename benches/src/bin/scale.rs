//! The scale run on the real components: the release `tka-server` with deploy/'s RBAC on the
//! testenv's kube-apiserver (see `tka_benches::scale`). Needs the testenv (`eval "$(
//! tka-testkit/testenv/build.sh)"`) and a built server. Writes `scale.json`, `scale.md` and SVG
//! plots into `--out`. Bounded: every phase has a count and every wait a deadline.
//!
//! Usage: `scale [--server-bin PATH] [--out DIR] [--deploy DIR] [--sessions N] [--mid-sessions N]
//! [--logins N] [--expiring N] [--spread-seconds S] [--idle-seconds S] [--seed-concurrency N]
//! [--server-log-filter FILTER]` (with a filter, the server's log is copied to `server.log` in `--out`).

use std::process::ExitCode;

use tka_benches::real_main;
use tka_benches::scale::output;
use tka_benches::scale::run::{self, Config};
use tka_testkit::testenv;

fn config() -> Result<Config, String> {
    let testenv_bin = testenv::bin_dir().map_err(|e| e.to_string())?;
    let target = real_main::target_dir();
    let mut c = Config {
        testenv_bin,
        server_bin: target.join("release").join("tka-server"),
        deploy: real_main::deploy_dir(),
        out: target.join("bench"),
        sessions: 10_000,
        mid_sessions: 1_000,
        logins: 100,
        expiring: 1_000,
        spread_seconds: 60,
        idle_seconds: 60,
        seed_concurrency: 16,
        server_log_filter: None,
    };
    real_main::parse_flags("scale", |flag, value| {
        let number = || real_main::number(flag, value);
        match flag {
            "--server-bin" => c.server_bin = value.into(),
            "--out" => c.out = value.into(),
            "--deploy" => c.deploy = value.into(),
            "--sessions" => c.sessions = number()?,
            "--mid-sessions" => c.mid_sessions = number()?,
            "--logins" => c.logins = number()?.max(1),
            "--expiring" => c.expiring = number()?.max(1),
            "--spread-seconds" => c.spread_seconds = number()? as u64,
            "--idle-seconds" => c.idle_seconds = (number()? as u64).clamp(5, 600),
            "--seed-concurrency" => c.seed_concurrency = number()?.clamp(1, 64),
            "--server-log-filter" => c.server_log_filter = Some(value.to_owned()),
            _ => return Ok(false),
        }
        Ok(true)
    })?;
    real_main::check_server_bin(&c.server_bin)?;
    Ok(c)
}

fn main() -> ExitCode {
    let config = config().map(|c| (c.out.clone(), run::run(c)));
    real_main::run_and_report("scale", config, output::write_all, output::markdown)
}
