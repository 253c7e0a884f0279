//! The pin file, `pins.json`: which server node first claimed each cluster name, so that another
//! node claiming the name later is not trusted for it.
//!
//! It owns the file (where it is, reading it, writing it 0600 in a 0700 directory) and the rule
//! of whether a server is the pinned node. It must not ask servers or decide who is trusted when
//! several claim a name: [`crate::discovery`] does that and records new pins here.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};

use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use tka_core::ClusterName;
use tka_core::endpoint::ServerUrl;

use crate::atomic_file::{Kind, create_private_dir, own, parent_dir, write_atomically};
use crate::cli::Environment;

/// A server node: its stable ID (or, for a configured server that is no known peer, its URL)
/// and a name for people.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ServerNode {
    /// The pin key: the node's stable ID, or `url:<server>` when the node is not known.
    pub(crate) id: String,
    /// The node's name (first DNS label), or the URL.
    pub(crate) name: String,
}

/// One pin: the node a cluster name belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Pin {
    pub(crate) node: ServerNode,
    pub(crate) pinned_at: Timestamp,
}

/// `pins.json`: cluster name → the node that first claimed it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct Pins {
    #[serde(default)]
    pub(crate) clusters: BTreeMap<String, Pin>,
    #[serde(skip)]
    changed: bool,
}

/// The pin file could not be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub(crate) enum PinError {
    #[error("no home directory (HOME) for the pin file")]
    NoHome,
    #[error("cannot read the pin file {}: {reason}", .path.display())]
    Read { path: PathBuf, reason: String },
    #[error("the pin file {} or its directory {why}; tka does not trust it", .path.display())]
    Untrusted { path: PathBuf, why: &'static str },
    #[error("cannot write the pin file {}: {source}", .path.display())]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl PinError {
    pub(crate) fn hint(&self) -> String {
        match self {
            Self::NoHome => "set HOME or XDG_STATE_HOME".to_owned(),
            Self::Read { path, .. } => format!(
                "the file records which server node each cluster name belongs to; fix it, or remove {} \
                 to trust the next servers seen",
                path.display()
            ),
            Self::Untrusted { path, .. } => format!(
                "the pins decide which server node may answer for each cluster name, so only a \
                 file you own, in a directory you own, is read; remove {} (and its directory if \
                 it is not yours) and run the command again",
                path.display()
            ),
            Self::Write { .. } => "check the permissions of the directory".to_owned(),
        }
    }
}

/// `$XDG_STATE_HOME/tka/pins.json` (absolute only), else `~/.local/state/tka/pins.json`.
pub(crate) fn pins_path(env: &Environment) -> Result<PathBuf, PinError> {
    env.xdg_state_home
        .clone()
        .filter(|p| p.is_absolute())
        .or_else(|| env.home.as_ref().map(|h| h.join(".local").join("state")))
        .map(|base| base.join("tka").join("pins.json"))
        .ok_or(PinError::NoHome)
}

impl Pin {
    /// Whether the server `node`, reached at `url`, is the pinned node: the same stable ID, or,
    /// for a server pinned by its URL (configured, and not known as a peer then), the same URL.
    pub(crate) fn belongs_to(&self, node: &ServerNode, url: &ServerUrl) -> bool {
        self.node.id == node.id || self.node.id.strip_prefix("url:") == Some(url.as_str())
    }
}

impl Pins {
    /// Reads the pin file; a missing file has no pins.
    pub(crate) fn load(path: &Path) -> Result<Self, PinError> {
        let read = |e: std::io::Error| PinError::Read {
            path: path.to_path_buf(),
            reason: e.to_string(),
        };
        for (at, kind) in [
            (parent_dir(path), Kind::Dir),
            (path.to_path_buf(), Kind::File),
        ] {
            match own(&at, kind).map_err(read)? {
                Ok(Some(_)) => {}
                Ok(None) => return Ok(Self::default()),
                Err(why) => {
                    return Err(PinError::Untrusted {
                        path: path.to_path_buf(),
                        why,
                    });
                }
            }
        }
        match std::fs::read_to_string(path) {
            Ok(text) => serde_json::from_str(&text).map_err(|e| PinError::Read {
                path: path.to_path_buf(),
                reason: e.to_string(),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(e) => Err(PinError::Read {
                path: path.to_path_buf(),
                reason: e.to_string(),
            }),
        }
    }

    /// Whether `cluster` is pinned to the server `node`, reached at `url`.
    pub(crate) fn is_pinned_to(
        &self,
        cluster: &ClusterName,
        node: &ServerNode,
        url: &ServerUrl,
    ) -> bool {
        self.clusters
            .get(cluster.as_str())
            .is_some_and(|pin| pin.belongs_to(node, url))
    }

    /// Pins `name` to `node`; [`Pins::save_if_changed`] then writes the file.
    pub(crate) fn pin(&mut self, name: &ClusterName, node: &ServerNode, now: Timestamp) {
        self.clusters.insert(
            name.to_string(),
            Pin {
                node: node.clone(),
                pinned_at: now,
            },
        );
        self.changed = true;
    }

    /// Writes the file (0600, in a 0700 directory) when a pin was added.
    pub(crate) fn save_if_changed(&self, path: &Path) -> Result<(), PinError> {
        if !self.changed {
            return Ok(());
        }
        let write = |source| PinError::Write {
            path: path.to_path_buf(),
            source,
        };
        let dir = parent_dir(path);
        create_private_dir(&dir).map_err(write)?;
        match own(&dir, Kind::Dir).map_err(write)? {
            Ok(Some(meta)) if meta.permissions().mode() & 0o077 != 0 => {
                std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))
                    .map_err(write)?;
            }
            Ok(_) => {}
            Err(why) => {
                return Err(PinError::Untrusted {
                    path: path.to_path_buf(),
                    why,
                });
            }
        }
        let text = serde_json::to_string_pretty(self)
            .map_err(|e| write(std::io::Error::other(e.to_string())))?;
        write_atomically(path, text.as_bytes()).map_err(write)?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(write)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: &str) -> ServerNode {
        ServerNode {
            id: id.to_owned(),
            name: id.to_owned(),
        }
    }

