//! The command line as plain data (clap's derive structs). Nothing here decides anything:
//! [`crate::settings`] validates it once into the settings the commands run with.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use clap_complete::Shell;
use tka_core::domain::is_dns1123_label;
use tka_core::endpoint::{ServerUrl, Socks5Addr};
use tka_core::kubeconfig::ContextTemplate;
use tka_core::{ClusterName, RoleName, Tag, Ttl};

/// Log in to Kubernetes clusters with your Tailscale identity.
///
/// tka asks a cluster's tka server (reached over the tailnet) for short-lived credentials and
/// writes them into your kubeconfig. Which roles you get is decided by the grants in your
/// tailnet policy file.
#[derive(Debug, Parser)]
#[command(
    name = "tka",
    version,
    about,
    long_about,
    after_help = "Exit codes: 0 ok, 1 failure, 2 usage, 3 not authorized, 4 session ended, \
                  5 server unreachable, 6 kubeconfig problem. See docs/cli.md."
)]
pub(crate) struct Cli {
    /// Output format for results (messages and errors always go to stderr).
    #[arg(short, long, global = true, value_enum, default_value_t = OutputFormat::Human)]
    pub(crate) output: OutputFormat,

    /// Reach tka servers through this SOCKS5 proxy (HOST:PORT), e.g. the one a
    /// userspace-networking tailscaled offers; the kubeconfig gets the same proxy-url.
    /// Ambient HTTP_PROXY/HTTPS_PROXY/ALL_PROXY are never used.
    #[arg(
        long,
        global = true,
        env = "TKA_SOCKS5",
        hide_env_values = true,
        value_name = "HOST:PORT"
    )]
    pub(crate) socks5: Option<Socks5Addr>,

    /// How long to wait for a tka server before giving up (e.g. 10s, 1m).
    #[arg(
        long,
        global = true,
        env = "TKA_TIMEOUT",
        hide_env_values = true,
        value_name = "DURATION",
        default_value = "10s",
        value_parser = parse_timeout
    )]
    pub(crate) timeout: Duration,

    /// The tailscaled LocalAPI socket, for finding tka servers on the tailnet (where it cannot
    /// be reached, `tailscale status --json` is asked instead).
    #[arg(
        long,
        global = true,
        env = "TKA_TAILSCALE_SOCKET",
        hide_env_values = true,
        value_name = "PATH",
        default_value = tka_core::identity::DEFAULT_SOCKET
    )]
    pub(crate) tailscale_socket: PathBuf,

    /// The tag that marks tka servers on the tailnet [default: tag:tka, or server_tag in the
    /// config file].
    #[arg(
        long,
        global = true,
        env = "TKA_SERVER_TAG",
        hide_env_values = true,
        value_name = "TAG"
    )]
    pub(crate) server_tag: Option<Tag>,

    /// The port discovered servers are asked on (80: plain HTTP on the tailnet address).
    #[arg(
        long,
        global = true,
        env = "TKA_SERVER_PORT",
        hide = true,
        default_value_t = 80
    )]
    pub(crate) server_port: u16,

    /// The `tailscale` CLI asked when the LocalAPI socket cannot be reached.
    #[arg(
        long,
        global = true,
        env = "TKA_TAILSCALE_CLI",
        hide = true,
        default_value = tka_core::identity::DEFAULT_CLI_BINARY
    )]
    pub(crate) tailscale_cli: std::ffi::OsString,

    #[command(subcommand)]
    pub(crate) command: Command,
}

/// How results are printed on stdout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum OutputFormat {
    /// Short sentences for people.
    Human,
    /// JSON, for scripts.
    Json,
    /// YAML, for scripts.
    Yaml,
}

/// How kubectl reaches a cluster (`--via`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum ViaArg {
    /// Through the tka proxy on the tailnet: the kubeconfig holds no credential at all.
    Proxy,
    /// Straight to the cluster's API server, with a token from the exec plugin (or --static).
    Direct,
}

impl From<ViaArg> for tka_core::api::Via {
    fn from(via: ViaArg) -> Self {
        match via {
            ViaArg::Proxy => Self::Proxy,
            ViaArg::Direct => Self::Direct,
        }
    }
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// List the clusters whose tka servers this device finds on the tailnet, the roles you may
    /// get there and this device's sessions.
    List,
    /// Show who this device is on the tailnet and its tka sessions.
    Status(StatusArgs),
    /// Log in to a cluster: get a session and write a kubeconfig context for it.
    Login(LoginArgs),
    /// End sessions and remove their kubeconfig entries.
    Logout(LogoutArgs),
    /// Print a token for kubectl (the exec credential plugin the kubeconfig runs).
    Credential(CredentialArgs),
    /// Print "cluster (time left)" when the current context is tka's, for shell prompts.
    Prompt,
    /// Start a shell whose KUBECONFIG holds only a fresh login to CLUSTER; log out when it exits.
    Shell(ShellArgs),
    /// Print a shell completion script.
    Completion(CompletionArgs),
    /// Work with the policy offline: who gets which role on which cluster, and why.
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// Print the version of tka.
    Version,
}

