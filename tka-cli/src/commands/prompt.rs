//! `tka prompt`: `cluster (42m)` when the current context is tka's, from the kubeconfig and the
//! token cache only (no network), for shell prompts. Prints nothing for other contexts.

use serde::Serialize;
use tka_core::Clock;
use tka_core::token_cache::CacheKey;

use crate::cache::TokenCache;
use crate::cli::OutputFormat;
use crate::error::CliError;
use crate::kubeconfig_file::KubeconfigFile;
use crate::output::{self, Untrusted};
use crate::settings::Settings;

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct PromptInfo {
    cluster: String,
    context: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    session_expires_at: Option<jiff::Timestamp>,
    #[serde(skip_serializing_if = "Option::is_none")]
    remaining: Option<String>,
}

pub(crate) fn run(settings: &Settings, clock: &dyn Clock) -> Result<(), CliError> {
    let config = KubeconfigFile::locate(&settings.env)?.read()?;
    let Some(current) = config.tka_contexts().into_iter().find(|c| c.current) else {
        return match settings.output {
            OutputFormat::Human => Ok(()),
            _ => output::result(settings.output, &None::<PromptInfo>, String::new),
        };
    };
    let key = CacheKey {
        server: current.marker.server,
        cluster: current.marker.cluster.clone(),
        identity: current.marker.identity,
    };
    let session_expires_at = TokenCache::locate(&settings.env)
        .ok()
        .and_then(|cache| cache.lookup(&key))
        .and_then(|hit| hit.entry.session_expires_at);
    let remaining = session_expires_at.map(|t| output::remaining(t.duration_since(clock.now())));
    let info = PromptInfo {
        cluster: current.marker.cluster.to_string(),
        context: current.name,
        session_expires_at,
        remaining,
    };
    output::result(settings.output, &Some(&info), || match &info.remaining {
        Some(r) => format!("{} ({r})\n", Untrusted(&info.cluster)),
        None => format!("{}\n", Untrusted(&info.cluster)),
    })
}
