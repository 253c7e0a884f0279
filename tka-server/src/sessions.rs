//! The sessions service (DESIGN §6): what a login, a token refresh and a logout do, for any front
//! that calls it (the HTTP API today, the proxy next). [`Sessions`] describes the device's
//! session, asks policy ([`tka_core::resolve`], [`grant_holds`]) over the server's one view of the
//! GrantMappings, and calls the [`CredentialIssuer`] under the issuer deadline. Each operation comes
//! to an outcome ([`LoginOutcome`], [`TokenOutcome`], [`LogoutOutcome`]), and ONE
//! [`Sessions::observe`] turns every outcome into its audit record and metrics, so no front
//! repeats that pair.
//!
//! It knows nothing of HTTP: no status codes, headers, bodies or response formats (those are the
//! fronts' and [`crate::error`]'s), and it must not import a front, the router or the error
//! mapping. It reads [`crate::state`] only.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tka_core::api::{
    ClusterResponse, LoginRequest, LoginResponse, SessionInfo, TokenInfo, TokenResponse, Via,
};
use tka_core::issuer::{self, IssueError, IssueOutcome, IssuedCredential, SessionState};
use tka_core::policy::{GrantVerdict, HeldGrant, RoleListing, grant_holds};
use tka_core::{
    Decision, Denial, Identity, ParsedGrants, PolicyContext, ResolveRequest, RoleName, SessionName,
    TtlRequest, available_roles, resolve,
};

use crate::audit::{Event, Record};
use crate::listener::Peer;
use crate::metrics::{LoginOutcome as LoginMetric, RevocationCause};
use crate::state::ApiState;

/// A caller that passed every check of its front: who tailscaled says it is, and how it
/// connected.
#[derive(Debug, Clone)]
pub struct Caller {
    /// The identity whois reported for this request's connection.
    pub identity: Arc<Identity>,
    /// The connection's peer.
    pub peer: Peer,
}

/// Why a session operation did not do what was asked. Fronts map it to their own answers (the
/// API: [`crate::error::ApiError`]).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SessionError {
    /// The request names a role that is not a valid role name.
    #[error("\"role\": {0}")]
    InvalidRole(String),
    /// Policy refused (or the TTL does not parse).
    #[error(transparent)]
    Denied(Box<Denial>),
    /// At refresh, the grant behind the session no longer holds; the session was ended.
    #[error(
        "session {session} was ended because its grant no longer holds: {reason}; run `tka login` to get a role you still hold"
    )]
    GrantWithdrawn {
        /// The session that was revoked.
        session: SessionName,
        /// Why the grant no longer holds, naming what is missing.
        reason: String,
        /// What the caller still holds here, when policy said.
        roles: Option<Box<RoleListing>>,
    },
    /// The device has no live session.
    #[error("this device has no live session on this cluster; run `tka login` first")]
    NoSession,
    /// A token for direct use was asked of a proxy-only server.
    #[error(
        "cluster {cluster} is reached through the tka proxy only, so this server hands no token to a laptop; run `tka login {cluster}` (it uses the proxy) instead of asking for a token"
    )]
    ProxyOnly {
        /// The cluster.
        cluster: tka_core::ClusterName,
    },
    /// A login through the proxy was asked of a server that runs none.
    #[error(
        "this server runs no tka proxy for cluster {cluster}; log in without `--via proxy` (or with `--via direct`)"
    )]
    NoProxy {
        /// The cluster.
        cluster: tka_core::ClusterName,
    },
    /// The issuer failed.
    #[error(transparent)]
    Issue(#[from] IssueError),
    /// The issuer did not answer within its deadline.
    #[error("{what} did not answer within {}s; try again", .after.as_secs_f32())]
    Timeout {
        /// What was called.
        what: &'static str,
        /// The deadline.
        after: Duration,
    },
}

/// What a login came to.
#[derive(Debug)]
#[non_exhaustive]
pub enum LoginOutcome {
    /// The request was malformed before policy was asked.
    Invalid(SessionError),
    /// Policy refused (or the TTL does not parse).
    Denied(Box<Denial>),
    /// Policy allowed; the issuer failed.
    Failed {
        /// What policy allowed.
        decision: Decision,
        /// Why the issuer failed.
        error: SessionError,
    },
    /// A session was created, extended or changed, and a token minted; through the proxy the
    /// token stays on the server and is dropped there.
    Issued {
        /// What policy allowed.
        decision: Decision,
        /// The session and its token.
        credential: IssuedCredential,
        /// How kubectl reaches the cluster: through the proxy, the caller gets no token.
        via: Via,
    },
}

