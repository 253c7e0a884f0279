//! [`ApiError`]: every way an API request can fail, and the ONE place where failures become HTTP
//! responses (RFC 9457 `application/problem+json`, [`tka_core::api::Problem`]). Domain errors
//! ([`IdentityError`], [`IssueError`], [`Denial`]) are classified here, walking `source()` where a
//! cause decides the status, and so are the sessions service's ([`SessionError`]). Every problem
//! carries a typed [`ProblemCode`]. Handlers return `Result<_, ApiError>` and never build error
//! responses themselves; they document their error statuses with [`ProblemResponses`] instead of
//! listing them by hand. Problems carry the request ID in `instance`; they never carry a token.
//! This module must not import the handlers, the router or the state.

use std::error::Error as StdError;
use std::time::Duration;

use axum::response::{IntoResponse, Response};
use http::{HeaderValue, StatusCode, header};
use tka_core::Denial;
use tka_core::api::{Problem, ProblemCode};
use tka_core::identity::IdentityError;
use tka_core::issuer::IssueError;

use crate::ratelimit::RateLimited;
use crate::request_id::RequestId;
use crate::sessions::SessionError;

/// Why an API request failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ApiError {
    /// The request carries an `Origin` header: it came from a browser page.
    #[error(
        "requests from web pages are refused (the request has an Origin header); use the tka CLI or curl"
    )]
    OriginRefused,
    /// `Sec-Fetch-Site` or `Referer` says another site made the request.
    #[error("requests made by another web site are refused ({0})")]
    CrossSite(String),
    /// The `Host` is none of the server's names or addresses (DNS rebinding).
    #[error(
        "Host {0:?} is not one of this server's names; connect to the server by its tailnet name or address"
    )]
    HostNotAllowed(String),
    /// The connection came from a peer this listener must not serve.
    #[error("connections from {0} are not accepted by this listener")]
    PeerNotAllowed(std::net::IpAddr),
    /// whois failed: an unknown caller, or tailscaled could not answer.
    #[error(transparent)]
    Identity(#[from] IdentityError),
    /// whois named the server's own node.
    #[error("the server does not serve requests from its own tailnet node")]
    SelfNode,
    /// The device made too many requests.
    #[error("too many requests from this device; try again in {}s", retry_after_secs(*.retry_after))]
    RateLimited {
        /// When the next request will be accepted.
        retry_after: Duration,
    },
    /// A POST without `Content-Type: application/json`.
    #[error("send the request body as JSON with Content-Type: application/json (got {0})")]
    UnsupportedMediaType(String),
    /// The body is larger than the cap.
    #[error("the request body is larger than {limit} bytes")]
    BodyTooLarge {
        /// The cap in bytes.
        limit: usize,
    },
    /// The body did not arrive within the body deadline.
    #[error("the request body did not arrive within {}s; send it at once", .after.as_secs_f32())]
    BodyTimeout {
        /// The deadline.
        after: Duration,
    },
    /// The request is malformed (its body, or its headers).
    #[error("{0}")]
    BadRequest(String),
    /// A listener, or one device on it, is at its connection limit.
    #[error("too many connections {scope} (at most {limit}); close some or try again shortly")]
    TooManyConnections {
        /// The limit that was reached.
        limit: usize,
        /// Whose connections: "on this listener" or "from this device".
        scope: &'static str,
    },
    /// The sessions service refused or failed (policy, the grant, the session, the issuer).
    #[error(transparent)]
    Session(#[from] SessionError),
    /// An outbound call did not finish within its deadline.
    #[error("{what} did not answer within {}s; try again", .after.as_secs_f32())]
    Timeout {
        /// What was called ("tailscaled", "the Kubernetes API").
        what: &'static str,
        /// The deadline.
        after: Duration,
    },
    /// No such endpoint.
    #[error("no such endpoint; see /api/v1/openapi.json")]
    NotFound,
    /// The endpoint exists but not with this method.
    #[error("this endpoint does not take this method; see /api/v1/openapi.json")]
    MethodNotAllowed,
    /// A bug or an impossible state; details are logged, not sent.
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<Denial> for ApiError {
    fn from(denial: Denial) -> Self {
        Self::Session(SessionError::Denied(Box::new(denial)))
    }
}

impl From<RateLimited> for ApiError {
    fn from(RateLimited { retry_after }: RateLimited) -> Self {
        Self::RateLimited { retry_after }
    }
}

impl From<IssueError> for ApiError {
    fn from(error: IssueError) -> Self {
        Self::Session(SessionError::Issue(error))
    }
}

fn retry_after_secs(d: Duration) -> u64 {
    // Round up, and never tell a client to retry "in 0s".
    d.as_secs() + u64::from(d.subsec_nanos() > 0).max(u64::from(d.as_secs() == 0))
}

/// Whether `error` or any of its sources is a `T`.
pub fn find_cause<'a, T: StdError + 'static>(error: &'a (dyn StdError + 'static)) -> Option<&'a T> {
    let mut current = Some(error);
    // Source chains are short; the bound only guards against a cyclic chain.
    for _ in 0..32 {
        let e = current?;
        if let Some(found) = e.downcast_ref::<T>() {
            return Some(found);
        }
        current = e.source();
    }
    None
}

