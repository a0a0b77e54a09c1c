//! The io_uring wrapper: every SQE the file backend issues is built here.
//!
//! Each SQE carries a `user_data` the caller chooses (the slot index).
//! Pushing never blocks; [`Ring::submit`] hands everything pushed so far to
//! the kernel with one `io_uring_enter`.

use std::io;
use std::os::fd::RawFd;
use std::sync::OnceLock;
use std::time::Duration;

use io_uring::{opcode, squeue, types, IoUring, Probe};

/// Where io_uring worker threads may run (see [`keep_workers_off`]); None:
/// where the kernel puts them.
static WORKER_CPUS: OnceLock<Option<libc::cpu_set_t>> = OnceLock::new();

/// Keep io_uring's worker threads off `cpus` (the CPUs socp's pollers are
/// pinned to), for every ring created from now on. The kernel runs a
/// request that cannot start without blocking (a buffered write that must
/// allocate, a file without non-blocking support) on a worker thread that
/// by default may only run where the submitting poller may: on its pinned
/// CPU, where it waits for the spinning poller's time slice to run out.
/// Set once per process; later calls are ignored.
pub fn keep_workers_off(cpus: &[usize]) {
    let _ = WORKER_CPUS.set(cpus_except(cpus));
}

/// The CPUs the process may run on minus `reserved`, or None when nothing
/// is reserved or nothing would be left.
fn cpus_except(reserved: &[usize]) -> Option<libc::cpu_set_t> {
    if reserved.is_empty() {
        return None;
    }
    // SAFETY: cpu_set_t is plain data; zeroed is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // The process's (main thread's) affinity: pollers pin themselves, the
    // process as a whole keeps what it was started with.
    // SAFETY: a valid out-pointer of the size we pass.
    let r = unsafe {
        libc::sched_getaffinity(
            libc::getpid(),
            std::mem::size_of::<libc::cpu_set_t>(),
            &mut set,
        )
    };
    if r != 0 {
        return None;
    }
    for &cpu in reserved {
        if cpu < libc::CPU_SETSIZE as usize {
            // SAFETY: in range, checked above.
            unsafe { libc::CPU_CLR(cpu, &mut set) };
        }
    }
    // SAFETY: reading a valid set.
    (unsafe { libc::CPU_COUNT(&set) } > 0).then_some(set)
}

/// How an SQE names its file.
#[derive(Clone, Copy)]
enum File {
    Raw(RawFd),
    Fixed(u32),
}

/// Build an SQE with `$op::new(file, args...)` for either kind of file.
macro_rules! with_file {
    ($file:expr, $build:expr) => {
        match $file {
            File::Raw(fd) => $build(types::Fd(fd)),
            File::Fixed(i) => $build(types::Fixed(i)),
        }
    };
}

/// The SQ had no room (cannot happen while the ring has at least as many SQ
/// entries as the caller has requests in flight).
#[derive(Debug)]
pub(crate) struct SqFull;

pub(crate) struct Ring {
    ring: IoUring,
    /// Files registered with the ring (`files[i]` is fixed file `i`): SQEs
    /// naming them skip the per-request file lookup and reference count.
    files: Vec<RawFd>,
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
        if let Some(set) = WORKER_CPUS.get().copied().flatten() {
            // Kernels before 5.14 lack it: workers then stay where they are.
            if let Err(e) = ring.submitter().register_iowq_aff(&set) {
                tracing::debug!(error = %e, "io_uring worker affinity not set");
            }
        }
        Ok(Ring {
            ring,
            files: Vec::new(),
            unsubmitted: false,
            ext_arg,
            fallocate,
        })
    }

    /// Register `fds` as the ring's fixed files; SQEs for them then name
    /// the registered slot. A kernel that refuses keeps the plain fds.
    pub(crate) fn register_files(&mut self, fds: &[RawFd]) {
        match self.ring.submitter().register_files(fds) {
            Ok(()) => self.files = fds.to_vec(),
            Err(e) => tracing::debug!(error = %e, "io_uring fixed files not registered"),
        }
    }

    #[cfg(test)]
    pub(crate) fn registered_files(&self) -> usize {
        self.files.len()
    }

    fn file(&self, fd: RawFd) -> File {
        match self.files.iter().position(|&f| f == fd) {
            Some(i) => File::Fixed(u32::try_from(i).unwrap_or(u32::MAX)),
            None => File::Raw(fd),
        }
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
        let entry = with_file!(self.file(fd), |f| opcode::Readv::new(f, iov, iovcnt)
            .offset(offset)
            .build())
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
        let entry = with_file!(self.file(fd), |f| opcode::Writev::new(f, iov, iovcnt)
            .offset(offset)
            .rw_flags(rw_flags)
            .build())
        .user_data(user_data);
        self.push(entry)
    }

    /// Queue an `fdatasync`.
    pub(crate) fn push_fdatasync(&mut self, fd: RawFd, user_data: u64) -> Result<(), SqFull> {
        let entry = with_file!(self.file(fd), |f| opcode::Fsync::new(f)
            .flags(types::FsyncFlags::DATASYNC)
            .build())
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
        let entry = with_file!(self.file(fd), |f| opcode::Fallocate::new(f, len)
            .offset(offset)
            .mode(mode)
            .build())
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::fd::AsRawFd;

    /// Allowed CPUs of every io_uring worker thread of this process.
    fn worker_affinities() -> Vec<String> {
        let mut out = Vec::new();
        for t in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
            let comm = std::fs::read_to_string(t.path().join("comm")).unwrap_or_default();
            if comm.starts_with("iou-wrk") {
                let status = std::fs::read_to_string(t.path().join("status")).unwrap_or_default();
                if let Some(l) = status.lines().find(|l| l.starts_with("Cpus_allowed_list:")) {
                    out.push(l.split_whitespace().nth(1).unwrap_or("").to_owned());
                }
            }
        }
        out
    }

    #[test]
    fn workers_stay_off_the_pollers_cpus() {
        keep_workers_off(&[0]);
        let Some(set) = WORKER_CPUS.get().copied().flatten() else {
            eprintln!("only CPU 0 available: skipped");
            return;
        };
        // SAFETY: reading a valid set.
        assert!(!unsafe { libc::CPU_ISSET(0, &set) });
        // A file without non-blocking reads (tmpfs) sends every read to a
        // worker thread.
        let Ok(mut f) = tempfile::NamedTempFile::new_in("/dev/shm") else {
            eprintln!("no /dev/shm: skipped");
            return;
        };
        f.write_all(&[7u8; 4096]).unwrap();
        let mut ring = Ring::new(4).unwrap();
        let mut buf = vec![0u8; 4096];
        let iov = libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        };
        // SAFETY: iov and buf outlive the wait below.
        unsafe { ring.push_readv(f.as_file().as_raw_fd(), &iov, 1, 0, 1) }.unwrap();
        let mut got = Vec::new();
        for _ in 0..1000 {
            ring.wait(Duration::from_millis(10)).unwrap();
            ring.reap_into(&mut got);
            if !got.is_empty() {
                break;
            }
        }
        assert_eq!(got, vec![(1, 4096)]);
        assert!(buf.iter().all(|&b| b == 7));
        let workers = worker_affinities();
        if workers.is_empty() {
            eprintln!("no worker thread was needed (tmpfs reads do not block here)");
        }
        eprintln!("worker CPUs: {workers:?}");
        for cpus in &workers {
            assert!(
                !cpus.split(',').any(|r| r.split('-').next() == Some("0")),
                "worker allowed on CPU 0: {cpus}"
            );
        }
    }
}
