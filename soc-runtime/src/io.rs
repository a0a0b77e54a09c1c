//! NVM command set: validate a submission queue entry (already copied out of
//! guest memory) and turn it into backend requests.

use leapio_ats::prp::{map_prps, PrpLimits};
use leapio_ats::{Access, Snapshot};
use leapio_nvme::cmd::{DsmRange, DSM_ATTR_DEALLOCATE, WRITE_ZEROES_DEAC};
use leapio_nvme::controller::NamespaceInfo;
use leapio_nvme::guest::dma::{copy_from_prps, prp_status};
use leapio_nvme::{IoOpcode, Sqe, Status};
use leapio_transports::IoKind;
use zerocopy::FromBytes;

/// One backend operation of a command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Op {
    pub kind: IoKind,
    pub offset: u64,
    pub len: u64,
}

/// What a command turned into.
#[derive(Debug, PartialEq, Eq)]
pub enum Plan {
    /// Nothing to do on the backend: complete with this status.
    Complete(Status),
    /// One data or flush operation; data iovecs are in the caller's buffer.
    Single(Op),
    /// Several operations (DSM deallocate ranges) completing as one.
    Multi(Vec<Op>),
}

/// Maximum DSM ranges per command (NR is 8 bits, 0's based).
const MAX_DSM_RANGES: usize = 256;

/// Validate `sqe` for namespace `ns` and plan its backend work; data
/// commands fill `iov` with the guest buffers (host addresses).
pub fn plan(
    snap: &Snapshot,
    sqe: &Sqe,
    ns: &NamespaceInfo,
    limits: &PrpLimits,
    iov: &mut Vec<libc::iovec>,
) -> Plan {
    match plan_inner(snap, sqe, ns, limits, iov) {
        Ok(p) => p,
        Err(s) => Plan::Complete(s),
    }
}

/// Byte offset and length of a read/write-style command's LBA range, or
/// LBA Out of Range (overflow included).
pub fn lba_range(sqe: &Sqe, ns: &NamespaceInfo) -> Result<(u64, u64), Status> {
    let slba = sqe.slba();
    let nlb = u64::from(sqe.nlb());
    match slba.checked_add(nlb) {
        Some(end) if end <= ns.num_blocks => {}
        _ => return Err(Status::LBA_OUT_OF_RANGE),
    }
    let bs = u64::from(ns.block_size);
    Ok((slba * bs, nlb * bs))
}

fn plan_inner(
    snap: &Snapshot,
    sqe: &Sqe,
    ns: &NamespaceInfo,
    limits: &PrpLimits,
    iov: &mut Vec<libc::iovec>,
) -> Result<Plan, Status> {
    if sqe.fuse() != 0 || sqe.psdt() != 0 {
        return Err(Status::INVALID_FIELD);
    }
    match sqe.opcode {
        IoOpcode::READ | IoOpcode::WRITE => {
            let (offset, len) = lba_range(sqe, ns)?;
            if len > limits.max_transfer {
                return Err(Status::INVALID_FIELD);
            }
            let (kind, access) = if sqe.opcode == IoOpcode::READ {
                (IoKind::Read, Access::Write)
            } else if sqe.fua() {
                (IoKind::WriteFua, Access::Read)
            } else {
                (IoKind::Write, Access::Read)
            };
            map_prps(
                snap,
                sqe.prp1.get(),
                sqe.prp2.get(),
                len,
                limits,
                access,
                iov,
            )
            .map_err(|e| prp_status(&e))?;
            Ok(Plan::Single(Op { kind, offset, len }))
        }
        IoOpcode::FLUSH => Ok(flush_plan(ns)),
        IoOpcode::WRITE_ZEROES => write_zeroes_plan(sqe, ns),
        IoOpcode::DATASET_MANAGEMENT => {
            if !ns.deallocate {
                return Err(Status::INVALID_OPCODE);
            }
            if sqe.cdw11.get() & DSM_ATTR_DEALLOCATE == 0 {
                // Only attribute hints: nothing to do.
                return Ok(Plan::Complete(Status::SUCCESS));
            }
            let nr = usize::try_from(sqe.cdw10.get() & 0xff).unwrap_or(0) + 1;
            let mut buf = [0u8; MAX_DSM_RANGES * 16];
            let bytes = &mut buf[..nr * 16];
            copy_from_prps(snap, sqe.prp1.get(), sqe.prp2.get(), bytes, *limits)?;
            dsm_deallocate_plan(bytes, ns)
        }
        _ => Err(Status::INVALID_OPCODE),
    }
}