/// How a failure is presented: status, stable code, title.
struct Class {
    status: StatusCode,
    code: ProblemCode,
    title: &'static str,
    retry_after: Option<u64>,
}

const fn class(status: StatusCode, code: ProblemCode, title: &'static str) -> Class {
    Class {
        status,
        code,
        title,
        retry_after: None,
    }
}

fn classify_identity(e: &IdentityError) -> Class {
    match e {
        IdentityError::NotInTailnet(_) => class(
            StatusCode::FORBIDDEN,
            ProblemCode::UnknownCaller,
            "Caller is not a tailnet peer",
        ),
        IdentityError::Timeout(_) => Class {
            retry_after: Some(1),
            ..class(
                StatusCode::SERVICE_UNAVAILABLE,
                ProblemCode::IdentityUnavailable,
                "Tailscale identity unavailable",
            )
        },
        _ => Class {
            retry_after: Some(2),
            ..class(
                StatusCode::SERVICE_UNAVAILABLE,
                ProblemCode::IdentityUnavailable,
                "Tailscale identity unavailable",
            )
        },
    }
}

fn classify_session(e: &SessionError) -> Class {
    match e {
        SessionError::InvalidRole(_) => class(
            StatusCode::BAD_REQUEST,
            ProblemCode::BadRequest,
            "Bad request",
        ),
        SessionError::Denied(denial) if denial.kind.is_bad_request() => {
            class(StatusCode::BAD_REQUEST, denial.kind.into(), "Bad request")
        }
        SessionError::Denied(denial) => class(StatusCode::FORBIDDEN, denial.kind.into(), "Denied"),
        SessionError::GrantWithdrawn { .. } => class(
            StatusCode::FORBIDDEN,
            ProblemCode::SessionEnded,
            "Grant withdrawn, session ended",
        ),
        SessionError::NoSession => {
            class(StatusCode::NOT_FOUND, ProblemCode::NoSession, "No session")
        }
        SessionError::ProxyOnly { .. } => class(
            StatusCode::FORBIDDEN,
            ProblemCode::ProxyOnly,
            "Reached through the tka proxy only",
        ),
        SessionError::NoProxy { .. } => class(
            StatusCode::CONFLICT,
            ProblemCode::NoProxy,
            "No tka proxy here",
        ),
        SessionError::Issue(e) => classify_issue(e),
        SessionError::Timeout { .. } => timeout_class(),
    }
}

fn timeout_class() -> Class {
    Class {
        retry_after: Some(1),
        ..class(
            StatusCode::GATEWAY_TIMEOUT,
            ProblemCode::Timeout,
            "Upstream timeout",
        )
    }
}

