//! The OpenAPI 3 document of the login API, generated with `utoipa` from the Rust types: the wire
//! types of [`tka_core::api`] derive `utoipa::ToSchema` (tka-core feature `openapi`), and each
//! handler in [`crate::api`] declares its path, body and every error status (as
//! [`ProblemResponses`]). Served at `/api/v1/openapi.json` (by [`openapi_document`], routed in
//! [`crate::routes`]) and printed by `tka-server openapi`; an `insta` snapshot guards it. It reads
//! the handlers' declarations and must not be imported by them.

use std::sync::LazyLock;

use axum::response::{IntoResponse, Response};
use http::{HeaderValue, StatusCode, header};
use utoipa::OpenApi;

use crate::api;
use crate::error::{EndpointProblems, ProblemResponses, RATE_LIMITED, REFUSED};

/// The document's definition.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "tka login API",
        version = "v1",
        description = "Short-lived Kubernetes credentials for Tailscale identities. Every request is identified by tailscaled's whois on its connection; errors are RFC 9457 problems (`application/problem+json`) with a stable `code`. Every POST takes a JSON body (`{}` when empty) with `Content-Type: application/json`. Requests with an `Origin` header, a cross-site `Sec-Fetch-Site` or a foreign `Host` are refused.",
        license(name = "Apache-2.0", identifier = "Apache-2.0")
    ),
    paths(
        api::login,
        api::token,
        api::get_session,
        api::delete_session,
        api::cluster,
        openapi_document
    ),
    components(schemas(tka_core::api::Problem, tka_core::api::ProblemCode)),
    tags(
        (name = "sessions", description = "Log in, refresh, inspect and end the device's session"),
        (name = "cluster", description = "What this cluster is and what the caller could get here"),
        (name = "meta", description = "This document")
    )
)]
pub struct ApiDoc;

static DOCUMENT: LazyLock<String> = LazyLock::new(|| {
    ApiDoc::openapi()
        .to_pretty_json()
        // The document is plain data built from string literals; serializing it cannot fail.
        .unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
});

/// The document as pretty-printed JSON.
pub fn json() -> &'static str {
    &DOCUMENT
}

/// The error statuses of `GET /api/v1/openapi.json`.
#[derive(Debug)]
pub enum DocumentProblems {}

impl EndpointProblems for DocumentProblems {
    const STATUSES: &'static [(StatusCode, &'static str)] = &[
        (StatusCode::FORBIDDEN, REFUSED),
        (StatusCode::TOO_MANY_REQUESTS, RATE_LIMITED),
    ];
}

/// This API's OpenAPI 3 document.
#[utoipa::path(
    get,
    path = "/api/v1/openapi.json",
    tag = "meta",
    responses(
        (status = 200, description = "The OpenAPI document", content_type = "application/json", body = Object),
        ProblemResponses<DocumentProblems>,
    )
)]
pub async fn openapi_document() -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        json(),
    )
        .into_response()
}
