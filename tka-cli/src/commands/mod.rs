//! The commands. Each takes validated settings and a clock, does its work through tka-core and
//! the I/O modules, and returns a result for `main` to report.

use std::process::ExitCode;

use clap::CommandFactory as _;
use tka_core::endpoint::ServerUrl;
use tka_core::kubeconfig::Kubeconfig;
use tka_core::{Clock, ClusterName};

use crate::cli::Cli;
use crate::error::{CliError, Exit};
use crate::output;
use crate::settings::{Action, Settings};

mod credential;
mod login;
mod logout;
mod prompt;
mod shell;

/// Runs the action; the exit code on success.
pub(crate) fn run(settings: &Settings, clock: &dyn Clock) -> Result<ExitCode, CliError> {
    match &settings.action {
        Action::Login(login) => login::run(settings, login, clock)?,
        Action::Logout(logout) => logout::run(settings, logout)?,
        Action::Credential(credential) => {
            credential::run(credential, &settings.network, &settings.env, clock)?;
        }
        Action::Prompt => prompt::run(settings, clock)?,
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

/// Where a cluster's tka server is. Today: the explicit `--server`, else the server of an
/// earlier login to the cluster found in the kubeconfig. Discovery on the tailnet (peers tagged
/// `tag:tka`) becomes one more source here.
pub(crate) fn resolve_server(
    cluster: &ClusterName,
    explicit: Option<&ServerUrl>,
    kubeconfig: Option<&Kubeconfig>,
) -> Result<ServerUrl, CliError> {
    if let Some(server) = explicit {
        return Ok(server.clone());
    }
    let mut known: Vec<ServerUrl> = kubeconfig
        .map(|config| {
            config
                .tka_contexts()
                .into_iter()
                .filter(|c| &c.marker.cluster == cluster)
                .map(|c| c.marker.server)
                .collect()
        })
        .unwrap_or_default();
    known.sort();
    known.dedup();
    match known.as_slice() {
        [one] => Ok(one.clone()),
        _ => Err(CliError::NoServer {
            cluster: cluster.clone(),
        }),
    }
}
