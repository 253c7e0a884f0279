//! Validated settings: [`Settings`] is built once from the command line
//! (`TryFrom<ServeArgs>`) and is everything `serve` needs, already checked and converted into
//! domain types. Every error names the flag to fix. This module reads the CA, certificate and key
//! files (the one piece of I/O validation needs) and nothing else; it starts nothing.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use jiff::SignedDuration;
use tka_core::api::ClusterEndpoint;
use tka_core::domain::{is_dns1123_label, is_dns1123_subdomain};
use tka_core::issuer::TOKEN_LIFETIME_FLOOR;
use tka_core::{ClusterName, NodeId, PolicySettings, Ttl};
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::rustls::pki_types::pem::PemObject as _;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::cli::{LogFormat, NetworkMode, ServeArgs};
use crate::connections::ConnectionLimits;
use crate::guard::AllowedHosts;
use crate::listener::{ListenMode, tailnet_delivers_to};
use crate::proxy::ProxyConfig;
use crate::ratelimit::RateLimitConfig;
use crate::state::ApiConfig;

/// A flag whose value cannot be used. The message says which flag and what to do.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SettingsError {
    /// The value is not acceptable.
    #[error("{flag}: {message}")]
    Invalid {
        /// The flag, e.g. `--max-ttl`.
        flag: &'static str,
        /// What is wrong and what to do.
        message: String,
    },
    /// A file named by the flag cannot be read.
    #[error("{flag}: cannot read {}: {source}", path.display())]
    Unreadable {
        /// The flag, e.g. `--api-server-ca-file`.
        flag: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

impl SettingsError {
    /// The flag to fix.
    pub fn flag(&self) -> &'static str {
        match self {
            Self::Invalid { flag, .. } | Self::Unreadable { flag, .. } => flag,
        }
    }

    fn invalid(flag: &'static str, message: impl Into<String>) -> Self {
        Self::Invalid {
            flag,
            message: message.into(),
        }
    }
}

/// Leader election among replicas.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaderElection {
    /// The Lease's name, in the server's namespace.
    pub lease_name: String,
}

/// The tailnet API proxy's settings (DESIGN §8), present when `--proxy-listen` is given.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ProxySettings {
    /// Where the proxy listens.
    pub listen: SocketAddr,
    /// Which peers the proxy listener accepts and how it learns who they are.
    pub listen_mode: ListenMode,
    /// The API server to forward to; `None`: the server's own Kubernetes configuration.
    pub upstream: Option<http::Uri>,
    /// The CA bundle (PEM file) of `upstream`.
    pub upstream_ca: Option<PathBuf>,
    /// The proxy URL advertised to clients.
    pub url: String,
    /// Never hand a token to a laptop.
    pub only: bool,
    /// Deadline for the upstream's connection and response headers.
    pub upstream_timeout: Duration,
    /// Hosts, caps and rate of the proxy.
    pub config: ProxyConfig,
    /// TLS for the proxy listener, when configured.
    pub tls: Option<ProxyTls>,
}

/// Where the proxy's TLS certificate comes from.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum ProxyTls {
    /// `--proxy-tls-cert` and `--proxy-tls-key`, loaded and checked at start.
    Files(Arc<ServerConfig>),
    /// `--proxy-tls-tailnet-cert`: the node's tailnet certificate for this name, from
    /// tailscaled.
    Tailnet(String),
}

/// Everything `tka-server serve` runs with, validated.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Settings {
    /// The cluster as clients are told about it.
    pub cluster: ClusterEndpoint,
    /// The kubeconfig to reach the cluster with; `None` infers (in-cluster, `KUBECONFIG`, ...).
    pub kubeconfig: Option<PathBuf>,
    /// The namespace the server runs in.
    pub namespace: String,
    /// Policy bounds, capability names and protected namespaces.
    pub policy: PolicySettings,
    /// The lifetime of each token; at least the API server's floor of 600 s.
    pub token_lifetime: SignedDuration,
    /// Where the login API listens.
    pub api_listen: SocketAddr,
    /// Which peers the API listener accepts and how it learns who they are.
    pub listen_mode: ListenMode,
    /// Where the ops endpoints listen.
    pub ops_listen: SocketAddr,
    /// The tailscaled LocalAPI socket.
    pub tailscale_socket: PathBuf,
    /// The Tailscale Service connections are addressed to, when configured.
    pub service_name: Option<String>,
    /// Leader election for the reconciler; `None` when disabled.
    pub leader_election: Option<LeaderElection>,
    /// How often the reconciler re-checks each live session's grant.
    pub revalidate_every: SignedDuration,
    /// Log line format.
    pub log_format: LogFormat,
    /// Log filter directives.
    pub log_filter: String,
    /// The `Host` values the API accepts.
    pub allowed_hosts: AllowedHosts,
    /// The server's own node IDs; whois answers naming them are refused.
    pub self_node_ids: Vec<NodeId>,
    /// Per-device rate limit.
    pub rate_limit: RateLimitConfig,
    /// The largest request body accepted.
    pub max_body_bytes: usize,
    /// Deadline for one whois.
    pub whois_timeout: Duration,
    /// Deadline for one issuer call (login, refresh, logout, describe).
    pub kube_timeout: Duration,
    /// How long in-flight requests may take after SIGTERM.
    pub shutdown_grace: Duration,
    /// Deadlines and connection caps of every listener.
    pub connection_limits: ConnectionLimits,
    /// The tailnet API proxy, when turned on.
    pub proxy: Option<ProxySettings>,
    /// Test builds only: the checkpoint after which the process aborts.
    #[cfg(feature = "fault-injection")]
    pub fault_abort_after: Option<tka_core::kubernetes::Checkpoint>,
}

impl Settings {
    /// The configuration of the login API router.
    pub fn api_config(&self) -> ApiConfig {
        ApiConfig {
            // `--proxy-only`: no token is handed to a laptop.
            proxy_only: self.proxy.as_ref().is_some_and(|p| p.only),
            cluster: self.cluster.clone(),
            policy: self.policy.clone(),
            allowed_hosts: self.allowed_hosts.clone(),
            self_node_ids: self.self_node_ids.clone(),
            loopback_peers_only: matches!(
                self.listen_mode,
                ListenMode::LoopbackOnly | ListenMode::ProxyProtocol { .. }
            ),
            service_name: self.service_name.clone(),
            max_body_bytes: self.max_body_bytes,
            rate_limit: self.rate_limit,
            whois_timeout: self.whois_timeout,
            issuer_timeout: self.kube_timeout,
        }
    }
}

/// The smallest and largest request body caps accepted by `--max-body-bytes`.
const BODY_CAP_RANGE: (usize, usize) = (64, 1 << 20);

/// The smallest and largest request head caps accepted by `--max-header-bytes`.
const HEADER_CAP_RANGE: (usize, usize) = (4 * 1024, 1 << 20);

