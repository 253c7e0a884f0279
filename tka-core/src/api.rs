//! The wire types of the tka HTTP API (`/api/v1`), shared by the server and the CLI so the two
//! cannot drift. JSON, camelCase fields, RFC 3339 timestamps, Go-notation durations. Errors are
//! RFC 9457 `application/problem+json` documents ([`Problem`]) whose `code` is a [`ProblemCode`]:
//! the server emits only those, the CLI matches them, and neither keeps a list of strings.
//!
//! The server returns data, never an executable kubeconfig: clients build their own entries from
//! these fields. No I/O here.

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::domain::{ClusterName, RoleName, SessionName, Ttl};
use crate::policy::{DenialKind, RoleListing, TtlClamp};
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
    /// How kubectl will reach the cluster; the server's default when absent: through the proxy
    /// on a proxy-only server, else directly (with a token).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub via: Option<Via>,
}

/// How kubectl reaches a cluster's API server.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Via {
    /// Through the tka proxy on the tailnet: the laptop holds no credential, the proxy forwards
    /// with the session's token, held only in the server's memory.
    Proxy,
    /// Directly to the API server, with a token for the session.
    #[default]
    Direct,
}

impl Via {
    /// The word on the wire and in output (`proxy`, `direct`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Proxy => "proxy",
            Self::Direct => "direct",
        }
    }
}

impl std::fmt::Display for Via {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
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
    /// The tka proxy URL on the tailnet, when the server runs one: kubectl reaches the cluster
    /// through it with no credential of its own (`via: proxy`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy: Option<String>,
    /// Whether the server hands out tokens for direct use (`via: direct`, `POST /api/v1/token`);
    /// false on a proxy-only server. Absent (an older server) means true.
    #[serde(default = "default_true")]
    pub direct_tokens: bool,
}

fn default_true() -> bool {
    true
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
    /// A token for the session; absent for a login through the proxy (`via: proxy`), which
    /// hands the laptop no credential.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<TokenInfo>,
    /// How kubectl reaches the cluster for this login. Absent (an older server) means direct.
    #[serde(default)]
    pub via: Via,
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

/// A stable machine-readable problem code: the `code` of every problem document the server
/// sends. Clients match on these words, never on the detail text.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub enum ProblemCode {
    /// whois does not know the caller: it is not a peer on this tailnet.
    UnknownCaller,
    /// tailscaled could not say who is calling; retry.
    IdentityUnavailable,
    /// The request came from the server's own tailnet node.
    SelfNode,
    /// The request carries an `Origin` header: a web page made it.
    OriginRefused,
    /// `Sec-Fetch-Site` says another site made the request.
    CrossSiteRefused,
    /// The `Host` is none of the server's names or addresses.
    HostNotAllowed,
    /// The connection's peer is not one this listener serves.
    PeerNotAllowed,
    /// Too many requests from this device; see `Retry-After`.
    RateLimited,
    /// A listener, or one device on it, is at its connection limit.
    TooManyConnections,
    /// A POST body that is not `application/json`.
    UnsupportedMediaType,
    /// The request body is larger than the cap.
    BodyTooLarge,
    /// The request body did not arrive in time.
    BodyTimeout,
    /// The request is malformed (body, headers, or a role name).
    BadRequest,
    /// The requested TTL does not parse or is not positive.
    InvalidTtl,
    /// The caller holds no grant for this cluster.
    NoGrants,
    /// The requested role is not granted to the caller here.
    NoGrantForRole,
    /// The requested role has no GrantMapping on this cluster.
    NoMapping,
    /// The role's GrantMapping narrows to subjects the caller matches none of.
    SubjectsDoNotMatch,
    /// The role's GrantMapping binds into a protected namespace.
    ForbiddenNamespace,
    /// The role's GrantMapping has an invalid spec.
    InvalidMapping,
    /// The role's GrantMapping was marked unusable by the server.
    MappingUnusable,
    /// No role was asked for, and none of the caller's grants here can be used.
    NoUsableRole,
    /// At refresh the session's grant no longer held, so the session was ended.
    SessionEnded,
    /// The device has no live session on this cluster.
    NoSession,
    /// The device's session has expired.
    SessionExpired,
    /// The device's session was revoked.
    SessionRevoked,
    /// The device's session belongs to another user.
    IdentityChanged,
    /// The device's session is being set up; retry.
    SessionPending,
    /// A concurrent change to the device's session; retry.
    Conflict,
    /// An object tka would write exists and was not made by tka.
    ForeignObject,
    /// The Kubernetes API is unavailable (or a GrantMapping is not checked yet); retry.
    ClusterUnavailable,
    /// The Kubernetes API answered with an error.
    BackendError,
    /// The server cannot issue credentials as configured.
    ServerMisconfigured,
    /// The cluster is reached through the tka proxy only: the server hands no token to a laptop
    /// (`POST /api/v1/token`, or a login with `via: direct`, on a proxy-only server).
    ProxyOnly,
    /// A login asked for `via: proxy`, and this server runs no proxy.
    NoProxy,
    /// tailscaled or the Kubernetes API did not answer in time; retry.
    Timeout,
    /// No such endpoint.
    NotFound,
    /// The endpoint does not take this method.
    MethodNotAllowed,
    /// A bug or an impossible state; the server log has the details.
    Internal,
    /// A code this build does not know (sent by a newer server), so that the problem still reads.
    /// Never sent: serializing it fails, and the OpenAPI document does not list it.
    #[serde(other, skip_serializing)]
    Unknown,
}

