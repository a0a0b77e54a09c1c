//! Helpers for tests of this crate and of the crates that use it: guest RAM
//! backed by a memfd, like QEMU's `memory-backend-memfd`.

use std::ffi::CStr;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// Create a memfd named `name` (visible in `/proc/self/maps` as
/// `/memfd:NAME (deleted)` while mapped) of `size` bytes, zero-filled, and
/// sealed against shrinking and growing as QEMU seals its memfd backend.
pub fn memfd(name: &CStr, size: u64) -> io::Result<OwnedFd> {
    let fd = memfd_unsealed(name, size)?;
    let seals = libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_SEAL;
    // SAFETY: fcntl on a descriptor we own, with an integer argument.
    if unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_ADD_SEALS, seals) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(fd)
}

/// [`memfd`] without seals (its size can still change).
pub fn memfd_unsealed(name: &CStr, size: u64) -> io::Result<OwnedFd> {
    // SAFETY: `name` is a valid NUL-terminated string that outlives the call;
    // memfd_create does not keep the pointer.
    let fd =
        unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: memfd_create returned a new file descriptor that nothing else
    // owns; OwnedFd takes sole ownership and closes it on drop.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let file = File::from(fd);
    file.set_len(size)?;
    Ok(OwnedFd::from(file))
}
