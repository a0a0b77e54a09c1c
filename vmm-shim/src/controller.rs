//! The NVMe controller as a vfio-user device: PCI config space, the BAR0
//! register file (CAP/VS/CC/CSTS/AQA/ASQ/ACQ), enable/disable/reset/shutdown,
//! the admin queue (polled from the control thread) and the hand-off of I/O
//! queues to the runtime through [`IoQueues`].

use crate::doorbell::{Doorbells, DOORBELL_PAGE_SIZE, MAX_QUEUE_PAIRS};
use crate::features::CommonFeatures;
use crate::irq::Interrupts;
use crate::pci::{self, ConfigSpace};
use crate::queue::{CqRing, InvalidDoorbell, SqRing};
use crate::shared::{CtrlShared, NamespaceInfo};
use crate::vfio_user::{
    Device, DeviceInfo, DmaMap, DmaUnmap, Errno, IrqAction, IrqData, IrqInfo, RegionInfo,
    RegionMmap, SetIrqs,
};
use leapio_ats::{Access, Prot};
use leapio_nvme::cmd::AsyncEvent;
use leapio_nvme::regs::{csts, offset, Cap, Cc, VERSION_1_4};
use leapio_nvme::{Sqe, Status};
use std::collections::{BTreeMap, VecDeque};
use std::io;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

/// vfio-user region indexes (VFIO_PCI_*_REGION_INDEX).
pub const REGION_BAR0: u32 = 0;
pub const REGION_BAR4: u32 = 4;
pub const REGION_CONFIG: u32 = 7;
const NUM_REGIONS: u32 = 9;
/// vfio-user IRQ indexes.
const IRQ_INTX: u32 = 0;
const IRQ_MSIX: u32 = 2;
const IRQ_ERR: u32 = 3;
const IRQ_REQ: u32 = 4;
const NUM_IRQS: u32 = 5;
const VFIO_DEVICE_FLAGS_RESET: u32 = 1 << 0;
const VFIO_DEVICE_FLAGS_PCI: u32 = 1 << 1;
const VFIO_IRQ_INFO_EVENTFD: u32 = 1 << 0;
const VFIO_IRQ_INFO_NORESIZE: u32 = 1 << 3;

/// How long DMA_UNMAP waits for in-flight I/O on the memory to finish.
pub const UNMAP_DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Static identity and limits of a controller.
#[derive(Clone, Debug)]
pub struct ControllerConfig {
    pub serial: String,
    pub model: String,
    pub firmware: String,
    pub subnqn: String,
    pub cntlid: u16,
    /// I/O queue pairs offered to the guest.
    pub max_io_queues: u16,
    /// Maximum entries per queue (CAP.MQES + 1).
    pub max_queue_entries: u32,
    /// MDTS as a power of two of the minimum page size (4 KiB).
    pub mdts: u8,
}

impl Default for ControllerConfig {
    fn default() -> Self {
        ControllerConfig {
            serial: "LEAPIO0000".into(),
            model: "LeapIO virtual NVMe".into(),
            firmware: env!("CARGO_PKG_VERSION").into(),
            subnqn: "nqn.2026-11.io.leapio:ctrl0".into(),
            cntlid: 1,
            max_io_queues: 32,
            max_queue_entries: 1024,
            mdts: 5,
        }
    }
}

/// An I/O completion queue the guest created.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CqSetup {
    pub qid: u16,
    pub gpa: u64,
    pub entries: u32,
    pub vector: u16,
    pub ien: bool,
}

/// An I/O submission queue the guest created.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SqSetup {
    pub qid: u16,
    pub cqid: u16,
    pub gpa: u64,
    pub entries: u32,
}

/// The runtime side of I/O queues. The controller validates every request
/// before calling these; deletions return only when the runtime no longer
/// touches the queue and every command fetched from it has completed.
pub trait IoQueues: Send {
    fn create_cq(&mut self, cq: CqSetup) -> Result<(), Status>;
    fn create_sq(&mut self, sq: SqSetup) -> Result<(), Status>;
    fn delete_sq(&mut self, qid: u16);
    fn delete_cq(&mut self, qid: u16);
    /// Make every completed write durable (shutdown notification).
    fn flush(&mut self) -> io::Result<()>;
}

