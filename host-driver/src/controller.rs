//! The NVMe controller as a vfio-user device: PCI config space, the BAR0
//! register file (CAP/VS/CC/CSTS/AQA/ASQ/ACQ), enable/disable/reset/shutdown,
//! the admin queue (run when its doorbells move: `serving`), and the hand-off of I/O
//! queues, memory and interrupts to the runtime through its [`RuntimePort`].

use crate::port::{CqSetup, PortEvent, RuntimePort, SqSetup, UNMAP_DRAIN_TIMEOUT};
use crate::shared::CtrlShared;
use leapio_ats::ring::{CqRing, InvalidDoorbell, SqRing};
use leapio_ats::{Access, Prot};
use leapio_controller::admin::AdminCore;
use leapio_controller::regs::{AdminQueueRegs, Change, Registers};
use leapio_link::doorbells::{Doorbells, DOORBELL_PAGE_SIZE, MAX_QUEUE_PAIRS};
use leapio_link::qstate::QueueState;
use leapio_link::{NsDecl, Shadow};
use leapio_nvme::cmd::AsyncEvent;
use leapio_nvme::regs::{csts, offset, Cap};
use leapio_nvme::{Sqe, Status};
use leapio_vmm_shim::pci::{self, ConfigSpace};
use leapio_vmm_shim::vfio_user::{
    Device, DeviceInfo, DmaMap, DmaUnmap, Errno, IrqAction, IrqData, IrqInfo, RegionInfo,
    RegionMmap, SetIrqs,
};
use std::collections::BTreeMap;
use std::io;
use std::os::fd::AsRawFd;
use std::sync::atomic::Ordering;
use std::sync::mpsc::Receiver;
use std::sync::Arc;
use std::time::Duration;

use vfio_bindings::bindings::vfio::{
    VFIO_DEVICE_FLAGS_PCI, VFIO_DEVICE_FLAGS_RESET, VFIO_IRQ_INFO_EVENTFD, VFIO_IRQ_INFO_NORESIZE,
    VFIO_PCI_BAR0_REGION_INDEX as REGION_BAR0, VFIO_PCI_BAR4_REGION_INDEX as REGION_BAR4,
    VFIO_PCI_CONFIG_REGION_INDEX as REGION_CONFIG, VFIO_PCI_ERR_IRQ_INDEX as IRQ_ERR,
    VFIO_PCI_INTX_IRQ_INDEX as IRQ_INTX, VFIO_PCI_MSIX_IRQ_INDEX as IRQ_MSIX,
    VFIO_PCI_NUM_IRQS as NUM_IRQS, VFIO_PCI_NUM_REGIONS as NUM_REGIONS,
    VFIO_PCI_REQ_IRQ_INDEX as IRQ_REQ,
};

/// Static identity and limits of a controller.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
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
    /// MSI-X vectors (each one an eventfd from the hypervisor, held by
    /// both processes); 0: one per queue (I/O queues + 1). Fewer make the
    /// guest share vectors between queues.
    #[serde(default)]
    pub msix_vectors: u16,
}

impl ControllerConfig {
    /// The MSI-X vectors the function has.
    pub fn vectors(&self) -> u16 {
        if self.msix_vectors == 0 {
            self.max_io_queues + 1
        } else {
            self.msix_vectors
        }
    }
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
            msix_vectors: 0,
        }
    }
}

/// The feature values of the PCIe front end (the others are the admin
/// core's).
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub(crate) struct Features {
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
    pub(crate) port: RuntimePort,
    /// The namespaces as runtimes declared them (None until the first
    /// runtime attaches).
    pub(crate) ns_decls: Option<Vec<NsDecl>>,
    /// A runtime waiting to be admitted (the previous one is not fenced).
    pub(crate) waiting_attach: Option<(Arc<crate::link::RuntimeLink>, Vec<NsDecl>)>,
    pub(crate) shadow: Option<Shadow>,
    pub(crate) pci: ConfigSpace,
    pub(crate) msix_table: Vec<u8>,
    /// CAP, CC, CSTS, AQA, ASQ, ACQ and what writing CC does.
    pub(crate) regs: Registers,
    pub(crate) admin: Option<AdminQueue>,
    pub(crate) cqs: BTreeMap<u16, CqSetup>,
    pub(crate) sqs: BTreeMap<u16, SqSetup>,
    pub(crate) features: Features,
    /// Identify, logs, common features, outstanding AERs.
    pub(crate) admin_core: AdminCore,
    /// Where the state and descriptors are kept for a host-driver that
    /// replaces this one (`leapio-hostd --keep`).
    pub(crate) kept: Option<crate::kept::Kept>,
    /// A vfio-user client is connected; it negotiated the version.
    pub(crate) connected: bool,
    pub(crate) negotiated: bool,
}

