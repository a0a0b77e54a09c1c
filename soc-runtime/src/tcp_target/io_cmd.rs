//! Where a command's data travels over NVMe/TCP (its SGL descriptor), and
//! the command's data as the NVM planner of the controller core sees it
//! ([`CapsuleData`]): a buffer filled from the network instead of guest
//! PRPs.

use leapio_controller::nvm::DataSource;
use leapio_nvme::fabrics::{
    FabricsStatus, SglDescriptor, FABRICS_OPCODE, SGL_IN_CAPSULE, SGL_TRANSPORT_DATA_BLOCK,
};
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

/// A command's data over NVMe/TCP: the host's buffer as its SGL describes
/// it, and (host to controller) the bytes that arrived in the capsule or
/// with H2CData.
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
            usize::try_from(self.xfer.c2h_len()).ok()
        } else {
            self.xfer.h2c_len()
        };
        if have.and_then(|h| u64::try_from(h).ok()) != Some(len) {
            return Err(FabricsStatus::DATA_SGL_LENGTH_INVALID);
        }
        Ok(())
    }

    fn read(&mut self, _sqe: &Sqe, out: &mut [u8]) -> Result<(), Status> {
        let n = out.len();
        if self.xfer.h2c_len().unwrap_or(0) < n || self.buf.len() < n {
            return Err(FabricsStatus::DATA_SGL_LENGTH_INVALID);
        }
        out.copy_from_slice(&self.buf[..n]);
        Ok(())
    }
}
