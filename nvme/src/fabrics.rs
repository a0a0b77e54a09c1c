//! NVMe over Fabrics 1.1: Fabrics commands (opcode 7Fh), the Connect data,
//! properties, SGL descriptors used by message-based transports and the
//! Discovery log page (LID 70h).

use crate::{Le16, Le32, Le64, Sqe, Status};
use zerocopy::{FromBytes, FromZeros, Immutable, IntoBytes, KnownLayout, Unaligned};

/// Opcode of every Fabrics command.
pub const FABRICS_OPCODE: u8 = 0x7f;

/// Fabrics command types (byte 4 of a Fabrics command).
pub struct FcType;
impl FcType {
    pub const PROPERTY_SET: u8 = 0x00;
    pub const CONNECT: u8 = 0x01;
    pub const PROPERTY_GET: u8 = 0x04;
    pub const AUTH_SEND: u8 = 0x05;
    pub const AUTH_RECV: u8 = 0x06;
    pub const DISCONNECT: u8 = 0x08;
}

/// The well-known NQN of discovery controllers.
pub const DISCOVERY_NQN: &str = "nqn.2014-08.org.nvmexpress.discovery";
/// Log page identifier of the Discovery log page.
pub const LID_DISCOVERY: u8 = 0x70;
/// Connect CNTLID meaning "any controller" (dynamic controller model).
pub const CNTLID_DYNAMIC: u16 = 0xffff;

/// Fabrics-specific status codes (SCT 1) and generic SGL codes.
pub struct FabricsStatus;
impl FabricsStatus {
    pub const CONNECT_INCOMPATIBLE_FORMAT: Status = Status::specific(0x80).dnr();
    pub const CONNECT_CONTROLLER_BUSY: Status = Status::specific(0x81);
    pub const CONNECT_INVALID_PARAMETERS: Status = Status::specific(0x82).dnr();
    pub const CONNECT_RESTART_DISCOVERY: Status = Status::specific(0x83).dnr();
    pub const CONNECT_INVALID_HOST: Status = Status::specific(0x84).dnr();
    pub const INVALID_QUEUE_TYPE: Status = Status::specific(0x85).dnr();
    /// Generic 0Fh: Data SGL Length Invalid.
    pub const DATA_SGL_LENGTH_INVALID: Status = Status::generic(0x0f).dnr();
    /// Generic 11h: SGL Descriptor Type Invalid.
    pub const SGL_DESCRIPTOR_TYPE_INVALID: Status = Status::generic(0x11).dnr();
    /// Generic 16h: SGL Offset Invalid.
    pub const SGL_OFFSET_INVALID: Status = Status::generic(0x16).dnr();
    /// Generic 22h: Transient Transport Error (e.g. a data digest error).
    pub const TRANSIENT_TRANSPORT_ERROR: Status = Status::generic(0x22);
    /// 91h: Authentication Required (a queue that has not authenticated
    /// yet gets this for every command but AUTH_Send/AUTH_Recv).
    pub const AUTH_REQUIRED: Status = Status::specific(0x91).dnr();
}

/// Connect response dword 0, AUTHREQ (bits 23:16), bit 17: ATR, an
/// authentication transaction is required on this queue.
pub const CONNECT_AUTHREQ_ATR: u32 = 1 << 17;
/// AUTHREQ bit 18: ASCR, authentication with secure channel concatenation.
pub const CONNECT_AUTHREQ_ASCR: u32 = 1 << 18;

/// Completion dword 0 of a failed Connect with Invalid Parameters: IATTR
/// (bit 16: the offset is in the Connect data, not the SQE) and IPO.
pub fn connect_invalid_dw0(in_data: bool, offset: u16) -> u32 {
    (u32::from(in_data) << 16) | u32::from(offset)
}

/// Common layout of a Fabrics command (64 bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
pub struct FabricsCmd {
    pub opcode: u8,
    pub rsvd1: u8,
    pub cid: Le16,
    pub fctype: u8,
    pub rsvd5: [u8; 19],
    /// SGL descriptor 1 (bytes 24..40).
    pub sgl1: SglDescriptor,
    /// Fabrics command type specific (bytes 40..64).
    pub specific: [u8; 24],
}
const _: () = assert!(core::mem::size_of::<FabricsCmd>() == 64);

/// Connect command (FCTYPE 01h).
#[repr(C)]
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
pub struct ConnectCmd {
    pub opcode: u8,
    pub rsvd1: u8,
    pub cid: Le16,
    pub fctype: u8,
    pub rsvd5: [u8; 19],
    pub sgl1: SglDescriptor,
    /// Record format, 0.
    pub recfmt: Le16,
    pub qid: Le16,
    /// Submission queue size, 0's based.
    pub sqsize: Le16,
    /// Bit 2: disable SQ flow control.
    pub cattr: u8,
    pub rsvd47: u8,
    /// Keep alive timeout in milliseconds (admin queue).
    pub kato: Le32,
    pub rsvd52: [u8; 12],
}
const _: () = assert!(core::mem::size_of::<ConnectCmd>() == 64);

