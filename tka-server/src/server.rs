//! Running the listeners until shutdown: the login API (on an [`ApiListener`], with each
//! connection's [`Peer`] as connect info), the ops endpoints, and the tailnet API proxy when
//! it is turned on ([`Server::with_proxy`], on a listener of its own in the same modes as the
//! API, with its sweeper as a background task). Shutdown is a
//! [`CancellationToken`]: cancelling it (SIGTERM does, see [`shutdown_on_signal`]) stops accepting,
//! lets in-flight requests finish for at most the grace period, and tells background tasks
//! ([`Server::spawn_task`], e.g. the reconciler) to stop.
//!
//! Every listener is served by [`connections::serve`] under the same [`ConnectionLimits`]
//! (deadlines and connection caps); API and proxy connections count per tailnet node (whois at
//! accept), ops connections per address. The ops listener is an [`OpsListener`]: it never answers where
//! tailnet traffic arrives.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::connections::{self, ByAddress, ByNode, ConnectionLimits, Serving};
use crate::listener::{ApiListener, ListenMode, OpsListener, Peer};
use crate::proxy::Proxy;
use crate::routes::api_router;
use crate::state::ApiState;

/// How often the rate limiter forgets idle devices.
const FORGET_IDLE_EVERY: Duration = Duration::from_secs(60);

/// A bound server, ready to run.
#[derive(Debug)]
pub struct Server {
    api_listener: ApiListener,
    api_addr: SocketAddr,
    ops_listener: OpsListener,
    ops_addr: SocketAddr,
    limits: ConnectionLimits,
    api: Router,
    ops: Router,
    state: Arc<ApiState>,
    shutdown: CancellationToken,
    grace: Duration,
    tasks: JoinSet<()>,
    proxy: Option<ProxyListener>,
}

/// The proxy's listener and service.
#[derive(Debug)]
struct ProxyListener {
    listener: ApiListener,
    addr: SocketAddr,
    proxy: Arc<Proxy>,
    tls: Option<Arc<tokio_rustls::rustls::ServerConfig>>,
}

