//! Identify data structures (CNS 00h namespace, 01h controller, 03h
//! namespace identification descriptors).

use crate::{Le16, Le32, Le64};
use zerocopy::{FromBytes, FromZeros, Immutable, IntoBytes, KnownLayout, Unaligned};

/// LeapIO's vendor ID (not PCI-SIG assigned; drivers bind by class code):
/// Identify Controller VID and SSVID of every front end, and the PCI
/// vendor of the functions the host-driver serves.
pub const VENDOR_ID: u16 = 0x4c45;

/// Identify CNS values.
pub struct Cns;
impl Cns {
    pub const NAMESPACE: u8 = 0x00;
    pub const CONTROLLER: u8 = 0x01;
    pub const ACTIVE_NAMESPACES: u8 = 0x02;
    pub const NS_DESCRIPTORS: u8 = 0x03;
    pub const NVM_SET_LIST: u8 = 0x04;
    pub const CS_NAMESPACE: u8 = 0x05;
    pub const CS_CONTROLLER: u8 = 0x06;
    pub const CS_ACTIVE_NAMESPACES: u8 = 0x07;
    pub const NS_CS_INDEPENDENT: u8 = 0x08;
    pub const ALLOCATED_NAMESPACES: u8 = 0x10;
    pub const IO_COMMAND_SETS: u8 = 0x1c;
}

/// Power state descriptor (32 bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
pub struct PowerState {
    /// Maximum power in centiwatts (MXPS = 0).
    pub mp: Le16,
    pub rsvd2: u8,
    pub flags: u8,
    pub enlat: Le32,
    pub exlat: Le32,
    pub rrt: u8,
    pub rrl: u8,
    pub rwt: u8,
    pub rwl: u8,
    pub idlp: Le16,
    pub ips: u8,
    pub rsvd19: u8,
    pub actp: Le16,
    pub apw: u8,
    pub rsvd23: [u8; 9],
}
const _: () = assert!(core::mem::size_of::<PowerState>() == 32);

/// Identify Controller data structure (CNS 01h), 4096 bytes.
#[repr(C)]
#[derive(Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
pub struct IdentifyController {
    pub vid: Le16,
    pub ssvid: Le16,
    pub sn: [u8; 20],
    pub mn: [u8; 40],
    pub fr: [u8; 8],
    pub rab: u8,
    pub ieee: [u8; 3],
    pub cmic: u8,
    pub mdts: u8,
    pub cntlid: Le16,
    pub ver: Le32,
    pub rtd3r: Le32,
    pub rtd3e: Le32,
    pub oaes: Le32,
    pub ctratt: Le32,
    pub rrls: Le16,
    pub rsvd102: [u8; 9],
    pub cntrltype: u8,
    pub fguid: [u8; 16],
    pub crdt: [Le16; 3],
    pub rsvd134: [u8; 122],
    pub oacs: Le16,
    pub acl: u8,
    pub aerl: u8,
    pub frmw: u8,
    pub lpa: u8,
    pub elpe: u8,
    pub npss: u8,
    pub avscc: u8,
    pub apsta: u8,
    pub wctemp: Le16,
    pub cctemp: Le16,
    pub mtfa: Le16,
    pub hmpre: Le32,
    pub hmmin: Le32,
    pub tnvmcap: [u8; 16],
    pub unvmcap: [u8; 16],
    pub rpmbs: Le32,
    pub edstt: Le16,
    pub dsto: u8,
    pub fwug: u8,
    pub kas: Le16,
    pub hctma: Le16,
    pub mntmt: Le16,
    pub mxtmt: Le16,
    pub sanicap: Le32,
    pub hmminds: Le32,
    pub hmmaxd: Le16,
    pub nsetidmax: Le16,
    pub endgidmax: Le16,
    pub anatt: u8,
    pub anacap: u8,
    pub anagrpmax: Le32,
    pub nanagrpid: Le32,
    pub pels: Le32,
    pub rsvd356: [u8; 156],
    pub sqes: u8,
    pub cqes: u8,
    pub maxcmd: Le16,
    pub nn: Le32,
    pub oncs: Le16,
    pub fuses: Le16,
    pub fna: u8,
    pub vwc: u8,
    pub awun: Le16,
    pub awupf: Le16,
    pub icsvscc: u8,
    pub nwpc: u8,
    pub acwu: Le16,
    pub rsvd534: Le16,
    pub sgls: Le32,
    pub mnan: Le32,
    pub rsvd544: [u8; 224],
    pub subnqn: [u8; 256],
    pub rsvd1024: [u8; 768],
    /// NVMe over Fabrics fields (I/O queue command/response capsule sizes...).
    pub fabrics: [u8; 256],
    pub psd: [PowerState; 32],
    pub vs: [u8; 1024],
}
const _: () = assert!(core::mem::size_of::<IdentifyController>() == 4096);

/// OACS bit 8: Doorbell Buffer Config supported.
pub const OACS_DBBUF: u16 = 1 << 8;
/// ONCS bits.
pub const ONCS_DSM: u16 = 1 << 2;
pub const ONCS_WRITE_ZEROES: u16 = 1 << 3;
/// LPA bit 1: Commands Supported and Effects log page supported.
pub const LPA_CMD_EFFECTS: u8 = 1 << 1;