/// Byte offsets in the Connect command (for IPO).
pub mod connect_off {
    pub const RECFMT: u16 = 40;
    pub const QID: u16 = 42;
    pub const SQSIZE: u16 = 44;
    pub const CATTR: u16 = 46;
    pub const KATO: u16 = 48;
}

/// Connect CATTR bit 2: the host disables SQ flow control.
pub const CATTR_DISABLE_SQFLOW: u8 = 1 << 2;

/// Data of a Connect command (1024 bytes).
#[repr(C)]
#[derive(Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
pub struct ConnectData {
    pub hostid: [u8; 16],
    pub cntlid: Le16,
    pub rsvd18: [u8; 238],
    pub subnqn: [u8; 256],
    pub hostnqn: [u8; 256],
    pub rsvd768: [u8; 256],
}
const _: () = assert!(core::mem::size_of::<ConnectData>() == 1024);

/// Authentication Send (FCTYPE 05h) and Authentication Receive (FCTYPE
/// 06h): a security protocol's messages as command data.
#[repr(C)]
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
pub struct AuthCmd {
    pub opcode: u8,
    pub rsvd1: u8,
    pub cid: Le16,
    pub fctype: u8,
    pub rsvd5: [u8; 19],
    pub sgl1: SglDescriptor,
    pub rsvd40: u8,
    /// SP Specific 0 and 1.
    pub spsp0: u8,
    pub spsp1: u8,
    /// Security protocol (E9h: DH-HMAC-CHAP).
    pub secp: u8,
    /// Transfer length (AUTH_Send) or allocation length (AUTH_Recv).
    pub len: Le32,
    pub rsvd48: [u8; 16],
}
const _: () = assert!(core::mem::size_of::<AuthCmd>() == 64);

/// Byte offsets in the Connect data (for IPO with IATTR set).
pub mod connect_data_off {
    pub const HOSTID: u16 = 0;
    pub const CNTLID: u16 = 16;
    pub const SUBNQN: u16 = 256;
    pub const HOSTNQN: u16 = 512;
}

impl ConnectData {
    pub fn zeroed() -> ConnectData {
        FromZeros::new_zeroed()
    }
    pub fn subnqn(&self) -> Option<&str> {
        nqn_str(&self.subnqn)
    }
    pub fn hostnqn(&self) -> Option<&str> {
        nqn_str(&self.hostnqn)
    }
}

/// A NUL-terminated NQN field as a string (None if not valid UTF-8, empty or
/// not terminated).
pub fn nqn_str(field: &[u8]) -> Option<&str> {
    let end = field.iter().position(|&b| b == 0)?;
    let s = core::str::from_utf8(&field[..end]).ok()?;
    (!s.is_empty()).then_some(s)
}

/// Copy `s` into a NUL-padded field (truncated to leave a NUL).
pub fn put_nqn(field: &mut [u8], s: &str) {
    field.fill(0);
    let n = s.len().min(field.len().saturating_sub(1));
    field[..n].copy_from_slice(&s.as_bytes()[..n]);
}

/// A Connect command for queue `qid` (SQSIZE `sqsize`, 0's based; KATO
/// `kato` ms) and its data: host `hostid` (`hostnqn`) asks for controller
/// `cntlid` of `subnqn`. CID and SGL1 are the transport's to set.
pub fn connect(
    qid: u16,
    sqsize: u16,
    kato: u32,
    hostid: [u8; 16],
    cntlid: u16,
    hostnqn: &str,
    subnqn: &str,
) -> (ConnectCmd, ConnectData) {
    let mut c = ConnectCmd::new_zeroed();
    c.opcode = FABRICS_OPCODE;
    c.fctype = FcType::CONNECT;
    c.qid = qid.into();
    c.sqsize = sqsize.into();
    c.kato = kato.into();
    let mut d = ConnectData::new_zeroed();
    d.hostid = hostid;
    d.cntlid = cntlid.into();
    put_nqn(&mut d.subnqn, subnqn);
    put_nqn(&mut d.hostnqn, hostnqn);
    (c, d)
}

/// Property Get (FCTYPE 04h) and Property Set (FCTYPE 00h).
#[repr(C)]
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
pub struct PropertyCmd {
    pub opcode: u8,
    pub rsvd1: u8,
    pub cid: Le16,
    pub fctype: u8,
    pub rsvd5: [u8; 35],
    /// Bits 2:0: size, 0 = 4 bytes, 1 = 8 bytes.
    pub attrib: u8,
    pub rsvd41: [u8; 3],
    pub offset: Le32,
    /// Property Set only.
    pub value: Le64,
    pub rsvd56: [u8; 8],
}
const _: () = assert!(core::mem::size_of::<PropertyCmd>() == 64);

