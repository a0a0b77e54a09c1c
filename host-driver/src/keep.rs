//! Keeping a host-driver's descriptors alive while no host-driver runs.
//!
//! No vfio-user client reconnects to a restarted server: the hypervisor's
//! connection, the guest-memory files, the interrupt eventfds, the doorbell
//! page and the queue-state area must outlive the process that serves
//! them. A *keeper* is a minimal process of its own (`leapio-hostd
//! --fd-keeper PATH`, started by the first host-driver that asks for it)
//! that holds them, by name, for the host-driver that *owns* it: the owner
//! puts a descriptor when it gets one and removes it when it lets go. When
//! the owner dies, everything stays; the next host-driver takes it all
//! back. A host-driver started with `--handover` asks the keeper to replace
//! a live owner: the keeper tells the owner (SIGUSR2), which stops between
//! two messages, writes its last state and exits; then the new one takes
//! everything.
//!
//! This is what systemd's file-descriptor store (`FDSTORE=1`,
//! `FDNAME=`, `FDSTOREREMOVE=1`, given back as `LISTEN_FDS` with
//! `LISTEN_FDNAMES`) does for a service; the keeper gives the same to a
//! host-driver run without a service manager, and the names follow the
//! same rules (at most 255 characters, no ':' or control characters).
//! LeapIO does not use that store: under systemd the keeper is a service of
//! its own, started through a socket unit that passes it its listening
//! socket ([`run_keeper`]).
//!
//! Only processes of the keeper's own user may talk to it (SO_PEERCRED).

use leapio_link::frame::{self, Message};
use leapio_link::LinkError;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Most descriptors one entry holds.
const MAX_ENTRY_FDS: usize = 4;
/// Most entries a keeper holds.
const MAX_ENTRIES: usize = 65536;
/// Connections a keeper serves at once (its owner, a successor, a few
/// more); more are closed at once.
const MAX_CONNECTIONS: usize = 16;
/// How long a live owner has to let go when a new host-driver takes over.
const RELEASE_TIMEOUT: Duration = Duration::from_secs(10);

/// What a host-driver asks of its keeper.
#[derive(Serialize, Deserialize, Debug)]
enum ToKeeper {
    /// Take everything held and become the owner; `handover`: a live owner
    /// is asked to let go first (else its presence is an error).
    Take { handover: bool },
    /// Hold these descriptors under `name` (replacing what was there).
    Put { name: String, fds: usize },
    /// Let go of every entry whose name starts with `prefix`.
    Remove { prefix: String },
    /// The owner stops for good: the keeper closes everything and exits.
    Quit,
}

/// What a keeper answers.
#[derive(Serialize, Deserialize, Debug)]
enum FromKeeper {
    Done,
    /// One entry of a Take.
    Entry {
        name: String,
        fds: usize,
    },
    /// A Take's last message.
    End,
    Refused {
        reason: String,
    },
}

impl Message for ToKeeper {
    fn fd_count(&self) -> usize {
        match self {
            ToKeeper::Put { fds, .. } => *fds,
            _ => 0,
        }
    }
}

impl Message for FromKeeper {
    fn fd_count(&self) -> usize {
        match self {
            FromKeeper::Entry { fds, .. } => *fds,
            _ => 0,
        }
    }
}

/// Whether `name` may name an entry (systemd's FDNAME rules).
fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 255 || name.chars().any(|c| c == ':' || c.is_control()) {
        return Err(format!(
            "bad entry name '{}'",
            leapio_link::proto::software_shown(name)
        ));
    }
    Ok(())
}

/// What a keeper gave back: descriptors by name.
#[derive(Debug, Default)]
pub struct Held {
    entries: BTreeMap<String, Vec<OwnedFd>>,
}

impl Held {
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Take the descriptors of `name`.
    pub fn take(&mut self, name: &str) -> Option<Vec<OwnedFd>> {
        self.entries.remove(name)
    }

    /// Take the one descriptor of `name`.
    pub fn take_one(&mut self, name: &str) -> Option<OwnedFd> {
        self.take(name).and_then(|v| v.into_iter().next())
    }