/// Mutable feature values (Get/Set Features).
#[derive(Clone, Debug, Default)]
pub(crate) struct Features {
    /// The values every controller kind keeps the same way.
    pub common: CommonFeatures,
    /// Granted (submission, completion) I/O queue counts, once set.
    pub queues_granted: Option<(u16, u16)>,
    pub coalescing: u32,
    pub vector_config: BTreeMap<u16, u32>,
    pub keep_alive: u32,
}

pub(crate) struct AdminQueue {
    pub sq: SqRing,
    pub cq: CqRing,
    /// An invalid doorbell value was reported; waiting for a valid one.
    pub bad_sq_doorbell: bool,
    pub bad_cq_doorbell: bool,
}

/// A virtual NVMe controller served over vfio-user.
pub struct NvmeController {
    pub(crate) cfg: ControllerConfig,
    pub(crate) shared: Arc<CtrlShared>,
    pub(crate) io: Box<dyn IoQueues>,
    pci: ConfigSpace,
    msix_table: Vec<u8>,
    pub(crate) cc: u32,
    pub(crate) csts: u32,
    aqa: u32,
    asq: u64,
    acq: u64,
    pub(crate) admin: Option<AdminQueue>,
    pub(crate) cqs: BTreeMap<u16, CqSetup>,
    pub(crate) sqs: BTreeMap<u16, SqSetup>,
    pub(crate) features: Features,
    /// Outstanding Asynchronous Event Request command identifiers.
    pub(crate) aers: VecDeque<u16>,
}

impl NvmeController {
    /// Build a controller. `make_io` receives the shared state and returns
    /// the runtime's queue handler.
    pub fn new(
        cfg: ControllerConfig,
        namespaces: Vec<NamespaceInfo>,
        make_io: impl FnOnce(Arc<CtrlShared>) -> Box<dyn IoQueues>,
    ) -> io::Result<NvmeController> {
        if cfg.max_io_queues == 0 || cfg.max_io_queues >= MAX_QUEUE_PAIRS {
            return Err(io::Error::other(format!(
                "io queues must be between 1 and {}, got {}",
                MAX_QUEUE_PAIRS - 1,
                cfg.max_io_queues
            )));
        }
        if !(2..=65536).contains(&cfg.max_queue_entries) {
            return Err(io::Error::other(format!(
                "queue entries must be 2..=65536, got {}",
                cfg.max_queue_entries
            )));
        }
        let vectors = cfg.max_io_queues + 1;
        let mdts_bytes = 4096u64 << cfg.mdts;
        let shared = Arc::new(CtrlShared::new(
            cfg.serial.clone(),
            Doorbells::new()?,
            Interrupts::new(vectors),
            namespaces,
            mdts_bytes,
        ));
        let io = make_io(shared.clone());
        Ok(NvmeController {
            cfg,
            shared,
            io,
            pci: ConfigSpace::new(vectors),
            msix_table: vec![0; usize::from(vectors) * 16],
            cc: 0,
            csts: 0,
            aqa: 0,
            asq: 0,
            acq: 0,
            admin: None,
            cqs: BTreeMap::new(),
            sqs: BTreeMap::new(),
            features: Features::default(),
            aers: VecDeque::new(),
        })
    }

    pub fn shared(&self) -> &Arc<CtrlShared> {
        &self.shared
    }

    pub(crate) fn cap(&self) -> Cap {
        Cap {
            mqes: self.cfg.max_queue_entries,
            cqr: true,
            timeout: 30,
            dstrd: 0,
            mpsmin: 0,
            mpsmax: 4,
        }
    }

    fn csts_value(&self) -> u32 {
        let mut v = self.csts;
        if self.shared.fatal.load(Ordering::Acquire) {
            v |= csts::CFS;
        }
        v
    }

