//! NVMe/TCP Transport Specification 1.0: PDU headers, digests and a
//! streaming PDU parser.
//!
//! Every PDU starts with an 8-byte [`CommonHeader`]: type, flags, HLEN
//! (header length), PDO (offset of the data from the start of the PDU) and
//! PLEN (total length). After the header come an optional header digest
//! (CRC32C of the header), padding up to PDO, the data and an optional data
//! digest (CRC32C of the data). ICReq/ICResp and the TermReq PDUs never carry
//! digests.
//!
//! [`PduParser`] is fed bytes as they arrive from a socket and hands back
//! complete, validated PDUs ([`Pdu`]) or a [`PduError`] that says exactly
//! what is wrong and which Fatal Error Status a TermReq should carry. It
//! never buffers more than one PDU, and a PDU is never larger than the
//! limits it was configured with, so a peer cannot make it allocate more.

use crate::{Cqe, Le16, Le32, Sqe};
use core::fmt;
use core::ops::Range;
use zerocopy::{FromBytes, FromZeros, Immutable, IntoBytes, KnownLayout, Unaligned};

/// PDU types.
pub struct PduType;
impl PduType {
    pub const IC_REQ: u8 = 0x00;
    pub const IC_RESP: u8 = 0x01;
    pub const H2C_TERM_REQ: u8 = 0x02;
    pub const C2H_TERM_REQ: u8 = 0x03;
    pub const CAPSULE_CMD: u8 = 0x04;
    pub const CAPSULE_RESP: u8 = 0x05;
    pub const H2C_DATA: u8 = 0x06;
    pub const C2H_DATA: u8 = 0x07;
    pub const R2T: u8 = 0x09;
}

bitflags::bitflags! {
    /// Flags of a PDU's common header ([`CommonHeader::flags`]).
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct PduFlags: u8 {
        /// A header digest follows the header.
        const HDGST = 1 << 0;
        /// A data digest follows the data.
        const DDGST = 1 << 1;
        /// Last data PDU of a transfer (H2CData/C2HData).
        const DATA_LAST = 1 << 2;
        /// C2HData: the command succeeded, no CapsuleResp follows.
        const DATA_SUCCESS = 1 << 3;
    }
}

/// Fatal Error Status of a TermReq.
pub struct Fes;
impl Fes {
    pub const INVALID_PDU_HEADER_FIELD: u16 = 0x01;
    pub const PDU_SEQUENCE_ERROR: u16 = 0x02;
    pub const HEADER_DIGEST_ERROR: u16 = 0x03;
    pub const DATA_OUT_OF_RANGE: u16 = 0x04;
    pub const DATA_LIMIT_EXCEEDED: u16 = 0x05;
    pub const UNSUPPORTED_PARAMETER: u16 = 0x06;
}

/// ICReq/ICResp DGST bits.
pub const DGST_HEADER: u8 = 1 << 0;
pub const DGST_DATA: u8 = 1 << 1;
/// Length of a header or data digest.
pub const DIGEST_LEN: usize = 4;
/// Total length bounds of a TermReq PDU (header + offending header).
pub const TERM_REQ_MIN_PLEN: u32 = 24;
pub const TERM_REQ_MAX_PLEN: u32 = 152;
/// Smallest MAXH2CDATA a controller may announce.
pub const MIN_MAXH2CDATA: u32 = 4096;

/// The 8 bytes every PDU starts with.
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
pub struct CommonHeader {
    pub pdu_type: u8,
    pub flags: u8,
    pub hlen: u8,
    pub pdo: u8,
    pub plen: Le32,
}
const _: () = assert!(core::mem::size_of::<CommonHeader>() == 8);

impl CommonHeader {
    /// The flags, unknown bits kept.
    pub fn flags(&self) -> PduFlags {
        PduFlags::from_bits_retain(self.flags)
    }

    pub fn set_flags(&mut self, f: PduFlags) {
        self.flags = f.bits();
    }
}

/// Initialize Connection Request (host to controller), 128 bytes.
#[repr(C)]
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned,
)]
pub struct IcReq {
    pub ch: CommonHeader,
    /// PDU format version, 0.
    pub pfv: Le16,
    /// Host PDU data alignment, 0's based dwords.
    pub hpda: u8,
    /// DGST_HEADER / DGST_DATA requested.
    pub dgst: u8,
    /// Maximum outstanding R2Ts per command, 0's based.
    pub maxr2t: Le32,
    pub rsvd: [u8; 112],
}
const _: () = assert!(core::mem::size_of::<IcReq>() == 128);

/// Initialize Connection Response (controller to host), 128 bytes.
#[repr(C)]
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned,
)]
pub struct IcResp {
    pub ch: CommonHeader,
    pub pfv: Le16,
    /// Controller PDU data alignment, 0's based dwords.
    pub cpda: u8,
    /// Digests enabled for the connection.
    pub dgst: u8,
    /// Largest H2CData data length the controller accepts.
    pub maxh2cdata: Le32,
    pub rsvd: [u8; 112],
}
const _: () = assert!(core::mem::size_of::<IcResp>() == 128);

/// Byte offsets in an ICReq (FEI of an Unsupported Parameter TermReq).
pub mod icreq_off {
    pub const PFV: u32 = 8;
    pub const HPDA: u32 = 10;
    pub const DGST: u32 = 11;
    pub const MAXR2T: u32 = 12;
}