/// The longest deadline accepted by `--header-timeout`, `--body-timeout` and `--idle-timeout`:
/// longer ones would let a silent client hold a connection for minutes.
const LISTENER_TIMEOUT_MAX: Duration = Duration::from_secs(300);

/// The most connections one listener may be allowed (a file descriptor each).
const MAX_CONNECTIONS_MAX: usize = 65_536;

fn listener_timeout(flag: &'static str, text: &str) -> Result<Duration, SettingsError> {
    let d = std_duration(flag, text)?;
    if d > LISTENER_TIMEOUT_MAX {
        return Err(SettingsError::invalid(
            flag,
            format!(
                "{text} is longer than {}s; a silent client could hold a connection that long",
                LISTENER_TIMEOUT_MAX.as_secs()
            ),
        ));
    }
    Ok(d)
}

fn connection_limits(args: &ServeArgs) -> Result<ConnectionLimits, SettingsError> {
    let header_timeout = listener_timeout("--header-timeout", &args.header_timeout)?;
    let body_timeout = listener_timeout("--body-timeout", &args.body_timeout)?;
    let idle_timeout = listener_timeout("--idle-timeout", &args.idle_timeout)?;
    if idle_timeout > header_timeout {
        return Err(SettingsError::invalid(
            "--idle-timeout",
            format!(
                "{} is longer than --header-timeout {}; an idle connection is waiting for its next request's headers, so the header deadline would close it first. Lower --idle-timeout or raise --header-timeout",
                args.idle_timeout, args.header_timeout
            ),
        ));
    }
    let (min_head, max_head) = HEADER_CAP_RANGE;
    if !(min_head..=max_head).contains(&args.max_header_bytes) {
        return Err(SettingsError::invalid(
            "--max-header-bytes",
            format!("must be between {min_head} and {max_head}"),
        ));
    }
    if !(1..=MAX_CONNECTIONS_MAX).contains(&args.max_connections) {
        return Err(SettingsError::invalid(
            "--max-connections",
            format!("must be between 1 and {MAX_CONNECTIONS_MAX}"),
        ));
    }
    if args.max_connections_per_peer == 0 || args.max_connections_per_peer > args.max_connections {
        return Err(SettingsError::invalid(
            "--max-connections-per-peer",
            format!(
                "must be between 1 and --max-connections ({})",
                args.max_connections
            ),
        ));
    }
    Ok(ConnectionLimits {
        header_timeout,
        body_timeout,
        idle_timeout,
        max_header_bytes: args.max_header_bytes,
        max_connections: args.max_connections,
        max_connections_per_peer: args.max_connections_per_peer,
    })
}

/// `--ops-listen` must not be an address where tailnet traffic arrives.
fn ops_listen(args: &ServeArgs) -> Result<SocketAddr, SettingsError> {
    const FLAG: &str = "--ops-listen";
    let ip = args.ops_listen.ip();
    if !ip.is_unspecified() && tailnet_delivers_to(ip, args.listen.ip()) {
        return Err(SettingsError::invalid(
            FLAG,
            format!(
                "{} is where tailnet traffic arrives (a userspace-networking tailscaled delivers every tailnet connection to 127.0.0.1), so ops would answer the tailnet; listen on the pod's own address (e.g. $(POD_IP):9090 from the downward API) or 0.0.0.0:9090",
                args.ops_listen
            ),
        ));
    }
    Ok(args.ops_listen)
}

fn duration(flag: &'static str, text: &str) -> Result<SignedDuration, SettingsError> {
    let d = tka_core::duration::parse(text).map_err(|e| {
        SettingsError::invalid(flag, format!("{e}; write a duration like 90s, 15m or 8h"))
    })?;
    if d.is_negative() || d.is_zero() {
        return Err(SettingsError::invalid(
            flag,
            format!("{text:?} must be positive"),
        ));
    }
    Ok(d)
}

fn std_duration(flag: &'static str, text: &str) -> Result<Duration, SettingsError> {
    duration(flag, text).map(SignedDuration::unsigned_abs)
}

/// The shortest re-validation period `--revalidate-every` accepts: each pass asks tailscaled
/// about every live session, so a shorter one only adds load.
const REVALIDATE_EVERY_MIN: SignedDuration = SignedDuration::from_secs(1);

fn revalidate_every(text: &str) -> Result<SignedDuration, SettingsError> {
    const FLAG: &str = "--revalidate-every";
    let d = duration(FLAG, text)?;
    if d < REVALIDATE_EVERY_MIN {
        return Err(SettingsError::invalid(
            FLAG,
            format!("{text} is shorter than 1s; write a duration like 30s or 5m"),
        ));
    }
    Ok(d)
}

fn ttl(flag: &'static str, text: &str) -> Result<Ttl, SettingsError> {
    Ttl::parse(text).map_err(|e| SettingsError::invalid(flag, e.to_string()))
}

fn capability_name(flag: &'static str, name: &str) -> Result<String, SettingsError> {
    let name = name.trim();
    if name.is_empty() || name.contains(char::is_whitespace) || !name.contains('/') {
        return Err(SettingsError::invalid(
            flag,
            format!(
                "{name:?} is not a capability name; it looks like example.com/cap/name, as in the tailnet policy file"
            ),
        ));
    }
    Ok(name.to_owned())
}

fn api_server_url(text: &str) -> Result<String, SettingsError> {
    const FLAG: &str = "--api-server-url";
    let uri: http::Uri = text
        .parse()
        .map_err(|e| SettingsError::invalid(FLAG, format!("{text:?} is not a URL ({e})")))?;
    if uri.scheme_str() != Some("https") || uri.authority().is_none() {
        return Err(SettingsError::invalid(
            FLAG,
            format!("{text:?} must be an https:// URL of the Kubernetes API server"),
        ));
    }
    Ok(text.trim_end_matches('/').to_owned())
}

fn is_pem_certificates(bytes: &[u8]) -> bool {
    std::str::from_utf8(bytes).is_ok_and(|s| s.contains("-----BEGIN CERTIFICATE-----"))
}

fn ca_data(args: &ServeArgs) -> Result<Option<String>, SettingsError> {
    if let Some(path) = &args.api_server_ca_file {
        const FLAG: &str = "--api-server-ca-file";
        let pem = std::fs::read(path).map_err(|source| SettingsError::Unreadable {
            flag: FLAG,
            path: path.clone(),
            source,
        })?;
        if !is_pem_certificates(&pem) {
            return Err(SettingsError::invalid(
                FLAG,
                format!("{} holds no PEM certificate", path.display()),
            ));
        }
        return Ok(Some(BASE64.encode(pem)));
    }
    if let Some(data) = &args.api_server_ca_data {
        const FLAG: &str = "--api-server-ca-data";
        let data: String = data.chars().filter(|c| !c.is_whitespace()).collect();
        let pem = BASE64.decode(&data).map_err(|e| {
            SettingsError::invalid(
                FLAG,
                format!("not valid base64 ({e}); give the PEM bundle base64-encoded, as in a kubeconfig's certificate-authority-data"),
            )
        })?;
        if !is_pem_certificates(&pem) {
            return Err(SettingsError::invalid(
                FLAG,
                "decodes to no PEM certificate; give the PEM bundle base64-encoded",
            ));
        }
        return Ok(Some(data));
    }
    Ok(None)
}

