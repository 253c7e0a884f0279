//! A small blocking client for the tka server's API (`/api/v1`). No async runtime: the CLI makes
//! one or two calls and exits.
//!
//! Ambient `HTTP_PROXY`/`HTTPS_PROXY`/`ALL_PROXY` are never used: the server identifies callers by
//! the tailnet address a connection comes from, so a proxy would be the one identified. The only
//! proxy is an explicit SOCKS5 setting. Every call has a timeout; redirects are not followed;
//! bodies are bounded; RFC 9457 problem documents become [`ApiError::Problem`].
//!
//! It owns the wire: requests, timeouts, reading answers into [`ApiError`]s. It must not decide
//! what an answer means for a command (that is [`crate::error`]'s and the commands' job) and
//! imports no module of this crate but [`crate::exit`].

use std::io;
use std::time::Duration;

use serde::de::DeserializeOwned;
use tka_core::api::{
    API_PREFIX, ClusterResponse, LoginRequest, LoginResponse, Problem, SessionInfo, TokenResponse,
};
use tka_core::endpoint::{ServerUrl, Socks5Addr};

use crate::exit::Exit;

/// The largest response body read.
const BODY_LIMIT: u64 = 1024 * 1024;

/// How to reach servers.
#[derive(Debug, Clone)]
pub(crate) struct Network {
    /// The explicit SOCKS5 proxy, if any.
    pub(crate) socks5: Option<Socks5Addr>,
    /// The timeout of each call, connecting included.
    pub(crate) timeout: Duration,
}

/// A failed API call.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub(crate) enum ApiError {
    /// No answer: connection refused, name not found, timeout, TLS failure.
    #[error("cannot reach the tka server at {server}: {reason}")]
    Unreachable {
        /// The server.
        server: ServerUrl,
        /// What went wrong, briefly.
        reason: String,
        /// Whether a SOCKS5 proxy was in the way.
        via_socks5: bool,
    },
    /// The server answered with a problem document.
    #[error("{}", .problem.detail)]
    Problem {
        /// The server.
        server: ServerUrl,
        /// The problem.
        problem: Box<Problem>,
    },
    /// The server answered with an error status and no problem document.
    #[error("the tka server at {server} answered {status}{}", describe_body(.body))]
    Status {
        /// The server.
        server: ServerUrl,
        /// The HTTP status.
        status: u16,
        /// The start of the body.
        body: String,
    },
    /// A success status with a body that is not what the API promises.
    #[error("the tka server at {server} sent a response tka cannot read: {reason}")]
    InvalidResponse {
        /// The server.
        server: ServerUrl,
        /// Why.
        reason: String,
    },
}

fn describe_body(body: &str) -> String {
    if body.is_empty() {
        String::new()
    } else {
        format!(": {body}")
    }
}

impl ApiError {
    pub(crate) fn exit(&self) -> Exit {
        match self {
            Self::Unreachable { .. } => Exit::Unreachable,
            Self::Problem { problem, .. } if problem.status == 403 => Exit::NotAuthorized,
            Self::Problem { problem, .. } if problem.status >= 500 => Exit::Unreachable,
            Self::Status { status, .. } if *status >= 500 => Exit::Unreachable,
            Self::Problem { .. } | Self::Status { .. } | Self::InvalidResponse { .. } => {
                Exit::Failure
            }
        }
    }

    pub(crate) fn hint(&self) -> Option<String> {
        match self {
            Self::Unreachable {
                server, via_socks5, ..
            } => Some(if *via_socks5 {
                format!(
                    "check that the SOCKS5 proxy (--socks5 / TKA_SOCKS5) is running and that {server} is the right server"
                )
            } else {
                format!(
                    "check that Tailscale is up (`tailscale status`) and that {server} is the right server; \
                     with userspace networking, set --socks5 HOST:PORT"
                )
            }),
            Self::Problem { problem, .. } if problem.status >= 500 => Some(
                "the tka server failed; try again, and tell the cluster's operator if it persists"
                    .to_owned(),
            ),
            Self::Status { status: 404, .. } => {
                Some("check --server: it must be the URL of a tka server".to_owned())
            }
            Self::Status { .. } | Self::InvalidResponse { .. } => Some(
                "check --server, and that tka and the tka server are recent versions".to_owned(),
            ),
            Self::Problem { .. } => None,
        }
    }
}

/// The API of one tka server.
#[derive(Debug)]
pub(crate) struct ApiClient {
    agent: ureq::Agent,
    server: ServerUrl,
    via_socks5: bool,
}

