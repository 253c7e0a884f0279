//! Which symlinks a kubeconfig path may go through. kubectl follows a symlinked kubeconfig; tka
//! does too, for the common case of a link the user owns, in a directory only trusted users can
//! write, pointing to a file the user owns. Everything else is refused before anything is read
//! or written, because tka writes through the link: a link planted by someone else (in `/tmp`,
//! say) would otherwise have the user's kubeconfig, with its tokens, written where the planter
//! chose, or another user's file rewritten by root.
//!
//! The rules, for every link on the way (the kernel's limit of 40 hops applies):
//! - the link belongs to the effective user;
//! - the directory holding it is not world-writable (sticky or not: anyone may create links
//!   there, and in a non-sticky one replace them);
//! - the file at the end exists (a dangling link is refused, not created through) and belongs to
//!   the effective user.
//!
//! A path that is no symlink is used as it is (a missing file is created by the caller). This
//! module only decides; it must not read or write kubeconfigs.

use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};

/// Symlink hops followed before giving up (as the kernel's ELOOP limit).
const MAX_SYMLINKS: usize = 40;

/// Why a symlinked kubeconfig is not followed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub(crate) enum LinkRefusal {
    /// A link on the way belongs to another user.
    #[error("the symbolic link {} belongs to uid {owner}, not to you (uid {me})", .link.display())]
    LinkNotOwned {
        /// The link.
        link: PathBuf,
        /// Its owner.
        owner: u32,
        /// The effective uid.
        me: u32,
    },
    /// A link on the way sits in a directory anyone can write to.
    #[error(
        "the symbolic link {} is in {}, a directory anyone can write to",
        .link.display(),
        .dir.display()
    )]
    SharedDirectory {
        /// The link.
        link: PathBuf,
        /// Its directory.
        dir: PathBuf,
    },
    /// The file at the end of the links belongs to another user.
    #[error(
        "it is a symbolic link to {}, which belongs to uid {owner}, not to you (uid {me})",
        .target.display()
    )]
    TargetNotOwned {
        /// The file.
        target: PathBuf,
        /// Its owner.
        owner: u32,
        /// The effective uid.
        me: u32,
    },
    /// The link points to nothing.
    #[error(
        "it is a symbolic link to {}, which does not exist; tka does not create files through a link",
        .target.display()
    )]
    Dangling {
        /// The missing file.
        target: PathBuf,
    },
    /// Too many links in a row.
    #[error("it goes through more than {MAX_SYMLINKS} symbolic links")]
    TooMany,
}

impl LinkRefusal {
    /// What to do about it.
    pub(crate) fn hint(&self, path: &Path) -> String {
        match self {
            Self::LinkNotOwned { link, .. } | Self::SharedDirectory { link, .. } => format!(
                "if you trust where {} points, point KUBECONFIG at that file itself, or replace \
                 the link with one of your own in a private directory",
                link.display()
            ),
            Self::TargetNotOwned { .. } => {
                "point KUBECONFIG at a kubeconfig of your own".to_owned()
            }
            Self::Dangling { target } => format!(
                "create {} (`touch` it and `chmod 600` it), or remove the link {}",
                target.display(),
                path.display()
            ),
            Self::TooMany => format!(
                "point KUBECONFIG at the file itself, not {}",
                path.display()
            ),
        }
    }
}

/// Why the path could not be resolved: a refusal, or an I/O failure on the way.
#[derive(Debug)]
pub(crate) enum ResolveError {
    /// The rules refuse it.
    Refused(LinkRefusal),
    /// Looking at `path` failed.
    Io {
        /// What was being done.
        action: &'static str,
        /// The error.
        source: io::Error,
    },
}

/// The effective uid, which owns what this process creates.
pub(crate) fn effective_uid() -> u32 {
    rustix::process::geteuid().as_raw()
}

/// The file `path` names after its symlinks, when the rules above allow following them; `path`
/// itself when it is no symlink (or does not exist).
pub(crate) fn resolve(path: &Path) -> Result<PathBuf, ResolveError> {
    resolve_as(path, effective_uid())
}

