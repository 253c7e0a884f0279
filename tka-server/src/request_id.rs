//! Request IDs: every API request gets one (the client's `x-request-id` when it is sane, a fresh
//! random one otherwise); it is echoed in the response header, carried by the request's tracing
//! span and audit records, and put in problems' `instance`. This module owns only the ID and its
//! scope; it does not log requests.

use std::fmt;

use axum::extract::Request;
use axum::middleware::Next;
use axum::response::Response;
use http::HeaderValue;
use rand::Rng as _;
use tracing::Instrument as _;

/// The header carrying the request ID, in and out.
pub const HEADER: &str = "x-request-id";

/// The longest client-supplied request ID that is kept.
const MAX_LEN: usize = 128;

/// One request's ID.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RequestId(String);

impl RequestId {
    /// A fresh random ID (128 bits, hex).
    pub fn generate() -> Self {
        let bits: u128 = rand::rng().random();
        Self(format!("{bits:032x}"))
    }

    /// The client's ID, if it is 1 to 128 characters of `[A-Za-z0-9._:-]`; anything else could
    /// forge log lines and is replaced.
    pub fn from_client(value: &HeaderValue) -> Option<Self> {
        let s = value.to_str().ok()?;
        let sane = !s.is_empty()
            && s.len() <= MAX_LEN
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'));
        sane.then(|| Self(s.to_owned()))
    }

    /// The ID as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The ID of the request being handled on this task, if any.
    pub fn current() -> Option<Self> {
        CURRENT.try_with(Clone::clone).ok()
    }
}

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

tokio::task_local! {
    static CURRENT: RequestId;
}

/// Middleware: assigns the request ID, runs the rest of the stack inside its scope and span, and
/// echoes it on the response.
pub async fn middleware(mut request: Request, next: Next) -> Response {
    let id = request
        .headers()
        .get(HEADER)
        .and_then(RequestId::from_client)
        .unwrap_or_else(RequestId::generate);
    request.extensions_mut().insert(id.clone());
    let span = tracing::info_span!(
        "request",
        request_id = %id,
        method = %request.method(),
        path = %request.uri().path(),
    );
    let mut response = CURRENT
        .scope(id.clone(), next.run(request))
        .instrument(span.clone())
        .await;
    span.in_scope(|| {
        tracing::debug!(status = response.status().as_u16(), "answered");
    });
    if let Ok(value) = HeaderValue::from_str(id.as_str()) {
        response.headers_mut().insert(HEADER, value);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_ids_are_kept_only_when_sane() {
        let ok = HeaderValue::from_static("req-42.a_b:c");
        assert_eq!(
            RequestId::from_client(&ok).unwrap().as_str(),
            "req-42.a_b:c"
        );
        for bad in ["", "a b", "x\"y", "line\\nbreak"] {
            assert!(
                RequestId::from_client(&HeaderValue::from_str(bad).unwrap()).is_none(),
                "{bad}"
            );
        }
        let long = HeaderValue::from_str(&"a".repeat(129)).unwrap();
        assert!(RequestId::from_client(&long).is_none());
    }

    #[test]
    fn generated_ids_differ() {
        assert_ne!(RequestId::generate(), RequestId::generate());
        assert_eq!(RequestId::generate().as_str().len(), 32);
    }
}
