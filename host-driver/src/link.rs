//! The host-driver's end of one link: a runtime connected to it. Sends
//! messages and waits for acknowledgements; knows who the peer is (its
//! process, through `SO_PEERCRED` and a pidfd) so that it can be *fenced*:
//! a runtime that is gone must also be unable to touch guest memory before
//! a successor is admitted or the guest's memory and queues are released.

use leapio_link::frame;
use leapio_link::ring::Rings;
use leapio_link::{LinkError, ToHost, ToRuntime};
use std::collections::HashMap;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, SyncSender};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// How long a send may block on a runtime that does not read its socket.
pub const SEND_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a controller's thread waits to answer a runtime that may not be
/// its own ([`RuntimeLink::send_brief`]).
pub const BRIEF_SEND: Duration = Duration::from_millis(50);

/// Who is at the other end.
#[derive(Debug)]
pub enum Peer {
    /// A runtime on an SoC, through a link function: no process of ours to
    /// watch; it is fenced when a new runtime opens the function (the SoC
    /// side lets only one process hold it) or the SoC's hypervisor goes
    /// away.
    Soc { function: String },
    /// A thread of this process (the all-in-one `socp`): it cannot die
    /// without us, so it is fenced as soon as its link is closed.
    InProcess,
    /// Another process on this host.
    Process {
        pid: i32,
        /// None when the kernel gave none (the process was already gone).
        pidfd: Option<OwnedFd>,
    },
}

impl Peer {
    /// The peer of an accepted connection: its process (SO_PEERCRED), with
    /// a pidfd (SO_PEERPIDFD where the kernel has it, else pidfd_open).
    pub fn of(sock: &UnixStream) -> io::Result<Peer> {
        let cred = peer_cred(sock)?;
        if cred.pid == std::process::id() as i32 {
            return Ok(Peer::InProcess);
        }
        Ok(Peer::Process {
            pid: cred.pid,
            pidfd: peer_pidfd(sock).or_else(|| pidfd_open(cred.pid)),
        })
    }

    pub fn describe(&self) -> String {
        match self {
            Peer::InProcess => "in-process runtime".into(),
            Peer::Process { pid, .. } => format!("runtime pid {pid}"),
            Peer::Soc { function } => format!("SoC runtime on link function {function}"),
        }
    }

    pub fn pid(&self) -> Option<i32> {
        match self {
            Peer::Process { pid, .. } => Some(*pid),
            _ => None,
        }
    }
}

pub use leapio_service::socket::peer_cred;

fn socklen_of<T>() -> libc::socklen_t {
    libc::socklen_t::try_from(std::mem::size_of::<T>()).unwrap_or(0)
}

/// SO_PEERPIDFD (Linux 6.5).
fn peer_pidfd(sock: &UnixStream) -> Option<OwnedFd> {
    const SO_PEERPIDFD: libc::c_int = 77;
    let mut fd: libc::c_int = -1;
    let mut len = socklen_of::<libc::c_int>();
    // SAFETY: getsockopt writes at most `len` bytes into `fd`.
    let r = unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_PEERPIDFD,
            (&mut fd as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    // SAFETY: on success the kernel gave us a new descriptor.
    (r == 0 && fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd) })
}

