//! The SSD as this driver sees it: its registers, its admin queue, what
//! Identify said, and the recovery every I/O queue follows (a controller
//! reset, after which each queue builds itself again and sends its
//! commands again).
//!
//! Registers are reached through [`Registers`]: BAR0 mapped from VFIO on a
//! real device, memory a test's emulated controller watches in tests.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use leapio_backend::dma::{DmaBuffer, DmaError, DmaRegistry};
use leapio_nvme::identify::{
    Cns, IdentifyController, IdentifyNamespace, ONCS_DSM, ONCS_WRITE_ZEROES,
};
use leapio_nvme::regs::csts;
use leapio_nvme::{AdminOpcode, Cqe, Sqe};
use zerocopy::FromBytes;

use super::vfio::PciDevice;
use crate::nvme_host;
use crate::Geometry;

// Register offsets (BAR0).
const CAP: usize = 0x00;
const CC: usize = 0x14;
const CSTS: usize = 0x1c;
const AQA: usize = 0x24;
const ASQ: usize = 0x28;
const ACQ: usize = 0x30;

/// Most bytes one command moves: a PRP list of one page (512 entries) says
/// up to 2 MiB; 1 MiB keeps bounce buffers small.
pub(crate) const MAX_COMMAND_BYTES: u32 = 1 << 20;
/// Admin queue entries.
const ADMIN_ENTRIES: u16 = 32;
/// I/O queue pairs asked for.
const WANT_QUEUES: u16 = 64;
/// How long an admin command may take.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest wait for CSTS.RDY the driver accepts, whatever CAP.TO says.
const MAX_READY_WAIT: Duration = Duration::from_secs(60);