fn classify_issue(e: &IssueError) -> Class {
    match e {
        IssueError::NoSession => class(StatusCode::NOT_FOUND, ProblemCode::NoSession, "No session"),
        IssueError::Expired { .. } => class(
            StatusCode::NOT_FOUND,
            ProblemCode::SessionExpired,
            "Session expired",
        ),
        IssueError::Revoked { .. } => class(
            StatusCode::NOT_FOUND,
            ProblemCode::SessionRevoked,
            "Session revoked",
        ),
        IssueError::IdentityChanged { .. } => class(
            StatusCode::CONFLICT,
            ProblemCode::IdentityChanged,
            "Session belongs to another user",
        ),
        IssueError::Pending { .. } => Class {
            retry_after: Some(2),
            ..class(
                StatusCode::CONFLICT,
                ProblemCode::SessionPending,
                "Session is being set up",
            )
        },
        IssueError::Conflict(_) => Class {
            retry_after: Some(1),
            ..class(
                StatusCode::CONFLICT,
                ProblemCode::Conflict,
                "Concurrent change",
            )
        },
        IssueError::Foreign { .. } => class(
            StatusCode::CONFLICT,
            ProblemCode::ForeignObject,
            "Object not made by tka",
        ),
        IssueError::Unavailable { .. } => Class {
            retry_after: Some(2),
            ..class(
                StatusCode::SERVICE_UNAVAILABLE,
                ProblemCode::ClusterUnavailable,
                "Kubernetes API unavailable",
            )
        },
        IssueError::Backend { .. } if find_cause::<std::io::Error>(e).is_some() => Class {
            retry_after: Some(2),
            ..class(
                StatusCode::SERVICE_UNAVAILABLE,
                ProblemCode::ClusterUnavailable,
                "Kubernetes API unavailable",
            )
        },
        IssueError::Backend { .. } => class(
            StatusCode::BAD_GATEWAY,
            ProblemCode::BackendError,
            "Kubernetes API error",
        ),
        _ => class(
            StatusCode::INTERNAL_SERVER_ERROR,
            ProblemCode::ServerMisconfigured,
            "Server cannot issue credentials",
        ),
    }
}

impl ApiError {
    fn class(&self) -> Class {
        match self {
            Self::OriginRefused => class(
                StatusCode::FORBIDDEN,
                ProblemCode::OriginRefused,
                "Browser requests refused",
            ),
            Self::CrossSite(_) => class(
                StatusCode::FORBIDDEN,
                ProblemCode::CrossSiteRefused,
                "Cross-site request refused",
            ),
            Self::HostNotAllowed(_) => class(
                StatusCode::FORBIDDEN,
                ProblemCode::HostNotAllowed,
                "Unknown Host",
            ),
            Self::PeerNotAllowed(_) => class(
                StatusCode::FORBIDDEN,
                ProblemCode::PeerNotAllowed,
                "Peer not accepted",
            ),
            Self::Identity(e) => classify_identity(e),
            Self::SelfNode => class(
                StatusCode::FORBIDDEN,
                ProblemCode::SelfNode,
                "Requests from the server's own node are refused",
            ),
            Self::RateLimited { retry_after } => Class {
                retry_after: Some(retry_after_secs(*retry_after)),
                ..class(
                    StatusCode::TOO_MANY_REQUESTS,
                    ProblemCode::RateLimited,
                    "Too many requests",
                )
            },
            Self::UnsupportedMediaType(_) => class(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                ProblemCode::UnsupportedMediaType,
                "Body must be JSON",
            ),
            Self::BodyTooLarge { .. } => class(
                StatusCode::PAYLOAD_TOO_LARGE,
                ProblemCode::BodyTooLarge,
                "Request body too large",
            ),
            Self::BodyTimeout { .. } => class(
                StatusCode::REQUEST_TIMEOUT,
                ProblemCode::BodyTimeout,
                "Request body too slow",
            ),
            Self::BadRequest(_) => class(
                StatusCode::BAD_REQUEST,
                ProblemCode::BadRequest,
                "Bad request",
            ),
            Self::TooManyConnections { .. } => Class {
                retry_after: Some(1),
                ..class(
                    StatusCode::SERVICE_UNAVAILABLE,
                    ProblemCode::TooManyConnections,
                    "Too many connections",
                )
            },
            Self::Session(e) => classify_session(e),
            Self::Timeout { .. } => timeout_class(),
            Self::NotFound => class(StatusCode::NOT_FOUND, ProblemCode::NotFound, "Not found"),
            Self::MethodNotAllowed => class(
                StatusCode::METHOD_NOT_ALLOWED,
                ProblemCode::MethodNotAllowed,
                "Method not allowed",
            ),
            Self::Internal(_) => class(
                StatusCode::INTERNAL_SERVER_ERROR,
                ProblemCode::Internal,
                "Internal error",
            ),
        }
    }

