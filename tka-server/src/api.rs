//! The login API (DESIGN §6) under `/api/v1`: the router, its shared state, and one handler per
//! endpoint. Each handler runs after [`crate::guard`] has established the [`Caller`], parses its
//! body with [`JsonBody`], asks policy ([`tka_core::resolve`] / [`tka_core::available_roles`])
//! against the in-memory mappings, then the [`CredentialIssuer`] under a deadline, and writes one
//! audit record per issue, refresh, revoke and denial. Errors go back as [`ApiError`]; nothing here
//! formats an error response or logs a token.

use std::collections::HashMap;
use std::future::Future;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router, middleware};
use http::{HeaderMap, HeaderValue, StatusCode, header};
use jiff::{SignedDuration, Timestamp};
use tka_core::api::{
    ClusterEndpoint, ClusterResponse, LoginRequest, LoginResponse, SessionInfo, TokenInfo,
    TokenResponse,
};
use tka_core::issuer::{self, CredentialIssuer, IssueError, IssueOutcome, SessionState};
use tka_core::policy::{GrantVerdict, HeldGrant, grant_holds};
use tka_core::{
    Clock, Identity, IdentityProvider, NodeId, ParsedGrants, PolicyContext, PolicySettings,
    ResolveRequest, RoleName, SkippedValue, TtlRequest, available_roles, resolve,
};

use crate::audit::{Event, Record};
use crate::body::{EmptyRequest, JsonBody};
use crate::error::ApiError;
use crate::guard::{AllowedHosts, Caller};
use crate::mappings::MappingStore;
use crate::metrics::{LoginOutcome, Metrics, RevocationCause};
use crate::ratelimit::{DeviceRateLimiter, RateLimitConfig};
use crate::{kubeconfig, openapi, request_id};

/// The API's configuration: plain values, validated by [`crate::settings::Settings`].
#[derive(Debug, Clone)]
pub struct ApiConfig {
    /// The cluster as clients are told about it.
    pub cluster: ClusterEndpoint,
    /// Policy bounds, capability names, protected namespaces.
    pub policy: PolicySettings,
    /// The `Host` values the API answers to.
    pub allowed_hosts: AllowedHosts,
    /// The server's own node IDs; whois answers naming one are refused.
    pub self_node_ids: Vec<NodeId>,
    /// Refuse TCP peers that are not loopback (userspace networking and PROXY mode).
    pub loopback_peers_only: bool,
    /// The Tailscale Service connections are addressed to, when the peer does not say.
    pub service_name: Option<String>,
    /// The largest request body accepted.
    pub max_body_bytes: usize,
    /// Per-device rate limit.
    pub rate_limit: RateLimitConfig,
    /// Deadline for one whois.
    pub whois_timeout: Duration,
    /// Deadline for one issuer call.
    pub issuer_timeout: Duration,
}

/// The implementations the API runs on.
#[derive(Clone)]
pub struct Backends {
    /// Who is calling (tailscaled's whois).
    pub identity: Arc<dyn IdentityProvider>,
    /// Sessions and tokens (the Kubernetes backend).
    pub issuer: Arc<dyn CredentialIssuer>,
    /// The GrantMappings, from memory.
    pub mappings: Arc<dyn MappingStore>,
    /// The time, for expiries.
    pub clock: Arc<dyn Clock>,
}

impl std::fmt::Debug for Backends {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Backends")
            .field("mappings", &self.mappings)
            .field("clock", &self.clock)
            .finish_non_exhaustive()
    }
}

/// Everything the handlers share.
#[derive(Debug)]
pub struct ApiState {
    /// Configuration.
    pub config: ApiConfig,
    /// Implementations.
    pub backends: Backends,
    /// The per-device rate limiter.
    pub rate_limiter: DeviceRateLimiter,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// When each distinct skipped capability value was last logged.
    skipped_log: SkippedLog,
}

/// How often one distinct skipped capability value is logged at WARN.
const SKIPPED_LOG_EVERY: SignedDuration = SignedDuration::from_mins(10);
/// How many distinct skipped values are remembered; beyond that they are logged at DEBUG only.
const SKIPPED_LOG_CAP: usize = 1024;

