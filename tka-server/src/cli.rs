//! The command line as plain data: what the user typed (or set in the environment), before any
//! validation. Every flag has an environment-variable twin (`TKA_…`). Turning this into something
//! the server can run is [`crate::settings::Settings`]'s job (`TryFrom<ServeArgs>`); this module
//! must not check values beyond their syntax, read files, or build objects.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// The tka login server: Tailscale identity in, short-lived Kubernetes credentials out.
#[derive(Debug, Parser)]
#[command(name = "tka-server", version, about, long_about = None)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the login API and the ops endpoints until SIGTERM.
    Serve(Box<ServeArgs>),
    /// Print the OpenAPI 3 document of the login API (JSON).
    Openapi,
    /// Print the CustomResourceDefinitions (YAML), generated from the Rust types, for
    /// `kubectl apply -f -`.
    Crds,
    /// Revoke every session and remove what tka created, so an uninstall never leaves Sessions
    /// or the CRDs stuck in Terminating. Run it before deleting the Deployment and the CRDs.
    Drain(DrainArgs),
}

/// `tka-server drain` flags.
#[derive(Debug, Clone, Args)]
pub struct DrainArgs {
    /// A kubeconfig file to reach the cluster with (default: in-cluster, then `KUBECONFIG`,
    /// then `~/.kube/config`).
    #[arg(long, env = "TKA_KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
    /// The namespace the server runs in (where session ServiceAccounts live).
    #[arg(long, env = "TKA_NAMESPACE", default_value = "tka-system")]
    pub namespace: String,
    /// How long to wait for everything to be gone before giving up (non-zero exit).
    #[arg(long, default_value = "60s")]
    pub timeout: String,
}

/// How tailnet traffic reaches the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum NetworkMode {
    /// Behind a userspace-networking tailscaled sidecar: it re-dials tailnet connections to
    /// 127.0.0.1, so the API listens on loopback and accepts only loopback peers.
    Userspace,
    /// tailscaled has a TUN device: the API listens on the node's tailnet address.
    Kernel,
}

/// The log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// One JSON object per line, for log collectors.
    Json,
    /// Human-readable lines, for a terminal.
    Pretty,
}

