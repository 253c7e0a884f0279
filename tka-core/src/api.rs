//! The wire types of the tka HTTP API (`/api/v1`), shared by the server and the CLI so the two
//! cannot drift. JSON, camelCase fields, RFC 3339 timestamps, Go-notation durations. Errors are
//! RFC 9457 `application/problem+json` documents ([`Problem`]).
//!
//! The server returns data, never an executable kubeconfig: clients build their own entries from
//! these fields. No I/O here.

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::domain::{ClusterName, RoleName, SessionName, Ttl};
use crate::policy::{RoleListing, TtlClamp};
use crate::secret::Secret;

/// The version prefix of every API path.
pub const API_PREFIX: &str = "/api/v1";

/// `POST /api/v1/login` request body (`{}` when empty).
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LoginRequest {
    /// The role to log in with; the best one the caller holds when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    /// The session lifetime wanted (`90m`, `8h`); the mapping's default when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl: Option<String>,
}

/// Where and how to reach the cluster's API server.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterEndpoint {
    /// The cluster's name.
    pub name: ClusterName,
    /// The Kubernetes API server URL clients should use.
    pub server: String,
    /// The API server's CA bundle, PEM, base64-encoded as in a kubeconfig; absent when the
    /// server's certificate is publicly trusted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate_authority_data: Option<String>,
    /// The tka proxy URL on the tailnet, when the cluster is reached through it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy: Option<String>,
}

/// A session as clients see it.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SessionInfo {
    /// The session's name (also the ServiceAccount's).
    pub name: SessionName,
    /// The granted role.
    pub role: RoleName,
    /// When the session ends.
    pub expires_at: Timestamp,
    /// The device (node name) the session belongs to.
    pub device: String,
    /// Who the device acts as: a login name, or the tags of a tagged device.
    pub caller: String,
}

/// A bearer token and when it stops working.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TokenInfo {
    /// The bearer token. Never logged: its `Debug` prints `[redacted]`.
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = Password))]
    pub token: Secret<String>,
    /// When the API server stops accepting the token (`status.expirationTimestamp`).
    pub expires_at: Timestamp,
}

/// `POST /api/v1/login` response.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LoginResponse {
    /// The cluster to talk to.
    pub cluster: ClusterEndpoint,
    /// The session that was created or extended.
    pub session: SessionInfo,
    /// A token for the session.
    pub token: TokenInfo,
    /// The granted session lifetime.
    pub ttl: Ttl,
    /// Set when the requested TTL was shortened, saying by which bound.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clamped: Option<TtlClamp>,
}

/// `POST /api/v1/token` response: a fresh token within the caller's live session.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TokenResponse {
    /// The session the token belongs to.
    pub session: SessionInfo,
    /// The new token.
    pub token: TokenInfo,
}

/// `GET /api/v1/cluster` response.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterResponse {
    /// The cluster this server belongs to and how to reach it.
    pub cluster: ClusterEndpoint,
    /// Who the server sees calling.
    pub caller: String,
    /// The roles this caller could get here, with the values that were skipped.
    pub roles: RoleListing,
    /// The caller's live session on this cluster, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<SessionInfo>,
}

/// An RFC 9457 problem document: every API error.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Problem {
    /// A URI naming the problem type (`urn:tka:problem:<code>`).
    #[serde(rename = "type")]
    pub problem_type: String,
    /// A short summary of the type.
    pub title: String,
    /// The HTTP status.
    pub status: u16,
    /// What happened and what to do, for a person.
    pub detail: String,
    /// The request ID, to find the audit record.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance: Option<String>,
    /// A stable machine-readable code (`noGrantForRole`, `sessionEnded`, …).
    pub code: String,
    /// For denials: the roles the caller does hold here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub roles: Option<RoleListing>,
}

impl Problem {
    /// The media type of problem documents.
    pub const CONTENT_TYPE: &'static str = "application/problem+json";

    /// A problem with the given status, code and detail; the type URI and title follow the code.
    pub fn new(status: u16, code: &str, title: &str, detail: impl Into<String>) -> Self {
        Self {
            problem_type: format!("urn:tka:problem:{code}"),
            title: title.to_owned(),
            status,
            detail: detail.into(),
            instance: None,
            code: code.to_owned(),
            roles: None,
        }
    }
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.detail)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn login_request_refuses_unknown_fields() {
        assert!(serde_json::from_str::<LoginRequest>(r#"{"role":"sre","ttl":"1h"}"#).is_ok());
        assert!(serde_json::from_str::<LoginRequest>("{}").is_ok());
        assert!(serde_json::from_str::<LoginRequest>(r#"{"rol":"sre"}"#).is_err());
        assert!(serde_json::from_str::<LoginRequest>(r#"{"ttl":5}"#).is_err());
    }

    #[test]
    fn tokens_are_redacted_in_debug_but_sent_on_the_wire() {
        let t = TokenInfo {
            token: Secret::new("eyJhbGciOiJSUzI1NiJ9.e30.sig".to_owned()),
            expires_at: Timestamp::UNIX_EPOCH,
        };
        assert!(!format!("{t:?}").contains("eyJ"));
        assert!(
            serde_json::to_string(&t)
                .unwrap()
                .contains("eyJhbGciOiJSUzI1NiJ9")
        );
    }
}