/// Rate-limits the WARN for skipped capability values: once per distinct value (schema, value,
/// reason; not the device or position) per [`SKIPPED_LOG_EVERY`], so a malformed grant in the
/// policy file is reported without a line on every request of every device that holds it.
#[derive(Debug, Default)]
struct SkippedLog {
    /// Keyed by a digest of the value, so a large value costs no more memory than a small one.
    last: Mutex<HashMap<u64, Timestamp>>,
}

impl SkippedLog {
    /// Whether `value` is due for a WARN at `now` (and remembers that it was logged).
    fn due(&self, value: &SkippedValue, now: Timestamp) -> bool {
        let mut digest = std::hash::DefaultHasher::new();
        (
            value.schema.to_string(),
            value.value.to_string(),
            &value.reason,
        )
            .hash(&mut digest);
        let key = digest.finish();
        // The lock is never held across an await; a poisoned map is still a valid map.
        let mut last = self.last.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(at) = last.get(&key)
            && *at + SKIPPED_LOG_EVERY > now
        {
            return false;
        }
        if last.len() >= SKIPPED_LOG_CAP && !last.contains_key(&key) {
            last.retain(|_, at| *at + SKIPPED_LOG_EVERY > now);
            if last.len() >= SKIPPED_LOG_CAP {
                return false;
            }
        }
        last.insert(key, now);
        true
    }
}

impl ApiState {
    /// Shared state for [`api_router`].
    pub fn new(config: ApiConfig, backends: Backends, metrics: Arc<Metrics>) -> Arc<Self> {
        let rate_limiter = DeviceRateLimiter::new(config.rate_limit);
        Arc::new(Self {
            config,
            backends,
            rate_limiter,
            metrics,
            skipped_log: SkippedLog::default(),
        })
    }

    /// Runs an issuer call under the issuer deadline.
    async fn issuer_call<T>(
        &self,
        call: impl Future<Output = Result<T, IssueError>>,
    ) -> Result<T, ApiError> {
        match tokio::time::timeout(self.config.issuer_timeout, call).await {
            Ok(result) => result.map_err(ApiError::Issue),
            Err(_) => Err(ApiError::Timeout {
                what: "the Kubernetes API",
                after: self.config.issuer_timeout,
            }),
        }
    }

    fn policy_context<'a>(
        &'a self,
        identity: &'a Identity,
        grants: &'a ParsedGrants,
        mappings: &'a [tka_core::MappingView],
    ) -> PolicyContext<'a> {
        PolicyContext {
            identity,
            grants,
            mappings,
            cluster: &self.config.cluster.name,
            settings: &self.config.policy,
        }
    }
}

/// The login API router: every `/api/v1` endpoint behind the request-ID and guard middleware.
/// Serve it with `into_make_service_with_connect_info::<Peer>()` on an [`crate::ApiListener`].
pub fn api_router(state: Arc<ApiState>) -> Router {
    Router::new()
        .route("/api/v1/login", post(login))
        .route("/api/v1/token", post(token))
        .route("/api/v1/session", get(get_session).delete(delete_session))
        .route("/api/v1/cluster", get(cluster))
        .route("/api/v1/openapi.json", get(openapi_document))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            crate::guard::middleware,
        ))
        .fallback(|| async { ApiError::NotFound })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .layer(middleware::from_fn(request_id::middleware))
        .with_state(state)
}

fn is_live(info: &issuer::SessionInfo) -> bool {
    matches!(info.state, SessionState::Active | SessionState::Pending)
}

fn outcome_word(outcome: IssueOutcome) -> &'static str {
    match outcome {
        IssueOutcome::Created => "created",
        IssueOutcome::Extended => "extended",
        IssueOutcome::RoleChanged => "roleChanged",
        IssueOutcome::Refreshed => "refreshed",
        _ => "issued",
    }
}