/// H2CTermReq / C2HTermReq header, 24 bytes; the data is the header of the
/// PDU in error.
#[repr(C)]
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned,
)]
pub struct TermReq {
    pub ch: CommonHeader,
    pub fes: Le16,
    /// Fatal error information (e.g. byte offset of the bad field).
    pub fei: Le32,
    pub rsvd: [u8; 10],
}
const _: () = assert!(core::mem::size_of::<TermReq>() == 24);

/// Command capsule header, 72 bytes; in-capsule data may follow.
#[repr(C)]
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
pub struct CapsuleCmd {
    pub ch: CommonHeader,
    pub sqe: Sqe,
}
const _: () = assert!(core::mem::size_of::<CapsuleCmd>() == 72);

/// Response capsule, 24 bytes.
#[repr(C)]
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned,
)]
pub struct CapsuleResp {
    pub ch: CommonHeader,
    pub cqe: Cqe,
}
const _: () = assert!(core::mem::size_of::<CapsuleResp>() == 24);

/// H2CData and C2HData header, 24 bytes.
#[repr(C)]
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned,
)]
pub struct DataHdr {
    pub ch: CommonHeader,
    /// Command capsule CID.
    pub cccid: Le16,
    /// Transfer tag from the R2T (H2CData), reserved in C2HData.
    pub ttag: Le16,
    /// Offset of this data in the command's data.
    pub datao: Le32,
    pub datal: Le32,
    pub rsvd: [u8; 4],
}
const _: () = assert!(core::mem::size_of::<DataHdr>() == 24);

/// Byte offsets in a data PDU header.
pub mod data_off {
    pub const CCCID: u32 = 8;
    pub const TTAG: u32 = 10;
    pub const DATAO: u32 = 12;
    pub const DATAL: u32 = 16;
}

/// Ready to Transfer, 24 bytes.
#[repr(C)]
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned,
)]
pub struct R2t {
    pub ch: CommonHeader,
    pub cccid: Le16,
    pub ttag: Le16,
    pub r2to: Le32,
    pub r2tl: Le32,
    pub rsvd: [u8; 4],
}
const _: () = assert!(core::mem::size_of::<R2t>() == 24);

macro_rules! new_pdu {
    ($t:ty, $kind:expr) => {
        impl $t {
            /// A zeroed header of this type with TYPE and HLEN set.
            pub fn new() -> $t {
                let mut h: $t = FromZeros::new_zeroed();
                h.ch.pdu_type = $kind;
                h.ch.hlen = header_len($kind).unwrap_or(0);
                h
            }
        }
        impl Default for $t {
            fn default() -> $t {
                <$t>::new()
            }
        }
    };
}
new_pdu!(IcReq, PduType::IC_REQ);
new_pdu!(IcResp, PduType::IC_RESP);
new_pdu!(CapsuleCmd, PduType::CAPSULE_CMD);
new_pdu!(CapsuleResp, PduType::CAPSULE_RESP);
new_pdu!(R2t, PduType::R2T);

impl TermReq {
    pub fn new(pdu_type: u8, fes: u16, fei: u32) -> TermReq {
        let mut h: TermReq = FromZeros::new_zeroed();
        h.ch.pdu_type = pdu_type;
        h.ch.hlen = 24;
        h.fes = fes.into();
        h.fei = fei.into();
        h
    }
}

impl DataHdr {
    pub fn new(pdu_type: u8) -> DataHdr {
        let mut h: DataHdr = FromZeros::new_zeroed();
        h.ch.pdu_type = pdu_type;
        h.ch.hlen = 24;
        h
    }
}

/// Header length (HLEN) of a PDU type, None for unknown types.
pub const fn header_len(pdu_type: u8) -> Option<u8> {
    match pdu_type {
        PduType::IC_REQ | PduType::IC_RESP => Some(128),
        PduType::CAPSULE_CMD => Some(72),
        PduType::H2C_TERM_REQ
        | PduType::C2H_TERM_REQ
        | PduType::CAPSULE_RESP
        | PduType::H2C_DATA
        | PduType::C2H_DATA
        | PduType::R2T => Some(24),
        _ => None,
    }
}

/// Whether PDUs of this type carry header/data digests when negotiated.
pub const fn uses_digests(pdu_type: u8) -> bool {
    !matches!(
        pdu_type,
        PduType::IC_REQ | PduType::IC_RESP | PduType::H2C_TERM_REQ | PduType::C2H_TERM_REQ
    )
}

/// CRC32C as NVMe/TCP digests use it (stored little-endian).
pub fn crc32c(data: &[u8]) -> u32 {
    crc32c::crc32c(data)
}

/// Digests enabled on a connection.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Digests {
    pub header: bool,
    pub data: bool,
}

impl Digests {
    /// From an ICReq/ICResp DGST byte.
    pub fn from_dgst(dgst: u8) -> Digests {
        Digests {
            header: dgst & DGST_HEADER != 0,
            data: dgst & DGST_DATA != 0,
        }
    }
    pub fn to_dgst(self) -> u8 {
        (u8::from(self.header) * DGST_HEADER) | (u8::from(self.data) * DGST_DATA)
    }
    fn hd(self, pdu_type: u8) -> usize {
        if self.header && uses_digests(pdu_type) {
            DIGEST_LEN
        } else {
            0
        }
    }
    fn dd(self, pdu_type: u8, data_len: usize) -> usize {
        if self.data && uses_digests(pdu_type) && data_len > 0 {
            DIGEST_LEN
        } else {
            0
        }
    }
}