/// Why the SSD cannot be used, or stopped being usable.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    /// The controller is not one this driver drives.
    #[error("{0}")]
    Unsupported(String),
    /// The controller did not become ready or did not stop in time.
    #[error("the controller did not {what} within {secs:.1} s (CSTS {csts:#x})")]
    NotReady {
        /// "become ready", "stop".
        what: &'static str,
        /// How long we waited.
        secs: f64,
        /// CSTS at the end.
        csts: u32,
    },
    /// The controller reports a fatal error.
    #[error("the controller reports a fatal error (CSTS.CFS)")]
    Fatal,
    /// An admin command failed.
    #[error("{what} failed with status {status:#x}")]
    Status {
        /// The command.
        what: &'static str,
        /// Its status field.
        status: u16,
    },
    /// An admin command was not answered.
    #[error("{0} was not answered within {1:.1} s")]
    Timeout(&'static str, f64),
    /// DMA memory could not be had.
    #[error(transparent)]
    Dma(#[from] DmaError),
    /// The controller stopped answering and was given up.
    #[error("the controller stopped answering and was given up")]
    Dead,
}

/// The controller's registers.
pub(crate) trait Registers: Send + Sync {
    /// A 32-bit register at byte `off`.
    fn read32(&self, off: usize) -> u32;
    /// Write a 32-bit register.
    fn write32(&self, off: usize, v: u32);
    /// A 64-bit register, as two 32-bit reads (low first).
    fn read64(&self, off: usize) -> u64 {
        u64::from(self.read32(off)) | (u64::from(self.read32(off + 4)) << 32)
    }
    /// Write a 64-bit register, as two 32-bit writes (low first).
    fn write64(&self, off: usize, v: u64) {
        self.write32(off, u32::try_from(v & 0xffff_ffff).unwrap_or(0));
        self.write32(off + 4, u32::try_from(v >> 32).unwrap_or(0));
    }
}

/// BAR0 of a device opened through VFIO.
pub(crate) struct Mmio {
    base: *mut u8,
    len: usize,
    /// Keeps BAR0 mapped.
    _dev: Arc<PciDevice>,
}

// SAFETY: the mapping lives as long as `dev`; registers are only accessed
// with aligned volatile 32-bit loads and stores, which any thread may make.
unsafe impl Send for Mmio {}
// SAFETY: as above.
unsafe impl Sync for Mmio {}

impl Mmio {
    pub(crate) fn new(dev: Arc<PciDevice>) -> Mmio {
        let (base, len) = dev.bar0();
        Mmio {
            base,
            len,
            _dev: dev,
        }
    }
}

impl Registers for Mmio {
    fn read32(&self, off: usize) -> u32 {
        if off % 4 != 0 || off + 4 > self.len {
            return u32::MAX;
        }
        // SAFETY: inside the mapping and aligned (checked above).
        unsafe { std::ptr::read_volatile(self.base.add(off).cast::<u32>()) }
    }

    fn write32(&self, off: usize, v: u32) {
        if off % 4 != 0 || off + 4 > self.len {
            return;
        }
        // SAFETY: inside the mapping and aligned (checked above).
        unsafe { std::ptr::write_volatile(self.base.add(off).cast::<u32>(), v) }
    }
}

/// Order this CPU's writes to DMA memory before a later register write
/// (a doorbell): the device must find the commands the doorbell announces.
#[inline]
pub(crate) fn dma_wmb() {
    #[cfg(target_arch = "aarch64")]
    // SAFETY: a barrier instruction; it touches no memory or register.
    unsafe {
        std::arch::asm!("dmb oshst", options(nostack, preserves_flags))
    };
    // x86 keeps stores in order: only the compiler must not move them.
    #[cfg(not(target_arch = "aarch64"))]
    std::sync::atomic::compiler_fence(Ordering::SeqCst);
}

/// Order a read of DMA memory (a completion's phase) before later reads of
/// it (the rest of the completion).
#[inline]
pub(crate) fn dma_rmb() {
    #[cfg(target_arch = "aarch64")]
    // SAFETY: a barrier instruction; it touches no memory or register.
    unsafe {
        std::arch::asm!("dmb oshld", options(nostack, preserves_flags))
    };
    #[cfg(not(target_arch = "aarch64"))]
    std::sync::atomic::compiler_fence(Ordering::SeqCst);
}

/// A submission and completion queue pair in DMA memory, and its doorbells.
pub(crate) struct QueuePair {
    pub(crate) qid: u16,
    entries: u16,
    sq: DmaBuffer,
    cq: DmaBuffer,
    tail: u16,
    head: u16,
    phase: bool,
    unrung: bool,
    sq_db: usize,
    cq_db: usize,
    regs: Arc<dyn Registers>,
}

impl QueuePair {
    /// Queues of `entries` entries (2..=4096) for queue id `qid`.
    pub(crate) fn new(
        registry: &'static DmaRegistry,
        regs: Arc<dyn Registers>,
        qid: u16,
        entries: u16,
        dstrd: u8,
    ) -> Result<QueuePair, DmaError> {
        let entries = entries.clamp(2, 4096);
        let stride = 4usize << dstrd;
        Ok(QueuePair {
            qid,
            entries,
            sq: DmaBuffer::new(registry, usize::from(entries) * 64)?,
            cq: DmaBuffer::new(registry, usize::from(entries) * 16)?,
            tail: 0,
            head: 0,
            phase: true,
            unrung: false,
            sq_db: 0x1000 + 2 * usize::from(qid) * stride,
            cq_db: 0x1000 + (2 * usize::from(qid) + 1) * stride,
            regs,
        })
    }

    /// Entries per queue.
    pub(crate) fn entries(&self) -> u16 {
        self.entries
    }

    pub(crate) fn sq_iova(&self) -> u64 {
        self.sq.iova()
    }

    pub(crate) fn cq_iova(&self) -> u64 {
        self.cq.iova()
    }

    /// Empty again, as after the controller deleted (or forgot) it.
    pub(crate) fn reset(&mut self) {
        // SAFETY: our own DMA memory, `len` bytes long; the device does not
        // use the queue while it is being created again.
        unsafe { std::ptr::write_bytes(self.cq.as_ptr(), 0, self.cq.len()) };
        self.tail = 0;
        self.head = 0;
        self.phase = true;
        self.unrung = false;
    }

    /// Add a command. The caller keeps fewer commands outstanding than
    /// there are entries (one CID per entry), so the ring never overflows.
    pub(crate) fn push(&mut self, sqe: &Sqe) {
        let at = usize::from(self.tail) * 64;
        // SAFETY: `at + 64 <= entries * 64`, inside our DMA buffer; the
        // device reads the entry only after the doorbell that follows.
        unsafe { std::ptr::write_volatile(self.sq.as_ptr().add(at).cast::<Sqe>(), *sqe) };
        self.tail = (self.tail + 1) % self.entries;
        self.unrung = true;
    }

    /// Tell the device about the commands pushed since the last call.
    pub(crate) fn ring(&mut self) {
        if self.unrung {
            dma_wmb();
            self.regs.write32(self.sq_db, u32::from(self.tail));
            self.unrung = false;
        }
    }

    /// Hand each new completion to `f`; returns how many there were.
    pub(crate) fn reap(&mut self, max: usize, mut f: impl FnMut(&Cqe)) -> usize {
        let mut n = 0;
        while n < max {
            let at = usize::from(self.head) * 16;
            // SAFETY: inside our DMA buffer (`head < entries`); the device
            // writes it, so it is read volatile, status (with the phase) first.
            let status =
                unsafe { std::ptr::read_volatile(self.cq.as_ptr().add(at + 14).cast::<u16>()) };
            if (u16::from_le(status) & 1 == 1) != self.phase {
                break;
            }
            dma_rmb();
            // SAFETY: as above; the whole entry is there once its phase is.
            let cqe = unsafe { std::ptr::read_volatile(self.cq.as_ptr().add(at).cast::<Cqe>()) };
            self.head += 1;
            if self.head == self.entries {
                self.head = 0;
                self.phase = !self.phase;
            }
            f(&cqe);
            n += 1;
        }
        if n > 0 {
            self.regs.write32(self.cq_db, u32::from(self.head));
        }
        n
    }
}

/// The admin queue, used one command at a time, and a page for the data of
/// Identify.
pub(crate) struct Admin {
    qp: QueuePair,
    page: DmaBuffer,
    cid: u16,
}

impl Admin {
    /// Run one admin command and wait for its completion. `data`: the
    /// command's data is the admin page (Identify).
    pub(crate) fn run(
        &mut self,
        what: &'static str,
        mut sqe: Sqe,
        data: bool,
        regs: &dyn Registers,
        wait: Duration,
    ) -> Result<Cqe, DeviceError> {
        self.cid = self.cid.wrapping_add(1) & 0x7fff;
        sqe.cid = self.cid.into();
        if data {
            sqe.prp1 = self.page.iova().into();
        }
        self.qp.push(&sqe);
        self.qp.ring();
        let deadline = Instant::now() + wait;
        loop {
            let mut got = None;
            let cid = self.cid;
            self.qp.reap(usize::MAX, |c| {
                // Others are late answers to commands given up on.
                if c.cid.get() == cid {
                    got = Some(*c);
                }
            });
            if let Some(c) = got {
                let st = c.status_field();
                if !st.is_success() {
                    return Err(DeviceError::Status {
                        what,
                        status: st.field(),
                    });
                }
                return Ok(c);
            }
            if regs.read32(CSTS) & csts::CFS != 0 {
                return Err(DeviceError::Fatal);
            }
            if Instant::now() >= deadline {
                return Err(DeviceError::Timeout(what, wait.as_secs_f64()));
            }
            std::hint::spin_loop();
        }
    }

    fn page(&self) -> &[u8] {
        // SAFETY: our own DMA buffer; read after the command that filled it
        // completed.
        unsafe { std::slice::from_raw_parts(self.page.as_ptr(), self.page.len()) }
    }
}

/// What Identify said, and the limits taken from it.
#[derive(Clone, Debug)]
pub(crate) struct Info {
    pub(crate) nsid: u32,
    pub(crate) geometry: Geometry,
    /// Most bytes per command (MDTS, at most [`MAX_COMMAND_BYTES`]).
    pub(crate) max_command: u32,
    pub(crate) write_zeroes: bool,
    pub(crate) deallocate: bool,
    pub(crate) volatile_write_cache: bool,
    pub(crate) model: String,
    pub(crate) serial: String,
    /// I/O queue pairs the controller granted.
    pub(crate) queues: u16,
}

/// The SSD: see the module documentation.
pub(crate) struct NvmeDevice {
    pub(crate) regs: Arc<dyn Registers>,
    pci: Option<Arc<PciDevice>>,
    pub(crate) registry: &'static DmaRegistry,
    pub(crate) info: Info,
    pub(crate) dstrd: u8,
    pub(crate) mqes: u16,
    ready_wait: Duration,
    admin: Mutex<Admin>,
    /// Bumped by every controller reset: queues of an older epoch build
    /// themselves again.
    epoch: AtomicU64,
    dead: AtomicBool,
    /// I/O queue ids in use (index = qid).
    qids: Mutex<Vec<bool>>,
    /// How long a command may run before it is aborted, then reset.
    pub(crate) timeout: Duration,
}

impl std::fmt::Debug for NvmeDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NvmeDevice")
            .field("info", &self.info)
            .finish()
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).trim().to_owned()
}

