//! `tka shell`: log in into a private kubeconfig (a 0600 temporary file holding only this
//! login), run `$SHELL` with `KUBECONFIG` pointing at it, and log out when it exits unless
//! `--keep`. The user's own kubeconfig is only read (for an earlier login's server).
//!
//! It owns the private kubeconfig and the shell's life. It must not write the user's kubeconfig;
//! the login steps are [`super::login`]'s.

use std::io::Write as _;
use std::os::unix::fs::PermissionsExt as _;
use std::process::ExitCode;

use tka_core::Clock;
use tka_core::kubeconfig::ContextTemplate;

use crate::cache::TokenCache;
use crate::client::ApiClient;
use crate::error::CliError;
use crate::kubeconfig_file::{KubeconfigFile, KubeconfigFileError};
use crate::output;
use crate::settings::{Settings, ShellSettings};

use super::login;
use super::servers::resolve_server;

pub(crate) fn run(
    settings: &Settings,
    shell: &ShellSettings,
    clock: &dyn Clock,
) -> Result<ExitCode, CliError> {
    let session = &shell.session;
    // The user's kubeconfig only helps find the server; a broken one is not this command's
    // concern.
    let user_config = KubeconfigFile::locate(&settings.env)
        .ok()
        .and_then(|f| f.read().ok());
    let (server, offered) = resolve_server(
        settings,
        &session.cluster,
        session.server.as_ref(),
        user_config.as_ref(),
        clock,
    )?;
    let (response, via) = login::request(&settings.network, &server, session, offered.as_ref())?;
    let entries = login::entries(
        &response,
        via,
        &server,
        session,
        &ContextTemplate::default(),
        &settings.network,
    )?;
    login::warn_if_plain_http(&entries);
    let text = login::private_kubeconfig(&entries)
        .render()
        .map_err(CliError::UnusableResponse)?;
    let io_error = |path: &std::path::Path, source| {
        CliError::Kubeconfig(KubeconfigFileError::Io {
            action: "write",
            path: path.to_path_buf(),
            source,
        })
    };
    let mut private = tempfile::Builder::new()
        .prefix("tka-shell-")
        .suffix(".kubeconfig")
        .permissions(std::fs::Permissions::from_mode(0o600))
        .tempfile()
        .map_err(|e| io_error(&std::env::temp_dir(), e))?;
    private
        .write_all(text.as_bytes())
        .and_then(|()| private.flush())
        .map_err(|e| io_error(private.path(), e))?;
    match via {
        tka_core::api::Via::Direct => login::seed_cache(settings, &server, &response, clock),
        tka_core::api::Via::Proxy => login::drop_cached_tokens(settings, &server, &session.cluster),
    }

    output::note(&format!(
        "Logged in to {} with role {} until {}. Starting {} with KUBECONFIG={}; {}",
        session.cluster,
        response.session.role,
        output::local_time(response.session.expires_at),
        shell.shell.display(),
        private.path().display(),
        if shell.keep {
            "the session stays when it exits."
        } else {
            "exit it to log out."
        }
    ));
    let status = std::process::Command::new(&shell.shell)
        .env("KUBECONFIG", private.path())
        .env("TKA_SHELL", session.cluster.as_str())
        .status();

    let mut logout_error = None;
    if !shell.keep {
        let ended = ApiClient::new(server.clone(), &settings.network).and_then(|client| {
            output::with_spinner(format!("Logging out of {}", session.cluster), || {
                client.logout()
            })
        });
        match ended {
            Ok(()) => {
                if let Ok(cache) = TokenCache::locate(&settings.env) {
                    cache.remove_for(&server, &session.cluster);
                }
                output::note(&format!("Logged out of {}.", session.cluster));
            }
            Err(e) => logout_error = Some(CliError::Api(e)),
        }
    }
    drop(private);
    let status = status.map_err(|source| CliError::Shell {
        shell: shell.shell.clone(),
        source,
    })?;
    if let Some(e) = logout_error {
        return Err(e);
    }
    Ok(status
        .code()
        .and_then(|c| u8::try_from(c).ok())
        .map_or(ExitCode::FAILURE, ExitCode::from))
}