/// What a token refresh came to.
#[derive(Debug)]
#[non_exhaustive]
pub enum TokenOutcome {
    /// Nothing changed: no live session, or its grant cannot be checked yet, or the session
    /// could not be described.
    Refused(SessionError),
    /// The grant no longer holds; the session was ended (`revoked` says whether that worked).
    Withdrawn {
        /// The session whose grant was withdrawn.
        session: issuer::SessionInfo,
        /// Why the grant no longer holds.
        reason: String,
        /// Policy's refusal, when policy refused the role outright.
        denial: Option<Box<Denial>>,
        /// The sessions ended, or why ending them failed.
        revoked: Result<Vec<SessionName>, SessionError>,
    },
    /// The grant holds; minting the token failed.
    Failed {
        /// The live session.
        session: issuer::SessionInfo,
        /// Why the issuer failed.
        error: SessionError,
    },
    /// A fresh token within the session.
    Refreshed {
        /// The session and its token.
        credential: IssuedCredential,
    },
}

/// What a logout came to.
#[derive(Debug)]
#[non_exhaustive]
pub enum LogoutOutcome {
    /// The device has no session any more; these were ended (none when it had none).
    LoggedOut(Vec<SessionName>),
    /// Ending the sessions failed.
    Failed(SessionError),
}

