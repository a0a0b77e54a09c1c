//! The NVM command set (and the zoned commands of ZNS): a command, already
//! copied out of its queue, validated against its namespace and planned
//! into backend operations, whatever the transport. Where the command's
//! data is (PRPs in guest memory, a capsule or R2T buffer) is a
//! [`DataSource`]; how a backend's failure reads to the host is here too.

use crate::{NamespaceInfo, ZonedInfo};
use leapio_ats::prp::{map_prps, PrpLimits};
use leapio_ats::transfer::{copy_from_prps, prp_status};
use leapio_ats::{Access, Snapshot};
use leapio_backend::{IoError, IoKind, ZoneAction, ZoneDesc, ZoneError, ZoneState};
use leapio_nvme::cmd::{DsmRange, DSM_ATTR_DEALLOCATE, WRITE_ZEROES_DEAC};
use leapio_nvme::zns::{
    ZoneDescriptor, ZoneReportHeader, ZoneStateCode, Zrasf, Zsa, ZA_ZFC, ZRA_REPORT_ZONES,
    ZRECV_PARTIAL, ZSEND_SELECT_ALL, ZT_SEQUENTIAL_WRITE_REQUIRED,
};
use leapio_nvme::{IoOpcode, Sqe, Status};
use zerocopy::{FromBytes, FromZeros, IntoBytes};

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
    /// One data or flush operation; its data is what the [`DataSource`]
    /// mapped.
    Single(Op),
    /// Several operations (DSM deallocate ranges) completing as one.
    Multi(Vec<Op>),
    /// Zone Management Receive: answered from the backend's zones (see
    /// [`zone_report`]), no backend operation.
    ZoneReport(ZoneReport),
}

/// Where a command's data is, for the transport it came over.
pub trait DataSource {
    /// Whether the command's data pointer fields suit this transport
    /// (PSDT: PRPs in memory, SGLs over a fabric).
    fn check(&self, sqe: &Sqe) -> Result<(), Status>;
    /// The command moves `len` bytes, to the host when `to_host`: make them
    /// ready for the backend (host buffers for PRPs; a check of the
    /// transfer's length for a capsule).
    fn map(&mut self, sqe: &Sqe, len: u64, to_host: bool) -> Result<(), Status>;
    /// Copy the start of the host's data into `buf` (DSM ranges).
    fn read(&mut self, sqe: &Sqe, buf: &mut [u8]) -> Result<(), Status>;
}

/// A command's data in guest memory, described by PRP1/PRP2: mapped into
/// host iovecs for the backend.
pub struct PrpData<'a> {
    pub snap: &'a Snapshot,
    pub limits: PrpLimits,
    /// The data's host buffers, filled by [`DataSource::map`].
    pub iov: &'a mut Vec<libc::iovec>,
}

impl DataSource for PrpData<'_> {
    fn check(&self, sqe: &Sqe) -> Result<(), Status> {
        // No SGLs (SGLS = 0).
        if sqe.psdt() != 0 {
            return Err(Status::INVALID_FIELD);
        }
        Ok(())
    }

    fn map(&mut self, sqe: &Sqe, len: u64, to_host: bool) -> Result<(), Status> {
        let access = if to_host { Access::Write } else { Access::Read };
        map_prps(
            self.snap,
            sqe.prp1.get(),
            sqe.prp2.get(),
            len,
            &self.limits,
            access,
            self.iov,
        )
        .map_err(|e| prp_status(&e))
    }

    fn read(&mut self, sqe: &Sqe, buf: &mut [u8]) -> Result<(), Status> {
        copy_from_prps(self.snap, sqe.prp1.get(), sqe.prp2.get(), buf, self.limits)
    }
}

/// What the host set that changes how commands are planned.
#[derive(Clone, Copy, Debug)]
pub struct Settings {
    /// The most bytes one command moves (MDTS).
    pub max_transfer: u64,
    /// Volatile Write Cache as the host left it: disabled, writes must be
    /// durable when they complete (FUA).
    pub write_cache: bool,
}