/// Where things go in an outgoing PDU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    /// Offset of the data (PDO), 0 without data.
    pub pdo: usize,
    /// Total length (PLEN).
    pub plen: usize,
}

/// Layout of an outgoing PDU of `pdu_type` with `data_len` bytes of data,
/// the data aligned to `align` bytes (the peer's PDA: `(pda + 1) * 4`).
pub fn layout(pdu_type: u8, data_len: usize, dg: Digests, align: usize) -> Layout {
    let hlen = usize::from(header_len(pdu_type).unwrap_or(0));
    let hend = hlen + dg.hd(pdu_type);
    if data_len == 0 {
        return Layout { pdo: 0, plen: hend };
    }
    let pdo = if uses_digests(pdu_type) {
        hend.next_multiple_of(align.max(1))
    } else {
        hend
    };
    Layout {
        pdo,
        plen: pdo + data_len + dg.dd(pdu_type, data_len),
    }
}

/// Fill in FLAGS (digest bits), HLEN, PDO and PLEN of a PDU laid out in
/// `pdu` (header first, data at its layout's PDO), then compute and store
/// the digests. `pdu.len()` must be the layout's PLEN and `data_len` the
/// data length.
pub fn seal(pdu: &mut [u8], data_len: usize, dg: Digests) {
    let pdu_type = pdu.first().copied().unwrap_or(0);
    let Some(hlen) = header_len(pdu_type) else {
        return;
    };
    let hlen_us = usize::from(hlen);
    let hd = dg.hd(pdu_type);
    let dd = dg.dd(pdu_type, data_len);
    if pdu.len() < hlen_us + hd + data_len + dd {
        return;
    }
    let plen = pdu.len();
    let pdo = if data_len == 0 {
        0
    } else {
        plen - dd - data_len
    };
    let mut flags = PduFlags::from_bits_retain(pdu[1]);
    flags.set(PduFlags::HDGST, hd != 0);
    flags.set(PduFlags::DDGST, dd != 0);
    pdu[1] = flags.bits();
    pdu[2] = hlen;
    pdu[3] = u8::try_from(pdo).unwrap_or(0);
    pdu[4..8].copy_from_slice(&u32::try_from(plen).unwrap_or(u32::MAX).to_le_bytes());
    if hd != 0 {
        let d = crc32c(&pdu[..hlen_us]);
        pdu[hlen_us..hlen_us + 4].copy_from_slice(&d.to_le_bytes());
    }
    if dd != 0 {
        let d = crc32c(&pdu[pdo..pdo + data_len]);
        pdu[plen - 4..].copy_from_slice(&d.to_le_bytes());
    }
}

/// Append one PDU: `header` (its first HLEN bytes are used; TYPE and any
/// flags other than the digest bits come from it), then `data`.
pub fn write_pdu(out: &mut Vec<u8>, header: &[u8], data: &[u8], dg: Digests, align: usize) {
    let Some(&pdu_type) = header.first() else {
        return;
    };
    let hlen = usize::from(header_len(pdu_type).unwrap_or(0)).min(header.len());
    let l = layout(pdu_type, data.len(), dg, align);
    let start = out.len();
    out.resize(start + l.plen, 0);
    let pdu = &mut out[start..];
    pdu[..hlen].copy_from_slice(&header[..hlen]);
    if !data.is_empty() {
        pdu[l.pdo..l.pdo + data.len()].copy_from_slice(data);
    }
    seal(pdu, data.len(), dg);
}

/// A validated PDU header.
#[derive(Clone, Copy, Debug)]
pub enum PduHeader {
    IcReq(IcReq),
    IcResp(IcResp),
    H2cTermReq(TermReq),
    C2hTermReq(TermReq),
    CapsuleCmd(CapsuleCmd),
    CapsuleResp(CapsuleResp),
    H2cData(DataHdr),
    C2hData(DataHdr),
    R2t(R2t),
}

impl PduHeader {
    fn parse(bytes: &[u8]) -> Option<PduHeader> {
        let t = *bytes.first()?;
        let h = usize::from(header_len(t)?);
        let b = bytes.get(..h)?;
        Some(match t {
            PduType::IC_REQ => PduHeader::IcReq(IcReq::read_from_bytes(b).ok()?),
            PduType::IC_RESP => PduHeader::IcResp(IcResp::read_from_bytes(b).ok()?),
            PduType::H2C_TERM_REQ => PduHeader::H2cTermReq(TermReq::read_from_bytes(b).ok()?),
            PduType::C2H_TERM_REQ => PduHeader::C2hTermReq(TermReq::read_from_bytes(b).ok()?),
            PduType::CAPSULE_CMD => PduHeader::CapsuleCmd(CapsuleCmd::read_from_bytes(b).ok()?),
            PduType::CAPSULE_RESP => PduHeader::CapsuleResp(CapsuleResp::read_from_bytes(b).ok()?),
            PduType::H2C_DATA => PduHeader::H2cData(DataHdr::read_from_bytes(b).ok()?),
            PduType::C2H_DATA => PduHeader::C2hData(DataHdr::read_from_bytes(b).ok()?),
            PduType::R2T => PduHeader::R2t(R2t::read_from_bytes(b).ok()?),
            _ => return None,
        })
    }
    /// The common header.
    pub fn common(&self) -> CommonHeader {
        match self {
            PduHeader::IcReq(h) => h.ch,
            PduHeader::IcResp(h) => h.ch,
            PduHeader::H2cTermReq(h) | PduHeader::C2hTermReq(h) => h.ch,
            PduHeader::CapsuleCmd(h) => h.ch,
            PduHeader::CapsuleResp(h) => h.ch,
            PduHeader::H2cData(h) | PduHeader::C2hData(h) => h.ch,
            PduHeader::R2t(h) => h.ch,
        }
    }
}

