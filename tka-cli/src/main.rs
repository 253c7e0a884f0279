//! `tka`: the command people use. It parses arguments into settings, runs one command through
//! tka-core and the I/O modules here, and prints. Exit codes are documented in docs/cli.md and
//! [`error::Exit`].

use std::process::ExitCode;

use clap::Parser as _;
use tka_core::SystemClock;

mod cache;
mod cli;
mod client;
mod commands;
mod discovery;
mod error;
mod kubeconfig_file;
mod kubeconfig_link;
mod output;
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
