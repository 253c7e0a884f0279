//! `tka-server`: wires tka-core's implementations into the login API, the ops endpoints and the
//! reconciler loop. All behaviour lives in tka-core; this binary parses and validates settings.

use std::process::ExitCode;

use clap::Parser;

/// The tka login server.
#[derive(Debug, Parser)]
#[command(name = "tka-server", version, about, long_about = None)]
struct Cli {}

fn main() -> ExitCode {
    let _cli = Cli::parse();
    eprintln!("tka-server: no subcommand is available in this build yet; see --help");
    ExitCode::from(2)
}