    /// The names that start with `prefix`.
    pub fn names(&self, prefix: &str) -> Vec<String> {
        self.entries
            .keys()
            .filter(|n| n.starts_with(prefix))
            .cloned()
            .collect()
    }
}

/// A host-driver's connection to its keeper.
pub struct Keeper {
    sock: Mutex<UnixStream>,
    path: PathBuf,
    /// The keeper's process.
    pid: i32,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[derive(Debug, thiserror::Error)]
pub enum KeepError {
    #[error("keeper at {path}: {what}")]
    Io {
        path: String,
        what: String,
        #[source]
        source: io::Error,
    },
    #[error("keeper at {path}: {source}")]
    Link {
        path: String,
        #[source]
        source: LinkError,
    },
    #[error("keeper at {path}: {reason}")]
    Refused { path: String, reason: String },
}

impl Keeper {
    /// Connect to the keeper at `path`, starting one if none listens, and
    /// take what it holds (see [`ToKeeper::Take`]).
    pub fn open(path: &Path, handover: bool) -> Result<(Keeper, Held), KeepError> {
        let io_err = |what: &str, source| KeepError::Io {
            path: path.display().to_string(),
            what: what.to_string(),
            source,
        };
        let sock = match UnixStream::connect(path) {
            Ok(s) => s,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused
                ) =>
            {
                spawn_keeper(path).map_err(|e| io_err("starting it", e))?
            }
            Err(e) => return Err(io_err("connecting", e)),
        };
        let pid = leapio_service::socket::peer_cred(&sock)
            .map_err(|e| io_err("asking who it is", e))?
            .pid;
        let k = Keeper {
            sock: Mutex::new(sock),
            path: path.to_owned(),
            pid,
        };
        let held = k.take(handover)?;
        Ok((k, held))
    }

    /// The keeper's process (it holds the controllers' shared memory).
    pub fn pid(&self) -> i32 {
        self.pid
    }

    fn link_err(&self, source: LinkError) -> KeepError {
        KeepError::Link {
            path: self.path.display().to_string(),
            source,
        }
    }

    fn take(&self, handover: bool) -> Result<Held, KeepError> {
        let sock = lock(&self.sock);
        frame::send(&sock, &ToKeeper::Take { handover }, &[]).map_err(|e| self.link_err(e))?;
        let mut held = Held::default();
        loop {
            match frame::recv::<FromKeeper>(&sock).map_err(|e| self.link_err(e))? {
                (FromKeeper::Entry { name, .. }, fds) => {
                    held.entries.insert(name, fds);
                }
                (FromKeeper::End, _) => return Ok(held),
                (FromKeeper::Refused { reason }, _) => {
                    return Err(KeepError::Refused {
                        path: self.path.display().to_string(),
                        reason,
                    })
                }
                (other, _) => {
                    return Err(self.link_err(LinkError::Protocol(format!("unexpected {other:?}"))))
                }
            }
        }
    }

