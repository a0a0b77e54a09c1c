//! An in-process harness for coverage-guided fuzzing of the host backend's
//! receive path (feature `fuzzing`; not part of the backend's API).
//!
//! One I/O queue on a connection whose bytes come from the caller: commands
//! are submitted as the runtime submits them (their capsules are queued),
//! and what "the target" sends is parsed by the queue's own receive code
//! (CapsuleResp, R2T answered with H2CData, C2HData into the request's
//! buffers, digests, C2HTermReq). No socket is read or written, no thread
//! is started.

use super::queue::NvmeTcpQueue;
use crate::nvmf::{Info, NvmfError, Session, Transport};
use crate::{BackendQueue, Completion, Features, Geometry, IoKind, IoRequest, SubmitError};
use std::net::TcpStream;
use std::os::fd::{FromRawFd, OwnedFd};

/// Block size of the remote namespace.
pub const BLOCK_SIZE: u32 = 512;
/// Bytes of data buffer the harness owns: requests point into it.
pub const BUFFER: usize = 64 << 10;

/// One queue and the memory its requests read into and write from.
pub struct HostQueue {
    queue: NvmeTcpQueue,
    buf: Vec<u8>,
}

impl HostQueue {
    /// A queue of `depth` commands on a connection with the given digests;
    /// the target accepts `in_capsule` bytes of write data in the capsule.
    pub fn new(
        header_digest: bool,
        data_digest: bool,
        depth: u32,
        in_capsule: u32,
    ) -> Result<HostQueue, NvmfError> {
        let spec =
            crate::nvmf::parse_spec(Transport::Tcp, "127.0.0.1:4420/nqn.2026-11.io.leapio:fuzz")
                .map_err(NvmfError::Protocol)?;
        let info = Info {
            geometry: Geometry {
                block_size: BLOCK_SIZE,
                num_blocks: 1 << 20,
            },
            features: Features {
                volatile_write_cache: true,
                write_zeroes: true,
                deallocate: true,
            },
            in_capsule,
            max_transfer: u32::try_from(BUFFER).unwrap_or(u32::MAX),
            io_queues: 1,
            max_entries: 1024,
            ana_group: None,
        };
        let session =
            Session::for_fuzzing(&spec, info, <super::Tcp as crate::nvmf::Fabric>::open_conn);
        let digests = leapio_nvme::tcp::Digests {
            header: header_digest,
            data: data_digest,
        };
        let sock = unconnected_socket().map_err(|source| NvmfError::Io { source })?;
        Ok(HostQueue {
            queue: NvmeTcpQueue::for_fuzzing(&session, sock, digests, depth.saturating_add(1)),
            buf: vec![0; BUFFER],
        })
    }

    /// Submit a request whose data (if any) is `buf[at..at + len]` split
    /// into pieces of the given lengths (the last piece takes the rest).
    pub fn submit(
        &mut self,
        tag: u64,
        kind: IoKind,
        offset: u64,
        len: u64,
        at: usize,
        pieces: &[usize],
    ) -> Result<(), SubmitError> {
        let data_len = usize::try_from(len).unwrap_or(usize::MAX);
        let mut iov = Vec::new();
        if kind.has_data() {
            let end = at
                .checked_add(data_len)
                .filter(|&e| e <= self.buf.len())
                .ok_or(SubmitError::Invalid("outside the harness's buffer"))?;
            let mut p = at;
            for &n in pieces {
                let n = n.min(end - p);
                if n == 0 {
                    break;
                }
                iov.push(libc::iovec {
                    iov_base: self.buf[p..].as_mut_ptr().cast(),
                    iov_len: n,
                });
                p += n;
            }
            if p < end {
                iov.push(libc::iovec {
                    iov_base: self.buf[p..].as_mut_ptr().cast(),
                    iov_len: end - p,
                });
            }
        }
        let req = IoRequest {
            tag,
            kind,
            offset,
            len,
            iov: &iov,
            owner: 0,
            journal: None,
        };
        // SAFETY: the iovecs point into `self.buf`, which lives as long as
        // the queue (it is dropped after it) and is never reallocated.
        unsafe { self.queue.submit(&req) }
    }

    /// Bytes from the target; an error is what ends the connection.
    pub fn receive(&mut self, bytes: &[u8]) -> Result<(), NvmfError> {
        self.queue.fuzz_receive(bytes)
    }

    /// PDUs the queue has queued for the target since the last call.
    pub fn take_sent(&mut self) -> Vec<u8> {
        self.queue.fuzz_take_sent()
    }

    /// Completions since the last call.
    pub fn take_completions(&mut self) -> Vec<Completion> {
        self.queue.fuzz_take_done()
    }

    /// Requests submitted and not completed.
    pub fn in_flight(&self) -> usize {
        self.queue.in_flight()
    }
}

/// A TCP socket connected to nothing: never read or written here.
fn unconnected_socket() -> std::io::Result<TcpStream> {
    // SAFETY: socket(2) with constant arguments; it returns a new
    // descriptor or -1.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` is a new descriptor that nothing else owns.
    Ok(TcpStream::from(unsafe { OwnedFd::from_raw_fd(fd) }))
}
