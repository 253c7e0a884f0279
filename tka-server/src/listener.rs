//! The API listener: which connections the login API accepts, and whose address whois is asked
//! about. Three modes ([`ListenMode`]):
//!
//! - `Tailnet` (kernel networking): any peer; whois on its address decides.
//! - `LoopbackOnly` (userspace networking): tailscaled re-dials tailnet connections to 127.0.0.1,
//!   so only loopback peers are accepted; others are dropped at accept.
//! - `ProxyProtocol` (HA behind a Tailscale Service): every connection must start with a valid
//!   PROXY protocol v2 header, read (with a deadline, off the accept loop) before any HTTP; the
//!   header's source address, and the service it names, are what whois is asked about.
//!   Connections without one are closed. The listener address must be one tailscaled never
//!   dials (checked by [`crate::settings`]), or a peer could send its own header.
//!
//! The ops listener ([`OpsListener`]) never serves the tailnet: it drops connections that
//! arrived at an address where tailnet traffic is delivered ([`tailnet_delivers_to`]).
//!
//! Parsing uses the `ppp` crate. This module knows nothing about HTTP.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::connect_info::Connected;
use axum::serve::{IncomingStream, Listener};
use ppp::v2;
use tokio::io::{AsyncRead, AsyncReadExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;

/// How the API listener treats connections.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenMode {
    /// Kernel networking: any peer, identified by its own address.
    Tailnet,
    /// Userspace networking: only loopback peers.
    LoopbackOnly,
    /// PROXY protocol v2 from a loopback peer; whois asks about the header's source.
    ProxyProtocol {
        /// The service connections are addressed to, when the header does not name one.
        service_name: Option<String>,
    },
}

/// Who is at the other end of an API connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    /// The TCP peer of the accepted connection.
    pub transport: SocketAddr,
    /// The address whois is asked about: the TCP peer, or the PROXY header's source.
    pub remote: SocketAddr,
    /// The Tailscale Service the connection was addressed to, when the PROXY header said so.
    pub svc_name: Option<String>,
}

impl Peer {
    /// A peer identified by its own TCP address.
    pub fn direct(remote: SocketAddr) -> Self {
        Self {
            transport: remote,
            remote,
            svc_name: None,
        }
    }
}

impl Connected<IncomingStream<'_, ApiListener>> for Peer {
    fn connect_info(stream: IncomingStream<'_, ApiListener>) -> Self {
        stream.remote_addr().clone()
    }
}

/// How long a connection may take to send its PROXY header.
pub const PROXY_HEADER_TIMEOUT: Duration = Duration::from_secs(5);

/// How many connections may be sending their PROXY header at once.
const MAX_PENDING_HEADERS: usize = 256;

/// The PROXY v2 TLV type `PP2_TYPE_AUTHORITY`: the host name the client connected to. When it
/// names a Tailscale Service (`svc:name`), grants for that service apply.
const TLV_AUTHORITY: u8 = 0x02;

/// The largest PROXY v2 header accepted (16-byte preamble plus addresses and TLVs).
const MAX_PROXY_HEADER: usize = 16 + 1024;

/// Why a PROXY header was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProxyHeaderError {
    /// The connection did not start with a valid PROXY v2 header.
    #[error("no valid PROXY protocol v2 header: {0}")]
    Invalid(String),
    /// The header is a LOCAL command or carries no IP source: there is no one to identify.
    #[error("the PROXY header names no IP source (LOCAL command or non-IP addresses)")]
    NoSource,
    /// The connection failed while the header was read.
    #[error("reading the PROXY header failed")]
    Io(#[from] io::Error),
    /// The header did not arrive in time.
    #[error("no PROXY header within {0:?}")]
    Timeout(Duration),
}

