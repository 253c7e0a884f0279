//! The login API's handlers (DESIGN §6), one per endpoint under `/api/v1`: thin translations from
//! HTTP to the [`Sessions`] service and back. Each runs after [`crate::guard`] has established the
//! [`Caller`], reads its body with [`JsonBody`], calls the service, and answers with JSON (or, for
//! a login that asks for it, a kubeconfig). Errors go back as [`ApiError`]. Nothing here decides
//! policy, talks to the issuer, writes an audit record, formats an error response or logs a
//! token; and nothing here is imported by the state, the service or the guard.

use std::sync::Arc;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use http::{HeaderMap, HeaderValue, StatusCode, header};
use tka_core::api::{ClusterResponse, LoginRequest, LoginResponse, SessionInfo, TokenResponse};
use tka_core::endpoint::ServerUrl;

use crate::body::{EmptyRequest, JsonBody};
use crate::error::{
    ApiError, BODY_TOO_LARGE, EndpointProblems, NOT_JSON, ProblemResponses, RATE_LIMITED, REFUSED,
    TIMED_OUT, UNAVAILABLE,
};
use crate::guard::single_host;
use crate::kubeconfig;
use crate::sessions::{Caller, Sessions};
use crate::state::ApiState;

/// Whether the client asked for a kubeconfig (`Accept: application/yaml`).
fn wants_yaml(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|range| {
            range
                .split(';')
                .next()
                .is_some_and(|m| m.trim().eq_ignore_ascii_case(kubeconfig::CONTENT_TYPE))
        })
}

/// The error statuses of `POST /api/v1/login`.
#[derive(Debug)]
pub enum LoginProblems {}

impl EndpointProblems for LoginProblems {
    const STATUSES: &'static [(StatusCode, &'static str)] = &[
        (
            StatusCode::BAD_REQUEST,
            "Malformed body, invalid role name or TTL (`badRequest`, `invalidTtl`)",
        ),
        (
            StatusCode::FORBIDDEN,
            "Refused: browser request, unknown Host, caller not in the tailnet, no usable grant (`noGrants`, `noGrantForRole`, `noMapping`, `subjectsDoNotMatch`, `forbiddenNamespace`, …), or `via: direct` on a proxy-only server (`proxyOnly`)",
        ),
        (
            StatusCode::CONFLICT,
            "A concurrent change to this device's session, retry; or `via: proxy` on a server that runs no tka proxy (`noProxy`)",
        ),
        (StatusCode::PAYLOAD_TOO_LARGE, BODY_TOO_LARGE),
        (StatusCode::UNSUPPORTED_MEDIA_TYPE, NOT_JSON),
        (StatusCode::TOO_MANY_REQUESTS, RATE_LIMITED),
        (StatusCode::SERVICE_UNAVAILABLE, UNAVAILABLE),
        (StatusCode::GATEWAY_TIMEOUT, TIMED_OUT),
    ];
}

/// Log in: authorize, create or extend the device's session; a token unless through the proxy.
#[utoipa::path(
    post,
    path = "/api/v1/login",
    tag = "sessions",
    request_body(content = LoginRequest, content_type = "application/json",
        description = "`{}` for the best role and its default TTL"),
    responses(
        (status = 200, description = "Credentials for the session", content(
            (LoginResponse = "application/json"),
            (String = "application/yaml", example = "apiVersion: v1\nkind: Config\n...")
        )),
        ProblemResponses<LoginProblems>,
    )
)]
pub async fn login(
    State(state): State<Arc<ApiState>>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    JsonBody(request): JsonBody<LoginRequest>,
) -> Result<Response, ApiError> {
    let response = Sessions::new(&state).login(&caller, &request).await?;
    if wants_yaml(&headers) {
        // The guard has checked that the Host is one of this server's names; the API is plain
        // HTTP on the tailnet (WireGuard encrypts it).
        let this_server = ServerUrl::parse(&format!("http://{}", single_host(&headers)?))
            .map_err(|e| ApiError::Internal(format!("this server's URL: {e}")))?;
        let yaml = kubeconfig::render(&response, &this_server)
            .map_err(|e| ApiError::Internal(format!("rendering the kubeconfig failed: {e}")))?;
        return Ok((
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static(kubeconfig::CONTENT_TYPE),
            )],
            yaml,
        )
            .into_response());
    }
    Ok(Json(response).into_response())
}

/// The error statuses of `POST /api/v1/token`.
#[derive(Debug)]
pub enum TokenProblems {}