/// `tka-server serve` flags.
#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// This cluster's name, as capability `clusters` globs and `tka login CLUSTER` refer to it.
    #[arg(long, env = "TKA_CLUSTER_NAME")]
    pub cluster_name: String,

    /// The Kubernetes API server URL handed to clients (https://…).
    #[arg(long, env = "TKA_API_SERVER_URL")]
    pub api_server_url: String,

    /// A PEM file with the API server's CA bundle, handed to clients.
    #[arg(
        long,
        env = "TKA_API_SERVER_CA_FILE",
        conflicts_with = "api_server_ca_data"
    )]
    pub api_server_ca_file: Option<PathBuf>,

    /// The API server's CA bundle as base64-encoded PEM (as in a kubeconfig).
    #[arg(long, env = "TKA_API_SERVER_CA_DATA")]
    pub api_server_ca_data: Option<String>,

    /// A kubeconfig file to reach the cluster with (default: in-cluster, then `KUBECONFIG`,
    /// then `~/.kube/config`).
    #[arg(long, env = "TKA_KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
    /// The namespace the server runs in: its ServiceAccounts live here, and no GrantMapping may
    /// bind into it.
    #[arg(long, env = "TKA_NAMESPACE", default_value = "tka-system")]
    pub namespace: String,

    /// The capability name whose values are tka grants.
    #[arg(long, env = "TKA_CAPABILITY", default_value = tka_core::identity::DEFAULT_CAPABILITY)]
    pub capability: String,

    /// Also read grants of the SpechtLabs/tka schema under this capability name
    /// (e.g. specht-labs.de/cap/tka).
    #[arg(long, env = "TKA_COMPAT_CAPABILITY")]
    pub compat_capability: Option<String>,

    /// The session length when neither the request nor the GrantMapping names one.
    #[arg(
        long,
        env = "TKA_DEFAULT_TTL",
        allow_hyphen_values = true,
        default_value = "1h"
    )]
    pub default_ttl: String,

    /// No session is ever longer than this.
    #[arg(
        long,
        env = "TKA_MAX_TTL",
        allow_hyphen_values = true,
        default_value = "8h"
    )]
    pub max_ttl: String,

    /// The lifetime of each token (refreshed within the session); at least 10m, the API
    /// server's floor.
    #[arg(
        long,
        env = "TKA_TOKEN_LIFETIME",
        allow_hyphen_values = true,
        default_value = "15m"
    )]
    pub token_lifetime: String,

    /// Where the login API listens (tailnet traffic only).
    #[arg(long, env = "TKA_LISTEN", default_value = "127.0.0.1:80")]
    pub listen: SocketAddr,

    /// Where /healthz, /readyz and /metrics listen (for the kubelet and Prometheus).
    #[arg(long, env = "TKA_OPS_LISTEN", default_value = "0.0.0.0:9090")]
    pub ops_listen: SocketAddr,

    /// How tailnet traffic reaches the server.
    #[arg(long, env = "TKA_NETWORK_MODE", value_enum, default_value_t = NetworkMode::Userspace)]
    pub network_mode: NetworkMode,

    /// Expect a PROXY protocol v2 header on every API connection (HA behind a Tailscale
    /// Service). The API must then listen on a loopback address tailscaled never dials, such as
    /// 127.0.0.2.
    #[arg(long, env = "TKA_PROXY_PROTOCOL")]
    pub proxy_protocol: bool,

    /// The Tailscale Service (`svc:name`) connections are addressed to, for grants aimed at a
    /// service; used when the PROXY header does not name one.
    #[arg(long, env = "TKA_SERVICE_NAME")]
    pub service_name: Option<String>,

    /// The tailscaled LocalAPI socket.
    #[arg(long, env = "TKA_TAILSCALE_SOCKET", default_value = tka_core::identity::DEFAULT_SOCKET)]
    pub tailscale_socket: PathBuf,

    /// Namespaces no GrantMapping may bind into, besides the defaults (`kube-system`,
    /// `kube-public`, `kube-node-lease`) and the server's own namespace, which always stay.
    #[arg(
        long = "forbidden-namespace",
        env = "TKA_FORBIDDEN_NAMESPACES",
        value_delimiter = ',',
        default_value = "kube-system,kube-public,kube-node-lease"
    )]
    pub forbidden_namespaces: Vec<String>,

    /// Let a GrantMapping's `clusterRoles` name ClusterRoles that grant more than reading
    /// (`edit`, `admin`, ...). A cluster-wide binding reaches every namespace, this server's own
    /// included: a tka credential becomes as strong as the server itself. Off by default.
    #[arg(long, env = "TKA_ALLOW_CLUSTER_WIDE_WRITE")]
    pub allow_cluster_wide_write: bool,

    /// Elect one active reconciler among replicas with a coordination.k8s.io Lease.
    #[arg(
        long,
        env = "TKA_LEADER_ELECTION",
        default_value_t = true,
        action = clap::ArgAction::Set
    )]
    pub leader_election: bool,

    /// The Lease used for leader election, in the server's namespace.
    #[arg(long, env = "TKA_LEASE_NAME", default_value = "tka-server")]
    pub lease_name: String,

    /// How often the reconciler re-checks each live session's grant against the tailnet
    /// policy and the GrantMappings (at least 1s); a grant removed from the tailnet policy
    /// ends its sessions within about this long.
    #[arg(
        long,
        env = "TKA_REVALIDATE_EVERY",
        allow_hyphen_values = true,
        default_value = "5m"
    )]
    pub revalidate_every: String,

    /// The log line format.
    #[arg(long, env = "TKA_LOG_FORMAT", value_enum, default_value_t = LogFormat::Json)]
    pub log_format: LogFormat,

    /// Which log lines to write (tracing-subscriber filter syntax, e.g. `info,tka=debug`).
    #[arg(long, env = "TKA_LOG", default_value = "info")]
    pub log_filter: String,

    /// The server's own names that clients use in `Host` (node name and MagicDNS name); any
    /// other `Host` is refused (DNS rebinding).
    #[arg(long = "server-name", env = "TKA_SERVER_NAMES", value_delimiter = ',')]
    pub server_names: Vec<String>,

    /// The server's own addresses that clients may use in `Host` (its tailnet IPs). The API's
    /// listen address is always accepted.
    #[arg(
        long = "server-address",
        env = "TKA_SERVER_ADDRESSES",
        value_delimiter = ','
    )]
    pub server_addresses: Vec<IpAddr>,

    /// The stable ID(s) of the server's own tailnet node(s); requests that whois names as one
    /// of them are refused.
    #[arg(
        long = "self-node-id",
        env = "TKA_SELF_NODE_IDS",
        value_delimiter = ','
    )]
    pub self_node_ids: Vec<String>,

    /// Requests per minute each device (node stable ID) may make.
    #[arg(long, env = "TKA_RATE_LIMIT_PER_MINUTE", default_value_t = 60)]
    pub rate_limit_per_minute: u32,

    /// Requests a device may make in a burst before the per-minute rate applies.
    #[arg(long, env = "TKA_RATE_LIMIT_BURST", default_value_t = 20)]
    pub rate_limit_burst: u32,

    /// The largest request body accepted, in bytes.
    #[arg(long, env = "TKA_MAX_BODY_BYTES", default_value_t = 16 * 1024)]
    pub max_body_bytes: usize,

    /// How long a client may take to send a request's headers (from when the connection is
    /// ready for a request); then the connection is closed.
    #[arg(
        long,
        env = "TKA_HEADER_TIMEOUT",
        allow_hyphen_values = true,
        default_value = "10s"
    )]
    pub header_timeout: String,

    /// How long a client may take to send a whole request body (from its headers); then the
    /// request is answered 408 and the connection closed.
    #[arg(
        long,
        env = "TKA_BODY_TIMEOUT",
        allow_hyphen_values = true,
        default_value = "10s"
    )]
    pub body_timeout: String,

    /// How long a connection may stay open with no request in flight and nothing received
    /// (at most --header-timeout).
    #[arg(
        long,
        env = "TKA_IDLE_TIMEOUT",
        allow_hyphen_values = true,
        default_value = "5s"
    )]
    pub idle_timeout: String,

    /// The largest request head (request line and headers) accepted, in bytes; larger is 431.
    #[arg(long, env = "TKA_MAX_HEADER_BYTES", default_value_t = 16 * 1024)]
    pub max_header_bytes: usize,

    /// Connections open at once on each listener (API, ops); more are refused with 503.
    #[arg(long, env = "TKA_MAX_CONNECTIONS", default_value_t = 1024)]
    pub max_connections: usize,

    /// Connections open at once from one peer on each listener: per tailnet node (whois at
    /// accept) on the API, per address on ops; more are refused with 503.
    #[arg(long, env = "TKA_MAX_CONNECTIONS_PER_PEER", default_value_t = 32)]
    pub max_connections_per_peer: usize,

    /// How long to wait for tailscaled to answer a whois.
    #[arg(
        long,
        env = "TKA_WHOIS_TIMEOUT",
        allow_hyphen_values = true,
        default_value = "2s"
    )]
    pub whois_timeout: String,

    /// How long to wait for the Kubernetes API for one login, refresh or logout.
    #[arg(
        long,
        env = "TKA_KUBE_TIMEOUT",
        allow_hyphen_values = true,
        default_value = "15s"
    )]
    pub kube_timeout: String,

    /// Turn the tailnet API proxy on, listening here (off when absent). The same listen modes
    /// as `--listen` apply (`--network-mode`, `--proxy-protocol`).
    #[arg(long, env = "TKA_PROXY_LISTEN")]
    pub proxy_listen: Option<SocketAddr>,

    /// The Kubernetes API server the proxy forwards to (default: the server's own Kubernetes
    /// configuration: in-cluster, or `--kubeconfig`).
    #[arg(long, env = "TKA_PROXY_UPSTREAM")]
    pub proxy_upstream: Option<String>,

    /// A PEM file with the CA bundle that signs `--proxy-upstream`'s certificate.
    #[arg(long, env = "TKA_PROXY_UPSTREAM_CA")]
    pub proxy_upstream_ca: Option<PathBuf>,

    /// The proxy URL advertised to clients (e.g. http://tka-prod:8443); default: the first
    /// `--server-name` at `--proxy-listen`'s port.
    #[arg(long, env = "TKA_PROXY_URL")]
    pub proxy_url: Option<String>,

    /// Never hand a token to a laptop: clusters are reached through the proxy only. Needs
    /// `--proxy-listen`.
    #[arg(long, env = "TKA_PROXY_ONLY")]
    pub proxy_only: bool,

    /// A PEM file with the proxy's TLS certificate chain (serve HTTPS; needs
    /// `--proxy-tls-key`). Read at start: restart to use a renewed certificate.
    #[arg(long, env = "TKA_PROXY_TLS_CERT")]
    pub proxy_tls_cert: Option<PathBuf>,

    /// A PEM file with the private key of `--proxy-tls-cert`.
    #[arg(long, env = "TKA_PROXY_TLS_KEY")]
    pub proxy_tls_key: Option<PathBuf>,

    /// Serve the proxy over HTTPS with the node's tailnet certificate for this MagicDNS name,
    /// from tailscaled (which renews it; the server fetches it again every 6 hours).
    #[arg(
        long,
        env = "TKA_PROXY_TLS_TAILNET_CERT",
        conflicts_with_all = ["proxy_tls_cert", "proxy_tls_key"]
    )]
    pub proxy_tls_tailnet_cert: Option<String>,

    /// Proxied requests and streams (watches, exec, port-forward) open at once per device;
    /// more are refused with 429.
    #[arg(long, env = "TKA_PROXY_MAX_STREAMS_PER_DEVICE", default_value_t = 64)]
    pub proxy_max_streams_per_device: usize,

    /// Proxied requests per second each device may make.
    #[arg(long, env = "TKA_PROXY_RATE_LIMIT", default_value_t = 50)]
    pub proxy_rate_limit: u32,

    /// Proxied requests a device may make in a burst before `--proxy-rate-limit` applies.
    #[arg(long, env = "TKA_PROXY_RATE_LIMIT_BURST", default_value_t = 200)]
    pub proxy_rate_limit_burst: u32,

    /// How long the upstream may take to accept a connection and answer a request's headers
    /// (no deadline on the body of watches and upgraded connections).
    #[arg(
        long,
        env = "TKA_PROXY_UPSTREAM_TIMEOUT",
        allow_hyphen_values = true,
        default_value = "30s"
    )]
    pub proxy_upstream_timeout: String,

    /// Test builds only (cargo feature `fault-injection`): abort the process right after the
    /// issuer reaches this checkpoint (e.g. `login-bindings-created`), to test crash recovery.
    /// Hidden, with no environment twin; release builds do not have it.
    #[cfg(feature = "fault-injection")]
    #[arg(long, hide = true)]
    pub fault_abort_after: Option<tka_core::kubernetes::Checkpoint>,

    /// After SIGTERM, how long in-flight requests may take before the server exits anyway.
    #[arg(
        long,
        env = "TKA_SHUTDOWN_GRACE",
        allow_hyphen_values = true,
        default_value = "25s"
    )]
    pub shutdown_grace: String,
}
