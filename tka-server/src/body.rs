//! [`JsonBody`]: the only way an API handler reads a request body. Every POST must say
//! `Content-Type: application/json` (415 otherwise) and carry a JSON document (`{}` when there is
//! nothing to say; 400 for an empty or malformed body, or wrong or unknown fields), no larger than
//! the configured cap (413). It only parses; what the values mean is the handler's business.

use std::sync::Arc;

use axum::extract::{FromRequest, Request};
use http::header;
use serde::de::DeserializeOwned;

use crate::api::ApiState;
use crate::error::{ApiError, find_cause};

/// A JSON request body of type `T`, checked as described in the module docs.
#[derive(Debug, Clone)]
pub struct JsonBody<T>(pub T);

/// The request body of endpoints that take no parameters: exactly `{}`.
#[derive(Debug, Clone, Copy, Default, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EmptyRequest {}

fn is_json(content_type: &str) -> bool {
    let essence = content_type.split(';').next().unwrap_or_default().trim();
    essence.eq_ignore_ascii_case("application/json")
}

impl<T: DeserializeOwned> FromRequest<Arc<ApiState>> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &Arc<ApiState>) -> Result<Self, ApiError> {
        let limit = state.config.max_body_bytes;
        let content_type = request
            .headers()
            .get(header::CONTENT_TYPE)
            .map(|v| v.to_str().unwrap_or("(not text)").to_owned());
        match content_type.as_deref() {
            Some(ct) if is_json(ct) => {}
            Some(other) => return Err(ApiError::UnsupportedMediaType(format!("{other:?}"))),
            None => return Err(ApiError::UnsupportedMediaType("no Content-Type".into())),
        }
        let declared = request
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > limit as u64) {
            return Err(ApiError::BodyTooLarge { limit });
        }
        let bytes = axum::body::to_bytes(request.into_body(), limit)
            .await
            .map_err(|e| {
                if find_cause::<http_body_util::LengthLimitError>(&e).is_some() {
                    ApiError::BodyTooLarge { limit }
                } else {
                    ApiError::BadRequest(format!("the request body could not be read: {e}"))
                }
            })?;
        match bytes.iter().find(|b| !b.is_ascii_whitespace()) {
            None => {
                return Err(ApiError::BadRequest(
                    "the request body is empty; send a JSON object ({} when there is nothing to say)"
                        .into(),
                ));
            }
            // serde would also read a struct from an array; the API takes objects only.
            Some(b'{') => {}
            Some(_) => {
                return Err(ApiError::BadRequest(
                    "the request body must be a JSON object ({} when there is nothing to say)"
                        .into(),
                ));
            }
        }
        serde_json::from_slice(&bytes).map(JsonBody).map_err(|e| {
            let what = match e.classify() {
                serde_json::error::Category::Data => "does not fit this endpoint",
                _ => "is not valid JSON",
            };
            ApiError::BadRequest(format!("the request body {what}: {e}"))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_media_types() {
        assert!(is_json("application/json"));
        assert!(is_json("Application/JSON; charset=utf-8"));
        assert!(!is_json("text/plain"));
        assert!(!is_json("application/json-patch+json"));
        assert!(!is_json(""));
    }
}
