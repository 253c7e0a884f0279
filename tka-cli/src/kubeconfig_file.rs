//! The kubeconfig on disk: which file (client-go's rule, via
//! [`tka_core::kubeconfig::destination`]), reading it, and changing it safely. The merge itself is
//! [`tka_core::kubeconfig`]'s.
//!
//! A change happens under an advisory lock (`flock` on the file's directory, so no lock file is
//! left behind and the lock survives the rename), re-reads the file under that lock, and writes
//! atomically through [`crate::atomic_file`]: a temporary file in the same directory, fsync,
//! rename over the target, fsync of the directory. The result has mode 0600. A symlinked
//! kubeconfig is written through to its target and the link is kept, when
//! [`crate::kubeconfig_link`]'s rules allow following it. A read-only file (no write permission
//! bits) or a malformed one is never touched, even by root, who could otherwise replace it.
//!
//! It owns the kubeconfig's path, lock and read-modify-write. It must not render or merge YAML
//! itself, nor decide which symlinks are safe.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tka_core::kubeconfig::{Kubeconfig, KubeconfigError, destination};

use crate::atomic_file::{create_private_dir, parent_dir, write_atomically};
use crate::cli::Environment;
use crate::kubeconfig_link::{self, LinkRefusal, ResolveError};

/// How long to wait for another tka process to finish changing the kubeconfig.
const LOCK_WAIT: Duration = Duration::from_secs(10);

/// Why the kubeconfig could not be used. The file is unchanged in every case.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub(crate) enum KubeconfigFileError {
    /// Neither KUBECONFIG nor a home directory.
    #[error(
        "cannot tell where the kubeconfig is: KUBECONFIG is not set and there is no home directory"
    )]
    NoHome,
    /// The file's content cannot be used.
    #[error("cannot use the kubeconfig {path}: {source}; tka left it untouched", path = .path.display())]
    Malformed {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        source: KubeconfigError,
    },
    /// The change cannot be made (a same-named foreign entry, …).
    #[error("cannot write the kubeconfig {path}: {source}", path = .path.display())]
    Refused {
        /// The file.
        path: PathBuf,
        /// Why.
        source: KubeconfigError,
    },
    /// The file is read-only.
    #[error("the kubeconfig {path} is read-only; tka left it untouched", path = .path.display())]
    ReadOnly {
        /// The file.
        path: PathBuf,
    },
    /// The path is a symlink tka does not follow.
    #[error("the kubeconfig {path} is refused: {refusal}; tka left it untouched", path = .path.display())]
    UnsafeLink {
        /// The file.
        path: PathBuf,
        /// Why.
        refusal: LinkRefusal,
    },
    /// The path names something other than a regular file (a FIFO, a device, a directory),
    /// which reading or writing could block on or damage.
    #[error("the kubeconfig {path} is not a regular file; tka left it untouched", path = .path.display())]
    NotAFile {
        /// The file.
        path: PathBuf,
    },
    /// Another process holds the lock.
    #[error("another tka is changing the kubeconfig {path}", path = .path.display())]
    Busy {
        /// The file.
        path: PathBuf,
    },
    /// An I/O failure.
    #[error("cannot {action} {path}: {source}", path = .path.display())]
    Io {
        /// What was being done.
        action: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
}

impl KubeconfigFileError {
    pub(crate) fn hint(&self) -> String {
        match self {
            Self::NoHome => "set KUBECONFIG to the file tka should write".to_owned(),
            Self::Malformed { path, .. } => format!(
                "fix {}, or point KUBECONFIG at another file (`kubectl config view` shows how kubectl reads it)",
                path.display()
            ),
            Self::Refused { .. } => "tka left the file untouched".to_owned(),
            Self::ReadOnly { path } => format!(
                "make it writable (chmod u+w {}) or point KUBECONFIG at a writable file",
                path.display()
            ),
            Self::UnsafeLink { path, refusal } => refusal.hint(path),
            Self::NotAFile { path } => format!(
                "point KUBECONFIG at a regular file ({} is a FIFO, device or directory)",
                path.display()
            ),
            Self::Busy { .. } => "try again in a moment".to_owned(),
            Self::Io { .. } => {
                "check the file's and its directory's permissions, or point KUBECONFIG elsewhere"
                    .to_owned()
            }
        }
    }
}

/// The kubeconfig tka reads and writes.
#[derive(Debug, Clone)]
pub(crate) struct KubeconfigFile {
    /// The path as selected (what messages show).
    path: PathBuf,
}

impl KubeconfigFile {
    /// The file kubectl would write to.
    pub(crate) fn locate(env: &Environment) -> Result<Self, KubeconfigFileError> {
        destination(env.kubeconfig.as_deref(), env.home.as_deref(), |p| {
            p.exists()
        })
        .map(|path| Self { path })
        .ok_or(KubeconfigFileError::NoHome)
    }

