//! Small data transfers between the controller and guest buffers described
//! by PRPs (Identify, Get Log Page, Get Features data, DSM ranges).

use crate::prp::{map_prps, PrpError, PrpLimits};
use crate::{Access, Snapshot};
use leapio_nvme::Status;

/// NVMe status for a PRP that could not be used.
pub fn prp_status(e: &PrpError) -> Status {
    match e {
        PrpError::OffsetInvalid { .. } => Status::PRP_OFFSET_INVALID,
        PrpError::TooLarge { .. } | PrpError::ZeroLength => Status::INVALID_FIELD,
        PrpError::Translation { .. } => Status::DATA_TRANSFER_ERROR,
        _ => Status::INTERNAL_ERROR,
    }
}

/// The guest buffer of `len` bytes at PRP1/PRP2 as host iovecs, or the
/// NVMe status for PRPs that cannot be used.
fn guest_iovecs(
    snap: &Snapshot,
    prp1: u64,
    prp2: u64,
    len: usize,
    limits: PrpLimits,
    access: Access,
) -> Result<Vec<libc::iovec>, Status> {
    let mut iov = Vec::new();
    map_prps(snap, prp1, prp2, len as u64, &limits, access, &mut iov)
        .map_err(|e| prp_status(&e))?;
    Ok(iov)
}

/// Copy `data` into the guest buffer at PRP1/PRP2.
pub fn copy_to_prps(
    snap: &Snapshot,
    prp1: u64,
    prp2: u64,
    data: &[u8],
    limits: PrpLimits,
) -> Result<(), Status> {
    let iov = guest_iovecs(snap, prp1, prp2, data.len(), limits, Access::Write)?;
    let mut done = 0usize;
    for v in &iov {
        let n = v.iov_len.min(data.len() - done);
        // SAFETY: map_prps returned host addresses inside the guest's own
        // writable regions of `snap`, which the caller keeps alive; the
        // guest may race on the bytes but they are plain memory.
        unsafe {
            std::ptr::copy_nonoverlapping(data.as_ptr().add(done), v.iov_base.cast::<u8>(), n)
        };
        done += n;
    }
    Ok(())
}

/// Copy the guest buffer at PRP1/PRP2 into `buf`.
pub fn copy_from_prps(
    snap: &Snapshot,
    prp1: u64,
    prp2: u64,
    buf: &mut [u8],
    limits: PrpLimits,
) -> Result<(), Status> {
    let iov = guest_iovecs(snap, prp1, prp2, buf.len(), limits, Access::Read)?;
    let mut done = 0usize;
    for v in &iov {
        let n = v.iov_len.min(buf.len() - done);
        // SAFETY: as in copy_to_prps, for readable regions.
        unsafe {
            std::ptr::copy_nonoverlapping(
                v.iov_base.cast::<u8>().cast_const(),
                buf.as_mut_ptr().add(done),
                n,
            )
        };
        done += n;
    }
    Ok(())
}
