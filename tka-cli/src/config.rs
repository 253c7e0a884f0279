//! The config file, `config.toml`: the servers to ask besides the tagged peers, the SOCKS5 proxy
//! and the server tag, each used when no flag or environment variable names one.
//!
//! It owns where the file is, its keys and reading it (a missing file is an empty config). It
//! must not decide between flags, environment and file (that is [`crate::settings`]'s job), and
//! it never writes the file.

use std::path::PathBuf;

use serde::Deserialize;
use tka_core::Tag;
use tka_core::endpoint::{ServerUrl, Socks5Addr};

use crate::cli::Environment;

/// The server tag when neither flag, environment nor config file names one.
pub(crate) const DEFAULT_SERVER_TAG: &str = "tag:tka";

/// `~/.config/tka/config.toml`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ConfigFile {
    /// Servers to ask besides the tagged peers.
    #[serde(default)]
    pub(crate) servers: Vec<ConfiguredServer>,
    /// The SOCKS5 proxy, when no flag or environment variable names one.
    pub(crate) socks5: Option<Socks5Addr>,
    /// The server tag, when no flag or environment variable names one.
    pub(crate) server_tag: Option<Tag>,
}

/// One `[[servers]]` entry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ConfiguredServer {
    pub(crate) url: ServerUrl,
}

/// The config file could not be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub(crate) enum ConfigError {
    #[error("cannot read the config file {}: {source}", .path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the config file {} is not valid: {reason}", .path.display())]
    Invalid { path: PathBuf, reason: String },
}

impl ConfigError {
    pub(crate) fn hint(&self) -> String {
        "fix or remove the config file; docs/cli.md describes its keys (servers, socks5, server_tag)"
            .to_owned()
    }
}

/// Where the config file is: `$XDG_CONFIG_HOME/tka/config.toml` (absolute only), else
/// `~/.config/tka/config.toml`.
pub(crate) fn config_path(env: &Environment) -> Option<PathBuf> {
    env.xdg_config_home
        .clone()
        .filter(|p| p.is_absolute())
        .or_else(|| env.home.as_ref().map(|h| h.join(".config")))
        .map(|base| base.join("tka").join("config.toml"))
}

impl ConfigFile {
    /// Reads the config file; a missing file is an empty config.
    pub(crate) fn load(env: &Environment) -> Result<Self, ConfigError> {
        let Some(path) = config_path(env) else {
            return Ok(Self::default());
        };
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Self::default()),
            Err(source) => return Err(ConfigError::Read { path, source }),
        };
        toml::from_str(&text).map_err(|e| ConfigError::Invalid {
            path,
            reason: e.message().to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_config_file_has_servers_socks5_and_tag_and_refuses_unknown_keys() {
        let config: ConfigFile = toml::from_str(
            "server_tag = \"tag:k8s-auth\"\nsocks5 = \"localhost:1055\"\n\n[[servers]]\nurl = \"http://tka-lab\"\n",
        )
        .unwrap();
        assert_eq!(config.server_tag.unwrap().to_string(), "tag:k8s-auth");
        assert!(config.socks5.is_some());
        assert_eq!(config.servers[0].url.as_str(), "http://tka-lab");
        assert!(toml::from_str::<ConfigFile>("servers = []\nsever_tag = \"tag:x\"\n").is_err());
        assert!(toml::from_str::<ConfigFile>("[[servers]]\nurl = \"ftp://x\"\n").is_err());
        assert!(toml::from_str::<ConfigFile>("").unwrap().servers.is_empty());
    }
}
