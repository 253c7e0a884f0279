//! `tka login`: ask the server for a session, write the kubeconfig, seed the token cache, say
//! what happened. The kubeconfig is checked before the server is asked (its content, and that a
//! file can be written where it goes), so a broken or read-only file costs no session; if the
//! write still fails after the server answered, the new session is ended again.
//!
//! It owns that order, and how kubectl will reach the cluster (`--via`; by default the tka
//! proxy whenever the cluster's server offers one): a proxied context points at the proxy and
//! holds no credential, so nothing is cached either. It must not leave a session on the server
//! that no kubeconfig names, nor find servers itself ([`super::servers`] does).

use jiff::Timestamp;
use serde::Serialize;
use tka_core::api::{ClusterEndpoint, LoginResponse, Via};
use tka_core::endpoint::ServerUrl;
use tka_core::kubeconfig::{
    ContextTemplate, EntryOptions, Kubeconfig, LoginEntries, UserCredential,
};
use tka_core::policy::TtlClamp;
use tka_core::token_cache::{CacheKey, CachedToken};
use tka_core::{Clock, ClusterName, Secret, Ttl};

use crate::cache::TokenCache;
use crate::client::{ApiClient, ApiError, Network};
use crate::discovery::Outcome;
use crate::error::CliError;
use crate::kubeconfig_file::KubeconfigFile;
use crate::output::{self, Untrusted};
use crate::settings::{CredentialMode, LoginSettings, SessionSettings, Settings};

use super::servers::resolve_server;

/// What `tka login` reports (`-o json|yaml`).
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct LoginSummary {
    pub(crate) cluster: String,
    pub(crate) server: ServerUrl,
    pub(crate) context: String,
    pub(crate) kubeconfig: String,
    pub(crate) role: String,
    pub(crate) caller: String,
    pub(crate) device: String,
    pub(crate) ttl: Ttl,
    pub(crate) session_expires_at: Timestamp,
    /// Absent through the proxy: no token reached this machine.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) token_expires_at: Option<Timestamp>,
    /// How kubectl reaches the cluster: `proxy` or `direct`.
    pub(crate) via: Via,
    /// `exec`, `static`, or `none` (through the proxy).
    pub(crate) credential: &'static str,
    pub(crate) switched: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) previous_context: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) clamped: Option<TtlClamp>,
}

pub(crate) fn run(
    settings: &Settings,
    login: &LoginSettings,
    clock: &dyn Clock,
) -> Result<(), CliError> {
    let Some(cluster) = &login.cluster else {
        return run_all(settings, login, clock);
    };
    let session = login.options.for_cluster(cluster.clone());
    let summary = login_one(settings, login, &session, None, clock)?;
    output::result(settings.output, &summary, || human(&summary, clock))
}

/// `tka login --all`: every cluster discovery trusts (name conflicts are skipped with a note).
fn run_all(settings: &Settings, login: &LoginSettings, clock: &dyn Clock) -> Result<(), CliError> {
    let found = super::servers::discover(settings, clock)?;
    let mut summaries = Vec::new();
    let mut failures = Vec::new();
    for f in &found {
        match &f.outcome {
            Outcome::Trusted(response) => {
                let session = login.options.for_cluster(response.cluster.name.clone());
                match login_one(
                    settings,
                    login,
                    &session,
                    Some((f.candidate.url.clone(), Some(response.cluster.clone()))),
                    clock,
                ) {
                    Ok(summary) => summaries.push(summary),
                    Err(e) => failures.push(e),
                }
            }
            Outcome::Conflict { response, .. } => output::note(&format!(
                "Skipped {} at {}: its cluster name is in conflict (see `tka list`).",
                response.cluster.name,
                Untrusted(&f.candidate.node.name)
            )),
            Outcome::Offline | Outcome::Failed(_) => {}
        }
    }
    let printed = output::result(settings.output, &summaries, || {
        let mut out: String = summaries.iter().map(|s| human(s, clock)).collect();
        if summaries.is_empty() {
            out += "No cluster to log in to (see `tka list`).\n";
        }
        out
    });
    super::failures::several(failures, printed)
}