fn wants_yaml(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|range| {
            range
                .split(';')
                .next()
                .is_some_and(|m| m.trim().eq_ignore_ascii_case(kubeconfig::CONTENT_TYPE))
        })
}

fn report_skipped(state: &ApiState, grants: &ParsedGrants, identity: &Identity) {
    let now = state.backends.clock.now();
    for skipped in &grants.skipped {
        if state.skipped_log.due(skipped, now) {
            tracing::warn!(
                device = %identity.node.stable_id,
                skipped = %skipped,
                "a capability value was skipped (logged once per distinct value every 10 minutes)"
            );
        } else {
            tracing::debug!(
                device = %identity.node.stable_id,
                skipped = %skipped,
                "a capability value was skipped"
            );
        }
    }
}

/// Log in: authorize, create or extend the device's session, and mint a token.
#[utoipa::path(
    post,
    path = "/api/v1/login",
    tag = "sessions",
    request_body(content = LoginRequest, content_type = "application/json",
        description = "`{}` for the best role and its default TTL"),
    responses(
        (status = 200, description = "Credentials for the session", content(
            (LoginResponse = "application/json"),
            (String = "application/yaml", example = "apiVersion: v1\nkind: Config\n...")
        )),
        (status = 400, description = "Malformed body, invalid role name or TTL (`badRequest`, `invalidTtl`)", body = tka_core::api::Problem, content_type = "application/problem+json"),
        (status = 403, description = "Refused: browser request, unknown Host, caller not in the tailnet, or no usable grant (`noGrants`, `noGrantForRole`, `noMapping`, `subjectsDoNotMatch`, `forbiddenNamespace`, …)", body = tka_core::api::Problem, content_type = "application/problem+json"),
        (status = 409, description = "A concurrent change to this device's session; retry", body = tka_core::api::Problem, content_type = "application/problem+json"),
        (status = 413, description = "Body larger than the cap", body = tka_core::api::Problem, content_type = "application/problem+json"),
        (status = 415, description = "Body is not `application/json`", body = tka_core::api::Problem, content_type = "application/problem+json"),
        (status = 429, description = "Too many requests from this device; see `Retry-After`", body = tka_core::api::Problem, content_type = "application/problem+json"),
        (status = 503, description = "tailscaled or the Kubernetes API is unavailable; retry", body = tka_core::api::Problem, content_type = "application/problem+json"),
        (status = 504, description = "tailscaled or the Kubernetes API did not answer in time", body = tka_core::api::Problem, content_type = "application/problem+json"),
    )
)]
pub async fn login(
    State(state): State<Arc<ApiState>>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    JsonBody(request): JsonBody<LoginRequest>,
) -> Result<Response, ApiError> {
    let identity = &*caller.identity;
    let metrics = &state.metrics;
    let role = match request.role.as_deref().map(RoleName::new).transpose() {
        Ok(role) => role,
        Err(e) => {
            metrics.login(LoginOutcome::Invalid);
            return Err(ApiError::BadRequest(format!("\"role\": {e}")));
        }
    };
    let grants = ParsedGrants::from_identity(identity);
    report_skipped(&state, &grants, identity);
    let mappings = state.backends.mappings.snapshot();
    let decision = match resolve(&ResolveRequest {
        context: state.policy_context(identity, &grants, &mappings),
        role: role.as_ref(),
        ttl: request.ttl.as_deref().map(TtlRequest::Text),
        now: state.backends.clock.now(),
    }) {
        Ok(decision) => decision,
        Err(denial) => {
            metrics.login(if denial.kind.is_bad_request() {
                LoginOutcome::Invalid
            } else {
                LoginOutcome::Denied
            });
            Record::new(Event::Denial, identity, &caller.peer)
                .denial(&denial)
                .emit();
            return Err(denial.into());
        }
    };

    let issued = state
        .issuer_call(state.backends.issuer.issue(identity, &decision))
        .await;
    let credential = match issued {
        Ok(credential) => credential,
        Err(error) => {
            metrics.login(LoginOutcome::Failed);
            Record::new(Event::Issue, identity, &caller.peer)
                .decision(&decision)
                .outcome("failed")
                .reason(&error)
                .emit();
            return Err(error);
        }
    };
    metrics.login(LoginOutcome::Issued);
    metrics.token_minted();
    Record::new(Event::Issue, identity, &caller.peer)
        .decision(&decision)
        .credential(&credential)
        .outcome(outcome_word(credential.outcome))
        .emit();

    let response = LoginResponse {
        cluster: state.config.cluster.clone(),
        session: SessionInfo::from((&credential, identity)),
        token: TokenInfo {
            token: credential.token,
            expires_at: credential.token_expires_at,
        },
        ttl: decision.ttl,
        clamped: decision.clamped,
    };
    if wants_yaml(&headers) {
        let yaml = kubeconfig::render(&response)
            .map_err(|e| ApiError::Internal(format!("rendering the kubeconfig failed: {e}")))?;
        return Ok((
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static(kubeconfig::CONTENT_TYPE),
            )],
            yaml,
        )
            .into_response());
    }
    Ok(Json(response).into_response())
}

