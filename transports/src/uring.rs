//! The io_uring wrapper: every SQE the file backend issues is built here.
//!
//! Each SQE carries a `user_data` the caller chooses (the slot index).
//! Pushing never blocks; [`Ring::submit`] hands everything pushed so far to
//! the kernel with one `io_uring_enter`.

use std::io;
use std::os::fd::RawFd;
use std::time::Duration;

use io_uring::{opcode, squeue, types, IoUring, Probe};

/// The SQ had no room (cannot happen while the ring has at least as many SQ
/// entries as the caller has requests in flight).
#[derive(Debug)]
pub(crate) struct SqFull;

pub(crate) struct Ring {
    ring: IoUring,
    /// SQEs pushed but not yet accepted by the kernel.
    unsubmitted: bool,
    ext_arg: bool,
    fallocate: bool,
}

impl Ring {
    /// A ring with at least `entries` SQ entries (and twice as many CQ entries,
    /// so completions of `entries` requests in flight never overflow).
    pub(crate) fn new(entries: u32) -> io::Result<Self> {
        let entries = entries.max(1).next_power_of_two();
        // Cooperative task running: completions are not pushed to us with an
        // interrupt (IPI) while the poller spins in user space; the kernel
        // flags them and our next io_uring_enter runs them in a batch.
        // Kernels before 5.19 refuse the flags: fall back to a plain ring.
        let ring = match IoUring::builder()
            .setup_coop_taskrun()
            .setup_taskrun_flag()
            .build(entries)
        {
            Ok(r) => r,
            Err(_) => IoUring::new(entries)?,
        };
        let mut probe = Probe::new();
        let fallocate = match ring.submitter().register_probe(&mut probe) {
            Ok(()) => probe.is_supported(opcode::Fallocate::CODE),
            // No probe support (< 5.6) means no IORING_OP_FALLOCATE either.
            Err(_) => false,
        };
        let ext_arg = ring.params().is_feature_ext_arg();
        Ok(Ring {
            ring,
            unsubmitted: false,
            ext_arg,
            fallocate,
        })
    }

    /// Whether the kernel supports IORING_OP_FALLOCATE.
    pub(crate) fn has_fallocate(&self) -> bool {
        self.fallocate
    }

    fn push(&mut self, entry: squeue::Entry) -> Result<(), SqFull> {
        // SAFETY: callers of this private helper guarantee that everything the
        // entry points to (iovec arrays, buffers, fds) stays valid until its
        // completion is reaped; see the `unsafe fn`s below. Entries without
        // pointers (fsync, fallocate, nop) only name an fd, and a stale fd
        // yields an error completion, never memory unsafety.
        unsafe { self.ring.submission().push(&entry) }.map_err(|_| SqFull)?;
        self.unsubmitted = true;
        Ok(())
    }

    /// Queue a `preadv` of `iovcnt` iovecs starting at `iov`.
    ///
    /// # Safety
    /// The iovec array and every buffer it names must stay valid and writable
    /// until the completion carrying `user_data` has been reaped.
    pub(crate) unsafe fn push_readv(
        &mut self,
        fd: RawFd,
        iov: *const libc::iovec,
        iovcnt: u32,
        offset: u64,
        user_data: u64,
    ) -> Result<(), SqFull> {
        let entry = opcode::Readv::new(types::Fd(fd), iov, iovcnt)
            .offset(offset)
            .build()
            .user_data(user_data);
        self.push(entry)
    }

    /// Queue a `pwritev2(..., rw_flags)`.
    ///
    /// # Safety
    /// The iovec array and every buffer it names must stay valid until the
    /// completion carrying `user_data` has been reaped.
    pub(crate) unsafe fn push_writev(
        &mut self,
        fd: RawFd,
        iov: *const libc::iovec,
        iovcnt: u32,
        offset: u64,
        rw_flags: i32,
        user_data: u64,
    ) -> Result<(), SqFull> {
        let entry = opcode::Writev::new(types::Fd(fd), iov, iovcnt)
            .offset(offset)
            .rw_flags(rw_flags)
            .build()
            .user_data(user_data);
        self.push(entry)
    }

    /// Queue an `fdatasync`.
    pub(crate) fn push_fdatasync(&mut self, fd: RawFd, user_data: u64) -> Result<(), SqFull> {
        let entry = opcode::Fsync::new(types::Fd(fd))
            .flags(types::FsyncFlags::DATASYNC)
            .build()
            .user_data(user_data);
        self.push(entry)
    }

    /// Queue an `fallocate(fd, mode, offset, len)` (needs [`has_fallocate`](Self::has_fallocate)).
    pub(crate) fn push_fallocate(
        &mut self,
        fd: RawFd,
        mode: i32,
        offset: u64,
        len: u64,
        user_data: u64,
    ) -> Result<(), SqFull> {
        let entry = opcode::Fallocate::new(types::Fd(fd), len)
            .offset(offset)
            .mode(mode)
            .build()
            .user_data(user_data);
        self.push(entry)
    }

    /// Queue a no-op that completes with 0.
    pub(crate) fn push_nop(&mut self, user_data: u64) -> Result<(), SqFull> {
        self.push(opcode::Nop::new().build().user_data(user_data))
    }

    /// Hand everything pushed to the kernel. Transient refusals (EAGAIN,
    /// EBUSY) leave the entries queued for the next call and report `Ok`.
    pub(crate) fn submit(&mut self) -> io::Result<()> {
        if !self.unsubmitted && !self.ring.submission().taskrun() {
            return Ok(());
        }
        loop {
            match self.ring.submit() {
                Ok(_) => break,
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
                Err(e) if matches!(e.raw_os_error(), Some(libc::EAGAIN | libc::EBUSY)) => {
                    return Ok(())
                }
                Err(e) => return Err(e),
            }
        }
        self.unsubmitted = !self.ring.submission().is_empty();
        Ok(())
    }

    /// Submit pending entries and wait up to `timeout` for at least one
    /// completion (returns early on signals; callers loop).
    pub(crate) fn wait(&mut self, timeout: Duration) -> io::Result<()> {
        if !self.ext_arg {
            self.submit()?;
            std::thread::sleep(timeout.min(Duration::from_millis(1)));
            return Ok(());
        }
        let ts = types::Timespec::from(timeout);
        let args = types::SubmitArgs::new().timespec(&ts);
        match self.ring.submitter().submit_with_args(1, &args) {
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::ETIME | libc::EINTR | libc::EAGAIN | libc::EBUSY)
                ) => {}
            Err(e) => return Err(e),
        }
        self.unsubmitted = !self.ring.submission().is_empty();
        Ok(())
    }

    /// Append every available completion to `out` as `(user_data, result)`
    /// (`result` is the syscall's return value or a negated errno).
    pub(crate) fn reap_into(&mut self, out: &mut Vec<(u64, i32)>) {
        if self.ring.submission().taskrun() {
            // Completions are waiting as task work: one enter runs them.
            if let Err(e) = self.submit() {
                tracing::error!(error = %e, "io_uring enter failed");
            }
        }
        out.extend(
            self.ring
                .completion()
                .map(|cqe| (cqe.user_data(), cqe.result())),
        );
    }

    /// SQEs pushed but not yet handed to the kernel.
    pub(crate) fn pending(&mut self) -> usize {
        self.ring.submission().len()
    }

    pub(crate) fn has_unsubmitted(&self) -> bool {
        self.unsubmitted
    }
}