/// One login: checks the kubeconfig, finds the server (unless given), asks it, writes the
/// entries and seeds the token cache.
fn login_one(
    settings: &Settings,
    login: &LoginSettings,
    session: &SessionSettings,
    server: Option<(ServerUrl, Option<ClusterEndpoint>)>,
    clock: &dyn Clock,
) -> Result<LoginSummary, CliError> {
    let file = KubeconfigFile::locate(&settings.env)?;
    file.check_can_write()?;
    let config = file.read()?;
    let context = login.template.render(&session.cluster);
    config.check_login(&context).map_err(|source| {
        crate::kubeconfig_file::KubeconfigFileError::Refused {
            path: file.path().to_path_buf(),
            source,
        }
    })?;
    let (server, offered) = match server {
        Some(found) => found,
        None => resolve_server(
            settings,
            &session.cluster,
            session.server.as_ref(),
            Some(&config),
            clock,
        )?,
    };

    let (response, via) = request(&settings.network, &server, session, offered.as_ref())?;
    let written = entries(
        &response,
        via,
        &server,
        session,
        &login.template,
        &settings.network,
    )
    .and_then(|entries| {
        warn_if_plain_http(&entries);
        Ok(file.update(|config| config.login(&entries, login.switch))?)
    });
    let change = match written {
        Ok(change) => change,
        Err(cause) => return Err(revoke(&settings.network, &server, &session.cluster, cause)),
    };
    match via {
        Via::Direct => seed_cache(settings, &server, &response, clock),
        Via::Proxy => drop_cached_tokens(settings, &server, &session.cluster),
    }

    Ok(LoginSummary {
        cluster: session.cluster.to_string(),
        server,
        context: change.context,
        kubeconfig: file.path().display().to_string(),
        role: response.session.role.to_string(),
        caller: response.session.caller.clone(),
        device: response.session.device.clone(),
        ttl: response.ttl,
        session_expires_at: response.session.expires_at,
        token_expires_at: match via {
            Via::Direct => response.token.as_ref().map(|t| t.expires_at),
            Via::Proxy => None,
        },
        via,
        credential: match (via, &session.credential) {
            (Via::Proxy, _) => "none",
            (Via::Direct, CredentialMode::Exec { .. }) => "exec",
            (Via::Direct, CredentialMode::Static) => "static",
        },
        switched: change.switched,
        previous_context: change.previous_context,
        clamped: response.clamped,
    })
}

/// Ends the session a login just created, after its kubeconfig could not be written, so that
/// no session is left behind without a context.
fn revoke(
    network: &Network,
    server: &ServerUrl,
    cluster: &ClusterName,
    cause: CliError,
) -> CliError {
    let ended = ApiClient::new(server.clone(), network).and_then(|client| client.logout());
    let revoked = match ended {
        Ok(()) => "was ended again".to_owned(),
        Err(e) => format!(
            "could not be ended ({e}); end it with `tka logout {cluster} --server {server}`"
        ),
    };
    CliError::NotWritten {
        cause: Box::new(cause),
        revoked,
    }
}

/// How a login reaches the cluster, and the `via` its request carries: `--via` as given; else
/// the proxy when the cluster's server offers one (as `offered`, or as the server says when
/// asked) unless `--static` wants a token. Nothing is sent when the server offers no proxy, so an
/// older server (which refuses fields it does not know) still takes the request.
fn choose_via(
    client: &ApiClient,
    server: &ServerUrl,
    session: &SessionSettings,
    offered: Option<&ClusterEndpoint>,
) -> Result<(Via, Option<Via>), CliError> {
    if let Some(via) = session.via {
        return Ok((via, Some(via)));
    }
    let proxy_offered = match offered {
        Some(endpoint) => endpoint.proxy.is_some(),
        None => output::with_spinner(
            format!("Asking {server} how to reach {}", session.cluster),
            || client.cluster(),
        )
        .map_err(|e| CliError::from_login_call(&session.cluster, e))?
        .cluster
        .proxy
        .is_some(),
    };
    Ok(match (&session.credential, proxy_offered) {
        (_, false) => (Via::Direct, None),
        (CredentialMode::Static, true) => (Via::Direct, Some(Via::Direct)),
        (CredentialMode::Exec { .. }, true) => (Via::Proxy, Some(Via::Proxy)),
    })
}