/// Whether a live session's grant still holds: [`grant_holds`], the decision the reconciler
/// makes too, over the server's one view of the mappings.
fn recheck(state: &ApiState, identity: &Identity, session: &issuer::SessionInfo) -> GrantVerdict {
    let grants = ParsedGrants::from_identity(identity);
    let mappings = state.backends.mappings.snapshot();
    grant_holds(
        &state.policy_context(identity, &grants, &mappings),
        &HeldGrant {
            role: &session.role,
            cluster_roles: &session.cluster_roles,
            namespaced: &session.namespaced,
        },
        state.backends.clock.now(),
    )
}

/// A fresh token for the caller's live session; re-checks identity and grant, and ends the
/// session if the grant no longer holds.
#[utoipa::path(
    post,
    path = "/api/v1/token",
    tag = "sessions",
    request_body(content = EmptyRequest, content_type = "application/json", description = "`{}`"),
    responses(
        (status = 200, description = "A new token within the session", body = TokenResponse),
        (status = 400, description = "Malformed body", body = tka_core::api::Problem, content_type = "application/problem+json"),
        (status = 403, description = "Refused, or the grant no longer holds and the session was ended (`sessionEnded`)", body = tka_core::api::Problem, content_type = "application/problem+json"),
        (status = 404, description = "No live session (`noSession`, `sessionExpired`, `sessionRevoked`); log in again", body = tka_core::api::Problem, content_type = "application/problem+json"),
        (status = 409, description = "The session is being set up or changed; retry", body = tka_core::api::Problem, content_type = "application/problem+json"),
        (status = 413, description = "Body larger than the cap", body = tka_core::api::Problem, content_type = "application/problem+json"),
        (status = 415, description = "Body is not `application/json`", body = tka_core::api::Problem, content_type = "application/problem+json"),
        (status = 429, description = "Too many requests from this device; see `Retry-After`", body = tka_core::api::Problem, content_type = "application/problem+json"),
        (status = 503, description = "tailscaled or the Kubernetes API is unavailable, or the session's GrantMapping is not checked yet; retry", body = tka_core::api::Problem, content_type = "application/problem+json"),
        (status = 504, description = "tailscaled or the Kubernetes API did not answer in time", body = tka_core::api::Problem, content_type = "application/problem+json"),
    )
)]
pub async fn token(
    State(state): State<Arc<ApiState>>,
    Extension(caller): Extension<Caller>,
    JsonBody(_): JsonBody<EmptyRequest>,
) -> Result<Json<TokenResponse>, ApiError> {
    let identity = &*caller.identity;
    let issuer = &state.backends.issuer;
    let session = state
        .issuer_call(issuer.describe(identity.key()))
        .await?
        .ok_or(ApiError::NoSession)?;
    match session.state {
        SessionState::Active | SessionState::Pending => {}
        SessionState::Expired => {
            return Err(IssueError::Expired {
                session: session.name,
                expired_at: session.expires_at,
            }
            .into());
        }
        _ => {
            return Err(IssueError::Revoked {
                session: session.name,
            }
            .into());
        }
    }

    let verdict = recheck(&state, identity, &session);
    if let GrantVerdict::Undecided(why) = verdict {
        // Neither a fresh token nor a revocation until the mapping's state is known.
        return Err(IssueError::Unavailable {
            action: "confirm that the session's GrantMapping is still usable".to_owned(),
            source: why.into(),
        }
        .into());
    }
    if let GrantVerdict::Withdrawn { reason, denial } = verdict {
        let mut denied = Record::new(Event::Denial, identity, &caller.peer)
            .role(&session.role)
            .sessions(std::slice::from_ref(&session.name));
        if let Some(denial) = &denial {
            denied = denied.denial(denial);
        }
        denied.outcome("grantWithdrawn").reason(&reason).emit();
        let revoked = state.issuer_call(issuer.revoke(identity.key())).await;
        let revoke_record = Record::new(Event::Revoke, identity, &caller.peer)
            .role(&session.role)
            .expires_at(session.expires_at)
            .reason(&reason);
        match revoked {
            Ok(sessions) => {
                state
                    .metrics
                    .revoked(RevocationCause::GrantWithdrawn, sessions.len() as u64);
                revoke_record
                    .sessions(&sessions)
                    .outcome("grantWithdrawn")
                    .emit();
            }
            Err(error) => {
                revoke_record
                    .sessions(std::slice::from_ref(&session.name))
                    .outcome("failed")
                    .emit();
                return Err(error);
            }
        }
        return Err(ApiError::GrantWithdrawn {
            session: session.name,
            reason,
            roles: denial.map(|d| d.listing),
        });
    }

    let credential = match state.issuer_call(issuer.refresh(identity)).await {
        Ok(credential) => credential,
        Err(error) => {
            Record::new(Event::Refresh, identity, &caller.peer)
                .role(&session.role)
                .sessions(std::slice::from_ref(&session.name))
                .outcome("failed")
                .reason(&error)
                .emit();
            return Err(error);
        }
    };
    state.metrics.token_minted();
    Record::new(Event::Refresh, identity, &caller.peer)
        .credential(&credential)
        .outcome("refreshed")
        .emit();
    Ok(Json(TokenResponse {
        session: SessionInfo::from((&credential, identity)),
        token: TokenInfo {
            token: credential.token,
            expires_at: credential.token_expires_at,
        },
    }))
}

