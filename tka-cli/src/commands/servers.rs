//! Where a cluster's tka server is, for the commands that need one: discovery on the tailnet with
//! its pins, the explicit `--server`, and the server of an earlier login in the kubeconfig.
//!
//! It owns the order in which these are tried and the errors that say why none was found. It
//! must not log in, write the kubeconfig or print anything but discovery's warnings.

use tka_core::api::ClusterEndpoint;
use tka_core::endpoint::ServerUrl;
use tka_core::kubeconfig::Kubeconfig;
use tka_core::{Clock, ClusterName};

use crate::config::config_path;
use crate::discovery::{self, DiscoveryError, Found, Outcome};
use crate::error::CliError;
use crate::output;
use crate::pins::{Pins, pins_path};
use crate::settings::Settings;

/// Finds the servers on the tailnet (and in the config file), asks each for its cluster and
/// applies the pins. When tailscaled cannot be asked, the configured servers alone are asked (with
/// a warning); with none configured that is the error.
pub(crate) fn discover(settings: &Settings, clock: &dyn Clock) -> Result<Vec<Found>, CliError> {
    let status = match discovery::tailnet_status(&settings.discovery, settings.network.timeout) {
        Ok(status) => Some(status),
        Err(e) if settings.discovery.configured.is_empty() => return Err(e.into()),
        Err(e) => {
            output::warn(
                &format!("{e}; asking only the servers in the config file"),
                false,
            );
            None
        }
    };
    let candidates = discovery::candidates(&settings.discovery, status.as_ref());
    if candidates.is_empty() {
        return Err(DiscoveryError::NoServers {
            tag: settings.discovery.tag.clone(),
            config: config_path(&settings.env),
        }
        .into());
    }
    let path = pins_path(&settings.env)?;
    let mut pins = Pins::load(&path)?;
    let count = candidates.len();
    let found = output::with_spinner(
        format!(
            "Asking {count} tka server{}",
            if count == 1 { "" } else { "s" }
        ),
        || discovery::probe(candidates, &settings.network, &mut pins, clock.now()),
    );
    if let Err(e) = pins.save_if_changed(&path) {
        output::warn(&format!("{e}; the new pins were not kept"), false);
    }
    Ok(found)
}

/// The server discovery trusts for `cluster`: `Ok(None)` when no server claims it, an error when
/// only nodes other than the pinned one (or several unpinned ones) claim it.
pub(crate) fn discovered_server(
    cluster: &ClusterName,
    found: &[Found],
) -> Result<Option<ServerUrl>, CliError> {
    Ok(discovered(cluster, found)?.map(|(url, _)| url))
}

/// [`discovered_server`], with the cluster endpoint that server answered with.
fn discovered(
    cluster: &ClusterName,
    found: &[Found],
) -> Result<Option<(ServerUrl, ClusterEndpoint)>, CliError> {
    let mut conflict = None;
    for f in found {
        match &f.outcome {
            Outcome::Trusted(response) if &response.cluster.name == cluster => {
                return Ok(Some((f.candidate.url.clone(), response.cluster.clone())));
            }
            Outcome::Conflict {
                response,
                pinned_to,
                others,
            } if &response.cluster.name == cluster && conflict.is_none() => {
                let first = pinned_to
                    .as_ref()
                    .or(others.first())
                    .map_or_else(|| "another node".to_owned(), |n| n.name.clone());
                conflict = Some(CliError::NameConflict {
                    cluster: cluster.clone(),
                    pinned: pinned_to.is_some(),
                    first,
                    second: f.candidate.node.name.clone(),
                });
            }
            _ => {}
        }
    }
    conflict.map_or(Ok(None), Err)
}

/// Where a cluster's tka server is: the explicit `--server`; else the server discovery on the
/// tailnet trusts for the name (pins respected; a name conflict is an error); else the server of
/// an earlier login to the cluster found in the kubeconfig. When none is known but discovery
/// found servers that did not answer, the error says so (the cluster's may be among them), as
/// `tka list` does, instead of "no server known".
///
/// With the server comes the cluster endpoint it answered discovery with, when discovery found
/// it (so a login knows whether the cluster offers the tka proxy without asking again).
pub(crate) fn resolve_server(
    settings: &Settings,
    cluster: &ClusterName,
    explicit: Option<&ServerUrl>,
    kubeconfig: Option<&Kubeconfig>,
    clock: &dyn Clock,
) -> Result<(ServerUrl, Option<ClusterEndpoint>), CliError> {
    if let Some(server) = explicit {
        return Ok((server.clone(), None));
    }
    let (why_not, silent) = match discover(settings, clock) {
        Ok(found) => match discovered(cluster, &found)? {
            Some((server, endpoint)) => return Ok((server, Some(endpoint))),
            None => (
                format!(
                    "no server on the tailnet tagged {} serves it",
                    settings.discovery.tag
                ),
                silent_servers(settings, cluster, &found),
            ),
        },
        Err(e) => (e.to_string(), None),
    };
    if let Some(server) = recorded_server(cluster, kubeconfig) {
        return Ok((server, None));
    }
    Err(match silent {
        Some(silent) => silent,
        None => CliError::NoServer {
            cluster: cluster.clone(),
            discovery: why_not,
        },
    })
}

/// The error for servers discovery found that gave no answer, when there are any: naming the
/// one `cluster` is pinned to when that is among them.
fn silent_servers(settings: &Settings, cluster: &ClusterName, found: &[Found]) -> Option<CliError> {
    let silent: Vec<(&Found, String)> = found
        .iter()
        .filter_map(|f| match &f.outcome {
            Outcome::Offline => Some((f, "offline".to_owned())),
            Outcome::Failed(e) => Some((f, e.to_string())),
            Outcome::Trusted(_) | Outcome::Conflict { .. } => None,
        })
        .collect();
    if silent.is_empty() {
        return None;
    }
    let pins = pins_path(&settings.env)
        .ok()
        .and_then(|path| Pins::load(&path).ok())
        .unwrap_or_default();
    let pinned = silent
        .iter()
        .find(|(f, _)| pins.is_pinned_to(cluster, &f.candidate.node, &f.candidate.url));
    let (servers, pinned) = match pinned {
        Some((f, reason)) => (vec![format!("{} ({reason})", f.candidate.node.name)], true),
        None => (
            silent
                .iter()
                .map(|(f, reason)| format!("{} ({reason})", f.candidate.node.name))
                .collect(),
            false,
        ),
    };
    Some(CliError::ServerSilent {
        cluster: cluster.clone(),
        pinned,
        servers,
        tag: settings.discovery.tag.clone(),
        port: settings.discovery.port,
    })
}

/// The server of an earlier login to `cluster` in the kubeconfig, when there is exactly one.
fn recorded_server(cluster: &ClusterName, kubeconfig: Option<&Kubeconfig>) -> Option<ServerUrl> {
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
        [one] => Some(one.clone()),
        _ => None,
    }
}