/// `POST /api/v1/login`, with a spinner, checking that the server serves the cluster asked for;
/// with how kubectl will reach the cluster (see [`choose_via`]; a proxy-only server answering a
/// login that did not say is through the proxy too).
pub(crate) fn request(
    network: &Network,
    server: &ServerUrl,
    session: &SessionSettings,
    offered: Option<&ClusterEndpoint>,
) -> Result<(LoginResponse, Via), CliError> {
    let client = ApiClient::new(server.clone(), network)?;
    let (via, asked) = choose_via(&client, server, session, offered)?;
    let request = tka_core::api::LoginRequest {
        via: asked,
        ..session.request.clone()
    };
    let response = output::with_spinner(
        format!("Logging in to {} at {server}", session.cluster),
        || client.login(&request),
    )
    .map_err(|e| CliError::from_login_call(&session.cluster, e))?;
    if response.cluster.name != session.cluster {
        return Err(CliError::WrongCluster {
            server: server.clone(),
            requested: session.cluster.clone(),
            actual: response.cluster.name,
        });
    }
    // The device name becomes the exec entry's `--identity` argument: one that starts with a
    // dash would be read by `tka credential` as an option (and break every kubectl call).
    if response.session.device.starts_with('-') {
        return Err(invalid(
            server,
            format!(
                "it names this device {:?}, which cannot be a command-line argument",
                response.session.device
            ),
        ));
    }
    let via = match (via, &response.token) {
        (Via::Proxy, _) => Via::Proxy,
        (Via::Direct, Some(_)) => Via::Direct,
        // A proxy-only server chose the proxy for a login that did not say.
        (Via::Direct, None) if asked.is_none() && response.via == Via::Proxy => {
            if matches!(session.credential, CredentialMode::Static) {
                return Err(invalid(
                    server,
                    "it handed out no token for --static (the cluster is reached through the \
                     tka proxy only); log in without --static"
                        .to_owned(),
                ));
            }
            Via::Proxy
        }
        (Via::Direct, None) => {
            return Err(invalid(
                server,
                "it handed out no token for a direct login".to_owned(),
            ));
        }
    };
    Ok((response, via))
}

fn invalid(server: &ServerUrl, reason: String) -> CliError {
    CliError::Api(ApiError::InvalidResponse {
        server: server.clone(),
        reason,
    })
}

/// The kubeconfig entries for a login, built from data fields of the response only: through the
/// proxy, the proxy's URL and no credential at all (a token the server sent anyway is not
/// written).
pub(crate) fn entries(
    response: &LoginResponse,
    via: Via,
    server: &ServerUrl,
    session: &SessionSettings,
    template: &ContextTemplate,
    network: &Network,
) -> Result<LoginEntries, CliError> {
    let credential = match (via, &session.credential, &response.token) {
        (Via::Proxy, _, _) => UserCredential::Proxied,
        (Via::Direct, CredentialMode::Exec { command }, _) => UserCredential::Exec {
            command: command.clone(),
        },
        (Via::Direct, CredentialMode::Static, Some(token)) => UserCredential::Static {
            token: Secret::new(token.token.expose().clone()),
        },
        (Via::Direct, CredentialMode::Static, None) => {
            return Err(invalid(server, "it handed out no token".to_owned()));
        }
    };
    LoginEntries::new(
        &response.cluster,
        EntryOptions {
            template,
            server,
            identity: identity(response),
            socks5: network.socks5.as_ref(),
            namespace: session.namespace.as_deref(),
            credential,
        },
    )
    .map_err(CliError::UnusableResponse)
}

