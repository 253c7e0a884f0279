//! Every way a command can fail, as one enum whose variants know their exit code, their one-line
//! "what happened" and their hint of what to do. Printing happens once, in `main`.
//!
//! It owns the mapping from failures to [`Exit`] codes and hints. It must not print, and the
//! modules whose errors it wraps must not import it back (they use [`crate::exit`] for codes).

use std::path::PathBuf;

use tka_core::ClusterName;
use tka_core::api::{Problem, ProblemCode};
use tka_core::endpoint::ServerUrl;

use crate::cache::CacheError;
use crate::client::ApiError;
use crate::exit::Exit;
use crate::kubeconfig_file::KubeconfigFileError;

/// A command's failure.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub(crate) enum CliError {
    /// The server refused (403) with a problem document.
    #[error("{}", .problem.detail)]
    NotAuthorized {
        /// The cluster asked for.
        cluster: ClusterName,
        /// What the server said.
        problem: Box<Problem>,
    },
    /// The cluster is reached through the tka proxy only: its server hands no token to a laptop.
    #[error("{}", .problem.detail)]
    ProxyOnly {
        /// The cluster asked for.
        cluster: ClusterName,
        /// What the server said.
        problem: Box<Problem>,
        /// Whether a kubeconfig context asked (the exec plugin), rather than `tka login`.
        from_context: bool,
    },
    /// A login through the proxy, and the cluster's server runs none.
    #[error("{}", .problem.detail)]
    NoProxy {
        /// The cluster asked for.
        cluster: ClusterName,
        /// What the server said.
        problem: Box<Problem>,
    },
    /// The device's session is gone.
    #[error("session ended, run `tka login {cluster}`")]
    SessionEnded {
        /// The cluster.
        cluster: ClusterName,
    },
    /// Any other error from talking to a server.
    #[error(transparent)]
    Api(#[from] ApiError),
    /// The kubeconfig could not be used.
    #[error(transparent)]
    Kubeconfig(#[from] KubeconfigFileError),
    /// The token cache could not be used.
    #[error(transparent)]
    Cache(#[from] CacheError),
    /// No server URL for the cluster.
    #[error("no tka server known for cluster '{cluster}'")]
    NoServer {
        /// The cluster.
        cluster: ClusterName,
        /// Why discovery found none.
        discovery: String,
    },
    /// Discovery found servers, but the cluster's (pinned, or maybe among them) did not answer.
    #[error(
        "{}",
        if *.pinned {
            format!("the tka server of cluster '{cluster}' was found on the tailnet but did not answer: {}", .servers.join(", "))
        } else {
            format!(
                "no tka server that answered serves cluster '{cluster}'; found on the tailnet but not answering: {}",
                .servers.join(", ")
            )
        }
    )]
    ServerSilent {
        /// The cluster.
        cluster: ClusterName,
        /// Whether `servers` is the one node the name is pinned to.
        pinned: bool,
        /// The servers that did not answer, each with why (`tka-prod (connection refused)`).
        servers: Vec<String>,
        /// The server tag.
        tag: tka_core::Tag,
        /// The port servers are asked on.
        port: u16,
    },
    /// Finding servers failed.
    #[error(transparent)]
    Discovery(#[from] crate::discovery::DiscoveryError),
    /// The pin file could not be used.
    #[error(transparent)]
    Pins(#[from] crate::pins::PinError),
    /// Another node claims a cluster name than the one it is pinned to (or several unpinned
    /// nodes claim it).
    #[error(
        "cluster name '{cluster}' is claimed by {second}, but {}",
        if *.pinned { format!("it belongs to {first} (pinned when {first} first claimed it)") }
        else { format!("{first} claims it too") }
    )]
    NameConflict {
        /// The name.
        cluster: ClusterName,
        /// Whether `first` is the pinned node.
        pinned: bool,
        /// The pinned node, or another claimant.
        first: String,
        /// The claimant not trusted.
        second: String,
    },
    /// The server belongs to another cluster.
    #[error("the tka server at {server} serves cluster '{actual}', not '{requested}'")]
    WrongCluster {
        /// The server asked.
        server: ServerUrl,
        /// What was asked for.
        requested: ClusterName,
        /// What the server says it serves.
        actual: ClusterName,
    },
    /// The server answered, but its cluster endpoint cannot go into a kubeconfig.
    #[error("{0}")]
    UnusableResponse(tka_core::kubeconfig::KubeconfigError),
    /// The server created a session but the kubeconfig was not written; the session was ended
    /// again, or `revoked` says why not.
    #[error("{cause}; the session the server had just created {revoked}")]
    NotWritten {
        /// Why the kubeconfig was not written.
        cause: Box<CliError>,
        /// What became of the session.
        revoked: String,
    },
    /// Nothing to log out of.
    #[error("no tka login for cluster '{cluster}' in {path}")]
    NotLoggedIn {
        /// The cluster.
        cluster: ClusterName,
        /// The kubeconfig searched.
        path: PathBuf,
    },
    /// `tka shell` could not start the shell.
    #[error("cannot start the shell {shell}: {source}")]
    Shell {
        /// The shell.
        shell: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The settings cannot be used.
    #[error(transparent)]
    Settings(#[from] crate::settings::SettingsError),
    /// The server now sees this machine as another device than the login was made as.
    #[error(
        "this machine is '{device}' on the tailnet now, but the login to '{cluster}' was made as '{login_identity}'"
    )]
    IdentityChanged {
        /// The cluster.
        cluster: ClusterName,
        /// The identity recorded at login.
        login_identity: String,
        /// What the server sees now.
        device: String,
    },
    /// Writing output failed.
    #[error("cannot write the output: {0}")]
    Output(String),
    /// `tka policy explain` could not read its inputs.
    #[error("{0}")]
    PolicyInput(String),
    /// Several failures (logout --all, login --all).
    #[error("{count} of them failed (see above)")]
    Several {
        /// How many failed.
        count: usize,
        /// The most severe exit code among them.
        exit: Exit,
    },
}