    #[test]
    fn a_new_pin_is_saved_private_and_read_back_and_nothing_is_written_without_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state").join("tka").join("pins.json");

        Pins::default().save_if_changed(&path).unwrap();
        assert!(!path.exists());

        let mut pins = Pins::load(&path).unwrap();
        let prod = ClusterName::new("prod").unwrap();
        pins.pin(&prod, &node("n1"), "2026-01-01T00:00:00Z".parse().unwrap());
        pins.save_if_changed(&path).unwrap();

        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&path), 0o600);
        assert_eq!(mode(path.parent().unwrap()), 0o700);
        let read = Pins::load(&path).unwrap();
        assert_eq!(read.clusters["prod"].node, node("n1"));
    }

    #[test]
    fn a_pin_file_someone_else_could_have_written_is_not_trusted() {
        let dir = tempfile::tempdir().unwrap();
        let mut pins = Pins::default();
        pins.pin(
            &ClusterName::new("prod").unwrap(),
            &node("mallory"),
            "2026-01-01T00:00:00Z".parse().unwrap(),
        );
        let planted = dir.path().join("planted.json");
        std::fs::write(&planted, serde_json::to_string(&pins).unwrap()).unwrap();

        // A symlink in place of the pin file.
        let state = dir.path().join("state");
        std::fs::create_dir(&state).unwrap();
        let path = state.join("pins.json");
        std::os::unix::fs::symlink(&planted, &path).unwrap();
        let err = Pins::load(&path).unwrap_err();
        assert!(matches!(err, PinError::Untrusted { .. }), "{err}");
        assert!(err.to_string().contains("symbolic link"), "{err}");
        assert!(err.hint().contains("remove"), "{}", err.hint());

        // A symlink in place of its directory.
        let linked = dir.path().join("linked");
        std::os::unix::fs::symlink(&state, &linked).unwrap();
        std::fs::remove_file(&path).unwrap();
        std::fs::copy(&planted, &path).unwrap();
        let err = Pins::load(&linked.join("pins.json")).unwrap_err();
        assert!(matches!(err, PinError::Untrusted { .. }), "{err}");

        // Allowed: the same file, as a regular file of ours in our directory.
        assert_eq!(
            Pins::load(&path).unwrap().clusters["prod"].node,
            node("mallory")
        );

        // Owned by another user (only root can make one here).
        if rustix::process::geteuid().is_root() {
            rustix::fs::chown(&path, Some(rustix::fs::Uid::from_raw(65534)), None).unwrap();
            assert!(matches!(
                Pins::load(&path).unwrap_err(),
                PinError::Untrusted { .. }
            ));
        }

        // Saving tightens a directory open to others.
        let open = dir.path().join("open");
        std::fs::create_dir(&open).unwrap();
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o755)).unwrap();
        let mut mine = Pins::default();
        mine.pin(
            &ClusterName::new("prod").unwrap(),
            &node("n1"),
            "2026-01-01T00:00:00Z".parse().unwrap(),
        );
        mine.save_if_changed(&open.join("pins.json")).unwrap();
        assert_eq!(
            std::fs::metadata(&open).unwrap().permissions().mode() & 0o777,
            0o700
        );
    }

    #[test]
    fn a_pin_belongs_to_its_node_or_the_url_it_was_pinned_by_and_to_no_other() {
        let url = ServerUrl::parse("http://100.64.0.5").unwrap();
        let other_url = ServerUrl::parse("http://100.64.0.6").unwrap();
        let at = "2026-01-01T00:00:00Z".parse().unwrap();
        let by_id = Pin {
            node: node("n1"),
            pinned_at: at,
        };
        assert!(by_id.belongs_to(&node("n1"), &other_url));
        assert!(!by_id.belongs_to(&node("n2"), &url));
        let by_url = Pin {
            node: node("url:http://100.64.0.5"),
            pinned_at: at,
        };
        assert!(by_url.belongs_to(&node("n2"), &url));
        assert!(!by_url.belongs_to(&node("n2"), &other_url));
    }
}