impl NvmeController {
    /// Build controller `name`; its runtime's messages arrive on `events`.
    /// It has no namespaces until a runtime attaches and declares them.
    pub fn new(
        name: &str,
        cfg: ControllerConfig,
        events: Receiver<PortEvent>,
        timeouts: crate::port::Timeouts,
    ) -> io::Result<NvmeController> {
        check_config(&cfg)?;
        let qstate = QueueState::create(cfg.max_io_queues, cfg.max_queue_entries)?;
        Ok(NvmeController::build(
            name,
            cfg,
            Doorbells::new()?,
            qstate,
            events,
            timeouts,
        ))
    }

    /// A controller on this doorbell page and queue-state area, in its
    /// power-on state.
    pub(crate) fn build(
        name: &str,
        cfg: ControllerConfig,
        doorbells: Doorbells,
        qstate: QueueState,
        events: Receiver<PortEvent>,
        timeouts: crate::port::Timeouts,
    ) -> NvmeController {
        let vectors = cfg.vectors();
        let mdts_bytes = 4096u64 << cfg.mdts;
        let shared = Arc::new(CtrlShared::new(
            name.to_string(),
            doorbells,
            Arc::new(qstate),
            vectors,
            mdts_bytes,
        ));
        let port = RuntimePort::new(shared.clone(), events, timeouts);
        let max_queue_entries = cfg.max_queue_entries;
        NvmeController {
            cfg,
            shared,
            port,
            ns_decls: None,
            waiting_attach: None,
            shadow: None,
            pci: ConfigSpace::new(vectors),
            msix_table: vec![0; usize::from(vectors) * 16],
            regs: Registers::pcie(Cap {
                mqes: max_queue_entries,
                cqr: true,
                timeout: 30,
                dstrd: 0,
                mpsmin: 0,
                mpsmax: 4,
            }),
            admin: None,
            cqs: BTreeMap::new(),
            sqs: BTreeMap::new(),
            features: Features::default(),
            admin_core: AdminCore::default(),
            kept: None,
            connected: false,
            negotiated: false,
        }
    }

    /// Present these namespaces as if a runtime had declared them, with no
    /// runtime attached: for the fuzz targets (feature `fuzzing`), which
    /// drive the admin queue in-process.
    #[cfg(feature = "fuzzing")]
    #[doc(hidden)]
    pub fn fuzz_declare_namespaces(&mut self, decls: Vec<NsDecl>) {
        self.ns_decls = Some(decls);
    }

    pub fn shared(&self) -> &Arc<CtrlShared> {
        &self.shared
    }

    pub fn serial(&self) -> &str {
        &self.cfg.serial
    }

    /// The controller is being removed: let its runtime go (the hypervisor's
    /// connection, if any, has already ended and reset it).
    pub fn release(&mut self, reason: &str) {
        self.port.detach(reason);
    }

    /// CSTS, with Controller Fatal Status when the runtime reported one.
    fn csts_value(&self) -> u32 {
        let mut v = self.regs.csts();
        if self.shared.fatal.load(Ordering::Acquire) {
            v |= csts::CFS;
        }
        v
    }

    /// The register file below the doorbells as bytes.
    fn register_image(&self) -> [u8; 0x40] {
        let mut r = self.regs.image();
        let o = usize::try_from(offset::CSTS).unwrap_or(0);
        r[o..o + 4].copy_from_slice(&self.csts_value().to_le_bytes());
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
        for change in self.regs.write_dword(off, v) {
            match change {
                Change::Enabled { page_size, admin } => self.enable(page_size, admin),
                Change::EnableRefused(why) => {
                    tracing::warn!(ctrl = %self.shared.name, cc = format_args!("{:#x}", self.regs.cc().0), "enable refused: {why}");
                }
                Change::Disabled => {
                    tracing::info!(ctrl = %self.shared.name, "controller disabled by the host");
                    self.reset_controller();
                }
                Change::Shutdown => self.shutdown(),
            }
        }
    }

    fn enable(&mut self, page_size: u64, admin: Option<AdminQueueRegs>) {
        let Some(a) = admin else {
            return;
        };
        self.shared.page_size.store(page_size, Ordering::Relaxed);
        self.admin = Some(AdminQueue {
            sq: SqRing::new(0, 0, a.asq, a.sq_entries),
            cq: CqRing::new(0, a.acq, a.cq_entries, 0, true),
            bad_sq_doorbell: false,
            bad_cq_doorbell: false,
        });
        let wc = self.write_cache();
        self.port.state(true, None, wc);
        tracing::info!(ctrl = %self.shared.name, page_size, asqs = a.sq_entries, acqs = a.cq_entries, "controller enabled");
    }

