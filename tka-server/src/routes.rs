//! The login API's router: which handler answers which path under `/api/v1`, behind the
//! request-ID and [`crate::guard`] middleware, with problems for unknown paths and methods. It
//! only assembles; it decides nothing and is imported by no module below it (the server and
//! the wiring use it).

use std::sync::Arc;

use axum::routing::{get, post};
use axum::{Router, middleware};

use crate::error::ApiError;
use crate::state::ApiState;
use crate::{api, guard, openapi, request_id};

/// The login API router: every `/api/v1` endpoint behind the request-ID and guard middleware.
/// Serve it with `into_make_service_with_connect_info::<Peer>()` on an [`crate::ApiListener`].
pub fn api_router(state: Arc<ApiState>) -> Router {
    Router::new()
        .route("/api/v1/login", post(api::login))
        .route("/api/v1/token", post(api::token))
        .route(
            "/api/v1/session",
            get(api::get_session).delete(api::delete_session),
        )
        .route("/api/v1/cluster", get(api::cluster))
        .route("/api/v1/openapi.json", get(openapi::openapi_document))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            guard::middleware,
        ))
        .fallback(|| async { ApiError::NotFound })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .layer(middleware::from_fn(request_id::middleware))
        .with_state(state)
}