/// `tka policy ...`.
#[derive(Debug, Subcommand)]
pub(crate) enum PolicyCommand {
    /// Explain who gets which role on which cluster, with what TTLs and bindings, and why, from
    /// a tailnet policy file and GrantMappings (files, or the cluster of the current kubeconfig
    /// context). Uses the server's own resolution; nothing is written anywhere.
    Explain(ExplainArgs),
}

/// `tka policy explain`.
#[derive(Debug, Args)]
pub(crate) struct ExplainArgs {
    /// The tailnet policy file (HuJSON, as Tailscale stores it: comments and trailing commas).
    #[arg(long, value_name = "FILE")]
    pub(crate) policy: PathBuf,

    /// A YAML file of GrantMappings (several documents allowed; ClusterRoles in it are used to
    /// judge the mappings too). Repeat for several files.
    #[arg(
        short = 'f',
        long = "filename",
        value_name = "FILE",
        required_unless_present = "live",
        conflicts_with = "live"
    )]
    pub(crate) files: Vec<PathBuf>,

    /// Read the GrantMappings (with their Ready conditions) and ClusterRoles of the cluster of
    /// the current kubeconfig context instead of files.
    #[arg(long)]
    pub(crate) live: bool,

    /// The cluster name(s) to answer for, as the tka server knows them (comma-separated or
    /// repeated): grants' `clusters` globs are matched against it.
    #[arg(long, required = true, value_delimiter = ',', value_name = "CLUSTER")]
    pub(crate) cluster: Vec<ClusterName>,

    /// Answer only for this person (alice@example.com) or tagged device (tag:ci, or
    /// tag:ci,tag:prod for a device with both tags). Default: everyone the policy file names.
    #[arg(long, value_name = "WHO")]
    pub(crate) who: Option<String>,

    /// Answer for a login that asks for this role (as `tka login --role`).
    #[arg(long, value_name = "ROLE")]
    pub(crate) role: Option<RoleName>,

    /// The tka server's namespace (never bindable), as its --namespace.
    #[arg(long, value_name = "NAMESPACE", default_value = "tka-system")]
    pub(crate) server_namespace: String,

    /// The server's --default-ttl.
    #[arg(long, value_name = "DURATION", default_value = "1h", value_parser = Ttl::parse)]
    pub(crate) default_ttl: Ttl,

    /// The server's --max-ttl.
    #[arg(long, value_name = "DURATION", default_value = "8h", value_parser = Ttl::parse)]
    pub(crate) max_ttl: Ttl,

    /// The server's --capability.
    #[arg(long, value_name = "NAME", default_value = tka_core::identity::DEFAULT_CAPABILITY)]
    pub(crate) capability: String,

    /// The server's --compat-capability.
    #[arg(long, value_name = "NAME")]
    pub(crate) compat_capability: Option<String>,

    /// The server's --forbidden-namespace list (its own namespace is always forbidden).
    #[arg(
        long = "forbidden-namespace",
        value_name = "NAMESPACE",
        value_delimiter = ',',
        default_value = "kube-system,kube-public,kube-node-lease"
    )]
    pub(crate) forbidden_namespaces: Vec<String>,

    /// The server's --allow-cluster-wide-write.
    #[arg(long)]
    pub(crate) allow_cluster_wide_write: bool,
}

/// Where and how to log in; shared by `login` and `shell`.
#[derive(Debug, Args)]
pub(crate) struct SessionArgs {
    /// The cluster's tka server (e.g. http://tka-prod). Defaults to the server that discovery
    /// on the tailnet finds for CLUSTER (see `tka list`), else the server of an earlier login
    /// to CLUSTER found in the kubeconfig.
    #[arg(long, value_name = "URL")]
    pub(crate) server: Option<ServerUrl>,

    /// The role to log in with; the best role your grants allow when absent.
    #[arg(long, value_name = "ROLE")]
    pub(crate) role: Option<RoleName>,

    /// The session lifetime wanted (e.g. 90m, 8h); the role's default when absent. Longer
    /// requests are shortened to what your grants allow, and tka says so.
    #[arg(long, value_name = "DURATION", value_parser = Ttl::parse)]
    pub(crate) ttl: Option<Ttl>,

    /// Embed the token in the kubeconfig instead of using the exec plugin (no silent refresh:
    /// log in again when it expires). Direct only: through the proxy there is no token.
    #[arg(long = "static")]
    pub(crate) static_token: bool,

    /// How kubectl reaches the cluster: through the tka proxy on the tailnet (the kubeconfig
    /// then holds no credential) or directly to its API server. Default: the proxy when the
    /// cluster's server offers one (direct with --static).
    #[arg(long, value_name = "WAY", value_enum)]
    pub(crate) via: Option<ViaArg>,