/// A complete PDU: its header and its data (without padding and digest).
#[derive(Debug)]
pub struct Pdu {
    pub header: PduHeader,
    buf: Vec<u8>,
    data: Range<usize>,
}

impl Pdu {
    /// The PDU's data (in-capsule data, H2C/C2H data, TermReq data).
    pub fn data(&self) -> &[u8] {
        self.buf.get(self.data.clone()).unwrap_or(&[])
    }
    /// The raw header bytes (HLEN of them), e.g. to quote in a TermReq.
    pub fn header_bytes(&self) -> &[u8] {
        let h = usize::from(self.header.common().hlen);
        self.buf.get(..h).unwrap_or(&[])
    }
    /// Give the buffer back (to [`PduParser::recycle`]).
    pub fn into_buffer(self) -> Vec<u8> {
        self.buf
    }
}

/// Which side of the connection the parser runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Receives host PDUs: ICReq, H2CTermReq, CapsuleCmd, H2CData.
    Controller,
    /// Receives controller PDUs: ICResp, C2HTermReq, CapsuleResp, C2HData, R2T.
    Host,
}

/// Parser limits and negotiated options.
#[derive(Clone, Copy, Debug)]
pub struct ParserConfig {
    pub role: Role,
    /// Digests negotiated (none before ICReq/ICResp).
    pub digests: Digests,
    /// Most in-capsule data accepted in one CapsuleCmd.
    pub max_capsule_data: u32,
    /// Most data accepted in one H2CData/C2HData PDU.
    pub max_data: u32,
}

/// Why a byte stream is not a valid PDU sequence.
#[derive(Clone, Debug)]
pub enum PduError {
    /// TYPE is not a PDU type.
    UnknownType(u8),
    /// A valid PDU type that this side never receives.
    UnexpectedType(u8),
    /// HLEN does not match the type.
    BadHlen { pdu_type: u8, hlen: u8 },
    /// Digest flags do not match what was negotiated (or are set on a PDU
    /// type that never carries digests).
    BadFlags { pdu_type: u8, flags: u8 },
    /// PDO inconsistent with HLEN, the digests or PLEN.
    BadPdo { pdu_type: u8, pdo: u8 },
    /// PLEN inconsistent with the type, HLEN or PDO.
    BadPlen { pdu_type: u8, plen: u32 },
    /// More data than the negotiated maximum.
    TooLong { pdu_type: u8, len: u32, max: u32 },
    /// A data PDU whose DATAL differs from the data it carries.
    DataLength {
        pdu_type: u8,
        datal: u32,
        actual: u32,
    },
    /// Header digest mismatch.
    HeaderDigest { expected: u32, got: u32 },
    /// Data digest mismatch: not fatal, the PDU (whose header this is) was
    /// consumed and its command should fail with a transient transport error.
    DataDigest {
        header: Box<PduHeader>,
        expected: u32,
        got: u32,
    },
}

impl PduError {
    /// Whether the connection must be terminated.
    pub fn is_fatal(&self) -> bool {
        !matches!(self, PduError::DataDigest { .. })
    }
    /// Fatal Error Status and Information for the TermReq reporting it.
    pub fn fes(&self) -> Option<(u16, u32)> {
        Some(match self {
            PduError::UnknownType(_) | PduError::UnexpectedType(_) => {
                (Fes::INVALID_PDU_HEADER_FIELD, 0)
            }
            PduError::BadFlags { .. } => (Fes::INVALID_PDU_HEADER_FIELD, 1),
            PduError::BadHlen { .. } => (Fes::INVALID_PDU_HEADER_FIELD, 2),
            PduError::BadPdo { .. } => (Fes::INVALID_PDU_HEADER_FIELD, 3),
            PduError::BadPlen { .. } => (Fes::INVALID_PDU_HEADER_FIELD, 4),
            PduError::DataLength { .. } => (Fes::INVALID_PDU_HEADER_FIELD, data_off::DATAL),
            PduError::TooLong { .. } => (Fes::DATA_LIMIT_EXCEEDED, 0),
            PduError::HeaderDigest { .. } => (Fes::HEADER_DIGEST_ERROR, 0),
            PduError::DataDigest { .. } => return None,
        })
    }
}

impl fmt::Display for PduError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PduError::UnknownType(t) => write!(f, "unknown PDU type {t:#04x}"),
            PduError::UnexpectedType(t) => {
                write!(f, "PDU type {t:#04x} not valid in this direction")
            }
            PduError::BadHlen { pdu_type, hlen } => {
                write!(
                    f,
                    "PDU type {pdu_type:#04x}: HLEN {hlen} is wrong for the type"
                )
            }
            PduError::BadFlags { pdu_type, flags } => write!(
                f,
                "PDU type {pdu_type:#04x}: flags {flags:#04x} do not match the negotiated digests"
            ),
            PduError::BadPdo { pdu_type, pdo } => {
                write!(
                    f,
                    "PDU type {pdu_type:#04x}: PDO {pdo} inconsistent with HLEN/PLEN"
                )
            }
            PduError::BadPlen { pdu_type, plen } => {
                write!(
                    f,
                    "PDU type {pdu_type:#04x}: PLEN {plen} inconsistent with the header"
                )
            }
            PduError::TooLong { pdu_type, len, max } => write!(
                f,
                "PDU type {pdu_type:#04x}: {len} bytes of data, more than the maximum {max}"
            ),
            PduError::DataLength {
                pdu_type,
                datal,
                actual,
            } => write!(
                f,
                "PDU type {pdu_type:#04x}: DATAL {datal} but {actual} bytes of data"
            ),
            PduError::HeaderDigest { expected, got } => {
                write!(f, "header digest {got:#010x}, expected {expected:#010x}")
            }
            PduError::DataDigest { expected, got, .. } => {
                write!(f, "data digest {got:#010x}, expected {expected:#010x}")
            }
        }
    }
}