impl ApiClient {
    pub(crate) fn new(server: ServerUrl, network: &Network) -> Result<Self, ApiError> {
        let proxy = match &network.socks5 {
            Some(socks5) => Some(ureq::Proxy::new(&socks5.client_proxy_url()).map_err(|e| {
                ApiError::Unreachable {
                    server: server.clone(),
                    reason: format!("the SOCKS5 proxy {socks5} cannot be used: {e}"),
                    via_socks5: true,
                }
            })?),
            None => None,
        };
        let config = ureq::Agent::config_builder()
            // Never the environment's proxy: see the module documentation.
            .proxy(proxy)
            .timeout_global(Some(network.timeout))
            .http_status_as_error(false)
            .max_redirects(0)
            .max_redirects_will_error(false)
            .user_agent(concat!("tka/", env!("CARGO_PKG_VERSION")))
            .accept("application/json, application/problem+json")
            .build();
        Ok(Self {
            agent: config.into(),
            via_socks5: network.socks5.is_some(),
            server,
        })
    }

    /// `POST /api/v1/login`.
    pub(crate) fn login(&self, request: &LoginRequest) -> Result<LoginResponse, ApiError> {
        let body = serde_json::to_string(request).map_err(|e| self.invalid(e.to_string()))?;
        let response = self
            .agent
            .post(self.url("/login"))
            .content_type("application/json")
            .send(body.as_str());
        self.json(response)
    }

    /// `POST /api/v1/token` with `{}`.
    pub(crate) fn token(&self) -> Result<TokenResponse, ApiError> {
        let response = self
            .agent
            .post(self.url("/token"))
            .content_type("application/json")
            .send("{}");
        self.json(response)
    }

    /// `GET /api/v1/cluster`: the cluster, the roles this caller could get, its session.
    pub(crate) fn cluster(&self) -> Result<ClusterResponse, ApiError> {
        let response = self.agent.get(self.url("/cluster")).call();
        self.json(response)
    }

    /// `GET /api/v1/session`: the caller's live session (404 when there is none).
    pub(crate) fn session(&self) -> Result<SessionInfo, ApiError> {
        let response = self.agent.get(self.url("/session")).call();
        self.json(response)
    }

    /// `DELETE /api/v1/session`. A missing session is not an error: logout is idempotent.
    pub(crate) fn logout(&self) -> Result<(), ApiError> {
        let response = self.agent.delete(self.url("/session")).call();
        match self.read(response)? {
            (200..=299, _) => Ok(()),
            (status, body) => match self.error(status, &body) {
                ApiError::Problem { problem, .. } if problem.status == 404 => Ok(()),
                ApiError::Status { status: 404, .. } => Ok(()),
                other => Err(other),
            },
        }
    }

    fn url(&self, path: &str) -> String {
        self.server.join(&format!("{API_PREFIX}{path}"))
    }

    fn json<T: DeserializeOwned>(
        &self,
        response: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
    ) -> Result<T, ApiError> {
        match self.read(response)? {
            (200..=299, body) => {
                serde_json::from_str(&body.text).map_err(|e| self.invalid(e.to_string()))
            }
            (status, body) => Err(self.error(status, &body)),
        }
    }

    fn read(
        &self,
        response: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
    ) -> Result<(u16, Body), ApiError> {
        let mut response = response.map_err(|e| self.unreachable(&e))?;
        let status = response.status().as_u16();
        let problem = response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|ct| ct.starts_with(Problem::CONTENT_TYPE));
        let text = response
            .body_mut()
            .with_config()
            .limit(BODY_LIMIT)
            .read_to_string()
            .map_err(|e| self.unreachable(&e))?;
        Ok((status, Body { text, problem }))
    }

    fn error(&self, status: u16, body: &Body) -> ApiError {
        if body.problem
            && let Ok(problem) = serde_json::from_str::<Problem>(&body.text)
        {
            return ApiError::Problem {
                server: self.server.clone(),
                problem: Box::new(problem),
            };
        }
        let mut snippet: String = body
            .text
            .chars()
            .take(200)
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect();
        snippet.truncate(snippet.trim_end().len());
        ApiError::Status {
            server: self.server.clone(),
            status,
            body: snippet,
        }
    }

    fn unreachable(&self, error: &ureq::Error) -> ApiError {
        ApiError::Unreachable {
            server: self.server.clone(),
            reason: describe_transport(error),
            via_socks5: self.via_socks5,
        }
    }

    fn invalid(&self, reason: String) -> ApiError {
        ApiError::InvalidResponse {
            server: self.server.clone(),
            reason,
        }
    }
}

struct Body {
    text: String,
    problem: bool,
}

/// A short reason for a transport failure.
fn describe_transport(error: &ureq::Error) -> String {
    match error {
        ureq::Error::Timeout(_) => "timed out (see --timeout)".to_owned(),
        ureq::Error::HostNotFound => "host not found".to_owned(),
        ureq::Error::Io(e) => match e.kind() {
            io::ErrorKind::ConnectionRefused => "connection refused".to_owned(),
            io::ErrorKind::TimedOut => "timed out (see --timeout)".to_owned(),
            io::ErrorKind::ConnectionReset | io::ErrorKind::ConnectionAborted => {
                "the connection was closed".to_owned()
            }
            _ => e.to_string(),
        },
        ureq::Error::ConnectProxyFailed(reason) => format!("the proxy refused: {reason}"),
        ureq::Error::BodyExceedsLimit(_) => "the response is too large".to_owned(),
        other => other.to_string(),
    }
}
