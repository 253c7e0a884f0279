//! `tka`: the command people use. It parses arguments, calls tka-core and prints.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Log in to Kubernetes clusters with your Tailscale identity.
#[derive(Debug, Parser)]
#[command(name = "tka", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print the version of tka.
    Version,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Version => {
            #[allow(clippy::print_stdout)] // printing is this command's job
            {
                println!("tka {}", env!("CARGO_PKG_VERSION"));
            }
            ExitCode::SUCCESS
        }
    }
}