impl std::error::Error for PduError {}

/// Streaming PDU parser: see the module documentation.
pub struct PduParser {
    cfg: ParserConfig,
    buf: Vec<u8>,
    /// PLEN of the PDU being received, once its common header is validated.
    plen: Option<usize>,
    /// Data range of the PDU being received.
    data: Range<usize>,
    /// A fatal error poisons the parser.
    failed: Option<PduError>,
    /// Largest buffer kept for reuse.
    keep: usize,
}

impl PduParser {
    pub fn new(cfg: ParserConfig) -> PduParser {
        PduParser {
            cfg,
            buf: Vec::new(),
            plen: None,
            data: 0..0,
            failed: None,
            keep: 64 * 1024,
        }
    }

    pub fn config(&self) -> &ParserConfig {
        &self.cfg
    }

    /// Change limits or digests (after ICReq/ICResp); applies from the next
    /// PDU on.
    pub fn set_config(&mut self, cfg: ParserConfig) {
        self.cfg = cfg;
    }

    /// Whether part of a PDU is buffered.
    pub fn partial(&self) -> bool {
        !self.buf.is_empty()
    }

    /// The header bytes of the PDU being received (or of the one that
    /// caused a fatal error), to quote in a TermReq: at most HLEN bytes.
    pub fn partial_header(&self) -> &[u8] {
        let hlen = self
            .buf
            .first()
            .and_then(|&t| header_len(t))
            .map_or(8, usize::from);
        &self.buf[..self.buf.len().min(hlen)]
    }

    /// Hand a finished PDU's buffer back for reuse.
    pub fn recycle(&mut self, mut buf: Vec<u8>) {
        if self.buf.is_empty()
            && self.buf.capacity() < buf.capacity()
            && buf.capacity() <= self.keep
        {
            buf.clear();
            self.buf = buf;
        }
    }

    /// Consume bytes from `input`, stopping at the end of a PDU. Returns how
    /// many bytes were consumed and the PDU if one was completed, or the
    /// error. After a fatal error every call returns it again.
    pub fn feed(&mut self, input: &[u8]) -> (usize, Result<Option<Pdu>, PduError>) {
        if let Some(e) = &self.failed {
            return (0, Err(e.clone()));
        }
        let mut used = 0;
        if self.plen.is_none() {
            let want = 8 - self.buf.len();
            let n = want.min(input.len());
            self.buf.extend_from_slice(&input[..n]);
            used += n;
            if self.buf.len() < 8 {
                return (used, Ok(None));
            }
            match self.check_common() {
                Ok((plen, data)) => {
                    self.plen = Some(plen);
                    self.data = data;
                    self.buf.reserve_exact(plen.saturating_sub(self.buf.len()));
                }
                Err(e) => return (used, Err(self.fail(e))),
            }
        }
        let plen = self.plen.unwrap_or(0);
        let n = (plen - self.buf.len()).min(input.len() - used);
        self.buf.extend_from_slice(&input[used..used + n]);
        used += n;
        if self.buf.len() < plen {
            return (used, Ok(None));
        }
        (used, self.finish())
    }

    fn fail(&mut self, e: PduError) -> PduError {
        if e.is_fatal() {
            self.failed = Some(e.clone());
        }
        e
    }