/// Any outcome, as [`Sessions::observe`] takes it.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub enum Outcome<'a> {
    /// A login's.
    Login(&'a LoginOutcome),
    /// A token refresh's.
    Token(&'a TokenOutcome),
    /// A logout's.
    Logout(&'a LogoutOutcome),
}

/// The sessions service over one [`ApiState`]. Cheap to make: one per request.
#[derive(Debug, Clone, Copy)]
pub struct Sessions<'a> {
    state: &'a ApiState,
}

impl<'a> Sessions<'a> {
    /// The service over `state`.
    pub fn new(state: &'a ApiState) -> Self {
        Self { state }
    }

    /// Log in: decide (policy over the caller's grants and the mappings), then create or extend
    /// the device's session and mint a token, which the caller gets only for a direct login
    /// (`via`; through the tka proxy the answer holds no token). Observed.
    pub async fn login(
        &self,
        caller: &Caller,
        request: &LoginRequest,
    ) -> Result<LoginResponse, SessionError> {
        let outcome = self.login_outcome(caller, request).await;
        self.observe(caller, Outcome::Login(&outcome));
        let identity = &*caller.identity;
        match outcome {
            LoginOutcome::Invalid(error) | LoginOutcome::Failed { error, .. } => Err(error),
            LoginOutcome::Denied(denial) => Err(SessionError::Denied(denial)),
            LoginOutcome::Issued {
                decision,
                credential,
                via,
            } => Ok(LoginResponse {
                cluster: self.state.config.cluster_endpoint(),
                session: SessionInfo::from((&credential, identity)),
                // Through the proxy the laptop holds no credential: the token is dropped here.
                token: (via == Via::Direct).then_some(TokenInfo {
                    token: credential.token,
                    expires_at: credential.token_expires_at,
                }),
                via,
                ttl: decision.ttl,
                clamped: decision.clamped,
            }),
        }
    }

    /// How a login reaches the cluster: as asked, else through the proxy on a proxy-only server
    /// and directly otherwise. A direct login on a proxy-only server and a proxy login on a
    /// server without a proxy are refused before policy is asked.
    fn via(&self, asked: Option<Via>) -> Result<Via, SessionError> {
        let config = &self.state.config;
        let cluster = || config.cluster.name.clone();
        match asked {
            None if config.proxy_only => Ok(Via::Proxy),
            None => Ok(Via::Direct),
            Some(Via::Direct) if config.proxy_only => {
                Err(SessionError::ProxyOnly { cluster: cluster() })
            }
            Some(Via::Proxy) if config.cluster.proxy.is_none() => {
                Err(SessionError::NoProxy { cluster: cluster() })
            }
            Some(via) => Ok(via),
        }
    }

    async fn login_outcome(&self, caller: &Caller, request: &LoginRequest) -> LoginOutcome {
        let state = self.state;
        let identity = &*caller.identity;
        let via = match self.via(request.via) {
            Ok(via) => via,
            Err(e) => return LoginOutcome::Invalid(e),
        };
        let role = match request.role.as_deref().map(RoleName::new).transpose() {
            Ok(role) => role,
            Err(e) => return LoginOutcome::Invalid(SessionError::InvalidRole(e.to_string())),
        };
        let grants = ParsedGrants::from_identity(identity);
        state.report_skipped(&grants, identity);
        let mappings = state.backends.mappings.snapshot();
        let decision = match resolve(&ResolveRequest {
            context: self.policy_context(identity, &grants, &mappings),
            role: role.as_ref(),
            ttl: request.ttl.as_deref().map(TtlRequest::Text),
            now: state.backends.clock.now(),
        }) {
            Ok(decision) => decision,
            Err(denial) => return LoginOutcome::Denied(Box::new(denial)),
        };
        match self
            .issuer_call(state.backends.issuer.issue(identity, &decision))
            .await
        {
            Ok(credential) => LoginOutcome::Issued {
                decision,
                credential,
                via,
            },
            Err(error) => LoginOutcome::Failed { decision, error },
        }
    }

    /// A fresh token for the caller's live session: re-checks the grant ([`grant_holds`], the
    /// decision the reconciler makes too) and ends the session if it no longer holds. Observed.
    pub async fn token(&self, caller: &Caller) -> Result<TokenResponse, SessionError> {
        let credential = self.fresh_credential(caller).await?;
        Ok(TokenResponse {
            session: SessionInfo::from((&credential, &*caller.identity)),
            token: TokenInfo {
                token: credential.token,
                expires_at: credential.token_expires_at,
            },
        })
    }

    /// A fresh token handed to the caller itself (`POST /api/v1/token`): [`Self::token`], except
    /// that a proxy-only server hands none out. (The proxy mints through [`Self::token`] and keeps
    /// its tokens in memory, so it works on a proxy-only server.) Observed.
    pub async fn token_for_caller(&self, caller: &Caller) -> Result<TokenResponse, SessionError> {
        if self.state.config.proxy_only {
            let refused = || SessionError::ProxyOnly {
                cluster: self.state.config.cluster.name.clone(),
            };
            self.observe(caller, Outcome::Token(&TokenOutcome::Refused(refused())));
            return Err(refused());
        }
        self.token(caller).await
    }

    /// A token for the proxy to forward the caller's requests with (DESIGN §8): the same path as
    /// [`Sessions::token`] (the grant re-checked, a grant that no longer holds ends the session,
    /// the mint observed as a refresh), but the credential itself comes back (token, its ID and
    /// expiry), for the proxy to keep in memory only.
    pub async fn proxy_credential(
        &self,
        caller: &Caller,
    ) -> Result<IssuedCredential, SessionError> {
        self.fresh_credential(caller).await
    }

    /// The credential behind [`Self::token`] and [`Self::proxy_credential`], observed.
    async fn fresh_credential(&self, caller: &Caller) -> Result<IssuedCredential, SessionError> {
        let outcome = self.token_outcome(caller).await;
        self.observe(caller, Outcome::Token(&outcome));
        match outcome {
            TokenOutcome::Refreshed { credential } => Ok(credential),
            TokenOutcome::Refused(error)
            | TokenOutcome::Failed { error, .. }
            | TokenOutcome::Withdrawn {
                revoked: Err(error),
                ..
            } => Err(error),
            TokenOutcome::Withdrawn {
                session,
                reason,
                denial,
                revoked: Ok(_),
            } => Err(SessionError::GrantWithdrawn {
                session: session.name,
                reason,
                roles: denial.map(|d| d.listing),
            }),
        }
    }

    async fn token_outcome(&self, caller: &Caller) -> TokenOutcome {
        let identity = &*caller.identity;
        let issuer = &self.state.backends.issuer;
        let session = match self.issuer_call(issuer.describe(identity.key())).await {
            Ok(Some(session)) => session,
            Ok(None) => return TokenOutcome::Refused(SessionError::NoSession),
            Err(error) => return TokenOutcome::Refused(error),
        };
        match session.state {
            SessionState::Active | SessionState::Pending => {}
            SessionState::Expired => {
                return TokenOutcome::Refused(
                    IssueError::Expired {
                        session: session.name,
                        expired_at: session.expires_at,
                    }
                    .into(),
                );
            }
            _ => {
                return TokenOutcome::Refused(
                    IssueError::Revoked {
                        session: session.name,
                    }
                    .into(),
                );
            }
        }

        match self.recheck(identity, &session) {
            GrantVerdict::Holds => {}
            // Neither a fresh token nor a revocation until the mapping's state is known.
            GrantVerdict::Undecided(why) => {
                return TokenOutcome::Refused(
                    IssueError::Unavailable {
                        action: "confirm that the session's GrantMapping is still usable"
                            .to_owned(),
                        source: why.into(),
                    }
                    .into(),
                );
            }
            GrantVerdict::Withdrawn { reason, denial } => {
                let revoked = self.issuer_call(issuer.revoke(identity.key())).await;
                return TokenOutcome::Withdrawn {
                    session,
                    reason,
                    denial,
                    revoked,
                };
            }
        }

        match self.issuer_call(issuer.refresh(identity)).await {
            Ok(credential) => TokenOutcome::Refreshed { credential },
            Err(error) => TokenOutcome::Failed { session, error },
        }
    }

    /// Log out: revoke the device's session now. Idempotent. Observed.
    pub async fn logout(&self, caller: &Caller) -> Result<Vec<SessionName>, SessionError> {
        let outcome = match self
            .issuer_call(self.state.backends.issuer.revoke(caller.identity.key()))
            .await
        {
            Ok(sessions) => LogoutOutcome::LoggedOut(sessions),
            Err(error) => LogoutOutcome::Failed(error),
        };
        self.observe(caller, Outcome::Logout(&outcome));
        match outcome {
            LogoutOutcome::LoggedOut(sessions) => Ok(sessions),
            LogoutOutcome::Failed(error) => Err(error),
        }
    }

    /// The caller's live session. Reads only; not observed.
    pub async fn session(&self, caller: &Caller) -> Result<SessionInfo, SessionError> {
        self.live_session(&caller.identity)
            .await?
            .ok_or(SessionError::NoSession)
    }

    /// This cluster, the roles the caller could get here, and its live session. Reads only; not
    /// observed.
    pub async fn cluster(&self, caller: &Caller) -> Result<ClusterResponse, SessionError> {
        let identity = &*caller.identity;
        let roles = self.roles(identity);
        let session = self.live_session(identity).await?;
        Ok(ClusterResponse {
            cluster: self.state.config.cluster_endpoint(),
            caller: identity.describe(),
            roles,
            session,
        })
    }

    /// Whether the policy makes some role on this cluster available to `identity` (what
    /// `GET /api/v1/cluster` lists). Reads only; not observed.
    pub fn has_available_role(&self, identity: &Identity) -> bool {
        !self.roles(identity).roles.is_empty()
    }

    /// The roles `identity` could get here, by the tailnet grants and the mappings.
    fn roles(&self, identity: &Identity) -> RoleListing {
        let grants = ParsedGrants::from_identity(identity);
        self.state.report_skipped(&grants, identity);
        let mappings = self.state.backends.mappings.snapshot();
        available_roles(&self.policy_context(identity, &grants, &mappings))
    }

    /// The one place an outcome becomes an audit record and metrics.
    pub fn observe(&self, caller: &Caller, outcome: Outcome<'_>) {
        let metrics = &self.state.metrics;
        let identity = &*caller.identity;
        let record = |event| Record::new(event, identity, &caller.peer);
        match outcome {
            Outcome::Login(LoginOutcome::Invalid(
                error @ (SessionError::ProxyOnly { .. } | SessionError::NoProxy { .. }),
            )) => {
                metrics.login(LoginMetric::Denied);
                record(Event::Denial)
                    .outcome(match error {
                        SessionError::ProxyOnly { .. } => "proxyOnly",
                        _ => "noProxy",
                    })
                    .reason(error)
                    .emit();
            }
            Outcome::Login(LoginOutcome::Invalid(_)) => metrics.login(LoginMetric::Invalid),
            Outcome::Login(LoginOutcome::Denied(denial)) => {
                metrics.login(if denial.kind.is_bad_request() {
                    LoginMetric::Invalid
                } else {
                    LoginMetric::Denied
                });
                record(Event::Denial).denial(denial).emit();
            }
            Outcome::Login(LoginOutcome::Failed { decision, error }) => {
                metrics.login(LoginMetric::Failed);
                record(Event::Issue)
                    .decision(decision)
                    .outcome("failed")
                    .reason(error)
                    .emit();
            }
            Outcome::Login(LoginOutcome::Issued {
                decision,
                credential,
                via,
            }) => {
                metrics.login(LoginMetric::Issued);
                metrics.token_minted();
                let issued = record(Event::Issue).decision(decision).via(*via);
                let issued = match via {
                    Via::Direct => issued.credential(credential),
                    // The caller got no token: the record names the session only.
                    _ => issued.session_of(credential),
                };
                issued.outcome(outcome_word(credential.outcome)).emit();
            }
            Outcome::Token(TokenOutcome::Refused(error @ SessionError::ProxyOnly { .. })) => {
                record(Event::Denial)
                    .outcome("proxyOnly")
                    .reason(error)
                    .emit();
            }
            Outcome::Token(TokenOutcome::Refused(_)) => {}
            Outcome::Token(TokenOutcome::Withdrawn {
                session,
                reason,
                denial,
                revoked,
            }) => {
                let mut denied = record(Event::Denial)
                    .role(&session.role)
                    .sessions(std::slice::from_ref(&session.name));
                if let Some(denial) = denial {
                    denied = denied.denial(denial);
                }
                denied.outcome("grantWithdrawn").reason(reason).emit();
                let revoke = record(Event::Revoke)
                    .role(&session.role)
                    .expires_at(session.expires_at)
                    .reason(reason);
                match revoked {
                    Ok(sessions) => {
                        metrics.revoked(RevocationCause::GrantWithdrawn, sessions.len() as u64);
                        revoke.sessions(sessions).outcome("grantWithdrawn").emit();
                    }
                    Err(_) => revoke
                        .sessions(std::slice::from_ref(&session.name))
                        .outcome("failed")
                        .emit(),
                }
            }
            Outcome::Token(TokenOutcome::Failed { session, error }) => record(Event::Refresh)
                .role(&session.role)
                .sessions(std::slice::from_ref(&session.name))
                .outcome("failed")
                .reason(error)
                .emit(),
            Outcome::Token(TokenOutcome::Refreshed { credential }) => {
                metrics.token_minted();
                record(Event::Refresh)
                    .credential(credential)
                    .outcome("refreshed")
                    .emit();
            }
            Outcome::Logout(LogoutOutcome::LoggedOut(sessions)) => {
                metrics.revoked(RevocationCause::Logout, sessions.len() as u64);
                record(Event::Revoke)
                    .reason("logout")
                    .sessions(sessions)
                    .outcome(if sessions.is_empty() {
                        "none"
                    } else {
                        "revoked"
                    })
                    .emit();
            }
            Outcome::Logout(LogoutOutcome::Failed(_)) => record(Event::Revoke)
                .reason("logout")
                .outcome("failed")
                .emit(),
        }
    }

    /// Whether a live session's grant still holds: [`grant_holds`], the decision the reconciler
    /// makes too, over the server's one view of the mappings.
    fn recheck(&self, identity: &Identity, session: &issuer::SessionInfo) -> GrantVerdict {
        let grants = ParsedGrants::from_identity(identity);
        let mappings = self.state.backends.mappings.snapshot();
        grant_holds(
            &self.policy_context(identity, &grants, &mappings),
            &HeldGrant {
                role: &session.role,
                cluster_roles: &session.cluster_roles,
                namespaced: &session.namespaced,
            },
            self.state.backends.clock.now(),
        )
    }

    async fn live_session(&self, identity: &Identity) -> Result<Option<SessionInfo>, SessionError> {
        Ok(self
            .issuer_call(self.state.backends.issuer.describe(identity.key()))
            .await?
            .filter(is_live)
            .map(|s| SessionInfo::from(&s)))
    }

    /// Runs an issuer call under the issuer deadline.
    async fn issuer_call<T>(
        &self,
        call: impl Future<Output = Result<T, IssueError>>,
    ) -> Result<T, SessionError> {
        let after = self.state.config.issuer_timeout;
        match tokio::time::timeout(after, call).await {
            Ok(result) => result.map_err(SessionError::Issue),
            Err(_) => Err(SessionError::Timeout {
                what: "the Kubernetes API",
                after,
            }),
        }
    }

    fn policy_context<'c>(
        &'c self,
        identity: &'c Identity,
        grants: &'c ParsedGrants,
        mappings: &'c [tka_core::MappingView],
    ) -> PolicyContext<'c> {
        PolicyContext {
            identity,
            grants,
            mappings,
            cluster: &self.state.config.cluster.name,
            settings: &self.state.config.policy,
        }
    }
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
