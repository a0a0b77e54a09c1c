//! NVMe/TCP PDUs as a host (to the target) and as a target (to the host),
//! for the fuzz targets and their seeds.

use crate::Input;
use leapio_nvme::fabrics::{
    ConnectCmd, ConnectData, FcType, PropertyCmd, SglDescriptor, FABRICS_OPCODE,
};
use leapio_nvme::tcp::{
    write_pdu, CapsuleCmd, CapsuleResp, DataHdr, Digests, IcReq, PduFlags, PduType, R2t, TermReq,
};
use leapio_nvme::{AdminOpcode, IoOpcode, Sqe};
use zerocopy::{FromBytes, IntoBytes};

/// The subsystem the target harness serves, and a host NQN.
pub const SUBNQN: &str = "nqn.2026-11.io.leapio:fuzz";
pub const HOSTNQN: &str = "nqn.2014-08.org.nvmexpress:uuid:fuzz";

pub fn icreq(hpda: u8, dgst: u8) -> Vec<u8> {
    let mut req = IcReq::new();
    req.hpda = hpda;
    req.dgst = dgst;
    let mut out = Vec::new();
    write_pdu(&mut out, req.as_bytes(), &[], Digests::default(), 4);
    out
}

pub fn capsule(sqe: &Sqe, data: &[u8], dg: Digests) -> Vec<u8> {
    let mut c = CapsuleCmd::new();
    c.sqe = *sqe;
    let mut out = Vec::new();
    write_pdu(&mut out, c.as_bytes(), data, dg, 4);
    out
}

fn put_nqn(field: &mut [u8], nqn: &str) {
    field[..nqn.len()].copy_from_slice(nqn.as_bytes());
}

/// A Connect capsule with its data in the capsule.
pub fn connect(cid: u16, qid: u16, sqsize: u16, cntlid: u16, kato: u32, dg: Digests) -> Vec<u8> {
    let mut c = ConnectCmd::read_from_bytes(&[0u8; 64][..]).expect("64 bytes");
    c.opcode = FABRICS_OPCODE;
    c.fctype = FcType::CONNECT;
    c.cid = cid.into();
    c.qid = qid.into();
    c.sqsize = sqsize.into();
    c.kato = kato.into();
    let mut d = ConnectData::zeroed();
    d.hostid = [7; 16];
    d.cntlid = cntlid.into();
    put_nqn(&mut d.subnqn, SUBNQN);
    put_nqn(&mut d.hostnqn, HOSTNQN);
    let mut sqe = Sqe::read_from_bytes(c.as_bytes()).expect("64 bytes");
    SglDescriptor::in_capsule(0, 1024).store(&mut sqe);
    capsule(&sqe, d.as_bytes(), dg)
}

/// Property Set (`fctype` PROPERTY_SET) or Get.
pub fn property(
    cid: u16,
    fctype: u8,
    offset: u32,
    size8: bool,
    value: u64,
    dg: Digests,
) -> Vec<u8> {
    let mut p = PropertyCmd::read_from_bytes(&[0u8; 64][..]).expect("64 bytes");
    p.opcode = FABRICS_OPCODE;
    p.fctype = fctype;
    p.cid = cid.into();
    p.attrib = u8::from(size8);
    p.offset = offset.into();
    p.value = value.into();
    let sqe = Sqe::read_from_bytes(p.as_bytes()).expect("64 bytes");
    capsule(&sqe, &[], dg)
}

pub fn h2c_data(cid: u16, ttag: u16, datao: u32, data: &[u8], last: bool, dg: Digests) -> Vec<u8> {
    let mut h = DataHdr::new(PduType::H2C_DATA);
    h.cccid = cid.into();
    h.ttag = ttag.into();
    h.datao = datao.into();
    h.datal = u32::try_from(data.len()).unwrap_or(u32::MAX).into();
    if last {
        h.ch.set_flags(PduFlags::DATA_LAST);
    }
    let mut out = Vec::new();
    write_pdu(&mut out, h.as_bytes(), data, dg, 4);
    out
}

pub fn term_req(pdu_type: u8, fes: u16) -> Vec<u8> {
    let t = TermReq::new(pdu_type, fes, 0);
    let mut out = Vec::new();
    write_pdu(&mut out, t.as_bytes(), &[], Digests::default(), 4);
    out
}

/// A command with its data described by an SGL: in the capsule (`inline`)
/// or to be transferred by R2T/H2CData or C2HData.
pub fn command(mut sqe: Sqe, inline: &[u8], transfer: u32, dg: Digests) -> Vec<u8> {
    let sgl = if inline.is_empty() {
        SglDescriptor::transport(transfer)
    } else {
        SglDescriptor::in_capsule(0, u32::try_from(inline.len()).unwrap_or(u32::MAX))
    };
    sgl.store(&mut sqe);
    capsule(&sqe, inline, dg)
}