/// With the volatile write cache disabled (Set Features), a write must be
/// durable when it completes: plain writes become FUA writes.
pub fn write_through(plan: Plan) -> Plan {
    match plan {
        Plan::Single(op) if op.kind == IoKind::Write => Plan::Single(Op {
            kind: IoKind::WriteFua,
            ..op
        }),
        other => other,
    }
}

/// Flush: a backend flush where completed writes may sit in a volatile
/// cache, else nothing to do.
pub fn flush_plan(ns: &NamespaceInfo) -> Plan {
    if ns.volatile_write_cache {
        Plan::Single(Op {
            kind: IoKind::Flush,
            offset: 0,
            len: 0,
        })
    } else {
        Plan::Complete(Status::SUCCESS)
    }
}

/// Write Zeroes (a deallocate when DEAC is set and the namespace can).
pub fn write_zeroes_plan(sqe: &Sqe, ns: &NamespaceInfo) -> Result<Plan, Status> {
    if !ns.write_zeroes {
        return Err(Status::INVALID_OPCODE);
    }
    let (offset, len) = lba_range(sqe, ns)?;
    let kind = if sqe.cdw12.get() & WRITE_ZEROES_DEAC != 0 && ns.deallocate {
        IoKind::Deallocate
    } else {
        IoKind::WriteZeroes
    };
    Ok(Plan::Single(Op { kind, offset, len }))
}

/// The deallocate operations of a Dataset Management command whose 16-byte
/// ranges are in `ranges`: each range is checked against the namespace;
/// empty ranges are skipped.
pub fn dsm_deallocate_plan(ranges: &[u8], ns: &NamespaceInfo) -> Result<Plan, Status> {
    let bs = u64::from(ns.block_size);
    let mut ops = Vec::with_capacity(ranges.len() / 16);
    for chunk in ranges.chunks_exact(16) {
        let r = DsmRange::read_from_bytes(chunk).map_err(|_| Status::INTERNAL_ERROR)?;
        let nlb = u64::from(r.nlb.get());
        if nlb == 0 {
            continue;
        }
        match r.slba.get().checked_add(nlb) {
            Some(end) if end <= ns.num_blocks => {}
            _ => return Err(Status::LBA_OUT_OF_RANGE),
        }
        ops.push(Op {
            kind: IoKind::Deallocate,
            offset: r.slba.get() * bs,
            len: nlb * bs,
        });
    }
    if ops.is_empty() {
        return Ok(Plan::Complete(Status::SUCCESS));
    }
    Ok(Plan::Multi(ops))
}

/// NVMe status for a failed backend operation.
pub fn backend_status(kind: IoKind, errno: i32) -> Status {
    match errno {
        libc::ENOSPC | libc::EDQUOT => Status::CAPACITY_EXCEEDED,
        libc::EFAULT => Status::DATA_TRANSFER_ERROR,
        libc::EOPNOTSUPP | libc::EINVAL => Status::INTERNAL_ERROR,
        _ => match kind {
            IoKind::Read => Status::UNRECOVERED_READ_ERROR,
            _ => Status::WRITE_FAULT,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_through_makes_only_writes_fua() {
        let op = |kind| Op {
            kind,
            offset: 4096,
            len: 512,
        };
        let Plan::Single(o) = write_through(Plan::Single(op(IoKind::Write))) else {
            panic!("not a single op");
        };
        assert_eq!((o.kind, o.offset, o.len), (IoKind::WriteFua, 4096, 512));
        for k in [IoKind::Read, IoKind::WriteFua, IoKind::Flush] {
            let Plan::Single(o) = write_through(Plan::Single(op(k))) else {
                panic!("not a single op");
            };
            assert_eq!(o.kind, k);
        }
    }
}
