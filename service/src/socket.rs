//! Listening Unix sockets as every daemon of the project binds them: the
//! socket appears at its path only with its final mode and owner (bound
//! in a private directory next to it, then renamed into place), a stale
//! socket is replaced, a live one or anything that is not a socket is left
//! alone, and the path is removed on drop only if it is still ours.

use std::io;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

/// Who may connect: the socket's mode (default 0600, only the server's
/// user) and, optionally, its owner (a client running as another user:
/// `mode 0660` and its group, or its user).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SocketAccess {
    pub mode: u32,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
}

impl Default for SocketAccess {
    fn default() -> Self {
        SocketAccess {
            mode: 0o600,
            uid: None,
            gid: None,
        }
    }
}

impl SocketAccess {
    /// `sock-mode=OCTAL` (at most 0777).
    pub fn set_mode(&mut self, value: &str) -> Result<(), String> {
        self.mode = u32::from_str_radix(value.trim_start_matches("0o"), 8)
            .ok()
            .filter(|m| *m <= 0o777)
            .ok_or_else(|| format!("sock-mode must be an octal mode up to 0777, got '{value}'"))?;
        Ok(())
    }

    /// `sock-owner=UID[:GID]` (numeric ids).
    pub fn set_owner(&mut self, value: &str) -> Result<(), String> {
        let bad = || format!("sock-owner must be UID or UID:GID (numbers), got '{value}'");
        let (u, g) = match value.split_once(':') {
            Some((u, g)) => (u, Some(g)),
            None => (value, None),
        };
        self.uid = Some(u.parse().map_err(|_| bad())?);
        self.gid = g.map(|g| g.parse().map_err(|_| bad())).transpose()?;
        Ok(())
    }
}

/// Why a socket could not be bound.
#[derive(Debug)]
pub enum BindError {
    /// Another process accepts on the path.
    InUse(PathBuf),
    /// Something that is not a socket is at the path (left alone).
    NotASocket(PathBuf),
    /// Binding, or giving the socket its mode, owner and path, failed.
    Io(PathBuf, io::Error),
}

impl std::fmt::Display for BindError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BindError::InUse(p) => write!(f, "{} is in use by another process", p.display()),
            BindError::NotASocket(p) => {
                write!(
                    f,
                    "{} exists and is not a socket: not replacing it",
                    p.display()
                )
            }
            BindError::Io(p, e) => write!(f, "binding {}: {e}", p.display()),
        }
    }
}

impl std::error::Error for BindError {}

impl From<BindError> for io::Error {
    fn from(e: BindError) -> io::Error {
        let kind = match &e {
            BindError::InUse(_) => io::ErrorKind::AddrInUse,
            BindError::NotASocket(_) => io::ErrorKind::AlreadyExists,
            BindError::Io(_, e) => e.kind(),
        };
        io::Error::new(kind, e.to_string())
    }
}

/// A listening socket at a path, removed on drop if the path still names
/// it.
#[derive(Debug)]
pub struct OwnedSocket {
    listener: UnixListener,
    path: PathBuf,
    /// (st_dev, st_ino) of the socket file we created.
    identity: Option<(u64, u64)>,
}

