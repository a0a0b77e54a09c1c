//! On-wire structures of the vfio-user protocol.
//!
//! Every structure is `#[repr(C)]`, made only of little-endian byte-array
//! integers (alignment 1, no padding), so it can be read from and written to
//! any byte offset of a message buffer with zerocopy. Sizes are checked at
//! compile time against the specification.

use std::mem::size_of;

use zerocopy::byteorder::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

/// Command numbers (`enum vfio_user_command` in the specification).
pub mod cmd {
    /// `VFIO_USER_VERSION`
    pub const VERSION: u16 = 1;
    /// `VFIO_USER_DMA_MAP`
    pub const DMA_MAP: u16 = 2;
    /// `VFIO_USER_DMA_UNMAP`
    pub const DMA_UNMAP: u16 = 3;
    /// `VFIO_USER_DEVICE_GET_INFO`
    pub const DEVICE_GET_INFO: u16 = 4;
    /// `VFIO_USER_DEVICE_GET_REGION_INFO`
    pub const DEVICE_GET_REGION_INFO: u16 = 5;
    /// `VFIO_USER_DEVICE_GET_REGION_IO_FDS`
    pub const DEVICE_GET_REGION_IO_FDS: u16 = 6;
    /// `VFIO_USER_DEVICE_GET_IRQ_INFO`
    pub const DEVICE_GET_IRQ_INFO: u16 = 7;
    /// `VFIO_USER_DEVICE_SET_IRQS`
    pub const DEVICE_SET_IRQS: u16 = 8;
    /// `VFIO_USER_REGION_READ`
    pub const REGION_READ: u16 = 9;
    /// `VFIO_USER_REGION_WRITE`
    pub const REGION_WRITE: u16 = 10;
    /// `VFIO_USER_DMA_READ` (server -> client only)
    pub const DMA_READ: u16 = 11;
    /// `VFIO_USER_DMA_WRITE` (server -> client only)
    pub const DMA_WRITE: u16 = 12;
    /// `VFIO_USER_DEVICE_RESET`
    pub const DEVICE_RESET: u16 = 13;
    /// `VFIO_USER_DIRTY_PAGES`: in older drafts and QEMU's header, gone from
    /// the current specification.
    pub const DIRTY_PAGES: u16 = 14;
    /// `VFIO_USER_REGION_WRITE_MULTI` (only after `write_multiple` was
    /// negotiated, which this implementation never does).
    pub const REGION_WRITE_MULTI: u16 = 15;
    /// `VFIO_USER_DEVICE_FEATURE`
    pub const DEVICE_FEATURE: u16 = 16;
    /// `VFIO_USER_MIG_DATA_READ`
    pub const MIG_DATA_READ: u16 = 17;
    /// `VFIO_USER_MIG_DATA_WRITE`
    pub const MIG_DATA_WRITE: u16 = 18;
}

/// Header flags: message type in bits 0-3.
pub const FLAG_TYPE_MASK: u32 = 0xf;
/// Type: command.
pub const FLAG_TYPE_COMMAND: u32 = 0x0;
/// Type: reply.
pub const FLAG_TYPE_REPLY: u32 = 0x1;
/// The sender wants no reply to this command.
pub const FLAG_NO_REPLY: u32 = 1 << 4;
/// The reply reports an error in `error_no`.
pub const FLAG_ERROR: u32 = 1 << 5;

/// The header in front of every message.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
pub struct Header {
    /// Chosen by the sender of a command, echoed in its reply.
    pub msg_id: U16,
    /// One of [`cmd`].
    pub command: U16,
    /// The whole message including this header.
    pub msg_size: U32,
    /// `FLAG_*`.
    pub flags: U32,
    /// A positive errno in an error reply; reserved in commands.
    pub error_no: U32,
}

/// `VFIO_USER_VERSION` payload; followed by optional NUL-terminated JSON.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
pub struct Version {
    /// Major version.
    pub major: U16,
    /// Minor version.
    pub minor: U16,
}

/// `VFIO_USER_DMA_MAP` request.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
pub struct DmaMap {
    /// Size of this structure (32).
    pub argsz: U32,
    /// `VFIO_DMA_MAP_FLAG_READ | VFIO_DMA_MAP_FLAG_WRITE`.
    pub flags: U32,
    /// Offset into the file descriptor sent with the message.
    pub offset: U64,
    /// DMA (I/O virtual) address.
    pub addr: U64,
    /// Length in bytes.
    pub size: U64,
}

/// `VFIO_USER_DMA_UNMAP` request and reply.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
pub struct DmaUnmap {
    /// Maximum reply payload (request), needed payload (reply).
    pub argsz: U32,
    /// `VFIO_DMA_UNMAP_FLAG_*` (kernel values: dirty bitmap 1<<0, all 1<<1).
    pub flags: U32,
    /// DMA address.
    pub addr: U64,
    /// Length in bytes.
    pub size: U64,
}

