//! Framing of link messages on a Unix stream socket: a 16-byte header
//! (`magic`, body length, descriptor count), the JSON body, and the file
//! descriptors as `SCM_RIGHTS` with the header's first byte.
//!
//! A frame that breaks these rules (bad magic, a body over [`MAX_BODY`],
//! more than [`MAX_FDS`] descriptors, descriptors other than announced, a
//! body that is not a message, a message that expects another number of
//! descriptors) is a protocol violation: the receiver closes the link. No
//! input can make it allocate more than `MAX_BODY` or panic.

use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;

use serde::de::DeserializeOwned;
use serde::Serialize;
use vmm_sys_util::sock_ctrl_msg::ScmSocket;
use zerocopy::little_endian::U32;
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// Largest message body.
pub const MAX_BODY: usize = 1 << 20;
/// Most descriptors with one message.
pub const MAX_FDS: usize = 16;
/// "LKL1".
const MAGIC: u32 = u32::from_le_bytes(*b"LKL1");

#[derive(FromBytes, IntoBytes, Immutable, KnownLayout, Clone, Copy, Debug)]
#[repr(C)]
struct FrameHeader {
    magic: U32,
    len: U32,
    nfds: U32,
    rsvd: U32,
}
const HEADER: usize = std::mem::size_of::<FrameHeader>();
const _: () = assert!(HEADER == 16);

/// Errors of a link connection.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("link closed by the peer")]
    Closed,
    #[error("link i/o")]
    Io(#[source] io::Error),
    #[error("protocol violation: {0}")]
    Protocol(String),
    #[error("timed out waiting for {0}")]
    Timeout(String),
}

impl From<io::Error> for LinkError {
    fn from(e: io::Error) -> LinkError {
        match e.kind() {
            io::ErrorKind::UnexpectedEof
            | io::ErrorKind::BrokenPipe
            | io::ErrorKind::ConnectionReset => LinkError::Closed,
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => {
                LinkError::Timeout("the peer to take a message".into())
            }
            _ => LinkError::Io(e),
        }
    }
}

/// A message type: how many descriptors it carries.
pub trait Message: Serialize + DeserializeOwned {
    fn fd_count(&self) -> usize;
}

impl Message for crate::proto::ToHost {
    fn fd_count(&self) -> usize {
        crate::proto::ToHost::fd_count(self)
    }
}

impl Message for crate::proto::ToRuntime {
    fn fd_count(&self) -> usize {
        crate::proto::ToRuntime::fd_count(self)
    }
}