/// Reads exactly one PROXY v2 header from the start of `stream` and returns the source address
/// and the service name from the `PP2_TYPE_AUTHORITY` TLV, if it names one (`svc:…`). Nothing
/// after the header is read. Generic over the reader so that it can be tested and fuzzed on
/// bytes in memory.
pub async fn read_proxy_header<R: AsyncRead + Unpin>(
    stream: &mut R,
) -> Result<(SocketAddr, Option<String>), ProxyHeaderError> {
    let mut buf = vec![0u8; 16];
    stream.read_exact(&mut buf).await?;
    if !buf.starts_with(v2::PROTOCOL_PREFIX) {
        return Err(ProxyHeaderError::Invalid(
            "the connection did not start with the PROXY v2 signature".into(),
        ));
    }
    let length = usize::from(u16::from_be_bytes([buf[14], buf[15]]));
    if 16 + length > MAX_PROXY_HEADER {
        return Err(ProxyHeaderError::Invalid(format!(
            "header of {length} bytes is too long"
        )));
    }
    buf.resize(16 + length, 0);
    stream.read_exact(&mut buf[16..]).await?;
    let header = v2::Header::try_from(buf.as_slice())
        .map_err(|e| ProxyHeaderError::Invalid(e.to_string()))?;
    if header.command != v2::Command::Proxy || header.protocol != v2::Protocol::Stream {
        return Err(ProxyHeaderError::NoSource);
    }
    let source = match header.addresses {
        v2::Addresses::IPv4(a) => SocketAddr::new(IpAddr::V4(a.source_address), a.source_port),
        v2::Addresses::IPv6(a) => SocketAddr::new(IpAddr::V6(a.source_address), a.source_port),
        _ => return Err(ProxyHeaderError::NoSource),
    };
    let mut svc_name = None;
    for tlv in header.tlvs() {
        let tlv = tlv.map_err(|e| ProxyHeaderError::Invalid(e.to_string()))?;
        if tlv.kind == TLV_AUTHORITY
            && let Ok(authority) = std::str::from_utf8(&tlv.value)
            && authority.starts_with("svc:")
        {
            svc_name = Some(authority.to_owned());
        }
    }
    Ok((source, svc_name))
}

/// The login API's listener (an axum [`Listener`] whose address type is [`Peer`]).
#[derive(Debug)]
pub struct ApiListener {
    local: SocketAddr,
    inner: Inner,
}

#[derive(Debug)]
enum Inner {
    Direct {
        tcp: TcpListener,
        mode: ListenMode,
    },
    Proxy {
        ready: mpsc::Receiver<(TcpStream, Peer)>,
    },
}

impl ApiListener {
    /// Wraps a bound listener. In PROXY mode a task reads headers until `shutdown`.
    pub fn new(
        tcp: TcpListener,
        mode: &ListenMode,
        shutdown: &CancellationToken,
    ) -> io::Result<Self> {
        let local = tcp.local_addr()?;
        let inner = match mode {
            ListenMode::Tailnet | ListenMode::LoopbackOnly => Inner::Direct {
                tcp,
                mode: mode.clone(),
            },
            ListenMode::ProxyProtocol { service_name } => {
                let (tx, ready) = mpsc::channel(64);
                tokio::spawn(accept_proxied(
                    tcp,
                    service_name.clone(),
                    tx,
                    shutdown.clone(),
                ));
                Inner::Proxy { ready }
            }
        };
        Ok(Self { local, inner })
    }
}

/// Whether `mode` accepts a TCP peer at `addr`.
pub fn accepts_peer(mode: &ListenMode, addr: IpAddr) -> bool {
    match mode {
        ListenMode::Tailnet => true,
        ListenMode::LoopbackOnly | ListenMode::ProxyProtocol { .. } => {
            addr.to_canonical().is_loopback()
        }
    }
}

async fn backoff_after(e: &io::Error) {
    // Out of file descriptors and the like: give the process a moment instead of spinning.
    tracing::error!(error = %e, "accepting an API connection failed");
    tokio::time::sleep(Duration::from_millis(250)).await;
}

async fn accept_proxied(
    tcp: TcpListener,
    service_name: Option<String>,
    ready: mpsc::Sender<(TcpStream, Peer)>,
    shutdown: CancellationToken,
) {
    let pending = Arc::new(Semaphore::new(MAX_PENDING_HEADERS));
    loop {
        let accepted = tokio::select! {
            () = shutdown.cancelled() => return,
            accepted = tcp.accept() => accepted,
        };
        let (mut stream, transport) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                backoff_after(&e).await;
                continue;
            }
        };
        if !accepts_peer(
            &ListenMode::ProxyProtocol { service_name: None },
            transport.ip(),
        ) {
            tracing::warn!(peer = %transport, "refused a PROXY-protocol connection from a non-loopback peer");
            continue;
        }
        let Ok(permit) = pending.clone().try_acquire_owned() else {
            tracing::warn!("too many connections are sending their PROXY header; closing one");
            continue;
        };
        let ready = ready.clone();
        let service_name = service_name.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let header =
                match tokio::time::timeout(PROXY_HEADER_TIMEOUT, read_proxy_header(&mut stream))
                    .await
                {
                    Ok(header) => header,
                    Err(_) => Err(ProxyHeaderError::Timeout(PROXY_HEADER_TIMEOUT)),
                };
            match header {
                Ok((remote, svc_name)) => {
                    let peer = Peer {
                        transport,
                        remote,
                        svc_name: svc_name.or(service_name),
                    };
                    // A closed channel means the server is shutting down; the stream drops.
                    let _ = ready.send((stream, peer)).await;
                }
                Err(e) => {
                    tracing::warn!(peer = %transport, error = %e, "closed an API connection without a valid PROXY header");
                }
            }
        });
    }
}