    /// The register file below the doorbells as bytes.
    fn register_image(&self) -> [u8; 0x40] {
        let mut r = [0u8; 0x40];
        let mut put = |off: u64, bytes: &[u8]| {
            let o = usize::try_from(off).unwrap_or(0);
            r[o..o + bytes.len()].copy_from_slice(bytes);
        };
        put(offset::CAP, &self.cap().to_u64().to_le_bytes());
        put(offset::VS, &VERSION_1_4.to_le_bytes());
        put(offset::CC, &self.cc.to_le_bytes());
        put(offset::CSTS, &self.csts_value().to_le_bytes());
        put(offset::AQA, &self.aqa.to_le_bytes());
        put(offset::ASQ, &self.asq.to_le_bytes());
        put(offset::ACQ, &self.acq.to_le_bytes());
        r
    }

    fn bar0_read(&self, off: u64, data: &mut [u8]) -> Result<(), Errno> {
        let len = data.len() as u64;
        let end = off.checked_add(len).ok_or(libc::EINVAL)?;
        if end > pci::BAR0_SIZE {
            return Err(libc::EINVAL);
        }
        data.fill(0);
        if end <= 0x40 {
            let img = self.register_image();
            let o = usize::try_from(off).map_err(|_| libc::EINVAL)?;
            data.copy_from_slice(&img[o..o + data.len()]);
        } else if off >= offset::DOORBELLS
            && end <= offset::DOORBELLS + DOORBELL_PAGE_SIZE as u64
            && len == 4
        {
            data.copy_from_slice(
                &self
                    .shared
                    .doorbells
                    .read_offset(off - offset::DOORBELLS)
                    .to_le_bytes(),
            );
        }
        Ok(())
    }

    fn bar0_write(&mut self, off: u64, data: &[u8]) -> Result<(), Errno> {
        let end = off.checked_add(data.len() as u64).ok_or(libc::EINVAL)?;
        if end > pci::BAR0_SIZE {
            return Err(libc::EINVAL);
        }
        if off >= offset::DOORBELLS {
            // Trapped doorbell write (the hypervisor did not map the page).
            if data.len() == 4 && end <= offset::DOORBELLS + DOORBELL_PAGE_SIZE as u64 {
                let v = u32::from_le_bytes([data[0], data[1], data[2], data[3]]);
                self.shared
                    .doorbells
                    .write_offset(off - offset::DOORBELLS, v);
            }
            return Ok(());
        }
        // Registers are written as aligned dwords or qwords.
        if off % 4 != 0 || !(data.len() == 4 || data.len() == 8) {
            return Ok(());
        }
        for (i, chunk) in data.chunks_exact(4).enumerate() {
            let v = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
            self.write_dword(off + 4 * i as u64, v);
        }
        Ok(())
    }

    fn write_dword(&mut self, off: u64, v: u32) {
        let lo = |old: u64| (old & !0xffff_ffff) | u64::from(v);
        let hi = |old: u64| (old & 0xffff_ffff) | (u64::from(v) << 32);
        match off {
            offset::CC => self.write_cc(v),
            offset::AQA => self.aqa = v & 0x0fff_0fff,
            offset::ASQ => self.asq = lo(self.asq),
            o if o == offset::ASQ + 4 => self.asq = hi(self.asq),
            offset::ACQ => self.acq = lo(self.acq),
            o if o == offset::ACQ + 4 => self.acq = hi(self.acq),
            // INTMS/INTMC only apply to pin-based and MSI interrupts; NSSR
            // is not supported (CAP.NSSRS = 0); everything else is read-only.
            _ => {}
        }
    }

    fn write_cc(&mut self, v: u32) {
        let old = Cc(self.cc);
        let new = Cc(v);
        self.cc = v;
        if !old.en() && new.en() {
            self.enable();
        } else if old.en() && !new.en() {
            tracing::info!(ctrl = %self.shared.name, "controller disabled by the host");
            self.reset_controller();
        }
        if new.shn() != 0 && old.shn() == 0 {
            self.shutdown();
        } else if new.shn() == 0 {
            self.csts &= !csts::SHST_MASK;
        }
    }