impl CliError {
    /// Interprets a server error on a request about the caller's session (token refresh,
    /// logout): 403 is "not authorized", 404/410 or a session-ended problem is "session ended".
    pub(crate) fn from_session_call(cluster: &ClusterName, error: ApiError) -> Self {
        match error {
            ApiError::Problem { problem, .. } if problem.code == ProblemCode::ProxyOnly => {
                Self::ProxyOnly {
                    cluster: cluster.clone(),
                    problem,
                    from_context: true,
                }
            }
            ApiError::Problem { problem, .. } if problem.status == 403 => Self::NotAuthorized {
                cluster: cluster.clone(),
                problem,
            },
            ApiError::Problem { ref problem, .. }
                if matches!(problem.status, 404 | 410) || problem.code.is_session_gone() =>
            {
                Self::SessionEnded {
                    cluster: cluster.clone(),
                }
            }
            ApiError::Status {
                status: 404 | 410, ..
            } => Self::SessionEnded {
                cluster: cluster.clone(),
            },
            other => Self::Api(other),
        }
    }

    /// Interprets a server error on a login: 403 is "not authorized".
    pub(crate) fn from_login_call(cluster: &ClusterName, error: ApiError) -> Self {
        match error {
            ApiError::Problem { problem, .. } if problem.code == ProblemCode::ProxyOnly => {
                Self::ProxyOnly {
                    cluster: cluster.clone(),
                    problem,
                    from_context: false,
                }
            }
            ApiError::Problem { problem, .. } if problem.code == ProblemCode::NoProxy => {
                Self::NoProxy {
                    cluster: cluster.clone(),
                    problem,
                }
            }
            ApiError::Problem { problem, .. } if problem.status == 403 => Self::NotAuthorized {
                cluster: cluster.clone(),
                problem,
            },
            other => Self::Api(other),
        }
    }

    /// The exit code.
    pub(crate) fn exit(&self) -> Exit {
        match self {
            Self::NotAuthorized { .. } | Self::ProxyOnly { .. } => Exit::NotAuthorized,
            Self::NoProxy { .. }
            | Self::Settings(
                crate::settings::SettingsError::StaticThroughProxy
                | crate::settings::SettingsError::Who(_),
            ) => Exit::Usage,
            Self::SessionEnded { .. } | Self::IdentityChanged { .. } => Exit::SessionEnded,
            Self::Api(e) => e.exit(),
            Self::Kubeconfig(_) => Exit::Kubeconfig,
            Self::NoServer { .. } => Exit::Usage,
            Self::ServerSilent { .. } => Exit::Unreachable,
            Self::Discovery(crate::discovery::DiscoveryError::Tailscaled { .. }) => {
                Exit::Unreachable
            }
            Self::Several { exit, .. } => *exit,
            Self::NotWritten { cause, .. } => cause.exit(),
            Self::Cache(_)
            | Self::Discovery(_)
            | Self::Pins(_)
            | Self::NameConflict { .. }
            | Self::WrongCluster { .. }
            | Self::UnusableResponse(_)
            | Self::Shell { .. }
            | Self::Settings(_)
            | Self::NotLoggedIn { .. }
            | Self::Output(_)
            | Self::PolicyInput(_) => Exit::Failure,
        }
    }