impl NvmeDevice {
    /// Take the controller over: stop it (whatever a previous owner left
    /// running), enable it with our admin queue, identify it and namespace
    /// `nsid`, ask for I/O queues.
    pub(crate) fn open(
        regs: Arc<dyn Registers>,
        pci: Option<Arc<PciDevice>>,
        registry: &'static DmaRegistry,
        nsid: u32,
        timeout: Duration,
    ) -> Result<NvmeDevice, DeviceError> {
        let cap = regs.read64(CAP);
        if cap == u64::MAX {
            return Err(DeviceError::Unsupported(
                "the controller's registers read all ones (the device is gone or not enabled)"
                    .into(),
            ));
        }
        if cap & (1 << 37) == 0 {
            return Err(DeviceError::Unsupported(
                "the controller does not support the NVM command set".into(),
            ));
        }
        if (cap >> 48) & 0xf != 0 {
            return Err(DeviceError::Unsupported(
                "the controller's smallest memory page is larger than 4 KiB".into(),
            ));
        }
        let mqes = u16::try_from((cap & 0xffff) + 1).unwrap_or(u16::MAX).max(2);
        let dstrd = u8::try_from((cap >> 32) & 0xf).unwrap_or(0);
        let to = Duration::from_millis(500 * ((cap >> 24) & 0xff).max(1));
        let ready_wait = to.min(MAX_READY_WAIT);
        let qp = QueuePair::new(
            registry,
            Arc::clone(&regs),
            0,
            ADMIN_ENTRIES.min(mqes),
            dstrd,
        )?;
        let mut admin = Admin {
            qp,
            page: DmaBuffer::new(registry, 4096)?,
            cid: 0,
        };
        disable(&*regs, ready_wait)?;
        enable(&*regs, &mut admin, ready_wait)?;
        admin.run(
            "Identify Controller",
            nvme_host::identify(Cns::CONTROLLER, 0),
            true,
            &*regs,
            ADMIN_TIMEOUT,
        )?;
        let idc = IdentifyController::read_from_bytes(&admin.page()[..4096])
            .map_err(|_| DeviceError::Unsupported("short Identify Controller".into()))?;
        let nn = idc.nn.get();
        if nsid == 0 || nsid > nn {
            return Err(DeviceError::Unsupported(format!(
                "namespace {nsid} does not exist (the controller has {nn})"
            )));
        }
        admin.run(
            "Identify Namespace",
            nvme_host::identify(Cns::NAMESPACE, nsid),
            true,
            &*regs,
            ADMIN_TIMEOUT,
        )?;
        let idn = IdentifyNamespace::read_from_bytes(&admin.page()[..4096])
            .map_err(|_| DeviceError::Unsupported("short Identify Namespace".into()))?;
        let geometry =
            nvme_host::namespace_geometry(&idn, nsid).map_err(DeviceError::Unsupported)?;
        let queues = set_queues(&mut admin, &*regs)?;
        let max_command = nvme_host::max_transfer(idc.mdts)
            .min(MAX_COMMAND_BYTES)
            .max(geometry.block_size);
        let oncs = idc.oncs.get();
        let info = Info {
            nsid,
            geometry,
            max_command,
            write_zeroes: oncs & ONCS_WRITE_ZEROES != 0,
            deallocate: oncs & ONCS_DSM != 0,
            volatile_write_cache: idc.vwc & 1 != 0,
            model: text(&idc.mn),
            serial: text(&idc.sn),
            queues,
        };
        Ok(NvmeDevice {
            regs,
            pci,
            registry,
            info,
            dstrd,
            mqes,
            ready_wait,
            admin: Mutex::new(admin),
            epoch: AtomicU64::new(0),
            dead: AtomicBool::new(false),
            qids: Mutex::new(vec![false; usize::from(queues) + 1]),
            timeout,
        })
    }