/// kubectl reads a kubeconfig's credentials only for TLS servers (client-go's clientcmd), so
/// an `http://` API server gets requests without a token. (The tka proxy needs none: plain HTTP
/// over the tailnet is what it is for.)
pub(crate) fn warn_if_plain_http(entries: &LoginEntries) {
    if entries.marker().via == Via::Direct && entries.api_server().as_str().starts_with("http://") {
        output::warn(
            &format!(
                "the cluster's API server is {}; kubectl sends no credentials to http:// servers, \
                 so ask the cluster's operator for an https endpoint",
                entries.api_server()
            ),
            false,
        );
    }
}

/// The local identity recorded for a login: the device name the server saw.
pub(crate) fn identity(response: &LoginResponse) -> Option<&str> {
    Some(response.session.device.as_str()).filter(|d| !d.is_empty())
}

/// Puts the login's token in the cache, so kubectl's first call makes no server call. Failing
/// costs only that call, so it is a warning.
pub(crate) fn seed_cache(
    settings: &Settings,
    server: &ServerUrl,
    response: &LoginResponse,
    clock: &dyn Clock,
) {
    let Some(token) = &response.token else {
        return;
    };
    let key = CacheKey {
        server: server.clone(),
        cluster: response.cluster.name.clone(),
        identity: identity(response).map(str::to_owned),
    };
    let entry = CachedToken::new(
        &key,
        token.token.clone(),
        token.expires_at,
        clock.now(),
        Some(response.session.expires_at),
    );
    let stored = TokenCache::locate(&settings.env)
        .and_then(|cache| cache.store(&entry))
        .map_err(|e| format!("{e}; {}", e.hint()));
    if let Err(e) = stored {
        output::warn(
            &format!("the token was not cached ({e}); kubectl's first call will fetch one"),
            false,
        );
    }
}

/// Removes the tokens an earlier direct login to this cluster left in the cache: through the proxy
/// no token belongs on this machine.
pub(crate) fn drop_cached_tokens(settings: &Settings, server: &ServerUrl, cluster: &ClusterName) {
    if let Ok(cache) = TokenCache::locate(&settings.env) {
        cache.remove_for(server, cluster);
    }
}

fn human(s: &LoginSummary, clock: &dyn Clock) -> String {
    let mut out = format!(
        "Logged in to {} as {} with role {} until {} ({}).\n",
        s.cluster,
        Untrusted(&s.caller),
        s.role,
        output::local_time(s.session_expires_at),
        output::remaining(s.session_expires_at.duration_since(clock.now())),
    );
    if let Some(clamp) = &s.clamped {
        out += &format!(
            "The session was shortened from the {} asked for to {}: {}.\n",
            clamp.requested,
            clamp.granted,
            Untrusted(&clamp.bound)
        );
    }
    if s.switched {
        out += &format!(
            "Context {} in {} is now current",
            Untrusted(&s.context),
            Untrusted(&s.kubeconfig)
        );
        out += &match &s.previous_context {
            Some(prev) if !prev.is_empty() && prev != &s.context => format!(
                " (`tka logout {}` returns to {}).\n",
                s.cluster,
                Untrusted(prev)
            ),
            _ => ".\n".to_owned(),
        };
    } else {
        out += &format!(
            "Context {} written to {}; the current context is unchanged (use kubectl --context {}).\n",
            Untrusted(&s.context),
            Untrusted(&s.kubeconfig),
            Untrusted(&s.context)
        );
    }
    if let (Via::Direct, "static", Some(at)) = (s.via, s.credential, s.token_expires_at) {
        out += &format!(
            "The token is in the kubeconfig and stops working at {}; log in again then.\n",
            output::local_time(at)
        );
    }
    if s.via == Via::Proxy {
        out += "kubectl reaches the cluster through the tka proxy; the kubeconfig holds no credential.\n";
    }
    out
}

/// A kubeconfig holding only this login (for `tka shell`).
pub(crate) fn private_kubeconfig(entries: &LoginEntries) -> Kubeconfig {
    Kubeconfig::only(entries)
}
