//! `tka`: the command people use. It parses arguments into settings, runs one command through
//! tka-core and the I/O modules here, and prints. Exit codes are documented in docs/cli.md and
//! [`exit::Exit`].
//!
//! It owns the module list and the one place failures are printed. It must hold no command logic.

use std::process::ExitCode;

use clap::Parser as _;
use tka_core::SystemClock;

mod atomic_file;
mod cache;
mod cli;
mod client;
mod commands;
mod config;
mod discovery;
mod error;
mod exit;
mod kubeconfig_file;
mod kubeconfig_link;
mod output;
mod pins;
mod settings;

use cli::{Cli, Command, Environment};
use error::CliError;
use settings::Settings;

fn main() -> ExitCode {
    let cli = Cli::parse();
    // kubectl shows the exec plugin's stderr inline: keep its failures to one line.
    let one_line = matches!(cli.command, Command::Credential(_));
    let outcome = Settings::try_from((cli, Environment::from_process()))
        .map_err(CliError::from)
        .and_then(|settings| commands::run(&settings, &SystemClock));
    match outcome {
        Ok(code) => code,
        Err(error) => {
            output::report(&error, one_line);
            error.exit().into()
        }
    }
}
