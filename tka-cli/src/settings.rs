//! The command line and environment, validated once into what the commands run with. clap has
//! already checked every value's syntax; this adds what needs the environment (where files live,
//! the path of the running binary) and turns flags into requests.

use std::path::PathBuf;
use std::time::Duration;

use clap_complete::Shell;
use tka_core::ClusterName;
use tka_core::api::LoginRequest;
use tka_core::endpoint::ServerUrl;
use tka_core::kubeconfig::ContextTemplate;
use tka_core::token_cache::CacheKey;

use crate::cli::{Cli, Command, Environment, OutputFormat, SessionArgs};
use crate::client::Network;

/// Extra time, beyond one server call's timeout, that a token refresh waits for another
/// process's refresh of the same entry.
const LOCK_SLACK: Duration = Duration::from_secs(5);

/// Everything a command needs, validated.
#[derive(Debug)]
pub(crate) struct Settings {
    pub(crate) output: OutputFormat,
    pub(crate) network: Network,
    pub(crate) env: Environment,
    pub(crate) action: Action,
}

/// What to do.
#[derive(Debug)]
pub(crate) enum Action {
    Login(LoginSettings),
    Logout(LogoutSettings),
    Credential(CredentialSettings),
    Prompt,
    Shell(ShellSettings),
    Completion(Shell),
    Version,
}

/// How the kubeconfig's user entry gets its token.
#[derive(Debug, Clone)]
pub(crate) enum CredentialMode {
    /// The exec plugin, running this binary.
    Exec { command: String },
    /// The token embedded.
    Static,
}

/// A login request, shared by `login` and `shell`.
#[derive(Debug)]
pub(crate) struct SessionSettings {
    pub(crate) cluster: ClusterName,
    pub(crate) server: Option<ServerUrl>,
    pub(crate) request: LoginRequest,
    pub(crate) credential: CredentialMode,
    pub(crate) namespace: Option<String>,
}

#[derive(Debug)]
pub(crate) struct LoginSettings {
    pub(crate) session: SessionSettings,
    pub(crate) template: ContextTemplate,
    pub(crate) switch: bool,
}

#[derive(Debug)]
pub(crate) struct LogoutSettings {
    /// `None` with `--all`.
    pub(crate) cluster: Option<ClusterName>,
    pub(crate) server: Option<ServerUrl>,
}

#[derive(Debug)]
pub(crate) struct CredentialSettings {
    pub(crate) key: CacheKey,
    /// How long to wait for another process refreshing the same entry.
    pub(crate) lock_wait: Duration,
}

#[derive(Debug)]
pub(crate) struct ShellSettings {
    pub(crate) session: SessionSettings,
    pub(crate) keep: bool,
    pub(crate) shell: PathBuf,
}

/// Why the settings cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub(crate) enum SettingsError {
    /// The exec plugin needs the absolute path of this binary.
    #[error("cannot find the path of the running tka for the kubeconfig's exec entry: {0}")]
    CurrentExe(std::io::Error),
}

impl TryFrom<(Cli, Environment)> for Settings {
    type Error = SettingsError;

    fn try_from((cli, env): (Cli, Environment)) -> Result<Self, Self::Error> {
        let network = Network {
            socks5: cli.socks5,
            timeout: cli.timeout,
        };
        let action = match cli.command {
            Command::Login(args) => Action::Login(LoginSettings {
                session: session(args.session)?,
                template: args.context_name,
                switch: !args.no_switch,
            }),
            Command::Logout(args) => Action::Logout(LogoutSettings {
                cluster: args.cluster,
                server: args.server,
            }),
            Command::Credential(args) => Action::Credential(CredentialSettings {
                key: CacheKey {
                    server: args.server,
                    cluster: args.cluster,
                    identity: args.identity.filter(|i| !i.is_empty()),
                },
                lock_wait: network.timeout + LOCK_SLACK,
            }),
            Command::Prompt => Action::Prompt,
            Command::Shell(args) => Action::Shell(ShellSettings {
                session: session(args.session)?,
                keep: args.keep,
                shell: env
                    .shell
                    .clone()
                    .filter(|s| !s.as_os_str().is_empty())
                    .unwrap_or_else(|| PathBuf::from("/bin/sh")),
            }),
            Command::Completion(args) => Action::Completion(args.shell),
            Command::Version => Action::Version,
        };
        Ok(Self {
            output: cli.output,
            network,
            env,
            action,
        })
    }
}

fn session(args: SessionArgs) -> Result<SessionSettings, SettingsError> {
    let credential = if args.static_token {
        CredentialMode::Static
    } else {
        let exe = std::env::current_exe().map_err(SettingsError::CurrentExe)?;
        CredentialMode::Exec {
            command: exe.to_string_lossy().into_owned(),
        }
    };
    Ok(SessionSettings {
        cluster: args.cluster,
        server: args.server,
        request: LoginRequest {
            role: args.role.map(String::from),
            ttl: args.ttl.map(|t| t.to_string()),
        },
        credential,
        namespace: args.namespace,
    })
}
