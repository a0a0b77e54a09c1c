//! The Zoned Namespace Command Set (NVMe ZNS 1.1): its Identify pages, the
//! Zone Management commands' fields and the zone report.

use crate::{Le16, Le32, Le64};
use zerocopy::{FromBytes, FromZeros, Immutable, IntoBytes, KnownLayout, Unaligned};

/// Command Set Identifiers (CSI).
pub struct Csi;
impl Csi {
    pub const NVM: u8 = 0x00;
    pub const ZNS: u8 = 0x02;
}

/// CAP.CSS bit 6 (CAP bit 43): one or more I/O command sets are supported,
/// so the host may select CC.CSS = 110b.
pub const CAP_CSS_IOCS: u64 = 1 << 43;
/// CC.CSS values: NVM only, or every supported I/O command set.
pub const CC_CSS_NVM: u32 = 0b000;
pub const CC_CSS_ALL: u32 = 0b110;

/// Zone Send Actions (Zone Management Send CDW13 bits 7:0).
pub struct Zsa;
impl Zsa {
    pub const CLOSE: u8 = 0x01;
    pub const FINISH: u8 = 0x02;
    pub const OPEN: u8 = 0x03;
    pub const RESET: u8 = 0x04;
    pub const OFFLINE: u8 = 0x05;
    pub const SET_DESCRIPTOR_EXTENSION: u8 = 0x10;
}
/// Zone Management Send CDW13 bit 8: Select All.
pub const ZSEND_SELECT_ALL: u32 = 1 << 8;

/// Zone Receive Actions (Zone Management Receive CDW13 bits 7:0).
pub const ZRA_REPORT_ZONES: u8 = 0x00;
pub const ZRA_EXTENDED_REPORT_ZONES: u8 = 0x01;
/// Zone Management Receive CDW13 bit 16: Partial Report.
pub const ZRECV_PARTIAL: u32 = 1 << 16;

/// Zone Receive Action Specific Field (reporting options, CDW13 15:8).
pub struct Zrasf;
impl Zrasf {
    pub const ALL: u8 = 0x00;
    pub const EMPTY: u8 = 0x01;
    pub const IMPLICITLY_OPEN: u8 = 0x02;
    pub const EXPLICITLY_OPEN: u8 = 0x03;
    pub const CLOSED: u8 = 0x04;
    pub const FULL: u8 = 0x05;
    pub const READ_ONLY: u8 = 0x06;
    pub const OFFLINE: u8 = 0x07;
}

/// Zone states as reported (ZS, bits 7:4 of the descriptor's byte 1).
pub struct ZoneStateCode;
impl ZoneStateCode {
    pub const EMPTY: u8 = 0x1;
    pub const IMPLICITLY_OPEN: u8 = 0x2;
    pub const EXPLICITLY_OPEN: u8 = 0x3;
    pub const CLOSED: u8 = 0x4;
    pub const READ_ONLY: u8 = 0xd;
    pub const FULL: u8 = 0xe;
    pub const OFFLINE: u8 = 0xf;
}

/// Zone type: sequential write required.
pub const ZT_SEQUENTIAL_WRITE_REQUIRED: u8 = 0x2;
/// Zone attribute bit 0: Zone Finished by Controller.
pub const ZA_ZFC: u8 = 1 << 0;
/// OZCS bit 0: reads may cross zone boundaries.
pub const OZCS_RAZB: u16 = 1 << 0;

/// LBA Format Extension of the ZNS Identify Namespace (16 bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
pub struct ZnsLbaFormatExt {
    /// Zone size in logical blocks.
    pub zsze: Le64,
    /// Zone descriptor extension size (64-byte units).
    pub zdes: u8,
    pub rsvd9: [u8; 7],
}
const _: () = assert!(core::mem::size_of::<ZnsLbaFormatExt>() == 16);

/// I/O Command Set specific Identify Namespace for ZNS (CNS 05h, CSI 02h).
#[repr(C)]
#[derive(Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
pub struct IdentifyNamespaceZns {
    /// Zone Operation Characteristics.
    pub zoc: Le16,
    /// Optional Zoned Command Support.
    pub ozcs: Le16,
    /// Maximum Active Resources (0's based; FFFFFFFFh: no limit).
    pub mar: Le32,
    /// Maximum Open Resources (0's based; FFFFFFFFh: no limit).
    pub mor: Le32,
    /// Reset Recommended Limit, Finish Recommended Limit (seconds).
    pub rrl: Le32,
    pub frl: Le32,
    pub rsvd20: [u8; 2796],
    pub lbafe: [ZnsLbaFormatExt; 16],
    pub rsvd3072: [u8; 768],
    pub vs: [u8; 256],
}
const _: () = assert!(core::mem::size_of::<IdentifyNamespaceZns>() == 4096);

impl IdentifyNamespaceZns {
    pub fn zeroed() -> IdentifyNamespaceZns {
        FromZeros::new_zeroed()
    }
}

/// A zone descriptor of a report (64 bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
pub struct ZoneDescriptor {
    /// Zone type (bits 3:0).
    pub zt: u8,
    /// Zone state (bits 7:4).
    pub zs: u8,
    /// Zone attributes.
    pub za: u8,
    /// Zone attributes information.
    pub zai: u8,
    pub rsvd4: [u8; 4],
    /// Zone capacity (blocks).
    pub zcap: Le64,
    /// Zone start LBA.
    pub zslba: Le64,
    /// Write pointer.
    pub wp: Le64,
    pub rsvd32: [u8; 32],
}
const _: () = assert!(core::mem::size_of::<ZoneDescriptor>() == 64);

/// The header of a zone report (64 bytes), then the descriptors.
#[repr(C)]
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
pub struct ZoneReportHeader {
    /// Zones matching (or, with Partial Report, descriptors returned).
    pub nr_zones: Le64,
    pub rsvd8: [u8; 56],
}
const _: () = assert!(core::mem::size_of::<ZoneReportHeader>() == 64);
