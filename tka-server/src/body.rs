//! [`JsonBody`]: the only way an API handler reads a request body. Every POST must say
//! `Content-Type: application/json`, with no content coding but `identity` (415 otherwise), and
//! carry a JSON document (`{}` when there is nothing to say; 400 for an empty or malformed body,
//! or wrong or unknown fields), no larger than
//! the configured cap (413), complete within the listener's body deadline (408; the deadline is
//! put on the body by [`crate::connections`]). It only parses; what the values mean is the
//! sessions service's business. It reads the cap from [`crate::state`] and must not import the
//! handlers or the router.
//!
//! A body over the cap is still read (and thrown away) up to [`DRAIN_LIMIT`] bytes, within the
//! same deadline, before the 413 is sent: closing a socket with unread data makes the kernel
//! reset the connection, and the client would then lose the answer.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{FromRequest, Request};
use http::header;
use http_body_util::BodyExt as _;
use serde::de::DeserializeOwned;

use crate::connections::BodyTimedOut;
use crate::error::{ApiError, find_cause};
use crate::state::ApiState;

/// How much of a body over the cap is read and thrown away before the 413 is sent.
pub const DRAIN_LIMIT: usize = 256 * 1024;

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
        // The body is read as it arrives: a compressed (or otherwise encoded) one would be
        // misread, so only `identity` is taken.
        for coding in request.headers().get_all(header::CONTENT_ENCODING) {
            let coding = coding.to_str().unwrap_or("(not text)");
            if !coding.trim().eq_ignore_ascii_case("identity") {
                return Err(ApiError::UnsupportedMediaType(format!(
                    "Content-Encoding {coding:?}; send the body uncompressed"
                )));
            }
        }
        let declared = request
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > DRAIN_LIMIT.max(limit) as u64) {
            // Too large to be worth reading: answer now, the connection closes after.
            return Err(ApiError::BodyTooLarge { limit });
        }
        let bytes = read_capped(request.into_body(), limit).await?;
        parse_json(&bytes).map(JsonBody)
    }
}

/// Reads a complete body as [`JsonBody`] does: a JSON object that fits `T` (400 otherwise, with
/// what is wrong). Pure, so that it can be tested and fuzzed without a request.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
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
                "the request body must be a JSON object ({} when there is nothing to say)".into(),
            ));
        }
    }
    serde_json::from_slice(bytes).map_err(|e| {
        let what = match e.classify() {
            serde_json::error::Category::Data => "does not fit this endpoint",
            _ => "is not valid JSON",
        };
        ApiError::BadRequest(format!("the request body {what}: {e}"))
    })
}

/// Reads `body` up to `limit` bytes; beyond that, reads and drops up to [`DRAIN_LIMIT`] more
/// bytes and answers 413 ([`ApiError::BodyTooLarge`]).
pub async fn read_capped(mut body: Body, limit: usize) -> Result<Vec<u8>, ApiError> {
    let mut bytes = Vec::new();
    let mut seen: usize = 0;
    while let Some(frame) = body.frame().await {
        let frame = match frame {
            Ok(frame) => frame,
            Err(_) if seen > limit => break,
            Err(e) => {
                return Err(match find_cause::<BodyTimedOut>(&e) {
                    Some(timed_out) => ApiError::BodyTimeout { after: timed_out.0 },
                    None => {
                        ApiError::BadRequest(format!("the request body could not be read: {e}"))
                    }
                });
            }
        };
        let Ok(data) = frame.into_data() else {
            continue;
        };
        seen = seen.saturating_add(data.len());
        if seen > limit {
            bytes = Vec::new();
            if seen > DRAIN_LIMIT.max(limit) {
                break;
            }
            continue;
        }
        bytes.extend_from_slice(&data);
    }
    if seen > limit {
        return Err(ApiError::BodyTooLarge { limit });
    }
    Ok(bytes)
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
