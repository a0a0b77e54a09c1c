//! NVMe over Fabrics commands as a host sends them, whatever the
//! transport: Connect, properties, admin and I/O commands from fuzzer
//! input, mostly valid. The transport's modules put them in their capsules
//! and name the data outside the capsule their way (NVMe/TCP transport data
//! blocks, NVMe/RDMA keyed descriptors).

use crate::Input;
use leapio_nvme::fabrics::{self, FcType, PropertyCmd, SglDescriptor, FABRICS_OPCODE};
use leapio_nvme::{AdminOpcode, IoOpcode, Sqe};
use zerocopy::{FromBytes, FromZeros, IntoBytes};

/// The subsystem the target harnesses serve, and a host NQN.
pub const SUBNQN: &str = "nqn.2026-11.io.leapio:fuzz";
pub const HOSTNQN: &str = "nqn.2014-08.org.nvmexpress:uuid:fuzz";

/// A command's data.
pub enum Data {
    /// In the capsule, its SGL set (or no data at all: empty).
    Capsule(Vec<u8>),
    /// `len` bytes outside the capsule: the transport names them in SGL1.
    Transfer(u32),
}

/// A Connect command with its data in the capsule.
pub fn connect(cid: u16, qid: u16, sqsize: u16, cntlid: u16, kato: u32) -> (Sqe, Vec<u8>) {
    let (mut c, d) = fabrics::connect(qid, sqsize, kato, [7; 16], cntlid, HOSTNQN, SUBNQN);
    c.cid = cid.into();
    let mut sqe = Sqe::read_from_bytes(c.as_bytes()).expect("64 bytes");
    SglDescriptor::in_capsule(0, 1024).store(&mut sqe);
    (sqe, d.as_bytes().to_vec())
}

/// Property Set (`fctype` PROPERTY_SET) or Get, or another Fabrics command
/// with no data.
pub fn property(cid: u16, fctype: u8, offset: u32, size8: bool, value: u64) -> Sqe {
    let mut p = PropertyCmd::new_zeroed();
    p.opcode = FABRICS_OPCODE;
    p.fctype = fctype;
    p.cid = cid.into();
    p.attrib = u8::from(size8);
    p.offset = offset.into();
    p.value = value.into();
    Sqe::read_from_bytes(p.as_bytes()).expect("64 bytes")
}

/// Command `choice` (0: Connect, 1: Property Set, 2: Property Get, 3: I/O,
/// 4: admin, else another Fabrics command) with CID `cid`, from `input`.
pub fn command(input: &mut Input<'_>, choice: u8, cid: u16) -> (Sqe, Data) {
    match choice {
        0 => {
            let qid = u16::from(input.u8() % 6);
            let cntlid = if input.u8() < 200 {
                0xffff
            } else {
                1 + u16::from(input.u8() % 4)
            };
            let sqsize = 1 + u16::from(input.u8() % 40);
            let (sqe, data) = connect(cid, qid, sqsize, cntlid, u32::from(input.u16()));
            (sqe, Data::Capsule(data))
        }
        1 => {
            // CC.EN (and sometimes shutdown), or anything.
            let (off, v) = if input.u8() < 200 {
                (0x14, 0x0046_0001 | (u64::from(input.u8() & 3) << 14))
            } else {
                (u32::from(input.u8()), input.u64())
            };
            let sqe = property(cid, FcType::PROPERTY_SET, off, input.bool(), v);
            (sqe, Data::Capsule(Vec::new()))
        }
        2 => {
            let off = u32::from(input.u8() % 0x40) & !3;
            let sqe = property(cid, FcType::PROPERTY_GET, off, input.bool(), 0);
            (sqe, Data::Capsule(Vec::new()))
        }
        3 => io(input, cid),
        4 => {
            // Admin: Identify, logs, features, keep alive, AER, anything.
            let op = [
                AdminOpcode::IDENTIFY,
                AdminOpcode::GET_LOG_PAGE,
                AdminOpcode::GET_FEATURES,
                AdminOpcode::SET_FEATURES,
                AdminOpcode::KEEP_ALIVE,
                AdminOpcode::ASYNC_EVENT_REQUEST,
                AdminOpcode::IDENTIFY,
                input.u8(),
            ][usize::from(input.u8() % 8)];
            let sqe = Sqe {
                opcode: op,
                cid: cid.into(),
                nsid: u32::from(input.u8() % 4).into(),
                cdw10: (u32::from(input.u8()) | (u32::from(input.u16() % 0x400) << 16)).into(),
                cdw11: u32::from(input.u16()).into(),
                cdw12: u32::from(input.u16()).into(),
                ..Default::default()
            };
            (sqe, Data::Transfer(u32::from(input.u16())))
        }
        _ => {
            let fc =
                [FcType::DISCONNECT, FcType::AUTH_SEND, input.u8()][usize::from(input.u8() % 3)];
            (property(cid, fc, 0, false, 0), Data::Capsule(Vec::new()))
        }
    }
}

/// I/O: read, write (data in the capsule or not), flush, write zeroes, DSM.
fn io(input: &mut Input<'_>, cid: u16) -> (Sqe, Data) {
    let op = [
        IoOpcode::READ,
        IoOpcode::WRITE,
        IoOpcode::WRITE,
        IoOpcode::FLUSH,
        IoOpcode::WRITE_ZEROES,
        IoOpcode::DATASET_MANAGEMENT,
        IoOpcode::READ,
        input.u8(),
    ][usize::from(input.u8() % 8)];
    let nsid = [1, 1, 2, 0, 3, u32::MAX, 1, 2][usize::from(input.u8() % 8)];
    let slba = u64::from(input.u16() % 2048);
    let nlb = u32::from(input.u8() % 16);
    let bs = if nsid == 2 { 4096 } else { 512 };
    let len = (nlb + 1) * bs;
    let mut sqe = Sqe {
        opcode: op,
        cid: cid.into(),
        nsid: nsid.into(),
        cdw10: (slba as u32).into(),
        cdw11: u32::from(input.u8() & 4).into(),
        cdw12: (nlb | (u32::from(input.u8() & 0xc0) << 24)).into(),
        ..Default::default()
    };
    let inline_len = if op == IoOpcode::WRITE && input.bool() {
        usize::try_from(len.min(8192)).unwrap_or(0)
    } else if op == IoOpcode::DATASET_MANAGEMENT {
        16
    } else {
        0
    };
    let inline = input.bytes(inline_len).to_vec();
    let transfer = if input.u8() < 230 { len } else { input.u32() };
    if inline.is_empty() {
        return (sqe, Data::Transfer(transfer));
    }
    SglDescriptor::in_capsule(0, u32::try_from(inline.len()).unwrap_or(u32::MAX)).store(&mut sqe);
    (sqe, Data::Capsule(inline))
}
