//! The few system calls the protocol needs that std does not offer:
//! `recvmsg`/`sendmsg` with `SCM_RIGHTS`, `poll` and `F_DUPFD_CLOEXEC`.
//! All `unsafe` of the vfio-user module lives here, behind safe functions.

use std::io;
use std::mem::{size_of, MaybeUninit};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

/// Linux accepts at most this many fds in one `SCM_RIGHTS` message
/// (`SCM_MAX_FD`); the receive buffer holds that many so that a peer sending
/// too many is seen (and all of them closed) instead of silently truncated.
const SCM_MAX_FD: usize = 253;
/// `SCM_MAX_FD` descriptors in bytes.
const SCM_MAX_FD_BYTES: u32 = 253 * 4;

/// Control-message buffer, aligned for `cmsghdr`. Big enough for
/// `CMSG_SPACE(SCM_MAX_FD * 4)` (1032 bytes on 64-bit Linux) with room to spare.
#[repr(C, align(8))]
struct CmsgBuf([u8; 1280]);

// SAFETY: CMSG_SPACE is a pure arithmetic macro on its argument.
const CMSG_SPACE_MAX: usize = unsafe { libc::CMSG_SPACE(SCM_MAX_FD_BYTES) } as usize;
const _: () = assert!(CMSG_SPACE_MAX <= size_of::<CmsgBuf>());

/// What one `recvmsg` brought.
#[derive(Debug, Default)]
pub struct Received {
    /// Bytes read into the buffer; 0 means end of stream.
    pub len: usize,
    /// File descriptors that came with those bytes (close-on-exec).
    pub fds: Vec<OwnedFd>,
    /// The kernel dropped descriptors for lack of buffer space (`MSG_CTRUNC`).
    pub truncated: bool,
}

/// One `recvmsg(2)` into `buf`, collecting `SCM_RIGHTS` descriptors with
/// `MSG_CMSG_CLOEXEC`. Retries on `EINTR`. `nonblocking` adds `MSG_DONTWAIT`.
pub fn recv_with_fds(
    sock: BorrowedFd<'_>,
    buf: &mut [u8],
    nonblocking: bool,
) -> io::Result<Received> {
    let mut cmsg = CmsgBuf([0; 1280]);
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    let flags = libc::MSG_CMSG_CLOEXEC | if nonblocking { libc::MSG_DONTWAIT } else { 0 };
    loop {
        // SAFETY: msghdr is plain old data; all-zero is a valid empty value.
        let mut msg: libc::msghdr = unsafe { MaybeUninit::zeroed().assume_init() };
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = cmsg.0.as_mut_ptr().cast();
        msg.msg_controllen = CMSG_SPACE_MAX as _;
        // SAFETY: `msg` points at `iov` (which describes `buf`, valid and
        // exclusively borrowed for `buf.len()` bytes) and at `cmsg`, which
        // is at least `msg_controllen` bytes long; both outlive the call.
        let n = unsafe { libc::recvmsg(sock.as_raw_fd(), &mut msg, flags) };
        if n < 0 {
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(err);
        }
        let mut out = Received {
            len: usize::try_from(n).unwrap_or(0),
            fds: Vec::new(),
            truncated: msg.msg_flags & libc::MSG_CTRUNC != 0,
        };
        // SAFETY: `msg` was filled in by a successful recvmsg; the CMSG_*
        // macros only walk inside `msg_control[..msg_controllen]`.
        let mut c = unsafe { libc::CMSG_FIRSTHDR(&msg) };
        while !c.is_null() {
            // SAFETY: `c` is non-null and was returned by CMSG_FIRSTHDR or
            // CMSG_NXTHDR, so it points at a complete cmsghdr inside `cmsg`.
            let hdr = unsafe { &*c };
            if hdr.cmsg_level == libc::SOL_SOCKET && hdr.cmsg_type == libc::SCM_RIGHTS {
                // SAFETY: as above; CMSG_DATA points just past the header.
                let data = unsafe { libc::CMSG_DATA(c) };
                // SAFETY: CMSG_LEN(0) is pure arithmetic.
                let header_len = unsafe { libc::CMSG_LEN(0) } as usize;
                let payload = (hdr.cmsg_len as usize).saturating_sub(header_len);
                let n_fds = payload / size_of::<RawFd>();
                for i in 0..n_fds {
                    // SAFETY: the kernel wrote `payload` bytes of RawFd values
                    // at `data` (possibly unaligned, hence read_unaligned).
                    let fd = unsafe { data.cast::<RawFd>().add(i).read_unaligned() };
                    if fd >= 0 {
                        // SAFETY: SCM_RIGHTS installed `fd` in our table just
                        // now; nobody else owns it.
                        out.fds.push(unsafe { OwnedFd::from_raw_fd(fd) });
                    }
                }
            }
            // SAFETY: `msg` and `c` are valid as above.
            c = unsafe { libc::CMSG_NXTHDR(&msg, c) };
        }
        return Ok(out);
    }
}

