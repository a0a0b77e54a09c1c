//! The crate's error type.

use std::io;
use std::time::Duration;

use crate::{Access, Prot};

/// Why a mapping, an unmapping or a guest memory access failed.
///
/// Map/unmap errors come from the VMM (a vfio-user peer); access errors are
/// usually caused by the guest (a bad address in a command) and must become
/// NVMe status codes, never panics.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AtsError {
    /// A map/unmap range that is empty or wraps around the 64-bit space.
    #[error("invalid guest-physical range {gpa:#x}+{size:#x} (empty or wrapping)")]
    InvalidRange {
        /// Start of the range.
        gpa: u64,
        /// Its size.
        size: u64,
    },
    /// The guest-physical address, size or file offset of a map is not 4 KiB aligned.
    #[error("mapping {gpa:#x}+{size:#x} (file offset {file_offset:#x}) is not 4 KiB aligned")]
    Unaligned {
        /// Start of the mapping.
        gpa: u64,
        /// Its size.
        size: u64,
        /// Offset into the file descriptor.
        file_offset: u64,
    },
    /// The new mapping overlaps one that already exists.
    #[error(
        "mapping {gpa:#x}+{size:#x} overlaps existing mapping {existing_gpa:#x}+{existing_size:#x}"
    )]
    Overlap {
        /// Start of the new mapping.
        gpa: u64,
        /// Its size.
        size: u64,
        /// Start of the existing mapping.
        existing_gpa: u64,
        /// Its size.
        existing_size: u64,
    },
    /// No mapping lies inside the range given to unmap.
    #[error("no mapping lies inside {gpa:#x}+{size:#x}")]
    UnknownMapping {
        /// Start of the range.
        gpa: u64,
        /// Its size.
        size: u64,
    },
    /// The range given to unmap cuts an existing mapping (only whole mappings can be removed).
    #[error("unmap of {gpa:#x}+{size:#x} would cut mapping {map_gpa:#x}+{map_size:#x}")]
    PartialUnmap {
        /// Start of the range.
        gpa: u64,
        /// Its size.
        size: u64,
        /// Start of the mapping that is cut.
        map_gpa: u64,
        /// Its size.
        map_size: u64,
    },
    /// The mapping's file is too short for `file_offset + size` (touching the
    /// missing part would raise SIGBUS), or the range does not fit in `off_t`.
    #[error("file of mapping {gpa:#x}+{size:#x} is {file_len:#x} bytes, too short for offset {file_offset:#x}")]
    FileTooShort {
        /// Start of the mapping.
        gpa: u64,
        /// Its size.
        size: u64,
        /// Offset into the file descriptor.
        file_offset: u64,
        /// Size of the file.
        file_len: u64,
    },
    /// The mapping is larger than this host's address space.
    #[error("mapping size {size:#x} does not fit in the host address space")]
    TooBig {
        /// Requested size.
        size: u64,
    },
    /// The accessed range is not entirely inside one mapped region (or, for
    /// byte copies, inside regions that are contiguous in guest-physical space).
    #[error("guest-physical range {gpa:#x}+{len:#x} is not mapped")]
    OutOfRange {
        /// First address that is not covered.
        gpa: u64,
        /// Length of the access from there.
        len: u64,
    },
    /// The address is in a region mapped without a file descriptor (ROM, a BAR)
    /// or with no permissions: it is known but cannot be accessed.
    #[error("guest-physical address {gpa:#x} is in a region that cannot be accessed (mapped without fd)")]
    NotTranslatable {
        /// The address.
        gpa: u64,
    },
    /// The region does not allow this kind of access.
    #[error("{access:?} access at guest-physical address {gpa:#x} is not allowed by the mapping ({prot})")]
    Permission {
        /// The address.
        gpa: u64,
        /// The access that was refused.
        access: Access,
        /// The region's protection.
        prot: Prot,
    },
    /// An atomic access at an address that is not naturally aligned.
    #[error("guest-physical address {gpa:#x} is not {align}-byte aligned")]
    Misaligned {
        /// The address.
        gpa: u64,
        /// The required alignment.
        align: u64,
    },
    /// A zero-length translation.
    #[error("zero-length access at guest-physical address {gpa:#x}")]
    ZeroLength {
        /// The address.
        gpa: u64,
    },
    /// Unmap removed the mappings from new snapshots, but someone still held an
    /// older snapshot when the drain timeout expired. The memory is released
    /// when the last holder drops its snapshot.
    #[error("mappings in {gpa:#x}+{size:#x} removed, but still in use after {timeout:?}")]
    Busy {
        /// Start of the unmapped range.
        gpa: u64,
        /// Its size.
        size: u64,
        /// The drain timeout that expired.
        timeout: Duration,
    },
    /// `mmap` (or `fstat` of the file descriptor) failed.
    #[error("cannot map guest memory")]
    Mmap(#[source] io::Error),
    /// vm-memory refused to build the mapping.
    #[error("cannot build guest memory region")]
    MmapRegion(#[source] vm_memory::mmap::MmapRegionError),
    /// A volatile access failed inside vm-memory (not expected after the
    /// bounds checks done here).
    #[error("guest memory access failed")]
    Volatile(#[source] vm_memory::VolatileMemoryError),
    /// The domain holds [`crate::domain::MAX_REGIONS`] regions already.
    #[error("too many guest memory regions (at most {max})")]
    TooManyRegions {
        /// The limit.
        max: usize,
    },
    /// Guest memory that its owner could shrink under us: a later access
    /// past the new end would raise SIGBUS and take every tenant down.
    #[error("guest memory is not sealed against shrinking ({0}); back it with a memfd sealed with F_SEAL_SHRINK (QEMU: -object memory-backend-memfd, which seals by default)")]
    Unsealed(String),
}
