//! The proxy benchmark on the real components (see `tka_benches::proxy`): the release
//! `tka-server` with `--proxy-listen` in front of the testenv's kube-apiserver. Needs the testenv
//! (`eval "$(tka-testkit/testenv/build.sh)"`) and a built server. Writes `proxy.json` and
//! `proxy.md` into `--out`. Bounded: every phase has a count and every wait a deadline.
//!
//! Usage: `proxy [--server-bin PATH] [--out DIR] [--deploy DIR] [--rounds N] [--concurrency N]
//! [--slices N] [--slice-seconds S] [--watches N] [--logout-rounds N] [--logout-watches N]`.

use std::path::PathBuf;
use std::process::ExitCode;

use tka_benches::proxy::output;
use tka_benches::proxy::run::{self, Config};
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
        rounds: 300,
        concurrency: 8,
        slices: 5,
        slice_seconds: 3,
        watches: 1_000,
        logout_rounds: 10,
        logout_watches: 20,
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
            "--rounds" => c.rounds = number()?.clamp(1, 100_000),
            "--concurrency" => c.concurrency = number()?.clamp(1, 256),
            "--slices" => c.slices = number()?.clamp(1, 100),
            "--slice-seconds" => c.slice_seconds = (number()? as u64).clamp(1, 60),
            "--watches" => c.watches = number()?.clamp(1, 4_000),
            "--logout-rounds" => c.logout_rounds = number()?.clamp(1, 1_000),
            "--logout-watches" => c.logout_watches = number()?.clamp(1, 64),
            _ => {
                return Err(format!(
                    "unknown flag {flag}; see the usage at the top of benches/src/bin/proxy.rs"
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
            eprintln!("proxy: {e}");
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
            eprintln!("proxy: {e}");
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
                eprintln!("proxy: results in {}", out.display());
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