fn listen_mode(args: &ServeArgs) -> Result<ListenMode, SettingsError> {
    listen_mode_of("--listen", args.listen, args)
}

/// The mode of a tailnet listener (the API's or the proxy's) bound at `listen`.
fn listen_mode_of(
    flag: &'static str,
    listen: SocketAddr,
    args: &ServeArgs,
) -> Result<ListenMode, SettingsError> {
    let ip = listen.ip();
    if args.proxy_protocol {
        let dialed_by_tailscaled =
            ip == IpAddr::from([127, 0, 0, 1]) || ip == IpAddr::from(std::net::Ipv6Addr::LOCALHOST);
        if !ip.is_loopback() || dialed_by_tailscaled {
            return Err(SettingsError::invalid(
                flag,
                format!(
                    "{listen} cannot be used with --proxy-protocol: it must listen on a loopback address tailscaled never dials (such as 127.0.0.2:80), or a tailnet peer could send its own PROXY header"
                ),
            ));
        }
        return Ok(ListenMode::ProxyProtocol {
            service_name: args.service_name.clone(),
        });
    }
    match args.network_mode {
        NetworkMode::Userspace if !ip.is_loopback() => Err(SettingsError::invalid(
            flag,
            format!(
                "{listen} is not a loopback address; with --network-mode userspace tailscaled delivers tailnet traffic to 127.0.0.1, so listen there (e.g. 127.0.0.1:80), or use --network-mode kernel"
            ),
        )),
        NetworkMode::Userspace => Ok(ListenMode::LoopbackOnly),
        NetworkMode::Kernel if ip.is_loopback() => Err(SettingsError::invalid(
            flag,
            format!(
                "{listen} is a loopback address, where tailnet traffic never arrives with --network-mode kernel; listen on the node's tailnet address, or use --network-mode userspace"
            ),
        )),
        NetworkMode::Kernel => Ok(ListenMode::Tailnet),
    }
}

fn allowed_hosts(args: &ServeArgs) -> Result<AllowedHosts, SettingsError> {
    let (names, addresses) = host_sets(args)?;
    Ok(AllowedHosts::new(names, addresses))
}

fn host_sets(args: &ServeArgs) -> Result<(BTreeSet<String>, BTreeSet<IpAddr>), SettingsError> {
    const FLAG: &str = "--server-name";
    if args.server_names.is_empty() {
        return Err(SettingsError::invalid(
            FLAG,
            "give the server's tailnet node name and MagicDNS name (e.g. --server-name tka-prod,tka-prod.example.ts.net); requests with any other Host are refused",
        ));
    }
    let mut names = BTreeSet::new();
    for name in &args.server_names {
        let normalized = name.trim().trim_end_matches('.').to_ascii_lowercase();
        if !is_dns1123_subdomain(&normalized) {
            return Err(SettingsError::invalid(
                FLAG,
                format!("{name:?} is not a host name"),
            ));
        }
        names.insert(normalized);
    }
    let mut addresses: BTreeSet<IpAddr> = args.server_addresses.iter().copied().collect();
    if !args.listen.ip().is_unspecified() {
        addresses.insert(args.listen.ip());
    }
    Ok((names, addresses))
}

/// The longest `--proxy-upstream-timeout` accepted.
const PROXY_UPSTREAM_TIMEOUT_MAX: Duration = Duration::from_secs(300);

/// The most streams one device may be allowed through the proxy.
const PROXY_STREAMS_MAX: usize = 4096;

