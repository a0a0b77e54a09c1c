//! The few system calls the protocol needs that std does not offer:
//! messages with `SCM_RIGHTS` descriptors (vmm-sys-util's `ScmSocket`,
//! as the link's), `poll` and `F_DUPFD_CLOEXEC`. All `unsafe` of the
//! vfio-user module lives here, behind safe functions.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::time::Duration;
use vmm_sys_util::sock_ctrl_msg::ScmSocket;

/// Linux accepts at most this many fds in one `SCM_RIGHTS` message
/// (`SCM_MAX_FD`): a receive takes that many, so it always takes all.
const SCM_MAX_FD: usize = 253;

/// What one receive brought.
#[derive(Debug, Default)]
pub struct Received {
    /// Bytes read into the buffer; 0 means end of stream.
    pub len: usize,
    /// File descriptors that came with those bytes (close-on-exec).
    pub fds: Vec<OwnedFd>,
}

fn errno(e: vmm_sys_util::errno::Error) -> io::Error {
    io::Error::from_raw_os_error(e.errno())
}

/// One `recvmsg(2)` into `buf`, with the `SCM_RIGHTS` descriptors that
/// came with the bytes (made close-on-exec). Retries on `EINTR`; blocks or
/// not as the socket does.
pub fn recv_with_fds(sock: &UnixStream, buf: &mut [u8]) -> io::Result<Received> {
    let mut iov = [libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    }];
    let mut raw = [-1 as RawFd; SCM_MAX_FD];
    let (len, n) = loop {
        // SAFETY: the iovec describes `buf`, exclusively borrowed for its
        // whole length, which may hold any bytes.
        match unsafe { sock.recv_with_fds(&mut iov, &mut raw) } {
            Ok(r) => break r,
            Err(e) if e.errno() == libc::EINTR => continue,
            Err(e) => return Err(errno(e)),
        }
    };
    let fds = raw[..n]
        .iter()
        .map(|&fd| {
            // SAFETY: recvmsg installed `fd` in our table just now; nobody
            // else owns it.
            let fd = unsafe { OwnedFd::from_raw_fd(fd) };
            // SAFETY: fcntl on a descriptor we own, no memory involved.
            unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFD, libc::FD_CLOEXEC) };
            fd
        })
        .collect();
    Ok(Received { len, fds })
}

/// One `sendmsg(2)` of `buf` with `fds` as `SCM_RIGHTS` (if any), never
/// raising `SIGPIPE`. Retries on `EINTR`; blocks or not as the socket does.
/// Returns the bytes sent.
pub fn send_with_fds(sock: &UnixStream, buf: &[u8], fds: &[BorrowedFd<'_>]) -> io::Result<usize> {
    if fds.len() > SCM_MAX_FD {
        return Err(io::Error::from_raw_os_error(libc::E2BIG));
    }
    let raw: Vec<RawFd> = fds.iter().map(AsRawFd::as_raw_fd).collect();
    loop {
        match sock.send_with_fds(&[buf], &raw) {
            Ok(n) => return Ok(n),
            Err(e) if e.errno() == libc::EINTR => continue,
            Err(e) => return Err(errno(e)),
        }
    }
}

/// Wait until `fd` is readable (`write == false`) or writable, or `timeout`
/// passes. Returns true when ready (or on error/hang-up, which the next
/// read/write reports). `EINTR` counts as a timeout.
pub fn poll_fd(fd: BorrowedFd<'_>, write: bool, timeout: Duration) -> io::Result<bool> {
    let mut pfd = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: if write { libc::POLLOUT } else { libc::POLLIN },
        revents: 0,
    };
    let ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
    // Round sub-millisecond waits up so that a near deadline is not a busy loop.
    let ms = if ms == 0 && !timeout.is_zero() { 1 } else { ms };
    // SAFETY: `pfd` is a valid pollfd array of length 1 for the call.
    let n = unsafe { libc::poll(&mut pfd, 1, ms) };
    if n < 0 {
        let err = io::Error::last_os_error();
        if err.kind() == io::ErrorKind::Interrupted {
            return Ok(false);
        }
        return Err(err);
    }
    Ok(n > 0)
}

/// A close-on-exec duplicate of `fd`.
pub fn dup_cloexec(fd: RawFd) -> io::Result<OwnedFd> {
    // SAFETY: F_DUPFD_CLOEXEC neither reads nor writes memory; an invalid
    // `fd` makes fcntl fail with EBADF, which we report.
    let new = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 0) };
    if new < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fcntl just created `new`; we are its only owner.
    Ok(unsafe { OwnedFd::from_raw_fd(new) })
}

/// Check that `fd` is an eventfd and make its writes non-blocking: an
/// interrupt is a write to it from a poller, and a poller must never block
/// on anything a client controls (a pipe nobody drains, an eventfd at its
/// maximum count). QEMU creates its eventfds non-blocking already; the flag
/// belongs to the open file description, which it shares with us.
pub fn require_eventfd(fd: BorrowedFd<'_>) -> io::Result<()> {
    let link = std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd()))?;
    if link.as_os_str() != "anon_inode:[eventfd]" {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("not an eventfd: {}", link.display()),
        ));
    }
    // SAFETY: F_GETFL/F_SETFL only read and set the descriptor's status
    // flags; `fd` is borrowed, so it is open.
    let flags = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFL) };
    if flags < 0 {
        return Err(io::Error::last_os_error());
    }
    if flags & libc::O_NONBLOCK == 0 {
        // SAFETY: as above.
        if unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}