impl IdentifyController {
    pub fn zeroed() -> IdentifyController {
        FromZeros::new_zeroed()
    }
}

/// Write `s` into a space-padded ASCII field (serial, model, firmware).
pub fn put_ascii(field: &mut [u8], s: &str) {
    field.fill(b' ');
    for (d, c) in field
        .iter_mut()
        .zip(s.bytes().filter(|b| b.is_ascii_graphic() || *b == b' '))
    {
        *d = c;
    }
}

/// Read a space-padded ASCII field back as a trimmed string.
pub fn get_ascii(field: &[u8]) -> String {
    String::from_utf8_lossy(field)
        .trim_end_matches([' ', '\0'])
        .to_string()
}

/// LBA format descriptor (Identify Namespace LBAF entries).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
pub struct LbaFormat {
    pub ms: Le16,
    /// LBA data size as a power of two.
    pub lbads: u8,
    /// Relative performance (bits 1:0).
    pub rp: u8,
}
const _: () = assert!(core::mem::size_of::<LbaFormat>() == 4);

/// Identify Namespace data structure (CNS 00h), 4096 bytes.
#[repr(C)]
#[derive(Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
pub struct IdentifyNamespace {
    pub nsze: Le64,
    pub ncap: Le64,
    pub nuse: Le64,
    pub nsfeat: u8,
    pub nlbaf: u8,
    pub flbas: u8,
    pub mc: u8,
    pub dpc: u8,
    pub dps: u8,
    pub nmic: u8,
    pub rescap: u8,
    pub fpi: u8,
    pub dlfeat: u8,
    pub nawun: Le16,
    pub nawupf: Le16,
    pub nacwu: Le16,
    pub nabsn: Le16,
    pub nabo: Le16,
    pub nabspf: Le16,
    pub noiob: Le16,
    pub nvmcap: [u8; 16],
    pub npwg: Le16,
    pub npwa: Le16,
    pub npdg: Le16,
    pub npda: Le16,
    pub nows: Le16,
    pub rsvd74: [u8; 18],
    pub anagrpid: Le32,
    pub rsvd96: [u8; 3],
    pub nsattr: u8,
    pub nvmsetid: Le16,
    pub endgid: Le16,
    pub nguid: [u8; 16],
    pub eui64: [u8; 8],
    pub lbaf: [LbaFormat; 16],
    pub rsvd192: [u8; 192],
    pub vs: [u8; 3712],
}
const _: () = assert!(core::mem::size_of::<IdentifyNamespace>() == 4096);

impl IdentifyNamespace {
    pub fn zeroed() -> IdentifyNamespace {
        FromZeros::new_zeroed()
    }
}

/// Namespace identification descriptor types (CNS 03h).
pub struct NidType;
impl NidType {
    pub const EUI64: u8 = 1;
    pub const NGUID: u8 = 2;
    pub const UUID: u8 = 3;
    pub const CSI: u8 = 4;
}

/// Header of one namespace identification descriptor.
#[repr(C)]
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
pub struct NidHeader {
    pub nidt: u8,
    pub nidl: u8,
    pub rsvd: Le16,
}
const _: () = assert!(core::mem::size_of::<NidHeader>() == 4);

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::offset_of;

    #[test]
    fn controller_offsets_match_the_spec() {
        assert_eq!(offset_of!(IdentifyController, mdts), 77);
        assert_eq!(offset_of!(IdentifyController, ver), 80);
        assert_eq!(offset_of!(IdentifyController, cntrltype), 111);
        assert_eq!(offset_of!(IdentifyController, oacs), 256);
        assert_eq!(offset_of!(IdentifyController, kas), 320);
        assert_eq!(offset_of!(IdentifyController, sqes), 512);
        assert_eq!(offset_of!(IdentifyController, nn), 516);
        assert_eq!(offset_of!(IdentifyController, vwc), 525);
        assert_eq!(offset_of!(IdentifyController, sgls), 536);
        assert_eq!(offset_of!(IdentifyController, subnqn), 768);
        assert_eq!(offset_of!(IdentifyController, psd), 2048);
    }

    #[test]
    fn namespace_offsets_match_the_spec() {
        assert_eq!(offset_of!(IdentifyNamespace, dlfeat), 33);
        assert_eq!(offset_of!(IdentifyNamespace, nvmcap), 48);
        assert_eq!(offset_of!(IdentifyNamespace, anagrpid), 92);
        assert_eq!(offset_of!(IdentifyNamespace, nguid), 104);
        assert_eq!(offset_of!(IdentifyNamespace, eui64), 120);
        assert_eq!(offset_of!(IdentifyNamespace, lbaf), 128);
    }

    #[test]
    fn ascii_fields_are_space_padded() {
        let mut f = [0u8; 8];
        put_ascii(&mut f, "ab\u{7}c");
        assert_eq!(&f, b"abc     ");
        assert_eq!(get_ascii(&f), "abc");
    }
}
