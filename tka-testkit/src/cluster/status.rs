//! Errors as the API server reports them: a `metav1.Status` body with the same `reason`, `code`,
//! `message` and `details` shapes, so kube's client maps them to `kube::Error::Api` exactly as it
//! would for a real cluster. It owns the message formats; it does not decide when an error happens.

use serde_json::{Map, Value, json};

use super::resource::ResourceType;

/// An API error as the fake answers it (also returned by the direct, non-HTTP helpers of
/// [`FakeCluster`](super::FakeCluster)).
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct ApiError {
    /// HTTP status code, e.g. 409.
    pub code: u16,
    /// `metav1.StatusReason`, e.g. `AlreadyExists`.
    pub reason: String,
    /// The human-readable message, in the real server's wording.
    pub message: String,
    details: Option<Value>,
    retry_after: Option<u32>,
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({}): {}", self.reason, self.code, self.message)
    }
}

impl std::error::Error for ApiError {}

/// One field problem inside a 422 Invalid, rendered like apimachinery's `field.Error`.
#[derive(Debug, Clone)]
pub(crate) struct FieldError {
    pub(crate) field: String,
    /// `FieldValueInvalid`, `FieldValueRequired`, `FieldValueForbidden`.
    pub(crate) reason: &'static str,
    /// The body after the field, e.g. `Invalid value: "x": must be ...`.
    pub(crate) body: String,
}

impl FieldError {
    pub(crate) fn invalid(field: &str, value: &str, detail: &str) -> Self {
        Self {
            field: field.to_owned(),
            reason: "FieldValueInvalid",
            body: format!("Invalid value: {value}: {detail}"),
        }
    }

    pub(crate) fn required(field: &str, detail: &str) -> Self {
        Self {
            field: field.to_owned(),
            reason: "FieldValueRequired",
            body: if detail.is_empty() {
                "Required value".to_owned()
            } else {
                format!("Required value: {detail}")
            },
        }
    }

    pub(crate) fn forbidden(field: &str, detail: &str) -> Self {
        Self {
            field: field.to_owned(),
            reason: "FieldValueForbidden",
            body: format!("Forbidden: {detail}"),
        }
    }
}

/// Quotes a string the way Go's `%q` does for the plain ASCII the fake deals with.
pub(crate) fn quote(s: &str) -> String {
    Value::String(s.to_owned()).to_string()
}

fn details(rt: &ResourceType, name: &str, kind: &str) -> Value {
    details_in(&rt.group, name, kind)
}

fn details_in(group: &str, name: &str, kind: &str) -> Value {
    let mut d = Map::new();
    if !name.is_empty() {
        d.insert("name".into(), name.into());
    }
    if !group.is_empty() {
        d.insert("group".into(), group.into());
    }
    d.insert("kind".into(), kind.into());
    Value::Object(d)
}

impl ApiError {
    fn new(code: u16, reason: &str, message: String) -> Self {
        Self {
            code,
            reason: reason.to_owned(),
            message,
            details: None,
            retry_after: None,
        }
    }

    fn with_details(mut self, details: Value) -> Self {
        self.details = Some(details);
        self
    }

    pub(crate) fn not_found(rt: &ResourceType, name: &str) -> Self {
        Self::new(
            404,
            "NotFound",
            format!("{} {} not found", rt.qualified_resource(), quote(name)),
        )
        .with_details(details(rt, name, &rt.plural))
    }

    pub(crate) fn namespace_not_found(namespace: &str) -> Self {
        Self::new(
            404,
            "NotFound",
            format!("namespaces {} not found", quote(namespace)),
        )
        .with_details(json!({"name": namespace, "kind": "namespaces"}))
    }

    pub(crate) fn namespace_terminating(rt: &ResourceType, name: &str, namespace: &str) -> Self {
        Self::new(
            403,
            "Forbidden",
            format!(
                "{} {} is forbidden: unable to create new content in namespace {namespace} because it is being terminated",
                rt.qualified_resource(),
                quote(name)
            ),
        )
        .with_details(details(rt, name, &rt.plural))
    }

    pub(crate) fn already_exists(rt: &ResourceType, name: &str) -> Self {
        Self::new(
            409,
            "AlreadyExists",
            format!("{} {} already exists", rt.qualified_resource(), quote(name)),
        )
        .with_details(details(rt, name, &rt.plural))
    }