    fn ask(&self, msg: &ToKeeper, fds: &[BorrowedFd<'_>]) -> Result<(), KeepError> {
        let sock = lock(&self.sock);
        frame::send(&sock, msg, fds).map_err(|e| self.link_err(e))?;
        match frame::recv::<FromKeeper>(&sock)
            .map_err(|e| self.link_err(e))?
            .0
        {
            FromKeeper::Done => Ok(()),
            FromKeeper::Refused { reason } => Err(KeepError::Refused {
                path: self.path.display().to_string(),
                reason,
            }),
            other => Err(self.link_err(LinkError::Protocol(format!("unexpected {other:?}")))),
        }
    }

    /// Hold `fds` under `name`.
    pub fn put(&self, name: &str, fds: &[BorrowedFd<'_>]) -> Result<(), KeepError> {
        self.ask(
            &ToKeeper::Put {
                name: name.to_string(),
                fds: fds.len(),
            },
            fds,
        )
    }

    /// Let go of the entries whose names start with `prefix`.
    pub fn remove(&self, prefix: &str) -> Result<(), KeepError> {
        self.ask(
            &ToKeeper::Remove {
                prefix: prefix.to_string(),
            },
            &[],
        )
    }

    /// Stop the keeper: everything it holds is closed.
    pub fn quit(&self) {
        let sock = lock(&self.sock);
        let _ = frame::send(&sock, &ToKeeper::Quit, &[]);
    }
}

/// Start `leapio-hostd --fd-keeper PATH` (this executable), in a session of
/// its own so that what stops the host-driver does not stop it, and wait
/// until it listens.
fn spawn_keeper(path: &Path) -> io::Result<UnixStream> {
    use std::os::unix::process::CommandExt;
    let exe = std::env::current_exe()?;
    let mut cmd = std::process::Command::new(exe);
    cmd.arg("--fd-keeper")
        .arg(path)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null());
    // The service manager's notifications, watchdog and sockets are this
    // process's, not the keeper's.
    for var in [
        "NOTIFY_SOCKET",
        "WATCHDOG_USEC",
        "WATCHDOG_PID",
        "LISTEN_PID",
        "LISTEN_FDS",
        "LISTEN_FDNAMES",
    ] {
        cmd.env_remove(var);
    }
    // SAFETY: setsid is async-signal-safe and touches no memory.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn()?;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match UnixStream::connect(path) {
            Ok(s) => {
                // Reaped by nobody: it outlives this process by design.
                std::mem::forget(child);
                return Ok(s);
            }
            Err(e) if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(e);
            }
            Err(_) => {
                if let Some(status) = child.try_wait()? {
                    return Err(io::Error::other(format!("the keeper exited: {status}")));
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
}

/// The keeper's state.
#[derive(Default)]
struct Store {
    entries: BTreeMap<String, Vec<OwnedFd>>,
    /// The owning host-driver's pid, while it is connected.
    owner: Option<i32>,
    /// Connections served so far (the owner's number).
    owner_conn: u64,
    quit: bool,
}

/// Run a keeper on `path` until its owner says Quit. Returns why it ended.
///
/// Under a service manager that passed the socket (socket activation, the
/// `leapio-fd-keeper.socket` unit) the keeper serves that one, which must
/// be at `path`: the manager holds it, so a host-driver that connects
/// while no keeper runs (before the first, or after one quit) reaches the
/// next keeper and never starts one of its own.
pub fn run_keeper(path: &Path) -> Result<(), String> {
    let passed = leapio_service::notify::listen_socket();
    let bound;
    let listener: &UnixListener = match &passed {
        Some(l) => {
            let at = l
                .local_addr()
                .ok()
                .and_then(|a| a.as_pathname().map(Path::to_path_buf));
            if at.as_deref() != Some(path) {
                return Err(format!(
                    "the service manager passed the socket {}, not {}",
                    at.as_deref().unwrap_or(Path::new("(unnamed)")).display(),
                    path.display()
                ));
            }
            l
        }
        None => {
            bound = leapio_service::socket::OwnedSocket::bind(
                path,
                &leapio_service::socket::SocketAccess::default(),
            )
            .map_err(|e| format!("keeper socket {}: {e}", path.display()))?;
            bound.listener()
        }
    };
    let store = Arc::new((Mutex::new(Store::default()), Condvar::new()));
    tracing::info!(path = %path.display(), passed = passed.is_some(), "fd keeper running");
    let mut conn_no = 0u64;
    let open = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    loop {
        let accepted = listener.accept();
        if lock(&store.0).quit {
            tracing::info!("fd keeper stopping: its host-driver stopped for good");
            return Ok(());
        }
        match accepted {
            Ok(_) if open.load(std::sync::atomic::Ordering::Acquire) >= MAX_CONNECTIONS => {
                tracing::warn!(
                    "keeper: {MAX_CONNECTIONS} connections open already: one more closed"
                );
            }
            Ok((s, _)) => {
                conn_no += 1;
                let st = store.clone();
                let n = conn_no;
                let wake = path.to_owned();
                let counter = open.clone();
                open.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
                let spawned = std::thread::Builder::new()
                    .name(format!("keeper-{n}"))
                    .spawn(move || {
                        let quit = serve_conn(&st, s, n);
                        counter.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
                        if quit {
                            // Wake the accepting thread.
                            let _ = UnixStream::connect(&wake);
                        }
                    });
                if let Err(e) = spawned {
                    open.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
                    tracing::warn!("keeper: cannot serve a connection: {e}");
                }
            }
            Err(e) => {
                tracing::warn!("keeper: accept: {e}");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

/// One host-driver's connection to the keeper; true if it said Quit.
fn serve_conn(store: &Arc<(Mutex<Store>, Condvar)>, s: UnixStream, n: u64) -> bool {
    let cred = match leapio_service::socket::peer_cred(&s) {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!("keeper: a connection without credentials: {e}");
            return false;
        }
    };
    // SAFETY: getuid cannot fail.
    if cred.uid != unsafe { libc::getuid() } {
        tracing::warn!(
            pid = cred.pid,
            uid = cred.uid,
            "keeper: refused a process of another user"
        );
        let _ = frame::send(
            &s,
            &FromKeeper::Refused {
                reason: "only the keeper's own user may use it".into(),
            },
            &[],
        );
        return false;
    }
    let mut owner = false;
    loop {
        let (msg, fds) = match frame::recv::<ToKeeper>(&s) {
            Ok(m) => m,
            Err(e) => {
                if owner {
                    let mut st = lock(&store.0);
                    if st.owner_conn == n {
                        st.owner = None;
                        store.1.notify_all();
                    }
                    if !matches!(e, LinkError::Closed) {
                        tracing::warn!(pid = cred.pid, "keeper: owner's connection failed: {e}");
                    }
                    tracing::info!(
                        pid = cred.pid,
                        entries = st.entries.len(),
                        "the host-driver went away: its descriptors are kept"
                    );
                }
                return false;
            }
        };
        let reply = match msg {
            ToKeeper::Take { handover } => {
                match take_over(store, cred.pid, n, handover) {
                    Ok(entries) => {
                        owner = true;
                        let mut ok = true;
                        for (name, fds) in &entries {
                            let b: Vec<BorrowedFd<'_>> = fds.iter().map(|f| f.as_fd()).collect();
                            let e = FromKeeper::Entry {
                                name: name.clone(),
                                fds: b.len(),
                            };
                            if frame::send(&s, &e, &b).is_err() {
                                ok = false;
                                break;
                            }
                        }
                        // What was given (copies) is still held until the
                        // new owner puts or removes it.
                        drop(entries);
                        if !ok {
                            continue;
                        }
                        FromKeeper::End
                    }
                    Err(reason) => FromKeeper::Refused { reason },
                }
            }
            _ if !owner => FromKeeper::Refused {
                reason: "take over first".into(),
            },
            ToKeeper::Put { name, .. } => match check_name(&name) {
                Err(reason) => FromKeeper::Refused { reason },
                Ok(()) if fds.is_empty() || fds.len() > MAX_ENTRY_FDS => FromKeeper::Refused {
                    reason: format!("an entry holds 1 to {MAX_ENTRY_FDS} descriptors"),
                },
                Ok(()) => {
                    let mut st = lock(&store.0);
                    if st.entries.len() >= MAX_ENTRIES && !st.entries.contains_key(&name) {
                        FromKeeper::Refused {
                            reason: format!("{MAX_ENTRIES} entries held already"),
                        }
                    } else {
                        st.entries.insert(name, fds);
                        FromKeeper::Done
                    }
                }
            },
            ToKeeper::Remove { prefix } => {
                lock(&store.0)
                    .entries
                    .retain(|name, _| !name.starts_with(&prefix));
                FromKeeper::Done
            }
            ToKeeper::Quit => {
                let mut st = lock(&store.0);
                st.entries.clear();
                st.quit = true;
                return true;
            }
        };
        if frame::send(&s, &reply, &[]).is_err() {
            continue;
        }
    }
}

/// Become the owner: with `handover`, a live owner is told to let go and
/// waited for. Returns copies of the entries (the keeper keeps its own
/// until the new owner says otherwise).
fn take_over(
    store: &Arc<(Mutex<Store>, Condvar)>,
    pid: i32,
    n: u64,
    handover: bool,
) -> Result<Vec<(String, Vec<OwnedFd>)>, String> {
    let mut st = lock(&store.0);
    if let Some(old) = st.owner {
        if !handover {
            return Err(format!(
                "leapio-hostd pid {old} owns this keeper (start with --handover to replace it)"
            ));
        }
        tracing::info!(
            old,
            new = pid,
            "handover: asking the running host-driver to let go"
        );
        // SAFETY: plain syscall; the pid is the owner's (SO_PEERCRED of a
        // connection still open, so the process exists).
        if unsafe { libc::kill(old, libc::SIGUSR2) } != 0 {
            return Err(format!(
                "cannot signal leapio-hostd pid {old}: {}",
                io::Error::last_os_error()
            ));
        }
        let deadline = Instant::now() + RELEASE_TIMEOUT;
        while st.owner.is_some() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(format!(
                    "leapio-hostd pid {old} did not let go within {RELEASE_TIMEOUT:?}"
                ));
            }
            st = store
                .1
                .wait_timeout(st, left)
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .0;
        }
    }
    st.owner = Some(pid);
    st.owner_conn = n;
    let mut out = Vec::with_capacity(st.entries.len());
    for (name, fds) in &st.entries {
        let copies: io::Result<Vec<OwnedFd>> = fds.iter().map(|f| f.try_clone()).collect();
        out.push((name.clone(), copies.map_err(|e| format!("{name}: {e}"))?));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    fn memfd() -> std::fs::File {
        leapio_link::shm::sealed_memfd(c"kept", 4096).unwrap()
    }

    #[test]
    fn a_keeper_holds_for_its_owner_and_gives_back_to_the_next() {
        let dir = std::env::temp_dir().join(format!("leapio-keeper-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("keeper.sock");
        let p = path.clone();
        let keeper = std::thread::spawn(move || run_keeper(&p));
        assert!((0..500).any(|_| {
            std::thread::sleep(Duration::from_millis(5));
            UnixStream::connect(&path).is_ok()
        }));
        let (a, b) = (memfd(), memfd());
        let id = |f: &std::fs::File| crate::holders::identity(f.as_fd()).unwrap();
        let (k1, held) = Keeper::open(&path, false).unwrap();
        assert!(held.is_empty());
        k1.put("ctrl/vm0/a", &[a.as_fd()]).unwrap();
        k1.put("ctrl/vm0/b", &[b.as_fd()]).unwrap();
        // Names and counts are checked.
        assert!(k1.put("bad:name", &[a.as_fd()]).is_err());
        assert!(k1.put("none", &[]).is_err());
        // A second host-driver, not a handover: refused while k1 owns it.
        let e = Keeper::open(&path, false).err().unwrap().to_string();
        assert!(e.contains("owns this keeper"), "{e}");
        // The owner goes away (as a crash would): the next takes it all
        // (once the keeper has seen the connection end).
        let next_owner = || {
            (0..200)
                .find_map(|_| {
                    let k = Keeper::open(&path, false).ok();
                    if k.is_none() {
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    k
                })
                .expect("the keeper takes a new owner")
        };
        drop(k1);
        let (k2, mut held) = next_owner();
        assert_eq!(held.names("ctrl/"), vec!["ctrl/vm0/a", "ctrl/vm0/b"]);
        let got = std::fs::File::from(held.take_one("ctrl/vm0/a").unwrap());
        assert_eq!(id(&got), id(&a));
        k2.remove("ctrl/vm0/a").unwrap();
        drop(k2);
        let (k3, held) = next_owner();
        assert_eq!(held.names(""), vec!["ctrl/vm0/b"]);
        // A clean stop ends the keeper.
        k3.quit();
        assert_eq!(keeper.join().unwrap(), Ok(()));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
