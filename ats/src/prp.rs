//! NVMe PRP (Physical Region Page) walking: PRP1/PRP2 and PRP lists to host
//! iovecs (NVMe base specification 1.4, section 4.3).
//!
//! Mapping of the errors to NVMe status codes (the caller's job):
//! [`PrpError::OffsetInvalid`] -> PRP Offset Invalid (0x13);
//! [`PrpError::Translation`] -> Data Transfer Error (0x04), as QEMU does for
//! addresses outside guest RAM; [`PrpError::TooLarge`] -> Invalid Field in
//! Command (0x02).

use std::fmt;

use zerocopy::little_endian::U64;
use zerocopy::IntoBytes;

use crate::{Access, AtsError, Snapshot};

/// Parameters of the controller that bound a PRP walk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PrpLimits {
    /// Host memory page size from CC.MPS (`4096 << MPS`): a power of two >= 4096.
    pub page_size: u64,
    /// Maximum data transfer size in bytes (from MDTS). A walk costs one step
    /// per page, so keep this finite (use `u64::MAX` only for trusted input).
    pub max_transfer: u64,
}

/// Which PRP field had a bad offset.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PrpField {
    /// PRP1 is not dword aligned.
    Prp1,
    /// PRP2 is the second data page and has a non-zero page offset.
    Prp2Page,
    /// PRP2 is a PRP list pointer that is not qword aligned.
    Prp2List,
    /// A data entry in a PRP list has a non-zero page offset.
    ListEntry,
    /// The pointer to the next PRP list page has a non-zero page offset.
    NextList,
}

impl fmt::Display for PrpField {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PrpField::Prp1 => "PRP1 not dword aligned",
            PrpField::Prp2Page => "PRP2 data page with an offset",
            PrpField::Prp2List => "PRP list pointer not qword aligned",
            PrpField::ListEntry => "PRP list entry with an offset",
            PrpField::NextList => "next PRP list pointer with an offset",
        })
    }
}

/// Why a PRP walk failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PrpError {
    /// An entry has an offset where the spec forbids one.
    #[error("invalid PRP offset: {field} ({entry:#x})")]
    OffsetInvalid {
        /// Which field.
        field: PrpField,
        /// The entry's value.
        entry: u64,
    },
    /// A data page or PRP list is outside guest RAM or lacks the needed permission.
    #[error("PRP address {gpa:#x} cannot be accessed")]
    Translation {
        /// The guest-physical address that failed.
        gpa: u64,
        /// Why.
        #[source]
        source: AtsError,
    },
    /// The transfer is larger than the controller's maximum.
    #[error("transfer of {len} bytes exceeds the maximum of {max}")]
    TooLarge {
        /// Requested length.
        len: u64,
        /// Maximum transfer size.
        max: u64,
    },
    /// A zero-length transfer.
    #[error("zero-length PRP transfer")]
    ZeroLength,
    /// [`PrpLimits::page_size`] is not a power of two >= 4096 (a caller bug).
    #[error("invalid memory page size {page_size}")]
    InvalidPageSize {
        /// The page size given.
        page_size: u64,
    },
}

/// PRP list entries read from guest memory per volatile copy.
const LIST_BATCH: usize = 64;

/// Turn PRP1/PRP2 (and PRP lists, chained) describing `len` bytes into host
/// iovecs appended to `out` (cleared first; cleared again on error).
///
/// - PRP1 may carry a dword-aligned offset. If the data fits in the rest of
///   its page, PRP2 is unused.
/// - If it fits in one more page, PRP2 is that page's address (offset 0).
/// - Otherwise PRP2 points to a PRP list (qword aligned, may have an offset);
///   when more entries are needed than fit in the rest of a list page, its
///   last entry points to the next list page (offset 0).
///
/// Data pages are translated for `access`; list pages are read (volatile
/// copies) with [`Access::Read`]. The walk reads exactly as many entries as
/// `len` needs, so a cyclic list cannot loop. Pieces contiguous in host
/// memory are merged into one iovec. The iovecs are valid while `snap` is
/// alive.
pub fn map_prps(
    snap: &Snapshot,
    prp1: u64,
    prp2: u64,
    len: u64,
    limits: &PrpLimits,
    access: Access,
    out: &mut Vec<libc::iovec>,
) -> Result<(), PrpError> {
    out.clear();
    let r = walk(snap, prp1, prp2, len, limits, access, out);
    if r.is_err() {
        out.clear();
    }
    r
}