/// The caller's live session.
#[utoipa::path(
    get,
    path = "/api/v1/session",
    tag = "sessions",
    responses(
        (status = 200, description = "The device's live session", body = SessionInfo),
        (status = 403, description = "Refused (browser request, unknown Host, caller not in the tailnet)", body = tka_core::api::Problem, content_type = "application/problem+json"),
        (status = 404, description = "The device has no live session (`noSession`)", body = tka_core::api::Problem, content_type = "application/problem+json"),
        (status = 429, description = "Too many requests from this device; see `Retry-After`", body = tka_core::api::Problem, content_type = "application/problem+json"),
        (status = 503, description = "tailscaled or the Kubernetes API is unavailable; retry", body = tka_core::api::Problem, content_type = "application/problem+json"),
        (status = 504, description = "tailscaled or the Kubernetes API did not answer in time", body = tka_core::api::Problem, content_type = "application/problem+json"),
    )
)]
pub async fn get_session(
    State(state): State<Arc<ApiState>>,
    Extension(caller): Extension<Caller>,
) -> Result<Json<SessionInfo>, ApiError> {
    let session = state
        .issuer_call(state.backends.issuer.describe(caller.identity.key()))
        .await?
        .filter(is_live)
        .ok_or(ApiError::NoSession)?;
    Ok(Json(SessionInfo::from(&session)))
}

