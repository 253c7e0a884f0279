//! The proxy benchmark on the real components (see `tka_benches::proxy`): the release
//! `tka-server` with `--proxy-listen` in front of the testenv's kube-apiserver. Needs the testenv
//! (`eval "$(tka-testkit/testenv/build.sh)"`) and a built server. Writes `proxy.json` and
//! `proxy.md` into `--out`. Bounded: every phase has a count and every wait a deadline.
//!
//! Usage: `proxy [--server-bin PATH] [--out DIR] [--deploy DIR] [--rounds N] [--concurrency N]
//! [--slices N] [--slice-seconds S] [--watches N] [--logout-rounds N] [--logout-watches N]`.

use std::process::ExitCode;

use tka_benches::proxy::output;
use tka_benches::proxy::run::{self, Config};
use tka_benches::real_main;
use tka_testkit::testenv;

fn config() -> Result<Config, String> {
    let testenv_bin = testenv::bin_dir().map_err(|e| e.to_string())?;
    let target = real_main::target_dir();
    let mut c = Config {
        testenv_bin,
        server_bin: target.join("release").join("tka-server"),
        deploy: real_main::deploy_dir(),
        out: target.join("bench"),
        rounds: 300,
        concurrency: 8,
        slices: 5,
        slice_seconds: 3,
        watches: 1_000,
        logout_rounds: 10,
        logout_watches: 20,
    };
    real_main::parse_flags("proxy", |flag, value| {
        let number = || real_main::number(flag, value);
        match flag {
            "--server-bin" => c.server_bin = value.into(),
            "--out" => c.out = value.into(),
            "--deploy" => c.deploy = value.into(),
            "--rounds" => c.rounds = number()?.clamp(1, 100_000),
            "--concurrency" => c.concurrency = number()?.clamp(1, 256),
            "--slices" => c.slices = number()?.clamp(1, 100),
            "--slice-seconds" => c.slice_seconds = (number()? as u64).clamp(1, 60),
            "--watches" => c.watches = number()?.clamp(1, 4_000),
            "--logout-rounds" => c.logout_rounds = number()?.clamp(1, 1_000),
            "--logout-watches" => c.logout_watches = number()?.clamp(1, 64),
            _ => return Ok(false),
        }
        Ok(true)
    })?;
    real_main::check_server_bin(&c.server_bin)?;
    Ok(c)
}

fn main() -> ExitCode {
    let config = config().map(|c| (c.out.clone(), run::run(c)));
    real_main::run_and_report("proxy", config, output::write_all, output::markdown)
}
