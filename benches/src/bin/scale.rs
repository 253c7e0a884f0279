//! The scale run on the real components: the release `tka-server` with deploy/'s RBAC on the
//! testenv's kube-apiserver (see `tka_benches::scale`). Needs the testenv (`eval "$(
//! tka-testkit/testenv/build.sh)"`) and a built server. Writes `scale.json`, `scale.md` and SVG
//! plots into `--out`. Bounded: every phase has a count and every wait a deadline.
//!
//! Usage: `scale [--server-bin PATH] [--out DIR] [--deploy DIR] [--sessions N] [--mid-sessions N]
//! [--logins N] [--expiring N] [--spread-seconds S] [--idle-seconds S] [--seed-concurrency N]
//! [--server-log-filter FILTER]` (with a filter, the server's log is copied to `server.log` in `--out`).

use std::path::PathBuf;
use std::process::ExitCode;

use tka_benches::scale::output;
use tka_benches::scale::run::{self, Config};
use tka_testkit::testenv;

fn config() -> Result<Config, String> {
    let testenv_bin = testenv::bin_dir().map_err(|e| e.to_string())?;
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("target"));
    let mut c = Config {
        testenv_bin,
        server_bin: target.join("release").join("tka-server"),
        deploy: PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tka-server/deploy"),
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
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().ok_or(format!("{flag} needs a value"))?;
        let number = || {
            value
                .parse::<usize>()
                .map_err(|e| format!("{flag} {value}: {e}"))
        };
        match flag.as_str() {
            "--server-bin" => c.server_bin = value.clone().into(),
            "--out" => c.out = value.clone().into(),
            "--deploy" => c.deploy = value.clone().into(),
            "--sessions" => c.sessions = number()?,
            "--mid-sessions" => c.mid_sessions = number()?,
            "--logins" => c.logins = number()?.max(1),
            "--expiring" => c.expiring = number()?.max(1),
            "--spread-seconds" => c.spread_seconds = number()? as u64,
            "--idle-seconds" => c.idle_seconds = (number()? as u64).clamp(5, 600),
            "--seed-concurrency" => c.seed_concurrency = number()?.clamp(1, 64),
            "--server-log-filter" => c.server_log_filter = Some(value.clone()),
            _ => {
                return Err(format!(
                    "unknown flag {flag}; see the usage at the top of benches/src/bin/scale.rs"
                ));
            }
        }
    }
    if !c.server_bin.is_file() {
        return Err(format!(
            "{} does not exist: run `cargo build --release -p tka-server` or pass --server-bin",
            c.server_bin.display()
        ));
    }
    Ok(c)
}

fn main() -> ExitCode {
    let config = match config() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("scale: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("scale: {e}");
            return ExitCode::FAILURE;
        }
    };
    let out = config.out.clone();
    match runtime.block_on(run::run(config)) {
        Ok(report) => match output::write_all(&report, &out) {
            Ok(()) => {
                let _ = std::io::Write::write_all(
                    &mut std::io::stdout().lock(),
                    output::markdown(&report).as_bytes(),
                );
                eprintln!("scale: results in {}", out.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{e}");
                ExitCode::FAILURE
            }
        },
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}