    fn enable(&mut self) {
        let cc = Cc(self.cc);
        let cap = self.cap();
        let asqs = (self.aqa & 0xfff) + 1;
        let acqs = ((self.aqa >> 16) & 0xfff) + 1;
        let problem = if cc.css() != 0 {
            Some("unsupported command set (CC.CSS)")
        } else if cc.mps() > u32::from(cap.mpsmax) {
            Some("memory page size above CAP.MPSMAX")
        } else if cc.ams() != 0 {
            Some("unsupported arbitration mechanism")
        } else if asqs < 2 || acqs < 2 {
            Some("admin queue smaller than 2 entries")
        } else if self.asq == 0 || self.acq == 0 || self.asq & 0xfff != 0 || self.acq & 0xfff != 0 {
            Some("admin queue address zero or not page aligned")
        } else {
            None
        };
        if let Some(p) = problem {
            tracing::warn!(ctrl = %self.shared.name, cc = format_args!("{:#x}", self.cc), "enable refused: {p}");
            self.shared.fatal.store(true, Ordering::Release);
            return;
        }
        let page_size = 4096u64 << cc.mps();
        self.shared.page_size.store(page_size, Ordering::Relaxed);
        self.admin = Some(AdminQueue {
            sq: SqRing::new(0, 0, self.asq, asqs),
            cq: CqRing::new(0, self.acq, acqs, 0, true),
            bad_sq_doorbell: false,
            bad_cq_doorbell: false,
        });
        self.csts = csts::RDY;
        tracing::info!(ctrl = %self.shared.name, page_size, asqs, acqs, "controller enabled");
    }

    fn shutdown(&mut self) {
        self.csts = (self.csts & !csts::SHST_MASK) | csts::SHST_OCCURRING;
        if let Err(e) = self.io.flush() {
            tracing::error!(ctrl = %self.shared.name, "flush on shutdown failed: {e}");
        }
        self.csts = (self.csts & !csts::SHST_MASK) | csts::SHST_COMPLETE;
        tracing::info!(ctrl = %self.shared.name, "shutdown complete");
    }

    /// Controller reset (CC.EN 1 -> 0): delete every I/O queue, drop the
    /// admin queue, outstanding AERs, features and shadow doorbells.
    pub fn reset_controller(&mut self) {
        let sqids: Vec<u16> = self.sqs.keys().copied().collect();
        for qid in sqids {
            self.io.delete_sq(qid);
        }
        self.sqs.clear();
        let cqids: Vec<u16> = self.cqs.keys().copied().collect();
        for qid in cqids {
            self.io.delete_cq(qid);
        }
        self.cqs.clear();
        self.admin = None;
        self.aers.clear();
        self.features = Features::default();
        self.shared.shadow.set(None);
        self.shared.clear_events();
        self.shared.doorbells.clear();
        self.shared.irqs.clear_pending();
        self.shared.fatal.store(false, Ordering::Release);
        self.csts &= csts::SHST_MASK;
    }

    /// Full reset: as a power cycle of the function.
    fn reset_all(&mut self) {
        self.reset_controller();
        self.cc = 0;
        self.csts = 0;
        self.aqa = 0;
        self.asq = 0;
        self.acq = 0;
    }