    /// The HTTP status this error is answered with.
    pub fn status(&self) -> StatusCode {
        self.class().status
    }

    /// The stable problem code (`unknownCaller`, `noGrantForRole`, …).
    pub fn code(&self) -> ProblemCode {
        self.class().code
    }

    /// The problem document for this error (without `instance`).
    ///
    /// A server error's detail is this server's own words only: text from Kubernetes, tailscaled
    /// or a bug can name objects, users or paths, so it goes to the log (with the request ID)
    /// and the caller gets the request ID to quote.
    pub fn problem(&self) -> Problem {
        let class = self.class();
        let detail = match self {
            Self::Timeout { .. }
            | Self::TooManyConnections { .. }
            | Self::Session(SessionError::Timeout { .. }) => self.to_string(),
            _ if class.status.is_server_error() => format!(
                "{}; try again, and if it persists give the server's operator the request ID in `instance`, which the server log has the details under",
                class.title
            ),
            other => other.to_string(),
        };
        let mut problem = Problem::new(class.status.as_u16(), class.code, class.title, detail);
        problem.roles = match self {
            Self::Session(SessionError::Denied(denial)) => Some((*denial.listing).clone()),
            Self::Session(SessionError::GrantWithdrawn { roles, .. }) => roles.as_deref().cloned(),
            _ => None,
        };
        problem
    }
}

/// The error statuses one endpoint can answer with, each with what it means there, for
/// [`ProblemResponses`]. Implemented by a marker type per endpoint, next to its handler.
pub trait EndpointProblems {
    /// `(status, description)` pairs, in any order.
    const STATUSES: &'static [(StatusCode, &'static str)];
}

/// An endpoint's error responses in the OpenAPI document: every status of `E` as an RFC 9457
/// problem ([`Problem`], `application/problem+json`). Named in `#[utoipa::path(responses(...))]`
/// instead of repeating the problem body and media type on every status.
#[derive(Debug)]
pub struct ProblemResponses<E>(std::marker::PhantomData<E>);

impl<E: EndpointProblems> utoipa::IntoResponses for ProblemResponses<E> {
    fn responses() -> std::collections::BTreeMap<
        String,
        utoipa::openapi::RefOr<utoipa::openapi::response::Response>,
    > {
        use utoipa::openapi::{ContentBuilder, Ref, ResponseBuilder};
        E::STATUSES
            .iter()
            .map(|(status, description)| {
                let content = ContentBuilder::new()
                    .schema(Some(Ref::from_schema_name("Problem")))
                    .build();
                let response = ResponseBuilder::new()
                    .description(*description)
                    .content(Problem::CONTENT_TYPE, content)
                    .build();
                (status.as_u16().to_string(), response.into())
            })
            .collect()
    }
}

/// The description of a 403 on endpoints where only the guard refuses.
pub const REFUSED: &str = "Refused (browser request, unknown Host, caller not in the tailnet)";
/// The description of a 413.
pub const BODY_TOO_LARGE: &str = "Body larger than the cap";
/// The description of a 415.
pub const NOT_JSON: &str = "Body is not `application/json`";
/// The description of a 429.
pub const RATE_LIMITED: &str = "Too many requests from this device; see `Retry-After`";
/// The description of a 503.
pub const UNAVAILABLE: &str = "tailscaled or the Kubernetes API is unavailable; retry";
/// The description of a 504.
pub const TIMED_OUT: &str = "tailscaled or the Kubernetes API did not answer in time";