/// One `sendmsg(2)` of `buf` with `fds` as `SCM_RIGHTS` (if any), never
/// raising `SIGPIPE`. Retries on `EINTR`. Returns the bytes sent.
pub fn send_with_fds(
    sock: BorrowedFd<'_>,
    buf: &[u8],
    fds: &[BorrowedFd<'_>],
    nonblocking: bool,
) -> io::Result<usize> {
    if fds.len() > SCM_MAX_FD {
        return Err(io::Error::from_raw_os_error(libc::E2BIG));
    }
    let mut cmsg = CmsgBuf([0; 1280]);
    let mut iov = libc::iovec {
        iov_base: buf.as_ptr().cast_mut().cast(),
        iov_len: buf.len(),
    };
    let flags = libc::MSG_NOSIGNAL | if nonblocking { libc::MSG_DONTWAIT } else { 0 };
    loop {
        // SAFETY: msghdr is plain old data; all-zero is a valid empty value.
        let mut msg: libc::msghdr = unsafe { MaybeUninit::zeroed().assume_init() };
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        if !fds.is_empty() {
            let data_len = fds.len() * size_of::<RawFd>();
            // Bounded by SCM_MAX_FD_BYTES above.
            let data_len32 = u32::try_from(data_len).unwrap_or(SCM_MAX_FD_BYTES);
            msg.msg_control = cmsg.0.as_mut_ptr().cast();
            // SAFETY: pure arithmetic; data_len <= SCM_MAX_FD * 4.
            msg.msg_controllen = unsafe { libc::CMSG_SPACE(data_len32) } as _;
            // SAFETY: msg_control points at `cmsg`, which is larger than
            // msg_controllen, so the first header is inside it.
            let c = unsafe { libc::CMSG_FIRSTHDR(&msg) };
            // SAFETY: `c` is non-null (msg_controllen >= one cmsghdr) and
            // points into `cmsg`, exclusively ours; CMSG_DATA is within
            // CMSG_SPACE(data_len) and we write exactly `data_len` bytes.
            unsafe {
                (*c).cmsg_level = libc::SOL_SOCKET;
                (*c).cmsg_type = libc::SCM_RIGHTS;
                (*c).cmsg_len = libc::CMSG_LEN(data_len32) as _;
                let data = libc::CMSG_DATA(c).cast::<RawFd>();
                for (i, fd) in fds.iter().enumerate() {
                    data.add(i).write_unaligned(fd.as_raw_fd());
                }
            }
        }
        // SAFETY: `msg` points at `iov` (describing `buf`, valid for reads of
        // `buf.len()` bytes) and at `cmsg` as prepared above; the kernel does
        // not write through iov for sendmsg.
        let n = unsafe { libc::sendmsg(sock.as_raw_fd(), &msg, flags) };
        if n < 0 {
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(err);
        }
        return Ok(usize::try_from(n).unwrap_or(0));
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