/// Log out: revoke the device's session now. Idempotent.
#[utoipa::path(
    delete,
    path = "/api/v1/session",
    tag = "sessions",
    responses(
        (status = 204, description = "The device has no session any more (whether or not it had one)"),
        (status = 403, description = "Refused (browser request, unknown Host, caller not in the tailnet)", body = tka_core::api::Problem, content_type = "application/problem+json"),
        (status = 429, description = "Too many requests from this device; see `Retry-After`", body = tka_core::api::Problem, content_type = "application/problem+json"),
        (status = 503, description = "tailscaled or the Kubernetes API is unavailable; retry", body = tka_core::api::Problem, content_type = "application/problem+json"),
        (status = 504, description = "tailscaled or the Kubernetes API did not answer in time", body = tka_core::api::Problem, content_type = "application/problem+json"),
    )
)]
pub async fn delete_session(
    State(state): State<Arc<ApiState>>,
    Extension(caller): Extension<Caller>,
) -> Result<StatusCode, ApiError> {
    let identity = &*caller.identity;
    let revoked = state
        .issuer_call(state.backends.issuer.revoke(identity.key()))
        .await;
    let record = Record::new(Event::Revoke, identity, &caller.peer).reason("logout");
    match revoked {
        Ok(sessions) => {
            state
                .metrics
                .revoked(RevocationCause::Logout, sessions.len() as u64);
            record
                .sessions(&sessions)
                .outcome(if sessions.is_empty() {
                    "none"
                } else {
                    "revoked"
                })
                .emit();
            Ok(StatusCode::NO_CONTENT)
        }
        Err(error) => {
            record.outcome("failed").emit();
            Err(error)
        }
    }
}

/// This cluster, how to reach it, and the roles the caller could get here.
#[utoipa::path(
    get,
    path = "/api/v1/cluster",
    tag = "cluster",
    responses(
        (status = 200, description = "The cluster and the caller's roles on it", body = ClusterResponse),
        (status = 403, description = "Refused (browser request, unknown Host, caller not in the tailnet)", body = tka_core::api::Problem, content_type = "application/problem+json"),
        (status = 429, description = "Too many requests from this device; see `Retry-After`", body = tka_core::api::Problem, content_type = "application/problem+json"),
        (status = 503, description = "tailscaled or the Kubernetes API is unavailable; retry", body = tka_core::api::Problem, content_type = "application/problem+json"),
        (status = 504, description = "tailscaled or the Kubernetes API did not answer in time", body = tka_core::api::Problem, content_type = "application/problem+json"),
    )
)]
pub async fn cluster(
    State(state): State<Arc<ApiState>>,
    Extension(caller): Extension<Caller>,
) -> Result<Json<ClusterResponse>, ApiError> {
    let identity = &*caller.identity;
    let grants = ParsedGrants::from_identity(identity);
    report_skipped(&state, &grants, identity);
    let mappings = state.backends.mappings.snapshot();
    let roles = available_roles(&state.policy_context(identity, &grants, &mappings));
    let session = state
        .issuer_call(state.backends.issuer.describe(identity.key()))
        .await?
        .filter(is_live)
        .map(|s| SessionInfo::from(&s));
    Ok(Json(ClusterResponse {
        cluster: state.config.cluster.clone(),
        caller: identity.describe(),
        roles,
        session,
    }))
}

/// This API's OpenAPI 3 document.
#[utoipa::path(
    get,
    path = "/api/v1/openapi.json",
    tag = "meta",
    responses(
        (status = 200, description = "The OpenAPI document", content_type = "application/json", body = Object),
        (status = 403, description = "Refused (browser request, unknown Host, caller not in the tailnet)", body = tka_core::api::Problem, content_type = "application/problem+json"),
        (status = 429, description = "Too many requests from this device; see `Retry-After`", body = tka_core::api::Problem, content_type = "application/problem+json"),
    )
)]
pub async fn openapi_document() -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        openapi::json(),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yaml_is_chosen_only_when_asked_for() {
        let mut h = HeaderMap::new();
        assert!(!wants_yaml(&h));
        h.insert(header::ACCEPT, HeaderValue::from_static("application/json"));
        assert!(!wants_yaml(&h));
        h.insert(
            header::ACCEPT,
            HeaderValue::from_static("text/html, application/yaml;q=0.9"),
        );
        assert!(wants_yaml(&h));
    }
}
