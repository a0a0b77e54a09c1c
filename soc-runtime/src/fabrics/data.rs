//! Where a command's data travels over a fabric (its SGL descriptor: in
//! the capsule, or moved by the transport: NVMe/TCP's transport data
//! blocks, NVMe/RDMA's keyed data blocks), and the command's data as the
//! NVM planner of the controller core sees it ([`CapsuleData`]): a buffer
//! filled from the network instead of guest PRPs.

use leapio_controller::nvm::DataSource;
use leapio_nvme::fabrics::{
    FabricsStatus, SglDescriptor, FABRICS_OPCODE, SGL_IN_CAPSULE, SGL_TRANSPORT_DATA_BLOCK,
};
use leapio_nvme::rdma::{KeyedSgl, SGL_KEYED, SGL_KEYED_INVALIDATE};
use leapio_nvme::{Sqe, Status};
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
    /// Host to controller, moved by the transport (NVMe/TCP R2T and
    /// H2CData, an RDMA READ).
    ToController {
        len: usize,
    },
    /// Controller to host, moved by the transport (C2HData, an RDMA WRITE).
    ToHost {
        len: usize,
    },
}

impl Xfer {
    /// Length of the host's buffer for controller-to-host data.
    pub fn to_host_len(&self) -> u32 {
        match self {
            Xfer::ToHost { len } => u32::try_from(*len).unwrap_or(u32::MAX),
            _ => 0,
        }
    }
    /// Length of the host's data for the controller.
    pub fn to_controller_len(&self) -> Option<usize> {
        match self {
            Xfer::InCapsule { len, .. } | Xfer::ToController { len } => Some(*len),
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

/// Decode SGL1 of a command whose capsule carried `in_capsule` bytes;
/// `keyed`: data outside the capsule is named by a keyed descriptor
/// (RDMA), else by a transport data block (TCP).
pub fn parse_xfer(sqe: &Sqe, in_capsule: usize, max_len: u32, keyed: bool) -> Result<Xfer, Status> {
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
    let len = if keyed && matches!(sgl.sgl_type, SGL_KEYED | SGL_KEYED_INVALIDATE) {
        KeyedSgl::of(sqe).len()
    } else {
        sgl.length.get()
    };
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
        SGL_TRANSPORT_DATA_BLOCK if !keyed => moved(dir, in_capsule, len),
        SGL_KEYED | SGL_KEYED_INVALIDATE if keyed => moved(dir, in_capsule, len),
        _ => Err(FabricsStatus::SGL_DESCRIPTOR_TYPE_INVALID),
    }
}

fn moved(dir: u8, in_capsule: usize, len: usize) -> Result<Xfer, Status> {
    if in_capsule > 0 {
        return Err(Status::INVALID_FIELD);
    }
    Ok(if dir == 1 {
        Xfer::ToController { len }
    } else {
        Xfer::ToHost { len }
    })
}

/// A command's data over a fabric: the host's buffer as its SGL describes
/// it, and (host to controller) the bytes that arrived in the capsule or
/// were fetched.
pub struct CapsuleData<'a> {
    pub xfer: Xfer,
    pub buf: &'a [u8],
}

impl DataSource for CapsuleData<'_> {
    fn check(&self, _sqe: &Sqe) -> Result<(), Status> {
        // parse_xfer checked the SGL.
        Ok(())
    }

    fn map(&mut self, _sqe: &Sqe, len: u64, to_host: bool) -> Result<(), Status> {
        let have = if to_host {
            usize::try_from(self.xfer.to_host_len()).ok()
        } else {
            self.xfer.to_controller_len()
        };
        if have.and_then(|h| u64::try_from(h).ok()) != Some(len) {
            return Err(FabricsStatus::DATA_SGL_LENGTH_INVALID);
        }
        Ok(())
    }

    fn read(&mut self, _sqe: &Sqe, out: &mut [u8]) -> Result<(), Status> {
        let n = out.len();
        if self.xfer.to_controller_len().unwrap_or(0) < n || self.buf.len() < n {
            return Err(FabricsStatus::DATA_SGL_LENGTH_INVALID);
        }
        out.copy_from_slice(&self.buf[..n]);
        Ok(())
    }
}