impl Server {
    /// Binds both listeners. Fails with the address if one cannot be bound.
    pub async fn bind(
        api_addr: SocketAddr,
        mode: &ListenMode,
        ops_addr: SocketAddr,
        state: Arc<ApiState>,
        ops: Router,
        shutdown: CancellationToken,
        grace: Duration,
    ) -> io::Result<Self> {
        let api_tcp = TcpListener::bind(api_addr).await.map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("cannot listen on {api_addr} (--listen): {e}"),
            )
        })?;
        let ops_listener = TcpListener::bind(ops_addr).await.map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("cannot listen on {ops_addr} (--ops-listen): {e}"),
            )
        })?;
        let api_addr = api_tcp.local_addr()?;
        let ops_addr = ops_listener.local_addr()?;
        let api_listener = ApiListener::new(api_tcp, mode, &shutdown)?;
        Ok(Self {
            api_listener,
            api_addr,
            ops_listener: OpsListener::new(ops_listener, api_addr.ip()),
            ops_addr,
            limits: ConnectionLimits::default(),
            api: api_router(Arc::clone(&state)),
            ops,
            state,
            shutdown,
            grace,
            tasks: JoinSet::new(),
            proxy: None,
        })
    }

    /// Binds the tailnet API proxy at `addr` in `mode` (the API listener's modes), serving TLS
    /// with `tls` when given, and runs its sweeper for the server's lifetime. Fails with the
    /// address if it cannot be bound.
    pub async fn with_proxy(
        mut self,
        addr: SocketAddr,
        mode: &ListenMode,
        proxy: Arc<Proxy>,
        tls: Option<Arc<tokio_rustls::rustls::ServerConfig>>,
    ) -> io::Result<Self> {
        let tcp = TcpListener::bind(addr).await.map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("cannot listen on {addr} (--proxy-listen): {e}"),
            )
        })?;
        let addr = tcp.local_addr()?;
        let listener = ApiListener::new(tcp, mode, &self.shutdown)?;
        let sweeper = Arc::clone(&proxy);
        self.spawn_task(|shutdown| sweeper.run(shutdown));
        self.proxy = Some(ProxyListener {
            listener,
            addr,
            proxy,
            tls,
        });
        Ok(self)
    }

    /// The proxy, when it is on (for tests and diagnostics).
    pub fn proxy(&self) -> Option<Arc<Proxy>> {
        self.proxy.as_ref().map(|p| Arc::clone(&p.proxy))
    }

    /// Where the proxy listens, when it is on.
    pub fn proxy_addr(&self) -> Option<SocketAddr> {
        self.proxy.as_ref().map(|p| p.addr)
    }

    /// Serves with `limits` instead of the defaults.
    #[must_use]
    pub fn with_connection_limits(mut self, limits: ConnectionLimits) -> Self {
        self.limits = limits;
        self
    }

    /// Where the API listens (with the port the OS picked for port 0).
    pub fn api_addr(&self) -> SocketAddr {
        self.api_addr
    }

    /// Where the ops endpoints listen.
    pub fn ops_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.ops_addr)
    }

    /// The token that shuts the server down.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Runs a background task for the server's lifetime (the reconciler's loop goes here). It is
    /// handed the shutdown token and must return soon after it is cancelled.
    pub fn spawn_task<F, Fut>(&mut self, task: F)
    where
        F: FnOnce(CancellationToken) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.tasks.spawn(task(self.shutdown.clone()));
    }

    /// Serves until the shutdown token is cancelled, then drains in-flight requests for at most
    /// the grace period and waits for background tasks for what is left of it.
    pub async fn run(mut self) -> io::Result<()> {
        let limiter_state = Arc::clone(&self.state);
        self.spawn_task(|shutdown| async move {
            loop {
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(FORGET_IDLE_EVERY) => limiter_state.rate_limiter.forget_idle(),
                }
            }
        });

        let stop = self.shutdown.clone();
        let keyer = ByNode::new(
            Arc::clone(&self.state.backends.identity),
            self.state.config.whois_timeout,
            self.state.config.service_name.clone(),
        );
        let metrics = Arc::clone(&self.state.metrics);
        let on_refused: connections::OnRefused = Arc::new(move |listener, cap| {
            metrics.connection_refused(listener, cap);
        });
        let keyer: Arc<dyn connections::PeerKeyer> = Arc::new(keyer);
        let proxy = self.proxy.map(|p| {
            let serving = Serving {
                name: "proxy",
                router: crate::proxy::router(&p.proxy),
                limits: self.limits,
                keyer: Arc::clone(&keyer),
                on_refused: Arc::clone(&on_refused),
                tls: p.tls.map(tokio_rustls::TlsAcceptor::from),
            };
            tracing::info!(proxy = %p.addr, "serving the tailnet API proxy");
            connections::serve(serving, p.listener, |peer: Peer| peer, stop.clone())
        });
        let proxy = async move {
            if let Some(proxy) = proxy {
                proxy.await;
            }
        };
        let api = connections::serve(
            Serving {
                name: "api",
                router: self.api,
                limits: self.limits,
                keyer,
                on_refused: Arc::clone(&on_refused),
                tls: None,
            },
            self.api_listener,
            |peer: Peer| peer,
            stop.clone(),
        );
        let ops = connections::serve(
            Serving {
                name: "ops",
                router: self.ops,
                limits: self.limits,
                keyer: Arc::new(ByAddress),
                on_refused,
                tls: None,
            },
            self.ops_listener,
            Peer::direct,
            stop.clone(),
        );
        tracing::info!(api = %self.api_addr, ops = %self.ops_addr, "serving");

        let grace = self.grace;
        let deadline = async {
            stop.cancelled().await;
            tokio::time::sleep(grace).await;
        };
        let served = tokio::select! {
            ((), (), ()) = async { tokio::join!(api, ops, proxy) } => Ok(()),
            () = deadline => {
                tracing::warn!(grace_secs = grace.as_secs(), "in-flight requests did not finish within the shutdown grace period");
                Ok(())
            }
        };
        // Whatever ended serving, background tasks must stop too.
        stop.cancel();
        let drained = tokio::time::timeout(grace, async {
            while self.tasks.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            tracing::warn!("background tasks did not stop within the shutdown grace period");
            self.tasks.abort_all();
        }
        tracing::info!("stopped");
        served
    }
}

/// Cancels `token` on SIGTERM or Ctrl-C.
pub async fn shutdown_on_signal(token: CancellationToken) {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
    tracing::info!("shutting down: draining in-flight requests");
    token.cancel();
}
