//! What every NVMe host backend does the same way, whatever carries its
//! commands (TCP, or PCIe through VFIO): the commands a request becomes,
//! the namespace's geometry from Identify, the transfer and queue limits a
//! controller grants, the status a failed command leaves the guest with.

use leapio_nvme::cmd::FeatureId;
use leapio_nvme::cmd::{DsmRange, DSM_ATTR_DEALLOCATE};
use leapio_nvme::identify::IdentifyNamespace;
use leapio_nvme::{AdminOpcode, IoOpcode, Sqe};

use crate::{Geometry, IoError, IoKind, MAX_BLOCK_SIZE, MIN_BLOCK_SIZE};

/// CC of an enabled host: EN, the NVM command set, 4 KiB pages, 64-byte
/// SQ and 16-byte CQ entries.
pub(crate) const HOST_CC: u32 = 1 | (6 << 16) | (4 << 20);

/// Most blocks one Write Zeroes or Read/Write command names (NLB is 16 bits).
pub(crate) const MAX_NLB: u64 = 1 << 16;

/// The command for `nlb` blocks at `slba` of namespace `nsid`, without its
/// data pointer (PRPs or an SGL, the carrier's). Deallocate takes one range
/// (a [`DsmRange`]) as its data. Zoned kinds are never given: backends
/// refuse them at submit.
pub(crate) fn io_command(kind: IoKind, nsid: u32, slba: u64, nlb: u32) -> Sqe {
    let mut sqe = Sqe {
        nsid: nsid.into(),
        ..Default::default()
    };
    let lba = |sqe: &mut Sqe| {
        sqe.cdw10 = u32::try_from(slba & 0xffff_ffff).unwrap_or(0).into();
        sqe.cdw11 = u32::try_from(slba >> 32).unwrap_or(0).into();
        sqe.cdw12 = nlb.saturating_sub(1).into();
    };
    match kind {
        IoKind::Read => {
            sqe.opcode = IoOpcode::READ;
            lba(&mut sqe);
        }
        IoKind::Write | IoKind::WriteFua => {
            sqe.opcode = IoOpcode::WRITE;
            lba(&mut sqe);
            if kind == IoKind::WriteFua {
                sqe.cdw12 = (sqe.cdw12.get() | 1 << 30).into();
            }
        }
        IoKind::WriteZeroes | IoKind::WriteZeroesFua => {
            sqe.opcode = IoOpcode::WRITE_ZEROES;
            lba(&mut sqe);
            if kind == IoKind::WriteZeroesFua {
                sqe.cdw12 = (sqe.cdw12.get() | 1 << 30).into();
            }
        }
        IoKind::Deallocate => {
            sqe.opcode = IoOpcode::DATASET_MANAGEMENT;
            // One range (NR 0), deallocate.
            sqe.cdw11 = DSM_ATTR_DEALLOCATE.into();
        }
        IoKind::Flush | IoKind::ZoneAppend { .. } | IoKind::Zone { .. } => {
            sqe.opcode = IoOpcode::FLUSH;
        }
    }
    sqe
}

/// The one range of a Deallocate.
pub(crate) fn dsm_range(slba: u64, nlb: u32) -> DsmRange {
    DsmRange {
        nlb: nlb.into(),
        slba: slba.into(),
        ..Default::default()
    }
}

/// Identify (CNS `cns`, namespace `nsid`).
pub(crate) fn identify(cns: u8, nsid: u32) -> Sqe {
    Sqe {
        opcode: AdminOpcode::IDENTIFY,
        nsid: nsid.into(),
        cdw10: u32::from(cns).into(),
        ..Default::default()
    }
}

/// Set Features, Number of Queues: ask for `n` I/O queues of each kind.
pub(crate) fn set_queue_count(n: u16) -> Sqe {
    let want = u32::from(n.max(1) - 1);
    Sqe {
        opcode: AdminOpcode::SET_FEATURES,
        cdw10: u32::from(FeatureId::NUMBER_OF_QUEUES).into(),
        cdw11: (want | (want << 16)).into(),
        ..Default::default()
    }
}

/// The I/O queue pairs a Number of Queues answer grants.
pub(crate) fn granted_queues(dw0: u32) -> u16 {
    u16::try_from((dw0 & 0xffff).min(dw0 >> 16) + 1).unwrap_or(u16::MAX)
}

