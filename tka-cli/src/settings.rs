//! The command line and environment, validated once into what the commands run with. clap has
//! already checked every value's syntax; this adds what needs the environment (where files live,
//! the path of the running binary) and turns flags into requests.
//!
//! It owns the precedence of flag, environment and config file. It must not do I/O beyond
//! reading the config file (through [`crate::config`]), and must not know how commands fail.

use std::path::PathBuf;
use std::time::Duration;

use clap_complete::Shell;
use tka_core::ClusterName;
use tka_core::api::{LoginRequest, Via};
use tka_core::endpoint::ServerUrl;
use tka_core::kubeconfig::ContextTemplate;
use tka_core::token_cache::CacheKey;

use crate::cli::{
    Cli, Command, Environment, ExplainArgs, OutputFormat, PolicyCommand, SessionArgs,
};
use crate::client::Network;
use crate::config::{ConfigError, ConfigFile, DEFAULT_SERVER_TAG};
use crate::discovery::DiscoverySettings;

/// Extra time, beyond one server call's timeout, that a token refresh waits for another
/// process's refresh of the same entry.
const LOCK_SLACK: Duration = Duration::from_secs(5);

/// Everything a command needs, validated.
#[derive(Debug)]
pub(crate) struct Settings {
    pub(crate) output: OutputFormat,
    pub(crate) network: Network,
    pub(crate) env: Environment,
    pub(crate) discovery: DiscoverySettings,
    pub(crate) action: Action,
}

/// What to do.
#[derive(Debug)]
pub(crate) enum Action {
    List,
    Status { refresh: bool },
    Login(LoginSettings),
    Logout(LogoutSettings),
    Credential(CredentialSettings),
    Prompt,
    Shell(ShellSettings),
    Completion(Shell),
    Version,
    Explain(Box<ExplainSettings>),
}

/// `tka policy explain`: the inputs to read and the server settings to judge them with.
#[derive(Debug)]
pub(crate) struct ExplainSettings {
    pub(crate) policy: PathBuf,
    /// Empty with `live`.
    pub(crate) files: Vec<PathBuf>,
    pub(crate) live: bool,
    pub(crate) clusters: Vec<tka_core::ClusterName>,
    pub(crate) who: Vec<tka_core::tailnet_policy::Principal>,
    pub(crate) role: Option<tka_core::RoleName>,
    pub(crate) server_tags: Vec<String>,
    pub(crate) settings: tka_core::PolicySettings,
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
#[derive(Debug, Clone)]
pub(crate) struct SessionSettings {
    pub(crate) cluster: ClusterName,
    pub(crate) server: Option<ServerUrl>,
    /// `--via`; `None`: the proxy when the cluster offers one (direct with `--static`).
    pub(crate) via: Option<Via>,
    pub(crate) request: LoginRequest,
    pub(crate) credential: CredentialMode,
    pub(crate) namespace: Option<String>,
}

/// A login request without its cluster.
#[derive(Debug, Clone)]
pub(crate) struct SessionOptions {
    pub(crate) server: Option<ServerUrl>,
    pub(crate) via: Option<Via>,
    pub(crate) request: LoginRequest,
    pub(crate) credential: CredentialMode,
    pub(crate) namespace: Option<String>,
}

impl SessionOptions {
    pub(crate) fn for_cluster(&self, cluster: ClusterName) -> SessionSettings {
        SessionSettings {
            cluster,
            server: self.server.clone(),
            via: self.via,
            request: self.request.clone(),
            credential: self.credential.clone(),
            namespace: self.namespace.clone(),
        }
    }
}

#[derive(Debug)]
pub(crate) struct LoginSettings {
    /// One cluster, or `None` for `--all`.
    pub(crate) cluster: Option<ClusterName>,
    /// The login wanted, for any cluster.
    pub(crate) options: SessionOptions,
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
    /// The config file cannot be used.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// `--static` embeds a token, and a login through the proxy has none.
    #[error(
        "--static and --via proxy do not go together: through the tka proxy the kubeconfig holds no token to embed"
    )]
    StaticThroughProxy,
    /// `--who` is neither a login name nor tags.
    #[error("--who: {0}")]
    Who(String),
}