/// Maximum DSM ranges per command (NR is 8 bits, 0's based).
const MAX_DSM_RANGES: usize = 256;

/// Validate `sqe` for namespace `ns` and plan its backend work; the
/// command's data is `data`'s.
pub fn plan(sqe: &Sqe, ns: &NamespaceInfo, settings: Settings, data: &mut dyn DataSource) -> Plan {
    match plan_inner(sqe, ns, settings, data) {
        Ok(p) if settings.write_cache => p,
        Ok(p) => write_through(p),
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
    sqe: &Sqe,
    ns: &NamespaceInfo,
    settings: Settings,
    data: &mut dyn DataSource,
) -> Result<Plan, Status> {
    let max_transfer = settings.max_transfer;
    // No fused operations.
    if sqe.fuse() != 0 {
        return Err(Status::INVALID_FIELD);
    }
    data.check(sqe)?;
    match sqe.opcode {
        IoOpcode::READ | IoOpcode::WRITE => {
            let (offset, len) = lba_range(sqe, ns)?;
            if len > max_transfer {
                return Err(Status::INVALID_FIELD);
            }
            let kind = if sqe.opcode == IoOpcode::READ {
                IoKind::Read
            } else if sqe.fua() {
                IoKind::WriteFua
            } else {
                IoKind::Write
            };
            data.map(sqe, len, kind == IoKind::Read)?;
            Ok(Plan::Single(Op { kind, offset, len }))
        }
        IoOpcode::FLUSH => Ok(flush_plan(ns)),
        // Durable zeroes when asked (FUA) or when there is no write cache.
        IoOpcode::WRITE_ZEROES => write_zeroes_plan(sqe, ns, !settings.write_cache),
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
            let ranges = &mut buf[..nr * 16];
            data.read(sqe, ranges)?;
            dsm_deallocate_plan(ranges, ns)
        }
        IoOpcode::ZONE_APPEND => {
            let op = zone_append_op(sqe, ns, max_transfer)?;
            data.map(sqe, op.len, false)?;
            Ok(Plan::Single(op))
        }
        IoOpcode::ZONE_MGMT_SEND => zone_send_plan(sqe, ns),
        IoOpcode::ZONE_MGMT_RECV => {
            zone_report_request(sqe, ns, max_transfer).map(Plan::ZoneReport)
        }
        _ => Err(Status::INVALID_OPCODE),
    }
}

/// Zone Append's completion value: the LBA written, from the byte offset
/// the backend reports.
pub fn zone_append_lba(byte_offset: u64, block_size: u32) -> u64 {
    byte_offset / u64::from(block_size.max(1))
}

/// With the volatile write cache disabled (Set Features), a write must be
/// durable when it completes: plain writes and appends become FUA.
fn write_through(plan: Plan) -> Plan {
    match plan {
        Plan::Single(op) if op.kind == IoKind::Write => Plan::Single(Op {
            kind: IoKind::WriteFua,
            ..op
        }),
        Plan::Single(op) if op.kind == (IoKind::ZoneAppend { fua: false }) => Plan::Single(Op {
            kind: IoKind::ZoneAppend { fua: true },
            ..op
        }),
        other => other,
    }
}

/// The zones of `ns`, or Invalid Opcode for a conventional namespace
/// (zoned commands).
fn zones_of(ns: &NamespaceInfo) -> Result<ZonedInfo, Status> {
    ns.zoned.ok_or(Status::INVALID_OPCODE)
}

/// Zone Append: SLBA must be the start of a zone; the data goes to its
/// write pointer (the LBA comes back in the completion).
pub fn zone_append_op(sqe: &Sqe, ns: &NamespaceInfo, max_transfer: u64) -> Result<Op, Status> {
    let z = zones_of(ns)?;
    let (offset, len) = lba_range(sqe, ns)?;
    if sqe.slba() % z.zone_blocks != 0 || len > max_transfer {
        return Err(Status::INVALID_FIELD);
    }
    Ok(Op {
        kind: IoKind::ZoneAppend { fua: sqe.fua() },
        offset,
        len,
    })
}

