//! `tka status`: who this device is on the tailnet (from the local tailscaled) and its tka
//! sessions (the kubeconfig's tka contexts and the token cache). No server is asked unless
//! `--refresh` is given, and then only `GET /api/v1/session`. Changes nothing.

use jiff::Timestamp;
use serde::Serialize;
use tka_core::api::Via;
use tka_core::endpoint::ServerUrl;
use tka_core::token_cache::CacheKey;
use tka_core::{Clock, ClusterName};

use crate::cache::TokenCache;
use crate::client::ApiClient;
use crate::discovery;
use crate::error::CliError;
use crate::kubeconfig_file::KubeconfigFile;
use crate::output::{self, Untrusted};
use crate::settings::Settings;

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct StatusReport {
    #[serde(skip_serializing_if = "Option::is_none")]
    tailnet: Option<TailnetSelf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tailnet_error: Option<String>,
    kubeconfig: String,
    sessions: Vec<SessionLine>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct TailnetSelf {
    /// The login name, or the tags of a tagged device.
    user: String,
    device: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    tailnet: Option<String>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct SessionLine {
    cluster: ClusterName,
    context: String,
    server: ServerUrl,
    /// How kubectl reaches the cluster: `proxy` (no credential in the kubeconfig) or `direct`.
    via: Via,
    current: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    role: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    expires_at: Option<Timestamp>,
    #[serde(skip_serializing_if = "Option::is_none")]
    remaining: Option<String>,
    /// `active`, `ended` (expired, or the server says it is gone: log in again), `unknown` (no
    /// cached end and the server not asked) or `error` (asking the server failed).
    state: &'static str,
    /// With `--refresh`: what asking the server failed with.
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

pub(crate) fn run(settings: &Settings, refresh: bool, clock: &dyn Clock) -> Result<(), CliError> {
    let (tailnet, tailnet_error) =
        match discovery::tailnet_status(&settings.discovery, settings.network.timeout) {
            Ok(status) => (
                status.self_node.as_ref().map(|node| TailnetSelf {
                    user: node
                        .acting_as()
                        .unwrap_or_else(|| "unknown user".to_owned()),
                    device: if node.dns_name.is_empty() {
                        node.host_name.clone()
                    } else {
                        node.dns_name.clone()
                    },
                    tailnet: status.tailnet.clone(),
                }),
                None,
            ),
            Err(e) => {
                output::warn(&format!("{e}; {}", e.hint()), false);
                (None, Some(e.to_string()))
            }
        };

    let file = KubeconfigFile::locate(&settings.env)?;
    let config = file.read()?;
    let cache = TokenCache::locate(&settings.env).ok();
    let now = clock.now();
    let sessions = config
        .tka_contexts()
        .into_iter()
        .map(|context| {
            let key = CacheKey {
                server: context.marker.server.clone(),
                cluster: context.marker.cluster.clone(),
                identity: context.marker.identity.clone(),
            };
            let mut line = SessionLine {
                cluster: context.marker.cluster.clone(),
                context: context.name,
                server: context.marker.server.clone(),
                via: context.marker.via,
                current: context.current,
                role: None,
                expires_at: cache
                    .as_ref()
                    .and_then(|c| c.lookup(&key))
                    .and_then(|hit| hit.entry.session_expires_at),
                remaining: None,
                state: "unknown",
                error: None,
            };
            if refresh {
                let asked = ApiClient::new(context.marker.server, &settings.network)
                    .and_then(|client| client.session());
                match asked {
                    Ok(session) => {
                        line.role = Some(session.role.to_string());
                        line.expires_at = Some(session.expires_at);
                    }
                    Err(e) => match CliError::from_session_call(&context.marker.cluster, e) {
                        CliError::SessionEnded { .. } => {
                            // Whatever the cache says, the session is gone.
                            line.expires_at = None;
                            line.state = "ended";
                        }
                        other => {
                            line.error = Some(other.to_string());
                            line.state = "error";
                        }
                    },
                }
            }
            line.remaining = line
                .expires_at
                .map(|t| output::remaining(t.duration_since(now)));
            if let Some(t) = line.expires_at {
                line.state = if t > now { "active" } else { "ended" };
            }
            line
        })
        .collect();
    let report = StatusReport {
        tailnet,
        tailnet_error,
        kubeconfig: file.path().display().to_string(),
        sessions,
    };
    output::result(settings.output, &report, || human(&report))
}

fn human(report: &StatusReport) -> String {
    let mut out = match &report.tailnet {
        Some(me) => format!(
            "Tailnet: {} on {}{}\n",
            Untrusted(&me.user),
            Untrusted(&me.device),
            me.tailnet
                .as_ref()
                .map_or_else(String::new, |t| format!(" (tailnet {})", Untrusted(t)))
        ),
        None => "Tailnet: unknown (tailscaled could not be asked)\n".to_owned(),
    };
    if report.sessions.is_empty() {
        out += &format!("No tka sessions in {}.\n", report.kubeconfig);
        return out;
    }
    out += &format!("Sessions in {}:\n", report.kubeconfig);
    for s in &report.sessions {
        out += &format!(
            "  {}{} (context {}, {}, {})",
            if s.current { "* " } else { "" },
            s.cluster,
            Untrusted(&s.context),
            s.server,
            match s.via {
                Via::Proxy => "via proxy",
                Via::Direct => "direct",
            }
        );
        if let Some(role) = &s.role {
            out += &format!(" role {}", Untrusted(role));
        }
        let login_again = format!("log in again with `tka login {}`", s.cluster);
        match (&s.error, s.state, s.expires_at, &s.remaining) {
            (Some(e), _, _, _) => out += &format!(": {}", Untrusted(e)),
            (None, "ended", Some(t), _) => {
                out += &format!(": ended at {}; {login_again}", output::local_time(t));
            }
            (None, "ended", None, _) => {
                out += &format!(": the session has ended on the server; {login_again}");
            }
            (None, _, Some(t), Some(r)) => {
                out += &format!(": until {} ({r})", output::local_time(t));
            }
            _ if s.via == Via::Proxy => {
                out += ": expiry not known here; `tka status --refresh` asks the server";
            }
            _ => {
                out += ": expiry unknown (no cached token); `tka status --refresh` asks the server";
            }
        }
        out.push('\n');
    }
    out
}