    fn admin(&self) -> MutexGuard<'_, Admin> {
        self.admin
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub(crate) fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    pub(crate) fn is_dead(&self) -> bool {
        self.dead.load(Ordering::Acquire)
    }

    /// How long an admin command may take once the controller runs: no
    /// longer than an I/O command.
    fn admin_wait(&self) -> Duration {
        self.timeout.min(ADMIN_TIMEOUT)
    }

    /// A free I/O queue id.
    pub(crate) fn alloc_qid(&self) -> Option<u16> {
        let mut q = self.qids.lock().unwrap_or_else(|e| e.into_inner());
        let i = q.iter().skip(1).position(|used| !used)? + 1;
        q[i] = true;
        u16::try_from(i).ok()
    }

    pub(crate) fn free_qid(&self, qid: u16) {
        let mut q = self.qids.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(u) = q.get_mut(usize::from(qid)) {
            *u = false;
        }
    }

    /// Create the I/O queue pair `qp` on the controller (no interrupts:
    /// its completions are polled).
    pub(crate) fn create_queue(&self, qp: &QueuePair) -> Result<(), DeviceError> {
        if self.is_dead() {
            return Err(DeviceError::Dead);
        }
        let mut a = self.admin();
        let size = u32::from(qp.entries() - 1) << 16;
        let cq = Sqe {
            opcode: AdminOpcode::CREATE_CQ,
            prp1: qp.cq_iova().into(),
            cdw10: (size | u32::from(qp.qid)).into(),
            // Physically contiguous, interrupts off.
            cdw11: 1.into(),
            ..Default::default()
        };
        a.run(
            "Create I/O Completion Queue",
            cq,
            false,
            &*self.regs,
            self.admin_wait(),
        )?;
        let sq = Sqe {
            opcode: AdminOpcode::CREATE_SQ,
            prp1: qp.sq_iova().into(),
            cdw10: (size | u32::from(qp.qid)).into(),
            // Physically contiguous, completions to the CQ of the same id.
            cdw11: (1 | (u32::from(qp.qid) << 16)).into(),
            ..Default::default()
        };
        a.run(
            "Create I/O Submission Queue",
            sq,
            false,
            &*self.regs,
            self.admin_wait(),
        )
        .map(|_| ())
    }