    /// A specific file.
    #[cfg(test)]
    pub(crate) fn at(path: PathBuf) -> Self {
        Self { path }
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// The parsed file; a missing file is an empty kubeconfig.
    pub(crate) fn read(&self) -> Result<Kubeconfig, KubeconfigFileError> {
        let target = self.target()?;
        if self.metadata(&target)?.is_none() {
            return Ok(Kubeconfig::default());
        }
        let text = match fs::read_to_string(&target) {
            Ok(text) => text,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Kubeconfig::default()),
            Err(e) => return Err(self.io("read", e)),
        };
        Kubeconfig::parse(&text).map_err(|source| KubeconfigFileError::Malformed {
            path: self.path.clone(),
            source,
        })
    }

    /// The target's metadata, `None` when it does not exist. Anything but a regular file is
    /// refused before it is opened: opening a FIFO blocks until a writer comes, and a device
    /// is nobody's kubeconfig.
    fn metadata(&self, target: &Path) -> Result<Option<fs::Metadata>, KubeconfigFileError> {
        match fs::metadata(target) {
            Ok(m) if m.is_file() => Ok(Some(m)),
            Ok(_) => Err(KubeconfigFileError::NotAFile {
                path: self.path.clone(),
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(self.io("read", e)),
        }
    }

    /// Fails when the file exists but may not be written: read-only, or refused by the OS.
    pub(crate) fn check_writable(&self) -> Result<(), KubeconfigFileError> {
        let target = self.target()?;
        let Some(meta) = self.metadata(&target)? else {
            return Ok(());
        };
        if meta.permissions().readonly() {
            return Err(KubeconfigFileError::ReadOnly {
                path: self.path.clone(),
            });
        }
        match OpenOptions::new().append(true).open(&target) {
            Ok(_) => Ok(()),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::PermissionDenied | io::ErrorKind::ReadOnlyFilesystem
                ) =>
            {
                Err(KubeconfigFileError::ReadOnly {
                    path: self.path.clone(),
                })
            }
            Err(e) => Err(self.io("open", e)),
        }
    }

    /// Fails when the kubeconfig could not be written now: the file is read-only, or its
    /// directory (the nearest existing ancestor when the directory is still to be created)
    /// does not take a new file. Tried for real with a temporary file, since permission bits do
    /// not stop root while a read-only mount or a path through a regular file stops everyone.
    pub(crate) fn check_can_write(&self) -> Result<(), KubeconfigFileError> {
        self.check_writable()?;
        let target = self.target()?;
        let mut dir = parent_dir(&target);
        // Up the path to a directory that exists; each step is shorter, so this ends.
        loop {
            match fs::metadata(&dir) {
                Ok(m) if m.is_dir() => break,
                Ok(_) => {
                    return Err(self.io(
                        "create the directory of",
                        io::Error::new(
                            io::ErrorKind::NotADirectory,
                            format!("{} is not a directory", dir.display()),
                        ),
                    ));
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => match dir.parent() {
                    Some(p) if !p.as_os_str().is_empty() => dir = p.to_path_buf(),
                    _ => {
                        dir = PathBuf::from(".");
                        break;
                    }
                },
                Err(e) => return Err(self.io("use the directory of", e)),
            }
        }
        tempfile::Builder::new()
            .prefix(".tka-")
            .suffix(".probe")
            .tempfile_in(&dir)
            .map(drop)
            .map_err(|e| self.io("write in the directory of", e))
    }

    /// Applies `change` to the file under the lock and writes the result if it differs. A
    /// missing file (and its directory, mode 0700) is created.
    pub(crate) fn update<T>(
        &self,
        change: impl FnOnce(&mut Kubeconfig) -> Result<T, KubeconfigError>,
    ) -> Result<T, KubeconfigFileError> {
        let target = self.target()?;
        let dir = parent_dir(&target);
        if !dir.exists() {
            create_private_dir(&dir).map_err(|e| self.io("create the directory of", e))?;
        }
        let _lock = self.lock(&dir)?;
        self.check_writable()?;
        let before = self.read()?;
        let mut after = before.clone();
        let result = change(&mut after).map_err(|source| KubeconfigFileError::Refused {
            path: self.path.clone(),
            source,
        })?;
        if after != before || !target.exists() {
            let text = after
                .render()
                .map_err(|source| KubeconfigFileError::Refused {
                    path: self.path.clone(),
                    source,
                })?;
            write_atomically(&target, text.as_bytes()).map_err(|e| self.io("write", e))?;
        }
        Ok(result)
    }

    /// The file the path finally names, following only the symlinks
    /// [`crate::kubeconfig_link`] allows (a dangling one is refused).
    fn target(&self) -> Result<PathBuf, KubeconfigFileError> {
        kubeconfig_link::resolve(&self.path).map_err(|e| match e {
            ResolveError::Refused(refusal) => KubeconfigFileError::UnsafeLink {
                path: self.path.clone(),
                refusal,
            },
            ResolveError::Io { action, source } => self.io(action, source),
        })
    }

    /// Locks the directory (bounded wait).
    fn lock(&self, dir: &Path) -> Result<File, KubeconfigFileError> {
        let handle = File::open(dir).map_err(|e| self.io("open the directory of", e))?;
        let deadline = Instant::now() + LOCK_WAIT;
        loop {
            match handle.try_lock() {
                Ok(()) => return Ok(handle),
                Err(fs::TryLockError::WouldBlock) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(fs::TryLockError::WouldBlock) => {
                    return Err(KubeconfigFileError::Busy {
                        path: self.path.clone(),
                    });
                }
                Err(fs::TryLockError::Error(e)) => return Err(self.io("lock", e)),
            }
        }
    }

    fn io(&self, action: &'static str, source: io::Error) -> KubeconfigFileError {
        KubeconfigFileError::Io {
            action,
            path: self.path.clone(),
            source,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::{PermissionsExt as _, symlink};

    use super::*;

    fn env_with(kubeconfig: &str) -> Environment {
        Environment {
            kubeconfig: Some(kubeconfig.into()),
            ..Environment::default()
        }
    }

    #[test]
    fn a_missing_file_is_created_with_its_directory() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("new/sub/config");
        let file = KubeconfigFile::locate(&env_with(path.to_str().unwrap())).unwrap();
        file.update(|_| Ok(())).unwrap();
        let meta = fs::metadata(&path).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        let dir_meta = fs::metadata(path.parent().unwrap()).unwrap();
        assert_eq!(dir_meta.permissions().mode() & 0o777, 0o700);
        assert!(file.read().is_ok());
    }

    #[test]
    fn symlinks_are_written_through() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("real-config");
        fs::write(&real, "apiVersion: v1\nkind: Config\nx-keep: 1\n").unwrap();
        let link = dir.path().join("config");
        symlink("real-config", &link).unwrap();
        let file = KubeconfigFile::at(link.clone());
        file.update(|c| {
            *c = Kubeconfig::parse("apiVersion: v1\nkind: Config\nx-keep: 2\n")?;
            Ok(())
        })
        .unwrap();
        assert!(
            fs::symlink_metadata(&link)
                .unwrap()
                .file_type()
                .is_symlink()
        );
        assert!(fs::read_to_string(&real).unwrap().contains("x-keep: 2"));
    }

    #[test]
    fn read_only_and_malformed_files_are_left_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let ro = dir.path().join("ro");
        fs::write(&ro, "apiVersion: v1\n").unwrap();
        fs::set_permissions(&ro, fs::Permissions::from_mode(0o400)).unwrap();
        let err = KubeconfigFile::at(ro.clone())
            .update(|c| {
                *c = Kubeconfig::default();
                Ok(())
            })
            .unwrap_err();
        assert!(matches!(err, KubeconfigFileError::ReadOnly { .. }), "{err}");
        assert_eq!(fs::read_to_string(&ro).unwrap(), "apiVersion: v1\n");

        let bad = dir.path().join("bad");
        fs::write(&bad, "clusters: [\n").unwrap();
        let err = KubeconfigFile::at(bad.clone())
            .update(|_| Ok(()))
            .unwrap_err();
        assert!(
            matches!(err, KubeconfigFileError::Malformed { .. }),
            "{err}"
        );
        assert!(err.to_string().contains(bad.to_str().unwrap()));
        assert_eq!(fs::read_to_string(&bad).unwrap(), "clusters: [\n");

        // A writable, well-formed file is changed.
        let good = dir.path().join("good");
        fs::write(&good, "apiVersion: v1\n").unwrap();
        KubeconfigFile::at(good.clone())
            .update(|c| {
                *c = Kubeconfig::parse("apiVersion: v1\nx: 1\n")?;
                Ok(())
            })
            .unwrap();
        assert!(fs::read_to_string(&good).unwrap().contains("x: 1"));
    }

    #[test]
    fn a_fifo_or_directory_at_the_path_is_refused_without_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        rustix::fs::mknodat(
            rustix::fs::CWD,
            &fifo,
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::from_raw_mode(0o600),
            0,
        )
        .unwrap();
        // Opening a FIFO for reading or appending would wait for a writer forever; each call
        // must come back with a refusal instead.
        let file = KubeconfigFile::at(fifo);
        for err in [
            file.read().unwrap_err(),
            file.check_can_write().unwrap_err(),
            file.update(|_| Ok(())).unwrap_err(),
        ] {
            assert!(matches!(err, KubeconfigFileError::NotAFile { .. }), "{err}");
            assert!(err.to_string().contains("not a regular file"), "{err}");
            assert!(err.hint().contains("regular file"), "{}", err.hint());
        }
        let sub = dir.path().join("sub");
        fs::create_dir(&sub).unwrap();
        let err = KubeconfigFile::at(sub).read().unwrap_err();
        assert!(matches!(err, KubeconfigFileError::NotAFile { .. }), "{err}");

        // Allowed: a missing file reads as empty, and a regular file reads.
        let missing = KubeconfigFile::at(dir.path().join("missing"));
        assert_eq!(missing.read().unwrap(), Kubeconfig::default());
        missing.check_can_write().unwrap();
        let regular = dir.path().join("regular");
        fs::write(&regular, "apiVersion: v1\n").unwrap();
        KubeconfigFile::at(regular).read().unwrap();
    }
}
