//! Where a command's data travels (SGL descriptor) and what an NVM command
//! asks of the backend. The backend operations and error mapping are the
//! runtime's ([`crate::io`]); only the data source differs from the PCI
//! path (a buffer filled from the network instead of guest PRPs).

use super::ctrl::Subsystem;
use crate::io::lba_range;
use crate::io::{flush_plan, write_zeroes_plan, Op, Plan};
use leapio_backends::IoKind;
use leapio_controller::NamespaceInfo;
use leapio_nvme::cmd::DSM_ATTR_DEALLOCATE;
use leapio_nvme::fabrics::{
    FabricsStatus, SglDescriptor, FABRICS_OPCODE, SGL_IN_CAPSULE, SGL_TRANSPORT_DATA_BLOCK,
};
use leapio_nvme::{IoOpcode, Sqe, Status};
use zerocopy::IntoBytes;

/// How a command's data moves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Xfer {
    None,
    /// Host to controller, inside the command capsule.
    InCapsule {
        offset: usize,
        len: usize,
    },
    /// Host to controller, with R2T/H2CData.
    H2c {
        len: usize,
    },
    /// Controller to host, with C2HData.
    C2h {
        len: usize,
    },
}

impl Xfer {
    /// Length of the host's buffer for controller-to-host data.
    pub fn c2h_len(&self) -> u32 {
        match self {
            Xfer::C2h { len } => u32::try_from(*len).unwrap_or(u32::MAX),
            _ => 0,
        }
    }
    fn h2c_len(&self) -> Option<usize> {
        match self {
            Xfer::InCapsule { len, .. } | Xfer::H2c { len } => Some(*len),
            _ => None,
        }
    }
}

/// Data direction from the opcode (Fabrics: from FCTYPE) bits 1:0.
fn direction(sqe: &Sqe) -> u8 {
    if sqe.opcode == FABRICS_OPCODE {
        sqe.as_bytes()[4] & 0x3
    } else {
        sqe.opcode & 0x3
    }
}

/// Decode SGL1 of a command whose capsule carried `in_capsule` bytes.
pub fn parse_xfer(sqe: &Sqe, in_capsule: usize, max_len: u32) -> Result<Xfer, Status> {
    let dir = direction(sqe);
    if in_capsule > 0 && dir != 1 {
        return Err(Status::INVALID_FIELD);
    }
    if dir == 0 {
        return Ok(Xfer::None);
    }
    if dir == 3 {
        return Err(Status::INVALID_FIELD);
    }
    if sqe.psdt() == 0 {
        // PRPs mean nothing over a fabric.
        return Err(Status::INVALID_FIELD);
    }
    let sgl = SglDescriptor::of(sqe);
    let len = sgl.length.get();
    if len == 0 {
        return Ok(Xfer::None);
    }
    if len > max_len {
        return Err(Status::INVALID_FIELD);
    }
    let len = usize::try_from(len).map_err(|_| Status::INVALID_FIELD)?;
    match sgl.sgl_type {
        SGL_IN_CAPSULE => {
            if dir != 1 {
                return Err(FabricsStatus::SGL_DESCRIPTOR_TYPE_INVALID);
            }
            let offset = usize::try_from(sgl.addr.get())
                .ok()
                .filter(|o| *o < in_capsule)
                .ok_or(FabricsStatus::SGL_OFFSET_INVALID)?;
            if offset + len > in_capsule {
                return Err(FabricsStatus::DATA_SGL_LENGTH_INVALID);
            }
            Ok(Xfer::InCapsule { offset, len })
        }
        SGL_TRANSPORT_DATA_BLOCK => {
            if in_capsule > 0 {
                return Err(Status::INVALID_FIELD);
            }
            Ok(if dir == 1 {
                Xfer::H2c { len }
            } else {
                Xfer::C2h { len }
            })
        }
        _ => Err(FabricsStatus::SGL_DESCRIPTOR_TYPE_INVALID),
    }
}