/// `VFIO_USER_DEVICE_GET_INFO` request and reply (the 16-byte form: QEMU
/// refuses the newer 24-byte kernel struct as "larger than recv buffer").
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
pub struct DeviceInfo {
    /// Maximum (request) / needed (reply) payload.
    pub argsz: U32,
    /// `VFIO_DEVICE_FLAGS_*`.
    pub flags: U32,
    /// Number of regions.
    pub num_regions: U32,
    /// Number of interrupt types.
    pub num_irqs: U32,
}

/// `VFIO_USER_DEVICE_GET_REGION_INFO` request and reply (`struct
/// vfio_region_info`); capabilities follow in the reply.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
pub struct RegionInfo {
    /// Maximum (request) / needed (reply) payload, capabilities included.
    pub argsz: U32,
    /// `VFIO_REGION_INFO_FLAG_*`.
    pub flags: U32,
    /// Region index.
    pub index: U32,
    /// Offset of the first capability from the start of this structure.
    pub cap_offset: U32,
    /// Region size.
    pub size: U64,
    /// File offset for mmap() of the region's fd.
    pub offset: U64,
}

/// `struct vfio_info_cap_header`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
pub struct CapHeader {
    /// Capability id (`VFIO_REGION_INFO_CAP_SPARSE_MMAP` = 1).
    pub id: U16,
    /// Capability version.
    pub version: U16,
    /// Offset of the next capability from the start of the region info, 0 = last.
    pub next: U32,
}

/// Body of the sparse-mmap capability (after its [`CapHeader`]); followed by
/// `nr_areas` [`SparseArea`]s.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
pub struct SparseMmap {
    /// Number of areas that follow.
    pub nr_areas: U32,
    /// Reserved, zero.
    pub reserved: U32,
}

/// `struct vfio_region_sparse_mmap_area`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
pub struct SparseArea {
    /// Offset inside the region (added to the region's mmap offset).
    pub offset: U64,
    /// Length of the area.
    pub size: U64,
}

/// Sparse-mmap capability version we send.
pub const SPARSE_MMAP_CAP_VERSION: u16 = 1;

/// `VFIO_USER_DEVICE_GET_IRQ_INFO` request and reply.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
pub struct IrqInfo {
    /// Maximum (request) / needed (reply) payload.
    pub argsz: U32,
    /// `VFIO_IRQ_INFO_*`.
    pub flags: U32,
    /// Interrupt type index.
    pub index: U32,
    /// Number of interrupts of that type.
    pub count: U32,
}

/// `VFIO_USER_DEVICE_SET_IRQS` request; followed by `count` bool bytes for
/// `DATA_BOOL`, nothing otherwise (eventfds travel as `SCM_RIGHTS`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
pub struct IrqSet {
    /// The request payload size including data.
    pub argsz: U32,
    /// `VFIO_IRQ_SET_DATA_*` | `VFIO_IRQ_SET_ACTION_*`.
    pub flags: U32,
    /// Interrupt type index.
    pub index: U32,
    /// First sub-index.
    pub start: U32,
    /// Number of sub-indexes.
    pub count: U32,
}

/// `VFIO_USER_REGION_READ` / `VFIO_USER_REGION_WRITE` request and reply
/// prefix; data follows (write request, read reply).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
pub struct RegionAccess {
    /// Offset inside the region.
    pub offset: U64,
    /// Region index.
    pub region: U32,
    /// Bytes to transfer.
    pub count: U32,
}

pub const HEADER_SIZE: usize = size_of::<Header>();

const _: () = assert!(size_of::<Header>() == 16);
const _: () = assert!(size_of::<Version>() == 4);
const _: () = assert!(size_of::<DmaMap>() == 32);
const _: () = assert!(size_of::<DmaUnmap>() == 24);
const _: () = assert!(size_of::<DeviceInfo>() == 16);
const _: () = assert!(size_of::<RegionInfo>() == 32);
const _: () = assert!(size_of::<CapHeader>() == 8);
const _: () = assert!(size_of::<SparseMmap>() == 8);
const _: () = assert!(size_of::<SparseArea>() == 16);
const _: () = assert!(size_of::<IrqInfo>() == 16);
const _: () = assert!(size_of::<IrqSet>() == 20);
const _: () = assert!(size_of::<RegionAccess>() == 16);

/// `usize` -> `u32` for sizes that are bounded by [`super::MAX_MSG_SIZE`].
pub fn len_u32(len: usize) -> u32 {
    u32::try_from(len).unwrap_or(u32::MAX)
}

/// Build a complete message: header (with `msg_size` filled in) + `parts`.
pub fn message(msg_id: u16, command: u16, flags: u32, error_no: u32, parts: &[&[u8]]) -> Vec<u8> {
    let body_len: usize = parts.iter().map(|p| p.len()).sum();
    let mut out = Vec::with_capacity(HEADER_SIZE + body_len);
    let hdr = Header {
        msg_id: msg_id.into(),
        command: command.into(),
        msg_size: len_u32(HEADER_SIZE + body_len).into(),
        flags: flags.into(),
        error_no: error_no.into(),
    };
    out.extend_from_slice(hdr.as_bytes());
    for p in parts {
        out.extend_from_slice(p);
    }
    out
}