    /// Poll the admin queue and deliver asynchronous events.
    pub fn poll_admin(&mut self) {
        let Some(mut adm) = self.admin.take() else {
            return;
        };
        if self.shared.fatal.load(Ordering::Acquire) {
            self.admin = Some(adm);
            return;
        }
        let snap = self.shared.domain.snapshot();
        let mut posted = false;
        // An invalid doorbell value is an asynchronous event (reported once
        // until a valid value arrives), as on I/O queues: the queue waits for
        // a valid value, outstanding AERs still complete.
        let head = self.shared.doorbells.cq_head(0);
        let cq_bad = adm.cq.update_head(head).err();
        self.admin_doorbell_error(&mut adm.bad_cq_doorbell, cq_bad);
        let tail = self.shared.doorbells.sq_tail(0);
        let sq_bad = adm.sq.check_tail(tail).err();
        let fetch = sq_bad.is_none();
        self.admin_doorbell_error(&mut adm.bad_sq_doorbell, sq_bad);
        while fetch && adm.sq.head != tail && adm.cq.free() > 0 {
            let sqe = match adm.sq.fetch(&snap) {
                Ok(s) => s,
                Err(e) => {
                    self.fatal(format_args!("admin submission queue not readable: {e}"));
                    break;
                }
            };
            let out = self.execute_admin(&snap, &sqe);
            if let Some((status, dw0)) = out {
                if !status.is_success() {
                    self.shared
                        .log_error(0, sqe.cid.get(), status, sqe.nsid.get(), 0);
                    tracing::debug!(ctrl = %self.shared.name, opcode = sqe.opcode, %status, "admin command failed");
                }
                if adm
                    .cq
                    .post(&snap, 0, adm.sq.head, sqe.cid.get(), status, dw0)
                    .is_err()
                {
                    self.fatal(format_args!("admin completion queue not writable"));
                    break;
                }
                posted = true;
            }
        }
        // Asynchronous events for outstanding AERs.
        while !self.aers.is_empty() && adm.cq.free() > 0 {
            let Some(ev) = self.shared.take_event() else {
                break;
            };
            let Some(cid) = self.aers.pop_front() else {
                break;
            };
            if adm
                .cq
                .post(&snap, 0, adm.sq.head, cid, Status::SUCCESS, ev)
                .is_err()
            {
                self.fatal(format_args!("admin completion queue not writable"));
                break;
            }
            posted = true;
        }
        drop(snap);
        if posted {
            self.shared.irqs.trigger(0);
        }
        if self.admin.is_none() && Cc(self.cc).en() && self.csts & csts::RDY != 0 {
            self.admin = Some(adm);
        }
    }

    fn admin_doorbell_error(&self, reported: &mut bool, err: Option<InvalidDoorbell>) {
        match err {
            None => *reported = false,
            Some(e) if !*reported => {
                *reported = true;
                tracing::warn!(ctrl = %self.shared.name, "admin {e}");
                self.shared.post_event(AsyncEvent::dw0(
                    AsyncEvent::TYPE_ERROR,
                    AsyncEvent::INFO_INVALID_DOORBELL_VALUE,
                    0x01,
                ));
            }
            Some(_) => {}
        }
    }

    fn fatal(&self, what: std::fmt::Arguments<'_>) {
        tracing::error!(ctrl = %self.shared.name, "controller fatal status: {what}");
        self.shared.fatal.store(true, Ordering::Release);
    }

    /// Copy `data` into the guest buffer described by the command's PRPs.
    pub(crate) fn copy_to_guest(
        &self,
        snap: &leapio_ats::Snapshot,
        sqe: &Sqe,
        data: &[u8],
    ) -> Result<(), Status> {
        crate::dma::copy_to_prps(
            snap,
            sqe.prp1.get(),
            sqe.prp2.get(),
            data,
            self.prp_limits(),
        )
    }

    pub(crate) fn prp_limits(&self) -> leapio_ats::prp::PrpLimits {
        leapio_ats::prp::PrpLimits {
            page_size: self.shared.page_size(),
            max_transfer: self.shared.mdts_bytes,
        }
    }
}

impl Device for NvmeController {
    fn device_info(&self) -> DeviceInfo {
        DeviceInfo {
            flags: VFIO_DEVICE_FLAGS_PCI | VFIO_DEVICE_FLAGS_RESET,
            num_regions: NUM_REGIONS,
            num_irqs: NUM_IRQS,
        }
    }

    fn region_info(&self, index: u32) -> Option<RegionInfo> {
        match index {
            REGION_BAR0 => Some(RegionInfo {
                size: pci::BAR0_SIZE,
                read: true,
                write: true,
                mmap: Some(RegionMmap {
                    fd: self.shared.doorbells.fd(),
                    file_offset: 0,
                    areas: vec![(offset::DOORBELLS, DOORBELL_PAGE_SIZE as u64)],
                }),
            }),
            REGION_BAR4 => Some(RegionInfo {
                size: pci::BAR4_SIZE,
                read: true,
                write: true,
                mmap: None,
            }),
            REGION_CONFIG => Some(RegionInfo {
                size: pci::CONFIG_SIZE as u64,
                read: true,
                write: true,
                mmap: None,
            }),
            i if i < NUM_REGIONS => Some(RegionInfo {
                size: 0,
                read: false,
                write: false,
                mmap: None,
            }),
            _ => None,
        }
    }