/// Validate an NVM command and plan its backend work. Returns the
/// namespace index with the plan. Data commands' buffers: `buf` holds the
/// host's data (writes, DSM ranges).
pub fn plan(sub: &Subsystem, sqe: &Sqe, xfer: &Xfer, buf: &[u8]) -> (usize, Plan) {
    let Some((i, ns)) = sub.namespace(sqe.nsid.get()) else {
        return (0, Plan::Complete(Status::INVALID_NAMESPACE));
    };
    match plan_inner(sub, sqe, ns, xfer, buf) {
        Ok(p) => (i, p),
        Err(s) => (i, Plan::Complete(s)),
    }
}

fn plan_inner(
    sub: &Subsystem,
    sqe: &Sqe,
    ns: &NamespaceInfo,
    xfer: &Xfer,
    buf: &[u8],
) -> Result<Plan, Status> {
    if sqe.fuse() != 0 {
        return Err(Status::INVALID_FIELD);
    }
    match sqe.opcode {
        IoOpcode::READ | IoOpcode::WRITE => {
            let (offset, len) = lba_range(sqe, ns)?;
            if len > u64::from(sub.limits.mdts_bytes()) {
                return Err(Status::INVALID_FIELD);
            }
            let have = if sqe.opcode == IoOpcode::READ {
                usize::try_from(xfer.c2h_len()).ok()
            } else {
                xfer.h2c_len()
            };
            if have.and_then(|h| u64::try_from(h).ok()) != Some(len) {
                return Err(FabricsStatus::DATA_SGL_LENGTH_INVALID);
            }
            let kind = if sqe.opcode == IoOpcode::READ {
                IoKind::Read
            } else if sqe.fua() {
                IoKind::WriteFua
            } else {
                IoKind::Write
            };
            Ok(Plan::Single(Op { kind, offset, len }))
        }
        IoOpcode::FLUSH => Ok(flush_plan(ns)),
        IoOpcode::WRITE_ZEROES => write_zeroes_plan(sqe, ns),
        IoOpcode::DATASET_MANAGEMENT => {
            if !ns.deallocate {
                return Err(Status::INVALID_OPCODE);
            }
            let nr = usize::try_from(sqe.cdw10.get() & 0xff).unwrap_or(0) + 1;
            if xfer.h2c_len().unwrap_or(0) < nr * 16 || buf.len() < nr * 16 {
                return Err(FabricsStatus::DATA_SGL_LENGTH_INVALID);
            }
            if sqe.cdw11.get() & DSM_ATTR_DEALLOCATE == 0 {
                return Ok(Plan::Complete(Status::SUCCESS));
            }
            crate::io::dsm_deallocate_plan(&buf[..nr * 16], ns)
        }
        IoOpcode::ZONE_APPEND => {
            let op = crate::io::zone_append_op(sqe, ns, u64::from(sub.limits.mdts_bytes()))?;
            if xfer.h2c_len().and_then(|h| u64::try_from(h).ok()) != Some(op.len) {
                return Err(FabricsStatus::DATA_SGL_LENGTH_INVALID);
            }
            Ok(Plan::Single(op))
        }
        IoOpcode::ZONE_MGMT_SEND => crate::io::zone_send_plan(sqe, ns),
        _ => Err(Status::INVALID_OPCODE),
    }
}

/// Zone Management Receive: the report's bytes, from the backend's zones.
pub fn zone_report(sub: &Subsystem, sqe: &Sqe) -> Result<Vec<u8>, Status> {
    let (i, ns) = sub
        .namespace(sqe.nsid.get())
        .ok_or(Status::INVALID_NAMESPACE)?;
    let req = crate::io::zone_report_request(sqe, ns, u64::from(sub.limits.mdts_bytes()))?;
    let backend = sub.backends.get(i).ok_or(Status::INTERNAL_ERROR)?;
    let zones = backend.report_zones(req.slba, usize::MAX);
    Ok(crate::io::zone_report(&req, &zones))
}
