//! Shared memory the host-driver creates and the runtime maps: sealed
//! memfds, mapped with `memmap2`.
//!
//! The host-driver creates each area with [`SharedMem::create`] and seals it
//! against shrinking and growing, so that nobody (the hypervisor it is handed
//! to, a runtime) can `ftruncate` it under a mapping and turn the next access
//! into `SIGBUS`. The runtime maps what it receives with [`SharedMem::open`],
//! which refuses an fd that is too short or not sealed.

use std::ffi::CStr;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use memmap2::{MmapOptions, MmapRaw};

/// What can go wrong mapping an area received over the link.
#[derive(Debug, thiserror::Error)]
pub enum ShmError {
    #[error("{what}: {len} bytes, at least {need} needed")]
    TooShort { what: String, len: u64, need: u64 },
    #[error("{what}: not sealed against shrinking (F_SEAL_SHRINK)")]
    NotSealed { what: String },
    #[error("{what}")]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },
}

/// A `MAP_SHARED` mapping of (part of) a memfd, with the file kept open.
#[derive(Debug)]
pub struct SharedMem {
    file: File,
    map: MmapRaw,
    offset: u64,
}

/// A new memfd of `file_len` bytes (zeros), sealed against shrinking,
/// growing and further seals: whoever it is passed to can rely on its size.
pub fn sealed_memfd(name: &CStr, file_len: u64) -> io::Result<File> {
    // SAFETY: `name` is a valid NUL-terminated string that outlives the
    // call; memfd_create does not keep the pointer.
    let fd =
        unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: memfd_create returned a new descriptor nothing else owns.
    let file = File::from(unsafe { OwnedFd::from_raw_fd(fd) });
    file.set_len(file_len)?;
    let seals = libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_SEAL;
    // SAFETY: fcntl on a descriptor we own, with an integer argument.
    if unsafe { libc::fcntl(file.as_raw_fd(), libc::F_ADD_SEALS, seals) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(file)
}

impl SharedMem {
    /// A new memfd of `file_len` bytes (zero-filled), sealed against
    /// shrinking, growing and further sealing, with `[offset, offset+len)`
    /// mapped.
    pub fn create(name: &CStr, file_len: u64, offset: u64, len: usize) -> io::Result<SharedMem> {
        let file = sealed_memfd(name, file_len)?;
        SharedMem::map(file, offset, len)
    }

    /// Map `[offset, offset+len)` of a memfd received from the peer. `what`
    /// names the area in errors. The file must be at least `offset + len`
    /// long and sealed against shrinking.
    pub fn open(fd: OwnedFd, offset: u64, len: usize, what: &str) -> Result<SharedMem, ShmError> {
        let file = File::from(fd);
        let io_err = |source| ShmError::Io {
            what: what.to_string(),
            source,
        };
        let flen = file.metadata().map_err(io_err)?.len();
        let need = offset + len as u64;
        if flen < need {
            return Err(ShmError::TooShort {
                what: what.to_string(),
                len: flen,
                need,
            });
        }
        // SAFETY: fcntl on a descriptor we own, no pointer argument.
        let seals = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_GET_SEALS) };
        if seals < 0 || seals & libc::F_SEAL_SHRINK == 0 {
            return Err(ShmError::NotSealed {
                what: what.to_string(),
            });
        }
        SharedMem::map(file, offset, len).map_err(io_err)
    }

    /// Map `[offset, offset+len)` of a window onto memory the host-driver
    /// shares: a PCI BAR's resource file seen by an SoC (the host-driver
    /// sealed the memory behind it; seals do not show through a BAR), or
    /// the same memfd reached another way. `what` names it in errors.
    pub fn window(file: File, offset: u64, len: usize, what: &str) -> Result<SharedMem, ShmError> {
        let io_err = |source| ShmError::Io {
            what: what.to_string(),
            source,
        };
        let flen = file.metadata().map_err(io_err)?.len();
        let need = offset + len as u64;
        if flen < need {
            return Err(ShmError::TooShort {
                what: what.to_string(),
                len: flen,
                need,
            });
        }
        SharedMem::map(file, offset, len).map_err(io_err)
    }

    fn map(file: File, offset: u64, len: usize) -> io::Result<SharedMem> {
        let map = MmapOptions::new().offset(offset).len(len).map_raw(&file)?;
        Ok(SharedMem { file, map, offset })
    }

    /// The memfd (to pass over the link or to the hypervisor).
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }

    /// File offset of the mapping.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Length of the mapping in bytes.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether the mapping is empty (never, for areas made here).
    pub fn is_empty(&self) -> bool {
        self.map.len() == 0
    }

    /// First byte of the mapping. Page aligned.
    pub fn as_ptr(&self) -> *mut u8 {
        self.map.as_mut_ptr()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_memfd_refuses_truncate_and_maps_twice() {
        let a = SharedMem::create(c"t", 8192, 4096, 4096).unwrap();
        let f = File::from(a.fd().try_clone_to_owned().unwrap());
        assert!(f.set_len(0).is_err(), "shrinking a sealed memfd must fail");
        assert!(
            f.set_len(1 << 20).is_err(),
            "growing a sealed memfd must fail"
        );
        let b = SharedMem::open(a.fd().try_clone_to_owned().unwrap(), 4096, 4096, "x").unwrap();
        // SAFETY: both mappings are 4 KiB of the same page; byte 0 is in range.
        unsafe {
            a.as_ptr().write_volatile(7);
            assert_eq!(b.as_ptr().read_volatile(), 7);
        }
        assert!(matches!(
            SharedMem::open(a.fd().try_clone_to_owned().unwrap(), 4096, 8192, "x"),
            Err(ShmError::TooShort { .. })
        ));
    }

    #[test]
    fn unsealed_fd_is_refused() {
        // SAFETY: plain memfd creation, result checked.
        let fd = unsafe { libc::memfd_create(c"u".as_ptr(), libc::MFD_CLOEXEC) };
        assert!(fd >= 0);
        // SAFETY: fresh descriptor.
        let f = File::from(unsafe { OwnedFd::from_raw_fd(fd) });
        f.set_len(4096).unwrap();
        let e = SharedMem::open(OwnedFd::from(f), 0, 4096, "queue state").unwrap_err();
        assert_eq!(
            e.to_string(),
            "queue state: not sealed against shrinking (F_SEAL_SHRINK)"
        );
    }
}