    fn irq_info(&self, index: u32) -> Option<IrqInfo> {
        match index {
            IRQ_MSIX => Some(IrqInfo {
                count: u32::from(self.shared.irqs.count()),
                flags: VFIO_IRQ_INFO_EVENTFD | VFIO_IRQ_INFO_NORESIZE,
            }),
            IRQ_ERR | IRQ_REQ => Some(IrqInfo {
                count: 1,
                flags: VFIO_IRQ_INFO_EVENTFD,
            }),
            i if i < NUM_IRQS => Some(IrqInfo {
                count: 0,
                flags: VFIO_IRQ_INFO_EVENTFD,
            }),
            _ => None,
        }
    }

    fn region_read(&mut self, index: u32, off: u64, data: &mut [u8]) -> Result<(), Errno> {
        match index {
            REGION_CONFIG => self.pci.read(off, data),
            REGION_BAR0 => self.bar0_read(off, data),
            REGION_BAR4 => {
                let end = off.checked_add(data.len() as u64).ok_or(libc::EINVAL)?;
                if end > pci::BAR4_SIZE {
                    return Err(libc::EINVAL);
                }
                data.fill(0);
                let o = usize::try_from(off).map_err(|_| libc::EINVAL)?;
                if off >= pci::MSIX_PBA_OFFSET {
                    let bits: Vec<u8> = self
                        .shared
                        .irqs
                        .pending_bits()
                        .iter()
                        .flat_map(|w| w.to_le_bytes())
                        .collect();
                    let p = o - usize::try_from(pci::MSIX_PBA_OFFSET).map_err(|_| libc::EINVAL)?;
                    for (i, d) in data.iter_mut().enumerate() {
                        *d = bits.get(p + i).copied().unwrap_or(0);
                    }
                } else {
                    for (i, d) in data.iter_mut().enumerate() {
                        *d = self.msix_table.get(o + i).copied().unwrap_or(0);
                    }
                }
                Ok(())
            }
            _ => Err(libc::EINVAL),
        }
    }

    fn region_write(&mut self, index: u32, off: u64, data: &[u8]) -> Result<(), Errno> {
        match index {
            REGION_CONFIG => self.pci.write(off, data),
            REGION_BAR0 => self.bar0_write(off, data),
            REGION_BAR4 => {
                let end = off.checked_add(data.len() as u64).ok_or(libc::EINVAL)?;
                if end > pci::BAR4_SIZE {
                    return Err(libc::EINVAL);
                }
                let o = usize::try_from(off).map_err(|_| libc::EINVAL)?;
                for (i, b) in data.iter().enumerate() {
                    if let Some(t) = self.msix_table.get_mut(o + i) {
                        *t = *b;
                    }
                }
                Ok(())
            }
            _ => Err(libc::EINVAL),
        }
    }

    fn dma_map(&mut self, map: DmaMap) -> Result<(), Errno> {
        let prot = Prot {
            read: map.read,
            write: map.write,
        };
        self.shared.domain.map(map.iova, map.size, map.fd, map.file_offset, prot).map_err(|e| {
            tracing::warn!(ctrl = %self.shared.name, iova = format_args!("{:#x}", map.iova), size = map.size, "DMA_MAP refused: {e}");
            libc::EINVAL
        })
    }

    fn dma_unmap(&mut self, unmap: DmaUnmap) -> Result<(), Errno> {
        let r = if unmap.all {
            self.shared.domain.unmap_all(UNMAP_DRAIN_TIMEOUT)
        } else {
            self.shared
                .domain
                .unmap(unmap.iova, unmap.size, UNMAP_DRAIN_TIMEOUT)
        };
        r.map_err(|e| {
            tracing::warn!(ctrl = %self.shared.name, iova = format_args!("{:#x}", unmap.iova), size = unmap.size, "DMA_UNMAP: {e}");
            match e {
                leapio_ats::AtsError::Busy { .. } => libc::EBUSY,
                _ => libc::EINVAL,
            }
        })
    }

