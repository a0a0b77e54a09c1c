//! Guest memory must not shrink under a mapping: an access past the end
//! of a shared file mapping raises SIGBUS, which would kill the process and
//! every tenant it serves. A memfd sealed with `F_SEAL_SHRINK` cannot
//! shrink, whoever holds it.

use crate::AtsError;
use std::os::fd::{AsRawFd, BorrowedFd};

/// Ok if `fd` is a memfd sealed against shrinking; otherwise why not.
pub fn require_sealed(fd: BorrowedFd<'_>) -> Result<(), AtsError> {
    // SAFETY: F_GET_SEALS only reads the descriptor's seals; `fd` is
    // borrowed, so it is open.
    let seals = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GET_SEALS) };
    if seals < 0 {
        let e = std::io::Error::last_os_error();
        return Err(AtsError::Unsealed(
            if e.raw_os_error() == Some(libc::EINVAL) {
                "not a memfd".to_owned()
            } else {
                format!("F_GET_SEALS: {e}")
            },
        ));
    }
    if seals & libc::F_SEAL_SHRINK == 0 {
        return Err(AtsError::Unsealed("no F_SEAL_SHRINK".to_owned()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{memfd, memfd_unsealed};
    use std::os::fd::AsFd;

    #[test]
    fn sealed_memfds_pass_and_others_are_refused() {
        let sealed = memfd(c"sealed", 8192).unwrap();
        require_sealed(sealed.as_fd()).unwrap();
        // Sealed: shrinking fails, so no access can fault.
        let f = std::fs::File::from(sealed);
        assert!(f.set_len(4096).is_err());

        let open = memfd_unsealed(c"open", 8192).unwrap();
        let e = require_sealed(open.as_fd()).unwrap_err();
        assert!(e.to_string().contains("F_SEAL_SHRINK"), "{e}");

        let file = tempfile::tempfile().unwrap();
        let e = require_sealed(file.as_fd()).unwrap_err();
        assert!(e.to_string().contains("not a memfd"), "{e}");
    }
}
