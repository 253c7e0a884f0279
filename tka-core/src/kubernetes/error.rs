//! Classifies kube client errors into what tka acts on (conflict, not found, already exists,
//! unavailable, forbidden, invalid) and converts them into the issuer's and reconciler's errors.
//! Nothing here performs I/O.

use crate::issuer::IssueError;
use crate::reconciler::ReconcileError;

/// What a failed API call means to tka.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ApiFailure {
    /// 404.
    NotFound,
    /// 409 AlreadyExists on create.
    AlreadyExists,
    /// 409 on a resourceVersion or UID precondition.
    Conflict,
    /// 401/403.
    Forbidden,
    /// 400/422.
    Invalid,
    /// 429, 5xx, or no answer at all.
    Unavailable,
    /// Anything else.
    Other,
}

/// Classifies a kube error.
pub(crate) fn classify(e: &kube::Error) -> ApiFailure {
    match e {
        kube::Error::Api(status) => match status.code {
            404 | 410 => ApiFailure::NotFound,
            409 if status.reason == "AlreadyExists" => ApiFailure::AlreadyExists,
            409 => ApiFailure::Conflict,
            401 | 403 => ApiFailure::Forbidden,
            400 | 422 => ApiFailure::Invalid,
            429 | 500..=599 => ApiFailure::Unavailable,
            _ => ApiFailure::Other,
        },
        kube::Error::HyperError(_) | kube::Error::Service(_) | kube::Error::ReadEvents(_) => {
            ApiFailure::Unavailable
        }
        _ => ApiFailure::Other,
    }
}

/// Whether the error is a 404.
pub(crate) fn is_not_found(e: &kube::Error) -> bool {
    classify(e) == ApiFailure::NotFound
}

/// Whether the error is a failed precondition (409 other than AlreadyExists).
pub(crate) fn is_conflict(e: &kube::Error) -> bool {
    classify(e) == ApiFailure::Conflict
}

/// Whether a create failed because the name is taken.
pub(crate) fn is_already_exists(e: &kube::Error) -> bool {
    classify(e) == ApiFailure::AlreadyExists
}

/// An issuer error for a failed `action`.
pub(crate) fn issue_error(action: impl Into<String>, e: kube::Error) -> IssueError {
    let action = action.into();
    match classify(&e) {
        ApiFailure::NotFound => IssueError::NotFound {
            what: format!("an object needed to {action}"),
        },
        ApiFailure::AlreadyExists | ApiFailure::Conflict => IssueError::Conflict(action),
        ApiFailure::Forbidden => IssueError::Forbidden {
            action,
            source: Box::new(e),
        },
        ApiFailure::Invalid => IssueError::Invalid {
            action,
            source: Box::new(e),
        },
        ApiFailure::Unavailable => IssueError::Unavailable {
            action,
            source: Box::new(e),
        },
        ApiFailure::Other => IssueError::Backend {
            action,
            source: Box::new(e),
        },
    }
}

/// A reconciler error for a failed `action`.
pub(crate) fn reconcile_error(action: impl Into<String>, e: kube::Error) -> ReconcileError {
    let action = action.into();
    match classify(&e) {
        ApiFailure::Forbidden => ReconcileError::Forbidden {
            action,
            source: Box::new(e),
        },
        ApiFailure::Unavailable => ReconcileError::Unavailable {
            action,
            source: Box::new(e),
        },
        _ => ReconcileError::Backend {
            action,
            source: Box::new(e),
        },
    }
}

#[cfg(test)]
mod tests {
    use kube::core::Status;

    use super::*;

    fn api(code: u16, reason: &str) -> kube::Error {
        kube::Error::Api(
            Status {
                code,
                reason: reason.into(),
                ..Status::default()
            }
            .boxed(),
        )
    }

    #[test]
    fn classifies_api_errors() {
        assert_eq!(classify(&api(404, "NotFound")), ApiFailure::NotFound);
        assert_eq!(
            classify(&api(409, "AlreadyExists")),
            ApiFailure::AlreadyExists
        );
        assert_eq!(classify(&api(409, "Conflict")), ApiFailure::Conflict);
        assert_eq!(classify(&api(403, "Forbidden")), ApiFailure::Forbidden);
        assert_eq!(classify(&api(422, "Invalid")), ApiFailure::Invalid);
        assert_eq!(classify(&api(503, "")), ApiFailure::Unavailable);
        assert_eq!(
            classify(&api(429, "TooManyRequests")),
            ApiFailure::Unavailable
        );
    }

    #[test]
    fn issue_errors_keep_the_classification() {
        assert!(matches!(
            issue_error("create x", api(403, "Forbidden")),
            IssueError::Forbidden { .. }
        ));
        assert!(issue_error("create x", api(503, "")).is_retryable());
        assert!(issue_error("update x", api(409, "Conflict")).is_retryable());
        assert!(!issue_error("create x", api(422, "Invalid")).is_retryable());
    }
}
