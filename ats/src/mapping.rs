//! Creation of the host mappings of guest memory.
//!
//! The mmap itself is done by vm-memory's [`MmapRegion`] (which also munmaps
//! on drop and keeps the file descriptor open in its [`FileOffset`]); this
//! module only validates what the VMM sent before it reaches `mmap`.

use std::fs::File;
use std::os::fd::OwnedFd;

use vm_memory::mmap::{MmapRegionBuilder, MmapRegionError};
use vm_memory::{FileOffset, MmapRegion};

use crate::{AtsError, Prot};

/// Alignment required of guest-physical addresses, sizes and file offsets.
pub(crate) const MAP_ALIGN: u64 = 4096;

/// mmap `size` bytes of `fd` at `file_offset`, `MAP_SHARED`, with `prot`.
///
/// `gpa` is only used in error values.
pub(crate) fn map_fd(
    gpa: u64,
    size: u64,
    fd: OwnedFd,
    file_offset: u64,
    prot: Prot,
) -> Result<MmapRegion, AtsError> {
    let len = usize::try_from(size).map_err(|_| AtsError::TooBig { size })?;
    let file = File::from(fd);
    let meta = file.metadata().map_err(AtsError::Mmap)?;
    // mmap takes an off_t: the whole file range must fit in i64.
    let end = file_offset
        .checked_add(size)
        .filter(|&e| i64::try_from(e).is_ok());
    let too_short = |file_len| AtsError::FileTooShort {
        gpa,
        size,
        file_offset,
        file_len,
    };
    let Some(end) = end else {
        return Err(too_short(meta.len()));
    };
    // For regular files (memfd, tmpfs, hugetlbfs) a mapping past EOF would
    // SIGBUS on first touch: refuse it now. Other kinds of fd (devices) have
    // no meaningful length.
    if meta.file_type().is_file() && meta.len() < end {
        return Err(too_short(meta.len()));
    }
    MmapRegionBuilder::new(len)
        .with_file_offset(FileOffset::new(file, file_offset))
        .with_mmap_prot(prot.to_mmap_prot())
        .with_mmap_flags(libc::MAP_SHARED | libc::MAP_NORESERVE)
        .build()
        .map_err(|e| match e {
            MmapRegionError::Mmap(io) => AtsError::Mmap(io),
            other => AtsError::MmapRegion(other),
        })
}