    /// Validate the common header (in `buf[..8]`): returns PLEN and the
    /// data range.
    fn check_common(&self) -> Result<(usize, Range<usize>), PduError> {
        let ch = CommonHeader::read_from_bytes(&self.buf[..8]).unwrap_or_default();
        let t = ch.pdu_type;
        let Some(hlen) = header_len(t) else {
            return Err(PduError::UnknownType(t));
        };
        let ours = match self.cfg.role {
            Role::Controller => matches!(
                t,
                PduType::IC_REQ | PduType::H2C_TERM_REQ | PduType::CAPSULE_CMD | PduType::H2C_DATA
            ),
            Role::Host => matches!(
                t,
                PduType::IC_RESP
                    | PduType::C2H_TERM_REQ
                    | PduType::CAPSULE_RESP
                    | PduType::C2H_DATA
                    | PduType::R2T
            ),
        };
        if !ours {
            return Err(PduError::UnexpectedType(t));
        }
        if ch.hlen != hlen {
            return Err(PduError::BadHlen {
                pdu_type: t,
                hlen: ch.hlen,
            });
        }
        let plen32 = ch.plen.get();
        let plen = usize::try_from(plen32).unwrap_or(usize::MAX);
        let hlen = usize::from(hlen);
        let bad_plen = PduError::BadPlen {
            pdu_type: t,
            plen: plen32,
        };
        let bad_flags = PduError::BadFlags {
            pdu_type: t,
            flags: ch.flags,
        };
        let bad_pdo = PduError::BadPdo {
            pdu_type: t,
            pdo: ch.pdo,
        };
        match t {
            PduType::IC_REQ | PduType::IC_RESP => {
                if ch.flags != 0 {
                    return Err(bad_flags);
                }
                if ch.pdo != 0 {
                    return Err(bad_pdo);
                }
                if plen != hlen {
                    return Err(bad_plen);
                }
                return Ok((plen, 0..0));
            }
            PduType::H2C_TERM_REQ | PduType::C2H_TERM_REQ => {
                if ch.flags().intersects(PduFlags::HDGST | PduFlags::DDGST) {
                    return Err(bad_flags);
                }
                if !(TERM_REQ_MIN_PLEN..=TERM_REQ_MAX_PLEN).contains(&plen32) {
                    return Err(bad_plen);
                }
                return Ok((plen, hlen..plen));
            }
            _ => {}
        }
        let dg = self.cfg.digests;
        let hd = if dg.header { DIGEST_LEN } else { 0 };
        if ch.flags().contains(PduFlags::HDGST) != dg.header {
            return Err(bad_flags);
        }
        let (may_have_data, must_have_data, max) = match t {
            PduType::CAPSULE_CMD => (true, false, self.cfg.max_capsule_data),
            PduType::H2C_DATA | PduType::C2H_DATA => (true, true, self.cfg.max_data),
            _ => (false, false, 0),
        };
        let hend = hlen + hd;
        if ch.pdo == 0 {
            // No data.
            if must_have_data {
                return Err(bad_pdo);
            }
            if ch.flags().contains(PduFlags::DDGST) {
                return Err(bad_flags);
            }
            if plen != hend {
                return Err(bad_plen);
            }
            return Ok((plen, 0..0));
        }
        if !may_have_data {
            return Err(bad_pdo);
        }
        let pdo = usize::from(ch.pdo);
        if pdo < hend {
            return Err(bad_pdo);
        }
        if ch.flags().contains(PduFlags::DDGST) != dg.data {
            return Err(bad_flags);
        }
        let dd = if dg.data { DIGEST_LEN } else { 0 };
        if plen <= pdo + dd {
            return Err(bad_plen);
        }
        let data_len = plen - pdo - dd;
        if data_len > usize::try_from(max).unwrap_or(usize::MAX) {
            return Err(PduError::TooLong {
                pdu_type: t,
                len: u32::try_from(data_len).unwrap_or(u32::MAX),
                max,
            });
        }
        Ok((plen, pdo..pdo + data_len))
    }

    /// The whole PDU is in `buf`: check digests and lengths, hand it out.
    fn finish(&mut self) -> Result<Option<Pdu>, PduError> {
        let buf = std::mem::take(&mut self.buf);
        let data = std::mem::replace(&mut self.data, 0..0);
        self.plen = None;
        let Some(header) = PduHeader::parse(&buf) else {
            // check_common accepted the type, so this cannot happen.
            return Err(self.fail(PduError::UnknownType(buf.first().copied().unwrap_or(0))));
        };
        let ch = header.common();
        let t = ch.pdu_type;
        let hlen = usize::from(ch.hlen);
        if uses_digests(t) && self.cfg.digests.header {
            let expected = crc32c(&buf[..hlen]);
            let got = read_le32(&buf[hlen..hlen + 4]);
            if expected != got {
                self.buf = buf;
                return Err(self.fail(PduError::HeaderDigest { expected, got }));
            }
        }
        if let PduHeader::H2cData(d) | PduHeader::C2hData(d) = &header {
            let actual = u32::try_from(data.len()).unwrap_or(u32::MAX);
            if d.datal.get() != actual {
                self.buf = buf;
                return Err(self.fail(PduError::DataLength {
                    pdu_type: t,
                    datal: d.datal.get(),
                    actual,
                }));
            }
        }
        if uses_digests(t) && self.cfg.digests.data && !data.is_empty() {
            let expected = crc32c(&buf[data.clone()]);
            let got = read_le32(&buf[data.end..data.end + 4]);
            if expected != got {
                self.recycle(buf);
                return Err(PduError::DataDigest {
                    header: Box::new(header),
                    expected,
                    got,
                });
            }
        }
        Ok(Some(Pdu { header, buf, data }))
    }
}

fn read_le32(b: &[u8]) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[..4]);
    u32::from_le_bytes(a)
}

#[cfg(test)]
mod tests {
    use super::*;
    use zerocopy::IntoBytes;

    fn ctrl_cfg(dg: Digests) -> ParserConfig {
        ParserConfig {
            role: Role::Controller,
            digests: dg,
            max_capsule_data: 8192,
            max_data: 65536,
        }
    }

    fn cmd_pdu(data: &[u8], dg: Digests) -> Vec<u8> {
        let mut c = CapsuleCmd::new();
        c.sqe.opcode = 1;
        c.sqe.cid = 7.into();
        let mut out = Vec::new();
        write_pdu(&mut out, c.as_bytes(), data, dg, 4);
        out
    }

    /// Feed everything, one byte at a time or all at once; collect results.
    fn parse_all(p: &mut PduParser, mut input: &[u8], step: usize) -> Vec<Result<Pdu, PduError>> {
        let mut out = Vec::new();
        while !input.is_empty() {
            let n = step.min(input.len());
            let (used, r) = p.feed(&input[..n]);
            input = &input[used..];
            match r {
                Ok(Some(pdu)) => out.push(Ok(pdu)),
                Ok(None) => {}
                Err(e) => {
                    let fatal = e.is_fatal();
                    out.push(Err(e));
                    if fatal {
                        break;
                    }
                }
            }
        }
        out
    }