impl SettingsError {
    pub(crate) fn hint(&self) -> Option<String> {
        match self {
            Self::CurrentExe(_) | Self::Who(_) => None,
            Self::Config(e) => Some(e.hint()),
            Self::StaticThroughProxy => Some(
                "drop --static (the proxy needs no token), or use --via direct for a token"
                    .to_owned(),
            ),
        }
    }
}

impl TryFrom<(Cli, Environment)> for Settings {
    type Error = SettingsError;

    fn try_from((cli, env): (Cli, Environment)) -> Result<Self, Self::Error> {
        // The config file matters only to commands that find or reach servers by name; the
        // exec plugin and the prompt never fail because of it.
        let config = match cli.command {
            Command::List
            | Command::Status(_)
            | Command::Login(_)
            | Command::Logout(_)
            | Command::Shell(_) => ConfigFile::load(&env)?,
            _ => ConfigFile::default(),
        };
        let network = Network {
            socks5: cli.socks5.or(config.socks5),
            timeout: cli.timeout,
        };
        let discovery = DiscoverySettings {
            socket: cli.tailscale_socket,
            tailscale_cli: cli.tailscale_cli,
            tag: match cli.server_tag.or(config.server_tag) {
                Some(tag) => tag,
                None => {
                    tka_core::Tag::new(DEFAULT_SERVER_TAG).map_err(|e| ConfigError::Invalid {
                        path: "(built-in default)".into(),
                        reason: e.to_string(),
                    })?
                }
            },
            port: cli.server_port,
            configured: config.servers.into_iter().map(|s| s.url).collect(),
        };
        let action = match cli.command {
            Command::List => Action::List,
            Command::Status(args) => Action::Status {
                refresh: args.refresh,
            },
            Command::Login(args) => {
                let all = args.cluster.is_none();
                Action::Login(LoginSettings {
                    options: session(args.session)?,
                    cluster: args.cluster,
                    template: args.context_name,
                    // --all keeps the current context: which of many should win is not obvious.
                    switch: !args.no_switch && !all,
                })
            }
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
                session: session(args.session)?.for_cluster(args.cluster),
                keep: args.keep,
                shell: env
                    .shell
                    .clone()
                    .filter(|s| !s.as_os_str().is_empty())
                    .unwrap_or_else(|| PathBuf::from("/bin/sh")),
            }),
            Command::Completion(args) => Action::Completion(args.shell),
            Command::Version => Action::Version,
            Command::Policy(PolicyCommand::Explain(args)) => {
                Action::Explain(Box::new(explain(args, &discovery.tag)?))
            }
        };
        Ok(Self {
            output: cli.output,
            network,
            env,
            discovery,
            action,
        })
    }
}

fn explain(
    args: ExplainArgs,
    server_tag: &tka_core::Tag,
) -> Result<ExplainSettings, SettingsError> {
    let who = match args.who.as_deref() {
        None => Vec::new(),
        Some(text) => {
            vec![tka_core::tailnet_policy::Principal::parse(text).map_err(SettingsError::Who)?]
        }
    };
    let settings =
        tka_core::PolicySettings::new(args.server_namespace, args.default_ttl, args.max_ttl)
            .with_capability_names(args.capability, args.compat_capability)
            .deny_namespaces(args.forbidden_namespaces)
            .allowing_cluster_wide_write(args.allow_cluster_wide_write);
    Ok(ExplainSettings {
        policy: args.policy,
        files: args.files,
        live: args.live,
        clusters: args.cluster,
        who,
        role: args.role,
        server_tags: vec![server_tag.to_string()],
        settings,
    })
}

fn session(args: SessionArgs) -> Result<SessionOptions, SettingsError> {
    let via = args.via.map(Via::from);
    if args.static_token && via == Some(Via::Proxy) {
        return Err(SettingsError::StaticThroughProxy);
    }
    let credential = if args.static_token {
        CredentialMode::Static
    } else {
        let exe = std::env::current_exe().map_err(SettingsError::CurrentExe)?;
        CredentialMode::Exec {
            command: exe.to_string_lossy().into_owned(),
        }
    };
    Ok(SessionOptions {
        server: args.server,
        via,
        // `via` is decided per server at login (see `commands::login::request`).
        request: LoginRequest {
            role: args.role.map(String::from),
            ttl: args.ttl.map(|t| t.to_string()),
            via: None,
        },
        credential,
        namespace: args.namespace,
    })
}
