//! Where the daemon may put (or connect to) a unix socket, and what it may
//! remove to bind one.
//!
//! The daemon runs as root and takes socket paths from its control API,
//! whose clients may be less privileged (`control_group`). Binding a socket
//! means removing what is left at the path from an earlier run; unchecked,
//! `vnic.add {"socket": "/etc/shadow"}` would delete that file. So: vNIC
//! sockets live under `runtime_dir` or a directory listed in `socket_dirs`
//! (checked on the path as written and again on the real, symlink-resolved
//! directory), and the only thing ever removed is a socket, never a symlink
//! or any other kind of file.

use std::io;
use std::os::unix::fs::FileTypeExt;
use std::path::{Component, Path, PathBuf};

use thiserror::Error;

#[derive(Debug, Error)]
pub enum SocketPathError {
    #[error("socket {0}: {1} exists and is not a socket; refusing to remove it")]
    NotASocket(PathBuf, &'static str),
    #[error("socket {path}: its directory resolves to {real}, outside {allowed}")]
    Escapes {
        path: PathBuf,
        real: PathBuf,
        allowed: String,
    },
    #[error("socket {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
}

/// An absolute path without `..` components (so that where it points can be
/// judged from its text; a `.` inside a path is dropped when it is parsed).
pub fn check_plain_absolute(path: &Path) -> Result<(), String> {
    if !path.is_absolute() {
        return Err(format!("{} is not an absolute path", path.display()));
    }
    if path
        .components()
        .any(|c| matches!(c, Component::ParentDir | Component::CurDir))
    {
        return Err(format!("{} contains '..'", path.display()));
    }
    Ok(())
}

/// `path` is a plain absolute path inside one of `dirs` (not one of them).
pub fn check_inside(path: &Path, dirs: &[&Path]) -> Result<(), String> {
    check_plain_absolute(path)?;
    if dirs.iter().any(|d| path.starts_with(d) && path != *d) {
        Ok(())
    } else {
        Err(format!(
            "{} is not inside {} (add its directory to socket_dirs)",
            path.display(),
            list(dirs)
        ))
    }
}

fn list(dirs: &[&Path]) -> String {
    dirs.iter()
        .map(|d| d.display().to_string())
        .collect::<Vec<_>>()
        .join(" or ")
}

/// Makes `path` ready for a socket: with `create_dir`, its directory is
/// created; that directory, symlinks resolved, must still be inside one of
/// `dirs` (also resolved); a socket left at `path` is removed, anything else
/// there is refused. `check_inside` must have passed for `path`.
pub fn prepare(path: &Path, dirs: &[&Path], create_dir: bool) -> Result<(), SocketPathError> {
    let err = |source| SocketPathError::Io {
        path: path.to_path_buf(),
        source,
    };
    let parent = path.parent().unwrap_or(Path::new("/"));
    if create_dir {
        std::fs::create_dir_all(parent).map_err(err)?;
    }
    let real = parent.canonicalize().map_err(err)?;
    let inside = dirs
        .iter()
        .filter_map(|d| d.canonicalize().ok())
        .any(|d| real.starts_with(d));
    if !inside {
        return Err(SocketPathError::Escapes {
            path: path.to_path_buf(),
            real,
            allowed: list(dirs),
        });
    }
    remove_stale_socket(path)
}

/// Removes the socket at `path` if there is one; refuses to remove anything
/// else (a symlink, even to a socket, included).
pub fn remove_stale_socket(path: &Path) -> Result<(), SocketPathError> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(SocketPathError::Io {
                path: path.to_path_buf(),
                source,
            })
        }
    };
    let t = meta.file_type();
    if !t.is_socket() {
        let what = if t.is_symlink() {
            "a symlink"
        } else if t.is_dir() {
            "a directory"
        } else if t.is_file() {
            "a regular file"
        } else {
            "a file"
        };
        return Err(SocketPathError::NotASocket(path.to_path_buf(), what));
    }
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(SocketPathError::Io {
            path: path.to_path_buf(),
            source: e,
        }),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;

    fn tmp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("snapnet-sp-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn paths_must_be_plain_and_inside_an_allowed_directory() {
        let run = Path::new("/run/snapnet");
        let ok = |p: &str| check_inside(Path::new(p), &[run]);
        assert!(ok("/run/snapnet/a.sock").is_ok());
        assert!(ok("/run/snapnet/vms/a.sock").is_ok());
        assert!(ok("/etc/shadow").unwrap_err().contains("socket_dirs"));
        assert!(ok("/run/snapnet/../../etc/shadow").is_err());
        // A `.` inside a path is dropped when it is read: harmless.
        assert!(ok("/run/snapnet/./a.sock").is_ok());
        assert!(ok("run/snapnet/a.sock").is_err());
        assert!(ok("/run/snapnet").is_err());
        assert!(ok("/run/snapnetx/a.sock").is_err());
        let vms = Path::new("/var/lib/vms");
        assert!(check_inside(Path::new("/var/lib/vms/vm0/net0.sock"), &[run, vms]).is_ok());
    }

    #[test]
    fn only_a_stale_socket_is_ever_removed() {
        let d = tmp("stale");
        let file = d.join("victim");
        std::fs::write(&file, b"keep me").unwrap();
        assert!(matches!(
            prepare(&file, &[&d], true),
            Err(SocketPathError::NotASocket(_, "a regular file"))
        ));
        assert_eq!(std::fs::read(&file).unwrap(), b"keep me");
        let sock = d.join("old.sock");
        drop(UnixListener::bind(&sock).unwrap());
        let link = d.join("link.sock");
        std::os::unix::fs::symlink(&sock, &link).unwrap();
        assert!(matches!(
            prepare(&link, &[&d], true),
            Err(SocketPathError::NotASocket(_, "a symlink"))
        ));
        assert!(sock.exists() && link.symlink_metadata().is_ok());
        let sub = d.join("dir.sock");
        std::fs::create_dir(&sub).unwrap();
        assert!(prepare(&sub, &[&d], true).is_err());
        prepare(&sock, &[&d], true).unwrap();
        assert!(sock.symlink_metadata().is_err(), "stale socket removed");
        prepare(&d.join("new/deeper.sock"), &[&d], true).unwrap();
        assert!(d.join("new").is_dir());
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn a_symlinked_directory_cannot_lead_outside() {
        let d = tmp("escape");
        let outside = tmp("outside");
        std::os::unix::fs::symlink(&outside, d.join("out")).unwrap();
        let victim = outside.join("victim.sock");
        drop(UnixListener::bind(&victim).unwrap());
        assert!(matches!(
            prepare(&d.join("out/victim.sock"), &[&d], true),
            Err(SocketPathError::Escapes { .. })
        ));
        assert!(victim.symlink_metadata().is_ok(), "not removed");
        let _ = std::fs::remove_dir_all(&d);
        let _ = std::fs::remove_dir_all(&outside);
    }
}
