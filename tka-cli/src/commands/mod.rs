//! The commands. Each takes validated settings and a clock, does its work through tka-core and
//! the I/O modules, and returns a result for `main` to report.
//!
//! This module owns the dispatch only: what commands share lives in [`servers`] (where a
//! cluster's server is) and [`failures`] (the end of a command that did several things), so no
//! command imports this module back. Commands must not print failures themselves (`main`
//! reports) nor write files other than through the I/O modules.

use std::process::ExitCode;

use clap::CommandFactory as _;
use tka_core::Clock;

use crate::cli::Cli;
use crate::error::CliError;
use crate::exit::Exit;
use crate::output;
use crate::settings::{Action, Settings};

mod credential;
mod explain;
mod failures;
mod list;
mod login;
mod logout;
mod prompt;
mod servers;
mod shell;
mod status;

/// Runs the action; the exit code on success.
pub(crate) fn run(settings: &Settings, clock: &dyn Clock) -> Result<ExitCode, CliError> {
    match &settings.action {
        Action::List => return list::run(settings, clock),
        Action::Status { refresh } => status::run(settings, *refresh, clock)?,
        Action::Login(login) => login::run(settings, login, clock)?,
        Action::Logout(logout) => logout::run(settings, logout, clock)?,
        Action::Credential(credential) => {
            credential::run(credential, &settings.network, &settings.env, clock)?;
        }
        Action::Prompt => prompt::run(settings, clock)?,
        Action::Explain(explain) => explain::run(settings, explain, clock)?,
        Action::Shell(shell) => return shell::run(settings, shell, clock),
        Action::Completion(shell) => {
            let mut script = Vec::new();
            clap_complete::generate(*shell, &mut Cli::command(), "tka", &mut script);
            output::stdout(&String::from_utf8_lossy(&script))?;
        }
        Action::Version => {
            let version = env!("CARGO_PKG_VERSION");
            output::result(
                settings.output,
                &serde_json::json!({ "version": version }),
                || format!("tka {version}\n"),
            )?;
        }
    }
    Ok(Exit::Ok.into())
}
