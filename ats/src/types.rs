//! Small value types shared by the whole crate.

use std::fmt;

/// Protection of a guest memory mapping, as given by the VMM (vfio-user
/// `DMA_MAP` flags `READ`/`WRITE`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct Prot {
    /// The device may read this memory.
    pub read: bool,
    /// The device may write this memory.
    pub write: bool,
}

impl Prot {
    /// No access.
    pub const NONE: Prot = Prot {
        read: false,
        write: false,
    };
    /// Read only.
    pub const READ: Prot = Prot {
        read: true,
        write: false,
    };
    /// Write only.
    pub const WRITE: Prot = Prot {
        read: false,
        write: true,
    };
    /// Read and write.
    pub const READ_WRITE: Prot = Prot {
        read: true,
        write: true,
    };

    /// Whether this protection allows `access`.
    pub fn allows(self, access: Access) -> bool {
        match access {
            Access::Read => self.read,
            Access::Write => self.write,
        }
    }

    /// Whether any access is allowed.
    pub fn is_none(self) -> bool {
        !self.read && !self.write
    }

    /// The `PROT_*` flags for `mmap`.
    pub(crate) fn to_mmap_prot(self) -> i32 {
        let mut p = libc::PROT_NONE;
        if self.read {
            p |= libc::PROT_READ;
        }
        if self.write {
            p |= libc::PROT_WRITE;
        }
        p
    }
}

impl fmt::Display for Prot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let r = if self.read { 'r' } else { '-' };
        let w = if self.write { 'w' } else { '-' };
        write!(f, "{r}{w}")
    }
}

/// Direction of a device access to guest memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Access {
    /// The device reads guest memory (e.g. the data of an NVMe Write, an SQE, a PRP list).
    Read,
    /// The device writes guest memory (e.g. the data of an NVMe Read, a CQE).
    Write,
}

/// Description of one mapped region, for inspection and logging.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RegionInfo {
    /// First guest-physical address.
    pub gpa: u64,
    /// Size in bytes.
    pub size: u64,
    /// Protection given at map time.
    pub prot: Prot,
    /// Offset into the file descriptor given at map time (0 without one).
    pub file_offset: u64,
    /// Whether the region is backed by memory of this process (it had an fd
    /// and a non-empty protection).
    pub translatable: bool,
}