impl PropertyCmd {
    /// Property size in bytes (4 or 8), None if reserved.
    pub fn size(&self) -> Option<u8> {
        match self.attrib & 0x7 {
            0 => Some(4),
            1 => Some(8),
            _ => None,
        }
    }
}

/// SGL descriptor (16 bytes) as used in SQE bytes 24..40.
#[repr(C)]
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    FromBytes,
    IntoBytes,
    KnownLayout,
    Immutable,
    Unaligned,
)]
pub struct SglDescriptor {
    pub addr: Le64,
    pub length: Le32,
    pub rsvd: [u8; 3],
    /// Bits 7:4 descriptor type, bits 3:0 subtype.
    pub sgl_type: u8,
}
const _: () = assert!(core::mem::size_of::<SglDescriptor>() == 16);

/// SGL identifier of a Data Block descriptor with an offset address: data
/// is in the capsule, `addr` is its offset from the start of that data.
pub const SGL_IN_CAPSULE: u8 = 0x01;
/// SGL identifier of a Transport SGL Data Block descriptor: data moves with
/// the transport's own PDUs (NVMe/TCP R2T/H2CData, C2HData).
pub const SGL_TRANSPORT_DATA_BLOCK: u8 = 0x5a;

impl SglDescriptor {
    /// Read the first SGL descriptor out of a command.
    pub fn of(sqe: &Sqe) -> SglDescriptor {
        // Bytes 24..40 of the SQE are PRP1/PRP2 or SGL1.
        let b = &sqe.as_bytes()[24..40];
        SglDescriptor::read_from_bytes(b).unwrap_or_default()
    }
    /// Store the descriptor into a command (and select SGLs in PSDT).
    pub fn store(&self, sqe: &mut Sqe) {
        let b = self.as_bytes();
        sqe.prp1 = Le64::from_bytes(b[0..8].try_into().unwrap_or([0; 8]));
        sqe.prp2 = Le64::from_bytes(b[8..16].try_into().unwrap_or([0; 8]));
        sqe.flags = (sqe.flags & 0x3f) | 0x40;
    }
    pub fn in_capsule(offset: u64, len: u32) -> SglDescriptor {
        SglDescriptor {
            addr: offset.into(),
            length: len.into(),
            rsvd: [0; 3],
            sgl_type: SGL_IN_CAPSULE,
        }
    }
    pub fn transport(len: u32) -> SglDescriptor {
        SglDescriptor {
            addr: 0.into(),
            length: len.into(),
            rsvd: [0; 3],
            sgl_type: SGL_TRANSPORT_DATA_BLOCK,
        }
    }
}

/// Discovery log page header (1024 bytes).
#[repr(C)]
#[derive(Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
pub struct DiscoveryLogHeader {
    pub genctr: Le64,
    pub numrec: Le64,
    pub recfmt: Le16,
    pub rsvd18: [u8; 1006],
}
const _: () = assert!(core::mem::size_of::<DiscoveryLogHeader>() == 1024);

/// Discovery log page entry (1024 bytes).
#[repr(C)]
#[derive(Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
pub struct DiscoveryLogEntry {
    /// Transport type: 1 = RDMA, 3 = TCP.
    pub trtype: u8,
    /// Address family: 1 = IPv4, 2 = IPv6.
    pub adrfam: u8,
    /// 1 referral, 2 NVM subsystem, 3 current discovery subsystem.
    pub subtype: u8,
    /// Transport requirements.
    pub treq: u8,
    pub portid: Le16,
    pub cntlid: Le16,
    /// Admin max SQ size.
    pub asqsz: Le16,
    pub eflags: Le16,
    pub rsvd12: [u8; 20],
    pub trsvcid: [u8; 32],
    pub rsvd64: [u8; 192],
    pub subnqn: [u8; 256],
    pub traddr: [u8; 256],
    /// Transport specific address subtype; TCP: byte 0 is SECTYPE.
    pub tsas: [u8; 256],
}
const _: () = assert!(core::mem::size_of::<DiscoveryLogEntry>() == 1024);

/// Discovery log entry values.
pub struct Disc;
impl Disc {
    pub const TRTYPE_RDMA: u8 = 1;
    pub const TRTYPE_TCP: u8 = 3;
    /// RDMA TSAS: a reliable connected queue pair, no particular RDMA
    /// provider, connections through the RDMA CM.
    pub const RDMA_QPTYPE_CONNECTED: u8 = 1;
    pub const RDMA_PRTYPE_NOT_SPECIFIED: u8 = 1;
    pub const RDMA_CMS_RDMA_CM: u8 = 1;
    pub const ADRFAM_IPV4: u8 = 1;
    pub const ADRFAM_IPV6: u8 = 2;
    pub const SUBTYPE_REFERRAL: u8 = 1;
    pub const SUBTYPE_NVME: u8 = 2;
    pub const SUBTYPE_CURRENT_DISCOVERY: u8 = 3;
    /// TREQ: secure channel not specified.
    pub const TREQ_NOT_SPECIFIED: u8 = 0;
}