/// Whether `host` (a URI host) is a loopback address or `localhost`.
fn is_loopback_host(host: &str) -> bool {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    bare.eq_ignore_ascii_case("localhost")
        || bare.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

fn proxy_upstream(text: &str) -> Result<http::Uri, SettingsError> {
    const FLAG: &str = "--proxy-upstream";
    let uri: http::Uri = text
        .trim_end_matches('/')
        .parse()
        .map_err(|e| SettingsError::invalid(FLAG, format!("{text:?} is not a URL ({e})")))?;
    let host = uri.host().unwrap_or_default();
    match uri.scheme_str() {
        Some("https") if !host.is_empty() => Ok(uri),
        Some("http") if is_loopback_host(host) => Ok(uri),
        _ => Err(SettingsError::invalid(
            FLAG,
            format!(
                "{text:?} must be an https:// URL of the Kubernetes API server (plain http would carry session tokens unencrypted; it is accepted only on loopback)"
            ),
        )),
    }
}

/// The proxy URL: `--proxy-url` checked (http or https, a host, no path), or the first
/// `--server-name` at the proxy's port.
fn proxy_url(args: &ServeArgs, listen: SocketAddr, tls: bool) -> Result<String, SettingsError> {
    const FLAG: &str = "--proxy-url";
    let Some(text) = &args.proxy_url else {
        // The tailnet certificate is for its MagicDNS name: the URL must use it.
        let name = args
            .proxy_tls_tailnet_cert
            .as_ref()
            .or(args.server_names.first());
        let Some(name) = name else {
            return Err(SettingsError::invalid(
                FLAG,
                "give the URL clients reach the proxy at (e.g. http://tka-prod:8443)",
            ));
        };
        let name = name.trim().trim_end_matches('.').to_ascii_lowercase();
        return Ok(match (tls, listen.port()) {
            (false, 80) => format!("http://{name}"),
            (true, 443) => format!("https://{name}"),
            (false, port) => format!("http://{name}:{port}"),
            (true, port) => format!("https://{name}:{port}"),
        });
    };
    let uri: http::Uri = text
        .parse()
        .map_err(|e| SettingsError::invalid(FLAG, format!("{text:?} is not a URL ({e})")))?;
    let scheme_ok = matches!(uri.scheme_str(), Some("http" | "https"));
    let path_ok = uri.path_and_query().is_none_or(|p| p.as_str() == "/");
    if !scheme_ok || uri.host().is_none() || !path_ok {
        return Err(SettingsError::invalid(
            FLAG,
            format!(
                "{text:?} must be an http:// or https:// URL with a host and no path (e.g. http://tka-prod:8443)"
            ),
        ));
    }
    Ok(text.trim_end_matches('/').to_owned())
}

fn proxy_settings(args: &ServeArgs) -> Result<Option<ProxySettings>, SettingsError> {
    let Some(listen) = args.proxy_listen else {
        for (set, flag) in [
            (args.proxy_only, "--proxy-only"),
            (args.proxy_url.is_some(), "--proxy-url"),
            (args.proxy_upstream.is_some(), "--proxy-upstream"),
            (args.proxy_upstream_ca.is_some(), "--proxy-upstream-ca"),
            (args.proxy_tls_cert.is_some(), "--proxy-tls-cert"),
            (args.proxy_tls_key.is_some(), "--proxy-tls-key"),
            (
                args.proxy_tls_tailnet_cert.is_some(),
                "--proxy-tls-tailnet-cert",
            ),
        ] {
            if set {
                return Err(SettingsError::invalid(
                    flag,
                    "needs --proxy-listen: the proxy is off without it",
                ));
            }
        }
        return Ok(None);
    };
    let listen_mode = listen_mode_of("--proxy-listen", listen, args)?;
    // Port 0 (tests: the OS picks a port each) never collides.
    if listen.port() != 0 && (listen == args.listen || listen == args.ops_listen) {
        return Err(SettingsError::invalid(
            "--proxy-listen",
            "must differ from --listen and --ops-listen: the proxy is a listener of its own",
        ));
    }
    let upstream = args
        .proxy_upstream
        .as_deref()
        .map(proxy_upstream)
        .transpose()?;
    if let Some(ca) = &args.proxy_upstream_ca {
        const FLAG: &str = "--proxy-upstream-ca";
        if upstream.is_none() {
            return Err(SettingsError::invalid(
                FLAG,
                "needs --proxy-upstream: without it the proxy trusts the server's own Kubernetes configuration",
            ));
        }
        let pem = std::fs::read(ca).map_err(|source| SettingsError::Unreadable {
            flag: FLAG,
            path: ca.clone(),
            source,
        })?;
        if !is_pem_certificates(&pem) {
            return Err(SettingsError::invalid(
                FLAG,
                format!("{} holds no PEM certificate", ca.display()),
            ));
        }
    }
    let tls = proxy_tls(args)?;
    let url = proxy_url(args, listen, tls.is_some())?;

    let streams = args.proxy_max_streams_per_device;
    if !(1..=PROXY_STREAMS_MAX).contains(&streams) {
        return Err(SettingsError::invalid(
            "--proxy-max-streams-per-device",
            format!("must be between 1 and {PROXY_STREAMS_MAX}"),
        ));
    }
    let per_minute = args
        .proxy_rate_limit
        .checked_mul(60)
        .and_then(NonZeroU32::new)
        .ok_or_else(|| {
            SettingsError::invalid(
                "--proxy-rate-limit",
                "must be between 1 and 71582788 requests per second",
            )
        })?;
    let burst = NonZeroU32::new(args.proxy_rate_limit_burst)
        .ok_or_else(|| SettingsError::invalid("--proxy-rate-limit-burst", "must be at least 1"))?;
    let upstream_timeout = std_duration("--proxy-upstream-timeout", &args.proxy_upstream_timeout)?;
    if upstream_timeout > PROXY_UPSTREAM_TIMEOUT_MAX {
        return Err(SettingsError::invalid(
            "--proxy-upstream-timeout",
            format!("must be at most {}s", PROXY_UPSTREAM_TIMEOUT_MAX.as_secs()),
        ));
    }

    // The proxy answers to the API's names and addresses, its own listen address and the
    // host of the URL clients are given.
    let (mut names, mut addresses) = host_sets(args)?;
    if !listen.ip().is_unspecified() {
        addresses.insert(listen.ip());
    }
    if let Some(host) = url
        .parse::<http::Uri>()
        .ok()
        .as_ref()
        .and_then(http::Uri::host)
    {
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        match bare.parse::<IpAddr>() {
            Ok(ip) => {
                addresses.insert(ip);
            }
            Err(_) => {
                names.insert(bare.trim_end_matches('.').to_ascii_lowercase());
            }
        }
    }
    Ok(Some(ProxySettings {
        listen,
        listen_mode,
        upstream,
        upstream_ca: args.proxy_upstream_ca.clone(),
        url,
        only: args.proxy_only,
        upstream_timeout,
        config: ProxyConfig {
            allowed_hosts: AllowedHosts::new(names, addresses),
            max_streams_per_device: streams,
            rate_limit: RateLimitConfig { per_minute, burst },
        },
        tls,
    }))
}

/// The proxy's TLS configuration from `--proxy-tls-cert` and `--proxy-tls-key` (both or
/// neither), HTTP/1.1 only (upgrades need it).
fn proxy_tls(args: &ServeArgs) -> Result<Option<ProxyTls>, SettingsError> {
    if let Some(domain) = &args.proxy_tls_tailnet_cert {
        let domain = domain.trim().trim_end_matches('.').to_ascii_lowercase();
        if !is_dns1123_subdomain(&domain) || !domain.contains('.') {
            return Err(SettingsError::invalid(
                "--proxy-tls-tailnet-cert",
                format!(
                    "{domain:?} is not a MagicDNS name; give the node's full name, such as tka-prod.example.ts.net"
                ),
            ));
        }
        return Ok(Some(ProxyTls::Tailnet(domain)));
    }
    let (cert, key) = match (&args.proxy_tls_cert, &args.proxy_tls_key) {
        (None, None) => return Ok(None),
        (Some(_), None) => {
            return Err(SettingsError::invalid(
                "--proxy-tls-key",
                "is needed with --proxy-tls-cert: give the certificate's private key",
            ));
        }
        (None, Some(_)) => {
            return Err(SettingsError::invalid(
                "--proxy-tls-cert",
                "is needed with --proxy-tls-key: give the certificate chain",
            ));
        }
        (Some(cert), Some(key)) => (cert, key),
    };
    let read = |flag: &'static str, path: &PathBuf| {
        std::fs::read(path).map_err(|source| SettingsError::Unreadable {
            flag,
            path: path.clone(),
            source,
        })
    };
    let pem = read("--proxy-tls-cert", cert)?;
    let chain = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| {
            SettingsError::invalid(
                "--proxy-tls-cert",
                format!("{} is not a PEM certificate chain: {e}", cert.display()),
            )
        })?;
    if chain.is_empty() {
        return Err(SettingsError::invalid(
            "--proxy-tls-cert",
            format!("{} holds no PEM certificate", cert.display()),
        ));
    }
    let pem = read("--proxy-tls-key", key)?;
    let private = PrivateKeyDer::from_pem_slice(&pem).map_err(|e| {
        SettingsError::invalid(
            "--proxy-tls-key",
            format!("{} holds no PEM private key: {e}", key.display()),
        )
    })?;
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| SettingsError::invalid("--proxy-tls-cert", e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(chain, private)
        .map_err(|e| {
            SettingsError::invalid(
                "--proxy-tls-key",
                format!("cannot be used with --proxy-tls-cert: {e}"),
            )
        })?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Some(ProxyTls::Files(Arc::new(config))))
}

impl TryFrom<ServeArgs> for Settings {
    type Error = SettingsError;