impl EndpointProblems for TokenProblems {
    const STATUSES: &'static [(StatusCode, &'static str)] = &[
        (StatusCode::BAD_REQUEST, "Malformed body"),
        (
            StatusCode::FORBIDDEN,
            "Refused, or the grant no longer holds and the session was ended (`sessionEnded`), or the server is proxy-only and hands out no tokens (`proxyOnly`)",
        ),
        (
            StatusCode::NOT_FOUND,
            "No live session (`noSession`, `sessionExpired`, `sessionRevoked`); log in again",
        ),
        (
            StatusCode::CONFLICT,
            "The session is being set up or changed; retry",
        ),
        (StatusCode::PAYLOAD_TOO_LARGE, BODY_TOO_LARGE),
        (StatusCode::UNSUPPORTED_MEDIA_TYPE, NOT_JSON),
        (StatusCode::TOO_MANY_REQUESTS, RATE_LIMITED),
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "tailscaled or the Kubernetes API is unavailable, or the session's GrantMapping is not checked yet; retry",
        ),
        (StatusCode::GATEWAY_TIMEOUT, TIMED_OUT),
    ];
}

/// A fresh token for the caller's live session; re-checks identity and grant, and ends the
/// session if the grant no longer holds.
#[utoipa::path(
    post,
    path = "/api/v1/token",
    tag = "sessions",
    request_body(content = EmptyRequest, content_type = "application/json", description = "`{}`"),
    responses(
        (status = 200, description = "A new token within the session", body = TokenResponse),
        ProblemResponses<TokenProblems>,
    )
)]
pub async fn token(
    State(state): State<Arc<ApiState>>,
    Extension(caller): Extension<Caller>,
    JsonBody(_): JsonBody<EmptyRequest>,
) -> Result<Json<TokenResponse>, ApiError> {
    Ok(Json(Sessions::new(&state).token_for_caller(&caller).await?))
}

/// The error statuses of `GET /api/v1/session`.
#[derive(Debug)]
pub enum SessionProblems {}

impl EndpointProblems for SessionProblems {
    const STATUSES: &'static [(StatusCode, &'static str)] = &[
        (StatusCode::FORBIDDEN, REFUSED),
        (
            StatusCode::NOT_FOUND,
            "The device has no live session (`noSession`)",
        ),
        (StatusCode::TOO_MANY_REQUESTS, RATE_LIMITED),
        (StatusCode::SERVICE_UNAVAILABLE, UNAVAILABLE),
        (StatusCode::GATEWAY_TIMEOUT, TIMED_OUT),
    ];
}

/// The caller's live session.
#[utoipa::path(
    get,
    path = "/api/v1/session",
    tag = "sessions",
    responses(
        (status = 200, description = "The device's live session", body = SessionInfo),
        ProblemResponses<SessionProblems>,
    )
)]
pub async fn get_session(
    State(state): State<Arc<ApiState>>,
    Extension(caller): Extension<Caller>,
) -> Result<Json<SessionInfo>, ApiError> {
    Ok(Json(Sessions::new(&state).session(&caller).await?))
}

/// The error statuses of `DELETE /api/v1/session` and `GET /api/v1/cluster`: only the guard
/// refuses, and the backends can fail.
#[derive(Debug)]
pub enum ReadProblems {}

impl EndpointProblems for ReadProblems {
    const STATUSES: &'static [(StatusCode, &'static str)] = &[
        (StatusCode::FORBIDDEN, REFUSED),
        (StatusCode::TOO_MANY_REQUESTS, RATE_LIMITED),
        (StatusCode::SERVICE_UNAVAILABLE, UNAVAILABLE),
        (StatusCode::GATEWAY_TIMEOUT, TIMED_OUT),
    ];
}

/// Log out: revoke the device's session now. Idempotent.
#[utoipa::path(
    delete,
    path = "/api/v1/session",
    tag = "sessions",
    responses(
        (status = 204, description = "The device has no session any more (whether or not it had one)"),
        ProblemResponses<ReadProblems>,
    )
)]
pub async fn delete_session(
    State(state): State<Arc<ApiState>>,
    Extension(caller): Extension<Caller>,
) -> Result<StatusCode, ApiError> {
    Sessions::new(&state).logout(&caller).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// This cluster, how to reach it, and the roles the caller could get here.
#[utoipa::path(
    get,
    path = "/api/v1/cluster",
    tag = "cluster",
    responses(
        (status = 200, description = "The cluster and the caller's roles on it", body = ClusterResponse),
        ProblemResponses<ReadProblems>,
    )
)]
pub async fn cluster(
    State(state): State<Arc<ApiState>>,
    Extension(caller): Extension<Caller>,
) -> Result<Json<ClusterResponse>, ApiError> {
    Ok(Json(Sessions::new(&state).cluster(&caller).await?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yaml_is_chosen_only_when_asked_for() {
        let mut h = HeaderMap::new();
        assert!(!wants_yaml(&h));
        h.insert(header::ACCEPT, HeaderValue::from_static("application/json"));
        assert!(!wants_yaml(&h));
        h.insert(
            header::ACCEPT,
            HeaderValue::from_static("text/html, application/yaml;q=0.9"),
        );
        assert!(wants_yaml(&h));
    }
}