    /// Delete the I/O queue pair `qid`: the controller aborts what is
    /// still in it and no longer touches its memory.
    pub(crate) fn delete_queue(&self, qid: u16) -> Result<(), DeviceError> {
        if self.is_dead() {
            return Err(DeviceError::Dead);
        }
        let mut a = self.admin();
        let del = |op| Sqe {
            opcode: op,
            cdw10: u32::from(qid).into(),
            ..Default::default()
        };
        let wait = self.admin_wait();
        a.run(
            "Delete I/O Submission Queue",
            del(AdminOpcode::DELETE_SQ),
            false,
            &*self.regs,
            wait,
        )?;
        a.run(
            "Delete I/O Completion Queue",
            del(AdminOpcode::DELETE_CQ),
            false,
            &*self.regs,
            wait,
        )
        .map(|_| ())
    }

    /// Ask the controller to abort command `cid` of queue `qid`.
    pub(crate) fn abort(&self, qid: u16, cid: u16) -> Result<(), DeviceError> {
        let mut a = self.admin();
        let sqe = Sqe {
            opcode: AdminOpcode::ABORT,
            cdw10: (u32::from(qid) | (u32::from(cid) << 16)).into(),
            ..Default::default()
        };
        a.run("Abort", sqe, false, &*self.regs, self.admin_wait())
            .map(|_| ())
    }