fn resolve_as(path: &Path, me: u32) -> Result<PathBuf, ResolveError> {
    let io = |action| move |source| ResolveError::Io { action, source };
    let mut current = path.to_path_buf();
    for hop in 0..=MAX_SYMLINKS {
        let meta = match fs::symlink_metadata(&current) {
            Ok(meta) => meta,
            Err(e) if e.kind() == io::ErrorKind::NotFound && hop == 0 => return Ok(current),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(ResolveError::Refused(LinkRefusal::Dangling {
                    target: current,
                }));
            }
            Err(e) => return Err(io("read")(e)),
        };
        if !meta.file_type().is_symlink() {
            if hop > 0 && meta.uid() != me {
                return Err(ResolveError::Refused(LinkRefusal::TargetNotOwned {
                    target: current,
                    owner: meta.uid(),
                    me,
                }));
            }
            return Ok(current);
        }
        if hop == MAX_SYMLINKS {
            break;
        }
        if meta.uid() != me {
            return Err(ResolveError::Refused(LinkRefusal::LinkNotOwned {
                link: current,
                owner: meta.uid(),
                me,
            }));
        }
        let dir = crate::atomic_file::parent_dir(&current);
        let dir_meta = fs::metadata(&dir).map_err(io("read the directory of"))?;
        if dir_meta.mode() & 0o002 != 0 {
            return Err(ResolveError::Refused(LinkRefusal::SharedDirectory {
                link: current,
                dir,
            }));
        }
        let link = fs::read_link(&current).map_err(io("read the link"))?;
        current = if link.is_absolute() {
            link
        } else {
            dir.join(link)
        };
    }
    Err(ResolveError::Refused(LinkRefusal::TooMany))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::{PermissionsExt as _, lchown, symlink};

    use super::*;

    /// A uid that is not ours.
    fn other_uid() -> u32 {
        effective_uid().wrapping_add(4242)
    }

    fn refusal(result: Result<PathBuf, ResolveError>) -> LinkRefusal {
        match result {
            Err(ResolveError::Refused(r)) => r,
            Err(ResolveError::Io { action, source }) => panic!("I/O: {action}: {source}"),
            Ok(p) => panic!("followed to {}", p.display()),
        }
    }

    fn ok(result: Result<PathBuf, ResolveError>) -> PathBuf {
        match result {
            Ok(p) => p,
            Err(ResolveError::Refused(r)) => panic!("refused: {r}"),
            Err(ResolveError::Io { action, source }) => panic!("I/O: {action}: {source}"),
        }
    }

    #[test]
    fn own_links_to_own_files_are_followed_and_plain_paths_are_kept() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("real");
        fs::write(&real, "").unwrap();
        let link = dir.path().join("config");
        symlink("real", &link).unwrap();
        assert_eq!(ok(resolve(&link)), real);
        // A chain of own links.
        let outer = dir.path().join("outer");
        symlink(&link, &outer).unwrap();
        assert_eq!(ok(resolve(&outer)), real);
        // No link: the path itself, also when it does not exist yet.
        assert_eq!(ok(resolve(&real)), real);
        let missing = dir.path().join("missing");
        assert_eq!(ok(resolve(&missing)), missing);
    }

    #[test]
    fn a_dangling_link_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let link = dir.path().join("config");
        symlink("nowhere", &link).unwrap();
        let r = refusal(resolve(&link));
        assert!(
            matches!(&r, LinkRefusal::Dangling { target } if target == &dir.path().join("nowhere")),
            "{r}"
        );
        assert!(r.to_string().contains("does not exist"), "{r}");
        assert!(!dir.path().join("nowhere").exists());
        // Once the target exists, the same link is followed.
        fs::write(dir.path().join("nowhere"), "").unwrap();
        assert_eq!(ok(resolve(&link)), dir.path().join("nowhere"));
    }

    #[test]
    fn a_link_in_a_world_writable_directory_is_refused_sticky_or_not() {
        let shared = tempfile::tempdir().unwrap();
        let private = tempfile::tempdir().unwrap();
        let real = private.path().join("real");
        fs::write(&real, "").unwrap();
        let link = shared.path().join("config");
        symlink(&real, &link).unwrap();
        for mode in [0o1777, 0o777] {
            fs::set_permissions(shared.path(), fs::Permissions::from_mode(mode)).unwrap();
            let r = refusal(resolve(&link));
            assert!(
                matches!(&r, LinkRefusal::SharedDirectory { dir, .. } if dir == shared.path()),
                "{mode:o}: {r}"
            );
            assert!(r.to_string().contains("anyone can write"), "{r}");
        }
        // The same link in a directory only its owner writes is followed.
        fs::set_permissions(shared.path(), fs::Permissions::from_mode(0o755)).unwrap();
        assert_eq!(ok(resolve(&link)), real);
        // A link in a private directory pointing into a world-writable one is fine: the file
        // there is the user's and only links are checked for their directory.
        let in_tmp = shared.path().join("kc");
        fs::write(&in_tmp, "").unwrap();
        fs::set_permissions(shared.path(), fs::Permissions::from_mode(0o1777)).unwrap();
        let private_link = private.path().join("config");
        symlink(&in_tmp, &private_link).unwrap();
        assert_eq!(ok(resolve(&private_link)), in_tmp);
    }

    #[test]
    fn links_and_targets_of_other_users_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("real");
        fs::write(&real, "").unwrap();
        let link = dir.path().join("config");
        symlink("real", &link).unwrap();
        // The rules compare owners with the effective uid; checked as another user, the same
        // (own) link is someone else's.
        let me = effective_uid();
        let r = refusal(resolve_as(&link, other_uid()));
        assert!(
            matches!(&r, LinkRefusal::LinkNotOwned { owner, .. } if *owner == me),
            "{r}"
        );
        assert_eq!(ok(resolve_as(&link, me)), real);

        // For real: only root can give a link or a file away, which is how CI runs.
        if me != 0 {
            return;
        }
        lchown(&link, Some(other_uid()), None).unwrap();
        let r = refusal(resolve(&link));
        assert!(
            matches!(&r, LinkRefusal::LinkNotOwned { owner, .. } if *owner == other_uid()),
            "{r}"
        );
        lchown(&link, Some(me), None).unwrap();
        assert_eq!(ok(resolve(&link)), real);

        std::os::unix::fs::chown(&real, Some(other_uid()), None).unwrap();
        let r = refusal(resolve(&link));
        assert!(
            matches!(&r, LinkRefusal::TargetNotOwned { target, .. } if target == &real),
            "{r}"
        );
        // The file itself, not through a link, is the user's choice.
        assert_eq!(ok(resolve(&real)), real);
    }

    #[test]
    fn a_loop_of_links_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a");
        let b = dir.path().join("b");
        symlink(&b, &a).unwrap();
        symlink(&a, &b).unwrap();
        assert!(matches!(refusal(resolve(&a)), LinkRefusal::TooMany));
    }
}