/// Send one message with its descriptors.
pub fn send<M: Message>(
    sock: &UnixStream,
    msg: &M,
    fds: &[BorrowedFd<'_>],
) -> Result<(), LinkError> {
    if fds.len() != msg.fd_count() || fds.len() > MAX_FDS {
        return Err(LinkError::Protocol(format!(
            "message needs {} descriptors, {} given",
            msg.fd_count(),
            fds.len()
        )));
    }
    let body = serde_json::to_vec(msg).map_err(|e| LinkError::Protocol(e.to_string()))?;
    if body.len() > MAX_BODY {
        return Err(LinkError::Protocol(format!(
            "message of {} bytes",
            body.len()
        )));
    }
    let hdr = FrameHeader {
        magic: MAGIC.into(),
        len: u32::try_from(body.len()).unwrap_or(u32::MAX).into(),
        nfds: u32::try_from(fds.len()).unwrap_or(0).into(),
        rsvd: 0.into(),
    };
    let raw: Vec<RawFd> = fds.iter().map(|f| f.as_raw_fd()).collect();
    let total = HEADER + body.len();
    let sent = loop {
        match sock.send_with_fds(&[hdr.as_bytes(), &body[..]], &raw) {
            Ok(n) => break n,
            Err(e) if e.errno() == libc::EINTR => continue,
            Err(e) => return Err(io::Error::from_raw_os_error(e.errno()).into()),
        }
    };
    if sent < total {
        // The descriptors went with the first byte; the rest is plain data.
        let mut rest: Vec<u8> = Vec::with_capacity(total - sent);
        rest.extend_from_slice(&hdr.as_bytes()[sent.min(HEADER)..]);
        rest.extend_from_slice(&body[sent.saturating_sub(HEADER)..]);
        let mut w = sock;
        w.write_all(&rest)?;
    }
    Ok(())
}

/// Write raw bytes (no descriptors): for tests that build bad frames.
pub fn send_raw(sock: &UnixStream, bytes: &[u8]) -> Result<(), LinkError> {
    let mut w = sock;
    w.write_all(bytes)?;
    Ok(())
}

/// Receive one message and its descriptors (blocking).
pub fn recv<M: Message>(sock: &UnixStream) -> Result<(M, Vec<OwnedFd>), LinkError> {
    let mut hdr_buf = [0u8; HEADER];
    let mut raw = [-1 as RawFd; MAX_FDS];
    let mut iov = [libc::iovec {
        iov_base: hdr_buf.as_mut_ptr().cast(),
        iov_len: HEADER,
    }];
    let (n, nfds) = loop {
        // SAFETY: the iovec points at hdr_buf, which we own and which may
        // hold any bytes.
        match unsafe { sock.recv_with_fds(&mut iov, &mut raw) } {
            Ok(r) => break r,
            Err(e) if e.errno() == libc::EINTR => continue,
            Err(e) if e.errno() == libc::ENOBUFS => {
                return Err(LinkError::Protocol(format!(
                    "more than {MAX_FDS} descriptors with one message"
                )))
            }
            Err(e) => return Err(io::Error::from_raw_os_error(e.errno()).into()),
        }
    };
    let fds: Vec<OwnedFd> = raw[..nfds]
        .iter()
        .map(|&fd| {
            // SAFETY: recvmsg gave us these descriptors; nobody else owns them.
            let fd = unsafe { OwnedFd::from_raw_fd(fd) };
            // SAFETY: fcntl on a descriptor we own.
            unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFD, libc::FD_CLOEXEC) };
            fd
        })
        .collect();
    if n == 0 {
        return Err(LinkError::Closed);
    }
    let mut r = sock;
    if n < HEADER {
        r.read_exact(&mut hdr_buf[n..])?;
    }
    let hdr =
        FrameHeader::read_from_bytes(&hdr_buf).map_err(|_| LinkError::Protocol("header".into()))?;
    if hdr.magic.get() != MAGIC {
        return Err(LinkError::Protocol(format!(
            "bad frame magic {:#010x}",
            hdr.magic.get()
        )));
    }
    let len = hdr.len.get() as usize;
    if len > MAX_BODY {
        return Err(LinkError::Protocol(format!(
            "message of {len} bytes (at most {MAX_BODY})"
        )));
    }
    if hdr.nfds.get() as usize != fds.len() {
        return Err(LinkError::Protocol(format!(
            "{} descriptors announced, {} received",
            hdr.nfds.get(),
            fds.len()
        )));
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body)?;
    let msg: M = serde_json::from_slice(&body).map_err(|e| {
        LinkError::Protocol(format!(
            "not a message ({e}): {}",
            String::from_utf8_lossy(&body[..body.len().min(120)])
        ))
    })?;
    if msg.fd_count() != fds.len() {
        return Err(LinkError::Protocol(format!(
            "message expects {} descriptors, {} came",
            msg.fd_count(),
            fds.len()
        )));
    }
    Ok((msg, fds))
}

/// The raw 16-byte header of a frame, for tests that build bad frames.
pub fn raw_header(magic: u32, len: u32, nfds: u32) -> [u8; 16] {
    let h = FrameHeader {
        magic: magic.into(),
        len: len.into(),
        nfds: nfds.into(),
        rsvd: 0.into(),
    };
    let mut out = [0u8; 16];
    out.copy_from_slice(h.as_bytes());
    out
}

/// The frame magic, for tests.
pub const FRAME_MAGIC: u32 = MAGIC;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{ToHost, ToRuntime};
    use std::os::fd::AsFd;

    #[test]
    fn messages_and_descriptors_round_trip() {
        let (a, b) = UnixStream::pair().unwrap();
        let m = ToRuntime::Map {
            req: 1,
            ctrl: "vm0".into(),
            gpa: 0x1000,
            size: 0x2000,
            file_offset: 0,
            read: true,
            write: true,
            fd: true,
            window: None,
        };
        let f = std::fs::File::open("/dev/null").unwrap();
        send(&a, &m, &[f.as_fd()]).unwrap();
        let (got, fds): (ToRuntime, _) = recv(&b).unwrap();
        assert_eq!(got, m);
        assert_eq!(fds.len(), 1);
        // A message that needs a descriptor cannot be sent without one.
        assert!(matches!(send(&a, &m, &[]), Err(LinkError::Protocol(_))));
    }

    #[test]
    fn bad_frames_are_protocol_violations() {
        for bytes in [
            raw_header(0x1234, 2, 0).to_vec(),
            raw_header(MAGIC, (1 << 20) + 1, 0).to_vec(),
            [&raw_header(MAGIC, 2, 3)[..], b"{}"].concat(),
            [&raw_header(MAGIC, 5, 0)[..], b"hello"].concat(),
            [&raw_header(MAGIC, 17, 0)[..], b"{\"type\":\"nosuch\"}"].concat(),
        ] {
            let (a, b) = UnixStream::pair().unwrap();
            send_raw(&a, &bytes).unwrap();
            let r: Result<(ToHost, _), _> = recv(&b);
            assert!(matches!(r, Err(LinkError::Protocol(_))), "{bytes:?}: {r:?}");
        }
        let (a, b) = UnixStream::pair().unwrap();
        drop(a);
        assert!(matches!(recv::<ToHost>(&b), Err(LinkError::Closed)));
    }
}