fn pidfd_open(pid: i32) -> Option<OwnedFd> {
    // SAFETY: plain syscall with integer arguments; the result is checked.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    let fd = i32::try_from(fd).ok().filter(|fd| *fd >= 0)?;
    // SAFETY: a new descriptor from the kernel.
    Some(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The host's end of a link carried by a link function's rings.
pub struct RingEnd {
    pub rings: Rings,
    /// Kicks from the runtime (the function's KICK register), counted.
    kicks: Mutex<u64>,
    woken: Condvar,
    /// A newer runtime opened the function, or the SoC went away: this
    /// session's runtime can no longer touch the memory.
    superseded: AtomicBool,
    /// The file behind the function's guest memory window (device, inode):
    /// guest memory in it is reachable at its file offset.
    window: Option<(u64, u64)>,
}

impl RingEnd {
    pub fn new(rings: Rings, window: Option<(u64, u64)>) -> Arc<RingEnd> {
        Arc::new(RingEnd {
            rings,
            kicks: Mutex::new(0),
            woken: Condvar::new(),
            superseded: AtomicBool::new(false),
            window,
        })
    }

    /// Where guest memory mapped from `fd` at `file_offset` is in the
    /// window, if the window shows that file.
    pub fn window_offset(&self, fd: BorrowedFd<'_>, file_offset: u64) -> Option<u64> {
        use std::os::unix::fs::MetadataExt;
        let f = std::fs::File::from(fd.try_clone_to_owned().ok()?);
        let m = f.metadata().ok()?;
        (self.window == Some((m.dev(), m.ino()))).then_some(file_offset)
    }

    /// The runtime kicked (or the session ends): wake the reader.
    pub fn kick(&self) {
        *lock(&self.kicks) += 1;
        self.woken.notify_all();
    }

    /// This session is over and its runtime fenced.
    pub fn supersede(&self) {
        self.superseded.store(true, Ordering::Release);
        self.kick();
    }

    pub fn superseded(&self) -> bool {
        self.superseded.load(Ordering::Acquire)
    }

    /// Wait up to `timeout` for a kick after `seen` kicks; returns the count.
    pub fn wait(&self, seen: u64, timeout: Duration) -> u64 {
        let g = lock(&self.kicks);
        let (g, _) = self
            .woken
            .wait_timeout_while(g, timeout, |k| *k == seen)
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *g
    }
}

/// How messages travel.
pub enum Carrier {
    Socket(UnixStream),
    Rings(Arc<RingEnd>),
}

/// Where a new runtime's link goes once its carrier is up (the host-driver,
/// which admits runtimes): the link function hands it the rings of a
/// session an SoC opened.
pub trait Links: Send + Sync {
    /// Serve a runtime that reached us over `carrier`; its link's id, or
    /// None if it was refused.
    fn admit(self: std::sync::Arc<Self>, carrier: Carrier, peer: Peer) -> Option<u64>;
}

/// One connected runtime.
pub struct RuntimeLink {
    pub id: u64,
    pub peer: Peer,
    /// What the runtime said it is (its Hello).
    software: Mutex<String>,
    carrier: Carrier,
    write: Mutex<()>,
    pending: Mutex<HashMap<u64, SyncSender<Result<u16, LinkError>>>>,
    next_req: AtomicU64,
    closed: AtomicBool,
    killed: AtomicBool,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl RuntimeLink {
    /// Wrap the write side of a connection (the reader runs elsewhere on a
    /// clone of the socket, or on the same rings).
    /// The link a previous host-driver had with runtime process `pid` (it
    /// ended with that host-driver): closed, kept to fence the process.
    pub fn ended(pid: i32) -> io::Result<RuntimeLink> {
        let (ours, _theirs) = UnixStream::pair()?;
        let peer = Peer::Process {
            pid,
            pidfd: pidfd_open(pid),
        };
        let l = RuntimeLink::new(0, peer, Carrier::Socket(ours))?;
        l.closed.store(true, Ordering::Release);
        l.shutdown_carrier();
        Ok(l)
    }

    pub fn new(id: u64, peer: Peer, carrier: Carrier) -> io::Result<RuntimeLink> {
        if let Carrier::Socket(sock) = &carrier {
            sock.set_write_timeout(Some(SEND_TIMEOUT))?;
        }
        Ok(RuntimeLink {
            id,
            peer,
            software: Mutex::new(String::from("runtime")),
            carrier,
            write: Mutex::new(()),
            pending: Mutex::new(HashMap::new()),
            next_req: AtomicU64::new(1),
            closed: AtomicBool::new(false),
            killed: AtomicBool::new(false),
        })
    }

    pub fn set_software(&self, s: &str) {
        *lock(&self.software) = leapio_link::proto::software_shown(s);
    }

    /// "socp 0.1.0, runtime pid 1234".
    pub fn describe(&self) -> String {
        format!("{} ({})", lock(&self.software), self.peer.describe())
    }

    /// The link has ended, or (on a link function) a new session replaced
    /// it: its reader may not have noticed yet, but no runtime is on it.
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire) || self.rings().is_some_and(|e| e.superseded())
    }

    /// Send one message. A runtime that does not take it within
    /// [`SEND_TIMEOUT`] is treated as broken (the link is closed).
    pub fn send(&self, msg: &ToRuntime, fds: &[BorrowedFd<'_>]) -> Result<(), LinkError> {
        if self.is_closed() {
            return Err(LinkError::Closed);
        }
        let _w = lock(&self.write);
        self.send_locked(msg, fds, SEND_TIMEOUT)
    }

    /// Send with the write lock held, waiting at most `wait` for the
    /// runtime to take the message; a failed send closes the link.
    fn send_locked(
        &self,
        msg: &ToRuntime,
        fds: &[BorrowedFd<'_>],
        wait: Duration,
    ) -> Result<(), LinkError> {
        let r = match &self.carrier {
            Carrier::Socket(sock) if wait == SEND_TIMEOUT => frame::send(sock, msg, fds),
            Carrier::Socket(sock) => {
                // The lock is held: the timeout is this send's alone.
                let r = sock
                    .set_write_timeout(Some(wait))
                    .map_err(LinkError::Io)
                    .and_then(|()| frame::send(sock, msg, fds));
                let _ = sock.set_write_timeout(Some(SEND_TIMEOUT));
                r
            }
            Carrier::Rings(end) => send_ring(end, msg, fds, wait),
        };
        if let Err(e) = &r {
            if !matches!(e, LinkError::Protocol(_)) {
                self.close(&format!("sending failed: {e}"));
            }
        }
        r
    }

    /// Send a message no thread may wait long for (an answer to a request
    /// any runtime can make): a runtime that does not take it within
    /// [`BRIEF_SEND`] does not read its link, which is closed.
    pub fn send_brief(&self, msg: &ToRuntime) -> Result<(), LinkError> {
        let deadline = Instant::now() + BRIEF_SEND;
        let _w = loop {
            if self.is_closed() {
                return Err(LinkError::Closed);
            }
            match self.write.try_lock() {
                Ok(g) => break g,
                Err(std::sync::TryLockError::Poisoned(p)) => break p.into_inner(),
                Err(std::sync::TryLockError::WouldBlock) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err(std::sync::TryLockError::WouldBlock) => {
                    self.close("another send to it is stuck");
                    return Err(LinkError::Timeout("the link to take a message".into()));
                }
            }
        };
        self.send_locked(msg, &[], BRIEF_SEND)
    }

    /// Send a request built around a fresh request number and wait up to
    /// `timeout` for its acknowledgement (an NVMe status field, 0 = done).
    pub fn request(
        &self,
        what: &str,
        build: impl FnOnce(u64) -> ToRuntime,
        fds: &[BorrowedFd<'_>],
        timeout: Duration,
    ) -> Result<u16, LinkError> {
        let req = self.next_req.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = sync_channel(1);
        lock(&self.pending).insert(req, tx);
        if let Err(e) = self.send(&build(req), fds) {
            lock(&self.pending).remove(&req);
            return Err(e);
        }
        let r = match rx.recv_timeout(timeout) {
            Ok(r) => r,
            Err(_) => Err(LinkError::Timeout(format!(
                "the runtime to acknowledge {what}"
            ))),
        };
        lock(&self.pending).remove(&req);
        r
    }

    /// An acknowledgement arrived; false if nobody waits for it.
    pub fn acked(&self, req: u64, status: u16) -> bool {
        match lock(&self.pending).remove(&req) {
            Some(tx) => tx.send(Ok(status)).is_ok(),
            None => false,
        }
    }

    /// Close the link (both directions): the reader sees the end, every
    /// waiting request fails.
    pub fn close(&self, why: &str) {
        if !self.closed.swap(true, Ordering::AcqRel) {
            tracing::info!(link = self.id, runtime = %self.describe(), "link closed: {why}");
        }
        self.shutdown_carrier();
        for (_, tx) in lock(&self.pending).drain() {
            let _ = tx.send(Err(LinkError::Closed));
        }
    }

    fn shutdown_carrier(&self) {
        match &self.carrier {
            Carrier::Socket(sock) => {
                let _ = sock.shutdown(std::net::Shutdown::Both);
            }
            Carrier::Rings(end) => end.kick(),
        }
    }

    /// The shared-memory end, for a runtime on an SoC.
    pub fn rings(&self) -> Option<&Arc<RingEnd>> {
        match &self.carrier {
            Carrier::Rings(end) => Some(end),
            Carrier::Socket(_) => None,
        }
    }

    /// After Hello: reads block for as long as it takes.
    pub fn no_read_timeout(&self) -> io::Result<()> {
        match &self.carrier {
            Carrier::Socket(sock) => sock.set_read_timeout(None),
            Carrier::Rings(_) => Ok(()),
        }
    }

    /// Whether the runtime reaches the shared memory through a link
    /// function's windows (no descriptors over the link).
    pub fn windows(&self) -> bool {
        matches!(self.carrier, Carrier::Rings(_))
    }

    /// Receive one message (blocking), for the link's reader.
    pub fn recv(&self) -> Result<ToHost, LinkError> {
        match &self.carrier {
            Carrier::Socket(sock) => frame::recv::<ToHost>(sock).map(|(m, _)| m),
            Carrier::Rings(end) => recv_ring(end, || self.is_closed()),
        }
    }

    /// Fence a runtime that broke the protocol or stopped answering: close
    /// the link and kill its process (SIGKILL through the pidfd), so that
    /// it cannot write into guest memory after we give that memory back.
    pub fn kill(&self, why: &str) {
        self.close(why);
        if let Peer::Process { pid, pidfd } = &self.peer {
            if self.killed.swap(true, Ordering::AcqRel) {
                return;
            }
            tracing::error!(
                link = self.id,
                pid,
                "fencing the runtime: {why}; killing it"
            );
            if let Some(fd) = pidfd {
                // SAFETY: pidfd_send_signal with a pidfd we own and no siginfo.
                unsafe {
                    libc::syscall(
                        libc::SYS_pidfd_send_signal,
                        fd.as_raw_fd(),
                        libc::SIGKILL,
                        std::ptr::null::<libc::siginfo_t>(),
                        0,
                    )
                };
            }
        }
    }

    /// Whether the runtime can no longer touch guest memory: its link is
    /// closed and (for a process) the process has exited, all threads
    /// included. Waits up to `wait`.
    pub fn fenced(&self, wait: Duration) -> bool {
        if !self.is_closed() {
            return false;
        }
        match &self.peer {
            Peer::InProcess => true,
            Peer::Soc { .. } => {
                let end = self.rings();
                let deadline = Instant::now() + wait;
                loop {
                    if end.is_none_or(|e| e.superseded()) {
                        return true;
                    }
                    if Instant::now() >= deadline {
                        return false;
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
            // Without a pidfd the process was gone when it connected... or
            // we could not tell: only its disappearance from /proc says.
            Peer::Process { pid, pidfd: None } => {
                let deadline = Instant::now() + wait;
                loop {
                    if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
                        return true;
                    }
                    if Instant::now() >= deadline {
                        return false;
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
            Peer::Process {
                pidfd: Some(fd), ..
            } => {
                let mut p = libc::pollfd {
                    fd: fd.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                };
                let ms = i32::try_from(wait.as_millis()).unwrap_or(i32::MAX);
                // SAFETY: one valid pollfd.
                let r = unsafe { libc::poll(&mut p, 1, ms) };
                r > 0
            }
        }
    }
}

impl Drop for RuntimeLink {
    fn drop(&mut self) {
        self.shutdown_carrier();
    }
}

/// How long a runtime on an SoC may stay silent (no heartbeat) before its
/// link counts as lost.
pub const HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(2);

/// Send on the rings, waiting at most `wait` for room.
fn send_ring(
    end: &RingEnd,
    msg: &ToRuntime,
    fds: &[BorrowedFd<'_>],
    wait: Duration,
) -> Result<(), LinkError> {
    if !fds.is_empty() {
        return Err(LinkError::Protocol(
            "descriptors cannot reach a runtime on an SoC".into(),
        ));
    }
    let deadline = Instant::now() + wait;
    loop {
        match end.rings.send(msg) {
            Err(LinkError::Timeout(_)) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(1));
            }
            r => return r,
        }
    }
}

/// The next message from a runtime on an SoC: waits for kicks (polling
/// now and then too: a kick may come before we wait); a heartbeat that
/// stops moving for [`HEARTBEAT_TIMEOUT`] ends the link.
fn recv_ring(end: &RingEnd, closed: impl Fn() -> bool) -> Result<ToHost, LinkError> {
    let mut kicks = 0;
    let mut beat = end.rings.heartbeat();
    let mut beat_at = Instant::now();
    loop {
        if closed() || end.superseded() {
            return Err(LinkError::Closed);
        }
        if let Some(m) = end.rings.recv::<ToHost>()? {
            return Ok(m);
        }
        let now_beat = end.rings.heartbeat();
        if now_beat != beat {
            beat = now_beat;
            beat_at = Instant::now();
        } else if beat_at.elapsed() > HEARTBEAT_TIMEOUT {
            return Err(LinkError::Timeout(
                "a heartbeat from the SoC's runtime".into(),
            ));
        }
        kicks = end.wait(kicks, Duration::from_millis(20));
    }
}
