//! The NVMe/RDMA transport binding (NVMe over Fabrics 1.1, RDMA): the
//! RDMA CM private data a host sends with its connection request and a
//! controller answers with, and the Keyed SGL Data Block descriptor that
//! names host memory the controller reads or writes by RDMA.

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use crate::{Le16, Le32, Le64, Sqe};

/// Record format of the private data (the only one defined).
pub const RECFMT: u16 = 0;

/// Private data of an RDMA CM connect request (32 bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
pub struct CmRequest {
    /// [`RECFMT`].
    pub recfmt: Le16,
    /// Queue ID (0: the admin queue).
    pub qid: Le16,
    /// Host receive queue size: commands the host can have outstanding.
    pub hrqsize: Le16,
    /// Host send queue size, 0's based.
    pub hsqsize: Le16,
    /// Controller ID for an I/O queue (0xffff: any).
    pub cntlid: Le16,
    pub rsvd: [u8; 22],
}
const _: () = assert!(core::mem::size_of::<CmRequest>() == 32);

/// Private data of an RDMA CM connect reply (32 bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
pub struct CmReply {
    /// [`RECFMT`].
    pub recfmt: Le16,
    /// Controller receive queue size.
    pub crqsize: Le16,
    pub rsvd: [u8; 28],
}
const _: () = assert!(core::mem::size_of::<CmReply>() == 32);

/// Private data of an RDMA CM connect reject (4 bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
pub struct CmReject {
    /// [`RECFMT`].
    pub recfmt: Le16,
    /// Why (one of the `REJECT_*` codes).
    pub sts: Le16,
}
const _: () = assert!(core::mem::size_of::<CmReject>() == 4);

/// Reject: the record format is not one the controller knows.
pub const REJECT_INVALID_RECFMT: u16 = 0x01;
/// Reject: the queue ID is not valid.
pub const REJECT_INVALID_QID: u16 = 0x02;
/// Reject: the host send queue size is not valid.
pub const REJECT_INVALID_HSQSIZE: u16 = 0x03;
/// Reject: the host receive queue size is not valid.
pub const REJECT_INVALID_HRQSIZE: u16 = 0x04;
/// Reject: no resources for the queue.
pub const REJECT_NO_RESOURCES: u16 = 0x05;
/// Reject: the IRD is not valid.
pub const REJECT_INVALID_IRD: u16 = 0x06;
/// Reject: the ORD is not valid.
pub const REJECT_INVALID_ORD: u16 = 0x07;

/// SGL identifier of a Keyed SGL Data Block descriptor (type 4, subtype
/// 0: an address).
pub const SGL_KEYED: u8 = 0x40;
/// The same, and the host asks the controller to invalidate the key when
/// it is done (subtype 0xF).
pub const SGL_KEYED_INVALIDATE: u8 = 0x4f;
/// Most bytes one keyed descriptor names (its length is 24 bits).
pub const KEYED_MAX_LEN: u32 = (1 << 24) - 1;

/// Keyed SGL Data Block descriptor (16 bytes): `length` bytes of host
/// memory at `addr`, reachable with remote key `key`.
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
pub struct KeyedSgl {
    pub addr: Le64,
    /// 24-bit length, little endian.
    pub length: [u8; 3],
    pub key: Le32,
    /// [`SGL_KEYED`] or [`SGL_KEYED_INVALIDATE`].
    pub sgl_type: u8,
}
const _: () = assert!(core::mem::size_of::<KeyedSgl>() == 16);

impl KeyedSgl {
    /// A descriptor for `len` (at most [`KEYED_MAX_LEN`]) bytes at `addr`.
    pub fn new(addr: u64, len: u32, key: u32) -> KeyedSgl {
        let l = len.min(KEYED_MAX_LEN).to_le_bytes();
        KeyedSgl {
            addr: addr.into(),
            length: [l[0], l[1], l[2]],
            key: key.into(),
            sgl_type: SGL_KEYED,
        }
    }

    /// Its length.
    pub fn len(&self) -> u32 {
        u32::from_le_bytes([self.length[0], self.length[1], self.length[2], 0])
    }

    /// Whether it names no bytes.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether it is a keyed data block descriptor at all.
    pub fn is_keyed(&self) -> bool {
        self.sgl_type == SGL_KEYED || self.sgl_type == SGL_KEYED_INVALIDATE
    }

    /// The first SGL descriptor of a command, read as a keyed one.
    pub fn of(sqe: &Sqe) -> KeyedSgl {
        KeyedSgl::read_from_bytes(&sqe.as_bytes()[24..40]).unwrap_or_default()
    }

    /// Store it as the command's first descriptor (and select SGLs).
    pub fn store(&self, sqe: &mut Sqe) {
        let b = self.as_bytes();
        sqe.prp1 = Le64::from_bytes(b[0..8].try_into().unwrap_or([0; 8]));
        sqe.prp2 = Le64::from_bytes(b[8..16].try_into().unwrap_or([0; 8]));
        sqe.flags = (sqe.flags & 0x3f) | 0x40;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keyed_descriptors_round_trip() {
        let d = KeyedSgl::new(0x1122_3344_5566_7788, 0x12_3456, 0xdead_beef);
        let mut sqe = Sqe::default();
        d.store(&mut sqe);
        assert_eq!(sqe.flags & 0xc0, 0x40);
        let back = KeyedSgl::of(&sqe);
        assert_eq!(back, d);
        assert_eq!(back.len(), 0x12_3456);
        assert!(back.is_keyed());
        assert_eq!(&sqe.as_bytes()[32..36], &[0x56, 0x34, 0x12, 0xef]);
        assert_eq!(KeyedSgl::new(0, u32::MAX, 1).len(), KEYED_MAX_LEN);
    }
}
