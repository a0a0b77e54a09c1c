//! A request's iovecs seen as a byte stream: its pieces from an offset,
//! and the copies between it and a backend's own buffers (the one place a
//! backend's CPU copies a request's data).

/// The pieces of `[off, off + len)` of the iovecs, as (address, length),
/// in order; fewer bytes when the iovecs end first.
pub(crate) fn pieces(
    iov: &[libc::iovec],
    off: usize,
    len: usize,
) -> impl Iterator<Item = (*mut u8, usize)> + '_ {
    let mut skip = off;
    let mut left = len;
    iov.iter().filter_map(move |v| {
        if left == 0 {
            return None;
        }
        if skip >= v.iov_len {
            skip -= v.iov_len;
            return None;
        }
        let n = (v.iov_len - skip).min(left);
        let p = v.iov_base.cast::<u8>().wrapping_add(skip);
        left -= n;
        skip = 0;
        Some((p, n))
    })
}

/// Copy `dst.len()` bytes from byte `off` of the iovecs.
///
/// # Safety
///
/// The iovecs must be valid for reads and cover `off + dst.len()` bytes.
pub(crate) unsafe fn gather(iov: &[libc::iovec], off: u64, dst: &mut [u8]) {
    let off = usize::try_from(off).unwrap_or(usize::MAX);
    let mut at = 0;
    for (p, n) in pieces(iov, off, dst.len()) {
        // SAFETY: the piece lies inside an iovec valid for reads (the
        // caller's contract); `dst[at..at + n]` is ours (the pieces add up
        // to at most `dst.len()`). Guest memory never overlaps our buffers.
        unsafe { std::ptr::copy_nonoverlapping(p, dst.as_mut_ptr().add(at), n) };
        at += n;
    }
}

/// Copy `src` to byte `off` of the iovecs.
///
/// # Safety
///
/// The iovecs must be valid for writes and cover `off + src.len()` bytes.
pub(crate) unsafe fn scatter(iov: &[libc::iovec], off: u64, src: &[u8]) {
    let off = usize::try_from(off).unwrap_or(usize::MAX);
    let mut at = 0;
    for (p, n) in pieces(iov, off, src.len()) {
        // SAFETY: the piece lies inside an iovec valid for writes (the
        // caller's contract); `src[at..at + n]` is ours.
        unsafe { std::ptr::copy_nonoverlapping(src.as_ptr().add(at), p, n) };
        at += n;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_from_an_offset() {
        let mut a = [0u8; 8];
        let mut b = [0u8; 4];
        let iov = [
            libc::iovec {
                iov_base: a.as_mut_ptr().cast(),
                iov_len: 8,
            },
            libc::iovec {
                iov_base: b.as_mut_ptr().cast(),
                iov_len: 4,
            },
        ];
        let got: Vec<usize> = pieces(&iov, 6, 5).map(|(_, n)| n).collect();
        assert_eq!(got, vec![2, 3]);
        assert_eq!(pieces(&iov, 12, 1).count(), 0);
        // SAFETY: both arrays live through the copies.
        unsafe { scatter(&iov, 6, &[1, 2, 3, 4, 5]) };
        assert_eq!((a[6], a[7], b[0], b[2]), (1, 2, 3, 5));
        let mut out = [0u8; 3];
        // SAFETY: as above.
        unsafe { gather(&iov, 7, &mut out) };
        assert_eq!(out, [2, 3, 4]);
    }
}