    fn try_from(args: ServeArgs) -> Result<Self, Self::Error> {
        let cluster_name = ClusterName::new(args.cluster_name.trim())
            .map_err(|e| SettingsError::invalid("--cluster-name", e.to_string()))?;
        let proxy = proxy_settings(&args)?;
        let cluster = ClusterEndpoint {
            name: cluster_name,
            server: api_server_url(&args.api_server_url)?,
            certificate_authority_data: ca_data(&args)?,
            proxy: proxy.as_ref().map(|p| p.url.clone()),
            direct_tokens: !proxy.as_ref().is_some_and(|p| p.only),
        };

        if !is_dns1123_label(&args.namespace) {
            return Err(SettingsError::invalid(
                "--namespace",
                format!("{:?} is not a namespace name", args.namespace),
            ));
        }

        let capability = capability_name("--capability", &args.capability)?;
        let compat = args
            .compat_capability
            .as_deref()
            .map(|c| capability_name("--compat-capability", c))
            .transpose()?;
        if compat.as_deref() == Some(capability.as_str()) {
            return Err(SettingsError::invalid(
                "--compat-capability",
                "must differ from --capability: each capability name is read with one schema",
            ));
        }

        let default_ttl = ttl("--default-ttl", &args.default_ttl)?;
        let max_ttl = ttl("--max-ttl", &args.max_ttl)?;
        if default_ttl > max_ttl {
            return Err(SettingsError::invalid(
                "--default-ttl",
                format!("{default_ttl} is longer than --max-ttl {max_ttl}"),
            ));
        }
        let token_lifetime = duration("--token-lifetime", &args.token_lifetime)?;
        if token_lifetime < TOKEN_LIFETIME_FLOOR {
            return Err(SettingsError::invalid(
                "--token-lifetime",
                format!(
                    "{} is below the Kubernetes API server's minimum of 10m (600s)",
                    args.token_lifetime
                ),
            ));
        }

        for namespace in &args.forbidden_namespaces {
            if !is_dns1123_label(namespace) {
                return Err(SettingsError::invalid(
                    "--forbidden-namespace",
                    format!("{namespace:?} is not a namespace name"),
                ));
            }
        }
        let policy = PolicySettings::new(args.namespace.clone(), default_ttl, max_ttl)
            .with_capability_names(capability, compat)
            .deny_namespaces(args.forbidden_namespaces.iter().cloned())
            .allowing_cluster_wide_write(args.allow_cluster_wide_write);

        let listen_mode = listen_mode(&args)?;
        let ops_listen = ops_listen(&args)?;
        let connection_limits = connection_limits(&args)?;
        if args.ops_listen == args.listen {
            return Err(SettingsError::invalid(
                "--ops-listen",
                "must differ from --listen: the ops endpoints must not be reachable from the tailnet through the API listener",
            ));
        }
        if let Some(service) = &args.service_name
            && !service.strip_prefix("svc:").is_some_and(is_dns1123_label)
        {
            return Err(SettingsError::invalid(
                "--service-name",
                format!("{service:?} is not a Tailscale Service name; they look like svc:tka"),
            ));
        }

        let leader_election = if args.leader_election {
            if !is_dns1123_subdomain(&args.lease_name) {
                return Err(SettingsError::invalid(
                    "--lease-name",
                    format!("{:?} is not a Lease name", args.lease_name),
                ));
            }
            Some(LeaderElection {
                lease_name: args.lease_name.clone(),
            })
        } else {
            None
        };

        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&args.log_filter) {
            return Err(SettingsError::invalid(
                "--log-filter",
                format!("{:?} is not a log filter: {e}", args.log_filter),
            ));
        }

        let allowed_hosts = allowed_hosts(&args)?;
        let self_node_ids = args
            .self_node_ids
            .iter()
            .map(|id| {
                NodeId::new(id.trim())
                    .map_err(|e| SettingsError::invalid("--self-node-id", e.to_string()))
            })
            .collect::<Result<Vec<_>, _>>()?;

        let per_minute = NonZeroU32::new(args.rate_limit_per_minute).ok_or_else(|| {
            SettingsError::invalid("--rate-limit-per-minute", "must be at least 1")
        })?;
        let burst = NonZeroU32::new(args.rate_limit_burst)
            .ok_or_else(|| SettingsError::invalid("--rate-limit-burst", "must be at least 1"))?;

        let (min_body, max_body) = BODY_CAP_RANGE;
        if !(min_body..=max_body).contains(&args.max_body_bytes) {
            return Err(SettingsError::invalid(
                "--max-body-bytes",
                format!("must be between {min_body} and {max_body}"),
            ));
        }

        Ok(Self {
            cluster,
            kubeconfig: args.kubeconfig,
            namespace: args.namespace,
            policy,
            token_lifetime,
            api_listen: args.listen,
            listen_mode,
            ops_listen,
            tailscale_socket: args.tailscale_socket,
            service_name: args.service_name,
            leader_election,
            revalidate_every: revalidate_every(&args.revalidate_every)?,
            log_format: args.log_format,
            log_filter: args.log_filter,
            allowed_hosts,
            self_node_ids,
            rate_limit: RateLimitConfig { per_minute, burst },
            max_body_bytes: args.max_body_bytes,
            whois_timeout: std_duration("--whois-timeout", &args.whois_timeout)?,
            kube_timeout: std_duration("--kube-timeout", &args.kube_timeout)?,
            shutdown_grace: std_duration("--shutdown-grace", &args.shutdown_grace)?,
            connection_limits,
            proxy,
            #[cfg(feature = "fault-injection")]
            fault_abort_after: args.fault_abort_after,
        })
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::cli::{Cli, Command};

    const BASE: &[&str] = &[
        "tka-server",
        "serve",
        "--cluster-name",
        "prod",
        "--api-server-url",
        "https://10.0.0.1:6443",
        "--server-name",
        "tka-prod,tka-prod.example.ts.net",
    ];

    /// `BASE` with `extra` added; a flag in `extra` replaces the same flag in `BASE`.
    fn parse(extra: &[&str]) -> Result<Settings, SettingsError> {
        let mut argv: Vec<&str> = BASE[..2].to_vec();
        for pair in BASE[2..].chunks(2) {
            if !extra.contains(&pair[0]) {
                argv.extend(pair);
            }
        }
        argv.extend(extra);
        let cli = Cli::try_parse_from(argv).unwrap();
        let Command::Serve(args) = cli.command else {
            panic!("serve expected");
        };
        Settings::try_from(*args)
    }