fn walk(
    snap: &Snapshot,
    prp1: u64,
    prp2: u64,
    len: u64,
    limits: &PrpLimits,
    access: Access,
    out: &mut Vec<libc::iovec>,
) -> Result<(), PrpError> {
    let ps = limits.page_size;
    if !ps.is_power_of_two() || ps < 4096 {
        return Err(PrpError::InvalidPageSize { page_size: ps });
    }
    if len == 0 {
        return Err(PrpError::ZeroLength);
    }
    if len > limits.max_transfer {
        return Err(PrpError::TooLarge {
            len,
            max: limits.max_transfer,
        });
    }
    let mask = ps - 1;
    if prp1 & 3 != 0 {
        return Err(PrpError::OffsetInvalid {
            field: PrpField::Prp1,
            entry: prp1,
        });
    }
    let first = len.min(ps - (prp1 & mask));
    push(snap, prp1, first, access, out)?;
    let mut remaining = len - first;
    if remaining == 0 {
        return Ok(());
    }
    if remaining <= ps {
        if prp2 & mask != 0 {
            return Err(PrpError::OffsetInvalid {
                field: PrpField::Prp2Page,
                entry: prp2,
            });
        }
        return push(snap, prp2, remaining, access, out);
    }
    if prp2 & 7 != 0 {
        return Err(PrpError::OffsetInvalid {
            field: PrpField::Prp2List,
            entry: prp2,
        });
    }
    let mut entries_left = remaining.div_ceil(ps);
    let mut list = prp2;
    let mut batch = [U64::ZERO; LIST_BATCH];
    loop {
        // Entry slots from `list` to the end of its page (>= 1; only the
        // first list can start mid-page, so every later page makes progress).
        let slots = (ps - (list & mask)) / 8;
        let chained = entries_left > slots;
        let data_here = if chained { slots - 1 } else { entries_left };
        let mut idx = 0;
        while idx < data_here {
            // `idx < slots`, so this stays inside the list page: no overflow.
            let at = list + idx * 8;
            let n = (data_here - idx).min(LIST_BATCH as u64);
            // n <= LIST_BATCH, so it fits in usize.
            let entries = &mut batch[..usize::try_from(n).unwrap_or(LIST_BATCH)];
            read_list(snap, at, entries.as_mut_bytes())?;
            for e in entries.iter() {
                let entry = e.get();
                if entry & mask != 0 {
                    return Err(PrpError::OffsetInvalid {
                        field: PrpField::ListEntry,
                        entry,
                    });
                }
                let chunk = remaining.min(ps);
                push(snap, entry, chunk, access, out)?;
                remaining -= chunk;
            }
            idx += n;
        }
        entries_left -= data_here;
        if !chained {
            debug_assert_eq!(remaining, 0);
            return Ok(());
        }
        let mut next = U64::ZERO;
        read_list(snap, list + (slots - 1) * 8, next.as_mut_bytes())?;
        let next = next.get();
        if next & mask != 0 {
            return Err(PrpError::OffsetInvalid {
                field: PrpField::NextList,
                entry: next,
            });
        }
        list = next;
    }
}

/// Volatile copy of PRP list entries at `gpa`.
fn read_list(snap: &Snapshot, gpa: u64, buf: &mut [u8]) -> Result<(), PrpError> {
    snap.read_bytes(gpa, buf)
        .map_err(|source| PrpError::Translation { gpa, source })
}

/// Translate data `[gpa, gpa+len)` (possibly over several regions contiguous
/// in guest-physical space) and append it to `out`, merging with the last
/// iovec when contiguous in host memory.
fn push(
    snap: &Snapshot,
    gpa: u64,
    len: u64,
    access: Access,
    out: &mut Vec<libc::iovec>,
) -> Result<(), PrpError> {
    let mut done = 0;
    while done < len {
        let at = gpa.checked_add(done).ok_or(PrpError::Translation {
            gpa,
            source: AtsError::OutOfRange { gpa, len },
        })?;
        let (ptr, n) = snap
            .translate_prefix(at, len - done, access)
            .map_err(|source| PrpError::Translation { gpa: at, source })?;
        // n <= region size, which fits in usize (checked at map time).
        let n_usize = usize::try_from(n).map_err(|_| PrpError::Translation {
            gpa: at,
            source: AtsError::TooBig { size: n },
        })?;
        match out.last_mut() {
            Some(last) if last.iov_base.cast::<u8>().wrapping_add(last.iov_len) == ptr => {
                last.iov_len += n_usize;
            }
            _ => out.push(libc::iovec {
                iov_base: ptr.cast(),
                iov_len: n_usize,
            }),
        }
        done += n;
    }
    Ok(())
}