/// Zone Management Send: Close, Finish, Open, Reset of the zone starting
/// at SLBA or, with Select All, of every zone they apply to. Offline and
/// descriptor extensions are not supported (Invalid Field).
pub fn zone_send_plan(sqe: &Sqe, ns: &NamespaceInfo) -> Result<Plan, Status> {
    let z = zones_of(ns)?;
    let cdw13 = sqe.cdw13.get();
    let all = cdw13 & ZSEND_SELECT_ALL != 0;
    let action = match (cdw13 & 0xff) as u8 {
        Zsa::CLOSE => ZoneAction::Close,
        Zsa::FINISH => ZoneAction::Finish,
        Zsa::OPEN => ZoneAction::Open,
        Zsa::RESET => ZoneAction::Reset,
        _ => return Err(Status::INVALID_FIELD),
    };
    let slba = sqe.slba();
    if !all {
        if slba >= ns.num_blocks {
            return Err(Status::LBA_OUT_OF_RANGE);
        }
        if slba % z.zone_blocks != 0 {
            return Err(Status::INVALID_FIELD);
        }
    }
    Ok(Plan::Single(Op {
        kind: IoKind::Zone { action, all },
        offset: if all {
            0
        } else {
            slba * u64::from(ns.block_size)
        },
        len: 0,
    }))
}

/// A Zone Management Receive command, checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ZoneReport {
    /// First LBA: the report starts at the zone holding it.
    pub slba: u64,
    /// Bytes the host's buffer holds.
    pub len: usize,
    /// Reporting option (ZRASF).
    pub filter: u8,
    /// Partial Report: the header counts the descriptors returned.
    pub partial: bool,
}

/// Decode Zone Management Receive: Report Zones only (extended reports
/// need descriptor extensions, which are not supported).
pub fn zone_report_request(
    sqe: &Sqe,
    ns: &NamespaceInfo,
    max_transfer: u64,
) -> Result<ZoneReport, Status> {
    zones_of(ns)?;
    let cdw13 = sqe.cdw13.get();
    let filter = ((cdw13 >> 8) & 0xff) as u8;
    if (cdw13 & 0xff) as u8 != ZRA_REPORT_ZONES || filter > Zrasf::OFFLINE {
        return Err(Status::INVALID_FIELD);
    }
    let len = (u64::from(sqe.cdw12.get()) + 1) * 4;
    if len > max_transfer {
        return Err(Status::INVALID_FIELD);
    }
    if sqe.slba() >= ns.num_blocks {
        return Err(Status::LBA_OUT_OF_RANGE);
    }
    Ok(ZoneReport {
        slba: sqe.slba(),
        len: usize::try_from(len).map_err(|_| Status::INVALID_FIELD)?,
        filter,
        partial: cdw13 & ZRECV_PARTIAL != 0,
    })
}