impl Listener for ApiListener {
    type Io = TcpStream;
    type Addr = Peer;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            match &mut self.inner {
                Inner::Direct { tcp, mode } => match TcpListener::accept(tcp).await {
                    Ok((stream, remote)) => {
                        if !accepts_peer(mode, remote.ip()) {
                            tracing::warn!(peer = %remote, "refused a non-loopback connection (userspace networking accepts only loopback peers)");
                            continue;
                        }
                        return (stream, Peer::direct(remote));
                    }
                    Err(e) => backoff_after(&e).await,
                },
                Inner::Proxy { ready } => match ready.recv().await {
                    Some(accepted) => return accepted,
                    // The header task ended (shutdown); axum stops accepting once shutdown is
                    // signalled, so wait for that instead of spinning.
                    None => std::future::pending::<()>().await,
                },
            }
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        Ok(Peer::direct(self.local))
    }
}

/// Whether tailnet traffic can arrive at local address `local`, so the ops listener must not
/// answer there: 127.0.0.1 and ::1 (a userspace-networking tailscaled re-dials every inbound
/// tailnet connection, for any port, to these), Tailscale's address ranges 100.64.0.0/10 and
/// fd7a:115c:a1e0::/48 (kernel networking), and the API's own listen address.
pub fn tailnet_delivers_to(local: IpAddr, api_listen: IpAddr) -> bool {
    let local = local.to_canonical();
    if local == IpAddr::from([127, 0, 0, 1]) || local == IpAddr::from(std::net::Ipv6Addr::LOCALHOST)
    {
        return true;
    }
    if !api_listen.is_unspecified() && local == api_listen.to_canonical() {
        return true;
    }
    match local {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            a == 100 && (64..128).contains(&b)
        }
        IpAddr::V6(v6) => {
            let s = v6.segments();
            s[0] == 0xfd7a && s[1] == 0x115c && s[2] == 0xa1e0
        }
    }
}

/// The ops listener: a TCP listener that drops connections which arrived where tailnet traffic
/// is delivered (see [`tailnet_delivers_to`]), so `/metrics` is never readable from the
/// tailnet whatever `--ops-listen` binds.
#[derive(Debug)]
pub struct OpsListener {
    tcp: TcpListener,
    api_listen: IpAddr,
}

impl OpsListener {
    /// Wraps a bound listener; `api_listen` is the API's listen address.
    pub fn new(tcp: TcpListener, api_listen: IpAddr) -> Self {
        Self { tcp, api_listen }
    }
}

impl Listener for OpsListener {
    type Io = TcpStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            match self.tcp.accept().await {
                Ok((stream, remote)) => {
                    let Ok(local) = stream.local_addr() else {
                        continue;
                    };
                    if tailnet_delivers_to(local.ip(), self.api_listen) {
                        tracing::debug!(peer = %remote, %local, "ops refused a connection that arrived where tailnet traffic is delivered");
                        continue;
                    }
                    return (stream, remote);
                }
                Err(e) => backoff_after(&e).await,
            }
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.tcp.local_addr()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ops_refuses_where_tailnet_traffic_arrives() {
        let api: IpAddr = "127.0.0.1".parse().unwrap();
        let kernel_api: IpAddr = "100.64.0.5".parse().unwrap();
        for refused in [
            "127.0.0.1",
            "::1",
            "::ffff:127.0.0.1",
            "100.64.0.5",
            "100.127.255.1",
            "fd7a:115c:a1e0::5",
        ] {
            assert!(
                tailnet_delivers_to(refused.parse().unwrap(), api),
                "{refused}"
            );
        }
        assert!(tailnet_delivers_to(
            "192.0.2.9".parse().unwrap(),
            "192.0.2.9".parse().unwrap()
        ));
        for allowed in [
            "10.244.1.7",
            "127.0.0.3",
            "192.168.0.4",
            "100.128.0.1",
            "fd00::7",
        ] {
            assert!(
                !tailnet_delivers_to(allowed.parse().unwrap(), kernel_api),
                "{allowed}"
            );
        }
    }

    #[test]
    fn userspace_and_proxy_modes_accept_only_loopback_peers() {
        let loopback: IpAddr = "127.0.0.1".parse().unwrap();
        let mapped: IpAddr = "::ffff:127.0.0.1".parse().unwrap();
        let tailnet: IpAddr = "100.64.0.7".parse().unwrap();
        assert!(accepts_peer(&ListenMode::LoopbackOnly, loopback));
        assert!(accepts_peer(&ListenMode::LoopbackOnly, mapped));
        assert!(!accepts_peer(&ListenMode::LoopbackOnly, tailnet));
        let proxy = ListenMode::ProxyProtocol { service_name: None };
        assert!(accepts_peer(&proxy, loopback));
        assert!(!accepts_peer(&proxy, tailnet));
        assert!(accepts_peer(&ListenMode::Tailnet, tailnet));
    }
}
