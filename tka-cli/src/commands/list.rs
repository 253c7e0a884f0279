//! `tka list`: the clusters whose servers discovery finds, the roles the caller may get there
//! (with their longest session), this device's session on each, name conflicts and servers that
//! did not answer. Reads only; the pins it records are discovery's. It must not log in or change
//! the kubeconfig.

use std::process::ExitCode;

use serde::Serialize;
use tka_core::api::{SessionInfo, Via};
use tka_core::endpoint::ServerUrl;
use tka_core::{Clock, ClusterName, Ttl};

use crate::client::ApiError;
use crate::discovery::{Found, Outcome};
use crate::error::CliError;
use crate::exit::Exit;
use crate::output::{self, Untrusted};
use crate::settings::Settings;

/// One server (`-o json|yaml` prints a list of these).
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct ListEntry {
    /// The cluster it claims; absent when it did not answer.
    #[serde(skip_serializing_if = "Option::is_none")]
    cluster: Option<ClusterName>,
    server: ServerUrl,
    node: String,
    node_id: String,
    /// `ok`, `conflict`, `offline`, `unreachable` or `error` (an answer tka cannot use).
    state: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    caller: Option<String>,
    /// How a login reaches the cluster by default: `proxy` when its server offers the tka
    /// proxy, else `direct`; absent when it did not answer.
    #[serde(skip_serializing_if = "Option::is_none")]
    via: Option<Via>,
    /// False when the server hands out no tokens for direct use (proxy only).
    #[serde(skip_serializing_if = "Option::is_none")]
    direct_tokens: Option<bool>,
    roles: Vec<RoleEntry>,
    #[serde(skip_serializing_if = "Option::is_none")]
    session: Option<SessionInfo>,
    /// For conflicts: the node the name is pinned to, or the other claimants.
    #[serde(skip_serializing_if = "Option::is_none")]
    conflict: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct RoleEntry {
    role: String,
    default: bool,
    default_ttl: Ttl,
    max_ttl: Ttl,
}

pub(crate) fn run(settings: &Settings, clock: &dyn Clock) -> Result<ExitCode, CliError> {
    let found = super::servers::discover(settings, clock)?;
    let mut entries: Vec<ListEntry> = found.into_iter().map(entry).collect();
    // By cluster, the trusted server of a name before its conflicts; servers without an answer
    // last.
    entries.sort_by(|a, b| {
        (a.cluster.is_none(), &a.cluster, a.state != "ok", &a.node).cmp(&(
            b.cluster.is_none(),
            &b.cluster,
            b.state != "ok",
            &b.node,
        ))
    });
    output::result(settings.output, &entries, || table(&entries))?;
    let answered = entries.iter().any(|e| matches!(e.state, "ok" | "conflict"));
    if entries
        .iter()
        .any(|e| matches!(e.state, "unreachable" | "offline"))
    {
        output::note(&format!(
            "Some servers did not answer; the tailnet policy must let this device reach {} on port {}.",
            settings.discovery.tag, settings.discovery.port
        ));
    }
    Ok(if answered {
        Exit::Ok
    } else {
        Exit::Unreachable
    }
    .into())
}

fn entry(found: Found) -> ListEntry {
    let candidate = found.candidate;
    let mut e = ListEntry {
        cluster: None,
        server: candidate.url,
        node: candidate.node.name,
        node_id: candidate.node.id,
        state: "ok",
        caller: None,
        via: None,
        direct_tokens: None,
        roles: Vec::new(),
        session: None,
        conflict: None,
        error: None,
    };
    let response = match found.outcome {
        Outcome::Trusted(response) => response,
        Outcome::Conflict {
            response,
            pinned_to,
            others,
        } => {
            e.state = "conflict";
            e.conflict = Some(match pinned_to {
                Some(pinned) => format!("pinned to {}", pinned.name),
                None => format!(
                    "also claimed by {}",
                    others
                        .iter()
                        .map(|n| n.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            });
            response
        }
        Outcome::Offline => {
            e.state = "offline";
            return e;
        }
        Outcome::Failed(error) => {
            e.state = if matches!(error, ApiError::Unreachable { .. }) {
                "unreachable"
            } else {
                "error"
            };
            e.error = Some(error.to_string());
            return e;
        }
    };
    let response = *response;
    e.via = Some(if response.cluster.proxy.is_some() {
        Via::Proxy
    } else {
        Via::Direct
    });
    e.direct_tokens = Some(response.cluster.direct_tokens);
    e.cluster = Some(response.cluster.name);
    e.caller = Some(response.caller);
    e.roles = response
        .roles
        .roles
        .into_iter()
        .map(|r| RoleEntry {
            role: r.role.to_string(),
            default: r.default,
            default_ttl: r.default_ttl,
            max_ttl: r.max_ttl,
        })
        .collect();
    e.session = response.session;
    e
}

fn table(entries: &[ListEntry]) -> String {
    let mut rows: Vec<[String; 5]> = vec![[
        "CLUSTER".to_owned(),
        "SERVER".to_owned(),
        "VIA".to_owned(),
        "ROLES (MAX TTL)".to_owned(),
        "SESSION".to_owned(),
    ]];
    for e in entries {
        let cluster = e
            .cluster
            .as_ref()
            .map_or_else(|| "-".to_owned(), ToString::to_string);
        let roles = match e.state {
            "offline" => "offline: not asked".to_owned(),
            "unreachable" | "error" => e
                .error
                .as_deref()
                .map(|error| Untrusted(error).to_string())
                .unwrap_or_default(),
            _ if e.roles.is_empty() => "none".to_owned(),
            _ => e
                .roles
                .iter()
                .map(|r| {
                    format!(
                        "{}{} ({})",
                        r.role,
                        if r.default { "*" } else { "" },
                        r.max_ttl
                    )
                })
                .collect::<Vec<_>>()
                .join(", "),
        };
        let session = match (&e.conflict, &e.session) {
            (Some(conflict), _) => format!("CONFLICT: {}; not trusted", Untrusted(conflict)),
            (None, Some(s)) => format!("{} until {}", s.role, output::local_time(s.expires_at)),
            (None, None) => "-".to_owned(),
        };
        let via = match (e.via, e.direct_tokens) {
            (Some(Via::Proxy), Some(false)) => "proxy only".to_owned(),
            (Some(via), _) => via.to_string(),
            (None, _) => "-".to_owned(),
        };
        rows.push([cluster, Untrusted(&e.node).to_string(), via, roles, session]);
    }
    let widths: Vec<usize> = (0..4)
        .map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in &rows {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            match widths.get(i) {
                Some(w) => line += &format!("{cell:<w$}   "),
                None => line += cell,
            }
        }
        out += line.trim_end();
        out.push('\n');
    }
    if entries.iter().any(|e| e.roles.iter().any(|r| r.default)) {
        out += "* the role a login without --role gets\n";
    }
    out
}