/// The error chain in one line, for logs.
fn chain(error: &(dyn StdError + 'static)) -> String {
    let mut out = error.to_string();
    let mut source = error.source();
    for _ in 0..32 {
        let Some(e) = source else { break };
        out.push_str(": ");
        out.push_str(&e.to_string());
        source = e.source();
    }
    out
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let class = self.class();
        let request_id = RequestId::current().map(|id| id.to_string());
        let logged_id = request_id.as_deref().unwrap_or("-");
        if class.status.is_server_error() {
            tracing::warn!(code = class.code.as_str(), request_id = logged_id, error = %chain(&self), "request failed");
        } else {
            tracing::debug!(code = class.code.as_str(), request_id = logged_id, error = %self, "request refused");
        }
        let mut problem = self.problem();
        problem.instance = request_id;
        let body = match serde_json::to_vec(&problem) {
            Ok(body) => body,
            // A Problem is plain strings and numbers; serializing it cannot fail.
            Err(_) => b"{\"title\":\"Internal error\",\"status\":500}".to_vec(),
        };
        let mut response = (class.status, body).into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(Problem::CONTENT_TYPE),
        );
        if let Some(secs) = class.retry_after {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if matches!(self, Self::BodyTooLarge { .. } | Self::BodyTimeout { .. }) {
            // The client may still be sending a body nobody will read: say the connection ends.
            headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("outer")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn causes_are_found_through_the_chain() {
        let e = Outer(std::io::Error::other("reset"));
        assert!(find_cause::<std::io::Error>(&e).is_some());
        assert!(find_cause::<IdentityError>(&e).is_none());
    }

    #[test]
    fn backend_errors_caused_by_io_are_retryable_unavailability() {
        let io = IssueError::Backend {
            action: "create the ServiceAccount".into(),
            source: Box::new(Outer(std::io::Error::other("connection reset"))),
        };
        let err = ApiError::from(io);
        assert_eq!(err.status(), StatusCode::SERVICE_UNAVAILABLE);
        let other = IssueError::Backend {
            action: "create the ServiceAccount".into(),
            source: "weird".into(),
        };
        assert_eq!(ApiError::from(other).status(), StatusCode::BAD_GATEWAY);
    }

    #[test]
    fn retry_after_rounds_up() {
        assert_eq!(retry_after_secs(Duration::from_millis(1)), 1);
        assert_eq!(retry_after_secs(Duration::ZERO), 1);
        assert_eq!(retry_after_secs(Duration::from_secs(3)), 3);
        assert_eq!(retry_after_secs(Duration::from_millis(3100)), 4);
    }

    #[test]
    fn internal_details_stay_in_the_log() {
        let p = ApiError::Internal("secret path /etc/x".into()).problem();
        assert_eq!(p.status, 500);
        assert!(!p.detail.contains("/etc/x"));
    }

    #[test]
    fn kubernetes_error_text_stays_in_the_log() {
        let kube_text = r#"serviceaccounts "tka-session-x" is forbidden: User "system:serviceaccount:tka-system:tka-server" cannot create"#;
        for error in [
            IssueError::Backend {
                action: "create the ServiceAccount".into(),
                source: kube_text.into(),
            },
            IssueError::Backend {
                action: "create the ServiceAccount".into(),
                source: Box::new(Outer(std::io::Error::other(kube_text))),
            },
        ] {
            let p = ApiError::from(error).problem();
            assert!(p.status >= 500, "{}", p.status);
            assert!(!p.detail.contains("forbidden"), "{}", p.detail);
            assert!(!p.detail.contains("system:serviceaccount"), "{}", p.detail);
            assert!(p.detail.contains("request ID"), "{}", p.detail);
        }
        // A refusal in the caller's own terms still says what is wrong.
        let p = ApiError::BadRequest("the request body is empty".into()).problem();
        assert_eq!(p.detail, "the request body is empty");
    }
}