    /// The flag exists only with the `fault-injection` feature (test builds), is hidden, reads
    /// no environment variable, and takes a checkpoint's name.
    #[cfg(feature = "fault-injection")]
    #[test]
    fn the_fault_flag_takes_a_checkpoint_and_is_hidden() {
        use clap::CommandFactory as _;
        use tka_core::kubernetes::Checkpoint;

        assert_eq!(parse(&[]).unwrap().fault_abort_after, None);
        let armed = parse(&["--fault-abort-after", "login-bindings-created"]).unwrap();
        assert_eq!(
            armed.fault_abort_after,
            Some(Checkpoint::LoginBindingsCreated)
        );
        let mut argv = BASE.to_vec();
        argv.extend(["--fault-abort-after", "somewhere"]);
        let err = Cli::try_parse_from(argv).unwrap_err().to_string();
        assert!(err.contains("login-session-created"), "{err}");

        let mut cli = Cli::command();
        let serve = cli.find_subcommand_mut("serve").unwrap();
        let flag = serve
            .get_arguments()
            .find(|a| a.get_long() == Some("fault-abort-after"))
            .unwrap();
        assert!(flag.is_hide_set());
        assert_eq!(flag.get_env(), None);
        let help = serve.render_long_help().to_string();
        assert!(help.contains("--token-lifetime"), "{help}");
        assert!(!help.contains("fault-abort"), "{help}");
    }

    fn refused(extra: &[&str], flag: &str) -> String {
        let err = parse(extra).unwrap_err();
        assert_eq!(err.flag(), flag, "{err}");
        let message = err.to_string();
        assert!(message.starts_with(flag), "{message}");
        message
    }

    #[test]
    fn defaults_are_a_working_userspace_setup() {
        let s = parse(&[]).unwrap();
        assert_eq!(s.cluster.name.as_str(), "prod");
        assert_eq!(s.listen_mode, ListenMode::LoopbackOnly);
        assert_eq!(s.api_listen.to_string(), "127.0.0.1:80");
        assert_eq!(s.token_lifetime.as_secs(), 900);
        assert_eq!(s.policy.max_ttl.as_secs(), 8 * 3600);
        for ns in [
            "kube-system",
            "kube-public",
            "kube-node-lease",
            "tka-system",
        ] {
            assert!(s.policy.forbidden_namespaces.contains(ns), "{ns}");
        }
        assert!(!s.policy.allow_cluster_wide_write);
        assert_eq!(
            s.leader_election,
            Some(LeaderElection {
                lease_name: "tka-server".into()
            })
        );
        assert!(s.allowed_hosts.allows("tka-prod.example.ts.net"));
        assert!(s.allowed_hosts.allows("127.0.0.1:80"));
        assert!(!s.allowed_hosts.allows("evil.example.com"));
    }

    #[test]
    fn cluster_wide_write_is_lifted_only_by_its_flag_and_the_defaults_stay_forbidden() {
        let lifted = parse(&["--allow-cluster-wide-write"]).unwrap();
        assert!(lifted.policy.allow_cluster_wide_write);
        // Another deny list adds to the defaults and the server's namespace.
        let more = parse(&["--namespace", "auth", "--forbidden-namespace", "vault"]).unwrap();
        for ns in [
            "kube-system",
            "kube-public",
            "kube-node-lease",
            "auth",
            "vault",
        ] {
            assert!(more.policy.forbidden_namespaces.contains(ns), "{ns}");
        }
        assert!(!more.policy.allow_cluster_wide_write);
    }

    #[test]
    fn every_error_names_its_flag() {
        refused(&["--cluster-name", "Prod_EU"], "--cluster-name");
        refused(&["--api-server-url", "http://10.0.0.1"], "--api-server-url");
        refused(&["--namespace", "Not A Namespace"], "--namespace");
        refused(&["--capability", "no-slash"], "--capability");
        refused(&["--compat-capability", "a b/c"], "--compat-capability");
        refused(&["--max-ttl", "0s"], "--max-ttl");
        refused(&["--default-ttl", "abc"], "--default-ttl");
        refused(&["--default-ttl", "9h"], "--default-ttl");
        refused(
            &["--forbidden-namespace", "kube-system,Bad"],
            "--forbidden-namespace",
        );
        refused(&["--ops-listen", "127.0.0.1:80"], "--ops-listen");
        refused(&["--header-timeout", "0s"], "--header-timeout");
        refused(&["--header-timeout", "1h"], "--header-timeout");
        refused(&["--body-timeout", "-3s"], "--body-timeout");
        refused(&["--idle-timeout", "soon"], "--idle-timeout");
        refused(&["--max-header-bytes", "100"], "--max-header-bytes");
        refused(&["--max-connections", "0"], "--max-connections");
        refused(
            &["--max-connections-per-peer", "0"],
            "--max-connections-per-peer",
        );
        refused(&["--service-name", "tka"], "--service-name");
        refused(&["--lease-name", "Bad Lease"], "--lease-name");
        refused(&["--log-filter", "=["], "--log-filter");
        refused(&["--self-node-id", " "], "--self-node-id");
        refused(&["--rate-limit-per-minute", "0"], "--rate-limit-per-minute");
        refused(&["--rate-limit-burst", "0"], "--rate-limit-burst");
        refused(&["--max-body-bytes", "10"], "--max-body-bytes");
        refused(&["--whois-timeout", "-1s"], "--whois-timeout");
        refused(&["--kube-timeout", "soon"], "--kube-timeout");
        refused(&["--shutdown-grace", "0s"], "--shutdown-grace");
        refused(&["--revalidate-every", "0s"], "--revalidate-every");
        refused(&["--api-server-ca-data", "%%%"], "--api-server-ca-data");
        refused(
            &["--api-server-ca-file", "/nonexistent/ca.pem"],
            "--api-server-ca-file",
        );
    }

    #[test]
    fn server_names_are_required() {
        let argv = &BASE[..BASE.len() - 2];
        let cli = Cli::try_parse_from(argv).unwrap();
        let Command::Serve(args) = cli.command else {
            panic!("serve expected");
        };
        let err = Settings::try_from(*args).unwrap_err();
        assert_eq!(err.flag(), "--server-name");
    }

    #[test]
    fn token_lifetime_respects_the_api_server_floor() {
        let message = refused(&["--token-lifetime", "9m59s"], "--token-lifetime");
        assert!(message.contains("600s"), "{message}");
        assert_eq!(
            parse(&["--token-lifetime", "10m"])
                .unwrap()
                .token_lifetime
                .as_secs(),
            600
        );
    }

    #[test]
    fn userspace_mode_refuses_a_non_loopback_bind() {
        let message = refused(&["--listen", "0.0.0.0:80"], "--listen");
        assert!(message.contains("--network-mode userspace"), "{message}");
        refused(&["--listen", "100.64.0.5:80"], "--listen");
        assert_eq!(
            parse(&["--listen", "127.0.0.1:8080"]).unwrap().listen_mode,
            ListenMode::LoopbackOnly
        );
    }