impl ProblemCode {
    /// Every code the server may send, for documentation and tests.
    pub const ALL: &'static [ProblemCode] = &[
        Self::UnknownCaller,
        Self::IdentityUnavailable,
        Self::SelfNode,
        Self::OriginRefused,
        Self::CrossSiteRefused,
        Self::HostNotAllowed,
        Self::PeerNotAllowed,
        Self::RateLimited,
        Self::TooManyConnections,
        Self::UnsupportedMediaType,
        Self::BodyTooLarge,
        Self::BodyTimeout,
        Self::BadRequest,
        Self::InvalidTtl,
        Self::NoGrants,
        Self::NoGrantForRole,
        Self::NoMapping,
        Self::SubjectsDoNotMatch,
        Self::ForbiddenNamespace,
        Self::InvalidMapping,
        Self::MappingUnusable,
        Self::NoUsableRole,
        Self::SessionEnded,
        Self::NoSession,
        Self::SessionExpired,
        Self::SessionRevoked,
        Self::IdentityChanged,
        Self::SessionPending,
        Self::Conflict,
        Self::ForeignObject,
        Self::ClusterUnavailable,
        Self::BackendError,
        Self::ServerMisconfigured,
        Self::ProxyOnly,
        Self::NoProxy,
        Self::Timeout,
        Self::NotFound,
        Self::MethodNotAllowed,
        Self::Internal,
    ];

    /// The code as it appears on the wire (`noGrantForRole`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::UnknownCaller => "unknownCaller",
            Self::IdentityUnavailable => "identityUnavailable",
            Self::SelfNode => "selfNode",
            Self::OriginRefused => "originRefused",
            Self::CrossSiteRefused => "crossSiteRefused",
            Self::HostNotAllowed => "hostNotAllowed",
            Self::PeerNotAllowed => "peerNotAllowed",
            Self::RateLimited => "rateLimited",
            Self::TooManyConnections => "tooManyConnections",
            Self::UnsupportedMediaType => "unsupportedMediaType",
            Self::BodyTooLarge => "bodyTooLarge",
            Self::BodyTimeout => "bodyTimeout",
            Self::BadRequest => "badRequest",
            Self::InvalidTtl => "invalidTtl",
            Self::NoGrants => "noGrants",
            Self::NoGrantForRole => "noGrantForRole",
            Self::NoMapping => "noMapping",
            Self::SubjectsDoNotMatch => "subjectsDoNotMatch",
            Self::ForbiddenNamespace => "forbiddenNamespace",
            Self::InvalidMapping => "invalidMapping",
            Self::MappingUnusable => "mappingUnusable",
            Self::NoUsableRole => "noUsableRole",
            Self::SessionEnded => "sessionEnded",
            Self::NoSession => "noSession",
            Self::SessionExpired => "sessionExpired",
            Self::SessionRevoked => "sessionRevoked",
            Self::IdentityChanged => "identityChanged",
            Self::SessionPending => "sessionPending",
            Self::Conflict => "conflict",
            Self::ForeignObject => "foreignObject",
            Self::ClusterUnavailable => "clusterUnavailable",
            Self::BackendError => "backendError",
            Self::ServerMisconfigured => "serverMisconfigured",
            Self::ProxyOnly => "proxyOnly",
            Self::NoProxy => "noProxy",
            Self::Timeout => "timeout",
            Self::NotFound => "notFound",
            Self::MethodNotAllowed => "methodNotAllowed",
            Self::Internal => "internal",
            Self::Unknown => "unknown",
        }
    }

    /// Whether the code means "this device has no live session here; log in again".
    pub fn is_session_gone(self) -> bool {
        matches!(
            self,
            Self::SessionEnded | Self::SessionExpired | Self::SessionRevoked | Self::NoSession
        )
    }
}