/// The largest transfer a controller takes (MDTS, in units of its 4 KiB
/// minimum page); `u32::MAX` when it sets no limit.
pub(crate) fn max_transfer(mdts: u8) -> u32 {
    if mdts == 0 {
        u32::MAX
    } else {
        4096u32.checked_shl(u32::from(mdts)).unwrap_or(u32::MAX)
    }
}

/// The namespace's geometry from Identify Namespace, or why it cannot be
/// served: inactive, with metadata, with an unusable block size, or too
/// large to address in bytes (a device's word is not trusted).
pub(crate) fn namespace_geometry(idn: &IdentifyNamespace, nsid: u32) -> Result<Geometry, String> {
    let nsze = idn.nsze.get();
    if nsze == 0 {
        return Err(format!("namespace {nsid} is not active"));
    }
    let fmt = usize::from(idn.flbas & 0xf) | (usize::from(idn.flbas >> 5 & 0x3) << 4);
    let lbaf = idn
        .lbaf
        .get(fmt)
        .ok_or_else(|| format!("LBA format {fmt} out of range"))?;
    if lbaf.ms.get() != 0 {
        return Err("namespaces with metadata are not supported".into());
    }
    let block_size = 1u32.checked_shl(u32::from(lbaf.lbads)).unwrap_or(0);
    if !(MIN_BLOCK_SIZE..=MAX_BLOCK_SIZE).contains(&block_size) {
        return Err(format!("LBA data size 2^{} is not supported", lbaf.lbads));
    }
    if nsze.checked_mul(u64::from(block_size)).is_none() {
        return Err(format!(
            "namespace {nsid}: {nsze} blocks of {block_size} bytes is more than 2^64 bytes"
        ));
    }
    Ok(Geometry {
        block_size,
        num_blocks: nsze,
    })
}

/// A command's failure as the request's: the device's own status, which
/// reaches the guest as it is.
pub(crate) fn status_error(field: u16) -> IoError {
    IoError::device(field)
}

#[cfg(test)]
mod tests {
    use super::*;
    use zerocopy::FromZeros;

    fn idn(nsze: u64, lbads: u8) -> IdentifyNamespace {
        let mut n = IdentifyNamespace::new_zeroed();
        n.nsze = nsze.into();
        n.lbaf[0].lbads = lbads;
        n
    }

    #[test]
    fn a_namespaces_geometry_is_checked() {
        let g = namespace_geometry(&idn(2048, 12), 1).unwrap();
        assert_eq!((g.block_size, g.num_blocks), (4096, 2048));
        let mut meta = idn(8, 9);
        meta.lbaf[0].ms = 8.into();
        for (n, why) in [
            (idn(0, 9), "namespace 3 is not active"),
            (idn(1 << 60, 12), "more than 2^64 bytes"),
            (idn(u64::MAX, 9), "more than 2^64 bytes"),
            (idn(8, 8), "LBA data size 2^8"),
            (idn(8, 40), "LBA data size 2^40"),
            (meta, "metadata"),
        ] {
            let e = namespace_geometry(&n, 3).unwrap_err();
            assert!(e.contains(why), "{e}");
        }
    }

    #[test]
    fn commands_from_requests() {
        let r = io_command(IoKind::WriteFua, 5, 0x1_0000_0002, 8);
        assert_eq!(r.opcode, IoOpcode::WRITE);
        assert_eq!((r.nsid.get(), r.cdw10.get(), r.cdw11.get()), (5, 2, 1));
        assert_eq!(r.cdw12.get(), 7 | 1 << 30);
        let z = io_command(IoKind::WriteZeroes, 5, 4, 8);
        assert_eq!((z.opcode, z.cdw12.get()), (IoOpcode::WRITE_ZEROES, 7));
        let z = io_command(IoKind::WriteZeroesFua, 5, 4, 8);
        assert_eq!(
            (z.opcode, z.cdw12.get()),
            (IoOpcode::WRITE_ZEROES, 7 | 1 << 30)
        );
        let d = io_command(IoKind::Deallocate, 1, 9, 3);
        assert_eq!(
            (d.opcode, d.cdw10.get(), d.cdw11.get()),
            (IoOpcode::DATASET_MANAGEMENT, 0, DSM_ATTR_DEALLOCATE)
        );
        assert_eq!(io_command(IoKind::Flush, 1, 0, 0).opcode, IoOpcode::FLUSH);
        assert_eq!(granted_queues(0x0003_0007), 4);
        assert_eq!(set_queue_count(4).cdw11.get(), 0x0003_0003);
        assert_eq!((max_transfer(0), max_transfer(5)), (u32::MAX, 128 << 10));
    }
}