    /// A 409 Conflict; `why` follows "Operation cannot be fulfilled on ...: ".
    pub(crate) fn conflict(rt: &ResourceType, name: &str, why: &str) -> Self {
        Self::new(
            409,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on {} {}: {why}",
                rt.qualified_resource(),
                quote(name)
            ),
        )
        .with_details(details(rt, name, &rt.plural))
    }

    pub(crate) fn stale(rt: &ResourceType, name: &str) -> Self {
        Self::conflict(
            rt,
            name,
            "the object has been modified; please apply your changes to the latest version and try again",
        )
    }

    /// A 422 Invalid, with apimachinery's message aggregation (`[a, b]` for several errors).
    pub(crate) fn invalid(rt: &ResourceType, name: &str, errors: &[FieldError]) -> Self {
        Self::invalid_kind(&rt.qualified_kind(), &rt.group, name, errors)
    }

    /// A 422 Invalid for a kind that is not a stored resource (e.g. `TokenRequest`).
    pub(crate) fn invalid_kind(
        qualified_kind: &str,
        group: &str,
        name: &str,
        errors: &[FieldError],
    ) -> Self {
        let rendered: Vec<String> = errors
            .iter()
            .map(|e| format!("{}: {}", e.field, e.body))
            .collect();
        let joined = match rendered.as_slice() {
            [one] => one.clone(),
            many => format!("[{}]", many.join(", ")),
        };
        let kind = qualified_kind.split('.').next().unwrap_or(qualified_kind);
        let mut d = details_in(group, name, kind);
        if let Value::Object(d) = &mut d {
            d.insert(
                "causes".into(),
                errors
                    .iter()
                    .map(|e| json!({"reason": e.reason, "message": e.body, "field": e.field}))
                    .collect(),
            );
        }
        Self::new(
            422,
            "Invalid",
            format!("{qualified_kind} {} is invalid: {joined}", quote(name)),
        )
        .with_details(d)
    }

    pub(crate) fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, "BadRequest", message.into())
    }

    pub(crate) fn method_not_allowed() -> Self {
        Self::new(
            405,
            "MethodNotAllowed",
            "the server does not allow this method on the requested resource".to_owned(),
        )
    }

    pub(crate) fn unsupported_media_type(accepted: &str) -> Self {
        Self::new(
            415,
            "UnsupportedMediaType",
            format!(
                "the body of the request was in an unknown format - accepted media types include: {accepted}"
            ),
        )
    }

    /// The answer to an unknown URL (the real server's 404 for paths it does not serve).
    pub(crate) fn page_not_found() -> Self {
        Self::new(
            404,
            "NotFound",
            "the server could not find the requested resource".to_owned(),
        )
        .with_details(json!({}))
    }

    pub(crate) fn unprocessable(message: String) -> Self {
        Self::new(422, "Invalid", message)
    }

    pub(crate) fn expired(message: String) -> Self {
        Self::new(410, "Expired", message)
    }

    pub(crate) fn internal(message: &str) -> Self {
        Self::new(
            500,
            "InternalError",
            format!("Internal error occurred: {message}"),
        )
        .with_details(json!({"causes": [{"message": message}]}))
    }

    pub(crate) fn too_many_requests(retry_after_seconds: u32) -> Self {
        let mut e = Self::new(
            429,
            "TooManyRequests",
            "Too many requests, please try again later.".to_owned(),
        )
        .with_details(json!({"retryAfterSeconds": retry_after_seconds}));
        e.retry_after = Some(retry_after_seconds);
        e
    }

    pub(crate) fn timeout() -> Self {
        Self::new(
            504,
            "Timeout",
            "Timeout: request did not complete within requested timeout - context deadline exceeded"
                .to_owned(),
        )
        .with_details(json!({}))
    }

    /// Seconds for a `Retry-After` header, when the error asks for one.
    pub(crate) fn retry_after(&self) -> Option<u32> {
        self.retry_after
    }

    /// The `metav1.Status` body.
    pub fn to_status(&self) -> Value {
        let mut status = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        });
        if let (Some(details), Value::Object(s)) = (&self.details, &mut status) {
            s.insert("details".into(), details.clone());
        }
        status
    }
}

/// The `Status` a successful DELETE answers with for built-in types.
pub(crate) fn success_status(rt: &ResourceType, name: &str, uid: &str) -> Value {
    let mut d = details(rt, name, &rt.plural);
    if let Value::Object(d) = &mut d {
        d.insert("uid".into(), uid.into());
    }
    json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Success",
        "details": d,
    })
}