    /// Whether the controller reports a fatal error or is gone.
    pub(crate) fn failed(&self) -> bool {
        let st = self.regs.read32(CSTS);
        st == u32::MAX || st & csts::CFS != 0
    }

    /// Reset the controller, unless someone did since `seen` (an epoch):
    /// it stops every command (and their DMA), then comes back with our
    /// admin queue; every I/O queue then builds itself again. A controller
    /// that does not stop or come back is given up: its DMA is stopped for
    /// good and every command fails.
    pub(crate) fn recover(&self, seen: u64, why: &str) {
        let mut a = self.admin();
        if self.epoch() != seen || self.is_dead() {
            return;
        }
        tracing::warn!(model = %self.info.model, "resetting the controller: {why}");
        let r = disable(&*self.regs, self.ready_wait).and_then(|()| {
            a.qp.reset();
            enable(&*self.regs, &mut a, self.ready_wait)?;
            set_queues(&mut a, &*self.regs).map(|_| ())
        });
        if let Err(e) = r {
            tracing::error!(model = %self.info.model, "the controller did not come back ({e}): giving it up, its commands fail");
            if let Some(p) = &self.pci {
                p.stop_dma();
            }
            self.dead.store(true, Ordering::Release);
        }
        self.epoch.fetch_add(1, Ordering::AcqRel);
    }

    /// Tell the controller we are done (a normal shutdown: it writes its
    /// cache out) and wait a little for it.
    pub(crate) fn shutdown(&self) {
        if self.is_dead() {
            return;
        }
        let _a = self.admin();
        let cc = self.regs.read32(CC);
        self.regs.write32(CC, (cc & !(3 << 14)) | (1 << 14));
        let deadline = Instant::now() + self.ready_wait.min(Duration::from_secs(10));
        while Instant::now() < deadline {
            if self.regs.read32(CSTS) & csts::SHST_MASK == csts::SHST_COMPLETE {
                return;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        tracing::warn!(model = %self.info.model, "the controller did not finish its shutdown in time");
    }
}

/// Number of Queues, asked again after every reset.
fn set_queues(admin: &mut Admin, regs: &dyn Registers) -> Result<u16, DeviceError> {
    let c = admin.run(
        "Set Features (Number of Queues)",
        nvme_host::set_queue_count(WANT_QUEUES),
        false,
        regs,
        ADMIN_TIMEOUT,
    )?;
    Ok(nvme_host::granted_queues(c.dw0.get()).min(WANT_QUEUES))
}

/// CC.EN off, and wait for CSTS.RDY off.
fn disable(regs: &dyn Registers, wait: Duration) -> Result<(), DeviceError> {
    let cc = regs.read32(CC);
    if cc & 1 != 0 {
        regs.write32(CC, cc & !1);
    }
    wait_ready(regs, false, wait, "stop")
}

/// Program the admin queue, CC.EN on, and wait for CSTS.RDY.
fn enable(regs: &dyn Registers, admin: &mut Admin, wait: Duration) -> Result<(), DeviceError> {
    let n = u32::from(admin.qp.entries() - 1);
    regs.write32(AQA, n | (n << 16));
    regs.write64(ASQ, admin.qp.sq_iova());
    regs.write64(ACQ, admin.qp.cq_iova());
    regs.write32(CC, nvme_host::HOST_CC);
    wait_ready(regs, true, wait, "become ready")
}

fn wait_ready(
    regs: &dyn Registers,
    ready: bool,
    wait: Duration,
    what: &'static str,
) -> Result<(), DeviceError> {
    let start = Instant::now();
    loop {
        let st = regs.read32(CSTS);
        if st != u32::MAX {
            if ready && st & csts::CFS != 0 {
                return Err(DeviceError::Fatal);
            }
            if (st & csts::RDY != 0) == ready {
                return Ok(());
            }
        }
        if start.elapsed() >= wait {
            return Err(DeviceError::NotReady {
                what,
                secs: wait.as_secs_f64(),
                csts: st,
            });
        }
        std::thread::sleep(Duration::from_micros(200));
    }
}