impl DiscoveryLogEntry {
    pub fn zeroed() -> DiscoveryLogEntry {
        FromZeros::new_zeroed()
    }
}

impl DiscoveryLogHeader {
    pub fn zeroed() -> DiscoveryLogHeader {
        FromZeros::new_zeroed()
    }
}

/// Identify Controller bytes 1792..2047 for NVMe over Fabrics.
#[repr(C)]
#[derive(Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
pub struct IdentifyFabrics {
    /// I/O queue command capsule supported size, in 16-byte units.
    pub ioccsz: Le32,
    /// I/O queue response capsule supported size, in 16-byte units.
    pub iorcsz: Le32,
    /// In-capsule data offset, in 16-byte units.
    pub icdoff: Le16,
    /// Bit 0: static controller model.
    pub fcatt: u8,
    /// Maximum SGL data block descriptors.
    pub msdbd: u8,
    pub ofcs: Le16,
    pub rsvd: [u8; 242],
}
const _: () = assert!(core::mem::size_of::<IdentifyFabrics>() == 256);

/// SGLS bits (Identify Controller bytes 536..539).
pub struct Sgls;
impl Sgls {
    /// SGLs supported, no alignment requirement.
    pub const SUPPORTED: u32 = 1 << 0;
    /// Keyed SGL Data Block descriptor supported (RDMA).
    pub const KEYED_DATA_BLOCK: u32 = 1 << 2;
    /// Address field of an SGL Data Block may be an offset (in-capsule data).
    pub const OFFSET: u32 = 1 << 20;
    /// Transport SGL Data Block descriptor supported.
    pub const TRANSPORT_DATA_BLOCK: u32 = 1 << 21;
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::offset_of;

    #[test]
    fn offsets_match_the_spec() {
        assert_eq!(offset_of!(ConnectCmd, recfmt), 40);
        assert_eq!(offset_of!(ConnectCmd, qid), 42);
        assert_eq!(offset_of!(ConnectCmd, sqsize), 44);
        assert_eq!(offset_of!(ConnectCmd, kato), 48);
        assert_eq!(offset_of!(ConnectData, cntlid), 16);
        assert_eq!(offset_of!(ConnectData, subnqn), 256);
        assert_eq!(offset_of!(ConnectData, hostnqn), 512);
        assert_eq!(offset_of!(PropertyCmd, attrib), 40);
        assert_eq!(offset_of!(AuthCmd, spsp0), 41);
        assert_eq!(offset_of!(AuthCmd, secp), 43);
        assert_eq!(offset_of!(AuthCmd, len), 44);
        assert_eq!(offset_of!(PropertyCmd, offset), 44);
        assert_eq!(offset_of!(PropertyCmd, value), 48);
        assert_eq!(offset_of!(DiscoveryLogEntry, trsvcid), 32);
        assert_eq!(offset_of!(DiscoveryLogEntry, subnqn), 256);
        assert_eq!(offset_of!(DiscoveryLogEntry, traddr), 512);
        assert_eq!(offset_of!(DiscoveryLogEntry, tsas), 768);
        assert_eq!(offset_of!(IdentifyFabrics, icdoff), 8);
        assert_eq!(offset_of!(IdentifyFabrics, msdbd), 11);
    }

    #[test]
    fn sgl_round_trips_through_an_sqe() {
        let mut sqe = Sqe::default();
        SglDescriptor::transport(8192).store(&mut sqe);
        assert_eq!(sqe.psdt(), 1);
        let d = SglDescriptor::of(&sqe);
        assert_eq!(d.sgl_type, SGL_TRANSPORT_DATA_BLOCK);
        assert_eq!(d.length.get(), 8192);
        assert_eq!(sqe.as_bytes()[39], 0x5a);
    }

    #[test]
    fn nqn_fields() {
        let mut d = ConnectData::zeroed();
        put_nqn(&mut d.subnqn, DISCOVERY_NQN);
        assert_eq!(d.subnqn(), Some(DISCOVERY_NQN));
        assert_eq!(d.hostnqn(), None);
        d.hostnqn.fill(b'a');
        assert_eq!(d.hostnqn(), None, "no terminator");
        assert_eq!(
            connect_invalid_dw0(true, connect_data_off::SUBNQN),
            0x1_0100
        );
    }
}