    /// What to do about it, when there is something to say.
    pub(crate) fn hint(&self) -> Option<String> {
        match self {
            Self::NotAuthorized { cluster, problem } => Some(not_authorized_hint(cluster, problem)),
            Self::ProxyOnly {
                cluster,
                from_context: true,
                ..
            } => Some(format!(
                "this kubeconfig context asks for tokens, which '{cluster}' no longer hands out; \
                 run `tka login {cluster}` to point it at the tka proxy"
            )),
            Self::ProxyOnly { cluster, .. } => Some(format!(
                "run `tka login {cluster}` without `--via direct` (and without --static): \
                 kubectl then goes through the tka proxy and needs no token"
            )),
            Self::NoProxy { cluster, .. } => Some(format!(
                "run `tka login {cluster}` without `--via proxy`, or ask the cluster's operator \
                 to turn the tka proxy on"
            )),
            Self::SessionEnded { .. } => None,
            Self::Api(e) => e.hint(),
            Self::Kubeconfig(e) => Some(e.hint()),
            Self::Cache(e) => Some(e.hint()),
            Self::NoServer { cluster, discovery } => Some(format!(
                "discovery found none ({discovery}); see `tka list`, or pass the server with \
                 `tka login {cluster} --server URL`"
            )),
            Self::ServerSilent {
                cluster, tag, port, ..
            } => Some(format!(
                "check that the server is up and that the tailnet policy lets this device reach \
                 {tag} on port {port} (`tka list` shows what answers), or pass \
                 `tka login {cluster} --server URL`"
            )),
            Self::Discovery(e) => Some(e.hint()),
            Self::Pins(e) => Some(e.hint()),
            Self::NameConflict { cluster, .. } => Some(format!(
                "a server claiming another's cluster name is not trusted; if the cluster really \
                 moved, remove '{cluster}' from the pin file (see docs/cli.md) or pass --server URL"
            )),
            Self::WrongCluster { actual, .. } => {
                Some(format!("check --server, or log in to '{actual}' instead"))
            }
            Self::UnusableResponse(_) => None,
            Self::NotWritten { cause, .. } => cause.hint(),
            Self::NotLoggedIn { cluster, .. } => Some(format!(
                "check that KUBECONFIG names the file you logged in with, or run \
                 `tka logout {cluster} --server URL` to end the session on the server anyway"
            )),
            Self::Shell { .. } => Some("set SHELL to a shell that exists".to_owned()),
            Self::IdentityChanged { cluster, .. } => Some(format!(
                "run `tka login {cluster}` to log in as this machine"
            )),
            Self::Settings(e) => e.hint(),
            Self::Output(_) | Self::PolicyInput(_) | Self::Several { .. } => None,
        }
    }
}

fn not_authorized_hint(cluster: &ClusterName, problem: &Problem) -> String {
    let usable: Vec<String> = problem
        .roles
        .as_ref()
        .map(|l| l.roles.iter().map(|r| r.role.to_string()).collect())
        .unwrap_or_default();
    match usable.first() {
        Some(first) => format!(
            "roles you can use on '{cluster}': {}; e.g. `tka login {cluster} --role {first}`",
            usable.join(", ")
        ),
        None => format!(
            "ask your tailnet admin for a tka grant (capability {}) that covers '{cluster}'",
            tka_core::identity::DEFAULT_CAPABILITY
        ),
    }
}

#[cfg(test)]
mod tests {
    use tka_core::api::ProblemCode;

    use super::*;

    fn problem(status: u16, code: ProblemCode) -> ApiError {
        ApiError::Problem {
            server: ServerUrl::parse("http://tka-prod").unwrap(),
            problem: Box::new(Problem::new(status, code, "t", "d")),
        }
    }

    #[test]
    fn only_typed_session_codes_mean_the_session_ended() {
        let prod = ClusterName::new("prod").unwrap();
        // A 409 is not "session ended" by its status; its code decides.
        let gone = CliError::from_session_call(&prod, problem(409, ProblemCode::SessionRevoked));
        assert!(matches!(gone, CliError::SessionEnded { .. }), "{gone:?}");
        let busy = CliError::from_session_call(&prod, problem(409, ProblemCode::Conflict));
        assert!(matches!(busy, CliError::Api(_)), "{busy:?}");
        // A code the server never sends (formerly matched by hand) reads as unknown.
        let unknown: Problem = serde_json::from_str(
            r#"{"type":"urn:tka:problem:sessionNotFound","title":"t","status":409,"detail":"d","code":"sessionNotFound"}"#,
        )
        .unwrap();
        assert_eq!(unknown.code, ProblemCode::Unknown);
        assert!(!unknown.code.is_session_gone());
    }
}