/// Host-to-target PDUs from fuzzer input, mostly valid for the
/// connection's state (`dg` follows its ICReq).
pub fn host_pdu(input: &mut Input<'_>, dg: &mut Digests, cid: &mut u16) -> Vec<u8> {
    *cid = cid.wrapping_add(1);
    let c = *cid;
    match input.u8() % 12 {
        0 => {
            let dgst = if input.u8() < 200 { 0 } else { input.u8() & 3 };
            *dg = Digests::from_dgst(dgst);
            icreq(if input.u8() < 240 { 0 } else { input.u8() }, dgst)
        }
        1 => {
            let qid = u16::from(input.u8() % 6);
            let cntlid = if input.u8() < 200 {
                0xffff
            } else {
                1 + u16::from(input.u8() % 4)
            };
            connect(
                c,
                qid,
                1 + u16::from(input.u8() % 40),
                cntlid,
                u32::from(input.u16()),
                *dg,
            )
        }
        2 => {
            // CC.EN (and sometimes shutdown), or anything.
            let (off, v) = if input.u8() < 200 {
                (0x14, 0x0046_0001 | (u64::from(input.u8() & 3) << 14))
            } else {
                (u32::from(input.u8()), input.u64())
            };
            property(c, FcType::PROPERTY_SET, off, input.bool(), v, *dg)
        }
        3 => {
            let off = u32::from(input.u8() % 0x40) & !3;
            property(c, FcType::PROPERTY_GET, off, input.bool(), 0, *dg)
        }
        4 | 5 => {
            // I/O: read, write (in capsule or by R2T), flush, write zeroes, DSM.
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
            let sqe = Sqe {
                opcode: op,
                cid: c.into(),
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
            command(sqe, &inline, transfer, *dg)
        }
        6 => {
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
                cid: c.into(),
                nsid: u32::from(input.u8() % 4).into(),
                cdw10: (u32::from(input.u8()) | (u32::from(input.u16() % 0x400) << 16)).into(),
                cdw11: u32::from(input.u16()).into(),
                cdw12: u32::from(input.u16()).into(),
                ..Default::default()
            };
            command(sqe, &[], u32::from(input.u16()), *dg)
        }
        7 => {
            let len = input.below(4097);
            let data = input.bytes(len).to_vec();
            // Transfer tags are command slots: small numbers.
            let ttag = u16::from(input.u8() % 8);
            let back = u16::from(input.u8() % 4);
            h2c_data(
                c.wrapping_sub(back),
                ttag,
                u32::from(input.u16()) & !0x1ff,
                &data,
                input.bool(),
                *dg,
            )
        }
        8 => {
            let fc =
                [FcType::DISCONNECT, FcType::AUTH_SEND, input.u8()][usize::from(input.u8() % 3)];
            property(c, fc, 0, false, 0, *dg)
        }
        9 => term_req(PduType::H2C_TERM_REQ, input.u16()),
        _ => {
            let len = input.below(200);
            input.bytes(len).to_vec()
        }
    }
}

/// Target-to-host PDUs from fuzzer input, for the host backend: responses,
/// R2Ts and C2HData for commands `cids`, with the connection's digests.
pub fn target_pdu(input: &mut Input<'_>, dg: Digests, cids: u16) -> Vec<u8> {
    let cid = |input: &mut Input<'_>| {
        if input.u8() < 230 {
            u16::from(input.u8()) % cids.max(1)
        } else {
            input.u16()
        }
    };
    let mut out = Vec::new();
    match input.u8() % 8 {
        0 | 1 => {
            let mut r = CapsuleResp::new();
            r.cqe.cid = cid(input).into();
            let status: u16 = if input.u8() < 200 {
                0
            } else {
                input.u16() & !1
            };
            r.cqe.status = status.into();
            write_pdu(&mut out, r.as_bytes(), &[], dg, 4);
        }
        2 | 3 => {
            let mut h = DataHdr::new(PduType::C2H_DATA);
            h.cccid = cid(input).into();
            let len = input.below(4097);
            let data = input.bytes(len).to_vec();
            h.datao = (u32::from(input.u8() % 16) * 512).into();
            h.datal = u32::try_from(data.len()).unwrap_or(0).into();
            h.ch.flags = input.u8() & 0x0c;
            write_pdu(&mut out, h.as_bytes(), &data, dg, 4);
            if input.u8() > 240 {
                // A wrong data digest.
                if let Some(b) = out.last_mut() {
                    *b ^= 1;
                }
            }
        }
        4 | 5 => {
            let mut r = R2t::new();
            r.cccid = cid(input).into();
            r.ttag = input.u16().into();
            r.r2to = (u32::from(input.u8() % 16) * 512).into();
            r.r2tl = (1 + u32::from(input.u16() % 8192)).into();
            write_pdu(&mut out, r.as_bytes(), &[], dg, 4);
        }
        6 => out = term_req(PduType::C2H_TERM_REQ, input.u16()),
        _ => {
            let len = input.below(200);
            out = input.bytes(len).to_vec();
        }
    }
    out
}
