//! How tka writes its own files: private directories (0700) and whole-file replacement (a 0600
//! temporary file in the same directory, fsync, rename over the target, fsync of the directory),
//! so a reader never sees half a file. The kubeconfig, the token cache and the pin file all write
//! through here.
//!
//! It also says whether an existing path is one of this user's own ([`own`]): tka trusts what it
//! reads from its cache and pin files only when nobody else could have put it there.
//!
//! It owns these few file-system steps only. It must not know what a file holds, where it lives
//! or how it is locked (its callers decide), and it imports nothing from this crate.

use std::fs::{self, File};
use std::io::{self, Write as _};
use std::os::unix::fs::{DirBuilderExt as _, MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

/// What kind of path [`own`] expects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// A directory.
    Dir,
    /// A regular file.
    File,
}

/// The metadata of `path` (not following a symlink) when it is of `kind` and owned by the
/// effective user; otherwise why not, in words that follow the path ("is a symbolic link").
/// `Ok(None)` when it does not exist.
pub(crate) fn own(
    path: &Path,
    kind: Kind,
) -> io::Result<Result<Option<fs::Metadata>, &'static str>> {
    let meta = match fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Ok(None)),
        Err(e) => return Err(e),
    };
    Ok(if meta.file_type().is_symlink() {
        Err("is a symbolic link")
    } else if kind == Kind::Dir && !meta.is_dir() {
        Err("is not a directory")
    } else if kind == Kind::File && !meta.is_file() {
        Err("is not a regular file")
    } else if meta.uid() != rustix::process::geteuid().as_raw() {
        Err("belongs to another user")
    } else {
        Ok(Some(meta))
    })
}

/// The directory a file is in (`.` for a bare name).
pub(crate) fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Creates `dir` and its missing parents, each new one with mode 0700. An existing directory is
/// left as it is.
pub(crate) fn create_private_dir(dir: &Path) -> io::Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

/// Writes `contents` to `target` atomically: a 0600 temporary file in the same directory,
/// fsync, rename, fsync of the directory.
pub(crate) fn write_atomically(target: &Path, contents: &[u8]) -> io::Result<()> {
    let dir = parent_dir(target);
    let mut tmp = tempfile::Builder::new()
        .prefix(".tka-")
        .suffix(".tmp")
        .permissions(fs::Permissions::from_mode(0o600))
        .tempfile_in(&dir)?;
    tmp.write_all(contents)?;
    tmp.as_file().sync_all()?;
    tmp.persist(target).map_err(|e| e.error)?;
    File::open(&dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_write_replaces_the_whole_file_with_mode_0600_and_leaves_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let nested = dir.path().join("a").join("b");
        create_private_dir(&nested).unwrap();
        assert_eq!(
            fs::metadata(&nested).unwrap().permissions().mode() & 0o777,
            0o700
        );
        let target = nested.join("file.json");
        fs::write(&target, "old contents, longer than the new").unwrap();
        fs::set_permissions(&target, fs::Permissions::from_mode(0o644)).unwrap();

        write_atomically(&target, b"new").unwrap();

        assert_eq!(fs::read_to_string(&target).unwrap(), "new");
        assert_eq!(
            fs::metadata(&target).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let names: Vec<_> = fs::read_dir(&nested)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("file.json")]);
    }

    #[test]
    fn a_bare_name_is_in_the_current_directory() {
        assert_eq!(parent_dir(Path::new("config")), PathBuf::from("."));
        assert_eq!(parent_dir(Path::new("/etc/x")), PathBuf::from("/etc"));
    }
}