    /// Shutdown notification: what completed is made durable (the
    /// runtime flushes), then CSTS.SHST says so.
    fn shutdown(&mut self) {
        if let Err(e) = self.port.flush() {
            tracing::error!(ctrl = %self.shared.name, "flush on shutdown: {e}");
        }
        self.regs.shutdown_complete();
        tracing::info!(ctrl = %self.shared.name, "shutdown complete");
    }

    /// Controller reset (CC.EN 1 -> 0): delete every I/O queue, drop the
    /// admin queue, outstanding AERs, features and shadow doorbells.
    ///
    /// A queue the runtime could not be made to let go of (it is gone but
    /// not fenced) stays: the controller then keeps CSTS.RDY set, as a
    /// controller that has not finished its reset, and the next reset
    /// tries again.
    pub fn reset_controller(&mut self) -> bool {
        let mut ok = true;
        let sqids: Vec<u16> = self.sqs.keys().copied().collect();
        for qid in sqids {
            if self.port.delete_sq(qid).is_ok() {
                self.sqs.remove(&qid);
            } else {
                ok = false;
            }
        }
        let cqids: Vec<u16> = self.cqs.keys().copied().collect();
        for qid in cqids {
            if self.sqs.values().all(|s| s.cqid != qid) && self.port.delete_cq(qid).is_ok() {
                self.cqs.remove(&qid);
            } else {
                ok = false;
            }
        }
        self.admin = None;
        self.admin_core.reset();
        self.features = Features::default();
        self.shadow = None;
        self.port.reset();
        let wc = self.write_cache();
        self.port.state(false, None, wc);
        self.shared.clear_events();
        self.shared.doorbells.clear();
        self.shared.irqs.clear_pending();
        self.regs.reset_done(ok);
        if ok {
            self.shared.fatal.store(false, Ordering::Release);
        } else {
            tracing::error!(ctrl = %self.shared.name, "reset incomplete: queues kept until the previous runtime is fenced");
        }
        ok
    }

    /// Full reset: as a power cycle of the function.
    fn reset_all(&mut self) {
        self.reset_controller();
        self.regs.power_on();
    }

    /// Poll the admin queue and deliver asynchronous events.
    pub fn poll_admin(&mut self) {
        let Some(mut adm) = self.admin.take() else {
            return;
        };
        // An I/O queue operation may have had to detach a runtime; nothing
        // here depends on one.
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
                self.record_completion(&adm, sqe.cid.get(), status, dw0);
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
        while self.admin_core.aer_outstanding() && adm.cq.free() > 0 {
            let Some(ev) = self.shared.take_event() else {
                break;
            };
            let Some(cid) = self.admin_core.take_aer() else {
                break;
            };
            self.record_completion(&adm, cid, Status::SUCCESS, ev);
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
            self.changed();
        }
        if self.admin.is_none() && self.regs.cc().en() && self.regs.ready() {
            self.admin = Some(adm);
        }
    }

