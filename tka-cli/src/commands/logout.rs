//! `tka logout`: end the session on the server, drop cached tokens, remove tka's kubeconfig
//! entries and restore the previous context. When the server cannot be reached the entries stay,
//! so the logout can be repeated.
//!
//! It owns that order. It must not remove entries tka did not write, nor find servers itself
//! ([`super::servers`] does).

use serde::Serialize;
use tka_core::endpoint::ServerUrl;
use tka_core::{Clock, ClusterName};

use crate::cache::TokenCache;
use crate::client::ApiClient;
use crate::error::CliError;
use crate::kubeconfig_file::KubeconfigFile;
use crate::output::{self, Untrusted};
use crate::settings::{LogoutSettings, Settings};

/// One logout (`-o json|yaml` prints a list of these).
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct LogoutSummary {
    pub(crate) cluster: ClusterName,
    pub(crate) server: ServerUrl,
    pub(crate) removed_contexts: Vec<String>,
    /// Set when the current context changed: what it is now (`null`: unset).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) current_context: Option<Option<String>>,
}

/// A session to end and the contexts that belong to it.
struct Target {
    cluster: ClusterName,
    server: ServerUrl,
    contexts: Vec<String>,
}

pub(crate) fn run(
    settings: &Settings,
    logout: &LogoutSettings,
    clock: &dyn Clock,
) -> Result<(), CliError> {
    let file = KubeconfigFile::locate(&settings.env)?;
    let config = file.read()?;
    let targets = targets(&config, logout, &file, |cluster| {
        // Nothing in the kubeconfig: the server discovery trusts for the name, if any.
        super::servers::discover(settings, clock)
            .ok()
            .and_then(|found| {
                super::servers::discovered_server(cluster, &found)
                    .ok()
                    .flatten()
            })
    })?;
    if targets.iter().any(|t| !t.contexts.is_empty()) {
        file.check_writable()?;
        // The edits, tried first: a file tka cannot edit is refused before any session ends.
        let mut trial = config;
        for context in targets.iter().flat_map(|t| &t.contexts) {
            trial.logout(context).map_err(|source| {
                crate::kubeconfig_file::KubeconfigFileError::Refused {
                    path: file.path().to_path_buf(),
                    source,
                }
            })?;
        }
    }
    let cache = TokenCache::locate(&settings.env)?;

    let mut summaries = Vec::new();
    let mut failures: Vec<CliError> = Vec::new();
    for target in targets {
        let ended = ApiClient::new(target.server.clone(), &settings.network).and_then(|client| {
            output::with_spinner(
                format!("Logging out of {} at {}", target.cluster, target.server),
                || client.logout(),
            )
        });
        if let Err(e) = ended {
            failures.push(CliError::Api(e));
            continue;
        }
        cache.remove_for(&target.server, &target.cluster);
        let mut current_context = None;
        if !target.contexts.is_empty() {
            let changes = file.update(|config| {
                let mut changes = Vec::new();
                for context in &target.contexts {
                    changes.extend(config.logout(context)?);
                }
                Ok(changes)
            })?;
            for change in &changes {
                if change.restored.is_some() {
                    current_context.clone_from(&change.restored);
                }
            }
        }
        summaries.push(LogoutSummary {
            cluster: target.cluster,
            server: target.server,
            removed_contexts: target.contexts,
            current_context,
        });
    }

    let printed = output::result(settings.output, &summaries, || human(&summaries));
    super::failures::several(failures, printed)
}

fn targets(
    config: &tka_core::kubeconfig::Kubeconfig,
    logout: &LogoutSettings,
    file: &KubeconfigFile,
    discover: impl FnOnce(&ClusterName) -> Option<ServerUrl>,
) -> Result<Vec<Target>, CliError> {
    let mut targets: Vec<Target> = Vec::new();
    for context in config.tka_contexts() {
        let wanted = match &logout.cluster {
            None => true,
            Some(cluster) => {
                &context.marker.cluster == cluster
                    && logout
                        .server
                        .as_ref()
                        .is_none_or(|s| s == &context.marker.server)
            }
        };
        if !wanted {
            continue;
        }
        match targets
            .iter_mut()
            .find(|t| t.cluster == context.marker.cluster && t.server == context.marker.server)
        {
            Some(t) => t.contexts.push(context.name),
            None => targets.push(Target {
                cluster: context.marker.cluster,
                server: context.marker.server,
                contexts: vec![context.name],
            }),
        }
    }
    if let Some(cluster) = &logout.cluster
        && targets.is_empty()
    {
        // Nothing in the kubeconfig: with --server, end the session on the server anyway
        // (e.g. a login made with another kubeconfig or by `tka shell --keep`).
        match logout.server.clone().or_else(|| discover(cluster)) {
            Some(server) => targets.push(Target {
                cluster: cluster.clone(),
                server,
                contexts: Vec::new(),
            }),
            None => {
                return Err(CliError::NotLoggedIn {
                    cluster: cluster.clone(),
                    path: file.path().to_path_buf(),
                });
            }
        }
    }
    Ok(targets)
}

fn human(summaries: &[LogoutSummary]) -> String {
    if summaries.is_empty() {
        return "No tka logins in the kubeconfig.\n".to_owned();
    }
    let mut out = String::new();
    for s in summaries {
        out += &format!("Logged out of {} ({}).", s.cluster, s.server);
        if !s.removed_contexts.is_empty() {
            out += &format!(
                " Removed context {}.",
                Untrusted(s.removed_contexts.join(", "))
            );
        }
        match &s.current_context {
            Some(Some(c)) => out += &format!(" The current context is {} again.", Untrusted(c)),
            Some(None) => out += " No context is current now.",
            None => {}
        }
        out.push('\n');
    }
    out
}
