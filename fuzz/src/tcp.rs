//! NVMe/TCP PDUs as a host (to the target) and as a target (to the host),
//! for the fuzz targets and their seeds.

use crate::fabrics::{self, Data};
use crate::Input;
use leapio_nvme::fabrics::SglDescriptor;
use leapio_nvme::tcp::{
    write_pdu, CapsuleCmd, CapsuleResp, DataHdr, Digests, IcReq, PduFlags, PduType, R2t, TermReq,
};
use leapio_nvme::Sqe;
use zerocopy::IntoBytes;

pub use crate::fabrics::{HOSTNQN, SUBNQN};

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

/// A Connect capsule with its data in the capsule.
pub fn connect(cid: u16, qid: u16, sqsize: u16, cntlid: u16, kato: u32, dg: Digests) -> Vec<u8> {
    let (sqe, data) = fabrics::connect(cid, qid, sqsize, cntlid, kato);
    capsule(&sqe, &data, dg)
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
    capsule(
        &fabrics::property(cid, fctype, offset, size8, value),
        &[],
        dg,
    )
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
        9 => term_req(PduType::H2C_TERM_REQ, input.u16()),
        k @ 1..=8 => {
            // 1..=6 and 8: Connect, properties, I/O (twice as often), admin,
            // other Fabrics commands.
            let choice = [0, 0, 1, 2, 3, 3, 4, 0, 5][usize::from(k)];
            match fabrics::command(input, choice, c) {
                (sqe, Data::Capsule(d)) => capsule(&sqe, &d, *dg),
                (mut sqe, Data::Transfer(n)) => {
                    SglDescriptor::transport(n).store(&mut sqe);
                    capsule(&sqe, &[], *dg)
                }
            }
        }
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
