//! Submission and completion queue entries and opcodes.

use crate::{Le16, Le32, Le64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

/// A 64-byte submission queue entry (common command format).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
pub struct Sqe {
    pub opcode: u8,
    /// Bits 1:0 fused operation, bits 7:6 PRP or SGL selection.
    pub flags: u8,
    pub cid: Le16,
    pub nsid: Le32,
    pub cdw2: Le32,
    pub cdw3: Le32,
    pub mptr: Le64,
    pub prp1: Le64,
    pub prp2: Le64,
    pub cdw10: Le32,
    pub cdw11: Le32,
    pub cdw12: Le32,
    pub cdw13: Le32,
    pub cdw14: Le32,
    pub cdw15: Le32,
}
const _: () = assert!(core::mem::size_of::<Sqe>() == 64);

impl Sqe {
    /// PSDT: 0 means PRPs, anything else SGLs.
    pub fn psdt(&self) -> u8 {
        (self.flags >> 6) & 0x3
    }
    /// FUSE bits.
    pub fn fuse(&self) -> u8 {
        self.flags & 0x3
    }
    /// Starting LBA of an NVM read/write style command (CDW10/11).
    pub fn slba(&self) -> u64 {
        u64::from(self.cdw10.get()) | (u64::from(self.cdw11.get()) << 32)
    }
    /// Number of logical blocks (0's based in CDW12 bits 15:0), returned 1-based.
    pub fn nlb(&self) -> u32 {
        (self.cdw12.get() & 0xffff) + 1
    }
    /// Force Unit Access bit of a read/write (CDW12 bit 30).
    pub fn fua(&self) -> bool {
        self.cdw12.get() & (1 << 30) != 0
    }
}

/// A 16-byte completion queue entry.
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
pub struct Cqe {
    pub dw0: Le32,
    pub dw1: Le32,
    pub sq_head: Le16,
    pub sq_id: Le16,
    pub cid: Le16,
    /// Bit 0 phase tag, bits 15:1 the status field.
    pub status: Le16,
}
const _: () = assert!(core::mem::size_of::<Cqe>() == 16);

impl Cqe {
    pub fn phase(&self) -> bool {
        self.status.get() & 1 != 0
    }
    /// The status field without the phase bit.
    pub fn status_field(&self) -> crate::Status {
        crate::Status::from_field(self.status.get() >> 1)
    }
}

/// Admin command set opcodes.
pub struct AdminOpcode;
impl AdminOpcode {
    pub const DELETE_SQ: u8 = 0x00;
    pub const CREATE_SQ: u8 = 0x01;
    pub const GET_LOG_PAGE: u8 = 0x02;
    pub const DELETE_CQ: u8 = 0x04;
    pub const CREATE_CQ: u8 = 0x05;
    pub const IDENTIFY: u8 = 0x06;
    pub const ABORT: u8 = 0x08;
    pub const SET_FEATURES: u8 = 0x09;
    pub const GET_FEATURES: u8 = 0x0a;
    pub const ASYNC_EVENT_REQUEST: u8 = 0x0c;
    pub const NS_MANAGEMENT: u8 = 0x0d;
    pub const FW_COMMIT: u8 = 0x10;
    pub const FW_DOWNLOAD: u8 = 0x11;
    pub const NS_ATTACHMENT: u8 = 0x15;
    pub const KEEP_ALIVE: u8 = 0x18;
    pub const DOORBELL_BUFFER_CONFIG: u8 = 0x7c;
    pub const FORMAT_NVM: u8 = 0x80;
}

/// NVM command set (I/O) opcodes.
pub struct IoOpcode;
impl IoOpcode {
    pub const FLUSH: u8 = 0x00;
    pub const WRITE: u8 = 0x01;
    pub const READ: u8 = 0x02;
    pub const WRITE_UNCORRECTABLE: u8 = 0x04;
    pub const COMPARE: u8 = 0x05;
    pub const WRITE_ZEROES: u8 = 0x08;
    pub const DATASET_MANAGEMENT: u8 = 0x09;
    /// Zoned Namespace Command Set.
    pub const ZONE_MGMT_SEND: u8 = 0x79;
    pub const ZONE_MGMT_RECV: u8 = 0x7a;
    pub const ZONE_APPEND: u8 = 0x7d;
}

/// One range of a Dataset Management command (16 bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
pub struct DsmRange {
    pub attributes: Le32,
    pub nlb: Le32,
    pub slba: Le64,
}
const _: () = assert!(core::mem::size_of::<DsmRange>() == 16);

/// Dataset Management CDW11 bit 2: deallocate.
pub const DSM_ATTR_DEALLOCATE: u32 = 1 << 2;
/// Write Zeroes CDW12 bit 25: deallocate.
pub const WRITE_ZEROES_DEAC: u32 = 1 << 25;

/// Feature identifiers (Get/Set Features CDW10 bits 7:0).
pub struct FeatureId;
impl FeatureId {
    pub const ARBITRATION: u8 = 0x01;
    pub const POWER_MANAGEMENT: u8 = 0x02;
    pub const TEMPERATURE_THRESHOLD: u8 = 0x04;
    pub const ERROR_RECOVERY: u8 = 0x05;
    pub const VOLATILE_WRITE_CACHE: u8 = 0x06;
    pub const NUMBER_OF_QUEUES: u8 = 0x07;
    pub const INTERRUPT_COALESCING: u8 = 0x08;
    pub const INTERRUPT_VECTOR_CONFIG: u8 = 0x09;
    pub const WRITE_ATOMICITY: u8 = 0x0a;
    pub const ASYNC_EVENT_CONFIG: u8 = 0x0b;
    pub const KEEP_ALIVE_TIMER: u8 = 0x0f;
    pub const HOST_BEHAVIOR_SUPPORT: u8 = 0x16;
}

/// Asynchronous event types and the information codes we post.
pub struct AsyncEvent;
impl AsyncEvent {
    pub const TYPE_ERROR: u8 = 0x0;
    pub const TYPE_NOTICE: u8 = 0x2;
    /// Error status: write to an invalid doorbell register.
    pub const INFO_INVALID_DOORBELL_REGISTER: u8 = 0x00;
    /// Error status: invalid doorbell write value.
    pub const INFO_INVALID_DOORBELL_VALUE: u8 = 0x01;
    /// Notice: Asymmetric Namespace Access change (log page 0Ch).
    pub const INFO_ANA_CHANGE: u8 = 0x03;
    /// Completion dword 0 of an AER: type, info, log page.
    pub fn dw0(kind: u8, info: u8, log_page: u8) -> u32 {
        u32::from(kind & 0x7) | (u32::from(info) << 8) | (u32::from(log_page) << 16)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use zerocopy::IntoBytes;

    #[test]
    fn sqe_field_offsets() {
        let s = Sqe {
            opcode: 0x02,
            cid: 0x1234.into(),
            nsid: 7.into(),
            prp1: 0x1122_3344_5566_7788.into(),
            cdw10: 0xaabb_ccdd.into(),
            cdw12: ((1u32 << 30) | 7).into(),
            ..Default::default()
        };
        let b = s.as_bytes();
        assert_eq!(b[0], 0x02);
        assert_eq!(&b[2..4], &[0x34, 0x12]);
        assert_eq!(&b[4..8], &[7, 0, 0, 0]);
        assert_eq!(b[24], 0x88);
        assert_eq!(&b[40..44], &[0xdd, 0xcc, 0xbb, 0xaa]);
        assert_eq!(s.nlb(), 8);
        assert!(s.fua());
    }

    #[test]
    fn cqe_phase_and_status() {
        let c = Cqe {
            status: ((0x0280u16 << 1) | 1).into(),
            ..Default::default()
        };
        assert!(c.phase());
        let st = c.status_field();
        assert_eq!(st.sct(), 2);
        assert_eq!(st.sc(), 0x80);
        assert_eq!(AsyncEvent::dw0(0, 1, 1), 0x0001_0100);
    }
}