    #[test]
    fn crc32c_check_value() {
        assert_eq!(crc32c(b"123456789"), 0xe306_9283);
    }

    #[test]
    fn header_sizes_and_offsets() {
        assert_eq!(core::mem::offset_of!(IcReq, maxr2t), 12);
        assert_eq!(core::mem::offset_of!(IcResp, maxh2cdata), 12);
        assert_eq!(core::mem::offset_of!(TermReq, fei), 10);
        assert_eq!(core::mem::offset_of!(DataHdr, datal), 16);
        assert_eq!(core::mem::offset_of!(R2t, r2tl), 16);
        assert_eq!(IcReq::new().ch.hlen, 128);
        assert_eq!(CapsuleCmd::new().ch.hlen, 72);
    }

    #[test]
    fn icreq_round_trip() {
        let mut req = IcReq::new();
        req.ch.plen = 128.into();
        req.dgst = DGST_HEADER | DGST_DATA;
        req.maxr2t = 3.into();
        let mut p = PduParser::new(ctrl_cfg(Digests::default()));
        let r = parse_all(&mut p, req.as_bytes(), 1);
        assert_eq!(r.len(), 1);
        let Ok(Pdu {
            header: PduHeader::IcReq(got),
            ..
        }) = &r[0]
        else {
            panic!("{r:?}")
        };
        assert_eq!(got.maxr2t.get(), 3);
        assert_eq!(
            Digests::from_dgst(got.dgst),
            Digests {
                header: true,
                data: true
            }
        );
    }

    #[test]
    fn capsules_with_and_without_digests() {
        for dg in [
            Digests::default(),
            Digests {
                header: true,
                data: false,
            },
            Digests {
                header: true,
                data: true,
            },
            Digests {
                header: false,
                data: true,
            },
        ] {
            let mut stream = cmd_pdu(&[], dg);
            stream.extend(cmd_pdu(&[0xab; 100], dg));
            for step in [1, 7, 4096] {
                let mut p = PduParser::new(ctrl_cfg(dg));
                let r = parse_all(&mut p, &stream, step);
                assert_eq!(r.len(), 2, "{dg:?} {r:?}");
                let a = r[0].as_ref().unwrap();
                assert!(a.data().is_empty());
                let b = r[1].as_ref().unwrap();
                assert_eq!(b.data(), &[0xab; 100][..]);
                let PduHeader::CapsuleCmd(c) = b.header else {
                    panic!()
                };
                assert_eq!(c.sqe.cid.get(), 7);
                assert_eq!(usize::from(c.ch.pdo), 72 + if dg.header { 4 } else { 0 });
            }
        }
    }

    #[test]
    fn layout_aligns_data() {
        let dg = Digests {
            header: true,
            data: true,
        };
        let l = layout(PduType::C2H_DATA, 10, dg, 16);
        assert_eq!(l.pdo, 32);
        assert_eq!(l.plen, 32 + 10 + 4);
        assert_eq!(
            layout(PduType::CAPSULE_RESP, 0, dg, 16),
            Layout { pdo: 0, plen: 28 }
        );
        assert_eq!(
            layout(PduType::IC_RESP, 0, dg, 16),
            Layout { pdo: 0, plen: 128 }
        );
    }

    fn first_err(cfg: ParserConfig, bytes: &[u8]) -> PduError {
        let mut p = PduParser::new(cfg);
        let r = parse_all(&mut p, bytes, 3);
        match r.into_iter().find_map(|r| r.err()) {
            Some(e) => e,
            None => panic!("no error"),
        }
    }

    #[test]
    fn malformed_headers_are_reported_precisely() {
        let none = ctrl_cfg(Digests::default());
        let e = first_err(none, &[0x42, 0, 24, 0, 24, 0, 0, 0]);
        assert!(matches!(e, PduError::UnknownType(0x42)));
        assert_eq!(e.fes(), Some((Fes::INVALID_PDU_HEADER_FIELD, 0)));
        // A CapsuleResp sent to a controller.
        let e = first_err(none, &[5, 0, 24, 0, 24, 0, 0, 0]);
        assert!(matches!(e, PduError::UnexpectedType(5)));
        // Wrong HLEN for a capsule.
        let mut b = cmd_pdu(&[], Digests::default());
        b[2] = 64;
        assert!(matches!(
            first_err(none, &b),
            PduError::BadHlen { hlen: 64, .. }
        ));
        // PLEN smaller than the header.
        let mut b = cmd_pdu(&[], Digests::default());
        b[4] = 10;
        let e = first_err(none, &b);
        assert!(matches!(e, PduError::BadPlen { plen: 10, .. }), "{e}");
        assert_eq!(e.fes(), Some((Fes::INVALID_PDU_HEADER_FIELD, 4)));
        // PDO inside the header.
        let mut b = cmd_pdu(&[1; 8], Digests::default());
        b[3] = 40;
        assert!(matches!(
            first_err(none, &b),
            PduError::BadPdo { pdo: 40, .. }
        ));
        // PDO past PLEN.
        let mut b = cmd_pdu(&[1; 8], Digests::default());
        b[3] = 200;
        assert!(matches!(first_err(none, &b), PduError::BadPlen { .. }));
        // Header digest flag without negotiated digests.
        let b = cmd_pdu(
            &[],
            Digests {
                header: true,
                data: false,
            },
        );
        assert!(matches!(first_err(none, &b), PduError::BadFlags { .. }));
        // ICReq with a wrong PLEN.
        let mut req = IcReq::new();
        req.ch.plen = 200.into();
        assert!(matches!(
            first_err(none, req.as_bytes()),
            PduError::BadPlen { plen: 200, .. }
        ));
        // An R2T (no data allowed) claiming data, parsed by a host.
        let mut r2t = R2t::new();
        r2t.ch.plen = 40.into();
        r2t.ch.pdo = 24;
        let host = ParserConfig {
            role: Role::Host,
            ..none
        };
        assert!(matches!(
            first_err(host, r2t.as_bytes()),
            PduError::BadPdo { .. }
        ));
    }