    #[test]
    fn kernel_mode_listens_on_the_tailnet_address() {
        let s = parse(&["--network-mode", "kernel", "--listen", "100.64.0.5:80"]).unwrap();
        assert_eq!(s.listen_mode, ListenMode::Tailnet);
        assert!(s.allowed_hosts.allows("100.64.0.5"));
        refused(
            &["--network-mode", "kernel", "--listen", "127.0.0.1:80"],
            "--listen",
        );
    }

    #[test]
    fn proxy_protocol_refuses_addresses_tailscaled_dials() {
        for listen in ["127.0.0.1:80", "[::1]:80", "0.0.0.0:80", "100.64.0.5:80"] {
            let message = refused(&["--proxy-protocol", "--listen", listen], "--listen");
            assert!(message.contains("--proxy-protocol"), "{message}");
        }
        let s = parse(&[
            "--proxy-protocol",
            "--listen",
            "127.0.0.2:80",
            "--service-name",
            "svc:tka",
        ])
        .unwrap();
        assert_eq!(
            s.listen_mode,
            ListenMode::ProxyProtocol {
                service_name: Some("svc:tka".into())
            }
        );
    }

    #[test]
    fn ca_bundles_are_checked_and_encoded() {
        let dir = tempfile::tempdir().unwrap();
        let pem = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";
        let path = dir.path().join("ca.pem");
        std::fs::write(&path, pem).unwrap();
        let s = parse(&["--api-server-ca-file", path.to_str().unwrap()]).unwrap();
        let data = s.cluster.certificate_authority_data.unwrap();
        assert_eq!(BASE64.decode(&data).unwrap(), pem.as_bytes());

        let s = parse(&["--api-server-ca-data", &data]).unwrap();
        assert_eq!(s.cluster.certificate_authority_data, Some(data));

        let not_pem = dir.path().join("not.pem");
        std::fs::write(&not_pem, "hello").unwrap();
        refused(
            &["--api-server-ca-file", not_pem.to_str().unwrap()],
            "--api-server-ca-file",
        );
    }

    #[test]
    fn listener_limits_have_sane_defaults_and_are_configurable() {
        let s = parse(&[]).unwrap();
        assert_eq!(s.connection_limits, ConnectionLimits::default());
        let s = parse(&[
            "--header-timeout",
            "20s",
            "--body-timeout",
            "30s",
            "--idle-timeout",
            "15s",
            "--max-header-bytes",
            "8192",
            "--max-connections",
            "100",
            "--max-connections-per-peer",
            "4",
        ])
        .unwrap();
        assert_eq!(
            s.connection_limits,
            ConnectionLimits {
                header_timeout: Duration::from_secs(20),
                body_timeout: Duration::from_secs(30),
                idle_timeout: Duration::from_secs(15),
                max_header_bytes: 8192,
                max_connections: 100,
                max_connections_per_peer: 4,
            }
        );
        let message = refused(&["--idle-timeout", "30s"], "--idle-timeout");
        assert!(message.contains("--header-timeout"), "{message}");
        refused(
            &[
                "--max-connections",
                "10",
                "--max-connections-per-peer",
                "11",
            ],
            "--max-connections-per-peer",
        );
    }

    #[test]
    fn ops_never_listens_where_tailnet_traffic_arrives() {
        for ops in ["127.0.0.1:9090", "[::1]:9090", "100.100.1.2:9090"] {
            let message = refused(&["--ops-listen", ops], "--ops-listen");
            assert!(message.contains("POD_IP"), "{message}");
        }
        for ops in ["0.0.0.0:9090", "10.244.0.7:9090", "127.0.0.3:9090"] {
            assert_eq!(
                parse(&["--ops-listen", ops])
                    .unwrap()
                    .ops_listen
                    .to_string(),
                ops
            );
        }
    }

    #[test]
    fn the_proxy_is_off_by_default_and_its_flags_need_it() {
        let s = parse(&[]).unwrap();
        assert!(s.proxy.is_none());
        assert_eq!(s.cluster.proxy, None);
        for flag in [
            "--proxy-only",
            "--proxy-url=http://tka-prod:8443",
            "--proxy-upstream=https://10.0.0.1:6443",
            "--proxy-upstream-ca=/nonexistent",
        ] {
            let name = flag.split('=').next().unwrap();
            let message = refused(&[flag], name);
            assert!(message.contains("--proxy-listen"), "{message}");
        }
    }

    #[test]
    fn the_proxy_listens_in_the_apis_modes_and_advertises_its_url() {
        let s = parse(&["--proxy-listen", "127.0.0.1:8443"]).unwrap();
        let proxy = s.proxy.unwrap();
        assert_eq!(proxy.listen_mode, ListenMode::LoopbackOnly);
        assert_eq!(proxy.url, "http://tka-prod:8443");
        assert_eq!(s.cluster.proxy.as_deref(), Some("http://tka-prod:8443"));
        assert!(!proxy.only);
        assert_eq!(proxy.config.max_streams_per_device, 64);
        assert_eq!(proxy.config.rate_limit.per_minute.get(), 50 * 60);
        assert_eq!(proxy.config.rate_limit.burst.get(), 200);
        assert_eq!(proxy.upstream_timeout, Duration::from_secs(30));
        assert!(proxy.upstream.is_none());
        assert!(proxy.config.allowed_hosts.allows("tka-prod:8443"));
        assert!(proxy.config.allowed_hosts.allows("127.0.0.1:8443"));
        assert!(!proxy.config.allowed_hosts.allows("evil.example.com"));

        let s = parse(&[
            "--proxy-listen",
            "127.0.0.1:8443",
            "--proxy-url",
            "https://tka-proxy.example.ts.net/",
            "--proxy-only",
            "--proxy-upstream",
            "https://kubernetes.default.svc",
            "--proxy-max-streams-per-device",
            "8",
            "--proxy-rate-limit",
            "5",
            "--proxy-rate-limit-burst",
            "10",
            "--proxy-upstream-timeout",
            "5s",
        ])
        .unwrap();
        let proxy = s.proxy.unwrap();
        assert_eq!(proxy.url, "https://tka-proxy.example.ts.net");
        assert!(proxy.only);
        assert_eq!(proxy.config.max_streams_per_device, 8);
        assert_eq!(proxy.config.rate_limit.per_minute.get(), 300);
        assert_eq!(proxy.upstream_timeout, Duration::from_secs(5));
        assert!(
            proxy
                .config
                .allowed_hosts
                .allows("tka-proxy.example.ts.net")
        );

        // Userspace mode: loopback only, as for the API; kernel mode: the tailnet address.
        refused(&["--proxy-listen", "100.64.0.5:8443"], "--proxy-listen");
        let kernel = parse(&[
            "--network-mode",
            "kernel",
            "--listen",
            "100.64.0.5:80",
            "--proxy-listen",
            "100.64.0.5:8443",
        ])
        .unwrap();
        assert_eq!(kernel.proxy.unwrap().listen_mode, ListenMode::Tailnet);
        // PROXY protocol: an address tailscaled never dials.
        let message = refused(
            &[
                "--proxy-protocol",
                "--listen",
                "127.0.0.2:80",
                "--proxy-listen",
                "127.0.0.1:8443",
            ],
            "--proxy-listen",
        );
        assert!(message.contains("--proxy-protocol"), "{message}");
        assert!(
            parse(&[
                "--proxy-protocol",
                "--listen",
                "127.0.0.2:80",
                "--proxy-listen",
                "127.0.0.2:8443",
            ])
            .is_ok()
        );
    }