    /// Before an admin completion is posted: the state it leads to, with
    /// the completion, is written (a successor posts it again).
    fn record_completion(&mut self, adm: &AdminQueue, cid: u16, status: Status, dw0: u32) {
        if self.kept.is_none() {
            return;
        }
        let pending = crate::image::PendingCompletion {
            cq_tail: adm.cq.tail,
            cq_phase: adm.cq.phase,
            sq_head: adm.sq.head,
            cid,
            status: status.field(),
            dw0,
        };
        self.write_image(Some(adm.image()), Some(pending));
        self.changed();
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
        leapio_ats::transfer::copy_to_prps(
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
                    fd: self.shared.doorbells.fd().as_raw_fd(),
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
        // A trapped doorbell write changes nothing the image holds.
        if !(index == REGION_BAR0 && off >= offset::DOORBELLS) {
            self.changed();
        }
        let r = self.region_write_inner(index, off, data);
        self.persist();
        r
    }

    fn dma_map(&mut self, map: DmaMap) -> Result<(), Errno> {
        let r = self.dma_map_inner(map);
        self.persist();
        r
    }

    fn dma_unmap(&mut self, unmap: DmaUnmap) -> Result<(), Errno> {
        let r = self.dma_unmap_inner(unmap);
        self.kept_regions_gone();
        self.persist();
        r
    }

    fn set_irqs(&mut self, req: SetIrqs) -> Result<(), Errno> {
        let r = self.set_irqs_inner(req);
        self.changed();
        self.persist();
        r
    }

    fn reset(&mut self) -> Result<(), Errno> {
        tracing::info!(ctrl = %self.shared.name, "device reset");
        self.reset_all();
        self.changed();
        self.persist();
        Ok(())
    }

    fn tick(&mut self) {
        self.port_events();
        self.poll_admin();
        self.persist();
    }

    fn tick_interval(&self) -> Option<Duration> {
        Some(if self.admin.is_some() {
            Duration::from_millis(1)
        } else {
            Duration::from_millis(50)
        })
    }

    fn negotiated(&mut self) {
        self.negotiated = true;
        self.changed();
        self.persist();
    }

    fn disconnected(&mut self) {
        if self.shared.releasing.load(Ordering::Acquire) {
            // Handed to another host-driver: the client stays connected.
            return;
        }
        tracing::info!(ctrl = %self.shared.name, "client disconnected: resetting the controller and dropping guest memory");
        self.reset_all();
        self.shared.irqs.clear();
        let n = self.shared.irqs.count();
        self.port.irqs(0, n);
        for v in 0..n {
            self.kept_irq(v, None);
        }
        self.pci.reset();
        if !self.port.unmap(0, u64::MAX, true) {
            tracing::error!(ctrl = %self.shared.name, "dropping guest memory: the runtime still uses it");
        }
        if let Err(e) = self.shared.domain.unmap_all(UNMAP_DRAIN_TIMEOUT) {
            tracing::error!(ctrl = %self.shared.name, "dropping guest memory: {e}");
        }
        self.kept_regions_gone();
        self.kept_client_gone();
        self.persist();
    }
}

impl NvmeController {
    fn region_write_inner(&mut self, index: u32, off: u64, data: &[u8]) -> Result<(), Errno> {
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

    fn dma_map_inner(&mut self, map: DmaMap) -> Result<(), Errno> {
        let prot = Prot {
            read: map.read,
            write: map.write,
        };
        // Memory the hypervisor could shrink would SIGBUS the runtime.
        let sealed = map.fd.as_ref().map_or(Ok(()), |fd| {
            leapio_ats::require_sealed(std::os::fd::AsFd::as_fd(fd))
        });
        sealed
            .and_then(|()| self.shared.domain.map(map.iova, map.size, map.fd, map.file_offset, prot))
            .map_err(|e| {
            tracing::warn!(ctrl = %self.shared.name, iova = format_args!("{:#x}", map.iova), size = map.size, "DMA_MAP refused: {e}");
            libc::EINVAL
        })?;
        // The runtime maps the same file descriptor.
        let snap = self.shared.domain.snapshot();
        if let Some((info, fd)) = snap.region_files().find(|(r, _)| r.gpa == map.iova) {
            self.port.map(&info, fd);
            self.kept_region(info.gpa, fd);
        }
        Ok(())
    }

    fn dma_unmap_inner(&mut self, unmap: DmaUnmap) -> Result<(), Errno> {
        // The runtime first: once it answers, nothing in flight points
        // into the memory.
        if !self.port.unmap(unmap.iova, unmap.size, unmap.all) {
            tracing::warn!(ctrl = %self.shared.name, iova = format_args!("{:#x}", unmap.iova), size = unmap.size, "DMA_UNMAP: the runtime still uses the memory");
            return Err(libc::EBUSY);
        }
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

    fn set_irqs_inner(&mut self, req: SetIrqs) -> Result<(), Errno> {
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
                let n = irqs.count();
                self.port.irqs(0, n);
                for v in 0..n {
                    self.kept_irq(v, None);
                }
                return Ok(());
            }
            (IrqAction::Trigger, IrqData::None) => vecs.for_each(|v| irqs.trigger(v)),
            (IrqAction::Trigger, IrqData::Bool(b)) => {
                vecs.zip(b)
                    .filter(|(_, on)| *on)
                    .for_each(|(v, _)| irqs.trigger(v));
            }
            (IrqAction::Trigger, IrqData::Eventfd(fds)) => {
                let set: Vec<u16> = vecs.collect();
                for (v, fd) in set.iter().zip(fds) {
                    irqs.set_eventfd(*v, fd.map(std::fs::File::from));
                }
                let first = u16::try_from(req.start).unwrap_or(0);
                let count = u16::try_from(req.count).unwrap_or(0);
                self.port.irqs(first, count);
                for v in set {
                    let fd = self.shared.irqs.eventfd(v);
                    self.kept_irq(v, fd.as_deref().map(std::os::fd::AsFd::as_fd));
                }
                return Ok(());
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
}

/// Whether a controller can be built with `cfg`.
pub(crate) fn check_config(cfg: &ControllerConfig) -> io::Result<()> {
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
    if cfg.msix_vectors > cfg.max_io_queues + 1 {
        return Err(io::Error::other(format!(
            "msix vectors must be 1..={} (io queues + 1), got {}",
            cfg.max_io_queues + 1,
            cfg.msix_vectors
        )));
    }
    if cfg.mdts > 10 {
        return Err(io::Error::other(format!(
            "mdts must be 1..=10, got {}",
            cfg.mdts
        )));
    }
    Ok(())
}

/// Whether guest memory for a ring is usable.
pub(crate) fn ring_mapped(shared: &CtrlShared, gpa: u64, bytes: u64, access: Access) -> bool {
    shared
        .domain
        .snapshot()
        .translate(gpa, bytes, access)
        .is_ok()
}
