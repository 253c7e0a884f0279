//! The login API's router: which handler answers which path under `/api/v1`, behind the
//! request-ID and [`crate::guard`] middleware, with problems for unknown paths and methods. It
//! only assembles; it decides nothing and is imported by no module below it (the server and
//! the wiring use it).
//!
//! The router is built from one table ([`api_endpoints`] lists it), so whatever walks that list
//! (the adversarial tests do) covers every route the server has.

use std::sync::Arc;

use axum::routing::{MethodRouter, delete, get, post};
use axum::{Router, middleware};
use http::Method;

use crate::error::ApiError;
use crate::state::ApiState;
use crate::{api, guard, openapi, request_id};

/// The table the router is built from: path, method, handler.
fn endpoints() -> Vec<(&'static str, Method, MethodRouter<Arc<ApiState>>)> {
    vec![
        ("/api/v1/login", Method::POST, post(api::login)),
        ("/api/v1/token", Method::POST, post(api::token)),
        ("/api/v1/session", Method::GET, get(api::get_session)),
        (
            "/api/v1/session",
            Method::DELETE,
            delete(api::delete_session),
        ),
        ("/api/v1/cluster", Method::GET, get(api::cluster)),
        (
            "/api/v1/openapi.json",
            Method::GET,
            get(openapi::openapi_document),
        ),
    ]
}

/// Every endpoint of the login API, as (path, method), in the router's own order. (A `GET`
/// endpoint also answers `HEAD`, as HTTP requires.)
pub fn api_endpoints() -> Vec<(&'static str, Method)> {
    endpoints()
        .into_iter()
        .map(|(path, method, _)| (path, method))
        .collect()
}

/// The login API router: every `/api/v1` endpoint behind the request-ID and guard middleware.
/// Serve it with `into_make_service_with_connect_info::<Peer>()` on an [`crate::ApiListener`].
pub fn api_router(state: Arc<ApiState>) -> Router {
    endpoints()
        .into_iter()
        // Two methods of one path merge into one method router.
        .fold(Router::new(), |router, (path, _, handler)| {
            router.route(path, handler)
        })
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            guard::middleware,
        ))
        .fallback(|| async { ApiError::NotFound })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .layer(middleware::from_fn(request_id::middleware))
        .with_state(state)
}
