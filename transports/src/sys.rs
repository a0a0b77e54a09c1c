//! Thin safe wrappers over the system calls the backends need besides
//! io_uring: anonymous mappings, block-device ioctls and `statx`.

use memmap2::{Advice, MmapOptions, MmapRaw, UncheckedAdvice};
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

/// An anonymous mapping (memmap2's, as every mapping of the runtime
/// but guest memory), unmapped on drop. Shared between threads as raw
/// memory: users of `as_ptr` synchronise their accesses.
pub(crate) struct Mapping(MmapRaw);

impl Mapping {
    /// `len` bytes of zeroed private anonymous memory, not reserved against
    /// swap, so large sparse RAM disks cost only the pages actually written.
    /// Private rather than shared so that transparent huge pages apply (they
    /// usually do not for shmem): random 4 KiB accesses across a large RAM
    /// disk then cost far fewer TLB misses.
    pub(crate) fn anonymous(len: usize) -> io::Result<Self> {
        let m = Self::options(len)?.map_anon()?;
        // A hint only: THP may be disabled on this host.
        let _ = m.advise(Advice::HugePage);
        Ok(Mapping(MmapRaw::from(m)))
    }

    /// `len` bytes of read-only zeroes (every page is the kernel's zero page).
    pub(crate) fn zeroes(len: usize) -> io::Result<Self> {
        let m = Self::options(len)?.map_anon()?.make_read_only()?;
        Ok(Mapping(MmapRaw::from(m)))
    }

    fn options(len: usize) -> io::Result<MmapOptions> {
        if len == 0 {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        }
        let mut o = MmapOptions::new();
        o.len(len).no_reserve_swap();
        Ok(o)
    }

    pub(crate) fn as_ptr(&self) -> *mut u8 {
        self.0.as_mut_ptr()
    }

    pub(crate) fn len(&self) -> usize {
        self.0.len()
    }

    /// Give back the pages of `[offset, offset + len)` (both page aligned and
    /// inside the mapping); they read back as zeroes afterwards.
    pub(crate) fn discard_pages(&self, offset: usize, len: usize) -> io::Result<()> {
        let end = offset.checked_add(len).filter(|&e| e <= self.len());
        if end.is_none() || offset % page_size() != 0 || len % page_size() != 0 {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        }
        // SAFETY: the range lies inside our own mapping (checked above);
        // MADV_DONTNEED on private anonymous memory only replaces its contents
        // by zeroes (fresh pages on the next touch); it does not unmap
        // anything, and nothing holds a Rust reference into the mapping.
        unsafe {
            self.0
                .unchecked_advise_range(UncheckedAdvice::DontNeed, offset, len)
        }
    }
}

/// The system page size.
pub(crate) fn page_size() -> usize {
    // SAFETY: sysconf has no memory-safety preconditions.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(size)
        .ok()
        .filter(|&s| s > 0)
        .unwrap_or(4096)
}

// BLKGETSIZE64 = _IOR(0x12, 114, u64) from linux/fs.h (libc does not export
// it). The "read" direction bits differ between ioctl layouts.
#[cfg(not(any(
    target_arch = "powerpc",
    target_arch = "powerpc64",
    target_arch = "mips",
    target_arch = "mips64",
    target_arch = "sparc",
    target_arch = "sparc64"
)))]
const BLKGETSIZE64: libc::c_ulong = 0x8008_1272;
#[cfg(any(
    target_arch = "powerpc",
    target_arch = "powerpc64",
    target_arch = "mips",
    target_arch = "mips64",
    target_arch = "sparc",
    target_arch = "sparc64"
))]
const BLKGETSIZE64: libc::c_ulong = 0x4008_1272;

/// Size in bytes of the block device behind `fd`.
pub(crate) fn block_device_size(fd: BorrowedFd<'_>) -> io::Result<u64> {
    let mut size: u64 = 0;
    // SAFETY: BLKGETSIZE64 writes one u64 through the pointer, which points to
    // a live local.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), BLKGETSIZE64 as _, &mut size as *mut u64) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(size)
}