    #[test]
    fn oversized_pdus_are_refused_before_buffering() {
        let none = ctrl_cfg(Digests::default());
        // 1 GiB of in-capsule data announced: refused after 8 bytes.
        let mut h = [0u8; 8];
        h[0] = PduType::CAPSULE_CMD;
        h[2] = 72;
        h[3] = 72;
        h[4..8].copy_from_slice(&(1u32 << 30).to_le_bytes());
        let mut p = PduParser::new(none);
        let (used, r) = p.feed(&h);
        assert_eq!(used, 8);
        let e = r.unwrap_err();
        assert!(matches!(e, PduError::TooLong { max: 8192, .. }), "{e}");
        assert_eq!(e.fes(), Some((Fes::DATA_LIMIT_EXCEEDED, 0)));
        assert!(p.buf.capacity() < 4096);
        // Poisoned from now on.
        assert!(p.feed(&h).1.is_err());
        // H2CData over max_data.
        let mut d = DataHdr::new(PduType::H2C_DATA);
        d.datal = 65537.into();
        let mut b = Vec::new();
        write_pdu(&mut b, d.as_bytes(), &vec![0; 65537], Digests::default(), 4);
        assert!(matches!(
            first_err(none, &b),
            PduError::TooLong { len: 65537, .. }
        ));
        // TermReq longer than 152 bytes.
        let t = TermReq::new(PduType::H2C_TERM_REQ, 1, 0);
        let mut b = Vec::new();
        write_pdu(&mut b, t.as_bytes(), &[0; 200], Digests::default(), 4);
        assert!(matches!(first_err(none, &b), PduError::BadPlen { .. }));
    }

    #[test]
    fn digest_errors() {
        let dg = Digests {
            header: true,
            data: true,
        };
        let cfg = ctrl_cfg(dg);
        let mut b = cmd_pdu(&[9; 16], dg);
        b[72] ^= 1;
        let e = first_err(cfg, &b);
        assert!(matches!(e, PduError::HeaderDigest { .. }));
        assert_eq!(e.fes(), Some((Fes::HEADER_DIGEST_ERROR, 0)));
        // A data digest error is not fatal: the next PDU still parses.
        let mut b = cmd_pdu(&[9; 16], dg);
        let last = b.len() - 1;
        b[last] ^= 1;
        b.extend(cmd_pdu(&[3; 4], dg));
        let mut p = PduParser::new(cfg);
        let r = parse_all(&mut p, &b, 5);
        assert_eq!(r.len(), 2);
        let Err(PduError::DataDigest { header, .. }) = &r[0] else {
            panic!("{r:?}")
        };
        let PduHeader::CapsuleCmd(c) = **header else {
            panic!("{header:?}")
        };
        assert_eq!(c.sqe.cid.get(), 7);
        assert_eq!(r[1].as_ref().unwrap().data(), &[3; 4]);
    }

    #[test]
    fn data_pdus_check_datal() {
        let mut d = DataHdr::new(PduType::H2C_DATA);
        d.datal = 100.into();
        let mut b = Vec::new();
        write_pdu(&mut b, d.as_bytes(), &[1; 64], Digests::default(), 4);
        let e = first_err(ctrl_cfg(Digests::default()), &b);
        assert!(matches!(
            e,
            PduError::DataLength {
                datal: 100,
                actual: 64,
                ..
            }
        ));
        assert_eq!(e.fes(), Some((Fes::INVALID_PDU_HEADER_FIELD, 16)));
        // An H2CData without data.
        let mut d = DataHdr::new(PduType::H2C_DATA);
        d.ch.plen = 24.into();
        let e = first_err(ctrl_cfg(Digests::default()), d.as_bytes());
        assert!(matches!(e, PduError::BadPdo { .. }));
    }

    #[test]
    fn never_panics_on_garbage() {
        // A cheap deterministic fuzz: mutate valid streams byte by byte.
        let dg = Digests {
            header: true,
            data: false,
        };
        let mut seed = 0x1234_5678u32;
        let base = {
            let mut v = cmd_pdu(&[5; 40], dg);
            let mut d = DataHdr::new(PduType::H2C_DATA);
            d.datal = 32.into();
            write_pdu(&mut v, d.as_bytes(), &[6; 32], dg, 8);
            v
        };
        for _ in 0..2000 {
            let mut b = base.clone();
            for _ in 0..3 {
                seed ^= seed << 13;
                seed ^= seed >> 17;
                seed ^= seed << 5;
                let i = usize::try_from(seed).unwrap_or(0) % b.len();
                b[i] = (seed >> 24) as u8;
            }
            let mut p = PduParser::new(ctrl_cfg(dg));
            let _ = parse_all(&mut p, &b, 1 + usize::try_from(seed % 50).unwrap_or(0));
        }
    }
}