/// The report's bytes (`req.len` of them) from the zones from the one
/// holding `req.slba` on: a 64-byte header with the number of zones that
/// match the filter (with Partial Report: of descriptors returned), then as
/// many descriptors as fit.
pub fn zone_report(req: &ZoneReport, zones: &[ZoneDesc]) -> Vec<u8> {
    let code = |s: ZoneState| match s {
        ZoneState::Empty => ZoneStateCode::EMPTY,
        ZoneState::ImplicitlyOpen => ZoneStateCode::IMPLICITLY_OPEN,
        ZoneState::ExplicitlyOpen => ZoneStateCode::EXPLICITLY_OPEN,
        ZoneState::Closed => ZoneStateCode::CLOSED,
        ZoneState::Full => ZoneStateCode::FULL,
    };
    let matches = |z: &&ZoneDesc| match req.filter {
        Zrasf::ALL => true,
        Zrasf::EMPTY => z.state == ZoneState::Empty,
        Zrasf::IMPLICITLY_OPEN => z.state == ZoneState::ImplicitlyOpen,
        Zrasf::EXPLICITLY_OPEN => z.state == ZoneState::ExplicitlyOpen,
        Zrasf::CLOSED => z.state == ZoneState::Closed,
        Zrasf::FULL => z.state == ZoneState::Full,
        _ => false,
    };
    let fit = req.len.saturating_sub(64) / 64;
    let selected: Vec<&ZoneDesc> = zones.iter().filter(matches).collect();
    let returned = selected.len().min(fit);
    let mut out = vec![0u8; req.len.max(64)];
    let mut h = ZoneReportHeader::new_zeroed();
    let nr = if req.partial {
        returned
    } else {
        selected.len()
    };
    h.nr_zones = (nr as u64).into();
    out[..64].copy_from_slice(h.as_bytes());
    for (i, z) in selected.iter().take(returned).enumerate() {
        let mut d = ZoneDescriptor::new_zeroed();
        d.zt = ZT_SEQUENTIAL_WRITE_REQUIRED;
        d.zs = code(z.state) << 4;
        d.za = if z.finished_by_backend { ZA_ZFC } else { 0 };
        d.zcap = z.capacity.into();
        d.zslba = z.start.into();
        d.wp = z.write_pointer.into();
        let at = 64 + i * 64;
        out[at..at + 64].copy_from_slice(d.as_bytes());
    }
    out.truncate(req.len);
    out
}

/// NVMe status of a zoned backend's refusal.
pub fn zone_status(e: ZoneError) -> Status {
    match e {
        ZoneError::InvalidWrite => Status::ZONE_INVALID_WRITE,
        ZoneError::Boundary => Status::ZONE_BOUNDARY_ERROR,
        ZoneError::Full => Status::ZONE_IS_FULL,
        ZoneError::TooManyOpen => Status::TOO_MANY_OPEN_ZONES,
        ZoneError::TooManyActive => Status::TOO_MANY_ACTIVE_ZONES,
        ZoneError::InvalidTransition => Status::INVALID_ZONE_STATE_TRANSITION,
        ZoneError::NotZoneStart => Status::INVALID_FIELD,
    }
}