/// Logical block size of the block device behind `fd`.
pub(crate) fn block_device_logical_block_size(fd: BorrowedFd<'_>) -> io::Result<u32> {
    let mut size: libc::c_int = 0;
    // SAFETY: BLKSSZGET writes one int through the pointer, which points to a
    // live local.
    let rc = unsafe {
        libc::ioctl(
            fd.as_raw_fd(),
            libc::BLKSSZGET as _,
            &mut size as *mut libc::c_int,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    u32::try_from(size).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

/// Direct-I/O alignment of an open file, from `statx(STATX_DIOALIGN)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum DioAlign {
    /// The kernel does not report it (old kernel or filesystem).
    Unknown,
    /// The kernel says this file does not support direct I/O.
    Unsupported,
    /// Buffer addresses must be multiples of `mem`, offsets and lengths
    /// multiples of `offset`.
    Known { mem: u32, offset: u32 },
}

pub(crate) fn dio_alignment(fd: BorrowedFd<'_>) -> DioAlign {
    // SAFETY: statx is plain old data; all-zero is a valid value.
    let mut stx: libc::statx = unsafe { std::mem::zeroed() };
    // SAFETY: empty path + AT_EMPTY_PATH makes statx look at `fd`; the result
    // is written into `stx`, a live local of the right type.
    let rc = unsafe {
        libc::statx(
            fd.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH,
            libc::STATX_DIOALIGN,
            &mut stx,
        )
    };
    if rc != 0 || stx.stx_mask & libc::STATX_DIOALIGN == 0 {
        return DioAlign::Unknown;
    }
    if stx.stx_dio_offset_align == 0 || stx.stx_dio_mem_align == 0 {
        return DioAlign::Unsupported;
    }
    DioAlign::Known {
        mem: stx.stx_dio_mem_align,
        offset: stx.stx_dio_offset_align,
    }
}

/// Filesystems whose files live in memory: a read or write is a copy to or
/// from the page cache and never waits for a device.
const MEMORY_FS_MAGIC: [libc::c_long; 2] = [
    0x0102_1994, // TMPFS_MAGIC (tmpfs, /dev/shm)
    0x8584_58f6, // RAMFS_MAGIC
];

/// Whether `fd` is a file on a memory filesystem (tmpfs, ramfs).
pub(crate) fn on_memory_fs(fd: BorrowedFd<'_>) -> bool {
    // SAFETY: an all-zero statfs is a valid value to be overwritten.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: `fd` is open for the duration of the call; `st` is a valid
    // out-pointer.
    if unsafe { libc::fstatfs(fd.as_raw_fd(), &mut st) } != 0 {
        return false;
    }
    #[allow(clippy::unnecessary_cast)] // f_type's width differs between libcs
    let magic = st.f_type as libc::c_long;
    MEMORY_FS_MAGIC.contains(&magic)
}

/// Whether the file refuses non-blocking reads (`RWF_NOWAIT` fails with
/// EOPNOTSUPP). io_uring cannot try such a file inline and hands every
/// request on it to a kernel worker thread. `buf` must hold `len` bytes;
/// the probe reads at most that much from offset 0.
pub(crate) fn nowait_unsupported(fd: BorrowedFd<'_>, buf: *mut u8, len: usize) -> bool {
    let iov = libc::iovec {
        iov_base: buf.cast(),
        iov_len: len,
    };
    // SAFETY: `iov` names `len` writable bytes (the caller's contract); the
    // fd is open for the duration of the call.
    let r = unsafe { libc::preadv2(fd.as_raw_fd(), &iov, 1, 0, libc::RWF_NOWAIT) };
    r < 0 && io::Error::last_os_error().raw_os_error() == Some(libc::EOPNOTSUPP)
}

/// Set an open-file-description lock on the whole file (`F_OFD_SETLK`):
/// `write` for an exclusive lock, else shared. Such a lock belongs to the
/// open file description, not the process: it is released only when the
/// last reference to the description goes, which includes the kernel's own
/// references for I/O still in flight (io_uring requests, its registered
/// files). `Ok(false)`: another description holds a conflicting lock.
pub(crate) fn ofd_lock(fd: BorrowedFd<'_>, write: bool) -> io::Result<bool> {
    // SAFETY: flock is plain data; zeroed is "whole file from offset 0".
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    let kind = if write { libc::F_WRLCK } else { libc::F_RDLCK };
    fl.l_type = libc::c_short::try_from(kind).unwrap_or_default();
    fl.l_whence = libc::c_short::try_from(libc::SEEK_SET).unwrap_or_default();
    // SAFETY: fcntl with a valid fd and a pointer to a flock we own.
    let r = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_OFD_SETLK, &fl) };
    if r == 0 {
        return Ok(true);
    }
    let e = io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::EAGAIN) | Some(libc::EACCES) => Ok(false),
        _ => Err(e),
    }
}