    fn set_irqs(&mut self, req: SetIrqs) -> Result<(), Errno> {
        match req.index {
            IRQ_MSIX => {}
            IRQ_ERR | IRQ_REQ | IRQ_INTX => return Ok(()),
            _ => return Err(libc::EINVAL),
        }
        let irqs = &self.shared.irqs;
        let n = u32::from(irqs.count());
        if req.start.checked_add(req.count).is_none_or(|end| end > n) {
            return Err(libc::EINVAL);
        }
        let vecs = (req.start..req.start + req.count).filter_map(|v| u16::try_from(v).ok());
        match (req.action, req.data) {
            (IrqAction::Trigger, IrqData::None) if req.count == 0 => {
                for v in 0..irqs.count() {
                    irqs.set_eventfd(v, None);
                }
            }
            (IrqAction::Trigger, IrqData::None) => vecs.for_each(|v| irqs.trigger(v)),
            (IrqAction::Trigger, IrqData::Bool(b)) => {
                vecs.zip(b)
                    .filter(|(_, on)| *on)
                    .for_each(|(v, _)| irqs.trigger(v));
            }
            (IrqAction::Trigger, IrqData::Eventfd(fds)) => {
                for (v, fd) in vecs.zip(fds) {
                    irqs.set_eventfd(v, fd.map(std::fs::File::from));
                }
            }
            (IrqAction::Mask, IrqData::None) => vecs.for_each(|v| irqs.set_masked(v, true)),
            (IrqAction::Unmask, IrqData::None) => vecs.for_each(|v| irqs.set_masked(v, false)),
            (IrqAction::Mask, IrqData::Bool(b)) => {
                vecs.zip(b)
                    .filter(|(_, on)| *on)
                    .for_each(|(v, _)| irqs.set_masked(v, true));
            }
            (IrqAction::Unmask, IrqData::Bool(b)) => {
                vecs.zip(b)
                    .filter(|(_, on)| *on)
                    .for_each(|(v, _)| irqs.set_masked(v, false));
            }
            _ => return Err(libc::EINVAL),
        }
        Ok(())
    }

    fn reset(&mut self) -> Result<(), Errno> {
        tracing::info!(ctrl = %self.shared.name, "device reset");
        self.reset_all();
        Ok(())
    }

    fn tick(&mut self) {
        self.poll_admin();
    }

    fn tick_interval(&self) -> Option<Duration> {
        Some(if self.admin.is_some() {
            Duration::from_millis(1)
        } else {
            Duration::from_millis(50)
        })
    }

    fn disconnected(&mut self) {
        tracing::info!(ctrl = %self.shared.name, "client disconnected: resetting the controller and dropping guest memory");
        self.reset_all();
        self.shared.irqs.clear();
        self.pci.reset();
        if let Err(e) = self.shared.domain.unmap_all(UNMAP_DRAIN_TIMEOUT) {
            tracing::error!(ctrl = %self.shared.name, "dropping guest memory: {e}");
        }
    }
}

/// Whether guest memory for a ring is usable.
pub(crate) fn ring_mapped(shared: &CtrlShared, gpa: u64, bytes: u64, access: Access) -> bool {
    shared
        .domain
        .snapshot()
        .translate(gpa, bytes, access)
        .is_ok()
}

/// Deterministic unique identifiers for a namespace from a controller serial.
pub fn namespace_ids(serial: &str, nsid: u32) -> ([u8; 16], [u8; 8], [u8; 16]) {
    // FNV-1a over the serial and nsid, expanded: stable across runs.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in serial.bytes().chain(nsid.to_le_bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    let h2 = h.rotate_left(29).wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ u64::from(nsid);
    let mut nguid = [0u8; 16];
    nguid[..8].copy_from_slice(&h.to_be_bytes());
    nguid[8..].copy_from_slice(&h2.to_be_bytes());
    let mut eui = [0u8; 8];
    eui.copy_from_slice(&h2.to_be_bytes());
    let mut uuid = nguid;
    uuid[6] = (uuid[6] & 0x0f) | 0x40; // version 4 layout
    uuid[8] = (uuid[8] & 0x3f) | 0x80; // RFC 4122 variant
    (nguid, eui, uuid)
}