/// NVMe status of a failed backend operation (zone refusals included).
pub fn io_error_status(kind: IoKind, e: &IoError) -> Status {
    match (e.zone, e.status) {
        (Some(z), _) => zone_status(z),
        (None, Some(field)) => Status::from_field(field),
        (None, None) => backend_status(kind, e.errno),
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

/// Write Zeroes (a deallocate when DEAC is set and the namespace can);
/// with FUA, or `write_through` (no volatile write cache), the zeroes are
/// durable before it completes (and DEAC is not taken: a deallocation has
/// no durable form here).
pub fn write_zeroes_plan(
    sqe: &Sqe,
    ns: &NamespaceInfo,
    write_through: bool,
) -> Result<Plan, Status> {
    if !ns.write_zeroes {
        return Err(Status::INVALID_OPCODE);
    }
    let (offset, len) = lba_range(sqe, ns)?;
    let kind = if sqe.fua() || write_through {
        IoKind::WriteZeroesFua
    } else if sqe.cdw12.get() & WRITE_ZEROES_DEAC != 0 && ns.deallocate {
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

    fn zoned_ns() -> NamespaceInfo {
        NamespaceInfo {
            nsid: 1,
            block_size: 4096,
            num_blocks: 64,
            volatile_write_cache: true,
            write_zeroes: false,
            deallocate: false,
            zoned: Some(ZonedInfo {
                zone_blocks: 16,
                capacity: 12,
                max_open: 2,
                max_active: 3,
            }),
            nguid: [0; 16],
            eui64: [0; 8],
            uuid: [0; 16],
        }
    }

    fn sqe(opcode: u8, slba: u64, cdw12: u32, cdw13: u32) -> Sqe {
        let mut s = Sqe {
            opcode,
            ..Default::default()
        };
        s.cdw10 = u32::try_from(slba & 0xffff_ffff).unwrap().into();
        s.cdw11 = u32::try_from(slba >> 32).unwrap().into();
        s.cdw12 = cdw12.into();
        s.cdw13 = cdw13.into();
        s
    }

    /// A data source that records what the planner asked of it.
    #[derive(Default)]
    struct Recorder {
        maps: Vec<(u64, bool)>,
        ranges: Vec<u8>,
        refuse: Option<Status>,
    }

    impl DataSource for Recorder {
        fn check(&self, _sqe: &Sqe) -> Result<(), Status> {
            self.refuse.map_or(Ok(()), Err)
        }
        fn map(&mut self, _sqe: &Sqe, len: u64, to_host: bool) -> Result<(), Status> {
            self.maps.push((len, to_host));
            Ok(())
        }
        fn read(&mut self, _sqe: &Sqe, buf: &mut [u8]) -> Result<(), Status> {
            let n = buf.len().min(self.ranges.len());
            buf[..n].copy_from_slice(&self.ranges[..n]);
            Ok(())
        }
    }

    fn conventional_ns() -> NamespaceInfo {
        NamespaceInfo {
            write_zeroes: true,
            deallocate: true,
            zoned: None,
            ..zoned_ns()
        }
    }

    const SETTINGS: Settings = Settings {
        max_transfer: 1 << 20,
        write_cache: true,
    };

    #[test]
    fn write_zeroes_are_durable_with_fua_or_without_a_write_cache() {
        let ns = conventional_ns();
        let mut d = Recorder::default();
        let kind = |p: Plan| match p {
            Plan::Single(o) => o.kind,
            p => panic!("{p:?}"),
        };
        let fua = 1 << 30;
        let deac = WRITE_ZEROES_DEAC;
        let zeroes = |cdw12| sqe(IoOpcode::WRITE_ZEROES, 0, cdw12, 0);
        let off = Settings {
            write_cache: false,
            ..SETTINGS
        };
        assert_eq!(
            kind(plan(&zeroes(0), &ns, SETTINGS, &mut d)),
            IoKind::WriteZeroes
        );
        assert_eq!(
            kind(plan(&zeroes(deac), &ns, SETTINGS, &mut d)),
            IoKind::Deallocate
        );
        assert_eq!(
            kind(plan(&zeroes(fua), &ns, SETTINGS, &mut d)),
            IoKind::WriteZeroesFua
        );
        assert_eq!(
            kind(plan(&zeroes(fua | deac), &ns, SETTINGS, &mut d)),
            IoKind::WriteZeroesFua
        );
        assert_eq!(
            kind(plan(&zeroes(0), &ns, off, &mut d)),
            IoKind::WriteZeroesFua
        );
        assert_eq!(
            kind(plan(&zeroes(deac), &ns, off, &mut d)),
            IoKind::WriteZeroesFua
        );
        assert!(d.maps.is_empty(), "Write Zeroes moves no data");
    }

    #[test]
    fn the_planner_asks_the_data_source_for_what_moves() {
        let ns = conventional_ns();
        let mut d = Recorder::default();
        // A read of 2 blocks maps 8 KiB towards the host.
        let p = plan(&sqe(IoOpcode::READ, 4, 1, 0), &ns, SETTINGS, &mut d);
        assert_eq!(
            p,
            Plan::Single(Op {
                kind: IoKind::Read,
                offset: 4 * 4096,
                len: 8192
            })
        );
        assert_eq!(d.maps, [(8192, true)]);
        // A write, with the cache off: FUA, from the host.
        let off = Settings {
            write_cache: false,
            ..SETTINGS
        };
        let p = plan(&sqe(IoOpcode::WRITE, 0, 0, 0), &ns, off, &mut d);
        assert!(matches!(
            p,
            Plan::Single(Op {
                kind: IoKind::WriteFua,
                ..
            })
        ));
        assert_eq!(d.maps[1], (4096, false));
        // Past MDTS, past the namespace: nothing is mapped.
        let small = Settings {
            max_transfer: 4096,
            ..SETTINGS
        };
        let p = plan(&sqe(IoOpcode::READ, 0, 1, 0), &ns, small, &mut d);
        assert_eq!(p, Plan::Complete(Status::INVALID_FIELD));
        let p = plan(&sqe(IoOpcode::READ, 63, 1, 0), &ns, SETTINGS, &mut d);
        assert_eq!(p, Plan::Complete(Status::LBA_OUT_OF_RANGE));
        assert_eq!(d.maps.len(), 2);
        // The source refuses the command's data fields (e.g. PRPs over a
        // fabric): its status.
        d.refuse = Some(Status::INVALID_FIELD);
        let p = plan(&sqe(IoOpcode::FLUSH, 0, 0, 0), &ns, SETTINGS, &mut d);
        assert_eq!(p, Plan::Complete(Status::INVALID_FIELD));
    }

    #[test]
    fn deallocate_ranges_come_from_the_data_source() {
        let ns = conventional_ns();
        let range = |slba: u64, nlb: u32| {
            let mut r = [0u8; 16];
            r[4..8].copy_from_slice(&nlb.to_le_bytes());
            r[8..].copy_from_slice(&slba.to_le_bytes());
            r
        };
        let mut d = Recorder {
            ranges: [range(0, 2), range(10, 0), range(20, 4)].concat(),
            ..Recorder::default()
        };
        let mut cmd = sqe(IoOpcode::DATASET_MANAGEMENT, 0, 0, 0);
        cmd.cdw10 = 2.into(); // 3 ranges
        cmd.cdw11 = DSM_ATTR_DEALLOCATE.into();
        let Plan::Multi(ops) = plan(&cmd, &ns, SETTINGS, &mut d) else {
            panic!("not several operations");
        };
        let got: Vec<(u64, u64)> = ops.iter().map(|o| (o.offset, o.len)).collect();
        assert_eq!(
            got,
            [(0, 2 * 4096), (20 * 4096, 4 * 4096)],
            "empty range skipped"
        );
        // Zone Management Receive is a report, not a backend operation.
        let zoned = zoned_ns();
        let recv = sqe(IoOpcode::ZONE_MGMT_RECV, 0, 15, 0);
        assert!(matches!(
            plan(&recv, &zoned, SETTINGS, &mut d),
            Plan::ZoneReport(ZoneReport { len: 64, .. })
        ));
        assert_eq!(
            plan(&recv, &ns, SETTINGS, &mut d),
            Plan::Complete(Status::INVALID_OPCODE)
        );
    }

    #[test]
    fn zone_commands_are_checked() {
        let ns = zoned_ns();
        let send =
            |slba, cdw13| zone_send_plan(&sqe(IoOpcode::ZONE_MGMT_SEND, slba, 0, cdw13), &ns);
        assert_eq!(
            send(16, u32::from(Zsa::OPEN)),
            Ok(Plan::Single(Op {
                kind: IoKind::Zone {
                    action: ZoneAction::Open,
                    all: false
                },
                offset: 16 * 4096,
                len: 0
            }))
        );
        assert_eq!(send(17, u32::from(Zsa::OPEN)), Err(Status::INVALID_FIELD));
        assert_eq!(
            send(64, u32::from(Zsa::RESET)),
            Err(Status::LBA_OUT_OF_RANGE)
        );
        assert_eq!(send(0, u32::from(Zsa::OFFLINE)), Err(Status::INVALID_FIELD));
        assert!(
            send(99, u32::from(Zsa::RESET) | ZSEND_SELECT_ALL).is_ok(),
            "select all ignores SLBA"
        );
        let append = |slba, nlb: u32| {
            zone_append_op(&sqe(IoOpcode::ZONE_APPEND, slba, nlb - 1, 0), &ns, 1 << 20)
        };
        assert_eq!(
            append(32, 2).unwrap().kind,
            IoKind::ZoneAppend { fua: false }
        );
        assert_eq!(append(33, 1), Err(Status::INVALID_FIELD));
        assert_eq!(append(63, 2), Err(Status::LBA_OUT_OF_RANGE));
        let mut conventional = zoned_ns();
        conventional.zoned = None;
        assert_eq!(
            zone_send_plan(&sqe(IoOpcode::ZONE_MGMT_SEND, 0, 0, 1), &conventional),
            Err(Status::INVALID_OPCODE)
        );
        assert_eq!(
            zone_status(ZoneError::TooManyOpen),
            Status::TOO_MANY_OPEN_ZONES
        );
        assert_eq!(
            io_error_status(IoKind::Write, &IoError::zone(ZoneError::InvalidWrite)),
            Status::ZONE_INVALID_WRITE
        );
    }

    #[test]
    fn zone_reports_filter_and_count() {
        let ns = zoned_ns();
        let zones: Vec<ZoneDesc> = [
            ZoneState::Empty,
            ZoneState::ImplicitlyOpen,
            ZoneState::Full,
            ZoneState::Empty,
        ]
        .iter()
        .enumerate()
        .map(|(i, &state)| ZoneDesc {
            start: i as u64 * 16,
            capacity: 12,
            write_pointer: i as u64 * 16 + if state == ZoneState::Full { 12 } else { 3 },
            state,
            finished_by_backend: false,
        })
        .collect();
        let report = |filter: u8, partial: bool, bytes: u32| {
            let cdw13 = (u32::from(filter) << 8) | if partial { ZRECV_PARTIAL } else { 0 };
            let req = zone_report_request(
                &sqe(IoOpcode::ZONE_MGMT_RECV, 0, bytes / 4 - 1, cdw13),
                &ns,
                1 << 20,
            )
            .unwrap();
            let out = zone_report(&req, &zones);
            assert_eq!(out.len(), bytes as usize);
            let n = u64::from_le_bytes(out[..8].try_into().unwrap());
            let d: Vec<ZoneDescriptor> = out[64..]
                .chunks_exact(64)
                .map(|c| ZoneDescriptor::read_from_bytes(c).unwrap())
                .collect();
            (n, d)
        };
        let (n, d) = report(Zrasf::ALL, false, 64 * 5);
        assert_eq!(n, 4);
        assert_eq!(d[1].zs >> 4, ZoneStateCode::IMPLICITLY_OPEN);
        assert_eq!(
            (d[2].zslba.get(), d[2].wp.get(), d[2].zcap.get()),
            (32, 44, 12)
        );
        assert_eq!(d[3].zt, ZT_SEQUENTIAL_WRITE_REQUIRED);
        // Room for 2 descriptors: all 4 counted, or only the 2 returned.
        assert_eq!(report(Zrasf::ALL, false, 64 * 3).0, 4);
        assert_eq!(report(Zrasf::ALL, true, 64 * 3).0, 2);
        let (n, d) = report(Zrasf::EMPTY, false, 64 * 3);
        assert_eq!((n, d[0].zslba.get(), d[1].zslba.get()), (2, 0, 48));
        assert_eq!(report(Zrasf::FULL, false, 64 * 2).0, 1);
        // Bad reporting options, extended reports, SLBA past the end.
        let bad = |slba, cdw13| {
            zone_report_request(
                &sqe(IoOpcode::ZONE_MGMT_RECV, slba, 15, cdw13),
                &ns,
                1 << 20,
            )
        };
        assert_eq!(bad(0, 8 << 8), Err(Status::INVALID_FIELD));
        assert_eq!(
            bad(0, u32::from(leapio_nvme::zns::ZRA_EXTENDED_REPORT_ZONES)),
            Err(Status::INVALID_FIELD)
        );
        assert_eq!(bad(64, 0), Err(Status::LBA_OUT_OF_RANGE));
    }

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