    /// The context's default namespace.
    #[arg(short, long, value_name = "NAMESPACE", value_parser = parse_namespace)]
    pub(crate) namespace: Option<String>,
}

#[derive(Debug, Args)]
pub(crate) struct LoginArgs {
    /// The cluster to log in to.
    #[arg(required_unless_present = "all", conflicts_with = "all")]
    pub(crate) cluster: Option<ClusterName>,

    /// Log in to every cluster `tka list` shows (except name conflicts); keeps the current
    /// context.
    #[arg(long, conflicts_with = "server")]
    pub(crate) all: bool,

    #[command(flatten)]
    pub(crate) session: SessionArgs,

    /// Name of the kubeconfig context (and its cluster and user entries); {cluster} stands for
    /// the cluster's name.
    #[arg(
        long,
        env = "TKA_CONTEXT_NAME",
        hide_env_values = true,
        value_name = "TEMPLATE",
        default_value = tka_core::kubeconfig::DEFAULT_CONTEXT_TEMPLATE,
        value_parser = ContextTemplate::parse
    )]
    pub(crate) context_name: ContextTemplate,

    /// Keep the current context instead of switching to the new one.
    #[arg(long)]
    pub(crate) no_switch: bool,
}

#[derive(Debug, Args)]
pub(crate) struct LogoutArgs {
    /// The cluster to log out of.
    #[arg(required_unless_present = "all", conflicts_with = "all")]
    pub(crate) cluster: Option<ClusterName>,

    /// The cluster's tka server. Defaults to the server(s) of the cluster's tka contexts in the
    /// kubeconfig, else the server discovery on the tailnet finds.
    #[arg(long, value_name = "URL", conflicts_with = "all")]
    pub(crate) server: Option<ServerUrl>,

    /// Log out of every tka context in the kubeconfig.
    #[arg(long)]
    pub(crate) all: bool,
}

#[derive(Debug, Args)]
pub(crate) struct CredentialArgs {
    /// The cluster.
    pub(crate) cluster: ClusterName,

    /// The cluster's tka server.
    #[arg(long, value_name = "URL")]
    pub(crate) server: ServerUrl,

    /// The local identity the login was made as (part of the token cache key).
    #[arg(long, value_name = "ID")]
    pub(crate) identity: Option<String>,
}

#[derive(Debug, Args)]
pub(crate) struct ShellArgs {
    /// The cluster to log in to.
    pub(crate) cluster: ClusterName,

    #[command(flatten)]
    pub(crate) session: SessionArgs,

    /// Keep the session when the shell exits (the private kubeconfig is removed either way).
    #[arg(long)]
    pub(crate) keep: bool,
}

#[derive(Debug, Args)]
pub(crate) struct StatusArgs {
    /// Ask each session's server for it (`GET /api/v1/session`) instead of reading only the
    /// kubeconfig and the token cache.
    #[arg(long)]
    pub(crate) refresh: bool,
}

#[derive(Debug, Args)]
pub(crate) struct CompletionArgs {
    /// The shell to complete for.
    #[arg(value_enum)]
    pub(crate) shell: Shell,
}

/// Where files live, from the environment; read once by [`crate::settings`].
#[derive(Debug, Clone, Default)]
pub(crate) struct Environment {
    pub(crate) kubeconfig: Option<std::ffi::OsString>,
    pub(crate) home: Option<PathBuf>,
    pub(crate) xdg_cache_home: Option<PathBuf>,
    pub(crate) xdg_config_home: Option<PathBuf>,
    pub(crate) xdg_state_home: Option<PathBuf>,
    pub(crate) shell: Option<PathBuf>,
}

impl Environment {
    pub(crate) fn from_process() -> Self {
        Self {
            kubeconfig: std::env::var_os("KUBECONFIG"),
            home: std::env::home_dir(),
            xdg_cache_home: std::env::var_os("XDG_CACHE_HOME").map(PathBuf::from),
            xdg_config_home: std::env::var_os("XDG_CONFIG_HOME").map(PathBuf::from),
            xdg_state_home: std::env::var_os("XDG_STATE_HOME").map(PathBuf::from),
            shell: std::env::var_os("SHELL").map(PathBuf::from),
        }
    }
}

/// A network timeout: a positive duration of at most ten minutes.
fn parse_timeout(input: &str) -> Result<Duration, String> {
    let d = tka_core::duration::parse(input).map_err(|e| e.to_string())?;
    if d.as_millis() < 1 || d.as_secs() > 600 {
        return Err(format!(
            "invalid timeout {input:?}; it must be more than 0s and at most 10m"
        ));
    }
    d.try_into()
        .map_err(|_| format!("invalid timeout {input:?}"))
}

fn parse_namespace(input: &str) -> Result<String, String> {
    if is_dns1123_label(input) {
        Ok(input.to_owned())
    } else {
        Err(format!(
            "invalid namespace {input:?}; namespaces are lowercase letters, digits and '-', at most 63 characters"
        ))
    }
}