impl std::fmt::Display for ProblemCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl From<DenialKind> for ProblemCode {
    fn from(kind: DenialKind) -> Self {
        match kind {
            DenialKind::NoGrants => Self::NoGrants,
            DenialKind::NoGrantForRole => Self::NoGrantForRole,
            DenialKind::NoMapping => Self::NoMapping,
            DenialKind::SubjectsDoNotMatch => Self::SubjectsDoNotMatch,
            DenialKind::ForbiddenNamespace => Self::ForbiddenNamespace,
            DenialKind::InvalidMapping => Self::InvalidMapping,
            DenialKind::MappingUnusable => Self::MappingUnusable,
            DenialKind::NoUsableRole => Self::NoUsableRole,
            DenialKind::InvalidTtl => Self::InvalidTtl,
        }
    }
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
    pub code: ProblemCode,
    /// For denials: the roles the caller does hold here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub roles: Option<RoleListing>,
}

impl Problem {
    /// The media type of problem documents.
    pub const CONTENT_TYPE: &'static str = "application/problem+json";

    /// A problem with the given status, code and detail; the type URI and title follow the code.
    pub fn new(status: u16, code: ProblemCode, title: &str, detail: impl Into<String>) -> Self {
        Self {
            problem_type: format!("urn:tka:problem:{code}"),
            title: title.to_owned(),
            status,
            detail: detail.into(),
            instance: None,
            code,
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
    fn the_way_to_the_cluster_is_on_the_wire_and_older_peers_still_read() {
        let proxied: LoginRequest = serde_json::from_str(r#"{"via":"proxy"}"#).unwrap();
        assert_eq!(proxied.via, Some(Via::Proxy));
        let direct: LoginRequest = serde_json::from_str(r#"{"via":"direct"}"#).unwrap();
        assert_eq!(direct.via, Some(Via::Direct));
        assert!(serde_json::from_str::<LoginRequest>(r#"{"via":"tunnel"}"#).is_err());
        // No `via` is sent unless asked, so an older server (which refuses unknown fields)
        // still takes the request.
        assert_eq!(
            serde_json::to_string(&LoginRequest::default()).unwrap(),
            "{}"
        );

        // An older server's endpoint and login answer: tokens for direct use, and a token.
        let endpoint: ClusterEndpoint =
            serde_json::from_str(r#"{"name":"prod","server":"https://10.0.0.1:6443"}"#).unwrap();
        assert!(endpoint.direct_tokens);
        assert!(
            serde_json::to_string(&endpoint)
                .unwrap()
                .contains(r#""directTokens":true"#)
        );
        let login: LoginResponse = serde_json::from_value(serde_json::json!({
            "cluster": {"name": "prod", "server": "https://10.0.0.1:6443"},
            "session": {"name": "tka-x", "role": "sre", "expiresAt": "2026-01-01T00:00:00Z",
                        "device": "laptop", "caller": "alice@example.com"},
            "token": {"token": "t", "expiresAt": "2026-01-01T00:00:00Z"},
            "ttl": "1h",
        }))
        .unwrap();
        assert_eq!(login.via, Via::Direct);
        assert!(login.token.is_some());
        // A proxied login carries no token at all.
        let proxied = LoginResponse {
            token: None,
            via: Via::Proxy,
            ..login
        };
        let wire = serde_json::to_value(&proxied).unwrap();
        assert!(wire.get("token").is_none());
        assert_eq!(wire["via"], "proxy");
    }

    #[test]
    fn problem_codes_are_the_camel_case_words_on_the_wire() {
        for code in ProblemCode::ALL {
            let wire = serde_json::to_string(code).unwrap();
            assert_eq!(wire, format!("\"{}\"", code.as_str()));
            let back: ProblemCode = serde_json::from_str(&wire).unwrap();
            assert_eq!(back, *code);
        }
        assert_eq!(
            serde_json::to_string(&ProblemCode::NoGrantForRole).unwrap(),
            "\"noGrantForRole\""
        );
        // Every denial's code is a problem code with the same word.
        for kind in [
            DenialKind::NoGrants,
            DenialKind::InvalidTtl,
            DenialKind::NoUsableRole,
        ] {
            assert_eq!(ProblemCode::from(kind).as_str(), kind.code());
        }
    }

    #[test]
    fn a_code_from_a_newer_server_still_reads_and_is_never_sent() {
        let problem: Problem = serde_json::from_str(
            r#"{"type":"urn:tka:problem:brandNew","title":"t","status":403,"detail":"d","code":"brandNew"}"#,
        )
        .unwrap();
        assert_eq!(problem.code, ProblemCode::Unknown);
        assert_eq!(problem.detail, "d");
        assert!(serde_json::to_string(&ProblemCode::Unknown).is_err());
        let known: Problem = serde_json::from_str(
            r#"{"type":"urn:tka:problem:noSession","title":"t","status":404,"detail":"d","code":"noSession"}"#,
        )
        .unwrap();
        assert_eq!(known.code, ProblemCode::NoSession);
        assert!(known.code.is_session_gone());
        assert!(!ProblemCode::NoGrantForRole.is_session_gone());
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
