//! Copies between a request's iovecs and a backend's own buffers: the
//! one place a backend's CPU copies a request's data.

/// Copy `dst.len()` bytes from byte `off` of the iovecs.
///
/// # Safety
///
/// The iovecs must be valid for reads and cover `off + dst.len()` bytes.
pub(crate) unsafe fn gather(iov: &[libc::iovec], off: u64, dst: &mut [u8]) {
    let mut skip = usize::try_from(off).unwrap_or(usize::MAX);
    let mut at = 0;
    for v in iov {
        if at == dst.len() {
            break;
        }
        if skip >= v.iov_len {
            skip -= v.iov_len;
            continue;
        }
        let n = (v.iov_len - skip).min(dst.len() - at);
        // SAFETY: `[skip, skip + n)` lies inside this iovec, valid for reads
        // (the caller's contract); `dst[at..at + n]` is ours. Guest memory
        // never overlaps our page buffer.
        unsafe {
            std::ptr::copy_nonoverlapping(
                v.iov_base.cast::<u8>().add(skip),
                dst.as_mut_ptr().add(at),
                n,
            );
        }
        at += n;
        skip = 0;
    }
}

/// Copy `src` to byte `off` of the iovecs.
///
/// # Safety
///
/// The iovecs must be valid for writes and cover `off + src.len()` bytes.
pub(crate) unsafe fn scatter(iov: &[libc::iovec], off: u64, src: &[u8]) {
    let mut skip = usize::try_from(off).unwrap_or(usize::MAX);
    let mut at = 0;
    for v in iov {
        if at == src.len() {
            break;
        }
        if skip >= v.iov_len {
            skip -= v.iov_len;
            continue;
        }
        let n = (v.iov_len - skip).min(src.len() - at);
        // SAFETY: `[skip, skip + n)` lies inside this iovec, valid for
        // writes (the caller's contract); `src[at..at + n]` is ours.
        unsafe {
            std::ptr::copy_nonoverlapping(
                src.as_ptr().add(at),
                v.iov_base.cast::<u8>().add(skip),
                n,
            );
        }
        at += n;
        skip = 0;
    }
}
