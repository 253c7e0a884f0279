//! What the benchmark binaries on the real components (`scale`, `proxy`) share: where the
//! release build and deploy/ are, `--flag value` parsing, and the end of `main` (run, write the
//! results, print the Markdown, exit 0, 1 or 2).

use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use crate::scale::ScaleError;

/// `$CARGO_TARGET_DIR`, or `target` when it is not set.
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("target"))
}

/// The kustomize base the server's RBAC comes from.
pub fn deploy_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tka-server/deploy")
}

/// Reads the process's arguments as `--flag value` pairs and hands each to `set`, which answers
/// whether it knows the flag; `bin` names the binary whose usage an unknown flag points to.
pub fn parse_flags(
    bin: &str,
    mut set: impl FnMut(&str, &str) -> Result<bool, String>,
) -> Result<(), String> {
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().ok_or(format!("{flag} needs a value"))?;
        if !set(&flag, &value)? {
            return Err(format!(
                "unknown flag {flag}; see the usage at the top of benches/src/bin/{bin}.rs"
            ));
        }
    }
    Ok(())
}

/// A flag's value as a count.
pub fn number(flag: &str, value: &str) -> Result<usize, String> {
    value
        .parse::<usize>()
        .map_err(|e| format!("{flag} {value}: {e}"))
}

/// Refuses to start without the server binary, saying how to build it.
pub fn check_server_bin(server_bin: &Path) -> Result<(), String> {
    if server_bin.is_file() {
        return Ok(());
    }
    Err(format!(
        "{} does not exist: run `cargo build --release -p tka-server` or pass --server-bin",
        server_bin.display()
    ))
}

/// The end of `main`: runs `run` on a two-thread runtime, writes its report into `out`, prints
/// the Markdown on stdout. Exit status 2 for a bad configuration, 1 for a failed run.
pub fn run_and_report<R, F>(
    bin: &str,
    config: Result<(PathBuf, F), String>,
    write: impl FnOnce(&R, &Path) -> Result<(), ScaleError>,
    markdown: impl FnOnce(&R) -> String,
) -> ExitCode
where
    F: Future<Output = Result<R, ScaleError>>,
{
    let (out, run) = match config {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{bin}: {e}");
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
            eprintln!("{bin}: {e}");
            return ExitCode::FAILURE;
        }
    };
    let written = runtime
        .block_on(run)
        .and_then(|report| write(&report, &out).map(|()| report));
    match written {
        Ok(report) => {
            let _ = std::io::Write::write_all(
                &mut std::io::stdout().lock(),
                markdown(&report).as_bytes(),
            );
            eprintln!("{bin}: results in {}", out.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}