    #[test]
    fn every_proxy_error_names_its_flag() {
        let on = ["--proxy-listen", "127.0.0.1:8443"];
        let with = |extra: &[&'static str]| {
            let mut argv = on.to_vec();
            argv.extend(extra);
            argv
        };
        refused(&["--proxy-listen", "127.0.0.1:80"], "--proxy-listen");
        refused(
            &with(&["--proxy-upstream", "http://10.0.0.1:6443"]),
            "--proxy-upstream",
        );
        refused(
            &with(&["--proxy-upstream", "not a url"]),
            "--proxy-upstream",
        );
        assert!(parse(&with(&["--proxy-upstream", "http://127.0.0.1:6443"])).is_ok());
        refused(
            &with(&["--proxy-upstream-ca", "/nonexistent/ca.pem"]),
            "--proxy-upstream-ca",
        );
        refused(
            &with(&[
                "--proxy-upstream",
                "https://10.0.0.1:6443",
                "--proxy-upstream-ca",
                "/nonexistent/ca.pem",
            ]),
            "--proxy-upstream-ca",
        );
        refused(&with(&["--proxy-url", "ftp://tka-prod"]), "--proxy-url");
        refused(&with(&["--proxy-url", "http://tka-prod/x"]), "--proxy-url");
        refused(
            &with(&["--proxy-max-streams-per-device", "0"]),
            "--proxy-max-streams-per-device",
        );
        refused(&with(&["--proxy-rate-limit", "0"]), "--proxy-rate-limit");
        refused(
            &with(&["--proxy-rate-limit-burst", "0"]),
            "--proxy-rate-limit-burst",
        );
        refused(
            &with(&["--proxy-upstream-timeout", "0s"]),
            "--proxy-upstream-timeout",
        );
        refused(
            &with(&["--proxy-upstream-timeout", "1h"]),
            "--proxy-upstream-timeout",
        );
    }

    #[test]
    fn proxy_tls_needs_a_matching_certificate_and_key() {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, text: &str| {
            let path = dir.path().join(name);
            std::fs::write(&path, text).unwrap();
            path.to_str().unwrap().to_owned()
        };
        let pair = rcgen::generate_simple_self_signed(vec!["tka-prod".to_owned()]).unwrap();
        let other = rcgen::generate_simple_self_signed(vec!["tka-prod".to_owned()]).unwrap();
        let cert = write("cert.pem", &pair.cert.pem());
        let key = write("key.pem", &pair.signing_key.serialize_pem());
        let wrong_key = write("other.pem", &other.signing_key.serialize_pem());
        let not_pem = write("not.pem", "hello");
        let on = |extra: &[&str]| {
            let mut argv = vec!["--proxy-listen", "127.0.0.1:8443"];
            argv.extend(extra);
            argv.iter().map(|a| (*a).to_owned()).collect::<Vec<_>>()
        };
        let parse_owned = |argv: Vec<String>| {
            let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
            parse(&argv)
        };
        let refused_owned = |argv: Vec<String>, flag: &str| {
            let err = parse_owned(argv).unwrap_err();
            assert_eq!(err.flag(), flag, "{err}");
        };

        let s = parse_owned(on(&["--proxy-tls-cert", &cert, "--proxy-tls-key", &key])).unwrap();
        let proxy = s.proxy.unwrap();
        let Some(ProxyTls::Files(tls)) = proxy.tls else {
            panic!("TLS from files");
        };
        assert_eq!(tls.alpn_protocols, vec![b"http/1.1".to_vec()]);
        assert_eq!(proxy.url, "https://tka-prod:8443");

        refused_owned(on(&["--proxy-tls-cert", &cert]), "--proxy-tls-key");
        refused_owned(on(&["--proxy-tls-key", &key]), "--proxy-tls-cert");
        refused_owned(
            on(&["--proxy-tls-cert", &not_pem, "--proxy-tls-key", &key]),
            "--proxy-tls-cert",
        );
        refused_owned(
            on(&["--proxy-tls-cert", &cert, "--proxy-tls-key", &not_pem]),
            "--proxy-tls-key",
        );
        refused_owned(
            on(&["--proxy-tls-cert", &cert, "--proxy-tls-key", &wrong_key]),
            "--proxy-tls-key",
        );
        refused_owned(
            on(&[
                "--proxy-tls-cert",
                "/nonexistent.pem",
                "--proxy-tls-key",
                &key,
            ]),
            "--proxy-tls-cert",
        );
        let message = refused(&["--proxy-tls-cert", &cert], "--proxy-tls-cert");
        assert!(message.contains("--proxy-listen"), "{message}");

        // The tailnet certificate: a MagicDNS name, which the URL then uses.
        let s = parse_owned(on(&[
            "--proxy-tls-tailnet-cert",
            "TKA-prod.example.ts.net.",
        ]))
        .unwrap();
        let proxy = s.proxy.unwrap();
        assert!(matches!(&proxy.tls, Some(ProxyTls::Tailnet(d)) if d == "tka-prod.example.ts.net"));
        assert_eq!(proxy.url, "https://tka-prod.example.ts.net:8443");
        assert!(
            proxy
                .config
                .allowed_hosts
                .allows("tka-prod.example.ts.net:8443")
        );
        refused_owned(
            on(&["--proxy-tls-tailnet-cert", "tka-prod"]),
            "--proxy-tls-tailnet-cert",
        );
    }

    #[test]
    fn leader_election_can_be_turned_off() {
        assert_eq!(
            parse(&["--leader-election", "false"])
                .unwrap()
                .leader_election,
            None
        );
    }

    #[test]
    fn revalidation_defaults_to_five_minutes_and_refuses_less_than_a_second() {
        assert_eq!(
            parse(&[]).unwrap().revalidate_every,
            SignedDuration::from_mins(5)
        );
        assert_eq!(
            parse(&["--revalidate-every", "2s"])
                .unwrap()
                .revalidate_every,
            SignedDuration::from_secs(2)
        );
        for short in ["0s", "500ms", "-5s"] {
            let message = refused(&["--revalidate-every", short], "--revalidate-every");
            assert!(
                message.contains("1s") || message.contains("positive"),
                "{short}: {message}"
            );
        }
        let message = refused(&["--revalidate-every", "900ms"], "--revalidate-every");
        assert!(message.contains("shorter than 1s"), "{message}");
        refused(&["--revalidate-every", "often"], "--revalidate-every");
    }
}