impl OwnedSocket {
    /// Listen on `path` with `access` (see the module documentation).
    pub fn bind(path: &Path, access: &SocketAccess) -> Result<OwnedSocket, BindError> {
        if let Ok(meta) = std::fs::symlink_metadata(path) {
            if !meta.file_type().is_socket() {
                return Err(BindError::NotASocket(path.to_owned()));
            }
            match UnixStream::connect(path) {
                Ok(_) => return Err(BindError::InUse(path.to_owned())),
                Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                    tracing::info!(path = %path.display(), "removing a stale socket");
                    if let Err(e) = std::fs::remove_file(path) {
                        if e.kind() != io::ErrorKind::NotFound {
                            return Err(BindError::Io(path.to_owned(), e));
                        }
                    }
                }
                // Anything else (permissions...): let bind() report it.
                Err(_) => {}
            }
        }
        let listener = bind_private(path, access).map_err(|e| BindError::Io(path.to_owned(), e))?;
        let identity = std::fs::symlink_metadata(path)
            .ok()
            .map(|m| (m.dev(), m.ino()));
        Ok(OwnedSocket {
            listener,
            path: path.to_owned(),
            identity,
        })
    }

    /// A socket another process bound at `path` and passed on: removed
    /// on drop if the path still names it, as one bound here.
    pub fn adopt(listener: UnixListener, path: &Path) -> OwnedSocket {
        let identity = std::fs::symlink_metadata(path)
            .ok()
            .map(|m| (m.dev(), m.ino()));
        OwnedSocket {
            listener,
            path: path.to_owned(),
            identity,
        }
    }

    pub fn listener(&self) -> &UnixListener {
        &self.listener
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for OwnedSocket {
    fn drop(&mut self) {
        let ours = match std::fs::symlink_metadata(&self.path) {
            Ok(m) => self.identity == Some((m.dev(), m.ino())),
            Err(_) => false,
        };
        if ours {
            if let Err(e) = std::fs::remove_file(&self.path) {
                tracing::warn!(path = %self.path.display(), error = %e, "cannot remove socket");
            }
        }
    }
}

/// Bind `path` with `access`: in a fresh directory next to it (mode 0700),
/// chmod and chown there, then rename into place.
fn bind_private(path: &Path, access: &SocketAccess) -> io::Result<UnixListener> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::other("no file name"))?;
    let tmp = dir.join(format!(
        ".{}.{}.tmp",
        name.to_string_lossy(),
        std::process::id()
    ));
    std::fs::DirBuilder::new().mode(0o700).create(&tmp)?;
    let staged = tmp.join("s");
    let result = (|| {
        let listener = UnixListener::bind(&staged)?;
        std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(access.mode))?;
        if access.uid.is_some() || access.gid.is_some() {
            std::os::unix::fs::chown(&staged, access.uid, access.gid)?;
        }
        std::fs::rename(&staged, path)?;
        Ok(listener)
    })();
    let _ = std::fs::remove_file(&staged);
    let _ = std::fs::remove_dir(&tmp);
    result
}

/// The process at the other end of a Unix socket (SO_PEERCRED).
pub fn peer_cred(sock: &UnixStream) -> io::Result<libc::ucred> {
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = libc::socklen_t::try_from(std::mem::size_of::<libc::ucred>())
        .map_err(|_| io::Error::other("ucred size"))?;
    // SAFETY: getsockopt writes at most `len` bytes into `cred`, a ucred
    // as SO_PEERCRED expects.
    let r = unsafe {
        libc::getsockopt(
            std::os::fd::AsRawFd::as_raw_fd(sock),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            std::ptr::addr_of_mut!(cred).cast(),
            &mut len,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(cred)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir() -> PathBuf {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static N: AtomicUsize = AtomicUsize::new(0);
        let d = std::env::temp_dir().join(format!(
            "leapio-socket-test-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn a_socket_appears_with_its_mode_and_goes_only_if_ours() {
        let d = dir();
        let p = d.join("c.sock");
        let s = OwnedSocket::bind(&p, &SocketAccess::default()).unwrap();
        let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert!(matches!(
            OwnedSocket::bind(&p, &SocketAccess::default()),
            Err(BindError::InUse(_))
        ));
        // Someone else's socket now sits at the path: dropping ours leaves
        // it.
        std::fs::remove_file(&p).unwrap();
        let theirs = UnixListener::bind(&p).unwrap();
        drop(s);
        assert!(p.exists(), "removed a socket that is not ours");
        drop(theirs);
        // A stale socket is replaced; a plain file is not.
        let s = OwnedSocket::bind(&p, &SocketAccess::default()).unwrap();
        drop(s);
        assert!(!p.exists());
        std::fs::write(&p, b"data").unwrap();
        assert!(matches!(
            OwnedSocket::bind(&p, &SocketAccess::default()),
            Err(BindError::NotASocket(_))
        ));
        assert_eq!(std::fs::read(&p).unwrap(), b"data");
        let _ = std::fs::remove_dir_all(d);
    }

    #[test]
    fn the_peer_is_known() {
        let (a, _b) = UnixStream::pair().unwrap();
        // SAFETY: geteuid has no preconditions.
        assert_eq!(peer_cred(&a).unwrap().uid, unsafe { libc::geteuid() });
    }
}
